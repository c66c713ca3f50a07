//! The guest's own SMMUv3 driver, for `vsmmu_edu` (nested translation).
//!
//! The encodings here (STE, CD, commands, stage-1 descriptors, event
//! records) are written from the Arm SMMUv3 specification (IHI 0070) and
//! the Arm ARM, independently of the hypervisor's `smmu` crate, so the
//! hypervisor's decoders and the physical SMMU are checked against a second
//! reading of the specification. The pure parts are compiled on the host
//! for their unit tests; the driver and the checks only for the guest.

use flat_device_tree::Fdt;

/// Bytes per stream table entry (§5.2) and per context descriptor (§5.4).
pub const STE_BYTES: u64 = 64;
/// Bytes per command (§4.1).
pub const CMD_BYTES: u64 = 16;
/// Bytes per event record (§7.1).
pub const EVT_BYTES: u64 = 32;

/// Register offsets in the SMMU's register frame (§6.2).
pub mod reg {
    pub const IDR0: u64 = 0x00;
    pub const IDR1: u64 = 0x04;
    pub const IDR5: u64 = 0x14;
    pub const CR0: u64 = 0x20;
    pub const CR0ACK: u64 = 0x24;
    pub const CR1: u64 = 0x28;
    pub const CR2: u64 = 0x2c;
    pub const IRQ_CTRL: u64 = 0x50;
    pub const IRQ_CTRLACK: u64 = 0x54;
    pub const GERROR: u64 = 0x60;
    pub const GERRORN: u64 = 0x64;
    pub const STRTAB_BASE: u64 = 0x80;
    pub const STRTAB_BASE_CFG: u64 = 0x88;
    pub const CMDQ_BASE: u64 = 0x90;
    pub const CMDQ_PROD: u64 = 0x98;
    pub const CMDQ_CONS: u64 = 0x9c;
    pub const EVENTQ_BASE: u64 = 0xa0;
    /// EVENTQ_PROD and EVENTQ_CONS live in page 1 (§6.2).
    pub const EVENTQ_PROD: u64 = 0x1_00a8;
    pub const EVENTQ_CONS: u64 = 0x1_00ac;
}

/// CR0 bits (§6.3.9).
pub const CR0_SMMUEN: u32 = 1 << 0;
pub const CR0_EVENTQEN: u32 = 1 << 2;
pub const CR0_CMDQEN: u32 = 1 << 3;
/// IRQ_CTRL bits (§6.3.16).
pub const IRQ_GERROR: u32 = 1 << 0;
pub const IRQ_EVENTQ: u32 = 1 << 2;
/// GERROR.CMDQ_ERR (§6.3.19).
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// CMDQ_CONS.ERR, bits [30:24] (§6.3.28), and the illegal-command code.
pub const CONS_ERR_SHIFT: u32 = 24;
pub const CERROR_ILL: u32 = 1;
/// Queue base: read/write-allocate hint, bit 62 (§6.3.26).
pub const Q_BASE_RWA: u64 = 1 << 62;
/// CR1: queues and tables inner/outer write-back, inner shareable.
pub const CR1_WB_ISH: u32 = 1 | 1 << 2 | 3 << 4 | 1 << 6 | 1 << 8 | 3 << 10;
/// CR2: RECINVSID (record invalid StreamIDs) and PTM (§6.3.12).
pub const CR2_RECINVSID_PTM: u32 = 1 << 1 | 1 << 2;

/// Address bits [51:6] (STE S1ContextPtr) and [51:4] (CD TTB0).
const ADDR_51_6: u64 = ((1 << 52) - 1) & !0x3f;
const ADDR_51_4: u64 = ((1 << 52) - 1) & !0xf;

/// An STE with V = 1 and Config = abort (§5.2).
pub fn ste_abort() -> [u64; 8] {
    [1, 0, 0, 0, 0, 0, 0, 0]
}

/// An STE with V = 1 and Config = 0b100 (bypass): the device's addresses
/// go to stage 2 untranslated (§5.2).
pub fn ste_bypass() -> [u64; 8] {
    [1 | 0b100 << 1, 0, 0, 0, 0, 0, 0, 0]
}

/// An STE with V = 1 and Config = 0b110 (stage 2 translate): ILLEGAL on
/// an SMMU without stage 2 (§5.2).
pub fn ste_illegal() -> [u64; 8] {
    [1 | 0b110 << 1, 0, 0, 0, 0, 0, 0, 0]
}

/// An STE translating at stage 1 with a single CD (S1CDMax = 0) at
/// `cd_table`: V, Config = 0b101 (stage 1 translate, stage 2 bypass as the
/// guest sees it), S1ContextPtr; S1CIR/S1COR write-back, S1CSH inner
/// shareable, as Linux writes it.
pub fn ste_stage1(cd_table: u64) -> [u64; 8] {
    let w0 = 1 | 0b101 << 1 | (cd_table & ADDR_51_6);
    let w1 = 1 << 2 | 1 << 4 | 3 << 6;
    [w0, w1, 0, 0, 0, 0, 0, 0]
}

/// A context descriptor (§5.4) for a 39-bit input address space (T0SZ 25)
/// with the 4K granule, walks write-back inner shareable, TTB1 disabled,
/// AArch64, faults recorded (R) and aborted (A), output size `ips` (the
/// IDR5.OAS encoding), `asid`, stage-1 table `ttb0` and MAIR attribute 0 =
/// normal write-back.
pub fn cd(ttb0: u64, asid: u16, ips: u8) -> [u64; 8] {
    let t0sz = 64 - VA_BITS;
    let w0 = t0sz
        | 1 << 8 // IR0 WBWA
        | 1 << 10 // OR0 WBWA
        | 3 << 12 // SH0 inner shareable
        | 1 << 30 // EPD1
        | 1 << 31 // V
        | u64::from(ips & 7) << 32
        | 1 << 41 // AA64
        | 1 << 45 // R
        | 1 << 46 // A
        | 1 << 47 // ASET
        | u64::from(asid) << 48;
    [w0, ttb0 & ADDR_51_4, 0, 0xff, 0, 0, 0, 0]
}

/// Input address bits of the stage-1 tables [`cd`] describes.
pub const VA_BITS: u64 = 39;

/// Commands (§4), as two 64-bit words.
pub mod cmd {
    /// CMD_CFGI_STE (0x03) for `sid`, leaf.
    pub fn cfgi_ste(sid: u32) -> [u64; 2] {
        [0x03 | u64::from(sid) << 32, 1]
    }
    /// CMD_CFGI_ALL (0x04): CFGI_STE_RANGE with Range = 31.
    pub fn cfgi_all() -> [u64; 2] {
        [0x04, 31]
    }
    /// CMD_CFGI_CD (0x05) for `sid`, SubstreamID `ssid`, leaf.
    pub fn cfgi_cd(sid: u32, ssid: u32) -> [u64; 2] {
        [
            0x05 | u64::from(ssid & 0xf_ffff) << 12 | u64::from(sid) << 32,
            1,
        ]
    }
    /// CMD_TLBI_NH_ALL (0x10).
    pub fn tlbi_nh_all() -> [u64; 2] {
        [0x10, 0]
    }
    /// CMD_TLBI_NH_ASID (0x11).
    pub fn tlbi_nh_asid(asid: u16) -> [u64; 2] {
        [0x11 | u64::from(asid) << 48, 0]
    }
    /// CMD_TLBI_NH_VA (0x12): one page at `va` of `asid`, leaf only, no
    /// range (NUM = SCALE = TG = 0).
    pub fn tlbi_nh_va(asid: u16, va: u64) -> [u64; 2] {
        [0x12 | u64::from(asid) << 48, (va & !0xfff) | 1]
    }
    /// CMD_TLBI_S12_VMALL (0x28): a stage-2 command, illegal on an SMMU
    /// without stage 2.
    pub fn tlbi_s12_vmall(vmid: u16) -> [u64; 2] {
        [0x28 | u64::from(vmid) << 32, 0]
    }
    /// CMD_SYNC (0x46), completion signalled by CONS only (CS = 0).
    pub fn sync() -> [u64; 2] {
        [0x46, 0]
    }
}

/// Stage-1 descriptors (VMSAv8-64, 4K granule).
pub mod pte {
    /// A table descriptor pointing at the next level's table.
    pub fn table(next: u64) -> u64 {
        (next & super::ADDR_51_4 & !0xfff) | 0b11
    }
    /// A level-3 page descriptor for `pa`: read/write at any level
    /// (AP = 0b01), inner shareable, access flag, not global (ASID-tagged),
    /// MAIR attribute 0.
    pub fn page(pa: u64) -> u64 {
        (pa & super::ADDR_51_4 & !0xfff) | 0b11 | 1 << 6 | 3 << 8 | 1 << 10 | 1 << 11
    }
    /// The index into a level-`level` table (1..=3) of `va`.
    pub fn index(va: u64, level: u32) -> usize {
        ((va >> (12 + 9 * (3 - level))) & 0x1ff) as usize
    }
}

/// Event types the checks expect (§7.3).
pub const F_TRANSLATION: u8 = 0x10;
pub const C_BAD_STE: u8 = 0x04;
/// The last of the four translation-fault types (F_TRANSLATION..).
pub const F_PERMISSION: u8 = 0x13;

/// The fields of an event record the checks look at (§7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Event type, bits [7:0].
    pub kind: u8,
    /// StreamID, bits [63:32].
    pub sid: u32,
    /// RnW, bit [99]: a read.
    pub read: bool,
    /// S2, bit [103]: the fault is at stage 2.
    pub s2: bool,
    /// InputAddr, bits [191:128].
    pub addr: u64,
}

impl EventRecord {
    /// Decodes the record's four words.
    pub fn decode(w: [u64; 4]) -> Self {
        EventRecord {
            kind: w[0] as u8,
            sid: (w[0] >> 32) as u32,
            read: w[1] >> 35 & 1 == 1,
            s2: w[1] >> 39 & 1 == 1,
            addr: w[2],
        }
    }

    /// The event's name, for the log.
    pub fn name(&self) -> &'static str {
        event_name(self.kind)
    }
}

/// The name of event type `kind` (§7.3).
pub fn event_name(kind: u8) -> &'static str {
    match kind {
        0x01 => "F_UUT",
        0x02 => "C_BAD_STREAMID",
        0x03 => "F_STE_FETCH",
        0x04 => "C_BAD_STE",
        0x07 => "F_STREAM_DISABLED",
        0x09 => "C_BAD_SUBSTREAMID",
        0x0a => "F_CD_FETCH",
        0x0b => "C_BAD_CD",
        0x0c => "F_WALK_EABT",
        0x10 => "F_TRANSLATION",
        0x11 => "F_ADDR_SIZE",
        0x12 => "F_ACCESS",
        0x13 => "F_PERMISSION",
        _ => "event",
    }
}

/// The ID an `iommu-map` or `msi-map` (`<rid-base phandle out-base
/// length>`...) gives requester ID `rid`: a StreamID or an ITS DeviceID.
pub fn map_rid(cells: impl Iterator<Item = u32>, rid: u32) -> Option<u32> {
    let cells: [u32; 16] = {
        let mut a = [0; 16];
        let mut n = 0;
        for c in cells {
            if n == a.len() {
                break;
            }
            a[n] = c;
            n += 1;
        }
        if n % 4 != 0 {
            return None;
        }
        a
    };
    cells
        .chunks_exact(4)
        .filter(|e| e[3] != 0)
        .find(|e| rid >= e[0] && rid - e[0] < e[3])
        .map(|e| e[2] + (rid - e[0]))
}

/// What the guest needs to drive its vSMMU, from the device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VSmmuDt {
    /// Register frame base.
    pub base: u64,
    /// GIC INTIDs of the `eventq` and `gerror` interrupts.
    pub eventq: u32,
    pub gerror: u32,
    /// The distributor of the GICv3 (`arm,gic-v3` first `reg`).
    pub gicd: u64,
}

/// The big-endian u32 cells of a property.
pub fn cells<'a>(value: &'a [u8]) -> impl Iterator<Item = u32> + 'a {
    value
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

impl VSmmuDt {
    /// The first `arm,smmu-v3` node with its `eventq` and `gerror` SPIs
    /// (three-cell GIC specifiers), and the GIC distributor.
    pub fn from_fdt(fdt: &Fdt<'_>) -> Option<Self> {
        let node = fdt.find_compatible(&["arm,smmu-v3"])?;
        let base = node.reg().next()?.starting_address as u64;
        let names = node.property("interrupt-names")?;
        let irqs = node.property("interrupts")?;
        let mut eventq = None;
        let mut gerror = None;
        let specs = cells(irqs.value).collect::<Triples>();
        for (i, name) in names
            .value
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let Some([kind, num, _]) = specs.get(i) else {
                break;
            };
            // GIC_SPI (0): INTID = 32 + number.
            let intid = if kind == 0 { num + 32 } else { num + 16 };
            match name {
                b"eventq" => eventq = Some(intid),
                b"gerror" => gerror = Some(intid),
                _ => {}
            }
        }
        let gicd = fdt
            .find_compatible(&["arm,gic-v3"])?
            .reg()
            .next()?
            .starting_address as u64;
        Some(VSmmuDt {
            base,
            eventq: eventq?,
            gerror: gerror?,
            gicd,
        })
    }

    /// The StreamID of bus 0 `device`, function 0 behind the first
    /// `pci-host-ecam-generic` bridge, from its `iommu-map`.
    pub fn stream_of(fdt: &Fdt<'_>, device: u8) -> Option<u32> {
        let pci = fdt.find_compatible(&["pci-host-ecam-generic"])?;
        let map = pci.property("iommu-map")?;
        map_rid(cells(map.value), u32::from(device) << 3)
    }
}

/// Up to eight interrupt specifiers of three cells, without a heap.
#[derive(Default)]
struct Triples {
    items: [[u32; 3]; 8],
    len: usize,
    cell: usize,
}

impl Triples {
    /// The `i`-th complete specifier.
    fn get(&self, i: usize) -> Option<[u32; 3]> {
        (i < self.len).then(|| self.items[i])
    }
}

impl FromIterator<u32> for Triples {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut t = Triples::default();
        for c in iter {
            if t.len == t.items.len() {
                break;
            }
            t.items[t.len][t.cell] = c;
            t.cell += 1;
            if t.cell == 3 {
                t.cell = 0;
                t.len += 1;
            }
        }
        t
    }
}

#[cfg(target_os = "none")]
pub use hw::{cr0, flood, run, BypassStream};

#[cfg(target_os = "none")]
mod hw;

#[cfg(test)]
mod tests {
    use super::*;
    use vm_fdt::FdtWriter;

    #[test]
    fn ste_encodings() {
        assert_eq!(ste_abort()[0], 1, "V = 1, Config = 0b000 abort");
        assert_eq!(ste_illegal()[0] >> 1 & 7, 0b110, "Config: stage 2");
        assert_eq!(ste_bypass()[0], 0b1001, "V = 1, Config = 0b100 bypass");
        let s = ste_stage1(0x8000_1000);
        assert_eq!(s[0] & 1, 1, "V");
        assert_eq!(s[0] >> 1 & 7, 0b101, "Config: stage 1 translate");
        assert_eq!(s[0] >> 4 & 3, 0, "S1Fmt linear");
        assert_eq!(s[0] >> 59, 0, "S1CDMax 0");
        assert_eq!(s[0] & ADDR_51_6, 0x8000_1000, "S1ContextPtr");
        // Low bits of the pointer never leak into V/Config/S1Fmt.
        assert_eq!(ste_stage1(0x8000_103f)[0], s[0]);
        assert_eq!(s[1] & 0xff, 0b1101_0100, "S1CIR/S1COR WB, S1CSH ISH");
    }

    #[test]
    fn cd_encoding() {
        let c = cd(0x8000_4000, 0x1234, 2);
        assert_eq!(c[0] & 0x3f, 25, "T0SZ");
        assert_eq!(c[0] >> 6 & 3, 0, "TG0 4K");
        assert_eq!(c[0] >> 31 & 1, 1, "V");
        assert_eq!(c[0] >> 32 & 7, 2, "IPS 40 bits");
        assert_eq!(c[0] >> 41 & 1, 1, "AA64");
        assert_eq!(c[0] >> 45 & 3, 3, "R and A");
        assert_eq!(c[0] >> 48, 0x1234, "ASID");
        assert_eq!(c[1], 0x8000_4000, "TTB0");
        assert_eq!(c[3], 0xff, "MAIR attribute 0: normal write-back");
    }

    #[test]
    fn command_encodings() {
        assert_eq!(cmd::cfgi_ste(8), [0x8_0000_0003, 1]);
        assert_eq!(cmd::cfgi_cd(8, 0), [0x8_0000_0005, 1]);
        assert_eq!(cmd::cfgi_all(), [0x04, 31]);
        assert_eq!(
            cmd::tlbi_nh_va(5, 0x4_2000_1234),
            [0x5_0000_0000_0012, 0x4_2000_1001]
        );
        assert_eq!(cmd::tlbi_nh_asid(5)[0], 0x0005_0000_0000_0011);
        assert_eq!(cmd::tlbi_s12_vmall(3)[0], 0x3_0000_0028);
        assert_eq!(cmd::sync(), [0x46, 0]);
    }

    #[test]
    fn stage1_descriptors() {
        assert_eq!(pte::table(0x8000_5000), 0x8000_5003);
        let p = pte::page(0x8000_7000);
        assert_eq!(p & !0xfff, 0x8000_7000);
        assert_eq!(p & 0xfff, 0xf43, "valid page, AP 0b01, SH ISH, AF, nG");
        let va = 0x4_2000_1000;
        assert_eq!(pte::index(va, 1), 0x10);
        assert_eq!(pte::index(va, 2), 0x100);
        assert_eq!(pte::index(va, 3), 1);
    }

    #[test]
    fn event_decoding() {
        // F_TRANSLATION, StreamID 8, a write (RnW = 0), stage 1.
        let e = EventRecord::decode([0x8_0000_0010, 0, 0x4_2000_1000, 0]);
        assert_eq!(e.name(), "F_TRANSLATION");
        assert_eq!(
            (e.sid, e.read, e.s2, e.addr),
            (8, false, false, 0x4_2000_1000)
        );
        let e = EventRecord::decode([0x10, 1 << 35 | 1 << 39, 0, 0]);
        assert!(e.read && e.s2);
    }

    #[test]
    fn iommu_map() {
        let map = [0u32, 7, 0, 0x1_0000];
        assert_eq!(map_rid(map.iter().copied(), 0x8), Some(8));
        let map = [0x100u32, 7, 0x40, 0x10, 0, 7, 0x800, 0x8];
        assert_eq!(map_rid(map.iter().copied(), 0x108), Some(0x48));
        assert_eq!(map_rid(map.iter().copied(), 0x3), Some(0x803));
        assert_eq!(map_rid(map.iter().copied(), 0x8), None);
        assert_eq!(map_rid([1u32, 2, 3].into_iter(), 1), None);
    }

    #[test]
    fn vsmmu_from_fdt() {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let gic = w.begin_node("intc@8000000").unwrap();
        w.property_string("compatible", "arm,gic-v3").unwrap();
        w.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80a_0000, 0x2_0000])
            .unwrap();
        w.end_node(gic).unwrap();
        let smmu = w.begin_node("iommu@9050000").unwrap();
        w.property_string("compatible", "arm,smmu-v3").unwrap();
        w.property_array_u64("reg", &[0x905_0000, 0x2_0000])
            .unwrap();
        // gerror listed first: names, not positions, decide.
        w.property_array_u32("interrupts", &[0, 17, 1, 0, 16, 1])
            .unwrap();
        w.property_string_list("interrupt-names", vec!["gerror".into(), "eventq".into()])
            .unwrap();
        w.end_node(smmu).unwrap();
        let pci = w.begin_node("pcie@30000000").unwrap();
        w.property_string("compatible", "pci-host-ecam-generic")
            .unwrap();
        w.property_array_u32("iommu-map", &[0, 1, 0x20, 0x100])
            .unwrap();
        w.end_node(pci).unwrap();
        w.end_node(root).unwrap();
        let blob = w.finish().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let v = VSmmuDt::from_fdt(&fdt).unwrap();
        assert_eq!(
            v,
            VSmmuDt {
                base: 0x905_0000,
                eventq: 48,
                gerror: 49,
                gicd: 0x800_0000
            }
        );
        assert_eq!(VSmmuDt::stream_of(&fdt, 1), Some(0x28));
        assert_eq!(VSmmuDt::stream_of(&fdt, 0x1f), Some(0x20 + 0xf8));
    }
}
