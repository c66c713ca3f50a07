//! NVMe O_DIRECT read throughput inside a Linux guest: the device passed
//! through by the hypervisor (stage-2 DMA through the SMMU, MSI-X through
//! the vITS) versus the same kernel with the same device on bare QEMU, side
//! by side in one run (interleaved, median), printing the ratio. TCG timings are
//! noisy: only the ratio measured in one run means anything.
//!
//! Under the hypervisor the guest also reads its own counters page before
//! and after the read (`smmuhyp,vm-counters`), so the traps and vSMMU
//! commands are those of the I/O alone, not of boot and power-off.
//!
//! `cargo bench -p scenario-tests --bench nvme_read` after `./hv build` and
//! the guest fetch (`./hv bench` does it all); `-- --test` runs once.

use scenario_tests::median;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What one run printed: MiB/s, and for runs under the hypervisor the
/// VM's traps and its vSMMU's guest and physical commands during the read.
struct Run {
    mib_s: f64,
    traps: f64,
    commands: (f64, f64),
}

fn number_before(line: &str, word: &str) -> Option<f64> {
    let i = line.find(word)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

fn run(mut cmd: Command) -> Run {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("cannot start QEMU");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("nvme-bench: read"))
        .unwrap_or_else(|| panic!("no nvme-bench result; console:\n{text}"));
    let mib_s = line
        .rsplit(", ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    // "nvme-bench: during the read: N traps, vSMMU G guest -> P physical
    // commands" (runs under the hypervisor only).
    let during = text
        .lines()
        .find(|l| l.contains("nvme-bench: during the read:"));
    let traps = during
        .and_then(|l| number_before(l, " traps"))
        .unwrap_or(0.0);
    let commands = during
        .and_then(|l| {
            Some((
                number_before(l, " guest ->")?,
                number_before(l, " physical commands")?,
            ))
        })
        .unwrap_or((0.0, 0.0));
    Run {
        mib_s,
        traps,
        commands,
    }
}
fn bare_qemu() -> Command {
    scenario_tests::bare_linux_qemu(
        &[
            "-drive",
            "file=target/disks/bench.img,if=none,id=nvme0,format=raw",
            "-device",
            "nvme,drive=nvme0,serial=smmuhyp-nvme",
        ],
        "console=ttyAMA0 nokaslr panic=-1 init.run=nvme-bench nvme.bench_mib=256",
    )
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let runs = if smoke { 1 } else { 5 };
    let configs: [(&str, Option<&str>); 4] = [
        ("bare QEMU", None),
        ("stage-2-only passthrough", Some("nvme-bench")),
        ("nested, strict", Some("nvme-bench-vsmmu-strict")),
        ("nested, lazy", Some("nvme-bench-vsmmu-lazy")),
    ];
    let mut results: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        for (c, (name, scenario)) in configs.iter().enumerate() {
            let cmd = match scenario {
                None => bare_qemu(),
                Some(s) => qemu_runner::prepare(&root(), s, &[]).expect("scenario"),
            };
            let r = run(cmd);
            // The counters page must work: a run under the hypervisor
            // always traps during the read (at least its own counter reads).
            assert!(
                scenario.is_none() || r.traps > 0.0,
                "{name}: no trap count from the guest's counters page"
            );
            println!("run {}: {name}: {:.1} MiB/s", i + 1, r.mib_s);
            results[c].push(r);
        }
    }
    let base = median(&mut results[0].iter().map(|r| r.mib_s).collect::<Vec<_>>());
    println!("nvme O_DIRECT read, 256 MiB, bs 1M, median of {runs}, side by side:");
    for (c, (name, _)) in configs.iter().enumerate() {
        let rs = &results[c];
        let m = median(&mut rs.iter().map(|r| r.mib_s).collect::<Vec<_>>());
        let mut line = format!("  {name}: {m:.1} MiB/s, ratio to bare {:.2}", m / base);
        if c > 0 {
            let traps = median(&mut rs.iter().map(|r| r.traps).collect::<Vec<_>>());
            line += &format!(", {:.1} traps per MiB read", traps / 256.0);
        }
        let (g, p) = rs.last().map_or((0.0, 0.0), |r| r.commands);
        if g > 0.0 {
            line += &format!(
                ", vSMMU {g:.0} guest -> {p:.0} physical commands ({:.2} per guest command)",
                p / g
            );
        }
        println!("{line}");
    }
}
