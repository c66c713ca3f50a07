//! The Context Descriptor (CD), IHI 0070 §5.4, and CD tables (§5.3, STE
//! S1Fmt/S1CDMax in §5.2).
//!
//! A CD holds the stage 1 configuration of one (sub)stream: its translation
//! table bases, sizes, attributes and ASID. An STE that translates at stage
//! 1 points to one CD, or to a table of them indexed by SubstreamID (PASID),
//! linear or 2-level. In this hypervisor guests own their CDs (nested
//! translation); this module encodes and validates CDs ([`ContextDescriptor`],
//! [`ContextDescriptor::validate`], total on any input) and does the index
//! arithmetic of CD tables ([`CdTable`]).

use crate::addr::{Asid, Ipa, Ssid};
use crate::ste::{
    field_accessors, fits, output_size_bits, FieldType, Granule, Httu, S1Dss, S1Fmt, StallModel,
    Ste, TtEndian,
};
use core::fmt;
use tock_registers::fields::Field;
use tock_registers::{register_bitfields, LocalRegisterCopy, RegisterLongName};

register_bitfields![u64,
    /// CD bits \[63:0\].
    pub CD0 [
        /// T0SZ, bits \[5:0\] (§5.4): TTB0 input size is 64 - T0SZ bits.
        T0SZ OFFSET(0) NUMBITS(6) [],
        /// TG0, bits \[7:6\] (§5.4): TTB0 granule (0 4K, 1 64K, 2 16K).
        TG0 OFFSET(6) NUMBITS(2) [],
        /// IR0, bits \[9:8\] (§5.4): inner cacheability of TTB0 walks.
        IR0 OFFSET(8) NUMBITS(2) [],
        /// OR0, bits \[11:10\] (§5.4): outer cacheability of TTB0 walks.
        OR0 OFFSET(10) NUMBITS(2) [],
        /// SH0, bits \[13:12\] (§5.4): shareability of TTB0 walks.
        SH0 OFFSET(12) NUMBITS(2) [],
        /// EPD0, bit \[14\] (§5.4): TTB0 walks disabled.
        EPD0 OFFSET(14) NUMBITS(1) [],
        /// ENDI, bit \[15\] (§5.4): big-endian tables.
        ENDI OFFSET(15) NUMBITS(1) [],
        /// T1SZ, bits \[21:16\] (§5.4).
        T1SZ OFFSET(16) NUMBITS(6) [],
        /// TG1, bits \[23:22\] (§5.4): TTB1 granule (1 16K, 2 4K, 3 64K).
        TG1 OFFSET(22) NUMBITS(2) [],
        /// IR1, bits \[25:24\] (§5.4).
        IR1 OFFSET(24) NUMBITS(2) [],
        /// OR1, bits \[27:26\] (§5.4).
        OR1 OFFSET(26) NUMBITS(2) [],
        /// SH1, bits \[29:28\] (§5.4).
        SH1 OFFSET(28) NUMBITS(2) [],
        /// EPD1, bit \[30\] (§5.4): TTB1 walks disabled.
        EPD1 OFFSET(30) NUMBITS(1) [],
        /// V, bit \[31\] (§5.4): the CD is valid.
        V OFFSET(31) NUMBITS(1) [],
        /// IPS, bits \[34:32\] (§5.4): output size, as TCR_ELx.IPS.
        IPS OFFSET(32) NUMBITS(3) [],
        /// AFFD, bit \[35\] (§5.4): access flag faults disabled.
        AFFD OFFSET(35) NUMBITS(1) [],
        /// WXN, bit \[36\] (§5.4).
        WXN OFFSET(36) NUMBITS(1) [],
        /// UWXN, bit \[37\] (§5.4).
        UWXN OFFSET(37) NUMBITS(1) [],
        /// TBI0, bit \[38\] (§5.4): top byte ignored for TTB0.
        TBI0 OFFSET(38) NUMBITS(1) [],
        /// TBI1, bit \[39\] (§5.4).
        TBI1 OFFSET(39) NUMBITS(1) [],
        /// PAN, bit \[40\] (§5.4).
        PAN OFFSET(40) NUMBITS(1) [],
        /// AA64, bit \[41\] (§5.4): VMSAv8-64 tables.
        AA64 OFFSET(41) NUMBITS(1) [],
        /// HD, bit \[42\] (§5.4): hardware dirty-state update.
        HD OFFSET(42) NUMBITS(1) [],
        /// HA, bit \[43\] (§5.4): hardware access-flag update.
        HA OFFSET(43) NUMBITS(1) [],
        /// S, bit \[44\] (§5.4, §5.5): stall on fault.
        S OFFSET(44) NUMBITS(1) [],
        /// R, bit \[45\] (§5.4, §5.5): record faults.
        R OFFSET(45) NUMBITS(1) [],
        /// A, bit \[46\] (§5.4, §5.5): abort (rather than RAZ/WI) on fault.
        A OFFSET(46) NUMBITS(1) [],
        /// ASET, bit \[47\] (§5.4): ASID not shared with the PE.
        ASET OFFSET(47) NUMBITS(1) [],
        /// ASID, bits \[63:48\] (§5.4).
        ASID OFFSET(48) NUMBITS(16) []
    ],
    /// CD bits \[127:64\].
    pub CD1 [
        /// NSCFG0, bit \[64\] (§5.4): NS of TTB0's starting level (Secure only).
        NSCFG0 OFFSET(0) NUMBITS(1) [],
        /// HAD0, bit \[65\] (§5.4): hierarchical attributes disabled for TTB0.
        HAD0 OFFSET(1) NUMBITS(1) [],
        /// E0PD0, bit \[66\] (§5.4).
        E0PD0 OFFSET(2) NUMBITS(1) [],
        /// HAFT, bit \[67\] (§5.4).
        HAFT OFFSET(3) NUMBITS(1) [],
        /// TTB0, bits \[115:68\] (§5.4): TTB0 base, address bits \[51:4\].
        TTB0 OFFSET(4) NUMBITS(48) []
    ],
    /// CD bits \[191:128\].
    pub CD2 [
        /// NSCFG1, bit \[128\] (§5.4).
        NSCFG1 OFFSET(0) NUMBITS(1) [],
        /// HAD1, bit \[129\] (§5.4).
        HAD1 OFFSET(1) NUMBITS(1) [],
        /// E0PD1, bit \[130\] (§5.4).
        E0PD1 OFFSET(2) NUMBITS(1) [],
        /// AIE, bit \[131\] (§5.4).
        AIE OFFSET(3) NUMBITS(1) [],
        /// TTB1, bits \[179:132\] (§5.4): TTB1 base, address bits \[51:4\].
        TTB1 OFFSET(4) NUMBITS(48) [],
        /// DS, bit \[186\] (§5.4).
        DS OFFSET(58) NUMBITS(1) [],
        /// PIE, bit \[187\] (§5.4).
        PIE OFFSET(59) NUMBITS(1) []
    ],
    /// CD bits \[255:192\].
    pub CD3 [
        /// MAIR0, bits \[223:192\] (§5.4): MAIR bits \[31:0\].
        MAIR0 OFFSET(0) NUMBITS(32) [],
        /// MAIR1, bits \[255:224\] (§5.4): MAIR bits \[63:32\].
        MAIR1 OFFSET(32) NUMBITS(32) []
    ],
    /// CD bits \[319:256\].
    pub CD4 [
        /// AMAIR0, bits \[287:256\] (§5.4).
        AMAIR0 OFFSET(0) NUMBITS(32) [],
        /// AMAIR1, bits \[319:288\] (§5.4).
        AMAIR1 OFFSET(32) NUMBITS(32) []
    ],
    /// L1CD, §5.3.
    pub L1CD [
        /// V, bit \[0\] (§5.3): L2Ptr is valid.
        V OFFSET(0) NUMBITS(1) [],
        /// L2Ptr, bits \[55:12\] (§5.3): the level 2 table, address bits \[55:12\].
        L2PTR OFFSET(12) NUMBITS(44) []
    ]
];

/// Number of 64-bit words in a CD.
pub const CD_WORDS: usize = 8;

/// Size of a CD in bytes.
pub const CD_BYTES: usize = 64;

/// A Context Descriptor, exactly as the SMMU reads it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct ContextDescriptor(pub [u64; CD_WORDS]);

const _: () = assert!(core::mem::size_of::<ContextDescriptor>() == CD_BYTES);

/// Binds a bitfield register type of this module to its word in the CD.
trait CdWord: RegisterLongName {
    const INDEX: usize;
}
impl CdWord for CD0::Register {
    const INDEX: usize = 0;
}
impl CdWord for CD1::Register {
    const INDEX: usize = 1;
}
impl CdWord for CD2::Register {
    const INDEX: usize = 2;
}
impl CdWord for CD3::Register {
    const INDEX: usize = 3;
}
impl CdWord for CD4::Register {
    const INDEX: usize = 4;
}

impl ContextDescriptor {
    /// The one field-access helper: reads `field` of its word.
    fn get<R: CdWord>(&self, field: Field<u64, R>) -> u64 {
        LocalRegisterCopy::<u64, R>::new(self.0[R::INDEX]).read(field)
    }

    /// The one field-update helper: writes `value` (masked) into `field`.
    fn put<R: CdWord>(&mut self, field: Field<u64, R>, value: u64) {
        let mut reg = LocalRegisterCopy::<u64, R>::new(self.0[R::INDEX]);
        reg.modify(field.val(value));
        self.0[R::INDEX] = reg.get();
    }
}

field_accessors!(ContextDescriptor {
    /// T0SZ, bits \[5:0\] (§5.4).
    t0sz / set_t0sz: CD0::T0SZ => u8;
    /// IR0, bits \[9:8\] (§5.4).
    ir0 / set_ir0: CD0::IR0 => u8;
    /// OR0, bits \[11:10\] (§5.4).
    or0 / set_or0: CD0::OR0 => u8;
    /// SH0, bits \[13:12\] (§5.4).
    sh0 / set_sh0: CD0::SH0 => u8;
    /// EPD0, bit \[14\] (§5.4).
    epd0 / set_epd0: CD0::EPD0 => bool;
    /// ENDI, bit \[15\] (§5.4).
    endi / set_endi: CD0::ENDI => bool;
    /// T1SZ, bits \[21:16\] (§5.4).
    t1sz / set_t1sz: CD0::T1SZ => u8;
    /// IR1, bits \[25:24\] (§5.4).
    ir1 / set_ir1: CD0::IR1 => u8;
    /// OR1, bits \[27:26\] (§5.4).
    or1 / set_or1: CD0::OR1 => u8;
    /// SH1, bits \[29:28\] (§5.4).
    sh1 / set_sh1: CD0::SH1 => u8;
    /// EPD1, bit \[30\] (§5.4).
    epd1 / set_epd1: CD0::EPD1 => bool;
    /// V, bit \[31\] (§5.4).
    v / set_v: CD0::V => bool;
    /// IPS, bits \[34:32\] (§5.4), encoded as TCR_ELx.IPS.
    ips / set_ips: CD0::IPS => u8;
    /// AFFD, bit \[35\] (§5.4).
    affd / set_affd: CD0::AFFD => bool;
    /// WXN, bit \[36\] (§5.4).
    wxn / set_wxn: CD0::WXN => bool;
    /// UWXN, bit \[37\] (§5.4).
    uwxn / set_uwxn: CD0::UWXN => bool;
    /// TBI0, bit \[38\] (§5.4).
    tbi0 / set_tbi0: CD0::TBI0 => bool;
    /// TBI1, bit \[39\] (§5.4).
    tbi1 / set_tbi1: CD0::TBI1 => bool;
    /// PAN, bit \[40\] (§5.4).
    pan / set_pan: CD0::PAN => bool;
    /// AA64, bit \[41\] (§5.4).
    aa64 / set_aa64: CD0::AA64 => bool;
    /// HD, bit \[42\] (§5.4).
    hd / set_hd: CD0::HD => bool;
    /// HA, bit \[43\] (§5.4).
    ha / set_ha: CD0::HA => bool;
    /// S, bit \[44\] (§5.4).
    s / set_s: CD0::S => bool;
    /// R, bit \[45\] (§5.4).
    r / set_r: CD0::R => bool;
    /// A, bit \[46\] (§5.4).
    a / set_a: CD0::A => bool;
    /// ASET, bit \[47\] (§5.4).
    aset / set_aset: CD0::ASET => bool;
    /// NSCFG0, bit \[64\] (§5.4).
    nscfg0 / set_nscfg0: CD1::NSCFG0 => bool;
    /// HAD0, bit \[65\] (§5.4).
    had0 / set_had0: CD1::HAD0 => bool;
    /// E0PD0, bit \[66\] (§5.4).
    e0pd0 / set_e0pd0: CD1::E0PD0 => bool;
    /// HAFT, bit \[67\] (§5.4).
    haft / set_haft: CD1::HAFT => bool;
    /// NSCFG1, bit \[128\] (§5.4).
    nscfg1 / set_nscfg1: CD2::NSCFG1 => bool;
    /// HAD1, bit \[129\] (§5.4).
    had1 / set_had1: CD2::HAD1 => bool;
    /// E0PD1, bit \[130\] (§5.4).
    e0pd1 / set_e0pd1: CD2::E0PD1 => bool;
    /// AIE, bit \[131\] (§5.4).
    aie / set_aie: CD2::AIE => bool;
    /// DS, bit \[186\] (§5.4).
    ds / set_ds: CD2::DS => bool;
    /// PIE, bit \[187\] (§5.4).
    pie / set_pie: CD2::PIE => bool;
    /// MAIR0, bits \[223:192\] (§5.4).
    mair0 / set_mair0: CD3::MAIR0 => u32;
    /// MAIR1, bits \[255:224\] (§5.4).
    mair1 / set_mair1: CD3::MAIR1 => u32;
    /// AMAIR0, bits \[287:256\] (§5.4).
    amair0 / set_amair0: CD4::AMAIR0 => u32;
    /// AMAIR1, bits \[319:288\] (§5.4).
    amair1 / set_amair1: CD4::AMAIR1 => u32;
});

/// Decodes CD.TG1 (§5.4): 1 16K, 2 4K, 3 64K, 0 reserved.
pub const fn granule_from_tg1(bits: u8) -> Option<Granule> {
    match bits & 3 {
        1 => Some(Granule::Size16K),
        2 => Some(Granule::Size4K),
        3 => Some(Granule::Size64K),
        _ => None,
    }
}

/// The CD.TG1 encoding of a granule.
pub const fn granule_tg1(granule: Granule) -> u8 {
    match granule {
        Granule::Size16K => 1,
        Granule::Size4K => 2,
        Granule::Size64K => 3,
    }
}

/// Typed accessors for the enumerated, identifier and address fields.
/// TTB0/TTB1 are in the stream's stage 1 output space: an IPA when stage 2
/// translates (the nested case of this hypervisor).
impl ContextDescriptor {
    /// TG0, bits \[7:6\] (§5.4); `None` for the reserved encoding.
    pub fn tg0(&self) -> Option<Granule> {
        Granule::from_tg0(self.get(CD0::TG0) as u8)
    }

    /// Sets TG0.
    pub fn set_tg0(&mut self, granule: Granule) {
        self.put(CD0::TG0, u64::from(granule.tg0()));
    }

    /// TG1, bits \[23:22\] (§5.4); `None` for the reserved encoding.
    pub fn tg1(&self) -> Option<Granule> {
        granule_from_tg1(self.get(CD0::TG1) as u8)
    }

    /// Sets TG1.
    pub fn set_tg1(&mut self, granule: Granule) {
        self.put(CD0::TG1, u64::from(granule_tg1(granule)));
    }

    /// ASID, bits \[63:48\] (§5.4).
    pub fn asid(&self) -> Asid {
        Asid(self.get(CD0::ASID) as u16)
    }

    /// Sets ASID.
    pub fn set_asid(&mut self, asid: Asid) {
        self.put(CD0::ASID, u64::from(asid.0));
    }

    /// TTB0, bits \[115:68\] (§5.4).
    pub fn ttb0(&self) -> Ipa {
        Ipa(self.get(CD1::TTB0) << 4)
    }

    /// Sets TTB0; address bits \[3:0\] and above bit 51 are dropped.
    pub fn set_ttb0(&mut self, ttb: Ipa) {
        self.put(CD1::TTB0, ttb.raw() >> 4);
    }

    /// TTB1, bits \[179:132\] (§5.4).
    pub fn ttb1(&self) -> Ipa {
        Ipa(self.get(CD2::TTB1) << 4)
    }

    /// Sets TTB1; address bits \[3:0\] and above bit 51 are dropped.
    pub fn set_ttb1(&mut self, ttb: Ipa) {
        self.put(CD2::TTB1, ttb.raw() >> 4);
    }

    /// MAIR as one 64-bit value ({MAIR1, MAIR0}).
    pub fn mair(&self) -> u64 {
        self.0[3]
    }

    /// Sets MAIR ({MAIR1, MAIR0}).
    pub fn set_mair(&mut self, mair: u64) {
        self.0[3] = mair;
    }
}

impl fmt::Debug for ContextDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContextDescriptor(V={} [", self.v() as u8)?;
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{w:#018x}")?;
        }
        f.write_str("])")
    }
}

/// A level 1 CD table descriptor (§5.3), pointing to a level 2 table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
#[repr(transparent)]
pub struct L1Cd(pub u64);

const _: () = assert!(core::mem::size_of::<L1Cd>() == 8);

impl L1Cd {
    /// An invalid descriptor: SubstreamIDs it covers are C_BAD_SUBSTREAMID.
    pub const fn invalid() -> Self {
        Self(0)
    }

    /// A valid descriptor pointing to the level 2 table at `l2` (whose
    /// bits \[11:0\] are taken as zero).
    pub fn new(l2: Ipa) -> Self {
        let mut reg = LocalRegisterCopy::<u64, L1CD::Register>::new(0);
        reg.modify(L1CD::V::SET + L1CD::L2PTR.val(l2.raw() >> 12));
        Self(reg.get())
    }

    /// V, bit \[0\] (§5.3).
    pub fn valid(&self) -> bool {
        LocalRegisterCopy::<u64, L1CD::Register>::new(self.0).is_set(L1CD::V)
    }

    /// L2Ptr, bits \[55:12\] (§5.3).
    pub fn l2ptr(&self) -> Ipa {
        Ipa(LocalRegisterCopy::<u64, L1CD::Register>::new(self.0).read(L1CD::L2PTR) << 12)
    }
}

/// What the SMMU supports that CD legality depends on (§5.4.2), and the
/// relevant facts of the STE that located the CD. Only Non-secure, NS-EL1
/// streams with VMSAv8-64 tables are modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdPolicy {
    /// SMMU_IDR0.TTENDIAN.
    pub ttendian: TtEndian,
    /// SMMU_IDR0.STALL_MODEL (effective).
    pub stall_model: StallModel,
    /// SMMU_IDR0.TERM_MODEL: CD.A must be 1.
    pub term_model: bool,
    /// SMMU_IDR0.HTTU.
    pub httu: Httu,
    /// SMMU_IDR0.ASID16.
    pub asid16: bool,
    /// SMMU_IDR3.STT.
    pub stt: bool,
    /// SMMU_IDR5.VAX == 0b01: 52-bit VAs (with a 64K granule).
    pub vax52: bool,
    /// SMMU_IDR5.GRAN4K.
    pub gran4k: bool,
    /// SMMU_IDR5.GRAN16K.
    pub gran16k: bool,
    /// SMMU_IDR5.GRAN64K.
    pub gran64k: bool,
    /// SMMU_IDR5.OAS in bits (for a nested stream: the IPA size the
    /// hypervisor's stage 2 covers).
    pub oas_bits: u8,
    /// STE.S1STALLD of the STE that located the CD.
    pub s1stalld: bool,
}

impl CdPolicy {
    fn granule_supported(&self, granule: Granule) -> bool {
        match granule {
            Granule::Size4K => self.gran4k,
            Granule::Size16K => self.gran16k,
            Granule::Size64K => self.gran64k,
        }
    }
}

/// Why a CD is ILLEGAL (C_BAD_CD), or why a SubstreamID selects no CD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CdError {
    /// V == 0.
    #[error("CD not valid")]
    Invalid,
    /// AA64 == 0: VMSAv8-32 tables (not supported here).
    #[error("VMSAv8-32 stage 1 tables are not supported")]
    Aarch32,
    /// CD.S == 1 but the STE has S1STALLD or the SMMU cannot stall.
    #[error("stall fault model not allowed")]
    Stall,
    /// CD.S == 0 but the SMMU forces stalls.
    #[error("the SMMU forces the stall model")]
    StallForced,
    /// CD.A == 0 but SMMU_IDR0.TERM_MODEL == 1.
    #[error("CD.A must be 1 (TERM_MODEL)")]
    TermModel,
    /// ENDI selects an unimplemented endianness.
    #[error("translation table endianness not supported")]
    Endianness,
    /// HA/HD beyond SMMU_IDR0.HTTU.
    #[error("hardware table update not supported")]
    Httu,
    /// ASID\[15:8\] != 0 without SMMU_IDR0.ASID16.
    #[error("ASID {0} needs 16-bit ASIDs")]
    AsidTooWide(Asid),
    /// TxSZ out of its valid range.
    #[error("T{table}SZ {tsz} outside {min}..={max}")]
    Tsz {
        /// 0 for T0SZ, 1 for T1SZ.
        table: u8,
        /// The programmed value.
        tsz: u8,
        /// Smallest legal value.
        min: u8,
        /// Largest legal value.
        max: u8,
    },
    /// TGx reserved or not supported by the SMMU.
    #[error("TG{0} granule not supported")]
    Granule(u8),
    /// IPS above the OAS (the SMMU would cap it; rejected here).
    #[error("IPS of {ips} bits exceeds the {oas}-bit OAS")]
    IpsExceedsOas {
        /// IPS in bits.
        ips: u8,
        /// OAS in bits.
        oas: u8,
    },
    /// TTBx outside the effective IPS (or 48 bits below a 64K granule).
    #[error("TTB{0} out of range")]
    TtbOutOfRange(u8),
    /// TTBx not aligned to its starting-level table (the SMMU would ignore
    /// the low bits; rejected here).
    #[error("TTB{0} not aligned to its starting-level table")]
    TtbMisaligned(u8),
    /// S1CDMax above what the SMMU supports.
    #[error("S1CDMax {cdmax} exceeds SSIDSIZE {max}")]
    CdMax {
        /// The S1CDMax.
        cdmax: u8,
        /// SMMU_IDR1.SSIDSIZE.
        max: u8,
    },
    /// The SubstreamID selects no CD (C_BAD_SUBSTREAMID).
    #[error("bad SubstreamID {0}")]
    BadSubstreamId(Ssid),
    /// The transaction is terminated by S1DSS (F_STREAM_DISABLED).
    #[error("stream disabled for this substream")]
    StreamDisabled,
}

impl ContextDescriptor {
    /// Checks this CD as the SMMU would for a Non-secure NS-EL1 stream
    /// (§5.4, pseudocode `CdIllegal` of §5.4.2), more strictly in two places
    /// (IPS above the OAS, misaligned TTBx: the SMMU caps or ignores those
    /// bits; this hypervisor refuses them). Total on any input.
    pub fn validate(&self, policy: &CdPolicy) -> Result<(), CdError> {
        if !self.v() {
            return Err(CdError::Invalid);
        }
        if !self.aa64() {
            return Err(CdError::Aarch32);
        }
        if self.s() && (policy.s1stalld || policy.stall_model == StallModel::TerminateOnly) {
            return Err(CdError::Stall);
        }
        if !self.s() && policy.stall_model == StallModel::StallForced {
            return Err(CdError::StallForced);
        }
        if policy.term_model && !self.a() {
            return Err(CdError::TermModel);
        }
        let (walk0, walk1) = (!self.epd0(), !self.epd1());
        if (walk0 || walk1)
            && matches!(
                (policy.ttendian, self.endi()),
                (TtEndian::Little, true) | (TtEndian::Big, false)
            )
        {
            return Err(CdError::Endianness);
        }
        if ((self.ha() || self.hd()) && policy.httu == Httu::None)
            || (self.hd() && policy.httu != Httu::AccessDirty)
        {
            return Err(CdError::Httu);
        }
        if !policy.asid16 && self.asid().0 > 0xff {
            return Err(CdError::AsidTooWide(self.asid()));
        }
        let ips = output_size_bits(self.ips());
        if ips > policy.oas_bits {
            return Err(CdError::IpsExceedsOas {
                ips,
                oas: policy.oas_bits,
            });
        }
        if walk0 {
            check_table(policy, 0, self.t0sz(), self.tg0(), self.ttb0(), ips)?;
        }
        if walk1 {
            check_table(policy, 1, self.t1sz(), self.tg1(), self.ttb1(), ips)?;
        }
        Ok(())
    }
}

/// The checks of one translation table (TTB0 or TTB1) that walks.
fn check_table(
    policy: &CdPolicy,
    table: u8,
    tsz: u8,
    granule: Option<Granule>,
    ttb: Ipa,
    ips: u8,
) -> Result<(), CdError> {
    let granule = match granule {
        Some(g) if policy.granule_supported(g) => g,
        _ => return Err(CdError::Granule(table)),
    };
    let max = match (policy.stt, granule) {
        (false, _) => 39,
        (true, Granule::Size64K) => 47,
        (true, _) => 48,
    };
    let min = if policy.vax52 && granule == Granule::Size64K {
        12
    } else {
        16
    };
    if tsz < min || tsz > max {
        return Err(CdError::Tsz {
            table,
            tsz,
            min,
            max,
        });
    }
    if !fits(ttb.raw(), ips) || (granule != Granule::Size64K && !fits(ttb.raw(), 48)) {
        return Err(CdError::TtbOutOfRange(table));
    }
    let mut align = start_table_bytes(granule, tsz).max(16);
    if ips >= 52 {
        align = align.max(64);
    }
    if !ttb.is_aligned(align) {
        return Err(CdError::TtbMisaligned(table));
    }
    Ok(())
}

/// Size in bytes of the starting-level table of a VMSAv8-64 stage 1 walk
/// of a 64 - `tsz` bit input with `granule` (stage 1 never concatenates).
/// `tsz` must leave more input bits than the granule offset (true for every
/// legal TxSZ); otherwise the smallest table is returned.
pub fn start_table_bytes(granule: Granule, tsz: u8) -> u64 {
    let granule_bits = granule.shift();
    let stride = granule_bits - 3;
    let ia = 64u32.saturating_sub(u32::from(tsz));
    let above = ia.saturating_sub(granule_bits).max(1);
    // Bits resolved by the starting level: the remainder of a stride.
    let top = (above - 1) % stride + 1;
    1 << (top + 3)
}

/// Where a CD lives in its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdLocation {
    /// Entry `index` of a linear table (byte offset `index * 64` from
    /// S1ContextPtr); index 0 when the STE points to a single CD.
    Linear {
        /// Index in the table.
        index: u32,
    },
    /// Entry `l2_index` of the level 2 table that entry `l1_index` of the
    /// level 1 table (at S1ContextPtr) points to.
    TwoLevel {
        /// Index of the L1CD (byte offset `l1_index * 8`).
        l1_index: u32,
        /// Index of the CD in the level 2 table (byte offset `l2_index * 64`).
        l2_index: u32,
    },
}

/// The outcome of looking up the CD for a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdLookup {
    /// Translate with the CD at this location.
    Cd(CdLocation),
    /// No SubstreamID and S1DSS == bypass: stage 1 is skipped.
    Stage1Bypass,
}

/// Largest S1CDMax the architecture allows (SSIDSIZE is at most 20).
pub const MAX_S1CDMAX: u8 = 20;

/// The shape of a stream's CD table (STE.S1Fmt and STE.S1CDMax, §5.2, §5.3):
/// pure index arithmetic, no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdTable {
    /// The effective layout (reserved S1Fmt behaves as linear; S1Fmt is
    /// ignored without substreams).
    fmt: S1Fmt,
    /// The effective S1CDMax (0 when substreams are unsupported).
    cdmax: u8,
}

impl CdTable {
    /// The table an STE with `s1fmt` and `s1cdmax` describes on an SMMU with
    /// `ssid_bits` of SubstreamID (SMMU_IDR1.SSIDSIZE).
    pub fn new(s1fmt: S1Fmt, s1cdmax: u8, ssid_bits: u8) -> Result<Self, CdError> {
        if ssid_bits == 0 {
            // S1CDMax and S1Fmt are IGNORED: one CD.
            return Ok(Self {
                fmt: S1Fmt::Linear,
                cdmax: 0,
            });
        }
        let max = ssid_bits.min(MAX_S1CDMAX);
        if s1cdmax > max {
            return Err(CdError::CdMax {
                cdmax: s1cdmax,
                max,
            });
        }
        let fmt = match s1fmt {
            _ if s1cdmax == 0 => S1Fmt::Linear,
            S1Fmt::Reserved => S1Fmt::Linear,
            f => f,
        };
        Ok(Self {
            fmt,
            cdmax: s1cdmax,
        })
    }

    /// The table of `ste` (its S1Fmt and S1CDMax).
    pub fn of_ste(ste: &Ste, ssid_bits: u8) -> Result<Self, CdError> {
        Self::new(ste.s1fmt(), ste.s1cdmax(), ssid_bits)
    }

    /// The effective layout.
    pub fn fmt(&self) -> S1Fmt {
        self.fmt
    }

    /// The effective S1CDMax.
    pub fn s1cdmax(&self) -> u8 {
        self.cdmax
    }

    /// Whether substreams are enabled (S1CDMax != 0).
    pub fn substreams(&self) -> bool {
        self.cdmax != 0
    }

    /// The number of CDs (2^S1CDMax).
    pub fn num_cds(&self) -> u32 {
        1 << self.cdmax
    }

    /// log2 of the number of CDs in a level 2 table, for a 2-level layout.
    pub fn l2_bits(&self) -> Option<u8> {
        match self.fmt {
            S1Fmt::TwoLevel4K => Some(6),
            S1Fmt::TwoLevel64K => Some(10),
            S1Fmt::Linear | S1Fmt::Reserved => None,
        }
    }

    /// The number of L1CDs in the level 1 table (0 for a linear table).
    pub fn l1_entries(&self) -> u32 {
        match self.l2_bits() {
            Some(l2) => 1 << self.cdmax.saturating_sub(l2),
            None => 0,
        }
    }

    /// Bytes of the table S1ContextPtr points to (the linear table, or the
    /// level 1 table).
    pub fn table_bytes(&self) -> usize {
        match self.l2_bits() {
            Some(_) => self.l1_entries() as usize * 8,
            None => self.num_cds() as usize * CD_BYTES,
        }
    }

    /// Required alignment of S1ContextPtr: a linear table is aligned to its
    /// size, a level 1 table to its size or 64 bytes, whichever is greater.
    pub fn table_align(&self) -> usize {
        self.table_bytes().max(64)
    }

    /// Bytes of a level 2 table (4 KiB or 64 KiB), for a 2-level layout;
    /// level 2 tables are aligned to their size.
    pub fn l2_table_bytes(&self) -> Option<usize> {
        self.l2_bits().map(|b| (1usize << b) * CD_BYTES)
    }

    /// Where the CD of a transaction with SubstreamID `ssid` lives.
    pub fn locate(&self, ssid: Ssid) -> Result<CdLocation, CdError> {
        if ssid.0 >= self.num_cds() || !self.substreams() {
            return Err(CdError::BadSubstreamId(ssid));
        }
        Ok(self.index(ssid.0))
    }

    fn index(&self, ssid: u32) -> CdLocation {
        match self.l2_bits() {
            Some(l2) => CdLocation::TwoLevel {
                l1_index: ssid >> l2,
                l2_index: ssid & ((1 << l2) - 1),
            },
            None => CdLocation::Linear { index: ssid },
        }
    }

    /// What a transaction with or without a SubstreamID uses, given the
    /// STE's S1DSS (§5.2 S1CDMax, S1DSS).
    pub fn resolve(&self, ssid: Option<Ssid>, s1dss: S1Dss) -> Result<CdLookup, CdError> {
        match ssid {
            None if !self.substreams() => Ok(CdLookup::Cd(CdLocation::Linear { index: 0 })),
            None => match s1dss {
                S1Dss::Bypass => Ok(CdLookup::Stage1Bypass),
                S1Dss::Ssid0 => Ok(CdLookup::Cd(self.index(0))),
                S1Dss::Terminate | S1Dss::Reserved => Err(CdError::StreamDisabled),
            },
            Some(Ssid(0)) if self.substreams() && s1dss == S1Dss::Ssid0 => {
                Err(CdError::StreamDisabled)
            }
            Some(ssid) => self.locate(ssid).map(CdLookup::Cd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> CdPolicy {
        CdPolicy {
            ttendian: TtEndian::Little,
            stall_model: StallModel::StallAndTerminate,
            term_model: false,
            httu: Httu::None,
            asid16: true,
            stt: false,
            vax52: false,
            gran4k: true,
            gran16k: false,
            gran64k: true,
            oas_bits: 44,
            s1stalld: true,
        }
    }

    /// What a Linux guest writes: 48-bit VA, 4K granule, TTB1 disabled.
    fn linux_cd() -> ContextDescriptor {
        let mut cd = ContextDescriptor::default();
        cd.set_t0sz(16);
        cd.set_tg0(Granule::Size4K);
        cd.set_ir0(1);
        cd.set_or0(1);
        cd.set_sh0(3);
        cd.set_epd1(true);
        cd.set_v(true);
        cd.set_ips(4); // 44 bits
        cd.set_tbi0(false);
        cd.set_aa64(true);
        cd.set_r(true);
        cd.set_a(true);
        cd.set_aset(true);
        cd.set_asid(Asid(0x42));
        cd.set_ttb0(Ipa(0x4000_1000));
        cd.set_mair(0x0000_0000_0044_ff04);
        cd
    }

    #[test]
    fn field_positions_match_the_spec() {
        let cd = linux_cd();
        assert_eq!(
            cd.0[0],
            16 | (1 << 8)
                | (1 << 10)
                | (3 << 12)
                | (1 << 30)
                | (1 << 31)
                | (4 << 32)
                | (1 << 41)
                | (1 << 45)
                | (1 << 46)
                | (1 << 47)
                | (0x42 << 48)
        );
        assert_eq!(cd.0[1], 0x4000_1000);
        assert_eq!(cd.0[3], 0x0044_ff04);
        let mut cd = ContextDescriptor::default();
        cd.set_tg1(Granule::Size4K);
        cd.set_t1sz(25);
        cd.set_ha(true);
        cd.set_hd(true);
        cd.set_s(true);
        cd.set_wxn(true);
        cd.set_uwxn(true);
        cd.set_pan(true);
        cd.set_affd(true);
        cd.set_tbi1(true);
        cd.set_endi(true);
        cd.set_epd0(true);
        assert_eq!(
            cd.0[0],
            (25 << 16)
                | (2 << 22)
                | (1 << 42)
                | (1 << 43)
                | (1 << 44)
                | (1 << 36)
                | (1 << 37)
                | (1 << 40)
                | (1 << 35)
                | (1 << 39)
                | (1 << 15)
                | (1 << 14)
        );
        cd.set_nscfg0(true);
        cd.set_had0(true);
        assert_eq!(cd.0[1], 0b11);
        cd.set_ttb1(Ipa(0x000f_ffff_ffff_fff0));
        cd.set_had1(true);
        assert_eq!(cd.0[2], 0x000f_ffff_ffff_fff0 | 0b10);
        cd.set_amair1(0xdead_beef);
        assert_eq!(cd.0[4], 0xdead_beef << 32);
        assert_eq!(cd.tg1(), Some(Granule::Size4K));
    }

    #[test]
    fn a_linux_cd_is_legal() {
        assert_eq!(linux_cd().validate(&policy()), Ok(()));
    }

    #[test]
    fn illegal_cds_are_rejected() {
        let p = policy();
        let mut cd = linux_cd();
        cd.set_v(false);
        assert_eq!(cd.validate(&p), Err(CdError::Invalid));

        let mut cd = linux_cd();
        cd.set_aa64(false);
        assert_eq!(cd.validate(&p), Err(CdError::Aarch32));

        let mut cd = linux_cd();
        cd.set_t0sz(12);
        assert_eq!(
            cd.validate(&p),
            Err(CdError::Tsz {
                table: 0,
                tsz: 12,
                min: 16,
                max: 39
            })
        );
        cd.set_t0sz(40);
        assert!(matches!(cd.validate(&p), Err(CdError::Tsz { .. })));
        let stt = CdPolicy { stt: true, ..p };
        cd.set_ttb0(Ipa(0x4000_1000)); // 16 MiB input: an 8-entry starting table
        assert_eq!(cd.validate(&stt), Ok(()));

        let mut cd = linux_cd();
        cd.set_tg0(Granule::Size16K);
        assert_eq!(cd.validate(&p), Err(CdError::Granule(0)));
        cd.put(CD0::TG0, 3);
        assert_eq!(cd.validate(&p), Err(CdError::Granule(0)));

        let mut cd = linux_cd();
        cd.set_ips(5);
        assert_eq!(
            cd.validate(&p),
            Err(CdError::IpsExceedsOas { ips: 48, oas: 44 })
        );

        let mut cd = linux_cd();
        cd.set_asid(Asid(0x1ff));
        assert_eq!(cd.validate(&p), Ok(()));
        let p8 = CdPolicy { asid16: false, ..p };
        assert_eq!(cd.validate(&p8), Err(CdError::AsidTooWide(Asid(0x1ff))));

        let mut cd = linux_cd();
        cd.set_ttb0(Ipa(1 << 44));
        assert_eq!(cd.validate(&p), Err(CdError::TtbOutOfRange(0)));
        cd.set_ttb0(Ipa(0x4000_1800));
        assert_eq!(cd.validate(&p), Err(CdError::TtbMisaligned(0)));

        let mut cd = linux_cd();
        cd.set_s(true);
        assert_eq!(cd.validate(&p), Err(CdError::Stall), "STE.S1STALLD is set");
        let forced = CdPolicy {
            stall_model: StallModel::StallForced,
            s1stalld: false,
            ..p
        };
        assert_eq!(linux_cd().validate(&forced), Err(CdError::StallForced));

        let mut cd = linux_cd();
        cd.set_ha(true);
        assert_eq!(cd.validate(&p), Err(CdError::Httu));
        let ha = CdPolicy {
            httu: Httu::Access,
            ..p
        };
        assert_eq!(cd.validate(&ha), Ok(()));
        cd.set_hd(true);
        assert_eq!(cd.validate(&ha), Err(CdError::Httu));

        let mut cd = linux_cd();
        cd.set_endi(true);
        assert_eq!(cd.validate(&p), Err(CdError::Endianness));

        let mut cd = linux_cd();
        cd.set_a(false);
        assert_eq!(
            cd.validate(&CdPolicy {
                term_model: true,
                ..p
            }),
            Err(CdError::TermModel)
        );

        // TTB1 is checked only when it walks.
        let mut cd = linux_cd();
        cd.set_epd1(false);
        assert_eq!(cd.validate(&p), Err(CdError::Granule(1)));
        cd.set_tg1(Granule::Size4K);
        cd.set_t1sz(16);
        cd.set_ttb1(Ipa(0x5000_0000));
        assert_eq!(cd.validate(&p), Ok(()));
        // Disabled TTB0: its fields are ignored.
        cd.set_epd0(true);
        cd.set_t0sz(0);
        assert_eq!(cd.validate(&p), Ok(()));
    }

    #[test]
    fn starting_table_sizes() {
        assert_eq!(start_table_bytes(Granule::Size4K, 16), 4096);
        assert_eq!(start_table_bytes(Granule::Size4K, 25), 4096);
        assert_eq!(start_table_bytes(Granule::Size4K, 24), 16);
        assert_eq!(start_table_bytes(Granule::Size4K, 32), 32);
        assert_eq!(start_table_bytes(Granule::Size64K, 22), 65536);
        assert_eq!(start_table_bytes(Granule::Size64K, 25), 8192);
    }

    #[test]
    fn l1cd_descriptor() {
        let d = L1Cd::new(Ipa(0x1234_5000));
        assert_eq!(d.0, 0x1234_5001);
        assert!(d.valid());
        assert_eq!(d.l2ptr(), Ipa(0x1234_5000));
        assert!(!L1Cd::invalid().valid());
    }

    #[test]
    fn single_cd_without_substreams() {
        let t = CdTable::new(S1Fmt::TwoLevel64K, 0, 20).unwrap();
        assert_eq!(t.fmt(), S1Fmt::Linear, "S1Fmt ignored when S1CDMax == 0");
        assert_eq!(
            t.resolve(None, S1Dss::Terminate),
            Ok(CdLookup::Cd(CdLocation::Linear { index: 0 }))
        );
        assert_eq!(
            t.resolve(Some(Ssid(0)), S1Dss::Bypass),
            Err(CdError::BadSubstreamId(Ssid(0)))
        );
        // An SMMU without substreams ignores S1CDMax.
        let t = CdTable::new(S1Fmt::Linear, 31, 0).unwrap();
        assert_eq!(t.num_cds(), 1);
    }

    #[test]
    fn linear_multi_pasid_table() {
        let t = CdTable::new(S1Fmt::Linear, 4, 20).unwrap();
        assert_eq!(t.num_cds(), 16);
        assert_eq!(t.table_bytes(), 1024);
        assert_eq!(t.table_align(), 1024);
        assert_eq!(t.locate(Ssid(15)), Ok(CdLocation::Linear { index: 15 }));
        assert_eq!(t.locate(Ssid(16)), Err(CdError::BadSubstreamId(Ssid(16))));
        assert_eq!(t.resolve(None, S1Dss::Bypass), Ok(CdLookup::Stage1Bypass));
        assert_eq!(
            t.resolve(None, S1Dss::Terminate),
            Err(CdError::StreamDisabled)
        );
        assert_eq!(
            t.resolve(None, S1Dss::Reserved),
            Err(CdError::StreamDisabled)
        );
        assert_eq!(
            t.resolve(None, S1Dss::Ssid0),
            Ok(CdLookup::Cd(CdLocation::Linear { index: 0 }))
        );
        assert_eq!(
            t.resolve(Some(Ssid(0)), S1Dss::Ssid0),
            Err(CdError::StreamDisabled)
        );
        assert_eq!(
            t.resolve(Some(Ssid(0)), S1Dss::Bypass),
            Ok(CdLookup::Cd(CdLocation::Linear { index: 0 }))
        );
        assert_eq!(
            CdTable::new(S1Fmt::Reserved, 4, 20).unwrap().fmt(),
            S1Fmt::Linear
        );
    }

    #[test]
    fn two_level_tables() {
        // 2^16 PASIDs in 64K leaves: 64 L1CDs, 1024 CDs per leaf.
        let t = CdTable::new(S1Fmt::TwoLevel64K, 16, 20).unwrap();
        assert_eq!(t.l1_entries(), 64);
        assert_eq!(t.table_bytes(), 512);
        assert_eq!(t.l2_table_bytes(), Some(64 * 1024));
        assert_eq!(
            t.locate(Ssid(0x1234)),
            Ok(CdLocation::TwoLevel {
                l1_index: 4,
                l2_index: 0x234
            })
        );
        assert_eq!(
            t.locate(Ssid(0xffff)),
            Ok(CdLocation::TwoLevel {
                l1_index: 63,
                l2_index: 1023
            })
        );
        assert!(t.locate(Ssid(0x1_0000)).is_err());
        // 4K leaves of 64 CDs.
        let t = CdTable::new(S1Fmt::TwoLevel4K, 10, 20).unwrap();
        assert_eq!(t.l1_entries(), 16);
        assert_eq!(
            t.locate(Ssid(65)),
            Ok(CdLocation::TwoLevel {
                l1_index: 1,
                l2_index: 1
            })
        );
        // Fewer CDs than a leaf: only L1 index 0; the L1 table is 64-byte aligned.
        let t = CdTable::new(S1Fmt::TwoLevel4K, 3, 20).unwrap();
        assert_eq!(t.l1_entries(), 1);
        assert_eq!(t.table_align(), 64);
        assert_eq!(
            t.locate(Ssid(7)),
            Ok(CdLocation::TwoLevel {
                l1_index: 0,
                l2_index: 7
            })
        );
        assert!(t.locate(Ssid(8)).is_err());
        // Beyond SSIDSIZE.
        assert_eq!(
            CdTable::new(S1Fmt::TwoLevel4K, 9, 8),
            Err(CdError::CdMax { cdmax: 9, max: 8 })
        );
    }

    proptest! {
        #[test]
        fn validate_never_panics(words in any::<[u64; 8]>(), oas in 0u8..=255, stt: bool,
                                 vax52: bool, asid16: bool) {
            let p = CdPolicy { oas_bits: oas, stt, vax52, asid16, ..policy() };
            let cd = ContextDescriptor(words);
            if cd.validate(&p).is_ok() {
                prop_assert!(cd.v() && cd.aa64());
            }
        }

        #[test]
        fn lookup_never_panics_and_stays_in_table(fmt in 0u8..4, cdmax in 0u8..=31,
                                                  ssid_bits in 0u8..=31, ssid: u32, dss in 0u8..4) {
            if let Ok(t) = CdTable::new(S1Fmt::from_bits(fmt), cdmax, ssid_bits) {
                if let Ok(CdLookup::Cd(loc)) = t.resolve(Some(Ssid(ssid)), S1Dss::from_bits(dss)) {
                    prop_assert!(ssid < t.num_cds());
                    match loc {
                        CdLocation::Linear { index } => {
                            prop_assert!((index as usize + 1) * CD_BYTES <= t.table_bytes());
                        }
                        CdLocation::TwoLevel { l1_index, l2_index } => {
                            prop_assert!(l1_index < t.l1_entries());
                            prop_assert!((l2_index as usize + 1) * CD_BYTES <= t.l2_table_bytes().unwrap());
                        }
                    }
                }
            }
        }
    }
}
