//! `disk-bench`: times O_DIRECT reads of a block device inside the Linux
//! guest, for the NVMe benchmark (`tests/benches/nvme_read.rs` through
//! `guests/linux/bin/nvme-bench`).
//!
//! ```text
//! disk-bench DEVICE BLOCK_BYTES COUNT random|seq
//! ```
//!
//! reads COUNT blocks of BLOCK_BYTES, one at a time (queue depth 1), at
//! block-aligned offsets: `random` draws each offset from a fixed
//! pseudo-random sequence over the whole device, `seq` reads the device
//! from its start and wraps around at its end. It prints one line,
//!
//! ```text
//! disk-bench: COUNT reads of BLOCK_BYTES B (random|seq) in NANOSECONDS ns
//! ```
//!
//! timed with `CLOCK_MONOTONIC` (nanoseconds: the clock's resolution is
//! far below 1% of any run worth measuring), and exits 0; on any error it
//! prints `disk-bench: ...` and exits 1.
//!
//! The busybox initramfs has no C library to link against and no tool
//! that reads at random offsets in one process, so this is a static
//! program that talks to the kernel through system calls alone (built for
//! `aarch64-unknown-none`; Linux runs such an ELF as it is). On the host
//! only the pure parts (arguments, offsets, output) are built, for their
//! unit tests.

#![cfg_attr(target_os = "none", no_std, no_main)]

// The host build only tests these parts.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod plan;

#[cfg(target_os = "none")]
mod linux;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "disk-bench runs inside the aarch64 Linux guest; this host build only tests its parts"
    );
}
