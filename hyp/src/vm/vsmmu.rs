//! A VM's virtual SMMUv3, wired to the physical one.
//!
//! The vSMMU itself, its command loop, STE installs and event injection
//! included, is `smmu::vsmmu::VsmmuEngine` (the code the fuzzer and the
//! host tests run too). This module gives it the VM's memory and the
//! physical side: [`HostSmmu`] carries out its requests with the
//! hypervisor's IOMMU, on the VM's domain.

use super::ram::GuestRam;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use smmu::addr::{StreamId, Vmid};
use smmu::cmd::Command;
use smmu::domain::{DomainError, DomainId};
use smmu::event::Event;
use smmu::regs::StallModel as IdrStallModel;
use smmu::ste::{S1Config, S2Config, StallModel};
use smmu::vsmmu::{GuestIrq, PhysicalSmmu, VsmmuEngine, VsmmuPolicy, VsmmuStats};

/// Why the physical side of a vSMMU request failed.
#[derive(Debug)]
pub enum HostSmmuError {
    /// The machine has no usable SMMU (cannot happen once a vSMMU exists).
    NoSmmu,
    /// The IOMMU refused or failed the operation.
    Domain(DomainError),
}

impl fmt::Display for HostSmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostSmmuError::NoSmmu => write!(f, "no SMMU"),
            HostSmmuError::Domain(e) => write!(f, "{e}"),
        }
    }
}

impl From<DomainError> for HostSmmuError {
    fn from(e: DomainError) -> Self {
        Self::Domain(e)
    }
}

impl From<smmu::driver::SmmuError> for HostSmmuError {
    fn from(e: smmu::driver::SmmuError) -> Self {
        Self::Domain(e.into())
    }
}

/// The physical SMMU for one VM's vSMMU: the hypervisor's IOMMU, on the
/// VM's domain. Each request takes the IOMMU's lock for itself only.
#[derive(Debug)]
pub struct HostSmmu {
    domain: DomainId,
    /// The physical stall model, read at the first request.
    stall: Option<StallModel>,
}

impl HostSmmu {
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut smmu::domain::Iommu<'static, crate::drivers::smmu_mmio::SmmuMmio>) -> T,
    ) -> Result<T, HostSmmuError> {
        let h = crate::drivers::iommu::get().ok_or(HostSmmuError::NoSmmu)?;
        Ok(f(&mut h.lock().iommu))
    }
}

impl PhysicalSmmu for HostSmmu {
    type Error = HostSmmuError;

    fn stall_model(&mut self) -> StallModel {
        if let Some(stall) = self.stall {
            return stall;
        }
        let idr = self
            .with(|i| i.smmu_ref().features().stall_model)
            .unwrap_or(IdrStallModel::TerminateOnly);
        let stall = match idr {
            IdrStallModel::StallAndTerminate => StallModel::StallAndTerminate,
            IdrStallModel::StallForced => StallModel::StallForced,
            IdrStallModel::TerminateOnly | IdrStallModel::Reserved => StallModel::TerminateOnly,
        };
        self.stall = Some(stall);
        stall
    }

    fn submit(&mut self, cmds: &[Command]) -> Result<(), Self::Error> {
        self.with(|i| i.smmu().submit(cmds))??;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.with(|i| i.smmu().sync())??;
        Ok(())
    }

    fn submit_sync(&mut self, cmds: &[Command]) -> Result<(), Self::Error> {
        // One write of the producer index for both, under one hold of the
        // IOMMU's lock: an emulated SMMU handles each such write as an
        // exit of its own.
        self.with(|i| i.smmu().submit_sync(cmds))??;
        Ok(())
    }

    fn attach_stage2(&mut self, psid: StreamId) -> Result<(), Self::Error> {
        let domain = self.domain;
        self.with(|i| i.attach(domain, psid))??;
        Ok(())
    }

    fn attach_nested(&mut self, psid: StreamId, s1: &S1Config) -> Result<(), Self::Error> {
        let domain = self.domain;
        self.with(|i| i.attach_nested(domain, psid, s1))??;
        Ok(())
    }

    fn block(&mut self, psid: StreamId) -> Result<(), Self::Error> {
        self.with(|i| i.block(psid))??;
        Ok(())
    }

    fn refuse(&mut self, psid: StreamId) -> Result<(), Self::Error> {
        self.with(|i| i.refuse(psid))??;
        Ok(())
    }
}

/// What a VM's vSMMU is built from, kept to build it again when the VM
/// restarts.
struct Making {
    policy: VsmmuPolicy,
    streams: BTreeMap<StreamId, StreamId>,
    mem: GuestRam,
    domain: DomainId,
    vmid: Vmid,
    s2: S2Config,
}

impl Making {
    fn engine(&self) -> VsmmuEngine<HostSmmu, GuestRam> {
        let phys = HostSmmu {
            domain: self.domain,
            stall: None,
        };
        VsmmuEngine::new(
            self.policy,
            self.vmid,
            self.s2,
            self.streams.clone(),
            self.mem.clone(),
            phys,
        )
    }
}

/// The vSMMU of one VM.
pub struct VmVsmmu {
    engine: VsmmuEngine<HostSmmu, GuestRam>,
    making: Making,
    /// Guest INTIDs of the event-queue and global-error interrupts.
    pub irqs: (u32, u32),
}

impl VmVsmmu {
    /// A vSMMU for a VM whose devices are `map` (virtual -> physical
    /// StreamID) in IOMMU domain `domain`.
    pub fn new(
        policy: VsmmuPolicy,
        map: BTreeMap<u32, StreamId>,
        mem: GuestRam,
        domain: DomainId,
        vmid: Vmid,
        s2: S2Config,
        irqs: (u32, u32),
    ) -> Self {
        let making = Making {
            policy,
            streams: map.into_iter().map(|(v, p)| (StreamId(v), p)).collect(),
            mem,
            domain,
            vmid,
            s2,
        };
        Self {
            engine: making.engine(),
            making,
            irqs,
        }
    }

    /// Back to the reset state (SMMUEN 0, empty queues, no stream
    /// configured by the guest), for a VM that restarts: its streams must
    /// be attached to the VM's stage 2 again, as at the start.
    pub fn reset(&mut self) {
        self.engine = self.making.engine();
    }

    fn intid(&self, irq: GuestIrq) -> u32 {
        match irq {
            GuestIrq::Event => self.irqs.0,
            GuestIrq::GlobalError => self.irqs.1,
        }
    }

    /// A guest access at `offset`; returns the value read and the guest
    /// interrupts to raise.
    pub fn access(&mut self, offset: u64, size: u8, write: bool, value: u64) -> (u64, Vec<u32>) {
        let (value, irqs) = self.engine.access(offset, size, write, value);
        (value, irqs.into_iter().map(|i| self.intid(i)).collect())
    }

    /// What it did: guest commands consumed, the physical commands they
    /// became (including the SYNCs and the STE installs' CFGI + SYNC),
    /// MSIs written.
    pub fn stats(&self) -> VsmmuStats {
        *self.engine.stats()
    }

    /// Whether `e` is the guest's business (see
    /// `VsmmuEngine::owns_event`).
    pub fn owns_event(&self, e: &Event) -> bool {
        self.engine.owns_event(e)
    }

    /// Delivers a physical event on one of this VM's streams into the
    /// guest's event queue, with the guest's StreamID. Returns the guest
    /// interrupt to raise, if any.
    pub fn inject_fault(&mut self, e: &Event) -> Option<u32> {
        self.engine.inject_fault(e).map(|i| self.intid(i))
    }
}
