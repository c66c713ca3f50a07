//! Drivers for the physical hardware the hypervisor owns: the GICv3 (its
//! own interrupts) and its ITS (LPIs for devices' MSIs), PCI configuration
//! space (ECAM enumeration and BARs), the SMMUv3's register window (the
//! `smmu` crate's `hw::Mmio`) and the IOMMU built on it, and QEMU's `edu`
//! DMA engine for the self-test, and the PL031 real-time clock, read once
//! at boot. The PL011 console is `crate::console`.

pub mod pci;

#[cfg(target_os = "none")]
pub mod edu;
#[cfg(target_os = "none")]
mod frame;
#[cfg(target_os = "none")]
pub mod gic;
#[cfg(target_os = "none")]
pub mod iommu;
#[cfg(target_os = "none")]
pub mod its;
#[cfg(target_os = "none")]
pub mod pl031;
#[cfg(target_os = "none")]
pub mod smmu_mmio;
