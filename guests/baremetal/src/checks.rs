//! The guest's check lines, in the format every guest uses
//! (`guests/README.md`): `check NAME: pass[ DETAIL]` or
//! `check NAME: FAIL DETAIL` per check, and once at the end of the run
//! `checks: N run, M failed`.

use core::fmt::{self, Display, Write};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

// Only the boot CPU reports checks, and with the MMU off there are no
// exclusives on this memory: plain loads and stores, no read-modify-write.
/// Checks reported so far.
static RUN: AtomicU32 = AtomicU32::new(0);
/// Of which failed.
static FAILED: AtomicU32 = AtomicU32::new(0);
/// Whether the summary line was printed.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether `d` displays as nothing.
fn is_empty(d: &impl Display) -> bool {
    struct Probe(bool);
    impl Write for Probe {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0 |= !s.is_empty();
            Ok(())
        }
    }
    let mut p = Probe(false);
    let _ = write!(p, "{d}");
    !p.0
}

/// Reports check `name` (lowercase words joined by `-`, unique in the run)
/// as passed or failed, with `detail` (may be empty) after the outcome;
/// returns `ok`.
pub fn check(name: impl Display, ok: bool, detail: impl Display) -> bool {
    RUN.store(RUN.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    if !ok {
        FAILED.store(FAILED.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
    let outcome = if ok { "pass" } else { "FAIL" };
    if is_empty(&detail) {
        say!("check {}: {}", name, outcome);
    } else {
        say!("check {}: {} {}", name, outcome, detail);
    }
    ok
}

/// Prints the run's summary line, once: the last thing before power-off.
pub fn close() {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    CLOSED.store(true, Ordering::Relaxed);
    say!(
        "checks: {} run, {} failed",
        RUN.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
}
