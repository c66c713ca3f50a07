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
use crate::gicv3::its::cmd::{Command, DeviceId, EventId, Icid, IttRef, RdBase, COMMAND_BYTES};
use crate::gicv3::its::queue::{CommandQueue, QueueError, QueueHw, Ring};
use crate::gicv3::its::table::{self, FlatTable, Itt, TableError, ITT_ALIGN};
use crate::gicv3::its::{
    self as gits, Baser, PageSize, TableType, Typer, BASER_ATTRS, CBASER_ATTRS,
};
use crate::gicv3::lpi::{self, Lpi, LpiAllocator, LpiError};
use crate::mm::ITS_MEM;
use crate::platform::{ItsNode, Platform};
use alloc::collections::BTreeMap;
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
/// INTID bits used for LPIs at most: 57344 LPIs, a 56 KiB configuration
/// table and 8 KiB pending tables.
const MAX_LPI_ID_BITS: u32 = 16;
/// The command queue: 2048 commands, 64 KiB aligned as GITS_CBASER wants.
const QUEUE_BYTES: usize = 64 * 1024;
/// Polls of GITS_CREADR (and of GITS_CTLR.Quiescent), 1 µs apart.
const POLLS: u32 = 1_000_000;
/// The most events a device may ask for (MSI-X's largest table).
pub const MAX_EVENTS: u32 = 2048;
/// The highest DeviceID covered when the host bridge has no `msi-map`.
const DEFAULT_MAX_DEVICE_ID: u32 = 0xff;

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
struct Mapping {
    lpi: Lpi,
    cpu: usize,
}

/// A mapped device.
struct Device {
    itt: DmaRegion,
    layout: Itt,
    events: BTreeMap<EventId, Mapping>,
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
    devices: BTreeMap<DeviceId, Device>,
    /// Tables the GIC uses for good (device, collection, pending tables).
    _tables: Vec<DmaRegion>,
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

/// Brings the ITS up for the physical CPUs `cpus` (MPIDRs, index = CPU
/// index): LPI tables on their redistributors, the ITS's tables and queue,
/// one collection per CPU. Reports what it did or why not.
pub fn init(p: &Platform, cpus: &[u64]) -> Result<&'static Mutex<Its>, ItsError> {
    let node = p.gic.its.as_ref().ok_or(ItsError::Absent)?;
    let its = Its::new(p, node, cpus)?;
    info!(
        "ITS at {:#x} (GITS_IIDR {:#x}): {} DeviceID bits ({} in the device table), {} EventID bits, \
         ITT entries of {} bytes, RDbase by {}; {} of {} CPUs take LPIs {}..={}; \
         GITS_TRANSLATER at {:#x} (in the 4 KiB page at {:#x})",
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
    );
    Ok(ITS.call_once(|| Mutex::new(its)))
}

impl Its {
    fn new(p: &Platform, node: &ItsNode, cpus: &[u64]) -> Result<Self, ItsError> {
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
        let id_bits = gic::lpi_id_bits()
            .filter(|&b| b >= lpi::MIN_ID_BITS)
            .ok_or(ItsError::NoLpis)?
            .min(MAX_LPI_ID_BITS);
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
            tables.push(mem);
        }
        let device_ids = device_ids.ok_or(ItsError::NoDeviceTable)?;

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
            devices: BTreeMap::new(),
            _tables: tables,
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
        let d = self
            .devices
            .get(&device)
            .ok_or(ItsError::DeviceNotMapped(device))?;
        if event.0 >= d.layout.events {
            return Err(ItsError::EventOutOfRange(device, event));
        }
        if d.events.contains_key(&event) {
            return Err(ItsError::EventMapped(device, event));
        }
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
        if let Some(d) = self.devices.get_mut(&device) {
            d.events.insert(event, Mapping { lpi, cpu });
        }
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
        let m = self.mapping(device, event)?;
        let (from, to) = (self.target(m.cpu)?, self.target(cpu)?);
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
        if let Some(m) = self
            .devices
            .get_mut(&device)
            .and_then(|d| d.events.get_mut(&event))
        {
            m.cpu = cpu;
        }
        Ok(())
    }

    /// Unmaps `event` of `device` (DISCARD, which also drops its pending
    /// state, then SYNC) and frees its LPI.
    pub fn unmap_event(&mut self, device: DeviceId, event: EventId) -> Result<(), ItsError> {
        let m = self.mapping(device, event)?;
        let target = self.target(m.cpu)?;
        self.submit(&[Command::Discard { device, event }, Command::Sync { target }])?;
        // Disabled, so that the LPI's next user starts from a known state
        // (its MAPTI is followed by INV).
        self.set_config(m.lpi, false);
        self.lpis.free(m.lpi)?;
        if let Some(d) = self.devices.get_mut(&device) {
            d.events.remove(&event);
        }
        Ok(())
    }

    /// Unmaps `device`: each of its events as [`Self::unmap_event`], then
    /// MAPD with V = 0, then frees its ITT.
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
        self.submit(&[Command::Mapd { device, itt: None }])?;
        if let Some(d) = self.devices.remove(&device) {
            // SAFETY: the ITS executed MAPD with V = 0 for the device (its
            // queue moved past the command), so nothing refers to the ITT.
            unsafe { d.itt.free(&ITS_MEM) };
        }
        Ok(())
    }

    /// Makes the LPI of `event` of `device` pending, as the device's MSI
    /// would (INT, then SYNC): for tests of the delivery path.
    pub fn int(&mut self, device: DeviceId, event: EventId) -> Result<(), ItsError> {
        let m = self.mapping(device, event)?;
        let target = self.target(m.cpu)?;
        self.submit(&[Command::Int { device, event }, Command::Sync { target }])
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
