//! The machine as the host device tree describes it.
//!
//! Parsed once at boot, before anything is mapped: every device address the
//! hypervisor uses comes from here (no hard-coded addresses). Pure logic over
//! the DTB bytes, so it is unit-tested on the host against device trees that
//! QEMU itself dumps.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use flat_device_tree::node::FdtNode;
use flat_device_tree::Fdt;

/// A physical MMIO or RAM range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Region {
    /// `base..base + size`.
    pub fn range(&self) -> Range<u64> {
        self.base..self.base + self.size
    }
}

/// An SPI or PPI as a GIC interrupt ID, with its trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irq {
    /// GIC INTID (SPI n -> 32 + n, PPI n -> 16 + n).
    pub intid: u32,
    /// Edge (true) or level triggered.
    pub edge: bool,
}

/// How PSCI calls reach the firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciConduit {
    /// `smc #0`
    Smc,
    /// `hvc #0`
    Hvc,
}

/// One SMMUv3 (`arm,smmu-v3`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmmuNode {
    /// Register frame (page 0 and page 1).
    pub regs: Region,
    /// Phandle, to match `iommu-map` entries.
    pub phandle: Option<u32>,
    /// Named interrupts (`eventq`, `gerror`, `priq`, `cmdq-sync`).
    pub irqs: Vec<(String, Irq)>,
    /// Whether the DT says its table walks are coherent (`dma-coherent`).
    pub dma_coherent: bool,
}

/// One `iommu-map` or `msi-map` entry: requester IDs
/// `rid_base..rid_base+len` map to IDs `out_base..` (StreamIDs of an IOMMU,
/// DeviceIDs of an MSI controller) of the node with `phandle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapEntry {
    /// First requester ID (bus << 8 | devfn).
    pub rid_base: u32,
    /// Phandle of the IOMMU or MSI controller.
    pub phandle: u32,
    /// The ID `rid_base` maps to.
    pub out_base: u32,
    /// Number of IDs.
    pub len: u32,
}

/// The ID `rid` maps to through `map`, if an entry for the node with
/// `phandle` (any node when None) covers it.
fn map_rid(map: &[IdMapEntry], rid: u16, phandle: Option<u32>) -> Option<u32> {
    let rid = u32::from(rid);
    map.iter()
        .find(|e| {
            rid >= e.rid_base && rid - e.rid_base < e.len && phandle.is_none_or(|p| p == e.phandle)
        })
        .and_then(|e| e.out_base.checked_add(rid - e.rid_base))
}

/// Kind of a PCI host bridge window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Mem32,
    /// 64-bit memory space.
    Mem64,
}

/// A PCI host bridge window from `ranges`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciWindow {
    /// Space type.
    pub kind: WindowKind,
    /// Prefetchable flag from the DT.
    pub prefetchable: bool,
    /// PCI bus address of the first byte.
    pub pci_base: u64,
    /// CPU physical address of the first byte.
    pub cpu_base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A generic ECAM PCI host bridge (`pci-host-ecam-generic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// ECAM configuration space.
    pub ecam: Region,
    /// First and last bus number.
    pub bus_range: (u8, u8),
    /// Address windows.
    pub windows: Vec<PciWindow>,
    /// Requester ID to StreamID translation.
    pub iommu_map: Vec<IdMapEntry>,
    /// Requester ID to ITS DeviceID translation.
    pub msi_map: Vec<IdMapEntry>,
    /// Legacy INTx wiring from `interrupt-map`: (device, pin 1..4) -> SPI.
    pub intx: Vec<(u8, u8, Irq)>,
    /// The device-number bits `interrupt-map-mask` keeps (0x1f: all).
    pub intx_dev_mask: u8,
}

impl PciHost {
    /// The interrupt of device `dev`'s INTx `pin` (1 = INTA), as wired.
    pub fn intx_irq(&self, dev: u8, pin: u8) -> Option<Irq> {
        let dev = dev & self.intx_dev_mask;
        self.intx
            .iter()
            .find(|&&(d, p, _)| d == dev && p == pin)
            .map(|&(_, _, irq)| irq)
    }
}

impl PciHost {
    /// The StreamID of requester ID `rid`, if the `iommu-map` routes it to
    /// the IOMMU with `phandle`.
    pub fn stream_id(&self, rid: u16, phandle: Option<u32>) -> Option<u32> {
        map_rid(&self.iommu_map, rid, phandle)
    }

    /// The ITS DeviceID of requester ID `rid`, if the `msi-map` routes it to
    /// the MSI controller with `phandle`.
    pub fn device_id(&self, rid: u16, phandle: Option<u32>) -> Option<u32> {
        map_rid(&self.msi_map, rid, phandle)
    }
}

/// A GICv3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gic {
    /// Distributor.
    pub dist: Region,
    /// Redistributor region(s).
    pub redist: Vec<Region>,
    /// Its ITS (`arm,gic-v3-its`, a child of the GIC node), the first one
    /// when there are several.
    pub its: Option<ItsNode>,
}

/// A GICv3 ITS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItsNode {
    /// Its two 64 KiB frames: control registers, then GITS_TRANSLATER's.
    pub regs: Region,
    /// Phandle, to match `msi-map` entries.
    pub phandle: Option<u32>,
}

/// Everything the hypervisor needs to know about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// RAM banks.
    pub memory: Vec<Region>,
    /// `/memreserve/` entries and `/reserved-memory` children.
    pub reserved: Vec<Region>,
    /// The console UART (PL011).
    pub uart: Region,
    /// Its interrupt.
    pub uart_irq: Option<Irq>,
    /// The interrupt controller.
    pub gic: Gic,
    /// The SMMUv3, when the machine has one.
    pub smmu: Option<SmmuNode>,
    /// The PCI host bridge, when present.
    pub pci: Option<PciHost>,
    /// MPIDR affinity values of the CPUs, boot CPU first as listed.
    pub cpus: Vec<u64>,
    /// PSCI conduit.
    pub psci: Option<PsciConduit>,
    /// `/chosen/bootargs`.
    pub bootargs: String,
    /// `/chosen/linux,initrd-start` .. `linux,initrd-end`: the boot bundle
    /// (scenario and guest images) the runner passes as QEMU's `-initrd`.
    pub initrd: Option<Region>,
    /// `/chosen/rng-seed` followed by `/chosen/kaslr-seed`: the randomness
    /// the machine gives its kernel (QEMU's `virt`: 32 and 8 bytes), which
    /// seeds the guests' (`crate::seed`). Empty without either.
    pub randomness: Vec<u8>,
    /// The machine's PL031 real-time clock, whose count of seconds since
    /// 1970 the guests' clocks start from (`crate::wallclock`); `None`
    /// without one, or with a register region too small for it.
    pub rtc: Option<Region>,
}

/// A PL031's register region: its registers and identification words.
const PL031_SIZE: u64 = 0x1000;

/// What is wrong with the device tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// The blob is not a valid flattened device tree.
    BadFdt,
    /// A required node is absent.
    Missing(&'static str),
    /// A property is malformed.
    Malformed(&'static str),
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFdt => f.write_str("not a valid device tree blob"),
            Self::Missing(what) => write!(f, "device tree has no {what}"),
            Self::Malformed(what) => write!(f, "device tree property {what} is malformed"),
        }
    }
}

fn be32(bytes: &[u8], index: usize) -> Option<u32> {
    let b = bytes.get(index * 4..index * 4 + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn cells(bytes: &[u8], index: usize, count: usize) -> Option<u64> {
    (0..count).try_fold(0u64, |acc, i| {
        Some((acc << 32) | u64::from(be32(bytes, index + i)?))
    })
}

fn regions(node: FdtNode<'_, '_>) -> Vec<Region> {
    node.reg()
        .map(|r| Region {
            base: r.starting_address as u64,
            size: r.size.unwrap_or(0) as u64,
        })
        .collect()
}

fn first_region(node: FdtNode<'_, '_>, what: &'static str) -> Result<Region, PlatformError> {
    regions(node)
        .into_iter()
        .next()
        .ok_or(PlatformError::Malformed(what))
}

/// The entries of an `iommu-map` or `msi-map` property (4 cells each).
fn id_map(node: FdtNode<'_, '_>, name: &'static str) -> Result<Vec<IdMapEntry>, PlatformError> {
    let Some(p) = node.property(name) else {
        return Ok(Vec::new());
    };
    let cell = |i| be32(p.value, i).ok_or(PlatformError::Malformed(name));
    (0..p.value.len() / 16)
        .map(|i| {
            Ok(IdMapEntry {
                rid_base: cell(i * 4)?,
                phandle: cell(i * 4 + 1)?,
                out_base: cell(i * 4 + 2)?,
                len: cell(i * 4 + 3)?,
            })
        })
        .collect()
}

/// Decodes a 3-cell GIC interrupt specifier.
fn gic_irq(spec: &[u8], index: usize) -> Option<Irq> {
    let kind = be32(spec, index * 3)?;
    let num = be32(spec, index * 3 + 1)?;
    let flags = be32(spec, index * 3 + 2)?;
    let intid = match kind {
        0 => 32 + num,
        1 => 16 + num,
        _ => return None,
    };
    Some(Irq {
        intid,
        edge: flags & 0x3 != 0 && flags & 0xc == 0,
    })
}

impl Platform {
    /// Parses the host device tree.
    pub fn parse(dtb: &[u8]) -> Result<Self, PlatformError> {
        let fdt = Fdt::new(dtb).map_err(|_| PlatformError::BadFdt)?;

        let memory: Vec<Region> = fdt
            .all_nodes()
            .filter(|n| {
                n.property("device_type")
                    .and_then(|p| p.as_str())
                    .is_some_and(|s| s == "memory")
            })
            .flat_map(regions)
            .filter(|r| r.size > 0)
            .collect();
        if memory.is_empty() {
            return Err(PlatformError::Missing("memory node"));
        }

        let mut reserved: Vec<Region> = fdt
            .memory_reservations()
            .map(|r| Region {
                base: r.address() as u64,
                size: r.size() as u64,
            })
            .collect();
        if let Some(rm) = fdt.find_node("/reserved-memory") {
            reserved.extend(rm.children().flat_map(regions));
        }

        let uart_node = fdt
            .chosen()
            .ok()
            .and_then(|c| c.stdout())
            .map(|s| s.node())
            .filter(|n| {
                n.compatible()
                    .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
            })
            .or_else(|| fdt.find_compatible(&["arm,pl011"]))
            .ok_or(PlatformError::Missing("PL011 UART"))?;
        let uart = first_region(uart_node, "uart reg")?;
        let uart_irq = uart_node
            .property("interrupts")
            .and_then(|p| gic_irq(p.value, 0));

        let gic_node = fdt
            .find_compatible(&["arm,gic-v3"])
            .ok_or(PlatformError::Missing("GICv3"))?;
        let gic_regs = regions(gic_node);
        if gic_regs.len() < 2 {
            return Err(PlatformError::Malformed("gic reg"));
        }
        let its = match gic_node.children().find(|n| {
            n.compatible()
                .is_some_and(|c| c.all().any(|s| s == "arm,gic-v3-its"))
        }) {
            None => None,
            Some(node) => Some(ItsNode {
                regs: first_region(node, "its reg")?,
                phandle: node.property("phandle").and_then(|p| be32(p.value, 0)),
            }),
        };
        let gic = Gic {
            dist: gic_regs[0].clone(),
            redist: gic_regs[1..2].to_vec(),
            its,
        };

        let smmu = match fdt.find_compatible(&["arm,smmu-v3"]) {
            None => None,
            Some(node) => {
                let regs = first_region(node, "smmu reg")?;
                let names: Vec<&str> = node
                    .property("interrupt-names")
                    .map(|p| p.iter_str().collect())
                    .unwrap_or_default();
                let spec = node.property("interrupts").map(|p| p.value).unwrap_or(&[]);
                let irqs = names
                    .iter()
                    .enumerate()
                    .filter_map(|(i, name)| Some((String::from(*name), gic_irq(spec, i)?)))
                    .collect();
                Some(SmmuNode {
                    regs,
                    phandle: node.property("phandle").and_then(|p| be32(p.value, 0)),
                    irqs,
                    dma_coherent: node.property("dma-coherent").is_some(),
                })
            }
        };

        let pci = match fdt.find_compatible(&["pci-host-ecam-generic"]) {
            None => None,
            Some(node) => Some(Self::parse_pci(&fdt, node)?),
        };

        let cpus = fdt
            .cpus()
            .filter_map(|c| c.ids().ok().and_then(|ids| ids.first().ok()))
            .map(|id| id as u64)
            .collect::<Vec<_>>();
        if cpus.is_empty() {
            return Err(PlatformError::Missing("cpus"));
        }

        let psci = fdt
            .find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])
            .and_then(|n| n.property("method"))
            .and_then(|p| p.as_str())
            .and_then(|m| match m {
                "smc" => Some(PsciConduit::Smc),
                "hvc" => Some(PsciConduit::Hvc),
                _ => None,
            });

        let bootargs = fdt
            .chosen()
            .ok()
            .and_then(|c| c.bootargs())
            .map(String::from)
            .unwrap_or_default();

        let initrd = fdt.find_node("/chosen").and_then(|c| {
            let cell = |name| {
                c.property(name).and_then(|p| match p.value.len() {
                    4 => be32(p.value, 0).map(u64::from),
                    8 => cells(p.value, 0, 2),
                    _ => None,
                })
            };
            let (start, end) = (cell("linux,initrd-start")?, cell("linux,initrd-end")?);
            (end > start).then_some(Region {
                base: start,
                size: end - start,
            })
        });

        let randomness = fdt
            .find_node("/chosen")
            .map(|c| {
                ["rng-seed", "kaslr-seed"]
                    .iter()
                    .filter_map(|name| c.property(name))
                    .flat_map(|p| p.value.iter().copied())
                    .collect()
            })
            .unwrap_or_default();

        let rtc = fdt
            .find_compatible(&["arm,pl031"])
            .and_then(|n| first_region(n, "pl031 reg").ok())
            .filter(|r| r.size >= PL031_SIZE);

        Ok(Self {
            initrd,
            randomness,
            rtc,
            memory,
            reserved,
            uart,
            uart_irq,
            gic,
            smmu,
            pci,
            cpus,
            psci,
            bootargs,
        })
    }

    fn parse_pci(fdt: &Fdt<'_>, node: FdtNode<'_, '_>) -> Result<PciHost, PlatformError> {
        let ecam = first_region(node, "pci reg")?;
        let bus_range = match node.property("bus-range") {
            Some(p) => (
                be32(p.value, 0).ok_or(PlatformError::Malformed("bus-range"))? as u8,
                be32(p.value, 1).ok_or(PlatformError::Malformed("bus-range"))? as u8,
            ),
            None => (0, 0xff),
        };
        let parent_cells = fdt
            .root()
            .map(|r| usize::from(r.cell_sizes().address_cells))
            .unwrap_or(2);
        let size_cells = usize::from(node.cell_sizes().size_cells);
        let mut windows = Vec::new();
        if let Some(p) = node.property("ranges") {
            let stride = 3 + parent_cells + size_cells;
            let n = p.value.len() / 4 / stride;
            for i in 0..n {
                let at = i * stride;
                let mal = PlatformError::Malformed("pci ranges");
                let hi = be32(p.value, at).ok_or(mal.clone())?;
                let pci_base = cells(p.value, at + 1, 2).ok_or(mal.clone())?;
                let cpu_base = cells(p.value, at + 3, parent_cells).ok_or(mal.clone())?;
                let size = cells(p.value, at + 3 + parent_cells, size_cells).ok_or(mal)?;
                let kind = match (hi >> 24) & 3 {
                    1 => WindowKind::Io,
                    2 => WindowKind::Mem32,
                    3 => WindowKind::Mem64,
                    _ => continue,
                };
                windows.push(PciWindow {
                    kind,
                    prefetchable: hi & (1 << 30) != 0,
                    pci_base,
                    cpu_base,
                    size,
                });
            }
        }
        let iommu_map = id_map(node, "iommu-map")?;
        let msi_map = id_map(node, "msi-map")?;
        // interrupt-map: <child unit address (3 cells), pin (1 cell), parent
        // phandle, parent unit address (the GIC's #address-cells), GIC
        // specifier (3 cells)>. The device number is in bits 15:11 of the
        // first child cell (interrupt-map-mask 0x1800 on virt).
        let mut intx = Vec::new();
        if let Some(p) = node.property("interrupt-map") {
            let parent_addr_cells = fdt
                .find_compatible(&["arm,gic-v3"])
                .and_then(|g| g.property("#address-cells"))
                .and_then(|c| be32(c.value, 0))
                .unwrap_or(0) as usize;
            let stride = 3 + 1 + 1 + parent_addr_cells + 3;
            for i in 0..p.value.len() / 4 / stride {
                let at = i * stride;
                let (Some(hi), Some(pin)) = (be32(p.value, at), be32(p.value, at + 3)) else {
                    continue;
                };
                let spec = &p.value[(at + 5 + parent_addr_cells) * 4..(at + stride) * 4];
                if let Some(irq) = gic_irq(spec, 0) {
                    intx.push((((hi >> 11) & 0x1f) as u8, pin as u8, irq));
                }
            }
        }
        let intx_dev_mask = node
            .property("interrupt-map-mask")
            .and_then(|p| be32(p.value, 0))
            .map_or(0x1f, |m| ((m >> 11) & 0x1f) as u8);
        Ok(PciHost {
            ecam,
            bus_range,
            windows,
            iommu_map,
            msi_map,
            intx,
            intx_dev_mask,
        })
    }

    /// Whether the boot arguments contain the word `word` (e.g. `selftest=fault`).
    pub fn has_bootarg(&self, word: &str) -> bool {
        self.bootargs.split_whitespace().any(|w| w == word)
    }

    /// The value of boot argument `key=value` (the first one), if given.
    pub fn bootarg(&self, key: &str) -> Option<&str> {
        self.bootargs
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10's `virt` with an SMMUv3 and 4 CPUs (`hyp/testdata/README.md`).
    const VIRT_SMMUV3_SMP4: &[u8] = include_bytes!("../testdata/virt-smmuv3-smp4.dtb");
    /// QEMU 10's `virt` without an IOMMU.
    const VIRT_NO_SMMU: &[u8] = include_bytes!("../testdata/virt-no-smmu.dtb");

    #[test]
    fn parses_qemu_virt_with_smmu() {
        let dtb = VIRT_SMMUV3_SMP4.to_vec();
        let mut p = Platform::parse(&dtb).unwrap();
        assert_eq!(
            p.memory,
            vec![Region {
                base: 0x4000_0000,
                size: 0x4000_0000
            }]
        );
        assert_eq!(p.uart.base, 0x0900_0000);
        assert_eq!(
            p.uart_irq,
            Some(Irq {
                intid: 33,
                edge: false
            })
        );
        assert_eq!(p.cpus, vec![0, 1, 2, 3]);
        assert_eq!(p.psci, Some(PsciConduit::Smc));
        assert!(!p.has_bootarg("selftest=dma"));
        assert_eq!(p.initrd, None);
        // The blob's rng-seed (8 cells) and kaslr-seed (2), in that order.
        assert_eq!(p.randomness.len(), 40);
        assert_eq!(p.randomness[..4], [0x40, 0xe8, 0x81, 0x51]);
        assert_eq!(p.randomness[32..36], [0x0e, 0x29, 0x81, 0xf9]);
        assert_eq!(
            p.rtc,
            Some(Region {
                base: 0x0901_0000,
                size: 0x1000
            })
        );
        p.bootargs = "console=x selftest=dma".into();
        assert!(p.has_bootarg("selftest=dma"));
        assert!(!p.has_bootarg("selftest"));
        assert_eq!(p.bootarg("selftest"), Some("dma"));
        assert_eq!(p.bootarg("self"), None, "a whole key");
        assert_eq!(p.bootarg("lpi_id_bits"), None);
        p.bootargs = "lpi_id_bits=16 lpi_id_bits=15 lpi_id_bits".into();
        assert_eq!(p.bootarg("lpi_id_bits"), Some("16"), "the first");
        assert_eq!(p.gic.dist.base, 0x0800_0000);
        let its = p.gic.its.as_ref().expect("ITS");
        assert_eq!(
            its.regs,
            Region {
                base: 0x0808_0000,
                size: 0x2_0000
            }
        );
        let smmu = p.smmu.as_ref().expect("smmu");
        assert_eq!(
            smmu.regs,
            Region {
                base: 0x0905_0000,
                size: 0x2_0000
            }
        );
        assert!(smmu.dma_coherent);
        let names: Vec<&str> = smmu.irqs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["eventq", "priq", "cmdq-sync", "gerror"]);
        assert_eq!(
            smmu.irqs[0].1,
            Irq {
                intid: 32 + 0x4a,
                edge: true
            }
        );
        let pci = p.pci.as_ref().expect("pci");
        assert_eq!(pci.bus_range, (0, 0xff));
        assert!(pci.windows.iter().any(|w| w.kind == WindowKind::Mem32));
        assert!(pci.windows.iter().any(|w| w.kind == WindowKind::Mem64));
        // 00:01.0 -> requester ID 8 -> StreamID 8 through the identity iommu-map.
        assert_eq!(pci.stream_id(0x8, smmu.phandle), Some(0x8));
        assert_eq!(pci.stream_id(0x8, Some(0xdead)), None);
        // msi-map: identity onto the ITS's DeviceIDs, all 16 bits.
        assert_eq!(pci.device_id(0x8, its.phandle), Some(0x8));
        assert_eq!(pci.device_id(0xffff, its.phandle), Some(0xffff));
        assert_eq!(pci.device_id(0x8, smmu.phandle), None);
        // QEMU virt swizzles INTx: device d pin p -> SPI 3 + (d + p - 1) % 4.
        assert_eq!(
            pci.intx_irq(0, 1),
            Some(Irq {
                intid: 32 + 3,
                edge: false
            })
        );
        assert_eq!(
            pci.intx_irq(1, 1),
            Some(Irq {
                intid: 32 + 4,
                edge: false
            })
        );
        assert_eq!(
            pci.intx_irq(3, 2),
            Some(Irq {
                intid: 32 + 3,
                edge: false
            })
        );
        assert_eq!(pci.intx.len(), 16);
        // interrupt-map-mask 0x1800: device 5 is wired like device 1.
        assert_eq!(pci.intx_irq(5, 1), pci.intx_irq(1, 1));
    }

    #[test]
    fn machine_without_smmu() {
        let dtb = VIRT_NO_SMMU.to_vec();
        let p = Platform::parse(&dtb).unwrap();
        assert!(p.smmu.is_none());
        assert!(p.pci.as_ref().unwrap().iommu_map.is_empty());
        let its = p.gic.its.as_ref().expect("ITS without an SMMU too");
        assert_eq!(
            p.pci.as_ref().unwrap().device_id(0x10, its.phandle),
            Some(0x10)
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(Platform::parse(&[0u8; 64]), Err(PlatformError::BadFdt));
    }
}

#[cfg(test)]
mod id_map_tests {
    use super::{map_rid, IdMapEntry};

    #[test]
    fn offsets_lengths_and_phandles() {
        let map = [
            IdMapEntry {
                rid_base: 0x100,
                phandle: 1,
                out_base: 0x4000,
                len: 0x100,
            },
            IdMapEntry {
                rid_base: 0,
                phandle: 2,
                out_base: 0,
                len: 0x10000,
            },
        ];
        assert_eq!(map_rid(&map, 0x108, Some(1)), Some(0x4008));
        assert_eq!(map_rid(&map, 0x208, Some(1)), None);
        assert_eq!(map_rid(&map, 0x208, Some(2)), Some(0x208));
        assert_eq!(map_rid(&map, 0x108, None), Some(0x4008), "first match");
        let overflow = [IdMapEntry {
            rid_base: 0,
            phandle: 1,
            out_base: u32::MAX,
            len: 2,
        }];
        assert_eq!(map_rid(&overflow, 1, None), None);
    }
}
