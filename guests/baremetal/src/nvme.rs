//! A small NVMe driver for the bare-metal guest: QEMU's `nvme` (1b36:0010,
//! class 01:08:02) brought up with one admin queue pair in the guest's own
//! RAM, commands submitted and their completions polled.
//!
//! The encodings are written from the NVM Express Base Specification 1.4
//! (registers §3.1, command and completion formats §4.2 and §4.6, Get Log
//! Page §5.14, Identify §5.15). The pure parts (register fields, command
//! and completion encodings, the queue pair's bookkeeping) are compiled on
//! the host too, for their unit tests; the controller itself
//! ([`Controller`]) only for the guest.

use core::fmt;

/// PCI vendor ID of QEMU's NVMe controller (Red Hat).
pub const NVME_VENDOR: u16 = 0x1b36;
/// PCI device ID of QEMU's NVMe controller.
pub const NVME_DEVICE: u16 = 0x0010;
/// Class code of an NVMe controller with the NVM Express interface: mass
/// storage (01h), non-volatile memory (08h), NVMe (02h).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// Controller registers (§3.1, figure 78), offsets in BAR0.
pub mod reg {
    /// Controller Capabilities, 64-bit.
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Interrupt Mask Set: a 1 masks that pin-based or MSI vector.
    pub const INTMS: u64 = 0x0c;
    /// Controller Configuration.
    pub const CC: u64 = 0x14;
    /// Controller Status.
    pub const CSTS: u64 = 0x1c;
    /// Admin Queue Attributes.
    pub const AQA: u64 = 0x24;
    /// Admin Submission Queue Base Address, 64-bit.
    pub const ASQ: u64 = 0x28;
    /// Admin Completion Queue Base Address, 64-bit.
    pub const ACQ: u64 = 0x30;
    /// The first doorbell (§3.1.24).
    pub const DOORBELLS: u64 = 0x1000;

    /// CC.EN, bit 0: enable.
    pub const CC_EN: u32 = 1 << 0;
    /// CSTS.RDY, bit 0: ready.
    pub const CSTS_RDY: u32 = 1 << 0;
    /// CSTS.CFS, bit 1: controller fatal status.
    pub const CSTS_CFS: u32 = 1 << 1;
}

/// Size of a submission queue entry (CC.IOSQES = 6, and fixed for the
/// admin queue): 64 bytes.
pub const SQE_BYTES: usize = 64;
/// Size of a completion queue entry (CC.IOCQES = 4): 16 bytes.
pub const CQE_BYTES: usize = 16;
/// Entries in each admin queue (at most what CAP.MQES allows): a page of
/// submission entries.
pub const QUEUE_ENTRIES: u16 = 64;
/// How long submitted commands may go without any completion: a hang, not
/// a slow controller on a loaded host (QEMU's completes one in
/// microseconds).
pub const COMMAND_TIMEOUT_MS: u64 = 10_000;

/// Admin command opcode: Get Log Page (§5.14).
pub const OPC_GET_LOG_PAGE: u8 = 0x02;
/// Log Identifier 01h: Error Information (§5.14.1.1), a controller-wide
/// log (NSID FFFFFFFFh).
pub const LID_ERROR_INFORMATION: u8 = 0x01;
/// Admin command opcode: Identify (§5.15).
pub const OPC_IDENTIFY: u8 = 0x06;
/// Identify CNS 01h: the Identify Controller data structure, 4 KiB.
pub const CNS_CONTROLLER: u8 = 0x01;

/// CAP (§3.1.1): the fields the guest uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    /// MQES, bits 15:0: maximum queue entries supported, 0's based.
    pub mqes: u16,
    /// TO, bits 31:24: worst-case time to become ready, 500 ms units.
    pub to: u8,
    /// DSTRD, bits 35:32: doorbell stride, 4 << DSTRD bytes.
    pub dstrd: u8,
    /// CSS, bits 44:37, bit 0 (37): the NVM command set is supported.
    pub css_nvm: bool,
    /// MPSMIN, bits 51:48: smallest memory page, 4 KiB << MPSMIN.
    pub mpsmin: u8,
}

impl Cap {
    /// Decodes the 64-bit register.
    pub fn decode(raw: u64) -> Self {
        Cap {
            mqes: raw as u16,
            to: (raw >> 24) as u8,
            dstrd: ((raw >> 32) & 0xf) as u8,
            css_nvm: (raw >> 37) & 1 == 1,
            mpsmin: ((raw >> 48) & 0xf) as u8,
        }
    }

    /// Entries of each admin queue: [`QUEUE_ENTRIES`], or fewer if the
    /// controller supports fewer; None if it cannot run our queues (no
    /// 4 KiB pages, no NVM command set).
    pub fn queue_entries(&self) -> Option<u16> {
        let entries = QUEUE_ENTRIES.min(self.mqes.saturating_add(1));
        (self.mpsmin == 0 && self.css_nvm && entries >= 2).then_some(entries)
    }

    /// How long CC.EN changes may take to show in CSTS.RDY, in ms (at least
    /// 500, whatever TO says).
    pub fn ready_timeout_ms(&self) -> u64 {
        u64::from(self.to.max(1)) * 500
    }

    /// Offset in BAR0 of queue `qid`'s submission tail doorbell, or with
    /// `completion` its completion head doorbell (§3.1.24, §3.1.25).
    pub fn doorbell(&self, qid: u16, completion: bool) -> u64 {
        let index = 2 * u64::from(qid) + u64::from(completion);
        reg::DOORBELLS + index * (4 << self.dstrd)
    }
}

/// AQA (§3.1.8): both admin queues' sizes, 0's based (ASQS 11:0, ACQS
/// 27:16).
pub fn aqa(entries: u16) -> u32 {
    let n = u32::from(entries - 1) & 0xfff;
    n << 16 | n
}

/// CC (§3.1.5) to enable the controller: NVM command set (CSS 6:4 = 0),
/// 4 KiB pages (MPS 10:7 = 0), round robin (AMS 13:11 = 0), 64-byte
/// submission (IOSQES 19:16 = 6) and 16-byte completion entries (IOCQES
/// 23:20 = 4).
pub fn cc_enable() -> u32 {
    6 << 16 | 4 << 20 | reg::CC_EN
}

/// A submission queue entry (§4.2, figure 105) as 16 dwords: CDW0 =
/// opcode (7:0), PRP transfer (PSDT 15:14 = 0), command identifier
/// (31:16); NSID in dword 1; PRP1 in dwords 6-7 and no PRP2 (a buffer
/// within one page needs none); CDW10 and CDW11 as given, the rest 0.
fn sqe(opcode: u8, cid: u16, nsid: u32, prp1: u64, cdw10: u32, cdw11: u32) -> [u32; 16] {
    let mut sqe = [0u32; 16];
    sqe[0] = u32::from(cid) << 16 | u32::from(opcode);
    sqe[1] = nsid;
    sqe[6] = prp1 as u32;
    sqe[7] = (prp1 >> 32) as u32;
    sqe[10] = cdw10;
    sqe[11] = cdw11;
    sqe
}

/// An Identify command (§5.15, figure 244): CDW10 = CNS (7:0), NSID 0.
pub fn identify(cid: u16, prp1: u64, cns: u8) -> [u32; 16] {
    sqe(OPC_IDENTIFY, cid, 0, prp1, u32::from(cns), 0)
}

/// A Get Log Page command (§5.14, figures 189-191) for the first `dwords`
/// dwords (at least 1) of log `lid`, controller-wide (NSID FFFFFFFFh):
/// CDW10 = LID (7:0), NUMDL (31:16); CDW11 = NUMDU (15:0); NUMD is 0's
/// based; offset 0 (CDW12-13), RAE 0.
pub fn get_log_page(cid: u16, prp1: u64, lid: u8, dwords: u32) -> [u32; 16] {
    let numd = dwords - 1;
    let cdw10 = (numd & 0xffff) << 16 | u32::from(lid);
    sqe(OPC_GET_LOG_PAGE, cid, u32::MAX, prp1, cdw10, numd >> 16)
}

/// The 15-bit Status Field of a completion (§4.6.1, figure 126), without
/// the phase tag: SC in bits 7:0, SCT 10:8, CRD 12:11, M 13, DNR 14.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Status(pub u16);

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);

    /// Status Code.
    pub fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type.
    pub fn sct(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }

    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        self.0 & 1 << 14 != 0
    }

    /// The generic command status (SCT 0, §4.6.1.2.1, figure 128) by name.
    pub fn name(self) -> &'static str {
        if self.sct() != 0 {
            return match self.sct() {
                1 => "command specific",
                2 => "media or data integrity error",
                3 => "path related",
                _ => "other",
            };
        }
        match self.sc() {
            0x00 => "success",
            0x01 => "invalid opcode",
            0x02 => "invalid field",
            0x03 => "command id conflict",
            0x04 => "data transfer error",
            0x05 => "aborted, power loss",
            0x06 => "internal error",
            0x07 => "abort requested",
            0x08 => "aborted, queue deleted",
            _ => "other generic",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (SCT {} SC {:#04x}{})",
            self.name(),
            self.sct(),
            self.sc(),
            if self.dnr() { ", DNR" } else { "" }
        )
    }
}

/// The completion queue entry fields the guest uses (§4.6, figure 124),
/// from its dwords 2 and 3 (one 64-bit load, so they are seen together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// SQ Head Pointer (DW2 15:0).
    pub sqhd: u16,
    /// SQ Identifier (DW2 31:16).
    pub sqid: u16,
    /// Command Identifier (DW3 15:0).
    pub cid: u16,
    /// Phase Tag (DW3 16).
    pub phase: bool,
    /// Status Field (DW3 31:17).
    pub status: Status,
}

impl Completion {
    /// Decodes dwords 2 (low half) and 3 (high half).
    pub fn decode(dw23: u64) -> Self {
        let dw3 = (dw23 >> 32) as u32;
        Completion {
            sqhd: dw23 as u16,
            sqid: (dw23 >> 16) as u16,
            cid: dw3 as u16,
            phase: (dw3 >> 16) & 1 == 1,
            status: Status((dw3 >> 17) as u16),
        }
    }
}

/// The admin queue pair's bookkeeping: where the next command goes, where
/// the next completion is expected and with which phase tag, how many
/// commands are in flight. At most `entries - 1` are, so neither queue can
/// fill (§4.1.1: a full queue holds one entry less than its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePair {
    entries: u16,
    sq_tail: u16,
    cq_head: u16,
    /// The phase tag a new completion carries: 1 on the first pass through
    /// the queue, inverted at each wrap (§4.6).
    phase: bool,
    outstanding: u16,
    next_cid: u16,
}

impl QueuePair {
    /// Empty queues of `entries` entries each (at least 2).
    pub fn new(entries: u16) -> Self {
        assert!(entries >= 2, "a queue of {entries} entries");
        QueuePair {
            entries,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            outstanding: 0,
            next_cid: 0,
        }
    }

    /// Entries in each queue.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Whether another command may be submitted.
    pub fn can_submit(&self) -> bool {
        self.outstanding < self.entries - 1
    }

    /// Takes the submission slot for the next command: its index and the
    /// command identifier to give it. The new tail is [`Self::sq_tail`].
    pub fn submit(&mut self) -> (u16, u16) {
        assert!(self.can_submit(), "submission queue full");
        let slot = self.sq_tail;
        let cid = self.next_cid;
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        self.next_cid = self.next_cid.wrapping_add(1);
        self.outstanding += 1;
        (slot, cid)
    }

    /// The submission queue's tail, for its doorbell.
    pub fn sq_tail(&self) -> u16 {
        self.sq_tail
    }

    /// The completion queue slot the next completion will be in; also the
    /// head for its doorbell.
    pub fn cq_head(&self) -> u16 {
        self.cq_head
    }

    /// Commands submitted and not completed.
    pub fn outstanding(&self) -> u16 {
        self.outstanding
    }

    /// Given the entry at [`Self::cq_head`] (its dwords 2 and 3), takes it
    /// if it is new (its phase tag is the current one) and moves the head
    /// on; None if the controller has not written it yet. An entry that
    /// comes while nothing is outstanding is not taken.
    pub fn reap(&mut self, dw23: u64) -> Option<Completion> {
        let c = Completion::decode(dw23);
        if c.phase != self.phase || self.outstanding == 0 {
            return None;
        }
        self.cq_head = (self.cq_head + 1) % self.entries;
        if self.cq_head == 0 {
            self.phase = !self.phase;
        }
        self.outstanding -= 1;
        Some(c)
    }
}

#[cfg(target_os = "none")]
pub use hw::{Controller, Interrupts, NvmeError};

#[cfg(target_os = "none")]
mod hw {
    //! The controller's registers and its admin queues in our RAM.

    use super::*;
    use crate::arena::Arena;
    use crate::edu::{bar0, config_read, enable, find_device, BarError, PciHost};
    use crate::{mmio, time};
    use aarch64_cpu::asm::barrier;

    /// PCI configuration: revision ID (7:0) and class code (31:8).
    const CFG_CLASS: u16 = 0x08;
    /// Command register: Interrupt Disable (bit 10): no INTx.
    const CMD_INTX_DISABLE: u32 = 1 << 10;

    /// The admin queues, one page each.
    #[repr(usize)]
    #[derive(Clone, Copy)]
    enum Page {
        /// The admin submission queue.
        Sq,
        /// The admin completion queue.
        Cq,
    }

    static QUEUES: Arena<2> = Arena::new();

    fn ipa(page: Page) -> u64 {
        QUEUES.page(page as usize)
    }

    /// Why the controller cannot be used, or stopped answering.
    #[derive(Clone, Copy, Debug)]
    pub enum NvmeError {
        /// No NVMe function on bus 0.
        NotFound,
        /// The function's class code is not an NVMe controller's.
        Class(u32),
        /// BAR0 is unusable.
        Bar(BarError),
        /// The controller cannot run our queues.
        Cap(u64),
        /// CSTS did not reach what CC asked for in time.
        Ready { enable: bool, csts: u32 },
        /// Commands went unanswered for [`COMMAND_TIMEOUT_MS`].
        NoCompletion {
            submitted: u64,
            reaped: u64,
            csts: u32,
            /// Dwords 2 and 3 of the completion queue entry expected next.
            head: u64,
        },
    }

    impl fmt::Display for NvmeError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::NotFound => write!(
                    f,
                    "no NVMe controller ({NVME_VENDOR:04x}:{NVME_DEVICE:04x}) on bus 0"
                ),
                Self::Class(c) => write!(f, "the NVMe function's class code is {c:#08x}"),
                Self::Bar(BarError::NoRoom) => {
                    write!(f, "NVMe BAR0 is unassigned and fits no 32-bit window")
                }
                Self::Bar(BarError::Refused(at)) => write!(f, "NVMe BAR0 refused address {at:#x}"),
                Self::Cap(cap) => write!(
                    f,
                    "the controller cannot run 4 KiB-page NVM admin queues (CAP {cap:#x})"
                ),
                Self::Ready { enable, csts } => write!(
                    f,
                    "CSTS.RDY did not become {} in time (CSTS {csts:#x})",
                    u8::from(*enable)
                ),
                Self::NoCompletion {
                    submitted,
                    reaped,
                    csts,
                    head,
                } => write!(
                    f,
                    "no completion for {COMMAND_TIMEOUT_MS} ms (CSTS {csts:#x}) after \
                     {submitted} commands submitted, {reaped} completions reaped; \
                     next completion entry {:?}",
                    Completion::decode(*head)
                ),
            }
        }
    }

    /// How the controller's completions are noticed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Interrupts {
        /// Polled: no interrupt, pin-based or MSI.
        Polled,
        /// The admin completion queue signals MSI-X vector 0.
        MsiX,
    }

    /// The first NVMe controller on bus 0, with its admin queue pair.
    pub struct Controller {
        /// Its device number on bus 0 (function 0).
        pub device: u8,
        /// Where its BAR0 is.
        pub bar0: u64,
        cap: Cap,
        queue: QueuePair,
        submitted: u64,
        reaped: u64,
    }

    impl Controller {
        /// Finds the controller, places its BAR0 if it is unassigned and
        /// turns on memory decoding and bus mastering (INTx off).
        pub fn open(host: &PciHost) -> Result<Self, NvmeError> {
            let device = find_device(host, NVME_VENDOR, NVME_DEVICE).ok_or(NvmeError::NotFound)?;
            let class = config_read(host, device, CFG_CLASS) >> 8;
            if class != NVME_CLASS {
                return Err(NvmeError::Class(class));
            }
            let (bar0, placed) = bar0(host, device).map_err(NvmeError::Bar)?;
            enable(host, device, CMD_INTX_DISABLE);
            let mut nvme = Controller {
                device,
                bar0,
                cap: Cap::decode(0),
                queue: QueuePair::new(2),
                submitted: 0,
                reaped: 0,
            };
            let raw = nvme.r64(reg::CAP);
            nvme.cap = Cap::decode(raw);
            let entries = nvme.cap.queue_entries().ok_or(NvmeError::Cap(raw))?;
            nvme.queue = QueuePair::new(entries);
            say!(
                "guest: nvme at 00:{:02x}.0 BAR0 {:#x}{}: CAP {:#x}, version {:#x}, admin queues of {} entries",
                device,
                bar0,
                if placed { " (placed by us)" } else { "" },
                raw,
                nvme.r32(reg::VS),
                entries
            );
            Ok(nvme)
        }

        fn r32(&self, off: u64) -> u32 {
            // SAFETY: a 32-bit register of the controller's BAR0 (the
            // register page or a doorbell), which decodes memory (enabled
            // by `open`); Device memory, MMU off.
            unsafe { mmio::read32(self.bar0 + off) }
        }

        /// Writes a register; the caller makes sure whatever DMA it
        /// starts reaches only memory no Rust object occupies.
        fn w32(&self, off: u64, v: u32) {
            // The writes made here (CC, INTMS, AQA, ASQ, ACQ, the admin
            // doorbells) make the controller DMA to its queues (arena pages)
            // and to the data buffers of the commands `queue` took.
            // SAFETY: a register as in `r32`; the DMA reaches only memory
            // no Rust object occupies (`queue`'s callers vouched for theirs).
            unsafe { mmio::write32(self.bar0 + off, v) }
        }

        /// A 64-bit register as two 32-bit accesses, low half first.
        fn r64(&self, off: u64) -> u64 {
            u64::from(self.r32(off)) | u64::from(self.r32(off + 4)) << 32
        }

        fn w64(&self, off: u64, v: u64) {
            self.w32(off, v as u32);
            self.w32(off + 4, (v >> 32) as u32);
        }

        /// CSTS.
        pub fn csts(&self) -> u32 {
            self.r32(reg::CSTS)
        }

        /// CC.
        pub fn cc(&self) -> u32 {
            self.r32(reg::CC)
        }

        /// Waits until CSTS.RDY is `ready` (or CSTS.CFS), bounded by CAP.TO.
        fn wait_ready(&self, ready: bool) -> Result<(), NvmeError> {
            let timeout = time::ms_to_ticks(self.cap.ready_timeout_ms());
            let start = time::now();
            loop {
                let csts = self.csts();
                if csts & reg::CSTS_CFS == 0 && (csts & reg::CSTS_RDY != 0) == ready {
                    return Ok(());
                }
                if csts & reg::CSTS_CFS != 0 || time::now().wrapping_sub(start) > timeout {
                    return Err(NvmeError::Ready {
                        enable: ready,
                        csts,
                    });
                }
                core::hint::spin_loop();
            }
        }

        /// Disables the controller if it is enabled (§7.6.2), gives it
        /// empty admin queues and enables it. With [`Interrupts::Polled`]
        /// its pin-based and MSI interrupts are masked (INTMS); with
        /// [`Interrupts::MsiX`] the function's MSI-X must be enabled
        /// already (a controller sets its queues' vectors up as it is
        /// enabled, and INTMS is not to be touched then, §3.1.3).
        pub fn start(&mut self, interrupts: Interrupts) -> Result<(), NvmeError> {
            self.stop()?;
            if interrupts == Interrupts::Polled {
                self.w32(reg::INTMS, u32::MAX);
            }
            let entries = self.queue.entries();
            self.queue = QueuePair::new(entries);
            // No stale entry may carry the phase tag the first pass
            // expects.
            for offset in (0..4096).step_by(8) {
                QUEUES.store(Page::Cq as usize, offset, 0);
            }
            self.w32(reg::AQA, aqa(entries));
            self.w64(reg::ASQ, ipa(Page::Sq));
            self.w64(reg::ACQ, ipa(Page::Cq));
            barrier::dsb(barrier::SY);
            self.w32(reg::CC, cc_enable());
            self.wait_ready(true)
        }

        /// Disables the controller (CC.EN = 0) if it is enabled and waits
        /// until it has stopped: it then does no more DMA.
        pub fn stop(&self) -> Result<(), NvmeError> {
            if self.r32(reg::CC) & reg::CC_EN != 0 || self.csts() & reg::CSTS_RDY != 0 {
                self.w32(reg::CC, 0);
                self.wait_ready(false)?;
            }
            Ok(())
        }

        /// Whether another command fits in the submission queue.
        pub fn can_submit(&self) -> bool {
            self.queue.can_submit()
        }

        /// Commands submitted and not yet completed.
        pub fn outstanding(&self) -> u16 {
            self.queue.outstanding()
        }

        /// Puts the command `sqe(cid)` in the next submission slot; it
        /// runs once [`Self::ring`] tells the controller. Returns its CID.
        ///
        /// # Safety
        ///
        /// Whatever memory the command makes the controller write (its
        /// data pointer) must be memory no Rust object occupies: an arena
        /// page, or an address outside the guest's RAM.
        pub unsafe fn queue(&mut self, sqe: impl FnOnce(u16) -> [u32; 16]) -> u16 {
            let (slot, cid) = self.queue.submit();
            let base = u64::from(slot) * SQE_BYTES as u64;
            for (i, pair) in sqe(cid).chunks_exact(2).enumerate() {
                let v = u64::from(pair[0]) | u64::from(pair[1]) << 32;
                QUEUES.store(Page::Sq as usize, base + 8 * i as u64, v);
            }
            self.submitted += 1;
            cid
        }

        /// Rings the admin submission doorbell: the queued commands run.
        pub fn ring(&self) {
            // Our queue stores before the controller reads them.
            barrier::dsb(barrier::SY);
            self.w32(self.cap.doorbell(0, false), u32::from(self.queue.sq_tail()));
        }

        /// Dwords 2 and 3 of the completion entry expected next, in one
        /// load.
        fn head_entry(&self) -> u64 {
            QUEUES.load(
                Page::Cq as usize,
                u64::from(self.queue.cq_head()) * CQE_BYTES as u64 + 8,
            )
        }

        /// The next completion, if the controller has posted it.
        pub fn reap(&mut self) -> Option<Completion> {
            let c = self.queue.reap(self.head_entry())?;
            self.reaped += 1;
            Some(c)
        }

        /// Rings the admin completion doorbell: the reaped entries are
        /// the controller's again.
        pub fn release(&self) {
            self.w32(self.cap.doorbell(0, true), u32::from(self.queue.cq_head()));
        }

        /// What a controller that stopped answering looks like.
        pub fn stalled(&self) -> NvmeError {
            NvmeError::NoCompletion {
                submitted: self.submitted,
                reaped: self.reaped,
                csts: self.csts(),
                head: self.head_entry(),
            }
        }

        /// Runs one command, with none other outstanding, and returns its
        /// completion; waits at most [`COMMAND_TIMEOUT_MS`].
        ///
        /// # Safety
        ///
        /// As for [`Self::queue`].
        pub unsafe fn run(
            &mut self,
            sqe: impl FnOnce(u16) -> [u32; 16],
        ) -> Result<Completion, NvmeError> {
            assert_eq!(self.outstanding(), 0, "a command is outstanding");
            // SAFETY: the caller vouches for the command's buffer.
            unsafe { self.queue(sqe) };
            self.ring();
            let start = time::now();
            loop {
                if let Some(c) = self.reap() {
                    self.release();
                    return Ok(c);
                }
                if time::elapsed_ms(start) > COMMAND_TIMEOUT_MS {
                    return Err(self.stalled());
                }
                core::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CAP of QEMU 10's `nvme`: MQES 0x7ff, CQR, TO 0xf, DSTRD 0, CSS NVM
    /// (and I/O command sets), MPSMIN 0, MPSMAX 4.
    const QEMU_CAP: u64 = 0x0040_0020_0f01_07ff;

    #[test]
    fn cap_fields() {
        let cap = Cap::decode(QEMU_CAP);
        assert_eq!(cap.mqes, 0x7ff);
        assert_eq!(cap.to, 0xf);
        assert_eq!(cap.dstrd, 0);
        assert!(cap.css_nvm);
        assert_eq!(cap.mpsmin, 0);
        assert_eq!(cap.queue_entries(), Some(QUEUE_ENTRIES));
        assert_eq!(cap.ready_timeout_ms(), 7500);
        // Admin SQ tail at 0x1000, its CQ head at 0x1004; queue 1's at
        // 0x1008 and 0x100c.
        assert_eq!(cap.doorbell(0, false), 0x1000);
        assert_eq!(cap.doorbell(0, true), 0x1004);
        assert_eq!(cap.doorbell(1, false), 0x1008);
        assert_eq!(cap.doorbell(1, true), 0x100c);
        // DSTRD 2: 16-byte stride.
        let wide = Cap::decode(QEMU_CAP | 2 << 32);
        assert_eq!(wide.dstrd, 2);
        assert_eq!(wide.doorbell(0, true), 0x1010);
        assert_eq!(wide.doorbell(1, false), 0x1020);
    }

    #[test]
    fn cap_limits_the_queues() {
        // MQES 3 (4 entries), TO 0.
        let small = Cap::decode(3 | 1 << 37);
        assert_eq!(small.queue_entries(), Some(4));
        assert_eq!(small.ready_timeout_ms(), 500);
        // MQES 0 is not a usable queue; 8 KiB minimum pages; no NVM set.
        assert_eq!(Cap::decode(1 << 37).queue_entries(), None);
        assert_eq!(Cap::decode(QEMU_CAP | 1 << 48).queue_entries(), None);
        assert_eq!(Cap::decode(QEMU_CAP & !(1 << 37)).queue_entries(), None);
    }

    #[test]
    fn register_values() {
        assert_eq!(aqa(64), 0x003f_003f);
        assert_eq!(aqa(2), 0x0001_0001);
        assert_eq!(cc_enable(), 0x0046_0001);
    }

    #[test]
    fn identify_entry() {
        let sqe = identify(0x1234, 0x9100_0000, CNS_CONTROLLER);
        assert_eq!(sqe[0], 0x1234_0006);
        assert_eq!(sqe[1], 0, "NSID");
        assert_eq!((sqe[6], sqe[7]), (0x9100_0000, 0));
        assert_eq!((sqe[8], sqe[9]), (0, 0), "no PRP2");
        assert_eq!(sqe[10], 1);
        assert!(sqe[2..6].iter().chain(&sqe[11..]).all(|&d| d == 0));
        let high = identify(0, 0x12_3456_7000, CNS_CONTROLLER);
        assert_eq!((high[6], high[7]), (0x3456_7000, 0x12));
    }

    #[test]
    fn get_log_page_entry() {
        let sqe = get_log_page(7, 0x9100_0000, LID_ERROR_INFORMATION, 1);
        assert_eq!(sqe[0], 0x0007_0002);
        assert_eq!(sqe[1], 0xffff_ffff, "controller-wide");
        assert_eq!((sqe[6], sqe[7]), (0x9100_0000, 0));
        // LID 1, NUMDL 0 (one dword), NUMDU 0, offset 0.
        assert_eq!((sqe[10], sqe[11], sqe[12], sqe[13]), (0x0000_0001, 0, 0, 0));
        // 0x12345 dwords: NUMD 0x12344 split into NUMDL and NUMDU.
        let big = get_log_page(0, 0, 2, 0x12345);
        assert_eq!((big[10], big[11]), (0x2344_0002, 0x1));
    }

    /// DW2/DW3 of a completion as a controller writes it.
    fn cqe(sqhd: u16, cid: u16, phase: bool, status: u16) -> u64 {
        let dw3 = u32::from(status) << 17 | u32::from(phase) << 16 | u32::from(cid);
        u64::from(dw3) << 32 | u64::from(sqhd)
    }

    #[test]
    fn completion_fields() {
        // Data transfer error with DNR, as QEMU encodes it (status << 1 |
        // phase in the upper half of DW3).
        let c = Completion::decode(cqe(5, 7, true, 0x4004));
        assert_eq!((c.sqhd, c.sqid, c.cid, c.phase), (5, 0, 7, true));
        assert_eq!(c.status, Status(0x4004));
        assert_eq!((c.status.sct(), c.status.sc()), (0, 4));
        assert!(c.status.dnr());
        assert_eq!(
            c.status.to_string(),
            "data transfer error (SCT 0 SC 0x04, DNR)"
        );
        assert_eq!(Status::SUCCESS.to_string(), "success (SCT 0 SC 0x00)");
        assert_eq!(Status(0x0002).name(), "invalid field");
        assert_eq!(Status(0x0281).name(), "media or data integrity error");
        assert_eq!(Status(0x0106).sct(), 1);
    }

    /// A controller model: consumes every submitted entry and completes it
    /// in order with `status`, its phase tag flipping at each wrap.
    struct FakeController {
        entries: u16,
        sq_head: u16,
        cq_tail: u16,
        phase: bool,
        cq: Vec<u64>,
    }

    impl FakeController {
        fn new(entries: u16) -> Self {
            FakeController {
                entries,
                sq_head: 0,
                cq_tail: 0,
                phase: true,
                cq: vec![0; usize::from(entries)],
            }
        }

        /// Runs the commands up to `sq_tail`, completing at most `max`.
        fn run(&mut self, sq_tail: u16, cids: &[u16], max: usize) {
            let mut done = 0;
            while self.sq_head != sq_tail && done < max {
                let cid = cids[usize::from(self.sq_head)];
                self.sq_head = (self.sq_head + 1) % self.entries;
                self.cq[usize::from(self.cq_tail)] = cqe(self.sq_head, cid, self.phase, 0x4004);
                self.cq_tail = (self.cq_tail + 1) % self.entries;
                if self.cq_tail == 0 {
                    self.phase = !self.phase;
                }
                done += 1;
            }
        }
    }

    #[test]
    fn queue_pair_over_many_wraps() {
        let entries = 4;
        let mut q = QueuePair::new(entries);
        let mut ctrl = FakeController::new(entries);
        let mut cids = vec![0u16; usize::from(entries)];
        let (mut submitted, mut reaped) = (0u32, 0u32);
        let mut expect_cid = 0u16;
        for round in 0..50 {
            while q.can_submit() {
                let (slot, cid) = q.submit();
                cids[usize::from(slot)] = cid;
                submitted += 1;
            }
            assert_eq!(q.outstanding(), entries - 1, "never more than size - 1");
            // Complete some, not always all.
            ctrl.run(q.sq_tail(), &cids, 1 + round % 3);
            while let Some(c) = q.reap(ctrl.cq[usize::from(q.cq_head())]) {
                assert_eq!(c.cid, expect_cid, "in order, none twice");
                expect_cid = expect_cid.wrapping_add(1);
                reaped += 1;
            }
        }
        assert!(reaped > 40, "{reaped}");
        assert_eq!(submitted - reaped, u32::from(q.outstanding()));
    }

    #[test]
    fn reap_ignores_old_entries() {
        let mut q = QueuePair::new(4);
        // A zeroed queue has phase 0: nothing to take.
        assert_eq!(q.reap(0), None);
        q.submit();
        // The right phase but nothing outstanding after it is taken.
        assert!(q.reap(cqe(1, 0, true, 0)).is_some());
        assert_eq!(q.reap(cqe(1, 0, true, 0)), None);
        assert_eq!(q.cq_head(), 1);
    }

    #[test]
    #[should_panic(expected = "submission queue full")]
    fn submit_refuses_a_full_queue() {
        let mut q = QueuePair::new(2);
        q.submit();
        q.submit();
    }
}
