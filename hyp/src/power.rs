//! How the run ends: a report, then the machine powers off (a semihosting
//! exit when the runner enabled it, so QEMU's exit status tells whether all
//! went well; else PSCI SYSTEM_OFF to the firmware).

use crate::arch::{self, psci};
use crate::console;
use crate::platform::PsciConduit;
use core::sync::atomic::{AtomicBool, Ordering};
use log::info;
use spin::Once;

static EXIT_SEMIHOSTING: AtomicBool = AtomicBool::new(false);
static PSCI: Once<PsciConduit> = Once::new();

/// Sets how the machine is powered off: by a semihosting exit (the runner
/// says `exit=semihosting` on the command line) and/or the firmware's PSCI.
pub fn configure(semihosting: bool, psci: Option<PsciConduit>) {
    EXIT_SEMIHOSTING.store(semihosting, Ordering::SeqCst);
    if let Some(c) = psci {
        PSCI.call_once(|| c);
    }
}

/// Ends the run: reports, then powers the machine off.
pub fn stop(ok: bool) -> ! {
    if ok {
        info!("hyp: all done, powering off");
    } else {
        console::emergency_write_fmt(format_args!("hyp: stopped after an error, powering off\n"));
    }
    if EXIT_SEMIHOSTING.load(Ordering::SeqCst) {
        arch::semihosting_exit(if ok { 0 } else { 1 });
    }
    if let Some(&conduit) = PSCI.get() {
        let _ = psci::system_off(conduit);
    }
    arch::halt();
}
