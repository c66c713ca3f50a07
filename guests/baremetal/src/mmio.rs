//! Device register accesses as single plain loads and stores.
//!
//! A volatile access in Rust may still be compiled to a load or store with
//! base-register writeback (`str w1, [x0], #128`), which gives a hypervisor
//! no instruction syndrome to emulate it by (Arm ARM, ESR_ELx.ISV == 0): the
//! hypervisor then injects an abort. These helpers are what Linux's
//! `readl`/`writel` are: one `ldr`/`str` with a plain register address.

use core::arch::asm;

/// Reads the 32-bit register at `addr`.
///
/// # Safety
/// `addr` must be a 4-byte-aligned device register (or memory) that may be
/// read with no effect beyond the device's own.
pub unsafe fn read32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: the caller guarantees `addr` may be read.
    unsafe { asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) };
    v
}

/// Writes the 32-bit register at `addr`.
///
/// # Safety
/// `addr` must be a 4-byte-aligned device register (or memory) whose
/// write has no effect on memory the program relies on.
pub unsafe fn write32(addr: u64, v: u32) {
    // SAFETY: the caller guarantees `addr` may be written.
    unsafe { asm!("str {v:w}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) };
}

/// Reads the 64-bit register at `addr`.
///
/// # Safety
/// As [`read32`], 8-byte aligned.
pub unsafe fn read64(addr: u64) -> u64 {
    let v: u64;
    // SAFETY: the caller guarantees `addr` may be read.
    unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack)) };
    v
}

/// Writes the 64-bit register at `addr`.
///
/// # Safety
/// As [`write32`], 8-byte aligned.
pub unsafe fn write64(addr: u64, v: u64) {
    // SAFETY: the caller guarantees `addr` may be written.
    unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) v, options(nostack)) };
}

/// Writes the byte register at `addr`.
///
/// # Safety
/// As [`write32`], for a byte-accessible register.
pub unsafe fn write8(addr: u64, v: u8) {
    // SAFETY: the caller guarantees `addr` may be written.
    unsafe {
        asm!("strb {v:w}, [{a}]", a = in(reg) addr, v = in(reg) u32::from(v), options(nostack))
    };
}
