//! PCI function addresses as scenarios write them (`"00:02.0"`).

use core::fmt;

/// A PCI function on segment 0: bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddr {
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl PciAddr {
    /// Parses `BB:DD.F` or `0000:BB:DD.F` (hexadecimal, as `lspci` prints).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix("0000:").unwrap_or(s);
        let (bus, rest) = s.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        let hex = |t: &str, max_len: usize| {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                None
            } else {
                u8::from_str_radix(t, 16).ok()
            }
        };
        let addr = Self {
            bus: hex(bus, 2)?,
            device: hex(device, 2)?,
            function: hex(function, 1)?,
        };
        (addr.device < 32 && addr.function < 8).then_some(addr)
    }

    /// The routing ID (`bus << 8 | device << 3 | function`), which is also the
    /// SMMU StreamID on QEMU's `virt`.
    pub fn rid(&self) -> u16 {
        u16::from(self.bus) << 8 | u16::from(self.device) << 3 | u16::from(self.function)
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_lspci_forms() {
        let a = PciAddr::parse("00:02.0").unwrap();
        assert_eq!((a.bus, a.device, a.function), (0, 2, 0));
        assert_eq!(PciAddr::parse("0000:00:02.0"), Some(a));
        assert_eq!(PciAddr::parse("0:2.0"), Some(a));
        let b = PciAddr::parse("1f:1f.7").unwrap();
        assert_eq!(b.to_string(), "1f:1f.7");
        assert_eq!(b.rid(), 0x1fff);
        for bad in [
            "",
            "00:02",
            "00:20.0",
            "00:02.8",
            "100:00.0",
            "0001:00:02.0",
            "x0:02.0",
            "00:02.0 ",
        ] {
            assert_eq!(PciAddr::parse(bad), None, "{bad:?}");
        }
    }
}
