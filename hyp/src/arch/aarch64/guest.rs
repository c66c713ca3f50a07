//! Running a vCPU at EL1: the EL2 controls a guest runs under, entering it,
//! and injecting synchronous exceptions into it.
//!
//! Every vCPU is pinned to its own physical CPU and never migrates, so the
//! EL1 system registers simply stay in the CPU while the hypervisor handles
//! a trap: only the general-purpose registers, ELR_EL2 and SPSR_EL2 are
//! saved (by `vectors.S`).

use super::exceptions::TrapFrame;
use aarch64_cpu::registers::{Readable, ESR_EL2};
use core::arch::asm;

/// HCR_EL2 for a guest: stage 2 on (VM), physical IRQ/FIQ/SError to EL2
/// (IMO/FMO/AMO, which also enables the virtual GIC CPU interface), SMC and
/// WFI trapped, EL1 is AArch64 (RW), pointer authentication not trapped
/// (API/APK), set/way cleans upgraded (SWIO).
pub const HCR_GUEST: u64 = (1 << 0) // VM
    | (1 << 1) // SWIO
    | (1 << 3) // FMO
    | (1 << 4) // IMO
    | (1 << 5) // AMO
    | (1 << 13) // TWI
    | (1 << 19) // TSC
    | (1 << 31) // RW
    | (1 << 40) // APK
    | (1 << 41); // API

/// SPSR for entering EL1h with DAIF masked.
pub const SPSR_EL1H: u64 = 0x3c5;

/// The EL2 controls of one vCPU.
#[derive(Clone, Copy, Debug)]
pub struct GuestControls {
    /// VTTBR_EL2: stage-2 root | VMID << 48.
    pub vttbr: u64,
    /// VTCR_EL2.
    pub vtcr: u64,
    /// The guest's MPIDR_EL1 (VMPIDR_EL2).
    pub vmpidr: u64,
}

/// Loads the controls and EL1 reset state for a vCPU on this CPU.
///
/// # Safety
///
/// The stage-2 tables behind `vttbr` map only memory the guest may use and
/// stay alive while the vCPU runs.
pub unsafe fn configure(c: &GuestControls) {
    // SAFETY: EL2 system register writes; the caller vouches for VTTBR.
    unsafe {
        asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "msr vmpidr_el2, {vmpidr}",
            "mrs {t}, midr_el1",
            "msr vpidr_el2, {t}",
            // CPTR_EL2: no FP/SVE traps (TFP=0, TZ=0), RES1 bits set; SME trapped.
            "mov {t}, #0x32ff",
            "msr cptr_el2, {t}",
            // CNTHCTL_EL2: EL1 may use the physical counter and timer.
            "mov {t}, #3",
            "msr cnthctl_el2, {t}",
            "msr cntvoff_el2, xzr",
            // MDCR_EL2: keep HPMN, no debug or PMU traps.
            "mrs {t}, mdcr_el2",
            "and {t}, {t}, #0x1f",
            "msr mdcr_el2, {t}",
            // SCTLR_EL1 architectural reset: MMU and caches off, RES1 bits.
            "ldr {t}, =0x30d00800",
            "msr sctlr_el1, {t}",
            "msr hcr_el2, {hcr}",
            "tlbi vmalls12e1",
            "dsb nsh",
            "isb",
            vtcr = in(reg) c.vtcr,
            vttbr = in(reg) c.vttbr,
            vmpidr = in(reg) c.vmpidr,
            hcr = in(reg) HCR_GUEST,
            t = out(reg) _,
            options(nostack),
        );
    }
}

unsafe extern "C" {
    fn enter_guest(src: *const TrapFrame, dst: *mut TrapFrame) -> !;
    static __stacks_start: u8;
    static __stack_size: u8;
}

/// This physical CPU's index (TPIDR_EL2, set at boot).
pub fn cpu_index() -> usize {
    let v: u64;
    // SAFETY: reading TPIDR_EL2 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el2", out(reg) v, options(nomem, nostack)) };
    v as usize
}

/// Starts running the guest at `pc` with `x0`, on this CPU, for good.
///
/// # Safety
///
/// `configure` was called on this CPU for the vCPU; `frame` lives in static
/// memory (not on this CPU's stack).
pub unsafe fn run(frame: &'static TrapFrame) -> ! {
    // SAFETY: linker symbols, only their addresses are used.
    let (start, size) = unsafe {
        (
            &__stacks_start as *const u8 as usize,
            &__stack_size as *const u8 as usize,
        )
    };
    let top = start + (cpu_index() + 1) * size;
    let dst = (top - core::mem::size_of::<TrapFrame>()) as *mut TrapFrame;
    // SAFETY: dst is the top of this CPU's own stack, which enter_guest makes
    // the trap stack; `frame` is static, so the copy does not read from the
    // region it writes.
    unsafe { enter_guest(frame, dst) }
}

/// Exception vector offsets in the guest's VBAR_EL1.
fn vector_offset(spsr: u64) -> u64 {
    match spsr & 0xf {
        0b0101 => 0x200, // EL1h: current EL with SP_ELx
        0b0100 => 0x000, // EL1t: current EL with SP_EL0
        _ => 0x400,      // EL0, AArch64: lower EL
    }
}

/// Injects a synchronous exception with syndrome `esr` and fault address
/// `far` into the guest whose state is in `frame` (as if the instruction at
/// ELR_EL2 had taken it at EL1).
pub fn inject_sync(frame: &mut TrapFrame, esr: u64, far: u64) {
    let vbar: u64;
    // SAFETY: EL1 system register accesses from EL2; they only change the
    // guest's exception state, which is what injecting means.
    unsafe {
        asm!(
            "msr esr_el1, {esr}",
            "msr far_el1, {far}",
            "msr elr_el1, {elr}",
            "msr spsr_el1, {spsr}",
            "mrs {vbar}, vbar_el1",
            esr = in(reg) esr,
            far = in(reg) far,
            elr = in(reg) frame.elr,
            spsr = in(reg) frame.spsr,
            vbar = out(reg) vbar,
            options(nostack),
        );
    }
    frame.elr = vbar + vector_offset(frame.spsr);
    frame.spsr = SPSR_EL1H;
}

/// Injects a synchronous external abort for a data access at `far`.
pub fn inject_data_abort(frame: &mut TrapFrame, far: u64) {
    let from_el0 = frame.spsr & 0xf == 0;
    let ec = if from_el0 { 0x24 } else { 0x25 };
    // IL=1, DFSC=0x10: synchronous external abort, not on a table walk.
    inject_sync(frame, (ec << 26) | (1 << 25) | 0x10, far);
}

/// Injects an undefined-instruction exception.
pub fn inject_undef(frame: &mut TrapFrame) {
    inject_sync(frame, 1 << 25, 0);
}

/// The syndrome of the current trap.
pub fn esr() -> u64 {
    ESR_EL2.get()
}

/// HPFAR_EL2: the faulting IPA of a stage-2 abort (bits [51:12] at [43:4]).
pub fn hpfar() -> u64 {
    let v: u64;
    // SAFETY: reading HPFAR_EL2 has no side effects.
    unsafe { asm!("mrs {}, hpfar_el2", out(reg) v, options(nomem, nostack)) };
    v
}

/// If the guest's EL1 virtual timer is firing (CNTV_CTL_EL0: ENABLE and
/// ISTATUS set, IMASK clear), masks it (IMASK) so its level drops until the
/// guest reprograms the timer, and returns true. False for a stale
/// interrupt: the guest already reprogrammed or masked the timer.
pub fn take_vtimer() -> bool {
    const ENABLE: u64 = 1 << 0;
    const IMASK: u64 = 1 << 1;
    const ISTATUS: u64 = 1 << 2;
    let ctl: u64;
    // SAFETY: reading the guest's timer control has no side effects.
    unsafe { asm!("mrs {}, cntv_ctl_el0", out(reg) ctl, options(nomem, nostack)) };
    if ctl & (ENABLE | IMASK | ISTATUS) != ENABLE | ISTATUS {
        return false;
    }
    // SAFETY: only sets IMASK in the guest's timer control, which the
    // guest's own handler rewrites; IMASK does not change what the guest
    // reads as ISTATUS.
    unsafe { asm!("msr cntv_ctl_el0, {}", "isb", in(reg) ctl | IMASK, options(nostack)) };
    true
}

/// Skips the trapped instruction (all trapping instructions are 4 bytes in
/// AArch64).
pub fn skip_instruction(frame: &mut TrapFrame) {
    frame.elr += 4;
}
