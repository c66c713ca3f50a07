//! The VMM: virtual machines, their vCPUs' traps, and the devices they see.
//!
//! Host-tested (they run against `arch::fake` and a recording [`Machine`]):
//! - [`vm`]: one VM's state, its [`Machine`] interface to the hardware,
//!   and stop ordering;
//! - [`trap`]: the synchronous trap dispatcher ([`exit`] decodes ESR_EL2,
//!   [`mmio`] a data abort's access, [`exception`] injects exceptions),
//!   handing MMIO to the VM's [`bus`], which routes it to one emulated
//!   device and refuses overlapping ranges ([`devices`]: the adapters that
//!   give each `crate::vdev` model its VM's state: UART, GIC distributor
//!   and redistributors, counters page, PCI host bridge, vSMMU registers),
//!   and hypercalls to PSCI;
//! - [`intx`]: forwarded INTx lines, masked while their guest handles them
//!   and resampled at its deactivation;
//! - [`msi`]: the grants of assigned functions' MSI events and the
//!   routing of their physical LPIs to VMs;
//! - [`space`]: the IPA space and its two stage-2 tables (the CPU's and
//!   the devices'), built from one list of mappings;
//! - [`timer`]: the guest's EL1 timers, their interrupts with level
//!   semantics;
//! - [`ram`], [`image`], [`console_mux`].
//!
//! Bare-metal only: [`run`] (the runtime: physical CPUs, interrupts, the
//! real [`Machine`]), [`build`] (VMs from the scenario), [`assign`] (PCI
//! functions), [`vsmmu`] (the vSMMU wired to the physical SMMU).
//!
//! [`Machine`]: vm::Machine

pub mod bus;
pub mod console_mux;
pub mod devices;
pub mod exception;
pub mod exit;
pub mod image;
pub mod intx;
pub mod mmio;
pub mod msi;
pub mod ram;
pub mod space;
pub mod timer;
pub mod trap;
#[allow(clippy::module_inception)]
pub mod vm;

#[cfg(target_os = "none")]
pub mod assign;
#[cfg(target_os = "none")]
pub mod build;
#[cfg(target_os = "none")]
pub mod run;
#[cfg(target_os = "none")]
pub mod vsmmu;

#[cfg(test)]
mod tests;
