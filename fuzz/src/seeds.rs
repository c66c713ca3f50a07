//! The committed seeds (`fuzz/seeds/<target>/`): realistic sequences a
//! guest's `arm-smmu-v3` and GICv3 ITS drivers and its devices go through,
//! hostile guests, and a regression, from which the fuzzer starts
//! mutating.
//!
//! `cargo test` checks that the files are exactly what this module builds
//! (after a change of the input format, rewrite them with
//! `FUZZ_WRITE_SEEDS=1 cargo test`), that each seed reaches the states it
//! is meant to, and replays every file in `fuzz/seeds/` (including crash
//! inputs kept there as regressions) through its target.

use std::vec::Vec;

use smmu::addr::{Asid, Iova, Ipa, PhysAddr, Ssid, StreamId, Vmid};
use smmu::cd::{ContextDescriptor, L1Cd};
use smmu::cmd::{Command, Granule as TlbiGranule, Sync, TlbiRange, TlbiScope};
use smmu::regs::offset as o;
use smmu::ste::{Config, Granule, S1Dss, S1Fmt, StallModel, Ste};
use smmu::strtab::L1Std;
use smmu::vsmmu::VsmmuPolicy;

use hyp::vits::cmd::Command as ItsCommand;
use hyp::vits::DeviceGrant;

use crate::bytes::Writer;
use crate::harness::Stats;
use crate::ops::{Op, Setup};
use crate::vits::{self, reg as its_reg, DEVICE_TABLE, ITT, PROP};
use crate::vm::{s2, CDS, CMDQ, DEVICES, EVTQ, L2, RAM, STRTAB};

/// A seed of the `vsmmu` target.
#[derive(Debug)]
pub struct VsmmuSeed {
    /// File name under `fuzz/seeds/vsmmu/`.
    pub name: &'static str,
    /// What the vSMMU advertises.
    pub setup: Setup,
    /// The sequence.
    pub ops: Vec<Op>,
    /// What running it must have exercised.
    pub reaches: fn(&Stats) -> bool,
}

/// Builds a guest's sequence of operations.
struct Guest {
    ops: Vec<Op>,
    /// Commands pushed so far (the guest's CMDQ_PROD, before wrapping).
    pushed: u64,
}

impl Guest {
    fn new() -> Self {
        Self {
            ops: Vec::new(),
            pushed: 0,
        }
    }

    fn op(&mut self, op: Op) {
        self.ops.push(op);
    }

    fn read(&mut self, offset: usize) {
        self.op(Op::Read { offset, size: 4 });
    }

    fn write(&mut self, offset: usize, value: u64) {
        self.op(Op::Write {
            offset,
            size: 4,
            value,
        });
    }

    fn write64(&mut self, offset: usize, value: u64) {
        self.op(Op::Write {
            offset,
            size: 8,
            value,
        });
    }

    fn cmd(&mut self, c: Command) {
        self.op(Op::PushCommand(c.encode()));
        self.pushed += 1;
    }

    /// CMD_SYNC, then polling CMDQ_CONS as Linux does.
    fn sync(&mut self) {
        self.cmd(Command::Sync(Sync::none()));
        self.op(Op::Poll);
    }

    fn poke(&mut self, ipa: u64, words: &[u64]) {
        let bytes = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.op(Op::Poke { ipa, bytes });
    }

    fn ste(&mut self, vsid: u32, ste: Ste) {
        self.op(Op::WriteSte { vsid, ste });
    }

    /// The physical SMMU records a stage 1 F_TRANSLATION (§7.3.12) of
    /// device `vsid` at `iova`, a read.
    fn fault(&mut self, vsid: u32, iova: u64) {
        let &(_, sid) = DEVICES.iter().find(|&&(v, _)| v == vsid).expect("a device");
        self.op(Op::Event {
            sid,
            words: [0x10, 1 << 35, iova, 0],
        });
    }

    /// Device `vsid` reads `addr`.
    fn dma(&mut self, vsid: u32, ssid: Option<u32>, addr: u64) {
        self.op(Op::Transaction { vsid, ssid, addr });
    }

    /// `arm_smmu_device_reset`: everything off, tables and queues
    /// programmed, CMDQEN, CFGI_ALL + TLBI_NSNH_ALL, EVENTQEN, interrupts,
    /// SMMUEN.
    fn linux_reset(&mut self, strtab_cfg: u64, cmdq_log2: u64, evtq_log2: u64) {
        for idr in [o::IDR0, o::IDR1, o::IDR3, o::IDR5] {
            self.read(idr);
        }
        self.write(o::CR0, 0);
        self.read(o::CR0ACK);
        self.write(o::CR1, 0xD75);
        self.write(o::CR2, 0b110);
        self.write64(o::STRTAB_BASE, (1 << 62) | STRTAB);
        self.write(o::STRTAB_BASE_CFG, strtab_cfg);
        self.write64(o::CMDQ_BASE, (1 << 62) | CMDQ | cmdq_log2);
        self.write(o::CMDQ_PROD, 0);
        self.write(o::CMDQ_CONS, 0);
        self.write(o::CR0, 0b1000);
        self.read(o::CR0ACK);
        self.cmd(Command::CfgiAll);
        self.sync();
        self.cmd(Command::TlbiNsnhAll);
        self.sync();
        self.write64(o::EVENTQ_BASE, (1 << 62) | EVTQ | evtq_log2);
        self.write(o::EVENTQ_PROD, 0);
        self.write(o::EVENTQ_CONS, 0);
        self.write(o::CR0, 0b1100);
        self.write(o::IRQ_CTRL, 0);
        self.write(o::IRQ_CTRL, 0b101);
        self.read(o::IRQ_CTRLACK);
        self.write(o::CR0, 0b1101);
        self.read(o::CR0ACK);
    }
}

/// The CD Linux writes: 48-bit VA, 4K granule, TTB1 disabled, 40-bit IPS.
fn linux_cd(asid: u16, ttb0: u64) -> Vec<u64> {
    let mut cd = ContextDescriptor::default();
    cd.set_t0sz(16);
    cd.set_tg0(Granule::Size4K);
    cd.set_ir0(1);
    cd.set_or0(1);
    cd.set_sh0(3);
    cd.set_epd1(true);
    cd.set_v(true);
    cd.set_ips(2);
    cd.set_aa64(true);
    cd.set_r(true);
    cd.set_a(true);
    cd.set_aset(true);
    cd.set_asid(Asid(asid));
    cd.set_ttb0(Ipa(ttb0));
    cd.set_mair(0x0000_0000_0044_ff04);
    cd.0.to_vec()
}

/// A stage 1 STE as Linux writes it.
fn s1_ste(ctx: u64, fmt: S1Fmt, cdmax: u8) -> Ste {
    let mut ste = Ste::invalid();
    ste.set_v(true);
    ste.set_config(Config::S1Translate);
    ste.set_s1_context_ptr(Ipa(ctx));
    ste.set_s1fmt(fmt);
    ste.set_s1cdmax(cdmax);
    ste.set_s1dss(if cdmax == 0 {
        S1Dss::Terminate
    } else {
        S1Dss::Ssid0
    });
    ste.set_s1cir(1);
    ste.set_s1cor(1);
    ste.set_s1csh(3);
    ste
}

fn bypass_ste() -> Ste {
    let mut ste = Ste::invalid();
    ste.set_v(true);
    ste.set_config(Config::Bypass);
    ste
}

fn leaf() -> TlbiScope {
    TlbiScope {
        leaf: true,
        range: None,
    }
}

/// Linux with a 2-level stream table and substreams: one device with a
/// single CD, one with a 2-level CD table, one in bypass; DMA-map churn
/// (CD and TLB invalidations), a fault reported to the guest, a stage 2
/// command rejected and recovered from as Linux does, a detach.
fn linux_two_level() -> VsmmuSeed {
    let mut g = Guest::new();
    g.linux_reset((1 << 16) | (8 << 6) | 16, 8, 8);
    g.poke(CDS, &linux_cd(1, RAM + 0x7_0000));
    g.ste(0x8, s1_ste(CDS, S1Fmt::Linear, 0));
    g.cmd(Command::CfgiSte {
        sid: StreamId(0x8),
        leaf: true,
    });
    g.sync();
    g.poke(CDS + 0x1000, &[L1Cd::new(Ipa(CDS + 0x2000)).0]);
    g.poke(CDS + 0x2000, &linux_cd(2, RAM + 0x7_1000));
    g.ste(0x310, s1_ste(CDS + 0x1000, S1Fmt::TwoLevel4K, 8));
    g.cmd(Command::CfgiSte {
        sid: StreamId(0x310),
        leaf: true,
    });
    g.sync();
    g.ste(0x0, bypass_ste());
    g.cmd(Command::CfgiSteRange {
        sid: StreamId(0),
        range: 3,
    });
    g.sync();
    g.cmd(Command::CfgiCd {
        sid: StreamId(0x310),
        ssid: Ssid(0),
        leaf: true,
    });
    g.cmd(Command::TlbiNhAsid {
        vmid: Vmid(0),
        asid: Asid(2),
    });
    g.cmd(Command::TlbiNhVa {
        vmid: Vmid(0),
        asid: Asid(1),
        addr: Iova(0x1_0000),
        scope: leaf(),
    });
    g.cmd(Command::TlbiNhVaa {
        vmid: Vmid(0),
        addr: Iova(0x2_0000),
        scope: leaf(),
    });
    g.cmd(Command::CfgiCdAll { sid: StreamId(0x8) });
    g.sync();
    g.fault(0x8, 0xffff_8000_0000_1000);
    g.read(o::EVENTQ_PROD);
    g.write(o::EVENTQ_CONS, 1);
    // A stage 2 command: CERROR_ILL. Linux replaces it with a CMD_SYNC
    // and acknowledges the error.
    g.cmd(Command::TlbiS12Vmall { vmid: Vmid(0) });
    g.read(o::CMDQ_CONS);
    g.read(o::GERROR);
    let bad = CMDQ + (g.pushed - 1) % 256 * 16;
    let sync = Command::Sync(Sync::none()).encode();
    g.poke(bad, &sync);
    g.write(o::GERRORN, 1);
    g.read(o::CMDQ_CONS);
    // Detach the first device, then turn translation off.
    g.ste(0x8, Ste::abort());
    g.cmd(Command::CfgiAll);
    g.sync();
    g.write(o::CR0, 0b1100);
    VsmmuSeed {
        name: "linux-two-level",
        setup: Setup {
            policy: VsmmuPolicy {
                msi: false,
                ..VsmmuPolicy::default()
            },
            phys_stall: StallModel::TerminateOnly,
        },
        ops: g.ops,
        reaches: |s| {
            s.nested >= 2
                && s.stage2_only >= 1
                && s.valid_cds >= 2
                && s.physical_commands >= 6
                && s.syncs >= 6
                && s.events == 1
                && s.cmdq_errors == 1
        },
    }
}

/// Linux on a QEMU-like vSMMU (no substreams, range invalidation): a
/// linear stream table, range TLB invalidations, a 2-entry event queue
/// that overflows and is acknowledged.
fn linux_linear_ril() -> VsmmuSeed {
    let mut g = Guest::new();
    g.linux_reset(10, 8, 1);
    g.poke(CDS, &linux_cd(5, RAM + 0x7_0000));
    g.poke(CDS + 0x40, &linux_cd(6, RAM + 0x7_1000));
    g.ste(0x0, s1_ste(CDS, S1Fmt::Linear, 0));
    g.ste(0x8, s1_ste(CDS + 0x40, S1Fmt::Linear, 0));
    g.ste(0x310, bypass_ste());
    g.cmd(Command::CfgiSteRange {
        sid: StreamId(0),
        range: 9,
    });
    g.sync();
    let range = |scale, num| TlbiScope {
        leaf: true,
        range: Some(TlbiRange {
            tg: TlbiGranule::Size4K,
            ttl: 3,
            scale,
            num,
        }),
    };
    g.cmd(Command::TlbiNhVa {
        vmid: Vmid(0),
        asid: Asid(5),
        addr: Iova(0x4000_0000),
        scope: range(1, 7),
    });
    g.cmd(Command::TlbiNhVaa {
        vmid: Vmid(0),
        addr: Iova(0x8000_0000),
        scope: range(5, 31),
    });
    g.sync();
    for iova in [0x1000, 0x2000, 0x3000] {
        g.fault(0x0, iova);
    }
    g.read(o::EVENTQ_PROD);
    g.write(o::EVENTQ_CONS, (1 << 31) | 2);
    g.fault(0x8, 0x4000);
    g.cmd(Command::CfgiAll);
    g.sync();
    VsmmuSeed {
        name: "linux-linear-ril",
        setup: Setup {
            policy: VsmmuPolicy {
                ssid_bits: 0,
                ril: true,
                oas_bits: 44,
                gran16k: true,
                msi: false,
                ..VsmmuPolicy::default()
            },
            phys_stall: StallModel::StallAndTerminate,
        },
        ops: g.ops,
        reaches: |s| s.nested >= 2 && s.stage2_only >= 1 && s.overflows == 1 && s.events == 3,
    }
}

/// A hostile guest: odd accesses, a queue outside its memory, a physical
/// SMMU failing while commands and SYNCs pile up, an event queue outside
/// its memory, a stream table outside its memory, illegal STEs and the
/// C_BAD_STE of their streams' transactions.
fn hostile() -> VsmmuSeed {
    let mut g = Guest::new();
    g.op(Op::Read {
        offset: o::IDR0,
        size: 2,
    });
    g.op(Op::Read {
        offset: o::CR0 + 1,
        size: 4,
    });
    g.op(Op::Read {
        offset: usize::MAX - 7,
        size: 8,
    });
    g.op(Op::Write {
        offset: o::CR0 + 2,
        size: 4,
        value: 1,
    });
    g.write(o::IDR0, 0);
    g.write(o::GERROR, 5);
    // GBPA decides while SMMUEN == 0: abort, then bypass.
    g.write(o::GBPA, (1 << 31) | (1 << 20));
    g.write(o::GBPA, 1 << 31);
    // A command queue outside the VM: CERROR_ABT.
    g.write(o::IRQ_CTRL, 0b101);
    g.write64(o::CMDQ_BASE, 0x10_0000_0000 | 2);
    g.write(o::CR0, 0b1000);
    g.write(o::CMDQ_PROD, 1);
    g.read(o::GERROR);
    // Fixed while disabled: a 4-entry queue in the VM; then acknowledged.
    g.write(o::CR0, 0);
    g.write64(o::CMDQ_BASE, CMDQ | 2);
    g.write(o::CMDQ_CONS, 0);
    g.write(o::CMDQ_PROD, 0);
    g.write(o::GERRORN, 1);
    g.write(o::CR0, 0b1000);
    // The physical SMMU fails while commands and SYNCs go by.
    g.op(Op::PhysicalFailures(2));
    g.cmd(Command::TlbiNhAll { vmid: Vmid(3) });
    g.cmd(Command::Sync(Sync::none()));
    g.cmd(Command::TlbiNhAsid {
        vmid: Vmid(0),
        asid: Asid(0x1ff),
    });
    g.cmd(Command::CfgiCdAll {
        sid: StreamId(0x10),
    });
    g.sync();
    // An event queue outside the VM: EVENTQ_ABT_ERR.
    g.write64(o::EVENTQ_BASE, 0x1000 | 1);
    g.write(o::CR0, 0b1100);
    g.fault(0x310, 0x1000);
    g.read(o::GERROR);
    // A stream table outside the VM, then in it with illegal STEs.
    g.write64(o::STRTAB_BASE, 0x10_0000_0000);
    g.write(o::STRTAB_BASE_CFG, (1 << 16) | (6 << 6) | 12);
    g.write(o::CR0, 0b1101);
    g.write(o::CR0, 0b1100);
    g.write64(o::STRTAB_BASE, STRTAB);
    g.poke(STRTAB, &[L1Std::new(PhysAddr(L2), 7).0]);
    let mut nested = s1_ste(CDS, S1Fmt::Linear, 0);
    nested.set_config(Config::Nested);
    g.ste(0x0, nested);
    let mut stalls = s1_ste(CDS, S1Fmt::Linear, 0);
    stalls.set_s1stalld(true);
    g.ste(0x8, stalls);
    g.write(o::CR0, 0b1101);
    // Transactions of the refused streams: C_BAD_STE, reported to the
    // guest (through an event queue in its memory this time).
    g.write(o::CR0, 0b1001);
    g.write64(o::EVENTQ_BASE, EVTQ | 1);
    g.write(o::CR0, 0b1101);
    g.dma(0x0, None, 0);
    g.dma(0x8, Some(3), 0x1000);
    // Events that are not the guest's: a stage 2 fault, another stream.
    g.op(Op::Event {
        sid: 0x108,
        words: [0x10, (1 << 35) | (1 << 39), 0x1000, 0x1000],
    });
    g.op(Op::Event {
        sid: 0x9,
        words: [0x04, 0, 0, 0],
    });
    VsmmuSeed {
        name: "hostile",
        setup: Setup {
            policy: VsmmuPolicy {
                cmdqs: 2,
                evtqs: 1,
                msi: false,
                ..VsmmuPolicy::default()
            },
            phys_stall: StallModel::StallForced,
        },
        ops: g.ops,
        reaches: |s| {
            s.cmdq_errors == 1
                && s.physical_failures == 2
                && s.syncs == 2
                && s.fetch_errors >= 1
                && s.refused >= 2
                && s.refusals_reported == 2
                && s.events == 2
        },
    }
}

/// A guest that fills its queue before enabling it: the hypervisor works
/// through it in bounded rounds (a SYNC among them), and the guest's polls
/// of CMDQ_CONS take the rest.
fn flood() -> VsmmuSeed {
    let mut g = Guest::new();
    g.write64(o::CMDQ_BASE, CMDQ | 9);
    let cmd = |i: u16| match i % 4 {
        _ if i == 70 => Command::Sync(Sync::none()),
        0 => Command::TlbiNhVa {
            vmid: Vmid(0),
            asid: Asid(i),
            addr: Iova(u64::from(i) << 12),
            scope: leaf(),
        },
        1 => Command::CfgiCd {
            sid: StreamId(0x8),
            ssid: Ssid(u32::from(i) % 256),
            leaf: true,
        },
        2 => Command::PrefetchConfig {
            sid: StreamId(0x310),
            ssid: None,
        },
        _ => Command::CfgiSte {
            sid: StreamId(0x8),
            leaf: true,
        },
    };
    for first in (0..300u16).step_by(4) {
        let words: Vec<u64> = (first..first + 4).flat_map(|i| cmd(i).encode()).collect();
        g.poke(CMDQ + u64::from(first) * 16, &words);
    }
    g.write(o::CMDQ_PROD, 300);
    g.write(o::CR0, 0b1000);
    g.op(Op::Poll);
    VsmmuSeed {
        name: "flood",
        setup: Setup {
            policy: VsmmuPolicy {
                cmdqs: 9,
                msi: false,
                ..VsmmuPolicy::default()
            },
            phys_stall: StallModel::TerminateOnly,
        },
        ops: g.ops,
        reaches: |s| s.guest_commands == 300 && s.syncs == 1 && s.physical_commands == 150,
    }
}

/// Found by the fuzzer: a level 1 descriptor whose L2Ptr, at the top of
/// the address space, is not aligned to its array made the STE address
/// overflow what F_STE_FETCH can report. §5.1: the low bits of L2Ptr are
/// treated as 0; the guest sees F_STE_FETCH at the aligned address.
fn regression_unaligned_l2ptr() -> VsmmuSeed {
    let mut g = Guest::new();
    g.linux_reset((1 << 16) | (8 << 6) | 16, 8, 8);
    g.write(o::CR0, 0b1100);
    g.poke(STRTAB, &[L1Std::new(PhysAddr((1 << 56) - 64), 9).0]);
    g.write(o::CR0, 0b1101);
    g.dma(0x8, None, 0x1000);
    g.read(o::EVENTQ_PROD);
    VsmmuSeed {
        name: "regression-unaligned-l2ptr",
        setup: Setup {
            policy: VsmmuPolicy {
                msi: false,
                ..VsmmuPolicy::default()
            },
            phys_stall: StallModel::TerminateOnly,
        },
        ops: g.ops,
        reaches: |s| s.fetch_errors >= 1 && s.refusals_reported == 1,
    }
}

/// The seeds of the `vsmmu` target.
pub fn vsmmu() -> Vec<VsmmuSeed> {
    Vec::from([
        linux_two_level(),
        linux_linear_ril(),
        hostile(),
        flood(),
        regression_unaligned_l2ptr(),
    ])
}

/// The seeds of the `decoders` target: (file name, bytes).
pub fn decoders() -> Vec<(&'static str, Vec<u8>)> {
    let mut w = Writer::new();
    // Commands (raw form), each translated with RIL, ASID16, 8 SSID bits.
    let mut all = linux_two_level().ops;
    all.extend(linux_linear_ril().ops);
    for op in &all {
        if let Op::PushCommand(words) = op {
            w.u8(0);
            w.u8(0);
            w.u64(words[0]);
            w.u64(words[1]);
            w.u8(0b11 | (8 << 2));
        }
    }
    // An event record.
    w.u8(1);
    for word in [0x10 | (0x8u64 << 32), 0, 0xffff_8000_0000_1000, 0x4000_1000] {
        w.u64(word);
    }
    // A nested STE on a nested-capable SMMU.
    let s1 = s1_ste(CDS, S1Fmt::TwoLevel4K, 8).s1_config();
    let nested = Ste::nested(&s2(), &s1);
    w.u8(2);
    w.u8(0);
    for word in nested.0 {
        w.u64(word);
    }
    w.u32(0b101_0110_0111);
    for bits in [20, 44, 44] {
        w.u8(bits);
    }
    // Linux's CD, and a CD table lookup.
    w.u8(3);
    w.u8(0);
    for word in linux_cd(1, RAM) {
        w.u64(word);
    }
    w.u16((1 << 7) | (1 << 10) | (1 << 12));
    w.u8(40);
    for b in [1, 8, 8] {
        w.u8(b);
    }
    w.u32(5);
    w.u8(4 | 2);
    // An update from abort to nested.
    w.u8(4);
    w.u8(0);
    for word in Ste::abort().0 {
        w.u64(word);
    }
    w.u8(0);
    w.u8(0);
    for word in nested.0 {
        w.u64(word);
    }
    w.u8(0);
    // Level 1 descriptors.
    w.u8(5);
    w.u64(L1Std::new(PhysAddr(L2), 9).0);
    w.u64(L1Cd::new(Ipa(CDS)).0);
    Vec::from([("structures", w.finish())])
}

/// A seed of the `vits` target.
#[derive(Debug)]
pub struct VitsSeed {
    /// File name under `fuzz/seeds/vits/`.
    pub name: &'static str,
    /// The VM.
    pub setup: vits::Setup,
    /// The sequence.
    pub ops: Vec<vits::Op>,
    /// What running it must have exercised.
    pub reaches: fn(&vits::Stats) -> bool,
}

fn grant(physical: u32, events: u32) -> DeviceGrant {
    DeviceGrant { physical, events }
}

fn mapc(icid: u16, target: u64, valid: bool) -> ItsCommand {
    ItsCommand::Mapc {
        icid,
        target,
        valid,
    }
}

/// A valid MAPD.
fn mapd(device: u32, event_bits: u8, itt: u64) -> ItsCommand {
    ItsCommand::Mapd {
        device,
        valid: true,
        event_bits,
        itt: Ipa(itt),
    }
}

fn mapti(device: u32, event: u32, intid: u32, icid: u16) -> ItsCommand {
    ItsCommand::Mapti {
        device,
        event,
        intid,
        icid,
    }
}

/// An MSI of physical device `physical`.
fn deliver(physical: u32, event: u32) -> vits::Op {
    vits::Op::Deliver { physical, event }
}

/// Commands submitted at once (at most 16).
fn submit(cmds: &[ItsCommand]) -> vits::Op {
    vits::Op::Submit(cmds.iter().map(ItsCommand::encode).collect())
}

fn its_write(offset: u64, value: u64) -> vits::Op {
    vits::Op::Write {
        offset,
        size: 8,
        value,
    }
}

/// Linux's ITS driver on a 2-vCPU VM with two functions: a collection per
/// vCPU, each device's ITT, MSI-X vectors mapped to LPIs (their
/// configuration bytes written first), an MSI delivered, INT, MOVI with
/// INV after a priority change, DISCARD of a vector the driver frees (its
/// MSI then dropped), and a device unmapped.
fn its_linux() -> VitsSeed {
    let mut ops: Vec<vits::Op> = (8192..8196)
        .map(|intid| vits::Op::LpiConfig {
            intid,
            config: 0xa1,
        })
        .collect();
    ops.extend([
        vits::Op::Read {
            offset: its_reg::TYPER,
            size: 8,
        },
        submit(&[
            mapc(0, 0, true),
            ItsCommand::Sync { target: 0 },
            mapc(1, 1, true),
            ItsCommand::Sync { target: 1 },
            mapd(8, 5, ITT),
            mapti(8, 0, 8192, 0),
            mapti(8, 1, 8193, 1),
            ItsCommand::Sync { target: 1 },
            mapd(0x10, 2, ITT + 0x1000),
            mapti(0x10, 0, 8194, 1),
            ItsCommand::Sync { target: 1 },
        ]),
        vits::Op::Poll,
        deliver(0x108, 1),
        submit(&[
            ItsCommand::Int {
                device: 0x10,
                event: 0,
            },
            ItsCommand::Sync { target: 1 },
        ]),
        vits::Op::LpiConfig {
            intid: 8192,
            config: 0x81,
        },
        submit(&[
            ItsCommand::Movi {
                device: 8,
                event: 0,
                icid: 1,
            },
            ItsCommand::Sync { target: 1 },
            ItsCommand::Inv {
                device: 8,
                event: 0,
            },
            ItsCommand::Sync { target: 1 },
        ]),
        vits::Op::Poll,
        submit(&[
            ItsCommand::Discard {
                device: 8,
                event: 1,
            },
            ItsCommand::Sync { target: 1 },
        ]),
        vits::Op::Poll,
        deliver(0x108, 1),
        submit(&[
            ItsCommand::Mapd {
                device: 0x10,
                valid: false,
                event_bits: 1,
                itt: Ipa(0),
            },
            ItsCommand::Sync { target: 0 },
        ]),
        vits::Op::Poll,
    ]);
    VitsSeed {
        name: "linux",
        setup: vits::Setup {
            vcpus: 2,
            direct: false,
            skip: 0,
            propbaser: PROP | 15,
            queue_pages: 15,
            baser: 2 << 8,
            devices: Vec::from([(8, grant(0x108, 32)), (0x10, grant(0x110, 4))]),
        },
        ops,
        reaches: |s| {
            s.most_translations == 3
                && s.delivered == 1
                && s.dropped == 1
                && s.errors == 0
                && s.commands == 21
        },
    }
}

/// A hostile guest on 4 vCPUs: odd register accesses, commands about
/// devices it does not own, beyond its grants, ITTs and tables outside its
/// RAM, an LPI shared by two events, the physical side out of routes, MSIs
/// of other devices, collections moved and unmapped under mapped events, a
/// queue filled beyond one access's budget, a queue outside its RAM
/// (stalled, retried), and a reset.
fn its_hostile() -> VitsSeed {
    let mut ops = Vec::from([
        vits::Op::Read {
            offset: its_reg::CTLR + 2,
            size: 4,
        },
        vits::Op::Read {
            offset: u64::MAX - 7,
            size: 8,
        },
        its_write(its_reg::TYPER, u64::MAX),
        // Bases cannot move while the ITS is enabled.
        its_write(its_reg::CBASER, 0x1000),
        its_write(its_reg::BASER, 1 << 62),
        submit(&[
            mapd(9, 2, ITT),
            mapd(1, 12, ITT),
            mapd(1, 2, 0x1000),
            mapd(0xffff, 2, ITT),
            mapc(0, 7, true),
            ItsCommand::Unsupported(0x2a),
            mapti(1, 0, 8192, 0),
        ]),
        submit(&[
            mapc(0, 0, true),
            mapc(1, 1, true),
            mapc(2, 2, true),
            mapc(3, 3, true),
            mapd(1, 2, ITT),
            mapd(0x20, 4, ITT + 0x1000),
            mapti(1, 0, 8192, 3),
            // The same LPI for a second event, in another collection.
            mapti(1, 1, 8192, 0),
            // Beyond the grants (2 events and 1).
            mapti(1, 2, 8200, 0),
            mapti(0x20, 0, 8200, 0),
            mapti(0x20, 1, 8201, 0),
            mapti(1, 0, 16000, 1),
            mapti(1, 1, 1023, 1),
        ]),
        vits::Op::RefuseMaps(true),
        submit(&[mapti(1, 1, 8300, 2)]),
        vits::Op::RefuseMaps(false),
        deliver(0x9999, 0),
        deliver(0x2000, 0),
        submit(&[
            ItsCommand::Movall { from: 1, to: 3 },
            mapc(1, 2, true),
            // Event 0 of DeviceID 1 is in collection 1: INT, INVALL and its
            // MSI find no target.
            mapc(1, 0, false),
            ItsCommand::Int {
                device: 1,
                event: 0,
            },
            ItsCommand::Invall { icid: 1 },
        ]),
        deliver(0x2000, 0),
        vits::Op::Redist {
            vcpu: 2,
            offset: 0,
            size: 4,
            value: 0,
        },
        vits::Op::Poke {
            ipa: DEVICE_TABLE,
            bytes: Vec::from([0xff; 64]),
        },
        // Commands queued while disabled: enabling runs one access's
        // worth, a poll the rest.
        its_write(its_reg::CTLR, 0),
    ]);
    for _ in 0..5 {
        ops.push(submit(&[ItsCommand::Sync { target: 3 }; 16]));
    }
    ops.extend([
        its_write(its_reg::CTLR, 1),
        vits::Op::Poll,
        // A queue outside RAM stalls, and again when retried.
        its_write(its_reg::CTLR, 0),
        its_write(its_reg::CBASER, (1 << 63) | 0x1000_0000),
        its_write(its_reg::CTLR, 1),
        its_write(its_reg::CWRITER, 32),
        vits::Op::Poll,
        its_write(its_reg::CWRITER, 32 | 1),
        vits::Op::Reset,
        vits::Op::InitIts,
        submit(&[
            mapc(0, 0, true),
            mapd(0x20, 1, ITT),
            mapti(0x20, 0, 8192, 0),
        ]),
    ]);
    VitsSeed {
        name: "hostile",
        setup: vits::Setup {
            vcpus: 4,
            direct: false,
            skip: 0,
            propbaser: PROP | 13,
            queue_pages: 0,
            baser: 0,
            devices: Vec::from([
                (1, grant(0x2000, 2)),
                (0x20, grant(0x2020, 1)),
                (0xffff, grant(0x3000, 4096)),
            ]),
        },
        ops,
        reaches: |s| {
            s.errors == 13
                && s.physical_refusals == 1
                && s.stalls == 2
                && s.delivered == 1
                && s.dropped == 2
                && s.most_translations == 3
                && s.commands > 100
        },
    }
}

/// The seeds of the `vits` target.
pub fn vits() -> Vec<VitsSeed> {
    Vec::from([its_linux(), its_linux_direct(), its_hostile()])
}

/// [`its_linux`] with the MSIs delivered directly (GICv4): the same
/// translations, and the MSI the hypervisor never sees.
fn its_linux_direct() -> VitsSeed {
    let linux = its_linux();
    VitsSeed {
        name: "linux-direct",
        setup: vits::Setup {
            direct: true,
            ..linux.setup
        },
        ops: linux.ops,
        reaches: |s| {
            s.most_translations == 3 && s.delivered == 0 && s.errors == 0 && s.commands == 21
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{decode_all, encode_all};
    use crate::{decoders, guest, harness, vits};
    use std::path::{Path, PathBuf};
    use std::{env, fs};

    fn dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target)
    }

    /// The committed file is `bytes`, or becomes it with FUZZ_WRITE_SEEDS.
    fn check_file(path: &Path, bytes: &[u8]) {
        if env::var_os("FUZZ_WRITE_SEEDS").is_some() {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
        let file = fs::read(path).unwrap_or_default();
        assert!(
            file == bytes,
            "{} is stale: rewrite it with FUZZ_WRITE_SEEDS=1 cargo test",
            path.display()
        );
    }

    #[test]
    fn vsmmu_seeds_are_current_and_reach_their_states() {
        for seed in vsmmu() {
            let data = encode_all(&seed.setup, &seed.ops);
            let (setup, ops) = decode_all(&data, usize::MAX);
            assert_eq!((setup, &ops), (seed.setup, &seed.ops), "{}", seed.name);
            assert!(ops.len() <= harness::MAX_OPS, "{} is too long", seed.name);
            check_file(&dir("vsmmu").join(seed.name), &data);
            let stats = harness::run(&data);
            assert!((seed.reaches)(&stats), "{}: {stats:?}", seed.name);
        }
    }

    #[test]
    fn vits_seeds_are_current_and_reach_their_states() {
        for seed in super::vits() {
            let data = vits::encode_all(&seed.setup, &seed.ops);
            let (setup, ops) = vits::decode_all(&data, usize::MAX);
            assert_eq!((&setup, &ops), (&seed.setup, &seed.ops), "{}", seed.name);
            assert!(ops.len() <= vits::MAX_OPS, "{} is too long", seed.name);
            check_file(&dir("vits").join(seed.name), &data);
            let stats = vits::run(&data);
            assert!((seed.reaches)(&stats), "{}: {stats:?}", seed.name);
        }
    }

    #[test]
    fn decoder_seeds_are_current() {
        for (name, data) in decoders() {
            check_file(&dir("decoders").join(name), &data);
            decoders::run(&data);
        }
    }

    /// Every file in `fuzz/seeds/<target>/`, generated or a kept crash.
    #[test]
    fn committed_seeds_pass() {
        for target in ["vsmmu", "decoders", "vits", "guest"] {
            for entry in fs::read_dir(dir(target)).unwrap() {
                let data = fs::read(entry.unwrap().path()).unwrap();
                match target {
                    "vsmmu" => {
                        harness::run(&data);
                    }
                    "vits" => {
                        vits::run(&data);
                    }
                    "guest" => guest::run(&data),
                    _ => decoders::run(&data),
                }
            }
        }
    }

    #[test]
    fn empty_and_tiny_inputs_are_fine() {
        for data in [
            &[][..],
            &[0],
            &[0xFF; 7],
            &[1, 2, 3, 4, 5, 6, 1, 0x17, 0, 0xFF],
        ] {
            harness::run(data);
            decoders::run(data);
            vits::run(data);
        }
    }
}
