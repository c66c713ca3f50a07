//! Guest STEs: reading them from the guest's stream table and composing the
//! physical STE that stands for them (IHI 0070 §3.3, §5.2).
//!
//! The guest's `arm-smmu-v3` driver writes STEs into a stream table in its
//! own memory and tells the vSMMU with CMD_CFGI_STE(_RANGE)/CMD_CFGI_ALL
//! (§4.3). The vSMMU then [`read_guest_ste`]s the entry as an SMMU would
//! walk the table (linear, or 2-level through an L1STD, §3.3.1, §5.1) and
//! [`compose`]s the physical STE: guest abort becomes abort, guest bypass
//! becomes the VM's stage 2 alone, guest stage 1 becomes nested, with only
//! the stage 1 fields the guest may choose copied (docs/ARCHITECTURE.md, "SMMU rules
//! that are easy to get wrong"). Everything about stage 2, the VMID, the
//! StreamWorld and the attribute overrides is the hypervisor's.

use super::{GuestMemError, GuestMemory, VsmmuPolicy};
use crate::addr::{Ipa, PhysAddr, Ssid, StreamId};
use crate::event::Event;
use crate::ste::{
    fits, Eats, S1Config, S1Dss, S1Fmt, S2Config, StallModel, Ste, SteError, SteKind, STE_WORDS,
};
use crate::strtab::L1Std;

/// Size of an STE in bytes (§5.2).
const STE_BYTES: u64 = 64;
/// Size of an L1STD in bytes (§5.1).
const L1STD_BYTES: u64 = 8;

/// The guest's stream table as programmed in its SMMU_STRTAB_BASE and
/// SMMU_STRTAB_BASE_CFG (§6.3.23, §6.3.24). The register emulation has
/// already reduced out-of-range values (LOG2SIZE above SIDSIZE, a reserved
/// SPLIT) to what the vSMMU implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStrtab {
    /// SMMU_STRTAB_BASE.ADDR: the table (linear) or the L1STD array
    /// (2-level), a guest IPA.
    pub base: Ipa,
    /// SMMU_STRTAB_BASE_CFG.FMT == 0b01 (2-level).
    pub two_level: bool,
    /// SMMU_STRTAB_BASE_CFG.LOG2SIZE: the table covers StreamIDs
    /// `0..2^log2size`.
    pub log2size: u8,
    /// SMMU_STRTAB_BASE_CFG.SPLIT: StreamID bits \[SPLIT-1:0\] index the
    /// level 2 array (2-level only).
    pub split: u8,
}

/// Why a guest StreamID has no STE to install: the guest configured none
/// (no STE for the StreamID, or one with V == 0) or one the vSMMU refuses
/// (its table unreadable, the STE ILLEGAL). The caller installs an invalid
/// physical STE, so the stream's transactions abort and are recorded as
/// C_BAD_STE, which reaches the guest as the event the SMMU it emulates
/// records ([`refusal_event`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VsteError {
    /// No STE for the StreamID: beyond the table's 2^LOG2SIZE, or (2-level)
    /// its L1STD invalid or with a reserved Span, or beyond the 2^(Span-1)
    /// STEs of its level 2 array (C_BAD_STREAMID, §7.3.2).
    #[error("no STE for the StreamID")]
    NoStream,
    /// The STE is invalid (V == 0): its transactions abort and are recorded
    /// as C_BAD_STE (§5.2).
    #[error("the STE is invalid (V == 0)")]
    Invalid,
    /// The guest's stream table (an L1STD or the STE) is not readable guest
    /// memory: the SMMU's fetch would fail (F_STE_FETCH, §7.3.4).
    #[error("guest stream table unreadable at {addr}: {err}")]
    Fetch {
        /// The IPA of the descriptor that could not be read.
        addr: Ipa,
        /// Why.
        err: GuestMemError,
    },
    /// The guest STE is ILLEGAL for what the vSMMU advertises (§5.2.2):
    /// a stage 2 or nested Config (stage 2 is not advertised), a stage 1
    /// field out of range, or an S1ContextPtr outside the VM.
    #[error("illegal guest STE: {0}")]
    Illegal(SteError),
}

impl VsteError {
    /// Whether the vSMMU refused what the guest configured (an unreadable
    /// table, an ILLEGAL STE), as opposed to the guest configuring no STE.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Fetch { .. } | Self::Illegal(_))
    }
}

/// `base + index * size`, or a fetch error if that overflows the address
/// space (a table running past the top of memory is unreadable).
fn entry_addr(base: Ipa, index: u64, size: u64) -> Result<Ipa, VsteError> {
    index
        .checked_mul(size)
        .and_then(|off| base.checked_add(off))
        .ok_or(VsteError::Fetch {
            addr: base,
            err: GuestMemError::OutOfRange(base),
        })
}

fn read(mem: &dyn GuestMemory, addr: Ipa, buf: &mut [u8]) -> Result<(), VsteError> {
    mem.read(addr, buf)
        .map_err(|err| VsteError::Fetch { addr, err })
}

/// Whether `sid < 2^bits`.
fn sid_in_range(sid: StreamId, bits: u8) -> bool {
    bits >= 32 || sid.0 >> bits == 0
}

/// Reads the guest's STE for virtual StreamID `vsid` as the SMMU would
/// fetch it (§3.3.1, §5.1).
///
/// - A StreamID at or above 2^LOG2SIZE, an L1STD with Span == 0, a reserved
///   Span or one above SPLIT + 1, or a StreamID beyond the 2^(Span-1) STEs
///   of its level 2 array has no STE: [`VsteError::NoStream`]
///   (C_BAD_STREAMID, §7.3.2).
/// - Guest memory that cannot be read is [`VsteError::Fetch`].
///
/// L2Ptr bits below the size of its array are taken as zero, as §5.1 says
/// the SMMU treats them: the level 2 array is aligned to its size, so
/// every STE address fits in the 56 bits F_STE_FETCH can report.
pub fn read_guest_ste(
    mem: &dyn GuestMemory,
    t: &GuestStrtab,
    vsid: StreamId,
) -> Result<Ste, VsteError> {
    if !sid_in_range(vsid, t.log2size) {
        return Err(VsteError::NoStream);
    }
    let addr = if t.two_level {
        let split = t.split.min(32);
        let l1_index = if split >= 32 { 0 } else { vsid.0 >> split };
        let l1_addr = entry_addr(t.base, u64::from(l1_index), L1STD_BYTES)?;
        let mut raw = [0u8; L1STD_BYTES as usize];
        read(mem, l1_addr, &mut raw)?;
        let desc = L1Std(u64::from_le_bytes(raw));
        let span = desc.span();
        if !desc.valid() || span > split.saturating_add(1) {
            return Err(VsteError::NoStream);
        }
        let l2_index = if split >= 32 {
            vsid.0
        } else {
            vsid.0 & ((1u32 << split) - 1)
        };
        // The level 2 array holds 2^(Span-1) STEs (Span is 1..=11 here).
        if !sid_in_range(StreamId(l2_index), span - 1) {
            return Err(VsteError::NoStream);
        }
        let l2 = Ipa(desc.l2ptr().raw()).align_down(STE_BYTES << (span - 1));
        entry_addr(l2, u64::from(l2_index), STE_BYTES)?
    } else {
        entry_addr(t.base, u64::from(vsid.0), STE_BYTES)?
    };
    let mut raw = [0u8; STE_BYTES as usize];
    read(mem, addr, &mut raw)?;
    let mut ste = Ste::invalid();
    for (word, bytes) in ste.0.iter_mut().zip(raw.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        *word = u64::from_le_bytes(b);
    }
    debug_assert_eq!(ste.0.len(), STE_WORDS);
    Ok(ste)
}

/// Composes the physical STE for a guest STE (§5.2), for a physical SMMU
/// whose stall model is not configurable (STALL_MODEL 0b01, as QEMU's):
/// see [`compose_with_stall`].
pub fn compose(guest: &Ste, policy: &VsmmuPolicy, s2: &S2Config) -> Result<Ste, VsteError> {
    compose_with_stall(guest, policy, s2, StallModel::TerminateOnly)
}

/// Composes the physical STE for a guest STE (§5.2) on a physical SMMU with
/// stall model `phys_stall` (SMMU_IDR0.STALL_MODEL).
///
/// The guest STE is first classified as an SMMU advertising `policy` would
/// ([`Ste::validate`] with [`VsmmuPolicy::ste_policy`]):
/// - V == 0: [`VsteError::Invalid`] (C_BAD_STE, §5.2);
/// - Config abort or reserved (which behaves as abort): the physical abort
///   STE (abort, no event);
/// - Config bypass: the VM's stage 2 alone ([`Ste::stage2`]), so the device
///   still reaches only the VM's memory;
/// - Config stage 1: nested ([`Ste::nested`]) with only S1ContextPtr,
///   S1Fmt, S1CDMax, S1DSS, S1CIR, S1COR and S1CSH taken from the guest.
///   S1ContextPtr stays an IPA (the SMMU fetches CDs through stage 2) and
///   must lie inside the VM's IPA space. Fields the SMMU ignores are
///   normalised (S1Fmt and S1DSS when S1CDMax == 0, i.e. substreams
///   disabled) and reserved encodings replaced by what they behave as.
///   S1STALLD is the hypervisor's: the vSMMU offers no stall, so on an SMMU
///   with configurable stalls it is set (a guest CD cannot make the stream
///   stall), otherwise it is 0 (setting it would be ILLEGAL). EATS is 0
///   (ATS is not advertised).
/// - Config stage 2 or nested (stage 2 is not advertised) or anything
///   ILLEGAL: [`VsteError::Illegal`].
///
/// Total on any 512-bit input; the stage 2 half of the result is always
/// exactly `s2`'s.
pub fn compose_with_stall(
    guest: &Ste,
    policy: &VsmmuPolicy,
    s2: &S2Config,
    phys_stall: StallModel,
) -> Result<Ste, VsteError> {
    let kind = guest
        .validate(&policy.ste_policy())
        .map_err(VsteError::Illegal)?;
    match kind {
        SteKind::Invalid => Err(VsteError::Invalid),
        SteKind::Abort => Ok(Ste::abort()),
        SteKind::Bypass => Ok(Ste::stage2(s2)),
        SteKind::Stage2 | SteKind::Nested => {
            Err(VsteError::Illegal(SteError::Stage2NotImplemented))
        }
        SteKind::Stage1 => {
            let s1 = guest_s1(guest, policy, s2, phys_stall)?;
            Ok(Ste::nested(s2, &s1))
        }
    }
}

/// The stage 1 half of a nested STE: the allowed guest fields only.
fn guest_s1(
    guest: &Ste,
    policy: &VsmmuPolicy,
    s2: &S2Config,
    phys_stall: StallModel,
) -> Result<S1Config, VsteError> {
    // The CD table is fetched through the VM's stage 2: it must be an IPA
    // of the VM (validate checked the advertised OAS; the VM's stage 2 may
    // be smaller).
    let ctx_ptr = guest.s1_context_ptr();
    let ipa_bits = 64u8.saturating_sub(s2.t0sz).min(policy.oas_bits);
    if !fits(ctx_ptr.raw(), ipa_bits) {
        return Err(VsteError::Illegal(SteError::ContextPtrOutOfRange(ctx_ptr)));
    }
    // S1CDMax is ignored without substreams (SSIDSIZE == 0); S1Fmt and
    // S1DSS are ignored when S1CDMax == 0 (§5.2).
    let s1cdmax = if policy.ssid_bits == 0 {
        0
    } else {
        guest.s1cdmax()
    };
    let (s1fmt, s1dss) = if s1cdmax == 0 {
        (S1Fmt::Linear, S1Dss::Terminate)
    } else {
        let fmt = match guest.s1fmt() {
            S1Fmt::Reserved => S1Fmt::Linear,
            f => f,
        };
        let dss = match guest.s1dss() {
            S1Dss::Reserved => S1Dss::Terminate,
            d => d,
        };
        (fmt, dss)
    };
    Ok(S1Config {
        ctx_ptr,
        s1fmt,
        s1cdmax,
        s1dss,
        s1cir: guest.s1cir(),
        s1cor: guest.s1cor(),
        s1csh: guest.s1csh(),
        s1stalld: phys_stall == StallModel::StallAndTerminate,
        eats: Eats::Abort,
    })
}

/// The event a guest sees for a transaction on a stream without an STE to
/// install (the physical stream is made invalid, so the SMMU records
/// C_BAD_STE with the physical StreamID): no STE for the StreamID is
/// C_BAD_STREAMID (§7.3.2), an unreadable stream table F_STE_FETCH at the
/// guest's address (§7.3.4), an invalid or ILLEGAL STE C_BAD_STE (§5.2,
/// §7.3.5), each with the virtual StreamID `vsid` and the transaction's
/// SubstreamID `ssid`.
pub fn refusal_event(refusal: &VsteError, vsid: StreamId, ssid: Option<Ssid>) -> Event {
    match *refusal {
        VsteError::NoStream => Event::BadStreamId { sid: vsid, ssid },
        VsteError::Fetch { addr, .. } => Event::SteFetch {
            sid: vsid,
            ssid,
            reason: 0,
            gpcf: false,
            fetch_addr: PhysAddr(addr.0),
        },
        VsteError::Invalid | VsteError::Illegal(_) => Event::BadSte { sid: vsid, ssid },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Vmid;
    use crate::fake::{nested_ste_policy, FakeGuestMemory};
    use crate::ste::{Config, StePolicy, Strw};
    use proptest::prelude::*;

    const RAM: u64 = 0x4000_0000;
    const RAM_SIZE: usize = 0x40_0000;

    fn mem() -> FakeGuestMemory {
        FakeGuestMemory::new(Ipa(RAM), RAM_SIZE)
    }

    fn write_ste(mem: &FakeGuestMemory, at: u64, ste: &Ste) {
        for (i, w) in ste.0.iter().enumerate() {
            mem.write_u64(Ipa(at + 8 * i as u64), *w);
        }
    }

    /// The VM's stage 2: 40-bit IPA, 4K granule, level 1 start.
    fn s2(vmid: u16) -> S2Config {
        crate::fake::vm_stage2(Vmid(vmid))
    }

    fn vpolicy() -> VsmmuPolicy {
        VsmmuPolicy {
            ssid_bits: 8,
            ..VsmmuPolicy::default()
        }
    }

    /// A guest stage-1 STE as Linux writes it.
    fn guest_s1(ctx: u64, fmt: S1Fmt, cdmax: u8) -> Ste {
        let mut ste = Ste::invalid();
        ste.set_v(true);
        ste.set_config(Config::S1Translate);
        ste.set_s1_context_ptr(Ipa(ctx));
        ste.set_s1fmt(fmt);
        ste.set_s1cdmax(cdmax);
        ste.set_s1dss(S1Dss::Ssid0);
        ste.set_s1cir(1);
        ste.set_s1cor(1);
        ste.set_s1csh(3);
        ste
    }

    fn guest_config(config: Config) -> Ste {
        let mut ste = Ste::invalid();
        ste.set_v(true);
        ste.set_config(config);
        ste
    }

    // ---- reading the guest's stream table ----

    #[test]
    fn linear_table_is_indexed_by_streamid() {
        let m = mem();
        let t = GuestStrtab {
            base: Ipa(RAM + 0x1_0000),
            two_level: false,
            log2size: 5,
            split: 0,
        };
        let ste = guest_s1(RAM + 0x2_0000, S1Fmt::Linear, 0);
        write_ste(&m, RAM + 0x1_0000 + 7 * 64, &ste);
        assert_eq!(read_guest_ste(&m, &t, StreamId(7)), Ok(ste));
        assert_eq!(read_guest_ste(&m, &t, StreamId(6)), Ok(Ste::invalid()));
        // StreamID 32 is beyond 2^LOG2SIZE: no STE, not even a fetch.
        let reads = m.reads();
        assert_eq!(
            read_guest_ste(&m, &t, StreamId(32)),
            Err(VsteError::NoStream)
        );
        assert_eq!(m.reads(), reads);
    }

    #[test]
    fn unreadable_table_is_a_fetch_error() {
        let m = mem();
        let t = GuestStrtab {
            base: Ipa(RAM + RAM_SIZE as u64 - 64),
            two_level: false,
            log2size: 16,
            split: 0,
        };
        assert!(read_guest_ste(&m, &t, StreamId(0)).is_ok());
        assert_eq!(
            read_guest_ste(&m, &t, StreamId(1)),
            Err(VsteError::Fetch {
                addr: Ipa(RAM + RAM_SIZE as u64),
                err: GuestMemError::OutOfRange(Ipa(RAM + RAM_SIZE as u64)),
            })
        );
        // A table at the top of the address space overflows: unreadable.
        let t = GuestStrtab {
            base: Ipa(!63),
            two_level: false,
            log2size: 32,
            split: 0,
        };
        assert!(matches!(
            read_guest_ste(&m, &t, StreamId(u32::MAX)),
            Err(VsteError::Fetch { .. })
        ));
    }

    #[test]
    fn two_level_table_walks_the_l1std() {
        let m = mem();
        let l1 = RAM + 0x1000;
        let t = GuestStrtab {
            base: Ipa(l1),
            two_level: true,
            log2size: 16,
            split: 8,
        };
        // StreamID 0x0305: L1 index 3, L2 index 5; a full 256-entry array.
        let l2 = RAM + 0x10_0000;
        m.write_u64(Ipa(l1 + 3 * 8), L1Std::new(PhysAddr(l2), 9).0);
        let ste = guest_s1(RAM + 0x3_0000, S1Fmt::TwoLevel4K, 8);
        write_ste(&m, l2 + 5 * 64, &ste);
        assert_eq!(read_guest_ste(&m, &t, StreamId(0x0305)), Ok(ste));
        assert_eq!(read_guest_ste(&m, &t, StreamId(0x0306)), Ok(Ste::invalid()));

        // Span 0: no level 2 array, the STE is invalid.
        assert_eq!(
            read_guest_ste(&m, &t, StreamId(0x0405)),
            Err(VsteError::NoStream)
        );

        // Span 3: 4 STEs; StreamID 0x0203 is in, 0x0204 is out.
        let l2b = RAM + 0x11_0000;
        m.write_u64(Ipa(l1 + 2 * 8), L1Std::new(PhysAddr(l2b), 3).0);
        write_ste(&m, l2b + 3 * 64, &ste);
        write_ste(&m, l2b + 4 * 64, &ste);
        assert_eq!(read_guest_ste(&m, &t, StreamId(0x0203)), Ok(ste));
        assert_eq!(
            read_guest_ste(&m, &t, StreamId(0x0204)),
            Err(VsteError::NoStream)
        );

        // Span above SPLIT + 1, or a reserved Span: invalid descriptor.
        m.write_u64(Ipa(l1 + 8), L1Std::new(PhysAddr(l2), 10).0);
        assert_eq!(
            read_guest_ste(&m, &t, StreamId(0x0105)),
            Err(VsteError::NoStream)
        );
        m.write_u64(Ipa(l1 + 8), L1Std::new(PhysAddr(l2), 12).0);
        assert_eq!(
            read_guest_ste(&m, &t, StreamId(0x0105)),
            Err(VsteError::NoStream)
        );

        // An L2Ptr outside the VM: a fetch error.
        m.write_u64(Ipa(l1 + 5 * 8), L1Std::new(PhysAddr(0x4000), 9).0);
        assert!(matches!(
            read_guest_ste(&m, &t, StreamId(0x0500)),
            Err(VsteError::Fetch {
                addr: Ipa(0x4000),
                ..
            })
        ));
        // An L1 index past LOG2SIZE is never fetched.
        assert_eq!(
            read_guest_ste(&m, &t, StreamId(0x1_0000)),
            Err(VsteError::NoStream)
        );
    }

    #[test]
    fn unaligned_l2ptr_is_aligned_to_its_array() {
        // Found by fuzz/ (target vsmmu): an L2Ptr at the top of the address
        // space, not aligned to its 256-STE array, made the STE address
        // 2^56 + 0x100, which F_STE_FETCH cannot report: the guest saw a
        // fetch fault at 0x100. §5.1: L2Ptr[13:0] are treated as 0.
        let m = mem();
        let t = GuestStrtab {
            base: Ipa(RAM),
            two_level: true,
            log2size: 16,
            split: 8,
        };
        m.write_u64(Ipa(RAM), L1Std::new(PhysAddr((1 << 56) - 64), 9).0);
        let top = (1u64 << 56) - 0x4000;
        let err = read_guest_ste(&m, &t, StreamId(5)).unwrap_err();
        assert_eq!(
            err,
            VsteError::Fetch {
                addr: Ipa(top + 5 * 64),
                err: GuestMemError::OutOfRange(Ipa(top + 5 * 64)),
            }
        );
        let e = refusal_event(&err, StreamId(5), None);
        assert_eq!(Event::decode(e.encode().unwrap()), e);
        // Inside the VM: the STE is read from the aligned array.
        let l2 = RAM + 0x10_0000;
        m.write_u64(Ipa(RAM + 8), L1Std::new(PhysAddr(l2 + 0x1C0), 9).0);
        let ste = guest_s1(RAM + 0x3_0000, S1Fmt::Linear, 0);
        write_ste(&m, l2 + 5 * 64, &ste);
        assert_eq!(read_guest_ste(&m, &t, StreamId(0x105)), Ok(ste));
    }

    #[test]
    fn two_level_table_with_split_6() {
        let m = mem();
        let t = GuestStrtab {
            base: Ipa(RAM),
            two_level: true,
            log2size: 12,
            split: 6,
        };
        let l2 = RAM + 0x8000;
        // StreamID 0x7C1: L1 index 31, L2 index 1.
        m.write_u64(Ipa(RAM + 31 * 8), L1Std::new(PhysAddr(l2), 7).0);
        let ste = guest_config(Config::Bypass);
        write_ste(&m, l2 + 64, &ste);
        assert_eq!(read_guest_ste(&m, &t, StreamId(0x7C1)), Ok(ste));
    }

    // ---- composing the physical STE ----

    #[test]
    fn guest_abort_becomes_abort_and_invalid_c_bad_ste() {
        let p = vpolicy();
        assert_eq!(compose(&Ste::abort(), &p, &s2(5)), Ok(Ste::abort()));
        // Reserved Config values behave as abort (no event).
        let ste = guest_config(Config::Reserved(2));
        assert_eq!(compose(&ste, &p, &s2(5)), Ok(Ste::abort()));
        // V == 0, with garbage elsewhere too: C_BAD_STE.
        assert_eq!(
            compose(&Ste::invalid(), &p, &s2(5)),
            Err(VsteError::Invalid)
        );
        let mut ste = guest_s1(0x1000, S1Fmt::Linear, 0);
        ste.set_v(false);
        assert_eq!(compose(&ste, &p, &s2(5)), Err(VsteError::Invalid));
    }

    #[test]
    fn guest_bypass_becomes_stage2_only() {
        let mut ste = guest_config(Config::Bypass);
        // Guest attribute overrides and a VMID are not the guest's to set.
        ste.set_s2vmid(Vmid(99));
        ste.set_shcfg(0);
        ste.set_mtcfg(true);
        ste.set_memattr(0xf);
        let out = compose(&ste, &vpolicy(), &s2(5)).unwrap();
        assert_eq!(out, Ste::stage2(&s2(5)));
        assert_eq!(
            out.validate(&nested_ste_policy(StallModel::TerminateOnly)),
            Ok(SteKind::Stage2)
        );
    }

    #[test]
    fn guest_stage1_becomes_nested_with_only_allowed_fields() {
        let mut ste = guest_s1(RAM + 0x2_0000, S1Fmt::Linear, 0);
        // Everything the guest must not control, set to hostile values.
        ste.set_strw(Strw::El2);
        ste.set_s2vmid(Vmid(0xBAD));
        ste.set_s2ttb(PhysAddr(0xdead_0000));
        ste.set_s2t0sz(16);
        ste.set_shcfg(0);
        ste.set_mtcfg(true);
        ste.set_memattr(0xf);
        ste.set_alloccfg(0xf);
        ste.set_nscfg(3);
        ste.set_privcfg(3);
        ste.set_instcfg(3);
        ste.set_dcp(true);
        ste.set_mev(true);
        ste.set_ppar(true);
        ste.set_eats(Eats::Full);
        ste.set_s2s(true);
        ste.set_s2r(false);
        ste.set_s2ptw(false);
        ste.0[4..].copy_from_slice(&[u64::MAX; 4]);
        let out = compose(&ste, &vpolicy(), &s2(5)).unwrap();
        let s1 = S1Config {
            ctx_ptr: Ipa(RAM + 0x2_0000),
            s1fmt: S1Fmt::Linear,
            s1cdmax: 0,
            s1dss: S1Dss::Terminate,
            s1cir: 1,
            s1cor: 1,
            s1csh: 3,
            s1stalld: false,
            eats: Eats::Abort,
        };
        assert_eq!(out, Ste::nested(&s2(5), &s1));
        assert_eq!(out.s2vmid(), Vmid(5));
        assert_eq!(
            out.validate(&nested_ste_policy(StallModel::TerminateOnly)),
            Ok(SteKind::Nested)
        );
    }

    #[test]
    fn s1stalld_follows_the_physical_stall_model() {
        let ste = guest_s1(RAM, S1Fmt::Linear, 0);
        for (model, stalld) in [
            (StallModel::StallAndTerminate, true),
            (StallModel::TerminateOnly, false),
            (StallModel::StallForced, false),
        ] {
            let out = compose_with_stall(&ste, &vpolicy(), &s2(1), model).unwrap();
            assert_eq!(out.s1stalld(), stalld, "{model:?}");
            assert_eq!(out.validate(&nested_ste_policy(model)), Ok(SteKind::Nested));
        }
        // The guest was not offered stalls: its S1STALLD is ILLEGAL.
        let mut ste = ste;
        ste.set_s1stalld(true);
        assert_eq!(
            compose(&ste, &vpolicy(), &s2(1)),
            Err(VsteError::Illegal(SteError::S1Stalld))
        );
    }

    #[test]
    fn stage2_and_nested_guest_configs_are_illegal() {
        for config in [Config::S2Translate, Config::Nested] {
            let mut ste = guest_s1(RAM, S1Fmt::Linear, 0);
            ste.set_config(config);
            assert_eq!(
                compose(&ste, &vpolicy(), &s2(1)),
                Err(VsteError::Illegal(SteError::Stage2NotImplemented))
            );
        }
    }

    #[test]
    fn context_pointer_must_be_inside_the_vm() {
        let p = VsmmuPolicy {
            oas_bits: 44,
            ..vpolicy()
        };
        // Within the advertised 44 bits but beyond the VM's 40-bit stage 2.
        let ste = guest_s1(1 << 40, S1Fmt::Linear, 0);
        assert_eq!(
            compose(&ste, &p, &s2(1)),
            Err(VsteError::Illegal(SteError::ContextPtrOutOfRange(Ipa(
                1 << 40
            ))))
        );
        // Beyond the advertised OAS.
        let ste = guest_s1(1 << 50, S1Fmt::Linear, 0);
        assert!(matches!(
            compose(&ste, &p, &s2(1)),
            Err(VsteError::Illegal(SteError::ContextPtrOutOfRange(_)))
        ));
        // The top of the VM is fine; bits [5:0] cannot be expressed.
        let ste = guest_s1((1 << 40) - 64, S1Fmt::Linear, 0);
        let out = compose(&ste, &p, &s2(1)).unwrap();
        assert_eq!(out.s1_context_ptr(), Ipa((1 << 40) - 64));
    }

    #[test]
    fn multi_pasid_cd_tables() {
        let p = vpolicy(); // SSIDSIZE 8, CD2L
        for (fmt, cdmax) in [
            (S1Fmt::Linear, 1),
            (S1Fmt::Linear, 8),
            (S1Fmt::TwoLevel4K, 8),
            (S1Fmt::TwoLevel64K, 8),
            (S1Fmt::TwoLevel4K, 7),
        ] {
            let ste = guest_s1(RAM + 0x4_0000, fmt, cdmax);
            let out = compose(&ste, &p, &s2(2)).unwrap();
            assert_eq!(out.s1fmt(), fmt);
            assert_eq!(out.s1cdmax(), cdmax);
            assert_eq!(out.s1dss(), S1Dss::Ssid0);
            assert_eq!(out.s1_context_ptr(), Ipa(RAM + 0x4_0000));
            assert_eq!(
                out.validate(&nested_ste_policy(StallModel::TerminateOnly)),
                Ok(SteKind::Nested)
            );
        }
        // Beyond the advertised SSIDSIZE.
        let ste = guest_s1(RAM, S1Fmt::Linear, 9);
        assert_eq!(
            compose(&ste, &p, &s2(2)),
            Err(VsteError::Illegal(SteError::S1CdMax { cdmax: 9, max: 8 }))
        );
        // 2-level without CD2L advertised.
        let no_cd2l = VsmmuPolicy { cd2l: false, ..p };
        let ste = guest_s1(RAM, S1Fmt::TwoLevel4K, 8);
        assert_eq!(
            compose(&ste, &no_cd2l, &s2(2)),
            Err(VsteError::Illegal(SteError::S1FmtTwoLevel))
        );
        // Without substreams (QEMU: SSIDSIZE 0) S1CDMax, S1Fmt and S1DSS
        // are ignored, and normalised so the physical SMMU ignores them too.
        let none = VsmmuPolicy { ssid_bits: 0, ..p };
        let out = compose(&ste, &none, &s2(2)).unwrap();
        assert_eq!(
            (out.s1cdmax(), out.s1fmt(), out.s1dss()),
            (0, S1Fmt::Linear, S1Dss::Terminate)
        );
        // Reserved S1Fmt/S1DSS behave as linear/terminate.
        let mut ste = guest_s1(RAM, S1Fmt::Reserved, 4);
        ste.set_s1dss(S1Dss::Reserved);
        let out = compose(&ste, &p, &s2(2)).unwrap();
        assert_eq!(
            (out.s1fmt(), out.s1dss()),
            (S1Fmt::Linear, S1Dss::Terminate)
        );
    }

    #[test]
    fn read_and_compose_two_level_stream_and_cd_tables() {
        // End to end: a 2-level stream table whose STE points at a 2-level
        // CD table of 256 PASIDs.
        let m = mem();
        let t = GuestStrtab {
            base: Ipa(RAM),
            two_level: true,
            log2size: 16,
            split: 8,
        };
        m.write_u64(
            Ipa(RAM + 0x10 * 8),
            L1Std::new(PhysAddr(RAM + 0x2_0000), 9).0,
        );
        let ste = guest_s1(RAM + 0x8_0000, S1Fmt::TwoLevel4K, 8);
        write_ste(&m, RAM + 0x2_0000 + 0x42 * 64, &ste);
        let guest = read_guest_ste(&m, &t, StreamId(0x1042)).unwrap();
        let out = compose(&guest, &vpolicy(), &s2(3)).unwrap();
        assert_eq!(out.config(), Config::Nested);
        assert_eq!(out.s1_config().s1fmt, S1Fmt::TwoLevel4K);
        assert_eq!(out.s1_config().s1cdmax, 8);
        assert_eq!(out.s1_context_ptr(), Ipa(RAM + 0x8_0000));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any 64 bytes: no panic; an accepted result is abort, the VM's
        /// stage 2, or nested over exactly the VM's stage 2, and it is a
        /// legal STE for the physical SMMU.
        #[test]
        fn compose_is_total_and_keeps_stage2(
            words in any::<[u64; 8]>(),
            valid_cfg in 0u8..8,
            force_valid: bool,
            narrow_ptr: bool,
            ssid_bits in 0u8..=20,
            cd2l: bool,
            oas in prop::sample::select(vec![32u8, 36, 40, 42, 44, 48, 52]),
            vmid: u16,
            stall in prop::sample::select(vec![
                StallModel::StallAndTerminate, StallModel::TerminateOnly, StallModel::StallForced,
            ]),
        ) {
            let mut guest = Ste(words);
            if narrow_ptr {
                // A context pointer inside the VM and S1STALLD clear, so
                // that the nested path is exercised often.
                guest.0[0] &= ((1 << 40) - 1) | (0x1F << 59);
                guest.set_s1stalld(false);
            }
            if force_valid {
                guest.set_v(true);
                guest.set_config(Config::from_bits(valid_cfg));
            }
            let p = VsmmuPolicy { ssid_bits, cd2l, oas_bits: oas, ..VsmmuPolicy::default() };
            let s2 = s2(vmid);
            match compose_with_stall(&guest, &p, &s2, stall) {
                Ok(out) => {
                    if out != Ste::abort() {
                        let stage2 = Ste::stage2(&s2);
                        // Words 2..8 are the hypervisor's, bit for bit.
                        prop_assert_eq!(&out.0[2..], &stage2.0[2..]);
                        prop_assert!(
                            out == stage2 || out == Ste::nested(&s2, &out.s1_config()),
                            "{:?}", out
                        );
                        prop_assert_eq!(out.eats(), Eats::Abort);
                        prop_assert!(out.s1cdmax() <= ssid_bits);
                        prop_assert!(fits(out.s1_context_ptr().raw(), 40));
                        let phys = StePolicy { ssid_bits: 20, ..nested_ste_policy(stall) };
                        prop_assert!(out.validate(&phys).is_ok(), "{:?}", out);
                    }
                    prop_assert_eq!(out == Ste::abort(), !guest.is_live());
                    prop_assert!(guest.v());
                }
                Err(VsteError::Illegal(_)) => prop_assert!(guest.v()),
                Err(VsteError::Invalid) => prop_assert!(!guest.v()),
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }

        /// Any table geometry and StreamID: never a panic, and every read
        /// stays where the geometry says.
        #[test]
        fn read_guest_ste_is_total(
            base in prop_oneof![Just(RAM), any::<u64>()],
            two_level: bool,
            log2size in 0u8..=40,
            split in 0u8..=40,
            sid: u32,
            l1 in any::<u64>(),
        ) {
            let m = mem();
            let base = base & !63;
            if base >= RAM && base < RAM + RAM_SIZE as u64 - 8 {
                m.write_u64(Ipa(base), l1);
            }
            let t = GuestStrtab { base: Ipa(base), two_level, log2size, split };
            let _ = read_guest_ste(&m, &t, StreamId(sid));
        }
    }

    #[test]
    fn refusals_become_the_architected_events() {
        let fetch = VsteError::Fetch {
            addr: Ipa(0x4020_0040),
            err: GuestMemError::OutOfRange(Ipa(0x4020_0040)),
        };
        assert_eq!(
            refusal_event(&fetch, StreamId(8), None),
            Event::SteFetch {
                sid: StreamId(8),
                ssid: None,
                reason: 0,
                gpcf: false,
                fetch_addr: PhysAddr(0x4020_0040),
            }
        );
        let illegal = VsteError::Illegal(SteError::Stage2NotImplemented);
        let e = refusal_event(&illegal, StreamId(8), Some(Ssid(3)));
        assert_eq!(
            e,
            Event::BadSte {
                sid: StreamId(8),
                ssid: Some(Ssid(3))
            }
        );
        assert_eq!(
            refusal_event(&VsteError::Invalid, StreamId(8), None),
            Event::BadSte {
                sid: StreamId(8),
                ssid: None
            }
        );
        let none = refusal_event(&VsteError::NoStream, StreamId(8), Some(Ssid(3)));
        assert_eq!(
            none,
            Event::BadStreamId {
                sid: StreamId(8),
                ssid: Some(Ssid(3))
            }
        );
        // All survive the trip through an event queue record.
        assert_eq!(Event::decode(e.encode().unwrap()), e);
        let f = refusal_event(&fetch, StreamId(8), None);
        assert_eq!(Event::decode(f.encode().unwrap()), f);
        assert_eq!(Event::decode(none.encode().unwrap()), none);
        assert!(fetch.is_refusal() && illegal.is_refusal());
        assert!(!VsteError::Invalid.is_refusal() && !VsteError::NoStream.is_refusal());
    }
}
