//! This CPU's GICv3 CPU interface (ICC_*_EL1 at EL2) and the virtual CPU
//! interface's controls and list registers (ICH_*_EL2).

use aarch64_cpu::registers::{
    Readable, Writeable, ICH_HCR_EL2, ICH_LR0_EL2, ICH_LR10_EL2, ICH_LR11_EL2, ICH_LR12_EL2,
    ICH_LR13_EL2, ICH_LR14_EL2, ICH_LR15_EL2, ICH_LR1_EL2, ICH_LR2_EL2, ICH_LR3_EL2, ICH_LR4_EL2,
    ICH_LR5_EL2, ICH_LR6_EL2, ICH_LR7_EL2, ICH_LR8_EL2, ICH_LR9_EL2, ICH_VMCR_EL2, ICH_VTR_EL2,
};
use core::arch::asm;

/// Acknowledges the highest-priority pending interrupt (ICC_IAR1_EL1);
/// returns its INTID.
pub fn ack() -> u32 {
    let v: u64;
    // SAFETY: reading IAR acknowledges an interrupt; the caller EOIs it.
    unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) v, options(nostack)) };
    v as u32 & 0xff_ffff
}

/// Drops the running priority for `intid` (ICC_EOIR1_EL1).
pub fn eoi(intid: u32) {
    // SAFETY: EOI of an interrupt this CPU acknowledged.
    unsafe { asm!("msr icc_eoir1_el1, {}", "isb", in(reg) u64::from(intid), options(nostack)) };
}

/// Deactivates `intid` (ICC_DIR_EL1).
pub fn deactivate(intid: u32) {
    // SAFETY: deactivation of an interrupt this CPU acknowledged.
    unsafe { asm!("msr icc_dir_el1, {}", "isb", in(reg) u64::from(intid), options(nostack)) };
}

/// Writes ICC_SGI1R_EL1 (the value encodes the SGI and its targets).
pub fn write_sgi1r(v: u64) {
    // SAFETY: generating an SGI has no memory effects.
    unsafe { asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) v, options(nostack)) };
}

/// Sets this CPU's interface up for the hypervisor: system-register access
/// (also for EL1), all priorities unmasked, EOImode 1 (priority drop and
/// deactivation separate), group 1 enabled.
pub fn init_cpu_interface() {
    // SAFETY: GIC CPU interface system registers of this CPU at EL2; they
    // only change how this CPU takes interrupts.
    unsafe {
        asm!(
            // ICC_SRE_EL2: SRE | Enable (EL1 may use the system registers).
            "mrs {t}, icc_sre_el2",
            "orr {t}, {t}, #0x1",
            "orr {t}, {t}, #0x8",
            "msr icc_sre_el2, {t}",
            "isb",
            "mov {t}, #0xff",
            "msr icc_pmr_el1, {t}",
            "msr icc_bpr1_el1, xzr",
            // ICC_CTLR_EL1.EOImode = 1.
            "mrs {t}, icc_ctlr_el1",
            "orr {t}, {t}, #0x2",
            "msr icc_ctlr_el1, {t}",
            "mov {t}, #1",
            "msr icc_igrpen1_el1, {t}",
            "isb",
            t = out(reg) _,
            options(nostack),
        );
    }
}

/// Implemented list registers (ICH_VTR_EL2.ListRegs + 1).
pub fn nr_lrs() -> usize {
    (ICH_VTR_EL2.get() & 0x1f) as usize + 1
}

/// Reads ICH_LR<i>_EL2 (0 for `i` >= 16).
pub fn read_lr(i: usize) -> u64 {
    match i {
        0 => ICH_LR0_EL2.get(),
        1 => ICH_LR1_EL2.get(),
        2 => ICH_LR2_EL2.get(),
        3 => ICH_LR3_EL2.get(),
        4 => ICH_LR4_EL2.get(),
        5 => ICH_LR5_EL2.get(),
        6 => ICH_LR6_EL2.get(),
        7 => ICH_LR7_EL2.get(),
        8 => ICH_LR8_EL2.get(),
        9 => ICH_LR9_EL2.get(),
        10 => ICH_LR10_EL2.get(),
        11 => ICH_LR11_EL2.get(),
        12 => ICH_LR12_EL2.get(),
        13 => ICH_LR13_EL2.get(),
        14 => ICH_LR14_EL2.get(),
        15 => ICH_LR15_EL2.get(),
        _ => 0,
    }
}

/// Writes ICH_LR<i>_EL2 (ignored for `i` >= 16).
pub fn write_lr(i: usize, v: u64) {
    match i {
        0 => ICH_LR0_EL2.set(v),
        1 => ICH_LR1_EL2.set(v),
        2 => ICH_LR2_EL2.set(v),
        3 => ICH_LR3_EL2.set(v),
        4 => ICH_LR4_EL2.set(v),
        5 => ICH_LR5_EL2.set(v),
        6 => ICH_LR6_EL2.set(v),
        7 => ICH_LR7_EL2.set(v),
        8 => ICH_LR8_EL2.set(v),
        9 => ICH_LR9_EL2.set(v),
        10 => ICH_LR10_EL2.set(v),
        11 => ICH_LR11_EL2.set(v),
        12 => ICH_LR12_EL2.set(v),
        13 => ICH_LR13_EL2.set(v),
        14 => ICH_LR14_EL2.set(v),
        15 => ICH_LR15_EL2.set(v),
        _ => {}
    }
}

/// Writes ICH_HCR_EL2 (virtual CPU interface controls).
pub fn write_hcr(v: u64) {
    ICH_HCR_EL2.set(v);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// Writes ICH_VMCR_EL2 (the guest's virtual CPU interface state).
pub fn write_vmcr(v: u64) {
    ICH_VMCR_EL2.set(v);
}
