//! Memory of the hypervisor: the heap, the page-frame allocator and the
//! [`smmu::hw::PageAllocator`] the SMMU code uses.
//!
//! Physical RAM is identity-mapped at EL2, so a frame's physical address is
//! also the address the hypervisor uses to touch it. Allocations are
//! accounted per user so the boot report can show the footprint.

use alloc::collections::BTreeMap;
use core::alloc::Layout;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use smmu::addr::PhysAddr;
use smmu::hw::{PageAllocator, PAGE_SIZE};
use spin::Mutex;

/// Removes `holes` from `ranges` (all page-aligned half-open ranges).
pub fn subtract(ranges: &[Range<u64>], holes: &[Range<u64>]) -> alloc::vec::Vec<Range<u64>> {
    let mut out = alloc::vec::Vec::from(ranges);
    for hole in holes {
        out = out
            .into_iter()
            .flat_map(|r| {
                let below = r.start..r.end.min(hole.start);
                let above = r.start.max(hole.end)..r.end;
                [below, above]
            })
            .filter(|r| r.start < r.end)
            .collect();
    }
    out
}

/// Zeroes `[pa, pa + len)` (page aligned), with `DC ZVA` where the CPU
/// allows it: a whole cache block per instruction, much faster than stores
/// (guest RAM is zeroed before a guest gets it, so nothing leaks into it).
///
/// # Safety
///
/// The range is identity-mapped Normal memory that nothing else uses.
unsafe fn zero(pa: u64, len: usize) {
    #[cfg(target_os = "none")]
    {
        // SAFETY: forwarded from the caller; the range is page aligned.
        if unsafe { crate::arch::zero_by_blocks(pa as usize, len, PAGE_SIZE) } {
            return;
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { core::ptr::write_bytes(pa as *mut u8, 0, len) };
}

/// The page-frame allocator: a buddy allocator over free RAM.
pub struct Frames {
    inner: Mutex<FramesInner>,
}

struct FramesInner {
    buddy: buddy_system_allocator::FrameAllocator<32>,
    /// Start frame -> frames actually taken from the buddy allocator.
    live: BTreeMap<usize, usize>,
    total: usize,
    used: usize,
}

impl Frames {
    /// An empty allocator.
    pub const fn new() -> Self {
        Self {
            inner: Mutex::new(FramesInner {
                buddy: buddy_system_allocator::FrameAllocator::new(),
                live: BTreeMap::new(),
                total: 0,
                used: 0,
            }),
        }
    }

    /// Adds the page-aligned physical range `r` of free, mapped RAM.
    pub fn add(&self, r: Range<u64>) {
        let start = r.start.div_ceil(PAGE_SIZE as u64) as usize;
        let end = (r.end / PAGE_SIZE as u64) as usize;
        if start < end {
            let mut inner = self.inner.lock();
            inner.buddy.add_frame(start, end);
            inner.total += end - start;
        }
    }

    /// (total, used) in pages.
    pub fn stats(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.total, inner.used)
    }

    fn alloc(&self, pages: usize, align: usize) -> Option<PhysAddr> {
        let pa = self.alloc_unzeroed(pages, align)?;
        // SAFETY: the frames are free RAM handed to us by `add`, identity
        // mapped read-write (Normal memory), and now exclusively ours.
        unsafe { zero(pa.0, pages * PAGE_SIZE) };
        Some(pa)
    }

    /// Frames as they are, whatever they held.
    fn alloc_unzeroed(&self, pages: usize, align: usize) -> Option<PhysAddr> {
        let align_pages = (align / PAGE_SIZE).max(1);
        let n = pages.max(align_pages).next_power_of_two();
        let mut inner = self.inner.lock();
        let frame = inner
            .buddy
            .alloc_aligned(Layout::from_size_align(n, n).ok()?)?;
        inner.live.insert(frame, n);
        inner.used += n;
        drop(inner);
        Some(PhysAddr((frame * PAGE_SIZE) as u64))
    }

    fn free(&self, pa: PhysAddr) {
        let frame = pa.0 as usize / PAGE_SIZE;
        let mut inner = self.inner.lock();
        let n = inner
            .live
            .remove(&frame)
            .unwrap_or_else(|| panic!("free of unallocated frame {pa:?}"));
        inner
            .buddy
            .dealloc_aligned(frame, Layout::from_size_align(n, n).unwrap());
        inner.used -= n;
    }
}

impl Default for Frames {
    fn default() -> Self {
        Self::new()
    }
}

/// The machine's page-frame allocator.
pub static FRAMES: Frames = Frames::new();

/// A [`PageAllocator`] over [`FRAMES`] that counts what one user holds.
#[derive(Debug)]
pub struct Accounted {
    name: &'static str,
    pages: AtomicUsize,
}

impl Accounted {
    /// A counter for `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            pages: AtomicUsize::new(0),
        }
    }

    /// Who this is.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `pages` frames aligned to `align` bytes, *not* zeroed: for a VM's
    /// RAM, which its CPUs scrub together before the VM first starts
    /// (`GuestRam::scrub_part`), rather than this CPU alone now. The
    /// caller must scrub it before anything but the hypervisor reads it.
    pub fn alloc_unscrubbed(&self, pages: usize, align: usize) -> Option<PhysAddr> {
        let pa = FRAMES.alloc_unzeroed(pages, align)?;
        self.pages.fetch_add(pages, Ordering::Relaxed);
        Some(pa)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.pages.load(Ordering::Relaxed) * PAGE_SIZE
    }
}

// SAFETY: frames come from FRAMES (free RAM, identity-mapped read-write,
// never handed out twice) and `virt` is the identity map.
unsafe impl PageAllocator for Accounted {
    fn alloc_pages(&self, pages: usize, align: usize) -> Option<PhysAddr> {
        let pa = FRAMES.alloc(pages, align)?;
        self.pages.fetch_add(pages, Ordering::Relaxed);
        Some(pa)
    }

    unsafe fn free_pages(&self, pa: PhysAddr, pages: usize) {
        FRAMES.free(pa);
        self.pages.fetch_sub(pages, Ordering::Relaxed);
    }

    fn virt(&self, pa: PhysAddr) -> NonNull<u8> {
        NonNull::new(pa.0 as *mut u8).expect("virt of physical address 0")
    }
}

/// SMMU structures: stream table, queues, stage-2 tables of domains.
pub static SMMU_MEM: Accounted = Accounted::new("SMMU tables and queues");
/// The CPU's stage-2 tables of VMs (their devices' are an IOMMU domain's,
/// in [`SMMU_MEM`]).
pub static S2_CPU_MEM: Accounted = Accounted::new("VM CPU stage-2 tables");
/// The ITS's device, collection and interrupt translation tables and its
/// command queue; the redistributors' LPI configuration and pending tables.
pub static ITS_MEM: Accounted = Accounted::new("ITS and LPI tables");
/// Buffers of the boot self-tests.
pub static TEST_MEM: Accounted = Accounted::new("self-test buffers");
/// Guest RAM.
pub static GUEST_MEM: Accounted = Accounted::new("guest memory");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn subtract_holes() {
        let r = subtract(&[0x1000..0x9000], &[0x2000..0x3000, 0x8000..0xa000]);
        assert_eq!(r, vec![0x1000..0x2000, 0x3000..0x8000]);
        assert_eq!(subtract(&[0x1000..0x2000], &[0..0x10000]), vec![]);
    }
}
