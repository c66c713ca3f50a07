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

use crate::gicv3::{gicd, gicr};

/// One register frame of the GIC: the only way its registers are
/// reached. `unsafe` once, in [`Frame::new`]; every access after it is
/// checked against the frame's size.
struct Frame {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: a frame is MMIO reached only with volatile accesses, which the
// GIC serialises itself; nothing in it is Rust memory.
unsafe impl Send for Frame {}
// SAFETY: as above.
unsafe impl Sync for Frame {}

impl Frame {
    /// The frame of `size` bytes at `base`.
    ///
    /// # Safety
    ///
    /// `[base, base + size)` is GIC register space mapped as a device at
    /// EL2 for the hypervisor's lifetime, and only the hypervisor programs
    /// it: a 32- or 64-bit access at an aligned offset inside it has no
    /// effect on memory safety.
    unsafe fn new(base: u64, size: usize) -> Self {
        Self {
            base: NonNull::new(base as *mut u8).expect("GIC frame at address 0"),
            size,
        }
    }

    /// The `size`-byte part of this frame at `offset`.
    fn part(&self, offset: u64, size: u64) -> Option<Frame> {
        let (offset, size) = (offset as usize, size as usize);
        let end = offset.checked_add(size)?;
        (end <= self.size).then(|| Frame {
            // SAFETY: inside this frame (checked), so not null.
            base: unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset)) },
            size,
        })
    }

    fn at<T>(&self, offset: u64) -> *mut T {
        let offset = offset as usize;
        let width = core::mem::size_of::<T>();
        assert!(
            offset.is_multiple_of(width) && offset + width <= self.size,
            "GIC register offset {offset:#x} outside a {:#x}-byte frame",
            self.size
        );
        // SAFETY: inside the frame (asserted), which `new` vouches for.
        unsafe { self.base.as_ptr().add(offset).cast() }
    }

    fn r32(&self, offset: u64) -> u32 {
        // SAFETY: an aligned register inside the frame (`at`), mapped as a
        // device per `Frame::new`'s contract.
        unsafe { self.at::<u32>(offset).read_volatile() }
    }

    fn w32(&self, offset: u64, v: u32) {
        // SAFETY: as in r32.
        unsafe { self.at::<u32>(offset).write_volatile(v) }
    }

    fn r64(&self, offset: u64) -> u64 {
        // SAFETY: as in r32.
        unsafe { self.at::<u64>(offset).read_volatile() }
    }

    fn w64(&self, offset: u64, v: u64) {
        // SAFETY: as in r32.
        unsafe { self.at::<u64>(offset).write_volatile(v) }
    }
}

struct Regs {
    dist: Frame,
    redist: Frame,
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

/// The redistributor frame of the CPU with affinity `mpidr`.
fn my_redist(mpidr: u64) -> Option<Frame> {
    let r = regs();
    let aff = ((mpidr >> 32 & 0xff) << 24) | (mpidr & 0xff_ffff);
    let mut off = 0;
    while let Some(frame) = r.redist.part(off, gicr::STRIDE) {
        let typer = frame.r64(gicr::TYPER);
        if typer >> 32 == aff {
            return Some(frame);
        }
        if typer & gicr::TYPER_LAST != 0 {
            break;
        }
        off += gicr::STRIDE;
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
        (1 << SGI_KICK) | (1 << PPI_MAINTENANCE) | (1 << PPI_VTIMER),
    );
    crate::arch::gicv3::init_cpu_interface();
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
    let aff = ((mpidr >> 32 & 0xff) << 32) | (mpidr & 0xff_ffff);
    r.dist.w64(gicd::IROUTER + n * 8, aff);
    let (enable, bit) = gicd::bit(gicd::ISENABLER, intid);
    r.dist.w32(enable, bit);
    wait_rwp(&r.dist);
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
