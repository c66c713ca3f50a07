//! SMMUv3 core library of the hypervisor.
//!
//! Everything here is pure logic over a few hardware seams (see [`hw`]): the
//! register map and feature decoding, the in-memory encodings (STE, CD,
//! commands, events), queue index arithmetic, stream tables, stage-2 page
//! tables, the physical SMMU driver and per-VM IOMMU domains. The `hyp` crate
//! supplies the real seams (MMIO, page allocation, identity-mapped memory);
//! host tests supply fakes (feature `fake`). Field names follow the Arm
//! SMMUv3 specification (IHI 0070) so that a reader can look them up.

#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod addr;
pub mod cd;
pub mod cmd;
pub mod domain;
pub mod driver;
pub mod event;
pub mod hw;
pub mod queue;
pub mod regs;
pub mod stage2;
pub mod ste;
pub mod strtab;
pub mod vsmmu;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
