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
//! Bounded by construction: only granted devices are routed, each event
//! below its grant, so the router never holds more routes (and LPIs) than
//! the grants' events.

use crate::drivers::pci::{Bdf, MessageSignalled};
use crate::gicv3::its::cmd::{DeviceId, EventId};
use crate::gicv3::lpi::Lpi;
use crate::vdev::vits::{DeviceGrant, EVENT_ID_BITS};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

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
}

/// Why a route was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError<E> {
    /// The device is not granted to the VM that asked.
    NotGranted(DeviceId),
    /// The event is beyond the device's grant.
    EventOutOfRange(DeviceId, EventId),
    /// The physical ITS failed.
    Its(E),
}

impl<E> RouteError<E> {
    /// What the vITS hears (`Machine::route_msi`'s error).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotGranted(_) => "the device is not granted to this VM",
            Self::EventOutOfRange(..) => "the event is beyond the device's grant",
            Self::Its(_) => "the physical ITS refused",
        }
    }
}

impl<E: fmt::Display> fmt::Display for RouteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotGranted(d) => write!(f, "{d} is not granted to this VM"),
            Self::EventOutOfRange(d, e) => write!(f, "{e} is beyond the grant of {d}"),
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

/// A routed event: its LPI and the physical CPU it is delivered to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Routed {
    lpi: Lpi,
    cpu: usize,
}

/// Every grant and every routed event of the machine.
#[derive(Debug, Default)]
pub struct MsiRouter {
    grants: BTreeMap<DeviceId, Granted>,
    routes: BTreeMap<(DeviceId, EventId), Routed>,
    /// Routed LPIs by INTID.
    lpis: BTreeMap<u32, Source>,
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

    /// Routes `event` of `device`, which VM `vm` must have been granted, to
    /// physical CPU `to` (mapping it, or moving it if it is routed
    /// already), or stops routing it (`None`: unmapped and forgotten; an
    /// event that is not routed is left alone).
    pub fn route<P: PhysicalMsi>(
        &mut self,
        its: &mut P,
        vm: usize,
        device: DeviceId,
        event: EventId,
        to: Option<usize>,
    ) -> Result<(), RouteError<P::Error>> {
        let granted = self
            .grants
            .get(&device)
            .filter(|g| g.vm == vm)
            .ok_or(RouteError::NotGranted(device))?;
        if event.0 >= granted.events {
            return Err(RouteError::EventOutOfRange(device, event));
        }
        let key = (device, event);
        match (to, self.routes.get(&key).copied()) {
            (None, None) => Ok(()),
            (None, Some(r)) => {
                its.unmap_event(device, event).map_err(RouteError::Its)?;
                self.routes.remove(&key);
                self.lpis.remove(&r.lpi.intid());
                Ok(())
            }
            (Some(cpu), Some(r)) if r.cpu == cpu => Ok(()),
            (Some(cpu), Some(r)) => {
                its.move_event(device, event, cpu)
                    .map_err(RouteError::Its)?;
                self.routes.insert(key, Routed { cpu, ..r });
                Ok(())
            }
            (Some(cpu), None) => {
                let lpi = its.map_event(device, event, cpu).map_err(RouteError::Its)?;
                self.routes.insert(key, Routed { lpi, cpu });
                self.lpis.insert(lpi.intid(), Source { vm, device, event });
                Ok(())
            }
        }
    }

    /// Where the LPI with INTID `intid` comes from, if it is a route's.
    pub fn lookup(&self, intid: u32) -> Option<Source> {
        self.lpis.get(&intid).copied()
    }

    /// The LPI `event` of `device` is routed to, if it is.
    pub fn lpi_of(&self, device: DeviceId, event: EventId) -> Option<Lpi> {
        self.routes.get(&(device, event)).map(|r| r.lpi)
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

    /// Takes everything of VM `vm` back (it stopped; its devices no longer
    /// master the bus): each routed event is unmapped, then each granted
    /// device, and the grants are dropped, so nothing of the VM can be
    /// routed again. Returns what the ITS refused, for the caller to
    /// report; the router forgets those routes anyway.
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
                self.routes.remove(&(device, event));
                self.lpis.remove(&r.lpi.intid());
            }
            if let Err(e) = its.unmap_device(device) {
                failed.push((device, None, e));
            }
            self.grants.remove(&device);
        }
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
    }

    /// An ITS that hands out LPIs from 8192 up, refuses CPUs above
    /// `cpus`, and records every operation.
    #[derive(Default)]
    struct FakeIts {
        ops: Vec<Op>,
        next: u32,
        cpus: usize,
        mapped: BTreeSet<(u32, u32)>,
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

    impl PhysicalMsi for FakeIts {
        type Error = String;
        fn map_event(&mut self, d: DeviceId, e: EventId, cpu: usize) -> Result<Lpi, String> {
            if cpu >= self.cpus {
                return Err(alloc::format!("no collection for CPU {cpu}"));
            }
            assert!(self.mapped.insert((d.0, e.0)), "mapped twice");
            self.ops.push(Op::Map(d.0, e.0, cpu));
            self.next += 1;
            Ok(Lpi::new(self.next - 1).unwrap())
        }
        fn move_event(&mut self, d: DeviceId, e: EventId, cpu: usize) -> Result<(), String> {
            assert!(self.mapped.contains(&(d.0, e.0)), "moved unmapped");
            self.ops.push(Op::Move(d.0, e.0, cpu));
            Ok(())
        }
        fn unmap_event(&mut self, d: DeviceId, e: EventId) -> Result<(), String> {
            assert!(self.mapped.remove(&(d.0, e.0)), "unmapped unmapped");
            self.ops.push(Op::Unmap(d.0, e.0));
            Ok(())
        }
        fn unmap_device(&mut self, d: DeviceId) -> Result<(), String> {
            self.mapped.retain(|&(dev, _)| dev != d.0);
            self.ops.push(Op::UnmapDevice(d.0));
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
}
