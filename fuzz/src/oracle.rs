//! What must hold whatever the guest does, stated from IHI 0070 and the
//! rules in docs/ARCHITECTURE.md, independently of the code under test:
//! the oracle never calls the vSMMU's translation, STE composition or event
//! routing, it states what their results must be and checks what the
//! (fake) physical SMMU received.
//!
//! - [`register_bits`]: the bits each guest-visible register may ever hold;
//! - [`expected`], [`forwarded`], [`ste_invalidation`]: what each guest
//!   command must become (CERROR_ILL, forwarded with only the VMID or
//!   StreamID replaced, an STE reinstall, a SYNC, nothing);
//! - [`check_queue`]: consumption, errors, SYNC completion and the budget,
//!   against the physical operations of one access;
//! - [`want`]: what a device's physical stream must be, from its guest STE;
//! - [`guest_owns`] and [`guest_event`]: which physical events are the
//!   guest's and what it must see;
//! - [`physical_command`], [`same_scope`]: what a guest command may become
//!   at all (for the decoders target);
//! - [`check_update_plan`]: a live STE is never seen torn.

use std::collections::BTreeSet;
use std::format;
use std::string::String;
use std::vec::Vec;

use smmu::addr::{Ipa, PhysAddr, StreamId};
use smmu::cmd::Command;
use smmu::event::Event;
use smmu::fake::{LoggedOp, PhysicalOp, StreamState};
use smmu::regs::offset as o;
use smmu::ste::{
    update_plan, used_bits, Eats, S1Config, S1Dss, S1Fmt, StallModel, Ste, UpdateStep, STE_WORDS,
};
use smmu::vsmmu::cmd::Translated;
use smmu::vsmmu::{GuestIrq, GuestMemory, StreamMap, StreamRange, VSmmu, VsmmuPolicy};

use crate::vm::{is_vm_stream, Devices, DEVICES, VMID};

/// CMDQ_CONS.ERR of a command the SMMU does not implement or cannot
/// decode (§4.5).
const CERROR_ILL: u8 = 1;
/// CMDQ_CONS.ERR of a command the SMMU could not fetch (§4.5).
const CERROR_ABT: u8 = 2;

/// Bits [55:32] and bit 62 of a 64-bit base register, seen in its upper
/// half (ADDR's top and RA/WA, §6.3.24, §6.3.26).
const BASE_HI: u32 = 0x00FF_FFFF | (1 << 30);

/// Every 32-bit register of the frame (IHI 0070 §6.2) with the bits a
/// vSMMU advertising stage 1 only, no MSI, no PRI, no ATS may let a guest
/// see. Offsets not listed are RAZ. The IDRs and AIDR are checked for
/// exact values elsewhere.
pub const REGISTERS: &[(usize, u32, &str)] = &[
    (o::IDR0, u32::MAX, "IDR0"),
    (o::IDR1, u32::MAX, "IDR1"),
    (o::IDR2, 0, "IDR2"),
    (o::IDR3, u32::MAX, "IDR3"),
    (o::IDR4, 0, "IDR4"),
    (o::IDR5, u32::MAX, "IDR5"),
    (o::IIDR, 0, "IIDR"),
    (o::AIDR, 0xFF, "AIDR"),
    // SMMUEN, EVENTQEN, CMDQEN (§6.3.9): no PRIQEN, ATSCHK, VMW.
    (o::CR0, 0b1101, "CR0"),
    (o::CR0ACK, 0b1101, "CR0ACK"),
    // Six 2-bit cacheability/shareability fields (§6.3.11).
    (o::CR1, 0xFFF, "CR1"),
    // RECINVSID, PTM; E2H needs Hyp (§6.3.12).
    (o::CR2, 0b110, "CR2"),
    (o::STATUSR, 0, "STATUSR"),
    // MemAttr, MTCFG, ALLOCCFG, SHCFG, PRIVCFG, INSTCFG, ABORT; Update
    // reads 0 once the update completed (§6.3.14).
    (o::GBPA, 0x1F_3F1F, "GBPA"),
    (o::AGBPA, 0, "AGBPA"),
    // GERROR_IRQEN, EVENTQ_IRQEN; no PRIQ_IRQEN (§6.3.16).
    (o::IRQ_CTRL, 0b101, "IRQ_CTRL"),
    (o::IRQ_CTRLACK, 0b101, "IRQ_CTRLACK"),
    // CMDQ_ERR, EVENTQ_ABT_ERR: the only global errors it raises.
    (o::GERROR, 0b101, "GERROR"),
    (o::GERRORN, 0b101, "GERRORN"),
    (o::GERROR_IRQ_CFG0, 0, "GERROR_IRQ_CFG0"),
    (o::GERROR_IRQ_CFG0 + 4, 0, "GERROR_IRQ_CFG0[63:32]"),
    (o::GERROR_IRQ_CFG1, 0, "GERROR_IRQ_CFG1"),
    (o::GERROR_IRQ_CFG2, 0, "GERROR_IRQ_CFG2"),
    // ADDR[31:6] (§6.3.24).
    (o::STRTAB_BASE, 0xFFFF_FFC0, "STRTAB_BASE"),
    (o::STRTAB_BASE + 4, BASE_HI, "STRTAB_BASE[63:32]"),
    // LOG2SIZE, SPLIT, FMT (§6.3.25).
    (o::STRTAB_BASE_CFG, 0x3_07FF, "STRTAB_BASE_CFG"),
    // LOG2SIZE, ADDR[31:5] (§6.3.26).
    (o::CMDQ_BASE, u32::MAX, "CMDQ_BASE"),
    (o::CMDQ_BASE + 4, BASE_HI, "CMDQ_BASE[63:32]"),
    // WR_WRAP + WR (§6.3.27).
    (o::CMDQ_PROD, 0xF_FFFF, "CMDQ_PROD"),
    // RD_WRAP + RD, ERR (§6.3.28).
    (o::CMDQ_CONS, 0xF_FFFF | (0x7F << 24), "CMDQ_CONS"),
    (o::EVENTQ_BASE, u32::MAX, "EVENTQ_BASE"),
    (o::EVENTQ_BASE + 4, BASE_HI, "EVENTQ_BASE[63:32]"),
    // The page-0 copies of EVENTQ_PROD/CONS are not implemented: RAZ.
    (0xA8, 0, "EVENTQ_PROD (page 0)"),
    (0xAC, 0, "EVENTQ_CONS (page 0)"),
    (o::EVENTQ_IRQ_CFG0, 0, "EVENTQ_IRQ_CFG0"),
    (o::EVENTQ_IRQ_CFG0 + 4, 0, "EVENTQ_IRQ_CFG0[63:32]"),
    (o::EVENTQ_IRQ_CFG1, 0, "EVENTQ_IRQ_CFG1"),
    (o::EVENTQ_IRQ_CFG2, 0, "EVENTQ_IRQ_CFG2"),
    (o::PRIQ_BASE, 0, "PRIQ_BASE"),
    (o::PRIQ_BASE + 4, 0, "PRIQ_BASE[63:32]"),
    (0xC8, 0, "PRIQ_PROD (page 0)"),
    (0xCC, 0, "PRIQ_CONS (page 0)"),
    (o::PRIQ_IRQ_CFG0, 0, "PRIQ_IRQ_CFG0"),
    (o::PRIQ_IRQ_CFG0 + 4, 0, "PRIQ_IRQ_CFG0[63:32]"),
    (o::PRIQ_IRQ_CFG1, 0, "PRIQ_IRQ_CFG1"),
    (o::PRIQ_IRQ_CFG2, 0, "PRIQ_IRQ_CFG2"),
    // OVFLG + WR_WRAP + WR (§6.3.95).
    (o::EVENTQ_PROD, 0xF_FFFF | (1 << 31), "EVENTQ_PROD"),
    // OVACKFLG + RD_WRAP + RD (§6.3.96).
    (o::EVENTQ_CONS, 0xF_FFFF | (1 << 31), "EVENTQ_CONS"),
    (o::PRIQ_PROD, 0, "PRIQ_PROD"),
    (o::PRIQ_CONS, 0, "PRIQ_CONS"),
];

/// The bits the 32-bit register at `offset` may hold (0 for RAZ offsets).
pub fn register_bits(offset: usize) -> u32 {
    REGISTERS
        .iter()
        .find(|&&(off, _, _)| off == offset)
        .map_or(0, |&(_, bits, _)| bits)
}

/// The name of the register at `offset`, for messages.
pub fn register_name(offset: usize) -> &'static str {
    REGISTERS
        .iter()
        .find(|&&(off, _, _)| off == offset)
        .map_or("RAZ/WI", |&(_, _, name)| name)
}

/// Registers a guest write may change (all others are RO or RAZ/WI).
pub const WRITABLE: &[usize] = &[
    o::CR0,
    o::CR1,
    o::CR2,
    o::GBPA,
    o::IRQ_CTRL,
    o::GERRORN,
    o::STRTAB_BASE,
    o::STRTAB_BASE + 4,
    o::STRTAB_BASE_CFG,
    o::CMDQ_BASE,
    o::CMDQ_BASE + 4,
    o::CMDQ_PROD,
    o::CMDQ_CONS,
    o::EVENTQ_BASE,
    o::EVENTQ_BASE + 4,
    o::EVENTQ_PROD,
    o::EVENTQ_CONS,
];

/// Whether `value` fits in `bits` bits.
pub fn fits(value: u64, bits: u8) -> bool {
    bits >= 64 || value >> bits == 0
}

/// Whether `c` is something a guest's command may put on the physical
/// queue for this VM under `policy` (what the vSMMU advertises): a stage 1
/// TLB invalidation of the VM's VMID, within the advertised ASID width and
/// range support, or a CD invalidation of one of the VM's physical streams,
/// within the advertised SubstreamID width. Never a stage 2 or EL2
/// invalidation, a CFGI_STE (the hypervisor issues those itself), a SYNC,
/// an ATC invalidation (ATS is not advertised), a PRI or stall command, or
/// a command the physical SMMU would not decode back to itself.
pub fn physical_command(c: &Command, policy: &VsmmuPolicy) -> Result<(), String> {
    let asid_ok = |asid: smmu::addr::Asid| policy.asid16 || asid.0 <= 0xFF;
    let range_ok = |scope: &smmu::cmd::TlbiScope| policy.ril || scope.range.is_none();
    let ok = vm_scoped(c)
        && match *c {
            Command::TlbiNhAsid { asid, .. } => asid_ok(asid),
            Command::TlbiNhVa { asid, scope, .. } => asid_ok(asid) && range_ok(&scope),
            Command::TlbiNhVaa { scope, .. } => range_ok(&scope),
            Command::CfgiCd { ssid, .. } => fits(u64::from(ssid.0), policy.ssid_bits),
            Command::AtcInv { .. } => false,
            _ => true,
        };
    if !ok {
        return Err(format!("a guest must not cause physical {c}"));
    }
    if Command::decode(c.encode()) != Ok(*c) {
        return Err(format!("physical {c} does not encode to itself"));
    }
    Ok(())
}

/// Whether `c` only reaches this VM: a stage 1 TLB invalidation of its
/// VMID, or a CD or ATC invalidation of one of its physical streams.
pub fn vm_scoped(c: &Command) -> bool {
    match *c {
        Command::TlbiNhAll { vmid }
        | Command::TlbiNhAsid { vmid, .. }
        | Command::TlbiNhVa { vmid, .. }
        | Command::TlbiNhVaa { vmid, .. } => vmid == VMID,
        Command::CfgiCd { sid, .. } | Command::CfgiCdAll { sid } | Command::AtcInv { sid, .. } => {
            is_vm_stream(sid)
        }
        _ => false,
    }
}

/// Whether physical `phys` is guest command `guest` with only the VMID or
/// StreamID replaced (the VM's VMID, the mapped physical StreamID): the same
/// opcode (CMD_TLBI_NSNH_ALL aside, which becomes CMD_TLBI_NH_ALL) and the
/// same addresses, ranges, ASIDs and SubstreamIDs, never widened or moved.
pub fn same_scope(guest: &Command, phys: &Command) -> Result<(), String> {
    if *guest == Command::TlbiNsnhAll {
        return if *phys == (Command::TlbiNhAll { vmid: VMID }) {
            Ok(())
        } else {
            Err(format!("NSNH_ALL became {phys}"))
        };
    }
    let (g, p) = (guest.encode(), phys.encode());
    // TLBI: VMID is bits [47:32]; CFGI_CD(_ALL): StreamID is bits [63:32].
    let replaced = match guest.opcode() {
        0x10..=0x13 => 0xFFFFu64 << 32,
        _ => 0xFFFF_FFFFu64 << 32,
    };
    if g[1] != p[1] || g[0] & !replaced != p[0] & !replaced {
        return Err(format!("guest {guest} became {phys}: scope changed"));
    }
    if let (Some(gsid), Some(psid)) = (sid_of(guest), sid_of(phys)) {
        if Devices.physical(gsid) != Some(psid) {
            return Err(format!("guest {guest} became {phys}: wrong StreamID"));
        }
    }
    Ok(())
}

/// What a guest command must become (docs/ARCHITECTURE.md, "Virtual SMMU"): the kind of
/// [`Translated`] the vSMMU must produce, decided here without the code
/// under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Forwarded to the physical queue.
    Forward,
    /// The guest's STEs are re-read.
    Reinstall,
    /// CMD_SYNC.
    Sync,
    /// Nothing to do.
    Drop,
    /// CERROR_ILL: not implemented by what the vSMMU advertises.
    Illegal,
}

/// The [`Expected`] outcome of `guest` on a vSMMU advertising `policy`:
/// stage 1 TLB invalidations are forwarded unless they use a 16-bit ASID
/// or a range without ASID16/RIL; STE invalidations reinstall; CD
/// invalidations are forwarded for a StreamID with a device (dropped
/// otherwise) unless the SubstreamID is beyond SSIDSIZE; prefetches are
/// dropped; stage 2, EL2, ATS, PRI and stall commands are illegal.
pub fn expected(guest: &Command, policy: &VsmmuPolicy) -> Expected {
    let asid_ok = |asid: smmu::addr::Asid| policy.asid16 || asid.0 <= 0xFF;
    let range_ok = |scope: &smmu::cmd::TlbiScope| policy.ril || scope.range.is_none();
    let forward_if = |ok: bool| {
        if ok {
            Expected::Forward
        } else {
            Expected::Illegal
        }
    };
    let device = |sid: StreamId| {
        if Devices.physical(sid).is_some() {
            Expected::Forward
        } else {
            Expected::Drop
        }
    };
    match *guest {
        Command::TlbiNhAll { .. } | Command::TlbiNsnhAll => Expected::Forward,
        Command::TlbiNhAsid { asid, .. } => forward_if(asid_ok(asid)),
        Command::TlbiNhVa { asid, scope, .. } => forward_if(asid_ok(asid) && range_ok(&scope)),
        Command::TlbiNhVaa { scope, .. } => forward_if(range_ok(&scope)),
        Command::CfgiSte { .. } | Command::CfgiSteRange { .. } | Command::CfgiAll => {
            Expected::Reinstall
        }
        Command::CfgiCd { sid, ssid, .. } => {
            if fits(u64::from(ssid.0), policy.ssid_bits) {
                device(sid)
            } else {
                Expected::Illegal
            }
        }
        Command::CfgiCdAll { sid } => device(sid),
        Command::Sync(_) => Expected::Sync,
        Command::PrefetchConfig { .. } | Command::PrefetchAddr { .. } => Expected::Drop,
        Command::AtcInv { .. }
        | Command::TlbiEl2All
        | Command::TlbiEl2Asid { .. }
        | Command::TlbiEl2Va { .. }
        | Command::TlbiEl2Vaa { .. }
        | Command::TlbiS12Vmall { .. }
        | Command::TlbiS2Ipa { .. }
        | Command::PriResp { .. }
        | Command::Resume { .. }
        | Command::StallTerm { .. } => Expected::Illegal,
    }
}

/// The kind of a translation result.
pub fn kind_of(t: &Result<Translated, smmu::cmd::CmdError>) -> Expected {
    match t {
        Ok(Translated::Forward(_)) => Expected::Forward,
        Ok(Translated::ReinstallStes(_)) => Expected::Reinstall,
        Ok(Translated::Sync(_)) => Expected::Sync,
        Ok(Translated::Drop) => Expected::Drop,
        Err(_) => Expected::Illegal,
    }
}

/// The StreamIDs STE invalidation `guest` names, as (a StreamID, log2 of
/// the aligned block around it; 32 for all): §4.3.1 CMD_CFGI_STE one,
/// §4.3.2 CMD_CFGI_STE_RANGE the 2^(Range+1) StreamIDs aligned around its
/// StreamID, §4.3.6 CMD_CFGI_ALL all. `None` for other commands.
pub fn ste_invalidation(guest: &Command) -> Option<(u32, u32)> {
    match *guest {
        Command::CfgiSte { sid, .. } => Some((sid.0, 0)),
        Command::CfgiSteRange { sid, range } => Some((sid.0, u32::from(range) + 1)),
        Command::CfgiAll => Some((0, 32)),
        _ => None,
    }
}

/// Whether StreamID `x` is in the block [`ste_invalidation`] returned.
pub fn names(block: (u32, u32), x: u32) -> bool {
    let (sid, log2) = block;
    log2 >= 32 || x >> log2 == sid >> log2
}

/// Whether `range` is exactly the StreamIDs STE invalidation `guest`
/// names ([`ste_invalidation`]), probed at the VM's devices, the command's
/// StreamID and the block edges.
pub fn reinstall_scope(guest: &Command, range: &StreamRange) -> Result<(), String> {
    let Some(block) = ste_invalidation(guest) else {
        return Err(format!("{guest} reinstalled {range:?}"));
    };
    let (sid, log2) = block;
    let base = if log2 >= 32 {
        0
    } else {
        sid & !((1u32 << log2) - 1)
    };
    let end = base.wrapping_add(if log2 >= 32 { 0 } else { 1u32 << log2 });
    let probes = DEVICES.iter().map(|&(v, _)| v).chain([
        sid,
        base,
        base.wrapping_sub(1),
        end,
        end.wrapping_sub(1),
        0,
        u32::MAX,
    ]);
    for x in probes {
        if range.contains(StreamId(x)) != names(block, x) {
            return Err(format!(
                "{guest} reinstalls {range:?}, which {} StreamID {x:#x}",
                if names(block, x) {
                    "misses"
                } else {
                    "includes"
                }
            ));
        }
    }
    Ok(())
}

fn sid_of(c: &Command) -> Option<StreamId> {
    match *c {
        Command::CfgiCd { sid, .. } | Command::CfgiCdAll { sid } | Command::AtcInv { sid, .. } => {
            Some(sid)
        }
        _ => None,
    }
}

/// The physical command(s) a forwarded guest command must become, built
/// from the guest's own encoding: a stage 1 TLB invalidation with the VMID
/// field (bits [47:32]) replaced by the VM's and every other bit kept (the
/// address, TG/TTL/SCALE/NUM, leaf, ASID: never widened), CMD_TLBI_NSNH_ALL
/// as CMD_TLBI_NH_ALL of the VM (§4.4.4), a CD invalidation with the
/// StreamID field (bits [63:32]) replaced by the device's physical one.
pub fn forwarded(guest: &Command) -> Vec<Command> {
    let [w0, w1] = guest.encode();
    let with_high = |high: u64| [(w0 & 0xFFFF_FFFF) | (high << 32), w1];
    let words = match *guest {
        Command::TlbiNsnhAll => {
            // CMD_TLBI_NH_ALL (opcode 0x10), VMID in bits [47:32].
            [0x10 | (u64::from(VMID.0) << 32), 0]
        }
        Command::TlbiNhAll { .. }
        | Command::TlbiNhAsid { .. }
        | Command::TlbiNhVa { .. }
        | Command::TlbiNhVaa { .. } => [(w0 & !(0xFFFFu64 << 32)) | (u64::from(VMID.0) << 32), w1],
        Command::CfgiCd { sid, .. } | Command::CfgiCdAll { sid } => {
            match DEVICES.iter().find(|&&(v, _)| v == sid.0) {
                Some(&(_, p)) => with_high(u64::from(p)),
                None => return Vec::new(),
            }
        }
        _ => return Vec::new(),
    };
    match Command::decode(words) {
        Ok(c) => Vec::from([c]),
        Err(e) => panic!("oracle: {guest} forwarded as {words:x?} does not decode: {e}"),
    }
}

/// Guest commands (CMD_SYNCs and a command in error included) per access
/// the hypervisor allows itself (docs/ARCHITECTURE.md, "Completion and
/// budget"): a whole queue of the size the vSMMU advertises by default.
pub const COMMANDS: usize = 256;

/// The command queue and global errors as the guest's registers show them
/// (§6.3.9, §6.3.16, §6.3.18, §6.3.26-§6.3.28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdqRegs {
    /// CR0.CMDQEN.
    pub cmdqen: bool,
    /// CMDQ_BASE.LOG2SIZE.
    pub log2: u8,
    /// CMDQ_BASE.ADDR, within the OAS, aligned to the queue's size.
    pub base: u64,
    /// CMDQ_PROD.
    pub prod: u32,
    /// CMDQ_CONS (RD, RD_WRAP, ERR).
    pub cons: u32,
    /// SMMU_GERROR.
    pub gerror: u32,
    /// SMMU_GERRORN.
    pub gerrorn: u32,
    /// IRQ_CTRL.GERROR_IRQEN.
    pub gerror_irqen: bool,
}

impl CmdqRegs {
    /// Reads them from `v` (without side effects), for a vSMMU with an
    /// output address size of `oas_bits`.
    pub fn of(v: &VSmmu, oas_bits: u8) -> Self {
        let r = |off: usize| v.read(off, 4) as u32;
        let base_reg = v.read(o::CMDQ_BASE, 8);
        let log2 = (base_reg & 0x1F) as u8;
        let addr = base_reg & 0x00FF_FFFF_FFFF_FFE0 & mask(oas_bits);
        Self {
            cmdqen: r(o::CR0) & 8 != 0,
            log2,
            base: addr & !((16u64 << log2) - 1),
            prod: r(o::CMDQ_PROD),
            cons: r(o::CMDQ_CONS),
            gerror: r(o::GERROR),
            gerrorn: r(o::GERRORN),
            gerror_irqen: r(o::IRQ_CTRL) & 1 != 0,
        }
    }

    fn wrap_mask(&self) -> u32 {
        (2u32 << self.log2) - 1
    }

    /// CMDQ_CONS.ERR.
    pub fn err(&self) -> u32 {
        (self.cons >> 24) & 0x7F
    }

    /// GERROR.CMDQ_ERR is active (GERROR != GERRORN in bit 0, §7.5).
    pub fn cmdq_err_active(&self) -> bool {
        (self.gerror ^ self.gerrorn) & 1 != 0
    }

    /// The SMMU may consume commands: CMDQEN, no active CMDQ_ERR, and
    /// PROD != CONS in index and wrap bits (§3.5.1).
    pub fn runnable(&self) -> bool {
        self.cmdqen && !self.cmdq_err_active() && (self.prod ^ self.cons) & self.wrap_mask() != 0
    }
}

/// `2^bits - 1`.
fn mask(bits: u8) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// One guest access, what it changed and what the physical side received.
pub struct AccessFacts<'a> {
    /// The queue registers before the access.
    pub before: CmdqRegs,
    /// The queue registers after it.
    pub after: CmdqRegs,
    /// The access is one the hypervisor runs the queue on: a write of
    /// CMDQ_PROD, CR0 or GERRORN, a read of CMDQ_CONS.
    pub kick: bool,
    /// The access wrote a register the stream configuration depends on
    /// (CR0, GBPA, STRTAB_BASE, STRTAB_BASE_CFG): the vSMMU may reinstall
    /// every stream first.
    pub stream_registers: bool,
    /// The guest's memory.
    pub mem: &'a dyn GuestMemory,
    /// What the vSMMU advertises.
    pub policy: &'a VsmmuPolicy,
    /// What the physical side was asked for during the access, in order.
    pub log: &'a [LoggedOp],
    /// The guest interrupts the access raised.
    pub irqs: &'a [GuestIrq],
}

impl core::fmt::Debug for AccessFacts<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AccessFacts")
            .field("before", &self.before)
            .field("after", &self.after)
            .field("kick", &self.kick)
            .field("stream_registers", &self.stream_registers)
            .field("log", &self.log)
            .field("irqs", &self.irqs)
            .finish_non_exhaustive()
    }
}

/// What an access did to the command queue, once [`check_queue`] found it
/// within the rules.
#[derive(Debug, Default)]
pub struct QueueStep {
    /// Guest entries fetched: those CONS passed, and the one that stopped
    /// the queue.
    pub fetched: Vec<u64>,
    /// Physical commands submitted.
    pub submitted: usize,
    /// Physical CMD_SYNCs.
    pub syncs: usize,
    /// The error that stopped the queue (CMDQ_CONS.ERR), if a new one did.
    pub error: Option<u32>,
    /// Indices in [`DEVICES`] of the devices a consumed CMD_CFGI_STE,
    /// CMD_CFGI_STE_RANGE or CMD_CFGI_ALL named.
    pub named: BTreeSet<usize>,
}

/// Checks an access against the command-queue rules, stated from IHI 0070
/// and the hypervisor's documented choices, on what the physical side
/// received (`facts.log`):
///
/// - entries are consumed in queue order from CONS (§3.5.1); an entry that
///   cannot be fetched stops the queue with CERROR_ABT, one that does not
///   decode or that the vSMMU does not implement (see [`expected`]) with
///   CERROR_ILL, CONS at it, GERROR.CMDQ_ERR activated and its interrupt
///   raised when enabled (§4.5, §7.1); nothing of it reaches the physical
///   queue;
/// - each forwarded command reaches the physical queue as [`forwarded`]
///   says, in guest order, nothing else does;
/// - STE invalidations install STEs only for the VM's devices they name;
/// - CONS passes a guest CMD_SYNC only after one physical CMD_SYNC was
///   issued for it, after everything before it (§4.7.3);
/// - at most [`COMMANDS`] commands per access; an access the hypervisor
///   runs the queue on leaves it runnable only with the budget used up (so
///   a guest polling CMDQ_CONS always makes progress); other accesses
///   consume nothing.
pub fn check_queue(f: &AccessFacts<'_>) -> Result<QueueStep, String> {
    let (before, after) = (&f.before, &f.after);
    let mut step = QueueStep::default();
    let mut log = f.log.iter().peekable();
    if f.stream_registers {
        while let Some(LoggedOp {
            op: PhysicalOp::Install { sid, .. },
            ..
        }) = log.peek()
        {
            if !is_vm_stream(*sid) {
                return Err(format!("STE installed for sid {sid}, not the VM's"));
            }
            log.next();
        }
    }
    // Processing starts from the registers as the access left them but
    // for CONS: it cannot be written while CMDQEN, and without CMDQEN
    // nothing is consumed.
    let err_at_start = (before.gerror ^ after.gerrorn) & 1 != 0;
    let wrap = after.wrap_mask();
    let index_mask = wrap >> 1;
    let rd0 = before.cons & wrap;
    let prod = after.prod & wrap;
    let new_error = after.cmdq_err_active() && !err_at_start;
    let passed = if after.cmdqen && !err_at_start {
        (after.cons & wrap).wrapping_sub(rd0) & wrap
    } else {
        0
    };
    if passed > prod.wrapping_sub(rd0) & wrap {
        return Err(format!(
            "CONS moved {:#x} -> {:#x}, past PROD {:#x}",
            before.cons, after.cons, after.prod
        ));
    }
    if (passed > 0 || new_error) && !f.kick {
        return Err(format!(
            "an access that does not run the queue consumed {passed} entries (error: {new_error})"
        ));
    }
    for k in 0..passed + u32::from(new_error) {
        let addr = after.base + u64::from((rd0 + k) & index_mask) * 16;
        step.fetched.push(addr);
        let stops = k == passed;
        let mut bytes = [0u8; 16];
        let guest = if f.mem.read(Ipa(addr), &mut bytes).is_err() {
            None
        } else {
            let lo = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            let hi = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
            Some(Command::decode([lo, hi]))
        };
        let expect_error = match &guest {
            None => Some(CERROR_ABT),
            Some(Err(_)) => Some(CERROR_ILL),
            Some(Ok(c)) if expected(c, f.policy) == Expected::Illegal => Some(CERROR_ILL),
            Some(Ok(_)) => None,
        };
        if stops {
            let Some(code) = expect_error else {
                return Err(format!(
                    "the queue stopped with ERR {} at {guest:?} (entry at {addr:#x})",
                    after.err()
                ));
            };
            if after.err() != u32::from(code) {
                return Err(format!(
                    "{guest:?} at {addr:#x} stopped the queue with ERR {}, not {code}",
                    after.err()
                ));
            }
            step.error = Some(u32::from(code));
            break;
        }
        let Some(Ok(guest)) = guest else {
            return Err(format!("CONS passed the bad entry {guest:?} at {addr:#x}"));
        };
        match expected(&guest, f.policy) {
            Expected::Illegal => {
                return Err(format!("CONS passed {guest}, which is CERROR_ILL"));
            }
            Expected::Forward => {
                for want in forwarded(&guest) {
                    match log.next() {
                        Some(LoggedOp {
                            op: PhysicalOp::Submit(c),
                            ..
                        }) if c.encode() == want.encode() => step.submitted += 1,
                        other => {
                            return Err(format!(
                                "guest {guest} must become physical {want}, the SMMU got {other:?}"
                            ))
                        }
                    }
                }
            }
            Expected::Reinstall => {
                let block = ste_invalidation(&guest).expect("an STE invalidation");
                for (i, &(v, _)) in DEVICES.iter().enumerate() {
                    if names(block, v) {
                        step.named.insert(i);
                    }
                }
                // Its installs, if any (none when a stream already has
                // what its guest STE says); one not named here may belong
                // to the next command, else it is left over below.
                while let Some(LoggedOp {
                    op: PhysicalOp::Install { sid, .. },
                    ..
                }) = log.peek()
                {
                    if !DEVICES.iter().any(|&(v, p)| p == sid.0 && names(block, v)) {
                        break;
                    }
                    log.next();
                }
            }
            Expected::Sync => match log.next() {
                Some(LoggedOp {
                    op: PhysicalOp::Sync,
                    ..
                }) => step.syncs += 1,
                other => {
                    return Err(format!(
                        "CONS passed a guest CMD_SYNC, the SMMU got {other:?} instead of CMD_SYNC"
                    ))
                }
            },
            Expected::Drop => {}
        }
    }
    if let Some(op) = log.next() {
        return Err(format!(
            "the SMMU got {op:?}, which no guest command of this access asked for"
        ));
    }
    let consumed = passed as usize + usize::from(new_error);
    if consumed > COMMANDS {
        return Err(format!("{consumed} commands in one access"));
    }
    if f.kick && after.runnable() && consumed < COMMANDS {
        return Err(format!(
            "the queue was left runnable (CONS {:#x}, PROD {:#x}) after {consumed} commands",
            after.cons, after.prod
        ));
    }
    if !new_error && after.cmdqen && after.err() != before.err() {
        return Err(format!(
            "CMDQ_CONS.ERR {} -> {} without an error",
            before.err(),
            after.err()
        ));
    }
    let gerror_irq = f.irqs.contains(&GuestIrq::GlobalError);
    if f.irqs.contains(&GuestIrq::Event) {
        return Err("a register access raised the event-queue interrupt".into());
    }
    if gerror_irq && !after.gerror_irqen {
        return Err("global-error interrupt raised while GERROR_IRQEN == 0".into());
    }
    if new_error && after.gerror_irqen && !gerror_irq {
        return Err("a command error without the global-error interrupt".into());
    }
    Ok(step)
}

/// Guest memory reads: (address, length).
pub type Reads = Vec<(u64, usize)>;

/// Why a stream's guest STE must be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No STE for the StreamID: the guest sees C_BAD_STREAMID (§7.3.2).
    NoStream,
    /// The STE has V == 0: the guest sees C_BAD_STE (§5.2).
    Invalid,
    /// The guest's stream table cannot be read at this IPA: the guest sees
    /// F_STE_FETCH there (§7.3.4).
    Fetch(Ipa),
    /// The STE is ILLEGAL for what the vSMMU advertises: C_BAD_STE
    /// (§7.3.5).
    Illegal,
}

/// What the physical stream of a device must be configured to, given its
/// guest STE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Abort (no event).
    Abort,
    /// The VM's stage 2 alone.
    Stage2,
    /// Nested: exactly this stage 1 over the VM's stage 2.
    Nested(S1Config),
    /// Invalid, so that transactions are recorded as C_BAD_STE.
    Refused(Refusal),
}

impl Want {
    /// Whether the physical stream's state is this.
    pub fn is(&self, state: StreamState) -> bool {
        match (self, state) {
            (Want::Abort, StreamState::Abort) | (Want::Stage2, StreamState::Stage2) => true,
            (Want::Nested(a), StreamState::Nested(b)) => *a == b,
            (Want::Refused(_), StreamState::Invalid) => true,
            _ => false,
        }
    }
}

/// The guest's stream table as SMMU_STRTAB_BASE and SMMU_STRTAB_BASE_CFG
/// describe it (§6.3.24, §6.3.25, §3.4), with the vSMMU's documented
/// choices for out-of-range values: LOG2SIZE at most SIDSIZE, FMT other
/// than 2-level is linear, a reserved SPLIT is the next lower of 6, 8, 10,
/// the base within OAS and aligned to the (level 1) table's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTable {
    /// Effective base.
    pub base: u64,
    /// 2-level.
    pub two_level: bool,
    /// Effective LOG2SIZE.
    pub log2size: u32,
    /// Effective SPLIT.
    pub split: u32,
}

impl StreamTable {
    /// From the register file (without side effects), for a vSMMU
    /// advertising `policy`.
    pub fn of(v: &VSmmu, policy: &VsmmuPolicy) -> Self {
        let cfg = v.read(o::STRTAB_BASE_CFG, 4) as u32;
        let log2size = (cfg & 0x3F).min(u32::from(policy.sid_bits));
        let two_level = (cfg >> 16) & 3 == 1;
        let split = match (cfg >> 6) & 0x1F {
            s if s >= 10 => 10,
            s if s >= 8 => 8,
            _ => 6,
        };
        let table_log2 = if two_level {
            log2size.saturating_sub(split) + 3
        } else {
            log2size + 6
        };
        let base = v.read(o::STRTAB_BASE, 8) & 0x00FF_FFFF_FFFF_FFC0 & mask(policy.oas_bits);
        Self {
            base: base & !((1u64 << table_log2.max(6)) - 1),
            two_level,
            log2size,
            split,
        }
    }

    /// Finds the STE of `vsid` as the SMMU walks the table (§3.3.1, §5.1):
    /// `Ok(None)` when there is none (beyond LOG2SIZE, an L1 descriptor
    /// with Span 0 or beyond SPLIT + 1, a StreamID beyond its Span), the
    /// STE's words, or the address that could not be read. Also returns
    /// the reads it made (address, length).
    pub fn walk(&self, mem: &dyn GuestMemory, vsid: u32) -> (Result<Option<[u64; 8]>, Ipa>, Reads) {
        let mut reads = Vec::new();
        let mut read = |addr: u64, buf: &mut [u8]| {
            reads.push((addr, buf.len()));
            mem.read(Ipa(addr), buf).map_err(|_| Ipa(addr))
        };
        if self.log2size < 32 && vsid >> self.log2size != 0 {
            return (Ok(None), reads);
        }
        let ste_addr = if self.two_level {
            let l1 = self.base + u64::from(vsid >> self.split) * 8;
            let mut raw = [0u8; 8];
            if let Err(a) = read(l1, &mut raw) {
                return (Err(a), reads);
            }
            let desc = u64::from_le_bytes(raw);
            // L1STD (§5.1): Span [4:0], L2Ptr [55:6], whose bits below the
            // size of the level 2 array are treated as 0.
            let span = (desc & 0x1F) as u32;
            let index = vsid & ((1 << self.split) - 1);
            if span == 0 || span > self.split + 1 || index >> (span - 1) != 0 {
                return (Ok(None), reads);
            }
            let l2 = desc & 0x00FF_FFFF_FFFF_FFC0 & !((64u64 << (span - 1)) - 1);
            l2 + u64::from(index) * 64
        } else {
            self.base + u64::from(vsid) * 64
        };
        let mut raw = [0u8; 64];
        if let Err(a) = read(ste_addr, &mut raw) {
            return (Err(a), reads);
        }
        let mut words = [0u64; 8];
        for (w, chunk) in words.iter_mut().zip(raw.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
        (Ok(Some(words)), reads)
    }
}

/// What the physical stream of guest StreamID `vsid` must be, from the
/// guest's registers and memory, the VM's IPA size and the physical stall
/// model (docs/ARCHITECTURE.md, "What is taken from the guest STE"; the
/// fields and their bits from §5.2):
///
/// - SMMUEN == 0: GBPA.ABORT aborts, otherwise the VM's stage 2 (bypass);
/// - an unreadable stream table: refused, reported as F_STE_FETCH;
/// - no STE: invalid, reported as C_BAD_STREAMID;
/// - V == 0: invalid, reported as C_BAD_STE;
/// - Config abort or reserved: abort;
/// - Config bypass: the VM's stage 2;
/// - Config stage 2 or nested (stage 2 is not advertised): refused;
/// - Config stage 1: refused when ILLEGAL for a stage-1-only,
///   terminate-only SMMU (S1STALLD set; S1CDMax above SSIDSIZE; a 2-level
///   S1Fmt with substreams and without CD2L) or when S1ContextPtr is
///   outside the VM; otherwise nested with S1ContextPtr, S1Fmt, S1CDMax,
///   S1DSS, S1CIR, S1COR and S1CSH from the guest (normalised where the
///   SMMU ignores them: no substreams without SSIDSIZE, linear and
///   terminate without substreams, reserved encodings as what they behave
///   as), S1STALLD set only on a stall-capable physical SMMU (the guest is
///   offered no stall), EATS 0 (no ATS), nothing else.
pub fn want(
    v: &VSmmu,
    mem: &dyn GuestMemory,
    vsid: u32,
    ipa_bits: u8,
    stall: StallModel,
) -> (Want, Reads) {
    let policy = v.policy();
    let cr0 = v.read(o::CR0, 4);
    if cr0 & 1 == 0 {
        let abort = v.read(o::GBPA, 4) & (1 << 20) != 0;
        return (if abort { Want::Abort } else { Want::Stage2 }, Vec::new());
    }
    let (ste, reads) = StreamTable::of(v, policy).walk(mem, vsid);
    let w = match ste {
        Err(addr) => return (Want::Refused(Refusal::Fetch(addr)), reads),
        Ok(None) => return (Want::Refused(Refusal::NoStream), reads),
        Ok(Some(w)) => w,
    };
    let field = |word: usize, lo: u32, bits: u32| (w[word] >> lo) & ((1 << bits) - 1);
    let (valid, config) = (field(0, 0, 1) == 1, field(0, 1, 3));
    let want = match (valid, config) {
        (false, _) => Want::Refused(Refusal::Invalid),
        (true, 0b000..=0b011) => Want::Abort,
        (true, 0b100) => Want::Stage2,
        (true, 0b110 | 0b111) => Want::Refused(Refusal::Illegal),
        (true, _) => {
            let ctx = w[0] & 0x00FF_FFFF_FFFF_FFC0;
            let s1fmt = field(0, 4, 2) as u8;
            let cdmax = field(0, 59, 5) as u8;
            let s1stalld = field(1, 27, 1) == 1;
            let ssid = policy.ssid_bits;
            let illegal = s1stalld
                || (ssid != 0 && cdmax > ssid)
                || (ssid != 0 && cdmax != 0 && !policy.cd2l && matches!(s1fmt, 1 | 2))
                || !fits(ctx, policy.oas_bits.min(ipa_bits));
            if illegal {
                Want::Refused(Refusal::Illegal)
            } else {
                let s1cdmax = if ssid == 0 { 0 } else { cdmax };
                let (s1fmt, s1dss) = if s1cdmax == 0 {
                    (S1Fmt::Linear, S1Dss::Terminate)
                } else {
                    let fmt = match s1fmt {
                        1 => S1Fmt::TwoLevel4K,
                        2 => S1Fmt::TwoLevel64K,
                        _ => S1Fmt::Linear,
                    };
                    let dss = match field(1, 0, 2) {
                        1 => S1Dss::Bypass,
                        2 => S1Dss::Ssid0,
                        _ => S1Dss::Terminate,
                    };
                    (fmt, dss)
                };
                Want::Nested(S1Config {
                    ctx_ptr: Ipa(ctx),
                    s1fmt,
                    s1cdmax,
                    s1dss,
                    s1cir: field(1, 2, 2) as u8,
                    s1cor: field(1, 4, 2) as u8,
                    s1csh: field(1, 6, 2) as u8,
                    s1stalld: stall == StallModel::StallAndTerminate,
                    eats: Eats::Abort,
                })
            }
        }
    };
    (want, reads)
}

/// Whether physical event `e` is the guest's (docs/ARCHITECTURE.md, "Event
/// routing"), for a stream whose physical state is `state` (`None`: not
/// one of the VM's): stage-1 faults (S2 == 0), C_BAD_CD, F_CD_FETCH,
/// C_BAD_SUBSTREAMID, and C_BAD_STE of a stream the vSMMU refused. Stage-2
/// faults, of CD fetches and walks too, are the hypervisor's.
pub fn guest_owns(e: &Event, state: Option<StreamState>) -> bool {
    let Some(state) = state else {
        return false;
    };
    match e {
        Event::Fault { info, .. } => !info.s2,
        Event::BadCd { .. } | Event::CdFetch { .. } | Event::BadSubstreamId { .. } => true,
        Event::BadSte { .. } => state == StreamState::Invalid,
        _ => false,
    }
}

/// The record the guest must find for physical record `words` of its
/// device `vsid` (`None`: nothing, the record cannot be written): the same
/// event with the guest's StreamID in bits [63:32] (§7.3), or for
/// C_BAD_STE of a refused stream the event the refusal stands for, with
/// the transaction's SubstreamID.
pub fn guest_event(words: [u64; 4], vsid: u32, refusal: Option<Refusal>) -> Option<Event> {
    let physical = Event::decode(words);
    if let (Event::BadSte { ssid, .. }, Some(why)) = (physical, refusal) {
        let sid = StreamId(vsid);
        return Some(match why {
            Refusal::NoStream => Event::BadStreamId { sid, ssid },
            Refusal::Invalid | Refusal::Illegal => Event::BadSte { sid, ssid },
            Refusal::Fetch(addr) => Event::SteFetch {
                sid,
                ssid,
                reason: 0,
                gpcf: false,
                fetch_addr: PhysAddr(addr.0),
            },
        });
    }
    physical.encode().ok()?;
    Some(Event::decode([
        (words[0] & 0xFFFF_FFFF) | (u64::from(vsid) << 32),
        words[1],
        words[2],
        words[3],
    ]))
}

/// Whether two STEs configure the same thing (equal in the bits each uses).
fn same_config(a: &Ste, b: &Ste) -> bool {
    let (ua, ub) = (used_bits(a), used_bits(b));
    ua == ub && (0..STE_WORDS).all(|w| a.0[w] & ua[w] == b.0[w] & ub[w])
}

/// Follows [`update_plan`] from `old` to `new` as the SMMU could observe
/// it (§3.21.3: it may fetch each word written since the last CFGI_STE +
/// SYNC either old or new): every STE it could assemble at a sync point is
/// non-live, `old`'s configuration or `new`'s, and the plan ends at `new`.
pub fn check_update_plan(old: &Ste, new: &Ste) -> Result<(), String> {
    let plan = update_plan(old, new);
    let mut base = *old;
    let mut pending: Vec<(usize, u64)> = Vec::new();
    for step in plan.steps() {
        match *step {
            UpdateStep::Write { word, value } => {
                let word = usize::from(word);
                if word >= STE_WORDS || pending.iter().any(|&(w, _)| w == word) {
                    return Err(format!("plan writes word {word} twice between syncs"));
                }
                pending.push((word, value));
            }
            UpdateStep::Sync => {
                for subset in 0u32..(1 << pending.len()) {
                    let mut seen = base;
                    for (i, &(w, v)) in pending.iter().enumerate() {
                        if subset & (1 << i) != 0 {
                            seen.0[w] = v;
                        }
                    }
                    if seen.is_live() && !same_config(&seen, old) && !same_config(&seen, new) {
                        return Err(format!(
                            "the SMMU could see torn {seen:?} going from {old:?} to {new:?}"
                        ));
                    }
                }
                for (w, v) in pending.drain(..) {
                    base.0[w] = v;
                }
            }
        }
    }
    if !pending.is_empty() || base != *new {
        return Err(format!("plan from {old:?} does not end at {new:?}"));
    }
    Ok(())
}
