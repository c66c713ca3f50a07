//! VMSAv8-64 stage-2 translation tables with the 4 KiB granule.
//!
//! One [`Stage2`] is one VM's IPA -> PA address space. The SMMU walks it for
//! every device assigned to the VM (STE.S2TTB and friends come from
//! [`Stage2::config`]); the CPU's stage 2 can use the same tables (VTTBR_EL2,
//! VTCR_EL2), the descriptor format being the same (Arm ARM DDI 0487, D8).
//!
//! Every operation either completes or leaves the tables exactly as they
//! were: the tables an operation needs (new tables for `map`, split tables for
//! `unmap`/`protect`) are counted and allocated before the first descriptor
//! is written. Changes to live entries follow break-before-make as far as the
//! tables can: an entry is made invalid before it is replaced by one that
//! differs in more than permissions, and the [`Invalidation`] returned says
//! which IPA ranges the caller must invalidate in the TLBs. Table pages that
//! become empty are unlinked at once but handed to the caller for freeing
//! after the invalidation, since the SMMU's walk caches may still point at
//! them.
//!
//! A software shadow of the tree (one [`DmaRegion`] per table plus the child
//! tables) is kept next to the descriptors, so that walking never needs to
//! turn a physical address back into a pointer.

mod desc;
mod inval;
#[cfg(test)]
mod tests;

pub use inval::{Invalidation, TlbRange};

use crate::addr::{Ipa, PhysAddr};
use crate::hw::{DmaRegion, OutOfMemory, PageAllocator, PAGE_SIZE};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use desc::Entry;

/// Descriptors per 4 KiB table.
const ENTRIES: usize = PAGE_SIZE / 8;
/// Most tables that may be concatenated at the starting level of stage 2
/// (Arm ARM D8.2.2 "Concatenated translation tables").
const MAX_CONCATENATED: usize = 16;
/// Smallest IPA size accepted (a 32-bit PA space is the smallest any SMMU or
/// CPU reports).
pub const MIN_IPA_BITS: u32 = 32;
/// Largest IPA size accepted with the 4 KiB granule without FEAT_LPA2.
pub const MAX_IPA_BITS: u32 = 48;

/// Bit position of the lowest IPA bit a descriptor at `level` resolves.
const fn shift(level: u8) -> u32 {
    12 + 9 * (3 - level as u32)
}

/// Bytes covered by one descriptor at `level`.
const fn entry_size(level: u8) -> u64 {
    1 << shift(level)
}

/// Memory type of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemType {
    /// Normal memory, inner and outer Write-Back cacheable, Inner Shareable
    /// (MemAttr = 0b1111, SH = 0b11): guest RAM.
    Normal,
    /// Device-nGnRE (MemAttr = 0b0001): MMIO passed through to the guest.
    Device,
}

/// Stage-2 attributes of a mapping: S2AP, XN and MemAttr/SH of the
/// descriptor (Arm ARM D8.4, D8.5). The access flag is always set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct S2Attrs {
    /// Reads permitted (S2AP[0]).
    pub read: bool,
    /// Writes permitted (S2AP[1]).
    pub write: bool,
    /// Instruction fetches permitted (XN = 0).
    pub exec: bool,
    /// Memory type.
    pub mem: MemType,
}

impl S2Attrs {
    /// Guest RAM, read/write, not executable: what DMA needs.
    pub const NORMAL_RW: Self = Self {
        read: true,
        write: true,
        exec: false,
        mem: MemType::Normal,
    };
    /// Guest RAM, read/write/execute: what a vCPU needs.
    pub const NORMAL_RWX: Self = Self {
        exec: true,
        ..Self::NORMAL_RW
    };
    /// Guest RAM, read-only, not executable.
    pub const NORMAL_RO: Self = Self {
        write: false,
        ..Self::NORMAL_RW
    };
    /// Device MMIO, read/write, never executable.
    pub const DEVICE_RW: Self = Self {
        read: true,
        write: true,
        exec: false,
        mem: MemType::Device,
    };
}

/// Stage-2 configuration as the SMMU's STE and the CPU's VTCR_EL2/VTTBR_EL2
/// want it (4 KiB granule: STE.S2TG = VTCR_EL2.TG0 = 0b00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Config {
    /// STE.S2T0SZ / VTCR_EL2.T0SZ: 64 - IPA bits.
    pub t0sz: u8,
    /// STE.S2SL0 / VTCR_EL2.SL0 for the 4 KiB granule: 0b00 = start at level
    /// 2, 0b01 = level 1, 0b10 = level 0.
    pub sl0: u8,
    /// STE.S2PS / VTCR_EL2.PS: output size, 0b000 = 32 bits, 0b001 = 36,
    /// 0b010 = 40, 0b011 = 42, 0b100 = 44, 0b101 = 48.
    pub ps: u8,
    /// The level the walk starts at (what `sl0` encodes).
    pub start_level: u8,
    /// Number of concatenated tables at the starting level (1..=16).
    pub concatenated: u8,
    /// STE.S2TTB / VTTBR_EL2.BADDR: the root, aligned to its size.
    pub root: PhysAddr,
}

/// Errors of stage-2 table operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stage2Error {
    /// The IPA size is outside [`MIN_IPA_BITS`]..=[`MAX_IPA_BITS`].
    #[error("unsupported stage-2 IPA size of {0} bits")]
    UnsupportedIpaSize(u32),
    /// The PA size has no PS encoding (32, 36, 40, 42, 44 or 48 bits).
    #[error("unsupported stage-2 output size of {0} bits")]
    UnsupportedPaSize(u32),
    /// An address or length is not a multiple of 4 KiB.
    #[error("stage-2 range is not 4 KiB aligned")]
    Unaligned,
    /// The IPA range does not fit in the configured IPA size.
    #[error("IPA range {ipa}+{len:#x} beyond the stage-2 input size")]
    IpaOutOfRange {
        /// Start of the range.
        ipa: Ipa,
        /// Length of the range.
        len: u64,
    },
    /// The PA range does not fit in the configured output size.
    #[error("PA range {pa}+{len:#x} beyond the stage-2 output size")]
    PaOutOfRange {
        /// Start of the range.
        pa: PhysAddr,
        /// Length of the range.
        len: u64,
    },
    /// `map` over an IPA that is already mapped.
    #[error("IPA {0} is already mapped")]
    Overlap(Ipa),
    /// No memory for a translation table; nothing was changed.
    #[error("out of memory for stage-2 tables")]
    OutOfMemory,
}

impl From<OutOfMemory> for Stage2Error {
    fn from(_: OutOfMemory) -> Self {
        Self::OutOfMemory
    }
}

/// Starting level and number of concatenated root tables for an IPA size,
/// 4 KiB granule (Arm ARM D8.2.2, VTCR_EL2.SL0): the deepest starting level,
/// i.e. the fewest levels per walk, whose root needs at most 16 tables.
fn start_level(ipa_bits: u32) -> (u8, usize) {
    let mut level = 2;
    loop {
        let root_entries = 1usize << ipa_bits.saturating_sub(shift(level));
        if root_entries <= MAX_CONCATENATED * ENTRIES || level == 0 {
            return (level, root_entries.div_ceil(ENTRIES));
        }
        level -= 1;
    }
}

/// PS/S2PS encoding of an output size (Arm ARM VTCR_EL2.PS).
fn ps_encoding(pa_bits: u32) -> Option<u8> {
    // 4 KiB granule without 52-bit output (FEAT_LPA2): at most 48 bits.
    let bits = u8::try_from(pa_bits).ok()?;
    crate::ste::output_size_encoding(bits).filter(|&e| e <= 0b101)
}

/// One translation table (or the concatenated root) and its software shadow.
#[derive(Debug)]
struct Table {
    mem: DmaRegion,
    /// The tables that descriptor `i` points at; empty for level 3.
    children: Vec<Option<Box<Table>>>,
    /// Number of valid descriptors.
    live: usize,
}

impl Table {
    fn new(mem: DmaRegion, level: u8, entries: usize) -> Self {
        let mut children = Vec::new();
        if level < 3 {
            children.resize_with(entries, || None);
        }
        Self {
            mem,
            children,
            live: 0,
        }
    }

    fn entry(&self, index: usize, level: u8) -> Entry {
        desc::decode(self.mem.read(index), level)
    }

    fn child(&self, index: usize) -> &Table {
        self.children[index]
            .as_deref()
            .expect("stage2: table descriptor without a shadow table")
    }

    fn child_mut(&mut self, index: usize) -> &mut Table {
        self.children[index]
            .as_deref_mut()
            .expect("stage2: table descriptor without a shadow table")
    }

    /// Makes `[lo, hi]` (descriptor indices) visible to a non-coherent SMMU.
    fn sync(&self, alloc: &dyn PageAllocator, lo: usize, hi: usize) {
        if lo <= hi {
            let pa = PhysAddr(self.mem.pa().0 + (lo * 8) as u64);
            alloc.sync_for_device(pa, (hi - lo + 1) * 8);
        }
    }

    /// Frees this table and everything below it.
    ///
    /// # Safety
    ///
    /// As [`DmaRegion::free`], for every table of the subtree.
    unsafe fn free_tree(self, alloc: &dyn PageAllocator) {
        for child in self.children.into_iter().flatten() {
            // SAFETY: forwarded from the caller.
            unsafe { child.free_tree(alloc) };
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.mem.free(alloc) };
    }
}

/// Descriptor indices `[first, last]` of a table at `level` based at `base`
/// that the non-empty range `[start, end)` touches.
fn index_span(level: u8, base: u64, start: u64, end: u64) -> (usize, usize) {
    let first = ((start - base) >> shift(level)) as usize;
    let last = ((end - 1 - base) >> shift(level)) as usize;
    (first, last)
}

/// The part of `[start, end)` that descriptor `i` of a table at `level` based
/// at `base` covers, with the descriptor's own range: (eb, ee, s, e).
fn clip(level: u8, base: u64, i: usize, start: u64, end: u64) -> (u64, u64, u64, u64) {
    let eb = base + ((i as u64) << shift(level));
    let ee = eb + entry_size(level);
    (eb, ee, start.max(eb), end.min(ee))
}

/// Whether `[s, e)`, mapped from `pa`, can be one leaf at `level`: it covers
/// the whole descriptor range `[eb, ee)`, the output is aligned, and the
/// level has leaves (no level-0 blocks with 4 KiB granule, D8.3.1) the
/// table's [`Leaves`] allow.
fn fits_leaf(leaves: Leaves, level: u8, eb: u64, ee: u64, s: u64, e: u64, pa: u64) -> bool {
    level >= leaves.first_level() && s == eb && e == ee && pa & (entry_size(level) - 1) == 0
}

/// The leaves [`Stage2::map`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Leaves {
    /// 1 GiB and 2 MiB blocks wherever the IPA, the PA and the range allow,
    /// 4 KiB pages elsewhere: the fewest tables, and the fewest TLB entries
    /// on hardware.
    #[default]
    Blocks,
    /// 4 KiB pages only. Costs a level-3 table per 2 MiB mapped. An emulator
    /// that keeps a combined stage-1+2 TLB entry at the larger of the two
    /// stages' sizes wants this: QEMU's TCG does, and flushes a whole
    /// translation regime's TLB on any by-VA invalidation inside the span
    /// its large entries cover, so block mappings under a guest that maps
    /// its kernel with pages turn each of the guest's TLBI VAE1IS into a
    /// full flush.
    Pages,
}

impl Leaves {
    /// The first level at which a leaf may be written.
    fn first_level(self) -> u8 {
        match self {
            Self::Blocks => 1,
            Self::Pages => 3,
        }
    }
}

/// Tables a split of a block, down to where `[s, e)` (a sub-range of the new
/// table at `level` based at `base`) is made of whole entries, allocates.
fn split_tables(level: u8, s: u64, e: u64) -> usize {
    let mut n = 1;
    if level < 3 {
        let size = entry_size(level);
        let first = s & !(size - 1);
        if s != first || e < first + size {
            n += split_tables(level + 1, s, e.min(first + size));
        }
        let last = (e - 1) & !(size - 1);
        if last != first && e != last + size {
            n += split_tables(level + 1, last, e);
        }
    }
    n
}

/// What `unmap`/`protect` do to each page of their range.
#[derive(Clone, Copy, Debug)]
enum Change {
    Unmap,
    Protect(S2Attrs),
}

impl Change {
    /// Whether a leaf with `old` attributes is modified.
    fn affects(self, old: S2Attrs) -> bool {
        match self {
            Change::Unmap => true,
            Change::Protect(new) => new != old,
        }
    }
}

/// A stage-2 address space: the root table(s) and everything below.
///
/// The tables are not freed on drop (the allocator is not reachable from
/// here): call [`Stage2::destroy`].
pub struct Stage2 {
    root: Table,
    leaves: Leaves,
    start_level: u8,
    concatenated: usize,
    ipa_bits: u32,
    pa_bits: u32,
    ps: u8,
}

impl fmt::Debug for Stage2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage2")
            .field("ipa_bits", &self.ipa_bits)
            .field("pa_bits", &self.pa_bits)
            .field("start_level", &self.start_level)
            .field("leaves", &self.leaves)
            .field("concatenated", &self.concatenated)
            .field("root", &self.root.mem.pa())
            .finish()
    }
}

impl Stage2 {
    /// An empty address space of `ipa_bits` input bits and `pa_bits` output
    /// bits.
    ///
    /// The caller keeps `ipa_bits` within what the hardware translates
    /// (SMMU_IDR5.OAS / IAS, the CPU's ID_AA64MMFR0_EL1.PARange) and
    /// `pa_bits` at most the hardware's output size. The root (up to 16
    /// concatenated tables) is allocated contiguous and aligned to its size,
    /// as S2TTB/VTTBR require.
    pub fn new(
        alloc: &dyn PageAllocator,
        ipa_bits: u32,
        pa_bits: u32,
    ) -> Result<Self, Stage2Error> {
        if !(MIN_IPA_BITS..=MAX_IPA_BITS).contains(&ipa_bits) {
            return Err(Stage2Error::UnsupportedIpaSize(ipa_bits));
        }
        let ps = ps_encoding(pa_bits).ok_or(Stage2Error::UnsupportedPaSize(pa_bits))?;
        let (start_level, concatenated) = start_level(ipa_bits);
        let bytes = concatenated * PAGE_SIZE;
        let mem = DmaRegion::alloc(alloc, bytes, bytes)?;
        let entries = 1usize << (ipa_bits - shift(start_level));
        let root = Table::new(mem, start_level, entries);
        root.sync(alloc, 0, root.mem.words() - 1);
        Ok(Self {
            root,
            leaves: Leaves::Blocks,
            start_level,
            concatenated,
            ipa_bits,
            pa_bits,
            ps,
        })
    }

    /// The same space, whose later [`map`](Self::map)s write `leaves`
    /// ([`Leaves::Blocks`] unless set).
    pub fn with_leaves(mut self, leaves: Leaves) -> Self {
        self.leaves = leaves;
        self
    }

    /// What the STE (S2T0SZ, S2SL0, S2PS, S2TTB) and VTCR_EL2/VTTBR_EL2 need.
    pub fn config(&self) -> Stage2Config {
        Stage2Config {
            t0sz: (64 - self.ipa_bits) as u8,
            sl0: match self.start_level {
                2 => 0b00,
                1 => 0b01,
                _ => 0b10,
            },
            ps: self.ps,
            start_level: self.start_level,
            concatenated: self.concatenated as u8,
            root: self.root.mem.pa(),
        }
    }

    /// The IPA size in bits.
    pub fn ipa_bits(&self) -> u32 {
        self.ipa_bits
    }

    /// Checks alignment and the IPA range; returns the exclusive end.
    fn check_range(&self, ipa: Ipa, len: u64) -> Result<u64, Stage2Error> {
        let page = PAGE_SIZE as u64;
        if !ipa.is_aligned(page) || !len.is_multiple_of(page) {
            return Err(Stage2Error::Unaligned);
        }
        match ipa.0.checked_add(len) {
            Some(end) if end <= 1u64 << self.ipa_bits => Ok(end),
            _ => Err(Stage2Error::IpaOutOfRange { ipa, len }),
        }
    }

    /// Maps `[ipa, ipa + len)` to `[pa, pa + len)`.
    ///
    /// Writes the space's [`Leaves`]: with [`Leaves::Blocks`], 1 GiB and
    /// 2 MiB blocks wherever the IPA, the PA and the rest of the range
    /// allow, 4 KiB pages elsewhere; with [`Leaves::Pages`], 4 KiB pages
    /// only. Fails without changing
    /// anything if the input is not 4 KiB aligned, out of range, overlaps an
    /// existing mapping, or tables cannot be allocated. Only invalid
    /// descriptors are replaced, so no TLB invalidation is needed.
    pub fn map(
        &mut self,
        alloc: &dyn PageAllocator,
        ipa: Ipa,
        pa: PhysAddr,
        len: u64,
        attrs: S2Attrs,
    ) -> Result<(), Stage2Error> {
        let end = self.check_range(ipa, len)?;
        if !pa.is_aligned(PAGE_SIZE as u64) {
            return Err(Stage2Error::Unaligned);
        }
        match pa.0.checked_add(len) {
            Some(pa_end) if pa_end <= 1u64 << self.pa_bits => {}
            _ => return Err(Stage2Error::PaOutOfRange { pa, len }),
        }
        if len == 0 {
            return Ok(());
        }
        let leaves = self.leaves;
        let need = plan_map(
            leaves,
            Some(&self.root),
            self.start_level,
            0,
            ipa.0,
            end,
            pa.0,
        )?;
        let mut pool = alloc_tables(alloc, need)?;
        let mut w = Writer {
            alloc,
            pool: &mut pool,
            leaves,
            brk: &mut |_| {},
        };
        w.map(
            &mut self.root,
            self.start_level,
            0,
            ipa.0,
            end,
            pa.0,
            attrs,
            false,
        );
        assert!(
            pool.is_empty(),
            "stage2: map planned more tables than it used"
        );
        Ok(())
    }

    /// Unmaps every page of `[ipa, ipa + len)` that is mapped (holes are
    /// allowed), splitting blocks that the range covers partly.
    ///
    /// Fails without changing anything on bad input or if a split cannot get
    /// its tables.
    ///
    /// For tables no device or CPU walks (nothing can hold TLB entries for
    /// them); live tables use [`unmap_live`](Self::unmap_live).
    pub fn unmap(
        &mut self,
        alloc: &dyn PageAllocator,
        ipa: Ipa,
        len: u64,
    ) -> Result<Invalidation, Stage2Error> {
        self.change(alloc, ipa, len, Change::Unmap, &mut |_| {})
    }

    /// [`unmap`](Self::unmap) on tables the hardware walks: between the
    /// break (entry made invalid) and the make (new table or entry written)
    /// of a block split, `brk` is called with the broken range and must
    /// invalidate it in the TLBs and wait for completion (Arm ARM D8.16.1,
    /// break-before-make without FEAT_BBM).
    pub fn unmap_live(
        &mut self,
        alloc: &dyn PageAllocator,
        ipa: Ipa,
        len: u64,
        brk: &mut dyn FnMut(&TlbRange),
    ) -> Result<Invalidation, Stage2Error> {
        self.change(alloc, ipa, len, Change::Unmap, brk)
    }

    /// Gives every mapped page of `[ipa, ipa + len)` the attributes `attrs`
    /// (holes stay holes), splitting blocks that the range covers partly and
    /// whose attributes differ.
    ///
    /// Fails without changing anything on bad input or if a split cannot get
    /// its tables.
    pub fn protect(
        &mut self,
        alloc: &dyn PageAllocator,
        ipa: Ipa,
        len: u64,
        attrs: S2Attrs,
    ) -> Result<Invalidation, Stage2Error> {
        self.change(alloc, ipa, len, Change::Protect(attrs), &mut |_| {})
    }

    /// [`protect`](Self::protect) on tables the hardware walks, with the
    /// break-before-make hook of [`unmap_live`](Self::unmap_live) (also
    /// called when a memory-type change breaks an entry).
    pub fn protect_live(
        &mut self,
        alloc: &dyn PageAllocator,
        ipa: Ipa,
        len: u64,
        attrs: S2Attrs,
        brk: &mut dyn FnMut(&TlbRange),
    ) -> Result<Invalidation, Stage2Error> {
        self.change(alloc, ipa, len, Change::Protect(attrs), brk)
    }

    fn change(
        &mut self,
        alloc: &dyn PageAllocator,
        ipa: Ipa,
        len: u64,
        change: Change,
        brk: &mut dyn FnMut(&TlbRange),
    ) -> Result<Invalidation, Stage2Error> {
        let end = self.check_range(ipa, len)?;
        let mut inv = Invalidation::default();
        if len == 0 {
            return Ok(inv);
        }
        let need = plan_change(&self.root, self.start_level, 0, ipa.0, end, change);
        let mut pool = alloc_tables(alloc, need)?;
        let mut w = Writer {
            alloc,
            pool: &mut pool,
            leaves: self.leaves,
            brk,
        };
        w.change(
            &mut self.root,
            self.start_level,
            0,
            ipa.0,
            end,
            change,
            &mut inv,
        );
        assert!(
            pool.is_empty(),
            "stage2: split planned more tables than it used"
        );
        Ok(inv)
    }

    /// Software walk: the PA `ipa` translates to, its attributes and the
    /// level of the leaf descriptor (1, 2 or 3); `None` if unmapped.
    pub fn translate(&self, ipa: Ipa) -> Option<(PhysAddr, S2Attrs, u8)> {
        if ipa.0 >> self.ipa_bits != 0 {
            return None;
        }
        let mut table = &self.root;
        let mut level = self.start_level;
        let mut base = 0;
        loop {
            let i = ((ipa.0 - base) >> shift(level)) as usize;
            match table.entry(i, level) {
                Entry::Invalid => return None,
                Entry::Leaf { oa, attrs } => {
                    let off = ipa.0 & (entry_size(level) - 1);
                    return Some((PhysAddr(oa.0 + off), attrs, level));
                }
                Entry::Table(next) => {
                    let child = table.child(i);
                    assert_eq!(child.mem.pa(), next, "stage2: shadow tree out of sync");
                    assert!(level < 3, "stage2: table descriptor at level 3");
                    base += (i as u64) << shift(level);
                    table = child;
                    level += 1;
                }
            }
        }
    }

    /// Frees every table.
    ///
    /// # Safety
    ///
    /// `alloc` is the allocator given to [`new`](Self::new) and every
    /// operation, and nothing uses the tables any more: every STE (and
    /// VTTBR) pointing at them was replaced, and the VMID's TLB entries were
    /// invalidated (TLBI_S12_VMALL + CMD_SYNC).
    pub unsafe fn destroy(self, alloc: &dyn PageAllocator) {
        // SAFETY: forwarded from the caller.
        unsafe { self.root.free_tree(alloc) };
    }

    /// Every table as (level, base IPA, descriptors), depth first; for tests
    /// that check that a failed operation left the tables untouched.
    #[cfg(test)]
    fn snapshot(&self) -> Vec<(u8, u64, Vec<u64>)> {
        fn walk(t: &Table, level: u8, base: u64, out: &mut Vec<(u8, u64, Vec<u64>)>) {
            let mut words = alloc::vec![0; t.mem.words()];
            t.mem.read_words(0, &mut words);
            out.push((level, base, words));
            for (i, c) in t.children.iter().enumerate() {
                if let Some(c) = c {
                    walk(c, level + 1, base + ((i as u64) << shift(level)), out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, self.start_level, 0, &mut out);
        out
    }
}

/// Allocates `n` zeroed table pages, all or none.
fn alloc_tables(alloc: &dyn PageAllocator, n: usize) -> Result<Vec<DmaRegion>, Stage2Error> {
    let mut pool = Vec::with_capacity(n);
    for _ in 0..n {
        match DmaRegion::alloc(alloc, PAGE_SIZE, PAGE_SIZE) {
            Ok(t) => pool.push(t),
            Err(OutOfMemory) => {
                for t in pool {
                    // SAFETY: just allocated from `alloc`, never linked into
                    // a table, so no SMMU or CPU walk can have seen it.
                    unsafe { t.free(alloc) };
                }
                return Err(Stage2Error::OutOfMemory);
            }
        }
    }
    Ok(pool)
}

/// Checks that `[start, end)` (mapped from `pa` onwards) is free and counts
/// the tables mapping it will allocate. `table` is `None` for a table that
/// does not exist yet.
fn plan_map(
    leaves: Leaves,
    table: Option<&Table>,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    pa: u64,
) -> Result<usize, Stage2Error> {
    if table.is_none() && level == 3 {
        // A new level-3 table holds only pages.
        return Ok(0);
    }
    let (first, last) = index_span(level, base, start, end);
    let mut need = 0;
    for i in first..=last {
        let (eb, ee, s, e) = clip(level, base, i, start, end);
        let pa_s = pa + (s - start);
        match table.map_or(Entry::Invalid, |t| t.entry(i, level)) {
            Entry::Leaf { .. } => return Err(Stage2Error::Overlap(Ipa(s))),
            Entry::Table(_) => {
                let child = table.map(|t| t.child(i));
                need += plan_map(leaves, child, level + 1, eb, s, e, pa_s)?;
            }
            Entry::Invalid => {
                if !fits_leaf(leaves, level, eb, ee, s, e, pa_s) {
                    need += 1 + plan_map(leaves, None, level + 1, eb, s, e, pa_s)?;
                }
            }
        }
    }
    Ok(need)
}

/// Counts the tables `change` over `[start, end)` will allocate to split
/// blocks.
///
/// Only a descriptor the range covers partly can need a split, at itself or
/// below: that is at most the first and the last one of each table, so this
/// visits O(levels) descriptors.
fn plan_change(table: &Table, level: u8, base: u64, start: u64, end: u64, change: Change) -> usize {
    let (first, last) = index_span(level, base, start, end);
    let mut need = 0;
    let edges = [first, last];
    let edges = if first == last {
        &edges[..1]
    } else {
        &edges[..]
    };
    for &i in edges {
        let (eb, ee, s, e) = clip(level, base, i, start, end);
        if s == eb && e == ee {
            continue;
        }
        match table.entry(i, level) {
            Entry::Invalid => {}
            Entry::Table(_) => need += plan_change(table.child(i), level + 1, eb, s, e, change),
            Entry::Leaf { attrs, .. } => {
                if (s != eb || e != ee) && change.affects(attrs) {
                    need += split_tables(level + 1, s, e);
                }
            }
        }
    }
    need
}

/// Writes descriptors, taking new tables from a pool allocated up front, so
/// that nothing here can fail.
struct Writer<'a> {
    alloc: &'a dyn PageAllocator,
    pool: &'a mut Vec<DmaRegion>,
    /// The leaves `map` writes.
    leaves: Leaves,
    /// Invalidates a broken range between break and make.
    brk: &'a mut dyn FnMut(&TlbRange),
}

impl Writer<'_> {
    fn take_table(&mut self, level: u8) -> Table {
        let mem = self
            .pool
            .pop()
            .expect("stage2: fewer tables allocated than planned");
        Table::new(mem, level, ENTRIES)
    }

    /// Maps `[start, end)` to `pa..` in `table` (at `level`, based at
    /// `base`), whose range `plan_map` found free. A `fresh` table is not yet
    /// linked: it is made visible to the SMMU as a whole at the end.
    #[allow(clippy::too_many_arguments)]
    fn map(
        &mut self,
        table: &mut Table,
        level: u8,
        base: u64,
        start: u64,
        end: u64,
        pa: u64,
        attrs: S2Attrs,
        fresh: bool,
    ) {
        let (first, last) = index_span(level, base, start, end);
        for i in first..=last {
            let (eb, ee, s, e) = clip(level, base, i, start, end);
            let pa_s = pa + (s - start);
            // A table filled here started zeroed: no need to read it.
            let entry = if fresh {
                Entry::Invalid
            } else {
                table.entry(i, level)
            };
            match entry {
                Entry::Leaf { .. } => {
                    panic!("stage2: map reached a live leaf that planning missed")
                }
                Entry::Table(_) => {
                    let child = table.child_mut(i);
                    self.map(child, level + 1, eb, s, e, pa_s, attrs, false);
                }
                Entry::Invalid if fits_leaf(self.leaves, level, eb, ee, s, e, pa_s) => {
                    table.mem.write(i, desc::leaf(PhysAddr(pa_s), attrs, level));
                    table.live += 1;
                }
                Entry::Invalid => {
                    // Fill the new table completely before linking it, so a
                    // walk never sees it half-built.
                    let mut child = self.take_table(level + 1);
                    self.map(&mut child, level + 1, eb, s, e, pa_s, attrs, true);
                    table.mem.write(i, desc::table(child.mem.pa()));
                    table.live += 1;
                    table.children[i] = Some(Box::new(child));
                }
            }
        }
        if fresh {
            table.sync(self.alloc, 0, ENTRIES - 1);
        } else {
            table.sync(self.alloc, first, last);
        }
    }

    /// Applies `change` to `[start, end)` in `table`; unlinks child tables
    /// that become empty.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        table: &mut Table,
        level: u8,
        base: u64,
        start: u64,
        end: u64,
        change: Change,
        inv: &mut Invalidation,
    ) {
        let (first, last) = index_span(level, base, start, end);
        let size = entry_size(level);
        for i in first..=last {
            let (eb, ee, s, e) = clip(level, base, i, start, end);
            let leaf_range = TlbRange {
                ipa: Ipa(eb),
                len: size,
                level,
                leaf: true,
            };
            let raw = table.mem.read(i);
            if !desc::is_valid(raw) {
                continue;
            }
            if matches!(change, Change::Unmap) && s == eb && e == ee && desc::is_leaf(raw, level) {
                // Hot path: a whole leaf goes, its attributes do not matter.
                table.mem.write(i, desc::INVALID);
                table.live -= 1;
                inv.push(leaf_range);
                continue;
            }
            match desc::decode(raw, level) {
                Entry::Invalid => {}
                Entry::Table(_) => {
                    let child = table.child_mut(i);
                    self.change(child, level + 1, eb, s, e, change, inv);
                    if child.live == 0 {
                        // Nothing left below: unlink the table; the walk
                        // caches may still hold it, so it is freed only
                        // once the caller has invalidated.
                        table.mem.write(i, desc::INVALID);
                        table.live -= 1;
                        let child = table.children[i]
                            .take()
                            .expect("stage2: table descriptor without a shadow table");
                        inv.push(TlbRange {
                            leaf: false,
                            ..leaf_range
                        });
                        inv.defer_free(child.mem);
                    }
                }
                Entry::Leaf { attrs, .. } if !change.affects(attrs) => {}
                Entry::Leaf { oa, attrs } if s != eb || e != ee => {
                    // Split: a table of equivalent entries one level down...
                    let mut child = self.take_table(level + 1);
                    let sub = entry_size(level + 1);
                    for j in 0..ENTRIES {
                        let oa_j = PhysAddr(oa.0 + j as u64 * sub);
                        child.mem.write(j, desc::leaf(oa_j, attrs, level + 1));
                    }
                    child.live = ENTRIES;
                    child.sync(self.alloc, 0, ENTRIES - 1);
                    // ...then break (the old block must leave the TLBs),
                    // make (the table), and change the requested part.
                    table.mem.write(i, desc::INVALID);
                    table.sync(self.alloc, i, i);
                    (self.brk)(&leaf_range);
                    inv.push(leaf_range);
                    table.mem.write(i, desc::table(child.mem.pa()));
                    let child = table.children[i].insert(Box::new(child));
                    self.change(child, level + 1, eb, s, e, change, inv);
                }
                Entry::Leaf { oa, attrs } => match change {
                    Change::Unmap => {
                        table.mem.write(i, desc::INVALID);
                        table.live -= 1;
                        inv.push(leaf_range);
                    }
                    Change::Protect(new) => {
                        // Only permission changes may skip break-before-make
                        // (Arm ARM D8.16.1): a memory-type change breaks first.
                        if new.mem != attrs.mem {
                            table.mem.write(i, desc::INVALID);
                            table.sync(self.alloc, i, i);
                            (self.brk)(&leaf_range);
                        }
                        table.mem.write(i, desc::leaf(oa, new, level));
                        inv.push(leaf_range);
                    }
                },
            }
        }
        table.sync(self.alloc, first, last);
    }
}
