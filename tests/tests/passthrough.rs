//! PCI functions passed through to VMs on per-VM SMMU stage 2, and behind
//! the guest's own virtual SMMU.

use scenario_tests::{boot, Boot, Checks, TIMEOUT};
use std::process::Command;

/// What a Linux VM running `nvme-check` (through the init) checks: every
/// CPU online; the host's data read back; written data read back (its
/// sha256 is the check's detail); the NVMe interrupted (the detail names
/// how: see [`nvme_msix`]); the command's exit status.
const NVME_CHECKS: [&str; 5] = [
    "all-cpus-online",
    "nvme-host-data",
    "nvme-write-read-back",
    "nvme-interrupts",
    "init-run-exit-status",
];

/// sha256 of `len` MiB at `offset` MiB of a disk image, by the host.
fn host_sha256(image: &str, offset_mib: u32, len_mib: u32) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/..").to_string() + "/" + image;
    let out = Command::new("sh")
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

/// The sha256 of what the guest wrote to its disk (check
/// `nvme-write-read-back`).
fn guest_sha256<'a>(checks: &'a Checks<'_>) -> &'a str {
    let detail = checks.detail("nvme-write-read-back");
    detail
        .strip_prefix("sha256 ")
        .unwrap_or_else(|| panic!("cannot parse {detail:?}"))
}

/// The NVMe interrupted by MSI-X through the VM's ITS, one vector for the
/// admin queue and one per vCPU's I/O queue (2 vCPUs), none of them found
/// with nothing to do: its MSIs went through the SMMU to the physical ITS
/// and arrived as the guest's LPIs.
fn nvme_msix(checks: &Checks<'_>) {
    let detail = checks.detail("nvme-interrupts");
    assert!(
        detail.starts_with("ITS-MSI, 3 vector(s), ") && detail.ends_with(", 0 unhandled"),
        "NVMe interrupts: {detail}"
    );
}

/// Linux never gave up on the NVMe's forwarded INTx line (that the NVMe
/// interrupted at all is the guest's check `nvme-interrupts`). A line
/// presented again and again after the device is done makes Linux disable
/// it ("nobody cared"), and the disk then hangs. How many of the interrupts
/// found work is not asserted: QEMU's NVMe in INTx mode raises interrupts
/// its handler has nothing for on bare QEMU too (3.5 to 6 per I/O on a
/// loaded host), so that figure measures the device model and the host's
/// load as much as the hypervisor.
fn nvme_line_kept(b: &Boot) {
    // Linux's own words (kernel/irq/spurious.c) when it gives up on a line.
    b.reject("nobody cared");
    b.reject("Disabling IRQ #");
}

#[test]
fn linux_nvme_passthrough() {
    let b = boot("linux-nvme", &[], TIMEOUT);
    b.expect("VM linux: PCI 00:01.0 (sid 0x8) assigned as 00:01.0, INTx -> guest INTID 40");
    // The guest's own NVMe driver binds the device behind the virtual bridge.
    b.expect("nvme nvme0: pci function 0000:00:01.0");
    // Data the host prepared reads back with the host's checksum, and what
    // the guest wrote reads back...
    let linux = b.checks("linux");
    linux.assert_all_passed(&NVME_CHECKS);
    // ...and is on the host's disk image.
    assert_eq!(
        host_sha256("target/disks/nvme.img", 8, 4),
        guest_sha256(&linux)
    );
    b.expect("VM linux: MSIs granted: PCI 00:01.0 (DeviceID 0x8 -> 0x8): 65 event(s) (MSI-X)");
    nvme_msix(&linux);
    nvme_line_kept(&b);
    // At power-off the device is stopped before anything else.
    b.expect(
        "VM linux: its devices are stopped: bus mastering off, streams abort, TLBs invalidated",
    );
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.reject("SMMU event");
    b.assert_exit(0);
}

#[test]
fn isolation_edu_attacker() {
    let b = boot("isolation", &[], TIMEOUT);
    // Every foreign target: the victim's memory, the hypervisor's, the GIC,
    // UART and SMMU registers, unmapped space.
    let targets = [
        "0x60000000",
        "0x40200000",
        "0x8000000",
        "0x9000000",
        "0x9050000",
        "0xc0000000",
    ];
    // The attacker's own DMA works; its reads of every target are blocked
    // (nothing foreign lands in its buffer), its writes all ran.
    let mut expected = vec!["dma-own-memory".to_string()];
    for target in targets {
        expected.push(format!("dma-read-{target}"));
        expected.push(format!("dma-write-{target}"));
    }
    let attacker = b.checks("attacker");
    attacker.assert_all_passed(&expected.iter().map(String::as_str).collect::<Vec<_>>());
    for target in targets {
        assert_eq!(
            attacker.detail(&format!("dma-write-{target}")),
            "issued 3 times"
        );
        // Reported once per target and direction, decoded and attributed.
        for dir in ["read", "write"] {
            let n = b.count(&format!(
                "SMMU event: F_TRANSLATION sid=0x10 addr={target} {dir} stage=2"
            ));
            assert_eq!(n, 1, "{target} {dir}: {n} reports:\n{}", b.console);
        }
    }
    assert!(b
        .expect("SMMU event: F_TRANSLATION sid=0x10")
        .contains("[PCI 00:02.0 owner attacker]"));
    // The flood is counted, not printed line by line.
    b.expect("VM attacker: PCI 00:02.0 (sid 0x10) made");
    assert!(b.count("SMMU event") <= 16, "{}", b.console);
    // The victim finishes its NVMe work and finds its canary intact.
    let mut victim_checks = NVME_CHECKS.to_vec();
    victim_checks.push("canary-unchanged");
    b.checks("victim").assert_all_passed(&victim_checks);
    nvme_line_kept(&b);
    b.expect("VM victim: powered off");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// A function whose BAR is smaller than a page: the page its VM is given
/// holds nothing else (the two watchdogs' 16-byte BARs used to be placed
/// back to back, in one page), and the function decodes nothing until its
/// guest turns memory decode on.
#[test]
fn sub_page_bar_page_holds_nothing_else() {
    let b = boot("sub-page-bar", &[], TIMEOUT);
    b.checks("probe").assert_all_passed(&[
        "bar-off-until-enabled",
        "bar-decodes",
        "bar-page-alone",
    ]);
    // Each BAR was placed at the start of a page of its own.
    assert_eq!(b.count("  BAR0 Mem32 0x10 bytes at 0x10000000"), 1);
    assert_eq!(b.count("  BAR0 Mem32 0x10 bytes at 0x10001000"), 1);
    b.expect("VM probe: PCI 00:01.0 (sid 0x8) assigned as 00:01.0");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

#[test]
fn scenario_conflict_refused() {
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/line-conflict.toml");
    let b = boot(scenario, &[], TIMEOUT);
    b.expect("VM one: PCI 00:01.0 (sid 0x8) assigned");
    b.expect("VM two: PCI 00:05.0: its INTx line (INTID 36) is already given to another VM");
    b.expect("no guest is started");
    b.assert_silent("one");
    b.assert_silent("two");
    b.assert_exit(1);
}

/// Linux's own arm-smmu-v3 driver on the virtual SMMUv3: the NVMe sits in a
/// translated IOMMU group, its stream is nested (guest stage 1 over the
/// VM's stage 2), and checksummed I/O passes with invalidation mode `mode`.
fn vsmmu_linux_nvme(mode: &str) {
    let b = boot(&format!("vsmmu-nvme-{mode}"), &[], TIMEOUT);
    b.expect("arm-smmu-v3 9050000.iommu: ias 40-bit, oas 40-bit");
    b.expect("iommu: Default domain type: Translated");
    let policy = if mode == "strict" {
        "strict mode"
    } else {
        "lazy mode"
    };
    b.expect(&format!(
        "iommu: DMA domain TLB invalidation policy: {policy}"
    ));
    b.expect("nvme 0000:00:01.0: Adding to iommu group");
    b.expect("vSMMU: vsid 0x8 -> sid 0x8: nested (guest CD table at IPA");
    let linux = b.checks("linux");
    linux.assert_all_passed(&NVME_CHECKS);
    assert_eq!(
        host_sha256(&format!("target/disks/vsmmu-{mode}.img"), 8, 4),
        guest_sha256(&linux)
    );
    // The guest's own SMMU driver maps the ITS doorbell in its stage 1
    // (iommu-dma); the nested walk reaches the physical ITS.
    nvme_msix(&linux);
    nvme_line_kept(&b);
    b.reject("SMMU event");
    b.reject("vSMMU: installing");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

#[test]
fn vsmmu_linux_nvme_strict() {
    vsmmu_linux_nvme("strict");
}

#[test]
fn vsmmu_linux_nvme_lazy() {
    vsmmu_linux_nvme("lazy");
}

/// A bare-metal guest programs its own vSMMU (stream table, CD, stage-1
/// tables, queues) for its `edu`: nested translation, precise TLBI_NH_VA,
/// stage-1 faults in its event queue with its virtual StreamID and its
/// interrupt, nothing reachable through memory outside the VM, and an
/// illegal command reported as hardware would, then recovered from.
#[test]
fn vsmmu_edu_nested() {
    let b = boot("vsmmu-edu", &[], TIMEOUT);
    // Physical 00:02.0 (StreamID 0x10) is the guest's 00:01.0 (vSID 0x8).
    b.expect("VM nested: PCI 00:02.0 (sid 0x10) assigned as 00:01.0");
    b.expect("[nested] guest: edu at 00:01.0: vsid 0x8");
    b.expect("vSMMU: vsid 0x8 -> sid 0x10: nested (guest CD table at IPA 0x80");
    let nested = b.checks("nested");
    nested.assert_all_passed(&[
        // Translation through the guest's stage 1.
        "dma-through-iova",
        // With stage 1 on, the bare IPA is not a valid IOVA: the fault is
        // the guest's, with its own StreamID, and raises its eventq
        // interrupt.
        "dma-by-ipa-with-stage-1-on",
        "event-for-dma-by-ipa",
        // The SMMU keeps translations cached: without invalidation the
        // unmapped page still works (so the next checks can fail)...
        "unmapped-page-still-cached",
        // ...TLBI_NH_VA + CMD_SYNC removes exactly that page...
        "unmap-tlbi-nh-va-cmd-sync",
        "event-after-tlbi-nh-va",
        // ...and nothing more: the other page's stale entry survives.
        "other-page-after-tlbi-nh-va",
        "second-tlbi-nh-va",
        "event-after-second-tlbi-nh-va",
        // Outside the VM: a stage-1 mapping to it, a CD table there, a
        // TTB0 there; nothing leaks, and restored, DMA works again.
        "iova-to-ipa-outside-vm",
        "cd-table-outside-vm",
        "dma-after-cd-table-restored",
        "ttb0-outside-vm",
        "dma-after-ttb0-restored",
        // An STE the vSMMU cannot honour (stage 2): the stream's
        // transactions abort with C_BAD_STE in the guest's event queue;
        // a valid STE again and DMA works.
        "illegal-ste-event",
        "dma-after-valid-ste",
        // An illegal (stage-2) command stops the queue at it with
        // CERROR_ILL and the gerror interrupt; the guest recovers as Linux
        // would.
        "illegal-command",
        "command-queue-after-gerrorn",
        "dma-after-recovery",
        // Every event record carried the guest's StreamID, never the
        // physical one.
        "events-for-own-stream",
    ]);
    // The guest's RAM is at 0x80000000 (16 MiB): its IPAs are 0x80xxxxxx.
    let ev = nested.detail("event-for-dma-by-ipa");
    assert!(ev.starts_with("F_TRANSLATION for vsid 0x8 at 0x80"), "{ev}");
    for (check, at) in [
        ("event-after-tlbi-nh-va", "0x420001000"),
        ("event-after-second-tlbi-nh-va", "0x420000000"),
    ] {
        assert_eq!(
            nested.detail(check),
            format!("F_TRANSLATION for vsid 0x8 at {at}: yes; eventq irq: yes")
        );
    }
    assert_eq!(
        nested.detail("other-page-after-tlbi-nh-va"),
        "still cached (not widened)"
    );
    assert_eq!(
        nested.detail("illegal-ste-event"),
        "C_BAD_STE for vsid 0x8: yes; eventq irq: yes"
    );
    // Stage-1 faults are the guest's only: the hypervisor reports none.
    b.reject("stage=1");
    // Outside the VM, the stage-2 faults are the hypervisor's, attributed
    // to the VM, each (page, direction, class) once.
    for (dir, class) in [
        ("read", "IN"),
        ("write", "IN"),
        ("read", "CD"),
        ("read", "TT"),
    ] {
        let n = b.count(&format!(
            "{dir} stage=2 class={class} ipa=0x40200000 [PCI 00:02.0 owner nested]"
        ));
        assert_eq!(n, 1, "{dir} {class}: {n} reports:\n{}", b.console);
    }
    // The illegal STE is refused by the vSMMU and reported to the guest
    // only.
    b.expect("vSMMU: guest STE of vsid 0x8 refused (illegal guest STE: stage 2");
    b.reject("SMMU event: C_BAD_STE");
    b.reject(" ERROR ");
    b.expect("VM nested: its devices are stopped");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// A bare-metal guest programs its vGIC and vITS as Linux does and maps its
/// `edu`'s MSI event (granted from the edu's MSI capability) to LPI 8192:
/// an INT raises it; the CPU's write of the EventID to GITS_TRANSLATER traps
/// to the vITS, raises nothing and does not fault; the edu's DMA of the
/// EventID to the same IPA goes through the SMMU, whose stage 2 alone maps
/// the doorbell, to the physical GITS_TRANSLATER, where QEMU traces it.
#[test]
fn edu_msi_doorbell() {
    let b = boot("edu-msi", &[], TIMEOUT);
    // Physical 00:02.0 (DeviceID 0x10) is the guest's 00:01.0 (0x8), with
    // the one event of its single MSI vector.
    b.expect("VM msi: MSIs granted: PCI 00:02.0 (DeviceID 0x10 -> 0x8): 1 event(s) (MSI)");
    b.expect(
        "VM msi: MSI doorbell: IPA 0x8090000 -> PA 0x8090000 (GITS_TRANSLATER) in its devices' stage 2 only",
    );
    b.expect("[msi] guest: edu at 00:01.0, DeviceID 0x8: event 0 -> LPI 8192");
    let checks = b.checks("msi");
    checks.assert_all_passed(&[
        "its-int-lpi-8192",
        "cpu-translater-write-ignored",
        "dma-to-translater",
    ]);
    // Exactly one write reached the physical GITS_TRANSLATER, the edu's
    // 4-byte EventID: the CPU's never left the vITS.
    let writes: Vec<&str> = b
        .console
        .lines()
        .filter(|l| l.contains("GICv3 ITS TRANSLATER write"))
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}; console was:\n{}", b.console);
    assert!(
        writes[0].contains("offset 0x40 data 0x0 size 4"),
        "{}",
        writes[0]
    );
    // The physical ITS translates by who wrote. A write with the edu's
    // requester ID (0x10) is its MSI, and the guest's LPI follows. QEMU 10.0
    // gives a device's DMA no requester ID (only its MSI messages carry
    // one): its ITS then sees DeviceID 0, which no VM is granted, and the
    // guest must get nothing.
    let lpi = checks.detail("dma-to-translater");
    if writes[0].ends_with("requester_id 0x0") {
        assert_eq!(lpi, "issued; LPI 8192: no", "{}", b.console);
    } else {
        assert!(writes[0].ends_with("requester_id 0x10"), "{}", writes[0]);
        assert_eq!(lpi, "issued; LPI 8192: yes", "{}", b.console);
    }
    // The doorbell write did not fault at the SMMU; nothing went wrong.
    b.reject("stage=2");
    b.reject(" WARN ");
    b.reject(" ERROR ");
    b.expect("VM msi: its devices are stopped: bus mastering off, streams abort, TLBs invalidated, 1 MSI route(s) and its devices unmapped from the ITS");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}

/// One VM floods its vSMMU's command queue with valid invalidations while
/// another does checked NVMe I/O through its own vSMMU (strict, so every
/// unmap is a guest invalidation + CMD_SYNC): the hypervisor's bounded
/// work per trap keeps the second VM going; its I/O runs while the flood
/// does, completes and checks out.
#[test]
fn vsmmu_flood_does_not_stall_another_vm() {
    // The flood goes on until the Linux VM has finished its checks: then
    // a key typed to the flooder (Ctrl-] 1, then any key) ends it.
    let b = scenario_tests::boot_typing(
        "vsmmu-flood",
        &[],
        TIMEOUT,
        &[
            ("[linux] checks: ", b"\x1d1"),
            ("[hyp] console input goes to VM flooder", b"x"),
        ],
    );
    let linux = b.checks("linux");
    linux.assert_all_passed(&NVME_CHECKS);
    assert_eq!(
        host_sha256("target/disks/vsmmu-flood.img", 8, 4),
        guest_sha256(&linux)
    );
    nvme_line_kept(&b);
    let flooder = b.checks("flooder");
    flooder.assert_all_passed(&["vsmmu-flood"]);
    // "N commands in B batches, T ms"
    let flood = flooder.detail("vsmmu-flood");
    let commands: u64 = flood
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {flood:?}"));
    assert!(commands > 100_000, "hardly a flood: {flood}");
    // The Linux VM's nested I/O ran while the flood did (the flood only
    // ends once the test saw Linux finish).
    assert!(
        linux.get("nvme-host-data").line < flooder.get("vsmmu-flood").line,
        "{}",
        b.console
    );
    // Every flooded command was consumed (plus the 3 of the guest's
    // reset: CFGI_ALL, TLBI_NH_ALL, CMD_SYNC).
    let stats = b
        .console
        .lines()
        .find(|l| l.contains("VM flooder: ") && l.contains(" traps"))
        .unwrap_or_else(|| panic!("no stats:\n{}", b.console));
    assert!(
        stats.contains(&format!("vSMMU: {} guest commands", commands + 3)),
        "{stats}"
    );
    b.reject("SMMU event");
    b.expect("all VMs have stopped (all powered off cleanly)");
    b.assert_exit(0);
}
