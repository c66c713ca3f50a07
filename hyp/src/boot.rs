//! The boot sequence of the boot CPU and of secondary CPUs.

use crate::arch::{self, mmu, psci};
use crate::console;
use crate::mm::{self, FRAMES};
use crate::platform::{Platform, PsciConduit};
use alloc::vec::Vec;
use buddy_system_allocator::LockedHeap;
use core::sync::atomic::{AtomicUsize, Ordering};
use log::{error, info, warn};
use spin::Once;

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Size of the hypervisor's heap, carved from RAM right after the image.
const HEAP_SIZE: u64 = 8 << 20;
const MIB: u64 = 1 << 20;

unsafe extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __image_end: u8;
    static __max_cpus: u8;
}

fn symbol_addr(s: &u8) -> u64 {
    s as *const u8 as u64
}

static PSCI: Once<PsciConduit> = Once::new();
static CPUS_ONLINE: AtomicUsize = AtomicUsize::new(1);

fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

/// Reads the FDT header at `dtb` and returns its total size, if it is one.
///
/// # Safety
///
/// `dtb` is the address the boot loader passed in x0 (readable RAM).
unsafe fn fdt_size(dtb: u64) -> Option<u64> {
    if dtb == 0 || !dtb.is_multiple_of(8) {
        return None;
    }
    // SAFETY: the boot loader's x0 points at readable RAM holding the FDT.
    let header = unsafe { core::slice::from_raw_parts(dtb as *const u8, 8) };
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    (magic == 0xd00d_feed && size >= 40).then_some(u64::from(size))
}

/// Entry of the boot CPU from `entry.S`, at EL2 with the MMU off.
#[unsafe(no_mangle)]
extern "C" fn primary_main(dtb: u64) -> ! {
    // SAFETY: x0 from the boot loader.
    let Some(dtb_size) = (unsafe { fdt_size(dtb) }) else {
        // No device tree: no UART to complain on. Nothing safe to do.
        arch::halt();
    };
    let image = symbol_addr(
        // SAFETY: linker-script symbol, only its address is used.
        unsafe { &__image_start },
    )
        ..symbol_addr(
            // SAFETY: as above.
            unsafe { &__image_end },
        );
    let dtb_range = dtb..dtb + dtb_size;
    let mut heap_start = align_up(image.end, 2 * MIB);
    if heap_start < dtb_range.end && dtb_range.start < heap_start + HEAP_SIZE {
        heap_start = align_up(dtb_range.end, 2 * MIB);
    }
    // SAFETY: RAM right after the image (or after the DTB) is free: the boot
    // loader put nothing else there, and nothing else uses it.
    unsafe { HEAP.lock().init(heap_start as usize, HEAP_SIZE as usize) };

    // SAFETY: checked FDT header above; the blob stays in place (its pages
    // are excluded from the frame allocator below).
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, dtb_size as usize) };
    let platform = match Platform::parse(blob) {
        Ok(p) => p,
        Err(_) => arch::halt(),
    };
    // SAFETY: the DTB says a PL011 is there; it is mapped as a device below
    // and, until then, the MMU is off (device accesses).
    unsafe { console::init(platform.uart.base) };
    info!(
        "hyp {}: booting at EL2 on CPU {:#x}, image {:#x}..{:#x}, DTB at {dtb:#x} ({} bytes)",
        env!("CARGO_PKG_VERSION"),
        arch::mpidr(),
        image.start,
        image.end,
        dtb_size
    );
    if let Some(conduit) = platform.psci {
        PSCI.call_once(|| conduit);
    }
    if !crate::seed::init(&platform.randomness) {
        warn!(
            "the machine's device tree has no /chosen/rng-seed or kaslr-seed: guests start \
             without them (no KASLR, their random number generator waits for entropy)"
        );
    }
    let heap = heap_start..heap_start + HEAP_SIZE;
    if let Err(e) = map_everything(&platform, &image, &heap) {
        error!("cannot build the EL2 page tables: {e}");
        crate::power::stop(false);
    }
    // SAFETY: map_everything mapped the image, heap, RAM and every device in use.
    unsafe { mmu::enable_primary() };
    info!("EL2 MMU on: code RX, data RW-XN, devices Device-nGnRE, WXN");
    match &platform.rtc {
        Some(rtc) => {
            let secs = crate::drivers::pl031::seconds(rtc);
            crate::wallclock::init(crate::wallclock::WallClock::new(
                secs,
                arch::counter(),
                arch::counter_freq(),
            ));
            info!(
                "wall clock: PL031 at {:#x} reads {secs} s since 1970",
                rtc.base
            );
        }
        None => warn!("no PL031 in the device tree: guests get no real-time clock"),
    }

    // Free RAM for the page-frame allocator.
    let ram: Vec<_> = platform.memory.iter().map(|r| r.range()).collect();
    let mut holes = alloc::vec![
        image.start..image.end,
        heap.clone(),
        (dtb_range.start & !0xfff)..align_up(dtb_range.end, 0x1000),
    ];
    holes.extend(platform.reserved.iter().map(|r| r.range()));
    if let Some(bundle) = &platform.initrd {
        holes.push((bundle.base & !0xfff)..align_up(bundle.base + bundle.size, 0x1000));
    }
    for r in mm::subtract(&ram, &holes) {
        FRAMES.add(r);
    }
    let (total, _) = FRAMES.stats();
    info!(
        "memory: {} MiB RAM, {} MiB free for frames, heap {} MiB",
        ram.iter().map(|r| r.end - r.start).sum::<u64>() / MIB,
        total as u64 * 4096 / MIB,
        HEAP_SIZE / MIB
    );

    crate::power::configure(platform.has_bootarg("exit=semihosting"), platform.psci);
    arch::set_fatal_stop(crate::power::stop);
    // SAFETY: the GIC from the DTB, mapped as a device in map_everything;
    // only the hypervisor programs it.
    unsafe { crate::drivers::gic::init(&platform.gic) };
    crate::drivers::gic::init_cpu(arch::mpidr());
    let init = crate::init::run(&platform);
    let ok = init.self_tests == crate::init::SelfTests::Passed;
    match crate::vm::run::create(&platform, &init.functions) {
        Ok(crate::vm::run::Workload::Guests) => {
            footprint(&image, HEAP_SIZE);
            if !ok {
                crate::power::stop(false);
            }
            crate::vm::run::start(&platform);
        }
        Ok(crate::vm::run::Workload::MachineOnly) => {
            start_secondaries(&platform);
            footprint(&image, HEAP_SIZE);
            crate::power::stop(ok);
        }
        Err(e) => {
            error!("{e}: no guest is started");
            crate::power::stop(false);
        }
    }
}

fn map_everything(
    p: &Platform,
    image: &core::ops::Range<u64>,
    heap: &core::ops::Range<u64>,
) -> Result<(), mmu::MapError> {
    use mmu::Mapping;
    for r in &p.memory {
        mmu::map(r.base, r.base + r.size, Mapping::Data)?;
    }
    // SAFETY: linker-script symbols, only their addresses are used.
    let (text_end, rodata_end) = unsafe { (symbol_addr(&__text_end), symbol_addr(&__rodata_end)) };
    mmu::map(image.start, text_end, Mapping::Code)?;
    mmu::map(text_end, rodata_end, Mapping::ReadOnly)?;
    mmu::map(rodata_end, image.end, Mapping::Data)?;
    mmu::map(heap.start, heap.end, Mapping::Data)?;
    mmu::map(p.uart.base, p.uart.base + p.uart.size, Mapping::Device)?;
    mmu::map(
        p.gic.dist.base,
        p.gic.dist.base + p.gic.dist.size,
        Mapping::Device,
    )?;
    for r in &p.gic.redist {
        mmu::map(r.base, r.base + r.size, Mapping::Device)?;
    }
    if let Some(its) = &p.gic.its {
        mmu::map(
            its.regs.base,
            its.regs.base + its.regs.size,
            Mapping::Device,
        )?;
    }
    if let Some(s) = &p.smmu {
        mmu::map(s.regs.base, s.regs.base + s.regs.size, Mapping::Device)?;
    }
    if let Some(pci) = &p.pci {
        mmu::map(
            pci.ecam.base,
            pci.ecam.base + pci.ecam.size,
            Mapping::Device,
        )?;
    }
    if let Some(rtc) = &p.rtc {
        mmu::map(rtc.base, rtc.base + rtc.size, Mapping::Device)?;
    }
    Ok(())
}

fn start_secondaries(p: &Platform) {
    let Some(&conduit) = PSCI.get() else {
        warn!("no PSCI in the device tree: running on the boot CPU only");
        return;
    };
    // SAFETY: linker-script symbol, only its address is used.
    let max = symbol_addr(unsafe { &__max_cpus }) as usize;
    let me = arch::mpidr();
    let mut started = 0;
    for (index, &mpidr) in p.cpus.iter().enumerate() {
        if mpidr == me {
            continue;
        }
        if index >= max {
            warn!("CPU {mpidr:#x}: beyond the {max} CPUs this build supports, left off");
            continue;
        }
        let entry = arch::secondary_entry as *const () as u64;
        match psci::cpu_on(conduit, mpidr, entry, index as u64) {
            Ok(()) => started += 1,
            Err(e) => warn!("CPU {mpidr:#x}: PSCI CPU_ON failed: {e:?}"),
        }
    }
    let deadline = arch::uptime_us() + 2_000_000;
    while CPUS_ONLINE.load(Ordering::Acquire) < started + 1 && arch::uptime_us() < deadline {
        core::hint::spin_loop();
    }
    let online = CPUS_ONLINE.load(Ordering::Acquire);
    info!(
        "CPUs: {online} of {} online ({} secondaries started through PSCI and parked)",
        p.cpus.len(),
        online - 1
    );
}

/// Entry of secondary CPUs from `entry.S`, at EL2 with the MMU off.
#[unsafe(no_mangle)]
extern "C" fn secondary_main(index: u64) -> ! {
    // SAFETY: the boot CPU enabled its MMU before starting us.
    unsafe { mmu::enable_secondary() };
    if crate::vm::run::serves_runtime(index as usize) {
        crate::vm::run::cpu_main(index as usize);
    }
    info!("CPU {index} (MPIDR {:#x}) online, parked", arch::mpidr());
    CPUS_ONLINE.fetch_add(1, Ordering::AcqRel);
    arch::halt();
}

/// The hypervisor's memory in use now: heap bytes allocated, and frames
/// (4 KiB pages) taken from the frame allocator.
pub fn memory_in_use() -> (usize, usize) {
    (HEAP.lock().stats_alloc_actual(), FRAMES.stats().1)
}

fn footprint(image: &core::ops::Range<u64>, heap: u64) {
    let (_, used) = FRAMES.stats();
    info!(
        "footprint: image {} KiB, heap {} KiB, frames in use {} KiB ({}: {} KiB, {}: {} KiB, {}: {} KiB, {}: {} KiB, {}: {} MiB)",
        (image.end - image.start) / 1024,
        heap / 1024,
        used * 4,
        mm::SMMU_MEM.name(),
        mm::SMMU_MEM.bytes() / 1024,
        mm::ITS_MEM.name(),
        mm::ITS_MEM.bytes() / 1024,
        mm::S2_CPU_MEM.name(),
        mm::S2_CPU_MEM.bytes() / 1024,
        mm::TEST_MEM.name(),
        mm::TEST_MEM.bytes() / 1024,
        mm::GUEST_MEM.name(),
        mm::GUEST_MEM.bytes() >> 20,
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::emergency_write_fmt(format_args!("\nFATAL: hypervisor panic: {info}\n"));
    crate::power::stop(false);
}
