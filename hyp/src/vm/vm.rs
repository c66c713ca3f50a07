//! One virtual machine as the trap handlers see it: its RAM, vCPUs, the
//! emulated devices on its MMIO bus, its state, and what it has cost.
//!
//! Everything that touches physical hardware on the VM's behalf (kicking
//! another physical CPU, stopping assigned devices, the console, the
//! machine's power) goes through the [`Machine`] the caller passes in: the
//! bare-metal runtime implements it over the real GIC, SMMU and PCI
//! (`run.rs`), tests with a recorder.

use super::bus::{MmioBus, MmioContext};
use super::msi::Delivery;
use super::ram::GuestRam;
use crate::arch;
use crate::vdev::psci::VcpuPower;
use crate::vdev::vgic::{Effects, VGic};
use crate::vdev::vits::{EventLpi, ItsConfig, ItsEnv, ItsOutcome, LpiConfig, PhysicalIts, VIts};
use crate::vdev::vuart::VirtualUart;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use log::{info, warn};
use scenario::Lifecycle;
use smmu::addr::Ipa;
use smmu::event::Event;
use spin::Mutex;

/// Bad-access reports printed per VM before they are only counted.
pub const REPORTS_PER_VM: u32 = 4;
/// The guest UART's interrupt: SPI 1, as on QEMU's virt.
pub const UART_INTID: u32 = 33;

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VmState {
    /// Its vCPUs run.
    Running = 0,
    /// The guest powered it off (PSCI SYSTEM_OFF).
    PoweredOff = 1,
    /// The hypervisor stopped it after an error it cannot recover from.
    Crashed = 2,
    /// The guest asked for a reset (PSCI SYSTEM_RESET) and the scenario
    /// says a reset stops the VM.
    ResetRequested = 3,
    /// Between a reset and the new incarnation's start: the vCPUs are
    /// parked or parking, the devices quiesced, the memory scrubbed.
    Restarting = 4,
    /// Stopped from the hypervisor's console.
    Stopped = 5,
}

/// What the hypervisor's console asks of a VM, carried out by one of the
/// VM's own CPUs (`Vm::serve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Request {
    /// Restart it (running), or start it again (stopped).
    Restart = 1,
    /// Stop it.
    Stop = 2,
    /// Start it again (stopped).
    Start = 3,
}

impl VmState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Running,
            1 => Self::PoweredOff,
            2 => Self::Crashed,
            3 => Self::ResetRequested,
            4 => Self::Restarting,
            _ => Self::Stopped,
        }
    }

    /// Whether the VM ended as its guest or its operator wanted (a clean
    /// power-off, a stop from the console).
    pub fn is_clean(self) -> bool {
        matches!(self, Self::PoweredOff | Self::Stopped)
    }

    /// Its name in the console's list.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::PoweredOff => "powered off",
            Self::Crashed => "crashed",
            Self::ResetRequested => "stopped by a reset",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped from the console",
        }
    }

    /// Whether a stopped VM in this state may be started again: not after
    /// a crash (a vCPU may not have parked: its memory is not reused).
    pub fn may_start_again(self) -> bool {
        matches!(
            self,
            Self::PoweredOff | Self::ResetRequested | Self::Stopped
        )
    }
}

/// A VM's virtual SMMU as the VMM drives it (implemented by the hypervisor's
/// vSMMU, which nests the guest's stage 1 over the VM's stage 2).
pub trait VirtualIommu: Send {
    /// A guest register access at `offset`; returns the value read (0 for a
    /// write) and the guest INTIDs to raise.
    fn mmio(&mut self, offset: u64, size: u8, write: bool, value: u64) -> (u64, Vec<u32>);
    /// Whether a physical SMMU event is this guest's to see.
    fn owns_event(&self, e: &Event) -> bool;
    /// Puts an event this guest owns into its event queue; returns the
    /// guest INTID to raise, if any.
    fn inject_fault(&mut self, e: &Event) -> Option<u32>;
    /// What it did: guest commands consumed, the physical commands they
    /// became, MSIs written.
    fn stats(&self) -> smmu::vsmmu::VsmmuStats;
    /// Back to the reset state, for a VM that restarts (its streams are
    /// attached to its stage 2 again, as when it was built).
    fn reset(&mut self);
}

/// What made a vCPU trap, as its VM counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapKind {
    /// An access to its console UART.
    Console,
    /// An access to another emulated device (vGIC, vITS, PCI, vSMMU,
    /// counters page) or to nothing (an external abort).
    Mmio,
    /// A physical interrupt (its timer, a kick, a device's interrupt, a
    /// maintenance interrupt).
    Interrupt,
    /// A system register access (ICC_SGI1R_EL1: an SGI).
    SystemRegister,
    /// HVC or SMC: PSCI.
    Hypercall,
    /// Anything else (WFx, an instruction abort, an SError, ...).
    Other,
}

impl TrapKind {
    /// Every kind, in the order the VM reports them.
    pub const ALL: [Self; 6] = [
        Self::Console,
        Self::Mmio,
        Self::Interrupt,
        Self::SystemRegister,
        Self::Hypercall,
        Self::Other,
    ];

    /// How the VM's figures name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Mmio => "MMIO",
            Self::Interrupt => "interrupts",
            Self::SystemRegister => "system registers",
            Self::Hypercall => "hypercalls",
            Self::Other => "other",
        }
    }
}

/// How a guest asks to end its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET or SYSTEM_RESET2.
    Reset,
}

/// What the VMM asks of the physical machine.
pub trait Machine {
    /// Makes the physical CPU of `vm`'s vCPU `vcpu` re-check that vCPU (an
    /// SGI), unless that CPU is the caller's.
    fn kick(&self, vm: &Vm, vcpu: usize);
    /// Starts `vm`'s vCPU `vcpu` at `entry` with x0 = `x0` on its physical
    /// CPU.
    fn start_vcpu(&self, vm: &Vm, vcpu: usize, entry: Ipa, x0: u64);
    /// Prints one line the guest wrote to its UART.
    fn console_line(&self, vm: &Vm, line: &[u8]);
    /// Stops the VM's assigned devices: bus mastering off, each function
    /// reset, streams abort, the SMMU's TLB entries of its VMID
    /// invalidated, its MSI routes torn down.
    fn stop_devices(&self, vm: &Vm);
    /// Waits until every vCPU of `vm` but `except` (the caller's, if it is
    /// one of them) is out of the guest and parked, so that none can act
    /// for the VM any more; false if one did not park in time (a
    /// hypervisor fault: the VM must then not be restarted nor its memory
    /// reused).
    fn park_vcpus(&self, vm: &Vm, except: Option<usize>) -> bool;
    /// Brings a VM whose vCPUs are parked and devices stopped back to its
    /// start: its memory scrubbed, its images loaded again, its devices
    /// attached and their MSIs granted again. Returns where vCPU 0 of the
    /// new incarnation starts (entry, x0); Err says why it cannot restart.
    fn restart(&self, vm: &Vm) -> Result<(Ipa, u64), String>;
    /// The VM has stopped (`how`); the machine ends when the last one has.
    fn vm_stopped(&self, vm: &Vm, how: VmState);
    /// A stopped VM runs again (the console started it).
    fn vm_started(&self, vm: &Vm) {
        let _ = vm;
    }
    /// Routes the MSIs of `vm`'s physical device `device` with EventID
    /// `event` to the LPI `to` (`Some`) or stops routing them (`None`: they
    /// are dropped). Through the list registers, they arrive on the
    /// physical CPU of its vCPU and are delivered with [`Vm::deliver_msi`];
    /// directly ([`Vm::msi_delivery`]), the GIC presents them to the vCPU
    /// as that LPI with that configuration.
    fn route_msi(
        &self,
        vm: &Vm,
        device: u32,
        event: u32,
        to: Option<EventLpi>,
    ) -> Result<(), &'static str>;
    /// For a VM whose MSIs are delivered directly: its LPIs `lpis` (INTID,
    /// configuration as the hardware must apply it) were configured again.
    fn configure_msis(&self, vm: &Vm, lpis: &[(u32, LpiConfig)]) -> Result<(), &'static str> {
        let _ = (vm, lpis);
        Err("MSIs are not delivered directly")
    }
    /// For a VM whose MSIs are delivered directly: makes the LPI of the
    /// routed event pending (INT) or not (CLEAR).
    fn set_msi_pending(
        &self,
        vm: &Vm,
        device: u32,
        event: u32,
        pending: bool,
    ) -> Result<(), &'static str> {
        let _ = (vm, device, event, pending);
        Err("MSIs are not delivered directly")
    }
    /// For a VM whose MSIs are delivered directly: whether its devices'
    /// MSIs are translated at all (its vITS's GITS_CTLR.Enabled).
    fn translate_msis(&self, vm: &Vm, on: bool) -> Result<(), &'static str> {
        let _ = (vm, on);
        Err("MSIs are not delivered directly")
    }
}

/// A VM's MSI routing through its machine: the physical side of its vITS.
struct MsiRoutes<'a> {
    vm: &'a Vm,
    machine: &'a dyn Machine,
}

impl PhysicalIts for MsiRoutes<'_> {
    type Error = &'static str;

    fn map_event(&mut self, device: u32, event: u32, lpi: EventLpi) -> Result<(), Self::Error> {
        self.machine.route_msi(self.vm, device, event, Some(lpi))
    }

    fn move_event(&mut self, device: u32, event: u32, lpi: EventLpi) -> Result<(), Self::Error> {
        self.machine.route_msi(self.vm, device, event, Some(lpi))
    }

    fn unmap_event(&mut self, device: u32, event: u32) -> Result<(), Self::Error> {
        self.machine.route_msi(self.vm, device, event, None)
    }

    fn direct(&self) -> bool {
        self.vm.msi_delivery == Delivery::Direct
    }

    fn configure(&mut self, lpis: &[(u32, LpiConfig)]) -> Result<(), Self::Error> {
        self.machine.configure_msis(self.vm, lpis)
    }

    fn set_pending(&mut self, device: u32, event: u32, pending: bool) -> Result<(), Self::Error> {
        self.machine
            .set_msi_pending(self.vm, device, event, pending)
    }

    fn set_translating(&mut self, on: bool) -> Result<(), Self::Error> {
        self.machine.translate_msis(self.vm, on)
    }
}

/// One virtual machine.
pub struct Vm {
    /// Its name from the scenario.
    pub name: String,
    /// Its index in the scenario (and the machine's VM table).
    pub index: usize,
    /// Its RAM.
    pub ram: GuestRam,
    /// The EL2 controls its vCPUs run under.
    pub controls: arch::guest::GuestControls,
    /// The physical CPU of each vCPU.
    pub vcpu_pcpu: Vec<usize>,
    /// Each vCPU's PSCI power state.
    pub power: Mutex<Vec<VcpuPower>>,
    /// Its console UART's state.
    pub uart: Mutex<VirtualUart>,
    /// Its virtual GIC.
    pub vgic: Mutex<VGic>,
    /// Its emulated devices, by guest physical address.
    pub bus: MmioBus,
    /// Its virtual SMMU, if the scenario gives it one.
    pub vsmmu: Option<Mutex<Box<dyn VirtualIommu>>>,
    /// Its virtual ITS, if it has one (then its vGIC has LPIs). Locked
    /// before the vGIC when both are needed.
    pub its: Option<Mutex<VIts>>,
    /// How its assigned functions' MSIs reach its vCPUs.
    pub msi_delivery: Delivery,
    /// What a reset by its guest does.
    pub on_reset: Lifecycle,
    /// What a power-off by its guest does.
    pub on_poweroff: Lifecycle,
    /// The vGIC as built, which a restart starts from again.
    vgic_reset: VGic,
    /// What its vITS was built from, for a restart.
    its_config: Option<ItsConfig>,
    state: AtomicU8,
    /// Incarnations so far, minus one: how often it restarted. A vCPU
    /// start belongs to one incarnation.
    generation: AtomicU32,
    /// A console request not yet served ([`Request`] as u8, 0 for none).
    request: AtomicU8,
    reports: AtomicU32,
    /// Traps by [`TrapKind`].
    traps: [AtomicU64; TrapKind::ALL.len()],
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.name)
            .field("index", &self.index)
            .field("state", &self.state())
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// A running VM with no devices on its bus yet; vCPU 0 starts
    /// (on-pending), the others are off until PSCI CPU_ON.
    pub fn new(
        name: String,
        index: usize,
        ram: GuestRam,
        controls: arch::guest::GuestControls,
        vcpu_pcpu: Vec<usize>,
        vgic: VGic,
    ) -> Self {
        let mut power = alloc::vec![VcpuPower::Off; vcpu_pcpu.len()];
        if let Some(first) = power.first_mut() {
            *first = VcpuPower::OnPending;
        }
        Self {
            name,
            index,
            ram,
            controls,
            vcpu_pcpu,
            power: Mutex::new(power),
            uart: Mutex::new(VirtualUart::new()),
            vgic_reset: vgic.clone(),
            its_config: None,
            vgic: Mutex::new(vgic),
            bus: MmioBus::new(),
            vsmmu: None,
            its: None,
            msi_delivery: Delivery::ListRegisters,
            on_reset: Lifecycle::Restart,
            on_poweroff: Lifecycle::Stop,
            state: AtomicU8::new(VmState::Running as u8),
            generation: AtomicU32::new(0),
            request: AtomicU8::new(0),
            reports: AtomicU32::new(0),
            traps: [const { AtomicU64::new(0) }; TrapKind::ALL.len()],
        }
    }

    /// Where the VM is in its life.
    pub fn state(&self) -> VmState {
        VmState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Whether its vCPUs may run.
    pub fn is_running(&self) -> bool {
        self.state() == VmState::Running
    }

    /// Asks one of the VM's CPUs to carry out `r` (the console's request;
    /// the caller kicks the VM's vCPUs so that one sees it soon).
    pub fn ask(&self, r: Request) {
        self.request.store(r as u8, Ordering::SeqCst);
    }

    /// Whether a console request waits ([`Self::take_request`] takes it).
    pub fn has_request(&self) -> bool {
        self.request.load(Ordering::Relaxed) != 0
    }

    /// Takes the pending console request, if any (a plain load first: a
    /// trap that finds none pays no atomic write).
    pub fn take_request(&self) -> Option<Request> {
        if self.request.load(Ordering::Relaxed) == 0 {
            return None;
        }
        match self.request.swap(0, Ordering::SeqCst) {
            1 => Some(Request::Restart),
            2 => Some(Request::Stop),
            3 => Some(Request::Start),
            _ => None,
        }
    }

    /// Carries out console request `r`, on a CPU of the VM: `from` is its
    /// vCPU if that vCPU is in a trap. Returns whether the VM's run changed
    /// (stopped or restarted): the calling vCPU, if any, then parks.
    pub fn serve(&self, r: Request, from: Option<usize>, m: &dyn Machine) -> bool {
        match (r, self.is_running()) {
            (Request::Restart, true) => self.restart(from, m),
            (Request::Stop, true) => {
                info!("VM {}: stopped from the console", self.name);
                self.stop(VmState::Stopped, from, m)
            }
            (Request::Restart | Request::Start, false) => return self.start_again(m),
            (Request::Start, true) | (Request::Stop, false) => return false,
        }
        true
    }

    /// Its incarnation: how often it restarted.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Gives the VM its vITS, with the events `config` grants; a restart
    /// builds it again from the same.
    pub fn give_its(&mut self, config: ItsConfig) {
        let vcpus = self.vcpu_pcpu.len();
        self.its_config = Some(config.clone());
        self.its = Some(Mutex::new(VIts::new(config, vcpus)));
    }

    /// Counts a trap from one of its vCPUs.
    pub fn count_trap(&self, kind: TrapKind) {
        self.traps[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Traps taken from its vCPUs so far.
    pub fn traps(&self) -> u64 {
        self.traps.iter().map(|t| t.load(Ordering::Relaxed)).sum()
    }

    /// Traps taken from its vCPUs so far, by kind (in [`TrapKind::ALL`]'s
    /// order).
    pub fn traps_by_kind(&self) -> [u64; TrapKind::ALL.len()] {
        core::array::from_fn(|i| self.traps[i].load(Ordering::Relaxed))
    }

    /// Bad accesses and unhandled traps so far.
    pub fn bad_accesses(&self) -> u32 {
        self.reports.load(Ordering::Relaxed)
    }

    /// MSIs of its functions the hypervisor took and injected through the
    /// list registers (none with direct delivery).
    pub fn msis_injected(&self) -> u64 {
        self.its.as_ref().map_or(0, |i| i.lock().stats().delivered)
    }

    /// What its vSMMU did (all 0 without one).
    pub fn vsmmu_stats(&self) -> smmu::vsmmu::VsmmuStats {
        self.vsmmu
            .as_ref()
            .map_or_else(Default::default, |v| v.lock().stats())
    }

    /// Reports a guest misbehaviour (`what`, at `pc` on `vcpu`): the first
    /// [`REPORTS_PER_VM`] are printed, one more line says the rest are only
    /// counted. A guest cannot make the hypervisor print without bound.
    pub fn report(&self, vcpu: usize, pc: u64, what: fmt::Arguments<'_>) {
        let n = self.reports.fetch_add(1, Ordering::Relaxed);
        if n < REPORTS_PER_VM {
            warn!("VM {}: vCPU {vcpu}: {what} (pc {pc:#x})", self.name);
        } else if n == REPORTS_PER_VM {
            warn!(
                "VM {}: keeps making bad accesses: further ones only counted",
                self.name
            );
        }
    }

    /// Carries out what a vGIC operation asks: kick the vCPUs whose list
    /// registers must be refilled; deactivate physical interrupts the guest
    /// gave up (only possible on the CPU that holds them: this one); give
    /// the physical side the LPI configuration of vCPUs whose
    /// redistributor turned its LPIs on or off (direct delivery). The vGIC
    /// must not be locked by the caller.
    pub fn apply(&self, fx: Effects, m: &dyn Machine) {
        for v in fx.kicked() {
            m.kick(self, v);
        }
        for v in fx.lpi_configs_changed() {
            // The vGIC stays locked so that no other configuration can
            // reach the hardware in between (vGIC before the machine's
            // MSI routes, as in `its_access`).
            let vgic = self.vgic.lock();
            if let Err(e) = m.configure_msis(self, &vgic.lpi_hw_configs(v)) {
                drop(vgic);
                self.report(v, 0, format_args!("LPIs turned on or off: {e}"));
            }
        }
        let me = arch::cpu_index();
        for d in fx.deactivations() {
            if self.vcpu_pcpu.get(d.vcpu) == Some(&me) {
                arch::gicv3::deactivate(d.pintid);
            }
        }
    }

    /// Raises edge interrupt `intid` (an SPI, or a PPI of vCPU 0) in the
    /// VM's vGIC.
    pub fn raise_edge(&self, intid: u32, m: &dyn Machine) {
        let fx = self.vgic.lock().inject_edge(intid, 0);
        if let Ok(fx) = fx {
            self.apply(fx, m);
        }
    }

    /// A guest access to its vITS frames at `offset` (`write`: the value
    /// written; `None` for a read); returns the value read (0 for a write
    /// and without a vITS). Commands the vITS ignored as erroneous, and a
    /// stalled queue, are reported like other bad accesses (bounded).
    pub fn its_access(
        &self,
        vcpu: usize,
        offset: u64,
        size: u8,
        write: Option<u64>,
        m: &dyn Machine,
    ) -> u64 {
        let Some(its) = &self.its else {
            return 0;
        };
        let mut its = its.lock();
        let mut vgic = self.vgic.lock();
        let mut routes = MsiRoutes {
            vm: self,
            machine: m,
        };
        let mut env = ItsEnv {
            mem: &self.ram,
            vgic: &mut vgic,
            phys: &mut routes,
        };
        let (value, out) = match write {
            Some(v) => (0, its.write(&mut env, offset, size, v)),
            None => its.read(&mut env, offset, size),
        };
        drop(vgic);
        drop(its);
        self.its_report(vcpu, &out);
        self.apply(out.effects, m);
        value
    }

    fn its_report(&self, vcpu: usize, out: &ItsOutcome) {
        for (command, error) in &out.errors {
            self.report(vcpu, 0, format_args!("vITS ignored {command:?}: {error}"));
        }
        if let Some(at) = out.stalled_at {
            self.report(
                vcpu,
                0,
                format_args!("vITS command queue stalled: no RAM at {at}"),
            );
        }
    }

    /// An MSI from physical device `device` with EventID `event` arrived
    /// (the route [`Machine::route_msi`] set up): makes its LPI pending.
    /// Whether it was delivered (dropped: no translation any more).
    pub fn deliver_msi(&self, device: u32, event: u32, m: &dyn Machine) -> bool {
        let Some(its) = &self.its else {
            return false;
        };
        let fx = its.lock().deliver(&mut self.vgic.lock(), device, event);
        match fx {
            Some(fx) => {
                self.apply(fx, m);
                true
            }
            None => false,
        }
    }

    /// Sets the level of the guest UART's interrupt from its state.
    pub fn update_uart_irq(&self, m: &dyn Machine) {
        // The level is read and handed to the vGIC under the UART's lock
        // (UART before vGIC): two CPUs updating it at once (console input
        // and the guest's own access) cannot leave the vGIC with an older
        // level than the UART's, which could hold back the guest's input.
        let fx = {
            let uart = self.uart.lock();
            self.vgic.lock().set_level(UART_INTID, 0, uart.irq_level())
        };
        if let Ok(fx) = fx {
            self.apply(fx, m);
        }
    }

    /// The guest asked to end its run (`why`, from vCPU `vcpu`): the VM
    /// stops or restarts, as its scenario says.
    pub fn end(&self, vcpu: usize, why: End, m: &dyn Machine) {
        match (why, why_choice(self, why)) {
            (_, Lifecycle::Restart) => self.restart(Some(vcpu), m),
            (End::PowerOff, Lifecycle::Stop) => self.stop(VmState::PoweredOff, Some(vcpu), m),
            (End::Reset, Lifecycle::Stop) => self.stop(VmState::ResetRequested, Some(vcpu), m),
        }
    }

    /// Leaves `Running` for `to`; false if the VM was not running (another
    /// vCPU is stopping or restarting it: nothing more to do here).
    fn leave_running(&self, to: VmState) -> bool {
        self.state
            .compare_exchange(
                VmState::Running as u8,
                to as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// The stop barrier: the VM has left `Running`, its vCPUs are told and
    /// waited for, so none of them (but `from`, the caller's) can act for
    /// it any more; then its devices stop. False if a vCPU did not park
    /// (its devices are stopped anyway).
    fn quiesce(&self, from: Option<usize>, m: &dyn Machine) -> bool {
        for v in 0..self.vcpu_pcpu.len() {
            if Some(v) != from {
                m.kick(self, v);
            }
        }
        let parked = m.park_vcpus(self, from);
        if !parked {
            log::error!(
                "VM {}: a vCPU did not stop in time: the VM's memory and VMID are not reused",
                self.name
            );
        }
        m.stop_devices(self);
        let partial = self.uart.lock().take_partial_line();
        if let Some(line) = partial {
            m.console_line(self, &line);
        }
        parked
    }

    /// Stops the VM for good (`how`; `from` is the stopping vCPU, if a
    /// vCPU stops it): every other vCPU is parked first, then its devices
    /// stop (bus mastering off, reset, streams abort, before any of its
    /// memory could be reused), its partial console line is flushed, its
    /// figures reported, and the machine told. Only the first call for a
    /// VM does anything.
    pub fn stop(&self, how: VmState, from: Option<usize>, m: &dyn Machine) {
        debug_assert!(
            !matches!(how, VmState::Running | VmState::Restarting),
            "stopping into {how:?}"
        );
        if !self.leave_running(how) {
            return;
        }
        match how {
            VmState::PoweredOff => info!("VM {}: powered off", self.name),
            VmState::ResetRequested => warn!(
                "VM {}: reset requested: the VM is stopped (its scenario says on_reset = \"stop\")",
                self.name
            ),
            _ => {}
        }
        self.quiesce(from, m);
        self.report_figures();
        m.vm_stopped(self, how);
    }

    /// Restarts the VM (`from` is the vCPU that reset it, if one did):
    /// the stop barrier and its devices stopped as for [`Self::stop`],
    /// then its emulated devices (vGIC, vITS, vSMMU, UART, PCI view) back
    /// in their reset state, and the machine scrubs its memory, loads its
    /// images again, attaches its devices and starts vCPU 0 of the new
    /// incarnation. A VM that cannot restart is stopped as crashed. Only
    /// the first call while the VM runs does anything.
    pub fn restart(&self, from: Option<usize>, m: &dyn Machine) {
        if !self.leave_running(VmState::Restarting) {
            return;
        }
        // From here a vCPU start of the old incarnation is void.
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let loud = self.restart_said(generation, "restarting");
        let parked = self.quiesce(from, m);
        if loud {
            self.report_figures();
        }
        if !parked {
            self.crashed_while_restarting(m);
            return;
        }
        self.rebuild(m);
    }

    /// Starts a stopped VM again (the console asked): its devices were
    /// stopped when it stopped; it then boots as after a restart. A VM that
    /// crashed is not started again.
    pub fn start_again(&self, m: &dyn Machine) -> bool {
        let state = self.state();
        if !state.may_start_again()
            || self
                .state
                .compare_exchange(
                    state as u8,
                    VmState::Restarting as u8,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_err()
        {
            return false;
        }
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.restart_said(generation, "starting again");
        m.vm_started(self);
        self.rebuild(m);
        true
    }

    /// Says `what` of restart `generation` if it is one that is reported
    /// ([`restart_reported`]); one line says when the VM restarts so often
    /// that only some are. Whether it was.
    fn restart_said(&self, generation: u32, what: &str) -> bool {
        if restart_reported(generation) {
            info!("VM {}: {what} (restart {generation})", self.name);
            return true;
        }
        if generation == RESTARTS_REPORTED + 1 {
            info!(
                "VM {}: restarts again and again: from here only restarts {}, {}, {}, ... are reported \
                 (the console's list counts them all)",
                self.name,
                2 * RESTARTS_REPORTED,
                4 * RESTARTS_REPORTED,
                8 * RESTARTS_REPORTED
            );
        }
        false
    }

    /// The second half of a restart, from parked vCPUs and stopped devices:
    /// the emulated devices back in their reset state, the machine's part,
    /// then vCPU 0 of the new incarnation.
    fn rebuild(&self, m: &dyn Machine) {
        *self.vgic.lock() = self.vgic_reset.clone();
        if let (Some(its), Some(config)) = (&self.its, &self.its_config) {
            *its.lock() = VIts::new(config.clone(), self.vcpu_pcpu.len());
        }
        if let Some(v) = &self.vsmmu {
            v.lock().reset();
        }
        *self.uart.lock() = VirtualUart::new();
        self.bus.reset();
        {
            let mut power = self.power.lock();
            power.fill(VcpuPower::Off);
            if let Some(first) = power.first_mut() {
                *first = VcpuPower::OnPending;
            }
        }
        let (entry, x0) = match m.restart(self) {
            Ok(start) => start,
            Err(why) => {
                log::error!("VM {}: cannot restart: {why}", self.name);
                self.crashed_while_restarting(m);
                return;
            }
        };
        self.state.store(VmState::Running as u8, Ordering::SeqCst);
        m.start_vcpu(self, 0, entry, x0);
    }

    /// A restart that failed: the VM ends as crashed.
    fn crashed_while_restarting(&self, m: &dyn Machine) {
        self.state.store(VmState::Crashed as u8, Ordering::SeqCst);
        m.vm_stopped(self, VmState::Crashed);
    }

    /// The figures of the incarnation that ends: traps, MSIs, vSMMU
    /// commands, bad accesses.
    fn report_figures(&self) {
        let traps = self.traps();
        let msis = match (&self.its, self.msi_delivery) {
            (None, _) => String::new(),
            (Some(_), Delivery::Direct) => alloc::format!(
                "; MSIs delivered directly, {} injected",
                self.msis_injected()
            ),
            (Some(_), Delivery::ListRegisters) => {
                alloc::format!("; {} MSIs injected", self.msis_injected())
            }
        };
        match &self.vsmmu {
            Some(_) => {
                let s = self.vsmmu_stats();
                info!(
                    "VM {}: {traps} traps{msis}; vSMMU: {} guest commands -> {} physical commands, {} MSIs written",
                    self.name, s.guest_commands, s.physical_commands, s.msis
                );
            }
            None => info!("VM {}: {traps} traps{msis}", self.name),
        }
        let kinds: Vec<String> = TrapKind::ALL
            .iter()
            .zip(self.traps_by_kind())
            .map(|(k, n)| alloc::format!("{} {n}", k.name()))
            .collect();
        info!("VM {}: traps by kind: {}", self.name, kinds.join(", "));
        let bad = self.bad_accesses();
        if bad > 0 {
            info!(
                "VM {}: {bad} bad accesses or unhandled traps in all",
                self.name
            );
        }
    }
}

/// Restarts reported line by line: the first few; after them only those
/// whose number is a power of two ([`restart_reported`]).
pub const RESTARTS_REPORTED: u32 = 4;

/// Whether restart `n` (from 1) is reported line by line: the first
/// [`RESTARTS_REPORTED`], then each power of two, so that a guest that
/// resets its VM in a loop makes the log grow only with the logarithm of
/// its restarts (its bad accesses are counted across restarts, so those
/// stay bounded too).
pub fn restart_reported(n: u32) -> bool {
    n <= RESTARTS_REPORTED || n.is_power_of_two()
}

/// What the VM's scenario says `why` does.
fn why_choice(vm: &Vm, why: End) -> Lifecycle {
    match why {
        End::PowerOff => vm.on_poweroff,
        End::Reset => vm.on_reset,
    }
}

/// One access's view of a VM for its devices: the VM, the trapping vCPU
/// and the machine.
pub struct AccessContext<'a> {
    /// The VM.
    pub vm: &'a Vm,
    /// The vCPU that trapped.
    pub vcpu: usize,
    /// The physical side.
    pub machine: &'a dyn Machine,
    /// Edges raised by the access, collected here instead of raised when
    /// the trap raises them itself once it has folded in the vCPU's list
    /// registers (`trap::quick_mmio`).
    pub deferred: Option<core::cell::RefCell<Vec<u32>>>,
}

impl fmt::Debug for AccessContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessContext")
            .field("vm", &self.vm.name)
            .field("vcpu", &self.vcpu)
            .finish_non_exhaustive()
    }
}

impl MmioContext for AccessContext<'_> {
    fn uart(&self) -> &Mutex<VirtualUart> {
        &self.vm.uart
    }

    fn vgic(&self) -> &Mutex<VGic> {
        &self.vm.vgic
    }

    fn apply(&self, fx: Effects) {
        self.vm.apply(fx, self.machine);
    }

    fn raise_edge(&self, intid: u32) {
        match &self.deferred {
            Some(d) => d.borrow_mut().push(intid),
            None => self.vm.raise_edge(intid, self.machine),
        }
    }

    fn update_uart_irq(&self) {
        self.vm.update_uart_irq(self.machine);
    }

    fn console_line(&self, line: &[u8]) {
        self.machine.console_line(self.vm, line);
    }

    fn traps(&self) -> u64 {
        self.vm.traps()
    }

    fn msis_injected(&self) -> u64 {
        self.vm.msis_injected()
    }

    fn vsmmu_stats(&self) -> smmu::vsmmu::VsmmuStats {
        self.vm.vsmmu_stats()
    }

    fn restarts(&self) -> u64 {
        u64::from(self.vm.generation())
    }

    fn its_access(&self, offset: u64, size: u8, write: Option<u64>) -> u64 {
        self.vm
            .its_access(self.vcpu, offset, size, write, self.machine)
    }

    fn vsmmu_mmio(
        &self,
        offset: u64,
        size: u8,
        write: bool,
        value: u64,
    ) -> Option<(u64, Vec<u32>)> {
        let v = self.vm.vsmmu.as_ref()?;
        let out = v.lock().mmio(offset, size, write, value);
        Some(out)
    }
}
