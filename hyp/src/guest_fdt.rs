//! A guest's device tree: only what that VM owns.
//!
//! [`build`] writes a flattened device tree (DTB) for one VM with the
//! `vm-fdt` crate: its CPUs (MPIDR Aff0 = 0..n, started through PSCI), its
//! RAM, PSCI over HVC, a GICv3 (distributor + one redistributor region), the
//! architected timer, one PL011 with the fixed 24 MHz clock Linux's
//! `amba-pl011` driver asks for, optionally a virtual PCI host bridge
//! ([`PciDt`]), and `/chosen` with the command line, the console and the
//! initrd. The layout follows what QEMU's `virt` machine generates, so an
//! unmodified Linux `virt` kernel boots with it.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use vm_fdt::FdtWriter;

/// The architected timer's PPIs, as Linux's `arm,armv8-timer` binding lists
/// them: secure physical, non-secure physical, virtual, hypervisor physical
/// (INTIDs 29, 30, 27, 26).
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// How the guest calls PSCI: the hypervisor handles HVC from EL1.
pub const PSCI_METHOD: &str = "hvc";

/// Frequency of the UART's reference clock (`apb-pclk`), as on QEMU's `virt`.
pub const UART_CLOCK_HZ: u32 = 24_000_000;

/// Highest SPI number (INTID 1019 - 32) a GICv3 has.
const MAX_SPI: u32 = 987;

/// CPUs the `reg` of a `cpu@N` node can name: MPIDR Aff0 is 8 bits.
const MAX_CPUS: u32 = 256;

/// Interrupt specifier: an SPI (first cell of a 3-cell GIC specifier).
const GIC_SPI: u32 = 0;
/// Interrupt specifier: a PPI.
const GIC_PPI: u32 = 1;
/// Interrupt specifier flags: level-sensitive, active high (as QEMU's `virt`
/// writes for the timer and the UART with a GICv3).
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// Phandle of the interrupt controller.
const PHANDLE_GIC: u32 = 1;
/// Phandle of the UART's clock.
const PHANDLE_CLK: u32 = 2;
/// Interrupt specifier flag: rising edge.
const IRQ_TYPE_EDGE_RISING: u32 = 1;
/// Phandle of the virtual SMMUv3 node.
const PHANDLE_VSMMU: u32 = 3;
/// Phandle of the ITS node (the PCI host bridge's `msi-map` points to it).
const PHANDLE_ITS: u32 = 4;

/// Bytes of ECAM per bus (32 devices x 8 functions x 4 KiB).
const ECAM_BUS_SIZE: u64 = 1 << 20;
/// Buses one ECAM region can cover.
const MAX_BUSES: u64 = 256;
/// PCI devices on a bus.
const PCI_DEVICES: u8 = 32;
/// `ranges` space code (phys.hi): 32-bit memory, non-prefetchable.
const PCI_SPACE_MEM32: u32 = 0x0200_0000;
/// `ranges` space code (phys.hi): 64-bit memory, non-prefetchable.
const PCI_SPACE_MEM64: u32 = 0x0300_0000;
/// `interrupt-map-mask`: device number (phys.hi bits 15:11) and INTx pin.
const PCI_INTX_MAP_MASK: [u32; 4] = [0x1800, 0, 0, 7];

/// A virtual PCI host bridge (generic ECAM, `pci-host-ecam-generic`), bus 0
/// holding the functions assigned to the VM. Addresses are guest physical;
/// both memory windows are identity-mapped (PCI address == IPA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDt {
    /// ECAM: base and size (a multiple of 1 MiB, at most 256 MiB; one MiB
    /// per bus, buses numbered from 0).
    pub ecam: (u64, u64),
    /// 32-bit non-prefetchable memory window: base and size (below 4 GiB).
    pub mmio: (u64, u64),
    /// 64-bit non-prefetchable memory window, if any: base and size.
    pub mmio64: Option<(u64, u64)>,
    /// Legacy interrupts: (device 0..32 on bus 0, pin 1..=4 for INTA..INTD,
    /// guest SPI number), one entry per routed pin.
    pub intx: Vec<(u8, u8, u32)>,
}

/// Everything a VM's device tree says. Addresses are guest physical (IPA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDt {
    /// The VM's name, in the root `model`.
    pub name: String,
    /// Number of vCPUs; vCPU `i` has MPIDR Aff0 = `i`.
    pub cpus: u32,
    /// Base of the VM's RAM.
    pub ram_base: u64,
    /// Size of the VM's RAM in bytes.
    pub ram_size: u64,
    /// GIC distributor: base and size.
    pub gic_dist: (u64, u64),
    /// GIC redistributors, one contiguous region for all vCPUs: base and size.
    pub gic_redist: (u64, u64),
    /// The PL011: base, size and SPI number (INTID - 32).
    pub uart: (u64, u64, u32),
    /// The kernel command line (`/chosen/bootargs`).
    pub bootargs: String,
    /// The initrd's guest-physical `[start, end)`, if any.
    pub initrd: Option<(u64, u64)>,
    /// The virtual PCI host bridge, if the VM has PCI functions. With it,
    /// `/chosen` also gets `linux,pci-probe-only = <1>`: the BARs are
    /// placed by the hypervisor and Linux must keep them.
    pub pci: Option<PciDt>,
    /// The virtual SMMUv3 in front of the PCI bus, if the VM has one:
    /// base, size, event-queue SPI, global-error SPI (edge). With it the
    /// PCI node gets `iommu-map` (StreamID = requester ID).
    pub vsmmu: Option<(u64, u64, u32, u32)>,
    /// The VM's read-only counters page (`smmuhyp,vm-counters`): base,
    /// size.
    pub counters: Option<(u64, u64)>,
    /// The GICv3 ITS (`arm,gic-v3-its`, a child of the GIC node): base,
    /// size. With it the PCI node gets `msi-map` (DeviceID = requester
    /// ID).
    pub its: Option<(u64, u64)>,
    /// Whether `/chosen` gets `rng-seed` and `kaslr-seed` properties
    /// ([`crate::seed::RNG_SEED_LEN`] and [`crate::seed::KASLR_SEED_LEN`]
    /// bytes). They are written as zeroes: the bytes are the start's own,
    /// put where [`seed_values`] finds them each time the VM starts.
    pub seeds: bool,
    /// The PL031 real-time clock (`arm,pl031`, no interrupt, so Linux
    /// offers no alarm): base, size.
    pub rtc: Option<(u64, u64)>,
}

/// Where in `blob` (a device tree [`build`] wrote with
/// [`GuestDt::seeds`]) the values of `/chosen/rng-seed` and
/// `/chosen/kaslr-seed` lie, as byte offsets, in the order of a
/// [`crate::seed::GuestSeed`]'s parts; `None` without them.
pub fn seed_values(blob: &[u8]) -> Option<[core::ops::Range<usize>; 2]> {
    let fdt = flat_device_tree::Fdt::new(blob).ok()?;
    let chosen = fdt.find_node("/chosen")?;
    let at = |name: &str, len: usize| {
        let v = chosen.property(name)?.value;
        let start = (v.as_ptr() as usize).checked_sub(blob.as_ptr() as usize)?;
        (v.len() == len).then_some(start..start + len)
    };
    Some([
        at("rng-seed", crate::seed::RNG_SEED_LEN)?,
        at("kaslr-seed", crate::seed::KASLR_SEED_LEN)?,
    ])
}

/// `blob`, a device tree whose seed values lie at `holes` (from
/// [`seed_values`] on it: rng-seed's, then kaslr-seed's, in the order
/// [`build`] writes them), as the pieces to write for one start: its
/// bytes, with `seed`'s at the holes (its rng-seed bytes, then its
/// kaslr-seed bytes). Each piece is an offset from the blob's start and
/// bytes; they follow one another and cover the blob exactly. Holes that
/// are not such a pair (never from [`seed_values`]) leave the blob whole,
/// its seeds the zeroes it was built with.
pub fn seeded<'a>(
    blob: &'a [u8],
    holes: &[core::ops::Range<usize>; 2],
    seed: &'a crate::seed::GuestSeed,
) -> Vec<(usize, &'a [u8])> {
    let (rng, kaslr) = seed.split_at(crate::seed::RNG_SEED_LEN);
    let [r, k] = holes;
    if r.len() != rng.len() || k.len() != kaslr.len() || r.end > k.start || k.end > blob.len() {
        return alloc::vec![(0, blob)];
    }
    let mut out = alloc::vec![
        (0, &blob[..r.start]),
        (r.start, rng),
        (r.end, &blob[r.end..k.start]),
        (k.start, kaslr),
        (k.end, &blob[k.end..]),
    ];
    out.retain(|(_, b)| !b.is_empty());
    out
}

/// Why a device tree could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestFdtError {
    /// Zero vCPUs, or more than MPIDR Aff0 can number.
    BadCpuCount(u32),
    /// RAM of size zero, or one that wraps around the address space.
    BadRam,
    /// The initrd's range is empty-inverted or not inside RAM.
    BadInitrd {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// The UART's SPI number is beyond what a GICv3 has.
    BadUartSpi(u32),
    /// The PCI host bridge cannot be described as given.
    BadPci(&'static str),
    /// The FDT writer refused (e.g. a NUL byte inside the name or bootargs).
    Writer(vm_fdt::Error),
}

impl fmt::Display for GuestFdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCpuCount(n) => write!(f, "{n} vCPUs (must be 1..={MAX_CPUS})"),
            Self::BadRam => write!(f, "RAM is empty or wraps around"),
            Self::BadInitrd { start, end } => {
                write!(f, "initrd {start:#x}..{end:#x} is not inside RAM")
            }
            Self::BadUartSpi(spi) => write!(f, "UART SPI {spi} is above {MAX_SPI}"),
            Self::BadPci(why) => write!(f, "PCI host bridge: {why}"),
            Self::Writer(e) => write!(f, "FDT writer: {e}"),
        }
    }
}

impl From<vm_fdt::Error> for GuestFdtError {
    fn from(e: vm_fdt::Error) -> Self {
        Self::Writer(e)
    }
}

/// A `reg` value with #address-cells = #size-cells = 2.
fn reg(base: u64, size: u64) -> [u64; 2] {
    [base, size]
}

/// A string-list property value.
fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl GuestDt {
    /// Checks what the device tree would otherwise state wrongly.
    fn validate(&self) -> Result<(), GuestFdtError> {
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(GuestFdtError::BadCpuCount(self.cpus));
        }
        let ram_end = self
            .ram_base
            .checked_add(self.ram_size)
            .filter(|_| self.ram_size > 0)
            .ok_or(GuestFdtError::BadRam)?;
        if let Some((start, end)) = self.initrd {
            if start > end || start < self.ram_base || end > ram_end {
                return Err(GuestFdtError::BadInitrd { start, end });
            }
        }
        if self.uart.2 > MAX_SPI {
            return Err(GuestFdtError::BadUartSpi(self.uart.2));
        }
        if let Some(pci) = &self.pci {
            pci.validate().map_err(GuestFdtError::BadPci)?;
        }
        Ok(())
    }

    /// Path of the UART node (`/chosen/stdout-path`).
    fn uart_path(&self) -> String {
        format!("/pl011@{:x}", self.uart.0)
    }
}

/// Whether `base + size` neither wraps nor is empty.
fn is_range(base: u64, size: u64) -> bool {
    size > 0 && base.checked_add(size).is_some()
}

impl PciDt {
    /// Checks what the node would otherwise state wrongly.
    fn validate(&self) -> Result<(), &'static str> {
        let (ecam_base, ecam_size) = self.ecam;
        if !is_range(ecam_base, ecam_size)
            || ecam_size % ECAM_BUS_SIZE != 0
            || ecam_size / ECAM_BUS_SIZE > MAX_BUSES
        {
            return Err("ECAM size must be 1..=256 MiB in whole MiB");
        }
        let (mmio_base, mmio_size) = self.mmio;
        if !is_range(mmio_base, mmio_size) || mmio_base + mmio_size > 1 << 32 {
            return Err("32-bit window is empty or not below 4 GiB");
        }
        if let Some((base, size)) = self.mmio64 {
            if !is_range(base, size) {
                return Err("64-bit window is empty or wraps around");
            }
        }
        for (i, &(device, pin, spi)) in self.intx.iter().enumerate() {
            if device >= PCI_DEVICES {
                return Err("INTx device number above 31");
            }
            if !(1..=4).contains(&pin) {
                return Err("INTx pin not 1..=4 (INTA..INTD)");
            }
            if spi > MAX_SPI {
                return Err("INTx SPI above 987");
            }
            if self.intx[..i]
                .iter()
                .any(|&(d, p, _)| (d, p) == (device, pin))
            {
                return Err("INTx pin routed twice");
            }
        }
        Ok(())
    }

    /// `bus-range`: bus 0 up to what the ECAM covers.
    fn bus_range(&self) -> [u32; 2] {
        [0, (self.ecam.1 / ECAM_BUS_SIZE - 1) as u32]
    }

    /// `ranges`: (phys.hi, phys.mid, phys.lo, CPU address, size) per
    /// window, identity-mapped.
    fn ranges(&self) -> Vec<u32> {
        let windows = [
            Some((PCI_SPACE_MEM32, self.mmio)),
            self.mmio64.map(|w| (PCI_SPACE_MEM64, w)),
        ];
        windows
            .into_iter()
            .flatten()
            .flat_map(|(space, (base, size))| {
                let (hi, lo) = ((base >> 32) as u32, base as u32);
                [space, hi, lo, hi, lo, (size >> 32) as u32, size as u32]
            })
            .collect()
    }

    /// `interrupt-map`: child unit address (device << 11, 0, 0), child pin,
    /// the GIC, its unit address (two zero cells: its #address-cells is
    /// 2, for the ITS child) and its 3-cell specifier.
    fn interrupt_map(&self) -> Vec<u32> {
        self.intx
            .iter()
            .flat_map(|&(device, pin, spi)| {
                let unit = u32::from(device) << 11;
                [
                    unit,
                    0,
                    0,
                    u32::from(pin),
                    PHANDLE_GIC,
                    0,
                    0,
                    GIC_SPI,
                    spi,
                    IRQ_TYPE_LEVEL_HIGH,
                ]
            })
            .collect()
    }
}

/// Writes the `pcie@<ecam>` node of a generic ECAM host bridge, as QEMU's
/// `virt` does: `iommu-map` with a vSMMU, `msi-map` with an ITS.
fn write_pci(w: &mut FdtWriter, pci: &PciDt, iommu: bool, its: bool) -> Result<(), vm_fdt::Error> {
    let node = w.begin_node(&format!("pcie@{:x}", pci.ecam.0))?;
    w.property_string("compatible", "pci-host-ecam-generic")?;
    w.property_string("device_type", "pci")?;
    w.property_u32("#address-cells", 3)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("#interrupt-cells", 1)?;
    w.property_array_u64("reg", &reg(pci.ecam.0, pci.ecam.1))?;
    w.property_array_u32("bus-range", &pci.bus_range())?;
    w.property_u32("linux,pci-domain", 0)?;
    w.property_array_u32("ranges", &pci.ranges())?;
    w.property_null("dma-coherent")?;
    if iommu {
        w.property_array_u32("iommu-map", &[0, PHANDLE_VSMMU, 0, 0x1_0000])?;
    }
    if its {
        w.property_array_u32("msi-map", &[0, PHANDLE_ITS, 0, 0x1_0000])?;
    }
    if !pci.intx.is_empty() {
        w.property_array_u32("interrupt-map-mask", &PCI_INTX_MAP_MASK)?;
        w.property_array_u32("interrupt-map", &pci.interrupt_map())?;
    }
    w.end_node(node)
}

/// Writes the device tree of the VM `dt` describes.
pub fn build(dt: &GuestDt) -> Result<Vec<u8>, GuestFdtError> {
    dt.validate()?;
    let mut w = FdtWriter::new()?;

    let root = w.begin_node("")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_string("model", &format!("smmuhyp VM {}", dt.name))?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for i in 0..dt.cpus {
        let cpu = w.begin_node(&format!("cpu@{i:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,armv8")?;
        w.property_u32("reg", i)?;
        w.property_string("enable-method", "psci")?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let memory = w.begin_node(&format!("memory@{:x}", dt.ram_base))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &reg(dt.ram_base, dt.ram_size))?;
    w.end_node(memory)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list("compatible", strings(&["arm,psci-1.0", "arm,psci-0.2"]))?;
    w.property_string("method", PSCI_METHOD)?;
    w.end_node(psci)?;

    let intc = w.begin_node(&format!("intc@{:x}", dt.gic_dist.0))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#redistributor-regions", 1)?;
    let (dist, redist) = (dt.gic_dist, dt.gic_redist);
    w.property_array_u64("reg", &[dist.0, dist.1, redist.0, redist.1])?;
    w.property_phandle(PHANDLE_GIC)?;
    // Children (the ITS) in the parent's address space, as on QEMU's
    // `virt`.
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_null("ranges")?;
    if let Some((base, size)) = dt.its {
        let its = w.begin_node(&format!("msi-controller@{base:x}"))?;
        w.property_string("compatible", "arm,gic-v3-its")?;
        w.property_null("msi-controller")?;
        w.property_u32("#msi-cells", 1)?;
        w.property_array_u64("reg", &reg(base, size))?;
        w.property_phandle(PHANDLE_ITS)?;
        w.end_node(its)?;
    }
    w.end_node(intc)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    let cells: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
        .collect();
    w.property_array_u32("interrupts", &cells)?;
    w.property_null("always-on")?;
    w.end_node(timer)?;

    let clk = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(PHANDLE_CLK)?;
    w.end_node(clk)?;

    let (uart_base, uart_size, uart_spi) = dt.uart;
    let uart = w.begin_node(&dt.uart_path()[1..])?;
    w.property_string_list("compatible", strings(&["arm,pl011", "arm,primecell"]))?;
    w.property_array_u64("reg", &reg(uart_base, uart_size))?;
    w.property_array_u32("interrupts", &[GIC_SPI, uart_spi, IRQ_TYPE_LEVEL_HIGH])?;
    w.property_array_u32("clocks", &[PHANDLE_CLK, PHANDLE_CLK])?;
    w.property_string_list("clock-names", strings(&["uartclk", "apb_pclk"]))?;
    w.end_node(uart)?;

    if let Some((base, size)) = dt.rtc {
        let rtc = w.begin_node(&format!("pl031@{base:x}"))?;
        w.property_string_list("compatible", strings(&["arm,pl031", "arm,primecell"]))?;
        w.property_array_u64("reg", &reg(base, size))?;
        w.property_u32("clocks", PHANDLE_CLK)?;
        w.property_string("clock-names", "apb_pclk")?;
        w.end_node(rtc)?;
    }

    if let Some((base, size, eventq, gerror)) = dt.vsmmu {
        let smmu = w.begin_node(&format!("iommu@{base:x}"))?;
        w.property_string("compatible", "arm,smmu-v3")?;
        w.property_array_u64("reg", &reg(base, size))?;
        w.property_array_u32(
            "interrupts",
            &[
                GIC_SPI,
                eventq,
                IRQ_TYPE_EDGE_RISING,
                GIC_SPI,
                gerror,
                IRQ_TYPE_EDGE_RISING,
            ],
        )?;
        w.property_string_list("interrupt-names", strings(&["eventq", "gerror"]))?;
        w.property_null("dma-coherent")?;
        w.property_u32("#iommu-cells", 1)?;
        w.property_phandle(PHANDLE_VSMMU)?;
        w.end_node(smmu)?;
    }
    if let Some((base, size)) = dt.counters {
        let node = w.begin_node(&format!("counters@{base:x}"))?;
        w.property_string("compatible", "smmuhyp,vm-counters")?;
        w.property_array_u64("reg", &reg(base, size))?;
        w.end_node(node)?;
    }
    if let Some(pci) = &dt.pci {
        write_pci(&mut w, pci, dt.vsmmu.is_some(), dt.its.is_some())?;
    }

    let aliases = w.begin_node("aliases")?;
    w.property_string("serial0", &dt.uart_path())?;
    w.end_node(aliases)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", &dt.bootargs)?;
    w.property_string("stdout-path", &dt.uart_path())?;
    if let Some((start, end)) = dt.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    if dt.pci.is_some() {
        // Linux (`of_pci_check_probe_only`) then claims the BARs as they
        // are instead of reassigning them: placement is the hypervisor's.
        w.property_u32("linux,pci-probe-only", 1)?;
    }
    if dt.seeds {
        w.property("rng-seed", &[0; crate::seed::RNG_SEED_LEN])?;
        w.property("kaslr-seed", &[0; crate::seed::KASLR_SEED_LEN])?;
    }
    w.end_node(chosen)?;

    w.end_node(root)?;
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flat_device_tree::node::FdtNode;
    use flat_device_tree::Fdt;

    fn example() -> GuestDt {
        GuestDt {
            name: "linux".into(),
            cpus: 2,
            ram_base: 0x4000_0000,
            ram_size: 0x4000_0000,
            gic_dist: (0x800_0000, 0x1_0000),
            gic_redist: (0x80a_0000, 0x4_0000),
            uart: (0x900_0000, 0x1000, 1),
            bootargs: "console=ttyAMA0 nokaslr".into(),
            initrd: Some((0x7e00_0000, 0x7e10_0000)),
            pci: None,
            vsmmu: None,
            counters: Some((0x908_0000, 0x1000)),
            its: None,
            seeds: false,
            rtc: Some((0x901_0000, 0x1000)),
        }
    }

    fn with_pci() -> GuestDt {
        GuestDt {
            pci: Some(PciDt {
                ecam: (0x40_1000_0000, 0x100_0000),
                mmio: (0x1000_0000, 0x2eff_0000),
                mmio64: Some((0x80_0000_0000, 0x80_0000_0000)),
                intx: vec![(0, 1, 3), (1, 1, 4), (1, 2, 5)],
            }),
            ..example()
        }
    }

    fn cells(node: FdtNode<'_, '_>, name: &str) -> Vec<u32> {
        node.property(name)
            .unwrap_or_else(|| panic!("{} has no {name}", node.name))
            .value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn u64s(node: FdtNode<'_, '_>, name: &str) -> Vec<u64> {
        node.property(name)
            .unwrap_or_else(|| panic!("{} has no {name}", node.name))
            .value
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn strs<'a>(node: FdtNode<'_, 'a>, name: &str) -> Vec<&'a str> {
        node.property(name)
            .unwrap_or_else(|| panic!("{} has no {name}", node.name))
            .iter_str()
            .collect()
    }

    #[test]
    fn root_and_cpus() {
        let blob = build(&example()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let root = fdt.find_node("/").unwrap();
        assert_eq!(cells(root, "#address-cells"), [2]);
        assert_eq!(cells(root, "#size-cells"), [2]);
        assert_eq!(strs(root, "compatible"), ["linux,dummy-virt"]);
        assert_eq!(strs(root, "model"), ["smmuhyp VM linux"]);

        let cpus: Vec<_> = fdt.cpus().collect();
        assert_eq!(cpus.len(), 2);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu.ids().unwrap().first().unwrap(), i);
            let node = fdt.find_node(&format!("/cpus/cpu@{i}")).unwrap();
            assert_eq!(strs(node, "device_type"), ["cpu"]);
            assert_eq!(strs(node, "compatible"), ["arm,armv8"]);
            assert_eq!(strs(node, "enable-method"), ["psci"]);
        }
        let cpus_node = fdt.find_node("/cpus").unwrap();
        assert_eq!(cells(cpus_node, "#address-cells"), [1]);
        assert_eq!(cells(cpus_node, "#size-cells"), [0]);
    }

    #[test]
    fn memory_and_psci() {
        let blob = build(&example()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let regions: Vec<_> = fdt.memory().unwrap().regions().collect();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].starting_address as u64, 0x4000_0000);
        assert_eq!(regions[0].size, Some(0x4000_0000));
        let mem = fdt.find_node("/memory@40000000").unwrap();
        assert_eq!(strs(mem, "device_type"), ["memory"]);

        let psci = fdt.find_node("/psci").unwrap();
        assert_eq!(strs(psci, "compatible"), ["arm,psci-1.0", "arm,psci-0.2"]);
        assert_eq!(strs(psci, "method"), ["hvc"]);
    }

    #[test]
    fn gic_timer_and_interrupt_parent() {
        let blob = build(&example()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let gic = fdt.find_compatible(&["arm,gic-v3"]).unwrap();
        assert_eq!(gic.name, "intc@8000000");
        assert_eq!(cells(gic, "#interrupt-cells"), [3]);
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(cells(gic, "#redistributor-regions"), [1]);
        assert_eq!(
            u64s(gic, "reg"),
            [0x800_0000, 0x1_0000, 0x80a_0000, 0x4_0000]
        );
        let root = fdt.find_node("/").unwrap();
        // The root's interrupt-parent, inherited by the timer and the
        // UART, is the GIC.
        let parent = cells(root, "interrupt-parent")[0];
        assert_eq!(fdt.find_phandle(parent).unwrap().name, gic.name);

        let timer = fdt.find_node("/timer").unwrap();
        assert_eq!(strs(timer, "compatible"), ["arm,armv8-timer"]);
        assert!(timer.property("always-on").is_some());
        assert_eq!(
            cells(timer, "interrupts"),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
    }

    #[test]
    fn uart_clock_and_chosen() {
        let blob = build(&example()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let uart = fdt.find_node("/pl011@9000000").unwrap();
        assert_eq!(strs(uart, "compatible"), ["arm,pl011", "arm,primecell"]);
        assert_eq!(u64s(uart, "reg"), [0x900_0000, 0x1000]);
        assert_eq!(cells(uart, "interrupts"), [0, 1, 4]);
        assert_eq!(strs(uart, "clock-names"), ["uartclk", "apb_pclk"]);
        let clk = fdt.find_node("/apb-pclk").unwrap();
        assert_eq!(strs(clk, "compatible"), ["fixed-clock"]);
        assert_eq!(cells(clk, "clock-frequency"), [24_000_000]);
        assert_eq!(cells(clk, "#clock-cells"), [0]);
        let phandle = cells(clk, "phandle")[0];
        assert_eq!(cells(uart, "clocks"), [phandle, phandle]);

        let chosen = fdt.chosen().unwrap();
        assert_eq!(chosen.bootargs(), Some("console=ttyAMA0 nokaslr"));
        assert_eq!(chosen.stdout().unwrap().node().name, "pl011@9000000");
        let node = fdt.find_node("/chosen").unwrap();
        assert_eq!(u64s(node, "linux,initrd-start"), [0x7e00_0000]);
        assert_eq!(u64s(node, "linux,initrd-end"), [0x7e10_0000]);
        let aliases = fdt.find_node("/aliases").unwrap();
        assert_eq!(strs(aliases, "serial0"), ["/pl011@9000000"]);
        assert!(node.property("rng-seed").is_none());
        assert_eq!(seed_values(&blob), None);
    }

    #[test]
    fn seeds_are_found_where_each_start_writes_its_own() {
        let dt = GuestDt {
            seeds: true,
            ..example()
        };
        let mut blob = build(&dt).unwrap();
        let [rng, kaslr] = seed_values(&blob).unwrap();
        assert_eq!((rng.len(), kaslr.len()), (32, 8));
        // What a start writes there is what the guest reads in /chosen,
        // and nothing else of the tree moves.
        let before = Fdt::new(&blob).unwrap().total_size();
        for (i, b) in blob[rng.clone()].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        blob[kaslr.clone()].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_be_bytes());
        let fdt = Fdt::new(&blob).unwrap();
        assert_eq!(fdt.total_size(), before);
        let chosen = fdt.find_node("/chosen").unwrap();
        let seed: Vec<u8> = (1..=32).collect();
        assert_eq!(chosen.property("rng-seed").unwrap().value, &seed[..]);
        assert_eq!(u64s(chosen, "kaslr-seed"), [0x0123_4567_89ab_cdef]);
        assert_eq!(
            fdt.chosen().unwrap().bootargs(),
            Some("console=ttyAMA0 nokaslr")
        );
    }

    #[test]
    fn a_start_writes_the_tree_with_its_own_seeds() {
        let dt = GuestDt {
            seeds: true,
            ..example()
        };
        let blob = build(&dt).unwrap();
        let holes = seed_values(&blob).unwrap();
        let seed: crate::seed::GuestSeed = core::array::from_fn(|i| i as u8 + 1);
        let mut written = vec![0xeeu8; blob.len()];
        let mut at = 0;
        for (off, bytes) in seeded(&blob, &holes, &seed) {
            assert_eq!(off, at, "the pieces follow one another");
            written[off..off + bytes.len()].copy_from_slice(bytes);
            at = off + bytes.len();
        }
        assert_eq!(at, blob.len(), "and cover the tree");
        let fdt = Fdt::new(&written).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(chosen.property("rng-seed").unwrap().value, &seed[..32]);
        assert_eq!(chosen.property("kaslr-seed").unwrap().value, &seed[32..]);
        // Holes that are not the tree's leave it whole.
        let bad = [holes[0].clone(), blob.len() - 4..blob.len() + 4];
        assert_eq!(seeded(&blob, &bad, &seed), vec![(0, &blob[..])]);
    }

    #[test]
    fn only_what_the_vm_owns() {
        let mut dt = example();
        dt.cpus = 1;
        dt.initrd = None;
        let blob = build(&dt).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert_eq!(fdt.cpus().count(), 1);
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("linux,initrd-start").is_none());
        let counters = fdt.find_compatible(&["smmuhyp,vm-counters"]).unwrap();
        let r = counters.reg().next().unwrap();
        assert_eq!(
            (r.starting_address as u64, r.size),
            (0x908_0000, Some(0x1000))
        );
        let mut names: Vec<&str> = fdt
            .find_node("/")
            .unwrap()
            .children()
            .map(|n| n.name)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "aliases",
                "apb-pclk",
                "chosen",
                "counters@9080000",
                "cpus",
                "intc@8000000",
                "memory@40000000",
                "pl011@9000000",
                "pl031@9010000",
                "psci",
                "timer"
            ]
        );
        dt.rtc = None;
        let blob = build(&dt).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert!(fdt.find_compatible(&["arm,pl031"]).is_none());
    }

    #[test]
    fn the_rtc_is_a_pl031_without_an_interrupt() {
        let blob = build(&example()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let rtc = fdt.find_node("/pl031@9010000").unwrap();
        assert_eq!(strs(rtc, "compatible"), ["arm,pl031", "arm,primecell"]);
        assert_eq!(u64s(rtc, "reg"), [0x901_0000, 0x1000]);
        assert_eq!(strs(rtc, "clock-names"), ["apb_pclk"]);
        let clk = fdt.find_node("/apb-pclk").unwrap();
        assert_eq!(cells(rtc, "clocks"), cells(clk, "phandle"));
        assert!(
            rtc.property("interrupts").is_none(),
            "no interrupt: Linux offers no alarm the RTC could not raise"
        );
    }

    #[test]
    fn refuses_what_it_cannot_describe() {
        let with = |f: fn(&mut GuestDt)| {
            let mut dt = example();
            f(&mut dt);
            build(&dt).unwrap_err()
        };
        assert_eq!(with(|d| d.cpus = 0), GuestFdtError::BadCpuCount(0));
        assert_eq!(with(|d| d.cpus = 257), GuestFdtError::BadCpuCount(257));
        assert_eq!(with(|d| d.ram_size = 0), GuestFdtError::BadRam);
        assert_eq!(with(|d| d.ram_base = u64::MAX), GuestFdtError::BadRam);
        assert_eq!(
            with(|d| d.initrd = Some((0x7fff_f000, 0x8000_1000))),
            GuestFdtError::BadInitrd {
                start: 0x7fff_f000,
                end: 0x8000_1000
            }
        );
        assert_eq!(
            with(|d| d.initrd = Some((0x5000_0000, 0x4000_0000))),
            GuestFdtError::BadInitrd {
                start: 0x5000_0000,
                end: 0x4000_0000
            }
        );
        assert_eq!(with(|d| d.uart.2 = 988), GuestFdtError::BadUartSpi(988));
        assert_eq!(
            with(|d| d.bootargs = "a\0b".into()),
            GuestFdtError::Writer(vm_fdt::Error::InvalidString)
        );
        // The largest valid values still work.
        let mut dt = example();
        dt.cpus = 256;
        dt.uart.2 = 987;
        let blob = build(&dt).unwrap();
        assert_eq!(Fdt::new(&blob).unwrap().cpus().count(), 256);
    }

    #[test]
    fn its_and_msi_map() {
        let blob = build(&with_pci()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert!(fdt.find_compatible(&["arm,gic-v3-its"]).is_none());
        let pci = fdt.find_compatible(&["pci-host-ecam-generic"]).unwrap();
        assert!(pci.property("msi-map").is_none(), "no ITS, no MSI");

        let dt = GuestDt {
            its: Some((0x808_0000, 0x2_0000)),
            ..with_pci()
        };
        let blob = build(&dt).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let its = fdt.find_compatible(&["arm,gic-v3-its"]).unwrap();
        assert_eq!(its.name, "msi-controller@8080000");
        assert!(its.property("msi-controller").is_some());
        assert_eq!(cells(its, "#msi-cells"), [1]);
        assert_eq!(u64s(its, "reg"), [0x808_0000, 0x2_0000]);
        let gic = fdt.find_compatible(&["arm,gic-v3"]).unwrap();
        assert!(gic.property("ranges").is_some());
        assert!(
            gic.children().any(|c| c.name == its.name),
            "a child of the GIC"
        );
        // DeviceID = requester ID, for every requester ID.
        let pci = fdt.find_compatible(&["pci-host-ecam-generic"]).unwrap();
        assert_eq!(
            cells(pci, "msi-map"),
            [0, cells(its, "phandle")[0], 0, 0x1_0000]
        );
    }

    #[test]
    fn pci_host_bridge() {
        let blob = build(&with_pci()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let pci = fdt.find_compatible(&["pci-host-ecam-generic"]).unwrap();
        assert_eq!(pci.name, "pcie@4010000000");
        assert_eq!(strs(pci, "device_type"), ["pci"]);
        assert_eq!(cells(pci, "#address-cells"), [3]);
        assert_eq!(cells(pci, "#size-cells"), [2]);
        assert_eq!(cells(pci, "#interrupt-cells"), [1]);
        assert_eq!(u64s(pci, "reg"), [0x40_1000_0000, 0x100_0000]);
        let region = pci.reg().next().unwrap();
        assert_eq!(region.starting_address as u64, 0x40_1000_0000);
        assert_eq!(region.size, Some(0x100_0000));
        assert_eq!(cells(pci, "bus-range"), [0, 15]);
        assert_eq!(cells(pci, "linux,pci-domain"), [0]);
        assert!(pci.property("dma-coherent").is_some());
        assert_eq!(
            cells(pci, "ranges"),
            [
                0x0200_0000,
                0,
                0x1000_0000,
                0,
                0x1000_0000,
                0,
                0x2eff_0000, //
                0x0300_0000,
                0x80,
                0,
                0x80,
                0,
                0x80,
                0
            ]
        );
        assert_eq!(cells(pci, "interrupt-map-mask"), [0x1800, 0, 0, 7]);
        let map = cells(pci, "interrupt-map");
        let gic = fdt.find_compatible(&["arm,gic-v3"]).unwrap();
        let gic_phandle = cells(gic, "phandle")[0];
        // The GIC's #address-cells (2) sizes the parent unit address.
        assert_eq!(cells(gic, "#address-cells"), [2]);
        let entries: Vec<&[u32]> = map.chunks(10).collect();
        assert_eq!(
            entries,
            [
                [0, 0, 0, 1, gic_phandle, 0, 0, 0, 3, 4],
                [0x800, 0, 0, 1, gic_phandle, 0, 0, 0, 4, 4],
                [0x800, 0, 0, 2, gic_phandle, 0, 0, 0, 5, 4],
            ]
        );
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(cells(chosen, "linux,pci-probe-only"), [1]);

        // Without a 64-bit window or INTx: one range, no interrupt-map.
        let mut dt = with_pci();
        let p = dt.pci.as_mut().unwrap();
        p.mmio64 = None;
        p.intx.clear();
        p.ecam.1 = 0x1000_0000;
        let blob = build(&dt).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let pci = fdt.find_node("/pcie@4010000000").unwrap();
        assert_eq!(cells(pci, "bus-range"), [0, 255]);
        assert_eq!(cells(pci, "ranges").len(), 7);
        assert!(pci.property("interrupt-map").is_none());
        assert!(pci.property("interrupt-map-mask").is_none());

        // Without PCI: no node, no probe-only.
        let blob = build(&example()).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert!(fdt.find_compatible(&["pci-host-ecam-generic"]).is_none());
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("linux,pci-probe-only").is_none());
    }

    #[test]
    fn refuses_bad_pci() {
        let with = |f: fn(&mut PciDt)| {
            let mut dt = with_pci();
            f(dt.pci.as_mut().unwrap());
            build(&dt).unwrap_err()
        };
        let bad = |e| matches!(e, GuestFdtError::BadPci(_));
        assert!(bad(with(|p| p.ecam.1 = 0)));
        assert!(bad(with(|p| p.ecam.1 = 0x8_0000)));
        assert!(bad(with(|p| p.ecam.1 = 0x1000_0000 + 0x10_0000)));
        assert!(bad(with(|p| p.ecam.0 = u64::MAX - 0xf_ffff)));
        assert!(bad(with(|p| p.mmio.1 = 0)));
        assert!(bad(with(|p| p.mmio = (0xf000_0000, 0x2000_0000))));
        assert!(bad(with(|p| p.mmio64 = Some((1 << 40, 0)))));
        assert!(bad(with(|p| p.intx.push((32, 1, 10)))));
        assert!(bad(with(|p| p.intx.push((2, 0, 10)))));
        assert!(bad(with(|p| p.intx.push((2, 5, 10)))));
        assert!(bad(with(|p| p.intx.push((2, 1, 988)))));
        assert!(bad(with(|p| p.intx.push((1, 2, 9)))));
        // The limits themselves are fine.
        let mut dt = with_pci();
        let p = dt.pci.as_mut().unwrap();
        p.mmio = (0xf000_0000, 0x1000_0000);
        p.intx.push((31, 4, 987));
        build(&dt).unwrap();
        assert_eq!(
            with(|p| p.intx.push((2, 5, 10))).to_string(),
            "PCI host bridge: INTx pin not 1..=4 (INTA..INTD)"
        );
    }

    /// `dtc` accepts the blob and decompiles it to what we meant (skipped
    /// when dtc is not installed).
    #[test]
    fn dtc_decompiles_it() {
        let Some(dts) = dtc(&example(), "plain") else {
            return;
        };
        for line in [
            "compatible = \"arm,gic-v3\";",
            "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x40000>;",
            "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;",
            "clock-names = \"uartclk\\0apb_pclk\";",
            "stdout-path = \"/pl011@9000000\";",
            "linux,initrd-start = <0x00 0x7e000000>;",
            "method = \"hvc\";",
        ] {
            assert!(dts.contains(line), "missing {line:?} in:\n{dts}");
        }
    }

    /// `dtc` accepts the PCI host bridge without a warning (it checks the
    /// node name, bus-range, interrupt-map against the cell counts...) and
    /// decompiles it like QEMU's `virt` node.
    #[test]
    fn dtc_decompiles_pci() {
        let Some(dts) = dtc(&with_pci(), "pci") else {
            return;
        };
        for line in [
            "pcie@4010000000 {",
            "compatible = \"pci-host-ecam-generic\";",
            "device_type = \"pci\";",
            "reg = <0x40 0x10000000 0x00 0x1000000>;",
            "bus-range = <0x00 0x0f>;",
            "ranges = <0x2000000 0x00 0x10000000 0x00 0x10000000 0x00 0x2eff0000 \
             0x3000000 0x80 0x00 0x80 0x00 0x80 0x00>;",
            "interrupt-map-mask = <0x1800 0x00 0x00 0x07>;",
            "interrupt-map = <0x00 0x00 0x00 0x01 0x01 0x00 0x00 0x00 0x03 0x04 \
             0x800 0x00 0x00 0x01 0x01 0x00 0x00 0x00 0x04 0x04 \
             0x800 0x00 0x00 0x02 0x01 0x00 0x00 0x00 0x05 0x04>;",
            "dma-coherent;",
            "linux,pci-domain = <0x00>;",
            "linux,pci-probe-only = <0x01>;",
        ] {
            assert!(dts.contains(line), "missing {line:?} in:\n{dts}");
        }
    }

    /// Decompiles `dt`'s blob with `dtc` (through a pipe: nothing is
    /// written to disk), asserting it succeeds without warnings.
    fn dtc(dt: &GuestDt, _tag: &str) -> Option<String> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let blob = build(dt).unwrap();
        let mut child = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dtc not found: ./hv test installs it (device-tree-compiler)");
        child.stdin.take().unwrap().write_all(&blob).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "dtc failed: {stderr}");
        // No warnings (dtc checks cell sizes, unit addresses, phandles...).
        assert!(stderr.trim().is_empty(), "dtc warnings: {stderr}");
        Some(String::from_utf8(out.stdout).unwrap())
    }
}
