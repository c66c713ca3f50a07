//! NVMe reads inside a Linux guest, side by side in one run (interleaved
//! rounds, median of each configuration), printing ratios:
//!
//! - 4 KiB reads at random offsets, one at a time (queue depth 1): IOPS;
//! - 1 MiB reads in sequence, one at a time: MiB/s;
//!
//! each with O_DIRECT, timed by the guest with a nanosecond clock
//! (`guests/linux/bin/nvme-bench` running `disk-bench`), and with the NVMe
//! interrupts the guest took and, under the hypervisor, the VM's traps and
//! vSMMU commands per read (from the VM's counters page, read before and
//! after each workload, so boot and power-off do not count).
//!
//! Every guest has 2 CPUs and 1 GiB of RAM. Under the hypervisor the
//! machine has 2 GiB, so the VM's RAM is one naturally aligned 1 GiB
//! block, which its IOMMU domain maps whole; `disk-bench` reads into one
//! huge page, so every boot splits a 1 MiB read into the same NVMe
//! commands.
//!
//! Configurations: bare QEMU (MSI-X, no IOMMU); bare QEMU with its own
//! SMMUv3, the guest's `arm-smmu-v3` in strict and in lazy invalidation
//! mode (the reference for nested translation); the device passed through
//! with stage-2 translation only, its MSIs through the list registers (a
//! GICv3) and injected directly by a GICv4; behind the guest's vSMMU
//! (nested), strict and lazy; and stage-2 passthrough next to a VM whose
//! own NVMe faults continuously (scenario `nvme-fault-neighbour`: Get Log
//! Page commands whose buffer lies outside its RAM, each a DMA write the
//! SMMU aborts, from before the Linux VM boots until it has finished), and
//! next to the same VM sending the same commands to its own RAM (its NVMe
//! as busy, without a fault). Stage-2 passthrough is compared with bare
//! QEMU, each nested mode with bare QEMU's own SMMU in the same mode, the
//! neighbour configurations with stage-2 passthrough and the faulting one
//! also with the fault-free one; for the neighbours the bench also prints
//! the neighbour's commands per second and the faults the hypervisor
//! counted. Then stage-2 passthrough with the VM's CPU stage 2 in blocks
//! (`nvme-bench-blocks`) rather than the default pages, against bare QEMU
//! and against the default. Last, both nested modes on a GICv4, whose MSIs
//! reach the guest with no trap, against bare QEMU's own SMMU in the same
//! mode and against the same mode on a GICv3. Then, like for like, six
//! of them (stage-2 passthrough and both nested modes, on a GICv3 and on
//! a GICv4) with the hypervisor's LPI tables for 16-bit INTIDs
//! (`lpi_id_bits=16`, scenarios `nvme-bench*-lpi16`) as bare Linux sizes
//! its own: QEMU's redistributor walks the whole LPI pending table on
//! each acknowledge, 7 KiB for 16 bits against the 1 KiB of the
//! hypervisor's default 14, which the bare configurations always pay.
//!
//! Each boot runs the pair of workloads three times (`--reps=N`), and its
//! figure is their median. A round boots every configuration once, every
//! other round in reverse order; a figure is the median of the rounds,
//! printed with the slowest and the fastest round beside it, so the
//! spread the host adds is in sight. A ratio is the median of the rounds'
//! ratios, each between two boots of the same round, printed with the
//! lowest and the highest and, from 10 rounds, a 95% bootstrap interval of
//! that median: a drift of the host from one round to the next cancels in
//! it. Traps are also given per second of the workload, which
//! tells the traps that come with time (timer ticks) from those that come
//! with reads.
//!
//! TCG timings are noisy: only ratios measured in one run mean anything.
//! `cargo bench -p scenario-tests --bench nvme_read` after `./hv build` and
//! the guest fetch (`./hv bench` does it all); `-- --test` runs each
//! configuration once with short workloads; other arguments choose the
//! configurations whose names contain one of them (`-- "stage-2
//! passthrough"`: the stage-2 ones; `-- "=stage-2 passthrough"`: that one
//! alone); `--rounds=N` runs N rounds instead of 5, `--reps=N` N
//! repetitions per boot instead of 3, `--ios=N` and `--mib=N` N reads in
//! the 4 KiB and the 1 MiB workload instead of 8192 and 1024.

use scenario_tests::{boot_with_cmdline_typing, median, TIMEOUT};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One workload's figures from one run.
#[derive(Clone, Copy, Debug, Default)]
struct Workload {
    reads: f64,
    bytes_per_read: f64,
    seconds: f64,
    interrupts: f64,
    traps: f64,
    guest_commands: f64,
    physical_commands: f64,
}

impl Workload {
    fn iops(&self) -> f64 {
        self.reads / self.seconds
    }

    fn mib_s(&self) -> f64 {
        self.reads * self.bytes_per_read / f64::from(1 << 20) / self.seconds
    }
}

/// The number just before `word` in `line`.
fn number_before(line: &str, word: &str) -> Option<f64> {
    let i = line.find(word)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// Parses "nvme-bench: disk-bench: N reads of B B (ORDER) in T ns, I
/// interrupts[, X traps, vSMMU G guest -> P physical commands]".
fn parse(line: &str) -> Option<Workload> {
    Some(Workload {
        reads: number_before(line, " reads of")?,
        bytes_per_read: number_before(line, " B (")?,
        seconds: number_before(line, " ns,")? / 1e9,
        interrupts: number_before(line, " interrupts")?,
        traps: number_before(line, " traps").unwrap_or(0.0),
        guest_commands: number_before(line, " guest ->").unwrap_or(0.0),
        physical_commands: number_before(line, " physical commands").unwrap_or(0.0),
    })
}

/// One boot's figures: its (4 KiB random, 1 MiB sequential) workloads,
/// once per repetition.
type Boot = Vec<(Workload, Workload)>;

/// Runs one guest to its end; returns its workloads.
fn run(mut cmd: Command, name: &str, reps: usize) -> Boot {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("cannot start QEMU");
    results(&String::from_utf8_lossy(&out.stdout), name, reps)
}

/// The `reps` pairs of (4 KiB random, 1 MiB sequential) workloads a
/// console shows.
fn results(text: &str, name: &str, reps: usize) -> Boot {
    let mut lines = text
        .lines()
        .filter(|l| l.contains("nvme-bench: disk-bench:"));
    let mut next = |what: &str, rep: usize| {
        let line = lines.next().unwrap_or_else(|| {
            panic!("{name}: no {what} result in repetition {rep}; console:\n{text}")
        });
        parse(line).unwrap_or_else(|| panic!("{name}: cannot parse {line:?}"))
    };
    (1..=reps)
        .map(|rep| (next("4 KiB", rep), next("1 MiB", rep)))
        .collect()
}

/// What the neighbour did while the Linux VM ran its workloads.
#[derive(Clone, Copy, Debug, Default)]
struct Neighbour {
    /// NVMe commands per second.
    commands_s: f64,
    /// Faulting DMA accesses the hypervisor counted, per second.
    faults_s: f64,
}

/// `nvme-fault-neighbour` with the workloads' sizes on the Linux VM's
/// command line, the neighbour's commands aimed at its own RAM with
/// `own_ram`. The neighbour floods until the Linux VM has finished: then
/// a key typed to it (Ctrl-] 1, then any key) ends the flood.
fn neighbour(own_ram: bool, sizes: &Sizes, name: &str) -> (Boot, Neighbour) {
    let words = sizes.words();
    let mut cmdline = vec![("linux", words.as_str())];
    if own_ram {
        cmdline.push(("attacker", "nvme_flood_own"));
    }
    let b = boot_with_cmdline_typing(
        "nvme-fault-neighbour",
        &cmdline,
        TIMEOUT,
        &[
            ("[linux] checks: ", b"\x1d1"),
            ("[hyp] console input goes to VM attacker", b"x"),
        ],
    );
    b.assert_exit(0);
    let flood = b.checks("attacker").detail("nvme-flood-ran").to_string();
    let number = |text: &str, word: &str| {
        number_before(text, word).unwrap_or_else(|| panic!("{name}: no{word} in {text:?}"))
    };
    let seconds = number(&flood, " ms,") / 1000.0;
    let faults = b
        .console
        .lines()
        .find(|l| l.contains("VM attacker: PCI 00:02.0 (sid 0x10) made"))
        .map_or(0.0, |l| number(l, " faulting DMA accesses"));
    let n = Neighbour {
        commands_s: number(&flood, " commands submitted") / seconds,
        faults_s: faults / seconds,
    };
    (results(&b.console, name, sizes.reps), n)
}

/// The workloads each boot runs.
struct Sizes {
    /// Reads of 4 KiB per workload.
    ios: usize,
    /// Reads of 1 MiB per workload.
    mib: usize,
    /// Times each boot runs the pair of workloads.
    reps: usize,
}

impl Sizes {
    /// The kernel command line's benchmark words.
    fn words(&self) -> String {
        format!(
            "nvme.bench_ios={} nvme.bench_mib={} nvme.bench_reps={}",
            self.ios, self.mib, self.reps
        )
    }
}

/// Bare QEMU, optionally with its own SMMUv3 in front of the NVMe
/// (`iommu.strict=` chooses the guest driver's invalidation mode).
fn bare_qemu(smmu: Option<bool>, sizes: &Sizes) -> Command {
    let mut append = String::from("console=ttyAMA0 nokaslr panic=-1 init.run=nvme-bench ");
    append += &sizes.words();
    let mut args = vec![
        "-drive",
        "file=target/disks/bench.img,if=none,id=nvme0,format=raw",
        "-device",
        "nvme,drive=nvme0,serial=smmuhyp-nvme",
    ];
    if let Some(strict) = smmu {
        args.extend(["-M", "virt,gic-version=3,iommu=smmuv3"]);
        append += if strict {
            " iommu.strict=1"
        } else {
            " iommu.strict=0"
        };
    }
    scenario_tests::bare_linux_qemu("1G", &args, &append)
}

/// A scenario under the hypervisor, with the workloads' sizes added to
/// its Linux VM's command line.
fn hypervisor(scenario: &str, sizes: &Sizes) -> (Command, Option<PathBuf>) {
    let root = root();
    let p = qemu_runner::prepare_run(
        &root,
        scenario,
        &[],
        &[("linux", &sizes.words())],
        &qemu_runner::hyp_bin(&root),
    )
    .expect("scenario");
    (p.command, p.own_bundle)
}

/// How a configuration runs: bare QEMU, a scenario under the hypervisor,
/// or `nvme-fault-neighbour` (with `own_ram` the neighbour's commands go
/// to its own RAM).
#[derive(Clone, Copy)]
enum Config {
    Bare { smmu: Option<bool> },
    Hypervisor(&'static str),
    Neighbour { own_ram: bool },
}

/// A 95% interval for the median of `samples` (at least 10): the 2.5th and
/// 97.5th percentiles of the medians of 2000 resamples drawn with
/// replacement (a percentile bootstrap), from a fixed seed so that the
/// same samples give the same interval.
fn median_interval(samples: &[f64]) -> Option<(f64, f64)> {
    const RESAMPLES: usize = 2000;
    if samples.len() < 10 {
        return None;
    }
    // xorshift64: the interval needs spread, not cryptographic quality.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let n = samples.len();
    let mut draw = vec![0.0; n];
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            for d in &mut draw {
                *d = samples[(next() % n as u64) as usize];
            }
            median(&mut draw)
        })
        .collect();
    medians.sort_by(|a, b| a.total_cmp(b));
    Some((
        medians[RESAMPLES / 40],
        medians[RESAMPLES - 1 - RESAMPLES / 40],
    ))
}

/// The median over one boot's repetitions of `f`.
fn of_boot(boot: &Boot, f: &dyn Fn(&(Workload, Workload)) -> f64) -> f64 {
    median(&mut boot.iter().map(f).collect::<Vec<_>>())
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    // Names to choose configurations by (cargo adds --bench).
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // --rounds=N and --reps=N: more of either narrow the medians on a
    // noisy host; --ios=N and --mib=N: longer workloads.
    let number = |flag: &str| {
        std::env::args().find_map(|a| {
            a.strip_prefix(flag).map(|n| {
                n.parse::<usize>()
                    .expect("--rounds=, --reps=, --ios= and --mib= take a number")
            })
        })
    };
    let runs = if smoke {
        1
    } else {
        number("--rounds=").unwrap_or(5).max(1)
    };
    let sizes = if smoke {
        Sizes {
            ios: 256,
            mib: 32,
            reps: 1,
        }
    } else {
        Sizes {
            ios: number("--ios=").unwrap_or(8192).max(1),
            mib: number("--mib=").unwrap_or(1024).max(1),
            reps: number("--reps=").unwrap_or(3).max(1),
        }
    };
    let configs: [(&str, Config, &[usize]); 18] = [
        ("bare QEMU", Config::Bare { smmu: None }, &[]),
        (
            "bare QEMU + SMMUv3, strict",
            Config::Bare { smmu: Some(true) },
            &[0],
        ),
        (
            "bare QEMU + SMMUv3, lazy",
            Config::Bare { smmu: Some(false) },
            &[0],
        ),
        (
            "stage-2 passthrough",
            Config::Hypervisor("nvme-bench"),
            &[0],
        ),
        (
            "stage-2 passthrough, GICv4 direct MSIs",
            Config::Hypervisor("nvme-bench-gicv4"),
            &[0],
        ),
        (
            "nested, strict",
            Config::Hypervisor("nvme-bench-vsmmu-strict"),
            &[1],
        ),
        (
            "nested, lazy",
            Config::Hypervisor("nvme-bench-vsmmu-lazy"),
            &[2],
        ),
        (
            "stage-2 passthrough, neighbour faulting continuously",
            Config::Neighbour { own_ram: false },
            &[3, 8],
        ),
        (
            "stage-2 passthrough, neighbour's NVMe as busy without faults",
            Config::Neighbour { own_ram: true },
            &[3],
        ),
        (
            "stage-2 passthrough, CPU stage 2 in blocks",
            Config::Hypervisor("nvme-bench-blocks"),
            &[0, 3],
        ),
        (
            "nested, strict, GICv4 direct MSIs",
            Config::Hypervisor("nvme-bench-vsmmu-strict-gicv4"),
            &[1, 5],
        ),
        (
            "nested, lazy, GICv4 direct MSIs",
            Config::Hypervisor("nvme-bench-vsmmu-lazy-gicv4"),
            &[2, 6],
        ),
        (
            "like for like (16-bit LPI INTIDs): stage-2 passthrough",
            Config::Hypervisor("nvme-bench-lpi16"),
            &[0, 3],
        ),
        (
            "like for like (16-bit LPI INTIDs): stage-2 passthrough, GICv4 direct MSIs",
            Config::Hypervisor("nvme-bench-gicv4-lpi16"),
            &[0, 4],
        ),
        (
            "like for like (16-bit LPI INTIDs): nested, strict",
            Config::Hypervisor("nvme-bench-vsmmu-strict-lpi16"),
            &[1, 5],
        ),
        (
            "like for like (16-bit LPI INTIDs): nested, lazy",
            Config::Hypervisor("nvme-bench-vsmmu-lazy-lpi16"),
            &[2, 6],
        ),
        (
            "like for like (16-bit LPI INTIDs): nested, strict, GICv4 direct MSIs",
            Config::Hypervisor("nvme-bench-vsmmu-strict-gicv4-lpi16"),
            &[1, 14],
        ),
        (
            "like for like (16-bit LPI INTIDs): nested, lazy, GICv4 direct MSIs",
            Config::Hypervisor("nvme-bench-vsmmu-lazy-gicv4-lpi16"),
            &[2, 15],
        ),
    ];
    // A name chooses the configurations whose names contain it; "=NAME"
    // only the one called NAME.
    let runs_config = |name: &str| {
        chosen.is_empty()
            || chosen.iter().any(|c| match c.strip_prefix('=') {
                Some(exact) => name == exact,
                None => name.contains(c.as_str()),
            })
    };
    // results[c][round]: configuration c's boot in that round.
    let mut results: Vec<Vec<Boot>> = configs.iter().map(|_| Vec::new()).collect();
    let mut neighbours: Vec<Vec<Neighbour>> = configs.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        // Every other round runs the configurations in reverse, so that
        // none is always the first or the last of a round.
        let order: Vec<usize> = if i % 2 == 0 {
            (0..configs.len()).collect()
        } else {
            (0..configs.len()).rev().collect()
        };
        for c in order {
            let (name, config, _) = configs[c];
            if !runs_config(name) {
                continue;
            }
            let boot = match config {
                Config::Bare { smmu } => run(bare_qemu(smmu, &sizes), name, sizes.reps),
                Config::Hypervisor(scenario) => {
                    let (cmd, bundle) = hypervisor(scenario, &sizes);
                    let r = run(cmd, name, sizes.reps);
                    if let Some(b) = bundle {
                        let _ = std::fs::remove_file(b);
                    }
                    r
                }
                Config::Neighbour { own_ram } => {
                    let (r, n) = neighbour(own_ram, &sizes, name);
                    neighbours[c].push(n);
                    r
                }
            };
            if !matches!(config, Config::Bare { .. }) {
                // The counters page must work: a run under the hypervisor
                // always traps during a workload (at least its own counter
                // reads).
                assert!(
                    boot.iter().all(|r| r.0.traps > 0.0 && r.1.traps > 0.0),
                    "{name}: no trap count from the guest's counters page"
                );
            }
            println!(
                "run {}: {name}: 4 KiB random {:.0} IOPS, 1 MiB sequential {:.1} MiB/s{}",
                i + 1,
                of_boot(&boot, &|r| r.0.iops()),
                of_boot(&boot, &|r| r.1.mib_s()),
                if sizes.reps > 1 {
                    format!(" (median of {} repetitions)", sizes.reps)
                } else {
                    String::new()
                }
            );
            results[c].push(boot);
        }
    }
    // The median over the rounds of each boot's median.
    let med = |c: usize, f: &dyn Fn(&(Workload, Workload)) -> f64| {
        median(
            &mut results[c]
                .iter()
                .map(|boot| of_boot(boot, f))
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "NVMe O_DIRECT reads, one at a time, {} repetition(s) per boot, {runs} interleaved round(s); \
         ratios against the configurations in brackets: the median of the rounds' ratios, \
         with the lowest, the highest and (from 10 rounds) a 95% interval of the median:",
        sizes.reps
    );
    for (c, &(name, config, bases)) in configs.iter().enumerate() {
        if results[c].is_empty() {
            continue;
        }
        let bases: Vec<usize> = bases
            .iter()
            .copied()
            .filter(|&b| !results[b].is_empty())
            .collect();
        // Each round's ratio compares two boots of the same round: a
        // drift of the host from one round to the next cancels in it.
        let ratios = |f: &dyn Fn(&(Workload, Workload)) -> f64| {
            bases
                .iter()
                .map(|&b| {
                    let mut r: Vec<f64> = results[c]
                        .iter()
                        .zip(&results[b])
                        .map(|(mine, base)| of_boot(mine, f) / of_boot(base, f))
                        .collect();
                    let m = median(&mut r);
                    match (r.len(), median_interval(&r)) {
                        (_, Some((lo, hi))) => format!(
                            "{m:.2}x [{:.2} to {:.2}; median {lo:.2} to {hi:.2} at 95%]",
                            r[0],
                            r[r.len() - 1]
                        ),
                        (2.., None) => format!("{m:.2}x [{:.2} to {:.2}]", r[0], r[r.len() - 1]),
                        _ => format!("{m:.2}x"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        // The slowest and the fastest round of a figure.
        let spread = |f: &dyn Fn(&(Workload, Workload)) -> f64| {
            let v: Vec<f64> = results[c].iter().map(|boot| of_boot(boot, f)).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.0} to {hi:.0}")
        };
        let iops = med(c, &|r| r.0.iops());
        let mib_s = med(c, &|r| r.1.mib_s());
        let mut line = format!(
            "  {name}: 4 KiB random {iops:.0} IOPS [rounds {}]",
            spread(&|r| r.0.iops())
        );
        if !bases.is_empty() {
            line += &format!(" ({})", ratios(&|r| r.0.iops()));
        }
        line += &format!(
            ", 1 MiB sequential {mib_s:.1} MiB/s [rounds {}]",
            spread(&|r| r.1.mib_s())
        );
        if !bases.is_empty() {
            line += &format!(" ({})", ratios(&|r| r.1.mib_s()));
            let names: Vec<&str> = bases.iter().map(|&b| configs[b].0).collect();
            line += &format!(" [{}]", names.join("; "));
        }
        println!("{line}");
        // The median of `f` over one workload (4 KiB if `small`).
        let of = |f: &dyn Fn(&Workload) -> f64, small: bool| {
            med(c, &|r| f(if small { &r.0 } else { &r.1 }))
        };
        let per = |w: &dyn Fn(&Workload) -> f64, small: bool| of(&|x| w(x) / x.reads, small);
        // Traps per second of a workload.
        let rate = |small: bool| of(&|w| w.traps / w.seconds, small);
        let hypervisor = !matches!(config, Config::Bare { .. });
        let mut line = format!(
            "      per 4 KiB read: {:.2} interrupts",
            per(&|w| w.interrupts, true)
        );
        if hypervisor {
            line += &format!(
                ", {:.2} traps ({:.0}/s)",
                per(&|w| w.traps, true),
                rate(true)
            );
        }
        line += &format!(
            "; per 1 MiB read: {:.2} interrupts",
            per(&|w| w.interrupts, false)
        );
        if hypervisor {
            line += &format!(
                ", {:.2} traps ({:.0}/s)",
                per(&|w| w.traps, false),
                rate(false)
            );
            let g = med(c, &|r| r.0.guest_commands + r.1.guest_commands);
            let p = med(c, &|r| r.0.physical_commands + r.1.physical_commands);
            if g > 0.0 {
                line += &format!(
                    "; vSMMU {g:.0} guest -> {p:.0} physical commands ({:.2} per guest command)",
                    p / g
                );
            }
        }
        println!("{line}");
        if !neighbours[c].is_empty() {
            let n_med = |f: &dyn Fn(&Neighbour) -> f64| {
                median(&mut neighbours[c].iter().map(f).collect::<Vec<_>>())
            };
            println!(
                "      neighbour: {:.0} NVMe commands/s, {:.0} faulting DMA accesses/s counted by the hypervisor",
                n_med(&|n| n.commands_s),
                n_med(&|n| n.faults_s)
            );
        }
    }
}
