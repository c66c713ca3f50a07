//! `edu_intx=N`: the guest drives QEMU's `edu` through its INTx line (a
//! level-sensitive SPI: asserted while the edu's interrupt status is not
//! 0; raised by writing its register 0x60, acknowledged at 0x64) and
//! counts the interrupts its GIC gives it, `N` raises in all, in rounds
//! of the kinds below (round `i` is [`Kind::ALL`]\[i % 9\]). Each kind says
//! how many interrupts the GIC architecture gives for it (IHI 0069 §4.1: a
//! level-sensitive interrupt is pending while its line is asserted, and
//! after its deactivation it is pending again if the line still is); the
//! guest checks every round's sequence and counts (checks: `hw.rs`).
//!
//! The same image runs on bare QEMU and under the hypervisor, which
//! forwards the physical line to the VM's virtual GIC: the counts must be
//! the same, whatever the host's load. Nothing is timed: an interrupt that
//! is due is waited for over a bounded number of acknowledge attempts, and
//! one that is not due must not arrive over a smaller number of them; the
//! GIC signals a change of a line's level to the CPU interface before the
//! guest's next few instructions, on bare QEMU and under the hypervisor
//! alike (the exit that makes the virtual interrupt pending is taken as
//! soon as the physical one or the maintenance interrupt is raised).

use flat_device_tree::Fdt;

/// What a round does. "Handle" below is: acknowledge at the CPU interface
/// (ICC_IAR1_EL1), count it; "EOI" is ICC_EOIR1_EL1 (EOImode 0: priority
/// drop and deactivation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Raise; handle; acknowledge the edu; EOI. One interrupt.
    Prompt,
    /// Raise; handle; EOI with the line still high; handle again;
    /// acknowledge the edu; EOI. Two.
    Late,
    /// As `Late`, with two EOIs while the line is high. Three.
    LateTwice,
    /// Raise; handle; acknowledge the edu, which is raised again before
    /// the EOI; handle again; acknowledge; EOI. Two.
    Reraised,
    /// Disable the SPI (GICD_ICENABLER); raise: pending (GICD_ISPENDR),
    /// not signalled; acknowledge the edu: no longer pending; enable:
    /// nothing. None.
    DroppedWhileDisabled,
    /// Disable; raise: pending, not signalled; enable; handle;
    /// acknowledge; EOI. One.
    EnabledWhileHigh,
    /// Disable; raise; GICD_ICPENDR: still pending, the line is high;
    /// enable; handle; acknowledge; EOI. One.
    ClearPendingWhileHigh,
    /// Raise; handle; disable; EOI with the line high: pending, not
    /// active, not signalled; enable; handle again; acknowledge; EOI. Two.
    DisabledAtEoi,
    /// Route the SPI to an affinity no PE has (GICD_IROUTER); raise:
    /// pending, not signalled; route it back; handle; acknowledge; EOI.
    /// One.
    RoutedAway,
}

impl Kind {
    /// Every kind, in the order rounds take them.
    pub const ALL: [Kind; 9] = [
        Kind::Prompt,
        Kind::Late,
        Kind::LateTwice,
        Kind::Reraised,
        Kind::DroppedWhileDisabled,
        Kind::EnabledWhileHigh,
        Kind::ClearPendingWhileHigh,
        Kind::DisabledAtEoi,
        Kind::RoutedAway,
    ];

    /// The kind of round `i`.
    pub fn of_round(i: u64) -> Kind {
        Self::ALL[(i % Self::ALL.len() as u64) as usize]
    }

    /// How many interrupts the architecture gives for one round.
    pub fn interrupts(self) -> u64 {
        match self {
            Kind::DroppedWhileDisabled => 0,
            Kind::Prompt
            | Kind::EnabledWhileHigh
            | Kind::ClearPendingWhileHigh
            | Kind::RoutedAway => 1,
            Kind::Late | Kind::Reraised | Kind::DisabledAtEoi => 2,
            Kind::LateTwice => 3,
        }
    }

    /// Its check's name.
    pub fn check_name(self) -> &'static str {
        match self {
            Kind::Prompt => "edu-intx-prompt",
            Kind::Late => "edu-intx-late",
            Kind::LateTwice => "edu-intx-late-twice",
            Kind::Reraised => "edu-intx-reraised",
            Kind::DroppedWhileDisabled => "edu-intx-dropped-while-disabled",
            Kind::EnabledWhileHigh => "edu-intx-enabled-while-high",
            Kind::ClearPendingWhileHigh => "edu-intx-clear-pending-while-high",
            Kind::DisabledAtEoi => "edu-intx-disabled-at-eoi",
            Kind::RoutedAway => "edu-intx-routed-away",
        }
    }

    /// Its position in [`Kind::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

/// The interrupts the architecture gives for `raises` rounds.
pub fn expected_total(raises: u64) -> u64 {
    (0..raises).map(|i| Kind::of_round(i).interrupts()).sum()
}

/// Big-endian cells of a property.
fn cells(value: &[u8]) -> impl Iterator<Item = u32> + '_ {
    crate::nested::cells(value)
}

/// The GIC INTID that INTx `pin` (1 = INTA .. 4 = INTD) of bus 0 `device`
/// raises, through the first `pci-host-ecam-generic` bridge's
/// `interrupt-map` (the Open Firmware interrupt-mapping practice: each
/// entry is a child unit address (3 cells) and pin (1 cell), already
/// masked by `interrupt-map-mask`, then the parent's phandle, its unit
/// address (its `#address-cells`) and its specifier (`#interrupt-cells`,
/// 3 for a GICv3: type, number, flags)). Only SPIs (type 0) are accepted.
pub fn intx_intid(fdt: &Fdt<'_>, device: u8, pin: u8) -> Option<u32> {
    let pci = fdt.find_compatible(&["pci-host-ecam-generic"])?;
    let map = pci.property("interrupt-map")?.value;
    let mut mask = [u32::MAX; 4];
    if let Some(m) = pci.property("interrupt-map-mask") {
        for (slot, c) in mask.iter_mut().zip(cells(m.value)) {
            *slot = c;
        }
    }
    let key = [u32::from(device) << 11, 0, 0, u32::from(pin)];
    let key: [u32; 4] = core::array::from_fn(|i| key[i] & mask[i]);
    let mut at = 0;
    while at + 5 * 4 <= map.len() {
        let cell = |i: usize| {
            map.get(at + 4 * i..at + 4 * i + 4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        };
        let parent = fdt.find_phandle(cell(4)?)?;
        let addr_cells = parent
            .property("#address-cells")
            .and_then(|p| cells(p.value).next())
            .unwrap_or(0) as usize;
        let irq_cells = parent
            .property("#interrupt-cells")
            .and_then(|p| cells(p.value).next())
            .unwrap_or(3) as usize;
        let spec = 5 + addr_cells;
        if (0..4).all(|i| cell(i) == Some(key[i])) {
            if irq_cells != 3 || cell(spec)? != 0 {
                return None;
            }
            return cell(spec + 1)?.checked_add(32);
        }
        at += 4 * (spec + irq_cells);
    }
    None
}

#[cfg(target_os = "none")]
pub use hw::run;

#[cfg(target_os = "none")]
mod hw;

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    /// A device tree with a GICv3 (phandle 1, `#address-cells` 2 for its
    /// ITS child) and a host bridge whose `interrupt-map` is QEMU `virt`'s:
    /// devices 0-3 (the mask keeps two device bits), pins swizzled over
    /// SPIs 3-6.
    fn qemu_virt() -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let gic = w.begin_node("intc@8000000").unwrap();
        w.property_string("compatible", "arm,gic-v3").unwrap();
        w.property_u32("#interrupt-cells", 3).unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("phandle", 1).unwrap();
        w.end_node(gic).unwrap();
        let pci = w.begin_node("pcie@10000000").unwrap();
        w.property_string("compatible", "pci-host-ecam-generic")
            .unwrap();
        w.property_array_u32("interrupt-map-mask", &[0x1800, 0, 0, 7])
            .unwrap();
        let mut map = Vec::new();
        for dev in 0..4u32 {
            for pin in 0..4u32 {
                let spi = 3 + (dev + pin) % 4;
                map.extend([dev << 11, 0, 0, pin + 1, 1, 0, 0, 0, spi, 4]);
            }
        }
        w.property_array_u32("interrupt-map", &map).unwrap();
        w.end_node(pci).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn intx_through_the_interrupt_map() {
        let blob = qemu_virt();
        let fdt = Fdt::new(&blob).unwrap();
        // 00:01.0 INTA: SPI 4, INTID 36; device 5 is device 1 under the mask.
        assert_eq!(intx_intid(&fdt, 1, 1), Some(36));
        assert_eq!(intx_intid(&fdt, 5, 1), Some(36));
        assert_eq!(intx_intid(&fdt, 2, 3), Some(35));
        assert_eq!(intx_intid(&fdt, 1, 0), None, "no pin");
    }

    #[test]
    fn the_plan_and_what_the_architecture_says() {
        assert_eq!(Kind::of_round(0), Kind::Prompt);
        assert_eq!(Kind::of_round(9), Kind::Prompt);
        assert_eq!(Kind::of_round(17), Kind::RoutedAway);
        // 13 interrupts per 9 rounds.
        assert_eq!(expected_total(9), 13);
        assert_eq!(expected_total(1000), 111 * 13 + 1);
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert!(k.check_name().starts_with("edu-intx-"));
        }
    }
}
