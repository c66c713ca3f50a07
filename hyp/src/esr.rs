//! Decoding of ESR_ELx syndromes into something a person can read.
//!
//! Used for the report of an unexpected exception; pure, host-tested.

use core::fmt;

/// A decoded exception syndrome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syndrome(pub u64);

impl Syndrome {
    /// Exception class, ESR_ELx.EC (bits [31:26]).
    pub fn ec(self) -> u8 {
        ((self.0 >> 26) & 0x3f) as u8
    }

    /// Instruction-specific syndrome, ESR_ELx.ISS (bits [24:0]).
    pub fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    /// Instruction length bit, ESR_ELx.IL (bit 25): 32-bit instruction.
    pub fn il(self) -> bool {
        self.0 & (1 << 25) != 0
    }

    /// The name of the exception class.
    pub fn class_name(self) -> &'static str {
        match self.ec() {
            0x00 => "unknown reason",
            0x01 => "trapped WFI/WFE",
            0x07 => "SVE/SIMD/FP access",
            0x0e => "illegal execution state",
            0x15 => "SVC (AArch64)",
            0x16 => "HVC (AArch64)",
            0x17 => "SMC (AArch64)",
            0x18 => "trapped MSR/MRS/system instruction",
            0x20 => "instruction abort from a lower EL",
            0x21 => "instruction abort at EL2",
            0x22 => "PC alignment fault",
            0x24 => "data abort from a lower EL",
            0x25 => "data abort at EL2",
            0x26 => "SP alignment fault",
            0x2f => "SError",
            0x30 | 0x31 => "breakpoint",
            0x32 | 0x33 => "software step",
            0x34 | 0x35 => "watchpoint",
            0x3c => "BRK instruction",
            _ => "reserved/other",
        }
    }

    fn is_abort(self) -> bool {
        matches!(self.ec(), 0x20 | 0x21 | 0x24 | 0x25)
    }

    /// For aborts: the fault status code (ISS.DFSC/IFSC, bits [5:0]) decoded.
    pub fn fault_status(self) -> Option<&'static str> {
        if !self.is_abort() {
            return None;
        }
        let fsc = self.iss() & 0x3f;
        Some(match fsc {
            0x00..=0x03 => "address size fault",
            0x04..=0x07 => "translation fault",
            0x09..=0x0b => "access flag fault",
            0x0d..=0x0f => "permission fault",
            0x10 => "synchronous external abort",
            0x21 => "alignment fault",
            0x30 => "TLB conflict abort",
            _ => "other fault",
        })
    }

    /// For aborts: the translation level of the fault, when the FSC has one.
    pub fn fault_level(self) -> Option<u8> {
        let fsc = self.iss() & 0x3f;
        (self.is_abort() && matches!(fsc, 0x00..=0x0f)).then_some((fsc & 3) as u8)
    }

    /// For data aborts: whether the access was a write (ISS.WnR, bit 6).
    pub fn is_write(self) -> Option<bool> {
        matches!(self.ec(), 0x24 | 0x25).then_some(self.iss() & (1 << 6) != 0)
    }
}

impl fmt::Display for Syndrome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ESR={:#x} EC={:#04x} ({}) IL={} ISS={:#x}",
            self.0,
            self.ec(),
            self.class_name(),
            u8::from(self.il()),
            self.iss()
        )?;
        if let Some(fs) = self.fault_status() {
            write!(f, ": {fs}")?;
            if let Some(level) = self.fault_level() {
                write!(f, " at level {level}")?;
            }
            if let Some(w) = self.is_write() {
                f.write_str(if w { ", write" } else { ", read" })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_el2_data_abort() {
        // EC=0x25, IL=1, ISS: WnR=1, DFSC=0x05 (translation fault, level 1).
        let s = Syndrome((0x25 << 26) | (1 << 25) | (1 << 6) | 0x05);
        assert_eq!(
            s.to_string(),
            "ESR=0x96000045 EC=0x25 (data abort at EL2) IL=1 ISS=0x45: translation fault at level 1, write"
        );
    }

    #[test]
    fn decodes_non_abort() {
        let s = Syndrome(0x3c << 26 | 1 << 25);
        assert_eq!(s.class_name(), "BRK instruction");
        assert_eq!(s.fault_status(), None);
        assert_eq!(s.is_write(), None);
    }
}
