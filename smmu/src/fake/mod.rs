//! Host fakes of the hardware seams, for tests and benchmarks.
//!
//! [`FakeMemory`] hands out heap memory whose "physical" address is its host
//! address, so a fake SMMU can follow pointers the code under test wrote.

mod mem;

pub use mem::FakeMemory;
