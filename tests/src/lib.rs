//! Helpers for QEMU scenario tests: boot the hypervisor image built by
//! `./hv test` in a scenario from `guests/scenarios/`, with a hard timeout,
//! and hand back what the serial console printed. QEMU is started exactly as
//! `./hv run` starts it (`qemu_runner::prepare`).
//!
//! Guests run under TCG, one host thread per emulated CPU. So that a loaded
//! 2-core machine is not asked to run more emulated CPUs than it has cores
//! (which made guests miss their own deadlines), every boot first takes as
//! many slots of one shared budget ([`cpu_budget`]) as its machine has CPUs.

use std::cell::Cell;
use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// What one boot printed.
///
/// A test must look at QEMU's exit status ([`Boot::assert_exit`]): a boot
/// whose status nobody checked fails the test when it is dropped.
#[derive(Debug)]
pub struct Boot {
    /// Everything on the serial console (carriage returns removed).
    pub console: String,
    status: Option<i32>,
    status_checked: Cell<bool>,
}

impl Drop for Boot {
    fn drop(&mut self) {
        if !self.status_checked.get() && !std::thread::panicking() {
            panic!(
                "the test never checked QEMU's exit status ({:?}); console was:\n{}",
                self.status, self.console
            );
        }
    }
}

impl Boot {
    /// Asserts that QEMU exited with `code` (0: every VM powered off
    /// cleanly, or the machine-only run finished; 1: a VM or the
    /// hypervisor failed), showing the console otherwise.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) {
        self.status_checked.set(true);
        assert_eq!(
            self.status,
            Some(code),
            "QEMU's exit status; console was:\n{}",
            self.console
        );
    }

    /// Asserts that some console line contains `needle`, showing the whole
    /// console otherwise.
    #[track_caller]
    pub fn expect(&self, needle: &str) -> &str {
        match self.console.lines().find(|l| l.contains(needle)) {
            Some(line) => line,
            None => panic!(
                "console has no line with {needle:?}; console was:\n{}",
                self.console
            ),
        }
    }

    /// Asserts that no console line contains `needle`.
    #[track_caller]
    pub fn reject(&self, needle: &str) {
        if let Some(line) = self.console.lines().find(|l| l.contains(needle)) {
            panic!(
                "console unexpectedly has {line:?}; console was:\n{}",
                self.console
            );
        }
    }

    /// Number of console lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.console.lines().filter(|l| l.contains(needle)).count()
    }
}

/// The repository root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The hypervisor image: `$HYP_BIN`, or `target/hyp.bin`.
pub fn hyp_bin() -> PathBuf {
    let path = qemu_runner::hyp_bin(&workspace());
    assert!(
        path.exists(),
        "{} does not exist: run the tests through ./hv test, which builds it",
        path.display()
    );
    path
}

/// Boots `scenario` (a name in `guests/scenarios/` or a path) with extra
/// QEMU arguments; kills QEMU after `timeout` and fails loudly if it had to.
pub fn boot(scenario: &str, extra: &[&str], timeout: Duration) -> Boot {
    boot_typing(scenario, extra, timeout, &[])
}

/// Like [`boot`], and types on the console: for each `(marker, keys)` in
/// order, waits until the console shows `marker`, then sends `keys` to the
/// machine's serial input.
pub fn boot_typing(
    scenario: &str,
    extra: &[&str],
    timeout: Duration,
    script: &[(&str, &[u8])],
) -> Boot {
    // A clear message when the image was not built; prepare finds the same one.
    hyp_bin();
    let extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let cpus = emulated_cpus(scenario, &extra_args);
    let _slots = CpuSlots::take(cpus);
    let mut cmd = qemu_runner::prepare(&workspace(), scenario, &extra_args)
        .unwrap_or_else(|e| panic!("scenario {scenario}: {e}"));
    let mut child = cmd
        .stdin(if script.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start qemu-system-aarch64");
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let console_now = || String::from_utf8_lossy(&seen.lock().unwrap()).replace('\r', "");
    let mut steps = script.iter();
    let mut next = steps.next();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if let (Some((marker, keys)), Some(input)) = (next, stdin.as_mut()) {
            if console_now().contains(marker) {
                use std::io::Write;
                input.write_all(keys).expect("cannot type into QEMU");
                input.flush().unwrap();
                next = steps.next();
            }
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            panic!(
                "scenario {scenario} {extra:?} did not finish within {timeout:?}; console:\n{}",
                console_now()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let _ = reader.join();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let mut console = console_now();
    if !err.is_empty() {
        console.push_str("\n--- qemu stderr ---\n");
        console.push_str(&err);
    }
    Boot {
        console,
        status,
        status_checked: Cell::new(false),
    }
}

/// The timeout every scenario test uses. It is not a performance bound:
/// it only turns a hang into a failure, so it is generous enough for a
/// machine that also runs a second test suite beside this one.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// How many emulated CPUs may run at once: the host's cores.
pub fn cpu_budget() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Emulated CPUs of a boot: the scenario machine's, or the last `-smp` in
/// the extra QEMU arguments (which override it).
fn emulated_cpus(scenario: &str, extra: &[String]) -> usize {
    let from_extra = extra
        .windows(2)
        .filter(|w| w[0] == "-smp")
        .filter_map(|w| w[1].split(',').next()?.parse().ok())
        .next_back();
    from_extra.unwrap_or_else(|| {
        qemu_runner::load(&workspace(), scenario).map_or(1, |(s, _)| s.machine.cpus as usize)
    })
}

/// Emulated CPUs in use by this test process's running boots.
static IN_USE: Mutex<usize> = Mutex::new(0);
static RELEASED: Condvar = Condvar::new();

/// Slots of the CPU budget held by one boot; given back when dropped.
struct CpuSlots(usize);

impl CpuSlots {
    /// Waits until `cpus` slots (at most the whole budget) are free.
    fn take(cpus: usize) -> Self {
        let want = cpus.clamp(1, cpu_budget());
        let mut used = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        while *used + want > cpu_budget() {
            used = RELEASED.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += want;
        Self(want)
    }
}

impl Drop for CpuSlots {
    fn drop(&mut self) {
        *IN_USE.lock().unwrap_or_else(|e| e.into_inner()) -= self.0;
        RELEASED.notify_all();
    }
}

/// The same Debian guest as the hypervisor's Linux scenarios, on bare QEMU
/// (`virt`, GICv3, 2 cortex-a57 CPUs, 512 MiB), with `extra` QEMU arguments
/// and the kernel command line `append`: what the benchmarks compare with.
/// Run from the repository root, so relative image paths work.
pub fn bare_linux_qemu(extra: &[&str], append: &str) -> std::process::Command {
    let linux = workspace().join("target/guests/linux");
    let mut c = std::process::Command::new("qemu-system-aarch64");
    c.current_dir(workspace())
        .args(["-M", "virt,gic-version=3", "-cpu", "cortex-a57"])
        .args(["-smp", "2", "-m", "512M"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args(extra)
        .arg("-kernel")
        .arg(linux.join("Image"))
        .arg("-initrd")
        .arg(linux.join("initramfs.cpio.gz"))
        .args(["-append", append]);
    c
}

/// The median of `v` (sorted in place); `v` must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
