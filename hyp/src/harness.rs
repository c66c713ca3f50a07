//! A VM on the host, for the unit tests and the fuzz targets: the devices
//! the runtime gives every VM at the addresses it gives them, a PCI host
//! bridge over one function whose configuration space the caller chooses
//! (a device is as hostile as its guest), the trap dispatcher behind
//! `arch::fake`, and a [`Machine`] that records what the VMM asks of the
//! hardware.
//!
//! [`GuestHarness::trap`] runs one trap and checks the rules the
//! architecture and the hypervisor's promises set, independently of how
//! the code under test reaches them: where the vCPU resumes, what an
//! injected exception looks like, which vCPUs may be started or kicked, and
//! that a guest cannot make the hypervisor log without bound.

use crate::arch::{fake, guest::GuestControls, TrapFrame};
use crate::drivers::pci::{BarKind, Bdf, ConfigAccess};
use crate::vdev::rtc::VirtualRtc;
use crate::vdev::vgic::VGic;
use crate::vdev::vits::{DeviceGrant, EventLpi, ItsConfig};
use crate::vdev::vpci::{VirtualBar, VirtualFunction, VirtualPciBus};
use crate::vm::devices::{standard_bus, PciHostBridge};
use crate::vm::ram::GuestRam;
use crate::vm::trap::{current_exit, handle_sync, Flow};
use crate::vm::vm::{Machine, Vm, VmState, REPORTS_PER_VM};
use scenario::guest_layout as layout;
use smmu::addr::Ipa;
use std::boxed::Box;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::string::String;
use std::sync::Mutex;
use std::vec::Vec;

/// Where the harness VM's RAM starts.
pub const RAM_BASE: u64 = 0x4000_0000;
/// Its RAM size.
pub const RAM_SIZE: u64 = 64 << 10;
/// Its vCPUs.
pub const VCPUS: usize = 2;
/// The physical function behind its virtual 00:01.0.
pub const FUNCTION: Bdf = Bdf {
    bus: 0,
    dev: 2,
    func: 0,
};

/// The requester ID of the harness VM's function as the guest sees it
/// (00:01.0), its DeviceID in the guest's `msi-map`.
pub const VIRTUAL_RID: u32 = 0x08;

/// What the VMM asked of the machine, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `Machine::kick`.
    Kick(usize),
    /// `Machine::start_vcpu`.
    Start {
        /// The vCPU.
        vcpu: usize,
        /// Its entry point.
        entry: Ipa,
        /// Its x0.
        x0: u64,
    },
    /// `Machine::console_line`.
    Line(String),
    /// `Machine::stop_devices`.
    StopDevices,
    /// `Machine::vm_stopped`.
    Stopped(VmState),
    /// `Machine::park_vcpus`, with the vCPU left out.
    Park(Option<usize>),
    /// `Machine::restart`.
    Restart,
    /// `Machine::route_msi`.
    RouteMsi {
        /// The physical DeviceID.
        device: u32,
        /// The EventID.
        event: u32,
        /// The LPI and vCPU, or `None` to stop routing.
        to: Option<EventLpi>,
    },
}

/// A [`Machine`] that records every call.
#[derive(Debug, Default)]
pub struct Recorder {
    calls: RefCell<Vec<Call>>,
    /// `park_vcpus` answers false (a vCPU that does not stop).
    pub stuck_vcpu: bool,
    /// `restart` fails with this.
    pub restart_fails: Option<&'static str>,
}

impl Recorder {
    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Takes the calls so far.
    pub fn take(&self) -> Vec<Call> {
        self.calls.take()
    }
}

impl Machine for Recorder {
    fn kick(&self, _vm: &Vm, vcpu: usize) {
        self.calls.borrow_mut().push(Call::Kick(vcpu));
    }
    fn start_vcpu(&self, _vm: &Vm, vcpu: usize, entry: Ipa, x0: u64) {
        self.calls
            .borrow_mut()
            .push(Call::Start { vcpu, entry, x0 });
    }
    fn console_line(&self, _vm: &Vm, line: &[u8]) {
        let text = String::from_utf8_lossy(line).into_owned();
        self.calls.borrow_mut().push(Call::Line(text));
    }
    fn stop_devices(&self, _vm: &Vm) {
        self.calls.borrow_mut().push(Call::StopDevices);
    }
    fn vm_stopped(&self, _vm: &Vm, how: VmState) {
        self.calls.borrow_mut().push(Call::Stopped(how));
    }
    fn park_vcpus(&self, _vm: &Vm, except: Option<usize>) -> bool {
        self.calls.borrow_mut().push(Call::Park(except));
        !self.stuck_vcpu
    }
    fn restart(&self, _vm: &Vm) -> Result<(Ipa, u64), String> {
        self.calls.borrow_mut().push(Call::Restart);
        match self.restart_fails {
            None => Ok((Ipa(RAM_BASE), RAM_BASE + 0x1000)),
            Some(e) => Err(e.into()),
        }
    }
    fn route_msi(
        &self,
        _vm: &Vm,
        device: u32,
        event: u32,
        to: Option<EventLpi>,
    ) -> Result<(), &'static str> {
        self.calls
            .borrow_mut()
            .push(Call::RouteMsi { device, event, to });
        Ok(())
    }
}

/// One function's configuration space, as its device answers: whatever the
/// caller put there, writable everywhere.
#[derive(Debug)]
pub struct FakeFunction {
    regs: Mutex<Vec<u32>>,
}

impl FakeFunction {
    /// A function whose first bytes of configuration space are `header`
    /// (the rest zero).
    pub fn new(header: &[u8]) -> Self {
        let mut regs = std::vec![0u32; 1024];
        for (r, chunk) in regs.iter_mut().zip(header.chunks(4)) {
            let mut b = [0u8; 4];
            b[..chunk.len()].copy_from_slice(chunk);
            *r = u32::from_le_bytes(b);
        }
        Self {
            regs: Mutex::new(regs),
        }
    }
}

impl ConfigAccess for FakeFunction {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        assert!(
            offset.is_multiple_of(4) && offset < 0x1000,
            "hypervisor read config offset {offset:#x} of {bdf}"
        );
        if bdf != FUNCTION {
            return u32::MAX;
        }
        self.regs.lock().unwrap()[usize::from(offset / 4)]
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        assert!(
            offset.is_multiple_of(4) && offset < 0x1000,
            "hypervisor wrote config offset {offset:#x} of {bdf}"
        );
        assert_eq!(
            bdf, FUNCTION,
            "hypervisor wrote a function the VM does not own"
        );
        self.regs.lock().unwrap()[usize::from(offset / 4)] = value;
    }
}

/// A VM with the runtime's devices, over RAM the harness owns.
#[derive(Debug)]
pub struct GuestHarness {
    /// The VM.
    pub vm: Vm,
    /// What the VMM asked of the machine.
    pub machine: Recorder,
    _ram: Box<[u64]>,
}

/// One trap: the syndrome registers, the guest's state, and which vCPU.
#[derive(Clone, Debug, Default)]
pub struct Trap {
    /// The trapping vCPU (taken modulo the VM's vCPUs).
    pub vcpu: usize,
    /// ESR_EL2.
    pub esr: u64,
    /// HPFAR_EL2.
    pub hpfar: u64,
    /// FAR_EL2.
    pub far: u64,
    /// ELR_EL2.
    pub elr: u64,
    /// SPSR_EL2.
    pub spsr: u64,
    /// The guest's VBAR_EL1.
    pub vbar: u64,
    /// x0..x30.
    pub x: [u64; 31],
}

impl GuestHarness {
    /// A 2-vCPU VM whose virtual 00:01.0 is [`FUNCTION`], a device whose
    /// configuration space starts with `config` (its BAR is at
    /// `layout::PCI_MMIO_BASE`).
    pub fn new(config: &[u8]) -> Self {
        let mut ram = std::vec![0u64; (RAM_SIZE / 8) as usize].into_boxed_slice();
        // SAFETY: the boxed slice lives as long as the harness and is only
        // reached through the VM's GuestRam.
        let guest_ram = unsafe {
            GuestRam::new(
                Ipa(RAM_BASE)..Ipa(RAM_BASE + RAM_SIZE),
                ram.as_mut_ptr() as usize,
            )
        };
        let controls = GuestControls {
            vttbr: 0,
            vtcr: 0,
            vmpidr: 0,
        };
        let mpidrs: Vec<u64> = (0..VCPUS as u64).collect();
        let mut vgic = VGic::new(&mpidrs, 32).expect("a 2-vCPU vGIC");
        vgic.enable_lpis(crate::vdev::vgic::lpi::LPI_ID_BITS);
        let mut vm = Vm::new(
            String::from("t"),
            0,
            guest_ram,
            controls,
            (0..VCPUS).collect(),
            vgic,
        );
        let mut bars = [None; 6];
        bars[0] = Some(VirtualBar {
            guest_addr: Ipa(layout::PCI_MMIO_BASE),
            size: 0x4000,
            kind: BarKind::Mem64,
            prefetchable: false,
        });
        let pci = VirtualPciBus::new(std::vec![VirtualFunction {
            phys: FUNCTION,
            bars,
            msix: None,
            msi: false,
        }]);
        let pci = PciHostBridge::new(pci, Box::new(FakeFunction::new(config)));
        vm.bus = standard_bus(VCPUS as u32, pci, false, true, Some(VirtualRtc::new(0)))
            .expect("the guest layout has no overlaps");
        // The function's MSIs: virtual requester ID 00:01.0, physical
        // FUNCTION's, 8 events.
        let mut devices = BTreeMap::new();
        devices.insert(
            VIRTUAL_RID,
            DeviceGrant {
                physical: u32::from(FUNCTION.rid()),
                events: 8,
            },
        );
        vm.give_its(ItsConfig { devices });
        Self {
            vm,
            machine: Recorder::default(),
            _ram: ram,
        }
    }

    /// Runs one trap through the dispatcher and checks the rules (panics
    /// with the trap when one is broken). Returns what the vCPU does next.
    pub fn trap(&mut self, t: &Trap) -> Flow {
        let vcpu = t.vcpu % VCPUS;
        fake::reset();
        fake::with(|c| {
            c.cpu_index = vcpu;
            c.esr_el2 = t.esr;
            c.hpfar_el2 = t.hpfar;
            c.far_el2 = t.far;
            c.vbar_el1 = t.vbar;
        });
        let mut frame = TrapFrame::zeroed();
        frame.x = t.x;
        frame.elr = t.elr;
        frame.spsr = t.spsr;
        let was_running = self.vm.is_running();
        let flow = handle_sync(&self.vm, vcpu, &mut frame, current_exit(), &self.machine);
        self.check(t, &frame, flow, was_running);
        flow
    }

    fn check(&self, t: &Trap, frame: &TrapFrame, flow: Flow, was_running: bool) {
        if !self.vm.is_running() {
            assert_eq!(flow, Flow::Park, "a stopped VM's vCPU must park: {t:x?}");
        }
        if let Some([esr, _far, elr, spsr]) = fake::with(|c| c.el1_exception) {
            // An injected synchronous exception (Arm ARM D1.10): the guest
            // resumes at its vector for the EL it came from, at EL1h with
            // DAIF masked, its return state saved, and the syndrome is one
            // the hypervisor may inject.
            let ec = esr >> 26;
            assert!(
                matches!(ec, 0x00 | 0x20 | 0x21 | 0x24 | 0x25),
                "injected EC {ec:#x}: {t:x?}"
            );
            assert_ne!(esr & (1 << 25), 0, "injected without IL: {t:x?}");
            assert_eq!((elr, spsr), (t.elr, t.spsr), "EL1 return state: {t:x?}");
            let offset = frame.elr.wrapping_sub(t.vbar);
            assert!(
                matches!(offset, 0x000 | 0x200 | 0x400),
                "resumes at VBAR + {offset:#x}: {t:x?}"
            );
            assert_eq!(frame.spsr, 0x3c5, "EL1h, DAIF masked: {t:x?}");
        } else if flow == Flow::Resume {
            // Emulated: the trapping instruction is done (HVC's return
            // address is already past it).
            let hvc = (t.esr >> 26) & 0x3f == 0x16;
            let want = if hvc { t.elr } else { t.elr.wrapping_add(4) };
            assert_eq!(frame.elr, want, "resume address: {t:x?}");
            assert_eq!(frame.spsr, t.spsr, "PSTATE changed: {t:x?}");
        }
        for call in self.machine.calls() {
            match call {
                Call::Kick(v) => assert!(v < VCPUS, "kicked vCPU {v}: {t:x?}"),
                Call::Start { vcpu, entry, .. } => {
                    assert!(vcpu < VCPUS, "started vCPU {vcpu}: {t:x?}");
                    assert!(
                        (RAM_BASE..RAM_BASE + RAM_SIZE).contains(&entry.raw())
                            && entry.is_aligned(4),
                        "started at {entry:#x}, outside the VM's RAM: {t:x?}"
                    );
                }
                Call::Line(l) => assert!(l.len() <= 1024, "console line of {}", l.len()),
                Call::StopDevices | Call::Stopped(_) | Call::Park(_) | Call::Restart => {
                    assert!(was_running, "stopped twice: {t:x?}")
                }
                Call::RouteMsi { device, event, to } => {
                    // Only the VM's own function, within its grant.
                    assert_eq!(
                        device,
                        u32::from(FUNCTION.rid()),
                        "routed {device:#x}: {t:x?}"
                    );
                    assert!(event < 8, "routed event {event}: {t:x?}");
                    assert!(
                        to.is_none_or(|l| l.vcpu < VCPUS),
                        "routed to {to:?}: {t:x?}"
                    );
                }
            }
        }
        self.machine.take();
    }
}

/// How many log lines a run of at most 256 traps may print, whatever the
/// guest does: the rate-limited reports ([`REPORTS_PER_VM`] and one line
/// saying the rest are counted), the few lines of stopping a VM, and for a
/// guest that resets its VM at every trap the three lines of each of the
/// ten restarts reported (1 to 4, 8, 16, ..., 256) and the line saying
/// only some are.
pub const MAX_LOG_LINES: usize = REPORTS_PER_VM as usize + 1 + 8 + 3 * 10 + 1;

std::thread_local! {
    static LOG_LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct ThreadLogger;

impl log::Log for ThreadLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LOG_LINES.with(|l| l.borrow_mut().push(std::format!("{}", r.args())));
    }
    fn flush(&self) {}
}

static LOGGER: ThreadLogger = ThreadLogger;

/// Keeps this thread's log lines from now on (installs the harness's
/// logger, which keeps each thread's lines apart).
pub fn capture_log() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
    LOG_LINES.with(|l| l.borrow_mut().clear());
}

/// This thread's log lines since [`capture_log`].
pub fn log_lines() -> Vec<String> {
    LOG_LINES.with(|l| l.borrow().clone())
}
