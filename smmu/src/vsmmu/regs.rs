//! The emulated SMMUv3 register file of one guest (IHI 0070 chapter 6) and
//! its command-queue processing (§3.5, §4).
//!
//! [`VSmmu`] answers the guest's MMIO accesses to the two 64 KiB pages of
//! the register frame. Register writes return [`VsmmuAction`]s telling the
//! hypervisor what to do next (process the command queue, reinstall the
//! VM's STEs, raise an interrupt); nothing here touches hardware.
//!
//! Choices where the specification leaves room (all CONSTRAINED
//! UNPREDICTABLE or IMPLEMENTATION DEFINED cases):
//! - CR0 changes are acknowledged in CR0ACK at once (§6.3.10), IRQ_CTRL in
//!   IRQ_CTRLACK at once (§6.3.17), a GBPA update completes at once
//!   (§6.3.14: Update reads 0 again).
//! - Writes to STRTAB_BASE(_CFG) while SMMUEN == 1, to CMDQ_BASE/CMDQ_CONS
//!   while CMDQEN == 1, and to EVENTQ_BASE/EVENTQ_PROD while EVENTQEN == 1
//!   are ignored (§6.3.24-§6.3.29).
//! - A queue LOG2SIZE above the advertised IDR1.CMDQS/EVENTQS reads back and
//!   behaves as the maximum (§6.3.26); base addresses are aligned down to the
//!   queue/table size and truncated to the advertised OAS.
//! - Fields of features not advertised (PRI, ATS, VMW, E2H, and MSI when
//!   the policy has none) are RES0: masked on write, read as zero. Unknown
//!   offsets are RAZ/WI; accesses that are neither 4 bytes at a
//!   4-byte-aligned offset nor 8 bytes at an 8-byte-aligned offset are
//!   RAZ/WI.
//! - GERROR_IRQ_CFGn and EVENTQ_IRQ_CFGn writes are ignored while the
//!   interrupt they configure is enabled in IRQ_CTRL (§6.3.21: they may be
//!   changed only while it is off).
//! - MSIs (§3.18): a CMD_SYNC with CS = SIG_IRQ, and the event-queue and
//!   global-error interrupts whose IRQ_CFG0.ADDR is not 0, are 32-bit
//!   writes of the configured data to guest memory, where the guest polls
//!   them (Linux's driver polls a CMD_SYNC's in its command queue). The
//!   vSMMU has no DeviceID of its own at the guest's ITS, so a write
//!   outside the guest's RAM aborts: GERROR.MSI_CMDQ_ABT_ERR,
//!   MSI_EVENTQ_ABT_ERR or MSI_GERROR_ABT_ERR (the last raises nothing
//!   further). With ADDR 0 the interrupt is the wired one.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use tock_registers::LocalRegisterCopy;

use super::cmd::{self, Translated};
use super::ste::GuestStrtab;
use super::{GuestMemory, StreamMap, StreamRange, VsmmuPolicy};
use crate::addr::{Ipa, Vmid};
use crate::cmd::{Command, CompletionSignal, Sync};
use crate::queue::QueueIndex;
use crate::regs::{
    offset, CMDQ_CONS, GBPA, GERROR, IDR0, IDR1, IDR3, IDR5, Q_BASE, STRTAB_BASE, STRTAB_BASE_CFG,
};

/// Size of one command-queue entry (§4.1).
pub const CMD_BYTES: u64 = 16;
/// Size of one event-queue record (§7.1).
pub const EVT_BYTES: u64 = 32;

/// CMDQ_CONS.ERR: illegal command (§4.5, §6.3.28).
pub const CERROR_ILL: u8 = 1;
/// CMDQ_CONS.ERR: abort on command fetch (§4.5, §6.3.28).
pub const CERROR_ABT: u8 = 2;

/// What the hypervisor must do after a register write or a command batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsmmuAction {
    /// CMDQ_PROD moved (or the queue became runnable again) while CMDQEN:
    /// call [`VSmmu::process_commands`] (now or later, with a budget).
    ProcessCommands,
    /// SMMUEN, GBPA or STRTAB_BASE(_CFG) changed: re-evaluate every STE of
    /// the VM ([`VSmmu::smmu_enabled`], [`VSmmu::gbpa_abort`],
    /// [`VSmmu::guest_strtab`]) and reinstall them.
    StreamTableChanged,
    /// Assert the guest's event-queue interrupt (wired, through the vGIC).
    RaiseEventIrq,
    /// Assert the guest's global-error interrupt.
    RaiseGerrorIrq,
}

/// Physical work produced by one guest command, in guest-queue order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdqWork {
    /// Submit this command to the physical SMMU (already carrying the VM's
    /// VMID and physical StreamIDs).
    Submit(Command),
    /// Re-read, re-validate and reinstall the guest STEs in this range.
    Reinstall(StreamRange),
}

/// The result of [`VSmmu::process_commands`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdqOutcome {
    /// Physical work, in order. The caller performs all of it before
    /// honouring [`sync`](Self::sync).
    pub work: Vec<CmdqWork>,
    /// The batch ends at a guest CMD_SYNC: submit a physical CMD_SYNC after
    /// `work`, wait for it, then call [`VSmmu::complete_sync`].
    pub sync: bool,
    /// The budget ran out with commands left: call again later.
    pub more: bool,
    /// The guest queue stopped on an error (CMDQ_CONS.ERR), if any.
    pub error: Option<u8>,
    /// Interrupts to raise.
    pub actions: Vec<VsmmuAction>,
    /// Guest commands consumed (the SYNC included).
    pub consumed: usize,
}

impl CmdqOutcome {
    /// The physical commands to submit, in order (ignoring reinstalls).
    pub fn commands(&self) -> impl Iterator<Item = &Command> {
        self.work.iter().filter_map(|w| match w {
            CmdqWork::Submit(c) => Some(c),
            CmdqWork::Reinstall(_) => None,
        })
    }

    /// The STE ranges to reinstall, in order.
    pub fn reinstalls(&self) -> impl Iterator<Item = &StreamRange> {
        self.work.iter().filter_map(|w| match w {
            CmdqWork::Reinstall(r) => Some(r),
            CmdqWork::Submit(_) => None,
        })
    }

    /// Empties it, keeping its buffers' capacity.
    fn clear(&mut self) {
        let mut work = core::mem::take(&mut self.work);
        let mut actions = core::mem::take(&mut self.actions);
        work.clear();
        actions.clear();
        *self = Self {
            work,
            actions,
            ..Self::default()
        };
    }
}

/// Bits of CR0 the vSMMU implements: SMMUEN, EVENTQEN, CMDQEN (§6.3.9).
const CR0_MASK: u32 = (1 << 0) | (1 << 2) | (1 << 3);
/// Bits of CR1 (§6.3.11): the six cacheability/shareability fields.
const CR1_MASK: u32 = 0xFFF;
/// Bits of CR2 (§6.3.12): RECINVSID and PTM (E2H needs Hyp; no ATS).
const CR2_MASK: u32 = (1 << 1) | (1 << 2);
/// Bits of GBPA besides Update (§6.3.14).
const GBPA_MASK: u32 =
    0xF | (1 << 4) | (0xF << 8) | (0x3 << 12) | (0x3 << 16) | (0x3 << 18) | (1 << 20);
/// GBPA reset value: SHCFG = use incoming, everything else 0 (as QEMU).
const GBPA_RESET: u32 = 0x1000;
/// Bits of IRQ_CTRL: GERROR_IRQEN, EVENTQ_IRQEN (no PRI, §6.3.16).
const IRQ_CTRL_MASK: u32 = (1 << 0) | (1 << 2);
/// GERROR bits the vSMMU can raise (§6.3.19): CMDQ_ERR, EVENTQ_ABT_ERR.
const GERROR_MASK: u32 = (1 << 0) | (1 << 2);
/// GERROR bits it can raise with MSIs, too: MSI_CMDQ_ABT_ERR,
/// MSI_EVENTQ_ABT_ERR, MSI_GERROR_ABT_ERR.
const GERROR_MSI_MASK: u32 = (1 << 4) | (1 << 5) | (1 << 7);
/// IRQ_CFG0: ADDR\[51:2\] (§6.3.21).
const IRQ_CFG0_MASK: u64 = ((1u64 << 50) - 1) << 2;
/// IRQ_CFG2: MemAttr \[3:0\], SH \[5:4\] (§6.3.23).
const IRQ_CFG2_MASK: u32 = 0x3F;
/// Queue PROD/CONS index + wrap bits (§6.3.27).
const Q_IDX_MASK: u32 = 0xF_FFFF;
/// STRTAB_BASE_CFG fields (§6.3.25).
const STRTAB_CFG_MASK: u32 = 0x3F | (0x1F << 6) | (0x3 << 16);
/// STRTAB_BASE: ADDR[55:6] and RA (§6.3.24).
const STRTAB_BASE_MASK: u64 = (((1u64 << 50) - 1) << 6) | (1 << 62);
/// CMDQ/EVENTQ_BASE: LOG2SIZE, ADDR[55:5], RA/WA (§6.3.26).
const Q_BASE_MASK: u64 = 0x1F | (((1u64 << 51) - 1) << 5) | (1 << 62);

/// The MSI configuration of one interrupt source (SMMU_*_IRQ_CFG0-2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MsiConfig {
    /// IRQ_CFG0: the address (0: the wired interrupt).
    addr: u64,
    /// IRQ_CFG1: the data written.
    data: u32,
    /// IRQ_CFG2: memory type and shareability (kept, not used: the write
    /// goes to the guest's RAM).
    attr: u32,
}

impl MsiConfig {
    /// Where and what to write, if the MSI is configured.
    fn target(&self) -> Option<(Ipa, u32)> {
        (self.addr != 0).then_some((Ipa(self.addr), self.data))
    }

    fn read32(&self, reg: usize) -> u32 {
        match reg {
            0 => self.addr as u32,
            4 => (self.addr >> 32) as u32,
            8 => self.data,
            _ => self.attr,
        }
    }

    fn write32(&mut self, reg: usize, v: u32) {
        match reg {
            0 => self.addr = ((self.addr & !0xFFFF_FFFF) | u64::from(v)) & IRQ_CFG0_MASK,
            4 => self.addr = ((self.addr & 0xFFFF_FFFF) | (u64::from(v) << 32)) & IRQ_CFG0_MASK,
            8 => self.data = v,
            _ => self.attr = v & IRQ_CFG2_MASK,
        }
    }
}

/// An interrupt of the vSMMU (the PRI queue's is not implemented).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqSource {
    /// The event queue's (IRQ_CTRL.EVENTQ_IRQEN, EVENTQ_IRQ_CFGn).
    Event,
    /// Global errors' (IRQ_CTRL.GERROR_IRQEN, GERROR_IRQ_CFGn).
    GlobalError,
}

/// The emulated register file of one guest's SMMUv3.
#[derive(Clone, Debug)]
pub struct VSmmu {
    policy: VsmmuPolicy,
    idr: [u32; 6],
    cr0: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_base_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    cmdq_cons: u32,
    evtq_base: u64,
    pub(super) evtq_prod: u32,
    evtq_cons: u32,
    /// EVENTQ_IRQ_CFGn and GERROR_IRQ_CFGn, indexed by [`IrqSource`].
    msi: [MsiConfig; 2],
    /// CMDQ_CONS points at this CMD_SYNC, whose physical SYNC is
    /// outstanding.
    pending_sync: Option<Sync>,
}

impl VSmmu {
    /// A vSMMU in its reset state (§6.3: CR0 = 0, queues disabled, GBPA as
    /// [`GBPA_RESET`]), advertising `policy`.
    pub fn new(policy: VsmmuPolicy) -> Self {
        let mut policy = policy;
        policy.cmdqs = policy.cmdqs.min(VsmmuPolicy::MAX_QS);
        policy.evtqs = policy.evtqs.min(VsmmuPolicy::MAX_QS);
        policy.ssid_bits = policy.ssid_bits.min(20);
        policy.sid_bits = policy.sid_bits.min(32);
        policy.oas_bits = super::round_oas_bits(policy.oas_bits);
        Self {
            idr: compute_idrs(&policy),
            policy,
            cr0: 0,
            cr1: 0,
            cr2: 0,
            gbpa: GBPA_RESET,
            irq_ctrl: 0,
            gerror: 0,
            gerrorn: 0,
            strtab_base: 0,
            strtab_base_cfg: 0,
            cmdq_base: 0,
            cmdq_prod: 0,
            cmdq_cons: 0,
            evtq_base: 0,
            evtq_prod: 0,
            evtq_cons: 0,
            msi: [MsiConfig::default(); 2],
            pending_sync: None,
        }
    }

    /// The policy advertised (after clamping to architected values).
    pub fn policy(&self) -> &VsmmuPolicy {
        &self.policy
    }

    /// SMMU_IDR0..IDR5 as the guest reads them (§6.3.1-§6.3.6).
    pub fn idrs(&self) -> [u32; 6] {
        self.idr
    }

    /// CR0.SMMUEN: the guest's stream table is in use. When false, every
    /// stream of the VM follows GBPA ([`gbpa_abort`](Self::gbpa_abort)).
    pub fn smmu_enabled(&self) -> bool {
        self.cr0 & 1 != 0
    }

    /// GBPA.ABORT (§6.3.14): with SMMUEN == 0, the guest asked for its
    /// devices' transactions to abort (true) or bypass stage 1 (false).
    pub fn gbpa_abort(&self) -> bool {
        LocalRegisterCopy::<u32, GBPA::Register>::new(self.gbpa).is_set(GBPA::ABORT)
    }

    /// CR0.CMDQEN.
    pub fn cmdq_enabled(&self) -> bool {
        self.cr0 & (1 << 3) != 0
    }

    /// CR0.EVENTQEN.
    pub fn evtq_enabled(&self) -> bool {
        self.cr0 & (1 << 2) != 0
    }

    /// IRQ_CTRL.EVENTQ_IRQEN.
    pub fn evtq_irq_enabled(&self) -> bool {
        self.irq_ctrl & (1 << 2) != 0
    }

    /// IRQ_CTRL.GERROR_IRQEN.
    pub fn gerror_irq_enabled(&self) -> bool {
        self.irq_ctrl & 1 != 0
    }

    /// Whether a CMD_SYNC waits for [`complete_sync`](Self::complete_sync).
    pub fn sync_pending(&self) -> bool {
        self.pending_sync.is_some()
    }

    /// Where interrupt `irq` is signalled by an MSI, and with what data:
    /// `None` for the wired interrupt (no MSIs, or IRQ_CFG0.ADDR 0).
    pub fn msi_target(&self, irq: IrqSource) -> Option<(Ipa, u32)> {
        if !self.policy.msi {
            return None;
        }
        self.msi[irq as usize].target()
    }

    /// Which interrupt's IRQ_CFGn register `off` is, and its offset in the
    /// group (0, 4: CFG0; 8: CFG1; 12: CFG2); none without MSIs (RAZ/WI).
    fn irq_cfg(&self, off: usize) -> Option<(IrqSource, usize)> {
        let gerror = offset::GERROR_IRQ_CFG0;
        let evtq = offset::EVENTQ_IRQ_CFG0;
        match off {
            _ if !self.policy.msi => None,
            o if (gerror..gerror + 16).contains(&o) => Some((IrqSource::GlobalError, o - gerror)),
            o if (evtq..evtq + 16).contains(&o) => Some((IrqSource::Event, o - evtq)),
            _ => None,
        }
    }

    fn irq_enabled(&self, irq: IrqSource) -> bool {
        match irq {
            IrqSource::Event => self.evtq_irq_enabled(),
            IrqSource::GlobalError => self.gerror_irq_enabled(),
        }
    }

    /// An MSI of `irq` could not be written: activates its GERROR bit
    /// (MSI_EVENTQ_ABT_ERR or MSI_GERROR_ABT_ERR, §7.5). The global-error
    /// interrupt to raise for the event queue's, if any; nothing for the
    /// global-error interrupt's own (it is the one that failed).
    pub fn msi_aborted(&mut self, irq: IrqSource) -> Option<VsmmuAction> {
        match irq {
            IrqSource::Event => self
                .raise_gerror(GERROR::MSI_EVENTQ_ABT_ERR.mask << GERROR::MSI_EVENTQ_ABT_ERR.shift),
            IrqSource::GlobalError => {
                let _ = self.raise_gerror(
                    GERROR::MSI_GERROR_ABT_ERR.mask << GERROR::MSI_GERROR_ABT_ERR.shift,
                );
                None
            }
        }
    }

    /// The guest's stream table as STRTAB_BASE(_CFG) describe it (§6.3.24,
    /// §6.3.25), with the effective values: LOG2SIZE capped at SIDSIZE,
    /// reserved FMT as linear, reserved SPLIT as the next lower of 6, 8, 10,
    /// the base truncated to OAS and aligned to the (level-1) table size.
    pub fn guest_strtab(&self) -> GuestStrtab {
        let cfg = LocalRegisterCopy::<u32, STRTAB_BASE_CFG::Register>::new(self.strtab_base_cfg);
        let log2size = (cfg.read(STRTAB_BASE_CFG::LOG2SIZE) as u8).min(self.policy.sid_bits);
        let two_level = cfg.read(STRTAB_BASE_CFG::FMT) == 1;
        let split = match cfg.read(STRTAB_BASE_CFG::SPLIT) {
            s if s >= 10 => 10,
            s if s >= 8 => 8,
            _ => 6,
        };
        // Table size in bytes: 64-byte STEs (linear) or 8-byte L1
        // descriptors covering 2^SPLIT StreamIDs each (§3.4.3).
        let table_log2 = if two_level {
            u32::from(log2size.saturating_sub(split)) + 3
        } else {
            u32::from(log2size) + 6
        };
        let align_log2 = table_log2.max(6);
        let addr = self.strtab_base & (((1u64 << 50) - 1) << 6);
        let addr = addr & self.oas_mask() & !((1u64 << align_log2) - 1);
        GuestStrtab {
            base: Ipa(addr),
            two_level,
            log2size,
            split,
        }
    }

    fn oas_mask(&self) -> u64 {
        (1u64 << self.policy.oas_bits) - 1
    }

    /// LOG2SIZE and effective base of a queue register (§6.3.26).
    fn queue_geometry(&self, base: u64, entry_bytes: u64) -> (u8, Ipa) {
        let reg = LocalRegisterCopy::<u64, Q_BASE::Register>::new(base);
        let log2 = reg.read(Q_BASE::LOG2SIZE) as u8;
        let bytes_log2 = u32::from(log2) + entry_bytes.trailing_zeros();
        let addr = (reg.read(Q_BASE::ADDR) << 5) & self.oas_mask() & !((1u64 << bytes_log2) - 1);
        (log2, Ipa(addr))
    }

    /// LOG2SIZE and base of the command queue.
    pub fn cmdq_geometry(&self) -> (u8, Ipa) {
        self.queue_geometry(self.cmdq_base, CMD_BYTES)
    }

    /// LOG2SIZE and base of the event queue.
    pub fn evtq_geometry(&self) -> (u8, Ipa) {
        self.queue_geometry(self.evtq_base, EVT_BYTES)
    }

    pub(super) fn evtq_cons_raw(&self) -> u32 {
        self.evtq_cons
    }

    /// Whether the GERROR bit(s) `bit` are active (GERROR != GERRORN).
    fn gerror_active(&self, bit: u32) -> bool {
        (self.gerror ^ self.gerrorn) & bit != 0
    }

    /// Activates a global error (§7.5): toggles `bit` in GERROR unless it is
    /// already active; returns the interrupt to raise, if any.
    pub(super) fn raise_gerror(&mut self, bit: u32) -> Option<VsmmuAction> {
        if self.gerror_active(bit) {
            return None;
        }
        self.gerror ^= bit;
        self.gerror_irq_enabled()
            .then_some(VsmmuAction::RaiseGerrorIrq)
    }

    /// Whether the command queue has work the vSMMU may consume now.
    fn cmdq_runnable(&self) -> bool {
        if !self.cmdq_enabled()
            || self.pending_sync.is_some()
            || self.gerror_active(GERROR::CMDQ_ERR.mask << GERROR::CMDQ_ERR.shift)
        {
            return false;
        }
        let (log2, _) = self.cmdq_geometry();
        qidx(log2, self.cmdq_prod) != qidx(log2, self.cmdq_cons)
    }

    /// Reads `size` bytes (4 or 8) at `offset` in the register frame.
    /// Total: unknown offsets, odd sizes and misaligned accesses read 0.
    pub fn read(&self, offset: usize, size: usize) -> u64 {
        match size {
            4 if offset.is_multiple_of(4) => u64::from(self.read32(offset)),
            8 if offset.is_multiple_of(8) => {
                u64::from(self.read32(offset))
                    | (u64::from(self.read32(offset.wrapping_add(4))) << 32)
            }
            _ => 0,
        }
    }

    fn read32(&self, off: usize) -> u32 {
        if let Some((irq, reg)) = self.irq_cfg(off) {
            return self.msi[irq as usize].read32(reg);
        }
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match off {
            offset::IDR0 => self.idr[0],
            offset::IDR1 => self.idr[1],
            offset::IDR2 => self.idr[2],
            offset::IDR3 => self.idr[3],
            offset::IDR4 => self.idr[4],
            offset::IDR5 => self.idr[5],
            offset::IIDR => 0,
            offset::AIDR => {
                // SMMUv3.2 when range invalidation (a v3.2 feature) is on.
                if self.policy.ril {
                    2
                } else {
                    0
                }
            }
            offset::CR0 | offset::CR0ACK => self.cr0,
            offset::CR1 => self.cr1,
            offset::CR2 => self.cr2,
            offset::GBPA => self.gbpa,
            offset::IRQ_CTRL | offset::IRQ_CTRLACK => self.irq_ctrl,
            offset::GERROR => self.gerror,
            offset::GERRORN => self.gerrorn,
            offset::STRTAB_BASE => lo(self.strtab_base),
            o if o == offset::STRTAB_BASE + 4 => hi(self.strtab_base),
            offset::STRTAB_BASE_CFG => self.strtab_base_cfg,
            offset::CMDQ_BASE => lo(self.cmdq_base),
            o if o == offset::CMDQ_BASE + 4 => hi(self.cmdq_base),
            offset::CMDQ_PROD => self.cmdq_prod,
            offset::CMDQ_CONS => self.cmdq_cons,
            offset::EVENTQ_BASE => lo(self.evtq_base),
            o if o == offset::EVENTQ_BASE + 4 => hi(self.evtq_base),
            offset::EVENTQ_PROD => self.evtq_prod,
            offset::EVENTQ_CONS => self.evtq_cons,
            // STATUSR, AGBPA, IRQ_CFGx without MSIs, PRIQ (no PRI), the
            // page-0 aliases of EVENTQ_PROD/CONS and everything else: RAZ.
            _ => 0,
        }
    }

    /// Writes `size` bytes (4 or 8) of `value` at `offset`. Total: unknown
    /// offsets, odd sizes and misaligned accesses are ignored.
    pub fn write(&mut self, offset: usize, size: usize, value: u64) -> Vec<VsmmuAction> {
        let mut actions = VecDeque::new();
        self.write_into(offset, size, value, &mut actions);
        actions.into()
    }

    /// [`write`](Self::write), appending what to do to `actions` (each
    /// action once): a caller's queue of work, whose capacity is reused.
    pub fn write_into(
        &mut self,
        offset: usize,
        size: usize,
        value: u64,
        actions: &mut VecDeque<VsmmuAction>,
    ) {
        match size {
            4 if offset.is_multiple_of(4) => self.write32(offset, value as u32, actions),
            8 if offset.is_multiple_of(8) => {
                self.write32(offset, value as u32, actions);
                self.write32(offset.wrapping_add(4), (value >> 32) as u32, actions);
            }
            _ => {}
        }
    }

    fn write32(&mut self, off: usize, v: u32, actions: &mut VecDeque<VsmmuAction>) {
        fn push(actions: &mut VecDeque<VsmmuAction>, a: VsmmuAction) {
            if !actions.contains(&a) {
                actions.push_back(a);
            }
        }
        if let Some((irq, reg)) = self.irq_cfg(off) {
            if !self.irq_enabled(irq) {
                self.msi[irq as usize].write32(reg, v);
            }
            return;
        }
        let set_lo = |r: u64, v: u32| (r & !0xFFFF_FFFF) | u64::from(v);
        let set_hi = |r: u64, v: u32| (r & 0xFFFF_FFFF) | (u64::from(v) << 32);
        match off {
            offset::CR0 => {
                let old = self.cr0;
                self.cr0 = v & CR0_MASK;
                if (old ^ self.cr0) & 1 != 0 {
                    push(actions, VsmmuAction::StreamTableChanged);
                }
                if self.cmdq_runnable() {
                    push(actions, VsmmuAction::ProcessCommands);
                }
            }
            offset::CR1 => {
                // §6.3.11: writable only while CMDQEN/EVENTQEN/SMMUEN are 0.
                if self.cr0 == 0 {
                    self.cr1 = v & CR1_MASK;
                }
            }
            offset::CR2 => {
                if !self.smmu_enabled() {
                    self.cr2 = v & CR2_MASK;
                }
            }
            offset::GBPA => {
                let reg = LocalRegisterCopy::<u32, GBPA::Register>::new(v);
                if reg.is_set(GBPA::UPDATE) {
                    let old = self.gbpa;
                    self.gbpa = v & GBPA_MASK;
                    if old != self.gbpa && !self.smmu_enabled() {
                        push(actions, VsmmuAction::StreamTableChanged);
                    }
                }
            }
            offset::IRQ_CTRL => {
                let newly = (v & IRQ_CTRL_MASK) & !self.irq_ctrl;
                self.irq_ctrl = v & IRQ_CTRL_MASK;
                // An error still active when its interrupt is enabled is
                // signalled then.
                if newly & 1 != 0 && (self.gerror ^ self.gerrorn) != 0 {
                    push(actions, VsmmuAction::RaiseGerrorIrq);
                }
            }
            offset::GERRORN => {
                let msi = if self.policy.msi { GERROR_MSI_MASK } else { 0 };
                self.gerrorn = v & (GERROR_MASK | msi);
                if self.cmdq_runnable() {
                    push(actions, VsmmuAction::ProcessCommands);
                }
            }
            offset::STRTAB_BASE | offset::STRTAB_BASE_CFG => {
                if !self.smmu_enabled() {
                    if off == offset::STRTAB_BASE {
                        self.strtab_base = set_lo(self.strtab_base, v) & STRTAB_BASE_MASK;
                    } else {
                        self.strtab_base_cfg = v & STRTAB_CFG_MASK;
                    }
                    push(actions, VsmmuAction::StreamTableChanged);
                }
            }
            o if o == offset::STRTAB_BASE + 4 => {
                if !self.smmu_enabled() {
                    self.strtab_base = set_hi(self.strtab_base, v) & STRTAB_BASE_MASK;
                    push(actions, VsmmuAction::StreamTableChanged);
                }
            }
            offset::CMDQ_BASE => {
                if !self.cmdq_enabled() {
                    self.cmdq_base = cap_q_base(set_lo(self.cmdq_base, v), self.policy.cmdqs);
                }
            }
            o if o == offset::CMDQ_BASE + 4 => {
                if !self.cmdq_enabled() {
                    self.cmdq_base = cap_q_base(set_hi(self.cmdq_base, v), self.policy.cmdqs);
                }
            }
            offset::CMDQ_PROD => {
                self.cmdq_prod = v & Q_IDX_MASK;
                if self.cmdq_runnable() {
                    push(actions, VsmmuAction::ProcessCommands);
                }
            }
            offset::CMDQ_CONS => {
                if !self.cmdq_enabled() {
                    let mask = Q_IDX_MASK | (CMDQ_CONS::ERR.mask << CMDQ_CONS::ERR.shift);
                    self.cmdq_cons = v & mask;
                }
            }
            offset::EVENTQ_BASE => {
                if !self.evtq_enabled() {
                    self.evtq_base = cap_q_base(set_lo(self.evtq_base, v), self.policy.evtqs);
                }
            }
            o if o == offset::EVENTQ_BASE + 4 => {
                if !self.evtq_enabled() {
                    self.evtq_base = cap_q_base(set_hi(self.evtq_base, v), self.policy.evtqs);
                }
            }
            offset::EVENTQ_PROD => {
                if !self.evtq_enabled() {
                    self.evtq_prod = v & (Q_IDX_MASK | (1 << 31));
                }
            }
            offset::EVENTQ_CONS => {
                self.evtq_cons = v & (Q_IDX_MASK | (1 << 31));
            }
            // IDRs, IIDR, AIDR, CR0ACK, IRQ_CTRLACK, GERROR, STATUSR: RO.
            // IRQ_CFGx without MSIs, PRIQ (no PRI), AGBPA, unknown: WI.
            _ => {}
        }
    }

    /// Consumes up to `budget` guest commands (§3.5.1, §4): each is fetched
    /// from guest memory at CMDQ_BASE, decoded and translated for `vmid`
    /// with `map`. Stops at the first error, setting CMDQ_CONS.ERR
    /// (CERROR_ILL, or CERROR_ABT when the entry cannot be fetched) with
    /// CONS at the faulting command and activating GERROR.CMDQ_ERR (§4.5);
    /// consumption resumes once the guest acknowledges it in GERRORN. Stops
    /// at a CMD_SYNC, leaving CONS at it until [`complete_sync`](Self::complete_sync).
    pub fn process_commands(
        &mut self,
        mem: &dyn GuestMemory,
        vmid: Vmid,
        map: &dyn StreamMap,
        budget: usize,
    ) -> CmdqOutcome {
        let mut out = CmdqOutcome::default();
        self.process_commands_into(mem, vmid, map, budget, &mut out);
        out
    }

    /// [`process_commands`](Self::process_commands) into `out`, emptied
    /// first: its buffers' capacity is reused, so a caller that keeps it
    /// allocates nothing per round once they have grown.
    pub fn process_commands_into(
        &mut self,
        mem: &dyn GuestMemory,
        vmid: Vmid,
        map: &dyn StreamMap,
        budget: usize,
        out: &mut CmdqOutcome,
    ) {
        out.clear();
        let (log2, base) = self.cmdq_geometry();
        while self.cmdq_runnable() {
            if out.consumed == budget {
                out.more = true;
                break;
            }
            let cons = qidx(log2, self.cmdq_cons);
            let addr = base.0 + u64::from(cons.index()) * CMD_BYTES;
            let mut bytes = [0u8; CMD_BYTES as usize];
            if mem.read(Ipa(addr), &mut bytes).is_err() {
                self.cmdq_error(CERROR_ABT, out);
                break;
            }
            out.consumed += 1;
            let lo = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
            let hi = u64::from_le_bytes(bytes[8..].try_into().unwrap_or([0; 8]));
            // Checked against what this vSMMU advertises (RIL, ASID width,
            // SSIDSIZE, no ATS): anything else is CERROR_ILL, as hardware.
            let translated = Command::decode([lo, hi])
                .and_then(|c| cmd::translate_checked(&c, vmid, map, &self.policy));
            match translated {
                Err(e) => {
                    self.cmdq_error(e.cerror(), out);
                    break;
                }
                Ok(Translated::Forward(cmd)) => out.work.push(CmdqWork::Submit(cmd)),
                Ok(Translated::ReinstallStes(range)) => out.work.push(CmdqWork::Reinstall(range)),
                Ok(Translated::Drop) => {}
                Ok(Translated::Sync(sync)) => {
                    self.pending_sync = Some(sync);
                    out.sync = true;
                    break;
                }
            }
            self.set_cmdq_rd(cons.inc());
        }
    }

    fn set_cmdq_rd(&mut self, rd: QueueIndex) {
        self.cmdq_cons = (self.cmdq_cons & !Q_IDX_MASK) | rd.raw();
    }

    fn cmdq_error(&mut self, cerror: u8, out: &mut CmdqOutcome) {
        let err_mask = CMDQ_CONS::ERR.mask << CMDQ_CONS::ERR.shift;
        self.cmdq_cons = (self.cmdq_cons & !err_mask) | CMDQ_CONS::ERR.val(u32::from(cerror)).value;
        out.error = Some(cerror);
        if let Some(a) = self.raise_gerror(GERROR::CMDQ_ERR.mask << GERROR::CMDQ_ERR.shift) {
            out.actions.push(a);
        }
    }

    /// The physical CMD_SYNC standing for the guest's has completed: CONS
    /// moves past the guest's CMD_SYNC (§4.7.3), so a guest polling CONS
    /// sees completion only now, and a CMD_SYNC with CS = SIG_IRQ writes
    /// its MSIData at its MSIAddr in `mem` (GERROR.MSI_CMDQ_ABT_ERR if that
    /// is not the guest's RAM). Returns [`VsmmuAction::ProcessCommands`]
    /// when more commands wait, and the global-error interrupt if the MSI
    /// aborted. Without a pending SYNC it does nothing.
    pub fn complete_sync(&mut self, mem: &dyn GuestMemory) -> SyncOutcome {
        let mut out = SyncOutcome::default();
        let Some(sync) = self.pending_sync.take() else {
            return out;
        };
        let (log2, _) = self.cmdq_geometry();
        let cons = qidx(log2, self.cmdq_cons);
        self.set_cmdq_rd(cons.inc());
        if self.policy.msi && sync.cs == CompletionSignal::Irq {
            // MSIAddr[51:2] (§4.7.3): the address bits above the largest PA
            // are not part of it.
            let at = Ipa(sync.msi_addr.0 & IRQ_CFG0_MASK);
            if mem.write(at, &sync.msi_data.to_le_bytes()).is_ok() {
                out.msi_written = true;
            } else {
                let bit = GERROR::MSI_CMDQ_ABT_ERR.mask << GERROR::MSI_CMDQ_ABT_ERR.shift;
                out.actions.extend(self.raise_gerror(bit));
            }
        }
        if self.cmdq_runnable() {
            out.actions.push(VsmmuAction::ProcessCommands);
        }
        out
    }
}

/// The result of [`VSmmu::complete_sync`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// What to do next.
    pub actions: Vec<VsmmuAction>,
    /// The CMD_SYNC's completion MSI was written to guest memory.
    pub msi_written: bool,
}

/// A queue index of a queue of 2^`log2` entries; `log2` is at most
/// [`VsmmuPolicy::MAX_QS`] by construction of the base registers.
pub(super) fn qidx(log2: u8, raw: u32) -> QueueIndex {
    QueueIndex::from_raw(log2.min(VsmmuPolicy::MAX_QS), raw)
        .expect("queue LOG2SIZE is capped at 19")
}

/// Masks a CMDQ/EVENTQ_BASE value and caps its LOG2SIZE at `max` (§6.3.26).
fn cap_q_base(v: u64, max: u8) -> u64 {
    let v = v & Q_BASE_MASK;
    let log2 = (v & 0x1F).min(u64::from(max));
    (v & !0x1F) | log2
}

/// SMMU_IDR0..IDR5 for `p` (§6.3.1-§6.3.6): stage 1 only, AArch64 tables,
/// linear and 2-level stream tables, little-endian, terminate model only,
/// MSIs as `p` says; no ATS, PRI, Hyp, BTM, SEV or stall.
fn compute_idrs(p: &VsmmuPolicy) -> [u32; 6] {
    let idr0 = IDR0::S1P::SET
        + IDR0::TTF::AArch64
        + IDR0::COHACC.val(u32::from(p.cohacc))
        + IDR0::MSI.val(u32::from(p.msi))
        + IDR0::HTTU.val(u32::from(p.httu.min(2)))
        + IDR0::ASID16.val(u32::from(p.asid16))
        + IDR0::CD2L.val(u32::from(p.cd2l))
        + IDR0::TTENDIAN::Little
        + IDR0::STALL_MODEL::TerminateOnly
        + IDR0::ST_LEVEL::TwoLevel;
    let idr1 = IDR1::SIDSIZE.val(u32::from(p.sid_bits))
        + IDR1::SSIDSIZE.val(u32::from(p.ssid_bits))
        + IDR1::EVENTQS.val(u32::from(p.evtqs))
        + IDR1::CMDQS.val(u32::from(p.cmdqs));
    let idr3 = IDR3::RIL.val(u32::from(p.ril));
    let oas = match p.oas_bits {
        32 => 0,
        36 => 1,
        40 => 2,
        42 => 3,
        44 => 4,
        48 => 5,
        _ => 6,
    };
    let idr5 = IDR5::OAS.val(oas)
        + IDR5::GRAN4K.val(u32::from(p.gran4k))
        + IDR5::GRAN16K.val(u32::from(p.gran16k))
        + IDR5::GRAN64K.val(u32::from(p.gran64k));
    [idr0.value, idr1.value, 0, idr3.value, 0, idr5.value]
}

// Keep the STRTAB_BASE bitfield import meaningful for readers: the mask above
// is its ADDR and RA fields.
const _: () = assert!(STRTAB_BASE::ADDR.shift == 6);
