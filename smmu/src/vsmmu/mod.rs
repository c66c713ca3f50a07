//! A virtual SMMUv3 for guests.
//!
//! An unmodified guest runs its own `arm-smmu-v3` driver against an emulated
//! SMMUv3 register file (IHI 0070 chapter 6) that advertises stage 1 only.
//! The guest owns stage 1 (its stream table, CD tables and page tables); the
//! hypervisor keeps stage 2, turns each guest STE into a nested physical STE
//! ([`ste`]) and emulates every guest command ([`cmd`]).
//!
//! This module holds the seams shared by the submodules:
//! - [`GuestMemory`]: how the vSMMU reads and writes the guest's queues and
//!   tables (by IPA; accesses outside the VM fail);
//! - [`StreamMap`]: virtual-to-physical StreamID translation for the VM's
//!   devices;
//! - [`VsmmuPolicy`]: what the vSMMU advertises in its ID registers;
//! - [`StreamRange`]: which guest STEs must be re-read and reinstalled.
//!
//! The register file itself is [`regs::VSmmu`]; event injection is in
//! [`evtq`]. [`engine::VsmmuEngine`] puts them to work for one VM over a
//! [`engine::PhysicalSmmu`]: the one loop the hypervisor, the fuzzer and
//! the tests run.

use alloc::collections::BTreeMap;

use crate::addr::{Ipa, StreamId};
use crate::regs::{Features, Ttf};
use crate::ste::{Httu, StallModel, StePolicy, TtEndian};

pub mod cmd;
pub mod engine;
pub mod evtq;
pub mod regs;
pub mod ste;

#[cfg(test)]
mod tests;

pub use engine::{GuestIrq, PhysicalSmmu, VsmmuEngine, VsmmuStats};
pub use evtq::InjectOutcome;
pub use regs::{CmdqOutcome, IrqSource, SyncOutcome, VSmmu, VsmmuAction};

/// Why a guest-memory access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestMemError {
    /// The IPA range is not (entirely) RAM of this VM.
    #[error("IPA {0:?} is outside the VM's memory")]
    OutOfRange(Ipa),
}

/// The guest's physical memory as the vSMMU sees it: the stand-in for the
/// SMMU's own table walks and queue accesses (IHI 0070 §3.3). Implementations
/// must fail (never panic) for any IPA range that is not RAM of the VM.
pub trait GuestMemory {
    /// Reads `buf.len()` bytes at `ipa`.
    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), GuestMemError>;
    /// Writes `buf` at `ipa`.
    fn write(&self, ipa: Ipa, buf: &[u8]) -> Result<(), GuestMemError>;
}

/// The VM's devices: maps a virtual StreamID (what the guest's `iommu-map`
/// yields) to the physical one.
pub trait StreamMap {
    /// The physical StreamID of virtual StreamID `vsid`, or `None` when the
    /// VM has no device there.
    fn physical(&self, vsid: StreamId) -> Option<StreamId>;
}

/// A VM's devices as a map from virtual to physical StreamID.
impl StreamMap for BTreeMap<StreamId, StreamId> {
    fn physical(&self, vsid: StreamId) -> Option<StreamId> {
        self.get(&vsid).copied()
    }
}

/// A set of guest StreamIDs whose STEs must be re-read, re-validated and
/// reinstalled (CMD_CFGI_STE, CMD_CFGI_STE_RANGE, CMD_CFGI_ALL, §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamRange {
    /// One virtual StreamID.
    One(StreamId),
    /// `2^log2` virtual StreamIDs starting at `base` rounded down to a
    /// multiple of `2^log2` (CMD_CFGI_STE_RANGE, §4.3.2).
    Range {
        /// Any StreamID in the range.
        base: StreamId,
        /// log2 of the number of StreamIDs (Range field, 0..=31).
        log2: u8,
    },
    /// Every StreamID (CMD_CFGI_ALL, or a table change).
    All,
}

impl StreamRange {
    /// Whether `sid` is in the range.
    pub fn contains(&self, sid: StreamId) -> bool {
        match *self {
            StreamRange::One(s) => s == sid,
            StreamRange::Range { base, log2 } => {
                if log2 >= 32 {
                    true
                } else {
                    (base.0 >> log2) == (sid.0 >> log2)
                }
            }
            StreamRange::All => true,
        }
    }
}

/// What the vSMMU advertises to a guest (its SMMU_IDRx, §6.3.1-§6.3.6), and
/// therefore what guest STEs, CDs and commands may use. Build it from the
/// physical SMMU's [`Features`] with [`VsmmuPolicy::from_physical`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsmmuPolicy {
    /// SMMU_IDR1.SSIDSIZE: SubstreamID bits offered to the guest (0..=20).
    pub ssid_bits: u8,
    /// SMMU_IDR1.SIDSIZE: StreamID bits offered to the guest.
    pub sid_bits: u8,
    /// SMMU_IDR0.ASID16.
    pub asid16: bool,
    /// SMMU_IDR0.CD2L: 2-level CD tables.
    pub cd2l: bool,
    /// SMMU_IDR0.COHACC: coherent table and queue accesses.
    pub cohacc: bool,
    /// SMMU_IDR0.HTTU offered to stage 1 (0: none).
    pub httu: u8,
    /// SMMU_IDR0.MSI: the vSMMU signals a CMD_SYNC's completion, its event
    /// queue and its global errors with MSIs when the guest asks (written
    /// to the guest's memory), and has the IRQ_CFGn registers.
    pub msi: bool,
    /// SMMU_IDR3.RIL: range invalidation.
    pub ril: bool,
    /// SMMU_IDR5.GRAN4K.
    pub gran4k: bool,
    /// SMMU_IDR5.GRAN16K.
    pub gran16k: bool,
    /// SMMU_IDR5.GRAN64K.
    pub gran64k: bool,
    /// SMMU_IDR5.OAS in bits: the VM's IPA size (stage 1 outputs IPAs).
    /// Must be an architected size (32, 36, 40, 42, 44, 48, 52).
    pub oas_bits: u8,
    /// SMMU_IDR1.CMDQS: log2 of the largest command queue (≤ 19).
    pub cmdqs: u8,
    /// SMMU_IDR1.EVENTQS: log2 of the largest event queue (≤ 19).
    pub evtqs: u8,
}

impl VsmmuPolicy {
    /// The largest queue the vSMMU advertises (log2 entries), §6.3.2.
    pub const MAX_QS: u8 = 19;
    /// The queue size the vSMMU advertises by default (log2 entries): large
    /// enough for Linux's driver, small enough to bound per-VM state.
    pub const DEFAULT_QS: u8 = 8;

    /// What a vSMMU offers on top of a physical SMMU with `phys` features
    /// for a VM with `ipa_bits` of IPA space: the physical granules, ASID
    /// width, RIL, COHACC and CD2L; SSIDSIZE capped at `max_ssid_bits`;
    /// stage 1 only; MSIs (they are the vSMMU's own writes to guest
    /// memory, whatever the physical SMMU has); no HTTU, ATS, PRI or
    /// stall.
    pub fn from_physical(phys: &Features, ipa_bits: u8, max_ssid_bits: u8) -> Self {
        Self {
            ssid_bits: phys.ssid_size.min(max_ssid_bits).min(20),
            sid_bits: 16,
            asid16: phys.asid16,
            cd2l: phys.cd2l,
            cohacc: phys.cohacc,
            httu: 0,
            msi: true,
            ril: phys.ril,
            gran4k: phys.gran4k,
            gran16k: phys.gran16k,
            gran64k: phys.gran64k,
            oas_bits: round_oas_bits(ipa_bits.min(phys.oas_bits)),
            cmdqs: Self::DEFAULT_QS,
            evtqs: Self::DEFAULT_QS,
        }
    }

    /// The [`StePolicy`] guest STEs are validated against: stage 1 only,
    /// AArch64 tables, little-endian, no stall, no ATS, no Hyp.
    pub fn ste_policy(&self) -> StePolicy {
        StePolicy {
            s1p: true,
            s2p: false,
            hyp: false,
            ats: false,
            ns1ats: false,
            cd2l: self.cd2l,
            vmid16: false,
            ttendian: TtEndian::Little,
            stall_model: StallModel::TerminateOnly,
            httu: match self.httu {
                0 => Httu::None,
                1 => Httu::Access,
                _ => Httu::AccessDirty,
            },
            ssid_bits: self.ssid_bits,
            stt: false,
            gran4k: self.gran4k,
            gran16k: self.gran16k,
            gran64k: self.gran64k,
            ias_bits: self.oas_bits,
            oas_bits: self.oas_bits,
        }
    }

    /// The translation-table formats advertised (AArch64 only).
    pub fn ttf(&self) -> Ttf {
        Ttf::AArch64
    }
}

impl Default for VsmmuPolicy {
    /// A conservative policy: 4K and 64K granules, 8-bit SSIDs, 16-bit
    /// ASIDs, 40-bit IPA space, RIL off, coherent, MSIs.
    fn default() -> Self {
        Self {
            ssid_bits: 8,
            sid_bits: 16,
            asid16: true,
            cd2l: true,
            cohacc: true,
            httu: 0,
            msi: true,
            ril: false,
            gran4k: true,
            gran16k: false,
            gran64k: true,
            oas_bits: 40,
            cmdqs: Self::DEFAULT_QS,
            evtqs: Self::DEFAULT_QS,
        }
    }
}

/// Rounds a number of address bits down to an architected OAS size
/// (IDR5.OAS, §6.3.6); below 32 gives 32.
pub fn round_oas_bits(bits: u8) -> u8 {
    const SIZES: [u8; 7] = [52, 48, 44, 42, 40, 36, 32];
    SIZES.iter().copied().find(|&s| s <= bits).unwrap_or(32)
}
