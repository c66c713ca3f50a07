//! `reboot=N`: the guest resets its VM (PSCI SYSTEM_RESET) until it has
//! restarted N times, and checks in every incarnation after the first that
//! nothing of the previous one survived in its memory.
//!
//! The VM's RAM is scrubbed at a restart, so the guest cannot count its
//! boots itself: the hypervisor's counters page says how often the VM
//! restarted (`smmuhyp,vm-counters`, the word at +0x20). Incarnation K
//! (from 0):
//!
//! 1. for K >= 1, check `restart-K-memory-scrubbed`: every byte of its free
//!    RAM (from the end of its image to the device tree) reads zero, where
//!    incarnation K - 1 wrote a pattern;
//! 2. for K < N, fills its free RAM with a pattern naming K, closes its
//!    checks and resets the VM;
//! 3. for K = N, check `restarts-counted`: the counter says N; then the run
//!    ends as every run does (checks closed, SYSTEM_OFF).

use crate::checks::{self, check};
use crate::mmio;
use flat_device_tree::Fdt;

/// The counters page's word: restarts so far.
const RESTARTS: u64 = 0x20;

unsafe extern "C" {
    /// The end of the guest's image, its stack included (`guest.ld`).
    static __image_end: u8;
}

/// The pattern incarnation `k` writes at `addr`.
fn pattern(k: u64, addr: u64) -> u64 {
    0x5eed_0000_0000_0000 | (k << 40) | (addr & 0xff_ffff_ffff)
}

/// Runs incarnation K's part; returns only when the run is to end as
/// usual (K = N, or nothing to go on with). `dtb` is where the device tree
/// lies, the end of the free RAM.
pub fn run(fdt: &Fdt<'_>, dtb: u64, n: u64) {
    let Some(counters) = fdt
        .find_compatible(&["smmuhyp,vm-counters"])
        .and_then(|node| node.reg().next())
        .map(|r| r.starting_address as u64)
    else {
        check(
            "restarts-counted",
            false,
            "no counters page (smmuhyp,vm-counters) in the device tree",
        );
        return;
    };
    // SAFETY: a 64-bit register of the counters page our device tree
    // names; Device memory, MMU off.
    let k = unsafe { mmio::read64(counters + RESTARTS) };
    // Only the symbol's address is used.
    let start = core::ptr::addr_of!(__image_end) as u64;
    let end = dtb & !0xfff;
    say!(
        "guest: incarnation {} of {}, free RAM {:#x}..{:#x}",
        k,
        n + 1,
        start,
        end
    );
    if k >= 1 {
        let mut first = None;
        for addr in (start..end).step_by(8) {
            // SAFETY: an aligned doubleword of our RAM between the end of
            // our image and the device tree, which nothing of ours uses.
            let v = unsafe { (addr as *const u64).read_volatile() };
            if v != 0 {
                first = Some((addr, v));
                break;
            }
        }
        let name = format_args!("restart-{k}-memory-scrubbed");
        match first {
            None => check(
                name,
                true,
                format_args!("{} KiB all zero", (end - start) >> 10),
            ),
            Some((addr, v)) => check(name, false, format_args!("{v:#x} at {addr:#x}")),
        };
    }
    if k >= n {
        check(
            "restarts-counted",
            k == n,
            format_args!("{k} restarts, {n} asked"),
        );
        return;
    }
    for addr in (start..end).step_by(8) {
        // SAFETY: as above; the pattern is for the next incarnation to
        // look for.
        unsafe { (addr as *mut u64).write_volatile(pattern(k, addr)) };
    }
    say!(
        "guest: free RAM filled, resetting (restart {} of {})",
        k + 1,
        n
    );
    checks::close();
    let result = crate::psci_system_reset();
    check(
        "system-reset-returned",
        false,
        format_args!("SYSTEM_RESET returned {result:?}"),
    );
}
