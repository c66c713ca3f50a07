//! The physical GICv3 ITS (IHI 0069 §6.2), owned by the hypervisor: it
//! turns a device's MSI (a DMA write of an EventID to GITS_TRANSLATER, which
//! the SMMU translates like any other DMA) into a physical LPI that the
//! hypervisor takes and, later, injects into the device's VM as a virtual
//! interrupt.
//!
//! Everything the ITS and the redistributors read lives in hypervisor
//! memory (`mm::ITS_MEM`), zeroed before the GIC sees it: the device table
//! (flat, sized for the DeviceIDs the host bridge's `msi-map` gives the
//! PCI bus the hypervisor enumerates), the collection table when a
//! GITS_BASER<n> asks for one, one ITT per mapped device, the command queue,
//! the LPI configuration table all redistributors share (GICR_PROPBASER)
//! and one pending table per redistributor (GICR_PENDBASER, 64 KiB
//! aligned). Their Shareability is read back after programming: a table
//! the GIC does not snoop is made Non-cacheable and every CPU write to it
//! is cleaned to the point of coherency (`gicv3::attrs`).
//!
//! Each physical CPU has its own collection (ICID = its index), mapped with
//! MAPC to its redistributor as GITS_TYPER.PTA says. LPIs are allocated by
//! the hypervisor (`gicv3::lpi::LpiAllocator`), one per mapped event.
//!
//! Where the ITS has virtual LPIs (GITS_TYPER.Virtual, GICv4.0) and every
//! redistributor it serves can take them directly (GICR_TYPER.VLPIS), the
//! driver also gives the ITS a vPE table and can map a device's event to a
//! virtual LPI of a vPE instead ([`Its::create_vpes`], [`Its::map_vlpi`]):
//! its MSI is then made pending in the vPE's virtual pending table and
//! presented to the vCPU by the redistributor, with no physical LPI and no
//! hypervisor in the way. Each such VM has a virtual LPI configuration table
//! and each of its vPEs a virtual pending table, all in hypervisor memory;
//! the vPEs are mapped (VMAPP) to the redistributors of their vCPUs'
//! physical CPUs for good, since vCPUs are pinned.
//!
//! Every command batch ends when GITS_CREADR has passed it, with a SYNC
//! first where the command changes a redistributor's state (§6.3). The
//! wait is bounded: a queue that stalls (GITS_CREADR.Stalled) or does not
//! move is an error returned to the caller, and whatever the lost commands
//! referred to (an ITT, an LPI) is leaked rather than reused.

use super::frame::Frame;
use super::gic;
use crate::arch;
use crate::gicv3::attrs::{negotiate, Cacheability, NotKept, Shareability};
use crate::gicv3::intid::LPI_BASE;
use crate::gicv3::its::cmd::{
    Command, DeviceId, Doorbell, EventId, Icid, IttRef, RdBase, VpeId, VptRef, COMMAND_BYTES,
};
use crate::gicv3::its::queue::{CommandQueue, QueueError, QueueHw, Ring};
use crate::gicv3::its::table::{self, FlatTable, Itt, TableError, ITT_ALIGN};
use crate::gicv3::its::{
    self as gits, Baser, PageSize, TableType, Typer, BASER_ATTRS, CBASER_ATTRS,
};
use crate::gicv3::lpi::{self, Lpi, LpiAllocator, LpiError};
use crate::gicv3::vlpi::{self, VlpiTable};
use crate::mm::ITS_MEM;
use crate::platform::{ItsNode, Platform};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use log::{info, warn};
use smmu::addr::PhysAddr;
use smmu::hw::{DmaRegion, PAGE_SIZE};
use spin::{Mutex, Once};

/// Priority of every LPI the hypervisor maps: the SPIs' priority, unmasked
/// by the CPU interface's priority mask (ICC_PMR_EL1 = 0xff).
const LPI_PRIORITY: u8 = 0xa0;
/// The command queue: 2048 commands, 64 KiB aligned as GITS_CBASER wants.
const QUEUE_BYTES: usize = 64 * 1024;
/// Polls of GITS_CREADR (and of GITS_CTLR.Quiescent), 1 µs apart.
const POLLS: u32 = 1_000_000;
/// The most events a device may ask for (MSI-X's largest table).
pub const MAX_EVENTS: u32 = 2048;
/// The highest DeviceID covered when the host bridge has no `msi-map`.
const DEFAULT_MAX_DEVICE_ID: u32 = 0xff;
/// vPE IDs the vPE table covers at least: more than the vCPUs of a machine
/// the hypervisor runs ([`crate::vm::run::MAX_CPUS`]), since IDs are never
/// reused (a VM never restarts) and the boot self-test takes one.
const MAX_VPES: u32 = 64;

/// What went wrong with the ITS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItsError {
    /// The device tree has no `arm,gic-v3-its`.
    Absent,
    /// Its register region is smaller than its two 64 KiB frames.
    SmallRegion(u64),
    /// GITS_TYPER.Physical = 0: the ITS cannot make physical LPIs.
    NoPhysicalLpis,
    /// The distributor has no LPIs (GICD_TYPER.LPIS = 0, or fewer than 14
    /// INTID bits), or no redistributor took the LPI tables.
    NoLpis,
    /// The ITS did not become quiescent after being disabled.
    NotQuiescent,
    /// No GITS_BASER<n> is of type Devices.
    NoDeviceTable,
    /// A table cannot be built.
    Table(&'static str, TableError),
    /// A base register did not keep the value written.
    NotKept(&'static str, NotKept),
    /// No memory for a table.
    OutOfMemory(&'static str),
    /// The DeviceID is beyond the device table or the ITS's DeviceID bits.
    DeviceOutOfRange(DeviceId),
    /// The device is mapped already.
    DeviceMapped(DeviceId),
    /// The device is not mapped.
    DeviceNotMapped(DeviceId),
    /// More events than [`MAX_EVENTS`], or none.
    BadEventCount(u32),
    /// The EventID is beyond the device's ITT.
    EventOutOfRange(DeviceId, EventId),
    /// The event is mapped already.
    EventMapped(DeviceId, EventId),
    /// The event is not mapped.
    EventNotMapped(DeviceId, EventId),
    /// The physical CPU (by index) has no collection.
    NoCollection(usize),
    /// The LPI allocator refused.
    Lpi(LpiError),
    /// The command queue failed: a stall, an ITS that stopped reading
    /// within [`POLLS`] polls, an offset outside the queue.
    Queue(QueueError),
    /// Virtual LPIs cannot be injected directly here.
    NoDirectInjection(NoDirect),
    /// Every vPE ID of the vPE table is taken.
    VpesExhausted,
    /// The vPE is not one [`Its::create_vpes`] mapped.
    UnknownVpe(VpeId),
    /// The virtual LPI configuration table is not one
    /// [`Its::create_vpes`] allocated.
    UnknownVlpiTable(VlpiTable),
    /// The vINTID is not a virtual LPI the tables cover.
    BadVintid(u32),
    /// The event is mapped to a physical LPI where a virtual one was
    /// expected, or the other way round.
    WrongKind(DeviceId, EventId),
    /// The vPE is still resident on a redistributor.
    VpeResident(VpeId),
    /// The device's MSIs are not translated for now
    /// ([`Its::suspend_device`]).
    DeviceSuspended(DeviceId),
}

/// Why virtual LPIs cannot be injected directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoDirect {
    /// GITS_TYPER.Virtual = 0: the ITS has no virtual LPIs (a GICv3).
    ItsHasNoVirtualLpis,
    /// The redistributor of this physical CPU has GICR_TYPER.VLPIS = 0.
    RedistributorHasNoVirtualLpis(usize),
    /// The GIC's INTIDs (GICD_TYPER.IDbits), too few for the vGICs' LPIs
    /// (the second).
    IdBits(u32, u32),
    /// No GITS_BASER<n> is of type vPEs, or its table cannot be built.
    NoVpeTable,
}

impl fmt::Display for NoDirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ItsHasNoVirtualLpis => {
                f.write_str("the ITS has no virtual LPIs (GITS_TYPER.Virtual = 0: not a GICv4)")
            }
            Self::RedistributorHasNoVirtualLpis(cpu) => write!(
                f,
                "the redistributor of physical CPU {cpu} has no virtual LPIs (GICR_TYPER.VLPIS = 0)"
            ),
            Self::IdBits(bits, need) => {
                write!(f, "the GIC has {bits} INTID bits, virtual LPIs need {need}")
            }
            Self::NoVpeTable => f.write_str("the ITS has no usable vPE table (GITS_BASER<n>)"),
        }
    }
}

impl fmt::Display for ItsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Absent => f.write_str("no ITS in the device tree"),
            Self::SmallRegion(size) => {
                write!(
                    f,
                    "its register region of {size:#x} bytes is not two 64 KiB frames"
                )
            }
            Self::NoPhysicalLpis => f.write_str("GITS_TYPER.Physical = 0"),
            Self::NoLpis => f.write_str("no redistributor takes physical LPIs"),
            Self::NotQuiescent => f.write_str("the ITS does not become quiescent"),
            Self::NoDeviceTable => f.write_str("no GITS_BASER<n> holds a device table"),
            Self::Table(what, e) => write!(f, "{what}: {e}"),
            Self::NotKept(what, n) => {
                write!(f, "{what} written {:#x}, reads {:#x}", n.wrote, n.read)
            }
            Self::OutOfMemory(what) => write!(f, "out of memory for {what}"),
            Self::DeviceOutOfRange(d) => write!(f, "{d} is beyond the device table"),
            Self::DeviceMapped(d) => write!(f, "{d} is mapped already"),
            Self::DeviceNotMapped(d) => write!(f, "{d} is not mapped"),
            Self::BadEventCount(n) => write!(f, "{n} events (1..={MAX_EVENTS})"),
            Self::EventOutOfRange(d, e) => write!(f, "{e} is beyond the ITT of {d}"),
            Self::EventMapped(d, e) => write!(f, "{e} of {d} is mapped already"),
            Self::EventNotMapped(d, e) => write!(f, "{e} of {d} is not mapped"),
            Self::NoCollection(cpu) => write!(f, "physical CPU {cpu} has no collection"),
            Self::Lpi(e) => write!(f, "{e}"),
            Self::Queue(e) => write!(f, "{e}"),
            Self::NoDirectInjection(why) => write!(f, "no direct injection: {why}"),
            Self::VpesExhausted => f.write_str("every vPE ID is taken"),
            Self::UnknownVpe(vpe) => write!(f, "{vpe} is not mapped"),
            Self::UnknownVlpiTable(t) => write!(f, "{t:?} does not exist"),
            Self::BadVintid(v) => write!(f, "vINTID {v} is not a virtual LPI"),
            Self::WrongKind(d, e) => write!(f, "{e} of {d} is mapped to the other kind of LPI"),
            Self::DeviceSuspended(d) => write!(f, "{d} does not translate its MSIs for now"),
            Self::VpeResident(vpe) => write!(f, "{vpe} is still resident"),
        }
    }
}

impl From<LpiError> for ItsError {
    fn from(e: LpiError) -> Self {
        Self::Lpi(e)
    }
}

/// The command queue's memory and registers, as [`CommandQueue`] reaches
/// them.
struct QueueMmio<'a> {
    regs: &'a Frame,
    mem: &'a DmaRegion,
    /// The ITS does not snoop the queue: clean each command.
    flush: bool,
}

impl QueueHw for QueueMmio<'_> {
    fn creadr(&self) -> u64 {
        self.regs.r64(gits::CREADR)
    }

    fn set_cwriter(&mut self, value: u64) {
        arch::dsb_st();
        self.regs.w64(gits::CWRITER, value);
    }

    fn put(&mut self, at: u32, words: [u64; 4]) {
        self.mem.write_words(at as usize / 8, &words);
        if self.flush {
            arch::clean_inval_dcache(self.mem.pa().raw() + u64::from(at), COMMAND_BYTES);
        }
    }

    fn opcode_at(&self, at: u32) -> u8 {
        self.mem.read(at as usize / 8) as u8
    }

    fn pause(&self) {
        arch::delay_us(1);
    }
}

/// One event of a mapped device.
#[derive(Clone, Copy, Debug)]
enum Mapping {
    /// To a physical LPI the hypervisor takes on physical CPU `cpu`.
    Physical { lpi: Lpi, cpu: usize },
    /// To virtual LPI `vintid` of `vpe`.
    Virtual { vpe: VpeId, vintid: u32 },
}

/// One vPE [`Its::create_vpes`] mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vpe {
    /// Its ID.
    pub id: VpeId,
    /// The physical CPU whose redistributor it is mapped to.
    pub cpu: usize,
    /// GICR_VPENDBASER for making it resident there (not Valid yet).
    pub vpendbaser: u64,
}

/// The vPEs of one VM and their configuration table (not `Clone`: whoever
/// holds it decides when they go, [`Its::destroy_vpes`]).
#[derive(Debug, PartialEq, Eq)]
pub struct VpeSet {
    /// The VM's virtual LPI configuration table.
    pub table: VlpiTable,
    /// GICR_VPROPBASER for it, on every one of the VM's physical CPUs.
    pub vpropbaser: u64,
    /// One per vCPU, in vCPU order.
    pub vpes: Vec<Vpe>,
}

/// The ITS's virtual side: its vPE table and the tables of the vPEs mapped
/// in it.
struct Virtual {
    /// vPE IDs 0..vpe_ids have a vPE table entry.
    vpe_ids: u32,
    /// The next vPE ID to hand out (IDs are never reused).
    next_vpe: u32,
    /// The mapped vPEs: their physical CPU and virtual pending table.
    vpes: BTreeMap<VpeId, (usize, DmaRegion)>,
    /// The virtual LPI configuration tables.
    tables: BTreeMap<VlpiTable, DmaRegion>,
    /// The next table handle.
    next_table: u32,
}

/// A mapped device.
struct Device {
    itt: DmaRegion,
    layout: Itt,
    events: BTreeMap<EventId, Mapping>,
    /// Unmapped from the ITS (MAPD, V = 0) with its events kept here, to
    /// be mapped again by [`Its::resume_device`].
    suspended: bool,
}

/// The ITS and the LPIs it delivers.
pub struct Its {
    regs: Frame,
    base: PhysAddr,
    typer: Typer,
    queue: CommandQueue,
    queue_mem: DmaRegion,
    /// The ITS does not snoop the command queue.
    queue_flush: bool,
    /// DeviceIDs 0..device_ids have a device table entry.
    device_ids: u64,
    lpis: LpiAllocator,
    /// The LPI configuration table.
    config: DmaRegion,
    /// Some redistributor does not snoop the configuration table.
    config_flush: bool,
    /// Per physical CPU index (= ICID): its redistributor, if it takes LPIs.
    collections: Vec<Option<RdBase>>,
    /// Per physical CPU index: its MPIDR.
    mpidrs: Vec<u64>,
    devices: BTreeMap<DeviceId, Device>,
    /// Tables the GIC uses for good (device, collection, pending tables,
    /// vPE table).
    _tables: Vec<DmaRegion>,
    /// GICv4 direct injection, or why there is none.
    virt: Result<Virtual, NoDirect>,
    /// INTID bits of the VMs' LPIs: what their vGICs offer, and what
    /// their virtual LPI tables cover.
    guest_id_bits: u32,
}

impl fmt::Debug for Its {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Its")
            .field("base", &self.base)
            .field("devices", &self.devices.len())
            .field("lpis_in_use", &self.lpis.in_use())
            .finish_non_exhaustive()
    }
}

static ITS: Once<Mutex<Its>> = Once::new();

/// The ITS, once [`init`] brought it up.
pub fn get() -> Option<&'static Mutex<Its>> {
    ITS.get()
}

/// Allocates `bytes` of zeroed ITS memory aligned to `align`, cleaned to
/// the point of coherency so that the GIC reads zeros whatever it snoops.
fn table_mem(what: &'static str, bytes: usize, align: usize) -> Result<DmaRegion, ItsError> {
    let mem = DmaRegion::alloc(&ITS_MEM, bytes, align).map_err(|_| ItsError::OutOfMemory(what))?;
    arch::clean_inval_dcache(mem.pa().raw(), mem.len());
    Ok(mem)
}

/// The highest DeviceID the host bridge's `msi-map` gives the bus the
/// hypervisor enumerates (its first bus).
fn max_device_id(p: &Platform, node: &ItsNode) -> u32 {
    p.pci
        .as_ref()
        .and_then(|host| {
            let bus = u16::from(host.bus_range.0) << 8;
            (0..=0xffu16)
                .filter_map(|devfn| host.device_id(bus | devfn, node.phandle))
                .max()
        })
        .unwrap_or(DEFAULT_MAX_DEVICE_ID)
}

/// Whether virtual LPIs can be injected directly to vPEs on the physical
/// CPUs `cpus` that take LPIs (those with a collection): the ITS has them,
/// every such CPU's redistributor has them, and the GIC's INTIDs cover the
/// vGICs' LPIs (`guest_id_bits`). The vPE table is sized later.
fn direct_injection(
    typer: &Typer,
    cpus: &[u64],
    collections: &[Option<RdBase>],
    guest_id_bits: u32,
) -> Result<Virtual, NoDirect> {
    if !typer.virtual_lpis {
        return Err(NoDirect::ItsHasNoVirtualLpis);
    }
    for (cpu, &mpidr) in cpus.iter().enumerate() {
        if collections.get(cpu).copied().flatten().is_some() && !gic::virtual_lpis(mpidr) {
            return Err(NoDirect::RedistributorHasNoVirtualLpis(cpu));
        }
    }
    match gic::lpi_id_bits() {
        Some(bits) if bits >= guest_id_bits => {}
        other => return Err(NoDirect::IdBits(other.unwrap_or(0), guest_id_bits)),
    }
    Ok(Virtual {
        vpe_ids: 0,
        next_vpe: 0,
        vpes: BTreeMap::new(),
        tables: BTreeMap::new(),
        next_table: 0,
    })
}

/// Brings the ITS up for the physical CPUs `cpus` (MPIDRs, index = CPU
/// index): LPI tables on their redistributors, the ITS's tables and queue,
/// one collection per CPU; LPIs enough for `events` (the events the
/// machine's functions can signal), at least 8192. The LPI tables have
/// INTIDs of at least `id_bits` bits (14 to 16), the VMs' LPIs exactly
/// that many. Reports what it did or why not.
pub fn init(
    p: &Platform,
    cpus: &[u64],
    events: u32,
    id_bits: u32,
) -> Result<&'static Mutex<Its>, ItsError> {
    let node = p.gic.its.as_ref().ok_or(ItsError::Absent)?;
    let its = Its::new(p, node, cpus, events, id_bits)?;
    info!(
        "ITS at {:#x} (GITS_IIDR {:#x}): {} DeviceID bits ({} in the device table), {} EventID bits, \
         ITT entries of {} bytes, RDbase by {}; {} of {} CPUs take LPIs {}..={}; \
         GITS_TRANSLATER at {:#x} (in the 4 KiB page at {:#x}); {}",
        node.regs.base,
        its.regs.r32(gits::IIDR),
        its.typer.device_id_bits,
        its.device_ids,
        its.typer.event_id_bits,
        its.typer.itt_entry_bytes,
        if its.typer.pta {
            "address"
        } else {
            "processor number"
        },
        its.collections.iter().filter(|c| c.is_some()).count(),
        cpus.len(),
        LPI_BASE,
        LPI_BASE + its.lpis.capacity() - 1,
        its.translater(),
        its.translater_page(),
        match &its.virt {
            Ok(v) => alloc::format!(
                "GICv4 direct injection of virtual LPIs: vPE table for {} vPE IDs",
                v.vpe_ids
            ),
            Err(why) => alloc::format!("no direct injection: {why}"),
        },
    );
    Ok(ITS.call_once(|| Mutex::new(its)))
}

impl Its {
    fn new(
        p: &Platform,
        node: &ItsNode,
        cpus: &[u64],
        events: u32,
        id_bits: u32,
    ) -> Result<Self, ItsError> {
        // SAFETY: the ITS's two frames from the DTB, mapped as a device by
        // boot::map_everything; nothing but this driver programs them.
        let regs = unsafe { Frame::new(node.regs.base, node.regs.size as usize) };
        if regs.part(0, 2 * gits::FRAME_SIZE).is_none() {
            return Err(ItsError::SmallRegion(node.regs.size));
        }
        let typer = Typer::decode(regs.r64(gits::TYPER));
        if !typer.physical {
            return Err(ItsError::NoPhysicalLpis);
        }
        let guest_id_bits = id_bits.clamp(lpi::MIN_ID_BITS, lpi::MAX_ID_BITS);
        let id_bits = gic::lpi_id_bits()
            .filter(|&b| b >= lpi::MIN_ID_BITS)
            .ok_or(ItsError::NoLpis)?
            .min(lpi::MAX_ID_BITS)
            .min(lpi::id_bits_for(events).max(guest_id_bits));
        quiesce(&regs)?;

        // The redistributors' LPI tables.
        let config = table_mem(
            "the LPI configuration table",
            lpi::config_table_bytes(id_bits),
            PAGE_SIZE,
        )?;
        let propbaser = lpi::propbaser(
            config.pa(),
            id_bits,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        let mut tables = Vec::new();
        let mut collections = Vec::new();
        let mut config_flush = false;
        let icids = 1usize << typer.collection_id_bits.min(16);
        for (cpu, &mpidr) in cpus.iter().enumerate() {
            if cpu >= icids {
                warn!(
                    "ITS: CPU {cpu} (MPIDR {mpidr:#x}) gets no LPIs: only {icids} collection IDs"
                );
                collections.push(None);
                continue;
            }
            let pending = table_mem(
                "an LPI pending table",
                lpi::pending_table_bytes(id_bits),
                lpi::PENDING_TABLE_ALIGN,
            )?;
            let pendbaser = lpi::pendbaser(
                pending.pa(),
                Shareability::InnerShareable,
                Cacheability::RaWaWb,
            );
            let target = gic::redistributor(mpidr).map(|rd| {
                if typer.pta {
                    RdBase::Address(rd.rd_base)
                } else {
                    RdBase::Processor(rd.processor_number)
                }
            });
            match gic::enable_lpis(mpidr, propbaser, pendbaser) {
                Ok(flush) => {
                    config_flush |= flush;
                    tables.push(pending);
                    collections.push(target);
                }
                Err(e) => {
                    warn!("ITS: CPU {cpu} (MPIDR {mpidr:#x}) gets no LPIs: {e}");
                    // SAFETY: the redistributor refused the table before
                    // EnableLPIs was set: the GIC never used it.
                    unsafe { pending.free(&ITS_MEM) };
                    collections.push(None);
                }
            }
        }
        if collections.iter().all(Option::is_none) {
            return Err(ItsError::NoLpis);
        }
        let mut virt = direct_injection(&typer, cpus, &collections, guest_id_bits);

        // The ITS's tables: devices, and collections if it wants memory
        // for them; any other table stays invalid.
        let highest_device = max_device_id(p, node);
        let mut device_ids = None;
        for n in 0..gits::BASER_COUNT {
            let reg = gits::BASER + 8 * n as u64;
            let current = Baser::decode(regs.r64(reg));
            let (what, highest, id_bits) = match current.table_type {
                TableType::Devices => ("the device table", highest_device, typer.device_id_bits),
                TableType::Collections => (
                    "the collection table",
                    collections.len().min(icids).saturating_sub(1) as u32,
                    typer.collection_id_bits,
                ),
                TableType::Vpes if virt.is_ok() => {
                    ("the vPE table", MAX_VPES - 1, vlpi::VPE_ID_BITS)
                }
                TableType::Unimplemented => continue,
                _ => {
                    regs.w64(
                        reg,
                        Baser {
                            valid: false,
                            ..current
                        }
                        .encode(),
                    );
                    continue;
                }
            };
            let page_size = page_size(&regs, reg, current);
            let layout = table::flat_table(current.entry_bytes, highest, id_bits, page_size)
                .map_err(|e| ItsError::Table(what, e))?;
            let mem = table_mem(what, layout.bytes(), page_size.bytes())?;
            program_baser(&regs, reg, current, &layout, mem.pa())
                .map_err(|e| ItsError::NotKept(what, e))?;
            if current.table_type == TableType::Devices {
                device_ids = Some(layout.ids.min(1 << typer.device_id_bits.min(32)));
            }
            if let (TableType::Vpes, Ok(v)) = (current.table_type, &mut virt) {
                v.vpe_ids = layout.ids.min(1 << vlpi::VPE_ID_BITS) as u32;
            }
            tables.push(mem);
        }
        let device_ids = device_ids.ok_or(ItsError::NoDeviceTable)?;
        if virt.as_ref().is_ok_and(|v| v.vpe_ids == 0) {
            virt = Err(NoDirect::NoVpeTable);
        }

        // The command queue.
        let ring = Ring::new(QUEUE_BYTES).map_err(ItsError::Queue)?;
        let mem = table_mem("the command queue", QUEUE_BYTES, QUEUE_BYTES)?;
        let cbaser = gits::cbaser(
            mem.pa(),
            ring.pages(),
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        let kept = negotiate(cbaser, CBASER_ATTRS, |v| {
            regs.w64(gits::CBASER, v);
            regs.r64(gits::CBASER)
        })
        .map_err(|e| ItsError::NotKept("GITS_CBASER", e))?;
        regs.w64(gits::CWRITER, 0);

        let mut its = Self {
            regs,
            base: PhysAddr(node.regs.base),
            typer,
            queue: CommandQueue::new(ring, POLLS),
            queue_mem: mem,
            queue_flush: kept.flush,
            device_ids,
            lpis: LpiAllocator::new(id_bits),
            config,
            config_flush,
            collections,
            mpidrs: cpus.to_vec(),
            devices: BTreeMap::new(),
            _tables: tables,
            virt,
            guest_id_bits,
        };
        arch::dsb_st();
        let ctlr = its.regs.r32(gits::CTLR);
        its.regs.w32(gits::CTLR, ctlr | gits::CTLR_ENABLED);

        // One collection per CPU, then make each redistributor read the
        // (all disabled) configuration table.
        let mut cmds = Vec::new();
        for (cpu, target) in its.collections.iter().enumerate() {
            if let Some(t) = *target {
                let icid = Icid(cpu as u16);
                cmds.extend([
                    Command::Mapc {
                        icid,
                        target: Some(t),
                    },
                    Command::Invall { icid },
                    Command::Sync { target: t },
                ]);
            }
        }
        its.submit(&cmds)?;
        Ok(its)
    }

    /// The physical address of GITS_TRANSLATER, the doorbell a device's
    /// MSI writes.
    pub fn translater(&self) -> PhysAddr {
        PhysAddr(self.base.raw() + gits::TRANSLATER)
    }

    /// The 4 KiB page holding GITS_TRANSLATER, which a device's stage 2
    /// maps for its MSIs to reach the ITS (nothing else of the ITS is in
    /// that page's 64 KiB frame).
    pub fn translater_page(&self) -> PhysAddr {
        self.translater().align_down(PAGE_SIZE as u64)
    }

    /// Whether `device` has an entry in the device table.
    pub fn covers(&self, device: DeviceId) -> bool {
        u64::from(device.0) < self.device_ids
    }

    /// The physical CPUs (by index) that have a collection.
    pub fn cpus(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.collections.len()).filter(|&cpu| self.collections[cpu].is_some())
    }

    /// LPIs allocated now.
    pub fn lpis_in_use(&self) -> u32 {
        self.lpis.in_use()
    }

    /// Maps `device` with an ITT for EventIDs 0..`events` (MAPD, V = 1).
    pub fn map_device(&mut self, device: DeviceId, events: u32) -> Result<(), ItsError> {
        if !self.covers(device) {
            return Err(ItsError::DeviceOutOfRange(device));
        }
        if self.devices.contains_key(&device) {
            return Err(ItsError::DeviceMapped(device));
        }
        if events == 0 || events > MAX_EVENTS {
            return Err(ItsError::BadEventCount(events));
        }
        let layout = table::itt(events, self.typer.event_id_bits, self.typer.itt_entry_bytes)
            .map_err(|e| ItsError::Table("an ITT", e))?;
        let itt = table_mem("an ITT", layout.bytes, ITT_ALIGN)?;
        let mapd = Command::Mapd {
            device,
            itt: Some(IttRef {
                pa: itt.pa(),
                size: layout.size,
            }),
        };
        // On failure the ITS may still point at the ITT: it is leaked.
        self.submit(&[mapd])?;
        self.devices.insert(
            device,
            Device {
                itt,
                layout,
                events: BTreeMap::new(),
                suspended: false,
            },
        );
        Ok(())
    }

    fn target(&self, cpu: usize) -> Result<RdBase, ItsError> {
        self.collections
            .get(cpu)
            .copied()
            .flatten()
            .ok_or(ItsError::NoCollection(cpu))
    }

    fn mapping(&self, device: DeviceId, event: EventId) -> Result<Mapping, ItsError> {
        let d = self
            .devices
            .get(&device)
            .ok_or(ItsError::DeviceNotMapped(device))?;
        d.events
            .get(&event)
            .copied()
            .ok_or(ItsError::EventNotMapped(device, event))
    }

    /// [`Self::mapping`] of a device that translates its MSIs: the event's
    /// mapping is in the ITS and can be moved, made pending or cleared.
    fn live_mapping(&self, device: DeviceId, event: EventId) -> Result<Mapping, ItsError> {
        if self.is_suspended(device) {
            return Err(ItsError::DeviceSuspended(device));
        }
        self.mapping(device, event)
    }

    fn is_suspended(&self, device: DeviceId) -> bool {
        self.devices.get(&device).is_some_and(|d| d.suspended)
    }

    /// Checks that `event` of `device` can be mapped: the device is mapped,
    /// the event inside its ITT and not mapped yet.
    fn unmapped_event(&self, device: DeviceId, event: EventId) -> Result<(), ItsError> {
        let d = self
            .devices
            .get(&device)
            .ok_or(ItsError::DeviceNotMapped(device))?;
        if d.suspended {
            return Err(ItsError::DeviceSuspended(device));
        }
        if event.0 >= d.layout.events {
            return Err(ItsError::EventOutOfRange(device, event));
        }
        if d.events.contains_key(&event) {
            return Err(ItsError::EventMapped(device, event));
        }
        Ok(())
    }

    fn set_mapping(&mut self, device: DeviceId, event: EventId, m: Option<Mapping>) {
        if let Some(d) = self.devices.get_mut(&device) {
            match m {
                Some(m) => d.events.insert(event, m),
                None => d.events.remove(&event),
            };
        }
    }

    /// The command that waits for a mapping's effects: SYNC on its
    /// collection's redistributor, or VSYNC of its vPE.
    fn sync_for(&self, m: Mapping) -> Result<Command, ItsError> {
        Ok(match m {
            Mapping::Physical { cpu, .. } => Command::Sync {
                target: self.target(cpu)?,
            },
            Mapping::Virtual { vpe, .. } => Command::Vsync { vpe },
        })
    }

    /// Maps `event` of `device` to a newly allocated LPI, enabled at
    /// [`LPI_PRIORITY`], delivered to physical CPU `cpu` (by index): its
    /// configuration byte, then MAPTI to the CPU's collection, INV (the
    /// redistributor may hold an older configuration of the INTID) and
    /// SYNC (§6.3).
    pub fn map_event(
        &mut self,
        device: DeviceId,
        event: EventId,
        cpu: usize,
    ) -> Result<Lpi, ItsError> {
        let target = self.target(cpu)?;
        self.unmapped_event(device, event)?;
        let lpi = self.lpis.alloc()?;
        self.set_config(lpi, true);
        let cmds = [
            Command::Mapti {
                device,
                event,
                lpi,
                icid: Icid(cpu as u16),
            },
            Command::Inv { device, event },
            Command::Sync { target },
        ];
        if let Err(e) = self.submit(&cmds) {
            // The LPI may be mapped or not: it is never handed out again.
            self.set_config(lpi, false);
            return Err(e);
        }
        self.set_mapping(device, event, Some(Mapping::Physical { lpi, cpu }));
        Ok(lpi)
    }

    /// Delivers `event` of `device` to physical CPU `cpu` from now on
    /// (MOVI, then SYNC on both redistributors).
    pub fn move_event(
        &mut self,
        device: DeviceId,
        event: EventId,
        cpu: usize,
    ) -> Result<(), ItsError> {
        let Mapping::Physical { lpi, cpu: old } = self.live_mapping(device, event)? else {
            return Err(ItsError::WrongKind(device, event));
        };
        let (from, to) = (self.target(old)?, self.target(cpu)?);
        let cmds = [
            Command::Movi {
                device,
                event,
                icid: Icid(cpu as u16),
            },
            Command::Sync { target: from },
            Command::Sync { target: to },
        ];
        self.submit(&cmds)?;
        self.set_mapping(device, event, Some(Mapping::Physical { lpi, cpu }));
        Ok(())
    }

    /// Unmaps `event` of `device` (DISCARD, which also drops its pending
    /// state, then SYNC, or VSYNC for a virtual LPI; of a suspended device,
    /// whose events the ITS does not hold, only here) and frees its
    /// physical LPI.
    pub fn unmap_event(&mut self, device: DeviceId, event: EventId) -> Result<(), ItsError> {
        let m = self.mapping(device, event)?;
        if !self.is_suspended(device) {
            let sync = self.sync_for(m)?;
            self.submit(&[Command::Discard { device, event }, sync])?;
        }
        if let Mapping::Physical { lpi, .. } = m {
            // Disabled, so that the LPI's next user starts from a known
            // state (its MAPTI is followed by INV).
            self.set_config(lpi, false);
            self.lpis.free(lpi)?;
        }
        self.set_mapping(device, event, None);
        Ok(())
    }

    /// Unmaps `device`: each of its events as [`Self::unmap_event`], then
    /// MAPD with V = 0 (unless it is suspended: unmapped already), then
    /// frees its ITT.
    pub fn unmap_device(&mut self, device: DeviceId) -> Result<(), ItsError> {
        let events: Vec<EventId> = self
            .devices
            .get(&device)
            .ok_or(ItsError::DeviceNotMapped(device))?
            .events
            .keys()
            .copied()
            .collect();
        for event in events {
            self.unmap_event(device, event)?;
        }
        if !self.is_suspended(device) {
            self.submit(&[Command::Mapd { device, itt: None }])?;
        }
        if let Some(d) = self.devices.remove(&device) {
            // SAFETY: the ITS executed MAPD with V = 0 for the device (its
            // queue moved past the command), so nothing refers to the ITT.
            unsafe { d.itt.free(&ITS_MEM) };
        }
        Ok(())
    }

    /// Stops translating `device`'s MSIs (MAPD with V = 0): from now on the
    /// ITS drops them, as it drops a device's it does not know, while the
    /// LPIs they made pending stay pending (MAPD touches no pending state,
    /// where DISCARD would). Its events' mappings are kept here, their
    /// physical LPIs allocated, for [`Self::resume_device`]. Meanwhile an
    /// event can be unmapped and invalidated but not mapped, moved, made
    /// pending or cleared ([`ItsError::DeviceSuspended`]). Suspending a
    /// suspended device does nothing.
    pub fn suspend_device(&mut self, device: DeviceId) -> Result<(), ItsError> {
        let d = self
            .devices
            .get(&device)
            .ok_or(ItsError::DeviceNotMapped(device))?;
        if d.suspended {
            return Ok(());
        }
        self.submit(&[Command::Mapd { device, itt: None }])?;
        if let Some(d) = self.devices.get_mut(&device) {
            d.suspended = true;
        }
        Ok(())
    }

    /// Translates suspended `device`'s MSIs again, each event as it was
    /// mapped: its ITT zeroed (the ITS stopped using it at the MAPD with
    /// V = 0, so it starts from no translation, as a new one), MAPD with
    /// V = 1, then per event MAPTI or VMAPTI and INV (a redistributor may
    /// hold an older configuration of its LPI), then SYNC on each
    /// collection and VSYNC of each vPE the events go to. Resuming a device
    /// that is not suspended does nothing.
    pub fn resume_device(&mut self, device: DeviceId) -> Result<(), ItsError> {
        let d = self
            .devices
            .get(&device)
            .ok_or(ItsError::DeviceNotMapped(device))?;
        if !d.suspended {
            return Ok(());
        }
        for i in 0..d.itt.words() {
            d.itt.write(i, 0);
        }
        arch::clean_inval_dcache(d.itt.pa().raw(), d.itt.len());
        let mut cmds = Vec::with_capacity(2 * d.events.len() + 2);
        cmds.push(Command::Mapd {
            device,
            itt: Some(IttRef {
                pa: d.itt.pa(),
                size: d.layout.size,
            }),
        });
        let mut cpus = BTreeSet::new();
        let mut vpes = BTreeSet::new();
        for (&event, &m) in &d.events {
            cmds.push(match m {
                Mapping::Physical { lpi, cpu } => {
                    cpus.insert(cpu);
                    Command::Mapti {
                        device,
                        event,
                        lpi,
                        icid: Icid(cpu as u16),
                    }
                }
                Mapping::Virtual { vpe, vintid } => {
                    vpes.insert(vpe);
                    Command::Vmapti {
                        device,
                        event,
                        vpe,
                        vintid,
                        doorbell: Doorbell::None,
                    }
                }
            });
            cmds.push(Command::Inv { device, event });
        }
        for cpu in cpus {
            cmds.push(Command::Sync {
                target: self.target(cpu)?,
            });
        }
        cmds.extend(vpes.into_iter().map(|vpe| Command::Vsync { vpe }));
        self.submit(&cmds)?;
        if let Some(d) = self.devices.get_mut(&device) {
            d.suspended = false;
        }
        Ok(())
    }

    /// Makes the LPI of `event` of `device` pending, as the device's MSI
    /// would (INT), or clears its pending state (CLEAR), then SYNC, or
    /// VSYNC for a virtual LPI.
    pub fn set_pending(
        &mut self,
        device: DeviceId,
        event: EventId,
        pending: bool,
    ) -> Result<(), ItsError> {
        let m = self.live_mapping(device, event)?;
        let sync = self.sync_for(m)?;
        let cmd = if pending {
            Command::Int { device, event }
        } else {
            Command::Clear { device, event }
        };
        self.submit(&[cmd, sync])
    }

    /// Makes the LPI of `event` of `device` pending, as the device's MSI
    /// would: for tests of the delivery path.
    pub fn int(&mut self, device: DeviceId, event: EventId) -> Result<(), ItsError> {
        self.set_pending(device, event, true)
    }

    /// Whether virtual LPIs can be injected directly, or why not.
    pub fn direct_injection(&self) -> Result<(), NoDirect> {
        self.virt.as_ref().map(|_| ()).map_err(|e| *e)
    }

    fn virt(&mut self) -> Result<&mut Virtual, ItsError> {
        self.virt
            .as_mut()
            .map_err(|e| ItsError::NoDirectInjection(*e))
    }

    /// INTID bits of the VMs' LPIs: what their vGICs offer
    /// ([`VGic::enable_lpis`](crate::vdev::vgic::VGic::enable_lpis)), and
    /// what their virtual LPI tables cover.
    pub fn guest_lpi_id_bits(&self) -> u32 {
        self.guest_id_bits
    }

    /// Gives a VM whose vCPUs run on physical CPUs `cpus` (by vCPU) one vPE
    /// per vCPU, mapped with VMAPP to the redistributor of its physical
    /// CPU, each with a zeroed virtual pending table, and a virtual LPI
    /// configuration table in which every vLPI is disabled
    /// ([`vlpi::DISABLED`]), then VSYNC. What a failure leaves allocated is
    /// leaked (the VM is not built).
    pub fn create_vpes(&mut self, cpus: &[usize]) -> Result<VpeSet, ItsError> {
        let targets = cpus
            .iter()
            .map(|&cpu| self.target(cpu))
            .collect::<Result<Vec<_>, _>>()?;
        let v = self.virt()?;
        if u64::from(v.next_vpe) + cpus.len() as u64 > u64::from(v.vpe_ids) {
            return Err(ItsError::VpesExhausted);
        }
        let config = table_mem(
            "a virtual LPI configuration table",
            vlpi::config_table_bytes(self.guest_id_bits),
            PAGE_SIZE,
        )?;
        let disabled = u64::from_ne_bytes([vlpi::DISABLED; 8]);
        for w in 0..config.words() {
            config.write(w, disabled);
        }
        arch::clean_inval_dcache(config.pa().raw(), config.len());
        let vpropbaser = vlpi::vpropbaser(
            config.pa(),
            self.guest_id_bits,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        let mut vpes = Vec::new();
        let mut cmds = Vec::new();
        let mut vpts = Vec::new();
        for (&cpu, &target) in cpus.iter().zip(&targets) {
            let vpt = table_mem(
                "a virtual pending table",
                vlpi::pending_table_bytes(self.guest_id_bits),
                vlpi::PENDING_TABLE_ALIGN,
            )?;
            let v = self.virt()?;
            let id = VpeId(v.next_vpe as u16);
            v.next_vpe += 1;
            cmds.push(Command::Vmapp {
                vpe: id,
                target: Some((
                    target,
                    VptRef {
                        pa: vpt.pa(),
                        size: vlpi::vpt_size(self.guest_id_bits),
                    },
                )),
            });
            cmds.push(Command::Vsync { vpe: id });
            vpes.push(Vpe {
                id,
                cpu,
                vpendbaser: vlpi::vpendbaser(
                    vpt.pa(),
                    Shareability::InnerShareable,
                    Cacheability::RaWaWb,
                ),
            });
            vpts.push((id, cpu, vpt));
        }
        // On failure the ITS may still point at the tables: they are
        // leaked.
        self.submit(&cmds)?;
        let v = self.virt()?;
        for (id, cpu, vpt) in vpts {
            v.vpes.insert(id, (cpu, vpt));
        }
        let table = VlpiTable(v.next_table);
        v.next_table += 1;
        v.tables.insert(table, config);
        Ok(VpeSet {
            table,
            vpropbaser,
            vpes,
        })
    }

    /// Puts the vPEs of `set` back as [`Self::create_vpes`] made them, for
    /// a VM that restarts: each virtual pending table zeroed, every vLPI of
    /// the configuration table disabled, then VINVALL and VSYNC of each vPE
    /// (their redistributors drop what they cached; GICR_VPENDBASER.IDAI is
    /// set at every residency, so nothing of the old tables is used).
    /// Refused while one of them is resident on its redistributor.
    pub fn reset_vpes(&mut self, set: &VpeSet) -> Result<(), ItsError> {
        self.check_not_resident(set)?;
        let v = self.virt()?;
        for vpe in &set.vpes {
            if let Some((_, vpt)) = v.vpes.get(&vpe.id) {
                for w in 0..vpt.words() {
                    vpt.write(w, 0);
                }
                arch::clean_inval_dcache(vpt.pa().raw(), vpt.len());
            }
        }
        if let Some(config) = v.tables.get(&set.table) {
            let disabled = u64::from_ne_bytes([vlpi::DISABLED; 8]);
            for w in 0..config.words() {
                config.write(w, disabled);
            }
            arch::clean_inval_dcache(config.pa().raw(), config.len());
        }
        let mut cmds = Vec::new();
        for vpe in &set.vpes {
            cmds.push(Command::Vinvall { vpe: vpe.id });
            cmds.push(Command::Vsync { vpe: vpe.id });
        }
        self.submit(&cmds)
    }

    /// Fails unless every vPE of `set` is known and resident on no
    /// redistributor (which may write its pending table while it is).
    fn check_not_resident(&mut self, set: &VpeSet) -> Result<(), ItsError> {
        for vpe in &set.vpes {
            let (cpu, vpt) = match self.virt()?.vpes.get(&vpe.id) {
                Some((cpu, vpt)) => (*cpu, vpt.pa()),
                None => return Err(ItsError::UnknownVpe(vpe.id)),
            };
            let mpidr = self.mpidrs.get(cpu).copied();
            let in_use = mpidr.map(gic::vpe_table_in_use);
            if !matches!(in_use, Some(Ok(pa)) if pa != Some(vpt)) {
                return Err(ItsError::VpeResident(vpe.id));
            }
        }
        Ok(())
    }

    /// Unmaps the vPEs of `set` (VMAPP with V = 0, then each vPE's VSYNC)
    /// and frees their tables; refused while one of them is resident on
    /// its redistributor (which may then write its pending table). Events
    /// still mapped to them are dropped by the ITS from then on. Their IDs
    /// are not handed out again.
    pub fn destroy_vpes(&mut self, set: VpeSet) -> Result<(), ItsError> {
        self.check_not_resident(&set)?;
        let mut cmds = Vec::new();
        for vpe in &set.vpes {
            cmds.push(Command::Vmapp {
                vpe: vpe.id,
                target: None,
            });
        }
        for vpe in &set.vpes {
            cmds.push(Command::Vsync { vpe: vpe.id });
        }
        self.submit(&cmds)?;
        let v = self.virt()?;
        for vpe in &set.vpes {
            if let Some((_, vpt)) = v.vpes.remove(&vpe.id) {
                // The ITS executed VMAPP with V = 0 for the vPE (its queue
                // moved past it), so it no longer makes the vPE's LPIs
                // pending. Nothing makes the vPE resident again: the
                // runtime makes resident only the vPEs of its VMs, whose
                // sets it keeps for good, and this set was passed by value.
                // SAFETY: no user of the pending table is left: the ITS
                // unmapped the vPE and its redistributor neither has it
                // resident nor writes it back (checked above).
                unsafe { vpt.free(&ITS_MEM) };
            }
        }
        if let Some(config) = v.tables.remove(&set.table) {
            // SAFETY: a configuration table is read only by the
            // redistributors of resident vPEs that use it, and every vPE
            // that uses this one is this set's, none resident (above).
            unsafe { config.free(&ITS_MEM) };
        }
        Ok(())
    }

    fn check_vpe(&mut self, vpe: VpeId) -> Result<(), ItsError> {
        if self.virt()?.vpes.contains_key(&vpe) {
            Ok(())
        } else {
            Err(ItsError::UnknownVpe(vpe))
        }
    }

    fn check_vintid(&self, vintid: u32) -> Result<(), ItsError> {
        if (LPI_BASE..1 << self.guest_id_bits).contains(&vintid) {
            Ok(())
        } else {
            Err(ItsError::BadVintid(vintid))
        }
    }

    /// Maps `event` of `device` to virtual LPI `vintid` of `vpe`, with no
    /// doorbell (its vCPU is pinned, so the vPE is resident whenever the
    /// vCPU runs): VMAPTI, then INV when `inv` (the vPE's redistributor may
    /// hold an older configuration of `vintid`), then VSYNC.
    pub fn map_vlpi(
        &mut self,
        device: DeviceId,
        event: EventId,
        vpe: VpeId,
        vintid: u32,
        inv: bool,
    ) -> Result<(), ItsError> {
        self.check_vpe(vpe)?;
        self.check_vintid(vintid)?;
        self.unmapped_event(device, event)?;
        let vmapti = Command::Vmapti {
            device,
            event,
            vpe,
            vintid,
            doorbell: Doorbell::None,
        };
        // On failure the event may be mapped or not: MAPD with V = 0 drops
        // it when the device is unmapped.
        self.place_vlpi(vmapti, device, event, vpe, vintid, inv)
    }

    /// Submits `first` (VMAPTI or VMOVI of `event` of `device` to `vpe`),
    /// INV when `inv`, and VSYNC of `vpe`; then records the mapping.
    fn place_vlpi(
        &mut self,
        first: Command,
        device: DeviceId,
        event: EventId,
        vpe: VpeId,
        vintid: u32,
        inv: bool,
    ) -> Result<(), ItsError> {
        let inv = inv.then_some(Command::Inv { device, event });
        let cmds: Vec<Command> = [Some(first), inv, Some(Command::Vsync { vpe })]
            .into_iter()
            .flatten()
            .collect();
        self.submit(&cmds)?;
        self.set_mapping(device, event, Some(Mapping::Virtual { vpe, vintid }));
        Ok(())
    }

    /// Moves the virtual LPI of `event` of `device`, with its pending state,
    /// to `vpe`: VMOVI, then INV when `inv`, then VSYNC of the new vPE.
    pub fn move_vlpi(
        &mut self,
        device: DeviceId,
        event: EventId,
        vpe: VpeId,
        inv: bool,
    ) -> Result<(), ItsError> {
        self.check_vpe(vpe)?;
        let Mapping::Virtual { vintid, .. } = self.live_mapping(device, event)? else {
            return Err(ItsError::WrongKind(device, event));
        };
        let vmovi = Command::Vmovi {
            device,
            event,
            vpe,
            doorbell: None,
        };
        self.place_vlpi(vmovi, device, event, vpe, vintid, inv)
    }

    /// Sets the configuration byte of `vintid` in the virtual LPI
    /// configuration table `table` and makes it visible to the
    /// redistributors (which read it at the next INV or VINVALL that
    /// concerns them); returns the byte it replaces.
    pub fn set_vlpi_config(
        &mut self,
        table: VlpiTable,
        vintid: u32,
        byte: u8,
    ) -> Result<u8, ItsError> {
        self.check_vintid(vintid)?;
        let config = self
            .virt()?
            .tables
            .get(&table)
            .ok_or(ItsError::UnknownVlpiTable(table))?;
        let off = (vintid - LPI_BASE) as usize;
        let (word, shift) = (off / 8, (off % 8) * 8);
        let old = config.read(word);
        config.write(word, (old & !(0xff << shift)) | (u64::from(byte) << shift));
        arch::clean_inval_dcache(config.pa().raw() + (word * 8) as u64, 8);
        arch::dsb_st();
        Ok((old >> shift) as u8)
    }

    /// INV of `event` of `device`, then SYNC or VSYNC: its redistributor
    /// re-reads the configuration of the event's LPI.
    /// Of a suspended device, nothing: resuming it invalidates each event.
    pub fn inv_event(&mut self, device: DeviceId, event: EventId) -> Result<(), ItsError> {
        let m = self.mapping(device, event)?;
        if self.is_suspended(device) {
            return Ok(());
        }
        let sync = self.sync_for(m)?;
        self.submit(&[Command::Inv { device, event }, sync])
    }

    /// VINVALL of `vpe`, then VSYNC: its redistributor re-reads the
    /// configuration of every virtual LPI.
    pub fn inv_vpe(&mut self, vpe: VpeId) -> Result<(), ItsError> {
        self.check_vpe(vpe)?;
        self.submit(&[Command::Vinvall { vpe }, Command::Vsync { vpe }])
    }

    /// Whether `vintid` is pending in the virtual pending table of `vpe`
    /// as memory holds it (the vPE must not be resident: a resident vPE's
    /// redistributor may keep its pending state to itself).
    pub fn vlpi_pending(&mut self, vpe: VpeId, vintid: u32) -> Result<bool, ItsError> {
        self.check_vintid(vintid)?;
        let (_, vpt) = self
            .virt()?
            .vpes
            .get(&vpe)
            .ok_or(ItsError::UnknownVpe(vpe))?;
        let (byte, bit) = vlpi::pending_bit(vintid);
        // The redistributor writes the table itself: drop whatever the CPU
        // cached of it first.
        arch::clean_inval_dcache(vpt.pa().raw() + (byte & !7) as u64, 8);
        let word = vpt.read(byte / 8);
        Ok((word >> ((byte % 8) * 8)) as u8 & bit != 0)
    }

    /// Writes `lpi`'s configuration byte, enabled or not, and makes it
    /// visible to the redistributors.
    fn set_config(&mut self, lpi: Lpi, enabled: bool) {
        let off = lpi.config_offset();
        let (word, shift) = (off / 8, (off % 8) * 8);
        let old = self.config.read(word);
        let byte = u64::from(lpi::config_byte(LPI_PRIORITY, enabled));
        self.config
            .write(word, (old & !(0xff << shift)) | (byte << shift));
        if self.config_flush {
            arch::clean_inval_dcache(self.config.pa().raw() + (word * 8) as u64, 8);
        }
        arch::dsb_st();
    }

    /// Writes `cmds` to the queue and waits, bounded, until the ITS has
    /// read them all.
    fn submit(&mut self, cmds: &[Command]) -> Result<(), ItsError> {
        let mut hw = QueueMmio {
            regs: &self.regs,
            mem: &self.queue_mem,
            flush: self.queue_flush,
        };
        self.queue.submit(&mut hw, cmds).map_err(ItsError::Queue)
    }
}

/// Disables the ITS if something left it enabled and waits until it is
/// quiescent (GITS_CTLR.Quiescent), as GITS_CBASER and GITS_BASER<n> may
/// only be written then (§12.19).
fn quiesce(regs: &Frame) -> Result<(), ItsError> {
    let ctlr = regs.r32(gits::CTLR);
    if ctlr & gits::CTLR_ENABLED != 0 {
        warn!("ITS: found enabled, disabling it");
        regs.w32(gits::CTLR, ctlr & !gits::CTLR_ENABLED);
    }
    for _ in 0..POLLS {
        if regs.r32(gits::CTLR) & gits::CTLR_QUIESCENT != 0 {
            return Ok(());
        }
        arch::delay_us(1);
    }
    Err(ItsError::NotQuiescent)
}

/// The smallest page size GITS_BASER<n> at `reg` keeps (Page_Size may be
/// read-only), trying 4, 16, then 64 KiB.
fn page_size(regs: &Frame, reg: u64, current: Baser) -> PageSize {
    for page_size in PageSize::ALL {
        let probe = Baser {
            valid: false,
            page_size,
            ..current
        };
        regs.w64(reg, probe.encode());
        if Baser::decode(regs.r64(reg)).page_size == page_size {
            return page_size;
        }
    }
    Baser::decode(regs.r64(reg)).page_size
}

/// Points GITS_BASER<n> at `reg` at the flat table `layout` at `pa`.
fn program_baser(
    regs: &Frame,
    reg: u64,
    current: Baser,
    layout: &FlatTable,
    pa: PhysAddr,
) -> Result<(), NotKept> {
    let value = Baser {
        valid: true,
        indirect: false,
        inner_cache: Cacheability::RaWaWb,
        outer_cache: Cacheability::DeviceOrSameAsInner,
        pa,
        shareability: Shareability::InnerShareable,
        page_size: layout.page_size,
        pages: layout.pages,
        ..current
    }
    .encode();
    // The ITS itself writes these tables; the CPU only zeroed them (and
    // cleaned them in `table_mem`), so Non-shareable needs nothing more.
    negotiate(value, BASER_ATTRS, |v| {
        regs.w64(reg, v);
        regs.r64(reg)
    })
    .map(|_| ())
}

/// Unexpected LPIs taken so far.
static UNEXPECTED_LPIS: AtomicU64 = AtomicU64::new(0);

/// Where the physical interrupt path hands every LPI it acknowledged
/// (already EOI'd: LPIs have no active state, §6.1). No LPI has an owner
/// yet, so each one is unexpected: the first is reported, the rest only
/// counted.
pub fn lpi_taken(intid: u32) {
    if UNEXPECTED_LPIS.fetch_add(1, Ordering::Relaxed) == 0 {
        warn!("unexpected LPI {intid}: nobody owns it (further unexpected LPIs are only counted)");
    }
}
