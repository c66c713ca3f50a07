//! The program on aarch64 Linux: its entry point, the system calls it
//! makes, and the read loop.

use crate::plan::{Plan, MAX_BLOCK};
use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

// Linux starts a static ELF at its entry point with sp pointing at argc,
// then the argv pointers; nothing else is set up. The frame pointer and
// link register are cleared so that a backtrace ends here.
global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, #0",
    "mov x30, #0",
    "mov x0, sp",
    "bl {start}",
    start = sym start,
);

// aarch64 Linux system call numbers (include/uapi/asm-generic/unistd.h).
const SYS_OPENAT: usize = 56;
const SYS_CLOSE: usize = 57;
const SYS_LSEEK: usize = 62;
const SYS_WRITE: usize = 64;
const SYS_PREAD64: usize = 67;
const SYS_EXIT_GROUP: usize = 94;
const SYS_CLOCK_GETTIME: usize = 113;
const SYS_MADVISE: usize = 233;

const AT_FDCWD: isize = -100;
const O_RDONLY: usize = 0;
/// O_DIRECT on arm64 (arch/arm64/include/uapi/asm/fcntl.h).
const O_DIRECT: usize = 0o200000;
const SEEK_END: usize = 2;
const CLOCK_MONOTONIC: usize = 1;
const STDOUT: usize = 1;
/// madvise advice: back the range with transparent huge pages.
const MADV_HUGEPAGE: usize = 14;

/// Makes system call `nr` with up to four arguments; returns x0 (a
/// negative errno on failure).
///
/// # Safety
///
/// The arguments must be valid for system call `nr`: every pointer among
/// them must be valid for the access the call makes through it.
unsafe fn syscall(nr: usize, a: [usize; 4]) -> isize {
    let ret: isize;
    // `svc #0` enters the kernel with the call number in x8 and the
    // arguments in x0-x3; the kernel preserves every other register and
    // returns in x0, which is declared as clobbered.
    // SAFETY: registers as just said; the memory the call touches is the
    // caller's promise above.
    unsafe {
        asm!(
            "svc #0",
            in("x8") nr,
            inlateout("x0") a[0] => ret,
            in("x1") a[1],
            in("x2") a[2],
            in("x3") a[3],
            options(nostack),
        );
    }
    ret
}

fn exit(code: usize) -> ! {
    // SAFETY: exit_group takes no pointer and does not return.
    unsafe { syscall(SYS_EXIT_GROUP, [code, 0, 0, 0]) };
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Standard output, written without buffering.
struct Stdout;

impl Write for Stdout {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            // SAFETY: `rest` is valid for reads of `rest.len()` bytes.
            let n = unsafe { syscall(SYS_WRITE, [STDOUT, rest.as_ptr() as usize, rest.len(), 0]) };
            let n = usize::try_from(n).map_err(|_| fmt::Error)?;
            if n == 0 {
                return Err(fmt::Error);
            }
            rest = &rest[n.min(rest.len())..];
        }
        Ok(())
    }
}

/// Prints `disk-bench: WHAT` and exits 1.
fn fail(what: fmt::Arguments<'_>) -> ! {
    let _ = writeln!(Stdout, "disk-bench: {what}");
    exit(1)
}

fn now_ns() -> u64 {
    let mut ts = [0i64; 2];
    // SAFETY: `ts` is a writable `struct timespec` (two 64-bit fields on
    // aarch64).
    let r = unsafe {
        syscall(
            SYS_CLOCK_GETTIME,
            [CLOCK_MONOTONIC, ts.as_mut_ptr() as usize, 0, 0],
        )
    };
    if r != 0 {
        fail(format_args!("clock_gettime failed ({r})"));
    }
    (ts[0] as u64) * 1_000_000_000 + ts[1] as u64
}

/// A 2 MiB huge page: the read buffer's size and alignment.
const HUGE_PAGE: usize = 2 << 20;
const _: () = assert!(MAX_BLOCK <= HUGE_PAGE);

/// The read buffer: O_DIRECT needs it aligned to the logical block. It is
/// one huge page, so that a read's pages are physically contiguous in
/// every boot: scattered 4 KiB pages make a 1 MiB read as many DMA
/// segments, and Linux then splits it into more NVMe commands than the
/// device's transfer limit alone would (seen as 3 or 4 unmaps per read in
/// some boots, 2 in others).
#[repr(C, align(2097152))]
struct Buffer([u8; HUGE_PAGE]);

static mut BUFFER: Buffer = Buffer([0; HUGE_PAGE]);

/// The C string at `p` (NUL excluded).
///
/// # Safety
///
/// `p` must point at a NUL-terminated string that lives for `'static`.
unsafe fn c_str(p: *const u8) -> &'static [u8] {
    let mut len = 0;
    // SAFETY: the string is NUL-terminated (the caller's promise), so
    // every byte up to and including the NUL is readable.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: the `len` bytes before the NUL were just read; the kernel's
    // argument strings are never freed or written while the program runs.
    unsafe { core::slice::from_raw_parts(p, len) }
}

/// The most arguments looked at (the program takes four).
const MAX_ARGS: usize = 8;

extern "C" fn start(sp: *const usize) -> ! {
    // SAFETY: Linux's initial stack holds argc, then argc pointers to
    // NUL-terminated argument strings; it stays valid for the program's
    // whole life.
    let argc = unsafe { *sp };
    let mut args: [&[u8]; MAX_ARGS] = [&[]; MAX_ARGS];
    let n = argc.saturating_sub(1).min(MAX_ARGS);
    for (i, arg) in args.iter_mut().take(n).enumerate() {
        // SAFETY: i + 1 < argc, so argv[i + 1] is a valid pointer to a
        // NUL-terminated string (see above).
        *arg = unsafe { c_str(*sp.add(2 + i) as *const u8) };
    }
    let args = if argc.saturating_sub(1) > MAX_ARGS {
        &args[..0]
    } else {
        &args[..n]
    };
    let plan = Plan::parse(args).unwrap_or_else(|e| fail(format_args!("{e}")));
    run(&plan);
    exit(0)
}

fn run(plan: &Plan<'_>) {
    let mut path = [0u8; 256];
    if plan.device.len() >= path.len() {
        fail(format_args!("device path too long"));
    }
    path[..plan.device.len()].copy_from_slice(plan.device);
    let flags = O_RDONLY | O_DIRECT;
    // SAFETY: `path` is NUL-terminated (zero-filled past the copied name).
    let fd = unsafe {
        syscall(
            SYS_OPENAT,
            [AT_FDCWD as usize, path.as_ptr() as usize, flags, 0],
        )
    };
    let Ok(fd) = usize::try_from(fd) else {
        fail(format_args!("cannot open the device (errno {})", -fd));
    };
    // SAFETY: lseek takes no pointer.
    let size = unsafe { syscall(SYS_LSEEK, [fd, 0, SEEK_END, 0]) };
    let Some(offsets) = u64::try_from(size).ok().and_then(|s| plan.offsets(s)) else {
        fail(format_args!(
            "the device is smaller than one block ({size})"
        ));
    };
    // SAFETY: the program has one thread and this is the only place that
    // touches BUFFER, so this is its only reference.
    let buffer = unsafe { &mut *core::ptr::addr_of_mut!(BUFFER) };
    // A huge page where the kernel allows them (Debian's always does;
    // madvise asks for one where it only does on request), faulted in
    // before the clock starts. Without one the reads still work, only
    // their DMA segments vary.
    // SAFETY: madvise takes the buffer's own range, which stays mapped.
    unsafe {
        syscall(
            SYS_MADVISE,
            [buffer.0.as_mut_ptr() as usize, HUGE_PAGE, MADV_HUGEPAGE, 0],
        )
    };
    buffer.0[0] = 1;
    let start = now_ns();
    for offset in offsets.take(plan.count as usize) {
        // SAFETY: `buffer` is writable for MAX_BLOCK bytes, and
        // `Plan::parse` keeps plan.block at most MAX_BLOCK.
        let n = unsafe {
            syscall(
                SYS_PREAD64,
                [
                    fd,
                    buffer.0.as_mut_ptr() as usize,
                    plan.block,
                    offset as usize,
                ],
            )
        };
        if n != plan.block as isize {
            fail(format_args!("read at {offset} returned {n}"));
        }
    }
    let nanos = now_ns() - start;
    // SAFETY: close takes no pointer.
    unsafe { syscall(SYS_CLOSE, [fd, 0, 0, 0]) };
    if writeln!(Stdout, "{}", plan.report(nanos)).is_err() {
        exit(1);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail(format_args!("panic: {info}"))
}
