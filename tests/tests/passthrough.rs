//! PCI functions passed through to VMs on per-VM SMMU stage 2, and behind
//! the guest's own virtual SMMU.

use scenario_tests::{boot, Boot, TIMEOUT};
use std::process::Command;

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

/// The NVMe interrupted VM `vm` through its forwarded INTx line, and Linux
/// never gave up on the line. A line presented again and again after the
/// device is done makes Linux disable it ("nobody cared"), and the disk
/// then hangs. How many of the interrupts found work is not asserted: QEMU's
/// NVMe in INTx mode raises interrupts its handler has nothing for on bare
/// QEMU too (3.5 to 6 per I/O on a loaded host), so that figure measures the
/// device model and the host's load as much as the hypervisor.
fn nvme_interrupts_forwarded(b: &Boot, vm: &str) {
    let line = b.expect(&format!("[{vm}] nvme-check: nvme interrupts "));
    let count: u64 = line
        .split("interrupts ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    assert!(count > 0, "{line}");
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
    // Data the host prepared reads back with the host's checksum...
    b.expect("[linux] nvme-check: host data: ok");
    // ...and what the guest wrote is on the host's disk image.
    let line = b.expect("[linux] nvme-check: wrote sha256 ");
    let guest_sha = line.rsplit(' ').next().unwrap();
    b.expect("[linux] nvme-check: write and read back: ok");
    assert_eq!(host_sha256("target/disks/nvme.img", 8, 4), guest_sha);
    nvme_interrupts_forwarded(&b, "linux");
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
    // The attacker's own DMA works.
    b.expect("[attacker] guest: dma own memory: ok");
    // Every foreign target: the victim's memory, the hypervisor's, the GIC,
    // UART and SMMU registers, unmapped space.
    for target in [
        "0x60000000",
        "0x40200000",
        "0x8000000",
        "0x9000000",
        "0x9050000",
        "0xc0000000",
    ] {
        b.expect(&format!(
            "[attacker] guest: dma read from {target}: blocked"
        ));
        b.expect(&format!(
            "[attacker] guest: dma write to {target}: issued 3 times"
        ));
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
    b.reject("LEAKED");
    // The victim finishes its NVMe work and finds its canary intact.
    b.expect("[victim] nvme-check: host data: ok");
    b.expect("[victim] nvme-check: write and read back: ok");
    b.expect("[victim] canary: unchanged");
    nvme_interrupts_forwarded(&b, "victim");
    b.expect("VM victim: powered off");
    b.expect("[attacker] guest: done");
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
    b.reject("[one] guest: hello");
    b.reject("[two] guest: hello");
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
    b.expect("[linux] nvme-check: host data: ok");
    let line = b.expect("[linux] nvme-check: wrote sha256 ");
    let guest_sha = line.rsplit(' ').next().unwrap();
    b.expect("[linux] nvme-check: write and read back: ok");
    assert_eq!(
        host_sha256(&format!("target/disks/vsmmu-{mode}.img"), 8, 4),
        guest_sha
    );
    nvme_interrupts_forwarded(&b, "linux");
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
    b.expect("[nested] guest: check dma through iova: ok");
    // With stage 1 on, the bare IPA is not a valid IOVA: the fault is the
    // guest's, with its own StreamID, and raises its eventq interrupt.
    b.expect("[nested] guest: check dma by ipa with stage 1 on: blocked");
    // The guest's RAM is at 0x80000000 (16 MiB): its IPAs are 0x80xxxxxx.
    let ev = "[nested] guest: event queue: F_TRANSLATION for vsid 0x8 at ";
    assert!(b.expect(ev).contains(" at 0x80"), "{}", b.console);
    assert_eq!(b.count(ev), 3, "{}", b.console);
    // Three faults, and the C_BAD_STE below, each with its interrupt.
    assert_eq!(b.count("eventq irq: yes"), 4, "{}", b.console);
    b.reject("event F_TRANSLATION vsid 0x10");
    // Stage-1 faults are the guest's only: the hypervisor reports none.
    b.reject("stage=1");
    // The SMMU keeps translations cached: without invalidation the
    // unmapped page still works (so the next checks can fail)...
    b.expect(
        "[nested] guest: unmapped, not invalidated: dma write through the stale entry went through",
    );
    // ...TLBI_NH_VA + CMD_SYNC removes exactly that page...
    b.expect("[nested] guest: check unmap + TLBI_NH_VA + CMD_SYNC: dma write blocked");
    b.expect("[nested] guest: event queue: F_TRANSLATION for vsid 0x8 at 0x420001000: yes; eventq irq: yes");
    // ...and nothing more: the other page's stale entry survives.
    b.expect(
        "[nested] guest: check other page's entry after TLBI_NH_VA: still cached (not widened)",
    );
    b.expect("[nested] guest: check second TLBI_NH_VA: blocked");
    b.expect("[nested] guest: event queue: F_TRANSLATION for vsid 0x8 at 0x420000000: yes; eventq irq: yes");
    // Outside the VM: a stage-1 mapping to it, a CD table there, a TTB0
    // there. Nothing leaks; the stage-2 faults are the hypervisor's,
    // attributed to the VM, each (page, direction, class) once.
    b.expect("[nested] guest: check iova mapped to an ipa outside the VM: blocked");
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
    b.expect("[nested] guest: check CD table at an ipa outside the VM: blocked");
    b.expect("[nested] guest: check TTB0 at an ipa outside the VM: blocked");
    assert_eq!(
        b.count("[nested] guest: check restored, dma through iova: ok"),
        2,
        "{}",
        b.console
    );
    // An STE the vSMMU cannot honour (stage 2): refused, the stream's
    // transactions abort with C_BAD_STE in the guest's event queue (with
    // its StreamID); a valid STE again and DMA works.
    b.expect("vSMMU: guest STE of vsid 0x8 refused (illegal guest STE: stage 2");
    b.expect("[nested] guest: event C_BAD_STE vsid 0x8");
    b.expect("[nested] guest: event queue: C_BAD_STE for vsid 0x8: yes; eventq irq: yes");
    b.expect("[nested] guest: check valid STE again, dma through iova: ok");
    b.reject("SMMU event: C_BAD_STE");
    // An illegal (stage-2) command stops the queue at it with CERROR_ILL
    // and the gerror interrupt; the guest recovers as Linux would.
    b.expect("GERROR.CMDQ_ERR set, CMDQ_CONS.ERR 1, at index");
    let line = b.expect("[nested] guest: illegal command at index ");
    let at = |key: &str| line.split(key).nth(1).and_then(|s| s.split(',').next());
    assert_eq!(at("illegal command at index "), at(" at index "), "{line}");
    assert!(line.ends_with("gerror irq yes"), "{line}");
    b.expect("[nested] guest: check command queue after GERRORN: runs again");
    b.expect("[nested] guest: check dma after recovery: ok");
    b.reject("LEAKED");
    b.reject("FAILED");
    b.expect("[nested] guest: vsmmu checks: 18 passed, 0 failed");
    b.reject(" ERROR ");
    b.expect("VM nested: its devices are stopped");
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
    let b = boot("vsmmu-flood", &[], TIMEOUT);
    b.expect("[linux] nvme-check: host data: ok");
    let line = b.expect("[linux] nvme-check: wrote sha256 ");
    let guest_sha = line.rsplit(' ').next().unwrap();
    b.expect("[linux] nvme-check: write and read back: ok");
    assert_eq!(host_sha256("target/disks/vsmmu-flood.img", 8, 4), guest_sha);
    nvme_interrupts_forwarded(&b, "linux");
    let flood = b.expect("[flooder] guest: vsmmu flood: ");
    let commands: u64 = flood
        .split("flood: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {flood:?}"));
    assert!(commands > 100_000, "hardly a flood: {flood}");
    // The Linux VM's nested I/O ran while the flood did (it normally
    // finishes long before: the flood lasts 20 s, Linux reaches its disk
    // check 3 to 5 s after reset even on a loaded machine).
    let pos = |needle: &str| b.console.find(needle).unwrap();
    assert!(
        pos("[linux] nvme-check: host data sha256") < pos("[flooder] guest: vsmmu flood: "),
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
