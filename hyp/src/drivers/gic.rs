//! The physical GICv3, for the hypervisor's own interrupts: the virtual
//! timer of each running vCPU, the list-register maintenance interrupt, the
//! console UART and a software-generated "kick" between physical CPUs.
//!
//! Guests never touch it: their distributor and redistributors are
//! emulated (`vgic`), and their CPU interface is the hardware's virtual one
//! (ICV_* registers, filled through the ICH_LR<n>_EL2 list registers).
//!
//! It also points each redistributor at the LPI tables the ITS driver
//! (`drivers::its`) allocates and enables its LPIs, and, on a GIC with
//! direct injection of virtual LPIs (GICv4), makes a vCPU's vPE resident on
//! its physical CPU's redistributor while the vCPU runs there.

use super::frame::Frame;
use crate::platform::Gic;
use log::warn;
use spin::Once;

/// SGI the hypervisor uses to make another physical CPU look at its vCPU.
pub const SGI_KICK: u32 = 8;
/// PPI of the list-register maintenance interrupt (GICv3 recommends 25).
pub const PPI_MAINTENANCE: u32 = 25;
/// PPI of the EL1 virtual timer.
pub const PPI_VTIMER: u32 = 27;
/// The EL1 physical timer's PPI.
pub const PPI_PTIMER: u32 = 30;

use crate::gicv3::attrs::{negotiate, NotKept};
use crate::gicv3::lpi::{PENDBASER_ATTRS, PROPBASER_ATTRS};
use crate::gicv3::vlpi::{self, VpendbaserState};
use crate::gicv3::{gicd, gicr};
use core::fmt;
use smmu::addr::PhysAddr;

struct Regs {
    dist: Frame,
    redist: Frame,
    /// Physical address of the redistributor region.
    redist_base: u64,
}

static REGS: Once<Regs> = Once::new();

fn regs() -> &'static Regs {
    REGS.get().expect("GIC used before gic::init")
}

fn wait_rwp(dist: &Frame) {
    for _ in 0..1_000_000 {
        if dist.r32(gicd::CTLR) & gicd::CTLR_RWP == 0 {
            return;
        }
        core::hint::spin_loop();
    }
    warn!("GIC: distributor write still pending after 1M polls");
}

/// Sets up the distributor (boot CPU, once): affinity routing, Group 1,
/// every SPI disabled.
///
/// # Safety
///
/// `gic` is the machine's GICv3 from the DTB, mapped as a device, and only
/// the hypervisor programs it.
pub unsafe fn init(gic: &Gic) {
    let redist = gic.redist.first().expect("GIC without redistributors");
    // SAFETY: the caller's contract: the distributor and redistributor
    // regions from the DTB, mapped as devices, programmed by us alone.
    let r = REGS.call_once(|| unsafe {
        Regs {
            dist: Frame::new(gic.dist.base, gic.dist.size as usize),
            redist: Frame::new(redist.base, redist.size as usize),
            redist_base: redist.base,
        }
    });
    r.dist.w32(gicd::CTLR, 0);
    wait_rwp(&r.dist);
    let lines = ((r.dist.r32(gicd::TYPER) & 0x1f) + 1) * 32;
    for n in (32..lines).step_by(32) {
        let i = u64::from(n / 32) * 4;
        r.dist.w32(gicd::ICENABLER + i, !0);
        r.dist.w32(gicd::IGROUPR + i, !0);
    }
    for n in (32..lines).step_by(4) {
        r.dist.w32(gicd::IPRIORITYR + u64::from(n), 0xa0a0_a0a0);
    }
    wait_rwp(&r.dist);
    r.dist
        .w32(gicd::CTLR, gicd::CTLR_ARE | gicd::CTLR_ENABLE_GRP1);
    wait_rwp(&r.dist);
}

/// The redistributor of the CPU with affinity `mpidr`: its frames (two, or
/// four with VLPI_base when it supports virtual LPIs) and its offset in the
/// region.
fn find_redist(mpidr: u64) -> Option<(Frame, u64)> {
    let r = regs();
    let aff = ((mpidr >> 32 & 0xff) << 24) | (mpidr & 0xff_ffff);
    let mut off = 0;
    while let Some(frame) = r.redist.part(off, gicr::STRIDE) {
        let typer = frame.r64(gicr::TYPER);
        let stride = gicr::stride(typer);
        if u64::from(gicr::typer_affinity(typer)) == aff {
            return r.redist.part(off, stride).map(|f| (f, off));
        }
        if typer & gicr::TYPER_LAST != 0 {
            break;
        }
        off += stride;
    }
    None
}

/// The redistributor frame of the CPU with affinity `mpidr`.
fn my_redist(mpidr: u64) -> Option<Frame> {
    find_redist(mpidr).map(|(frame, _)| frame)
}

/// Sets up this CPU's redistributor and CPU interface: wakes it, enables
/// the kick SGI, the maintenance PPI and both EL1 timer PPIs, priority
/// mask open, EOImode=1 (priority drop and deactivation separate, so a
/// virtual interrupt with HW=1 deactivates the physical one).
pub fn init_cpu(mpidr: u64) {
    let Some(rd) = my_redist(mpidr) else {
        warn!("GIC: no redistributor for MPIDR {mpidr:#x}");
        return;
    };
    let w = rd.r32(gicr::WAKER);
    rd.w32(gicr::WAKER, w & !gicr::WAKER_PROCESSOR_SLEEP);
    for _ in 0..1_000_000 {
        if rd.r32(gicr::WAKER) & gicr::WAKER_CHILDREN_ASLEEP == 0 {
            break;
        }
        core::hint::spin_loop();
    }
    rd.w32(gicr::ICENABLER0, !0);
    rd.w32(gicr::IGROUPR0, !0);
    for n in (0..32).step_by(4) {
        rd.w32(gicr::IPRIORITYR + n, 0x8080_8080);
    }
    rd.w32(
        gicr::ISENABLER0,
        (1 << SGI_KICK) | (1 << PPI_MAINTENANCE) | (1 << PPI_VTIMER) | (1 << PPI_PTIMER),
    );
    // Whatever vPE an earlier owner of the GIC left resident goes: only
    // this hypervisor's vCPUs' vPEs are resident here.
    if let Err(e) = make_non_resident(mpidr) {
        warn!("GIC: CPU {mpidr:#x}: a vPE left resident stays: {e}");
    }
    crate::arch::gicv3::init_cpu_interface();
}

/// Clears the active state of PPIs `ppis` at the redistributor of the CPU
/// with affinity `mpidr` (GICR_ICACTIVER0: well defined whether or not
/// they are active).
pub fn deactivate_ppis(mpidr: u64, ppis: impl Iterator<Item = u32>) {
    if let Some(rd) = my_redist(mpidr) {
        let mask = ppis.filter(|&p| p < 32).fold(0u32, |m, p| m | 1 << p);
        rd.w32(gicr::ICACTIVER0, mask);
    }
}

/// Routes SPI `intid` to the CPU with affinity `mpidr`, level or edge, and
/// enables it.
pub fn enable_spi(intid: u32, mpidr: u64, edge: bool) {
    let r = regs();
    let n = u64::from(intid);
    let cfg_off = gicd::ICFGR + n / 16 * 4;
    let shift = (n % 16) * 2;
    let cfg = r.dist.r32(cfg_off) & !(3 << shift);
    r.dist.w32(cfg_off, cfg | (u32::from(edge) << (shift + 1)));
    route_spi(intid, mpidr);
    let (enable, bit) = gicd::bit(gicd::ISENABLER, intid);
    r.dist.w32(enable, bit);
    wait_rwp(&r.dist);
}

/// Routes SPI `intid` to the CPU with affinity `mpidr` (GICD_IROUTER, IHI
/// 0069 §12.9.22): its next activation goes there; one pending meanwhile
/// may still reach the previous CPU.
pub fn route_spi(intid: u32, mpidr: u64) {
    let aff = ((mpidr >> 32 & 0xff) << 32) | (mpidr & 0xff_ffff);
    regs().dist.w64(gicd::IROUTER + u64::from(intid) * 8, aff);
}

/// Enables or disables SPI `intid` at the distributor (routing unchanged).
pub fn set_spi_enabled(intid: u32, on: bool) {
    let r = regs();
    let bank = if on { gicd::ISENABLER } else { gicd::ICENABLER };
    let (reg, bit) = gicd::bit(bank, intid);
    r.dist.w32(reg, bit);
    if !on {
        wait_rwp(&r.dist);
    }
}

/// Whether SPI `intid` is pending at the distributor (GICD_ISPENDR): for a
/// level-sensitive SPI, whether its line is asserted, also while it is
/// disabled (IHI 0069 §4.1.2).
pub fn spi_pending(intid: u32) -> bool {
    let (reg, bit) = gicd::bit(gicd::ISPENDR, intid);
    regs().dist.r32(reg) & bit != 0
}

/// Sends SGI `sgi` to the CPU with affinity `mpidr`.
pub fn send_sgi(mpidr: u64, sgi: u32) {
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    let aff0 = mpidr & 0xf;
    let v = (aff3 << 48) | (aff2 << 32) | (u64::from(sgi) << 24) | (aff1 << 16) | (1 << aff0);
    crate::arch::gicv3::write_sgi1r(v);
}

/// How an ITS names one CPU's redistributor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redistributor {
    /// Physical address of its RD_base frame (MAPC/SYNC RDbase with
    /// GITS_TYPER.PTA = 1).
    pub rd_base: PhysAddr,
    /// GICR_TYPER.Processor_Number (RDbase with PTA = 0).
    pub processor_number: u16,
}

/// The redistributor of the CPU with affinity `mpidr`, if the GIC has one.
pub fn redistributor(mpidr: u64) -> Option<Redistributor> {
    let (frame, off) = find_redist(mpidr)?;
    let typer = frame.r64(gicr::TYPER);
    Some(Redistributor {
        rd_base: PhysAddr(regs().redist_base + off),
        processor_number: gicr::typer_processor_number(typer),
    })
}

/// INTID bits the distributor supports when it supports LPIs
/// (GICD_TYPER.LPIS and IDbits, IHI 0069 §12.9), None without LPIs.
pub fn lpi_id_bits() -> Option<u32> {
    let typer = regs().dist.r32(gicd::TYPER);
    (typer & gicd::TYPER_LPIS != 0).then(|| gicd::typer_id_bits(typer))
}

/// Why a redistributor's LPIs could not be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LpiSetupError {
    /// The GIC has no redistributor for the CPU.
    NoRedistributor,
    /// GICR_TYPER.PLPIS = 0.
    NoPhysicalLpis,
    /// GICR_CTLR.EnableLPIs was already set (by firmware or an earlier
    /// kernel): its tables cannot be replaced (§12.11, GICR_PROPBASER).
    AlreadyEnabled,
    /// GICR_PROPBASER or GICR_PENDBASER did not keep its value.
    NotKept(&'static str, NotKept),
}

impl fmt::Display for LpiSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRedistributor => f.write_str("no redistributor"),
            Self::NoPhysicalLpis => f.write_str("GICR_TYPER.PLPIS = 0"),
            Self::AlreadyEnabled => f.write_str("GICR_CTLR.EnableLPIs already set"),
            Self::NotKept(reg, n) => {
                write!(f, "{reg} written {:#x}, reads {:#x}", n.wrote, n.read)
            }
        }
    }
}

/// Points the redistributor of the CPU with affinity `mpidr` at the LPI
/// configuration table `propbaser` and pending table `pendbaser` (register
/// values from `gicv3::lpi`, which may come back with other memory
/// attributes, see `gicv3::attrs`), then sets GICR_CTLR.EnableLPIs
/// (IHI 0069 §6.1, §12.11). The tables must be zeroed and cleaned to the
/// point of coherency before the call: the CPU never writes the pending
/// table again. Returns whether the configuration table is Non-shareable
/// for this redistributor, so that every later write to it must be cleaned
/// to the point of coherency too.
pub fn enable_lpis(mpidr: u64, propbaser: u64, pendbaser: u64) -> Result<bool, LpiSetupError> {
    let rd = my_redist(mpidr).ok_or(LpiSetupError::NoRedistributor)?;
    if rd.r64(gicr::TYPER) & gicr::TYPER_PLPIS == 0 {
        return Err(LpiSetupError::NoPhysicalLpis);
    }
    if rd.r32(gicr::CTLR) & gicr::CTLR_ENABLE_LPIS != 0 {
        return Err(LpiSetupError::AlreadyEnabled);
    }
    let rd = &rd;
    let write_read = |reg: u64| {
        move |v: u64| {
            rd.w64(reg, v);
            rd.r64(reg)
        }
    };
    let prop = negotiate(propbaser, PROPBASER_ATTRS, write_read(gicr::PROPBASER))
        .map_err(|n| LpiSetupError::NotKept("GICR_PROPBASER", n))?;
    negotiate(pendbaser, PENDBASER_ATTRS, write_read(gicr::PENDBASER))
        .map_err(|n| LpiSetupError::NotKept("GICR_PENDBASER", n))?;
    crate::arch::dsb_st();
    let ctlr = rd.r32(gicr::CTLR);
    rd.w32(gicr::CTLR, ctlr | gicr::CTLR_ENABLE_LPIS);
    Ok(prop.flush)
}

/// Whether the redistributor of the CPU with affinity `mpidr` supports
/// direct injection of virtual LPIs (GICR_TYPER.VLPIS).
pub fn virtual_lpis(mpidr: u64) -> bool {
    my_redist(mpidr).is_some_and(|rd| rd.r64(gicr::TYPER) & gicr::TYPER_VLPIS != 0)
}

/// Polls of GICR_VPENDBASER.Dirty, 1 µs apart.
const DIRTY_POLLS: u32 = 1_000_000;

/// Why a vPE could not be made resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResidencyError {
    /// The GIC has no redistributor for the CPU.
    NoRedistributor,
    /// GICR_TYPER.VLPIS = 0.
    NoVirtualLpis,
    /// Another vPE is resident there.
    Occupied(PhysAddr),
    /// GICR_VPROPBASER or GICR_VPENDBASER did not keep its value.
    NotKept(&'static str, NotKept),
    /// GICR_VPENDBASER.Dirty stayed set.
    Dirty,
}

impl fmt::Display for ResidencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRedistributor => f.write_str("no redistributor"),
            Self::NoVirtualLpis => f.write_str("GICR_TYPER.VLPIS = 0"),
            Self::Occupied(pa) => write!(f, "the vPE with pending table {pa} is resident"),
            Self::NotKept(reg, n) => {
                write!(f, "{reg} written {:#x}, reads {:#x}", n.wrote, n.read)
            }
            Self::Dirty => f.write_str("GICR_VPENDBASER.Dirty stays set"),
        }
    }
}

/// Waits, bounded, until the redistributor has finished with the virtual
/// pending table after a change of GICR_VPENDBASER.Valid; returns the
/// register's last value.
fn vpend_settled(rd: &Frame) -> Result<u64, ResidencyError> {
    for _ in 0..DIRTY_POLLS {
        let v = rd.r64(gicr::VPENDBASER);
        if !VpendbaserState::decode(v).dirty {
            return Ok(v);
        }
        crate::arch::delay_us(1);
    }
    Err(ResidencyError::Dirty)
}

/// Makes a vPE resident on the redistributor of the CPU with affinity
/// `mpidr`: its VM's virtual LPI configuration table (`vpropbaser`) and its
/// virtual pending table (`vpendbaser`, from `gicv3::vlpi`, not Valid),
/// then Valid (IHI 0069, GICR_VPENDBASER). From then on the redistributor
/// presents the vPE's pending enabled virtual LPIs to this CPU's virtual
/// CPU interface, with no hypervisor in the way. Both registers may come
/// back with other memory attributes (`gicv3::attrs`); the tables are
/// cleaned after every CPU write anyway. Waits, bounded, until the
/// redistributor has read the tables (Dirty clear).
pub fn make_resident(mpidr: u64, vpropbaser: u64, vpendbaser: u64) -> Result<(), ResidencyError> {
    let rd = my_redist(mpidr).ok_or(ResidencyError::NoRedistributor)?;
    if rd.r64(gicr::TYPER) & gicr::TYPER_VLPIS == 0 {
        return Err(ResidencyError::NoVirtualLpis);
    }
    let now = VpendbaserState::decode(rd.r64(gicr::VPENDBASER));
    if now.valid {
        return Err(ResidencyError::Occupied(now.pa));
    }
    let rd = &rd;
    let write_read = |reg: u64| {
        move |v: u64| {
            rd.w64(reg, v);
            rd.r64(reg)
        }
    };
    negotiate(
        vpropbaser,
        vlpi::VPROPBASER_ATTRS,
        write_read(gicr::VPROPBASER),
    )
    .map_err(|n| ResidencyError::NotKept("GICR_VPROPBASER", n))?;
    let kept = negotiate(
        vpendbaser,
        vlpi::VPENDBASER_ATTRS,
        write_read(gicr::VPENDBASER),
    )
    .map_err(|n| ResidencyError::NotKept("GICR_VPENDBASER", n))?;
    crate::arch::dsb_st();
    rd.w64(gicr::VPENDBASER, vlpi::resident(kept.value));
    vpend_settled(rd).map(|_| ())
}

/// The virtual pending table the redistributor of the CPU with affinity
/// `mpidr` uses now: its resident vPE's, or one it is still writing back
/// after Valid was cleared (Dirty); None when none.
pub fn vpe_table_in_use(mpidr: u64) -> Result<Option<PhysAddr>, ResidencyError> {
    let rd = my_redist(mpidr).ok_or(ResidencyError::NoRedistributor)?;
    if rd.r64(gicr::TYPER) & gicr::TYPER_VLPIS == 0 {
        return Ok(None);
    }
    let v = VpendbaserState::decode(rd.r64(gicr::VPENDBASER));
    Ok((v.valid || v.dirty).then_some(v.pa))
}

/// Makes the vPE resident on the redistributor of the CPU with affinity
/// `mpidr` non-resident (Valid cleared, then Dirty waited for): its pending
/// virtual LPIs stay in its virtual pending table and are no longer
/// presented. Nothing to do when none is resident. Returns whether it had
/// an enabled virtual LPI pending (PendingLast).
pub fn make_non_resident(mpidr: u64) -> Result<bool, ResidencyError> {
    let rd = my_redist(mpidr).ok_or(ResidencyError::NoRedistributor)?;
    if rd.r64(gicr::TYPER) & gicr::TYPER_VLPIS == 0 {
        return Ok(false);
    }
    let now = rd.r64(gicr::VPENDBASER);
    if !VpendbaserState::decode(now).valid {
        return Ok(false);
    }
    rd.w64(gicr::VPENDBASER, vlpi::non_resident(now));
    vpend_settled(&rd).map(|v| VpendbaserState::decode(v).pending_last)
}
