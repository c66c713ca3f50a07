//! `hv-run SCENARIO [QEMU ARGS...]`: boots a scenario in QEMU and exits
//! with QEMU's status. SCENARIO is a name in `guests/scenarios/` or a path
//! to a `.toml` file. A scenario that cannot run is reported as
//! `scenario NAME: <error>` with exit status 2, before QEMU starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    let mut cmd = match qemu_runner::prepare(&root, &arg, &extra) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("scenario {}: {e}", qemu_runner::scenario_name(&arg));
            return ExitCode::from(2);
        }
    };
    run(&mut cmd)
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

/// Replaces this process with QEMU, so signals and the terminal go straight
/// to it and its status is ours.
#[cfg(unix)]
fn run(cmd: &mut std::process::Command) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    eprintln!("hv-run: cannot start {}: {e}", qemu_runner::QEMU);
    ExitCode::from(127)
}

#[cfg(not(unix))]
fn run(cmd: &mut std::process::Command) -> ExitCode {
    match cmd.status() {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1) as u8),
        Err(e) => {
            eprintln!("hv-run: cannot start {}: {e}", qemu_runner::QEMU);
            ExitCode::from(127)
        }
    }
}
