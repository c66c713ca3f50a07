//! The hardware half of the virtual GIC: this CPU's list registers
//! (ICH_LR<n>_EL2) and hypervisor control (ICH_HCR_EL2), synchronised with
//! the emulated state in `vgic` around every entry into the guest.

use crate::vgic::{Effects, VGic};
use core::arch::asm;

/// ICH_HCR_EL2.En: virtual CPU interface on.
const HCR_EN: u64 = 1 << 0;
/// The most list registers GICv3 defines.
const MAX_LRS: usize = 16;

macro_rules! lr_access {
    ($($n:literal),*) => {
        fn read_lr(i: usize) -> u64 {
            let v: u64;
            match i {
                // SAFETY: reading a list register of this CPU at EL2.
                $($n => unsafe { asm!(concat!("mrs {}, ich_lr", $n, "_el2"), out(reg) v, options(nomem, nostack)) },)*
                _ => v = 0,
            }
            v
        }

        fn write_lr(i: usize, v: u64) {
            match i {
                // SAFETY: writing a list register of this CPU at EL2 only
                // changes what the guest's virtual CPU interface presents.
                $($n => unsafe { asm!(concat!("msr ich_lr", $n, "_el2, {}"), in(reg) v, options(nomem, nostack)) },)*
                _ => {}
            }
        }
    };
}

lr_access!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

/// Number of implemented list registers (ICH_VTR_EL2.ListRegs + 1).
fn nr_lrs() -> usize {
    let vtr: u64;
    // SAFETY: reading ICH_VTR_EL2 has no side effects.
    unsafe { asm!("mrs {}, ich_vtr_el2", out(reg) vtr, options(nomem, nostack)) };
    ((vtr & 0x1f) as usize + 1).min(MAX_LRS)
}

fn write_hcr(v: u64) {
    // SAFETY: ICH_HCR_EL2 controls only the virtual CPU interface.
    unsafe { asm!("msr ich_hcr_el2, {}", "isb", in(reg) v, options(nomem, nostack)) };
}

/// Whether a list register holds an interrupt the guest has yet to take
/// (state pending or pending+active: ICH_LR<n>_EL2 bit 62).
pub fn lr_pending() -> bool {
    (0..nr_lrs()).any(|i| read_lr(i) & (1 << 62) != 0)
}

/// Turns the virtual CPU interface on for a vCPU starting on this CPU, with
/// empty list registers.
pub fn init_cpu() {
    for i in 0..nr_lrs() {
        write_lr(i, 0);
    }
    // SAFETY: ICH_VMCR_EL2 holds the guest's virtual CPU interface state;
    // a starting vCPU begins from zero.
    unsafe { asm!("msr ich_vmcr_el2, xzr", options(nomem, nostack)) };
    write_hcr(HCR_EN);
}

/// Turns the virtual CPU interface off on this CPU (no vCPU runs here any
/// more): empty list registers, ICH_HCR_EL2.En = 0, so no maintenance
/// interrupt can be raised for what they held.
pub fn off() {
    for i in 0..nr_lrs() {
        write_lr(i, 0);
    }
    write_hcr(0);
}

/// Before returning to the guest: folds what the guest did with the listed
/// interrupts back into `vgic`, lists the highest-priority pending ones, and
/// asks for a maintenance interrupt when more wait.
pub fn flush(vgic: &mut VGic, vcpu: usize) -> Effects {
    let n = nr_lrs();
    let mut lrs = [0u64; MAX_LRS];
    for (i, lr) in lrs.iter_mut().enumerate().take(n) {
        *lr = read_lr(i);
    }
    let fx = vgic.sync_from_lrs(vcpu, &lrs[..n]);
    let fill = vgic.fill_lrs(vcpu, &mut lrs[..n]);
    for (i, &lr) in lrs.iter().enumerate().take(n) {
        write_lr(i, lr);
    }
    write_hcr(fill.ich_hcr(n));
    fx
}
