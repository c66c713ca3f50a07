//! A small bare-metal test guest for the hypervisor.
//!
//! Booted like a Linux arm64 `Image` (see `entry.S`): EL1, MMU off, x0 = DTB.
//! It finds its PL011 and memory in the device tree, prints
//! `guest: hello from <name>` (`name=` on `/chosen/bootargs`) and its CPU
//! count, then does what the command line asks:
//!
//! - nothing: prints `guest: done` and powers off (PSCI `SYSTEM_OFF`);
//! - `bad_access`: reads 256 MiB past the end of its RAM and reports the
//!   synchronous data abort from its EL1 vectors
//!   (`guest: data abort at FAR=0x... ESR=0x...`), then powers off;
//! - `count=N`: prints `guest: tick 1` .. `guest: tick N`, one every
//!   `tick_ms=` milliseconds (default 100) of the virtual counter, then
//!   `guest: done` and powers off.
//!
//! PSCI goes through HVC, or SMC when the device tree's `/psci` says so.
//!
//! On the host only the pure parts (command line, device tree reading) are
//! compiled, for their unit tests.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use flat_device_tree::node::FdtNode;
use flat_device_tree::Fdt;

/// Distance past the end of RAM that `bad_access` reads from.
const BAD_ACCESS_GAP: u64 = 256 << 20;

/// Milliseconds between two ticks of `count=N` unless `tick_ms=` says otherwise.
const DEFAULT_TICK_MS: u64 = 100;

/// What the command line asks the guest to do after its greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Power off at once.
    Done,
    /// Read outside RAM and report the data abort.
    BadAccess,
    /// Print this many ticks, spaced by the virtual timer.
    Count(u64),
}

/// The guest's command line (`/chosen/bootargs`), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Args<'a> {
    /// `name=`, for the greeting.
    name: &'a str,
    /// The last of `bad_access` / `count=N` on the line; [`Action::Done`] without.
    action: Action,
    /// `tick_ms=`: milliseconds between ticks.
    tick_ms: u64,
}

impl<'a> Args<'a> {
    /// Decodes a command line; words it does not know (`console=...`) are
    /// ignored, as are malformed numbers.
    fn parse(bootargs: &'a str) -> Self {
        let mut args = Args {
            name: "unnamed",
            action: Action::Done,
            tick_ms: DEFAULT_TICK_MS,
        };
        for word in bootargs.split_ascii_whitespace() {
            match word.split_once('=') {
                Some(("name", v)) if !v.is_empty() => args.name = v,
                Some(("count", v)) => {
                    if let Ok(n) = v.parse() {
                        args.action = Action::Count(n);
                    }
                }
                Some(("tick_ms", v)) => {
                    if let Ok(ms) = v.parse() {
                        args.tick_ms = ms;
                    }
                }
                None if word == "bad_access" => args.action = Action::BadAccess,
                _ => {}
            }
        }
        args
    }
}

/// How PSCI calls reach the hypervisor (`/psci` `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conduit {
    /// `hvc #0` (the default).
    Hvc,
    /// `smc #0`.
    Smc,
}

/// What the guest needs from its device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Board<'a> {
    /// Base address of the console PL011.
    uart: u64,
    /// First RAM region: base and size.
    ram: (u64, u64),
    /// Number of `/cpus/cpu@N` nodes.
    cpus: usize,
    /// PSCI conduit.
    conduit: Conduit,
    /// `/chosen/bootargs`, empty without.
    bootargs: &'a str,
}

/// Why the device tree is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BoardError {
    /// No PL011 (neither `stdout-path` nor an `arm,pl011` node).
    NoUart,
    /// No `device_type = "memory"` node with a region.
    NoMemory,
}

/// The first `reg` entry of a node.
fn first_reg(node: FdtNode<'_, '_>) -> Option<(u64, u64)> {
    node.reg()
        .next()
        .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64))
}

fn is_pl011(node: FdtNode<'_, '_>) -> bool {
    node.compatible()
        .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
}

impl<'a> Board<'a> {
    /// Reads the console, RAM, CPU count, PSCI conduit and bootargs.
    fn from_fdt(fdt: &Fdt<'a>) -> Result<Self, BoardError> {
        let uart = fdt
            .chosen()
            .ok()
            .and_then(|c| c.stdout())
            .map(|s| s.node())
            .filter(|n| is_pl011(*n))
            .or_else(|| fdt.find_compatible(&["arm,pl011"]))
            .and_then(first_reg)
            .ok_or(BoardError::NoUart)?
            .0;
        let ram = fdt
            .all_nodes()
            .filter(|n| {
                n.property("device_type")
                    .and_then(|p| p.as_str())
                    .is_some_and(|s| s == "memory")
            })
            .find_map(first_reg)
            .filter(|r| r.1 > 0)
            .ok_or(BoardError::NoMemory)?;
        let conduit = match fdt
            .find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])
            .and_then(|n| n.property("method"))
            .and_then(|p| p.as_str())
        {
            Some("smc") => Conduit::Smc,
            _ => Conduit::Hvc,
        };
        let bootargs = fdt.chosen().ok().and_then(|c| c.bootargs()).unwrap_or("");
        Ok(Board {
            uart,
            ram,
            cpus: fdt.cpus().count(),
            conduit,
            bootargs,
        })
    }

    /// The address `bad_access` reads: 256 MiB past the end of RAM.
    fn bad_address(&self) -> u64 {
        self.ram.0 + self.ram.1 + BAD_ACCESS_GAP
    }
}

/// ESR_EL1.EC of a data abort taken without a change in exception level.
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;

/// Index of the "current EL with SP_ELx, synchronous" vector.
const VECTOR_CURRENT_SPX_SYNC: u64 = 4;

/// Whether an exception is the data abort `bad_access` provokes.
fn is_same_el_data_abort(vector: u64, esr: u64) -> bool {
    vector == VECTOR_CURRENT_SPX_SYNC && (esr >> 26) & 0x3f == EC_DATA_ABORT_SAME_EL
}

#[cfg(target_os = "none")]
mod hw {
    //! Everything that touches the machine: UART, counter, PSCI, the vectors.

    use super::{is_same_el_data_abort, Action, Args, Board, Conduit};
    use aarch64_cpu::asm::barrier;
    use aarch64_cpu::registers::{Readable, CNTFRQ_EL0, CNTVCT_EL0};
    use core::fmt::{self, Write};
    use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
    use flat_device_tree::Fdt;

    core::arch::global_asm!(include_str!("entry.S"));
    core::arch::global_asm!(include_str!("vectors.S"));

    /// Base of the console PL011, 0 until the device tree was read. Only
    /// plain loads and stores (the MMU is off: no exclusives on this memory).
    static UART: AtomicU64 = AtomicU64::new(0);
    /// The PSCI conduit: 0 = HVC, 1 = SMC.
    static CONDUIT: AtomicU8 = AtomicU8::new(0);

    /// PL011 data register offset.
    const UARTDR: u64 = 0x00;
    /// PL011 flag register offset.
    const UARTFR: u64 = 0x18;
    /// UARTFR.TXFF: transmit FIFO full.
    const FR_TXFF: u32 = 1 << 5;

    /// Writes to the PL011 found in the device tree (polled, no setup: the
    /// boot loader or hypervisor leaves it enabled).
    struct Console;

    impl Console {
        fn put(byte: u8) {
            let base = UART.load(Ordering::Relaxed);
            if base == 0 {
                return;
            }
            let fr = (base + UARTFR) as *const u32;
            let dr = (base + UARTDR) as *mut u32;
            // SAFETY: `base` is the PL011 named by our device tree (set in
            // `guest_main`); with the MMU off it is accessed as Device memory.
            // UARTFR and UARTDR are 32-bit registers of that device.
            unsafe {
                while fr.read_volatile() & FR_TXFF != 0 {
                    core::hint::spin_loop();
                }
                dr.write_volatile(u32::from(byte));
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

    macro_rules! say {
        ($($arg:tt)*) => {{
            let _ = writeln!(Console, $($arg)*);
        }};
    }

    /// PSCI SYSTEM_OFF; parks the CPU if the call returns.
    fn power_off() -> ! {
        let result = if CONDUIT.load(Ordering::Relaxed) == 1 {
            smccc::psci::system_off::<smccc::Smc>()
        } else {
            smccc::psci::system_off::<smccc::Hvc>()
        };
        say!("guest: SYSTEM_OFF returned {:?}", result);
        loop {
            aarch64_cpu::asm::wfi();
        }
    }

    /// The virtual counter (CNTVCT_EL0), read after an ISB so it is not
    /// read early.
    fn counter() -> u64 {
        barrier::isb(barrier::SY);
        CNTVCT_EL0.get()
    }

    /// Busy-waits `ms` milliseconds of the virtual counter.
    fn delay_ms(ms: u64) {
        let ticks = CNTFRQ_EL0.get() * ms / 1000;
        let start = counter();
        while counter().wrapping_sub(start) < ticks {
            core::hint::spin_loop();
        }
    }

    /// Rust entry, called by `entry.S` with the DTB address.
    #[no_mangle]
    extern "C" fn guest_main(dtb: usize) -> ! {
        // SAFETY: the boot protocol passes the DTB's address in x0; the
        // boot loader placed a valid blob there, in RAM we do not write.
        let fdt = match unsafe { Fdt::from_ptr(dtb as *const u8) } {
            Ok(fdt) => fdt,
            Err(_) => power_off(),
        };
        let board = match Board::from_fdt(&fdt) {
            Ok(board) => board,
            Err(_) => power_off(),
        };
        UART.store(board.uart, Ordering::Relaxed);
        CONDUIT.store(u8::from(board.conduit == Conduit::Smc), Ordering::Relaxed);

        let args = Args::parse(board.bootargs);
        say!("guest: hello from {}", args.name);
        say!(
            "guest: {} cpus, RAM {:#x}..{:#x}, PL011 at {:#x}",
            board.cpus,
            board.ram.0,
            board.ram.0 + board.ram.1,
            board.uart
        );
        match args.action {
            Action::Done => {}
            Action::BadAccess => {
                let addr = board.bad_address();
                say!("guest: reading {:#x}, outside RAM", addr);
                // SAFETY: deliberately reads an address outside our RAM to
                // provoke a synchronous data abort; `guest_exception` reports
                // it and never returns here. If the read completes it has no
                // effect on our memory.
                let value = unsafe { (addr as *const u32).read_volatile() };
                say!("guest: no abort: read {:#x} from {:#x}", value, addr);
                power_off();
            }
            Action::Count(n) => {
                for i in 1..=n {
                    delay_ms(args.tick_ms);
                    say!("guest: tick {}", i);
                }
            }
        }
        say!("guest: done");
        power_off()
    }

    /// Every EL1 exception ends here (`vectors.S`): reports and powers off.
    #[no_mangle]
    extern "C" fn guest_exception(vector: u64, esr: u64, far: u64, elr: u64) -> ! {
        if is_same_el_data_abort(vector, esr) {
            say!("guest: data abort at FAR={:#x} ESR={:#x}", far, esr);
        } else {
            say!(
                "guest: unexpected exception: vector {} ESR={:#x} FAR={:#x} ELR={:#x}",
                vector,
                esr,
                far,
                elr
            );
        }
        power_off()
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        say!("guest: panic: {}", info);
        power_off()
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("baremetal-guest is an EL1 guest image: build it with guests/baremetal/build.sh");
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    #[test]
    fn args_default() {
        let a = Args::parse("");
        assert_eq!(a.name, "unnamed");
        assert_eq!(a.action, Action::Done);
        assert_eq!(a.tick_ms, DEFAULT_TICK_MS);
    }

    #[test]
    fn args_words() {
        let a = Args::parse("console=ttyAMA0 name=vm2  count=5 tick_ms=20");
        assert_eq!(a.name, "vm2");
        assert_eq!(a.action, Action::Count(5));
        assert_eq!(a.tick_ms, 20);
        assert_eq!(Args::parse("name=x bad_access").action, Action::BadAccess);
        // The last action wins; malformed numbers and unknown words are ignored.
        assert_eq!(Args::parse("count=3 bad_access").action, Action::BadAccess);
        let b = Args::parse("count=x tick_ms=-1 bad_access=1 name=");
        assert_eq!(b.action, Action::Done);
        assert_eq!(b.tick_ms, DEFAULT_TICK_MS);
        assert_eq!(b.name, "unnamed");
    }

    #[test]
    fn data_abort_classification() {
        // EC 0x25, IL, DFSC 0x10 (synchronous external abort).
        assert!(is_same_el_data_abort(4, 0x9600_0010));
        // Data abort from a lower EL (EC 0x24) or on another vector: no.
        assert!(!is_same_el_data_abort(4, 0x9200_0010));
        assert!(!is_same_el_data_abort(5, 0x9600_0010));
        // SVC (EC 0x15).
        assert!(!is_same_el_data_abort(4, 0x5600_0000));
    }

    /// A device tree like the one QEMU's `virt` or the hypervisor gives.
    fn dtb(psci_method: &str, with_stdout: bool) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let cpus = w.begin_node("cpus").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 0).unwrap();
        for i in 0..3u32 {
            let cpu = w.begin_node(&format!("cpu@{i}")).unwrap();
            w.property_string("device_type", "cpu").unwrap();
            w.property_u32("reg", i).unwrap();
            w.end_node(cpu).unwrap();
        }
        w.end_node(cpus).unwrap();
        let mem = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, 0x1000_0000])
            .unwrap();
        w.end_node(mem).unwrap();
        // A decoy PL011 first: stdout-path must win over the first match.
        for base in [0x900_0000u64, 0x901_0000] {
            let uart = w.begin_node(&format!("pl011@{base:x}")).unwrap();
            w.property_string_list(
                "compatible",
                vec!["arm,pl011".into(), "arm,primecell".into()],
            )
            .unwrap();
            w.property_array_u64("reg", &[base, 0x1000]).unwrap();
            w.end_node(uart).unwrap();
        }
        let psci = w.begin_node("psci").unwrap();
        w.property_string("compatible", "arm,psci-1.0").unwrap();
        w.property_string("method", psci_method).unwrap();
        w.end_node(psci).unwrap();
        let chosen = w.begin_node("chosen").unwrap();
        w.property_string("bootargs", "name=vm1 count=2").unwrap();
        if with_stdout {
            w.property_string("stdout-path", "/pl011@9010000").unwrap();
        }
        w.end_node(chosen).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn board_from_fdt() {
        let blob = dtb("hvc", true);
        let fdt = Fdt::new(&blob).unwrap();
        let b = Board::from_fdt(&fdt).unwrap();
        assert_eq!(b.uart, 0x901_0000);
        assert_eq!(b.ram, (0x4000_0000, 0x1000_0000));
        assert_eq!(b.cpus, 3);
        assert_eq!(b.conduit, Conduit::Hvc);
        assert_eq!(b.bootargs, "name=vm1 count=2");
        assert_eq!(b.bad_address(), 0x6000_0000);

        let blob = dtb("smc", false);
        let fdt = Fdt::new(&blob).unwrap();
        let b = Board::from_fdt(&fdt).unwrap();
        assert_eq!(b.uart, 0x900_0000, "first arm,pl011 without stdout-path");
        assert_eq!(b.conduit, Conduit::Smc);
    }

    #[test]
    fn board_needs_uart_and_memory() {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.end_node(root).unwrap();
        let blob = w.finish().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert_eq!(Board::from_fdt(&fdt), Err(BoardError::NoUart));
    }
}
