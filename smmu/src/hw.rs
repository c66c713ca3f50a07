//! The hardware seams: how the library reaches registers and memory.
//!
//! The hypervisor implements these over real MMIO and its identity-mapped
//! page-frame allocator; host tests implement them over RAM (see
//! `crate::fake`). Nothing else in this crate touches hardware.

use crate::addr::PhysAddr;
use core::fmt;
use core::ptr::NonNull;

/// The 4 KiB translation granule and page size used for everything the SMMU
/// reads from memory.
pub const PAGE_SIZE: usize = 4096;

/// Access to one SMMU's register frame at byte offsets (page 0 at 0, page 1
/// at 0x10000).
///
/// Ordering contract, as Linux's `writel`/`readl`: a write is ordered after
/// every earlier normal-memory write of this CPU (so a queue entry or STE
/// written before the doorbell is visible to the SMMU), and a read is ordered
/// before every later normal-memory read (so queue entries the SMMU wrote
/// before updating PROD are seen).
pub trait Mmio {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Reads the 64-bit register at `offset`.
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 64-bit register at `offset`.
    fn write64(&self, offset: usize, value: u64);
    /// Waits about `us` microseconds; used to bound polling loops.
    fn delay_us(&self, us: u32);
}

/// A source of physically contiguous, zeroed memory that both the CPU and the
/// SMMU can access.
///
/// # Safety
///
/// Implementors guarantee that for every range returned by
/// [`alloc_pages`](Self::alloc_pages) and not yet freed, [`virt`](Self::virt)
/// returns a pointer through which the CPU can read and write the whole range
/// as normal memory, and that no other allocation overlaps it.
pub unsafe trait PageAllocator: Sync {
    /// Allocates `pages` contiguous zeroed 4 KiB pages whose physical address
    /// is a multiple of `align` bytes (a power of two, at least 4 KiB).
    fn alloc_pages(&self, pages: usize, align: usize) -> Option<PhysAddr>;

    /// Returns pages to the allocator.
    ///
    /// # Safety
    ///
    /// `pa` and `pages` are exactly what an earlier `alloc_pages` returned and
    /// was asked for, and neither software nor the SMMU uses the range any
    /// more (the SMMU's view was invalidated and synchronised).
    unsafe fn free_pages(&self, pa: PhysAddr, pages: usize);

    /// The CPU's pointer to physical address `pa` of a live allocation.
    fn virt(&self, pa: PhysAddr) -> NonNull<u8>;

    /// Makes the CPU's writes to `[pa, pa + len)` visible to the SMMU. Only a
    /// non-coherent SMMU (IDR0.COHACC = 0) needs work here (clean to PoC).
    fn sync_for_device(&self, _pa: PhysAddr, _len: usize) {}
}

/// Memory could not be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory;

impl fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of memory for SMMU structures")
    }
}

/// An owned, physically contiguous allocation shared with the SMMU, accessed
/// as 64-bit words with volatile loads and stores.
///
/// It is not freed on drop (the allocator is not reachable from here): call
/// [`DmaRegion::free`] once the SMMU no longer uses it.
pub struct DmaRegion {
    pa: PhysAddr,
    va: NonNull<u64>,
    pages: usize,
}

// SAFETY: a DmaRegion owns its memory exclusively (the PageAllocator contract
// guarantees no overlap); moving it between CPUs is like moving a Box.
unsafe impl Send for DmaRegion {}
// SAFETY: shared access only performs volatile word loads and stores, each of
// which is a single-copy-atomic access on the architectures we support.
unsafe impl Sync for DmaRegion {}

impl fmt::Debug for DmaRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaRegion({:#x}, {} pages)", self.pa.0, self.pages)
    }
}

impl DmaRegion {
    /// Allocates at least `bytes` (rounded up to whole pages), aligned to
    /// `align` bytes, zeroed.
    pub fn alloc(
        alloc: &dyn PageAllocator,
        bytes: usize,
        align: usize,
    ) -> Result<Self, OutOfMemory> {
        let pages = bytes.div_ceil(PAGE_SIZE).max(1);
        let align = align.max(PAGE_SIZE);
        let pa = alloc.alloc_pages(pages, align).ok_or(OutOfMemory)?;
        let va = alloc.virt(pa).cast::<u64>();
        Ok(Self { pa, va, pages })
    }

    /// The physical address of the first byte.
    pub fn pa(&self) -> PhysAddr {
        self.pa
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The number of 64-bit words.
    pub fn words(&self) -> usize {
        self.len() / 8
    }

    /// Reads word `index`. Panics if out of bounds (a hypervisor bug).
    pub fn read(&self, index: usize) -> u64 {
        assert!(index < self.words(), "DmaRegion read out of bounds");
        // SAFETY: in bounds of a live allocation (PageAllocator contract),
        // aligned because the region is page aligned.
        unsafe { self.va.as_ptr().add(index).read_volatile() }
    }

    /// Writes word `index`. Panics if out of bounds (a hypervisor bug).
    pub fn write(&self, index: usize, value: u64) {
        assert!(index < self.words(), "DmaRegion write out of bounds");
        // SAFETY: as in `read`.
        unsafe { self.va.as_ptr().add(index).write_volatile(value) }
    }

    /// Reads `out.len()` words starting at word `index`.
    pub fn read_words(&self, index: usize, out: &mut [u64]) {
        for (i, w) in out.iter_mut().enumerate() {
            *w = self.read(index + i);
        }
    }

    /// Writes `words` starting at word `index`.
    pub fn write_words(&self, index: usize, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            self.write(index + i, *w);
        }
    }

    /// Returns the memory to `alloc`.
    ///
    /// # Safety
    ///
    /// `alloc` is the allocator the region came from, and the SMMU no longer
    /// uses the region (every reference to it was removed and invalidated).
    pub unsafe fn free(self, alloc: &dyn PageAllocator) {
        // SAFETY: forwarded from the caller; pa/pages are what alloc returned.
        unsafe { alloc.free_pages(self.pa, self.pages) }
    }
}
