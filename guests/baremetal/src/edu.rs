//! The DMA attacker's tools: the PCI host bridge in the device tree, ECAM
//! configuration space, BAR placement and QEMU's `edu` DMA engine.
//!
//! The pure parts (device tree, address lists, BAR arithmetic, judging a
//! DMA's result) are compiled on the host too, for their unit tests; the
//! register accesses only for the guest.

use flat_device_tree::Fdt;

/// PCI vendor ID of QEMU's `edu`.
pub const EDU_VENDOR: u16 = 0x1234;
/// PCI device ID of QEMU's `edu`.
pub const EDU_DEVICE: u16 = 0x11e8;
/// Device address of the `edu`'s own DMA buffer. QEMU must never be asked
/// for a buffer-side range outside `[EDU_BUF, EDU_BUF + DMA_LEN)`.
pub const EDU_BUF: u64 = 0x4_0000;
/// Bytes moved by every DMA: the whole `edu` buffer, one page of RAM.
pub const DMA_LEN: usize = 4096;

/// Configuration-space offsets (type 0 header).
pub const CFG_ID: u16 = 0x00;
/// Command (low half) and status (high half).
pub const CFG_COMMAND: u16 = 0x04;
/// BAR0; BAR1 holds its high half when BAR0 is a 64-bit memory BAR.
pub const CFG_BAR0: u16 = 0x10;
/// Command register: Memory Space Enable.
pub const CMD_MEMORY: u32 = 1 << 1;
/// Command register: Bus Master Enable.
pub const CMD_BUS_MASTER: u32 = 1 << 2;
/// Interrupt Line (byte 0) and Interrupt Pin (byte 1, 1 = INTA .. 4 =
/// INTD, 0 = none).
pub const CFG_INTERRUPT: u16 = 0x3c;

/// A generic ECAM host bridge (`pci-host-ecam-generic`) from the device
/// tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// ECAM base: bus 0 device 0 function 0's configuration space.
    pub ecam: u64,
    /// The 32-bit memory window (`ranges` space code 2): CPU base and size.
    pub mmio: Option<(u64, u64)>,
}

impl PciHost {
    /// The first `pci-host-ecam-generic` node, if the device tree has one.
    pub fn from_fdt(fdt: &Fdt<'_>) -> Option<Self> {
        let node = fdt.find_compatible(&["pci-host-ecam-generic"])?;
        let ecam = node.reg().next()?.starting_address as u64;
        let mmio = node
            .ranges()
            .find(|r| (r.child_bus_address_hi >> 24) & 3 == 2 && r.size > 0)
            .map(|r| (r.parent_bus_address as u64, r.size as u64));
        Some(PciHost { ecam, mmio })
    }

    /// Address of a configuration register of bus 0, `device`, function 0.
    pub fn config_address(&self, device: u8, reg: u16) -> u64 {
        self.ecam + (u64::from(device) << 15) + u64::from(reg)
    }
}

/// Parses a hexadecimal number, with or without `0x`.
pub fn parse_hex(s: &str) -> Option<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The addresses of `edu_attack=ADDR[,ADDR...]`, kept as text (no heap);
/// only built from a list that parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets<'a>(&'a str);

impl<'a> Targets<'a> {
    /// A comma-separated list of hexadecimal addresses; empty is allowed
    /// (only the own-memory check then).
    pub fn parse(list: &'a str) -> Option<Self> {
        let targets = Targets(list);
        let all_ok = list.is_empty() || list.split(',').all(|a| parse_hex(a).is_some());
        all_ok.then_some(targets)
    }

    /// The addresses, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + 'a {
        self.0.split(',').filter_map(parse_hex)
    }
}

/// Whether a BAR value is a 64-bit memory BAR.
pub fn bar_is_64(bar: u32) -> bool {
    bar & 1 == 0 && (bar >> 1) & 3 == 2
}

/// The memory address a BAR (and, for a 64-bit BAR, the next one) holds.
pub fn bar_address(lo: u32, hi: u32) -> u64 {
    let base = u64::from(lo & !0xf);
    if bar_is_64(lo) {
        base | u64::from(hi) << 32
    } else {
        base
    }
}

/// A 32-bit memory BAR's size from what it reads after all ones were
/// written to it; None when it decodes nothing.
pub fn bar_size(mask: u32) -> Option<u64> {
    let bits = mask & !0xf;
    (bits != 0).then(|| u64::from(!bits) + 1)
}

/// Where a BAR of `size` bytes (a power of two) goes in `window`: its
/// first naturally aligned place, if it fits.
pub fn place_bar(window: (u64, u64), size: u64) -> Option<u64> {
    let (base, len) = window;
    let at = base.checked_add(size - 1)? & !(size - 1);
    let end = at.checked_add(size)?;
    (end <= base.checked_add(len)?).then_some(at)
}

/// The `i`-th byte of the test pattern `seed`: never all zeros, and
/// different for different seeds.
pub fn pattern(seed: u8, i: usize) -> u8 {
    ((i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8) | 1
}

/// What a DMA read of a foreign address left in the `edu` buffer (read
/// back into our RAM), which held the pattern K before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// K intact: nothing was transferred.
    Intact,
    /// All zeros: what QEMU puts in the buffer when the read is aborted
    /// (an IOMMU fault or no target reads as zero); nothing foreign landed.
    Zeroed,
    /// Anything else: data from the target landed in the buffer.
    Leaked,
}

impl ReadOutcome {
    /// Judges the buffer's contents `got` (read back) against K (`seed`).
    pub fn judge(got: impl Iterator<Item = u8> + Clone, seed: u8) -> Self {
        if got.clone().enumerate().all(|(i, b)| b == pattern(seed, i)) {
            Self::Intact
        } else if got.into_iter().all(|b| b == 0) {
            Self::Zeroed
        } else {
            Self::Leaked
        }
    }

    /// How a read attack's outcome is reported.
    pub fn verdict(self) -> &'static str {
        match self {
            Self::Intact => "blocked",
            Self::Zeroed => "blocked (read as zeros)",
            Self::Leaked => "LEAKED",
        }
    }
}

#[cfg(target_os = "none")]
pub use hw::{
    bar0, config_read, config_write, enable, find_device, host_or_report, BarError, Edu, EduError,
};

#[cfg(target_os = "none")]
mod hw {
    //! Register accesses: ECAM and the `edu`'s BAR0. The MMU is off, so
    //! both are Device memory and our RAM is what DMA sees (IPA = bus
    //! address under the hypervisor, PA on bare QEMU).

    use super::*;
    use crate::{mmio, time};
    use aarch64_cpu::asm::barrier;

    /// `edu` register: identification (low byte 0xed).
    const EDU_ID: u64 = 0x00;
    /// `edu` register: interrupt status (the bits raised and not yet
    /// acknowledged; without MSI the INTx line is asserted while it is not
    /// 0).
    const EDU_INTR_STATUS: u64 = 0x24;
    /// `edu` register: interrupt raise (write: ORs the value into the
    /// interrupt status and signals the interrupt, an MSI when MSI is
    /// enabled).
    const EDU_INTR_RAISE: u64 = 0x60;
    /// `edu` register: interrupt acknowledge (write: clears those status
    /// bits).
    const EDU_INTR_ACK: u64 = 0x64;
    /// `edu` register: DMA source address.
    const EDU_DMA_SRC: u64 = 0x80;
    /// `edu` register: DMA destination address.
    const EDU_DMA_DST: u64 = 0x88;
    /// `edu` register: DMA byte count.
    const EDU_DMA_CNT: u64 = 0x90;
    /// `edu` register: DMA command.
    const EDU_DMA_CMD: u64 = 0x98;
    /// DMA command: start (reads 1 while the transfer runs).
    const DMA_START: u64 = 1 << 0;
    /// DMA command: direction edu buffer -> RAM (0: RAM -> edu buffer).
    const DMA_TO_RAM: u64 = 1 << 1;
    /// How long a DMA may take (QEMU's takes 100 ms of virtual time).
    const DMA_TIMEOUT_MS: u64 = 2000;

    /// Why the `edu` cannot be used.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum EduError {
        /// No `edu` function on bus 0.
        NotFound,
        /// BAR0 is unassigned and there is no window it fits in.
        NoRoom,
        /// BAR0 did not take the address we wrote.
        BarRefused(u64),
        /// The identification register is not the `edu`'s.
        BadId(u32),
        /// A DMA was still running after the timeout; its command register.
        Timeout(u64),
    }

    impl core::fmt::Display for EduError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                Self::NotFound => write!(f, "no edu device (1234:11e8) on bus 0"),
                Self::NoRoom => write!(f, "edu BAR0 is unassigned and fits no 32-bit window"),
                Self::BarRefused(at) => write!(f, "edu BAR0 refused address {at:#x}"),
                Self::BadId(id) => write!(f, "edu ID register reads {id:#x}"),
                Self::Timeout(cmd) => write!(f, "edu DMA timed out (command {cmd:#x})"),
            }
        }
    }

    /// An `edu` function on bus 0 with its BAR0 mapped and bus mastering on.
    pub struct Edu {
        /// Its device number on bus 0.
        pub device: u8,
        /// BAR0's address.
        pub bar0: u64,
        /// Whether we placed BAR0 ourselves (it read as unassigned).
        pub placed: bool,
    }

    /// Reads configuration register `reg` of bus 0, `device`, function 0.
    pub fn config_read(host: &PciHost, device: u8, reg: u16) -> u32 {
        // SAFETY: a 32-bit register in bus 0's ECAM of the host bridge our
        // device tree describes (Device memory, MMU off); a missing
        // function reads as all ones.
        unsafe { mmio::read32(host.config_address(device, reg)) }
    }

    /// Writes configuration register `reg` of bus 0, `device`, function 0.
    pub fn config_write(host: &PciHost, device: u8, reg: u16, value: u32) {
        // SAFETY: as in `config_read`; callers write only the command
        // register and BARs of a function they found, which touches no
        // memory of ours.
        unsafe { mmio::write32(host.config_address(device, reg), value) }
    }

    /// The device tree's host bridge; without one, a failed check `ran`
    /// says so.
    pub fn host_or_report(fdt: &Fdt<'_>, ran: &str) -> Option<PciHost> {
        let host = PciHost::from_fdt(fdt);
        if host.is_none() {
            crate::checks::check(
                ran,
                false,
                "no PCI host bridge (pci-host-ecam-generic) in the device tree",
            );
        }
        host
    }

    /// The first device on bus 0 (function 0) with this vendor and device
    /// ID.
    pub fn find_device(host: &PciHost, vendor: u16, device: u16) -> Option<u8> {
        let id = u32::from(device) << 16 | u32::from(vendor);
        (0..32u8).find(|&d| config_read(host, d, CFG_ID) == id)
    }

    /// Why a function's BAR0 cannot be used.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum BarError {
        /// BAR0 is unassigned and there is no window it fits in.
        NoRoom,
        /// BAR0 did not take the address we wrote.
        Refused(u64),
    }

    /// BAR0 of bus 0 `device` (function 0): its address and whether we
    /// placed it. An unassigned BAR0 (bare QEMU has no firmware to place
    /// it; under the hypervisor it is placed and never moved) goes at the
    /// first aligned place in the 32-bit window, checked to have taken it.
    pub fn bar0(host: &PciHost, device: u8) -> Result<(u64, bool), BarError> {
        let lo = config_read(host, device, CFG_BAR0);
        let hi = if bar_is_64(lo) {
            config_read(host, device, CFG_BAR0 + 4)
        } else {
            0
        };
        let at = bar_address(lo, hi);
        if at != 0 {
            return Ok((at, false));
        }
        config_write(host, device, CFG_BAR0, u32::MAX);
        let mask = config_read(host, device, CFG_BAR0);
        let at = bar_size(mask)
            .zip(host.mmio)
            .and_then(|(size, window)| place_bar(window, size))
            .filter(|&at| at >> 32 == 0);
        let Some(at) = at else {
            config_write(host, device, CFG_BAR0, lo);
            return Err(BarError::NoRoom);
        };
        config_write(host, device, CFG_BAR0, at as u32);
        if bar_is_64(lo) {
            config_write(host, device, CFG_BAR0 + 4, 0);
        }
        let now = config_read(host, device, CFG_BAR0);
        if bar_address(now, 0) != at {
            return Err(BarError::Refused(at));
        }
        Ok((at, true))
    }

    /// Turns on memory decoding and bus mastering of bus 0 `device`, with
    /// the `extra` command bits.
    pub fn enable(host: &PciHost, device: u8, extra: u32) {
        let cmd = config_read(host, device, CFG_COMMAND) & 0xffff;
        // Status (the high half) is write-one-to-clear: write zeros there.
        config_write(
            host,
            device,
            CFG_COMMAND,
            cmd | CMD_MEMORY | CMD_BUS_MASTER | extra,
        );
    }

    impl Edu {
        /// Finds the first `edu` on bus 0 (devices 0..32, function 0),
        /// places BAR0 at the start of the 32-bit window if it is
        /// unassigned (bare QEMU has no firmware to do it; under the
        /// hypervisor it is placed and never moved), enables memory decoding
        /// and bus mastering, and checks the ID register.
        pub fn probe(host: &PciHost) -> Result<Self, EduError> {
            let device = find_device(host, EDU_VENDOR, EDU_DEVICE).ok_or(EduError::NotFound)?;
            let (bar0, placed) = bar0(host, device).map_err(|e| match e {
                BarError::NoRoom => EduError::NoRoom,
                BarError::Refused(at) => EduError::BarRefused(at),
            })?;
            enable(host, device, 0);
            let edu = Edu {
                device,
                bar0,
                placed,
            };
            let id = edu.read32(EDU_ID);
            if id & 0xff != 0xed {
                return Err(EduError::BadId(id));
            }
            Ok(edu)
        }

        fn read32(&self, reg: u64) -> u32 {
            // SAFETY: `reg` is a register of the `edu`'s 1 MiB BAR0, which
            // decodes memory (enabled in `probe`); Device memory.
            unsafe { mmio::read32(self.bar0 + reg) }
        }

        /// Raises interrupt status bits `bits`: the INTx line is asserted
        /// (MSI stays off, so the line is how it signals).
        pub fn raise_irq(&self, bits: u32) {
            self.write32(EDU_INTR_RAISE, bits);
        }

        /// Acknowledges status bits `bits`: the line is let go once none is
        /// left. The status read back makes sure the write has reached the
        /// device.
        pub fn ack_irq(&self, bits: u32) {
            self.write32(EDU_INTR_ACK, bits);
            let _ = self.read32(EDU_INTR_STATUS);
        }

        fn read64(&self, reg: u64) -> u64 {
            // SAFETY: as in `read32`; the DMA registers take 64-bit accesses.
            unsafe { mmio::read64(self.bar0 + reg) }
        }

        fn write64(&self, reg: u64, value: u64) {
            // SAFETY: as in `read64`.
            unsafe { mmio::write64(self.bar0 + reg, value) }
        }

        fn write32(&self, reg: u64, value: u32) {
            // SAFETY: as in `read32`.
            unsafe { mmio::write32(self.bar0 + reg, value) }
        }

        /// Makes the device signal its interrupt (status bit 0), then
        /// acknowledges it: with MSI enabled, one message per call.
        pub fn signal(&self) {
            barrier::dsb(barrier::SY);
            self.write32(EDU_INTR_RAISE, 1);
            self.write32(EDU_INTR_ACK, 1);
        }

        /// Runs one DMA of `len` bytes (at most `DMA_LEN`) from bus address
        /// `src` to `dst` (`cmd` gives the direction; one side is the `edu`
        /// buffer) and waits until the start bit clears.
        fn dma(&self, src: u64, dst: u64, len: usize, cmd: u64) -> Result<(), EduError> {
            // Our stores to the source page before the device reads it.
            barrier::dsb(barrier::SY);
            self.write64(EDU_DMA_SRC, src);
            self.write64(EDU_DMA_DST, dst);
            self.write64(EDU_DMA_CNT, len.min(DMA_LEN) as u64);
            self.write64(EDU_DMA_CMD, cmd | DMA_START);
            let timeout = time::ms_to_ticks(DMA_TIMEOUT_MS);
            let start = time::now();
            loop {
                let now = self.read64(EDU_DMA_CMD);
                if now & DMA_START == 0 {
                    barrier::dsb(barrier::SY);
                    return Ok(());
                }
                if time::now().wrapping_sub(start) > timeout {
                    return Err(EduError::Timeout(now));
                }
                core::hint::spin_loop();
            }
        }

        /// DMA from bus address `from` into the whole `edu` buffer.
        pub fn dma_into_buffer(&self, from: u64) -> Result<(), EduError> {
            self.dma(from, EDU_BUF, DMA_LEN, 0)
        }

        /// DMA from the whole `edu` buffer to bus address `to`.
        pub fn dma_from_buffer(&self, to: u64) -> Result<(), EduError> {
            self.dma(EDU_BUF, to, DMA_LEN, DMA_TO_RAM)
        }

        /// Starts a DMA of the whole `edu` buffer to bus address `to` and
        /// returns without waiting: the device writes `to` about 100 ms
        /// later (QEMU's `edu` runs a transfer on a timer).
        pub fn start_dma_from_buffer(&self, to: u64) {
            barrier::dsb(barrier::SY);
            self.write64(EDU_DMA_SRC, EDU_BUF);
            self.write64(EDU_DMA_DST, to);
            self.write64(EDU_DMA_CNT, DMA_LEN as u64);
            self.write64(EDU_DMA_CMD, DMA_TO_RAM | DMA_START);
        }

        /// DMA of the buffer's first 4 bytes to bus address `to`: one
        /// 32-bit write by the device, the shape of an MSI.
        pub fn dma_word_from_buffer(&self, to: u64) -> Result<(), EduError> {
            self.dma(EDU_BUF, to, 4, DMA_TO_RAM)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    /// A host bridge node as QEMU's `virt` writes it (I/O, 32-bit and
    /// 64-bit windows), or with the 32-bit window only.
    fn dtb(qemu_like: bool) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let pci = w.begin_node("pcie@4010000000").unwrap();
        w.property_string("compatible", "pci-host-ecam-generic")
            .unwrap();
        w.property_u32("#address-cells", 3).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_array_u64("reg", &[0x40_1000_0000, 0x1000_0000])
            .unwrap();
        let mut ranges = vec![];
        if qemu_like {
            ranges.extend([0x0100_0000, 0, 0, 0, 0x3eff_0000, 0, 0x1_0000]);
        }
        ranges.extend([0x0200_0000, 0, 0x1000_0000, 0, 0x1000_0000, 0, 0x2eff_0000]);
        if qemu_like {
            ranges.extend([0x0300_0000, 0x80, 0, 0x80, 0, 0x80, 0]);
        }
        w.property_array_u32("ranges", &ranges).unwrap();
        w.end_node(pci).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn host_bridge_from_fdt() {
        for qemu_like in [true, false] {
            let blob = dtb(qemu_like);
            let fdt = Fdt::new(&blob).unwrap();
            let host = PciHost::from_fdt(&fdt).unwrap();
            assert_eq!(host.ecam, 0x40_1000_0000);
            assert_eq!(host.mmio, Some((0x1000_0000, 0x2eff_0000)));
            assert_eq!(host.config_address(0, CFG_ID), 0x40_1000_0000);
            assert_eq!(
                host.config_address(31, CFG_BAR0),
                0x40_1000_0000 + (31 << 15) + 0x10
            );
        }
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.end_node(root).unwrap();
        let blob = w.finish().unwrap();
        assert_eq!(PciHost::from_fdt(&Fdt::new(&blob).unwrap()), None);
    }

    #[test]
    fn targets() {
        assert_eq!(parse_hex("0x90000000"), Some(0x9000_0000));
        assert_eq!(parse_hex("8000000"), Some(0x800_0000));
        assert_eq!(parse_hex("0XfF"), Some(0xff));
        assert_eq!(parse_hex("0x"), None);
        assert_eq!(parse_hex("0xg"), None);
        assert_eq!(Targets::parse("0x90000000,0x40_0000"), None);
        let t = Targets::parse("0x90000000,8000000").unwrap();
        assert_eq!(t.iter().collect::<Vec<_>>(), [0x9000_0000, 0x800_0000]);
        assert_eq!(Targets::parse("").unwrap().iter().count(), 0);
        assert_eq!(Targets::parse("0x1,,0x2"), None);
    }

    #[test]
    fn bars() {
        // edu: 32-bit non-prefetchable memory BAR of 1 MiB.
        assert!(!bar_is_64(0));
        assert!(bar_is_64(0x4));
        assert!(!bar_is_64(0x5), "an I/O BAR");
        assert_eq!(bar_address(0x1000_0000, 0xdead), 0x1000_0000);
        assert_eq!(bar_address(0x1000_000c, 0x80), 0x80_1000_0000);
        assert_eq!(bar_size(0xfff0_0000), Some(1 << 20));
        assert_eq!(bar_size(0xfff0_0008), Some(1 << 20));
        assert_eq!(bar_size(0), None);
        let window = (0x1000_0000, 0x2eff_0000);
        assert_eq!(place_bar(window, 1 << 20), Some(0x1000_0000));
        assert_eq!(
            place_bar((0x1000_1000, 0x20_0000), 1 << 20),
            Some(0x1010_0000)
        );
        assert_eq!(place_bar((0x1000_1000, 0x10_0000), 1 << 20), None);
        assert_eq!(place_bar((u64::MAX - 0xfff, 0x1000), 1 << 20), None);
    }

    #[test]
    fn judging_a_read() {
        let k: Vec<u8> = (0..DMA_LEN).map(|i| pattern(0x4b, i)).collect();
        assert!(k.iter().all(|&b| b != 0));
        assert_ne!(
            k,
            (0..DMA_LEN).map(|i| pattern(0x50, i)).collect::<Vec<_>>()
        );
        assert_eq!(
            ReadOutcome::judge(k.iter().copied(), 0x4b),
            ReadOutcome::Intact
        );
        let zeros = [0u8; DMA_LEN];
        assert_eq!(
            ReadOutcome::judge(zeros.iter().copied(), 0x4b),
            ReadOutcome::Zeroed
        );
        let mut leak = k.clone();
        leak[100] ^= 0x80;
        assert_eq!(
            ReadOutcome::judge(leak.iter().copied(), 0x4b),
            ReadOutcome::Leaked
        );
        assert_eq!(
            ReadOutcome::judge(k.iter().copied(), 0x50),
            ReadOutcome::Leaked
        );
    }
}
