//! Building the VMs a scenario describes: RAM, the stage-2 address space,
//! assigned PCI functions and the grants of their MSIs, the vSMMU, images
//! loaded as a boot loader would, the guest's device tree, and the
//! emulated devices on its MMIO bus.
//!
//! Each VM has one IPA space and one VMID, translated by two stage-2
//! tables built from one list of mappings (`space::IpaSpace`): the CPU's
//! (VTTBR_EL2) and, on a machine with an SMMU, the IOMMU domain's that the
//! VM's devices use. Both map the same RAM and BARs the same way; only the
//! devices' maps the MSI doorbell (the physical GITS_TRANSLATER page behind
//! the vITS's translation frame), so that a device's MSI reaches the
//! physical ITS while the guest CPU's accesses to its vITS frames trap to
//! the emulation. The consistency rule: both tables get every mapping from
//! that one list while the VM is built, before any vCPU runs or stream is
//! attached, and nothing changes either while the VM runs; a change would
//! have to go to both tables and invalidate both TLBs (the CPU's TLBI for
//! the VMID, and the SMMU's CMD_TLBI_S12_VMALL + CMD_SYNC, since the SMMU
//! ignores broadcast TLBIs, CR2.PTM). Everything else in the guest's
//! address space is unmapped, so touching it traps: the bus's devices
//! answer, anything else gets an external abort.

use super::assign::{self, AssignedDevice};
use super::bus::BusError;
use super::intx::IntxForwarding;
use super::msi::{self, Delivery};
use super::ram::GuestRam;
use super::space::{self, IpaSpace, Kind, Mapping};
use super::vm::{VirtualIommu, Vm, UART_INTID};
use super::vsmmu::VmVsmmu;
use crate::arch::{self, guest};
use crate::drivers::{its, pci};
use crate::gicv3::its::cmd::DeviceId;
use crate::guest_fdt::{self, GuestDt};
use crate::mm::{self, GUEST_MEM};
use crate::platform::Platform;
use crate::vdev::vgic::VGic;
use crate::vdev::vits::{DeviceGrant, ItsConfig};
use crate::vm::devices::{standard_bus, PciHostBridge};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use log::info;
use scenario::guest_layout as layout;
use scenario::Choice;
use smmu::addr::{Ipa, StreamId, Vmid};
use smmu::event::Event;
use smmu::hw::PAGE_SIZE;
use smmu::stage2::{Leaves, Stage2};

/// IPA size of every VM: its CPU's stage 2, and what its vSMMU offers as
/// output size.
const IPA_BITS: u32 = 40;
/// SPIs the virtual GIC implements.
const NR_SPIS: u32 = 32;
/// Guest INTIDs of the vSMMU's event-queue and global-error interrupts.
const VSMMU_IRQS: (u32, u32) = (48, 49);

/// Why a scenario could not be started.
#[derive(Debug)]
pub enum StartError {
    /// The bundle or the scenario in it is malformed.
    Scenario(String),
    /// The machine cannot hold what the scenario asks for.
    Resources(String),
    /// The machine cannot do what the scenario asks for.
    Unsupported(String),
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Scenario(s) => write!(f, "bad scenario: {s}"),
            Self::Resources(s) => write!(f, "cannot build the VMs: {s}"),
            Self::Unsupported(s) => write!(f, "the machine cannot run the scenario: {s}"),
        }
    }
}

fn resources(msg: impl Into<String>) -> StartError {
    StartError::Resources(msg.into())
}

/// One image a VM boots from.
#[derive(Debug)]
pub enum Image {
    /// From the boot bundle, which stays in memory, unchanged.
    Bundle(&'static [u8]),
    /// The guest's device tree, built by the hypervisor, and where in it
    /// the values of `/chosen/rng-seed` and `kaslr-seed` lie (see
    /// [`guest_fdt::seed_values`]): each start writes its own seeds there.
    DeviceTree {
        blob: Vec<u8>,
        seeds: Option<[core::ops::Range<usize>; 2]>,
    },
}

impl Image {
    /// Its bytes (a device tree's with zeroes for seeds).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Bundle(b) => b,
            Self::DeviceTree { blob, .. } => blob,
        }
    }

    /// The pieces to write at `at` for one start, `seed` being that
    /// start's: the image's bytes, with a device tree's seed values taken
    /// from `seed` ([`guest_fdt::seeded`]).
    pub fn pieces<'a>(&'a self, at: Ipa, seed: &'a crate::seed::GuestSeed) -> Vec<(Ipa, &'a [u8])> {
        match self {
            Self::DeviceTree {
                blob,
                seeds: Some(holes),
            } => guest_fdt::seeded(blob, holes, seed)
                .into_iter()
                .map(|(off, b)| (Ipa(at.0 + off as u64), b))
                .collect(),
            _ => alloc::vec![(at, self.bytes())],
        }
    }
}

/// What the runtime keeps of a VM beside the VM itself: the hardware it
/// holds and where its first vCPU starts.
#[derive(Debug)]
pub struct Built {
    /// The VM.
    pub vm: Vm,
    /// Its assigned PCI functions.
    pub devices: Vec<AssignedDevice>,
    /// Its VMID.
    pub vmid: Vmid,
    /// vCPU 0's entry point and x0 (the device tree).
    pub start: (Ipa, u64),
    /// What was loaded into its RAM and where (kernel, initrd, device
    /// tree): what a restart loads again.
    pub images: Vec<(Ipa, Image)>,
    /// Its IPA space (the CPU's stage-2 table and the IOMMU domain), kept
    /// for as long as the VM may run.
    pub space: IpaSpace,
    /// The physical DeviceIDs whose MSIs it was granted, mapped in the
    /// physical ITS, with their events.
    pub msi_devices: Vec<(DeviceId, u32)>,
    /// With direct delivery: its vPEs, mapped in the physical ITS, and
    /// their tables.
    pub vpes: Option<its::VpeSet>,
}

impl VirtualIommu for VmVsmmu {
    fn mmio(&mut self, offset: u64, size: u8, write: bool, value: u64) -> (u64, Vec<u32>) {
        self.access(offset, size, write, value)
    }

    fn owns_event(&self, e: &Event) -> bool {
        VmVsmmu::owns_event(self, e)
    }

    fn inject_fault(&mut self, e: &Event) -> Option<u32> {
        VmVsmmu::inject_fault(self, e)
    }

    fn stats(&self) -> smmu::vsmmu::VsmmuStats {
        VmVsmmu::stats(self)
    }

    fn reset(&mut self) {
        VmVsmmu::reset(self);
    }
}

/// Builds the VMs of the scenario in the boot bundle, giving them physical
/// CPUs from 0 in order (`cpus` is how many the machine has). Returns no
/// VMs when the bundle has none (a machine-only scenario).
pub fn create(
    p: &Platform,
    functions: &[crate::drivers::pci::Function],
    cpus: usize,
    lines: &mut IntxForwarding,
) -> Result<Vec<Built>, StartError> {
    let Some(region) = &p.initrd else {
        return Ok(Vec::new());
    };
    let (base, len) = (region.base as *const u8, region.size as usize);
    // The bundle stays for the hypervisor's lifetime: a restarting VM's
    // images are loaded from it again.
    // SAFETY: the boot loader put the bundle there (DTB /chosen): RAM mapped
    // by map_everything, reserved from the frame allocator, never written.
    let blob: &'static [u8] = unsafe { core::slice::from_raw_parts(base, len) };
    let (sc, bundle) = scenario::Scenario::from_bundle(blob)
        .map_err(|e| StartError::Scenario(alloc::format!("{e}")))?;
    let want: usize = sc.vms.iter().map(|v| v.cpus as usize).sum();
    if want > cpus {
        return Err(resources(alloc::format!(
            "{want} vCPUs need {want} physical CPUs, the machine has {cpus}"
        )));
    }
    if sc.vms.is_empty() {
        return Ok(Vec::new());
    }
    let delivery = msi_delivery(sc.machine.msi_delivery)?;
    let cpu_leaves = cpu_stage2_leaves(sc.machine.cpu_stage2);
    let mut vms = Vec::new();
    let mut next_pcpu = 0;
    for (index, spec) in sc.vms.iter().enumerate() {
        let pcpus: Vec<usize> = (next_pcpu..next_pcpu + spec.cpus as usize).collect();
        next_pcpu += spec.cpus as usize;
        vms.push(build_vm(
            index, spec, pcpus, &bundle, p, functions, lines, delivery, cpu_leaves,
        )?);
    }
    Ok(vms)
}

/// How assigned functions' MSIs reach the guests: as the scenario's
/// `msi_delivery` asks, else directly where the GIC can (GICv4), else
/// through the list registers. Direct delivery on a GIC without it is an
/// error that says why.
fn msi_delivery(asked: Option<scenario::MsiDelivery>) -> Result<Delivery, StartError> {
    use scenario::MsiDelivery as Asked;
    let direct = match its::get() {
        Some(its) => its
            .lock()
            .direct_injection()
            .map_err(|e| alloc::format!("{e}")),
        None => Err("there is no ITS".into()),
    };
    let chosen = match (asked, direct) {
        (Some(Asked::ListRegisters), _) | (None, Err(_)) => Delivery::ListRegisters,
        (Some(Asked::Direct), Ok(())) | (None, Ok(())) => Delivery::Direct,
        (Some(Asked::Direct), Err(why)) => {
            return Err(StartError::Unsupported(alloc::format!(
                "msi_delivery = \"direct\" needs a GIC that injects virtual LPIs directly \
                 (GICv4, e.g. gic_version = 4), but {why}"
            )))
        }
    };
    info!(
        "MSI delivery: {}{}",
        chosen.name(),
        match (chosen, asked) {
            (_, Some(_)) => " (as the scenario asks)",
            (Delivery::Direct, None) => " (GICv4: the fastest this GIC supports)",
            (Delivery::ListRegisters, None) => " (this GIC has no direct injection)",
        }
    );
    Ok(chosen)
}

/// The leaves of the VMs' CPU stage-2 tables the scenario's `cpu_stage2`
/// asks for (pages unless it says blocks), said once in the log.
fn cpu_stage2_leaves(asked: scenario::CpuStage2) -> Leaves {
    let (leaves, why) = match asked {
        scenario::CpuStage2::Pages => (Leaves::Pages, "4 KiB pages"),
        scenario::CpuStage2::Blocks => (Leaves::Blocks, "1 GiB and 2 MiB blocks where aligned"),
    };
    info!("CPU stage 2: {why} (cpu_stage2 = \"{}\")", asked.name());
    leaves
}

#[allow(clippy::too_many_arguments)]
fn build_vm(
    index: usize,
    spec: &scenario::VmSpec,
    pcpus: Vec<usize>,
    bundle: &scenario::bundle::Bundle<'static>,
    p: &Platform,
    functions: &[crate::drivers::pci::Function],
    lines: &mut IntxForwarding,
    delivery: Delivery,
    cpu_leaves: Leaves,
) -> Result<Built, StartError> {
    let size = spec.memory;
    let ram = spec.ram_base..spec.ram_base + size;
    let pages = (size / PAGE_SIZE as u64) as usize;
    // Scrubbed, and its images loaded, by the VM's CPUs together before
    // it starts (`run::start`).
    let ram_pa = GUEST_MEM.alloc_unscrubbed(pages, 2 << 20).ok_or_else(|| {
        resources(alloc::format!(
            "VM {}: no {} MiB of contiguous RAM left",
            spec.name,
            size >> 20
        ))
    })?;
    // SAFETY: the VM's RAM block was just allocated for it alone, and the
    // EL2 identity map covers all RAM for the hypervisor's lifetime.
    let guest_ram = unsafe { GuestRam::new(Ipa(ram.start)..Ipa(ram.end), ram_pa.raw() as usize) };

    let (vmid, mut space) = address_space(&spec.name, index, ram.start, ram_pa, size, cpu_leaves)?;
    let assignment = if spec.devices.is_empty() {
        None
    } else {
        Some(
            assign::assign(
                &spec.name,
                index,
                &spec.devices,
                functions,
                p,
                &mut space,
                lines,
            )
            .map_err(|e| resources(alloc::format!("VM {}: {e}", spec.name)))?,
        )
    };
    let grants = match &assignment {
        Some(a) => msi_grants(&spec.name, &a.devices, p)?,
        None => BTreeMap::new(),
    };
    let cfg = space.cpu_config();
    let controls = guest::GuestControls {
        vttbr: cfg.root.raw() | (u64::from(vmid.0) << 48),
        vtcr: arch::vtcr(cfg.t0sz, cfg.sl0, cfg.ps),
        vmpidr: 0,
    };

    let vsmmu = if spec.vsmmu {
        Some(vsmmu_for(
            &spec.name,
            space.domain(),
            assignment.as_ref(),
            guest_ram.clone(),
            vmid,
        )?)
    } else {
        None
    };

    // Images, as a boot loader would place them (Linux booting.rst).
    // Only checked here: they are written once the RAM is scrubbed.
    let load = |ipa: u64, data: &[u8], what: &str| {
        guest_ram
            .check(Ipa(ipa), data.len())
            .map_err(|e| resources(alloc::format!("VM {}: {what}: {e}", spec.name)))
    };
    let kernel = bundle.get(&spec.kernel).ok_or_else(|| {
        StartError::Scenario(alloc::format!(
            "VM {}: kernel {} not in the bundle",
            spec.name,
            spec.kernel
        ))
    })?;
    let (text_offset, image_size) = super::image::header(kernel);
    let kernel_ipa = ram.start + text_offset;
    let kernel_end = kernel_ipa + image_size.max(kernel.len() as u64);
    let dtb_ipa = ram.end - (2 << 20);
    let mut initrd_range = None;
    if let Some(name) = &spec.initrd {
        let data = bundle.get(name).ok_or_else(|| {
            StartError::Scenario(alloc::format!(
                "VM {}: initrd {name} not in the bundle",
                spec.name
            ))
        })?;
        let start = dtb_ipa.saturating_sub(data.len() as u64) & !0xfff;
        if start < kernel_end {
            return Err(resources(alloc::format!(
                "VM {}: kernel and initrd do not fit in {} MiB",
                spec.name,
                size >> 20
            )));
        }
        load(start, data, "initrd")?;
        initrd_range = Some((start, start + data.len() as u64));
    }
    if kernel_end > dtb_ipa {
        return Err(resources(alloc::format!(
            "VM {}: kernel does not fit in {} MiB",
            spec.name,
            size >> 20
        )));
    }
    load(kernel_ipa, kernel, "kernel")?;

    // The VM's clock, where the machine has one to count from.
    let rtc = crate::wallclock::now().map(crate::vdev::rtc::VirtualRtc::new);
    let dt = GuestDt {
        name: spec.name.clone(),
        cpus: spec.cpus,
        ram_base: ram.start,
        ram_size: size,
        gic_dist: (layout::GICD_BASE, layout::GICD_SIZE),
        gic_redist: (
            layout::GICR_BASE,
            layout::GICR_STRIDE * u64::from(spec.cpus),
        ),
        uart: (layout::UART_BASE, layout::UART_SIZE, UART_INTID - 32),
        bootargs: spec.cmdline.clone(),
        initrd: initrd_range,
        pci: assignment.as_ref().map(|a| a.dt.clone()),
        vsmmu: vsmmu.as_ref().map(|_| {
            (
                layout::VSMMU_BASE,
                layout::VSMMU_SIZE,
                VSMMU_IRQS.0 - 32,
                VSMMU_IRQS.1 - 32,
            )
        }),
        counters: Some((layout::COUNTERS_BASE, layout::COUNTERS_SIZE)),
        its: Some((layout::ITS_BASE, layout::ITS_SIZE)),
        seeds: crate::seed::available(),
        rtc: rtc
            .is_some()
            .then_some((layout::RTC_BASE, layout::RTC_SIZE)),
    };
    let blob = guest_fdt::build(&dt)
        .map_err(|e| resources(alloc::format!("VM {}: device tree: {e}", spec.name)))?;
    if blob.len() > 2 << 20 {
        return Err(resources(alloc::format!(
            "VM {}: device tree too large",
            spec.name
        )));
    }
    load(dtb_ipa, &blob, "device tree")?;
    let mut images = alloc::vec![(Ipa(kernel_ipa), Image::Bundle(kernel))];
    if let (Some(name), Some((start, _))) = (&spec.initrd, initrd_range) {
        if let Some(data) = bundle.get(name) {
            images.push((Ipa(start), Image::Bundle(data)));
        }
    }
    let seeds = if dt.seeds {
        Some(guest_fdt::seed_values(&blob).ok_or_else(|| {
            resources(alloc::format!(
                "VM {}: device tree without the seeds it was built with",
                spec.name
            ))
        })?)
    } else {
        None
    };
    images.push((Ipa(dtb_ipa), Image::DeviceTree { blob, seeds }));

    let mpidrs: Vec<u64> = (0..u64::from(spec.cpus)).collect();
    let mut vgic = VGic::new(&mpidrs, NR_SPIS)
        .map_err(|e| resources(alloc::format!("VM {}: virtual GIC: {e:?}", spec.name)))?;
    // The INTID bits the machine's LPI tables were sized for (the ITS
    // driver's choice; without an ITS the vGIC's LPIs have no source).
    vgic.enable_lpis(its::get().map_or(crate::vdev::vgic::lpi::LPI_ID_BITS, |i| {
        i.lock().guest_lpi_id_bits()
    }));
    super::timer::link(&mut vgic)
        .map_err(|e| resources(alloc::format!("VM {}: timer interrupts: {e:?}", spec.name)))?;
    // Only a VM with MSIs to deliver gets vPEs.
    let vpes = match delivery {
        Delivery::Direct if !grants.is_empty() => {
            let set = direct_delivery(&spec.name, &pcpus)?;
            vgic.set_direct_lpis();
            Some(set)
        }
        _ => None,
    };
    info!(
        "VM {}: {} vCPU(s) on physical CPU(s) {:?}, {} MiB RAM at IPA {:#x} (PA {}), VMID {}, kernel {} KiB at {kernel_ipa:#x}{}",
        spec.name,
        spec.cpus,
        pcpus,
        size >> 20,
        ram.start,
        ram_pa,
        vmid.0,
        kernel.len() / 1024,
        initrd_range.map_or(String::new(), |(s, e)| alloc::format!(", initrd {} KiB at {s:#x}", (e - s) / 1024)),
    );
    if let Some(m) = space
        .mappings()
        .iter()
        .find(|m| m.kind == Kind::MsiDoorbell)
    {
        info!(
            "VM {}: MSI doorbell: IPA {} -> PA {} (GITS_TRANSLATER) in its devices' stage 2 only, write-only",
            spec.name, m.ipa, m.pa
        );
    }

    let mut vm = Vm::new(spec.name.clone(), index, guest_ram, controls, pcpus, vgic);
    if vpes.is_some() {
        vm.msi_delivery = Delivery::Direct;
    }
    let (pci, assigned, msix) = match assignment {
        Some(assign::Assignment {
            bus, devices, msix, ..
        }) => match assign::config() {
            Some(cfg) => (PciHostBridge::new(bus, Box::new(cfg)), devices, msix),
            None => (PciHostBridge::empty(), devices, msix),
        },
        None => (PciHostBridge::empty(), Vec::new(), Vec::new()),
    };
    let device_map = |e: BusError| resources(alloc::format!("VM {}: device map: {e}", spec.name));
    vm.bus = standard_bus(spec.cpus, pci, vsmmu.is_some(), true, rtc).map_err(device_map)?;
    for (ipa, len, region) in msix {
        vm.bus
            .insert(ipa, len, Box::new(region))
            .map_err(device_map)?;
    }
    if let Some(v) = vsmmu {
        vm.vsmmu = Some(spin::Mutex::new(Box::new(v)));
    }
    // Every VM has a vITS; it may map the events granted to its functions
    // (and raise LPIs itself with INT).
    let msi_devices = grants
        .values()
        .map(|g| (DeviceId(g.physical), g.events))
        .collect();
    vm.give_its(ItsConfig { devices: grants });
    vm.on_reset = spec.on_reset;
    vm.on_poweroff = spec.on_poweroff;
    Ok(Built {
        vm,
        devices: assigned,
        vmid,
        start: (Ipa(kernel_ipa), dtb_ipa),
        images,
        space,
        msi_devices,
        vpes,
    })
}

/// The vPEs of a VM whose MSIs the GIC delivers directly, one per vCPU on
/// the redistributor of its physical CPU (`pcpus`, by vCPU), with their
/// tables; one line says so.
fn direct_delivery(name: &str, pcpus: &[usize]) -> Result<its::VpeSet, StartError> {
    let its = its::get().ok_or_else(|| resources(alloc::format!("VM {name}: no ITS")))?;
    let set = its.lock().create_vpes(pcpus).map_err(|e| {
        resources(alloc::format!(
            "VM {name}: vPEs for direct MSI delivery: {e}"
        ))
    })?;
    let vpes: Vec<String> = set
        .vpes
        .iter()
        .map(|v| alloc::format!("{} on CPU {}", v.id, v.cpu))
        .collect();
    info!(
        "VM {name}: MSIs delivered directly by the GIC: {}; virtual LPI configuration and \
         pending tables in hypervisor memory",
        vpes.join(", ")
    );
    Ok(set)
}

/// The MSI grants of a VM's assigned functions, by virtual DeviceID (the
/// guest requester ID of virtual 00:(i+1).0, which its `msi-map` keeps),
/// each mapped in the physical ITS with an ITT for its events; one line
/// lists them. None without a physical ITS (the functions then interrupt
/// through INTx only). A function with MSI or MSI-X whose requester ID the
/// host bridge's `msi-map` does not cover is refused.
fn msi_grants(
    name: &str,
    devices: &[AssignedDevice],
    p: &Platform,
) -> Result<BTreeMap<u32, DeviceGrant>, StartError> {
    let mut grants = BTreeMap::new();
    let (Some(its), Some(host), Some(cfg)) = (its::get(), p.pci.as_ref(), assign::config()) else {
        return Ok(grants);
    };
    let phandle = p.gic.its.as_ref().and_then(|n| n.phandle);
    let mut listed = String::new();
    for (i, d) in devices.iter().enumerate() {
        let signalled = pci::message_signalled(cfg, d.phys);
        let device_id = host.device_id(d.phys.rid(), phandle);
        let grant = msi::grant(d.phys, signalled, device_id)
            .map_err(|e| resources(alloc::format!("VM {name}: {e}")))?;
        let (Some(grant), Some(signalled)) = (grant, signalled) else {
            continue;
        };
        its.lock()
            .map_device(DeviceId(grant.physical), grant.events)
            .map_err(|e| {
                resources(alloc::format!(
                    "VM {name}: PCI {}: mapping its MSIs in the ITS: {e}",
                    d.phys
                ))
            })?;
        let virtual_id = assign::guest_requester_id(i);
        listed.push_str(&alloc::format!(
            "{}PCI {} (DeviceID {:#x} -> {virtual_id:#x}): {} event(s) ({})",
            if listed.is_empty() { "" } else { ", " },
            d.phys,
            grant.physical,
            grant.events,
            signalled.kinds()
        ));
        grants.insert(virtual_id, grant);
    }
    if listed.is_empty() {
        listed.push_str("none (INTx only)");
    }
    info!("VM {name}: MSIs granted: {listed}");
    Ok(grants)
}

/// Builds the vSMMU of a VM: it advertises stage 1 only, with what the
/// physical SMMU supports, in front of the VM's assigned functions.
fn vsmmu_for(
    name: &str,
    domain: Option<smmu::domain::DomainId>,
    assignment: Option<&assign::Assignment>,
    mem: GuestRam,
    vmid: Vmid,
) -> Result<VmVsmmu, StartError> {
    let fail = |what: &str| resources(alloc::format!("VM {name}: vSMMU: {what}"));
    let Some(domain) = domain else {
        return Err(fail("needs a physical SMMU with stage 2"));
    };
    let host = crate::drivers::iommu::get().ok_or_else(|| fail("no SMMU"))?;
    let h = host.lock();
    let features = *h.iommu.smmu_ref().features();
    if !features.s1p {
        return Err(fail("the physical SMMU has no stage 1 to nest"));
    }
    let d = h.iommu.domain(domain).ok_or_else(|| fail("no domain"))?;
    let s2 = smmu::domain::s2_config(d, features.cohacc);
    // SubstreamIDs as the physical SMMU allows them (the architectural
    // maximum is 20 bits): guest multi-PASID CD tables are nested as they
    // are, so the physical SMMU is what bounds them.
    const MAX_SSID_BITS: u8 = 20;
    let policy = smmu::vsmmu::VsmmuPolicy::from_physical(&features, IPA_BITS as u8, MAX_SSID_BITS);
    let mut map: BTreeMap<u32, StreamId> = BTreeMap::new();
    if let Some(a) = assignment {
        for (i, dev) in a.devices.iter().enumerate() {
            // Guest requester ID of virtual 00:(i+1).0 = its StreamID.
            map.insert(assign::guest_requester_id(i), dev.sid);
        }
    }
    Ok(VmVsmmu::new(policy, map, mem, domain, vmid, s2, VSMMU_IRQS))
}

/// Builds a VM's IPA space: RAM at `ipa` backed by `pa` and, when the
/// machine has an SMMU and an ITS, the MSI doorbell for its devices; the
/// CPU's table in `cpu_leaves`, the domain's in the largest blocks.
/// Returns the VMID and the space. With an SMMU the VMID is the IOMMU
/// domain's, whose IPA size [`space::domain_ipa_bits`] chooses; the
/// CPU's tables are accounted in `S2_CPU_MEM`, the domain's in the
/// SMMU's.
fn address_space(
    name: &str,
    index: usize,
    ipa: u64,
    pa: smmu::addr::PhysAddr,
    size: u64,
    cpu_leaves: Leaves,
) -> Result<(Vmid, IpaSpace), StartError> {
    let fail = |what: &str, e: &dyn core::fmt::Display| {
        resources(alloc::format!("VM {name}: {what}: {e}"))
    };
    let pa_bits = arch::pa_bits().min(48);
    let ram = Mapping::ram(Ipa(ipa), pa, size);
    let Some(host) = crate::drivers::iommu::get() else {
        let cpu = Stage2::new(&mm::S2_CPU_MEM, IPA_BITS, pa_bits)
            .map_err(|e| fail("stage 2", &e))?
            .with_leaves(cpu_leaves);
        let mut space = IpaSpace::new(cpu, None);
        space
            .map(None, &mm::S2_CPU_MEM, ram)
            .map_err(|e| fail("stage-2 map", &e))?;
        return Ok((Vmid((index + 1) as u16), space));
    };
    let mut h = host.lock();
    let id = h
        .iommu
        .create_domain(space::domain_ipa_bits(ipa + size))
        .map_err(|e| fail("IOMMU domain", &e))?;
    let vmid = h.iommu.domain(id).expect("domain just created").vmid();
    if u32::from(vmid.0) >> arch::vmid_bits() != 0 {
        return Err(fail(
            "VMID",
            &alloc::format!("{} does not fit the CPU's VMID width", vmid.0),
        ));
    }
    let cpu = Stage2::new(&mm::S2_CPU_MEM, IPA_BITS, pa_bits)
        .map_err(|e| fail("stage 2", &e))?
        .with_leaves(cpu_leaves);
    let mut space = IpaSpace::new(cpu, Some(id));
    space
        .map(Some(&mut h.iommu), &mm::S2_CPU_MEM, ram)
        .map_err(|e| fail("stage-2 map", &e))?;
    if let Some(its) = its::get() {
        let page = its.lock().translater_page();
        space
            .map(
                Some(&mut h.iommu),
                &mm::S2_CPU_MEM,
                Mapping::msi_doorbell(page),
            )
            .map_err(|e| fail("MSI doorbell map", &e))?;
    }
    Ok((vmid, space))
}
