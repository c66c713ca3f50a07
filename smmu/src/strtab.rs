//! The stream table (IHI 0070 §3.3.1, L1STD §5.1, SMMU_STRTAB_BASE(_CFG)
//! §6.3.24-25): where the SMMU finds the STE of each StreamID.
//!
//! The driver builds it once at boot, before SMMUEN: linear (one array of
//! 2^SIDSIZE STEs) or 2-level (an array of L1 descriptors, each pointing to a
//! level 2 array of 2^[`SPLIT`] STEs, allocated when a StreamID in its range
//! is first used). Every STE starts as [`Ste::abort`] and every level 2 range
//! without a table is invalid, so a stream nobody configured aborts.

use crate::addr::{PhysAddr, StreamId};
use crate::hw::{DmaRegion, OutOfMemory, PageAllocator};
use crate::ste::{update_plan, Ste, UpdateStep, STE_WORDS};
use alloc::collections::BTreeMap;
use tock_registers::{register_bitfields, LocalRegisterCopy};

register_bitfields![u64,
    /// L1STD, §5.1.
    pub L1STD [
        /// Span, bits \[4:0\] (§5.1): the level 2 array holds 2^(Span-1) STEs;
        /// 0: invalid.
        SPAN OFFSET(0) NUMBITS(5) [],
        /// L2Ptr, bits \[55:6\] (§5.1): the level 2 array, address bits \[55:6\].
        L2PTR OFFSET(6) NUMBITS(50) []
    ],
    /// SMMU_STRTAB_BASE, §6.3.24.
    pub STRTAB_BASE [
        /// ADDR, bits \[55:6\]: table base, address bits \[55:6\].
        ADDR OFFSET(6) NUMBITS(50) [],
        /// RA, bit \[62\]: read-allocate hint.
        RA OFFSET(62) NUMBITS(1) []
    ]
];

register_bitfields![u32,
    /// SMMU_STRTAB_BASE_CFG, §6.3.25.
    pub STRTAB_BASE_CFG [
        /// LOG2SIZE, bits \[5:0\]: the table covers 2^LOG2SIZE StreamIDs.
        LOG2SIZE OFFSET(0) NUMBITS(6) [],
        /// SPLIT, bits \[10:6\]: StreamID bits indexing a level 2 array.
        SPLIT OFFSET(6) NUMBITS(5) [],
        /// FMT, bits \[17:16\]: 0 linear, 1 2-level.
        FMT OFFSET(16) NUMBITS(2) []
    ]
];

/// StreamID bits resolved by a level 2 array (SPLIT = 8: 256 STEs, 16 KiB,
/// as Linux uses).
pub const SPLIT: u8 = 8;

/// STEs in a level 2 array.
const L2_STES: usize = 1 << SPLIT;

/// Bytes of a level 2 array (also its alignment: §5.1 L2Ptr).
const L2_BYTES: usize = L2_STES * STE_BYTES;

const STE_BYTES: usize = STE_WORDS * 8;

/// Largest level 1 table: 2^17 descriptors (1 MiB), the same cap as Linux.
/// The architecture only asks that the table be aligned to its size
/// (SMMU_STRTAB_BASE.ADDR); a bigger one would be an unreasonable
/// physically contiguous allocation. With SPLIT = 8 this covers 25
/// StreamID bits; higher StreamIDs are out of range and abort.
pub const MAX_L1_BITS: u8 = 17;

/// Largest linear table: 2^16 STEs (4 MiB). SMMUs with more than 64
/// StreamIDs must support 2-level tables (§3.3.1.2).
pub const MAX_LINEAR_SID_BITS: u8 = 16;

/// A level 1 stream table descriptor (§5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct L1Std(pub u64);

const _: () = assert!(core::mem::size_of::<L1Std>() == 8);

impl L1Std {
    /// Span == 0: every StreamID of the range is invalid (C_BAD_STREAMID).
    pub const fn invalid() -> Self {
        Self(0)
    }

    /// A descriptor for a level 2 array of 2^(`span` - 1) STEs at `l2`.
    pub fn new(l2: PhysAddr, span: u8) -> Self {
        let mut reg = LocalRegisterCopy::<u64, L1STD::Register>::new(0);
        reg.modify(L1STD::SPAN.val(u64::from(span)) + L1STD::L2PTR.val(l2.raw() >> 6));
        Self(reg.get())
    }

    /// Span, bits \[4:0\].
    pub fn span(&self) -> u8 {
        LocalRegisterCopy::<u64, L1STD::Register>::new(self.0).read(L1STD::SPAN) as u8
    }

    /// L2Ptr, bits \[55:6\].
    pub fn l2ptr(&self) -> PhysAddr {
        PhysAddr(LocalRegisterCopy::<u64, L1STD::Register>::new(self.0).read(L1STD::L2PTR) << 6)
    }

    /// Whether the SMMU follows it: Span in 1..=11 (12..=31 are reserved
    /// and behave as 0).
    pub fn valid(&self) -> bool {
        (1..=11).contains(&self.span())
    }
}

/// SMMU_STRTAB_BASE_CFG.FMT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrtabFmt {
    /// 0b00: an array of STEs.
    Linear,
    /// 0b01: an array of L1STDs.
    TwoLevel,
}

/// What the driver programs into SMMU_STRTAB_BASE and SMMU_STRTAB_BASE_CFG
/// (with SMMUEN == 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrtabBaseCfg {
    /// The linear table or the level 1 table (aligned to its size).
    pub base: PhysAddr,
    /// Read-allocate hint for table fetches.
    pub ra: bool,
    /// Table format.
    pub fmt: StrtabFmt,
    /// Split point (meaningful for 2-level tables).
    pub split: u8,
    /// The table covers StreamIDs below 2^log2size.
    pub log2size: u8,
}

impl StrtabBaseCfg {
    /// The SMMU_STRTAB_BASE value.
    pub fn base_value(&self) -> u64 {
        let mut reg = LocalRegisterCopy::<u64, STRTAB_BASE::Register>::new(0);
        reg.modify(
            STRTAB_BASE::ADDR.val(self.base.raw() >> 6) + STRTAB_BASE::RA.val(u64::from(self.ra)),
        );
        reg.get()
    }

    /// The SMMU_STRTAB_BASE_CFG value.
    pub fn cfg_value(&self) -> u32 {
        let fmt = match self.fmt {
            StrtabFmt::Linear => 0,
            StrtabFmt::TwoLevel => 1,
        };
        let mut reg = LocalRegisterCopy::<u32, STRTAB_BASE_CFG::Register>::new(0);
        reg.modify(
            STRTAB_BASE_CFG::LOG2SIZE.val(u32::from(self.log2size))
                + STRTAB_BASE_CFG::SPLIT.val(u32::from(self.split))
                + STRTAB_BASE_CFG::FMT.val(fmt),
        );
        reg.get()
    }
}

/// Stream table errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StrtabError {
    /// The StreamID is not covered by the table.
    #[error("StreamID {0} out of range of the stream table")]
    OutOfRange(StreamId),
    /// The StreamID's level 2 array has not been allocated (call `ensure`).
    #[error("no level 2 stream table for StreamID {0}")]
    NotAllocated(StreamId),
    /// A linear table of this many StreamID bits is not supported.
    #[error("unsupported stream table size ({0} StreamID bits)")]
    UnsupportedSize(u8),
    /// Memory for a table could not be allocated.
    #[error("out of memory for the stream table")]
    OutOfMemory(OutOfMemory),
}

impl From<OutOfMemory> for StrtabError {
    fn from(e: OutOfMemory) -> Self {
        Self::OutOfMemory(e)
    }
}

enum Layout {
    Linear(DmaRegion),
    TwoLevel {
        l1: DmaRegion,
        l2: BTreeMap<u32, DmaRegion>,
    },
}

/// A stream table in memory shared with the SMMU.
///
/// It owns its memory but cannot free it on drop (the allocator is not
/// reachable): call [`StreamTable::destroy`].
pub struct StreamTable {
    layout: Layout,
    log2size: u8,
}

impl core::fmt::Debug for StreamTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.layout {
            Layout::Linear(r) => write!(f, "StreamTable(linear {r:?}, {} bits)", self.log2size),
            Layout::TwoLevel { l1, l2 } => write!(
                f,
                "StreamTable(2-level {l1:?}, {} bits, {} level 2 arrays)",
                self.log2size,
                l2.len()
            ),
        }
    }
}

/// Writes `Ste::abort()` into every STE of `region` (fresh memory is zero,
/// so only word 0 needs writing).
fn fill_abort(alloc: &dyn PageAllocator, region: &DmaRegion, stes: usize) {
    let abort = Ste::abort();
    for i in 0..stes {
        region.write_words(i * STE_WORDS, &abort.0);
    }
    alloc.sync_for_device(region.pa(), stes * STE_BYTES);
}

impl StreamTable {
    /// Builds a table for `sid_bits` StreamID bits (SMMU_IDR1.SIDSIZE):
    /// linear, or 2-level with [`SPLIT`] (only when SMMU_IDR0.ST_LEVEL says
    /// so). Every STE of a linear table is [`Ste::abort`]; every level 1
    /// descriptor of a 2-level table is invalid.
    pub fn new(
        alloc: &dyn PageAllocator,
        sid_bits: u8,
        two_level: bool,
    ) -> Result<Self, StrtabError> {
        if sid_bits > 32 {
            return Err(StrtabError::UnsupportedSize(sid_bits));
        }
        if !two_level {
            if sid_bits > MAX_LINEAR_SID_BITS {
                return Err(StrtabError::UnsupportedSize(sid_bits));
            }
            let stes = 1usize << sid_bits;
            let bytes = stes * STE_BYTES;
            let region = DmaRegion::alloc(alloc, bytes, bytes)?;
            fill_abort(alloc, &region, stes);
            return Ok(Self {
                layout: Layout::Linear(region),
                log2size: sid_bits,
            });
        }
        let log2size = sid_bits.min(SPLIT + MAX_L1_BITS);
        let l1_entries = 1usize << log2size.saturating_sub(SPLIT);
        let bytes = l1_entries * 8;
        let l1 = DmaRegion::alloc(alloc, bytes, bytes)?;
        alloc.sync_for_device(l1.pa(), bytes);
        Ok(Self {
            layout: Layout::TwoLevel {
                l1,
                l2: BTreeMap::new(),
            },
            log2size,
        })
    }

    /// The table covers StreamIDs below 2^log2size.
    pub fn log2size(&self) -> u8 {
        self.log2size
    }

    /// The register values that make the SMMU use this table.
    pub fn base_cfg(&self) -> StrtabBaseCfg {
        let (base, fmt) = match &self.layout {
            Layout::Linear(r) => (r.pa(), StrtabFmt::Linear),
            Layout::TwoLevel { l1, .. } => (l1.pa(), StrtabFmt::TwoLevel),
        };
        StrtabBaseCfg {
            base,
            ra: true,
            fmt,
            split: SPLIT,
            log2size: self.log2size,
        }
    }

    fn check(&self, sid: StreamId) -> Result<(), StrtabError> {
        if u64::from(sid.0) >> self.log2size != 0 {
            return Err(StrtabError::OutOfRange(sid));
        }
        Ok(())
    }

    /// Makes the STE of `sid` exist: for a 2-level table, allocates the
    /// level 2 array of its range (every STE [`Ste::abort`]) and then
    /// publishes it in the level 1 descriptor with one 64-bit write.
    ///
    /// Returns whether a level 2 array was added; if so, the SMMU may still
    /// hold the old invalid descriptor, and the caller issues CMD_CFGI_STE
    /// with Leaf == 0 for `sid` and CMD_SYNC (§5.1.1) before relying on it.
    pub fn ensure(
        &mut self,
        alloc: &dyn PageAllocator,
        sid: StreamId,
    ) -> Result<bool, StrtabError> {
        self.check(sid)?;
        let Layout::TwoLevel { l1, l2 } = &mut self.layout else {
            return Ok(false);
        };
        let index = sid.0 >> SPLIT;
        if l2.contains_key(&index) {
            return Ok(false);
        }
        let region = DmaRegion::alloc(alloc, L2_BYTES, L2_BYTES)?;
        fill_abort(alloc, &region, L2_STES);
        let desc = L1Std::new(region.pa(), SPLIT + 1);
        l1.write(index as usize, desc.0);
        alloc.sync_for_device(PhysAddr(l1.pa().raw() + u64::from(index) * 8), 8);
        l2.insert(index, region);
        Ok(true)
    }

    /// The level 1 descriptor at `index` (2-level tables only).
    pub fn l1_descriptor(&self, index: u32) -> Option<L1Std> {
        match &self.layout {
            Layout::TwoLevel { l1, .. } if (index as usize) < l1.words() => {
                Some(L1Std(l1.read(index as usize)))
            }
            _ => None,
        }
    }

    /// The region and word index of the STE of `sid`; `None` if its level 2
    /// array does not exist.
    fn slot(&self, sid: StreamId) -> Result<Option<(&DmaRegion, usize)>, StrtabError> {
        self.check(sid)?;
        Ok(match &self.layout {
            Layout::Linear(r) => Some((r, sid.0 as usize * STE_WORDS)),
            Layout::TwoLevel { l2, .. } => l2
                .get(&(sid.0 >> SPLIT))
                .map(|r| (r, (sid.0 as usize & (L2_STES - 1)) * STE_WORDS)),
        })
    }

    fn slot_present(&self, sid: StreamId) -> Result<(&DmaRegion, usize), StrtabError> {
        self.slot(sid)?.ok_or(StrtabError::NotAllocated(sid))
    }

    /// The physical address of the STE of `sid`; `None` if its level 2 array
    /// does not exist.
    pub fn ste_addr(&self, sid: StreamId) -> Result<Option<PhysAddr>, StrtabError> {
        Ok(self
            .slot(sid)?
            .map(|(r, word)| PhysAddr(r.pa().raw() + (word * 8) as u64)))
    }

    /// The STE of `sid` as in memory; `None` if its level 2 array does not
    /// exist (the SMMU then aborts the stream).
    pub fn read_ste(&self, sid: StreamId) -> Result<Option<Ste>, StrtabError> {
        Ok(self.slot(sid)?.map(|(r, word)| {
            let mut ste = Ste::invalid();
            r.read_words(word, &mut ste.0);
            ste
        }))
    }

    /// Writes `ste` for `sid` in the order of [`update_plan`] without
    /// waiting in between: word 0 last when the entry becomes live, first
    /// when it stops being live. The caller then issues CMD_CFGI_STE and
    /// CMD_SYNC.
    ///
    /// This alone is enough while the SMMU cannot use the entry (SMMUEN ==
    /// 0, or a level 2 array just created by [`ensure`](Self::ensure)) or
    /// when it changes a single word; otherwise use
    /// [`update_ste`](Self::update_ste), which synchronises where §3.21.3
    /// requires.
    pub fn write_ste(
        &self,
        alloc: &dyn PageAllocator,
        sid: StreamId,
        ste: &Ste,
    ) -> Result<(), StrtabError> {
        let (region, base) = self.slot_present(sid)?;
        let mut old = Ste::invalid();
        region.read_words(base, &mut old.0);
        for step in update_plan(&old, ste).steps() {
            if let UpdateStep::Write { word, value } = *step {
                region.write(base + word as usize, value);
            }
        }
        alloc.sync_for_device(PhysAddr(region.pa().raw() + (base * 8) as u64), STE_BYTES);
        Ok(())
    }

    /// Rewrites the live STE of `sid` following [`update_plan`], calling
    /// `sync(sid)` at every synchronisation point (it issues CMD_CFGI_STE
    /// for `sid` and CMD_SYNC and waits), including after the last write.
    pub fn update_ste<E: From<StrtabError>>(
        &self,
        alloc: &dyn PageAllocator,
        sid: StreamId,
        ste: &Ste,
        mut sync: impl FnMut(StreamId) -> Result<(), E>,
    ) -> Result<(), E> {
        let (region, base) = self.slot_present(sid)?;
        let pa = PhysAddr(region.pa().raw() + (base * 8) as u64);
        let mut old = Ste::invalid();
        region.read_words(base, &mut old.0);
        for step in update_plan(&old, ste).steps() {
            match *step {
                UpdateStep::Write { word, value } => region.write(base + word as usize, value),
                UpdateStep::Sync => {
                    alloc.sync_for_device(pa, STE_BYTES);
                    sync(sid)?;
                }
            }
        }
        Ok(())
    }

    /// Frees every table.
    ///
    /// # Safety
    ///
    /// `alloc` is the allocator the table was built with, and the SMMU no
    /// longer uses it: SMMUEN == 0 (or SMMU_STRTAB_BASE points elsewhere)
    /// and CMD_CFGI_ALL + CMD_SYNC completed since.
    pub unsafe fn destroy(self, alloc: &dyn PageAllocator) {
        match self.layout {
            // SAFETY: forwarded from the caller: the region came from
            // `alloc` and the SMMU no longer reads it.
            Layout::Linear(r) => unsafe { r.free(alloc) },
            Layout::TwoLevel { l1, l2 } => {
                for (_, r) in l2 {
                    // SAFETY: as above, for each level 2 array.
                    unsafe { r.free(alloc) };
                }
                // SAFETY: as above, for the level 1 table.
                unsafe { l1.free(alloc) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Ipa, Vmid};
    use crate::fake::FakeMemory;
    use crate::hw::PAGE_SIZE;
    use crate::ste::{Eats, Granule, S1Config, S1Dss, S1Fmt, S2Config};
    use alloc::vec::Vec;

    fn s2(vmid: u16, ttb: u64) -> S2Config {
        S2Config {
            vmid: Vmid(vmid),
            ttb: PhysAddr(ttb),
            t0sz: 24,
            sl0: 1,
            granule: Granule::Size4K,
            ps: 4,
            ir0: 1,
            or0: 1,
            sh0: 3,
            affd: true,
        }
    }

    #[test]
    fn linear_table_aborts_by_default() {
        let mem = FakeMemory::new();
        let t = StreamTable::new(&mem, 6, false).unwrap();
        assert_eq!(mem.pages_in_use(), 1, "64 STEs are one page");
        for sid in 0..64 {
            assert_eq!(t.read_ste(StreamId(sid)), Ok(Some(Ste::abort())));
        }
        let cfg = t.base_cfg();
        assert_eq!(cfg.fmt, StrtabFmt::Linear);
        assert_eq!(cfg.log2size, 6);
        assert_eq!(cfg.cfg_value(), 6 | (8 << 6));
        assert_eq!(cfg.base_value(), cfg.base.raw() | (1 << 62));
        assert!(cfg.base.is_aligned(4096));
        assert_eq!(
            t.read_ste(StreamId(64)),
            Err(StrtabError::OutOfRange(StreamId(64)))
        );
        // SAFETY: no SMMU uses the table.
        unsafe { t.destroy(&mem) };
        assert_eq!(mem.pages_in_use(), 0);
    }

    #[test]
    fn linear_lookup_and_write() {
        let mem = FakeMemory::new();
        let mut t = StreamTable::new(&mem, 10, false).unwrap();
        assert_eq!(mem.pages_in_use(), 16);
        assert!(
            t.base_cfg().base.is_aligned(64 * 1024),
            "aligned to its size"
        );
        assert_eq!(t.ensure(&mem, StreamId(1023)), Ok(false));
        let ste = Ste::stage2(&s2(5, 0x8000_0000));
        t.write_ste(&mem, StreamId(513), &ste).unwrap();
        assert_eq!(t.read_ste(StreamId(513)), Ok(Some(ste)));
        assert_eq!(t.read_ste(StreamId(512)), Ok(Some(Ste::abort())));
        assert_eq!(
            t.ste_addr(StreamId(513)),
            Ok(Some(PhysAddr(t.base_cfg().base.raw() + 513 * 64)))
        );
        assert_eq!(
            t.write_ste(&mem, StreamId(1024), &ste),
            Err(StrtabError::OutOfRange(StreamId(1024)))
        );
        assert_eq!(
            StreamTable::new(&mem, 17, false).unwrap_err(),
            StrtabError::UnsupportedSize(17)
        );
        // SAFETY: no SMMU uses the table.
        unsafe { t.destroy(&mem) };
        assert_eq!(mem.pages_in_use(), 0);
    }

    #[test]
    fn two_level_allocates_on_demand() {
        let mem = FakeMemory::new();
        let mut t = StreamTable::new(&mem, 16, true).unwrap();
        let cfg = t.base_cfg();
        assert_eq!(cfg.fmt, StrtabFmt::TwoLevel);
        assert_eq!(cfg.cfg_value(), 16 | (8 << 6) | (1 << 16));
        assert_eq!(mem.pages_in_use(), 1, "256 L1STDs: 2 KiB");
        let sid = StreamId(0x1234);
        assert_eq!(t.read_ste(sid), Ok(None));
        assert_eq!(t.l1_descriptor(0x12), Some(L1Std::invalid()));
        assert_eq!(
            t.write_ste(&mem, sid, &Ste::abort()),
            Err(StrtabError::NotAllocated(sid))
        );

        assert_eq!(t.ensure(&mem, sid), Ok(true));
        assert_eq!(mem.pages_in_use(), 1 + L2_BYTES / PAGE_SIZE);
        assert_eq!(t.ensure(&mem, StreamId(0x12ff)), Ok(false), "same range");
        let desc = t.l1_descriptor(0x12).unwrap();
        assert!(desc.valid());
        assert_eq!(desc.span(), 9);
        assert!(desc.l2ptr().is_aligned(L2_BYTES as u64));
        for low in 0..256 {
            assert_eq!(t.read_ste(StreamId(0x1200 + low)), Ok(Some(Ste::abort())));
        }
        // The SMMU's walk: L1STD, then the STE at L2Ptr + (sid % 256) * 64.
        assert_eq!(
            t.ste_addr(sid),
            Ok(Some(PhysAddr(desc.l2ptr().raw() + 0x34 * 64)))
        );
        assert!(mem.contains(desc.l2ptr(), L2_BYTES));
        let ste = Ste::stage2(&s2(9, 0x4000_0000));
        t.write_ste(&mem, sid, &ste).unwrap();
        assert_eq!(t.read_ste(sid), Ok(Some(ste)));
        assert_eq!(t.read_ste(StreamId(0x1235)), Ok(Some(Ste::abort())));
        assert_eq!(
            t.read_ste(StreamId(0x1334)),
            Ok(None),
            "neighbour range untouched"
        );
        assert_eq!(
            t.ensure(&mem, StreamId(0x1_0000)),
            Err(StrtabError::OutOfRange(StreamId(0x1_0000)))
        );

        t.ensure(&mem, StreamId(0)).unwrap();
        t.ensure(&mem, StreamId(0xffff)).unwrap();
        assert_eq!(mem.pages_in_use(), 1 + 3 * L2_BYTES / PAGE_SIZE);
        // SAFETY: no SMMU uses the table.
        unsafe { t.destroy(&mem) };
        assert_eq!(mem.pages_in_use(), 0);
    }

    #[test]
    fn huge_sid_space_is_capped() {
        let mem = FakeMemory::new();
        let mut t = StreamTable::new(&mem, 32, true).unwrap();
        assert_eq!(t.log2size(), SPLIT + MAX_L1_BITS);
        assert_eq!(mem.pages_in_use(), (8 << MAX_L1_BITS) / PAGE_SIZE);
        assert!(t.base_cfg().base.is_aligned(8 << MAX_L1_BITS));
        let last = StreamId((1 << 25) - 1);
        assert_eq!(t.ensure(&mem, last), Ok(true));
        assert_eq!(
            t.ensure(&mem, StreamId(1 << 25)),
            Err(StrtabError::OutOfRange(StreamId(1 << 25)))
        );
        // SAFETY: no SMMU uses the table.
        unsafe { t.destroy(&mem) };
        assert_eq!(mem.pages_in_use(), 0);
        assert!(StreamTable::new(&mem, 33, true).is_err());
    }

    #[test]
    fn small_two_level_table() {
        let mem = FakeMemory::new();
        let mut t = StreamTable::new(&mem, 5, true).unwrap();
        assert_eq!(t.base_cfg().log2size, 5);
        assert!(t.ensure(&mem, StreamId(31)).unwrap());
        assert!(t.ensure(&mem, StreamId(32)).is_err());
        // SAFETY: no SMMU uses the table.
        unsafe { t.destroy(&mem) };
        assert_eq!(mem.pages_in_use(), 0);
    }

    #[test]
    fn allocation_failure_leaves_the_range_invalid() {
        let mem = FakeMemory::with_limit(2);
        let mut t = StreamTable::new(&mem, 16, true).unwrap();
        assert_eq!(
            t.ensure(&mem, StreamId(7)),
            Err(StrtabError::OutOfMemory(OutOfMemory))
        );
        assert_eq!(t.l1_descriptor(0), Some(L1Std::invalid()));
        assert_eq!(t.read_ste(StreamId(7)), Ok(None));
        mem.set_limit(None);
        assert_eq!(t.ensure(&mem, StreamId(7)), Ok(true));
        // SAFETY: no SMMU uses the table.
        unsafe { t.destroy(&mem) };
        assert_eq!(mem.pages_in_use(), 0);
        assert!(StreamTable::new(&FakeMemory::with_limit(0), 6, false).is_err());
    }

    #[test]
    fn update_ste_syncs_between_steps() {
        let mem = FakeMemory::new();
        let mut t = StreamTable::new(&mem, 16, true).unwrap();
        let sid = StreamId(0x42);
        t.ensure(&mem, sid).unwrap();
        let old = Ste::stage2(&s2(1, 0x1000));
        let mut syncs = 0;
        t.update_ste(&mem, sid, &old, |s| {
            assert_eq!(s, sid);
            syncs += 1;
            Ok::<(), StrtabError>(())
        })
        .unwrap();
        assert_eq!(syncs, 2, "abort -> live: others, sync, word 0, sync");
        assert_eq!(t.read_ste(sid).unwrap(), Some(old));

        // Live -> live with VMID and TTB changing: the SMMU sees abort first.
        let new = Ste::stage2(&s2(2, 0x2000));
        let mut seen: Vec<Ste> = Vec::new();
        t.update_ste(&mem, sid, &new, |_| {
            seen.push(t.read_ste(sid).unwrap().unwrap());
            Ok::<(), StrtabError>(())
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert!(!seen[0].is_live() && !seen[1].is_live());
        assert_eq!(seen[2], new);

        // Guest turns on stage 1: hitless, word 0 last.
        let s1 = S1Config {
            ctx_ptr: Ipa(0x4000),
            s1fmt: S1Fmt::Linear,
            s1cdmax: 0,
            s1dss: S1Dss::Terminate,
            s1cir: 1,
            s1cor: 1,
            s1csh: 3,
            s1stalld: true,
            eats: Eats::Abort,
        };
        let nested = Ste::nested(&s2(2, 0x2000), &s1);
        let mut seen: Vec<Ste> = Vec::new();
        t.update_ste(&mem, sid, &nested, |_| {
            seen.push(t.read_ste(sid).unwrap().unwrap());
            Ok::<(), StrtabError>(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0].0[0], new.0[0],
            "still stage 2 only at the first sync"
        );
        assert_eq!(seen[1], nested);

        // A failing sync stops the sequence and is reported.
        let r = t.update_ste(&mem, sid, &Ste::abort(), |_| {
            Err(StrtabError::NotAllocated(sid))
        });
        assert_eq!(r, Err(StrtabError::NotAllocated(sid)));
        assert!(
            !t.read_ste(sid).unwrap().unwrap().is_live(),
            "word 0 went first"
        );
        // SAFETY: no SMMU uses the table.
        unsafe { t.destroy(&mem) };
        assert_eq!(mem.pages_in_use(), 0);
    }
}
