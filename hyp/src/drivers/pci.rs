//! PCI enumeration and BAR assignment on an ECAM host bridge.
//!
//! The hypervisor owns PCI configuration: it sizes every BAR, places it in a
//! host bridge window from the DTB, and enables memory decoding. Bus
//! mastering stays off until a function is given to someone, so nothing can
//! DMA before the SMMU says where it may go.

use crate::platform::{PciHost, PciWindow, WindowKind};
use alloc::vec::Vec;
use core::fmt;

/// Bus/device/function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

impl Bdf {
    /// The PCI requester ID.
    pub fn rid(self) -> u16 {
        (u16::from(self.bus) << 8) | (u16::from(self.dev) << 3) | u16::from(self.func)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

/// Configuration space access.
pub trait ConfigAccess {
    /// Reads the aligned dword at `offset` of `bdf`'s configuration space.
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    /// Writes the aligned dword at `offset`.
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);
}

impl<T: ConfigAccess + ?Sized> ConfigAccess for &T {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        (**self).read32(bdf, offset)
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        (**self).write32(bdf, offset, value)
    }
}

/// Configuration header offsets (PCI Local Bus 3.0, §6.1).
pub mod reg {
    /// Vendor ID (15:0), Device ID (31:16).
    pub const ID: u16 = 0x00;
    /// Command (15:0), Status (31:16).
    pub const COMMAND: u16 = 0x04;
    /// Revision (7:0), class code (31:8).
    pub const CLASS: u16 = 0x08;
    /// Header type in bits 23:16.
    pub const HEADER: u16 = 0x0c;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Capabilities Pointer in bits 7:0 (§6.7).
    pub const CAP_PTR: u16 = 0x34;
    /// First byte after the predefined header: capabilities live from here
    /// to the end of the PCI-compatible space (§6.7).
    pub const CAP_FIRST: u16 = 0x40;
    /// Status (the high half of `COMMAND`): Capabilities List, bit 4.
    pub const STATUS_CAP_LIST: u32 = 1 << 4;
    /// Capability ID of MSI (§6.8.1).
    pub const CAP_ID_MSI: u8 = 0x05;
    /// Capability ID of MSI-X (§6.8.2).
    pub const CAP_ID_MSIX: u8 = 0x11;
    /// Command: memory space enable.
    pub const CMD_MEM: u32 = 1 << 1;
    /// Command: bus master enable.
    pub const CMD_MASTER: u32 = 1 << 2;
}

/// Kind of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (occupies two BAR slots).
    Mem64,
    /// I/O space (not assigned: the hypervisor gives out no I/O ports).
    Io,
}

/// A sized (and, for memory BARs, placed) BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR slot 0..6.
    pub index: u8,
    /// Its kind.
    pub kind: BarKind,
    /// Prefetchable.
    pub prefetchable: bool,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// CPU physical address it was placed at (None: not placed).
    pub cpu_addr: Option<u64>,
}

/// An endpoint found on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base, sub, prog-if).
    pub class: u32,
    /// Memory and I/O BARs.
    pub bars: Vec<Bar>,
}

impl Function {
    /// Whether this is QEMU's `edu` device.
    pub fn is_edu(&self) -> bool {
        self.vendor == 0x1234 && self.device == 0x11e8
    }
}

/// The capabilities of `bdf` as (offset, Capability ID), in list order,
/// walked as an OS walks them (§6.7): only if Status says there is a list,
/// pointers masked to dwords, ending at a pointer below 0x40, at an ID of
/// 0xff (nothing answers there) or at a pointer already visited, so that a
/// looping list ends. At most 48 capabilities (the dwords of 0x40..0x100).
pub fn capabilities(cfg: &dyn ConfigAccess, bdf: Bdf) -> Vec<(u8, u8)> {
    let mut found: Vec<(u8, u8)> = Vec::new();
    let status = cfg.read32(bdf, reg::COMMAND) >> 16;
    let mut next = if status & reg::STATUS_CAP_LIST == 0 {
        0
    } else {
        cfg.read32(bdf, reg::CAP_PTR) as u8 & 0xfc
    };
    while u16::from(next) >= reg::CAP_FIRST && found.iter().all(|&(at, _)| at != next) {
        let header = cfg.read32(bdf, u16::from(next));
        if header as u8 == 0xff {
            break;
        }
        found.push((next, header as u8));
        next = (header >> 8) as u8 & 0xfc;
    }
    found
}

/// How a function signals interrupts by message (PCI Local Bus 3.0 §6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageSignalled {
    /// MSI-X with this many table entries (Message Control Table Size
    /// \[10:0\] + 1, §6.8.2.3).
    MsiX(u32),
    /// MSI with this many vectors (2^Multiple Message Capable, Message
    /// Control \[3:1\], §6.8.1.3; the reserved encodings 6 and 7 read as
    /// the largest defined, 32).
    Msi(u32),
}

impl MessageSignalled {
    /// Events the function's DeviceID needs in the ITS: one per MSI-X
    /// table entry or MSI vector.
    pub fn events(self) -> u32 {
        match self {
            Self::MsiX(n) | Self::Msi(n) => n,
        }
    }
}

/// What `bdf` can signal by message: MSI-X if it has the capability (an
/// OS prefers it), else MSI, else `None` (INTx only).
pub fn message_signalled(cfg: &dyn ConfigAccess, bdf: Bdf) -> Option<MessageSignalled> {
    let caps = capabilities(cfg, bdf);
    let control = |id: u8| {
        caps.iter()
            .find(|&&(_, cap)| cap == id)
            .map(|&(at, _)| cfg.read32(bdf, u16::from(at)) >> 16)
    };
    if let Some(c) = control(reg::CAP_ID_MSIX) {
        return Some(MessageSignalled::MsiX((c & 0x7ff) + 1));
    }
    control(reg::CAP_ID_MSI).map(|c| MessageSignalled::Msi(1 << ((c >> 1) & 7).min(5)))
}

/// The dwords of an MSI capability (§6.8.1), from its offset.
pub mod msi_cap {
    /// Message Control in bits 31:16 of the capability's first dword:
    /// MSI Enable (bit 0).
    pub const ENABLE: u32 = 1 << 16;
    /// Message Control: Multiple Message Enable (bits 6:4).
    pub const MME: u32 = 0x7 << 20;
    /// Message Control: 64 bit address capable (bit 7).
    pub const ADDR64: u32 = 1 << 23;
    /// Message Address (bits 31:2).
    pub const ADDRESS: u16 = 0x4;
    /// Message Upper Address, with a 64-bit address.
    pub const ADDRESS_HI: u16 = 0x8;
}

/// Makes `bdf` signal its first MSI vector by writing `data` to `address`
/// (Multiple Message Enable 0: one vector) and enables MSI, or disables it
/// (`None`). False, and nothing written, when the function has no MSI
/// capability or `address` does not fit its address width.
pub fn set_msi(cfg: &dyn ConfigAccess, bdf: Bdf, message: Option<(u64, u16)>) -> bool {
    let Some((at, _)) = capabilities(cfg, bdf)
        .into_iter()
        .find(|&(_, id)| id == reg::CAP_ID_MSI)
    else {
        return false;
    };
    let at = u16::from(at);
    let control = cfg.read32(bdf, at);
    let wide = control & msi_cap::ADDR64 != 0;
    let Some((address, data)) = message else {
        cfg.write32(bdf, at, control & !msi_cap::ENABLE);
        return true;
    };
    if !wide && address >> 32 != 0 {
        return false;
    }
    cfg.write32(bdf, at, control & !(msi_cap::ENABLE | msi_cap::MME));
    cfg.write32(bdf, at + msi_cap::ADDRESS, address as u32 & !3);
    let data_at = if wide {
        cfg.write32(bdf, at + msi_cap::ADDRESS_HI, (address >> 32) as u32);
        at + 0xc
    } else {
        at + 0x8
    };
    cfg.write32(bdf, data_at, u32::from(data));
    cfg.write32(bdf, at, (control & !msi_cap::MME) | msi_cap::ENABLE);
    true
}

/// Why enumeration stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PciError {
    /// No window can hold a BAR.
    NoSpace {
        /// The function.
        bdf: Bdf,
        /// The BAR slot.
        index: u8,
        /// Its size.
        size: u64,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSpace { bdf, index, size } => write!(
                f,
                "{bdf}: BAR{index} of {size:#x} bytes does not fit in any host bridge window"
            ),
        }
    }
}

/// Bump allocator over one host bridge window.
struct WindowAlloc {
    window: PciWindow,
    next: u64,
}

impl WindowAlloc {
    fn alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        let start = self.next.checked_add(size - 1)? & !(size - 1);
        let end = start.checked_add(size)?;
        if end > self.window.pci_base + self.window.size {
            return None;
        }
        self.next = end;
        Some((start, start - self.window.pci_base + self.window.cpu_base))
    }
}

/// Sizes one BAR slot; returns the BAR and how many slots it uses.
fn size_bar(cfg: &dyn ConfigAccess, bdf: Bdf, index: u8) -> (Option<Bar>, u8) {
    let off = reg::BAR0 + u16::from(index) * 4;
    let orig = cfg.read32(bdf, off);
    cfg.write32(bdf, off, 0xffff_ffff);
    let lo = cfg.read32(bdf, off);
    cfg.write32(bdf, off, orig);
    if lo == 0 {
        return (None, 1);
    }
    if lo & 1 == 1 {
        let size = u64::from(!(lo & !0x3) & 0xffff) + 1;
        let bar = Bar {
            index,
            kind: BarKind::Io,
            prefetchable: false,
            size,
            cpu_addr: None,
        };
        return (Some(bar), 1);
    }
    let prefetchable = lo & 0x8 != 0;
    if (lo >> 1) & 3 == 2 && index < 5 {
        let orig_hi = cfg.read32(bdf, off + 4);
        cfg.write32(bdf, off + 4, 0xffff_ffff);
        let hi = cfg.read32(bdf, off + 4);
        cfg.write32(bdf, off + 4, orig_hi);
        let mask = (u64::from(hi) << 32) | u64::from(lo & !0xf);
        let size = (!mask).wrapping_add(1);
        let bar = Bar {
            index,
            kind: BarKind::Mem64,
            prefetchable,
            size,
            cpu_addr: None,
        };
        (Some(bar), 2)
    } else {
        let size = u64::from((!(lo & !0xf)).wrapping_add(1));
        let bar = Bar {
            index,
            kind: BarKind::Mem32,
            prefetchable,
            size,
            cpu_addr: None,
        };
        (Some(bar), 1)
    }
}

/// Enumerates the first bus of `host`, sizes and places every memory BAR,
/// enables memory decoding, and leaves bus mastering off.
pub fn enumerate(cfg: &dyn ConfigAccess, host: &PciHost) -> Result<Vec<Function>, PciError> {
    let mut windows: Vec<WindowAlloc> = host
        .windows
        .iter()
        .filter(|w| w.kind != WindowKind::Io)
        .map(|w| WindowAlloc {
            window: w.clone(),
            next: w.pci_base,
        })
        .collect();
    // Prefer 64-bit windows for 64-bit BARs, keep the scarce 32-bit space.
    windows.sort_by_key(|w| w.window.kind != WindowKind::Mem64);

    let bus = host.bus_range.0;
    let mut found = Vec::new();
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let bdf = Bdf { bus, dev, func };
            let id = cfg.read32(bdf, reg::ID);
            if id & 0xffff == 0xffff {
                if func == 0 {
                    break;
                }
                continue;
            }
            let header = cfg.read32(bdf, reg::HEADER) >> 16;
            let mut function = Function {
                bdf,
                vendor: id as u16,
                device: (id >> 16) as u16,
                class: cfg.read32(bdf, reg::CLASS) >> 8,
                bars: Vec::new(),
            };
            // Type 0 (endpoint) headers have 6 BARs, bridges 2; the host
            // bridge function itself usually has none.
            let slots = if header & 0x7f == 0 { 6 } else { 2 };
            let cmd = cfg.read32(bdf, reg::COMMAND);
            cfg.write32(
                bdf,
                reg::COMMAND,
                cmd & !(reg::CMD_MEM | reg::CMD_MASTER) & 0xffff,
            );
            let mut index = 0;
            while index < slots {
                let (bar, used) = size_bar(cfg, bdf, index);
                if let Some(mut bar) = bar {
                    if bar.kind != BarKind::Io {
                        let placed = windows
                            .iter_mut()
                            .filter(|w| {
                                bar.kind == BarKind::Mem64 || w.window.kind == WindowKind::Mem32
                            })
                            .find_map(|w| w.alloc(bar.size));
                        let (pci_addr, cpu_addr) = placed.ok_or(PciError::NoSpace {
                            bdf,
                            index,
                            size: bar.size,
                        })?;
                        let off = reg::BAR0 + u16::from(index) * 4;
                        cfg.write32(bdf, off, pci_addr as u32);
                        if bar.kind == BarKind::Mem64 {
                            cfg.write32(bdf, off + 4, (pci_addr >> 32) as u32);
                        }
                        bar.cpu_addr = Some(cpu_addr);
                    }
                    function.bars.push(bar);
                }
                index += used;
            }
            let mem = if function.bars.iter().any(|b| b.cpu_addr.is_some()) {
                reg::CMD_MEM
            } else {
                0
            };
            cfg.write32(
                bdf,
                reg::COMMAND,
                (cmd & !(reg::CMD_MEM | reg::CMD_MASTER) & 0xffff) | mem,
            );
            found.push(function);
            if func == 0 && header & 0x80 == 0 {
                break;
            }
        }
    }
    Ok(found)
}

/// ECAM configuration access at an identity-mapped address.
pub struct Ecam {
    base: usize,
    first_bus: u8,
    buses: usize,
}

impl Ecam {
    /// # Safety
    ///
    /// `[base, base + size)` is the ECAM region of the host bridge whose first
    /// bus is `first_bus`, mapped as device memory for the hypervisor's life.
    pub unsafe fn new(base: u64, size: u64, first_bus: u8) -> Self {
        Self {
            base: base as usize,
            first_bus,
            buses: (size >> 20) as usize,
        }
    }

    fn addr(&self, bdf: Bdf, offset: u16) -> Option<*mut u32> {
        let bus = usize::from(bdf.bus.checked_sub(self.first_bus)?);
        (bus < self.buses && offset < 4096 && offset.is_multiple_of(4)).then(|| {
            (self.base
                + (bus << 20)
                + (usize::from(bdf.dev & 31) << 15)
                + (usize::from(bdf.func & 7) << 12)
                + usize::from(offset)) as *mut u32
        })
    }
}

impl ConfigAccess for Ecam {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.addr(bdf, offset) {
            // SAFETY: inside the ECAM region (checked by `addr`), mapped as
            // device memory per `Ecam::new`'s contract.
            Some(p) => unsafe { p.read_volatile() },
            None => 0xffff_ffff,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(p) = self.addr(bdf, offset) {
            // SAFETY: as in `read32`.
            unsafe { p.write_volatile(value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Region;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A config space with BARs that model sizing (writable bits only).
    struct FakeBus {
        space: RefCell<BTreeMap<(Bdf, u16), u32>>,
        /// (bdf, offset) -> writable mask of a BAR dword.
        masks: BTreeMap<(Bdf, u16), u32>,
    }

    impl FakeBus {
        fn new() -> Self {
            Self {
                space: RefCell::new(BTreeMap::new()),
                masks: BTreeMap::new(),
            }
        }
        fn add(&mut self, bdf: Bdf, id: u32, header: u32, bars: &[(u16, u32, u32)]) {
            let mut s = self.space.borrow_mut();
            s.insert((bdf, reg::ID), id);
            s.insert((bdf, reg::HEADER), header << 16);
            s.insert((bdf, reg::COMMAND), 0);
            for &(off, mask, flags) in bars {
                s.insert((bdf, off), flags);
                self.masks.insert((bdf, off), mask);
            }
        }
    }

    impl ConfigAccess for FakeBus {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            *self
                .space
                .borrow()
                .get(&(bdf, offset))
                .unwrap_or(if offset == reg::ID { &0xffff_ffff } else { &0 })
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            let mut s = self.space.borrow_mut();
            if let Some(&mask) = self.masks.get(&(bdf, offset)) {
                let flags = s.get(&(bdf, offset)).copied().unwrap_or(0) & !mask;
                s.insert((bdf, offset), (value & mask) | flags);
            } else if s.contains_key(&(bdf, offset)) && offset == reg::COMMAND {
                s.insert((bdf, offset), value);
            }
        }
    }

    fn host() -> PciHost {
        PciHost {
            ecam: Region {
                base: 0x40_1000_0000,
                size: 0x1000_0000,
            },
            bus_range: (0, 0xff),
            windows: vec![
                PciWindow {
                    kind: WindowKind::Io,
                    prefetchable: false,
                    pci_base: 0,
                    cpu_base: 0x3eff_0000,
                    size: 0x1_0000,
                },
                PciWindow {
                    kind: WindowKind::Mem32,
                    prefetchable: false,
                    pci_base: 0x1000_0000,
                    cpu_base: 0x1000_0000,
                    size: 0x2eff_0000,
                },
                PciWindow {
                    kind: WindowKind::Mem64,
                    prefetchable: false,
                    pci_base: 0x80_0000_0000,
                    cpu_base: 0x80_0000_0000,
                    size: 0x80_0000_0000,
                },
            ],
            iommu_map: vec![],
            msi_map: vec![],
            intx: vec![],
            intx_dev_mask: 0x1f,
        }
    }

    #[test]
    fn places_bars_aligned_in_windows_with_mastering_off() {
        let mut bus = FakeBus::new();
        let host_bridge = Bdf {
            bus: 0,
            dev: 0,
            func: 0,
        };
        let edu = Bdf {
            bus: 0,
            dev: 1,
            func: 0,
        };
        let nvme = Bdf {
            bus: 0,
            dev: 2,
            func: 0,
        };
        bus.add(host_bridge, 0x0008_1b36, 0, &[]);
        // edu: BAR0 1 MiB 32-bit.
        bus.add(edu, 0x11e8_1234, 0, &[(0x10, 0xfff0_0000, 0)]);
        // nvme: BAR0 16 KiB 64-bit (0x10/0x14), BAR4 I/O 256 bytes.
        bus.add(
            nvme,
            0x0010_1b36,
            0,
            &[
                (0x10, 0xffff_c000, 0x4),
                (0x14, 0xffff_ffff, 0),
                (0x20, 0xffff_ff00, 1),
            ],
        );
        bus.space
            .borrow_mut()
            .insert((nvme, reg::COMMAND), reg::CMD_MASTER);

        let fns = enumerate(&bus, &host()).unwrap();
        assert_eq!(fns.len(), 3);
        let e = &fns[1];
        assert!(e.is_edu());
        assert_eq!(e.bars.len(), 1);
        let a = e.bars[0].cpu_addr.unwrap();
        assert_eq!(a % 0x10_0000, 0);
        assert!((0x1000_0000..0x3eff_0000).contains(&a));
        assert_eq!(u64::from(bus.read32(edu, 0x10)), a);

        let n = &fns[2];
        assert_eq!(n.bars[0].kind, BarKind::Mem64);
        assert_eq!(n.bars[0].size, 0x4000);
        let a64 = n.bars[0].cpu_addr.unwrap();
        assert!(
            a64 >= 0x80_0000_0000,
            "64-bit BAR goes to the 64-bit window"
        );
        assert_eq!(n.bars[1].kind, BarKind::Io);
        assert_eq!(n.bars[1].cpu_addr, None);
        let cmd = bus.read32(nvme, reg::COMMAND);
        assert_eq!(cmd & reg::CMD_MASTER, 0, "bus mastering is turned off");
        assert_ne!(cmd & reg::CMD_MEM, 0);
    }

    #[test]
    fn bar_too_big_is_an_error() {
        let mut bus = FakeBus::new();
        let d = Bdf {
            bus: 0,
            dev: 3,
            func: 0,
        };
        bus.add(d, 0x1234_5678, 0, &[(0x10, 0x8000_0000, 0)]);
        let mut h = host();
        h.windows.retain(|w| w.kind == WindowKind::Mem32);
        assert_eq!(
            enumerate(&bus, &h),
            Err(PciError::NoSpace {
                bdf: d,
                index: 0,
                size: 0x8000_0000
            })
        );
    }

    /// A function with the capability list `caps` ((offset, dword)), the
    /// first at `first`, Status saying there is a list.
    fn with_caps(first: u8, caps: &[(u16, u32)]) -> (FakeBus, Bdf) {
        let mut bus = FakeBus::new();
        let bdf = Bdf {
            bus: 0,
            dev: 4,
            func: 0,
        };
        bus.add(bdf, 0x11e8_1234, 0, &[]);
        let mut s = bus.space.borrow_mut();
        s.insert((bdf, reg::COMMAND), reg::STATUS_CAP_LIST << 16);
        s.insert((bdf, reg::CAP_PTR), u32::from(first));
        for &(at, dword) in caps {
            s.insert((bdf, at), dword);
        }
        drop(s);
        (bus, bdf)
    }

    /// A capability header: ID, next pointer, Message Control.
    fn cap(id: u8, next: u8, control: u16) -> u32 {
        (u32::from(control) << 16) | (u32::from(next) << 8) | u32::from(id)
    }

    #[test]
    fn msix_table_size_wins_over_msi() {
        // PM -> MSI (4 vectors) -> MSI-X (Table Size 63: 64 entries).
        let (bus, bdf) = with_caps(
            0x40,
            &[
                (0x40, cap(0x01, 0x50, 0)),
                (0x50, cap(reg::CAP_ID_MSI, 0x70, 2 << 1)),
                (0x70, cap(reg::CAP_ID_MSIX, 0, 0x8000 | 63)),
            ],
        );
        assert_eq!(
            capabilities(&bus, bdf),
            [
                (0x40, 0x01),
                (0x50, reg::CAP_ID_MSI),
                (0x70, reg::CAP_ID_MSIX)
            ]
        );
        let m = message_signalled(&bus, bdf);
        assert_eq!(m, Some(MessageSignalled::MsiX(64)));
        assert_eq!(m.map(MessageSignalled::events), Some(64));
    }

    #[test]
    fn msi_vectors_from_multiple_message_capable() {
        for (mmc, vectors) in [(0, 1), (1, 2), (3, 8), (5, 32), (6, 32), (7, 32)] {
            // Enable and Multiple Message Enable set too: they do not count.
            let control = (mmc << 1) | (2 << 4) | 1 | (1 << 7);
            let (bus, bdf) = with_caps(0x48, &[(0x48, cap(reg::CAP_ID_MSI, 0, control))]);
            assert_eq!(
                message_signalled(&bus, bdf),
                Some(MessageSignalled::Msi(vectors)),
                "MMC {mmc}"
            );
        }
    }

    #[test]
    fn capability_walk_ends_on_loops_bad_pointers_and_no_list() {
        // A list that points back at itself ends after one visit; the
        // pointer's low two bits are reserved and ignored.
        let (bus, bdf) = with_caps(0x43, &[(0x40, cap(reg::CAP_ID_MSIX, 0x41, 7))]);
        assert_eq!(capabilities(&bus, bdf), [(0x40, reg::CAP_ID_MSIX)]);
        assert_eq!(
            message_signalled(&bus, bdf),
            Some(MessageSignalled::MsiX(8))
        );
        // A pointer into the header, or an ID of 0xff, ends the list.
        let (bus, bdf) = with_caps(0x40, &[(0x40, cap(0x10, 0x3c, 0))]);
        assert_eq!(capabilities(&bus, bdf), [(0x40, 0x10)]);
        assert_eq!(message_signalled(&bus, bdf), None);
        let (bus, bdf) = with_caps(0x40, &[(0x40, 0xffff_ffff)]);
        assert_eq!(capabilities(&bus, bdf), []);
        // Without Status.Capabilities List there is no list to walk.
        let (bus, bdf) = with_caps(0x40, &[(0x40, cap(reg::CAP_ID_MSI, 0, 0))]);
        bus.space.borrow_mut().insert((bdf, reg::COMMAND), 0);
        assert_eq!(message_signalled(&bus, bdf), None);
    }

    #[test]
    fn msi_is_programmed_then_enabled_and_disabled() {
        // edu's capability: 64-bit, one vector (MMC 0), at 0x40.
        let (mut bus, bdf) = with_caps(0x40, &[]);
        let control = cap(reg::CAP_ID_MSI, 0, 1 << 7);
        bus.masks.insert((bdf, 0x40), 0x0071_0000);
        for (at, dword) in [(0x40, control), (0x44, 0), (0x48, 0), (0x4c, 0)] {
            bus.space.borrow_mut().insert((bdf, at), dword);
            bus.masks.entry((bdf, at)).or_insert(u32::MAX);
        }
        assert!(set_msi(&bus, bdf, Some((0x1_0809_0040, 7))));
        assert_eq!(bus.read32(bdf, 0x44), 0x0809_0040);
        assert_eq!(bus.read32(bdf, 0x48), 1);
        assert_eq!(bus.read32(bdf, 0x4c), 7);
        assert_eq!(bus.read32(bdf, 0x40), control | msi_cap::ENABLE);
        assert!(set_msi(&bus, bdf, None));
        assert_eq!(bus.read32(bdf, 0x40), control);

        // A 32-bit capability takes no address above 4 GiB; its data is
        // at +8.
        let narrow = cap(reg::CAP_ID_MSI, 0, 0);
        bus.space.borrow_mut().insert((bdf, 0x40), narrow);
        assert!(!set_msi(&bus, bdf, Some((0x1_0000_0000, 1))));
        assert!(set_msi(&bus, bdf, Some((0x0809_0040, 3))));
        assert_eq!(bus.read32(bdf, 0x48), 3);
        // No capability, nothing to program.
        let (bus, bdf) = with_caps(0, &[]);
        assert!(!set_msi(&bus, bdf, None));
    }

    #[test]
    fn requester_id_and_display() {
        let b = Bdf {
            bus: 1,
            dev: 2,
            func: 3,
        };
        assert_eq!(b.rid(), 0x113);
        assert_eq!(b.to_string(), "01:02.3");
    }
}
