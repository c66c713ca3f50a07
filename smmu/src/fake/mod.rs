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

use crate::addr::{PhysAddr, Vmid};
use crate::ste::{output_size_encoding, Granule, Httu, S2Config, StallModel, StePolicy, TtEndian};

/// A VM's stage 2 as the hypervisor's page-table module describes one for
/// VMID `vmid`: 40-bit IPA, 4 KiB granule starting at level 1, 44-bit
/// output, write-back inner-shareable walks; the table at a fixed address.
/// The one stage-2 configuration that tests and fuzzing nest guests over.
pub fn vm_stage2(vmid: Vmid) -> S2Config {
    S2Config {
        vmid,
        ttb: PhysAddr(0x8_1234_0000),
        t0sz: 24,
        sl0: 1,
        granule: Granule::Size4K,
        ps: output_size_encoding(44).expect("44 bits is an architected PA size"),
        ir0: 1,
        or0: 1,
        sh0: 3,
        affd: true,
    }
}

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
