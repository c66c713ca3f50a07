//! The EL2 hypervisor.
//!
//! Boot flow (see docs/ARCHITECTURE.md): `entry.S` -> [`boot::primary_main`]:
//! heap, DTB, console, EL2 MMU, page frames, SMMU (fail-closed), PCI,
//! secondary CPUs, self-tests, footprint report.
//!
//! Built for `aarch64-unknown-none` by `./hv build`. On the host only the
//! pure modules are compiled, for their unit tests.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod console;
mod esr;
mod guest_fdt;
mod mm;
mod pci;
mod platform;
mod vgic;
mod vm;
mod vpci;

#[cfg(target_os = "none")]
#[path = "arch/aarch64/mod.rs"]
mod arch;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod edu;
#[cfg(target_os = "none")]
mod gic;
#[cfg(target_os = "none")]
mod init;
#[cfg(target_os = "none")]
mod iommu;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod smmu_hw;
#[cfg(target_os = "none")]
mod vgic_hw;

#[cfg(target_os = "none")]
pub use boot::stop;

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

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hyp is an EL2 binary: build and run it with ./hv run");
}
