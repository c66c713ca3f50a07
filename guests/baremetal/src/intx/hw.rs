//! The `edu_intx=N` rounds and their checks (`crate::checks`): one check
//! per [`Kind`], `check edu-intx-KIND: pass R rounds, I interrupts` when
//! each of its R rounds went as the architecture says (what failed first,
//! otherwise), and `check edu-intx-total: pass N raises, I interrupts`
//! when the interrupts counted over all rounds are the architecture's
//! number. What stops the rounds early is a failed check
//! `edu-intx-checks-ran`.
//!
//! Interrupts are never taken (PSTATE.I stays masked): they are seen by
//! acknowledging them at the CPU interface. The MMU stays off.

use super::{expected_total, intx_intid, Kind};
use crate::checks::check;
use crate::edu::{config_read, host_or_report, Edu, EduError, CFG_INTERRUPT};
use crate::gic;
use flat_device_tree::Fdt;

/// Acknowledge attempts an interrupt that is due may take to arrive: far
/// more than the few instructions the GIC takes to signal it.
const DUE_POLLS: u32 = 1_000_000;
/// Acknowledge attempts over which an interrupt that is not due must not
/// arrive.
const NOT_DUE_POLLS: u32 = 1_000;
/// The edu interrupt status bit the rounds raise and acknowledge.
const STATUS_BIT: u32 = 1 << 0;
/// GICD_IROUTER Aff1 bit flipped to route the SPI to a PE that does not
/// exist.
const NOWHERE: u64 = 1 << 8;

/// What went wrong in a round, first.
type Miss = &'static str;

/// The device, its SPI and the distributor.
struct Rig {
    edu: Edu,
    gicd: u64,
    intid: u32,
    /// Interrupts acknowledged in the current round.
    taken: u64,
}

impl Rig {
    /// The SPI, acknowledged (now active), counted; `why` if it did not
    /// come or something else did.
    fn handle(&mut self, why: Miss) -> Result<(), Miss> {
        for _ in 0..DUE_POLLS {
            match gic::acknowledge() {
                Some(i) if i == self.intid => {
                    self.taken += 1;
                    return Ok(());
                }
                Some(i) => {
                    gic::end(i);
                    return Err("another INTID arrived");
                }
                None => {}
            }
        }
        Err(why)
    }

    /// Nothing arrives; `why` if the SPI does (it is ended and counted).
    fn nothing(&mut self, why: Miss) -> Result<(), Miss> {
        for _ in 0..NOT_DUE_POLLS {
            if let Some(i) = gic::acknowledge() {
                gic::end(i);
                if i == self.intid {
                    self.taken += 1;
                    return Err(why);
                }
                return Err("another INTID arrived");
            }
        }
        Ok(())
    }

    fn eoi(&self) {
        gic::end(self.intid);
    }

    fn raise(&self) {
        self.edu.raise_irq(STATUS_BIT);
    }

    fn ack_device(&self) {
        self.edu.ack_irq(STATUS_BIT);
    }

    fn enable(&self, on: bool) {
        gic::set_enabled(self.gicd, self.intid, on);
    }

    fn pending(&self, want: bool, why: Miss) -> Result<(), Miss> {
        if gic::pending(self.gicd, self.intid) == want {
            Ok(())
        } else {
            Err(why)
        }
    }

    fn active(&self, want: bool, why: Miss) -> Result<(), Miss> {
        if gic::active(self.gicd, self.intid) == want {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// The end of every round: the device acknowledged and the interrupt
    /// ended, nothing more comes.
    fn done(&mut self) -> Result<(), Miss> {
        self.ack_device();
        self.eoi();
        self.nothing("presented again after the device let go and the EOI")
    }

    /// One round of `kind`.
    fn round(&mut self, kind: Kind) -> Result<(), Miss> {
        match kind {
            Kind::Prompt => {
                self.raise();
                self.handle("not presented after the raise")?;
                self.done()
            }
            Kind::Late => {
                self.raise();
                self.handle("not presented after the raise")?;
                self.eoi();
                self.handle("not presented again after an EOI with the line high")?;
                self.done()
            }
            Kind::LateTwice => {
                self.raise();
                self.handle("not presented after the raise")?;
                self.eoi();
                self.handle("not presented again after a first EOI with the line high")?;
                self.eoi();
                self.handle("not presented again after a second EOI with the line high")?;
                self.done()
            }
            Kind::Reraised => {
                self.raise();
                self.handle("not presented after the raise")?;
                self.ack_device();
                self.raise();
                self.eoi();
                self.handle("not presented again after the line was raised again in the handler")?;
                self.done()
            }
            Kind::DroppedWhileDisabled => {
                self.enable(false);
                self.raise();
                self.nothing("presented while disabled")?;
                self.pending(true, "not pending while disabled with the line high")?;
                self.ack_device();
                self.pending(false, "still pending after the device let go")?;
                self.enable(true);
                self.nothing("presented when enabled after the device let go")
            }
            Kind::EnabledWhileHigh => {
                self.enable(false);
                self.raise();
                self.nothing("presented while disabled")?;
                self.pending(true, "not pending while disabled with the line high")?;
                self.enable(true);
                self.handle("not presented when enabled with the line high")?;
                self.done()
            }
            Kind::ClearPendingWhileHigh => {
                self.enable(false);
                self.raise();
                gic::clear_pending(self.gicd, self.intid);
                self.pending(true, "GICD_ICPENDR cleared a line that is high")?;
                self.enable(true);
                self.handle("not presented when enabled with the line high")?;
                self.done()
            }
            Kind::DisabledAtEoi => {
                self.raise();
                self.handle("not presented after the raise")?;
                self.enable(false);
                self.eoi();
                self.nothing("presented again while disabled")?;
                self.pending(true, "not pending after an EOI with the line high")?;
                self.active(false, "still active after its EOI")?;
                self.enable(true);
                self.handle("not presented when enabled with the line high")?;
                self.done()
            }
            Kind::RoutedAway => {
                let home = gic::my_affinity();
                gic::route(self.gicd, self.intid, home ^ NOWHERE);
                self.raise();
                self.nothing("presented while routed to no PE")?;
                self.pending(true, "not pending while routed to no PE")?;
                gic::route(self.gicd, self.intid, home);
                self.handle("not presented when routed back")?;
                self.done()
            }
        }
    }
}

/// Why the rounds could not run.
enum Setup {
    Edu(EduError),
    NoPin,
    NoIntid(u8, u8),
    NoGic,
}

impl core::fmt::Display for Setup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Edu(e) => write!(f, "{e}"),
            Self::NoPin => write!(f, "the edu has no interrupt pin"),
            Self::NoIntid(dev, pin) => {
                write!(f, "interrupt-map has no SPI for device {dev:#x} pin {pin}")
            }
            Self::NoGic => write!(f, "no arm,gic-v3 in the device tree"),
        }
    }
}

/// Per kind: (rounds, interrupts, the first round that went wrong and
/// how).
type Tally = [(u64, u64, Option<(u64, Miss)>); Kind::ALL.len()];

/// Runs `raises` rounds and reports them.
pub fn run(fdt: &Fdt<'_>, raises: u64) {
    if let Err(why) = rounds(fdt, raises) {
        check("edu-intx-checks-ran", false, why);
    }
}

fn rounds(fdt: &Fdt<'_>, raises: u64) -> Result<(), Setup> {
    let Some(host) = host_or_report(fdt, "edu-intx-checks-ran") else {
        return Ok(());
    };
    let edu = Edu::probe(&host).map_err(Setup::Edu)?;
    let pin = ((config_read(&host, edu.device, CFG_INTERRUPT) >> 8) & 0xff) as u8;
    if pin == 0 {
        return Err(Setup::NoPin);
    }
    let intid = intx_intid(fdt, edu.device, pin).ok_or(Setup::NoIntid(edu.device, pin))?;
    let gicd = fdt
        .find_compatible(&["arm,gic-v3"])
        .and_then(|g| g.reg().next())
        .ok_or(Setup::NoGic)?
        .starting_address as u64;
    say!(
        "guest: edu at 00:{:02x}.0, INTx pin {} -> INTID {}",
        edu.device,
        pin,
        intid
    );
    gic::set_level_sensitive(gicd, intid);
    gic::init(gicd, &[intid]);
    let mut rig = Rig {
        edu,
        gicd,
        intid,
        taken: 0,
    };
    let mut tally: Tally = [(0, 0, None); Kind::ALL.len()];
    let mut total = 0;
    for i in 0..raises {
        let kind = Kind::of_round(i);
        rig.taken = 0;
        let mut outcome = rig.round(kind);
        if outcome.is_ok() && rig.taken != kind.interrupts() {
            outcome = Err("a different number of interrupts");
        }
        if outcome.is_err() {
            // Start the next round from a quiet device and GIC.
            rig.ack_device();
            if gic::active(gicd, intid) {
                rig.eoi();
            }
            rig.enable(true);
            gic::route(gicd, intid, gic::my_affinity());
            while let Some(i) = gic::acknowledge() {
                gic::end(i);
            }
        }
        let t = &mut tally[kind.index()];
        t.0 += 1;
        t.1 += rig.taken;
        if let (Err(miss), None) = (outcome, t.2) {
            t.2 = Some((i, miss));
        }
        total += rig.taken;
    }
    for kind in Kind::ALL {
        let (rounds, interrupts, miss) = tally[kind.index()];
        match miss {
            None => check(
                kind.check_name(),
                true,
                format_args!("{rounds} rounds, {interrupts} interrupts"),
            ),
            Some((round, why)) => check(
                kind.check_name(),
                false,
                format_args!("round {round}: {why} ({rounds} rounds, {interrupts} interrupts)"),
            ),
        };
    }
    let want = expected_total(raises);
    check(
        "edu-intx-total",
        total == want,
        format_args!("{raises} raises, {total} interrupts (the architecture: {want})"),
    );
    Ok(())
}
