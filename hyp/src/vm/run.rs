//! The VM runtime on the bare-metal target: one explicit [`Runtime`] holds
//! the VMs, which physical CPU runs which vCPU, the forwarded INTx lines,
//! the routes of assigned functions' MSIs and the console multiplexer. It
//! pins each vCPU to its own physical CPU, enters guests, takes every trap
//! and physical interrupt (a routed LPI becomes its VM's vITS MSI), and
//! implements the [`Machine`] the VMM's host-tested code drives (kicks,
//! vCPU starts, console lines, device stop, MSI routes, the end of the
//! run).

use super::build::{self, Built, StartError};
use super::console_mux::{Command, ConsoleMux, Input, Printable, HELP};
use super::exception::SPSR_EL1H;
use super::intx::{IntxForwarding, LineControl};
use super::msi::{Delivery, MsiRouter, PhysicalMsi, RouteError};
use super::space::IpaSpace;
use super::timer;
use super::trap::{self, Flow};
use super::vm::{Machine, Request, TrapKind, Vm, VmState};
use crate::arch::{self, guest, TrapFrame};
use crate::drivers::{gic, its};
use crate::gicv3::intid::Kind;
use crate::gicv3::its::cmd::{DeviceId, EventId, VpeId};
use crate::gicv3::lpi::Lpi;
use crate::gicv3::vlpi::VlpiTable;
use crate::platform::{Irq, Platform};
use crate::seed;
use crate::vdev::psci::VcpuPower;
use crate::vdev::vits::{EventLpi, LpiConfig};
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use log::{error, info, warn};
use smmu::addr::{Ipa, Vmid};
use spin::{Mutex, Once};

/// Physical CPUs this build supports (entry.S stacks).
pub const MAX_CPUS: usize = 8;
/// Failed MSI routes printed before they are only counted.
const ROUTE_REPORTS: u32 = 4;
/// How long a stop waits for a kicked vCPU to leave its guest and park. A
/// vCPU parks at its next exit, which the kick forces at once; the bound
/// only catches a hypervisor fault, generously enough for a loaded host.
const PARK_TIMEOUT_US: u64 = 10_000_000;

/// What a physical CPU runs.
struct Slot {
    /// (VM index, vCPU index), fixed when the VMs are built.
    vcpu: Option<(usize, usize)>,
    /// A pending start: (entry, x0, the VM's incarnation it belongs to),
    /// set by CPU_ON, at boot and by a restart.
    start: Mutex<Option<(Ipa, u64, u32)>>,
    /// The vCPU is in its guest or in the hypervisor on its behalf (from
    /// the moment it is entered until it parks): a stop waits for it.
    in_guest: AtomicBool,
    /// The CPU was started for the runtime (it runs, or is on its way to,
    /// the idle loop, where it takes the work it is given).
    online: AtomicBool,
    /// The index + 1 of a VM whose RAM this CPU is to help write while it
    /// is idle (`Runtime::fresh_memory`); 0 for none.
    help_fill: AtomicUsize,
    /// The frame `guest::run` copies from (static, never on a stack).
    frame: Mutex<TrapFrame>,
    /// With direct MSI delivery: the vCPU's vPE as this CPU's
    /// redistributor makes it resident (GICR_VPROPBASER, GICR_VPENDBASER).
    vpe: Option<(u64, u64)>,
}

/// What the runtime keeps per VM besides the [`Vm`]: the hardware it holds.
struct VmHw {
    devices: Vec<super::assign::AssignedDevice>,
    vmid: Vmid,
    /// Its stage-2 tables: never changed while it runs.
    space: IpaSpace,
    /// What its RAM is loaded with at its start, and where vCPU 0 starts.
    images: Vec<(Ipa, build::Image)>,
    /// The seeds its device tree carries this start (`crate::seed`), drawn
    /// anew by each `Runtime::fresh_memory`.
    seed: Mutex<seed::GuestSeed>,
    start: (Ipa, u64),
    /// The DeviceIDs whose MSIs it is granted, with their events.
    msi_devices: Vec<(DeviceId, u32)>,
    /// With direct delivery: its vPEs and their tables, kept for good.
    vpes: Option<its::VpeSet>,
    /// Its RAM being written as it starts (`Runtime::fresh_memory`): the
    /// next of its [`FILL_CHUNKS`] chunks to take, and those written (one
    /// bit each).
    fill: (AtomicUsize, AtomicU64),
}

/// The chunks a VM's RAM is written in as it starts, which its CPUs take
/// in turn: the cost of a chunk varies (under TCG, rewriting pages that
/// hold translated code costs more, and the first touch of a page costs
/// the host a fault), so each CPU takes the next one as it gets there.
const FILL_CHUNKS: usize = 16;
const _: () = assert!(FILL_CHUNKS <= 64, "one bit per chunk in a u64");

/// Everything the runtime knows, built once before any guest runs.
pub struct Runtime {
    vms: Vec<Vm>,
    hw: Vec<VmHw>,
    slots: Vec<Slot>,
    cpu_mpidr: Vec<u64>,
    all_ok: AtomicBool,
    running: AtomicUsize,
    smmu_eventq_irq: Option<u32>,
    console_irq: Option<Irq>,
    intx: Mutex<IntxForwarding>,
    /// Which VMs have a masked INTx line (`IntxForwarding::masking`),
    /// stored under `intx`'s lock after every change to it: an exit of a
    /// VM without one samples and releases nothing and takes no lock.
    intx_masking: AtomicU64,
    /// The grants of assigned functions' MSIs and the routes of their
    /// events' LPIs (locked before the ITS).
    msi: Mutex<MsiRouter>,
    /// Failed MSI routes so far.
    route_failures: AtomicU32,
    mux: Mutex<ConsoleMux>,
}

impl core::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Runtime")
            .field("vms", &self.vms)
            .finish_non_exhaustive()
    }
}

static RUNTIME: Once<Runtime> = Once::new();

/// What the boot bundle asks the machine to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// VMs: they are built, [`start`] runs them.
    Guests,
    /// No VMs (a machine-only scenario): the boot self-tests are the run.
    MachineOnly,
}

/// Builds the VMs of the scenario in the boot bundle.
pub fn create(
    p: &Platform,
    functions: &[crate::drivers::pci::Function],
) -> Result<Workload, StartError> {
    let cpus = p.cpus.len().min(MAX_CPUS);
    let mut intx = IntxForwarding::new();
    let built = build::create(p, functions, cpus, &mut intx)?;
    if built.is_empty() {
        return Ok(Workload::MachineOnly);
    }
    let mut slots: Vec<Slot> = (0..MAX_CPUS)
        .map(|_| Slot {
            vcpu: None,
            start: Mutex::new(None),
            in_guest: AtomicBool::new(false),
            online: AtomicBool::new(false),
            help_fill: AtomicUsize::new(0),
            frame: Mutex::new(TrapFrame::zeroed()),
            vpe: None,
        })
        .collect();
    let mut vms = Vec::new();
    let mut hw = Vec::new();
    let mut msi = MsiRouter::new();
    for Built {
        vm,
        devices,
        vmid,
        start,
        images,
        space,
        msi_devices,
        vpes,
    } in built
    {
        for &(device, events) in &msi_devices {
            // A function is assigned to one VM only (its stream attaches
            // once), so neither is its DeviceID granted twice.
            assert!(
                msi.grant(vm.index, device, events),
                "{device} granted to two VMs"
            );
        }
        for (v, &pc) in vm.vcpu_pcpu.iter().enumerate() {
            slots[pc].vcpu = Some((vm.index, v));
        }
        if let Some(set) = &vpes {
            let ids = set.vpes.iter().map(|v| v.id).collect();
            msi.deliver_directly(vm.index, set.table, ids)
                .map_err(|e| StartError::Resources(alloc::format!("VM {}: {e}", vm.name)))?;
            for vpe in &set.vpes {
                slots[vpe.cpu].vpe = Some((set.vpropbaser, vpe.vpendbaser));
            }
        }
        // vCPU 0 starts at the kernel entry with x0 = DTB, once its RAM
        // is scrubbed and loaded (`start`).
        vms.push(vm);
        hw.push(VmHw {
            devices,
            vmid,
            space,
            images,
            seed: Mutex::new([0; seed::GUEST_SEED_LEN]),
            start,
            msi_devices,
            vpes,
            fill: (AtomicUsize::new(FILL_CHUNKS), AtomicU64::new(0)),
        });
    }
    let running = vms.len();
    RUNTIME.call_once(|| Runtime {
        vms,
        hw,
        slots,
        cpu_mpidr: p.cpus.iter().take(MAX_CPUS).copied().collect(),
        all_ok: AtomicBool::new(true),
        running: AtomicUsize::new(running),
        smmu_eventq_irq: crate::drivers::iommu::get()
            .and_then(|h| h.lock().eventq_irq)
            .map(|irq| irq.intid),
        console_irq: p.uart_irq,
        intx: Mutex::new(intx),
        intx_masking: AtomicU64::new(0),
        msi: Mutex::new(msi),
        route_failures: AtomicU32::new(0),
        mux: Mutex::new(ConsoleMux::new()),
    });
    Ok(Workload::Guests)
}

fn rt() -> &'static Runtime {
    RUNTIME
        .get()
        .expect("the runtime is built before any vCPU runs")
}

/// Whether physical CPU `pc` serves the runtime: it hosts a vCPU, or
/// helps with the work of idle CPUs (writing a starting VM's RAM).
pub fn serves_runtime(pc: usize) -> bool {
    RUNTIME.get().is_some_and(|r| pc < r.slots.len())
}

/// Starts every physical CPU (those that host no vCPU idle, to help write
/// starting VMs' RAM) and enters this CPU's vCPU.
pub fn start(p: &Platform) -> ! {
    let r = rt();
    arch::set_guest_trap_handler(handle_trap);
    // SMMU faults are reported as they come, by the boot CPU.
    if let Some(irq) = crate::drivers::iommu::get().and_then(|h| h.lock().eventq_irq) {
        gic::enable_spi(irq.intid, r.cpu_mpidr[0], irq.edge);
    }
    // Assigned INTx lines go to the physical CPU of their VM's vCPU 0.
    for (pintid, vm_i, vintid) in r.intx.lock().lines() {
        let vm = &r.vms[vm_i];
        if let Err(e) = vm.vgic.lock().set_resample(vintid, true) {
            warn!("VM {}: INTx INTID {vintid}: {e:?}", vm.name);
        }
        gic::enable_spi(pintid, r.cpu_mpidr[vm.vcpu_pcpu[0]], false);
    }
    r.slots[0].online.store(true, Ordering::SeqCst);
    for pc in 1..r.slots.len().min(r.cpu_mpidr.len()) {
        match p.psci {
            Some(c) => {
                match arch::psci::cpu_on(
                    c,
                    r.cpu_mpidr[pc],
                    arch::secondary_entry as *const () as u64,
                    pc as u64,
                ) {
                    Ok(()) => r.slots[pc].online.store(true, Ordering::SeqCst),
                    Err(e) => error!("physical CPU {pc}: CPU_ON failed: {e:?}"),
                }
            }
            None if r.slots[pc].vcpu.is_some() => {
                error!("no PSCI: physical CPU {pc} cannot host its vCPU")
            }
            None => {}
        }
    }
    // Every VM's RAM scrubbed and loaded with the help of the other CPUs,
    // which wait in their idle loops meanwhile; then its vCPU 0 starts.
    for vm in &r.vms {
        let t = arch::uptime_us();
        let cpus = match r.fresh_memory(vm) {
            Ok(cpus) => cpus,
            Err(why) => {
                error!("VM {}: cannot start: {why}", vm.name);
                vm.stop(VmState::Crashed, None, r);
                continue;
            }
        };
        info!(
            "VM {}: starting: {} MiB scrubbed and its images loaded in {} ms by {cpus} CPU(s)",
            vm.name,
            vm.ram.host_range().1 >> 20,
            (arch::uptime_us() - t) / 1000
        );
        let (entry, x0) = r.hw[vm.index].start;
        r.start_vcpu(vm, 0, entry, x0);
    }
    cpu_main(0)
}

/// Runs on a physical CPU that hosts a vCPU (boot CPU or secondary).
pub fn cpu_main(pc: usize) -> ! {
    gic::init_cpu(arch::mpidr());
    if pc == 0 {
        if let Some(irq) = rt().console_irq {
            crate::console::enable_input_irq(Some(irq));
        }
    }
    idle(pc)
}

/// Waits for work on this physical CPU: a vCPU to start, interrupts to
/// forward. Never returns.
fn idle(pc: usize) -> ! {
    loop {
        let r = rt();
        let help = r.slots[pc].help_fill.swap(0, Ordering::SeqCst);
        if let Some(vm) = help.checked_sub(1).and_then(|i| r.vms.get(i)) {
            r.fill_chunks(vm);
        }
        if let Some((vm_i, _)) = r.slots[pc].vcpu {
            let vm = &r.vms[vm_i];
            if let Some(req) = vm.take_request() {
                vm.serve(req, None, r);
            }
        }
        let start = r.slots[pc].start.lock().take();
        if let Some((entry, x0, generation)) = start {
            enter(pc, entry, x0, generation);
        }
        arch::wait_for_interrupt();
        while handle_irq(pc) {}
    }
}

/// Enters this CPU's vCPU at `entry` with `x0`, a start of the VM's
/// incarnation `generation`; returns (to the idle loop) if the VM is not
/// running or has restarted since.
fn enter(pc: usize, entry: Ipa, x0: u64, generation: u32) {
    let r = rt();
    let Some((vm_i, vcpu)) = r.slots[pc].vcpu else {
        return;
    };
    let vm = &r.vms[vm_i];
    // Marked first, checked second: a stop either sees this vCPU in its
    // guest and waits for it, or this vCPU sees the stop (or the new
    // incarnation) and does not enter (both sides use SeqCst).
    r.slots[pc].in_guest.store(true, Ordering::SeqCst);
    if !vm.is_running() || vm.generation() != generation {
        r.slots[pc].in_guest.store(false, Ordering::SeqCst);
        return;
    }
    vm.power.lock()[vcpu] = VcpuPower::On;
    let mut c = vm.controls;
    c.vmpidr = (1 << 31) | vcpu as u64;
    // SAFETY: the VM's CPU stage-2 table (`build::address_space`) maps only
    // its RAM and its functions' BARs, never the MSI doorbell, and lives in
    // the runtime (`VmHw`) for the hypervisor's lifetime.
    unsafe { guest::configure(&c) };
    crate::vdev::vgic::hw::init_cpu(&mut vm.vgic.lock(), vcpu);
    if let Some((vpropbaser, vpendbaser)) = r.slots[pc].vpe {
        // From here until the vCPU stops, the redistributor presents the
        // vCPU's directly delivered MSIs to it.
        if let Err(e) = gic::make_resident(r.cpu_mpidr[pc], vpropbaser, vpendbaser) {
            error!(
                "VM {}: vCPU {vcpu}: its vPE cannot be made resident on CPU {pc}: {e}; \
                 its MSIs stay pending",
                vm.name
            );
        }
    }
    let frame = {
        let mut f = r.slots[pc].frame.lock();
        *f = TrapFrame::zeroed();
        f.x[0] = x0;
        f.elr = entry.raw();
        f.spsr = SPSR_EL1H;
        &*f as *const TrapFrame
    };
    // SAFETY: the frame is in the runtime (static once built), written
    // above and not touched again until this CPU's next vCPU start.
    unsafe { guest::run(&*frame) }
}

/// Makes the vPE resident on this CPU, if any, non-resident: its vCPU
/// stopped. Its MSIs that arrive meanwhile stay pending in its virtual
/// pending table.
fn vpe_out(pc: usize) {
    let r = rt();
    if r.slots.get(pc).is_some_and(|s| s.vpe.is_some()) {
        if let Err(e) = gic::make_non_resident(r.cpu_mpidr[pc]) {
            error!("CPU {pc}: its vPE does not leave the redistributor: {e}");
        }
    }
}

/// The vCPU on this CPU stops (CPU_OFF, or its VM stopped or restarts):
/// no maintenance interrupts for its leftovers, no vLPIs for it; it is
/// out of its guest, and the CPU waits for its next start.
fn park(pc: usize) -> ! {
    crate::vdev::vgic::hw::off();
    // Its timers stop asserting, and a timer interrupt the guest never
    // deactivated is deactivated: it would otherwise stay active, and that
    // timer never fire for the next vCPU here.
    guest::timers_off();
    gic::deactivate_ppis(
        rt().cpu_mpidr[pc],
        timer::Timer::ALL.map(timer::Timer::ppi).into_iter(),
    );
    vpe_out(pc);
    rt().slots[pc].in_guest.store(false, Ordering::SeqCst);
    idle(pc)
}

/// Handles a trap from the guest running on this CPU (`vector`: 8 sync,
/// 9 IRQ, 10 FIQ, 11 SError, from `vectors.S`).
fn handle_trap(frame: &mut TrapFrame, vector: u64) {
    let r = rt();
    let pc = arch::cpu_index();
    let Some((vm_i, vcpu)) = r.slots.get(pc).and_then(|s| s.vcpu) else {
        panic!("trap from EL1 on CPU {pc}, which runs no vCPU");
    };
    let vm = &r.vms[vm_i];
    // The interrupt that made an IRQ exit is acknowledged first, and
    // handled further down, once the list registers have been folded in;
    // any other is acknowledged only while ISR_EL1 says one is pending.
    let acked = matches!(vector, 9 | 10).then(arch::gicv3::ack);
    // A console access that leaves the UART's interrupt level as it was,
    // an access to a device that leaves the vGIC alone and raises no edge
    // (the vSMMU's registers: its command queue's work, CMD_SYNC MSIs
    // included, is all in guest memory), and a hypercall that only
    // answers, change nothing in the vGIC, so
    // the list registers need neither folding in nor refilling: the guest
    // resumes with them as it left them, as if it had not exited.
    // Everything else, and anything that waits for this exit (a console
    // request, a stop, forwarded lines to sample), takes the whole path
    // below.
    let exit = (vector == 8).then(trap::current_exit);
    let console = exit
        .as_ref()
        .and_then(|e| trap::console_access(vm, frame, e, r));
    let quick = exit
        .as_ref()
        .filter(|_| console.is_none())
        .and_then(|e| trap::quick_mmio(vm, vcpu, frame, e, r));
    vm.count_trap(match (&exit, console) {
        (Some(_), Some(_)) => TrapKind::Console,
        (Some(e), None) => trap::kind(e),
        (None, _) if matches!(vector, 9 | 10) => TrapKind::Interrupt,
        (None, _) => TrapKind::Other,
    });
    let answered = console.is_none()
        && exit
            .as_ref()
            .is_some_and(|e| trap::quick_hypercall(vm, frame, e));
    if (console == Some(false) || answered || quick.as_ref().is_some_and(Vec::is_empty))
        && vm.is_running()
        && !vm.has_request()
        && !r.masks_lines(vm)
    {
        return;
    }
    // What the guest did in its list registers first, then its timers and
    // the levels of its forwarded lines: the exit's trapped GIC accesses
    // see all of it.
    let fx = {
        let mut vgic = vm.vgic.lock();
        let mut fx = crate::vdev::vgic::hw::sync(&mut vgic, vcpu);
        fx.merge(timer::resample(&mut vgic, vcpu));
        fx
    };
    vm.apply(fx, r);
    r.sample_lines(vm, vcpu);
    // (A VM that stopped meanwhile parks below, whatever the flow.)
    let mut flow = match (vector, exit) {
        (8, _) if answered || console.is_some() => {
            if console == Some(true) {
                vm.update_uart_irq(r);
            }
            Flow::Resume
        }
        (8, _) if quick.is_some() => {
            for intid in quick.into_iter().flatten() {
                vm.raise_edge(intid, r);
            }
            Flow::Resume
        }
        (8, Some(exit)) => trap::handle_sync(vm, vcpu, frame, exit, r),
        (9 | 10, _) => {
            // Then any others that are pending (acknowledged only if the
            // CPU signals one: a spurious acknowledge costs an emulator
            // as much as a real one).
            if acked.is_some_and(|i| take_irq(pc, i)) {
                while arch::irq_pending() && handle_irq(pc) {}
            }
            Flow::Resume
        }
        _ => trap::handle_serror(vm, vcpu, r),
    };
    // A console request for this VM (the console may have taken its
    // input on this very CPU, in this trap).
    if let Some(req) = vm.take_request() {
        if vm.serve(req, Some(vcpu), r) {
            flow = Flow::Park;
        }
    }
    if flow == Flow::Park || !vm.is_running() {
        {
            // A restart by this vCPU has made vCPU 0 of the new
            // incarnation on-pending already: leave that alone.
            let mut power = vm.power.lock();
            if power[vcpu] == VcpuPower::On {
                power[vcpu] = VcpuPower::Off;
            }
        }
        park(pc);
    }
    let fx = crate::vdev::vgic::hw::flush(&mut vm.vgic.lock(), vcpu);
    vm.apply(fx, r);
    r.release_lines(vm);
}

/// Takes one pending physical interrupt; false when none was pending.
fn handle_irq(pc: usize) -> bool {
    take_irq(pc, arch::gicv3::ack())
}

/// Handles the physical interrupt `intid` this CPU acknowledged; false
/// when it was a special INTID (none was pending) or the maintenance
/// interrupt.
fn take_irq(pc: usize, intid: u32) -> bool {
    let r = rt();
    match crate::gicv3::intid::kind(intid) {
        Kind::Special => return false,
        Kind::Lpi => {
            // LPIs have no active state (IHI 0069 §6.1): the priority drop
            // ends them.
            arch::gicv3::eoi(intid);
            let source = r.msi.lock().lookup(intid);
            match source {
                Some(s) => {
                    r.vms[s.vm].deliver_msi(s.device.0, s.event.0, r);
                }
                None => its::lpi_taken(intid),
            }
            return true;
        }
        _ => {}
    }
    if intid == gic::PPI_MAINTENANCE {
        // List-register underflow, or a deactivation the hypervisor asked
        // to hear about (ICH_LR.EOI). Its condition holds until the list
        // registers are rewritten on the way back to the guest, so it is
        // pending again at once: stop the caller's loop here, or it would
        // take it forever.
        finish(intid);
        return false;
    }
    let here = r.slots.get(pc).and_then(|s| s.vcpu);
    match intid {
        gic::PPI_VTIMER | gic::PPI_PTIMER => {
            // One of the guest's EL1 timers fired: its physical PPI stays
            // active on the guest's behalf (priority drop only) while the
            // guest has the virtual one (`vm::timer`); a stale one, or one
            // taken while no vCPU is in its guest here (parked: its timers
            // are off), is deactivated.
            arch::gicv3::eoi(intid);
            let in_guest = r
                .slots
                .get(pc)
                .is_some_and(|s| s.in_guest.load(Ordering::SeqCst));
            let given = here
                .filter(|_| in_guest)
                .zip(timer::Timer::of_ppi(intid))
                .and_then(|((vm_i, vcpu), t)| {
                    let vm = &r.vms[vm_i];
                    let fx = timer::fired(&mut vm.vgic.lock(), vcpu, t)?;
                    vm.apply(fx, r);
                    Some(())
                });
            if given.is_none() {
                arch::gicv3::deactivate(intid);
            }
        }
        _ if Some(intid) == r.smmu_eventq_irq => {
            finish(intid);
            r.smmu_events();
        }
        _ if intid >= 32 && r.intx.lock().owner(intid).is_some() => {
            // A forwarded INTx line: masked, finished physically (EOImode
            // 1), and its guest's virtual line set high, under the lines'
            // lock so that no exit on another CPU releases it in between.
            arch::gicv3::eoi(intid);
            let mut intx = r.intx.lock();
            let owner = intx.fired(intid, &PhysicalLines);
            r.publish_masking(&intx);
            arch::gicv3::deactivate(intid);
            if let Some((vm_i, vintid)) = owner {
                let vm = &r.vms[vm_i];
                let fx = vm.vgic.lock().set_level(vintid, 0, true);
                drop(intx);
                if let Ok(fx) = fx {
                    vm.apply(fx, r);
                }
            }
        }
        _ if Some(intid) == crate::console::input_intid() => {
            finish(intid);
            r.console_input();
        }
        _ => {
            // A kick: nothing to do but let the caller re-check the
            // vCPU's state and refill its list registers.
            finish(intid);
        }
    }
    true
}

/// EOI and deactivation of a physical interrupt the hypervisor handled.
fn finish(intid: u32) {
    arch::gicv3::eoi(intid);
    arch::gicv3::deactivate(intid);
}

/// The physical distributor's SPI controls.
struct PhysicalLines;

impl LineControl for PhysicalLines {
    fn set_enabled(&self, pintid: u32, on: bool) {
        gic::set_spi_enabled(pintid, on);
    }

    fn asserted(&self, pintid: u32) -> bool {
        gic::spi_pending(pintid)
    }
}

impl Runtime {
    /// Before an exit of `vm`'s vCPU `vcpu` is handled: its masked INTx
    /// lines' levels into its vGIC (`IntxForwarding::sample`).
    fn sample_lines(&self, vm: &Vm, vcpu: usize) {
        if !self.masks_lines(vm) {
            return;
        }
        let intx = self.intx.lock();
        if !intx.masks(vm.index) {
            return;
        }
        let fx = intx.sample(vm.index, vcpu, &mut vm.vgic.lock(), &PhysicalLines);
        drop(intx);
        vm.apply(fx, self);
    }

    /// After an exit of `vm` has refilled its list registers: unmasks the
    /// lines its guest is done with and its devices let go
    /// (`IntxForwarding::release`).
    fn release_lines(&self, vm: &Vm) {
        if !self.masks_lines(vm) {
            return;
        }
        let mut intx = self.intx.lock();
        if !intx.masks(vm.index) {
            return;
        }
        let vgic = vm.vgic.lock();
        intx.release(vm.index, &vgic, &PhysicalLines);
        self.publish_masking(&intx);
    }

    /// Whether `vm` has a masked INTx line, as last published under the
    /// lines' lock (a line masked by another CPU's exit at this very
    /// moment may be missed, as it would be by a check under the lock
    /// taken just before; the next exit sees it).
    fn masks_lines(&self, vm: &Vm) -> bool {
        self.intx_masking.load(Ordering::SeqCst) & 1u64.checked_shl(vm.index as u32).unwrap_or(0)
            != 0
    }

    /// Publishes which VMs have a masked line; called with the lines'
    /// lock held, after each change.
    fn publish_masking(&self, intx: &IntxForwarding) {
        self.intx_masking.store(intx.masking(), Ordering::SeqCst);
    }

    /// Drains the SMMU's event queue: stage-1 faults of nested streams go
    /// to their guest (without holding the IOMMU lock, which the vSMMU
    /// takes), the rest are reported as the hypervisor's. The next event
    /// interrupt goes to the physical CPU of the VM whose functions raised
    /// most of these events (its vCPU 0's): a VM whose device keeps
    /// faulting pays for the drain with its own CPU's time, not with a
    /// neighbour's.
    fn smmu_events(&self) {
        let Some(h) = crate::drivers::iommu::get() else {
            return;
        };
        let mut iommu = h.lock();
        let events = iommu.drain_events();
        let busiest = smmu::event::busiest_stream(&events);
        if let Some(vm) = busiest.and_then(|sid| self.vm_of_stream(sid)) {
            iommu.route_eventq(self.cpu_mpidr[vm.vcpu_pcpu[0]]);
        }
        drop(iommu);
        let rest: Vec<_> = events
            .into_iter()
            .filter(|e| !self.forward_to_guest(e))
            .collect();
        h.lock().report(&rest);
    }

    /// Gives a physical SMMU event to the VM whose vSMMU owns it; false
    /// when it is the hypervisor's. Only the VM that was assigned the
    /// event's stream is asked, under its own vSMMU lock: a VM whose device
    /// faults continuously never holds up another VM's vSMMU.
    fn forward_to_guest(&self, e: &smmu::event::Event) -> bool {
        let Some(vm) = self.vm_of_stream(e.sid()) else {
            return false;
        };
        let Some(v) = &vm.vsmmu else { return false };
        let mut v = v.lock();
        if !v.owns_event(e) {
            return false;
        }
        let irq = v.inject_fault(e);
        drop(v);
        if let Some(intid) = irq {
            vm.raise_edge(intid, self);
        }
        true
    }

    /// The VM that was assigned the function of stream `sid`.
    fn vm_of_stream(&self, sid: smmu::addr::StreamId) -> Option<&Vm> {
        self.vms
            .iter()
            .find(|vm| self.hw[vm.index].devices.iter().any(|d| d.sid == sid))
    }

    /// Reads the physical UART and feeds the focused VM's virtual UART
    /// (Ctrl-] then a digit switches VMs).
    fn console_input(&self) {
        while let Some(byte) = crate::console::read_byte() {
            let input = self.mux.lock().feed(byte, self.vms.len());
            match input {
                Input::Swallowed => {}
                Input::Switched(v) => crate::console::write_fmt(format_args!(
                    "[hyp] console input goes to VM {}\n",
                    self.vms[v].name
                )),
                Input::Deliver { vm, byte } => {
                    let vm = &self.vms[vm];
                    vm.uart.lock().push_input(byte);
                    vm.update_uart_irq(self);
                }
                Input::Command(c) => self.console_command(c),
            }
        }
    }
}

impl Runtime {
    /// Writes part `i` of `parts` of `vm`'s RAM as it starts
    /// (`GuestRam::fill_part`): its images (kernel and initrd from the boot
    /// bundle, which stays in memory unchanged, and the device tree it
    /// built, with this start's seeds) where they lie, zeroes everywhere
    /// else.
    fn fill_part(&self, vm: &Vm, i: usize, parts: usize) {
        let hw = &self.hw[vm.index];
        let seed = *hw.seed.lock();
        let images: Vec<(Ipa, &[u8])> = hw
            .images
            .iter()
            .flat_map(|(ipa, image)| image.pieces(*ipa, &seed))
            .collect();
        if let Err(e) = vm.ram.fill_part(i, parts, &images) {
            // `fresh_memory` checked the images first: never here.
            error!("VM {}: {e}: its RAM is only scrubbed", vm.name);
            vm.ram.scrub_part(i, parts);
        }
    }

    /// Takes and writes chunks of `vm`'s RAM ([`Self::fill_part`]) until
    /// none is left.
    fn fill_chunks(&self, vm: &Vm) {
        let (next, done) = &self.hw[vm.index].fill;
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= FILL_CHUNKS {
                return;
            }
            self.fill_part(vm, i, FILL_CHUNKS);
            done.fetch_or(1 << i, Ordering::SeqCst);
        }
    }

    /// Gives `vm` the memory it starts with, before its first start and
    /// at each restart (its vCPUs parked or not started yet, their CPUs
    /// idle, its devices' bus mastering off), with every idle CPU: they
    /// are kicked, and each of them and this one (one of the VM's, or the
    /// boot CPU before any VM starts) take chunks of its RAM in turn
    /// ([`Self::fill_part`]: the images where they lie, the device tree
    /// with seeds of its own (`crate::seed`), zeroes everywhere else, all
    /// of it cleaned to the point of coherency) until all are
    /// written; then this one invalidates the instruction caches: the
    /// guest starts with its MMU and caches off. A chunk not written in
    /// time is written again here (two CPUs writing the same bytes to the
    /// same place is harmless). Nothing of what the memory held before
    /// reaches the guest. Returns how many CPUs were asked to help, this
    /// one included.
    fn fresh_memory(&self, vm: &Vm) -> Result<usize, String> {
        let hw = &self.hw[vm.index];
        for (ipa, image) in &hw.images {
            let len = image.bytes().len();
            vm.ram
                .check(*ipa, len)
                .map_err(|e| alloc::format!("an image of {len} bytes at {ipa}: {e}"))?;
        }
        // This start's seeds, before any CPU takes a chunk. The source
        // only lacks randomness if the machine gave none, and then no
        // device tree was built with seeds to fill.
        *hw.seed.lock() = seed::next().unwrap_or([0; seed::GUEST_SEED_LEN]);
        let (next, done) = &hw.fill;
        done.store(0, Ordering::SeqCst);
        next.store(0, Ordering::SeqCst);
        // Every idle CPU helps: online and out of any guest (the VM's own
        // CPUs, parked or not started yet, CPUs that host no vCPU, CPUs
        // whose vCPU is off or whose VM is stopped). One that starts its
        // vCPU meanwhile takes its chunks first; one that another VM's
        // restart asks at the same time helps that one instead.
        let me = arch::cpu_index();
        let mut cpus = 1;
        for pc in 0..self.slots.len().min(self.cpu_mpidr.len()) {
            let s = &self.slots[pc];
            if pc == me || !s.online.load(Ordering::SeqCst) || s.in_guest.load(Ordering::SeqCst) {
                continue;
            }
            s.help_fill.store(vm.index + 1, Ordering::SeqCst);
            gic::send_sgi(self.cpu_mpidr[pc], gic::SGI_KICK);
            cpus += 1;
        }
        self.fill_chunks(vm);
        let all = (1u64 << FILL_CHUNKS) - 1;
        let start = arch::uptime_us();
        while done.load(Ordering::SeqCst) != all {
            if arch::uptime_us().saturating_sub(start) > PARK_TIMEOUT_US {
                warn!(
                    "VM {}: its CPUs did not write their chunks of its RAM in time: done here",
                    vm.name
                );
                for i in (0..FILL_CHUNKS).filter(|i| done.load(Ordering::SeqCst) & (1 << i) == 0) {
                    self.fill_part(vm, i, FILL_CHUNKS);
                    done.fetch_or(1 << i, Ordering::SeqCst);
                }
            }
            core::hint::spin_loop();
        }
        arch::invalidate_icache();
        Ok(cpus)
    }

    /// Carries out a console command (`console_mux::Command`), answering
    /// with `[hyp]` lines.
    fn console_command(&self, c: Command) {
        let say = |args: core::fmt::Arguments<'_>| {
            crate::console::write_fmt(format_args!("[hyp] {args}\n"))
        };
        let (vm, ask) = match c {
            Command::Help => return say(format_args!("{HELP}")),
            Command::List => {
                for vm in &self.vms {
                    self.list_line(vm);
                }
                return;
            }
            Command::Unknown(b) => {
                return say(format_args!(
                    "unknown command {:?} after Ctrl-] (Ctrl-] h: help)",
                    b as char
                ))
            }
            Command::Restart(i) => (&self.vms[i], Request::Restart),
            Command::Stop(i) => (&self.vms[i], Request::Stop),
            Command::Start(i) => (&self.vms[i], Request::Start),
        };
        let state = vm.state();
        let what = match (ask, state) {
            (Request::Restart, VmState::Running) => "restarting",
            (Request::Stop, VmState::Running) => "stopping",
            (Request::Restart | Request::Start, s) if s.may_start_again() => "starting again",
            (Request::Start, VmState::Running) => {
                return say(format_args!(
                    "VM {}: running already (Ctrl-] r restarts it)",
                    vm.name
                ))
            }
            (_, s) => {
                return say(format_args!(
                    "VM {}: {}, nothing to do{}",
                    vm.name,
                    s.name(),
                    if s == VmState::Crashed {
                        " (a crashed VM is not started again)"
                    } else {
                        ""
                    }
                ))
            }
        };
        say(format_args!("VM {}: {what}", vm.name));
        vm.ask(ask);
        // One of its CPUs carries it out: each is kicked out of its guest
        // or its idle loop (this CPU, if it is one, checks on its way
        // back).
        for &pc in &vm.vcpu_pcpu {
            if pc != arch::cpu_index() {
                gic::send_sgi(self.cpu_mpidr[pc], gic::SGI_KICK);
            }
        }
    }

    /// The console's line for `vm`: state, vCPUs, memory, devices, traps,
    /// SMMU faults, restarts.
    fn list_line(&self, vm: &Vm) {
        let hw = &self.hw[vm.index];
        let range = vm.ram.ipa_range();
        let faults: u64 = crate::drivers::iommu::get().map_or(0, |h| {
            let h = h.lock();
            hw.devices.iter().map(|d| h.faults_of(d.sid)).sum()
        });
        let devices: Vec<String> = hw
            .devices
            .iter()
            .map(|d| alloc::format!("{}", d.phys))
            .collect();
        crate::console::write_fmt(format_args!(
            "[hyp] VM {} {}: {}, {} vCPU(s) on CPU(s) {:?}, {} MiB, devices [{}], {} traps, {} SMMU faults, {} restart(s)\n",
            vm.index,
            vm.name,
            vm.state().name(),
            vm.vcpu_pcpu.len(),
            vm.vcpu_pcpu,
            (range.end.raw() - range.start.raw()) >> 20,
            devices.join(", "),
            vm.traps(),
            faults,
            vm.generation()
        ));
    }
}

impl Machine for Runtime {
    fn kick(&self, vm: &Vm, vcpu: usize) {
        if let Some(&pc) = vm.vcpu_pcpu.get(vcpu) {
            if pc != arch::cpu_index() {
                gic::send_sgi(self.cpu_mpidr[pc], gic::SGI_KICK);
            }
        }
    }

    fn start_vcpu(&self, vm: &Vm, vcpu: usize, entry: Ipa, x0: u64) {
        let pc = vm.vcpu_pcpu[vcpu];
        *self.slots[pc].start.lock() = Some((entry, x0, vm.generation()));
        gic::send_sgi(self.cpu_mpidr[pc], gic::SGI_KICK);
    }

    fn park_vcpus(&self, vm: &Vm, except: Option<usize>) -> bool {
        let start = arch::uptime_us();
        for (v, &pc) in vm.vcpu_pcpu.iter().enumerate() {
            if Some(v) == except {
                continue;
            }
            while self.slots[pc].in_guest.load(Ordering::SeqCst) {
                if arch::uptime_us().saturating_sub(start) > PARK_TIMEOUT_US {
                    error!(
                        "VM {}: vCPU {v} did not leave its guest within {} s of the stop",
                        vm.name,
                        PARK_TIMEOUT_US / 1_000_000
                    );
                    return false;
                }
                // Its kick may have been taken before it saw the VM stop:
                // ask again.
                gic::send_sgi(self.cpu_mpidr[pc], gic::SGI_KICK);
                arch::delay_us(100);
            }
        }
        true
    }

    fn restart(&self, vm: &Vm) -> Result<(Ipa, u64), String> {
        let hw = &self.hw[vm.index];
        // Starts of the old incarnation are void (also by their
        // generation): none may enter the new one.
        for &pc in &vm.vcpu_pcpu {
            *self.slots[pc].start.lock() = None;
        }
        // Nothing of the old incarnation survives in its memory; then the
        // images as at boot.
        let cpus = self.fresh_memory(vm)?;
        let len = vm.ram.host_range().1;
        if !hw.devices.is_empty() {
            let domain = hw
                .space
                .domain()
                .ok_or("its devices have no IOMMU domain")?;
            super::assign::reattach(&vm.name, &hw.devices, domain)?;
        }
        if !hw.msi_devices.is_empty() {
            // The grants again, and each device mapped in the physical ITS
            // with a fresh ITT, as when the VM was built.
            let its = its::get().ok_or("no physical ITS")?;
            let mut msi = self.msi.lock();
            if let Some(set) = &hw.vpes {
                // The vPEs as they were created: nothing pending, every
                // vLPI disabled. This CPU's vPE leaves its redistributor
                // first (the others left when their vCPUs parked).
                vpe_out(arch::cpu_index());
                its.lock()
                    .reset_vpes(set)
                    .map_err(|e| alloc::format!("resetting its vPEs: {e}"))?;
                let ids = set.vpes.iter().map(|v| v.id).collect();
                msi.deliver_directly(vm.index, set.table, ids)
                    .map_err(|e| alloc::format!("its vPEs: {e}"))?;
            }
            for &(device, events) in &hw.msi_devices {
                if !msi.grant(vm.index, device, events) {
                    return Err(alloc::format!("{device} is granted to another VM"));
                }
                its.lock()
                    .map_device(device, events)
                    .map_err(|e| alloc::format!("mapping {device} in the ITS: {e}"))?;
            }
        }
        let mut intx = self.intx.lock();
        intx.restart(vm.index, &PhysicalLines);
        self.publish_masking(&intx);
        for (_, owner, vintid) in intx.lines() {
            if owner == vm.index {
                if let Err(e) = vm.vgic.lock().set_resample(vintid, true) {
                    warn!("VM {}: INTx INTID {vintid}: {e:?}", vm.name);
                }
            }
        }
        drop(intx);
        let (heap, frames) = crate::boot::memory_in_use();
        if !super::vm::restart_reported(vm.generation()) {
            return Ok(hw.start);
        }
        info!(
            "VM {}: memory scrubbed ({} MiB, by {cpus} CPU(s)), images loaded again, \
             {} device(s) attached again; hypervisor memory in use: heap {heap} bytes, \
             {frames} frames",
            vm.name,
            len >> 20,
            hw.devices.len()
        );
        Ok(hw.start)
    }

    fn console_line(&self, vm: &Vm, line: &[u8]) {
        crate::console::write_fmt(format_args!("[{}] {}\n", vm.name, Printable(line)));
    }

    fn stop_devices(&self, vm: &Vm) {
        let hw = &self.hw[vm.index];
        if hw.devices.is_empty() {
            return;
        }
        if let Some(h) = crate::drivers::iommu::get() {
            let mut h = h.lock();
            h.report_events();
            for d in &hw.devices {
                let n = h.faults_of(d.sid);
                if n > 0 {
                    warn!(
                        "VM {}: PCI {} (sid {}) made {n} faulting DMA accesses in all",
                        vm.name, d.phys, d.sid
                    );
                }
            }
        }
        super::assign::release(&vm.name, &hw.devices, hw.vmid);
        // Bus mastering is off: no MSI of the VM's functions is in flight.
        let mut msi = self.msi.lock();
        let routes = msi.routes();
        if let Some(its) = its::get() {
            for (device, event, e) in msi.release(&mut *its.lock(), vm.index) {
                match event {
                    Some(event) => error!("VM {}: unmapping {event} of {device}: {e}", vm.name),
                    None => error!("VM {}: unmapping {device}: {e}", vm.name),
                }
            }
        }
        let routes = routes - msi.routes();
        drop(msi);
        info!(
            "VM {}: its devices are stopped: bus mastering off, streams abort, TLBs invalidated, \
             {routes} MSI route(s) and its devices unmapped from the ITS",
            vm.name
        );
    }

    fn vm_started(&self, _vm: &Vm) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    fn vm_stopped(&self, _vm: &Vm, how: VmState) {
        if !how.is_clean() {
            self.all_ok.store(false, Ordering::SeqCst);
        }
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            let ok = self.all_ok.load(Ordering::SeqCst);
            info!(
                "all VMs have stopped ({})",
                if ok {
                    "all powered off cleanly"
                } else {
                    "some failed"
                }
            );
            crate::power::stop(ok);
        }
    }

    fn route_msi(
        &self,
        vm: &Vm,
        device: u32,
        event: u32,
        to: Option<EventLpi>,
    ) -> Result<(), &'static str> {
        let its = its::get().ok_or("no physical ITS")?;
        let (device, event) = (DeviceId(device), EventId(event));
        let result = match vm.msi_delivery {
            Delivery::Direct => {
                let mut msi = self.msi.lock();
                msi.route_vlpi(&mut *its.lock(), vm.index, device, event, to)
            }
            Delivery::ListRegisters => {
                let cpu = match to {
                    Some(l) => Some(*vm.vcpu_pcpu.get(l.vcpu).ok_or("no such vCPU")?),
                    None => None,
                };
                let mut msi = self.msi.lock();
                msi.route(&mut *its.lock(), vm.index, device, event, cpu)
            }
        };
        result.map_err(|e| {
            let to = to.map_or("nowhere".into(), |l| {
                alloc::format!("LPI {} of vCPU {}", l.intid, l.vcpu)
            });
            self.msi_failed(vm, format_args!("routing {event} of {device} to {to}"), &e)
        })
    }

    fn configure_msis(&self, vm: &Vm, lpis: &[(u32, LpiConfig)]) -> Result<(), &'static str> {
        let its = its::get().ok_or("no physical ITS")?;
        let result = self.msi.lock().configure(&mut *its.lock(), vm.index, lpis);
        result
            .map_err(|e| self.msi_failed(vm, format_args!("configuring {} LPI(s)", lpis.len()), &e))
    }

    fn set_msi_pending(
        &self,
        vm: &Vm,
        device: u32,
        event: u32,
        pending: bool,
    ) -> Result<(), &'static str> {
        let its = its::get().ok_or("no physical ITS")?;
        let (device, event) = (DeviceId(device), EventId(event));
        let result =
            self.msi
                .lock()
                .set_pending(&mut *its.lock(), vm.index, device, event, pending);
        result.map_err(|e| {
            let what = if pending { "INT" } else { "CLEAR" };
            self.msi_failed(vm, format_args!("{what} of {event} of {device}"), &e)
        })
    }

    fn translate_msis(&self, vm: &Vm, on: bool) -> Result<(), &'static str> {
        let its = its::get().ok_or("no physical ITS")?;
        let result = self
            .msi
            .lock()
            .set_translating(&mut *its.lock(), vm.index, on);
        result.map_err(|e| {
            let what = if on { "resuming" } else { "suspending" };
            self.msi_failed(vm, format_args!("{what} its devices' MSIs"), &e)
        })
    }
}

impl Runtime {
    /// Reports a refused MSI operation of `vm` (the first few, then a
    /// line that the rest are only counted); returns what its vITS hears.
    fn msi_failed(
        &self,
        vm: &Vm,
        what: core::fmt::Arguments<'_>,
        e: &RouteError<its::ItsError>,
    ) -> &'static str {
        let n = self.route_failures.fetch_add(1, Ordering::Relaxed);
        if n < ROUTE_REPORTS {
            warn!("VM {}: {what}: {e}", vm.name);
        } else if n == ROUTE_REPORTS {
            warn!("further failed MSI routes are only counted");
        }
        e.as_str()
    }
}

/// The physical ITS as the MSI router drives it.
impl PhysicalMsi for its::Its {
    type Error = its::ItsError;

    fn map_event(
        &mut self,
        device: DeviceId,
        event: EventId,
        cpu: usize,
    ) -> Result<Lpi, Self::Error> {
        its::Its::map_event(self, device, event, cpu)
    }

    fn move_event(
        &mut self,
        device: DeviceId,
        event: EventId,
        cpu: usize,
    ) -> Result<(), Self::Error> {
        its::Its::move_event(self, device, event, cpu)
    }

    fn unmap_event(&mut self, device: DeviceId, event: EventId) -> Result<(), Self::Error> {
        its::Its::unmap_event(self, device, event)
    }

    fn unmap_device(&mut self, device: DeviceId) -> Result<(), Self::Error> {
        its::Its::unmap_device(self, device)
    }

    fn map_vlpi(
        &mut self,
        device: DeviceId,
        event: EventId,
        vpe: VpeId,
        vintid: u32,
        inv: bool,
    ) -> Result<(), Self::Error> {
        its::Its::map_vlpi(self, device, event, vpe, vintid, inv)
    }

    fn move_vlpi(
        &mut self,
        device: DeviceId,
        event: EventId,
        vpe: VpeId,
        inv: bool,
    ) -> Result<(), Self::Error> {
        its::Its::move_vlpi(self, device, event, vpe, inv)
    }

    fn set_vlpi_config(
        &mut self,
        table: VlpiTable,
        vintid: u32,
        byte: u8,
    ) -> Result<u8, Self::Error> {
        its::Its::set_vlpi_config(self, table, vintid, byte)
    }

    fn inv_event(&mut self, device: DeviceId, event: EventId) -> Result<(), Self::Error> {
        its::Its::inv_event(self, device, event)
    }

    fn inv_vpe(&mut self, vpe: VpeId) -> Result<(), Self::Error> {
        its::Its::inv_vpe(self, vpe)
    }

    fn set_pending(
        &mut self,
        device: DeviceId,
        event: EventId,
        pending: bool,
    ) -> Result<(), Self::Error> {
        its::Its::set_pending(self, device, event, pending)
    }

    fn suspend_device(&mut self, device: DeviceId) -> Result<(), Self::Error> {
        its::Its::suspend_device(self, device)
    }

    fn resume_device(&mut self, device: DeviceId) -> Result<(), Self::Error> {
        its::Its::resume_device(self, device)
    }
}
