//! The hypervisor's own EL2 stage-1 translation: an identity map built with
//! `aarch64-paging`, code read-only-executable, everything else execute-never,
//! devices Device-nGnRE. WXN is set so nothing writable is ever executable.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    ReadWriteable, Readable, Writeable, ID_AA64MMFR0_EL1, MAIR_EL2, SCTLR_EL2, TCR_EL2, TTBR0_EL2,
};
use aarch64_paging::descriptor::El23Attributes;
use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{El2, MemoryRegion};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::{Mutex, Once};

/// MAIR index 0: Device-nGnRE; index 1: Normal, write-back read/write-allocate.
const MAIR_VALUE: u64 = 0x04 | (0xff << 8);

/// Memory types of an EL2 mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Code: read-only, executable.
    Code,
    /// Constants: read-only, execute-never.
    ReadOnly,
    /// Data: read-write, execute-never.
    Data,
    /// Device registers: Device-nGnRE, read-write, execute-never.
    Device,
}

impl Mapping {
    fn attributes(self) -> El23Attributes {
        let normal = El23Attributes::VALID
            | El23Attributes::ACCESSED
            | El23Attributes::USER_RES1
            | El23Attributes::ATTRIBUTE_INDEX_1
            | El23Attributes::INNER_SHAREABLE;
        match self {
            Self::Code => normal | El23Attributes::READ_ONLY,
            Self::ReadOnly => normal | El23Attributes::READ_ONLY | El23Attributes::XN,
            Self::Data => normal | El23Attributes::XN,
            Self::Device => {
                El23Attributes::VALID
                    | El23Attributes::ACCESSED
                    | El23Attributes::USER_RES1
                    | El23Attributes::ATTRIBUTE_INDEX_0
                    | El23Attributes::XN
            }
        }
    }
}

/// Errors from mapping.
#[derive(Debug)]
pub struct MapError(aarch64_paging::MapError);

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "EL2 map failed: {}", self.0)
    }
}

static IDMAP: Once<Mutex<IdMap<El2>>> = Once::new();
static TCR: AtomicU64 = AtomicU64::new(0);
static TTBR: AtomicU64 = AtomicU64::new(0);

fn idmap() -> &'static Mutex<IdMap<El2>> {
    IDMAP.call_once(|| Mutex::new(IdMap::new(0, El2)))
}

/// Maps `[start, end)` (rounded out to pages) with identity addresses.
pub fn map(start: u64, end: u64, kind: Mapping) -> Result<(), MapError> {
    let start = start & !0xfff;
    let end = (end + 0xfff) & !0xfff;
    idmap()
        .lock()
        .map_range(
            &MemoryRegion::new(start as usize, end as usize),
            kind.attributes(),
        )
        .map_err(MapError)
}

/// TCR_EL2 for a 48-bit identity map with 4 KiB pages, cacheable walks and
/// the physical address size this CPU implements (at most 48 bits).
pub fn tcr_value(parange: u64) -> u64 {
    let ps = parange.min(5);
    let t0sz = 16;
    let irgn0 = 1 << 8; // write-back read/write-allocate
    let orgn0 = 1 << 10;
    let sh0 = 3 << 12; // inner shareable
    let res1 = (1 << 31) | (1 << 23);
    t0sz | irgn0 | orgn0 | sh0 | (ps << 16) | res1
}

/// Activates the identity map on the boot CPU and turns on the MMU and caches.
///
/// # Safety
///
/// Everything the hypervisor touches from now on (image, stacks, heap, DTB,
/// devices in use) must already be mapped with `map`.
pub unsafe fn enable_primary() {
    let tcr = tcr_value(ID_AA64MMFR0_EL1.get() & 0xf);
    TCR.store(tcr, Ordering::SeqCst);
    MAIR_EL2.set(MAIR_VALUE);
    TCR_EL2.set(tcr);
    barrier::isb(barrier::SY);
    let mut map = idmap().lock();
    // SAFETY: the caller mapped everything in use; the map lives in a static
    // and is never dropped or deactivated.
    unsafe { map.activate() };
    TTBR.store(TTBR0_EL2.get(), Ordering::SeqCst);
    drop(map);
    // SAFETY: the caller guarantees the mapping covers all memory in use.
    unsafe { turn_on() };
}

/// Uses the boot CPU's tables on a secondary CPU.
///
/// # Safety
///
/// `enable_primary` has run.
pub unsafe fn enable_secondary() {
    MAIR_EL2.set(MAIR_VALUE);
    TCR_EL2.set(TCR.load(Ordering::SeqCst));
    TTBR0_EL2.set(TTBR.load(Ordering::SeqCst));
    barrier::isb(barrier::SY);
    // SAFETY: same tables as the boot CPU, which cover everything in use.
    unsafe { turn_on() };
}

/// # Safety
///
/// TTBR0/TCR/MAIR describe a map of everything in use.
unsafe fn turn_on() {
    // SAFETY: invalidating EL2 TLB entries cannot break memory safety.
    unsafe { core::arch::asm!("tlbi alle2", "dsb ish", "isb", options(nostack)) };
    SCTLR_EL2.modify(
        SCTLR_EL2::M::Enable
            + SCTLR_EL2::C::Cacheable
            + SCTLR_EL2::I::Cacheable
            + SCTLR_EL2::SA::Enable
            + SCTLR_EL2::WXN::Enable,
    );
    barrier::isb(barrier::SY);
}
