//! The `decoders` target: the pure decoders of structures a guest (or a
//! misbehaving device) controls, on any bits: command-queue entries, event
//! records, STEs, CDs, level 1 stream-table and CD-table descriptors, and
//! the STE update plans. Each must be total, round-trip what it accepts and
//! keep the rules of [`oracle`](crate::oracle).

use std::string::ToString;

use smmu::addr::{Ipa, PhysAddr, Ssid};
use smmu::cd::{CdLocation, CdLookup, CdPolicy, CdTable, ContextDescriptor, L1Cd, CD_BYTES};
use smmu::cmd::Command;
use smmu::event::Event;
use smmu::ste::{
    used_bits, Httu, S1Dss, S1Fmt, StallModel, SteKind, StePolicy, TtEndian, STE_WORDS,
};
use smmu::strtab::L1Std;
use smmu::vsmmu::cmd::{translate, translate_checked, Translated};
use smmu::vsmmu::VsmmuPolicy;

use crate::bytes::Reader;
use crate::ops;
use crate::oracle::{
    check_update_plan, expected, kind_of, physical_command, reinstall_scope, same_scope, vm_scoped,
};
use crate::vm::{Devices, VMID};

/// Most structures decoded from one input.
const MAX_ITEMS: usize = 64;

/// Runs one input: the `decoders` fuzz target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    for _ in 0..MAX_ITEMS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 6 {
            0 => command(&mut r),
            1 => event(&mut r),
            2 => ste(&mut r),
            3 => cd(&mut r),
            4 => update(&mut r),
            _ => descriptors(&mut r),
        }
    }
}

fn bit(v: u32, n: u32) -> bool {
    v & (1 << n) != 0
}

/// A command entry: decoded, re-encoded, translated for the VM.
fn command(r: &mut Reader<'_>) {
    let words = ops::command(r);
    let flags = r.u8();
    let c = match Command::decode(words) {
        Ok(c) => c,
        Err(e) => {
            assert_eq!(e.cerror(), 1, "{e} is not CERROR_ILL");
            return;
        }
    };
    assert_eq!(c.opcode(), words[0] as u8, "{words:x?} decoded to {c}");
    assert_eq!(
        Command::decode(c.encode()),
        Ok(c),
        "{c} does not round-trip"
    );
    let _ = c.to_string();
    let policy = VsmmuPolicy {
        ril: flags & 1 != 0,
        asid16: flags & 2 != 0,
        ssid_bits: (flags >> 2) % 21,
        ..VsmmuPolicy::default()
    };
    let translated = translate_checked(&c, VMID, &Devices, &policy);
    let want = expected(&c, &policy);
    assert_eq!(
        kind_of(&translated),
        want,
        "guest {c} became {translated:?}"
    );
    match translated {
        Ok(Translated::ReinstallStes(range)) => {
            if let Err(e) = reinstall_scope(&c, &range) {
                panic!("{e}");
            }
        }
        Ok(Translated::Forward(p)) => {
            if let Err(e) = physical_command(&p, &policy).and_then(|()| same_scope(&c, &p)) {
                panic!("guest {c} under {policy:?}: {e}");
            }
        }
        Ok(Translated::Sync(_) | Translated::Drop) => {}
        Err(e) => assert_eq!(e.cerror(), 1, "{e} is not CERROR_ILL"),
    }
    // Without the feature checks, translation still stays inside the VM.
    if let Ok(Translated::Forward(p)) = translate(&c, VMID, &Devices) {
        assert!(vm_scoped(&p), "guest {c} became {p}");
        if let Err(e) = same_scope(&c, &p) {
            panic!("{e}");
        }
    }
}

/// An event record: decoded, re-encoded.
fn event(r: &mut Reader<'_>) {
    let words = [r.u64(), r.u64(), r.u64(), r.u64()];
    let e = Event::decode(words);
    assert_eq!(e.id(), words[0] as u8, "{words:x?} decoded to {e:?}");
    assert_eq!(
        u64::from(e.sid().0),
        words[0] >> 32,
        "{e:?} lost its StreamID"
    );
    match e.encode() {
        Ok(again) => assert_eq!(Event::decode(again), e, "{e:?} does not round-trip"),
        Err(err) => panic!("decoded {e:?} cannot be encoded: {err}"),
    }
    let _ = e.to_string();
}

/// An STE: classified for any SMMU, consistently with its bits.
fn ste(r: &mut Reader<'_>) {
    let ste = ops::ste(r);
    let f = r.u32();
    let policy = StePolicy {
        s1p: bit(f, 0),
        s2p: bit(f, 1),
        hyp: bit(f, 2),
        ats: bit(f, 3),
        ns1ats: bit(f, 4),
        cd2l: bit(f, 5),
        vmid16: bit(f, 6),
        stt: bit(f, 7),
        gran4k: bit(f, 8),
        gran16k: bit(f, 9),
        gran64k: bit(f, 10),
        ttendian: [TtEndian::Little, TtEndian::Mixed, TtEndian::Big][(f >> 11) as usize % 3],
        stall_model: [
            StallModel::TerminateOnly,
            StallModel::StallAndTerminate,
            StallModel::StallForced,
        ][(f >> 13) as usize % 3],
        httu: [Httu::None, Httu::Access, Httu::AccessDirty][(f >> 15) as usize % 3],
        ssid_bits: r.u8(),
        ias_bits: r.u8(),
        oas_bits: r.u8(),
    };
    if let Ok(kind) = ste.validate(&policy) {
        assert_eq!(kind == SteKind::Invalid, !ste.v(), "{ste:?} is {kind:?}");
        let live = matches!(
            kind,
            SteKind::Stage1 | SteKind::Stage2 | SteKind::Nested | SteKind::Bypass
        );
        assert_eq!(live, ste.is_live(), "{ste:?} is {kind:?}");
    }
    let _ = (used_bits(&ste), ste.s1_config(), format!("{ste:?}"));
}

/// A CD for any SMMU, and a CD table lookup for any STE fields.
fn cd(r: &mut Reader<'_>) {
    let mut cd = ContextDescriptor([0; 8]);
    let thin = r.u8();
    for w in cd.0.iter_mut() {
        *w = r.u64();
        if thin & 1 != 0 {
            *w &= r.u64();
        }
    }
    if thin & 2 != 0 {
        // V and AA64, so that validation goes past its first checks.
        cd.0[0] |= (1 << 31) | (1 << 41);
    }
    let f = r.u16();
    let f = u32::from(f);
    let policy = CdPolicy {
        ttendian: [TtEndian::Little, TtEndian::Mixed, TtEndian::Big][f as usize % 3],
        stall_model: [
            StallModel::TerminateOnly,
            StallModel::StallAndTerminate,
            StallModel::StallForced,
        ][(f >> 2) as usize % 3],
        term_model: bit(f, 4),
        httu: [Httu::None, Httu::Access, Httu::AccessDirty][(f >> 5) as usize % 3],
        asid16: bit(f, 7),
        stt: bit(f, 8),
        vax52: bit(f, 9),
        gran4k: bit(f, 10),
        gran16k: bit(f, 11),
        gran64k: bit(f, 12),
        s1stalld: bit(f, 13),
        oas_bits: r.u8(),
    };
    if cd.validate(&policy).is_ok() {
        assert!(cd.v() && cd.aa64(), "{cd:?} accepted without V and AA64");
    }
    let _ = format!("{cd:?}");

    let (fmt, cdmax, ssid_bits) = (r.u8(), r.u8() % 32, r.u8() % 32);
    let (ssid, dss) = (r.u32(), r.u8());
    let Ok(table) = CdTable::new(S1Fmt::from_bits(fmt & 3), cdmax, ssid_bits) else {
        return;
    };
    let ssid = (dss & 4 != 0).then_some(Ssid(ssid));
    if let Ok(CdLookup::Cd(loc)) = table.resolve(ssid, S1Dss::from_bits(dss & 3)) {
        if let Some(s) = ssid {
            assert!(s.0 < table.num_cds(), "{s:?} beyond {table:?}");
        }
        match loc {
            CdLocation::Linear { index } => {
                assert!((index as usize + 1) * CD_BYTES <= table.table_bytes());
            }
            CdLocation::TwoLevel { l1_index, l2_index } => {
                let l2_bytes = table.l2_table_bytes().expect("2-level table");
                assert!(
                    l1_index < table.l1_entries() && (l2_index as usize + 1) * CD_BYTES <= l2_bytes
                );
            }
        }
    }
}

/// Rewriting a live STE never exposes a torn one.
fn update(r: &mut Reader<'_>) {
    let old = ops::ste(r);
    let mut new = if r.u8() & 1 == 0 { ops::ste(r) } else { old };
    // Flip a few words, so that hitless updates are tried too.
    let flips = r.u8();
    for w in 0..STE_WORDS {
        if flips & (1 << w) != 0 {
            new.0[w] ^= r.u64();
        }
    }
    if let Err(e) = check_update_plan(&old, &new) {
        panic!("{e}");
    }
}

/// Level 1 stream-table and CD-table descriptors.
fn descriptors(r: &mut Reader<'_>) {
    let d = L1Std(r.u64());
    assert_eq!(d.valid(), (1..=11).contains(&d.span()), "{d:?}");
    // Span [4:0] and L2Ptr [55:6] are all it has.
    let fields = 0x1F | (((1u64 << 50) - 1) << 6);
    assert_eq!(L1Std::new(d.l2ptr(), d.span()).0, d.0 & fields, "{d:?}");
    let _: PhysAddr = d.l2ptr();
    let c = L1Cd(r.u64());
    if c.valid() {
        assert_eq!(L1Cd::new(c.l2ptr()).l2ptr(), c.l2ptr(), "{c:?}");
    }
    let _: Ipa = c.l2ptr();
}
