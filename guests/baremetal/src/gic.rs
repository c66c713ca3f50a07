//! The guest's GICv3: just enough to see interrupts arrive without taking
//! them (PSTATE.I stays masked): the distributor and the CPU interface
//! enabled, chosen SPIs routed to us, and pending interrupts acknowledged
//! and ended through ICC_IAR1_EL1 / ICC_EOIR1_EL1.

use crate::mmio;
use core::arch::asm;

const GICD_CTLR: u64 = 0x0;
const GICD_IGROUPR: u64 = 0x80;
const GICD_ISENABLER: u64 = 0x100;
const GICD_ICENABLER: u64 = 0x180;
const GICD_ISPENDR: u64 = 0x200;
const GICD_ICPENDR: u64 = 0x280;
const GICD_ISACTIVER: u64 = 0x300;
const GICD_IPRIORITYR: u64 = 0x400;
const GICD_ICFGR: u64 = 0xc00;
const GICD_IROUTER: u64 = 0x6000;
/// GICD_CTLR.EnableGrp1 (single Security state) and ARE.
const CTLR_GRP1_ARE: u32 = 1 << 1 | 1 << 4;
/// INTID read from ICC_IAR1_EL1 when nothing is pending.
const SPURIOUS: u64 = 1023;

fn w32(addr: u64, v: u32) {
    // SAFETY: a 32-bit register of the distributor our device tree
    // names; Device memory.
    unsafe { mmio::write32(addr, v) }
}

fn r32(addr: u64) -> u32 {
    // SAFETY: as in `w32`.
    unsafe { mmio::read32(addr) }
}

/// Enables the distributor and `intids` (group 1, routed to us), and
/// our CPU interface, leaving PSTATE.I masked: interrupts are observed
/// by acknowledging them in [`take`], never taken.
pub fn init(gicd: u64, intids: &[u32]) {
    w32(gicd + GICD_CTLR, CTLR_GRP1_ARE);
    for &i in intids {
        let word = u64::from(i / 32) * 4;
        let bit = 1 << (i % 32);
        w32(
            gicd + GICD_IGROUPR + word,
            r32(gicd + GICD_IGROUPR + word) | bit,
        );
        let prio = gicd + GICD_IPRIORITYR + u64::from(i);
        // SAFETY: GICD_IPRIORITYR is byte-accessible (IHI 0069 §12.9.22).
        unsafe { mmio::write8(prio, 0x80) };
        route(gicd, i, my_affinity());
        w32(gicd + GICD_ISENABLER + word, bit);
    }
    init_cpu_interface();
}

/// Enables this CPU's interface (system registers, priority mask open,
/// Group 1), PSTATE.I left masked.
pub fn init_cpu_interface() {
    // SAFETY: system-register setup of our own CPU interface: system
    // register access, priority mask, group 1 enabled.
    unsafe {
        asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #1",
            "msr icc_sre_el1, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr icc_pmr_el1, {t}",
            "mov {t}, #1",
            "msr icc_igrpen1_el1, {t}",
            "isb",
            t = out(reg) _,
        )
    };
}

/// Acknowledges and ends every pending interrupt; whether `intid` was
/// among them.
pub fn take(intid: u32) -> bool {
    take_any(&[intid])
}

/// Acknowledges and ends every pending interrupt; whether any of `intids`
/// was among them.
pub fn take_any(intids: &[u32]) -> bool {
    let mut seen = false;
    for _ in 0..16 {
        let iar: u64;
        // SAFETY: acknowledging an interrupt at our CPU interface.
        unsafe { asm!("mrs {}, icc_iar1_el1", "dsb sy", out(reg) iar) };
        let got = iar & 0xff_ffff;
        if got == SPURIOUS {
            break;
        }
        seen |= intids.iter().any(|&i| u64::from(i) == got);
        // SAFETY: ends the interrupt just acknowledged (EOImode 0 also
        // deactivates it).
        unsafe { asm!("msr icc_eoir1_el1, {}", "isb", in(reg) iar) };
    }
    seen
}

/// The word offset and bit of SPI `intid` in a bit-per-interrupt bank.
fn word_bit(intid: u32) -> (u64, u32) {
    (u64::from(intid / 32) * 4, 1 << (intid % 32))
}

/// Makes SPI `intid` level-sensitive (GICD_ICFGR Int_config = 0); do it
/// while the SPI is disabled, before [`init`].
pub fn set_level_sensitive(gicd: u64, intid: u32) {
    let reg = gicd + GICD_ICFGR + u64::from(intid / 16) * 4;
    w32(reg, r32(reg) & !(2 << (2 * (intid % 16))));
}

/// Enables (GICD_ISENABLER) or disables (GICD_ICENABLER) SPI `intid`.
pub fn set_enabled(gicd: u64, intid: u32, on: bool) {
    let (word, bit) = word_bit(intid);
    let bank = if on { GICD_ISENABLER } else { GICD_ICENABLER };
    w32(gicd + bank + word, bit);
}

/// Whether SPI `intid` is pending (GICD_ISPENDR).
pub fn pending(gicd: u64, intid: u32) -> bool {
    let (word, bit) = word_bit(intid);
    r32(gicd + GICD_ISPENDR + word) & bit != 0
}

/// Whether SPI `intid` is active (GICD_ISACTIVER).
pub fn active(gicd: u64, intid: u32) -> bool {
    let (word, bit) = word_bit(intid);
    r32(gicd + GICD_ISACTIVER + word) & bit != 0
}

/// Clears SPI `intid`'s pending state (GICD_ICPENDR).
pub fn clear_pending(gicd: u64, intid: u32) {
    let (word, bit) = word_bit(intid);
    w32(gicd + GICD_ICPENDR + word, bit);
}

/// Routes SPI `intid` to the PE with affinity `aff` (GICD_IROUTER<n>,
/// IRM = 0: Aff3 \[39:32\], Aff2.Aff1.Aff0 \[23:0\]).
pub fn route(gicd: u64, intid: u32, aff: u64) {
    let router = gicd + GICD_IROUTER + 8 * u64::from(intid);
    // SAFETY: a 64-bit GICD_IROUTER<n> of the distributor our device tree
    // names (Device memory, MMU off); routing an SPI touches no memory.
    unsafe { mmio::write64(router, aff & 0xff_00ff_ffff) };
}

/// Our affinity as GICD_IROUTER<n> takes it.
pub fn my_affinity() -> u64 {
    let mpidr: u64;
    // SAFETY: reading our own MPIDR_EL1 has no side effect.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr) };
    mpidr & 0xff_00ff_ffff
}

/// Acknowledges the highest-priority pending interrupt (ICC_IAR1_EL1):
/// its INTID, now active, or None when nothing is pending.
pub fn acknowledge() -> Option<u32> {
    let iar: u64;
    // SAFETY: reads ICC_IAR1_EL1 of our own CPU interface (enabled by
    // `init`): it changes interrupt state only (the INTID becomes active),
    // never memory.
    unsafe { asm!("mrs {}, icc_iar1_el1", "dsb sy", out(reg) iar) };
    let intid = (iar & 0xff_ffff) as u32;
    (u64::from(intid) != SPURIOUS).then_some(intid)
}

/// Ends interrupt `intid` (ICC_EOIR1_EL1; EOImode 0: priority drop and
/// deactivation).
pub fn end(intid: u32) {
    // SAFETY: writes ICC_EOIR1_EL1 of our own CPU interface: it changes
    // interrupt state only (priority drop, deactivation), never memory;
    // callers pass an INTID [`acknowledge`] returned.
    unsafe { asm!("msr icc_eoir1_el1, {}", "isb", in(reg) u64::from(intid)) };
}

/// GICR_TYPER (64-bit): Affinity \[63:32\], Last \[4\], VLPIS \[1\].
const GICR_TYPER: u64 = 0x8;
/// GICR_IGROUPR0, GICR_ISENABLER0 and GICR_ISPENDR0, in the SGI frame.
const GICR_IGROUPR0: u64 = 0x1_0080;
const GICR_ISENABLER0: u64 = 0x1_0100;
const GICR_ISPENDR0: u64 = 0x1_0200;

/// A redistributor: its SGIs and PPIs.
pub struct Redist(u64);

impl Redist {
    /// The calling CPU's redistributor, found from `base` (the GIC node's
    /// second `reg`) by its GICR_TYPER affinity.
    pub fn mine(base: u64) -> Option<Self> {
        let me = my_affinity();
        // Aff3.Aff2.Aff1.Aff0 as GICR_TYPER holds it.
        let want = (me >> 8 & 0xff00_0000) | (me & 0xff_ffff);
        let mut at = base;
        for _ in 0..64 {
            // SAFETY: GICR_TYPER of a redistributor frame in the region our
            // device tree names (the walk stops at the one marked Last);
            // Device memory, a 64-bit register.
            let typer = unsafe { mmio::read64(at + GICR_TYPER) };
            if typer >> 32 == want {
                return Some(Self(at));
            }
            if typer & 1 << 4 != 0 {
                return None;
            }
            // Two 64 KiB frames, four with virtual LPIs.
            at += if typer & 1 << 1 != 0 {
                0x4_0000
            } else {
                0x2_0000
            };
        }
        None
    }

    /// Makes SGI or PPI `intid` Group 1 and enables it.
    pub fn enable(&self, intid: u32) {
        let bit = 1 << (intid % 32);
        w32(self.0 + GICR_IGROUPR0, r32(self.0 + GICR_IGROUPR0) | bit);
        w32(self.0 + GICR_ISENABLER0, bit);
    }

    /// Whether SGI or PPI `intid` is pending (GICR_ISPENDR0).
    pub fn pending(&self, intid: u32) -> bool {
        r32(self.0 + GICR_ISPENDR0) & 1 << (intid % 32) != 0
    }
}

/// Sends SGI `intid` to the CPU with Aff0 `cpu` in our cluster
/// (ICC_SGI1R_EL1: INTID \[27:24\], TargetList \[15:0\]).
pub fn send_sgi(intid: u32, cpu: u32) {
    let v = u64::from(intid & 0xf) << 24 | 1 << (cpu & 0xf);
    // SAFETY: writes ICC_SGI1R_EL1 of our own CPU interface: it makes an
    // SGI pending at the target, never touches memory.
    unsafe { asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) v) };
}
