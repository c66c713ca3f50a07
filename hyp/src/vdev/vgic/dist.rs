//! The emulated GIC distributor (GICD): its 64 KiB frame, decoded from the
//! guest's trapped accesses (IHI 0069D §8.8 register map, §8.9 register
//! descriptions).
//!
//! With affinity routing always on, the distributor handles SPIs only: the
//! SGI/PPI bits of its per-interrupt registers, ITARGETSR, SGIR, CPENDSGIR and
//! SPENDSGIR are RAZ/WI (§8.9, each register's "affinity routing enabled"
//! case), and the redistributors hold the private interrupts.
//!
//! Access sizes (§8.1 "GIC memory-mapped register access"): 32-bit
//! registers take naturally aligned 32-bit accesses, IPRIORITYR also
//! bytes, GICD_IROUTER<n> 64-bit accesses and 32-bit accesses to either half.
//! Anything else (reserved offsets, other sizes, misalignment) reads as zero
//! and ignores writes.

use super::{
    aligned, id_register, size_mask, Effects, VGic, BIT_BANKS, IIDR, MAX_SPI_INTID, NR_PRIVATE,
};

use crate::gicv3::gicd::{
    BANK_BYTES, CTLR, CTLR_ARE, CTLR_DS, CTLR_ENABLE_GRP0, CTLR_ENABLE_GRP1, ICFGR,
    IGROUPR as BANKS, IIDR as IIDR_OFF, IPRIORITYR, IROUTER, STATUSR, TYPER, TYPER2,
    TYPER_IDBITS_SHIFT, TYPER_LPIS,
};

/// GICD_TYPER.IDbits \[23:19\]: INTID bits minus one (10 bits: SPIs and
/// the special INTIDs only).
const TYPER_IDBITS: u32 = 9 << 19;
/// GICD_TYPER.A3V \[24\]: Aff3 is supported in IROUTER and SGIs.
const TYPER_A3V: u32 = 1 << 24;
/// GICD_TYPER.RSS \[26\]: SGI targets with Aff0 0-255 (the RS field).
const TYPER_RSS: u32 = 1 << 26;

impl VGic {
    /// GICD_TYPER (§8.9): ITLinesNumber \[4:0\] covers our SPIs (the
    /// INTIDs between the last SPI and the 32-multiple it advertises are
    /// unimplemented, RAZ/WI); CPUNumber \[7:5\] = 0 (only meaningful
    /// without affinity routing); SecurityExtn, MBIS, ESPI, NMI = 0;
    /// No1N = 0 (IRM = 1 is supported); A3V = 1; RSS = 1; without LPIs
    /// LPIS = 0 and IDbits = 9, with them LPIS = 1, num_LPIs = 0 and IDbits
    /// = the INTID bits [`VGic::enable_lpis`] gave it, minus one.
    fn gicd_typer(&self) -> u32 {
        let lines = self.nr_irqs().div_ceil(32) - 1;
        let ids = if self.has_lpis() {
            TYPER_LPIS | ((self.lpi_id_bits - 1) << TYPER_IDBITS_SHIFT)
        } else {
            TYPER_IDBITS
        };
        lines | ids | TYPER_A3V | TYPER_RSS
    }

    fn gicd_ctlr(&self) -> u32 {
        let mut v = CTLR_ARE | CTLR_DS;
        if self.grp0 {
            v |= CTLR_ENABLE_GRP0;
        }
        if self.grp1 {
            v |= CTLR_ENABLE_GRP1;
        }
        v
    }

    /// A guest read of `size` bytes at `offset` in the distributor frame.
    /// Never fails: unimplemented or unsupported accesses read as zero.
    pub fn dist_read(&self, offset: u64, size: u8) -> u64 {
        if !aligned(offset, size) || offset >= super::DIST_SIZE {
            return 0;
        }
        let value = match (offset, size) {
            (IROUTER..=0x7fff, 4 | 8) => self.irouter_read(offset, size),
            (IPRIORITYR..=0x7ff, 1 | 4) => {
                let first = (offset - IPRIORITYR) as u32;
                if first < NR_PRIVATE {
                    0
                } else {
                    u64::from(self.priority_read(0, first, u32::from(size)))
                }
            }
            (_, 4) => u64::from(self.dist_read32(offset)),
            _ => 0,
        };
        value & size_mask(size)
    }

    fn dist_read32(&self, offset: u64) -> u32 {
        match offset {
            CTLR => self.gicd_ctlr(),
            TYPER => self.gicd_typer(),
            IIDR_OFF => IIDR,
            TYPER2 | STATUSR => 0,
            BANKS..=0x3ff => {
                let bank = BIT_BANKS[((offset - BANKS) / BANK_BYTES) as usize];
                let first = ((offset - BANKS) % BANK_BYTES) as u32 * 8;
                if first < NR_PRIVATE {
                    0
                } else {
                    self.bank_read(0, bank, first)
                }
            }
            ICFGR..=0xcff => {
                let first = (offset - ICFGR) as u32 * 4;
                if first < NR_PRIVATE {
                    0
                } else {
                    self.bank_read(0, super::Bank::Config, first)
                }
            }
            _ => id_register(offset).unwrap_or(0),
        }
    }

    /// A guest write of the low `size` bytes of `value` at `offset` in the
    /// distributor frame. Never fails: unimplemented or unsupported accesses
    /// are ignored.
    pub fn dist_write(&mut self, offset: u64, size: u8, value: u64) -> Effects {
        if !aligned(offset, size) || offset >= super::DIST_SIZE {
            return Effects::none();
        }
        let value = value & size_mask(size);
        match (offset, size) {
            (IROUTER..=0x7fff, 4 | 8) => self.irouter_write(offset, size, value),
            (IPRIORITYR..=0x7ff, 1 | 4) => {
                let first = (offset - IPRIORITYR) as u32;
                if first < NR_PRIVATE {
                    Effects::none()
                } else {
                    self.priority_write(0, first, u32::from(size), value as u32)
                }
            }
            (_, 4) => self.dist_write32(offset, value as u32),
            _ => Effects::none(),
        }
    }

    fn dist_write32(&mut self, offset: u64, value: u32) -> Effects {
        match offset {
            CTLR => {
                let grp0 = value & CTLR_ENABLE_GRP0 != 0;
                let grp1 = value & CTLR_ENABLE_GRP1 != 0;
                let mut fx = Effects::none();
                if (grp0, grp1) != (self.grp0, self.grp1) {
                    self.grp0 = grp0;
                    self.grp1 = grp1;
                    // Every vCPU's forwardable set may have changed.
                    fx.kick_mask(self.all_vcpus_mask());
                }
                fx
            }
            BANKS..=0x3ff => {
                let bank = BIT_BANKS[((offset - BANKS) / BANK_BYTES) as usize];
                let first = ((offset - BANKS) % BANK_BYTES) as u32 * 8;
                if first < NR_PRIVATE {
                    Effects::none()
                } else {
                    self.bank_write(0, bank, first, value)
                }
            }
            ICFGR..=0xcff => {
                let first = (offset - ICFGR) as u32 * 4;
                if first < NR_PRIVATE {
                    Effects::none()
                } else {
                    self.bank_write(0, super::Bank::Config, first, value)
                }
            }
            // TYPER, IIDR, TYPER2, STATUSR, ITARGETSR, IGRPMODR and NSACR
            // (RAZ/WI with DS = 1), SGIR/CPENDSGIR/SPENDSGIR (RAZ/WI with
            // ARE = 1), the ID registers, reserved space.
            _ => Effects::none(),
        }
    }

    /// The SPI of GICD_IROUTER at `offset` (64-bit slot), if implemented.
    fn irouter_intid(&self, offset: u64) -> Option<u32> {
        let n = ((offset - IROUTER) / 8) as u32;
        ((NR_PRIVATE..=MAX_SPI_INTID).contains(&n) && n < self.nr_irqs()).then_some(n)
    }

    fn irouter_read(&self, offset: u64, size: u8) -> u64 {
        let Some(intid) = self.irouter_intid(offset) else {
            return 0;
        };
        let v = self.irouter[(intid - NR_PRIVATE) as usize];
        if size == 4 && offset % 8 == 4 {
            v >> 32
        } else {
            v
        }
    }

    fn irouter_write(&mut self, offset: u64, size: u8, value: u64) -> Effects {
        let Some(intid) = self.irouter_intid(offset) else {
            return Effects::none();
        };
        let old = self.irouter[(intid - NR_PRIVATE) as usize];
        let new = match (size, offset % 8) {
            (8, _) => value,
            (_, 0) => (old & !0xffff_ffff) | value,
            _ => (old & 0xffff_ffff) | (value << 32),
        };
        let mut fx = Effects::none();
        self.set_irouter(intid, new, &mut fx);
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{booted, two_vcpus};
    use super::super::VGic;

    #[test]
    fn typer_describes_the_spis_and_features() {
        let typer = |n| VGic::new(&[0], n).unwrap().dist_read(0x4, 4);
        let features = (9 << 19) | (1 << 24) | (1 << 26);
        assert_eq!(typer(64), 2 | features);
        assert_eq!(typer(0), features);
        assert_eq!(typer(60), 2 | features);
        assert_eq!(typer(988), 31 | features);
        let g = two_vcpus();
        assert_eq!(g.dist_read(0x8, 4), 0, "IIDR");
        assert_eq!(g.dist_read(0xc, 4), 0, "TYPER2");
        assert_eq!(g.dist_read(0xffe8, 4), 0x3b, "PIDR2: ArchRev 3");
        let cidr: Vec<u64> = (0..4).map(|i| g.dist_read(0xfff0 + 4 * i, 4)).collect();
        assert_eq!(cidr, [0x0d, 0xf0, 0x05, 0xb1]);
    }

    #[test]
    fn ctlr_keeps_are_and_ds_set() {
        let mut g = two_vcpus();
        assert_eq!(g.dist_read(0x0, 4), 0x50);
        let fx = g.dist_write(0x0, 4, 0xffff_ffff);
        assert_eq!(fx.kick_bits(), 0b11);
        assert_eq!(g.dist_read(0x0, 4), 0x53);
        assert!(g.dist_write(0x0, 4, 0x3).is_empty(), "no change, no kick");
        let _ = g.dist_write(0x0, 4, 0);
        assert_eq!(g.dist_read(0x0, 4), 0x50);
        // A byte or 64-bit access to GICD_CTLR is not supported.
        let _ = g.dist_write(0x0, 1, 3);
        let _ = g.dist_write(0x0, 8, 3);
        assert_eq!(g.dist_read(0x0, 4), 0x50);
        assert_eq!(g.dist_read(0x0, 1), 0);
    }

    #[test]
    fn unimplemented_spis_are_raz_wi() {
        let mut g = VGic::new(&[0], 60).unwrap(); // SPIs 32..=91, TYPER says 95
        let _ = g.dist_write(0x108, 4, 0xffff_ffff);
        assert_eq!(g.dist_read(0x108, 4), 0x0fff_ffff);
        let _ = g.dist_write(0x45c, 4, 0xffff_ffff);
        assert_eq!(g.dist_read(0x45c, 4), 0);
        let _ = g.dist_write(0x6000 + 92 * 8, 8, 5);
        assert_eq!(g.dist_read(0x6000 + 92 * 8, 8), 0);
        assert!(g.inject_edge(92, 0).is_err());
    }

    #[test]
    fn set_and_clear_registers_touch_only_written_ones() {
        let mut g = booted();
        let _ = g.dist_write(0x104, 4, 0b1010);
        let _ = g.dist_write(0x104, 4, 0b0100);
        assert_eq!(g.dist_read(0x104, 4), 0b1110);
        assert_eq!(g.dist_read(0x184, 4), 0b1110, "ICENABLER reads the enables");
        let _ = g.dist_write(0x184, 4, 0b0010);
        assert_eq!(g.dist_read(0x104, 4), 0b1100);
        let _ = g.dist_write(0x204, 4, 0b1);
        let _ = g.dist_write(0x304, 4, 0b1);
        assert_eq!((g.dist_read(0x204, 4), g.dist_read(0x304, 4)), (1, 1));
        let _ = g.dist_write(0x284, 4, 0b1);
        let _ = g.dist_write(0x384, 4, 0b1);
        assert_eq!((g.dist_read(0x284, 4), g.dist_read(0x384, 4)), (0, 0));
        // The SGI/PPI copies in the distributor are RAZ/WI with ARE = 1.
        for off in [0x80, 0x100, 0x200, 0x300, 0x400, 0x41c, 0xc00, 0xc04] {
            let _ = g.dist_write(off, 4, 0xffff_ffff);
            assert_eq!(g.dist_read(off, 4), 0, "{off:#x}");
        }
        assert_eq!(g.redist_read(0, 0x1_0100, 4), 0, "vCPU 0 PPIs untouched");
    }

    #[test]
    fn priorities_are_byte_accessible() {
        let mut g = booted();
        let _ = g.dist_write(0x421, 1, 0x40);
        assert_eq!(g.dist_read(0x420, 4), 0xa0a0_40a0);
        assert_eq!(g.dist_read(0x421, 1), 0x40);
        let _ = g.dist_write(0x422, 2, 0xffff); // halfword: unsupported
        let _ = g.dist_write(0x420, 8, 0); // 64-bit: unsupported
        let _ = g.dist_write(0x423, 4, 0); // misaligned
        assert_eq!(g.dist_read(0x420, 4), 0xa0a0_40a0);
        assert_eq!(g.dist_read(0x422, 2), 0);
        // Upper value bits beyond the access size are ignored.
        let _ = g.dist_write(0x424, 1, 0x1234);
        assert_eq!(g.dist_read(0x424, 1), 0x34);
    }

    #[test]
    fn icfgr_has_one_writable_bit_per_spi() {
        let mut g = booted();
        let _ = g.dist_write(0xc08, 4, 0xffff_ffff);
        assert_eq!(g.dist_read(0xc08, 4), 0xaaaa_aaaa);
        let _ = g.dist_write(0xc08, 4, 0x8);
        assert_eq!(g.dist_read(0xc08, 4), 0x8);
    }

    #[test]
    fn irouter_keeps_its_fields_only() {
        let mut g = booted();
        let _ = g.dist_write(0x6000 + 32 * 8, 8, u64::MAX);
        assert_eq!(g.dist_read(0x6000 + 32 * 8, 8), 0xff_80ff_ffff);
        assert_eq!(g.dist_read(0x6000 + 32 * 8 + 4, 4), 0xff);
        assert_eq!(g.dist_read(0x6000 + 32 * 8, 4), 0x80ff_ffff);
        assert_eq!(g.dist_read(0x6000 + 32 * 8, 2), 0, "halfword: RAZ");
        assert_eq!(g.dist_read(0x6000 + 32 * 8 + 4, 8), 0, "misaligned");
        // Boot routing from linux_dist_init: vCPU 0.
        assert_eq!(g.dist_read(0x6000 + 33 * 8, 8), 0);
        let _ = g.dist_write(0x6000 + 31 * 8, 8, 1);
        assert_eq!(g.dist_read(0x6000 + 31 * 8, 8), 0, "IROUTER0-31 reserved");
    }
}
