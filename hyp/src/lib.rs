//! The EL2 hypervisor.
//!
//! Boot flow (see docs/ARCHITECTURE.md): `entry.S` -> [`boot::primary_main`]:
//! heap, DTB, console, EL2 MMU, page frames, GIC, SMMU (fail-closed), PCI,
//! ITS, self-tests, secondary CPUs, footprint report.
//!
//! Built for `aarch64-unknown-none` by `./hv build` (the `hyp` binary is
//! this library linked with `linker/hyp.ld`). On the host the modules that
//! do not touch the hardware are compiled, for their unit tests and for the
//! fuzz targets.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod console;
mod drivers;
mod esr;
mod gicv3;
mod guest_fdt;
mod mm;
mod platform;
mod seed;
mod vdev;
mod vm;
mod wallclock;

#[cfg(not(target_os = "none"))]
pub mod harness;
/// On the host, the vGIC and vITS models, for the `vits` fuzz target.
#[cfg(not(target_os = "none"))]
pub use vdev::{vgic, vits};

#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod init;
#[cfg(target_os = "none")]
mod power;
#[cfg(target_os = "none")]
mod selftest;

/// Microseconds since reset, for log timestamps.
pub fn now_us() -> u64 {
    #[cfg(target_os = "none")]
    {
        arch::uptime_us()
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}
