//! The fixed guest physical (IPA) map every VM sees, the same for all VMs.
//! The hypervisor builds each guest's stage 2 and device tree from these
//! constants; scenario validation keeps guest RAM clear of them. The map
//! follows QEMU's `virt` machine so that guest kernels see familiar
//! addresses.

/// One region of the guest physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// What it is, as error messages name it.
    pub name: &'static str,
    /// First guest physical address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Region {
    /// One past the last address.
    pub const fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether `[start, end)` shares an address with this region.
    pub const fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end() && self.base < end
    }
}

/// GICv3 distributor.
pub const GICD: Region = Region {
    name: "GIC distributor",
    base: 0x0800_0000,
    size: 0x1_0000,
};

/// GICv3 ITS: the control frame, then the translation frame with
/// GITS_TRANSLATER (where devices write their MSIs).
pub const ITS: Region = Region {
    name: "GIC ITS",
    base: 0x0808_0000,
    size: 0x2_0000,
};

/// First GICv3 redistributor frame (vCPU 0).
pub const GICR_BASE: u64 = 0x080a_0000;

/// Redistributor frames per vCPU (RD_base + SGI_base, 64 KiB each).
pub const GICR_STRIDE: u64 = 0x2_0000;

/// PL011 UART.
pub const UART: Region = Region {
    name: "PL011 UART",
    base: 0x0900_0000,
    size: 0x1000,
};

/// PL031 real-time clock, where the machine has one to count from.
pub const RTC: Region = Region {
    name: "PL031 RTC",
    base: 0x0901_0000,
    size: 0x1000,
};

/// Virtual SMMUv3, only in VMs with `vsmmu = true`.
pub const VSMMU: Region = Region {
    name: "virtual SMMU",
    base: 0x0905_0000,
    size: 0x2_0000,
};

/// The VM's own counters (traps, vSMMU commands): a read-only page the
/// hypervisor emulates, so a guest can measure a phase of its own work.
pub const COUNTERS: Region = Region {
    name: "hypervisor counters",
    base: 0x0908_0000,
    size: 0x1000,
};

/// PCI memory window for assigned functions' BARs.
pub const PCI_MMIO: Region = Region {
    name: "PCI MMIO window",
    base: 0x1000_0000,
    size: 0x1000_0000,
};

/// PCI ECAM of the virtual host bridge.
pub const PCI_ECAM: Region = Region {
    name: "PCI ECAM",
    base: 0x3000_0000,
    size: 0x1000_0000,
};

/// GIC distributor base (= `GICD.base`).
pub const GICD_BASE: u64 = GICD.base;
/// GIC distributor size.
pub const GICD_SIZE: u64 = GICD.size;
/// ITS base (= `ITS.base`).
pub const ITS_BASE: u64 = ITS.base;
/// ITS size.
pub const ITS_SIZE: u64 = ITS.size;
/// PL011 base (= `UART.base`).
pub const UART_BASE: u64 = UART.base;
/// PL011 size.
pub const UART_SIZE: u64 = UART.size;
/// PL031 base (= `RTC.base`).
pub const RTC_BASE: u64 = RTC.base;
/// PL031 size.
pub const RTC_SIZE: u64 = RTC.size;
/// Virtual SMMU base (= `VSMMU.base`).
pub const VSMMU_BASE: u64 = VSMMU.base;
/// Virtual SMMU size.
pub const VSMMU_SIZE: u64 = VSMMU.size;
/// Counters page base (= `COUNTERS.base`).
pub const COUNTERS_BASE: u64 = COUNTERS.base;
/// Counters page size.
pub const COUNTERS_SIZE: u64 = COUNTERS.size;
/// PCI MMIO window base (= `PCI_MMIO.base`).
pub const PCI_MMIO_BASE: u64 = PCI_MMIO.base;
/// PCI MMIO window size.
pub const PCI_MMIO_SIZE: u64 = PCI_MMIO.size;
/// PCI ECAM base (= `PCI_ECAM.base`).
pub const PCI_ECAM_BASE: u64 = PCI_ECAM.base;
/// PCI ECAM size.
pub const PCI_ECAM_SIZE: u64 = PCI_ECAM.size;

/// Lowest guest RAM address, and the default `ram_base`.
pub const RAM_MIN: u64 = 0x4000_0000;

/// End of the guest RAM range (exclusive): a 40-bit IPA space.
pub const RAM_END: u64 = 1 << 40;

/// Most vCPUs per VM: the redistributor frames end below the UART.
pub const MAX_VCPUS: u32 = ((UART.base - GICR_BASE) / GICR_STRIDE) as u32;

/// The redistributor region of a VM with `vcpus` vCPUs.
pub const fn gicr(vcpus: u32) -> Region {
    Region {
        name: "GIC redistributors",
        base: GICR_BASE,
        size: GICR_STRIDE * vcpus as u64,
    }
}

/// Every device region of a VM with `vcpus` vCPUs, in address order.
pub const fn devices(vcpus: u32) -> [Region; 9] {
    [
        GICD,
        ITS,
        gicr(vcpus),
        UART,
        RTC,
        VSMMU,
        COUNTERS,
        PCI_MMIO,
        PCI_ECAM,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_regions_do_not_overlap_each_other_or_ram() {
        let regions = devices(MAX_VCPUS);
        for (i, a) in regions.iter().enumerate() {
            assert!(a.end() <= RAM_MIN, "{} reaches into RAM", a.name);
            for b in &regions[i + 1..] {
                assert!(
                    !a.overlaps(b.base, b.end()),
                    "{} overlaps {}",
                    a.name,
                    b.name
                );
            }
        }
        assert_eq!(MAX_VCPUS, 123);
        assert!(gicr(MAX_VCPUS + 1).overlaps(UART.base, UART.end()));
    }
}
