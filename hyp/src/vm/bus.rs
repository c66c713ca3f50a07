//! The MMIO bus of one VM: which emulated device answers a guest access to
//! an address that its stage 2 leaves unmapped.
//!
//! Every emulated device implements [`MmioDevice`] and is registered for
//! one address range; [`MmioBus::insert`] refuses a range that overlaps one
//! already registered, so no address can reach two devices. An access no
//! range claims gets the architected external abort from the trap handler.
//! (cloud-hypervisor's `vm-device` `Bus`/`BusDevice` is the model.)

use crate::vdev::vgic::{Effects, VGic};
use crate::vdev::vuart::VirtualUart;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use smmu::addr::Ipa;
use spin::Mutex;

/// What a device's access handler may use of the VM it belongs to (the
/// VM implements it, with the trapping vCPU and the machine, for the time
/// of one access): its models' state, and what an access may cause.
pub trait MmioContext {
    /// The VM's UART.
    fn uart(&self) -> &Mutex<VirtualUart>;
    /// The VM's vGIC.
    fn vgic(&self) -> &Mutex<VGic>;
    /// Carries out what a vGIC operation asks (kicks, deactivations).
    fn apply(&self, fx: Effects);
    /// Raises edge interrupt `intid` in the VM's vGIC.
    fn raise_edge(&self, intid: u32);
    /// Sets the UART interrupt's level from the UART's state.
    fn update_uart_irq(&self);
    /// Prints a line the guest wrote to its console.
    fn console_line(&self, line: &[u8]);
    /// Traps taken from the VM so far.
    fn traps(&self) -> u64;
    /// MSIs the hypervisor injected into the VM through the list registers.
    fn msis_injected(&self) -> u64;
    /// What the VM's vSMMU did (all 0 without one).
    fn vsmmu_stats(&self) -> smmu::vsmmu::VsmmuStats;
    /// How often the VM restarted.
    fn restarts(&self) -> u64;
    /// A register access to the VM's vITS at `offset` (`write`: the value
    /// written, `None` for a read): the value read (0 for a write).
    fn its_access(&self, offset: u64, size: u8, write: Option<u64>) -> u64;
    /// A register access to the VM's vSMMU: the value read (0 for a write)
    /// and the guest INTIDs to raise; None without a vSMMU.
    fn vsmmu_mmio(&self, offset: u64, size: u8, write: bool, value: u64)
        -> Option<(u64, Vec<u32>)>;
}

/// One access, after decoding: the offset inside the device's range, its
/// size in bytes (1, 2, 4 or 8) and, for a write, the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Offset from the start of the device's range.
    pub offset: u64,
    /// Bytes: 1, 2, 4 or 8.
    pub size: u8,
}

/// A device a guest reaches through MMIO traps.
///
/// Devices keep their own state behind their own locks (the bus is shared
/// by the VM's vCPUs); an access a device does not implement reads as zero
/// and ignores writes unless the device's architecture says otherwise.
pub trait MmioDevice: Send + Sync {
    /// A short name for reports ("vUART", "GIC distributor").
    fn name(&self) -> &'static str;
    /// A guest read; returns the value (the low `size` bytes count).
    fn read(&self, ctx: &dyn MmioContext, access: Access) -> u64;
    /// A guest write of `value` (its low `size` bytes).
    fn write(&self, ctx: &dyn MmioContext, access: Access, value: u64);
    /// Whether its accesses need nothing from the VM's vGIC and change
    /// nothing in it but the edges they raise through
    /// [`MmioContext::raise_edge`]: a trap may then carry one out before
    /// folding in the vCPU's list registers, and skip them altogether when
    /// it raises none. The default is no.
    fn leaves_vgic_alone(&self) -> bool {
        false
    }
    /// Puts the device back in its reset state: the VM restarts. Devices
    /// whose state lives elsewhere (the VM's vGIC, vITS, vSMMU, UART) or
    /// that have none keep the default, which does nothing.
    fn reset(&self) {}
}

/// Why a device could not be registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    BadRange(Range<Ipa>),
    /// The range overlaps a device already on the bus.
    Overlap {
        /// The device being added.
        new: &'static str,
        /// The device already there.
        existing: &'static str,
        /// Where they overlap.
        at: Range<Ipa>,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRange(r) => write!(f, "empty MMIO range {:#x}..{:#x}", r.start, r.end),
            Self::Overlap { new, existing, at } => write!(
                f,
                "{new} overlaps {existing} at {:#x}..{:#x}",
                at.start, at.end
            ),
        }
    }
}

struct Entry {
    range: Range<Ipa>,
    device: Box<dyn MmioDevice>,
}

/// Address ranges and the devices behind them, sorted by address.
#[derive(Default)]
pub struct MmioBus {
    entries: Vec<Entry>,
}

impl fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for e in &self.entries {
            m.entry(&e.range, &e.device.name());
        }
        m.finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + size)`.
    pub fn insert(
        &mut self,
        base: Ipa,
        size: u64,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), BusError> {
        let range = match base.checked_add(size) {
            Some(end) if size > 0 => base..end,
            _ => return Err(BusError::BadRange(base..Ipa(base.raw().wrapping_add(size)))),
        };
        let at = self
            .entries
            .partition_point(|e| e.range.start < range.start);
        for neighbour in [at.checked_sub(1), Some(at)].into_iter().flatten() {
            if let Some(e) = self.entries.get(neighbour) {
                if e.range.start < range.end && range.start < e.range.end {
                    return Err(BusError::Overlap {
                        new: device.name(),
                        existing: e.device.name(),
                        at: range.start.max(e.range.start)..range.end.min(e.range.end),
                    });
                }
            }
        }
        self.entries.insert(at, Entry { range, device });
        Ok(())
    }

    /// The device claiming the whole access `[addr, addr + size)` and the
    /// offset of `addr` in its range; None when no device does (also for an
    /// access that straddles the end of a range).
    pub fn find(&self, addr: Ipa, size: u8) -> Option<(&dyn MmioDevice, u64)> {
        let end = addr.checked_add(u64::from(size))?;
        let at = self.entries.partition_point(|e| e.range.start <= addr);
        let e = self.entries.get(at.checked_sub(1)?)?;
        (end <= e.range.end).then(|| (e.device.as_ref(), addr.raw() - e.range.start.raw()))
    }

    /// Puts every device on the bus back in its reset state.
    pub fn reset(&self) {
        for e in &self.entries {
            e.device.reset();
        }
    }

    /// The registered ranges and device names, in address order.
    #[cfg(test)]
    pub fn ranges(&self) -> impl Iterator<Item = (Range<Ipa>, &'static str)> + '_ {
        self.entries
            .iter()
            .map(|e| (e.range.clone(), e.device.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl MmioDevice for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn read(&self, _: &dyn MmioContext, _: Access) -> u64 {
            0
        }
        fn write(&self, _: &dyn MmioContext, _: Access, _: u64) {}
    }

    fn bus() -> MmioBus {
        let mut b = MmioBus::new();
        b.insert(Ipa(0x0900_0000), 0x1000, Box::new(Named("uart")))
            .unwrap();
        b.insert(Ipa(0x0800_0000), 0x1_0000, Box::new(Named("gicd")))
            .unwrap();
        b.insert(Ipa(0x080a_0000), 0x4_0000, Box::new(Named("gicr")))
            .unwrap();
        b
    }

    #[test]
    fn routes_each_address_to_its_device_with_the_offset() {
        let b = bus();
        let (d, off) = b.find(Ipa(0x0900_0018), 4).unwrap();
        assert_eq!((d.name(), off), ("uart", 0x18));
        let (d, off) = b.find(Ipa(0x080b_0004), 4).unwrap();
        assert_eq!((d.name(), off), ("gicr", 0x1_0004));
        assert_eq!(b.find(Ipa(0x0800_0000), 8).unwrap().0.name(), "gicd");
    }

    #[test]
    fn gaps_and_straddling_accesses_reach_nothing() {
        let b = bus();
        assert!(
            b.find(Ipa(0x0801_0000), 4).is_none(),
            "between gicd and gicr"
        );
        assert!(
            b.find(Ipa(0x0900_0ffe), 4).is_none(),
            "straddles the uart's end"
        );
        assert!(b.find(Ipa(0x07ff_fffc), 4).is_none(), "below everything");
        assert!(b.find(Ipa(u64::MAX - 1), 8).is_none(), "wraps");
    }

    #[test]
    fn refuses_overlaps_on_either_side_and_empty_ranges() {
        let mut b = bus();
        let e = b
            .insert(Ipa(0x0900_0800), 0x1000, Box::new(Named("late")))
            .unwrap_err();
        assert_eq!(
            e,
            BusError::Overlap {
                new: "late",
                existing: "uart",
                at: Ipa(0x0900_0800)..Ipa(0x0900_1000)
            }
        );
        assert!(b
            .insert(Ipa(0x08ff_f000), 0x2000, Box::new(Named("under")))
            .is_err());
        assert!(b
            .insert(Ipa(0x0700_0000), 0x2000_0000, Box::new(Named("all")))
            .is_err());
        assert!(b
            .insert(Ipa(0x0a00_0000), 0, Box::new(Named("empty")))
            .is_err());
        assert!(b.insert(Ipa(u64::MAX), 2, Box::new(Named("wrap"))).is_err());
        // Adjacent is fine.
        b.insert(Ipa(0x0900_1000), 0x1000, Box::new(Named("next")))
            .unwrap();
        let names: Vec<_> = b.ranges().map(|(_, n)| n).collect();
        assert_eq!(names, ["gicd", "gicr", "uart", "next"]);
    }
}
