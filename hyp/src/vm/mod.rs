//! Virtual machines: what the hypervisor emulates for each guest, and (on
//! the bare-metal target) the runtime that creates VMs from the scenario and
//! handles their traps.

pub mod console_mux;
pub mod mmio;
pub mod psci;
pub mod ram;
pub mod vuart;

#[cfg(target_os = "none")]
pub mod assign;
#[cfg(target_os = "none")]
pub mod run;
#[cfg(target_os = "none")]
pub mod vsmmu;
