//! Helpers for QEMU scenario tests: boot the hypervisor image built by
//! `./hv test` in a scenario from `guests/scenarios/`, with a hard timeout,
//! and hand back what the serial console printed. QEMU is started exactly as
//! `./hv run` starts it (`qemu_runner::prepare`).
//!
//! Guests run under TCG, one host thread per emulated CPU. So that a loaded
//! 2-core machine is not asked to run more emulated CPUs than it has cores
//! (which made guests miss their own deadlines), every boot first takes as
//! many slots of one shared budget ([`cpu_budget`]) as its machine has CPUs.
//!
//! # Check lines
//!
//! What a guest (or the hypervisor's boot self-test) judges itself, it
//! reports in one format (`guests/README.md`), which [`Boot::checks`] and
//! [`Boot::hyp_checks`] parse:
//!
//! ```text
//! check NAME: pass            check NAME: pass DETAIL
//! check NAME: FAIL DETAIL     checks: N run, M failed
//! ```
//!
//! NAME is lowercase letters and digits in words joined by `-`, unique in
//! its source. The summary line closes a run: it counts the check lines
//! since the previous summary of the same source. A VM's lines arrive
//! prefixed `[NAME] ` by the hypervisor; the hypervisor's own are log lines
//! (`[   0.512345] INFO  check ...`). A test names every check it expects
//! ([`Checks::assert_all_passed`]), so a check that stops running, one
//! nobody expected, a failure, a malformed line or a run without its
//! summary all fail the test, whatever the rest of the wording says.
//! Plain needles ([`Boot::expect`], [`Boot::reject`]) are for what the
//! hypervisor and Linux log, and for facts a test compares with its own
//! (a checksum, a line's position).

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

    /// The check lines VM `vm` printed (see the crate documentation).
    pub fn checks(&self, vm: &str) -> Checks<'_> {
        let prefix = format!("[{vm}] ");
        Checks::parse(&self.console, format!("VM {vm}"), |line| {
            line.strip_prefix(prefix.as_str())
        })
    }

    /// The check lines of the hypervisor's boot self-test: its log lines
    /// (`[   0.512345] INFO  check ...`).
    pub fn hyp_checks(&self) -> Checks<'_> {
        Checks::parse(&self.console, "the hypervisor".into(), hyp_log_text)
    }

    /// The check lines of a guest that ran without the hypervisor
    /// ([`boot_bare`]): its lines come unprefixed.
    pub fn bare_checks(&self) -> Checks<'_> {
        Checks::parse(&self.console, "the bare-QEMU guest".into(), whole_line)
    }

    /// Asserts that VM `vm` printed nothing at all (it never started).
    #[track_caller]
    pub fn assert_silent(&self, vm: &str) {
        let prefix = format!("[{vm}] ");
        if let Some(line) = self.console.lines().find(|l| l.starts_with(&prefix)) {
            panic!("VM {vm} printed {line:?}; console was:\n{}", self.console);
        }
    }
}

/// A line as it is: a guest's own, without a hypervisor around it.
fn whole_line(line: &str) -> Option<&str> {
    Some(line)
}

/// The text of a hypervisor log line (`[   0.512345] INFO  text`, see
/// `hyp/src/console.rs`), None for any other line.
fn hyp_log_text(line: &str) -> Option<&str> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("] ")?;
    let (secs, micros) = stamp.trim_start().split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || !digits(micros) {
        return None;
    }
    let (level, text) = rest.split_once(' ')?;
    ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
        .contains(&level)
        .then_some(text.trim_start())
}

/// One check line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Its name.
    pub name: String,
    /// `pass` (true) or `FAIL` (false).
    pub passed: bool,
    /// What follows the outcome, empty without.
    pub detail: String,
    /// Its index in `Boot::console.lines()`.
    pub line: usize,
}

/// The check lines of one source (a VM or the hypervisor), parsed from a
/// console; what was wrong with them is kept until an `assert_*`.
#[derive(Debug)]
pub struct Checks<'a> {
    /// "VM NAME" or "the hypervisor", for messages.
    source: String,
    console: &'a str,
    checks: Vec<Check>,
    /// Summary lines seen.
    summaries: usize,
    /// Malformed lines, duplicate names, summaries that do not match,
    /// checks after the last summary.
    problems: Vec<String>,
}

/// Whether `name` is lowercase letters and digits in words joined by `-`.
fn valid_name(name: &str) -> bool {
    name.split('-').all(|w| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// Parses `check NAME: pass[ DETAIL]` / `check NAME: FAIL[ DETAIL]`.
fn parse_check(rest: &str) -> Option<(&str, bool, &str)> {
    let (name, outcome) = rest.split_once(": ")?;
    let (word, detail) = outcome.split_once(' ').unwrap_or((outcome, ""));
    let passed = match word {
        "pass" => true,
        "FAIL" => false,
        _ => return None,
    };
    valid_name(name).then_some((name, passed, detail))
}

/// Parses `N run, M failed`.
fn parse_summary(rest: &str) -> Option<(usize, usize)> {
    let (run, failed) = rest.split_once(" run, ")?;
    let failed = failed.strip_suffix(" failed")?;
    let number = |s: &str| {
        s.parse::<usize>()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
    };
    Some((number(run)?, number(failed)?))
}

impl<'a> Checks<'a> {
    /// The check and summary lines among those `text_of` gives text for.
    fn parse(console: &'a str, source: String, text_of: impl Fn(&str) -> Option<&str>) -> Self {
        let mut c = Checks {
            source,
            console,
            checks: Vec::new(),
            summaries: 0,
            problems: Vec::new(),
        };
        // Checks since the last summary line.
        let mut open = 0;
        for (index, line) in console.lines().enumerate() {
            let Some(text) = text_of(line) else {
                continue;
            };
            if let Some(rest) = text.strip_prefix("checks: ") {
                let Some((run, failed)) = parse_summary(rest) else {
                    c.problems.push(format!("malformed summary line {line:?}"));
                    continue;
                };
                let group = &c.checks[c.checks.len() - open..];
                let group_failed = group.iter().filter(|k| !k.passed).count();
                if (run, failed) != (group.len(), group_failed) {
                    c.problems.push(format!(
                        "{line:?} does not match the {} check(s), {group_failed} failed, before it",
                        group.len()
                    ));
                }
                c.summaries += 1;
                open = 0;
            } else if let Some(rest) = text.strip_prefix("check ") {
                let Some((name, passed, detail)) = parse_check(rest) else {
                    c.problems.push(format!("malformed check line {line:?}"));
                    continue;
                };
                if c.checks.iter().any(|k| k.name == name) {
                    c.problems.push(format!("check {name} reported twice"));
                }
                c.checks.push(Check {
                    name: name.to_string(),
                    passed,
                    detail: detail.to_string(),
                    line: index,
                });
                open += 1;
            }
        }
        if open > 0 {
            c.problems.push(format!(
                "{open} check(s) after the last summary line: the run did not finish"
            ));
        }
        c
    }

    /// Every check, in console order.
    pub fn all(&self) -> &[Check] {
        &self.checks
    }

    /// The check called `name`; fails the test if there is none.
    #[track_caller]
    pub fn get(&self, name: &str) -> &Check {
        self.checks
            .iter()
            .find(|k| k.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "{} reported no check {name}; console was:\n{}",
                    self.source, self.console
                )
            })
    }

    /// The detail of check `name` (what follows `pass` or `FAIL`).
    #[track_caller]
    pub fn detail(&self, name: &str) -> &str {
        &self.get(name).detail
    }

    /// Asserts that exactly the checks `expected` ran, in any order, and
    /// passed, every run closed with a summary line that counts them, and
    /// at least one summary line came (with no names: a run that closed
    /// without checks). Anything else fails the test with every problem
    /// listed and the console shown.
    #[track_caller]
    pub fn assert_all_passed(&self, expected: &[&str]) {
        for (i, name) in expected.iter().enumerate() {
            assert!(
                !expected[..i].contains(name),
                "{name} is listed twice in the expected checks"
            );
        }
        let mut problems = self.problems.clone();
        if self.summaries == 0 {
            problems.push("no summary line (`checks: N run, M failed`)".into());
        }
        for name in expected {
            if !self.checks.iter().any(|k| k.name == *name) {
                problems.push(format!("missing check {name}"));
            }
        }
        for k in &self.checks {
            if !expected.contains(&k.name.as_str()) {
                problems.push(format!("unexpected check {}", k.name));
            }
            if !k.passed {
                problems.push(format!("check {} failed: {}", k.name, k.detail));
            }
        }
        self.fail_if(problems);
    }

    /// Asserts that no check or summary line came at all (no run started).
    #[track_caller]
    pub fn assert_none(&self) {
        let mut problems = self.problems.clone();
        problems.extend(self.checks.iter().map(|k| format!("check {} ran", k.name)));
        if self.summaries > 0 {
            problems.push(format!("{} summary line(s)", self.summaries));
        }
        self.fail_if(problems);
    }

    #[track_caller]
    fn fail_if(&self, problems: Vec<String>) {
        if !problems.is_empty() {
            panic!(
                "{} checks:\n  {}\nconsole was:\n{}",
                self.source,
                problems.join("\n  "),
                self.console
            );
        }
    }
}

/// The repository root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// sha256 of `len` MiB at `offset` MiB of a disk image, by the host.
pub fn host_sha256(image: &str, offset_mib: u32, len_mib: u32) -> String {
    let path = workspace().join(image).display().to_string();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if={path} bs=1M skip={offset_mib} count={len_mib} 2>/dev/null | sha256sum"
        ))
        .output()
        .expect("sh");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
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
    run(scenario, extra, &[], timeout, &[])
}

/// Like [`boot`] without extra QEMU arguments, with words added at the end
/// of VMs' kernel command lines for this run only: for each `(vm, words)`,
/// e.g. `("linux", "net.port=40123")` for a listener the test opened
/// (`qemu_runner::prepare_run`).
pub fn boot_with_cmdline(scenario: &str, cmdline: &[(&str, &str)], timeout: Duration) -> Boot {
    run(scenario, &[], cmdline, timeout, &[])
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
    run(scenario, extra, &[], timeout, script)
}

/// Like [`boot_with_cmdline`], typing `script` on the console as
/// [`boot_typing`] does.
pub fn boot_with_cmdline_typing(
    scenario: &str,
    cmdline: &[(&str, &str)],
    timeout: Duration,
    script: &[(&str, &[u8])],
) -> Boot {
    run(scenario, &[], cmdline, timeout, script)
}

/// Removes a run's own boot bundle when dropped (QEMU has exited or been
/// killed by then).
struct OwnBundle(Option<PathBuf>);

impl Drop for OwnBundle {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Boots `scenario` with `extra` QEMU arguments and `cmdline` words, typing
/// `script` ([`boot_typing`]).
fn run(
    scenario: &str,
    extra: &[&str],
    cmdline: &[(&str, &str)],
    timeout: Duration,
    script: &[(&str, &[u8])],
) -> Boot {
    // A clear message when the image was not built; prepare finds the same one.
    let hyp = hyp_bin();
    let extra_args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let cpus = emulated_cpus(scenario, &extra_args);
    let _slots = CpuSlots::take(cpus);
    let prepared = qemu_runner::prepare_run(&workspace(), scenario, &extra_args, cmdline, &hyp)
        .unwrap_or_else(|e| panic!("scenario {scenario}: {e}"));
    let _bundle = OwnBundle(prepared.own_bundle);
    collect(
        prepared.command,
        &format!("scenario {scenario} {extra:?}"),
        timeout,
        script,
    )
}

/// Boots a QEMU command line that runs a guest directly (no hypervisor),
/// as [`bare_baremetal_qemu`] or [`bare_linux_qemu`] make them, on `cpus`
/// emulated CPUs of the budget; kills QEMU after `timeout` and fails loudly
/// if it had to. Its check lines are [`Boot::bare_checks`].
pub fn boot_bare(cmd: std::process::Command, cpus: usize, timeout: Duration) -> Boot {
    let _slots = CpuSlots::take(cpus);
    collect(cmd, "bare QEMU", timeout, &[])
}

/// Runs QEMU's `cmd` (`what` names it in messages) until it exits, typing
/// `script` ([`boot_typing`]), and collects its console.
fn collect(
    mut cmd: std::process::Command,
    what: &str,
    timeout: Duration,
    script: &[(&str, &[u8])],
) -> Boot {
    // Always piped: `script` types into it, and a run that times out has
    // the CPUs' state asked for on the monitor QEMU multiplexes with the
    // console (`-nographic`).
    let mut child = cmd
        .stdin(Stdio::piped())
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
            if let Some(input) = stdin.as_mut() {
                dump_cpus(input, &console_now);
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            panic!(
                "{what} did not finish within {timeout:?}; console:\n{}",
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

/// Asks QEMU's monitor, through the console's input, for every emulated
/// CPU's registers (PC, PSTATE and its exception level), so that a run
/// that hangs says where each CPU was; waits until the monitor's answer
/// has ended (its next prompt) or 30 s passed (a loaded host answers
/// slowly; the wait only ever delays a failure).
fn dump_cpus(input: &mut std::process::ChildStdin, console_now: &dyn Fn() -> String) {
    use std::io::Write;
    const PROMPT: &str = "(qemu) ";
    let prompts = console_now().matches(PROMPT).count();
    // Ctrl-A c: from the serial console to the monitor.
    if input
        .write_all(b"\x01cinfo registers -a\n")
        .and_then(|()| input.flush())
        .is_err()
    {
        return;
    }
    let asked = Instant::now();
    while console_now().matches(PROMPT).count() < prompts + 2
        && asked.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(50));
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
/// (`virt`, GICv3, 2 cortex-a57 CPUs, `memory` as QEMU's `-m` takes it),
/// with `extra` QEMU arguments and the kernel command line `append`: what
/// the benchmarks compare with. Run from the repository root, so relative
/// image paths work.
pub fn bare_linux_qemu(memory: &str, extra: &[&str], append: &str) -> std::process::Command {
    let linux = workspace().join("target/guests/linux");
    let mut c = std::process::Command::new("qemu-system-aarch64");
    c.current_dir(workspace())
        .args(["-M", "virt,gic-version=3", "-cpu", "cortex-a57"])
        .args(["-smp", "2", "-m", memory])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args(extra)
        .arg("-kernel")
        .arg(linux.join("Image"))
        .arg("-initrd")
        .arg(linux.join("initramfs.cpio.gz"))
        .args(["-append", append]);
    c
}

/// The bare-metal test guest (`target/guests/baremetal.bin`) on bare QEMU
/// (`virt`, GICv3, one cortex-a57, 512 MiB, no IOMMU), with one `-device`
/// argument per entry of `devices` and the command line `append`: the
/// baseline a scenario with the same guest compares with. Run from the
/// repository root.
pub fn bare_baremetal_qemu(devices: &[&str], append: &str) -> std::process::Command {
    bare_baremetal_qemu_smp(1, devices, append)
}

/// [`bare_baremetal_qemu`] with `cpus` CPUs.
pub fn bare_baremetal_qemu_smp(
    cpus: usize,
    devices: &[&str],
    append: &str,
) -> std::process::Command {
    let mut c = std::process::Command::new("qemu-system-aarch64");
    c.current_dir(workspace())
        .args(["-M", "virt,gic-version=3", "-cpu", "cortex-a57"])
        .args(["-smp", &cpus.to_string(), "-m", "512M"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args(["-kernel", "target/guests/baremetal.bin"])
        .args(["-append", append]);
    for d in devices {
        c.args(["-device", d]);
    }
    c
}

/// The median of `v` (sorted in place); `v` must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks of VM `vm` in `console`.
    fn vm<'a>(console: &'a str, vm: &str) -> Checks<'a> {
        let prefix = format!("[{vm}] ");
        Checks::parse(console, format!("VM {vm}"), |l| {
            l.strip_prefix(prefix.as_str())
        })
    }

    fn problems(console: &str) -> Vec<String> {
        vm(console, "a").problems
    }

    const GOOD: &str = "\
[a] guest: hello
[b] check one: FAIL elsewhere
[a] check dma-read-0x60000000: pass blocked (read as zeros)
[   0.000100] INFO  check one: pass
[a] check two: pass
[a] checks: 2 run, 0 failed
";

    #[test]
    fn a_vm_s_checks() {
        let c = vm(GOOD, "a");
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.summaries, 1);
        assert_eq!(c.detail("dma-read-0x60000000"), "blocked (read as zeros)");
        assert_eq!(c.get("two").detail, "");
        assert_eq!(c.get("two").line, 4);
        c.assert_all_passed(&["two", "dma-read-0x60000000"]);
        // Another VM's and the hypervisor's lines are theirs.
        let b = vm(GOOD, "b");
        assert!(!b.get("one").passed);
        assert_eq!(b.problems.len(), 1, "{:?}", b.problems);
        let hyp = Checks::parse(GOOD, "the hypervisor".into(), hyp_log_text);
        assert_eq!(hyp.all().len(), 1);
        assert!(hyp.get("one").passed);
    }

    #[test]
    #[should_panic(expected = "missing check three")]
    fn a_missing_check_fails() {
        vm(GOOD, "a").assert_all_passed(&["two", "dma-read-0x60000000", "three"]);
    }

    #[test]
    #[should_panic(expected = "unexpected check two")]
    fn an_unexpected_check_fails() {
        vm(GOOD, "a").assert_all_passed(&["dma-read-0x60000000"]);
    }

    #[test]
    #[should_panic(expected = "check one failed: elsewhere")]
    fn a_failed_check_fails() {
        vm(
            "[b] check one: FAIL elsewhere\n[b] checks: 1 run, 1 failed\n",
            "b",
        )
        .assert_all_passed(&["one"]);
    }

    #[test]
    #[should_panic(expected = "no summary line")]
    fn a_run_without_summary_fails() {
        vm("[a] guest: hello\n", "a").assert_all_passed(&[]);
    }

    #[test]
    fn runs_close_with_matching_summaries() {
        // Two runs, each closed.
        let two = "[a] check x: pass\n[a] checks: 1 run, 0 failed\n\
                   [a] check y: FAIL no\n[a] checks: 1 run, 1 failed\n";
        assert!(problems(two).is_empty(), "{:?}", problems(two));
        for (console, problem) in [
            ("[a] check x: pass\n", "after the last summary line"),
            (
                "[a] check x: pass\n[a] checks: 2 run, 0 failed\n",
                "does not match",
            ),
            (
                "[a] check x: FAIL\n[a] checks: 1 run, 0 failed\n",
                "does not match",
            ),
            (
                "[a] check x: pass\n[a] check x: pass\n[a] checks: 2 run, 0 failed\n",
                "reported twice",
            ),
            ("[a] checks: 1 passed, 0 failed\n", "malformed summary"),
            ("[a] check Bad_Name: pass\n", "malformed check"),
            ("[a] check x: ok\n", "malformed check"),
            ("[a] check x--y: pass\n", "malformed check"),
            ("[a] check x: passed\n", "malformed check"),
        ] {
            let p = problems(console);
            assert!(p.iter().any(|m| m.contains(problem)), "{console:?}: {p:?}");
        }
    }

    #[test]
    fn none_ran() {
        vm("[a] guest: hello\n", "a").assert_none();
        let r = std::panic::catch_unwind(|| vm("[a] checks: 0 run, 0 failed\n", "a").assert_none());
        assert!(r.is_err());
    }

    #[test]
    fn hypervisor_log_lines() {
        assert_eq!(
            hyp_log_text("[   0.512345] INFO  check x: pass"),
            Some("check x: pass")
        );
        assert_eq!(
            hyp_log_text("[  12.000001] ERROR check x: FAIL y"),
            Some("check x: FAIL y")
        );
        assert_eq!(hyp_log_text("[linux] check x: pass"), None);
        assert_eq!(hyp_log_text("[linux] [    0.000000] Booting Linux"), None);
        assert_eq!(hyp_log_text("[   0.5] NOTE check x: pass"), None);
    }
}
