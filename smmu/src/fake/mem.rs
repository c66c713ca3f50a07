//! A page allocator over the host heap, with leak accounting.

use crate::addr::PhysAddr;
use crate::hw::{PageAllocator, PAGE_SIZE};
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Heap-backed [`PageAllocator`]: physical address == host address.
///
/// It checks frees against allocations (a wrong size or a double free
/// panics), can be limited to a number of pages to test allocation failure,
/// and counts what is outstanding so tests can assert that nothing leaked.
#[derive(Debug, Default)]
pub struct FakeMemory {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: BTreeMap<u64, (usize, usize)>,
    limit: Option<usize>,
    total_allocs: usize,
}

impl FakeMemory {
    /// An allocator without a limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// An allocator that fails once `pages` pages are outstanding.
    pub fn with_limit(pages: usize) -> Self {
        let m = Self::default();
        m.set_limit(Some(pages));
        m
    }

    /// Changes the page limit (None: unlimited).
    pub fn set_limit(&self, pages: Option<usize>) {
        self.inner.lock().unwrap().limit = pages;
    }

    /// Pages currently allocated and not freed.
    pub fn pages_in_use(&self) -> usize {
        self.inner
            .lock()
            .unwrap()
            .live
            .values()
            .map(|(p, _)| p)
            .sum()
    }

    /// Number of successful allocations so far.
    pub fn total_allocs(&self) -> usize {
        self.inner.lock().unwrap().total_allocs
    }

    /// Whether `[pa, pa + len)` lies inside one live allocation.
    pub fn contains(&self, pa: PhysAddr, len: usize) -> bool {
        let inner = self.inner.lock().unwrap();
        match inner.live.range(..=pa.0).next_back() {
            Some((&base, &(pages, _))) => pa.0 + len as u64 <= base + (pages * PAGE_SIZE) as u64,
            None => false,
        }
    }
}

// SAFETY: every range handed out is a fresh, zeroed heap allocation of the
// requested size that stays valid until freed, and `virt` is the identity.
unsafe impl PageAllocator for FakeMemory {
    fn alloc_pages(&self, pages: usize, align: usize) -> Option<PhysAddr> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(limit) = inner.limit {
            let used: usize = inner.live.values().map(|(p, _)| p).sum();
            if used + pages > limit {
                return None;
            }
        }
        let layout = Layout::from_size_align(pages * PAGE_SIZE, align.max(PAGE_SIZE)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return None;
        }
        inner.live.insert(ptr as u64, (pages, layout.align()));
        inner.total_allocs += 1;
        Some(PhysAddr(ptr as u64))
    }

    unsafe fn free_pages(&self, pa: PhysAddr, pages: usize) {
        let mut inner = self.inner.lock().unwrap();
        let (n, align) = inner
            .live
            .remove(&pa.0)
            .unwrap_or_else(|| panic!("free of unallocated {pa:?}"));
        assert_eq!(n, pages, "free of {pa:?} with the wrong page count");
        let layout = Layout::from_size_align(n * PAGE_SIZE, align).unwrap();
        // SAFETY: allocated above with this exact layout, removed from `live`
        // so it cannot be freed twice.
        unsafe { dealloc(pa.0 as *mut u8, layout) }
    }

    fn virt(&self, pa: PhysAddr) -> NonNull<u8> {
        NonNull::new(pa.0 as *mut u8).expect("virt of a null address")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::DmaRegion;

    #[test]
    fn alloc_align_limit_and_leak_accounting() {
        let mem = FakeMemory::with_limit(4);
        let a = DmaRegion::alloc(&mem, 8192, 0x4000).unwrap();
        assert!(a.pa().is_aligned(0x4000));
        assert_eq!(a.read(1023), 0);
        a.write(5, 0xdead_beef);
        assert_eq!(a.read(5), 0xdead_beef);
        assert!(DmaRegion::alloc(&mem, 3 * 4096, 4096).is_err());
        assert_eq!(mem.pages_in_use(), 2);
        // SAFETY: nothing uses the region.
        unsafe { a.free(&mem) };
        assert_eq!(mem.pages_in_use(), 0);
    }
}
