//! The guest's console: the PL011 its device tree names, polled.

use crate::mmio;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, Ordering};

/// Base of the console PL011, 0 until the device tree was read. Only
/// plain loads and stores (the MMU is off: no exclusives on this memory).
pub static UART: AtomicU64 = AtomicU64::new(0);

/// PL011 data register offset.
const UARTDR: u64 = 0x00;
/// PL011 flag register offset.
const UARTFR: u64 = 0x18;
/// UARTFR.TXFF: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;
/// UARTFR.RXFE: receive FIFO empty.
const FR_RXFE: u32 = 1 << 4;

/// A byte typed on the console, if one waits (polled).
pub fn try_read() -> Option<u8> {
    let base = UART.load(Ordering::Relaxed);
    if base == 0 {
        return None;
    }
    // SAFETY: as in `Console::put`: the PL011 our device tree names,
    // Device memory with the MMU off, 32-bit registers.
    unsafe {
        if mmio::read32(base + UARTFR) & FR_RXFE != 0 {
            return None;
        }
        Some(mmio::read32(base + UARTDR) as u8)
    }
}

/// Writes to the PL011 found in the device tree (polled, no setup: the
/// boot loader or hypervisor leaves it enabled).
pub struct Console;

impl Console {
    fn put(byte: u8) {
        let base = UART.load(Ordering::Relaxed);
        if base == 0 {
            return;
        }
        // SAFETY: `base` is the PL011 named by our device tree (set in
        // `guest_main`); with the MMU off it is accessed as Device memory.
        // UARTFR and UARTDR are 32-bit registers of that device.
        unsafe {
            while mmio::read32(base + UARTFR) & FR_TXFF != 0 {
                core::hint::spin_loop();
            }
            mmio::write32(base + UARTDR, u32::from(byte));
        }
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Self::put(b'\r');
            }
            Self::put(b);
        }
        Ok(())
    }
}

/// Prints one line on the console (`println!` for the guest).
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
