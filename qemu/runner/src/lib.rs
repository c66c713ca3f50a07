//! `hv-run`: boots a scenario in QEMU.
//!
//! Finds the scenario file (a name in `guests/scenarios/` or a path), parses
//! and validates it with the `scenario` crate, checks that every image
//! exists, packs the scenario text and the images into a boot bundle
//! (`target/bundles/NAME.bundle`), and builds the QEMU command line from
//! `[machine]`: the hypervisor image is QEMU's kernel and the bundle its
//! initrd. Everything that can be wrong with a scenario is reported here,
//! before QEMU starts; the hypervisor checks the same rules again.
//!
//! The scenario tests build their QEMU command with [`prepare`] too, so
//! `./hv run` and the tests boot exactly the same machine. A test may add
//! words to a VM's kernel command line for one run ([`prepare_run`]), e.g.
//! the port of a listener it opened: that run gets a bundle of its own,
//! holding the changed scenario.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use scenario::bundle::{self, BundleError};
use scenario::{Machine, Scenario, ScenarioError};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-aarch64";

/// Where named scenarios live, relative to the repository root.
pub const SCENARIO_DIR: &str = "guests/scenarios";

/// Where bundles are written, relative to the repository root.
pub const BUNDLE_DIR: &str = "target/bundles";

/// Why a scenario cannot be started. `hv-run` prints these as
/// `scenario NAME: <error>` and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No such scenario name.
    #[error("no scenario file {path}; available: {}", available.join(" "))]
    NotFound {
        /// The file looked for.
        path: String,
        /// Names in `guests/scenarios/`.
        available: Vec<String>,
    },
    /// A file that cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The scenario does not parse or breaks a rule.
    #[error("{0}")]
    Scenario(#[from] ScenarioError),
    /// A kernel or initrd that does not exist.
    #[error("vm {vm:?}: {key} {path} does not exist")]
    MissingImage {
        /// The VM.
        vm: String,
        /// `kernel` or `initrd`.
        key: &'static str,
        /// The path as the scenario writes it (relative to the repository root).
        path: String,
    },
    /// The hypervisor image has not been built.
    #[error("hypervisor image {} does not exist: ./hv build makes it", .0.display())]
    NoHypervisor(PathBuf),
    /// Words for the command line of a VM the scenario does not have.
    #[error("no vm {0:?} to add command-line words to")]
    NoSuchVm(String),
    /// The bundle cannot be packed.
    #[error("{0}")]
    Bundle(#[from] BundleError),
    /// The bundle cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The name a scenario argument is reported and bundled under: the file
/// name without `.toml`.
pub fn scenario_name(arg: &str) -> String {
    let p = Path::new(arg);
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_string())
}

/// The scenario file for `arg`: a path if it contains `/` or ends in
/// `.toml`, otherwise `guests/scenarios/ARG.toml` under `root`.
pub fn scenario_path(root: &Path, arg: &str) -> Result<PathBuf, RunError> {
    if arg.contains('/') || arg.ends_with(".toml") {
        return Ok(PathBuf::from(arg));
    }
    let path = root.join(SCENARIO_DIR).join(format!("{arg}.toml"));
    if path.is_file() {
        return Ok(path);
    }
    Err(RunError::NotFound {
        path: format!("{SCENARIO_DIR}/{arg}.toml"),
        available: available(root),
    })
}

/// Names of the scenarios in `guests/scenarios/`, sorted.
pub fn available(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(SCENARIO_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Reads, parses and validates the scenario `arg`, and checks that every
/// image it names exists under `root`.
pub fn load(root: &Path, arg: &str) -> Result<(Scenario, String), RunError> {
    let path = scenario_path(root, arg)?;
    let text = std::fs::read_to_string(&path).map_err(|source| RunError::Read {
        path: path.clone(),
        source,
    })?;
    let s = Scenario::parse_and_validate(&text)?;
    for vm in &s.vms {
        let images = [("kernel", Some(&vm.kernel)), ("initrd", vm.initrd.as_ref())];
        for (key, path) in images {
            let Some(path) = path else { continue };
            if !root.join(path).is_file() {
                return Err(RunError::MissingImage {
                    vm: vm.name.clone(),
                    key,
                    path: path.clone(),
                });
            }
        }
    }
    Ok((s, text))
}

/// The hypervisor image: `$HYP_BIN`, or `target/hyp.bin` under `root`.
pub fn hyp_bin(root: &Path) -> PathBuf {
    std::env::var_os("HYP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/hyp.bin"))
}

/// Packs the scenario text and its images and writes the bundle to
/// `target/bundles/NAME.bundle` under `root`; returns its path. The file is
/// replaced atomically, so concurrent runs of one scenario never see a
/// half-written bundle.
pub fn write_bundle(
    root: &Path,
    name: &str,
    s: &Scenario,
    text: &str,
) -> Result<PathBuf, RunError> {
    let mut images: Vec<(&str, Vec<u8>)> = Vec::new();
    for (_, path) in s.images() {
        if images.iter().any(|(p, _)| *p == path) {
            continue; // two VMs may boot the same image
        }
        let file = root.join(path);
        let data = std::fs::read(&file).map_err(|source| RunError::Read { path: file, source })?;
        images.push((path, data));
    }
    let mut entries: Vec<(&str, &[u8])> = vec![(bundle::SCENARIO, text.as_bytes())];
    entries.extend(images.iter().map(|(p, d)| (*p, d.as_slice())));
    let blob = bundle::pack(&entries)?;

    let dir = root.join(BUNDLE_DIR);
    let path = dir.join(format!("{name}.bundle"));
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let werr = |source| RunError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(werr)?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&blob)?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(e)
    })?;
    Ok(path)
}

/// `-m` for `bytes` (validation made it a multiple of 1 MiB).
fn qemu_memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}G", bytes >> 30)
    } else {
        format!("{}M", bytes >> 20)
    }
}

/// The QEMU arguments for `machine`, booting `hyp` with `bundle` as its
/// initrd, followed by `extra` (which, coming last, override).
pub fn qemu_args(machine: &Machine, hyp: &Path, bundle: &Path, extra: &[String]) -> Vec<OsString> {
    let mut m = format!(
        "{},virtualization=on,gic-version={}",
        machine.machine, machine.gic_version
    );
    if machine.smmu {
        m.push_str(",iommu=smmuv3");
    }
    let append = format!("{} exit=semihosting", machine.bootargs);
    let mut args: Vec<OsString> = [
        "-M",
        &m,
        "-cpu",
        &machine.cpu,
        "-smp",
        &machine.cpus.to_string(),
        "-m",
        &qemu_memory(machine.memory),
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(hyp.into());
    args.push("-initrd".into());
    args.push(bundle.into());
    args.push("-append".into());
    args.push(append.trim_start().into());
    for d in &machine.devices {
        args.push("-device".into());
        args.push(d.into());
    }
    args.extend(machine.qemu_args.iter().map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    args
}

/// Everything `hv-run` does before starting QEMU: loads and validates the
/// scenario `arg`, checks its images and the hypervisor image ([`hyp_bin`]),
/// writes the bundle, and returns the QEMU command (arguments only; the
/// caller sets stdio). `root` is the repository root; `extra` goes to QEMU
/// last.
pub fn prepare(root: &Path, arg: &str, extra: &[String]) -> Result<Command, RunError> {
    prepare_with(root, arg, extra, &hyp_bin(root))
}

/// [`prepare`] with the hypervisor image `hyp`.
pub fn prepare_with(
    root: &Path,
    arg: &str,
    extra: &[String],
    hyp: &Path,
) -> Result<Command, RunError> {
    prepare_run(root, arg, extra, &[], hyp).map(|p| p.command)
}

/// A QEMU command ready to start, and the bundle written for it alone.
#[derive(Debug)]
pub struct Prepared {
    /// QEMU and its arguments, to run in the repository root.
    pub command: Command,
    /// The bundle of this run alone when its scenario was changed for it
    /// (`target/bundles/NAME.PID.N.bundle`), which the caller removes once
    /// QEMU has exited; `None` when the run boots the scenario's own
    /// `target/bundles/NAME.bundle`.
    pub own_bundle: Option<PathBuf>,
}

/// [`prepare_with`], and for each `(vm, words)` of `cmdline`, `words` added
/// at the end of VM `vm`'s kernel command line for this run only. The
/// changed scenario ([`Scenario::to_text`]) is validated again and packed
/// into a bundle of the run's own, so runs of one scenario with different
/// words can start side by side.
pub fn prepare_run(
    root: &Path,
    arg: &str,
    extra: &[String],
    cmdline: &[(&str, &str)],
    hyp: &Path,
) -> Result<Prepared, RunError> {
    let (mut s, mut text) = load(root, arg)?;
    if !hyp.is_file() {
        return Err(RunError::NoHypervisor(hyp.to_path_buf()));
    }
    let mut name = scenario_name(arg);
    if !cmdline.is_empty() {
        for (vm, words) in cmdline {
            let spec = s
                .vms
                .iter_mut()
                .find(|v| v.name == *vm)
                .ok_or_else(|| RunError::NoSuchVm(vm.to_string()))?;
            if !spec.cmdline.is_empty() {
                spec.cmdline.push(' ');
            }
            spec.cmdline.push_str(words);
        }
        text = s.to_text();
        s = Scenario::parse_and_validate(&text)?;
        static RUN: AtomicUsize = AtomicUsize::new(0);
        name = format!(
            "{name}.{}.{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        );
    }
    let bundle = write_bundle(root, &name, &s, &text)?;
    let mut command = Command::new(QEMU);
    command.args(qemu_args(&s.machine, hyp, &bundle, extra));
    // Relative paths in a scenario's QEMU arguments (disk images) are
    // relative to the repository root, like its image paths.
    command.current_dir(root);
    Ok(Prepared {
        command,
        own_bundle: (!cmdline.is_empty()).then_some(bundle),
    })
}

/// What the guests' own checks said, from the console lines they print
/// (`[VM] checks: N run, M failed`, the summary every test guest ends
/// with; `guests/README.md`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// (VM, checks run, checks failed), in the order the summaries came.
    pub summaries: Vec<(String, u32, u32)>,
}

impl Verdict {
    /// Takes one console line.
    pub fn line(&mut self, line: &str) {
        let Some(at) = line.find("checks: ") else {
            return;
        };
        let vm = line[..at]
            .trim()
            .strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .unwrap_or("")
            .to_string();
        let rest = &line[at + "checks: ".len()..];
        let mut words = rest.split_whitespace();
        let (Some(run), Some("run,"), Some(failed), Some("failed")) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return;
        };
        if let (Ok(run), Ok(failed)) = (run.parse(), failed.parse()) {
            self.summaries.push((vm, run, failed));
        }
    }

    /// One line per VM whose checks failed.
    pub fn failures(&self) -> Vec<String> {
        self.summaries
            .iter()
            .filter(|(_, _, failed)| *failed > 0)
            .map(|(vm, run, failed)| match vm.as_str() {
                "" => format!("a guest: {failed} of {run} checks failed"),
                vm => format!("VM {vm}: {failed} of {run} checks failed"),
            })
            .collect()
    }
}
