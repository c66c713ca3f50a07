//! Forwarded INTx lines: a passed-through function's level-sensitive line
//! (a physical SPI) becomes a level-sensitive virtual SPI of its VM, whose
//! level is the physical line's as the physical distributor reports it
//! (GICD_ISPENDR of a level-sensitive SPI is its input level, also while it
//! is disabled, IHI 0069 §4.1.2).
//!
//! - When the physical line fires it is masked at the distributor
//!   (GICD_ICENABLER), finished physically, and the virtual line is set
//!   high ([`IntxForwarding::fired`]): the guest's interrupt is pending.
//! - While it is masked, its level is sampled at every exit of its VM,
//!   after the exit has folded the vCPU's list registers into the vGIC and
//!   before it is handled ([`IntxForwarding::sample`]): the guest's
//!   GICD_ISPENDR reads and its enables see the level the device holds.
//!   The guest's deactivation of the interrupt exits at once (ICH_LR.EOI,
//!   see `VGic::set_resample`), so the level that decides whether it is
//!   pending again is the one the guest's handler left: a line still high
//!   is presented again, exactly once per deactivation; a line let go is
//!   not.
//! - At the end of every exit, a masked line that is low and whose
//!   interrupt the guest no longer holds (not active, in no list register)
//!   is unmasked ([`IntxForwarding::release`]): the device's next assertion
//!   fires physically.
//!
//! A line still high at deactivation is re-presented from the sampled
//! level, not unmasked to fire again, because that is what the guest's own
//! distributor configuration must govern: a level-sensitive interrupt
//! whose input is asserted is pending, and the guest's GICD_ICENABLER,
//! IROUTER, IPRIORITYR and GICD_ICPENDR act on that pending state (disabled,
//! it stays pending in GICD_ISPENDR and is not signalled until enabled;
//! GICD_ICPENDR cannot clear it while the line is high). The physical
//! SPI's enable, route and priority are the hypervisor's; a physical firing
//! would have to be latched into the vGIC as a fresh event that outlives
//! the level (a disabled interrupt enabled after the device let go would
//! still be delivered). Bare QEMU's GIC re-signals a still-asserted line
//! after the EOI the same way: one more presentation, here without a
//! physical interrupt round trip.
//!
//! Bounded work: an exit samples and releases at most its own VM's lines;
//! nothing loops or waits. A device that holds its line forever costs one
//! presentation per guest deactivation, each one a guest exit, with its
//! physical line masked all the while and routed to its own VM's CPU, so no
//! other VM is disturbed.

use crate::vdev::vgic::{Effects, VGic};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

/// The physical distributor's control of SPIs.
pub trait LineControl {
    /// Enables (unmasks) or disables (masks) SPI `pintid`.
    fn set_enabled(&self, pintid: u32, on: bool);
    /// Whether SPI `pintid`'s line is asserted (pending at the
    /// distributor, also while disabled).
    fn asserted(&self, pintid: u32) -> bool;
}

/// Who owns each forwarded line, and which are masked.
#[derive(Debug, Default)]
pub struct IntxForwarding {
    /// Physical INTID -> (VM index, guest INTID).
    owners: BTreeMap<u32, (usize, u32)>,
    /// Masked lines: fired, and not yet released.
    masked: BTreeSet<u32>,
}

impl IntxForwarding {
    /// No lines.
    pub const fn new() -> Self {
        Self {
            owners: BTreeMap::new(),
            masked: BTreeSet::new(),
        }
    }

    /// Forwards physical line `pintid` to VM `vm` as guest INTID `vintid`.
    pub fn add(&mut self, pintid: u32, vm: usize, vintid: u32) {
        self.owners.insert(pintid, (vm, vintid));
    }

    /// The owner of physical line `pintid`: (VM index, guest INTID).
    pub fn owner(&self, pintid: u32) -> Option<(usize, u32)> {
        self.owners.get(&pintid).copied()
    }

    /// Every forwarded line: (physical INTID, VM index, guest INTID).
    pub fn lines(&self) -> impl Iterator<Item = (u32, usize, u32)> + '_ {
        self.owners.iter().map(|(&p, &(vm, v))| (p, vm, v))
    }

    /// Physical line `pintid` fired (acknowledged by the caller): masks it
    /// and returns its owner (VM, guest INTID), whose virtual line the
    /// caller sets high in that VM's vGIC before it lets go of `self`, so
    /// that no [`IntxForwarding::release`] sees the line masked but low.
    pub fn fired(&mut self, pintid: u32, lines: &dyn LineControl) -> Option<(usize, u32)> {
        let owner = self.owner(pintid)?;
        lines.set_enabled(pintid, false);
        self.masked.insert(pintid);
        Some(owner)
    }

    /// Whether VM `vm` has a masked line (else an exit has nothing to
    /// sample or release).
    pub fn masks(&self, vm: usize) -> bool {
        self.masked_of(vm).next().is_some()
    }

    /// The VMs with a masked line, as a bit mask (bit `i`: VM `i`; a
    /// scenario has at most 64 VMs), for a caller that publishes it after
    /// each change so that exits can tell without the lock whether they
    /// have lines to sample or release.
    pub fn masking(&self) -> u64 {
        self.masked
            .iter()
            .filter_map(|p| self.owners.get(p))
            .fold(0, |bits, &(vm, _)| {
                bits | 1u64.checked_shl(vm as u32).unwrap_or(0)
            })
    }

    /// VM `vm`'s masked lines: (physical INTID, guest INTID).
    fn masked_of(&self, vm: usize) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.masked
            .iter()
            .filter_map(move |&p| match self.owners.get(&p) {
                Some(&(owner, v)) if owner == vm => Some((p, v)),
                _ => None,
            })
    }

    /// Before an exit of VM `vm`'s vCPU `vcpu` is handled: sets the virtual
    /// level of each of the VM's masked lines to the physical one, except
    /// where another vCPU's list registers hold the interrupt (what the
    /// guest did with it there is unknown until that vCPU exits, and
    /// samples it itself). Returns the vGIC's work (vCPUs to kick).
    pub fn sample(
        &self,
        vm: usize,
        vcpu: usize,
        vgic: &mut VGic,
        lines: &dyn LineControl,
    ) -> Effects {
        let mut fx = Effects::none();
        for (pintid, vintid) in self.masked_of(vm) {
            let Some(status) = vgic.line_status(vintid) else {
                continue;
            };
            if status.listed_on.is_some_and(|v| v != vcpu) {
                continue;
            }
            if let Ok(more) = vgic.set_level(vintid, 0, lines.asserted(pintid)) {
                fx.merge(more);
            }
        }
        fx
    }

    /// VM `vm` restarts (its devices were reset, their lines are low): its
    /// lines are unmasked and forgotten as masked, so that the new
    /// incarnation's first interrupt reaches it.
    pub fn restart(&mut self, vm: usize, lines: &dyn LineControl) {
        let mine: Vec<u32> = self
            .owners
            .iter()
            .filter(|(_, &(owner, _))| owner == vm)
            .map(|(&p, _)| p)
            .collect();
        for pintid in mine {
            self.masked.remove(&pintid);
            lines.set_enabled(pintid, true);
        }
    }

    /// After an exit of VM `vm` has refilled its list registers: unmasks
    /// the VM's masked lines that were found low and whose interrupt the
    /// guest no longer holds (not active, in no vCPU's list registers).
    pub fn release(&mut self, vm: usize, vgic: &VGic, lines: &dyn LineControl) {
        let done: BTreeSet<u32> = self
            .masked_of(vm)
            .filter(|&(_, vintid)| {
                vgic.line_status(vintid)
                    .is_none_or(|s| !s.level && !s.active && s.listed_on.is_none())
            })
            .map(|(pintid, _)| pintid)
            .collect();
        for pintid in done {
            self.masked.remove(&pintid);
            lines.set_enabled(pintid, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdev::vgic::lr::{ListRegister, LrState};
    use alloc::vec::Vec;
    use core::cell::RefCell;

    /// A distributor: which lines are asserted, and the enables written.
    #[derive(Default)]
    struct Lines {
        asserted: RefCell<Vec<u32>>,
        enables: RefCell<Vec<(u32, bool)>>,
    }

    impl Lines {
        fn set(&self, pintid: u32, high: bool) {
            let mut a = self.asserted.borrow_mut();
            a.retain(|&p| p != pintid);
            if high {
                a.push(pintid);
            }
        }

        fn enables(&self) -> Vec<(u32, bool)> {
            self.enables.borrow().clone()
        }
    }

    impl LineControl for Lines {
        fn set_enabled(&self, pintid: u32, on: bool) {
            self.enables.borrow_mut().push((pintid, on));
        }
        fn asserted(&self, pintid: u32) -> bool {
            self.asserted.borrow().contains(&pintid)
        }
    }

    const P: u32 = 36;
    const V: u32 = 40;
    /// V's bit in its 32-bit GICD registers.
    const BIT: u64 = 1 << (V - 32);
    const ISENABLER: u64 = 0x104;
    const ICENABLER: u64 = 0x184;
    const ISPENDR: u64 = 0x204;
    const ICPENDR: u64 = 0x284;
    const ISACTIVER: u64 = 0x304;
    const ICFGR: u64 = 0xc08;

    /// One vCPU running its guest, with the hypervisor around it: the
    /// physical line, the forwarding, the vGIC and the vCPU's four list
    /// registers, driven exit by exit as the runtime does.
    struct World {
        f: IntxForwarding,
        lines: Lines,
        g: VGic,
        lrs: [u64; 4],
    }

    impl World {
        /// A guest whose distributor forwards V (group 1, enabled), which
        /// the hypervisor forwards from P.
        fn new() -> Self {
            let mut g = VGic::new(&[0], 32).unwrap();
            let _ = g.dist_write(0x0, 4, 0x12);
            let _ = g.dist_write(ISENABLER, 4, BIT);
            g.set_resample(V, true).unwrap();
            let mut f = IntxForwarding::new();
            f.add(P, 0, V);
            World {
                f,
                lines: Lines::default(),
                g,
                lrs: [0; 4],
            }
        }

        /// One exit: the list registers are folded into the vGIC and the
        /// masked line sampled; the physical line fires if it is asserted
        /// and unmasked (as the physical GIC would signal it); the guest's
        /// `access` (a trapped GICD access) is handled; the list registers
        /// are refilled and lines released.
        fn exit(&mut self, access: impl FnOnce(&mut VGic)) {
            let _ = self.g.sync_from_lrs(0, &self.lrs);
            let _ = self.f.sample(0, 0, &mut self.g, &self.lines);
            if self.lines.asserted(P) && !self.f.masked.contains(&P) {
                let owner = self.f.fired(P, &self.lines);
                assert_eq!(owner, Some((0, V)));
                let _ = self.g.set_level(V, 0, true).unwrap();
            }
            access(&mut self.g);
            let _ = self.g.sync_from_lrs(0, &self.lrs);
            let _ = self.g.fill_lrs(0, &mut self.lrs);
            self.f.release(0, &self.g, &self.lines);
        }

        /// An exit for nothing in particular (a timer tick, the
        /// maintenance interrupt).
        fn tick(&mut self) {
            self.exit(|_| {});
        }

        /// V's list register, if listed.
        fn lr(&self) -> Option<(usize, ListRegister)> {
            self.lrs
                .iter()
                .map(|&x| ListRegister::decode(x))
                .enumerate()
                .find(|(_, l)| l.state != LrState::Invalid && l.vintid == V)
        }

        /// Whether the guest's CPU interface would give it V now.
        fn presented(&self) -> bool {
            self.lr().is_some_and(|(_, l)| l.state == LrState::Pending)
        }

        /// The guest acknowledges V (ICC_IAR1_EL1); whether it got it.
        fn take(&mut self) -> bool {
            let Some((i, l)) = self.lr().filter(|(_, l)| l.state == LrState::Pending) else {
                return false;
            };
            let mut l = l;
            l.state = LrState::Active;
            self.lrs[i] = l.encode();
            true
        }

        /// The guest's EOI deactivates V in its list register; its EOI bit
        /// makes that exit at once.
        fn eoi(&mut self) {
            let (i, mut l) = self.lr().expect("V is listed");
            assert!(l.eoi, "deactivation must exit");
            l.state = match l.state {
                LrState::Active => LrState::Invalid,
                s => panic!("EOI of V in state {s:?}"),
            };
            self.lrs[i] = l.encode();
            self.tick();
        }

        /// The device raises (`true`) or lowers its line: an MMIO write
        /// to its BAR, which does not exit; if the line is unmasked and
        /// rises, the physical interrupt exits at once.
        fn device(&mut self, high: bool) {
            self.lines.set(P, high);
            if high && !self.f.masked.contains(&P) {
                self.tick();
            }
        }

        fn read(&mut self, offset: u64) -> bool {
            let mut v = 0;
            self.exit(|g| v = g.dist_read(offset, 4));
            v & BIT != 0
        }

        fn write(&mut self, offset: u64, value: u64) {
            self.exit(|g| {
                let _ = g.dist_write(offset, 4, value);
            });
        }

        fn masked(&self) -> bool {
            self.f.masked.contains(&P)
        }
    }

    #[test]
    fn a_firing_line_is_masked_and_its_owner_named() {
        let mut f = IntxForwarding::new();
        f.add(P, 0, V);
        let lines = Lines::default();
        assert_eq!(f.fired(P, &lines), Some((0, V)));
        assert_eq!(lines.enables(), [(P, false)]);
        assert!(f.masks(0) && !f.masks(1));
        assert_eq!(f.masking(), 0b1);
        assert_eq!(f.fired(99, &lines), None, "not a forwarded line");
    }

    #[test]
    fn a_restarting_vm_gets_its_lines_unmasked_and_only_its_own() {
        let mut f = IntxForwarding::new();
        f.add(P, 0, V);
        f.add(P + 1, 1, V);
        let lines = Lines::default();
        f.fired(P, &lines);
        f.fired(P + 1, &lines);
        assert_eq!(f.masking(), 0b11);
        f.restart(0, &lines);
        assert!(!f.masks(0), "VM 0's line is no longer masked");
        assert!(f.masks(1), "VM 1's line stays masked");
        assert_eq!(f.masking(), 0b10);
        assert_eq!(
            lines.enables(),
            [(P, false), (P + 1, false), (P, true)],
            "only VM 0's line is enabled again"
        );
        assert_eq!(f.owner(P), Some((0, V)), "the line is still VM 0's");
    }

    #[test]
    fn a_line_the_handler_let_go_is_unmasked_at_its_deactivation() {
        let mut w = World::new();
        w.device(true);
        assert!(w.masked() && w.presented());
        assert!(w.take());
        w.tick();
        assert!(w.masked(), "masked while the guest handles it");
        w.device(false);
        assert_eq!(w.f.masking(), 0b1);
        w.eoi();
        assert_eq!(w.lines.enables(), [(P, false), (P, true)]);
        assert!(!w.masked() && w.lr().is_none());
        assert_eq!(w.f.masking(), 0, "released");
        assert!(!w.read(ISPENDR) && !w.read(ISACTIVER));
    }

    #[test]
    fn a_line_still_high_is_pending_again_exactly_once_per_deactivation() {
        let mut w = World::new();
        w.device(true);
        let mut presentations = 0;
        // The handler leaves the line high three times; the fourth time it
        // acknowledges the device before its EOI.
        for round in 0..4 {
            assert!(w.take(), "presentation {round}");
            presentations += 1;
            // While the guest handles it, nothing more is presented, however
            // many exits happen.
            for _ in 0..3 {
                w.tick();
                assert!(!w.presented());
                assert!(w.read(ISPENDR) && w.read(ISACTIVER), "active and pending");
            }
            if round == 3 {
                w.device(false);
                assert!(!w.read(ISPENDR), "active, no longer pending");
            }
            w.eoi();
            assert_eq!(w.masked(), round < 3, "masked while the line is high");
        }
        assert_eq!(presentations, 4);
        assert!(!w.presented() && !w.take());
        // One physical interrupt in all: masked once, unmasked once.
        assert_eq!(w.lines.enables(), [(P, false), (P, true)]);
    }

    #[test]
    fn a_disabled_interrupt_stays_pending_and_is_presented_only_when_enabled() {
        let mut w = World::new();
        w.write(ICENABLER, BIT);
        w.device(true);
        assert!(!w.presented());
        assert!(w.read(ISPENDR), "pending while the line is high");
        // GICD_ICPENDR cannot clear a level that is still high.
        w.write(ICPENDR, BIT);
        assert!(w.read(ISPENDR));
        for _ in 0..3 {
            w.tick();
            assert!(!w.presented());
        }
        w.write(ISENABLER, BIT);
        assert!(w.take());
        w.device(false);
        w.eoi();
        assert!(!w.masked() && !w.presented());
    }

    #[test]
    fn a_disabled_interrupt_whose_line_dropped_is_not_presented_when_enabled() {
        let mut w = World::new();
        w.write(ICENABLER, BIT);
        w.device(true);
        assert!(w.read(ISPENDR));
        // The guest polls the device and acknowledges it there.
        w.device(false);
        assert!(!w.read(ISPENDR), "the level went, and so did pending");
        assert!(!w.masked(), "released at that exit");
        w.write(ISENABLER, BIT);
        assert!(!w.presented() && !w.take());
        // The next assertion fires physically again.
        w.device(true);
        assert!(w.masked() && w.take());
    }

    #[test]
    fn disabled_at_its_deactivation_it_waits_for_the_enable() {
        let mut w = World::new();
        w.device(true);
        assert!(w.take());
        w.write(ICENABLER, BIT);
        w.eoi();
        assert!(!w.presented(), "disabled: not re-presented");
        assert!(w.read(ISPENDR) && !w.read(ISACTIVER));
        w.tick();
        assert!(!w.presented() && w.masked());
        w.write(ISENABLER, BIT);
        assert!(w.take(), "enabled with the line still high: presented");
        w.device(false);
        w.eoi();
        assert!(!w.presented() && !w.masked());
    }

    #[test]
    fn routed_away_it_follows_the_route() {
        let mut w = World::new();
        let irouter = 0x6000 + u64::from(V) * 8;
        w.device(true);
        assert!(w.presented());
        // IROUTER to an affinity no vCPU has: pending, forwarded nowhere.
        w.exit(|g| {
            let _ = g.dist_write(irouter, 8, 0x0000_0001_0000_0000);
        });
        assert!(!w.presented() && w.read(ISPENDR) && w.masked());
        w.tick();
        assert!(!w.presented());
        w.exit(|g| {
            let _ = g.dist_write(irouter, 8, 0);
        });
        assert!(w.take(), "routed back to us: presented");
        w.device(false);
        w.eoi();
        assert!(!w.masked());
    }

    #[test]
    fn a_level_line_stays_level() {
        let mut w = World::new();
        // The guest configures V edge-triggered: Int_config is read-only.
        w.write(ICFGR, 2 << 16);
        let mut cfg = 0;
        w.exit(|g| cfg = g.dist_read(ICFGR, 4));
        assert_eq!(cfg & (2 << 16), 0);
        w.device(true);
        assert!(w.take());
        w.eoi();
        assert!(w.take(), "still high: pending again, as a level is");
    }

    #[test]
    fn a_line_that_drops_before_the_guest_takes_it_is_withdrawn() {
        let mut w = World::new();
        w.device(true);
        assert!(w.presented());
        w.device(false);
        // The next exit samples the level: nothing to take any more.
        w.tick();
        assert!(!w.presented() && !w.masked());
    }

    #[test]
    fn an_interrupt_another_vcpu_holds_is_left_to_it() {
        let mut g = VGic::new(&[0, 1], 32).unwrap();
        let _ = g.dist_write(0x0, 4, 0x12);
        let _ = g.dist_write(ISENABLER, 4, BIT);
        let _ = g.dist_write(0x6000 + u64::from(V) * 8, 8, 1); // vCPU 1
        g.set_resample(V, true).unwrap();
        let mut f = IntxForwarding::new();
        f.add(P, 0, V);
        let lines = Lines::default();
        lines.set(P, true);
        f.fired(P, &lines);
        let _ = g.set_level(V, 0, true).unwrap();
        let mut lrs1 = [0u64; 4];
        let _ = g.fill_lrs(1, &mut lrs1);
        // vCPU 1 took it and its handler let the line go; vCPU 0 exits
        // meanwhile: it must neither sample nor release the line.
        lines.set(P, false);
        let fx = f.sample(0, 0, &mut g, &lines);
        assert!(fx.is_empty(), "no kick of vCPU 1: {fx:?}");
        f.release(0, &g, &lines);
        assert_eq!(lines.enables(), [(P, false)]);
        // vCPU 1's deactivation exit does both.
        let mut l = ListRegister::decode(lrs1[0]);
        l.state = LrState::Invalid;
        lrs1[0] = l.encode();
        let _ = f.sample(0, 1, &mut g, &lines);
        let _ = g.sync_from_lrs(1, &lrs1);
        let _ = g.fill_lrs(1, &mut lrs1);
        f.release(0, &g, &lines);
        assert_eq!(lines.enables(), [(P, false), (P, true)]);
    }

    #[test]
    fn another_vms_exit_leaves_the_line_alone() {
        let mut w = World::new();
        w.device(true);
        let mut other = VGic::new(&[0], 32).unwrap();
        assert!(!w.f.masks(1));
        let _ = w.f.sample(1, 0, &mut other, &w.lines);
        w.lines.set(P, false);
        w.f.release(1, &other, &w.lines);
        assert!(w.masked());
    }
}
