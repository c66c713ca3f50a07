//! `timers`: the guest's EL1 timers, virtual (CNTV, PPI 27) and physical
//! (CNTP, PPI 30), as the architecture defines their interrupts: asserted
//! exactly while the timer is enabled, has fired (ISTATUS) and is not
//! masked (IMASK), and pending while asserted. For each timer, with
//! PSTATE.I masked throughout (interrupts are acknowledged at the CPU
//! interface, `gic::acknowledge`, never taken), checks:
//!
//! 1. `T-interrupt-taken`: armed 10 ms ahead, its PPI is acknowledged;
//! 2. `T-still-asserted-is-taken-again`: ended with the timer untouched, it
//!    is acknowledged again (the line is still high);
//! 3. `T-masked-is-not-taken`: masked (IMASK) and ended, nothing arrives
//!    for 100 ms;
//! 4. `T-pending-while-asserted`: unmasked, GICR_ISPENDR0 shows it
//!    pending;
//! 5. `T-disabled-is-not-pending`: disabled (ENABLE = 0) before it was
//!    acknowledged, GICR_ISPENDR0 no longer shows it and nothing can be
//!    acknowledged;
//! 6. `T-reprogrammed-is-not-pending`: enabled again (pending), then its
//!    compare value moved an hour ahead, likewise.
//!
//! What stops the checks early is a failed check `timers-ran`.

use crate::checks::check;
use crate::gic::{self, Redist};
use crate::time;
use aarch64_cpu::registers::{
    Readable, Writeable, CNTPCT_EL0, CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0,
};
use flat_device_tree::Fdt;

/// CNTx_CTL_EL0 bits.
const ENABLE: u64 = 1 << 0;
const IMASK: u64 = 1 << 1;

/// How long anything that must happen may take.
const TIMEOUT_MS: u64 = 2000;
/// How long nothing must arrive where nothing may.
const QUIET_MS: u64 = 100;

#[derive(Clone, Copy)]
enum Timer {
    Virtual,
    Physical,
}

impl Timer {
    fn name(self) -> &'static str {
        match self {
            Self::Virtual => "vtimer",
            Self::Physical => "ptimer",
        }
    }

    fn ppi(self) -> u32 {
        match self {
            Self::Virtual => 27,
            Self::Physical => 30,
        }
    }

    /// The counter this timer compares with.
    fn now(self) -> u64 {
        match self {
            Self::Virtual => time::now(),
            Self::Physical => CNTPCT_EL0.get(),
        }
    }

    fn set_ctl(self, v: u64) {
        match self {
            Self::Virtual => CNTV_CTL_EL0.set(v),
            Self::Physical => CNTP_CTL_EL0.set(v),
        }
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    }

    fn set_cval(self, v: u64) {
        match self {
            Self::Virtual => CNTV_CVAL_EL0.set(v),
            Self::Physical => CNTP_CVAL_EL0.set(v),
        }
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    }
}

/// Polls until `f` holds or `ms` pass; whether it held, and after how many
/// ms.
fn within(ms: u64, mut f: impl FnMut() -> bool) -> (bool, u64) {
    let start = time::now();
    loop {
        if f() {
            return (true, time::elapsed_ms(start));
        }
        if time::elapsed_ms(start) > ms {
            return (false, ms);
        }
        core::hint::spin_loop();
    }
}

/// Whether `ppi` can be acknowledged within `ms` (anything else
/// acknowledged meanwhile is ended and reported in the detail).
fn acknowledged(ppi: u32, ms: u64) -> (bool, u64) {
    within(ms, || match gic::acknowledge() {
        Some(i) if i == ppi => true,
        Some(other) => {
            gic::end(other);
            false
        }
        None => false,
    })
}

fn run_timer(t: Timer, rd: &Redist) {
    let (n, ppi) = (t.name(), t.ppi());
    rd.enable(ppi);
    t.set_cval(t.now() + time::ms_to_ticks(10));
    t.set_ctl(ENABLE);
    let (ok, ms) = acknowledged(ppi, TIMEOUT_MS);
    check(
        format_args!("{n}-interrupt-taken"),
        ok,
        format_args!("after {ms} ms"),
    );
    if !ok {
        t.set_ctl(0);
        return;
    }
    gic::end(ppi);
    let (ok, ms) = acknowledged(ppi, TIMEOUT_MS);
    check(
        format_args!("{n}-still-asserted-is-taken-again"),
        ok,
        format_args!("after {ms} ms"),
    );
    t.set_ctl(ENABLE | IMASK);
    if ok {
        gic::end(ppi);
    }
    let (came, _) = acknowledged(ppi, QUIET_MS);
    check(
        format_args!("{n}-masked-is-not-taken"),
        !came,
        format_args!("nothing for {QUIET_MS} ms"),
    );
    if came {
        gic::end(ppi);
    }
    t.set_ctl(ENABLE);
    let (ok, ms) = within(TIMEOUT_MS, || rd.pending(ppi));
    check(
        format_args!("{n}-pending-while-asserted"),
        ok,
        format_args!("after {ms} ms"),
    );
    t.set_ctl(0);
    let still = rd.pending(ppi);
    let taken = gic::acknowledge();
    check(
        format_args!("{n}-disabled-is-not-pending"),
        !still && taken.is_none(),
        format_args!("ISPENDR0 bit {still}, acknowledged {taken:?}"),
    );
    if let Some(i) = taken {
        gic::end(i);
    }
    t.set_ctl(ENABLE);
    let (ok, _) = within(TIMEOUT_MS, || rd.pending(ppi));
    t.set_cval(t.now() + time::ms_to_ticks(3_600_000));
    let still = rd.pending(ppi);
    let taken = gic::acknowledge();
    check(
        format_args!("{n}-reprogrammed-is-not-pending"),
        ok && !still && taken.is_none(),
        format_args!("pending before {ok}, after {still}, acknowledged {taken:?}"),
    );
    if let Some(i) = taken {
        gic::end(i);
    }
    t.set_ctl(0);
}

/// `timers`: see the module documentation.
pub fn run(fdt: &Fdt<'_>) {
    let Some(gic_node) = fdt.find_compatible(&["arm,gic-v3"]) else {
        check("timers-ran", false, "no arm,gic-v3 node");
        return;
    };
    let mut regs = gic_node.reg();
    let (Some(gicd), Some(gicr)) = (regs.next(), regs.next()) else {
        check("timers-ran", false, "the GIC node lacks its registers");
        return;
    };
    gic::init(gicd.starting_address as u64, &[]);
    let Some(rd) = Redist::mine(gicr.starting_address as u64) else {
        check("timers-ran", false, "no redistributor with our affinity");
        return;
    };
    for t in [Timer::Virtual, Timer::Physical] {
        run_timer(t, &rd);
    }
}
