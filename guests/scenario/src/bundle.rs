//! The boot bundle: one blob that carries the scenario text and every guest
//! image from the host to the hypervisor. The runner packs it and QEMU
//! loads it as the hypervisor's initrd (`/chosen/linux,initrd-start` and
//! `linux,initrd-end` in the host device tree).
//!
//! Layout, little endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `HYPBNDL2` |
//! | 8 | 4 | entry count |
//! | 12 | 4 | reserved, zero |
//! | 16 + 64·i | 8 | entry i: offset of its name from the start of the blob |
//! | 16 + 64·i + 8 | 8 | entry i: length of its name in bytes (1 to [`NAME_MAX`]) |
//! | 16 + 64·i + 16 | 32 | entry i: reserved, zero |
//! | 16 + 64·i + 48 | 8 | entry i: offset of its data from the start of the blob |
//! | 16 + 64·i + 56 | 8 | entry i: size of its data in bytes |
//!
//! The names (UTF-8, without NULs) follow the table; data starts at 4 KiB
//! aligned offsets after them. Entry names are [`SCENARIO`] for the
//! scenario text and the image paths exactly as the scenario writes them.
//!
//! [`Bundle::parse`] checks every field against the blob, so the hypervisor
//! can trust what it hands out; it never panics on any input.

#[cfg(feature = "std")]
use alloc::vec::Vec;

/// First eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"HYPBNDL2";
/// Bytes before the entry table.
pub const HEADER_SIZE: usize = 16;
/// Bytes per entry.
pub const ENTRY_SIZE: usize = 64;
/// Where an entry's data offset and size start, after its name offset,
/// name length and reserved bytes.
const DATA_FIELDS: usize = 48;
/// Longest entry name in bytes (as long as a Linux path may be).
pub const NAME_MAX: usize = 4095;
/// Alignment of every entry's data.
pub const DATA_ALIGN: usize = 4096;
/// Most entries in a bundle: a scenario and two images per VM, with room.
pub const MAX_ENTRIES: usize = 256;
/// Name of the scenario text entry.
pub const SCENARIO: &str = "scenario";

/// Why a blob is not a usable bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Shorter than the header.
    #[error("boot bundle is {len} bytes, shorter than its header")]
    TooShort {
        /// Blob length.
        len: usize,
    },
    /// Does not start with [`MAGIC`].
    #[error("not a boot bundle (bad magic)")]
    BadMagic,
    /// More entries than [`MAX_ENTRIES`].
    #[error("boot bundle has {count} entries, at most {max} are allowed")]
    TooManyEntries {
        /// Entries claimed or given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The entry table runs past the end of the blob.
    #[error("boot bundle entry table runs past the end of the blob")]
    TableOutOfBounds,
    /// A name that is empty, too long, outside the blob, not UTF-8 or
    /// holding a NUL, or an entry whose reserved bytes are not zero.
    #[error("boot bundle entry {index} has a bad name")]
    BadName {
        /// Entry index.
        index: usize,
    },
    /// Data not aligned to [`DATA_ALIGN`] or inside the header or table.
    #[error("boot bundle entry {index} data at {offset:#x} is misplaced")]
    Misplaced {
        /// Entry index.
        index: usize,
        /// Claimed offset.
        offset: u64,
    },
    /// Data running past the end of the blob.
    #[error("boot bundle entry {index} ({offset:#x}, {size} bytes) runs past the end of the blob ({len} bytes)")]
    OutOfBounds {
        /// Entry index.
        index: usize,
        /// Claimed offset.
        offset: u64,
        /// Claimed size.
        size: u64,
        /// Blob length.
        len: usize,
    },
    /// Two entries with one name.
    #[error("boot bundle has two entries named {0:?}")]
    DuplicateName(alloc::string::String),
    /// A name that is empty, longer than [`NAME_MAX`] or holds a NUL
    /// (packing).
    #[error("boot bundle entry name {0:?} is empty, holds a NUL or is longer than 4095 bytes")]
    NameTooLong(alloc::string::String),
}

/// A parsed bundle borrowing the blob. Every entry was checked by
/// [`Bundle::parse`].
#[derive(Debug, Clone, Copy)]
pub struct Bundle<'a> {
    blob: &'a [u8],
    count: usize,
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    let bytes = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Decodes entry `index` without checks beyond bounds: its name (`None`
/// when malformed), data offset and size; `None` if the entry is out of the
/// blob.
fn raw_entry(blob: &[u8], index: usize) -> Option<(Option<&str>, u64, u64)> {
    let at = HEADER_SIZE.checked_add(index.checked_mul(ENTRY_SIZE)?)?;
    let entry = blob.get(at..at.checked_add(ENTRY_SIZE)?)?;
    Some((
        entry_name(blob, entry),
        le64(entry, DATA_FIELDS)?,
        le64(entry, DATA_FIELDS + 8)?,
    ))
}

/// The name entry `entry` points at, if it is well formed: inside the blob,
/// 1 to [`NAME_MAX`] bytes of UTF-8 without NULs, with the entry's reserved
/// bytes zero.
fn entry_name<'a>(blob: &'a [u8], entry: &[u8]) -> Option<&'a str> {
    let offset = usize::try_from(le64(entry, 0)?).ok()?;
    let len = usize::try_from(le64(entry, 8)?).ok()?;
    if !(1..=NAME_MAX).contains(&len) || entry.get(16..DATA_FIELDS)?.iter().any(|&b| b != 0) {
        return None;
    }
    let name = core::str::from_utf8(blob.get(offset..offset.checked_add(len)?)?).ok()?;
    (!name.contains('\0')).then_some(name)
}

impl<'a> Bundle<'a> {
    /// Checks `blob` and returns a view of it.
    pub fn parse(blob: &'a [u8]) -> Result<Self, BundleError> {
        if blob.len() < HEADER_SIZE {
            return Err(BundleError::TooShort { len: blob.len() });
        }
        if blob.get(..8) != Some(&MAGIC[..]) {
            return Err(BundleError::BadMagic);
        }
        let count = le32(blob, 8).ok_or(BundleError::TooShort { len: blob.len() })? as usize;
        if count > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries {
                count,
                max: MAX_ENTRIES,
            });
        }
        let table_end = HEADER_SIZE + count * ENTRY_SIZE;
        if table_end > blob.len() {
            return Err(BundleError::TableOutOfBounds);
        }
        for index in 0..count {
            let (name, offset, size) =
                raw_entry(blob, index).ok_or(BundleError::TableOutOfBounds)?;
            let name = name.ok_or(BundleError::BadName { index })?;
            if !offset.is_multiple_of(DATA_ALIGN as u64) || offset < table_end as u64 {
                return Err(BundleError::Misplaced { index, offset });
            }
            if offset
                .checked_add(size)
                .is_none_or(|end| end > blob.len() as u64)
            {
                return Err(BundleError::OutOfBounds {
                    index,
                    offset,
                    size,
                    len: blob.len(),
                });
            }
            let mut earlier = (0..index).filter_map(|i| raw_entry(blob, i));
            if earlier.any(|(n, _, _)| n == Some(name)) {
                return Err(BundleError::DuplicateName(name.into()));
            }
        }
        Ok(Self { blob, count })
    }

    /// The data of the entry called `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|&(n, _)| n == name).map(|(_, d)| d)
    }

    /// The scenario text, if present and UTF-8.
    pub fn scenario(&self) -> Option<&'a str> {
        core::str::from_utf8(self.get(SCENARIO)?).ok()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `(name, data)` of every entry, in table order.
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            blob: self.blob,
            next: 0,
            count: self.count,
        }
    }
}

impl<'a> IntoIterator for &Bundle<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over a bundle's entries.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    blob: &'a [u8],
    next: usize,
    count: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.count {
            let index = self.next;
            self.next += 1;
            // Checked by `parse`; a malformed entry is skipped, never a panic.
            let Some((name, offset, size)) = raw_entry(self.blob, index) else {
                continue;
            };
            let (Some(name), Ok(start), Ok(size)) =
                (name, usize::try_from(offset), usize::try_from(size))
            else {
                continue;
            };
            if let Some(data) = start
                .checked_add(size)
                .and_then(|end| self.blob.get(start..end))
            {
                return Some((name, data));
            }
        }
        None
    }
}

/// Packs `(name, data)` entries into a bundle, in the given order.
#[cfg(feature = "std")]
pub fn pack(entries: &[(&str, &[u8])]) -> Result<Vec<u8>, BundleError> {
    if entries.len() > MAX_ENTRIES {
        return Err(BundleError::TooManyEntries {
            count: entries.len(),
            max: MAX_ENTRIES,
        });
    }
    for (i, (name, _)) in entries.iter().enumerate() {
        if name.is_empty() || name.len() > NAME_MAX || name.contains('\0') {
            return Err(BundleError::NameTooLong((*name).into()));
        }
        if entries[..i].iter().any(|(n, _)| n == name) {
            return Err(BundleError::DuplicateName((*name).into()));
        }
    }
    let align = |n: usize| n.next_multiple_of(DATA_ALIGN);
    let table_end = HEADER_SIZE + entries.len() * ENTRY_SIZE;
    let names_len: usize = entries.iter().map(|(n, _)| n.len()).sum();
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut name_at = table_end;
    let mut offset = align(table_end + names_len);
    for (name, data) in entries {
        out.extend_from_slice(&(name_at as u64).to_le_bytes());
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(&[0u8; DATA_FIELDS - 16]);
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        name_at += name.len();
        offset = align(offset + data.len());
    }
    for (name, _) in entries {
        out.extend_from_slice(name.as_bytes());
    }
    for (_, data) in entries {
        out.resize(align(out.len()), 0);
        out.extend_from_slice(data);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn round_trip() {
        let image = vec![0xa5u8; 5000];
        let blob = pack(&[
            ("scenario", b"[machine]\n"),
            ("target/k", &image),
            ("empty", b""),
        ])
        .unwrap();
        assert_eq!(&blob[..8], b"HYPBNDL2");
        assert_eq!(u32::from_le_bytes(blob[8..12].try_into().unwrap()), 3);
        let b = Bundle::parse(&blob).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.scenario(), Some("[machine]\n"));
        assert_eq!(b.get("target/k"), Some(&image[..]));
        assert_eq!(b.get("empty"), Some(&[][..]));
        assert_eq!(b.get("target"), None);
        let names: Vec<&str> = b.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["scenario", "target/k", "empty"]);
        // Data is 4 KiB aligned: the first entry starts right after the table page.
        assert_eq!(le64(&blob, HEADER_SIZE + DATA_FIELDS), Some(4096));
        assert_eq!(
            le64(&blob, HEADER_SIZE + ENTRY_SIZE + DATA_FIELDS),
            Some(8192)
        );
        assert!(Bundle::parse(&pack(&[]).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn pack_refuses_bad_names() {
        // Names as long as a path may be: the directory of a deep checkout.
        let long = "d/".repeat(2047) + "k";
        assert_eq!(long.len(), NAME_MAX);
        let blob = pack(&[(&long, b"kernel")]).unwrap();
        assert_eq!(
            Bundle::parse(&blob).unwrap().get(&long),
            Some(&b"kernel"[..])
        );
        let longer = long.clone() + "x";
        assert_eq!(
            pack(&[(&longer, b"")]),
            Err(BundleError::NameTooLong(longer.clone()))
        );
        assert_eq!(pack(&[("", b"")]), Err(BundleError::NameTooLong("".into())));
        assert_eq!(
            pack(&[("a\0b", b"")]),
            Err(BundleError::NameTooLong("a\0b".into()))
        );
        assert_eq!(
            pack(&[("a", b""), ("a", b"")]),
            Err(BundleError::DuplicateName("a".into()))
        );
    }

    fn set64(blob: &mut [u8], at: usize, v: u64) {
        blob[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn hostile_headers_are_refused() {
        let good = pack(&[("a", b"hello"), ("b", b"world")]).unwrap();
        assert_eq!(
            Bundle::parse(&good[..10]).unwrap_err(),
            BundleError::TooShort { len: 10 }
        );
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Bundle::parse(&b).unwrap_err(), BundleError::BadMagic);
        let mut b = good.clone();
        b[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::TooManyEntries {
                count: 1000,
                max: 256
            }
        );
        let mut b = good[..4096].to_vec();
        b[8..12].copy_from_slice(&200u32.to_le_bytes());
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::TableOutOfBounds
        );
        let off = HEADER_SIZE + ENTRY_SIZE + DATA_FIELDS;
        let mut b = good.clone();
        set64(&mut b, off, u64::MAX - 4095);
        assert!(matches!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::OutOfBounds { index: 1, .. }
        ));
        let mut b = good.clone();
        set64(&mut b, off + 8, u64::MAX);
        assert!(matches!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::OutOfBounds { index: 1, .. }
        ));
        let mut b = good.clone();
        set64(&mut b, off, 4097);
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::Misplaced {
                index: 1,
                offset: 4097
            }
        );
        let mut b = good.clone();
        set64(&mut b, off, 0);
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::Misplaced {
                index: 1,
                offset: 0
            }
        );
        // Entry 1's name points at entry 0's: a duplicate.
        let mut b = good.clone();
        let first_name = le64(&good, HEADER_SIZE).unwrap();
        set64(&mut b, HEADER_SIZE + ENTRY_SIZE, first_name);
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::DuplicateName("a".into())
        );
        for (field, value) in [
            (0, u64::MAX),          // name offset outside the blob
            (0, good.len() as u64), // name runs past the end
            (8, 0),                 // empty name
            (8, NAME_MAX as u64 + 1),
            (8, u64::MAX),
            (16, 1), // reserved bytes not zero
            (40, 1 << 63),
        ] {
            let mut b = good.clone();
            set64(&mut b, HEADER_SIZE + field, value);
            assert_eq!(
                Bundle::parse(&b).unwrap_err(),
                BundleError::BadName { index: 0 },
                "field {field} = {value:#x}"
            );
        }
        // A name holding a NUL, or not UTF-8.
        for byte in [0u8, 0xff] {
            let mut b = good.clone();
            b[first_name as usize] = byte;
            assert_eq!(
                Bundle::parse(&b).unwrap_err(),
                BundleError::BadName { index: 0 }
            );
        }
    }
}
