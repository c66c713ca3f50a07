//! The hypervisor's SMMU: brought up before any device may DMA, owner of
//! every stream, reporter of faults.
//!
//! Faults are decoded, attributed to the device (StreamID -> PCI address ->
//! owner) and rate-limited per stream, so a device that floods faults costs
//! a counter, not a log line each.

use crate::drivers::pci::{Bdf, Function};
use crate::drivers::smmu_mmio::SmmuMmio;
use crate::mm;
use crate::platform::Platform;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use log::{error, info, warn};
use smmu::addr::StreamId;
use smmu::domain::Iommu;
use smmu::driver::{Smmu, SmmuOptions};
use smmu::event::Event;
use spin::{Mutex, Once};

/// Printed fault reports per stream before the rest are only counted.
const REPORTS_PER_STREAM: u32 = 16;
/// Distinct faults remembered to report each one once (bounded memory).
const SEEN_MAX: usize = 256;
/// Events drained per batch, and batches per call: bounded work.
const DRAIN_BATCH: usize = 64;
const DRAIN_BATCHES: usize = 16;

/// A stream the hypervisor knows about.
#[derive(Clone, Debug)]
pub struct StreamInfo {
    /// The PCI function behind it.
    pub bdf: Bdf,
    /// Who owns it ("nobody" until assigned).
    pub owner: String,
    /// Faults seen: 64 bits, so that a device that faults continuously is
    /// counted right however long it runs (at the 40,000 faults a second
    /// an NVMe flood makes under QEMU, 32 bits would wrap in 30 hours).
    pub faults: u64,
    /// Faults reported.
    pub reported: u32,
}

/// State of DMA protection on this machine.
pub struct HostIommu {
    /// The SMMU and its domains.
    pub iommu: Iommu<'static, SmmuMmio>,
    streams: BTreeMap<StreamId, StreamInfo>,
    phandle: Option<u32>,
    /// Faults already reported: (StreamID, page, write, what for).
    seen: BTreeSet<(StreamId, u64, bool, u8)>,
    /// The event queue's wired interrupt.
    pub eventq_irq: Option<crate::platform::Irq>,
    /// The affinity (MPIDR) [`HostIommu::route_eventq`] last routed it to;
    /// None while it goes where boot routed it.
    eventq_route: Option<u64>,
    overflows_reported: u64,
}

static IOMMU: Once<Mutex<HostIommu>> = Once::new();

/// The SMMU, if DMA can be confined on this machine.
pub fn get() -> Option<&'static Mutex<HostIommu>> {
    IOMMU.get()
}

/// Whether device DMA can be confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Confinement {
    /// The SMMU is up: every stream aborts until assigned.
    Confined,
    /// No usable SMMU: no device may be assigned (the reason was logged).
    Refused,
}

/// Brings the SMMU up fail-closed; says in one line why when DMA cannot be
/// confined.
pub fn init(p: &Platform) -> Confinement {
    let Some(node) = &p.smmu else {
        error!("SMMU: none in the device tree: DMA cannot be confined, device assignment refused");
        return Confinement::Refused;
    };
    // SAFETY: the register frame comes from the DTB and was mapped as a
    // device by boot::map_everything; nothing else programs the SMMU.
    let mmio = unsafe { SmmuMmio::new(node.regs.base, node.regs.size) };
    // Wired event-queue and global-error interrupts, when the DTB has them.
    let irqs = node.irqs.iter().any(|(n, _)| n == "eventq");
    let opts = SmmuOptions {
        irqs,
        ..SmmuOptions::default()
    };
    let smmu = match Smmu::new(mmio, &mm::SMMU_MEM, opts) {
        Ok(s) => s,
        Err(e) => {
            error!(
                "SMMU at {:#x}: {e}: DMA cannot be confined, device assignment refused",
                node.regs.base
            );
            return Confinement::Refused;
        }
    };
    info!("SMMU at {:#x}: {}", node.regs.base, smmu.features());
    let irqs: alloc::vec::Vec<String> = node
        .irqs
        .iter()
        .map(|(n, irq)| alloc::format!("{n}={}", irq.intid))
        .collect();
    info!(
        "SMMU: enabled, every stream aborts until assigned (GBPA abort, all STEs abort); irqs {}",
        irqs.join(" ")
    );
    let irq = |name: &str| node.irqs.iter().find(|(n, _)| n == name).map(|(_, i)| *i);
    IOMMU.call_once(|| {
        Mutex::new(HostIommu {
            iommu: Iommu::new(smmu),
            streams: BTreeMap::new(),
            phandle: node.phandle,
            seen: BTreeSet::new(),
            eventq_irq: irq("eventq"),
            eventq_route: None,
            overflows_reported: 0,
        })
    });
    Confinement::Confined
}

impl HostIommu {
    /// Records the streams of the enumerated PCI functions.
    pub fn register_pci(&mut self, p: &Platform, fns: &[Function]) {
        let Some(host) = &p.pci else { return };
        for f in fns {
            match host.stream_id(f.bdf.rid(), self.phandle) {
                Some(sid) => {
                    self.streams.insert(
                        StreamId(sid),
                        StreamInfo {
                            bdf: f.bdf,
                            owner: String::from("nobody"),
                            faults: 0,
                            reported: 0,
                        },
                    );
                }
                None => warn!(
                    "PCI {}: no StreamID in the iommu-map: its DMA is not translated",
                    f.bdf
                ),
            }
        }
    }

    /// The StreamID of a PCI function.
    pub fn stream_of(&self, bdf: Bdf) -> Option<StreamId> {
        self.streams
            .iter()
            .find(|(_, s)| s.bdf == bdf)
            .map(|(&sid, _)| sid)
    }

    /// Sets who owns a stream (for reports).
    pub fn set_owner(&mut self, sid: StreamId, owner: &str) {
        if let Some(s) = self.streams.get_mut(&sid) {
            s.owner = String::from(owner);
            s.faults = 0;
            s.reported = 0;
        }
    }

    /// Drains the event queue (bounded) and reports each fault, attributed
    /// and rate-limited. Returns the events seen.
    pub fn report_events(&mut self) -> alloc::vec::Vec<Event> {
        let seen = self.drain_events();
        self.report(&seen);
        seen
    }

    /// Takes the pending events off the queue (bounded), without reporting.
    pub fn drain_events(&mut self) -> alloc::vec::Vec<Event> {
        let mut seen = alloc::vec::Vec::new();
        for _ in 0..DRAIN_BATCHES {
            if self
                .iommu
                .smmu()
                .drain_events(DRAIN_BATCH, |e| seen.push(e))
                < DRAIN_BATCH
            {
                break;
            }
        }
        seen
    }

    /// Reports events: decoded, attributed, once per (stream, page,
    /// direction), rate-limited per stream.
    pub fn report(&mut self, seen: &[Event]) {
        for e in seen {
            // A device's burst of accesses to one page raises many events:
            // report each (stream, page, direction, class) once. The page
            // of a stage-2 fault is the IPA's (for a nested stream the
            // input address is the guest's IOVA), and a CD fetch, a table
            // walk and the access itself faulting there are told apart.
            let key = match e {
                Event::Fault { info, ipa, .. } => {
                    let page = if info.s2 {
                        ipa.0 >> 12
                    } else {
                        info.input_addr.raw() >> 12
                    };
                    (e.sid(), page, !info.access.rnw, info.class as u8)
                }
                _ => (e.sid(), u64::from(e.id()), false, 0xff),
            };
            let new = !self.seen.contains(&key);
            if new && self.seen.len() < SEEN_MAX {
                self.seen.insert(key);
            }
            match self.streams.get_mut(&e.sid()) {
                Some(info) => {
                    info.faults += 1;
                    if !new {
                        continue;
                    }
                    info.reported += 1;
                    if info.reported <= REPORTS_PER_STREAM {
                        warn!("SMMU event: {e} [PCI {} owner {}]", info.bdf, info.owner);
                    } else if info.reported == REPORTS_PER_STREAM + 1 {
                        warn!(
                            "SMMU: PCI {} (owner {}) keeps faulting: further faults only counted",
                            info.bdf, info.owner
                        );
                    }
                }
                None if new => warn!("SMMU event: {e} [no known device]"),
                None => {}
            }
        }
        let overflows = self.iommu.smmu_ref().event_overflows();
        if overflows > self.overflows_reported {
            self.overflows_reported = overflows;
            warn!(
                "SMMU: event queue overflowed ({overflows} in all): some faults were not recorded"
            );
        }
    }

    /// Routes the event queue's interrupt to the CPU with affinity
    /// `mpidr`, unless it goes there already.
    pub fn route_eventq(&mut self, mpidr: u64) {
        let Some(irq) = self.eventq_irq else { return };
        if self.eventq_route != Some(mpidr) {
            self.eventq_route = Some(mpidr);
            crate::drivers::gic::route_spi(irq.intid, mpidr);
        }
    }

    /// Faults counted for `sid` since it was last given an owner.
    pub fn faults_of(&self, sid: StreamId) -> u64 {
        self.streams.get(&sid).map_or(0, |s| s.faults)
    }
}
