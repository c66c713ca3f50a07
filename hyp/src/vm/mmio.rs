//! Decoding of stage-2 data aborts into emulated MMIO accesses.
//!
//! ESR_EL2 for a data abort from a lower EL (EC 0x24) carries, when ISV=1,
//! everything needed to emulate a single load or store (Arm ARM D13.2.40,
//! "ISS encoding for an exception from a Data Abort"): access size, register,
//! sign extension, 32/64-bit register width, write/read. Accesses without a
//! valid syndrome (e.g. load/store pair, post-index writeback) cannot be
//! emulated; the guest gets an external abort instead.

use smmu::addr::Ipa;

/// One emulated access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Guest physical address (from HPFAR_EL2 and FAR_EL2[11:0]).
    pub ipa: Ipa,
    /// Bytes: 1, 2, 4 or 8 (ISS.SAS).
    pub size: u8,
    /// Store (ISS.WnR).
    pub write: bool,
    /// Source or destination register 0..=30, 31 meaning XZR (ISS.SRT).
    pub reg: u8,
    /// Sign-extend a load (ISS.SSE).
    pub sign_extend: bool,
    /// The register is 64 bits wide (ISS.SF).
    pub sixty_four: bool,
}

/// Why an abort is not an emulatable access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a data abort from a lower EL.
    NotDataAbort,
    /// ISS.ISV = 0: no syndrome for the access (pair, writeback, SIMD...).
    NoSyndrome,
    /// A fault on a stage-1 walk (S1PTW): the guest's page tables point
    /// outside its memory.
    StageOneWalk,
    /// Cache maintenance or an atomic: not a plain access.
    NotPlainAccess,
}

/// Decodes a lower-EL data abort. `hpfar` is HPFAR_EL2, `far` FAR_EL2.
pub fn decode(esr: u64, hpfar: u64, far: u64) -> Result<MmioAccess, DecodeError> {
    let ec = (esr >> 26) & 0x3f;
    if ec != 0x24 {
        return Err(DecodeError::NotDataAbort);
    }
    let iss = esr & 0x1ff_ffff;
    if iss & (1 << 7) != 0 {
        return Err(DecodeError::StageOneWalk);
    }
    if iss & (1 << 8) != 0 {
        // CM: cache maintenance.
        return Err(DecodeError::NotPlainAccess);
    }
    if iss & (1 << 24) == 0 {
        return Err(DecodeError::NoSyndrome);
    }
    // HPFAR_EL2.FIPA holds IPA[51:12] in bits [43:4].
    let ipa = ((hpfar >> 4) & 0xff_ffff_ffff) << 12 | (far & 0xfff);
    Ok(MmioAccess {
        ipa: Ipa(ipa),
        size: 1 << ((iss >> 22) & 3),
        write: iss & (1 << 6) != 0,
        reg: ((iss >> 16) & 0x1f) as u8,
        sign_extend: iss & (1 << 21) != 0,
        sixty_four: iss & (1 << 15) != 0,
    })
}

impl MmioAccess {
    /// The value a load returns in the register, from the device's `raw`
    /// value (zero- or sign-extended to the access size and register width).
    pub fn load_value(&self, raw: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        let v = if bits == 64 {
            raw
        } else {
            raw & ((1u64 << bits) - 1)
        };
        let v = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((v << shift) as i64) >> shift) as u64
        } else {
            v
        };
        if self.sixty_four {
            v
        } else {
            v & 0xffff_ffff
        }
    }

    /// The bytes a store writes, from the register value.
    pub fn store_value(&self, reg_value: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        if bits == 64 {
            reg_value
        } else {
            reg_value & ((1u64 << bits) - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esr(isv: bool, sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (0x24 << 26)
            | (1 << 25)
            | (u64::from(isv) << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
            | 0x07 // translation fault, level 3
    }

    #[test]
    fn decodes_a_32bit_store() {
        let hpfar = (0x0900_0000 >> 12) << 4;
        let a = decode(esr(true, 2, false, 3, false, true), hpfar, 0x18).unwrap();
        assert_eq!(a.ipa, Ipa(0x0900_0018));
        assert_eq!((a.size, a.write, a.reg, a.sixty_four), (4, true, 3, false));
        assert_eq!(a.store_value(0xdead_beef_1234_5678), 0x1234_5678);
    }

    #[test]
    fn ipa_comes_from_hpfar_and_far() {
        let a = decode(
            esr(true, 3, false, 0, true, false),
            (0x0800_0000 >> 12) << 4,
            0xffff_0000_0000_0104,
        )
        .unwrap();
        assert_eq!(a.ipa, Ipa(0x0800_0104));
        assert_eq!(a.size, 8);
    }

    #[test]
    fn loads_extend_as_the_instruction_says() {
        let ldrsb_w = decode(esr(true, 0, true, 1, false, false), 0, 0).unwrap();
        assert_eq!(ldrsb_w.load_value(0x80), 0xffff_ff80);
        let ldrsb_x = decode(esr(true, 0, true, 1, true, false), 0, 0).unwrap();
        assert_eq!(ldrsb_x.load_value(0x80), 0xffff_ffff_ffff_ff80);
        let ldrh = decode(esr(true, 1, false, 1, false, false), 0, 0).unwrap();
        assert_eq!(ldrh.load_value(0x1234_8765), 0x8765);
    }

    #[test]
    fn refuses_what_cannot_be_emulated() {
        assert_eq!(
            decode(esr(false, 2, false, 0, false, true), 0, 0),
            Err(DecodeError::NoSyndrome)
        );
        assert_eq!(
            decode(esr(true, 2, false, 0, false, true) | (1 << 7), 0, 0),
            Err(DecodeError::StageOneWalk)
        );
        assert_eq!(decode(0x25 << 26, 0, 0), Err(DecodeError::NotDataAbort));
    }
}
