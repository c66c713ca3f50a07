//! A virtual PL011 UART (ARM DDI 0183) per VM.
//!
//! Enough of the PL011 for Linux's `amba-pl011` driver and for simple
//! guests: the data register, flags, the interrupt mask/status/clear
//! registers, the control registers (stored, no effect) and the PrimeCell
//! identification registers the AMBA bus reads to match the driver.
//! Output goes to the hypervisor's console, a line at a time, prefixed with
//! the VM's name; input comes from the console multiplexer.

use alloc::collections::VecDeque;

/// Register offsets.
mod reg {
    pub const DR: u64 = 0x000;
    pub const RSR: u64 = 0x004;
    pub const FR: u64 = 0x018;
    pub const ILPR: u64 = 0x020;
    pub const IBRD: u64 = 0x024;
    pub const FBRD: u64 = 0x028;
    pub const LCR_H: u64 = 0x02c;
    pub const CR: u64 = 0x030;
    pub const IFLS: u64 = 0x034;
    pub const IMSC: u64 = 0x038;
    pub const RIS: u64 = 0x03c;
    pub const MIS: u64 = 0x040;
    pub const ICR: u64 = 0x044;
    pub const DMACR: u64 = 0x048;
    pub const ID: u64 = 0xfe0;
}

/// FR bits.
const FR_RXFE: u32 = 1 << 4;
const FR_TXFE: u32 = 1 << 7;
/// Interrupt bits (RIS/MIS/IMSC/ICR).
const INT_RX: u32 = 1 << 4;
const INT_TX: u32 = 1 << 5;
const INT_RT: u32 = 1 << 6;

/// PL011 peripheral and PrimeCell IDs at 0xfe0..0x1000.
const IDS: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];
/// Bytes of input kept; more is dropped (the guest is not reading).
const RX_CAPACITY: usize = 64;
/// Longest output line before it is flushed without a newline.
const LINE_MAX: usize = 512;

/// An output line, held in place: the UART's line buffer, and a finished
/// line on its way to the console. It takes no heap, so a VM printing
/// leaves the hypervisor's heap as it was, whether it is mid-line or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLine {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl Default for OutputLine {
    fn default() -> Self {
        Self {
            bytes: [0; LINE_MAX],
            len: 0,
        }
    }
}

impl core::ops::Deref for OutputLine {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// One virtual PL011.
#[derive(Debug, Default)]
pub struct VirtualUart {
    rx: VecDeque<u8>,
    line: OutputLine,
    /// `line` is complete: the next character starts a new one.
    line_done: bool,
    imsc: u32,
    tx_raw: bool,
    cr: u32,
    lcr_h: u32,
    ibrd: u32,
    fbrd: u32,
    ifls: u32,
}

/// What a register access asks of the caller.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UartEffect {
    /// A complete output line (without the newline) waits to be printed:
    /// [`VirtualUart::take_line`] hands it over. It stays in the UART
    /// until then, so an access that ends no line moves no line buffer
    /// (every character the guest prints is an access).
    pub line: bool,
}

impl VirtualUart {
    /// A UART after reset.
    pub fn new() -> Self {
        Self {
            cr: 0x300,
            ifls: 0x12,
            tx_raw: true,
            ..Self::default()
        }
    }

    fn ris(&self) -> u32 {
        let mut ris = 0;
        if !self.rx.is_empty() {
            ris |= INT_RX | INT_RT;
        }
        if self.tx_raw {
            ris |= INT_TX;
        }
        ris
    }

    /// Whether the interrupt line is asserted.
    pub fn irq_level(&self) -> bool {
        self.ris() & self.imsc != 0
    }

    /// Queues input from the console; returns false when it was dropped.
    pub fn push_input(&mut self, byte: u8) -> bool {
        if self.rx.len() >= RX_CAPACITY {
            return false;
        }
        self.rx.push_back(byte);
        true
    }

    /// A guest read of `offset` (`size` bytes).
    pub fn read(&mut self, offset: u64, _size: u8) -> u64 {
        let v = match offset {
            reg::DR => self.rx.pop_front().map_or(0, u32::from),
            reg::RSR => 0,
            reg::FR => FR_TXFE | if self.rx.is_empty() { FR_RXFE } else { 0 },
            reg::IBRD => self.ibrd,
            reg::FBRD => self.fbrd,
            reg::LCR_H => self.lcr_h,
            reg::CR => self.cr,
            reg::IFLS => self.ifls,
            reg::IMSC => self.imsc,
            reg::RIS => self.ris(),
            reg::MIS => self.ris() & self.imsc,
            o if (reg::ID..reg::ID + 0x20).contains(&o) && o % 4 == 0 => {
                u32::from(IDS[((o - reg::ID) / 4) as usize])
            }
            _ => 0,
        };
        u64::from(v)
    }

    /// A guest write.
    pub fn write(&mut self, offset: u64, _size: u8, value: u64) -> UartEffect {
        let v = value as u32;
        let mut effect = UartEffect::default();
        match offset {
            reg::DR => {
                let byte = v as u8;
                // Transmission is instantaneous: the TX interrupt stays raised.
                self.tx_raw = true;
                if byte != b'\r' && core::mem::take(&mut self.line_done) {
                    // A finished line its access did not take is dropped.
                    self.line.len = 0;
                }
                match byte {
                    b'\n' => effect.line = true,
                    b'\r' => {}
                    _ => {
                        self.line.bytes[self.line.len] = byte;
                        self.line.len += 1;
                        effect.line = self.line.len == LINE_MAX;
                    }
                }
                self.line_done |= effect.line;
            }
            reg::IBRD => self.ibrd = v & 0xffff,
            reg::FBRD => self.fbrd = v & 0x3f,
            reg::LCR_H => self.lcr_h = v & 0xff,
            reg::CR => self.cr = v & 0xffff,
            reg::IFLS => self.ifls = v & 0x3f,
            reg::IMSC => self.imsc = v & 0x7ff,
            reg::ICR => {
                if v & INT_TX != 0 {
                    self.tx_raw = false;
                }
            }
            reg::RSR | reg::ILPR | reg::DMACR => {}
            _ => {}
        }
        effect
    }

    /// The line the last access finished ([`UartEffect::line`]); `None`
    /// if it finished none, or it was taken already.
    pub fn take_line(&mut self) -> Option<OutputLine> {
        core::mem::take(&mut self.line_done).then(|| core::mem::take(&mut self.line))
    }

    /// Output not yet ended by a newline (printed when the VM stops).
    pub fn take_partial_line(&mut self) -> Option<OutputLine> {
        self.line_done = false;
        (!self.line.is_empty()).then(|| core::mem::take(&mut self.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `byte` to DR; the line it finished, if any.
    fn put(u: &mut VirtualUart, byte: u8) -> Option<OutputLine> {
        let effect = u.write(reg::DR, 4, u64::from(byte));
        let line = u.take_line();
        assert_eq!(
            effect.line,
            line.is_some(),
            "the effect says when a line waits"
        );
        line
    }

    #[test]
    fn output_is_line_buffered() {
        let mut u = VirtualUart::new();
        for b in b"hi\r" {
            assert_eq!(u.write(reg::DR, 4, u64::from(*b)), UartEffect::default());
        }
        assert_eq!(put(&mut u, b'\n').as_deref(), Some(&b"hi"[..]));
        u.write(reg::DR, 4, u64::from(b'x'));
        assert_eq!(u.take_partial_line().as_deref(), Some(&b"x"[..]));
        assert_eq!(u.take_partial_line(), None, "taken once");
    }

    #[test]
    fn a_finished_line_is_handed_over_once_and_never_joins_the_next() {
        let mut u = VirtualUart::new();
        assert_eq!(put(&mut u, b'a'), None);
        assert!(u.write(reg::DR, 4, u64::from(b'\n')).line);
        // Not taken: the next character starts a line of its own.
        assert_eq!(put(&mut u, b'b'), None);
        assert_eq!(put(&mut u, b'\n').as_deref(), Some(&b"b"[..]));
        assert_eq!(u.take_line(), None, "taken once");
        assert_eq!(u.take_partial_line(), None);
    }

    #[test]
    fn a_line_without_newline_is_flushed_at_its_longest() {
        let mut u = VirtualUart::new();
        for _ in 1..LINE_MAX {
            assert_eq!(put(&mut u, b'a'), None);
        }
        let line = put(&mut u, b'b').expect("flushed");
        assert_eq!(line.len(), LINE_MAX);
        assert_eq!(line.last(), Some(&b'b'));
        assert_eq!(u.take_partial_line(), None, "the buffer starts again");
    }

    #[test]
    fn input_raises_rx_interrupt_when_unmasked() {
        let mut u = VirtualUart::new();
        assert_ne!(u.read(reg::FR, 4) as u32 & FR_RXFE, 0);
        u.write(reg::IMSC, 4, u64::from(INT_RX));
        assert!(!u.irq_level());
        assert!(u.push_input(b'a'));
        assert!(u.irq_level());
        assert_eq!(u.read(reg::FR, 4) as u32 & FR_RXFE, 0);
        assert_eq!(u.read(reg::DR, 4), u64::from(b'a'));
        assert!(!u.irq_level());
    }

    #[test]
    fn primecell_ids_match_a_pl011() {
        let mut u = VirtualUart::new();
        let ids: Vec<u64> = (0..8).map(|i| u.read(0xfe0 + i * 4, 4)).collect();
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let mut u = VirtualUart::new();
        for off in (0..0x2000).step_by(3) {
            u.write(off, 1, u64::MAX);
            u.read(off, 8);
        }
        for _ in 0..1000 {
            u.push_input(0);
        }
        assert!(u.rx.len() <= RX_CAPACITY);
    }
}
