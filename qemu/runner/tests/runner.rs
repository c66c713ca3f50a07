//! The runner builds the QEMU command a scenario asks for, and stops with a
//! clear error, before QEMU starts, when the scenario cannot run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use qemu_runner::{hyp_bin, prepare, prepare_run, prepare_with, RunError};
use scenario::bundle::Bundle;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A scratch repository root with a (fake) hypervisor image and the given
/// scenario files.
struct Root(PathBuf);

impl Root {
    fn new(scenarios: &[(&str, &str)]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "hv-runner-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("guests/scenarios")).unwrap();
        std::fs::create_dir_all(dir.join("target")).unwrap();
        std::fs::write(dir.join("target/hyp.bin"), b"hyp").unwrap();
        for (name, text) in scenarios {
            std::fs::write(dir.join(format!("guests/scenarios/{name}.toml")), text).unwrap();
        }
        Self(dir)
    }

    fn file(&self, path: &str, data: &[u8]) {
        let p = self.0.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(cmd: &Command) -> Vec<String> {
    cmd.get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn err(root: &Path, name: &str) -> RunError {
    prepare(root, name, &[]).expect_err("scenario should be refused")
}

const MACHINE: &str = "[machine]\ncpus = 4\nmemory = \"2G\"\n";

#[test]
fn selftest_command_line() {
    let text = std::fs::read_to_string(repo().join("guests/scenarios/selftest.toml")).unwrap();
    let root = Root::new(&[("selftest", &text)]);
    let cmd = prepare(&root.0, "selftest", &["-smp".into(), "4".into()]).unwrap();
    assert_eq!(cmd.get_program(), "qemu-system-aarch64");
    let hyp = hyp_bin(&root.0);
    let bundle = root.0.join("target/bundles/selftest.bundle");
    let expected: Vec<OsString> = [
        "-M",
        "virt,virtualization=on,gic-version=3,iommu=smmuv3",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "1G",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
        hyp.to_str().unwrap(),
        "-initrd",
        bundle.to_str().unwrap(),
        "-append",
        "selftest=dma selftest=its selftest=msi exit=semihosting",
        "-device",
        "edu,dma_mask=0xffffffffff",
        "-smp",
        "4",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    assert_eq!(cmd.get_args().collect::<Vec<_>>(), expected);
    // The bundle carries the scenario text, which is all selftest needs.
    let blob = std::fs::read(&bundle).unwrap();
    let b = Bundle::parse(&blob).unwrap();
    assert_eq!(b.scenario(), Some(text.as_str()));
    assert_eq!(b.len(), 1);
}

#[test]
fn machine_type_smmu_and_raw_args() {
    let stage1 = "[machine]\ncpus = 2\nmemory = \"1536M\"\nmachine = \"virt-9.1\"\n\
                  qemu_args = [\"-global\", \"arm-smmuv3.stage=1\"]\ncpu = \"cortex-a57\"\n";
    let nosmmu = "[machine]\ncpus = 1\nmemory = \"1G\"\nsmmu = false\n";
    let v4 = "[machine]\ncpus = 1\nmemory = \"1G\"\ngic_version = 4\n";
    let root = Root::new(&[("s1", stage1), ("nosmmu", nosmmu), ("v4", v4)]);
    let a = args(&prepare(&root.0, "s1", &["-S".into()]).unwrap());
    assert_eq!(
        a[..8],
        [
            "-M",
            "virt-9.1,virtualization=on,gic-version=3,iommu=smmuv3",
            "-cpu",
            "cortex-a57",
            "-smp",
            "2",
            "-m",
            "1536M"
        ]
    );
    assert_eq!(a[a.len() - 3..], ["-global", "arm-smmuv3.stage=1", "-S"]);
    assert!(a.contains(&"exit=semihosting".to_string()), "{a:?}");
    let a = args(&prepare(&root.0, "nosmmu", &[]).unwrap());
    assert_eq!(a[1], "virt,virtualization=on,gic-version=3");
    assert!(!a.iter().any(|x| x == "-device"));
    let a = args(&prepare(&root.0, "v4", &[]).unwrap());
    assert_eq!(a[1], "virt,virtualization=on,gic-version=4,iommu=smmuv3");
}

#[test]
fn images_go_into_the_bundle_once() {
    let text = format!(
        "{MACHINE}[[vm]]\nname = \"a\"\ncpus = 1\nmemory = \"64M\"\nkernel = \"img/Image\"\ninitrd = \"img/rd\"\n\
         [[vm]]\nname = \"b\"\ncpus = 1\nmemory = \"64M\"\nkernel = \"img/Image\"\n"
    );
    let root = Root::new(&[("two", &text)]);
    root.file("img/Image", &[0x5a; 10000]);
    root.file("img/rd", b"initramfs");
    let cmd = prepare(&root.0, "two", &[]).unwrap();
    let a = args(&cmd);
    let at = a.iter().position(|x| x == "-initrd").unwrap();
    let blob = std::fs::read(&a[at + 1]).unwrap();
    let b = Bundle::parse(&blob).unwrap();
    let names: Vec<&str> = b.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["scenario", "img/Image", "img/rd"]);
    assert_eq!(b.get("img/Image"), Some(&[0x5a; 10000][..]));
    assert_eq!(b.get("img/rd"), Some(&b"initramfs"[..]));
    // The hypervisor's view of the same blob.
    let (s, _) = scenario::Scenario::from_bundle(&blob).unwrap();
    assert_eq!(s.vms.len(), 2);
}

/// Words a test adds to a VM's command line reach the hypervisor in a
/// bundle of that run alone, next to the scenario's own, which keeps the
/// scenario as written.
#[test]
fn command_line_words_for_one_run() {
    let text = format!(
        "{MACHINE}[[vm]]\nname = \"a\"\ncpus = 1\nmemory = \"64M\"\nkernel = \"img/Image\"\n\
         cmdline = \"console=ttyAMA0\"\n\
         [[vm]]\nname = \"b\"\ncpus = 1\nmemory = \"64M\"\nkernel = \"img/Image\"\n"
    );
    let root = Root::new(&[("two", &text)]);
    root.file("img/Image", b"k");
    let hyp = hyp_bin(&root.0);
    let cmdline_of = |bundle: &Path| {
        let blob = std::fs::read(bundle).unwrap();
        let (s, _) = scenario::Scenario::from_bundle(&blob).unwrap();
        s.vms.iter().map(|v| v.cmdline.clone()).collect::<Vec<_>>()
    };
    let words = [("a", "net.port=40123"), ("b", "x=\"y z\""), ("a", "quiet")];
    let one = prepare_run(&root.0, "two", &[], &words, &hyp).unwrap();
    let two = prepare_run(&root.0, "two", &[], &[("a", "net.port=40124")], &hyp).unwrap();
    let (b1, b2) = (one.own_bundle.unwrap(), two.own_bundle.unwrap());
    assert_ne!(b1, b2);
    let a = args(&one.command);
    assert_eq!(
        a[a.iter().position(|x| x == "-initrd").unwrap() + 1],
        b1.to_str().unwrap()
    );
    assert_eq!(
        cmdline_of(&b1),
        ["console=ttyAMA0 net.port=40123 quiet", "x=\"y z\""]
    );
    assert_eq!(cmdline_of(&b2), ["console=ttyAMA0 net.port=40124", ""]);
    let plain = prepare_run(&root.0, "two", &[], &[], &hyp).unwrap();
    assert!(plain.own_bundle.is_none());
    assert_eq!(
        cmdline_of(&root.0.join("target/bundles/two.bundle")),
        ["console=ttyAMA0", ""]
    );
    let e = prepare_run(&root.0, "two", &[], &[("c", "x")], &hyp).unwrap_err();
    assert_eq!(e.to_string(), "no vm \"c\" to add command-line words to");
    let long = "x".repeat(scenario::MAX_STRING + 1);
    let e = prepare_run(&root.0, "two", &[], &[("b", &long)], &hyp).unwrap_err();
    assert!(matches!(e, RunError::Scenario(_)), "{e}");
}

#[test]
fn missing_image_names_vm_and_path() {
    let text = format!(
        "{MACHINE}[[vm]]\nname = \"linux\"\ncpus = 1\nmemory = \"64M\"\nkernel = \"img/Image\"\ninitrd = \"img/nothere.cpio\"\n"
    );
    let root = Root::new(&[("linux", &text)]);
    let e = err(&root.0, "linux");
    assert_eq!(
        e.to_string(),
        "vm \"linux\": kernel img/Image does not exist"
    );
    root.file("img/Image", b"k");
    let e = err(&root.0, "linux");
    assert_eq!(
        e.to_string(),
        "vm \"linux\": initrd img/nothere.cpio does not exist"
    );
    assert!(
        !root.0.join("target/bundles").exists(),
        "nothing is written before the checks pass"
    );
}

#[test]
fn bad_scenarios_stop_before_qemu() {
    let root = Root::new(&[
        ("typo", "[machine]\ncpus = 2\nmemroy = \"1G\"\n"),
        ("overlap", &format!("{MACHINE}[[vm]]\nname = \"a\"\ncpus = 1\nmemory = \"64M\"\nram_base = 0x0800_0000\nkernel = \"k\"\n")),
    ]);
    let e = err(&root.0, "typo");
    assert!(matches!(e, RunError::Scenario(_)));
    assert_eq!(e.to_string(), "line 3: machine: unknown key \"memroy\"");
    let e = err(&root.0, "overlap");
    assert_eq!(
        e.to_string(),
        "line 4: vm \"a\": RAM 0x8000000..0xc000000 overlaps the guest's GIC distributor at 0x8000000..0x8010000"
    );
    assert!(!root.0.join("target/bundles").exists());
}

#[test]
fn unknown_names_list_what_exists() {
    let root = Root::new(&[("b", MACHINE), ("a", MACHINE)]);
    let e = err(&root.0, "nope");
    assert_eq!(
        e.to_string(),
        "no scenario file guests/scenarios/nope.toml; available: a b"
    );
    // A path is taken as a path.
    let e = err(&root.0, "./nope.toml");
    assert!(
        e.to_string().starts_with("cannot read ./nope.toml: "),
        "{e}"
    );
}

#[test]
fn missing_hypervisor_image_is_reported() {
    let root = Root::new(&[("a", MACHINE)]);
    let hyp = root.0.join("target/nothere.bin");
    let e = prepare_with(&root.0, "a", &[], &hyp).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "hypervisor image {} does not exist: ./hv build makes it",
            hyp.display()
        )
    );
    assert!(!root.0.join("target/bundles").exists());
}

#[test]
fn every_scenario_in_the_repository_is_valid() {
    let names = qemu_runner::available(&repo());
    assert!(names.contains(&"selftest".to_string()), "{names:?}");
    for name in names {
        let path = repo().join(format!("guests/scenarios/{name}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = scenario::Scenario::parse_and_validate(&text) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn hv_run_exits_2_with_the_scenario_name() {
    let root = Root::new(&[]);
    root.file(
        "bad.toml",
        b"[machine]\ncpus = 2\nmemory = \"1G\"\n[[vm]]\nname = \"x\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hv-run"))
        .arg(root.0.join("bad.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "scenario bad: line 4: vm \"x\": missing key \"cpus\"\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hv-run")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("selftest"));
}

#[test]
fn the_verdict_comes_from_the_guests_check_summaries() {
    let mut v = qemu_runner::Verdict::default();
    for line in [
        "[linux] check all-cpus-online: pass online 0-1",
        "[linux] checks: 3 run, 0 failed",
        "[attacker] checks: 10 run, 2 failed",
        "[b] guest: checks: pending",
        "checks: 1 run, 1 failed",
    ] {
        v.line(line);
    }
    assert_eq!(
        v.summaries,
        [
            ("linux".to_string(), 3, 0),
            ("attacker".to_string(), 10, 2),
            (String::new(), 1, 1)
        ]
    );
    assert_eq!(
        v.failures(),
        [
            "VM attacker: 2 of 10 checks failed",
            "a guest: 1 of 1 checks failed"
        ]
    );
}
