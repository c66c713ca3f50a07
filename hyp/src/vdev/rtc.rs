//! A virtual PL031 real-time clock (ARM DDI 0224) per VM.
//!
//! The PL031 is a 32-bit counter of seconds: RTCDR reads it, a write of
//! RTCLR loads it, and RTCMR holds a match value whose reaching sets the
//! raw interrupt status (RTCRIS), masked by RTCIMSC, cleared by RTCICR.
//! Each VM's counts from the machine's wall clock (`crate::wallclock`),
//! the seconds since 1970 as the model is handed them at each access: the
//! model keeps only the VM's offset from it, which a load sets, so a guest
//! that sets its clock moves its own and no other VM's, and the offset
//! outlives a restart of the VM as an RTC outlives a reset. The match is
//! detected when the guest next accesses the RTC, not when it happens:
//! the device tree gives the RTC no interrupt (Linux then offers no alarm),
//! so nothing but the guest's own reads can observe it.

/// Register offsets.
mod reg {
    pub const DR: u64 = 0x000;
    pub const MR: u64 = 0x004;
    pub const LR: u64 = 0x008;
    pub const CR: u64 = 0x00c;
    pub const IMSC: u64 = 0x010;
    pub const RIS: u64 = 0x014;
    pub const MIS: u64 = 0x018;
    pub const ICR: u64 = 0x01c;
    pub const ID: u64 = 0xfe0;
}

/// The one interrupt bit of RTCIMSC, RTCRIS, RTCMIS and RTCICR.
const INT: u32 = 1;

/// PL031 peripheral and PrimeCell IDs at 0xfe0..0x1000 (part 0x031,
/// designer 0x41, revision 0), which the AMBA bus matches to `rtc-pl031`.
const IDS: [u8; 8] = [0x31, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// One VM's PL031.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtualRtc {
    /// What the guest's counter adds to the wall clock's seconds (mod
    /// 2^32, the counter's width).
    offset: u32,
    /// RTCMR.
    mr: u32,
    /// The last value written to RTCLR.
    lr: u32,
    /// RTCIMSC.
    imsc: u32,
    /// RTCRIS.
    ris: u32,
    /// The counter as last seen, to tell when it reaches RTCMR.
    seen: u32,
}

impl VirtualRtc {
    /// A clock that reads the wall clock's seconds (`now`), its match
    /// register 0, its interrupt masked.
    pub fn new(now: u64) -> Self {
        Self {
            seen: now as u32,
            ..Self::default()
        }
    }

    /// The guest's counter at wall-clock second `now`.
    fn counter(&self, now: u64) -> u32 {
        (now as u32).wrapping_add(self.offset)
    }

    /// Brings RTCRIS up to `now`: set if the counter reached RTCMR since
    /// it was last seen (counting up, modulo 2^32).
    fn catch_up(&mut self, now: u64) {
        let counter = self.counter(now);
        let passed = counter.wrapping_sub(self.seen);
        if self.mr.wrapping_sub(self.seen).wrapping_sub(1) < passed {
            self.ris = INT;
        }
        self.seen = counter;
    }

    /// A guest read of `size` bytes at `offset` at wall-clock second `now`.
    /// Only aligned 32-bit reads of registers return anything; the rest
    /// read as zero.
    pub fn read(&mut self, offset: u64, size: u8, now: u64) -> u32 {
        if size != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        self.catch_up(now);
        match offset {
            reg::DR => self.counter(now),
            reg::MR => self.mr,
            reg::LR => self.lr,
            // RTCCR.RTCStart: the counter always runs.
            reg::CR => 1,
            reg::IMSC => self.imsc,
            reg::RIS => self.ris,
            reg::MIS => self.ris & self.imsc,
            o if (reg::ID..0x1000).contains(&o) => u32::from(IDS[((o - reg::ID) / 4) as usize]),
            _ => 0,
        }
    }

    /// A guest write of the low `size` bytes of `value` at `offset` at
    /// wall-clock second `now`. Only aligned 32-bit writes of writable
    /// registers have an effect.
    pub fn write(&mut self, offset: u64, size: u8, value: u64, now: u64) {
        if size != 4 || !offset.is_multiple_of(4) {
            return;
        }
        self.catch_up(now);
        let value = value as u32;
        match offset {
            reg::MR => self.mr = value,
            reg::LR => {
                self.lr = value;
                self.offset = value.wrapping_sub(now as u32);
                self.seen = value;
            }
            reg::IMSC => self.imsc = value & INT,
            reg::ICR => self.ris &= !(value & INT),
            // RTCCR: once started the counter cannot be stopped; RTCDR,
            // RTCRIS, RTCMIS and the IDs are read-only.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_796_000_000;

    #[test]
    fn reads_the_wall_clock_until_the_guest_sets_its_own() {
        let mut r = VirtualRtc::new(NOW);
        assert_eq!(r.read(reg::DR, 4, NOW), NOW as u32);
        assert_eq!(r.read(reg::DR, 4, NOW + 5), NOW as u32 + 5);
        assert_eq!(r.read(reg::CR, 4, NOW), 1, "started");
        // The guest sets its clock an hour back: it keeps counting from
        // there, and RTCLR reads what was loaded.
        r.write(reg::LR, 4, NOW - 3600, NOW + 10);
        assert_eq!(r.read(reg::DR, 4, NOW + 10), (NOW - 3600) as u32);
        assert_eq!(r.read(reg::DR, 4, NOW + 70), (NOW - 3540) as u32);
        assert_eq!(r.read(reg::LR, 4, NOW + 70), (NOW - 3600) as u32);
    }

    #[test]
    fn the_amba_bus_finds_a_pl031() {
        let mut r = VirtualRtc::new(NOW);
        let id = |r: &mut VirtualRtc, base: u64| {
            (0..4).fold(0u32, |v, i| v | (r.read(base + 4 * i, 4, NOW) << (8 * i)))
        };
        assert_eq!(
            id(&mut r, 0xfe0),
            0x0004_1031,
            "rtc-pl031 matches 0x00041031"
        );
        assert_eq!(id(&mut r, 0xff0), 0xb105_f00d, "PrimeCell");
    }

    #[test]
    fn the_match_sets_the_raw_status_once_reached() {
        let mut r = VirtualRtc::new(NOW);
        r.write(reg::MR, 4, NOW + 30, NOW);
        r.write(reg::IMSC, 4, 1, NOW);
        assert_eq!(r.read(reg::RIS, 4, NOW + 29), 0);
        assert_eq!(r.read(reg::RIS, 4, NOW + 31), 1, "passed between accesses");
        assert_eq!(r.read(reg::MIS, 4, NOW + 31), 1);
        r.write(reg::ICR, 4, 1, NOW + 32);
        assert_eq!(
            r.read(reg::RIS, 4, NOW + 40),
            0,
            "cleared, not reached again"
        );
        r.write(reg::IMSC, 4, 0, NOW + 40);
        // Loading the counter to just below the match reaches it again.
        r.write(reg::LR, 4, NOW + 25, NOW + 40);
        assert_eq!(r.read(reg::RIS, 4, NOW + 44), 0);
        assert_eq!(r.read(reg::RIS, 4, NOW + 45), 1);
        assert_eq!(r.read(reg::MIS, 4, NOW + 45), 0, "masked");
    }

    #[test]
    fn odd_accesses_are_ignored_and_read_only_registers_stay() {
        let mut r = VirtualRtc::new(NOW);
        let before = r.clone();
        for (offset, size) in [(reg::LR, 8), (reg::LR, 2), (reg::LR + 1, 4)] {
            r.write(offset, size, 5, NOW);
            assert_eq!(r.read(offset, size, NOW), 0);
        }
        for offset in [reg::DR, reg::CR, reg::RIS, reg::MIS, 0x100, 0xfe0, 0xffc] {
            r.write(offset, 4, 0x1234, NOW);
        }
        assert_eq!(r, before);
        assert_eq!(r.read(reg::DR, 4, NOW), NOW as u32);
    }

    proptest! {
        /// Whatever a guest writes, and whenever: no panic, and the
        /// counter reads what was last loaded plus the seconds since.
        #[test]
        fn the_counter_is_the_last_load_plus_the_time_since(
            accesses in proptest::collection::vec((0u64..0x1000, 0u64..u64::MAX, 0u64..100), 0..40),
        ) {
            let mut r = VirtualRtc::new(NOW);
            let mut now = NOW;
            let mut loaded = (NOW as u32, NOW);
            for (offset, value, dt) in accesses {
                now += dt;
                let offset = offset & !3;
                r.write(offset, 4, value, now);
                if offset == reg::LR {
                    loaded = (value as u32, now);
                }
                let want = loaded.0.wrapping_add((now - loaded.1) as u32);
                prop_assert_eq!(r.read(reg::DR, 4, now), want);
            }
        }
    }
}
