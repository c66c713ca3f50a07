//! The devices a guest sees, emulated, as models that know nothing of the
//! VM around them (`vm::devices` adapts each to the VM's MMIO bus, which
//! routes by address and refuses overlapping ranges).
//!
//! - [`vuart`]: a PL011 per VM;
//! - [`rtc`]: a PL031 real-time clock per VM;
//! - [`vgic`]: the GICv3 distributor and redistributors, and ([`vgic::hw`])
//!   the list registers of the hardware's virtual CPU interface;
//! - [`vits`]: the GICv3 ITS, translating the VM's devices' MSIs to LPIs;
//! - [`msix`]: the trapped BAR pages holding an assigned function's MSI-X
//!   table and Pending Bit Array;
//! - [`vpci`]: a PCI host bridge holding only the VM's own functions, with
//!   their configuration space filtered;
//! - the vSMMU is `smmu::vsmmu`, wired to the physical SMMU by `vm::vsmmu`;
//! - [`psci`]: PSCI 1.1 / SMCCC 1.1, the hypercalls.
//!
//! All of it is pure logic over the VM's state and runs in host tests and
//! fuzz targets; what a guest writes is hostile input.

pub mod idregs;
pub mod msix;
pub mod psci;
pub mod rtc;
pub mod vgic;
pub mod vits;
pub mod vpci;
pub mod vuart;
