//! `cpu_features`: what the guest sees of the CPU's features. It reads its
//! ID registers and checks that the features its VM does not get read as
//! not implemented while the basic ones are there, then reads PMCR_EL0 and
//! expects the undefined-instruction exception a CPU without a PMU takes
//! (reported by the exception vector as `pmu-register-undefined`, which
//! ends the run).

use crate::checks::check;
use core::sync::atomic::{AtomicBool, Ordering};

/// Set just before the PMCR_EL0 read: the undefined-instruction exception
/// that follows is the expected one.
pub static EXPECT_UNDEF: AtomicBool = AtomicBool::new(false);

/// Field [lo+3:lo] of `v`.
fn field(v: u64, lo: u32) -> u64 {
    (v >> lo) & 0xf
}

macro_rules! mrs {
    ($name:literal) => {{
        let v: u64;
        // SAFETY: an MRS of an ID register, readable at EL1; no memory is
        // accessed.
        unsafe { core::arch::asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack)) };
        v
    }};
}

/// Runs the checks; the last one is the exception's.
pub fn features() {
    let dfr0 = mrs!("id_aa64dfr0_el1");
    let pfr0 = mrs!("id_aa64pfr0_el1");
    let pfr1 = mrs!("id_aa64pfr1_el1");
    check(
        "id-pmu-and-trace-hidden",
        field(dfr0, 8) == 0 && field(dfr0, 4) == 0 && field(dfr0, 32) == 0,
        format_args!("ID_AA64DFR0_EL1 {dfr0:#x}"),
    );
    check(
        "id-ras-amu-mte-sme-hidden",
        field(pfr0, 28) == 0 && field(pfr0, 44) == 0 && field(pfr1, 8) == 0 && field(pfr1, 24) == 0,
        format_args!("ID_AA64PFR0_EL1 {pfr0:#x}, ID_AA64PFR1_EL1 {pfr1:#x}"),
    );
    // EL1 in AArch64, FP and Advanced SIMD (0xf: not implemented), and the
    // debug architecture are there.
    check(
        "id-basic-features-shown",
        field(pfr0, 4) != 0
            && field(pfr0, 16) != 0xf
            && field(pfr0, 20) != 0xf
            && field(dfr0, 0) >= 6,
        format_args!("ID_AA64PFR0_EL1 {pfr0:#x}, ID_AA64DFR0_EL1 {dfr0:#x}"),
    );
    EXPECT_UNDEF.store(true, Ordering::Relaxed);
    let pmcr = mrs!("pmcr_el0");
    EXPECT_UNDEF.store(false, Ordering::Relaxed);
    check(
        "pmu-register-undefined",
        false,
        format_args!("PMCR_EL0 read {pmcr:#x}"),
    );
}
