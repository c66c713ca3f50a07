//! PCI enumeration and BAR assignment on an ECAM host bridge.
//!
//! The hypervisor owns PCI configuration: it sizes every BAR and places
//! each memory BAR alone in whole pages of a host bridge window from the
//! DTB, so that the page a VM is given for a BAR holds no other function's
//! registers. A function whose BARs cannot be placed so (a size that is
//! zero or not a power of two, a 64-bit BAR in the last slot, no room) is
//! refused: reported, never assigned, and enumeration goes on without it.
//! Memory decode and bus mastering stay off until a function is used: by
//! the hypervisor's own self-tests, or by the guest it is given to, so an
//! unowned function answers no address and nothing can DMA before the SMMU
//! says where it may go.

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
    /// Interrupt Line (7:0), Interrupt Pin (15:8).
    pub const INTERRUPT: u16 = 0x3c;
    /// Capability ID of PCI Express (PCIe Base 3.0 §7.8).
    pub const CAP_ID_PCIE: u8 = 0x10;
    /// In the PCI Express capability: Device Capabilities.
    pub const PCIE_DEVCAP: u16 = 0x04;
    /// Device Capabilities: Function Level Reset Capability, bit 28.
    pub const DEVCAP_FLR: u32 = 1 << 28;
    /// In the PCI Express capability: Device Control (15:0), Device
    /// Status (31:16).
    pub const PCIE_DEVCTL: u16 = 0x08;
    /// Device Control: Initiate Function Level Reset, bit 15.
    pub const DEVCTL_FLR: u32 = 1 << 15;
    /// Device Status: Transactions Pending, bit 5 (of the high half).
    pub const DEVSTA_TRANSACTIONS_PENDING: u32 = 1 << (16 + 5);
}

/// How [`reset_function`] reset a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionReset {
    /// A Function Level Reset (PCIe Base 3.0 §6.6.2).
    Flr,
    /// None: the function has no FLR (a conventional PCI function, or a
    /// PCIe one without the capability); its bus mastering and memory
    /// decode are off, which is all a hypervisor can do for it alone.
    Unsupported,
}

/// How long software waits after initiating an FLR before it touches the
/// function again (PCIe Base 3.0 §6.6.2: 100 ms), and at most for its
/// outstanding requests to complete before it (the same time).
const FLR_WAIT_US: u64 = 100_000;

/// Resets `bdf` by a Function Level Reset if it has one: waits (at most
/// 100 ms) for its Transactions Pending to clear, initiates the FLR, waits
/// the 100 ms the specification asks (`delay_us` waits), then writes back
/// what the hypervisor placed (its BARs and Interrupt Line); its command
/// register stays as the reset left it (decode and bus mastering off).
pub fn reset_function(cfg: &dyn ConfigAccess, bdf: Bdf, delay_us: &dyn Fn(u64)) -> FunctionReset {
    let pcie = capabilities(cfg, bdf)
        .into_iter()
        .find(|&(_, id)| id == reg::CAP_ID_PCIE);
    let Some((at, _)) = pcie else {
        return FunctionReset::Unsupported;
    };
    let at = u16::from(at);
    if cfg.read32(bdf, at + reg::PCIE_DEVCAP) & reg::DEVCAP_FLR == 0 {
        return FunctionReset::Unsupported;
    }
    const POLL_US: u64 = 1000;
    for _ in 0..FLR_WAIT_US / POLL_US {
        if cfg.read32(bdf, at + reg::PCIE_DEVCTL) & reg::DEVSTA_TRANSACTIONS_PENDING == 0 {
            break;
        }
        delay_us(POLL_US);
    }
    let bars: Vec<u32> = (0..6).map(|i| cfg.read32(bdf, reg::BAR0 + 4 * i)).collect();
    let interrupt = cfg.read32(bdf, reg::INTERRUPT);
    // Device Status is write-one-to-clear: zeros there leave it alone.
    let ctl = cfg.read32(bdf, at + reg::PCIE_DEVCTL) & 0xffff;
    cfg.write32(bdf, at + reg::PCIE_DEVCTL, ctl | reg::DEVCTL_FLR);
    delay_us(FLR_WAIT_US);
    for (i, &bar) in bars.iter().enumerate() {
        cfg.write32(bdf, reg::BAR0 + 4 * i as u16, bar);
    }
    cfg.write32(bdf, reg::INTERRUPT, interrupt);
    FunctionReset::Flr
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
    /// Memory and I/O BARs; none is placed when the function is refused.
    pub bars: Vec<Bar>,
    /// Why enumeration refused the function, None if it did not. A refused
    /// function keeps memory decode off and cannot be assigned.
    pub refused: Option<PciError>,
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

/// How a function signals interrupts by message (PCI Local Bus 3.0 §6.8):
/// at least one of the two is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageSignalled {
    /// MSI-X with this many table entries (Message Control Table Size
    /// \[10:0\] + 1, §6.8.2.3).
    pub msix: Option<u32>,
    /// MSI with this many vectors (2^Multiple Message Capable, Message
    /// Control \[3:1\], §6.8.1.3; the reserved encodings 6 and 7 read as
    /// the largest defined, 32).
    pub msi: Option<u32>,
}

impl MessageSignalled {
    /// Events the function's DeviceID needs in the ITS: one per MSI-X
    /// table entry or MSI vector, whichever the guest enables.
    pub fn events(self) -> u32 {
        self.msix.unwrap_or(0).max(self.msi.unwrap_or(0))
    }

    /// "MSI-X", "MSI" or "MSI-X and MSI".
    pub fn kinds(self) -> &'static str {
        match (self.msix, self.msi) {
            (Some(_), Some(_)) => "MSI-X and MSI",
            (Some(_), None) => "MSI-X",
            _ => "MSI",
        }
    }
}

/// What `bdf` can signal by message, `None` when neither MSI nor MSI-X
/// (INTx only).
pub fn message_signalled(cfg: &dyn ConfigAccess, bdf: Bdf) -> Option<MessageSignalled> {
    let caps = capabilities(cfg, bdf);
    let control = |id: u8| {
        caps.iter()
            .find(|&&(_, cap)| cap == id)
            .map(|&(at, _)| cfg.read32(bdf, u16::from(at)) >> 16)
    };
    let m = MessageSignalled {
        msix: control(reg::CAP_ID_MSIX).map(|c| (c & 0x7ff) + 1),
        msi: control(reg::CAP_ID_MSI).map(|c| 1 << ((c >> 1) & 7).min(5)),
    };
    (m.msix.is_some() || m.msi.is_some()).then_some(m)
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

/// Why a function is refused: one of its memory BARs cannot be placed alone
/// in pages of its own (PCI Local Bus 3.0 §6.2.5.1 says how a BAR reports
/// its size: the address bits that stay zero when all ones are written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// No address bit is writable: a size of zero (`readback` is what the
    /// BAR read after all ones were written to it).
    ZeroSize {
        /// The function.
        bdf: Bdf,
        /// The BAR slot.
        index: u8,
        /// The BAR (both halves of a 64-bit one) after all ones.
        readback: u64,
    },
    /// The writable address bits are not contiguous, so the size they give
    /// is not a power of two.
    NotPowerOfTwo {
        /// The function.
        bdf: Bdf,
        /// The BAR slot.
        index: u8,
        /// The size the BAR reports.
        size: u64,
    },
    /// A 64-bit BAR in the last slot of its header: its upper half would be
    /// the register after the BARs.
    Mem64InLastSlot {
        /// The function.
        bdf: Bdf,
        /// The BAR slot.
        index: u8,
        /// The BAR after all ones were written to it.
        readback: u32,
    },
    /// Memory type 01b or 11b (bits 2:1), both reserved.
    ReservedType {
        /// The function.
        bdf: Bdf,
        /// The BAR slot.
        index: u8,
        /// The BAR after all ones were written to it.
        readback: u32,
    },
    /// No host bridge window can hold it.
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
            Self::ZeroSize {
                bdf,
                index,
                readback,
            } => write!(
                f,
                "{bdf}: BAR{index} reports a size of zero (reads {readback:#x} after all ones were written)"
            ),
            Self::NotPowerOfTwo { bdf, index, size } => write!(
                f,
                "{bdf}: BAR{index} reports a size of {size:#x}, not a power of two"
            ),
            Self::Mem64InLastSlot {
                bdf,
                index,
                readback,
            } => write!(
                f,
                "{bdf}: BAR{index} reports a 64-bit BAR in the last slot, with no slot for its upper half (reads {readback:#x} after all ones were written)"
            ),
            Self::ReservedType {
                bdf,
                index,
                readback,
            } => write!(
                f,
                "{bdf}: BAR{index} reports the reserved memory type {:#04b} (reads {readback:#x} after all ones were written)",
                (readback >> 1) & 3
            ),
            Self::NoSpace { bdf, index, size } => write!(
                f,
                "{bdf}: BAR{index} of {size:#x} bytes does not fit in any host bridge window"
            ),
        }
    }
}

/// The least a memory BAR takes of a window: one stage-2 page, so that
/// the pages a VM is given for a BAR hold no other function's registers.
const BAR_PAGE: u64 = smmu::hw::PAGE_SIZE as u64;

/// Bump allocator over one host bridge window.
struct WindowAlloc {
    window: PciWindow,
    next: u64,
}

impl WindowAlloc {
    /// Places a BAR of `size` bytes alone in whole pages: aligned to its
    /// size and to a page, with the rest of its page left empty. Returns
    /// its PCI and CPU addresses; None if `size` is not a power of two or
    /// the BAR does not fit.
    fn alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        if !size.is_power_of_two() {
            return None;
        }
        let span = size.max(BAR_PAGE);
        let start = self.next.checked_add(span - 1)? & !(span - 1);
        let end = start.checked_add(span)?;
        let cpu = (start - self.window.pci_base).checked_add(self.window.cpu_base)?;
        // A window whose CPU and PCI addresses are not a whole number of
        // pages apart cannot give a BAR a page of its own on the CPU side.
        if end > self.window.pci_base.checked_add(self.window.size)? || cpu % BAR_PAGE != 0 {
            return None;
        }
        self.next = end;
        Some((start, cpu))
    }
}

/// What the BAR dword at `off` reads after all ones were written to it;
/// its value is restored.
fn read_all_ones(cfg: &dyn ConfigAccess, bdf: Bdf, off: u16) -> u32 {
    let orig = cfg.read32(bdf, off);
    cfg.write32(bdf, off, 0xffff_ffff);
    let value = cfg.read32(bdf, off);
    cfg.write32(bdf, off, orig);
    value
}

/// Sizes BAR slot `index` of a header with `slots` BAR slots; returns the
/// BAR (None if unimplemented) and how many slots it uses, or why the
/// function must be refused.
fn size_bar(
    cfg: &dyn ConfigAccess,
    bdf: Bdf,
    index: u8,
    slots: u8,
) -> Result<(Option<Bar>, u8), PciError> {
    let off = reg::BAR0 + u16::from(index) * 4;
    let lo = read_all_ones(cfg, bdf, off);
    if lo == 0 {
        return Ok((None, 1));
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
        return Ok((Some(bar), 1));
    }
    let (kind, readback, size) = match (lo >> 1) & 3 {
        0 => (
            BarKind::Mem32,
            u64::from(lo),
            u64::from((!(lo & !0xf)).wrapping_add(1)),
        ),
        2 if index + 1 < slots => {
            let hi = read_all_ones(cfg, bdf, off + 4);
            let readback = (u64::from(hi) << 32) | u64::from(lo);
            (
                BarKind::Mem64,
                readback,
                (!(readback & !0xf)).wrapping_add(1),
            )
        }
        2 => {
            return Err(PciError::Mem64InLastSlot {
                bdf,
                index,
                readback: lo,
            })
        }
        _ => {
            return Err(PciError::ReservedType {
                bdf,
                index,
                readback: lo,
            })
        }
    };
    if size == 0 {
        return Err(PciError::ZeroSize {
            bdf,
            index,
            readback,
        });
    }
    if !size.is_power_of_two() {
        return Err(PciError::NotPowerOfTwo { bdf, index, size });
    }
    let bar = Bar {
        index,
        kind,
        prefetchable: lo & 0x8 != 0,
        size,
        cpu_addr: None,
    };
    Ok((Some(bar), if kind == BarKind::Mem64 { 2 } else { 1 }))
}

/// Sizes the `slots` BAR slots of `bdf` into `bars`, stopping at the
/// first one that refuses the function.
fn size_bars(
    cfg: &dyn ConfigAccess,
    bdf: Bdf,
    slots: u8,
    bars: &mut Vec<Bar>,
) -> Result<(), PciError> {
    let mut index = 0;
    while index < slots {
        let (bar, used) = size_bar(cfg, bdf, index, slots)?;
        bars.extend(bar);
        index += used;
    }
    Ok(())
}

/// Places every memory BAR of `bars` in `windows` (64-bit BARs may use
/// 64-bit windows, which come first) and programs them into `bdf`. If one
/// does not fit, nothing is placed or programmed and the windows are as
/// they were.
fn place_bars(
    cfg: &dyn ConfigAccess,
    bdf: Bdf,
    windows: &mut [WindowAlloc],
    bars: &mut [Bar],
) -> Result<(), PciError> {
    let before: Vec<u64> = windows.iter().map(|w| w.next).collect();
    let mut placed = Vec::new();
    for bar in bars.iter().filter(|b| b.kind != BarKind::Io) {
        let at = windows
            .iter_mut()
            .filter(|w| bar.kind == BarKind::Mem64 || w.window.kind == WindowKind::Mem32)
            .find_map(|w| w.alloc(bar.size));
        let Some(at) = at else {
            for (w, next) in windows.iter_mut().zip(before) {
                w.next = next;
            }
            return Err(PciError::NoSpace {
                bdf,
                index: bar.index,
                size: bar.size,
            });
        };
        placed.push(at);
    }
    let memory = bars.iter_mut().filter(|b| b.kind != BarKind::Io);
    for (bar, (pci_addr, cpu_addr)) in memory.zip(placed) {
        let off = reg::BAR0 + u16::from(bar.index) * 4;
        cfg.write32(bdf, off, pci_addr as u32);
        if bar.kind == BarKind::Mem64 {
            cfg.write32(bdf, off + 4, (pci_addr >> 32) as u32);
        }
        bar.cpu_addr = Some(cpu_addr);
    }
    Ok(())
}

/// Enumerates the first bus of `host` and sizes every BAR. Each memory BAR
/// of a function is placed alone in pages of its own in the host windows;
/// a function with a memory BAR that cannot be is refused
/// ([`Function::refused`]) and enumeration goes on. Every function is left
/// with memory decode and bus mastering off: whoever uses a function turns
/// on what it needs (the boot self-tests for the `edu` they drive, a guest
/// through its virtual command register).
pub fn enumerate(cfg: &dyn ConfigAccess, host: &PciHost) -> Vec<Function> {
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
            // Type 0 (endpoint) headers have 6 BARs, bridges 2; the host
            // bridge function itself usually has none.
            let slots = if header & 0x7f == 0 { 6 } else { 2 };
            let cmd = cfg.read32(bdf, reg::COMMAND);
            cfg.write32(
                bdf,
                reg::COMMAND,
                cmd & !(reg::CMD_MEM | reg::CMD_MASTER) & 0xffff,
            );
            let mut bars = Vec::new();
            let refused = size_bars(cfg, bdf, slots, &mut bars)
                .and_then(|()| place_bars(cfg, bdf, &mut windows, &mut bars))
                .err();
            found.push(Function {
                bdf,
                vendor: id as u16,
                device: (id >> 16) as u16,
                class: cfg.read32(bdf, reg::CLASS) >> 8,
                bars,
                refused,
            });
            if func == 0 && header & 0x80 == 0 {
                break;
            }
        }
    }
    found
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

/// A range of a function's BAR as the hypervisor reaches it: identity
/// mapped device memory at EL2 (every placed BAR is, from enumeration on).
/// The only way the hypervisor touches a BAR on a guest's behalf.
#[derive(Debug)]
pub struct BarRange {
    base: usize,
    len: u64,
    /// BAR offset of `base`.
    bar_offset: u64,
}

impl BarRange {
    /// The `len` bytes at `pa`, which are offset `bar_offset` of their
    /// BAR.
    ///
    /// # Safety
    ///
    /// `[pa, pa + len)` is BAR space of one function, mapped as device
    /// memory at EL2 (identity) for the hypervisor's lifetime, and holds no
    /// hypervisor object: a naturally aligned access of 1, 2, 4 or 8 bytes
    /// inside it has no effect on memory safety.
    pub unsafe fn new(pa: smmu::addr::PhysAddr, len: u64, bar_offset: u64) -> Self {
        Self {
            base: pa.raw() as usize,
            len,
            bar_offset,
        }
    }

    /// The address of an aligned access of `size` at BAR offset `offset`,
    /// if it lies inside.
    fn at(&self, offset: u64, size: u8) -> Option<usize> {
        let rel = offset.checked_sub(self.bar_offset)?;
        (matches!(size, 1 | 2 | 4 | 8)
            && rel.is_multiple_of(u64::from(size))
            && rel.checked_add(u64::from(size))? <= self.len)
            .then(|| self.base + rel as usize)
    }
}

impl crate::vdev::msix::BarWindow for BarRange {
    fn read(&self, offset: u64, size: u8) -> u64 {
        let Some(a) = self.at(offset, size) else {
            return 0;
        };
        // SAFETY: an aligned access inside the range (`at`), which
        // `BarRange::new`'s contract makes device memory of the BAR.
        unsafe {
            match size {
                1 => u64::from((a as *const u8).read_volatile()),
                2 => u64::from((a as *const u16).read_volatile()),
                4 => u64::from((a as *const u32).read_volatile()),
                _ => (a as *const u64).read_volatile(),
            }
        }
    }

    fn write(&self, offset: u64, size: u8, value: u64) {
        let Some(a) = self.at(offset, size) else {
            return;
        };
        // SAFETY: as in `read`.
        unsafe {
            match size {
                1 => (a as *mut u8).write_volatile(value as u8),
                2 => (a as *mut u16).write_volatile(value as u16),
                4 => (a as *mut u32).write_volatile(value as u32),
                _ => (a as *mut u64).write_volatile(value),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Region;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A BAR dword of the fake: its offset, its writable bits and the
    /// read-only bits (flags) it holds.
    type FakeBar = (u16, u32, u32);

    /// A config space with BARs that model sizing (writable bits only).
    struct FakeBus {
        space: RefCell<BTreeMap<(Bdf, u16), u32>>,
        /// (bdf, offset) -> writable mask of a BAR dword.
        masks: BTreeMap<(Bdf, u16), u32>,
        /// Every write, in order.
        writes: RefCell<Vec<(Bdf, u16, u32)>>,
    }

    impl FakeBus {
        fn new() -> Self {
            Self {
                space: RefCell::new(BTreeMap::new()),
                masks: BTreeMap::new(),
                writes: RefCell::new(Vec::new()),
            }
        }
        fn add(&mut self, bdf: Bdf, id: u32, header: u32, bars: &[FakeBar]) {
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
            self.writes.borrow_mut().push((bdf, offset, value));
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

        let fns = enumerate(&bus, &host());
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
        assert!(fns.iter().all(|f| f.refused.is_none()));
    }

    fn dev(n: u8) -> Bdf {
        Bdf {
            bus: 0,
            dev: n,
            func: 0,
        }
    }

    /// Vendor and device ID of QEMU's `i6300esb` watchdog, whose only BAR
    /// is 16 bytes of 32-bit memory.
    const I6300ESB: u32 = 0x25ab_8086;
    /// Its BAR0: writable address mask and flags.
    const WATCHDOG_BAR: FakeBar = (0x10, 0xffff_fff0, 0);

    /// The pages `[addr, addr + max(size, page))` of every placed memory BAR.
    fn placed_pages(fns: &[Function]) -> Vec<(u64, u64)> {
        fns.iter()
            .flat_map(|f| &f.bars)
            .filter_map(|b| b.cpu_addr.map(|a| (a, a + b.size.max(BAR_PAGE))))
            .collect()
    }

    #[test]
    fn sub_page_bars_get_pages_of_their_own() {
        let mut bus = FakeBus::new();
        // Two watchdogs (QEMU packed them at 0x...00 and 0x...10 before),
        // a function with three sub-page BARs, one of them 64-bit, and a
        // page-sized BAR after them.
        bus.add(dev(1), I6300ESB, 0, &[WATCHDOG_BAR]);
        bus.add(dev(2), I6300ESB, 0, &[WATCHDOG_BAR]);
        bus.add(
            dev(3),
            0x1234_5678,
            0,
            &[
                (0x10, 0xffff_ff00, 0),
                (0x14, 0xffff_ff80, 0x4),
                (0x18, 0xffff_ffff, 0),
                (0x1c, 0xffff_fff0, 0x8),
            ],
        );
        bus.add(dev(4), 0x1234_5679, 0, &[(0x10, 0xffff_f000, 0)]);
        let fns = enumerate(&bus, &host());
        assert_eq!(fns[0].bars[0].cpu_addr, Some(0x1000_0000));
        assert_eq!(fns[1].bars[0].cpu_addr, Some(0x1000_1000));
        assert_eq!(bus.read32(dev(2), 0x10), 0x1000_1000);
        let pages = placed_pages(&fns);
        assert_eq!(pages.len(), 6);
        for (i, &(start, end)) in pages.iter().enumerate() {
            assert_eq!(start % BAR_PAGE, 0, "{start:#x} is not page aligned");
            for &(other, other_end) in &pages[i + 1..] {
                assert!(
                    end <= other || other_end <= start,
                    "{start:#x} and {other:#x} share a page"
                );
            }
        }
    }

    #[test]
    fn memory_decode_is_off_after_enumeration() {
        let mut bus = FakeBus::new();
        bus.add(dev(0), 0x0008_1b36, 0, &[]);
        bus.add(dev(1), I6300ESB, 0, &[WATCHDOG_BAR]);
        bus.add(dev(2), 0x11e8_1234, 0, &[(0x10, 0xfff0_0000, 0)]);
        // Refused: a BAR of size zero.
        bus.add(dev(3), 0x1234_5678, 0, &[(0x10, 0, 0x8)]);
        // Firmware left everything decoding and mastering (and I/O on).
        let firmware = reg::CMD_MEM | reg::CMD_MASTER | 1;
        for d in 0..4 {
            bus.space
                .borrow_mut()
                .insert((dev(d), reg::COMMAND), firmware);
        }
        let fns = enumerate(&bus, &host());
        assert_eq!(fns.len(), 4);
        for f in &fns {
            let cmd = bus.read32(f.bdf, reg::COMMAND);
            assert_eq!(cmd & reg::CMD_MEM, 0, "{}: memory decode is off", f.bdf);
            assert_eq!(cmd & reg::CMD_MASTER, 0, "{}: bus mastering is off", f.bdf);
        }
    }

    #[test]
    fn a_function_with_an_unusable_bar_is_refused_and_the_others_enumerated() {
        let d = dev(1);
        let cases: [(&[FakeBar], PciError); 7] = [
            (
                &[(0x10, 0, 0x8)],
                PciError::ZeroSize {
                    bdf: d,
                    index: 0,
                    readback: 0x8,
                },
            ),
            (
                &[(0x10, 0, 0x4), (0x14, 0, 0)],
                PciError::ZeroSize {
                    bdf: d,
                    index: 0,
                    readback: 0x4,
                },
            ),
            (
                &[(0x10, 0xfff0_1000, 0)],
                PciError::NotPowerOfTwo {
                    bdf: d,
                    index: 0,
                    size: 0xf_f000,
                },
            ),
            // A 64-bit BAR whose upper half takes no ones.
            (
                &[(0x10, 0xffff_f000, 0x4), (0x14, 0, 0)],
                PciError::NotPowerOfTwo {
                    bdf: d,
                    index: 0,
                    size: 0xffff_ffff_0000_1000,
                },
            ),
            (
                &[(0x24, 0xffff_f000, 0x4)],
                PciError::Mem64InLastSlot {
                    bdf: d,
                    index: 5,
                    readback: 0xffff_f004,
                },
            ),
            (
                &[(0x10, 0xffff_f000, 0x6)],
                PciError::ReservedType {
                    bdf: d,
                    index: 0,
                    readback: 0xffff_f006,
                },
            ),
            // BAR0 fits, BAR1 fits no window: neither is placed.
            (
                &[(0x10, 0xffff_f000, 0), (0x14, 0x8000_0000, 0)],
                PciError::NoSpace {
                    bdf: d,
                    index: 1,
                    size: 0x8000_0000,
                },
            ),
        ];
        let mut h = host();
        h.windows.retain(|w| w.kind != WindowKind::Mem64);
        for (bars, refusal) in cases {
            let mut bus = FakeBus::new();
            bus.add(d, 0x1234_5678, 0, bars);
            bus.add(dev(2), I6300ESB, 0, &[WATCHDOG_BAR]);
            bus.space
                .borrow_mut()
                .insert((d, reg::COMMAND), reg::CMD_MEM | reg::CMD_MASTER);
            let fns = enumerate(&bus, &h);
            assert_eq!(fns.len(), 2, "{refusal}");
            assert_eq!(fns[0].refused, Some(refusal));
            assert!(
                fns[0].bars.iter().all(|b| b.cpu_addr.is_none()),
                "{refusal}"
            );
            assert_eq!(bus.read32(d, reg::COMMAND), 0, "{refusal}: decode off");
            // No BAR was programmed: each holds what it held before.
            for &(off, _, flags) in bars {
                assert_eq!(bus.read32(d, off), flags, "{refusal}: BAR at {off:#x}");
            }
            // The next function is placed as if the refused one were absent.
            assert_eq!(fns[1].refused, None);
            assert_eq!(fns[1].bars[0].cpu_addr, Some(0x1000_0000), "{refusal}");
        }
    }

    #[test]
    fn a_bridge_s_64_bit_bar1_is_refused_without_touching_its_bus_numbers() {
        let mut bus = FakeBus::new();
        bus.add(dev(1), 0x0001_1b36, 1, &[(0x14, 0xffff_f000, 0x4)]);
        bus.space.borrow_mut().insert((dev(1), 0x18), 0x0001_0100);
        let fns = enumerate(&bus, &host());
        assert_eq!(
            fns[0].refused,
            Some(PciError::Mem64InLastSlot {
                bdf: dev(1),
                index: 1,
                readback: 0xffff_f004,
            })
        );
        assert!(bus.writes.borrow().iter().all(|w| w.1 != 0x18));
    }

    #[test]
    fn a_refusal_names_the_function_the_bar_and_its_size() {
        let e = PciError::NotPowerOfTwo {
            bdf: dev(3),
            index: 2,
            size: 0xf_f000,
        };
        assert_eq!(
            e.to_string(),
            "00:03.0: BAR2 reports a size of 0xff000, not a power of two"
        );
        let e = PciError::ZeroSize {
            bdf: dev(3),
            index: 0,
            readback: 0x8,
        };
        assert_eq!(
            e.to_string(),
            "00:03.0: BAR0 reports a size of zero (reads 0x8 after all ones were written)"
        );
    }

    #[test]
    fn window_allocation_takes_only_powers_of_two_and_never_overflows() {
        let window = |pci_base: u64, cpu_base: u64, size: u64| WindowAlloc {
            window: PciWindow {
                kind: WindowKind::Mem64,
                prefetchable: false,
                pci_base,
                cpu_base,
                size,
            },
            next: pci_base,
        };
        let mut w = window(0x1000_0000, 0x1000_0000, 0x1_0000);
        for size in [0, 3, 0x1800, u64::MAX] {
            assert_eq!(w.alloc(size), None, "{size:#x}");
        }
        assert_eq!(w.alloc(16), Some((0x1000_0000, 0x1000_0000)));
        assert_eq!(w.alloc(1), Some((0x1000_1000, 0x1000_1000)));
        assert_eq!(w.alloc(0x8000), Some((0x1000_8000, 0x1000_8000)));
        assert_eq!(w.alloc(0x1000), None, "the window is full");
        assert_eq!(w.alloc(1 << 63), None);
        // At the top of the address space.
        let mut top = window(u64::MAX - 0xfff, 0, 0x1000);
        assert_eq!(top.alloc(0x2000), None);
        assert_eq!(top.alloc(1 << 63), None);
        // CPU and PCI bases not a whole number of pages apart.
        assert_eq!(window(0x1000_0000, 0x2000_0800, 0x1_0000).alloc(16), None);
    }

    /// A BAR's writable bits: mostly a well-formed size (16 bytes to
    /// 8 MiB), else any bits at all.
    fn mask() -> impl proptest::strategy::Strategy<Value = u32> {
        use proptest::prelude::*;
        prop_oneof![3 => (4u32..24).prop_map(|k| !((1u32 << k) - 1)), 1 => any::<u32>()]
    }

    /// A BAR's read-only bits: mostly a memory BAR's flags, else anything.
    fn flags() -> impl proptest::strategy::Strategy<Value = u32> {
        use proptest::prelude::*;
        prop_oneof![3 => proptest::sample::select(vec![0, 0x4, 0x8, 0xc]), 1 => any::<u32>()]
    }

    proptest::proptest! {
        /// Whatever BARs the functions report: enumeration completes, each
        /// placed memory BAR sits alone in page-aligned pages inside a
        /// window, a refused function has nothing placed, and memory
        /// decode is off everywhere.
        #[test]
        fn any_bars_leave_pages_of_their_own_and_decode_off(
            functions in proptest::collection::vec(
                proptest::collection::vec((0u16..6, mask(), flags()), 0..6),
                1..5,
            ),
        ) {
            let mut bus = FakeBus::new();
            for (i, bars) in functions.iter().enumerate() {
                let bars: Vec<_> = bars.iter().map(|&(slot, mask, flags)| (0x10 + slot * 4, mask, flags & !mask)).collect();
                bus.add(dev(i as u8 + 1), 0x1234_5678, 0, &bars);
                bus.space.borrow_mut().insert((dev(i as u8 + 1), reg::COMMAND), reg::CMD_MEM);
            }
            let h = host();
            let fns = enumerate(&bus, &h);
            proptest::prop_assert_eq!(fns.len(), functions.len());
            let pages = placed_pages(&fns);
            for (i, &(start, end)) in pages.iter().enumerate() {
                proptest::prop_assert_eq!(start % BAR_PAGE, 0);
                proptest::prop_assert!(h.windows.iter().any(|w| w.kind != WindowKind::Io && w.cpu_base <= start && end <= w.cpu_base + w.size));
                for &(other, other_end) in &pages[i + 1..] {
                    proptest::prop_assert!(end <= other || other_end <= start);
                }
            }
            for f in &fns {
                proptest::prop_assert_eq!(bus.read32(f.bdf, reg::COMMAND) & reg::CMD_MEM, 0);
                if f.refused.is_some() {
                    proptest::prop_assert!(f.bars.iter().all(|b| b.cpu_addr.is_none()));
                }
                for b in f.bars.iter().filter(|b| b.kind != BarKind::Io) {
                    proptest::prop_assert!(b.size.is_power_of_two());
                }
            }
        }
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
    fn both_kinds_are_found_and_the_larger_sets_the_events() {
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
        let m = message_signalled(&bus, bdf).unwrap();
        assert_eq!(
            m,
            MessageSignalled {
                msix: Some(64),
                msi: Some(4)
            }
        );
        assert_eq!((m.events(), m.kinds()), (64, "MSI-X and MSI"));
    }

    #[test]
    fn msi_vectors_from_multiple_message_capable() {
        for (mmc, vectors) in [(0, 1), (1, 2), (3, 8), (5, 32), (6, 32), (7, 32)] {
            // Enable and Multiple Message Enable set too: they do not count.
            let control = (mmc << 1) | (2 << 4) | 1 | (1 << 7);
            let (bus, bdf) = with_caps(0x48, &[(0x48, cap(reg::CAP_ID_MSI, 0, control))]);
            assert_eq!(
                message_signalled(&bus, bdf),
                Some(MessageSignalled {
                    msix: None,
                    msi: Some(vectors)
                }),
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
            Some(MessageSignalled {
                msix: Some(8),
                msi: None
            })
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

    #[test]
    fn a_bar_range_reaches_only_its_own_bytes() {
        use crate::vdev::msix::BarWindow;
        let mut mem = [0u64; 4];
        let pa = smmu::addr::PhysAddr(mem.as_mut_ptr() as u64);
        // SAFETY: `mem` outlives the window and stands in for BAR space.
        let w = unsafe { BarRange::new(pa, 32, 0x2000) };
        w.write(0x2008, 4, 0xdead_beef);
        w.write(0x2010, 8, u64::MAX);
        w.write(0x2001, 1, 0x5a);
        assert_eq!(w.read(0x2008, 8), 0xdead_beef);
        assert_eq!(w.read(0x2001, 1), 0x5a);
        // Outside, below, misaligned or of an odd size: nothing.
        w.write(0x2020, 4, 1);
        w.write(0x1ffc, 4, 1);
        w.write(0x2004, 8, 1);
        w.write(0x2000, 3, 1);
        assert_eq!(w.read(0x2020, 4), 0);
        assert_eq!(w.read(0x2004, 8), 0);
        assert_eq!(mem, [0x5a00, 0xdead_beef, u64::MAX, 0]);
    }

    /// A PCIe function with FLR: the reset clears its BARs, command and
    /// interrupt line; its Transactions Pending clears after two reads.
    struct FlrFunction {
        space: RefCell<BTreeMap<u16, u32>>,
        pending_reads: RefCell<u32>,
        writes: RefCell<Vec<(u16, u32)>>,
    }

    impl ConfigAccess for FlrFunction {
        fn read32(&self, _: Bdf, offset: u16) -> u32 {
            let v = *self.space.borrow().get(&offset).unwrap_or(&0);
            if offset == 0x48 {
                let mut n = self.pending_reads.borrow_mut();
                if *n > 0 {
                    *n -= 1;
                    return v | reg::DEVSTA_TRANSACTIONS_PENDING;
                }
            }
            v
        }
        fn write32(&self, _: Bdf, offset: u16, value: u32) {
            self.writes.borrow_mut().push((offset, value));
            let mut s = self.space.borrow_mut();
            if offset == 0x48 && value & reg::DEVCTL_FLR != 0 {
                for o in [reg::COMMAND, reg::INTERRUPT, 0x10, 0x14, 0x18] {
                    s.insert(o, 0);
                }
            } else {
                s.insert(offset, value);
            }
        }
    }

    #[test]
    fn function_reset_is_an_flr_that_keeps_the_placed_bars() {
        let bdf = Bdf {
            bus: 0,
            dev: 1,
            func: 0,
        };
        let space = BTreeMap::from([
            (reg::COMMAND, (reg::STATUS_CAP_LIST << 16) | reg::CMD_MEM),
            (reg::CAP_PTR, 0x40),
            (0x40, u32::from(reg::CAP_ID_PCIE)),
            (0x44, reg::DEVCAP_FLR),
            (0x48, 0x2810),
            (0x10, 0x1000_0004),
            (0x14, 0x80),
            (0x18, 0x1004_0000),
            (reg::INTERRUPT, 0x0123),
        ]);
        let f = FlrFunction {
            space: RefCell::new(space),
            pending_reads: RefCell::new(2),
            writes: RefCell::new(Vec::new()),
        };
        let waited = RefCell::new(Vec::new());
        let r = reset_function(&f, bdf, &|us| waited.borrow_mut().push(us));
        assert_eq!(r, FunctionReset::Flr);
        // Two polls of Transactions Pending, then the FLR's 100 ms.
        assert_eq!(*waited.borrow(), [1000, 1000, 100_000]);
        let s = f.space.borrow();
        assert_eq!(s[&0x10], 0x1000_0004);
        assert_eq!(s[&0x14], 0x80);
        assert_eq!(s[&0x18], 0x1004_0000);
        assert_eq!(s[&reg::INTERRUPT], 0x0123);
        assert_eq!(s[&reg::COMMAND], 0, "decode and bus mastering stay off");
        // The FLR write kept Device Control and wrote no status bit.
        assert!(f
            .writes
            .borrow()
            .contains(&(0x48, 0x2810 | reg::DEVCTL_FLR)));
        // Without the capability bit, or without a PCIe capability: nothing.
        drop(s);
        f.space.borrow_mut().insert(0x44, 0);
        f.writes.borrow_mut().clear();
        assert_eq!(reset_function(&f, bdf, &|_| ()), FunctionReset::Unsupported);
        f.space
            .borrow_mut()
            .insert(0x40, u32::from(reg::CAP_ID_MSI));
        assert_eq!(reset_function(&f, bdf, &|_| ()), FunctionReset::Unsupported);
        assert!(f.writes.borrow().is_empty());
    }
}
