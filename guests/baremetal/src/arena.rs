//! Pages of the guest's own memory that devices and emulated hardware read
//! and write behind the compiler's back (queues, tables, DMA buffers): a
//! static array of 4 KiB pages, 64 KiB aligned (what the strictest of them,
//! GICR_PENDBASER, wants), reached only through volatile 64-bit accesses.
//! The MMU is off, so a page's address is its IPA.

use core::cell::UnsafeCell;

/// `N` pages.
#[repr(C, align(65536))]
pub struct Arena<const N: usize>(UnsafeCell<[[u8; 4096]; N]>);

// SAFETY: one CPU at a time uses an arena (the boot CPU, or the secondary
// whose job owns it, `smp.rs`), through volatile raw-pointer accesses only.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    /// Zeroed pages (in BSS).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([[0; 4096]; N]))
    }

    /// Page `i`'s address, which is its IPA.
    pub fn page(&self, i: usize) -> u64 {
        assert!(i < N, "arena page {i} of {N}");
        self.0.get() as u64 + i as u64 * 4096
    }

    /// Writes `v` at byte `offset` (8-byte aligned) of page `i`.
    pub fn store(&self, i: usize, offset: u64, v: u64) {
        assert!(offset.is_multiple_of(8) && offset < 4096);
        // SAFETY: an aligned u64 inside page `i` of the arena (checked by
        // `page` and above), which nothing references as a Rust object.
        unsafe { ((self.page(i) + offset) as *mut u64).write_volatile(v) }
    }

    /// Reads the u64 at byte `offset` (8-byte aligned) of page `i`.
    pub fn load(&self, i: usize, offset: u64) -> u64 {
        assert!(offset.is_multiple_of(8) && offset < 4096);
        // SAFETY: as in `store`.
        unsafe { ((self.page(i) + offset) as *const u64).read_volatile() }
    }
}
