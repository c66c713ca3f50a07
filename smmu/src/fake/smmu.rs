//! A fake SMMUv3 register file for host tests of the driver.
//!
//! [`FakeSmmu`] implements [`Mmio`] over a small model of the side effects
//! the driver relies on (IHI 0070 chapter 6): CR0 is acknowledged in CR0ACK,
//! GBPA.Update self-clears, IRQ_CTRL is acknowledged in IRQ_CTRLACK, global
//! errors are GERROR ^ GERRORN. A write to CMDQ_PROD (with CR0ACK.CMDQEN set)
//! makes it consume the command queue from the memory CMDQ_BASE points at
//! (addresses of [`FakeMemory`] are host addresses), record every command,
//! and stop on an illegal one with CMDQ_CONS.ERR = CERROR_ILL and a toggled
//! GERROR.CMDQ_ERR (§7.1). Tests can make the queue hang, inject event
//! records, read the STE the SMMU would use for a StreamID, and inspect the
//! order of register writes. Writes the specification calls CONSTRAINED
//! UNPREDICTABLE (e.g. SMMU_STRTAB_BASE while SMMUEN == 1) are recorded as
//! violations; a correct driver produces none.

use crate::addr::{PhysAddr, StreamId};
use crate::cmd::Command;
use crate::fake::FakeMemory;
use crate::hw::Mmio;
use crate::regs::offset::*;
use crate::ste::{Ste, STE_WORDS};
use std::string::String;
use std::sync::{Arc, Mutex, MutexGuard};
use std::vec::Vec;

/// SMMU_IDR0 of QEMU 10's `smmuv3` with stage=nested: S1P, S2P, AArch64
/// tables, COHACC, ASID16, VMID16, little-endian walks, terminate-only stall
/// model, TERM_MODEL, 2-level stream tables.
pub const QEMU_IDR0: u32 = 0x0d44_101b;
/// SMMU_IDR1 of QEMU 10: SIDSIZE 16, SSIDSIZE 0, EVENTQS 19, CMDQS 19.
pub const QEMU_IDR1: u32 = (19 << 21) | (19 << 16) | 16;
/// SMMU_IDR3 of QEMU 10: HAD, XNX (stage 2 present), RIL, BBML 2.
pub const QEMU_IDR3: u32 = (1 << 2) | (1 << 4) | (1 << 10) | (2 << 11);
/// SMMU_IDR5 of QEMU 10 (default oas=44): OAS 44 bits, 4K/16K/64K granules.
pub const QEMU_IDR5: u32 = 4 | (1 << 4) | (1 << 5) | (1 << 6);

const CR0_SMMUEN: u32 = 1 << 0;
const CR0_PRIQEN: u32 = 1 << 1;
const CR0_EVENTQEN: u32 = 1 << 2;
const CR0_CMDQEN: u32 = 1 << 3;
const GBPA_ABORT: u32 = 1 << 20;
const GBPA_UPDATE: u32 = 1 << 31;
const GERROR_CMDQ_ERR: u32 = 1 << 0;
const Q_LOG2SIZE_MASK: u64 = 0x1f;
const Q_ADDR_MASK: u64 = 0x00ff_ffff_ffff_ffe0;
const STRTAB_ADDR_MASK: u64 = 0x00ff_ffff_ffff_ffc0;
const OVFLG: u32 = 1 << 31;
const CERROR_ILL: u32 = 1;
const CERROR_ABT: u32 = 2;

/// One register write, in program order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegWrite {
    /// Byte offset in the register frame (see [`crate::regs::offset`]).
    pub offset: usize,
    /// The value written.
    pub value: u64,
    /// 32 or 64.
    pub width: u8,
}

/// A command the fake consumed, with what it observed at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedCommand {
    /// The decoded command.
    pub cmd: Command,
    /// Queue index (with wrap bit) it was read from.
    pub index: u32,
    /// `FakeMemory::pages_in_use()` when it was consumed: lets a test check
    /// that tables were still allocated when they were invalidated.
    pub pages_in_use: usize,
    /// For CMD_CFGI_STE: the STE the SMMU fetches for that StreamID at that
    /// moment (proves the STE was written before the invalidation).
    pub ste: Option<Ste>,
}

/// A fake SMMUv3: registers in RAM plus the command and event queue logic.
#[derive(Debug)]
pub struct FakeSmmu {
    mem: Arc<FakeMemory>,
    st: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    idr: [u32; 6],
    cr0: u32,
    cr0ack: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    irq_ctrlack: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_base_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    cmdq_cons: u32,
    evtq_base: u64,
    evtq_prod: u32,
    evtq_cons: u32,
    /// Registers without side effects (IRQ_CFGn, PRIQ, ...).
    other: std::collections::BTreeMap<usize, u64>,
    writes: Vec<RegWrite>,
    violations: Vec<String>,
    consumed: Vec<ConsumedCommand>,
    rejected: Vec<([u64; 2], u32)>,
    hang: bool,
    cr0_stuck: bool,
    consume_per_poll: Option<usize>,
    clock_us: u64,
}

impl FakeSmmu {
    /// A fake with QEMU 10's ID registers, in its reset state (everything
    /// disabled; GBPA = SHCFG "use incoming", ABORT = 0).
    pub fn new(mem: Arc<FakeMemory>) -> Self {
        Self::with_idrs(mem, QEMU_IDR0, QEMU_IDR1, QEMU_IDR3, QEMU_IDR5)
    }

    /// A fake with the given SMMU_IDR0, IDR1, IDR3 and IDR5.
    pub fn with_idrs(mem: Arc<FakeMemory>, idr0: u32, idr1: u32, idr3: u32, idr5: u32) -> Self {
        let st = State {
            idr: [idr0, idr1, 0, idr3, 0, idr5],
            gbpa: 1 << 12,
            ..State::default()
        };
        Self {
            mem,
            st: Mutex::new(st),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every register write so far, in order.
    pub fn writes(&self) -> Vec<RegWrite> {
        self.lock().writes.clone()
    }

    /// The offsets written so far, in order.
    pub fn write_offsets(&self) -> Vec<usize> {
        self.lock().writes.iter().map(|w| w.offset).collect()
    }

    /// Position of the first write to `offset`, if any.
    pub fn first_write(&self, offset: usize) -> Option<usize> {
        self.lock().writes.iter().position(|w| w.offset == offset)
    }

    /// Forgets the write log (e.g. after the reset, to look at later writes).
    pub fn clear_writes(&self) {
        self.lock().writes.clear();
    }

    /// Accesses the specification makes CONSTRAINED UNPREDICTABLE or
    /// otherwise wrong, with a description; empty for a correct driver.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Every command consumed so far, in order.
    pub fn consumed(&self) -> Vec<ConsumedCommand> {
        self.lock().consumed.clone()
    }

    /// Every command consumed so far.
    pub fn commands(&self) -> Vec<Command> {
        self.lock().consumed.iter().map(|c| c.cmd).collect()
    }

    /// Forgets the consumed commands.
    pub fn clear_commands(&self) {
        self.lock().consumed.clear();
    }

    /// Entries that stopped the queue (raw words, CERROR code), in order.
    pub fn rejected(&self) -> Vec<([u64; 2], u32)> {
        self.lock().rejected.clone()
    }

    /// While `hang` is true the command queue consumes nothing.
    pub fn set_hang(&self, hang: bool) {
        let mut st = self.lock();
        st.hang = hang;
        if !hang {
            self.process_cmdq(&mut st, usize::MAX);
        }
    }

    /// While `stuck` is true, CR0 writes are never acknowledged in CR0ACK.
    pub fn set_cr0_stuck(&self, stuck: bool) {
        self.lock().cr0_stuck = stuck;
    }

    /// `None` (default): the queue is consumed completely on every
    /// CMDQ_PROD write. `Some(n)`: nothing is consumed on the write, and up
    /// to `n` entries are consumed on every CMDQ_CONS read, as an SMMU that
    /// works in the background.
    pub fn set_consume_per_poll(&self, n: Option<usize>) {
        self.lock().consume_per_poll = n;
    }

    /// Microseconds the driver spent in `delay_us`.
    pub fn clock_us(&self) -> u64 {
        self.lock().clock_us
    }

    /// Whether incoming transactions would currently bypass translation
    /// (SMMUEN == 0 and GBPA.ABORT == 0, §6.3.14).
    pub fn would_bypass(&self) -> bool {
        let st = self.lock();
        st.cr0ack & CR0_SMMUEN == 0 && st.gbpa & GBPA_ABORT == 0
    }

    /// The acknowledged CR0 value.
    pub fn cr0ack(&self) -> u32 {
        self.lock().cr0ack
    }

    /// The effective GBPA value.
    pub fn gbpa(&self) -> u32 {
        self.lock().gbpa
    }

    /// The STE the SMMU would fetch for `sid`, walking the stream table from
    /// SMMU_STRTAB_BASE / STRTAB_BASE_CFG (§3.3): `None` if the StreamID is
    /// beyond the table (C_BAD_STREAMID) or the table is not readable;
    /// [`Ste::invalid`] for a StreamID whose level-2 table is absent or too
    /// short (Span, §3.3.2).
    pub fn ste(&self, sid: StreamId) -> Option<Ste> {
        let st = self.lock();
        self.ste_locked(&st, sid)
    }

    fn ste_locked(&self, st: &State, sid: StreamId) -> Option<Ste> {
        let cfg = st.strtab_base_cfg;
        let log2size = cfg & 0x3f;
        let split = (cfg >> 6) & 0x1f;
        let fmt = (cfg >> 16) & 3;
        let base = st.strtab_base & STRTAB_ADDR_MASK;
        if log2size < 32 && u64::from(sid.0) >= 1u64 << log2size {
            return None;
        }
        let ste_addr = match fmt {
            0 => base + u64::from(sid.0) * 64,
            1 => {
                let l1 = base + u64::from(sid.0 >> split) * 8;
                let mut desc = [0u64];
                self.read_mem(l1, &mut desc).ok()?;
                let span = (desc[0] & 0x1f) as u32;
                let l2 = desc[0] & STRTAB_ADDR_MASK;
                let low = sid.0 & ((1 << split) - 1);
                if span == 0 || span > split + 1 || u64::from(low) >= 1u64 << (span - 1) {
                    return Some(Ste::invalid());
                }
                l2 + u64::from(low) * 64
            }
            _ => return None,
        };
        let mut words = [0u64; STE_WORDS];
        self.read_mem(ste_addr, &mut words).ok()?;
        Some(Ste(words))
    }

    /// Writes an event record at EVENTQ_PROD and advances it, as the SMMU
    /// does (§3.5.2, §7.2). Returns false if the record was lost: event queue
    /// disabled, or full (then EVENTQ_PROD.OVFLG is toggled, unless an
    /// earlier overflow is still unacknowledged).
    pub fn inject_event(&self, record: [u64; 4]) -> bool {
        let mut st = self.lock();
        if st.cr0ack & CR0_EVENTQEN == 0 {
            return false;
        }
        let log2 = (st.evtq_base & Q_LOG2SIZE_MASK) as u32;
        let mask = (2u32 << log2) - 1;
        let prod = st.evtq_prod & mask;
        let cons = st.evtq_cons & mask;
        let full = (prod ^ cons) == (1 << log2);
        if full {
            let pending = (st.evtq_prod & OVFLG) != (st.evtq_cons & OVFLG);
            if !pending {
                st.evtq_prod ^= OVFLG;
            }
            return false;
        }
        let index = prod & ((1 << log2) - 1);
        let addr = (st.evtq_base & Q_ADDR_MASK) + u64::from(index) * 32;
        if let Err(e) = self.write_mem(addr, &record) {
            st.violations.push(format!("event queue not writable: {e}"));
            return false;
        }
        st.evtq_prod = (st.evtq_prod & OVFLG) | ((prod + 1) & mask);
        true
    }

    /// Toggles EVENTQ_PROD.OVFLG as if records had been lost.
    pub fn inject_event_overflow(&self) {
        self.lock().evtq_prod ^= OVFLG;
    }

    /// Sets bits in SMMU_GERROR (toggling them), as an error the SMMU
    /// reports.
    pub fn raise_gerror(&self, bits: u32) {
        self.lock().gerror ^= bits;
    }

    /// Reads words at a "physical" address of the fake memory.
    fn read_mem(&self, pa: u64, out: &mut [u64]) -> Result<(), String> {
        self.check_mem(pa, out.len())?;
        for (i, w) in out.iter_mut().enumerate() {
            // Tests drive the fake from the thread that owns the memory, so
            // nothing frees it during this read.
            // SAFETY: `check_mem` found the range inside one live allocation.
            *w = unsafe { (pa as *const u64).add(i).read_volatile() };
        }
        Ok(())
    }

    /// Writes words at a "physical" address of the fake memory.
    fn write_mem(&self, pa: u64, words: &[u64]) -> Result<(), String> {
        self.check_mem(pa, words.len())?;
        for (i, w) in words.iter().enumerate() {
            // SAFETY: as in `read_mem`; the SMMU owns the queue entries
            // between PROD and CONS, so no other code writes them.
            unsafe { (pa as *mut u64).add(i).write_volatile(*w) };
        }
        Ok(())
    }

    fn check_mem(&self, pa: u64, words: usize) -> Result<(), String> {
        if !pa.is_multiple_of(8) || pa == 0 || !self.mem.contains(PhysAddr(pa), words * 8) {
            return Err(format!("{words} words at {pa:#x} outside fake memory"));
        }
        Ok(())
    }

    /// Consumes commands while the queue is enabled, not stopped by an
    /// error, and not empty; at most `budget` of them.
    fn process_cmdq(&self, st: &mut State, budget: usize) {
        if st.cr0ack & CR0_CMDQEN == 0 || st.hang {
            return;
        }
        let log2 = (st.cmdq_base & Q_LOG2SIZE_MASK) as u32;
        let mask = (2u32 << log2) - 1;
        let base = st.cmdq_base & Q_ADDR_MASK;
        let mut done = 0;
        // Bounded: at most one lap of the queue per call.
        while done < budget && done <= (1usize << log2) {
            if (st.gerror ^ st.gerrorn) & GERROR_CMDQ_ERR != 0 {
                return;
            }
            let cons = st.cmdq_cons & mask;
            if cons == st.cmdq_prod & mask {
                return;
            }
            let index = cons & ((1 << log2) - 1);
            let mut words = [0u64; 2];
            let err = if self
                .read_mem(base + u64::from(index) * 16, &mut words)
                .is_err()
            {
                Some(CERROR_ABT)
            } else {
                match Command::decode(words) {
                    Ok(cmd) if self.legal(st, &cmd) => {
                        let ste = match cmd {
                            Command::CfgiSte { sid, .. } => self.ste_locked(st, sid),
                            _ => None,
                        };
                        st.consumed.push(ConsumedCommand {
                            cmd,
                            index: cons,
                            pages_in_use: self.mem.pages_in_use(),
                            ste,
                        });
                        None
                    }
                    _ => Some(CERROR_ILL),
                }
            };
            if let Some(code) = err {
                // §7.1: CONS stays at the faulting command, ERR says why,
                // GERROR.CMDQ_ERR toggles; the queue stops until the error
                // is acknowledged in GERRORN.
                st.rejected.push((words, code));
                st.cmdq_cons = cons | (code << 24);
                st.gerror ^= GERROR_CMDQ_ERR;
                return;
            }
            st.cmdq_cons = ((cons + 1) & mask) | (st.cmdq_cons & (0x7f << 24));
            done += 1;
        }
    }

    /// Commands that decode but that this SMMU does not implement are
    /// CERROR_ILL too (§4.1.3, §4.4).
    fn legal(&self, st: &State, cmd: &Command) -> bool {
        let idr0 = st.idr[0];
        let hyp = idr0 & (1 << 9) != 0;
        let s2p = idr0 & 1 != 0;
        let s1p = idr0 & 2 != 0;
        let vmid16 = idr0 & (1 << 18) != 0;
        let ril = st.idr[3] & (1 << 10) != 0;
        let vmid_ok = |v: crate::addr::Vmid| vmid16 || v.0 <= 0xff;
        match cmd {
            Command::TlbiEl2All
            | Command::TlbiEl2Asid { .. }
            | Command::TlbiEl2Va { .. }
            | Command::TlbiEl2Vaa { .. } => hyp,
            Command::TlbiS12Vmall { vmid } => s2p && vmid_ok(*vmid),
            Command::TlbiS2Ipa { vmid, scope, .. } => {
                s2p && vmid_ok(*vmid) && (ril || scope.range.is_none())
            }
            Command::TlbiNhAll { vmid } | Command::TlbiNhAsid { vmid, .. } => s1p && vmid_ok(*vmid),
            Command::TlbiNhVa { vmid, scope, .. } | Command::TlbiNhVaa { vmid, scope, .. } => {
                s1p && vmid_ok(*vmid) && (ril || scope.range.is_none())
            }
            _ => true,
        }
    }

    fn violation(st: &mut State, msg: String) {
        st.violations.push(msg);
    }

    fn write(&self, offset: usize, value: u64, width: u8) {
        let mut st = self.lock();
        st.writes.push(RegWrite {
            offset,
            value,
            width,
        });
        let want = if is_64bit(offset) { 64 } else { 32 };
        if width != want {
            Self::violation(
                &mut st,
                format!(
                    "{width}-bit write to {}-bit register {}",
                    want,
                    reg_name(offset)
                ),
            );
        }
        let v32 = value as u32;
        let ack = st.cr0ack;
        match offset {
            IDR0 | IDR1 | IDR2 | IDR3 | IDR4 | IDR5 | IIDR | AIDR | CR0ACK | STATUSR
            | IRQ_CTRLACK | GERROR => {
                Self::violation(&mut st, format!("write to read-only {}", reg_name(offset)));
            }
            CR0 => {
                if st.cr0 != st.cr0ack {
                    let old = st.cr0;
                    Self::violation(
                        &mut st,
                        format!(
                            "CR0 written ({v32:#x}) before CR0ACK acknowledged {old:#x} (§6.3.9)"
                        ),
                    );
                }
                if v32 & CR0_SMMUEN != 0 && ack & CR0_SMMUEN == 0 {
                    self.check_strtab(&mut st);
                }
                st.cr0 = v32;
                if !st.cr0_stuck {
                    st.cr0ack = v32;
                }
                self.process_cmdq(&mut st, usize::MAX);
            }
            CR1 => {
                if ack & (CR0_SMMUEN | CR0_CMDQEN | CR0_EVENTQEN | CR0_PRIQEN) != 0 {
                    Self::violation(
                        &mut st,
                        format!(
                            "CR1 written while SMMU or queues enabled (CR0ACK {ack:#x}, §6.3.11)"
                        ),
                    );
                }
                st.cr1 = v32;
            }
            CR2 => {
                if ack & CR0_SMMUEN != 0 {
                    Self::violation(&mut st, "CR2 written while SMMUEN == 1 (§6.3.12)".into());
                }
                st.cr2 = v32;
            }
            GBPA => {
                if v32 & GBPA_UPDATE == 0 {
                    Self::violation(&mut st, "GBPA written without Update (§6.3.14)".into());
                } else {
                    st.gbpa = v32 & !GBPA_UPDATE;
                }
            }
            IRQ_CTRL => {
                if st.irq_ctrl != st.irq_ctrlack {
                    Self::violation(
                        &mut st,
                        "IRQ_CTRL written before IRQ_CTRLACK (§6.3.16)".into(),
                    );
                }
                st.irq_ctrl = v32;
                st.irq_ctrlack = v32;
            }
            GERRORN => {
                st.gerrorn = v32;
                self.process_cmdq(&mut st, usize::MAX);
            }
            STRTAB_BASE | STRTAB_BASE_CFG => {
                if ack & CR0_SMMUEN != 0 {
                    Self::violation(
                        &mut st,
                        format!("{} written while SMMUEN == 1 (§6.3.24)", reg_name(offset)),
                    );
                }
                if offset == STRTAB_BASE {
                    st.strtab_base = value;
                } else {
                    st.strtab_base_cfg = v32;
                }
            }
            CMDQ_BASE => {
                if ack & CR0_CMDQEN != 0 {
                    Self::violation(
                        &mut st,
                        "CMDQ_BASE written while CMDQEN == 1 (§6.3.26)".into(),
                    );
                }
                let max = (st.idr[1] >> 21) & 0x1f;
                if value & Q_LOG2SIZE_MASK > u64::from(max) {
                    Self::violation(&mut st, "CMDQ_BASE.LOG2SIZE above IDR1.CMDQS".into());
                }
                let log2 = value & Q_LOG2SIZE_MASK;
                if value & Q_ADDR_MASK & ((16u64 << log2).max(32) - 1) != 0 {
                    Self::violation(&mut st, "CMDQ_BASE not aligned to the queue size".into());
                }
                st.cmdq_base = value;
            }
            CMDQ_PROD => {
                st.cmdq_prod = v32 & 0xf_ffff;
                if st.consume_per_poll.is_none() {
                    self.process_cmdq(&mut st, usize::MAX);
                }
            }
            CMDQ_CONS => {
                if ack & CR0_CMDQEN != 0 {
                    Self::violation(
                        &mut st,
                        "CMDQ_CONS written while CMDQEN == 1 (§6.3.28)".into(),
                    );
                }
                st.cmdq_cons = v32;
            }
            EVTQ_BASE => {
                if ack & CR0_EVENTQEN != 0 {
                    Self::violation(
                        &mut st,
                        "EVENTQ_BASE written while EVENTQEN == 1 (§6.3.29)".into(),
                    );
                }
                let max = (st.idr[1] >> 16) & 0x1f;
                if value & Q_LOG2SIZE_MASK > u64::from(max) {
                    Self::violation(&mut st, "EVENTQ_BASE.LOG2SIZE above IDR1.EVENTQS".into());
                }
                st.evtq_base = value;
            }
            EVTQ_PROD => {
                if ack & CR0_EVENTQEN != 0 {
                    Self::violation(
                        &mut st,
                        "EVENTQ_PROD written while EVENTQEN == 1 (§6.3.95)".into(),
                    );
                }
                st.evtq_prod = v32;
            }
            EVTQ_CONS => st.evtq_cons = v32,
            _ => {
                st.other.insert(offset, value);
            }
        }
    }

    /// Checks, when SMMUEN is being set, that the stream table is sane.
    fn check_strtab(&self, st: &mut State) {
        let cfg = st.strtab_base_cfg;
        let log2size = cfg & 0x3f;
        let sidsize = st.idr[1] & 0x3f;
        if log2size > sidsize {
            Self::violation(st, "STRTAB_BASE_CFG.LOG2SIZE above IDR1.SIDSIZE".into());
        }
        if (cfg >> 16) & 3 == 1 && (st.idr[0] >> 27) & 3 != 1 {
            Self::violation(st, "2-level stream table without IDR0.ST_LEVEL".into());
        }
        if st.strtab_base & STRTAB_ADDR_MASK == 0 {
            Self::violation(st, "SMMUEN set without a stream table".into());
        }
    }

    fn read(&self, offset: usize, width: u8) -> u64 {
        let mut st = self.lock();
        let want = if is_64bit(offset) { 64 } else { 32 };
        if width != want {
            Self::violation(
                &mut st,
                format!(
                    "{width}-bit read of {}-bit register {}",
                    want,
                    reg_name(offset)
                ),
            );
        }
        match offset {
            IDR0 => st.idr[0].into(),
            IDR1 => st.idr[1].into(),
            IDR2 => st.idr[2].into(),
            IDR3 => st.idr[3].into(),
            IDR4 => st.idr[4].into(),
            IDR5 => st.idr[5].into(),
            AIDR => 0,
            CR0 => st.cr0.into(),
            CR0ACK => st.cr0ack.into(),
            CR1 => st.cr1.into(),
            CR2 => st.cr2.into(),
            GBPA => st.gbpa.into(),
            IRQ_CTRL => st.irq_ctrl.into(),
            IRQ_CTRLACK => st.irq_ctrlack.into(),
            GERROR => st.gerror.into(),
            GERRORN => st.gerrorn.into(),
            STRTAB_BASE => st.strtab_base,
            STRTAB_BASE_CFG => st.strtab_base_cfg.into(),
            CMDQ_BASE => st.cmdq_base,
            CMDQ_PROD => st.cmdq_prod.into(),
            CMDQ_CONS => {
                if let Some(n) = st.consume_per_poll {
                    self.process_cmdq(&mut st, n);
                }
                st.cmdq_cons.into()
            }
            EVTQ_BASE => st.evtq_base,
            EVTQ_PROD => st.evtq_prod.into(),
            EVTQ_CONS => st.evtq_cons.into(),
            _ => st.other.get(&offset).copied().unwrap_or(0),
        }
    }
}

fn is_64bit(offset: usize) -> bool {
    matches!(
        offset,
        GERROR_IRQ_CFG0
            | STRTAB_BASE
            | CMDQ_BASE
            | EVENTQ_BASE
            | EVENTQ_IRQ_CFG0
            | PRIQ_BASE
            | PRIQ_IRQ_CFG0
    )
}

/// The specification name of a register offset, for messages.
pub fn reg_name(offset: usize) -> &'static str {
    match offset {
        IDR0 => "IDR0",
        IDR1 => "IDR1",
        IDR2 => "IDR2",
        IDR3 => "IDR3",
        IDR4 => "IDR4",
        IDR5 => "IDR5",
        IIDR => "IIDR",
        AIDR => "AIDR",
        CR0 => "CR0",
        CR0ACK => "CR0ACK",
        CR1 => "CR1",
        CR2 => "CR2",
        STATUSR => "STATUSR",
        GBPA => "GBPA",
        IRQ_CTRL => "IRQ_CTRL",
        IRQ_CTRLACK => "IRQ_CTRLACK",
        GERROR => "GERROR",
        GERRORN => "GERRORN",
        GERROR_IRQ_CFG0 => "GERROR_IRQ_CFG0",
        STRTAB_BASE => "STRTAB_BASE",
        STRTAB_BASE_CFG => "STRTAB_BASE_CFG",
        CMDQ_BASE => "CMDQ_BASE",
        CMDQ_PROD => "CMDQ_PROD",
        CMDQ_CONS => "CMDQ_CONS",
        EVENTQ_BASE => "EVENTQ_BASE",
        EVENTQ_IRQ_CFG0 => "EVENTQ_IRQ_CFG0",
        EVENTQ_PROD => "EVENTQ_PROD",
        EVENTQ_CONS => "EVENTQ_CONS",
        _ => "(other)",
    }
}

impl Mmio for FakeSmmu {
    fn read32(&self, offset: usize) -> u32 {
        self.read(offset, 32) as u32
    }

    fn write32(&self, offset: usize, value: u32) {
        self.write(offset, value.into(), 32);
    }

    fn read64(&self, offset: usize) -> u64 {
        self.read(offset, 64)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.write(offset, value, 64);
    }

    fn delay_us(&self, us: u32) {
        self.lock().clock_us += u64::from(us);
    }
}

/// Lets a test keep the fake while the driver owns a reference to it.
impl Mmio for &FakeSmmu {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }

    fn read64(&self, offset: usize) -> u64 {
        (**self).read64(offset)
    }

    fn write64(&self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }

    fn delay_us(&self, us: u32) {
        (**self).delay_us(us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::Features;

    #[test]
    fn qemu_idrs_decode_to_qemu_features() {
        let f = Features::decode(QEMU_IDR0, QEMU_IDR1, QEMU_IDR3, QEMU_IDR5);
        assert!(f.s1p && f.s2p && f.vmid16 && f.ril && f.cohacc && !f.hyp);
        assert!(f.two_level_strtab());
        assert_eq!((f.sid_size, f.cmdqs, f.evtqs, f.oas_bits), (16, 19, 19, 44));
        assert!(f.gran4k && f.gran16k && f.gran64k);
    }

    #[test]
    fn cr0_gbpa_irq_side_effects_and_violations() {
        let mem = Arc::new(FakeMemory::new());
        let f = FakeSmmu::new(mem);
        assert!(f.would_bypass(), "reset state bypasses");
        f.write32(GBPA, GBPA_UPDATE | GBPA_ABORT);
        assert_eq!(f.read32(GBPA) & GBPA_UPDATE, 0, "Update self-clears");
        assert!(!f.would_bypass());
        f.write32(CR0, CR0_CMDQEN);
        assert_eq!(f.read32(CR0ACK), CR0_CMDQEN);
        f.write32(IRQ_CTRL, 5);
        assert_eq!(f.read32(IRQ_CTRLACK), 5);
        assert!(f.violations().is_empty());
        f.write32(CR0, CR0_CMDQEN | CR0_SMMUEN);
        assert!(!f.violations().is_empty(), "SMMUEN without a stream table");
        let n = f.violations().len();
        f.write64(STRTAB_BASE, 0x1000);
        assert_eq!(f.violations().len(), n + 1, "STRTAB_BASE while SMMUEN");
        f.set_cr0_stuck(true);
        f.write32(CR0, 0);
        assert_eq!(f.read32(CR0ACK), CR0_CMDQEN | CR0_SMMUEN);
        f.write32(CR0, 0);
        assert_eq!(f.violations().len(), n + 2, "CR0 before CR0ACK");
        assert_eq!(
            f.write_offsets()[..3],
            [GBPA, CR0, IRQ_CTRL],
            "writes are logged in order"
        );
    }
}
