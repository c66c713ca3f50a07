//! The host's stand-in for `aarch64`: one CPU's registers as plain data,
//! per test thread, with the same function names as the hardware module.
//!
//! A test sets what the hardware would hold (a syndrome, the guest's vector
//! base, pending physical interrupts), runs the code under test, and reads
//! back what it wrote (the guest's EL1 exception registers, list registers,
//! EOIs, deactivations, SGIs). Nothing here models more than the code
//! relies on.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::vec::Vec;

/// One CPU's registers and the GIC CPU interface's traffic.
#[derive(Clone, Debug, Default)]
pub struct FakeCpu {
    /// TPIDR_EL2: this CPU's index.
    pub cpu_index: usize,
    /// CNTPCT_EL0 (advanced by [`advance`] and by `wait_for_interrupt`).
    pub counter: u64,
    /// CNTFRQ_EL0 (0 reads as 1 Hz... set it; [`reset`] uses 1 MHz).
    pub counter_freq: u64,
    /// WFIs executed.
    pub wfis: usize,
    /// The trap's ESR_EL2, FAR_EL2 and HPFAR_EL2.
    pub esr_el2: u64,
    /// FAR_EL2.
    pub far_el2: u64,
    /// HPFAR_EL2.
    pub hpfar_el2: u64,
    /// The guest's VBAR_EL1.
    pub vbar_el1: u64,
    /// The guest's ESR_EL1, FAR_EL1, ELR_EL1 and SPSR_EL1, as last set.
    pub el1_exception: Option<[u64; 4]>,
    /// The guest's CNTV_CTL_EL0.
    pub cntv_ctl: u64,
    /// The guest's CNTP_CTL_EL0.
    pub cntp_ctl: u64,
    /// The CPU's ID registers, by (CRm, Op2); absent ones read as zero.
    pub id_regs: Vec<((u8, u8), u64)>,
    /// Interrupts `ack` hands out, in order (then 1023, spurious).
    pub pending: VecDeque<u32>,
    /// INTIDs written to ICC_EOIR1_EL1.
    pub eois: Vec<u32>,
    /// INTIDs written to ICC_DIR_EL1.
    pub deactivated: Vec<u32>,
    /// Values written to ICC_SGI1R_EL1.
    pub sgis: Vec<u64>,
    /// ICH_LR<n>_EL2 (the implemented ones: `nr_lrs`).
    pub lrs: Vec<u64>,
    /// ICH_HCR_EL2.
    pub ich_hcr: u64,
    /// Reads of ICH_LR<n>_EL2, writes of ICH_LR<n>_EL2 and of ICH_HCR_EL2
    /// so far.
    pub lr_accesses: (usize, usize, usize),
    /// ICH_VMCR_EL2.
    pub ich_vmcr: u64,
}

std::thread_local! {
    static CPU: RefCell<FakeCpu> = RefCell::new(FakeCpu::new());
}

impl FakeCpu {
    fn new() -> Self {
        Self {
            counter_freq: 1_000_000,
            lrs: std::vec![0; 4],
            ..Self::default()
        }
    }
}

/// Runs `f` on this thread's fake CPU.
pub fn with<R>(f: impl FnOnce(&mut FakeCpu) -> R) -> R {
    CPU.with(|c| f(&mut c.borrow_mut()))
}

/// Puts this thread's fake CPU back to its power-on state (4 list
/// registers, a 1 MHz counter at 0).
pub fn reset() {
    with(|c| *c = FakeCpu::new());
}

/// Advances the counter by `ticks`.
pub fn advance(ticks: u64) {
    with(|c| c.counter += ticks);
}

/// Reads the physical counter.
pub fn counter() -> u64 {
    with(|c| c.counter)
}

/// Counter ticks per second.
pub fn counter_freq() -> u64 {
    with(|c| c.counter_freq.max(1))
}

/// This CPU's index.
pub fn cpu_index() -> usize {
    with(|c| c.cpu_index)
}

/// A WFI: counted, and time passes (1 tick).
pub fn wait_for_interrupt() {
    with(|c| {
        c.wfis += 1;
        c.counter += 1;
    });
}

/// Zeroes `[start, start + len)`; the host's caches are coherent.
///
/// # Safety
///
/// The range is writable memory that holds no Rust object in use.
pub unsafe fn zero_to_poc(start: usize, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, len) };
}

/// Copies `len` bytes from `src` to `dst`; the host's caches are
/// coherent.
///
/// # Safety
///
/// Both ranges are valid, do not overlap, and `dst` holds no Rust object
/// in use.
pub unsafe fn copy_to_poc(dst: usize, src: usize, len: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
}

/// Nothing to clean: the host's caches are coherent.
pub fn clean_inval_dcache(_start: u64, _len: usize) {}

/// Nothing to invalidate on the host.
pub fn invalidate_icache() {}

/// The fake has no vectors: the handler is not called by anything.
pub fn set_guest_trap_handler(_handler: fn(&mut super::TrapFrame, u64)) {}

/// The guest-facing registers of a trap.
pub mod guest {
    use super::with;

    /// The EL2 controls of one vCPU.
    #[derive(Clone, Copy, Debug)]
    pub struct GuestControls {
        /// VTTBR_EL2.
        pub vttbr: u64,
        /// VTCR_EL2.
        pub vtcr: u64,
        /// VMPIDR_EL2.
        pub vmpidr: u64,
    }

    /// ESR_EL2.
    pub fn esr() -> u64 {
        with(|c| c.esr_el2)
    }

    /// FAR_EL2.
    pub fn far() -> u64 {
        with(|c| c.far_el2)
    }

    /// HPFAR_EL2.
    pub fn hpfar() -> u64 {
        with(|c| c.hpfar_el2)
    }

    /// The guest's VBAR_EL1.
    pub fn vbar() -> u64 {
        with(|c| c.vbar_el1)
    }

    /// Writes the guest's ESR_EL1, FAR_EL1, ELR_EL1 and SPSR_EL1.
    pub fn set_exception_state(esr: u64, far: u64, elr: u64, spsr: u64) {
        with(|c| c.el1_exception = Some([esr, far, elr, spsr]));
    }

    /// Turns both of the guest's timers off.
    pub fn timers_off() {
        with(|c| (c.cntv_ctl, c.cntp_ctl) = (0, 0));
    }

    /// The guest's CNTV_CTL_EL0 (`virtual_timer`) or CNTP_CTL_EL0.
    pub fn timer_ctl(virtual_timer: bool) -> u64 {
        with(|c| {
            if virtual_timer {
                c.cntv_ctl
            } else {
                c.cntp_ctl
            }
        })
    }

    /// The CPU's ID register S3_0_C0_C`crm`_`op2`.
    pub fn id_register(crm: u8, op2: u8) -> u64 {
        with(|c| {
            c.id_regs
                .iter()
                .find(|(at, _)| *at == (crm, op2))
                .map_or(0, |&(_, v)| v)
        })
    }
}

/// The GIC CPU interface and the virtual interface's registers.
pub mod gicv3 {
    use super::with;

    /// ICC_IAR1_EL1: the next of `pending`, or 1023 (spurious).
    pub fn ack() -> u32 {
        with(|c| c.pending.pop_front().unwrap_or(1023))
    }

    /// ICC_EOIR1_EL1.
    pub fn eoi(intid: u32) {
        with(|c| c.eois.push(intid));
    }

    /// ICC_DIR_EL1.
    pub fn deactivate(intid: u32) {
        with(|c| c.deactivated.push(intid));
    }

    /// ICC_SGI1R_EL1.
    pub fn write_sgi1r(v: u64) {
        with(|c| c.sgis.push(v));
    }

    /// Nothing to set up.
    pub fn init_cpu_interface() {}

    /// Implemented list registers.
    pub fn nr_lrs() -> usize {
        with(|c| c.lrs.len())
    }

    /// ICH_LR<i>_EL2.
    pub fn read_lr(i: usize) -> u64 {
        with(|c| {
            c.lr_accesses.0 += 1;
            c.lrs.get(i).copied().unwrap_or(0)
        })
    }

    /// Writes ICH_LR<i>_EL2.
    pub fn write_lr(i: usize, v: u64) {
        with(|c| {
            c.lr_accesses.1 += 1;
            if let Some(lr) = c.lrs.get_mut(i) {
                *lr = v;
            }
        });
    }

    /// ICH_HCR_EL2.
    pub fn write_hcr(v: u64) {
        with(|c| {
            c.lr_accesses.2 += 1;
            c.ich_hcr = v;
        });
    }

    /// ICH_VMCR_EL2.
    pub fn write_vmcr(v: u64) {
        with(|c| c.ich_vmcr = v);
    }
}
