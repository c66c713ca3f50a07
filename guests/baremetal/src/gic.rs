//! The guest's GICv3: just enough to see interrupts arrive without taking
//! them (PSTATE.I stays masked): the distributor and the CPU interface
//! enabled, chosen SPIs routed to us, and pending interrupts acknowledged
//! and ended through ICC_IAR1_EL1 / ICC_EOIR1_EL1.

use crate::mmio;
use core::arch::asm;

const GICD_CTLR: u64 = 0x0;
const GICD_IGROUPR: u64 = 0x80;
const GICD_ISENABLER: u64 = 0x100;
const GICD_IPRIORITYR: u64 = 0x400;
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
        let mpidr: u64;
        // SAFETY: reading our own MPIDR_EL1 has no side effect.
        unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr) };
        let router = gicd + GICD_IROUTER + 8 * u64::from(i);
        // SAFETY: a 64-bit GICD_IROUTER<n> of the distributor.
        unsafe { mmio::write64(router, mpidr & 0xff_00ff_ffff) };
        w32(gicd + GICD_ISENABLER + word, bit);
    }
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
    let mut seen = false;
    for _ in 0..16 {
        let iar: u64;
        // SAFETY: acknowledging an interrupt at our CPU interface.
        unsafe { asm!("mrs {}, icc_iar1_el1", "dsb sy", out(reg) iar) };
        let got = iar & 0xff_ffff;
        if got == SPURIOUS {
            break;
        }
        seen |= got == u64::from(intid);
        // SAFETY: ends the interrupt just acknowledged (EOImode 0 also
        // deactivates it).
        unsafe { asm!("msr icc_eoir1_el1, {}", "isb", in(reg) iar) };
    }
    seen
}
