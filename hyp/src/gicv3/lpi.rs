//! Physical LPIs (IHI 0069 §6.1): the INTIDs the hypervisor hands out, the
//! LPI configuration table every redistributor reads (one byte per LPI,
//! GICR_PROPBASER) and the per-redistributor pending tables (one bit per
//! INTID, GICR_PENDBASER).
//!
//! The tables live in hypervisor memory; `drivers::its` allocates them and
//! programs the redistributors with the register values built here.

use super::attrs::{AttrLayout, Cacheability, Shareability};
use super::intid::LPI_BASE;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use smmu::addr::PhysAddr;
use tock_registers::{register_bitfields, LocalRegisterCopy};

/// The fewest INTID bits a GIC with LPIs has (§12.9, GICD_TYPER.IDbits:
/// at least 14 when LPIs are supported, so 8192 LPIs).
pub const MIN_ID_BITS: u32 = 14;

/// The most INTID bits the hypervisor's LPI tables, physical or virtual,
/// cover: 57344 LPIs, a 56 KiB configuration table and 8 KiB pending
/// tables (and Linux's ITS driver uses no more, `ITS_MAX_LPI_NRBITS`).
pub const MAX_ID_BITS: u32 = 16;

/// The fewest INTID bits (at least [`MIN_ID_BITS`]) whose LPIs, 8192 up,
/// number at least `lpis`.
///
/// The LPI tables are sized by this, not by the most the GIC allows: an
/// LPI configuration table and pending tables four or eight times the size
/// cost memory, and an emulated redistributor may walk the whole pending
/// table when an LPI is acknowledged (QEMU's does, a byte at a time: 7 KiB
/// for 16-bit INTIDs, 1 KiB for 14).
pub fn id_bits_for(lpis: u32) -> u32 {
    let mut bits = MIN_ID_BITS;
    while bits < 32 && (1u64 << bits) - u64::from(LPI_BASE) < u64::from(lpis) {
        bits += 1;
    }
    bits
}

/// A physical LPI the hypervisor allocated: its INTID, 8192 or above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lpi(u32);

impl Lpi {
    /// The LPI with INTID `intid`, if it is one (the hypervisor gets its
    /// LPIs from [`LpiAllocator`]).
    #[cfg(test)]
    pub const fn new(intid: u32) -> Option<Self> {
        if intid >= LPI_BASE {
            Some(Self(intid))
        } else {
            None
        }
    }

    /// Its INTID.
    pub const fn intid(self) -> u32 {
        self.0
    }

    /// Its byte in the LPI configuration table (§6.1: the table starts at
    /// INTID 8192).
    pub const fn config_offset(self) -> usize {
        (self.0 - LPI_BASE) as usize
    }
}

impl fmt::Display for Lpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LPI {}", self.0)
    }
}

/// An LPI configuration table entry (§6.1): Priority in bits \[7:2\], bit
/// \[1\] RES1, Enable in bit \[0\]. The low two bits of `priority` are
/// dropped (LPI priorities have six bits).
pub const fn config_byte(priority: u8, enabled: bool) -> u8 {
    (priority & 0xfc) | 0b10 | enabled as u8
}

/// Bytes of the LPI configuration table for INTIDs of `id_bits` bits: one
/// per LPI, 8192 to 2^id_bits - 1.
pub const fn config_table_bytes(id_bits: u32) -> usize {
    (1usize << id_bits) - LPI_BASE as usize
}

/// Bytes of a pending table for INTIDs of `id_bits` bits: one bit per
/// INTID from 0 (the first 1 KiB, INTIDs below 8192, stays zero).
pub const fn pending_table_bytes(id_bits: u32) -> usize {
    (1usize << id_bits) / 8
}

/// Alignment of a pending table (GICR_PENDBASER keeps address bits
/// \[51:16\]).
pub const PENDING_TABLE_ALIGN: usize = 64 * 1024;

register_bitfields![u64,
    /// GICR_PROPBASER (§12.11).
    pub PROPBASER [
        /// IDbits, bits \[4:0\]: INTID bits minus one.
        ID_BITS OFFSET(0) NUMBITS(5) [],
        /// InnerCache, bits \[9:7\].
        INNER_CACHE OFFSET(7) NUMBITS(3) [],
        /// Shareability, bits \[11:10\].
        SHAREABILITY OFFSET(10) NUMBITS(2) [],
        /// Physical_Address, bits \[51:12\].
        PA OFFSET(12) NUMBITS(40) [],
        /// OuterCache, bits \[58:56\].
        OUTER_CACHE OFFSET(56) NUMBITS(3) []
    ],

    /// GICR_PENDBASER (§12.11).
    pub PENDBASER [
        /// InnerCache, bits \[9:7\].
        INNER_CACHE OFFSET(7) NUMBITS(3) [],
        /// Shareability, bits \[11:10\].
        SHAREABILITY OFFSET(10) NUMBITS(2) [],
        /// Physical_Address, bits \[51:16\] (64 KiB aligned).
        PA OFFSET(16) NUMBITS(36) [],
        /// OuterCache, bits \[58:56\].
        OUTER_CACHE OFFSET(56) NUMBITS(3) [],
        /// PTZ, bit \[62\]: the pending table is all zeros (write-only).
        PTZ OFFSET(62) NUMBITS(1) []
    ]
];

/// Where GICR_PROPBASER keeps its memory attributes.
pub const PROPBASER_ATTRS: AttrLayout = AttrLayout {
    inner_shift: 7,
    outer_shift: 56,
    ignore: 0,
};

/// Where GICR_PENDBASER keeps its memory attributes; PTZ reads as zero.
pub const PENDBASER_ATTRS: AttrLayout = AttrLayout {
    inner_shift: 7,
    outer_shift: 56,
    ignore: 1 << 62,
};

/// GICR_PROPBASER for a configuration table at `pa` (4 KiB aligned)
/// covering INTIDs of `id_bits` bits, outer cacheability same as inner.
pub fn propbaser(pa: PhysAddr, id_bits: u32, sh: Shareability, inner: Cacheability) -> u64 {
    let mut r = LocalRegisterCopy::<u64, PROPBASER::Register>::new(0);
    r.write(
        PROPBASER::ID_BITS.val(u64::from(id_bits.saturating_sub(1) & 0x1f))
            + PROPBASER::INNER_CACHE.val(inner.bits())
            + PROPBASER::SHAREABILITY.val(sh.bits())
            + PROPBASER::PA.val(pa.raw() >> 12),
    );
    r.get()
}

/// GICR_PENDBASER for a zeroed pending table at `pa` (64 KiB aligned),
/// with PTZ set.
pub fn pendbaser(pa: PhysAddr, sh: Shareability, inner: Cacheability) -> u64 {
    let mut r = LocalRegisterCopy::<u64, PENDBASER::Register>::new(0);
    r.write(
        PENDBASER::INNER_CACHE.val(inner.bits())
            + PENDBASER::SHAREABILITY.val(sh.bits())
            + PENDBASER::PA.val(pa.raw() >> 16)
            + PENDBASER::PTZ::SET,
    );
    r.get()
}

/// What the LPI allocator refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LpiError {
    /// Every LPI is in use.
    Exhausted,
    /// The LPI is not one this allocator handed out (outside its range, or
    /// already free).
    NotAllocated(Lpi),
}

impl fmt::Display for LpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exhausted => f.write_str("every physical LPI is in use"),
            Self::NotAllocated(lpi) => write!(f, "{lpi} is not allocated"),
        }
    }
}

/// Hands out the physical LPIs 8192..2^id_bits, one at a time.
///
/// Next-fit: a freed LPI is handed out again only after the others, so an
/// interrupt still in flight for a just-freed LPI is unlikely to reach its
/// next user.
#[derive(Debug)]
pub struct LpiAllocator {
    /// One bit per LPI, set when allocated.
    used: Vec<u64>,
    /// Number of LPIs.
    count: u32,
    /// Where the next search starts (an index, not an INTID).
    next: u32,
    /// How many are allocated.
    in_use: u32,
}

impl LpiAllocator {
    /// An allocator of the LPIs with INTIDs of `id_bits` bits (at least
    /// [`MIN_ID_BITS`], at most 24, the largest GICD_TYPER.IDbits plus one).
    pub fn new(id_bits: u32) -> Self {
        let id_bits = id_bits.clamp(MIN_ID_BITS, 24);
        let count = (1u32 << id_bits) - LPI_BASE;
        Self {
            used: vec![0; count.div_ceil(64) as usize],
            count,
            next: 0,
            in_use: 0,
        }
    }

    /// How many LPIs it manages.
    pub fn capacity(&self) -> u32 {
        self.count
    }

    /// How many are allocated.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    fn is_used(&self, index: u32) -> bool {
        self.used[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    fn flip(&mut self, index: u32) {
        self.used[(index / 64) as usize] ^= 1 << (index % 64);
    }

    /// Allocates an LPI.
    pub fn alloc(&mut self) -> Result<Lpi, LpiError> {
        if self.in_use == self.count {
            return Err(LpiError::Exhausted);
        }
        let mut index = self.next;
        loop {
            let word = self.used[(index / 64) as usize];
            if word == !0 {
                // A full word: skip to the next one.
                index = (index / 64 + 1) * 64;
            } else if !self.is_used(index) {
                break;
            } else {
                index += 1;
            }
            if index >= self.count {
                index = 0;
            }
        }
        self.flip(index);
        self.in_use += 1;
        self.next = if index + 1 == self.count {
            0
        } else {
            index + 1
        };
        Ok(Lpi(LPI_BASE + index))
    }

    /// Returns `lpi` to the allocator.
    pub fn free(&mut self, lpi: Lpi) -> Result<(), LpiError> {
        let index = lpi.0 - LPI_BASE;
        if index >= self.count || !self.is_used(index) {
            return Err(LpiError::NotAllocated(lpi));
        }
        self.flip(index);
        self.in_use -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use proptest::prelude::*;

    #[test]
    fn lpi_intids() {
        assert_eq!(Lpi::new(8191), None);
        let lpi = Lpi::new(8192).unwrap();
        assert_eq!(lpi.intid(), 8192);
        assert_eq!(lpi.config_offset(), 0);
        assert_eq!(Lpi::new(8192 + 100).unwrap().config_offset(), 100);
    }

    #[test]
    fn config_byte_layout() {
        // Priority 0xa0 in bits [7:2], RES1 bit 1, Enable bit 0.
        assert_eq!(config_byte(0xa0, true), 0xa3);
        assert_eq!(config_byte(0xa0, false), 0xa2);
        assert_eq!(config_byte(0xff, false), 0xfe);
    }

    #[test]
    fn table_sizes() {
        // 16 INTID bits: 57344 LPIs, 8 KiB of pending bits.
        assert_eq!(config_table_bytes(16), 65536 - 8192);
        assert_eq!(pending_table_bytes(16), 8192);
        assert_eq!(config_table_bytes(MIN_ID_BITS), 8192);
        assert_eq!(pending_table_bytes(MIN_ID_BITS), 2048);
    }

    #[test]
    fn propbaser_fields() {
        let v = propbaser(
            PhysAddr(0x4123_4000),
            16,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        assert_eq!(v & 0x1f, 15, "IDbits [4:0] = bits - 1");
        assert_eq!(v >> 7 & 7, 7, "InnerCache [9:7]");
        assert_eq!(v >> 10 & 3, 1, "Shareability [11:10]");
        assert_eq!(v & 0x000f_ffff_ffff_f000, 0x4123_4000, "PA [51:12]");
        assert_eq!(v >> 56 & 7, 0, "OuterCache [58:56]: same as inner");
    }

    #[test]
    fn pendbaser_fields() {
        let v = pendbaser(
            PhysAddr(0x4123_0000),
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        assert_eq!(v >> 7 & 7, 7, "InnerCache [9:7]");
        assert_eq!(v >> 10 & 3, 1, "Shareability [11:10]");
        assert_eq!(v & 0x000f_ffff_ffff_0000, 0x4123_0000, "PA [51:16]");
        assert_ne!(v & 1 << 62, 0, "PTZ [62]");
        assert_eq!(v & 0xf07f, 0, "RES0 bits [6:0] and [15:12]");
    }

    #[test]
    fn id_bits_cover_the_lpis_asked_for_and_no_more() {
        assert_eq!(id_bits_for(0), MIN_ID_BITS);
        assert_eq!(id_bits_for(65), MIN_ID_BITS);
        assert_eq!(id_bits_for(8192), 14, "8192..16383");
        assert_eq!(id_bits_for(8193), 15);
        assert_eq!(id_bits_for(24576), 15, "8192..32767");
        assert_eq!(id_bits_for(24577), 16);
        assert_eq!(id_bits_for(u32::MAX), 32);
        for lpis in [1, 100, 8192, 9000, 30000, 60000, 1 << 20] {
            let bits = id_bits_for(lpis);
            let count = |b: u32| (1u64 << b) - u64::from(LPI_BASE);
            assert!(
                count(bits) >= u64::from(lpis),
                "{lpis}: {bits} bits too few"
            );
            assert!(
                bits == MIN_ID_BITS || count(bits - 1) < u64::from(lpis),
                "{lpis}: {bits} bits more than needed"
            );
        }
    }

    #[test]
    fn allocates_from_8192_to_the_limit_then_refuses() {
        let mut a = LpiAllocator::new(MIN_ID_BITS);
        assert_eq!(a.capacity(), 8192);
        let mut seen = BTreeSet::new();
        for _ in 0..a.capacity() {
            let lpi = a.alloc().unwrap();
            assert!((8192..16384).contains(&lpi.intid()));
            assert!(seen.insert(lpi));
        }
        assert_eq!(a.alloc(), Err(LpiError::Exhausted));
        let some = Lpi::new(8192 + 77).unwrap();
        a.free(some).unwrap();
        assert_eq!(a.alloc(), Ok(some), "a freed LPI is reused");
        assert_eq!(a.alloc(), Err(LpiError::Exhausted));
    }

    #[test]
    fn free_refuses_what_it_did_not_hand_out() {
        let mut a = LpiAllocator::new(MIN_ID_BITS);
        let lpi = a.alloc().unwrap();
        let beyond = Lpi::new(16384).unwrap();
        assert_eq!(a.free(beyond), Err(LpiError::NotAllocated(beyond)));
        a.free(lpi).unwrap();
        assert_eq!(a.free(lpi), Err(LpiError::NotAllocated(lpi)));
        assert_eq!(a.in_use(), 0);
    }

    #[test]
    fn next_fit_delays_reuse() {
        let mut a = LpiAllocator::new(MIN_ID_BITS);
        let first = a.alloc().unwrap();
        a.free(first).unwrap();
        assert_ne!(a.alloc().unwrap(), first);
    }

    proptest! {
        /// Against a set of allocated INTIDs: no LPI is handed out twice,
        /// all come from the range, exhaustion only when all are in use,
        /// frees succeed exactly for allocated LPIs.
        #[test]
        fn allocator_matches_a_set(ops in proptest::collection::vec((any::<bool>(), 0u32..300), 1..2000)) {
            // 14 bits are 8192 LPIs; use the low 300 of them for frees.
            let mut a = LpiAllocator::new(MIN_ID_BITS);
            let mut model = BTreeSet::new();
            for (alloc, n) in ops {
                if alloc {
                    match a.alloc() {
                        Ok(lpi) => {
                            prop_assert!((8192..16384).contains(&lpi.intid()));
                            prop_assert!(model.insert(lpi.intid()), "{lpi} handed out twice");
                        }
                        Err(e) => {
                            prop_assert_eq!(e, LpiError::Exhausted);
                            prop_assert_eq!(model.len(), 8192);
                        }
                    }
                } else {
                    let lpi = Lpi::new(8192 + n).unwrap();
                    let r = a.free(lpi);
                    prop_assert_eq!(r.is_ok(), model.remove(&lpi.intid()));
                }
                prop_assert_eq!(a.in_use() as usize, model.len());
            }
        }
    }
}
