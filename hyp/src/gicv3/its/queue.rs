//! The ITS command queue's ring arithmetic (IHI 0069 §6.2, §12.19:
//! GITS_CBASER, GITS_CWRITER, GITS_CREADR).
//!
//! The queue is a ring of 32-byte commands in memory. Software writes
//! commands at GITS_CWRITER.Offset and then moves CWRITER past them; the
//! ITS executes from GITS_CREADR.Offset and moves CREADR. Both are byte
//! offsets (bits \[19:5\]) without a wrap bit: the queue is empty when they
//! are equal and full when CWRITER is one command behind CREADR, so a ring
//! of N commands holds at most N - 1.

use super::cmd::COMMAND_BYTES;
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
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSize(b) => write!(f, "a command queue of {b:#x} bytes is not 1..=256 pages"),
            Self::OffsetOutOfRange(o) => {
                write!(f, "the ITS reported queue offset {o:#x}, outside the queue")
            }
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

#[cfg(test)]
mod tests {
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
