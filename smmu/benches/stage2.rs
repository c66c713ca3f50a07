//! Stage-2 table benchmark: map + unmap of 1 GiB, ours against the
//! `aarch64-paging` crate doing the same work.
//!
//! `aarch64-paging` 0.12 has a stage-2 translation regime (`Stage2`, with
//! `Stage2Attributes`: MemAttr, S2AP, SH, AF, XN), which is used here through
//! its identity-mapping front end (`IdMap<Stage2>`, root at level 1 like ours
//! with a 39-bit IPA). It has no unmap operation: its closest equivalent,
//! used here, is `map_range` with invalid (empty) attributes, which drops
//! whole subtables in one go instead of writing every leaf invalid and does
//! not compute invalidation ranges; so the unmap halves do not do identical
//! work. Its tables come from the global allocator, ours from `FakeMemory`
//! (also the heap, plus leak accounting).
//!
//! Cases (same IPA range and table shape on both sides):
//! - 4K pages: ours maps to a PA that is only 4 KiB aligned (so no block can
//!   be used), aarch64-paging is told `NO_BLOCK_MAPPINGS`;
//! - 2M blocks: [1 GiB + 2 MiB, 2 GiB + 2 MiB) identity mapped;
//! - 1G block: [1 GiB, 2 GiB) identity mapped.
//!
//! Besides criterion's output, the end prints one ratio line per case,
//! measured in this run as the median of interleaved repetitions.
//! `cargo bench -p smmu --bench stage2 -- --test` runs everything once.

use aarch64_paging::descriptor::Stage2Attributes;
use aarch64_paging::idmap::IdMap;
use aarch64_paging::paging::{Constraints, MemoryRegion, Stage2};
use criterion::{criterion_group, Criterion};
use smmu::addr::{Ipa, PhysAddr};
use smmu::fake::FakeMemory;
use smmu::stage2::{S2Attrs, Stage2 as OurStage2};
use std::hint::black_box;
use std::time::{Duration, Instant};

const G1: u64 = 1 << 30;
const M2: u64 = 1 << 21;
const K4: u64 = 1 << 12;

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    ipa: u64,
    /// PA for ours: differs from `ipa` only to force pages.
    pa: u64,
    no_blocks: bool,
}

const CASES: [Case; 3] = [
    Case {
        name: "4K pages",
        ipa: G1,
        pa: G1 + K4,
        no_blocks: true,
    },
    Case {
        name: "2M blocks",
        ipa: G1 + M2,
        pa: G1 + M2,
        no_blocks: false,
    },
    Case {
        name: "1G block",
        ipa: G1,
        pa: G1,
        no_blocks: false,
    },
];

struct Ours {
    mem: FakeMemory,
    s2: OurStage2,
}

impl Ours {
    fn new() -> Self {
        let mem = FakeMemory::new();
        let s2 = OurStage2::new(&mem, 39, 48).expect("stage-2 root");
        Self { mem, s2 }
    }

    fn map_unmap(&mut self, c: Case) {
        self.s2
            .map(
                &self.mem,
                Ipa(c.ipa),
                PhysAddr(c.pa),
                G1,
                S2Attrs::NORMAL_RW,
            )
            .expect("map");
        let inv = self.s2.unmap(&self.mem, Ipa(c.ipa), G1).expect("unmap");
        black_box(inv.ranges().len());
        // SAFETY: these tables are never given to an SMMU or a CPU.
        unsafe { inv.free_tables(&self.mem) };
    }
}

struct Theirs {
    idmap: IdMap<Stage2>,
}

impl Theirs {
    fn new() -> Self {
        Self {
            idmap: IdMap::new(1, Stage2),
        }
    }

    fn map_unmap(&mut self, c: Case) {
        let range = MemoryRegion::new(c.ipa as usize, (c.ipa + G1) as usize);
        let normal_rw = Stage2Attributes::VALID
            | Stage2Attributes::MEMATTR_NORMAL_INNER_WB
            | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
            | Stage2Attributes::S2AP_ACCESS_RW
            | Stage2Attributes::SH_INNER
            | Stage2Attributes::ACCESS_FLAG
            | Stage2Attributes::XN;
        let constraints = if c.no_blocks {
            Constraints::NO_BLOCK_MAPPINGS
        } else {
            Constraints::empty()
        };
        self.idmap
            .map_range_with_constraints(&range, normal_rw, constraints)
            .expect("map");
        self.idmap
            .map_range_with_constraints(&range, Stage2Attributes::empty(), constraints)
            .expect("unmap");
    }
}

fn bench(c: &mut Criterion) {
    let mut ours = Ours::new();
    let mut theirs = Theirs::new();
    let mut group = c.benchmark_group("stage2 map+unmap 1GiB");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for case in CASES {
        group.bench_function(format!("{}/ours", case.name), |b| {
            b.iter(|| ours.map_unmap(case))
        });
        group.bench_function(format!("{}/aarch64-paging", case.name), |b| {
            b.iter(|| theirs.map_unmap(case))
        });
    }
    group.finish();
    // SAFETY: never given to an SMMU or a CPU.
    unsafe { ours.s2.destroy(&ours.mem) };
    assert_eq!(ours.mem.pages_in_use(), 0, "benchmark leaked tables");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Side-by-side figures of this run: the median of interleaved repetitions.
/// Each repetition times a batch of `iters` operations, `iters` chosen so
/// that a batch takes about 2 ms (a single 1 GiB block takes nanoseconds).
fn ratios(reps: usize) {
    let mut ours = Ours::new();
    let mut theirs = Theirs::new();
    for case in CASES {
        let t = Instant::now();
        ours.map_unmap(case);
        theirs.map_unmap(case);
        let one = t.elapsed().as_secs_f64();
        let iters = if reps > 1 {
            ((2e-3 / one.max(1e-9)) as usize).clamp(1, 100_000)
        } else {
            1
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let t = Instant::now();
            for _ in 0..iters {
                ours.map_unmap(case);
            }
            a.push(t.elapsed() / iters as u32);
            let t = Instant::now();
            for _ in 0..iters {
                theirs.map_unmap(case);
            }
            b.push(t.elapsed() / iters as u32);
        }
        let (x, y) = (median(a), median(b));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "stage2 map+unmap 1GiB {}: ours {:.6} ms, aarch64-paging {:.6} ms, ratio Y/X = {:.2}",
            case.name,
            ms(x),
            ms(y),
            y.as_secs_f64() / x.as_secs_f64().max(1e-12)
        );
    }
    // SAFETY: never given to an SMMU or a CPU.
    unsafe { ours.s2.destroy(&ours.mem) };
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // As criterion decides: `cargo bench` passes `--bench`; `-- --test` or
    // `cargo test --benches` is a smoke run that only shows that it works.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        return;
    }
    let quick = !has("--bench") || has("--test");
    ratios(if quick { 1 } else { 15 });
}
