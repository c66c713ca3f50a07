//! The direct-injection self-test (`selftest=vlpi`): on a GIC with GICv4
//! direct injection, a device's own MSI becomes a virtual LPI of a vPE,
//! through the path a VM's devices use when their MSIs are delivered
//! directly, and no physical LPI reaches the hypervisor.
//!
//! It takes the `edu` (one MSI vector) as `selftest=msi` does, attaches its
//! stream to a stage-2 domain that maps the doorbell as a VM's devices'
//! table does, maps its DeviceID, gives this CPU a vPE (VMAPP, with its
//! own virtual pending table and configuration table) and routes the
//! `edu`'s event 0 through an `MsiRouter` to guest LPI [`VINTID`] on that
//! vPE (VMAPTI), as the runtime does for a guest's MAPTI, with the LPI
//! enabled. The vPE is not resident while the MSI comes, so the
//! redistributor records the virtual LPI in the vPE's pending table in
//! memory, where the test can see it:
//!
//! 1. `msi-as-vlpi`: the `edu` interrupts; its MSI sets the vINTID's bit
//!    in the vPE's virtual pending table, and no physical LPI comes.
//! 2. `vlpi-pending-for-the-vpe`: the vPE made resident on this CPU and
//!    non-resident again reports an enabled virtual LPI pending
//!    (GICR_VPENDBASER.PendingLast); with the LPI disabled through the
//!    router (the guest's INV: the configuration byte and an INV), it
//!    reports none, while the pending bit stays: the redistributor applies
//!    the configuration table the router keeps.
//! 3. `msi-dropped-while-suspended`: the pending bit cleared (CLEAR), the
//!    router stops the `edu`'s translation, as for a guest that disables
//!    its vITS (MAPD with V = 0, the route kept); the `edu`'s MSI then
//!    leaves the pending table clear and raises no physical LPI; resumed
//!    (MAPD, VMAPTI, INV, VSYNC), its next MSI is pending again.
//!
//! Everything is undone after: MSI and bus mastering off, the route
//! (DISCARD) and the device unmapped from the ITS, the vPE unmapped (VMAPP
//! V = 0) and its tables freed, the stream aborting, the domain destroyed.
//! Three check lines in their own run.

use super::dma::{set_command, with_decode};
use super::msi::{attach, map_device, subject, teardown, Subject, EVENT, IRQ_BIT, OWNER};
use super::{Checked, Tally};
use crate::arch;
use crate::drivers::iommu::HostIommu;
use crate::drivers::pci::{self, ConfigAccess, Function};
use crate::drivers::{gic, its};
use crate::gicv3::intid::{self, Kind};
use crate::gicv3::its::cmd::VpeId;
use crate::platform::Platform;
use crate::vdev::vits::{EventLpi, LpiConfig};
use crate::vm::msi::MsiRouter;
use crate::vm::space::{Mapping, MSI_ADDRESS};
use alloc::format;
use alloc::string::String;
use smmu::domain::DomainId;
use spin::Mutex;

/// The guest LPI the event is routed to.
const VINTID: u32 = 8200;
/// Polls of the virtual pending table, 1 µs apart.
const POLLS: u32 = 1_000_000;

/// Runs the test on `edu_fn`; returns whether it passed.
pub fn run(
    p: &Platform,
    host: &Mutex<HostIommu>,
    cfg: &dyn ConfigAccess,
    edu_fn: &Function,
) -> bool {
    let results = with_decode(cfg, edu_fn.bdf, || check(p, host, cfg, edu_fn));
    let names = [
        "msi-as-vlpi",
        "vlpi-pending-for-the-vpe",
        "msi-dropped-while-suspended",
    ];
    Tally::default().report(names.into_iter().zip(results))
}

/// The checks' results when none could run, for `why`.
fn setup_failed(why: String) -> [Checked; 3] {
    let not_run = Err(format!("not run: {why}"));
    [Err(why), not_run.clone(), not_run]
}

/// What the test holds, to be undone whatever happened.
struct Held {
    domain: Option<DomainId>,
    router: MsiRouter,
    vpes: Option<its::VpeSet>,
}

fn check(
    p: &Platform,
    host: &Mutex<HostIommu>,
    cfg: &dyn ConfigAccess,
    f: &Function,
) -> [Checked; 3] {
    let Some(its) = its::get() else {
        return setup_failed("the ITS is not up (see its report above)".into());
    };
    if let Err(why) = its.lock().direct_injection() {
        return setup_failed(format!("no direct injection: {why}"));
    }
    let s = match subject(p, host, cfg, f) {
        Ok(s) => s,
        Err(why) => return setup_failed(why),
    };
    let mut held = Held {
        domain: None,
        router: MsiRouter::new(),
        vpes: None,
    };
    let mut out = match prepare(host, cfg, &s, &mut held) {
        Ok(()) => match &held.vpes {
            Some(set) => fire(&s, &mut held.router, set),
            None => setup_failed("no vPE".into()),
        },
        Err(why) => setup_failed(why),
    };
    let vpes = held.vpes.take();
    let undone = teardown(host, cfg, &s, &mut held.router, held.domain, || {
        let Some(set) = vpes else { return Ok(()) };
        gic::make_non_resident(arch::mpidr())
            .map_err(|e| format!("the vPE stays resident: {e}"))?;
        its.lock()
            .destroy_vpes(set)
            .map_err(|e| format!("unmapping the vPE: {e}"))
    });
    if let (Ok(_), Err(why)) = (&out[2], undone) {
        out[2] = Err(format!("passed, but then {why}"));
    }
    out
}

/// The domain with the doorbell mapped and the stream attached, the
/// DeviceID mapped, this CPU's vPE, event 0 routed to [`VINTID`] on it
/// (enabled), the MSI programmed, bus mastering on.
fn prepare(
    host: &Mutex<HostIommu>,
    cfg: &dyn ConfigAccess,
    s: &Subject<'_>,
    held: &mut Held,
) -> Result<(), String> {
    let its = its::get().ok_or("the ITS is not up")?;
    let doorbell = Mapping::msi_doorbell(its.lock().translater_page());
    attach(
        host,
        s,
        &mut held.domain,
        "vLPI self-test domain",
        Some(doorbell),
    )?;
    map_device(s, &mut held.router)?;
    let set = its
        .lock()
        .create_vpes(&[arch::cpu_index()])
        .map_err(|e| format!("a vPE for CPU {}: {e}", arch::cpu_index()))?;
    let ids = set.vpes.iter().map(|v| v.id).collect();
    let table = set.table;
    held.vpes = Some(set);
    held.router
        .deliver_directly(OWNER, table, ids)
        .map_err(|e| format!("{e}"))?;
    held.router
        .route_vlpi(&mut *its.lock(), OWNER, s.device, EVENT, Some(lpi(true)))
        .map_err(|e| format!("VMAPTI of {EVENT} of {}: {e}", s.device))?;
    let routed = held.router.vlpi_of(s.device, EVENT);
    if routed != Some((0, VINTID)) {
        return Err(format!("the router routes {EVENT} to {routed:?}"));
    }
    if !pci::set_msi(cfg, s.f.bdf, Some((MSI_ADDRESS.raw(), EVENT.0 as u16))) {
        return Err(format!("edu {}: MSI cannot address {MSI_ADDRESS}", s.f.bdf));
    }
    set_command(cfg, s.f.bdf, pci::reg::CMD_MASTER, true);
    Ok(())
}

/// The guest LPI the event raises, enabled or not.
fn lpi(enabled: bool) -> EventLpi {
    EventLpi {
        vcpu: 0,
        intid: VINTID,
        config: LpiConfig(0xa0 | u8::from(enabled)),
    }
}

/// Waits, bounded, for `vintid` to be pending in `vpe`'s virtual pending
/// table.
fn vpt_pending(vpe: VpeId) -> Result<bool, String> {
    let its = its::get().ok_or("the ITS is not up")?;
    for _ in 0..POLLS {
        if its
            .lock()
            .vlpi_pending(vpe, VINTID)
            .map_err(|e| format!("{e}"))?
        {
            return Ok(true);
        }
        arch::delay_us(1);
    }
    Ok(false)
}

/// A physical LPI this CPU could acknowledge now, ended; None if none.
fn physical_lpi() -> Option<u32> {
    let intid = arch::gicv3::ack();
    match intid::kind(intid) {
        Kind::Special => None,
        Kind::Lpi => {
            arch::gicv3::eoi(intid);
            Some(intid)
        }
        _ => {
            arch::gicv3::eoi(intid);
            arch::gicv3::deactivate(intid);
            None
        }
    }
}

/// Whether the vPE, made resident here and non-resident again, reports
/// an enabled virtual LPI pending.
fn pending_last(set: &its::VpeSet) -> Result<bool, String> {
    let vpe = set.vpes.first().ok_or("no vPE")?;
    let mpidr = arch::mpidr();
    gic::make_resident(mpidr, set.vpropbaser, vpe.vpendbaser)
        .map_err(|e| format!("making {} resident: {e}", vpe.id))?;
    gic::make_non_resident(mpidr).map_err(|e| format!("making {} non-resident: {e}", vpe.id))
}

fn fire(s: &Subject<'_>, router: &mut MsiRouter, set: &its::VpeSet) -> [Checked; 3] {
    let Some(vpe) = set.vpes.first().map(|v| v.id) else {
        return setup_failed("no vPE".into());
    };
    let Some(its) = its::get() else {
        return setup_failed("the ITS is not up".into());
    };
    s.edu.raise_irq(IRQ_BIT);
    let seen = vpt_pending(vpe);
    let stray = physical_lpi();
    s.edu.ack_irq(IRQ_BIT);
    let pending = match (seen, stray) {
        (Err(e), _) => Err(e),
        (_, Some(intid)) => Err(format!("a physical LPI came: INTID {intid}")),
        (Ok(false), None) => Err(format!(
            "vINTID {VINTID} never pending in the pending table of {vpe}"
        )),
        (Ok(true), None) => Ok(format!(
            "edu {} ({}) MSI to IPA {MSI_ADDRESS} -> VMAPTI'd {EVENT} -> vINTID {VINTID} pending \
             in the virtual pending table of {vpe} (CPU {}), no physical LPI",
            s.f.bdf,
            s.device,
            arch::cpu_index()
        )),
    };
    if pending.is_err() {
        let not_run = Err(String::from("not run: no virtual LPI pending"));
        return [pending, not_run.clone(), not_run];
    }
    let enabled = pending_last(set);
    let disabled = router
        .route_vlpi(&mut *its.lock(), OWNER, s.device, EVENT, Some(lpi(false)))
        .map_err(|e| format!("disabling vINTID {VINTID}: {e}"))
        .and_then(|()| pending_last(set));
    let still = its
        .lock()
        .vlpi_pending(vpe, VINTID)
        .map_err(|e| format!("{e}"));
    let presented = match (enabled, disabled, still) {
        (Ok(true), Ok(false), Ok(true)) => Ok(format!(
            "{vpe} resident on CPU {}: PendingLast with vINTID {VINTID} enabled, none once the \
             router disabled it (INV), its pending bit kept",
            arch::cpu_index()
        )),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        (enabled, disabled, still) => Err(format!(
            "PendingLast enabled {enabled:?}, disabled {disabled:?}; still pending {still:?}"
        )),
    };
    let dropped = match presented {
        Ok(_) => suspended(s, router, vpe),
        Err(_) => Err(String::from("not run: the virtual LPI was not presented")),
    };
    [pending, presented, dropped]
}

/// With the vINTID's pending bit cleared and the `edu`'s translation
/// suspended, its MSI leaves the bit clear and raises no physical LPI;
/// resumed, the next one sets it.
fn suspended(s: &Subject<'_>, router: &mut MsiRouter, vpe: VpeId) -> Checked {
    let its = its::get().ok_or("the ITS is not up")?;
    let ctx = |what: &'static str| {
        move |e: crate::vm::msi::RouteError<its::ItsError>| format!("{what}: {e}")
    };
    router
        .set_pending(&mut *its.lock(), OWNER, s.device, EVENT, false)
        .map_err(ctx("CLEAR"))?;
    if its
        .lock()
        .vlpi_pending(vpe, VINTID)
        .map_err(|e| format!("{e}"))?
    {
        return Err(format!("vINTID {VINTID} still pending after CLEAR"));
    }
    router
        .set_translating(&mut *its.lock(), OWNER, false)
        .map_err(ctx("suspending"))?;
    s.edu.raise_irq(IRQ_BIT);
    s.edu.ack_irq(IRQ_BIT);
    let stray = physical_lpi();
    router
        .set_translating(&mut *its.lock(), OWNER, true)
        .map_err(ctx("resuming"))?;
    if let Some(intid) = stray {
        return Err(format!(
            "a physical LPI came while suspended: INTID {intid}"
        ));
    }
    if its
        .lock()
        .vlpi_pending(vpe, VINTID)
        .map_err(|e| format!("{e}"))?
    {
        return Err(format!(
            "the MSI sent while {} was suspended made vINTID {VINTID} pending",
            s.device
        ));
    }
    s.edu.raise_irq(IRQ_BIT);
    let seen = vpt_pending(vpe);
    s.edu.ack_irq(IRQ_BIT);
    match seen? {
        true => Ok(format!(
            "{} suspended (MAPD V = 0): its MSI left vINTID {VINTID} clear, no physical LPI; \
             resumed (MAPD, VMAPTI, INV, VSYNC): its next MSI pending for {vpe}",
            s.device
        )),
        false => Err(format!(
            "resumed, the next MSI never made vINTID {VINTID} pending for {vpe}"
        )),
    }
}
