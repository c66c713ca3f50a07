//! The physical side of a vITS on the host, for the unit tests and the
//! fuzz targets: [`RecordingPhysicalIts`] routes events as the
//! hypervisor's physical ITS would (through the list registers, or
//! directly as a GICv4 would, [`RecordingPhysicalIts::direct`]) and records
//! what it was asked;
//! [`check_in_step`] and [`check_access`] state the rules a vITS keeps
//! whatever its guest does, from the specification (IHI 0069) and the
//! isolation the hypervisor promises, without running the vITS's own code.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;

use super::{EventLpi, LpiConfig, EVENT_ID_BITS, FIRST_LPI};
use super::{ItsConfig, ItsOutcome, PhysicalIts, VIts, COMMANDS_PER_ACCESS, ERRORS_PER_ACCESS};
use crate::vdev::vgic::VGic;
use alloc::vec::Vec;

/// The hypervisor's routing of a VM's device MSIs, as a set of routed
/// (physical DeviceID, EventID) pairs with the vCPU each is to arrive at.
/// Knows the grants the VM was given (to check against) and records calls
/// that break the [`PhysicalIts`] contract: mapping an event that is
/// routed already, moving or unmapping one that is not.
#[derive(Debug)]
pub struct RecordingPhysicalIts {
    grants: ItsConfig,
    /// The routed events: (physical DeviceID, EventID) to vCPU.
    pub routed: BTreeMap<(u32, u32), usize>,
    /// The LPI each routed event raises, as last heard.
    pub lpis: BTreeMap<(u32, u32), u32>,
    /// Delivers directly: holds the pending state and the configuration.
    pub direct: bool,
    /// With `direct`: the configuration last heard for each LPI.
    pub configured: BTreeMap<u32, LpiConfig>,
    /// With `direct`: the INTs (true) and CLEARs asked, in order.
    pub pending: Vec<((u32, u32), bool)>,
    /// With `direct`: whether the routed events' MSIs are translated, as
    /// [`PhysicalIts::set_translating`] last said (at first they are).
    pub translating: bool,
    /// While set, [`PhysicalIts::map_event`] and
    /// [`PhysicalIts::move_event`] fail (no physical LPI left, or none on
    /// the new CPU).
    pub refuse_maps: bool,
    /// Calls so far.
    pub calls: usize,
    /// The first call that broke the contract, described.
    misuse: Option<String>,
}

impl RecordingPhysicalIts {
    /// Nothing routed, for a VM given `grants`. Panics if two grants name
    /// one physical DeviceID (a function has one requester ID).
    pub fn new(grants: ItsConfig) -> Self {
        let physical: BTreeSet<u32> = grants.devices.values().map(|g| g.physical).collect();
        assert_eq!(
            physical.len(),
            grants.devices.len(),
            "two grants of one physical DeviceID"
        );
        Self {
            grants,
            routed: BTreeMap::new(),
            lpis: BTreeMap::new(),
            direct: false,
            configured: BTreeMap::new(),
            pending: Vec::new(),
            translating: true,
            refuse_maps: false,
            calls: 0,
            misuse: None,
        }
    }

    /// As [`RecordingPhysicalIts::new`], delivering directly.
    pub fn direct(grants: ItsConfig) -> Self {
        Self {
            direct: true,
            ..Self::new(grants)
        }
    }

    fn heard(&mut self, device: u32, event: u32, lpi: EventLpi) {
        self.lpis.insert((device, event), lpi.intid);
        if self.direct {
            self.configured.insert(lpi.intid, lpi.config);
        }
    }

    /// The grants the VM was given.
    pub fn grants(&self) -> &ItsConfig {
        &self.grants
    }

    fn misused(&mut self, what: String) {
        self.misuse.get_or_insert(what);
    }
}

impl PhysicalIts for RecordingPhysicalIts {
    type Error = &'static str;

    fn map_event(&mut self, device: u32, event: u32, lpi: EventLpi) -> Result<(), Self::Error> {
        self.calls += 1;
        if self.refuse_maps {
            return Err("no physical LPI left");
        }
        if self.routed.insert((device, event), lpi.vcpu).is_some() {
            self.misused(format!(
                "mapped event {event} of {device:#x}, which was routed already"
            ));
        }
        self.heard(device, event, lpi);
        Ok(())
    }

    fn move_event(&mut self, device: u32, event: u32, lpi: EventLpi) -> Result<(), Self::Error> {
        self.calls += 1;
        if self.refuse_maps && self.routed.contains_key(&(device, event)) {
            return Err("no physical LPI left on the new CPU");
        }
        match self.routed.get_mut(&(device, event)) {
            Some(v) => {
                *v = lpi.vcpu;
                self.heard(device, event, lpi);
                Ok(())
            }
            None => {
                self.misused(format!("moved event {event} of {device:#x}, not routed"));
                Err("not routed")
            }
        }
    }

    fn unmap_event(&mut self, device: u32, event: u32) -> Result<(), Self::Error> {
        self.calls += 1;
        self.lpis.remove(&(device, event));
        match self.routed.remove(&(device, event)) {
            Some(_) => Ok(()),
            None => {
                self.misused(format!("unmapped event {event} of {device:#x}, not routed"));
                Err("not routed")
            }
        }
    }

    fn direct(&self) -> bool {
        self.direct
    }

    fn configure(&mut self, lpis: &[(u32, LpiConfig)]) -> Result<(), Self::Error> {
        self.calls += 1;
        if !self.direct {
            self.misused(format!("configured {lpis:?} without direct delivery"));
        }
        self.configured.extend(lpis.iter().copied());
        Ok(())
    }

    fn set_pending(&mut self, device: u32, event: u32, pending: bool) -> Result<(), Self::Error> {
        self.calls += 1;
        if !self.direct {
            self.misused(format!(
                "INT or CLEAR of event {event} of {device:#x} without direct delivery"
            ));
        }
        if !self.routed.contains_key(&(device, event)) {
            self.misused(format!(
                "INT or CLEAR of event {event} of {device:#x}, not routed"
            ));
            return Err("not routed");
        }
        self.pending.push(((device, event), pending));
        Ok(())
    }

    fn set_translating(&mut self, on: bool) -> Result<(), Self::Error> {
        self.calls += 1;
        if !self.direct {
            self.misused(format!("translation turned {on} without direct delivery"));
        }
        self.translating = on;
        Ok(())
    }
}

/// The rules between a vITS, its vGIC and its physical side, at any time
/// between two accesses:
/// - the physical side is used as [`PhysicalIts`] says (no event mapped
///   twice, none moved or unmapped unless routed);
/// - it routes only physical DeviceIDs granted to the VM, each event below
///   its grant's `events` and the EventIDs GITS_TYPER.ID_bits allows, to
///   vCPUs of the VM;
/// - the vITS holds translations only for the VM's DeviceIDs, within the
///   same bounds, each to an LPI (INTID 8192 up to GICD_TYPER.IDbits);
/// - the physical side routes exactly the (physical DeviceID, EventID)
///   pairs of the translations the vITS holds;
/// - the vGIC holds exactly the LPIs those translations map, each
///   targeting a vCPU of the VM;
/// - each routed event raises the LPI of its translation;
/// - delivering directly, the routed events' MSIs are translated exactly
///   while the vITS is enabled (GITS_CTLR.Enabled);
/// - delivering directly, the vGIC has none of them pending (it never
///   lists them: the physical GIC holds their pending state), and the
///   physical side was told the configuration the vGIC holds for each, as
///   the hardware must apply it on the vCPU it targets (but for an LPI
///   that events of several collections raise, whose one byte cannot
///   follow two redistributors' EnableLPIs).
pub fn check_in_step(its: &VIts, vgic: &VGic, phys: &RecordingPhysicalIts) -> Result<(), String> {
    if let Some(m) = &phys.misuse {
        return Err(format!("physical ITS misused: {m}"));
    }
    let vcpus = vgic.nr_vcpus();
    let events = |g: &super::DeviceGrant| g.events.min(1 << EVENT_ID_BITS);
    for (&(device, event), &vcpu) in &phys.routed {
        let Some(g) = phys.grants.devices.values().find(|g| g.physical == device) else {
            return Err(format!(
                "physical DeviceID {device:#x} routed, not the VM's"
            ));
        };
        if event >= events(g) {
            return Err(format!(
                "event {event} of physical DeviceID {device:#x} routed beyond its grant {g:?}"
            ));
        }
        if vcpu >= vcpus {
            return Err(format!(
                "event {event} of physical DeviceID {device:#x} routed to vCPU {vcpu} of {vcpus}"
            ));
        }
    }
    let mut held = BTreeSet::new();
    let mut lpis = BTreeSet::new();
    for t in its.translations() {
        let Some(g) = phys.grants.devices.get(&t.device) else {
            return Err(format!("{t:?} of a DeviceID not the VM's"));
        };
        if t.event >= events(g) {
            return Err(format!("{t:?} beyond its grant {g:?}"));
        }
        if !(FIRST_LPI..vgic.lpi_limit()).contains(&t.intid) {
            return Err(format!("{t:?} to no LPI (limit {})", vgic.lpi_limit()));
        }
        held.insert((g.physical, t.event));
        lpis.insert(t.intid);
    }
    let routed: BTreeSet<(u32, u32)> = phys.routed.keys().copied().collect();
    if held != routed {
        return Err(format!(
            "held, not routed: {:x?}; routed, not held: {:x?}",
            held.difference(&routed).collect::<BTreeSet<_>>(),
            routed.difference(&held).collect::<BTreeSet<_>>()
        ));
    }
    for &intid in &lpis {
        match vgic.lpi_target(intid) {
            None => return Err(format!("LPI {intid} mapped by an event, not in the vGIC")),
            Some(v) if v >= vcpus => {
                return Err(format!("LPI {intid} targets vCPU {v} of {vcpus}"))
            }
            Some(_) => {}
        }
    }
    if vgic.nr_lpis() != lpis.len() {
        return Err(format!(
            "the vGIC holds {} LPIs, the translations map {}",
            vgic.nr_lpis(),
            lpis.len()
        ));
    }
    let mut collections: BTreeMap<u32, BTreeSet<u16>> = BTreeMap::new();
    for t in its.translations() {
        let physical = phys.grants.devices[&t.device].physical;
        if phys.lpis.get(&(physical, t.event)) != Some(&t.intid) {
            return Err(format!(
                "{t:?}: the physical side raises {:?}",
                phys.lpis.get(&(physical, t.event))
            ));
        }
        collections.entry(t.intid).or_default().insert(t.icid);
    }
    if phys.direct && !phys.routed.is_empty() && phys.translating != its.enabled() {
        return Err(format!(
            "the vITS is {}, the physical side {} the routed events' MSIs",
            if its.enabled() { "enabled" } else { "disabled" },
            if phys.translating {
                "translates"
            } else {
                "drops"
            }
        ));
    }
    if phys.direct {
        for (&intid, icids) in &collections {
            if vgic.lpi_pending(intid) {
                return Err(format!(
                    "LPI {intid} pending in the vGIC, delivered directly"
                ));
            }
            let (Some(vcpu), Some(config)) = (vgic.lpi_target(intid), vgic.lpi_config(intid))
            else {
                continue;
            };
            let want = vgic.lpi_hw_config(vcpu, config);
            if icids.len() == 1 && phys.configured.get(&intid) != Some(&want) {
                return Err(format!(
                    "LPI {intid}: the hardware was told {:?}, the vGIC holds {want:?}",
                    phys.configured.get(&intid)
                ));
            }
        }
    }
    Ok(())
}

/// The bounds on the work of one register access (or reset) that left
/// `out`, during which the physical side's call count went from
/// `calls_before` to `phys.calls`: at most [`COMMANDS_PER_ACCESS`]
/// commands, at most [`ERRORS_PER_ACCESS`] errors reported and no more
/// errors than commands, and per command at most three physical calls or
/// one per event granted to the VM (a MAPD, MAPC or MOVALL touches each
/// mapped event once), plus that many for a reset.
pub fn check_access(
    out: &ItsOutcome,
    phys: &RecordingPhysicalIts,
    calls_before: usize,
) -> Result<(), String> {
    if out.commands > COMMANDS_PER_ACCESS {
        return Err(format!("{} commands in one access", out.commands));
    }
    if out.errors.len() > ERRORS_PER_ACCESS {
        return Err(format!(
            "{} errors reported by one access",
            out.errors.len()
        ));
    }
    if out.errors.len() + out.more_errors > out.commands {
        return Err(format!(
            "{} errors from {} commands",
            out.errors.len() + out.more_errors,
            out.commands
        ));
    }
    let granted: usize = phys
        .grants
        .devices
        .values()
        .map(|g| g.events.min(1 << EVENT_ID_BITS) as usize)
        .sum();
    let per_command = granted.max(3);
    let calls = phys.calls - calls_before;
    if calls > (out.commands + 1) * per_command {
        return Err(format!(
            "{calls} physical calls for {} commands ({granted} events granted)",
            out.commands
        ));
    }
    Ok(())
}
