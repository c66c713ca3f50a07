//! The hardware half of the virtual GIC: this CPU's list registers
//! (ICH_LR<n>_EL2) and hypervisor control (ICH_HCR_EL2), synchronised with
//! the emulated state in `vgic` around every entry into the guest.

use super::lr::{ListRegister, ICH_HCR_EN as HCR_EN, MAX_LRS};
use super::{Effects, VGic};
use crate::arch::gicv3;

/// What one vCPU's list registers and ICH_HCR_EL2 hold, as this module
/// last wrote or read them on the vCPU's physical CPU.
///
/// Every access to a list register is a system register access, which
/// costs an emulator a call into its GIC model each, and most exits list
/// nothing: the copy lets an exit read only the registers that hold an
/// interrupt and write only those whose value changes. It is exact
/// because only this module writes the list registers, a vCPU never
/// leaves its physical CPU, and the hardware changes nothing but the
/// state of an interrupt a register holds (the guest's acknowledge and
/// deactivation; IHI 0069D §6.3): a register written 0 stays 0 until it
/// is written again. ICH_HCR_EL2's EOIcount, the one field the hardware
/// counts in, is never read and never enables a maintenance interrupt
/// (LRENPIE stays 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwLrs {
    /// Implemented list registers; 0 while nothing is known (a vCPU not
    /// yet started on this CPU by [`init_cpu`]): then every register is
    /// read and written, which makes the copy exact again.
    n: usize,
    /// The list registers' values.
    lrs: [u64; MAX_LRS],
    /// ICH_HCR_EL2 as last written.
    hcr: u64,
    /// `lrs` holds what the hardware holds: [`sync`] has read the list
    /// registers during this exit, and the guest, the only other writer
    /// of their state, has not run since. [`flush`] then reads none.
    current: bool,
}

fn nr_lrs() -> usize {
    gicv3::nr_lrs().min(MAX_LRS)
}

/// Whether a list register holds an interrupt the guest has yet to take.
pub fn lr_pending() -> bool {
    (0..nr_lrs()).any(|i| ListRegister::decode(gicv3::read_lr(i)).state.pending())
}

/// Turns the virtual CPU interface on for `vgic`'s vCPU `vcpu` starting
/// on this CPU, with empty list registers and its state (ICH_VMCR_EL2)
/// from zero.
pub fn init_cpu(vgic: &mut VGic, vcpu: usize) {
    let n = nr_lrs();
    for i in 0..n {
        gicv3::write_lr(i, 0);
    }
    gicv3::write_vmcr(0);
    gicv3::write_hcr(HCR_EN);
    if let Some(v) = vgic.vcpus.get_mut(vcpu) {
        v.hw = HwLrs {
            n,
            lrs: [0; MAX_LRS],
            hcr: HCR_EN,
            current: false,
        };
    }
}

/// Turns the virtual CPU interface off on this CPU (no vCPU runs here any
/// more): empty list registers, ICH_HCR_EL2.En = 0, so no maintenance
/// interrupt can be raised for what they held. The vCPU's next start
/// begins with [`init_cpu`].
pub fn off() {
    for i in 0..nr_lrs() {
        gicv3::write_lr(i, 0);
    }
    gicv3::write_hcr(0);
}

/// `vcpu`'s list registers: those that may hold an interrupt read from
/// the hardware, the others 0 (all read when nothing is known yet): the
/// copy [`HwLrs`] keeps, brought up to date and returned whole (its
/// entries from the implemented count on are 0), with that count.
fn read_lrs(vgic: &mut VGic, vcpu: usize) -> ([u64; MAX_LRS], usize) {
    let Some(hw) = vgic.vcpus.get_mut(vcpu).map(|v| &mut v.hw) else {
        let mut lrs = [0u64; MAX_LRS];
        let n = nr_lrs();
        for (i, lr) in lrs.iter_mut().enumerate().take(n) {
            *lr = gicv3::read_lr(i);
        }
        return (lrs, n);
    };
    if hw.current {
        // Read by this exit's `sync` already.
    } else if hw.n == 0 {
        hw.n = nr_lrs();
        for (i, lr) in hw.lrs.iter_mut().enumerate().take(hw.n) {
            *lr = gicv3::read_lr(i);
        }
        // Unknown: the next flush writes it.
        hw.hcr = u64::MAX;
    } else {
        for (i, lr) in hw.lrs.iter_mut().enumerate().take(hw.n) {
            if *lr != 0 {
                *lr = gicv3::read_lr(i);
            }
        }
    }
    (hw.lrs, hw.n)
}

/// At an exit, before it is handled: folds what the guest did with the
/// listed interrupts back into `vgic`, so that the exit's own GIC accesses
/// and decisions see it. The list registers keep their contents (the
/// guest does not run) until [`flush`] rewrites them.
pub fn sync(vgic: &mut VGic, vcpu: usize) -> Effects {
    let (lrs, n) = read_lrs(vgic, vcpu);
    if let Some(v) = vgic.vcpus.get_mut(vcpu) {
        v.hw.current = v.hw.n != 0;
    }
    vgic.sync_from_lrs(vcpu, &lrs[..n])
}

/// Before returning to the guest: folds what the guest did with the listed
/// interrupts back into `vgic` (nothing if [`sync`] already did), lists
/// the highest-priority pending ones, and asks for a maintenance interrupt
/// when more wait. Writes only the registers whose value changes.
pub fn flush(vgic: &mut VGic, vcpu: usize) -> Effects {
    let (mut lrs, n) = read_lrs(vgic, vcpu);
    let fx = vgic.sync_from_lrs(vcpu, &lrs[..n]);
    let fill = vgic.fill_lrs(vcpu, &mut lrs[..n]);
    let hcr = fill.ich_hcr(n);
    match vgic.vcpus.get_mut(vcpu).map(|v| &mut v.hw) {
        Some(hw) => {
            // From here the guest may run and change them.
            hw.current = false;
            for (i, (&lr, old)) in lrs.iter().zip(hw.lrs.iter_mut()).enumerate().take(n) {
                if lr != *old {
                    gicv3::write_lr(i, lr);
                    *old = lr;
                }
            }
            if hw.hcr != hcr {
                gicv3::write_hcr(hcr);
                hw.hcr = hcr;
            }
        }
        None => {
            for (i, &lr) in lrs.iter().enumerate().take(n) {
                gicv3::write_lr(i, lr);
            }
            gicv3::write_hcr(hcr);
        }
    }
    fx
}

#[cfg(test)]
mod tests {
    use super::super::lr::LrState;
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
    /// A vGIC with its distributor on (ARE, group 1) and SPIs 32..64
    /// enabled in group 1, its vCPU 0 started on the fake CPU.
    fn started() -> VGic {
        fake::reset();
        let mut g = VGic::new(&[0], 32).unwrap();
        let _ = g.dist_write(0x0, 4, 0x12);
        let _ = g.dist_write(0x104, 4, 0xffff_ffff);
        let _ = g.dist_write(0x84, 4, 0xffff_ffff);
        init_cpu(&mut g, 0);
        fake::with(|c| c.lr_accesses = (0, 0, 0));
        g
    }

    /// The list register accesses so far, and the count set back to 0.
    fn accesses() -> (usize, usize, usize) {
        fake::with(|c| core::mem::take(&mut c.lr_accesses))
    }

    #[test]
    fn an_exit_touches_only_the_list_registers_in_use() {
        let mut g = started();
        let _ = sync(&mut g, 0);
        let _ = flush(&mut g, 0);
        assert_eq!(accesses(), (0, 0, 0), "nothing listed: no access at all");
        let _ = g.inject_edge(40, 0).unwrap();
        let _ = flush(&mut g, 0);
        assert_eq!(
            accesses(),
            (0, 1, 0),
            "one register written, ICH_HCR_EL2 as it was"
        );
        assert!(lr_of_40().state.pending());
        // The guest acknowledges it; the next exit reads that register
        // once (at the exit: the entry after it uses what was read) and
        // leaves it alone, since the model lists it active, as the
        // hardware already has it.
        fake::with(|c| c.lrs[0] = (c.lrs[0] & !(3 << 62)) | (2 << 62));
        let _ = sync(&mut g, 0);
        let _ = flush(&mut g, 0);
        assert_eq!(accesses(), (1, 0, 0));
        assert!(lr_of_40().state.active());
        // Deactivated: read, then emptied.
        fake::with(|c| c.lrs[0] &= !(3 << 62));
        let _ = sync(&mut g, 0);
        let _ = flush(&mut g, 0);
        assert_eq!(accesses(), (1, 1, 0));
        assert!(fake::with(|c| c.lrs.iter().all(|&l| l == 0)));
        let _ = flush(&mut g, 0);
        assert_eq!(accesses(), (0, 0, 0));
        // An entry with no sync before it in the same exit (a second
        // flush) reads the register in use again.
        let _ = g.inject_edge(41, 0).unwrap();
        let _ = flush(&mut g, 0);
        assert_eq!(accesses(), (0, 1, 0));
        let _ = flush(&mut g, 0);
        assert_eq!(accesses(), (1, 0, 0));
    }

    #[test]
    fn without_init_cpu_every_register_is_read_and_written_once() {
        fake::reset();
        // Left over from whatever ran here before.
        fake::with(|c| c.lrs[3] = 1 << 62 | 33);
        let mut g = VGic::new(&[0], 32).unwrap();
        let _ = flush(&mut g, 0);
        assert_eq!(accesses(), (4, 1, 1));
        assert!(fake::with(|c| c.lrs.iter().all(|&l| l == 0)));
        let _ = flush(&mut g, 0);
        assert_eq!(accesses(), (0, 0, 0));
    }

    /// Against the reference (every register read at each exit, all
    /// written before each entry, as the model says), under random
    /// interrupts and a guest that acknowledges and deactivates at
    /// random: the hardware always ends up holding exactly what the
    /// reference writes.
    #[test]
    fn lazy_list_registers_hold_what_writing_all_of_them_would() {
        use super::super::tests::Rng;
        for seed in 1..40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut g = started();
            let mut reference = g.clone();
            let mut ref_lrs = [0u64; 4];
            for step in 0..300 {
                match rng.below(4) {
                    0 | 1 => {
                        let intid = 32 + rng.below(32) as u32;
                        let _ = g.inject_edge(intid, 0);
                        let _ = reference.inject_edge(intid, 0);
                    }
                    2 => {
                        // The guest acknowledges or deactivates one.
                        let i = rng.below(4) as usize;
                        fake::with(|c| {
                            let mut l = ListRegister::decode(c.lrs[i]);
                            l.state = match l.state {
                                LrState::Pending => LrState::Active,
                                LrState::Active => LrState::Invalid,
                                LrState::PendingActive => LrState::Pending,
                                LrState::Invalid => return,
                            };
                            c.lrs[i] = l.encode();
                        });
                    }
                    _ => {
                        // Disable or enable one SPI.
                        let bit = 1u64 << rng.below(32);
                        let reg = if rng.below(2) == 0 { 0x104 } else { 0x184 };
                        let _ = g.dist_write(reg, 4, bit);
                        let _ = reference.dist_write(reg, 4, bit);
                    }
                }
                // An exit, then the entry.
                let hardware: [u64; 4] = fake::with(|c| c.lrs.clone()).try_into().unwrap();
                let _ = reference.sync_from_lrs(0, &hardware);
                let _ = sync(&mut g, 0);
                ref_lrs.copy_from_slice(&hardware);
                let _ = reference.sync_from_lrs(0, &ref_lrs);
                let fill = reference.fill_lrs(0, &mut ref_lrs);
                let _ = flush(&mut g, 0);
                let (lrs, hcr) = fake::with(|c| (c.lrs.clone(), c.ich_hcr));
                assert_eq!(lrs, ref_lrs, "seed {seed} step {step}");
                assert_eq!(hcr, fill.ich_hcr(4), "seed {seed} step {step}");
            }
        }
    }
}
