//! `hv-run SCENARIO [QEMU ARGS...]`: boots a scenario in QEMU. SCENARIO is
//! a name in `guests/scenarios/` or a path to a `.toml` file. A scenario
//! that cannot run is reported as `scenario NAME: <error>` with exit status
//! 2, before QEMU starts.
//!
//! QEMU's console is passed through as it comes. The exit status is
//! QEMU's (0 when every VM powered off cleanly), or 1 when it is 0 but a
//! guest's own checks failed (its `checks: N run, M failed` line).
//!
//! When standard input is a terminal, every VM booted with an initrd (the
//! Linux guest) gets `init.shell` on its command line: after its checks
//! and their one-line verdict, its init starts a shell on the console, and
//! `poweroff` there ends the run.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

fn main() -> ExitCode {
    let Some(root) = root() else {
        eprintln!(
            "hv-run: not inside a checkout of this repository (no guests/scenarios and hv in the \
             current directory, the executable's, or any above them)"
        );
        return ExitCode::from(2);
    };
    let mut args = std::env::args().skip(1);
    let Some(arg) = args.next() else {
        eprintln!("usage: hv-run SCENARIO [QEMU ARGS...]");
        eprintln!("scenarios: {}", qemu_runner::available(&root).join(" "));
        return ExitCode::from(2);
    };
    let extra: Vec<String> = args.collect();
    let shell = std::io::stdin().is_terminal();
    let prepared = qemu_runner::load(&root, &arg).and_then(|(s, _)| {
        let linux: Vec<(&str, &str)> = s
            .vms
            .iter()
            .filter(|v| shell && v.initrd.is_some())
            .map(|v| (v.name.as_str(), "init.shell"))
            .collect();
        qemu_runner::prepare_run(&root, &arg, &extra, &linux, &qemu_runner::hyp_bin(&root))
    });
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("scenario {}: {e}", qemu_runner::scenario_name(&arg));
            return ExitCode::from(2);
        }
    };
    let status = run(prepared.command);
    if let Some(bundle) = prepared.own_bundle {
        let _ = std::fs::remove_file(bundle);
    }
    status
}

/// The checkout this runs in: the current directory or the nearest of its
/// ancestors that holds `guests/scenarios` and `hv`, else the nearest such
/// ancestor of the executable (`target/debug/hv-run` run from elsewhere).
/// Never the directory it was compiled in: a copied checkout boots its own
/// images.
fn root() -> Option<PathBuf> {
    let is_root = |d: &Path| d.join("guests/scenarios").is_dir() && d.join("hv").is_file();
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    [cwd, exe].into_iter().flatten().find_map(|start| {
        start
            .ancestors()
            .find(|d| is_root(d))
            .map(Path::to_path_buf)
    })
}

/// Runs QEMU with its console passed through, and judges the guests'
/// check summaries on the way.
fn run(mut cmd: std::process::Command) -> ExitCode {
    let mut child = match cmd.stdout(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hv-run: cannot start {}: {e}", qemu_runner::QEMU);
            return ExitCode::from(127);
        }
    };
    let mut verdict = qemu_runner::Verdict::default();
    if let Some(mut out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        let mut line = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let _ = stdout.write_all(&buf[..n]);
            let _ = stdout.flush();
            for &b in &buf[..n] {
                if b == b'\n' {
                    verdict.line(&String::from_utf8_lossy(&line));
                    line.clear();
                } else if line.len() < 4096 {
                    line.push(b);
                }
            }
        }
    }
    let code = match child.wait() {
        Ok(s) => s.code().unwrap_or(1),
        Err(_) => 1,
    };
    let failures = verdict.failures();
    for f in &failures {
        eprintln!("hv-run: {f}");
    }
    match code {
        0 if !failures.is_empty() => ExitCode::from(1),
        c => ExitCode::from(u8::try_from(c).unwrap_or(1)),
    }
}
