//! VM lifecycle: a guest's reset restarts its VM in place (every vCPU
//! parked, its devices stopped and reset, its memory scrubbed, its images
//! loaded again), while the other VMs run on.

use scenario_tests::{boot, host_sha256, Boot, TIMEOUT};
use std::time::Duration;

/// The hypervisor's memory in use after each restart of `vm`, from its
/// restart lines (`hypervisor memory in use: heap N bytes, M frames`).
fn memory_after_restarts(b: &Boot, vm: &str) -> Vec<String> {
    let line = format!("VM {vm}: memory scrubbed");
    b.console
        .lines()
        .filter(|l| l.contains(&line))
        .map(|l| {
            l.split_once("hypervisor memory in use: ")
                .map_or_else(|| panic!("no figures in {l:?}"), |(_, m)| m.to_string())
        })
        .collect()
}

/// `vm` restarted `n` times, each said, and the hypervisor's memory in use
/// is the same after every restart.
fn restarted_with_steady_memory(b: &Boot, vm: &str, n: u32) {
    for k in 1..=n {
        b.expect(&format!("VM {vm}: restarting (restart {k})"));
    }
    let memory = memory_after_restarts(b, vm);
    assert_eq!(memory.len(), n as usize, "{memory:?}");
    assert!(memory.windows(2).all(|w| w[0] == w[1]), "{memory:?}");
}

/// No hypervisor error, every VM stopped cleanly, QEMU's exit status 0.
fn ends_cleanly(b: &Boot) {
    b.reject(" ERROR ");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// A bare-metal VM resets itself three times: each new incarnation finds
/// the free memory the previous one filled with a pattern all zero (zeroed
/// by its own CPU and the machine's idle one), and
/// reads how often it restarted from its counters page; the hypervisor's
/// memory in use is the same after every restart; the VM next to it
/// counts its ticks undisturbed, and the run ends cleanly.
#[test]
fn a_reset_restarts_the_vm_with_its_memory_scrubbed() {
    let b = boot("reboot", &[], TIMEOUT);
    b.checks("rebooter").assert_all_passed(&[
        "restart-1-memory-scrubbed",
        "restart-2-memory-scrubbed",
        "restart-3-memory-scrubbed",
        "restarts-counted",
    ]);
    restarted_with_steady_memory(&b, "rebooter", 3);
    // Its own CPU and the idle third one, never the neighbour's.
    assert_eq!(
        b.count("VM rebooter: memory scrubbed (16 MiB, by 2 CPU(s))"),
        3
    );
    assert_eq!(b.count("[rebooter] guest: hello from rebooter"), 4);
    b.checks("neighbour").assert_all_passed(&[]);
    b.expect("[neighbour] guest: tick 20");
    ends_cleanly(&b);
}

/// The names of the checks `nvme-check` and the init print in
/// incarnations 0 to `restarts` of a Linux VM.
fn linux_nvme_checks(restarts: u32) -> Vec<String> {
    let mut expected = Vec::new();
    for k in 0..=restarts {
        let suffix = if k == 0 {
            String::new()
        } else {
            format!("-after-restart-{k}")
        };
        for name in [
            "all-cpus-online",
            "nvme-host-data",
            "nvme-write-read-back",
            "nvme-interrupts",
            "init-run-exit-status",
        ] {
            expected.push(format!("{name}{suffix}"));
        }
    }
    expected
}

/// Linux with its NVMe disk reboots from inside three times (`reboot -f`,
/// PSCI SYSTEM_RESET) next to a bare-metal VM: at each reset the NVMe is
/// stopped and function-level reset, the VM's memory scrubbed and its
/// images loaded again (its device tree with new seeds); every
/// incarnation finds its CPUs, checks the disk's data, writes and reads
/// back fresh data (the last write is on the disk), and takes the NVMe's
/// interrupts as MSI-X through its vITS. The hypervisor's memory in use
/// is the same after every restart.
#[test]
fn linux_with_nvme_reboots_three_times() {
    // Four Linux boots: a hang detector, not a performance bound.
    let b = boot(
        "linux-nvme-reboot",
        &[],
        2 * TIMEOUT + Duration::from_secs(60),
    );
    let expected = linux_nvme_checks(3);
    let names: Vec<&str> = expected.iter().map(String::as_str).collect();
    let linux = b.checks("linux");
    linux.assert_all_passed(&names);
    for k in 0..=3 {
        let check = if k == 0 {
            "nvme-interrupts".to_string()
        } else {
            format!("nvme-interrupts-after-restart-{k}")
        };
        let detail = linux.detail(&check);
        assert!(detail.starts_with("ITS-MSI, "), "{check}: {detail}");
    }
    let last = linux.detail("nvme-write-read-back-after-restart-3");
    assert_eq!(
        Some(host_sha256("target/disks/nvme-reboot.img", 8, 4).as_str()),
        last.strip_prefix("sha256 ")
    );
    restarted_with_steady_memory(&b, "linux", 3);
    // Every start's device tree carries seeds (each its own, drawn as it
    // starts): every incarnation's random number generator is ready
    // before its clock starts.
    assert_eq!(
        b.count("[linux] [    0.000000] random: crng init done"),
        4,
        "{}",
        b.console
    );
    // At each of the three resets and at the final power-off.
    assert_eq!(b.count("VM linux: PCI 00:01.0: function-level reset"), 4);
    b.checks("neighbour").assert_all_passed(&[]);
    b.expect("[neighbour] guest: tick 100");
    b.reject("WARN  VM linux");
    ends_cleanly(&b);
}

/// Linux with its NVMe behind its own virtual SMMUv3 (strict) reboots
/// once: the vSMMU is back in its reset state, the guest's `arm-smmu-v3`
/// driver sets it up again, and the second incarnation's NVMe checks pass
/// through it, its interrupts MSI-X through the vITS.
#[test]
fn linux_behind_its_vsmmu_reboots() {
    let b = boot("vsmmu-nvme-reboot", &[], TIMEOUT);
    let linux = b.checks("linux");
    let expected = linux_nvme_checks(1);
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    linux.assert_all_passed(&expected);
    let irqs = linux.detail("nvme-interrupts-after-restart-1");
    assert!(irqs.starts_with("ITS-MSI, "), "{irqs}");
    let last = linux.detail("nvme-write-read-back-after-restart-1");
    assert_eq!(
        Some(host_sha256("target/disks/vsmmu-reboot.img", 8, 4).as_str()),
        last.strip_prefix("sha256 ")
    );
    b.expect("VM linux: restarting (restart 1)");
    assert_eq!(
        b.count("arm-smmu-v3 9050000.iommu: ias 40-bit, oas 40-bit"),
        2
    );
    ends_cleanly(&b);
}

/// Linux whose NVMe MSIs the GIC delivers directly (GICv4) reboots once:
/// its vPEs are reset with it, and in the second incarnation the 1000
/// reads' interrupts again arrive with none injected by the hypervisor.
#[test]
fn linux_with_direct_msi_delivery_reboots() {
    let b = boot("linux-nvme-gicv4-reboot", &[], TIMEOUT);
    let mut expected = linux_nvme_checks(1);
    expected.push("nvme-msi-traps".into());
    expected.push("nvme-msi-traps-after-restart-1".into());
    let names: Vec<&str> = expected.iter().map(String::as_str).collect();
    let linux = b.checks("linux");
    linux.assert_all_passed(&names);
    for check in ["nvme-msi-traps", "nvme-msi-traps-after-restart-1"] {
        let detail = linux.detail(check);
        assert!(
            detail.starts_with("1000 reads, ") && detail.ends_with(" traps, 0 injected"),
            "{check}: {detail}"
        );
    }
    b.expect("VM linux: restarting (restart 1)");
    b.reject("cannot be made resident");
    b.reject("cannot restart");
    ends_cleanly(&b);
}

/// A bare-metal VM resets itself while its NVMe controller has a full
/// queue of 4 KiB writes into its free memory and its `edu` has a copy
/// into it under way: the hypervisor turns both devices' bus mastering
/// off, makes their streams abort and resets the NVMe before it scrubs the
/// memory, so the new incarnation watches its free memory stay all zero
/// and finds both devices stopped and the controller reset.
#[test]
fn a_reset_with_dma_in_flight_leaves_nothing_in_the_new_incarnation() {
    let b = boot("reboot-under-dma", &[], TIMEOUT);
    b.checks("rebooter").assert_all_passed(&[
        "dma-after-restart-landed-nowhere",
        "devices-stopped-by-restart",
        "nvme-reset-by-restart",
    ]);
    b.expect(", 63 in flight, an edu transfer started: resetting");
    b.expect("VM rebooter: restarting (restart 1)");
    b.expect("VM rebooter: PCI 00:01.0: function-level reset");
    b.expect("VM rebooter: PCI 00:02.0: no function-level reset");
    b.checks("neighbour").assert_all_passed(&[]);
    b.expect("[neighbour] guest: tick 20");
    ends_cleanly(&b);
}

/// A VM with three vCPUs is stopped three times by a reset and once by a
/// power-off while its vCPU 1 races each stop: it keeps turning its
/// `edu`'s bus mastering on, starting copies into free memory,
/// re-attaching the `edu`'s stream through its vSMMU (CFGI_STE) and
/// starting vCPU 2 (CPU_ON). Every stop ends with the devices stopped,
/// and every new incarnation finds nothing of the race: its free memory
/// all zero, vCPUs 1 and 2 off, bus mastering off, its vSMMU reset.
#[test]
fn a_stop_raced_by_the_vms_other_vcpus_ends_stopped_and_quiesced() {
    let b = boot("reboot-raced", &[], TIMEOUT);
    let mut names = vec!["restarts-counted".to_string()];
    for k in 0..=3 {
        names.push(format!("race-{k}-ran"));
    }
    for k in 1..=3 {
        for what in [
            "dma-landed-nowhere",
            "other-cpus-off",
            "edu-stopped",
            "vsmmu-reset",
        ] {
            names.push(format!("restart-{k}-{what}"));
        }
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    b.checks("racer").assert_all_passed(&names);
    restarted_with_steady_memory(&b, "racer", 3);
    // All three of its CPUs, parked, scrub.
    assert_eq!(
        b.count("VM racer: memory scrubbed (16 MiB, by 3 CPU(s))"),
        3
    );
    b.expect("VM racer: powered off");
    // Four stops, each with the devices stopped after the vCPUs parked.
    assert_eq!(
        b.count("VM racer: its devices are stopped: bus mastering off, streams abort"),
        4,
        "{}",
        b.console
    );
    ends_cleanly(&b);
}

/// The hypervisor's console drives the VMs: Ctrl-] h prints the help line,
/// Ctrl-] l one line per VM; on the second VM, Ctrl-] r restarts it,
/// Ctrl-] s stops it, Ctrl-] b starts it again, each time while the first
/// VM counts on; an unknown letter gets a one-line answer; both VMs
/// stopped from the console end the run cleanly.
#[test]
fn the_console_lists_restarts_stops_and_starts_vms() {
    let b = scenario_tests::boot_typing(
        "console",
        &[],
        TIMEOUT,
        &[
            ("[second] guest: tick 2", b"\x1dh"),
            ("[hyp] Ctrl-] then:", b"\x1dl"),
            ("[hyp] VM 1 second:", b"\x1d1\x1dr"),
            ("[second] guest: hello from second (restart 1)", b"\x1ds"),
            ("VM second: stopped from the console", b"\x1db"),
            ("[second] guest: hello from second (restart 2)", b"\x1dq"),
            ("unknown command 'q'", b"\x1d0\x1ds"),
            ("VM first: stopped from the console", b"\x1d1\x1ds"),
        ],
    );
    b.expect("[hyp] Ctrl-] then: a digit sends the input to that VM; l lists the VMs;");
    b.expect("[hyp] VM 0 first: running, 1 vCPU(s) on CPU(s) [0], 16 MiB, devices [], ");
    b.expect("[hyp] VM 1 second: running, 1 vCPU(s) on CPU(s) [1], 16 MiB, devices [], ");
    b.expect(" 0 SMMU faults, 0 restart(s)");
    b.expect("[hyp] VM second: restarting");
    b.expect("VM second: restarting (restart 1)");
    b.expect("[hyp] VM second: stopping");
    b.expect("[hyp] VM second: starting again");
    b.expect("[hyp] unknown command 'q' after Ctrl-] (Ctrl-] h: help)");
    // Three incarnations of the second VM; the first VM booted once and
    // counted through all of it.
    assert_eq!(
        b.count("[second] guest: hello from second"),
        3,
        "{}",
        b.console
    );
    assert_eq!(b.count("[first] guest: hello from first"), 1);
    assert_eq!(b.count("stopped from the console"), 3, "{}", b.console);
    ends_cleanly(&b);
}

/// The soak (`./hv soak`, not in CI): `linux-nvme-reboot` with 100
/// reboots. Every incarnation's checks pass, and the hypervisor's memory in
/// use after each reported restart (1 to 4, 8, 16, 32, 64) is the same.
#[test]
#[ignore = "a soak of about 100 Linux boots: ./hv soak runs it"]
fn soak_linux_with_nvme_reboots_100_times() {
    let b = scenario_tests::boot_with_cmdline(
        "linux-nvme-reboot",
        &[("linux", "init.reboot=100")],
        Duration::from_secs(3 * 3600),
    );
    let expected = linux_nvme_checks(100);
    let names: Vec<&str> = expected.iter().map(String::as_str).collect();
    b.checks("linux").assert_all_passed(&names);
    let memory = memory_after_restarts(&b, "linux");
    assert_eq!(memory.len(), 8, "{memory:?}");
    assert!(memory.windows(2).all(|w| w[0] == w[1]), "{memory:?}");
    b.expect("VM linux: restarting (restart 64)");
    ends_cleanly(&b);
}
