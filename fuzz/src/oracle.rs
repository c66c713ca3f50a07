//! What must hold whatever the guest does, written down independently of
//! the code under test (from IHI 0070 and the rules in docs/ARCHITECTURE.md), so that the
//! fuzz targets can check it after every step:
//!
//! - [`register_bits`]: the bits each guest-visible register may ever hold;
//! - [`physical_command`] and [`same_scope`]: what a guest command may
//!   become on the physical queue;
//! - [`expected`] and [`reinstall_scope`]: what each guest command must
//!   become;
//! - [`CmdqModel`]: a plain reference model of command-queue consumption;
//! - [`check_update_plan`]: a live STE is never seen torn.

use std::format;
use std::string::String;
use std::vec::Vec;

use smmu::addr::{Ipa, StreamId};
use smmu::cmd::Command;
use smmu::regs::offset as o;
use smmu::ste::{update_plan, used_bits, Ste, UpdateStep, STE_WORDS};
use smmu::vsmmu::cmd::{translate_checked, Translated};
use smmu::vsmmu::regs::{CmdqWork, CERROR_ABT, CERROR_ILL};
use smmu::vsmmu::{GuestMemory, StreamMap, StreamRange, VSmmu, VsmmuPolicy};

use crate::vm::{is_vm_stream, Devices, DEVICES, VMID};

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
        Ok(Translated::Sync) => Expected::Sync,
        Ok(Translated::Drop) => Expected::Drop,
        Err(_) => Expected::Illegal,
    }
}

/// Whether `range` is exactly the StreamIDs STE invalidation `guest`
/// names (§4.3.1, §4.3.2: CMD_CFGI_STE_RANGE covers the 2^(Range+1)
/// StreamIDs aligned around its StreamID; §4.3.6: CMD_CFGI_ALL, all),
/// probed at the VM's devices, the command's StreamID and the block edges.
pub fn reinstall_scope(guest: &Command, range: &StreamRange) -> Result<(), String> {
    let (sid, log2) = match *guest {
        Command::CfgiSte { sid, .. } => (sid.0, 0u32),
        Command::CfgiSteRange { sid, range } => (sid.0, u32::from(range) + 1),
        Command::CfgiAll => (0, 32),
        _ => return Err(format!("{guest} reinstalled {range:?}")),
    };
    let named = |x: u32| log2 >= 32 || x >> log2 == sid >> log2;
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
        if range.contains(StreamId(x)) != named(x) {
            return Err(format!(
                "{guest} reinstalls {range:?}, which {} StreamID {x:#x}",
                if named(x) { "misses" } else { "includes" }
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

/// What [`VSmmu::process_commands`] must do, computed by a plain model of
/// the queue (§3.5: index and wrap bits, entries of 16 bytes at CMDQ_BASE;
/// §4.5: stop at the first error with CONS at it; §4.7.3: stop at a SYNC
/// with CONS at it).
#[derive(Debug, Default)]
pub struct CmdqModel {
    /// The physical work, in order.
    pub work: Vec<CmdqWork>,
    /// Each guest command with what it became, for [`same_scope`].
    pub forwarded: Vec<(Command, Vec<Command>)>,
    /// Translations that break [`expected`] or [`reinstall_scope`].
    pub violations: Vec<String>,
    /// Stopped at a CMD_SYNC.
    pub sync: bool,
    /// Stopped at the budget with entries left.
    pub more: bool,
    /// Stopped at an error (CMDQ_CONS.ERR).
    pub error: Option<u8>,
    /// Entries consumed (the SYNC and the failing one included).
    pub consumed: usize,
    /// CMDQ_CONS.RD_WRAP/RD afterwards (index and wrap bits only).
    pub rd: u32,
}

impl CmdqModel {
    /// Runs the model on the state of `v` (before the call under test).
    pub fn run(v: &VSmmu, mem: &dyn GuestMemory, budget: usize) -> Self {
        let (log2, base) = v.cmdq_geometry();
        let wrap_mask = (2u32 << log2) - 1;
        let index_mask = (1u32 << log2) - 1;
        let prod = v.read(o::CMDQ_PROD, 4) as u32 & wrap_mask;
        let mut m = Self {
            rd: v.read(o::CMDQ_CONS, 4) as u32 & wrap_mask,
            ..Self::default()
        };
        let gerror = v.read(o::GERROR, 4) ^ v.read(o::GERRORN, 4);
        if !v.cmdq_enabled() || v.sync_pending() || gerror & 1 != 0 {
            return m;
        }
        while m.rd != prod {
            if m.consumed == budget {
                m.more = true;
                break;
            }
            let addr = base.0 + u64::from(m.rd & index_mask) * 16;
            let mut bytes = [0u8; 16];
            if mem.read(Ipa(addr), &mut bytes).is_err() {
                m.error = Some(CERROR_ABT);
                break;
            }
            m.consumed += 1;
            let mut words = [0u64; 2];
            for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
                *w = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
            }
            let Ok(guest) = Command::decode(words) else {
                m.error = Some(CERROR_ILL);
                break;
            };
            let translated = translate_checked(&guest, VMID, &Devices, v.policy());
            let want = expected(&guest, v.policy());
            if kind_of(&translated) != want {
                m.violations.push(format!(
                    "guest {guest} became {translated:?}, expected {want:?}"
                ));
            }
            if let Ok(Translated::ReinstallStes(range)) = &translated {
                m.violations.extend(reinstall_scope(&guest, range).err());
            }
            match translated {
                Err(_) => {
                    m.error = Some(CERROR_ILL);
                    break;
                }
                Ok(Translated::Forward(cmds)) => {
                    m.work.extend(cmds.iter().copied().map(CmdqWork::Submit));
                    m.forwarded.push((guest, cmds));
                }
                Ok(Translated::ReinstallStes(range)) => m.work.push(CmdqWork::Reinstall(range)),
                Ok(Translated::Drop) => {}
                Ok(Translated::Sync) => {
                    m.sync = true;
                    break;
                }
            }
            m.rd = (m.rd + 1) & wrap_mask;
        }
        m
    }
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
