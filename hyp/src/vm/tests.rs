//! The trap path of a whole VM on the host: a VM with the same devices at
//! the same addresses as the runtime builds, driven through
//! `trap::handle_sync` with syndromes set in `arch::fake`, and a machine
//! that records what the VMM asked of it.

use super::trap::{current_exit, handle_sync, Flow};
use super::vm::{Request, Vm, VmState};
use crate::arch::{fake, TrapFrame};
use crate::harness::{capture_log, log_lines, Call, GuestHarness, Recorder, RAM_BASE};
use crate::vdev::psci::VcpuPower;
use crate::vdev::vits::{EventLpi, LpiConfig};
use alloc::string::String;
use scenario::guest_layout as layout;
use smmu::addr::Ipa;

/// ESR_EL2 of a data abort with a valid syndrome: `size` bytes, register
/// `reg`, 64-bit register, `write`.
fn dabt(size: u8, reg: u8, write: bool) -> u64 {
    let sas = u64::from(size.trailing_zeros());
    (0x24 << 26)
        | (1 << 25)
        | (1 << 24)
        | (sas << 22)
        | (u64::from(reg) << 16)
        | (1 << 15)
        | (u64::from(write) << 6)
        | 0x07
}

/// Sets up the fake CPU for a data abort at `ipa`.
fn trap_at(ipa: u64, esr: u64) {
    fake::reset();
    fake::with(|c| {
        c.esr_el2 = esr;
        c.hpfar_el2 = (ipa >> 12) << 4;
        c.far_el2 = 0xffff_0000_0000_0000 | (ipa & 0xfff);
        c.vbar_el1 = 0x4008_0000;
    });
}

fn frame(pc: u64) -> TrapFrame {
    let mut f = TrapFrame::zeroed();
    f.elr = pc;
    f.spsr = 0x3c5; // EL1h
    f
}

#[test]
fn a_store_to_the_vuart_reaches_it_with_its_size_and_register() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    // `strb w5, [UARTDR]` for each byte of "hi\n".
    for b in *b"hi\n" {
        trap_at(layout::UART_BASE, dabt(1, 5, true));
        let mut f = frame(0x4000_1000);
        f.x[5] = 0xffff_ff00 | u64::from(b);
        assert_eq!(handle_sync(vm, 0, &mut f, current_exit(), m), Flow::Resume);
        assert_eq!(f.elr, 0x4000_1004, "the store is skipped");
    }
    assert_eq!(m.calls(), [Call::Line(String::from("hi"))]);
    assert_eq!(fake::with(|c| c.el1_exception), None, "no exception");
}

#[test]
fn a_load_from_the_vuart_lands_in_its_register_zero_extended() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    // `ldr w7, [UARTFR]` (flag register, offset 0x18): RX empty is bit 4.
    trap_at(layout::UART_BASE + 0x18, dabt(4, 7, false));
    let mut f = frame(0x4000_2000);
    f.x[7] = u64::MAX;
    handle_sync(vm, 0, &mut f, current_exit(), m);
    assert_eq!(f.x[7] & !0xffff_ffff, 0, "32-bit load zero-extends");
    assert_ne!(f.x[7] & (1 << 4), 0, "RXFE: nothing typed");
    assert_eq!(f.elr, 0x4000_2004);
}

#[test]
fn a_console_access_is_the_same_without_the_vgic() {
    use super::trap::console_access;
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    // "ok\n" to UARTDR, each store answered without the vGIC: the UART's
    // interrupt (nothing unmasked in UARTIMSC) stays low.
    for b in *b"ok\n" {
        trap_at(layout::UART_BASE, dabt(1, 5, true));
        let mut f = frame(0x4000_1000);
        f.x[5] = u64::from(b);
        assert_eq!(console_access(vm, &mut f, &current_exit(), m), Some(false));
        assert_eq!(f.elr, 0x4000_1004, "the store is skipped");
    }
    assert_eq!(m.calls(), [Call::Line(String::from("ok"))]);
    // UARTFR reads as it does through the bus.
    trap_at(layout::UART_BASE + 0x18, dabt(4, 7, false));
    let mut f = frame(0x4000_2000);
    f.x[7] = u64::MAX;
    assert_eq!(console_access(vm, &mut f, &current_exit(), m), Some(false));
    let mut g = frame(0x4000_2000);
    g.x[7] = u64::MAX;
    handle_sync(vm, 0, &mut g, current_exit(), m);
    assert_eq!((f.x[7], f.elr), (g.x[7], g.elr));
    // The transmit interrupt unmasked (UARTIMSC.TXIM) and cleared
    // (UARTICR): the next character raises it, which the vGIC must hear.
    for (offset, value) in [(0x38, 1 << 5), (0x44, 1 << 5)] {
        trap_at(layout::UART_BASE + offset, dabt(4, 1, true));
        let mut f = frame(0x4000_3000);
        f.x[1] = value;
        console_access(vm, &mut f, &current_exit(), m);
    }
    trap_at(layout::UART_BASE, dabt(1, 5, true));
    let mut f = frame(0x4000_1000);
    f.x[5] = u64::from(b'x');
    assert_eq!(
        console_access(vm, &mut f, &current_exit(), m),
        Some(true),
        "level changed"
    );
    // Anything else is left alone: the GIC distributor, an access
    // straddling the UART's end.
    for (ipa, size) in [
        (layout::GICD_BASE, 4),
        (layout::UART_BASE + layout::UART_SIZE - 4, 8),
    ] {
        trap_at(ipa, dabt(size, 1, false));
        let mut f = frame(0x4000_4000);
        assert_eq!(console_access(vm, &mut f, &current_exit(), m), None);
        assert_eq!(f.elr, 0x4000_4000);
    }
}

/// Accesses a [`FakeIommu`] saw: offset, size, write, value.
type Accesses = std::sync::Arc<std::sync::Mutex<alloc::vec::Vec<(u64, u8, bool, u64)>>>;

/// A vSMMU that records each access and answers with `read` and `raise`.
struct FakeIommu {
    seen: Accesses,
    read: u64,
    raise: alloc::vec::Vec<u32>,
}

impl super::vm::VirtualIommu for FakeIommu {
    fn mmio(
        &mut self,
        offset: u64,
        size: u8,
        write: bool,
        value: u64,
    ) -> (u64, alloc::vec::Vec<u32>) {
        self.seen.lock().unwrap().push((offset, size, write, value));
        (self.read, self.raise.clone())
    }
    fn owns_event(&self, _: &smmu::event::Event) -> bool {
        false
    }
    fn inject_fault(&mut self, _: &smmu::event::Event) -> Option<u32> {
        None
    }
    fn stats(&self) -> smmu::vsmmu::VsmmuStats {
        smmu::vsmmu::VsmmuStats::default()
    }
    fn reset(&mut self) {}
}

#[test]
fn a_vsmmu_access_is_carried_out_without_the_vgic() {
    use super::devices::VsmmuRegisters;
    use super::trap::quick_mmio;
    let mut h = GuestHarness::new(&[]);
    let prod = layout::VSMMU_BASE + 0x98;
    // No vSMMU on the bus: nothing to do here.
    trap_at(prod, dabt(4, 3, true));
    let mut f = frame(0x4000_1000);
    assert_eq!(
        quick_mmio(&h.vm, 0, &mut f, &current_exit(), &h.machine),
        None
    );
    assert_eq!(f.elr, 0x4000_1000, "nothing done");

    let seen = Accesses::default();
    let with = |read: u64, raise: alloc::vec::Vec<u32>| {
        Some(spin::Mutex::new(alloc::boxed::Box::new(FakeIommu {
            seen: Accesses::clone(&seen),
            read,
            raise,
        })
            as alloc::boxed::Box<dyn super::vm::VirtualIommu>))
    };
    h.vm.vsmmu = with(0xffff_ffff_1234_5678, alloc::vec![]);
    h.vm.bus
        .insert(
            Ipa(layout::VSMMU_BASE),
            layout::VSMMU_SIZE,
            alloc::boxed::Box::new(VsmmuRegisters),
        )
        .unwrap();
    let (vm, m) = (&h.vm, &h.machine);
    // `str w3, [CMDQ_PROD]`: the vSMMU gets the write, the store is
    // skipped, and nothing is raised.
    trap_at(prod, dabt(4, 3, true));
    let mut f = frame(0x4000_1000);
    f.x[3] = 0xdead_0000_0000_0007;
    assert_eq!(
        quick_mmio(vm, 0, &mut f, &current_exit(), m),
        Some(alloc::vec![])
    );
    assert_eq!(f.elr, 0x4000_1004, "the store is skipped");
    // `ldr w7, [CMDQ_CONS]`: the value read lands zero-extended.
    trap_at(layout::VSMMU_BASE + 0x9c, dabt(4, 7, false));
    let mut f = frame(0x4000_2000);
    f.x[7] = u64::MAX;
    assert_eq!(
        quick_mmio(vm, 0, &mut f, &current_exit(), m),
        Some(alloc::vec![])
    );
    assert_eq!(f.x[7], 0x1234_5678);
    assert_eq!(
        *seen.lock().unwrap(),
        [(0x98, 4, true, 7), (0x9c, 4, false, 0)],
        "each access reaches the vSMMU once, at its offset, with the stored value"
    );
    assert_eq!(fake::with(|c| c.el1_exception), None, "no exception");

    // The edges an access raises go back to the caller, not to the vGIC.
    let mut h = h;
    h.vm.vsmmu = with(0, alloc::vec![48]);
    trap_at(prod, dabt(4, 3, true));
    let mut f = frame(0x4000_1000);
    assert_eq!(
        quick_mmio(&h.vm, 0, &mut f, &current_exit(), &h.machine),
        Some(alloc::vec![48])
    );
    // GICD_ISPENDR1 bit 16: SPI 48 is not pending (yet).
    assert_eq!(h.vm.vgic.lock().dist_read(0x204, 4) & (1 << 16), 0);
    // Through the bus, as an exit that folds the list registers first
    // carries it out, the same access raises it at once.
    trap_at(prod, dabt(4, 3, true));
    let mut f = frame(0x4000_1000);
    handle_sync(&h.vm, 0, &mut f, current_exit(), &h.machine);
    assert_ne!(h.vm.vgic.lock().dist_read(0x204, 4) & (1 << 16), 0);

    // Anything else is left alone: the GIC distributor (it needs the
    // vGIC), an access straddling the vSMMU's end.
    let before = seen.lock().unwrap().len();
    for (ipa, size) in [
        (layout::GICD_BASE, 4),
        (layout::VSMMU_BASE + layout::VSMMU_SIZE - 4, 8),
    ] {
        trap_at(ipa, dabt(size, 1, false));
        let mut f = frame(0x4000_4000);
        assert_eq!(
            quick_mmio(&h.vm, 0, &mut f, &current_exit(), &h.machine),
            None
        );
        assert_eq!(f.elr, 0x4000_4000);
    }
    assert_eq!(seen.lock().unwrap().len(), before);
}

#[test]
fn an_access_between_devices_gets_a_synchronous_external_abort() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    let hole = layout::UART_BASE + layout::UART_SIZE + 0x100;
    trap_at(hole, dabt(4, 1, false));
    let mut f = frame(0x4000_3000);
    handle_sync(vm, 1, &mut f, current_exit(), m);
    let [esr, far, elr, spsr] = fake::with(|c| c.el1_exception).expect("injected");
    assert_eq!(esr >> 26, 0x25, "data abort, same EL");
    assert_eq!(esr & 0x3f, 0x10, "synchronous external abort");
    assert_ne!(esr & (1 << 25), 0, "IL");
    assert_eq!(esr & (1 << 6), 0, "a read");
    assert_eq!(far & 0xfff, hole & 0xfff);
    assert_eq!((elr, spsr), (0x4000_3000, 0x3c5));
    assert_eq!(f.elr, 0x4008_0200, "VBAR_EL1 + current EL with SP_ELx");
    assert_eq!(vm.bad_accesses(), 1);
    assert!(m.calls().is_empty());
}

#[test]
fn an_access_straddling_a_device_end_is_refused_too() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    trap_at(layout::UART_BASE + layout::UART_SIZE - 4, dabt(8, 0, true));
    let mut f = frame(0x4000_3000);
    handle_sync(vm, 0, &mut f, current_exit(), m);
    assert_eq!(fake::with(|c| c.el1_exception).unwrap()[0] >> 26, 0x25);
}

#[test]
fn the_counters_page_counts_nothing_it_is_not_told() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    for _ in 0..3 {
        vm.count_trap(super::vm::TrapKind::Mmio);
    }
    trap_at(layout::COUNTERS_BASE, dabt(8, 2, false));
    let mut f = frame(0);
    handle_sync(vm, 0, &mut f, current_exit(), m);
    assert_eq!(f.x[2], 3);
    // Writes are ignored, and the page stays as it was.
    trap_at(layout::COUNTERS_BASE, dabt(8, 2, true));
    handle_sync(vm, 0, &mut frame(0), current_exit(), m);
    trap_at(layout::COUNTERS_BASE + 8, dabt(8, 2, false));
    let mut f = frame(0);
    handle_sync(vm, 0, &mut f, current_exit(), m);
    assert_eq!(f.x[2], 0, "no vSMMU");
}

#[test]
fn a_pci_slot_without_a_function_reads_all_ones() {
    let h = GuestHarness::new(&[]);
    let vm = &h.vm;
    trap_at(layout::PCI_ECAM_BASE, dabt(4, 9, false));
    let mut f = frame(0);
    handle_sync(vm, 0, &mut f, current_exit(), &Recorder::default());
    assert_eq!(f.x[9], 0xffff_ffff);
}

/// ESR_EL2 of an HVC #0.
const HVC: u64 = 0x16 << 26;

fn hvc(vm: &Vm, vcpu: usize, x: [u64; 4], m: &Recorder) -> (Flow, TrapFrame) {
    fake::reset();
    fake::with(|c| c.esr_el2 = HVC);
    let mut f = frame(0x4000_0100);
    f.x[..4].copy_from_slice(&x);
    let flow = handle_sync(vm, vcpu, &mut f, current_exit(), m);
    (flow, f)
}

#[test]
fn psci_cpu_on_starts_the_target_through_the_machine() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    let (flow, f) = hvc(vm, 0, [0xc400_0003, 1, RAM_BASE + 0x100, 0x77], m);
    assert_eq!((flow, f.x[0]), (Flow::Resume, 0));
    assert_eq!(f.elr, 0x4000_0100, "HVC's ELR is already past it");
    assert_eq!(
        m.calls(),
        [Call::Start {
            vcpu: 1,
            entry: Ipa(RAM_BASE + 0x100),
            x0: 0x77
        }]
    );
    assert_eq!(vm.power.lock()[1], VcpuPower::OnPending);
    // An entry point outside the VM's RAM: INVALID_ADDRESS, nothing started.
    let m = Recorder::default();
    vm.power.lock()[1] = VcpuPower::Off;
    let (_, f) = hvc(vm, 0, [0xc400_0003, 1, 0x1000, 0], &m);
    assert_eq!(f.x[0] as i64, -9);
    assert!(m.calls().is_empty());
}

#[test]
fn an_serror_stops_the_vm_as_crashed_devices_first() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    capture_log();
    fake::reset();
    fake::with(|c| c.esr_el2 = 0x2f << 26 | 1 << 25);
    assert_eq!(super::trap::handle_serror(vm, 0, m), Flow::Park);
    assert!(!vm.is_running());
    let calls = m.calls();
    let stop = calls.iter().position(|c| *c == Call::StopDevices);
    let stopped = calls
        .iter()
        .position(|c| *c == Call::Stopped(VmState::Crashed));
    assert!(
        matches!((stop, stopped), (Some(a), Some(b)) if a < b),
        "{calls:?}"
    );
    assert!(log_lines()
        .iter()
        .any(|l| l.contains("VM t: vCPU 0: SError (ESR 0xbe000000): stopping the VM")));
}

#[test]
fn a_query_hypercall_takes_the_quick_path_and_nothing_else_does() {
    let h = GuestHarness::new(&[]);
    let vm = &h.vm;
    fake::reset();
    fake::with(|c| c.esr_el2 = HVC);
    let mut f = frame(0x4000_0100);
    f.x[0] = 0x8400_0000; // PSCI_VERSION
    assert!(super::trap::quick_hypercall(vm, &mut f, &current_exit()));
    assert_eq!((f.x[0], f.elr), (0x1_0001, 0x4000_0100));
    // CPU_ON changes a vCPU's state: the full path.
    let mut f = frame(0x4000_0100);
    f.x[..4].copy_from_slice(&[0xc400_0003, 1, RAM_BASE + 0x100, 0]);
    assert!(!super::trap::quick_hypercall(vm, &mut f, &current_exit()));
    assert_eq!(vm.power.lock()[1], VcpuPower::Off, "nothing started");
    // Not a hypercall at all.
    fake::with(|c| c.esr_el2 = dabt(4, 0, false));
    let mut f = frame(0x4000_0100);
    assert!(!super::trap::quick_hypercall(vm, &mut f, &current_exit()));
}

#[test]
fn cpu_off_parks_the_caller() {
    let h = GuestHarness::new(&[]);
    let vm = &h.vm;
    vm.power.lock()[1] = VcpuPower::On;
    let (flow, _) = hvc(vm, 1, [0x8400_0002, 0, 0, 0], &Recorder::default());
    assert_eq!(flow, Flow::Park);
    assert_eq!(vm.power.lock()[1], VcpuPower::Off);
    assert!(vm.is_running(), "the VM runs on");
}

#[test]
fn system_off_parks_the_other_vcpus_then_stops_the_devices() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    // A partial console line is still printed, after the devices stopped.
    vm.uart.lock().write(0, 1, u64::from(b'x'));
    let (flow, _) = hvc(vm, 0, [0x8400_0008, 0, 0, 0], m);
    assert_eq!(flow, Flow::Park);
    assert_eq!(vm.state(), VmState::PoweredOff);
    assert_eq!(
        m.calls(),
        [
            Call::Kick(1),
            Call::Park(Some(0)),
            Call::StopDevices,
            Call::Line(String::from("x")),
            Call::Stopped(VmState::PoweredOff),
        ]
    );
    // A second stop (the other vCPU racing) does nothing.
    let m = Recorder::default();
    vm.stop(VmState::Crashed, Some(1), &m);
    vm.restart(Some(1), &m);
    assert!(m.calls().is_empty());
    assert_eq!(vm.state(), VmState::PoweredOff);
}

#[test]
fn system_reset_restarts_the_vm_in_its_reset_state() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    let fresh_vgic = alloc::format!("{:?}", *vm.vgic.lock());
    // The old incarnation's state: a pending SPI, a vITS command queue, a
    // vCPU on, a partial console line, a bad access.
    let _ = vm.vgic.lock().inject_edge(40, 0).unwrap();
    vm.its_access(0, 0x80, 8, Some(0x8000_0000_4000_0000), m);
    assert_ne!(vm.its_access(0, 0x80, 8, None, m), 0);
    vm.power.lock()[1] = VcpuPower::On;
    vm.uart.lock().write(0, 1, u64::from(b'y'));
    vm.report(0, 0, format_args!("a bad access"));
    // The guest sets its clock (RTCLR): a real-time clock keeps counting
    // through a reset.
    trap_at(layout::RTC_BASE + 0x8, dabt(4, 2, true));
    let mut f = frame(0x4000_2000);
    f.x[2] = 1_796_000_000;
    handle_sync(vm, 0, &mut f, current_exit(), m);
    let m = Recorder::default();
    // SYSTEM_RESET from vCPU 1.
    let (flow, _) = hvc(vm, 1, [0x8400_0009, 0, 0, 0], &m);
    assert_eq!(flow, Flow::Park, "the caller's run ends");
    assert_eq!(vm.state(), VmState::Running);
    assert_eq!(vm.generation(), 1);
    assert_eq!(
        m.calls(),
        [
            Call::Kick(0),
            Call::Park(Some(1)),
            Call::StopDevices,
            Call::Line(String::from("y")),
            Call::Restart,
            Call::Start {
                vcpu: 0,
                entry: Ipa(RAM_BASE),
                x0: RAM_BASE + 0x1000,
            },
        ],
        "every other vCPU parked before the devices stop, all before the restart"
    );
    assert_eq!(alloc::format!("{:?}", *vm.vgic.lock()), fresh_vgic);
    assert_eq!(vm.its_access(0, 0x80, 8, None, &m), 0, "GITS_CBASER reset");
    assert_eq!(*vm.power.lock(), [VcpuPower::OnPending, VcpuPower::Off]);
    assert_eq!(vm.bad_accesses(), 1, "counted across restarts");
    // The new incarnation reads how often the VM restarted at +0x20 of
    // its counters page.
    trap_at(layout::COUNTERS_BASE + 0x20, dabt(8, 3, false));
    let mut f = frame(0x4000_2000);
    handle_sync(vm, 0, &mut f, current_exit(), &m);
    assert_eq!(f.x[3], 1);
    trap_at(layout::RTC_BASE, dabt(4, 4, false));
    let mut f = frame(0x4000_2000);
    handle_sync(vm, 0, &mut f, current_exit(), &m);
    assert_eq!(f.x[4], 1_796_000_000, "RTCDR as the guest set it");
    // SYSTEM_RESET2 (a warm reset) restarts it again.
    let m = Recorder::default();
    hvc(vm, 0, [0xc400_0012, 0, 0, 0], &m);
    assert_eq!((vm.state(), vm.generation()), (VmState::Running, 2));
    assert!(m.calls().contains(&Call::Restart));
}

#[test]
fn scenario_choices_for_reset_and_power_off() {
    // on_reset = "stop": the VM stops, not cleanly.
    let mut h = GuestHarness::new(&[]);
    h.vm.on_reset = scenario::Lifecycle::Stop;
    hvc(&h.vm, 0, [0x8400_0009, 0, 0, 0], &h.machine);
    assert_eq!(h.vm.state(), VmState::ResetRequested);
    assert!(!h.vm.state().is_clean());
    assert_eq!(
        h.machine.calls().last(),
        Some(&Call::Stopped(VmState::ResetRequested))
    );
    // on_poweroff = "restart": SYSTEM_OFF restarts it.
    let mut h = GuestHarness::new(&[]);
    h.vm.on_poweroff = scenario::Lifecycle::Restart;
    hvc(&h.vm, 0, [0x8400_0008, 0, 0, 0], &h.machine);
    assert_eq!((h.vm.state(), h.vm.generation()), (VmState::Running, 1));
    assert!(h.machine.calls().contains(&Call::Restart));
}

#[test]
fn console_requests_stop_and_start_the_vm_again() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    assert_eq!(vm.take_request(), None);
    // Stop, served by a CPU of the VM whose vCPU is parked.
    vm.ask(Request::Stop);
    let req = vm.take_request().unwrap();
    assert_eq!(vm.take_request(), None, "taken once");
    assert!(vm.serve(req, None, m));
    assert_eq!(vm.state(), VmState::Stopped);
    assert!(vm.state().is_clean(), "an operator's stop is not a failure");
    assert_eq!(
        m.take(),
        [
            Call::Kick(0),
            Call::Kick(1),
            Call::Park(None),
            Call::StopDevices,
            Call::Stopped(VmState::Stopped),
        ]
    );
    // Stopping it again, or starting it while it runs, does nothing.
    assert!(!vm.serve(Request::Stop, None, m));
    // Started again: a new incarnation, as after a restart.
    assert!(vm.serve(Request::Start, None, m));
    assert_eq!((vm.state(), vm.generation()), (VmState::Running, 1));
    let calls = m.take();
    assert_eq!(calls.first(), Some(&Call::Restart));
    assert!(matches!(calls.last(), Some(Call::Start { vcpu: 0, .. })));
    assert!(!vm.serve(Request::Start, None, m));
    assert!(m.take().is_empty());
    // Restart while running, from a vCPU in a trap.
    assert!(vm.serve(Request::Restart, Some(1), m));
    assert_eq!((vm.state(), vm.generation()), (VmState::Running, 2));
}

#[test]
fn a_vm_resetting_in_a_loop_logs_a_bounded_number_of_lines() {
    use super::vm::restart_reported;
    let reported: Vec<u32> = (1..=300).filter(|&n| restart_reported(n)).collect();
    assert_eq!(reported, [1, 2, 3, 4, 8, 16, 32, 64, 128, 256]);
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    capture_log();
    for _ in 0..300 {
        vm.report(0, 0, format_args!("a bad access"));
        hvc(vm, 0, [0x8400_0009, 0, 0, 0], m);
    }
    assert_eq!(vm.generation(), 300);
    let lines = log_lines();
    // 5 bad-access lines in all (4 and "only counted"), 4 lines for each of
    // the 10 restarts reported (restarting, traps, traps by kind, bad
    // accesses), 1 saying only some are.
    assert_eq!(lines.len(), 5 + 4 * 10 + 1, "{lines:#?}");
}

#[test]
fn a_crashed_vm_is_not_started_again() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    vm.stop(VmState::Crashed, None, m);
    m.take();
    assert!(!vm.serve(Request::Start, None, m));
    assert_eq!(vm.state(), VmState::Crashed);
    assert!(m.take().is_empty(), "nothing is rebuilt");
}

#[test]
fn a_restart_that_cannot_finish_ends_the_vm_as_crashed() {
    // A vCPU that does not park: the devices stop, nothing is reused.
    let mut h = GuestHarness::new(&[]);
    h.machine.stuck_vcpu = true;
    hvc(&h.vm, 0, [0x8400_0009, 0, 0, 0], &h.machine);
    assert_eq!(h.vm.state(), VmState::Crashed);
    assert_eq!(
        h.machine.calls(),
        [
            Call::Kick(1),
            Call::Park(Some(0)),
            Call::StopDevices,
            Call::Stopped(VmState::Crashed),
        ]
    );
    // The machine cannot restart it (no images, say).
    let mut h = GuestHarness::new(&[]);
    h.machine.restart_fails = Some("no images");
    hvc(&h.vm, 0, [0x8400_0009, 0, 0, 0], &h.machine);
    assert_eq!(h.vm.state(), VmState::Crashed);
    assert_eq!(
        h.machine.calls()[3..],
        [Call::Restart, Call::Stopped(VmState::Crashed)]
    );
}

/// ESR_EL2 of a trapped MRS (`read`) or MSR of S`op0`_`op1`_C`crn`_C`crm`_`op2`
/// with register `rt`.
fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> u64 {
    let iss = (op0 << 20) | (op2 << 17) | (op1 << 14) | (crn << 10) | (rt << 5) | (crm << 1);
    (0x18 << 26) | (1 << 25) | iss | u64::from(read)
}

/// Runs one trapped system register access with x4 = 0xdead; returns x4,
/// where the vCPU resumes and the injected syndrome, if any.
fn sysreg_trap(
    vm: &Vm,
    m: &Recorder,
    esr: u64,
    ids: &[((u8, u8), u64)],
) -> (u64, u64, Option<u64>) {
    fake::reset();
    fake::with(|c| {
        c.esr_el2 = esr;
        c.vbar_el1 = 0x4008_0000;
        c.id_regs = ids.to_vec();
    });
    let mut f = frame(0x4000_0000);
    f.x[4] = 0xdead;
    handle_sync(vm, 0, &mut f, current_exit(), m);
    (f.x[4], f.elr, fake::with(|c| c.el1_exception).map(|e| e[0]))
}

#[test]
fn unknown_traps_and_registers_the_vm_does_not_have_are_undefined() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    // EC 0x07 (FP access; never trapped, so unknown here).
    fake::reset();
    fake::with(|c| c.esr_el2 = 0x07 << 26);
    let mut f = frame(0x4000_0000);
    handle_sync(vm, 0, &mut f, current_exit(), m);
    assert_eq!(fake::with(|c| c.el1_exception).unwrap()[0] >> 26, 0);
    // MRS x4, S3_0_C15_C2_0 (implementation defined), MRS x4, PMCR_EL0 (the
    // PMU is hidden), MSR PMCR_EL0, x4: undefined, x4 untouched, at the
    // vector (EL1h, current EL with SP_ELx: +0x200).
    for esr in [
        sysreg(3, 0, 15, 2, 0, 4, true),
        sysreg(3, 3, 9, 12, 0, 4, true),
        sysreg(3, 3, 9, 12, 0, 4, false),
    ] {
        let (x4, elr, injected) = sysreg_trap(vm, m, esr, &[]);
        assert_eq!(
            (x4, elr, injected),
            (0xdead, 0x4008_0200, Some(1 << 25)),
            "{esr:#x}"
        );
    }
}

#[test]
fn id_registers_read_the_cpus_values_without_hidden_features() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    // A CPU with a PMUv3, trace, MTE and SME, and some instructions.
    let ids = [
        ((5, 0), 0x0000_0000_1030_5116_u64),
        ((4, 1), 0x0000_0000_0100_0221),
        ((6, 0), 0x0000_0000_1011_2120),
    ];
    // ID_AA64DFR0_EL1: DebugVer, BRPs, WRPs, CTX_CMPs stay; TraceVer and
    // PMUVer read 0.
    let (x4, elr, injected) = sysreg_trap(vm, m, sysreg(3, 0, 0, 5, 0, 4, true), &ids);
    assert_eq!(
        (x4, elr, injected),
        (0x0000_0000_1030_5006, 0x4000_0004, None)
    );
    // ID_AA64PFR1_EL1: BT and SSBS stay, MTE and SME read 0.
    let (x4, ..) = sysreg_trap(vm, m, sysreg(3, 0, 0, 4, 1, 4, true), &ids);
    assert_eq!(x4, 0x21);
    // ID_AA64ISAR0_EL1: as the CPU has it.
    let (x4, ..) = sysreg_trap(vm, m, sysreg(3, 0, 0, 6, 0, 4, true), &ids);
    assert_eq!(x4, 0x0000_0000_1011_2120);
    // An unallocated encoding of the ID space reads as zero, as on the CPU.
    let (x4, elr, _) = sysreg_trap(vm, m, sysreg(3, 0, 0, 7, 7, 4, true), &ids);
    assert_eq!((x4, elr), (0, 0x4000_0004));
    // ID registers are read-only: a write is undefined.
    let (x4, elr, injected) = sysreg_trap(vm, m, sysreg(3, 0, 0, 5, 0, 4, false), &ids);
    assert_eq!((x4, elr, injected), (0xdead, 0x4008_0200, Some(1 << 25)));
}

#[test]
fn group_0_sgis_are_sent_and_other_security_state_ones_ignored() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    // MSR ICC_SGI0R_EL1, x4 and MSR ICC_ASGI1R_EL1, x4: emulated, the
    // instruction done.
    for op2 in [7, 6] {
        let (_, elr, injected) = sysreg_trap(vm, m, sysreg(3, 0, 12, 11, op2, 4, false), &[]);
        assert_eq!((elr, injected), (0x4000_0004, None), "op2 {op2}");
    }
}

#[test]
fn a_guest_cannot_make_the_hypervisor_report_without_bound() {
    let h = GuestHarness::new(&[]);
    let (vm, m) = (&h.vm, &h.machine);
    capture_log();
    for _ in 0..1000 {
        trap_at(0x1000_0000, dabt(4, 0, false));
        handle_sync(vm, 0, &mut frame(0x4000_0000), current_exit(), m);
    }
    let lines = log_lines();
    assert_eq!(vm.bad_accesses(), 1000);
    assert_eq!(
        lines.len(),
        super::vm::REPORTS_PER_VM as usize + 1,
        "{lines:#?}"
    );
    assert!(
        lines[0].starts_with("VM t: vCPU 0: 4-byte read at IPA 0x10000000 outside its memory and devices: external abort injected"),
        "{}",
        lines[0]
    );
    assert!(lines.last().unwrap().contains("further ones only counted"));
}

/// Stores `value` (8 bytes, from x3) at `ipa` through the trap path.
fn store64(h: &GuestHarness, vcpu: usize, ipa: u64, value: u64) {
    trap_at(ipa, dabt(8, 3, true));
    let mut f = frame(0x4000_3000);
    f.x[3] = value;
    assert_eq!(
        handle_sync(&h.vm, vcpu, &mut f, current_exit(), &h.machine),
        Flow::Resume
    );
    assert_eq!(fake::with(|c| c.el1_exception), None, "store to {ipa:#x}");
}

#[test]
fn the_guest_maps_its_functions_msi_through_the_its_frames() {
    use crate::harness::{FUNCTION, VIRTUAL_RID};
    use crate::vdev::vits::cmd::Command;
    let h = GuestHarness::new(&[]);
    let its = layout::ITS_BASE;
    let (prop, queue, table, itt) = (
        RAM_BASE,
        RAM_BASE + 0x4000,
        RAM_BASE + 0x5000,
        RAM_BASE + 0x6000,
    );
    // Linux's order: Group 1 on in the distributor, the LPI configuration
    // table and EnableLPIs on each redistributor, then the ITS's tables,
    // queue and enable.
    trap_at(layout::GICD_BASE, dabt(4, 3, true));
    let mut f = frame(0x4000_3000);
    f.x[3] = 0x12; // ARE | EnableGrp1
    handle_sync(&h.vm, 0, &mut f, current_exit(), &h.machine);
    for vcpu in 0..2u64 {
        let rd = layout::GICR_BASE + vcpu * layout::GICR_STRIDE;
        store64(&h, 0, rd + 0x70, prop | 13);
        trap_at(rd, dabt(4, 3, true));
        let mut f = frame(0x4000_3000);
        f.x[3] = 1;
        handle_sync(&h.vm, 0, &mut f, current_exit(), &h.machine);
    }
    h.vm.ram.write(Ipa(prop + 5), &[0xa1]).unwrap(); // LPI 8197: enabled
    store64(&h, 0, its + 0x100, (1 << 63) | table);
    store64(&h, 0, its + 0x80, (1 << 63) | queue);
    store64(&h, 0, its, 1);
    let cmds = [
        Command::Mapc {
            icid: 1,
            target: 1,
            valid: true,
        },
        Command::Mapd {
            device: VIRTUAL_RID,
            valid: true,
            event_bits: 2,
            itt: Ipa(itt),
        },
        Command::Mapti {
            device: VIRTUAL_RID,
            event: 3,
            intid: 8197,
            icid: 1,
        },
        // Not the VM's function: refused.
        Command::Mapd {
            device: VIRTUAL_RID + 8,
            valid: true,
            event_bits: 2,
            itt: Ipa(itt),
        },
    ];
    for (i, c) in cmds.iter().enumerate() {
        let bytes: Vec<u8> = c.encode().iter().flat_map(|d| d.to_le_bytes()).collect();
        h.vm.ram.write(Ipa(queue + 32 * i as u64), &bytes).unwrap();
    }
    h.machine.take();
    capture_log();
    store64(&h, 0, its + 0x88, 32 * cmds.len() as u64);
    let physical = u32::from(FUNCTION.rid());
    assert!(h.machine.calls().contains(&Call::RouteMsi {
        device: physical,
        event: 3,
        to: Some(EventLpi {
            vcpu: 1,
            intid: 8197,
            config: LpiConfig(0xa1)
        })
    }));
    let lines = log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("vITS ignored") && l.contains("not one of this VM's devices")),
        "{lines:?}"
    );
    // The function's MSI arrives: LPI 8197 pending on vCPU 1.
    assert!(h.vm.deliver_msi(physical, 3, &h.machine));
    assert!(h.vm.vgic.lock().lpi_pending(8197));
    assert!(h.machine.calls().contains(&Call::Kick(1)));
    assert!(
        !h.vm.deliver_msi(physical, 2, &h.machine),
        "event 2 is not mapped"
    );
}
