//! The `edu_msi` checks, one check line each (`crate::checks`):
//!
//! 1. `its-int-lpi-8192`: with the redistributor's LPI tables, the ITS's
//!    device table and command queue programmed and MAPC, MAPD (the edu's
//!    DeviceID from `msi-map`), MAPTI (its event 0 to LPI 8192) run, an INT
//!    of that event makes LPI 8192 arrive: the translation exists.
//! 2. `cpu-translater-write-ignored`: the CPU writing the EventID to
//!    GITS_TRANSLATER raises nothing (a CPU write carries no DeviceID) and
//!    does not fault.
//! 3. `dma-to-translater`: the edu writes the EventID to GITS_TRANSLATER by
//!    DMA (the shape of its MSI: one 32-bit write, through the SMMU); the
//!    detail says whether LPI 8192 followed (`issued; LPI 8192: yes|no`).
//!    That is the ITS's to decide by who wrote: on hardware every write of
//!    the device carries its requester ID, and the LPI follows; QEMU gives
//!    a device's DMA (unlike its MSI messages) no requester ID, so its ITS
//!    sees DeviceID 0, which nobody granted, and the LPI must not follow.
//!    The scenario test judges which, from QEMU's trace of the write.
//!
//! What stops the checks early is a failed check `edu-msi-checks-ran`.
//! Interrupts are never taken (PSTATE.I stays masked): they are seen by
//! acknowledging them (`crate::gic::take`). The MMU stays off.

use super::{cmd, one_page_base, propbaser, reg, ItsDt, ID_BITS, LPI, LPI_CONFIG, TRANSLATER};
use crate::arena::Arena;
use crate::checks::check;
use crate::edu::{Edu, EduError, PciHost};
use crate::nvme::NvmeError;
use crate::{gic, mmio, time};
use aarch64_cpu::asm::barrier;
use flat_device_tree::Fdt;

/// The event the guest maps: the edu's MSI capability has one vector, so
/// its grant is one event.
pub(super) const EVENT: u32 = 0;
/// How long an LPI may take to arrive after what raises it.
pub(super) const LPI_WAIT_MS: u64 = 1000;
/// How long the guest waits for the ITS to run its commands.
const QUEUE_WAIT_MS: u64 = 1000;

/// The guest memory the checks use, one 4 KiB page each (the arena is
/// 64 KiB aligned, as GICR_PENDBASER wants).
#[repr(usize)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Page {
    /// LPI pending table (2 KiB for 14 INTID bits).
    Pending,
    /// LPI configuration table, INTIDs 8192..16383 (two pages).
    Config,
    /// ITS device table (512 entries of 8 bytes).
    Devices = 3,
    /// ITS command queue (128 commands).
    Queue,
    /// The edu's ITT.
    Itt,
    /// DMA source: the EventID the device writes.
    Src,
    /// Where the attacks aim a message at their own RAM.
    Sink,
    /// Data the NVMe controller writes (`nvme_msix_attack`).
    Data,
}

const PAGES: usize = 9;

static ARENA: Arena<PAGES> = Arena::new();

/// A page's address (= its IPA: the MMU is off).
pub(super) fn ipa(page: Page) -> u64 {
    ARENA.page(page as usize)
}

/// Stores the doubleword `v` at `offset` of `page`.
fn store(page: Page, offset: u64, v: u64) {
    ARENA.store(page as usize, offset, v)
}

/// Why the checks stopped.
pub(super) enum Stop {
    /// Something is missing from the device tree.
    Dt(&'static str),
    /// The edu cannot be used.
    Edu(EduError),
    /// The ITS did not run the commands.
    Queue(u64),
    /// The function has no (visible) MSI capability.
    NoMsi,
    /// The NVMe controller cannot be used.
    Nvme(NvmeError),
    /// The function's MSI-X capability is missing or unusable.
    Msix(&'static str),
}

impl core::fmt::Display for Stop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Dt(what) => write!(f, "{what}"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::Queue(creadr) => write!(
                f,
                "the ITS did not run its commands within {QUEUE_WAIT_MS} ms (GITS_CREADR {creadr:#x})"
            ),
            Self::NoMsi => write!(f, "the edu shows no MSI capability"),
            Self::Nvme(e) => write!(f, "{e}"),
            Self::Msix(why) => write!(f, "{why}"),
        }
    }
}

impl From<NvmeError> for Stop {
    fn from(e: NvmeError) -> Self {
        Self::Nvme(e)
    }
}

impl From<EduError> for Stop {
    fn from(e: EduError) -> Self {
        Self::Edu(e)
    }
}

/// The guest's ITS: its registers and command queue.
pub(super) struct Its {
    base: u64,
    /// GITS_CWRITER's offset for the next command.
    next: u64,
    /// RDbase of our redistributor as commands name it.
    pub(super) target: u64,
}

impl Its {
    fn r64(&self, off: u64) -> u64 {
        // SAFETY: a 64-bit register of the ITS our device tree names;
        // Device memory.
        unsafe { mmio::read64(self.base + off) }
    }

    fn w64(&self, off: u64, v: u64) {
        // SAFETY: as in `r64`.
        unsafe { mmio::write64(self.base + off, v) }
    }

    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as in `r64`, a 32-bit register.
        unsafe { mmio::write32(self.base + off, v) }
    }

    /// Tables, queue and Enabled, as Linux's ITS driver sets them up.
    fn init(dt: &ItsDt) -> Self {
        let mut its = Its {
            base: dt.its,
            next: 0,
            target: 0,
        };
        // Processor number 0 (us) unless the ITS wants addresses.
        if its.r64(reg::TYPER) & reg::TYPER_PTA != 0 {
            its.target = dt.gicr >> 16;
        }
        its.w32(reg::CTLR, 0);
        its.w64(reg::BASER0, one_page_base(ipa(Page::Devices)));
        its.w64(reg::CBASER, one_page_base(ipa(Page::Queue)));
        its.w64(reg::CWRITER, 0);
        its.w32(reg::CTLR, reg::CTLR_ENABLED);
        its
    }

    /// Writes `cmds`, moves GITS_CWRITER past them and waits until
    /// GITS_CREADR has caught up (reading it runs the commands).
    pub(super) fn submit(&mut self, cmds: &[[u64; 4]]) -> Result<(), Stop> {
        for c in cmds {
            for (i, &dw) in c.iter().enumerate() {
                store(Page::Queue, self.next + 8 * i as u64, dw);
            }
            self.next = (self.next + 32) % 4096;
        }
        barrier::dsb(barrier::SY);
        self.w64(reg::CWRITER, self.next);
        let start = time::now();
        loop {
            let creadr = self.r64(reg::CREADR);
            if creadr & 0xf_ffe0 == self.next {
                return Ok(());
            }
            if time::elapsed_ms(start) > QUEUE_WAIT_MS {
                return Err(Stop::Queue(creadr));
            }
        }
    }
}

/// Whether LPI 8192 arrives within `ms` milliseconds (everything pending
/// meanwhile is acknowledged and ended).
pub(super) fn lpi_within(ms: u64) -> bool {
    any_within(ms, &[LPI])
}

/// Whether any of `intids` arrives within `ms` milliseconds (everything
/// pending meanwhile is acknowledged and ended).
pub(super) fn any_within(ms: u64, intids: &[u32]) -> bool {
    let start = time::now();
    loop {
        if gic::take_any(intids) {
            return true;
        }
        if time::elapsed_ms(start) > ms {
            return false;
        }
    }
}

/// Runs the checks; a failed `edu-msi-checks-ran` says what stopped them.
pub fn run(fdt: &Fdt<'_>) {
    if let Err(why) = checks(fdt) {
        check("edu-msi-checks-ran", false, why);
    }
}

/// What [`setup`] leaves ready.
pub(super) struct Ready {
    /// The GIC and ITS.
    pub dt: ItsDt,
    /// The PCI host bridge.
    pub host: PciHost,
    /// The edu, memory decode and bus mastering on.
    pub edu: Edu,
    /// Its DeviceID.
    pub device: u32,
    /// The ITS, enabled.
    pub its: Its,
}

/// Finds the edu and does [`setup_its`] for it.
pub(super) fn setup(fdt: &Fdt<'_>) -> Result<Ready, Stop> {
    let host = PciHost::from_fdt(fdt).ok_or(Stop::Dt(
        "no PCI host bridge (pci-host-ecam-generic) in the device tree",
    ))?;
    let edu = Edu::probe(&host)?;
    let (dt, device, its) = setup_its(fdt, edu.device, 1)?;
    say!(
        "guest: edu at 00:{:02x}.0, DeviceID {:#x}: event {} -> LPI {}",
        edu.device,
        device,
        EVENT,
        LPI
    );
    Ok(Ready {
        dt,
        host,
        edu,
        device,
        its,
    })
}

/// Programs the CPU interface, distributor, our redistributor's LPIs
/// ([`LPI`] and the one after it enabled) and the ITS as Linux does, and
/// maps event [`EVENT`] of bus 0 `function` to [`LPI`], its ITT sized for
/// 2^`event_bits` events. Returns the GIC, the function's DeviceID and the
/// ITS.
pub(super) fn setup_its(
    fdt: &Fdt<'_>,
    function: u8,
    event_bits: u8,
) -> Result<(ItsDt, u32, Its), Stop> {
    let dt = ItsDt::from_fdt(fdt).ok_or(Stop::Dt(
        "no GICv3 with an ITS (arm,gic-v3-its) in the device tree",
    ))?;
    let device = ItsDt::device_of(fdt, function).ok_or(Stop::Dt(
        "the PCI host bridge has no msi-map entry for the function",
    ))?;

    // The CPU interface and distributor, then our redistributor's LPIs:
    // the configuration bytes of LPIs 8192 and 8193 before the tables are
    // named.
    gic::init(dt.gicd, &[]);
    store(
        Page::Config,
        0,
        u64::from_le_bytes([LPI_CONFIG, LPI_CONFIG, 0, 0, 0, 0, 0, 0]),
    );
    barrier::dsb(barrier::SY);
    // SAFETY: 64-bit GICR_PROPBASER / GICR_PENDBASER and 32-bit GICR_CTLR
    // of our redistributor (the first, RD_base); Device memory.
    unsafe {
        mmio::write64(
            dt.gicr + reg::GICR_PROPBASER,
            propbaser(ipa(Page::Config), ID_BITS),
        );
        mmio::write64(dt.gicr + reg::GICR_PENDBASER, ipa(Page::Pending));
        mmio::write32(dt.gicr + reg::GICR_CTLR, reg::GICR_CTLR_ENABLE_LPIS);
    }

    let mut its = Its::init(&dt);
    let target = its.target;
    its.submit(&[
        cmd::mapc(0, target),
        cmd::sync(target),
        cmd::mapd(device, ipa(Page::Itt), event_bits),
        cmd::mapti(device, EVENT, LPI, 0),
        cmd::sync(target),
    ])?;
    Ok((dt, device, its))
}

fn checks(fdt: &Fdt<'_>) -> Result<(), Stop> {
    let Ready {
        dt,
        edu,
        device,
        mut its,
        ..
    } = setup(fdt)?;
    let target = its.target;
    its.submit(&[cmd::int(device, EVENT), cmd::sync(target)])?;
    let ok = lpi_within(LPI_WAIT_MS);
    check(
        "its-int-lpi-8192",
        ok,
        if ok {
            "INT of the edu's event: LPI 8192 taken"
        } else {
            "no LPI 8192 after INT"
        },
    );

    // SAFETY: GITS_TRANSLATER, a 32-bit write-only register of our ITS.
    unsafe { mmio::write32(dt.its + TRANSLATER, EVENT) };
    let raised = lpi_within(LPI_WAIT_MS / 4);
    check(
        "cpu-translater-write-ignored",
        !raised,
        if raised {
            "the CPU's write raised LPI 8192"
        } else {
            "no LPI, no fault"
        },
    );

    store(Page::Src, 0, u64::from(EVENT));
    edu.dma_into_buffer(ipa(Page::Src))?;
    edu.dma_word_from_buffer(dt.its + TRANSLATER)?;
    let lpi = lpi_within(LPI_WAIT_MS);
    check(
        "dma-to-translater",
        true,
        if lpi {
            "issued; LPI 8192: yes"
        } else {
            "issued; LPI 8192: no"
        },
    );
    Ok(())
}
