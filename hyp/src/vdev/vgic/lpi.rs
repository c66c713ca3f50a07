//! Locality-specific peripheral interrupts (LPIs) of the virtual GIC: the
//! redistributors' LPI registers and the state of each LPI the VM's virtual
//! ITS has mapped (IHI 0069 §5.1 "LPIs", §8.11 GICR_CTLR, GICR_PROPBASER,
//! GICR_PENDBASER).
//!
//! An LPI exists in the model only while an interrupt translation maps it
//! (the vITS calls [`VGic::map_lpi`] and [`VGic::unmap_lpi`]), so its state
//! is bounded by what the vITS lets the guest map, not by the 2^IDbits
//! INTIDs the guest's tables could describe. Each LPI targets one vCPU (its
//! collection's redistributor), is edge-triggered and Group 1, and takes its
//! priority and enable bit from the guest's LPI configuration table, which
//! the vITS reads when a command says so (MAPTI, MAPI, INV, INVALL): the
//! architecture lets a redistributor cache that table until then (§5.1.1).
//!
//! The pending table (GICR_PENDBASER) is recorded but not used: the model
//! holds pending state itself, as the architecture allows while
//! GICR_CTLR.EnableLPIs is 1 (§5.1.2), and the redistributors report no
//! direct LPI injection (GICR_TYPER.DirectLPI = 0), so INVLPIR, INVALLR,
//! SETLPIR and CLRLPIR are RAZ/WI and all LPI maintenance goes through the
//! ITS.
//!
//! Where the physical GIC delivers the VM's LPIs itself (GICv4 direct
//! injection, [`VGic::set_direct_lpis`]), their pending state is the
//! hardware's (the vPEs' virtual pending tables) and the model never lists
//! them; it still holds each LPI's target and configuration, from which
//! the hypervisor's own configuration table is kept
//! ([`VGic::lpi_hw_configs`]): an LPI is enabled there only while the
//! guest enables it and its vCPU's redistributor has LPIs on, so turning
//! them off stops delivery as it does here.

use super::{Effects, Irq, VGic, VgicError};
use crate::gicv3::gicr::{CTLR_ENABLE_LPIS, PENDBASER, PROPBASER};
use alloc::vec::Vec;
use smmu::addr::Ipa;

/// The first LPI INTID (§2.2).
pub const FIRST_LPI: u32 = 8192;

/// INTID bits of a vGIC with LPIs unless the machine asks for more
/// (`lpi_id_bits=`): 14, the fewest a GIC with LPIs has (GICD_TYPER.IDbits
/// = 13), 8192 LPIs, INTIDs 8192 to 16383, four times what the vITS lets
/// one device signal (2048 events). More would only make tables larger:
/// the virtual LPI tables of direct delivery have a byte and a bit for
/// each INTID, and an emulated GIC that walks the whole virtual pending
/// table on each acknowledge (QEMU's GICv4 does, a byte at a time) walks
/// 1 KiB for 14 bits and 7 KiB for 16.
pub const LPI_ID_BITS: u32 = crate::gicv3::lpi::MIN_ID_BITS;

/// GICR_PROPBASER fields kept: OuterCache \[58:56\], Physical_Address
/// \[51:12\], Shareability \[11:10\], InnerCache \[9:7\], IDbits \[4:0\].
const PROPBASER_MASK: u64 = (0x7 << 56) | (((1 << 40) - 1) << 12) | (0x3 << 10) | (0x7 << 7) | 0x1f;
/// GICR_PENDBASER fields kept: OuterCache \[58:56\], Physical_Address
/// \[51:16\], Shareability \[11:10\], InnerCache \[9:7\] (PTZ \[62\] is
/// write-only and reads as zero).
const PENDBASER_MASK: u64 = (0x7 << 56) | (((1 << 36) - 1) << 16) | (0x3 << 10) | (0x7 << 7);

/// An LPI configuration table entry (§5.1.1): priority \[7:2\], RES1 \[1\],
/// Enable \[0\].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LpiConfig(pub u8);

impl LpiConfig {
    /// The priority (the low two bits are zero: priority\[1:0\] are not
    /// held).
    pub const fn priority(self) -> u8 {
        self.0 & 0xfc
    }

    /// Whether the LPI is enabled.
    pub const fn enabled(self) -> bool {
        self.0 & 1 != 0
    }
}

/// One mapped LPI.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lpi {
    /// The vCPU whose redistributor it targets.
    pub(super) vcpu: u8,
    pub(super) irq: Irq,
}

impl Lpi {
    /// Its configuration as last read: priority and enable bit.
    fn config(&self) -> LpiConfig {
        LpiConfig(self.irq.priority | u8::from(self.irq.enabled))
    }
}

/// A vCPU's redistributor LPI registers.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RedistLpi {
    /// GICR_CTLR.EnableLPIs.
    pub(super) enabled: bool,
    pub(super) propbaser: u64,
    pub(super) pendbaser: u64,
}

impl VGic {
    /// Gives the vGIC LPIs (a VM with a virtual ITS) with INTIDs of
    /// `id_bits` bits ([`LPI_ID_BITS`] to 16): GICD_TYPER reports LPIS = 1
    /// and IDbits = `id_bits` - 1, each GICR_TYPER PLPIS = 1, and the
    /// redistributors' LPI registers work.
    pub fn enable_lpis(&mut self, id_bits: u32) {
        self.lpi_id_bits = id_bits.clamp(LPI_ID_BITS, crate::gicv3::lpi::MAX_ID_BITS);
    }

    /// Whether the vGIC has LPIs ([`VGic::enable_lpis`]).
    pub fn has_lpis(&self) -> bool {
        self.lpi_id_bits != 0
    }

    /// The physical GIC delivers the LPIs to the vCPUs itself, holding
    /// their pending state: the model never lists them, and a change of a
    /// redistributor's EnableLPIs is reported in
    /// [`Effects::lpi_configs_changed`].
    pub fn set_direct_lpis(&mut self) {
        self.direct_lpis = true;
    }

    /// Whether the physical GIC delivers the LPIs ([`VGic::set_direct_lpis`]).
    pub fn direct_lpis(&self) -> bool {
        self.direct_lpis
    }

    /// `config` as the hardware must apply it to an LPI of `vcpu`: its
    /// priority, and enabled if the guest enabled it and `vcpu`'s
    /// redistributor has LPIs on (the RES1 bit and priority\[1:0\] are not
    /// kept).
    pub fn lpi_hw_config(&self, vcpu: usize, config: LpiConfig) -> LpiConfig {
        let on = config.enabled() && self.lpis_enabled(vcpu);
        LpiConfig(config.priority() | u8::from(on))
    }

    /// The guest configuration of mapped LPI `intid` as the model holds it
    /// (from the last MAPTI, INV or INVALL).
    pub fn lpi_config(&self, intid: u32) -> Option<LpiConfig> {
        self.lpis.get(&intid).map(|l| l.config())
    }

    /// Every mapped LPI of `vcpu` with its configuration as the hardware
    /// must apply it ([`VGic::lpi_hw_config`]).
    pub fn lpi_hw_configs(&self, vcpu: usize) -> Vec<(u32, LpiConfig)> {
        self.lpis
            .iter()
            .filter(|(_, l)| usize::from(l.vcpu) == vcpu)
            .map(|(&intid, l)| (intid, self.lpi_hw_config(vcpu, l.config())))
            .collect()
    }

    /// One past the largest LPI INTID GICD_TYPER.IDbits allows (0 without
    /// LPIs).
    pub fn lpi_limit(&self) -> u32 {
        if self.has_lpis() {
            1 << self.lpi_id_bits
        } else {
            0
        }
    }

    /// Where `vcpu`'s LPI configuration table is (GICR_PROPBASER) and one
    /// past the last INTID it covers (2^(IDbits + 1), at most
    /// [`VGic::lpi_limit`]); `None` while it covers no LPI.
    pub fn lpi_config_table(&self, vcpu: usize) -> Option<(Ipa, u32)> {
        let r = self.vcpus.get(vcpu)?.lpi;
        let bits = (r.propbaser & 0x1f) as u32 + 1;
        let end = if bits >= self.lpi_id_bits {
            self.lpi_limit()
        } else {
            1 << bits
        };
        (self.has_lpis() && end > FIRST_LPI)
            .then_some((Ipa(r.propbaser & (((1 << 40) - 1) << 12)), end))
    }

    /// Maps LPI `intid` to `vcpu` with configuration `config`; an LPI that
    /// is already mapped keeps its pending state and moves to `vcpu`.
    pub fn map_lpi(
        &mut self,
        intid: u32,
        vcpu: usize,
        config: LpiConfig,
    ) -> Result<Effects, VgicError> {
        if !(FIRST_LPI..self.lpi_limit()).contains(&intid) {
            return Err(VgicError::InvalidIntid);
        }
        if vcpu >= self.vcpus.len() {
            return Err(VgicError::InvalidVcpu);
        }
        let mut irq = Irq::reset(true);
        irq.enabled = config.enabled();
        irq.priority = config.priority();
        let lpi = self.lpis.entry(intid).or_insert(Lpi {
            vcpu: vcpu as u8,
            irq,
        });
        lpi.vcpu = vcpu as u8;
        lpi.irq.enabled = config.enabled();
        lpi.irq.priority = config.priority();
        let mut fx = Effects::none();
        self.note_change(vcpu, intid, &mut fx);
        Ok(fx)
    }

    /// Moves mapped LPI `intid`, with its pending state, to `vcpu` (ITS
    /// MOVI, MOVALL, or its collection remapped).
    pub fn move_lpi(&mut self, intid: u32, vcpu: usize) -> Effects {
        let mut fx = Effects::none();
        if vcpu >= self.vcpus.len() {
            return fx;
        }
        if let Some(l) = self.lpis.get_mut(&intid) {
            l.vcpu = vcpu as u8;
            self.note_change(vcpu, intid, &mut fx);
        }
        fx
    }

    /// Forgets LPI `intid` (no translation maps it any more): its pending
    /// state is lost, and a list register holding it is dropped at the
    /// owner's next entry.
    pub fn unmap_lpi(&mut self, intid: u32) -> Effects {
        let mut fx = Effects::none();
        if let Some(l) = self.lpis.remove(&intid) {
            if let Some(o) = l.irq.owner {
                fx.kick_mask(1 << o);
            }
        }
        fx
    }

    /// Sets the configuration of mapped LPI `intid` (the vITS re-read its
    /// configuration table entry).
    pub fn set_lpi_config(&mut self, intid: u32, config: LpiConfig) -> Effects {
        let mut fx = Effects::none();
        if let Some(l) = self.lpis.get_mut(&intid) {
            l.irq.enabled = config.enabled();
            l.irq.priority = config.priority();
            let vcpu = usize::from(l.vcpu);
            self.note_change(vcpu, intid, &mut fx);
        }
        fx
    }

    /// Makes mapped LPI `intid` pending (an MSI or an ITS INT command) or
    /// clears its pending state (ITS CLEAR).
    pub fn set_lpi_pending(&mut self, intid: u32, pending: bool) -> Result<Effects, VgicError> {
        let l = self.lpis.get_mut(&intid).ok_or(VgicError::InvalidIntid)?;
        if pending {
            l.irq.latch = true;
        } else {
            l.irq.latch = false;
            if l.irq.owner.is_some() && l.irq.lr_pending {
                l.irq.lr_pending_cleared = true;
            }
        }
        let vcpu = usize::from(l.vcpu);
        let mut fx = Effects::none();
        self.note_change(vcpu, intid, &mut fx);
        Ok(fx)
    }

    /// Whether LPI `intid` is mapped and pending (including a pending state
    /// a list register holds).
    pub fn lpi_pending(&self, intid: u32) -> bool {
        self.lpis.get(&intid).is_some_and(|l| l.irq.pending_view())
    }

    /// The vCPU mapped LPI `intid` targets.
    pub fn lpi_target(&self, intid: u32) -> Option<usize> {
        self.lpis.get(&intid).map(|l| usize::from(l.vcpu))
    }

    /// Number of mapped LPIs.
    pub fn nr_lpis(&self) -> usize {
        self.lpis.len()
    }

    /// Whether `vcpu`'s GICR_CTLR.EnableLPIs is set.
    pub fn lpis_enabled(&self, vcpu: usize) -> bool {
        self.vcpus.get(vcpu).is_some_and(|v| v.lpi.enabled)
    }

    /// Whether mapped LPI `l` is forwarded through the list registers:
    /// pending, enabled in its configuration, Group 1 enabled, and LPIs
    /// enabled in its target's redistributor; never when the physical GIC
    /// delivers LPIs.
    pub(super) fn lpi_deliverable(&self, l: &Lpi) -> bool {
        !self.direct_lpis && self.deliverable(&l.irq) && self.lpis_enabled(usize::from(l.vcpu))
    }

    /// GICR_CTLR of `vcpu`: EnableLPIs; RWP, UWP, DPG* = 0.
    pub(super) fn gicr_ctlr(&self, vcpu: usize) -> u32 {
        if self.vcpus[vcpu].lpi.enabled {
            CTLR_ENABLE_LPIS
        } else {
            0
        }
    }

    /// A write to GICR_CTLR: EnableLPIs (when LPIs are supported).
    pub(super) fn gicr_ctlr_write(&mut self, vcpu: usize, value: u32) -> Effects {
        let mut fx = Effects::none();
        if !self.has_lpis() {
            return fx;
        }
        let on = value & CTLR_ENABLE_LPIS != 0;
        if self.vcpus[vcpu].lpi.enabled != on {
            self.vcpus[vcpu].lpi.enabled = on;
            if self.lpis.values().any(|l| usize::from(l.vcpu) == vcpu) {
                if self.direct_lpis {
                    fx.lpi_config |= 1 << vcpu;
                } else {
                    fx.kick_mask(1 << vcpu);
                }
            }
        }
        fx
    }

    /// Reads of GICR_PROPBASER and GICR_PENDBASER (either half or the
    /// whole); `None` for another offset.
    pub(super) fn lpi_reg_read(&self, vcpu: usize, offset: u64, size: u8) -> Option<u64> {
        if !self.has_lpis() {
            return None;
        }
        let r = &self.vcpus[vcpu].lpi;
        let (base, value) = match offset & !7 {
            PROPBASER => (PROPBASER, r.propbaser),
            PENDBASER => (PENDBASER, r.pendbaser),
            _ => return None,
        };
        Some(match (offset - base, size) {
            (0, 8) => value,
            (0, 4) => value & 0xffff_ffff,
            (4, 4) => value >> 32,
            _ => 0,
        })
    }

    /// Writes of GICR_PROPBASER and GICR_PENDBASER: ignored while
    /// EnableLPIs is 1 (the architecture makes them UNPREDICTABLE then,
    /// §8.11.19); whether the offset was one of them.
    pub(super) fn lpi_reg_write(&mut self, vcpu: usize, offset: u64, size: u8, value: u64) -> bool {
        if !self.has_lpis() {
            return false;
        }
        let r = &mut self.vcpus[vcpu].lpi;
        let (reg, mask) = match offset & !7 {
            PROPBASER => (&mut r.propbaser, PROPBASER_MASK),
            PENDBASER => (&mut r.pendbaser, PENDBASER_MASK),
            _ => return false,
        };
        if r.enabled {
            return true;
        }
        let merged = match (offset & 7, size) {
            (0, 8) => value,
            (0, 4) => (*reg & !0xffff_ffff) | (value & 0xffff_ffff),
            (4, 4) => (*reg & 0xffff_ffff) | (value << 32),
            _ => return true,
        };
        *reg = merged & mask;
        true
    }

    /// LPIs of `vcpu` that [`VGic::fill_lrs`] should consider, as
    /// (INTID, state): none when the physical GIC delivers them.
    pub(super) fn lpis_for(&self, vcpu: usize) -> impl Iterator<Item = (u32, &Irq)> + '_ {
        let on = self.lpis_enabled(vcpu) && !self.direct_lpis;
        self.lpis
            .iter()
            .filter(move |(_, l)| on && usize::from(l.vcpu) == vcpu)
            .map(|(&intid, l)| (intid, &l.irq))
    }
}

#[cfg(test)]
mod tests {
    use super::super::lr::LrState;
    use super::super::tests::{ack, booted, deactivate, listed};
    use super::*;

    fn with_lpis() -> VGic {
        let mut g = booted();
        g.enable_lpis(LPI_ID_BITS);
        for vcpu in 0..2 {
            let _ = g.redist_write(vcpu, PROPBASER, 8, 0x4100_0000 | 15);
            let _ = g.redist_write(vcpu, 0, 4, 1);
        }
        g
    }

    const ON: LpiConfig = LpiConfig(0xa1);

    #[test]
    fn registers_advertise_lpis_only_when_enabled() {
        let mut g = booted();
        assert_eq!(g.dist_read(0x4, 4) & (1 << 17), 0);
        assert_eq!(g.redist_read(0, 0x8, 8) & 1, 0);
        let _ = g.redist_write(0, 0, 4, 1);
        assert_eq!(g.redist_read(0, 0, 4), 0, "EnableLPIs RAZ/WI without LPIs");
        let _ = g.redist_write(0, PROPBASER, 8, 0x4100_0000 | 15);
        assert_eq!(g.redist_read(0, PROPBASER, 8), 0);
        g.enable_lpis(LPI_ID_BITS);
        let typer = g.dist_read(0x4, 4) as u32;
        assert_ne!(typer & (1 << 17), 0, "LPIS");
        assert_eq!((typer >> 19) & 0x1f, LPI_ID_BITS - 1, "IDbits");
        assert_eq!(g.redist_read(1, 0x8, 8) & 1, 1, "PLPIS");
    }

    #[test]
    fn the_lpi_id_space_is_what_the_machine_chose() {
        for (asked, bits) in [(14, 14), (15, 15), (16, 16), (0, 14), (24, 16)] {
            let mut g = booted();
            g.enable_lpis(asked);
            let typer = g.dist_read(0x4, 4) as u32;
            assert_eq!((typer >> 19) & 0x1f, bits - 1, "IDbits for {asked}");
            assert_eq!(g.lpi_limit(), 1 << bits);
            assert!(g.map_lpi((1 << bits) - 1, 0, ON).is_ok(), "{asked}");
            assert_eq!(
                g.map_lpi(1 << bits, 0, ON),
                Err(VgicError::InvalidIntid),
                "{asked}"
            );
            // A configuration table of more bits than the vGIC's covers
            // its INTIDs only.
            let _ = g.redist_write(0, PROPBASER, 8, 0x4100_0000 | 15);
            assert_eq!(g.lpi_config_table(0), Some((Ipa(0x4100_0000), 1 << bits)));
        }
    }

    #[test]
    fn propbaser_is_frozen_while_lpis_are_enabled() {
        let mut g = booted();
        g.enable_lpis(LPI_ID_BITS);
        let _ = g.redist_write(0, PROPBASER, 4, 0x4100_0fef);
        let _ = g.redist_write(0, PROPBASER + 4, 4, 0xffff_ffff);
        // RES0 bits [63:59], [55:52] and [6:5] read as zero.
        assert_eq!(g.redist_read(0, PROPBASER, 8), 0x070f_ffff_4100_0f8f);
        assert_eq!(g.redist_read(0, PROPBASER + 4, 4), 0x070f_ffff);
        let _ = g.redist_write(0, PROPBASER, 8, 0x4100_0000 | 13);
        assert_eq!(g.lpi_config_table(0), Some((Ipa(0x4100_0000), 1 << 14)));
        let _ = g.redist_write(0, PENDBASER, 8, (1 << 62) | 0x4201_ffff);
        assert_eq!(g.redist_read(0, PENDBASER, 8), 0x4201_0f80, "PTZ reads 0");
        let _ = g.redist_write(0, 0, 4, 1);
        assert_eq!(g.redist_read(0, 0, 4), 1);
        let _ = g.redist_write(0, PROPBASER, 8, 0x5000_0000 | 15);
        assert_eq!(g.lpi_config_table(0), Some((Ipa(0x4100_0000), 1 << 14)));
        // IDbits below 13 covers no LPI at all.
        let _ = g.redist_write(1, PROPBASER, 8, 0x4100_0000 | 12);
        assert_eq!(g.lpi_config_table(1), None);
    }

    #[test]
    fn a_pending_enabled_lpi_reaches_its_vcpu_once() {
        let mut g = with_lpis();
        let fx = g.map_lpi(8192, 1, ON).unwrap();
        assert!(!fx.kicks(1), "nothing pending yet");
        let fx = g.set_lpi_pending(8192, true).unwrap();
        assert!(fx.kicks(1));
        assert!(g.has_pending(1));
        assert!(!g.has_pending(0));
        let mut hw = [0u64; 4];
        assert!(listed(&mut g, 0, &mut hw).is_empty());
        let mut hw = [0u64; 4];
        let lrs = listed(&mut g, 1, &mut hw);
        assert_eq!(lrs.len(), 1);
        let lr = lrs[0];
        assert_eq!((lr.vintid, lr.priority, lr.group1), (8192, 0xa0, true));
        assert_eq!(lr.state, LrState::Pending);
        ack(&mut hw, 0);
        assert_eq!(listed(&mut g, 1, &mut hw).len(), 1, "listed until the EOI");
        deactivate(&mut hw, 0);
        assert!(
            listed(&mut g, 1, &mut hw).is_empty(),
            "an edge is delivered once"
        );
        assert!(!g.lpi_pending(8192));
    }

    #[test]
    fn disabled_lpis_and_disabled_redistributors_hold_it_pending() {
        let mut g = with_lpis();
        let _ = g.map_lpi(9000, 0, LpiConfig(0xa0)).unwrap();
        let _ = g.set_lpi_pending(9000, true).unwrap();
        assert!(
            listed(&mut g, 0, &mut [0; 4]).is_empty(),
            "configuration disables it"
        );
        let fx = g.set_lpi_config(9000, ON);
        assert!(fx.kicks(0));
        let _ = g.redist_write(0, 0, 4, 0);
        assert!(listed(&mut g, 0, &mut [0; 4]).is_empty(), "EnableLPIs = 0");
        assert!(g.lpi_pending(9000));
        let fx = g.redist_write(0, 0, 4, 1);
        assert!(fx.kicks(0));
        assert_eq!(listed(&mut g, 0, &mut [0; 4]).len(), 1);
    }

    #[test]
    fn clear_move_and_unmap() {
        let mut g = with_lpis();
        let _ = g.map_lpi(8200, 0, ON).unwrap();
        let _ = g.set_lpi_pending(8200, true).unwrap();
        let _ = g.set_lpi_pending(8200, false).unwrap();
        assert!(!g.lpi_pending(8200));
        let _ = g.set_lpi_pending(8200, true).unwrap();
        // Remapping to another vCPU carries the pending state along.
        let fx = g.map_lpi(8200, 1, ON).unwrap();
        assert!(fx.kicks(1));
        assert!(listed(&mut g, 0, &mut [0; 4]).is_empty());
        assert_eq!(listed(&mut g, 1, &mut [0; 4]).len(), 1);
        let fx = g.unmap_lpi(8200);
        assert!(fx.kicks(1), "its owner drops the stale list register");
        assert!(listed(&mut g, 1, &mut [0; 4]).is_empty());
        assert_eq!(g.nr_lpis(), 0);
        assert_eq!(g.set_lpi_pending(8200, true), Err(VgicError::InvalidIntid));
    }

    #[test]
    fn lpis_outside_the_id_space_are_refused() {
        let mut g = booted();
        assert_eq!(
            g.map_lpi(8192, 0, ON),
            Err(VgicError::InvalidIntid),
            "no LPIs"
        );
        g.enable_lpis(LPI_ID_BITS);
        assert_eq!(g.map_lpi(8191, 0, ON), Err(VgicError::InvalidIntid));
        assert_eq!(g.map_lpi(1 << 14, 0, ON), Err(VgicError::InvalidIntid));
        assert_eq!(g.map_lpi(1 << 16, 0, ON), Err(VgicError::InvalidIntid));
        assert_eq!(g.map_lpi(8192, 2, ON), Err(VgicError::InvalidVcpu));
        assert!(g.map_lpi((1 << 14) - 1, 1, ON).is_ok());
    }

    #[test]
    fn direct_lpis_are_never_listed_and_follow_enable_lpis() {
        let mut g = with_lpis();
        g.set_direct_lpis();
        let _ = g.map_lpi(8192, 1, ON).unwrap();
        let _ = g.map_lpi(8193, 1, LpiConfig(0x40)).unwrap();
        let _ = g.map_lpi(8194, 0, ON).unwrap();
        let _ = g.set_lpi_pending(8192, true).unwrap();
        assert!(
            listed(&mut g, 1, &mut [0; 4]).is_empty(),
            "the physical GIC presents it, not a list register"
        );
        assert!(!g.has_pending(1));
        assert_eq!(g.lpi_config(8193), Some(LpiConfig(0x40)));
        assert_eq!(
            g.lpi_hw_configs(1),
            [(8192, LpiConfig(0xa1)), (8193, LpiConfig(0x40))]
        );
        // vCPU 1 turns its LPIs off: the caller must tell the hardware,
        // which then sees them all disabled.
        let fx = g.redist_write(1, 0, 4, 0);
        assert_eq!(fx.lpi_configs_changed().collect::<Vec<_>>(), [1]);
        assert!(!fx.kicks(1), "nothing to list");
        assert_eq!(
            g.lpi_hw_configs(1),
            [(8192, LpiConfig(0xa0)), (8193, LpiConfig(0x40))]
        );
        assert_eq!(g.lpi_hw_config(1, ON), LpiConfig(0xa0));
        assert_eq!(g.lpi_hw_config(0, ON), ON, "vCPU 0's are still on");
        let fx = g.redist_write(1, 0, 4, 1);
        assert_eq!(fx.lpi_configs_changed().collect::<Vec<_>>(), [1]);
        assert_eq!(g.lpi_hw_configs(1)[0], (8192, LpiConfig(0xa1)));
        assert_eq!(g.lpi_hw_config(0, LpiConfig(0xa3)), ON, "RES1 not kept");
        // A list-register vGIC kicks instead, and reports no change.
        let mut lr = with_lpis();
        let _ = lr.map_lpi(8192, 1, ON).unwrap();
        let fx = lr.redist_write(1, 0, 4, 0);
        assert!(fx.kicks(1));
        assert_eq!(fx.lpi_configs_changed().count(), 0);
    }
}
