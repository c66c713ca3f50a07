//! The physical GICv3, for the hypervisor's own interrupts: the virtual
//! timer of each running vCPU, the list-register maintenance interrupt, the
//! console UART and a software-generated "kick" between physical CPUs.
//!
//! Guests never touch it: their distributor and redistributors are
//! emulated (`vgic`), and their CPU interface is the hardware's virtual one
//! (ICV_* registers, filled through the ICH_LR<n>_EL2 list registers).

use crate::platform::Gic;
use core::ptr::NonNull;
use log::warn;
use spin::Once;

/// SGI the hypervisor uses to make another physical CPU look at its vCPU.
pub const SGI_KICK: u32 = 8;
/// PPI of the list-register maintenance interrupt (GICv3 recommends 25).
pub const PPI_MAINTENANCE: u32 = 25;
/// PPI of the EL1 virtual timer.
pub const PPI_VTIMER: u32 = 27;
/// Interrupt IDs >= this are special (1020..1023: spurious).
pub const SPECIAL: u32 = 1020;

/// The register map as `usize` offsets for this driver's pointer maths.
mod gicd {
    use crate::gicv3::gicd as map;
    pub const CTLR: usize = map::CTLR as usize;
    pub const TYPER: usize = map::TYPER as usize;
    pub const IGROUPR: usize = map::IGROUPR as usize;
    pub const ISENABLER: usize = map::ISENABLER as usize;
    pub const ICENABLER: usize = map::ICENABLER as usize;
    pub const ISPENDR: usize = map::ISPENDR as usize;
    pub const IPRIORITYR: usize = map::IPRIORITYR as usize;
    pub const ICFGR: usize = map::ICFGR as usize;
    /// GICD_IROUTER<32>: the first SPI's.
    pub const IROUTER: usize = map::IROUTER as usize + 32 * 8;
    pub const CTLR_RWP: u32 = map::CTLR_RWP;
    /// ARE_NS | EnableGrp1NS (non-secure view).
    pub const CTLR_ARE_GRP1: u32 = map::CTLR_ARE | map::CTLR_ENABLE_GRP1;
}

mod gicr {
    use crate::gicv3::gicr as map;
    pub const TYPER: usize = map::TYPER as usize;
    pub const WAKER: usize = map::WAKER as usize;
    pub const IGROUPR0: usize = map::IGROUPR0 as usize;
    pub const ISENABLER0: usize = map::ISENABLER0 as usize;
    pub const ICENABLER0: usize = map::ICENABLER0 as usize;
    pub const IPRIORITYR: usize = map::IPRIORITYR as usize;
    pub const FRAME: usize = map::STRIDE as usize;
    pub const WAKER_PSLEEP: u32 = map::WAKER_PROCESSOR_SLEEP;
    pub const WAKER_CASLEEP: u32 = map::WAKER_CHILDREN_ASLEEP;
    pub const TYPER_LAST: u64 = map::TYPER_LAST;
}

struct Regs {
    dist: NonNull<u8>,
    redist: NonNull<u8>,
    redist_size: usize,
}

// SAFETY: MMIO addresses, only used with volatile accesses; the GIC
// serialises concurrent register accesses itself.
unsafe impl Send for Regs {}
// SAFETY: as above.
unsafe impl Sync for Regs {}

static REGS: Once<Regs> = Once::new();

fn regs() -> &'static Regs {
    REGS.get().expect("GIC used before gic::init")
}

fn r32(base: NonNull<u8>, off: usize) -> u32 {
    // SAFETY: `base` is a GIC frame mapped as a device (gic::init's contract)
    // and `off` one of its registers.
    unsafe { base.as_ptr().add(off).cast::<u32>().read_volatile() }
}

fn w32(base: NonNull<u8>, off: usize, v: u32) {
    // SAFETY: as in r32.
    unsafe { base.as_ptr().add(off).cast::<u32>().write_volatile(v) }
}

fn r64(base: NonNull<u8>, off: usize) -> u64 {
    // SAFETY: as in r32.
    unsafe { base.as_ptr().add(off).cast::<u64>().read_volatile() }
}

fn w64(base: NonNull<u8>, off: usize, v: u64) {
    // SAFETY: as in r32.
    unsafe { base.as_ptr().add(off).cast::<u64>().write_volatile(v) }
}

fn wait_rwp(dist: NonNull<u8>) {
    for _ in 0..1_000_000 {
        if r32(dist, gicd::CTLR) & gicd::CTLR_RWP == 0 {
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
    let r = REGS.call_once(|| Regs {
        dist: NonNull::new(gic.dist.base as *mut u8).expect("GICD at 0"),
        redist: NonNull::new(redist.base as *mut u8).expect("GICR at 0"),
        redist_size: redist.size as usize,
    });
    w32(r.dist, gicd::CTLR, 0);
    wait_rwp(r.dist);
    let lines = ((r32(r.dist, gicd::TYPER) & 0x1f) + 1) * 32;
    for n in (32..lines).step_by(32) {
        let i = (n / 32) as usize * 4;
        w32(r.dist, gicd::ICENABLER + i, !0);
        w32(r.dist, gicd::IGROUPR + i, !0);
    }
    for n in (32..lines).step_by(4) {
        w32(r.dist, gicd::IPRIORITYR + n as usize, 0xa0a0_a0a0);
    }
    wait_rwp(r.dist);
    w32(r.dist, gicd::CTLR, gicd::CTLR_ARE_GRP1);
    wait_rwp(r.dist);
}

/// The redistributor frame of the CPU with affinity `mpidr`.
fn my_redist(mpidr: u64) -> Option<NonNull<u8>> {
    let r = regs();
    let aff = ((mpidr >> 32 & 0xff) << 24) | (mpidr & 0xff_ffff);
    let mut off = 0;
    while off + gicr::FRAME <= r.redist_size {
        // SAFETY: inside the redistributor region from the DTB.
        let frame = unsafe { NonNull::new_unchecked(r.redist.as_ptr().add(off)) };
        let typer = r64(frame, gicr::TYPER);
        if typer >> 32 == aff {
            return Some(frame);
        }
        if typer & gicr::TYPER_LAST != 0 {
            break;
        }
        off += gicr::FRAME;
    }
    None
}

/// Sets up this CPU's redistributor and CPU interface: wakes it, enables
/// the kick SGI, the maintenance PPI and the virtual timer PPI, priority
/// mask open, EOImode=1 (priority drop and deactivation separate, so a
/// virtual interrupt with HW=1 deactivates the physical one).
pub fn init_cpu(mpidr: u64) {
    let Some(rd) = my_redist(mpidr) else {
        warn!("GIC: no redistributor for MPIDR {mpidr:#x}");
        return;
    };
    let w = r32(rd, gicr::WAKER);
    w32(rd, gicr::WAKER, w & !gicr::WAKER_PSLEEP);
    for _ in 0..1_000_000 {
        if r32(rd, gicr::WAKER) & gicr::WAKER_CASLEEP == 0 {
            break;
        }
        core::hint::spin_loop();
    }
    w32(rd, gicr::ICENABLER0, !0);
    w32(rd, gicr::IGROUPR0, !0);
    for n in (0..32).step_by(4) {
        w32(rd, gicr::IPRIORITYR + n, 0x8080_8080);
    }
    w32(
        rd,
        gicr::ISENABLER0,
        (1 << SGI_KICK) | (1 << PPI_MAINTENANCE) | (1 << PPI_VTIMER),
    );
    crate::arch::gicv3::init_cpu_interface();
}

/// Routes SPI `intid` to the CPU with affinity `mpidr`, level or edge, and
/// enables it.
pub fn enable_spi(intid: u32, mpidr: u64, edge: bool) {
    let r = regs();
    let n = intid as usize;
    let cfg_off = gicd::ICFGR + n / 16 * 4;
    let shift = (n % 16) * 2;
    let cfg = r32(r.dist, cfg_off) & !(3 << shift);
    w32(r.dist, cfg_off, cfg | (u32::from(edge) << (shift + 1)));
    let aff = ((mpidr >> 32 & 0xff) << 32) | (mpidr & 0xff_ffff);
    w64(r.dist, gicd::IROUTER + (n - 32) * 8, aff);
    w32(r.dist, gicd::ISENABLER + n / 32 * 4, 1 << (n % 32));
    wait_rwp(r.dist);
}

/// Enables or disables SPI `intid` at the distributor (routing unchanged).
pub fn set_spi_enabled(intid: u32, on: bool) {
    let r = regs();
    let n = intid as usize;
    let reg = if on { gicd::ISENABLER } else { gicd::ICENABLER };
    w32(r.dist, reg + n / 32 * 4, 1 << (n % 32));
    if !on {
        wait_rwp(r.dist);
    }
}

/// Whether SPI `intid` is pending at the distributor (GICD_ISPENDR): for a
/// level-sensitive SPI, whether its line is asserted, also while it is
/// disabled (IHI 0069 §4.1.2).
pub fn spi_pending(intid: u32) -> bool {
    let n = intid as usize;
    r32(regs().dist, gicd::ISPENDR + n / 32 * 4) & (1 << (n % 32)) != 0
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
