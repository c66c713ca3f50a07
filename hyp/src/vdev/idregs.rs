//! What a guest reads from the CPU's ID registers. HCR_EL2.TID3 traps the
//! whole ID register space (Op0 = 3, Op1 = 0, CRn = 0, CRm = 1..7: the
//! AArch64 and AArch32 feature registers, Arm ARM D23.2), and the guest
//! reads the CPU's own values with every feature the VM does not get
//! cleared to "not implemented". Each hidden feature is also unreachable:
//! its registers trap to EL2 (`arch::guest::configure`) and the guest gets
//! an undefined-instruction exception, as on a CPU without it.
//!
//! Hidden: the PMU (EL2 events must not be countable from a guest),
//! trace (ETM, TRBE, BRBE), statistical profiling (SPE), activity monitors
//! (AMU), RAS error records, MPAM, MTE (tag access is off, HCR_EL2.ATA = 0),
//! SME, and nested virtualisation. Everything else reads as the CPU has it:
//! instructions and EL1 features that work under stage 2 without the
//! hypervisor's help.

/// A 4-bit ID field at bits [lo+3:lo].
const fn field(lo: u32) -> u64 {
    0xf << lo
}

/// An ID register by its CRm and Op2 (Op0 = 3, Op1 = 0, CRn = 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdReg {
    /// CRm, 1 to 7.
    pub crm: u8,
    /// Op2.
    pub op2: u8,
}

impl IdReg {
    pub const ID_DFR0: Self = Self::new(1, 2);
    pub const ID_PFR0: Self = Self::new(1, 0);
    pub const ID_PFR2: Self = Self::new(3, 4);
    pub const ID_DFR1: Self = Self::new(3, 5);
    pub const ID_AA64PFR0: Self = Self::new(4, 0);
    pub const ID_AA64PFR1: Self = Self::new(4, 1);
    pub const ID_AA64SMFR0: Self = Self::new(4, 5);
    pub const ID_AA64DFR0: Self = Self::new(5, 0);
    pub const ID_AA64DFR1: Self = Self::new(5, 1);
    pub const ID_AA64MMFR2: Self = Self::new(7, 2);

    const fn new(crm: u8, op2: u8) -> Self {
        Self { crm, op2 }
    }

    /// The ID register with encoding S`op0`_`op1`_C`crn`_C`crm`_`op2`, if
    /// that encoding is in the ID register space.
    pub fn of(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Option<Self> {
        (op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm) && op2 < 8)
            .then_some(Self { crm, op2 })
    }

    /// The fields of this register that name features the VM does not get.
    fn hidden(self) -> u64 {
        match self {
            // PerfMon [27:24], MMapTrc [19:16], CopTrc [15:12], TraceFilt
            // [31:28].
            Self::ID_DFR0 => field(12) | field(16) | field(24) | field(28),
            // AMU [23:20], RAS [31:28].
            Self::ID_PFR0 => field(20) | field(28),
            // RAS_frac [11:8].
            Self::ID_PFR2 => field(8),
            // MTPMU [3:0], HPMN0 [7:4].
            Self::ID_DFR1 => field(0) | field(4),
            // RAS [31:28], SEL2 [39:36] (no Secure EL2 for a guest), MPAM
            // [43:40], AMU [47:44], RME [55:52].
            Self::ID_AA64PFR0 => field(28) | field(36) | field(40) | field(44) | field(52),
            // MTE [11:8], RAS_frac [15:12], MPAM_frac [19:16], SME [27:24],
            // NMI [39:36], MTE_frac [43:40], GCS [47:44], MTEX [55:52].
            Self::ID_AA64PFR1 => {
                field(8)
                    | field(12)
                    | field(16)
                    | field(24)
                    | field(36)
                    | field(40)
                    | field(44)
                    | field(52)
            }
            // Every SME feature.
            Self::ID_AA64SMFR0 => u64::MAX,
            // TraceVer [7:4], PMUVer [11:8], PMSS [19:16], SEBEP [27:24],
            // PMSVer [35:32], TraceFilt [43:40], TraceBuffer [47:44], MTPMU
            // [51:48], BRBE [55:52], ExtTrcBuff [59:56], HPMN0 [63:60].
            Self::ID_AA64DFR0 => {
                field(4)
                    | field(8)
                    | field(16)
                    | field(24)
                    | field(32)
                    | field(40)
                    | field(44)
                    | field(48)
                    | field(52)
                    | field(56)
                    | field(60)
            }
            // PMU, SPE and BRBE extensions (EBEP, PMICNTR, ...): all of it.
            Self::ID_AA64DFR1 => u64::MAX,
            // NV [27:24].
            Self::ID_AA64MMFR2 => field(24),
            _ => 0,
        }
    }

    /// What the guest reads from this register when the CPU's value is
    /// `hw`.
    pub fn guest_view(self, hw: u64) -> u64 {
        hw & !self.hidden()
    }
}

/// Fields of the CPU's own ID registers that say whether the CPU has a
/// feature whose traps must be set (a trap bit for a feature the CPU lacks
/// is RES0 and is left clear).
pub mod present {
    use super::field;

    /// ID_AA64PFR0_EL1.RAS: FEAT_RAS, so HCR_EL2.TERR exists.
    pub fn ras(pfr0: u64) -> bool {
        pfr0 & field(28) != 0
    }

    /// ID_AA64PFR0_EL1.AMU: FEAT_AMUv1, so CPTR_EL2.TAM exists.
    pub fn amu(pfr0: u64) -> bool {
        pfr0 & field(44) != 0
    }

    /// ID_AA64DFR0_EL1.PMUVer: a PMUv3 (0xf is an IMPLEMENTATION DEFINED
    /// PMU, not PMUv3), so MDCR_EL2.TPM and TPMCR trap its registers.
    pub fn pmuv3(dfr0: u64) -> bool {
        !matches!((dfr0 >> 8) & 0xf, 0 | 0xf)
    }

    /// ID_AA64DFR0_EL1.PMSVer: FEAT_SPE, so MDCR_EL2.TPMS exists.
    pub fn spe(dfr0: u64) -> bool {
        dfr0 & field(32) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU with every feature field at 1.
    const ALL: u64 = 0x1111_1111_1111_1111;

    fn field_of(v: u64, lo: u32) -> u64 {
        (v >> lo) & 0xf
    }

    #[test]
    fn only_the_id_register_space_is_an_id_register() {
        assert_eq!(IdReg::of(3, 0, 0, 4, 1), Some(IdReg::ID_AA64PFR1));
        assert_eq!(IdReg::of(3, 0, 0, 7, 2), Some(IdReg::ID_AA64MMFR2));
        // MIDR_EL1 (CRm 0), CTR_EL0 (Op1 3), SCTLR_EL1 (CRn 1): not traps
        // of TID3.
        assert_eq!(IdReg::of(3, 0, 0, 0, 0), None);
        assert_eq!(IdReg::of(3, 3, 0, 0, 1), None);
        assert_eq!(IdReg::of(3, 0, 1, 0, 0), None);
        assert_eq!(IdReg::of(2, 0, 0, 4, 0), None);
    }

    #[test]
    fn the_pmu_trace_and_profiling_are_hidden_debug_is_not() {
        let v = IdReg::ID_AA64DFR0.guest_view(ALL);
        for (lo, what) in [
            (4, "TraceVer"),
            (8, "PMUVer"),
            (32, "PMSVer"),
            (44, "TraceBuffer"),
            (52, "BRBE"),
        ] {
            assert_eq!(field_of(v, lo), 0, "{what}");
        }
        // DebugVer, BRPs, WRPs, CTX_CMPs stay: the guest's own debugging
        // works at EL1.
        for lo in [0, 12, 20, 28] {
            assert_eq!(field_of(v, lo), 1, "field at {lo}");
        }
        assert_eq!(IdReg::ID_AA64DFR1.guest_view(u64::MAX), 0);
        let v = IdReg::ID_DFR0.guest_view(ALL);
        assert_eq!(field_of(v, 24), 0, "AArch32 PerfMon");
        assert_eq!(field_of(v, 0), 1, "AArch32 CopDbg");
    }

    #[test]
    fn mte_sme_ras_amu_mpam_and_nv_are_hidden() {
        let p1 = IdReg::ID_AA64PFR1.guest_view(ALL);
        assert_eq!((field_of(p1, 8), field_of(p1, 24)), (0, 0), "MTE, SME");
        assert_eq!(field_of(p1, 0), 1, "BT stays");
        assert_eq!(field_of(p1, 4), 1, "SSBS stays");
        let p0 = IdReg::ID_AA64PFR0.guest_view(ALL);
        for (lo, what) in [(28, "RAS"), (40, "MPAM"), (44, "AMU")] {
            assert_eq!(field_of(p0, lo), 0, "{what}");
        }
        for (lo, what) in [
            (0, "EL0"),
            (4, "EL1"),
            (16, "FP"),
            (20, "AdvSIMD"),
            (24, "GIC"),
        ] {
            assert_eq!(field_of(p0, lo), 1, "{what} stays");
        }
        assert_eq!(IdReg::ID_AA64SMFR0.guest_view(u64::MAX), 0);
        assert_eq!(field_of(IdReg::ID_AA64MMFR2.guest_view(ALL), 24), 0, "NV");
        assert_eq!(
            field_of(IdReg::ID_PFR0.guest_view(ALL), 28),
            0,
            "AArch32 RAS"
        );
    }

    #[test]
    fn instruction_set_and_memory_features_read_as_the_cpu_has_them() {
        for reg in [
            IdReg::new(6, 0),
            IdReg::new(6, 1),
            IdReg::new(6, 2),
            IdReg::new(7, 0),
            IdReg::new(7, 1),
            IdReg::new(4, 4),
        ] {
            assert_eq!(reg.guest_view(0x1234_5678_9abc_def0), 0x1234_5678_9abc_def0);
        }
    }

    #[test]
    fn traps_are_set_only_for_features_the_cpu_has() {
        // Cortex-A57: PMUv3, no RAS, AMU or SPE.
        let (pfr0, dfr0) = (0x0000_0000_0000_2222, 0x0000_0000_1030_5106);
        assert!(present::pmuv3(dfr0));
        assert!(!present::spe(dfr0));
        assert!(!present::ras(pfr0) && !present::amu(pfr0));
        assert!(present::ras(1 << 28) && present::amu(1 << 44));
        assert!(!present::pmuv3(0xf << 8), "IMPLEMENTATION DEFINED PMU");
    }
}
