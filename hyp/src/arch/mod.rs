//! The architecture interface: every special instruction, system register
//! access and exception vector of the hypervisor is behind it.
//!
//! Two implementations share one set of names:
//! - `aarch64` (the bare-metal target): the hardware;
//! - `fake` (the host): a per-thread model of one CPU's registers that unit
//!   tests set and inspect, so that everything above this module (trap
//!   dispatch, exception injection, the vGIC's list-register sync, INTx
//!   forwarding) compiles and runs in `cargo test`. Hafnium's `arch/fake`
//!   is the model.
//!
//! What both provide:
//! - [`counter`], [`counter_freq`], [`cpu_index`], [`wait_for_interrupt`];
//! - `guest`: the trapped access's syndrome (ESR_EL2, FAR_EL2, HPFAR_EL2),
//!   the guest's EL1 exception registers and vector base, its virtual
//!   timer control;
//! - `gicv3`: this CPU's GIC CPU interface (acknowledge, EOI, deactivate,
//!   SGIs) and the virtual interface's list registers and controls.
//!
//! The pure logic around them (vector offsets, syndromes, SGI encodings,
//! the timer's level rule) lives with its users and is tested there.

mod frame;
pub use frame::TrapFrame;

#[cfg(target_os = "none")]
mod aarch64;
#[cfg(target_os = "none")]
pub use aarch64::*;

#[cfg(not(target_os = "none"))]
pub mod fake;
#[cfg(not(target_os = "none"))]
pub use fake::*;
