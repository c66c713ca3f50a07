//! What a stage-2 change leaves for the caller to invalidate and free.
//!
//! The page-table code cannot issue TLB invalidations itself (it does not know
//! the SMMU, the VMID, or whether the CPU's stage 2 uses the same tables), so
//! `unmap`/`protect` return an [`Invalidation`]: the IPA ranges whose cached
//! translations are stale, and the table pages that were unlinked but must
//! not be reused until the walk caches forgot them.

use crate::addr::Ipa;
use crate::hw::{DmaRegion, PageAllocator};
use alloc::vec::Vec;

/// One IPA range whose cached translations must be invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbRange {
    /// First IPA, aligned to the entry size of `level`.
    pub ipa: Ipa,
    /// Length in bytes, a multiple of the entry size of `level`.
    pub len: u64,
    /// For a leaf range, the level of the block/page descriptors that were
    /// changed (1: 1 GiB blocks, 2: 2 MiB blocks, 3: 4 KiB pages); for a
    /// non-leaf range, the level of the table descriptors that were removed.
    pub level: u8,
    /// `true`: only leaf (last-level) entries changed, a "leaf" invalidation
    /// (TLBI_S2_IPA with Leaf = 1) is enough. `false`: a table was unlinked,
    /// walk caches must be invalidated too (Leaf = 0).
    pub leaf: bool,
}

impl TlbRange {
    /// The TTL hint for TLBI_S2_IPA with the 4 KiB granule (IHI 0070, 4.4.2,
    /// Arm ARM D8.13 "TLB maintenance"): the level of the leaf entries for a
    /// leaf range, `None` (TTL = 0, no hint) for a non-leaf range, whose
    /// cached intermediate entries sit at other levels than any hint could
    /// describe.
    pub fn ttl_hint(&self) -> Option<u8> {
        self.leaf.then_some(self.level)
    }

    /// Whether `ipa` lies inside the range.
    pub fn contains(&self, ipa: Ipa) -> bool {
        ipa.0 >= self.ipa.0 && ipa.0 - self.ipa.0 < self.len
    }

    /// One past the last IPA.
    pub fn end(&self) -> u64 {
        self.ipa.0 + self.len
    }
}

/// The TLB work and the deferred frees produced by `unmap` or `protect`.
///
/// Protocol: issue an invalidation for every range (one CMD_SYNC per batch;
/// batches are built with [`append`](Self::append)), wait for the SYNC, then
/// call [`free_tables`](Self::free_tables). Dropping an `Invalidation` that
/// still holds tables leaks them (never unsafe, never freed too early).
#[must_use = "the ranges must be invalidated and the tables then released"]
#[derive(Debug, Default)]
pub struct Invalidation {
    ranges: Vec<TlbRange>,
    tables: Vec<DmaRegion>,
}

impl Invalidation {
    /// The ranges to invalidate, in the order they were produced; adjacent
    /// ranges of the same level and kind are merged.
    pub fn ranges(&self) -> &[TlbRange] {
        &self.ranges
    }

    /// Nothing to invalidate and nothing to free: the operation changed no
    /// descriptor.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.tables.is_empty()
    }

    /// Whether some range needs a non-leaf (walk cache) invalidation.
    pub fn needs_walk_invalidation(&self) -> bool {
        self.ranges.iter().any(|r| !r.leaf)
    }

    /// Whether `ipa` lies in some range.
    pub fn covers(&self, ipa: Ipa) -> bool {
        self.ranges.iter().any(|r| r.contains(ipa))
    }

    /// The number of unlinked table pages waiting for
    /// [`free_tables`](Self::free_tables).
    pub fn tables_to_free(&self) -> usize {
        self.tables.len()
    }

    /// Adds `other`'s work to this batch.
    pub fn append(&mut self, mut other: Invalidation) {
        for r in other.ranges.drain(..) {
            self.push(r);
        }
        self.tables.append(&mut other.tables);
    }

    /// Returns the unlinked table pages to `alloc`.
    ///
    /// # Safety
    ///
    /// `alloc` is the allocator of the `Stage2` that produced this batch, and
    /// every range of the batch was invalidated in every TLB that may hold
    /// translations from these tables (the SMMU's, with a completed
    /// CMD_SYNC; the CPU's too if it shares the tables).
    pub unsafe fn free_tables(mut self, alloc: &dyn PageAllocator) {
        for t in self.tables.drain(..) {
            // SAFETY: the table was unlinked from the tree by the operation
            // that produced it, and the caller guarantees that no walk cache
            // still refers to it.
            unsafe { t.free(alloc) };
        }
    }

    /// Records a range, merging it into the previous one when contiguous and
    /// of the same level and kind.
    pub(super) fn push(&mut self, r: TlbRange) {
        if let Some(last) = self.ranges.last_mut() {
            if last.level == r.level && last.leaf == r.leaf && last.end() == r.ipa.0 {
                last.len += r.len;
                return;
            }
        }
        self.ranges.push(r);
    }

    /// Keeps an unlinked table until the caller has invalidated.
    pub(super) fn defer_free(&mut self, table: DmaRegion) {
        self.tables.push(table);
    }
}
