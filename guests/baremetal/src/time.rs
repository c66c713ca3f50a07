//! The guest's clock: the virtual counter (CNTVCT_EL0) at the frequency
//! CNTFRQ_EL0 gives. Every wait of the checks is bounded by it, so a check
//! never hangs; none judges by how fast anything ran.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTVCT_EL0};

/// The counter now, read after an ISB so it is not read early.
pub fn now() -> u64 {
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// `ms` milliseconds in counter ticks.
pub fn ms_to_ticks(ms: u64) -> u64 {
    CNTFRQ_EL0.get() * ms / 1000
}

/// `ticks` counter ticks in milliseconds.
pub fn ticks_to_ms(ticks: u64) -> u64 {
    ticks * 1000 / CNTFRQ_EL0.get()
}

/// Milliseconds since the counter read `start`.
pub fn elapsed_ms(start: u64) -> u64 {
    ticks_to_ms(now().wrapping_sub(start))
}

/// Busy-waits `ms` milliseconds.
pub fn delay_ms(ms: u64) {
    let ticks = ms_to_ticks(ms);
    let start = now();
    while now().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}
