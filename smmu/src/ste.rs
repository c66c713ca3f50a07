//! The Stream Table Entry (STE), IHI 0070 §5.2.
//!
//! An STE is the 64-byte per-StreamID configuration the SMMU fetches from the
//! stream table (see [`crate::strtab`]): whether the stream aborts, bypasses,
//! or translates through stage 1 (a context-descriptor table, see
//! [`crate::cd`]), stage 2 (a VM's page tables) or both (nested).
//!
//! This module encodes STEs ([`Ste::abort`], [`Ste::stage2`],
//! [`Ste::nested`]), decodes and classifies them as the SMMU would, rejecting
//! what the specification calls ILLEGAL ([`Ste::validate`], safe on any
//! input because guests write STEs too), and computes the safe order in which
//! a live STE is rewritten ([`update_plan`], §3.21.3).

use crate::addr::{Ipa, PhysAddr, Vmid};
use core::fmt;
use tock_registers::fields::{Field, FieldValue};
use tock_registers::{register_bitfields, LocalRegisterCopy, RegisterLongName};

register_bitfields![u64,
    /// STE bits \[63:0\].
    pub STE0 [
        /// V, bit \[0\] (§5.2): the STE is valid.
        V OFFSET(0) NUMBITS(1) [],
        /// Config, bits \[3:1\] (§5.2): abort, bypass, stage 1, stage 2, nested.
        CONFIG OFFSET(1) NUMBITS(3) [],
        /// S1Fmt, bits \[5:4\] (§5.2): layout of the CD table.
        S1FMT OFFSET(4) NUMBITS(2) [],
        /// S1ContextPtr, bits \[55:6\] (§5.2): address of the CD (table), bits \[55:6\].
        S1CONTEXTPTR OFFSET(6) NUMBITS(50) [],
        /// S1CDMax, bits \[63:59\] (§5.2): log2 of the number of CDs.
        S1CDMAX OFFSET(59) NUMBITS(5) []
    ],
    /// STE bits \[127:64\].
    pub STE1 [
        /// S1DSS, bits \[65:64\] (§5.2): default substream behaviour.
        S1DSS OFFSET(0) NUMBITS(2) [],
        /// S1CIR, bits \[67:66\] (§5.2): inner cacheability of CD fetches.
        S1CIR OFFSET(2) NUMBITS(2) [],
        /// S1COR, bits \[69:68\] (§5.2): outer cacheability of CD fetches.
        S1COR OFFSET(4) NUMBITS(2) [],
        /// S1CSH, bits \[71:70\] (§5.2): shareability of CD fetches.
        S1CSH OFFSET(6) NUMBITS(2) [],
        /// DCP, bit \[81\] (§5.2): directed cache prefetch permitted.
        DCP OFFSET(17) NUMBITS(1) [],
        /// PPAR, bit \[82\] (§5.2): PRI auto-responses carry a PASID.
        PPAR OFFSET(18) NUMBITS(1) [],
        /// MEV, bit \[83\] (§5.2): events may be merged.
        MEV OFFSET(19) NUMBITS(1) [],
        /// S1STALLD, bit \[91\] (§5.2): stage 1 stalls disallowed.
        S1STALLD OFFSET(27) NUMBITS(1) [],
        /// EATS, bits \[93:92\] (§5.2): PCIe ATS enable.
        EATS OFFSET(28) NUMBITS(2) [],
        /// STRW, bits \[95:94\] (§5.2): StreamWorld (EL1/EL2) for stage 1 only.
        STRW OFFSET(30) NUMBITS(2) [],
        /// MemAttr, bits \[99:96\] (§5.2): memory type override.
        MEMATTR OFFSET(32) NUMBITS(4) [],
        /// MTCFG, bit \[100\] (§5.2): use MemAttr.
        MTCFG OFFSET(36) NUMBITS(1) [],
        /// ALLOCCFG, bits \[104:101\] (§5.2): allocation hints override.
        ALLOCCFG OFFSET(37) NUMBITS(4) [],
        /// SHCFG, bits \[109:108\] (§5.2): shareability override (0b01: incoming).
        SHCFG OFFSET(44) NUMBITS(2) [],
        /// NSCFG, bits \[111:110\] (§5.2): NS attribute override (Secure STEs).
        NSCFG OFFSET(46) NUMBITS(2) [],
        /// PRIVCFG, bits \[113:112\] (§5.2): privilege override.
        PRIVCFG OFFSET(48) NUMBITS(2) [],
        /// INSTCFG, bits \[115:114\] (§5.2): instruction/data override.
        INSTCFG OFFSET(50) NUMBITS(2) []
    ],
    /// STE bits \[191:128\].
    pub STE2 [
        /// S2VMID, bits \[143:128\] (§5.2): the VMID.
        S2VMID OFFSET(0) NUMBITS(16) [],
        /// S2T0SZ, bits \[165:160\] (§5.2): IPA size is 64 - S2T0SZ bits.
        S2T0SZ OFFSET(32) NUMBITS(6) [],
        /// S2SL0, bits \[167:166\] (§5.2): starting level, as VTCR_EL2.SL0.
        S2SL0 OFFSET(38) NUMBITS(2) [],
        /// S2IR0, bits \[169:168\] (§5.2): inner cacheability of walks.
        S2IR0 OFFSET(40) NUMBITS(2) [],
        /// S2OR0, bits \[171:170\] (§5.2): outer cacheability of walks.
        S2OR0 OFFSET(42) NUMBITS(2) [],
        /// S2SH0, bits \[173:172\] (§5.2): shareability of walks.
        S2SH0 OFFSET(44) NUMBITS(2) [],
        /// S2TG, bits \[175:174\] (§5.2): granule (0: 4K, 1: 64K, 2: 16K).
        S2TG OFFSET(46) NUMBITS(2) [],
        /// S2PS, bits \[178:176\] (§5.2): output size, as VTCR_EL2.PS.
        S2PS OFFSET(48) NUMBITS(3) [],
        /// S2AA64, bit \[179\] (§5.2): VMSAv8-64 tables.
        S2AA64 OFFSET(51) NUMBITS(1) [],
        /// S2ENDI, bit \[180\] (§5.2): big-endian tables.
        S2ENDI OFFSET(52) NUMBITS(1) [],
        /// S2AFFD, bit \[181\] (§5.2): access flag faults disabled.
        S2AFFD OFFSET(53) NUMBITS(1) [],
        /// S2PTW, bit \[182\] (§5.2): stage 1 walks to Device memory fault.
        S2PTW OFFSET(54) NUMBITS(1) [],
        /// S2HD, bit \[183\] (§5.2): hardware dirty-state update.
        S2HD OFFSET(55) NUMBITS(1) [],
        /// S2HA, bit \[184\] (§5.2): hardware access-flag update.
        S2HA OFFSET(56) NUMBITS(1) [],
        /// S2S, bit \[185\] (§5.2, §5.5): stage 2 faults stall.
        S2S OFFSET(57) NUMBITS(1) [],
        /// S2R, bit \[186\] (§5.2, §5.5): stage 2 faults are recorded.
        S2R OFFSET(58) NUMBITS(1) []
    ],
    /// STE bits \[255:192\].
    pub STE3 [
        /// S2TTB, bits \[243:196\] (§5.2): stage 2 table base, address bits \[51:4\].
        S2TTB OFFSET(4) NUMBITS(48) []
    ]
];

/// Number of 64-bit words in an STE.
pub const STE_WORDS: usize = 8;

/// A Stream Table Entry, exactly as the SMMU reads it (little-endian words).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct Ste(pub [u64; STE_WORDS]);

const _: () = assert!(core::mem::size_of::<Ste>() == 64);

/// Binds a bitfield register type of this module to its word in the STE.
trait SteWord: RegisterLongName {
    const INDEX: usize;
}
impl SteWord for STE0::Register {
    const INDEX: usize = 0;
}
impl SteWord for STE1::Register {
    const INDEX: usize = 1;
}
impl SteWord for STE2::Register {
    const INDEX: usize = 2;
}
impl SteWord for STE3::Register {
    const INDEX: usize = 3;
}

/// Conversion between a field's raw value and its accessor type. Values
/// read from a field are already masked to its width, so the narrowing
/// conversions never lose bits; writes are masked by the field.
pub(crate) trait FieldType: Copy {
    fn from_raw(raw: u64) -> Self;
    fn into_raw(self) -> u64;
}
impl FieldType for bool {
    fn from_raw(raw: u64) -> Self {
        raw != 0
    }
    fn into_raw(self) -> u64 {
        u64::from(self)
    }
}
macro_rules! int_field_type {
    ($($t:ty),*) => {$(
        impl FieldType for $t {
            fn from_raw(raw: u64) -> Self {
                raw as $t
            }
            fn into_raw(self) -> u64 {
                u64::from(self)
            }
        }
    )*};
}
int_field_type!(u8, u16, u32, u64);

/// Generates a getter and a setter per field, on top of `get`/`put`.
macro_rules! field_accessors {
    ($ty:ident { $( $(#[$doc:meta])* $get:ident / $set:ident : $reg:ident :: $field:ident => $t:ty; )* }) => {
        impl $ty {
            $(
                $(#[$doc])*
                pub fn $get(&self) -> $t {
                    <$t as FieldType>::from_raw(self.get($reg::$field))
                }

                #[doc = concat!("Sets the field returned by [`Self::", stringify!($get), "`], masked to its width.")]
                pub fn $set(&mut self, value: $t) {
                    self.put($reg::$field, <$t as FieldType>::into_raw(value))
                }
            )*
        }
    };
}
pub(crate) use field_accessors;

impl Ste {
    fn reg<R: SteWord>(&self) -> LocalRegisterCopy<u64, R> {
        LocalRegisterCopy::new(self.0[R::INDEX])
    }

    /// The one field-access helper: reads `field` of its word.
    fn get<R: SteWord>(&self, field: Field<u64, R>) -> u64 {
        self.reg::<R>().read(field)
    }

    /// The one field-update helper: writes `value` (masked) into `field`.
    fn put<R: SteWord>(&mut self, field: Field<u64, R>, value: u64) {
        self.modify(field.val(value));
    }

    fn modify<R: SteWord>(&mut self, value: FieldValue<u64, R>) {
        let mut reg = self.reg::<R>();
        reg.modify(value);
        self.0[R::INDEX] = reg.get();
    }
}

field_accessors!(Ste {
    /// V, bit \[0\] (§5.2).
    v / set_v: STE0::V => bool;
    /// S1CDMax, bits \[63:59\] (§5.2): the table holds 2^S1CDMax CDs.
    s1cdmax / set_s1cdmax: STE0::S1CDMAX => u8;
    /// S1CIR, bits \[67:66\] (§5.2).
    s1cir / set_s1cir: STE1::S1CIR => u8;
    /// S1COR, bits \[69:68\] (§5.2).
    s1cor / set_s1cor: STE1::S1COR => u8;
    /// S1CSH, bits \[71:70\] (§5.2).
    s1csh / set_s1csh: STE1::S1CSH => u8;
    /// DCP, bit \[81\] (§5.2).
    dcp / set_dcp: STE1::DCP => bool;
    /// PPAR, bit \[82\] (§5.2).
    ppar / set_ppar: STE1::PPAR => bool;
    /// MEV, bit \[83\] (§5.2).
    mev / set_mev: STE1::MEV => bool;
    /// S1STALLD, bit \[91\] (§5.2).
    s1stalld / set_s1stalld: STE1::S1STALLD => bool;
    /// MemAttr, bits \[99:96\] (§5.2).
    memattr / set_memattr: STE1::MEMATTR => u8;
    /// MTCFG, bit \[100\] (§5.2).
    mtcfg / set_mtcfg: STE1::MTCFG => bool;
    /// ALLOCCFG, bits \[104:101\] (§5.2).
    alloccfg / set_alloccfg: STE1::ALLOCCFG => u8;
    /// SHCFG, bits \[109:108\] (§5.2): 0b00 NSH, 0b01 incoming, 0b10 OSH, 0b11 ISH.
    shcfg / set_shcfg: STE1::SHCFG => u8;
    /// NSCFG, bits \[111:110\] (§5.2).
    nscfg / set_nscfg: STE1::NSCFG => u8;
    /// PRIVCFG, bits \[113:112\] (§5.2).
    privcfg / set_privcfg: STE1::PRIVCFG => u8;
    /// INSTCFG, bits \[115:114\] (§5.2).
    instcfg / set_instcfg: STE1::INSTCFG => u8;
    /// S2T0SZ, bits \[165:160\] (§5.2).
    s2t0sz / set_s2t0sz: STE2::S2T0SZ => u8;
    /// S2SL0, bits \[167:166\] (§5.2).
    s2sl0 / set_s2sl0: STE2::S2SL0 => u8;
    /// S2IR0, bits \[169:168\] (§5.2).
    s2ir0 / set_s2ir0: STE2::S2IR0 => u8;
    /// S2OR0, bits \[171:170\] (§5.2).
    s2or0 / set_s2or0: STE2::S2OR0 => u8;
    /// S2SH0, bits \[173:172\] (§5.2).
    s2sh0 / set_s2sh0: STE2::S2SH0 => u8;
    /// S2PS, bits \[178:176\] (§5.2), encoded as VTCR_EL2.PS (see [`output_size_bits`]).
    s2ps / set_s2ps: STE2::S2PS => u8;
    /// S2AA64, bit \[179\] (§5.2).
    s2aa64 / set_s2aa64: STE2::S2AA64 => bool;
    /// S2ENDI, bit \[180\] (§5.2).
    s2endi / set_s2endi: STE2::S2ENDI => bool;
    /// S2AFFD, bit \[181\] (§5.2).
    s2affd / set_s2affd: STE2::S2AFFD => bool;
    /// S2PTW, bit \[182\] (§5.2).
    s2ptw / set_s2ptw: STE2::S2PTW => bool;
    /// S2HD, bit \[183\] (§5.2).
    s2hd / set_s2hd: STE2::S2HD => bool;
    /// S2HA, bit \[184\] (§5.2).
    s2ha / set_s2ha: STE2::S2HA => bool;
    /// S2S, bit \[185\] (§5.2).
    s2s / set_s2s: STE2::S2S => bool;
    /// S2R, bit \[186\] (§5.2).
    s2r / set_s2r: STE2::S2R => bool;
});

/// STE.Config, bits \[3:1\] (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// 0b000: abort, no event.
    Abort,
    /// 0b001..=0b011: reserved, behaves as [`Config::Abort`].
    Reserved(u8),
    /// 0b100: both stages bypass.
    Bypass,
    /// 0b101: stage 1 translates, stage 2 bypasses.
    S1Translate,
    /// 0b110: stage 1 bypasses, stage 2 translates.
    S2Translate,
    /// 0b111: both stages translate.
    Nested,
}

impl Config {
    /// Decodes the 3-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b111 {
            0b000 => Self::Abort,
            0b100 => Self::Bypass,
            0b101 => Self::S1Translate,
            0b110 => Self::S2Translate,
            0b111 => Self::Nested,
            r => Self::Reserved(r),
        }
    }

    /// The 3-bit encoding.
    pub const fn bits(self) -> u8 {
        match self {
            Self::Abort => 0b000,
            Self::Reserved(r) => r & 0b011,
            Self::Bypass => 0b100,
            Self::S1Translate => 0b101,
            Self::S2Translate => 0b110,
            Self::Nested => 0b111,
        }
    }

    /// Whether traffic can pass (Config\[2\] == 1).
    pub const fn passes(self) -> bool {
        self.bits() & 0b100 != 0
    }

    /// Whether stage 1 translates (Config == 0b1x1).
    pub const fn stage1(self) -> bool {
        self.bits() & 0b101 == 0b101
    }

    /// Whether stage 2 translates (Config == 0b11x).
    pub const fn stage2(self) -> bool {
        self.bits() & 0b110 == 0b110
    }
}

/// STE.S1Fmt, bits \[5:4\] (§5.2): the layout of the CD table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S1Fmt {
    /// 0b00: a linear table of 2^S1CDMax CDs.
    Linear,
    /// 0b01: 2-level, 4 KiB leaf tables of 64 CDs.
    TwoLevel4K,
    /// 0b10: 2-level, 64 KiB leaf tables of 1024 CDs.
    TwoLevel64K,
    /// 0b11: reserved, behaves as [`S1Fmt::Linear`].
    Reserved,
}

impl S1Fmt {
    /// Decodes the 2-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Linear,
            1 => Self::TwoLevel4K,
            2 => Self::TwoLevel64K,
            _ => Self::Reserved,
        }
    }

    /// The 2-bit encoding.
    pub const fn bits(self) -> u8 {
        self as u8
    }
}

/// STE.S1DSS, bits \[65:64\] (§5.2): what a transaction without a SubstreamID
/// does when substreams are enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S1Dss {
    /// 0b00: terminate (F_STREAM_DISABLED).
    Terminate,
    /// 0b01: bypass stage 1.
    Bypass,
    /// 0b10: use the CD of substream 0 (which transactions with a
    /// SubstreamID can then no longer select).
    Ssid0,
    /// 0b11: reserved, behaves as [`S1Dss::Terminate`].
    Reserved,
}

impl S1Dss {
    /// Decodes the 2-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Terminate,
            1 => Self::Bypass,
            2 => Self::Ssid0,
            _ => Self::Reserved,
        }
    }

    /// The 2-bit encoding.
    pub const fn bits(self) -> u8 {
        self as u8
    }
}

/// STE.EATS, bits \[93:92\] (§5.2): PCIe ATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eats {
    /// 0b00: translation requests are refused.
    Abort,
    /// 0b01: full ATS.
    Full,
    /// 0b10: split-stage ATS (nested only).
    Split,
    /// 0b11: full ATS with DPT checks (reserved, as 0b00, without DPT).
    FullDpt,
}

impl Eats {
    /// Decodes the 2-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::Abort,
            1 => Self::Full,
            2 => Self::Split,
            _ => Self::FullDpt,
        }
    }

    /// The 2-bit encoding.
    pub const fn bits(self) -> u8 {
        self as u8
    }
}

/// STE.STRW, bits \[95:94\] (§5.2), for a Non-secure STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strw {
    /// 0b00: NS-EL1.
    El1,
    /// 0b01: EL3 in a Secure STE; reserved and ILLEGAL in a Non-secure one.
    El3,
    /// 0b10: NS-EL2 (or NS-EL2-E2H with SMMU_CR2.E2H).
    El2,
    /// 0b11: reserved, ILLEGAL.
    Reserved,
}

impl Strw {
    /// Decodes the 2-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::El1,
            1 => Self::El3,
            2 => Self::El2,
            _ => Self::Reserved,
        }
    }

    /// The 2-bit encoding.
    pub const fn bits(self) -> u8 {
        self as u8
    }
}

/// A translation granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    /// 4 KiB.
    Size4K,
    /// 16 KiB.
    Size16K,
    /// 64 KiB.
    Size64K,
}

impl Granule {
    /// log2 of the granule size in bytes.
    pub const fn shift(self) -> u32 {
        match self {
            Self::Size4K => 12,
            Self::Size16K => 14,
            Self::Size64K => 16,
        }
    }

    /// Decodes a TG0-style field (STE.S2TG, CD.TG0): 0 4K, 1 64K, 2 16K,
    /// 3 reserved.
    pub const fn from_tg0(bits: u8) -> Option<Self> {
        match bits & 3 {
            0 => Some(Self::Size4K),
            1 => Some(Self::Size64K),
            2 => Some(Self::Size16K),
            _ => None,
        }
    }

    /// The TG0-style encoding.
    pub const fn tg0(self) -> u8 {
        match self {
            Self::Size4K => 0,
            Self::Size64K => 1,
            Self::Size16K => 2,
        }
    }
}

/// The address size in bits of a VTCR_EL2.PS / TCR.IPS / SMMU_IDR5.OAS
/// style 3-bit encoding (§5.2 S2PS).
pub const fn output_size_bits(enc: u8) -> u8 {
    match enc & 7 {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        6 => 52,
        _ => 56,
    }
}

/// The 3-bit encoding of an address size in bits, if it has one.
pub const fn output_size_encoding(bits: u8) -> Option<u8> {
    match bits {
        32 => Some(0),
        36 => Some(1),
        40 => Some(2),
        42 => Some(3),
        44 => Some(4),
        48 => Some(5),
        52 => Some(6),
        56 => Some(7),
        _ => None,
    }
}

/// Typed accessors for the enumerated and address fields.
impl Ste {
    /// Config, bits \[3:1\] (§5.2).
    pub fn config(&self) -> Config {
        Config::from_bits(self.get(STE0::CONFIG) as u8)
    }

    /// Sets Config, bits \[3:1\].
    pub fn set_config(&mut self, config: Config) {
        self.put(STE0::CONFIG, u64::from(config.bits()));
    }

    /// S1Fmt, bits \[5:4\] (§5.2).
    pub fn s1fmt(&self) -> S1Fmt {
        S1Fmt::from_bits(self.get(STE0::S1FMT) as u8)
    }

    /// Sets S1Fmt, bits \[5:4\].
    pub fn set_s1fmt(&mut self, fmt: S1Fmt) {
        self.put(STE0::S1FMT, u64::from(fmt.bits()));
    }

    /// S1ContextPtr, bits \[55:6\] (§5.2), as an IPA: what it is when stage 2
    /// translates (nested).
    pub fn s1_context_ptr(&self) -> Ipa {
        Ipa(self.get(STE0::S1CONTEXTPTR) << 6)
    }

    /// Sets S1ContextPtr, bits \[55:6\]; bits \[5:0\] and above bit 55 of the
    /// address are dropped.
    pub fn set_s1_context_ptr(&mut self, ptr: Ipa) {
        self.put(STE0::S1CONTEXTPTR, ptr.raw() >> 6);
    }

    /// S1ContextPtr as a physical address: what it is in a stage-1-only STE.
    pub fn s1_context_ptr_pa(&self) -> PhysAddr {
        PhysAddr(self.s1_context_ptr().raw())
    }

    /// S1DSS, bits \[65:64\] (§5.2).
    pub fn s1dss(&self) -> S1Dss {
        S1Dss::from_bits(self.get(STE1::S1DSS) as u8)
    }

    /// Sets S1DSS, bits \[65:64\].
    pub fn set_s1dss(&mut self, dss: S1Dss) {
        self.put(STE1::S1DSS, u64::from(dss.bits()));
    }

    /// EATS, bits \[93:92\] (§5.2).
    pub fn eats(&self) -> Eats {
        Eats::from_bits(self.get(STE1::EATS) as u8)
    }

    /// Sets EATS, bits \[93:92\].
    pub fn set_eats(&mut self, eats: Eats) {
        self.put(STE1::EATS, u64::from(eats.bits()));
    }

    /// STRW, bits \[95:94\] (§5.2).
    pub fn strw(&self) -> Strw {
        Strw::from_bits(self.get(STE1::STRW) as u8)
    }

    /// Sets STRW, bits \[95:94\].
    pub fn set_strw(&mut self, strw: Strw) {
        self.put(STE1::STRW, u64::from(strw.bits()));
    }

    /// S2VMID, bits \[143:128\] (§5.2).
    pub fn s2vmid(&self) -> Vmid {
        Vmid(self.get(STE2::S2VMID) as u16)
    }

    /// Sets S2VMID, bits \[143:128\].
    pub fn set_s2vmid(&mut self, vmid: Vmid) {
        self.put(STE2::S2VMID, u64::from(vmid.0));
    }

    /// S2TG, bits \[175:174\] (§5.2); `None` for the reserved encoding.
    pub fn s2tg(&self) -> Option<Granule> {
        Granule::from_tg0(self.get(STE2::S2TG) as u8)
    }

    /// Sets S2TG, bits \[175:174\].
    pub fn set_s2tg(&mut self, granule: Granule) {
        self.put(STE2::S2TG, u64::from(granule.tg0()));
    }

    /// S2TTB, bits \[243:196\] (§5.2): the stage 2 table base.
    pub fn s2ttb(&self) -> PhysAddr {
        PhysAddr(self.get(STE3::S2TTB) << 4)
    }

    /// Sets S2TTB; address bits \[3:0\] and above bit 51 are dropped.
    pub fn set_s2ttb(&mut self, ttb: PhysAddr) {
        self.put(STE3::S2TTB, ttb.raw() >> 4);
    }
}

/// SHCFG value "use the incoming shareability" (§5.2). With
/// SMMU_IDR1.ATTR_TYPES_OVR == 1, SHCFG == 0 would force cacheable DMA to be
/// Non-shareable, so every STE this module builds uses the incoming value.
pub const SHCFG_INCOMING: u8 = 0b01;

/// The stage 2 half of an STE: a VM's address space as the SMMU walks it.
/// The stage-2 page-table module produces it for each VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Config {
    /// The VM's VMID (S2VMID).
    pub vmid: Vmid,
    /// Physical address of the starting-level table(s) (S2TTB).
    pub ttb: PhysAddr,
    /// 64 - IPA bits (S2T0SZ).
    pub t0sz: u8,
    /// Starting level, encoded as VTCR_EL2.SL0 (S2SL0).
    pub sl0: u8,
    /// Translation granule (S2TG).
    pub granule: Granule,
    /// Output size, encoded as VTCR_EL2.PS (S2PS, see [`output_size_encoding`]).
    pub ps: u8,
    /// Inner cacheability of table walks (S2IR0; 0b01 write-back).
    pub ir0: u8,
    /// Outer cacheability of table walks (S2OR0).
    pub or0: u8,
    /// Shareability of table walks (S2SH0; 0b11 inner shareable).
    pub sh0: u8,
    /// Access flag faults disabled (S2AFFD); true unless the tables manage AF.
    pub affd: bool,
}

/// The stage 1 half of a nested STE: what a guest's STE may choose (and
/// only that, see docs/ARCHITECTURE.md). `ctx_ptr` is a guest IPA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S1Config {
    /// The guest's CD table (S1ContextPtr), an IPA.
    pub ctx_ptr: Ipa,
    /// CD table layout (S1Fmt).
    pub s1fmt: S1Fmt,
    /// log2 of the number of CDs (S1CDMax).
    pub s1cdmax: u8,
    /// Default substream behaviour (S1DSS).
    pub s1dss: S1Dss,
    /// Inner cacheability of CD fetches (S1CIR).
    pub s1cir: u8,
    /// Outer cacheability of CD fetches (S1COR).
    pub s1cor: u8,
    /// Shareability of CD fetches (S1CSH).
    pub s1csh: u8,
    /// Stage 1 stalls disallowed (S1STALLD).
    pub s1stalld: bool,
    /// ATS (EATS).
    pub eats: Eats,
}

impl Ste {
    /// The all-zero, invalid STE (V == 0): transactions abort and record
    /// C_BAD_STE.
    pub const fn invalid() -> Self {
        Self([0; STE_WORDS])
    }

    /// The fail-closed default: V == 1, Config == abort. Transactions are
    /// terminated silently; every other field is zero.
    pub fn abort() -> Self {
        let mut ste = Self::invalid();
        ste.set_v(true);
        ste.set_config(Config::Abort);
        ste
    }

    /// A stage-2-only STE for a stream assigned to a VM: NS-EL1, VMSAv8-64,
    /// stage 2 faults recorded (not stalled), protected table walks.
    pub fn stage2(s2: &S2Config) -> Self {
        let mut ste = Self::invalid();
        ste.set_v(true);
        ste.set_config(Config::S2Translate);
        ste.set_strw(Strw::El1);
        ste.set_shcfg(SHCFG_INCOMING);
        ste.apply_s2(s2);
        ste
    }

    /// A nested STE: the guest's stage 1 (its CD table, at an IPA) over the
    /// hypervisor's stage 2.
    pub fn nested(s2: &S2Config, s1: &S1Config) -> Self {
        let mut ste = Self::stage2(s2);
        ste.set_config(Config::Nested);
        ste.set_s1_context_ptr(s1.ctx_ptr);
        ste.set_s1fmt(s1.s1fmt);
        ste.set_s1cdmax(s1.s1cdmax);
        ste.set_s1dss(s1.s1dss);
        ste.set_s1cir(s1.s1cir);
        ste.set_s1cor(s1.s1cor);
        ste.set_s1csh(s1.s1csh);
        ste.set_s1stalld(s1.s1stalld);
        ste.set_eats(s1.eats);
        ste
    }

    fn apply_s2(&mut self, s2: &S2Config) {
        self.set_s2vmid(s2.vmid);
        self.set_s2t0sz(s2.t0sz);
        self.set_s2sl0(s2.sl0);
        self.set_s2ir0(s2.ir0);
        self.set_s2or0(s2.or0);
        self.set_s2sh0(s2.sh0);
        self.set_s2tg(s2.granule);
        self.set_s2ps(s2.ps);
        self.set_s2aa64(true);
        self.set_s2affd(s2.affd);
        self.set_s2ptw(true);
        self.set_s2r(true);
        self.set_s2ttb(s2.ttb);
    }

    /// The stage 1 fields of this STE (what a guest's STE chose).
    pub fn s1_config(&self) -> S1Config {
        S1Config {
            ctx_ptr: self.s1_context_ptr(),
            s1fmt: self.s1fmt(),
            s1cdmax: self.s1cdmax(),
            s1dss: self.s1dss(),
            s1cir: self.s1cir(),
            s1cor: self.s1cor(),
            s1csh: self.s1csh(),
            s1stalld: self.s1stalld(),
            eats: self.eats(),
        }
    }

    /// Whether the entry lets traffic through (V == 1 and Config\[2\] == 1),
    /// judged on the bits alone.
    pub fn is_live(&self) -> bool {
        self.v() && self.config().passes()
    }
}

impl fmt::Debug for Ste {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ste(V={} {:?} [", self.v() as u8, self.config())?;
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{w:#018x}")?;
        }
        f.write_str("])")
    }
}

/// SMMU_IDR0.TTENDIAN: which translation-table endianness is supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtEndian {
    /// 0b00: both.
    Mixed,
    /// 0b10: little-endian only.
    Little,
    /// 0b11: big-endian only.
    Big,
}

/// SMMU_IDR0.STALL_MODEL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallModel {
    /// 0b00: stall and terminate models supported.
    StallAndTerminate,
    /// 0b01: terminate only.
    TerminateOnly,
    /// 0b10: stall forced.
    StallForced,
}

/// SMMU_IDR0.HTTU: hardware translation table update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Httu {
    /// 0b00: none.
    None,
    /// 0b01: access flag.
    Access,
    /// 0b10: access flag and dirty state.
    AccessDirty,
}

/// What the SMMU (physical, or the vSMMU as advertised to a guest) supports:
/// the ID register facts STE legality depends on (§5.2.2). Only Non-secure
/// STEs and VMSAv8-64 tables are modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StePolicy {
    /// SMMU_IDR0.S1P.
    pub s1p: bool,
    /// SMMU_IDR0.S2P.
    pub s2p: bool,
    /// SMMU_IDR0.Hyp (STRW is used only with it).
    pub hyp: bool,
    /// SMMU_IDR0.ATS.
    pub ats: bool,
    /// SMMU_IDR0.NS1ATS.
    pub ns1ats: bool,
    /// SMMU_IDR0.CD2L: 2-level CD tables.
    pub cd2l: bool,
    /// SMMU_IDR0.VMID16.
    pub vmid16: bool,
    /// SMMU_IDR0.TTENDIAN.
    pub ttendian: TtEndian,
    /// SMMU_IDR0.STALL_MODEL (effective).
    pub stall_model: StallModel,
    /// SMMU_IDR0.HTTU.
    pub httu: Httu,
    /// SMMU_IDR1.SSIDSIZE: SubstreamID bits (0: no substreams).
    pub ssid_bits: u8,
    /// SMMU_IDR3.STT: small translation tables.
    pub stt: bool,
    /// SMMU_IDR5.GRAN4K.
    pub gran4k: bool,
    /// SMMU_IDR5.GRAN16K.
    pub gran16k: bool,
    /// SMMU_IDR5.GRAN64K.
    pub gran64k: bool,
    /// IAS in bits (§3.4: OAS, or max(40, OAS) with AArch32 support).
    pub ias_bits: u8,
    /// SMMU_IDR5.OAS, decoded to bits.
    pub oas_bits: u8,
}

impl StePolicy {
    /// Whether `granule` is supported (SMMU_IDR5.GRANxx).
    pub fn granule_supported(&self, granule: Granule) -> bool {
        match granule {
            Granule::Size4K => self.gran4k,
            Granule::Size16K => self.gran16k,
            Granule::Size64K => self.gran64k,
        }
    }
}

/// How the SMMU treats a legal STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteKind {
    /// V == 0: abort with C_BAD_STE.
    Invalid,
    /// Config abort (or reserved 0b001..0b011, which behaves as abort).
    Abort,
    /// Both stages bypass.
    Bypass,
    /// Stage 1 only.
    Stage1,
    /// Stage 2 only.
    Stage2,
    /// Stage 1 and stage 2.
    Nested,
}

/// Why an STE is ILLEGAL (the SMMU would treat it as V == 0, C_BAD_STE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SteError {
    /// Config enables stage 1 but SMMU_IDR0.S1P == 0.
    #[error("stage 1 translation is not implemented")]
    Stage1NotImplemented,
    /// Config enables stage 2 but SMMU_IDR0.S2P == 0.
    #[error("stage 2 translation is not implemented")]
    Stage2NotImplemented,
    /// EATS is inconsistent with Config, S2S or SMMU_IDR0.NS1ATS.
    #[error("illegal EATS {0:?} for this configuration")]
    Eats(Eats),
    /// STRW selects a reserved StreamWorld.
    #[error("reserved STRW {0:?}")]
    Strw(Strw),
    /// S2VMID\[15:8\] != 0 without SMMU_IDR0.VMID16.
    #[error("VMID {0} needs 16-bit VMIDs")]
    VmidTooWide(Vmid),
    /// S1STALLD == 1 while the stall model is not configurable.
    #[error("S1STALLD set but the stall model is not configurable")]
    S1Stalld,
    /// S1CDMax above SMMU_IDR1.SSIDSIZE.
    #[error("S1CDMax {cdmax} exceeds SSIDSIZE {max}")]
    S1CdMax {
        /// The STE's S1CDMax.
        cdmax: u8,
        /// SMMU_IDR1.SSIDSIZE.
        max: u8,
    },
    /// A 2-level CD table without SMMU_IDR0.CD2L.
    #[error("2-level CD tables are not supported")]
    S1FmtTwoLevel,
    /// S1ContextPtr beyond the IAS (nested) or OAS (stage 1 only).
    #[error("S1ContextPtr {0} out of range")]
    ContextPtrOutOfRange(Ipa),
    /// S2AA64 == 0: VMSAv8-32 stage 2 tables (not supported here).
    #[error("VMSAv8-32 stage 2 tables are not supported")]
    S2Aarch32,
    /// S2HA/S2HD set beyond SMMU_IDR0.HTTU.
    #[error("stage 2 hardware update not supported")]
    S2Httu,
    /// S2TG reserved or not in SMMU_IDR5.
    #[error("stage 2 granule not supported")]
    S2Granule,
    /// S2TTB outside the effective S2PS range (or 48 bits below 64K granule).
    #[error("S2TTB {0} out of range")]
    S2TtbOutOfRange(PhysAddr),
    /// S2T0SZ out of the valid range.
    #[error("S2T0SZ {t0sz} outside {min}..={max}")]
    S2T0sz {
        /// The STE's S2T0SZ.
        t0sz: u8,
        /// Smallest legal value.
        min: u8,
        /// Largest legal value.
        max: u8,
    },
    /// S2SL0 reserved or inconsistent with S2T0SZ and S2TG.
    #[error("S2SL0 {sl0} inconsistent with S2T0SZ {t0sz} and granule {granule:?}")]
    S2WalkInconsistent {
        /// The STE's S2SL0.
        sl0: u8,
        /// The STE's S2T0SZ.
        t0sz: u8,
        /// The STE's granule.
        granule: Granule,
    },
    /// S2ENDI selects an unimplemented endianness.
    #[error("stage 2 table endianness not supported")]
    S2Endianness,
}

impl Ste {
    /// Classifies this STE as a Non-secure SMMU with the features of `policy`
    /// would (§5.2, pseudocode `SteIllegal` of §5.2.2), or says why it is
    /// ILLEGAL. Total on any 512-bit input: never panics.
    pub fn validate(&self, policy: &StePolicy) -> Result<SteKind, SteError> {
        if !self.v() {
            return Ok(SteKind::Invalid);
        }
        let config = self.config();
        let kind = match config {
            Config::Abort | Config::Reserved(_) => return Ok(SteKind::Abort),
            Config::Bypass => return Ok(SteKind::Bypass),
            Config::S1Translate => SteKind::Stage1,
            Config::S2Translate => SteKind::Stage2,
            Config::Nested => SteKind::Nested,
        };
        let (s1, s2) = (config.stage1(), config.stage2());
        if s1 && !policy.s1p {
            return Err(SteError::Stage1NotImplemented);
        }
        if s2 && !policy.s2p {
            return Err(SteError::Stage2NotImplemented);
        }
        if policy.ats {
            let eats = self.eats();
            let illegal = match eats {
                Eats::Split => config != Config::Nested || self.s2s() || policy.ns1ats,
                Eats::Full => s2 && self.s2s(),
                // Without DPT (not modelled) 0b11 behaves as 0b00.
                Eats::Abort | Eats::FullDpt => false,
            };
            if illegal {
                return Err(SteError::Eats(eats));
            }
        }
        // STRW is used only for stage-1-only streams of an SMMU with Hyp.
        let strw_used = policy.s1p && policy.hyp && !s2;
        if strw_used && matches!(self.strw(), Strw::El3 | Strw::Reserved) {
            return Err(SteError::Strw(self.strw()));
        }
        let vmid_used = policy.s2p && !(strw_used && self.strw() != Strw::El1);
        if vmid_used && !policy.vmid16 && self.s2vmid().0 > 0xff {
            return Err(SteError::VmidTooWide(self.s2vmid()));
        }
        if s1 {
            self.validate_s1(policy, s2)?;
        }
        if s2 {
            self.validate_s2(policy)?;
        }
        Ok(kind)
    }

    fn validate_s1(&self, policy: &StePolicy, s2: bool) -> Result<(), SteError> {
        if self.s1stalld() && policy.stall_model != StallModel::StallAndTerminate {
            return Err(SteError::S1Stalld);
        }
        if policy.ssid_bits != 0 {
            let cdmax = self.s1cdmax();
            if cdmax > policy.ssid_bits {
                return Err(SteError::S1CdMax {
                    cdmax,
                    max: policy.ssid_bits,
                });
            }
            if cdmax != 0
                && !policy.cd2l
                && matches!(self.s1fmt(), S1Fmt::TwoLevel4K | S1Fmt::TwoLevel64K)
            {
                return Err(SteError::S1FmtTwoLevel);
            }
        }
        let limit = if s2 { policy.ias_bits } else { policy.oas_bits };
        let ptr = self.s1_context_ptr();
        if !fits(ptr.raw(), limit) {
            return Err(SteError::ContextPtrOutOfRange(ptr));
        }
        Ok(())
    }

    fn validate_s2(&self, policy: &StePolicy) -> Result<(), SteError> {
        if !self.s2aa64() {
            return Err(SteError::S2Aarch32);
        }
        if (self.s2ha() && policy.httu == Httu::None)
            || (self.s2hd() && policy.httu != Httu::AccessDirty)
        {
            return Err(SteError::S2Httu);
        }
        let granule = match self.s2tg() {
            Some(g) if policy.granule_supported(g) => g,
            _ => return Err(SteError::S2Granule),
        };
        let pa_bits = output_size_bits(self.s2ps()).min(policy.oas_bits);
        let ttb = self.s2ttb();
        if !fits(ttb.raw(), pa_bits) || (granule != Granule::Size64K && !fits(ttb.raw(), 48)) {
            return Err(SteError::S2TtbOutOfRange(ttb));
        }
        let t0sz = self.s2t0sz();
        let (min, max) = t0sz_range(granule, policy.stt, policy.ias_bits);
        if t0sz < min || t0sz > max {
            return Err(SteError::S2T0sz { t0sz, min, max });
        }
        let sl0 = self.s2sl0();
        let consistent = s2_start_level(granule, sl0, policy.stt, policy.oas_bits)
            .is_some_and(|level| walk_covers(granule, level, t0sz));
        if !consistent {
            return Err(SteError::S2WalkInconsistent { sl0, t0sz, granule });
        }
        match (policy.ttendian, self.s2endi()) {
            (TtEndian::Little, true) | (TtEndian::Big, false) => Err(SteError::S2Endianness),
            _ => Ok(()),
        }
    }
}

/// Whether `addr` is below 2^bits.
pub(crate) fn fits(addr: u64, bits: u8) -> bool {
    bits >= 64 || addr >> bits == 0
}

/// The legal range of a VMSAv8-64 stage 2 T0SZ (§5.2 S2T0SZ, SMMUv3.1+
/// rules, DS == 0).
fn t0sz_range(granule: Granule, stt: bool, ias_bits: u8) -> (u8, u8) {
    let max = match (stt, granule) {
        (false, _) => 39,
        (true, Granule::Size64K) => 47,
        (true, _) => 48,
    };
    let floor = if granule == Granule::Size64K { 12 } else { 16 };
    let min = floor.max(64u8.saturating_sub(ias_bits));
    (min, max)
}

/// The starting level a VMSAv8-64 stage 2 walk uses for `sl0` (encoded as
/// VTCR_EL2.SL0 with SL2 == 0 and DS == 0), or `None` if the encoding is
/// reserved for this granule and output size.
pub fn s2_start_level(granule: Granule, sl0: u8, stt: bool, pa_bits: u8) -> Option<u8> {
    match (granule, sl0 & 3) {
        (Granule::Size4K, 0) => Some(2),
        (Granule::Size4K, 1) => Some(1),
        (Granule::Size4K, 2) if pa_bits >= 44 => Some(0),
        (Granule::Size4K, 3) if stt => Some(3),
        (Granule::Size16K | Granule::Size64K, 0) => Some(3),
        (Granule::Size16K | Granule::Size64K, 1) => Some(2),
        (Granule::Size16K, 2) if pa_bits >= 42 => Some(1),
        (Granule::Size64K, 2) if pa_bits >= 44 => Some(1),
        _ => None,
    }
}

/// Whether a walk starting at `level` resolves an input of 64 - `t0sz` bits
/// with at most 16 concatenated tables at the starting level, and needs
/// that level at all (the VMSAv8-64 consistency rule for SL0, TG and T0SZ).
pub fn walk_covers(granule: Granule, level: u8, t0sz: u8) -> bool {
    if level > 3 || t0sz > 64 {
        return false;
    }
    let granule_bits = granule.shift();
    let stride = granule_bits - 3;
    let below = u32::from(3 - level) * stride + granule_bits;
    let ia = 64 - u32::from(t0sz);
    // At least one bit for the starting level; at most a full level plus
    // 4 bits of concatenation.
    ia > below && ia <= below + stride + 4
}

/// One step of rewriting an STE in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateStep {
    /// Store `value` into word `word` with one 64-bit write.
    Write {
        /// Index of the 64-bit word (0..8).
        word: u8,
        /// The value to store.
        value: u64,
    },
    /// Make the previous writes visible (DSB / clean for a non-coherent
    /// SMMU), then issue CMD_CFGI_STE for the stream and CMD_SYNC, and wait.
    Sync,
}

/// The sequence of writes and synchronisation points that moves a live STE
/// from one value to another without the SMMU ever using a mix of the two
/// (§3.21.3). Produced by [`update_plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdatePlan {
    steps: [UpdateStep; MAX_STEPS],
    len: usize,
    hitless: bool,
}

const MAX_STEPS: usize = 16;

impl UpdatePlan {
    fn new() -> Self {
        Self {
            steps: [UpdateStep::Sync; MAX_STEPS],
            len: 0,
            hitless: true,
        }
    }

    fn push(&mut self, step: UpdateStep) {
        assert!(self.len < MAX_STEPS, "STE update plan overflow");
        self.steps[self.len] = step;
        self.len += 1;
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[UpdateStep] {
        &self.steps[..self.len]
    }

    /// The number of CFGI_STE + CMD_SYNC points.
    pub fn syncs(&self) -> usize {
        self.steps()
            .iter()
            .filter(|s| **s == UpdateStep::Sync)
            .count()
    }

    /// Whether the plan never makes the entry abort in between (it changes
    /// at most one word the old configuration uses).
    pub fn is_hitless(&self) -> bool {
        self.hitless
    }
}

/// The bits of each word the SMMU uses for `ste`'s configuration, rounded
/// up (a superset is always safe): V alone when invalid, V and Config when
/// aborting; otherwise everything except the fields of a bypassed stage.
pub fn used_bits(ste: &Ste) -> [u64; STE_WORDS] {
    let mut used = [0u64; STE_WORDS];
    used[0] = STE0::V.mask << STE0::V.shift;
    if !ste.v() {
        return used;
    }
    used[0] |= STE0::CONFIG.mask << STE0::CONFIG.shift;
    let config = ste.config();
    if !config.passes() {
        return used;
    }
    let s1_only_word1 = [
        STE1::S1DSS,
        STE1::S1CIR,
        STE1::S1COR,
        STE1::S1CSH,
        STE1::S1STALLD,
    ]
    .iter()
    .fold(0u64, |m, f| m | (f.mask << f.shift));
    if config.stage1() {
        used[0] = u64::MAX;
        used[1] = u64::MAX;
    } else {
        used[1] = !s1_only_word1;
    }
    if config.stage1() || config.stage2() {
        used[2] = u64::MAX;
    }
    if config.stage2() {
        used[3] = u64::MAX;
    }
    for w in used.iter_mut().skip(4) {
        *w = u64::MAX;
    }
    used
}

/// Plans how to rewrite an STE currently holding `old` so that it holds
/// `new`, issuing CFGI_STE + CMD_SYNC at each [`UpdateStep::Sync`] (the last
/// step of any non-empty plan is a `Sync`).
///
/// The SMMU may fetch the words of an STE in any order at any time, and
/// keeps what it fetched until CFGI_STE; only a single 64-bit write is seen
/// atomically (§3.21.3). So:
/// - when at most one word that `old` uses changes, the words `old` ignores
///   are written first, synchronised, and then that one word: hitless;
/// - otherwise the entry is first made non-live by writing word 0 (`new`'s
///   word 0 if `new` does not pass traffic, else an abort word 0), then the
///   other words are written and synchronised, and word 0 is written last.
pub fn update_plan(old: &Ste, new: &Ste) -> UpdatePlan {
    let mut plan = UpdatePlan::new();
    let mut cur = *old;
    let used = used_bits(old);
    let critical: usize = (0..STE_WORDS)
        .filter(|&w| (old.0[w] ^ new.0[w]) & used[w] != 0)
        .count();
    if critical > 1 {
        // Break: one atomic write that makes the entry stop passing traffic.
        let word0 = if new.is_live() {
            Ste::abort().0[0]
        } else {
            new.0[0]
        };
        write(&mut plan, &mut cur, 0, word0);
        plan.hitless = false;
        plan.push(UpdateStep::Sync);
    }
    // Now `cur` uses at most one word that differs from `new`: write every
    // other word first, then that one.
    let used = used_bits(&cur);
    let last = (0..STE_WORDS).find(|&w| (cur.0[w] ^ new.0[w]) & used[w] != 0);
    let mut wrote = false;
    for w in 0..STE_WORDS {
        if Some(w) != last && cur.0[w] != new.0[w] {
            write(&mut plan, &mut cur, w, new.0[w]);
            wrote = true;
        }
    }
    if let Some(w) = last {
        if wrote {
            plan.push(UpdateStep::Sync);
        }
        write(&mut plan, &mut cur, w, new.0[w]);
        wrote = true;
    }
    if wrote {
        plan.push(UpdateStep::Sync);
    }
    debug_assert_eq!(cur, *new);
    plan
}

fn write(plan: &mut UpdatePlan, cur: &mut Ste, word: usize, value: u64) {
    cur.0[word] = value;
    plan.push(UpdateStep::Write {
        word: word as u8,
        value,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn policy() -> StePolicy {
        StePolicy {
            s1p: true,
            s2p: true,
            hyp: true,
            ats: true,
            ns1ats: false,
            cd2l: true,
            vmid16: true,
            ttendian: TtEndian::Little,
            stall_model: StallModel::StallAndTerminate,
            httu: Httu::None,
            ssid_bits: 20,
            stt: false,
            gran4k: true,
            gran16k: false,
            gran64k: true,
            ias_bits: 44,
            oas_bits: 44,
        }
    }

    /// A 40-bit IPA space, 4K granule, starting at level 1 with two
    /// concatenated tables: what QEMU-sized VMs use.
    fn s2cfg(vmid: u16, ttb: u64) -> S2Config {
        S2Config {
            vmid: Vmid(vmid),
            ttb: PhysAddr(ttb),
            t0sz: 24,
            sl0: 1,
            granule: Granule::Size4K,
            ps: output_size_encoding(44).unwrap(),
            ir0: 1,
            or0: 1,
            sh0: 3,
            affd: true,
        }
    }

    fn s1cfg(ptr: u64) -> S1Config {
        S1Config {
            ctx_ptr: Ipa(ptr),
            s1fmt: S1Fmt::TwoLevel64K,
            s1cdmax: 16,
            s1dss: S1Dss::Ssid0,
            s1cir: 1,
            s1cor: 1,
            s1csh: 3,
            s1stalld: true,
            eats: Eats::Abort,
        }
    }

    #[test]
    fn field_positions_match_the_spec() {
        let mut ste = Ste::invalid();
        ste.set_v(true);
        ste.set_config(Config::Nested);
        assert_eq!(ste.0[0], 0b1111);
        ste.set_s1fmt(S1Fmt::TwoLevel64K);
        assert_eq!(ste.0[0], 0b10_1111);
        ste.set_s1cdmax(31);
        assert_eq!(ste.0[0] >> 59, 31);
        ste.set_s1_context_ptr(Ipa(0x00ff_ffff_ffff_ffc0));
        assert_eq!(ste.0[0] & 0x00ff_ffff_ffff_ffc0, 0x00ff_ffff_ffff_ffc0);
        assert_eq!((ste.0[0] >> 56) & 7, 0, "bits [58:56] are RES0");

        let mut ste = Ste::invalid();
        ste.set_s1dss(S1Dss::Ssid0);
        ste.set_s1cir(1);
        ste.set_s1cor(2);
        ste.set_s1csh(3);
        assert_eq!(ste.0[1], 0b11_10_01_10);
        let mut ste = Ste::invalid();
        ste.set_mev(true);
        ste.set_s1stalld(true);
        ste.set_eats(Eats::Split);
        ste.set_strw(Strw::El2);
        ste.set_shcfg(SHCFG_INCOMING);
        assert_eq!(
            ste.0[1],
            (1 << 19) | (1 << 27) | (2 << 28) | (2 << 30) | (1 << 44)
        );
        let mut ste = Ste::invalid();
        ste.set_memattr(0xf);
        ste.set_mtcfg(true);
        ste.set_alloccfg(0xf);
        ste.set_nscfg(3);
        ste.set_privcfg(3);
        ste.set_instcfg(3);
        assert_eq!(
            ste.0[1],
            (0xf << 32) | (1 << 36) | (0xf << 37) | (0x3f << 46)
        );

        let mut ste = Ste::invalid();
        ste.set_s2vmid(Vmid(0xbeef));
        ste.set_s2t0sz(0x3f);
        ste.set_s2sl0(2);
        ste.set_s2tg(Granule::Size16K);
        ste.set_s2ps(5);
        assert_eq!(
            ste.0[2],
            0xbeef | (0x3f << 32) | (2 << 38) | (2 << 46) | (5 << 48)
        );
        let mut ste = Ste::invalid();
        ste.set_s2aa64(true);
        ste.set_s2ptw(true);
        ste.set_s2r(true);
        ste.set_s2s(true);
        assert_eq!(ste.0[2], (1 << 51) | (1 << 54) | (1 << 57) | (1 << 58));
        ste.set_s2ttb(PhysAddr(0x000f_ffff_ffff_fff0));
        assert_eq!(ste.0[3], 0x000f_ffff_ffff_fff0);
    }

    #[test]
    fn setters_mask_to_the_field_width() {
        let mut ste = Ste::invalid();
        ste.set_s2t0sz(0xff);
        assert_eq!(ste.s2t0sz(), 0x3f);
        assert_eq!(ste.0[2], 0x3f << 32, "neighbouring fields untouched");
        ste.set_s2ttb(PhysAddr(u64::MAX));
        assert_eq!(ste.s2ttb(), PhysAddr(0x000f_ffff_ffff_fff0));
    }

    #[test]
    fn abort_is_fail_closed() {
        let ste = Ste::abort();
        assert_eq!(ste.0, [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ste.validate(&policy()), Ok(SteKind::Abort));
        assert!(!ste.is_live());
        assert_eq!(Ste::invalid().validate(&policy()), Ok(SteKind::Invalid));
    }

    #[test]
    fn reserved_config_behaves_as_abort() {
        for bits in 1..=3 {
            let mut ste = Ste::abort();
            ste.set_config(Config::from_bits(bits));
            assert_eq!(ste.config(), Config::Reserved(bits));
            assert_eq!(ste.validate(&policy()), Ok(SteKind::Abort));
        }
    }

    #[test]
    fn stage2_builder() {
        let ste = Ste::stage2(&s2cfg(7, 0x8_0000_2000));
        assert_eq!(ste.validate(&policy()), Ok(SteKind::Stage2));
        assert!(ste.v() && ste.is_live());
        assert_eq!(ste.config(), Config::S2Translate);
        assert_eq!(ste.strw(), Strw::El1);
        assert!(ste.s2aa64() && ste.s2r() && !ste.s2s() && ste.s2ptw() && ste.s2affd());
        assert_eq!(ste.s2vmid(), Vmid(7));
        assert_eq!(ste.s2ttb(), PhysAddr(0x8_0000_2000));
        assert_eq!(ste.s2tg(), Some(Granule::Size4K));
        assert_eq!(ste.shcfg(), SHCFG_INCOMING);
        assert_eq!(ste.0[0] >> 4, 0, "no stage 1 fields");
    }

    #[test]
    fn nested_builder() {
        let s1 = s1cfg(0x4000_0000);
        let ste = Ste::nested(&s2cfg(3, 0x8_0000_0000), &s1);
        assert_eq!(ste.validate(&policy()), Ok(SteKind::Nested));
        assert_eq!(ste.s1_config(), s1);
        assert_eq!(ste.s2vmid(), Vmid(3));
    }

    #[test]
    fn illegal_stes_are_rejected() {
        let p = policy();
        let good = Ste::stage2(&s2cfg(1, 0x1000));

        let mut ste = good;
        ste.set_s2sl0(0); // level 2 start cannot resolve 40 bits
        assert!(matches!(
            ste.validate(&p),
            Err(SteError::S2WalkInconsistent { .. })
        ));
        ste.set_s2sl0(3); // level 3 start needs STT
        assert!(matches!(
            ste.validate(&p),
            Err(SteError::S2WalkInconsistent { .. })
        ));

        let mut ste = good;
        ste.set_s2t0sz(64 - 48); // 48-bit IPA > IAS 44
        assert_eq!(
            ste.validate(&p),
            Err(SteError::S2T0sz {
                t0sz: 16,
                min: 20,
                max: 39
            })
        );
        ste.set_s2t0sz(40);
        assert!(matches!(ste.validate(&p), Err(SteError::S2T0sz { .. })));

        let mut ste = good;
        ste.set_s2tg(Granule::Size16K);
        assert_eq!(ste.validate(&p), Err(SteError::S2Granule));
        ste.put(STE2::S2TG, 3);
        assert_eq!(ste.validate(&p), Err(SteError::S2Granule));

        let mut ste = good;
        ste.set_s2ttb(PhysAddr(1 << 44));
        assert!(matches!(
            ste.validate(&p),
            Err(SteError::S2TtbOutOfRange(_))
        ));
        ste.set_s2ps(0); // 32-bit output
        ste.set_s2ttb(PhysAddr(1 << 32));
        assert!(matches!(
            ste.validate(&p),
            Err(SteError::S2TtbOutOfRange(_))
        ));

        let mut ste = good;
        ste.set_s2aa64(false);
        assert_eq!(ste.validate(&p), Err(SteError::S2Aarch32));

        let mut ste = good;
        ste.set_s2ha(true);
        assert_eq!(ste.validate(&p), Err(SteError::S2Httu));

        let mut ste = good;
        ste.set_s2endi(true);
        assert_eq!(ste.validate(&p), Err(SteError::S2Endianness));

        let mut ste = good;
        ste.set_s2vmid(Vmid(0x100));
        assert_eq!(ste.validate(&p), Ok(SteKind::Stage2));
        let p8 = StePolicy { vmid16: false, ..p };
        assert_eq!(ste.validate(&p8), Err(SteError::VmidTooWide(Vmid(0x100))));

        let no_s2 = StePolicy { s2p: false, ..p };
        assert_eq!(good.validate(&no_s2), Err(SteError::Stage2NotImplemented));
    }

    #[test]
    fn illegal_stage1_fields_are_rejected() {
        let p = policy();
        let nested = Ste::nested(&s2cfg(1, 0x1000), &s1cfg(0x1000));

        let mut ste = nested;
        ste.set_s1cdmax(21);
        assert_eq!(
            ste.validate(&p),
            Err(SteError::S1CdMax { cdmax: 21, max: 20 })
        );

        let no_cd2l = StePolicy { cd2l: false, ..p };
        assert_eq!(nested.validate(&no_cd2l), Err(SteError::S1FmtTwoLevel));
        let mut ste = nested;
        ste.set_s1cdmax(0); // S1Fmt is ignored without substreams
        assert_eq!(ste.validate(&no_cd2l), Ok(SteKind::Nested));
        ste.set_s1fmt(S1Fmt::Linear);
        ste.set_s1cdmax(4);
        assert_eq!(ste.validate(&no_cd2l), Ok(SteKind::Nested));

        let mut ste = nested;
        ste.set_s1_context_ptr(Ipa(1 << 44));
        assert!(matches!(
            ste.validate(&p),
            Err(SteError::ContextPtrOutOfRange(_))
        ));

        let term = StePolicy {
            stall_model: StallModel::TerminateOnly,
            ..p
        };
        assert_eq!(nested.validate(&term), Err(SteError::S1Stalld));

        let mut ste = nested;
        ste.set_eats(Eats::Split);
        assert_eq!(ste.validate(&p), Ok(SteKind::Nested));
        ste.set_s2s(true);
        assert_eq!(ste.validate(&p), Err(SteError::Eats(Eats::Split)));
        let mut ste = Ste::stage2(&s2cfg(1, 0x1000));
        ste.set_eats(Eats::Split);
        assert_eq!(ste.validate(&p), Err(SteError::Eats(Eats::Split)));

        let mut s1only = nested;
        s1only.set_config(Config::S1Translate);
        assert_eq!(s1only.validate(&p), Ok(SteKind::Stage1));
        s1only.set_strw(Strw::Reserved);
        assert_eq!(s1only.validate(&p), Err(SteError::Strw(Strw::Reserved)));
        let no_s1 = StePolicy { s1p: false, ..p };
        assert_eq!(nested.validate(&no_s1), Err(SteError::Stage1NotImplemented));
    }

    #[test]
    fn walk_consistency_table() {
        use Granule::*;
        // 4K: level 1 covers 31..=43 bits, level 0 from 40 bits.
        assert!(walk_covers(Size4K, 1, 64 - 40));
        assert!(walk_covers(Size4K, 1, 64 - 43));
        assert!(!walk_covers(Size4K, 1, 64 - 44));
        assert!(walk_covers(Size4K, 0, 64 - 48));
        assert!(walk_covers(Size4K, 2, 64 - 32));
        assert!(!walk_covers(Size4K, 2, 64 - 35));
        // 64K: level 2 covers 30..=46 bits.
        assert!(walk_covers(Size64K, 2, 64 - 42));
        assert!(!walk_covers(Size64K, 2, 64 - 48));
        assert_eq!(s2_start_level(Size64K, 2, false, 48), Some(1));
        assert!(walk_covers(Size64K, 1, 64 - 48));
        assert_eq!(s2_start_level(Size4K, 2, false, 40), None);
        assert_eq!(s2_start_level(Size64K, 3, true, 52), None);
    }

    proptest! {
        #[test]
        fn validate_never_panics(words in any::<[u64; 8]>(), s1p: bool, s2p: bool, hyp: bool,
                                 ats: bool, vmid16: bool, stt: bool, ssid in 0u8..=255,
                                 ias in 0u8..=255, oas in 0u8..=255) {
            let p = StePolicy { s1p, s2p, hyp, ats, vmid16, stt, ssid_bits: ssid,
                                ias_bits: ias, oas_bits: oas, ..policy() };
            let ste = Ste(words);
            let r = ste.validate(&p);
            // A classification is consistent with the bits.
            if let Ok(kind) = r {
                prop_assert_eq!(kind == SteKind::Invalid, !ste.v());
                prop_assert_eq!(
                    matches!(kind, SteKind::Stage1 | SteKind::Stage2 | SteKind::Nested | SteKind::Bypass),
                    ste.is_live()
                );
            }
        }

        #[test]
        fn valid_stage2_round_trips(vmid: u16, ttb in 0u64..(1 << 44), t0sz in 20u8..=39) {
            let sl0 = match t0sz { 0..=20 => 2, 21..=29 => 1, _ => 0 };
            let cfg = S2Config { t0sz, sl0, ..s2cfg(vmid, ttb & !0xfff) };
            let ste = Ste::stage2(&cfg);
            prop_assert_eq!(ste.validate(&policy()), Ok(SteKind::Stage2));
            prop_assert_eq!(ste.s2vmid(), Vmid(vmid));
            prop_assert_eq!(ste.s2ttb(), PhysAddr(ttb & !0xfff));
            prop_assert_eq!(ste.s2t0sz(), t0sz);
        }
    }

    // ---- safe update order ----

    /// Every STE an SMMU could assemble from the words between two sync
    /// points: each word written since the last sync is seen old or new.
    fn observable(base: &Ste, writes: &[(usize, u64)]) -> Vec<Ste> {
        let mut out = Vec::new();
        for mask in 0u32..(1 << writes.len()) {
            let mut s = *base;
            for (i, (w, v)) in writes.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    s.0[*w] = *v;
                }
            }
            out.push(s);
        }
        out
    }

    fn same_config(a: &Ste, b: &Ste) -> bool {
        let (ua, ub) = (used_bits(a), used_bits(b));
        ua == ub && (0..STE_WORDS).all(|w| a.0[w] & ua[w] == b.0[w] & ub[w])
    }

    /// Runs a plan against the observer model: the SMMU must only ever see
    /// the old configuration, the new one, or a non-live entry.
    fn check_plan(old: &Ste, new: &Ste) -> UpdatePlan {
        let plan = update_plan(old, new);
        let mut base = *old;
        let mut pending: Vec<(usize, u64)> = Vec::new();
        for step in plan.steps() {
            match *step {
                UpdateStep::Write { word, value } => {
                    assert!(
                        !pending.iter().any(|(w, _)| *w == word as usize),
                        "a word written twice between syncs"
                    );
                    pending.push((word as usize, value));
                }
                UpdateStep::Sync => {
                    for seen in observable(&base, &pending) {
                        assert!(
                            !seen.is_live() || same_config(&seen, old) || same_config(&seen, new),
                            "SMMU could see a torn STE {seen:?} going from {old:?} to {new:?}"
                        );
                    }
                    for (w, v) in pending.drain(..) {
                        base.0[w] = v;
                    }
                }
            }
        }
        assert!(pending.is_empty(), "plan does not end with a sync");
        assert_eq!(base, *new, "plan does not reach the new STE");
        plan
    }

    fn writes(plan: &UpdatePlan) -> Vec<Option<u8>> {
        plan.steps()
            .iter()
            .map(|s| match s {
                UpdateStep::Write { word, .. } => Some(*word),
                UpdateStep::Sync => None,
            })
            .collect()
    }

    #[test]
    fn identical_entries_need_nothing() {
        let ste = Ste::stage2(&s2cfg(1, 0x1000));
        assert!(check_plan(&ste, &ste).steps().is_empty());
    }

    #[test]
    fn making_valid_writes_word0_last() {
        let new = Ste::stage2(&s2cfg(1, 0x1000));
        let plan = check_plan(&Ste::abort(), &new);
        assert_eq!(
            writes(&plan),
            [Some(1), Some(2), Some(3), None, Some(0), None]
        );
        assert!(plan.is_hitless());
        // From V == 0 as well.
        let plan = check_plan(&Ste::invalid(), &new);
        assert_eq!(plan.steps().last(), Some(&UpdateStep::Sync));
        assert_eq!(writes(&plan)[plan.steps().len() - 2], Some(0));
    }

    #[test]
    fn making_abort_writes_word0_first() {
        let old = Ste::stage2(&s2cfg(1, 0x1000));
        let plan = check_plan(&old, &Ste::abort());
        assert_eq!(
            writes(&plan),
            [Some(0), None, Some(1), Some(2), Some(3), None]
        );
        assert_eq!(plan.steps()[0], UpdateStep::Write { word: 0, value: 1 });
    }

    #[test]
    fn one_word_change_is_a_single_write() {
        let old = Ste::stage2(&s2cfg(1, 0x1000));
        let new = Ste::stage2(&s2cfg(1, 0x5000));
        let plan = check_plan(&old, &new);
        assert_eq!(writes(&plan), [Some(3), None]);
        assert!(plan.is_hitless());
    }

    #[test]
    fn two_live_words_break_before_make() {
        let old = Ste::stage2(&s2cfg(1, 0x1000));
        let new = Ste::stage2(&s2cfg(2, 0x5000));
        let plan = check_plan(&old, &new);
        assert_eq!(
            writes(&plan),
            [Some(0), None, Some(2), Some(3), None, Some(0), None]
        );
        assert_eq!(
            plan.steps()[0],
            UpdateStep::Write {
                word: 0,
                value: Ste::abort().0[0]
            }
        );
        assert!(!plan.is_hitless());
        assert_eq!(plan.syncs(), 3);
    }

    #[test]
    fn guest_enabling_stage1_is_hitless() {
        // Guest bypass (stage 2 only) -> guest stage 1 (nested): the S1
        // fields of word 1 are ignored by the old entry.
        let s2 = s2cfg(1, 0x1000);
        let old = Ste::stage2(&s2);
        let new = Ste::nested(&s2, &s1cfg(0x4000));
        let plan = check_plan(&old, &new);
        assert_eq!(writes(&plan), [Some(1), None, Some(0), None]);
        // And back: word 1 is no longer ignored once stage 1 is on.
        let plan = check_plan(&new, &old);
        assert!(!plan.is_hitless());
    }

    fn arb_ste() -> impl Strategy<Value = Ste> {
        prop_oneof![
            Just(Ste::invalid()),
            Just(Ste::abort()),
            (any::<u16>(), 0u64..(1 << 40)).prop_map(|(v, t)| Ste::stage2(&s2cfg(v, t << 4))),
            (any::<u16>(), 0u64..(1 << 40), 0u64..(1 << 40))
                .prop_map(|(v, t, c)| Ste::nested(&s2cfg(v, t << 4), &s1cfg(c << 6))),
            any::<[u64; 8]>().prop_map(Ste),
            (any::<[u64; 8]>(), 0u8..8).prop_map(|(mut w, c)| {
                w[0] = (w[0] & !0xf) | 1 | (u64::from(c) << 1);
                Ste(w)
            }),
        ]
    }

    proptest! {
        #[test]
        fn update_plans_never_expose_a_torn_entry(old in arb_ste(), new in arb_ste()) {
            check_plan(&old, &new);
        }

        #[test]
        fn update_plans_from_similar_entries(old in arb_ste(), flips in any::<[u64; 8]>(),
                                             keep in any::<u8>()) {
            let mut new = old;
            for (w, (word, flip)) in new.0.iter_mut().zip(flips).enumerate() {
                if keep & (1 << w) == 0 {
                    *word ^= flip;
                }
            }
            check_plan(&old, &new);
        }
    }
}
