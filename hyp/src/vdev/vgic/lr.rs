//! List registers: the encoding of ICH_LR<n>_EL2 (IHI 0069D §8.4) and the
//! algorithm that moves interrupts between the [`VGic`] model and a vCPU's
//! list registers (IHI 0069D ch. 6, "Virtual interrupt handling and
//! prioritization").
//!
//! On every exit the caller reads the vCPU's LRs and calls
//! [`VGic::sync_from_lrs`]: what the guest did while running (acknowledge:
//! pending -> active; deactivate: active -> invalid) is folded back into the
//! model as a change, not a copy, so state changed meanwhile by MMIO writes or
//! other vCPUs survives. Before every entry [`VGic::fill_lrs`] rewrites all
//! LRs from the model: the active interrupts first (the guest must be able
//! to deactivate them), then the highest-priority forwardable pending ones.

use super::{Effects, Irq, Listed, VGic, NR_PRIVATE};
use tock_registers::{register_bitfields, LocalRegisterCopy};

/// The architecture has at most 16 list registers (ICH_VTR_EL2.ListRegs is
/// 4 bits); more entries in a slice are left empty.
pub const MAX_LRS: usize = 16;

/// ICH_HCR_EL2.En, bit \[0\]: virtual CPU interface enabled (also needed for
/// maintenance interrupts, §8.4 ICH_HCR_EL2).
pub const ICH_HCR_EN: u64 = 1 << 0;
/// ICH_HCR_EL2.UIE, bit \[1\]: underflow maintenance interrupt while at
/// most one LR holds a valid interrupt.
pub const ICH_HCR_UIE: u64 = 1 << 1;

register_bitfields![u64,
    /// ICH_LR<n>_EL2, §8.4.
    ICH_LR [
        /// vINTID, bits \[31:0\].
        VINTID OFFSET(0) NUMBITS(32) [],
        /// pINTID, bits \[44:32\], when HW = 1.
        PINTID OFFSET(32) NUMBITS(13) [],
        /// EOI, bit \[41\], when HW = 0: maintenance interrupt on
        /// deactivation (reported in ICH_EISR_EL2).
        EOI OFFSET(41) NUMBITS(1) [],
        /// Priority, bits \[55:48\].
        PRIORITY OFFSET(48) NUMBITS(8) [],
        /// Group, bit \[60\]: 1 = Group 1 (vIRQ), 0 = Group 0 (vFIQ).
        GROUP OFFSET(60) NUMBITS(1) [],
        /// HW, bit \[61\]: deactivating vINTID deactivates pINTID.
        HW OFFSET(61) NUMBITS(1) [],
        /// State, bits \[63:62\].
        STATE OFFSET(62) NUMBITS(2) []
    ]
];

/// ICH_LR<n>_EL2.State.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrState {
    /// 0b00: the LR holds nothing.
    Invalid,
    /// 0b01.
    Pending,
    /// 0b10.
    Active,
    /// 0b11.
    PendingActive,
}

impl LrState {
    fn from_bits(pending: bool, active: bool) -> Self {
        match (pending, active) {
            (false, false) => Self::Invalid,
            (true, false) => Self::Pending,
            (false, true) => Self::Active,
            (true, true) => Self::PendingActive,
        }
    }

    /// Pending or pending and active.
    pub fn pending(self) -> bool {
        matches!(self, Self::Pending | Self::PendingActive)
    }

    /// Active or pending and active.
    pub fn active(self) -> bool {
        matches!(self, Self::Active | Self::PendingActive)
    }
}

/// One decoded ICH_LR<n>_EL2 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListRegister {
    /// vINTID.
    pub vintid: u32,
    /// HW = 1 with this pINTID; `None`: HW = 0.
    pub pintid: Option<u16>,
    /// EOI (only with HW = 0): maintenance interrupt on deactivation.
    pub eoi: bool,
    /// Group 1.
    pub group1: bool,
    /// Priority.
    pub priority: u8,
    /// State.
    pub state: LrState,
}

impl ListRegister {
    /// The register value. A pINTID wider than 13 bits is truncated; `eoi`
    /// is dropped with HW = 1 (the bit belongs to pINTID then).
    pub fn encode(&self) -> u64 {
        let mut r = LocalRegisterCopy::<u64, ICH_LR::Register>::new(0);
        let state = match self.state {
            LrState::Invalid => 0,
            LrState::Pending => 1,
            LrState::Active => 2,
            LrState::PendingActive => 3,
        };
        r.modify(
            ICH_LR::VINTID.val(u64::from(self.vintid))
                + ICH_LR::PRIORITY.val(u64::from(self.priority))
                + ICH_LR::GROUP.val(u64::from(self.group1))
                + ICH_LR::STATE.val(state),
        );
        match self.pintid {
            Some(p) => r.modify(ICH_LR::HW::SET + ICH_LR::PINTID.val(u64::from(p) & 0x1fff)),
            None => r.modify(ICH_LR::EOI.val(u64::from(self.eoi))),
        }
        r.get()
    }

    /// Decodes a register value (RES0 bits are ignored).
    pub fn decode(value: u64) -> Self {
        let r = LocalRegisterCopy::<u64, ICH_LR::Register>::new(value);
        let hw = r.is_set(ICH_LR::HW);
        let s = r.read(ICH_LR::STATE);
        Self {
            vintid: r.read(ICH_LR::VINTID) as u32,
            pintid: hw.then(|| r.read(ICH_LR::PINTID) as u16),
            eoi: !hw && r.is_set(ICH_LR::EOI),
            group1: r.is_set(ICH_LR::GROUP),
            priority: r.read(ICH_LR::PRIORITY) as u8,
            state: LrState::from_bits(s & 1 != 0, s & 2 != 0),
        }
    }
}

/// What [`VGic::fill_lrs`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillResult {
    /// LRs written with a valid interrupt (from index 0; the rest are 0).
    pub used: usize,
    /// Interrupts for this vCPU did not fit (so every LR is in use): the
    /// caller wants a maintenance interrupt when LRs free up (see
    /// [`FillResult::ich_hcr`]).
    pub more_pending: bool,
}

impl FillResult {
    /// The ICH_HCR_EL2 value to enter the vCPU with, given `nr_lrs`
    /// implemented LRs: En always (EOI maintenance needs it), UIE when
    /// interrupts are waiting and there are at least two LRs (with one LR
    /// the underflow condition holds at once and the guest would never run).
    pub fn ich_hcr(&self, nr_lrs: usize) -> u64 {
        if self.more_pending && nr_lrs >= 2 {
            ICH_HCR_EN | ICH_HCR_UIE
        } else {
            ICH_HCR_EN
        }
    }
}

/// The best candidates for the list registers seen so far, by rank.
#[derive(Debug, PartialEq, Eq)]
struct Best {
    /// Ranks, sorted (lower is better).
    ranks: [u64; MAX_LRS],
    /// Valid entries of `ranks`.
    n: usize,
    /// How many to keep.
    cap: usize,
    /// Candidates seen, kept or not.
    total: usize,
}

impl Best {
    fn new(cap: usize) -> Self {
        Self {
            ranks: [0; MAX_LRS],
            n: 0,
            cap: cap.min(MAX_LRS),
            total: 0,
        }
    }

    fn consider(&mut self, key: u64) {
        self.total += 1;
        if self.cap == 0 {
            return;
        }
        if self.n == self.cap {
            if key >= self.ranks[self.n - 1] {
                return;
            }
            self.n -= 1;
        }
        let pos = self.ranks[..self.n].partition_point(|&k| k < key);
        self.ranks.copy_within(pos..self.n, pos + 1);
        self.ranks[pos] = key;
        self.n += 1;
    }
}

/// Sort key of a candidate: active ones first, then by priority (lower
/// value = higher priority), then by INTID; lower is better.
fn rank(irq: &Irq, intid: u32) -> u64 {
    (u64::from(!irq.active) << 40) | (u64::from(irq.priority) << 32) | u64::from(intid)
}

impl VGic {
    /// The best `cap` (at most [`MAX_LRS`]) interrupts to list on `vcpu`
    /// (as ranks sorted best first, in [`Best`], with how many were wanted
    /// in all): the active ones and the forwardable pending ones, not
    /// listed anywhere. Only the interrupts marked as maybe busy are looked at
    /// (and the LPIs); those found idle are unmarked.
    fn candidates(&mut self, vcpu: usize, cap: usize) -> Best {
        let mut best = Best::new(cap);
        let mut idle = 0u32;
        let mut marked = self.vcpus[vcpu].maybe_busy;
        while marked != 0 {
            let intid = marked.trailing_zeros();
            marked &= marked - 1;
            let irq = &self.vcpus[vcpu].private[intid as usize];
            if self.wanted(irq) {
                best.consider(rank(irq, intid));
            } else if irq.idle() {
                idle |= 1 << intid;
            }
        }
        self.vcpus[vcpu].maybe_busy &= !idle;
        for w in 0..self.spis_maybe_busy.len() {
            let mut marked = self.spis_maybe_busy[w];
            let mut idle = 0u64;
            while marked != 0 {
                let bit = marked.trailing_zeros();
                marked &= marked - 1;
                let i = w * 64 + bit as usize;
                let irq = &self.spis[i];
                if self.routed_to(i, vcpu) && self.wanted(irq) {
                    best.consider(rank(irq, NR_PRIVATE + i as u32));
                } else if irq.idle() {
                    idle |= 1 << bit;
                }
            }
            self.spis_maybe_busy[w] &= !idle;
        }
        for (intid, irq) in self.lpis_for(vcpu) {
            if self.wanted(irq) {
                best.consider(rank(irq, intid));
            }
        }
        best
    }

    /// Marks every private interrupt of `vcpu` and every SPI as maybe busy:
    /// the next [`VGic::candidates`] ranks all of them (and unmarks the
    /// idle ones).
    #[cfg(debug_assertions)]
    fn mark_all(&mut self, vcpu: usize) {
        self.vcpus[vcpu].maybe_busy = u32::MAX;
        let mut left = self.spis.len();
        for word in &mut self.spis_maybe_busy {
            *word = if left >= 64 {
                u64::MAX
            } else {
                (1 << left) - 1
            };
            left = left.saturating_sub(64);
        }
    }

    /// Whether `irq` wants a list register: not listed, and active or
    /// forwardable.
    fn wanted(&self, irq: &Irq) -> bool {
        irq.owner.is_none() && (irq.active || self.deliverable(irq))
    }

    /// Whether SPI `i` is listed on `vcpu` when it wants a list register.
    /// An active SPI is listed where it is routed now; the guest may
    /// deactivate it from any vCPU (a missing LR then only counts in
    /// ICH_HCR_EL2.EOIcount), so this is a best effort.
    fn routed_to(&self, i: usize, vcpu: usize) -> bool {
        match self.route[i] {
            super::Route::Vcpu(t) => usize::from(t) == vcpu,
            super::Route::Any => true,
            super::Route::Nobody => false,
        }
    }

    /// Folds what the guest did to `vcpu`'s list registers (their current
    /// values `lrs`, as read from ICH_LR<n>_EL2) back into the model, and
    /// forgets the listing. Entries [`VGic::fill_lrs`] did not write are
    /// ignored; an entry that no longer matches what was written (or is
    /// missing from `lrs`) counts as untouched. Returns physical interrupts
    /// to deactivate and vCPUs to kick (an SPI this vCPU held may now go
    /// elsewhere).
    pub fn sync_from_lrs(&mut self, vcpu: usize, lrs: &[u64]) -> Effects {
        if vcpu >= self.vcpus.len() {
            return Effects::none();
        }
        let mut fx = core::mem::take(&mut self.deferred);
        let v = &mut self.vcpus[vcpu];
        let listed = core::mem::take(&mut v.listed);
        for e in &listed {
            let now = lrs
                .get(e.lr)
                .map(|&val| ListRegister::decode(val))
                .filter(|lr| lr.vintid == e.intid)
                .map_or(LrState::from_bits(e.pending, e.active), |lr| lr.state);
            self.fold(vcpu, e, now, &mut fx);
        }
        // Give the (empty) buffer back: no allocation on the next fill.
        let mut listed = listed;
        listed.clear();
        self.vcpus[vcpu].listed = listed;
        fx
    }

    /// Applies the guest's change to one listed interrupt.
    fn fold(&mut self, vcpu: usize, e: &Listed, now: LrState, fx: &mut Effects) {
        let Some(irq) = self.irq_mut(vcpu, e.intid) else {
            return;
        };
        // The guest can only acknowledge (pending -> active) and deactivate
        // (active -> inactive); a pending+active LR cannot be acknowledged
        // until deactivated.
        let acked = e.pending && !now.pending();
        let deactivated = (e.active || acked) && !now.active();
        if !acked && e.pending && e.from_latch && !irq.lr_pending_cleared {
            // Still pending in the LR: the latch returns to the model
            // (merging with any new edge that arrived meanwhile).
            irq.latch = true;
        }
        if acked {
            irq.active = true;
        }
        if deactivated {
            irq.active = false;
            if e.hw {
                // The hardware deactivated the physical interrupt.
                irq.phys_active = false;
            } else if e.linked && irq.phys_active {
                if let Some(pintid) = irq.hw {
                    irq.phys_active = false;
                    fx.deactivate(super::HwDeactivate { vcpu, pintid });
                }
            }
        }
        irq.owner = None;
        irq.lr_pending = false;
        irq.lr_pending_cleared = false;
        self.note_change(vcpu, e.intid, fx);
    }

    /// Writes `vcpu`'s list registers (all of `lrs`, up to [`MAX_LRS`]):
    /// the interrupts to present to the guest, each once and not listed on
    /// any other vCPU; unused entries are 0. Active interrupts come first,
    /// then forwardable pending ones (enabled, group enabled in GICD_CTLR)
    /// by priority. A hardware-linked interrupt whose physical interrupt is
    /// active gets HW = 1 and its pINTID. When interrupts are left over, the
    /// non-HW entries get EOI = 1 so each deactivation exits and the next
    /// fill can list more.
    ///
    /// Call after [`VGic::sync_from_lrs`]; a listing that was not synced is
    /// first folded back as if the guest had not touched it.
    pub fn fill_lrs(&mut self, vcpu: usize, lrs: &mut [u64]) -> FillResult {
        lrs.fill(0);
        if vcpu >= self.vcpus.len() {
            return FillResult::default();
        }
        if !self.vcpus[vcpu].listed.is_empty() {
            // Fold back as untouched; what that finds to do (a physical
            // interrupt whose pending state ICPENDR cleared, an SPI to hand
            // to another vCPU) is returned by the next sync.
            let fx = self.sync_from_lrs(vcpu, &[]);
            self.deferred.merge(fx);
        }
        let cap = lrs.len().min(MAX_LRS);
        let best = self.candidates(vcpu, cap);
        // Host tests and the fuzzers check the marks against ranking every
        // interrupt.
        #[cfg(debug_assertions)]
        {
            self.mark_all(vcpu);
            debug_assert_eq!(
                best,
                self.candidates(vcpu, cap),
                "the interrupts marked busy hold every candidate"
            );
        }
        let n = best.n;
        let more = best.total > n;
        for (slot, key) in best.ranks[..n].iter().enumerate() {
            let intid = (key & 0xffff_ffff) as u32;
            let deliverable = if intid >= super::lpi::FIRST_LPI {
                self.lpis
                    .get(&intid)
                    .is_some_and(|l| self.lpi_deliverable(l))
            } else {
                self.irq(vcpu, intid).is_some_and(|i| self.deliverable(i))
            };
            let Some(irq) = self.irq_mut(vcpu, intid) else {
                continue;
            };
            // A forwarded line's pending state while active is decided
            // after the guest's deactivation, from the level its handler
            // left (see `VGic::set_resample`).
            let pending = deliverable && !(irq.resample && irq.active);
            let mut hw = irq.hw.filter(|_| irq.phys_active);
            // A hardware interrupt cannot be pending while its physical
            // interrupt is still active, so an LR with HW = 1 must not say
            // pending+active (the pending part came from ISPENDR): list it
            // with HW = 0 and EOI = 1, and deactivate the physical
            // interrupt ourselves when the guest deactivates.
            let linked = hw.is_some() && pending && irq.active;
            if linked {
                hw = None;
            }
            let from_latch = pending && irq.latch;
            if from_latch {
                irq.latch = false;
            }
            let active = irq.active;
            irq.owner = Some(vcpu as u8);
            irq.lr_pending = pending;
            irq.lr_pending_cleared = false;
            // With more waiting than the registers hold, each interrupt
            // not linked to a physical one asks for a maintenance
            // interrupt when the guest deactivates it (EOI = 1), so that
            // the next can be listed.
            lrs[slot] = ListRegister {
                vintid: intid,
                pintid: hw.map(|p| p as u16),
                eoi: linked || (irq.resample && hw.is_none()) || (more && hw.is_none()),
                group1: irq.group1,
                priority: irq.priority,
                state: LrState::from_bits(pending, active),
            }
            .encode();
            self.vcpus[vcpu].listed.push(Listed {
                intid,
                lr: slot,
                pending,
                active,
                from_latch,
                hw: hw.is_some(),
                linked,
            });
        }
        FillResult {
            used: n,
            more_pending: more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ack, booted, deactivate, listed, Rng};
    use super::*;

    #[test]
    fn encoding_matches_the_architecture() {
        let timer = ListRegister {
            vintid: 27,
            pintid: Some(27),
            eoi: false,
            group1: true,
            priority: 0xa0,
            state: LrState::Pending,
        };
        assert_eq!(
            timer.encode(),
            (1 << 62) | (1 << 61) | (1 << 60) | (0xa0 << 48) | (27 << 32) | 27
        );
        let sw = ListRegister {
            vintid: 1019,
            pintid: None,
            eoi: true,
            group1: false,
            priority: 0x10,
            state: LrState::PendingActive,
        };
        assert_eq!(sw.encode(), (3 << 62) | (0x10 << 48) | (1 << 41) | 1019);
        assert_eq!(ListRegister::decode(sw.encode()), sw);
        // With HW = 1, bit 41 is pINTID, not EOI.
        let l = ListRegister::decode((1 << 61) | (1 << 41));
        assert_eq!((l.pintid, l.eoi), (Some(0x200), false));
    }

    #[test]
    fn encoding_round_trips() {
        let mut rng = Rng(77);
        for _ in 0..10_000 {
            let raw = rng.next();
            let l = ListRegister::decode(raw);
            assert_eq!(ListRegister::decode(l.encode()), l);
            // Only RES0 bits (and NMI, which we do not use) are lost.
            let kept = if l.pintid.is_some() {
                0xf0ff_1fff_ffff_ffff
            } else {
                0xf0ff_0200_ffff_ffff
            };
            assert_eq!(l.encode(), raw & kept);
        }
    }

    /// Pends SPIs 34.. with the given priorities on vCPU 0.
    fn pend_spis(g: &mut VGic, prios: &[u8]) {
        let _ = g.dist_write(0x104, 4, 0xffff_ffff);
        for (i, &p) in prios.iter().enumerate() {
            let intid = 34 + i as u64;
            let _ = g.dist_write(0x400 + intid, 1, u64::from(p));
            let _ = g.inject_edge(intid as u32, 0).unwrap();
        }
    }

    #[test]
    fn fill_takes_the_highest_priorities_and_asks_for_more() {
        let mut g = booted();
        pend_spis(&mut g, &[0x80, 0x20, 0xf0, 0x20, 0x00, 0x60]);
        let mut lrs = [0u64; 4];
        let r = g.fill_lrs(0, &mut lrs);
        assert_eq!(
            r,
            FillResult {
                used: 4,
                more_pending: true
            }
        );
        assert_eq!(r.ich_hcr(4), ICH_HCR_EN | ICH_HCR_UIE);
        assert_eq!(r.ich_hcr(1), ICH_HCR_EN);
        let got: Vec<(u32, u8, bool)> = lrs
            .iter()
            .map(|&x| ListRegister::decode(x))
            .map(|l| (l.vintid, l.priority, l.eoi))
            .collect();
        // Priority, then INTID; EOI set so each deactivation exits.
        assert_eq!(
            got,
            [
                (38, 0x00, true),
                (35, 0x20, true),
                (37, 0x20, true),
                (39, 0x60, true)
            ]
        );
        // The guest handles two; the rest come in on the next fill.
        ack(&mut lrs, 0);
        deactivate(&mut lrs, 0);
        ack(&mut lrs, 1);
        deactivate(&mut lrs, 1);
        let _ = g.sync_from_lrs(0, &lrs);
        let r = g.fill_lrs(0, &mut lrs);
        assert_eq!(
            r,
            FillResult {
                used: 4,
                more_pending: false
            }
        );
        let ids: Vec<u32> = lrs
            .iter()
            .map(|&x| ListRegister::decode(x).vintid)
            .collect();
        assert_eq!(ids, [37, 39, 34, 36]);
        assert!(lrs.iter().all(|&x| !ListRegister::decode(x).eoi));
        assert_eq!(r.ich_hcr(4), ICH_HCR_EN);
    }

    #[test]
    fn a_forwarded_line_is_never_listed_pending_while_active() {
        let mut g = booted();
        // SPI 40 enabled; the guest made it edge-triggered (ICFGR2 bit 17)
        // before the hypervisor marked it forwarded: level again.
        let _ = g.dist_write(0xc08, 4, 2 << 16);
        let _ = g.dist_write(0x104, 4, 1 << 8);
        g.set_resample(40, true).unwrap();
        assert_eq!(g.dist_read(0xc08, 4) & (2 << 16), 0, "level");
        assert_eq!(
            g.set_resample(27, true),
            Err(super::super::VgicError::InvalidIntid)
        );
        let _ = g.set_level(40, 0, true).unwrap();
        let mut lrs = [0u64; 4];
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!((l.len(), l[0].state), (1, LrState::Pending));
        assert!(l[0].eoi, "deactivation must exit to EL2 for the resample");
        ack(&mut lrs, 0);
        // The line is still high while the guest handles it: active and
        // pending in GICD_ISPENDR/ISACTIVER, but listed active only, so
        // the guest's deactivation cannot re-present it by itself.
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!((l[0].state, l[0].eoi), (LrState::Active, true));
        assert_ne!(g.dist_read(0x204, 4) & (1 << 8), 0, "ISPENDR");
        assert_ne!(g.dist_read(0x304, 4) & (1 << 8), 0, "ISACTIVER");
        assert!(!g.has_pending(0), "nothing the guest could take");
        deactivate(&mut lrs, 0);
        // The level sampled after the deactivation decides: still high,
        // so pending again, once.
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!(l[0].state, LrState::Pending);
        ack(&mut lrs, 0);
        let _ = g.set_level(40, 0, false).unwrap();
        deactivate(&mut lrs, 0);
        assert!(listed(&mut g, 0, &mut lrs).is_empty());
        assert_eq!(g.dist_read(0x204, 4) & (1 << 8), 0, "ISPENDR");
        assert_eq!(g.dist_read(0x304, 4) & (1 << 8), 0, "ISACTIVER");
        let s = g.line_status(40).unwrap();
        assert_eq!((s.level, s.active, s.listed_on), (false, false, None));
        assert_eq!(g.line_status(41), None, "not a forwarded line");
    }

    #[test]
    fn active_interrupts_keep_their_lrs() {
        let mut g = booted();
        pend_spis(&mut g, &[0xf0]);
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1);
        ack(&mut lrs, 0);
        // Four higher-priority interrupts arrive while SPI 34 is handled.
        for intid in 40..44u64 {
            let _ = g.dist_write(0x400 + intid, 1, 0x10);
            let _ = g.inject_edge(intid as u32, 0).unwrap();
        }
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!((l[0].vintid, l[0].state), (34, LrState::Active));
        assert_eq!(
            l.iter().map(|l| l.vintid).collect::<Vec<_>>(),
            [34, 40, 41, 42]
        );
        assert!(g.fill_lrs(0, &mut lrs).more_pending);
    }

    #[test]
    fn pending_while_the_physical_one_is_active_is_listed_without_hw() {
        let mut g = booted();
        let _ = g.redist_write(0, 0x1_0100, 4, 1 << 27);
        g.set_hw(27, 0, 27).unwrap();
        let _ = g.inject_edge(27, 0).unwrap();
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs)[0].pintid, Some(27));
        ack(&mut lrs, 0);
        // The guest pends the timer PPI by hand while handling it.
        let _ = g.redist_write(0, 0x1_0200, 4, 1 << 27);
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!(
            (l[0].pintid, l[0].eoi, l[0].state),
            (None, true, LrState::PendingActive)
        );
        deactivate(&mut lrs, 0);
        let fx = g.sync_from_lrs(0, &lrs);
        assert_eq!(
            fx.deactivations(),
            [crate::vdev::vgic::HwDeactivate {
                vcpu: 0,
                pintid: 27
            }]
        );
        let r = g.fill_lrs(0, &mut lrs);
        let l = ListRegister::decode(lrs[0]);
        assert_eq!(
            (r.used, l.pintid, l.eoi, l.state),
            (1, None, false, LrState::Pending)
        );
    }

    #[test]
    fn unsynced_or_garbled_lrs_count_as_untouched() {
        let mut g = booted();
        pend_spis(&mut g, &[0x10, 0x20]);
        let mut lrs = [0u64; 4];
        assert_eq!(g.fill_lrs(0, &mut lrs).used, 2);
        // A second fill without a sync: nothing is lost or duplicated.
        assert_eq!(g.fill_lrs(0, &mut lrs).used, 2);
        // A sync with fewer LRs or a vINTID that does not match.
        let mut short = lrs;
        short[1] = 0xdead;
        let _ = g.sync_from_lrs(0, &short[..1]);
        assert_eq!(g.fill_lrs(0, &mut lrs).used, 2);
        let _ = g.sync_from_lrs(0, &short);
        assert_eq!(g.fill_lrs(0, &mut lrs).used, 2);
        // More LRs than the architecture has: 16 at most.
        let mut many = [0u64; 20];
        pend_spis(&mut g, &[0x30; 20]);
        assert_eq!(g.fill_lrs(0, &mut many).used, MAX_LRS);
        assert!(many[MAX_LRS..].iter().all(|&x| x == 0));
        // A fold done by a fill keeps its physical deactivation for the
        // next sync.
        let mut g = booted();
        let _ = g.redist_write(0, 0x1_0100, 4, 1 << 27);
        g.set_hw(27, 0, 27).unwrap();
        let _ = g.inject_edge(27, 0).unwrap();
        assert_eq!(g.fill_lrs(0, &mut lrs).used, 1);
        let _ = g.redist_write(0, 0x1_0280, 4, 1 << 27);
        assert_eq!(g.fill_lrs(0, &mut lrs).used, 0);
        let fx = g.sync_from_lrs(0, &lrs);
        assert_eq!(fx.deactivations().len(), 1);
        assert!(g.sync_from_lrs(0, &lrs).deactivations().is_empty());
        // A vCPU that does not exist gets empty LRs.
        assert_eq!(g.fill_lrs(7, &mut lrs), FillResult::default());
        assert_eq!(lrs, [0; 4]);
        assert!(g.sync_from_lrs(7, &lrs).is_empty());
    }
}
