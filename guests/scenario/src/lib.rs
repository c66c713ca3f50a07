//! Scenarios: which VMs run, with which CPUs, memory, images and devices, on
//! which QEMU machine.
//!
//! A scenario is a small TOML file in `guests/scenarios/` that a user reads
//! and edits (format in `guests/scenarios/README.md`). The host-side runner
//! (`qemu-runner`) parses and validates it, starts QEMU as `[machine]` says,
//! and hands the hypervisor a boot [`bundle`] (the scenario text plus every
//! kernel and initrd) as QEMU's initrd. The hypervisor parses and validates
//! the same text again with this crate before any guest runs, and lays guests
//! out by [`guest_layout`].
//!
//! The text is parsed by the `toml` crate, built `no_std` like this crate,
//! so the runner and the hypervisor read it with the same code; this crate
//! maps the document to [`Scenario`] and says every problem as a
//! [`ScenarioError`] (line, section, problem). [`Scenario::to_text`] writes
//! a scenario back as text, for a run that changes one.
//!
//! `no_std` + `alloc`; the `std` feature adds [`bundle::pack`].

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod bundle;
mod error;
pub mod guest_layout;
mod pci;
mod spec;
mod syntax;
mod text;
mod validate;

use alloc::string::String;
use alloc::vec::Vec;

pub use error::{ErrorKind, ScenarioError, Section, Size};
pub use pci::PciAddr;
pub use spec::{MAX_ARRAY, MAX_STRING, MAX_VMS};
pub use syntax::MAX_INPUT;

/// Machine memory the hypervisor keeps for itself (image, heap, page tables,
/// SMMU tables); VM memory must fit in the rest.
pub const HYP_RESERVE: u64 = 64 << 20;

/// The granule of VM memory and of `ram_base`: stage 2 maps guest RAM with
/// 2 MiB blocks.
pub const VM_MEMORY_ALIGN: u64 = 2 << 20;

/// Longest VM name.
pub const MAX_NAME: usize = 16;

/// Parses scenario text; the same as [`Scenario::parse`].
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text)
}

/// Why the scenario in a boot bundle cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// The bundle itself is malformed.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    /// No UTF-8 `scenario` entry.
    #[error("boot bundle has no scenario text")]
    NoScenario,
    /// The scenario does not parse or breaks a rule.
    #[error("scenario: {0}")]
    Scenario(#[from] ScenarioError),
    /// An image the scenario names is not in the bundle.
    #[error("vm {vm:?}: image {path} is not in the boot bundle")]
    MissingImage {
        /// The VM.
        vm: String,
        /// The image path.
        path: String,
    },
}

/// A whole scenario: the QEMU machine and the VMs on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// `[machine]`: the QEMU machine.
    pub machine: Machine,
    /// `[[vm]]` tables, in file order.
    pub vms: Vec<VmSpec>,
}

/// `[machine]`: how QEMU is started and what the hypervisor is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// `cpus` (required): physical CPUs, QEMU `-smp`.
    pub cpus: u32,
    /// `memory` (required): bytes of RAM, QEMU `-m`.
    pub memory: u64,
    /// `cpu`: QEMU `-cpu` model; default `"max"`.
    pub cpu: String,
    /// `smmu`: give the machine an SMMUv3 (`iommu=smmuv3`); default true.
    pub smmu: bool,
    /// `machine`: QEMU machine type; default `"virt"`.
    pub machine: String,
    /// `devices`: QEMU `-device` arguments, one per device; default none.
    pub devices: Vec<String>,
    /// `qemu_args`: extra raw QEMU arguments; default none.
    pub qemu_args: Vec<String>,
    /// `bootargs`: the hypervisor's command line; default empty.
    pub bootargs: String,
    /// `gic_version`: the GIC QEMU emulates, 3 (GICv3) or 4 (GICv4.0,
    /// with direct injection of virtual LPIs); default 3.
    pub gic_version: u8,
    /// `msi_delivery`: how assigned functions' MSIs reach the guests;
    /// default (`None`) the fastest the machine's GIC supports.
    pub msi_delivery: Option<MsiDelivery>,
    /// `cpu_stage2`: the leaves of the VMs' CPU stage-2 tables; default
    /// [`CpuStage2::Pages`].
    pub cpu_stage2: CpuStage2,
}

/// The value of a key that is one of a few names.
pub trait Choice: Copy + 'static {
    /// Every value.
    const ALL: &'static [Self];
    /// Its name in a scenario.
    fn name(self) -> &'static str;
}

/// `cpu_stage2`: how the VMs' CPU stage-2 tables map guest memory. (The
/// devices' tables, the SMMU's, always use the largest blocks alignment
/// allows.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CpuStage2 {
    /// `"pages"`: 4 KiB pages only. The faster on QEMU's TCG, which keeps a
    /// combined stage-1+2 TLB entry at the larger of the two stages' page
    /// sizes, and flushes a whole translation regime's TLB on a by-VA
    /// invalidation inside the span its large entries cover: with blocks,
    /// each TLBI VAE1IS of a guest that maps its memory with pages (Linux)
    /// empties it.
    #[default]
    Pages,
    /// `"blocks"`: 1 GiB and 2 MiB blocks wherever alignment allows, as
    /// hardware wants (fewer table walks, more TLB reach).
    Blocks,
}

impl Choice for CpuStage2 {
    const ALL: &'static [Self] = &[Self::Pages, Self::Blocks];

    fn name(self) -> &'static str {
        match self {
            Self::Pages => "pages",
            Self::Blocks => "blocks",
        }
    }
}

/// `msi_delivery`: how the hypervisor delivers assigned functions' MSIs to
/// the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiDelivery {
    /// `"direct"`: the GIC injects each MSI into the vCPU itself, as a
    /// virtual LPI (GICv4); a machine without that refuses to start VMs.
    Direct,
    /// `"list-registers"`: each MSI is a physical LPI the hypervisor takes
    /// and injects through the virtual CPU interface's list registers.
    ListRegisters,
}

impl Choice for MsiDelivery {
    const ALL: &'static [Self] = &[Self::Direct, Self::ListRegisters];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::ListRegisters => "list-registers",
        }
    }
}

/// `on_reset`, `on_poweroff`: what the hypervisor does when a VM's guest
/// resets it (PSCI SYSTEM_RESET or SYSTEM_RESET2) or powers it off (PSCI
/// SYSTEM_OFF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// `"restart"`: the VM is stopped, its devices quiesced, its memory
    /// scrubbed, and it boots again from its images.
    Restart,
    /// `"stop"`: the VM is stopped for good.
    Stop,
}

impl Choice for Lifecycle {
    const ALL: &'static [Self] = &[Self::Restart, Self::Stop];

    fn name(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Stop => "stop",
        }
    }
}

/// GIC versions `gic_version` takes.
pub const GIC_VERSIONS: [u8; 2] = [3, 4];

/// `[[vm]]`: one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// `name` (required): letters, digits, `-`, `_`; at most 16 characters.
    /// Console lines of this VM carry it.
    pub name: String,
    /// `cpus` (required): vCPUs, each pinned to its own physical CPU.
    pub cpus: u32,
    /// `memory` (required): bytes of guest RAM, a multiple of 2 MiB.
    pub memory: u64,
    /// `ram_base`: guest physical address of RAM; default
    /// [`guest_layout::RAM_MIN`].
    pub ram_base: u64,
    /// `kernel` (required): path of the kernel image, relative to the
    /// repository root; also its name in the boot bundle.
    pub kernel: String,
    /// `initrd`: path of the initial ramdisk, like `kernel`.
    pub initrd: Option<String>,
    /// `cmdline`: the guest kernel's command line; default empty.
    pub cmdline: String,
    /// `devices`: PCI functions assigned to the VM, e.g. `"00:02.0"`.
    pub devices: Vec<String>,
    /// `vsmmu`: give the VM a virtual SMMUv3; default false.
    pub vsmmu: bool,
    /// `on_reset`: what a reset by its guest does; default restart.
    pub on_reset: Lifecycle,
    /// `on_poweroff`: what a power-off by its guest does; default stop.
    pub on_poweroff: Lifecycle,
    /// Line of the VM's `[[vm]]` header (0 when not parsed from text);
    /// validation errors cite it.
    pub line: usize,
}

impl VmSpec {
    /// The section error messages name this VM by.
    pub fn section(&self, index: usize) -> Section {
        Section::Vm {
            name: Some(self.name.clone()),
            index,
        }
    }

    /// Guest RAM as `[start, end)`, `None` if it wraps.
    pub fn ram(&self) -> Option<(u64, u64)> {
        Some((self.ram_base, self.ram_base.checked_add(self.memory)?))
    }

    /// The kernel and, if any, the initrd path.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        core::iter::once(self.kernel.as_str()).chain(self.initrd.as_deref())
    }
}

impl Scenario {
    /// Parses scenario text (syntax, sections, keys, types). Does not apply
    /// the rules of [`Scenario::validate`].
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let doc = syntax::parse(text)?;
        spec::from_document(text, &doc)
    }

    /// [`Scenario::parse`], then [`Scenario::validate`].
    pub fn parse_and_validate(text: &str) -> Result<Self, ScenarioError> {
        let s = Self::parse(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Checks the rules a scenario must follow before any guest runs: VM
    /// names, CPU and memory sizes, the sums against the machine, guest RAM
    /// against the fixed device map, image paths, and that no PCI function
    /// goes to two VMs. Returns the first problem in file order.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        validate::validate(self)
    }

    /// What the hypervisor does with its initrd: parses the boot bundle,
    /// parses and validates its scenario, and checks that every image the
    /// scenario names is in the bundle.
    pub fn from_bundle(blob: &[u8]) -> Result<(Scenario, bundle::Bundle<'_>), BootError> {
        let b = bundle::Bundle::parse(blob)?;
        let text = b.scenario().ok_or(BootError::NoScenario)?;
        let s = Self::parse_and_validate(text)?;
        if let Some((vm, path)) = s.images().find(|(_, p)| b.get(p).is_none()) {
            return Err(BootError::MissingImage {
                vm: vm.name.clone(),
                path: path.into(),
            });
        }
        Ok((s, b))
    }

    /// Every image path of every VM, with its VM, in file order.
    pub fn images(&self) -> impl Iterator<Item = (&VmSpec, &str)> {
        self.vms
            .iter()
            .flat_map(|vm| vm.images().map(move |p| (vm, p)))
    }
}
