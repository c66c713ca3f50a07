//! Per-VM IOMMU domains on top of the physical driver.
//!
//! A [`Domain`] is one VM's DMA address space as the SMMU sees it: one VMID
//! (tags its TLB entries, IHI 0070 §3.9.1), one [`Stage2`] table (IPA ->
//! PA), and the StreamIDs whose STEs point at it. [`Iommu`] owns the
//! [`Smmu`], the [`VmidAllocator`], every domain and the StreamID -> domain
//! map, so that a stream can belong to one VM only, and it sequences every
//! change in the order the specification requires:
//!
//! - `attach`: STE written in memory, then CMD_CFGI_STE + CMD_SYNC (§3.21);
//! - `unmap`/`protect`: descriptors changed (break-before-make inside
//!   [`Stage2`]), then CMD_TLBI_S2_IPA for exactly the changed ranges (range
//!   encoded when IDR3.RIL, §4.4.1.1) and ONE CMD_SYNC for the batch; tables
//!   that became empty are freed only after the SYNC;
//! - `destroy`: every STE made abort first, then CMD_TLBI_S12_VMALL + SYNC,
//!   then the tables are freed and only then is the VMID reusable (§4.4.3).

use crate::addr::{Ipa, PhysAddr, StreamId, Vmid};
use crate::cmd::{tlbi_ipa_range, Command, TlbiScope, TtLevel, MAX_TLBI_OPS};
use crate::driver::{Smmu, SmmuError};
use crate::hw::Mmio;
use crate::stage2::{Invalidation, S2Attrs, Stage2, Stage2Error, TlbRange};
use crate::ste::{Granule, S1Config, S2Config, Ste};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use log::{debug, info};

/// Errors of domain operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// No domain with this handle (never created, or destroyed).
    #[error("no IOMMU domain {0}")]
    NoSuchDomain(DomainId),
    /// Every VMID is in use.
    #[error("no free VMID")]
    NoVmid,
    /// The StreamID already belongs to another domain.
    #[error("StreamID {sid} is already attached to domain {owner}")]
    StreamInUse {
        /// The stream.
        sid: StreamId,
        /// The domain it is attached to.
        owner: DomainId,
    },
    /// The StreamID is not attached to any domain.
    #[error("StreamID {0} is not attached")]
    NotAttached(StreamId),
    /// The page-table operation failed; nothing was changed.
    #[error("stage 2: {0}")]
    Stage2(Stage2Error),
    /// The SMMU failed (timeout, rejected command, stream table).
    #[error("SMMU: {0}")]
    Smmu(SmmuError),
}

impl From<Stage2Error> for DomainError {
    fn from(e: Stage2Error) -> Self {
        Self::Stage2(e)
    }
}

impl From<SmmuError> for DomainError {
    fn from(e: SmmuError) -> Self {
        Self::Smmu(e)
    }
}

/// Proof that CMD_TLBI_S12_VMALL for a VMID completed (a CMD_SYNC after it
/// was consumed): the only way to give a used VMID back. Made only in this
/// module.
#[derive(Debug)]
pub struct FlushedVmid(Vmid);

/// Hands out VMIDs (8 or 16 bits, IDR0.VMID16; VMID 0 is never used).
///
/// Allocation is next-fit, so a released VMID is reused as late as
/// possible; a used VMID is released only with a [`FlushedVmid`], so no TLB
/// entry of its previous owner can survive into the next.
#[derive(Debug)]
pub struct VmidAllocator {
    bits: u8,
    used: BTreeSet<u16>,
    next: u16,
}

impl VmidAllocator {
    /// An allocator of `bits`-bit VMIDs (8 or 16).
    pub fn new(bits: u8) -> Self {
        Self {
            bits: bits.clamp(1, 16),
            used: BTreeSet::new(),
            next: 1,
        }
    }

    /// The largest VMID.
    fn max(&self) -> u16 {
        ((1u32 << self.bits) - 1) as u16
    }

    /// Number of VMIDs that can be live at once (VMID 0 excluded).
    pub fn capacity(&self) -> usize {
        usize::from(self.max())
    }

    /// Number of VMIDs in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// A free VMID, or `None` when all are in use.
    pub fn alloc(&mut self) -> Option<Vmid> {
        if self.used.len() >= self.capacity() {
            return None;
        }
        let max = self.max();
        // Bounded: at most one pass over the VMID space.
        for _ in 0..=max {
            let v = self.next;
            self.next = if v >= max { 1 } else { v + 1 };
            if self.used.insert(v) {
                return Some(Vmid(v));
            }
        }
        None
    }

    /// Gives back a VMID whose TLB entries were invalidated.
    pub fn release(&mut self, flushed: FlushedVmid) {
        self.used.remove(&flushed.0 .0);
    }

    /// Gives back a VMID that was never put into an STE or TLB entry.
    fn release_unused(&mut self, vmid: Vmid) {
        self.used.remove(&vmid.0);
    }
}

/// Handle of a domain inside its [`Iommu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u32);

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One VM's DMA address space: a VMID, a stage-2 table, attached streams.
#[derive(Debug)]
pub struct Domain {
    vmid: Vmid,
    s2: Stage2,
    streams: BTreeSet<StreamId>,
    /// Some stream uses nested translation: stage-1 entries combined with
    /// this stage 2 must be invalidated too when stage 2 changes.
    nested: bool,
}

impl Domain {
    /// The VMID tagging this domain's TLB entries.
    pub fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// The stage-2 tables (read-only: changes go through [`Iommu`] so the
    /// TLBs are kept coherent).
    pub fn stage2(&self) -> &Stage2 {
        &self.s2
    }

    /// The IPA size in bits.
    pub fn ipa_bits(&self) -> u32 {
        self.s2.ipa_bits()
    }

    /// The attached StreamIDs.
    pub fn streams(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams.iter().copied()
    }

    /// Whether some stream translates nested through this stage 2.
    pub fn is_nested(&self) -> bool {
        self.nested
    }
}

/// The stage-2 half of the STE for `domain` (§5.2: S2VMID, S2T0SZ, S2SL0,
/// S2TG, S2PS, S2TTB, walk attributes). Table walks are cacheable inner
/// shareable on a coherent SMMU (IDR0.COHACC), non-cacheable outer
/// shareable otherwise.
pub fn s2_config(domain: &Domain, coherent: bool) -> S2Config {
    let c = domain.s2.config();
    let (cache, sh) = if coherent { (0b01, 0b11) } else { (0b00, 0b10) };
    S2Config {
        vmid: domain.vmid,
        ttb: c.root,
        t0sz: c.t0sz,
        sl0: c.sl0,
        granule: Granule::Size4K,
        ps: c.ps,
        ir0: cache,
        or0: cache,
        sh0: sh,
        affd: true,
    }
}

/// The commands that invalidate `ranges` of `vmid` (without the CMD_SYNC):
/// CMD_TLBI_S2_IPA per range, with range encoding when `ril`
/// (IDR3.RIL), else one per entry; CMD_TLBI_S12_VMALL instead when that
/// would exceed [`MAX_TLBI_OPS`] commands or a range cannot be expressed.
///
/// Range commands carry the TTL level hint of [`TlbRange::ttl_hint`]
/// (§4.4.1.1): the leaf level for a leaf range, none (TTL = 0) where a table
/// was unlinked (`leaf == false`, invalidated with Leaf = 0), since a hint
/// that does not match the cached entry allows the SMMU to keep it and the
/// stale walk-cache entries sit above the removed table. Level-0 ranges (an
/// unlinked level-1 table under a level-0 root) get one command per 512 GiB
/// entry, without range encoding.
pub fn tlbi_commands(vmid: Vmid, ranges: &[TlbRange], ril: bool) -> Vec<Command> {
    let vmall = vec![Command::TlbiS12Vmall { vmid }];
    let mut out = Vec::new();
    for r in ranges {
        let level = match r.level {
            0 => {
                const L0_ENTRY: u64 = 1 << 39;
                let n = r.len.div_ceil(L0_ENTRY);
                if n > MAX_TLBI_OPS {
                    return vmall;
                }
                for i in 0..n {
                    out.push(Command::TlbiS2Ipa {
                        vmid,
                        addr: Ipa(r.ipa.0 + i * L0_ENTRY),
                        scope: TlbiScope {
                            leaf: r.leaf,
                            range: None,
                        },
                    });
                }
                continue;
            }
            1 => TtLevel::L1,
            2 => TtLevel::L2,
            3 => TtLevel::L3,
            _ => return vmall,
        };
        let Ok(mut cmds) = tlbi_ipa_range(vmid, r.ipa, r.len, level, r.leaf, ril) else {
            return vmall;
        };
        for c in &mut cmds {
            if let Command::TlbiS2Ipa { scope, .. } = c {
                if let Some(range) = &mut scope.range {
                    range.ttl = r.ttl_hint().unwrap_or(0);
                    if (range.ttl, range.scale, range.num) == (0, 0, 0) {
                        // Reserved encoding (§4.4.1.1); one granule without
                        // range fields means the same.
                        scope.range = None;
                    }
                }
            }
        }
        out.append(&mut cmds);
        if out.len() as u64 > MAX_TLBI_OPS {
            return vmall;
        }
    }
    out
}

/// The SMMU with its domains: the only way the hypervisor changes what a
/// device can reach.
pub struct Iommu<'a, M: Mmio> {
    smmu: Smmu<'a, M>,
    vmids: VmidAllocator,
    domains: BTreeMap<DomainId, Domain>,
    streams: BTreeMap<StreamId, DomainId>,
    next_id: u32,
}

impl<M: Mmio> fmt::Debug for Iommu<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iommu")
            .field("smmu", &self.smmu)
            .field("vmids", &self.vmids)
            .field("domains", &self.domains.len())
            .field("streams", &self.streams)
            .finish()
    }
}

impl<'a, M: Mmio> Iommu<'a, M> {
    /// Takes over a reset SMMU (every stream aborting).
    pub fn new(smmu: Smmu<'a, M>) -> Self {
        let vmids = VmidAllocator::new(smmu.features().vmid_bits());
        Self {
            smmu,
            vmids,
            domains: BTreeMap::new(),
            streams: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// The driver (for events, errors, raw commands).
    pub fn smmu(&mut self) -> &mut Smmu<'a, M> {
        &mut self.smmu
    }

    /// The driver, read-only.
    pub fn smmu_ref(&self) -> &Smmu<'a, M> {
        &self.smmu
    }

    /// The VMID allocator, read-only.
    pub fn vmids(&self) -> &VmidAllocator {
        &self.vmids
    }

    /// A domain, if it exists.
    pub fn domain(&self, id: DomainId) -> Option<&Domain> {
        self.domains.get(&id)
    }

    /// The domain `sid` is attached to.
    pub fn owner(&self, sid: StreamId) -> Option<DomainId> {
        self.streams.get(&sid).copied()
    }

    /// Creates an empty domain with a fresh VMID and a stage-2 table of
    /// `ipa_bits` input bits, bounded by the SMMU's IDR5.OAS (and 48 bits,
    /// the 4 KiB-granule limit); output size = OAS (at most 48 bits).
    pub fn create_domain(&mut self, ipa_bits: u32) -> Result<DomainId, DomainError> {
        let oas = u32::from(self.smmu.features().oas_bits).min(48);
        let ipa = ipa_bits.min(oas);
        let vmid = self.vmids.alloc().ok_or(DomainError::NoVmid)?;
        let s2 = match Stage2::new(self.smmu.allocator(), ipa, oas) {
            Ok(s2) => s2,
            Err(e) => {
                self.vmids.release_unused(vmid);
                return Err(e.into());
            }
        };
        let id = DomainId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        debug!("iommu: domain {id}: vmid {vmid}, {ipa}-bit IPA");
        self.domains.insert(
            id,
            Domain {
                vmid,
                s2,
                streams: BTreeSet::new(),
                nested: false,
            },
        );
        Ok(id)
    }

    fn domain_mut(&mut self, id: DomainId) -> Result<&mut Domain, DomainError> {
        self.domains
            .get_mut(&id)
            .ok_or(DomainError::NoSuchDomain(id))
    }

    /// Maps `[ipa, ipa + len)` to `[pa, pa + len)`. Only invalid entries are
    /// replaced, so no invalidation is needed; on failure nothing is mapped.
    pub fn map(
        &mut self,
        id: DomainId,
        ipa: Ipa,
        pa: PhysAddr,
        len: u64,
        attrs: S2Attrs,
    ) -> Result<(), DomainError> {
        let alloc = self.smmu.allocator();
        self.domain_mut(id)?.s2.map(alloc, ipa, pa, len, attrs)?;
        Ok(())
    }

    /// Unmaps `[ipa, ipa + len)`, invalidates the SMMU's TLBs for exactly
    /// what changed (one batch, one CMD_SYNC), then frees emptied tables.
    pub fn unmap(&mut self, id: DomainId, ipa: Ipa, len: u64) -> Result<(), DomainError> {
        self.change(id, |s2, alloc, brk| s2.unmap_live(alloc, ipa, len, brk))
    }

    /// Changes the attributes of `[ipa, ipa + len)`, then invalidates as
    /// [`unmap`](Self::unmap).
    pub fn protect(
        &mut self,
        id: DomainId,
        ipa: Ipa,
        len: u64,
        attrs: S2Attrs,
    ) -> Result<(), DomainError> {
        self.change(id, |s2, alloc, brk| {
            s2.protect_live(alloc, ipa, len, attrs, brk)
        })
    }

    /// Runs a change on a live domain's tables. Break-before-make: whenever
    /// the change breaks an entry (block split, memory-type change), the
    /// broken range is invalidated and synchronised before the new entry is
    /// written; then the whole change is invalidated as one batch.
    fn change(
        &mut self,
        id: DomainId,
        op: impl FnOnce(
            &mut crate::stage2::Stage2,
            &dyn crate::hw::PageAllocator,
            &mut dyn FnMut(&TlbRange),
        ) -> Result<Invalidation, crate::stage2::Stage2Error>,
    ) -> Result<(), DomainError> {
        let alloc = self.smmu.allocator();
        let ril = self.smmu.features().ril;
        let smmu = &mut self.smmu;
        let d = self
            .domains
            .get_mut(&id)
            .ok_or(DomainError::NoSuchDomain(id))?;
        let (vmid, nested) = (d.vmid, d.nested);
        let mut broke: Result<(), SmmuError> = Ok(());
        let inv = op(&mut d.s2, alloc, &mut |range: &TlbRange| {
            let mut cmds = tlbi_commands(vmid, core::slice::from_ref(range), ril);
            if nested {
                cmds.push(Command::TlbiNhAll { vmid });
            }
            if broke.is_ok() {
                broke = smmu.submit_sync(&cmds);
            }
        })?;
        // The tables are consistent either way; a failed break invalidation
        // is reported after the full batch was attempted.
        let batch = self.invalidate(vmid, nested, inv);
        broke?;
        batch
    }

    /// One batch of TLB invalidations + one CMD_SYNC, then the deferred
    /// table frees. If the SYNC fails the tables are leaked, never freed
    /// while the SMMU might still walk them.
    fn invalidate(
        &mut self,
        vmid: Vmid,
        nested: bool,
        inv: Invalidation,
    ) -> Result<(), DomainError> {
        if inv.is_empty() {
            return Ok(());
        }
        let mut cmds = tlbi_commands(vmid, inv.ranges(), self.smmu.features().ril);
        if nested {
            // Combined stage 1 + stage 2 entries are tagged by ASID and
            // VMID; TLBI_S2_IPA does not reach them (§4.4.3).
            cmds.push(Command::TlbiNhAll { vmid });
        }
        self.smmu.submit(&cmds)?;
        self.smmu.sync()?;
        // The SMMU is the only walker of these tables, and every range of
        // the batch was invalidated with a completed CMD_SYNC above.
        // SAFETY: the tables came from this allocator; nothing walks them.
        unsafe { inv.free_tables(self.smmu.allocator()) };
        Ok(())
    }

    fn check_owner(&self, id: DomainId, sid: StreamId) -> Result<(), DomainError> {
        match self.streams.get(&sid) {
            Some(&owner) if owner != id => Err(DomainError::StreamInUse { sid, owner }),
            _ => Ok(()),
        }
    }

    fn install(&mut self, id: DomainId, sid: StreamId, ste: &Ste) -> Result<(), DomainError> {
        self.smmu.write_ste(sid, ste)?;
        self.streams.insert(sid, id);
        if let Some(d) = self.domains.get_mut(&id) {
            d.streams.insert(sid);
        }
        Ok(())
    }

    /// Attaches `sid` to domain `id` with a stage-2-only STE (written, then
    /// CMD_CFGI_STE + CMD_SYNC). Refuses a stream attached to another
    /// domain; re-attaching to the same domain rewrites its STE.
    pub fn attach(&mut self, id: DomainId, sid: StreamId) -> Result<(), DomainError> {
        self.check_owner(id, sid)?;
        let coherent = self.smmu.features().cohacc;
        let d = self.domains.get(&id).ok_or(DomainError::NoSuchDomain(id))?;
        let ste = Ste::stage2(&s2_config(d, coherent));
        self.install(id, sid, &ste)?;
        // Debug only: a guest's vSMMU attaches as often as it likes; the
        // callers report what matters, bounded.
        debug!(
            "iommu: sid {sid} -> domain {id} (vmid {}), stage 2",
            self.domains[&id].vmid
        );
        Ok(())
    }

    /// Attaches `sid` to domain `id` with a nested STE: the guest's stage 1
    /// (`s1`, already validated by the vSMMU) over the domain's stage 2.
    /// From then on, stage-2 changes of the domain also invalidate its
    /// stage-1 entries (CMD_TLBI_NH_ALL).
    pub fn attach_nested(
        &mut self,
        id: DomainId,
        sid: StreamId,
        s1: &S1Config,
    ) -> Result<(), DomainError> {
        self.check_owner(id, sid)?;
        let coherent = self.smmu.features().cohacc;
        let d = self.domain_mut(id)?;
        d.nested = true;
        let ste = Ste::nested(&s2_config(d, coherent), s1);
        self.install(id, sid, &ste)
    }

    /// Makes `sid` abort again (STE abort + CMD_CFGI_STE + CMD_SYNC) and
    /// forgets its owner. Returns the domain it was attached to.
    pub fn detach(&mut self, sid: StreamId) -> Result<DomainId, DomainError> {
        let id = self.owner(sid).ok_or(DomainError::NotAttached(sid))?;
        self.release_stream(sid, &Ste::abort())?;
        info!("iommu: sid {sid} detached from domain {id}, aborts");
        Ok(id)
    }

    /// Makes `sid` abort (STE abort + CMD_CFGI_STE + CMD_SYNC) and forgets
    /// its owner, whether or not it is attached: unlike
    /// [`detach`](Self::detach), also for a stream whose STE is the invalid
    /// one of [`refuse`](Self::refuse). Returns the domain it was attached
    /// to, if any.
    pub fn block(&mut self, sid: StreamId) -> Result<Option<DomainId>, DomainError> {
        let id = self.release_stream(sid, &Ste::abort())?;
        debug!("iommu: sid {sid} aborts");
        Ok(id)
    }

    /// Makes `sid`'s STE invalid (V == 0; written, then CMD_CFGI_STE +
    /// CMD_SYNC) and forgets its owner, if any: its transactions still
    /// abort, and each is recorded as C_BAD_STE (§7.3.5), as an SMMU
    /// reports an ILLEGAL STE. For a stream whose configuration, given by a
    /// guest, was refused: the event tells the guest so. Returns the domain
    /// it was attached to.
    pub fn refuse(&mut self, sid: StreamId) -> Result<Option<DomainId>, DomainError> {
        let id = self.release_stream(sid, &Ste::invalid())?;
        debug!("iommu: sid {sid} refused: invalid STE, transactions abort with C_BAD_STE");
        Ok(id)
    }

    /// Installs `ste` (one that lets nothing through) for `sid` and forgets
    /// the stream's owner, if any.
    fn release_stream(
        &mut self,
        sid: StreamId,
        ste: &Ste,
    ) -> Result<Option<DomainId>, DomainError> {
        self.smmu.write_ste(sid, ste)?;
        let id = self.streams.remove(&sid);
        if let Some(d) = id.and_then(|id| self.domains.get_mut(&id)) {
            d.streams.remove(&sid);
        }
        Ok(id)
    }

    /// Destroys domain `id`: every attached stream is made to abort, then
    /// CMD_TLBI_S12_VMALL(vmid) + CMD_SYNC, then the tables are freed, then
    /// the VMID is released. On an SMMU failure the domain stays (its
    /// memory is never freed while the SMMU might use it).
    pub fn destroy(&mut self, id: DomainId) -> Result<(), DomainError> {
        let d = self.domains.get(&id).ok_or(DomainError::NoSuchDomain(id))?;
        let sids: Vec<StreamId> = d.streams().collect();
        let vmid = d.vmid;
        for sid in sids {
            self.detach(sid)?;
        }
        self.smmu.submit(&[Command::TlbiS12Vmall { vmid }])?;
        self.smmu.sync()?;
        let flushed = FlushedVmid(vmid);
        let Some(d) = self.domains.remove(&id) else {
            unreachable!("domain {id} vanished during destroy");
        };
        // Every attached stream was made abort (CFGI_STE + SYNC) and the
        // VMID's TLB entries invalidated (TLBI_S12_VMALL + SYNC) above.
        // SAFETY: tables from the SMMU's allocator; no STE or TLB uses them.
        unsafe { d.s2.destroy(self.smmu.allocator()) };
        self.vmids.release(flushed);
        debug!("iommu: domain {id} (vmid {vmid}) destroyed");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
