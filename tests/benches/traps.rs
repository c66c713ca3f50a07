//! Trap micro-benchmark: the bare-metal guest's `trap_bench` (a null
//! exception it takes itself, null hypercall, MMIO read and write, IPI
//! round trip, timer interrupt latency) on bare QEMU, where QEMU itself answers the HVC and emulates
//! the PL011 and the GIC, and under the hypervisor (scenario `trap-bench`),
//! where each is a trap to EL2. Interleaved rounds, the median per kind,
//! and the ratio printed. The null exception (an `SVC` the guest's own
//! vector returns from at once) is the same work with and without the
//! hypervisor: what taking and returning from any exception costs on this
//! machine, the least a trap can cost; the table also gives each trap's
//! cost in those. The guest times itself with the virtual counter
//! over enough operations that its resolution is far below 1% of each
//! figure. TCG timings are noisy: only the ratios of one run mean
//! anything.
//!
//! `cargo bench -p scenario-tests --bench traps` after `./hv build`
//! (`./hv bench` does it all); `-- --test` runs one short round.

use scenario_tests::{
    bare_baremetal_qemu_smp, boot_bare, boot_with_cmdline, median, Boot, TIMEOUT,
};

const KINDS: [(&str, &str); 6] = [
    (
        "exception",
        "null exception the guest takes itself (SVC to its own vector)",
    ),
    ("hvc", "null hypercall (PSCI_VERSION)"),
    ("mmio-read", "emulated MMIO read (PL011 UARTFR)"),
    ("mmio-write", "emulated MMIO write (PL011 UARTICR)"),
    ("ipi", "IPI round trip to the other vCPU"),
    ("timer", "virtual timer interrupt latency"),
];

/// Nanoseconds per operation of each kind, from a run's `bench` lines.
fn figures(b: &Boot, vm: &str) -> Vec<f64> {
    KINDS
        .iter()
        .map(|(kind, _)| {
            let needle = format!("{vm}bench {kind}: ");
            let line = b.expect(&needle);
            let rest = &line[line.find(&needle).unwrap() + needle.len()..];
            let (n, t) = rest
                .trim_end_matches(" ns")
                .split_once(" in ")
                .unwrap_or_else(|| panic!("malformed line {line:?}"));
            let (n, t): (f64, f64) = (n.parse().unwrap(), t.parse().unwrap());
            t / n
        })
        .collect()
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let (rounds, n) = if smoke { (1, 400) } else { (5, 20_000) };
    let args = format!("name=bench trap_bench={n}");
    let mut bare: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    let mut hyp: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    for round in 1..=rounds {
        let b = boot_bare(bare_baremetal_qemu_smp(2, &[], &args), 2, TIMEOUT);
        b.assert_exit(0);
        let h = boot_with_cmdline(
            "trap-bench",
            &[("bench", &format!("trap_bench={n}"))],
            TIMEOUT,
        );
        h.assert_exit(0);
        let (fb, fh) = (figures(&b, ""), figures(&h, "[bench] "));
        print!("round {round}:");
        for (i, (kind, _)) in KINDS.iter().enumerate() {
            print!(" {kind} {:.0}/{:.0} ns", fb[i], fh[i]);
            bare[i].push(fb[i]);
            hyp[i].push(fh[i]);
        }
        println!();
    }
    println!("trap costs (bare-metal guest, 2 vCPUs, cortex-a57, median of {rounds}, {n} operations per kind, IPIs {}):", n / 20);
    println!("| operation | bare QEMU | under the hypervisor | ratio | under the hypervisor, in null exceptions |");
    println!("|---|---|---|---|---|");
    let exception = median(&mut hyp[0]);
    for (i, (_, what)) in KINDS.iter().enumerate() {
        let (b, h) = (median(&mut bare[i]), median(&mut hyp[i]));
        println!(
            "| {what} | {b:.0} ns | {h:.0} ns | {:.1} | {:.1} |",
            h / b,
            h / exception
        );
    }
}
