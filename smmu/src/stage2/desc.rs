//! The VMSAv8-64 stage-2 descriptor, 4 KiB granule, 48-bit output addresses.
//!
//! Layout from the Arm ARM (DDI 0487), D8.3 "Translation table descriptor
//! formats" (table, block and page descriptors) and D8.5 "Memory region
//! attributes" / D8.4 "Memory access control" for the stage-2 MemAttr, S2AP,
//! SH, AF and XN fields. The same format is read by the SMMU (IHI 0070 defers
//! to the Arm ARM for stage-2 tables) and by the CPU's stage 2.

use super::{MemType, S2Attrs};
use crate::addr::PhysAddr;
use tock_registers::{register_bitfields, LocalRegisterCopy};

register_bitfields![u64,
    /// A stage-2 translation table descriptor (Arm ARM D8.3).
    pub S2_DESC [
        /// Bit 0: the descriptor is valid; otherwise a walk that reaches it
        /// faults (translation fault) and every other bit is ignored.
        VALID OFFSET(0) NUMBITS(1) [],
        /// Bit 1: at levels 0..=2, 0 = block, 1 = table; at level 3, 1 = page
        /// (0 is reserved and treated as invalid).
        TYPE OFFSET(1) NUMBITS(1) [
            Block = 0,
            TableOrPage = 1
        ],
        /// Bits [5:2], MemAttr (stage 2, HCR_EL2.FWB / STE.S2FWB = 0): [3:2]
        /// outer and [1:0] inner cacheability for Normal memory; [3:2] = 0b00
        /// selects Device memory with [1:0] the Device type (D8.5.5).
        MEMATTR OFFSET(2) NUMBITS(4) [
            /// Device-nGnRE.
            DeviceNGnRE = 0b0001,
            /// Normal, outer and inner Write-Back cacheable.
            NormalWriteBack = 0b1111
        ],
        /// Bits [7:6], S2AP: stage-2 data access permissions (D8.4.3).
        S2AP OFFSET(6) NUMBITS(2) [
            NoAccess = 0b00,
            ReadOnly = 0b01,
            WriteOnly = 0b10,
            ReadWrite = 0b11
        ],
        /// Bits [9:8], SH: shareability of Normal memory (Device memory is
        /// always treated as Outer Shareable).
        SH OFFSET(8) NUMBITS(2) [
            NonShareable = 0b00,
            OuterShareable = 0b10,
            InnerShareable = 0b11
        ],
        /// Bit 10, AF: access flag. Always set: we never use access-flag
        /// faults (and the SMMU's S2AFFD/HTTU stay out of the picture).
        AF OFFSET(10) NUMBITS(1) [],
        /// Bits [47:12]: next-level table address (table descriptor) or output
        /// address (page; block with its low bits RES0: [29:12] at level 1,
        /// [20:12] at level 2).
        ADDR OFFSET(12) NUMBITS(36) [],
        /// Bit 54, XN (XN[1] with FEAT_XNX, where XN[0] at bit 53 stays 0):
        /// instruction fetches are not permitted at EL1 or EL0 (D8.4.4).
        XN OFFSET(54) NUMBITS(1) []
    ]
];

type Desc = LocalRegisterCopy<u64, S2_DESC::Register>;

/// What a descriptor means at a given level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Entry {
    /// Faults.
    Invalid,
    /// Points at the next-level table.
    Table(PhysAddr),
    /// A block (levels 1, 2) or page (level 3).
    Leaf { oa: PhysAddr, attrs: S2Attrs },
}

/// The invalid descriptor.
pub(super) const INVALID: u64 = 0;

/// Decodes `raw` found at `level`.
///
/// Only descriptors this module wrote are ever decoded; an encoding it never
/// produces is a broken invariant (memory corruption), hence the asserts.
pub(super) fn decode(raw: u64, level: u8) -> Entry {
    let d = Desc::new(raw);
    if !d.is_set(S2_DESC::VALID) {
        return Entry::Invalid;
    }
    let addr = PhysAddr(d.read(S2_DESC::ADDR) << 12);
    let table_or_page = d.matches_all(S2_DESC::TYPE::TableOrPage);
    if level < 3 && table_or_page {
        return Entry::Table(addr);
    }
    assert!(
        table_or_page || level == 1 || level == 2,
        "stage2: block descriptor {raw:#x} at level {level}"
    );
    let mem = match d.read_as_enum(S2_DESC::MEMATTR) {
        Some(S2_DESC::MEMATTR::Value::NormalWriteBack) => MemType::Normal,
        Some(S2_DESC::MEMATTR::Value::DeviceNGnRE) => MemType::Device,
        None => panic!("stage2: descriptor {raw:#x} has a MemAttr this module never writes"),
    };
    let ap = d.read(S2_DESC::S2AP);
    let attrs = S2Attrs {
        read: ap & 0b01 != 0,
        write: ap & 0b10 != 0,
        exec: !d.is_set(S2_DESC::XN),
        mem,
    };
    // A block's address bits below its size are RES0: read them as the
    // walker would use them, as zero.
    let block_mask = (1u64 << (12 + 9 * (3 - u32::from(level)))) - 1;
    Entry::Leaf {
        oa: PhysAddr(addr.0 & !block_mask),
        attrs,
    }
}

/// Whether `raw` is valid, without decoding the rest (the hot path of
/// unmapping).
pub(super) fn is_valid(raw: u64) -> bool {
    Desc::new(raw).is_set(S2_DESC::VALID)
}

/// Whether the valid descriptor `raw` at `level` is a block or a page.
pub(super) fn is_leaf(raw: u64, level: u8) -> bool {
    level == 3 || !Desc::new(raw).matches_all(S2_DESC::TYPE::TableOrPage)
}

/// A table descriptor pointing at the page-aligned table `next`.
pub(super) fn table(next: PhysAddr) -> u64 {
    let mut d = Desc::new(0);
    d.write(S2_DESC::VALID::SET + S2_DESC::TYPE::TableOrPage + S2_DESC::ADDR.val(next.0 >> 12));
    d.get()
}

/// A block (level 1 or 2) or page (level 3) descriptor mapping `oa`, which
/// the caller aligned to the level's block size.
pub(super) fn leaf(oa: PhysAddr, attrs: S2Attrs, level: u8) -> u64 {
    let kind = if level == 3 {
        S2_DESC::TYPE::TableOrPage
    } else {
        S2_DESC::TYPE::Block
    };
    let (memattr, sh) = match attrs.mem {
        MemType::Normal => (
            S2_DESC::MEMATTR::NormalWriteBack,
            S2_DESC::SH::InnerShareable,
        ),
        MemType::Device => (S2_DESC::MEMATTR::DeviceNGnRE, S2_DESC::SH::OuterShareable),
    };
    let ap = S2_DESC::S2AP.val(u64::from(attrs.read) | (u64::from(attrs.write) << 1));
    let xn = if attrs.exec {
        S2_DESC::XN::CLEAR
    } else {
        S2_DESC::XN::SET
    };
    let mut d = Desc::new(0);
    d.write(
        S2_DESC::VALID::SET
            + kind
            + memattr
            + ap
            + sh
            + S2_DESC::AF::SET
            + S2_DESC::ADDR.val(oa.0 >> 12)
            + xn,
    );
    d.get()
}
