//! The real [`smmu::hw::Mmio`] for a memory-mapped SMMUv3.

use crate::arch;
use smmu::hw::Mmio;

/// An SMMU register frame at an identity-mapped device address.
#[derive(Debug)]
pub struct SmmuMmio {
    base: usize,
    size: usize,
}

impl SmmuMmio {
    /// # Safety
    ///
    /// `[base, base + size)` is an SMMUv3 register frame from the DTB, mapped
    /// Device-nGnRE for the hypervisor's lifetime, and nothing else programs
    /// it.
    pub unsafe fn new(base: u64, size: u64) -> Self {
        Self {
            base: base as usize,
            size: size as usize,
        }
    }

    fn ptr<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + core::mem::size_of::<T>() <= self.size
                && offset.is_multiple_of(core::mem::size_of::<T>()),
            "SMMU register offset {offset:#x} out of the frame"
        );
        (self.base + offset) as *mut T
    }
}

impl Mmio for SmmuMmio {
    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: in bounds and aligned (checked by `ptr`), device memory per
        // `new`'s contract.
        let v = unsafe { self.ptr::<u32>(offset).read_volatile() };
        arch::dsb_ld();
        v
    }

    fn write32(&self, offset: usize, value: u32) {
        arch::dsb_st();
        // SAFETY: as in `read32`.
        unsafe { self.ptr::<u32>(offset).write_volatile(value) }
    }

    fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as in `read32`.
        let v = unsafe { self.ptr::<u64>(offset).read_volatile() };
        arch::dsb_ld();
        v
    }

    fn write64(&self, offset: usize, value: u64) {
        arch::dsb_st();
        // SAFETY: as in `read32`.
        unsafe { self.ptr::<u64>(offset).write_volatile(value) }
    }

    fn delay_us(&self, us: u32) {
        arch::delay_us(u64::from(us));
    }
}
