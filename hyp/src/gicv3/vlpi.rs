//! Virtual LPIs (GICv4.0, IHI 0069 "Virtual LPIs" and the ITS's V*
//! commands): the tables a GIC with
//! direct injection reads for a VM and the redistributor registers that
//! make one of its vPEs resident, as pure values.
//!
//! For each VM whose MSIs the hypervisor injects directly: one virtual LPI
//! configuration table, shared by its vPEs (GICR_VPROPBASER, one byte per
//! vINTID from 8192, like the physical one), and per vPE a virtual pending
//! table (VMAPP's VPT and GICR_VPENDBASER, one bit per vINTID from 0, 64 KiB
//! aligned). The ITS's vPE table (GITS_BASER<n> of type vPEs) is a flat
//! table sized with [`super::its::table::flat_table`]. Everything lives in
//! hypervisor memory; `drivers::its` allocates it.
//!
//! A redistributor may cache the configuration of the virtual LPIs of the
//! vPE resident on it until INV or VINVALL says otherwise, as it may for
//! physical LPIs until INV or INVALL. The vPEs here never leave their redistributor,
//! so such a cache lives as long as the VM: [`StaleConfigs`] records which
//! redistributors may still hold an older byte of each vINTID, so that a
//! mapping or a move adds an INV exactly when one is needed.

use super::attrs::{AttrLayout, Cacheability, Shareability};
use super::intid::LPI_BASE;
use super::lpi::{self, config_byte};
use alloc::boxed::Box;
use alloc::vec;
use core::fmt;
use smmu::addr::PhysAddr;
use tock_registers::{register_bitfields, LocalRegisterCopy};

/// vPE ID bits of the vPE table the hypervisor gives the ITS (VMAPP's
/// vPEID is 16 bits).
pub const VPE_ID_BITS: u32 = 16;

/// The configuration byte of every virtual LPI that is disabled, whatever
/// its priority: RES1 bit \[1\] alone. A disabled vLPI is never presented,
/// so its priority does not matter, and one value for all of them means a
/// guest that maps an LPI it has not enabled yet (Linux does) changes no
/// byte, which saves an INV.
pub const DISABLED: u8 = 0b10;

/// Most vCPUs a VM with directly injected MSIs may have: [`StaleConfigs`]
/// keeps one bit per vCPU.
pub const MAX_VPES_PER_VM: usize = 8;

/// A VM's virtual LPI configuration table, as the ITS driver hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VlpiTable(pub u32);

/// The byte a virtual LPI's entry of the configuration table holds for a
/// guest priority and enable bit: the guest's priority and Enable when it
/// is enabled, [`DISABLED`] otherwise.
pub const fn table_byte(priority: u8, enabled: bool) -> u8 {
    if enabled {
        config_byte(priority, true)
    } else {
        DISABLED
    }
}

/// Bytes of a virtual LPI configuration table for vINTIDs of `id_bits` bits
/// (the same layout as the physical one).
pub const fn config_table_bytes(id_bits: u32) -> usize {
    lpi::config_table_bytes(id_bits)
}

/// Bytes of a virtual pending table for vINTIDs of `id_bits` bits: one bit
/// per INTID from 0; its first 1 KiB (INTIDs below 8192) is the
/// IMPLEMENTATION DEFINED area, zero when the vPE is first made resident.
pub const fn pending_table_bytes(id_bits: u32) -> usize {
    lpi::pending_table_bytes(id_bits)
}

/// Alignment of a virtual pending table (VMAPP VPT_addr and
/// GICR_VPENDBASER keep address bits \[51:16\]).
pub const PENDING_TABLE_ALIGN: usize = lpi::PENDING_TABLE_ALIGN;

/// VMAPP's VPT_size for vINTIDs of `id_bits` bits: bits minus one.
pub const fn vpt_size(id_bits: u32) -> u8 {
    (id_bits.saturating_sub(1) & 0x1f) as u8
}

register_bitfields![u64,
    /// GICR_VPENDBASER in GICv4.0 (§12.11): the resident vPE.
    pub VPENDBASER [
        /// InnerCache, bits \[9:7\].
        INNER_CACHE OFFSET(7) NUMBITS(3) [],
        /// Shareability, bits \[11:10\].
        SHAREABILITY OFFSET(10) NUMBITS(2) [],
        /// Physical_Address, bits \[51:16\]: the virtual pending table.
        PA OFFSET(16) NUMBITS(36) [],
        /// OuterCache, bits \[58:56\].
        OUTER_CACHE OFFSET(56) NUMBITS(3) [],
        /// Dirty, bit \[60\] (read-only): the redistributor is still
        /// reading or writing the table after Valid changed.
        DIRTY OFFSET(60) NUMBITS(1) [],
        /// PendingLast, bit \[61\]: after Valid was cleared, whether the vPE
        /// had an enabled virtual LPI pending.
        PENDING_LAST OFFSET(61) NUMBITS(1) [],
        /// IDAI, bit \[62\]: the IMPLEMENTATION DEFINED area of the table
        /// holds nothing the redistributor may use.
        IDAI OFFSET(62) NUMBITS(1) [],
        /// Valid, bit \[63\]: the vPE is resident.
        VALID OFFSET(63) NUMBITS(1) []
    ]
];

/// Where GICR_VPROPBASER keeps its memory attributes (GICR_PROPBASER's
/// layout).
pub const VPROPBASER_ATTRS: AttrLayout = lpi::PROPBASER_ATTRS;

/// Where GICR_VPENDBASER keeps its memory attributes; Dirty, PendingLast
/// and IDAI do not read back as written.
pub const VPENDBASER_ATTRS: AttrLayout = AttrLayout {
    inner_shift: 7,
    outer_shift: 56,
    ignore: (1 << 60) | (1 << 61) | (1 << 62),
};

/// GICR_VPROPBASER for a VM's virtual LPI configuration table at `pa`
/// (4 KiB aligned) covering vINTIDs of `id_bits` bits: GICR_PROPBASER's
/// layout (§12.11).
pub fn vpropbaser(pa: PhysAddr, id_bits: u32, sh: Shareability, inner: Cacheability) -> u64 {
    lpi::propbaser(pa, id_bits, sh, inner)
}

/// GICR_VPENDBASER for a vPE's zeroed virtual pending table at `pa`
/// (64 KiB aligned), not yet Valid, with IDAI set: the table's
/// IMPLEMENTATION DEFINED area has never been written by a redistributor.
pub fn vpendbaser(pa: PhysAddr, sh: Shareability, inner: Cacheability) -> u64 {
    let mut r = LocalRegisterCopy::<u64, VPENDBASER::Register>::new(0);
    r.write(
        VPENDBASER::INNER_CACHE.val(inner.bits())
            + VPENDBASER::SHAREABILITY.val(sh.bits())
            + VPENDBASER::PA.val(pa.raw() >> 16)
            + VPENDBASER::IDAI::SET,
    );
    r.get()
}

/// `vpendbaser` with Valid set: the value that makes the vPE resident.
pub fn resident(vpendbaser: u64) -> u64 {
    let mut r = LocalRegisterCopy::<u64, VPENDBASER::Register>::new(vpendbaser);
    r.modify(VPENDBASER::VALID::SET);
    r.get()
}

/// The value that makes the resident vPE non-resident, from the register's
/// current value `current`: Valid and PendingLast clear, the rest kept
/// (changing them with Valid is UNPREDICTABLE).
pub fn non_resident(current: u64) -> u64 {
    let mut r = LocalRegisterCopy::<u64, VPENDBASER::Register>::new(current);
    r.modify(VPENDBASER::VALID::CLEAR + VPENDBASER::PENDING_LAST::CLEAR + VPENDBASER::DIRTY::CLEAR);
    r.get()
}

/// What a GICR_VPENDBASER value says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpendbaserState {
    /// Valid: a vPE is resident.
    pub valid: bool,
    /// Dirty: the redistributor has not finished with the table.
    pub dirty: bool,
    /// PendingLast.
    pub pending_last: bool,
    /// The virtual pending table's address.
    pub pa: PhysAddr,
}

impl VpendbaserState {
    /// Decodes a register value.
    pub fn decode(value: u64) -> Self {
        let r = LocalRegisterCopy::<u64, VPENDBASER::Register>::new(value);
        Self {
            valid: r.is_set(VPENDBASER::VALID),
            dirty: r.is_set(VPENDBASER::DIRTY),
            pending_last: r.is_set(VPENDBASER::PENDING_LAST),
            pa: PhysAddr(r.read(VPENDBASER::PA) << 16),
        }
    }
}

/// The byte offset and bit of `vintid` in a virtual pending table.
pub const fn pending_bit(vintid: u32) -> (usize, u8) {
    ((vintid / 8) as usize, 1 << (vintid % 8))
}

/// Why a VM's vLPI bookkeeping cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VlpiError {
    /// More vCPUs than [`MAX_VPES_PER_VM`], or none.
    Vpes(usize),
}

impl fmt::Display for VlpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vpes(n) => write!(
                f,
                "{n} vCPUs: direct injection takes 1 to {MAX_VPES_PER_VM} per VM"
            ),
        }
    }
}

/// Which redistributors may hold an older configuration byte of each
/// vINTID of one VM than its table does, by vCPU (the vPE of vCPU `v` is
/// resident on one redistributor for good).
///
/// The table starts out uniform ([`DISABLED`]) before any vPE is mapped, so
/// nothing is stale at first. Writing a new byte makes every redistributor
/// stale for that vINTID ([`StaleConfigs::changed`]); an INV through an
/// event targeting vCPU `v`, or a VINVALL of its vPE, makes `v`'s fresh
/// again ([`StaleConfigs::refreshed`], [`StaleConfigs::refreshed_all`]).
/// Bounded: one byte per vINTID, whatever the guest does.
pub struct StaleConfigs {
    /// Bit `v` of entry `vintid - 8192`: vCPU `v`'s redistributor may hold
    /// an older byte.
    stale: Box<[u8]>,
    /// Bits of the VM's vCPUs.
    all: u8,
}

impl fmt::Debug for StaleConfigs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.stale.iter().filter(|&&b| b != 0).count();
        f.debug_struct("StaleConfigs")
            .field("stale_vintids", &n)
            .finish()
    }
}

impl StaleConfigs {
    /// Nothing stale, for a VM of `vcpus` vCPUs and vINTIDs of up to
    /// [`lpi::MAX_ID_BITS`] bits.
    pub fn new(vcpus: usize) -> Result<Self, VlpiError> {
        if vcpus == 0 || vcpus > MAX_VPES_PER_VM {
            return Err(VlpiError::Vpes(vcpus));
        }
        Ok(Self {
            stale: vec![0; config_table_bytes(lpi::MAX_ID_BITS)].into_boxed_slice(),
            all: ((1u16 << vcpus) - 1) as u8,
        })
    }

    fn entry(&mut self, vintid: u32) -> Option<&mut u8> {
        let i = vintid.checked_sub(LPI_BASE)? as usize;
        self.stale.get_mut(i)
    }

    fn bit(vcpu: usize) -> u8 {
        if vcpu < MAX_VPES_PER_VM {
            1 << vcpu
        } else {
            0
        }
    }

    /// Whether the redistributor of `vcpu` may hold an older byte of
    /// `vintid` than the table (then a mapping there needs an INV).
    /// Out-of-range vINTIDs and vCPUs are never stale (they have no byte).
    pub fn is_stale(&self, vintid: u32, vcpu: usize) -> bool {
        vintid
            .checked_sub(LPI_BASE)
            .and_then(|i| self.stale.get(i as usize))
            .is_some_and(|&b| b & Self::bit(vcpu) != 0)
    }

    /// The table's byte of `vintid` changed: every redistributor may hold
    /// the old one.
    pub fn changed(&mut self, vintid: u32) {
        let all = self.all;
        if let Some(e) = self.entry(vintid) {
            *e = all;
        }
    }

    /// An INV of an event mapping `vintid` to `vcpu`'s vPE completed.
    pub fn refreshed(&mut self, vintid: u32, vcpu: usize) {
        if let Some(e) = self.entry(vintid) {
            *e &= !Self::bit(vcpu);
        }
    }

    /// A VINVALL of `vcpu`'s vPE completed: its redistributor re-read
    /// every byte.
    pub fn refreshed_all(&mut self, vcpu: usize) {
        let keep = !Self::bit(vcpu);
        for e in self.stale.iter_mut() {
            *e &= keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gicv3::its::table::flat_table;
    use crate::gicv3::its::PageSize;

    #[test]
    fn table_bytes_canonicalise_disabled_lpis() {
        assert_eq!(table_byte(0xa0, true), 0xa3);
        assert_eq!(table_byte(0xa0, false), DISABLED);
        assert_eq!(table_byte(0x00, false), DISABLED);
        assert_eq!(table_byte(0xff, true), 0xff, "priority[1:0] dropped");
        assert_eq!(DISABLED & 1, 0, "Enable [0] clear");
        assert_eq!(DISABLED & 2, 2, "RES1 [1] set");
    }

    #[test]
    fn table_sizes_and_alignment() {
        // 14 vINTID bits: 8 KiB of configuration, 2 KiB pending per vPE.
        assert_eq!(config_table_bytes(14), 8192);
        assert_eq!(pending_table_bytes(14), 2048);
        assert_eq!(config_table_bytes(16), 57344);
        assert_eq!(pending_table_bytes(16), 8192);
        assert_eq!(PENDING_TABLE_ALIGN, 64 * 1024);
        assert_eq!(vpt_size(14), 13, "VPT_size = bits - 1");
        assert_eq!(vpt_size(16), 15);
        assert_eq!(
            pending_bit(8192),
            (1024, 1),
            "vINTID 8192: byte 1024, bit 0"
        );
        assert_eq!(pending_bit(8203), (1025, 1 << 3));
        assert_eq!(pending_bit(65535), (8191, 0x80), "the table's last bit");
    }

    #[test]
    fn vpe_table_is_one_page_for_the_machines_vcpus() {
        // QEMU: 8-byte vPE table entries, 64 KiB pages by default, 16 vPE ID
        // bits; at most 8 vCPUs on the machine.
        let t = flat_table(8, 7, VPE_ID_BITS, PageSize::Size4K).unwrap();
        assert_eq!((t.pages, t.ids), (1, 512));
        let t = flat_table(8, 7, VPE_ID_BITS, PageSize::Size64K).unwrap();
        assert_eq!((t.pages, t.ids), (1, 8192));
        assert!(flat_table(8, 1 << 16, VPE_ID_BITS, PageSize::Size64K).is_err());
    }

    #[test]
    fn vpropbaser_is_propbasers_layout() {
        let v = vpropbaser(
            PhysAddr(0x4567_8000),
            14,
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        assert_eq!(v & 0x1f, 13, "IDbits [4:0] = bits - 1");
        assert_eq!(v >> 7 & 7, 7, "InnerCache [9:7]");
        assert_eq!(v >> 10 & 3, 1, "Shareability [11:10]");
        assert_eq!(v & 0x000f_ffff_ffff_f000, 0x4567_8000, "PA [51:12]");
        assert_eq!(v >> 56 & 7, 0, "OuterCache [58:56]: same as inner");
    }

    #[test]
    fn vpendbaser_fields() {
        let v = vpendbaser(
            PhysAddr(0x000f_4321_0000),
            Shareability::InnerShareable,
            Cacheability::RaWaWb,
        );
        assert_eq!(v >> 7 & 7, 7, "InnerCache [9:7]");
        assert_eq!(v >> 10 & 3, 1, "Shareability [11:10]");
        assert_eq!(v & 0x000f_ffff_ffff_0000, 0x000f_4321_0000, "PA [51:16]");
        assert_eq!(v >> 62 & 1, 1, "IDAI [62]: nothing cached yet");
        assert_eq!(v >> 63, 0, "not Valid until made resident");
        assert_eq!(v & 0x7f, 0, "[6:0] RES0");
        assert_eq!(v >> 12 & 0xf, 0, "[15:12] RES0");
        let r = resident(v);
        assert_eq!(r, v | 1 << 63, "Valid [63], nothing else changes");
        let s = VpendbaserState::decode(r | 1 << 60 | 1 << 61);
        assert!(s.valid && s.dirty && s.pending_last);
        assert_eq!(s.pa, PhysAddr(0x000f_4321_0000));
        let off = non_resident(r | 1 << 61);
        assert_eq!(off, v, "Valid and PendingLast cleared, the rest kept");
        assert!(!VpendbaserState::decode(off).valid);
    }

    #[test]
    fn stale_configs_need_one_inv_per_redistributor() {
        let mut s = StaleConfigs::new(3).unwrap();
        assert!(
            !s.is_stale(8192, 0),
            "a fresh table: nothing cached differs"
        );
        s.changed(8200);
        for v in 0..3 {
            assert!(s.is_stale(8200, v), "every vPE may hold the old byte");
        }
        assert!(!s.is_stale(8201, 0), "only that vINTID");
        s.refreshed(8200, 1);
        assert!(s.is_stale(8200, 0) && !s.is_stale(8200, 1) && s.is_stale(8200, 2));
        s.changed(9000);
        s.refreshed_all(2);
        assert!(!s.is_stale(8200, 2) && !s.is_stale(9000, 2));
        assert!(s.is_stale(8200, 0) && s.is_stale(9000, 1));
        // No byte for these: never stale, and nothing panics.
        s.changed(8191);
        s.changed(1 << lpi::MAX_ID_BITS);
        assert!(!s.is_stale(8191, 0) && !s.is_stale(1 << lpi::MAX_ID_BITS, 0));
        assert!(!s.is_stale(8200, 3) && !s.is_stale(8200, 100), "not a vCPU");
        s.refreshed(u32::MAX, usize::MAX);
    }

    #[test]
    fn stale_configs_take_one_to_eight_vcpus() {
        assert_eq!(StaleConfigs::new(0).unwrap_err(), VlpiError::Vpes(0));
        assert_eq!(StaleConfigs::new(9).unwrap_err(), VlpiError::Vpes(9));
        let mut s = StaleConfigs::new(8).unwrap();
        s.changed(16383);
        assert!((0..8).all(|v| s.is_stale(16383, v)));
    }
}
