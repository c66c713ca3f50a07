//! The boot self-tests, run before any guest when the boot arguments ask
//! for them: `selftest=dma` (`dma`: the SMMU confines an `edu` device's
//! DMA), `selftest=its` (`its`: an LPI travels from the ITS to this CPU),
//! `selftest=msi` (`msi`: an `edu`'s MSI travels through the SMMU's doorbell
//! mapping to the ITS and becomes an LPI on this CPU) and `selftest=vlpi`
//! (`vlpi`: on a GICv4, an `edu`'s MSI becomes a virtual LPI of a vPE, which
//! its redistributor applies the hypervisor's configuration table to).
//!
//! Each check is one log line in the check-line format every guest uses
//! (`guests/README.md`): `check NAME: pass DETAIL` or `check NAME: FAIL
//! DETAIL`, and each run closes with `checks: N run, M failed`.

pub mod dma;
pub mod its;
pub mod msi;
pub mod vlpi;

use alloc::string::String;
use log::{error, info};

/// What a check saw (its detail), or why it failed.
pub type Checked = Result<String, String>;

/// Two checks of one run, the second after the first.
#[derive(Debug)]
pub struct TwoChecks {
    /// The first.
    pub first: Checked,
    /// The second.
    pub second: Checked,
}

impl TwoChecks {
    /// Neither could run, for `why`.
    pub fn setup_failed(why: String) -> Self {
        Self {
            second: Err(alloc::format!("not run: {why}")),
            first: Err(why),
        }
    }

    /// Reports them as `names`, then the run's summary line; returns
    /// whether both passed.
    pub fn report(self, names: [&'static str; 2]) -> bool {
        Tally::default().report([(names[0], self.first), (names[1], self.second)])
    }
}

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

    /// Reports each of `checks` (name, detail or why it failed), then the
    /// run's summary line; returns whether all passed.
    pub fn report(mut self, checks: impl IntoIterator<Item = (&'static str, Checked)>) -> bool {
        let mut ok = true;
        for (name, result) in checks {
            ok &= match result {
                Ok(shown) => self.check(name, &shown, None),
                Err(why) => self.check(name, "", Some(why)),
            };
        }
        self.close();
        ok
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
