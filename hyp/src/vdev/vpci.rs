//! Virtual PCI host bridge: the configuration space a guest sees through its
//! emulated ECAM window.
//!
//! Each VM gets one virtual bus 0 whose device `i + 1`, function 0 is the
//! `i`-th physical function assigned to it; device 0 and every other address
//! are empty. Accesses arrive as ECAM offsets (PCIe Base 3.0 §7.2.2:
//! `bus << 20 | device << 15 | function << 12 | register`) from the stage-2
//! abort handler and are answered from the physical function through
//! [`ConfigAccess`], filtered register by register (PCI Local Bus 3.0 §6.1,
//! type 0 header):
//!
//! - BAR placement is the hypervisor's: BARs are virtual (guest addresses),
//!   sizing works, a guest can never move or even write a physical BAR.
//! - Only the command bits that concern the function itself reach the device
//!   (memory decode, bus mastering, error reporting, INTx disable); the SMMU
//!   confines what bus mastering can reach.
//! - MSI and MSI-X are visible only for a function whose MSIs the
//!   hypervisor routes ([`VirtualFunction::msi`], [`VirtualFunction::msix`]).
//!   Of MSI-X only Enable and Function Mask reach the device (the table is
//!   emulated by [`super::msix`]); of MSI, Enable, Multiple Message Enable
//!   (at most what the function is capable of), the message address and
//!   data and the per-vector mask bits. The message itself is the guest's
//!   to choose, as in the MSI-X table: the device's write goes through the
//!   SMMU (see [`super::msix`]). The expansion ROM and the extended
//!   configuration space are absent.
//!
//! Everything here is driven by a hostile guest: no access panics, and no
//! access reaches any function other than the one it addresses.

use super::msix::{control, MsixLayout};
use crate::drivers::pci::{BarKind, Bdf, ConfigAccess};
use alloc::vec::Vec;
use smmu::addr::Ipa;

/// Most functions a virtual bus holds: devices 1..=31 of bus 0.
pub const MAX_FUNCTIONS: usize = 31;

/// Configuration header offsets and bits the filter knows (PCI Local Bus 3.0
/// §6.1, figure 6-1, type 0 header; PCIe Base 3.0 §7.5 and §7.8).
mod regs {
    /// Command (15:0) and Status (31:16) (§6.2.2, §6.2.3).
    pub const COMMAND: u16 = 0x04;
    /// Cache Line Size, Latency Timer, Header Type, BIST (§6.2.4).
    pub const HEADER: u16 = 0x0c;
    /// First Base Address register (§6.2.5.1).
    pub const BAR0: u16 = 0x10;
    /// Last Base Address register of a type 0 header.
    pub const BAR5: u16 = 0x24;
    /// CardBus CIS Pointer (§6.2.4).
    pub const CARDBUS_CIS: u16 = 0x28;
    /// Expansion ROM Base Address (§6.2.5.2).
    pub const ROM: u16 = 0x30;
    /// Capabilities Pointer in bits 7:0 (§6.7).
    pub const CAP_PTR: u16 = 0x34;
    /// Interrupt Line (7:0), Interrupt Pin (15:8), Min_Gnt, Max_Lat (§6.2.4).
    pub const INTERRUPT: u16 = 0x3c;
    /// First byte after the predefined header: capabilities live here (§6.7).
    pub const DEVICE_SPECIFIC: u16 = 0x40;
    /// Size of the PCI-compatible configuration space; beyond it lies the
    /// PCIe extended configuration space (PCIe Base 3.0 §7.2.2).
    pub const CONFIG_SIZE: u16 = 0x100;

    /// Command: I/O Space (bit 0). No I/O ports are given out, so never set.
    pub const CMD_IO: u32 = 1 << 0;
    /// Command bits a guest may change (§6.2.2): Memory Space (1), Bus
    /// Master (2), Parity Error Response (6), SERR# Enable (8), Interrupt
    /// Disable (10).
    pub const CMD_GUEST: u32 = (1 << 1) | (1 << 2) | (1 << 6) | (1 << 8) | (1 << 10);
    /// Status: Capabilities List (bit 4) (§6.2.3).
    pub const STATUS_CAP_LIST: u32 = 1 << 4;
    /// Status error bits that are RW1C (§6.2.3): Master Data Parity Error (8),
    /// Signaled/Received Target Abort (11, 12), Received Master Abort (13),
    /// Signaled System Error (14), Detected Parity Error (15).
    pub const STATUS_RW1C: u32 = (1 << 8) | (0x1f << 11);
    /// Header Type: multi-function device (bit 7 of the Header Type byte).
    pub const HEADER_MULTI_FUNCTION: u32 = 0x80 << 16;

    /// BAR bits 2:1 = 10b: 64-bit memory BAR (§6.2.5.1).
    pub const BAR_MEM64: u32 = 0b10 << 1;
    /// BAR bit 3: prefetchable (§6.2.5.1).
    pub const BAR_PREFETCHABLE: u32 = 1 << 3;
    /// BAR bits 3:0 are flags, not address, in a memory BAR (§6.2.5.1).
    pub const BAR_FLAGS: u32 = 0xf;

    /// Capability ID of PCI Power Management (PCI Code and ID Assignment).
    #[cfg(test)]
    pub const CAP_ID_PM: u8 = 0x01;
    /// Capability ID of MSI (§6.8.1).
    pub const CAP_ID_MSI: u8 = 0x05;
    /// Capability ID of the PCI Express capability (PCIe Base 3.0 §7.8.1).
    pub const CAP_ID_PCIE: u8 = 0x10;
    /// Capability ID of MSI-X (§6.8.2).
    pub const CAP_ID_MSIX: u8 = 0x11;
    /// Device Control (15:0) / Device Status (31:16) inside the PCI Express
    /// capability (PCIe Base 3.0 §7.8.4, §7.8.5).
    pub const PCIE_DEVCTL: u16 = 0x08;
    /// Device Control bits a guest may change (PCIe Base 3.0 §7.8.4):
    /// Correctable/Non-Fatal/Fatal/Unsupported Request reporting enables
    /// (3:0) and Enable Relaxed Ordering (4).
    pub const DEVCTL_GUEST: u32 = 0x1f;
    /// Device Control bit 15: Initiate Function Level Reset (endpoints). A
    /// reset is the hypervisor's to order with the SMMU, never the guest's.
    pub const DEVCTL_FLR: u32 = 1 << 15;
}

/// A BAR as the guest sees it: where the hypervisor mapped it in the guest's
/// address space (PCI Local Bus 3.0 §6.2.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualBar {
    /// Guest physical address of the BAR, naturally aligned to `size`.
    pub guest_addr: Ipa,
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    /// `Mem32` or `Mem64` (I/O BARs are never exposed). A `Mem64` BAR uses
    /// its slot and the next one, which must be `None`.
    pub kind: BarKind,
    /// Reported in bit 3 of the BAR.
    pub prefetchable: bool,
}

/// A physical function as one guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualFunction {
    /// The physical function behind it.
    pub phys: Bdf,
    /// Its BARs by slot; `None` reads as an unimplemented BAR (0).
    pub bars: [Option<VirtualBar>; 6],
    /// Its MSI-X, when the hypervisor routes its MSIs to the VM: the
    /// capability is then visible (else hidden).
    pub msix: Option<MsixLayout>,
    /// Its MSI capability is visible: the function has one and the
    /// hypervisor routes its MSIs to the VM. A function with neither
    /// visible has INTx only.
    pub msi: bool,
}

impl VirtualFunction {
    /// Checks what the register emulation relies on; a failure is a bug in
    /// the code that built the function, not something a guest can cause.
    fn validate(&self) {
        for (i, bar) in self.bars.iter().enumerate() {
            let Some(bar) = bar else { continue };
            let at = (self.phys, i);
            assert!(
                bar.kind != BarKind::Io,
                "vpci {at:?}: I/O BARs are never exposed"
            );
            assert!(
                bar.size.is_power_of_two() && bar.size >= 16,
                "vpci {at:?}: BAR size {:#x} is not a power of two >= 16",
                bar.size
            );
            assert!(
                bar.guest_addr.is_aligned(bar.size),
                "vpci {at:?}: guest address {:#x} not aligned to size {:#x}",
                bar.guest_addr,
                bar.size
            );
            match bar.kind {
                BarKind::Mem32 => assert!(
                    bar.guest_addr
                        .checked_add(bar.size)
                        .is_some_and(|end| end.raw() <= 1 << 32),
                    "vpci {at:?}: 32-bit BAR at {:#x} above 4 GiB",
                    bar.guest_addr
                ),
                _ => assert!(
                    i < 5 && self.bars[i + 1].is_none(),
                    "vpci {at:?}: a 64-bit BAR needs the next slot free"
                ),
            }
        }
    }
}

/// One capability of the physical list (PCI Local Bus 3.0 §6.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cap {
    /// Its offset in configuration space (dword aligned, >= 0x40).
    offset: u8,
    /// Its Capability ID.
    id: u8,
}

impl Cap {
    /// MSI only when `msi`, MSI-X only when `msix` (its MSIs are routed).
    fn visible(self, msi: bool, msix: bool) -> bool {
        match self.id {
            regs::CAP_ID_MSI => msi,
            regs::CAP_ID_MSIX => msix,
            _ => true,
        }
    }
}

/// The physical capability list in order, walked once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CapList {
    caps: Vec<Cap>,
    /// MSI is shown.
    msi: bool,
    /// MSI-X is shown.
    msix: bool,
}

impl CapList {
    /// Walks the list like an OS does (§6.7): only if Status says there is
    /// one, pointers masked to dwords, stopping at a pointer below 0x40, a
    /// Capability ID of 0xff (nothing there), or a pointer already seen, so
    /// a looping list is cut and the virtual list is always finite.
    fn walk(cfg: &dyn ConfigAccess, bdf: Bdf, msi: bool, msix: bool) -> Self {
        let mut caps: Vec<Cap> = Vec::new();
        if (cfg.read32(bdf, regs::COMMAND) >> 16) & regs::STATUS_CAP_LIST == 0 {
            return Self { caps, msi, msix };
        }
        let mut ptr = (cfg.read32(bdf, regs::CAP_PTR) & 0xfc) as u8;
        // Offsets are distinct dwords in 0x40..0x100: at most 48 iterations.
        while u16::from(ptr) >= regs::DEVICE_SPECIFIC && !caps.iter().any(|c| c.offset == ptr) {
            let header = cfg.read32(bdf, u16::from(ptr));
            let id = header as u8;
            if id == 0xff {
                break;
            }
            caps.push(Cap { offset: ptr, id });
            ptr = ((header >> 8) & 0xfc) as u8;
        }
        Self { caps, msi, msix }
    }

    fn visible(&self) -> impl Iterator<Item = Cap> + '_ {
        self.caps
            .iter()
            .copied()
            .filter(|c| c.visible(self.msi, self.msix))
    }

    /// The first visible capability's offset, 0 if none.
    fn first(&self) -> u8 {
        self.visible().next().map_or(0, |c| c.offset)
    }

    /// For a visible capability at `offset`: the offset of the next visible
    /// one (0 at the end). `None` if `offset` heads no visible capability.
    fn next_after(&self, offset: u16) -> Option<u8> {
        let mut visible = self.visible();
        visible.find(|c| u16::from(c.offset) == offset)?;
        Some(visible.next().map_or(0, |c| c.offset))
    }

    /// Offset of the (visible) capability with ID `id`.
    fn find(&self, id: u8) -> Option<u16> {
        self.visible()
            .find(|c| c.id == id)
            .map(|c| u16::from(c.offset))
    }

    /// Offset of the (visible) PCI Express capability.
    fn pcie(&self) -> Option<u16> {
        self.find(regs::CAP_ID_PCIE)
    }
}

/// Per-function emulation state.
#[derive(Debug)]
struct Slot {
    vf: VirtualFunction,
    /// Per BAR dword: the guest wrote all-ones and reads the size mask.
    sizing: [bool; 6],
    /// Interrupt Line (§6.2.4): a scratch byte for the guest's software.
    interrupt_line: u8,
    /// The physical capability list, walked at the first access.
    caps: Option<CapList>,
}

/// What a BAR slot holds for the guest.
enum BarDword {
    /// Unimplemented: reads 0, writes ignored.
    Absent,
    /// The low dword (address 31:4 and flags) of a BAR.
    Low(VirtualBar),
    /// The high dword (address 63:32) of a 64-bit BAR.
    High(VirtualBar),
}

impl Slot {
    fn bar_dword(&self, index: usize) -> BarDword {
        match self.vf.bars[index] {
            Some(bar) => BarDword::Low(bar),
            None => match index.checked_sub(1).and_then(|i| self.vf.bars[i]) {
                Some(bar) if bar.kind == BarKind::Mem64 => BarDword::High(bar),
                _ => BarDword::Absent,
            },
        }
    }

    /// The value of BAR dword `index`: the guest address with its flags, or
    /// while sizing the size mask with its flags (§6.2.5.1).
    fn read_bar(&self, index: usize) -> u32 {
        let value = |bar: VirtualBar| {
            if self.sizing[index] {
                !(bar.size - 1)
            } else {
                bar.guest_addr.raw()
            }
        };
        match self.bar_dword(index) {
            BarDword::Absent => 0,
            BarDword::Low(bar) => {
                let mut flags = 0;
                if bar.kind == BarKind::Mem64 {
                    flags |= regs::BAR_MEM64;
                }
                if bar.prefetchable {
                    flags |= regs::BAR_PREFETCHABLE;
                }
                (value(bar) as u32 & !regs::BAR_FLAGS) | flags
            }
            BarDword::High(bar) => (value(bar) >> 32) as u32,
        }
    }

    /// A guest write to BAR dword `index`: all-ones (in the address bits)
    /// starts sizing; anything else ends it. The address never changes: a
    /// write of the current address is a no-op, any other is refused
    /// silently, as if the bits were read-only. Nothing reaches the device.
    fn write_bar(&mut self, index: usize, value: u32, bytes: u32) {
        // The address bits a device of this size implements; the others
        // are hardwired (§6.2.5.1), so writing ones there means nothing.
        let writable = match self.bar_dword(index) {
            BarDword::Absent => return,
            BarDword::Low(bar) => !(bar.size - 1) as u32 & !regs::BAR_FLAGS,
            BarDword::High(bar) => (!(bar.size - 1) >> 32) as u32,
        };
        // Bytes the guest did not write keep what the register shows now.
        let merged = (self.read_bar(index) & !bytes) | (value & bytes);
        self.sizing[index] = merged & writable == writable;
    }

    fn caps(&mut self, cfg: &dyn ConfigAccess) -> &CapList {
        let bdf = self.vf.phys;
        let (msi, msix) = (self.vf.msi, self.vf.msix.is_some());
        self.caps
            .get_or_insert_with(|| CapList::walk(cfg, bdf, msi, msix))
    }

    /// The guest's view of the dword at `offset` (dword aligned, < 0x1000).
    fn read_dword(&mut self, cfg: &dyn ConfigAccess, offset: u16) -> u32 {
        let bdf = self.vf.phys;
        match offset {
            regs::COMMAND => {
                let value = cfg.read32(bdf, offset);
                if self.caps(cfg).first() == 0 {
                    value & !(regs::STATUS_CAP_LIST << 16)
                } else {
                    value
                }
            }
            regs::HEADER => cfg.read32(bdf, offset) & !regs::HEADER_MULTI_FUNCTION,
            regs::BAR0..=regs::BAR5 => self.read_bar(usize::from((offset - regs::BAR0) / 4)),
            regs::CARDBUS_CIS | regs::ROM => 0,
            regs::CAP_PTR => u32::from(self.caps(cfg).first()),
            regs::INTERRUPT => (cfg.read32(bdf, offset) & !0xff) | u32::from(self.interrupt_line),
            regs::DEVICE_SPECIFIC..regs::CONFIG_SIZE => {
                let value = cfg.read32(bdf, offset);
                match self.caps(cfg).next_after(offset) {
                    Some(next) => (value & !0xff00) | (u32::from(next) << 8),
                    None => value,
                }
            }
            // PCIe Base 3.0 §7.9.1: an empty extended capability list is a
            // header of all zeros at 0x100.
            regs::CONFIG_SIZE.. => 0,
            _ => cfg.read32(bdf, offset),
        }
    }

    /// A guest write of the bytes `bytes` of `value` into the dword at
    /// `offset` (dword aligned, < 0x1000).
    fn write_dword(&mut self, cfg: &dyn ConfigAccess, offset: u16, value: u32, bytes: u32) {
        let bdf = self.vf.phys;
        if let Some(at) = self.caps(cfg).find(regs::CAP_ID_MSI) {
            if (at..at + msi::len(cfg.read32(bdf, at))).contains(&offset) {
                return msi::write(cfg, bdf, at, offset - at, value, bytes);
            }
        }
        match offset {
            regs::COMMAND => {
                let old = cfg.read32(bdf, offset);
                let old_cmd = old & 0xffff;
                let wanted = (old_cmd & !bytes) | (value & bytes);
                let cmd = ((old_cmd & !regs::CMD_GUEST) | (wanted & regs::CMD_GUEST))
                    & !regs::CMD_IO
                    & 0xffff;
                // Status is RW1C: writing back what was read would clear
                // every pending error, so only the guest's ones go out.
                let clear = value & bytes & (regs::STATUS_RW1C << 16);
                if cmd != old_cmd || clear != 0 {
                    cfg.write32(bdf, offset, cmd | clear);
                }
            }
            regs::BAR0..=regs::BAR5 => {
                self.write_bar(usize::from((offset - regs::BAR0) / 4), value, bytes)
            }
            regs::INTERRUPT if bytes & 0xff != 0 => self.interrupt_line = value as u8,
            regs::DEVICE_SPECIFIC..regs::CONFIG_SIZE
                if bytes & 0xffff_0000 != 0
                    && self.caps(cfg).find(regs::CAP_ID_MSIX) == Some(offset) =>
            {
                // Message Control: Enable and Function Mask are the
                // guest's; Table Size is read-only.
                let guest = u32::from(control::ENABLE | control::FUNCTION_MASK) << 16;
                let old = cfg.read32(bdf, offset);
                let wanted = (old & !bytes) | (value & bytes);
                let new = (old & !guest) | (wanted & guest);
                if new != old {
                    cfg.write32(bdf, offset, new);
                }
            }
            regs::DEVICE_SPECIFIC..regs::CONFIG_SIZE
                if bytes & 0xffff != 0
                    && self.caps(cfg).pcie().map(|p| p + regs::PCIE_DEVCTL) == Some(offset) =>
            {
                let old = cfg.read32(bdf, offset) & 0xffff;
                let wanted = (old & !bytes) | (value & bytes);
                let ctl = ((old & !regs::DEVCTL_GUEST) | (wanted & regs::DEVCTL_GUEST))
                    & !regs::DEVCTL_FLR;
                // Device Status (31:16) is RW1C: written as 0, untouched.
                if ctl != old {
                    cfg.write32(bdf, offset, ctl);
                }
            }
            // IDs, class, cache line/latency/header/BIST, CardBus CIS,
            // subsystem IDs, ROM, capability pointer, other capability
            // registers, extended space: read-only to the guest.
            _ => {}
        }
    }
}

/// The guest's writes to a visible MSI capability (PCI Local Bus 3.0
/// §6.8.1): the dwords after Message Control depend on its 64-bit address
/// and per-vector masking bits.
mod msi {
    use crate::drivers::pci::{msi_cap, Bdf, ConfigAccess};

    /// Message Control: Multiple Message Capable (bits 3:1), in the
    /// capability's first dword.
    const MMC_SHIFT: u32 = 17;
    /// Message Control: Multiple Message Enable (bits 6:4).
    const MME_SHIFT: u32 = 20;
    /// Message Control: Per-vector Masking Capable (bit 8).
    const PER_VECTOR_MASKING: u32 = 1 << 24;

    /// The capability's length in bytes, from its first dword `control`:
    /// 0xc, 4 more for a 64-bit address, 8 more for mask and pending bits.
    pub fn len(control: u32) -> u16 {
        let wide = if control & msi_cap::ADDR64 != 0 { 4 } else { 0 };
        let masks = if control & PER_VECTOR_MASKING != 0 {
            8
        } else {
            0
        };
        0xc + wide + masks
    }

    /// The guest writes the bytes `bytes` of `value` into the dword `rel`
    /// bytes into the MSI capability at `at` of `bdf`. Enable, Multiple
    /// Message Enable (never above Multiple Message Capable), the address
    /// (bits 1:0 stay 0), the 16-bit data and the mask bits are the
    /// guest's; the capability's ID, next pointer, read-only control bits,
    /// the pending bits and bytes past the capability do not change.
    pub fn write(cfg: &dyn ConfigAccess, bdf: Bdf, at: u16, rel: u16, value: u32, bytes: u32) {
        let control = cfg.read32(bdf, at);
        let wide = control & msi_cap::ADDR64 != 0;
        let data = if wide { 0xc } else { 0x8 };
        let writable = match rel {
            0 => msi_cap::ENABLE | msi_cap::MME,
            msi_cap::ADDRESS => !3,
            msi_cap::ADDRESS_HI if wide => u32::MAX,
            r if r == data => 0xffff,
            r if r == data + 4 && control & PER_VECTOR_MASKING != 0 => u32::MAX,
            _ => return,
        };
        let old = cfg.read32(bdf, at + rel);
        let mut new = (old & !(bytes & writable)) | (value & bytes & writable);
        if rel == 0 {
            let capable = (control >> MMC_SHIFT) & 7;
            let enabled = (new >> MME_SHIFT) & 7;
            if enabled > capable {
                new = (new & !msi_cap::MME) | (capable << MME_SHIFT);
            }
        }
        if new != old {
            cfg.write32(bdf, at + rel, new);
        }
    }
}

/// A guest's virtual PCI bus: configuration space behind its ECAM window.
#[derive(Debug)]
pub struct VirtualPciBus {
    slots: Vec<Slot>,
}

/// For a legal access (size 1, 2 or 4, naturally aligned), the mask of its
/// width (PCIe Base 3.0 §7.2.2: ECAM accesses do not cross a dword).
fn width_mask(offset: u64, size: u8) -> Option<u64> {
    matches!(size, 1 | 2 | 4)
        .then_some(())
        .filter(|()| offset.is_multiple_of(u64::from(size)))
        .map(|()| (1u64 << (8 * u32::from(size))) - 1)
}

impl VirtualPciBus {
    /// A bus where `functions[i]` is device `i + 1`, function 0 of bus 0.
    ///
    /// Panics (a hypervisor bug) on more than [`MAX_FUNCTIONS`] functions, a
    /// function listed twice, or a malformed [`VirtualBar`].
    pub fn new(functions: Vec<VirtualFunction>) -> Self {
        assert!(
            functions.len() <= MAX_FUNCTIONS,
            "vpci: {} functions, a virtual bus holds {MAX_FUNCTIONS}",
            functions.len()
        );
        for (i, f) in functions.iter().enumerate() {
            f.validate();
            assert!(
                functions[..i].iter().all(|g| g.phys != f.phys),
                "vpci: PCI {} assigned twice",
                f.phys
            );
        }
        let slots = functions
            .into_iter()
            .map(|vf| Slot {
                vf,
                sizing: [false; 6],
                interrupt_line: 0,
                caps: None,
            })
            .collect();
        Self { slots }
    }

    /// The guest's view in its reset state: no BAR being sized, interrupt
    /// line 0, the capability list read again from the functions (the
    /// functions themselves are reset by the hypervisor, not here).
    pub fn reset(&mut self) {
        for s in &mut self.slots {
            s.sizing = [false; 6];
            s.interrupt_line = 0;
            s.caps = None;
        }
    }

    /// The function behind ECAM `offset`, and the register offset in it.
    fn decode(&mut self, offset: u64) -> Option<(&mut Slot, u16)> {
        let bus = offset >> 20;
        let dev = (offset >> 15) & 0x1f;
        let func = (offset >> 12) & 0x7;
        if bus != 0 || func != 0 || dev == 0 {
            return None;
        }
        let slot = self.slots.get_mut(usize::try_from(dev - 1).ok()?)?;
        Some((slot, (offset & 0xfff) as u16))
    }

    /// A guest read of `size` bytes at `offset` in its ECAM window. Empty
    /// functions and illegal accesses read all-ones (PCI Local Bus 3.0
    /// §6.1: a read of a non-existent function ends in a master abort).
    pub fn read(&mut self, cfg: &dyn ConfigAccess, offset: u64, size: u8) -> u64 {
        let Some(mask) = width_mask(offset, size) else {
            return u64::MAX;
        };
        let Some((slot, reg)) = self.decode(offset) else {
            return mask;
        };
        let dword = slot.read_dword(cfg, reg & !3);
        (u64::from(dword) >> (8 * (reg & 3))) & mask
    }

    /// A guest write of the low `size` bytes of `value` at `offset` in its
    /// ECAM window. Writes to empty functions and illegal writes are
    /// dropped.
    pub fn write(&mut self, cfg: &dyn ConfigAccess, offset: u64, size: u8, value: u64) {
        let Some(mask) = width_mask(offset, size) else {
            return;
        };
        let Some((slot, reg)) = self.decode(offset) else {
            return;
        };
        let shift = 8 * (reg & 3);
        let bytes = (mask << shift) as u32;
        let value = ((value & mask) << shift) as u32;
        slot.write_dword(cfg, reg & !3, value, bytes);
    }

    /// The INTx pin (1..=4 for INTA..INTD) of function `index`, from its
    /// physical Interrupt Pin register (§6.2.4); `None` if it uses none.
    pub fn intx_pin(&self, cfg: &dyn ConfigAccess, index: usize) -> Option<u8> {
        let slot = self.slots.get(index)?;
        let pin = (cfg.read32(slot.vf.phys, regs::INTERRUPT) >> 8) as u8;
        (1..=4).contains(&pin).then_some(pin)
    }

    /// The virtual device number (on bus 0, function 0) of `phys`.
    pub fn guest_dev(&self, phys: Bdf) -> Option<u8> {
        let i = self.slots.iter().position(|s| s.vf.phys == phys)?;
        u8::try_from(i + 1).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::regs::*;
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// One physical access the code under test made.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Access {
        Read(Bdf, u16),
        Write(Bdf, u16, u32),
    }

    /// A physical function's 4 KiB of configuration space with writable and
    /// RW1C masks per dword.
    #[derive(Clone)]
    struct PhysFn {
        value: Vec<u32>,
        writable: Vec<u32>,
        rw1c: Vec<u32>,
    }

    impl PhysFn {
        fn new() -> Self {
            Self {
                value: vec![0; 1024],
                writable: vec![0; 1024],
                rw1c: vec![0; 1024],
            }
        }
        fn set(&mut self, offset: u16, value: u32, writable: u32, rw1c: u32) {
            let i = usize::from(offset / 4);
            self.value[i] = value;
            self.writable[i] = writable;
            self.rw1c[i] = rw1c;
        }
        fn get(&self, offset: u16) -> u32 {
            self.value[usize::from(offset / 4)]
        }
    }

    /// Physical configuration space: absent functions read all-ones, writes
    /// honour read-only, RW and RW1C bits (so BAR sizing works on the
    /// "hardware" too), and every access is logged.
    struct FakeCfg {
        fns: RefCell<BTreeMap<Bdf, PhysFn>>,
        log: RefCell<Vec<Access>>,
    }

    impl ConfigAccess for FakeCfg {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            assert!(
                offset.is_multiple_of(4) && offset < 0x1000,
                "bad physical read {offset:#x}"
            );
            self.log.borrow_mut().push(Access::Read(bdf, offset));
            self.fns
                .borrow()
                .get(&bdf)
                .map_or(u32::MAX, |f| f.get(offset))
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            assert!(
                offset.is_multiple_of(4) && offset < 0x1000,
                "bad physical write {offset:#x}"
            );
            self.log
                .borrow_mut()
                .push(Access::Write(bdf, offset, value));
            if let Some(f) = self.fns.borrow_mut().get_mut(&bdf) {
                let i = usize::from(offset / 4);
                let v = (f.value[i] & !f.writable[i]) | (value & f.writable[i]);
                f.value[i] = v & !(value & f.rw1c[i]);
            }
        }
    }

    const HOST_BRIDGE: Bdf = Bdf {
        bus: 0,
        dev: 0,
        func: 0,
    };
    const NVME: Bdf = Bdf {
        bus: 0,
        dev: 3,
        func: 0,
    };
    const EDU: Bdf = Bdf {
        bus: 0,
        dev: 4,
        func: 0,
    };
    /// On the same physical bus, not assigned.
    const OTHER: Bdf = Bdf {
        bus: 0,
        dev: 5,
        func: 0,
    };

    /// Physical BAR addresses.
    const NVME_BAR0: u64 = 0x80_0000_4000;
    const NVME_BAR2: u32 = 0x1000_1000;
    /// Guest addresses.
    const G_BAR0: u64 = 0x40_1000_4000;
    const G_BAR2: u64 = 0x1000_1000;

    const PM: u16 = 0x40;
    const MSI: u16 = 0x50;
    const PCIE: u16 = 0x70;
    const MSIX: u16 = 0xb0;

    /// Status: capability list, Received Master Abort, Detected Parity
    /// Error; command: memory, I/O (firmware left it on).
    const NVME_CMD_STATUS: u32 = ((STATUS_CAP_LIST | (1 << 13) | (1 << 15)) << 16) | 0x3;
    /// Device Control: MPS 256 B (bits 7:5 = 001), Max_Read 512 B (14:12 =
    /// 010), no snoop (11); Device Status: Correctable Error Detected (16).
    const NVME_DEVCTL: u32 = (1 << 16) | (2 << 12) | (1 << 11) | (1 << 5);

    /// A multi-function NVMe-like endpoint: BAR0/1 64-bit 16 KiB, BAR2
    /// 32-bit prefetchable 4 KiB, BAR4 I/O, ROM; capabilities PM -> MSI ->
    /// PCIe -> MSI-X; INTA.
    fn nvme() -> PhysFn {
        let mut f = PhysFn::new();
        f.set(0x00, 0x0010_1b36, 0, 0);
        f.set(0x04, NVME_CMD_STATUS, 0x0000_077f, STATUS_RW1C << 16);
        f.set(0x08, 0x0108_0202, 0, 0);
        f.set(0x0c, 0x0080_0010, 0x0000_ffff, 0);
        f.set(0x10, NVME_BAR0 as u32 | 0x4, 0xffff_c000, 0);
        f.set(0x14, (NVME_BAR0 >> 32) as u32, u32::MAX, 0);
        f.set(0x18, NVME_BAR2 | 0x8, 0xffff_f000, 0);
        f.set(0x20, 0x0000_c001, 0xffff_ff00, 0);
        f.set(0x28, 0x1234_5678, 0, 0);
        f.set(0x2c, 0x1100_1af4, 0, 0);
        f.set(0x30, 0xfff0_0000, 0xfff0_0001, 0);
        f.set(0x34, u32::from(PM), 0, 0);
        f.set(0x3c, 0x0000_010b, 0x0000_00ff, 0);
        f.set(
            PM,
            0x0003_0000 | (u32::from(MSI) << 8) | u32::from(CAP_ID_PM),
            0,
            0,
        );
        f.set(PM + 4, 0x0000_0008, 0x0000_8103, 0x8000);
        // MSI: 64-bit, per-vector masking, 4 vectors capable.
        f.set(
            MSI,
            0x0184_0000 | (u32::from(PCIE) << 8) | u32::from(CAP_ID_MSI),
            0x0071_0000,
            0,
        );
        f.set(MSI + 4, 0, 0xffff_fffc, 0);
        f.set(MSI + 8, 0, u32::MAX, 0);
        f.set(MSI + 0xc, 0, 0x0000_ffff, 0);
        f.set(MSI + 0x10, 0, 0xf, 0);
        f.set(MSI + 0x14, 0x2, 0, 0);
        f.set(
            PCIE,
            0x0002_0000 | (u32::from(MSIX) << 8) | u32::from(CAP_ID_PCIE),
            0,
            0,
        );
        f.set(PCIE + 4, 0x0000_8fc1, 0, 0);
        f.set(PCIE + 8, NVME_DEVCTL, 0x0000_ffff, 0x000f_0000);
        f.set(MSIX, 0x0040_0000 | u32::from(CAP_ID_MSIX), 0xc000_0000, 0);
        f.set(0x100, 0x1401_0001, 0, 0);
        f
    }

    /// A single-function `edu`-like endpoint: BAR0 32-bit 1 MiB, no
    /// capabilities, no interrupt pin.
    fn edu() -> PhysFn {
        let mut f = PhysFn::new();
        f.set(0x00, 0x11e8_1234, 0, 0);
        f.set(0x04, 0x0000_0002, 0x0000_0407, STATUS_RW1C << 16);
        f.set(0x08, 0x00ff_0010, 0, 0);
        f.set(0x10, 0x1010_0000, 0xfff0_0000, 0);
        f
    }

    fn fake() -> FakeCfg {
        let mut fns = BTreeMap::new();
        let mut host = PhysFn::new();
        host.set(0x00, 0x0008_1b36, 0, 0);
        host.set(0x04, 0x0000_0006, 0xffff, 0);
        fns.insert(HOST_BRIDGE, host);
        fns.insert(NVME, nvme());
        fns.insert(EDU, edu());
        let mut other = edu();
        other.set(0x10, 0x1020_0000, 0xfff0_0000, 0);
        fns.insert(OTHER, other);
        FakeCfg {
            fns: RefCell::new(fns),
            log: RefCell::new(Vec::new()),
        }
    }

    fn bus() -> VirtualPciBus {
        let mut nvme_bars = [None; 6];
        nvme_bars[0] = Some(VirtualBar {
            guest_addr: Ipa(G_BAR0),
            size: 0x4000,
            kind: BarKind::Mem64,
            prefetchable: false,
        });
        nvme_bars[2] = Some(VirtualBar {
            guest_addr: Ipa(G_BAR2),
            size: 0x1000,
            kind: BarKind::Mem32,
            prefetchable: true,
        });
        let mut edu_bars = [None; 6];
        edu_bars[0] = Some(VirtualBar {
            guest_addr: Ipa(0x1010_0000),
            size: 0x10_0000,
            kind: BarKind::Mem32,
            prefetchable: false,
        });
        VirtualPciBus::new(vec![
            VirtualFunction {
                phys: NVME,
                bars: nvme_bars,
                msix: None,
                msi: false,
            },
            VirtualFunction {
                phys: EDU,
                bars: edu_bars,
                msix: None,
                msi: false,
            },
        ])
    }

    /// ECAM offset of virtual 00:dev.0, register `reg`.
    fn at(dev: u64, reg: u64) -> u64 {
        (dev << 15) | reg
    }

    fn phys(cfg: &FakeCfg, bdf: Bdf, offset: u16) -> u32 {
        cfg.fns.borrow()[&bdf].get(offset)
    }

    fn writes(cfg: &FakeCfg) -> Vec<Access> {
        cfg.log
            .borrow()
            .iter()
            .copied()
            .filter(|a| matches!(a, Access::Write(..)))
            .collect()
    }

    /// Linux's `__pci_read_base`: save, write all-ones, read the mask,
    /// restore; for a 64-bit BAR the same on the high dword. Returns (the
    /// address it read, the size it computed).
    fn linux_size_bar(bus: &mut VirtualPciBus, cfg: &FakeCfg, dev: u64, index: u64) -> (u64, u64) {
        let pos = at(dev, 0x10 + 4 * index);
        let l = bus.read(cfg, pos, 4);
        bus.write(cfg, pos, 4, 0xffff_ffff);
        let sz = bus.read(cfg, pos, 4);
        bus.write(cfg, pos, 4, l);
        if sz == 0 {
            return (0, 0);
        }
        let (mut addr, mut mask) = (l & !0xf, sz & !0xf);
        if (l >> 1) & 3 == 2 {
            let l_hi = bus.read(cfg, pos + 4, 4);
            bus.write(cfg, pos + 4, 4, 0xffff_ffff);
            let sz_hi = bus.read(cfg, pos + 4, 4);
            bus.write(cfg, pos + 4, 4, l_hi);
            addr |= l_hi << 32;
            mask |= sz_hi << 32;
        } else {
            mask |= 0xffff_ffff_0000_0000;
        }
        (addr, (!mask).wrapping_add(1))
    }

    #[test]
    fn identity_registers_pass_through_without_multi_function() {
        let cfg = fake();
        let mut bus = bus();
        assert_eq!(bus.read(&cfg, at(1, 0x00), 4), 0x0010_1b36);
        assert_eq!(bus.read(&cfg, at(1, 0x02), 2), 0x0010);
        assert_eq!(bus.read(&cfg, at(1, 0x08), 4), 0x0108_0202);
        assert_eq!(bus.read(&cfg, at(1, 0x2c), 4), 0x1100_1af4);
        assert_eq!(bus.read(&cfg, at(2, 0x00), 4), 0x11e8_1234);
        // Header type 0x80 (multi-function) reads as 0: Linux would
        // otherwise scan functions 1..7 of the virtual device.
        assert_eq!(bus.read(&cfg, at(1, 0x0e), 1), 0x00);
        assert_eq!(bus.read(&cfg, at(1, 0x0c), 4), 0x0000_0010);
        // Writes to identity and header registers are dropped.
        bus.write(&cfg, at(1, 0x00), 4, 0xdead_beef);
        bus.write(&cfg, at(1, 0x0c), 4, 0xffff_ffff);
        bus.write(&cfg, at(1, 0x2c), 2, 0);
        assert_eq!(bus.read(&cfg, at(1, 0x00), 4), 0x0010_1b36);
        assert_eq!(phys(&cfg, NVME, 0x0c), 0x0080_0010);
        assert!(writes(&cfg).is_empty());
    }

    #[test]
    fn linux_sizing_finds_each_bar_and_leaves_it_in_place() {
        let cfg = fake();
        let mut bus = bus();
        assert_eq!(linux_size_bar(&mut bus, &cfg, 1, 0), (G_BAR0, 0x4000));
        assert_eq!(bus.read(&cfg, at(1, 0x10), 4), G_BAR0 as u32 as u64 | 0x4);
        assert_eq!(bus.read(&cfg, at(1, 0x14), 4), G_BAR0 >> 32);
        assert_eq!(linux_size_bar(&mut bus, &cfg, 1, 2), (G_BAR2, 0x1000));
        assert_eq!(bus.read(&cfg, at(1, 0x18), 4), G_BAR2 | 0x8, "prefetchable");
        assert_eq!(
            linux_size_bar(&mut bus, &cfg, 2, 0),
            (0x1010_0000, 0x10_0000)
        );
        // The size mask with its flags, until the next write.
        bus.write(&cfg, at(1, 0x10), 4, 0xffff_ffff);
        assert_eq!(bus.read(&cfg, at(1, 0x10), 4), 0xffff_c004);
        assert_eq!(bus.read(&cfg, at(1, 0x10), 4), 0xffff_c004);
        bus.write(&cfg, at(1, 0x14), 4, 0xffff_ffff);
        assert_eq!(bus.read(&cfg, at(1, 0x14), 4), 0xffff_ffff);
        bus.write(&cfg, at(1, 0x10), 4, G_BAR0 & 0xffff_ffff);
        assert_eq!(bus.read(&cfg, at(1, 0x10), 4), G_BAR0 as u32 as u64 | 0x4);
        // The physical BARs were never written.
        assert!(writes(&cfg).is_empty());
        assert_eq!(phys(&cfg, NVME, 0x10), NVME_BAR0 as u32 | 0x4);
        assert_eq!(phys(&cfg, NVME, 0x18), NVME_BAR2 | 0x8);
    }

    #[test]
    fn sizing_with_address_bits_only_or_partial_writes() {
        let cfg = fake();
        let mut bus = bus();
        // Some software writes the address bits only.
        bus.write(&cfg, at(1, 0x18), 4, 0xffff_fff0);
        assert_eq!(bus.read(&cfg, at(1, 0x18), 4), 0xffff_f008);
        // While sizing, rewriting all-ones in part keeps the mask; any other
        // value ends it. Only the implemented address bits count.
        bus.write(&cfg, at(2, 0x10), 4, 0xfff0_0000);
        assert_eq!(bus.read(&cfg, at(2, 0x10), 4), 0xfff0_0000);
        bus.write(&cfg, at(2, 0x12), 2, 0xffff);
        assert_eq!(bus.read(&cfg, at(2, 0x10), 4), 0xfff0_0000);
        assert_eq!(bus.read(&cfg, at(2, 0x12), 2), 0xfff0);
        bus.write(&cfg, at(2, 0x13), 1, 0x10);
        assert_eq!(bus.read(&cfg, at(2, 0x10), 4), 0x1010_0000);
        assert!(writes(&cfg).is_empty());
    }

    #[test]
    fn guest_cannot_move_a_bar() {
        let cfg = fake();
        let mut bus = bus();
        bus.write(&cfg, at(1, 0x10), 4, 0x2000_0000);
        bus.write(&cfg, at(1, 0x14), 4, 0x1);
        bus.write(&cfg, at(1, 0x18), 2, 0x0);
        bus.write(&cfg, at(1, 0x1b), 1, 0x20);
        // Moving another function's BAR onto the host's: refused too.
        bus.write(&cfg, at(2, 0x10), 4, 0x1020_0000);
        assert_eq!(bus.read(&cfg, at(1, 0x10), 4), G_BAR0 as u32 as u64 | 0x4);
        assert_eq!(bus.read(&cfg, at(1, 0x14), 4), G_BAR0 >> 32);
        assert_eq!(bus.read(&cfg, at(1, 0x18), 4), G_BAR2 | 0x8);
        assert_eq!(bus.read(&cfg, at(2, 0x10), 4), 0x1010_0000);
        assert!(writes(&cfg).is_empty());
    }

    #[test]
    fn absent_io_and_rom_bars_read_zero() {
        let cfg = fake();
        let mut bus = bus();
        // BAR3 is unimplemented, BAR4 is an I/O BAR on the device.
        for reg in [0x1c, 0x20, 0x24] {
            bus.write(&cfg, at(1, reg), 4, 0xffff_ffff);
            assert_eq!(bus.read(&cfg, at(1, reg), 4), 0, "BAR at {reg:#x}");
        }
        assert_eq!(linux_size_bar(&mut bus, &cfg, 1, 3).1, 0);
        // Expansion ROM and CardBus CIS: absent.
        bus.write(&cfg, at(1, 0x30), 4, 0xffff_f801);
        assert_eq!(bus.read(&cfg, at(1, 0x30), 4), 0);
        assert_eq!(bus.read(&cfg, at(1, 0x28), 4), 0);
        assert!(writes(&cfg).is_empty());
        assert_eq!(phys(&cfg, NVME, 0x30), 0xfff0_0000, "ROM never enabled");
    }

    #[test]
    fn command_passes_memory_and_bus_master_never_io() {
        let cfg = fake();
        let mut bus = bus();
        assert_eq!(bus.read(&cfg, at(1, 0x04), 2), 0x3);
        // What Linux's pci_enable_device + pci_set_master write.
        bus.write(&cfg, at(1, 0x04), 2, 0x0007);
        assert_eq!(phys(&cfg, NVME, 0x04) & 0xffff, 0x0006);
        assert_eq!(bus.read(&cfg, at(1, 0x04), 2), 0x0006);
        // Everything: only the allowed bits reach the device (MWI, bit 4,
        // and VGA snoop, bit 5, do not).
        bus.write(&cfg, at(1, 0x04), 2, 0xffff);
        assert_eq!(phys(&cfg, NVME, 0x04) & 0xffff, CMD_GUEST);
        // INTx Disable through the high byte alone.
        bus.write(&cfg, at(1, 0x05), 1, 0x00);
        assert_eq!(phys(&cfg, NVME, 0x04) & 0xffff, CMD_GUEST & 0xff);
        bus.write(&cfg, at(1, 0x04), 1, 0x00);
        assert_eq!(phys(&cfg, NVME, 0x04) & 0xffff, 0);
        // No command write ever carried the I/O bit; status errors survived.
        for a in writes(&cfg) {
            let Access::Write(bdf, off, v) = a else {
                unreachable!()
            };
            assert_eq!((bdf, off), (NVME, 0x04));
            assert_eq!(v & CMD_IO, 0);
            assert_eq!(v >> 16, 0, "command writes clear no status bits");
        }
        assert_eq!(phys(&cfg, NVME, 0x04) >> 16, NVME_CMD_STATUS >> 16);
    }

    #[test]
    fn status_errors_clear_by_writing_one() {
        let cfg = fake();
        let mut bus = bus();
        assert_eq!(bus.read(&cfg, at(1, 0x06), 2), 0xa010);
        // Clear Received Master Abort (13) only, keep the command.
        bus.write(&cfg, at(1, 0x06), 2, 1 << 13);
        assert_eq!(bus.read(&cfg, at(1, 0x06), 2), 0x8010);
        assert_eq!(phys(&cfg, NVME, 0x04) & 0xffff, 0x2, "I/O turned off");
        // Writing all-ones clears every error and nothing else.
        bus.write(&cfg, at(1, 0x04), 4, 0xffff_0002);
        assert_eq!(bus.read(&cfg, at(1, 0x04), 4), 0x0010_0002);
    }

    #[test]
    fn msi_and_msix_are_unlinked_from_the_capability_list() {
        let cfg = fake();
        let mut bus = bus();
        assert_eq!(bus.read(&cfg, at(1, 0x34), 1), u64::from(PM));
        assert_eq!(bus.read(&cfg, at(1, 0x34), 4), u64::from(PM));
        // Walk as Linux's pci_find_capability does.
        let mut seen = Vec::new();
        let mut ptr = bus.read(&cfg, at(1, 0x34), 1) & 0xfc;
        while ptr != 0 {
            let header = bus.read(&cfg, at(1, ptr), 2);
            seen.push((ptr, header & 0xff));
            ptr = (header >> 8) & 0xfc;
        }
        assert_eq!(
            seen,
            [
                (u64::from(PM), u64::from(CAP_ID_PM)),
                (u64::from(PCIE), u64::from(CAP_ID_PCIE))
            ]
        );
        // The next pointer, read as a byte and as part of a dword; the rest
        // of the header dword is physical.
        assert_eq!(bus.read(&cfg, at(1, u64::from(PM) + 1), 1), u64::from(PCIE));
        assert_eq!(bus.read(&cfg, at(1, u64::from(PM)), 4), 0x0003_7001);
        assert_eq!(bus.read(&cfg, at(1, u64::from(PCIE)), 4), 0x0002_0010);
        // Capability registers read through.
        assert_eq!(bus.read(&cfg, at(1, u64::from(PCIE) + 4), 4), 0x0000_8fc1);
    }

    /// The IDs of device 1's capabilities, walked as an OS does.
    fn capability_ids(bus: &mut VirtualPciBus, cfg: &FakeCfg) -> Vec<u64> {
        let mut seen = Vec::new();
        let mut ptr = bus.read(cfg, at(1, 0x34), 1) & 0xfc;
        while ptr != 0 {
            let header = bus.read(cfg, at(1, ptr), 2);
            seen.push(header & 0xff);
            ptr = (header >> 8) & 0xfc;
        }
        seen
    }

    #[test]
    fn msix_is_shown_for_a_routed_function_with_only_enable_and_mask_writable() {
        let cfg = fake();
        let mut bus = bus();
        bus.slots[0].vf.msix = MsixLayout::from_capability(0x0040_0011, 0x2000, 0x3000);
        assert_eq!(
            capability_ids(&mut bus, &cfg),
            [
                u64::from(CAP_ID_PM),
                u64::from(CAP_ID_PCIE),
                u64::from(CAP_ID_MSIX)
            ],
            "MSI stays hidden"
        );
        let ctl = at(1, u64::from(MSIX) + 2);
        assert_eq!(bus.read(&cfg, ctl, 2), 0x0040, "64 entries, off");
        // Enable with the function masked, then unmask; Table Size and
        // the reserved bits do not change.
        bus.write(&cfg, ctl, 2, 0xffff);
        assert_eq!(phys(&cfg, NVME, MSIX) >> 16, 0xc040);
        bus.write(&cfg, at(1, u64::from(MSIX)), 4, 0x8000_0000);
        assert_eq!(phys(&cfg, NVME, MSIX), 0x8040_0000 | u32::from(CAP_ID_MSIX));
        // A write to the capability's ID/next bytes alone is dropped.
        bus.write(&cfg, at(1, u64::from(MSIX)), 2, 0);
        assert_eq!(phys(&cfg, NVME, MSIX) >> 16, 0x8040);
    }

    #[test]
    fn msi_is_shown_for_a_routed_function_with_only_its_message_registers_writable() {
        let cfg = fake();
        let mut bus = bus();
        bus.slots[0].vf.msi = true;
        assert_eq!(
            capability_ids(&mut bus, &cfg),
            [
                u64::from(CAP_ID_PM),
                u64::from(CAP_ID_MSI),
                u64::from(CAP_ID_PCIE)
            ],
            "MSI-X stays hidden"
        );
        let msi = |off: u16| at(1, u64::from(MSI + off));
        // Enable with 8 vectors: Multiple Message Enable stops at the 4
        // the function is capable of; the read-only control bits stay.
        bus.write(&cfg, msi(2), 2, 0x0031);
        assert_eq!(phys(&cfg, NVME, MSI) >> 16, 0x0184 | 0x21);
        assert_eq!(bus.read(&cfg, msi(2), 2), 0x01a5);
        // A write of the ID and next pointer alone changes nothing.
        let before = writes(&cfg).len();
        bus.write(&cfg, msi(0), 2, 0);
        assert_eq!(writes(&cfg).len(), before);
        // The message: address (bits 1:0 reserved), upper address, 16-bit
        // data; then the mask bits. The pending bits are read-only.
        bus.write(&cfg, msi(4), 4, 0x0809_0043);
        bus.write(&cfg, msi(8), 4, 0x1);
        bus.write(&cfg, msi(0xc), 4, 0xdead_0007);
        bus.write(&cfg, msi(0x10), 1, 0xff);
        bus.write(&cfg, msi(0x14), 4, 0);
        assert_eq!(phys(&cfg, NVME, MSI + 4), 0x0809_0040);
        assert_eq!(phys(&cfg, NVME, MSI + 8), 0x1);
        assert_eq!(phys(&cfg, NVME, MSI + 0xc), 0x0007);
        assert_eq!(phys(&cfg, NVME, MSI + 0x10), 0xf);
        assert_eq!(phys(&cfg, NVME, MSI + 0x14), 0x2);
        assert_eq!(bus.read(&cfg, msi(0xc), 2), 0x0007);
        // Disable: only Enable changes.
        bus.write(&cfg, msi(2), 1, 0x20);
        assert_eq!(phys(&cfg, NVME, MSI) >> 16, 0x01a4);
        // The capability after it is untouched by the MSI emulation.
        bus.write(&cfg, at(1, u64::from(PCIE) + 8), 2, 0xffff);
        assert_eq!(
            phys(&cfg, NVME, PCIE + 8) & 0xffff,
            (NVME_DEVCTL & 0xffff) | 0x1f
        );
    }

    #[test]
    fn capability_writes_are_dropped_except_device_control() {
        let cfg = fake();
        let mut bus = bus();
        // Enabling MSI / MSI-X (even found by offset) does nothing.
        bus.write(&cfg, at(1, u64::from(MSI) + 2), 2, 0x0001);
        bus.write(&cfg, at(1, u64::from(MSI) + 4), 4, 0xfee0_0000);
        bus.write(&cfg, at(1, u64::from(MSIX)), 4, 0xffff_ffff);
        // PM state change: dropped.
        bus.write(&cfg, at(1, u64::from(PM) + 4), 2, 0x0003);
        // Device Capabilities is read-only anyway, and the next pointer.
        bus.write(&cfg, at(1, u64::from(PCIE)), 4, 0);
        assert!(writes(&cfg).is_empty());

        // Device Control: error reporting enables and relaxed ordering pass;
        // MPS, MRRS, no-snoop and FLR stay; Device Status is not cleared.
        bus.write(&cfg, at(1, u64::from(PCIE) + 8), 2, 0xffff);
        let devctl = phys(&cfg, NVME, PCIE + 8);
        assert_eq!(devctl & 0xffff, (NVME_DEVCTL & 0xffff) | 0x1f);
        assert_eq!(devctl >> 16, NVME_DEVCTL >> 16);
        bus.write(&cfg, at(1, u64::from(PCIE) + 8), 1, 0x00);
        assert_eq!(phys(&cfg, NVME, PCIE + 8), NVME_DEVCTL);
        // Bytes of Device Status alone, or the control's high byte: nothing.
        let before = writes(&cfg).len();
        bus.write(&cfg, at(1, u64::from(PCIE) + 10), 2, 0xffff);
        bus.write(&cfg, at(1, u64::from(PCIE) + 9), 1, 0x80);
        assert_eq!(writes(&cfg).len(), before);
        assert_eq!(phys(&cfg, NVME, PCIE + 8), NVME_DEVCTL);
    }

    #[test]
    fn extended_space_is_an_empty_list() {
        let cfg = fake();
        let mut bus = bus();
        assert_eq!(bus.read(&cfg, at(1, 0x100), 4), 0);
        assert_eq!(bus.read(&cfg, at(1, 0xffc), 4), 0);
        bus.write(&cfg, at(1, 0x100), 4, 0xffff_ffff);
        assert!(writes(&cfg).is_empty());
        assert_eq!(phys(&cfg, NVME, 0x100), 0x1401_0001);
    }

    #[test]
    fn interrupt_line_is_scratch_and_pin_is_physical() {
        let cfg = fake();
        let mut bus = bus();
        assert_eq!(bus.read(&cfg, at(1, 0x3c), 1), 0);
        assert_eq!(bus.read(&cfg, at(1, 0x3d), 1), 1);
        bus.write(&cfg, at(1, 0x3c), 4, 0xffff_ff2a);
        assert_eq!(bus.read(&cfg, at(1, 0x3c), 4), 0x0000_012a);
        assert_eq!(bus.read(&cfg, at(2, 0x3c), 1), 0, "per function");
        bus.write(&cfg, at(1, 0x3d), 1, 4);
        assert_eq!(bus.read(&cfg, at(1, 0x3d), 1), 1);
        assert!(writes(&cfg).is_empty());
        assert_eq!(phys(&cfg, NVME, 0x3c), 0x0000_010b);
        assert_eq!(bus.intx_pin(&cfg, 0), Some(1));
        assert_eq!(bus.intx_pin(&cfg, 1), None);
        assert_eq!(bus.intx_pin(&cfg, 2), None);
    }

    #[test]
    fn empty_slots_and_bad_accesses_read_all_ones() {
        let cfg = fake();
        let mut bus = bus();
        for off in [
            at(0, 0),
            at(3, 0),
            at(31, 0),
            at(1, 0) | (1 << 12),
            at(1, 0) | (1 << 20),
            at(1, 0) | (0xff << 20),
            !3,
        ] {
            assert_eq!(bus.read(&cfg, off, 4), 0xffff_ffff, "{off:#x}");
            assert_eq!(bus.read(&cfg, off, 2), 0xffff, "{off:#x}");
            assert_eq!(bus.read(&cfg, off, 1), 0xff, "{off:#x}");
        }
        assert_eq!(bus.read(&cfg, at(1, 0), 8), u64::MAX);
        assert_eq!(bus.read(&cfg, at(1, 1), 2), u64::MAX);
        assert_eq!(bus.read(&cfg, at(1, 2), 4), u64::MAX);
        assert_eq!(bus.read(&cfg, at(1, 0), 3), u64::MAX);
        assert_eq!(bus.read(&cfg, at(1, 0), 0), u64::MAX);
        // The host bridge and unassigned functions were not even read.
        assert!(cfg.log.borrow().iter().all(|a| matches!(
            a,
            Access::Read(b, _) if *b == NVME || *b == EDU
        )));
        bus.write(&cfg, at(0, 0x04), 2, 0x7);
        bus.write(&cfg, at(1, 0x04), 8, 0x7);
        bus.write(&cfg, at(1, 0x05), 2, 0x7);
        assert!(writes(&cfg).is_empty());
    }

    #[test]
    fn devices_are_numbered_from_one() {
        let bus = bus();
        assert_eq!(bus.guest_dev(NVME), Some(1));
        assert_eq!(bus.guest_dev(EDU), Some(2));
        assert_eq!(bus.guest_dev(OTHER), None);
        assert_eq!(bus.guest_dev(HOST_BRIDGE), None);
    }

    #[test]
    fn no_visible_capability_clears_status_bit() {
        let cfg = fake();
        {
            let mut fns = cfg.fns.borrow_mut();
            let f = fns.get_mut(&NVME).unwrap();
            // MSI -> MSI-X only.
            f.set(0x34, u32::from(MSI), 0, 0);
            f.value[usize::from(MSI / 4)] = (u32::from(MSIX) << 8) | u32::from(CAP_ID_MSI);
        }
        let mut bus = bus();
        assert_eq!(bus.read(&cfg, at(1, 0x34), 1), 0);
        assert_eq!(bus.read(&cfg, at(1, 0x06), 2) & 0x10, 0);
        // edu has no list at all.
        assert_eq!(bus.read(&cfg, at(2, 0x34), 1), 0);
        assert_eq!(bus.read(&cfg, at(2, 0x06), 2) & 0x10, 0);
    }

    #[test]
    fn looping_capability_list_is_cut() {
        let cfg = fake();
        {
            let mut fns = cfg.fns.borrow_mut();
            let f = fns.get_mut(&NVME).unwrap();
            // PCIe points back to PM (a device bug, or a hostile device).
            f.value[usize::from(PCIE / 4)] =
                0x0002_0000 | (u32::from(PM) << 8) | u32::from(CAP_ID_PCIE);
        }
        let mut bus = bus();
        let mut ptr = bus.read(&cfg, at(1, 0x34), 1);
        let mut steps = 0;
        while ptr != 0 {
            ptr = bus.read(&cfg, at(1, ptr + 1), 1) & 0xfc;
            steps += 1;
            assert!(steps < 64, "virtual list loops");
        }
        assert_eq!(steps, 2);
    }

    #[test]
    #[should_panic(expected = "next slot")]
    fn mem64_bar_in_last_slot_is_a_bug() {
        let mut bars = [None; 6];
        bars[5] = Some(VirtualBar {
            guest_addr: Ipa(0x1000_0000),
            size: 0x1000,
            kind: BarKind::Mem64,
            prefetchable: false,
        });
        VirtualPciBus::new(vec![VirtualFunction {
            phys: NVME,
            bars,
            msix: None,
            msi: false,
        }]);
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn hostile_accesses_never_panic_or_escape() {
        let cfg = fake();
        let mut bus = bus();
        let initial = cfg.fns.borrow().clone();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            // Mostly the assigned devices' headers and capabilities, some
            // empty slots, other buses and functions, and wild offsets.
            let offset = match rng.below(8) {
                0 => rng.next(),
                1 => rng.below(1 << 28),
                2 => at(rng.below(4), rng.below(0x1000)),
                _ => at(1 + rng.below(2), rng.below(0x100)),
            };
            let size = [1, 2, 4, 4, 4, 8, 0, 3, 16, 255][rng.below(10) as usize];
            let value = match rng.below(4) {
                0 => u64::MAX,
                1 => 0,
                _ => rng.next(),
            };
            if rng.below(2) == 0 {
                bus.write(&cfg, offset, size, value);
            } else {
                let v = bus.read(&cfg, offset, size);
                if matches!(size, 1 | 2 | 4) && offset % u64::from(size) == 0 {
                    assert!(v < 1 << (8 * size), "{offset:#x}/{size}: {v:#x}");
                } else {
                    assert_eq!(v, u64::MAX);
                }
            }
        }
        let log = cfg.log.borrow();
        assert!(log.iter().any(|a| matches!(a, Access::Write(..))));
        for a in log.iter() {
            let (Access::Read(bdf, off) | Access::Write(bdf, off, _)) = *a;
            assert!(bdf == NVME || bdf == EDU, "touched {bdf}");
            assert!(off < 0x100, "physical extended space touched: {a:?}");
            if let Access::Write(_, off, v) = *a {
                assert!(
                    off == 0x04 || (bdf == NVME && off == PCIE + 8),
                    "wrote {bdf} {off:#x}"
                );
                if off == 0x04 {
                    assert_eq!(v & CMD_IO, 0, "I/O space enabled");
                } else {
                    assert_eq!(v & (DEVCTL_FLR | 0xffff_0000), 0);
                }
            }
        }
        // Apart from command, status and device control, the physical
        // functions are exactly as they were; the others untouched.
        let now = cfg.fns.borrow();
        for (bdf, f) in initial.iter() {
            for i in 0..1024 {
                let off = (i * 4) as u16;
                if (*bdf == NVME || *bdf == EDU) && (off == 0x04 || off == PCIE + 8) {
                    continue;
                }
                assert_eq!(now[bdf].value[i], f.value[i], "{bdf} {off:#x}");
            }
        }
        // And the guest still sees its BARs where the hypervisor put them.
        drop(now);
        drop(log);
        assert_eq!(linux_size_bar(&mut bus, &cfg, 1, 0), (G_BAR0, 0x4000));
        assert_eq!(
            linux_size_bar(&mut bus, &cfg, 2, 0),
            (0x1010_0000, 0x10_0000)
        );
    }
}
