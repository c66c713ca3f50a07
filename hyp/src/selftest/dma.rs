//! The EL2 DMA self-test (`selftest=dma`): proves with QEMU's `edu` device
//! that the SMMU confines DMA before any guest exists.
//!
//! 1. Power-on: an unowned stream aborts (a DMA write leaves memory intact).
//! 2. Attached to a domain with one page mapped (IPA != PA): DMA reads and
//!    writes that page and the bytes read back match.
//! 3. DMA to an unmapped IPA writes nothing, and the SMMU reports a decoded,
//!    attributed translation fault.
//! 4. Detached: the same mapped IPA aborts again.
//! 5. The domain is destroyed and its memory returned.
//!
//! Each check is one check line (see the parent module), and each entry
//! point closes its run with its summary line.

use alloc::format;
use alloc::string::String;

use super::Tally;
use crate::drivers::edu::{Direction, Edu};
use crate::drivers::iommu::HostIommu;
use crate::drivers::pci::{self, Bdf, ConfigAccess, Function};
use crate::mm;
use log::{error, info};
use smmu::addr::{Ipa, PhysAddr};
use smmu::event::Event;
use smmu::hw::{DmaRegion, PAGE_SIZE};
use smmu::stage2::S2Attrs;

/// Where the test page appears in the domain's address space.
const TEST_IPA: u64 = 0x8000_0000;
/// IPA size of the test domain.
const TEST_IPA_BITS: u32 = 40;
const HALF: u64 = PAGE_SIZE as u64 / 2;
/// Length of the DMAs that must fail: short, so the fault reports stay few.
const PROBE: u64 = 16;

fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(7)
}

fn fill(page: &DmaRegion, range: core::ops::Range<usize>, f: impl Fn(usize) -> u8) {
    for w in range.start / 8..range.end / 8 {
        let word = (0..8).fold(0u64, |acc, b| acc | (u64::from(f(w * 8 + b)) << (8 * b)));
        page.write(w, word);
    }
}

fn matches(page: &DmaRegion, range: core::ops::Range<usize>, f: impl Fn(usize) -> u8) -> bool {
    (range.start / 8..range.end / 8).all(|w| {
        let word = page.read(w);
        (0..8).all(|b| (word >> (8 * b)) as u8 == f(w * 8 + b))
    })
}

/// What went wrong with a DMA that must complete and leave `page`
/// holding `f`'s bytes, None if nothing did.
fn dma_left(
    dma: Result<(), crate::drivers::edu::EduError>,
    page: &DmaRegion,
    what: &str,
    f: impl Fn(usize) -> u8,
) -> Option<String> {
    match dma {
        Err(e) => Some(format!("the DMA failed: {e}")),
        Ok(()) if !matches(page, 0..PAGE_SIZE, f) => Some(format!("{what} changed")),
        Ok(()) => None,
    }
}

/// Runs the self-test on `edu`; returns whether every check passed.
pub fn run(host: &mut HostIommu, cfg: &dyn ConfigAccess, edu_fn: &Function) -> bool {
    let mut tally = Tally::default();
    let ok = with_decode(cfg, edu_fn.bdf, || {
        run_checks(host, cfg, edu_fn, &mut tally)
    });
    tally.close();
    ok
}

/// Runs `f` with memory decode on for `bdf`, which enumeration left off:
/// the hypervisor drives this `edu` itself. Decode and bus mastering are
/// off again afterwards.
pub(super) fn with_decode<T>(cfg: &dyn ConfigAccess, bdf: Bdf, f: impl FnOnce() -> T) -> T {
    set_command(cfg, bdf, pci::reg::CMD_MEM, true);
    let result = f();
    set_command(cfg, bdf, pci::reg::CMD_MEM | pci::reg::CMD_MASTER, false);
    result
}

/// The body of [`run`], reporting its checks to `tally`.
fn run_checks(
    host: &mut HostIommu,
    cfg: &dyn ConfigAccess,
    edu_fn: &Function,
    tally: &mut Tally,
) -> bool {
    let bdf = edu_fn.bdf;
    let Some(sid) = host.stream_of(bdf) else {
        error!("self-test: edu {bdf} has no StreamID");
        return false;
    };
    let Some(bar0) = edu_fn.bars.first().and_then(|b| b.cpu_addr) else {
        error!("self-test: edu {bdf} has no BAR0");
        return false;
    };
    // SAFETY: BAR0 was placed by pci::enumerate and mapped as a device.
    let edu = match unsafe { Edu::new(bar0) } {
        Ok(e) => e,
        Err(e) => {
            error!("self-test: edu {bdf}: {e}");
            return false;
        }
    };
    let (Ok(page), Ok(canary)) = (
        DmaRegion::alloc(&mm::TEST_MEM, PAGE_SIZE, PAGE_SIZE),
        DmaRegion::alloc(&mm::TEST_MEM, PAGE_SIZE, PAGE_SIZE),
    ) else {
        error!("self-test: out of memory");
        return false;
    };
    info!(
        "self-test: edu {bdf} sid {sid}, test page PA {}, canary PA {}",
        page.pa(),
        canary.pa()
    );
    set_command(cfg, bdf, pci::reg::CMD_MASTER, true);
    let ok = checks(host, &edu, sid, &page, &canary, tally);
    set_command(cfg, bdf, pci::reg::CMD_MASTER, false);
    // SAFETY: the device's stream aborts (detached or never attached) and its
    // bus mastering is off: nothing can reach these pages any more.
    unsafe {
        page.free(&mm::TEST_MEM);
        canary.free(&mm::TEST_MEM);
    }
    ok
}

/// Sets or clears the command register bits `bits` of `bdf`.
pub(super) fn set_command(cfg: &dyn ConfigAccess, bdf: Bdf, bits: u32, on: bool) {
    let cmd = cfg.read32(bdf, pci::reg::COMMAND) & 0xffff;
    let cmd = if on { cmd | bits } else { cmd & !bits };
    cfg.write32(bdf, pci::reg::COMMAND, cmd);
}

fn checks(
    host: &mut HostIommu,
    edu: &Edu,
    sid: smmu::addr::StreamId,
    page: &DmaRegion,
    canary: &DmaRegion,
    t: &mut Tally,
) -> bool {
    let mut all = true;
    let canary_byte = |_| 0x5a;
    fill(canary, 0..PAGE_SIZE, canary_byte);

    // 1. Unowned since power-on: its STE aborts. A write aimed at the
    //    canary's physical address (what a bypassing SMMU would let through)
    //    must leave it intact.
    let dma = edu.dma(Direction::ToMemory, canary.pa().raw(), 0, PROBE);
    host.report_events();
    all &= t.check(
        "unowned-device-aborts",
        "from power-on: a DMA write to the canary's PA left it intact",
        dma_left(dma, canary, "the canary", canary_byte),
    );

    // 2. A domain with one page mapped at TEST_IPA.
    let id = match host.iommu.create_domain(TEST_IPA_BITS) {
        Ok(id) => id,
        Err(e) => {
            error!("self-test: cannot create a domain: {e}");
            return false;
        }
    };
    let vmid = host.iommu.domain(id).map(|d| d.vmid());
    let setup = host
        .iommu
        .map(
            id,
            Ipa(TEST_IPA),
            page.pa(),
            PAGE_SIZE as u64,
            S2Attrs::NORMAL_RW,
        )
        .and_then(|()| host.iommu.attach(id, sid));
    if let Err(e) = setup {
        error!("self-test: cannot map and attach: {e}");
        let _ = host.iommu.destroy(id);
        return false;
    }
    host.set_owner(sid, "self-test domain");
    info!(
        "self-test: domain {id:?} vmid {:?}: IPA {TEST_IPA:#x} -> PA {}, sid {sid} attached (stage 2)",
        vmid,
        page.pa()
    );
    fill(page, 0..HALF as usize, pattern);
    let copied = edu
        .dma(Direction::FromMemory, TEST_IPA, 0, HALF)
        .and_then(|()| edu.dma(Direction::ToMemory, TEST_IPA + HALF, 0, HALF));
    let back = |i: usize| pattern(i - HALF as usize);
    let failure = match copied {
        Err(e) => Some(format!("the DMA failed: {e}")),
        Ok(()) if !matches(page, HALF as usize..PAGE_SIZE, back) => {
            Some("the page does not hold the bytes copied through the domain".into())
        }
        Ok(()) => None,
    };
    all &= t.check(
        "dma-through-domain",
        "the bytes read back through the domain are the expected ones",
        failure,
    );

    // 3. Unmapped IPA: the canary's PA used as an IPA. Nothing may land
    //    there, and the SMMU must say why.
    let dma = edu.dma(Direction::ToMemory, canary.pa().raw(), 0, PROBE);
    let events = host.report_events();
    let fault = events
        .iter()
        .any(|e| is_s2_write_fault(e, sid, canary.pa()));
    let failure = dma_left(dma, canary, "the canary", canary_byte)
        .or_else(|| (!fault).then(|| format!("no stage-2 write fault for sid {sid} at that IPA")));
    all &= t.check(
        "unmapped-ipa-faults",
        "a DMA write to an unmapped IPA wrote nothing and raised a stage-2 fault",
        failure,
    );

    // 4. Detach: the mapped IPA aborts again.
    let detached = host.iommu.detach(sid);
    host.set_owner(sid, "nobody");
    fill(page, 0..PAGE_SIZE, |_| 0);
    let dma = edu.dma(Direction::ToMemory, TEST_IPA, 0, PROBE);
    host.report_events();
    let failure = match detached {
        Err(e) => Some(format!("detach failed: {e}")),
        Ok(_) => dma_left(dma, page, "the formerly mapped page", |_| 0),
    };
    all &= t.check(
        "dma-aborts-after-detach",
        "a DMA write to the formerly mapped IPA wrote nothing",
        failure,
    );

    // 5. Tear down.
    let destroyed = host.iommu.destroy(id);
    all &= t.check(
        "domain-destroyed",
        "TLBI_S12_VMALL, tables freed",
        destroyed.err().map(|e| format!("{e}")),
    );
    all
}

/// Whether `e` is a stage-2 write fault of stream `sid` in the page of `ipa`.
pub(super) fn is_s2_write_fault(e: &Event, sid: smmu::addr::StreamId, ipa: PhysAddr) -> bool {
    match e {
        Event::Fault { info, .. } => {
            info.sid == sid
                && info.s2
                && !info.access.rnw
                && info.input_addr.raw() & !0xfff == ipa.raw()
        }
        _ => false,
    }
}

/// Checks that a device nobody owns cannot DMA: a write aimed at a canary's
/// physical address leaves it intact (check `unowned-edu-BB-DD-F-aborts`,
/// a run of its own). Returns whether it held.
pub fn probe_unowned(host: &mut HostIommu, cfg: &dyn ConfigAccess, f: &Function) -> bool {
    let mut tally = Tally::default();
    let b = f.bdf;
    let name = format!("unowned-edu-{:02x}-{:02x}-{}-aborts", b.bus, b.dev, b.func);
    let failure = with_decode(cfg, b, || probe(host, cfg, f));
    let ok = tally.check(
        &name,
        "a DMA write to a canary's PA left it intact",
        failure,
    );
    tally.close();
    ok
}

/// The DMA of [`probe_unowned`]: what went wrong, None if nothing did.
fn probe(host: &mut HostIommu, cfg: &dyn ConfigAccess, f: &Function) -> Option<String> {
    let Some(bar0) = f.bars.first().and_then(|b| b.cpu_addr) else {
        return Some(format!("edu {} has no BAR0", f.bdf));
    };
    // SAFETY: BAR0 was placed by pci::enumerate and mapped as a device.
    let edu = match unsafe { Edu::new(bar0) } {
        Ok(edu) => edu,
        Err(e) => return Some(format!("edu {}: {e}", f.bdf)),
    };
    let Ok(canary) = DmaRegion::alloc(&mm::TEST_MEM, PAGE_SIZE, PAGE_SIZE) else {
        return Some("out of memory".into());
    };
    fill(&canary, 0..PAGE_SIZE, |_| 0xa5);
    set_command(cfg, f.bdf, pci::reg::CMD_MASTER, true);
    let dma = edu.dma(Direction::ToMemory, canary.pa().raw(), 0, PROBE);
    set_command(cfg, f.bdf, pci::reg::CMD_MASTER, false);
    host.report_events();
    let failure = dma_left(dma, &canary, "the canary", |_| 0xa5);
    // SAFETY: the stream aborts and bus mastering is off again.
    unsafe { canary.free(&mm::TEST_MEM) };
    failure
}
