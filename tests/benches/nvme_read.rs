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
//! Configurations: bare QEMU (MSI-X, no IOMMU); bare QEMU with its own
//! SMMUv3, the guest's `arm-smmu-v3` in strict and in lazy invalidation
//! mode (the reference for nested translation); the device passed through
//! with stage-2 translation only, its MSIs through the list registers (a
//! GICv3) and injected directly by a GICv4; and behind the guest's vSMMU
//! (nested), strict and lazy. Stage-2 passthrough is compared with bare QEMU, each
//! nested mode with bare QEMU's own SMMU in the same mode.
//!
//! TCG timings are noisy: only ratios measured in one run mean anything.
//! `cargo bench -p scenario-tests --bench nvme_read` after `./hv build` and
//! the guest fetch (`./hv bench` does it all); `-- --test` runs each
//! configuration once with short workloads.

use scenario_tests::median;
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

/// Runs one guest to its end; returns its (4 KiB random, 1 MiB sequential)
/// workloads.
fn run(mut cmd: Command, name: &str) -> (Workload, Workload) {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("cannot start QEMU");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text
        .lines()
        .filter(|l| l.contains("nvme-bench: disk-bench:"));
    let mut next = |what: &str| {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{name}: no {what} result; console:\n{text}"));
        parse(line).unwrap_or_else(|| panic!("{name}: cannot parse {line:?}"))
    };
    let small = next("4 KiB");
    let large = next("1 MiB");
    (small, large)
}

/// The kernel command line's benchmark words: the workloads' sizes.
fn sizes(smoke: bool) -> &'static str {
    if smoke {
        "nvme.bench_ios=256 nvme.bench_mib=32"
    } else {
        "nvme.bench_ios=8192 nvme.bench_mib=1024"
    }
}

/// Bare QEMU, optionally with its own SMMUv3 in front of the NVMe
/// (`iommu.strict=` chooses the guest driver's invalidation mode).
fn bare_qemu(smmu: Option<bool>, smoke: bool) -> Command {
    let mut append = String::from("console=ttyAMA0 nokaslr panic=-1 init.run=nvme-bench ");
    append += sizes(smoke);
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
    scenario_tests::bare_linux_qemu(&args, &append)
}

/// A scenario under the hypervisor, with the workloads' sizes added to
/// its Linux VM's command line.
fn hypervisor(scenario: &str, smoke: bool) -> (Command, Option<PathBuf>) {
    let root = root();
    let p = qemu_runner::prepare_run(
        &root,
        scenario,
        &[],
        &[("linux", sizes(smoke))],
        &qemu_runner::hyp_bin(&root),
    )
    .expect("scenario");
    (p.command, p.own_bundle)
}

#[derive(Clone, Copy)]
enum Config {
    Bare { smmu: Option<bool> },
    Hypervisor(&'static str),
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let runs = if smoke { 1 } else { 5 };
    // (name, configuration, index of the configuration it is compared with)
    let configs: [(&str, Config, usize); 7] = [
        ("bare QEMU", Config::Bare { smmu: None }, 0),
        (
            "bare QEMU + SMMUv3, strict",
            Config::Bare { smmu: Some(true) },
            0,
        ),
        (
            "bare QEMU + SMMUv3, lazy",
            Config::Bare { smmu: Some(false) },
            0,
        ),
        ("stage-2 passthrough", Config::Hypervisor("nvme-bench"), 0),
        (
            "stage-2 passthrough, GICv4 direct MSIs",
            Config::Hypervisor("nvme-bench-gicv4"),
            0,
        ),
        (
            "nested, strict",
            Config::Hypervisor("nvme-bench-vsmmu-strict"),
            1,
        ),
        (
            "nested, lazy",
            Config::Hypervisor("nvme-bench-vsmmu-lazy"),
            2,
        ),
    ];
    let mut results: Vec<Vec<(Workload, Workload)>> = configs.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        for (c, &(name, config, _)) in configs.iter().enumerate() {
            let r = match config {
                Config::Bare { smmu } => run(bare_qemu(smmu, smoke), name),
                Config::Hypervisor(scenario) => {
                    let (cmd, bundle) = hypervisor(scenario, smoke);
                    let r = run(cmd, name);
                    if let Some(b) = bundle {
                        let _ = std::fs::remove_file(b);
                    }
                    // The counters page must work: a run under the
                    // hypervisor always traps during a workload (at least
                    // its own counter reads).
                    assert!(
                        r.0.traps > 0.0 && r.1.traps > 0.0,
                        "{name}: no trap count from the guest's counters page"
                    );
                    r
                }
            };
            println!(
                "run {}: {name}: 4 KiB random {:.0} IOPS, 1 MiB sequential {:.1} MiB/s",
                i + 1,
                r.0.iops(),
                r.1.mib_s()
            );
            results[c].push(r);
        }
    }
    let med = |c: usize, f: &dyn Fn(&(Workload, Workload)) -> f64| {
        median(&mut results[c].iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "NVMe O_DIRECT reads, one at a time, median of {runs} interleaved runs; \
         ratios against the configuration in brackets:"
    );
    for (c, &(name, config, base)) in configs.iter().enumerate() {
        let iops = med(c, &|r| r.0.iops());
        let mib_s = med(c, &|r| r.1.mib_s());
        let mut line = format!("  {name}: 4 KiB random {iops:.0} IOPS");
        if c != base {
            line += &format!(" ({:.2}x)", iops / med(base, &|r| r.0.iops()));
        }
        line += &format!(", 1 MiB sequential {mib_s:.1} MiB/s");
        if c != base {
            line += &format!(" ({:.2}x)", mib_s / med(base, &|r| r.1.mib_s()));
        }
        if c != base {
            line += &format!(" [{}]", configs[base].0);
        }
        println!("{line}");
        let per = |w: &dyn Fn(&Workload) -> f64, small: bool| {
            med(c, &|r| {
                let w0 = if small { &r.0 } else { &r.1 };
                w(w0) / w0.reads
            })
        };
        let mut line = format!(
            "      per 4 KiB read: {:.2} interrupts",
            per(&|w| w.interrupts, true)
        );
        if let Config::Hypervisor(_) = config {
            line += &format!(", {:.2} traps", per(&|w| w.traps, true));
        }
        line += &format!(
            "; per 1 MiB read: {:.2} interrupts",
            per(&|w| w.interrupts, false)
        );
        if let Config::Hypervisor(_) = config {
            line += &format!(", {:.2} traps", per(&|w| w.traps, false));
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
    }
}
