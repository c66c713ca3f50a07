//! Host fakes of the hardware seams, for tests and benchmarks.
//!
//! [`FakeMemory`] hands out heap memory whose "physical" address is its host
//! address, so a fake SMMU can follow pointers the code under test wrote;
//! [`FakeSmmu`] is such a fake SMMU register file. [`FakeGuestMemory`] is
//! a VM's RAM and [`FakePhysicalSmmu`] the physical side of a vSMMU, for
//! the vSMMU engine.

mod guest_mem;
mod mem;
mod physical;
mod smmu;

pub use guest_mem::FakeGuestMemory;
pub use mem::FakeMemory;
pub use physical::{FakePhysicalSmmu, InjectedFailure, LoggedOp, PhysicalOp, StreamState};
pub use smmu::FakeSmmu;
pub use smmu::{reg_name, ConsumedCommand, RegWrite, QEMU_IDR0, QEMU_IDR1, QEMU_IDR3, QEMU_IDR5};

use crate::ste::{Httu, StallModel, StePolicy, TtEndian};

/// A physical SMMU that nests (both stages, Hyp, 16-bit VMIDs, 2-level CD
/// tables), with 20-bit SubstreamIDs, all three granules and 44-bit
/// addresses, little-endian, no ATS, with stall model `stall`: what
/// composed nested STEs are checked against in tests and fuzzing.
pub fn nested_ste_policy(stall: StallModel) -> StePolicy {
    StePolicy {
        s1p: true,
        s2p: true,
        hyp: true,
        ats: false,
        ns1ats: false,
        cd2l: true,
        vmid16: true,
        ttendian: TtEndian::Little,
        stall_model: stall,
        httu: Httu::None,
        ssid_bits: 20,
        stt: false,
        gran4k: true,
        gran16k: true,
        gran64k: true,
        ias_bits: 44,
        oas_bits: 44,
    }
}
