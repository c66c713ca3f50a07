//! A register frame of an MMIO device the hypervisor owns (the GIC's
//! distributor and redistributors, the ITS, the PL031 RTC): `unsafe` once,
//! when the frame is created from the DTB's region, and every access after
//! it bounds- and alignment-checked.

use core::ptr::NonNull;

/// One register frame of the GIC or its ITS: the only way their registers
/// are reached. `unsafe` once, in [`Frame::new`]; every access after it is
/// checked against the frame's size.
pub struct Frame {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: a frame is MMIO reached only with volatile accesses, which the
// device serialises itself; nothing in it is Rust memory.
unsafe impl Send for Frame {}
// SAFETY: as above.
unsafe impl Sync for Frame {}

impl Frame {
    /// The frame of `size` bytes at `base`.
    ///
    /// # Safety
    ///
    /// `[base, base + size)` is the register space of a GIC, ITS or PL031,
    /// mapped as a device at EL2 for the hypervisor's lifetime, and only
    /// the hypervisor programs it: a 32- or 64-bit access at an aligned
    /// offset inside it has no effect on memory safety.
    pub unsafe fn new(base: u64, size: usize) -> Self {
        Self {
            base: NonNull::new(base as *mut u8).expect("register frame at address 0"),
            size,
        }
    }

    /// The `size`-byte part of this frame at `offset`.
    pub fn part(&self, offset: u64, size: u64) -> Option<Frame> {
        let (offset, size) = (offset as usize, size as usize);
        let end = offset.checked_add(size)?;
        (end <= self.size).then(|| Frame {
            // SAFETY: inside this frame (checked), so not null.
            base: unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset)) },
            size,
        })
    }

    fn at<T>(&self, offset: u64) -> *mut T {
        let offset = offset as usize;
        let width = core::mem::size_of::<T>();
        assert!(
            offset.is_multiple_of(width) && offset + width <= self.size,
            "register offset {offset:#x} outside a {:#x}-byte frame",
            self.size
        );
        // SAFETY: inside the frame (asserted), which `new` vouches for.
        unsafe { self.base.as_ptr().add(offset).cast() }
    }

    /// Reads the 32-bit register at `offset`.
    pub fn r32(&self, offset: u64) -> u32 {
        // SAFETY: an aligned register inside the frame (`at`), mapped as a
        // device per `Frame::new`'s contract.
        unsafe { self.at::<u32>(offset).read_volatile() }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn w32(&self, offset: u64, v: u32) {
        // SAFETY: as in r32.
        unsafe { self.at::<u32>(offset).write_volatile(v) }
    }

    /// Reads the 64-bit register at `offset`.
    pub fn r64(&self, offset: u64) -> u64 {
        // SAFETY: as in r32.
        unsafe { self.at::<u64>(offset).read_volatile() }
    }

    /// Writes the 64-bit register at `offset`.
    pub fn w64(&self, offset: u64, v: u64) {
        // SAFETY: as in r32.
        unsafe { self.at::<u64>(offset).write_volatile(v) }
    }
}
