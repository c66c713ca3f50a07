//! The physical SMMUv3 driver: reset, command queue, event queue, STEs.
//!
//! [`Smmu::new`] probes the ID registers and brings the SMMU from whatever
//! state firmware left it in to "enabled, every stream aborts" (IHI 0070
//! §6.3.9 CR0, §6.3.14 GBPA; the order is the one the specification's
//! initialisation notes and Linux's driver follow): incoming transactions are
//! made to abort *before* the SMMU is disabled, so there is no window in
//! which DMA bypasses translation. Afterwards the hypervisor submits
//! commands ([`Smmu::submit`], [`Smmu::sync`]), installs STEs
//! ([`Smmu::write_ste`]) and drains fault records ([`Smmu::drain_events`]).
//! Per-VM domains on top of this live in [`crate::domain`].
//!
//! Every wait is bounded by [`SmmuOptions::timeout_us`], counted with
//! [`Mmio::delay_us`]. All memory comes from the [`PageAllocator`] given to
//! [`Smmu::new`] and is freed only once the SMMU can no longer use it.

use crate::addr::StreamId;
use crate::cmd::{self, Command};
use crate::event::Event;
use crate::hw::{DmaRegion, Mmio, OutOfMemory, PageAllocator};
use crate::queue::{CmdqCons, EvtqCons, EvtqProd, Queue, QueueIndex, MAX_LOG2SIZE};
use crate::regs::{offset, Features, CR0, CR1, CR2, GBPA, GERROR, IRQ_CTRL, Q_BASE};
use crate::ste::Ste;
use crate::strtab::{StreamTable, StrtabError, MAX_LINEAR_SID_BITS};
use alloc::format;
use alloc::string::String;
use core::fmt;
use log::{debug, error, warn};
use tock_registers::fields::FieldValue;

/// Bytes of one command-queue entry (§4.1).
const CMD_BYTES: usize = 16;
/// Bytes of one event record (§7.3).
const EVT_BYTES: usize = 32;
/// CMDQ_CONS.ERR: ATC invalidation timed out; CONS still points at the
/// CMD_SYNC, which is retried as it is (§7.1).
const CERROR_ATC_INV_SYNC: u8 = 3;

/// Driver configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuOptions {
    /// log2 of the wanted command-queue entries; the SMMU's IDR1.CMDQS caps
    /// it. Default 8 (256 entries, one 4 KiB page).
    pub cmdq_log2_entries: u8,
    /// log2 of the wanted event-queue entries; IDR1.EVENTQS caps it.
    /// Default 7 (128 records, one 4 KiB page).
    pub evtq_log2_entries: u8,
    /// Largest number of StreamID bits the stream table covers (further
    /// capped by IDR1.SIDSIZE; StreamIDs beyond abort with C_BAD_STREAMID).
    pub max_sid_bits: u8,
    /// Bound of every wait (CR0ACK, GBPA.Update, queue space, CMD_SYNC), in
    /// microseconds. Default one second.
    pub timeout_us: u32,
    /// Enable the wired global-error and event-queue interrupts
    /// (SMMU_IRQ_CTRL, §6.3.16). Default off: the hypervisor polls.
    pub irqs: bool,
}

impl Default for SmmuOptions {
    fn default() -> Self {
        Self {
            cmdq_log2_entries: 8,
            evtq_log2_entries: 7,
            max_sid_bits: 32,
            timeout_us: 1_000_000,
            irqs: false,
        }
    }
}

/// Errors of the SMMU driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmmuError {
    /// IDR0.S2P == 0: no stage 2, so the hypervisor cannot confine DMA.
    #[error("SMMU has no stage 2 translation (IDR0.S2P == 0)")]
    NoStage2,
    /// IDR0.TTF does not include AArch64 translation tables.
    #[error("SMMU does not walk AArch64 translation tables (IDR0.TTF)")]
    NoAArch64Tables,
    /// IDR5.GRAN4K == 0: the stage-2 tables use the 4 KiB granule.
    #[error("SMMU does not support the 4 KiB granule (IDR5.GRAN4K == 0)")]
    No4kGranule,
    /// IDR1.TABLES_PRESET / QUEUES_PRESET / REL: fixed bases are not
    /// supported.
    #[error("SMMU has preset table or queue bases (IDR1), not supported")]
    PresetBases,
    /// Memory for the stream table or a queue could not be allocated.
    #[error("out of memory for SMMU structures")]
    OutOfMemory,
    /// A register handshake did not complete in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The command queue stayed full for the whole timeout.
    #[error("command queue full: the SMMU does not consume commands")]
    CmdqTimeout,
    /// A CMD_SYNC was not consumed in time.
    #[error("CMD_SYNC did not complete in time")]
    SyncTimeout,
    /// The SMMU rejected a command since the last CMD_SYNC (it was skipped;
    /// later commands ran).
    #[error("SMMU rejected a command: {0}")]
    CommandRejected(CmdqFault),
    /// The stream table refused the operation (StreamID out of range, out
    /// of memory for a level-2 array).
    #[error("stream table: {0}")]
    StreamTable(StrtabError),
}

impl From<OutOfMemory> for SmmuError {
    fn from(_: OutOfMemory) -> Self {
        Self::OutOfMemory
    }
}

impl From<StrtabError> for SmmuError {
    fn from(e: StrtabError) -> Self {
        match e {
            StrtabError::OutOfMemory(_) => Self::OutOfMemory,
            e => Self::StreamTable(e),
        }
    }
}

/// A command the SMMU refused (§7.1, SMMU_CMDQ_CONS.ERR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdqFault {
    /// Queue index (without wrap bit) of the command.
    pub index: u32,
    /// CMDQ_CONS.ERR: 1 CERROR_ILL, 2 CERROR_ABT, 3 CERROR_ATC_INV_SYNC.
    pub cerror: u8,
    /// The entry as it was in the queue.
    pub words: [u64; 2],
    /// The entry decoded, if it decodes at all.
    pub cmd: Option<Command>,
}

impl fmt::Display for CmdqFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.cerror {
            0 => "CERROR_NONE",
            1 => "CERROR_ILL",
            2 => "CERROR_ABT",
            3 => "CERROR_ATC_INV_SYNC",
            _ => "CERROR_?",
        };
        write!(f, "{what} at index {}: ", self.index)?;
        match &self.cmd {
            Some(c) => write!(f, "{c}"),
            None => write!(
                f,
                "undecodable {:#018x} {:#018x}",
                self.words[0], self.words[1]
            ),
        }
    }
}

/// What [`Smmu::handle_gerror`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GerrorReport {
    /// The active errors (GERROR ^ GERRORN, §6.3.19), now acknowledged.
    pub active: u32,
    /// The command that stopped the queue, if GERROR.CMDQ_ERR was active.
    pub cmdq_fault: Option<CmdqFault>,
}

/// The command queue (§3.5): memory, our PROD, the last CONS seen.
struct CmdQueue {
    mem: DmaRegion,
    q: Queue,
    timeout_us: u32,
    /// First fault handled since the last completed CMD_SYNC.
    fault: Option<CmdqFault>,
}

/// The event queue (§3.5, §7.2): memory, our CONS, our overflow ack.
struct EvtQueue {
    mem: DmaRegion,
    cons: QueueIndex,
    ovack: bool,
    overflows: u64,
}

/// Polls `done` until it is true, at most `timeout_us` times 1 µs apart.
fn poll<M: Mmio>(mmio: &M, timeout_us: u32, mut done: impl FnMut(&M) -> bool) -> bool {
    for _ in 0..=timeout_us {
        if done(mmio) {
            return true;
        }
        mmio.delay_us(1);
    }
    false
}

impl CmdQueue {
    fn log2(&self) -> u8 {
        self.q.log2size()
    }

    fn entry_pa(&self, index: u32) -> crate::addr::PhysAddr {
        crate::addr::PhysAddr(self.mem.pa().raw() + u64::from(index) * CMD_BYTES as u64)
    }

    /// Reads SMMU_CMDQ_CONS into our view of the queue.
    fn refresh_cons<M: Mmio>(&mut self, mmio: &M) -> CmdqCons {
        let raw = mmio.read32(offset::CMDQ_CONS);
        // LOG2SIZE was validated at construction, so this cannot fail.
        let cons = CmdqCons::from_raw(self.log2(), raw).unwrap_or(CmdqCons {
            rd: self.q.cons(),
            err: 0,
        });
        self.q.set_cons_raw(cons.rd.raw());
        cons
    }

    fn publish<M: Mmio>(&self, mmio: &M) {
        // The Mmio contract orders this write after the entry stores.
        mmio.write32(offset::CMDQ_PROD, self.q.prod().raw());
    }

    /// Whether a GERROR.CMDQ_ERR is waiting to be handled.
    fn error_pending<M: Mmio>(mmio: &M) -> bool {
        let active = mmio.read32(offset::GERROR) ^ mmio.read32(offset::GERRORN);
        active & u32::from(GERROR::CMDQ_ERR::SET) != 0
    }

    fn submit<M: Mmio>(
        &mut self,
        mmio: &M,
        alloc: &dyn PageAllocator,
        cmds: &[Command],
    ) -> Result<(), SmmuError> {
        self.enqueue(mmio, alloc, cmds)?;
        self.publish(mmio);
        Ok(())
    }

    /// Writes `cmds` into the queue; CMDQ_PROD moves only when the queue
    /// is full (to make room), the caller publishes the rest.
    fn enqueue<M: Mmio>(
        &mut self,
        mmio: &M,
        alloc: &dyn PageAllocator,
        cmds: &[Command],
    ) -> Result<(), SmmuError> {
        for c in cmds {
            if self.q.space() == 0 {
                self.publish(mmio);
                self.wait_for_space(mmio, alloc)?;
            }
            let index = self.q.prod().index();
            self.mem.write_words(index as usize * 2, &c.encode());
            alloc.sync_for_device(self.entry_pa(index), CMD_BYTES);
            self.q.inc_prod();
        }
        Ok(())
    }

    fn wait_for_space<M: Mmio>(
        &mut self,
        mmio: &M,
        alloc: &dyn PageAllocator,
    ) -> Result<(), SmmuError> {
        for _ in 0..=self.timeout_us {
            self.refresh_cons(mmio);
            if self.q.space() > 0 {
                return Ok(());
            }
            if Self::error_pending(mmio) {
                self.handle_gerror(mmio, alloc);
                continue;
            }
            mmio.delay_us(1);
        }
        error!("smmu: command queue full for {} us", self.timeout_us);
        Err(SmmuError::CmdqTimeout)
    }

    /// Waits until CONS has moved past the entry at `idx`.
    fn wait_past<M: Mmio>(
        &mut self,
        mmio: &M,
        alloc: &dyn PageAllocator,
        idx: QueueIndex,
    ) -> Result<(), SmmuError> {
        let prod = self.q.prod();
        let after = prod.distance_from(idx);
        for _ in 0..=self.timeout_us {
            self.refresh_cons(mmio);
            if prod.distance_from(self.q.cons()) < after {
                return match self.fault.take() {
                    Some(f) => Err(SmmuError::CommandRejected(f)),
                    None => Ok(()),
                };
            }
            if Self::error_pending(mmio) {
                self.handle_gerror(mmio, alloc);
                continue;
            }
            mmio.delay_us(1);
        }
        error!("smmu: CMD_SYNC not consumed within {} us", self.timeout_us);
        Err(SmmuError::SyncTimeout)
    }

    fn handle_gerror<M: Mmio>(&mut self, mmio: &M, alloc: &dyn PageAllocator) -> GerrorReport {
        let gerror = mmio.read32(offset::GERROR);
        let active = gerror ^ mmio.read32(offset::GERRORN);
        let mut report = GerrorReport {
            active,
            cmdq_fault: None,
        };
        if active == 0 {
            return report;
        }
        if active & u32::from(GERROR::CMDQ_ERR::SET) != 0 {
            let cons = self.refresh_cons(mmio);
            let index = cons.rd.index();
            let mut words = [0u64; 2];
            self.mem.read_words(index as usize * 2, &mut words);
            let fault = CmdqFault {
                index,
                cerror: cons.err,
                words,
                cmd: Command::decode(words).ok(),
            };
            error!("smmu: command queue error: {fault}");
            if cons.err != CERROR_ATC_INV_SYNC {
                // Skip the command: replace it with a CMD_SYNC, which the
                // SMMU executes when it resumes at CONS.
                let sync = Command::Sync(cmd::Sync::none()).encode();
                self.mem.write_words(index as usize * 2, &sync);
                alloc.sync_for_device(self.entry_pa(index), CMD_BYTES);
            }
            self.fault.get_or_insert(fault);
            report.cmdq_fault = Some(fault);
        }
        let others = active & !u32::from(GERROR::CMDQ_ERR::SET);
        if others != 0 {
            error!("smmu: global errors {others:#x} (GERROR {gerror:#x})");
        }
        // Acknowledge: GERRORN takes the value of GERROR (§6.3.20). The
        // queue resumes at CONS, now a CMD_SYNC.
        mmio.write32(offset::GERRORN, gerror);
        report
    }
}

/// The physical SMMUv3, enabled, with every stream aborting until an STE is
/// written for it.
pub struct Smmu<'a, M: Mmio> {
    mmio: M,
    alloc: &'a dyn PageAllocator,
    features: Features,
    opts: SmmuOptions,
    strtab: StreamTable,
    cmdq: CmdQueue,
    evtq: EvtQueue,
    cr0: u32,
}

impl<M: Mmio> fmt::Debug for Smmu<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smmu")
            .field("features", &self.features)
            .field("strtab", &self.strtab)
            .field("cmdq", &self.cmdq.q)
            .field("evtq_cons", &self.evtq.cons)
            .finish()
    }
}

/// SMMU_Q_BASE value: the queue at `pa` with 2^`log2` entries and the
/// allocate hint (RA for the command queue, WA for output queues, same bit).
fn q_base(pa: crate::addr::PhysAddr, log2: u8) -> u64 {
    let v: FieldValue<u64, Q_BASE::Register> =
        Q_BASE::RA::SET + Q_BASE::ADDR.val(pa.raw() >> 5) + Q_BASE::LOG2SIZE.val(u64::from(log2));
    v.value
}

impl<'a, M: Mmio> Smmu<'a, M> {
    /// Probes and resets the SMMU behind `mmio` (§6.3.9 and the
    /// initialisation sequence of the specification):
    ///
    /// 1. GBPA.ABORT with the Update handshake, so that with SMMUEN == 0
    ///    every transaction aborts;
    /// 2. CR0 = 0 (everything off), wait for CR0ACK; interrupts off;
    /// 3. CR1 (table and queue attributes from IDR0.COHACC), CR2;
    /// 4. the stream table (2-level when IDR0.ST_LEVEL allows, sized from
    ///    IDR1.SIDSIZE; every StreamID aborts), the command and event queues;
    /// 5. CMDQEN; CMD_CFGI_ALL, CMD_TLBI_EL2_ALL (if IDR0.Hyp),
    ///    CMD_TLBI_NSNH_ALL, CMD_SYNC;
    /// 6. EVENTQEN, optional interrupts, then SMMUEN.
    ///
    /// Refuses an SMMU that cannot confine DMA with AArch64 4 KiB stage-2
    /// tables. On failure the SMMU is left disabled with GBPA aborting, and
    /// what was allocated is freed (or leaked, if the SMMU would not confirm
    /// it stopped).
    pub fn new(
        mmio: M,
        alloc: &'a dyn PageAllocator,
        opts: SmmuOptions,
    ) -> Result<Self, SmmuError> {
        let features = Features::decode(
            mmio.read32(offset::IDR0),
            mmio.read32(offset::IDR1),
            mmio.read32(offset::IDR3),
            mmio.read32(offset::IDR5),
        );
        let refusal = if !features.s2p {
            Some(SmmuError::NoStage2)
        } else if !features.ttf.aarch64() {
            Some(SmmuError::NoAArch64Tables)
        } else if !features.gran4k {
            Some(SmmuError::No4kGranule)
        } else if features.tables_preset || features.queues_preset || features.rel {
            Some(SmmuError::PresetBases)
        } else {
            None
        };
        let t = opts.timeout_us;
        if let Some(e) = refusal {
            // Fail closed: an SMMU we cannot drive is still made to abort
            // every transaction (GBPA.ABORT with SMMUEN = 0), never left in
            // the bypass its reset state may allow.
            debug!("smmu: {e}: refusing to run unprotected, all DMA aborts");
            update_gbpa(&mmio, t, u32::from(GBPA::ABORT::SET))?;
            mmio.write32(offset::CR0, 0);
            if !poll(&mmio, t, |m| m.read32(offset::CR0ACK) == 0) {
                return Err(SmmuError::Timeout("CR0ACK (disable)"));
            }
            return Err(e);
        }

        // 1. Abort incoming transactions while the SMMU is disabled.
        update_gbpa(&mmio, t, u32::from(GBPA::ABORT::SET))?;
        // 2. Disable everything.
        mmio.write32(offset::CR0, 0);
        if !poll(&mmio, t, |m| m.read32(offset::CR0ACK) == 0) {
            return Err(SmmuError::Timeout("CR0ACK (disable)"));
        }
        write_irq_ctrl(&mmio, t, 0)?;

        // Memory. Nothing points at it yet, so a failure frees it at once.
        let two_level = features.two_level_strtab();
        let mut sid_bits = features.sid_size.min(opts.max_sid_bits);
        if !two_level && sid_bits > MAX_LINEAR_SID_BITS {
            warn!(
                "smmu: linear stream table capped at {MAX_LINEAR_SID_BITS} of {} StreamID bits",
                features.sid_size
            );
            sid_bits = MAX_LINEAR_SID_BITS;
        }
        let strtab = StreamTable::new(alloc, sid_bits, two_level)?;
        let cmdq_log2 = opts.cmdq_log2_entries.min(features.cmdqs).min(MAX_LOG2SIZE);
        let evtq_log2 = opts.evtq_log2_entries.min(features.evtqs).min(MAX_LOG2SIZE);
        let cmdq_bytes = CMD_BYTES << cmdq_log2;
        let cmdq_mem = match DmaRegion::alloc(alloc, cmdq_bytes, cmdq_bytes) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: the SMMU was never told about the table.
                unsafe { strtab.destroy(alloc) };
                return Err(e.into());
            }
        };
        let evtq_bytes = EVT_BYTES << evtq_log2;
        let evtq_mem = match DmaRegion::alloc(alloc, evtq_bytes, evtq_bytes) {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: the SMMU was never told about the table or queue.
                unsafe {
                    strtab.destroy(alloc);
                    cmdq_mem.free(alloc);
                }
                return Err(e.into());
            }
        };
        let (Ok(q), Ok(evtq_cons)) = (Queue::new(cmdq_log2), QueueIndex::new(evtq_log2)) else {
            unreachable!("queue sizes capped at MAX_LOG2SIZE");
        };
        let mut smmu = Self {
            mmio,
            alloc,
            features,
            opts,
            strtab,
            cmdq: CmdQueue {
                mem: cmdq_mem,
                q,
                timeout_us: t,
                fault: None,
            },
            evtq: EvtQueue {
                mem: evtq_mem,
                cons: evtq_cons,
                ovack: false,
                overflows: 0,
            },
            cr0: 0,
        };
        match smmu.enable() {
            Ok(()) => {
                debug!("smmu: {}", smmu.summary());
                Ok(smmu)
            }
            Err(e) => {
                error!("smmu: reset failed: {e}");
                // The SMMU is left disabled (GBPA aborts); nothing to report
                // beyond the original error.
                let _ = smmu.teardown();
                Err(e)
            }
        }
    }

    /// Steps 3 to 6 of the reset.
    fn enable(&mut self) -> Result<(), SmmuError> {
        let m = &self.mmio;
        let (cache, sh) = if self.features.cohacc {
            (1, 3) // write-back, inner shareable
        } else {
            (0, 2) // non-cacheable, outer shareable
        };
        let cr1: FieldValue<u32, CR1::Register> = CR1::QUEUE_IC.val(cache)
            + CR1::QUEUE_OC.val(cache)
            + CR1::QUEUE_SH.val(sh)
            + CR1::TABLE_IC.val(cache)
            + CR1::TABLE_OC.val(cache)
            + CR1::TABLE_SH.val(sh);
        m.write32(offset::CR1, cr1.value);
        // Record C_BAD_STREAMID for StreamIDs beyond the table; private TLB
        // maintenance (the CPUs' broadcast TLBIs are not for the SMMU).
        let cr2: FieldValue<u32, CR2::Register> = CR2::RECINVSID::SET + CR2::PTM::SET;
        m.write32(offset::CR2, cr2.value);

        let cfg = self.strtab.base_cfg();
        m.write64(offset::STRTAB_BASE, cfg.base_value());
        m.write32(offset::STRTAB_BASE_CFG, cfg.cfg_value());

        m.write64(
            offset::CMDQ_BASE,
            q_base(self.cmdq.mem.pa(), self.cmdq.q.log2size()),
        );
        m.write32(offset::CMDQ_PROD, 0);
        m.write32(offset::CMDQ_CONS, 0);
        m.write64(
            offset::EVTQ_BASE,
            q_base(self.evtq.mem.pa(), self.evtq.cons.log2size()),
        );
        m.write32(offset::EVTQ_PROD, 0);
        m.write32(offset::EVTQ_CONS, 0);

        // Errors left from before the reset are stale: acknowledge them.
        let gerror = m.read32(offset::GERROR);
        if gerror != m.read32(offset::GERRORN) {
            warn!("smmu: acknowledging stale global errors (GERROR {gerror:#x})");
            m.write32(offset::GERRORN, gerror);
        }

        self.set_cr0(u32::from(CR0::CMDQEN::SET))?;
        // Nothing cached from before the reset may survive it.
        self.submit(&[Command::CfgiAll])?;
        self.sync()?;
        if self.features.hyp {
            self.submit(&[Command::TlbiEl2All])?;
        }
        self.submit(&[Command::TlbiNsnhAll])?;
        self.sync()?;

        self.set_cr0(self.cr0 | u32::from(CR0::EVENTQEN::SET))?;
        if self.opts.irqs {
            let irqs: FieldValue<u32, IRQ_CTRL::Register> =
                IRQ_CTRL::GERROR_IRQEN::SET + IRQ_CTRL::EVENTQ_IRQEN::SET;
            write_irq_ctrl(&self.mmio, self.opts.timeout_us, irqs.value)?;
        }
        self.set_cr0(self.cr0 | u32::from(CR0::SMMUEN::SET))?;
        Ok(())
    }

    /// Writes CR0 and waits for CR0ACK to match (§6.3.10).
    fn set_cr0(&mut self, value: u32) -> Result<(), SmmuError> {
        self.mmio.write32(offset::CR0, value);
        if !poll(&self.mmio, self.opts.timeout_us, |m| {
            m.read32(offset::CR0ACK) == value
        }) {
            return Err(SmmuError::Timeout("CR0ACK"));
        }
        self.cr0 = value;
        Ok(())
    }

    /// Disables the SMMU (GBPA still aborts) and frees its memory; leaks
    /// the memory if the SMMU does not acknowledge.
    fn teardown(self) -> Result<(), SmmuError> {
        self.mmio.write32(offset::CR0, 0);
        if !poll(&self.mmio, self.opts.timeout_us, |m| {
            m.read32(offset::CR0ACK) == 0
        }) {
            error!("smmu: SMMU does not acknowledge CR0 = 0; leaking its tables and queues");
            return Err(SmmuError::Timeout("CR0ACK (disable)"));
        }
        // SAFETY: CR0ACK == 0: SMMUEN, CMDQEN and EVENTQEN are off, so the
        // SMMU no longer reads the stream table or the queues nor writes
        // events (§6.3.9); all three came from `self.alloc`.
        unsafe {
            self.strtab.destroy(self.alloc);
            self.cmdq.mem.free(self.alloc);
            self.evtq.mem.free(self.alloc);
        }
        Ok(())
    }

    /// Disables the SMMU and frees its memory. Incoming transactions abort
    /// afterwards (GBPA.ABORT stays set).
    pub fn disable(self) -> Result<(), SmmuError> {
        self.teardown()
    }

    /// What the ID registers say this SMMU can do.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The register access this driver uses.
    pub fn mmio(&self) -> &M {
        &self.mmio
    }

    /// The allocator of every table and queue of this SMMU.
    pub fn allocator(&self) -> &'a dyn PageAllocator {
        self.alloc
    }

    /// One line for the boot log.
    pub fn summary(&self) -> String {
        format!(
            "SMMUv3 {}; strtab {} bits, cmdq 2^{}, evtq 2^{}",
            self.features,
            self.strtab.log2size(),
            self.cmdq.q.log2size(),
            self.evtq.cons.log2size()
        )
    }

    /// Writes `cmds` into the command queue and makes them visible to the
    /// SMMU (one CMDQ_PROD write, more if the queue fills up). Waits (bounded)
    /// for space; a command error found while waiting is handled as in
    /// [`handle_gerror`](Self::handle_gerror). Completion is only known
    /// after [`sync`](Self::sync).
    pub fn submit(&mut self, cmds: &[Command]) -> Result<(), SmmuError> {
        self.cmdq.submit(&self.mmio, self.alloc, cmds)
    }

    /// Issues CMD_SYNC (CS = SIG_NONE, §4.7.3) and polls CMDQ_CONS until the
    /// SMMU has consumed it, i.e. completed every earlier command.
    ///
    /// A command error met while waiting is handled (the command skipped,
    /// GERRORN acknowledged) and the wait goes on; the SYNC then returns
    /// [`SmmuError::CommandRejected`] with the first command refused since
    /// the previous SYNC. [`SmmuError::SyncTimeout`] after
    /// [`SmmuOptions::timeout_us`].
    pub fn sync(&mut self) -> Result<(), SmmuError> {
        let idx = self.cmdq.q.prod();
        self.submit(&[Command::Sync(cmd::Sync::none())])?;
        self.cmdq.wait_past(&self.mmio, self.alloc, idx)
    }

    /// [`submit`](Self::submit) followed by one [`sync`](Self::sync): a
    /// batch that is complete when this returns `Ok`.
    pub fn submit_sync(&mut self, cmds: &[Command]) -> Result<(), SmmuError> {
        // One write of CMDQ_PROD for the batch and its SYNC (unless the
        // queue fills on the way).
        self.cmdq.enqueue(&self.mmio, self.alloc, cmds)?;
        self.sync()
    }

    /// Handles active global errors (§6.3.19, §7.1): for GERROR.CMDQ_ERR,
    /// reads CMDQ_CONS.ERR and the faulting entry, logs it, replaces it by a
    /// CMD_SYNC so the queue can go on (except for CERROR_ATC_INV_SYNC,
    /// where the SYNC itself is retried); then acknowledges every active
    /// error in GERRORN.
    pub fn handle_gerror(&mut self) -> GerrorReport {
        self.cmdq.handle_gerror(&self.mmio, self.alloc)
    }

    /// Installs `ste` for `sid`: creates the level-2 array on demand (with
    /// CMD_CFGI_STE Leaf = 0 + CMD_SYNC for the new L1 descriptor), then
    /// rewrites the STE in the safe order of §3.21.3 (see
    /// [`crate::ste::update_plan`]), with CMD_CFGI_STE + CMD_SYNC at every
    /// point it requires, the last one after the final write.
    pub fn write_ste(&mut self, sid: StreamId, ste: &Ste) -> Result<(), SmmuError> {
        let alloc = self.alloc;
        if self.strtab.ensure(alloc, sid)? {
            debug!("smmu: level-2 stream table for sid {sid}");
            self.submit(&[Command::CfgiSte { sid, leaf: false }])?;
            self.sync()?;
        }
        let (cmdq, mmio) = (&mut self.cmdq, &self.mmio);
        self.strtab
            .update_ste(alloc, sid, ste, |sid| -> Result<(), SmmuError> {
                let idx = cmdq.q.prod();
                cmdq.submit(
                    mmio,
                    alloc,
                    &[
                        Command::CfgiSte { sid, leaf: true },
                        Command::Sync(cmd::Sync::none()),
                    ],
                )?;
                cmdq.wait_past(mmio, alloc, idx.inc())
            })
    }

    /// The STE of `sid` as in memory; `None` if its level-2 array does not
    /// exist (the stream aborts).
    pub fn read_ste(&self, sid: StreamId) -> Result<Option<Ste>, SmmuError> {
        Ok(self.strtab.read_ste(sid)?)
    }

    /// Decodes up to `max` event records (bounded work per call), hands
    /// each to `f`, and frees their slots (EVENTQ_CONS, §6.3.96). Notes and
    /// acknowledges an overflow (EVENTQ_PROD.OVFLG != our OVACKFLG: records
    /// were lost). Returns the number of records handled.
    pub fn drain_events(&mut self, max: usize, mut f: impl FnMut(Event)) -> usize {
        let log2 = self.evtq.cons.log2size();
        let raw = self.mmio.read32(offset::EVTQ_PROD);
        let Ok(prod) = EvtqProd::from_raw(log2, raw) else {
            return 0;
        };
        let overflowed = prod.ovflg != self.evtq.ovack;
        if overflowed {
            self.evtq.overflows += 1;
            warn!("smmu: event queue overflowed, fault records were lost");
        }
        let mut n = 0;
        while n < max && self.evtq.cons != prod.wr {
            let mut words = [0u64; 4];
            let index = self.evtq.cons.index() as usize;
            self.evtq.mem.read_words(index * 4, &mut words);
            f(Event::decode(words));
            self.evtq.cons = self.evtq.cons.inc();
            n += 1;
        }
        if n > 0 || overflowed {
            self.evtq.ovack = prod.ovflg;
            let cons = EvtqCons {
                rd: self.evtq.cons,
                ovackflg: prod.ovflg,
            };
            self.mmio.write32(offset::EVTQ_CONS, cons.raw());
        }
        n
    }

    /// Event-queue overflows seen so far.
    pub fn event_overflows(&self) -> u64 {
        self.evtq.overflows
    }
}

/// Sets the `set` bits of GBPA with the Update handshake (§6.3.14): wait for
/// a previous update, write with Update = 1, wait until it reads 0.
fn update_gbpa<M: Mmio>(mmio: &M, timeout_us: u32, set: u32) -> Result<(), SmmuError> {
    let update = u32::from(GBPA::UPDATE::SET);
    if !poll(mmio, timeout_us, |m| m.read32(offset::GBPA) & update == 0) {
        return Err(SmmuError::Timeout("GBPA.Update"));
    }
    let value = mmio.read32(offset::GBPA) | set | update;
    mmio.write32(offset::GBPA, value);
    if !poll(mmio, timeout_us, |m| m.read32(offset::GBPA) & update == 0) {
        return Err(SmmuError::Timeout("GBPA.Update"));
    }
    Ok(())
}

/// Writes IRQ_CTRL and waits for IRQ_CTRLACK (§6.3.16-18).
fn write_irq_ctrl<M: Mmio>(mmio: &M, timeout_us: u32, value: u32) -> Result<(), SmmuError> {
    mmio.write32(offset::IRQ_CTRL, value);
    if !poll(mmio, timeout_us, |m| m.read32(offset::IRQ_CTRLACK) == value) {
        return Err(SmmuError::Timeout("IRQ_CTRLACK"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
