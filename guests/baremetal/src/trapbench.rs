//! `trap_bench=N`: times what costs a guest an exit under a hypervisor,
//! N times each, and prints one line per kind,
//! `bench KIND: N in T ns` (T from the virtual counter; N is chosen so that
//! T is far above the counter's resolution):
//!
//! - `exception`: a null exception the guest takes itself (`SVC` to its
//!   own EL1 vector, which returns at once): what any trap costs at the
//!   least on the machine, with or without a hypervisor;
//! - `hvc`: a null hypercall (PSCI_VERSION);
//! - `mmio-read`, `mmio-write`: the console PL011's flag register read,
//!   its interrupt clear register written with 0 (clears nothing);
//! - `ipi`: a round trip of SGI 1 to vCPU 1, which acknowledges it (PSTATE.I
//!   masked, polling ICC_IAR1_EL1), ends it and answers through memory
//!   (N / 20 of them);
//! - `timer`: from arming the virtual timer to fire at once until its PPI
//!   can be acknowledged.
//!
//! The same image runs on bare QEMU (QEMU handles the HVC, its PL011 and
//! GIC) for the ratio (`tests/benches/traps.rs`).

use crate::gic::{self, Redist};
use crate::smp::{self, Job};
use crate::{console, hw, mmio, time};
use aarch64_cpu::registers::{Writeable, CNTV_CTL_EL0, CNTV_CVAL_EL0};
use core::sync::atomic::{AtomicU64, Ordering};
use flat_device_tree::Fdt;

/// PL011 UARTFR and UARTICR.
const UARTFR: u64 = 0x18;
const UARTICR: u64 = 0x44;
/// The SGI of the round trip.
const SGI: u32 = 1;
/// The virtual timer's PPI.
const VTIMER: u32 = 27;
/// IPI round trips are this many times fewer than N: each takes two
/// vCPUs and (under a hypervisor) several exits.
const IPI_SHARE: u64 = 20;

/// The GIC redistributors' region, for vCPU 1.
static GICR: AtomicU64 = AtomicU64::new(0);
/// SGIs vCPU 1 has answered (written by vCPU 1 only; plain loads and
/// stores, MMU off).
static ECHOES: AtomicU64 = AtomicU64::new(0);
/// vCPU 1 is ready: its interface and SGI are on.
static READY: AtomicU64 = AtomicU64::new(0);

/// Prints `kind`'s line for `n` operations that took `ticks`.
fn report(kind: &str, n: u64, ticks: u64) {
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(time::ms_to_ticks(1000).max(1));
    say!("bench {}: {} in {} ns", kind, n, ns);
}

/// Times `n` runs of `f`.
fn timed(kind: &str, n: u64, mut f: impl FnMut()) {
    let start = time::now();
    for _ in 0..n {
        f();
    }
    report(kind, n, time::now().wrapping_sub(start));
}

/// What vCPU 1 runs ([`Job::Echo`]): answers every SGI 1.
pub fn echo() -> ! {
    gic::init_cpu_interface();
    if let Some(rd) = Redist::mine(GICR.load(Ordering::Acquire)) {
        rd.enable(SGI);
        READY.store(1, Ordering::Release);
    }
    let mut answered = 0;
    loop {
        if let Some(i) = gic::acknowledge() {
            gic::end(i);
            if i == SGI {
                answered += 1;
                ECHOES.store(answered, Ordering::Release);
            }
        }
    }
}

/// `trap_bench=N`: see the module documentation.
pub fn run(fdt: &Fdt<'_>, n: u64) {
    let n = n.max(1);
    timed("exception", n, || {
        // SAFETY: `SVC #0x5b` from EL1 is taken to our own vector, which
        // returns at once (`vectors.S`), clobbering x16 and x17 only.
        unsafe { core::arch::asm!("svc #0x5b", out("x16") _, out("x17") _, options(nostack)) };
    });
    timed("hvc", n, || {
        let _ = hw::psci_version();
    });
    let uart = console::UART.load(Ordering::Relaxed);
    timed("mmio-read", n, || {
        // SAFETY: UARTFR of the console PL011 our device tree names: a
        // read without side effects; Device memory.
        let _ = unsafe { mmio::read32(uart + UARTFR) };
    });
    timed("mmio-write", n, || {
        // SAFETY: UARTICR of the same PL011: writing 0 clears no interrupt.
        unsafe { mmio::write32(uart + UARTICR, 0) };
    });
    let Some(gic_node) = fdt.find_compatible(&["arm,gic-v3"]) else {
        say!("bench: no arm,gic-v3 node: no interrupt figures");
        return;
    };
    let mut regs = gic_node.reg();
    let (Some(gicd), Some(gicr)) = (regs.next(), regs.next()) else {
        say!("bench: the GIC node lacks its registers: no interrupt figures");
        return;
    };
    gic::init(gicd.starting_address as u64, &[]);
    let Some(rd) = Redist::mine(gicr.starting_address as u64) else {
        say!("bench: no redistributor with our affinity: no interrupt figures");
        return;
    };
    rd.enable(VTIMER);
    let mut ticks = 0;
    for _ in 0..n {
        CNTV_CVAL_EL0.set(0);
        let start = time::now();
        CNTV_CTL_EL0.set(1);
        while gic::acknowledge().is_none_or(|i| i != VTIMER) {
            core::hint::spin_loop();
        }
        ticks += time::now().wrapping_sub(start);
        CNTV_CTL_EL0.set(0);
        gic::end(VTIMER);
    }
    report("timer", n, ticks);
    GICR.store(gicr.starting_address as u64, Ordering::Release);
    if smp::start(1, Job::Echo).is_err() {
        say!("bench: vCPU 1 cannot be started: no IPI figure");
        return;
    }
    let since = time::now();
    while READY.load(Ordering::Acquire) == 0 {
        if time::elapsed_ms(since) > 10_000 {
            say!("bench: vCPU 1 did not get ready: no IPI figure");
            return;
        }
    }
    let rounds = (n / IPI_SHARE).max(1);
    let start = time::now();
    for i in 1..=rounds {
        gic::send_sgi(SGI, 1);
        while ECHOES.load(Ordering::Acquire) < i {
            core::hint::spin_loop();
        }
    }
    report("ipi", rounds, time::now().wrapping_sub(start));
}
