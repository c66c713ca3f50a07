//! The boot bundle: one blob that carries the scenario text and every guest
//! image from the host to the hypervisor. The runner packs it and QEMU
//! loads it as the hypervisor's initrd (`/chosen/linux,initrd-start` and
//! `linux,initrd-end` in the host device tree).
//!
//! Layout, little endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `HYPBNDL1` |
//! | 8 | 4 | entry count |
//! | 12 | 4 | reserved, zero |
//! | 16 + 64·i | 48 | entry i: name, UTF-8, NUL-padded (at most 47 bytes) |
//! | 16 + 64·i + 48 | 8 | entry i: offset of its data from the start of the blob |
//! | 16 + 64·i + 56 | 8 | entry i: size of its data in bytes |
//!
//! Data starts at 4 KiB aligned offsets after the table. Entry names are
//! [`SCENARIO`] for the scenario text and the image paths exactly as the
//! scenario writes them.
//!
//! [`Bundle::parse`] checks every field against the blob, so the hypervisor
//! can trust what it hands out; it never panics on any input.

#[cfg(feature = "std")]
use alloc::vec::Vec;

/// First eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"HYPBNDL1";
/// Bytes before the entry table.
pub const HEADER_SIZE: usize = 16;
/// Bytes per entry.
pub const ENTRY_SIZE: usize = 64;
/// Bytes of an entry's name field.
pub const NAME_FIELD: usize = 48;
/// Longest entry name (the field keeps a terminating NUL).
pub const NAME_MAX: usize = NAME_FIELD - 1;
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
    /// A name that is empty, not NUL-padded, or not UTF-8.
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
    /// A name that does not fit the name field (packing).
    #[error("boot bundle entry name {0:?} is empty or longer than 47 bytes")]
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

/// Decodes entry `index` without checks beyond bounds: `None` if anything
/// is out of the blob or malformed.
fn raw_entry(blob: &[u8], index: usize) -> Option<(&[u8], u64, u64)> {
    let at = HEADER_SIZE.checked_add(index.checked_mul(ENTRY_SIZE)?)?;
    let name = blob.get(at..at.checked_add(NAME_FIELD)?)?;
    Some((
        name,
        le64(blob, at + NAME_FIELD)?,
        le64(blob, at + NAME_FIELD + 8)?,
    ))
}

/// The name in a NUL-padded field, if it is well formed.
fn field_name(field: &[u8]) -> Option<&str> {
    let len = field.iter().position(|&b| b == 0)?;
    let (name, pad) = field.split_at(len);
    if name.is_empty() || pad.iter().any(|&b| b != 0) {
        return None;
    }
    core::str::from_utf8(name).ok()
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
            let (field, offset, size) =
                raw_entry(blob, index).ok_or(BundleError::TableOutOfBounds)?;
            let name = field_name(field).ok_or(BundleError::BadName { index })?;
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
            let earlier = (0..index)
                .filter_map(|i| raw_entry(blob, i))
                .map(|(f, _, _)| f);
            if earlier.into_iter().any(|f| field_name(f) == Some(name)) {
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
            let Some((field, offset, size)) = raw_entry(self.blob, index) else {
                continue;
            };
            let (Some(name), Ok(start), Ok(size)) = (
                field_name(field),
                usize::try_from(offset),
                usize::try_from(size),
            ) else {
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
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut offset = align(HEADER_SIZE + entries.len() * ENTRY_SIZE);
    for (name, data) in entries {
        let mut field = [0u8; NAME_FIELD];
        field[..name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&field);
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        offset = align(offset + data.len());
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
        assert_eq!(&blob[..8], b"HYPBNDL1");
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
        assert_eq!(le64(&blob, HEADER_SIZE + NAME_FIELD), Some(4096));
        assert_eq!(
            le64(&blob, HEADER_SIZE + ENTRY_SIZE + NAME_FIELD),
            Some(8192)
        );
        assert!(Bundle::parse(&pack(&[]).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn pack_refuses_bad_names() {
        let long = "x".repeat(48);
        assert_eq!(
            pack(&[(&long, b"")]),
            Err(BundleError::NameTooLong(long.clone()))
        );
        assert!(pack(&[(&long[..47], b"")]).is_ok());
        assert_eq!(pack(&[("", b"")]), Err(BundleError::NameTooLong("".into())));
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
        let off = HEADER_SIZE + ENTRY_SIZE + NAME_FIELD;
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
        let mut b = good.clone();
        b[HEADER_SIZE + ENTRY_SIZE] = b'a';
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::DuplicateName("a".into())
        );
        let mut b = good.clone();
        b[HEADER_SIZE + 5] = b'z'; // garbage after the NUL
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::BadName { index: 0 }
        );
        let mut b = good.clone();
        b[HEADER_SIZE..HEADER_SIZE + NAME_FIELD].fill(b'n'); // no NUL
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::BadName { index: 0 }
        );
        let mut b = good.clone();
        b[HEADER_SIZE] = 0xff; // not UTF-8
        assert_eq!(
            Bundle::parse(&b).unwrap_err(),
            BundleError::BadName { index: 0 }
        );
    }
}
