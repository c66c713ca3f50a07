//! The ITS command queue's ring arithmetic (IHI 0069 §6.2, §12.19:
//! GITS_CBASER, GITS_CWRITER, GITS_CREADR).
//!
//! The queue is a ring of 32-byte commands in memory. Software writes
//! commands at GITS_CWRITER.Offset and then moves CWRITER past them; the
//! ITS executes from GITS_CREADR.Offset and moves CREADR. Both are byte
//! offsets (bits \[19:5\]) without a wrap bit: the queue is empty when they
//! are equal and full when CWRITER is one command behind CREADR, so a ring
//! of N commands holds at most N - 1.
//!
//! [`CommandQueue::submit`] is the one algorithm that writes commands and
//! waits for them, over [`QueueHw`] (the driver's registers and queue
//! memory, or a fake ITS in the tests). Every wait is a bounded number of
//! polls: an ITS that stalls or stops reading is an error, never a hang.

use super::cmd::{Command, COMMAND_BYTES};
use core::fmt;

/// The largest queue GITS_CBASER.Size can describe: 256 pages of 4 KiB.
pub const MAX_BYTES: usize = 256 * 4096;
/// Offset field of GITS_CWRITER and GITS_CREADR, bits \[19:5\].
const OFFSET_MASK: u64 = 0xf_ffe0;
/// GITS_CREADR.Stalled, bit \[0\]: a command error stopped the queue.
pub const CREADR_STALLED: u64 = 1 << 0;

/// What is wrong with a queue or an offset the ITS reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue size is not a whole number of 4 KiB pages between 4 KiB
    /// and 1 MiB.
    BadSize(usize),
    /// An offset read from the ITS lies outside the queue.
    OffsetOutOfRange(u32),
    /// The ITS stopped at a command it could not execute
    /// (GITS_CREADR.Stalled).
    Stalled {
        /// Byte offset of the command in the queue.
        offset: u32,
        /// Its name.
        command: &'static str,
    },
    /// GITS_CREADR did not move far enough within the polls allowed.
    Timeout {
        /// GITS_CREADR.Offset at the last poll.
        creadr: u32,
        /// GITS_CWRITER.Offset.
        cwriter: u32,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSize(b) => write!(f, "a command queue of {b:#x} bytes is not 1..=256 pages"),
            Self::OffsetOutOfRange(o) => {
                write!(f, "the ITS reported queue offset {o:#x}, outside the queue")
            }
            Self::Stalled { offset, command } => {
                write!(
                    f,
                    "the command queue stalled at {command} (offset {offset:#x})"
                )
            }
            Self::Timeout { creadr, cwriter } => write!(
                f,
                "GITS_CREADR stayed at {creadr:#x}, short of GITS_CWRITER {cwriter:#x}"
            ),
        }
    }
}

/// The geometry of one command queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    bytes: u32,
}

impl Ring {
    /// A ring of `bytes` (a multiple of 4 KiB, at most [`MAX_BYTES`]).
    pub fn new(bytes: usize) -> Result<Self, QueueError> {
        if bytes == 0 || bytes > MAX_BYTES || !bytes.is_multiple_of(4096) {
            return Err(QueueError::BadSize(bytes));
        }
        Ok(Self {
            bytes: bytes as u32,
        })
    }

    /// Its 4 KiB pages (GITS_CBASER.Size + 1).
    pub fn pages(&self) -> u32 {
        self.bytes / 4096
    }

    /// Command slots; one always stays empty.
    pub fn slots(&self) -> u32 {
        self.bytes / COMMAND_BYTES as u32
    }

    /// The offset in a GITS_CWRITER or GITS_CREADR value, checked against
    /// the ring (the Stalled and Retry bits and RES0 bits are dropped).
    pub fn offset(&self, register: u64) -> Result<u32, QueueError> {
        let off = (register & OFFSET_MASK) as u32;
        if off >= self.bytes {
            return Err(QueueError::OffsetOutOfRange(off));
        }
        Ok(off)
    }

    /// The offset after the command at `off`.
    pub fn next(&self, off: u32) -> u32 {
        let n = off + COMMAND_BYTES as u32;
        if n >= self.bytes {
            0
        } else {
            n
        }
    }

    /// Commands written but not yet read.
    pub fn used(&self, write: u32, read: u32) -> u32 {
        (write + self.bytes - read) % self.bytes / COMMAND_BYTES as u32
    }

    /// Commands that can be written before the ring is full.
    pub fn free(&self, write: u32, read: u32) -> u32 {
        self.slots() - 1 - self.used(write, read)
    }

    /// Whether the ITS has read every command written.
    pub fn is_empty(&self, write: u32, read: u32) -> bool {
        write == read
    }
}

/// The GITS_CWRITER value that publishes commands up to `off`.
pub fn cwriter(off: u32) -> u64 {
    u64::from(off) & OFFSET_MASK
}

/// Whether a GITS_CREADR value says the queue is stalled by an error.
pub fn stalled(creadr: u64) -> bool {
    creadr & CREADR_STALLED != 0
}

/// What [`CommandQueue`] needs of the hardware.
pub trait QueueHw {
    /// Reads GITS_CREADR.
    fn creadr(&self) -> u64;
    /// Writes GITS_CWRITER, after making every command written so far
    /// visible to the ITS.
    fn set_cwriter(&mut self, value: u64);
    /// Writes the command at byte offset `at` of the queue memory.
    fn put(&mut self, at: u32, words: [u64; 4]);
    /// The command number of the command at byte offset `at`.
    fn opcode_at(&self, at: u32) -> u8;
    /// Waits a little between two polls of GITS_CREADR.
    fn pause(&self);
}

/// The software side of one command queue: where the next command goes.
#[derive(Debug)]
pub struct CommandQueue {
    ring: Ring,
    /// Offset of the next command (GITS_CWRITER once published).
    write: u32,
    /// Polls of GITS_CREADR per wait.
    polls: u32,
}

impl CommandQueue {
    /// A queue on `ring`, empty (GITS_CWRITER = GITS_CREADR = 0), whose
    /// waits give up after `polls` polls.
    pub fn new(ring: Ring, polls: u32) -> Self {
        Self {
            ring,
            write: 0,
            polls,
        }
    }

    /// GITS_CREADR's offset; an error if the queue stalled or the offset
    /// is outside the queue.
    fn read(&self, hw: &impl QueueHw) -> Result<u32, QueueError> {
        let v = hw.creadr();
        let offset = self.ring.offset(v)?;
        if stalled(v) {
            return Err(QueueError::Stalled {
                offset,
                command: Command::name(hw.opcode_at(offset)),
            });
        }
        Ok(offset)
    }

    /// Polls until `done(read offset)`, at most `polls` times.
    fn wait(&self, hw: &impl QueueHw, done: impl Fn(u32) -> bool) -> Result<(), QueueError> {
        let mut read = 0;
        for _ in 0..self.polls {
            read = self.read(hw)?;
            if done(read) {
                return Ok(());
            }
            hw.pause();
        }
        Err(QueueError::Timeout {
            creadr: read,
            cwriter: self.write,
        })
    }

    /// Writes `cmds` in order, publishes them, and waits until the ITS has
    /// read them all. A full ring is published and waited for first.
    pub fn submit(&mut self, hw: &mut impl QueueHw, cmds: &[Command]) -> Result<(), QueueError> {
        for c in cmds {
            let read = self.read(hw)?;
            if self.ring.free(self.write, read) == 0 {
                hw.set_cwriter(cwriter(self.write));
                let (ring, write) = (self.ring, self.write);
                self.wait(hw, |read| ring.free(write, read) > 0)?;
            }
            hw.put(self.write, c.encode());
            self.write = self.ring.next(self.write);
        }
        hw.set_cwriter(cwriter(self.write));
        let (ring, write) = (self.ring, self.write);
        self.wait(hw, |read| ring.is_empty(write, read))
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::lpi::Lpi;
    use super::super::cmd::{DeviceId, EventId, Icid, RdBase};
    use super::*;
    use alloc::collections::VecDeque;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert_eq!(Ring::new(0), Err(QueueError::BadSize(0)));
        assert_eq!(Ring::new(4096 + 32), Err(QueueError::BadSize(4128)));
        assert_eq!(
            Ring::new(MAX_BYTES + 4096),
            Err(QueueError::BadSize(MAX_BYTES + 4096))
        );
        let r = Ring::new(64 * 1024).unwrap();
        assert_eq!(r.pages(), 16);
        assert_eq!(r.slots(), 2048);
        assert_eq!(Ring::new(MAX_BYTES).unwrap().pages(), 256);
    }

    #[test]
    fn offsets_come_from_bits_19_5() {
        let r = Ring::new(MAX_BYTES).unwrap();
        assert_eq!(r.offset(0xf_ffe0 | CREADR_STALLED), Ok(0xf_ffe0));
        assert_eq!(
            r.offset(0x1234_5678_0000_0040),
            Ok(0x40),
            "RES0 bits dropped"
        );
        assert_eq!(cwriter(0x40), 0x40);
        assert_eq!(cwriter(0x41), 0x40, "Retry and RES0 never set by accident");
        let small = Ring::new(4096).unwrap();
        assert_eq!(
            small.offset(0x1000),
            Err(QueueError::OffsetOutOfRange(0x1000))
        );
        assert!(stalled(0x41));
        assert!(!stalled(0x40));
    }

    #[test]
    fn wraps_and_fills() {
        let r = Ring::new(4096).unwrap();
        assert_eq!(r.next(4096 - 32), 0);
        assert!(r.is_empty(0, 0));
        assert_eq!(r.free(0, 0), 127);
        assert_eq!(r.free(4096 - 32, 0), 0, "one behind the reader: full");
        assert_eq!(r.free(0x40, 0x60), 0);
        assert_eq!(r.free(0x60, 0x40), 126);
        assert_eq!(r.used(0x20, 4096 - 32), 2);
        assert_eq!(r.free(0x20, 4096 - 32), 125);
    }

    /// An ITS model: commands land in `mem`; `speed` commands are read per
    /// poll of CREADR (all of them at once when None); reading stops at a
    /// command whose number is `stall_on`.
    struct FakeIts {
        ring: Ring,
        mem: Vec<[u64; 4]>,
        cwriter: u32,
        creadr: core::cell::Cell<u32>,
        stalled: core::cell::Cell<bool>,
        speed: Option<u32>,
        stall_on: Option<u8>,
        executed: core::cell::RefCell<Vec<[u64; 4]>>,
        pauses: core::cell::Cell<u32>,
        creadr_bits: u64,
    }

    impl FakeIts {
        fn new(pages: usize, speed: Option<u32>) -> Self {
            let ring = Ring::new(pages * 4096).unwrap();
            Self {
                ring,
                mem: vec![[0; 4]; ring.slots() as usize],
                cwriter: 0,
                creadr: 0.into(),
                stalled: false.into(),
                speed,
                stall_on: None,
                executed: Vec::new().into(),
                pauses: 0.into(),
                creadr_bits: 0,
            }
        }

        fn run(&self, limit: u32) {
            for _ in 0..limit {
                let read = self.creadr.get();
                if read == self.cwriter || self.stalled.get() {
                    return;
                }
                let cmd = self.mem[(read / 32) as usize];
                if Some(cmd[0] as u8) == self.stall_on {
                    self.stalled.set(true);
                    return;
                }
                self.executed.borrow_mut().push(cmd);
                self.creadr.set(self.ring.next(read));
            }
        }
    }

    impl QueueHw for FakeIts {
        fn creadr(&self) -> u64 {
            if let Some(n) = self.speed {
                self.run(n);
            }
            u64::from(self.creadr.get()) | u64::from(self.stalled.get()) | self.creadr_bits
        }

        fn set_cwriter(&mut self, value: u64) {
            assert_eq!(value & !0xf_ffe0, 0, "Retry and RES0 bits stay clear");
            self.cwriter = value as u32;
            if self.speed.is_none() {
                self.run(u32::MAX);
            }
        }

        fn put(&mut self, at: u32, words: [u64; 4]) {
            let read = self.creadr.get();
            // Unread commands lie in [read, cwriter): never overwritten.
            let dist = |x: u32| (x + self.ring.slots() * 32 - read) % (self.ring.slots() * 32);
            assert!(
                dist(at) >= dist(self.cwriter),
                "command at {at:#x} overwrites an unread one (read {read:#x}, cwriter {:#x})",
                self.cwriter
            );
            self.mem[(at / 32) as usize] = words;
        }

        fn opcode_at(&self, at: u32) -> u8 {
            self.mem[(at / 32) as usize][0] as u8
        }

        fn pause(&self) {
            self.pauses.set(self.pauses.get() + 1);
        }
    }

    fn syncs(n: usize) -> Vec<Command> {
        (0..n)
            .map(|i| Command::Sync {
                target: RdBase::Processor(i as u16),
            })
            .collect()
    }

    #[test]
    fn submit_writes_in_order_and_waits_for_all() {
        let mut its = FakeIts::new(1, None);
        let mut q = CommandQueue::new(its.ring, 100);
        q.submit(&mut its, &syncs(3)).unwrap();
        assert_eq!(its.cwriter, 3 * 32);
        assert_eq!(its.creadr.get(), 3 * 32);
        let executed: Vec<u64> = its.executed.borrow().iter().map(|c| c[2] >> 16).collect();
        assert_eq!(executed, [0, 1, 2]);
    }

    #[test]
    fn a_slow_its_is_waited_for_across_wraps_without_overwrites() {
        // One 4 KiB page is 128 slots; 300 commands wrap twice, and an ITS
        // that reads one command per poll fills the ring.
        let mut its = FakeIts::new(1, Some(1));
        let mut q = CommandQueue::new(its.ring, 1000);
        q.submit(&mut its, &syncs(300)).unwrap();
        let executed: Vec<u64> = its.executed.borrow().iter().map(|c| c[2] >> 16).collect();
        assert_eq!(executed, (0..300).collect::<Vec<u64>>());
        assert!(its.pauses.get() > 0, "the full ring was waited for");
    }

    #[test]
    fn an_its_that_never_reads_times_out_after_the_polls() {
        let mut its = FakeIts::new(1, Some(0));
        let mut q = CommandQueue::new(its.ring, 50);
        let e = q.submit(&mut its, &syncs(2)).unwrap_err();
        assert_eq!(
            e,
            QueueError::Timeout {
                creadr: 0,
                cwriter: 64
            }
        );
        assert_eq!(its.pauses.get(), 50, "exactly the polls allowed");
        // A full ring that never drains also gives up.
        let mut its = FakeIts::new(1, Some(0));
        let mut q = CommandQueue::new(its.ring, 10);
        assert!(matches!(
            q.submit(&mut its, &syncs(200)),
            Err(QueueError::Timeout { .. })
        ));
    }

    #[test]
    fn a_stalled_queue_names_the_command() {
        let mut its = FakeIts::new(1, None);
        its.stall_on = Some(0x0a);
        let mut q = CommandQueue::new(its.ring, 100);
        let mapti = Command::Mapti {
            device: DeviceId(1),
            event: EventId(0),
            lpi: Lpi::new(8192).unwrap(),
            icid: Icid(0),
        };
        let cmds = [syncs(1)[0], mapti, syncs(1)[0]];
        assert_eq!(
            q.submit(&mut its, &cmds),
            Err(QueueError::Stalled {
                offset: 32,
                command: "MAPTI"
            })
        );
        assert_eq!(its.executed.borrow().len(), 1);
    }

    #[test]
    fn an_offset_outside_the_queue_is_an_error() {
        let mut its = FakeIts::new(1, None);
        its.creadr_bits = 0x1000;
        let mut q = CommandQueue::new(its.ring, 100);
        assert_eq!(
            q.submit(&mut its, &syncs(1)),
            Err(QueueError::OffsetOutOfRange(0x1000))
        );
    }

    proptest! {
        /// Against a queue model: a writer that stops when `free` is 0 never
        /// overwrites an unread command, and `used`/`free` count what the
        /// model holds.
        #[test]
        fn ring_matches_a_fifo(pages in 1usize..3, ops in proptest::collection::vec((any::<bool>(), 1u32..300), 1..300)) {
            let r = Ring::new(pages * 4096).unwrap();
            let (mut write, mut read) = (0u32, 0u32);
            let mut fifo: VecDeque<u32> = VecDeque::new();
            for (produce, n) in ops {
                for _ in 0..n {
                    if produce {
                        if r.free(write, read) == 0 {
                            prop_assert_eq!(fifo.len() as u32, r.slots() - 1);
                            break;
                        }
                        fifo.push_back(write);
                        write = r.next(write);
                    } else {
                        if r.is_empty(write, read) {
                            prop_assert!(fifo.is_empty());
                            break;
                        }
                        prop_assert_eq!(fifo.pop_front(), Some(read));
                        read = r.next(read);
                    }
                }
                prop_assert_eq!(r.used(write, read) as usize, fifo.len());
                prop_assert_eq!(r.free(write, read) as usize, r.slots() as usize - 1 - fifo.len());
            }
        }
    }
}
