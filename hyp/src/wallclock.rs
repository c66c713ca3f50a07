//! The machine's wall clock, which every guest's real-time clock counts
//! from (`vdev::rtc`): the seconds since 1970 of the machine's PL031, read
//! once at boot, carried forward by the architected counter, which every
//! CPU reads alike and which does not stop. Without a PL031 there is none,
//! and guests get no RTC.

use spin::Once;

/// The seconds since 1970 at one value of the counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    secs: u64,
    counter: u64,
    freq: u64,
}

impl WallClock {
    /// `secs` seconds since 1970 at counter value `counter`, the counter
    /// running at `freq` Hz.
    pub fn new(secs: u32, counter: u64, freq: u64) -> Self {
        Self {
            secs: u64::from(secs),
            counter,
            freq: freq.max(1),
        }
    }

    /// The seconds since 1970 at counter value `counter` (not before the
    /// reading).
    pub fn at(&self, counter: u64) -> u64 {
        self.secs + counter.saturating_sub(self.counter) / self.freq
    }
}

static CLOCK: Once<WallClock> = Once::new();

/// Sets the machine's wall clock (once; later calls change nothing).
pub fn init(clock: WallClock) {
    CLOCK.call_once(|| clock);
}

/// The seconds since 1970 now, if the machine has a wall clock.
pub fn now() -> Option<u64> {
    CLOCK.get().map(|c| c.at(crate::arch::counter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_whole_seconds_from_the_reading() {
        let c = WallClock::new(1_796_000_000, 5_000, 1_000);
        assert_eq!(c.at(5_000), 1_796_000_000);
        assert_eq!(c.at(5_999), 1_796_000_000);
        assert_eq!(c.at(6_000), 1_796_000_001);
        assert_eq!(c.at(3_605_000), 1_796_003_600);
        assert_eq!(c.at(0), 1_796_000_000, "never before the reading");
        assert_eq!(
            WallClock::new(7, 0, 0).at(3),
            10,
            "a counter without a frequency"
        );
    }
}
