//! The GICv3 ITS (IHI 0069 §6.2, registers §12.19): the register map, the
//! decoded GITS_TYPER, the table and command-queue base registers, and, in
//! the submodules, the commands ([`cmd`]), the command queue's ring
//! arithmetic ([`queue`]) and the sizes of the tables the driver gives the
//! ITS ([`table`]).
//!
//! The ITS turns a device's MSI (a write of an EventID to GITS_TRANSLATER,
//! tagged by the interconnect with the device's DeviceID) into a physical
//! LPI on a redistributor, looking the pair up in tables it keeps in
//! memory: the device table (DeviceID -> ITT), the device's interrupt
//! translation table (EventID -> LPI and collection) and the collection
//! table (collection -> redistributor).

pub mod cmd;
pub mod queue;
pub mod table;

use super::attrs::{AttrLayout, Cacheability, Shareability};
use smmu::addr::PhysAddr;
use tock_registers::{register_bitfields, LocalRegisterCopy};

/// GITS_CTLR, 32-bit.
pub const CTLR: u64 = 0x0000;
/// GITS_IIDR, 32-bit.
pub const IIDR: u64 = 0x0004;
/// GITS_TYPER, 64-bit.
pub const TYPER: u64 = 0x0008;
/// GITS_CBASER, 64-bit: the command queue.
pub const CBASER: u64 = 0x0080;
/// GITS_CWRITER, 64-bit: where software writes the next command.
pub const CWRITER: u64 = 0x0088;
/// GITS_CREADR, 64-bit: where the ITS reads the next command.
pub const CREADR: u64 = 0x0090;
/// GITS_BASER<n>, 64-bit each, n = 0..7.
pub const BASER: u64 = 0x0100;
/// Number of GITS_BASER<n> registers.
pub const BASER_COUNT: usize = 8;
/// Size of each of the ITS's two 64 KiB frames (control, translation).
pub const FRAME_SIZE: u64 = 0x1_0000;
/// GITS_TRANSLATER, 32-bit, in the translation frame: the doorbell a
/// device's MSI writes its EventID to.
pub const TRANSLATER: u64 = FRAME_SIZE + 0x0040;

/// GITS_CTLR.Enabled, bit \[0\].
pub const CTLR_ENABLED: u32 = 1 << 0;
/// GITS_CTLR.Quiescent, bit \[31\]: disabled and finished with memory.
pub const CTLR_QUIESCENT: u32 = 1 << 31;

register_bitfields![u64,
    /// GITS_TYPER (§12.19).
    pub TYPER [
        /// Physical, bit \[0\]: physical LPIs are supported.
        PHYSICAL OFFSET(0) NUMBITS(1) [],
        /// Virtual, bit \[1\]: virtual LPIs and direct injection (GICv4).
        VIRTUAL OFFSET(1) NUMBITS(1) [],
        /// ITT_entry_size, bits \[7:4\]: bytes per ITT entry minus one.
        ITT_ENTRY_SIZE OFFSET(4) NUMBITS(4) [],
        /// ID_bits, bits \[12:8\]: EventID bits minus one.
        ID_BITS OFFSET(8) NUMBITS(5) [],
        /// Devbits, bits \[17:13\]: DeviceID bits minus one.
        DEVBITS OFFSET(13) NUMBITS(5) [],
        /// PTA, bit \[19\]: RDbase is a physical address (1) or a
        /// processor number (0).
        PTA OFFSET(19) NUMBITS(1) [],
        /// HCC, bits \[31:24\]: collections held by the ITS itself.
        HCC OFFSET(24) NUMBITS(8) [],
        /// CIDbits, bits \[35:32\]: collection ID bits minus one, if CIL.
        CIDBITS OFFSET(32) NUMBITS(4) [],
        /// CIL, bit \[36\]: CIDbits is valid (else 16-bit collection IDs).
        CIL OFFSET(36) NUMBITS(1) []
    ],

    /// GITS_BASER<n> (§12.19).
    pub BASER [
        /// Size, bits \[7:0\]: pages minus one.
        SIZE OFFSET(0) NUMBITS(8) [],
        /// Page_Size, bits \[9:8\].
        PAGE_SIZE OFFSET(8) NUMBITS(2) [],
        /// Shareability, bits \[11:10\].
        SHAREABILITY OFFSET(10) NUMBITS(2) [],
        /// Physical_Address, bits \[47:12\] (4 KiB and 16 KiB pages).
        PA OFFSET(12) NUMBITS(36) [],
        /// With 64 KiB pages: address bits \[51:48\] in bits \[15:12\].
        PA_51_48 OFFSET(12) NUMBITS(4) [],
        /// With 64 KiB pages: address bits \[47:16\] in bits \[47:16\].
        PA_47_16 OFFSET(16) NUMBITS(32) [],
        /// Entry_Size, bits \[52:48\]: bytes per entry minus one (read-only).
        ENTRY_SIZE OFFSET(48) NUMBITS(5) [],
        /// OuterCache, bits \[55:53\].
        OUTER_CACHE OFFSET(53) NUMBITS(3) [],
        /// Type, bits \[58:56\] (read-only).
        TYPE OFFSET(56) NUMBITS(3) [],
        /// InnerCache, bits \[61:59\].
        INNER_CACHE OFFSET(59) NUMBITS(3) [],
        /// Indirect, bit \[62\]: a two-level table.
        INDIRECT OFFSET(62) NUMBITS(1) [],
        /// Valid, bit \[63\].
        VALID OFFSET(63) NUMBITS(1) []
    ],

    /// GITS_CBASER (§12.19).
    pub CBASER [
        /// Size, bits \[7:0\]: 4 KiB pages minus one.
        SIZE OFFSET(0) NUMBITS(8) [],
        /// Shareability, bits \[11:10\].
        SHAREABILITY OFFSET(10) NUMBITS(2) [],
        /// Physical_Address, bits \[51:12\]; bits \[15:12\] must be zero
        /// (the queue is 64 KiB aligned).
        PA OFFSET(12) NUMBITS(40) [],
        /// OuterCache, bits \[55:53\].
        OUTER_CACHE OFFSET(53) NUMBITS(3) [],
        /// InnerCache, bits \[61:59\].
        INNER_CACHE OFFSET(59) NUMBITS(3) [],
        /// Valid, bit \[63\].
        VALID OFFSET(63) NUMBITS(1) []
    ]
];

/// What GITS_TYPER says the ITS can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Typer {
    /// Physical LPIs are supported.
    pub physical: bool,
    /// Virtual LPIs are supported (GICv4).
    pub virtual_lpis: bool,
    /// Bytes per ITT entry.
    pub itt_entry_bytes: u32,
    /// EventID bits.
    pub event_id_bits: u32,
    /// DeviceID bits.
    pub device_id_bits: u32,
    /// MAPC and SYNC name redistributors by physical address (else by
    /// GICR_TYPER.Processor_Number).
    pub pta: bool,
    /// Collections the ITS holds without a collection table.
    pub hcc: u32,
    /// Collection ID bits (16 without CIL).
    pub collection_id_bits: u32,
}

impl Typer {
    /// Decodes a GITS_TYPER value.
    pub fn decode(value: u64) -> Self {
        let r = LocalRegisterCopy::<u64, TYPER::Register>::new(value);
        Self {
            physical: r.is_set(TYPER::PHYSICAL),
            virtual_lpis: r.is_set(TYPER::VIRTUAL),
            itt_entry_bytes: r.read(TYPER::ITT_ENTRY_SIZE) as u32 + 1,
            event_id_bits: r.read(TYPER::ID_BITS) as u32 + 1,
            device_id_bits: r.read(TYPER::DEVBITS) as u32 + 1,
            pta: r.is_set(TYPER::PTA),
            hcc: r.read(TYPER::HCC) as u32,
            collection_id_bits: if r.is_set(TYPER::CIL) {
                r.read(TYPER::CIDBITS) as u32 + 1
            } else {
                16
            },
        }
    }
}

/// GITS_BASER<n>.Page_Size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 0b00.
    Size4K,
    /// 0b01.
    Size16K,
    /// 0b10 (0b11 is reserved and treated as 64 KiB).
    Size64K,
}

impl PageSize {
    /// From the smallest to the largest: the order the driver tries them.
    pub const ALL: [PageSize; 3] = [Self::Size4K, Self::Size16K, Self::Size64K];

    /// Bytes per page.
    pub const fn bytes(self) -> usize {
        match self {
            Self::Size4K => 4 << 10,
            Self::Size16K => 16 << 10,
            Self::Size64K => 64 << 10,
        }
    }

    const fn bits(self) -> u64 {
        match self {
            Self::Size4K => 0,
            Self::Size16K => 1,
            Self::Size64K => 2,
        }
    }

    const fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => Self::Size4K,
            1 => Self::Size16K,
            _ => Self::Size64K,
        }
    }
}

/// GITS_BASER<n>.Type: what the table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableType {
    /// 0b000: no table behind this register.
    Unimplemented,
    /// 0b001: the device table.
    Devices,
    /// 0b010: vPEs (GICv4).
    Vpes,
    /// 0b100: the collection table.
    Collections,
    /// Reserved encodings.
    Reserved(u8),
}

impl TableType {
    const fn from_bits(bits: u64) -> Self {
        match bits & 7 {
            0 => Self::Unimplemented,
            1 => Self::Devices,
            2 => Self::Vpes,
            4 => Self::Collections,
            b => Self::Reserved(b as u8),
        }
    }

    const fn bits(self) -> u64 {
        match self {
            Self::Unimplemented => 0,
            Self::Devices => 1,
            Self::Vpes => 2,
            Self::Collections => 4,
            Self::Reserved(b) => b as u64 & 7,
        }
    }
}

/// A GITS_BASER<n> value, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baser {
    /// Valid: the ITS may use the table.
    pub valid: bool,
    /// Indirect: a two-level table (the driver uses flat ones).
    pub indirect: bool,
    /// InnerCache.
    pub inner_cache: Cacheability,
    /// OuterCache.
    pub outer_cache: Cacheability,
    /// Type (read-only).
    pub table_type: TableType,
    /// Bytes per entry (read-only).
    pub entry_bytes: u32,
    /// Physical address of the table, aligned to its page size.
    pub pa: PhysAddr,
    /// Shareability.
    pub shareability: Shareability,
    /// Page size.
    pub page_size: PageSize,
    /// Number of pages (1..=256).
    pub pages: u32,
}

/// Where GITS_BASER<n> keeps its memory attributes; Type and Entry_Size
/// are read-only.
pub const BASER_ATTRS: AttrLayout = AttrLayout {
    inner_shift: 59,
    outer_shift: 53,
    ignore: (0x1f << 48) | (7 << 56),
};

/// Where GITS_CBASER keeps its memory attributes.
pub const CBASER_ATTRS: AttrLayout = AttrLayout {
    inner_shift: 59,
    outer_shift: 53,
    ignore: 0,
};

impl Baser {
    /// Decodes a register value.
    pub fn decode(value: u64) -> Self {
        let r = LocalRegisterCopy::<u64, BASER::Register>::new(value);
        let page_size = PageSize::from_bits(r.read(BASER::PAGE_SIZE));
        let pa = match page_size {
            PageSize::Size64K => (r.read(BASER::PA_47_16) << 16) | (r.read(BASER::PA_51_48) << 48),
            _ => r.read(BASER::PA) << 12,
        };
        Self {
            valid: r.is_set(BASER::VALID),
            indirect: r.is_set(BASER::INDIRECT),
            inner_cache: Cacheability::from_bits(r.read(BASER::INNER_CACHE)),
            outer_cache: Cacheability::from_bits(r.read(BASER::OUTER_CACHE)),
            table_type: TableType::from_bits(r.read(BASER::TYPE)),
            entry_bytes: r.read(BASER::ENTRY_SIZE) as u32 + 1,
            pa: PhysAddr(pa),
            shareability: Shareability::from_bits(r.read(BASER::SHAREABILITY)),
            page_size,
            pages: r.read(BASER::SIZE) as u32 + 1,
        }
    }

    /// The register value. Address bits below the page size are dropped,
    /// as are address bits above 47 (above 51 with 64 KiB pages); `pages`
    /// is taken modulo 256 after subtracting one.
    pub fn encode(&self) -> u64 {
        let mut r = LocalRegisterCopy::<u64, BASER::Register>::new(0);
        let pa = self.pa.raw();
        match self.page_size {
            PageSize::Size64K => r.modify(
                BASER::PA_47_16.val((pa >> 16) & 0xffff_ffff)
                    + BASER::PA_51_48.val((pa >> 48) & 0xf),
            ),
            p => r.modify(BASER::PA.val((pa >> 12) & !((p.bytes() as u64 >> 12) - 1))),
        }
        r.modify(
            BASER::VALID.val(u64::from(self.valid))
                + BASER::INDIRECT.val(u64::from(self.indirect))
                + BASER::INNER_CACHE.val(self.inner_cache.bits())
                + BASER::OUTER_CACHE.val(self.outer_cache.bits())
                + BASER::TYPE.val(self.table_type.bits())
                + BASER::ENTRY_SIZE.val(u64::from(self.entry_bytes.saturating_sub(1)) & 0x1f)
                + BASER::SHAREABILITY.val(self.shareability.bits())
                + BASER::PAGE_SIZE.val(self.page_size.bits())
                + BASER::SIZE.val(u64::from(self.pages.saturating_sub(1)) & 0xff),
        );
        r.get()
    }
}

/// GITS_CBASER for a command queue of `pages` 4 KiB pages at `pa` (64 KiB
/// aligned), valid, outer cacheability same as inner.
pub fn cbaser(pa: PhysAddr, pages: u32, sh: Shareability, inner: Cacheability) -> u64 {
    let mut r = LocalRegisterCopy::<u64, CBASER::Register>::new(0);
    r.write(
        CBASER::VALID::SET
            + CBASER::INNER_CACHE.val(inner.bits())
            + CBASER::SHAREABILITY.val(sh.bits())
            + CBASER::PA.val(pa.raw() >> 12)
            + CBASER::SIZE.val(u64::from(pages.saturating_sub(1)) & 0xff),
    );
    r.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10's GITS_TYPER: Physical, ITT entries of 12 bytes, 16 EventID
    /// bits, 16 DeviceID bits, CIL with 16 collection ID bits, PTA = 0.
    const QEMU_TYPER: u64 = 1 | (11 << 4) | (15 << 8) | (15 << 13) | (15 << 32) | (1 << 36);

    #[test]
    fn typer_decodes_qemu() {
        let t = Typer::decode(QEMU_TYPER);
        assert_eq!(
            t,
            Typer {
                physical: true,
                virtual_lpis: false,
                itt_entry_bytes: 12,
                event_id_bits: 16,
                device_id_bits: 16,
                pta: false,
                hcc: 0,
                collection_id_bits: 16,
            }
        );
    }

    #[test]
    fn typer_field_positions() {
        let t = Typer::decode((1 << 19) | (3 << 24) | (1 << 1) | (7 << 32));
        assert!(t.pta, "PTA is bit 19");
        assert_eq!(t.hcc, 3, "HCC is bits [31:24]");
        assert!(t.virtual_lpis, "Virtual is bit 1");
        assert_eq!(t.collection_id_bits, 16, "CIDbits only counts with CIL");
        assert_eq!(Typer::decode((7 << 32) | (1 << 36)).collection_id_bits, 8);
        assert_eq!(Typer::decode(0).itt_entry_bytes, 1);
        assert_eq!(Typer::decode(0x1f << 13).device_id_bits, 32);
    }

    #[test]
    fn baser_field_positions() {
        let b = Baser {
            valid: true,
            indirect: false,
            inner_cache: Cacheability::RaWaWb,
            outer_cache: Cacheability::DeviceOrSameAsInner,
            table_type: TableType::Devices,
            entry_bytes: 8,
            pa: PhysAddr(0x4567_8000),
            shareability: Shareability::InnerShareable,
            page_size: PageSize::Size4K,
            pages: 3,
        };
        let v = b.encode();
        assert_eq!(v >> 63, 1, "Valid [63]");
        assert_eq!(v >> 62 & 1, 0, "Indirect [62]");
        assert_eq!(v >> 59 & 7, 7, "InnerCache [61:59]");
        assert_eq!(v >> 56 & 7, 1, "Type [58:56]");
        assert_eq!(v >> 53 & 7, 0, "OuterCache [55:53]");
        assert_eq!(v >> 48 & 0x1f, 7, "Entry_Size [52:48]");
        assert_eq!(
            v & 0x0000_ffff_ffff_f000,
            0x4567_8000,
            "Physical_Address [47:12]"
        );
        assert_eq!(v >> 10 & 3, 1, "Shareability [11:10]");
        assert_eq!(v >> 8 & 3, 0, "Page_Size [9:8]");
        assert_eq!(v & 0xff, 2, "Size [7:0] = pages - 1");
        assert_eq!(Baser::decode(v), b);
    }

    #[test]
    fn baser_64k_pages_keep_address_bits_51_48_low() {
        let b = Baser {
            valid: true,
            indirect: true,
            inner_cache: Cacheability::NonCacheable,
            outer_cache: Cacheability::DeviceOrSameAsInner,
            table_type: TableType::Collections,
            entry_bytes: 8,
            pa: PhysAddr(0x000a_0012_3456_0000),
            shareability: Shareability::NonShareable,
            page_size: PageSize::Size64K,
            pages: 256,
        };
        let v = b.encode();
        assert_eq!(v >> 12 & 0xf, 0xa, "PA[51:48] in bits [15:12]");
        assert_eq!(v & 0x0000_ffff_ffff_0000, 0x0012_3456_0000, "PA[47:16]");
        assert_eq!(v >> 8 & 3, 2, "64 KiB pages");
        assert_eq!(v >> 56 & 7, 4, "collections are type 0b100");
        assert_eq!(v & 0xff, 0xff, "256 pages");
        assert_eq!(v >> 62 & 1, 1, "Indirect");
        assert_eq!(Baser::decode(v), b);
    }

    #[test]
    fn baser_decodes_qemu_reset_value() {
        // QEMU resets GITS_BASER0 to Type = Devices, Page_Size = 64 KiB,
        // Entry_Size = 8 bytes; GITS_BASER1 likewise for collections.
        let d = Baser::decode((1 << 56) | (2 << 8) | (7 << 48));
        assert!(!d.valid);
        assert_eq!(d.table_type, TableType::Devices);
        assert_eq!(d.page_size, PageSize::Size64K);
        assert_eq!(d.entry_bytes, 8);
        assert_eq!(Baser::decode(4 << 56).table_type, TableType::Collections);
        assert_eq!(Baser::decode(3 << 56).table_type, TableType::Reserved(3));
        assert_eq!(Baser::decode(0).table_type, TableType::Unimplemented);
    }

    #[test]
    fn cbaser_field_positions() {
        let v = cbaser(
            PhysAddr(0x4321_0000),
            16,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        assert_eq!(v >> 63, 1, "Valid [63]");
        assert_eq!(v >> 59 & 7, 7, "InnerCache [61:59]");
        assert_eq!(v >> 53 & 7, 0, "OuterCache [55:53]");
        assert_eq!(
            v & 0x000f_ffff_ffff_f000,
            0x4321_0000,
            "Physical_Address [51:12]"
        );
        assert_eq!(v >> 10 & 3, 1, "Shareability [11:10]");
        assert_eq!(v & 0xff, 15, "Size [7:0] = 4 KiB pages - 1");
    }

    #[test]
    fn register_offsets() {
        assert_eq!(TRANSLATER, 0x1_0040);
        assert_eq!(BASER + 7 * 8, 0x138);
        assert_eq!((CTLR, IIDR, TYPER), (0, 4, 8));
        assert_eq!((CBASER, CWRITER, CREADR), (0x80, 0x88, 0x90));
    }
}
