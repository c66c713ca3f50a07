//! The virtual GICv3 ITS of one VM: the register frame, the command queue
//! and the interrupt translations (IHI 0069 chapter 5.3 "The ITS", §6 "ITS
//! commands", §8.19 "ITS register descriptions").
//!
//! What the guest sees: an ITS with physical LPIs only (GITS_TYPER.Virtual =
//! 0), targets named by processor number (PTA = 0), one collection held in
//! the ITS per vCPU (HCC = vCPUs, no collection table), a flat device table
//! (GITS_BASER0, 8-byte entries), 8-byte ITT entries and
//! [`EVENT_ID_BITS`] EventID bits. No SEIs: a command that is wrong is
//! ignored and counted, as the architecture allows when
//! GITS_TYPER.SEIS = 0 (§6.3); a command that cannot be read (the queue is
//! not in the VM's RAM) stalls the queue (GITS_CREADR.Stalled) until
//! GITS_CWRITER.Retry.
//!
//! Where the translations live: in this model, not in the guest's tables.
//! The architecture leaves the device table, collection table and ITT
//! formats IMPLEMENTATION DEFINED and lets an ITS cache them (§5.3.1), so
//! holding them here is an ITS that caches everything; the guest's memory
//! for them is checked to be in its RAM (a table outside it gets the
//! command error) and otherwise not used, so a guest cannot change a
//! translation behind the hypervisor's back.
//!
//! Isolation: the guest can map only the DeviceIDs of its own functions
//! ([`ItsConfig`]), each with at most the events the hypervisor granted it;
//! a mapped event is handed to the [`PhysicalIts`] so the device's real MSI
//! reaches the hypervisor, which delivers it with [`VIts::deliver`]. LPIs
//! exist in the vGIC only while an event maps them ([`VGic::map_lpi`]).
//!
//! Where the physical GIC delivers the MSIs to the vCPUs itself (GICv4,
//! [`PhysicalIts::direct`]), the translations, checks and bounds are the
//! same; the physical side then also hears the LPI each event raises and
//! its configuration (MAPTI, MOVI, INV, INVALL: [`PhysicalIts::configure`])
//! and carries out INT and CLEAR ([`PhysicalIts::set_pending`]), since the
//! pending state is the hardware's, and [`VIts::deliver`] is not used.
//!
//! Bounded work: at most [`COMMANDS_PER_ACCESS`] commands run per register
//! access; the rest run at the next access (Linux polls GITS_CREADR for
//! completion). A command's own work is bounded by the events granted to
//! the VM.

// What only the host tests and the fuzz target look at (translations,
// counters, command encoding, reset) is unused by the EL2 build.
#![cfg_attr(target_os = "none", allow(dead_code))]

pub mod cmd;
#[cfg(not(target_os = "none"))]
pub mod fake;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use smmu::addr::Ipa;
use smmu::vsmmu::GuestMemory;

pub use crate::vdev::vgic::lpi::LpiConfig;
use crate::vdev::vgic::lpi::FIRST_LPI;
use crate::vdev::vgic::{Effects, VGic};
use cmd::{Command, CMD_SIZE};

/// The ITS frames: ITS_base (control) then the translation frame.
pub const FRAME_SIZE: u64 = 2 * reg::FRAME_SIZE;
/// GITS_TRANSLATER's offset from ITS_base: a device's MSI writes its
/// EventID here.
pub const TRANSLATER: u64 = reg::TRANSLATER;
/// EventID bits the vITS supports (2048 events: the largest MSI-X table).
pub const EVENT_ID_BITS: u8 = 11;
/// Bytes of an ITT entry as GITS_TYPER.ITT_entry_size reports it.
pub const ITT_ENTRY_SIZE: u64 = 8;
/// Bytes of a device table entry as GITS_BASER0.Entry_Size reports it.
pub const DEVICE_ENTRY_SIZE: u64 = 8;
/// Commands run per register access at most.
pub const COMMANDS_PER_ACCESS: usize = 64;
/// Command errors one access reports at most (the rest are only counted).
pub const ERRORS_PER_ACCESS: usize = 4;

/// The GITS register map and GITS_CTLR's fields, shared with the
/// physical driver (BASER1-7 are unimplemented here: RAZ/WI).
use crate::gicv3::its::{self as reg, CTLR_ENABLED, CTLR_QUIESCENT};

/// GITS_CBASER kept fields: Valid \[63\], InnerCache \[61:59\], OuterCache
/// \[55:53\], Physical_Address \[51:12\], Shareability \[11:10\], Size \[7:0\].
const CBASER_MASK: u64 =
    (1 << 63) | (0x7 << 59) | (0x7 << 53) | (((1 << 40) - 1) << 12) | (0x3 << 10) | 0xff;
/// GITS_CWRITER / GITS_CREADR Offset \[19:5\].
const QUEUE_OFFSET_MASK: u64 = 0xf_ffe0;
/// GITS_BASER<n> writable fields: Valid \[63\], InnerCache \[61:59\],
/// OuterCache \[55:53\], Physical_Address \[47:12\], Shareability \[11:10\],
/// Page_Size \[9:8\], Size \[7:0\] (Indirect \[62\] is RAZ/WI: flat tables only).
const BASER_MASK: u64 = (1 << 63)
    | (0x7 << 59)
    | (0x7 << 53)
    | (((1 << 36) - 1) << 12)
    | (0x3 << 10)
    | (0x3 << 8)
    | 0xff;
/// GITS_BASER<n>.Type \[58:56\] = 1: Devices.
const BASER_TYPE_DEVICES: u64 = 1 << 56;
/// GITS_BASER<n>.Entry_Size \[52:48\]: bytes minus one.
const BASER_ENTRY_SIZE_SHIFT: u32 = 48;

/// A function the VM owns, as its vITS sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceGrant {
    /// The physical DeviceID (the function's requester ID through the host
    /// bridge's `msi-map`).
    pub physical: u32,
    /// Events the hypervisor sized the function's physical ITT for (its
    /// MSI-X table size or MSI vectors): EventIDs at or above are refused.
    pub events: u32,
}

/// What the hypervisor gives a VM's vITS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItsConfig {
    /// The VM's functions by virtual DeviceID (the requester ID in the
    /// guest's PCI topology through its `msi-map`).
    pub devices: BTreeMap<u32, DeviceGrant>,
}

/// The LPI an event raises, as the physical side hears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventLpi {
    /// The vCPU of the event's collection.
    pub vcpu: usize,
    /// The guest's LPI INTID.
    pub intid: u32,
    /// Its configuration as the hardware must apply it: the guest's
    /// priority and enable bit from its table, disabled while `vcpu`'s
    /// redistributor has LPIs off ([`VGic::lpi_hw_config`]).
    pub config: LpiConfig,
}

/// The hypervisor's side of a vITS: makes a device's MSIs arrive (or stop
/// arriving) for the VM. Only events the guest mapped to an LPI reach it.
pub trait PhysicalIts {
    /// Why an operation failed (the vITS counts it as a command error).
    type Error: fmt::Display;
    /// Event `event` of physical device `device` is to raise `lpi` (the
    /// physical interrupt should arrive where its vCPU runs).
    fn map_event(&mut self, device: u32, event: u32, lpi: EventLpi) -> Result<(), Self::Error>;
    /// The mapped event's vCPU or LPI changed.
    fn move_event(&mut self, device: u32, event: u32, lpi: EventLpi) -> Result<(), Self::Error>;
    /// The event is no longer mapped: its MSIs must be dropped.
    fn unmap_event(&mut self, device: u32, event: u32) -> Result<(), Self::Error>;
    /// Whether the physical GIC delivers the events' LPIs to the vCPUs
    /// itself (GICv4 direct injection) and holds their pending state: then
    /// configuration changes go to [`PhysicalIts::configure`] and INT and
    /// CLEAR to [`PhysicalIts::set_pending`]; otherwise the vGIC holds the
    /// pending state and the MSIs arrive through [`VIts::deliver`].
    fn direct(&self) -> bool {
        false
    }
    /// The LPIs `lpis` (INTID, configuration as the hardware must apply
    /// it) were configured again (INV, INVALL).
    fn configure(&mut self, lpis: &[(u32, LpiConfig)]) -> Result<(), Self::Error> {
        let _ = lpis;
        Ok(())
    }
    /// INT (`pending`) or CLEAR of a mapped event.
    fn set_pending(&mut self, device: u32, event: u32, pending: bool) -> Result<(), Self::Error> {
        let _ = (device, event, pending);
        Ok(())
    }
    /// Delivering directly: whether the VM's devices' MSIs are translated
    /// at all (GITS_CTLR.Enabled). Off, the physical side drops them,
    /// keeping every mapped event and the pending state of their LPIs; on,
    /// they raise their LPIs again. (Otherwise MSIs that arrive while the
    /// ITS is disabled are dropped by [`VIts::deliver`].)
    fn set_translating(&mut self, on: bool) -> Result<(), Self::Error> {
        let _ = on;
        Ok(())
    }
}

/// Why the vITS ignored a command (§6.3 lists the command errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// A GICv4 virtual command or a reserved command number.
    Unsupported(u8),
    /// The DeviceID is not one of the VM's functions.
    DeviceNotOwned(u32),
    /// GITS_BASER0 is not valid, or too small for the DeviceID, or not in
    /// the VM's RAM.
    DeviceTable(u32),
    /// MAPD asked for more EventID bits than GITS_TYPER.ID_bits.
    EventBits(u8),
    /// The ITT is not in the VM's RAM.
    IttOutsideRam(Ipa),
    /// The DeviceID has no MAPD.
    DeviceNotMapped(u32),
    /// The EventID is beyond the device's ITT or its grant.
    EventOutOfRange {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// The event has no MAPTI/MAPI.
    EventNotMapped {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// The INTID is not an LPI of the VM's vGIC.
    IntidOutOfRange(u32),
    /// The ICID is not one the ITS holds (one per vCPU).
    CollectionOutOfRange(u16),
    /// The collection has no MAPC.
    CollectionNotMapped(u16),
    /// The target is not a vCPU.
    TargetOutOfRange(u64),
    /// The hypervisor could not route the device's MSI.
    Physical {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// The hypervisor could not apply the configuration of the LPIs of a
    /// collection to the physical GIC.
    PhysicalConfiguration(u16),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unsupported(n) => write!(f, "command {n:#04x} not supported"),
            Self::DeviceNotOwned(d) => write!(f, "DeviceID {d:#x} is not one of this VM's devices"),
            Self::DeviceTable(d) => write!(
                f,
                "device table missing, too small or outside RAM for DeviceID {d:#x}"
            ),
            Self::EventBits(b) => write!(f, "{b} EventID bits (at most {EVENT_ID_BITS})"),
            Self::IttOutsideRam(ipa) => write!(f, "ITT at {ipa} not in RAM"),
            Self::DeviceNotMapped(d) => write!(f, "DeviceID {d:#x} not mapped"),
            Self::EventOutOfRange { device, event } => {
                write!(f, "EventID {event} beyond the ITT of DeviceID {device:#x}")
            }
            Self::EventNotMapped { device, event } => {
                write!(f, "EventID {event} of DeviceID {device:#x} not mapped")
            }
            Self::IntidOutOfRange(i) => write!(f, "INTID {i} is not an LPI of this VM"),
            Self::CollectionOutOfRange(c) => write!(f, "ICID {c} out of range"),
            Self::CollectionNotMapped(c) => write!(f, "ICID {c} not mapped"),
            Self::TargetOutOfRange(t) => write!(f, "target {t} is not a vCPU"),
            Self::Physical { device, event } => {
                write!(
                    f,
                    "EventID {event} of DeviceID {device:#x}: physical routing failed"
                )
            }
            Self::PhysicalConfiguration(icid) => {
                write!(f, "ICID {icid}: physical LPI configuration failed")
            }
        }
    }
}

/// What one register access caused.
#[derive(Debug, Default)]
pub struct ItsOutcome {
    /// vCPUs to kick.
    pub effects: Effects,
    /// Commands run.
    pub commands: usize,
    /// The first [`ERRORS_PER_ACCESS`] command errors, with the command.
    pub errors: Vec<(Command, CommandError)>,
    /// Command errors beyond those.
    pub more_errors: usize,
    /// The queue stalled on a command it could not read, at this IPA.
    pub stalled_at: Option<Ipa>,
}

/// What the vITS needs for the time of one access.
pub struct ItsEnv<'a, P: PhysicalIts> {
    /// The VM's RAM (command queue, LPI configuration table).
    pub mem: &'a dyn GuestMemory,
    /// The VM's vGIC.
    pub vgic: &'a mut VGic,
    /// The hypervisor's routing of device MSIs.
    pub phys: &'a mut P,
}

impl<P: PhysicalIts> fmt::Debug for ItsEnv<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItsEnv").finish_non_exhaustive()
    }
}

/// One interrupt translation the vITS holds (what a MAPTI or MAPI left
/// in place), as the guest named it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The guest's DeviceID.
    pub device: u32,
    /// EventID.
    pub event: u32,
    /// The LPI it maps to.
    pub intid: u32,
    /// Its collection.
    pub icid: u16,
}

/// An interrupt translation table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ite {
    intid: u32,
    icid: u16,
}

/// A mapped device.
#[derive(Clone, Debug)]
struct Device {
    grant: DeviceGrant,
    /// EventIDs below this are in the ITT (2^bits, at most the grant).
    events: u32,
    ites: BTreeMap<u32, Ite>,
}

/// Counters of a vITS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItsStats {
    /// Commands run.
    pub commands: u64,
    /// Commands ignored as erroneous.
    pub errors: u64,
    /// MSIs delivered.
    pub delivered: u64,
    /// MSIs dropped (no translation).
    pub dropped: u64,
}

/// The vITS of one VM. See the module documentation.
#[derive(Debug)]
pub struct VIts {
    config: ItsConfig,
    nr_vcpus: usize,
    enabled: bool,
    cbaser: u64,
    cwriter: u64,
    creadr: u64,
    stalled: bool,
    baser0: u64,
    devices: BTreeMap<u32, Device>,
    /// Collection targets by ICID (one collection per vCPU).
    collections: Vec<Option<u16>>,
    /// How many events map each LPI.
    lpi_refs: BTreeMap<u32, u32>,
    stats: ItsStats,
}

impl VIts {
    /// A vITS in its reset state for a VM with `nr_vcpus` vCPUs (at most
    /// 255: GITS_TYPER.HCC holds one collection per vCPU).
    pub fn new(config: ItsConfig, nr_vcpus: usize) -> Self {
        let nr_vcpus = nr_vcpus.clamp(1, 255);
        Self {
            config,
            nr_vcpus,
            enabled: false,
            cbaser: 0,
            cwriter: 0,
            creadr: 0,
            stalled: false,
            baser0: Self::baser0_ro(),
            devices: BTreeMap::new(),
            collections: alloc::vec![None; nr_vcpus],
            lpi_refs: BTreeMap::new(),
            stats: ItsStats::default(),
        }
    }

    /// Whether the guest enabled it (GITS_CTLR.Enabled).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The counters.
    pub fn stats(&self) -> ItsStats {
        self.stats
    }

    /// Number of events mapped to LPIs.
    pub fn mapped_events(&self) -> usize {
        self.devices.values().map(|d| d.ites.len()).sum()
    }

    /// Every translation held, by DeviceID then EventID (for checking the
    /// vITS against its physical side and the vGIC).
    pub fn translations(&self) -> impl Iterator<Item = Translation> + '_ {
        self.devices.iter().flat_map(|(&device, d)| {
            d.ites.iter().map(move |(&event, ite)| Translation {
                device,
                event,
                intid: ite.intid,
                icid: ite.icid,
            })
        })
    }

    /// DeviceID bits: enough for the largest DeviceID the VM owns (at
    /// least 8, as a PCI bus has 256 functions).
    fn device_bits(&self) -> u32 {
        let max = self.config.devices.keys().next_back().copied().unwrap_or(0);
        (u32::BITS - max.leading_zeros()).max(8)
    }

    /// GITS_TYPER (§8.19.24): Physical \[0\] = 1, ITT_entry_size \[7:4\],
    /// ID_bits \[12:8\], Devbits \[17:13\], SEIS = 0, PTA = 0, HCC \[31:24\] =
    /// vCPUs, CIDbits = 0 and CIL = 0 (16-bit ICIDs), Virtual = 0.
    pub fn typer(&self) -> u64 {
        1 | ((ITT_ENTRY_SIZE - 1) << 4)
            | (u64::from(EVENT_ID_BITS - 1) << 8)
            | (u64::from(self.device_bits() - 1) << 13)
            | ((self.nr_vcpus as u64) << 24)
    }

    /// The read-only fields of GITS_BASER0: Type = Devices, Entry_Size.
    const fn baser0_ro() -> u64 {
        BASER_TYPE_DEVICES | ((DEVICE_ENTRY_SIZE - 1) << BASER_ENTRY_SIZE_SHIFT)
    }

    fn ctlr(&self) -> u32 {
        if self.enabled {
            CTLR_ENABLED
        } else {
            // Disabled, with no command in flight (each runs to completion
            // within an access): quiescent.
            CTLR_QUIESCENT
        }
    }

    fn creadr(&self) -> u64 {
        self.creadr | u64::from(self.stalled)
    }

    /// A guest read of `size` bytes at `offset` in the ITS frames. Reading
    /// GITS_CREADR (or GITS_CTLR) first runs commands left from earlier
    /// accesses. Unimplemented or misaligned accesses read as zero.
    pub fn read<P: PhysicalIts>(
        &mut self,
        env: &mut ItsEnv<'_, P>,
        offset: u64,
        size: u8,
    ) -> (u64, ItsOutcome) {
        let mut out = ItsOutcome::default();
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            return (0, out);
        }
        let reg = offset & !7;
        if matches!(reg, reg::CREADR | reg::CTLR) {
            self.run(env, &mut out);
        }
        let value = match reg {
            reg::CTLR => u64::from(self.ctlr()) | (u64::from(IIDR) << 32),
            reg::TYPER => self.typer(),
            reg::CBASER => self.cbaser,
            reg::CWRITER => self.cwriter,
            reg::CREADR => self.creadr(),
            reg::BASER => self.baser0,
            _ => u64::from(id_register(offset & !3).unwrap_or(0)),
        };
        let value = match (size, offset & 7) {
            (8, _) => value,
            (4, 0) => value & 0xffff_ffff,
            _ => value >> 32,
        };
        (value, out)
    }

    /// A guest write of the low `size` bytes of `value` at `offset` in the
    /// ITS frames. Unimplemented or misaligned accesses are ignored.
    pub fn write<P: PhysicalIts>(
        &mut self,
        env: &mut ItsEnv<'_, P>,
        offset: u64,
        size: u8,
        value: u64,
    ) -> ItsOutcome {
        let mut out = ItsOutcome::default();
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            return out;
        }
        let reg = offset & !7;
        // A 32-bit write replaces its half of a 64-bit register.
        let merge = |old: u64| match (size, offset & 7) {
            (8, _) => value,
            (4, 0) => (old & !0xffff_ffff) | (value & 0xffff_ffff),
            _ => (old & 0xffff_ffff) | (value << 32),
        };
        match reg {
            reg::CTLR if offset == reg::CTLR => {
                let enabled = value as u32 & CTLR_ENABLED != 0;
                if enabled != self.enabled && env.phys.direct() {
                    // A refusal has no architected report; the physical
                    // side reports it to the machine's log.
                    let _ = env.phys.set_translating(enabled);
                }
                self.enabled = enabled;
                self.run(env, &mut out);
            }
            reg::CBASER if !self.enabled => {
                // Writing GITS_CBASER resets GITS_CREADR (§8.19.3).
                self.cbaser = merge(self.cbaser) & CBASER_MASK;
                self.creadr = 0;
                self.cwriter = 0;
                self.stalled = false;
            }
            reg::CWRITER => {
                let new = merge(self.cwriter);
                let offset = new & QUEUE_OFFSET_MASK;
                // Outside the queue is UNPREDICTABLE (§8.19.5): keep the
                // old value.
                if offset < self.queue_bytes() {
                    self.cwriter = offset;
                }
                if new & 1 != 0 {
                    self.stalled = false;
                }
                self.run(env, &mut out);
            }
            reg::BASER if !self.enabled => {
                self.baser0 = (merge(self.baser0) & BASER_MASK) | Self::baser0_ro();
            }
            _ => {}
        }
        out
    }

    fn queue_bytes(&self) -> u64 {
        ((self.cbaser & 0xff) + 1) * 4096
    }

    fn queue_base(&self) -> Ipa {
        Ipa(self.cbaser & (((1 << 40) - 1) << 12))
    }

    /// Runs up to [`COMMANDS_PER_ACCESS`] commands from GITS_CREADR towards
    /// GITS_CWRITER.
    fn run<P: PhysicalIts>(&mut self, env: &mut ItsEnv<'_, P>, out: &mut ItsOutcome) {
        if !self.enabled || self.cbaser >> 63 == 0 || self.stalled {
            return;
        }
        let size = self.queue_bytes();
        while self.creadr != self.cwriter && out.commands < COMMANDS_PER_ACCESS {
            let at = Ipa(self.queue_base().raw() + self.creadr);
            let mut raw = [0u8; CMD_SIZE as usize];
            if env.mem.read(at, &mut raw).is_err() {
                self.stalled = true;
                out.stalled_at = Some(at);
                return;
            }
            let mut dw = [0u64; 4];
            for (d, chunk) in dw.iter_mut().zip(raw.chunks_exact(8)) {
                *d = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            }
            let command = Command::decode(dw);
            out.commands += 1;
            self.stats.commands += 1;
            if let Err(e) = self.execute(env, command, &mut out.effects) {
                self.stats.errors += 1;
                if out.errors.len() < ERRORS_PER_ACCESS {
                    out.errors.push((command, e));
                } else {
                    out.more_errors += 1;
                }
            }
            self.creadr = (self.creadr + CMD_SIZE) % size;
        }
    }

    fn collection_target(&self, icid: u16) -> Result<usize, CommandError> {
        match self.collections.get(usize::from(icid)) {
            None => Err(CommandError::CollectionOutOfRange(icid)),
            Some(None) => Err(CommandError::CollectionNotMapped(icid)),
            Some(Some(t)) => Ok(usize::from(*t)),
        }
    }

    fn vcpu(&self, target: u64) -> Result<usize, CommandError> {
        usize::try_from(target)
            .ok()
            .filter(|&t| t < self.nr_vcpus)
            .ok_or(CommandError::TargetOutOfRange(target))
    }

    fn ite(&self, device: u32, event: u32) -> Result<Ite, CommandError> {
        let d = self
            .devices
            .get(&device)
            .ok_or(CommandError::DeviceNotMapped(device))?;
        d.ites
            .get(&event)
            .copied()
            .ok_or(CommandError::EventNotMapped { device, event })
    }

    /// The configuration byte of LPI `intid` from the guest's table
    /// (GICR_PROPBASER of `vcpu`); disabled when the table does not cover
    /// it or is not in RAM.
    fn read_config(mem: &dyn GuestMemory, vgic: &VGic, vcpu: usize, intid: u32) -> LpiConfig {
        let Some((base, end)) = vgic.lpi_config_table(vcpu) else {
            return LpiConfig(0);
        };
        if intid >= end {
            return LpiConfig(0);
        }
        let mut b = [0u8];
        match base.checked_add(u64::from(intid - FIRST_LPI)) {
            Some(at) if mem.read(at, &mut b).is_ok() => LpiConfig(b[0]),
            _ => LpiConfig(0),
        }
    }

    /// Whether `[at, at + len)` is in the VM's RAM.
    fn in_ram(mem: &dyn GuestMemory, at: Ipa, len: u64) -> bool {
        let mut b = [0u8];
        len > 0
            && at
                .checked_add(len - 1)
                .is_some_and(|last| mem.read(at, &mut b).is_ok() && mem.read(last, &mut b).is_ok())
    }

    /// Checks that GITS_BASER0 describes a device table in RAM that holds
    /// `device`.
    fn check_device_table(&self, mem: &dyn GuestMemory, device: u32) -> Result<(), CommandError> {
        let b = self.baser0;
        let page = match (b >> 8) & 3 {
            0 => 0x1000,
            1 => 0x4000,
            _ => 0x1_0000,
        };
        let bytes = ((b & 0xff) + 1) * page;
        let base = Ipa(b & (((1 << 36) - 1) << 12) & !(page - 1));
        let fits = u64::from(device) < bytes / DEVICE_ENTRY_SIZE;
        if b >> 63 == 0 || !fits || !Self::in_ram(mem, base, bytes) {
            return Err(CommandError::DeviceTable(device));
        }
        Ok(())
    }

    /// Configuration `config` of mapped LPI `intid` as the hardware must
    /// apply it: gated by the redistributor of the vCPU the LPI is on,
    /// which is its collection's target unless a move was refused.
    fn hw_config(vgic: &VGic, intid: u32, config: LpiConfig) -> LpiConfig {
        let vcpu = vgic.lpi_target(intid).unwrap_or_default();
        vgic.lpi_hw_config(vcpu, config)
    }

    /// What the physical side hears of mapped LPI `intid` on `vcpu`.
    fn event_lpi(vgic: &VGic, vcpu: usize, intid: u32) -> EventLpi {
        let config = vgic.lpi_config(intid).unwrap_or_default();
        EventLpi {
            vcpu,
            intid,
            config: vgic.lpi_hw_config(vcpu, config),
        }
    }

    /// Drops one event's translation everywhere.
    fn unmap_event<P: PhysicalIts>(
        env: &mut ItsEnv<'_, P>,
        lpi_refs: &mut BTreeMap<u32, u32>,
        grant: DeviceGrant,
        event: u32,
        ite: Ite,
        fx: &mut Effects,
    ) {
        // The physical side cannot refuse to forget; a failure there is
        // the physical ITS's own error to report.
        let _ = env.phys.unmap_event(grant.physical, event);
        Self::release_lpi(env.vgic, lpi_refs, ite.intid, fx);
    }

    /// Drops one reference to LPI `intid`; the last one unmaps it.
    fn release_lpi(
        vgic: &mut VGic,
        lpi_refs: &mut BTreeMap<u32, u32>,
        intid: u32,
        fx: &mut Effects,
    ) {
        match lpi_refs.get_mut(&intid) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                lpi_refs.remove(&intid);
                fx.merge(vgic.unmap_lpi(intid));
            }
        }
    }

    fn unmap_device<P: PhysicalIts>(
        &mut self,
        env: &mut ItsEnv<'_, P>,
        device: u32,
        fx: &mut Effects,
    ) {
        if let Some(d) = self.devices.remove(&device) {
            for (&event, &ite) in &d.ites {
                Self::unmap_event(env, &mut self.lpi_refs, d.grant, event, ite, fx);
            }
        }
    }

    /// Re-targets to `vcpu` the LPI of every event that `select` picks
    /// (given its translation and its LPI's current vCPU). Each event is
    /// moved physically first and its LPI follows only if that succeeded,
    /// so where the hardware delivers an event and where the vGIC holds its
    /// LPI never disagree; the first event the physical side refused is the
    /// error, after the others have moved.
    fn retarget<P: PhysicalIts>(
        &mut self,
        env: &mut ItsEnv<'_, P>,
        select: impl Fn(&Ite, usize) -> bool,
        vcpu: usize,
        fx: &mut Effects,
    ) -> Result<(), CommandError> {
        // Chosen before any moves, so that a second event raising the same
        // LPI is still chosen after the first one moved it.
        let mut chosen = Vec::new();
        for (&device, d) in &self.devices {
            for (&event, ite) in &d.ites {
                let current = env.vgic.lpi_target(ite.intid).unwrap_or(usize::MAX);
                if select(ite, current) && current != vcpu {
                    chosen.push((device, d.grant.physical, event, ite.intid));
                }
            }
        }
        let mut first_error = None;
        for (device, physical, event, intid) in chosen {
            let lpi = Self::event_lpi(env.vgic, vcpu, intid);
            if env.phys.move_event(physical, event, lpi).is_ok() {
                fx.merge(env.vgic.move_lpi(intid, vcpu));
            } else {
                first_error.get_or_insert(CommandError::Physical { device, event });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn execute<P: PhysicalIts>(
        &mut self,
        env: &mut ItsEnv<'_, P>,
        command: Command,
        fx: &mut Effects,
    ) -> Result<(), CommandError> {
        match command {
            Command::Unsupported(n) => Err(CommandError::Unsupported(n)),
            Command::Sync { target } => self.vcpu(target).map(|_| ()),
            Command::Mapd {
                device,
                valid,
                event_bits,
                itt,
            } => {
                let grant = *self
                    .config
                    .devices
                    .get(&device)
                    .ok_or(CommandError::DeviceNotOwned(device))?;
                self.check_device_table(env.mem, device)?;
                if valid {
                    if event_bits > EVENT_ID_BITS {
                        return Err(CommandError::EventBits(event_bits));
                    }
                    let itt_bytes = (1u64 << event_bits) * ITT_ENTRY_SIZE;
                    if !Self::in_ram(env.mem, itt, itt_bytes) {
                        return Err(CommandError::IttOutsideRam(itt));
                    }
                }
                // A MAPD of a mapped device replaces its ITT: its events
                // are gone either way.
                self.unmap_device(env, device, fx);
                if valid {
                    let events = (1u32 << event_bits).min(grant.events);
                    self.devices.insert(
                        device,
                        Device {
                            grant,
                            events,
                            ites: BTreeMap::new(),
                        },
                    );
                }
                Ok(())
            }
            Command::Mapc {
                icid,
                target,
                valid,
            } => {
                if usize::from(icid) >= self.collections.len() {
                    return Err(CommandError::CollectionOutOfRange(icid));
                }
                if valid {
                    let vcpu = self.vcpu(target)?;
                    self.collections[usize::from(icid)] = Some(vcpu as u16);
                    // Events already in the collection follow it.
                    self.retarget(env, |ite, _| ite.icid == icid, vcpu, fx)?;
                } else {
                    self.collections[usize::from(icid)] = None;
                }
                Ok(())
            }
            Command::Mapti {
                device,
                event,
                intid,
                icid,
            } => {
                let d = self
                    .devices
                    .get(&device)
                    .ok_or(CommandError::DeviceNotMapped(device))?;
                if event >= d.events {
                    return Err(CommandError::EventOutOfRange { device, event });
                }
                if !(FIRST_LPI..env.vgic.lpi_limit()).contains(&intid) {
                    return Err(CommandError::IntidOutOfRange(intid));
                }
                let vcpu = self.collection_target(icid)?;
                if vcpu >= env.vgic.nr_vcpus() {
                    return Err(CommandError::TargetOutOfRange(vcpu as u64));
                }
                let grant = d.grant;
                let old = d.ites.get(&event).copied();
                let config = Self::read_config(env.mem, env.vgic, vcpu, intid);
                let lpi = EventLpi {
                    vcpu,
                    intid,
                    config: env.vgic.lpi_hw_config(vcpu, config),
                };
                // The physical route first (new, or the existing one
                // moved): if it is refused, nothing has changed.
                let routed = match old {
                    None => env.phys.map_event(grant.physical, event, lpi),
                    Some(_) => env.phys.move_event(grant.physical, event, lpi),
                };
                routed.map_err(|_| CommandError::Physical { device, event })?;
                // Cannot fail: the INTID and the vCPU were checked above.
                if let Ok(e) = env.vgic.map_lpi(intid, vcpu, config) {
                    fx.merge(e);
                }
                *self.lpi_refs.entry(intid).or_insert(0) += 1;
                if let Some(o) = old {
                    Self::release_lpi(env.vgic, &mut self.lpi_refs, o.intid, fx);
                }
                if let Some(d) = self.devices.get_mut(&device) {
                    d.ites.insert(event, Ite { intid, icid });
                }
                Ok(())
            }
            Command::Int { device, event } | Command::Clear { device, event } => {
                let ite = self.ite(device, event)?;
                self.collection_target(ite.icid)?;
                let pending = matches!(command, Command::Int { .. });
                if env.phys.direct() {
                    let physical = self.devices.get(&device).map_or(0, |d| d.grant.physical);
                    return env
                        .phys
                        .set_pending(physical, event, pending)
                        .map_err(|_| CommandError::Physical { device, event });
                }
                if let Ok(e) = env.vgic.set_lpi_pending(ite.intid, pending) {
                    fx.merge(e);
                }
                Ok(())
            }
            Command::Discard { device, event } => {
                let ite = self.ite(device, event)?;
                let Some(d) = self.devices.get_mut(&device) else {
                    return Err(CommandError::DeviceNotMapped(device));
                };
                d.ites.remove(&event);
                let grant = d.grant;
                if let Ok(e) = env.vgic.set_lpi_pending(ite.intid, false) {
                    fx.merge(e);
                }
                Self::unmap_event(env, &mut self.lpi_refs, grant, event, ite, fx);
                Ok(())
            }
            Command::Movi {
                device,
                event,
                icid,
            } => {
                let old = self.ite(device, event)?;
                let vcpu = self.collection_target(icid)?;
                let Some(d) = self.devices.get_mut(&device) else {
                    return Err(CommandError::DeviceNotMapped(device));
                };
                // The physical route first: if it is refused, nothing has
                // changed, and the event still reaches the vCPU the vGIC
                // holds its LPI on.
                let lpi = Self::event_lpi(env.vgic, vcpu, old.intid);
                env.phys
                    .move_event(d.grant.physical, event, lpi)
                    .map_err(|_| CommandError::Physical { device, event })?;
                d.ites.insert(event, Ite { icid, ..old });
                fx.merge(env.vgic.move_lpi(old.intid, vcpu));
                Ok(())
            }
            Command::Inv { device, event } => {
                let ite = self.ite(device, event)?;
                let vcpu = self.collection_target(ite.icid)?;
                let config = Self::read_config(env.mem, env.vgic, vcpu, ite.intid);
                fx.merge(env.vgic.set_lpi_config(ite.intid, config));
                if env.phys.direct() {
                    let lpi = [(ite.intid, Self::hw_config(env.vgic, ite.intid, config))];
                    env.phys
                        .configure(&lpi)
                        .map_err(|_| CommandError::Physical { device, event })?;
                }
                Ok(())
            }
            Command::Invall { icid } => {
                let vcpu = self.collection_target(icid)?;
                let mut lpis = Vec::new();
                for d in self.devices.values() {
                    for ite in d.ites.values().filter(|i| i.icid == icid) {
                        let config = Self::read_config(env.mem, env.vgic, vcpu, ite.intid);
                        fx.merge(env.vgic.set_lpi_config(ite.intid, config));
                        lpis.push((ite.intid, Self::hw_config(env.vgic, ite.intid, config)));
                    }
                }
                if env.phys.direct() && !lpis.is_empty() {
                    env.phys
                        .configure(&lpis)
                        .map_err(|_| CommandError::PhysicalConfiguration(icid))?;
                }
                Ok(())
            }
            Command::Movall { from, to } => {
                let (from, to) = (self.vcpu(from)?, self.vcpu(to)?);
                self.retarget(env, |_, current| current == from, to, fx)
            }
        }
    }

    /// An MSI from physical device `physical` with EventID `event` (the
    /// hypervisor took the physical interrupt that [`PhysicalIts::map_event`]
    /// set up): makes its LPI pending. Dropped, and counted, when the event
    /// has no translation any more or its collection is unmapped, or the
    /// ITS is disabled (§5.3.2: translation fails and the write is ignored).
    pub fn deliver(&mut self, vgic: &mut VGic, physical: u32, event: u32) -> Option<Effects> {
        let found = self
            .devices
            .iter()
            .find(|(_, d)| d.grant.physical == physical)
            .and_then(|(_, d)| d.ites.get(&event))
            .copied()
            .filter(|ite| self.enabled && self.collection_target(ite.icid).is_ok());
        let fx = found.and_then(|ite| vgic.set_lpi_pending(ite.intid, true).ok());
        if fx.is_some() {
            self.stats.delivered += 1;
        } else {
            self.stats.dropped += 1;
        }
        fx
    }

    /// Forgets every translation (the VM stops): each mapped event is
    /// unmapped on the physical side and its LPI dropped.
    pub fn reset<P: PhysicalIts>(&mut self, env: &mut ItsEnv<'_, P>) -> Effects {
        let mut fx = Effects::none();
        let devices: Vec<u32> = self.devices.keys().copied().collect();
        for d in devices {
            self.unmap_device(env, d, &mut fx);
        }
        *self = Self::new(core::mem::take(&mut self.config), self.nr_vcpus);
        fx
    }
}

/// GITS_IIDR: all zero, like the vGIC's, so no Linux erratum workaround
/// keyed on it matches.
const IIDR: u32 = 0;

/// The identification registers at 0xFFD0-0xFFFC of ITS_base: GITS_PIDR2
/// ArchRev = 3 (§8.19.16); the rest as the vGIC's.
fn id_register(offset: u64) -> Option<u32> {
    crate::vdev::vgic::id_register(offset)
}

#[cfg(test)]
mod tests;
