//! Host tests of the vSMMU register file, command queue and event queue.

use alloc::vec::Vec;

use proptest::prelude::*;

use super::regs::{CmdqWork, CERROR_ABT, CERROR_ILL};
use super::*;
use crate::addr::{Asid, Ipa, StreamId, Vmid};
use crate::cmd::{Command, Sync};
use crate::event::Event;
use crate::fake::FakeGuestMemory;
use crate::regs::{offset as o, Features, StLevel, StallModel as IdrStall, TtEndian as IdrEndian};

const RAM: u64 = 0x4000_0000;
const CMDQ: u64 = RAM + 0x1_0000;
const EVTQ: u64 = RAM + 0x2_0000;
const STRTAB: u64 = RAM + 0x3_0000;
const VMID: Vmid = Vmid(7);

/// Identity + 0x100 StreamID map for virtual StreamIDs below 16.
struct Map;
impl StreamMap for Map {
    fn physical(&self, vsid: StreamId) -> Option<StreamId> {
        (vsid.0 < 16).then_some(StreamId(vsid.0 + 0x100))
    }
}

fn mem() -> FakeGuestMemory {
    FakeGuestMemory::new(Ipa(RAM), 0x10_0000)
}

fn policy() -> VsmmuPolicy {
    VsmmuPolicy {
        ril: true,
        gran16k: true,
        oas_bits: 44,
        ..VsmmuPolicy::default()
    }
}

fn features(v: &VSmmu) -> Features {
    let i = v.idrs();
    Features::decode(
        v.read(o::IDR0, 4) as u32,
        v.read(o::IDR1, 4) as u32,
        i[3],
        v.read(o::IDR5, 4) as u32,
    )
}

/// Linux arm-smmu-v3's probe and reset sequence (arm_smmu_device_hw_probe,
/// arm_smmu_device_reset), up to CMDQEN; returns the vSMMU.
fn linux_init(m: &FakeGuestMemory) -> VSmmu {
    let mut v = VSmmu::new(policy());
    let f = features(&v);
    assert!(f.s1p && !f.s2p);
    // Disable, then CR1/CR2, stream table, queues.
    assert!(v.write(o::CR0, 4, 0).is_empty());
    assert_eq!(v.read(o::CR0ACK, 4), 0);
    v.write(o::CR1, 4, 0xD75); // WB, ISH for queues and tables
    v.write(o::CR2, 4, 0b110); // PTM | RECINVSID
    let a = v.write(o::STRTAB_BASE, 8, (1 << 62) | STRTAB);
    assert_eq!(a, [VsmmuAction::StreamTableChanged]);
    v.write(o::STRTAB_BASE_CFG, 4, (1 << 16) | (8 << 6) | 16);
    v.write(o::CMDQ_BASE, 8, (1 << 62) | CMDQ | u64::from(f.cmdqs));
    v.write(o::CMDQ_PROD, 4, 0);
    v.write(o::CMDQ_CONS, 4, 0);
    v.write(o::CR0, 4, 1 << 3);
    assert_eq!(v.read(o::CR0ACK, 4), 1 << 3);
    let _ = m;
    v
}

fn push_cmd(v: &mut VSmmu, m: &FakeGuestMemory, cmd: &Command) -> Vec<VsmmuAction> {
    let (log2, base) = v.cmdq_geometry();
    let prod = v.read(o::CMDQ_PROD, 4) as u32;
    let idx = u64::from(prod & ((1 << log2) - 1));
    let w = cmd.encode();
    m.write_u64(Ipa(base.0 + idx * 16), w[0]);
    m.write_u64(Ipa(base.0 + idx * 16 + 8), w[1]);
    let next = (prod + 1) & ((2 << log2) - 1);
    v.write(o::CMDQ_PROD, 4, u64::from(next))
}

fn push_raw(v: &mut VSmmu, m: &FakeGuestMemory, w: [u64; 2]) {
    let (log2, base) = v.cmdq_geometry();
    let prod = v.read(o::CMDQ_PROD, 4) as u32;
    let idx = u64::from(prod & ((1 << log2) - 1));
    m.write_u64(Ipa(base.0 + idx * 16), w[0]);
    m.write_u64(Ipa(base.0 + idx * 16 + 8), w[1]);
    v.write(o::CMDQ_PROD, 4, u64::from((prod + 1) & ((2 << log2) - 1)));
}

fn cons(v: &VSmmu) -> u32 {
    v.read(o::CMDQ_CONS, 4) as u32
}

#[test]
fn reset_values() {
    let v = VSmmu::new(policy());
    for off in [
        o::CR0,
        o::CR0ACK,
        o::CR1,
        o::CR2,
        o::IRQ_CTRL,
        o::IRQ_CTRLACK,
        o::GERROR,
        o::GERRORN,
    ] {
        assert_eq!(v.read(off, 4), 0, "offset {off:#x}");
    }
    assert_eq!(v.read(o::GBPA, 4), 0x1000);
    assert_eq!(v.read(o::CMDQ_BASE, 8), 0);
    assert_eq!(v.read(o::EVTQ_PROD, 4), 0);
    assert_eq!(v.read(o::IDR2, 4), 0);
    assert_eq!(v.read(o::IDR4, 4), 0);
    assert_eq!(v.read(o::AIDR, 4), 2, "RIL advertises SMMUv3.2");
    assert!(!v.smmu_enabled());
    assert!(!v.gbpa_abort());
}

#[test]
fn idrs_advertise_exactly_the_policy() {
    let p = policy();
    let f = features(&VSmmu::new(p));
    assert!(f.s1p && !f.s2p && !f.hyp && !f.ats && !f.pri && !f.sev && !f.btm);
    assert_eq!(f.msi, p.msi);
    let wired = VsmmuPolicy { msi: false, ..p };
    assert!(!features(&VSmmu::new(wired)).msi);
    assert!(f.ttf.aarch64());
    assert_eq!(f.st_level, StLevel::TwoLevel);
    assert_eq!(f.tt_endian, IdrEndian::Little);
    assert_eq!(f.stall_model, IdrStall::TerminateOnly);
    assert!(!f.can_stall());
    assert_eq!(f.asid16, p.asid16);
    assert_eq!(f.cd2l, p.cd2l);
    assert_eq!(f.cohacc, p.cohacc);
    assert_eq!(f.ssid_size, p.ssid_bits);
    assert_eq!(f.sid_size, 16);
    assert_eq!(f.cmdqs, p.cmdqs);
    assert_eq!(f.evtqs, p.evtqs);
    assert_eq!(f.priqs, 0);
    assert_eq!(f.ril, p.ril);
    assert_eq!(
        (f.gran4k, f.gran16k, f.gran64k),
        (p.gran4k, p.gran16k, p.gran64k)
    );
    assert_eq!(f.oas_bits, 44);
    assert_eq!(f.httu, 0);
    assert!(!f.tables_preset && !f.queues_preset && !f.rel);
}

#[test]
fn policy_from_physical_and_clamping() {
    let phys = Features::decode(
        crate::fake::QEMU_IDR0,
        crate::fake::QEMU_IDR1,
        crate::fake::QEMU_IDR3,
        crate::fake::QEMU_IDR5,
    );
    let p = VsmmuPolicy::from_physical(&phys, 41, 20);
    assert_eq!(p.oas_bits, 40);
    assert_eq!(p.ssid_bits, phys.ssid_size.min(20));
    assert_eq!(p.ril, phys.ril);
    let wild = VsmmuPolicy {
        cmdqs: 31,
        evtqs: 25,
        ssid_bits: 31,
        oas_bits: 7,
        ..p
    };
    let f = features(&VSmmu::new(wild));
    assert_eq!(
        (f.cmdqs, f.evtqs, f.ssid_size, f.oas_bits),
        (19, 19, 20, 32)
    );
}

#[test]
fn cr0_ack_and_irq_ctrl_ack() {
    let mut v = VSmmu::new(policy());
    let a = v.write(o::CR0, 4, 0xFFFF_FFFF);
    assert_eq!(v.read(o::CR0, 4), 0b1101, "PRIQEN, ATSCHK, VMW are RES0");
    assert_eq!(v.read(o::CR0ACK, 4), 0b1101);
    assert!(a.contains(&VsmmuAction::StreamTableChanged));
    assert!(v.write(o::CR0ACK, 4, 0).is_empty());
    assert_eq!(v.read(o::CR0ACK, 4), 0b1101, "CR0ACK is read-only");
    v.write(o::IRQ_CTRL, 4, 0xFF);
    assert_eq!(v.read(o::IRQ_CTRLACK, 4), 0b101, "no PRI interrupt");
    // CR1 is read-only while anything is enabled.
    v.write(o::CR1, 4, 0xFFF);
    assert_eq!(v.read(o::CR1, 4), 0);
    let a = v.write(o::CR0, 4, 0);
    assert_eq!(a, [VsmmuAction::StreamTableChanged]);
    v.write(o::CR1, 4, 0xFFFF);
    assert_eq!(v.read(o::CR1, 4), 0xFFF);
}

#[test]
fn gbpa_update_self_clears() {
    let mut v = VSmmu::new(policy());
    // Without Update the write is ignored.
    assert!(v.write(o::GBPA, 4, 1 << 20).is_empty());
    assert!(!v.gbpa_abort());
    let a = v.write(o::GBPA, 4, (1 << 31) | (1 << 20) | 0x1000);
    assert_eq!(a, [VsmmuAction::StreamTableChanged]);
    assert!(v.gbpa_abort());
    assert_eq!(v.read(o::GBPA, 4), (1 << 20) | 0x1000, "Update reads 0");
    // With SMMUEN = 1 GBPA does not affect streams: no reinstall.
    v.write(o::CR0, 4, 1);
    assert!(v.write(o::GBPA, 4, 1 << 31).is_empty());
    assert!(!v.gbpa_abort());
}

#[test]
fn queue_base_capping_and_enable_lock() {
    let mut v = VSmmu::new(policy());
    v.write(o::CMDQ_BASE, 8, (0xFFu64 << 56) | CMDQ | 0x1F);
    assert_eq!(
        v.read(o::CMDQ_BASE, 8),
        (1 << 62) | CMDQ | 8,
        "LOG2SIZE capped, RES0 masked"
    );
    assert_eq!(v.cmdq_geometry(), (8, Ipa(CMDQ)));
    // Misaligned base: aligned down to the queue size (256 * 16 bytes).
    v.write(o::CMDQ_BASE, 8, (CMDQ + 0x120) | 8);
    assert_eq!(v.cmdq_geometry(), (8, Ipa(CMDQ)));
    // 32-bit halves.
    v.write(o::CMDQ_BASE, 4, (CMDQ as u32 as u64) | 4);
    v.write(o::CMDQ_BASE + 4, 4, 0x1);
    assert_eq!(v.cmdq_geometry(), (4, Ipa((1 << 32) | CMDQ)));
    assert_eq!(v.read(o::CMDQ_BASE + 4, 4), 1);
    v.write(o::CMDQ_BASE, 8, CMDQ | 5);
    v.write(o::CR0, 4, 1 << 3);
    v.write(o::CMDQ_BASE, 8, EVTQ | 6);
    v.write(o::CMDQ_CONS, 4, 3);
    assert_eq!(v.cmdq_geometry(), (5, Ipa(CMDQ)), "ignored while CMDQEN");
    assert_eq!(cons(&v), 0);
    // Event queue and stream table likewise.
    v.write(o::EVTQ_BASE, 8, EVTQ | 30);
    assert_eq!(v.evtq_geometry(), (8, Ipa(EVTQ)));
    v.write(o::CR0, 4, (1 << 3) | (1 << 2) | 1);
    v.write(o::EVTQ_BASE, 8, CMDQ | 2);
    v.write(o::EVTQ_PROD, 4, 5);
    assert_eq!(v.evtq_geometry(), (8, Ipa(EVTQ)));
    assert_eq!(v.read(o::EVTQ_PROD, 4), 0);
    assert!(v.write(o::STRTAB_BASE, 8, STRTAB).is_empty());
    assert_eq!(v.read(o::STRTAB_BASE, 8), 0);
}

#[test]
fn strtab_effective_values() {
    let mut v = VSmmu::new(policy());
    v.write(o::STRTAB_BASE, 8, STRTAB | 0x40 | (1 << 62));
    v.write(o::STRTAB_BASE_CFG, 4, (1 << 16) | (9 << 6) | 40);
    let t = v.guest_strtab();
    assert!(t.two_level);
    assert_eq!((t.log2size, t.split), (16, 8));
    // L1 of 2^8 8-byte descriptors: aligned to 2 KiB.
    assert_eq!(t.base, Ipa(STRTAB));
    v.write(o::STRTAB_BASE_CFG, 4, 4);
    let t = v.guest_strtab();
    assert!(!t.two_level);
    assert_eq!(t.log2size, 4);
    assert_eq!(t.base, Ipa(STRTAB), "linear: 16 STEs, 1 KiB aligned");
}

#[test]
fn linux_init_then_batch_with_sync() {
    let m = mem();
    let mut v = linux_init(&m);
    // CFGI_ALL + SYNC as arm_smmu_device_reset issues it.
    let a = push_cmd(&mut v, &m, &Command::CfgiAll);
    assert_eq!(a, [VsmmuAction::ProcessCommands]);
    push_cmd(
        &mut v,
        &m,
        &Command::TlbiNhAsid {
            vmid: Vmid(0),
            asid: Asid(3),
        },
    );
    push_cmd(&mut v, &m, &Command::Sync(Sync::none()));
    push_cmd(
        &mut v,
        &m,
        &Command::TlbiNhAsid {
            vmid: Vmid(0),
            asid: Asid(4),
        },
    );
    let out = v.process_commands(&m, VMID, &Map, 64);
    assert!(out.sync && !out.more && out.error.is_none());
    assert_eq!(out.consumed, 3);
    assert_eq!(out.reinstalls().collect::<Vec<_>>(), [&StreamRange::All]);
    assert!(matches!(out.work[0], CmdqWork::Reinstall(StreamRange::All)));
    let cmds: Vec<_> = out.commands().copied().collect();
    assert!(
        cmds.contains(&Command::TlbiNhAsid {
            vmid: VMID,
            asid: Asid(3)
        }),
        "{cmds:?}"
    );
    assert_eq!(
        cons(&v),
        2,
        "CONS stays at the SYNC until the physical one completes"
    );
    // Nothing more happens while the SYNC is outstanding.
    let again = v.process_commands(&m, VMID, &Map, 64);
    assert_eq!(again.consumed, 0);
    assert_eq!(
        v.complete_sync(&m),
        SyncOutcome {
            actions: vec![VsmmuAction::ProcessCommands],
            msi_written: false
        }
    );
    assert_eq!(cons(&v), 3);
    assert_eq!(
        v.complete_sync(&m),
        SyncOutcome::default(),
        "no SYNC pending"
    );
    let out = v.process_commands(&m, VMID, &Map, 64);
    assert_eq!(out.consumed, 1);
    assert!(!out.sync);
    assert_eq!(cons(&v), 4);
    // Event queue, interrupts, SMMUEN: the rest of the Linux sequence.
    v.write(o::EVTQ_BASE, 8, EVTQ | 8);
    v.write(o::EVTQ_PROD, 4, 0);
    v.write(o::EVTQ_CONS, 4, 0);
    v.write(o::CR0, 4, 0b1100);
    v.write(o::IRQ_CTRL, 4, 0);
    v.write(o::IRQ_CTRL, 4, 0b101);
    assert_eq!(v.read(o::IRQ_CTRLACK, 4), 0b101);
    let a = v.write(o::CR0, 4, 0b1101);
    assert_eq!(a, [VsmmuAction::StreamTableChanged]);
    assert_eq!(v.read(o::CR0ACK, 4), 0b1101);
    assert!(v.smmu_enabled());
}

#[test]
fn illegal_command_sets_cerror_ill_then_recovers() {
    let m = mem();
    let mut v = linux_init(&m);
    v.write(o::IRQ_CTRL, 4, 1);
    push_cmd(&mut v, &m, &Command::TlbiNhAll { vmid: Vmid(0) });
    // Stage-2 command: illegal for a stage-1-only vSMMU guest.
    push_cmd(&mut v, &m, &Command::TlbiS12Vmall { vmid: Vmid(1) });
    push_cmd(&mut v, &m, &Command::TlbiNhAll { vmid: Vmid(0) });
    let out = v.process_commands(&m, VMID, &Map, 64);
    assert_eq!(out.error, Some(CERROR_ILL));
    assert_eq!(out.actions, [VsmmuAction::RaiseGerrorIrq]);
    assert_eq!(
        out.commands().count(),
        1,
        "nothing after the error, nothing stage-2"
    );
    assert!(out
        .commands()
        .all(|c| !matches!(c, Command::TlbiS12Vmall { .. })));
    assert_eq!(
        cons(&v),
        (1 << 24) | 1,
        "CONS.RD at the bad command, ERR = ILL"
    );
    assert_eq!(v.read(o::GERROR, 4) & 1, 1);
    // Stuck until acknowledged, even if PROD moves.
    assert!(push_cmd(&mut v, &m, &Command::TlbiNhAll { vmid: Vmid(0) }).is_empty());
    assert_eq!(v.process_commands(&m, VMID, &Map, 64).consumed, 0);
    // Linux replaces the bad command with a CMD_SYNC and acknowledges.
    let (_, base) = v.cmdq_geometry();
    let w = Command::Sync(Sync::none()).encode();
    m.write_u64(Ipa(base.0 + 16), w[0]);
    m.write_u64(Ipa(base.0 + 24), w[1]);
    let a = v.write(o::GERRORN, 4, v.read(o::GERROR, 4));
    assert_eq!(a, [VsmmuAction::ProcessCommands]);
    let out = v.process_commands(&m, VMID, &Map, 64);
    assert!(out.sync && out.error.is_none());
    v.complete_sync(&m);
    let out = v.process_commands(&m, VMID, &Map, 64);
    assert_eq!(out.consumed, 2);
    assert_eq!(cons(&v) & 0xFFFFF, 4);
}

#[test]
fn undecodable_and_unreadable_commands() {
    let m = mem();
    let mut v = linux_init(&m);
    push_raw(&mut v, &m, [0xFF, 0]); // reserved opcode
    let out = v.process_commands(&m, VMID, &Map, 64);
    assert_eq!(out.error, Some(CERROR_ILL));
    assert!(out.actions.is_empty(), "GERROR_IRQEN off");
    v.write(o::GERRORN, 4, v.read(o::GERROR, 4));
    // Queue base outside the VM: CERROR_ABT.
    let mut v = VSmmu::new(policy());
    v.write(o::CMDQ_BASE, 8, 0x10_0000_0000 | 4);
    v.write(o::CR0, 4, 1 << 3);
    v.write(o::CMDQ_PROD, 4, 1);
    let out = v.process_commands(&m, VMID, &Map, 64);
    assert_eq!(out.error, Some(CERROR_ABT));
    assert_eq!(cons(&v), 2 << 24);
}

#[test]
fn budget_bounds_work_per_call() {
    let m = mem();
    let mut v = linux_init(&m);
    for i in 0..10 {
        push_cmd(
            &mut v,
            &m,
            &Command::TlbiNhAsid {
                vmid: Vmid(0),
                asid: Asid(i),
            },
        );
    }
    let reads = m.reads();
    let out = v.process_commands(&m, VMID, &Map, 4);
    assert!(out.more);
    assert_eq!(out.consumed, 4);
    assert_eq!(m.reads() - reads, 4);
    assert_eq!(cons(&v), 4);
    let out = v.process_commands(&m, VMID, &Map, 0);
    assert!(out.more && out.consumed == 0);
    let out = v.process_commands(&m, VMID, &Map, 6);
    assert!(!out.more);
    assert_eq!(cons(&v), 10);
    let out = v.process_commands(&m, VMID, &Map, 6);
    assert!(!out.more && out.consumed == 0);
}

#[test]
fn queue_wraps() {
    let m = mem();
    let mut v = VSmmu::new(policy());
    v.write(o::CMDQ_BASE, 8, CMDQ | 2); // 4 entries
    v.write(o::CR0, 4, 1 << 3);
    for round in 0..3u16 {
        for i in 0..4 {
            push_cmd(
                &mut v,
                &m,
                &Command::TlbiNhAsid {
                    vmid: Vmid(0),
                    asid: Asid(round * 4 + i),
                },
            );
        }
        let out = v.process_commands(&m, VMID, &Map, 100);
        assert_eq!(out.consumed, 4);
        assert_eq!(cons(&v), v.read(o::CMDQ_PROD, 4) as u32);
    }
}

fn evt(sid: u32) -> Event {
    Event::BadStreamId {
        sid: StreamId(sid),
        ssid: None,
    }
}

#[test]
fn event_injection_and_overflow() {
    let m = mem();
    let mut v = VSmmu::new(policy());
    assert_eq!(
        v.inject(&m, &evt(1)),
        InjectOutcome::default(),
        "EVENTQEN off"
    );
    v.write(o::EVTQ_BASE, 8, EVTQ | 1); // 2 entries
    v.write(o::CR0, 4, 1 << 2);
    let out = v.inject(&m, &evt(1));
    assert!(out.written && !out.raise_event_irq);
    v.write(o::IRQ_CTRL, 4, 1 << 2);
    let out = v.inject(&m, &evt(2));
    assert!(out.written && out.raise_event_irq);
    assert_eq!(v.read(o::EVTQ_PROD, 4), 2, "wrapped, index 0");
    assert_eq!(
        Event::decode([
            m.read_u64(Ipa(EVTQ)),
            m.read_u64(Ipa(EVTQ + 8)),
            m.read_u64(Ipa(EVTQ + 16)),
            m.read_u64(Ipa(EVTQ + 24))
        ]),
        evt(1)
    );
    assert_eq!(
        Event::decode([
            m.read_u64(Ipa(EVTQ + 32)),
            m.read_u64(Ipa(EVTQ + 40)),
            m.read_u64(Ipa(EVTQ + 48)),
            m.read_u64(Ipa(EVTQ + 56))
        ]),
        evt(2)
    );
    // Full: lost, OVFLG toggles once.
    let out = v.inject(&m, &evt(3));
    assert!(out.overflowed && !out.written && !out.raise_event_irq);
    assert_eq!(v.read(o::EVTQ_PROD, 4), (1 << 31) | 2);
    v.inject(&m, &evt(4));
    assert_eq!(
        v.read(o::EVTQ_PROD, 4),
        (1 << 31) | 2,
        "not toggled again before ack"
    );
    // Guest consumes and acknowledges the overflow.
    v.write(o::EVTQ_CONS, 4, (1 << 31) | 2);
    let out = v.inject(&m, &evt(5));
    assert!(out.written);
    assert_eq!(
        v.read(o::EVTQ_PROD, 4),
        (1 << 31) | 3,
        "OVFLG kept, index advanced"
    );
    v.write(o::EVTQ_CONS, 4, (1 << 31) | 3);
    v.write(o::EVTQ_CONS, 4, (1 << 31) | 3);
    v.inject(&m, &evt(6));
    v.inject(&m, &evt(7));
    v.inject(&m, &evt(8));
    assert_eq!(
        v.read(o::EVTQ_PROD, 4),
        1,
        "second overflow toggles OVFLG back"
    );
}

#[test]
fn event_queue_outside_vm_is_gerror() {
    let m = mem();
    let mut v = VSmmu::new(policy());
    v.write(o::EVTQ_BASE, 8, 0x1000 | 3);
    v.write(o::IRQ_CTRL, 4, 0b101);
    v.write(o::CR0, 4, 1 << 2);
    let out = v.inject(&m, &evt(1));
    assert!(!out.written && out.raise_gerror_irq);
    assert_eq!(v.read(o::GERROR, 4), 1 << 2);
    assert!(!v.inject(&m, &evt(1)).raise_gerror_irq, "already active");
}

#[test]
fn odd_accesses_are_raz_wi() {
    let mut v = VSmmu::new(VsmmuPolicy {
        msi: false,
        ..policy()
    });
    assert_eq!(v.read(o::IDR0 + 1, 4), 0);
    assert_eq!(v.read(o::IDR0, 2), 0);
    assert_eq!(v.read(o::IDR1, 8), 0, "misaligned 8-byte");
    assert_eq!(v.read(usize::MAX, 8), 0);
    assert_eq!(v.read(usize::MAX - 3, 4), 0);
    assert!(v.write(o::CR0 + 2, 4, 1).is_empty());
    assert!(v.write(usize::MAX - 7, 8, u64::MAX).is_empty());
    for off in [
        o::IDR0,
        o::GERROR,
        o::GERROR_IRQ_CFG0,
        o::EVTQ_IRQ_CFG1,
        o::PRIQ_BASE,
        o::STATUSR,
    ] {
        let before = v.read(off, 4);
        v.write(off, 4, 0xFFFF_FFFF);
        assert_eq!(v.read(off, 4), before, "offset {off:#x} is RO or RAZ/WI");
    }
    assert_eq!(v.read(o::GERROR_IRQ_CFG0, 8), 0);
    assert_eq!(v.read(o::EVTQ_IRQ_CFG2, 4), 0);
    // GERRORN holds the errors the vSMMU can raise: without MSIs, not
    // their abort bits.
    v.write(o::GERRORN, 4, 0xFFFF_FFFF);
    assert_eq!(v.read(o::GERRORN, 4), 0b101);
    let mut v = VSmmu::new(policy());
    v.write(o::GERRORN, 4, 0xFFFF_FFFF);
    assert_eq!(v.read(o::GERRORN, 4), 0b1011_0101);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Hostile register writes and queue contents never panic, never loop
    /// unboundedly, and never let a queue pointer leave its queue.
    #[test]
    fn hostile_guest_never_panics(
        ops in proptest::collection::vec((0usize..0x2_0100, prop_oneof![Just(4usize), Just(8), 0usize..9], any::<u64>()), 0..200),
        junk in proptest::collection::vec(any::<u64>(), 0..64),
    ) {
        let m = mem();
        for (i, w) in junk.iter().enumerate() {
            m.write_u64(Ipa(CMDQ + 8 * i as u64), *w);
        }
        let mut v = VSmmu::new(policy());
        for (off, size, val) in ops {
            // Bias half the offsets onto real registers.
            let off = if off & 1 == 0 { (off % 0x100) & !3 } else { off };
            let off = if off & 2 == 0 && off >= 0x1_0000 { o::PAGE1 + ((off % 0x100) & !3) } else { off };
            let actions = v.write(off, size, val);
            let _ = v.read(off, size);
            if actions.contains(&VsmmuAction::ProcessCommands) {
                let out = v.process_commands(&m, VMID, &Map, 8);
                prop_assert!(out.consumed <= 8);
                if out.sync {
                    v.complete_sync(&m);
                }
            }
            let _ = v.inject(&m, &evt(3));
            let (log2, _) = v.cmdq_geometry();
            prop_assert!(log2 <= policy().cmdqs);
        }
    }
}
