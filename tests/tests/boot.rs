//! Boot scenarios: the hypervisor comes up at EL2 on QEMU's `virt`
//! with various CPUs and SMMU configurations.

use scenario_tests::{boot, TIMEOUT};

#[test]
fn boot_cortex_a57_4cpus() {
    let b = boot("selftest", &["-cpu", "cortex-a57", "-smp", "4"], TIMEOUT);
    b.expect("booting at EL2");
    b.expect("EL2 MMU on");
    b.expect("CPUs: 4 of 4 online (3 secondaries started through PSCI and parked)");
    assert_eq!(b.count("online, parked"), 3);
    b.expect("hyp: all done");
    b.assert_exit(0);
}

#[test]
fn boot_max_1cpu() {
    let b = boot("selftest", &["-cpu", "max", "-smp", "1"], TIMEOUT);
    b.expect("CPUs: 1 of 1 online");
    b.expect("hyp: all done");
    b.assert_exit(0);
}

#[test]
fn boot_reports_footprint() {
    let b = boot("selftest", &[], TIMEOUT);
    let line = b.expect("footprint: image");
    assert!(line.contains("SMMU tables and queues"), "{line}");
    b.expect("hyp: all done");
    b.assert_exit(0);
}

#[test]
fn unexpected_exception_is_decoded_and_stops() {
    let b = boot("fault", &[], TIMEOUT);
    b.expect("FATAL: unexpected exception on CPU 0x0 (synchronous, current EL)");
    b.expect("EC=0x25 (data abort at EL2)");
    b.expect("translation fault");
    b.expect("FAR_EL2=0x0000000000001000");
    b.expect("hyp: stopped after an error");
    b.reject("hyp: all done");
    b.assert_exit(1);
}
