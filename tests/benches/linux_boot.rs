//! Linux boot benchmark: the same Debian kernel and busybox initramfs boot
//! to init on bare QEMU and under the hypervisor (scenario `linux`), side by
//! side in one run (interleaved, median of the repetitions), and the ratio
//! is printed. A third run of the same scenario reboots its guest once
//! (`init.reboot=1`: `reboot -f` inside, PSCI SYSTEM_RESET), which times a
//! restart (from the hypervisor's `restarting` line to the guest's init)
//! against that run's own cold boot (VM start to init). A fourth run boots
//! scenario `linux-blocks`, the same with its VM's CPU stage 2 in blocks
//! (`[machine] cpu_stage2 = "blocks"`) rather than the default pages, and
//! compares the guest's own boot. Wall-clock times under TCG are noisy: only the ratios
//! measured in one run mean anything.
//!
//! `cargo bench -p scenario-tests --bench linux_boot` (needs `./hv build`
//! and `guests/linux/fetch.sh` first; `./hv bench` does all of it).
//! `-- --test` boots each once, as a smoke test.

use scenario_tests::median;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The guest's init says it runs.
const INIT: &str = "init: reached on";
/// The hypervisor's line when the VM's memory is scrubbed and loaded and
/// its vCPU 0 is about to start.
const VM_START: &str = "VM linux: starting";
/// The hypervisor's line when the guest reset its VM (PSCI SYSTEM_RESET)
/// and the VM restarts: its vCPUs are parked, its memory scrubbed and its
/// images loaded again before it boots.
const RESTART: &str = "VM linux: restarting (restart 1)";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// When each console line containing one of `marks` appeared, in seconds
/// from spawning `cmd` (per mark, every occurrence in order), and when
/// QEMU exited.
fn time_marks(mut cmd: Command, marks: &[&str]) -> (Vec<Vec<f64>>, f64) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start QEMU");
    let out = child.stdout.take().unwrap();
    let mut seen = vec![Vec::new(); marks.len()];
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let now = start.elapsed().as_secs_f64();
        for (mark, at) in marks.iter().zip(&mut seen) {
            if line.contains(mark) {
                at.push(now);
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("boot did not finish within 120 s");
        }
    }
    let status = child.wait().unwrap();
    let total = start.elapsed().as_secs_f64();
    assert!(status.success(), "QEMU exited with {status}");
    (seen, total)
}

/// The `n`-th time (from 0) `mark` of `marks` appeared.
fn nth(seen: &[Vec<f64>], marks: &[&str], mark: &str, n: usize) -> f64 {
    let i = marks.iter().position(|m| *m == mark).unwrap();
    *seen[i]
        .get(n)
        .unwrap_or_else(|| panic!("{mark:?} appeared {} time(s), not {}", seen[i].len(), n + 1))
}

fn bare_qemu() -> Command {
    scenario_tests::bare_linux_qemu("512M", &[], "console=ttyAMA0 nokaslr panic=-1")
}

/// `scenario` under the hypervisor, `words` added to its guest's command
/// line; the bundle made for this run alone, if one was.
fn hypervisor(scenario: &str, words: &[(&str, &str)]) -> (Command, Option<PathBuf>) {
    let root = root();
    let p = qemu_runner::prepare_run(&root, scenario, &[], words, &qemu_runner::hyp_bin(&root))
        .expect("scenario");
    (p.command, p.own_bundle)
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let runs = if smoke { 1 } else { 9 };
    let (mut bare_init, mut bare_total) = (vec![], vec![]);
    let (mut hyp_init, mut hyp_total, mut guest_part) = (vec![], vec![], vec![]);
    let (mut cold, mut restart) = (vec![], vec![]);
    let mut blocks_part = vec![];
    for i in 0..runs {
        let (seen, b) = time_marks(bare_qemu(), &[INIT]);
        let a = seen[0][0];
        let marks = [VM_START, INIT];
        let (seen, d) = time_marks(hypervisor("linux", &[]).0, &marks);
        let (vm, c) = (nth(&seen, &marks, VM_START, 0), nth(&seen, &marks, INIT, 0));
        let marks = [VM_START, INIT, RESTART];
        let (cmd, bundle) = hypervisor("linux", &[("linux", "init.reboot=1")]);
        let (seen, _) = time_marks(cmd, &marks);
        if let Some(b) = bundle {
            let _ = std::fs::remove_file(b);
        }
        let first = nth(&seen, &marks, INIT, 0) - nth(&seen, &marks, VM_START, 0);
        let again = nth(&seen, &marks, INIT, 1) - nth(&seen, &marks, RESTART, 0);
        let marks = [VM_START, INIT];
        let (seen, _) = time_marks(hypervisor("linux-blocks", &[]).0, &marks);
        let in_blocks = nth(&seen, &marks, INIT, 0) - nth(&seen, &marks, VM_START, 0);
        println!(
            "run {}: bare QEMU {a:.2} s to init ({b:.2} s total), hypervisor {c:.2} s to init ({d:.2} s total, VM started after {vm:.2} s); \
             rebooting guest: VM start to init {first:.2} s, restart to init {again:.2} s; \
             CPU stage 2 in blocks: VM start to init {in_blocks:.2} s",
            i + 1
        );
        blocks_part.push(in_blocks);
        bare_init.push(a);
        bare_total.push(b);
        hyp_init.push(c);
        hyp_total.push(d);
        guest_part.push(c - vm);
        cold.push(first);
        restart.push(again);
    }
    let (bi, bt) = (median(&mut bare_init), median(&mut bare_total));
    let (hi, ht, gp) = (
        median(&mut hyp_init),
        median(&mut hyp_total),
        median(&mut guest_part),
    );
    let (co, re) = (median(&mut cold), median(&mut restart));
    let bp = median(&mut blocks_part);
    println!(
        "linux boot to init (2 vCPUs, 512 MiB, cortex-a57, median of {runs}): bare QEMU {bi:.2} s, under the hypervisor {hi:.2} s, ratio {:.2}",
        hi / bi
    );
    println!(
        "linux boot to power-off: bare QEMU {bt:.2} s, under the hypervisor {ht:.2} s, ratio {:.2}",
        ht / bt
    );
    println!(
        "of which the guest's own boot (VM start to init): {gp:.2} s, ratio to bare QEMU {:.2}; the rest is the hypervisor's boot and VM set-up (scrubbing 512 MiB of guest RAM, loading the images)",
        gp / bi
    );
    println!(
        "restart (reboot -f in the guest) to init: {re:.2} s, against the same runs' cold boot (VM start to init) {co:.2} s, ratio {:.2}; the restart includes parking the vCPUs, scrubbing the RAM and loading the images again",
        re / co
    );
    println!(
        "the guest's own boot with its CPU stage 2 in blocks (cpu_stage2 = \"blocks\"): {bp:.2} s, against {gp:.2} s in pages (the default), ratio {:.2}",
        bp / gp
    );
}
