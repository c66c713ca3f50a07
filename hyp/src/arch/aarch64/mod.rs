//! AArch64-specific code: boot assembly, exception vectors, the EL2 MMU,
//! timers and PSCI. Compiled only for the bare-metal target.

pub mod exceptions;
pub mod mmu;
pub mod psci;

use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTPCT_EL0, MPIDR_EL1};
use core::arch::global_asm;

global_asm!(include_str!("entry.S"));
global_asm!(include_str!("vectors.S"));

unsafe extern "C" {
    /// Entry point of secondary CPUs (entry.S); x0 = CPU index.
    pub fn secondary_entry();
}

/// Reads the physical counter.
pub fn counter() -> u64 {
    CNTPCT_EL0.get()
}

/// Counter ticks per second.
pub fn counter_freq() -> u64 {
    CNTFRQ_EL0.get().max(1)
}

/// Microseconds since reset.
pub fn uptime_us() -> u64 {
    (counter() as u128 * 1_000_000 / counter_freq() as u128) as u64
}

/// Busy-waits for `us` microseconds.
pub fn delay_us(us: u64) {
    let end = counter() + us * counter_freq() / 1_000_000;
    while counter() < end {
        core::hint::spin_loop();
    }
}

/// This CPU's affinity (MPIDR_EL1 with the non-affinity bits cleared).
pub fn mpidr() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// Data synchronisation barrier for stores, before an MMIO doorbell.
#[inline]
pub fn dsb_st() {
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { core::arch::asm!("dsb st", options(nostack, preserves_flags)) }
}

/// Data synchronisation barrier for loads, after an MMIO read that
/// publishes memory written by a device.
#[inline]
pub fn dsb_ld() {
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { core::arch::asm!("dsb ld", options(nostack, preserves_flags)) }
}

/// Stops this CPU for good.
pub fn halt() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}
