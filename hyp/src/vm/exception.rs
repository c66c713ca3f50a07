//! Exceptions the hypervisor gives a guest, as the hardware would take
//! them to EL1 (Arm ARM D1.10, "Exception entry"): the syndrome and fault
//! address in ESR_EL1/FAR_EL1, the return state in ELR_EL1/SPSR_EL1, and
//! execution resuming at the guest's vector for the EL it came from.

use crate::arch::{self, TrapFrame};

/// SPSR for entering EL1h with DAIF masked: the state exception entry to
/// EL1 sets.
pub const SPSR_EL1H: u64 = 0x3c5;

/// ESR.IL: a 32-bit instruction.
const IL: u64 = 1 << 25;
/// DFSC/IFSC 0x10: synchronous external abort, not on a table walk.
const EXTERNAL_ABORT: u64 = 0x10;

/// The exception level a trapped guest ran at (SPSR_EL2.M).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEl {
    /// EL0 (AArch64).
    El0,
    /// EL1 using SP_EL0 (EL1t).
    El1t,
    /// EL1 using SP_EL1 (EL1h).
    El1h,
}

impl GuestEl {
    /// The level of a saved SPSR (anything else than EL1t/EL1h counts as
    /// EL0: the guest runs no AArch32 and cannot reach EL2).
    pub fn of(spsr: u64) -> Self {
        match spsr & 0xf {
            0b0101 => Self::El1h,
            0b0100 => Self::El1t,
            _ => Self::El0,
        }
    }

    /// Offset of the synchronous vector in VBAR_EL1 for an exception taken
    /// to EL1 from this level.
    pub fn sync_vector(self) -> u64 {
        match self {
            Self::El1t => 0x000,
            Self::El1h => 0x200,
            Self::El0 => 0x400,
        }
    }

    fn is_lower_el(self) -> bool {
        self == Self::El0
    }
}

/// Injects a synchronous exception with syndrome `esr` and fault address
/// `far` into the guest whose state is in `frame`, as if the instruction at
/// ELR_EL2 had taken it to EL1.
pub fn inject_sync(frame: &mut TrapFrame, esr: u64, far: u64) {
    arch::guest::set_exception_state(esr, far, frame.elr, frame.spsr);
    frame.elr = arch::guest::vbar() + GuestEl::of(frame.spsr).sync_vector();
    frame.spsr = SPSR_EL1H;
}

/// Injects a synchronous external abort for a data access at `far`: EC
/// 0x24 from EL0, 0x25 from EL1; `write` sets ISS.WnR.
pub fn inject_data_abort(frame: &mut TrapFrame, far: u64, write: bool) {
    let ec = if GuestEl::of(frame.spsr).is_lower_el() {
        0x24
    } else {
        0x25
    };
    let wnr = if write { 1 << 6 } else { 0 };
    inject_sync(frame, (ec << 26) | IL | wnr | EXTERNAL_ABORT, far);
}

/// Injects a synchronous external abort on an instruction fetch at `far`:
/// EC 0x20 from EL0, 0x21 from EL1.
pub fn inject_instruction_abort(frame: &mut TrapFrame, far: u64) {
    let ec = if GuestEl::of(frame.spsr).is_lower_el() {
        0x20
    } else {
        0x21
    };
    inject_sync(frame, (ec << 26) | IL | EXTERNAL_ABORT, far);
}

/// Injects an Unknown-reason exception (EC 0): what an undefined
/// instruction raises.
pub fn inject_undef(frame: &mut TrapFrame) {
    inject_sync(frame, IL, 0);
}

/// Skips the trapped instruction (every instruction that traps here is 4
/// bytes: AArch64 only).
pub fn skip_instruction(frame: &mut TrapFrame) {
    frame.elr = frame.elr.wrapping_add(4);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::fake;

    fn frame_at(elr: u64, spsr: u64) -> TrapFrame {
        let mut f = TrapFrame::zeroed();
        f.elr = elr;
        f.spsr = spsr;
        f
    }

    #[test]
    fn data_abort_from_el1h_uses_ec_0x25_and_the_current_el_vector() {
        fake::reset();
        fake::with(|c| c.vbar_el1 = 0xffff_8000_1000_0000);
        let mut f = frame_at(0x4008_0000, 0x3c5);
        inject_data_abort(&mut f, 0x5100_0000, true);
        let [esr, far, elr, spsr] = fake::with(|c| c.el1_exception).unwrap();
        assert_eq!(esr >> 26, 0x25);
        assert_eq!(esr & IL, IL);
        assert_eq!(esr & 0x3f, 0x10, "synchronous external abort");
        assert_ne!(esr & (1 << 6), 0, "WnR");
        assert_eq!((far, elr, spsr), (0x5100_0000, 0x4008_0000, 0x3c5));
        assert_eq!(f.elr, 0xffff_8000_1000_0200);
        assert_eq!(f.spsr, SPSR_EL1H);
    }

    #[test]
    fn aborts_from_el0_are_lower_el_classes_at_the_lower_el_vector() {
        fake::reset();
        fake::with(|c| c.vbar_el1 = 0x1000);
        let mut f = frame_at(0x40_0000, 0x0);
        inject_data_abort(&mut f, 0x10, false);
        let esr = fake::with(|c| c.el1_exception).unwrap()[0];
        assert_eq!(esr >> 26, 0x24);
        assert_eq!(esr & (1 << 6), 0, "a read");
        assert_eq!(f.elr, 0x1400);

        let mut f = frame_at(0x40_0000, 0x0);
        inject_instruction_abort(&mut f, 0x40_0000);
        assert_eq!(fake::with(|c| c.el1_exception).unwrap()[0] >> 26, 0x20);
    }

    #[test]
    fn instruction_abort_from_el1_is_ec_0x21() {
        fake::reset();
        let mut f = frame_at(0x5000_0000, 0x3c4);
        inject_instruction_abort(&mut f, 0x5000_0000);
        let [esr, far, ..] = fake::with(|c| c.el1_exception).unwrap();
        assert_eq!((esr >> 26, esr & 0x3f, far), (0x21, 0x10, 0x5000_0000));
        assert_eq!(f.elr, 0x000, "EL1t: current EL with SP_EL0");
    }

    #[test]
    fn undef_is_ec_0_with_il() {
        fake::reset();
        let mut f = frame_at(0x1000, 0x3c5);
        inject_undef(&mut f);
        assert_eq!(fake::with(|c| c.el1_exception).unwrap()[0], IL);
    }
}
