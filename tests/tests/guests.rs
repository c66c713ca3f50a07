//! Guests under the hypervisor. Each scenario powers itself off;
//! QEMU's exit status says whether every VM stopped cleanly. What a guest
//! judges itself comes as check lines ([`Boot::checks`]).

use scenario_tests::{boot, Boot, TIMEOUT};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Index of the first console line containing `needle`.
fn line_of(b: &Boot, needle: &str) -> usize {
    b.console
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| {
            panic!(
                "console has no line with {needle:?}; console was:\n{}",
                b.console
            )
        })
}

#[test]
fn linux_boot() {
    let since_1970 = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = since_1970();
    let b = boot("linux", &[], TIMEOUT);
    let after = since_1970();
    b.expect("VM linux: 2 vCPU(s) on physical CPU(s) [0, 1], 512 MiB RAM");
    b.expect("[linux] init: reached on 6.1");
    let linux = b.checks("linux");
    linux.assert_all_passed(&["all-cpus-online"]);
    assert_eq!(linux.detail("all-cpus-online"), "online 0-1, nproc 2");
    // Its device tree's seeds, as bare QEMU's `virt` gives them: the
    // random number generator is ready before the kernel's clock starts
    // (without a seed it waits for interrupts' entropy), and the kernel
    // runs at a random address.
    b.expect("[linux] [    0.000000] random: crng init done");
    b.expect("] KASLR enabled");
    b.reject("KASLR disabled");
    // Its real-time clock, as bare QEMU's `virt` has one: the kernel sets
    // its clock from it to the time QEMU's own PL031 started from (the
    // host's), give or take a minute, not to 1970.
    let set = b.expect("rtc-pl031 9010000.pl031: setting system clock to");
    let secs: u64 = set
        .rsplit_once('(')
        .and_then(|(_, s)| s.strip_suffix(')'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seconds in {set:?}"));
    assert!(
        (before - 60..=after + 60).contains(&secs),
        "the guest's clock says {secs} s since 1970, the host's was {before} to {after}: {set}"
    );
    b.expect("reboot: Power down");
    b.expect("VM linux: powered off");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.reject("Kernel panic");
    b.reject("WARN");
    b.assert_exit(0);
}

#[test]
fn two_vms() {
    let b = boot("two-vms", &[], TIMEOUT);
    // Both run at the same time: both VMs are built and started before any
    // guest runs, and the bare-metal guest runs while Linux has not yet
    // stopped. (Whether Linux prints its first line before the bare-metal
    // guest finishes its 30 ticks depends on how fast the host is, so that
    // order is not asserted.)
    let built = line_of(&b, "VM bare: 1 vCPU(s)").max(line_of(&b, "VM linux: 2 vCPU(s)"));
    let bare_hello = line_of(&b, "[bare] guest: hello from bare");
    let linux_first = line_of(&b, "[linux] [");
    let linux_off = line_of(&b, "VM linux: powered off");
    assert!(
        built < bare_hello.min(linux_first) && bare_hello < linux_off,
        "the VMs did not overlap:\n{}",
        b.console
    );
    assert_eq!(b.count("[bare] guest: tick"), 30);
    b.checks("bare").assert_all_passed(&[]);
    let linux = b.checks("linux");
    linux.assert_all_passed(&["all-cpus-online"]);
    assert_eq!(linux.detail("all-cpus-online"), "online 0-1, nproc 2");
    b.expect("VM bare: 1 vCPU(s) on physical CPU(s) [2]");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// What guests see of the CPU. One reads its ID registers through the
/// hypervisor (HCR_EL2.TID3): no PMU, trace, RAS, activity monitors, MTE
/// or SME, which its VM does not get; FP, Advanced SIMD and debug as the
/// CPU has them; touching a PMU register is an undefined instruction,
/// reported once. A second one's EL1 timers, virtual and physical,
/// interrupt it exactly while they assert: taken when they fire, again while still
/// asserted, not while masked, and no longer pending once disabled or
/// reprogrammed. A third prints lines that would pass for the
/// hypervisor's on a terminal; every control character shows escaped.
#[test]
fn guest_sees_only_the_cpu_features_its_vm_has_and_both_timers() {
    let b = boot("cpu", &[], TIMEOUT);
    let features = b.checks("features");
    features.assert_all_passed(&[
        "id-pmu-and-trace-hidden",
        "id-ras-amu-mte-sme-hidden",
        "id-basic-features-shown",
        "pmu-register-undefined",
    ]);
    assert_eq!(
        features.detail("pmu-register-undefined"),
        "vector 4 ESR=0x2000000"
    );
    b.expect(
        "VM features: vCPU 0: read of system register S3_3_C9_C12_0, which it does not have: \
         undefined instruction injected",
    );
    let mut names = Vec::new();
    for t in ["vtimer", "ptimer"] {
        for what in [
            "interrupt-taken",
            "still-asserted-is-taken-again",
            "masked-is-not-taken",
            "pending-while-asserted",
            "disabled-is-not-pending",
            "reprogrammed-is-not-pending",
        ] {
            names.push(format!("{t}-{what}"));
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    b.checks("timers").assert_all_passed(&names);
    // A guest's control characters reach the terminal escaped: none of its
    // lines can erase, overwrite or reorder what is printed.
    for forged in [
        "[forger] \\u{1b}[2K\\u{1b}[1G[hyp] VM timers: powered off",
        "[forger] \\u{8}\\u{8}\\u{8}\\u{8}\\u{8}\\u{8}\\u{8}\\u{8}\\u{8}[hyp] all VMs have stopped",
        "[forger] \\u{9b}2K[hyp] VM features: restarting (restart 1)",
        "[forger] \\u{202e}ffo derewop :srehto MV [pyh]",
    ] {
        b.expect(forged);
    }
    for raw in ['\u{1b}', '\u{8}', '\u{9b}', '\u{202e}'] {
        assert!(!b.console.contains(raw), "{raw:?} reached the console");
    }
    b.checks("forger").assert_all_passed(&[]);
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

#[test]
fn guest_bad_access() {
    let b = boot("bad-access", &[], TIMEOUT);
    // The guest takes the architected synchronous external abort...
    let intruder = b.checks("intruder");
    intruder.assert_all_passed(&["bad-access-aborts"]);
    assert_eq!(
        intruder.detail("bad-access-aborts"),
        "FAR=0x51000000 ESR=0x96000010"
    );
    // ...the hypervisor says what happened, once...
    let report = b.expect(
        "VM intruder: vCPU 0: 4-byte read at IPA 0x51000000 outside its memory and devices",
    );
    assert!(report.contains("external abort injected"), "{report}");
    assert_eq!(b.count("VM intruder: vCPU 0:"), 1);
    // ...and the other VM runs on to its end.
    assert_eq!(b.count("[bystander] guest: tick"), 3);
    b.checks("bystander").assert_all_passed(&[]);
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// A run that never ends (Linux waits for a console line nobody types) is
/// killed at its timeout, and its failure says where every CPU was: QEMU's
/// monitor dumps each one's registers, PC and PSTATE with its exception
/// level, at the end of the console.
#[test]
fn a_run_killed_at_its_timeout_shows_every_cpu() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/console-input.toml");
    let hung = std::panic::catch_unwind(|| boot(scenario, &[], Duration::from_secs(30)));
    let message = hung
        .err()
        .and_then(|e| e.downcast::<String>().ok())
        .expect("a run that waits for input forever is killed at its timeout");
    assert!(message.contains("did not finish within 30s"), "{message}");
    // The machine has three CPUs (two for Linux, one for the other VM).
    assert_eq!(message.matches("PSTATE=").count(), 3, "{message}");
}

#[test]
fn console_input_switches_between_vms() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/console-input.toml");
    let b = scenario_tests::boot_typing(
        scenario,
        &[],
        TIMEOUT,
        &[
            // Ctrl-] 1: input to the bare-metal VM; Ctrl-] 0: back to Linux.
            ("[linux] init: running: head -n1", b"\x1d1"),
            ("[hyp] console input goes to VM bare", b"\x1d0"),
            (
                "[hyp] console input goes to VM linux",
                b"typed-into-linux\n",
            ),
        ],
    );
    b.expect("[hyp] console input goes to VM bare");
    b.expect("[hyp] console input goes to VM linux");
    // head echoes the line it read (after the terminal's own echo).
    assert!(b.count("[linux] typed-into-linux") >= 1, "{}", b.console);
    b.checks("linux")
        .assert_all_passed(&["all-cpus-online", "init-run-exit-status"]);
    b.checks("bare").assert_all_passed(&[]);
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}
