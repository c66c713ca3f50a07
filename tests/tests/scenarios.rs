//! Scenario files: a scenario that cannot run stops `hv-run` (what `./hv run`
//! starts) with exit status 2 and one line that names the problem, before
//! QEMU starts.

use std::path::PathBuf;
use std::process::Command;

use scenario_tests::workspace;

/// Runs `hv-run FILE` the way `./hv run` does; returns exit code and stderr.
fn hv_run(file: &PathBuf) -> (Option<i32>, String) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args(["run", "-q", "-p", "qemu-runner", "--bin", "hv-run", "--"])
        .arg(file)
        .output()
        .expect("cannot run cargo");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MACHINE: &str = "[machine]\ncpus = 2\nmemory = \"1G\"\n";

fn vm(name: &str, cpus: u32, extra: &str) -> String {
    format!(
        "\n[[vm]]\nname = \"{name}\"\ncpus = {cpus}\nmemory = \"256M\"\n\
         kernel = \"target/guests/none/Image\"\n{extra}"
    )
}

#[test]
fn scenario_errors_are_clear() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hv-scenario-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "unknown-key",
            format!("{MACHINE}{}", vm("linux", 1, "memroy = \"512M\"\n")),
            "scenario unknown-key: line 10: vm \"linux\": unknown key \"memroy\"",
        ),
        (
            "overlap",
            format!("{MACHINE}{}", vm("linux", 1, "ram_base = 0x3000_0000\n")),
            "scenario overlap: line 5: vm \"linux\": RAM 0x30000000..0x40000000 overlaps the guest's PCI ECAM at 0x30000000..0x40000000",
        ),
        (
            "too-many-vcpus",
            format!("{MACHINE}{}{}", vm("linux", 2, ""), vm("bare", 1, "ram_base = 0x8000_0000\n")),
            "scenario too-many-vcpus: machine: the VMs need 3 vCPUs in all, the machine has 2 CPUs (each vCPU is pinned to its own CPU)",
        ),
        (
            "missing-image",
            format!("{MACHINE}{}", vm("linux", 2, "")),
            "scenario missing-image: vm \"linux\": kernel target/guests/none/Image does not exist",
        ),
    ];
    for (name, text, message) in cases {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, stderr) = hv_run(&file);
        assert_eq!(code, Some(2), "{name}: stderr was {stderr}");
        assert_eq!(stderr.trim_end(), message, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
