//! Forwarded INTx lines: a passed-through function's level-triggered line
//! (a physical SPI) becomes a virtual SPI of its VM.
//!
//! When the physical line fires, it is masked at the distributor (so it
//! cannot storm while the guest runs its handler), finished physically, and
//! the guest's virtual interrupt is made pending once. The virtual line is
//! not held high: the device's line is masked, so its level is unknown
//! until the guest is done and it is resampled (a line held high would be
//! presented again after each of the guest's EOIs: a storm of interrupts
//! its handler finds nothing for). When the guest has finished with the
//! virtual interrupt (neither pending nor active; its deactivation exits at
//! once through ICH_LR.EOI, see `VGic::set_resample`), the line is unmasked
//! at once if the device has let it go, else after
//! [`STILL_ASSERTED_BACKOFF_US`] (then it fires again).

use crate::vdev::vgic::VGic;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// How long a line stays masked when its guest has finished with it but
/// the device still asserts it, in microseconds. A level line should
/// interrupt again at once; but a device can hold its line after the guest
/// found nothing to do (QEMU's NVMe with shadow doorbells does: it learns
/// of the guest's completion-queue head late), and re-presenting at once
/// makes an interrupt storm that starves the guest. A line the guest's
/// handler deasserts, the usual case, is unmasked at once.
pub const STILL_ASSERTED_BACKOFF_US: u64 = 50;

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
    /// Masked lines, each with the counter value before which it stays
    /// masked although its guest is done (set when the line was found
    /// still asserted then).
    masked: BTreeMap<u32, Option<u64>>,
}

impl IntxForwarding {
    /// No lines.
    pub const fn new() -> Self {
        Self {
            owners: BTreeMap::new(),
            masked: BTreeMap::new(),
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
    /// and returns the (VM, guest INTID) to make pending once.
    pub fn fired(&mut self, pintid: u32, lines: &dyn LineControl) -> Option<(usize, u32)> {
        let owner = self.owner(pintid)?;
        lines.set_enabled(pintid, false);
        self.masked.insert(pintid, None);
        Some(owner)
    }

    /// Unmasks VM `vm`'s masked lines whose guest interrupt `vgic` shows
    /// finished (neither pending nor active): at once if the device no
    /// longer asserts the line, else once `backoff` counter ticks have
    /// passed since it was first found still asserted (`now`).
    pub fn resample(
        &mut self,
        vm: usize,
        vgic: &VGic,
        now: u64,
        backoff: u64,
        lines: &dyn LineControl,
    ) {
        let mut done = Vec::new();
        for (&pintid, deadline) in self.masked.iter_mut() {
            let Some(&(owner, vintid)) = self.owners.get(&pintid) else {
                continue;
            };
            if owner != vm || guest_busy(vgic, vintid) {
                continue;
            }
            match *deadline {
                _ if !lines.asserted(pintid) => done.push(pintid),
                None => *deadline = Some(now.saturating_add(backoff)),
                Some(d) if now >= d => done.push(pintid),
                Some(_) => {}
            }
        }
        for pintid in done {
            self.masked.remove(&pintid);
            lines.set_enabled(pintid, true);
        }
    }

    /// Whether one of VM `vm`'s lines waits out its backoff: its vCPUs must
    /// not sleep in WFI meanwhile (nothing would wake them to unmask it).
    pub fn waiting(&self, vm: usize) -> bool {
        self.masked
            .iter()
            .any(|(p, d)| d.is_some() && self.owners.get(p).is_some_and(|&(o, _)| o == vm))
    }

    /// Whether any line is masked.
    pub fn any_masked(&self) -> bool {
        !self.masked.is_empty()
    }
}

/// Whether guest INTID `vintid` is pending or active in `vgic`
/// (GICD_ISPENDR / GICD_ISACTIVER).
fn guest_busy(vgic: &VGic, vintid: u32) -> bool {
    use crate::gicv3::gicd::{bit, ISACTIVER, ISPENDR};
    let (pend, mask) = bit(ISPENDR, vintid);
    let (active, _) = bit(ISACTIVER, vintid);
    (vgic.dist_read(pend, 4) | vgic.dist_read(active, 4)) & u64::from(mask) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;

    /// A distributor: which lines are asserted, and the enables written.
    #[derive(Default)]
    struct Lines {
        asserted: RefCell<Vec<u32>>,
        enables: RefCell<Vec<(u32, bool)>>,
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

    fn vgic() -> VGic {
        let mut g = VGic::new(&[0], 32).unwrap();
        let _ = g.dist_write(0x0, 4, 0x12);
        let _ = g.dist_write(0x104, 4, 1 << (V - 32));
        g
    }

    fn setup() -> (IntxForwarding, Lines, VGic) {
        let mut f = IntxForwarding::new();
        f.add(P, 0, V);
        (f, Lines::default(), vgic())
    }

    #[test]
    fn a_firing_line_is_masked_and_its_owner_named() {
        let (mut f, lines, _) = setup();
        assert_eq!(f.fired(P, &lines), Some((0, V)));
        assert_eq!(*lines.enables.borrow(), [(P, false)]);
        assert_eq!(f.fired(99, &lines), None, "not a forwarded line");
    }

    #[test]
    fn stays_masked_while_the_guest_handles_it() {
        let (mut f, lines, mut g) = setup();
        f.fired(P, &lines);
        let _ = g.inject_edge(V, 0).unwrap();
        f.resample(0, &g, 0, 50, &lines);
        assert_eq!(lines.enables.borrow().len(), 1, "no unmask while pending");
    }

    #[test]
    fn unmasked_at_once_when_the_device_let_go() {
        let (mut f, lines, g) = setup();
        f.fired(P, &lines);
        f.resample(0, &g, 0, 50, &lines);
        assert_eq!(*lines.enables.borrow(), [(P, false), (P, true)]);
        assert!(!f.any_masked());
    }

    #[test]
    fn a_line_still_asserted_waits_out_the_backoff_and_keeps_vcpus_awake() {
        let (mut f, lines, g) = setup();
        lines.asserted.borrow_mut().push(P);
        f.fired(P, &lines);
        f.resample(0, &g, 1000, 50, &lines);
        assert!(f.waiting(0));
        assert!(!f.waiting(1), "only its own VM's vCPUs");
        f.resample(0, &g, 1049, 50, &lines);
        assert_eq!(lines.enables.borrow().len(), 1, "still masked");
        f.resample(0, &g, 1050, 50, &lines);
        assert_eq!(*lines.enables.borrow(), [(P, false), (P, true)]);
        assert!(!f.waiting(0));
    }

    #[test]
    fn another_vms_resample_leaves_the_line_alone() {
        let (mut f, lines, g) = setup();
        f.fired(P, &lines);
        f.resample(1, &g, 0, 50, &lines);
        assert_eq!(lines.enables.borrow().len(), 1);
    }
}
