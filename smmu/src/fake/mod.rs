//! Host fakes of the hardware seams, for tests and benchmarks.
//!
//! [`FakeMemory`] hands out heap memory whose "physical" address is its host
//! address, so a fake SMMU can follow pointers the code under test wrote;
//! [`FakeSmmu`] is such a fake SMMU register file.

mod guest_mem;
mod mem;
mod smmu;

pub use guest_mem::FakeGuestMemory;
pub use mem::FakeMemory;
pub use smmu::FakeSmmu;
pub use smmu::{reg_name, ConsumedCommand, RegWrite, QEMU_IDR0, QEMU_IDR1, QEMU_IDR3, QEMU_IDR5};
