//! A VM's virtual SMMUv3, wired to the physical one.
//!
//! The emulation itself (`smmu::vsmmu`) is pure; this module gives it the
//! VM's memory, the virtual-to-physical StreamID map, and carries out its
//! work: guest commands translated and submitted to the physical SMMU (a
//! bounded budget per trap), guest STEs re-read, validated, composed and
//! installed (abort, stage-2 only, or nested with the guest's CD table),
//! and the guest's CMD_SYNC completed only after the physical one.

use super::ram::GuestRam;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use log::warn;
use smmu::addr::{StreamId, Vmid};
use smmu::domain::DomainId;
use smmu::event::Event;
use smmu::ste::{S2Config, Ste};
use smmu::vsmmu::regs::{CmdqWork, VsmmuAction};
use smmu::vsmmu::ste::{compose, read_guest_ste, refusal_event, VsteError};
use smmu::vsmmu::{StreamMap, StreamRange, VSmmu, VsmmuPolicy};

/// Guest commands handled per round, and rounds per trap: bounded work, so
/// a guest flooding its queue cannot stall the physical CPU (the rest is
/// handled at the guest's next access, e.g. its poll of CMDQ_CONS).
const BUDGET: usize = 64;
const ROUNDS: usize = 4;

/// Virtual StreamID (the guest's requester ID) -> physical StreamID.
struct SidMap(BTreeMap<u32, StreamId>);

impl StreamMap for SidMap {
    fn physical(&self, vsid: StreamId) -> Option<StreamId> {
        self.0.get(&vsid.0).copied()
    }
}

/// The vSMMU of one VM.
pub struct VmVsmmu {
    dev: VSmmu,
    map: SidMap,
    mem: GuestRam,
    domain: DomainId,
    vmid: Vmid,
    s2: S2Config,
    /// Guest INTIDs of the event-queue and global-error interrupts.
    pub irqs: (u32, u32),
    /// Guest commands consumed, and physical commands they became
    /// (including the SYNCs and the STE installs' CFGI + SYNC).
    pub stats: (u64, u64),
    /// Virtual StreamIDs whose guest STE was refused, and why: their
    /// physical STE is invalid, and the C_BAD_STE events the SMMU records
    /// for them are the guest's.
    refused: BTreeMap<u32, VsteError>,
}

impl VmVsmmu {
    /// A vSMMU for a VM whose devices are `map` (virtual -> physical
    /// StreamID) in IOMMU domain `domain`.
    pub fn new(
        policy: VsmmuPolicy,
        map: BTreeMap<u32, StreamId>,
        mem: GuestRam,
        domain: DomainId,
        vmid: Vmid,
        s2: S2Config,
        irqs: (u32, u32),
    ) -> Self {
        Self {
            dev: VSmmu::new(policy),
            map: SidMap(map),
            mem,
            domain,
            vmid,
            s2,
            irqs,
            stats: (0, 0),
            refused: BTreeMap::new(),
        }
    }

    /// A guest access at `offset`; returns the value read and the guest
    /// interrupts to raise.
    pub fn access(&mut self, offset: u64, size: u8, write: bool, value: u64) -> (u64, Vec<u32>) {
        let (off, size) = (offset as usize, usize::from(size));
        let mut todo: VecDeque<VsmmuAction> = VecDeque::new();
        let result = if write {
            todo.extend(self.dev.write(off, size, value));
            0
        } else {
            // A guest polling CMDQ_CONS makes progress on its queue.
            if off == smmu::regs::offset::CMDQ_CONS && self.dev.cmdq_enabled() {
                todo.push_back(VsmmuAction::ProcessCommands);
            }
            0
        };
        let irqs = self.run(todo);
        let result = if write {
            result
        } else {
            self.dev.read(off, size)
        };
        (result, irqs)
    }

    fn run(&mut self, mut todo: VecDeque<VsmmuAction>) -> Vec<u32> {
        let mut irqs = Vec::new();
        let mut rounds = 0;
        while let Some(action) = todo.pop_front() {
            match action {
                VsmmuAction::ProcessCommands => {
                    if rounds == ROUNDS {
                        continue;
                    }
                    rounds += 1;
                    let out = self
                        .dev
                        .process_commands(&self.mem, self.vmid, &self.map, BUDGET);
                    self.stats.0 += out.consumed as u64;
                    for work in &out.work {
                        match work {
                            CmdqWork::Submit(cmd) => self.submit(cmd),
                            CmdqWork::Reinstall(range) => self.reinstall(range),
                        }
                    }
                    todo.extend(out.actions.iter().cloned());
                    if out.sync {
                        self.stats.1 += 1;
                        if let Some(h) = crate::drivers::iommu::get() {
                            if let Err(e) = h.lock().iommu.smmu().sync() {
                                warn!("vSMMU: physical CMD_SYNC failed: {e}");
                            }
                        }
                        todo.extend(self.dev.complete_sync());
                    }
                    if out.more {
                        todo.push_back(VsmmuAction::ProcessCommands);
                    }
                }
                VsmmuAction::StreamTableChanged => self.reinstall(&StreamRange::All),
                VsmmuAction::RaiseEventIrq => irqs.push(self.irqs.0),
                VsmmuAction::RaiseGerrorIrq => irqs.push(self.irqs.1),
            }
        }
        irqs
    }

    /// The virtual StreamID of physical StreamID `psid`, if it is one of
    /// this VM's.
    fn vsid_of(&self, psid: StreamId) -> Option<u32> {
        self.map.0.iter().find(|(_, &p)| p == psid).map(|(&v, _)| v)
    }

    /// Whether `e` is the guest's business: on one of this VM's streams, a
    /// stage-1 fault, a problem with its CD table, or C_BAD_STE for a
    /// stream whose STE it configured and the vSMMU refused.
    pub fn owns_event(&self, e: &Event) -> bool {
        let Some(vsid) = self.vsid_of(e.sid()) else {
            return false;
        };
        match e {
            Event::Fault { info, .. } => !info.s2,
            Event::BadCd { .. } | Event::CdFetch { .. } | Event::BadSubstreamId { .. } => true,
            Event::BadSte { .. } => self.refused.contains_key(&vsid),
            _ => false,
        }
    }

    /// Delivers a physical event on one of this VM's streams into the
    /// guest's event queue, with the guest's StreamID (C_BAD_STE of a
    /// refused STE as the event the refusal stands for). Returns the guest
    /// interrupt to raise, if any.
    pub fn inject_fault(&mut self, e: &Event) -> Option<u32> {
        let vsid = self.vsid_of(e.sid())?;
        let guest_event = match (e, self.refused.get(&vsid)) {
            (Event::BadSte { ssid, .. }, Some(why)) => refusal_event(why, StreamId(vsid), *ssid),
            _ => {
                let mut words = e.encode().ok()?;
                // StreamID: bits [63:32] of every event record (§7.3).
                words[0] = (words[0] & 0xffff_ffff) | (u64::from(vsid) << 32);
                Event::decode(words)
            }
        };
        let out = self.dev.inject(&self.mem, &guest_event);
        out.raise_event_irq.then_some(self.irqs.0)
    }

    fn submit(&mut self, cmd: &smmu::cmd::Command) {
        self.stats.1 += 1;
        if let Some(h) = crate::drivers::iommu::get() {
            if let Err(e) = h.lock().iommu.smmu().submit(core::slice::from_ref(cmd)) {
                warn!("vSMMU: physical submit of {cmd:?} failed: {e}");
            }
        }
    }

    /// Re-reads the guest's STEs in `range` and installs what they mean.
    fn reinstall(&mut self, range: &StreamRange) {
        let Some(h) = crate::drivers::iommu::get() else {
            return;
        };
        let sids: Vec<(u32, StreamId)> = self
            .map
            .0
            .iter()
            .filter(|(v, _)| range.contains(StreamId(**v)))
            .map(|(v, p)| (*v, *p))
            .collect();
        for (vsid, psid) in sids {
            let ste = if !self.dev.smmu_enabled() {
                // vSMMU off: GBPA decides (abort, or bypass = stage 2 only).
                if self.dev.gbpa_abort() {
                    Ok(Ste::abort())
                } else {
                    Ok(Ste::stage2(&self.s2))
                }
            } else {
                read_guest_ste(&self.mem, &self.dev.guest_strtab(), StreamId(vsid))
                    .and_then(|g| compose(&g, self.dev.policy(), &self.s2))
            };
            let mut h = h.lock();
            let r = match ste {
                Err(e) => {
                    if self.refused.insert(vsid, e) == Some(e) {
                        continue; // already refused for that reason
                    }
                    warn!("vSMMU: guest STE of vsid {vsid:#x} refused ({e}): its transactions abort, C_BAD_STE");
                    h.iommu.refuse(psid).map(|_| ())
                }
                Ok(ste) if ste == Ste::abort() => {
                    let was_refused = self.refused.remove(&vsid).is_some();
                    if h.iommu.owner(psid).is_none() && !was_refused {
                        continue; // already aborting
                    }
                    h.iommu.block(psid).map(|_| ())
                }
                Ok(ste) if ste == Ste::stage2(&self.s2) => {
                    self.refused.remove(&vsid);
                    h.iommu.attach(self.domain, psid)
                }
                Ok(ste) => {
                    self.refused.remove(&vsid);
                    let s1 = ste.s1_config();
                    log::info!(
                        "vSMMU: vsid {vsid:#x} -> sid {psid}: nested (guest CD table at IPA {:#x}, stage 2 of VMID {})",
                        s1.ctx_ptr.0,
                        self.vmid
                    );
                    h.iommu.attach_nested(self.domain, psid, &s1)
                }
            };
            // Each install is one CFGI_STE + CMD_SYNC on the physical SMMU.
            self.stats.1 += 2;
            if let Err(e) = r {
                warn!("vSMMU: installing the STE of vsid {vsid:#x} (sid {psid}) failed: {e}");
            }
        }
    }
}
