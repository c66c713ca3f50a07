//! The boot self-tests, run before any guest when the boot arguments ask
//! for them: `selftest=dma` (`dma`: the SMMU confines an `edu` device's
//! DMA), `selftest=its` (`its`: an LPI travels from the ITS to this CPU) and
//! `selftest=msi` (`msi`: an `edu`'s MSI travels through the SMMU's doorbell
//! mapping to the ITS and becomes an LPI on this CPU).
//!
//! Each check is one log line in the check-line format every guest uses
//! (`guests/README.md`): `check NAME: pass DETAIL` or `check NAME: FAIL
//! DETAIL`, and each run closes with `checks: N run, M failed`.

pub mod dma;
pub mod its;
pub mod msi;

use alloc::string::String;
use log::{error, info};

/// Counts a run's checks and prints their lines.
#[derive(Debug, Default)]
pub struct Tally {
    run: u32,
    failed: u32,
}

impl Tally {
    /// Reports check `name` (lowercase words joined by `-`): passed with
    /// `shown` as its detail when `failure` is None, else failed with the
    /// failure as its detail. Returns whether it passed.
    pub fn check(&mut self, name: &str, shown: &str, failure: Option<String>) -> bool {
        self.run += 1;
        match failure {
            None => {
                info!("check {name}: pass {shown}");
                true
            }
            Some(why) => {
                self.failed += 1;
                error!("check {name}: FAIL {why}");
                false
            }
        }
    }

    /// Prints the run's summary line.
    pub fn close(self) {
        if self.failed == 0 {
            info!("checks: {} run, 0 failed", self.run);
        } else {
            error!("checks: {} run, {} failed", self.run, self.failed);
        }
    }
}
