//! The GICv3 register map (Arm IHI 0069, chapter 12): offsets and fields of
//! the distributor (GICD_*) and redistributor (GICR_*) registers, once for
//! the physical driver (`drivers::gic`) and the emulation (`vdev::vgic`);
//! the LPI tables and their allocator ([`lpi`]) and the ITS's registers,
//! commands, command queue and tables ([`its`]), for the physical ITS
//! driver (`drivers::its`); and the GICv4 virtual LPI tables and registers
//! ([`vlpi`]). Everything here is pure and host-tested.

pub mod attrs;
pub mod its;
pub mod lpi;
pub mod vlpi;

/// INTID ranges (§2.2).
pub mod intid {
    /// The first special INTID (1020..=1023; 1023 is "no interrupt pending").
    pub const SPECIAL: u32 = 1020;
    /// The first LPI (§2.2: LPIs are INTIDs 8192 and up).
    pub const LPI_BASE: u32 = 8192;

    /// What an INTID acknowledged from ICC_IAR1_EL1 is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        /// 0..=15.
        Sgi,
        /// 16..=31.
        Ppi,
        /// 32..=1019.
        Spi,
        /// 1020..=1023: no interrupt to handle.
        Special,
        /// 1024..=8191: the extended PPI and SPI ranges and reserved IDs,
        /// none of which the hypervisor configures.
        Extended,
        /// 8192 and up.
        Lpi,
    }

    /// Classifies `intid`.
    pub const fn kind(intid: u32) -> Kind {
        match intid {
            0..=15 => Kind::Sgi,
            16..=31 => Kind::Ppi,
            32..SPECIAL => Kind::Spi,
            SPECIAL..=1023 => Kind::Special,
            1024..LPI_BASE => Kind::Extended,
            _ => Kind::Lpi,
        }
    }
}

/// Distributor registers, offsets from GICD_base (§12.9).
pub mod gicd {
    /// GICD_CTLR.
    pub const CTLR: u64 = 0x0000;
    /// GICD_TYPER.
    pub const TYPER: u64 = 0x0004;
    /// GICD_IIDR.
    pub const IIDR: u64 = 0x0008;
    /// GICD_TYPER2.
    pub const TYPER2: u64 = 0x000c;
    /// GICD_STATUSR.
    pub const STATUSR: u64 = 0x0010;
    /// GICD_IGROUPR<n>: the first of the bit-per-interrupt banks.
    pub const IGROUPR: u64 = 0x0080;
    /// GICD_ISENABLER<n>.
    pub const ISENABLER: u64 = 0x0100;
    /// GICD_ICENABLER<n>.
    pub const ICENABLER: u64 = 0x0180;
    /// GICD_ISPENDR<n>.
    pub const ISPENDR: u64 = 0x0200;
    /// Bytes of each bit-per-interrupt bank (32 registers of 32 INTIDs).
    pub const BANK_BYTES: u64 = 0x80;
    /// GICD_IPRIORITYR<n>, a byte per INTID.
    pub const IPRIORITYR: u64 = 0x0400;
    /// GICD_ICFGR<n>, two bits per INTID.
    pub const ICFGR: u64 = 0x0c00;
    /// GICD_IROUTER<n> for n = 0 (n < 32 is reserved), 64 bits per SPI.
    pub const IROUTER: u64 = 0x6000;

    /// GICD_CTLR.EnableGrp0, bit \[0\] (single Security state layout).
    pub const CTLR_ENABLE_GRP0: u32 = 1 << 0;
    /// GICD_CTLR.EnableGrp1 (EnableGrp1NS in the Non-secure view), bit \[1\].
    pub const CTLR_ENABLE_GRP1: u32 = 1 << 1;
    /// GICD_CTLR.ARE (ARE_NS in the Non-secure view), bit \[4\].
    pub const CTLR_ARE: u32 = 1 << 4;
    /// GICD_CTLR.DS, bit \[6\]: a single Security state.
    pub const CTLR_DS: u32 = 1 << 6;
    /// GICD_CTLR.RWP, bit \[31\]: a register write is pending.
    pub const CTLR_RWP: u32 = 1 << 31;

    /// GICD_TYPER.LPIS, bit \[17\]: the GIC supports LPIs.
    pub const TYPER_LPIS: u32 = 1 << 17;
    /// GICD_TYPER.IDbits \[23:19\]: INTID bits minus one.
    pub const TYPER_IDBITS_SHIFT: u32 = 19;

    /// INTID bits the GIC supports: GICD_TYPER.IDbits, bits \[23:19\], plus one.
    pub const fn typer_id_bits(typer: u32) -> u32 {
        ((typer >> TYPER_IDBITS_SHIFT) & 0x1f) + 1
    }

    /// Offset of the bit-per-interrupt register holding `intid` in the
    /// bank starting at `bank` (e.g. [`ISPENDR`]), and its bit.
    pub const fn bit(bank: u64, intid: u32) -> (u64, u32) {
        (bank + (intid / 32) as u64 * 4, 1 << (intid % 32))
    }
}

/// Redistributor registers, offsets from RD_base; the SGI_base frame
/// follows it, and on a GIC with virtual LPIs (GICv4) the VLPI_base frame
/// and a reserved one (§12.10, §12.11).
pub mod gicr {
    /// Size of each of a redistributor's 64 KiB frames.
    pub const FRAME_SIZE: u64 = 0x1_0000;
    /// RD_base + SGI_base: the distance between two redistributors.
    pub const STRIDE: u64 = 2 * FRAME_SIZE;
    /// RD_base, SGI_base, VLPI_base and a reserved frame: the distance
    /// between two redistributors that support virtual LPIs.
    pub const STRIDE_VLPI: u64 = 4 * FRAME_SIZE;
    /// GICR_CTLR.
    pub const CTLR: u64 = 0x0000;
    /// GICR_IIDR.
    pub const IIDR: u64 = 0x0004;
    /// GICR_TYPER, 64-bit.
    pub const TYPER: u64 = 0x0008;
    /// GICR_WAKER.
    pub const WAKER: u64 = 0x0014;
    /// GICR_PROPBASER, 64-bit: the LPI configuration table (fields in
    /// [`super::lpi`]).
    pub const PROPBASER: u64 = 0x0070;
    /// GICR_PENDBASER, 64-bit: this redistributor's LPI pending table.
    pub const PENDBASER: u64 = 0x0078;
    /// GICR_VPROPBASER (VLPI_base), 64-bit: the resident vPE's virtual LPI
    /// configuration table (fields in [`super::vlpi`]).
    pub const VPROPBASER: u64 = 2 * FRAME_SIZE + 0x0070;
    /// GICR_VPENDBASER (VLPI_base), 64-bit: the resident vPE's virtual
    /// pending table and whether a vPE is resident.
    pub const VPENDBASER: u64 = 2 * FRAME_SIZE + 0x0078;
    /// GICR_IGROUPR0 (SGI_base): the first bit-per-interrupt bank.
    pub const IGROUPR0: u64 = FRAME_SIZE + 0x0080;
    /// GICR_ISENABLER0.
    pub const ISENABLER0: u64 = FRAME_SIZE + 0x0100;
    /// GICR_ICENABLER0.
    pub const ICENABLER0: u64 = FRAME_SIZE + 0x0180;
    /// GICR_ICACTIVER0.
    pub const ICACTIVER0: u64 = FRAME_SIZE + 0x0380;
    /// GICR_IPRIORITYR0-7.
    pub const IPRIORITYR: u64 = FRAME_SIZE + 0x0400;
    /// GICR_ICFGR0 (SGIs) and GICR_ICFGR1 (PPIs).
    pub const ICFGR: u64 = FRAME_SIZE + 0x0c00;

    /// GICR_CTLR.EnableLPIs, bit \[0\].
    pub const CTLR_ENABLE_LPIS: u32 = 1 << 0;

    /// GICR_TYPER.PLPIS, bit \[0\]: physical LPIs are supported.
    pub const TYPER_PLPIS: u64 = 1 << 0;
    /// GICR_TYPER.VLPIS, bit \[1\]: virtual LPIs and their direct injection
    /// are supported (GICv4); the redistributor then has four frames.
    pub const TYPER_VLPIS: u64 = 1 << 1;
    /// GICR_TYPER.Last, bit \[4\]: the last redistributor of its region.
    pub const TYPER_LAST: u64 = 1 << 4;

    /// GICR_TYPER.Processor_Number, bits \[23:8\]: how an ITS with
    /// GITS_TYPER.PTA = 0 names this redistributor.
    pub const fn typer_processor_number(typer: u64) -> u16 {
        (typer >> 8) as u16
    }

    /// GICR_TYPER.Affinity_Value, bits \[63:32\]: Aff3.Aff2.Aff1.Aff0 of
    /// the PE this redistributor serves.
    pub const fn typer_affinity(typer: u64) -> u32 {
        (typer >> 32) as u32
    }

    /// The distance from this redistributor to the next one in its region:
    /// four frames when GICR_TYPER.VLPIS says it has the VLPI_base frame,
    /// else two (§12.10).
    pub const fn stride(typer: u64) -> u64 {
        if typer & TYPER_VLPIS != 0 {
            STRIDE_VLPI
        } else {
            STRIDE
        }
    }
    /// GICR_WAKER.ProcessorSleep, bit \[1\].
    pub const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
    /// GICR_WAKER.ChildrenAsleep, bit \[2\].
    pub const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
}

#[cfg(test)]
mod tests {
    use super::intid::{kind, Kind};
    use super::{gicd, gicr};

    #[test]
    fn intid_ranges() {
        assert_eq!(kind(0), Kind::Sgi);
        assert_eq!(kind(15), Kind::Sgi);
        assert_eq!(kind(16), Kind::Ppi);
        assert_eq!(kind(31), Kind::Ppi);
        assert_eq!(kind(32), Kind::Spi);
        assert_eq!(kind(1019), Kind::Spi);
        assert_eq!(kind(1020), Kind::Special);
        assert_eq!(kind(1023), Kind::Special);
        assert_eq!(kind(1024), Kind::Extended);
        assert_eq!(kind(8191), Kind::Extended);
        assert_eq!(kind(8192), Kind::Lpi);
        assert_eq!(kind(0xff_ffff), Kind::Lpi);
    }

    #[test]
    fn typer_fields() {
        // QEMU's GICD_TYPER: IDbits = 15 (16 bits), LPIS.
        let typer = (15 << 19) | gicd::TYPER_LPIS | 9;
        assert_eq!(gicd::typer_id_bits(typer), 16);
        // GICR_TYPER of the redistributor of CPU 3 (affinity 0.0.0.3),
        // Processor_Number 3, PLPIS, Last.
        let r = (3 << 32) | (3 << 8) | gicr::TYPER_LAST | gicr::TYPER_PLPIS;
        assert_eq!(gicr::typer_processor_number(r), 3);
        assert_eq!(gicr::typer_affinity(r), 3);
        assert_eq!(gicr::stride(r), 0x2_0000, "GICv3: RD_base and SGI_base");
        // QEMU's gic-version=4 redistributors: PLPIS and VLPIS, 256 KiB each.
        assert_eq!(gicr::stride(r | gicr::TYPER_VLPIS), 0x4_0000);
        assert_eq!(gicr::TYPER_VLPIS, 2, "VLPIS is bit 1");
        assert_eq!((gicr::VPROPBASER, gicr::VPENDBASER), (0x2_0070, 0x2_0078));
    }
}
