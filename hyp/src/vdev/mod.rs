//! The devices a guest sees, emulated. Each one a guest reaches by MMIO
//! implements [`bus::MmioDevice`] and sits on its VM's [`bus::MmioBus`],
//! which routes by address and refuses overlapping ranges
//! ([`devices`]: the adapters that give each model its VM's state).
//!
//! - [`vuart`]: a PL011 per VM;
//! - [`vgic`]: the GICv3 distributor and redistributors, and ([`vgic::hw`])
//!   the list registers of the hardware's virtual CPU interface;
//! - [`vpci`]: a PCI host bridge holding only the VM's own functions, with
//!   their configuration space filtered;
//! - the counters page and the vSMMU's registers ([`devices`]; the vSMMU
//!   itself is `smmu::vsmmu`, wired to the physical SMMU by `vm::vsmmu`);
//! - [`psci`]: PSCI 1.1 / SMCCC 1.1, the hypercalls.
//!
//! All of it is pure logic over the VM's state and runs in host tests and
//! fuzz targets; what a guest writes is hostile input.

pub mod bus;
pub mod devices;
pub mod psci;
pub mod vgic;
pub mod vpci;
pub mod vuart;
