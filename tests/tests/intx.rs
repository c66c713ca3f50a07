//! INTx forwarding against the GIC architecture and bare QEMU: the same
//! bare-metal guest drives QEMU's `edu` through its INTx line on bare QEMU
//! and under the hypervisor (scenario `edu-intx`), and both must count
//! exactly the interrupts the architecture gives (`guests/baremetal`,
//! `edu_intx=N`). Nothing is timed, so the host's load cannot change the
//! outcome.

use scenario_tests::{bare_baremetal_qemu, boot, boot_bare, TIMEOUT};

/// Raises the guest makes (`edu_intx=`), in rounds of the kinds below.
const RAISES: u64 = 1000;

/// The guest's kinds of round, in the order rounds take them, with the
/// interrupts a level-sensitive SPI gives for one (IHI 0069 §4.1: pending
/// while its line is asserted, pending again after its deactivation if the
/// line still is; GICD_ICPENDR does not clear what the line holds; a
/// disabled or unroutable SPI stays pending without being signalled).
const KINDS: [(&str, u64); 9] = [
    // Acknowledged at the device before the EOI.
    ("prompt", 1),
    // EOI with the line still high, then acknowledged: presented again.
    ("late", 2),
    ("late-twice", 3),
    // Acknowledged, raised again before the EOI.
    ("reraised", 2),
    // Disabled while raised, acknowledged at the device before enabled.
    ("dropped-while-disabled", 0),
    ("enabled-while-high", 1),
    ("clear-pending-while-high", 1),
    // Disabled before an EOI with the line high, then enabled.
    ("disabled-at-eoi", 2),
    // Raised while routed to no PE, then routed back.
    ("routed-away", 1),
];

#[test]
fn edu_intx_counts_match_the_architecture_and_bare_qemu() {
    let args = format!("name=bare edu_intx={RAISES}");
    let bare = boot_bare(
        bare_baremetal_qemu(&["edu,dma_mask=0xffffffffff"], &args),
        1,
        TIMEOUT,
    );
    bare.assert_exit(0);
    let hyp = boot("edu-intx", &[], TIMEOUT);
    hyp.expect("VM intx: PCI 00:01.0 (sid 0x8) assigned as 00:01.0, INTx -> guest INTID 40");
    hyp.expect("[intx] guest: edu at 00:01.0, INTx pin 1 -> INTID 40");

    let names: Vec<String> = KINDS
        .iter()
        .map(|(k, _)| format!("edu-intx-{k}"))
        .chain(["edu-intx-total".to_string()])
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let on_bare = bare.bare_checks();
    on_bare.assert_all_passed(&names);
    let on_hyp = hyp.checks("intx");
    on_hyp.assert_all_passed(&names);

    let kinds = KINDS.len() as u64;
    let mut total = 0;
    for (i, &(kind, per_round)) in KINDS.iter().enumerate() {
        let rounds = RAISES / kinds + u64::from((i as u64) < RAISES % kinds);
        total += rounds * per_round;
        let want = format!("{rounds} rounds, {} interrupts", rounds * per_round);
        let name = format!("edu-intx-{kind}");
        let (b, h) = (on_bare.detail(&name), on_hyp.detail(&name));
        println!("{name}: the architecture: {want}; bare QEMU: {b}; under the hypervisor: {h}");
        assert_eq!(b, want, "{name} on bare QEMU");
        assert_eq!(h, want, "{name} under the hypervisor");
    }
    let want = format!("{RAISES} raises, {total} interrupts (the architecture: {total})");
    assert_eq!(on_bare.detail("edu-intx-total"), want);
    assert_eq!(on_hyp.detail("edu-intx-total"), want);

    hyp.reject(" WARN ");
    hyp.reject(" ERROR ");
    hyp.expect("all VMs have stopped (all powered off cleanly)");
    hyp.assert_exit(0);
}
