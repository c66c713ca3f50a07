//! The vSMMU engine: one VM's virtual SMMUv3 at work, from a guest register
//! access to what the physical SMMU is asked to do.
//!
//! [`VsmmuEngine`] owns the register file ([`VSmmu`]), the VM's memory (a
//! [`GuestMemory`]), its virtual-to-physical StreamIDs, and the physical
//! side (a [`PhysicalSmmu`]). On each guest access it runs the loop the
//! hypervisor, the fuzzer and the tests share:
//!
//! - guest commands are read from the guest's queue, checked against what
//!   the vSMMU advertises and translated ([`super::cmd`]); forwarded ones
//!   are submitted to the physical queue in guest order;
//! - CMD_CFGI_STE(_RANGE)/CMD_CFGI_ALL, and changes of SMMUEN, GBPA and
//!   the stream-table base, re-read the guest's STEs of the VM's streams
//!   and install what they mean ([`super::ste`]): abort, stage 2 only,
//!   nested, or refused (an invalid physical STE: the stream aborts with
//!   C_BAD_STE, which goes to the guest as the refusal it stands for);
//! - a guest CMD_SYNC completes only after a physical CMD_SYNC did;
//! - work per access is bounded: at most [`COMMANDS_PER_ACCESS`] guest
//!   commands, in rounds of at most [`COMMANDS_PER_ROUND`] (a round also
//!   ends at a CMD_SYNC); that is a whole queue of the size the vSMMU
//!   advertises, so what one write of CMDQ_PROD publishes completes in
//!   that trap, which a guest polling for its CMD_SYNC's MSI (never
//!   reading CMDQ_CONS) relies on; the rest of a larger queue waits for the
//!   guest's next access (its poll of CMDQ_CONS, or its next CMDQ_PROD);
//! - physical events on the VM's streams that are the guest's business
//!   ([`VsmmuEngine::owns_event`]) go into its event queue with its
//!   StreamID ([`VsmmuEngine::inject_fault`]).
//!
//! Nothing a guest does makes the engine print without bound: each kind of
//! line (installs, refusals, physical failures) is printed [`LOG_LINES`]
//! times per vSMMU, then only counted ([`VsmmuStats::log_lines_dropped`]).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;

use log::{debug, info, warn};

use super::regs::{CmdqOutcome, CmdqWork, IrqSource, VSmmu, VsmmuAction};
use super::ste::{compose_with_stall, read_guest_ste, refusal_event, VsteError};
use super::{GuestMemory, StreamRange, VsmmuPolicy};
use crate::addr::{StreamId, Vmid};
use crate::cmd::Command;
use crate::event::Event;
use crate::regs::offset;
use crate::ste::{S1Config, S2Config, StallModel, Ste};

/// Guest commands handled per round, the largest batch submitted to the
/// physical queue at once. A round also ends at a guest CMD_SYNC.
pub const COMMANDS_PER_ROUND: usize = 64;
/// Guest commands handled per guest access: a whole queue of the size the
/// vSMMU advertises by default ([`VsmmuPolicy::DEFAULT_QS`]), so a guest
/// flooding its queue costs at most this many commands (and as many
/// physical CMD_SYNCs) per trap and cannot stall the physical CPU; the
/// rest is handled at its next access.
pub const COMMANDS_PER_ACCESS: usize = 1 << VsmmuPolicy::DEFAULT_QS;
/// Lines of each kind (installs, refusals, physical failures) one vSMMU
/// prints; later ones are only counted.
pub const LOG_LINES: u32 = 16;

/// The physical SMMU as one VM's vSMMU uses it: the VM's IOMMU domain
/// (its VMID and stage 2) and the physical streams of its devices.
///
/// Every method is one complete operation: an install has written the STE
/// and waited for its CMD_CFGI_STE + CMD_SYNC when it returns.
pub trait PhysicalSmmu {
    /// Why an operation failed (the engine counts and reports it).
    type Error: fmt::Display;

    /// SMMU_IDR0.STALL_MODEL of the physical SMMU: decides S1STALLD of the
    /// nested STEs (see [`compose_with_stall`]).
    fn stall_model(&mut self) -> StallModel;
    /// Puts `cmds` on the physical command queue, in order (completion is
    /// known only after [`sync`](Self::sync)).
    fn submit(&mut self, cmds: &[Command]) -> Result<(), Self::Error>;
    /// Issues a physical CMD_SYNC and waits (bounded) for it: every command
    /// submitted before it has completed.
    fn sync(&mut self) -> Result<(), Self::Error>;
    /// [`submit`](Self::submit) of `cmds` (if any) followed by
    /// [`sync`](Self::sync); a physical SMMU may publish the commands and
    /// the CMD_SYNC with one write of its queue's producer index. On an
    /// error nothing is known to have completed (the default attempts the
    /// sync whatever the submit did, and returns the first error).
    fn submit_sync(&mut self, cmds: &[Command]) -> Result<(), Self::Error> {
        let submitted = if cmds.is_empty() {
            Ok(())
        } else {
            self.submit(cmds)
        };
        let synced = self.sync();
        submitted.and(synced)
    }
    /// Makes `psid` use the VM's stage 2 alone.
    fn attach_stage2(&mut self, psid: StreamId) -> Result<(), Self::Error>;
    /// Makes `psid` nested: the guest's stage 1 `s1` over the VM's stage 2.
    fn attach_nested(&mut self, psid: StreamId, s1: &S1Config) -> Result<(), Self::Error>;
    /// Makes `psid` abort (no event).
    fn block(&mut self, psid: StreamId) -> Result<(), Self::Error>;
    /// Makes `psid`'s STE invalid: its transactions abort and the SMMU
    /// records C_BAD_STE for each (§7.3.5).
    fn refuse(&mut self, psid: StreamId) -> Result<(), Self::Error>;
}

/// A guest interrupt the vSMMU asserts (wired, edge: raise it once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestIrq {
    /// The event-queue interrupt.
    Event,
    /// The global-error interrupt.
    GlobalError,
}

/// What one vSMMU did, for the VM's counters and its final report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsmmuStats {
    /// Guest commands consumed (CMD_SYNCs and rejected commands included).
    pub guest_commands: u64,
    /// Physical commands they became: forwarded commands, CMD_SYNCs, and
    /// one CMD_CFGI_STE + CMD_SYNC per STE install.
    pub physical_commands: u64,
    /// Physical STEs installed for the VM's streams.
    pub installs: u64,
    /// Guest STEs refused (each time a stream becomes refused).
    pub refusals: u64,
    /// Physical operations that failed.
    pub physical_errors: u64,
    /// Event records written into the guest's event queue.
    pub events: u64,
    /// MSIs written to guest memory: CMD_SYNC completions, event-queue and
    /// global-error interrupts.
    pub msis: u64,
    /// Log lines not printed because their kind had used its budget.
    pub log_lines_dropped: u64,
}

/// What the engine last installed for a virtual StreamID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Installed {
    Abort,
    Stage2,
    Nested(S1Config),
    /// No STE to install (none configured, or refused), and why: C_BAD_STE
    /// of the stream is the guest's, as the event `refusal_event` makes it.
    Refused(VsteError),
}

/// The kinds of log lines, each with its own budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogKind {
    Install,
    Refusal,
    Failure,
}

impl LogKind {
    fn name(self) -> &'static str {
        match self {
            LogKind::Install => "install",
            LogKind::Refusal => "refusal",
            LogKind::Failure => "failure",
        }
    }
}

/// One VM's vSMMU: register file, command loop, STE installs and event
/// injection, over the physical side `P` and the VM's memory `M`.
#[derive(Debug)]
pub struct VsmmuEngine<P, M> {
    dev: VSmmu,
    mem: M,
    phys: P,
    vmid: Vmid,
    s2: S2Config,
    /// Virtual StreamID -> physical StreamID of the VM's devices.
    streams: BTreeMap<StreamId, StreamId>,
    /// By virtual StreamID; absent: unknown (the last install failed), so
    /// the next one is done whatever it is.
    installed: BTreeMap<StreamId, Installed>,
    stats: VsmmuStats,
    /// Lines printed, per [`LogKind`].
    printed: [u32; 3],
    /// Buffers of the command loop, kept between accesses so that a trap
    /// allocates nothing once they have grown.
    scratch: Scratch,
}

/// The command loop's buffers (each empty between accesses).
#[derive(Debug, Default)]
struct Scratch {
    /// Actions still to carry out in this access, in order.
    todo: VecDeque<VsmmuAction>,
    /// One round's outcome.
    round: CmdqOutcome,
    /// Physical commands waiting to be submitted together.
    batch: Vec<Command>,
}

impl<P: PhysicalSmmu, M: GuestMemory> VsmmuEngine<P, M> {
    /// The vSMMU of a VM with VMID `vmid` and stage 2 `s2` whose devices
    /// are `streams` (virtual -> physical StreamID), in its reset state,
    /// advertising `policy`. The streams are taken as attached to the VM's
    /// stage 2, as a vSMMU out of reset (SMMUEN 0, GBPA bypass) wants.
    pub fn new(
        policy: VsmmuPolicy,
        vmid: Vmid,
        s2: S2Config,
        streams: BTreeMap<StreamId, StreamId>,
        mem: M,
        phys: P,
    ) -> Self {
        Self {
            dev: VSmmu::new(policy),
            mem,
            phys,
            vmid,
            s2,
            installed: streams.keys().map(|&v| (v, Installed::Stage2)).collect(),
            streams,
            stats: VsmmuStats::default(),
            printed: [0; 3],
            scratch: Scratch::default(),
        }
    }

    /// The register file, as the guest sees it (reads have no effect).
    pub fn vsmmu(&self) -> &VSmmu {
        &self.dev
    }

    /// The VM's memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The physical side.
    pub fn physical(&self) -> &P {
        &self.phys
    }

    /// The physical side, mutable (for tests and fault injection).
    pub fn physical_mut(&mut self) -> &mut P {
        &mut self.phys
    }

    /// What this vSMMU did so far.
    pub fn stats(&self) -> &VsmmuStats {
        &self.stats
    }

    /// The VM's streams: (virtual, physical) StreamIDs.
    pub fn streams(&self) -> impl Iterator<Item = (StreamId, StreamId)> + '_ {
        self.streams.iter().map(|(&v, &p)| (v, p))
    }

    /// A guest access of `size` bytes at `offset` in the register frame
    /// (`value` for a write). Returns the value read (0 for a write) and
    /// the guest interrupts to raise. Writes and a read of CMDQ_CONS run
    /// the command queue, within the budget.
    pub fn access(
        &mut self,
        offset: u64,
        size: u8,
        write: bool,
        value: u64,
    ) -> (u64, Vec<GuestIrq>) {
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        let size = usize::from(size);
        let mut todo = core::mem::take(&mut self.scratch.todo);
        if write {
            self.dev.write_into(off, size, value, &mut todo);
        } else if off == offset::CMDQ_CONS && self.dev.cmdq_enabled() {
            // A guest polling CMDQ_CONS makes progress on its queue.
            todo.push_back(VsmmuAction::ProcessCommands);
        }
        let irqs = self.run(&mut todo);
        self.scratch.todo = todo;
        let read = if write { 0 } else { self.dev.read(off, size) };
        (read, irqs)
    }

    /// Carries out register-write and command-round actions until `todo`
    /// is empty: at most [`COMMANDS_PER_ACCESS`] commands, in rounds of at
    /// most [`COMMANDS_PER_ROUND`].
    fn run(&mut self, todo: &mut VecDeque<VsmmuAction>) -> Vec<GuestIrq> {
        let mut irqs = Vec::new();
        let raise = |irqs: &mut Vec<GuestIrq>, irq| {
            if !irqs.contains(&irq) {
                irqs.push(irq);
            }
        };
        let mut consumed = 0;
        while let Some(action) = todo.pop_front() {
            match action {
                VsmmuAction::ProcessCommands => {
                    let left = COMMANDS_PER_ACCESS - consumed;
                    if left == 0 {
                        continue;
                    }
                    // Each round consumes at least one command or asks
                    // for no further one, so this ends.
                    consumed += self.round(left.min(COMMANDS_PER_ROUND), todo);
                }
                VsmmuAction::StreamTableChanged => self.reinstall(&StreamRange::All),
                VsmmuAction::RaiseEventIrq => {
                    if !self.signal_msi(IrqSource::Event, todo) {
                        raise(&mut irqs, GuestIrq::Event);
                    }
                }
                VsmmuAction::RaiseGerrorIrq => {
                    if !self.signal_msi(IrqSource::GlobalError, todo) {
                        raise(&mut irqs, GuestIrq::GlobalError);
                    }
                }
            }
        }
        irqs
    }

    /// Signals `irq` by its MSI if the guest configured one: writes its
    /// data to guest memory, or activates its abort error (queuing what
    /// that raises) when the address is not the guest's RAM. False for a
    /// wired interrupt.
    fn signal_msi(&mut self, irq: IrqSource, todo: &mut VecDeque<VsmmuAction>) -> bool {
        let Some((at, data)) = self.dev.msi_target(irq) else {
            return false;
        };
        if self.mem.write(at, &data.to_le_bytes()).is_ok() {
            self.stats.msis += 1;
        } else {
            todo.extend(self.dev.msi_aborted(irq));
        }
        true
    }

    /// One round of at most `budget` guest commands; returns how many it
    /// consumed, and appends what to do next to `todo`.
    fn round(&mut self, budget: usize, todo: &mut VecDeque<VsmmuAction>) -> usize {
        let mut out = core::mem::take(&mut self.scratch.round);
        let mut batch = core::mem::take(&mut self.scratch.batch);
        self.dev
            .process_commands_into(&self.mem, self.vmid, &self.streams, budget, &mut out);
        self.stats.guest_commands += out.consumed as u64;
        for work in out.work.drain(..) {
            match work {
                CmdqWork::Submit(cmd) => batch.push(cmd),
                CmdqWork::Reinstall(range) => {
                    self.forward(&mut batch, false);
                    self.reinstall(&range);
                }
            }
        }
        todo.extend(out.actions.drain(..));
        // The forwarded commands and the CMD_SYNC standing for the guest's
        // go out together.
        self.forward(&mut batch, out.sync);
        if out.sync {
            let done = self.dev.complete_sync(&self.mem);
            self.stats.msis += u64::from(done.msi_written);
            todo.extend(done.actions);
        }
        if out.more {
            todo.push_back(VsmmuAction::ProcessCommands);
        }
        let consumed = out.consumed;
        self.scratch.round = out;
        self.scratch.batch = batch;
        consumed
    }

    /// Submits and empties `batch`, followed by a physical CMD_SYNC with
    /// `sync`.
    fn forward(&mut self, batch: &mut Vec<Command>, sync: bool) {
        if batch.is_empty() && !sync {
            return;
        }
        self.stats.physical_commands += batch.len() as u64 + u64::from(sync);
        let sent = if sync {
            self.phys.submit_sync(batch)
        } else {
            self.phys.submit(batch)
        };
        if let Err(e) = sent {
            // A guest's CMD_SYNC completes anyway: what it asked for was
            // submitted, the VM's stage 2 still bounds its devices, and a
            // guest waiting forever would gain nothing.
            self.failure(format_args!(
                "physical submit of {} commands{} failed: {e}",
                batch.len(),
                if sync { " and CMD_SYNC" } else { "" }
            ));
        }
        batch.clear();
    }

    /// Re-reads the guest's STEs of the VM's streams in `range` and
    /// installs what they mean.
    fn reinstall(&mut self, range: &StreamRange) {
        let streams: Vec<(StreamId, StreamId)> = self
            .streams
            .iter()
            .filter(|(v, _)| range.contains(**v))
            .map(|(&v, &p)| (v, p))
            .collect();
        for (vsid, psid) in streams {
            let want = self.wanted(vsid);
            self.install(vsid, psid, want);
        }
    }

    /// What the guest configured for `vsid`.
    fn wanted(&mut self, vsid: StreamId) -> Installed {
        if !self.dev.smmu_enabled() {
            // vSMMU off: GBPA decides (abort, or bypass = stage 2 only).
            return if self.dev.gbpa_abort() {
                Installed::Abort
            } else {
                Installed::Stage2
            };
        }
        let stall = self.phys.stall_model();
        let composed = read_guest_ste(&self.mem, &self.dev.guest_strtab(), vsid)
            .and_then(|g| compose_with_stall(&g, self.dev.policy(), &self.s2, stall));
        match composed {
            Err(e) => Installed::Refused(e),
            Ok(ste) if ste == Ste::abort() => Installed::Abort,
            Ok(ste) if ste == Ste::stage2(&self.s2) => Installed::Stage2,
            Ok(ste) => Installed::Nested(ste.s1_config()),
        }
    }

    fn install(&mut self, vsid: StreamId, psid: StreamId, want: Installed) {
        let was = self.installed.get(&vsid).copied();
        match (was, want) {
            // Still without an STE (perhaps for another reason now): the
            // physical STE is invalid either way.
            (Some(Installed::Refused(old)), Installed::Refused(new)) => {
                self.installed.insert(vsid, want);
                if new.is_refusal() && new != old {
                    self.refused(vsid, new);
                }
                return;
            }
            // The same physical STE: nothing to write, nothing to
            // invalidate.
            (Some(was), want) if was == want => return,
            _ => {}
        }
        let result = match want {
            Installed::Abort => self.phys.block(psid),
            Installed::Stage2 => self.phys.attach_stage2(psid),
            Installed::Nested(s1) => self.phys.attach_nested(psid, &s1),
            Installed::Refused(_) => self.phys.refuse(psid),
        };
        self.stats.installs += 1;
        // Each install is (at least) one CFGI_STE + CMD_SYNC.
        self.stats.physical_commands += 2;
        if let Err(e) = result {
            // Unknown now: the next CFGI_STE for it installs again.
            self.installed.remove(&vsid);
            self.failure(format_args!(
                "installing the STE of vsid {:#x} (sid {psid}) failed: {e}",
                vsid.0
            ));
            return;
        }
        self.installed.insert(vsid, want);
        let (vsid, vmid) = (vsid.0, self.vmid);
        match want {
            Installed::Refused(e) if e.is_refusal() => self.refused(StreamId(vsid), e),
            Installed::Nested(s1) => {
                if self.may_log(LogKind::Install) {
                    info!(
                        "vSMMU: vsid {vsid:#x} -> sid {psid}: nested (guest CD table at IPA {:#x}, stage 2 of VMID {vmid})",
                        s1.ctx_ptr.0
                    );
                }
            }
            Installed::Stage2 => {
                if self.may_log(LogKind::Install) {
                    info!("vSMMU: vsid {vsid:#x} -> sid {psid}: stage 2 of VMID {vmid} only");
                }
            }
            Installed::Abort => {
                if self.may_log(LogKind::Install) {
                    info!("vSMMU: vsid {vsid:#x} -> sid {psid}: aborts (VMID {vmid})");
                }
            }
            Installed::Refused(e) => {
                if self.may_log(LogKind::Install) {
                    info!("vSMMU: vsid {vsid:#x} -> sid {psid}: {e}, its transactions abort with an event (VMID {vmid})");
                }
            }
        }
    }

    /// Counts a guest STE the vSMMU refused and reports it (bounded).
    fn refused(&mut self, vsid: StreamId, e: VsteError) {
        self.stats.refusals += 1;
        if self.may_log(LogKind::Refusal) {
            warn!(
                "vSMMU: guest STE of vsid {:#x} refused ({e}): its transactions abort, {} (VMID {})",
                vsid.0,
                crate::event::event_id::name(refusal_event(&e, vsid, None).id()).unwrap_or("an event"),
                self.vmid
            );
        }
    }

    /// Counts a failed physical operation and reports it (bounded).
    fn failure(&mut self, what: fmt::Arguments<'_>) {
        self.stats.physical_errors += 1;
        if self.may_log(LogKind::Failure) {
            warn!("vSMMU: {what} (VMID {})", self.vmid);
        }
    }

    /// Whether a line of `kind` may be printed; says once when a kind has
    /// used its budget, and counts what is dropped.
    fn may_log(&mut self, kind: LogKind) -> bool {
        let printed = &mut self.printed[kind as usize];
        if *printed < LOG_LINES {
            *printed += 1;
            return true;
        }
        if *printed == LOG_LINES {
            *printed += 1;
            warn!(
                "vSMMU: VMID {}: {LOG_LINES} {} lines printed, further ones only counted",
                self.vmid,
                kind.name()
            );
        }
        self.stats.log_lines_dropped += 1;
        debug!("vSMMU: VMID {}: {} line dropped", self.vmid, kind.name());
        false
    }

    /// The virtual StreamID of physical StreamID `psid`, if it is one of
    /// this VM's.
    fn vsid_of(&self, psid: StreamId) -> Option<StreamId> {
        self.streams
            .iter()
            .find(|(_, &p)| p == psid)
            .map(|(&v, _)| v)
    }

    /// Whether physical event `e` is the guest's business: on one of this
    /// VM's streams, a stage-1 fault, a problem with its CD table
    /// (C_BAD_CD, F_CD_FETCH, C_BAD_SUBSTREAMID), or C_BAD_STE of a stream
    /// whose STE it configured and the vSMMU refused. Stage-2 faults
    /// (including those of CD fetches and stage-1 walks) are the
    /// hypervisor's.
    pub fn owns_event(&self, e: &Event) -> bool {
        let Some(vsid) = self.vsid_of(e.sid()) else {
            return false;
        };
        match e {
            Event::Fault { info, .. } => !info.s2,
            Event::BadCd { .. } | Event::CdFetch { .. } | Event::BadSubstreamId { .. } => true,
            Event::BadSte { .. } => {
                matches!(self.installed.get(&vsid), Some(Installed::Refused(_)))
            }
            _ => false,
        }
    }

    /// Writes physical event `e` of one of this VM's streams into the
    /// guest's event queue with the guest's StreamID (C_BAD_STE of a
    /// refused STE as the event the refusal stands for, see
    /// [`refusal_event`]). Returns the wired guest interrupt to raise, if
    /// any (none when the guest configured an MSI for it).
    /// Call it for events [`owns_event`](Self::owns_event) accepts.
    pub fn inject_fault(&mut self, e: &Event) -> Option<GuestIrq> {
        let vsid = self.vsid_of(e.sid())?;
        let guest_event = match (e, self.installed.get(&vsid)) {
            (Event::BadSte { ssid, .. }, Some(Installed::Refused(why))) => {
                refusal_event(why, vsid, *ssid)
            }
            _ => {
                let mut words = e.encode().ok()?;
                // StreamID: bits [63:32] of every event record (§7.3).
                words[0] = (words[0] & 0xffff_ffff) | (u64::from(vsid.0) << 32);
                Event::decode(words)
            }
        };
        let out = self.dev.inject(&self.mem, &guest_event);
        if out.written {
            self.stats.events += 1;
        }
        let action = if out.raise_event_irq {
            VsmmuAction::RaiseEventIrq
        } else if out.raise_gerror_irq {
            VsmmuAction::RaiseGerrorIrq
        } else {
            return None;
        };
        // At most one wired interrupt comes of it: the event queue's, or
        // the global-error one when its MSI (or the event queue's) aborted.
        let mut todo = core::mem::take(&mut self.scratch.todo);
        todo.push_back(action);
        let irqs = self.run(&mut todo);
        self.scratch.todo = todo;
        irqs.first().copied()
    }
}

#[cfg(test)]
mod tests;
