//! Host tests of the vSMMU engine against the fake physical SMMU and fake
//! guest memory: what a guest's accesses make the physical side do.

use alloc::vec::Vec;

use super::*;
use crate::addr::{Asid, Iova, Ipa, PhysAddr, Ssid};
use crate::cmd::{Granule as TlbiGranule, Sync, TlbiRange, TlbiScope};
use crate::fake::{FakeGuestMemory, FakePhysicalSmmu, PhysicalOp, StreamState};
use crate::regs::offset as o;
use crate::ste::{Config, Eats, S1Dss, S1Fmt, Strw};

const RAM: u64 = 0x4000_0000;
const RAM_SIZE: usize = 0x10_0000;
const CMDQ: u64 = RAM;
const EVTQ: u64 = RAM + 0x2_0000;
const STRTAB: u64 = RAM + 0x3_0000;
const CDS: u64 = RAM + 0x4_0000;
const VMID: Vmid = Vmid(7);
/// The VM's devices: (virtual, physical) StreamIDs.
const DEVICES: [(u32, u32); 2] = [(0x8, 0x10), (0x10, 0x2010)];

type Engine = VsmmuEngine<FakePhysicalSmmu, FakeGuestMemory>;

fn s2() -> S2Config {
    crate::fake::vm_stage2(VMID)
}

fn policy() -> VsmmuPolicy {
    VsmmuPolicy {
        ril: true,
        ..VsmmuPolicy::default()
    }
}

fn engine(policy: VsmmuPolicy) -> Engine {
    let streams = DEVICES
        .iter()
        .map(|&(v, p)| (StreamId(v), StreamId(p)))
        .collect();
    let phys = FakePhysicalSmmu::new(
        s2(),
        StallModel::TerminateOnly,
        DEVICES.iter().map(|&(_, p)| StreamId(p)),
    );
    VsmmuEngine::new(
        policy,
        VMID,
        s2(),
        streams,
        FakeGuestMemory::new(Ipa(RAM), RAM_SIZE),
        phys,
    )
}

fn write(e: &mut Engine, offset: usize, value: u64) -> Vec<GuestIrq> {
    e.access(offset as u64, 4, true, value).1
}

fn write64(e: &mut Engine, offset: usize, value: u64) -> Vec<GuestIrq> {
    e.access(offset as u64, 8, true, value).1
}

fn read(e: &mut Engine, offset: usize) -> u64 {
    e.access(offset as u64, 4, false, 0).0
}

/// Linux's reset sequence: a linear stream table of 64 STEs, queues of
/// 2^`cmdq_log2` commands and 256 events, interrupts, then SMMUEN.
fn linux_enable(e: &mut Engine, cmdq_log2: u64) {
    write(e, o::CR0, 0);
    write(e, o::CR1, 0xD75);
    write(e, o::CR2, 0b110);
    write64(e, o::STRTAB_BASE, (1 << 62) | STRTAB);
    write(e, o::STRTAB_BASE_CFG, 6);
    write64(e, o::CMDQ_BASE, (1 << 62) | CMDQ | cmdq_log2);
    write64(e, o::EVENTQ_BASE, (1 << 62) | EVTQ | 8);
    write(e, o::CR0, 0b1100);
    write(e, o::IRQ_CTRL, 0b101);
    write(e, o::CR0, 0b1101);
}

/// The physical operations since the last call (all of them succeeded).
fn ops(e: &mut Engine) -> Vec<PhysicalOp> {
    let log = e.physical_mut().take_log();
    assert!(log.iter().all(|l| l.ok), "{log:?}");
    log.into_iter().map(|l| l.op).collect()
}

/// Writes `cmds` at CMDQ_PROD and moves it on in one write, as a driver
/// does; returns the interrupts that write raised.
fn push(e: &mut Engine, cmds: &[Command]) -> Vec<GuestIrq> {
    let (log2, base) = e.vsmmu().cmdq_geometry();
    let mut prod = e.vsmmu().read(o::CMDQ_PROD, 4) as u32;
    for c in cmds {
        let index = u64::from(prod & ((1 << log2) - 1));
        let [lo, hi] = c.encode();
        e.memory().write_u64(Ipa(base.0 + index * 16), lo);
        e.memory().write_u64(Ipa(base.0 + index * 16 + 8), hi);
        prod = (prod + 1) & ((2 << log2) - 1);
    }
    write(e, o::CMDQ_PROD, u64::from(prod))
}

fn write_ste(e: &Engine, vsid: u32, ste: &Ste) {
    for (i, w) in ste.0.iter().enumerate() {
        e.memory()
            .write_u64(Ipa(STRTAB + u64::from(vsid) * 64 + 8 * i as u64), *w);
    }
}

/// A stage 1 STE as Linux writes it.
fn guest_s1(ctx: u64) -> Ste {
    let mut ste = Ste::invalid();
    ste.set_v(true);
    ste.set_config(Config::S1Translate);
    ste.set_s1_context_ptr(Ipa(ctx));
    ste.set_s1fmt(S1Fmt::Linear);
    ste.set_s1cdmax(0);
    ste.set_s1dss(S1Dss::Ssid0);
    ste.set_s1cir(1);
    ste.set_s1cor(1);
    ste.set_s1csh(3);
    ste
}

fn sync() -> Command {
    Command::Sync(Sync::none())
}

fn cfgi_ste(vsid: u32) -> Command {
    Command::CfgiSte {
        sid: StreamId(vsid),
        leaf: true,
    }
}

fn cons(e: &Engine) -> u32 {
    e.vsmmu().read(o::CMDQ_CONS, 4) as u32
}

/// The `index`-th record of the guest's event queue.
fn guest_event(e: &Engine, index: u64) -> Event {
    let at = |i: u64| e.memory().read_u64(Ipa(EVTQ + index * 32 + 8 * i));
    Event::decode([at(0), at(1), at(2), at(3)])
}

#[test]
fn cfgi_ste_of_a_stage1_ste_installs_it_nested() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    // SMMUEN with a table of zeroes: every STE is invalid (V == 0), so
    // every stream's transactions abort with C_BAD_STE.
    assert_eq!(
        ops(&mut e),
        [
            PhysicalOp::Install {
                sid: StreamId(0x10),
                state: StreamState::Invalid
            },
            PhysicalOp::Install {
                sid: StreamId(0x2010),
                state: StreamState::Invalid
            }
        ]
    );
    let mut ste = guest_s1(CDS);
    // What is the hypervisor's, set to hostile values: ignored.
    ste.set_s2vmid(Vmid(0xBAD));
    ste.set_strw(Strw::El2);
    ste.set_eats(Eats::Full);
    ste.0[3] = u64::MAX;
    write_ste(&e, 0x8, &ste);
    push(&mut e, &[cfgi_ste(0x8), sync()]);
    let s1 = S1Config {
        ctx_ptr: Ipa(CDS),
        s1fmt: S1Fmt::Linear,
        s1cdmax: 0,
        s1dss: S1Dss::Terminate,
        s1cir: 1,
        s1cor: 1,
        s1csh: 3,
        s1stalld: false,
        eats: Eats::Abort,
    };
    assert_eq!(
        ops(&mut e),
        [
            PhysicalOp::Install {
                sid: StreamId(0x10),
                state: StreamState::Nested(s1)
            },
            PhysicalOp::Sync
        ]
    );
    let phys = e.physical().ste(StreamId(0x10)).unwrap();
    assert_eq!(phys, Ste::nested(&s2(), &s1));
    assert_eq!(phys.s2vmid(), VMID);
    assert_eq!(cons(&e), 2, "CONS past the SYNC");
    assert_eq!(
        e.physical().state(StreamId(0x2010)),
        Some(StreamState::Invalid),
        "the other stream was not named"
    );
    let stats = e.stats();
    assert_eq!(stats.guest_commands, 2);
    assert_eq!(stats.physical_commands, 4 + 2 + 1, "3 installs, one SYNC");
}

#[test]
fn illegal_command_sets_cerror_ill_and_submits_nothing() {
    let mut e = engine(VsmmuPolicy {
        ril: false,
        ..policy()
    });
    linux_enable(&mut e, 8);
    ops(&mut e);
    let ranged = Command::TlbiNhVa {
        vmid: Vmid(0),
        asid: Asid(1),
        addr: Iova(0x1000),
        scope: TlbiScope {
            leaf: true,
            range: Some(TlbiRange {
                tg: TlbiGranule::Size4K,
                ttl: 3,
                scale: 0,
                num: 1,
            }),
        },
    };
    let illegal = [
        Command::TlbiS12Vmall { vmid: VMID },
        Command::TlbiEl2All,
        // Range invalidation on a vSMMU without RIL.
        ranged,
        // ATS is not advertised.
        Command::AtcInv {
            sid: StreamId(0x8),
            ssid: None,
            global: false,
            addr: Iova(0),
            size: 0,
        },
    ];
    for (i, bad) in illegal.into_iter().enumerate() {
        let at = cons(&e) & 0xff;
        let irqs = push(&mut e, &[bad, Command::TlbiNhAll { vmid: Vmid(0) }, sync()]);
        assert_eq!(irqs, [GuestIrq::GlobalError], "{bad}");
        assert_eq!(cons(&e), (1 << 24) | at, "{bad}: CONS at it, ERR = ILL");
        let active = e.vsmmu().read(o::GERROR, 4) ^ e.vsmmu().read(o::GERRORN, 4);
        assert_eq!(active, 1, "GERROR.CMDQ_ERR active");
        assert!(ops(&mut e).is_empty(), "{bad} reached the physical SMMU");
        // Stuck until acknowledged, even when polled.
        read(&mut e, o::CMDQ_CONS);
        assert!(ops(&mut e).is_empty());
        // Linux replaces the command with a CMD_SYNC and acknowledges.
        let [lo, hi] = sync().encode();
        e.memory().write_u64(Ipa(CMDQ + u64::from(at) * 16), lo);
        e.memory().write_u64(Ipa(CMDQ + u64::from(at) * 16 + 8), hi);
        let gerror = e.vsmmu().read(o::GERROR, 4);
        write(&mut e, o::GERRORN, gerror);
        assert_eq!(
            ops(&mut e),
            [
                PhysicalOp::Sync,
                PhysicalOp::Submit(Command::TlbiNhAll { vmid: VMID }),
                PhysicalOp::Sync
            ],
            "round {i}"
        );
        assert_eq!(cons(&e) & 0xf_ffff, at + 3);
    }
}

#[test]
fn guest_tlb_invalidations_get_the_vms_vmid_and_keep_their_range() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    ops(&mut e);
    let scope = TlbiScope {
        leaf: true,
        range: Some(TlbiRange {
            tg: TlbiGranule::Size4K,
            ttl: 3,
            scale: 2,
            num: 9,
        }),
    };
    let va = Command::TlbiNhVa {
        vmid: Vmid(3),
        asid: Asid(5),
        addr: Iova(0xffff_8000_1234_5000),
        scope,
    };
    push(
        &mut e,
        &[
            va,
            Command::TlbiNsnhAll,
            Command::CfgiCd {
                sid: StreamId(0x10),
                ssid: Ssid(3),
                leaf: true,
            },
            // No device of the VM at 0x2010 (that is a physical StreamID).
            Command::CfgiCdAll {
                sid: StreamId(0x2010),
            },
            sync(),
        ],
    );
    let forwarded = Command::TlbiNhVa {
        vmid: VMID,
        asid: Asid(5),
        addr: Iova(0xffff_8000_1234_5000),
        scope,
    };
    assert_eq!(
        ops(&mut e),
        [
            PhysicalOp::Submit(forwarded),
            PhysicalOp::Submit(Command::TlbiNhAll { vmid: VMID }),
            PhysicalOp::Submit(Command::CfgiCd {
                sid: StreamId(0x2010),
                ssid: Ssid(3),
                leaf: true
            }),
            PhysicalOp::Sync
        ]
    );
    // Bit for bit the guest's command but for the VMID (bits [47:32]).
    let (g, p) = (va.encode(), forwarded.encode());
    assert_eq!(
        (g[0] & !(0xffff << 32), g[1]),
        (p[0] & !(0xffff << 32), p[1])
    );
    assert_eq!(cons(&e), 5);
}

#[test]
fn budget_bounds_the_work_of_each_access() {
    let mut e = engine(VsmmuPolicy {
        cmdqs: 9,
        ..policy()
    });
    linux_enable(&mut e, 9);
    ops(&mut e);
    let asid = |i: u16| Command::TlbiNhAsid {
        vmid: Vmid(0),
        asid: Asid(i),
    };
    let flood: Vec<Command> = (0..300).map(asid).collect();
    push(&mut e, &flood);
    let per_access = COMMANDS_PER_ACCESS;
    assert_eq!(cons(&e), per_access as u32);
    assert_eq!(ops(&mut e).len(), per_access);
    // Other registers do not run the queue; a poll of CMDQ_CONS does.
    read(&mut e, o::CMDQ_PROD);
    assert!(ops(&mut e).is_empty());
    assert_eq!(read(&mut e, o::CMDQ_CONS), 300);
    assert_eq!(
        ops(&mut e),
        flood[per_access..]
            .iter()
            .map(|&c| {
                let Command::TlbiNhAsid { asid, .. } = c else {
                    unreachable!()
                };
                PhysicalOp::Submit(Command::TlbiNhAsid { vmid: VMID, asid })
            })
            .collect::<Vec<_>>()
    );
    // CMD_SYNCs count as commands: what one write of CMDQ_PROD publishes
    // up to a whole queue completes in that trap, each SYNC behind its own
    // physical one.
    push(&mut e, &[sync(); 6]);
    assert_eq!(ops(&mut e), [PhysicalOp::Sync; 6]);
    assert_eq!(cons(&e), 306);
    let syncs = vec![sync(); 300];
    push(&mut e, &syncs);
    assert_eq!(ops(&mut e).len(), per_access);
    assert_eq!(cons(&e), (306 + per_access) as u32);
    assert_eq!(read(&mut e, o::CMDQ_CONS), 606);
    assert_eq!(ops(&mut e).len(), 300 - per_access);
    assert_eq!(e.stats().guest_commands, 606);
}

#[test]
fn refused_ste_aborts_the_stream_and_its_c_bad_ste_is_the_guests() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    // The streams abort (Config abort, no event) before one is refused.
    write_ste(&e, 0x8, &Ste::abort());
    write_ste(&e, 0x10, &Ste::abort());
    push(&mut e, &[cfgi_ste(0x8), cfgi_ste(0x10), sync()]);
    ops(&mut e);
    let mut ste = guest_s1(CDS);
    ste.set_config(Config::S2Translate);
    write_ste(&e, 0x8, &ste);
    push(&mut e, &[cfgi_ste(0x8), sync()]);
    assert_eq!(
        ops(&mut e),
        [
            PhysicalOp::Install {
                sid: StreamId(0x10),
                state: StreamState::Invalid
            },
            PhysicalOp::Sync
        ]
    );
    assert_eq!(e.stats().refusals, 1);
    // The device's DMA: C_BAD_STE with the physical StreamID.
    let bad = e
        .physical()
        .transaction(StreamId(0x10), Some(Ssid(2)), 0x1000)
        .unwrap();
    assert_eq!(
        bad,
        Event::BadSte {
            sid: StreamId(0x10),
            ssid: Some(Ssid(2))
        }
    );
    assert!(e.owns_event(&bad));
    assert_eq!(e.inject_fault(&bad), Some(GuestIrq::Event));
    assert_eq!(
        guest_event(&e, 0),
        Event::BadSte {
            sid: StreamId(0x8),
            ssid: Some(Ssid(2))
        },
        "with the guest's StreamID"
    );
    // Refused again for the same reason: nothing to do physically.
    push(&mut e, &[cfgi_ste(0x8), sync()]);
    assert_eq!(ops(&mut e), [PhysicalOp::Sync]);
    // Not the guest's: another stream's C_BAD_STE, a stage 2 fault, a
    // StreamID of no device of the VM.
    let other = Event::BadSte {
        sid: StreamId(0x2010),
        ssid: None,
    };
    assert!(!e.owns_event(&other));
    let s2_fault = FakePhysicalSmmu::new(s2(), StallModel::TerminateOnly, [StreamId(0x10)])
        .transaction(StreamId(0x10), None, 0x1000)
        .unwrap();
    assert!(matches!(s2_fault, Event::Fault { info, .. } if info.s2));
    assert!(!e.owns_event(&s2_fault));
    assert!(!e.owns_event(&Event::BadSte {
        sid: StreamId(0x8),
        ssid: None
    }));
    // A valid STE again: nested, and C_BAD_STE is no longer the guest's.
    write_ste(&e, 0x8, &guest_s1(CDS));
    push(&mut e, &[cfgi_ste(0x8), sync()]);
    assert!(matches!(
        e.physical().state(StreamId(0x10)),
        Some(StreamState::Nested(_))
    ));
    assert!(!e.owns_event(&bad));
    // A stage 1 fault of the nested stream is the guest's.
    let fault = e
        .physical()
        .transaction(StreamId(0x10), None, 0x5000)
        .unwrap();
    assert!(e.owns_event(&fault));
    e.inject_fault(&fault);
    let Event::Fault { info, .. } = guest_event(&e, 1) else {
        panic!("{:?}", guest_event(&e, 1));
    };
    assert_eq!(
        (info.sid, info.input_addr, info.s2),
        (StreamId(0x8), Iova(0x5000), false)
    );
}

#[test]
fn unreadable_stream_table_is_reported_as_f_ste_fetch() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    // A 2-level table whose level 2 array is outside the VM.
    write(&mut e, o::CR0, 0b1100);
    write(&mut e, o::STRTAB_BASE_CFG, (1 << 16) | (6 << 6) | 12);
    let outside = 0x10_0000_0000u64;
    e.memory().write_u64(Ipa(STRTAB), outside | 7);
    write(&mut e, o::CR0, 0b1101);
    assert_eq!(
        e.physical().state(StreamId(0x10)),
        Some(StreamState::Invalid)
    );
    let bad = e.physical().transaction(StreamId(0x10), None, 0).unwrap();
    assert!(e.owns_event(&bad));
    e.inject_fault(&bad);
    assert_eq!(
        guest_event(&e, 0),
        Event::SteFetch {
            sid: StreamId(0x8),
            ssid: None,
            reason: 0,
            gpcf: false,
            fetch_addr: PhysAddr(outside + 8 * 64),
        }
    );
}

#[test]
fn gbpa_decides_while_the_vsmmu_is_off() {
    let mut e = engine(policy());
    assert_eq!(
        e.physical().state(StreamId(0x10)),
        Some(StreamState::Stage2)
    );
    write(&mut e, o::GBPA, (1 << 31) | (1 << 20));
    for (v, p) in DEVICES {
        assert_eq!(
            e.physical().state(StreamId(p)),
            Some(StreamState::Abort),
            "{v:#x}"
        );
    }
    write(&mut e, o::GBPA, 1 << 31);
    assert_eq!(
        e.physical().state(StreamId(0x2010)),
        Some(StreamState::Stage2)
    );
    // Enabled with bypass STEs: stage 2 too.
    let mut bypass = Ste::invalid();
    bypass.set_v(true);
    bypass.set_config(Config::Bypass);
    write_ste(&e, 0x8, &bypass);
    linux_enable(&mut e, 8);
    assert_eq!(
        e.physical().state(StreamId(0x10)),
        Some(StreamState::Stage2)
    );
    assert_eq!(
        e.physical().state(StreamId(0x2010)),
        Some(StreamState::Invalid)
    );
}

/// Streams the guest configured no STE for are reported as the SMMU the
/// vSMMU emulates reports them: a StreamID beyond the guest's table as
/// C_BAD_STREAMID, an STE with V == 0 as C_BAD_STE, each with the guest's
/// StreamID; neither is a refusal. An STE with Config abort aborts
/// without an event.
#[test]
fn streams_without_an_ste_report_c_bad_streamid_and_c_bad_ste() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    // A table of 16 STEs: vsid 0x10 is beyond it, vsid 0x8's STE is zero.
    write(&mut e, o::CR0, 0b1100);
    write(&mut e, o::STRTAB_BASE_CFG, 4);
    write(&mut e, o::CR0, 0b1101);
    for (_, p) in DEVICES {
        assert_eq!(e.physical().state(StreamId(p)), Some(StreamState::Invalid));
    }
    let beyond = e
        .physical()
        .transaction(StreamId(0x2010), None, 0x1000)
        .unwrap();
    assert!(e.owns_event(&beyond));
    assert_eq!(e.inject_fault(&beyond), Some(GuestIrq::Event));
    assert_eq!(
        guest_event(&e, 0),
        Event::BadStreamId {
            sid: StreamId(0x10),
            ssid: None
        }
    );
    let invalid = e
        .physical()
        .transaction(StreamId(0x10), Some(Ssid(1)), 0x1000)
        .unwrap();
    assert!(e.owns_event(&invalid));
    e.inject_fault(&invalid);
    assert_eq!(
        guest_event(&e, 1),
        Event::BadSte {
            sid: StreamId(0x8),
            ssid: Some(Ssid(1))
        }
    );
    assert_eq!(e.stats().refusals, 0, "the guest's own configuration");
    // Config abort: the stream aborts, and the SMMU records nothing.
    write_ste(&e, 0x8, &Ste::abort());
    push(&mut e, &[cfgi_ste(0x8), sync()]);
    assert_eq!(e.physical().state(StreamId(0x10)), Some(StreamState::Abort));
}

#[test]
fn failed_physical_operations_are_counted_and_retried() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    ops(&mut e);
    write_ste(&e, 0x8, &guest_s1(CDS));
    // The install fails: the stream keeps what it had.
    e.physical_mut().fail_next(1);
    push(&mut e, &[cfgi_ste(0x8), sync()]);
    assert_eq!(
        e.physical().state(StreamId(0x10)),
        Some(StreamState::Invalid)
    );
    assert_eq!(e.stats().physical_errors, 1);
    assert_eq!(cons(&e), 2);
    // The next CFGI_STE installs it.
    push(&mut e, &[cfgi_ste(0x8), sync()]);
    assert!(matches!(
        e.physical().state(StreamId(0x10)),
        Some(StreamState::Nested(_))
    ));
    // A failed physical CMD_SYNC still completes the guest's.
    e.physical_mut().take_log();
    e.physical_mut().fail_next(1);
    push(&mut e, &[sync()]);
    assert_eq!(cons(&e), 5);
    assert_eq!(e.stats().physical_errors, 2);
}

#[test]
fn log_lines_a_guest_causes_are_bounded() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    let mut illegal = guest_s1(CDS);
    illegal.set_config(Config::Nested);
    const N: u64 = 40;
    for _ in 0..N {
        write_ste(&e, 0x8, &illegal);
        push(&mut e, &[cfgi_ste(0x8)]);
        write_ste(&e, 0x8, &guest_s1(CDS));
        push(&mut e, &[cfgi_ste(0x8)]);
    }
    assert_eq!(e.stats().refusals, N);
    // N refusal and N nested lines, plus the two invalid STEs at enable.
    let lines = 2 * N + 2;
    assert_eq!(
        e.stats().log_lines_dropped,
        lines - 2 * u64::from(LOG_LINES)
    );
}

#[test]
fn event_queue_outside_the_vm_raises_the_global_error() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    write(&mut e, o::CR0, 0b1001);
    write64(&mut e, o::EVENTQ_BASE, 0x1000 | 3);
    write(&mut e, o::CR0, 0b1101);
    let mut ste = guest_s1(CDS);
    ste.set_s1stalld(true);
    write_ste(&e, 0x8, &ste);
    push(&mut e, &[cfgi_ste(0x8)]);
    let bad = e.physical().transaction(StreamId(0x10), None, 0).unwrap();
    assert!(e.owns_event(&bad));
    assert_eq!(e.inject_fault(&bad), Some(GuestIrq::GlobalError));
    assert_eq!(e.vsmmu().read(o::GERROR, 4) & (1 << 2), 1 << 2);
}

/// A CMD_SYNC as Linux's driver issues it with MSI polling
/// (ARM_SMMU_OPT_MSIPOLL): completion signalled by an MSI of data 0 into
/// the command's own slot, which the driver polls instead of CMDQ_CONS.
fn msi_sync(at: u64) -> Command {
    msi_sync_with(at, 0)
}

/// A CMD_SYNC whose completion MSI writes `data` at `at`.
fn msi_sync_with(at: u64, data: u32) -> Command {
    Command::Sync(Sync {
        cs: crate::cmd::CompletionSignal::Irq,
        msh: 3,
        msi_attr: 0xF,
        msi_data: data,
        msi_addr: PhysAddr(at),
    })
}

#[test]
fn a_cmd_sync_msi_lands_where_linux_polls_it() {
    let mut e = engine(policy());
    assert_ne!(read(&mut e, o::IDR0) & (1 << 13), 0, "IDR0.MSI");
    linux_enable(&mut e, 8);
    ops(&mut e);
    // The SYNC is in slot 1 of the queue; Linux polls its first word.
    let slot = CMDQ + 16;
    let tlbi = Command::TlbiNhAsid {
        vmid: Vmid(0),
        asid: Asid(5),
    };
    assert!(push(&mut e, &[tlbi, msi_sync(slot)]).is_empty());
    assert_eq!(
        e.memory().read_u64(Ipa(slot)) as u32,
        0,
        "MSIData 0 written"
    );
    assert_eq!(cons(&e), 2);
    assert_eq!(e.stats().msis, 1);
    assert_eq!(
        ops(&mut e),
        [
            PhysicalOp::Submit(Command::TlbiNhAsid {
                vmid: VMID,
                asid: Asid(5)
            }),
            PhysicalOp::Sync
        ],
        "written only once the physical CMD_SYNC completed"
    );
    // The MSI is 32 bits of MSIData: the word after it is untouched.
    let word = RAM + 0x9000;
    e.memory().write_u64(Ipa(word), u64::MAX);
    assert!(push(&mut e, &[msi_sync_with(word, 0x1234_5678)]).is_empty());
    assert_eq!(e.memory().read_u64(Ipa(word)), 0xFFFF_FFFF_1234_5678);
    assert_eq!(e.stats().msis, 2);
    ops(&mut e);
    // An MSI address outside the VM's RAM aborts: MSI_CMDQ_ABT_ERR and
    // the global-error interrupt; the SYNC still completes.
    let irqs = push(&mut e, &[msi_sync(0x1000)]);
    assert_eq!(irqs, [GuestIrq::GlobalError]);
    assert_eq!(read(&mut e, o::GERROR) & (1 << 4), 1 << 4);
    assert_eq!(cons(&e), 4);
    assert_eq!(e.stats().msis, 2);
}

#[test]
fn without_msis_a_sig_irq_sync_writes_nothing() {
    let mut e = engine(VsmmuPolicy {
        msi: false,
        ..policy()
    });
    assert_eq!(read(&mut e, o::IDR0) & (1 << 13), 0);
    linux_enable(&mut e, 8);
    assert!(push(&mut e, &[msi_sync(CMDQ)]).is_empty());
    assert_eq!(e.memory().read_u64(Ipa(CMDQ)), msi_sync(CMDQ).encode()[0]);
    assert_eq!((cons(&e), e.stats().msis), (1, 0));
    write64(&mut e, o::EVENTQ_IRQ_CFG0, RAM + 0x8000);
    assert_eq!(
        e.access(o::EVENTQ_IRQ_CFG0 as u64, 8, false, 0).0,
        0,
        "RAZ/WI"
    );
}

#[test]
fn event_and_global_error_msis_replace_the_wired_interrupts() {
    let mut e = engine(policy());
    linux_enable(&mut e, 8);
    let doorbell = RAM + 0x8000;
    // Configured while the interrupts are off, as the architecture asks;
    // ignored while they are on.
    write64(&mut e, o::EVENTQ_IRQ_CFG0, doorbell);
    assert_eq!(e.access(o::EVENTQ_IRQ_CFG0 as u64, 8, false, 0).0, 0);
    write(&mut e, o::IRQ_CTRL, 0);
    write64(&mut e, o::EVENTQ_IRQ_CFG0, doorbell | 3);
    write(&mut e, o::EVENTQ_IRQ_CFG1, 0x1234_5678);
    write(&mut e, o::EVENTQ_IRQ_CFG2, 0xFF);
    write64(&mut e, o::GERROR_IRQ_CFG0, 0x1000);
    write(&mut e, o::GERROR_IRQ_CFG1, 7);
    assert_eq!(
        e.access(o::EVENTQ_IRQ_CFG0 as u64, 8, false, 0).0,
        doorbell,
        "ADDR[51:2]"
    );
    assert_eq!(read(&mut e, o::EVENTQ_IRQ_CFG2), 0x3F, "MemAttr, SH");
    write(&mut e, o::IRQ_CTRL, 0b101);
    let mut ste = guest_s1(CDS);
    ste.set_s1stalld(true);
    write_ste(&e, 0x8, &ste);
    push(&mut e, &[cfgi_ste(0x8)]);
    let bad = e.physical().transaction(StreamId(0x10), None, 0).unwrap();
    assert_eq!(e.inject_fault(&bad), None, "an MSI, not the wired line");
    assert_eq!(e.memory().read_u64(Ipa(doorbell)) as u32, 0x1234_5678);
    assert_eq!(e.stats().msis, 1);
    // The event queue's MSI aimed outside RAM: MSI_EVENTQ_ABT_ERR, whose
    // global-error MSI aborts too: MSI_GERROR_ABT_ERR, and nothing more.
    write(&mut e, o::IRQ_CTRL, 0);
    write64(&mut e, o::EVENTQ_IRQ_CFG0, 0x2000);
    write(&mut e, o::IRQ_CTRL, 0b101);
    assert_eq!(e.inject_fault(&bad), None);
    assert_eq!(read(&mut e, o::GERROR), (1 << 5) | (1 << 7));
    assert_eq!(e.stats().msis, 1);
    // With the global-error MSI off, the wired global-error line.
    write(&mut e, o::GERRORN, (1 << 5) | (1 << 7));
    write(&mut e, o::IRQ_CTRL, 0);
    write64(&mut e, o::GERROR_IRQ_CFG0, 0);
    write(&mut e, o::IRQ_CTRL, 0b101);
    assert_eq!(e.inject_fault(&bad), Some(GuestIrq::GlobalError));
    assert_eq!(read(&mut e, o::GERROR) ^ read(&mut e, o::GERRORN), 1 << 5);
}
