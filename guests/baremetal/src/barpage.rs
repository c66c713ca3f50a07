//! `bar_page=VVVV:DDDD`: what else answers in the page of a function's
//! BAR0.
//!
//! A VM is given whole 4 KiB pages, so the page that holds a BAR smaller
//! than a page must hold nothing else: another function's registers there
//! would be this VM's to read and write. The guest finds the function on
//! bus 0 by vendor and device ID, sizes BAR0, checks that the BAR does not
//! answer before memory decode is on (`bar-off-until-enabled`: a function
//! decodes only once its owner wants it to), turns decode on as a driver
//! would, checks that its own BAR answers (`bar-decodes`), then
//! writes every dword of the page outside the BAR and reads each back
//! (`bar-page-alone`): on QEMU's host bridge an address no function decodes
//! reads as all ones and drops writes, so anything else is another
//! function's register.
//!
//! The pure parts (the command-line value, which dwords to probe, judging
//! what they read) are compiled on the host too, for their unit tests.

use core::fmt;

/// The granule a hypervisor maps BARs with.
const PAGE: u64 = 4096;

/// What a read of an address nothing decodes returns.
const NOTHING: u32 = u32::MAX;

/// Parses `VVVV:DDDD`, a hexadecimal vendor and device ID.
pub fn parse_id(s: &str) -> Option<(u16, u16)> {
    let (vendor, device) = s.split_once(':')?;
    let hex = |h: &str| {
        (1..=4)
            .contains(&h.len())
            .then(|| u16::from_str_radix(h, 16).ok())
            .flatten()
    };
    Some((hex(vendor)?, hex(device)?))
}

/// The addresses of the dwords in the pages that hold the `size` bytes at
/// `bar`, outside those bytes.
pub fn outside(bar: u64, size: u64) -> impl Iterator<Item = u64> + Clone {
    let end = bar.saturating_add(size);
    let first = bar & !(PAGE - 1);
    let last = end.div_ceil(PAGE).saturating_mul(PAGE);
    (first..last)
        .step_by(4)
        .filter(move |&a| a < bar || a >= end)
}

/// What the dwords outside a BAR read back after being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageProbe {
    /// Dwords probed.
    pub dwords: u32,
    /// How many of them answered (read other than all ones).
    pub answered: u32,
    /// The first that answered: its offset in its page and what it read.
    pub first: Option<(u64, u32)>,
}

impl PageProbe {
    /// Judges `reads`, (address, value read) pairs.
    pub fn judge(reads: impl Iterator<Item = (u64, u32)>) -> Self {
        let mut probe = PageProbe {
            dwords: 0,
            answered: 0,
            first: None,
        };
        for (addr, value) in reads {
            probe.dwords += 1;
            if value != NOTHING {
                probe.answered += 1;
                probe.first.get_or_insert((addr % PAGE, value));
            }
        }
        probe
    }

    /// Whether nothing answered.
    pub fn alone(&self) -> bool {
        self.answered == 0
    }
}

impl fmt::Display for PageProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first {
            None => write!(
                f,
                "{} dwords of its page outside BAR0 read as all ones: nothing else answers there",
                self.dwords
            ),
            Some((offset, value)) => write!(
                f,
                "{} of {} dwords of its page outside BAR0 answer, the first at page offset {:#x} (reads {:#x}): another function's registers",
                self.answered, self.dwords, offset, value
            ),
        }
    }
}

#[cfg(target_os = "none")]
pub use hw::run;

#[cfg(target_os = "none")]
mod hw {
    //! The configuration and BAR accesses.

    use super::{outside, PageProbe, PAGE};
    use crate::checks::check;
    use crate::edu::{
        bar_address, bar_is_64, bar_size, config_read, config_write, find_device, host_or_report,
        CFG_BAR0, CFG_COMMAND, CMD_MEMORY,
    };
    use crate::mmio;
    use flat_device_tree::Fdt;

    /// What each probed dword is written with: recognisable, never all
    /// ones.
    const PATTERN: u32 = 0x5a5a_0000;

    /// Probes the page of BAR0 of function `vendor`:`device` and reports
    /// the checks; what stops it is a failed check `bar-page-ran`.
    pub fn run(fdt: &Fdt<'_>, vendor: u16, device: u16) {
        let Some(host) = host_or_report(fdt, "bar-page-ran") else {
            return;
        };
        let Some(dev) = find_device(&host, vendor, device) else {
            check(
                "bar-page-ran",
                false,
                format_args!("no function {:04x}:{:04x} on bus 0", vendor, device),
            );
            return;
        };
        let lo = config_read(&host, dev, CFG_BAR0);
        let hi = if bar_is_64(lo) {
            config_read(&host, dev, CFG_BAR0 + 4)
        } else {
            0
        };
        let bar = bar_address(lo, hi);
        config_write(&host, dev, CFG_BAR0, u32::MAX);
        let mask = config_read(&host, dev, CFG_BAR0);
        config_write(&host, dev, CFG_BAR0, lo);
        let size = bar_size(mask).filter(|_| lo & 1 == 0 && bar != 0);
        let Some(size) = size else {
            check(
                "bar-page-ran",
                false,
                format_args!("BAR0 is not a placed memory BAR (reads {:#x})", lo),
            );
            return;
        };
        say!(
            "guest: {:04x}:{:04x} at 00:{:02x}.0 BAR0 {:#x} bytes at {:#x}",
            vendor,
            device,
            dev,
            size,
            bar
        );
        // SAFETY: BAR0's first dword, Device memory (MMU off); reading a
        // register of ours, or nothing while the function does not decode.
        let read_own = || unsafe { mmio::read32(bar) };
        let before = read_own();
        check(
            "bar-off-until-enabled",
            before == u32::MAX,
            format_args!("BAR0 reads {:#x} before memory decode is turned on", before),
        );
        let cmd = config_read(&host, dev, CFG_COMMAND) & 0xffff;
        // Status (the high half) is write-one-to-clear: write zeros there.
        config_write(&host, dev, CFG_COMMAND, cmd | CMD_MEMORY);
        let own = read_own();
        check(
            "bar-decodes",
            own != u32::MAX,
            format_args!("BAR0 reads {:#x} at {:#x}", own, bar),
        );
        for addr in outside(bar, size) {
            // SAFETY: a dword of the page the hypervisor gave us for BAR0,
            // Device memory (MMU off): none of our RAM; what it reaches is
            // what this check is about.
            unsafe { mmio::write32(addr, PATTERN | (addr % PAGE) as u32) };
        }
        let reads = outside(bar, size).map(|addr| {
            // SAFETY: as for the writes above.
            (addr, unsafe { mmio::read32(addr) })
        });
        let probe = PageProbe::judge(reads);
        check("bar-page-alone", probe.alone(), probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id("8086:25ab"), Some((0x8086, 0x25ab)));
        assert_eq!(parse_id("1234:11E8"), Some((0x1234, 0x11e8)));
        assert_eq!(parse_id("8086"), None);
        assert_eq!(parse_id("8086:"), None);
        assert_eq!(parse_id("18086:25ab"), None);
        assert_eq!(parse_id("8086:25ag"), None);
    }

    #[test]
    fn the_dwords_outside_a_bar_in_its_pages() {
        // 16 bytes at the start of a page: the other 1020 dwords.
        let a: Vec<u64> = outside(0x1000_0000, 16).collect();
        assert_eq!(a.len(), 1020);
        assert_eq!(a[0], 0x1000_0010);
        assert_eq!(a[1019], 0x1000_0ffc);
        // In the middle of a page: before and after it.
        let b: Vec<u64> = outside(0x1000_0010, 16).collect();
        assert_eq!(b.len(), 1020);
        assert_eq!(
            b[..5],
            [
                0x1000_0000,
                0x1000_0004,
                0x1000_0008,
                0x1000_000c,
                0x1000_0020
            ]
        );
        // A BAR of whole pages leaves nothing.
        assert_eq!(outside(0x1000_0000, 0x2000).count(), 0);
        assert_eq!(outside(u64::MAX - 0xfff, 0x1000).count(), 0);
    }

    #[test]
    fn judging_a_page() {
        let quiet =
            PageProbe::judge([(0x1000_0010, u32::MAX), (0x1000_0014, u32::MAX)].into_iter());
        assert!(quiet.alone());
        assert_eq!(
            quiet.to_string(),
            "2 dwords of its page outside BAR0 read as all ones: nothing else answers there"
        );
        let reads = [(0x1000_0010, u32::MAX), (0x1000_0014, 0), (0x1000_0018, 7)];
        let shared = PageProbe::judge(reads.into_iter());
        assert!(!shared.alone());
        assert_eq!(shared.first, Some((0x14, 0)));
        assert_eq!(
            shared.to_string(),
            "2 of 3 dwords of its page outside BAR0 answer, the first at page offset 0x14 (reads 0x0): another function's registers"
        );
    }
}
