//! What to read: the parsed arguments and the offsets of the reads.

use core::fmt;

/// The largest block: the program's one read buffer.
pub const MAX_BLOCK: usize = 1 << 20;

/// The smallest block and the alignment of every block size: O_DIRECT
/// reads must be aligned to the device's logical block, at most 4 KiB.
pub const MIN_BLOCK: usize = 4096;

/// Where the reads go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Block-aligned offsets from a fixed pseudo-random sequence.
    Random,
    /// From the start of the device, wrapping around at its end.
    Sequential,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Random => "random",
            Order::Sequential => "seq",
        }
    }
}

/// The parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan<'a> {
    /// The device to read (a path).
    pub device: &'a [u8],
    /// Bytes per read: a multiple of [`MIN_BLOCK`], at most [`MAX_BLOCK`].
    pub block: usize,
    /// How many reads.
    pub count: u64,
    /// Where they go.
    pub order: Order,
}

/// Why the command line is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageError {
    /// Not exactly four arguments.
    Arguments,
    /// The block size is not a number, not a multiple of 4 KiB or over 1 MiB.
    Block,
    /// The count is not a number or is 0.
    Count,
    /// The order is neither `random` nor `seq`.
    Order,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UsageError::Arguments => "usage: disk-bench DEVICE BLOCK_BYTES COUNT random|seq",
            UsageError::Block => "BLOCK_BYTES must be a multiple of 4096, at most 1048576",
            UsageError::Count => "COUNT must be a number above 0",
            UsageError::Order => "the order must be random or seq",
        })
    }
}

fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + u64::from(c - b'0'))
    })
}

impl<'a> Plan<'a> {
    /// Parses the arguments after the program's name.
    pub fn parse(args: &[&'a [u8]]) -> Result<Self, UsageError> {
        let &[device, block, count, order] = args else {
            return Err(UsageError::Arguments);
        };
        let block = number(block)
            .and_then(|b| usize::try_from(b).ok())
            .filter(|&b| b > 0 && b % MIN_BLOCK == 0 && b <= MAX_BLOCK)
            .ok_or(UsageError::Block)?;
        let count = number(count).filter(|&c| c > 0).ok_or(UsageError::Count)?;
        let order = match order {
            b"random" => Order::Random,
            b"seq" => Order::Sequential,
            _ => return Err(UsageError::Order),
        };
        Ok(Self {
            device,
            block,
            count,
            order,
        })
    }

    /// The byte offsets of the reads on a device of `size` bytes, or
    /// `None` when not even one block fits.
    pub fn offsets(&self, size: u64) -> Option<Offsets> {
        let blocks = size / self.block as u64;
        (blocks > 0).then_some(Offsets {
            order: self.order,
            block: self.block as u64,
            blocks,
            next: 0,
            state: 0x9E37_79B9_7F4A_7C15,
        })
    }

    /// The result line for `nanos` nanoseconds.
    pub fn report(&self, nanos: u64) -> Report {
        Report {
            count: self.count,
            block: self.block,
            order: self.order,
            nanos,
        }
    }
}

/// The offsets of the reads (endless; the caller takes `count`).
#[derive(Clone, Debug)]
pub struct Offsets {
    order: Order,
    block: u64,
    blocks: u64,
    next: u64,
    state: u64,
}

impl Iterator for Offsets {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let index = match self.order {
            Order::Sequential => {
                let i = self.next;
                self.next = (i + 1) % self.blocks;
                i
            }
            Order::Random => {
                // xorshift64: a fixed, well-spread sequence, the same in
                // every run and configuration.
                let mut x = self.state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.state = x;
                x % self.blocks
            }
        };
        Some(index * self.block)
    }
}

/// The line printed at the end of a run.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    count: u64,
    block: usize,
    order: Order,
    nanos: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "disk-bench: {} reads of {} B ({}) in {} ns",
            self.count,
            self.block,
            self.order.name(),
            self.nanos
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&'static str]) -> Result<Plan<'static>, UsageError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        Plan::parse(&args)
    }

    #[test]
    fn parses_a_command_line() {
        let p = plan(&["/dev/nvme0n1", "4096", "8192", "random"]).unwrap();
        assert_eq!(p.device, b"/dev/nvme0n1");
        assert_eq!((p.block, p.count, p.order), (4096, 8192, Order::Random));
        let p = plan(&["/dev/x", "1048576", "1", "seq"]).unwrap();
        assert_eq!((p.block, p.order), (MAX_BLOCK, Order::Sequential));
    }

    #[test]
    fn refuses_bad_command_lines() {
        assert_eq!(plan(&["/dev/x", "4096", "1"]), Err(UsageError::Arguments));
        assert_eq!(plan(&["/dev/x", "512", "1", "seq"]), Err(UsageError::Block));
        assert_eq!(plan(&["/dev/x", "0", "1", "seq"]), Err(UsageError::Block));
        assert_eq!(
            plan(&["/dev/x", "2097152", "1", "seq"]),
            Err(UsageError::Block)
        );
        assert_eq!(plan(&["/dev/x", "4k", "1", "seq"]), Err(UsageError::Block));
        assert_eq!(
            plan(&["/dev/x", "4096", "0", "seq"]),
            Err(UsageError::Count)
        );
        assert_eq!(
            plan(&["/dev/x", "4096", "99999999999999999999", "seq"]),
            Err(UsageError::Count)
        );
        assert_eq!(
            plan(&["/dev/x", "4096", "1", "rand"]),
            Err(UsageError::Order)
        );
    }

    #[test]
    fn sequential_offsets_wrap_at_the_last_whole_block() {
        let p = plan(&["/dev/x", "4096", "1", "seq"]).unwrap();
        let o: Vec<u64> = p.offsets(3 * 4096 + 100).unwrap().take(5).collect();
        assert_eq!(o, [0, 4096, 8192, 0, 4096]);
        assert!(p.offsets(4095).is_none());
    }

    #[test]
    fn random_offsets_are_aligned_in_range_and_spread() {
        let p = plan(&["/dev/x", "4096", "1", "random"]).unwrap();
        let size = 256 << 20;
        let blocks = size / 4096;
        let offsets: Vec<u64> = p.offsets(size).unwrap().take(8192).collect();
        assert!(offsets.iter().all(|&o| o % 4096 == 0 && o < size));
        let mut distinct = offsets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // 8192 draws from 65536 blocks: nearly all distinct, and both
        // halves of the device are read.
        assert!(distinct.len() > 7500, "{} distinct", distinct.len());
        assert!(offsets.iter().any(|&o| o < size / 2));
        assert!(offsets.iter().any(|&o| o >= size / 2));
        // The same sequence every run.
        let again: Vec<u64> = p.offsets(size).unwrap().take(8192).collect();
        assert_eq!(offsets, again);
        assert!(blocks > 0);
    }

    #[test]
    fn reports_in_one_line() {
        let p = plan(&["/dev/x", "4096", "8", "seq"]).unwrap();
        assert_eq!(
            p.report(1_234).to_string(),
            "disk-bench: 8 reads of 4096 B (seq) in 1234 ns"
        );
    }
}
