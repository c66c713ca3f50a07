//! Running a vCPU at EL1: the EL2 controls a guest runs under, entering it,
//! and the registers a trap handler reads (the syndrome) and writes (the
//! guest's EL1 exception state, its virtual timer).
//!
//! Every vCPU is pinned to its own physical CPU and never migrates, so the
//! EL1 system registers simply stay in the CPU while the hypervisor handles
//! a trap: only the general-purpose registers, ELR_EL2 and SPSR_EL2 are
//! saved (by `vectors.S`).

use super::super::TrapFrame;
use aarch64_cpu::registers::{
    Readable, Writeable, CNTHCTL_EL2, CNTVOFF_EL2, CNTV_CTL_EL0, CPTR_EL2, ELR_EL1, ESR_EL1,
    ESR_EL2, FAR_EL1, FAR_EL2, HCR_EL2, HPFAR_EL2, MDCR_EL2, MIDR_EL1, SCTLR_EL1, SPSR_EL1,
    VBAR_EL1, VMPIDR_EL2, VTCR_EL2, VTTBR_EL2,
};
use core::arch::asm;

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
/// HCR_EL2: stage 2 on (VM), physical IRQ/FIQ/SError to EL2 (IMO/FMO/AMO,
/// which also enables the virtual GIC CPU interface), SMC trapped, WFI
/// not (TWI = 0: a vCPU has its physical CPU to itself, so its WFI may
/// sleep in the guest; whatever it waits for, its timer, a kick from
/// another CPU, a device's interrupt, is a physical interrupt, which ends
/// the WFI and is taken at EL2, and an interrupt already in its list
/// registers ends it too), EL1 is AArch64 (RW), pointer authentication not
/// trapped (API/APK), set/way cleans upgraded (SWIO).
///
/// # Safety
///
/// The stage-2 tables behind `vttbr` map only memory the guest may use and
/// stay alive while the vCPU runs.
pub unsafe fn configure(c: &GuestControls) {
    VTCR_EL2.set(c.vtcr);
    VTTBR_EL2.set(c.vttbr);
    VMPIDR_EL2.set(c.vmpidr);
    let midr = MIDR_EL1.get();
    // SAFETY: VPIDR_EL2 (not modelled by aarch64-cpu) only sets what the
    // guest reads as MIDR_EL1.
    unsafe { asm!("msr vpidr_el2, {}", in(reg) midr, options(nomem, nostack)) };
    // CPTR_EL2: no FP/SVE traps (TFP=0, TZ=0), RES1 bits set; SME trapped.
    CPTR_EL2.set(0x32ff);
    // CNTHCTL_EL2: EL1 may use the physical counter and timer.
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCTEN::SET + CNTHCTL_EL2::EL1PCEN::SET);
    CNTVOFF_EL2.set(0);
    // MDCR_EL2: keep HPMN, no debug or PMU traps.
    MDCR_EL2.set(MDCR_EL2.get() & 0x1f);
    // SCTLR_EL1 architectural reset: MMU and caches off, RES1 bits.
    SCTLR_EL1.set(0x30d0_0800);
    HCR_EL2.write(
        HCR_EL2::VM::SET
            + HCR_EL2::SWIO::SET
            + HCR_EL2::FMO::SET
            + HCR_EL2::IMO::SET
            + HCR_EL2::AMO::SET
            + HCR_EL2::TSC::SET
            + HCR_EL2::RW::EL1IsAarch64
            + HCR_EL2::APK::SET
            + HCR_EL2::API::SET,
    );
    // SAFETY: invalidates this VMID's stage-1+2 TLB entries on this CPU
    // (a new vCPU must not see a previous one's translations); no memory
    // is accessed.
    unsafe { asm!("tlbi vmalls12e1", "dsb nsh", "isb", options(nostack)) };
}

unsafe extern "C" {
    fn enter_guest(src: *const TrapFrame, dst: *mut TrapFrame) -> !;
    static __stacks_start: u8;
    static __stack_size: u8;
}

/// Starts running the guest on this CPU, for good, from `frame`.
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
    let top = start + (super::cpu_index() + 1) * size;
    let dst = (top - core::mem::size_of::<TrapFrame>()) as *mut TrapFrame;
    // SAFETY: dst is the top of this CPU's own stack, which enter_guest makes
    // the trap stack; `frame` is static, so the copy does not read from the
    // region it writes.
    unsafe { enter_guest(frame, dst) }
}

/// The syndrome of the current trap (ESR_EL2).
pub fn esr() -> u64 {
    ESR_EL2.get()
}

/// FAR_EL2: the faulting virtual address of an abort.
pub fn far() -> u64 {
    FAR_EL2.get()
}

/// HPFAR_EL2: the faulting IPA of a stage-2 abort (bits [51:12] at [43:4]).
pub fn hpfar() -> u64 {
    HPFAR_EL2.get()
}

/// The guest's VBAR_EL1.
pub fn vbar() -> u64 {
    VBAR_EL1.get()
}

/// Writes the guest's EL1 exception registers, as taking an exception to
/// EL1 would: ESR_EL1, FAR_EL1, ELR_EL1 and SPSR_EL1.
pub fn set_exception_state(esr: u64, far: u64, elr: u64, spsr: u64) {
    ESR_EL1.set(esr);
    FAR_EL1.set(far);
    ELR_EL1.set(elr);
    SPSR_EL1.set(spsr);
}

/// The guest's CNTV_CTL_EL0.
pub fn vtimer_ctl() -> u64 {
    CNTV_CTL_EL0.get()
}

/// Writes the guest's CNTV_CTL_EL0.
pub fn set_vtimer_ctl(v: u64) {
    CNTV_CTL_EL0.set(v);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
