//! A VM's IPA space and the two stage-2 tables that translate it: the
//! CPU's (VTTBR_EL2) and, on a machine with an SMMU, the IOMMU domain's,
//! which the STEs of the VM's devices point at. Both are built from one
//! list of [`Mapping`]s while the VM is built, under one VMID.
//!
//! Why two tables: a device's MSI is a DMA write to the interrupt
//! controller's doorbell (GITS_TRANSLATER), so the devices' table must map
//! the doorbell page, while the guest CPU's accesses to the same IPA (its
//! vITS frames) must trap to the emulation and never reach the physical
//! ITS. Everything else is mapped in both, the same way.
//!
//! The consistency rule: every mapping goes through [`IpaSpace::map`],
//! which puts it in the domain's table (all mappings) and the CPU's (all
//! but the devices-only ones) and records it, only while the VM is built,
//! before any vCPU runs or any stream is attached. Nothing changes either
//! table while the VM runs (the runtime holds the space and never maps
//! again); a future change would have to go to both tables and invalidate
//! both TLBs: the CPU's (TLBI for the VMID) and the SMMU's
//! (CMD_TLBI_S12_VMALL or TLBI_S2_IPA, then CMD_SYNC), since the SMMU
//! ignores the CPU's broadcast invalidations (CR2.PTM).

use crate::vdev::vits;
use alloc::vec::Vec;
use core::fmt;
use scenario::guest_layout as layout;
use smmu::addr::{Ipa, PhysAddr};
use smmu::domain::{DomainError, DomainId, Iommu};
use smmu::hw::{Mmio, PageAllocator, PAGE_SIZE};
use smmu::stage2::{MemType, S2Attrs, Stage2, Stage2Config, Stage2Error};

/// Where a VM's devices write their MSIs: GITS_TRANSLATER in its vITS's
/// translation frame.
pub const MSI_ADDRESS: Ipa = Ipa(layout::ITS_BASE + vits::TRANSLATER);
/// The 4 KiB page holding [`MSI_ADDRESS`], which only the devices' stage 2
/// maps (to the physical GITS_TRANSLATER's page).
pub const MSI_DOORBELL: Ipa = Ipa(MSI_ADDRESS.0 & !(PAGE_SIZE as u64 - 1));

/// What a mapping is, which also says who sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Guest RAM: the CPU and the devices.
    Ram,
    /// An assigned function's BAR: the CPU and the devices (peer to peer).
    Bar,
    /// The page of the physical GITS_TRANSLATER, behind the vITS's
    /// translation frame: the devices only (their MSIs).
    MsiDoorbell,
}

impl Kind {
    /// Whether the CPU's table has it.
    pub fn cpu_sees(self) -> bool {
        self != Self::MsiDoorbell
    }
}

/// One range of the IPA space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// What it is.
    pub kind: Kind,
    /// First IPA (4 KiB aligned).
    pub ipa: Ipa,
    /// First PA (4 KiB aligned).
    pub pa: PhysAddr,
    /// Bytes (a multiple of 4 KiB).
    pub len: u64,
    /// Stage-2 attributes.
    pub attrs: S2Attrs,
}

impl Mapping {
    /// Guest RAM: normal write-back, read/write/execute.
    pub fn ram(ipa: Ipa, pa: PhysAddr, len: u64) -> Self {
        Self {
            kind: Kind::Ram,
            ipa,
            pa,
            len,
            attrs: S2Attrs::NORMAL_RWX,
        }
    }

    /// A BAR: device memory, read/write, never executable.
    pub fn bar(ipa: Ipa, pa: PhysAddr, len: u64) -> Self {
        Self {
            kind: Kind::Bar,
            ipa,
            pa,
            len,
            attrs: S2Attrs::DEVICE_RW,
        }
    }

    /// The MSI doorbell: the 4 KiB page `page` (the physical
    /// GITS_TRANSLATER's) at [`MSI_DOORBELL`], device memory, write-only
    /// (S2AP = 0b10): a device writes its EventID there and reads nothing.
    pub fn msi_doorbell(page: PhysAddr) -> Self {
        Self {
            kind: Kind::MsiDoorbell,
            ipa: MSI_DOORBELL,
            pa: page,
            len: PAGE_SIZE as u64,
            attrs: S2Attrs {
                read: false,
                write: true,
                exec: false,
                mem: MemType::Device,
            },
        }
    }
}

/// The smallest IPA size of a VM's IOMMU domain. With the 4 KiB granule,
/// 39 bits is the largest size whose walk starts at level 1 from a single
/// root table; 40 bits take two concatenated level-1 tables. The walk is
/// as deep either way, but an SMMU that looks its TLB up level by level
/// from the level an unconcatenated walk of that size would start at
/// (QEMU's model: level 0 for 40 bits, one hash probe per level) makes
/// one probe more per lookup at 40 bits, and a nested walk looks up each
/// of the guest's stage-1 table addresses. The guest's layout puts
/// everything a device reaches (its MSI doorbell, its functions' BARs)
/// below its RAM, so the domain needs more only for RAM beyond 512 GiB.
const DOMAIN_MIN_IPA_BITS: u32 = 39;

/// The IPA size of the IOMMU domain of a VM whose RAM ends at IPA
/// `ram_end`: enough for its RAM, and at least [`DOMAIN_MIN_IPA_BITS`].
pub fn domain_ipa_bits(ram_end: u64) -> u32 {
    let needed = 64 - ram_end.saturating_sub(1).leading_zeros();
    needed.max(DOMAIN_MIN_IPA_BITS)
}

/// Why a mapping was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceError {
    /// A devices-only mapping in a space without an IOMMU domain: no
    /// device can use it.
    NoDomain(Kind),
    /// The CPU's table refused it.
    Cpu(Stage2Error),
    /// The IOMMU domain's table refused it.
    Domain(DomainError),
}

impl fmt::Display for SpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDomain(kind) => write!(f, "{kind:?} mapping without an IOMMU domain"),
            Self::Cpu(e) => write!(f, "CPU stage 2: {e}"),
            Self::Domain(e) => write!(f, "IOMMU domain: {e}"),
        }
    }
}

/// The devices' table as [`IpaSpace::map`] changes it: an IOMMU domain's,
/// through its [`Iommu`].
pub trait DomainTables {
    /// Maps `m` into domain `id`'s table.
    fn map_into(&mut self, id: DomainId, m: &Mapping) -> Result<(), DomainError>;
}

impl<M: Mmio> DomainTables for Iommu<'_, M> {
    fn map_into(&mut self, id: DomainId, m: &Mapping) -> Result<(), DomainError> {
        self.map(id, m.ipa, m.pa, m.len, m.attrs)
    }
}

/// A VM's IPA space: the CPU's stage-2 table, the IOMMU domain whose table
/// the devices use (none without an SMMU), and every mapping both were
/// built from.
#[derive(Debug)]
pub struct IpaSpace {
    cpu: Stage2,
    domain: Option<DomainId>,
    mappings: Vec<Mapping>,
}

impl IpaSpace {
    /// An empty space over the empty CPU table `cpu` and, if the machine
    /// has an SMMU, the empty domain `domain`.
    pub fn new(cpu: Stage2, domain: Option<DomainId>) -> Self {
        Self {
            cpu,
            domain,
            mappings: Vec::new(),
        }
    }

    /// Maps `m`: into the domain's table (through `iommu`, when the space
    /// has a domain), then into the CPU's (allocating from `cpu_mem`)
    /// unless it is for devices only, and records it. A failure means the
    /// VM cannot be built: the tables may then differ, and neither may be
    /// used.
    pub fn map(
        &mut self,
        iommu: Option<&mut dyn DomainTables>,
        cpu_mem: &dyn PageAllocator,
        m: Mapping,
    ) -> Result<(), SpaceError> {
        match (self.domain, iommu) {
            (Some(id), Some(iommu)) => iommu.map_into(id, &m).map_err(SpaceError::Domain)?,
            (Some(id), None) => return Err(SpaceError::Domain(DomainError::NoSuchDomain(id))),
            (None, _) if !m.kind.cpu_sees() => return Err(SpaceError::NoDomain(m.kind)),
            (None, _) => {}
        }
        if m.kind.cpu_sees() {
            self.cpu
                .map(cpu_mem, m.ipa, m.pa, m.len, m.attrs)
                .map_err(SpaceError::Cpu)?;
        }
        self.mappings.push(m);
        Ok(())
    }

    /// The IOMMU domain the VM's devices use.
    pub fn domain(&self) -> Option<DomainId> {
        self.domain
    }

    /// The CPU's table, for VTTBR_EL2 and VTCR_EL2.
    pub fn cpu_config(&self) -> Stage2Config {
        self.cpu.config()
    }

    /// Where the CPU's table sends `ipa`.
    #[cfg(test)]
    pub fn cpu_translate(&self, ipa: Ipa) -> Option<(PhysAddr, S2Attrs, u8)> {
        self.cpu.translate(ipa)
    }

    /// Every mapping, in the order they were made.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smmu::driver::{Smmu, SmmuOptions};
    use smmu::fake::{FakeMemory, FakeSmmu};
    use smmu::stage2::Leaves;
    use std::sync::Arc;

    const RAM: Ipa = Ipa(0x4000_0000);
    const RAM_PA: PhysAddr = PhysAddr(0x8020_0000);
    const RAM_LEN: u64 = 4 << 20;
    const BAR: Ipa = Ipa(0x1000_0000);
    const BAR_PA: PhysAddr = PhysAddr(0x1_0000_0000);
    const BAR_LEN: u64 = 0x4000;
    const TRANSLATER_PAGE: PhysAddr = PhysAddr(0x2_0809_0000);

    fn cpu_table(mem: &FakeMemory) -> Stage2 {
        Stage2::new(mem, 40, 48).unwrap()
    }

    /// Every page a test looks at: each mapping's pages, the page before
    /// and after each, and a page nothing maps.
    fn probes(space: &IpaSpace) -> Vec<Ipa> {
        let page = PAGE_SIZE as u64;
        let mut at = alloc::vec![Ipa(0x2000_0000)];
        for m in space.mappings() {
            at.push(Ipa(m.ipa.raw() - page));
            at.extend((0..=m.len / page).map(|i| Ipa(m.ipa.raw() + i * page)));
        }
        at
    }

    /// Both tables from one list, the CPU's in `leaves`.
    fn only_the_devices_table_maps_the_doorbell_with(leaves: Leaves) {
        let mem = Arc::new(FakeMemory::new());
        let fake = FakeSmmu::new(mem.clone());
        let opts = SmmuOptions {
            timeout_us: 1000,
            ..SmmuOptions::default()
        };
        let mut iommu = Iommu::new(Smmu::new(&fake, &*mem, opts).unwrap());
        let id = iommu
            .create_domain(domain_ipa_bits(RAM.raw() + RAM_LEN))
            .unwrap();
        let cpu_mem = FakeMemory::new();
        let mut space = IpaSpace::new(cpu_table(&cpu_mem).with_leaves(leaves), Some(id));
        for m in [
            Mapping::ram(RAM, RAM_PA, RAM_LEN),
            Mapping::bar(BAR, BAR_PA, BAR_LEN),
            Mapping::msi_doorbell(TRANSLATER_PAGE),
        ] {
            space.map(Some(&mut iommu), &cpu_mem, m).unwrap();
        }
        let devices = iommu.domain(id).unwrap().stage2();

        let translater = MSI_ADDRESS;
        assert_eq!(translater, Ipa(0x0809_0040), "the guest layout's vITS");
        let (pa, attrs, _) = devices.translate(translater).unwrap();
        assert_eq!(pa, PhysAddr(TRANSLATER_PAGE.raw() + 0x40));
        assert_eq!(
            (attrs.read, attrs.write, attrs.exec, attrs.mem),
            (false, true, false, MemType::Device),
            "write-only device memory"
        );
        assert_eq!(space.cpu_translate(translater), None, "the CPU's traps");

        for ipa in probes(&space) {
            if ipa == MSI_DOORBELL {
                continue;
            }
            let cpu = space.cpu_translate(ipa).map(|(pa, attrs, _)| (pa, attrs));
            let dev = devices.translate(ipa).map(|(pa, attrs, _)| (pa, attrs));
            assert_eq!(cpu, dev, "IPA {ipa}: both tables agree");
        }
        // RAM is 2 MiB aligned on both sides: the devices' table maps it
        // with blocks, the CPU's as `leaves` says.
        let cpu_level = match leaves {
            Leaves::Blocks => 2,
            Leaves::Pages => 3,
        };
        assert_eq!(
            space.cpu_translate(Ipa(RAM.raw() + 0x1234)),
            Some((
                PhysAddr(RAM_PA.raw() + 0x1234),
                S2Attrs::NORMAL_RWX,
                cpu_level
            ))
        );
        assert_eq!(devices.translate(Ipa(RAM.raw() + 0x1234)).unwrap().2, 2);
        assert_eq!(
            space.cpu_translate(BAR).map(|t| t.1),
            Some(S2Attrs::DEVICE_RW)
        );
        assert!(
            cpu_mem.pages_in_use() > 0,
            "the CPU's tables come from its own allocator"
        );
    }

    #[test]
    fn only_the_devices_table_maps_the_doorbell() {
        only_the_devices_table_maps_the_doorbell_with(Leaves::Blocks);
        only_the_devices_table_maps_the_doorbell_with(Leaves::Pages);
    }

    #[test]
    fn without_a_domain_only_the_cpu_table_exists() {
        let cpu_mem = FakeMemory::new();
        let mut space = IpaSpace::new(cpu_table(&cpu_mem), None);
        space
            .map(None, &cpu_mem, Mapping::ram(RAM, RAM_PA, RAM_LEN))
            .unwrap();
        assert_eq!(
            space.map(None, &cpu_mem, Mapping::msi_doorbell(TRANSLATER_PAGE)),
            Err(SpaceError::NoDomain(Kind::MsiDoorbell))
        );
        assert_eq!(space.mappings().len(), 1);
        assert_eq!(space.cpu_translate(MSI_DOORBELL), None);
        assert!(space.cpu_translate(RAM).is_some());
    }

    #[test]
    fn a_refused_mapping_is_not_recorded() {
        let cpu_mem = FakeMemory::new();
        let mut space = IpaSpace::new(cpu_table(&cpu_mem), None);
        space
            .map(None, &cpu_mem, Mapping::bar(BAR, BAR_PA, BAR_LEN))
            .unwrap();
        let overlap = Mapping::ram(BAR, RAM_PA, RAM_LEN);
        assert_eq!(
            space.map(None, &cpu_mem, overlap),
            Err(SpaceError::Cpu(Stage2Error::Overlap(BAR)))
        );
        assert_eq!(space.mappings(), [Mapping::bar(BAR, BAR_PA, BAR_LEN)]);
    }

    #[test]
    fn the_domain_covers_ram_from_one_level_1_root_table() {
        // 512 MiB at 1 GiB, as the guest layout places RAM.
        assert_eq!(domain_ipa_bits(0x6000_0000), 39);
        // RAM ending exactly at 512 GiB still fits.
        assert_eq!(domain_ipa_bits(1 << 39), 39);
        // A page beyond needs the 40th bit, and so on.
        assert_eq!(domain_ipa_bits((1 << 39) + 0x1000), 40);
        assert_eq!(domain_ipa_bits((1 << 44) + 0x1000), 45);
        let mem = FakeMemory::new();
        let root = |bits| {
            let c = Stage2::new(&mem, bits, 48).unwrap().config();
            (c.start_level, c.concatenated)
        };
        assert_eq!(root(39), (1, 1), "one level-1 table");
        assert_eq!(root(40), (1, 2), "two concatenated level-1 tables");
    }
}
