//! The hardware half of the virtual GIC: this CPU's list registers
//! (ICH_LR<n>_EL2) and hypervisor control (ICH_HCR_EL2), synchronised with
//! the emulated state in `vgic` around every entry into the guest.

use super::lr::{ListRegister, ICH_HCR_EN as HCR_EN, MAX_LRS};
use super::{Effects, VGic};
use crate::arch::gicv3;

fn nr_lrs() -> usize {
    gicv3::nr_lrs().min(MAX_LRS)
}

/// Whether a list register holds an interrupt the guest has yet to take.
pub fn lr_pending() -> bool {
    (0..nr_lrs()).any(|i| ListRegister::decode(gicv3::read_lr(i)).state.pending())
}

/// Turns the virtual CPU interface on for a vCPU starting on this CPU, with
/// empty list registers and its state (ICH_VMCR_EL2) from zero.
pub fn init_cpu() {
    for i in 0..nr_lrs() {
        gicv3::write_lr(i, 0);
    }
    gicv3::write_vmcr(0);
    gicv3::write_hcr(HCR_EN);
}

/// Turns the virtual CPU interface off on this CPU (no vCPU runs here any
/// more): empty list registers, ICH_HCR_EL2.En = 0, so no maintenance
/// interrupt can be raised for what they held.
pub fn off() {
    for i in 0..nr_lrs() {
        gicv3::write_lr(i, 0);
    }
    gicv3::write_hcr(0);
}

/// This CPU's list registers.
fn read_lrs() -> ([u64; MAX_LRS], usize) {
    let n = nr_lrs();
    let mut lrs = [0u64; MAX_LRS];
    for (i, lr) in lrs.iter_mut().enumerate().take(n) {
        *lr = gicv3::read_lr(i);
    }
    (lrs, n)
}

/// At an exit, before it is handled: folds what the guest did with the
/// listed interrupts back into `vgic`, so that the exit's own GIC accesses
/// and decisions see it. The list registers keep their contents (the
/// guest does not run) until [`flush`] rewrites them.
pub fn sync(vgic: &mut VGic, vcpu: usize) -> Effects {
    let (lrs, n) = read_lrs();
    vgic.sync_from_lrs(vcpu, &lrs[..n])
}

/// Before returning to the guest: folds what the guest did with the listed
/// interrupts back into `vgic` (nothing if [`sync`] already did), lists
/// the highest-priority pending ones, and asks for a maintenance interrupt
/// when more wait.
pub fn flush(vgic: &mut VGic, vcpu: usize) -> Effects {
    let (mut lrs, n) = read_lrs();
    let fx = vgic.sync_from_lrs(vcpu, &lrs[..n]);
    let fill = vgic.fill_lrs(vcpu, &mut lrs[..n]);
    for (i, &lr) in lrs.iter().enumerate().take(n) {
        gicv3::write_lr(i, lr);
    }
    gicv3::write_hcr(fill.ich_hcr(n));
    fx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::fake;

    /// A vGIC whose SPI 40 was made pending and listed in the fake CPU's
    /// list registers.
    fn spi_40_listed() -> VGic {
        fake::reset();
        let mut g = VGic::new(&[0], 32).unwrap();
        // Distributor on (ARE, group 1), SPI 40 enabled, group 1.
        let _ = g.dist_write(0x0, 4, 0x12);
        let _ = g.dist_write(0x104, 4, 1 << 8);
        let _ = g.dist_write(0x84, 4, 1 << 8);
        let _ = g.inject_edge(40, 0).unwrap();
        let _ = flush(&mut g, 0);
        g
    }

    /// SPI 40's list register.
    fn lr_of_40() -> ListRegister {
        let listed: alloc::vec::Vec<u64> = fake::with(|c| c.lrs.clone());
        let lr = listed.iter().find(|&&lr| lr & 0xffff_ffff == 40).copied();
        ListRegister::decode(lr.expect("INTID 40 in a list register"))
    }

    #[test]
    fn a_pending_spi_is_listed_and_taken_back_after_the_guest_handles_it() {
        let mut g = spi_40_listed();
        assert!(lr_of_40().state.pending(), "listed pending");
        assert!(lr_pending());
        assert_ne!(fake::with(|c| c.ich_hcr) & HCR_EN, 0);
        // The guest acknowledged and deactivated it: the hardware set the
        // LR's state to invalid (its INTID stays).
        fake::with(|c| c.lrs.iter_mut().for_each(|l| *l &= !(3 << 62)));
        let _ = flush(&mut g, 0);
        assert!(!lr_pending());
        assert!(!g.has_pending(0));
    }

    #[test]
    fn what_the_guest_did_is_seen_by_the_exit_that_follows() {
        let mut g = spi_40_listed();
        // The guest acknowledged INTID 40 (pending -> active in its LR),
        // then trapped on a GICD_ISACTIVER read.
        fake::with(|c| {
            for l in c.lrs.iter_mut().filter(|l| **l & 0xffff_ffff == 40) {
                *l = (*l & !(3 << 62)) | (2 << 62);
            }
        });
        assert_eq!(g.dist_read(0x304, 4) & (1 << 8), 0, "not folded yet");
        let _ = sync(&mut g, 0);
        assert_ne!(g.dist_read(0x304, 4) & (1 << 8), 0, "active");
        assert!(
            fake::with(|c| c.lrs.iter().any(|&l| l & 0xffff_ffff == 40)),
            "the list registers are kept until the flush"
        );
        let _ = flush(&mut g, 0);
        assert!(lr_of_40().state.active(), "listed active");
    }
}
