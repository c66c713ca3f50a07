//! Running a vCPU at EL1: the EL2 controls a guest runs under, entering it,
//! and the registers a trap handler reads (the syndrome) and writes (the
//! guest's EL1 exception state, its virtual timer).
//!
//! Every vCPU is pinned to its own physical CPU and never migrates, so the
//! EL1 system registers simply stay in the CPU while the hypervisor handles
//! a trap: only the general-purpose registers, ELR_EL2 and SPSR_EL2 are
//! saved (by `vectors.S`).

use super::super::TrapFrame;
use crate::vdev::idregs;
use aarch64_cpu::registers::{
    ReadWriteable, Readable, Writeable, CNTHCTL_EL2, CNTP_CTL_EL0, CNTVOFF_EL2, CNTV_CTL_EL0,
    CPTR_EL2, ELR_EL1, ESR_EL1, ESR_EL2, FAR_EL1, FAR_EL2, HCR_EL2, HPFAR_EL2, MDCR_EL2, MIDR_EL1,
    SCTLR_EL1, SPSR_EL1, VBAR_EL1, VMPIDR_EL2, VTCR_EL2, VTTBR_EL2,
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
/// which also enables the virtual GIC CPU interface), the ID registers
/// trapped (TID3: the guest reads them through `vdev::idregs`), SMC
/// trapped, WFI
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
    // What the CPU has decides which trap bits exist (`vdev::idregs`).
    let (pfr0, dfr0) = (id_register(4, 0), id_register(5, 0));
    // CPTR_EL2: no FP/SVE traps (TFP=0, TZ=0), RES1 bits set; SME trapped
    // (TSM); trace registers trapped (TTA, bit 20); activity monitors
    // trapped (TAM, bit 30, with FEAT_AMUv1).
    let tam = if idregs::present::amu(pfr0) {
        1 << 30
    } else {
        0
    };
    CPTR_EL2.set(0x32ff | 1 << 20 | tam);
    // CNTHCTL_EL2: EL1 may use the physical counter and timer.
    CNTHCTL_EL2.write(CNTHCTL_EL2::EL1PCTEN::SET + CNTHCTL_EL2::EL1PCEN::SET);
    CNTVOFF_EL2.set(0);
    // Both EL1 timers off, as a warm reset leaves them (ENABLE resets to
    // 0): nothing of an earlier vCPU on this CPU fires into this one.
    timers_off();
    // MDCR_EL2: keep HPMN; the PMU's registers trapped (TPM, TPMCR: the
    // guest sees no PMU, so none can count EL2); SPE's trapped (TPMS, bit
    // 14, with FEAT_SPE; E2PB = 0 traps its buffer's); TRBE's trapped
    // (E2TB = 0); no debug traps.
    let mut mdcr = MDCR_EL2.get() & 0x1f;
    if idregs::present::pmuv3(dfr0) {
        mdcr |= 1 << 6 | 1 << 5;
    }
    if idregs::present::spe(dfr0) {
        mdcr |= 1 << 14;
    }
    MDCR_EL2.set(mdcr);
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
            + HCR_EL2::API::SET
            + HCR_EL2::TID3::SET,
    );
    if idregs::present::ras(pfr0) {
        // RAS error records trapped (TERR, with FEAT_RAS); ATA stays 0:
        // no allocation-tag access (MTE).
        HCR_EL2.modify(HCR_EL2::TERR::SET);
    }
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

/// Reads ID register S3_0_C0_C`$crm`_`$op2`.
macro_rules! read_id {
    ($crm:tt, $op2:tt) => {{
        let v: u64;
        // SAFETY: a read of an ID register (Op0 3, Op1 0, CRn 0, CRm 1..7):
        // allocated ones are read-only, unallocated ones in this space read
        // as zero at EL2 (Arm ARM D23.2); no memory is accessed.
        unsafe {
            asm!(
                concat!("mrs {}, s3_0_c0_c", $crm, "_", $op2),
                out(reg) v,
                options(nomem, nostack)
            )
        };
        v
    }};
}

/// The CPU's ID register S3_0_C0_C`crm`_`op2` (CRm 1..7, Op2 0..7); zero
/// for any other encoding.
pub fn id_register(crm: u8, op2: u8) -> u64 {
    macro_rules! by_encoding {
        ($($crm:literal: $($op2:literal)*;)*) => {
            match (crm, op2) {
                $($(($crm, $op2) => read_id!($crm, $op2),)*)*
                _ => 0,
            }
        };
    }
    by_encoding! {
        1: 0 1 2 3 4 5 6 7;
        2: 0 1 2 3 4 5 6 7;
        3: 0 1 2 3 4 5 6 7;
        4: 0 1 2 3 4 5 6 7;
        5: 0 1 2 3 4 5 6 7;
        6: 0 1 2 3 4 5 6 7;
        7: 0 1 2 3 4 5 6 7;
    }
}

/// Turns both of the guest's EL1 timers off (CNTV_CTL_EL0 and CNTP_CTL_EL0
/// = 0): their interrupts are no longer asserted.
pub fn timers_off() {
    CNTV_CTL_EL0.set(0);
    CNTP_CTL_EL0.set(0);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}

/// The guest's CNTV_CTL_EL0 (`virtual_timer`) or CNTP_CTL_EL0 (the EL1
/// physical timer, which is what that name reaches at EL2 with
/// HCR_EL2.E2H = 0).
pub fn timer_ctl(virtual_timer: bool) -> u64 {
    if virtual_timer {
        CNTV_CTL_EL0.get()
    } else {
        CNTP_CTL_EL0.get()
    }
}
