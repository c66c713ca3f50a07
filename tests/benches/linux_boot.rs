//! Linux boot benchmark: the same Debian kernel and busybox initramfs boot
//! to init on bare QEMU and under the hypervisor (scenario `linux`), side by
//! side in one run (interleaved, median of the repetitions), and the ratio
//! is printed. Wall-clock times under TCG are noisy: only the ratio measured
//! in one run means anything.
//!
//! `cargo bench -p scenario-tests --bench linux_boot` (needs `./hv build`
//! and `guests/linux/fetch.sh` first; `./hv bench` does all of it).
//! `-- --test` boots each once, as a smoke test.

use scenario_tests::median;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARK: &str = "init: reached on";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The hypervisor's line saying the VM is built and about to start.
const VM_START: &str = "VM linux: 2 vCPU(s)";

/// Seconds from spawning `cmd` to the first console line containing MARK,
/// to QEMU's exit, and to the hypervisor starting the VM (0 on bare QEMU).
fn time_boot(mut cmd: Command) -> (f64, f64, f64) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start QEMU");
    let out = child.stdout.take().unwrap();
    let mut to_init = None;
    let mut to_vm = 0.0;
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if to_vm == 0.0 && line.contains(VM_START) {
            to_vm = start.elapsed().as_secs_f64();
        }
        if to_init.is_none() && line.contains(MARK) {
            to_init = Some(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("boot did not finish within 120 s");
        }
    }
    let status = child.wait().unwrap();
    let total = start.elapsed().as_secs_f64();
    assert!(status.success(), "QEMU exited with {status}");
    (to_init.expect("the guest never reached init"), total, to_vm)
}

fn bare_qemu() -> Command {
    scenario_tests::bare_linux_qemu(&[], "console=ttyAMA0 nokaslr panic=-1")
}

fn hypervisor() -> Command {
    qemu_runner::prepare(&root(), "linux", &[]).expect("scenario linux")
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let runs = if smoke { 1 } else { 5 };
    let (mut bare_init, mut bare_total) = (vec![], vec![]);
    let (mut hyp_init, mut hyp_total, mut guest_part) = (vec![], vec![], vec![]);
    for i in 0..runs {
        let (a, b, _) = time_boot(bare_qemu());
        let (c, d, vm) = time_boot(hypervisor());
        println!(
            "run {}: bare QEMU {a:.2} s to init ({b:.2} s total), hypervisor {c:.2} s to init ({d:.2} s total, VM started after {vm:.2} s)",
            i + 1
        );
        bare_init.push(a);
        bare_total.push(b);
        hyp_init.push(c);
        hyp_total.push(d);
        guest_part.push(c - vm);
    }
    let (bi, bt) = (median(&mut bare_init), median(&mut bare_total));
    let (hi, ht, gp) = (
        median(&mut hyp_init),
        median(&mut hyp_total),
        median(&mut guest_part),
    );
    println!(
        "linux boot to init (2 vCPUs, 512 MiB, cortex-a57, median of {runs}): bare QEMU {bi:.2} s, under the hypervisor {hi:.2} s, ratio {:.2}",
        hi / bi
    );
    println!(
        "linux boot to power-off: bare QEMU {bt:.2} s, under the hypervisor {ht:.2} s, ratio {:.2}",
        ht / bt
    );
    println!(
        "of which the guest's own boot (VM start to init): {gp:.2} s, ratio to bare QEMU {:.2}; the rest is the hypervisor's boot and VM set-up (zeroing 512 MiB of guest RAM, loading the images)",
        gp / bi
    );
}
