//! Device assignment: PCI functions a scenario gives to a VM.
//!
//! For each function: it must exist, be an endpoint and not have been
//! refused at enumeration; its BARs get guest addresses in the VM's PCI
//! MMIO window and are mapped into the VM's IPA space as device memory
//! (both stage-2 tables, the CPU's and the IOMMU domain's, see `space`),
//! but for the pages of its MSI-X table and PBA, which trap; the function's
//! memory decode stays off until its guest turns it on through its virtual
//! command register, as its driver does; its stream is attached to the
//! VM's IOMMU domain before the guest starts; its INTx line becomes a
//! virtual SPI of the VM. A line can have one owner: a scenario that gives
//! one interrupt line to two VMs is refused.

use super::devices::MsixRegion;
use super::intx::IntxForwarding;
use super::space::{IpaSpace, Mapping};
use crate::drivers::iommu::HostIommu;
use crate::drivers::pci::{self, Bar, BarKind, Bdf, ConfigAccess, Function};
use crate::guest_fdt::PciDt;
use crate::platform::Platform;
use crate::vdev::msix::{MsixLayout, MsixPages};
use crate::vdev::vpci::{VirtualBar, VirtualFunction, VirtualPciBus};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use log::info;
use scenario::guest_layout as layout;
use smmu::addr::{Ipa, PhysAddr, StreamId};
use spin::{Mutex, Once};

/// First virtual SPI (INTID 32 + n) given to assigned functions' INTx.
const FIRST_VSPI: u32 = 8;

/// One assigned function.
#[derive(Debug, Clone)]
pub struct AssignedDevice {
    /// Its physical address.
    pub phys: Bdf,
    /// Its StreamID.
    pub sid: StreamId,
}

/// A VM's devices.
pub struct Assignment {
    /// The guest's virtual PCI bus.
    pub bus: VirtualPciBus,
    /// The functions.
    pub devices: Vec<AssignedDevice>,
    /// Its device tree node.
    pub dt: PciDt,
    /// The trapped pages holding its functions' MSI-X tables and PBAs, at
    /// their guest addresses, for the VM's MMIO bus.
    pub msix: Vec<(Ipa, u64, MsixRegion)>,
}

static HOST_CFG: Once<pci::Ecam> = Once::new();

/// ECAM access to the host bridge (identity-mapped by boot).
pub fn host_config(p: &Platform) -> Option<&'static pci::Ecam> {
    let host = p.pci.as_ref()?;
    Some(HOST_CFG.call_once(|| {
        // SAFETY: the ECAM region from the DTB was mapped as a device by
        // boot::map_everything and stays mapped.
        unsafe { pci::Ecam::new(host.ecam.base, host.ecam.size, host.bus_range.0) }
    }))
}

/// The host bridge's config space, once `host_config` ran.
pub fn config() -> Option<&'static pci::Ecam> {
    HOST_CFG.get()
}

/// The guest requester ID of the `i`-th assigned function, virtual
/// 00:(i+1).0: its virtual StreamID and DeviceID (the guest's `iommu-map`
/// and `msi-map` are the identity).
pub fn guest_requester_id(i: usize) -> u32 {
    ((i as u32) + 1) << 3
}

/// Maps `bar` of `bdf` at guest address `guest` into the VM's IPA space
/// (both stage-2 tables) as device memory, at least one page, except the
/// `holes` (page-aligned BAR offset ranges that must trap).
fn map_bar(
    space: &mut IpaSpace,
    iommu: &Mutex<HostIommu>,
    bdf: Bdf,
    bar: &Bar,
    pa: u64,
    guest: u64,
    holes: &[core::ops::Range<u64>],
) -> Result<(), String> {
    let len = bar.size.max(smmu::hw::PAGE_SIZE as u64);
    for r in crate::vdev::msix::outside(len, holes) {
        let m = Mapping::bar(
            Ipa(guest + r.start),
            PhysAddr(pa + r.start),
            r.end - r.start,
        );
        space
            .map(Some(&mut iommu.lock().iommu), &crate::mm::S2_CPU_MEM, m)
            .map_err(|e| format!("PCI {bdf}: BAR{} map: {e}", bar.index))?;
    }
    Ok(())
}

/// The MSI-X layout of `f` when the hypervisor routes its MSIs (the
/// machine has an ITS) and the table and PBA lie inside placed BARs (a
/// device that says otherwise keeps its MSI-X hidden and uses INTx).
fn routed_msix(cfg: &dyn ConfigAccess, f: &Function) -> Option<MsixLayout> {
    crate::drivers::its::get()?;
    let (at, _) = pci::capabilities(cfg, f.bdf)
        .into_iter()
        .find(|&(_, id)| id == pci::reg::CAP_ID_MSIX)?;
    let at = u16::from(at);
    let read = |off: u16| cfg.read32(f.bdf, at + off);
    let l = MsixLayout::from_capability(read(0), read(4), read(8))?;
    let inside = |bar: u8, r: core::ops::Range<u64>| {
        f.bars
            .iter()
            .any(|b| b.index == bar && b.cpu_addr.is_some() && r.end <= b.size)
    };
    (inside(l.table_bar, l.table()) && inside(l.pba_bar, l.pba())).then_some(l)
}

/// `f`'s first I/O BAR, if it has one.
fn io_bar(f: &Function) -> Option<&pci::Bar> {
    f.bars
        .iter()
        .find(|b| b.kind == pci::BarKind::Io && b.size > 0)
}

/// Whether `f`'s MSI capability is shown: it has one and the hypervisor
/// routes its MSIs (the machine has an ITS).
fn routed_msi(cfg: &dyn ConfigAccess, f: &Function) -> bool {
    crate::drivers::its::get().is_some()
        && pci::message_signalled(cfg, f.bdf).is_some_and(|m| m.msi.is_some())
}

/// Assigns `names` (PCI addresses) to VM `vm_index` (`vm`), whose IPA
/// space is `space` (its devices use its IOMMU domain); their INTx lines
/// are added to `lines`, which refuses a line another VM (or function)
/// already has.
pub fn assign(
    vm: &str,
    vm_index: usize,
    names: &[String],
    functions: &[Function],
    p: &Platform,
    space: &mut IpaSpace,
    lines: &mut IntxForwarding,
) -> Result<Assignment, String> {
    let host = p.pci.as_ref().ok_or("no PCI host bridge on this machine")?;
    let cfg = host_config(p).ok_or("no PCI host bridge on this machine")?;
    let iommu = crate::drivers::iommu::get().ok_or(
        "device assignment refused: DMA cannot be confined on this machine (no usable SMMU)",
    )?;
    let domain = space
        .domain()
        .ok_or("device assignment refused: the VM has no IOMMU domain")?;
    let mut next_mmio = layout::PCI_MMIO_BASE;
    let mmio_end = layout::PCI_MMIO_BASE + layout::PCI_MMIO_SIZE;
    // First the functions and their BARs: the virtual bus.
    let mut vfs = Vec::new();
    let mut msix = Vec::new();
    let mut sids = Vec::new();
    for name in names {
        let a = scenario::PciAddr::parse(name)
            .ok_or_else(|| format!("{name:?} is not a PCI address"))?;
        let bdf = Bdf {
            bus: a.bus,
            dev: a.device,
            func: a.function,
        };
        let f = functions
            .iter()
            .find(|f| f.bdf == bdf)
            .ok_or_else(|| format!("PCI {bdf}: no such function on this machine"))?;
        if let Some(e) = &f.refused {
            return Err(format!(
                "PCI {e}: refused at enumeration, it cannot be assigned"
            ));
        }
        if cfg.read32(bdf, pci::reg::HEADER) >> 16 & 0x7f != 0 {
            return Err(format!("PCI {bdf}: a bridge cannot be assigned"));
        }
        // No port I/O for guests: a function that needs it would be half
        // there, so it is not assigned at all.
        if let Some(io) = io_bar(f) {
            return Err(format!(
                "PCI {bdf}: BAR{} is an I/O BAR ({} bytes), and guests get no port I/O: \
                 not assigned (for a virtio device, disable-legacy=on leaves memory BARs only)",
                io.index, io.size
            ));
        }
        let sid = iommu
            .lock()
            .stream_of(bdf)
            .ok_or_else(|| format!("PCI {bdf}: no StreamID in the iommu-map"))?;
        // BARs at guest addresses, mapped as device memory, but for the
        // pages of the MSI-X table and PBA, which trap.
        let msix_layout = routed_msix(cfg, f);
        let mut bars: [Option<VirtualBar>; 6] = [None; 6];
        for bar in &f.bars {
            let Some(pa) = bar.cpu_addr else { continue };
            // Alone in its guest pages too: a sub-page BAR still takes a
            // page of its own.
            let span = bar.size.max(smmu::hw::PAGE_SIZE as u64);
            let guest = (next_mmio + span - 1) & !(span - 1);
            if guest + span > mmio_end {
                return Err(format!(
                    "PCI {bdf}: BAR{} does not fit the guest's MMIO window",
                    bar.index
                ));
            }
            next_mmio = guest + span;
            let holes: Vec<_> = msix_layout
                .iter()
                .flat_map(|l| l.trapped(bar.index))
                .collect();
            map_bar(space, iommu, bdf, bar, pa, guest, &holes)?;
            for range in holes {
                let len = range.end - range.start;
                let at = PhysAddr(pa + range.start);
                // The range lies in this function's placed BAR (`routed_msix`
                // checked the table and PBA against its size; the trapped
                // pages are within the page-rounded BAR, which nothing else
                // shares), identity-mapped as device memory at EL2 since
                // enumeration.
                // SAFETY: as just said, `BarRange::new`'s contract holds.
                let window = unsafe { pci::BarRange::new(at, len, range.start) };
                let pages = MsixPages {
                    layout: msix_layout.expect("holes come from a layout"),
                    bar: bar.index,
                    range: range.clone(),
                };
                let function = (bdf, Box::new(cfg) as Box<dyn ConfigAccess + Send + Sync>);
                msix.push((
                    Ipa(guest + range.start),
                    len,
                    MsixRegion {
                        pages,
                        window,
                        function,
                    },
                ));
            }
            bars[bar.index as usize] = Some(VirtualBar {
                guest_addr: Ipa(guest),
                size: bar.size,
                kind: bar.kind,
                prefetchable: bar.prefetchable,
            });
            debug_assert!(bar.kind != BarKind::Io);
        }
        vfs.push(VirtualFunction {
            phys: bdf,
            bars,
            msix: msix_layout,
            msi: routed_msi(cfg, f),
        });
        sids.push((bdf, sid));
    }
    let bus = VirtualPciBus::new(vfs);

    // Then interrupts and streams.
    let mut devices = Vec::new();
    let mut intx = Vec::new();
    for (i, &(bdf, sid)) in sids.iter().enumerate() {
        let vdev = bus.guest_dev(bdf).expect("function on the virtual bus");
        let mut vintid = None;
        if let Some(pin) = bus.intx_pin(cfg, i) {
            let irq = host
                .intx_irq(bdf.dev, pin)
                .ok_or_else(|| format!("PCI {bdf}: INTx pin {pin} has no interrupt-map entry"))?;
            let vspi = FIRST_VSPI + i as u32;
            if let Some((other, _)) = lines.owner(irq.intid) {
                return Err(if other != vm_index {
                    format!(
                        "PCI {bdf}: its INTx line (INTID {}) is already given to another VM (VM #{other}); one interrupt line cannot belong to two VMs",
                        irq.intid
                    )
                } else {
                    format!("PCI {bdf}: shares INTID {} with another function of this VM, not supported", irq.intid)
                });
            }
            lines.add(irq.intid, vm_index, 32 + vspi);
            intx.push((vdev, 1u8, vspi));
            vintid = Some(32 + vspi);
        }
        // The stream, last: the device can reach the VM's memory from now on.
        iommu
            .lock()
            .iommu
            .attach(domain, sid)
            .map_err(|e| format!("PCI {bdf}: attach stream {sid}: {e}"))?;
        iommu.lock().set_owner(sid, vm);
        info!(
            "VM {vm}: PCI {bdf} (sid {sid}) assigned as 00:{vdev:02x}.0{}",
            vintid.map_or(String::new(), |v| format!(", INTx -> guest INTID {v}"))
        );
        devices.push(AssignedDevice { phys: bdf, sid });
    }
    Ok(Assignment {
        bus,
        devices,
        dt: PciDt {
            ecam: (layout::PCI_ECAM_BASE, 1 << 20),
            mmio: (layout::PCI_MMIO_BASE, layout::PCI_MMIO_SIZE),
            mmio64: None,
            intx,
        },
        msix,
    })
}

/// Attaches a restarting VM's functions' streams to its IOMMU domain
/// again, as [`assign`] left them: the devices reach the VM's memory through
/// its stage 2 (their bus mastering stays off until the guest turns it on).
pub fn reattach(
    vm: &str,
    devices: &[AssignedDevice],
    domain: smmu::domain::DomainId,
) -> Result<(), String> {
    let iommu = crate::drivers::iommu::get().ok_or("no SMMU")?;
    let mut h = iommu.lock();
    for d in devices {
        h.iommu
            .attach(domain, d.sid)
            .map_err(|e| format!("PCI {}: attach stream {}: {e}", d.phys, d.sid))?;
        h.set_owner(d.sid, vm);
    }
    Ok(())
}

/// Stops a VM's assigned functions: bus mastering and memory decode off
/// for all of them first (they are nobody's now, and none DMAs any more),
/// then their streams abort (STE abort, CFGI_STE and SYNC), then each
/// function is reset where it can be (an FLR; one line says which were and
/// which could not be), then the SMMU's TLB entries of the VM's VMID are
/// invalidated (TLBI_S12_VMALL + SYNC), all before the VM's memory could be
/// reused.
pub fn release(vm: &str, devices: &[AssignedDevice], vmid: smmu::addr::Vmid) {
    let Some(cfg) = config() else { return };
    for d in devices {
        let cmd = cfg.read32(d.phys, pci::reg::COMMAND) & 0xffff;
        let off = pci::reg::CMD_MASTER | pci::reg::CMD_MEM;
        cfg.write32(d.phys, pci::reg::COMMAND, cmd & !off);
    }
    if let Some(h) = crate::drivers::iommu::get() {
        let mut h = h.lock();
        for d in devices {
            // Whether attached or not: a stream its guest configured
            // through its vSMMU may be attached to nothing yet not abort
            // (the invalid STE of a refused guest STE).
            let r = h.iommu.block(d.sid);
            if let Err(e) = r {
                log::error!("PCI {}: cannot make stream {} abort: {e}", d.phys, d.sid);
            }
            h.set_owner(d.sid, "nobody");
        }
    }
    for d in devices {
        match pci::reset_function(cfg, d.phys, &crate::arch::delay_us) {
            pci::FunctionReset::Flr => info!("VM {vm}: PCI {}: function-level reset", d.phys),
            pci::FunctionReset::Unsupported => info!(
                "VM {vm}: PCI {}: no function-level reset (the function has none): \
                 bus mastering and memory decode off only",
                d.phys
            ),
        }
    }
    if let Some(h) = crate::drivers::iommu::get() {
        let cmd = smmu::cmd::Command::TlbiS12Vmall { vmid };
        if let Err(e) = h.lock().iommu.smmu().submit_sync(&[cmd]) {
            log::error!("SMMU: TLBI_S12_VMALL({vmid}) failed: {e}");
        }
    }
}
