//! The virtual GICv3 of one VM: the interrupt state model behind the
//! emulated distributor ([`dist`]) and redistributors ([`redist`]), and the
//! list-register algorithm ([`lr`]) that hands interrupts to the hardware
//! virtual CPU interface.
//!
//! Where it sits: the guest's GICD/GICR frames are left unmapped in stage 2;
//! the data-abort handler decodes the access and calls
//! [`VGic::dist_read`]/[`VGic::dist_write`] or
//! [`VGic::redist_read`]/[`VGic::redist_write`]. Devices, the virtual timer and
//! trapped `ICC_SGI1R_EL1` writes inject through [`VGic::set_level`],
//! [`VGic::inject_edge`] and [`VGic::send_sgi`]. Around every guest entry the
//! vCPU's list registers go through [`VGic::sync_from_lrs`] (on exit) and
//! [`VGic::fill_lrs`] (before entry). Every mutation returns [`Effects`]: the
//! vCPUs to kick so that they refill their list registers, and physical
//! interrupts to deactivate.
//!
//! The model is the GICv3 that Linux's `irq-gic-v3` driver programs (IHI 0069,
//! GIC architecture specification v3/v4): affinity routing always enabled
//! (ARE RAO/WI), a single Security state (GICD_CTLR.DS RAO/WI, so
//! GICD_TYPER.SecurityExtn = 0, IGRPMODR and NSACR RAZ/WI), no extended
//! SPI/PPI ranges, 10 INTID bits, or 16 with LPIs for a VM that has a
//! virtual ITS ([`lpi`]). Pure logic: no MMIO, no system
//! registers, host-tested. Section numbers are those of IHI 0069D.
//!
//! Pending state (IHI 0069 §4.1, "Interrupt lifecycle"): an interrupt is
//! pending when its latch is set (an edge, a write to ISPENDR, an SGI) or,
//! for a level-sensitive interrupt, while its input line is asserted. While an
//! interrupt sits in a list register the LR owns the part of the pending state
//! that was moved into it; [`VGic::sync_from_lrs`] folds back only what the
//! guest changed (acknowledge, deactivation), so MMIO writes and injections
//! made meanwhile by other vCPUs are not lost.

// Until the trap handlers call into it, the EL2 build sees no user.
#![cfg_attr(target_os = "none", allow(dead_code))]

mod dist;
pub mod hw;
pub mod lpi;
pub mod lr;
pub mod redist;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use redist::REDIST_STRIDE;

/// SGIs: INTIDs 0-15 (IHI 0069 §2.2, "INTIDs").
pub const NR_SGIS: u32 = 16;
/// Private interrupts (SGIs and PPIs, INTIDs 0-31) per PE (§2.2).
pub const NR_PRIVATE: u32 = 32;
/// The largest SPI INTID (§2.2: 32-1019; 1020-1023 are special).
pub const MAX_SPI_INTID: u32 = 1019;
/// Most SPIs a VM can have.
pub const MAX_SPIS: u32 = MAX_SPI_INTID + 1 - NR_PRIVATE;
/// Most vCPUs one [`VGic`] models ([`Effects`] names vCPUs in a `u64`).
pub const MAX_VCPUS: usize = 64;
/// The distributor frame (GICD) is 64 KiB (IHI 0069 §8.8, "The GIC
/// Distributor register map").
pub const DIST_SIZE: u64 = 0x1_0000;

/// What the caller of [`VGic`] got wrong (never something a guest did: guest
/// accesses have architected outcomes and no errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VgicError {
    /// A VM needs at least one vCPU.
    NoVcpus,
    /// More than [`MAX_VCPUS`] vCPUs.
    TooManyVcpus,
    /// More than [`MAX_SPIS`] SPIs.
    TooManySpis,
    /// Two vCPUs have the same MPIDR affinity (Aff3.Aff2.Aff1.Aff0).
    DuplicateAffinity,
    /// The vCPU index is out of range.
    InvalidVcpu,
    /// The INTID is not an SGI, PPI or implemented SPI of this VM, or the
    /// operation does not apply to it.
    InvalidIntid,
    /// A physical INTID that does not fit ICH_LR<n>_EL2.pINTID (13 bits).
    InvalidPintid,
}

impl fmt::Display for VgicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoVcpus => "a vGIC needs at least one vCPU",
            Self::TooManyVcpus => "too many vCPUs for the vGIC",
            Self::TooManySpis => "too many SPIs for the vGIC (at most 988)",
            Self::DuplicateAffinity => "two vCPUs share an MPIDR affinity",
            Self::InvalidVcpu => "vCPU index out of range",
            Self::InvalidIntid => "INTID not implemented by this vGIC",
            Self::InvalidPintid => "physical INTID does not fit a list register",
        })
    }
}

/// A physical interrupt the caller must deactivate (write its INTID to
/// ICC_DIR_EL1 on the physical CPU that runs `vcpu`, or GICD_ICACTIVER for
/// an SPI), because the virtual interrupt linked to it (see [`VGic::set_hw`])
/// became idle without the guest deactivating it through a list register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwDeactivate {
    /// The vCPU the interrupt belongs to (for SPIs: its routing target, or 0).
    pub vcpu: usize,
    /// The physical INTID.
    pub pintid: u32,
}

/// What the caller must do after a vGIC operation.
#[must_use]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    kick: u64,
    lpi_config: u64,
    /// Physical interrupts to deactivate. Rarely any, so held out of line
    /// (an empty boxed slice allocates nothing): the effects pass up
    /// through several functions on every exit, and small enough a move
    /// is a few register moves, not a call to `memcpy` (checked below).
    deactivate: Box<[HwDeactivate]>,
}

/// The compiler copies at most four general-purpose registers' worth
/// inline on AArch64 without SIMD (the hypervisor's soft-float target);
/// anything larger is a call to `memcpy`, which an emulator runs as a
/// loop of translated blocks.
const _: () = assert!(
    core::mem::size_of::<Result<Effects, VgicError>>() <= 32,
    "vGIC effects copied inline"
);

impl Effects {
    /// Nothing to do.
    pub fn none() -> Self {
        Self {
            kick: 0,
            lpi_config: 0,
            deactivate: Box::default(),
        }
    }

    /// Adds the deactivation of a physical interrupt.
    fn deactivate(&mut self, d: HwDeactivate) {
        let mut list = Vec::from(core::mem::take(&mut self.deactivate));
        list.push(d);
        self.deactivate = list.into_boxed_slice();
    }

    /// Whether vCPU `vcpu` must be kicked: made to exit (or woken from WFI)
    /// so that it runs [`VGic::sync_from_lrs`] and [`VGic::fill_lrs`]. The
    /// vCPU doing the access is included when it is concerned; it refills
    /// before its next entry anyway.
    pub fn kicks(&self, vcpu: usize) -> bool {
        vcpu < MAX_VCPUS && self.kick & (1 << vcpu) != 0
    }

    /// The vCPUs to kick as a bit mask (bit `i`: vCPU `i`).
    pub fn kick_bits(&self) -> u64 {
        self.kick
    }

    /// The vCPUs to kick, in increasing order.
    pub fn kicked(&self) -> impl Iterator<Item = usize> {
        set_bits(self.kick)
    }

    /// Physical interrupts to deactivate.
    pub fn deactivations(&self) -> &[HwDeactivate] {
        &self.deactivate
    }

    /// The vCPUs whose LPIs' configuration as the hardware applies it
    /// changed (their redistributor's LPIs were turned on or off) in a vGIC
    /// whose LPIs the physical GIC delivers ([`VGic::set_direct_lpis`]):
    /// the caller hands [`VGic::lpi_hw_configs`] to the physical side.
    pub fn lpi_configs_changed(&self) -> impl Iterator<Item = usize> {
        set_bits(self.lpi_config)
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.kick == 0 && self.deactivate.is_empty() && self.lpi_config == 0
    }

    /// Adds the work of `other`.
    pub fn merge(&mut self, other: Effects) {
        self.kick |= other.kick;
        if self.deactivate.is_empty() {
            self.deactivate = other.deactivate;
        } else if !other.deactivate.is_empty() {
            let mut list = Vec::from(core::mem::take(&mut self.deactivate));
            list.extend_from_slice(&other.deactivate);
            self.deactivate = list.into_boxed_slice();
        }
        self.lpi_config |= other.lpi_config;
    }

    fn kick_mask(&mut self, mask: u64) {
        self.kick |= mask;
    }
}

/// The indices of the bits set in `mask`, in increasing order. Costs one
/// step per set bit: the effects of an exit, which name a vCPU or two of
/// up to [`MAX_VCPUS`], are read on every exit.
fn set_bits(mut mask: u64) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        (mask != 0).then(|| {
            let bit = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            bit
        })
    })
}

/// The state of one interrupt (per vCPU for SGIs and PPIs).
#[derive(Clone, Copy, Debug)]
struct Irq {
    /// GICD_ISENABLER / GICR_ISENABLER0.
    enabled: bool,
    /// The pending latch: an edge, an ISPENDR write, an SGI, or the
    /// activation of a linked physical interrupt.
    latch: bool,
    /// The input line (level-sensitive interrupts; edge detection otherwise).
    line: bool,
    /// GICD_ISACTIVER / GICR_ISACTIVER0.
    active: bool,
    /// ICFGR Int_config\[1\]: edge-triggered.
    edge: bool,
    /// IGROUPR: Group 1.
    group1: bool,
    /// IPRIORITYR.
    priority: u8,
    /// The linked physical INTID ([`VGic::set_hw`]).
    hw: Option<u32>,
    /// The linked physical interrupt is active on our behalf: it was taken
    /// at EL2 and is waiting for the guest's deactivation.
    phys_active: bool,
    /// A forwarded level-sensitive line whose level the hypervisor samples
    /// ([`VGic::set_resample`]): listed with ICH_LR.EOI = 1, so that the
    /// guest's deactivation exits to EL2, and never listed pending while
    /// active (whether it is pending again is decided by the level sampled
    /// after the deactivation).
    resample: bool,
    /// In the list registers of this vCPU.
    owner: Option<u8>,
    /// When listed: the LR was filled with the pending state.
    lr_pending: bool,
    /// When listed: ICPENDR cleared the pending state the LR holds.
    lr_pending_cleared: bool,
}

impl Irq {
    const fn reset(edge: bool) -> Self {
        Self {
            enabled: false,
            latch: false,
            line: false,
            active: false,
            edge,
            group1: true,
            priority: 0,
            hw: None,
            phys_active: false,
            resample: false,
            owner: None,
            lr_pending: false,
            lr_pending_cleared: false,
        }
    }

    /// Pending in the model (not counting what a list register holds).
    fn pending(&self) -> bool {
        self.latch || (!self.edge && self.line)
    }

    /// Pending as the guest reads it in ISPENDR.
    fn pending_view(&self) -> bool {
        self.pending() || (self.owner.is_some() && self.lr_pending && !self.lr_pending_cleared)
    }

    /// Neither pending, nor active, nor listed: nothing can list it until
    /// a change makes it pending or active.
    fn idle(&self) -> bool {
        !self.pending() && !self.active && self.owner.is_none()
    }
}

/// Where a forwarded line's interrupt stands ([`VGic::line_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineStatus {
    /// The line's level as last set ([`VGic::set_level`]).
    pub level: bool,
    /// Active, as of the last fold of the list registers that hold it.
    pub active: bool,
    /// The vCPU whose list registers hold it, if any: what the guest did
    /// with it there is only known after that vCPU's next exit.
    pub listed_on: Option<usize>,
}

/// Where an SPI goes (GICD_IROUTER<n>, IHI 0069 §8.9 and §2.3
/// "Routing SPIs and SGIs by PE affinity").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// IRM = 0 and the affinity is one of our vCPUs.
    Vcpu(u8),
    /// IRM = 1: any vCPU (1 of N).
    Any,
    /// IRM = 0 and no vCPU has that affinity: not forwarded.
    Nobody,
}

/// One entry of a vCPU's list registers as [`VGic::fill_lrs`] wrote it.
#[derive(Clone, Copy, Debug)]
struct Listed {
    intid: u32,
    lr: usize,
    pending: bool,
    active: bool,
    /// The pending latch was moved into the LR.
    from_latch: bool,
    /// HW = 1.
    hw: bool,
    /// HW = 0 with EOI = 1 although the physical interrupt is active on
    /// the guest's behalf (the pending+active case): the physical
    /// interrupt is ours to deactivate when the guest deactivates.
    linked: bool,
}

/// Per-vCPU state: its redistributor and its private interrupts.
#[derive(Clone, Debug)]
struct Vcpu {
    /// MPIDR_EL1 affinity packed as Aff3.Aff2.Aff1.Aff0 (GICR_TYPER
    /// Affinity_Value layout).
    aff: u32,
    /// GICR_WAKER.ProcessorSleep.
    sleep: bool,
    private: [Irq; NR_PRIVATE as usize],
    listed: Vec<Listed>,
    /// The redistributor's LPI registers.
    lpi: lpi::RedistLpi,
    /// What its physical CPU's list registers hold (`hw.rs`).
    hw: hw::HwLrs,
    /// Its private interrupts that may be pending, active or listed (bit
    /// n: INTID n): every change to an interrupt goes through
    /// [`VGic::irq_mut`] (or an SGI's send), which sets its bit, and
    /// [`VGic::fill_lrs`] looks at these only, clearing the bits of those
    /// it finds idle.
    maybe_busy: u32,
}

/// The virtual GICv3 of one VM. See the module documentation.
#[derive(Clone, Debug)]
pub struct VGic {
    vcpus: Vec<Vcpu>,
    spis: Vec<Irq>,
    /// GICD_IROUTER<n> as written (masked to its fields), per SPI.
    irouter: Vec<u64>,
    route: Vec<Route>,
    /// GICD_CTLR.EnableGrp0.
    grp0: bool,
    /// GICD_CTLR.EnableGrp1.
    grp1: bool,
    /// Work found by a fold that could not return it (a [`VGic::fill_lrs`]
    /// without a preceding sync), returned by the next
    /// [`VGic::sync_from_lrs`].
    deferred: Effects,
    /// INTID bits of its LPIs, 0 when it has none ([`VGic::enable_lpis`]).
    lpi_id_bits: u32,
    /// The mapped LPIs by INTID (see [`lpi`]).
    lpis: BTreeMap<u32, lpi::Lpi>,
    /// The physical GIC delivers the LPIs itself ([`VGic::set_direct_lpis`]).
    direct_lpis: bool,
    /// The SPIs that may be pending, active or listed (bit i % 64 of word
    /// i / 64: SPI i), kept as [`Vcpu::maybe_busy`] is.
    spis_maybe_busy: Vec<u64>,
}

/// Packs MPIDR_EL1 Aff3 \[39:32\], Aff2 \[23:16\], Aff1 \[15:8\], Aff0 \[7:0\]
/// into Aff3.Aff2.Aff1.Aff0.
pub const fn mpidr_to_aff(mpidr: u64) -> u32 {
    (((mpidr >> 32) & 0xff) << 24) as u32 | (mpidr & 0x00ff_ffff) as u32
}

impl VGic {
    /// A vGIC for vCPUs whose MPIDR_EL1 values are `mpidrs` (vCPU `i` has
    /// `mpidrs[i]`; only the affinity fields count) with `nr_spis` SPIs
    /// (INTIDs 32..32 + `nr_spis`), in its reset state: everything disabled,
    /// inactive, not pending, Group 1, priority 0, SPIs level-sensitive and
    /// routed to vCPU 0, GICD_CTLR group enables off, every redistributor
    /// asleep (GICR_WAKER.ProcessorSleep = 1).
    pub fn new(mpidrs: &[u64], nr_spis: u32) -> Result<Self, VgicError> {
        if mpidrs.is_empty() {
            return Err(VgicError::NoVcpus);
        }
        if mpidrs.len() > MAX_VCPUS {
            return Err(VgicError::TooManyVcpus);
        }
        if nr_spis > MAX_SPIS {
            return Err(VgicError::TooManySpis);
        }
        let affs: Vec<u32> = mpidrs.iter().map(|&m| mpidr_to_aff(m)).collect();
        for (i, a) in affs.iter().enumerate() {
            if affs[..i].contains(a) {
                return Err(VgicError::DuplicateAffinity);
            }
        }
        let mut private = [Irq::reset(false); NR_PRIVATE as usize];
        for sgi in &mut private[..NR_SGIS as usize] {
            sgi.edge = true;
        }
        let vcpus = affs
            .iter()
            .map(|&aff| Vcpu {
                aff,
                sleep: true,
                private,
                listed: Vec::with_capacity(lr::MAX_LRS),
                lpi: lpi::RedistLpi::default(),
                hw: hw::HwLrs::default(),
                maybe_busy: 0,
            })
            .collect();
        let boot_route = aff_to_irouter(affs[0]);
        Ok(Self {
            vcpus,
            spis: alloc::vec![Irq::reset(false); nr_spis as usize],
            irouter: alloc::vec![boot_route; nr_spis as usize],
            route: alloc::vec![Route::Vcpu(0); nr_spis as usize],
            grp0: false,
            grp1: false,
            deferred: Effects::none(),
            lpi_id_bits: 0,
            lpis: BTreeMap::new(),
            direct_lpis: false,
            spis_maybe_busy: alloc::vec![0; (nr_spis as usize).div_ceil(64)],
        })
    }

    /// Number of vCPUs.
    pub fn nr_vcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// Number of SPIs.
    pub fn nr_spis(&self) -> u32 {
        self.spis.len() as u32
    }

    /// One past the largest implemented INTID.
    fn nr_irqs(&self) -> u32 {
        NR_PRIVATE + self.nr_spis()
    }

    fn irq(&self, vcpu: usize, intid: u32) -> Option<&Irq> {
        if intid >= lpi::FIRST_LPI {
            self.lpis.get(&intid).map(|l| &l.irq)
        } else if intid < NR_PRIVATE {
            self.vcpus.get(vcpu).map(|v| &v.private[intid as usize])
        } else {
            self.spis.get((intid - NR_PRIVATE) as usize)
        }
    }

    /// The interrupt, to change it: a private interrupt or an SPI is
    /// marked as one [`VGic::fill_lrs`] must look at.
    fn irq_mut(&mut self, vcpu: usize, intid: u32) -> Option<&mut Irq> {
        if intid >= lpi::FIRST_LPI {
            self.lpis.get_mut(&intid).map(|l| &mut l.irq)
        } else if intid < NR_PRIVATE {
            self.vcpus.get_mut(vcpu).map(|v| {
                v.maybe_busy |= 1 << intid;
                &mut v.private[intid as usize]
            })
        } else {
            let i = (intid - NR_PRIVATE) as usize;
            let irq = self.spis.get_mut(i)?;
            self.spis_maybe_busy[i / 64] |= 1 << (i % 64);
            Some(irq)
        }
    }

    fn all_vcpus_mask(&self) -> u64 {
        if self.vcpus.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.vcpus.len()) - 1
        }
    }

    /// The vCPUs that may take `intid` (for private interrupts: `vcpu`).
    fn targets(&self, vcpu: usize, intid: u32) -> u64 {
        if intid >= lpi::FIRST_LPI {
            return self.lpis.get(&intid).map_or(0, |l| {
                if self.lpis_enabled(usize::from(l.vcpu)) {
                    1 << l.vcpu
                } else {
                    0
                }
            });
        }
        if intid < NR_PRIVATE {
            return if vcpu < self.vcpus.len() {
                1 << vcpu
            } else {
                0
            };
        }
        match self.route.get((intid - NR_PRIVATE) as usize) {
            Some(Route::Vcpu(v)) => 1 << v,
            Some(Route::Any) => self.all_vcpus_mask(),
            Some(Route::Nobody) | None => 0,
        }
    }

    fn group_enabled(&self, irq: &Irq) -> bool {
        if irq.group1 {
            self.grp1
        } else {
            self.grp0
        }
    }

    /// Pending, enabled, and its group enabled in GICD_CTLR: the
    /// distributor forwards it (IHI 0069 §4.1 and §8.9 GICD_CTLR).
    fn deliverable(&self, irq: &Irq) -> bool {
        irq.pending() && irq.enabled && self.group_enabled(irq)
    }

    /// Kicks after a change to `intid`: the vCPU holding it in its list
    /// registers (its LR may be stale now) and, when it can be forwarded,
    /// the vCPUs that may take it.
    fn note_change(&mut self, vcpu: usize, intid: u32, fx: &mut Effects) {
        let Some(irq) = self.irq(vcpu, intid).copied() else {
            return;
        };
        if let Some(o) = irq.owner {
            fx.kick_mask(1 << o);
        }
        if self.deliverable(&irq) {
            fx.kick_mask(self.targets(vcpu, intid));
        }
        self.settle_hw(vcpu, intid, fx);
    }

    /// A virtual interrupt linked to an active physical one that became
    /// idle (not pending, not active, not listed) other than by the guest's
    /// deactivation through an LR: the physical one must be deactivated, or
    /// it never fires again.
    fn settle_hw(&mut self, vcpu: usize, intid: u32, fx: &mut Effects) {
        let target = if intid < NR_PRIVATE {
            vcpu
        } else {
            match self.route.get((intid - NR_PRIVATE) as usize) {
                Some(Route::Vcpu(v)) => usize::from(*v),
                _ => 0,
            }
        };
        let Some(irq) = self.irq_mut(vcpu, intid) else {
            return;
        };
        if let Some(pintid) = irq.hw {
            if irq.phys_active && irq.owner.is_none() && !irq.active && !irq.pending() {
                irq.phys_active = false;
                fx.deactivate(HwDeactivate {
                    vcpu: target,
                    pintid,
                });
            }
        }
    }

    fn check(&self, intid: u32, vcpu: usize) -> Result<(), VgicError> {
        if intid >= self.nr_irqs() {
            return Err(VgicError::InvalidIntid);
        }
        if vcpu >= self.vcpus.len() {
            return Err(VgicError::InvalidVcpu);
        }
        Ok(())
    }

    /// Drives the input line of `intid` (a PPI of `vcpu`, or an SPI; `vcpu`
    /// is ignored for SPIs but must be valid). Level-sensitive: pending
    /// while high. Edge-triggered: a rising edge sets the pending latch.
    /// For an interrupt linked to a physical one ([`VGic::set_hw`]),
    /// `true` means "the physical interrupt was taken and is active on the
    /// guest's behalf" (as [`VGic::inject_edge`]); `false` is ignored, the
    /// physical distributor re-signals after the guest's deactivation.
    pub fn set_level(
        &mut self,
        intid: u32,
        vcpu: usize,
        level: bool,
    ) -> Result<Effects, VgicError> {
        self.check(intid, vcpu)?;
        if intid < NR_SGIS {
            return Err(VgicError::InvalidIntid);
        }
        let mut fx = Effects::none();
        let irq = self.irq_mut(vcpu, intid).ok_or(VgicError::InvalidIntid)?;
        if irq.hw.is_some() {
            if level {
                irq.latch = true;
                irq.phys_active = true;
            }
        } else {
            if irq.line == level {
                // No change: nothing to refill anywhere.
                return Ok(fx);
            }
            if irq.edge && level {
                irq.latch = true;
            }
            irq.line = level;
        }
        self.note_change(vcpu, intid, &mut fx);
        Ok(fx)
    }

    /// Makes `intid` pending once (an edge; for SGIs, `vcpu` is the
    /// target). For a hardware-linked interrupt: its physical interrupt was
    /// taken at EL2 (acknowledged and priority-dropped with EOImode = 1)
    /// and stays active until the guest deactivates the virtual one.
    pub fn inject_edge(&mut self, intid: u32, vcpu: usize) -> Result<Effects, VgicError> {
        self.check(intid, vcpu)?;
        let mut fx = Effects::none();
        let irq = self.irq_mut(vcpu, intid).ok_or(VgicError::InvalidIntid)?;
        irq.latch = true;
        if irq.hw.is_some() {
            irq.phys_active = true;
        }
        self.note_change(vcpu, intid, &mut fx);
        Ok(fx)
    }

    /// Marks SPI `intid` as a forwarded level-sensitive line (a passed-through
    /// function's INTx) whose level the hypervisor samples from the physical
    /// distributor and sets with [`VGic::set_level`]: when the physical line
    /// fires, and after the guest deactivates the interrupt. Its
    /// Int_config is read-only, level (IHI 0069 §8.9 GICD_ICFGR<n>: an
    /// SPI's may be), since the device's line is. Its list-register
    /// entries ask for a maintenance interrupt at deactivation
    /// (ICH_LR.EOI), and it is never listed pending while active: the
    /// level the guest's handler leaves behind is only known once it has
    /// deactivated, so a line still high is pending again exactly once per
    /// deactivation, and a line the handler let go is not presented again.
    pub fn set_resample(&mut self, intid: u32, on: bool) -> Result<(), VgicError> {
        if intid < NR_PRIVATE {
            return Err(VgicError::InvalidIntid);
        }
        self.check(intid, 0)?;
        let irq = self.irq_mut(0, intid).ok_or(VgicError::InvalidIntid)?;
        irq.resample = on;
        if on {
            irq.edge = false;
        }
        Ok(())
    }

    /// Where forwarded line `intid` ([`VGic::set_resample`]) stands; `None`
    /// for an interrupt that is not one.
    pub fn line_status(&self, intid: u32) -> Option<LineStatus> {
        if intid < NR_PRIVATE {
            return None;
        }
        let irq = self.irq(0, intid).filter(|i| i.resample)?;
        Some(LineStatus {
            level: irq.line,
            active: irq.active,
            listed_on: irq.owner.map(usize::from),
        })
    }

    /// Links virtual `intid` (a PPI of `vcpu`, or an SPI) to physical
    /// `pintid`: while the physical interrupt is active on the guest's
    /// behalf, the LR gets HW = 1 and the guest's deactivation deactivates
    /// the physical interrupt too (IHI 0069 ch. 6, ICH_LR<n>_EL2.HW). The
    /// virtual timer (PPI 27) is the usual case.
    pub fn set_hw(&mut self, intid: u32, vcpu: usize, pintid: u32) -> Result<(), VgicError> {
        self.check(intid, vcpu)?;
        if intid < NR_SGIS {
            return Err(VgicError::InvalidIntid);
        }
        if pintid >= 1 << 13 {
            return Err(VgicError::InvalidPintid);
        }
        let irq = self.irq_mut(vcpu, intid).ok_or(VgicError::InvalidIntid)?;
        irq.hw = Some(pintid);
        Ok(())
    }

    /// Removes the link made by [`VGic::set_hw`]; a physical interrupt still
    /// active on the guest's behalf is returned for deactivation.
    pub fn clear_hw(&mut self, intid: u32, vcpu: usize) -> Result<Effects, VgicError> {
        self.check(intid, vcpu)?;
        let mut fx = Effects::none();
        let irq = self.irq_mut(vcpu, intid).ok_or(VgicError::InvalidIntid)?;
        if let (Some(pintid), true) = (irq.hw, irq.phys_active) {
            fx.deactivate(HwDeactivate { vcpu, pintid });
        }
        irq.hw = None;
        irq.phys_active = false;
        Ok(fx)
    }

    /// Whether hardware-linked `intid` (of `vcpu`) is pending, not yet
    /// taken by the guest, with its physical interrupt active on the
    /// guest's behalf: what [`VGic::lower_hw_line`] would retract.
    pub fn hw_line_waiting(&self, intid: u32, vcpu: usize) -> bool {
        self.irq(vcpu, intid).is_some_and(|irq| {
            irq.hw.is_some() && irq.phys_active && irq.latch && !irq.active && irq.owner.is_none()
        })
    }

    /// The physical source of hardware-linked `intid` (a PPI of `vcpu`, or
    /// an SPI) stopped asserting before the guest took the interrupt: it
    /// is pending no more, and its physical interrupt, active on the
    /// guest's behalf, is returned for deactivation (so that it fires when
    /// the source asserts again). Call between folding the vCPU's list
    /// registers back and refilling them. An interrupt the guest has taken
    /// is left to its deactivation (ICH_LR.HW). This is level semantics
    /// for a source whose level changes without the hypervisor seeing it:
    /// a timer the guest disabled, masked or reprogrammed.
    pub fn lower_hw_line(&mut self, intid: u32, vcpu: usize) -> Result<Effects, VgicError> {
        self.check(intid, vcpu)?;
        let mut fx = Effects::none();
        if !self.hw_line_waiting(intid, vcpu) {
            return Ok(fx);
        }
        if let Some(irq) = self.irq_mut(vcpu, intid) {
            irq.latch = false;
        }
        self.note_change(vcpu, intid, &mut fx);
        Ok(fx)
    }

    /// A guest write of `value` to ICC_SGI1R_EL1 on `from` (trapped: EC
    /// 0x18 with HCR_EL2.IMO = 1): makes SGI INTID pending on every target
    /// vCPU where that SGI is Group 1 (IHI 0069 §8.2 ICC_SGI1R_EL1,
    /// "Forwarding an SGI to a target PE"). IRM = 1: every vCPU but `from`;
    /// IRM = 0: the vCPUs with affinity Aff3.Aff2.Aff1.(RS * 16 + n) for each
    /// bit n of TargetList. Targets that do not exist are ignored.
    pub fn send_sgi(&mut self, from: usize, value: u64) -> Effects {
        self.send_sgi_group(from, value, true)
    }

    /// A guest write to ICC_SGI0R_EL1: as [`VGic::send_sgi`], for SGIs
    /// configured as Group 0 on the target.
    pub fn send_sgi0(&mut self, from: usize, value: u64) -> Effects {
        self.send_sgi_group(from, value, false)
    }

    fn send_sgi_group(&mut self, from: usize, value: u64, group1: bool) -> Effects {
        let mut fx = Effects::none();
        if from >= self.vcpus.len() {
            return fx;
        }
        let intid = ((value >> 24) & 0xf) as u32;
        let irm = value & (1 << 40) != 0;
        let target_list = (value & 0xffff) as u32;
        let rs = ((value >> 44) & 0xf) as u32;
        let cluster = ((((value >> 48) & 0xff) << 16)
            | (((value >> 32) & 0xff) << 8)
            | ((value >> 16) & 0xff)) as u32;
        for t in 0..self.vcpus.len() {
            let aff = self.vcpus[t].aff;
            let hit = if irm {
                t != from
            } else {
                let aff0 = aff & 0xff;
                aff >> 8 == cluster && aff0 >> 4 == rs && target_list & (1 << (aff0 & 0xf)) != 0
            };
            if !hit {
                continue;
            }
            let v = &mut self.vcpus[t];
            v.maybe_busy |= 1 << intid;
            let sgi = &mut v.private[intid as usize];
            if sgi.group1 == group1 {
                sgi.latch = true;
                self.note_change(t, intid, &mut fx);
            }
        }
        fx
    }

    /// Whether `vcpu` has an interrupt the distributor forwards to it
    /// (pending, enabled, group enabled), listed or not: a trapped WFI
    /// should not sleep. The guest's own masking (ICV_PMR_EL1, PSTATE.I) is
    /// the hardware's business.
    pub fn has_pending(&self, vcpu: usize) -> bool {
        let Some(v) = self.vcpus.get(vcpu) else {
            return false;
        };
        let fwd = |irq: &Irq| {
            irq.pending_view()
                && irq.enabled
                && self.group_enabled(irq)
                && !(irq.resample && irq.active)
        };
        if v.private.iter().any(fwd) {
            return true;
        }
        if self.lpis_for(vcpu).any(|(_, irq)| fwd(irq)) {
            return true;
        }
        self.spis.iter().enumerate().any(|(i, irq)| {
            fwd(irq)
                && match self.route[i] {
                    Route::Vcpu(t) => usize::from(t) == vcpu,
                    Route::Any => true,
                    Route::Nobody => false,
                }
        })
    }

    fn route_for(&self, irouter: u64) -> Route {
        if irouter & IROUTER_IRM != 0 {
            return Route::Any;
        }
        let aff = (((irouter >> 32) & 0xff) << 24) as u32 | (irouter & 0x00ff_ffff) as u32;
        self.vcpus
            .iter()
            .position(|v| v.aff == aff)
            .map_or(Route::Nobody, |i| Route::Vcpu(i as u8))
    }

    /// Sets GICD_IROUTER for SPI `intid` (already masked).
    fn set_irouter(&mut self, intid: u32, value: u64, fx: &mut Effects) {
        let i = (intid - NR_PRIVATE) as usize;
        let Some(slot) = self.irouter.get_mut(i) else {
            return;
        };
        let value = value & IROUTER_MASK;
        if *slot == value {
            return;
        }
        *slot = value;
        self.route[i] = self.route_for(value);
        self.note_change(0, intid, fx);
    }

    /// Reads one per-interrupt register of `bank` covering `first` and the
    /// INTIDs after it (32 for bit registers, 16 for ICFGR), as seen from
    /// `vcpu` for private interrupts. Unimplemented INTIDs read as zero.
    fn bank_read(&self, vcpu: usize, bank: Bank, first: u32) -> u32 {
        let mut out = 0u32;
        match bank {
            Bank::Config => {
                for k in 0..16 {
                    if let Some(irq) = self.irq(vcpu, first + k) {
                        if irq.edge {
                            out |= 2 << (2 * k);
                        }
                    }
                }
            }
            _ => {
                for k in 0..32 {
                    let Some(irq) = self.irq(vcpu, first + k) else {
                        continue;
                    };
                    let bit = match bank {
                        Bank::Group => irq.group1,
                        Bank::SetEnable | Bank::ClearEnable => irq.enabled,
                        Bank::SetPending | Bank::ClearPending => irq.pending_view(),
                        Bank::SetActive | Bank::ClearActive => irq.active,
                        Bank::Config => false,
                    };
                    out |= u32::from(bit) << k;
                }
            }
        }
        out
    }

    /// Writes one per-interrupt register (see [`VGic::bank_read`]).
    fn bank_write(&mut self, vcpu: usize, bank: Bank, first: u32, value: u32) -> Effects {
        let mut fx = Effects::none();
        if bank == Bank::Config {
            for k in 0..16u32 {
                let intid = first + k;
                // SGIs are always edge-triggered: Int_config is RO
                // (GICR_ICFGR0, IHI 0069 §8.11).
                if intid < NR_SGIS {
                    continue;
                }
                let edge = value & (2 << (2 * k)) != 0;
                let Some(irq) = self.irq_mut(vcpu, intid) else {
                    continue;
                };
                // A forwarded line is level-sensitive, read-only.
                if irq.edge != edge && !irq.resample {
                    irq.edge = edge;
                    self.note_change(vcpu, intid, &mut fx);
                }
            }
            return fx;
        }
        let mut bits = value;
        while bits != 0 {
            let k = bits.trailing_zeros();
            bits &= bits - 1;
            let intid = first + k;
            let Some(irq) = self.irq_mut(vcpu, intid) else {
                continue;
            };
            match bank {
                Bank::Group | Bank::Config => {}
                Bank::SetEnable => irq.enabled = true,
                Bank::ClearEnable => irq.enabled = false,
                Bank::SetPending => {
                    irq.latch = true;
                }
                Bank::ClearPending => {
                    irq.latch = false;
                    if irq.owner.is_some() {
                        irq.lr_pending_cleared = true;
                    }
                }
                Bank::SetActive => irq.active = true,
                Bank::ClearActive => irq.active = false,
            }
            self.note_change(vcpu, intid, &mut fx);
        }
        if bank == Bank::Group {
            // IGROUPR is a plain read/write register: clear bits count too.
            for k in 0..32u32 {
                let intid = first + k;
                let g = value & (1 << k) != 0;
                let Some(irq) = self.irq_mut(vcpu, intid) else {
                    continue;
                };
                if irq.group1 != g {
                    irq.group1 = g;
                    self.note_change(vcpu, intid, &mut fx);
                }
            }
        }
        fx
    }

    /// IPRIORITYR: `len` bytes (1 or 4) starting at `first`.
    fn priority_read(&self, vcpu: usize, first: u32, len: u32) -> u32 {
        (0..len).fold(0, |acc, k| {
            let p = self.irq(vcpu, first + k).map_or(0, |i| i.priority);
            acc | u32::from(p) << (8 * k)
        })
    }

    fn priority_write(&mut self, vcpu: usize, first: u32, len: u32, value: u32) -> Effects {
        let mut fx = Effects::none();
        for k in 0..len {
            let p = (value >> (8 * k)) as u8;
            let Some(irq) = self.irq_mut(vcpu, first + k) else {
                continue;
            };
            if irq.priority != p {
                irq.priority = p;
                self.note_change(vcpu, first + k, &mut fx);
            }
        }
        fx
    }

    /// A redistributor-region offset (from the base of the region holding
    /// all vCPUs' redistributors, [`REDIST_STRIDE`] apart in vCPU order) as
    /// (vCPU, offset in its RD_base + SGI_base frames); `None` past the last.
    pub fn redist_locate(&self, region_offset: u64) -> Option<(usize, u64)> {
        let vcpu = usize::try_from(region_offset / REDIST_STRIDE).ok()?;
        (vcpu < self.vcpus.len()).then_some((vcpu, region_offset % REDIST_STRIDE))
    }
}

/// GICD_IROUTER<n>.IRM, bit \[31\] (IHI 0069 §8.9).
const IROUTER_IRM: u64 = 1 << 31;
/// GICD_IROUTER<n> fields: Aff3 \[39:32\], IRM \[31\], Aff2 \[23:16\],
/// Aff1 \[15:8\], Aff0 \[7:0\]; the rest is RES0.
const IROUTER_MASK: u64 = 0xff_80ff_ffff;

/// The IROUTER value that routes to affinity `aff` (Aff3.Aff2.Aff1.Aff0).
const fn aff_to_irouter(aff: u32) -> u64 {
    ((aff as u64 >> 24) << 32) | (aff & 0x00ff_ffff) as u64
}

/// The per-interrupt registers common to the distributor (SPIs) and the
/// redistributors' SGI_base frame (SGIs, PPIs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bank {
    /// IGROUPR.
    Group,
    /// ISENABLER.
    SetEnable,
    /// ICENABLER.
    ClearEnable,
    /// ISPENDR.
    SetPending,
    /// ICPENDR.
    ClearPending,
    /// ISACTIVER.
    SetActive,
    /// ICACTIVER.
    ClearActive,
    /// ICFGR (2 bits per interrupt).
    Config,
}

/// The bit-per-interrupt banks in register-map order, each 0x80 bytes
/// starting at offset 0x080 of GICD and of SGI_base (IHI 0069 §8.8 and
/// §8.10).
const BIT_BANKS: [Bank; 7] = [
    Bank::Group,
    Bank::SetEnable,
    Bank::ClearEnable,
    Bank::SetPending,
    Bank::ClearPending,
    Bank::SetActive,
    Bank::ClearActive,
];

/// GICD_PIDR2 / GICR_PIDR2: ArchRev \[7:4\] = 3 (GICv3), JEDEC \[3\] = 1,
/// DES_1 \[2:0\] (IHI 0069 §8.9 GICD_PIDR2).
const PIDR2: u32 = 0x3b;

/// The CoreSight-style identification registers at 0xFFD0-0xFFFC of GICD
/// and RD_base: PIDR4-7, PIDR0-3, CIDR0-3 (IHI 0069 §8.8 and §8.10 register
/// maps; only PIDR2.ArchRev is architected for software, §8.9 GICD_PIDR2).
pub(crate) fn id_register(offset: u64) -> Option<u32> {
    Some(match offset {
        0xffd0 => 0x04, // PIDR4: DES_2 (JEP106 continuation code).
        0xffd4..=0xffdc => 0,
        0xffe0 => 0x00, // PIDR0: PART_0.
        0xffe4 => 0xb0, // PIDR1: DES_0, PART_1.
        0xffe8 => PIDR2,
        0xffec => 0x00, // PIDR3.
        0xfff0 => 0x0d, // CIDR0-3: the component preamble.
        0xfff4 => 0xf0,
        0xfff8 => 0x05,
        0xfffc => 0xb1,
        _ => return None,
    })
}

/// GICD_IIDR / GICR_IIDR: Implementer, Revision, Variant and ProductID all
/// zero, so that no Linux erratum workaround keyed on IIDR matches.
const IIDR: u32 = 0;

/// Whether an access of `size` bytes at `offset` is a naturally aligned
/// access of one of the sizes a register allows.
fn aligned(offset: u64, size: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8) && offset.is_multiple_of(u64::from(size))
}

/// The bytes of `size` (1, 2, 4 or 8).
fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::lr::{ListRegister, LrState};
    use super::*;

    /// QEMU `virt`-style MPIDRs (bit 31 is RES1 in MPIDR_EL1).
    pub(in crate::vdev::vgic) const MPIDRS: [u64; 2] = [0x8000_0000, 0x8000_0001];

    pub(in crate::vdev::vgic) fn two_vcpus() -> VGic {
        VGic::new(&MPIDRS, 64).unwrap()
    }

    /// A small deterministic generator for the property tests.
    pub(in crate::vdev::vgic) struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        pub fn size(&mut self) -> u8 {
            [1, 2, 4, 8][self.below(4) as usize]
        }
    }

    /// What Linux 6.1 `gic_dist_init` (and `gic_dist_config`) does, with
    /// the boot CPU's MPIDR.
    pub(in crate::vdev::vgic) fn linux_dist_init(g: &mut VGic, boot_mpidr: u64) {
        assert_eq!(g.dist_read(0xffe8, 4) & 0xf0, 0x30, "GICD_PIDR2.ArchRev");
        let typer = g.dist_read(0x4, 4);
        let lines = (((typer & 0x1f) + 1) * 32).min(1020);
        assert!(g.dist_write(0x0, 4, 0).is_empty());
        assert_eq!(g.dist_read(0x0, 4) & (1 << 31), 0, "RWP");
        for i in (32..lines).step_by(32) {
            let _ = g.dist_write(0x80 + i / 8, 4, 0xffff_ffff);
        }
        for i in (32..lines).step_by(16) {
            let _ = g.dist_write(0xc00 + i / 4, 4, 0);
        }
        for i in (32..lines).step_by(4) {
            let _ = g.dist_write(0x400 + i, 4, 0xa0a0_a0a0);
        }
        for i in (32..lines).step_by(32) {
            let _ = g.dist_write(0x380 + i / 8, 4, 0xffff_ffff);
            let _ = g.dist_write(0x180 + i / 8, 4, 0xffff_ffff);
        }
        // ARE_NS | EnableGrp1A | EnableGrp1.
        let _ = g.dist_write(0x0, 4, 0x13);
        assert_eq!(g.dist_read(0x0, 4) & (1 << 31), 0, "RWP");
        let aff = (boot_mpidr & 0xff_00ff_ffff) & !(1 << 31);
        for i in 32..lines {
            let _ = g.dist_write(0x6000 + i * 8, 8, aff);
        }
    }

    /// What Linux 6.1 does for a CPU's redistributor (`gic_populate_rdist`,
    /// `gic_enable_redist`, `gic_cpu_init`); returns the redistributor index.
    pub(in crate::vdev::vgic) fn linux_cpu_init(g: &mut VGic, mpidr: u64) -> usize {
        let aff = u64::from(mpidr_to_aff(mpidr));
        let mut region = 0u64;
        let vcpu = loop {
            let (v, off) = g.redist_locate(region).expect("ran off the region");
            assert_eq!(off, 0);
            assert_eq!(g.redist_read(v, 0xffe8, 4) & 0xf0, 0x30, "GICR_PIDR2");
            let typer = g.redist_read(v, 0x8, 8);
            if typer >> 32 == aff {
                break v;
            }
            assert_eq!(typer & (1 << 4), 0, "Last before the CPU was found");
            region += REDIST_STRIDE;
        };
        // gic_enable_redist(true).
        let waker = g.redist_read(vcpu, 0x14, 4);
        let _ = g.redist_write(vcpu, 0x14, 4, waker & !2);
        assert_eq!(g.redist_read(vcpu, 0x14, 4) & 4, 0, "ChildrenAsleep");
        // gic_cpu_init + gic_cpu_config.
        let _ = g.redist_write(vcpu, 0x1_0080, 4, 0xffff_ffff);
        let _ = g.redist_write(vcpu, 0x1_0380, 4, 0xffff_ffff);
        let _ = g.redist_write(vcpu, 0x1_0180, 4, 0xffff_ffff);
        for i in (0..32).step_by(4) {
            let _ = g.redist_write(vcpu, 0x1_0400 + i, 4, 0xa0a0_a0a0);
        }
        assert_eq!(g.redist_read(vcpu, 0x0, 4) & (1 << 3), 0, "GICR_CTLR.RWP");
        vcpu
    }

    pub(in crate::vdev::vgic) fn booted() -> VGic {
        let mut g = two_vcpus();
        linux_dist_init(&mut g, MPIDRS[0]);
        for m in MPIDRS {
            linux_cpu_init(&mut g, m);
        }
        g
    }

    /// Fills 4 LRs (QEMU's count) and decodes the valid ones.
    pub(in crate::vdev::vgic) fn listed(
        g: &mut VGic,
        vcpu: usize,
        hw: &mut [u64; 4],
    ) -> Vec<ListRegister> {
        let _ = g.sync_from_lrs(vcpu, hw);
        let r = g.fill_lrs(vcpu, hw);
        let v: Vec<_> = hw
            .iter()
            .map(|&x| ListRegister::decode(x))
            .filter(|l| l.state != LrState::Invalid)
            .collect();
        assert_eq!(v.len(), r.used);
        v
    }

    /// The guest acknowledges the interrupt in LR `i` (pending -> active).
    pub(in crate::vdev::vgic) fn ack(lrs: &mut [u64], i: usize) {
        let mut l = ListRegister::decode(lrs[i]);
        assert_eq!(l.state, LrState::Pending, "ack of a non-pending LR");
        l.state = LrState::Active;
        lrs[i] = l.encode();
    }

    /// The guest deactivates the interrupt in LR `i`.
    pub(in crate::vdev::vgic) fn deactivate(lrs: &mut [u64], i: usize) {
        let mut l = ListRegister::decode(lrs[i]);
        l.state = match l.state {
            LrState::Active => LrState::Invalid,
            LrState::PendingActive => LrState::Pending,
            s => panic!("deactivate of {s:?}"),
        };
        lrs[i] = l.encode();
    }

    fn sgi1r(intid: u64, aff3: u64, aff2: u64, aff1: u64, rs: u64, targets: u64) -> u64 {
        (aff3 << 48) | (rs << 44) | (aff2 << 32) | (intid << 24) | (aff1 << 16) | targets
    }

    #[test]
    fn new_rejects_bad_configurations() {
        assert_eq!(VGic::new(&[], 32).unwrap_err(), VgicError::NoVcpus);
        assert_eq!(
            VGic::new(&[0; 65], 32).unwrap_err(),
            VgicError::TooManyVcpus
        );
        assert_eq!(VGic::new(&[0], 989).unwrap_err(), VgicError::TooManySpis);
        // MPIDR bit 31 and the MT/U bits are not affinity.
        assert_eq!(
            VGic::new(&[0x8000_0001, 0x4000_0001], 0).unwrap_err(),
            VgicError::DuplicateAffinity
        );
        assert!(VGic::new(&[0, 1 << 32], MAX_SPIS).is_ok());
    }

    #[test]
    fn linux_boot_lists_timer_uart_and_ipi() {
        let mut g = booted();
        assert_eq!(g.dist_read(0x0, 4), 0x53, "EnableGrp0|EnableGrp1|ARE|DS");
        // arch_timer: PPI 27 level (ICFGR1 bit 23 clear) and enabled on
        // every CPU; the hypervisor links it to the physical vtimer PPI.
        for v in 0..2 {
            let cfg = g.redist_read(v, 0x1_0c04, 4);
            let _ = g.redist_write(v, 0x1_0c04, 4, cfg & !(2 << 22));
            let _ = g.redist_write(v, 0x1_0100, 4, 1 << 27);
            g.set_hw(27, v, 27).unwrap();
            // IPIs: SGIs 0-7.
            let _ = g.redist_write(v, 0x1_0100, 4, 0xff);
        }
        // The PL011 on SPI 1 (INTID 33), level, routed to CPU 1.
        let _ = g.dist_write(0xc08, 4, 0);
        let _ = g.dist_write(0x104, 4, 1 << 1);
        let fx = g.dist_write(0x6000 + 33 * 8, 8, 1);
        assert!(fx.is_empty(), "nothing pending yet: {fx:?}");
        assert_eq!(g.dist_read(0x6000 + 33 * 8, 8), 1);

        // The vtimer fires on CPU 0 (taken at EL2, priority-dropped).
        let fx = g.inject_edge(27, 0).unwrap();
        assert_eq!(fx.kick_bits(), 0b01);
        // The UART raises its line.
        let fx = g.set_level(33, 0, true).unwrap();
        assert_eq!(fx.kick_bits(), 0b10, "the UART goes to CPU 1 only");
        // CPU 1 sends IPI 1 to CPU 0 (Linux's gic_send_sgi encoding).
        let fx = g.send_sgi(1, sgi1r(1, 0, 0, 0, 0, 0b1));
        assert_eq!(fx.kick_bits(), 0b01);
        assert!(g.has_pending(0) && g.has_pending(1));

        let mut cpu0 = [0u64; 4];
        let l0 = listed(&mut g, 0, &mut cpu0);
        assert_eq!(
            l0,
            [
                ListRegister {
                    vintid: 1,
                    pintid: None,
                    eoi: false,
                    group1: true,
                    priority: 0xa0,
                    state: LrState::Pending
                },
                ListRegister {
                    vintid: 27,
                    pintid: Some(27),
                    eoi: false,
                    group1: true,
                    priority: 0xa0,
                    state: LrState::Pending
                },
            ]
        );
        let mut cpu1 = [0u64; 4];
        let l1 = listed(&mut g, 1, &mut cpu1);
        assert_eq!(l1.len(), 1);
        assert_eq!(
            (l1[0].vintid, l1[0].pintid, l1[0].state),
            (33, None, LrState::Pending)
        );
        assert_eq!(g.dist_read(0x204, 4) & 2, 2, "ISPENDR1 shows the UART");

        // CPU 0 handles the IPI (ack + EOI/deactivate) and the timer (ack,
        // the deactivation also deactivates the physical PPI).
        ack(&mut cpu0, 0);
        deactivate(&mut cpu0, 0);
        ack(&mut cpu0, 1);
        deactivate(&mut cpu0, 1);
        let fx = g.sync_from_lrs(0, &cpu0);
        assert!(fx.deactivations().is_empty(), "the hardware deactivated it");
        assert_eq!(g.fill_lrs(0, &mut cpu0).used, 0);
        assert!(!g.has_pending(0));
        // The next timer tick is listed again with HW = 1.
        let _ = g.inject_edge(27, 0).unwrap();
        let l0 = listed(&mut g, 0, &mut cpu0);
        assert_eq!((l0[0].vintid, l0[0].pintid), (27, Some(27)));
    }

    #[test]
    fn ipi_sent_while_the_first_is_handled_is_not_lost() {
        let mut g = booted();
        let _ = g.redist_write(0, 0x1_0100, 4, 0xff);
        let _ = g.send_sgi(1, sgi1r(2, 0, 0, 0, 0, 1));
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1);
        // The guest acknowledges SGI 2, then CPU 1 sends it again before
        // CPU 0 exits.
        ack(&mut lrs, 0);
        let _ = g.send_sgi(1, sgi1r(2, 0, 0, 0, 0, 1));
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!((l[0].vintid, l[0].state), (2, LrState::PendingActive));
        deactivate(&mut lrs, 0);
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!((l[0].vintid, l[0].state), (2, LrState::Pending));
        ack(&mut lrs, 0);
        deactivate(&mut lrs, 0);
        assert!(listed(&mut g, 0, &mut lrs).is_empty());
    }

    #[test]
    fn sgi_targets_decode_affinity_rs_and_irm() {
        let mpidrs = [0x0, 0x1, 0x100, 0x1_0000_0000 | 0x12, 0x20];
        let mut g = VGic::new(&mpidrs, 0).unwrap();
        let pend = |g: &VGic, intid: usize| {
            (0..mpidrs.len())
                .filter(|&v| g.vcpus[v].private[intid].latch)
                .collect::<Vec<_>>()
        };
        let _ = g.send_sgi(0, sgi1r(3, 0, 0, 0, 0, 0b11));
        assert_eq!(pend(&g, 3), [0, 1], "self included when in TargetList");
        let _ = g.send_sgi(0, sgi1r(4, 0, 0, 1, 0, 0b1));
        assert_eq!(pend(&g, 4), [2], "Aff1 = 1");
        let _ = g.send_sgi(0, sgi1r(5, 1, 0, 0, 1, 1 << 2));
        assert_eq!(pend(&g, 5), [3], "Aff3 = 1, RS = 1, Aff0 = 0x12");
        let _ = g.send_sgi(0, sgi1r(6, 0, 0, 0, 2, 0b1));
        assert_eq!(pend(&g, 6), [4], "RS = 2: Aff0 0x20");
        let _ = g.send_sgi(2, (1 << 40) | sgi1r(7, 0, 0, 0, 0, 0));
        assert_eq!(pend(&g, 7), [0, 1, 3, 4], "IRM: everyone but self");
        let _ = g.send_sgi(0, sgi1r(8, 0, 0, 0, 0, 0b1_0000_0000));
        assert!(pend(&g, 8).is_empty(), "no PE with Aff0 8");
        // Group 0 SGIs are not generated by ICC_SGI1R_EL1, and the reverse.
        let _ = g.redist_write(1, 0x1_0080, 4, !(1 << 9));
        let _ = g.send_sgi(0, sgi1r(9, 0, 0, 0, 0, 0b11));
        assert_eq!(pend(&g, 9), [0]);
        let _ = g.send_sgi0(0, sgi1r(10, 0, 0, 0, 0, 0b11));
        assert!(pend(&g, 10).is_empty());
        // A sender that does not exist sends nothing.
        assert!(g.send_sgi(9, 1 << 40).is_empty());
    }

    #[test]
    fn level_interrupt_stays_pending_while_the_line_is_high() {
        let mut g = booted();
        let _ = g.dist_write(0x104, 4, 1 << 2); // SPI 34, level (Linux default).
        let _ = g.set_level(34, 0, true).unwrap();
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs)[0].state, LrState::Pending);
        // Handled, but the device still asserts the line: pending again.
        ack(&mut lrs, 0);
        deactivate(&mut lrs, 0);
        assert_eq!(listed(&mut g, 0, &mut lrs)[0].state, LrState::Pending);
        ack(&mut lrs, 0);
        // The handler clears the device (an emulated-device trap on this
        // vCPU) while the interrupt is active.
        let fx = g.set_level(34, 0, false).unwrap();
        assert!(fx.kicks(0), "the listed vCPU refills");
        assert_eq!(listed(&mut g, 0, &mut lrs)[0].state, LrState::Active);
        deactivate(&mut lrs, 0);
        assert!(listed(&mut g, 0, &mut lrs).is_empty());
        // A level interrupt whose line drops before the guest takes it is
        // withdrawn; ISPENDR then pends it by the latch alone.
        let _ = g.set_level(34, 0, true).unwrap();
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1);
        let _ = g.set_level(34, 0, false).unwrap();
        assert!(listed(&mut g, 0, &mut lrs).is_empty());
        let _ = g.dist_write(0x204, 4, 1 << 2);
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1);
        ack(&mut lrs, 0);
        deactivate(&mut lrs, 0);
        assert!(
            listed(&mut g, 0, &mut lrs).is_empty(),
            "the ack consumed the latch"
        );
    }

    #[test]
    fn edge_interrupt_latches_rising_edges_only() {
        let mut g = booted();
        let _ = g.dist_write(0xc08, 4, 2 << 4); // SPI 34 edge.
        let _ = g.dist_write(0x104, 4, 1 << 2);
        let _ = g.set_level(34, 0, true).unwrap();
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1);
        ack(&mut lrs, 0);
        deactivate(&mut lrs, 0);
        // Still high, but no new edge.
        assert!(listed(&mut g, 0, &mut lrs).is_empty());
        let _ = g.set_level(34, 0, false).unwrap();
        let _ = g.set_level(34, 0, true).unwrap();
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1);
    }

    #[test]
    fn an_spi_is_never_listed_on_two_vcpus() {
        let mut g = booted();
        let _ = g.dist_write(0x6000 + 40 * 8, 8, 1 << 31); // IRM = 1
        let _ = g.dist_write(0x104, 4, 1 << 8);
        let fx = g.inject_edge(40, 0).unwrap();
        assert_eq!(fx.kick_bits(), 0b11, "1 of N: any vCPU may take it");
        let (mut a, mut b) = ([0u64; 4], [0u64; 4]);
        assert_eq!(listed(&mut g, 1, &mut b).len(), 1);
        assert!(listed(&mut g, 0, &mut a).is_empty(), "already on vCPU 1");
        // Re-routed to vCPU 0 while vCPU 1 holds it: vCPU 1 is kicked and
        // gives it back; then vCPU 0 lists it.
        let fx = g.dist_write(0x6000 + 40 * 8, 8, 0);
        assert!(fx.kicks(1));
        assert!(listed(&mut g, 0, &mut a).is_empty());
        let fx = g.sync_from_lrs(1, &b);
        assert!(fx.kicks(0));
        assert_eq!(g.fill_lrs(1, &mut b).used, 0);
        assert_eq!(listed(&mut g, 0, &mut a)[0].vintid, 40);
    }

    #[test]
    fn irouter_to_a_missing_affinity_forwards_nowhere() {
        let mut g = booted();
        let _ = g.dist_write(0x104, 4, 1 << 9);
        let _ = g.dist_write(0x6000 + 41 * 8, 8, 0x0000_0001_0000_0000);
        assert!(g.inject_edge(41, 0).unwrap().is_empty());
        let mut lrs = [0u64; 4];
        assert!(listed(&mut g, 0, &mut lrs).is_empty());
        assert!(listed(&mut g, 1, &mut lrs).is_empty());
        assert_eq!(g.dist_read(0x204, 4) & (1 << 9), 1 << 9, "still pending");
        // 32-bit halves: Aff3 = 0 routes it to vCPU 0 (0.0.0.0), then
        // Aff0 = 1 to vCPU 1.
        let fx = g.dist_write(0x6000 + 41 * 8 + 4, 4, 0);
        assert_eq!(fx.kick_bits(), 0b01);
        let fx = g.dist_write(0x6000 + 41 * 8, 4, 1);
        assert_eq!(fx.kick_bits(), 0b10);
        assert_eq!(g.dist_read(0x6000 + 41 * 8, 8), 1);
        assert!(listed(&mut g, 0, &mut lrs).is_empty());
        assert_eq!(listed(&mut g, 1, &mut lrs)[0].vintid, 41);
    }

    #[test]
    fn disabling_a_group_hides_pending_but_keeps_active() {
        let mut g = booted();
        let _ = g.dist_write(0x104, 4, 0b11 << 2);
        let _ = g.inject_edge(34, 0).unwrap();
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1);
        ack(&mut lrs, 0);
        let _ = g.inject_edge(35, 0).unwrap();
        let fx = g.dist_write(0x0, 4, 0);
        assert_eq!(fx.kick_bits(), 0b11);
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!((l.len(), l[0].vintid, l[0].state), (1, 34, LrState::Active));
        assert!(!g.has_pending(0));
        let _ = g.dist_write(0x0, 4, 0x2);
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!(l.len(), 2);
        assert_eq!((l[1].vintid, l[1].state), (35, LrState::Pending));
        // Group 0 interrupts need EnableGrp0 and are listed as Group 0.
        let _ = g.dist_write(0x84, 4, !(1 << 3));
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1, "SPI 35 now Group 0");
        let _ = g.dist_write(0x0, 4, 0x3);
        let l = listed(&mut g, 0, &mut lrs);
        assert_eq!((l[1].vintid, l[1].group1), (35, false));
    }

    #[test]
    fn icpendr_and_icenabler_withdraw_a_listed_interrupt() {
        let mut g = booted();
        let _ = g.dist_write(0x104, 4, 0b11 << 2);
        let _ = g.inject_edge(34, 0).unwrap();
        let _ = g.inject_edge(35, 0).unwrap();
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 2);
        // vCPU 1 clears SPI 34's pending state and disables SPI 35 while
        // vCPU 0 runs with both listed.
        let fx = g.dist_write(0x284, 4, 1 << 2);
        assert!(fx.kicks(0));
        assert_eq!(g.dist_read(0x204, 4) & (0b11 << 2), 0b10 << 2);
        let fx = g.dist_write(0x184, 4, 1 << 3);
        assert!(fx.kicks(0));
        assert!(listed(&mut g, 0, &mut lrs).is_empty());
        assert_eq!(
            g.dist_read(0x204, 4) & (0b11 << 2),
            0b10 << 2,
            "35 still pending"
        );
        let _ = g.dist_write(0x104, 4, 1 << 3);
        assert_eq!(listed(&mut g, 0, &mut lrs)[0].vintid, 35);
    }

    #[test]
    fn isactiver_and_icactiver_while_listed() {
        let mut g = booted();
        let _ = g.dist_write(0x104, 4, 1 << 2);
        let _ = g.inject_edge(34, 0).unwrap();
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs).len(), 1);
        let _ = g.dist_write(0x304, 4, 1 << 2);
        assert_eq!(listed(&mut g, 0, &mut lrs)[0].state, LrState::PendingActive);
        let _ = g.dist_write(0x384, 4, 1 << 2);
        assert_eq!(g.dist_read(0x304, 4) & (1 << 2), 0);
        // The stale LR (pending+active) does not bring the active state back.
        assert_eq!(listed(&mut g, 0, &mut lrs)[0].state, LrState::Pending);
    }

    #[test]
    fn hardware_interrupt_cleared_by_the_guest_deactivates_the_physical_one() {
        let mut g = booted();
        let _ = g.redist_write(0, 0x1_0100, 4, 1 << 27);
        g.set_hw(27, 0, 27).unwrap();
        let _ = g.inject_edge(27, 0).unwrap();
        // ICPENDR0 before it is listed: the physical PPI must be released.
        let fx = g.redist_write(0, 0x1_0280, 4, 1 << 27);
        assert_eq!(
            fx.deactivations(),
            [HwDeactivate {
                vcpu: 0,
                pintid: 27
            }]
        );
        // ICPENDR0 while listed: released at the next sync.
        let _ = g.inject_edge(27, 0).unwrap();
        let mut lrs = [0u64; 4];
        assert_eq!(listed(&mut g, 0, &mut lrs)[0].pintid, Some(27));
        let fx = g.redist_write(0, 0x1_0280, 4, 1 << 27);
        assert!(fx.deactivations().is_empty() && fx.kicks(0));
        let fx = g.sync_from_lrs(0, &lrs);
        assert_eq!(
            fx.deactivations(),
            [HwDeactivate {
                vcpu: 0,
                pintid: 27
            }]
        );
        // A guest-set pending state with no physical activation is listed
        // with HW = 0 (its deactivation must not touch the physical PPI).
        let _ = g.redist_write(0, 0x1_0200, 4, 1 << 27);
        assert_eq!(g.fill_lrs(0, &mut lrs).used, 1);
        assert_eq!(ListRegister::decode(lrs[0]).pintid, None);
        // Unlinking while the physical one is active releases it.
        let _ = g.sync_from_lrs(0, &lrs);
        let _ = g.inject_edge(27, 0).unwrap();
        let fx = g.clear_hw(27, 0).unwrap();
        assert_eq!(
            fx.deactivations(),
            [HwDeactivate {
                vcpu: 0,
                pintid: 27
            }]
        );
    }

    #[test]
    fn caller_errors_are_reported() {
        let mut g = two_vcpus();
        assert_eq!(
            g.set_level(96, 0, true).unwrap_err(),
            VgicError::InvalidIntid
        );
        assert_eq!(
            g.set_level(27, 2, true).unwrap_err(),
            VgicError::InvalidVcpu
        );
        assert_eq!(
            g.set_level(3, 0, true).unwrap_err(),
            VgicError::InvalidIntid
        );
        assert_eq!(
            g.set_hw(27, 0, 1 << 13).unwrap_err(),
            VgicError::InvalidPintid
        );
        assert_eq!(g.inject_edge(1020, 0).unwrap_err(), VgicError::InvalidIntid);
        assert!(g.inject_edge(95, 1).is_ok());
        assert!(g.inject_edge(5, 1).is_ok(), "an SGI injected on its target");
    }

    /// Every register the guest can read, for "this write changed nothing".
    fn dump(g: &VGic) -> Vec<u64> {
        let mut out = Vec::new();
        for off in (0..0x1000).step_by(4) {
            out.push(g.dist_read(off, 4));
        }
        for n in 0..1024u64 {
            out.push(g.dist_read(0x6000 + 8 * n, 8));
        }
        for v in 0..g.nr_vcpus() {
            for off in (0..0x100).step_by(4).chain((0x1_0000..0x1_1000).step_by(4)) {
                out.push(g.redist_read(v, off, 4));
            }
            out.push(g.redist_read(v, 0x8, 8));
        }
        out
    }

    #[test]
    fn reserved_and_unsupported_accesses_are_raz_wi() {
        let mut g = booted();
        let _ = g.dist_write(0x104, 4, 0xffff_ffff);
        let _ = g.inject_edge(40, 0).unwrap();
        let before = dump(&g);
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..3000 {
            let value = rng.next();
            // Reserved or RAZ/WI GICD space and wrong sizes of real registers.
            let (off, size) = match rng.below(8) {
                0 => (0x14 + rng.below(0x6c), rng.size()),
                1 => (0x800 + rng.below(0x400), rng.size()), // ITARGETSR
                2 => (0xd00 + rng.below(0x300), rng.size()), // IGRPMODR, NSACR, SGIR...
                3 => (0x1000 + rng.below(0x5100), rng.size()),
                4 => (0x8000 + rng.below(0x7fd0), rng.size()),
                5 => (rng.below(0x400) & !3, [1, 2, 8][rng.below(3) as usize]),
                6 => ((0x80 + rng.below(0x380)) | 1, 4), // misaligned
                _ => (0x6000 + rng.below(0x100), rng.size()), // IROUTER0-31
            };
            let fx = g.dist_write(off, size, value);
            assert!(fx.is_empty(), "write {off:#x}/{size} had effects");
            let (off, size) = match rng.below(4) {
                0 => (0x18 + rng.below(0xffe8 - 0x18), rng.size()),
                1 => (0x1_0084 + rng.below(0x7c), rng.size()), // E-PPI banks etc.
                2 => (0x1_0d00 + rng.below(0xf300), rng.size()),
                _ => (0x1_0000 + rng.below(0x80), rng.size()),
            };
            let fx = g.redist_write((value & 1) as usize, off, size, value);
            assert!(fx.is_empty(), "redist write {off:#x}/{size} had effects");
        }
        assert!(before == dump(&g), "a RAZ/WI write changed state");
    }

    /// The invariants that must hold whatever the guest does.
    fn check_lrs(g: &VGic, all: &[[u64; 4]], filled: usize) {
        let mut spis_seen = Vec::new();
        for (v, lrs) in all.iter().enumerate() {
            let mut seen = Vec::new();
            for &raw in lrs {
                let l = ListRegister::decode(raw);
                if l.state == LrState::Invalid {
                    // (Others may hold what the guest deactivated.)
                    assert!(v != filled || raw == 0, "unused LRs are zero");
                    continue;
                }
                assert!(l.vintid < g.nr_irqs(), "listed INTID {}", l.vintid);
                assert!(!seen.contains(&l.vintid), "INTID {} listed twice", l.vintid);
                seen.push(l.vintid);
                if l.pintid.is_some() {
                    assert_ne!(l.state, LrState::PendingActive, "HW LR pending+active");
                }
                if l.vintid >= NR_PRIVATE {
                    assert!(
                        !spis_seen.contains(&l.vintid),
                        "SPI {} on two vCPUs",
                        l.vintid
                    );
                    spis_seen.push(l.vintid);
                }
            }
        }
    }

    #[test]
    fn hostile_guest_never_breaks_the_model() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mpidrs = [0x0, 0x1, 0x100];
            let mut g = VGic::new(&mpidrs, 1 + rng.below(100) as u32).unwrap();
            let mut hw = [[0u64; 4]; 3];
            let _ = g.set_hw(27, 1, 27);
            let _ = g.set_hw(32, 0, 50);
            for _ in 0..2000 {
                let v = rng.below(3) as usize;
                let value = match rng.below(3) {
                    0 => rng.next(),
                    1 => u64::MAX,
                    _ => rng.below(2),
                };
                let interesting = [
                    0x0, 0x80, 0x100, 0x180, 0x200, 0x280, 0x300, 0x380, 0x400, 0xc00,
                ];
                let off = match rng.below(4) {
                    0 => rng.below(0x1_0000),
                    1 => {
                        interesting[rng.below(interesting.len() as u64) as usize] + rng.below(0x20)
                    }
                    2 => 0x6000 + rng.below(0x2000),
                    _ => rng.below(0x40),
                };
                match rng.below(12) {
                    0..=3 => {
                        let _ = g.dist_write(off, rng.size(), value);
                    }
                    4 => {
                        let _ = g.dist_read(off, rng.size());
                    }
                    5..=6 => {
                        let off = off | (rng.below(2) << 16);
                        let _ = g.redist_write(rng.below(4) as usize, off, rng.size(), value);
                        let _ = g.redist_read(rng.below(4) as usize, off, rng.size());
                    }
                    7 => {
                        let _ = g.send_sgi(v, rng.next());
                    }
                    8 => {
                        let intid = rng.below(140) as u32;
                        let _ = if rng.below(2) == 0 {
                            g.inject_edge(intid, rng.below(4) as usize)
                        } else {
                            g.set_level(intid, rng.below(4) as usize, rng.below(2) == 1)
                        };
                    }
                    9 => {
                        // The guest acts on its LRs as the hardware lets it.
                        for i in 0..4 {
                            match ListRegister::decode(hw[v][i]).state {
                                LrState::Pending if rng.below(2) == 0 => ack(&mut hw[v], i),
                                LrState::Active | LrState::PendingActive if rng.below(2) == 0 => {
                                    deactivate(&mut hw[v], i)
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {
                        let _ = g.sync_from_lrs(v, &hw[v]);
                        let _ = g.fill_lrs(v, &mut hw[v]);
                        check_lrs(&g, &hw, v);
                    }
                }
            }
            // Everything folds back cleanly.
            for (v, lrs) in hw.iter().enumerate() {
                let _ = g.sync_from_lrs(v, lrs);
            }
            assert!(g.spis.iter().all(|i| i.owner.is_none()));
            // No physical interrupt is left active with nothing that will
            // ever deactivate it.
            let stuck = |i: &Irq| i.phys_active && !i.pending() && !i.active;
            assert!(!g.spis.iter().any(stuck));
            assert!(!g.vcpus.iter().any(|c| c.private.iter().any(stuck)));
            assert!(g
                .vcpus
                .iter()
                .all(|c| c.listed.is_empty() && c.private.iter().all(|i| i.owner.is_none())));
        }
    }
}
