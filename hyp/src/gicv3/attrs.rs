//! Memory attributes of the tables the GIC reads and writes by itself: the
//! Shareability and cacheability fields of GITS_BASER<n>, GITS_CBASER,
//! GICR_PROPBASER and GICR_PENDBASER (IHI 0069 §12.19, §12.11), and what a
//! driver does when the GIC does not keep the attributes it was given.
//!
//! Those fields may be fixed by the implementation: a write of Inner
//! Shareable may read back as Non-shareable (the GIC then does not snoop the
//! CPU's caches). The driver then makes the table Non-cacheable and cleans
//! the CPU's data cache to the point of coherency after every write to it,
//! which is what Linux does too.

/// Shareability, bits \[11:10\] of every GIC table base register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shareability {
    /// 0b00: the GIC does not snoop the CPUs' caches.
    NonShareable,
    /// 0b01.
    InnerShareable,
    /// 0b10.
    OuterShareable,
    /// 0b11: reserved (treated as Non-shareable by the driver).
    Reserved,
}

impl Shareability {
    /// Offset of the field in every register that has it.
    pub const SHIFT: u32 = 10;
    /// The field's mask in place.
    pub const MASK: u64 = 0b11 << Self::SHIFT;

    /// The 2-bit encoding.
    pub const fn bits(self) -> u64 {
        match self {
            Self::NonShareable => 0,
            Self::InnerShareable => 1,
            Self::OuterShareable => 2,
            Self::Reserved => 3,
        }
    }

    /// Decodes the 2-bit field (higher bits ignored).
    pub const fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => Self::NonShareable,
            1 => Self::InnerShareable,
            2 => Self::OuterShareable,
            _ => Self::Reserved,
        }
    }

    /// Read from a register value.
    pub const fn of(register: u64) -> Self {
        Self::from_bits(register >> Self::SHIFT)
    }

    /// Whether the GIC snoops the CPUs' caches for the table.
    pub const fn coherent(self) -> bool {
        matches!(self, Self::InnerShareable | Self::OuterShareable)
    }
}

/// The 3-bit cacheability encoding of InnerCache and OuterCache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cacheability {
    /// 0b000: Device-nGnRnE for InnerCache; "same as inner" for OuterCache.
    DeviceOrSameAsInner,
    /// 0b001: Normal Non-cacheable.
    NonCacheable,
    /// 0b010: Normal, Read-allocate, Write-through.
    RaWt,
    /// 0b011: Normal, Read-allocate, Write-back.
    RaWb,
    /// 0b100: Normal, Write-allocate, Write-through.
    WaWt,
    /// 0b101: Normal, Write-allocate, Write-back.
    WaWb,
    /// 0b110: Normal, Read-allocate, Write-allocate, Write-through.
    RaWaWt,
    /// 0b111: Normal, Read-allocate, Write-allocate, Write-back.
    RaWaWb,
}

impl Cacheability {
    /// The 3-bit encoding.
    pub const fn bits(self) -> u64 {
        match self {
            Self::DeviceOrSameAsInner => 0,
            Self::NonCacheable => 1,
            Self::RaWt => 2,
            Self::RaWb => 3,
            Self::WaWt => 4,
            Self::WaWb => 5,
            Self::RaWaWt => 6,
            Self::RaWaWb => 7,
        }
    }

    /// Decodes the 3-bit field (higher bits ignored).
    pub const fn from_bits(bits: u64) -> Self {
        match bits & 7 {
            0 => Self::DeviceOrSameAsInner,
            1 => Self::NonCacheable,
            2 => Self::RaWt,
            3 => Self::RaWb,
            4 => Self::WaWt,
            5 => Self::WaWb,
            6 => Self::RaWaWt,
            _ => Self::RaWaWb,
        }
    }
}

/// Where a register keeps its cacheability fields, and which of its bits
/// do not read back as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrLayout {
    /// Offset of InnerCache.
    pub inner_shift: u32,
    /// Offset of OuterCache.
    pub outer_shift: u32,
    /// Bits that read back differently by design (write-only bits such as
    /// GICR_PENDBASER.PTZ, read-only ones such as GITS_BASER.Type): ignored
    /// when comparing.
    pub ignore: u64,
}

impl AttrLayout {
    fn cache_mask(&self) -> u64 {
        (7 << self.inner_shift) | (7 << self.outer_shift)
    }

    /// `value` with `sh` and the given inner cacheability (outer: same as
    /// inner).
    pub fn with(&self, value: u64, sh: Shareability, inner: Cacheability) -> u64 {
        (value & !(Shareability::MASK | self.cache_mask()))
            | (sh.bits() << Shareability::SHIFT)
            | (inner.bits() << self.inner_shift)
    }
}

/// What a driver does after writing a table base register and reading it
/// back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readback {
    /// The value stuck. With `flush`, the GIC does not snoop the CPUs'
    /// caches: clean every CPU write to the table to the point of coherency.
    Accepted {
        /// The table is Non-shareable.
        flush: bool,
    },
    /// The Shareability did not stick: write this value instead (the
    /// Shareability the GIC reported, and Non-cacheable if that is
    /// Non-shareable) and read back again.
    Retry(u64),
    /// Something other than the memory attributes did not stick (address,
    /// size, validity): the table cannot be used.
    Refused,
}

/// Judges the value `read` back after writing `wrote` to a register laid
/// out as `layout` says.
pub fn readback(wrote: u64, read: u64, layout: AttrLayout) -> Readback {
    let diff = (wrote ^ read) & !layout.ignore;
    if diff & Shareability::MASK != 0 {
        let sh = match Shareability::of(read) {
            Shareability::Reserved => Shareability::NonShareable,
            sh => sh,
        };
        let inner = if sh.coherent() {
            Cacheability::from_bits(wrote >> layout.inner_shift)
        } else {
            Cacheability::NonCacheable
        };
        let next = layout.with(wrote, sh, inner);
        return if next == wrote {
            Readback::Refused
        } else {
            Readback::Retry(next)
        };
    }
    // Cacheability the GIC does not implement may read back as another
    // encoding: what it reports is what it uses, and the data cache
    // maintenance below only depends on Shareability.
    if diff & !layout.cache_mask() != 0 {
        return Readback::Refused;
    }
    Readback::Accepted {
        flush: !Shareability::of(read).coherent(),
    }
}

/// A table base register value the GIC kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The value written last (and read back, but for ignored bits).
    pub value: u64,
    /// The CPU must clean its writes to the table to the point of
    /// coherency (the table is Non-shareable).
    pub flush: bool,
}

/// The register did not keep what it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotKept {
    /// The last value written.
    pub wrote: u64,
    /// What it read back as.
    pub read: u64,
}

/// Writes `value` through `write_read` (which writes a value and returns
/// what the register reads back as), following [`readback`]'s retries: at
/// most three writes.
pub fn negotiate(
    value: u64,
    layout: AttrLayout,
    mut write_read: impl FnMut(u64) -> u64,
) -> Result<Negotiated, NotKept> {
    let mut wrote = value;
    for _ in 0..3 {
        let read = write_read(wrote);
        match readback(wrote, read, layout) {
            Readback::Accepted { flush } => {
                return Ok(Negotiated {
                    value: wrote,
                    flush,
                })
            }
            Readback::Retry(next) => wrote = next,
            Readback::Refused => return Err(NotKept { wrote, read }),
        }
    }
    Err(NotKept {
        wrote,
        read: write_read(wrote),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GITS_BASER's layout: InnerCache \[61:59\], OuterCache \[55:53\].
    const BASER: AttrLayout = AttrLayout {
        inner_shift: 59,
        outer_shift: 53,
        ignore: 0,
    };

    #[test]
    fn encodings_round_trip() {
        for b in 0..4 {
            assert_eq!(Shareability::from_bits(b).bits(), b);
        }
        for b in 0..8 {
            assert_eq!(Cacheability::from_bits(b).bits(), b);
        }
        assert_eq!(Shareability::of(1 << 10), Shareability::InnerShareable);
        assert_eq!(Cacheability::RaWaWb.bits(), 0b111);
    }

    #[test]
    fn what_sticks_is_accepted() {
        let v = BASER.with(
            0x8000_0000_4000_0000,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        assert_eq!(v >> 59 & 7, 7);
        assert_eq!(v >> 10 & 3, 1);
        assert_eq!(readback(v, v, BASER), Readback::Accepted { flush: false });
    }

    #[test]
    fn non_shareable_becomes_non_cacheable_and_flushed() {
        let v = BASER.with(
            0x8000_0000_4000_0000,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        let read = v & !Shareability::MASK;
        let Readback::Retry(next) = readback(v, read, BASER) else {
            panic!("expected a retry");
        };
        assert_eq!(Shareability::of(next), Shareability::NonShareable);
        assert_eq!(
            Cacheability::from_bits(next >> 59),
            Cacheability::NonCacheable
        );
        assert_eq!(next & 0x0000_ffff_ffff_f000, v & 0x0000_ffff_ffff_f000);
        assert_eq!(
            readback(next, next, BASER),
            Readback::Accepted { flush: true }
        );
    }

    #[test]
    fn outer_shareable_only_is_kept_cacheable() {
        let v = BASER.with(
            0x4000_0000,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        let read = BASER.with(v, Shareability::OuterShareable, Cacheability::RaWaWb);
        assert_eq!(readback(v, read, BASER), Readback::Retry(read));
    }

    #[test]
    fn other_bits_that_do_not_stick_refuse() {
        let v = BASER.with(
            0x8000_0000_4000_0000,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        assert_eq!(readback(v, v ^ 0x1000, BASER), Readback::Refused);
        assert_eq!(readback(v, v & !(1 << 63), BASER), Readback::Refused);
        // Ignored bits may differ (GICR_PENDBASER.PTZ reads as zero).
        let pendbaser = AttrLayout {
            inner_shift: 7,
            outer_shift: 56,
            ignore: 1 << 62,
        };
        let w = pendbaser.with(
            0x4001_0000 | 1 << 62,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        assert_eq!(w >> 7 & 7, 7);
        assert_eq!(
            readback(w, w & !(1 << 62), pendbaser),
            Readback::Accepted { flush: false }
        );
        assert_eq!(readback(w, w ^ 0x1_0000, pendbaser), Readback::Refused);
    }

    #[test]
    fn negotiation_against_fixed_registers() {
        let v = BASER.with(
            0x8000_0000_4000_0000,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        // A register that keeps everything.
        assert_eq!(
            negotiate(v, BASER, |w| w),
            Ok(Negotiated {
                value: v,
                flush: false
            })
        );
        // One whose Shareability is fixed at Non-shareable (and cacheability
        // at whatever is written): two writes, the second Non-cacheable.
        let mut writes = Vec::new();
        let got = negotiate(v, BASER, |w| {
            writes.push(w);
            w & !Shareability::MASK
        })
        .unwrap();
        assert!(got.flush);
        assert_eq!(writes.len(), 2);
        assert_eq!(
            Cacheability::from_bits(got.value >> 59),
            Cacheability::NonCacheable
        );
        // One that drops the address: refused after one write.
        assert_eq!(
            negotiate(v, BASER, |w| w & !0xf000_0000),
            Err(NotKept {
                wrote: v,
                read: v & !0xf000_0000
            })
        );
        // One that flips its Shareability on every write: bounded.
        let mut n = 0;
        let r = negotiate(v, BASER, |w| {
            n += 1;
            w ^ (0b11 << 10)
        });
        assert!(r.is_err());
        assert!(n <= 4, "{n} writes");
    }

    #[test]
    fn a_retry_that_changes_nothing_refuses() {
        // Non-shareable and Non-cacheable already, yet Shareability differs:
        // the register reports Inner but we asked for Non-shareable.
        let v = BASER.with(
            0x4000_0000,
            Shareability::NonShareable,
            Cacheability::NonCacheable,
        );
        let read = BASER.with(v, Shareability::InnerShareable, Cacheability::NonCacheable);
        assert_eq!(readback(v, read, BASER), Readback::Retry(read));
        let reserved = v | Shareability::MASK;
        assert_eq!(readback(v, reserved, BASER), Readback::Refused);
    }
}
