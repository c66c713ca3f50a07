//! [`FakePhysicalSmmu`]: the physical side of a vSMMU
//! ([`PhysicalSmmu`]) for host tests and fuzzing.
//!
//! It records every operation the vSMMU engine asks for, in order, keeps
//! the configuration each physical stream has (and the STE it stands for,
//! built as the IOMMU domain builds it), can be told to fail operations,
//! and says what the SMMU would record for a transaction on a stream.

use std::collections::BTreeMap;
use std::vec::Vec;

use crate::addr::{Iova, Ipa, Ssid, StreamId};
use crate::cmd::Command;
use crate::event::{Access, Event, FaultClass, FaultInfo, FaultKind};
use crate::ste::{S1Config, S2Config, StallModel, Ste};
use crate::vsmmu::PhysicalSmmu;

/// What a physical stream is configured to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// STE abort: transactions abort without an event.
    Abort,
    /// STE invalid (refused): transactions abort with C_BAD_STE.
    Invalid,
    /// The VM's stage 2 only.
    Stage2,
    /// The guest's stage 1 over the VM's stage 2.
    Nested(S1Config),
}

impl StreamState {
    /// The physical STE for this state over stage 2 `s2`.
    pub fn ste(&self, s2: &S2Config) -> Ste {
        match self {
            StreamState::Abort => Ste::abort(),
            StreamState::Invalid => Ste::invalid(),
            StreamState::Stage2 => Ste::stage2(s2),
            StreamState::Nested(s1) => Ste::nested(s2, s1),
        }
    }
}

/// One operation the physical side was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysicalOp {
    /// A command put on the physical queue.
    Submit(Command),
    /// A CMD_SYNC issued and waited for.
    Sync,
    /// An STE installed (with its CMD_CFGI_STE + CMD_SYNC).
    Install {
        /// The physical StreamID.
        sid: StreamId,
        /// What it was asked to become.
        state: StreamState,
    },
}

/// An operation, and whether it succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedOp {
    /// The operation.
    pub op: PhysicalOp,
    /// False when the fake was told to fail it (nothing changed then).
    pub ok: bool,
}

/// A failure the test asked for ([`FakePhysicalSmmu::fail_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("injected failure of the fake physical SMMU")]
pub struct InjectedFailure;

/// The physical SMMU as one VM's vSMMU sees it: the VM's stage 2 `s2`, the
/// streams of its devices, a stall model.
#[derive(Clone, Debug)]
pub struct FakePhysicalSmmu {
    s2: S2Config,
    stall: StallModel,
    streams: BTreeMap<StreamId, StreamState>,
    log: Vec<LoggedOp>,
    failures: u32,
}

impl FakePhysicalSmmu {
    /// A physical SMMU with stall model `stall` whose streams `sids` are
    /// attached to stage 2 `s2` (as the hypervisor leaves an assigned
    /// device before its VM's vSMMU is enabled).
    pub fn new(s2: S2Config, stall: StallModel, sids: impl IntoIterator<Item = StreamId>) -> Self {
        Self {
            s2,
            stall,
            streams: sids
                .into_iter()
                .map(|sid| (sid, StreamState::Stage2))
                .collect(),
            log: Vec::new(),
            failures: 0,
        }
    }

    /// The stage 2 the streams use.
    pub fn s2(&self) -> &S2Config {
        &self.s2
    }

    /// What `sid` is configured to do (`None`: not one of the VM's).
    pub fn state(&self, sid: StreamId) -> Option<StreamState> {
        self.streams.get(&sid).copied()
    }

    /// The STE the SMMU holds for `sid`.
    pub fn ste(&self, sid: StreamId) -> Option<Ste> {
        self.state(sid).map(|s| s.ste(&self.s2))
    }

    /// Every operation so far, in order.
    pub fn log(&self) -> &[LoggedOp] {
        &self.log
    }

    /// Every operation since the last call, in order.
    pub fn take_log(&mut self) -> Vec<LoggedOp> {
        core::mem::take(&mut self.log)
    }

    /// The commands submitted successfully so far, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.log
            .iter()
            .filter(|l| l.ok)
            .filter_map(|l| match l.op {
                PhysicalOp::Submit(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// Makes the next `n` operations fail (a submit of several commands is
    /// one operation).
    pub fn fail_next(&mut self, n: u32) {
        self.failures = n;
    }

    /// What the SMMU records for a read at `addr` by stream `sid` with
    /// SubstreamID `ssid` that nothing in the guest's tables translates:
    /// C_BAD_STE for an invalid STE; a stage 1 F_TRANSLATION for a nested
    /// stream; a stage 2 F_TRANSLATION for a stage-2-only one (the VM
    /// mapped nothing there); nothing for an aborting stream.
    pub fn transaction(&self, sid: StreamId, ssid: Option<Ssid>, addr: u64) -> Option<Event> {
        let fault = |s2: bool| Event::Fault {
            kind: FaultKind::Translation,
            info: FaultInfo {
                sid,
                ssid,
                stag: None,
                access: Access {
                    rnw: true,
                    ind: false,
                    pnu: false,
                },
                s2,
                class: FaultClass::In,
                nsipa: false,
                ttrnw: true,
                input_addr: Iova(addr),
            },
            ipa: Ipa(if s2 { addr & !0xfff } else { 0 }),
        };
        match self.state(sid)? {
            StreamState::Abort => None,
            StreamState::Invalid => Some(Event::BadSte { sid, ssid }),
            StreamState::Stage2 => Some(fault(true)),
            StreamState::Nested(_) => Some(fault(false)),
        }
    }

    /// Logs `op`, as failed (with an error) if the test asked for that.
    fn attempt(&mut self, op: PhysicalOp) -> Result<(), InjectedFailure> {
        let ok = self.failures == 0;
        self.failures = self.failures.saturating_sub(1);
        self.log.push(LoggedOp { op, ok });
        if ok {
            Ok(())
        } else {
            Err(InjectedFailure)
        }
    }

    fn install(&mut self, sid: StreamId, state: StreamState) -> Result<(), InjectedFailure> {
        self.attempt(PhysicalOp::Install { sid, state })?;
        self.streams.insert(sid, state);
        Ok(())
    }
}

impl PhysicalSmmu for FakePhysicalSmmu {
    type Error = InjectedFailure;

    fn stall_model(&mut self) -> StallModel {
        self.stall
    }

    fn submit(&mut self, cmds: &[Command]) -> Result<(), Self::Error> {
        let ok = self.failures == 0;
        self.failures = self.failures.saturating_sub(1);
        for &c in cmds {
            self.log.push(LoggedOp {
                op: PhysicalOp::Submit(c),
                ok,
            });
        }
        if ok {
            Ok(())
        } else {
            Err(InjectedFailure)
        }
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.attempt(PhysicalOp::Sync)
    }

    fn attach_stage2(&mut self, psid: StreamId) -> Result<(), Self::Error> {
        self.install(psid, StreamState::Stage2)
    }

    fn attach_nested(&mut self, psid: StreamId, s1: &S1Config) -> Result<(), Self::Error> {
        self.install(psid, StreamState::Nested(*s1))
    }

    fn block(&mut self, psid: StreamId) -> Result<(), Self::Error> {
        self.install(psid, StreamState::Abort)
    }

    fn refuse(&mut self, psid: StreamId) -> Result<(), Self::Error> {
        self.install(psid, StreamState::Invalid)
    }
}
