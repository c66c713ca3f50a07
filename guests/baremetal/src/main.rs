//! A small bare-metal test guest for the hypervisor.
//!
//! Booted like a Linux arm64 `Image` (see `entry.S`): EL1, MMU off, x0 = DTB.
//! It finds its PL011 and memory in the device tree, prints
//! `guest: hello from <name>` (`name=` on `/chosen/bootargs`) and its CPU
//! count, then does what the command line asks, reporting what it judges
//! in check lines (`check NAME: pass` / `check NAME: FAIL DETAIL`, see
//! `guests/README.md`):
//!
//! - nothing: no checks;
//! - `bad_access`: reads 256 MiB past the end of its RAM; its EL1 vectors
//!   check that the read took a synchronous external abort there
//!   (`check bad-access-aborts: pass FAR=0x... ESR=0x...`);
//! - `cpu_features`: checks that its ID registers show no PMU, trace, RAS,
//!   AMU, MTE or SME but do show FP, Advanced SIMD and debug, and that
//!   reading PMCR_EL0 takes an undefined-instruction exception (see
//!   `cpu.rs`);
//! - `timers`: checks both EL1 timers' interrupts: taken when they fire,
//!   taken again while still asserted, not while masked, no longer pending
//!   once disabled or reprogrammed (see `timers.rs`);
//! - `trap_bench=N`: times N hypercalls, MMIO reads and writes, IPI round
//!   trips to vCPU 1 and timer interrupts, one `bench` line each (see
//!   `trapbench.rs`; `tests/benches/traps.rs` runs it);
//! - `console_forge`: prints lines with escape sequences, backspaces, a
//!   C1 control and a right-to-left override that would pass for the
//!   hypervisor's lines on a terminal (the hypervisor shows them escaped);
//! - `count=N`: prints `guest: tick 1` .. `guest: tick N`, one every
//!   `tick_ms=` milliseconds (default 100) of the virtual counter;
//! - `edu_attack=ADDR[,ADDR...]` [`edu_flood=N`]: drives QEMU's `edu` PCI
//!   device behind the device tree's ECAM host bridge as a DMA attacker
//!   (see [`edu`] and `README.md`): DMA into its own memory, then a DMA
//!   read from and N (default 1) DMA writes to each address, then
//!   `guest: attack done`;
//! - `vsmmu_edu`: programs its own virtual SMMUv3 (stream table, CD,
//!   stage-1 tables, queues) for the `edu` and checks nested translation,
//!   invalidation, isolation and command errors (see [`nested`]);
//! - `vsmmu_flood=MS`: keeps its vSMMU's command queue full of
//!   invalidations for at least MS milliseconds, then until a key arrives
//!   on its console (at most 10 MS), and reports how many went through;
//! - `bar_page=VVVV:DDDD`: checks that nothing but BAR0 of that function
//!   answers in the page that holds it (see [`barpage`]).
//! - `edu_msi`: programs its GIC redistributor and ITS as Linux does, maps
//!   the `edu`'s event to LPI 8192 and checks that the device's write of
//!   its EventID to GITS_TRANSLATER raises it while the CPU's does not
//!   (see [`msi`]).
//! - `edu_msi_attack`: as `edu_msi`'s set-up, then programs the `edu`'s MSI
//!   capability with hostile messages (own RAM, outside RAM, GICD_SETSPI_NSR,
//!   the ITS's registers, events not granted or discarded) and checks that
//!   only its own mapped event raises its LPI (see `msi/attack.rs`);
//! - `nvme_msix_attack`: maps its NVMe controller's first event in its ITS
//!   and aims MSI-X table entry 0 at the same hostile places, masks it,
//!   turns memory decoding off under it, and checks that only its own
//!   mapped event raises its LPI (see `msi/msix_attack.rs`);
//! - `edu_intx=N`: raises the `edu`'s INTx line N times in rounds that
//!   handle it promptly, late (EOI with the line still high), disabled,
//!   routed away, and checks that its GIC gives exactly the interrupts the
//!   architecture says (see [`intx`]);
//! - `nvme_fault_flood=SECONDS` [`nvme_flood_identify`] [`nvme_flood_own`]:
//!   brings up its NVMe controller and keeps its admin queue full of
//!   commands (Get Log Page of 4 bytes, or Identify of 4 KiB) whose data
//!   buffer lies outside its RAM (with `nvme_flood_own`, in it), a DMA the
//!   SMMU aborts each, for SECONDS or until a key arrives on its console
//!   (see [`nvmeflood`]);
//! - `reboot=N`: resets its VM (PSCI SYSTEM_RESET) until the hypervisor's
//!   counters page says it restarted N times, checking in each new
//!   incarnation that its free memory was scrubbed (see `reboot.rs`);
//! - `reboot_under_dma=MS`: resets its VM once while its NVMe controller
//!   writes into its free memory, and checks in the new incarnation that
//!   nothing landed there and the controller was stopped (see `reboot.rs`);
//! - `reboot_raced=N`: resets its VM N times, then powers it off, each time
//!   while its vCPU 1 keeps turning its `edu`'s bus mastering on, starting
//!   copies, re-attaching the stream through its vSMMU (CFGI_STE) and
//!   starting vCPU 2, and checks in each new incarnation that none of it
//!   survived the stop (see `race.rs`; secondary CPUs in `smp.rs`).
//!
//! Every run ends with the summary line `checks: N run, M failed` (also
//! after an unexpected exception or a panic, each a failed check), then
//! `guest: done` (except after an exception) and PSCI `SYSTEM_OFF`.
//!
//! PSCI goes through HVC, or SMC when the device tree's `/psci` says so.
//!
//! On the host only the pure parts (command line, device tree reading) are
//! compiled, for their unit tests.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
mod arena;
#[cfg(target_os = "none")]
#[macro_use]
mod console;
mod barpage;
#[cfg(target_os = "none")]
mod checks;
#[cfg(target_os = "none")]
mod cpu;
mod edu;
#[cfg(target_os = "none")]
mod gic;
mod intx;
#[cfg(target_os = "none")]
mod mmio;
mod msi;
mod nested;
mod nvme;
mod nvmeflood;
#[cfg(target_os = "none")]
mod race;
#[cfg(target_os = "none")]
mod reboot;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod time;
#[cfg(target_os = "none")]
mod timers;
#[cfg(target_os = "none")]
mod trapbench;

use edu::Targets;
use flat_device_tree::node::FdtNode;
use flat_device_tree::Fdt;
#[cfg(target_os = "none")]
use hw::system_reset as psci_system_reset;

/// Distance past the end of RAM that `bad_access` reads from.
const BAD_ACCESS_GAP: u64 = 256 << 20;

/// Milliseconds between two ticks of `count=N` unless `tick_ms=` says otherwise.
const DEFAULT_TICK_MS: u64 = 100;

/// What the command line asks the guest to do after its greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action<'a> {
    /// Power off at once.
    Done,
    /// Read outside RAM and report the data abort.
    BadAccess,
    /// Check the CPU features the ID registers show, and that a PMU
    /// register is undefined.
    CpuFeatures,
    /// Check both EL1 timers' interrupts against the architecture's level
    /// semantics.
    Timers,
    /// Time this many hypercalls, MMIO accesses, IPIs and timer interrupts.
    TrapBench(u64),
    /// Print lines that would pass for the hypervisor's on a terminal that
    /// obeys control characters.
    ConsoleForge,
    /// Print this many ticks, spaced by the virtual timer.
    Count(u64),
    /// DMA with the `edu` device: own memory, then at these addresses.
    EduAttack(Targets<'a>),
    /// Program the vSMMU for the `edu` and check nested translation.
    VsmmuEdu,
    /// Keep the vSMMU's command queue full for this many milliseconds.
    VsmmuFlood(u64),
    /// Probe the page of BAR0 of the function with this vendor and device
    /// ID.
    BarPage(u16, u16),
    /// Map the `edu`'s event in the ITS and check who raises its LPI.
    EduMsi,
    /// Aim the `edu`'s MSI at hostile places and check what follows.
    EduMsiAttack,
    /// Aim the NVMe controller's MSI-X vector at hostile places and check
    /// what follows.
    NvmeMsixAttack,
    /// Raise the `edu`'s INTx line this many times and count the
    /// interrupts.
    EduIntx(u64),
    /// Flood the NVMe controller with commands whose DMA faults, for this
    /// many seconds.
    NvmeFaultFlood(u64),
    /// Reset the VM until it has restarted this many times, checking that
    /// each incarnation finds its memory scrubbed.
    Reboot(u64),
    /// Reset the VM once after this many milliseconds of NVMe DMA into its
    /// free memory, with the DMA in flight; check that none of it landed
    /// in the new incarnation.
    RebootUnderDma(u64),
    /// Reset the VM this many times, then power it off, each time while
    /// another vCPU races the stop; check that the race undid nothing.
    RebootRaced(u64),
}

/// The guest's command line (`/chosen/bootargs`), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Args<'a> {
    /// `name=`, for the greeting.
    name: &'a str,
    /// The last of `bad_access` / `count=N` / `edu_attack=` on the line;
    /// [`Action::Done`] without.
    action: Action<'a>,
    /// `tick_ms=`: milliseconds between ticks.
    tick_ms: u64,
    /// `edu_flood=N`: how many times each DMA write attack is issued.
    edu_flood: u64,
    /// `nvme_flood_own`: the NVMe flood's buffer is in its own RAM.
    nvme_flood_own: bool,
    /// `nvme_flood_identify`: the NVMe flood submits Identify commands.
    nvme_flood_identify: bool,
}

impl<'a> Args<'a> {
    /// Decodes a command line; words it does not know (`console=...`) are
    /// ignored, as are malformed numbers.
    fn parse(bootargs: &'a str) -> Self {
        let mut args = Args {
            name: "unnamed",
            action: Action::Done,
            tick_ms: DEFAULT_TICK_MS,
            edu_flood: 1,
            nvme_flood_own: false,
            nvme_flood_identify: false,
        };
        for word in bootargs.split_ascii_whitespace() {
            match word.split_once('=') {
                Some(("name", v)) if !v.is_empty() => args.name = v,
                Some(("count", v)) => {
                    if let Ok(n) = v.parse() {
                        args.action = Action::Count(n);
                    }
                }
                Some(("tick_ms", v)) => {
                    if let Ok(ms) = v.parse() {
                        args.tick_ms = ms;
                    }
                }
                Some(("edu_attack", v)) => {
                    if let Some(targets) = Targets::parse(v) {
                        args.action = Action::EduAttack(targets);
                    }
                }
                Some(("vsmmu_flood", v)) => {
                    if let Ok(ms) = v.parse() {
                        args.action = Action::VsmmuFlood(ms);
                    }
                }
                Some(("bar_page", v)) => {
                    if let Some((vendor, device)) = barpage::parse_id(v) {
                        args.action = Action::BarPage(vendor, device);
                    }
                }
                Some(("edu_intx", v)) => {
                    if let Ok(n) = v.parse() {
                        args.action = Action::EduIntx(n);
                    }
                }
                Some(("reboot_under_dma", v)) => {
                    if let Ok(ms) = v.parse() {
                        args.action = Action::RebootUnderDma(ms);
                    }
                }
                Some(("trap_bench", v)) => {
                    if let Ok(n) = v.parse() {
                        args.action = Action::TrapBench(n);
                    }
                }
                Some(("reboot_raced", v)) => {
                    if let Ok(n) = v.parse() {
                        args.action = Action::RebootRaced(n);
                    }
                }
                Some(("reboot", v)) => {
                    if let Ok(n) = v.parse() {
                        args.action = Action::Reboot(n);
                    }
                }
                Some(("nvme_fault_flood", v)) => {
                    if let Ok(s) = v.parse() {
                        args.action = Action::NvmeFaultFlood(s);
                    }
                }
                Some(("edu_flood", v)) => {
                    if let Ok(n) = v.parse() {
                        args.edu_flood = n;
                    }
                }
                None if word == "bad_access" => args.action = Action::BadAccess,
                None if word == "cpu_features" => args.action = Action::CpuFeatures,
                None if word == "timers" => args.action = Action::Timers,
                None if word == "console_forge" => args.action = Action::ConsoleForge,
                None if word == "vsmmu_edu" => args.action = Action::VsmmuEdu,
                None if word == "edu_msi" => args.action = Action::EduMsi,
                None if word == "edu_msi_attack" => args.action = Action::EduMsiAttack,
                None if word == "nvme_msix_attack" => args.action = Action::NvmeMsixAttack,
                None if word == "nvme_flood_own" => args.nvme_flood_own = true,
                None if word == "nvme_flood_identify" => args.nvme_flood_identify = true,
                _ => {}
            }
        }
        args
    }
}

/// How PSCI calls reach the hypervisor (`/psci` `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conduit {
    /// `hvc #0` (the default).
    Hvc,
    /// `smc #0`.
    Smc,
}

/// What the guest needs from its device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Board<'a> {
    /// Base address of the console PL011.
    uart: u64,
    /// First RAM region: base and size.
    ram: (u64, u64),
    /// Number of `/cpus/cpu@N` nodes.
    cpus: usize,
    /// PSCI conduit.
    conduit: Conduit,
    /// `/chosen/bootargs`, empty without.
    bootargs: &'a str,
}

/// Why the device tree is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BoardError {
    /// No PL011 (neither `stdout-path` nor an `arm,pl011` node).
    NoUart,
    /// No `device_type = "memory"` node with a region.
    NoMemory,
}

/// The first `reg` entry of a node.
fn first_reg(node: FdtNode<'_, '_>) -> Option<(u64, u64)> {
    node.reg()
        .next()
        .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64))
}

fn is_pl011(node: FdtNode<'_, '_>) -> bool {
    node.compatible()
        .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
}

impl<'a> Board<'a> {
    /// Reads the console, RAM, CPU count, PSCI conduit and bootargs.
    fn from_fdt(fdt: &Fdt<'a>) -> Result<Self, BoardError> {
        let uart = fdt
            .chosen()
            .ok()
            .and_then(|c| c.stdout())
            .map(|s| s.node())
            .filter(|n| is_pl011(*n))
            .or_else(|| fdt.find_compatible(&["arm,pl011"]))
            .and_then(first_reg)
            .ok_or(BoardError::NoUart)?
            .0;
        let ram = fdt
            .all_nodes()
            .filter(|n| {
                n.property("device_type")
                    .and_then(|p| p.as_str())
                    .is_some_and(|s| s == "memory")
            })
            .find_map(first_reg)
            .filter(|r| r.1 > 0)
            .ok_or(BoardError::NoMemory)?;
        let conduit = match fdt
            .find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])
            .and_then(|n| n.property("method"))
            .and_then(|p| p.as_str())
        {
            Some("smc") => Conduit::Smc,
            _ => Conduit::Hvc,
        };
        let bootargs = fdt.chosen().ok().and_then(|c| c.bootargs()).unwrap_or("");
        Ok(Board {
            uart,
            ram,
            cpus: fdt.cpus().count(),
            conduit,
            bootargs,
        })
    }

    /// The address `bad_access` reads: 256 MiB past the end of RAM.
    fn bad_address(&self) -> u64 {
        self.ram.0 + self.ram.1 + BAD_ACCESS_GAP
    }
}

/// ESR_EL1.EC of a data abort taken without a change in exception level.
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;

/// Index of the "current EL with SP_ELx, synchronous" vector.
const VECTOR_CURRENT_SPX_SYNC: u64 = 4;

/// ESR_EL1.ISS.DFSC of a synchronous external abort (not on a table walk).
const DFSC_SYNC_EXTERNAL_ABORT: u64 = 0x10;

/// Whether an exception is a data abort taken without a change in
/// exception level.
fn is_same_el_data_abort(vector: u64, esr: u64) -> bool {
    vector == VECTOR_CURRENT_SPX_SYNC && (esr >> 26) & 0x3f == EC_DATA_ABORT_SAME_EL
}

/// Whether a data abort's syndrome says synchronous external abort: what
/// the hypervisor injects for an access outside the VM's memory.
fn is_sync_external_abort(esr: u64) -> bool {
    esr & 0x3f == DFSC_SYNC_EXTERNAL_ABORT
}

#[cfg(target_os = "none")]
mod hw {
    //! Everything that touches the machine: UART, counter, PSCI, the vectors.

    use super::checks::{self, check};
    use super::console::UART;
    use super::edu::{host_or_report, Edu, EduError, ReadOutcome, Targets, DMA_LEN};
    use super::nvmeflood::FloodCommand;
    use super::{is_same_el_data_abort, is_sync_external_abort, Action, Args, Board, Conduit};
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
    use flat_device_tree::Fdt;

    core::arch::global_asm!(include_str!("entry.S"));
    core::arch::global_asm!(include_str!("vectors.S"));

    /// The PSCI conduit: 0 = HVC, 1 = SMC.
    static CONDUIT: AtomicU8 = AtomicU8::new(0);

    /// The address `bad_access` reads, once it is about to (0 before): the
    /// data abort there is the expected one.
    static BAD_ADDRESS: AtomicU64 = AtomicU64::new(0);

    /// PSCI SYSTEM_RESET through the board's conduit; returns only if the
    /// call does.
    pub fn system_reset() -> Result<(), smccc::psci::Error> {
        if smc() {
            smccc::psci::system_reset::<smccc::Smc>()
        } else {
            smccc::psci::system_reset::<smccc::Hvc>()
        }
    }

    fn smc() -> bool {
        CONDUIT.load(Ordering::Relaxed) == 1
    }

    /// PSCI CPU_ON through the board's conduit: vCPU `cpu` (its MPIDR
    /// affinity) starts at `entry` with x0 = `context`.
    pub fn cpu_on(cpu: u64, entry: u64, context: u64) -> Result<(), smccc::psci::Error> {
        if smc() {
            smccc::psci::cpu_on::<smccc::Smc>(cpu, entry, context)
        } else {
            smccc::psci::cpu_on::<smccc::Hvc>(cpu, entry, context)
        }
    }

    /// PSCI CPU_OFF; returns only if the call fails.
    pub fn cpu_off() -> smccc::psci::Error {
        let result = if smc() {
            smccc::psci::cpu_off::<smccc::Smc>()
        } else {
            smccc::psci::cpu_off::<smccc::Hvc>()
        };
        result.err().unwrap_or(smccc::psci::Error::Unknown(0))
    }

    /// PSCI AFFINITY_INFO of vCPU `cpu` (its affinity, all levels valid).
    pub fn affinity_info(cpu: u64) -> Result<smccc::psci::AffinityState, smccc::psci::Error> {
        use smccc::psci::LowestAffinityLevel::All;
        if smc() {
            smccc::psci::affinity_info::<smccc::Smc>(cpu, All)
        } else {
            smccc::psci::affinity_info::<smccc::Hvc>(cpu, All)
        }
    }

    /// PSCI_VERSION: a call that does nothing else.
    pub fn psci_version() -> Result<smccc::psci::Version, smccc::psci::Error> {
        if smc() {
            smccc::psci::version::<smccc::Smc>()
        } else {
            smccc::psci::version::<smccc::Hvc>()
        }
    }

    /// PSCI SYSTEM_OFF; parks the CPU if the call returns.
    fn power_off() -> ! {
        let result = if smc() {
            smccc::psci::system_off::<smccc::Smc>()
        } else {
            smccc::psci::system_off::<smccc::Hvc>()
        };
        say!("guest: SYSTEM_OFF returned {:?}", result);
        loop {
            aarch64_cpu::asm::wfi();
        }
    }

    /// Test pattern P of the own-memory check.
    const SEED_OWN: u8 = 0x50;
    /// Known pattern K the `edu` buffer holds before each read attack.
    const SEED_KNOWN: u8 = 0x4b;

    /// Two pages of our RAM for DMA: a source and a destination.
    #[repr(C, align(4096))]
    struct DmaPages(UnsafeCell<[[u8; DMA_LEN]; 2]>);

    // SAFETY: only the boot CPU uses them (no secondary job does), through
    // volatile raw-pointer accesses only.
    unsafe impl Sync for DmaPages {}

    static DMA_PAGES: DmaPages = DmaPages(UnsafeCell::new([[0; DMA_LEN]; 2]));
    /// The page DMA reads from.
    const SRC: usize = 0;
    /// The page DMA writes to.
    const DST: usize = 1;

    /// A DMA page's first byte; its address is its bus address (MMU off,
    /// identity).
    fn page(which: usize) -> *mut u8 {
        DMA_PAGES.0.get().cast::<u8>().wrapping_add(which * DMA_LEN)
    }

    /// Fills a DMA page with pattern `seed` (or zeros for None).
    fn fill(which: usize, seed: Option<u8>) {
        for i in 0..DMA_LEN {
            let byte = seed.map_or(0, |s| super::edu::pattern(s, i));
            // SAFETY: `i < DMA_LEN`: inside the page, which nothing else
            // references; no DMA runs while we write it.
            unsafe { page(which).add(i).write_volatile(byte) };
        }
    }

    /// A DMA page's bytes, read volatile (a device wrote them).
    fn bytes(which: usize) -> impl Iterator<Item = u8> + Clone {
        (0..DMA_LEN).map(move |i| {
            // SAFETY: `i < DMA_LEN`: inside the page; no DMA runs now.
            unsafe { page(which).add(i).read_volatile() }
        })
    }

    /// `edu_attack=`: finds the `edu`, checks DMA into our own memory, then
    /// attacks each target by DMA read and write. What stops the attack is
    /// a failed check `edu-attack-ran`.
    fn edu_attack(fdt: &Fdt<'_>, targets: Targets<'_>, flood: u64) {
        let Some(host) = host_or_report(fdt, "edu-attack-ran") else {
            return;
        };
        let edu = match Edu::probe(&host) {
            Ok(edu) => edu,
            Err(e) => return report(e),
        };
        if edu.placed {
            say!(
                "guest: edu BAR0 was unassigned: placed it at {:#x}",
                edu.bar0
            );
        }
        say!("guest: edu at 00:{:02x}.0 BAR0 {:#x}", edu.device, edu.bar0);
        if let Err(e) = attack(&edu, targets, flood) {
            report(e);
        }
    }

    fn attack(edu: &Edu, targets: Targets<'_>, flood: u64) -> Result<(), EduError> {
        let src = page(SRC) as u64;
        let dst = page(DST) as u64;
        fill(SRC, Some(SEED_OWN));
        fill(DST, None);
        edu.dma_into_buffer(src)?;
        edu.dma_from_buffer(dst)?;
        let ok = ReadOutcome::judge(bytes(DST), SEED_OWN) == ReadOutcome::Intact;
        check(
            "dma-own-memory",
            ok,
            if ok { "" } else { "the page read back wrong" },
        );

        fill(SRC, Some(SEED_KNOWN));
        for target in targets.iter() {
            // Read: K into the buffer, then the target over it, then back.
            edu.dma_into_buffer(src)?;
            edu.dma_into_buffer(target)?;
            fill(DST, None);
            edu.dma_from_buffer(dst)?;
            let outcome = ReadOutcome::judge(bytes(DST), SEED_KNOWN);
            check(
                format_args!("dma-read-{:#x}", target),
                outcome != ReadOutcome::Leaked,
                outcome.verdict(),
            );

            // Write: K (reloaded) from the buffer to the target.
            edu.dma_into_buffer(src)?;
            for _ in 0..flood {
                edu.dma_from_buffer(target)?;
            }
            // Whether anything landed is for the victim and the hypervisor
            // to judge; this says the write(s) ran to completion.
            let name = format_args!("dma-write-{:#x}", target);
            if flood == 1 {
                check(name, true, "issued");
            } else {
                check(name, true, format_args!("issued {} times", flood));
            }
        }
        say!("guest: attack done");
        Ok(())
    }

    fn report(e: EduError) {
        check("edu-attack-ran", false, e);
    }

    /// Rust entry, called by `entry.S` with the DTB address.
    #[no_mangle]
    extern "C" fn guest_main(dtb: usize) -> ! {
        // SAFETY: the boot protocol passes the DTB's address in x0; the
        // boot loader placed a valid blob there, in RAM we do not write.
        let fdt = match unsafe { Fdt::from_ptr(dtb as *const u8) } {
            Ok(fdt) => fdt,
            Err(_) => power_off(),
        };
        let board = match Board::from_fdt(&fdt) {
            Ok(board) => board,
            Err(_) => power_off(),
        };
        UART.store(board.uart, Ordering::Relaxed);
        CONDUIT.store(u8::from(board.conduit == Conduit::Smc), Ordering::Relaxed);

        let args = Args::parse(board.bootargs);
        match super::reboot::restarts(&fdt) {
            Some(k) if k > 0 => say!("guest: hello from {} (restart {})", args.name, k),
            _ => say!("guest: hello from {}", args.name),
        }
        say!(
            "guest: {} cpus, RAM {:#x}..{:#x}, PL011 at {:#x}",
            board.cpus,
            board.ram.0,
            board.ram.0 + board.ram.1,
            board.uart
        );
        match args.action {
            Action::Done => {}
            Action::BadAccess => {
                let addr = board.bad_address();
                say!("guest: reading {:#x}, outside RAM", addr);
                BAD_ADDRESS.store(addr, Ordering::Relaxed);
                // SAFETY: a deliberate read outside our RAM to provoke an
                // abort (`guest_exception` reports it, never returns here);
                // a completed read would not touch our memory.
                let value = unsafe { (addr as *const u32).read_volatile() };
                check(
                    "bad-access-aborts",
                    false,
                    format_args!("no abort: read {:#x} from {:#x}", value, addr),
                );
            }
            Action::CpuFeatures => super::cpu::features(),
            Action::Timers => super::timers::run(&fdt),
            Action::TrapBench(n) => super::trapbench::run(&fdt, n),
            Action::ConsoleForge => {
                // Erase the line and go back to its start, back over the
                // VM's name, a C1 CSI, a right-to-left override: each
                // followed by what the hypervisor would print.
                say!("\x1b[2K\x1b[1G[hyp] VM timers: powered off");
                say!("\x08\x08\x08\x08\x08\x08\x08\x08\x08[hyp] all VMs have stopped");
                say!("\u{9b}2K[hyp] VM features: restarting (restart 1)");
                say!("\u{202e}ffo derewop :srehto MV [pyh]");
            }
            Action::Count(n) => {
                for i in 1..=n {
                    super::time::delay_ms(args.tick_ms);
                    say!("guest: tick {}", i);
                }
            }
            Action::EduAttack(targets) => edu_attack(&fdt, targets, args.edu_flood),
            Action::VsmmuEdu => super::nested::run(&fdt),
            Action::VsmmuFlood(ms) => super::nested::flood(&fdt, ms),
            Action::BarPage(vendor, device) => super::barpage::run(&fdt, vendor, device),
            Action::EduMsi => super::msi::run(&fdt),
            Action::EduMsiAttack => super::msi::attack(&fdt, board.ram),
            Action::NvmeMsixAttack => super::msi::msix_attack(&fdt, board.ram),
            Action::EduIntx(n) => super::intx::run(&fdt, n),
            Action::Reboot(n) => super::reboot::run(&fdt, dtb as u64, n),
            Action::RebootUnderDma(ms) => super::reboot::under_dma(&fdt, dtb as u64, ms),
            Action::RebootRaced(n) => super::race::run(&fdt, dtb as u64, n),
            Action::NvmeFaultFlood(seconds) => super::nvmeflood::run(
                &fdt,
                board.ram,
                seconds,
                args.nvme_flood_own,
                if args.nvme_flood_identify {
                    FloodCommand::Identify
                } else {
                    FloodCommand::LogDword
                },
            ),
        }
        checks::close();
        say!("guest: done");
        power_off()
    }

    /// Every EL1 exception ends here (`vectors.S`): checks that it is the
    /// abort `bad_access` expects (anything else is a failed check
    /// `unexpected-exception`), closes the run and powers off.
    #[no_mangle]
    extern "C" fn guest_exception(vector: u64, esr: u64, far: u64, elr: u64) -> ! {
        let expected = BAD_ADDRESS.load(Ordering::Relaxed);
        if super::cpu::EXPECT_UNDEF.load(Ordering::Relaxed) {
            // EC 0 with IL, at the current EL's synchronous vector.
            check(
                "pmu-register-undefined",
                vector == super::VECTOR_CURRENT_SPX_SYNC && esr == 1 << 25,
                format_args!("vector {} ESR={:#x}", vector, esr),
            );
        } else if expected != 0 && is_same_el_data_abort(vector, esr) {
            check(
                "bad-access-aborts",
                far == expected && is_sync_external_abort(esr),
                format_args!("FAR={:#x} ESR={:#x}", far, esr),
            );
        } else {
            check(
                "unexpected-exception",
                false,
                format_args!(
                    "vector {} ESR={:#x} FAR={:#x} ELR={:#x}",
                    vector, esr, far, elr
                ),
            );
        }
        checks::close();
        power_off()
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        check("guest-panic", false, info);
        checks::close();
        power_off()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("baremetal-guest is an EL1 guest image: build it with guests/baremetal/build.sh");
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    #[test]
    fn args_default() {
        let a = Args::parse("");
        assert_eq!(a.name, "unnamed");
        assert_eq!(a.action, Action::Done);
        assert_eq!(a.tick_ms, DEFAULT_TICK_MS);
    }

    #[test]
    fn args_words() {
        let a = Args::parse("console=ttyAMA0 name=vm2  count=5 tick_ms=20");
        assert_eq!(a.name, "vm2");
        assert_eq!(a.action, Action::Count(5));
        assert_eq!(a.tick_ms, 20);
        assert_eq!(Args::parse("name=x bad_access").action, Action::BadAccess);
        assert_eq!(Args::parse("cpu_features").action, Action::CpuFeatures);
        assert_eq!(Args::parse("timers").action, Action::Timers);
        assert_eq!(Args::parse("console_forge").action, Action::ConsoleForge);
        assert_eq!(Args::parse("trap_bench=9").action, Action::TrapBench(9));
        // The last action wins; malformed numbers and unknown words are ignored.
        assert_eq!(Args::parse("count=3 bad_access").action, Action::BadAccess);
        assert_eq!(Args::parse("name=n vsmmu_edu").action, Action::VsmmuEdu);
        assert_eq!(Args::parse("name=n edu_msi").action, Action::EduMsi);
        assert_eq!(
            Args::parse("name=n edu_msi_attack").action,
            Action::EduMsiAttack
        );
        assert_eq!(
            Args::parse("name=n nvme_msix_attack").action,
            Action::NvmeMsixAttack
        );
        assert_eq!(Args::parse("reboot=3").action, Action::Reboot(3));
        assert_eq!(Args::parse("reboot=x").action, Action::Done);
        assert_eq!(Args::parse("reboot_raced=2").action, Action::RebootRaced(2));
        assert_eq!(
            Args::parse("reboot_under_dma=200").action,
            Action::RebootUnderDma(200)
        );
        assert_eq!(
            Args::parse("name=n edu_intx=1000").action,
            Action::EduIntx(1000)
        );
        assert_eq!(Args::parse("edu_intx=-1").action, Action::Done);
        assert_eq!(
            Args::parse("vsmmu_flood=3000").action,
            Action::VsmmuFlood(3000)
        );
        assert_eq!(
            Args::parse("bar_page=8086:25ab").action,
            Action::BarPage(0x8086, 0x25ab)
        );
        assert_eq!(Args::parse("bar_page=8086").action, Action::Done);
        let a = Args::parse("name=a nvme_fault_flood=30");
        assert_eq!(a.action, Action::NvmeFaultFlood(30));
        assert!(!a.nvme_flood_own);
        assert!(!a.nvme_flood_identify);
        let b = Args::parse("nvme_flood_own nvme_flood_identify nvme_fault_flood=1");
        assert!(b.nvme_flood_own && b.nvme_flood_identify);
        assert_eq!(Args::parse("nvme_fault_flood=x").action, Action::Done);
        let b = Args::parse("count=x tick_ms=-1 bad_access=1 name=");
        assert_eq!(b.action, Action::Done);
        assert_eq!(b.tick_ms, DEFAULT_TICK_MS);
        assert_eq!(b.name, "unnamed");
    }

    #[test]
    fn args_edu_attack() {
        let a = Args::parse("name=b edu_attack=0x90000000,8000000");
        let Action::EduAttack(targets) = a.action else {
            panic!("{:?}", a.action);
        };
        assert_eq!(
            targets.iter().collect::<Vec<_>>(),
            [0x9000_0000, 0x800_0000]
        );
        assert_eq!(a.edu_flood, 1);
        let a = Args::parse("edu_flood=50 edu_attack=0x1");
        assert_eq!(a.edu_flood, 50);
        assert!(matches!(a.action, Action::EduAttack(t) if t.iter().eq([1])));
        // Only the own-memory check.
        let a = Args::parse("edu_attack=");
        assert!(matches!(a.action, Action::EduAttack(t) if t.iter().count() == 0));
        // A malformed list is ignored as a whole.
        assert_eq!(Args::parse("edu_attack=0x1,zz").action, Action::Done);
        assert_eq!(Args::parse("edu_flood=x").edu_flood, 1);
    }

    #[test]
    fn data_abort_classification() {
        // EC 0x25, IL, DFSC 0x10 (synchronous external abort).
        assert!(is_same_el_data_abort(4, 0x9600_0010));
        // Data abort from a lower EL (EC 0x24) or on another vector: no.
        assert!(!is_same_el_data_abort(4, 0x9200_0010));
        assert!(!is_same_el_data_abort(5, 0x9600_0010));
        // SVC (EC 0x15).
        assert!(!is_same_el_data_abort(4, 0x5600_0000));
        // What the hypervisor injects; a translation fault (DFSC 0x07) is not.
        assert!(is_sync_external_abort(0x9600_0010));
        assert!(!is_sync_external_abort(0x9600_0007));
    }

    /// A device tree like the one QEMU's `virt` or the hypervisor gives.
    fn dtb(psci_method: &str, with_stdout: bool) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let cpus = w.begin_node("cpus").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 0).unwrap();
        for i in 0..3u32 {
            let cpu = w.begin_node(&format!("cpu@{i}")).unwrap();
            w.property_string("device_type", "cpu").unwrap();
            w.property_u32("reg", i).unwrap();
            w.end_node(cpu).unwrap();
        }
        w.end_node(cpus).unwrap();
        let mem = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, 0x1000_0000])
            .unwrap();
        w.end_node(mem).unwrap();
        // A decoy PL011 first: stdout-path must win over the first match.
        for base in [0x900_0000u64, 0x901_0000] {
            let uart = w.begin_node(&format!("pl011@{base:x}")).unwrap();
            w.property_string_list(
                "compatible",
                vec!["arm,pl011".into(), "arm,primecell".into()],
            )
            .unwrap();
            w.property_array_u64("reg", &[base, 0x1000]).unwrap();
            w.end_node(uart).unwrap();
        }
        let psci = w.begin_node("psci").unwrap();
        w.property_string("compatible", "arm,psci-1.0").unwrap();
        w.property_string("method", psci_method).unwrap();
        w.end_node(psci).unwrap();
        let chosen = w.begin_node("chosen").unwrap();
        w.property_string("bootargs", "name=vm1 count=2").unwrap();
        if with_stdout {
            w.property_string("stdout-path", "/pl011@9010000").unwrap();
        }
        w.end_node(chosen).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn board_from_fdt() {
        let blob = dtb("hvc", true);
        let fdt = Fdt::new(&blob).unwrap();
        let b = Board::from_fdt(&fdt).unwrap();
        assert_eq!(b.uart, 0x901_0000);
        assert_eq!(b.ram, (0x4000_0000, 0x1000_0000));
        assert_eq!(b.cpus, 3);
        assert_eq!(b.conduit, Conduit::Hvc);
        assert_eq!(b.bootargs, "name=vm1 count=2");
        assert_eq!(b.bad_address(), 0x6000_0000);

        let blob = dtb("smc", false);
        let fdt = Fdt::new(&blob).unwrap();
        let b = Board::from_fdt(&fdt).unwrap();
        assert_eq!(b.uart, 0x900_0000, "first arm,pl011 without stdout-path");
        assert_eq!(b.conduit, Conduit::Smc);
    }

    #[test]
    fn board_needs_uart_and_memory() {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.end_node(root).unwrap();
        let blob = w.finish().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert_eq!(Board::from_fdt(&fdt), Err(BoardError::NoUart));
    }
}
