//! SMMU scenarios: the hypervisor owns the SMMUv3, fail-closed,
//! and proves it with real DMA from QEMU's `edu` device (its boot
//! self-test, whose checks are [`Boot::hyp_checks`]).

use scenario_tests::{boot, Boot, TIMEOUT};

/// The self-test's checks on the `edu` it gives a stage-2 domain: an
/// unowned device aborts from power-on; DMA through the domain reads back
/// the expected bytes; DMA to an unmapped IPA writes nothing and raises a
/// stage-2 fault; after detach the device's DMA aborts; the domain is
/// destroyed (TLBI_S12_VMALL, tables freed).
const DOMAIN_CHECKS: [&str; 5] = [
    "unowned-device-aborts",
    "dma-through-domain",
    "unmapped-ipa-faults",
    "dma-aborts-after-detach",
    "domain-destroyed",
];

#[test]
fn boot_smmu_selftest() {
    let b = boot("selftest", &[], TIMEOUT);
    // Decoded features of QEMU 10's SMMU.
    let features = b.expect("SMMU at 0x9050000: stages S1+S2");
    for fact in [
        "2-level strtab",
        "16-bit SID",
        "16-bit VMID",
        "RIL",
        "coherent",
    ] {
        assert!(features.contains(fact), "{fact} missing from {features}");
    }
    b.expect("every stream aborts until assigned");
    // PCI enumerated, BAR assigned.
    b.expect("(edu)");
    b.expect("BAR0 Mem32 0x100000 bytes at 0x1");
    // The ITS self-test runs in the same boot (`selftest=its`), and so does
    // the MSI self-test (`selftest=msi`): the edu's own MSI stops at the
    // SMMU until the doorbell is mapped in its stage 2, then becomes the
    // LPI its route names.
    let mut expected = DOMAIN_CHECKS.to_vec();
    expected.extend(["its", "msi-without-doorbell-faults", "msi-through-doorbell"]);
    let checks = b.hyp_checks();
    checks.assert_all_passed(&expected);
    let its = checks.detail("its");
    assert!(its.contains("taken on CPU 0"), "{its}");
    b.expect("ITS at 0x8080000");
    b.expect(
        "SMMU event: F_TRANSLATION sid=0x8 addr=0x8090040 write stage=2 class=IN ipa=0x8090000 \
         [PCI 00:01.0 owner MSI self-test domain]",
    );
    let msi = checks.detail("msi-through-doorbell");
    for fact in [
        "edu 00:01.0 (DeviceID 0x8, 1 event(s)) MSI to IPA 0x8090040",
        "doorbell -> PA 0x8090000 (write-only)",
        "taken on CPU 0, routed from EventID 0",
    ] {
        assert!(msi.contains(fact), "{fact} missing from {msi}");
    }
    // The fault is printed decoded and attributed.
    let fault = b.expect("SMMU event: F_TRANSLATION sid=0x8");
    for part in ["write", "stage=2", "[PCI 00:01.0 owner self-test domain]"] {
        assert!(fault.contains(part), "{part} missing from {fault}");
    }
    b.expect("DMA isolation through the SMMU: all checks passed");
    b.expect("hyp: all done");
    b.assert_exit(0);
}

/// On a GICv4 the ITS and MSI self-tests pass as on a GICv3 (physical LPIs
/// still work), and the direct-injection self-test (`selftest=vlpi`) shows
/// the edu's own MSI becoming a virtual LPI of a vPE through VMAPTI, with
/// no physical LPI, the redistributor applying the hypervisor's
/// configuration table to it, and the device's MSIs dropped while its
/// translation is suspended (as for a guest that disables its vITS) and
/// translated again once it is resumed.
#[test]
fn boot_gicv4_selftest() {
    let b = boot("selftest-gicv4", &[], TIMEOUT);
    b.expect("GICv4 direct injection of virtual LPIs: vPE table for");
    let checks = b.hyp_checks();
    checks.assert_all_passed(&[
        "its",
        "msi-without-doorbell-faults",
        "msi-through-doorbell",
        "msi-as-vlpi",
        "vlpi-pending-for-the-vpe",
        "msi-dropped-while-suspended",
    ]);
    let vlpi = checks.detail("msi-as-vlpi");
    for fact in [
        "edu 00:01.0 (DeviceID 0x8) MSI to IPA 0x8090040",
        "VMAPTI'd EventID 0 -> vINTID 8200 pending in the virtual pending table of vPE",
        "no physical LPI",
    ] {
        assert!(vlpi.contains(fact), "{fact} missing from {vlpi}");
    }
    let pending = checks.detail("vlpi-pending-for-the-vpe");
    assert!(
        pending.contains("PendingLast with vINTID 8200 enabled, none once the router disabled it"),
        "{pending}"
    );
    let dropped = checks.detail("msi-dropped-while-suspended");
    for fact in [
        "its MSI left vINTID 8200 clear, no physical LPI",
        "its next MSI pending for vPE",
    ] {
        assert!(dropped.contains(fact), "{fact} missing from {dropped}");
    }
    b.expect("hyp: all done");
    b.assert_exit(0);
}

#[test]
fn fault_reports_are_rate_limited() {
    let b = boot("selftest", &[], TIMEOUT);
    // The unowned probe makes the SMMU record more events than are printed.
    let printed = b.count("owner nobody]");
    assert!(
        printed <= 4,
        "{printed} reports for one device:\n{}",
        b.console
    );
    b.expect("hyp: all done");
    b.assert_exit(0);
}

#[test]
fn unowned_second_device_aborts() {
    let b = boot("two-edu", &[], TIMEOUT);
    let mut expected = DOMAIN_CHECKS.to_vec();
    expected.push("unowned-edu-00-02-0-aborts");
    b.hyp_checks().assert_all_passed(&expected);
    // Its STE (in the level-2 table the first device's attach allocated) is
    // an explicit abort: the SMMU terminates the DMA without recording an
    // event, and the canary check above is the proof. The first device's
    // faults are reported, so the report format is what this looks for.
    b.expect("SMMU event: F_TRANSLATION sid=0x8 ");
    b.reject(" sid=0x10 ");
    b.expect("DMA isolation through the SMMU: all checks passed");
    b.expect("hyp: all done");
    b.assert_exit(0);
}

#[test]
fn boot_without_smmu_refuses_assignment() {
    let b = boot("no-smmu", &[], TIMEOUT);
    b.expect("SMMU: none in the device tree: DMA cannot be confined, device assignment refused");
    no_dma_self_test(&b);
    b.assert_exit(0);
}

#[test]
fn boot_without_stage2_refuses_assignment() {
    let b = boot("smmu-stage1-only", &[], TIMEOUT);
    b.expect(
        "no stage 2 translation (IDR0.S2P == 0): DMA cannot be confined, device assignment refused",
    );
    no_dma_self_test(&b);
    b.assert_exit(0);
}

/// Device assignment was refused, so the DMA self-test ran no check.
#[track_caller]
fn no_dma_self_test(b: &Boot) {
    b.expect("self-test: device assignment refused");
    b.hyp_checks().assert_none();
    b.expect("hyp: all done");
}
