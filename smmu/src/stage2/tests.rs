use super::*;
use crate::fake::FakeMemory;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Mutex;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;

fn new_s2(mem: &FakeMemory) -> Stage2 {
    Stage2::new(mem, 40, 48).unwrap()
}

/// Frees the deferred tables of an invalidation in a test.
fn release(inv: Invalidation, mem: &FakeMemory) {
    // SAFETY: these tables were never given to an SMMU or a CPU.
    unsafe { inv.free_tables(mem) };
}

fn destroy(s2: Stage2, mem: &FakeMemory) {
    // SAFETY: these tables were never given to an SMMU or a CPU.
    unsafe { s2.destroy(mem) };
    assert_eq!(mem.pages_in_use(), 0, "destroy leaked tables");
}

fn leaf(ipa: u64, len: u64, level: u8) -> TlbRange {
    TlbRange {
        ipa: Ipa(ipa),
        len,
        level,
        leaf: true,
    }
}

fn table(ipa: u64, len: u64, level: u8) -> TlbRange {
    TlbRange {
        leaf: false,
        ..leaf(ipa, len, level)
    }
}

#[test]
fn start_level_and_concatenation_per_ipa_size() {
    // (ipa bits, start level, concatenated tables, SL0) per Arm ARM D8.2:
    // the deepest start level whose root needs at most 16 tables.
    let expected = [
        (32, 2, 4, 0b00),
        (33, 2, 8, 0b00),
        (34, 2, 16, 0b00),
        (35, 1, 1, 0b01),
        (36, 1, 1, 0b01),
        (39, 1, 1, 0b01),
        (40, 1, 2, 0b01),
        (41, 1, 4, 0b01),
        (42, 1, 8, 0b01),
        (43, 1, 16, 0b01),
        (44, 0, 1, 0b10),
        (48, 0, 1, 0b10),
    ];
    for (bits, level, tables, sl0) in expected {
        let mem = FakeMemory::new();
        let s2 = Stage2::new(&mem, bits, 48).unwrap();
        let c = s2.config();
        assert_eq!(
            (c.start_level, c.concatenated as usize, c.sl0, c.t0sz),
            (level, tables, sl0, (64 - bits) as u8),
            "{bits}-bit IPA"
        );
        assert_eq!(mem.pages_in_use(), tables, "{bits}-bit root size");
        assert!(
            c.root.is_aligned((tables * PAGE_SIZE) as u64),
            "{bits}-bit root not aligned to its size"
        );
        // The last IPA is reachable and the first beyond is rejected.
        let top = (1u64 << bits) - K4;
        let mut s2 = s2;
        s2.map(
            &mem,
            Ipa(top),
            PhysAddr(0x8000_0000),
            K4,
            S2Attrs::NORMAL_RW,
        )
        .unwrap();
        assert_eq!(
            s2.translate(Ipa(top)).map(|t| t.0),
            Some(PhysAddr(0x8000_0000))
        );
        assert_eq!(
            s2.map(&mem, Ipa(top + K4), PhysAddr(0), K4, S2Attrs::NORMAL_RW),
            Err(Stage2Error::IpaOutOfRange {
                ipa: Ipa(top + K4),
                len: K4
            })
        );
        destroy(s2, &mem);
    }
}

#[test]
fn sizes_and_ps_encoding() {
    let mem = FakeMemory::new();
    for (bits, ps) in [(32, 0), (36, 1), (40, 2), (42, 3), (44, 4), (48, 5)] {
        let s2 = Stage2::new(&mem, 32, bits).unwrap();
        assert_eq!(s2.config().ps, ps, "PS for {bits} bits");
        destroy(s2, &mem);
    }
    assert_eq!(
        Stage2::new(&mem, 31, 48).unwrap_err(),
        Stage2Error::UnsupportedIpaSize(31)
    );
    assert_eq!(
        Stage2::new(&mem, 49, 48).unwrap_err(),
        Stage2Error::UnsupportedIpaSize(49)
    );
    assert_eq!(
        Stage2::new(&mem, 40, 41).unwrap_err(),
        Stage2Error::UnsupportedPaSize(41)
    );
    assert_eq!(
        Stage2::new(&FakeMemory::with_limit(1), 40, 48).unwrap_err(),
        Stage2Error::OutOfMemory
    );
    assert_eq!(mem.pages_in_use(), 0);
}

#[test]
fn descriptor_encoding() {
    // Hand-assembled from Arm ARM D8.3: valid|page, MemAttr, S2AP, SH, AF,
    // output address, XN (bit 54).
    let normal_rw_page = 0b11 | 0b1111 << 2 | 0b11 << 6 | 0b11 << 8 | 1 << 10 | 1 << 54;
    assert_eq!(
        desc::leaf(PhysAddr(0x8000_0000), S2Attrs::NORMAL_RW, 3),
        0x8000_0000 | normal_rw_page
    );
    let device_rw_block = 0b01 | 0b0001 << 2 | 0b11 << 6 | 0b10 << 8 | 1 << 10 | 1 << 54;
    assert_eq!(
        desc::leaf(PhysAddr(0x4000_0000), S2Attrs::DEVICE_RW, 2),
        0x4000_0000 | device_rw_block
    );
    let ro_exec = S2Attrs {
        read: true,
        write: false,
        exec: true,
        mem: MemType::Normal,
    };
    assert_eq!(
        desc::leaf(PhysAddr(0x1_4000_0000), ro_exec, 1),
        0x1_4000_0000 | 0b01 | 0b1111 << 2 | 0b01 << 6 | 0b11 << 8 | 1 << 10
    );
    assert_eq!(desc::table(PhysAddr(0x1234_5000)), 0x1234_5003);
    for (attrs, level) in [
        (S2Attrs::NORMAL_RW, 3),
        (S2Attrs::DEVICE_RW, 2),
        (ro_exec, 1),
    ] {
        let raw = desc::leaf(PhysAddr(G1), attrs, level);
        assert_eq!(
            desc::decode(raw, level),
            desc::Entry::Leaf {
                oa: PhysAddr(G1),
                attrs
            }
        );
    }
    assert_eq!(
        desc::decode(0x1234_5003, 1),
        desc::Entry::Table(PhysAddr(0x1234_5000))
    );
    assert_eq!(desc::decode(0x1234_5002, 2), desc::Entry::Invalid);
}

#[test]
fn map_uses_the_largest_blocks_alignment_allows() {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem);
    let root = mem.pages_in_use();
    // 1 GiB aligned on both sides: one level-1 block, no table at all.
    s2.map(&mem, Ipa(G1), PhysAddr(3 * G1), G1, S2Attrs::NORMAL_RW)
        .unwrap();
    assert_eq!(mem.pages_in_use(), root);
    assert_eq!(
        s2.translate(Ipa(G1 + 0x12_3456)),
        Some((PhysAddr(3 * G1 + 0x12_3456), S2Attrs::NORMAL_RW, 1))
    );
    // 2 MiB + 4 KiB at a 2 MiB boundary: a 2 MiB block, then a page.
    s2.map(
        &mem,
        Ipa(4 * G1),
        PhysAddr(0x8020_0000),
        M2 + K4,
        S2Attrs::DEVICE_RW,
    )
    .unwrap();
    assert_eq!(mem.pages_in_use(), root + 2);
    assert_eq!(s2.translate(Ipa(4 * G1 + M2 - 8)).unwrap().2, 2);
    assert_eq!(
        s2.translate(Ipa(4 * G1 + M2)),
        Some((PhysAddr(0x8040_0000), S2Attrs::DEVICE_RW, 3))
    );
    assert_eq!(s2.translate(Ipa(4 * G1 + M2 + K4)), None);
    // IPA aligned but PA only 4 KiB aligned: pages only.
    s2.map(
        &mem,
        Ipa(6 * G1),
        PhysAddr(0x9000_1000),
        M2,
        S2Attrs::NORMAL_RWX,
    )
    .unwrap();
    assert_eq!(
        s2.translate(Ipa(6 * G1 + M2 - K4)),
        Some((PhysAddr(0x9020_0000), S2Attrs::NORMAL_RWX, 3))
    );
    // A range that starts mid-2MiB uses pages up to the boundary, then blocks.
    s2.map(
        &mem,
        Ipa(8 * G1 - K4),
        PhysAddr(8 * G1 - K4),
        K4 + M2,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    assert_eq!(s2.translate(Ipa(8 * G1 - K4)).unwrap().2, 3);
    assert_eq!(s2.translate(Ipa(8 * G1)).unwrap().2, 2);
    destroy(s2, &mem);
}

#[test]
fn a_space_of_pages_maps_even_aligned_gigabytes_page_by_page() {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem).with_leaves(Leaves::Pages);
    let root = mem.pages_in_use();
    // What blocks would map with one level-1 descriptor takes one level-2
    // table and 512 level-3 tables, every page a level-3 leaf.
    s2.map(&mem, Ipa(G1), PhysAddr(3 * G1), G1, S2Attrs::NORMAL_RW)
        .unwrap();
    assert_eq!(mem.pages_in_use(), root + 1 + 512);
    for off in [0, K4, M2 - 8, M2, 0x12_3456, G1 - K4] {
        assert_eq!(
            s2.translate(Ipa(G1 + off)),
            Some((PhysAddr(3 * G1 + off), S2Attrs::NORMAL_RW, 3)),
            "offset {off:#x}"
        );
    }
    assert_eq!(s2.translate(Ipa(G1 - K4)), None);
    assert_eq!(s2.translate(Ipa(2 * G1)), None);
    // Unmapping a page in the middle needs no split, and frees nothing.
    let inv = s2.unmap(&mem, Ipa(G1 + M2), K4).unwrap();
    assert_eq!(s2.translate(Ipa(G1 + M2)), None);
    assert_eq!(s2.translate(Ipa(G1 + M2 + K4)).unwrap().2, 3);
    release(inv, &mem);
    assert_eq!(mem.pages_in_use(), root + 1 + 512);
    destroy(s2, &mem);
}

#[test]
fn map_rejects_bad_input_and_overlap_without_changing_anything() {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem);
    let rw = S2Attrs::NORMAL_RW;
    assert_eq!(
        s2.map(&mem, Ipa(0x800), PhysAddr(0), K4, rw),
        Err(Stage2Error::Unaligned)
    );
    assert_eq!(
        s2.map(&mem, Ipa(0), PhysAddr(0x10), K4, rw),
        Err(Stage2Error::Unaligned)
    );
    assert_eq!(
        s2.map(&mem, Ipa(0), PhysAddr(0), 100, rw),
        Err(Stage2Error::Unaligned)
    );
    assert_eq!(
        s2.map(&mem, Ipa(u64::MAX - K4 + 1), PhysAddr(0), K4, rw),
        Err(Stage2Error::IpaOutOfRange {
            ipa: Ipa(u64::MAX - K4 + 1),
            len: K4
        })
    );
    assert_eq!(
        s2.map(&mem, Ipa(0), PhysAddr((1 << 48) - K4), 2 * K4, rw),
        Err(Stage2Error::PaOutOfRange {
            pa: PhysAddr((1 << 48) - K4),
            len: 2 * K4
        })
    );
    s2.map(&mem, Ipa(G1), PhysAddr(G1), M2, rw).unwrap();
    s2.map(&mem, Ipa(G1 + 3 * M2), PhysAddr(G1), K4, rw)
        .unwrap();
    let before = s2.snapshot();
    let pages = mem.pages_in_use();
    // Overlaps the tail of the page at G1 + 3 * M2 after mapping fresh pages.
    assert_eq!(
        s2.map(&mem, Ipa(G1 + 2 * M2), PhysAddr(0), M2 + 2 * K4, rw),
        Err(Stage2Error::Overlap(Ipa(G1 + 3 * M2)))
    );
    // Overlaps the start of the 2 MiB block.
    assert_eq!(
        s2.map(&mem, Ipa(G1 - K4), PhysAddr(0), 2 * K4, rw),
        Err(Stage2Error::Overlap(Ipa(G1)))
    );
    assert_eq!(s2.snapshot(), before);
    assert_eq!(mem.pages_in_use(), pages);
    destroy(s2, &mem);
}

#[test]
fn failed_map_rolls_back_to_the_exact_previous_tables() {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem);
    s2.map(&mem, Ipa(0x1000), PhysAddr(0x1000), K4, S2Attrs::NORMAL_RW)
        .unwrap();
    let before = s2.snapshot();
    let used = mem.pages_in_use(); // root (2) + L2 + L3
    assert_eq!(used, 4);
    // 4 GiB from 0x2000 as pages needs an L3 table per 2 MiB except the one
    // that exists, plus L2 tables: far more than the limit allows.
    for spare in [0, 1, 2, 5, 100] {
        mem.set_limit(Some(used + spare));
        let r = s2.map(
            &mem,
            Ipa(0x2000),
            PhysAddr(0x10_0000_3000),
            4 * G1,
            S2Attrs::NORMAL_RW,
        );
        assert_eq!(r, Err(Stage2Error::OutOfMemory), "spare {spare}");
        assert_eq!(
            s2.snapshot(),
            before,
            "tables changed with {spare} spare pages"
        );
        assert_eq!(
            mem.pages_in_use(),
            used,
            "pages leaked with {spare} spare pages"
        );
        assert_eq!(s2.translate(Ipa(0x2000)), None);
    }
    mem.set_limit(None);
    s2.map(
        &mem,
        Ipa(0x2000),
        PhysAddr(0x10_0000_3000),
        4 * G1,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    assert_eq!(
        s2.translate(Ipa(0x2000 + 3 * G1)).unwrap().0,
        PhysAddr(0x10_0000_3000 + 3 * G1)
    );
    destroy(s2, &mem);
}

#[test]
fn unmap_inside_a_1g_block_splits_down_to_pages() {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem);
    let root = mem.pages_in_use();
    s2.map(&mem, Ipa(2 * G1), PhysAddr(5 * G1), G1, S2Attrs::NORMAL_RW)
        .unwrap();
    let hole = 2 * G1 + 7 * M2 + 3 * K4;
    let inv = s2.unmap(&mem, Ipa(hole), K4).unwrap();
    // The old 1 GiB block, the 2 MiB block it was split into (live between
    // the two splits), and the page itself.
    assert_eq!(
        inv.ranges(),
        &[
            leaf(2 * G1, G1, 1),
            leaf(2 * G1 + 7 * M2, M2, 2),
            leaf(hole, K4, 3)
        ]
    );
    assert_eq!(inv.tables_to_free(), 0);
    assert!(!inv.needs_walk_invalidation());
    release(inv, &mem);
    assert_eq!(mem.pages_in_use(), root + 2);
    assert_eq!(s2.translate(Ipa(hole)), None);
    let rw = S2Attrs::NORMAL_RW;
    let pa = |ipa: u64| PhysAddr(ipa - 2 * G1 + 5 * G1);
    for (ipa, level) in [
        (2 * G1, 2),
        (hole - K4, 3),
        (hole + K4, 3),
        (2 * G1 + 7 * M2, 3),
        (2 * G1 + 8 * M2 - K4, 3),
        (2 * G1 + 8 * M2, 2),
        (3 * G1 - K4, 2),
    ] {
        assert_eq!(
            s2.translate(Ipa(ipa)),
            Some((pa(ipa), rw, level)),
            "{ipa:#x}"
        );
    }
    destroy(s2, &mem);
}

#[test]
fn protect_changes_only_the_requested_part_of_a_block() {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem);
    s2.map(&mem, Ipa(0), PhysAddr(G1), 4 * M2, S2Attrs::NORMAL_RW)
        .unwrap();
    // Same attributes: nothing to split, nothing to invalidate.
    let inv = s2.protect(&mem, Ipa(K4), K4, S2Attrs::NORMAL_RW).unwrap();
    assert!(inv.is_empty());
    release(inv, &mem);
    assert_eq!(s2.translate(Ipa(K4)).unwrap().2, 2);
    // Read-only for [1 MiB, 5 MiB): splits blocks 0 and 2, rewrites block 1.
    let lo = M2 / 2;
    let hi = 2 * M2 + M2 / 2;
    let inv = s2
        .protect(&mem, Ipa(lo), hi - lo, S2Attrs::NORMAL_RO)
        .unwrap();
    assert_eq!(
        inv.ranges(),
        &[
            leaf(0, M2, 2),
            leaf(lo, M2 - lo, 3),
            leaf(M2, 2 * M2, 2),
            leaf(2 * M2, hi - 2 * M2, 3),
        ]
    );
    release(inv, &mem);
    for (ipa, attrs, level) in [
        (0, S2Attrs::NORMAL_RW, 3),
        (lo - K4, S2Attrs::NORMAL_RW, 3),
        (lo, S2Attrs::NORMAL_RO, 3),
        (M2, S2Attrs::NORMAL_RO, 2),
        (hi - K4, S2Attrs::NORMAL_RO, 3),
        (hi, S2Attrs::NORMAL_RW, 3),
        (3 * M2, S2Attrs::NORMAL_RW, 2),
    ] {
        assert_eq!(
            s2.translate(Ipa(ipa)),
            Some((PhysAddr(G1 + ipa), attrs, level)),
            "{ipa:#x}"
        );
    }
    // A memory-type change on a whole block rewrites it in place.
    let inv = s2
        .protect(&mem, Ipa(3 * M2), M2, S2Attrs::DEVICE_RW)
        .unwrap();
    assert_eq!(inv.ranges(), &[leaf(3 * M2, M2, 2)]);
    release(inv, &mem);
    assert_eq!(
        s2.translate(Ipa(3 * M2)),
        Some((PhysAddr(G1 + 3 * M2), S2Attrs::DEVICE_RW, 2))
    );
    destroy(s2, &mem);
}

#[test]
fn unmap_reports_nothing_for_holes_and_frees_empty_tables() {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem);
    let root = mem.pages_in_use();
    let inv = s2.unmap(&mem, Ipa(0), 4 * G1).unwrap();
    assert!(inv.is_empty(), "unmapping nothing invalidates nothing");
    release(inv, &mem);
    // Two runs of pages in one L3 table, one page in another.
    s2.map(&mem, Ipa(G1 + K4), PhysAddr(K4), 2 * K4, S2Attrs::NORMAL_RW)
        .unwrap();
    s2.map(&mem, Ipa(G1 + 8 * K4), PhysAddr(K4), K4, S2Attrs::NORMAL_RW)
        .unwrap();
    s2.map(&mem, Ipa(G1 + M2), PhysAddr(K4), K4, S2Attrs::NORMAL_RW)
        .unwrap();
    assert_eq!(mem.pages_in_use(), root + 3);
    // Unmapping the first run leaves its table alive.
    let inv = s2.unmap(&mem, Ipa(G1), 4 * K4).unwrap();
    assert_eq!(inv.ranges(), &[leaf(G1 + K4, 2 * K4, 3)]);
    release(inv, &mem);
    assert_eq!(mem.pages_in_use(), root + 3);
    // Unmapping everything frees both L3 tables and the L2 table, and says
    // that walk caches must be invalidated for them.
    let inv = s2.unmap(&mem, Ipa(0), 4 * G1).unwrap();
    assert_eq!(
        inv.ranges(),
        &[
            leaf(G1 + 8 * K4, K4, 3),
            table(G1, M2, 2),
            leaf(G1 + M2, K4, 3),
            table(G1 + M2, M2, 2),
            table(G1, G1, 1),
        ]
    );
    assert!(inv.needs_walk_invalidation());
    assert_eq!(inv.ranges()[1].ttl_hint(), None);
    assert_eq!(inv.ranges()[0].ttl_hint(), Some(3));
    assert_eq!(inv.tables_to_free(), 3);
    // Freed only when the caller says the invalidation completed.
    assert_eq!(mem.pages_in_use(), root + 3);
    release(inv, &mem);
    assert_eq!(mem.pages_in_use(), root);
    assert_eq!(s2.translate(Ipa(G1 + M2)), None);
    destroy(s2, &mem);
}

#[test]
fn failed_split_changes_nothing() {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem);
    s2.map(&mem, Ipa(0), PhysAddr(0), 2 * G1, S2Attrs::NORMAL_RW)
        .unwrap();
    let before = s2.snapshot();
    let used = mem.pages_in_use();
    // A page at the edge of two 1 GiB blocks... splits both, down to pages:
    // four tables.
    for spare in [0, 1, 3] {
        mem.set_limit(Some(used + spare));
        assert_eq!(
            s2.unmap(&mem, Ipa(G1 - K4), 2 * K4).unwrap_err(),
            Stage2Error::OutOfMemory
        );
        assert_eq!(
            s2.protect(&mem, Ipa(G1 - K4), 2 * K4, S2Attrs::NORMAL_RO)
                .unwrap_err(),
            Stage2Error::OutOfMemory
        );
        assert_eq!(s2.snapshot(), before);
        assert_eq!(mem.pages_in_use(), used);
    }
    mem.set_limit(Some(used + 4));
    let inv = s2.unmap(&mem, Ipa(G1 - K4), 2 * K4).unwrap();
    assert_eq!(mem.pages_in_use(), used + 4);
    assert_eq!(
        inv.ranges(),
        &[
            leaf(0, G1, 1),
            leaf(G1 - M2, M2, 2),
            leaf(G1 - K4, K4, 3),
            leaf(G1, G1, 1),
            leaf(G1, M2, 2),
            leaf(G1, K4, 3),
        ]
    );
    release(inv, &mem);
    destroy(s2, &mem);
}

#[test]
fn unmap_and_protect_reject_bad_ranges() {
    let mem = FakeMemory::new();
    let mut s2 = Stage2::new(&mem, 32, 40).unwrap();
    assert_eq!(
        s2.unmap(&mem, Ipa(0x10), K4).unwrap_err(),
        Stage2Error::Unaligned
    );
    assert_eq!(
        s2.protect(&mem, Ipa(0), 3, S2Attrs::NORMAL_RO).unwrap_err(),
        Stage2Error::Unaligned
    );
    assert_eq!(
        s2.unmap(&mem, Ipa(1 << 32), K4).unwrap_err(),
        Stage2Error::IpaOutOfRange {
            ipa: Ipa(1 << 32),
            len: K4
        }
    );
    assert_eq!(
        s2.map(&mem, Ipa(0), PhysAddr(1 << 40), K4, S2Attrs::NORMAL_RW),
        Err(Stage2Error::PaOutOfRange {
            pa: PhysAddr(1 << 40),
            len: K4
        })
    );
    assert_eq!(s2.translate(Ipa(1 << 32)), None);
    destroy(s2, &mem);
}

/// A FakeMemory that records what was made visible to the device.
#[derive(Default)]
struct SyncLog {
    mem: FakeMemory,
    synced: Mutex<Vec<(u64, usize)>>,
}

// SAFETY: delegates every allocation to FakeMemory.
unsafe impl PageAllocator for SyncLog {
    fn alloc_pages(&self, pages: usize, align: usize) -> Option<PhysAddr> {
        self.mem.alloc_pages(pages, align)
    }
    unsafe fn free_pages(&self, pa: PhysAddr, pages: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.mem.free_pages(pa, pages) }
    }
    fn virt(&self, pa: PhysAddr) -> core::ptr::NonNull<u8> {
        self.mem.virt(pa)
    }
    fn sync_for_device(&self, pa: PhysAddr, len: usize) {
        self.synced.lock().unwrap().push((pa.0, len));
    }
}

#[test]
fn every_written_descriptor_is_synced_for_the_device() {
    let log = SyncLog::default();
    let mut s2 = Stage2::new(&log, 40, 48).unwrap();
    s2.map(
        &log,
        Ipa(G1 - M2 - K4),
        PhysAddr(M2 - K4),
        M2 + K4,
        S2Attrs::NORMAL_RW,
    )
    .unwrap();
    let inv = s2
        .protect(&log, Ipa(G1 - M2), K4, S2Attrs::NORMAL_RO)
        .unwrap();
    // SAFETY: never given to an SMMU.
    unsafe { inv.free_tables(&log) };
    let synced = log.synced.lock().unwrap().clone();
    let covered = |addr: u64| {
        synced
            .iter()
            .any(|&(pa, len)| addr >= pa && addr + 8 <= pa + len as u64)
    };
    let mut nonzero = 0;
    for (level, base, words) in s2.snapshot() {
        let table_pa = if level == s2.config().start_level {
            s2.config().root.0
        } else {
            // The table's address is in its parent's descriptor.
            let parent_level = level - 1;
            s2.snapshot()
                .iter()
                .find_map(|(l, b, w)| {
                    if *l != parent_level || base < *b || base - b >= (w.len() as u64) << shift(*l)
                    {
                        return None;
                    }
                    let i = ((base - b) >> shift(*l)) as usize;
                    match desc::decode(w[i], *l) {
                        desc::Entry::Table(pa) => Some(pa.0),
                        _ => None,
                    }
                })
                .unwrap()
        };
        for (i, w) in words.iter().enumerate() {
            if *w != 0 {
                nonzero += 1;
                assert!(
                    covered(table_pa + 8 * i as u64),
                    "descriptor {i} of level-{level} table not synced"
                );
            }
        }
    }
    assert_eq!(
        nonzero,
        1 + 2 + 512 + 1,
        "root, L2 (table + block), split L3, first L3"
    );
    // SAFETY: never given to an SMMU.
    unsafe { s2.destroy(&log) };
    assert_eq!(log.mem.pages_in_use(), 0);
}

// ---------------------------------------------------------------------------
// Property test against a reference model: 4 KiB page -> (pa, attrs).

/// The IPA window the random operations use: 4 GiB, so that 1 GiB blocks
/// occur.
const WINDOW_PAGES: u64 = 4 * G1 / K4;

#[derive(Clone, Debug)]
enum Op {
    Map {
        page: u64,
        pages: u64,
        pa_delta: u64,
        attrs: S2Attrs,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
    Protect {
        page: u64,
        pages: u64,
        attrs: S2Attrs,
    },
}

fn attrs_strategy() -> impl Strategy<Value = S2Attrs> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(r, w, x, dev)| {
        S2Attrs {
            read: r,
            write: w,
            exec: x,
            mem: if dev {
                MemType::Device
            } else {
                MemType::Normal
            },
        }
    })
}

/// A range of pages, biased towards block-sized and block-aligned ranges.
fn range_strategy() -> impl Strategy<Value = (u64, u64)> {
    let p2m = M2 / K4;
    let p1g = G1 / K4;
    prop_oneof![
        4 => (0..WINDOW_PAGES, 1..64u64),
        3 => (0..WINDOW_PAGES / p2m, 1..4u64, -2i64..3, -2i64..3).prop_map(move |(b, n, ds, de)| {
            let start = (b * p2m) as i64 + ds;
            let end = ((b + n) * p2m) as i64 + de;
            (start.max(0) as u64, (end - start.max(0)).max(1) as u64)
        }),
        1 => (0..4u64, 1..3u64).prop_map(move |(b, n)| (b * p1g, n * p1g)),
    ]
    .prop_map(|(page, pages)| {
        let page = page.min(WINDOW_PAGES - 1);
        (page, pages.min(WINDOW_PAGES - page))
    })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let delta = prop_oneof![
        Just(0u64),
        (1..8u64).prop_map(|g| g * G1),
        (1..64u64).prop_map(|p| 5 * G1 + p * K4),
    ];
    prop_oneof![
        3 => (range_strategy(), delta, attrs_strategy())
            .prop_map(|((page, pages), pa_delta, attrs)| Op::Map { page, pages, pa_delta, attrs }),
        2 => range_strategy().prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (range_strategy(), attrs_strategy())
            .prop_map(|((page, pages), attrs)| Op::Protect { page, pages, attrs }),
    ]
}

type Model = BTreeMap<u64, (u64, S2Attrs)>;

/// Checks `translate` for one page (at an offset inside it) against the
/// model, including that a block is only reported where the model has the
/// whole block mapped contiguously with the same attributes.
fn check_page(s2: &Stage2, model: &Model, page: u64, seed: u64) {
    let off = (seed % (K4 / 8)) * 8;
    let got = s2.translate(Ipa(page * K4 + off));
    match (model.get(&page), got) {
        (None, None) => {}
        (Some(&(pa, attrs)), Some((gpa, gattrs, level))) => {
            assert_eq!((gpa, gattrs), (PhysAddr(pa + off), attrs), "page {page:#x}");
            assert!(
                s2.leaves == Leaves::Blocks || level == 3,
                "page {page:#x}: a level-{level} block in a space of pages"
            );
            if level < 3 {
                let n = entry_size(level) / K4;
                let first = page - page % n;
                for p in [first, first + n - 1] {
                    let (ppa, pattrs) = model[&p];
                    assert_eq!(
                        (ppa, pattrs),
                        (pa + p * K4 - page * K4, attrs),
                        "level-{level} block at page {first:#x} not uniform"
                    );
                }
            }
        }
        (m, g) => panic!("page {page:#x}: model {m:?}, tables {g:?}"),
    }
}

fn run_ops(ops: Vec<Op>, leaves: Leaves, sample_seed: u64) {
    let mem = FakeMemory::new();
    let mut s2 = new_s2(&mem).with_leaves(leaves);
    let root = mem.pages_in_use();
    let mut model = Model::new();
    let mut rng = sample_seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for op in ops {
        let (page, pages) = match op {
            Op::Map { page, pages, .. }
            | Op::Unmap { page, pages }
            | Op::Protect { page, pages, .. } => (page, pages),
        };
        let range = page..page + pages;
        match op {
            Op::Map {
                pa_delta, attrs, ..
            } => {
                let r = s2.map(
                    &mem,
                    Ipa(page * K4),
                    PhysAddr(page * K4 + pa_delta),
                    pages * K4,
                    attrs,
                );
                match model.range(range.clone()).next() {
                    Some((&first, _)) => {
                        assert_eq!(r, Err(Stage2Error::Overlap(Ipa(first * K4))));
                    }
                    None => {
                        r.unwrap();
                        for p in range.clone() {
                            model.insert(p, (p * K4 + pa_delta, attrs));
                        }
                    }
                }
            }
            Op::Unmap { .. } | Op::Protect { .. } => {
                let new_attrs = match op {
                    Op::Protect { attrs, .. } => Some(attrs),
                    _ => None,
                };
                // Pages that change, with the level of their old leaf.
                let changed: Vec<(u64, u8)> = model
                    .range(range.clone())
                    .filter(|(_, (_, a))| new_attrs != Some(*a))
                    .map(|(&p, _)| (p, s2.translate(Ipa(p * K4)).unwrap().2))
                    .collect();
                let old = model.clone();
                let inv = match new_attrs {
                    Some(a) => s2.protect(&mem, Ipa(page * K4), pages * K4, a),
                    None => s2.unmap(&mem, Ipa(page * K4), pages * K4),
                }
                .unwrap();
                // Every changed page is covered by a leaf range of the level
                // its old translation came from (a correct TTL hint).
                for &(p, level) in &changed {
                    assert!(
                        inv.ranges()
                            .iter()
                            .any(|r| r.leaf && r.level == level && r.contains(Ipa(p * K4))),
                        "changed page {p:#x} (level {level}) not invalidated: {:?}",
                        inv.ranges()
                    );
                }
                // Nothing is invalidated that was not mapped before: every
                // leaf range was entirely mapped, every walk range partly.
                for r in inv.ranges() {
                    let (first, last) = (r.ipa.0 / K4, r.end() / K4 - 1);
                    if r.leaf {
                        let mid = first + (last - first) / 2;
                        for p in [first, mid, last] {
                            assert!(
                                old.contains_key(&p),
                                "range {r:?} invalidates unmapped page {p:#x}"
                            );
                        }
                    } else {
                        assert!(
                            old.range(first..=last).next().is_some(),
                            "walk range {r:?} over nothing"
                        );
                    }
                }
                if changed.is_empty() {
                    assert!(inv.is_empty(), "no page changed, yet {inv:?}");
                }
                release(inv, &mem);
                match new_attrs {
                    Some(a) => {
                        for (_, v) in model.range_mut(range.clone()) {
                            v.1 = a;
                        }
                    }
                    None => {
                        let keys: Vec<u64> = model.range(range.clone()).map(|(&p, _)| p).collect();
                        for p in keys {
                            model.remove(&p);
                        }
                    }
                }
            }
        }
        // Sample: the edges of the op's range, random pages in the window,
        // random mapped pages.
        let mut samples = vec![page, page + pages - 1, page.saturating_sub(1), page + pages];
        for _ in 0..48 {
            samples.push(next() % WINDOW_PAGES);
            samples.push(page + next() % pages);
        }
        if !model.is_empty() {
            let keys: Vec<u64> = model
                .keys()
                .copied()
                .step_by(model.len() / 32 + 1)
                .collect();
            samples.extend(keys);
        }
        for p in samples {
            check_page(&s2, &model, p, next());
        }
    }
    // Unmapping everything leaves only the root: empty tables were freed.
    let inv = s2.unmap(&mem, Ipa(0), WINDOW_PAGES * K4).unwrap();
    release(inv, &mem);
    assert_eq!(mem.pages_in_use(), root, "empty tables were not freed");
    destroy(s2, &mem);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_ops_agree_with_the_model(
        ops in prop::collection::vec(op_strategy(), 1..16),
        pages in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let leaves = if pages { Leaves::Pages } else { Leaves::Blocks };
        run_ops(ops, leaves, seed);
    }

    #[test]
    fn map_under_memory_pressure_is_all_or_nothing(
        first in range_strategy(),
        second in range_strategy(),
        delta in 0..4u64,
        spare in 0..6usize,
    ) {
        let mem = FakeMemory::new();
        let mut s2 = new_s2(&mem);
        s2.map(&mem, Ipa(first.0 * K4), PhysAddr(first.0 * K4), first.1 * K4, S2Attrs::NORMAL_RW).unwrap();
        let before = s2.snapshot();
        let used = mem.pages_in_use();
        mem.set_limit(Some(used + spare));
        let pa = second.0 * K4 + delta * K4;
        match s2.map(&mem, Ipa(second.0 * K4), PhysAddr(pa), second.1 * K4, S2Attrs::DEVICE_RW) {
            Ok(()) => {
                for p in [second.0, second.0 + second.1 - 1] {
                    prop_assert_eq!(s2.translate(Ipa(p * K4)).map(|t| t.0), Some(PhysAddr(pa + (p - second.0) * K4)));
                }
            }
            Err(Stage2Error::OutOfMemory) | Err(Stage2Error::Overlap(_)) => {
                prop_assert_eq!(s2.snapshot(), before);
                prop_assert_eq!(mem.pages_in_use(), used);
            }
            Err(e) => panic!("unexpected {e}"),
        }
        mem.set_limit(None);
        destroy(s2, &mem);
    }
}
