//! AArch64-specific code: boot assembly, exception vectors, the EL2 MMU,
//! timers, the GIC CPU interface and PSCI. Compiled only for the
//! bare-metal target; `super::fake` mirrors what the rest of the hypervisor
//! uses of it.

pub mod exceptions;
pub mod gicv3;
pub mod guest;
pub mod mmu;
pub mod psci;

use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTPCT_EL0, MPIDR_EL1, TPIDR_EL2};
use core::arch::global_asm;

pub use exceptions::{set_fatal_stop, set_guest_trap_handler};

global_asm!(include_str!("entry.S"));
global_asm!(include_str!("vectors.S"));

unsafe extern "C" {
    /// Entry point of secondary CPUs (entry.S); x0 = CPU index.
    pub fn secondary_entry();
}

/// Reads the physical counter.
pub fn counter() -> u64 {
    CNTPCT_EL0.get()
}

/// Counter ticks per second.
pub fn counter_freq() -> u64 {
    CNTFRQ_EL0.get().max(1)
}

/// Microseconds since reset.
pub fn uptime_us() -> u64 {
    (counter() as u128 * 1_000_000 / counter_freq() as u128) as u64
}

/// Busy-waits for `us` microseconds.
pub fn delay_us(us: u64) {
    let end = counter() + us * counter_freq() / 1_000_000;
    while counter() < end {
        core::hint::spin_loop();
    }
}

/// This CPU's affinity (MPIDR_EL1 with the non-affinity bits cleared).
pub fn mpidr() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// Data synchronisation barrier for stores, before an MMIO doorbell.
#[inline]
pub fn dsb_st() {
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { core::arch::asm!("dsb st", options(nostack, preserves_flags)) }
}

/// Data synchronisation barrier for loads, after an MMIO read that
/// publishes memory written by a device.
#[inline]
pub fn dsb_ld() {
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { core::arch::asm!("dsb ld", options(nostack, preserves_flags)) }
}

/// Physical address bits this CPU implements (ID_AA64MMFR0_EL1.PARange).
pub fn pa_bits() -> u32 {
    use aarch64_cpu::registers::ID_AA64MMFR0_EL1;
    // Encodings above 52 bits are reserved or need 128-bit descriptors the
    // hypervisor does not use.
    let parange = (ID_AA64MMFR0_EL1.get() & 0xf).min(6) as u8;
    // The same encoding as VTCR_EL2.PS and the SMMU's S2PS.
    u32::from(smmu::ste::output_size_bits(parange))
}

/// VTCR_EL2 for a stage-2 table with the given T0SZ, SL0 and PS encodings:
/// 4 KiB granule, write-back cacheable inner-shareable walks, 16-bit VMIDs
/// when the CPU has them.
pub fn vtcr(t0sz: u8, sl0: u8, ps: u8) -> u64 {
    use aarch64_cpu::registers::VTCR_EL2;
    use tock_registers::LocalRegisterCopy;
    let mut v = LocalRegisterCopy::<u64, VTCR_EL2::Register>::new(0);
    v.write(
        VTCR_EL2::T0SZ.val(u64::from(t0sz & 0x3f))
            + VTCR_EL2::SL0.val(u64::from(sl0 & 3))
            + VTCR_EL2::IRGN0::NormalWBRAWA
            + VTCR_EL2::ORGN0::NormalWBRAWA
            + VTCR_EL2::SH0::Inner
            + VTCR_EL2::TG0::Granule4KB
            + VTCR_EL2::PS.val(u64::from(ps & 7))
            + VTCR_EL2::RES1::SET
            + if vmid_bits() == 16 {
                VTCR_EL2::VS::Bits16
            } else {
                VTCR_EL2::VS::Bits8
            },
    );
    v.get()
}

/// VMID bits of the CPU's stage 2 (ID_AA64MMFR1_EL1.VMIDBits: 8 or 16).
pub fn vmid_bits() -> u32 {
    use aarch64_cpu::registers::ID_AA64MMFR1_EL1;
    if ID_AA64MMFR1_EL1.read(ID_AA64MMFR1_EL1::VMIDBits) == 2 {
        16
    } else {
        8
    }
}

/// This physical CPU's index (TPIDR_EL2, set at boot).
pub fn cpu_index() -> usize {
    TPIDR_EL2.get() as usize
}

/// Whether a physical IRQ or FIQ is pending for this CPU (ISR_EL1.I and
/// .F, which at EL2 show the physical interrupts): one the CPU interface
/// signals, so above the running priority. A system register of the CPU
/// itself, cheaper for an emulator than asking the GIC (ICC_IAR1_EL1).
pub fn irq_pending() -> bool {
    let isr: u64;
    // SAFETY: reading ISR_EL1 has no side effects.
    unsafe { core::arch::asm!("mrs {}, isr_el1", out(reg) isr, options(nomem, nostack)) };
    isr & (1 << 7 | 1 << 6) != 0
}

/// Waits for an interrupt (WFI).
pub fn wait_for_interrupt() {
    aarch64_cpu::asm::wfi();
}

/// Zeroes `[pa, pa + len)` with `DC ZVA` when the CPU allows it and its
/// block size divides `align`; returns false (nothing done) otherwise.
///
/// # Safety
///
/// The range is identity-mapped Normal memory that nothing else uses, and
/// `pa` and `len` are multiples of `align`.
pub unsafe fn zero_by_blocks(pa: usize, len: usize, align: usize) -> bool {
    let dczid: u64;
    // SAFETY: reading DCZID_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, dczid_el0", out(reg) dczid, options(nomem, nostack)) };
    let block = 4usize << (dczid & 0xf);
    if dczid & (1 << 4) != 0 || block > align {
        return false;
    }
    let mut p = pa;
    while p < pa + len {
        // SAFETY: `p` is inside the range and block aligned (the range is
        // `align` aligned and block divides align), which the caller vouches
        // for.
        unsafe { core::arch::asm!("dc zva, {}", in(reg) p, options(nostack)) };
        p += block;
    }
    true
}

/// The smallest data cache line (CTR_EL0.DminLine), in bytes.
fn dcache_line() -> usize {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    // CTR_EL0.DminLine, bits [19:16]: log2 of the smallest line in words.
    4usize << ((ctr >> 16) & 0xf)
}

/// Cleans and invalidates the cache lines of the 64 bytes at `p` to the
/// point of coherency (no barrier: the caller's DSB waits for them).
fn clean_block(p: usize, line: usize) {
    let mut l = p;
    while l < p + 64 {
        // SAFETY: cache maintenance of a mapped line has no effect on
        // memory safety.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) l, options(nostack, preserves_flags)) };
        l += line;
    }
}

/// Makes `[start, start + len)` all zero at the point of coherency, 64
/// bytes at a time: a block that does not read as zero already is written
/// with paired 64-bit stores, and every block is cleaned and invalidated
/// (DC CIVAC) right after, then all of it waited for (DSB SY). A guest
/// that starts with its MMU and caches off reads memory, not the caches:
/// a block that reads as zero holds zero at the point of coherency once
/// its lines are cleaned, whatever the caches held. Writing only what
/// differs is what makes it fast under TCG, where a store to a page that
/// never held anything costs the host a page fault and a store to a page
/// of translated code invalidates it, while `DC ZVA` would be a call into
/// the emulator per block.
///
/// # Safety
///
/// The range is identity-mapped Normal memory, writable at EL2, that holds
/// no object of the hypervisor and that nothing else uses meanwhile;
/// `start` and `len` are multiples of 64.
pub unsafe fn zero_to_poc(start: usize, len: usize) {
    let line = dcache_line();
    let mut p = start;
    while p < start + len {
        // SAFETY: `p..p + 64` is inside the range (both multiples of 64),
        // writable memory nobody else uses, as the caller vouches.
        unsafe {
            core::arch::asm!(
                "ldp {a}, {b}, [{p}]",
                "ldp {c}, {d}, [{p}, #16]",
                "orr {a}, {a}, {b}",
                "orr {a}, {a}, {c}",
                "orr {a}, {a}, {d}",
                "ldp {b}, {c}, [{p}, #32]",
                "ldp {d}, {e}, [{p}, #48]",
                "orr {a}, {a}, {b}",
                "orr {a}, {a}, {c}",
                "orr {a}, {a}, {d}",
                "orr {a}, {a}, {e}",
                "cbz {a}, 2f",
                "stp xzr, xzr, [{p}]",
                "stp xzr, xzr, [{p}, #16]",
                "stp xzr, xzr, [{p}, #32]",
                "stp xzr, xzr, [{p}, #48]",
                "2:",
                p = in(reg) p,
                a = out(reg) _,
                b = out(reg) _,
                c = out(reg) _,
                d = out(reg) _,
                e = out(reg) _,
                options(nostack, preserves_flags)
            )
        };
        clean_block(p, line);
        p += 64;
    }
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Makes `[dst, dst + len)` hold the `len` bytes at `src` at the point of
/// coherency, 16 bytes at a time with paired 64-bit loads, storing only
/// the pairs that differ from what `dst` holds already, and cleaning and
/// invalidating each 64-byte block (DC CIVAC) right after, then waiting for
/// all of it (DSB SY): an image a guest will read with its MMU and caches
/// off. As for [`zero_to_poc`], what reads as the image holds it at the
/// point of coherency once cleaned; and under TCG, rewriting a kernel
/// image over the one a restarting guest ran would invalidate the
/// translated code of every page it stores to.
///
/// # Safety
///
/// `[src, src + len)` is readable memory nothing writes meanwhile;
/// `[dst, dst + len)` is identity-mapped Normal memory, writable at EL2,
/// that holds no object of the hypervisor and that nothing else uses
/// meanwhile; the two do not overlap; `dst` and `len` are multiples of
/// 64, `src` of 8.
pub unsafe fn copy_to_poc(dst: usize, src: usize, len: usize) {
    let line = dcache_line();
    let mut off = 0;
    while off < len {
        let d = dst + off;
        for half in [0, 16, 32, 48] {
            // SAFETY: 16 bytes inside both ranges, which the caller vouches
            // for: a readable source, a writable destination nobody uses.
            unsafe {
                core::arch::asm!(
                    "ldp {a}, {b}, [{s}]",
                    "ldp {c}, {e}, [{d}]",
                    "cmp {a}, {c}",
                    "ccmp {b}, {e}, #0, eq",
                    "b.eq 2f",
                    "stp {a}, {b}, [{d}]",
                    "2:",
                    s = in(reg) src + off + half,
                    d = in(reg) d + half,
                    a = out(reg) _,
                    b = out(reg) _,
                    c = out(reg) _,
                    e = out(reg) _,
                    options(nostack)
                )
            };
        }
        clean_block(d, line);
        off += 64;
    }
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Cleans and invalidates the data cache lines holding `[start, start +
/// len)` to the point of coherency (DC CIVAC), then waits for them (DSB
/// SY): a device that does not snoop the CPU's caches then reads what the
/// CPU wrote. `start` is an identity-mapped address.
pub fn clean_inval_dcache(start: u64, len: usize) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    // CTR_EL0.DminLine, bits [19:16]: log2 of the smallest line in words.
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let end = start.saturating_add(len as u64);
    let mut p = start & !(line - 1);
    while p < end {
        // Clean and invalidate writes a dirty line back before dropping it,
        // so what the CPU reads afterwards is unchanged. An unmapped address
        // faults, and the exception handler stops the machine with a report.
        // SAFETY: as just said, no effect on memory safety.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) p, options(nostack, preserves_flags)) };
        p += line;
    }
    // SAFETY: a barrier has no effect on memory safety.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Invalidates all instruction caches to the point of unification, in the
/// Inner Shareable domain (IC IALLUIS), and waits for it: code the
/// hypervisor wrote into a guest's memory is what the guest fetches.
pub fn invalidate_icache() {
    // SAFETY: cache maintenance and barriers have no effect on memory
    // safety.
    unsafe {
        core::arch::asm!(
            "ic ialluis",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Ends the run through Arm semihosting SYS_EXIT with `code` as QEMU's
/// exit status. Only valid when the runner enabled semihosting.
pub fn semihosting_exit(code: u32) -> ! {
    /// ADP_Stopped_ApplicationExit.
    const APPLICATION_EXIT: u64 = 0x20026;
    let block = [APPLICATION_EXIT, u64::from(code)];
    // SAFETY: the semihosting trap reads the two-word block and ends the
    // emulation; with semihosting enabled (the caller's precondition) it
    // does not return.
    unsafe {
        core::arch::asm!("hlt #0xf000", in("x0") 0x18u64, in("x1") block.as_ptr(), options(nostack));
    }
    halt()
}

/// Stops this CPU for good.
pub fn halt() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}
