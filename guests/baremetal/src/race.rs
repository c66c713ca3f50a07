//! `reboot_raced=N`: the VM is stopped (reset N times, then powered off)
//! while another of its vCPUs does everything that could undo the stop,
//! and every new incarnation checks that nothing was undone.
//!
//! Incarnation K (from 0, the hypervisor's counters page counts them):
//!
//! 1. for K >= 1, checks what the stop left behind, first of all before
//!    anything of its own runs:
//!    - `restart-K-dma-landed-nowhere`: its free RAM stays all zero for a
//!      second, though the racer kept the `edu` copying a page of pattern
//!      into it;
//!    - `restart-K-other-cpus-off`: PSCI AFFINITY_INFO says vCPUs 1 and 2
//!      are off (the racer and the vCPU it kept starting);
//!    - `restart-K-edu-stopped`: the `edu`'s bus mastering is off, though
//!      the racer kept turning it on;
//!    - `restart-K-vsmmu-reset`: the vSMMU's CR0 reads 0, though the racer
//!      kept re-attaching the `edu`'s stream through it (CFGI_STE);
//! 2. starts the racer on vCPU 1 (PSCI CPU_ON). The racer sets its vSMMU
//!    up with the `edu`'s stream in bypass, fills the `edu`'s buffer, then
//!    loops: bus mastering on (a PCI configuration write), an `edu` copy of
//!    its buffer into the last free page (MMIO), the STE written again with
//!    CFGI_STE + CMD_SYNC (vSMMU MMIO), CPU_ON of vCPU 2 (which turns
//!    itself off at once);
//! 3. once the racer has done [`ROUNDS`] rounds (check `race-K-ran`): for
//!    K < N, resets the VM (PSCI SYSTEM_RESET) with the racer still going;
//!    for K = N, checks `restarts-counted` and ends the run (SYSTEM_OFF,
//!    with the racer still going).

use crate::checks::{self, check};
use crate::edu::{
    config_read, enable, find_device, Edu, PciHost, CFG_COMMAND, CMD_BUS_MASTER, EDU_DEVICE,
    EDU_VENDOR,
};
use crate::nested::{self, BypassStream};
use crate::reboot::{
    check_restarts_counted, check_stays_zero, free_ram, reset_now, restarts_or_fail, WATCH_MS,
};
use crate::smp::{self, Job};
use crate::{hw, time};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use flat_device_tree::Fdt;
use smccc::psci::AffinityState;

/// The vCPU that races the stop, and the one it keeps starting.
const RACER: usize = 1;
const TARGET: usize = 2;
/// Rounds the racer completes before the stop.
const ROUNDS: u64 = 20;
/// How long the racer may take to set up and do its rounds: a bound for a
/// broken hypervisor, generous for a loaded host.
const RACE_TIMEOUT_MS: u64 = 60_000;

/// Where the device tree lies, for the racer. Like every flag here, only
/// plain loads and stores (MMU off: no exclusives), each with one writer.
static DTB: AtomicU64 = AtomicU64::new(0);
/// Rounds the racer completed (written by the racer only).
static DONE: AtomicU64 = AtomicU64::new(0);
/// The racer's [`Racer`] state (written by the racer only).
static STATE: AtomicU32 = AtomicU32::new(Racer::SettingUp as u32);

/// Where the racer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Racer {
    SettingUp = 0,
    Racing = 1,
    NoPci = 2,
    NoEdu = 3,
    NoVsmmu = 4,
    EduFailed = 5,
    CfgiFailed = 6,
}

impl Racer {
    fn load() -> Self {
        match STATE.load(Ordering::Acquire) {
            0 => Self::SettingUp,
            1 => Self::Racing,
            2 => Self::NoPci,
            3 => Self::NoEdu,
            4 => Self::NoVsmmu,
            5 => Self::EduFailed,
            _ => Self::CfgiFailed,
        }
    }

    fn why(self) -> &'static str {
        match self {
            Self::SettingUp | Self::Racing => "",
            Self::NoPci => "no PCI host bridge",
            Self::NoEdu => "no edu",
            Self::NoVsmmu => "the vSMMU could not be set up",
            Self::EduFailed => "the edu's buffer could not be filled",
            Self::CfgiFailed => "a CFGI_STE did not complete",
        }
    }
}

/// What the racer runs on vCPU 1 ([`Job::Race`]); stops (WFI) only if
/// something fails.
pub fn racer() -> ! {
    let fail = |why: Racer| -> ! {
        STATE.store(why as u32, Ordering::Release);
        loop {
            aarch64_cpu::asm::wfi();
        }
    };
    let dtb = DTB.load(Ordering::Acquire);
    // SAFETY: the boot CPU stored the address the boot protocol gave it,
    // of a valid blob in RAM nobody writes.
    let Ok(fdt) = (unsafe { Fdt::from_ptr(dtb as *const u8) }) else {
        fail(Racer::NoPci)
    };
    let Some(host) = PciHost::from_fdt(&fdt) else {
        fail(Racer::NoPci)
    };
    let Ok(edu) = Edu::probe(&host) else {
        fail(Racer::NoEdu)
    };
    let Ok(mut smmu) = BypassStream::new(&fdt, edu.device) else {
        fail(Racer::NoVsmmu)
    };
    let (start, end) = free_ram(dtb);
    for addr in (start..start + 4096).step_by(8) {
        // SAFETY: our first free page, which no Rust object occupies; the
        // boot CPU does not touch the free RAM while the racer runs.
        unsafe { (addr as *mut u64).write_volatile(0x7ace_0000_0000_0000 | addr) };
    }
    if edu.dma_into_buffer(start).is_err() {
        fail(Racer::EduFailed);
    }
    STATE.store(Racer::Racing as u32, Ordering::Release);
    let mut rounds = 0;
    loop {
        enable(&host, edu.device, 0);
        edu.start_dma_from_buffer(end - 4096);
        if smmu.refresh().is_err() {
            fail(Racer::CfgiFailed);
        }
        // SUCCESS, ALREADY_ON or ON_PENDING: each is a CPU_ON racing the
        // stop.
        let _ = smp::start(TARGET, Job::Off);
        rounds += 1;
        DONE.store(rounds, Ordering::Release);
    }
}

/// The checks of an incarnation after a raced stop (see the module
/// documentation).
fn after_restart(fdt: &Fdt<'_>, dtb: u64, k: u64) {
    check_stays_zero(
        format_args!("restart-{k}-dma-landed-nowhere"),
        free_ram(dtb),
        WATCH_MS,
    );
    let state = |cpu: usize| hw::affinity_info(cpu as u64);
    let (racer, target) = (state(RACER), state(TARGET));
    check(
        format_args!("restart-{k}-other-cpus-off"),
        racer == Ok(AffinityState::Off) && target == Ok(AffinityState::Off),
        format_args!("vCPU {RACER} {racer:?}, vCPU {TARGET} {target:?}"),
    );
    let master = PciHost::from_fdt(fdt).and_then(|host| {
        find_device(&host, EDU_VENDOR, EDU_DEVICE)
            .map(|d| config_read(&host, d, CFG_COMMAND) & CMD_BUS_MASTER != 0)
    });
    check(
        format_args!("restart-{k}-edu-stopped"),
        master == Some(false),
        format_args!("bus mastering {master:?}"),
    );
    let cr0 = nested::cr0(fdt);
    check(
        format_args!("restart-{k}-vsmmu-reset"),
        cr0 == Some(0),
        format_args!("CR0 {cr0:x?}"),
    );
}

/// Runs incarnation K's part; returns when the run is to end as usual
/// (K = N, or the race could not run), with the racer still going.
pub fn run(fdt: &Fdt<'_>, dtb: u64, n: u64) {
    let Some(k) = restarts_or_fail("restarts-counted", fdt) else {
        return;
    };
    if k >= 1 {
        after_restart(fdt, dtb, k);
    }
    DTB.store(dtb, Ordering::Release);
    let ran = format_args!("race-{k}-ran");
    if let Err(e) = smp::start(RACER, Job::Race) {
        check(ran, false, format_args!("CPU_ON of vCPU {RACER}: {e}"));
        return;
    }
    let since = time::now();
    loop {
        let (state, done) = (Racer::load(), DONE.load(Ordering::Acquire));
        if done >= ROUNDS {
            check(
                ran,
                true,
                format_args!("{done} rounds in {} ms", time::elapsed_ms(since)),
            );
            break;
        }
        if !matches!(state, Racer::SettingUp | Racer::Racing) {
            check(ran, false, state.why());
            return;
        }
        if time::elapsed_ms(since) > RACE_TIMEOUT_MS {
            check(
                ran,
                false,
                format_args!("{done} rounds in {RACE_TIMEOUT_MS} ms ({state:?})"),
            );
            return;
        }
        core::hint::spin_loop();
    }
    if k < n {
        say!(
            "guest: resetting with the racer going (restart {} of {})",
            k + 1,
            n
        );
        reset_now();
    } else {
        check_restarts_counted(k, n);
        checks::close();
        say!("guest: powering off with the racer going");
    }
}
