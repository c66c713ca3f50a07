//! SMMUv3 event records (IHI 0070 §7.3): the 32-byte entries of an event
//! queue.
//!
//! The driver [`decode`](Event::decode)s what the physical SMMU reports, to
//! attribute faults to a VM and device; the vSMMU [`encode`](Event::encode)s
//! records it injects into a guest's event queue (stage 1 faults of nested
//! streams, with the virtual StreamID). Decoding is total: unknown or
//! undecoded event types are kept as raw words, bits a record type does not
//! define are ignored, and nothing panics.
//!
//! Field positions common to the fault records: StreamID [63:32], SSV [11],
//! SubstreamID [31:12], STAG [79:64], Stall [95], NSIPA [96], PnU [97], InD
//! [98], RnW [99], S2 [103], CLASS [105:104], TTRnW [108], InputAddr
//! [191:128], IPA [247:204], FetchAddr [247:195].

use crate::addr::{Iova, Ipa, PhysAddr, Ssid, StreamId};
use core::fmt;
use tock_registers::{register_bitfields, LocalRegisterCopy};

register_bitfields![u64,
    /// Bits [63:0] of an event record.
    pub EVT0 [
        /// Event type, bits [7:0].
        EVENT_ID OFFSET(0) NUMBITS(8) [],
        /// SubstreamID valid, bit [11].
        SSV OFFSET(11) NUMBITS(1) [],
        /// SubstreamID, bits [31:12].
        SUBSTREAMID OFFSET(12) NUMBITS(20) [],
        /// StreamID, bits [63:32].
        STREAMID OFFSET(32) NUMBITS(32) []
    ],
    /// Bits [127:64]; offsets relative to bit 64.
    pub EVT1 [
        /// Stall tag, bits [79:64] (when Stall == 1).
        STAG OFFSET(0) NUMBITS(16) [],
        /// IMPLEMENTATION DEFINED reason, bits [79:64] (F_UUT, F_*_FETCH).
        REASON OFFSET(0) NUMBITS(16) [],
        /// IMPLEMENTATION DEFINED reason, bits [95:64] (F_CFG_CONFLICT).
        REASON32 OFFSET(0) NUMBITS(32) [],
        /// Granule protection check fault, bit [80] (F_*_FETCH).
        GPCF OFFSET(16) NUMBITS(1) [],
        /// The transaction is stalled, bit [95].
        STALL OFFSET(31) NUMBITS(1) [],
        /// Non-secure IPA space, bit [96].
        NSIPA OFFSET(32) NUMBITS(1) [],
        /// Privileged, bit [97].
        PNU OFFSET(33) NUMBITS(1) [],
        /// Instruction fetch, bit [98].
        IND OFFSET(34) NUMBITS(1) [],
        /// Read (1) or write (0), bit [99].
        RNW OFFSET(35) NUMBITS(1) [],
        /// Fault at stage 2, bit [103].
        S2 OFFSET(39) NUMBITS(1) [],
        /// What was being accessed, bits [105:104].
        CLASS OFFSET(40) NUMBITS(2) [
            CD = 0,
            TT = 1,
            IN = 2
        ],
        /// Stage 1 walk access that faulted at stage 2 was a read, bit [108].
        TTRNW OFFSET(44) NUMBITS(1) []
    ],
    /// Bits [255:192]; offsets relative to bit 192.
    pub EVT3 [
        /// Faulting IPA [55:12], bits [247:204].
        IPA OFFSET(12) NUMBITS(44) [],
        /// Physical fetch address [55:3], bits [247:195].
        FETCHADDR OFFSET(3) NUMBITS(53) []
    ]
];

/// Event type numbers (§7.3).
pub mod event_id {
    /// F_UUT: unsupported upstream transaction.
    pub const F_UUT: u8 = 0x01;
    /// C_BAD_STREAMID: StreamID out of range.
    pub const C_BAD_STREAMID: u8 = 0x02;
    /// F_STE_FETCH: external abort fetching an STE.
    pub const F_STE_FETCH: u8 = 0x03;
    /// C_BAD_STE: invalid STE.
    pub const C_BAD_STE: u8 = 0x04;
    /// F_BAD_ATS_TREQ: ATS translation request disallowed.
    pub const F_BAD_ATS_TREQ: u8 = 0x05;
    /// F_STREAM_DISABLED: non-substream traffic disabled.
    pub const F_STREAM_DISABLED: u8 = 0x06;
    /// F_TRANSL_FORBIDDEN: translated transaction where bypass is not allowed.
    pub const F_TRANSL_FORBIDDEN: u8 = 0x07;
    /// C_BAD_SUBSTREAMID: SubstreamID out of range or not allowed.
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    /// F_CD_FETCH: external abort fetching a CD.
    pub const F_CD_FETCH: u8 = 0x09;
    /// C_BAD_CD: invalid CD.
    pub const C_BAD_CD: u8 = 0x0A;
    /// F_WALK_EABT: external abort during a translation-table walk.
    pub const F_WALK_EABT: u8 = 0x0B;
    /// F_TRANSLATION: translation fault.
    pub const F_TRANSLATION: u8 = 0x10;
    /// F_ADDR_SIZE: address size fault.
    pub const F_ADDR_SIZE: u8 = 0x11;
    /// F_ACCESS: access flag fault.
    pub const F_ACCESS: u8 = 0x12;
    /// F_PERMISSION: permission fault.
    pub const F_PERMISSION: u8 = 0x13;
    /// F_TLB_CONFLICT: TLB conflict.
    pub const F_TLB_CONFLICT: u8 = 0x20;
    /// F_CFG_CONFLICT: configuration cache conflict.
    pub const F_CFG_CONFLICT: u8 = 0x21;
    /// E_PAGE_REQUEST: speculative page request hint.
    pub const E_PAGE_REQUEST: u8 = 0x24;
    /// F_VMS_FETCH: external abort fetching a VMS.
    pub const F_VMS_FETCH: u8 = 0x25;

    /// The specification name of an event type, if architected here.
    pub fn name(id: u8) -> Option<&'static str> {
        Some(match id {
            F_UUT => "F_UUT",
            C_BAD_STREAMID => "C_BAD_STREAMID",
            F_STE_FETCH => "F_STE_FETCH",
            C_BAD_STE => "C_BAD_STE",
            F_BAD_ATS_TREQ => "F_BAD_ATS_TREQ",
            F_STREAM_DISABLED => "F_STREAM_DISABLED",
            F_TRANSL_FORBIDDEN => "F_TRANSL_FORBIDDEN",
            C_BAD_SUBSTREAMID => "C_BAD_SUBSTREAMID",
            F_CD_FETCH => "F_CD_FETCH",
            C_BAD_CD => "C_BAD_CD",
            F_WALK_EABT => "F_WALK_EABT",
            F_TRANSLATION => "F_TRANSLATION",
            F_ADDR_SIZE => "F_ADDR_SIZE",
            F_ACCESS => "F_ACCESS",
            F_PERMISSION => "F_PERMISSION",
            F_TLB_CONFLICT => "F_TLB_CONFLICT",
            F_CFG_CONFLICT => "F_CFG_CONFLICT",
            E_PAGE_REQUEST => "E_PAGE_REQUEST",
            F_VMS_FETCH => "F_VMS_FETCH",
            _ => return None,
        })
    }
}

/// Errors of event handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventError {
    /// [`Event::Other`] words whose type byte names an event this module
    /// decodes into its own variant; encoding them would bypass that
    /// variant's field layout.
    RawOfKnownType(u8),
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::RawOfKnownType(id) => {
                write!(f, "raw event record of decoded type {id:#04x}")
            }
        }
    }
}

/// Attributes of the faulting transaction (§7.3, common fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Access {
    /// RnW, bit [99]: read (true) or write.
    pub rnw: bool,
    /// InD, bit [98]: instruction fetch.
    pub ind: bool,
    /// PnU, bit [97]: privileged.
    pub pnu: bool,
}

/// CLASS, bits [105:104]: what the faulting access was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultClass {
    /// 0b00 CD: fetching a context descriptor.
    Cd,
    /// 0b01 TT: a stage 1 translation-table walk.
    Tt,
    /// 0b10 IN: the input address itself.
    In,
    /// 0b11: Reserved.
    Reserved,
}

/// The four translation-fault events sharing one layout (§7.3.13-16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// F_TRANSLATION (0x10).
    Translation,
    /// F_ADDR_SIZE (0x11).
    AddrSize,
    /// F_ACCESS (0x12).
    Access,
    /// F_PERMISSION (0x13).
    Permission,
}

impl FaultKind {
    fn id(self) -> u8 {
        match self {
            FaultKind::Translation => event_id::F_TRANSLATION,
            FaultKind::AddrSize => event_id::F_ADDR_SIZE,
            FaultKind::Access => event_id::F_ACCESS,
            FaultKind::Permission => event_id::F_PERMISSION,
        }
    }
}

/// Fields common to translation-related faults (F_WALK_EABT and
/// F_TRANSLATION .. F_PERMISSION).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultInfo {
    /// StreamID, bits [63:32].
    pub sid: StreamId,
    /// SubstreamID, bits [31:12], when SSV (bit [11]) is set.
    pub ssid: Option<Ssid>,
    /// STAG, bits [79:64], when Stall (bit [95]) is set: the transaction
    /// waits for CMD_RESUME / CMD_STALL_TERM.
    pub stag: Option<u16>,
    /// RnW/InD/PnU.
    pub access: Access,
    /// S2, bit [103]: the fault is at stage 2.
    pub s2: bool,
    /// CLASS, bits [105:104].
    pub class: FaultClass,
    /// NSIPA, bit [96] (0 on the Non-secure event queue).
    pub nsipa: bool,
    /// TTRnW, bit [108]: for CLASS == TT, the walk access was a read
    /// (F_PERMISSION; UNKNOWN otherwise, kept as reported).
    pub ttrnw: bool,
    /// InputAddr, bits [191:128].
    pub input_addr: Iova,
}

/// One event record. Variants are the event types whose layout is decoded;
/// the rest is kept in [`Event::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// F_UUT (§7.3.2).
    Uut {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV.
        ssid: Option<Ssid>,
        /// Reason, bits [79:64], IMPLEMENTATION DEFINED.
        reason: u16,
        /// Incoming attributes.
        access: Access,
        /// InputAddr.
        input_addr: Iova,
    },
    /// C_BAD_STREAMID (§7.3.3).
    BadStreamId {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV.
        ssid: Option<Ssid>,
    },
    /// F_STE_FETCH (§7.3.4).
    SteFetch {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV.
        ssid: Option<Ssid>,
        /// Reason, bits [79:64].
        reason: u16,
        /// GPCF, bit [80].
        gpcf: bool,
        /// FetchAddr[55:3], bits [247:195].
        fetch_addr: PhysAddr,
    },
    /// C_BAD_STE (§7.3.5).
    BadSte {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV.
        ssid: Option<Ssid>,
    },
    /// F_STREAM_DISABLED (§7.3.7).
    StreamDisabled {
        /// StreamID.
        sid: StreamId,
    },
    /// F_TRANSL_FORBIDDEN (§7.3.8).
    TranslForbidden {
        /// StreamID.
        sid: StreamId,
        /// RnW, bit [99].
        rnw: bool,
        /// InputAddr.
        input_addr: Iova,
    },
    /// C_BAD_SUBSTREAMID (§7.3.9): the SubstreamID is always valid.
    BadSubstreamId {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID.
        ssid: Ssid,
    },
    /// F_CD_FETCH (§7.3.10).
    CdFetch {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV.
        ssid: Option<Ssid>,
        /// Reason, bits [79:64].
        reason: u16,
        /// GPCF, bit [80].
        gpcf: bool,
        /// FetchAddr[55:3].
        fetch_addr: PhysAddr,
    },
    /// C_BAD_CD (§7.3.11).
    BadCd {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV.
        ssid: Option<Ssid>,
    },
    /// F_WALK_EABT (§7.3.12).
    WalkEabt {
        /// Common fault fields.
        info: FaultInfo,
        /// FetchAddr[55:3]: the descriptor whose fetch aborted.
        fetch_addr: PhysAddr,
    },
    /// F_TRANSLATION, F_ADDR_SIZE, F_ACCESS, F_PERMISSION (§7.3.13-16).
    Fault {
        /// Which of the four.
        kind: FaultKind,
        /// Common fault fields.
        info: FaultInfo,
        /// IPA[55:12], bits [247:204]: for a stage 2 fault, the IPA that
        /// faulted (UNKNOWN for stage 1 faults, kept as reported).
        ipa: Ipa,
    },
    /// F_CFG_CONFLICT (§7.3.18).
    CfgConflict {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV.
        ssid: Option<Ssid>,
        /// Reason, bits [95:64].
        reason: u32,
    },
    /// F_VMS_FETCH (§7.3.20).
    VmsFetch {
        /// StreamID.
        sid: StreamId,
        /// SubstreamID when SSV.
        ssid: Option<Ssid>,
        /// Reason, bits [79:64].
        reason: u16,
        /// GPCF, bit [80].
        gpcf: bool,
        /// FetchAddr[55:3].
        fetch_addr: PhysAddr,
    },
    /// Any other type (F_BAD_ATS_TREQ, F_TLB_CONFLICT, E_PAGE_REQUEST,
    /// IMPDEF and unknown ones), unmodified. The type is `words[0] & 0xff`.
    Other {
        /// The record.
        words: [u64; 4],
    },
}

type W0 = LocalRegisterCopy<u64, EVT0::Register>;
type W1 = LocalRegisterCopy<u64, EVT1::Register>;
type W3 = LocalRegisterCopy<u64, EVT3::Register>;

fn decode_ssid(w0: &W0) -> Option<Ssid> {
    w0.is_set(EVT0::SSV)
        .then(|| Ssid(w0.read(EVT0::SUBSTREAMID) as u32))
}

fn decode_access(w1: &W1) -> Access {
    Access {
        rnw: w1.is_set(EVT1::RNW),
        ind: w1.is_set(EVT1::IND),
        pnu: w1.is_set(EVT1::PNU),
    }
}

impl Event {
    /// The event type number (bits [7:0]).
    pub fn id(&self) -> u8 {
        use event_id::*;
        match self {
            Event::Uut { .. } => F_UUT,
            Event::BadStreamId { .. } => C_BAD_STREAMID,
            Event::SteFetch { .. } => F_STE_FETCH,
            Event::BadSte { .. } => C_BAD_STE,
            Event::StreamDisabled { .. } => F_STREAM_DISABLED,
            Event::TranslForbidden { .. } => F_TRANSL_FORBIDDEN,
            Event::BadSubstreamId { .. } => C_BAD_SUBSTREAMID,
            Event::CdFetch { .. } => F_CD_FETCH,
            Event::BadCd { .. } => C_BAD_CD,
            Event::WalkEabt { .. } => F_WALK_EABT,
            Event::Fault { kind, .. } => kind.id(),
            Event::CfgConflict { .. } => F_CFG_CONFLICT,
            Event::VmsFetch { .. } => F_VMS_FETCH,
            Event::Other { words } => words[0] as u8,
        }
    }

    /// The StreamID of the record (bits [63:32] in every layout).
    pub fn sid(&self) -> StreamId {
        match self {
            Event::Other { words } => StreamId(W0::new(words[0]).read(EVT0::STREAMID) as u32),
            Event::Uut { sid, .. }
            | Event::BadStreamId { sid, .. }
            | Event::SteFetch { sid, .. }
            | Event::BadSte { sid, .. }
            | Event::StreamDisabled { sid }
            | Event::TranslForbidden { sid, .. }
            | Event::BadSubstreamId { sid, .. }
            | Event::CdFetch { sid, .. }
            | Event::BadCd { sid, .. }
            | Event::CfgConflict { sid, .. }
            | Event::VmsFetch { sid, .. } => *sid,
            Event::WalkEabt { info, .. } | Event::Fault { info, .. } => info.sid,
        }
    }

    /// Parses a record read from an event queue. Total; bits a type does
    /// not define are ignored.
    pub fn decode(words: [u64; 4]) -> Event {
        use event_id::*;
        let w0 = W0::new(words[0]);
        let w1 = W1::new(words[1]);
        let w3 = W3::new(words[3]);
        let id = w0.read(EVT0::EVENT_ID) as u8;
        let sid = StreamId(w0.read(EVT0::STREAMID) as u32);
        let ssid = decode_ssid(&w0);
        let input_addr = Iova(words[2]);
        let reason = w1.read(EVT1::REASON) as u16;
        let gpcf = w1.is_set(EVT1::GPCF);
        let fetch_addr = PhysAddr(w3.read(EVT3::FETCHADDR) << 3);
        let info = || FaultInfo {
            sid,
            ssid,
            stag: w1.is_set(EVT1::STALL).then(|| w1.read(EVT1::STAG) as u16),
            access: decode_access(&w1),
            s2: w1.is_set(EVT1::S2),
            class: match w1.read(EVT1::CLASS) {
                0 => FaultClass::Cd,
                1 => FaultClass::Tt,
                2 => FaultClass::In,
                _ => FaultClass::Reserved,
            },
            nsipa: w1.is_set(EVT1::NSIPA),
            ttrnw: w1.is_set(EVT1::TTRNW),
            input_addr,
        };
        let fault = |kind| Event::Fault {
            kind,
            info: info(),
            ipa: Ipa(w3.read(EVT3::IPA) << 12),
        };
        match id {
            F_UUT => Event::Uut {
                sid,
                ssid,
                reason,
                access: decode_access(&w1),
                input_addr,
            },
            C_BAD_STREAMID => Event::BadStreamId { sid, ssid },
            F_STE_FETCH => Event::SteFetch {
                sid,
                ssid,
                reason,
                gpcf,
                fetch_addr,
            },
            C_BAD_STE => Event::BadSte { sid, ssid },
            F_STREAM_DISABLED => Event::StreamDisabled { sid },
            F_TRANSL_FORBIDDEN => Event::TranslForbidden {
                sid,
                rnw: w1.is_set(EVT1::RNW),
                input_addr,
            },
            C_BAD_SUBSTREAMID => Event::BadSubstreamId {
                sid,
                ssid: Ssid(w0.read(EVT0::SUBSTREAMID) as u32),
            },
            F_CD_FETCH => Event::CdFetch {
                sid,
                ssid,
                reason,
                gpcf,
                fetch_addr,
            },
            C_BAD_CD => Event::BadCd { sid, ssid },
            F_WALK_EABT => Event::WalkEabt {
                info: info(),
                fetch_addr,
            },
            F_TRANSLATION => fault(FaultKind::Translation),
            F_ADDR_SIZE => fault(FaultKind::AddrSize),
            F_ACCESS => fault(FaultKind::Access),
            F_PERMISSION => fault(FaultKind::Permission),
            F_CFG_CONFLICT => Event::CfgConflict {
                sid,
                ssid,
                reason: w1.read(EVT1::REASON32) as u32,
            },
            F_VMS_FETCH => Event::VmsFetch {
                sid,
                ssid,
                reason,
                gpcf,
                fetch_addr,
            },
            _ => Event::Other { words },
        }
    }

    /// The 32-byte record, for injection into an event queue.
    ///
    /// Values wider than their field (a SubstreamID above 20 bits, address
    /// bits above 55 or below the field's granularity) are truncated.
    /// [`Event::Other`] words are returned unchanged unless their type byte
    /// names a type decoded into its own variant ([`EventError`]).
    pub fn encode(&self) -> Result<[u64; 4], EventError> {
        let mut w0 = W0::new(0);
        let mut w1 = W1::new(0);
        let mut w3 = W3::new(0);
        let mut w2 = 0u64;
        if let Event::Other { words } = self {
            let id = words[0] as u8;
            return match Event::decode(*words) {
                Event::Other { .. } => Ok(*words),
                _ => Err(EventError::RawOfKnownType(id)),
            };
        }
        w0.modify(EVT0::EVENT_ID.val(u64::from(self.id())));
        w0.modify(EVT0::STREAMID.val(u64::from(self.sid().0)));
        let put_ssid = |w0: &mut W0, ssid: Option<Ssid>| {
            if let Some(s) = ssid {
                w0.modify(EVT0::SSV::SET + EVT0::SUBSTREAMID.val(u64::from(s.0)));
            }
        };
        let put_access = |w1: &mut W1, a: Access| {
            w1.modify(
                EVT1::RNW.val(u64::from(a.rnw))
                    + EVT1::IND.val(u64::from(a.ind))
                    + EVT1::PNU.val(u64::from(a.pnu)),
            );
        };
        let put_fetch = |w1: &mut W1, w3: &mut W3, reason: u16, gpcf: bool, fetch: PhysAddr| {
            w1.modify(EVT1::REASON.val(u64::from(reason)) + EVT1::GPCF.val(u64::from(gpcf)));
            w3.modify(EVT3::FETCHADDR.val(fetch.0 >> 3));
        };
        let put_info = |w0: &mut W0, w1: &mut W1, info: &FaultInfo| -> u64 {
            put_ssid(w0, info.ssid);
            if let Some(stag) = info.stag {
                w1.modify(EVT1::STALL::SET + EVT1::STAG.val(u64::from(stag)));
            }
            put_access(w1, info.access);
            let class = match info.class {
                FaultClass::Cd => 0,
                FaultClass::Tt => 1,
                FaultClass::In => 2,
                FaultClass::Reserved => 3,
            };
            w1.modify(
                EVT1::S2.val(u64::from(info.s2))
                    + EVT1::CLASS.val(class)
                    + EVT1::NSIPA.val(u64::from(info.nsipa))
                    + EVT1::TTRNW.val(u64::from(info.ttrnw)),
            );
            info.input_addr.0
        };
        match *self {
            Event::Uut {
                ssid,
                reason,
                access,
                input_addr,
                ..
            } => {
                put_ssid(&mut w0, ssid);
                w1.modify(EVT1::REASON.val(u64::from(reason)));
                put_access(&mut w1, access);
                w2 = input_addr.0;
            }
            Event::BadStreamId { ssid, .. }
            | Event::BadSte { ssid, .. }
            | Event::BadCd { ssid, .. } => {
                put_ssid(&mut w0, ssid);
            }
            Event::SteFetch {
                ssid,
                reason,
                gpcf,
                fetch_addr,
                ..
            }
            | Event::CdFetch {
                ssid,
                reason,
                gpcf,
                fetch_addr,
                ..
            }
            | Event::VmsFetch {
                ssid,
                reason,
                gpcf,
                fetch_addr,
                ..
            } => {
                put_ssid(&mut w0, ssid);
                put_fetch(&mut w1, &mut w3, reason, gpcf, fetch_addr);
            }
            Event::StreamDisabled { .. } => {}
            Event::TranslForbidden {
                rnw, input_addr, ..
            } => {
                w1.modify(EVT1::RNW.val(u64::from(rnw)));
                w2 = input_addr.0;
            }
            Event::BadSubstreamId { ssid, .. } => {
                w0.modify(EVT0::SUBSTREAMID.val(u64::from(ssid.0)));
            }
            Event::WalkEabt { info, fetch_addr } => {
                w2 = put_info(&mut w0, &mut w1, &info);
                w3.modify(EVT3::FETCHADDR.val(fetch_addr.0 >> 3));
            }
            Event::Fault { info, ipa, .. } => {
                w2 = put_info(&mut w0, &mut w1, &info);
                w3.modify(EVT3::IPA.val(ipa.0 >> 12));
            }
            Event::CfgConflict { ssid, reason, .. } => {
                put_ssid(&mut w0, ssid);
                w1.modify(EVT1::REASON32.val(u64::from(reason)));
            }
            Event::Other { .. } => {}
        }
        Ok([w0.get(), w1.get(), w2, w3.get()])
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.rnw, self.ind) {
            (false, _) => "write",
            (true, false) => "read",
            (true, true) => "exec",
        })?;
        if self.pnu {
            f.write_str(" priv")?;
        }
        Ok(())
    }
}

fn fmt_stream(f: &mut fmt::Formatter<'_>, sid: StreamId, ssid: Option<Ssid>) -> fmt::Result {
    write!(f, " sid={sid}")?;
    if let Some(s) = ssid {
        write!(f, " ssid={s}")?;
    }
    Ok(())
}

impl fmt::Display for Event {
    /// One line: the type name, the stream, then the type's fields, e.g.
    /// "F_TRANSLATION sid=0x8 addr=0x1000 write stage=2 class=IN ipa=0x1000".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match event_id::name(self.id()) {
            Some(name) => f.write_str(name)?,
            None => write!(f, "EVENT_{:#04x}", self.id())?,
        }
        match *self {
            Event::Uut {
                sid,
                ssid,
                reason,
                access,
                input_addr,
            } => {
                fmt_stream(f, sid, ssid)?;
                write!(f, " addr={input_addr} {access} reason={reason:#x}")
            }
            Event::BadStreamId { sid, ssid }
            | Event::BadSte { sid, ssid }
            | Event::BadCd { sid, ssid } => fmt_stream(f, sid, ssid),
            Event::SteFetch {
                sid,
                ssid,
                reason,
                gpcf,
                fetch_addr,
            }
            | Event::CdFetch {
                sid,
                ssid,
                reason,
                gpcf,
                fetch_addr,
            }
            | Event::VmsFetch {
                sid,
                ssid,
                reason,
                gpcf,
                fetch_addr,
            } => {
                fmt_stream(f, sid, ssid)?;
                write!(f, " fetch={fetch_addr} reason={reason:#x}")?;
                if gpcf {
                    f.write_str(" gpcf")?;
                }
                Ok(())
            }
            Event::StreamDisabled { sid } => fmt_stream(f, sid, None),
            Event::TranslForbidden {
                sid,
                rnw,
                input_addr,
            } => {
                fmt_stream(f, sid, None)?;
                write!(
                    f,
                    " addr={input_addr} {}",
                    if rnw { "read" } else { "write" }
                )
            }
            Event::BadSubstreamId { sid, ssid } => fmt_stream(f, sid, Some(ssid)),
            Event::WalkEabt { info, fetch_addr } => {
                fmt_info(f, &info)?;
                write!(f, " fetch={fetch_addr}")
            }
            Event::Fault { info, ipa, .. } => {
                fmt_info(f, &info)?;
                if info.s2 {
                    write!(f, " ipa={ipa}")?;
                }
                Ok(())
            }
            Event::CfgConflict { sid, ssid, reason } => {
                fmt_stream(f, sid, ssid)?;
                write!(f, " reason={reason:#x}")
            }
            Event::Other { words } => {
                fmt_stream(f, self.sid(), None)?;
                write!(
                    f,
                    " raw={:#x}:{:#x}:{:#x}:{:#x}",
                    words[0], words[1], words[2], words[3]
                )
            }
        }
    }
}

fn fmt_info(f: &mut fmt::Formatter<'_>, info: &FaultInfo) -> fmt::Result {
    fmt_stream(f, info.sid, info.ssid)?;
    write!(
        f,
        " addr={} {} stage={} class={}",
        info.input_addr,
        info.access,
        if info.s2 { 2 } else { 1 },
        match info.class {
            FaultClass::Cd => "CD",
            FaultClass::Tt => "TT",
            FaultClass::In => "IN",
            FaultClass::Reserved => "RES",
        }
    )?;
    if let Some(stag) = info.stag {
        write!(f, " stall stag={stag:#x}")?;
    }
    Ok(())
}

/// The stream that raised the most of `events` (of a tie, the one counted
/// last); None without events. Its work is bounded by the events times the
/// distinct streams among them (at most one per PCI function).
pub fn busiest_stream(events: &[Event]) -> Option<StreamId> {
    let mut counts: alloc::vec::Vec<(StreamId, usize)> = alloc::vec::Vec::new();
    for e in events {
        match counts.iter_mut().find(|(sid, _)| *sid == e.sid()) {
            Some((_, n)) => *n += 1,
            None => counts.push((e.sid(), 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(sid, _)| sid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    #[test]
    fn stage2_translation_fault_layout() {
        let e = Event::Fault {
            kind: FaultKind::Translation,
            info: FaultInfo {
                sid: StreamId(8),
                ssid: None,
                stag: None,
                access: Access {
                    rnw: false,
                    ind: false,
                    pnu: false,
                },
                s2: true,
                class: FaultClass::In,
                nsipa: false,
                ttrnw: false,
                input_addr: Iova(0x1234_5678),
            },
            ipa: Ipa(0x1234_5000),
        };
        let w = e.encode().unwrap();
        assert_eq!(w[0], 0x0000_0008_0000_0010);
        // S2 = bit 103, CLASS = IN (0b10) at bits [105:104].
        assert_eq!(w[1], (1 << 39) | (2 << 40));
        assert_eq!(w[2], 0x1234_5678);
        assert_eq!(w[3], 0x1234_5000);
        assert_eq!(Event::decode(w), e);
        assert_eq!(
            e.to_string(),
            "F_TRANSLATION sid=0x8 addr=0x12345678 write stage=2 class=IN ipa=0x12345000"
        );
    }

    #[test]
    fn stalled_stage1_permission_fault_with_substream() {
        // A record laid out by hand: F_PERMISSION, SID 3, SSV + SSID 5,
        // Stall with STAG 0x42, read, privileged, stage 1, CLASS TT.
        let words = [
            0x0000_0003_0000_5813,
            0x42 | (1 << 31) | (1 << 33) | (1 << 35) | (1 << 40),
            0xffff_8000_0000_1000,
            0,
        ];
        let e = Event::decode(words);
        let Event::Fault { kind, info, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(kind, FaultKind::Permission);
        assert_eq!(info.sid, StreamId(3));
        assert_eq!(info.ssid, Some(Ssid(5)));
        assert_eq!(info.stag, Some(0x42));
        assert!(info.access.rnw && info.access.pnu && !info.access.ind);
        assert!(!info.s2);
        assert_eq!(info.class, FaultClass::Tt);
        assert_eq!(e.encode().unwrap(), words);
        assert_eq!(
            e.to_string(),
            "F_PERMISSION sid=0x3 ssid=0x5 addr=0xffff800000001000 read priv stage=1 class=TT stall stag=0x42"
        );
    }

    #[test]
    fn fetch_and_config_events() {
        let e = Event::decode([0x0000_0011_0000_0003, 0x1_0007, 0, 0x8000_1238]);
        assert_eq!(
            e,
            Event::SteFetch {
                sid: StreamId(0x11),
                ssid: None,
                reason: 7,
                gpcf: true,
                fetch_addr: PhysAddr(0x8000_1238),
            }
        );
        assert_eq!(
            Event::decode([0x0000_0002_0000_0004, 0, 0, 0]),
            Event::BadSte {
                sid: StreamId(2),
                ssid: None
            }
        );
        // Undefined bits of a known layout are ignored.
        assert_eq!(
            Event::decode([0x0000_0002_0000_0704, !0, !0, !0]),
            Event::BadSte {
                sid: StreamId(2),
                ssid: None
            }
        );
        assert_eq!(
            Event::decode([0x0000_0009_0000_0002, 0, 0, 0]).to_string(),
            "C_BAD_STREAMID sid=0x9"
        );
    }

    #[test]
    fn unknown_types_are_kept_raw() {
        let words = [0x0000_0001_0000_0024, 1, 2, 3];
        let e = Event::decode(words);
        assert_eq!(e, Event::Other { words });
        assert_eq!(e.id(), event_id::E_PAGE_REQUEST);
        assert_eq!(e.sid(), StreamId(1));
        assert_eq!(e.encode(), Ok(words));
        assert!(e.to_string().starts_with("E_PAGE_REQUEST sid=0x1 raw="));
        let e = Event::decode([0xfe, 0, 0, 0]);
        assert!(e.to_string().starts_with("EVENT_0xfe"));
        assert_eq!(
            Event::Other {
                words: [0x10, 0, 0, 0]
            }
            .encode(),
            Err(EventError::RawOfKnownType(0x10))
        );
    }

    fn ssid() -> impl Strategy<Value = Option<Ssid>> {
        proptest::option::of((0u32..1 << 20).prop_map(Ssid))
    }
    fn access() -> impl Strategy<Value = Access> {
        any::<(bool, bool, bool)>().prop_map(|(rnw, ind, pnu)| Access { rnw, ind, pnu })
    }
    fn fetch() -> impl Strategy<Value = PhysAddr> {
        (0u64..1 << 53).prop_map(|a| PhysAddr(a << 3))
    }
    fn info() -> impl Strategy<Value = FaultInfo> {
        (
            any::<u32>(),
            ssid(),
            proptest::option::of(any::<u16>()),
            access(),
            any::<(bool, bool, bool)>(),
            0usize..4,
            any::<u64>(),
        )
            .prop_map(
                |(sid, ssid, stag, access, (s2, nsipa, ttrnw), class, addr)| FaultInfo {
                    sid: StreamId(sid),
                    ssid,
                    stag,
                    access,
                    s2,
                    class: [
                        FaultClass::Cd,
                        FaultClass::Tt,
                        FaultClass::In,
                        FaultClass::Reserved,
                    ][class],
                    nsipa,
                    ttrnw,
                    input_addr: Iova(addr),
                },
            )
    }

    fn event() -> impl Strategy<Value = Event> {
        let sid = || any::<u32>().prop_map(StreamId);
        prop_oneof![
            (sid(), ssid(), any::<u16>(), access(), any::<u64>()).prop_map(
                |(sid, ssid, reason, access, a)| Event::Uut {
                    sid,
                    ssid,
                    reason,
                    access,
                    input_addr: Iova(a),
                }
            ),
            (sid(), ssid()).prop_map(|(sid, ssid)| Event::BadStreamId { sid, ssid }),
            (sid(), ssid()).prop_map(|(sid, ssid)| Event::BadSte { sid, ssid }),
            (sid(), ssid()).prop_map(|(sid, ssid)| Event::BadCd { sid, ssid }),
            (sid(), ssid(), any::<u16>(), any::<bool>(), fetch()).prop_map(
                |(sid, ssid, reason, gpcf, fetch_addr)| Event::SteFetch {
                    sid,
                    ssid,
                    reason,
                    gpcf,
                    fetch_addr,
                }
            ),
            (sid(), ssid(), any::<u16>(), any::<bool>(), fetch()).prop_map(
                |(sid, ssid, reason, gpcf, fetch_addr)| Event::CdFetch {
                    sid,
                    ssid,
                    reason,
                    gpcf,
                    fetch_addr,
                }
            ),
            (sid(), ssid(), any::<u16>(), any::<bool>(), fetch()).prop_map(
                |(sid, ssid, reason, gpcf, fetch_addr)| Event::VmsFetch {
                    sid,
                    ssid,
                    reason,
                    gpcf,
                    fetch_addr,
                }
            ),
            sid().prop_map(|sid| Event::StreamDisabled { sid }),
            (sid(), any::<bool>(), any::<u64>()).prop_map(|(sid, rnw, a)| {
                Event::TranslForbidden {
                    sid,
                    rnw,
                    input_addr: Iova(a),
                }
            }),
            (sid(), 0u32..1 << 20)
                .prop_map(|(sid, s)| Event::BadSubstreamId { sid, ssid: Ssid(s) }),
            (info(), fetch()).prop_map(|(info, fetch_addr)| Event::WalkEabt { info, fetch_addr }),
            (info(), 0usize..4, 0u64..1 << 44).prop_map(|(info, k, ipa)| Event::Fault {
                kind: [
                    FaultKind::Translation,
                    FaultKind::AddrSize,
                    FaultKind::Access,
                    FaultKind::Permission,
                ][k],
                info,
                ipa: Ipa(ipa << 12),
            }),
            (sid(), ssid(), any::<u32>()).prop_map(|(sid, ssid, reason)| Event::CfgConflict {
                sid,
                ssid,
                reason
            }),
            (
                any::<[u64; 4]>(),
                prop::sample::select(vec![0x05u8, 0x20, 0x24, 0x00, 0xE0, 0xFF])
            )
                .prop_map(|(mut words, id)| {
                    words[0] = (words[0] & !0xFF) | u64::from(id);
                    Event::Other { words }
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn decode_inverts_encode(e in event()) {
            let words = e.encode().unwrap();
            prop_assert_eq!(words[0] as u8, e.id());
            prop_assert_eq!(Event::decode(words), e);
        }

        /// Arbitrary records (as a faulty or hostile source could produce):
        /// decoding never panics, keeps type and StreamID, and re-encoding
        /// what was decoded is stable.
        #[test]
        fn decode_is_total(words in any::<[u64; 4]>(), id in any::<u8>()) {
            let words = [(words[0] & !0xFF) | u64::from(id), words[1], words[2], words[3]];
            let e = Event::decode(words);
            prop_assert_eq!(e.id(), id);
            prop_assert_eq!(u64::from(e.sid().0), words[0] >> 32);
            let again = e.encode().unwrap();
            prop_assert_eq!(Event::decode(again), e);
            let _ = e.to_string();
        }
    }

    #[test]
    fn busiest_stream_counts_events_per_stream() {
        let ev = |sid| Event::StreamDisabled { sid: StreamId(sid) };
        assert_eq!(busiest_stream(&[]), None);
        assert_eq!(busiest_stream(&[ev(8)]), Some(StreamId(8)));
        // One fault of 0x8 among a flood of 0x10's, first or last.
        let mut flood = alloc::vec![ev(0x10); 100];
        flood.push(ev(8));
        assert_eq!(busiest_stream(&flood), Some(StreamId(0x10)));
        flood.insert(0, ev(8));
        assert_eq!(busiest_stream(&flood), Some(StreamId(0x10)));
        // Other event types count by their StreamID too.
        let other = Event::decode([0x0000_0008_0000_00ff, 0, 0, 0]);
        assert_eq!(other.sid(), StreamId(8));
        assert_eq!(busiest_stream(&[ev(0x10), other, ev(8)]), Some(StreamId(8)));
        // A tie goes to the stream counted last.
        assert_eq!(busiest_stream(&[ev(1), ev(2)]), Some(StreamId(2)));
    }
}
