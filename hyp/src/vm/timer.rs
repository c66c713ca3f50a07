//! The guest's EL1 timers, virtual (CNTV, PPI 27) and physical (CNTP, PPI
//! 30), with the architecture's level semantics: a timer's interrupt is
//! asserted exactly while its CNTx_CTL_EL0 has ENABLE and ISTATUS set and
//! IMASK clear (Arm ARM D11.2.4, "the timer condition"), and is pending
//! while asserted.
//!
//! The guest programs both timers directly (CNTHCTL_EL2.EL1PCEN; the
//! virtual one always). A timer's physical PPI is taken at EL2
//! ([`fired`]): if the timer still asserts, the virtual PPI is made
//! pending, linked to the physical one, which stays active (EOImode 1:
//! priority drop only) until the guest deactivates the virtual one; the
//! list register's HW bit then deactivates it, and if the timer still
//! asserts, it fires again. A timer the guest disables, masks or
//! reprograms before taking its interrupt stops asserting without an exit;
//! every exit looks ([`resample`]), and its interrupt is pending no more.
//! Offsets need nothing: ISTATUS is the hardware's own comparison of the
//! timer's compare value with its counter (the virtual one less
//! CNTVOFF_EL2).
//!
//! Between a change the guest makes and its next exit, the list register
//! can still hold a stale pending timer interrupt (no trap exists for the
//! timer registers without FEAT_ECV); every trapped GIC access is an exit,
//! so the guest never reads a stale pending state.

use crate::arch;
use crate::vdev::vgic::{Effects, VGic, VgicError};

/// CNTx_CTL_EL0 bits.
const ENABLE: u64 = 1 << 0;
const IMASK: u64 = 1 << 1;
const ISTATUS: u64 = 1 << 2;

/// One of a vCPU's EL1 timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// CNTV: PPI 27.
    Virtual,
    /// CNTP (EL1 physical): PPI 30.
    Physical,
}

impl Timer {
    /// Both.
    pub const ALL: [Self; 2] = [Self::Virtual, Self::Physical];

    /// Its PPI, the same INTID physically and for the guest.
    pub const fn ppi(self) -> u32 {
        match self {
            Self::Virtual => 27,
            Self::Physical => 30,
        }
    }

    /// The timer whose PPI is `intid`.
    pub fn of_ppi(intid: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ppi() == intid)
    }

    /// Whether this CPU's timer asserts its interrupt now.
    pub fn asserts(self) -> bool {
        asserts(arch::guest::timer_ctl(self == Self::Virtual))
    }
}

/// Whether a timer with control register `ctl` asserts its interrupt.
pub fn asserts(ctl: u64) -> bool {
    ctl & (ENABLE | IMASK | ISTATUS) == ENABLE | ISTATUS
}

/// Links each vCPU's timer PPIs in `vgic` to the physical ones.
pub fn link(vgic: &mut VGic) -> Result<(), VgicError> {
    for vcpu in 0..vgic.nr_vcpus() {
        for t in Timer::ALL {
            vgic.set_hw(t.ppi(), vcpu, t.ppi())?;
        }
    }
    Ok(())
}

/// `timer`'s physical PPI was taken at EL2 on the CPU of `vcpu`
/// (acknowledged and priority-dropped, still active). If the timer still
/// asserts, its virtual PPI is pending and the physical one stays active
/// for the guest: Some(effects). None for a stale interrupt (the guest
/// reprogrammed, disabled or masked the timer since): the caller
/// deactivates the physical one.
pub fn fired(vgic: &mut VGic, vcpu: usize, timer: Timer) -> Option<Effects> {
    if !timer.asserts() {
        return None;
    }
    vgic.inject_edge(timer.ppi(), vcpu).ok()
}

/// At an exit of `vcpu`, after its list registers were folded back: a
/// timer interrupt pending but not yet taken whose timer no longer asserts
/// is pending no more, and its physical interrupt is deactivated (in the
/// effects). Reads a timer only when such an interrupt waits.
pub fn resample(vgic: &mut VGic, vcpu: usize) -> Effects {
    let mut fx = Effects::none();
    for t in Timer::ALL {
        if vgic.hw_line_waiting(t.ppi(), vcpu) && !t.asserts() {
            if let Ok(more) = vgic.lower_hw_line(t.ppi(), vcpu) {
                fx.merge(more);
            }
        }
    }
    fx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::fake;
    use crate::vdev::vgic::lr::{ListRegister, LrState};

    /// A 1-vCPU vGIC as Linux leaves it: distributor on, both timer PPIs
    /// enabled, linked.
    fn vgic() -> VGic {
        let mut g = VGic::new(&[0], 32).unwrap();
        let _ = g.dist_write(0x0, 4, 0x12);
        let _ = g.redist_write(0, 0x1_0100, 4, 1 << 27 | 1 << 30);
        link(&mut g).unwrap();
        g
    }

    /// GICR_ISPENDR0 as the guest reads it.
    fn pending(g: &VGic) -> u64 {
        g.redist_read(0, 0x1_0200, 4)
    }

    /// An exit: list registers folded (as the guest left them), timers
    /// resampled, list registers refilled; returns the physical INTIDs to
    /// deactivate.
    fn exit(g: &mut VGic, lrs: &mut [u64; 4]) -> Vec<u32> {
        let mut fx = g.sync_from_lrs(0, lrs);
        fx.merge(resample(g, 0));
        let _ = g.fill_lrs(0, lrs);
        fx.deactivations().iter().map(|d| d.pintid).collect()
    }

    #[test]
    fn asserted_exactly_while_enabled_firing_and_unmasked() {
        assert!(asserts(ENABLE | ISTATUS));
        assert!(!asserts(ENABLE | ISTATUS | IMASK), "masked");
        assert!(!asserts(ISTATUS), "disabled");
        assert!(!asserts(ENABLE), "not yet");
        assert!(!asserts(ENABLE | IMASK));
        assert_eq!(Timer::of_ppi(30), Some(Timer::Physical));
        assert_eq!(Timer::of_ppi(26), None);
    }

    #[test]
    fn a_firing_timer_is_pending_and_linked_until_the_guest_deactivates_it() {
        for t in Timer::ALL {
            fake::reset();
            let mut g = vgic();
            fake::with(|c| c.cntp_ctl = ENABLE | ISTATUS);
            fake::with(|c| c.cntv_ctl = ENABLE | ISTATUS);
            let fx = fired(&mut g, 0, t).expect("it asserts");
            assert_eq!(fx.kick_bits(), 1);
            assert_eq!(pending(&g), 1 << t.ppi());
            let mut lrs = [0; 4];
            assert!(exit(&mut g, &mut lrs).is_empty());
            let lr = ListRegister::decode(lrs[0]);
            assert_eq!((lr.vintid, lr.pintid), (t.ppi(), Some(t.ppi() as u16)));
            // Still asserted at the next exit: still pending, nothing
            // deactivated by the hypervisor.
            assert!(exit(&mut g, &mut lrs).is_empty());
            assert_eq!(pending(&g), 1 << t.ppi());
        }
    }

    #[test]
    fn disabling_masking_or_reprogramming_a_timer_ends_its_pending_interrupt() {
        // What the guest does to the timer before taking its interrupt.
        for after in [ISTATUS, ENABLE | IMASK | ISTATUS, ENABLE] {
            for t in Timer::ALL {
                fake::reset();
                let mut g = vgic();
                fake::with(|c| (c.cntv_ctl, c.cntp_ctl) = (ENABLE | ISTATUS, ENABLE | ISTATUS));
                let _ = fired(&mut g, 0, t).unwrap();
                let mut lrs = [0; 4];
                assert!(exit(&mut g, &mut lrs).is_empty());
                fake::with(|c| (c.cntv_ctl, c.cntp_ctl) = (after, after));
                // The next exit finds it no longer asserted: not pending, not
                // listed, and the physical interrupt deactivated so that it
                // can fire again.
                assert_eq!(exit(&mut g, &mut lrs), [t.ppi()], "{after:#x}");
                assert_eq!(pending(&g), 0, "{after:#x}");
                assert_eq!(lrs, [0; 4]);
            }
        }
    }

    #[test]
    fn a_taken_interrupt_is_left_to_the_guests_deactivation() {
        fake::reset();
        let mut g = vgic();
        fake::with(|c| c.cntv_ctl = ENABLE | ISTATUS);
        let _ = fired(&mut g, 0, Timer::Virtual).unwrap();
        let mut lrs = [0; 4];
        let _ = exit(&mut g, &mut lrs);
        // The guest acknowledges it, then masks the timer in its handler.
        let mut lr = ListRegister::decode(lrs[0]);
        lr.state = LrState::Active;
        lrs[0] = lr.encode();
        fake::with(|c| c.cntv_ctl = ENABLE | IMASK | ISTATUS);
        // Active: the hypervisor does not deactivate the physical one; the
        // guest's deactivation will, through the list register's HW bit.
        assert!(exit(&mut g, &mut lrs).is_empty());
        let lr = ListRegister::decode(lrs[0]);
        assert_eq!((lr.vintid, lr.pintid), (27, Some(27)));
        assert!(lr.state.active());
    }

    #[test]
    fn a_stale_physical_interrupt_is_not_given_to_the_guest() {
        fake::reset();
        let mut g = vgic();
        fake::with(|c| c.cntp_ctl = ENABLE | IMASK | ISTATUS);
        assert!(fired(&mut g, 0, Timer::Physical).is_none());
        assert_eq!(pending(&g), 0);
    }
}
