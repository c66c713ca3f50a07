//! MSI-X of an assigned function as its guest reaches it (PCI Local Bus 3.0
//! §6.8.2): where the table and the Pending Bit Array sit in the function's
//! BARs, and the emulation of the BAR pages that hold them.
//!
//! Those pages are left out of both stage-2 tables, so every guest access
//! to them traps and arrives here; the rest of the BAR stays mapped. Only
//! the hypervisor writes the physical table: a table access must be a
//! naturally aligned DWORD or QWORD (§6.8.2, "MSI-X Table Structure"),
//! reserved bits keep their value (Message Address\[1:0\], Vector Control
//! \[31:1\]), the PBA is read-only, and bytes of the trapped pages outside
//! the table and the PBA (the device's other registers) pass through.
//!
//! The message address and data are the guest's. That is safe without
//! checking them because a device's MSI is a DMA write through the SMMU:
//! its address is translated by the VM's own stage 2 (and stage 1, nested),
//! which reaches only the VM's RAM, its BARs and its vITS doorbell; and the
//! physical ITS knows the device by the requester ID the bus stamps on the
//! write, translating only the events the VM mapped through its vITS. An
//! entry aimed anywhere else is a DMA write the SMMU aborts, or one into
//! the VM's own memory.

use core::ops::Range;

/// Bytes per table entry (§6.8.2).
pub const ENTRY_BYTES: u64 = 16;
/// Pages trap whole: the stage-2 granule.
const PAGE: u64 = 4096;

/// Message Control, the upper half of the capability's first dword
/// (§6.8.2.3): MSI-X Enable \[15\], Function Mask \[14\], Table Size \[10:0\].
pub mod control {
    /// MSI-X Enable.
    pub const ENABLE: u16 = 1 << 15;
    /// Function Mask.
    pub const FUNCTION_MASK: u16 = 1 << 14;
    /// Table Size (N - 1).
    pub const TABLE_SIZE: u16 = 0x7ff;
}

/// Where a function's MSI-X structures are, from its capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Table entries.
    pub entries: u16,
    /// BAR index (BIR) holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (QWORD aligned).
    pub table_offset: u64,
    /// BAR index holding the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (QWORD aligned).
    pub pba_offset: u64,
}

impl MsixLayout {
    /// The layout the capability's three dwords describe: `header` (ID,
    /// next, Message Control), Table Offset/BIR, PBA Offset/BIR (§6.8.2.4,
    /// §6.8.2.5). `None` for a BIR that names no BAR (6 and 7 are
    /// reserved).
    pub fn from_capability(header: u32, table: u32, pba: u32) -> Option<Self> {
        let bir = |dw: u32| (dw & 7) as u8;
        let layout = Self {
            entries: ((header >> 16) as u16 & control::TABLE_SIZE) + 1,
            table_bar: bir(table),
            table_offset: u64::from(table & !7),
            pba_bar: bir(pba),
            pba_offset: u64::from(pba & !7),
        };
        (layout.table_bar < 6 && layout.pba_bar < 6).then_some(layout)
    }

    /// The table's bytes in its BAR.
    pub fn table(&self) -> Range<u64> {
        self.table_offset..self.table_offset + u64::from(self.entries) * ENTRY_BYTES
    }

    /// The PBA's bytes in its BAR: a bit per entry, in QWORDs.
    pub fn pba(&self) -> Range<u64> {
        self.pba_offset..self.pba_offset + u64::from(self.entries).div_ceil(64) * 8
    }

    /// The page-aligned ranges of `bar` that must trap: those holding the
    /// table or the PBA (one range when they share pages or sit in
    /// adjacent ones).
    pub fn trapped(&self, bar: u8) -> impl Iterator<Item = Range<u64>> {
        let pages = |r: Range<u64>| (r.start & !(PAGE - 1))..r.end.next_multiple_of(PAGE);
        let table = (self.table_bar == bar).then(|| pages(self.table()));
        let pba = (self.pba_bar == bar).then(|| pages(self.pba()));
        let merged = match (table, pba) {
            (Some(t), Some(p)) if t.start <= p.end && p.start <= t.end => {
                [Some(t.start.min(p.start)..t.end.max(p.end)), None]
            }
            (t, p) => [t, p],
        };
        merged.into_iter().flatten()
    }
}

/// The parts of `[0, len)` outside `holes` (sorted, disjoint): what of a
/// BAR is mapped when its MSI-X pages trap.
pub fn outside(len: u64, holes: &[Range<u64>]) -> alloc::vec::Vec<Range<u64>> {
    let mut at = 0;
    let mut pieces = alloc::vec::Vec::new();
    for h in holes {
        if h.start > at {
            pieces.push(at..h.start.min(len));
        }
        at = at.max(h.end);
    }
    if at < len {
        pieces.push(at..len);
    }
    pieces.retain(|r| !r.is_empty());
    pieces
}

/// The physical BAR behind a trapped range, as the hypervisor reaches it.
pub trait BarWindow {
    /// Reads `size` bytes (1, 2, 4 or 8) at `offset` in the BAR.
    fn read(&self, offset: u64, size: u8) -> u64;
    /// Writes the low `size` bytes of `value` at `offset` in the BAR.
    fn write(&self, offset: u64, size: u8, value: u64);
}

/// One trapped range of a BAR of one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsixPages {
    /// The function's MSI-X layout.
    pub layout: MsixLayout,
    /// The BAR.
    pub bar: u8,
    /// The trapped bytes of the BAR (page aligned).
    pub range: Range<u64>,
}

/// What one access touches.
enum Target {
    /// A table entry's field: entry, byte offset in it (0, 4, 8, 12).
    Table,
    /// The PBA.
    Pba,
    /// Neither: the device's own registers.
    Other,
}

impl MsixPages {
    fn target(&self, at: u64, size: u8) -> Target {
        let end = at + u64::from(size);
        let hits = |r: Range<u64>| at < r.end && r.start < end;
        if self.layout.table_bar == self.bar && hits(self.layout.table()) {
            Target::Table
        } else if self.layout.pba_bar == self.bar && hits(self.layout.pba()) {
            Target::Pba
        } else {
            Target::Other
        }
    }

    /// Whether an access of `size` at BAR offset `at` is one the table
    /// allows: an aligned DWORD or QWORD entirely inside it.
    fn table_access(&self, at: u64, size: u8) -> bool {
        matches!(size, 4 | 8)
            && at.is_multiple_of(u64::from(size))
            && at + u64::from(size) <= self.layout.table().end
            && at >= self.layout.table().start
    }

    /// A guest read of `size` bytes at `offset` in the trapped range.
    pub fn read(&self, w: &dyn BarWindow, offset: u64, size: u8) -> u64 {
        let Some(at) = self.bar_offset(offset, size) else {
            return 0;
        };
        match self.target(at, size) {
            Target::Table if !self.table_access(at, size) => 0,
            Target::Pba if !matches!(size, 4 | 8) || !at.is_multiple_of(u64::from(size)) => 0,
            _ => w.read(at, size),
        }
    }

    /// A guest write of the low `size` bytes of `value` at `offset` in the
    /// trapped range.
    pub fn write(&self, w: &dyn BarWindow, offset: u64, size: u8, value: u64) {
        let Some(at) = self.bar_offset(offset, size) else {
            return;
        };
        match self.target(at, size) {
            Target::Table if self.table_access(at, size) => {
                // Field by field, so each keeps its reserved bits.
                let mut field = at;
                while field < at + u64::from(size) {
                    let shift = 8 * (field - at);
                    let v = (value >> shift) as u32;
                    let old = || w.read(field, 4) as u32;
                    let v = match (field - self.layout.table_offset) % ENTRY_BYTES {
                        // Message Address: DWORD aligned, [1:0] reserved.
                        0 => (v & !3) | (old() & 3),
                        // Vector Control: only Mask Bit [0].
                        12 => (v & 1) | (old() & !1),
                        _ => v,
                    };
                    w.write(field, 4, u64::from(v));
                    field += 4;
                }
            }
            Target::Table | Target::Pba => {}
            Target::Other => w.write(at, size, value),
        }
    }

    /// The BAR offset of an access at `offset` in the range, if it is a
    /// legal size and lies inside.
    fn bar_offset(&self, offset: u64, size: u8) -> Option<u64> {
        let at = self.range.start.checked_add(offset)?;
        (matches!(size, 1 | 2 | 4 | 8)
            && at.is_multiple_of(u64::from(size))
            && at + u64::from(size) <= self.range.end)
            .then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    /// A BAR as bytes, recording writes.
    #[derive(Default)]
    struct Bar {
        bytes: RefCell<BTreeMap<u64, u8>>,
        writes: RefCell<Vec<(u64, u8, u64)>>,
    }

    impl BarWindow for Bar {
        fn read(&self, offset: u64, size: u8) -> u64 {
            let b = self.bytes.borrow();
            (0..u64::from(size)).fold(0, |v, i| {
                v | (u64::from(*b.get(&(offset + i)).unwrap_or(&0)) << (8 * i))
            })
        }
        fn write(&self, offset: u64, size: u8, value: u64) {
            self.writes.borrow_mut().push((offset, size, value));
            let mut b = self.bytes.borrow_mut();
            for i in 0..u64::from(size) {
                b.insert(offset + i, (value >> (8 * i)) as u8);
            }
        }
    }

    /// QEMU NVMe style: 65 entries in BAR0 at 0x2000, PBA at 0x3000.
    fn nvme() -> MsixLayout {
        MsixLayout::from_capability(0x0040_0011 | (64 << 16), 0x2000, 0x3000).unwrap()
    }

    #[test]
    fn layout_from_the_capability() {
        let l = nvme();
        assert_eq!(l.entries, 65);
        assert_eq!((l.table_bar, l.table_offset), (0, 0x2000));
        assert_eq!((l.pba_bar, l.pba_offset), (0, 0x3000));
        assert_eq!(l.table(), 0x2000..0x2000 + 65 * 16);
        assert_eq!(l.pba(), 0x3000..0x3010, "65 bits in two QWORDs");
        // Table and PBA in adjacent pages: one trapped range.
        let ranges =
            |l: &MsixLayout, bar| l.trapped(bar).map(|r| (r.start, r.end)).collect::<Vec<_>>();
        assert_eq!(ranges(&l, 0), [(0x2000, 0x4000)]);
        assert_eq!(l.trapped(1).count(), 0);
        let split = MsixLayout::from_capability(0x07ff_0011, 0x1_0001, 0x8004).unwrap();
        assert_eq!(split.entries, 2048);
        assert_eq!(ranges(&split, 1), [(0x1_0000, 0x1_8000)]);
        assert_eq!(ranges(&split, 4), [(0x8000, 0x9000)]);
        assert_eq!(MsixLayout::from_capability(0x11, 6, 0), None, "BIR 6");
    }

    #[test]
    fn the_rest_of_the_bar_stays_mapped() {
        let pairs =
            |v: Vec<Range<u64>>| v.into_iter().map(|r| (r.start, r.end)).collect::<Vec<_>>();
        let one = core::slice::from_ref(&(0x2000..0x4000));
        assert_eq!(pairs(outside(0x4000, one)), [(0, 0x2000)]);
        assert_eq!(
            pairs(outside(0x1_0000, &[0x1000..0x2000, 0x8000..0x9000])),
            [(0, 0x1000), (0x2000, 0x8000), (0x9000, 0x1_0000)]
        );
        assert!(outside(0x1000, core::slice::from_ref(&(0..0x1000))).is_empty());
        assert_eq!(pairs(outside(0x2000, &[])), [(0, 0x2000)]);
    }

    fn pages() -> MsixPages {
        MsixPages {
            layout: nvme(),
            bar: 0,
            range: 0x2000..0x4000,
        }
    }

    #[test]
    fn table_writes_keep_reserved_bits_and_need_aligned_dwords() {
        let (p, bar) = (pages(), Bar::default());
        bar.write(0x200c, 4, 0xffff_fff1); // reset state: masked, RsvdP ones
        bar.writes.borrow_mut().clear();
        // Entry 0: address 0x0809_0043 (low bits reserved), data 7.
        p.write(&bar, 0x0, 8, 0x0000_0000_0809_0043);
        p.write(&bar, 0x8, 4, 7);
        p.write(&bar, 0xc, 4, 0);
        assert_eq!(bar.read(0x2000, 4), 0x0809_0040);
        assert_eq!(bar.read(0x2008, 4), 7);
        assert_eq!(
            bar.read(0x200c, 4),
            0xffff_fff0,
            "only the Mask bit changed"
        );
        // Bytes, halves and misaligned QWORDs do not reach the table.
        let before = bar.writes.borrow().len();
        p.write(&bar, 0x10, 1, 0xff);
        p.write(&bar, 0x12, 2, 0xffff);
        p.write(&bar, 0x14, 8, u64::MAX);
        assert_eq!(bar.writes.borrow().len(), before);
        assert_eq!(p.read(&bar, 0x1, 1), 0);
        assert_eq!(p.read(&bar, 0x0, 4), 0x0809_0040);
        assert_eq!(p.read(&bar, 0x0, 8), 0x0809_0040, "QWORD read");
    }

    #[test]
    fn the_pba_is_read_only_and_other_registers_pass_through() {
        let (p, bar) = (pages(), Bar::default());
        bar.write(0x3000, 8, 0b101);
        bar.writes.borrow_mut().clear();
        p.write(&bar, 0x1000, 8, 0);
        assert!(bar.writes.borrow().is_empty(), "PBA writes are dropped");
        assert_eq!(p.read(&bar, 0x1000, 8), 0b101);
        // Past the table's last entry (65 * 16 = 0x410) and the PBA: the
        // device's own bytes.
        p.write(&bar, 0x500, 2, 0xbeef);
        assert_eq!(bar.read(0x2500, 2), 0xbeef);
        assert_eq!(p.read(&bar, 0x500, 2), 0xbeef);
        // Outside the trapped range or of an odd size: nothing.
        p.write(&bar, 0x2000, 4, 1);
        p.write(&bar, 0x1ffe, 4, 1);
        p.write(&bar, 0x600, 3, 1);
        assert_eq!(bar.writes.borrow().len(), 1);
        assert_eq!(p.read(&bar, 0x2000, 4), 0);
    }
}
