//! The emulated devices on a VM's MMIO bus, each an [`MmioDevice`]: the
//! console UART, the GIC distributor, redistributors and ITS, the counters
//! page, the PCI host bridge's configuration space, the virtual SMMU's
//! registers and the trapped MSI-X pages of assigned functions. Their
//! models (`vuart`, `vgic`, `vits`, `vpci`, `msix`, `smmu::vsmmu`) are
//! pure; these adapters give each its VM's state and carry out what an
//! access causes (interrupts, console lines).

use super::bus::{Access, BusError, MmioBus, MmioContext, MmioDevice};
use crate::drivers::pci::{self, BarRange, Bdf, ConfigAccess};
use crate::vdev::msix::MsixPages;
use crate::vdev::rtc::VirtualRtc;
use crate::vdev::vpci::VirtualPciBus;
use crate::vdev::vuart::VirtualUart;
use alloc::boxed::Box;
use smmu::addr::Ipa;
use spin::Mutex;

/// The bus every VM gets, at the addresses of `guest_layout` (the ones its
/// device tree names): the UART, the GIC distributor and the redistributors
/// of its `vcpus`, the counters page and the PCI host bridge `pci`; with
/// `vsmmu`, the vSMMU's registers too, with `its` the ITS's frames, with
/// `rtc` the real-time clock.
pub fn standard_bus(
    vcpus: u32,
    pci: PciHostBridge,
    vsmmu: bool,
    its: bool,
    rtc: Option<VirtualRtc>,
) -> Result<MmioBus, BusError> {
    use scenario::guest_layout as layout;
    let mut bus = MmioBus::new();
    bus.insert(Ipa(layout::UART_BASE), layout::UART_SIZE, Box::new(Uart))?;
    if let Some(rtc) = rtc {
        bus.insert(
            Ipa(layout::RTC_BASE),
            layout::RTC_SIZE,
            Box::new(Rtc(Mutex::new(rtc))),
        )?;
    }
    bus.insert(
        Ipa(layout::GICD_BASE),
        layout::GICD_SIZE,
        Box::new(GicDistributor),
    )?;
    bus.insert(
        Ipa(layout::GICR_BASE),
        layout::GICR_STRIDE * u64::from(vcpus),
        Box::new(GicRedistributors {
            stride: layout::GICR_STRIDE,
        }),
    )?;
    bus.insert(
        Ipa(layout::COUNTERS_BASE),
        layout::COUNTERS_SIZE,
        Box::new(CountersPage),
    )?;
    bus.insert(
        Ipa(layout::PCI_ECAM_BASE),
        layout::PCI_ECAM_SIZE,
        Box::new(pci),
    )?;
    if its {
        bus.insert(Ipa(layout::ITS_BASE), layout::ITS_SIZE, Box::new(ItsFrames))?;
    }
    if vsmmu {
        bus.insert(
            Ipa(layout::VSMMU_BASE),
            layout::VSMMU_SIZE,
            Box::new(VsmmuRegisters),
        )?;
    }
    Ok(bus)
}

/// The VM's PL031 real-time clock (`rtc`), counting from the machine's
/// wall clock. Its state is its own and is kept when the VM restarts, as
/// a real-time clock keeps counting through a reset.
#[derive(Debug)]
pub struct Rtc(Mutex<VirtualRtc>);

impl MmioDevice for Rtc {
    fn name(&self) -> &'static str {
        "PL031 RTC"
    }

    fn leaves_vgic_alone(&self) -> bool {
        true
    }

    fn read(&self, _: &dyn MmioContext, a: Access) -> u64 {
        let now = crate::wallclock::now().unwrap_or_default();
        u64::from(self.0.lock().read(a.offset, a.size, now))
    }

    fn write(&self, _: &dyn MmioContext, a: Access, value: u64) {
        let now = crate::wallclock::now().unwrap_or_default();
        self.0.lock().write(a.offset, a.size, value, now);
    }
}

/// The VM's GICv3 ITS frames (`vits`): control registers and
/// GITS_TRANSLATER (a CPU write there carries no DeviceID and is ignored).
#[derive(Debug)]
pub struct ItsFrames;

impl MmioDevice for ItsFrames {
    fn name(&self) -> &'static str {
        "GIC ITS"
    }

    fn read(&self, ctx: &dyn MmioContext, a: Access) -> u64 {
        ctx.its_access(a.offset, a.size, None)
    }

    fn write(&self, ctx: &dyn MmioContext, a: Access, value: u64) {
        ctx.its_access(a.offset, a.size, Some(value));
    }
}

/// A trapped range of an assigned function's BAR that holds its MSI-X
/// table or PBA (`vdev::msix`), over the physical BAR.
pub struct MsixRegion {
    /// What the guest may do there.
    pub pages: MsixPages,
    /// The physical bytes behind it.
    pub window: BarRange,
    /// The function, and its configuration space: the BAR is touched only
    /// while the function decodes memory (its guest may have turned that
    /// off; an access then could be an error the hypervisor takes).
    pub function: (Bdf, Box<dyn ConfigAccess + Send + Sync>),
}

impl core::fmt::Debug for MsixRegion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MsixRegion")
            .field("pages", &self.pages)
            .field("function", &self.function.0)
            .finish_non_exhaustive()
    }
}

impl MsixRegion {
    fn decodes(&self) -> bool {
        let (bdf, cfg) = &self.function;
        cfg.read32(*bdf, pci::reg::COMMAND) & pci::reg::CMD_MEM != 0
    }
}

impl MmioDevice for MsixRegion {
    fn name(&self) -> &'static str {
        "MSI-X table"
    }

    fn read(&self, _ctx: &dyn MmioContext, a: Access) -> u64 {
        if !self.decodes() {
            // As the bus answers an address nobody decodes.
            return u64::MAX;
        }
        self.pages.read(&self.window, a.offset, a.size)
    }

    fn write(&self, _ctx: &dyn MmioContext, a: Access, value: u64) {
        if self.decodes() {
            self.pages.write(&self.window, a.offset, a.size, value);
        }
    }
}

/// The VM's PL011 console UART (`vuart`).
#[derive(Debug)]
pub struct Uart;

impl MmioDevice for Uart {
    fn name(&self) -> &'static str {
        "vUART"
    }

    fn read(&self, ctx: &dyn MmioContext, a: Access) -> u64 {
        let (v, _) = uart_access(ctx.uart(), a, None, |line| ctx.console_line(line));
        ctx.update_uart_irq();
        v
    }

    fn write(&self, ctx: &dyn MmioContext, a: Access, value: u64) {
        uart_access(ctx.uart(), a, Some(value), |line| ctx.console_line(line));
        ctx.update_uart_irq();
    }
}

/// An access to a VM's vUART, a read or (`write`) a write: the value read
/// (0 for a write), a line of output it finished handed to `console`, and
/// whether the UART's interrupt level changed, which only then needs to
/// reach the vGIC (the vGIC's line holds the level the UART had after the
/// previous access: every change is handed to it).
pub fn uart_access(
    uart: &Mutex<VirtualUart>,
    a: Access,
    write: Option<u64>,
    console: impl FnOnce(&[u8]),
) -> (u64, bool) {
    let mut u = uart.lock();
    let before = u.irq_level();
    let (value, line) = match write {
        Some(v) => {
            let effect = u.write(a.offset, a.size, v);
            (0, if effect.line { u.take_line() } else { None })
        }
        None => (u.read(a.offset, a.size), None),
    };
    let changed = u.irq_level() != before;
    drop(u);
    if let Some(line) = line {
        console(&line);
    }
    (value, changed)
}

/// The GIC distributor (`vgic`).
#[derive(Debug)]
pub struct GicDistributor;

impl MmioDevice for GicDistributor {
    fn name(&self) -> &'static str {
        "GIC distributor"
    }

    fn read(&self, ctx: &dyn MmioContext, a: Access) -> u64 {
        ctx.vgic().lock().dist_read(a.offset, a.size)
    }

    fn write(&self, ctx: &dyn MmioContext, a: Access, value: u64) {
        let fx = ctx.vgic().lock().dist_write(a.offset, a.size, value);
        ctx.apply(fx);
    }
}

/// The GIC redistributors, one frame of `stride` bytes per vCPU.
#[derive(Debug)]
pub struct GicRedistributors {
    /// Bytes per redistributor (RD_base + SGI_base frames).
    pub stride: u64,
}

impl MmioDevice for GicRedistributors {
    fn name(&self) -> &'static str {
        "GIC redistributors"
    }

    fn read(&self, ctx: &dyn MmioContext, a: Access) -> u64 {
        let (target, off) = ((a.offset / self.stride) as usize, a.offset % self.stride);
        ctx.vgic().lock().redist_read(target, off, a.size)
    }

    fn write(&self, ctx: &dyn MmioContext, a: Access, value: u64) {
        let (target, off) = ((a.offset / self.stride) as usize, a.offset % self.stride);
        let fx = ctx.vgic().lock().redist_write(target, off, a.size, value);
        ctx.apply(fx);
    }
}

/// The VM's counters page (`smmuhyp,vm-counters` in its device tree):
/// 64-bit little-endian registers, read-only, also readable as 32-bit
/// halves.
///
/// | offset | value |
/// |---|---|
/// | 0x00 | traps taken from the VM so far (all vCPUs) |
/// | 0x08 | vSMMU: guest commands consumed (0 without a vSMMU) |
/// | 0x10 | vSMMU: physical commands they became |
/// | 0x18 | MSIs of its functions the hypervisor took and injected through the list registers (0 while the GIC delivers them directly) |
/// | 0x20 | how often the VM restarted (0 in its first incarnation) |
///
/// Anything else, and misaligned or odd-sized accesses, read as zero;
/// writes are ignored.
#[derive(Debug)]
pub struct CountersPage;

impl MmioDevice for CountersPage {
    fn name(&self) -> &'static str {
        "counters page"
    }

    fn leaves_vgic_alone(&self) -> bool {
        true
    }

    fn read(&self, ctx: &dyn MmioContext, a: Access) -> u64 {
        let s = ctx.vsmmu_stats();
        let (guest, phys) = (s.guest_commands, s.physical_commands);
        let values = [
            ctx.traps(),
            guest,
            phys,
            ctx.msis_injected(),
            ctx.restarts(),
        ];
        let word = |i: u64| values.get(i as usize).copied().unwrap_or(0);
        let offset = a.offset;
        match a.size {
            8 if offset.is_multiple_of(8) => word(offset / 8),
            4 if offset.is_multiple_of(4) => {
                let v = word(offset / 8);
                if offset.is_multiple_of(8) {
                    v & 0xffff_ffff
                } else {
                    v >> 32
                }
            }
            _ => 0,
        }
    }

    fn write(&self, _: &dyn MmioContext, _: Access, _: u64) {}
}

/// The configuration space (ECAM) of the VM's PCI host bridge (`vpci`):
/// its assigned functions, filtered. Without functions, an empty bus
/// (all-ones reads, writes ignored).
pub struct PciHostBridge {
    bus: Option<(Mutex<VirtualPciBus>, Box<dyn ConfigAccess + Send + Sync>)>,
}

impl core::fmt::Debug for PciHostBridge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PciHostBridge")
            .field("functions", &self.bus.is_some())
            .finish()
    }
}

impl PciHostBridge {
    /// A bridge over `bus`, whose functions' real configuration space is
    /// reached through `cfg`.
    pub fn new(bus: VirtualPciBus, cfg: Box<dyn ConfigAccess + Send + Sync>) -> Self {
        Self {
            bus: Some((Mutex::new(bus), cfg)),
        }
    }

    /// A bridge with no functions.
    pub fn empty() -> Self {
        Self { bus: None }
    }
}

impl MmioDevice for PciHostBridge {
    fn name(&self) -> &'static str {
        "PCI host bridge"
    }

    fn read(&self, _: &dyn MmioContext, a: Access) -> u64 {
        match &self.bus {
            Some((bus, cfg)) => bus.lock().read(cfg.as_ref(), a.offset, a.size),
            None => u64::MAX,
        }
    }

    fn write(&self, _: &dyn MmioContext, a: Access, value: u64) {
        if let Some((bus, cfg)) = &self.bus {
            bus.lock().write(cfg.as_ref(), a.offset, a.size, value);
        }
    }

    fn reset(&self) {
        if let Some((bus, _)) = &self.bus {
            bus.lock().reset();
        }
    }
}

/// The virtual SMMU's registers (the VM's [`crate::vm::vm::VirtualIommu`]).
#[derive(Debug)]
pub struct VsmmuRegisters;

impl VsmmuRegisters {
    fn access(ctx: &dyn MmioContext, a: Access, write: bool, value: u64) -> u64 {
        let Some((result, irqs)) = ctx.vsmmu_mmio(a.offset, a.size, write, value) else {
            return 0;
        };
        for intid in irqs {
            ctx.raise_edge(intid);
        }
        result
    }
}

impl MmioDevice for VsmmuRegisters {
    fn name(&self) -> &'static str {
        "vSMMU"
    }

    /// Its command queue's work, CMD_SYNC completions and MSIs included, is
    /// all in guest memory and on the physical SMMU; its wired interrupts
    /// are edges.
    fn leaves_vgic_alone(&self) -> bool {
        true
    }

    fn read(&self, ctx: &dyn MmioContext, a: Access) -> u64 {
        Self::access(ctx, a, false, 0)
    }

    fn write(&self, ctx: &dyn MmioContext, a: Access, value: u64) {
        Self::access(ctx, a, true, value);
    }
}
