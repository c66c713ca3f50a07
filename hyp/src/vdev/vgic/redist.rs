//! The emulated GIC redistributors (GICR), one per vCPU, each two 64 KiB
//! frames: RD_base (control, identification, power) and SGI_base (the
//! vCPU's SGIs and PPIs) (IHI 0069D §8.10 register map, §8.11 register
//! descriptions).
//!
//! No virtual LPIs, so the frames are exactly 2 x 64 KiB. With LPIs
//! ([`VGic::enable_lpis`]) GICR_CTLR.EnableLPIs, GICR_PROPBASER and
//! GICR_PENDBASER work (see [`super::lpi`]); without them they are RAZ/WI
//! and GICR_TYPER.PLPIS = 0. The direct LPI registers (SETLPIR, CLRLPIR,
//! INVLPIR, INVALLR, SYNCR) are RAZ/WI either way, as is any reserved offset
//! and any access that is not a naturally aligned 32-bit access (bytes too
//! for IPRIORITYR, 64-bit for GICR_TYPER, PROPBASER and PENDBASER).

use super::{aligned, id_register, size_mask, Bank, Effects, VGic, BIT_BANKS, IIDR, NR_PRIVATE};

use crate::gicv3::gicd::BANK_BYTES;
use crate::gicv3::gicr::{
    CTLR, ICFGR, IGROUPR0 as SGI_BANKS, IIDR as IIDR_OFF, IPRIORITYR, TYPER, TYPER_LAST,
    TYPER_PLPIS, WAKER, WAKER_CHILDREN_ASLEEP, WAKER_PROCESSOR_SLEEP,
};
pub use crate::gicv3::gicr::{FRAME_SIZE as REDIST_FRAME_SIZE, STRIDE as REDIST_STRIDE};

/// GICR_TYPER.Processor_Number \[23:8\].
const TYPER_PROC_SHIFT: u32 = 8;
/// GICR_TYPER.Affinity_Value \[63:32\].
const TYPER_AFF_SHIFT: u32 = 32;

impl VGic {
    /// GICR_TYPER of `vcpu` (§8.11): Affinity_Value from its MPIDR,
    /// Processor_Number = vCPU index, Last on the final vCPU, PPInum = 0
    /// (16 PPIs), PLPIS/VLPIS/DirectLPI/DPGS/RVPEID = 0.
    fn gicr_typer(&self, vcpu: usize) -> u64 {
        let mut v = u64::from(self.vcpus[vcpu].aff) << TYPER_AFF_SHIFT;
        if self.has_lpis() {
            v |= TYPER_PLPIS;
        }
        v |= (vcpu as u64 & 0xffff) << TYPER_PROC_SHIFT;
        if vcpu + 1 == self.vcpus.len() {
            v |= TYPER_LAST;
        }
        v
    }

    /// GICR_WAKER (§8.11.26): ChildrenAsleep follows ProcessorSleep at
    /// once, which is what Linux's `gic_enable_redist` polls for.
    fn gicr_waker(&self, vcpu: usize) -> u32 {
        if self.vcpus[vcpu].sleep {
            WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP
        } else {
            0
        }
    }

    /// A guest read of `size` bytes at `offset` in `vcpu`'s redistributor
    /// (0..[`REDIST_STRIDE`]: RD_base then SGI_base; see
    /// [`VGic::redist_locate`]). Never fails: unimplemented or unsupported
    /// accesses, and vCPUs that do not exist, read as zero.
    pub fn redist_read(&self, vcpu: usize, offset: u64, size: u8) -> u64 {
        if vcpu >= self.vcpus.len() || !aligned(offset, size) || offset >= REDIST_STRIDE {
            return 0;
        }
        if let Some(v) = self.lpi_reg_read(vcpu, offset, size) {
            return v & size_mask(size);
        }
        let value = match (offset, size) {
            (TYPER, 8) => self.gicr_typer(vcpu),
            (TYPER, 4) => self.gicr_typer(vcpu) & 0xffff_ffff,
            (0x000c, 4) => self.gicr_typer(vcpu) >> 32,
            (IPRIORITYR..=0x1_041f, 1 | 4) => {
                let first = (offset - IPRIORITYR) as u32;
                u64::from(self.priority_read(vcpu, first, u32::from(size)))
            }
            (_, 4) => u64::from(self.redist_read32(vcpu, offset)),
            _ => 0,
        };
        value & size_mask(size)
    }

    fn redist_read32(&self, vcpu: usize, offset: u64) -> u32 {
        match offset {
            CTLR => self.gicr_ctlr(vcpu),
            IIDR_OFF => IIDR,
            WAKER => self.gicr_waker(vcpu),
            SGI_BANKS..=0x1_03ff if (offset - SGI_BANKS).is_multiple_of(BANK_BYTES) => {
                let bank = BIT_BANKS[((offset - SGI_BANKS) / BANK_BYTES) as usize];
                self.bank_read(vcpu, bank, 0)
            }
            o if o == ICFGR || o == ICFGR + 4 => {
                self.bank_read(vcpu, Bank::Config, (o - ICFGR) as u32 * 4)
            }
            o if o < REDIST_FRAME_SIZE => id_register(o).unwrap_or(0),
            _ => 0,
        }
    }

    /// A guest write of the low `size` bytes of `value` at `offset` in
    /// `vcpu`'s redistributor. Never fails: unimplemented or unsupported
    /// accesses, and vCPUs that do not exist, are ignored.
    pub fn redist_write(&mut self, vcpu: usize, offset: u64, size: u8, value: u64) -> Effects {
        if vcpu >= self.vcpus.len() || !aligned(offset, size) || offset >= REDIST_STRIDE {
            return Effects::none();
        }
        let value = value & size_mask(size);
        if self.lpi_reg_write(vcpu, offset, size, value) {
            return Effects::none();
        }
        match (offset, size) {
            (IPRIORITYR..=0x1_041f, 1 | 4) => {
                let first = (offset - IPRIORITYR) as u32;
                self.priority_write(vcpu, first, u32::from(size), value as u32)
            }
            (_, 4) => self.redist_write32(vcpu, offset, value as u32),
            _ => Effects::none(),
        }
    }

    fn redist_write32(&mut self, vcpu: usize, offset: u64, value: u32) -> Effects {
        match offset {
            CTLR => self.gicr_ctlr_write(vcpu, value),
            WAKER => {
                self.vcpus[vcpu].sleep = value & WAKER_PROCESSOR_SLEEP != 0;
                Effects::none()
            }
            SGI_BANKS..=0x1_03ff if (offset - SGI_BANKS).is_multiple_of(BANK_BYTES) => {
                let bank = BIT_BANKS[((offset - SGI_BANKS) / BANK_BYTES) as usize];
                self.bank_write(vcpu, bank, 0, value)
            }
            o if o == ICFGR || o == ICFGR + 4 => {
                let first = (o - ICFGR) as u32 * 4;
                debug_assert!(first < NR_PRIVATE);
                self.bank_write(vcpu, Bank::Config, first, value)
            }
            // IIDR, TYPER, STATUSR, the direct LPI registers (no
            // DirectLPI), IGRPMODR0 and NSACR (RAZ/WI with
            // DS = 1), the ID registers, reserved space.
            _ => Effects::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{booted, two_vcpus};
    use super::super::VGic;
    use super::REDIST_STRIDE;

    #[test]
    fn typer_names_the_vcpu_and_marks_the_last() {
        let g = VGic::new(&[0x8000_0000, 0x1_0000_0203], 0).unwrap();
        assert_eq!(g.redist_read(0, 0x8, 8), 0);
        assert_eq!(
            g.redist_read(1, 0x8, 8),
            0x0100_0203_0000_0000 | (1 << 8) | (1 << 4)
        );
        assert_eq!(g.redist_read(1, 0x8, 4), (1 << 8) | (1 << 4));
        assert_eq!(g.redist_read(1, 0xc, 4), 0x0100_0203);
        assert_eq!(g.redist_read(1, 0xffe8, 4), 0x3b);
        assert_eq!(g.redist_read(2, 0x8, 8), 0, "no such vCPU");
        assert_eq!(g.redist_read(0, 0x0, 4), 0, "GICR_CTLR: no LPIs, RWP = 0");
    }

    #[test]
    fn waker_handshake_follows_processor_sleep() {
        let mut g = two_vcpus();
        assert_eq!(g.redist_read(0, 0x14, 4), 0b110);
        let _ = g.redist_write(0, 0x14, 4, 0);
        assert_eq!(g.redist_read(0, 0x14, 4), 0);
        assert_eq!(g.redist_read(1, 0x14, 4), 0b110, "per vCPU");
        let _ = g.redist_write(0, 0x14, 4, 0xffff_ffff);
        assert_eq!(g.redist_read(0, 0x14, 4), 0b110);
    }

    #[test]
    fn locate_splits_the_region() {
        let g = two_vcpus();
        assert_eq!(g.redist_locate(0), Some((0, 0)));
        assert_eq!(g.redist_locate(0x1_0100), Some((0, 0x1_0100)));
        assert_eq!(g.redist_locate(REDIST_STRIDE + 0x14), Some((1, 0x14)));
        assert_eq!(g.redist_locate(2 * REDIST_STRIDE), None);
        assert_eq!(g.redist_locate(u64::MAX), None);
    }

    #[test]
    fn sgi_frame_is_per_vcpu() {
        let mut g = booted();
        let _ = g.redist_write(1, 0x1_0100, 4, 1 << 27);
        assert_eq!(g.redist_read(1, 0x1_0100, 4), 1 << 27);
        assert_eq!(g.redist_read(0, 0x1_0100, 4), 0);
        let _ = g.redist_write(1, 0x1_041b, 1, 0x20);
        assert_eq!(g.redist_read(1, 0x1_0418, 4), 0x20a0_a0a0);
        assert_eq!(g.redist_read(0, 0x1_0418, 4), 0xa0a0_a0a0);
        // SGIs are edge-triggered, RO; PPIs are configurable.
        let _ = g.redist_write(0, 0x1_0c00, 4, 0);
        assert_eq!(g.redist_read(0, 0x1_0c00, 4), 0xaaaa_aaaa);
        let _ = g.redist_write(0, 0x1_0c04, 4, 0xffff_ffff);
        assert_eq!(g.redist_read(0, 0x1_0c04, 4), 0xaaaa_aaaa);
        // ISPENDR0 pends an SGI; IGRPMODR0 and NSACR are RAZ/WI.
        let _ = g.redist_write(0, 0x1_0200, 4, 1 << 3);
        assert_eq!(g.redist_read(0, 0x1_0200, 4), 1 << 3);
        let _ = g.redist_write(0, 0x1_0d00, 4, 0xffff_ffff);
        let _ = g.redist_write(0, 0x1_0e00, 4, 0xffff_ffff);
        assert_eq!(
            g.redist_read(0, 0x1_0d00, 4) | g.redist_read(0, 0x1_0e00, 4),
            0
        );
        // The RD_base offsets of these registers are not them.
        let _ = g.redist_write(0, 0x100, 4, 0xffff_ffff);
        assert_eq!(g.redist_read(0, 0x100, 4), 0);
        assert_eq!(g.redist_read(0, 0x1_0100, 4), 0);
    }
}
