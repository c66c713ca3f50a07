//! The guest's secondary CPUs: the boot CPU starts vCPU N (N >= 1, its
//! MPIDR Aff0) with PSCI CPU_ON at `secondary_entry` (`entry.S`), on a
//! stack of its own, and the CPU runs the [`Job`] the boot CPU set for it
//! before the call. Guest code otherwise runs on the boot CPU alone: a
//! job touches only what its module says it owns while it runs.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, Ordering};

/// vCPUs besides the boot one that can be started (vCPUs 1 to 3).
pub const SECONDARIES: usize = 3;
/// Bytes of stack per secondary CPU.
const STACK: usize = 0x4000;

/// What a secondary CPU runs once started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Job {
    /// Turns itself off at once (PSCI CPU_OFF).
    Off = 0,
    /// The racer of `reboot_raced` (`race.rs`).
    Race = 1,
    /// Answers SGIs for `trap_bench` (`trapbench.rs`).
    Echo = 2,
}

/// The secondary CPUs' stacks, vCPU N's at index N - 1.
#[repr(C, align(16))]
struct Stacks(UnsafeCell<[[u8; STACK]; SECONDARIES]>);

// SAFETY: no Rust code reads or writes the array: each element is handed
// out once, by address, as the stack of one secondary CPU.
unsafe impl Sync for Stacks {}

static STACKS: Stacks = Stacks(UnsafeCell::new([[0; STACK]; SECONDARIES]));

/// Each secondary's job (a [`Job`] as u8). Plain loads and stores: the
/// MMU is off, so there are no exclusives on this memory.
static JOBS: [AtomicU8; SECONDARIES] = [const { AtomicU8::new(Job::Off as u8) }; SECONDARIES];

unsafe extern "C" {
    /// Where a secondary CPU starts (`entry.S`); only its address is used.
    fn secondary_entry();
}

/// Starts vCPU `cpu` (1..=[`SECONDARIES`]) running `job`. A vCPU that is
/// on already gets ALREADY_ON (its job is replaced for its next start).
pub fn start(cpu: usize, job: Job) -> Result<(), smccc::psci::Error> {
    let Some(slot) = cpu.checked_sub(1).and_then(|i| JOBS.get(i)) else {
        return Err(smccc::psci::Error::InvalidParameters);
    };
    slot.store(job as u8, Ordering::Release);
    // The stack's top: the end of element cpu - 1.
    let top = STACKS.0.get() as u64 + (cpu * STACK) as u64;
    crate::hw::cpu_on(cpu as u64, secondary_entry as *const () as u64, top)
}

/// Rust entry of a secondary CPU (`entry.S`), with its vCPU number.
#[no_mangle]
extern "C" fn guest_secondary(cpu: u64) -> ! {
    let job = (cpu as usize)
        .checked_sub(1)
        .and_then(|i| JOBS.get(i))
        .map_or(Job::Off as u8, |j| j.load(Ordering::Acquire));
    if job == Job::Race as u8 {
        crate::race::racer();
    }
    if job == Job::Echo as u8 {
        crate::trapbench::echo();
    }
    let _ = crate::hw::cpu_off();
    loop {
        aarch64_cpu::asm::wfi();
    }
}
