//! The ITS self-test (`selftest=its`): proves the physical LPI path end to
//! end before any guest exists. It maps a DeviceID no device uses with a
//! one-event ITT, maps that event to a new LPI on another CPU's collection
//! and moves it (MOVI) to this CPU's, makes it pending with the ITS's INT
//! command (what a device's MSI write to GITS_TRANSLATER does), and waits,
//! bounded, for this CPU's interface to acknowledge exactly that LPI. Then
//! it unmaps the event (DISCARD) and the device (MAPD V = 0) and checks
//! that the LPI went back to the allocator and nothing is left pending.
//!
//! The DeviceID is safe to borrow: it is the `msi-map` image of the
//! highest requester ID on the enumerated bus that no function has, every
//! function's bus mastering is still off and every stream still aborts at
//! the SMMU, so no device can write GITS_TRANSLATER meanwhile, and the
//! mapping is gone before any guest runs.
//!
//! One check line, `check its: pass|FAIL DETAIL`, in its own run.

use super::Tally;
use crate::arch;
use crate::drivers::its::{self, Its};
use crate::drivers::pci::Function;
use crate::gicv3::intid::{self, Kind};
use crate::gicv3::its::cmd::{DeviceId, EventId};
use crate::gicv3::lpi::Lpi;
use crate::platform::Platform;
use alloc::format;
use alloc::string::String;
use log::warn;

/// Polls of ICC_IAR1_EL1, 1 µs apart, for the LPI to arrive.
const ACK_POLLS: u32 = 100_000;
/// The event the test uses.
const EVENT: EventId = EventId(0);

/// Runs the test; returns whether it passed.
pub fn run(p: &Platform, functions: &[Function]) -> bool {
    let mut tally = Tally::default();
    let (shown, failure) = match check(p, functions) {
        Ok(shown) => (shown, None),
        Err(why) => (String::new(), Some(why)),
    };
    let ok = tally.check("its", &shown, failure);
    tally.close();
    ok
}

/// A DeviceID no enumerated function uses (see the module documentation).
fn spare_device(p: &Platform, functions: &[Function], its: &Its) -> Option<DeviceId> {
    let phandle = p.gic.its.as_ref().and_then(|n| n.phandle);
    let Some(host) = &p.pci else {
        // No PCI at all: nothing can produce a DeviceID.
        return Some(DeviceId(0)).filter(|&d| its.covers(d));
    };
    let bus = u16::from(host.bus_range.0) << 8;
    let used: alloc::vec::Vec<u16> = functions.iter().map(|f| f.bdf.rid()).collect();
    (0..=0xffu16)
        .rev()
        .map(|devfn| bus | devfn)
        .filter(|rid| !used.contains(rid))
        .filter_map(|rid| host.device_id(rid, phandle))
        .map(DeviceId)
        .find(|&d| its.covers(d))
}

/// The test: what it saw on success, what went wrong otherwise.
fn check(p: &Platform, functions: &[Function]) -> Result<String, String> {
    let its = its::get().ok_or("the ITS is not up (see its report above)")?;
    let mut its = its.lock();
    let device =
        spare_device(p, functions, &its).ok_or("no spare DeviceID on the enumerated bus")?;
    let cpu = arch::cpu_index();
    let before = its.lpis_in_use();
    its.map_device(device, 1)
        .map_err(|e| format!("MAPD of {device}: {e}"))?;
    let delivered = deliver(&mut its, device, cpu);
    // Tear down whatever happened, then judge.
    let teardown = its
        .unmap_device(device)
        .map_err(|e| format!("unmapping {device}: {e}"));
    let (lpi, first) = delivered?;
    teardown?;
    if its.lpis_in_use() != before {
        return Err(format!("{lpi} was not returned to the allocator"));
    }
    let after = arch::gicv3::ack();
    if intid::kind(after) != Kind::Special {
        finish(after);
        if after == lpi.intid() {
            return Err(format!("{lpi} pending again after DISCARD and MAPD V=0"));
        }
        warn!("self-test: INTID {after} pending after the ITS test, not the test's");
    }
    Ok(format!(
        "{lpi} of {device} {EVENT}, mapped to CPU {first}, moved to CPU {cpu}, sent by INT, \
         taken on CPU {cpu}; DISCARD, MAPD V=0, LPI freed"
    ))
}

/// Maps the event to an LPI on another CPU (if there is one), moves it to
/// `cpu`, sends INT and waits for the LPI.
fn deliver(its: &mut Its, device: DeviceId, cpu: usize) -> Result<(Lpi, usize), String> {
    let first = its.cpus().find(|&c| c != cpu).unwrap_or(cpu);
    let lpi = its
        .map_event(device, EVENT, first)
        .map_err(|e| format!("MAPTI of {device} {EVENT} to CPU {first}: {e}"))?;
    its.move_event(device, EVENT, cpu)
        .map_err(|e| format!("MOVI of {device} {EVENT} to CPU {cpu}: {e}"))?;
    its.int(device, EVENT)
        .map_err(|e| format!("INT of {device} {EVENT}: {e}"))?;
    take(lpi)?;
    Ok((lpi, first))
}

/// Waits, bounded, for this CPU to acknowledge `lpi` and ends it; other
/// interrupts that come meanwhile are ended and counted.
pub(super) fn take(lpi: Lpi) -> Result<(), String> {
    let mut others = 0u32;
    for _ in 0..ACK_POLLS {
        let intid = arch::gicv3::ack();
        if intid == lpi.intid() {
            // LPIs have no active state: the priority drop is all (§6.1).
            arch::gicv3::eoi(intid);
            return Ok(());
        }
        if intid::kind(intid) == Kind::Special {
            arch::delay_us(1);
            continue;
        }
        if others == 0 {
            warn!("self-test: took INTID {intid} while waiting for {lpi} (further ones counted)");
        }
        others += 1;
        finish(intid);
    }
    Err(format!(
        "{lpi} was not acknowledged within {ACK_POLLS} polls of ICC_IAR1_EL1 \
         ({others} other interrupts taken)"
    ))
}

/// Ends an interrupt the test acknowledged but does not handle.
fn finish(intid: u32) {
    arch::gicv3::eoi(intid);
    if intid::kind(intid) != Kind::Lpi {
        arch::gicv3::deactivate(intid);
    }
}
