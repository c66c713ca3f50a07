//! SMMUv3 commands (IHI 0070 chapter 4): the 16-byte entries of a command
//! queue.
//!
//! The driver builds [`Command`]s and [`encode`](Command::encode)s them into
//! the physical queue; the vSMMU [`decode`](Command::decode)s the entries a
//! guest wrote into its virtual queue. Decoding is therefore strict and
//! total: any input yields either a command or a [`CmdError`] (which the vSMMU
//! reports as CERROR_ILL, §4.1.3), never a panic. RES0 bits that are set make
//! an entry malformed, as §4.1.5 permits; fields the specification declares
//! IGNORED (a SubstreamID without SSV, the StreamID of CMD_CFGI_ALL, Ab when
//! retrying) are dropped.
//!
//! [`tlbi_ipa_range`] and [`tlbi_va_range`] turn an address range into the
//! smallest list of TLB invalidations, using range invalidation when the SMMU
//! has it (IDR3.RIL).

use crate::addr::{Asid, Iova, Ipa, PhysAddr, Ssid, StreamId, Vmid};
use alloc::vec::Vec;
use core::fmt;
use tock_registers::fields::Field;
use tock_registers::{register_bitfields, LocalRegisterCopy, RegisterLongName};

register_bitfields![u64,
    /// Bits [63:0] of a command. Fields of different commands overlap.
    pub CMD0 [
        /// Opcode, bits [7:0] (§4.1.1).
        OPCODE OFFSET(0) NUMBITS(8) [],
        /// CMD_ATC_INV Global, bit [9] (§4.5.1).
        GLOBAL OFFSET(9) NUMBITS(1) [],
        /// SSec, bit [10]: must be 0 on the Non-secure queue (§4.1.6).
        SSEC OFFSET(10) NUMBITS(1) [],
        /// SSV, bit [11]: SubstreamID valid (§4.1.6).
        SSV OFFSET(11) NUMBITS(1) [],
        /// SubstreamID, bits [31:12].
        SUBSTREAMID OFFSET(12) NUMBITS(20) [],
        /// CMD_TLBI_* range NUM, bits [16:12] (§4.4.1.1).
        NUM OFFSET(12) NUMBITS(5) [],
        /// CMD_TLBI_* range SCALE, bits [24:20] (§4.4.1.1; bit 25 only with IDR5.DS).
        SCALE OFFSET(20) NUMBITS(5) [],
        /// CMD_RESUME Ac (1 = retry), bit [12] (§4.7.1).
        AC OFFSET(12) NUMBITS(1) [],
        /// CMD_RESUME Ab (1 = abort when terminating), bit [13] (§4.7.1).
        AB OFFSET(13) NUMBITS(1) [],
        /// CMD_SYNC ComplSignal, bits [13:12] (§4.7.3).
        CS OFFSET(12) NUMBITS(2) [
            SIG_NONE = 0,
            SIG_IRQ = 1,
            SIG_SEV = 2
        ],
        /// CMD_SYNC MSI shareability, bits [23:22].
        MSH OFFSET(22) NUMBITS(2) [],
        /// CMD_SYNC MSI memory attributes, bits [27:24].
        MSIATTR OFFSET(24) NUMBITS(4) [],
        /// StreamID, bits [63:32].
        STREAMID OFFSET(32) NUMBITS(32) [],
        /// CMD_SYNC MSI payload, bits [63:32].
        MSIDATA OFFSET(32) NUMBITS(32) [],
        /// CMD_TLBI_* VMID, bits [47:32] (§4.4).
        VMID OFFSET(32) NUMBITS(16) [],
        /// CMD_TLBI_* ASID, bits [63:48] (§4.4).
        ASID OFFSET(48) NUMBITS(16) []
    ],

    /// Bits [127:64] of a command; offsets below are relative to bit 64.
    pub CMD1 [
        /// CMD_CFGI_STE/CD, CMD_TLBI_* Leaf, bit [64].
        LEAF OFFSET(0) NUMBITS(1) [],
        /// CMD_CFGI_STE_RANGE Range: 2^(Range+1) StreamIDs, bits [68:64] (§4.3.2).
        RANGE OFFSET(0) NUMBITS(5) [],
        /// CMD_PREFETCH_ADDR Size: 2^Size translations, bits [68:64] (§4.2.2).
        PREFETCH_SIZE OFFSET(0) NUMBITS(5) [],
        /// CMD_ATC_INV Size: span of 4096 * 2^Size bytes, bits [69:64] (§4.5.1).
        ATC_SIZE OFFSET(0) NUMBITS(6) [],
        /// CMD_PRI_RESP PRGIndex, bits [72:64] (§4.5.2).
        PRGINDEX OFFSET(0) NUMBITS(9) [],
        /// CMD_RESUME STAG, bits [79:64] (§4.7.1).
        STAG OFFSET(0) NUMBITS(16) [],
        /// CMD_TLBI_* TTL level hint, bits [73:72] (§4.4.1.1).
        TTL OFFSET(8) NUMBITS(2) [],
        /// CMD_TLBI_* translation granule TG, bits [75:74] (§4.4.1.1).
        TG OFFSET(10) NUMBITS(2) [
            None = 0,
            Granule4K = 1,
            Granule16K = 2,
            Granule64K = 3
        ],
        /// CMD_PRI_RESP Resp, bits [77:76] (§4.5.2).
        RESP OFFSET(12) NUMBITS(2) [
            ResponseFailure = 0,
            InvalidRequest = 1,
            Success = 2
        ],
        /// Virtual address [63:12], bits [127:76] (§4.1.6).
        VA OFFSET(12) NUMBITS(52) [],
        /// IPA or physical address [55:12], bits [119:76] (§4.1.6).
        IPA OFFSET(12) NUMBITS(44) [],
        /// CMD_SYNC MSIAddr [55:2], bits [119:66] (§4.7.3).
        MSIADDR OFFSET(2) NUMBITS(54) []
    ]
];

/// Command opcodes (§4.1.1) of the commands this module models.
pub mod opcode {
    /// CMD_PREFETCH_CONFIG.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// CMD_PREFETCH_ADDR.
    pub const PREFETCH_ADDR: u8 = 0x02;
    /// CMD_CFGI_STE.
    pub const CFGI_STE: u8 = 0x03;
    /// CMD_CFGI_STE_RANGE, and CMD_CFGI_ALL (Range = 31).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// CMD_CFGI_CD.
    pub const CFGI_CD: u8 = 0x05;
    /// CMD_CFGI_CD_ALL.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// CMD_TLBI_NH_ALL.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// CMD_TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// CMD_TLBI_NH_VA.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// CMD_TLBI_NH_VAA.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// CMD_TLBI_EL2_ALL.
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// CMD_TLBI_EL2_ASID.
    pub const TLBI_EL2_ASID: u8 = 0x21;
    /// CMD_TLBI_EL2_VA.
    pub const TLBI_EL2_VA: u8 = 0x22;
    /// CMD_TLBI_EL2_VAA.
    pub const TLBI_EL2_VAA: u8 = 0x23;
    /// CMD_TLBI_S12_VMALL.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// CMD_TLBI_S2_IPA.
    pub const TLBI_S2_IPA: u8 = 0x2A;
    /// CMD_TLBI_NSNH_ALL.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// CMD_ATC_INV.
    pub const ATC_INV: u8 = 0x40;
    /// CMD_PRI_RESP.
    pub const PRI_RESP: u8 = 0x41;
    /// CMD_RESUME.
    pub const RESUME: u8 = 0x44;
    /// CMD_STALL_TERM.
    pub const STALL_TERM: u8 = 0x45;
    /// CMD_SYNC.
    pub const SYNC: u8 = 0x46;
}

/// CMD_CFGI_STE_RANGE's Range value that means "all StreamIDs" (§4.3.6).
pub const CFGI_ALL_RANGE: u8 = 31;

/// Why a command cannot be decoded or built. Every decoding error is a
/// CERROR_ILL for the queue that held the command ([`CmdError::cerror`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdError {
    /// A Reserved opcode, or one that is illegal on a Non-secure command
    /// queue (Secure, EL3, DPT and VMS commands).
    UnknownOpcode(u8),
    /// A bit outside the command's fields (RES0, §4.1.5) is set, or SSec is
    /// 1 (§4.1.6).
    ReservedBits {
        /// The opcode.
        opcode: u8,
        /// The offending bits of bits [63:0].
        word0: u64,
        /// The offending bits of bits [127:64].
        word1: u64,
    },
    /// A field holds an ILLEGAL or Reserved value.
    IllegalField {
        /// The opcode.
        opcode: u8,
        /// The field's specification name.
        field: &'static str,
    },
    /// An invalidation range runs past the end of the address space the
    /// command can express.
    RangeOverflow,
    /// The range needs more than [`MAX_TLBI_OPS`] commands (this many per
    /// entry without range invalidation; at least this many with it):
    /// invalidate the whole VMID/ASID instead.
    TooManyCommands(u64),
}

impl CmdError {
    /// The CMDQ_CONS.ERR code an SMMU reports for this error (CERROR_ILL).
    pub fn cerror(&self) -> u8 {
        1
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdError::UnknownOpcode(op) => write!(f, "unknown or illegal command opcode {op:#04x}"),
            CmdError::ReservedBits {
                opcode,
                word0,
                word1,
            } => write!(
                f,
                "command {opcode:#04x} has reserved bits set ({word0:#x}, {word1:#x})"
            ),
            CmdError::IllegalField { opcode, field } => {
                write!(f, "command {opcode:#04x} has an illegal {field}")
            }
            CmdError::RangeOverflow => {
                f.write_str("invalidation range overflows the address space")
            }
            CmdError::TooManyCommands(n) => {
                write!(
                    f,
                    "invalidation needs {n} commands; flush the whole context"
                )
            }
        }
    }
}

/// Translation granule of the entries a range invalidation targets
/// (TG, §4.4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB granule (TG = 0b01).
    Size4K,
    /// 16 KiB granule (TG = 0b10).
    Size16K,
    /// 64 KiB granule (TG = 0b11).
    Size64K,
}

impl Granule {
    /// The granule size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            Granule::Size4K => 1 << 12,
            Granule::Size16K => 1 << 14,
            Granule::Size64K => 1 << 16,
        }
    }

    fn tg(self) -> u64 {
        match self {
            Granule::Size4K => 1,
            Granule::Size16K => 2,
            Granule::Size64K => 3,
        }
    }
}

/// The range and level-hint fields of a CMD_TLBI_* with TG != 0
/// (§4.4.1.1): invalidates `(num + 1) * 2^scale` granules from the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlbiRange {
    /// TG, bits [75:74].
    pub tg: Granule,
    /// TTL, bits [73:72]: level of the leaf entries (1..=3), 0 for any.
    pub ttl: u8,
    /// SCALE, bits [24:20] (0..=31).
    pub scale: u8,
    /// NUM, bits [16:12] (0..=31).
    pub num: u8,
}

impl TlbiRange {
    /// Bytes covered: `(NUM + 1) * 2^SCALE * granule`, saturating.
    pub fn bytes(&self) -> u64 {
        let granules = (u64::from(self.num) + 1) << self.scale;
        granules.saturating_mul(self.tg.bytes())
    }
}

/// The address-scope fields shared by the VA and IPA invalidations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlbiScope {
    /// Leaf, bit [64]: only last-level (page/block) entries.
    pub leaf: bool,
    /// Range invalidation and level hint (TG != 0); `None` invalidates the
    /// single entry that translates the address, whatever its size.
    pub range: Option<TlbiRange>,
}

/// CMD_SYNC completion signal (CS, §4.7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompletionSignal {
    /// SIG_NONE: poll CMDQ_CONS.
    None,
    /// SIG_IRQ: write MSIData to MSIAddr (MSI) on completion.
    Irq,
    /// SIG_SEV: send a WFE wake-up event.
    Sev,
}

/// CMD_SYNC parameters (§4.7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sync {
    /// CS, bits [13:12].
    pub cs: CompletionSignal,
    /// MSH, bits [23:22]: MSI shareability.
    pub msh: u8,
    /// MSIAttr, bits [27:24]: MSI memory attributes.
    pub msi_attr: u8,
    /// MSIData, bits [63:32].
    pub msi_data: u32,
    /// MSIAddr, bits [119:66] (address bits [55:2]). In a guest's command
    /// this is a guest physical address the vSMMU must translate.
    pub msi_addr: PhysAddr,
}

impl Sync {
    /// A CMD_SYNC without completion signal (completion is seen in
    /// CMDQ_CONS).
    pub const fn none() -> Self {
        Self {
            cs: CompletionSignal::None,
            msh: 0,
            msi_attr: 0,
            msi_data: 0,
            msi_addr: PhysAddr(0),
        }
    }
}

/// CMD_PRI_RESP response (Resp, §4.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PriResponse {
    /// 0b00 ResponseFailure: permanent error.
    ResponseFailure,
    /// 0b01 InvalidRequest: some page could not be made present.
    InvalidRequest,
    /// 0b10 Success.
    Success,
}

/// CMD_RESUME action (Ac and Ab, §4.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResumeAction {
    /// Ac = 1: retry the stalled transaction.
    Retry,
    /// Ac = 0: terminate it; `abort` (Ab) reports an abort to the client,
    /// otherwise it completes with RAZ/WI.
    Terminate {
        /// Ab.
        abort: bool,
    },
}

/// One SMMUv3 command (§4.1.1). Field names follow the specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// CMD_PREFETCH_CONFIG (§4.2.1).
    PrefetchConfig {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV == 1.
        ssid: Option<Ssid>,
    },
    /// CMD_PREFETCH_ADDR (§4.2.2). Stride and NS (SMMUv3.1+, RES0 on the
    /// Non-secure queue in v3.0) are not modelled: entries using them are
    /// rejected as malformed.
    PrefetchAddr {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV == 1.
        ssid: Option<Ssid>,
        /// Addr[63:12].
        addr: Iova,
        /// Size: 2^Size translations (0..=31).
        size: u8,
    },
    /// CMD_CFGI_STE (§4.3.1).
    CfgiSte {
        /// StreamID.
        sid: StreamId,
        /// Leaf: only the STE, not the L1 descriptor.
        leaf: bool,
    },
    /// CMD_CFGI_STE_RANGE (§4.3.2): 2^(range+1) StreamIDs aligned around
    /// `sid`. `range` is 0..=30; 31 is [`Command::CfgiAll`].
    CfgiSteRange {
        /// StreamID.
        sid: StreamId,
        /// Range.
        range: u8,
    },
    /// CMD_CFGI_CD (§4.3.3).
    CfgiCd {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID (always used; there is no SSV).
        ssid: Ssid,
        /// Leaf: only the CD, not the L1CD.
        leaf: bool,
    },
    /// CMD_CFGI_CD_ALL (§4.3.4).
    CfgiCdAll {
        /// StreamID.
        sid: StreamId,
    },
    /// CMD_CFGI_ALL (§4.3.6): CMD_CFGI_STE_RANGE with Range = 31.
    CfgiAll,
    /// CMD_TLBI_NH_ALL (§4.4.2.1): all stage 1 entries of a VMID.
    TlbiNhAll {
        /// VMID.
        vmid: Vmid,
    },
    /// CMD_TLBI_NH_ASID (§4.4.2).
    TlbiNhAsid {
        /// VMID.
        vmid: Vmid,
        /// ASID.
        asid: Asid,
    },
    /// CMD_TLBI_NH_VA (§4.4.2).
    TlbiNhVa {
        /// VMID.
        vmid: Vmid,
        /// ASID.
        asid: Asid,
        /// Address[63:12].
        addr: Iova,
        /// Leaf and range fields.
        scope: TlbiScope,
    },
    /// CMD_TLBI_NH_VAA (§4.4.2): all ASIDs.
    TlbiNhVaa {
        /// VMID.
        vmid: Vmid,
        /// Address[63:12].
        addr: Iova,
        /// Leaf and range fields.
        scope: TlbiScope,
    },
    /// CMD_TLBI_EL2_ALL (§4.4.2).
    TlbiEl2All,
    /// CMD_TLBI_EL2_ASID (§4.4.2).
    TlbiEl2Asid {
        /// ASID.
        asid: Asid,
    },
    /// CMD_TLBI_EL2_VA (§4.4.2).
    TlbiEl2Va {
        /// ASID.
        asid: Asid,
        /// Address[63:12].
        addr: Iova,
        /// Leaf and range fields.
        scope: TlbiScope,
    },
    /// CMD_TLBI_EL2_VAA (§4.4.2).
    TlbiEl2Vaa {
        /// Address[63:12].
        addr: Iova,
        /// Leaf and range fields.
        scope: TlbiScope,
    },
    /// CMD_TLBI_S12_VMALL (§4.4.3): all stage 1 and stage 2 entries of a
    /// VMID.
    TlbiS12Vmall {
        /// VMID.
        vmid: Vmid,
    },
    /// CMD_TLBI_S2_IPA (§4.4.3).
    TlbiS2Ipa {
        /// VMID.
        vmid: Vmid,
        /// Address[55:12].
        addr: Ipa,
        /// Leaf and range fields.
        scope: TlbiScope,
    },
    /// CMD_TLBI_NSNH_ALL (§4.4.4): every Non-secure non-hypervisor entry.
    TlbiNsnhAll,
    /// CMD_ATC_INV (§4.5.1).
    AtcInv {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV == 1.
        ssid: Option<Ssid>,
        /// Global.
        global: bool,
        /// Address[63:12].
        addr: Iova,
        /// Size: span of 4096 * 2^Size bytes (0..=63; 52 = everything).
        size: u8,
    },
    /// CMD_PRI_RESP (§4.5.2).
    PriResp {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV == 1.
        ssid: Option<Ssid>,
        /// PRGIndex (0..=511).
        prg_index: u16,
        /// Resp.
        resp: PriResponse,
    },
    /// CMD_RESUME (§4.7.1).
    Resume {
        /// StreamID.
        sid: StreamId,
        /// STAG from the stall event record.
        stag: u16,
        /// Ac/Ab.
        action: ResumeAction,
    },
    /// CMD_STALL_TERM (§4.7.2).
    StallTerm {
        /// StreamID.
        sid: StreamId,
    },
    /// CMD_SYNC (§4.7.3).
    Sync(Sync),
}

type W0 = LocalRegisterCopy<u64, CMD0::Register>;
type W1 = LocalRegisterCopy<u64, CMD1::Register>;

/// The bits of a field, in place.
const fn bits<R: RegisterLongName>(f: Field<u64, R>) -> u64 {
    f.mask << f.shift
}

const SID_SSID: u64 = bits(CMD0::STREAMID) | bits(CMD0::SSV) | bits(CMD0::SUBSTREAMID);
const RANGE0: u64 = bits(CMD0::NUM) | bits(CMD0::SCALE);
const SCOPE1: u64 = bits(CMD1::LEAF) | bits(CMD1::TTL) | bits(CMD1::TG);

impl Command {
    /// The opcode of this command.
    pub fn opcode(&self) -> u8 {
        use opcode::*;
        match self {
            Command::PrefetchConfig { .. } => PREFETCH_CONFIG,
            Command::PrefetchAddr { .. } => PREFETCH_ADDR,
            Command::CfgiSte { .. } => CFGI_STE,
            Command::CfgiSteRange { .. } | Command::CfgiAll => CFGI_STE_RANGE,
            Command::CfgiCd { .. } => CFGI_CD,
            Command::CfgiCdAll { .. } => CFGI_CD_ALL,
            Command::TlbiNhAll { .. } => TLBI_NH_ALL,
            Command::TlbiNhAsid { .. } => TLBI_NH_ASID,
            Command::TlbiNhVa { .. } => TLBI_NH_VA,
            Command::TlbiNhVaa { .. } => TLBI_NH_VAA,
            Command::TlbiEl2All => TLBI_EL2_ALL,
            Command::TlbiEl2Asid { .. } => TLBI_EL2_ASID,
            Command::TlbiEl2Va { .. } => TLBI_EL2_VA,
            Command::TlbiEl2Vaa { .. } => TLBI_EL2_VAA,
            Command::TlbiS12Vmall { .. } => TLBI_S12_VMALL,
            Command::TlbiS2Ipa { .. } => TLBI_S2_IPA,
            Command::TlbiNsnhAll => TLBI_NSNH_ALL,
            Command::AtcInv { .. } => ATC_INV,
            Command::PriResp { .. } => PRI_RESP,
            Command::Resume { .. } => RESUME,
            Command::StallTerm { .. } => STALL_TERM,
            Command::Sync(_) => SYNC,
        }
    }

    /// The specification name, e.g. "CMD_TLBI_S2_IPA".
    pub fn name(&self) -> &'static str {
        match self {
            Command::PrefetchConfig { .. } => "CMD_PREFETCH_CONFIG",
            Command::PrefetchAddr { .. } => "CMD_PREFETCH_ADDR",
            Command::CfgiSte { .. } => "CMD_CFGI_STE",
            Command::CfgiSteRange { .. } => "CMD_CFGI_STE_RANGE",
            Command::CfgiCd { .. } => "CMD_CFGI_CD",
            Command::CfgiCdAll { .. } => "CMD_CFGI_CD_ALL",
            Command::CfgiAll => "CMD_CFGI_ALL",
            Command::TlbiNhAll { .. } => "CMD_TLBI_NH_ALL",
            Command::TlbiNhAsid { .. } => "CMD_TLBI_NH_ASID",
            Command::TlbiNhVa { .. } => "CMD_TLBI_NH_VA",
            Command::TlbiNhVaa { .. } => "CMD_TLBI_NH_VAA",
            Command::TlbiEl2All => "CMD_TLBI_EL2_ALL",
            Command::TlbiEl2Asid { .. } => "CMD_TLBI_EL2_ASID",
            Command::TlbiEl2Va { .. } => "CMD_TLBI_EL2_VA",
            Command::TlbiEl2Vaa { .. } => "CMD_TLBI_EL2_VAA",
            Command::TlbiS12Vmall { .. } => "CMD_TLBI_S12_VMALL",
            Command::TlbiS2Ipa { .. } => "CMD_TLBI_S2_IPA",
            Command::TlbiNsnhAll => "CMD_TLBI_NSNH_ALL",
            Command::AtcInv { .. } => "CMD_ATC_INV",
            Command::PriResp { .. } => "CMD_PRI_RESP",
            Command::Resume { .. } => "CMD_RESUME",
            Command::StallTerm { .. } => "CMD_STALL_TERM",
            Command::Sync(_) => "CMD_SYNC",
        }
    }

    /// The 16-byte queue entry as two little-endian 64-bit words.
    ///
    /// Values wider than their field (a SubstreamID above 20 bits, an IPA
    /// above bit 55, address bits below 12, a Range above 31) are truncated
    /// to the field; building such values is a caller bug.
    pub fn encode(&self) -> [u64; 2] {
        let mut w0 = W0::new(0);
        let mut w1 = W1::new(0);
        w0.modify(CMD0::OPCODE.val(u64::from(self.opcode())));
        let sid = |w0: &mut W0, sid: StreamId| w0.modify(CMD0::STREAMID.val(u64::from(sid.0)));
        let ssid = |w0: &mut W0, ssid: Option<Ssid>| {
            if let Some(s) = ssid {
                w0.modify(CMD0::SSV::SET + CMD0::SUBSTREAMID.val(u64::from(s.0)));
            }
        };
        let scope = |w0: &mut W0, w1: &mut W1, scope: &TlbiScope| {
            w1.modify(CMD1::LEAF.val(u64::from(scope.leaf)));
            if let Some(r) = scope.range {
                w0.modify(CMD0::NUM.val(u64::from(r.num)) + CMD0::SCALE.val(u64::from(r.scale)));
                w1.modify(CMD1::TG.val(r.tg.tg()) + CMD1::TTL.val(u64::from(r.ttl)));
            }
        };
        let va = |w1: &mut W1, a: Iova| w1.modify(CMD1::VA.val(a.0 >> 12));
        match *self {
            Command::PrefetchConfig { sid: s, ssid: ss } => {
                sid(&mut w0, s);
                ssid(&mut w0, ss);
            }
            Command::PrefetchAddr {
                sid: s,
                ssid: ss,
                addr,
                size,
            } => {
                sid(&mut w0, s);
                ssid(&mut w0, ss);
                va(&mut w1, addr);
                w1.modify(CMD1::PREFETCH_SIZE.val(u64::from(size)));
            }
            Command::CfgiSte { sid: s, leaf } => {
                sid(&mut w0, s);
                w1.modify(CMD1::LEAF.val(u64::from(leaf)));
            }
            Command::CfgiSteRange { sid: s, range } => {
                sid(&mut w0, s);
                w1.modify(CMD1::RANGE.val(u64::from(range)));
            }
            Command::CfgiCd {
                sid: s,
                ssid: ss,
                leaf,
            } => {
                sid(&mut w0, s);
                w0.modify(CMD0::SUBSTREAMID.val(u64::from(ss.0)));
                w1.modify(CMD1::LEAF.val(u64::from(leaf)));
            }
            Command::CfgiCdAll { sid: s } | Command::StallTerm { sid: s } => sid(&mut w0, s),
            Command::CfgiAll => w1.modify(CMD1::RANGE.val(u64::from(CFGI_ALL_RANGE))),
            Command::TlbiNhAll { vmid } | Command::TlbiS12Vmall { vmid } => {
                w0.modify(CMD0::VMID.val(u64::from(vmid.0)));
            }
            Command::TlbiNhAsid { vmid, asid } => {
                w0.modify(CMD0::VMID.val(u64::from(vmid.0)) + CMD0::ASID.val(u64::from(asid.0)));
            }
            Command::TlbiNhVa {
                vmid,
                asid,
                addr,
                scope: sc,
            } => {
                w0.modify(CMD0::VMID.val(u64::from(vmid.0)) + CMD0::ASID.val(u64::from(asid.0)));
                va(&mut w1, addr);
                scope(&mut w0, &mut w1, &sc);
            }
            Command::TlbiNhVaa {
                vmid,
                addr,
                scope: sc,
            } => {
                w0.modify(CMD0::VMID.val(u64::from(vmid.0)));
                va(&mut w1, addr);
                scope(&mut w0, &mut w1, &sc);
            }
            Command::TlbiEl2All | Command::TlbiNsnhAll => {}
            Command::TlbiEl2Asid { asid } => w0.modify(CMD0::ASID.val(u64::from(asid.0))),
            Command::TlbiEl2Va {
                asid,
                addr,
                scope: sc,
            } => {
                w0.modify(CMD0::ASID.val(u64::from(asid.0)));
                va(&mut w1, addr);
                scope(&mut w0, &mut w1, &sc);
            }
            Command::TlbiEl2Vaa { addr, scope: sc } => {
                va(&mut w1, addr);
                scope(&mut w0, &mut w1, &sc);
            }
            Command::TlbiS2Ipa {
                vmid,
                addr,
                scope: sc,
            } => {
                w0.modify(CMD0::VMID.val(u64::from(vmid.0)));
                w1.modify(CMD1::IPA.val(addr.0 >> 12));
                scope(&mut w0, &mut w1, &sc);
            }
            Command::AtcInv {
                sid: s,
                ssid: ss,
                global,
                addr,
                size,
            } => {
                sid(&mut w0, s);
                ssid(&mut w0, ss);
                w0.modify(CMD0::GLOBAL.val(u64::from(global)));
                va(&mut w1, addr);
                w1.modify(CMD1::ATC_SIZE.val(u64::from(size)));
            }
            Command::PriResp {
                sid: s,
                ssid: ss,
                prg_index,
                resp,
            } => {
                sid(&mut w0, s);
                ssid(&mut w0, ss);
                let resp = match resp {
                    PriResponse::ResponseFailure => CMD1::RESP::ResponseFailure,
                    PriResponse::InvalidRequest => CMD1::RESP::InvalidRequest,
                    PriResponse::Success => CMD1::RESP::Success,
                };
                w1.modify(CMD1::PRGINDEX.val(u64::from(prg_index)) + resp);
            }
            Command::Resume {
                sid: s,
                stag,
                action,
            } => {
                sid(&mut w0, s);
                match action {
                    ResumeAction::Retry => w0.modify(CMD0::AC::SET),
                    ResumeAction::Terminate { abort } => {
                        w0.modify(CMD0::AB.val(u64::from(abort)));
                    }
                }
                w1.modify(CMD1::STAG.val(u64::from(stag)));
            }
            Command::Sync(s) => {
                let cs = match s.cs {
                    CompletionSignal::None => CMD0::CS::SIG_NONE,
                    CompletionSignal::Irq => CMD0::CS::SIG_IRQ,
                    CompletionSignal::Sev => CMD0::CS::SIG_SEV,
                };
                w0.modify(
                    cs + CMD0::MSH.val(u64::from(s.msh))
                        + CMD0::MSIATTR.val(u64::from(s.msi_attr))
                        + CMD0::MSIDATA.val(u64::from(s.msi_data)),
                );
                w1.modify(CMD1::MSIADDR.val(s.msi_addr.0 >> 2));
            }
        }
        [w0.get(), w1.get()]
    }

    /// Parses a queue entry. Total: any input gives a command or an error
    /// (to be reported as CERROR_ILL), never a panic.
    ///
    /// The ASID/VMID width and the optional features (RIL, Hyp, stage 1,
    /// ATS, PRI, stall) are not checked here: the caller compares the result
    /// with what its SMMU (or vSMMU) implements.
    pub fn decode(words: [u64; 2]) -> Result<Command, CmdError> {
        use opcode::*;
        let w0 = W0::new(words[0]);
        let w1 = W1::new(words[1]);
        let op = w0.read(CMD0::OPCODE) as u8;
        let opc = bits(CMD0::OPCODE);
        // The fields each opcode defines; anything else must be zero.
        let (m0, m1) = match op {
            PREFETCH_CONFIG => (opc | SID_SSID, 0),
            PREFETCH_ADDR => (opc | SID_SSID, bits(CMD1::VA) | bits(CMD1::PREFETCH_SIZE)),
            CFGI_STE => (opc | bits(CMD0::STREAMID), bits(CMD1::LEAF)),
            CFGI_STE_RANGE => (opc | bits(CMD0::STREAMID), bits(CMD1::RANGE)),
            CFGI_CD => (
                opc | bits(CMD0::STREAMID) | bits(CMD0::SUBSTREAMID),
                bits(CMD1::LEAF),
            ),
            CFGI_CD_ALL | STALL_TERM => (opc | bits(CMD0::STREAMID), 0),
            TLBI_NH_ALL | TLBI_S12_VMALL => (opc | bits(CMD0::VMID), 0),
            TLBI_NH_ASID => (opc | bits(CMD0::VMID) | bits(CMD0::ASID), 0),
            TLBI_NH_VA => (
                opc | bits(CMD0::VMID) | bits(CMD0::ASID) | RANGE0,
                SCOPE1 | bits(CMD1::VA),
            ),
            TLBI_NH_VAA => (opc | bits(CMD0::VMID) | RANGE0, SCOPE1 | bits(CMD1::VA)),
            TLBI_EL2_ALL | TLBI_NSNH_ALL => (opc, 0),
            TLBI_EL2_ASID => (opc | bits(CMD0::ASID), 0),
            TLBI_EL2_VA => (opc | bits(CMD0::ASID) | RANGE0, SCOPE1 | bits(CMD1::VA)),
            TLBI_EL2_VAA => (opc | RANGE0, SCOPE1 | bits(CMD1::VA)),
            TLBI_S2_IPA => (opc | bits(CMD0::VMID) | RANGE0, SCOPE1 | bits(CMD1::IPA)),
            ATC_INV => (
                opc | SID_SSID | bits(CMD0::GLOBAL),
                bits(CMD1::VA) | bits(CMD1::ATC_SIZE),
            ),
            PRI_RESP => (opc | SID_SSID, bits(CMD1::PRGINDEX) | bits(CMD1::RESP)),
            RESUME => (
                opc | bits(CMD0::STREAMID) | bits(CMD0::AC) | bits(CMD0::AB),
                bits(CMD1::STAG),
            ),
            SYNC => (
                opc | bits(CMD0::CS) | bits(CMD0::MSH) | bits(CMD0::MSIATTR) | bits(CMD0::MSIDATA),
                bits(CMD1::MSIADDR),
            ),
            _ => return Err(CmdError::UnknownOpcode(op)),
        };
        let (bad0, bad1) = (words[0] & !m0, words[1] & !m1);
        if bad0 != 0 || bad1 != 0 {
            return Err(CmdError::ReservedBits {
                opcode: op,
                word0: bad0,
                word1: bad1,
            });
        }

        let sid = StreamId(w0.read(CMD0::STREAMID) as u32);
        let ssid = if w0.is_set(CMD0::SSV) {
            Some(Ssid(w0.read(CMD0::SUBSTREAMID) as u32))
        } else {
            None
        };
        let vmid = Vmid(w0.read(CMD0::VMID) as u16);
        let asid = Asid(w0.read(CMD0::ASID) as u16);
        let va = Iova(w1.read(CMD1::VA) << 12);
        let leaf = w1.is_set(CMD1::LEAF);
        let scope = || -> Result<TlbiScope, CmdError> {
            let (num, scale, ttl) = (
                w0.read(CMD0::NUM) as u8,
                w0.read(CMD0::SCALE) as u8,
                w1.read(CMD1::TTL) as u8,
            );
            let tg = match w1.read(CMD1::TG) {
                0 => {
                    // TTL, NUM and SCALE are RES0 without a granule.
                    if num != 0 || scale != 0 || ttl != 0 {
                        return Err(CmdError::IllegalField {
                            opcode: op,
                            field: "NUM/SCALE/TTL with TG == 0",
                        });
                    }
                    return Ok(TlbiScope { leaf, range: None });
                }
                1 => Granule::Size4K,
                2 => Granule::Size16K,
                _ => Granule::Size64K,
            };
            if num == 0 && scale == 0 && ttl == 0 {
                // §4.4.1.1: a granule with neither range nor level is Reserved.
                return Err(CmdError::IllegalField {
                    opcode: op,
                    field: "TG without NUM/SCALE/TTL",
                });
            }
            Ok(TlbiScope {
                leaf,
                range: Some(TlbiRange {
                    tg,
                    ttl,
                    scale,
                    num,
                }),
            })
        };

        Ok(match op {
            PREFETCH_CONFIG => Command::PrefetchConfig { sid, ssid },
            PREFETCH_ADDR => Command::PrefetchAddr {
                sid,
                ssid,
                addr: va,
                size: w1.read(CMD1::PREFETCH_SIZE) as u8,
            },
            CFGI_STE => Command::CfgiSte { sid, leaf },
            CFGI_STE_RANGE => match w1.read(CMD1::RANGE) as u8 {
                CFGI_ALL_RANGE => Command::CfgiAll,
                range => Command::CfgiSteRange { sid, range },
            },
            CFGI_CD => Command::CfgiCd {
                sid,
                ssid: Ssid(w0.read(CMD0::SUBSTREAMID) as u32),
                leaf,
            },
            CFGI_CD_ALL => Command::CfgiCdAll { sid },
            STALL_TERM => Command::StallTerm { sid },
            TLBI_NH_ALL => Command::TlbiNhAll { vmid },
            TLBI_S12_VMALL => Command::TlbiS12Vmall { vmid },
            TLBI_NH_ASID => Command::TlbiNhAsid { vmid, asid },
            TLBI_NH_VA => Command::TlbiNhVa {
                vmid,
                asid,
                addr: va,
                scope: scope()?,
            },
            TLBI_NH_VAA => Command::TlbiNhVaa {
                vmid,
                addr: va,
                scope: scope()?,
            },
            TLBI_EL2_ALL => Command::TlbiEl2All,
            TLBI_NSNH_ALL => Command::TlbiNsnhAll,
            TLBI_EL2_ASID => Command::TlbiEl2Asid { asid },
            TLBI_EL2_VA => Command::TlbiEl2Va {
                asid,
                addr: va,
                scope: scope()?,
            },
            TLBI_EL2_VAA => Command::TlbiEl2Vaa {
                addr: va,
                scope: scope()?,
            },
            TLBI_S2_IPA => Command::TlbiS2Ipa {
                vmid,
                addr: Ipa(w1.read(CMD1::IPA) << 12),
                scope: scope()?,
            },
            ATC_INV => Command::AtcInv {
                sid,
                ssid,
                global: w0.is_set(CMD0::GLOBAL),
                addr: va,
                size: w1.read(CMD1::ATC_SIZE) as u8,
            },
            PRI_RESP => Command::PriResp {
                sid,
                ssid,
                prg_index: w1.read(CMD1::PRGINDEX) as u16,
                resp: match w1.read(CMD1::RESP) {
                    0 => PriResponse::ResponseFailure,
                    1 => PriResponse::InvalidRequest,
                    2 => PriResponse::Success,
                    _ => {
                        return Err(CmdError::IllegalField {
                            opcode: op,
                            field: "Resp",
                        })
                    }
                },
            },
            RESUME => Command::Resume {
                sid,
                stag: w1.read(CMD1::STAG) as u16,
                action: if w0.is_set(CMD0::AC) {
                    ResumeAction::Retry
                } else {
                    ResumeAction::Terminate {
                        abort: w0.is_set(CMD0::AB),
                    }
                },
            },
            SYNC => Command::Sync(Sync {
                cs: match w0.read(CMD0::CS) {
                    0 => CompletionSignal::None,
                    1 => CompletionSignal::Irq,
                    2 => CompletionSignal::Sev,
                    _ => {
                        return Err(CmdError::IllegalField {
                            opcode: op,
                            field: "CS",
                        })
                    }
                },
                msh: w0.read(CMD0::MSH) as u8,
                msi_attr: w0.read(CMD0::MSIATTR) as u8,
                msi_data: w0.read(CMD0::MSIDATA) as u32,
                msi_addr: PhysAddr(w1.read(CMD1::MSIADDR) << 2),
            }),
            _ => return Err(CmdError::UnknownOpcode(op)),
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Command::CfgiSte { sid, leaf } => write!(f, " sid={sid} leaf={}", u8::from(*leaf)),
            Command::CfgiSteRange { sid, range } => write!(f, " sid={sid} range={range}"),
            Command::CfgiCd { sid, ssid, leaf } => {
                write!(f, " sid={sid} ssid={ssid} leaf={}", u8::from(*leaf))
            }
            Command::CfgiCdAll { sid } | Command::StallTerm { sid } => write!(f, " sid={sid}"),
            Command::TlbiNhAll { vmid } | Command::TlbiS12Vmall { vmid } => {
                write!(f, " vmid={vmid}")
            }
            Command::TlbiNhAsid { vmid, asid } => write!(f, " vmid={vmid} asid={asid}"),
            Command::TlbiNhVa {
                vmid,
                asid,
                addr,
                scope,
            } => write!(f, " vmid={vmid} asid={asid} addr={addr}{scope}"),
            Command::TlbiNhVaa { vmid, addr, scope } => {
                write!(f, " vmid={vmid} addr={addr}{scope}")
            }
            Command::TlbiEl2Asid { asid } => write!(f, " asid={asid}"),
            Command::TlbiEl2Va { asid, addr, scope } => {
                write!(f, " asid={asid} addr={addr}{scope}")
            }
            Command::TlbiEl2Vaa { addr, scope } => write!(f, " addr={addr}{scope}"),
            Command::TlbiS2Ipa { vmid, addr, scope } => write!(f, " vmid={vmid} ipa={addr}{scope}"),
            Command::Sync(s) => write!(f, " cs={:?}", s.cs),
            other => write!(f, " {other:?}"),
        }
    }
}

impl fmt::Display for TlbiScope {
    /// The scope as a suffix: " leaf", " range=<bytes> ttl=<n>".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.leaf {
            f.write_str(" leaf")?;
        }
        if let Some(r) = self.range {
            write!(f, " range={:#x} ttl={}", r.bytes(), r.ttl)?;
        }
        Ok(())
    }
}

/// Level of the leaf entries an invalidation targets, in a 4 KiB-granule
/// table (the only granule this hypervisor uses for the SMMU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TtLevel {
    /// Level 1: 1 GiB blocks.
    L1,
    /// Level 2: 2 MiB blocks.
    L2,
    /// Level 3: 4 KiB pages.
    L3,
}

impl TtLevel {
    /// log2 of the size of one entry at this level.
    pub fn block_shift(self) -> u32 {
        match self {
            TtLevel::L1 => 30,
            TtLevel::L2 => 21,
            TtLevel::L3 => 12,
        }
    }

    fn ttl(self) -> u8 {
        match self {
            TtLevel::L1 => 1,
            TtLevel::L2 => 2,
            TtLevel::L3 => 3,
        }
    }
}

/// Above this many per-block commands (without range invalidation), the
/// range helpers refuse with [`CmdError::TooManyCommands`]: filling the
/// queue with thousands of single-page invalidations costs more than
/// refilling the TLB, so the caller should invalidate the whole context
/// (CMD_TLBI_S12_VMALL for a VMID, CMD_TLBI_NH_ASID for an ASID) instead.
/// Linux's driver uses the same bound.
pub const MAX_TLBI_OPS: u64 = 512;

/// The invalidations for the IPA range `[start, start + len)` of `vmid`,
/// whose leaf entries are at `level` (4 KiB granule): CMD_TLBI_S2_IPA, to be
/// followed by one CMD_SYNC for the whole batch.
///
/// The range is widened to whole entries of `level`. With `ril`
/// (IDR3.RIL), it is covered by the fewest range commands the NUM/SCALE
/// encoding allows, each with the TTL level hint, covering exactly the
/// touched entries. Without it, one command per entry; above
/// [`MAX_TLBI_OPS`] entries this returns [`CmdError::TooManyCommands`] and
/// the caller issues CMD_TLBI_S12_VMALL(`vmid`) instead. `leaf == false`
/// also removes cached table entries (needed when tables are freed).
/// An empty range gives no command.
pub fn tlbi_ipa_range(
    vmid: Vmid,
    start: Ipa,
    len: u64,
    level: TtLevel,
    leaf: bool,
    ril: bool,
) -> Result<Vec<Command>, CmdError> {
    // Address[55:12] is all a command can carry (§4.1.6).
    range_commands(start.0, len, level, leaf, ril, 1 << 56, |addr, scope| {
        Command::TlbiS2Ipa {
            vmid,
            addr: Ipa(addr),
            scope,
        }
    })
}

/// The invalidations for the VA range `[start, start + len)` of (`vmid`,
/// `asid`), leaf entries at `level`: CMD_TLBI_NH_VA, as
/// [`tlbi_ipa_range`]. Above [`MAX_TLBI_OPS`] entries without RIL, the
/// caller issues CMD_TLBI_NH_ASID instead.
pub fn tlbi_va_range(
    vmid: Vmid,
    asid: Asid,
    start: Iova,
    len: u64,
    level: TtLevel,
    leaf: bool,
    ril: bool,
) -> Result<Vec<Command>, CmdError> {
    range_commands(start.0, len, level, leaf, ril, 0, |addr, scope| {
        Command::TlbiNhVa {
            vmid,
            asid,
            addr: Iova(addr),
            scope,
        }
    })
}

/// Shared planner. `limit` is the exclusive end of expressible addresses
/// (0 for the whole 64-bit space).
fn range_commands(
    start: u64,
    len: u64,
    level: TtLevel,
    leaf: bool,
    ril: bool,
    limit: u64,
    make: impl Fn(u64, TlbiScope) -> Command,
) -> Result<Vec<Command>, CmdError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let last = start.checked_add(len - 1).ok_or(CmdError::RangeOverflow)?;
    if limit != 0 && last >= limit {
        return Err(CmdError::RangeOverflow);
    }
    let shift = level.block_shift();
    let first_block = start >> shift;
    let blocks = (last >> shift) - first_block + 1;
    let mut cmds = Vec::new();
    if !ril {
        if blocks > MAX_TLBI_OPS {
            return Err(CmdError::TooManyCommands(blocks));
        }
        for b in 0..blocks {
            let scope = TlbiScope { leaf, range: None };
            cmds.push(make((first_block + b) << shift, scope));
        }
        return Ok(cmds);
    }
    // Range commands count 4 KiB granules: one entry is 2^level_scale of
    // them, and SCALE (5 bits) bounds the scale available per command.
    let level_scale = shift - 12;
    let max_scale = 31 - level_scale;
    let mut block = first_block;
    let mut remaining = blocks;
    while remaining > 0 {
        // Cover the lowest set bit of what remains together with the
        // (up to) four bits above it: one command per 5-bit window.
        let s = remaining.trailing_zeros().min(max_scale);
        let n = if remaining.trailing_zeros() <= max_scale {
            (remaining >> s) & 0x1F
        } else {
            (remaining >> s).min(32)
        };
        let range = TlbiRange {
            tg: Granule::Size4K,
            ttl: level.ttl(),
            scale: (s + level_scale) as u8,
            num: (n - 1) as u8,
        };
        cmds.push(make(
            block << shift,
            TlbiScope {
                leaf,
                range: Some(range),
            },
        ));
        block += n << s;
        remaining -= n << s;
        if cmds.len() as u64 > MAX_TLBI_OPS {
            // Only ranges of hundreds of TiB get here.
            return Err(CmdError::TooManyCommands(cmds.len() as u64 + 1));
        }
    }
    Ok(cmds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        // CMD_CFGI_STE sid 8, leaf.
        assert_eq!(
            Command::CfgiSte {
                sid: StreamId(8),
                leaf: true
            }
            .encode(),
            [0x0000_0008_0000_0003, 1]
        );
        // CMD_CFGI_ALL: opcode 4, Range 31.
        assert_eq!(Command::CfgiAll.encode(), [0x04, 31]);
        // CMD_TLBI_S2_IPA vmid 5, IPA 0x8000_1000, leaf, no range.
        assert_eq!(
            Command::TlbiS2Ipa {
                vmid: Vmid(5),
                addr: Ipa(0x8000_1000),
                scope: TlbiScope {
                    leaf: true,
                    range: None
                }
            }
            .encode(),
            [0x0000_0005_0000_002A, 0x8000_1001]
        );
        // CMD_TLBI_NH_VA with range: NUM [16:12], SCALE [24:20], TTL [73:72], TG [75:74].
        let c = Command::TlbiNhVa {
            vmid: Vmid(1),
            asid: Asid(2),
            addr: Iova(0x20_0000),
            scope: TlbiScope {
                leaf: false,
                range: Some(TlbiRange {
                    tg: Granule::Size4K,
                    ttl: 2,
                    scale: 9,
                    num: 3,
                }),
            },
        };
        assert_eq!(
            c.encode(),
            [0x0002_0001_0090_3012, 0x20_0000 | (1 << 10) | (2 << 8)]
        );
        // CMD_SYNC with SIG_IRQ and an MSI.
        let s = Command::Sync(Sync {
            cs: CompletionSignal::Irq,
            msh: 3,
            msi_attr: 0xF,
            msi_data: 0xdead_beef,
            msi_addr: PhysAddr(0x0900_0044),
        });
        assert_eq!(s.encode(), [0xDEAD_BEEF_0FC0_1046, 0x0900_0044]);
        assert_eq!(Command::Sync(Sync::none()).encode(), [0x46, 0]);
    }

    #[test]
    fn decode_rejects_what_hardware_rejects() {
        assert_eq!(Command::decode([0, 0]), Err(CmdError::UnknownOpcode(0)));
        assert_eq!(
            Command::decode([0x18, 0]),
            Err(CmdError::UnknownOpcode(0x18))
        );
        // SSec set on CMD_CFGI_STE.
        assert!(matches!(
            Command::decode([0x03 | 1 << 10, 0]),
            Err(CmdError::ReservedBits { opcode: 3, .. })
        ));
        // CMD_TLBI_NSNH_ALL with stray bits in the second word.
        assert!(matches!(
            Command::decode([0x30, 1]),
            Err(CmdError::ReservedBits {
                opcode: 0x30,
                word0: 0,
                word1: 1
            })
        ));
        // CMD_SYNC with CS = 0b11.
        assert!(matches!(
            Command::decode([0x46 | 3 << 12, 0]),
            Err(CmdError::IllegalField { field: "CS", .. })
        ));
        // CMD_PRI_RESP with Resp = 0b11.
        assert!(matches!(
            Command::decode([0x41, 3 << 12]),
            Err(CmdError::IllegalField { field: "Resp", .. })
        ));
        // TG != 0 with NUM = SCALE = TTL = 0 is Reserved (§4.4.1.1).
        assert!(matches!(
            Command::decode([0x2A, 1 << 10]),
            Err(CmdError::IllegalField { .. })
        ));
        // TTL without TG.
        assert!(matches!(
            Command::decode([0x2A, 3 << 8]),
            Err(CmdError::IllegalField { .. })
        ));
        // IPA bits above 55 are RES0.
        assert!(matches!(
            Command::decode([0x2A, 1 << 60]),
            Err(CmdError::ReservedBits { .. })
        ));
        assert_eq!(CmdError::UnknownOpcode(0).cerror(), 1);
    }

    #[test]
    fn decode_drops_ignored_fields() {
        // CMD_CFGI_ALL ignores its StreamID.
        assert_eq!(
            Command::decode([0x0000_0123_0000_0004, 31]),
            Ok(Command::CfgiAll)
        );
        // A SubstreamID without SSV is IGNORED.
        assert_eq!(
            Command::decode([0x0000_0007_0005_0001, 0]),
            Ok(Command::PrefetchConfig {
                sid: StreamId(7),
                ssid: None
            })
        );
        // Ab is ignored when retrying.
        assert_eq!(
            Command::decode([0x0000_0002_0000_3044, 9]),
            Ok(Command::Resume {
                sid: StreamId(2),
                stag: 9,
                action: ResumeAction::Retry
            })
        );
    }

    fn ssid() -> impl Strategy<Value = Ssid> {
        (0u32..1 << 20).prop_map(Ssid)
    }
    fn opt_ssid() -> impl Strategy<Value = Option<Ssid>> {
        proptest::option::of(ssid())
    }
    fn sid() -> impl Strategy<Value = StreamId> {
        any::<u32>().prop_map(StreamId)
    }
    fn vmid() -> impl Strategy<Value = Vmid> {
        any::<u16>().prop_map(Vmid)
    }
    fn asid() -> impl Strategy<Value = Asid> {
        any::<u16>().prop_map(Asid)
    }
    fn va() -> impl Strategy<Value = Iova> {
        any::<u64>().prop_map(|a| Iova(a & !0xFFF))
    }
    fn ipa() -> impl Strategy<Value = Ipa> {
        (0u64..1 << 44).prop_map(|p| Ipa(p << 12))
    }
    fn scope() -> impl Strategy<Value = TlbiScope> {
        let range = (0u8..3, 0u8..4, 0u8..32, 0u8..32)
            .prop_filter("reserved TG-only encoding", |(_, ttl, s, n)| {
                *ttl != 0 || *s != 0 || *n != 0
            })
            .prop_map(|(tg, ttl, scale, num)| TlbiRange {
                tg: [Granule::Size4K, Granule::Size16K, Granule::Size64K][tg as usize],
                ttl,
                scale,
                num,
            });
        (any::<bool>(), proptest::option::of(range))
            .prop_map(|(leaf, range)| TlbiScope { leaf, range })
    }

    fn command() -> impl Strategy<Value = Command> {
        let config = prop_oneof![
            (sid(), opt_ssid()).prop_map(|(sid, ssid)| Command::PrefetchConfig { sid, ssid }),
            (sid(), opt_ssid(), va(), 0u8..32).prop_map(|(sid, ssid, addr, size)| {
                Command::PrefetchAddr {
                    sid,
                    ssid,
                    addr,
                    size,
                }
            }),
            (sid(), any::<bool>()).prop_map(|(sid, leaf)| Command::CfgiSte { sid, leaf }),
            (sid(), 0u8..31).prop_map(|(sid, range)| Command::CfgiSteRange { sid, range }),
            (sid(), ssid(), any::<bool>()).prop_map(|(sid, ssid, leaf)| Command::CfgiCd {
                sid,
                ssid,
                leaf
            }),
            sid().prop_map(|sid| Command::CfgiCdAll { sid }),
            Just(Command::CfgiAll),
            sid().prop_map(|sid| Command::StallTerm { sid }),
            (sid(), any::<u16>(), proptest::option::of(any::<bool>())).prop_map(
                |(sid, stag, a)| Command::Resume {
                    sid,
                    stag,
                    action: match a {
                        None => ResumeAction::Retry,
                        Some(abort) => ResumeAction::Terminate { abort },
                    },
                }
            ),
        ];
        let tlbi = prop_oneof![
            vmid().prop_map(|vmid| Command::TlbiNhAll { vmid }),
            (vmid(), asid()).prop_map(|(vmid, asid)| Command::TlbiNhAsid { vmid, asid }),
            (vmid(), asid(), va(), scope()).prop_map(|(vmid, asid, addr, scope)| {
                Command::TlbiNhVa {
                    vmid,
                    asid,
                    addr,
                    scope,
                }
            }),
            (vmid(), va(), scope()).prop_map(|(vmid, addr, scope)| Command::TlbiNhVaa {
                vmid,
                addr,
                scope
            }),
            Just(Command::TlbiEl2All),
            asid().prop_map(|asid| Command::TlbiEl2Asid { asid }),
            (asid(), va(), scope()).prop_map(|(asid, addr, scope)| Command::TlbiEl2Va {
                asid,
                addr,
                scope
            }),
            (va(), scope()).prop_map(|(addr, scope)| Command::TlbiEl2Vaa { addr, scope }),
            vmid().prop_map(|vmid| Command::TlbiS12Vmall { vmid }),
            (vmid(), ipa(), scope()).prop_map(|(vmid, addr, scope)| Command::TlbiS2Ipa {
                vmid,
                addr,
                scope
            }),
            Just(Command::TlbiNsnhAll),
        ];
        let other = prop_oneof![
            (sid(), opt_ssid(), any::<bool>(), va(), 0u8..64).prop_map(
                |(sid, ssid, global, addr, size)| Command::AtcInv {
                    sid,
                    ssid,
                    global,
                    addr,
                    size,
                }
            ),
            (sid(), opt_ssid(), 0u16..512, 0usize..3).prop_map(|(sid, ssid, prg_index, r)| {
                Command::PriResp {
                    sid,
                    ssid,
                    prg_index,
                    resp: [
                        PriResponse::ResponseFailure,
                        PriResponse::InvalidRequest,
                        PriResponse::Success,
                    ][r],
                }
            }),
            (0usize..3, 0u8..4, 0u8..16, any::<u32>(), 0u64..1 << 54).prop_map(
                |(cs, msh, msi_attr, msi_data, a)| Command::Sync(Sync {
                    cs: [
                        CompletionSignal::None,
                        CompletionSignal::Irq,
                        CompletionSignal::Sev
                    ][cs],
                    msh,
                    msi_attr,
                    msi_data,
                    msi_addr: PhysAddr(a << 2),
                })
            ),
        ];
        prop_oneof![config, tlbi, other]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn decode_inverts_encode(c in command()) {
            let words = c.encode();
            prop_assert_eq!(words[0] & 0xFF, u64::from(c.opcode()));
            prop_assert_eq!(Command::decode(words), Ok(c));
        }

        /// Hostile input: never a panic, and anything accepted re-encodes to
        /// a command with the same meaning (decoding its encoding again
        /// gives the same command).
        #[test]
        fn decode_is_total(w0 in any::<u64>(), w1 in any::<u64>(), op in prop::sample::select(vec![
            0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x10, 0x11, 0x12, 0x13, 0x18, 0x20,
            0x21, 0x22, 0x23, 0x28, 0x2A, 0x30, 0x40, 0x41, 0x44, 0x45, 0x46, 0x50, 0xFF,
        ]), sparse_mask0 in any::<u64>(), sparse_mask1 in any::<u64>()) {
            // Random words with a real opcode, thinned out so that some
            // pass the reserved-bit check.
            for words in [[w0, w1], [(w0 & sparse_mask0 & !0xFF) | u64::from(op), w1 & sparse_mask1 & sparse_mask0]] {
                if let Ok(c) = Command::decode(words) {
                    prop_assert_eq!(Command::decode(c.encode()), Ok(c));
                    let _ = c.to_string();
                }
            }
        }
    }

    /// Covered byte interval of each command, per the semantics: a range
    /// command covers `[addr, addr + (NUM+1) * 2^SCALE * 4K)`, a plain one
    /// the entry of `level` that holds `addr`.
    fn covered(cmds: &[Command], level: TtLevel) -> Vec<(u128, u128)> {
        let mut v: Vec<(u128, u128)> = cmds
            .iter()
            .map(|c| {
                let (addr, scope) = match *c {
                    Command::TlbiS2Ipa { addr, scope, .. } => (addr.0, scope),
                    Command::TlbiNhVa { addr, scope, .. } => (addr.0, scope),
                    _ => panic!("unexpected {c}"),
                };
                let len = match scope.range {
                    Some(r) => {
                        assert_eq!(r.tg, Granule::Size4K);
                        assert_eq!(r.ttl, level.ttl());
                        (u128::from(r.num) + 1) << (u32::from(r.scale) + 12)
                    }
                    None => 1u128 << level.block_shift(),
                };
                (u128::from(addr), u128::from(addr) + len)
            })
            .collect();
        v.sort();
        v
    }

    /// Fewest terms `n * 2^s` (1 <= n <= 32, s <= max_s) summing to `x`.
    fn optimal_terms(limit: u64, max_s: u32) -> Vec<u32> {
        let mut best = vec![u32::MAX; limit as usize + 1];
        best[0] = 0;
        for x in 1..=limit {
            for s in 0..=max_s.min(63) {
                for n in 1..=32u64 {
                    let t = n << s;
                    if t > x {
                        break;
                    }
                    let prev = best[(x - t) as usize];
                    if prev != u32::MAX {
                        best[x as usize] = best[x as usize].min(prev + 1);
                    }
                }
            }
        }
        best
    }

    #[test]
    fn ril_plan_is_minimal_for_small_counts() {
        let best = optimal_terms(4096, 31);
        for blocks in 1..=4096u64 {
            let cmds =
                tlbi_ipa_range(Vmid(1), Ipa(0), blocks << 12, TtLevel::L3, true, true).unwrap();
            assert_eq!(cmds.len() as u32, best[blocks as usize], "{blocks} pages");
        }
    }

    #[test]
    fn range_helper_examples() {
        // 2 MiB + 1 byte from a page boundary at L3: 513 pages = 1 + 512.
        let cmds = tlbi_ipa_range(
            Vmid(3),
            Ipa(0x4000_0000),
            0x20_0001,
            TtLevel::L3,
            true,
            true,
        )
        .unwrap();
        assert_eq!(cmds.len(), 2);
        // Without RIL: one per page, refused past MAX_TLBI_OPS.
        let cmds =
            tlbi_ipa_range(Vmid(3), Ipa(0x4000_0000), 0x4000, TtLevel::L3, true, false).unwrap();
        assert_eq!(cmds.len(), 4);
        assert_eq!(
            tlbi_ipa_range(Vmid(3), Ipa(0), 0x1000 * 513, TtLevel::L3, true, false),
            Err(CmdError::TooManyCommands(513))
        );
        // A 4 KiB unmap inside a 2 MiB block invalidates the block.
        let cmds =
            tlbi_ipa_range(Vmid(3), Ipa(0x4010_0000), 0x1000, TtLevel::L2, true, false).unwrap();
        assert_eq!(
            cmds,
            [Command::TlbiS2Ipa {
                vmid: Vmid(3),
                addr: Ipa(0x4000_0000),
                scope: TlbiScope {
                    leaf: true,
                    range: None
                }
            }]
        );
        assert_eq!(
            tlbi_ipa_range(Vmid(3), Ipa(0), 0, TtLevel::L3, true, true),
            Ok(Vec::new())
        );
        assert_eq!(
            tlbi_ipa_range(
                Vmid(3),
                Ipa((1 << 56) - 0x1000),
                0x2000,
                TtLevel::L3,
                true,
                true
            ),
            Err(CmdError::RangeOverflow)
        );
        // The top 256 TiB of the VA space at level 1: one command of
        // 32 * 2^13 GiB (SCALE 31, the largest a 5-bit field holds).
        let cmds = tlbi_va_range(
            Vmid(0),
            Asid(1),
            Iova(0u64.wrapping_sub(1 << 48)),
            1 << 48,
            TtLevel::L1,
            true,
            true,
        )
        .unwrap();
        assert_eq!(cmds.len(), 1);
        let cov = covered(&cmds, TtLevel::L1);
        assert_eq!(
            cov[0],
            (u128::from(0u64.wrapping_sub(1 << 48)), 1u128 << 64)
        );
        // The whole 64-bit space cannot be expressed in a few commands.
        assert!(matches!(
            tlbi_va_range(Vmid(0), Asid(1), Iova(0), u64::MAX, TtLevel::L1, true, true),
            Err(CmdError::TooManyCommands(_))
        ));
    }

    fn level() -> impl Strategy<Value = TtLevel> {
        prop_oneof![Just(TtLevel::L1), Just(TtLevel::L2), Just(TtLevel::L3)]
    }

    proptest! {
        /// The commands cover exactly the entries the range touches: no
        /// page missed, nothing outside the touched entries, no overlap.
        #[test]
        fn range_plan_covers_exactly(
            start in 0u64..1 << 48,
            len in prop_oneof![1u64..0x10_0000, 1u64..1 << 40],
            level in level(),
            leaf in any::<bool>(),
            ril in any::<bool>(),
        ) {
            let shift = level.block_shift();
            let first = u128::from(start >> shift) << shift;
            let end = ((u128::from(start) + u128::from(len) - 1) >> shift << shift) + (1u128 << shift);
            let blocks = ((end - first) >> shift) as u64;
            let res = tlbi_ipa_range(Vmid(9), Ipa(start), len, level, leaf, ril);
            if !ril && blocks > MAX_TLBI_OPS {
                prop_assert_eq!(res, Err(CmdError::TooManyCommands(blocks)));
                return Ok(());
            }
            let cmds = res.unwrap();
            for c in &cmds {
                // Every command is itself a legal, round-tripping encoding.
                prop_assert_eq!(Command::decode(c.encode()), Ok(*c));
                if let Command::TlbiS2Ipa { vmid, scope, addr } = c {
                    prop_assert_eq!(*vmid, Vmid(9));
                    prop_assert_eq!(scope.leaf, leaf);
                    prop_assert!(addr.is_aligned(1 << shift));
                }
            }
            let cov = covered(&cmds, level);
            prop_assert_eq!(cov.first().unwrap().0, first);
            prop_assert_eq!(cov.last().unwrap().1, end);
            for pair in cov.windows(2) {
                prop_assert_eq!(pair[0].1, pair[1].0, "gap or overlap");
            }
            if ril {
                // At most one command per 5-bit window of the entry count.
                prop_assert!(cmds.len() as u32 <= (64 - blocks.leading_zeros()).div_ceil(5) + 1);
            } else {
                prop_assert_eq!(cmds.len() as u64, blocks);
            }
        }
    }
}
