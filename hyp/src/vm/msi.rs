//! The physical half of assigned functions' MSIs: which events of which
//! function a VM may use ([`grant`]), and where each routed event's
//! physical LPI goes ([`MsiRouter`]).
//!
//! A function's MSI (or MSI-X) message is a DMA write of an EventID to
//! GITS_TRANSLATER, through the SMMU, with the function's DeviceID (its
//! requester ID through the host bridge's `msi-map`). The hypervisor maps
//! the DeviceID in the physical ITS with one ITT entry per event the
//! function can raise. When the guest maps an event in its vITS, the
//! runtime routes the physical event to a new LPI on the physical CPU of
//! the target vCPU ([`MsiRouter::route`]); when that LPI arrives, the
//! router names the VM, device and event ([`MsiRouter::lookup`]) and the
//! VM's vITS makes the guest's LPI pending.
//!
//! Where the GIC injects virtual LPIs directly (GICv4, [`Delivery::Direct`])
//! a VM's events take the other path ([`MsiRouter::route_vlpi`]): the
//! physical event is mapped (VMAPTI) to the guest's own LPI INTID on the vPE
//! of the target vCPU, and the redistributor presents it to the vCPU
//! without the hypervisor. The router then also keeps the VM's virtual LPI
//! configuration table in step with the guest's ([`MsiRouter::configure`]):
//! each byte written, and an INV or VINVALL where a redistributor may hold
//! an older one (`gicv3::vlpi::StaleConfigs`).
//!
//! Bounded by construction: only granted devices are routed, each event
//! below its grant, so the router never holds more routes (and LPIs) than
//! the grants' events; a route, move or configuration change costs at most
//! a command or two and a sync on the ITS, but for a configuration change
//! of LPIs on several vCPUs, which costs one VINVALL and VSYNC per vCPU.

use crate::drivers::pci::{Bdf, MessageSignalled};
use crate::gicv3::its::cmd::{DeviceId, EventId, VpeId};
use crate::gicv3::lpi::Lpi;
use crate::gicv3::vlpi::{self, StaleConfigs, VlpiError, VlpiTable};
use crate::vdev::vgic::lpi::LpiConfig;
use crate::vdev::vits::{DeviceGrant, EventLpi, EVENT_ID_BITS};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;

/// How a VM's MSIs reach its vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Each MSI is a physical LPI that the hypervisor takes on the physical
    /// CPU of the target vCPU and injects through the list registers.
    ListRegisters,
    /// GICv4: each MSI is a virtual LPI that the redistributor presents to
    /// the vCPU's resident vPE: no trap.
    Direct,
}

impl Delivery {
    /// How the scenario's `msi_delivery` names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ListRegisters => "list-registers",
            Self::Direct => "direct",
        }
    }
}

/// The byte of the virtual LPI configuration table for `config`.
fn table_byte(config: LpiConfig) -> u8 {
    vlpi::table_byte(config.priority(), config.enabled())
}

/// Why a function cannot be given to a VM with its MSIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The function signals by message, but the host bridge's `msi-map`
    /// gives its requester ID no DeviceID of the ITS.
    NoDeviceId(Bdf),
    /// More events than the vITS's EventIDs can name.
    TooManyEvents(Bdf, u32),
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDeviceId(bdf) => write!(
                f,
                "PCI {bdf}: has MSI or MSI-X, but the host bridge's msi-map gives requester ID \
                 {:#x} no ITS DeviceID",
                bdf.rid()
            ),
            Self::TooManyEvents(bdf, n) => write!(
                f,
                "PCI {bdf}: {n} MSI events, more than the {} a vITS names",
                1u32 << EVENT_ID_BITS
            ),
        }
    }
}

/// The grant of assigned function `bdf`, which signals as `signalled`
/// (`None`: INTx only, no grant) and whose requester ID `msi-map` turns
/// into `device_id`: its physical DeviceID and one event per MSI-X table
/// entry or MSI vector.
pub fn grant(
    bdf: Bdf,
    signalled: Option<MessageSignalled>,
    device_id: Option<u32>,
) -> Result<Option<DeviceGrant>, GrantError> {
    let Some(signalled) = signalled else {
        return Ok(None);
    };
    let physical = device_id.ok_or(GrantError::NoDeviceId(bdf))?;
    let events = signalled.events();
    if events > 1 << EVENT_ID_BITS {
        return Err(GrantError::TooManyEvents(bdf, events));
    }
    Ok(Some(DeviceGrant { physical, events }))
}

/// The physical ITS as the router drives it (`drivers::its::Its` on the
/// machine, a recording fake in tests).
pub trait PhysicalMsi {
    /// The driver's error.
    type Error: fmt::Display;
    /// Maps `event` of `device` to a new LPI delivered to physical CPU
    /// `cpu`.
    fn map_event(
        &mut self,
        device: DeviceId,
        event: EventId,
        cpu: usize,
    ) -> Result<Lpi, Self::Error>;
    /// Delivers the mapped `event` of `device` to physical CPU `cpu`.
    fn move_event(
        &mut self,
        device: DeviceId,
        event: EventId,
        cpu: usize,
    ) -> Result<(), Self::Error>;
    /// Unmaps `event` of `device` and frees its LPI.
    fn unmap_event(&mut self, device: DeviceId, event: EventId) -> Result<(), Self::Error>;
    /// Unmaps `device` (and whatever events it still has).
    fn unmap_device(&mut self, device: DeviceId) -> Result<(), Self::Error>;
    /// Maps `event` of `device` to virtual LPI `vintid` of `vpe` (VMAPTI,
    /// no doorbell), then INV when `inv`, then VSYNC.
    fn map_vlpi(
        &mut self,
        device: DeviceId,
        event: EventId,
        vpe: VpeId,
        vintid: u32,
        inv: bool,
    ) -> Result<(), Self::Error>;
    /// Moves the virtual LPI of `event` of `device` to `vpe` (VMOVI), then
    /// INV when `inv`, then VSYNC.
    fn move_vlpi(
        &mut self,
        device: DeviceId,
        event: EventId,
        vpe: VpeId,
        inv: bool,
    ) -> Result<(), Self::Error>;
    /// Writes `byte` for `vintid` into configuration table `table`; returns
    /// the byte it replaces.
    fn set_vlpi_config(
        &mut self,
        table: VlpiTable,
        vintid: u32,
        byte: u8,
    ) -> Result<u8, Self::Error>;
    /// INV of `event` of `device`, then its sync.
    fn inv_event(&mut self, device: DeviceId, event: EventId) -> Result<(), Self::Error>;
    /// VINVALL of `vpe`, then VSYNC.
    fn inv_vpe(&mut self, vpe: VpeId) -> Result<(), Self::Error>;
    /// INT (`pending`) or CLEAR of `event` of `device`, then its sync.
    fn set_pending(
        &mut self,
        device: DeviceId,
        event: EventId,
        pending: bool,
    ) -> Result<(), Self::Error>;
    /// Stops translating `device`'s MSIs (they are dropped), keeping its
    /// events' mappings and their LPIs' pending state.
    fn suspend_device(&mut self, device: DeviceId) -> Result<(), Self::Error>;
    /// Translates suspended `device`'s MSIs again, each event mapped as
    /// before.
    fn resume_device(&mut self, device: DeviceId) -> Result<(), Self::Error>;
}

/// Why a route was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError<E> {
    /// The device is not granted to the VM that asked.
    NotGranted(DeviceId),
    /// The event is beyond the device's grant.
    EventOutOfRange(DeviceId, EventId),
    /// The VM's MSIs are delivered the other way ([`Delivery`]).
    WrongDelivery,
    /// The vCPU has no vPE.
    NoVpe(usize),
    /// The event is not routed.
    NotRouted(DeviceId, EventId),
    /// The physical ITS failed.
    Its(E),
}

impl<E> RouteError<E> {
    /// What the vITS hears (`Machine::route_msi`'s error).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotGranted(_) => "the device is not granted to this VM",
            Self::EventOutOfRange(..) => "the event is beyond the device's grant",
            Self::WrongDelivery => "the VM's MSIs are delivered the other way",
            Self::NoVpe(_) => "the vCPU has no vPE",
            Self::NotRouted(..) => "the event is not routed",
            Self::Its(_) => "the physical ITS refused",
        }
    }
}

impl<E: fmt::Display> fmt::Display for RouteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotGranted(d) => write!(f, "{d} is not granted to this VM"),
            Self::EventOutOfRange(d, e) => write!(f, "{e} is beyond the grant of {d}"),
            Self::WrongDelivery => f.write_str("the VM's MSIs are delivered the other way"),
            Self::NoVpe(v) => write!(f, "vCPU {v} has no vPE"),
            Self::NotRouted(d, e) => write!(f, "{e} of {d} is not routed"),
            Self::Its(e) => write!(f, "physical ITS: {e}"),
        }
    }
}

/// Where a routed LPI comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The VM (index) it is delivered to.
    pub vm: usize,
    /// The physical device.
    pub device: DeviceId,
    /// The event.
    pub event: EventId,
}

/// A granted device: its VM and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Granted {
    vm: usize,
    events: u32,
}

/// A routed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Routed {
    /// To a physical LPI taken on physical CPU `cpu`.
    Lpi { lpi: Lpi, cpu: usize },
    /// To virtual LPI `vintid` of the vPE of `vcpu`.
    Vlpi { vcpu: usize, vintid: u32 },
}

/// A VM whose MSIs are delivered directly: its vPEs (by vCPU), its virtual
/// LPI configuration table, and which redistributors may hold an older
/// configuration than the table.
#[derive(Debug)]
struct DirectVm {
    table: VlpiTable,
    vpes: Vec<VpeId>,
    stale: StaleConfigs,
}

/// Every grant and every routed event of the machine.
#[derive(Debug, Default)]
pub struct MsiRouter {
    grants: BTreeMap<DeviceId, Granted>,
    routes: BTreeMap<(DeviceId, EventId), Routed>,
    /// Routed LPIs by INTID.
    lpis: BTreeMap<u32, Source>,
    /// The VMs whose MSIs are delivered directly.
    direct: BTreeMap<usize, DirectVm>,
}

impl MsiRouter {
    /// No grants, no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `events` events of physical `device` to VM `vm`; false (and
    /// nothing changes) if the device is granted already.
    pub fn grant(&mut self, vm: usize, device: DeviceId, events: u32) -> bool {
        if self.grants.contains_key(&device) {
            return false;
        }
        self.grants.insert(device, Granted { vm, events });
        true
    }

    /// Delivers VM `vm`'s MSIs directly, to vPEs `vpes` (one per vCPU, in
    /// vCPU order) with virtual LPI configuration table `table`.
    pub fn deliver_directly(
        &mut self,
        vm: usize,
        table: VlpiTable,
        vpes: Vec<VpeId>,
    ) -> Result<(), VlpiError> {
        let stale = StaleConfigs::new(vpes.len())?;
        self.direct.insert(vm, DirectVm { table, vpes, stale });
        Ok(())
    }

    /// How VM `vm`'s MSIs are delivered.
    #[cfg(test)]
    pub fn delivery(&self, vm: usize) -> Delivery {
        if self.direct.contains_key(&vm) {
            Delivery::Direct
        } else {
            Delivery::ListRegisters
        }
    }

    /// Checks that VM `vm` was granted `device` and that `event` is below
    /// the grant.
    fn check<E>(&self, vm: usize, device: DeviceId, event: EventId) -> Result<(), RouteError<E>> {
        let granted = self
            .grants
            .get(&device)
            .filter(|g| g.vm == vm)
            .ok_or(RouteError::NotGranted(device))?;
        if event.0 >= granted.events {
            return Err(RouteError::EventOutOfRange(device, event));
        }
        Ok(())
    }

    /// Routes `event` of `device`, which VM `vm` must have been granted, to
    /// physical CPU `to` (mapping it, or moving it if it is routed
    /// already), or stops routing it (`None`: unmapped and forgotten; an
    /// event that is not routed is left alone). Only for a VM whose MSIs go
    /// through the list registers.
    pub fn route<P: PhysicalMsi>(
        &mut self,
        its: &mut P,
        vm: usize,
        device: DeviceId,
        event: EventId,
        to: Option<usize>,
    ) -> Result<(), RouteError<P::Error>> {
        self.check(vm, device, event)?;
        if self.direct.contains_key(&vm) {
            return Err(RouteError::WrongDelivery);
        }
        let key = (device, event);
        match (to, self.routes.get(&key).copied()) {
            (None, None) => Ok(()),
            (None, Some(r)) => {
                its.unmap_event(device, event).map_err(RouteError::Its)?;
                self.forget(key, r);
                Ok(())
            }
            (Some(cpu), Some(Routed::Lpi { cpu: now, .. })) if now == cpu => Ok(()),
            (Some(cpu), Some(Routed::Lpi { lpi, .. })) => {
                its.move_event(device, event, cpu)
                    .map_err(RouteError::Its)?;
                self.routes.insert(key, Routed::Lpi { lpi, cpu });
                Ok(())
            }
            (Some(_), Some(Routed::Vlpi { .. })) => Err(RouteError::WrongDelivery),
            (Some(cpu), None) => {
                let lpi = its.map_event(device, event, cpu).map_err(RouteError::Its)?;
                self.routes.insert(key, Routed::Lpi { lpi, cpu });
                self.lpis.insert(lpi.intid(), Source { vm, device, event });
                Ok(())
            }
        }
    }

    fn forget(&mut self, key: (DeviceId, EventId), r: Routed) {
        self.routes.remove(&key);
        if let Routed::Lpi { lpi, .. } = r {
            self.lpis.remove(&lpi.intid());
        }
    }

    /// The VPE of vCPU `vcpu` of directly delivered VM `vm`.
    fn vpe<E>(&self, vm: usize, vcpu: usize) -> Result<VpeId, RouteError<E>> {
        let d = self.direct.get(&vm).ok_or(RouteError::WrongDelivery)?;
        d.vpes.get(vcpu).copied().ok_or(RouteError::NoVpe(vcpu))
    }

    /// Routes `event` of `device`, which VM `vm` (delivered directly) must
    /// have been granted, to guest LPI `to` on its vCPU's vPE, or stops
    /// routing it (`None`). A new route is VMAPTI (and INV if the vPE's
    /// redistributor may hold an older configuration of the LPI); another
    /// vCPU is VMOVI (and INV likewise), keeping the pending state; another
    /// LPI is DISCARD and a new VMAPTI; the same vCPU and LPI only brings
    /// the configuration up to date (as [`MsiRouter::configure`]).
    pub fn route_vlpi<P: PhysicalMsi>(
        &mut self,
        its: &mut P,
        vm: usize,
        device: DeviceId,
        event: EventId,
        to: Option<EventLpi>,
    ) -> Result<(), RouteError<P::Error>> {
        self.check(vm, device, event)?;
        if !self.direct.contains_key(&vm) {
            return Err(RouteError::WrongDelivery);
        }
        let key = (device, event);
        let now = self.routes.get(&key).copied();
        let Some(t) = to else {
            if let Some(r) = now {
                its.unmap_event(device, event).map_err(RouteError::Its)?;
                self.forget(key, r);
            }
            return Ok(());
        };
        let vpe = self.vpe(vm, t.vcpu)?;
        let byte = table_byte(t.config);
        match now {
            Some(Routed::Vlpi { vcpu, vintid }) if vintid == t.intid => {
                if vcpu == t.vcpu {
                    return self.write_configs(its, vm, &[(t.intid, byte)], None);
                }
                self.write_configs(its, vm, &[(t.intid, byte)], Some(key))?;
                let inv = self.is_stale(vm, t.intid, t.vcpu);
                its.move_vlpi(device, event, vpe, inv)
                    .map_err(RouteError::Its)?;
                self.refreshed(vm, t.intid, t.vcpu);
                self.routes.insert(
                    key,
                    Routed::Vlpi {
                        vcpu: t.vcpu,
                        vintid,
                    },
                );
                Ok(())
            }
            other => {
                if let Some(r) = other {
                    its.unmap_event(device, event).map_err(RouteError::Its)?;
                    self.forget(key, r);
                }
                self.write_configs(its, vm, &[(t.intid, byte)], None)?;
                let inv = self.is_stale(vm, t.intid, t.vcpu);
                its.map_vlpi(device, event, vpe, t.intid, inv)
                    .map_err(RouteError::Its)?;
                self.refreshed(vm, t.intid, t.vcpu);
                self.routes.insert(
                    key,
                    Routed::Vlpi {
                        vcpu: t.vcpu,
                        vintid: t.intid,
                    },
                );
                Ok(())
            }
        }
    }

    fn is_stale(&self, vm: usize, vintid: u32, vcpu: usize) -> bool {
        self.direct
            .get(&vm)
            .is_some_and(|d| d.stale.is_stale(vintid, vcpu))
    }

    fn refreshed(&mut self, vm: usize, vintid: u32, vcpu: usize) {
        if let Some(d) = self.direct.get_mut(&vm) {
            d.stale.refreshed(vintid, vcpu);
        }
    }

    /// Brings VM `vm`'s virtual LPI configuration table to `lpis` (guest
    /// INTID, configuration as the hardware must apply it): the bytes that
    /// change are written, and the redistributors of the vCPUs whose
    /// events raise them re-read them: INV through the event when there
    /// is one such event, else one VINVALL per such vCPU; each then a
    /// VSYNC. The guest's INV and INVALL, and its redistributors' LPIs
    /// turned on or off, come here.
    pub fn configure<P: PhysicalMsi>(
        &mut self,
        its: &mut P,
        vm: usize,
        lpis: &[(u32, LpiConfig)],
    ) -> Result<(), RouteError<P::Error>> {
        let bytes: Vec<(u32, u8)> = lpis.iter().map(|&(i, c)| (i, table_byte(c))).collect();
        self.write_configs(its, vm, &bytes, None)
    }

    /// Writes `changes` (vINTID, byte) into VM `vm`'s configuration table
    /// and invalidates them where events other than `skip` raise them (the
    /// caller invalidates `skip`'s as it maps or moves it).
    fn write_configs<P: PhysicalMsi>(
        &mut self,
        its: &mut P,
        vm: usize,
        changes: &[(u32, u8)],
        skip: Option<(DeviceId, EventId)>,
    ) -> Result<(), RouteError<P::Error>> {
        let Self {
            grants,
            routes,
            direct,
            ..
        } = self;
        let d = direct.get_mut(&vm).ok_or(RouteError::WrongDelivery)?;
        let mut changed = BTreeSet::new();
        for &(vintid, byte) in changes {
            let old = its
                .set_vlpi_config(d.table, vintid, byte)
                .map_err(RouteError::Its)?;
            if old != byte {
                d.stale.changed(vintid);
                changed.insert(vintid);
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        // The events of the VM that raise a changed vLPI now.
        let mut affected = Vec::new();
        for (&device, g) in grants.iter() {
            if g.vm != vm {
                continue;
            }
            let of_device = routes.range((device, EventId(0))..=(device, EventId(u32::MAX)));
            for (&key, r) in of_device {
                if let Routed::Vlpi { vcpu, vintid } = *r {
                    if changed.contains(&vintid) && Some(key) != skip {
                        affected.push((key, vcpu, vintid));
                    }
                }
            }
        }
        if let [((device, event), vcpu, vintid)] = affected[..] {
            its.inv_event(device, event).map_err(RouteError::Its)?;
            d.stale.refreshed(vintid, vcpu);
            return Ok(());
        }
        let vcpus: BTreeSet<usize> = affected.iter().map(|&(_, v, _)| v).collect();
        for vcpu in vcpus {
            let vpe = *d.vpes.get(vcpu).ok_or(RouteError::NoVpe(vcpu))?;
            its.inv_vpe(vpe).map_err(RouteError::Its)?;
            d.stale.refreshed_all(vcpu);
        }
        Ok(())
    }

    /// Makes the virtual LPI of directly delivered `event` of `device`
    /// pending (INT) or not (CLEAR), as the guest's INT and CLEAR ask.
    pub fn set_pending<P: PhysicalMsi>(
        &mut self,
        its: &mut P,
        vm: usize,
        device: DeviceId,
        event: EventId,
        pending: bool,
    ) -> Result<(), RouteError<P::Error>> {
        self.check(vm, device, event)?;
        match self.routes.get(&(device, event)) {
            Some(Routed::Vlpi { .. }) => its
                .set_pending(device, event, pending)
                .map_err(RouteError::Its),
            Some(Routed::Lpi { .. }) => Err(RouteError::WrongDelivery),
            None => Err(RouteError::NotRouted(device, event)),
        }
    }

    /// Where the LPI with INTID `intid` comes from, if it is a route's.
    pub fn lookup(&self, intid: u32) -> Option<Source> {
        self.lpis.get(&intid).copied()
    }

    /// The physical LPI `event` of `device` is routed to, if it is.
    pub fn lpi_of(&self, device: DeviceId, event: EventId) -> Option<Lpi> {
        match self.routes.get(&(device, event)) {
            Some(Routed::Lpi { lpi, .. }) => Some(*lpi),
            _ => None,
        }
    }

    /// The vCPU and guest LPI directly delivered `event` of `device` is
    /// routed to, if it is.
    pub fn vlpi_of(&self, device: DeviceId, event: EventId) -> Option<(usize, u32)> {
        match self.routes.get(&(device, event)) {
            Some(Routed::Vlpi { vcpu, vintid }) => Some((*vcpu, *vintid)),
            _ => None,
        }
    }

    /// The devices granted to VM `vm`.
    pub fn devices_of(&self, vm: usize) -> impl Iterator<Item = (DeviceId, u32)> + '_ {
        self.grants
            .iter()
            .filter(move |(_, g)| g.vm == vm)
            .map(|(&d, g)| (d, g.events))
    }

    /// Routed events.
    pub fn routes(&self) -> usize {
        self.routes.len()
    }

    /// Whether the devices granted to VM `vm` translate their MSIs, as its
    /// guest's GITS_CTLR.Enabled says: off, each is suspended, its MSIs
    /// dropped while its routes and the pending state of their LPIs stay;
    /// on, each is resumed with every route it had. Every device is tried;
    /// the first refusal is the error.
    pub fn set_translating<P: PhysicalMsi>(
        &mut self,
        its: &mut P,
        vm: usize,
        on: bool,
    ) -> Result<(), RouteError<P::Error>> {
        let mut first_error = None;
        for (device, _) in self.devices_of(vm) {
            let done = if on {
                its.resume_device(device)
            } else {
                its.suspend_device(device)
            };
            if let Err(e) = done {
                first_error.get_or_insert(RouteError::Its(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Takes everything of VM `vm` back (it stopped; its devices no longer
    /// master the bus): each routed event is unmapped, then each granted
    /// device, and the grants and the VM's vPEs are dropped, so nothing of
    /// the VM can be routed again. Returns what the ITS refused, for the
    /// caller to report; the router forgets those routes anyway.
    pub fn release<P: PhysicalMsi>(
        &mut self,
        its: &mut P,
        vm: usize,
    ) -> Vec<(DeviceId, Option<EventId>, P::Error)> {
        let mut failed = Vec::new();
        let devices: Vec<DeviceId> = self.devices_of(vm).map(|(d, _)| d).collect();
        for device in devices {
            let events: Vec<(EventId, Routed)> = self
                .routes
                .range((device, EventId(0))..=(device, EventId(u32::MAX)))
                .map(|(&(_, e), &r)| (e, r))
                .collect();
            for (event, r) in events {
                if let Err(e) = its.unmap_event(device, event) {
                    failed.push((device, Some(event), e));
                }
                self.forget((device, event), r);
            }
            if let Err(e) = its.unmap_device(device) {
                failed.push((device, None, e));
            }
            self.grants.remove(&device);
        }
        self.direct.remove(&vm);
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use std::collections::BTreeSet;

    /// What the fake ITS was asked, in order.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Op {
        Map(u32, u32, usize),
        Move(u32, u32, usize),
        Unmap(u32, u32),
        UnmapDevice(u32),
        /// VMAPTI (device, event, vPE, vINTID), INV too if true.
        MapV(u32, u32, u16, u32, bool),
        /// VMOVI (device, event, vPE), INV too if true.
        MoveV(u32, u32, u16, bool),
        /// INV of (device, event).
        Inv(u32, u32),
        /// VINVALL of a vPE.
        Vinvall(u16),
        /// INT (true) or CLEAR of (device, event).
        Pending(u32, u32, bool),
        /// MAPD with V = 0, the events kept.
        Suspend(u32),
        /// MAPD with V = 1 and every event mapped again, with INV.
        Resume(u32),
    }

    /// An ITS that hands out LPIs from 8192 up, refuses CPUs above
    /// `cpus`, and records every operation. Its virtual side models what
    /// matters for the configuration table: each vPE's redistributor
    /// caches a vINTID's byte whenever an event maps the vINTID to it
    /// (unless it has one), and reads it again at an INV through such an
    /// event or a VINVALL.
    #[derive(Default)]
    struct FakeIts {
        ops: Vec<Op>,
        next: u32,
        cpus: usize,
        mapped: BTreeSet<(u32, u32)>,
        /// Virtual mappings: (device, event) to (vPE, vINTID).
        vmapped: BTreeMap<(u32, u32), (u16, u32)>,
        /// The configuration table (absent: [`vlpi::DISABLED`]).
        table: BTreeMap<u32, u8>,
        /// What each vPE's redistributor cached: (vPE, vINTID) to byte.
        cache: BTreeMap<(u16, u32), u8>,
        /// ITS commands issued, syncs included.
        commands: usize,
        /// Devices whose MSIs are not translated (MAPD with V = 0).
        suspended: BTreeSet<u32>,
    }

    impl FakeIts {
        fn new(cpus: usize) -> Self {
            Self {
                cpus,
                next: 8192,
                ..Self::default()
            }
        }
    }

    impl FakeIts {
        fn byte(&self, vintid: u32) -> u8 {
            self.table.get(&vintid).copied().unwrap_or(vlpi::DISABLED)
        }

        /// An event now maps `vintid` to `vpe`: its redistributor reads
        /// the byte again with `inv`, else may cache the current one.
        fn arrive(&mut self, vpe: u16, vintid: u32, inv: bool) {
            let byte = self.byte(vintid);
            if inv {
                self.cache.insert((vpe, vintid), byte);
            } else {
                self.cache.entry((vpe, vintid)).or_insert(byte);
            }
        }

        /// Where an MSI of event `e` of device `d` goes now: the vPE and
        /// vINTID it is translated to; None if it is dropped.
        fn msi(&self, d: DeviceId, e: EventId) -> Option<(u16, u32)> {
            if self.suspended.contains(&d.0) {
                return None;
            }
            self.vmapped.get(&(d.0, e.0)).copied()
        }

        /// Fails for a suspended device, as the driver does.
        fn live(&self, d: DeviceId) -> Result<(), String> {
            if self.suspended.contains(&d.0) {
                return Err(alloc::format!("{d} is suspended"));
            }
            Ok(())
        }

        /// Whether every mapped virtual LPI's redistributor uses the
        /// table's byte; names the first that does not. (Those of a
        /// suspended device translate nothing; resuming invalidates
        /// them.)
        fn coherent(&self) -> Result<(), String> {
            for (&(d, e), &(vpe, vintid)) in &self.vmapped {
                if self.suspended.contains(&d) {
                    continue;
                }
                let used = self.cache.get(&(vpe, vintid)).copied();
                if used.is_some_and(|b| b != self.byte(vintid)) {
                    return Err(alloc::format!(
                        "event {e} of {d:#x}: vPE {vpe} uses {used:#x?} for vINTID {vintid}, \
                         the table says {:#x}",
                        self.byte(vintid)
                    ));
                }
            }
            Ok(())
        }
    }

    impl PhysicalMsi for FakeIts {
        type Error = String;
        fn map_event(&mut self, d: DeviceId, e: EventId, cpu: usize) -> Result<Lpi, String> {
            self.live(d)?;
            if cpu >= self.cpus {
                return Err(alloc::format!("no collection for CPU {cpu}"));
            }
            assert!(self.mapped.insert((d.0, e.0)), "mapped twice");
            self.ops.push(Op::Map(d.0, e.0, cpu));
            self.next += 1;
            Ok(Lpi::new(self.next - 1).unwrap())
        }
        fn move_event(&mut self, d: DeviceId, e: EventId, cpu: usize) -> Result<(), String> {
            self.live(d)?;
            assert!(self.mapped.contains(&(d.0, e.0)), "moved unmapped");
            self.ops.push(Op::Move(d.0, e.0, cpu));
            Ok(())
        }
        fn unmap_event(&mut self, d: DeviceId, e: EventId) -> Result<(), String> {
            assert!(
                self.mapped.remove(&(d.0, e.0)) || self.vmapped.remove(&(d.0, e.0)).is_some(),
                "unmapped unmapped"
            );
            if !self.suspended.contains(&d.0) {
                self.commands += 2;
            }
            self.ops.push(Op::Unmap(d.0, e.0));
            Ok(())
        }
        fn unmap_device(&mut self, d: DeviceId) -> Result<(), String> {
            self.mapped.retain(|&(dev, _)| dev != d.0);
            self.vmapped.retain(|&(dev, _), _| dev != d.0);
            self.suspended.remove(&d.0);
            self.ops.push(Op::UnmapDevice(d.0));
            Ok(())
        }
        fn map_vlpi(
            &mut self,
            d: DeviceId,
            e: EventId,
            vpe: VpeId,
            vintid: u32,
            inv: bool,
        ) -> Result<(), String> {
            self.live(d)?;
            assert!(
                !self.mapped.contains(&(d.0, e.0)) && !self.vmapped.contains_key(&(d.0, e.0)),
                "mapped twice"
            );
            self.vmapped.insert((d.0, e.0), (vpe.0, vintid));
            self.arrive(vpe.0, vintid, inv);
            self.commands += 2 + usize::from(inv);
            self.ops.push(Op::MapV(d.0, e.0, vpe.0, vintid, inv));
            Ok(())
        }
        fn move_vlpi(
            &mut self,
            d: DeviceId,
            e: EventId,
            vpe: VpeId,
            inv: bool,
        ) -> Result<(), String> {
            self.live(d)?;
            let m = self.vmapped.get_mut(&(d.0, e.0)).expect("moved unmapped");
            m.0 = vpe.0;
            let vintid = m.1;
            self.arrive(vpe.0, vintid, inv);
            self.commands += 2 + usize::from(inv);
            self.ops.push(Op::MoveV(d.0, e.0, vpe.0, inv));
            Ok(())
        }
        fn set_vlpi_config(&mut self, _: VlpiTable, vintid: u32, byte: u8) -> Result<u8, String> {
            Ok(self.table.insert(vintid, byte).unwrap_or(vlpi::DISABLED))
        }
        fn inv_event(&mut self, d: DeviceId, e: EventId) -> Result<(), String> {
            let &(vpe, vintid) = self.vmapped.get(&(d.0, e.0)).expect("INV of unmapped");
            if self.suspended.contains(&d.0) {
                return Ok(());
            }
            let byte = self.byte(vintid);
            self.cache.insert((vpe, vintid), byte);
            self.commands += 2;
            self.ops.push(Op::Inv(d.0, e.0));
            Ok(())
        }
        fn inv_vpe(&mut self, vpe: VpeId) -> Result<(), String> {
            self.cache.retain(|&(v, _), _| v != vpe.0);
            self.commands += 2;
            self.ops.push(Op::Vinvall(vpe.0));
            Ok(())
        }
        fn set_pending(&mut self, d: DeviceId, e: EventId, pending: bool) -> Result<(), String> {
            self.live(d)?;
            assert!(self.vmapped.contains_key(&(d.0, e.0)), "INT of unmapped");
            self.commands += 2;
            self.ops.push(Op::Pending(d.0, e.0, pending));
            Ok(())
        }
        fn suspend_device(&mut self, d: DeviceId) -> Result<(), String> {
            if self.suspended.insert(d.0) {
                self.commands += 1;
                self.ops.push(Op::Suspend(d.0));
            }
            Ok(())
        }
        fn resume_device(&mut self, d: DeviceId) -> Result<(), String> {
            if !self.suspended.remove(&d.0) {
                return Ok(());
            }
            let of_device: Vec<(u16, u32)> = self
                .vmapped
                .iter()
                .filter(|(&(dev, _), _)| dev == d.0)
                .map(|(_, &v)| v)
                .collect();
            for &(vpe, vintid) in &of_device {
                self.arrive(vpe, vintid, true);
            }
            self.commands += 1 + 2 * of_device.len() + 1;
            self.ops.push(Op::Resume(d.0));
            Ok(())
        }
    }

    const EDU: DeviceId = DeviceId(0x10);
    const NVME: DeviceId = DeviceId(0x18);

    fn router() -> MsiRouter {
        let mut r = MsiRouter::new();
        assert!(r.grant(0, EDU, 1));
        assert!(r.grant(1, NVME, 65));
        assert!(!r.grant(0, NVME, 1), "one device, one VM");
        r
    }

    #[test]
    fn grants_follow_the_capabilities_and_msi_map() {
        let bdf = Bdf {
            bus: 0,
            dev: 2,
            func: 0,
        };
        assert_eq!(grant(bdf, None, Some(0x10)), Ok(None), "INTx only");
        assert_eq!(grant(bdf, None, None), Ok(None));
        assert_eq!(
            grant(
                bdf,
                Some(MessageSignalled {
                    msix: None,
                    msi: Some(1)
                }),
                Some(0x10)
            ),
            Ok(Some(DeviceGrant {
                physical: 0x10,
                events: 1
            }))
        );
        assert_eq!(
            grant(
                bdf,
                Some(MessageSignalled {
                    msix: Some(2048),
                    msi: None
                }),
                Some(0x10010)
            ),
            Ok(Some(DeviceGrant {
                physical: 0x10010,
                events: 2048
            }))
        );
        assert_eq!(
            grant(
                bdf,
                Some(MessageSignalled {
                    msix: Some(64),
                    msi: None
                }),
                None
            ),
            Err(GrantError::NoDeviceId(bdf))
        );
        assert_eq!(
            grant(
                bdf,
                Some(MessageSignalled {
                    msix: Some(4096),
                    msi: None
                }),
                Some(0x10)
            ),
            Err(GrantError::TooManyEvents(bdf, 4096))
        );
    }

    #[test]
    fn map_then_move_then_unmap_and_the_lpi_names_its_source() {
        let mut r = router();
        let mut its = FakeIts::new(4);
        r.route(&mut its, 0, EDU, EventId(0), Some(1)).unwrap();
        let source = Source {
            vm: 0,
            device: EDU,
            event: EventId(0),
        };
        assert_eq!(r.lookup(8192), Some(source));
        assert_eq!(r.lpi_of(EDU, EventId(0)).map(Lpi::intid), Some(8192));
        // The same CPU again is nothing; another CPU is a move.
        r.route(&mut its, 0, EDU, EventId(0), Some(1)).unwrap();
        r.route(&mut its, 0, EDU, EventId(0), Some(3)).unwrap();
        assert_eq!(r.lookup(8192), Some(source), "a move keeps the LPI");
        r.route(&mut its, 0, EDU, EventId(0), None).unwrap();
        assert_eq!(r.lookup(8192), None);
        r.route(&mut its, 0, EDU, EventId(0), None).unwrap();
        assert_eq!(
            its.ops,
            [
                Op::Map(0x10, 0, 1),
                Op::Move(0x10, 0, 3),
                Op::Unmap(0x10, 0)
            ]
        );
        assert_eq!(r.routes(), 0);
    }

    #[test]
    fn only_the_owner_routes_and_only_granted_events() {
        let mut r = router();
        let mut its = FakeIts::new(4);
        assert_eq!(
            r.route(&mut its, 1, EDU, EventId(0), Some(0)),
            Err(RouteError::NotGranted(EDU)),
            "VM 1 does not own the edu"
        );
        assert_eq!(
            r.route(&mut its, 0, DeviceId(0x20), EventId(0), Some(0)),
            Err(RouteError::NotGranted(DeviceId(0x20)))
        );
        assert_eq!(
            r.route(&mut its, 1, NVME, EventId(65), Some(0)),
            Err(RouteError::EventOutOfRange(NVME, EventId(65)))
        );
        assert_eq!(
            r.route(&mut its, 0, EDU, EventId(0), None),
            Ok(()),
            "an event never routed is left alone"
        );
        assert!(its.ops.is_empty(), "nothing reached the ITS");
        let e = r
            .route(&mut its, 1, NVME, EventId(64), Some(9))
            .unwrap_err();
        assert_eq!(e, RouteError::Its("no collection for CPU 9".into()));
        assert_eq!(e.as_str(), "the physical ITS refused");
        assert_eq!(r.routes(), 0, "a refused map is not remembered");
    }

    #[test]
    fn release_unmaps_one_vm_and_drops_its_grants() {
        let mut r = router();
        let mut its = FakeIts::new(2);
        for e in 0..3 {
            r.route(&mut its, 1, NVME, EventId(e), Some(e as usize % 2))
                .unwrap();
        }
        r.route(&mut its, 0, EDU, EventId(0), Some(0)).unwrap();
        its.ops.clear();
        assert!(r.release(&mut its, 1).is_empty());
        assert_eq!(
            its.ops,
            [
                Op::Unmap(0x18, 0),
                Op::Unmap(0x18, 1),
                Op::Unmap(0x18, 2),
                Op::UnmapDevice(0x18)
            ]
        );
        assert_eq!(r.routes(), 1, "VM 0's route stays");
        assert!(r.lookup(8193).is_none());
        assert_eq!(r.lookup(8195).map(|s| s.vm), Some(0));
        assert_eq!(
            r.route(&mut its, 1, NVME, EventId(0), Some(0)),
            Err(RouteError::NotGranted(NVME)),
            "a stopped VM routes nothing more"
        );
        assert_eq!(r.devices_of(0).collect::<Vec<_>>(), vec![(EDU, 1)]);
    }

    #[test]
    fn routes_never_outnumber_the_granted_events() {
        let mut r = router();
        let mut its = FakeIts::new(1);
        for vm in 0..2 {
            for device in [EDU, NVME] {
                for event in 0..100 {
                    let _ = r.route(&mut its, vm, device, EventId(event), Some(0));
                }
            }
        }
        assert_eq!(r.routes(), 1 + 65);
    }

    const ON: LpiConfig = LpiConfig(0xa1);
    const OFF: LpiConfig = LpiConfig(0xa0);

    /// The router of [`router`], with VM 1 (the NVMe's) delivered directly
    /// to vPEs 10, 11 and 12.
    fn direct_router() -> MsiRouter {
        let mut r = router();
        r.deliver_directly(1, VlpiTable(0), vec![VpeId(10), VpeId(11), VpeId(12)])
            .unwrap();
        r
    }

    fn vlpi(vcpu: usize, intid: u32, config: LpiConfig) -> Option<EventLpi> {
        Some(EventLpi {
            vcpu,
            intid,
            config,
        })
    }

    #[test]
    fn a_linux_guests_event_costs_one_command_and_a_sync_each_step() {
        let mut r = direct_router();
        let mut its = FakeIts::new(4);
        assert_eq!(r.delivery(1), Delivery::Direct);
        assert_eq!(r.delivery(0), Delivery::ListRegisters);
        // MAPTI of a disabled LPI: no byte changes, VMAPTI alone.
        r.route_vlpi(&mut its, 1, NVME, EventId(3), vlpi(0, 8195, OFF))
            .unwrap();
        assert_eq!(its.ops, [Op::MapV(0x18, 3, 10, 8195, false)]);
        assert_eq!(r.vlpi_of(NVME, EventId(3)), Some((0, 8195)));
        assert_eq!(r.lookup(8195), None, "no physical LPI to take");
        // INV after enabling it: the byte and an INV through the event.
        its.ops.clear();
        r.configure(&mut its, 1, &[(8195, ON)]).unwrap();
        assert_eq!(its.ops, [Op::Inv(0x18, 3)]);
        assert_eq!(its.byte(8195), 0xa3);
        // The same again changes nothing.
        its.ops.clear();
        r.configure(&mut its, 1, &[(8195, ON)]).unwrap();
        r.route_vlpi(&mut its, 1, NVME, EventId(3), vlpi(0, 8195, ON))
            .unwrap();
        assert!(its.ops.is_empty(), "{:?}", its.ops);
        // MOVI to vCPU 2, whose redistributor never read the new byte (it
        // may have cached the old one): VMOVI and INV; back to vCPU 0,
        // which did: VMOVI alone.
        r.route_vlpi(&mut its, 1, NVME, EventId(3), vlpi(2, 8195, ON))
            .unwrap();
        r.route_vlpi(&mut its, 1, NVME, EventId(3), vlpi(0, 8195, ON))
            .unwrap();
        assert_eq!(
            its.ops,
            [Op::MoveV(0x18, 3, 12, true), Op::MoveV(0x18, 3, 10, false)]
        );
        its.coherent().unwrap();
        // DISCARD.
        its.ops.clear();
        r.route_vlpi(&mut its, 1, NVME, EventId(3), None).unwrap();
        assert_eq!(its.ops, [Op::Unmap(0x18, 3)]);
        assert_eq!(r.routes(), 0);
    }

    #[test]
    fn an_lpi_enabled_before_its_mapti_is_invalidated_with_it() {
        let mut r = direct_router();
        let mut its = FakeIts::new(4);
        r.route_vlpi(&mut its, 1, NVME, EventId(0), vlpi(1, 9000, ON))
            .unwrap();
        assert_eq!(its.ops, [Op::MapV(0x18, 0, 11, 9000, true)]);
        // Another INTID for the event: DISCARD, then a new VMAPTI.
        its.ops.clear();
        r.route_vlpi(&mut its, 1, NVME, EventId(0), vlpi(1, 9001, OFF))
            .unwrap();
        assert_eq!(
            its.ops,
            [Op::Unmap(0x18, 0), Op::MapV(0x18, 0, 11, 9001, false)]
        );
        its.coherent().unwrap();
    }

    #[test]
    fn one_lpi_on_two_vcpus_is_invalidated_on_both() {
        let mut r = direct_router();
        let mut its = FakeIts::new(4);
        r.route_vlpi(&mut its, 1, NVME, EventId(0), vlpi(0, 8192, OFF))
            .unwrap();
        r.route_vlpi(&mut its, 1, NVME, EventId(1), vlpi(2, 8192, OFF))
            .unwrap();
        r.route_vlpi(&mut its, 1, NVME, EventId(2), vlpi(2, 8193, OFF))
            .unwrap();
        its.ops.clear();
        // INVALL (or the vCPUs' LPIs turned on): one VINVALL per vCPU whose
        // events raise a changed LPI.
        r.configure(&mut its, 1, &[(8192, ON), (8193, OFF), (8194, ON)])
            .unwrap();
        assert_eq!(its.ops, [Op::Vinvall(10), Op::Vinvall(12)]);
        its.coherent().unwrap();
    }

    #[test]
    fn direct_routes_keep_to_the_grants_and_the_vpes() {
        let mut r = direct_router();
        let mut its = FakeIts::new(4);
        assert_eq!(
            r.route_vlpi(&mut its, 0, NVME, EventId(0), vlpi(0, 8192, ON)),
            Err(RouteError::NotGranted(NVME))
        );
        assert_eq!(
            r.route_vlpi(&mut its, 1, NVME, EventId(65), vlpi(0, 8192, ON)),
            Err(RouteError::EventOutOfRange(NVME, EventId(65)))
        );
        assert_eq!(
            r.route_vlpi(&mut its, 1, NVME, EventId(0), vlpi(3, 8192, ON)),
            Err(RouteError::NoVpe(3))
        );
        assert_eq!(
            r.route(&mut its, 1, NVME, EventId(0), Some(0)),
            Err(RouteError::WrongDelivery),
            "a directly delivered VM has no physical LPIs"
        );
        assert_eq!(
            r.route_vlpi(&mut its, 0, EDU, EventId(0), vlpi(0, 8192, ON)),
            Err(RouteError::WrongDelivery),
            "VM 0 has no vPEs"
        );
        assert_eq!(
            r.set_pending(&mut its, 1, NVME, EventId(4), true),
            Err(RouteError::NotRouted(NVME, EventId(4)))
        );
        assert_eq!(
            r.configure(&mut its, 0, &[(8192, ON)]),
            Err(RouteError::WrongDelivery)
        );
        assert!(its.ops.is_empty(), "nothing reached the ITS: {:?}", its.ops);
        r.route_vlpi(&mut its, 1, NVME, EventId(4), vlpi(1, 8200, ON))
            .unwrap();
        r.set_pending(&mut its, 1, NVME, EventId(4), true).unwrap();
        r.set_pending(&mut its, 1, NVME, EventId(4), false).unwrap();
        assert_eq!(
            its.ops[1..],
            [Op::Pending(0x18, 4, true), Op::Pending(0x18, 4, false)]
        );
    }

    /// The guest disables its ITS: its devices' MSIs are dropped where
    /// they are translated, their routes kept; a configuration written
    /// meanwhile is applied when they are translated again.
    #[test]
    fn a_vm_that_stops_translating_drops_its_msis_and_resumes_its_routes() {
        let mut r = direct_router();
        let mut its = FakeIts::new(4);
        r.route_vlpi(&mut its, 1, NVME, EventId(0), vlpi(1, 8192, ON))
            .unwrap();
        r.route_vlpi(&mut its, 1, NVME, EventId(1), vlpi(2, 8193, ON))
            .unwrap();
        assert_eq!(its.msi(NVME, EventId(0)), Some((11, 8192)));
        its.ops.clear();
        r.set_translating(&mut its, 1, false).unwrap();
        assert_eq!(its.ops, [Op::Suspend(0x18)], "VM 0's device untouched");
        assert_eq!(its.msi(NVME, EventId(0)), None);
        assert_eq!(its.msi(NVME, EventId(1)), None);
        assert_eq!(r.routes(), 2, "the routes stay");
        // Meanwhile: a configuration change reaches the table (the INV
        // waits for the resume), a new route is refused, and suspending
        // again does nothing.
        r.configure(&mut its, 1, &[(8192, OFF)]).unwrap();
        assert_eq!(its.byte(8192), table_byte(OFF));
        assert!(matches!(
            r.route_vlpi(&mut its, 1, NVME, EventId(2), vlpi(0, 8194, ON)),
            Err(RouteError::Its(_))
        ));
        r.set_translating(&mut its, 1, false).unwrap();
        assert_eq!(its.ops, [Op::Suspend(0x18)]);
        r.set_translating(&mut its, 1, true).unwrap();
        assert_eq!(its.ops, [Op::Suspend(0x18), Op::Resume(0x18)]);
        assert_eq!(its.msi(NVME, EventId(0)), Some((11, 8192)));
        assert_eq!(its.msi(NVME, EventId(1)), Some((12, 8193)));
        its.coherent().unwrap();
        // Released while suspended: unmapped all the same.
        r.set_translating(&mut its, 1, false).unwrap();
        assert!(r.release(&mut its, 1).is_empty());
        assert_eq!(r.routes(), 0);
        assert!(its.vmapped.is_empty() && its.suspended.is_empty());
    }

    #[test]
    fn release_unmaps_virtual_routes_and_drops_the_vpes() {
        let mut r = direct_router();
        let mut its = FakeIts::new(4);
        r.route(&mut its, 0, EDU, EventId(0), Some(0)).unwrap();
        for e in 0..3 {
            r.route_vlpi(
                &mut its,
                1,
                NVME,
                EventId(e),
                vlpi(e as usize, 8192 + e, ON),
            )
            .unwrap();
        }
        its.ops.clear();
        assert!(r.release(&mut its, 1).is_empty());
        assert_eq!(
            its.ops,
            [
                Op::Unmap(0x18, 0),
                Op::Unmap(0x18, 1),
                Op::Unmap(0x18, 2),
                Op::UnmapDevice(0x18)
            ]
        );
        assert_eq!(r.delivery(1), Delivery::ListRegisters);
        assert_eq!(r.routes(), 1, "VM 0's physical route stays");
        assert!(its.vmapped.is_empty());
    }

    /// One step of a guest's vITS, as the router sees it.
    #[derive(Clone, Debug)]
    enum Step {
        Route {
            event: u32,
            to: Option<(usize, u32, bool)>,
        },
        Configure(Vec<(u32, bool)>),
    }

    fn step() -> impl Strategy<Value = Step> {
        let intid = 8192u32..8196;
        prop_oneof![
            (
                0u32..6,
                proptest::option::of((0usize..3, intid.clone(), any::<bool>()))
            )
                .prop_map(|(event, to)| Step::Route { event, to }),
            proptest::collection::vec((intid, any::<bool>()), 1..4).prop_map(Step::Configure),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever a guest maps, moves and reconfigures, every vPE's
        /// redistributor uses the configuration table's byte for each of
        /// its virtual LPIs once the router returns, and each step costs a
        /// bounded number of ITS commands.
        #[test]
        fn redistributors_never_use_a_stale_configuration(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            let mut r = direct_router();
            let mut its = FakeIts::new(4);
            for s in steps {
                let before = its.commands;
                match s {
                    Step::Route { event, to } => {
                        let to = to.and_then(|(v, i, on)| vlpi(v, i, if on { ON } else { OFF }));
                        r.route_vlpi(&mut its, 1, NVME, EventId(event), to).unwrap();
                    }
                    Step::Configure(lpis) => {
                        let lpis: Vec<(u32, LpiConfig)> = lpis
                            .into_iter()
                            .map(|(i, on)| (i, if on { ON } else { OFF }))
                            .collect();
                        r.configure(&mut its, 1, &lpis).unwrap();
                    }
                }
                prop_assert!(its.coherent().is_ok(), "{:?}", its.coherent());
                // At most DISCARD and VMAPTI with INV, and an INV or a
                // VINVALL per vCPU for other events raising the same LPI;
                // each with its sync.
                let bound = 2 + 3 + 2 * 3;
                prop_assert!(its.commands - before <= bound, "{} commands", its.commands - before);
            }
        }
    }
}
