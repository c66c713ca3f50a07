//! The console: a PL011 UART found in the DTB, and the `log` backend on it.

use core::fmt::{self, Write};
use core::ptr::NonNull;
use spin::{Mutex, Once};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! [u32,
    /// Flag register.
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// Receive FIFO empty.
        RXFE OFFSET(4) NUMBITS(1) [],
        /// UART busy transmitting.
        BUSY OFFSET(3) NUMBITS(1) []
    ]
];

register_structs! {
    /// PL011 registers we use (ARM DDI 0183).
    Pl011Regs {
        (0x000 => dr: ReadWrite<u32>),
        (0x004 => _reserved0),
        (0x018 => fr: ReadOnly<u32, FR::Register>),
        (0x01c => _reserved1),
        (0x038 => imsc: ReadWrite<u32>),
        (0x03c => _reserved2),
        (0x044 => icr: ReadWrite<u32>),
        (0x048 => @END),
    }
}

/// A PL011 UART.
struct Pl011 {
    regs: NonNull<Pl011Regs>,
}

// SAFETY: the UART is only accessed under the CONSOLE lock (or by the
// emergency path, which accepts interleaving); the registers are MMIO.
unsafe impl Send for Pl011 {}

impl Pl011 {
    fn regs(&self) -> &Pl011Regs {
        // SAFETY: `regs` points at the PL011 found in the DTB, mapped
        // Device-nGnRE (or accessed with the MMU off, which is Device too).
        unsafe { self.regs.as_ref() }
    }

    fn getc(&mut self) -> Option<u8> {
        let regs = self.regs();
        (!regs.fr.is_set(FR::RXFE)).then(|| regs.dr.get() as u8)
    }

    fn putc(&mut self, byte: u8) {
        let regs = self.regs();
        let mut spins = 0u32;
        while regs.fr.is_set(FR::TXFF) && spins < 1_000_000 {
            spins += 1;
            core::hint::spin_loop();
        }
        regs.dr.set(u32::from(byte));
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.putc(b'\r');
            }
            self.putc(b);
        }
        Ok(())
    }
}

static UART: Once<Mutex<Pl011>> = Once::new();
static INPUT_INTID: Once<u32> = Once::new();

/// Receive and receive-timeout interrupts (IMSC/ICR bits 4 and 6).
const RX_INTS: u32 = (1 << 4) | (1 << 6);

/// Routes the UART's receive interrupt to this CPU (the one that handles
/// console input).
#[cfg(target_os = "none")]
pub fn enable_input_irq(irq: Option<crate::platform::Irq>) {
    let (Some(irq), Some(uart)) = (irq, UART.get()) else {
        return;
    };
    uart.lock().regs().imsc.set(RX_INTS);
    INPUT_INTID.call_once(|| irq.intid);
    crate::drivers::gic::enable_spi(irq.intid, crate::arch::mpidr(), irq.edge);
}

/// The interrupt of console input, once enabled.
pub fn input_intid() -> Option<u32> {
    INPUT_INTID.get().copied()
}

/// One byte of console input, if any. Once the FIFO reads empty, the
/// receive interrupts are cleared and the FIFO is read once more: a byte
/// that arrived between the empty read and the clear would otherwise wait
/// with its interrupt cleared (the PL011 raises it as a byte arrives, not
/// while bytes wait), and console input would stop for good.
pub fn read_byte() -> Option<u8> {
    let uart = UART.get()?;
    let mut u = uart.lock();
    if let Some(b) = u.getc() {
        return Some(b);
    }
    u.regs().icr.set(RX_INTS);
    u.getc()
}
static UART_BASE: Once<usize> = Once::new();

/// Initialises the console on the PL011 at `base`.
///
/// # Safety
///
/// `base` is the address of a PL011 register frame, accessible now and
/// mapped as device memory for as long as the hypervisor runs.
pub unsafe fn init(base: u64) {
    UART_BASE.call_once(|| base as usize);
    UART.call_once(|| {
        Mutex::new(Pl011 {
            regs: NonNull::new(base as *mut Pl011Regs).expect("UART at address 0"),
        })
    });
    log::set_logger(&LOGGER).ok();
    log::set_max_level(log::LevelFilter::Info);
}

/// Writes formatted text to the console.
pub fn write_fmt(args: fmt::Arguments<'_>) {
    if let Some(uart) = UART.get() {
        let _ = uart.lock().write_fmt(args);
    }
}

/// Writes even if another CPU died holding the console lock: used for the
/// last words of a fatal error.
pub fn emergency_write_fmt(args: fmt::Arguments<'_>) {
    if let Some(&base) = UART_BASE.get() {
        let mut uart = Pl011 {
            regs: NonNull::new(base as *mut Pl011Regs).expect("UART at address 0"),
        };
        let _ = uart.write_fmt(args);
    }
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let us = crate::now_us();
        write_fmt(format_args!(
            "[{:4}.{:06}] {:5} {}\n",
            us / 1_000_000,
            us % 1_000_000,
            record.level(),
            record.args()
        ));
    }

    fn flush(&self) {}
}
