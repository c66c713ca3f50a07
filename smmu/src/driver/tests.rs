use super::*;
use crate::addr::{PhysAddr, Vmid};
use crate::fake::{FakeMemory, FakeSmmu, QEMU_IDR0, QEMU_IDR1, QEMU_IDR3, QEMU_IDR5};
use crate::regs::offset::*;
use crate::ste::{Granule, S2Config};
use std::sync::Arc;
use std::vec::Vec;

fn opts() -> SmmuOptions {
    SmmuOptions {
        timeout_us: 2000,
        ..SmmuOptions::default()
    }
}

fn fixture() -> (Arc<FakeMemory>, FakeSmmu) {
    let mem = Arc::new(FakeMemory::new());
    let fake = FakeSmmu::new(mem.clone());
    (mem, fake)
}

fn s2_ste(vmid: u16) -> Ste {
    Ste::stage2(&S2Config {
        vmid: Vmid(vmid),
        ttb: PhysAddr(0x8000_0000),
        t0sz: 24,
        sl0: 1,
        granule: Granule::Size4K,
        ps: 4,
        ir0: 1,
        or0: 1,
        sh0: 3,
        affd: true,
    })
}

fn cr0_writes(fake: &FakeSmmu) -> Vec<u64> {
    fake.writes()
        .iter()
        .filter(|w| w.offset == CR0)
        .map(|w| w.value)
        .collect()
}

const SMMUEN: u64 = 1;
const EVENTQEN: u64 = 4;
const CMDQEN: u64 = 8;

#[test]
fn reset_aborts_first_then_follows_the_spec_order() {
    let (mem, fake) = fixture();
    let smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    assert_eq!(fake.violations(), Vec::<String>::new());
    let w = fake.writes();
    // GBPA.ABORT (with Update) is the very first write, before CR0 = 0.
    assert_eq!(w[0].offset, GBPA);
    assert_eq!(w[0].value & (1 << 20 | 1 << 31), 1 << 20 | 1 << 31);
    assert_eq!(w[1].offset, CR0);
    assert_eq!(w[1].value, 0);
    assert_eq!(
        cr0_writes(&fake),
        [0, CMDQEN, CMDQEN | EVENTQEN, CMDQEN | EVENTQEN | SMMUEN]
    );
    let pos = |off| fake.first_write(off).unwrap();
    let cr0_cmdq = w
        .iter()
        .position(|w| w.offset == CR0 && w.value == CMDQEN)
        .unwrap();
    for off in [
        CR1,
        CR2,
        STRTAB_BASE,
        STRTAB_BASE_CFG,
        CMDQ_BASE,
        CMDQ_PROD,
        CMDQ_CONS,
        EVTQ_BASE,
    ] {
        assert!(
            pos(off) < cr0_cmdq,
            "{} programmed before CMDQEN",
            crate::fake::reg_name(off)
        );
    }
    // Invalidate everything cached (QEMU has no IDR0.Hyp: no TLBI_EL2_ALL).
    let sync = Command::Sync(cmd::Sync::none());
    assert_eq!(
        fake.commands(),
        [Command::CfgiAll, sync, Command::TlbiNsnhAll, sync]
    );
    assert_eq!(fake.cr0ack(), 0xd);
    assert!(!fake.would_bypass());
    // 2-level table sized from SIDSIZE 16, no level-2 arrays yet: streams
    // abort (invalid L1 descriptor).
    let cfg = fake.writes()[pos(STRTAB_BASE_CFG)].value;
    assert_eq!(cfg, (1 << 16) | (8 << 6) | 16);
    assert_eq!(fake.ste(StreamId(0x10)), Some(Ste::invalid()));
    assert_eq!(fake.ste(StreamId(0x1_0000)), None, "beyond SIDSIZE");
    assert!(smmu
        .summary()
        .contains("strtab 16 bits, cmdq 2^8, evtq 2^7"));
    assert!(smmu.features().s2p);
}

#[test]
fn reset_with_hyp_invalidates_el2_too_and_linear_table_aborts() {
    let mem = Arc::new(FakeMemory::new());
    // IDR0.Hyp = 1, ST_LEVEL = linear; SIDSIZE 6.
    let idr0 = (QEMU_IDR0 & !(3 << 27)) | (1 << 9);
    let idr1 = (QEMU_IDR1 & !0x3f) | 6;
    let fake = FakeSmmu::with_idrs(mem.clone(), idr0, idr1, QEMU_IDR3, QEMU_IDR5);
    let _smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    let sync = Command::Sync(cmd::Sync::none());
    assert_eq!(
        fake.commands(),
        [
            Command::CfgiAll,
            sync,
            Command::TlbiEl2All,
            Command::TlbiNsnhAll,
            sync
        ]
    );
    for sid in 0..64 {
        assert_eq!(fake.ste(StreamId(sid)), Some(Ste::abort()), "sid {sid}");
    }
    assert_eq!(fake.ste(StreamId(64)), None);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn refuses_an_smmu_without_stage2_or_aarch64_tables() {
    let mem = Arc::new(FakeMemory::new());
    let no_s2 = FakeSmmu::with_idrs(mem.clone(), QEMU_IDR0 & !1, QEMU_IDR1, QEMU_IDR3, QEMU_IDR5);
    assert_eq!(
        Smmu::new(&no_s2, &*mem, opts()).unwrap_err(),
        SmmuError::NoStage2
    );
    // Fail closed: nothing allocated, but every transaction aborts (the
    // reset state of GBPA would let them bypass).
    assert!(!no_s2.would_bypass(), "refused SMMU left in bypass");
    assert!(no_s2.gbpa() & (1 << 20) != 0, "GBPA.ABORT set");
    assert_eq!(no_s2.cr0ack(), 0, "left disabled");
    let aarch32 = (QEMU_IDR0 & !(3 << 2)) | (1 << 2);
    let no_a64 = FakeSmmu::with_idrs(mem.clone(), aarch32, QEMU_IDR1, QEMU_IDR3, QEMU_IDR5);
    assert_eq!(
        Smmu::new(&no_a64, &*mem, opts()).unwrap_err(),
        SmmuError::NoAArch64Tables
    );
    assert_eq!(mem.pages_in_use(), 0);
}

#[test]
fn failed_reset_disables_and_frees_everything() {
    // The command queue never runs: the first SYNC times out.
    let (mem, fake) = fixture();
    fake.set_hang(true);
    assert_eq!(
        Smmu::new(&fake, &*mem, opts()).unwrap_err(),
        SmmuError::SyncTimeout
    );
    assert_eq!(mem.pages_in_use(), 0);
    assert_eq!(fake.cr0ack(), 0, "left disabled");
    assert!(fake.gbpa() & (1 << 20) != 0, "still aborting");
    // CR0 never acknowledged.
    let (mem, fake) = fixture();
    fake.set_cr0_stuck(true); // CR0ACK stays 0: the CMDQEN write never acks
    assert_eq!(
        Smmu::new(&fake, &*mem, opts()).unwrap_err(),
        SmmuError::Timeout("CR0ACK")
    );
    assert_eq!(mem.pages_in_use(), 0);
    // Out of memory half-way (the stream table fits, the queues do not).
    let mem = Arc::new(FakeMemory::with_limit(1));
    let fake = FakeSmmu::new(mem.clone());
    assert_eq!(
        Smmu::new(&fake, &*mem, opts()).unwrap_err(),
        SmmuError::OutOfMemory
    );
    assert_eq!(mem.pages_in_use(), 0);
}

#[test]
fn disable_frees_all_memory() {
    let (mem, fake) = fixture();
    let mut smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    smmu.write_ste(StreamId(3), &s2_ste(1)).unwrap();
    assert!(mem.pages_in_use() > 0);
    smmu.disable().unwrap();
    assert_eq!(mem.pages_in_use(), 0);
    assert_eq!(fake.cr0ack(), 0);
    assert!(!fake.would_bypass());
}

#[test]
fn write_ste_creates_l2_then_invalidates_after_writing() {
    let (mem, fake) = fixture();
    let mut smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    fake.clear_commands();
    let sid = StreamId(0x123);
    let ste = s2_ste(7);
    smmu.write_ste(sid, &ste).unwrap();
    assert_eq!(fake.ste(sid), Some(ste));
    assert_eq!(
        fake.ste(StreamId(0x124)),
        Some(Ste::abort()),
        "neighbours abort"
    );
    let c = fake.consumed();
    let sync = Command::Sync(cmd::Sync::none());
    assert_eq!(c[0].cmd, Command::CfgiSte { sid, leaf: false });
    assert_eq!(c[0].ste, Some(Ste::abort()), "new L2 published before CFGI");
    assert_eq!(c[1].cmd, sync);
    let last_cfgi = c
        .iter()
        .rposition(|c| matches!(c.cmd, Command::CfgiSte { .. }))
        .unwrap();
    assert_eq!(
        c[last_cfgi].ste,
        Some(ste),
        "STE written before the final CFGI_STE"
    );
    assert_eq!(c[last_cfgi + 1].cmd, sync);
    assert_eq!(c.len(), last_cfgi + 2, "SYNC is the last command");
    // Back to abort: live -> abort, again fully visible to the SMMU.
    smmu.write_ste(sid, &Ste::abort()).unwrap();
    assert_eq!(fake.ste(sid), Some(Ste::abort()));
    assert_eq!(smmu.read_ste(sid).unwrap(), Some(Ste::abort()));
    assert_eq!(
        smmu.write_ste(StreamId(1 << 16), &ste).unwrap_err(),
        SmmuError::StreamTable(StrtabError::OutOfRange(StreamId(1 << 16)))
    );
    assert!(fake.violations().is_empty());
}

/// CMD_CFGI_STE (leaf) for StreamIDs 0..n.
fn cfgi_stes(n: u32) -> Vec<Command> {
    (0..n)
        .map(|i| Command::CfgiSte {
            sid: StreamId(i),
            leaf: true,
        })
        .collect()
}

#[test]
fn submit_waits_for_space_and_wraps_a_small_queue() {
    let (mem, fake) = fixture();
    let o = SmmuOptions {
        cmdq_log2_entries: 2,
        ..opts()
    };
    let mut smmu = Smmu::new(&fake, &*mem, o).unwrap();
    fake.clear_commands();
    // The SMMU consumes one command per CMDQ_CONS poll, in the background.
    fake.set_consume_per_poll(Some(1));
    let cmds = cfgi_stes(11);
    smmu.submit(&cmds).unwrap();
    smmu.sync().unwrap();
    let mut want = cmds.clone();
    want.push(Command::Sync(cmd::Sync::none()));
    assert_eq!(fake.commands(), want);
    // Many laps of the 4-entry queue.
    for _ in 0..5 {
        smmu.submit_sync(&cmds[..3]).unwrap();
    }
    assert_eq!(fake.commands().len(), 12 + 5 * 4);
    assert!(fake.violations().is_empty());
}

#[test]
fn a_batch_and_its_sync_are_published_with_one_write_of_cmdq_prod() {
    let (mem, fake) = fixture();
    let mut smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    fake.clear_commands();
    let prod_writes = || {
        fake.write_offsets()
            .iter()
            .filter(|&&o| o == CMDQ_PROD)
            .count()
    };
    let before = prod_writes();
    let cmds = cfgi_stes(3);
    smmu.submit_sync(&cmds).unwrap();
    assert_eq!(prod_writes() - before, 1);
    let mut want = cmds.clone();
    want.push(Command::Sync(cmd::Sync::none()));
    assert_eq!(fake.commands(), want);
    // Apart, they take one write each.
    smmu.submit(&cmds).unwrap();
    smmu.sync().unwrap();
    assert_eq!(prod_writes() - before, 3);
    assert!(fake.violations().is_empty());
}

#[test]
fn sync_times_out_on_a_hung_queue_then_recovers() {
    let (mem, fake) = fixture();
    let mut smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    fake.set_hang(true);
    let before = fake.clock_us();
    assert_eq!(smmu.sync().unwrap_err(), SmmuError::SyncTimeout);
    let waited = fake.clock_us() - before;
    assert!((2000..=2001).contains(&waited), "bounded wait, {waited} us");
    fake.set_hang(false);
    smmu.sync().unwrap();
}

#[test]
fn bad_command_is_reported_skipped_and_the_queue_goes_on() {
    let (mem, fake) = fixture();
    let mut smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    fake.clear_commands();
    let a = Command::CfgiSte {
        sid: StreamId(1),
        leaf: true,
    };
    let b = Command::CfgiSte {
        sid: StreamId(2),
        leaf: true,
    };
    // QEMU's SMMU has no IDR0.Hyp: TLBI_EL2_ALL is CERROR_ILL.
    smmu.submit(&[a, Command::TlbiEl2All, b]).unwrap();
    let err = smmu.sync().unwrap_err();
    let SmmuError::CommandRejected(fault) = err else {
        panic!("{err:?}");
    };
    assert_eq!(fault.cmd, Some(Command::TlbiEl2All));
    assert_eq!(fault.cerror, 1);
    // Reset used 4 entries (indices 0..4); the batch starts at 4.
    assert_eq!(fault.index, 5);
    assert!(err.to_string().contains("CERROR_ILL at index 5"), "{err}");
    let sync = Command::Sync(cmd::Sync::none());
    assert_eq!(fake.commands(), [a, sync, b, sync], "skipped as a CMD_SYNC");
    assert_eq!(fake.read32(GERROR), fake.read32(GERRORN), "acknowledged");
    smmu.submit_sync(&[a]).unwrap();
    assert_eq!(fake.commands().len(), 6);
}

#[test]
fn handle_gerror_without_sync_and_other_errors() {
    let (mem, fake) = fixture();
    let mut smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    assert_eq!(smmu.handle_gerror(), GerrorReport::default());
    smmu.submit(&[Command::TlbiEl2All]).unwrap();
    let r = smmu.handle_gerror();
    assert_eq!(r.active, 1);
    assert_eq!(r.cmdq_fault.unwrap().cmd, Some(Command::TlbiEl2All));
    // The fault is still reported by the next SYNC, once.
    assert!(matches!(smmu.sync(), Err(SmmuError::CommandRejected(_))));
    smmu.sync().unwrap();
    fake.raise_gerror(1 << 8); // SFM_ERR
    let r = smmu.handle_gerror();
    assert_eq!((r.active, r.cmdq_fault), (1 << 8, None));
    assert_eq!(fake.read32(GERROR), fake.read32(GERRORN));
}

#[test]
fn drain_events_is_bounded_and_notes_overflow() {
    let (mem, fake) = fixture();
    let o = SmmuOptions {
        evtq_log2_entries: 2,
        ..opts()
    };
    let mut smmu = Smmu::new(&fake, &*mem, o).unwrap();
    let ev = |sid| Event::BadSte {
        sid: StreamId(sid),
        ssid: None,
    };
    for sid in 0..3 {
        assert!(fake.inject_event(ev(sid).encode().unwrap()));
    }
    let mut seen = Vec::new();
    assert_eq!(smmu.drain_events(2, |e| seen.push(e)), 2);
    assert_eq!(smmu.drain_events(10, |e| seen.push(e)), 1);
    assert_eq!(smmu.drain_events(10, |e| seen.push(e)), 0);
    assert_eq!(seen, [ev(0), ev(1), ev(2)]);
    assert_eq!(fake.read32(EVTQ_CONS), 3);
    // Overflow a 4-entry queue: the fifth record is lost.
    for sid in 10..15 {
        let _ = fake.inject_event(ev(sid).encode().unwrap());
    }
    seen.clear();
    assert_eq!(smmu.event_overflows(), 0);
    assert_eq!(smmu.drain_events(100, |e| seen.push(e)), 4);
    assert_eq!(seen, [ev(10), ev(11), ev(12), ev(13)]);
    assert_eq!(smmu.event_overflows(), 1);
    assert_eq!(
        fake.read32(EVTQ_CONS),
        (1 << 31) | 7,
        "OVACKFLG acknowledged, wrapped"
    );
    // Acknowledged: new records are accepted and no new overflow is noted.
    assert!(fake.inject_event(ev(20).encode().unwrap()));
    assert_eq!(smmu.drain_events(100, |_| {}), 1);
    assert_eq!(smmu.event_overflows(), 1);
    assert!(fake.violations().is_empty());
}

#[test]
fn live_ste_change_breaks_before_make() {
    let (mem, fake) = fixture();
    let mut smmu = Smmu::new(&fake, &*mem, opts()).unwrap();
    let sid = StreamId(0x20);
    let old = s2_ste(1);
    smmu.write_ste(sid, &old).unwrap();
    fake.clear_commands();
    // VMID (word 2) and S2TTB (word 3) both change: the SMMU must never
    // fetch a mix, so the entry is made to abort first (§3.21.3).
    let mut new = s2_ste(2);
    new.set_s2ttb(PhysAddr(0x9000_0000));
    smmu.write_ste(sid, &new).unwrap();
    let seen: Vec<Ste> = fake
        .consumed()
        .iter()
        .filter(|c| matches!(c.cmd, Command::CfgiSte { .. }))
        .map(|c| c.ste.unwrap())
        .collect();
    // Break (word 0 abort), the other words, then word 0 live again; each
    // step visible to the SMMU (CFGI_STE + SYNC) before the next.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[..2].iter().all(|s| !s.is_live()), "{seen:?}");
    assert_eq!(seen[2], new);
    assert_eq!(fake.ste(sid), Some(new));
    let cmds = fake.commands();
    assert_eq!(
        cmds.iter()
            .filter(|c| matches!(c, Command::Sync(_)))
            .count(),
        3
    );
    // A one-word change (VMID only) is hitless: one CFGI_STE + SYNC.
    fake.clear_commands();
    let mut vmid3 = new;
    vmid3.set_s2vmid(Vmid(3));
    smmu.write_ste(sid, &vmid3).unwrap();
    assert_eq!(fake.consumed().len(), 2);
    assert_eq!(fake.consumed()[0].ste, Some(vmid3));
}
