//! The VM the fuzzed guest runs in: its VMID, its devices, its RAM and its
//! stage 2, as the hypervisor (`hyp/src/vm/run.rs`) sets them up for a
//! vSMMU.

use smmu::addr::{StreamId, Vmid};
use smmu::ste::S2Config;
use smmu::vsmmu::StreamMap;

/// The VM's VMID. Every physical command a guest causes must carry it.
pub const VMID: Vmid = Vmid(7);

/// The VM's devices: (virtual StreamID, physical StreamID). The physical
/// StreamIDs deliberately collide with virtual ones of other streams (0x10
/// is the physical StreamID of vSID 0x8 and a vSID with no device) so that
/// a translation that forgets to map a StreamID is caught.
pub const DEVICES: [(u32, u32); 3] = [(0x0, 0x108), (0x8, 0x10), (0x310, 0x2010)];

/// Whether `sid` is the physical StreamID of one of the VM's devices.
pub fn is_vm_stream(sid: StreamId) -> bool {
    DEVICES.iter().any(|&(_, p)| p == sid.0)
}

/// [`DEVICES`] as the vSMMU sees them.
#[derive(Clone, Copy, Debug)]
pub struct Devices;

impl StreamMap for Devices {
    fn physical(&self, vsid: StreamId) -> Option<StreamId> {
        DEVICES
            .iter()
            .find(|&&(v, _)| v == vsid.0)
            .map(|&(_, p)| StreamId(p))
    }
}

/// Guest RAM: `RAM_SIZE` bytes at IPA `RAM`. The regions below are where a
/// guest driver would put its queues and tables; the fuzzer may point the
/// registers anywhere else too.
pub const RAM: u64 = 0x4000_0000;
/// Size of guest RAM.
pub const RAM_SIZE: usize = 0x8_0000;
/// Command queue (up to 4096 entries).
pub const CMDQ: u64 = RAM;
/// Event queue (up to 2048 records).
pub const EVTQ: u64 = RAM + 0x1_0000;
/// Stream table (linear, or the L1 descriptors of a 2-level one).
pub const STRTAB: u64 = RAM + 0x2_0000;
/// Level 2 stream table arrays: [`L2_SLOTS`] slots of [`L2_SLOT`] bytes.
pub const L2: u64 = RAM + 0x4_0000;
/// Size of one level 2 slot (256 STEs).
pub const L2_SLOT: u64 = 0x4000;
/// Number of level 2 slots.
pub const L2_SLOTS: u64 = 4;
/// CD tables.
pub const CDS: u64 = RAM + 0x5_0000;

/// IPA bits of the VM (its stage 2 covers `0..2^VM_IPA_BITS`).
pub const VM_IPA_BITS: u8 = 40;

/// The VM's stage 2, as the hypervisor's page-table module describes it:
/// 40-bit IPA, 4K granule, starting at level 1.
pub fn s2() -> S2Config {
    smmu::fake::vm_stage2(VMID)
}
