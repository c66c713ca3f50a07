//! The MSI self-test (`selftest=msi`): a device's own MSI travels through
//! the SMMU to the ITS and becomes an LPI on this CPU, before any guest
//! exists, along the path a VM's devices use.
//!
//! It takes the `edu` (one MSI vector), grants its events from its MSI
//! capability under its DeviceID from `msi-map` (`msi::grant`), maps the
//! DeviceID in the ITS and routes event 0 to this CPU through an
//! `MsiRouter`, as the runtime does for a guest, and points the `edu`'s MSI
//! at the vITS's GITS_TRANSLATER IPA (data = EventID 0). Its stream is
//! attached to a stage-2 domain that maps nothing yet:
//!
//! 1. `msi-without-doorbell-faults`: the `edu` interrupts; its MSI write
//!    stops at the SMMU (a stage-2 write fault at the doorbell page) and no
//!    LPI comes.
//! 2. `msi-through-doorbell`: the domain maps the doorbell as a VM's
//!    devices' table maps it (`space::Mapping::msi_doorbell`: the physical
//!    GITS_TRANSLATER page, write-only); the `edu` interrupts again and the
//!    router's LPI arrives, the router naming the `edu`'s event 0 as its
//!    source.
//!
//! A QEMU device's DMA carries no requester ID, but its MSI messages do, so
//! this is the write the ITS can attribute. Everything is undone after:
//! interrupt acknowledged, MSI and bus mastering off, route and device
//! unmapped from the ITS, stream aborting, domain destroyed.
//!
//! Two check lines in their own run.

use super::dma::{is_s2_write_fault, set_command, with_decode};
use super::TwoChecks;
use crate::arch;
use crate::drivers::edu::Edu;
use crate::drivers::iommu::HostIommu;
use crate::drivers::its;
use crate::drivers::pci::{self, ConfigAccess, Function};
use crate::gicv3::its::cmd::{DeviceId, EventId};
use crate::platform::Platform;
use crate::vm::msi::{self, MsiRouter, Source};
use crate::vm::space::{DomainTables, Mapping, MSI_ADDRESS, MSI_DOORBELL};
use alloc::format;
use alloc::string::String;
use smmu::addr::PhysAddr;
use smmu::domain::DomainId;
use spin::Mutex;

/// IPA size of the test domain.
const TEST_IPA_BITS: u32 = 40;
/// The router's owner of the `edu` (no VM exists yet).
pub(super) const OWNER: usize = 0;
/// The event the `edu`'s one MSI vector writes.
pub(super) const EVENT: EventId = EventId(0);
/// The `edu`'s interrupt status bit the test raises (any will do).
pub(super) const IRQ_BIT: u32 = 1;

/// Runs the test on `edu_fn`; returns whether it passed.
pub fn run(
    p: &Platform,
    host: &Mutex<HostIommu>,
    cfg: &dyn ConfigAccess,
    edu_fn: &Function,
) -> bool {
    // Enumeration left the edu's memory decode off: on for the test, off
    // (with bus mastering) after it.
    with_decode(cfg, edu_fn.bdf, || check(p, host, cfg, edu_fn))
        .report(["msi-without-doorbell-faults", "msi-through-doorbell"])
}

/// What the test holds, to be undone whatever happened.
struct Held {
    domain: Option<DomainId>,
    router: MsiRouter,
}

/// The function under test and what the ITS knows it by.
pub(super) struct Subject<'a> {
    pub(super) f: &'a Function,
    pub(super) edu: Edu,
    pub(super) sid: smmu::addr::StreamId,
    pub(super) device: DeviceId,
    pub(super) events: u32,
}

/// Finds what the test needs of `f`.
pub(super) fn subject<'a>(
    p: &Platform,
    host: &Mutex<HostIommu>,
    cfg: &dyn ConfigAccess,
    f: &'a Function,
) -> Result<Subject<'a>, String> {
    let bdf = f.bdf;
    let pci_host = p.pci.as_ref().ok_or("no PCI host bridge")?;
    let phandle = p.gic.its.as_ref().and_then(|n| n.phandle);
    let signalled = pci::message_signalled(cfg, bdf);
    let grant = msi::grant(bdf, signalled, pci_host.device_id(bdf.rid(), phandle))
        .map_err(|e| format!("{e}"))?
        .ok_or(format!("edu {bdf} has neither MSI nor MSI-X"))?;
    let sid = host
        .lock()
        .stream_of(bdf)
        .ok_or(format!("edu {bdf} has no StreamID"))?;
    let bar0 = f
        .bars
        .first()
        .and_then(|b| b.cpu_addr)
        .ok_or(format!("edu {bdf} has no BAR0"))?;
    // SAFETY: BAR0 was placed by pci::enumerate and mapped as a device.
    let edu = unsafe { Edu::new(bar0) }.map_err(|e| format!("edu {bdf}: {e}"))?;
    Ok(Subject {
        f,
        edu,
        sid,
        device: DeviceId(grant.physical),
        events: grant.events,
    })
}

fn check(p: &Platform, host: &Mutex<HostIommu>, cfg: &dyn ConfigAccess, f: &Function) -> TwoChecks {
    if its::get().is_none() {
        return TwoChecks::setup_failed("the ITS is not up (see its report above)".into());
    }
    let s = match subject(p, host, cfg, f) {
        Ok(s) => s,
        Err(why) => return TwoChecks::setup_failed(why),
    };
    let mut held = Held {
        domain: None,
        router: MsiRouter::new(),
    };
    let mut out = match prepare(host, cfg, &s, &mut held) {
        Ok(()) => fire(host, &s, &held),
        Err(why) => TwoChecks::setup_failed(why),
    };
    let undone = teardown(host, cfg, &s, &mut held.router, held.domain, || Ok(()));
    if let (Ok(_), Err(why)) = (&out.second, undone) {
        out.second = Err(format!("passed, but then {why}"));
    }
    out
}

/// Undoes a test of `s` in the order that keeps the device from writing
/// anywhere: its interrupt and MSI off, then bus mastering, then its
/// routes and DeviceID in the ITS (`router`), then `its_extra` (what else
/// the test left in the ITS), then the stream and its `domain`. Returns
/// the last thing that could not be undone.
pub(super) fn teardown(
    host: &Mutex<HostIommu>,
    cfg: &dyn ConfigAccess,
    s: &Subject<'_>,
    router: &mut MsiRouter,
    domain: Option<DomainId>,
    its_extra: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let bdf = s.f.bdf;
    s.edu.ack_irq(IRQ_BIT);
    pci::set_msi(cfg, bdf, None);
    set_command(cfg, bdf, pci::reg::CMD_MASTER, false);
    let mut undone = Ok(());
    if let Some(its) = its::get() {
        for (d, e, why) in router.release(&mut *its.lock(), OWNER) {
            undone = Err(format!("unmapping {d} {e:?} from the ITS: {why}"));
        }
    }
    if let Err(why) = its_extra() {
        undone = Err(why);
    }
    let mut h = host.lock();
    if let Err(e) = h.iommu.block(s.sid) {
        undone = Err(format!("blocking stream {}: {e}", s.sid));
    }
    h.set_owner(s.sid, "nobody");
    if let Some(id) = domain {
        if let Err(e) = h.iommu.destroy(id) {
            undone = Err(format!("destroying the test domain: {e}"));
        }
    }
    undone
}

/// Attaches `s`'s stream to a new stage-2 domain (its owner named
/// `owner`, in `domain` for the teardown) that maps `doorbell` or nothing.
pub(super) fn attach(
    host: &Mutex<HostIommu>,
    s: &Subject<'_>,
    domain: &mut Option<DomainId>,
    owner: &'static str,
    doorbell: Option<Mapping>,
) -> Result<(), String> {
    let mut h = host.lock();
    let id = h
        .iommu
        .create_domain(TEST_IPA_BITS)
        .map_err(|e| format!("test domain: {e}"))?;
    *domain = Some(id);
    if let Some(m) = doorbell {
        h.iommu
            .map_into(id, &m)
            .map_err(|e| format!("doorbell map: {e}"))?;
    }
    h.iommu
        .attach(id, s.sid)
        .map_err(|e| format!("attach stream {}: {e}", s.sid))?;
    h.set_owner(s.sid, owner);
    Ok(())
}

/// Maps `s`'s DeviceID in the ITS and grants its events to the router's
/// owner.
pub(super) fn map_device(s: &Subject<'_>, router: &mut MsiRouter) -> Result<(), String> {
    let its = its::get().ok_or("the ITS is not up")?;
    its.lock()
        .map_device(s.device, s.events)
        .map_err(|e| format!("MAPD of {}: {e}", s.device))?;
    router.grant(OWNER, s.device, s.events);
    Ok(())
}

/// The domain (nothing mapped) with the stream attached, the DeviceID
/// mapped and event 0 routed to this CPU, the MSI programmed, bus
/// mastering on.
fn prepare(
    host: &Mutex<HostIommu>,
    cfg: &dyn ConfigAccess,
    s: &Subject<'_>,
    held: &mut Held,
) -> Result<(), String> {
    let its = its::get().ok_or("the ITS is not up")?;
    attach(host, s, &mut held.domain, "MSI self-test domain", None)?;
    map_device(s, &mut held.router)?;
    held.router
        .route(
            &mut *its.lock(),
            OWNER,
            s.device,
            EVENT,
            Some(arch::cpu_index()),
        )
        .map_err(|e| format!("routing {EVENT} of {}: {e}", s.device))?;
    if !pci::set_msi(cfg, s.f.bdf, Some((MSI_ADDRESS.raw(), EVENT.0 as u16))) {
        return Err(format!("edu {}: MSI cannot address {MSI_ADDRESS}", s.f.bdf));
    }
    set_command(cfg, s.f.bdf, pci::reg::CMD_MASTER, true);
    Ok(())
}

/// The MSI without the doorbell mapped, then with it.
fn fire(host: &Mutex<HostIommu>, s: &Subject<'_>, held: &Held) -> TwoChecks {
    let (Some(id), Some(lpi)) = (held.domain, held.router.lpi_of(s.device, EVENT)) else {
        return TwoChecks::setup_failed("no domain or no route".into());
    };
    let cpu = arch::cpu_index();
    let doorbell = PhysAddr(MSI_DOORBELL.raw());

    s.edu.raise_irq(IRQ_BIT);
    let arrived = super::its::take(lpi).is_ok();
    let faulted = host
        .lock()
        .report_events()
        .iter()
        .any(|e| is_s2_write_fault(e, s.sid, doorbell));
    s.edu.ack_irq(IRQ_BIT);
    let blocked = match (arrived, faulted) {
        (false, true) => Ok(format!(
            "edu {} MSI to IPA {MSI_ADDRESS}: stage-2 write fault, no {lpi}",
            s.f.bdf
        )),
        (true, _) => Err(format!("{lpi} arrived without the doorbell mapped")),
        (false, false) => Err(format!(
            "no {lpi}, but no stage-2 write fault of sid {} at {MSI_DOORBELL} either",
            s.sid
        )),
    };

    let Some(its) = its::get() else {
        return TwoChecks::setup_failed("the ITS is not up".into());
    };
    let m = Mapping::msi_doorbell(its.lock().translater_page());
    let mapped = host.lock().iommu.map_into(id, &m);
    let delivered = match mapped {
        Err(e) => Err(format!("doorbell map: {e}")),
        Ok(()) => {
            s.edu.raise_irq(IRQ_BIT);
            super::its::take(lpi).and_then(|()| {
                let source = held.router.lookup(lpi.intid());
                let expected = Source {
                    vm: OWNER,
                    device: s.device,
                    event: EVENT,
                };
                if source == Some(expected) {
                    Ok(format!(
                        "edu {} ({}, {} event(s)) MSI to IPA {MSI_ADDRESS}, doorbell -> PA {} \
                         (write-only): {lpi} taken on CPU {cpu}, routed from {EVENT}",
                        s.f.bdf, s.device, s.events, m.pa
                    ))
                } else {
                    Err(format!("{lpi} arrived, but the router names {source:?}"))
                }
            })
        }
    };
    TwoChecks {
        first: blocked,
        second: delivered,
    }
}
