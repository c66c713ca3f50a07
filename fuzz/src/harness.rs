//! The `vsmmu` target: one VM's vSMMU driven by [`Op`]s the way the
//! hypervisor drives it (`hyp/src/vm/vsmmu.rs`: register accesses, command
//! rounds with a budget, SYNC completion, STE reinstalls, event injection),
//! with the [`oracle`](crate::oracle) checked after every step. A broken
//! invariant panics with the step, the operation and the setup.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::string::String;
use std::vec::Vec;
use std::{format, vec};

use smmu::addr::{Ipa, PhysAddr, StreamId};
use smmu::cd::{CdLocation, CdLookup, CdPolicy, CdTable, ContextDescriptor, L1Cd};
use smmu::event::Event;
use smmu::fake::{nested_ste_policy, FakeGuestMemory};
use smmu::regs::{offset as o, Features};
use smmu::ste::{Config, Eats, Httu, StallModel, Ste, SteKind, TtEndian};
use smmu::strtab::L1Std;
use smmu::vsmmu::regs::CmdqWork;
use smmu::vsmmu::ste::{compose, compose_with_stall, read_guest_ste, refusal_event, VsteError};
use smmu::vsmmu::{
    GuestMemError, GuestMemory, InjectOutcome, StreamRange, VSmmu, VsmmuAction, VsmmuPolicy,
};

use crate::ops::{decode_all, Op, Setup};
use crate::oracle::{
    check_update_plan, fits, physical_command, register_bits, register_name, same_scope, CmdqModel,
    REGISTERS, WRITABLE,
};
use crate::vm::{s2, Devices, DEVICES, L2, L2_SLOT, L2_SLOTS, RAM, RAM_SIZE, VMID, VM_IPA_BITS};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 512;
/// Guest commands per round and rounds per trap, as in the hypervisor.
const BUDGET: usize = 64;
const ROUNDS: usize = 4;

/// EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG (§6.3.95, §6.3.96).
const OVFLG: u32 = 1 << 31;

/// What one input exercised (for the seeds' tests and for curiosity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Guest register accesses.
    pub mmio: usize,
    /// Guest commands consumed.
    pub guest_commands: usize,
    /// Physical commands the guest's became.
    pub physical_commands: usize,
    /// Guest CMD_SYNCs completed.
    pub syncs: usize,
    /// Command-queue errors (CERROR_ILL, CERROR_ABT).
    pub cmdq_errors: usize,
    /// Physical STEs installed for the VM's devices.
    pub installs: usize,
    /// Guest STEs composed into nested STEs.
    pub nested: usize,
    /// Guest STEs (bypass) composed into the VM's stage 2 alone.
    pub stage2_only: usize,
    /// Guest STEs composed into abort.
    pub aborts: usize,
    /// Guest STEs refused as ILLEGAL.
    pub refused: usize,
    /// C_BAD_STE events of refused STEs reported to the guest.
    pub refusals_reported: usize,
    /// Guest stream tables that could not be read.
    pub fetch_errors: usize,
    /// Valid CDs found behind nested STEs.
    pub valid_cds: usize,
    /// Event records written to the guest's queue.
    pub events: usize,
    /// Events lost to a full queue.
    pub overflows: usize,
}

/// Runs one input: the `vsmmu` fuzz target.
pub fn run(data: &[u8]) -> Stats {
    let (setup, ops) = decode_all(data, MAX_OPS);
    let mut world = World::new(setup);
    for (step, op) in ops.iter().enumerate() {
        world.step = step;
        world.op = Some(op.clone());
        world.apply(op);
        world.check_registers();
    }
    world.stats
}

/// Guest memory that records each access the code under test makes.
struct Recorder<'a> {
    mem: &'a FakeGuestMemory,
    reads: RefCell<Vec<(u64, usize)>>,
    /// Address, length, whether it succeeded.
    writes: RefCell<Vec<(u64, usize, bool)>>,
}

impl<'a> Recorder<'a> {
    fn new(mem: &'a FakeGuestMemory) -> Self {
        Self {
            mem,
            reads: RefCell::new(Vec::new()),
            writes: RefCell::new(Vec::new()),
        }
    }
}

impl GuestMemory for Recorder<'_> {
    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), GuestMemError> {
        self.reads.borrow_mut().push((ipa.0, buf.len()));
        self.mem.read(ipa, buf)
    }

    fn write(&self, ipa: Ipa, buf: &[u8]) -> Result<(), GuestMemError> {
        let r = self.mem.write(ipa, buf);
        self.writes.borrow_mut().push((ipa.0, buf.len(), r.is_ok()));
        r
    }
}

/// Panics with the step and operation unless `$cond` holds.
macro_rules! ensure {
    ($world:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            $world.fail(format_args!($($msg)+))
        }
    };
}

/// One VM with a vSMMU, and what the hypervisor installed for its devices.
struct World {
    vsmmu: VSmmu,
    mem: FakeGuestMemory,
    setup: Setup,
    idrs: [u32; 6],
    /// The physical STE of each of [`DEVICES`].
    installed: [Ste; DEVICES.len()],
    /// Why the guest STE of each of [`DEVICES`] was refused, if it was.
    refused: [Option<VsteError>; DEVICES.len()],
    stats: Stats,
    step: usize,
    /// The operation being checked, for messages.
    op: Option<Op>,
}

impl World {
    fn new(setup: Setup) -> Self {
        let vsmmu = VSmmu::new(setup.policy);
        let world = Self {
            idrs: vsmmu.idrs(),
            vsmmu,
            mem: FakeGuestMemory::new(Ipa(RAM), RAM_SIZE),
            setup,
            installed: [Ste::abort(); DEVICES.len()],
            refused: [None; DEVICES.len()],
            stats: Stats::default(),
            step: 0,
            op: None,
        };
        world.check_idrs();
        world
    }

    fn policy(&self) -> VsmmuPolicy {
        *self.vsmmu.policy()
    }

    #[track_caller]
    fn fail(&self, msg: fmt::Arguments<'_>) -> ! {
        panic!(
            "vSMMU invariant broken at step {} ({:?}), {:?}:\n  {msg}",
            self.step, self.op, self.setup
        )
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Read { offset, size } => self.mmio_read(*offset, *size),
            Op::Write {
                offset,
                size,
                value,
            } => self.mmio_write(*offset, *size, *value),
            Op::PushCommand(words) => self.push_command(*words),
            Op::Process { budget } => {
                let next = self.process(*budget);
                self.run(next);
            }
            Op::CompleteSync => {
                let next = self.complete_sync();
                self.run(next);
            }
            Op::Poke { ipa, bytes } => {
                let _ = self.mem.write(Ipa(*ipa), bytes);
            }
            Op::WriteSte { vsid, ste } => self.write_guest_ste(*vsid, ste),
            Op::Reinstall(range) => self.reinstall(range),
            Op::Compose(vsid) => {
                let _ = self.compose(*vsid);
            }
            Op::Inject { vsid, words } => self.inject(*vsid, *words),
        }
    }

    // ---- what the hypervisor does (hyp/src/vm/vsmmu.rs) ----

    /// Carries out register-write and command-round actions, at most
    /// `ROUNDS` command rounds of `BUDGET`, as `VmVsmmu::run`.
    fn run(&mut self, actions: Vec<VsmmuAction>) {
        let mut todo: VecDeque<VsmmuAction> = actions.into();
        let mut rounds = 0;
        while let Some(action) = todo.pop_front() {
            match action {
                VsmmuAction::ProcessCommands => {
                    if rounds < ROUNDS {
                        rounds += 1;
                        let next = self.process(BUDGET);
                        todo.extend(next);
                    }
                }
                VsmmuAction::StreamTableChanged => self.reinstall(&StreamRange::All),
                VsmmuAction::RaiseEventIrq => ensure!(
                    self,
                    self.vsmmu.evtq_irq_enabled(),
                    "event interrupt raised while EVENTQ_IRQEN == 0"
                ),
                VsmmuAction::RaiseGerrorIrq => ensure!(
                    self,
                    self.vsmmu.gerror_irq_enabled(),
                    "global-error interrupt raised while GERROR_IRQEN == 0"
                ),
            }
        }
    }

    /// Reinstalls the STEs of the VM's devices in `range`, as
    /// `VmVsmmu::reinstall` (a refused guest STE becomes an invalid
    /// physical one), checking each update's plan.
    fn reinstall(&mut self, range: &StreamRange) {
        for (i, &(vsid, _)) in DEVICES.iter().enumerate() {
            if !range.contains(StreamId(vsid)) {
                continue;
            }
            let composed = if !self.vsmmu.smmu_enabled() {
                if self.vsmmu.gbpa_abort() {
                    Ok(Ste::abort())
                } else {
                    Ok(Ste::stage2(&s2()))
                }
            } else {
                self.compose(vsid)
            };
            self.refused[i] = composed.err();
            let new = composed.unwrap_or(Ste::invalid());
            if let Err(e) = check_update_plan(&self.installed[i], &new) {
                self.fail(format_args!("installing the STE of vSID {vsid:#x}: {e}"));
            }
            self.installed[i] = new;
            self.stats.installs += 1;
        }
    }

    // ---- the guest ----

    fn mmio_read(&mut self, offset: usize, size: usize) {
        self.stats.mmio += 1;
        // A guest polling CMDQ_CONS makes progress on its queue.
        if offset == o::CMDQ_CONS && self.vsmmu.cmdq_enabled() {
            self.run(vec![VsmmuAction::ProcessCommands]);
        }
        let value = self.vsmmu.read(offset, size);
        let hi = offset.wrapping_add(4);
        let allowed = match size {
            4 if offset.is_multiple_of(4) => u64::from(register_bits(offset)),
            8 if offset.is_multiple_of(8) => {
                u64::from(register_bits(offset)) | (u64::from(register_bits(hi)) << 32)
            }
            _ => 0,
        };
        ensure!(
            self,
            value & !allowed == 0,
            "{size}-byte read at {offset:#x} ({}) = {value:#x}, beyond the architected {allowed:#x}",
            register_name(offset)
        );
        if size == 8 && offset.is_multiple_of(8) {
            let halves = self.vsmmu.read(offset, 4) | (self.vsmmu.read(hi, 4) << 32);
            ensure!(
                self,
                value == halves,
                "64-bit read at {offset:#x} = {value:#x}, its halves {halves:#x}"
            );
        }
    }

    fn mmio_write(&mut self, offset: usize, size: usize, value: u64) {
        self.stats.mmio += 1;
        let before = self.vsmmu.clone();
        let actions = self.vsmmu.write(offset, size, value);
        let words: Vec<usize> = match size {
            4 if offset.is_multiple_of(4) => vec![offset],
            8 if offset.is_multiple_of(8) => vec![offset, offset.wrapping_add(4)],
            _ => vec![],
        };
        if !words.iter().any(|w| WRITABLE.contains(w)) {
            ensure!(
                self,
                actions.is_empty() && dump(&before) == dump(&self.vsmmu),
                "{size}-byte write of {value:#x} at {offset:#x} ({}) is not ignored",
                register_name(offset)
            );
        }
        for (i, a) in actions.iter().enumerate() {
            ensure!(self, !actions[..i].contains(a), "action {a:?} twice");
        }
        // Fields that are read-only while what uses them is enabled
        // (§6.3.9-§6.3.12, §6.3.24-§6.3.29).
        let v = &self.vsmmu;
        let locks: [(bool, usize, usize, &str); 8] = [
            (before.smmu_enabled(), o::STRTAB_BASE, 8, "SMMUEN"),
            (before.smmu_enabled(), o::STRTAB_BASE_CFG, 4, "SMMUEN"),
            (before.smmu_enabled(), o::CR2, 4, "SMMUEN"),
            (before.read(o::CR0, 4) != 0, o::CR1, 4, "CR0 != 0"),
            (before.cmdq_enabled(), o::CMDQ_BASE, 8, "CMDQEN"),
            (before.cmdq_enabled(), o::CMDQ_CONS, 4, "CMDQEN"),
            (before.evtq_enabled(), o::EVENTQ_BASE, 8, "EVENTQEN"),
            (before.evtq_enabled(), o::EVENTQ_PROD, 4, "EVENTQEN"),
        ];
        for (locked, reg, width, why) in locks {
            ensure!(
                self,
                !locked || before.read(reg, width) == v.read(reg, width),
                "{} changed while {why}",
                register_name(reg)
            );
        }
        // SMMUEN toggled, or GBPA.ABORT changed while it decides: every
        // stream of the VM must be reinstalled.
        let must_reinstall = before.smmu_enabled() != v.smmu_enabled()
            || (!v.smmu_enabled() && before.gbpa_abort() != v.gbpa_abort());
        ensure!(
            self,
            !must_reinstall || actions.contains(&VsmmuAction::StreamTableChanged),
            "stream configuration changed without StreamTableChanged: {actions:?}"
        );
        let kicks = [o::CR0, o::CMDQ_PROD, o::GERRORN];
        if words.iter().any(|w| kicks.contains(w)) && cmdq_runnable(v) {
            ensure!(
                self,
                actions.contains(&VsmmuAction::ProcessCommands),
                "queue runnable after a write without ProcessCommands: {actions:?}"
            );
        }
        self.run(actions);
    }

    /// What the guest's driver does to issue a command.
    fn push_command(&mut self, words: [u64; 2]) {
        let (log2, base) = self.vsmmu.cmdq_geometry();
        let wrap_mask = (2u32 << log2) - 1;
        let prod = self.vsmmu.read(o::CMDQ_PROD, 4) as u32 & wrap_mask;
        let slot = base.0 + u64::from(prod & (wrap_mask >> 1)) * 16;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&words[0].to_le_bytes());
        bytes[8..].copy_from_slice(&words[1].to_le_bytes());
        let _ = self.mem.write(Ipa(slot), &bytes);
        let next = (prod + 1) & wrap_mask;
        self.mmio_write(o::CMDQ_PROD, 4, u64::from(next));
    }

    /// Where the STE of `vsid` lives in the guest's stream table, creating
    /// the level 1 descriptor of a 2-level table if it has none.
    fn ste_slot(&mut self, vsid: u32) -> Option<u64> {
        let t = self.vsmmu.guest_strtab();
        if !t.two_level {
            return t.base.0.checked_add(u64::from(vsid) * 64);
        }
        let split = t.split;
        let l1_index = u64::from(vsid >> split);
        let l1_addr = t.base.0.checked_add(l1_index * 8)?;
        let mut raw = [0u8; 8];
        let mut desc = match self.mem.read(Ipa(l1_addr), &mut raw) {
            Ok(()) => L1Std(u64::from_le_bytes(raw)),
            Err(_) => L1Std::invalid(),
        };
        if !desc.valid() {
            let l2 = L2 + (l1_index % L2_SLOTS) * L2_SLOT;
            desc = L1Std::new(PhysAddr(l2), split + 1);
            let _ = self.mem.write(Ipa(l1_addr), &desc.0.to_le_bytes());
        }
        let l2_index = u64::from(vsid & ((1u32 << split) - 1));
        desc.l2ptr().0.checked_add(l2_index * 64)
    }

    fn write_guest_ste(&mut self, vsid: u32, ste: &Ste) {
        if let Some(addr) = self.ste_slot(vsid) {
            let mut bytes = [0u8; 64];
            for (chunk, w) in bytes.chunks_exact_mut(8).zip(ste.0) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            let _ = self.mem.write(Ipa(addr), &bytes);
        }
    }

    // ---- the code under test, checked ----

    /// One command round (`VSmmu::process_commands`) against the reference
    /// model, then its work done as the hypervisor does it. Returns the
    /// actions to carry out next.
    fn process(&mut self, budget: usize) -> Vec<VsmmuAction> {
        let before = self.vsmmu.clone();
        let model = CmdqModel::run(&before, &self.mem, budget);
        let rec = Recorder::new(&self.mem);
        let out = self.vsmmu.process_commands(&rec, VMID, &Devices, budget);
        ensure!(
            self,
            out.work == model.work
                && (out.sync, out.more, out.error, out.consumed)
                    == (model.sync, model.more, model.error, model.consumed),
            "process_commands({budget}) gave {out:?}, the queue model {model:?}"
        );
        let (log2, base) = before.cmdq_geometry();
        let wrap_mask = (2u32 << log2) - 1;
        let cons = self.vsmmu.read(o::CMDQ_CONS, 4) as u32;
        let err = |cons: u32| (cons >> 24) & 0x7F;
        ensure!(
            self,
            cons & wrap_mask == model.rd,
            "CMDQ_CONS {cons:#x} after the round, the queue model has RD {:#x}",
            model.rd
        );
        let old_err = err(before.read(o::CMDQ_CONS, 4) as u32);
        let want_err = model.error.map_or(old_err, u32::from);
        ensure!(
            self,
            err(cons) == want_err,
            "CMDQ_CONS.ERR {} after the round, expected {want_err}",
            err(cons)
        );
        if model.error.is_some() {
            let active = (self.vsmmu.read(o::GERROR, 4) ^ self.vsmmu.read(o::GERRORN, 4)) & 1;
            ensure!(self, active == 1, "command error without GERROR.CMDQ_ERR");
            self.stats.cmdq_errors += 1;
        }
        let irq = model.error.is_some() && self.vsmmu.gerror_irq_enabled();
        ensure!(
            self,
            out.actions
                == if irq {
                    vec![VsmmuAction::RaiseGerrorIrq]
                } else {
                    vec![]
                },
            "round actions {:?} (error {:?}, GERROR_IRQEN {})",
            out.actions,
            out.error,
            self.vsmmu.gerror_irq_enabled()
        );
        ensure!(
            self,
            self.vsmmu.sync_pending() == (before.sync_pending() || out.sync),
            "sync_pending {} after a round that {} at a SYNC",
            self.vsmmu.sync_pending(),
            if out.sync { "stopped" } else { "did not stop" }
        );
        // Bounded, in-queue, read-only guest memory accesses.
        let reads = rec.reads.borrow().clone();
        let queue_end = base.0 + (16u64 << log2);
        ensure!(
            self,
            rec.writes.borrow().is_empty() && reads.len() <= budget,
            "a round of budget {budget} read {} entries and wrote {:?}",
            reads.len(),
            rec.writes.borrow()
        );
        for &(addr, len) in &reads {
            ensure!(
                self,
                len == 16 && addr.is_multiple_of(16) && addr >= base.0 && addr < queue_end,
                "command fetch of {len} bytes at {addr:#x}, outside the queue {:#x}..{queue_end:#x}",
                base.0
            );
        }
        // What reaches the physical SMMU.
        let policy = self.policy();
        for c in out.commands() {
            if let Err(e) = physical_command(c, &policy) {
                self.fail(format_args!("{e}"));
            }
        }
        if let Some(v) = model.violations.first() {
            self.fail(format_args!("{v}"));
        }
        for (guest, cmds) in &model.forwarded {
            for c in cmds {
                if let Err(e) = same_scope(guest, c) {
                    self.fail(format_args!("{e}"));
                }
            }
        }
        self.stats.guest_commands += out.consumed;
        self.stats.physical_commands += out.commands().count();
        for work in &out.work {
            if let CmdqWork::Reinstall(range) = work {
                self.reinstall(range);
            }
        }
        let mut next = out.actions.clone();
        if out.sync && self.setup.auto_sync {
            next.extend(self.complete_sync());
        }
        if out.more {
            next.push(VsmmuAction::ProcessCommands);
        }
        next
    }

    /// `VSmmu::complete_sync`: CONS moves past the SYNC, once.
    fn complete_sync(&mut self) -> Vec<VsmmuAction> {
        let pending = self.vsmmu.sync_pending();
        let (log2, _) = self.vsmmu.cmdq_geometry();
        let wrap_mask = (2u32 << log2) - 1;
        let cons = self.vsmmu.read(o::CMDQ_CONS, 4) as u32;
        let actions = self.vsmmu.complete_sync();
        let after = self.vsmmu.read(o::CMDQ_CONS, 4) as u32;
        if !pending {
            ensure!(
                self,
                actions.is_empty() && after == cons,
                "complete_sync without a pending SYNC changed CONS {cons:#x} -> {after:#x} or gave {actions:?}"
            );
            return actions;
        }
        ensure!(
            self,
            !self.vsmmu.sync_pending()
                && after & wrap_mask == (cons + 1) & wrap_mask
                && after >> 24 == cons >> 24,
            "complete_sync moved CONS {cons:#x} -> {after:#x}"
        );
        if cmdq_runnable(&self.vsmmu) {
            ensure!(
                self,
                actions.contains(&VsmmuAction::ProcessCommands),
                "commands wait after the SYNC but complete_sync gave {actions:?}"
            );
        }
        self.stats.syncs += 1;
        actions
    }

    /// `read_guest_ste` + `compose_with_stall` for `vsid`, checked.
    fn compose(&mut self, vsid: u32) -> Result<Ste, VsteError> {
        let t = self.vsmmu.guest_strtab();
        let rec = Recorder::new(&self.mem);
        let guest = read_guest_ste(&rec, &t, StreamId(vsid));
        let reads = rec.reads.borrow().clone();
        ensure!(
            self,
            rec.writes.borrow().is_empty() && reads.len() <= 2,
            "reading the STE of {vsid:#x} from {t:?} wrote guest memory or read {reads:x?}"
        );
        if !fits(u64::from(vsid), t.log2size) {
            ensure!(
                self,
                guest == Ok(Ste::invalid()) && reads.is_empty(),
                "StreamID {vsid:#x} is beyond {t:?} but gave {guest:?} after reading {reads:x?}"
            );
        } else {
            let first = if t.two_level {
                (t.base.0 + u64::from(vsid >> t.split) * 8, 8)
            } else {
                (t.base.0 + u64::from(vsid) * 64, 64)
            };
            ensure!(
                self,
                reads.first() == Some(&first),
                "the STE of {vsid:#x} in {t:?} was fetched with {reads:x?}"
            );
        }
        let guest = match guest {
            Ok(g) => g,
            Err(e) => {
                ensure!(
                    self,
                    matches!(e, VsteError::Fetch { .. }),
                    "reading an STE gave {e:?}"
                );
                self.stats.fetch_errors += 1;
                return Err(e);
            }
        };
        let out = match self.setup.phys_stall {
            // What the hypervisor calls (QEMU's SMMU is terminate-only).
            StallModel::TerminateOnly => compose(&guest, self.vsmmu.policy(), &s2()),
            stall => compose_with_stall(&guest, self.vsmmu.policy(), &s2(), stall),
        };
        self.check_composed(&guest, &out);
        out
    }

    /// A composed STE is abort, the VM's stage 2 alone, or nested over
    /// exactly the VM's stage 2 with only the guest's allowed stage 1
    /// fields, and legal on the physical SMMU.
    fn check_composed(&mut self, guest: &Ste, out: &Result<Ste, VsteError>) {
        let s2 = s2();
        let policy = self.policy();
        let ste = match out {
            Ok(ste) => ste,
            Err(VsteError::Illegal(_)) => {
                ensure!(self, guest.v(), "an invalid STE refused as ILLEGAL");
                self.stats.refused += 1;
                return;
            }
            Err(e) => self.fail(format_args!("compose gave {e:?}")),
        };
        ensure!(
            self,
            (*ste == Ste::abort()) != guest.is_live(),
            "guest {guest:?} (live: {}) composed to {ste:?}",
            guest.is_live()
        );
        if *ste == Ste::abort() {
            self.stats.aborts += 1;
            return;
        }
        let stage2 = Ste::stage2(&s2);
        ensure!(
            self,
            ste.0[2..] == stage2.0[2..] && ste.s2vmid() == VMID,
            "composed {ste:?} from {guest:?}: stage 2 is not the hypervisor's {stage2:?}"
        );
        if guest.config() == Config::Bypass {
            ensure!(self, *ste == stage2, "bypass {guest:?} composed to {ste:?}");
            self.stats.stage2_only += 1;
            return;
        }
        let s1 = ste.s1_config();
        ensure!(
            self,
            guest.config() == Config::S1Translate && *ste == Ste::nested(&s2, &s1),
            "{guest:?} composed to {ste:?}, not nested over the VM's stage 2"
        );
        ensure!(
            self,
            s1.ctx_ptr == guest.s1_context_ptr()
                && fits(s1.ctx_ptr.0, VM_IPA_BITS.min(policy.oas_bits))
                && s1.eats == Eats::Abort
                && s1.s1stalld == (self.setup.phys_stall == StallModel::StallAndTerminate)
                && (s1.s1cir, s1.s1cor, s1.s1csh) == (guest.s1cir(), guest.s1cor(), guest.s1csh())
                && s1.s1cdmax <= policy.ssid_bits,
            "{guest:?} composed to stage 1 {s1:?}"
        );
        let kind = ste.validate(&nested_ste_policy(self.setup.phys_stall));
        ensure!(
            self,
            kind == Ok(SteKind::Nested),
            "composed {ste:?} is {kind:?} on the physical SMMU"
        );
        self.stats.nested += 1;
        self.walk_cd(ste);
    }

    /// What the physical SMMU does next with a nested STE: find the CD of
    /// a transaction without SubstreamID in the guest's CD table and check
    /// it (the decoders must take any bytes the guest put there).
    fn walk_cd(&mut self, ste: &Ste) {
        let policy = self.policy();
        let table = match CdTable::of_ste(ste, policy.ssid_bits) {
            Ok(t) => t,
            Err(e) => self.fail(format_args!("nested {ste:?} has no CD table: {e}")),
        };
        let Ok(CdLookup::Cd(loc)) = table.resolve(None, ste.s1dss()) else {
            return;
        };
        let ctx = ste.s1_context_ptr().0;
        let addr = match loc {
            CdLocation::Linear { index } => ctx + u64::from(index) * 64,
            CdLocation::TwoLevel { l1_index, l2_index } => {
                let mut raw = [0u8; 8];
                if self
                    .mem
                    .read(Ipa(ctx + u64::from(l1_index) * 8), &mut raw)
                    .is_err()
                {
                    return;
                }
                let l1 = L1Cd(u64::from_le_bytes(raw));
                if !l1.valid() {
                    return;
                }
                l1.l2ptr().0 + u64::from(l2_index) * 64
            }
        };
        let mut raw = [0u8; 64];
        if self.mem.read(Ipa(addr), &mut raw).is_err() {
            return;
        }
        let mut cd = ContextDescriptor([0; 8]);
        for (w, chunk) in cd.0.iter_mut().zip(raw.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        }
        let cd_policy = CdPolicy {
            ttendian: TtEndian::Little,
            stall_model: self.setup.phys_stall,
            term_model: false,
            httu: Httu::None,
            asid16: policy.asid16,
            stt: false,
            vax52: false,
            gran4k: policy.gran4k,
            gran16k: policy.gran16k,
            gran64k: policy.gran64k,
            oas_bits: VM_IPA_BITS,
            s1stalld: ste.s1stalld(),
        };
        if cd.validate(&cd_policy).is_ok() {
            ensure!(
                self,
                cd.v() && cd.aa64(),
                "CD {cd:?} accepted without V and AA64"
            );
            self.stats.valid_cds += 1;
        }
    }

    /// A physical event record `words` of device `vsid` delivered to the
    /// guest, as `VmVsmmu::inject_fault`: with the virtual StreamID, or as
    /// the refusal it stands for (C_BAD_STE of a refused guest STE).
    fn inject(&mut self, vsid: u32, mut words: [u64; 4]) {
        let dev = DEVICES
            .iter()
            .position(|&(v, _)| v == vsid)
            .expect("Inject is for the VM's devices");
        words[0] = (words[0] & 0xFFFF_FFFF) | (u64::from(DEVICES[dev].1) << 32);
        let physical = Event::decode(words);
        let event = match (&physical, self.refused[dev]) {
            (Event::BadSte { ssid, .. }, Some(why)) => {
                let e = refusal_event(&why, StreamId(vsid), *ssid);
                ensure!(
                    self,
                    e.encode().is_ok(),
                    "refusal {why:?} of vSID {vsid:#x} cannot be reported: {e:?}"
                );
                self.stats.refusals_reported += 1;
                e
            }
            _ => {
                let Ok(mut w) = physical.encode() else {
                    return;
                };
                // StreamID: bits [63:32] of every event record (§7.3).
                w[0] = (w[0] & 0xFFFF_FFFF) | (u64::from(vsid) << 32);
                Event::decode(w)
            }
        };
        ensure!(
            self,
            event.sid() == StreamId(vsid),
            "{physical:?} reached the guest as {event:?}, not with vSID {vsid:#x}"
        );
        let before = self.vsmmu.clone();
        let rec = Recorder::new(&self.mem);
        let out = self.vsmmu.inject(&rec, &event);
        let writes = rec.writes.borrow().clone();
        ensure!(
            self,
            rec.reads.borrow().is_empty(),
            "injection read guest memory"
        );
        let prod = before.read(o::EVENTQ_PROD, 4) as u32;
        let cons = before.read(o::EVENTQ_CONS, 4) as u32;
        let after = self.vsmmu.read(o::EVENTQ_PROD, 4) as u32;
        let unchanged = out == InjectOutcome::default() && writes.is_empty() && after == prod;
        if !before.evtq_enabled() {
            ensure!(
                self,
                unchanged,
                "injection with EVENTQEN == 0: {out:?} {writes:x?}"
            );
            return;
        }
        let (log2, base) = before.evtq_geometry();
        let cap = 1u32 << log2;
        let wrap_mask = 2 * cap - 1;
        let p = prod & wrap_mask;
        if p.wrapping_sub(cons & wrap_mask) & wrap_mask >= cap {
            // Full (§7.4): lost, OVFLG toggled unless already signalled.
            let toggle = (prod & OVFLG) == (cons & OVFLG);
            let want = if toggle { prod ^ OVFLG } else { prod };
            ensure!(
                self,
                out.overflowed && !out.written && writes.is_empty() && after == want,
                "injection into a full queue: {out:?}, PROD {prod:#x} -> {after:#x}"
            );
            self.stats.overflows += 1;
            return;
        }
        if event.encode().is_err() {
            ensure!(self, unchanged, "unencodable {event:?} injected: {out:?}");
            return;
        }
        let slot = base.0 + u64::from(p & (cap - 1)) * 32;
        ensure!(
            self,
            !out.overflowed && writes.len() == 1 && writes[0].0 == slot && writes[0].1 == 32,
            "injection wrote {writes:x?}, expected one record at {slot:#x} ({out:?})"
        );
        if writes[0].2 {
            let mut raw = [0u8; 32];
            let read_back = self.mem.read(Ipa(slot), &mut raw);
            let mut rec_words = [0u64; 4];
            for (w, chunk) in rec_words.iter_mut().zip(raw.chunks_exact(8)) {
                *w = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
            }
            ensure!(
                self,
                read_back.is_ok() && Event::decode(rec_words) == event,
                "record {rec_words:x?} at {slot:#x} is not {event:?}"
            );
            ensure!(
                self,
                out.written
                    && out.raise_event_irq == self.vsmmu.evtq_irq_enabled()
                    && !out.raise_gerror_irq
                    && after == (prod & OVFLG) | ((p + 1) & wrap_mask),
                "record written: {out:?}, PROD {prod:#x} -> {after:#x}"
            );
            self.stats.events += 1;
        } else {
            let active = |v: &VSmmu| (v.read(o::GERROR, 4) ^ v.read(o::GERRORN, 4)) & 4 != 0;
            let irq = !active(&before) && self.vsmmu.gerror_irq_enabled();
            ensure!(
                self,
                !out.written
                    && !out.raise_event_irq
                    && out.raise_gerror_irq == irq
                    && after == prod
                    && active(&self.vsmmu),
                "record write aborted: {out:?}, PROD {prod:#x} -> {after:#x}, GERROR {:#x}",
                self.vsmmu.read(o::GERROR, 4)
            );
        }
    }

    // ---- the register file at rest ----

    /// The ID registers advertise the policy, and nothing the vSMMU does
    /// not implement (checked once: they never change).
    fn check_idrs(&self) {
        let p = self.policy();
        let i = self.idrs;
        let f = Features::decode(i[0], i[1], i[3], i[5]);
        ensure!(
            self,
            f.s1p
                && !f.s2p
                && !f.hyp
                && !f.msi
                && !f.ats
                && !f.pri
                && !f.sev
                && !f.btm
                && f.httu == 0
                && i[2] == 0
                && i[4] == 0,
            "IDRs {i:x?} advertise more than stage 1: {f:?}"
        );
        ensure!(
            self,
            (f.sid_size, f.ssid_size, f.cmdqs, f.evtqs, f.oas_bits)
                == (p.sid_bits, p.ssid_bits, p.cmdqs, p.evtqs, p.oas_bits)
                && (f.asid16, f.cd2l, f.ril, f.cohacc) == (p.asid16, p.cd2l, p.ril, p.cohacc)
                && (f.gran4k, f.gran16k, f.gran64k) == (p.gran4k, p.gran16k, p.gran64k)
                && p.cmdqs <= 19
                && p.evtqs <= 19,
            "IDRs {f:?} do not advertise the policy {p:?}"
        );
    }

    /// Every register within its architected bits, the ID registers
    /// constant, the ACK registers equal to what they acknowledge, and the
    /// effective queue and table geometry within what is advertised.
    fn check_registers(&self) {
        let v = &self.vsmmu;
        let r = |off: usize| v.read(off, 4) as u32;
        for &(off, bits, name) in REGISTERS {
            let val = r(off);
            ensure!(
                self,
                val & !bits == 0,
                "{name} = {val:#x}, beyond the architected {bits:#x}"
            );
        }
        for (i, off) in [o::IDR0, o::IDR1, o::IDR2, o::IDR3, o::IDR4, o::IDR5]
            .into_iter()
            .enumerate()
        {
            ensure!(self, r(off) == self.idrs[i], "IDR{i} changed");
        }
        let p = self.policy();
        ensure!(
            self,
            r(o::AIDR) == if p.ril { 2 } else { 0 },
            "AIDR {:#x}",
            r(o::AIDR)
        );
        let (cr0, irq) = (r(o::CR0), r(o::IRQ_CTRL));
        ensure!(
            self,
            r(o::CR0ACK) == cr0 && r(o::IRQ_CTRLACK) == irq,
            "CR0ACK/IRQ_CTRLACK do not acknowledge CR0 {cr0:#x} / IRQ_CTRL {irq:#x}"
        );
        ensure!(
            self,
            (v.smmu_enabled(), v.evtq_enabled(), v.cmdq_enabled())
                == (cr0 & 1 != 0, cr0 & 4 != 0, cr0 & 8 != 0)
                && (v.gerror_irq_enabled(), v.evtq_irq_enabled()) == (irq & 1 != 0, irq & 4 != 0)
                && v.gbpa_abort() == (r(o::GBPA) & (1 << 20) != 0),
            "accessors disagree with CR0 {cr0:#x}, IRQ_CTRL {irq:#x}, GBPA {:#x}",
            r(o::GBPA)
        );
        for (reg, (log2, base), max, entry) in [
            (o::CMDQ_BASE, v.cmdq_geometry(), p.cmdqs, 16u64),
            (o::EVENTQ_BASE, v.evtq_geometry(), p.evtqs, 32),
        ] {
            let raw = v.read(reg, 8);
            ensure!(
                self,
                log2 <= max
                    && u64::from(log2) == raw & 0x1F
                    && base.0.is_multiple_of(entry << log2)
                    && fits(base.0, p.oas_bits),
                "{} {raw:#x}: effective queue of 2^{log2} at {base:?} (max 2^{max}, OAS {})",
                register_name(reg),
                p.oas_bits
            );
            ensure!(
                self,
                raw == u64::from(r(reg)) | (u64::from(r(reg + 4)) << 32),
                "{} 64-bit read disagrees with its halves",
                register_name(reg)
            );
        }
        let t = v.guest_strtab();
        let table_log2 = if t.two_level {
            u32::from(t.log2size.saturating_sub(t.split)) + 3
        } else {
            u32::from(t.log2size) + 6
        };
        ensure!(
            self,
            t.log2size <= p.sid_bits
                && [6, 8, 10].contains(&t.split)
                && t.base.0.is_multiple_of(1u64 << table_log2.max(6))
                && fits(t.base.0, p.oas_bits),
            "effective stream table {t:?} (SIDSIZE {}, OAS {})",
            p.sid_bits,
            p.oas_bits
        );
    }
}

/// Every register as the guest reads it, and the SYNC state.
fn dump(v: &VSmmu) -> (Vec<u64>, bool) {
    let regs = REGISTERS
        .iter()
        .map(|&(off, _, _)| v.read(off, 4))
        .collect();
    (regs, v.sync_pending())
}

/// Whether the command queue has entries the vSMMU may consume (CMDQEN,
/// no SYNC outstanding, no unacknowledged CMDQ_ERR, PROD != CONS).
fn cmdq_runnable(v: &VSmmu) -> bool {
    let (log2, _) = v.cmdq_geometry();
    let wrap_mask = (2u32 << log2) - 1;
    let gerror = (v.read(o::GERROR, 4) ^ v.read(o::GERRORN, 4)) & 1;
    v.cmdq_enabled()
        && !v.sync_pending()
        && gerror == 0
        && (v.read(o::CMDQ_PROD, 4) as u32 ^ v.read(o::CMDQ_CONS, 4) as u32) & wrap_mask != 0
}

/// An input decoded, one operation per line: what a crashing input did.
pub fn describe(data: &[u8]) -> String {
    let (setup, ops) = decode_all(data, MAX_OPS);
    let mut s = format!("{setup:?}\n");
    for (i, op) in ops.iter().enumerate() {
        s.push_str(&format!("{i:4}: {op:?}\n"));
    }
    s
}
