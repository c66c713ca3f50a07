//! `reboot=N`: the guest resets its VM (PSCI SYSTEM_RESET) until it has
//! restarted N times, and checks in every incarnation after the first that
//! nothing of the previous one survived in its memory.
//!
//! The VM's RAM is scrubbed at a restart, so the guest cannot count its
//! boots itself: the hypervisor's counters page says how often the VM
//! restarted (`smmuhyp,vm-counters`, the word at +0x20). Incarnation K
//! (from 0):
//!
//! 1. for K >= 1, check `restart-K-memory-scrubbed`: every byte of its free
//!    RAM (from the end of its image to the device tree) reads zero, where
//!    incarnation K - 1 wrote a pattern;
//! 2. for K < N, fills its free RAM with a pattern naming K, closes its
//!    checks and resets the VM;
//! 3. for K = N, check `restarts-counted`: the counter says N; then the run
//!    ends as every run does (checks closed, SYSTEM_OFF).
//!
//! `reboot_under_dma=MS` resets the VM once, with DMA in flight:
//! incarnation 0 keeps its NVMe controller's admin queue full of Identify
//! commands, each writing 4 KiB into a page of its free RAM, for MS ms;
//! then it starts its `edu` copying a page of pattern into its free RAM
//! (QEMU's `edu` does that about 100 ms later, after the restart has
//! scrubbed the memory unless the device was stopped) and resets the VM
//! with the NVMe queue still full. Incarnation 1 checks that nothing landed
//! in its free RAM, watching it for a while
//! (`dma-after-restart-landed-nowhere`), that both devices' bus mastering
//! is off (`devices-stopped-by-restart`) and that the controller was reset
//! (`nvme-reset-by-restart`).

use crate::checks::{self, check};
use crate::edu::{
    config_read, Edu, EduError, PciHost, CFG_COMMAND, CMD_BUS_MASTER, EDU_DEVICE, EDU_VENDOR,
};
use crate::nvme::{
    identify, reg, Controller, Interrupts, CNS_CONTROLLER, NVME_DEVICE, NVME_VENDOR,
};
use crate::{mmio, time};
use flat_device_tree::Fdt;

/// The counters page's word: restarts so far.
const RESTARTS: u64 = 0x20;

unsafe extern "C" {
    /// The end of the guest's image, its stack included (`guest.ld`).
    static __image_end: u8;
}

/// The pattern incarnation `k` writes at `addr`.
fn pattern(k: u64, addr: u64) -> u64 {
    0x5eed_0000_0000_0000 | (k << 40) | (addr & 0xff_ffff_ffff)
}

/// How long incarnation 1 watches its free RAM for DMA of the old one:
/// longer than the `edu`'s transfer takes.
pub const WATCH_MS: u64 = 1000;

/// The VM's restarts so far (the counters page's word at +0x20); None
/// without a counters page.
pub fn restarts(fdt: &Fdt<'_>) -> Option<u64> {
    let counters = fdt
        .find_compatible(&["smmuhyp,vm-counters"])?
        .reg()
        .next()?
        .starting_address as u64;
    // SAFETY: a 64-bit register of the counters page our device tree
    // names; Device memory, MMU off.
    Some(unsafe { mmio::read64(counters + RESTARTS) })
}

/// The VM's restarts so far; without a counters page, a failed check
/// `name` and None.
pub fn restarts_or_fail(name: &str, fdt: &Fdt<'_>) -> Option<u64> {
    let k = restarts(fdt);
    if k.is_none() {
        check(
            name,
            false,
            "no counters page (smmuhyp,vm-counters) in the device tree",
        );
    }
    k
}

/// Check `restarts-counted`: the run has restarted `k` times of `n` asked.
pub fn check_restarts_counted(k: u64, n: u64) {
    check(
        "restarts-counted",
        k == n,
        format_args!("{k} restarts, {n} asked"),
    );
}

/// The free RAM: from the end of our image to the page of the device tree.
pub fn free_ram(dtb: u64) -> (u64, u64) {
    // Only the symbol's address is used.
    (core::ptr::addr_of!(__image_end) as u64, dtb & !0xfff)
}

/// The first non-zero doubleword of `[start, end)`, if any.
fn first_nonzero(start: u64, end: u64) -> Option<(u64, u64)> {
    (start..end).step_by(8).find_map(|addr| {
        // SAFETY: an aligned doubleword of our free RAM, which nothing of
        // ours uses (the callers pass the free RAM only).
        let v = unsafe { (addr as *const u64).read_volatile() };
        (v != 0).then_some((addr, v))
    })
}

/// Check `name`: `[start, end)` reads all zero, and stays so for `ms`
/// milliseconds (DMA of an old incarnation would land there).
pub fn check_stays_zero(name: impl core::fmt::Display, (start, end): (u64, u64), ms: u64) {
    let since = time::now();
    let mut found = first_nonzero(start, end);
    while found.is_none() && time::elapsed_ms(since) < ms {
        found = first_nonzero(start, end);
    }
    let kib = (end - start) >> 10;
    match found {
        None if ms == 0 => check(name, true, format_args!("{kib} KiB all zero")),
        None => check(name, true, format_args!("{kib} KiB all zero for {ms} ms")),
        Some((addr, v)) => check(name, false, format_args!("{v:#x} at {addr:#x}")),
    };
}

/// Closes this incarnation's checks and resets the VM; a reset that
/// returns is a failed check of the next run.
pub fn reset_now() {
    checks::close();
    let result = crate::psci_system_reset();
    check(
        "system-reset-returned",
        false,
        format_args!("SYSTEM_RESET returned {result:?}"),
    );
}

/// `reboot_under_dma=MS`: see the module documentation.
pub fn under_dma(fdt: &Fdt<'_>, dtb: u64, ms: u64) {
    let Some(k) = restarts_or_fail("reboot-under-dma-ran", fdt) else {
        return;
    };
    let Some(host) = PciHost::from_fdt(fdt) else {
        check(
            "reboot-under-dma-ran",
            false,
            "no PCI host bridge in the device tree",
        );
        return;
    };
    let (start, end) = free_ram(dtb);
    if k == 0 {
        if let Err(e) = flood_then_reset(&host, (start, end), ms) {
            check("reboot-under-dma-ran", false, e);
        }
        return;
    }
    // Watch the free RAM: DMA of the old incarnation would land there.
    check_stays_zero("dma-after-restart-landed-nowhere", (start, end), WATCH_MS);
    // Bus mastering as the new incarnation finds it, before anything of
    // ours turns it on.
    let master = |vendor, device| {
        crate::edu::find_device(&host, vendor, device)
            .map(|d| config_read(&host, d, CFG_COMMAND) & CMD_BUS_MASTER != 0)
    };
    let (nvme, edu) = (
        master(NVME_VENDOR, NVME_DEVICE),
        master(EDU_VENDOR, EDU_DEVICE),
    );
    let shown = |m: Option<bool>| match m {
        None => "absent",
        Some(true) => "on",
        Some(false) => "off",
    };
    check(
        "devices-stopped-by-restart",
        nvme == Some(false) && edu == Some(false),
        format_args!("bus mastering: NVMe {}, edu {}", shown(nvme), shown(edu)),
    );
    // Opening it turns memory decoding on to read its registers.
    match Controller::open(&host).map(|nvme| (nvme.cc(), nvme.csts())) {
        Ok((cc, csts)) => check(
            "nvme-reset-by-restart",
            cc & reg::CC_EN == 0 && csts & reg::CSTS_RDY == 0,
            format_args!("CC {cc:#x}, CSTS {csts:#x}"),
        ),
        Err(e) => check("nvme-reset-by-restart", false, e),
    };
}

/// Why incarnation 0 of `reboot_under_dma` could not run.
enum Stop {
    Nvme(crate::nvme::NvmeError),
    Edu(EduError),
}

impl core::fmt::Display for Stop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Nvme(e) => write!(f, "{e}"),
            Self::Edu(e) => write!(f, "{e}"),
        }
    }
}

/// Incarnation 0 of `reboot_under_dma`: the flood, the `edu` transfer,
/// then the reset with the queue full.
fn flood_then_reset(host: &PciHost, (start, end): (u64, u64), ms: u64) -> Result<(), Stop> {
    let mut nvme = Controller::open(host).map_err(Stop::Nvme)?;
    nvme.start(Interrupts::Polled).map_err(Stop::Nvme)?;
    // The edu's buffer gets a page of pattern, from the first free page.
    let edu = Edu::probe(host).map_err(Stop::Edu)?;
    for addr in (start..start + 4096).step_by(8) {
        // SAFETY: our first free page, which no Rust object occupies.
        unsafe { (addr as *mut u64).write_volatile(0xd0d0_0000_0000_0000 | addr) };
    }
    edu.dma_into_buffer(start).map_err(Stop::Edu)?;
    let pages = ((end - start) / 4096).max(1);
    let mut next = 0;
    say!(
        "guest: Identify commands into {} pages of free RAM for {} ms, then a reset",
        pages,
        ms
    );
    let since = time::now();
    let mut done = 0u64;
    while time::elapsed_ms(since) < ms {
        while nvme.reap().is_some() {
            done += 1;
        }
        nvme.release();
        while nvme.can_submit() {
            let prp1 = start + (next % pages) * 4096;
            next += 1;
            // SAFETY: PRP1 is a page of our free RAM, between our image and
            // the device tree, which no Rust object occupies.
            unsafe { nvme.queue(|cid| identify(cid, prp1, CNS_CONTROLLER)) };
        }
        nvme.ring();
    }
    // The edu's copy lands about 100 ms from now, in the last free page.
    edu.start_dma_from_buffer(end - 4096);
    say!(
        "guest: {} commands completed, {} in flight, an edu transfer started: resetting",
        done,
        nvme.outstanding()
    );
    reset_now();
    Ok(())
}

/// Runs incarnation K's part; returns only when the run is to end as
/// usual (K = N, or nothing to go on with). `dtb` is where the device tree
/// lies, the end of the free RAM.
pub fn run(fdt: &Fdt<'_>, dtb: u64, n: u64) {
    let Some(k) = restarts_or_fail("restarts-counted", fdt) else {
        return;
    };
    let (start, end) = free_ram(dtb);
    say!(
        "guest: incarnation {} of {}, free RAM {:#x}..{:#x}",
        k,
        n + 1,
        start,
        end
    );
    if k >= 1 {
        check_stays_zero(format_args!("restart-{k}-memory-scrubbed"), (start, end), 0);
    }
    if k >= n {
        check_restarts_counted(k, n);
        return;
    }
    for addr in (start..end).step_by(8) {
        // SAFETY: as above; the pattern is for the next incarnation to
        // look for.
        unsafe { (addr as *mut u64).write_volatile(pattern(k, addr)) };
    }
    say!(
        "guest: free RAM filled, resetting (restart {} of {})",
        k + 1,
        n
    );
    reset_now();
}
