//! The `vsmmu` target: one VM's vSMMU, the hypervisor's own engine
//! (`smmu::vsmmu::VsmmuEngine`) over the fake physical SMMU
//! (`smmu::fake::FakePhysicalSmmu`) and fake guest RAM, driven by [`Op`]s:
//! guest register accesses and memory writes, physical events, failures
//! of the physical SMMU. After every step the [`oracle`](crate::oracle)
//! checks what the guest sees and what the physical side received. A
//! broken rule panics with the step, the operation and the setup.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::string::String;
use std::vec;
use std::vec::Vec;

use smmu::addr::{Ipa, PhysAddr, Ssid, StreamId};
use smmu::cd::{CdLocation, CdLookup, CdPolicy, CdTable, ContextDescriptor, L1Cd};
use smmu::event::Event;
use smmu::fake::{
    nested_ste_policy, FakeGuestMemory, FakePhysicalSmmu, LoggedOp, PhysicalOp, StreamState,
};
use smmu::regs::{offset as o, Features};
use smmu::ste::{Httu, Ste, SteKind, TtEndian};
use smmu::strtab::L1Std;
use smmu::vsmmu::{GuestIrq, GuestMemError, GuestMemory, VSmmu, VsmmuEngine, VsmmuPolicy};

use crate::bytes::describe_input;
use crate::ops::{decode_all, Op, Setup};
use crate::oracle::{
    check_queue, check_update_plan, fits, guest_event, guest_owns, register_bits, register_name,
    want, AccessFacts, CmdqRegs, Refusal, Want, REGISTERS, WRITABLE,
};
use crate::vm::{s2, DEVICES, L2, L2_SLOT, L2_SLOTS, RAM, RAM_SIZE, VMID, VM_IPA_BITS};

/// Most operations taken from one input.
pub const MAX_OPS: usize = 512;

/// EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG (§6.3.95, §6.3.96).
const OVFLG: u32 = 1 << 31;

/// What one input exercised (for the seeds' tests and for curiosity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Guest register accesses.
    pub mmio: usize,
    /// Guest commands fetched.
    pub guest_commands: usize,
    /// Physical commands the guest's became (CMD_SYNCs aside).
    pub physical_commands: usize,
    /// Physical CMD_SYNCs for guest CMD_SYNCs.
    pub syncs: usize,
    /// Command-queue errors (CERROR_ILL, CERROR_ABT).
    pub cmdq_errors: usize,
    /// Physical STEs installed for the VM's devices.
    pub installs: usize,
    /// Nested STEs installed.
    pub nested: usize,
    /// Stage-2-only STEs installed.
    pub stage2_only: usize,
    /// Aborting STEs installed.
    pub aborts: usize,
    /// Invalid STEs installed for refused guest STEs.
    pub refused: usize,
    /// Of those, for guest stream tables that could not be read.
    pub fetch_errors: usize,
    /// Valid CDs found behind nested STEs.
    pub valid_cds: usize,
    /// C_BAD_STE events of refused STEs reported to the guest.
    pub refusals_reported: usize,
    /// Event records written to the guest's queue.
    pub events: usize,
    /// Events lost to a full queue.
    pub overflows: usize,
    /// Physical operations that failed.
    pub physical_failures: usize,
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
        world.check_streams();
    }
    world.stats
}

/// Guest RAM that records each access the engine makes.
#[derive(Debug)]
struct Recorder {
    mem: FakeGuestMemory,
    reads: RefCell<Vec<(u64, usize)>>,
    /// Address, length, whether it succeeded.
    writes: RefCell<Vec<(u64, usize, bool)>>,
}

type Accesses = (Vec<(u64, usize)>, Vec<(u64, usize, bool)>);

impl Recorder {
    /// The accesses since the last call.
    fn take(&self) -> Accesses {
        (self.reads.take(), self.writes.take())
    }
}

impl GuestMemory for Recorder {
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

/// One VM with a vSMMU.
struct World {
    engine: VsmmuEngine<FakePhysicalSmmu, Recorder>,
    setup: Setup,
    idrs: [u32; 6],
    /// The physical STE of each of [`DEVICES`], as last installed.
    installed: [Ste; DEVICES.len()],
    /// Why the stream of each of [`DEVICES`] is refused, by the oracle's
    /// reading of its guest STE when it was last named.
    refusals: [Option<Refusal>; DEVICES.len()],
    /// The last install for each of [`DEVICES`] failed: its physical STE
    /// is an older one.
    stale: [bool; DEVICES.len()],
    stats: Stats,
    step: usize,
    /// The operation being checked, for messages.
    op: Option<Op>,
}

impl World {
    fn new(setup: Setup) -> Self {
        let streams: BTreeMap<StreamId, StreamId> = DEVICES
            .iter()
            .map(|&(v, p)| (StreamId(v), StreamId(p)))
            .collect();
        let mem = Recorder {
            mem: FakeGuestMemory::new(Ipa(RAM), RAM_SIZE),
            reads: RefCell::new(Vec::new()),
            writes: RefCell::new(Vec::new()),
        };
        let phys = FakePhysicalSmmu::new(s2(), setup.phys_stall, streams.values().copied());
        let engine = VsmmuEngine::new(setup.policy, VMID, s2(), streams, mem, phys);
        let world = Self {
            idrs: engine.vsmmu().idrs(),
            engine,
            setup,
            installed: [Ste::stage2(&s2()); DEVICES.len()],
            refusals: [None; DEVICES.len()],
            stale: [false; DEVICES.len()],
            stats: Stats::default(),
            step: 0,
            op: None,
        };
        world.check_idrs();
        world
    }

    fn v(&self) -> &VSmmu {
        self.engine.vsmmu()
    }

    fn mem(&self) -> &FakeGuestMemory {
        &self.engine.memory().mem
    }

    fn policy(&self) -> VsmmuPolicy {
        *self.v().policy()
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
            Op::Read { offset, size } => {
                self.access(*offset, *size, None);
            }
            Op::Write {
                offset,
                size,
                value,
            } => {
                self.access(*offset, *size, Some(*value));
            }
            Op::PushCommand(words) => self.push_command(*words),
            Op::Poll => {
                self.access(o::CMDQ_CONS, 4, None);
            }
            Op::PhysicalFailures(n) => self.engine.physical_mut().fail_next(u32::from(*n)),
            Op::Poke { ipa, bytes } => {
                let _ = self.mem().write(Ipa(*ipa), bytes);
            }
            Op::WriteSte { vsid, ste } => self.write_guest_ste(*vsid, ste),
            Op::Event { sid, words } => {
                let mut words = *words;
                words[0] = (words[0] & 0xFFFF_FFFF) | (u64::from(*sid) << 32);
                self.offer(words);
            }
            Op::Transaction { vsid, ssid, addr } => {
                let &(_, psid) = DEVICES
                    .iter()
                    .find(|&&(v, _)| v == *vsid)
                    .expect("a transaction is by one of the VM's devices");
                let event =
                    self.engine
                        .physical()
                        .transaction(StreamId(psid), ssid.map(Ssid), *addr);
                if let Some(e) = event {
                    match e.encode() {
                        Ok(words) => self.offer(words),
                        Err(err) => self.fail(format_args!("the fake SMMU recorded {e:?}: {err}")),
                    }
                }
            }
        }
    }

    // ---- the guest ----

    /// What the guest's driver does to issue a command.
    fn push_command(&mut self, words: [u64; 2]) {
        let (log2, base) = self.v().cmdq_geometry();
        let wrap_mask = (2u32 << log2) - 1;
        let prod = self.v().read(o::CMDQ_PROD, 4) as u32 & wrap_mask;
        let slot = base.0 + u64::from(prod & (wrap_mask >> 1)) * 16;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&words[0].to_le_bytes());
        bytes[8..].copy_from_slice(&words[1].to_le_bytes());
        let _ = self.mem().write(Ipa(slot), &bytes);
        let next = (prod + 1) & wrap_mask;
        self.access(o::CMDQ_PROD, 4, Some(u64::from(next)));
    }

    /// Where the STE of `vsid` lives in the guest's stream table, creating
    /// the level 1 descriptor of a 2-level table if it has none.
    fn ste_slot(&self, vsid: u32) -> Option<u64> {
        let t = self.v().guest_strtab();
        if !t.two_level {
            return t.base.0.checked_add(u64::from(vsid) * 64);
        }
        let split = t.split;
        let l1_index = u64::from(vsid >> split);
        let l1_addr = t.base.0.checked_add(l1_index * 8)?;
        let mut raw = [0u8; 8];
        let mut desc = match self.mem().read(Ipa(l1_addr), &mut raw) {
            Ok(()) => L1Std(u64::from_le_bytes(raw)),
            Err(_) => L1Std::invalid(),
        };
        if !desc.valid() {
            let l2 = L2 + (l1_index % L2_SLOTS) * L2_SLOT;
            desc = L1Std::new(PhysAddr(l2), split + 1);
            let _ = self.mem().write(Ipa(l1_addr), &desc.0.to_le_bytes());
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
            let _ = self.mem().write(Ipa(addr), &bytes);
        }
    }

    // ---- the code under test, checked ----

    /// A guest access of `size` bytes at `offset` (a write of `value`, or a
    /// read), through the engine, checked.
    fn access(&mut self, offset: usize, size: usize, value: Option<u64>) {
        self.stats.mmio += 1;
        let write = value.is_some();
        let before = self.v().clone();
        let _ = self.engine.memory().take();
        let (read, irqs) = self
            .engine
            .access(offset as u64, size as u8, write, value.unwrap_or(0));
        let log = self.engine.physical_mut().take_log();
        let (reads, writes) = self.engine.memory().take();
        // The 32-bit registers the access reached.
        let words: Vec<usize> = match size {
            4 if offset.is_multiple_of(4) => vec![offset],
            8 if offset.is_multiple_of(8) => vec![offset, offset.wrapping_add(4)],
            _ => vec![],
        };
        let touches = |regs: &[usize]| write && words.iter().any(|w| regs.contains(w));
        // The accesses the hypervisor runs the queue on.
        let kick = if write {
            touches(&[o::CR0, o::CMDQ_PROD, o::GERRORN])
        } else {
            offset == o::CMDQ_CONS
        };
        if write {
            let w = Written {
                offset,
                size,
                value: value.unwrap_or(0),
                words: &words,
                kick,
            };
            self.check_write(&before, &w, &log, &irqs);
        } else {
            self.check_read(offset, size, read);
        }
        ensure!(
            self,
            writes.is_empty(),
            "a register access wrote guest memory: {writes:x?}"
        );
        ensure!(
            self,
            !self.v().sync_pending(),
            "a guest CMD_SYNC left waiting after the access"
        );
        // The command queue and what reached the physical side.
        let policy = self.policy();
        let stream_registers = touches(&[
            o::CR0,
            o::GBPA,
            o::STRTAB_BASE,
            o::STRTAB_BASE + 4,
            o::STRTAB_BASE_CFG,
        ]);
        let facts = AccessFacts {
            before: CmdqRegs::of(&before, policy.oas_bits),
            after: CmdqRegs::of(self.v(), policy.oas_bits),
            kick,
            stream_registers,
            mem: self.mem(),
            policy: &policy,
            log: &log,
            irqs: &irqs,
        };
        let queue = match check_queue(&facts) {
            Ok(q) => q,
            Err(e) => {
                let shown = &log[..log.len().min(16)];
                self.fail(format_args!(
                    "{e}\n  physical operations ({} in all): {shown:?}",
                    log.len()
                ))
            }
        };
        let fetched: Vec<u64> = reads
            .iter()
            .filter(|&&(_, len)| len == 16)
            .map(|&(addr, _)| addr)
            .collect();
        ensure!(
            self,
            fetched == queue.fetched,
            "the vSMMU fetched commands at {fetched:x?}, the queue says {:x?}",
            queue.fetched
        );
        self.stats.guest_commands += queue.fetched.len();
        self.stats.physical_commands += queue.submitted;
        self.stats.syncs += queue.syncs;
        self.stats.cmdq_errors += usize::from(queue.error.is_some());
        for l in &log {
            if !l.ok {
                self.stats.physical_failures += 1;
            }
            if let PhysicalOp::Install { sid, state } = l.op {
                self.installed_one(sid, state, l.ok);
            }
        }
        // Streams whose guest configuration the access made the vSMMU
        // re-read: SMMUEN toggled, GBPA changed while it decides, or named
        // by a CMD_CFGI_STE(_RANGE)/CMD_CFGI_ALL.
        let smmuen = |v: &VSmmu| v.read(o::CR0, 4) & 1 != 0;
        let gbpa_abort = |v: &VSmmu| v.read(o::GBPA, 4) & (1 << 20) != 0;
        let changed = smmuen(&before) != smmuen(self.v())
            || (!smmuen(self.v()) && gbpa_abort(&before) != gbpa_abort(self.v()));
        let mut named = queue.named;
        if changed {
            named.extend(0..DEVICES.len());
        }
        let mut walks = Vec::new();
        for dev in named {
            walks.extend(self.check_stream(dev));
        }
        for &(addr, len) in reads.iter().filter(|&&(_, len)| len != 16) {
            ensure!(
                self,
                walks.contains(&(addr, len)),
                "the vSMMU read {len} bytes at {addr:#x}, not a command or an STE it had to read ({walks:x?})"
            );
        }
    }

    fn check_read(&self, offset: usize, size: usize, value: u64) {
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
        let v = self.v();
        let now = match size {
            4 if offset.is_multiple_of(4) => v.read(offset, 4),
            8 if offset.is_multiple_of(8) => v.read(offset, 4) | (v.read(hi, 4) << 32),
            _ => 0,
        };
        ensure!(
            self,
            value == now,
            "{size}-byte read at {offset:#x} = {value:#x}, the register holds {now:#x}"
        );
    }

    fn check_write(&self, before: &VSmmu, w: &Written<'_>, log: &[LoggedOp], irqs: &[GuestIrq]) {
        let (offset, size, value, words) = (w.offset, w.size, w.value, w.words);
        let v = self.v();
        if !words.iter().any(|w| WRITABLE.contains(w)) {
            ensure!(
                self,
                log.is_empty() && irqs.is_empty() && dump(before) == dump(v),
                "{size}-byte write of {value:#x} at {offset:#x} ({}) is not ignored: {log:?} {irqs:?}",
                register_name(offset)
            );
        }
        // Fields that are read-only while what uses them is enabled
        // (§6.3.9-§6.3.12, §6.3.24-§6.3.29).
        let locks: [(bool, usize, usize, &str); 8] = [
            (before.smmu_enabled(), o::STRTAB_BASE, 8, "SMMUEN"),
            (before.smmu_enabled(), o::STRTAB_BASE_CFG, 4, "SMMUEN"),
            (before.smmu_enabled(), o::CR2, 4, "SMMUEN"),
            (before.read(o::CR0, 4) != 0, o::CR1, 4, "CR0 != 0"),
            (before.cmdq_enabled(), o::CMDQ_BASE, 8, "CMDQEN"),
            // CONS otherwise moves as commands are consumed (checked
            // with the queue).
            (before.cmdq_enabled() && !w.kick, o::CMDQ_CONS, 4, "CMDQEN"),
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
    }

    /// Bookkeeping of one install the physical side received: the STE it
    /// stands for never exposes a torn entry on its way (§3.21.3), is
    /// legal on the physical SMMU, and its CD table can be walked.
    fn installed_one(&mut self, sid: StreamId, state: StreamState, ok: bool) {
        let Some(dev) = DEVICES.iter().position(|&(_, p)| p == sid.0) else {
            self.fail(format_args!("STE installed for sid {sid}, not the VM's"));
        };
        if !ok {
            self.stale[dev] = true;
            return;
        }
        self.stale[dev] = false;
        self.stats.installs += 1;
        let new = state.ste(&s2());
        if let Err(e) = check_update_plan(&self.installed[dev], &new) {
            self.fail(format_args!("installing the STE of sid {sid}: {e}"));
        }
        self.installed[dev] = new;
        let kind = new.validate(&nested_ste_policy(self.setup.phys_stall));
        let legal = match state {
            StreamState::Abort => {
                self.stats.aborts += 1;
                kind == Ok(SteKind::Abort)
            }
            StreamState::Invalid => {
                self.stats.refused += 1;
                kind == Ok(SteKind::Invalid)
            }
            StreamState::Stage2 => {
                self.stats.stage2_only += 1;
                kind == Ok(SteKind::Stage2)
            }
            StreamState::Nested(_) => {
                self.stats.nested += 1;
                self.walk_cd(&new);
                kind == Ok(SteKind::Nested)
            }
        };
        ensure!(
            self,
            legal,
            "installed {new:?} for {state:?} is {kind:?} on the physical SMMU"
        );
    }

    /// The physical stream of device `dev` is what its guest STE says
    /// ([`want`]), unless its last install failed. Returns the reads the
    /// vSMMU may have made to find out.
    fn check_stream(&mut self, dev: usize) -> Vec<(u64, usize)> {
        let (vsid, psid) = DEVICES[dev];
        let (want, reads) = want(
            self.v(),
            self.mem(),
            vsid,
            VM_IPA_BITS,
            self.setup.phys_stall,
        );
        if self.stale[dev] {
            return reads;
        }
        let state = self.engine.physical().state(StreamId(psid));
        ensure!(
            self,
            state.is_some_and(|s| want.is(s)),
            "vSID {vsid:#x} must be {want:?}, its physical stream is {state:?}"
        );
        self.refusals[dev] = match want {
            Want::Refused(why) => {
                if matches!(why, Refusal::Fetch(_)) {
                    self.stats.fetch_errors += 1;
                }
                Some(why)
            }
            _ => None,
        };
        reads
    }

    /// While SMMUEN == 0, every stream follows GBPA (§6.3.14): abort, or
    /// the VM's stage 2.
    fn check_streams(&mut self) {
        if self.v().read(o::CR0, 4) & 1 == 0 {
            for dev in 0..DEVICES.len() {
                self.check_stream(dev);
            }
        }
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
                    .mem()
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
        if self.mem().read(Ipa(addr), &mut raw).is_err() {
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

    /// A physical event record offered to the vSMMU, as the hypervisor
    /// offers each one: the guest's ones ([`guest_owns`]) land in its event
    /// queue as [`guest_event`] says, with the interrupt its registers ask
    /// for; a full queue overflows as §7.4 says; a queue the write to which
    /// aborts raises EVENTQ_ABT_ERR (§7.5).
    fn offer(&mut self, words: [u64; 4]) {
        let physical = Event::decode(words);
        let psid = physical.sid();
        let dev = DEVICES.iter().position(|&(_, p)| p == psid.0);
        let state = dev.and_then(|_| self.engine.physical().state(psid));
        if matches!(physical, Event::BadSte { .. }) && dev.is_some_and(|d| self.stale[d]) {
            // After a failed install the vSMMU no longer knows what the
            // stream's STE is: whose its C_BAD_STE is is not specified.
            return;
        }
        let owned = guest_owns(&physical, state);
        ensure!(
            self,
            self.engine.owns_event(&physical) == owned,
            "{physical:?} (stream {state:?}) is {}the guest's",
            if owned { "" } else { "not " }
        );
        let Some(dev) = dev.filter(|_| owned) else {
            return;
        };
        let vsid = DEVICES[dev].0;
        let refusal = match physical {
            Event::BadSte { .. } => match self.refusals[dev] {
                Some(r) => Some(r),
                None => self.fail(format_args!("sid {psid} is invalid without a refusal")),
            },
            _ => None,
        };
        let event = guest_event(words, vsid, refusal);
        let before = self.v().clone();
        let _ = self.engine.memory().take();
        let irq = self.engine.inject_fault(&physical);
        let (reads, writes) = self.engine.memory().take();
        ensure!(self, reads.is_empty(), "injection read guest memory");
        ensure!(
            self,
            self.engine.physical().log().is_empty(),
            "injection reached the physical SMMU"
        );
        let v = self.v();
        let prod = before.read(o::EVENTQ_PROD, 4) as u32;
        let cons = before.read(o::EVENTQ_CONS, 4) as u32;
        let after = v.read(o::EVENTQ_PROD, 4) as u32;
        let unchanged = irq.is_none() && writes.is_empty() && after == prod;
        if before.read(o::CR0, 4) & 4 == 0 {
            ensure!(
                self,
                unchanged,
                "injection with EVENTQEN == 0: {irq:?} {writes:x?}"
            );
            return;
        }
        let base_reg = before.read(o::EVENTQ_BASE, 8);
        let log2 = (base_reg & 0x1F) as u32;
        let cap = 1u32 << log2;
        let base = base_reg & 0x00FF_FFFF_FFFF_FFE0 & ((1u64 << before.policy().oas_bits) - 1);
        let base = base & !((32u64 << log2) - 1);
        let wrap_mask = 2 * cap - 1;
        let p = prod & wrap_mask;
        if p.wrapping_sub(cons & wrap_mask) & wrap_mask >= cap {
            // Full (§7.4): lost, OVFLG toggled unless already signalled.
            let toggle = (prod & OVFLG) == (cons & OVFLG);
            let want = if toggle { prod ^ OVFLG } else { prod };
            ensure!(
                self,
                irq.is_none() && writes.is_empty() && after == want,
                "injection into a full queue: {irq:?}, PROD {prod:#x} -> {after:#x}"
            );
            self.stats.overflows += 1;
            return;
        }
        let Some(event) = event else {
            ensure!(
                self,
                unchanged,
                "unencodable {physical:?} injected: {irq:?}"
            );
            return;
        };
        let slot = base + u64::from(p & (cap - 1)) * 32;
        ensure!(
            self,
            writes.len() == 1 && writes[0].0 == slot && writes[0].1 == 32,
            "injection wrote {writes:x?}, expected one record at {slot:#x}"
        );
        let evtq_irqen = v.read(o::IRQ_CTRL, 4) & 4 != 0;
        if writes[0].2 {
            let mut raw = [0u8; 32];
            let read_back = self.mem().read(Ipa(slot), &mut raw);
            let mut rec = [0u64; 4];
            for (w, chunk) in rec.iter_mut().zip(raw.chunks_exact(8)) {
                *w = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
            }
            ensure!(
                self,
                read_back.is_ok() && Event::decode(rec) == event && rec[0] >> 32 == u64::from(vsid),
                "record {rec:x?} at {slot:#x} is not {event:?} (from {physical:?})"
            );
            ensure!(
                self,
                irq == evtq_irqen.then_some(GuestIrq::Event)
                    && after == (prod & OVFLG) | ((p + 1) & wrap_mask),
                "record written: {irq:?}, PROD {prod:#x} -> {after:#x}"
            );
            if matches!(physical, Event::BadSte { .. }) {
                self.stats.refusals_reported += 1;
            }
            self.stats.events += 1;
        } else {
            let active = |v: &VSmmu| (v.read(o::GERROR, 4) ^ v.read(o::GERRORN, 4)) & 4 != 0;
            let raise = !active(&before) && v.read(o::IRQ_CTRL, 4) & 1 != 0;
            ensure!(
                self,
                irq == raise.then_some(GuestIrq::GlobalError) && after == prod && active(v),
                "record write aborted: {irq:?}, PROD {prod:#x} -> {after:#x}, GERROR {:#x}",
                v.read(o::GERROR, 4)
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
        let v = self.v();
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

/// A guest register write.
struct Written<'a> {
    offset: usize,
    size: usize,
    value: u64,
    /// The 32-bit registers it reached.
    words: &'a [usize],
    /// The hypervisor runs the queue on it.
    kick: bool,
}

/// Every register as the guest reads it, and the SYNC state.
fn dump(v: &VSmmu) -> (Vec<u64>, bool) {
    let regs = REGISTERS
        .iter()
        .map(|&(off, _, _)| v.read(off, 4))
        .collect();
    (regs, v.sync_pending())
}

/// An input decoded, one operation per line: what a crashing input did.
pub fn describe(data: &[u8]) -> String {
    let (setup, ops) = decode_all(data, MAX_OPS);
    describe_input(&setup, &ops)
}
