//! QEMU's `edu` PCI device: a DMA engine the boot self-test uses to prove
//! what the SMMU lets through (QEMU docs/specs/edu.rst).
//!
//! BAR0 registers: 0x00 identification, 0x60 raise interrupt, 0x64
//! acknowledge interrupt, 0x80 DMA source, 0x88 DMA destination, 0x90
//! count, 0x98 command (bit 0 start/busy, bit 1 direction EDU->RAM). The
//! device's own buffer is 4 KiB at device address 0x40000. Its interrupt is
//! INTx, or its one MSI vector once its MSI capability is enabled.
//! QEMU aborts the whole machine when a DMA range misses that buffer, so the
//! driver checks ranges before starting a transfer.

use core::fmt;
use core::ptr::NonNull;
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! [u64,
    /// DMA command register.
    DMA_CMD [
        /// Write 1 to start; reads 1 while the transfer runs.
        START OFFSET(0) NUMBITS(1) [],
        /// 0: RAM -> EDU buffer, 1: EDU buffer -> RAM.
        TO_RAM OFFSET(1) NUMBITS(1) [],
        /// Raise an interrupt when done.
        IRQ OFFSET(2) NUMBITS(1) []
    ]
];

register_structs! {
    /// `edu` BAR0.
    EduRegs {
        (0x00 => id: ReadOnly<u32>),
        (0x04 => _reserved0),
        (0x60 => irq_raise: WriteOnly<u32>),
        (0x64 => irq_ack: WriteOnly<u32>),
        (0x68 => _reserved1),
        (0x80 => dma_src: ReadWrite<u64>),
        (0x88 => dma_dst: ReadWrite<u64>),
        (0x90 => dma_count: ReadWrite<u64>),
        (0x98 => dma_cmd: ReadWrite<u64, DMA_CMD::Register>),
        (0xa0 => @END),
    }
}

/// Device address of the edu's internal buffer.
pub const BUFFER: u64 = 0x40000;
/// Size of the internal buffer.
pub const BUFFER_SIZE: u64 = 4096;

/// Direction of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device reads memory into its buffer.
    FromMemory,
    /// Device writes its buffer to memory.
    ToMemory,
}

/// Why a transfer was not done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduError {
    /// The identification register does not read like an edu.
    NotEdu(u32),
    /// The buffer range is outside the device's 4 KiB buffer.
    BadRange,
    /// The device did not finish in time.
    Timeout,
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEdu(id) => write!(f, "identification register reads {id:#x}, not an edu"),
            Self::BadRange => f.write_str("range outside the edu buffer"),
            Self::Timeout => f.write_str("DMA did not complete within 2 s"),
        }
    }
}

/// An `edu` device.
pub struct Edu {
    regs: NonNull<EduRegs>,
}

impl Edu {
    /// # Safety
    ///
    /// `bar0` is the address of an edu's BAR0, mapped as device memory for
    /// as long as the returned value lives.
    pub unsafe fn new(bar0: u64) -> Result<Self, EduError> {
        let edu = Self {
            regs: NonNull::new(bar0 as *mut EduRegs).ok_or(EduError::NotEdu(0))?,
        };
        let id = edu.regs().id.get();
        if id & 0xff != 0xed {
            return Err(EduError::NotEdu(id));
        }
        Ok(edu)
    }

    fn regs(&self) -> &EduRegs {
        // SAFETY: `new`'s contract: BAR0 is mapped as device memory.
        unsafe { self.regs.as_ref() }
    }

    /// Sets `bits` in the interrupt status: the device interrupts (an MSI
    /// write, with MSI enabled, each time).
    pub fn raise_irq(&self, bits: u32) {
        self.regs().irq_raise.set(bits);
    }

    /// Clears `bits` in the interrupt status.
    pub fn ack_irq(&self, bits: u32) {
        self.regs().irq_ack.set(bits);
    }

    /// Runs one DMA of `len` bytes between bus address `iova` and buffer
    /// offset `offset`, and waits for the device to finish (QEMU's edu takes
    /// about 100 ms of virtual time per transfer).
    pub fn dma(&self, dir: Direction, iova: u64, offset: u64, len: u64) -> Result<(), EduError> {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > BUFFER_SIZE) {
            return Err(EduError::BadRange);
        }
        let r = self.regs();
        let (src, dst, to_ram) = match dir {
            Direction::FromMemory => (iova, BUFFER + offset, DMA_CMD::TO_RAM::CLEAR),
            Direction::ToMemory => (BUFFER + offset, iova, DMA_CMD::TO_RAM::SET),
        };
        r.dma_src.set(src);
        r.dma_dst.set(dst);
        r.dma_count.set(len);
        r.dma_cmd.write(DMA_CMD::START::SET + to_ram);
        let deadline = crate::now_us() + 2_000_000;
        while r.dma_cmd.is_set(DMA_CMD::START) {
            if crate::now_us() > deadline {
                return Err(EduError::Timeout);
            }
            core::hint::spin_loop();
        }
        Ok(())
    }
}
