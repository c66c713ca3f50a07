use super::*;
use crate::cmd::{self, Granule as TlbiGranule, TlbiRange};
use crate::driver::SmmuOptions;
use crate::fake::{FakeMemory, FakeSmmu, QEMU_IDR0, QEMU_IDR1, QEMU_IDR3, QEMU_IDR5};
use crate::ste::{Config, Eats, S1Dss, S1Fmt};
use proptest::prelude::*;
use std::sync::Arc;

const MIB2: u64 = 2 << 20;
const PAGE: u64 = 4096;
const SYNC: Command = Command::Sync(cmd::Sync::none());

fn fake_with(idr0: u32, idr3: u32) -> (Arc<FakeMemory>, FakeSmmu) {
    let mem = Arc::new(FakeMemory::new());
    let fake = FakeSmmu::with_idrs(mem.clone(), idr0, QEMU_IDR1, idr3, QEMU_IDR5);
    (mem, fake)
}

fn boot<'a>(fake: &'a FakeSmmu, mem: &'a FakeMemory) -> Iommu<'a, &'a FakeSmmu> {
    let opts = SmmuOptions {
        timeout_us: 1000,
        ..SmmuOptions::default()
    };
    let iommu = Iommu::new(Smmu::new(fake, mem, opts).unwrap());
    fake.clear_commands();
    iommu
}

fn syncs(cmds: &[Command]) -> usize {
    cmds.iter().filter(|c| **c == SYNC).count()
}

fn expected_ste(iommu: &Iommu<'_, &FakeSmmu>, id: DomainId) -> Ste {
    Ste::stage2(&s2_config(iommu.domain(id).unwrap(), true))
}

#[test]
fn attach_writes_the_ste_before_cfgi_ste_then_syncs() {
    let (mem, fake) = fake_with(QEMU_IDR0, QEMU_IDR3);
    let mut iommu = boot(&fake, &mem);
    let d = iommu.create_domain(40).unwrap();
    let sid = StreamId(0x42);
    iommu.attach(d, sid).unwrap();
    let ste = expected_ste(&iommu, d);
    assert_eq!(ste.config(), Config::S2Translate);
    assert_eq!(ste.s2vmid(), iommu.domain(d).unwrap().vmid());
    assert_eq!(ste.s2ttb(), iommu.domain(d).unwrap().stage2().config().root);
    assert_eq!(fake.ste(sid), Some(ste), "what the SMMU walks");
    let c = fake.consumed();
    let last = c
        .iter()
        .rposition(|c| c.cmd == Command::CfgiSte { sid, leaf: true })
        .unwrap();
    assert_eq!(c[last].ste, Some(ste), "STE in memory before CMD_CFGI_STE");
    assert_eq!(c[last + 1].cmd, SYNC);
    assert_eq!(c.len(), last + 2);
    assert_eq!(iommu.owner(sid), Some(d));
    assert_eq!(
        iommu.domain(d).unwrap().streams().collect::<Vec<_>>(),
        [sid]
    );
    assert!(fake.violations().is_empty());
}

#[test]
fn a_stream_belongs_to_one_domain() {
    let (mem, fake) = fake_with(QEMU_IDR0, QEMU_IDR3);
    let mut iommu = boot(&fake, &mem);
    let d1 = iommu.create_domain(40).unwrap();
    let d2 = iommu.create_domain(40).unwrap();
    assert_ne!(
        iommu.domain(d1).unwrap().vmid(),
        iommu.domain(d2).unwrap().vmid()
    );
    let sid = StreamId(9);
    iommu.attach(d1, sid).unwrap();
    let n = fake.commands().len();
    assert_eq!(
        iommu.attach(d2, sid),
        Err(DomainError::StreamInUse { sid, owner: d1 })
    );
    assert_eq!(fake.commands().len(), n, "nothing issued");
    assert_eq!(fake.ste(sid), Some(expected_ste(&iommu, d1)));
    iommu.attach(d1, sid).unwrap();
    assert_eq!(iommu.detach(sid), Ok(d1));
    assert_eq!(fake.ste(sid), Some(Ste::abort()));
    assert_eq!(iommu.detach(sid), Err(DomainError::NotAttached(sid)));
    iommu.attach(d2, sid).unwrap();
    assert_eq!(fake.ste(sid), Some(expected_ste(&iommu, d2)));
    assert_eq!(
        iommu.attach(DomainId(99), StreamId(1)),
        Err(DomainError::NoSuchDomain(DomainId(99)))
    );
}

#[test]
fn refused_and_blocked_streams_abort_and_can_be_attached_again() {
    let (mem, fake) = fake_with(QEMU_IDR0, QEMU_IDR3);
    let mut iommu = boot(&fake, &mem);
    let d = iommu.create_domain(40).unwrap();
    let sid = StreamId(0x10);
    iommu.attach(d, sid).unwrap();
    fake.clear_commands();
    assert_eq!(iommu.refuse(sid), Ok(Some(d)));
    assert_eq!(fake.ste(sid), Some(Ste::invalid()), "V == 0: C_BAD_STE");
    let c = fake.consumed();
    let cfgi = c
        .iter()
        .position(|c| c.cmd == Command::CfgiSte { sid, leaf: true })
        .expect("CMD_CFGI_STE");
    // V == 0 is what the SMMU sees from the first CMD_CFGI_STE on.
    for c in c[cfgi..]
        .iter()
        .filter(|c| matches!(c.cmd, Command::CfgiSte { .. }))
    {
        assert_eq!(c.ste.map(|s| s.0[0] & 1), Some(0), "V == 0");
    }
    assert_eq!(c[cfgi + 1].cmd, SYNC);
    assert_eq!(iommu.owner(sid), None);
    assert_eq!(iommu.domain(d).unwrap().streams().count(), 0);
    // Refusing a stream nobody owns also works (it was aborting).
    assert_eq!(iommu.refuse(StreamId(0x11)), Ok(None));
    assert_eq!(fake.ste(StreamId(0x11)), Some(Ste::invalid()));
    // block: abort again, attached or not (detach refuses the latter).
    assert_eq!(
        iommu.detach(StreamId(0x11)),
        Err(DomainError::NotAttached(StreamId(0x11)))
    );
    assert_eq!(iommu.block(StreamId(0x11)), Ok(None));
    assert_eq!(fake.ste(StreamId(0x11)), Some(Ste::abort()));
    iommu.attach(d, sid).unwrap();
    assert_eq!(fake.ste(sid), Some(expected_ste(&iommu, d)));
    assert_eq!(iommu.block(sid), Ok(Some(d)));
    assert_eq!(fake.ste(sid), Some(Ste::abort()));
    assert_eq!(iommu.owner(sid), None);
    iommu.attach(d, sid).unwrap();
    assert!(fake.violations().is_empty());
}

/// Maps a 2 MiB block, unmaps 4 pages inside it, returns the commands.
fn unmap_four_pages(idr3: u32) -> (Vec<Command>, Vmid) {
    let (mem, fake) = fake_with(QEMU_IDR0, idr3);
    let mut iommu = boot(&fake, &mem);
    let d = iommu.create_domain(40).unwrap();
    let vmid = iommu.domain(d).unwrap().vmid();
    iommu
        .map(
            d,
            Ipa(0x4000_0000),
            PhysAddr(0x8000_0000),
            MIB2,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
    assert!(fake.commands().is_empty(), "map needs no invalidation");
    iommu.unmap(d, Ipa(0x4000_4000), 4 * PAGE).unwrap();
    let s2 = iommu.domain(d).unwrap().stage2();
    assert_eq!(s2.translate(Ipa(0x4000_4000)), None);
    assert!(s2.translate(Ipa(0x4000_8000)).is_some());
    assert!(fake.violations().is_empty() && fake.rejected().is_empty());
    (fake.commands(), vmid)
}

fn s2_ipa(vmid: Vmid, addr: u64, range: Option<(u8, u8, u8)>) -> Command {
    Command::TlbiS2Ipa {
        vmid,
        addr: Ipa(addr),
        scope: TlbiScope {
            leaf: true,
            range: range.map(|(ttl, scale, num)| TlbiRange {
                tg: TlbiGranule::Size4K,
                ttl,
                scale,
                num,
            }),
        },
    }
}

#[test]
fn unmap_with_ril_is_range_commands_and_one_sync() {
    let (cmds, vmid) = unmap_four_pages(QEMU_IDR3);
    // Break-before-make: the 2 MiB block (512 pages, TTL 2) is invalidated
    // and synchronised while its entry is invalid, before the table that
    // replaces it is written; then one batch for the whole change (the block
    // and the 4 pages, TTL 3) with one SYNC.
    assert_eq!(
        cmds,
        [
            s2_ipa(vmid, 0x4000_0000, Some((2, 9, 0))),
            SYNC,
            s2_ipa(vmid, 0x4000_0000, Some((2, 9, 0))),
            s2_ipa(vmid, 0x4000_4000, Some((3, 2, 0))),
            SYNC
        ]
    );
}

#[test]
fn unmap_without_ril_is_per_entry() {
    let (cmds, vmid) = unmap_four_pages(0);
    // Break (block + SYNC), then the batch.
    let mut want = vec![s2_ipa(vmid, 0x4000_0000, None), SYNC];
    want.push(s2_ipa(vmid, 0x4000_0000, None));
    want.extend((0..4).map(|i| s2_ipa(vmid, 0x4000_4000 + i * PAGE, None)));
    want.push(SYNC);
    assert_eq!(cmds, want);
}

#[test]
fn unmap_that_empties_tables_invalidates_walks_then_frees() {
    for (idr3, ipa_bits) in [(QEMU_IDR3, 40), (0, 40), (QEMU_IDR3, 44), (0, 44)] {
        let (mem, fake) = fake_with(QEMU_IDR0, idr3);
        let mut iommu = boot(&fake, &mem);
        let d = iommu.create_domain(ipa_bits).unwrap();
        let start = mem.pages_in_use();
        // Pages (PA not 2 MiB aligned): level-3 table under new tables.
        iommu
            .map(
                d,
                Ipa(0x1_0000_0000),
                PhysAddr(0x8000_1000),
                8 * PAGE,
                S2Attrs::NORMAL_RW,
            )
            .unwrap();
        let mapped = mem.pages_in_use();
        assert!(mapped > start);
        iommu.unmap(d, Ipa(0x1_0000_0000), 8 * PAGE).unwrap();
        assert_eq!(mem.pages_in_use(), start, "emptied tables freed");
        let c = fake.consumed();
        let cmds: Vec<Command> = c.iter().map(|c| c.cmd).collect();
        assert_eq!(syncs(&cmds), 1, "{cmds:?}");
        assert_eq!(c.last().unwrap().cmd, SYNC);
        assert_eq!(
            c.last().unwrap().pages_in_use,
            mapped,
            "freed only after the SYNC"
        );
        assert!(
            cmds.iter().any(|c| matches!(
                c,
                Command::TlbiS2Ipa {
                    scope: TlbiScope { leaf: false, .. },
                    ..
                }
            )),
            "walk caches invalidated: {cmds:?}"
        );
        assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
    }
}

#[test]
fn huge_unmap_without_ril_falls_back_to_vmall() {
    let (mem, fake) = fake_with(QEMU_IDR0, 0);
    let mut iommu = boot(&fake, &mem);
    let d = iommu.create_domain(40).unwrap();
    let vmid = iommu.domain(d).unwrap().vmid();
    let len = 600 * PAGE;
    iommu
        .map(
            d,
            Ipa(0x4000_0000),
            PhysAddr(0x8000_1000),
            len,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
    iommu.unmap(d, Ipa(0x4000_0000), len).unwrap();
    assert_eq!(fake.commands(), [Command::TlbiS12Vmall { vmid }, SYNC]);
}

#[test]
fn protect_invalidates_the_changed_pages() {
    let (mem, fake) = fake_with(QEMU_IDR0, QEMU_IDR3);
    let mut iommu = boot(&fake, &mem);
    let d = iommu.create_domain(40).unwrap();
    iommu
        .map(
            d,
            Ipa(0x4000_0000),
            PhysAddr(0x8000_0000),
            16 * PAGE,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
    iommu
        .protect(d, Ipa(0x4000_0000), 2 * PAGE, S2Attrs::NORMAL_RO)
        .unwrap();
    let (_, attrs, _) = iommu
        .domain(d)
        .unwrap()
        .stage2()
        .translate(Ipa(0x4000_1000))
        .unwrap();
    assert_eq!(attrs, S2Attrs::NORMAL_RO);
    let cmds = fake.commands();
    assert_eq!(cmds.len(), 2);
    assert!(matches!(
        cmds[0],
        Command::TlbiS2Ipa {
            addr: Ipa(0x4000_0000),
            ..
        }
    ));
    assert_eq!(cmds[1], SYNC);
    // No change, no commands.
    iommu
        .protect(d, Ipa(0x4000_0000), 2 * PAGE, S2Attrs::NORMAL_RO)
        .unwrap();
    assert_eq!(fake.commands().len(), 2);
}

#[test]
fn a_failed_map_leaves_nothing_mapped_and_issues_nothing() {
    let (mem, fake) = fake_with(QEMU_IDR0, QEMU_IDR3);
    let mut iommu = boot(&fake, &mem);
    let d = iommu.create_domain(40).unwrap();
    mem.set_limit(Some(mem.pages_in_use() + 1));
    let err = iommu
        .map(
            d,
            Ipa(0x4000_0000),
            PhysAddr(0x8000_1000),
            4 * PAGE,
            S2Attrs::NORMAL_RW,
        )
        .unwrap_err();
    assert_eq!(err, DomainError::Stage2(Stage2Error::OutOfMemory));
    mem.set_limit(None);
    assert_eq!(
        iommu
            .domain(d)
            .unwrap()
            .stage2()
            .translate(Ipa(0x4000_0000)),
        None
    );
    assert!(fake.commands().is_empty());
}

#[test]
fn destroy_aborts_streams_then_vmall_then_frees_then_releases_the_vmid() {
    let (mem, fake) = fake_with(QEMU_IDR0, QEMU_IDR3);
    let mut iommu = boot(&fake, &mem);
    let sids = [StreamId(0x10), StreamId(0x11)];
    // Create the level-2 stream table array first: it outlives the domain.
    for sid in sids {
        iommu.smmu().write_ste(sid, &Ste::abort()).unwrap();
    }
    let start = mem.pages_in_use();
    let d = iommu.create_domain(40).unwrap();
    let vmid = iommu.domain(d).unwrap().vmid();
    iommu
        .map(
            d,
            Ipa(0),
            PhysAddr(0x8000_0000),
            64 * PAGE,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
    for sid in sids {
        iommu.attach(d, sid).unwrap();
    }
    let before = mem.pages_in_use();
    fake.clear_commands();
    iommu.destroy(d).unwrap();
    let c = fake.consumed();
    let vmall = c
        .iter()
        .position(|c| c.cmd == Command::TlbiS12Vmall { vmid })
        .unwrap();
    for sid in sids {
        let cfgi = c
            .iter()
            .rposition(|c| matches!(c.cmd, Command::CfgiSte { sid: s, .. } if s == sid))
            .unwrap();
        assert!(cfgi < vmall, "STE of {sid} aborted before TLBI_S12_VMALL");
        assert_eq!(c[cfgi].ste, Some(Ste::abort()));
        assert_eq!(fake.ste(sid), Some(Ste::abort()));
        assert_eq!(iommu.owner(sid), None);
    }
    assert_eq!(
        c[vmall].pages_in_use, before,
        "tables still allocated at VMALL"
    );
    assert_eq!(c[vmall + 1].cmd, SYNC);
    assert_eq!(c.len(), vmall + 2);
    assert_eq!(mem.pages_in_use(), start, "every table freed");
    assert_eq!(iommu.vmids().in_use(), 0);
    assert!(iommu.domain(d).is_none());
    assert_eq!(iommu.destroy(d), Err(DomainError::NoSuchDomain(d)));
    assert!(fake.violations().is_empty());
}

#[test]
fn vmids_are_reused_only_after_tlbi_s12_vmall() {
    // 8-bit VMIDs (no IDR0.VMID16): 255 usable.
    let (mem, fake) = fake_with(QEMU_IDR0 & !(1 << 18), QEMU_IDR3);
    let mut iommu = boot(&fake, &mem);
    let ids: Vec<DomainId> = (0..255).map(|_| iommu.create_domain(32).unwrap()).collect();
    let vmids: BTreeSet<u16> = ids
        .iter()
        .map(|&d| iommu.domain(d).unwrap().vmid().0)
        .collect();
    assert_eq!(vmids, (1..=255).collect(), "every VMID but 0, once");
    assert_eq!(iommu.create_domain(32), Err(DomainError::NoVmid));
    let victim = ids[6];
    let vmid = iommu.domain(victim).unwrap().vmid();
    iommu.destroy(victim).unwrap();
    let cmds = fake.commands();
    let at = cmds
        .iter()
        .position(|c| *c == Command::TlbiS12Vmall { vmid })
        .unwrap();
    assert_eq!(cmds[at + 1], SYNC);
    let again = iommu.create_domain(32).unwrap();
    assert_eq!(iommu.domain(again).unwrap().vmid(), vmid);
}

#[test]
fn vmid_allocator_is_next_fit_and_never_hands_out_zero() {
    let mut a = VmidAllocator::new(2);
    assert_eq!(a.capacity(), 3);
    let got: Vec<u16> = (0..3).map(|_| a.alloc().unwrap().0).collect();
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(a.alloc(), None);
    a.release(FlushedVmid(Vmid(2)));
    assert_eq!(a.alloc(), Some(Vmid(2)));
    a.release(FlushedVmid(Vmid(1)));
    a.release(FlushedVmid(Vmid(3)));
    assert_eq!(a.alloc(), Some(Vmid(3)), "next-fit: after 2 comes 3");
    assert_eq!(a.alloc(), Some(Vmid(1)));
}

#[test]
fn nested_domains_also_invalidate_stage1() {
    let (mem, fake) = fake_with(QEMU_IDR0, QEMU_IDR3);
    let mut iommu = boot(&fake, &mem);
    let d = iommu.create_domain(40).unwrap();
    let vmid = iommu.domain(d).unwrap().vmid();
    let s1 = S1Config {
        ctx_ptr: Ipa(0x4000_0000),
        s1fmt: S1Fmt::Linear,
        s1cdmax: 0,
        s1dss: S1Dss::Terminate,
        s1cir: 1,
        s1cor: 1,
        s1csh: 3,
        s1stalld: false,
        eats: Eats::Abort,
    };
    iommu.attach_nested(d, StreamId(5), &s1).unwrap();
    assert_eq!(fake.ste(StreamId(5)).unwrap().config(), Config::Nested);
    iommu
        .map(
            d,
            Ipa(0x4000_0000),
            PhysAddr(0x8000_0000),
            PAGE,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
    fake.clear_commands();
    iommu.unmap(d, Ipa(0x4000_0000), PAGE).unwrap();
    let cmds = fake.commands();
    assert_eq!(cmds[cmds.len() - 2..], [Command::TlbiNhAll { vmid }, SYNC]);
    assert_eq!(syncs(&cmds), 1);
}

#[derive(Clone, Debug)]
enum Op {
    Map(usize, u64, u64),
    Unmap(usize, u64, u64),
    Protect(usize, u64, u64),
    Attach(usize, u32),
    Detach(u32),
    Recreate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let dom = 0usize..2;
    let page = 0u64..1200;
    let pages = 1u64..700;
    prop_oneof![
        (dom.clone(), page.clone(), pages.clone()).prop_map(|(d, p, n)| Op::Map(d, p, n)),
        (dom.clone(), page.clone(), pages.clone()).prop_map(|(d, p, n)| Op::Unmap(d, p, n)),
        (dom.clone(), page, pages).prop_map(|(d, p, n)| Op::Protect(d, p, n)),
        (dom.clone(), 0u32..4).prop_map(|(d, s)| Op::Attach(d, s)),
        (0u32..4).prop_map(Op::Detach),
        dom.prop_map(Op::Recreate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random sequences keep the invariants: what the SMMU walks for each
    /// stream is its owner's stage-2 STE or abort; every batch that
    /// invalidates ends with exactly one SYNC; the SMMU never rejects a
    /// command; and destroying everything returns every page.
    #[test]
    fn random_sequences_keep_ste_tlb_and_memory_invariants(
        ril in any::<bool>(),
        ops in prop::collection::vec(op(), 1..24),
    ) {
        let (mem, fake) = fake_with(QEMU_IDR0, if ril { QEMU_IDR3 } else { 0 });
        let mut iommu = boot(&fake, &mem);
        for s in 0..4 {
            iommu.smmu().write_ste(StreamId(s), &Ste::abort()).unwrap();
        }
        let start = mem.pages_in_use();
        let mut doms = [iommu.create_domain(40).unwrap(), iommu.create_domain(40).unwrap()];
        for op in ops {
            fake.clear_commands();
            let base = 0x4000_0000;
            match op {
                Op::Map(d, p, n) => {
                    // Overlaps are refused by Stage2 and change nothing.
                    let _ = iommu.map(doms[d], Ipa(base + p * PAGE), PhysAddr(0x8000_0000 + p * PAGE), n * PAGE, S2Attrs::NORMAL_RW);
                    prop_assert!(fake.commands().is_empty());
                }
                Op::Unmap(d, p, n) | Op::Protect(d, p, n) => {
                    if matches!(op, Op::Unmap(..)) {
                        iommu.unmap(doms[d], Ipa(base + p * PAGE), n * PAGE).unwrap();
                    } else {
                        iommu.protect(doms[d], Ipa(base + p * PAGE), n * PAGE, S2Attrs::NORMAL_RO).unwrap();
                    }
                    let cmds = fake.commands();
                    if !cmds.is_empty() {
                        // One batch SYNC at the end, plus one per broken
                        // block (break-before-make); no SYNC without an
                        // invalidation before it.
                        prop_assert_eq!(cmds.last(), Some(&SYNC));
                        prop_assert!(cmds.first() != Some(&SYNC));
                        prop_assert!(cmds.windows(2).all(|w| !(w[0] == SYNC && w[1] == SYNC)));
                    }
                    for ipa in [p, p + n - 1] {
                        let t = iommu.domain(doms[d]).unwrap().stage2().translate(Ipa(base + ipa * PAGE));
                        if matches!(op, Op::Unmap(..)) {
                            prop_assert_eq!(t, None);
                        } else if let Some((_, attrs, _)) = t {
                            prop_assert_eq!(attrs, S2Attrs::NORMAL_RO);
                        }
                    }
                }
                Op::Attach(d, s) => {
                    let r = iommu.attach(doms[d], StreamId(s));
                    match iommu.owner(StreamId(s)) {
                        Some(o) if o != doms[d] => {
                            prop_assert_eq!(r, Err(DomainError::StreamInUse { sid: StreamId(s), owner: o }));
                        }
                        _ => prop_assert!(r.is_ok()),
                    }
                }
                Op::Detach(s) => {
                    let owned = iommu.owner(StreamId(s)).is_some();
                    prop_assert_eq!(iommu.detach(StreamId(s)).is_ok(), owned);
                }
                Op::Recreate(d) => {
                    iommu.destroy(doms[d]).unwrap();
                    doms[d] = iommu.create_domain(40).unwrap();
                }
            }
            for s in 0..4 {
                let want = match iommu.owner(StreamId(s)) {
                    Some(o) => expected_ste(&iommu, o),
                    None => Ste::abort(),
                };
                prop_assert_eq!(fake.ste(StreamId(s)), Some(want));
            }
            prop_assert!(fake.rejected().is_empty(), "{:?}", fake.rejected());
        }
        for d in doms {
            iommu.destroy(d).unwrap();
        }
        prop_assert_eq!(mem.pages_in_use(), start);
        prop_assert_eq!(iommu.vmids().in_use(), 0);
        prop_assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    }
}
