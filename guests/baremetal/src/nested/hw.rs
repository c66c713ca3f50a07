//! `vsmmu_edu`: the guest programs its own (virtual) SMMUv3 for its `edu`
//! and checks what a user of nested translation relies on, one check line
//! each (`crate::checks`):
//!
//! 1. DMA through an IOVA its stage-1 tables map works, and DMA to the
//!    bare IPA (unmapped at stage 1) is stopped, with an F_TRANSLATION
//!    event carrying its virtual StreamID in its event queue and its
//!    event-queue interrupt pending at its GIC.
//! 2. Invalidation is precise: after unmapping two warm pages, the SMMU
//!    still uses its cached entries (so the checks below can fail); after
//!    TLBI_NH_VA + CMD_SYNC for one page that page faults (an event again),
//!    while the other page's stale entry survives (the invalidation was not
//!    widened), until its own TLBI_NH_VA.
//! 3. Nothing leaks through memory outside the VM: a stage-1 mapping to an
//!    IPA outside its RAM, a CD table outside its RAM and a TTB0 outside its
//!    RAM all stop the DMA (the hypervisor reports the stage-2 faults); with
//!    the STE and CD restored, DMA works again.
//! 4. An STE the vSMMU cannot honour (stage 2) makes the DMA abort with
//!    C_BAD_STE in the event queue; a valid STE again, and DMA works.
//! 5. An illegal command (the stage-2 TLBI_S12_VMALL) stops the command
//!    queue with CMDQ_CONS.ERR = CERROR_ILL at that command, GERROR.CMDQ_ERR
//!    and the gerror interrupt; the guest replaces it with a CMD_SYNC,
//!    acknowledges GERRORN, and the queue and DMA work again.
//! 6. Every event record in its queue carried its own (virtual) StreamID.
//!
//! What stops the checks early is a failed check `vsmmu-checks-ran`.
//!
//! The MMU stays off: every access is to Device memory at its IPA, so all
//! table and queue accesses below are aligned volatile 32/64-bit ones.

use super::{
    cd, ste_abort, ste_bypass, ste_illegal, ste_stage1, CERROR_ILL, CMD_BYTES, CONS_ERR_SHIFT,
    CR0_CMDQEN, CR0_EVENTQEN, CR0_SMMUEN, CR1_WB_ISH, CR2_RECINVSID_PTM, C_BAD_STE, EVT_BYTES,
    F_PERMISSION, F_TRANSLATION, GERROR_CMDQ_ERR, IRQ_EVENTQ, IRQ_GERROR, Q_BASE_RWA, STE_BYTES,
};
use super::{cmd, event_name, pte, reg, EventRecord, VSmmuDt};
use crate::arena::Arena;
use crate::checks::check;
use crate::edu::{pattern, Edu, EduError, PciHost, ReadOutcome, DMA_LEN};
use crate::gic;
use crate::{mmio, time};
use aarch64_cpu::asm::barrier;
use flat_device_tree::Fdt;

/// The guest memory the checks use, one page each.
#[repr(usize)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    /// Linear stream table (up to 64 STEs).
    Strtab,
    /// The single CD.
    Cd,
    /// Command queue (up to 256 commands).
    Cmdq,
    /// Event queue (up to 128 records).
    Evtq,
    /// Stage-1 tables, levels 1 to 3.
    L1,
    L2,
    L3,
    /// DMA source and destination.
    Src,
    Dst,
}

const PAGES: usize = 9;

static ARENA: Arena<PAGES> = Arena::new();

/// A page's IPA (the MMU is off: addresses are IPAs).
fn ipa(page: Page) -> u64 {
    ARENA.page(page as usize)
}

/// Writes `v` at byte `offset` of `page`.
fn store(page: Page, offset: u64, v: u64) {
    ARENA.store(page as usize, offset, v)
}

fn load(page: Page, offset: u64) -> u64 {
    ARENA.load(page as usize, offset)
}

/// Fills a DMA page with pattern `seed`, or zeros.
fn fill(page: Page, seed: Option<u8>) {
    for i in (0..DMA_LEN).step_by(8) {
        let mut w = [0u8; 8];
        for (j, b) in w.iter_mut().enumerate() {
            *b = seed.map_or(0, |s| pattern(s, i + j));
        }
        store(page, i as u64, u64::from_le_bytes(w));
    }
}

/// A DMA page's bytes.
fn bytes(page: Page) -> impl Iterator<Item = u8> + Clone {
    (0..DMA_LEN as u64)
        .step_by(8)
        .flat_map(move |o| load(page, o).to_le_bytes())
}

/// EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG, bit 31 (§6.3.29).
const OVFLG: u32 = 1 << 31;

/// How long the SMMU may take for anything (ms of the virtual counter).
const TIMEOUT_MS: u64 = 2000;

/// IOVAs of the checks: far from the RAM's IPAs, so that a stream that
/// bypassed stage 1 would miss.
const IOVA_SRC: u64 = 0x4_2000_0000;
const IOVA_DST: u64 = 0x4_2000_1000;
const IOVA_FOREIGN: u64 = 0x4_2000_2000;
/// The ASID of the guest's context.
const ASID: u16 = 7;
/// An IPA outside the VM's RAM (where the hypervisor's own image is in
/// physical memory: a stage 2 that let it through would be a disaster).
const OUTSIDE: u64 = 0x4020_0000;

/// Test patterns.
const SEED_A: u8 = 0x11;
const SEED_B: u8 = 0x22;
const SEED_C: u8 = 0x33;
const SEED_D: u8 = 0x44;

/// Why the checks could not run, or stopped.
#[derive(Debug)]
pub enum Setup {
    NoPci,
    NoVsmmu,
    NoStream,
    Edu(EduError),
    Timeout(&'static str),
    BadIdr(u32),
}

impl core::fmt::Display for Setup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoPci => write!(f, "no PCI host bridge"),
            Self::NoVsmmu => write!(f, "no arm,smmu-v3 node"),
            Self::NoStream => write!(f, "no StreamID below 64 in iommu-map"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Self::BadIdr(idr0) => write!(f, "IDR0 {idr0:#x} lacks AArch64 stage 1 with 4K pages"),
        }
    }
}

/// The guest's driver for its vSMMU.
struct Smmu {
    base: u64,
    dt: VSmmuDt,
    /// log2 of the command and event queue sizes.
    cmdq_log2: u32,
    evtq_log2: u32,
    /// Our CMDQ_PROD and EVENTQ_CONS (index and wrap bit).
    prod: u32,
    evt_cons: u32,
    /// The StreamID every event record must carry, the records read, and
    /// those for another StreamID with the first such StreamID.
    vsid: u32,
    records: u32,
    foreign: u32,
    first_foreign: u32,
}

impl Smmu {
    fn read(&self, off: u64) -> u32 {
        // SAFETY: a 32-bit register of the vSMMU's frame our device tree
        // names; Device memory.
        unsafe { mmio::read32(self.base + off) }
    }

    fn write(&self, off: u64, v: u32) {
        // SAFETY: as in `read`.
        unsafe { mmio::write32(self.base + off, v) }
    }

    fn write64(&self, off: u64, v: u64) {
        // SAFETY: as in `read`; the base registers take 64-bit accesses.
        unsafe { mmio::write64(self.base + off, v) }
    }

    /// Polls until `done` or the timeout.
    fn wait(&self, what: &'static str, mut done: impl FnMut(&Self) -> bool) -> Result<(), Setup> {
        let start = time::now();
        while !done(self) {
            if time::now().wrapping_sub(start) > time::ms_to_ticks(TIMEOUT_MS) {
                return Err(Setup::Timeout(what));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    fn set_cr0(&self, v: u32) -> Result<(), Setup> {
        self.write(reg::CR0, v);
        self.wait("CR0ACK", |s| s.read(reg::CR0ACK) == v)
    }

    /// Resets and enables the queues (SMMUEN stays 0) with an empty linear
    /// stream table covering `vsid`.
    fn init(dt: VSmmuDt, vsid: u32) -> Result<Self, Setup> {
        let mut s = Smmu {
            base: dt.base,
            dt,
            cmdq_log2: 0,
            evtq_log2: 0,
            prod: 0,
            evt_cons: 0,
            vsid,
            records: 0,
            foreign: 0,
            first_foreign: 0,
        };
        let idr0 = s.read(reg::IDR0);
        let idr1 = s.read(reg::IDR1);
        let idr5 = s.read(reg::IDR5);
        say!(
            "guest: vsmmu at {:#x}: IDR0 {:#x} IDR1 {:#x} IDR5 {:#x}, eventq irq {}, gerror irq {}",
            s.base,
            idr0,
            idr1,
            idr5,
            dt.eventq,
            dt.gerror
        );
        // Stage 1 (S1P, bit 1) with AArch64 tables (TTF bit 3), 4K granule.
        if idr0 & 0b10 == 0 || idr0 >> 2 & 0b10 == 0 || idr5 >> 4 & 1 == 0 {
            return Err(Setup::BadIdr(idr0));
        }
        s.cmdq_log2 = (idr1 >> 21 & 0x1f).min(8);
        s.evtq_log2 = (idr1 >> 16 & 0x1f).min(7);
        s.set_cr0(0)?;
        s.write(reg::CR1, CR1_WB_ISH);
        s.write(reg::CR2, CR2_RECINVSID_PTM);
        for i in 0..64 {
            for w in 0..8 {
                store(Page::Strtab, i * STE_BYTES + w * 8, 0);
            }
        }
        let log2size = 32 - vsid.leading_zeros();
        s.write64(reg::STRTAB_BASE, ipa(Page::Strtab) | Q_BASE_RWA);
        s.write(reg::STRTAB_BASE_CFG, log2size.max(1));
        s.write64(
            reg::CMDQ_BASE,
            ipa(Page::Cmdq) | Q_BASE_RWA | u64::from(s.cmdq_log2),
        );
        s.write(reg::CMDQ_PROD, 0);
        s.write(reg::CMDQ_CONS, 0);
        s.write64(
            reg::EVENTQ_BASE,
            ipa(Page::Evtq) | Q_BASE_RWA | u64::from(s.evtq_log2),
        );
        s.write(reg::EVENTQ_PROD, 0);
        s.write(reg::EVENTQ_CONS, 0);
        s.write(reg::IRQ_CTRL, IRQ_GERROR | IRQ_EVENTQ);
        s.wait("IRQ_CTRLACK", |s| {
            s.read(reg::IRQ_CTRLACK) == IRQ_GERROR | IRQ_EVENTQ
        })?;
        s.set_cr0(CR0_CMDQEN | CR0_EVENTQEN)?;
        // As a driver does at reset: no stale configuration or TLB entries.
        s.submit(&[cmd::cfgi_all(), cmd::tlbi_nh_all()])?;
        Ok(s)
    }

    /// Queues one command; returns its queue index.
    fn push(&mut self, c: [u64; 2]) -> u32 {
        let mask = (1 << self.cmdq_log2) - 1;
        let index = self.prod & mask;
        store(Page::Cmdq, u64::from(index) * CMD_BYTES, c[0]);
        store(Page::Cmdq, u64::from(index) * CMD_BYTES + 8, c[1]);
        // Index and wrap bit advance together.
        self.prod = (self.prod + 1) & ((mask << 1) | 1);
        index
    }

    /// Whether the SMMU consumed everything we queued.
    fn drained(&self) -> bool {
        self.read(reg::CMDQ_CONS) & 0xf_ffff == self.prod
    }

    /// Submits `cmds` and a CMD_SYNC, and waits for the SYNC's completion.
    fn submit(&mut self, cmds: &[[u64; 2]]) -> Result<(), Setup> {
        for &c in cmds {
            self.push(c);
        }
        self.push(cmd::sync());
        barrier::dsb(barrier::SY);
        self.write(reg::CMDQ_PROD, self.prod);
        self.wait("CMD_SYNC", Self::drained)
    }

    /// Writes STE `vsid`.
    fn write_ste(&self, vsid: u32, ste: [u64; 8]) {
        // Word 0 (with V) last, as a driver updating a live STE would.
        for (w, v) in ste.iter().enumerate().rev() {
            store(Page::Strtab, u64::from(vsid) * STE_BYTES + w as u64 * 8, *v);
        }
    }

    fn write_cd(&self, ttb0: u64, ips: u8) {
        let c = cd(ttb0, ASID, ips);
        for (w, v) in c.iter().enumerate().rev() {
            store(Page::Cd, w as u64 * 8, *v);
        }
    }

    /// The records that arrived since the last call, at most `out.len()`
    /// of them kept. Each is printed unless it repeats the previous one's
    /// type, stream, page and direction (a faulting 4 KiB DMA yields one
    /// record per access); repeats are counted in one line. An overflow
    /// (EVENTQ_PROD.OVFLG) is reported and acknowledged.
    fn events(&mut self, out: &mut [Option<EventRecord>; 4]) -> usize {
        let mask = (1u32 << self.evtq_log2) - 1;
        let mut n = 0;
        let mut last: Option<EventRecord> = None;
        let mut repeats = 0u32;
        loop {
            let prod_reg = self.read(reg::EVENTQ_PROD);
            if (prod_reg ^ self.evt_cons) & OVFLG != 0 {
                say!("guest: event queue overflowed (EVENTQ_PROD.OVFLG): acknowledged");
                self.evt_cons ^= OVFLG;
                self.write(reg::EVENTQ_CONS, self.evt_cons);
            }
            let prod = prod_reg & 0xf_ffff;
            if prod == self.evt_cons & 0xf_ffff {
                break;
            }
            let i = u64::from(self.evt_cons & mask);
            let w = [0, 1, 2, 3].map(|k| load(Page::Evtq, i * EVT_BYTES + k * 8));
            let e = EventRecord::decode(w);
            self.records += 1;
            if e.sid != self.vsid {
                if self.foreign == 0 {
                    self.first_foreign = e.sid;
                }
                self.foreign += 1;
            }
            let same = last.is_some_and(|l| {
                (l.kind, l.sid, l.addr >> 12, l.read) == (e.kind, e.sid, e.addr >> 12, e.read)
            });
            if same {
                repeats += 1;
            } else {
                if repeats > 0 {
                    say!("guest: ... and {} more like it", repeats);
                    repeats = 0;
                }
                if (F_TRANSLATION..=F_PERMISSION).contains(&e.kind) {
                    say!(
                        "guest: event {} vsid {:#x} input {:#x} {}{}",
                        e.name(),
                        e.sid,
                        e.addr,
                        if e.read { "read" } else { "write" },
                        if e.s2 { " (stage 2)" } else { "" }
                    );
                } else {
                    say!("guest: event {} vsid {:#x}", e.name(), e.sid);
                }
                last = Some(e);
                if n < out.len() {
                    out[n] = Some(e);
                    n += 1;
                }
            }
            let wrap_idx = (mask << 1) | 1;
            self.evt_cons = (self.evt_cons & OVFLG) | ((self.evt_cons + 1) & wrap_idx);
            self.write(reg::EVENTQ_CONS, self.evt_cons);
        }
        if repeats > 0 {
            say!("guest: ... and {} more like it", repeats);
        }
        n
    }

    /// Check `name`: an F_TRANSLATION at stage 1 for `vsid` at `addr` in
    /// the event queue, and the event-queue interrupt.
    fn expect_fault(&mut self, name: &str, vsid: u32, addr: u64, read: bool) -> bool {
        self.expect_event(name, F_TRANSLATION, vsid, Some((addr, read)))
    }

    /// Check `name`: an event of type `kind` for `vsid` (at stage 1, at
    /// `addr` in direction `read` when given) in the event queue, and the
    /// event-queue interrupt. Detail: `KIND for vsid V[ at A]: yes; eventq
    /// irq: yes`, `NO` for what is missing.
    fn expect_event(&mut self, name: &str, kind: u8, vsid: u32, at: Option<(u64, bool)>) -> bool {
        let start = time::now();
        let mut found = None;
        while found.is_none() && time::now().wrapping_sub(start) < time::ms_to_ticks(TIMEOUT_MS) {
            let mut got = [None; 4];
            self.events(&mut got);
            found = got.into_iter().flatten().find(|e| {
                e.kind == kind
                    && e.sid == vsid
                    && at.is_none_or(|(addr, read)| e.addr == addr && e.read == read && !e.s2)
            });
        }
        let irq = gic::take(self.dt.eventq);
        let yes = |b: bool| if b { "yes" } else { "NO" };
        let ok = found.is_some() && irq;
        let kind = event_name(kind);
        match at {
            Some((addr, _)) => check(
                name,
                ok,
                format_args!(
                    "{} for vsid {:#x} at {:#x}: {}; eventq irq: {}",
                    kind,
                    vsid,
                    addr,
                    yes(found.is_some()),
                    yes(irq)
                ),
            ),
            None => check(
                name,
                ok,
                format_args!(
                    "{} for vsid {:#x}: {}; eventq irq: {}",
                    kind,
                    vsid,
                    yes(found.is_some()),
                    yes(irq)
                ),
            ),
        }
    }
}

/// DMA through the IOVAs: SRC filled with `seed`'s pattern, read into the
/// `edu`'s buffer through IOVA_SRC, written back through IOVA_DST into a
/// zeroed DST; whether DST then holds the pattern.
fn iova_round_trip(edu: &Edu, seed: u8) -> Result<bool, EduError> {
    fill(Page::Src, Some(seed));
    fill(Page::Dst, None);
    edu.dma_into_buffer(IOVA_SRC)?;
    edu.dma_from_buffer(IOVA_DST)?;
    Ok(ReadOutcome::judge(bytes(Page::Dst), seed) == ReadOutcome::Intact)
}

/// A DMA read from `from` into the `edu`'s buffer, which holds `seed`'s
/// pattern, then the buffer written to our DST page through IOVA_DST:
/// what the read left in the buffer.
fn dma_read(edu: &Edu, from: u64, seed: u8) -> Result<ReadOutcome, EduError> {
    // The caller left the buffer holding `seed`'s pattern.
    edu.dma_into_buffer(from)?;
    fill(Page::Dst, None);
    edu.dma_from_buffer(IOVA_DST)?;
    Ok(ReadOutcome::judge(bytes(Page::Dst), seed))
}

/// `vsmmu_edu`: runs the checks; what stops them is a failed check
/// `vsmmu-checks-ran`.
pub fn run(fdt: &Fdt<'_>) {
    if let Err(e) = checks(fdt) {
        check("vsmmu-checks-ran", false, e);
    }
}

/// A vSMMU with its queues and translation on and one stream in bypass
/// (the VM's stage 2 alone): the racer of `reboot_raced` (`race.rs`), the
/// only user of this module's pages while it runs.
pub struct BypassStream {
    s: Smmu,
    vsid: u32,
}

impl BypassStream {
    /// Sets the vSMMU up with the stream of function 00:`device`.0 in
    /// bypass.
    pub fn new(fdt: &Fdt<'_>, device: u8) -> Result<Self, Setup> {
        let dt = VSmmuDt::from_fdt(fdt).ok_or(Setup::NoVsmmu)?;
        let vsid = VSmmuDt::stream_of(fdt, device)
            .filter(|&v| v < 64)
            .ok_or(Setup::NoStream)?;
        let s = Smmu::init(dt, vsid)?;
        s.write_ste(vsid, ste_bypass());
        barrier::dsb(barrier::SY);
        s.set_cr0(CR0_CMDQEN | CR0_EVENTQEN | CR0_SMMUEN)?;
        let mut b = BypassStream { s, vsid };
        b.refresh()?;
        Ok(b)
    }

    /// Writes the stream's STE again and has the vSMMU read it (CFGI_STE,
    /// CMD_SYNC, waited for).
    pub fn refresh(&mut self) -> Result<(), Setup> {
        self.s.write_ste(self.vsid, ste_bypass());
        self.s.submit(&[cmd::cfgi_ste(self.vsid)])
    }
}

/// CR0 of the vSMMU the device tree names; None without one.
pub fn cr0(fdt: &Fdt<'_>) -> Option<u32> {
    let dt = VSmmuDt::from_fdt(fdt)?;
    // SAFETY: CR0, a 32-bit register of the vSMMU's frame our device tree
    // names; Device memory.
    Some(unsafe { mmio::read32(dt.base + reg::CR0) })
}

/// `vsmmu_flood=MS`: keeps the vSMMU's command queue full of valid
/// invalidations (TLBI_NH_VA and TLBI_NH_ASID, a CMD_SYNC closing each
/// batch) for at least MS milliseconds and then until a key arrives on the
/// console (at most 10 MS), then reports how many commands went
/// through: check `vsmmu-flood`, `pass N commands in B batches, T ms`.
/// Another VM's work must go on meanwhile: the hypervisor handles a bounded
/// number of commands per trap.
pub fn flood(fdt: &Fdt<'_>, ms: u64) {
    let Some(dt) = VSmmuDt::from_fdt(fdt) else {
        check("vsmmu-flood", false, Setup::NoVsmmu);
        return;
    };
    let mut s = match Smmu::init(dt, 0) {
        Ok(s) => s,
        Err(e) => {
            check("vsmmu-flood", false, e);
            return;
        }
    };
    // Fill the queue but one entry (and the SYNC).
    let batch = (1u64 << s.cmdq_log2) - 2;
    let start = time::now();
    let (mut commands, mut batches) = (0u64, 0u64);
    // At least `ms` (so that it is a flood whatever the host's speed),
    // then until a key arrives on the console (the test types one once the
    // other VM is done), at most ten times `ms`.
    let (floor, cap) = (
        time::ms_to_ticks(ms),
        time::ms_to_ticks(ms.saturating_mul(10)),
    );
    let mut keyed = false;
    loop {
        let elapsed = time::now().wrapping_sub(start);
        keyed = keyed || crate::console::try_read().is_some();
        if elapsed >= cap || (elapsed >= floor && keyed) {
            break;
        }
        for i in 0..batch {
            let asid = (i % 64) as u16;
            s.push(if i % 16 == 15 {
                cmd::tlbi_nh_asid(asid)
            } else {
                cmd::tlbi_nh_va(asid, IOVA_SRC + (i << 12))
            });
        }
        if let Err(e) = s.submit(&[]) {
            check(
                "vsmmu-flood",
                false,
                format_args!("stopped after {} commands: {}", commands, e),
            );
            return;
        }
        commands += batch + 1;
        batches += 1;
    }
    let elapsed_ms = time::elapsed_ms(start);
    check(
        "vsmmu-flood",
        true,
        format_args!(
            "{} commands in {} batches, {} ms",
            commands, batches, elapsed_ms
        ),
    );
}

fn checks(fdt: &Fdt<'_>) -> Result<(), Setup> {
    let host = PciHost::from_fdt(fdt).ok_or(Setup::NoPci)?;
    let dt = VSmmuDt::from_fdt(fdt).ok_or(Setup::NoVsmmu)?;
    let edu = Edu::probe(&host).map_err(Setup::Edu)?;
    let vsid = VSmmuDt::stream_of(fdt, edu.device).ok_or(Setup::NoStream)?;
    if vsid >= 64 {
        return Err(Setup::NoStream);
    }
    say!("guest: edu at 00:{:02x}.0: vsid {:#x}", edu.device, vsid);
    gic::init(dt.gicd, &[dt.eventq, dt.gerror]);
    let mut s = Smmu::init(dt, vsid)?;
    let ips = (s.read(reg::IDR5) & 7) as u8;

    // Stage-1 tables: IOVA_SRC -> SRC, IOVA_DST -> DST.
    for p in [Page::L1, Page::L2, Page::L3] {
        fill(p, None);
    }
    store(
        Page::L1,
        pte::index(IOVA_SRC, 1) as u64 * 8,
        pte::table(ipa(Page::L2)),
    );
    store(
        Page::L2,
        pte::index(IOVA_SRC, 2) as u64 * 8,
        pte::table(ipa(Page::L3)),
    );
    let l3 = |va: u64| pte::index(va, 3) as u64 * 8;
    store(Page::L3, l3(IOVA_SRC), pte::page(ipa(Page::Src)));
    store(Page::L3, l3(IOVA_DST), pte::page(ipa(Page::Dst)));
    s.write_cd(ipa(Page::L1), ips);
    s.write_ste(vsid, ste_stage1(ipa(Page::Cd)));
    barrier::dsb(barrier::SY);
    s.set_cr0(CR0_CMDQEN | CR0_EVENTQEN | CR0_SMMUEN)?;
    let e = Setup::Edu;
    let works = |ok: bool| if ok { "" } else { "data wrong" };

    // 1. Translation through the guest's stage 1.
    let ok = iova_round_trip(&edu, SEED_A).map_err(e)?;
    check("dma-through-iova", ok, works(ok));

    // The buffer holds A; a DMA read from the bare IPA of SRC (holding B)
    // must not replace it.
    fill(Page::Src, Some(SEED_B));
    let got = dma_read(&edu, ipa(Page::Src), SEED_A).map_err(e)?;
    check(
        "dma-by-ipa-with-stage-1-on",
        got != ReadOutcome::Leaked,
        got.verdict(),
    );
    s.expect_fault("event-for-dma-by-ipa", vsid, ipa(Page::Src), true);

    // 2. Precise invalidation. Both pages are warm (SRC read, DST written
    // just now through their IOVAs); unmap both.
    fill(Page::Src, Some(SEED_C));
    edu.dma_into_buffer(IOVA_SRC).map_err(e)?;
    edu.dma_from_buffer(IOVA_DST).map_err(e)?;
    store(Page::L3, l3(IOVA_SRC), 0);
    store(Page::L3, l3(IOVA_DST), 0);
    barrier::dsb(barrier::SY);
    // Without invalidation the SMMU may still use its TLB: this is what
    // the checks below must see disappear.
    fill(Page::Dst, None);
    edu.dma_from_buffer(IOVA_DST).map_err(e)?;
    let stale = ReadOutcome::judge(bytes(Page::Dst), SEED_C) == ReadOutcome::Intact;
    check(
        "unmapped-page-still-cached",
        stale,
        if stale {
            "dma write through the stale entry went through"
        } else {
            "dma write through the stale entry was blocked: nothing cached, the invalidation checks prove nothing"
        },
    );
    s.submit(&[cmd::tlbi_nh_va(ASID, IOVA_DST)])?;
    fill(Page::Src, Some(SEED_D));
    fill(Page::Dst, None);
    // D into the buffer by the bare IPA would fault; write C (still in the
    // buffer) to the unmapped DST.
    edu.dma_from_buffer(IOVA_DST).map_err(e)?;
    let blocked = bytes(Page::Dst).all(|b| b == 0);
    check(
        "unmap-tlbi-nh-va-cmd-sync",
        blocked,
        if blocked {
            "dma write blocked"
        } else {
            "dma write LANDED"
        },
    );
    s.expect_fault("event-after-tlbi-nh-va", vsid, IOVA_DST, false);
    // SRC's entry was not invalidated: a stale hit proves TLBI_NH_VA was
    // not widened to the ASID or the VM.
    edu.dma_into_buffer(IOVA_SRC).map_err(e)?;
    fill(Page::Dst, None);
    let survived = {
        // Map DST again to look at the buffer.
        store(Page::L3, l3(IOVA_DST), pte::page(ipa(Page::Dst)));
        barrier::dsb(barrier::SY);
        edu.dma_from_buffer(IOVA_DST).map_err(e)?;
        ReadOutcome::judge(bytes(Page::Dst), SEED_D) == ReadOutcome::Intact
    };
    check(
        "other-page-after-tlbi-nh-va",
        stale == survived,
        if survived {
            "still cached (not widened)"
        } else if stale {
            "gone: the invalidation was widened"
        } else {
            "gone (nothing was cached before either)"
        },
    );
    s.submit(&[cmd::tlbi_nh_va(ASID, IOVA_SRC)])?;
    fill(Page::Src, Some(SEED_B));
    fill(Page::Dst, None);
    // The buffer holds D; after the TLBI a read of SRC must not load B.
    edu.dma_into_buffer(IOVA_SRC).map_err(e)?;
    edu.dma_from_buffer(IOVA_DST).map_err(e)?;
    let out = ReadOutcome::judge(bytes(Page::Dst), SEED_D);
    check(
        "second-tlbi-nh-va",
        out == ReadOutcome::Intact || out == ReadOutcome::Zeroed,
        out.verdict(),
    );
    s.expect_fault("event-after-second-tlbi-nh-va", vsid, IOVA_SRC, true);
    store(Page::L3, l3(IOVA_SRC), pte::page(ipa(Page::Src)));
    barrier::dsb(barrier::SY);

    // 3. Memory outside the VM. A stage-1 mapping to it:
    store(Page::L3, l3(IOVA_FOREIGN), pte::page(OUTSIDE));
    barrier::dsb(barrier::SY);
    fill(Page::Src, Some(SEED_A));
    edu.dma_into_buffer(IOVA_SRC).map_err(e)?;
    let out = dma_read(&edu, IOVA_FOREIGN, SEED_A).map_err(e)?;
    check(
        "iova-to-ipa-outside-vm",
        out != ReadOutcome::Leaked,
        out.verdict(),
    );
    edu.dma_into_buffer(IOVA_SRC).map_err(e)?;
    edu.dma_from_buffer(IOVA_FOREIGN).map_err(e)?;
    say!("guest: dma write to iova -> ipa {:#x}: issued", OUTSIDE);

    // A CD table outside the VM, then a TTB0 outside the VM; each then
    // restored, and DMA must work again.
    for case in ["CD table", "TTB0"] {
        if case == "CD table" {
            s.write_ste(vsid, ste_stage1(OUTSIDE));
            s.submit(&[cmd::cfgi_ste(vsid), cmd::tlbi_nh_asid(ASID)])?;
        } else {
            s.write_cd(OUTSIDE, ips);
            s.submit(&[cmd::cfgi_cd(vsid, 0), cmd::tlbi_nh_asid(ASID)])?;
        }
        // SRC holds B now: it must reach neither the buffer nor DST.
        fill(Page::Src, Some(SEED_B));
        fill(Page::Dst, None);
        edu.dma_into_buffer(IOVA_SRC).map_err(e)?;
        edu.dma_from_buffer(IOVA_DST).map_err(e)?;
        let out = ReadOutcome::judge(bytes(Page::Dst), SEED_B);
        // B must not reach DST (DST is unreachable too: it stays zero).
        let (what, restored) = if case == "CD table" {
            ("cd-table-outside-vm", "dma-after-cd-table-restored")
        } else {
            ("ttb0-outside-vm", "dma-after-ttb0-restored")
        };
        let leaked = out == ReadOutcome::Intact;
        check(
            what,
            !leaked,
            if leaked {
                "dma went through"
            } else {
                "blocked"
            },
        );
        if case == "CD table" {
            s.write_ste(vsid, ste_stage1(ipa(Page::Cd)));
            s.submit(&[cmd::cfgi_ste(vsid)])?;
        } else {
            s.write_cd(ipa(Page::L1), ips);
            s.submit(&[cmd::cfgi_cd(vsid, 0)])?;
        }
        let ok = iova_round_trip(&edu, SEED_A).map_err(e)?;
        check(restored, ok, works(ok));
    }

    // An STE the vSMMU cannot honour (stage 2 translation, which it does
    // not advertise): the device's DMA aborts with C_BAD_STE, as on
    // hardware; a valid STE again, and DMA works.
    s.write_ste(vsid, ste_illegal());
    s.submit(&[cmd::cfgi_ste(vsid)])?;
    fill(Page::Src, Some(SEED_B));
    edu.dma_into_buffer(IOVA_SRC).map_err(e)?;
    s.expect_event("illegal-ste-event", C_BAD_STE, vsid, None);
    s.write_ste(vsid, ste_stage1(ipa(Page::Cd)));
    s.submit(&[cmd::cfgi_ste(vsid)])?;
    let ok = iova_round_trip(&edu, SEED_A).map_err(e)?;
    check("dma-after-valid-ste", ok, works(ok));

    // 4. An illegal command, and recovery.
    let mut evs = [None; 4];
    s.events(&mut evs);
    gic::take(dt.gerror);
    let bad = s.push(cmd::tlbi_s12_vmall(1));
    s.push(cmd::sync());
    barrier::dsb(barrier::SY);
    s.write(reg::CMDQ_PROD, s.prod);
    let stopped = s
        .wait("CMDQ_ERR", |s| {
            (s.read(reg::GERROR) ^ s.read(reg::GERRORN)) & GERROR_CMDQ_ERR != 0
        })
        .is_ok();
    let cons = s.read(reg::CMDQ_CONS);
    let err = cons >> CONS_ERR_SHIFT & 0x7f;
    let at = cons & ((1 << s.cmdq_log2) - 1);
    let irq = gic::take(dt.gerror);
    check(
        "illegal-command",
        stopped && err == CERROR_ILL && at == bad && irq,
        format_args!(
            "at index {}: GERROR.CMDQ_ERR {}, CMDQ_CONS.ERR {}, at index {}, gerror irq {}",
            bad,
            if stopped { "set" } else { "NOT set" },
            err,
            at,
            if irq { "yes" } else { "NO" }
        ),
    );
    // Recover as Linux does: replace it with a CMD_SYNC, acknowledge.
    let sync = cmd::sync();
    store(Page::Cmdq, u64::from(bad) * CMD_BYTES, sync[0]);
    store(Page::Cmdq, u64::from(bad) * CMD_BYTES + 8, sync[1]);
    barrier::dsb(barrier::SY);
    s.write(reg::GERRORN, s.read(reg::GERROR));
    let resumed = s.wait("CMDQ after recovery", Smmu::drained).is_ok();
    check(
        "command-queue-after-gerrorn",
        resumed,
        if resumed { "runs again" } else { "stuck" },
    );
    s.submit(&[cmd::tlbi_nh_asid(ASID)])?;
    let ok = iova_round_trip(&edu, SEED_C).map_err(e)?;
    check("dma-after-recovery", ok, works(ok));

    // Every record so far was the guest's own: none carried the physical
    // StreamID or another one.
    s.events(&mut evs);
    if s.foreign == 0 {
        check(
            "events-for-own-stream",
            true,
            format_args!("all {} event records for vsid {:#x}", s.records, vsid),
        );
    } else {
        check(
            "events-for-own-stream",
            false,
            format_args!(
                "{} of {} event records for another StreamID than vsid {:#x} (first {:#x})",
                s.foreign, s.records, vsid, s.first_foreign
            ),
        );
    }

    // Leave the device quiet: abort its stream.
    s.write_ste(vsid, ste_abort());
    s.submit(&[cmd::cfgi_ste(vsid)])?;
    Ok(())
}
