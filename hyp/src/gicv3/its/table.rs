//! Sizes of the tables the hypervisor gives the ITS (IHI 0069 §6.2): the
//! flat device and collection tables behind GITS_BASER<n>, and each
//! device's interrupt translation table (ITT).
//!
//! The device table covers the DeviceIDs the hypervisor will map, not all
//! 2^Devbits: on QEMU's `virt` 16 DeviceID bits with 8-byte entries would be
//! 512 KiB, where bus 0's 256 requester IDs need 2 KiB. Only flat tables are
//! built; a table that would need more than the 256 pages GITS_BASER<n>.Size
//! can describe is refused.

use super::PageSize;
use core::fmt;

/// The most pages a GITS_BASER<n> describes (Size is 8 bits).
pub const MAX_PAGES: u32 = 256;
/// ITT alignment (MAPD ITT_addr keeps address bits \[51:8\]).
pub const ITT_ALIGN: usize = 256;

/// Why a table cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// A table of no IDs, or an ITT of no events.
    Empty,
    /// The IDs to cover need more bits than the ITS implements.
    BeyondHardware {
        /// The highest ID asked for.
        highest: u32,
        /// ID bits the ITS implements.
        id_bits: u32,
    },
    /// A flat table that big needs more than [`MAX_PAGES`] pages.
    TooLarge {
        /// Pages it would need.
        pages: u64,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("a table must cover at least one ID"),
            Self::BeyondHardware { highest, id_bits } => {
                write!(
                    f,
                    "ID {highest:#x} needs more than the ITS's {id_bits} bits"
                )
            }
            Self::TooLarge { pages } => write!(
                f,
                "a flat table of {pages} pages is beyond the {MAX_PAGES} GITS_BASER can describe"
            ),
        }
    }
}

/// A flat table for GITS_BASER<n>.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatTable {
    /// Page size (the table is aligned to it).
    pub page_size: PageSize,
    /// Pages (GITS_BASER<n>.Size + 1).
    pub pages: u32,
    /// IDs it covers: 0..ids (all that fit in its pages).
    pub ids: u64,
}

impl FlatTable {
    /// Bytes to allocate.
    pub fn bytes(&self) -> usize {
        self.pages as usize * self.page_size.bytes()
    }
}

fn check_ids(highest: u32, id_bits: u32) -> Result<(), TableError> {
    if id_bits < 32 && u64::from(highest) >> id_bits != 0 {
        return Err(TableError::BeyondHardware { highest, id_bits });
    }
    Ok(())
}

/// A flat table of `entry_bytes` entries covering IDs 0..=`highest` of an
/// ITS with `id_bits` bits of that kind of ID, in pages of `page_size`.
pub fn flat_table(
    entry_bytes: u32,
    highest: u32,
    id_bits: u32,
    page_size: PageSize,
) -> Result<FlatTable, TableError> {
    if entry_bytes == 0 {
        return Err(TableError::Empty);
    }
    check_ids(highest, id_bits)?;
    let bytes = (u64::from(highest) + 1) * u64::from(entry_bytes);
    let pages = bytes.div_ceil(page_size.bytes() as u64);
    if pages > u64::from(MAX_PAGES) {
        return Err(TableError::TooLarge { pages });
    }
    let pages = pages as u32;
    Ok(FlatTable {
        page_size,
        pages,
        ids: (pages as u64 * page_size.bytes() as u64) / u64::from(entry_bytes),
    })
}

/// A device's interrupt translation table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Itt {
    /// MAPD Size: EventID bits minus one.
    pub size: u8,
    /// Events it covers: 0..events, a power of two, at least 2.
    pub events: u32,
    /// Bytes to allocate, a multiple of [`ITT_ALIGN`].
    pub bytes: usize,
}

/// The ITT for a device that uses EventIDs 0..`events`, on an ITS with
/// `event_id_bits` EventID bits and ITT entries of `entry_bytes`.
pub fn itt(events: u32, event_id_bits: u32, entry_bytes: u32) -> Result<Itt, TableError> {
    if events == 0 || entry_bytes == 0 {
        return Err(TableError::Empty);
    }
    check_ids(events - 1, event_id_bits)?;
    // MAPD Size + 1 is the number of EventID bits; Size = 0 covers two.
    let bits = (32 - (events - 1).leading_zeros()).max(1);
    let covered = 1u64 << bits;
    let bytes = (covered * u64::from(entry_bytes)).next_multiple_of(ITT_ALIGN as u64);
    Ok(Itt {
        size: (bits - 1) as u8,
        events: covered.min(u64::from(u32::MAX)) as u32,
        bytes: bytes as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_table_covers_what_is_mapped_not_devbits() {
        // QEMU: 8-byte device entries, 16 DeviceID bits; bus 0 only.
        let t = flat_table(8, 0xff, 16, PageSize::Size4K).unwrap();
        assert_eq!(t.pages, 1);
        assert_eq!(t.bytes(), 4096);
        assert_eq!(t.ids, 512);
        let t = flat_table(8, 0xff, 16, PageSize::Size64K).unwrap();
        assert_eq!((t.pages, t.ids), (1, 8192));
        // Every DeviceID of 16 bits: 128 pages of 4 KiB.
        let t = flat_table(8, 0xffff, 16, PageSize::Size4K).unwrap();
        assert_eq!((t.pages, t.ids), (128, 65536));
    }

    #[test]
    fn refuses_what_cannot_fit() {
        assert_eq!(
            flat_table(8, 0x1_0000, 16, PageSize::Size4K),
            Err(TableError::BeyondHardware {
                highest: 0x1_0000,
                id_bits: 16
            })
        );
        // 20 DeviceID bits of 8 bytes are 8 MiB: 2048 pages of 4 KiB, 128
        // of 64 KiB.
        assert_eq!(
            flat_table(8, 0xf_ffff, 20, PageSize::Size4K),
            Err(TableError::TooLarge { pages: 2048 })
        );
        assert_eq!(
            flat_table(8, 0xf_ffff, 20, PageSize::Size64K)
                .unwrap()
                .pages,
            128
        );
        assert_eq!(
            flat_table(0, 1, 16, PageSize::Size4K),
            Err(TableError::Empty)
        );
        assert!(flat_table(8, u32::MAX, 32, PageSize::Size64K).is_err());
    }

    #[test]
    fn collection_table() {
        // One collection per CPU, 8-byte entries.
        let t = flat_table(8, 3, 16, PageSize::Size4K).unwrap();
        assert_eq!((t.pages, t.ids), (1, 512));
    }

    #[test]
    fn itt_sizes() {
        // QEMU's 12-byte entries. One event: Size 0 (two entries), 24
        // bytes, one 256-byte unit.
        assert_eq!(
            itt(1, 16, 12),
            Ok(Itt {
                size: 0,
                events: 2,
                bytes: 256
            })
        );
        assert_eq!(itt(2, 16, 12).unwrap().size, 0);
        assert_eq!(
            itt(3, 16, 12).unwrap(),
            Itt {
                size: 1,
                events: 4,
                bytes: 256
            }
        );
        // MSI-X's 2048 vectors: 11 bits, 24 KiB.
        assert_eq!(
            itt(2048, 16, 12).unwrap(),
            Itt {
                size: 10,
                events: 2048,
                bytes: 24576
            }
        );
        assert_eq!(itt(2049, 16, 12).unwrap().events, 4096);
        assert_eq!(
            itt(0x1_0001, 16, 12),
            Err(TableError::BeyondHardware {
                highest: 0x1_0000,
                id_bits: 16
            })
        );
        assert_eq!(itt(0x1_0000, 16, 12).unwrap().size, 15);
        assert_eq!(itt(0, 16, 12), Err(TableError::Empty));
        assert_eq!(itt(u32::MAX, 32, 8).unwrap().size, 31);
    }
}
