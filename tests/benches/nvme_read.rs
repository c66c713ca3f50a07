//! NVMe O_DIRECT read throughput inside a Linux guest: the device passed
//! through by the hypervisor (stage-2 DMA through the SMMU, INTx forwarded)
//! versus the same kernel with the same device on bare QEMU, side by side in
//! one run (interleaved, median), printing the ratio. TCG timings are
//! noisy: only the ratio measured in one run means anything.
//!
//! `cargo bench -p scenario-tests --bench nvme_read` after `./hv build` and
//! the guest fetch (`./hv bench` does it all); `-- --test` runs once.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// MiB/s the guest's nvme-bench script printed.
fn throughput(mut cmd: Command) -> f64 {
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
    line.rsplit(", ")
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

fn bare_qemu() -> Command {
    let linux = root().join("target/guests/linux");
    let mut c = Command::new("qemu-system-aarch64");
    c.current_dir(root())
        .args([
            "-M",
            "virt,gic-version=3",
            "-cpu",
            "cortex-a57",
            "-smp",
            "2",
            "-m",
            "512M",
        ])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args([
            "-drive",
            "file=target/disks/bench.img,if=none,id=nvme0,format=raw",
        ])
        .args(["-device", "nvme,drive=nvme0,serial=smmuhyp-nvme"])
        .arg("-kernel")
        .arg(linux.join("Image"))
        .arg("-initrd")
        .arg(linux.join("initramfs.cpio.gz"))
        .args([
            "-append",
            "console=ttyAMA0 nokaslr panic=-1 init.run=nvme-bench nvme.bench_mib=256",
        ]);
    c
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let runs = if smoke { 1 } else { 5 };
    let (mut bare, mut hyp) = (vec![], vec![]);
    for i in 0..runs {
        let b = throughput(bare_qemu());
        let h = throughput(
            qemu_runner::prepare(&root(), "nvme-bench", &[]).expect("scenario nvme-bench"),
        );
        println!(
            "run {}: bare QEMU {b:.1} MiB/s, passthrough under the hypervisor {h:.1} MiB/s",
            i + 1
        );
        bare.push(b);
        hyp.push(h);
    }
    let (b, h) = (median(&mut bare), median(&mut hyp));
    println!(
        "nvme O_DIRECT read, 256 MiB, bs 1M (median of {runs}): bare QEMU {b:.1} MiB/s, passthrough {h:.1} MiB/s, ratio {:.2}",
        h / b
    );
}
