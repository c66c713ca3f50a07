//! The VM runtime: builds the VMs a scenario describes, pins each vCPU to
//! its own physical CPU, and handles every trap from EL1.
//!
//! Memory: each VM gets one physically contiguous block of RAM, mapped at
//! its `ram_base` IPA through a stage-2 table. The CPU and the SMMU share
//! that table (one VMID, one IPA space per VM): when the machine has an
//! SMMU the table is an IOMMU domain's, so a device assigned to the VM sees
//! exactly the memory the CPU does, one set of tables is kept consistent,
//! and one VMID tags both TLBs. The VM's map is fixed once built (no
//! ballooning), so the CPU-side TLB maintenance that sharing would
//! otherwise require on every change (the SMMU ignores broadcast TLBIs,
//! CR2.PTM) does not arise; changes later must invalidate both sides. Everything else in the guest's
//! address space is unmapped, so touching it traps here: the emulated
//! devices (UART, GIC) are decoded, anything else gets an external abort.

use super::mmio::{self, MmioAccess};
use super::psci::{self, PsciAction, VcpuPower};
use super::ram::GuestRam;
use super::vuart::VirtualUart;
use crate::arch::exceptions::TrapFrame;
use crate::arch::{self, guest};
use crate::gic;
use crate::guest_fdt::{self, GuestDt};
use crate::mm::{self, Accounted};
use crate::platform::Platform;
use crate::vgic::VGic;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use log::{error, info, warn};
use scenario::guest_layout as layout;
use smmu::addr::Ipa;
use smmu::hw::{PageAllocator, PAGE_SIZE};
use smmu::stage2::{S2Attrs, Stage2};
use spin::{Mutex, Once};

/// Guest RAM, accounted for the footprint report.
pub static GUEST_MEM: Accounted = Accounted::new("guest memory");
/// Physical CPUs this build supports (entry.S stacks).
const MAX_CPUS: usize = 8;
/// IPA size of every VM.
const IPA_BITS: u32 = 40;
/// Bad-access reports printed per VM before they are only counted.
const REPORTS_PER_VM: u32 = 4;
/// The guest UART's interrupt: SPI 1, as on QEMU's virt.
const UART_INTID: u32 = 33;
/// SPIs the virtual GIC implements.
const NR_SPIS: u32 = 32;

const RUNNING: u8 = 0;
const POWERED_OFF: u8 = 1;
const CRASHED: u8 = 2;
const RESET: u8 = 3;

/// One virtual machine.
pub struct Vm {
    /// Its name from the scenario.
    pub name: String,
    ram: Range<u64>,
    controls: guest::GuestControls,
    vcpu_pcpu: Vec<usize>,
    power: Mutex<Vec<VcpuPower>>,
    uart: Mutex<VirtualUart>,
    vgic: Mutex<VGic>,
    state: AtomicU8,
    reports: AtomicU32,
    /// Traps taken from this VM's vCPUs.
    traps: AtomicU64,
    /// Assigned PCI functions and the guest's virtual PCI bus.
    pci: Option<Mutex<super::assign::Assignment>>,
    /// The guest's virtual SMMUv3, if the scenario gives it one.
    vsmmu: Option<Mutex<super::vsmmu::VmVsmmu>>,
    /// Owner of the stage-2 table, kept for as long as the VM may run.
    _space: Space,
}

/// What a physical CPU runs.
struct Slot {
    vm: AtomicUsize,
    vcpu: AtomicUsize,
    /// A pending start: (entry, x0), set by CPU_ON or at boot.
    start: Mutex<Option<(u64, u64)>>,
    /// The frame `guest::run` copies from (static, never on a stack).
    frame: Mutex<TrapFrame>,
}

const NONE: usize = usize::MAX;

static VMS: Once<Vec<Vm>> = Once::new();
static SLOTS: [Slot; MAX_CPUS] = [const {
    Slot {
        vm: AtomicUsize::new(NONE),
        vcpu: AtomicUsize::new(NONE),
        start: Mutex::new(None),
        frame: Mutex::new(TrapFrame::zeroed()),
    }
}; MAX_CPUS];
static CPU_MPIDR: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(NONE) }; MAX_CPUS];
static ALL_OK: AtomicBool = AtomicBool::new(true);
static SMMU_EVENTQ_IRQ: AtomicUsize = AtomicUsize::new(NONE);
static VMS_RUNNING: AtomicUsize = AtomicUsize::new(0);

fn vms() -> &'static [Vm] {
    VMS.get().map_or(&[], |v| v.as_slice())
}

/// Why a scenario could not be started.
#[derive(Debug)]
pub enum StartError {
    /// The bundle or the scenario in it is malformed.
    Scenario(String),
    /// The machine cannot hold what the scenario asks for.
    Resources(String),
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Scenario(s) => write!(f, "bad scenario: {s}"),
            Self::Resources(s) => write!(f, "cannot build the VMs: {s}"),
        }
    }
}

fn resources(msg: impl Into<String>) -> StartError {
    StartError::Resources(msg.into())
}

/// Builds the VMs of the scenario in the boot bundle. Returns false when
/// the bundle has no VMs (a machine-only scenario).
pub fn create(p: &Platform, functions: &[crate::pci::Function]) -> Result<bool, StartError> {
    let Some(region) = &p.initrd else {
        return Ok(false);
    };
    let (base, len) = (region.base as *const u8, region.size as usize);
    // SAFETY: the boot loader put the bundle there (DTB /chosen): RAM mapped
    // by map_everything, reserved from the frame allocator by boot.
    let blob = unsafe { core::slice::from_raw_parts(base, len) };
    let (sc, bundle) = scenario::Scenario::from_bundle(blob)
        .map_err(|e| StartError::Scenario(alloc::format!("{e}")))?;
    if sc.vms.is_empty() {
        return Ok(false);
    }
    let want: usize = sc.vms.iter().map(|v| v.cpus as usize).sum();
    let have = p.cpus.len().min(MAX_CPUS);
    if want > have {
        return Err(resources(alloc::format!(
            "{want} vCPUs need {want} physical CPUs, the machine has {have}"
        )));
    }
    for (i, &mpidr) in p.cpus.iter().take(MAX_CPUS).enumerate() {
        CPU_MPIDR[i].store(mpidr as usize, Ordering::Relaxed);
    }

    let mut vms = Vec::new();
    let mut next_pcpu = 0;
    for (index, spec) in sc.vms.iter().enumerate() {
        let pcpus: Vec<usize> = (next_pcpu..next_pcpu + spec.cpus as usize).collect();
        next_pcpu += spec.cpus as usize;
        let vm = build_vm(index, spec, pcpus, &bundle, p, functions)?;
        vms.push(vm);
    }
    VMS_RUNNING.store(vms.len(), Ordering::SeqCst);
    VMS.call_once(|| vms);
    Ok(true)
}

fn build_vm(
    index: usize,
    spec: &scenario::VmSpec,
    pcpus: Vec<usize>,
    bundle: &scenario::bundle::Bundle<'_>,
    p: &Platform,
    functions: &[crate::pci::Function],
) -> Result<Vm, StartError> {
    let size = spec.memory;
    let ram = spec.ram_base..spec.ram_base + size;
    let pages = (size / PAGE_SIZE as u64) as usize;
    let ram_pa = GUEST_MEM.alloc_pages(pages, 2 << 20).ok_or_else(|| {
        resources(alloc::format!(
            "VM {}: no {} MiB of contiguous RAM left",
            spec.name,
            size >> 20
        ))
    })?;

    let (vmid, cfg, space) = address_space(&spec.name, index, ram.start, ram_pa, size)?;
    let vmid = u64::from(vmid);
    let assignment = if spec.devices.is_empty() {
        None
    } else {
        let domain = match &space {
            Space::Domain(id) => Some(*id),
            Space::Own(_) => None,
        };
        Some(
            super::assign::assign(&spec.name, index, &spec.devices, functions, p, domain)
                .map_err(|e| resources(alloc::format!("VM {}: {e}", spec.name)))?,
        )
    };
    let controls = guest::GuestControls {
        vttbr: cfg.root.raw() | (vmid << 48),
        vtcr: arch::vtcr(cfg.t0sz, cfg.sl0, cfg.ps),
        vmpidr: 0,
    };

    // Images.
    let kernel = bundle.get(&spec.kernel).ok_or_else(|| {
        StartError::Scenario(alloc::format!(
            "VM {}: kernel {} not in the bundle",
            spec.name,
            spec.kernel
        ))
    })?;
    let vsmmu = if spec.vsmmu {
        Some(vsmmu_for(
            &spec.name,
            &space,
            assignment.as_ref(),
            &ram,
            ram_pa.raw(),
            vmid,
        )?)
    } else {
        None
    };
    // SAFETY: the VM's RAM block was just allocated for it alone, and the
    // EL2 identity map covers all RAM for the hypervisor's lifetime.
    let guest_ram = unsafe { GuestRam::new(ram.clone(), ram_pa.raw() as usize) };
    let load = |ipa: u64, data: &[u8], what: &str| {
        guest_ram
            .write(ipa, data)
            .map_err(|e| resources(alloc::format!("VM {}: {what}: {e}", spec.name)))
    };
    let (text_offset, image_size) = image_header(kernel);
    let kernel_ipa = ram.start + text_offset;
    let dtb_ipa = ram.end - (2 << 20);
    let mut initrd_range = None;
    if let Some(name) = &spec.initrd {
        let data = bundle.get(name).ok_or_else(|| {
            StartError::Scenario(alloc::format!(
                "VM {}: initrd {name} not in the bundle",
                spec.name
            ))
        })?;
        let start = (dtb_ipa - data.len() as u64) & !0xfff;
        if start < kernel_ipa + image_size.max(kernel.len() as u64) {
            return Err(resources(alloc::format!(
                "VM {}: kernel and initrd do not fit in {} MiB",
                spec.name,
                size >> 20
            )));
        }
        load(start, data, "initrd")?;
        initrd_range = Some((start, start + data.len() as u64));
    }
    if kernel_ipa + image_size.max(kernel.len() as u64) > dtb_ipa {
        return Err(resources(alloc::format!(
            "VM {}: kernel does not fit in {} MiB",
            spec.name,
            size >> 20
        )));
    }
    load(kernel_ipa, kernel, "kernel")?;

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
        vsmmu: vsmmu.as_ref().map(|v| {
            (
                layout::VSMMU_BASE,
                layout::VSMMU_SIZE,
                v.irqs.0 - 32,
                v.irqs.1 - 32,
            )
        }),
        counters: Some((layout::COUNTERS_BASE, layout::COUNTERS_SIZE)),
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

    let mpidrs: Vec<u64> = (0..u64::from(spec.cpus)).collect();
    let vgic = VGic::new(&mpidrs, NR_SPIS)
        .map_err(|e| resources(alloc::format!("VM {}: virtual GIC: {e:?}", spec.name)))?;
    let mut power = alloc::vec![VcpuPower::Off; spec.cpus as usize];
    power[0] = VcpuPower::OnPending;
    info!(
        "VM {}: {} vCPU(s) on physical CPU(s) {:?}, {} MiB RAM at IPA {:#x} (PA {}), VMID {vmid}, kernel {} KiB at {kernel_ipa:#x}{}",
        spec.name,
        spec.cpus,
        pcpus,
        size >> 20,
        ram.start,
        ram_pa,
        kernel.len() / 1024,
        initrd_range.map_or(String::new(), |(s, e)| alloc::format!(", initrd {} KiB at {s:#x}", (e - s) / 1024)),
    );
    // vCPU 0 starts at the kernel entry with x0 = DTB.
    *SLOTS[pcpus[0]].start.lock() = Some((kernel_ipa, dtb_ipa));
    for (v, &pc) in pcpus.iter().enumerate() {
        SLOTS[pc].vm.store(index, Ordering::SeqCst);
        SLOTS[pc].vcpu.store(v, Ordering::SeqCst);
    }
    Ok(Vm {
        name: spec.name.clone(),
        ram,
        controls,
        vcpu_pcpu: pcpus,
        power: Mutex::new(power),
        uart: Mutex::new(VirtualUart::new()),
        vgic: Mutex::new(vgic),
        state: AtomicU8::new(RUNNING),
        reports: AtomicU32::new(0),
        traps: AtomicU64::new(0),
        pci: assignment.map(Mutex::new),
        vsmmu: vsmmu.map(Mutex::new),
        _space: space,
    })
}

/// Guest INTIDs of the vSMMU's event-queue and global-error interrupts.
const VSMMU_IRQS: (u32, u32) = (48, 49);

/// Builds the vSMMU of a VM: it advertises stage 1 only, with what the
/// physical SMMU supports, in front of the VM's assigned functions.
fn vsmmu_for(
    name: &str,
    space: &Space,
    assignment: Option<&super::assign::Assignment>,
    ram: &Range<u64>,
    ram_pa: u64,
    vmid: u64,
) -> Result<super::vsmmu::VmVsmmu, StartError> {
    let fail = |what: &str| resources(alloc::format!("VM {name}: vSMMU: {what}"));
    let Space::Domain(domain) = space else {
        return Err(fail("needs a physical SMMU with stage 2"));
    };
    let host = crate::iommu::get().ok_or_else(|| fail("no SMMU"))?;
    let h = host.lock();
    let features = *h.iommu.smmu_ref().features();
    if !features.s1p {
        return Err(fail("the physical SMMU has no stage 1 to nest"));
    }
    let d = h.iommu.domain(*domain).ok_or_else(|| fail("no domain"))?;
    let s2 = smmu::domain::s2_config(d, features.cohacc);
    // SubstreamIDs as the physical SMMU allows them (the architectural
    // maximum is 20 bits): guest multi-PASID CD tables are nested as they
    // are, so the physical SMMU is what bounds them.
    const MAX_SSID_BITS: u8 = 20;
    let policy = smmu::vsmmu::VsmmuPolicy::from_physical(&features, IPA_BITS as u8, MAX_SSID_BITS);
    let mut map = BTreeMap::new();
    if let Some(a) = assignment {
        for (i, dev) in a.devices.iter().enumerate() {
            // Guest requester ID of virtual 00:(i+1).0 = its StreamID.
            map.insert(((i as u32) + 1) << 3, dev.sid);
        }
    }
    // SAFETY: as for the images: the VM's own block, identity-mapped for
    // the hypervisor's lifetime.
    let mem = unsafe { GuestRam::new(ram.clone(), ram_pa as usize) };
    Ok(super::vsmmu::VmVsmmu::new(
        policy,
        map,
        mem,
        *domain,
        smmu::addr::Vmid(vmid as u16),
        s2,
        VSMMU_IRQS,
    ))
}

/// Who owns a VM's stage-2 table.
enum Space {
    /// An IOMMU domain's: the SMMU walks the same table for the VM's
    /// devices, under the same VMID.
    Domain(smmu::domain::DomainId),
    /// The VM's own (no SMMU on this machine).
    Own(#[allow(dead_code)] Box<Stage2>),
}

/// Builds a VM's IPA space: RAM at `ipa` backed by `pa`. Returns the VMID,
/// the table's configuration for VTTBR/VTCR, and its owner.
fn address_space(
    name: &str,
    index: usize,
    ipa: u64,
    pa: smmu::addr::PhysAddr,
    size: u64,
) -> Result<(u16, smmu::stage2::Stage2Config, Space), StartError> {
    let fail = |what: &str, e: &dyn core::fmt::Display| {
        resources(alloc::format!("VM {name}: {what}: {e}"))
    };
    if let Some(host) = crate::iommu::get() {
        let mut h = host.lock();
        let id = h
            .iommu
            .create_domain(IPA_BITS)
            .map_err(|e| fail("IOMMU domain", &e))?;
        h.iommu
            .map(id, Ipa(ipa), pa, size, S2Attrs::NORMAL_RWX)
            .map_err(|e| fail("stage-2 map", &e))?;
        let d = h.iommu.domain(id).expect("domain just created");
        let vmid = d.vmid().0;
        if u32::from(vmid) >> arch::vmid_bits() != 0 {
            return Err(fail(
                "VMID",
                &alloc::format!("{vmid} does not fit the CPU's VMID width"),
            ));
        }
        return Ok((vmid, d.stage2().config(), Space::Domain(id)));
    }
    let mut s2 = Stage2::new(&mm::S2_CPU_MEM, IPA_BITS, arch::pa_bits().min(48))
        .map_err(|e| fail("stage 2", &e))?;
    s2.map(&mm::S2_CPU_MEM, Ipa(ipa), pa, size, S2Attrs::NORMAL_RWX)
        .map_err(|e| fail("stage-2 map", &e))?;
    let cfg = s2.config();
    Ok(((index + 1) as u16, cfg, Space::Own(Box::new(s2))))
}

/// text_offset and image_size of an arm64 Image header (Linux booting.rst);
/// (0x80000, 0) when the header is absent or old.
fn image_header(image: &[u8]) -> (u64, u64) {
    let word = |o: usize| {
        image
            .get(o..o + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let magic = image.get(56..60) == Some(b"ARM\x64");
    if magic && word(16) != 0 {
        (word(8), word(16))
    } else {
        (0x80000, 0)
    }
}

/// Starts every physical CPU that hosts a vCPU and enters this CPU's vCPU.
pub fn start(p: &Platform) -> ! {
    UART_IRQ.call_once(|| p.uart_irq);
    // SAFETY: the GIC from the DTB, mapped as a device in map_everything;
    // only the hypervisor programs it.
    unsafe { gic::init(&p.gic) };
    // SMMU faults are reported as they come, by the boot CPU.
    if let Some(irq) = crate::iommu::get().and_then(|h| h.lock().eventq_irq) {
        gic::enable_spi(
            irq.intid,
            CPU_MPIDR[0].load(Ordering::SeqCst) as u64,
            irq.edge,
        );
        SMMU_EVENTQ_IRQ.store(irq.intid as usize, Ordering::SeqCst);
    }
    // Assigned INTx lines go to the physical CPU of their VM's vCPU 0.
    for (&pintid, &(vm_i, vintid)) in super::assign::LINE_OWNERS.lock().iter() {
        let pc = vms()[vm_i].vcpu_pcpu[0];
        if let Err(e) = vms()[vm_i].vgic.lock().set_resample(vintid, true) {
            warn!("VM {}: INTx INTID {vintid}: {e:?}", vms()[vm_i].name);
        }
        gic::enable_spi(pintid, CPU_MPIDR[pc].load(Ordering::SeqCst) as u64, false);
    }
    let conduit = p.psci;
    for pc in 1..MAX_CPUS {
        if SLOTS[pc].vm.load(Ordering::SeqCst) == NONE {
            continue;
        }
        let mpidr = CPU_MPIDR[pc].load(Ordering::SeqCst) as u64;
        match conduit {
            Some(c) => {
                if let Err(e) = arch::psci::cpu_on(
                    c,
                    mpidr,
                    arch::secondary_entry as *const () as u64,
                    pc as u64,
                ) {
                    error!("physical CPU {pc}: CPU_ON failed: {e:?}");
                }
            }
            None => error!("no PSCI: physical CPU {pc} cannot host its vCPU"),
        }
    }
    cpu_main(0)
}

/// Runs on a physical CPU that hosts a vCPU (boot CPU or secondary).
pub fn cpu_main(pc: usize) -> ! {
    gic::init_cpu(arch::mpidr());
    if pc == 0 {
        if let Some(irq) = UART_IRQ.get() {
            crate::console::enable_input_irq(*irq);
        }
    }
    idle(pc)
}

/// The physical console's interrupt, from the platform.
static UART_IRQ: Once<Option<crate::platform::Irq>> = Once::new();

/// Whether this physical CPU hosts a vCPU.
pub fn hosts_vcpu(pc: usize) -> bool {
    pc < MAX_CPUS && SLOTS[pc].vm.load(Ordering::SeqCst) != NONE
}

/// Waits for work on this physical CPU: a vCPU to start, interrupts to
/// forward. Never returns.
fn idle(pc: usize) -> ! {
    loop {
        if let Some((entry, x0)) = SLOTS[pc].start.lock().take() {
            enter(pc, entry, x0);
        }
        aarch64_cpu::asm::wfi();
        while handle_irq(pc) {}
    }
}

/// Enters this CPU's vCPU at `entry` with `x0`.
fn enter(pc: usize, entry: u64, x0: u64) -> ! {
    let (vm_i, vcpu) = (
        SLOTS[pc].vm.load(Ordering::SeqCst),
        SLOTS[pc].vcpu.load(Ordering::SeqCst),
    );
    let vm = &vms()[vm_i];
    if vm.state.load(Ordering::SeqCst) != RUNNING {
        idle_forever();
    }
    vm.power.lock()[vcpu] = VcpuPower::On;
    let mut c = vm.controls;
    c.vmpidr = (1 << 31) | vcpu as u64;
    // SAFETY: the VM's stage-2 table maps only its RAM and lives in VMS for
    // the hypervisor's lifetime.
    unsafe { guest::configure(&c) };
    crate::vgic_hw::init_cpu();
    let frame = {
        let mut f = SLOTS[pc].frame.lock();
        *f = TrapFrame::zeroed();
        f.x[0] = x0;
        f.elr = entry;
        f.spsr = guest::SPSR_EL1H;
        &*f as *const TrapFrame
    };
    // SAFETY: the frame is in static memory (SLOTS), written above and not
    // touched again until this CPU's next vCPU start.
    unsafe { guest::run(&*frame) }
}

fn idle_forever() -> ! {
    // No vCPU here any more: no maintenance interrupts for its leftovers.
    crate::vgic_hw::off();
    loop {
        aarch64_cpu::asm::wfi();
        while handle_irq(guest::cpu_index()) {}
    }
}

/// Handles a trap from the guest running on this CPU (`vector`: 8 sync,
/// 9 IRQ, 10 FIQ, 11 SError, from `vectors.S`).
pub fn handle_trap(frame: &mut TrapFrame, vector: u64) {
    let pc = guest::cpu_index();
    let vm_i = SLOTS[pc].vm.load(Ordering::Relaxed);
    let vcpu = SLOTS[pc].vcpu.load(Ordering::Relaxed);
    let Some(vm) = vms().get(vm_i) else {
        panic!("trap from EL1 on CPU {pc}, which runs no vCPU");
    };
    vm.traps.fetch_add(1, Ordering::Relaxed);
    match vector {
        8 => handle_sync(vm, vcpu, frame),
        9 | 10 => while handle_irq(pc) {},
        _ => {
            error!(
                "VM {}: vCPU {vcpu}: SError (ESR {:#x}): stopping the VM",
                vm.name,
                guest::esr()
            );
            stop_vm(vm, CRASHED);
        }
    }
    if vm.state.load(Ordering::SeqCst) != RUNNING {
        vm.power.lock()[vcpu] = VcpuPower::Off;
        idle_forever();
    }
    let fx = crate::vgic_hw::flush(&mut vm.vgic.lock(), vcpu);
    apply(vm, fx);
    resample_lines(vm_i, vm);
}

fn handle_sync(vm: &Vm, vcpu: usize, frame: &mut TrapFrame) {
    let esr = guest::esr();
    match (esr >> 26) & 0x3f {
        0x01 => {
            // WFI: sleep until a physical interrupt (the vtimer, a kick),
            // unless the guest already has an interrupt to take: one the
            // model holds, or one already in a list register (a physical
            // WFI at EL2 does not wake for those).
            let fx = crate::vgic_hw::flush(&mut vm.vgic.lock(), vcpu);
            apply(vm, fx);
            if !crate::vgic_hw::lr_pending()
                && !vm.vgic.lock().has_pending(vcpu)
                && !lines_waiting(SLOTS[guest::cpu_index()].vm.load(Ordering::Relaxed))
            {
                aarch64_cpu::asm::wfi();
            }
            guest::skip_instruction(frame);
        }
        0x16 => psci_call(vm, vcpu, frame),
        0x17 => {
            guest::skip_instruction(frame);
            psci_call(vm, vcpu, frame);
        }
        0x18 => sysreg(vm, vcpu, frame, esr),
        0x24 => data_abort(vm, vcpu, frame, esr),
        0x20 => {
            report(
                vm,
                vcpu,
                frame,
                alloc::format!(
                    "instruction fetch from IPA {:#x}",
                    guest::hpfar() << 8 & !0xfff
                ),
            );
            guest::inject_sync(frame, (0x20 << 26) | (1 << 25) | 0x10, frame.elr);
        }
        ec => {
            if vm.reports.fetch_add(1, Ordering::Relaxed) < REPORTS_PER_VM {
                warn!("VM {}: vCPU {vcpu}: unhandled trap EC {ec:#x} at pc {:#x}: undefined instruction injected", vm.name, frame.elr);
            }
            guest::inject_undef(frame);
        }
    }
}

fn report(vm: &Vm, vcpu: usize, frame: &TrapFrame, what: String) {
    let n = vm.reports.fetch_add(1, Ordering::Relaxed);
    if n < REPORTS_PER_VM {
        warn!(
            "VM {}: vCPU {vcpu}: {what} outside its memory and devices (pc {:#x}): external abort injected",
            vm.name, frame.elr
        );
    } else if n == REPORTS_PER_VM {
        warn!(
            "VM {}: keeps making bad accesses: further ones only counted",
            vm.name
        );
    }
}

fn data_abort(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, esr: u64) {
    let far = arch::far();
    let access = match mmio::decode(esr, guest::hpfar(), far) {
        Ok(a) => a,
        Err(e) => {
            let ipa = (guest::hpfar() >> 4 << 12) | (far & 0xfff);
            report(
                vm,
                vcpu,
                frame,
                alloc::format!("access ({e:?}) at IPA {ipa:#x}"),
            );
            guest::inject_data_abort(frame, far);
            return;
        }
    };
    let value = if access.write {
        access.store_value(reg(frame, access.reg))
    } else {
        0
    };
    match emulate(vm, &access, value) {
        Some(result) => {
            if !access.write {
                set_reg(frame, access.reg, access.load_value(result));
            }
            guest::skip_instruction(frame);
        }
        None => {
            let rw = if access.write { "write" } else { "read" };
            report(
                vm,
                vcpu,
                frame,
                alloc::format!("{}-byte {rw} at IPA {:#x}", access.size, access.ipa),
            );
            guest::inject_data_abort(frame, far);
        }
    }
}

/// Emulates one access to a device of the VM; None if nothing is there.
fn emulate(vm: &Vm, a: &MmioAccess, value: u64) -> Option<u64> {
    let ipa = a.ipa;
    let gicr_end = layout::GICR_BASE + layout::GICR_STRIDE * vm.vcpu_pcpu.len() as u64;
    if (layout::UART_BASE..layout::UART_BASE + layout::UART_SIZE).contains(&ipa) {
        let off = ipa - layout::UART_BASE;
        let mut uart = vm.uart.lock();
        let result = if a.write {
            if let Some(line) = uart.write(off, a.size, value).line {
                print_line(vm, &line);
            }
            0
        } else {
            uart.read(off, a.size)
        };
        let level = uart.irq_level();
        drop(uart);
        let fx = vm.vgic.lock().set_level(UART_INTID, 0, level);
        if let Ok(fx) = fx {
            apply(vm, fx);
        }
        Some(result)
    } else if (layout::GICD_BASE..layout::GICD_BASE + layout::GICD_SIZE).contains(&ipa) {
        let off = ipa - layout::GICD_BASE;
        let mut g = vm.vgic.lock();
        if a.write {
            let fx = g.dist_write(off, a.size, value);
            drop(g);
            apply(vm, fx);
            Some(0)
        } else {
            Some(g.dist_read(off, a.size))
        }
    } else if (layout::GICR_BASE..gicr_end).contains(&ipa) {
        let off = ipa - layout::GICR_BASE;
        let (target, frame_off) = (
            (off / layout::GICR_STRIDE) as usize,
            off % layout::GICR_STRIDE,
        );
        let mut g = vm.vgic.lock();
        if a.write {
            let fx = g.redist_write(target, frame_off, a.size, value);
            drop(g);
            apply(vm, fx);
            Some(0)
        } else {
            Some(g.redist_read(target, frame_off, a.size))
        }
    } else if let Some(v) = vm
        .vsmmu
        .as_ref()
        .filter(|_| (layout::VSMMU_BASE..layout::VSMMU_BASE + layout::VSMMU_SIZE).contains(&ipa))
    {
        let (result, irqs) = v
            .lock()
            .access(ipa - layout::VSMMU_BASE, a.size, a.write, value);
        for intid in irqs {
            if let Ok(fx) = vm.vgic.lock().inject_edge(intid, 0) {
                apply(vm, fx);
            }
        }
        Some(result)
    } else if (layout::COUNTERS_BASE..layout::COUNTERS_BASE + layout::COUNTERS_SIZE).contains(&ipa)
    {
        // Read-only: writes are ignored.
        Some(if a.write {
            0
        } else {
            counters_read(vm, ipa - layout::COUNTERS_BASE, a.size)
        })
    } else if (layout::PCI_ECAM_BASE..layout::PCI_ECAM_BASE + layout::PCI_ECAM_SIZE).contains(&ipa)
    {
        let off = ipa - layout::PCI_ECAM_BASE;
        let (Some(pci), Some(cfg)) = (&vm.pci, super::assign::config()) else {
            // No devices: an empty bus (all-ones reads, writes ignored).
            return Some(if a.write { 0 } else { u64::MAX });
        };
        let mut pci = pci.lock();
        Some(if a.write {
            pci.bus.write(cfg, off, a.size, value);
            0
        } else {
            pci.bus.read(cfg, off, a.size)
        })
    } else {
        None
    }
}

/// The VM's counters page (`smmuhyp,vm-counters` in its device tree): 64-bit
/// little-endian registers, read-only, also readable as 32-bit halves.
///
/// | offset | value |
/// |---|---|
/// | 0x00 | traps taken from the VM so far (all vCPUs) |
/// | 0x08 | vSMMU: guest commands consumed (0 without a vSMMU) |
/// | 0x10 | vSMMU: physical commands they became |
///
/// Anything else, and misaligned or odd-sized accesses, read as zero.
fn counters_read(vm: &Vm, offset: u64, size: u8) -> u64 {
    let (guest, phys) = vm.vsmmu.as_ref().map_or((0, 0), |v| v.lock().stats);
    let values = [vm.traps.load(Ordering::Relaxed), guest, phys];
    let word = |i: u64| values.get(i as usize).copied().unwrap_or(0);
    match size {
        8 if offset.is_multiple_of(8) => word(offset / 8),
        4 if offset.is_multiple_of(4) => {
            let v = word(offset / 8);
            if offset.is_multiple_of(8) {
                v & 0xffff_ffff
            } else {
                v >> 32
            }
        }
        _ => 0,
    }
}

fn print_line(vm: &Vm, line: &[u8]) {
    let text = core::str::from_utf8(line).unwrap_or("<non-UTF-8 output>");
    crate::console::write_fmt(format_args!("[{}] {}\n", vm.name, text));
}

fn reg(frame: &TrapFrame, r: u8) -> u64 {
    if r == 31 {
        0
    } else {
        frame.x[r as usize]
    }
}

fn set_reg(frame: &mut TrapFrame, r: u8, v: u64) {
    if r != 31 {
        frame.x[r as usize] = v;
    }
}

fn sysreg(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, esr: u64) {
    let iss = esr & 0x1ff_ffff;
    let read = iss & 1 == 1;
    let rt = ((iss >> 5) & 0x1f) as u8;
    // Op0, Op2, Op1, CRn, CRm with Rt and direction masked out.
    let id = iss & !(0x1f << 5) & !1;
    // ICC_SGI1R_EL1: Op0=3 Op1=0 CRn=12 CRm=11 Op2=5.
    const ICC_SGI1R: u64 = (3 << 20) | (5 << 17) | (12 << 10) | (11 << 1);
    if id == ICC_SGI1R && !read {
        let value = reg(frame, rt);

        let fx = vm.vgic.lock().send_sgi(vcpu, value);
        apply(vm, fx);
    } else {
        if vm.reports.fetch_add(1, Ordering::Relaxed) < REPORTS_PER_VM {
            warn!("VM {}: vCPU {vcpu}: trapped system register access (ISS {iss:#x}) at pc {:#x}: read as zero / write ignored", vm.name, frame.elr);
        }
        if read {
            set_reg(frame, rt, 0);
        }
    }
    guest::skip_instruction(frame);
}

fn psci_call(vm: &Vm, vcpu: usize, frame: &mut TrapFrame) {
    let x = [frame.x[0], frame.x[1], frame.x[2], frame.x[3]];
    let action = {
        let power = vm.power.lock();
        psci::handle(x, &power, vm.ram.clone())
    };
    match action {
        PsciAction::Return(v) => frame.x[0] = v,
        PsciAction::CpuOn {
            vcpu: target,
            entry,
            context,
        } => {
            vm.power.lock()[target] = VcpuPower::OnPending;
            let pc = vm.vcpu_pcpu[target];
            *SLOTS[pc].start.lock() = Some((entry, context));
            gic::send_sgi(CPU_MPIDR[pc].load(Ordering::SeqCst) as u64, gic::SGI_KICK);
            frame.x[0] = 0;
        }
        PsciAction::CpuOff => {
            vm.power.lock()[vcpu] = VcpuPower::Off;
            idle(guest::cpu_index());
        }
        PsciAction::Suspend => {
            aarch64_cpu::asm::wfi();
            frame.x[0] = 0;
        }
        PsciAction::SystemOff => {
            info!("VM {}: powered off", vm.name);
            stop_vm(vm, POWERED_OFF);
        }
        PsciAction::SystemReset => {
            warn!(
                "VM {}: reset requested: the VM is stopped (restart is not supported)",
                vm.name
            );
            stop_vm(vm, RESET);
        }
    }
}

/// Stops a VM: every vCPU parks at its next trap (kicked now); when it was
/// the last VM running, the machine stops with the overall result.
fn stop_vm(vm: &Vm, how: u8) {
    if vm
        .state
        .compare_exchange(RUNNING, how, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return;
    }
    if let Some(line) = vm.uart.lock().take_partial_line() {
        print_line(vm, &line);
    }
    if how != POWERED_OFF {
        ALL_OK.store(false, Ordering::SeqCst);
    }
    if let Some(pci) = &vm.pci {
        // Bus mastering off and streams aborting before anything else.
        let devices = &pci.lock().devices;
        if let Some(h) = crate::iommu::get() {
            let mut h = h.lock();
            h.report_events();
            for d in devices.iter() {
                let n = h.faults_of(d.sid);
                if n > 0 {
                    warn!(
                        "VM {}: PCI {} (sid {}) made {n} faulting DMA accesses in all",
                        vm.name, d.phys, d.sid
                    );
                }
            }
        }
        super::assign::release(devices, smmu::addr::Vmid((vm.controls.vttbr >> 48) as u16));
        info!(
            "VM {}: its devices are stopped: bus mastering off, streams abort, TLBs invalidated",
            vm.name
        );
    }
    let me = guest::cpu_index();
    for &pc in &vm.vcpu_pcpu {
        if pc != me {
            gic::send_sgi(CPU_MPIDR[pc].load(Ordering::SeqCst) as u64, gic::SGI_KICK);
        }
    }
    let traps = vm.traps.load(Ordering::Relaxed);
    match &vm.vsmmu {
        Some(v) => {
            let (guest, phys) = v.lock().stats;
            info!(
                "VM {}: {traps} traps; vSMMU: {guest} guest commands -> {phys} physical commands",
                vm.name
            );
        }
        None => info!("VM {}: {traps} traps", vm.name),
    }
    let bad = vm.reports.load(Ordering::Relaxed);
    if bad > 0 {
        info!(
            "VM {}: {bad} bad accesses or unhandled traps in all",
            vm.name
        );
    }
    if VMS_RUNNING.fetch_sub(1, Ordering::SeqCst) == 1 {
        let ok = ALL_OK.load(Ordering::SeqCst);
        info!(
            "all VMs have stopped ({})",
            if ok {
                "all powered off cleanly"
            } else {
                "some failed"
            }
        );
        crate::stop(ok);
    }
}

/// Carries out what a vGIC operation asks: kick the vCPUs whose list
/// registers must be refilled, deactivate physical interrupts the guest
/// gave up (only possible on the CPU that holds them: this one).
fn apply(vm: &Vm, fx: crate::vgic::Effects) {
    let me = guest::cpu_index();
    for v in fx.kicked() {
        if let Some(&pc) = vm.vcpu_pcpu.get(v) {
            if pc != me {
                gic::send_sgi(CPU_MPIDR[pc].load(Ordering::SeqCst) as u64, gic::SGI_KICK);
            }
        }
    }
    for d in fx.deactivations() {
        if vm.vcpu_pcpu.get(d.vcpu) == Some(&me) {
            gic::deactivate(d.pintid);
        }
    }
}

/// Takes one pending physical interrupt; false when none was pending.
fn handle_irq(pc: usize) -> bool {
    let intid = gic::ack();
    if intid >= gic::SPECIAL {
        return false;
    }
    if intid == gic::PPI_MAINTENANCE {
        // List-register underflow, or a deactivation the hypervisor asked
        // to hear about (ICH_LR.EOI). Its condition holds until the list
        // registers are rewritten on the way back to the guest, so it is
        // pending again at once: stop the caller's loop here, or it would
        // take it forever.
        gic::eoi(intid);
        gic::deactivate(intid);
        return false;
    }
    let vm_i = SLOTS[pc].vm.load(Ordering::Relaxed);
    let vcpu = SLOTS[pc].vcpu.load(Ordering::Relaxed);
    match intid {
        gic::PPI_VTIMER => {
            // The guest's virtual timer fired. Mask it at its source (the
            // guest's timer handler reprograms it, which unmasks it), so the
            // physical interrupt can be deactivated at once, and give the
            // guest the virtual interrupt.
            let fired = guest::take_vtimer();
            gic::eoi(intid);
            gic::deactivate(intid);
            if let Some(vm) = vms().get(vm_i).filter(|_| fired) {
                if let Ok(fx) = vm.vgic.lock().inject_edge(gic::PPI_VTIMER, vcpu) {
                    apply(vm, fx);
                }
            }
        }
        _ if intid as usize == SMMU_EVENTQ_IRQ.load(Ordering::Relaxed) => {
            gic::eoi(intid);
            gic::deactivate(intid);
            if let Some(h) = crate::iommu::get() {
                // Drain first, then hand stage-1 faults of nested streams to
                // their guest (without holding the IOMMU lock, which the
                // vSMMU takes), then report the rest as the hypervisor's.
                let events = h.lock().drain_events();
                let rest: Vec<_> = events
                    .into_iter()
                    .filter(|e| !forward_to_guest(e))
                    .collect();
                h.lock().report(&rest);
            }
        }
        _ if intid >= 32 && super::assign::LINE_OWNERS.lock().contains_key(&intid) => {
            forward_line(intid);
        }
        _ if Some(intid) == crate::console::input_intid() => {
            gic::eoi(intid);
            gic::deactivate(intid);
            console_input();
        }
        _ => {
            // A kick: nothing to do but let the caller re-check the
            // vCPU's state and refill its list registers.
            gic::eoi(intid);
            gic::deactivate(intid);
        }
    }
    true
}

/// Gives a physical SMMU event to the VM whose vSMMU owns it (stage-1
/// faults of its nested streams); false when it is the hypervisor's.
fn forward_to_guest(e: &smmu::event::Event) -> bool {
    for vm in vms() {
        let Some(v) = &vm.vsmmu else { continue };
        let mut v = v.lock();
        if !v.owns_event(e) {
            continue;
        }
        let irq = v.inject_fault(e);
        drop(v);
        if let Some(intid) = irq {
            if let Ok(fx) = vm.vgic.lock().inject_edge(intid, 0) {
                apply(vm, fx);
            }
        }
        return true;
    }
    false
}

/// Physical INTx lines masked while their guest handles them, each with
/// the counter value before which it stays masked although its guest is
/// done (set when the line was found still asserted then).
static MASKED_LINES: Mutex<BTreeMap<u32, Option<u64>>> = Mutex::new(BTreeMap::new());

/// How long a line stays masked when its guest has finished with it but
/// the device still asserts it, in microseconds. A level line should
/// interrupt again at once; but a device can hold its line after the guest
/// found nothing to do (QEMU's NVMe with shadow doorbells does: it learns
/// of the guest's completion-queue head late), and re-presenting at once
/// makes an interrupt storm that starves the guest. A line the guest's
/// handler deasserts, the usual case, is unmasked at once.
const STILL_ASSERTED_BACKOFF_US: u64 = 50;

/// A passed-through device's level-triggered INTx fired: mask it at the
/// distributor (so it cannot storm while the guest runs its handler),
/// finish it physically, and make the guest's virtual interrupt pending
/// once. The virtual line is not held high: the device's line is masked,
/// so its level is unknown until the guest is done and it is resampled
/// (a line held high would be presented again after each of the guest's
/// EOIs: a storm of interrupts its handler finds nothing for).
fn forward_line(pintid: u32) {
    gic::eoi(pintid);
    gic::set_spi_enabled(pintid, false);
    gic::deactivate(pintid);
    MASKED_LINES.lock().insert(pintid, None);
    let owner = super::assign::LINE_OWNERS.lock().get(&pintid).copied();
    if let Some((vm_i, vintid)) = owner {
        let vm = &vms()[vm_i];
        if let Ok(fx) = vm.vgic.lock().inject_edge(vintid, 0) {
            apply(vm, fx);
        }
    }
}

/// Unmasks the VM's masked INTx lines whose virtual interrupt the guest
/// has finished with (neither pending nor active): at once if the device
/// no longer asserts the line, else after [`STILL_ASSERTED_BACKOFF_US`]
/// (then it fires again). Runs at every exit; the guest's deactivation of
/// such an interrupt exits at once (ICH_LR.EOI, see `VGic::set_resample`).
fn resample_lines(vm_i: usize, vm: &Vm) {
    let mut masked = MASKED_LINES.lock();
    if masked.is_empty() {
        return;
    }
    let owners = super::assign::LINE_OWNERS.lock();
    let now = arch::counter();
    let mut done = Vec::new();
    for (&pintid, deadline) in masked.iter_mut() {
        let Some(&(owner, vintid)) = owners.get(&pintid) else {
            continue;
        };
        if owner != vm_i {
            continue;
        }
        let g = vm.vgic.lock();
        let word = u64::from(vintid / 32 * 4);
        let bit = 1u64 << (vintid % 32);
        let busy = (g.dist_read(0x200 + word, 4) | g.dist_read(0x300 + word, 4)) & bit != 0;
        drop(g);
        if busy {
            continue;
        }
        match *deadline {
            _ if !gic::spi_pending(pintid) => done.push(pintid),
            None => {
                *deadline =
                    Some(now + STILL_ASSERTED_BACKOFF_US * arch::counter_freq() / 1_000_000);
            }
            Some(d) if now >= d => done.push(pintid),
            Some(_) => {}
        }
    }
    for pintid in done {
        masked.remove(&pintid);
        gic::set_spi_enabled(pintid, true);
    }
}

/// Whether one of VM `vm_i`'s lines waits out [`STILL_ASSERTED_BACKOFF_US`]:
/// its vCPUs must not sleep in WFI meanwhile (nothing would wake them to
/// unmask it).
fn lines_waiting(vm_i: usize) -> bool {
    let masked = MASKED_LINES.lock();
    if masked.values().all(Option::is_none) {
        return false;
    }
    let owners = super::assign::LINE_OWNERS.lock();
    masked
        .iter()
        .any(|(p, d)| d.is_some() && owners.get(p).is_some_and(|&(o, _)| o == vm_i))
}

/// The console input multiplexer (Ctrl-] then a digit switches VMs).
static MUX: Mutex<super::console_mux::ConsoleMux> =
    Mutex::new(super::console_mux::ConsoleMux::new());

/// Reads the physical UART and feeds the focused VM's virtual UART.
fn console_input() {
    use super::console_mux::Input;
    while let Some(byte) = crate::console::read_byte() {
        let vms = vms();
        match MUX.lock().feed(byte, vms.len()) {
            Input::Swallowed => {}
            Input::Switched(v) => crate::console::write_fmt(format_args!(
                "[hyp] console input goes to VM {}\n",
                vms[v].name
            )),
            Input::Deliver { vm, byte } => {
                let vm = &vms[vm];
                let mut u = vm.uart.lock();
                u.push_input(byte);
                let level = u.irq_level();
                drop(u);
                if let Ok(fx) = vm.vgic.lock().set_level(UART_INTID, 0, level) {
                    apply(vm, fx);
                }
            }
        }
    }
}
