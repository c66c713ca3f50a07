//! `edu_msi`: the guest programs its GICv3 redistributor and ITS the way
//! Linux does for its `edu`, maps the device's event to an LPI, and checks
//! who may raise it through GITS_TRANSLATER (the checks: `msi/hw.rs`).
//!
//! The command and register encodings are written from the GICv3
//! specification (IHI 0069, §6.3 "ITS commands", §8.11 and §8.19),
//! independently of the hypervisor's vITS, which thereby meets a second
//! reading of the specification. The pure parts are compiled on the host for
//! their unit tests; the checks only for the guest.

use flat_device_tree::Fdt;

/// GITS_TRANSLATER's offset from ITS_base: the doorbell a device's MSI
/// writes its EventID to (§8.19.26; the second 64 KiB frame).
pub const TRANSLATER: u64 = 0x1_0040;
/// The LPI the guest maps its event to: the first one (§5.1).
pub const LPI: u32 = 8192;
/// The LPI configuration byte (§5.1.1): priority 0xa0, Enable.
pub const LPI_CONFIG: u8 = 0xa1;
/// INTID bits the guest's LPI tables cover (GICR_PROPBASER.IDbits + 1):
/// INTIDs below 16384.
pub const ID_BITS: u32 = 14;

/// ITS register offsets from ITS_base (§8.19).
pub mod reg {
    pub const CTLR: u64 = 0x0000;
    pub const TYPER: u64 = 0x0008;
    pub const CBASER: u64 = 0x0080;
    pub const CWRITER: u64 = 0x0088;
    pub const CREADR: u64 = 0x0090;
    pub const BASER0: u64 = 0x0100;
    /// GITS_CTLR.Enabled.
    pub const CTLR_ENABLED: u32 = 1;
    /// GITS_TYPER.PTA \[19\]: targets are redistributor addresses, not
    /// processor numbers.
    pub const TYPER_PTA: u64 = 1 << 19;
    /// GITS_BASER<n>.Valid and GITS_CBASER.Valid \[63\].
    pub const VALID: u64 = 1 << 63;
    /// Redistributor (RD_base) offsets (§8.11).
    pub const GICR_CTLR: u64 = 0x0000;
    pub const GICR_PROPBASER: u64 = 0x0070;
    pub const GICR_PENDBASER: u64 = 0x0078;
    /// GICR_CTLR.EnableLPIs.
    pub const GICR_CTLR_ENABLE_LPIS: u32 = 1;
}

/// ITS commands, 32 bytes each as four little-endian doublewords (§6.3).
pub mod cmd {
    /// DeviceID in DW0 \[63:32\] with command number `n` in \[7:0\].
    fn dw0(n: u64, device: u32) -> u64 {
        n | (u64::from(device) << 32)
    }

    /// RDbase in DW2 \[51:16\].
    fn rdbase(target: u64) -> u64 {
        (target & ((1 << 36) - 1)) << 16
    }

    /// MAPC ICID -> RDbase `target`, V = 1 (§6.3.9).
    pub fn mapc(icid: u16, target: u64) -> [u64; 4] {
        [0x09, 0, (1 << 63) | rdbase(target) | u64::from(icid), 0]
    }

    /// MAPD `device` with an ITT at `itt` (256-byte aligned) for
    /// 2^`event_bits` events, V = 1 (§6.3.8): Size \[4:0\] = bits - 1,
    /// ITT_addr \[51:8\].
    pub fn mapd(device: u32, itt: u64, event_bits: u8) -> [u64; 4] {
        [
            dw0(0x08, device),
            u64::from(event_bits.max(1) - 1) & 0x1f,
            (1 << 63) | (itt & (((1 << 44) - 1) << 8)),
            0,
        ]
    }

    /// MAPTI `event` of `device` to LPI `intid` in collection `icid`
    /// (§6.3.11).
    pub fn mapti(device: u32, event: u32, intid: u32, icid: u16) -> [u64; 4] {
        [
            dw0(0x0a, device),
            u64::from(event) | (u64::from(intid) << 32),
            u64::from(icid),
            0,
        ]
    }

    /// DISCARD `event` of `device`: its translation and any pending LPI
    /// go (§6.3.4).
    pub fn discard(device: u32, event: u32) -> [u64; 4] {
        [dw0(0x0f, device), u64::from(event), 0, 0]
    }

    /// INT: makes `event` of `device` pending as its MSI would (§6.3.6).
    pub fn int(device: u32, event: u32) -> [u64; 4] {
        [dw0(0x03, device), u64::from(event), 0, 0]
    }

    /// SYNC on RDbase `target` (§6.3.16).
    pub fn sync(target: u64) -> [u64; 4] {
        [0x05, 0, rdbase(target), 0]
    }
}

/// A function's MSI capability (PCI Local Bus 3.0 §6.8.1), as the guest
/// programs it.
pub mod msi_cap {
    /// Capability ID of MSI.
    pub const ID: u8 = 0x05;
    /// Status register: Capabilities List (bit 4 of the high half of the
    /// dword at 0x04).
    const STATUS_CAP_LIST: u32 = 1 << 20;
    /// Message Control (high half of the first dword): MSI Enable.
    pub const ENABLE: u32 = 1 << 16;
    /// Message Control: Multiple Message Enable (bits 6:4).
    pub const MME: u32 = 7 << 20;
    /// Message Control: 64 bit address capable (bit 7).
    pub const ADDR64: u32 = 1 << 23;

    /// The offset of the capability with ID `id`, walking the list through
    /// `read` (a configuration-space dword read) as an OS does; at most 48
    /// steps, so a looping list ends.
    pub fn find(read: impl Fn(u16) -> u32, id: u8) -> Option<u16> {
        if read(0x04) & STATUS_CAP_LIST == 0 {
            return None;
        }
        let mut ptr = (read(0x34) & 0xfc) as u16;
        for _ in 0..48 {
            if ptr < 0x40 {
                return None;
            }
            let header = read(ptr);
            if header as u8 == id {
                return Some(ptr);
            }
            ptr = ((header >> 8) & 0xfc) as u16;
        }
        None
    }

    /// The dwords to write for the message (`address`, `data`), from the
    /// capability's first dword `control`: (offset, value) pairs, the
    /// upper address only with a 64-bit address; `None` when a 32-bit
    /// capability cannot hold `address`.
    pub fn message(control: u32, address: u64, data: u16) -> Option<[(u16, u32); 3]> {
        let wide = control & ADDR64 != 0;
        if !wide && address >> 32 != 0 {
            return None;
        }
        let low = (0x4, address as u32);
        Some(if wide {
            [low, (0x8, (address >> 32) as u32), (0xc, u32::from(data))]
        } else {
            // The 32-bit layout's data sits where the upper address would.
            [low, (0x8, u32::from(data)), (0x8, u32::from(data))]
        })
    }
}

/// A function's MSI-X capability (PCI Local Bus 3.0 §6.8.2), as the guest
/// reads it.
pub mod msix_cap {
    /// Capability ID of MSI-X.
    pub const ID: u8 = 0x11;
    /// Message Control (high half of the first dword): MSI-X Enable.
    pub const ENABLE: u32 = 1 << 31;
    /// Message Control: Function Mask.
    pub const FUNCTION_MASK: u32 = 1 << 30;
    /// Bytes per table entry: Message Address, Upper Address, Data,
    /// Vector Control.
    pub const ENTRY_BYTES: u64 = 16;
    /// Vector Control: Mask Bit.
    pub const MASKED: u32 = 1;

    /// Where the table or the PBA is: BAR index and offset in it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Place {
        /// BIR \[2:0\].
        pub bar: u8,
        /// Offset \[31:3\].
        pub offset: u64,
    }

    /// The capability's three dwords decoded.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Layout {
        /// Table Size + 1.
        pub entries: u16,
        /// The table.
        pub table: Place,
        /// The Pending Bit Array.
        pub pba: Place,
    }

    impl Layout {
        /// From the dwords at the capability, +4 (Table Offset/BIR) and +8
        /// (PBA Offset/BIR).
        pub fn decode(header: u32, table: u32, pba: u32) -> Self {
            let place = |v: u32| Place {
                bar: (v & 7) as u8,
                offset: u64::from(v & !7),
            };
            Layout {
                entries: ((header >> 16) & 0x7ff) as u16 + 1,
                table: place(table),
                pba: place(pba),
            }
        }

        /// The offset in the table's BAR of entry `i`'s dword `field`
        /// (0 address, 1 upper address, 2 data, 3 vector control).
        pub fn field(&self, i: u16, field: u64) -> u64 {
            self.table.offset + u64::from(i) * ENTRY_BYTES + 4 * field
        }

        /// The offset in the PBA's BAR of the QWORD holding entry `i`'s
        /// pending bit, and the bit.
        pub fn pending(&self, i: u16) -> (u64, u64) {
            (self.pba.offset + u64::from(i / 64) * 8, 1 << (i % 64))
        }
    }
}

/// What the guest needs from its device tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItsDt {
    /// ITS_base (`arm,gic-v3-its`).
    pub its: u64,
    /// The distributor (`arm,gic-v3` first `reg`).
    pub gicd: u64,
    /// The first redistributor, ours (second `reg`).
    pub gicr: u64,
}

impl ItsDt {
    /// The GICv3 and its ITS.
    pub fn from_fdt(fdt: &Fdt<'_>) -> Option<Self> {
        let gic = fdt.find_compatible(&["arm,gic-v3"])?;
        let mut regs = gic.reg();
        let gicd = regs.next()?.starting_address as u64;
        let gicr = regs.next()?.starting_address as u64;
        let its = fdt
            .find_compatible(&["arm,gic-v3-its"])?
            .reg()
            .next()?
            .starting_address as u64;
        Some(ItsDt { its, gicd, gicr })
    }

    /// The ITS DeviceID of bus 0 `device`, function 0 behind the first
    /// `pci-host-ecam-generic` bridge, from its `msi-map`.
    pub fn device_of(fdt: &Fdt<'_>, device: u8) -> Option<u32> {
        let pci = fdt.find_compatible(&["pci-host-ecam-generic"])?;
        let map = pci.property("msi-map")?;
        crate::nested::map_rid(crate::nested::cells(map.value), u32::from(device) << 3)
    }
}

/// GICR_PROPBASER for a configuration table at `pa` covering INTIDs below
/// 2^`id_bits` (IDbits \[4:0\] = bits - 1; Non-shareable, Device-nGnRnE
/// attributes, as a guest with its MMU off writes it).
pub fn propbaser(pa: u64, id_bits: u32) -> u64 {
    (pa & (((1 << 40) - 1) << 12)) | u64::from(id_bits - 1)
}

/// GITS_BASER0 or GITS_CBASER for a one-page (4 KiB) flat table or queue
/// at `pa`: Valid, Page_Size 4 KiB, Size 0 (one page).
pub fn one_page_base(pa: u64) -> u64 {
    reg::VALID | (pa & (((1 << 36) - 1) << 12))
}

#[cfg(target_os = "none")]
pub use attack::run as attack;
#[cfg(target_os = "none")]
pub use hw::run;
#[cfg(target_os = "none")]
pub use msix_attack::run as msix_attack;

#[cfg(target_os = "none")]
mod attack;
#[cfg(target_os = "none")]
mod hw;
#[cfg(target_os = "none")]
mod msix_attack;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_at_their_spec_positions() {
        assert_eq!(cmd::mapc(3, 0), [0x09, 0, (1 << 63) | 3, 0]);
        assert_eq!(cmd::mapc(0, 0x1234)[2], (1 << 63) | (0x1234 << 16));
        assert_eq!(
            cmd::mapd(0x8, 0x8020_3100, 1),
            [0x8_0000_0008, 0, (1 << 63) | 0x8020_3100, 0]
        );
        assert_eq!(cmd::mapd(0x8, 0x8020_3000, 11)[1], 10);
        assert_eq!(
            cmd::mapti(0x8, 5, LPI, 2),
            [0x8_0000_000a, (8192 << 32) | 5, 2, 0]
        );
        assert_eq!(cmd::int(0x10, 7), [0x10_0000_0003, 7, 0, 0]);
        assert_eq!(cmd::discard(0x10, 7), [0x10_0000_000f, 7, 0, 0]);
        assert_eq!(cmd::sync(1), [0x05, 0, 1 << 16, 0]);
    }

    #[test]
    fn msi_capability_found_and_programmed() {
        // Status.Capabilities List; PM at 0x40 -> MSI at 0x50 (64-bit).
        let read = |off: u16| match off {
            0x04 => 1 << 20,
            0x34 => 0x40,
            0x40 => 0x5001,
            0x50 => 0x0080_0005,
            _ => 0,
        };
        assert_eq!(msi_cap::find(read, msi_cap::ID), Some(0x50));
        assert_eq!(msi_cap::find(read, 0x11), None);
        // No list, or a list that loops, ends.
        assert_eq!(msi_cap::find(|o| if o == 0x04 { 0 } else { 0x40 }, 5), None);
        assert_eq!(
            msi_cap::find(|o| if o == 0x04 { 1 << 20 } else { 0x4001 }, 5),
            None
        );
        assert_eq!(
            msi_cap::message(0x0080_0005, 0x1_0809_0040, 7),
            Some([(4, 0x0809_0040), (8, 1), (0xc, 7)])
        );
        assert_eq!(
            msi_cap::message(0x0000_0005, 0x0809_0040, 7),
            Some([(4, 0x0809_0040), (8, 7), (8, 7)])
        );
        assert_eq!(msi_cap::message(0x0000_0005, 1 << 32, 7), None);
    }

    #[test]
    fn msix_capability_decoded() {
        // QEMU's nvme: 65 entries, table at BAR0 + 0x2000, PBA at BAR0 +
        // 0x3000; enabled, function not masked.
        let l = msix_cap::Layout::decode(0x8040_0011, 0x2000, 0x3000);
        assert_eq!(l.entries, 65);
        assert_eq!(
            l.table,
            msix_cap::Place {
                bar: 0,
                offset: 0x2000
            }
        );
        assert_eq!(
            l.pba,
            msix_cap::Place {
                bar: 0,
                offset: 0x3000
            }
        );
        assert_eq!(l.field(0, 0), 0x2000);
        assert_eq!(l.field(1, 2), 0x2018);
        assert_eq!(l.field(64, 3), 0x240c);
        assert_eq!(l.pending(0), (0x3000, 1));
        assert_eq!(l.pending(64), (0x3008, 1));
        // BIR 4, offset 0x100.
        let l = msix_cap::Layout::decode(0x0000_0011, 0x104, 0x804);
        assert_eq!((l.entries, l.table.bar, l.table.offset), (1, 4, 0x100));
        assert_eq!((l.pba.bar, l.pba.offset), (4, 0x800));
    }

    #[test]
    fn base_registers() {
        assert_eq!(propbaser(0x8020_1000, ID_BITS), 0x8020_100d);
        assert_eq!(one_page_base(0x8020_5000), (1 << 63) | 0x8020_5000);
        assert_eq!(one_page_base(0x8020_5fff), (1 << 63) | 0x8020_5000);
    }

    #[test]
    fn its_and_device_ids_from_the_device_tree() {
        use vm_fdt::FdtWriter;
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let gic = w.begin_node("intc@8000000").unwrap();
        w.property_string("compatible", "arm,gic-v3").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_array_u64("reg", &[0x800_0000, 0x1_0000, 0x80a_0000, 0x2_0000])
            .unwrap();
        let its = w.begin_node("msi-controller@8080000").unwrap();
        w.property_string("compatible", "arm,gic-v3-its").unwrap();
        w.property_array_u64("reg", &[0x808_0000, 0x2_0000])
            .unwrap();
        w.end_node(its).unwrap();
        w.end_node(gic).unwrap();
        let pci = w.begin_node("pcie@30000000").unwrap();
        w.property_string("compatible", "pci-host-ecam-generic")
            .unwrap();
        w.property_array_u32("msi-map", &[0, 0x8002, 0x100, 0x1_0000])
            .unwrap();
        w.end_node(pci).unwrap();
        w.end_node(root).unwrap();
        let blob = w.finish().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        assert_eq!(
            ItsDt::from_fdt(&fdt),
            Some(ItsDt {
                its: 0x808_0000,
                gicd: 0x800_0000,
                gicr: 0x80a_0000
            })
        );
        assert_eq!(ItsDt::device_of(&fdt, 1), Some(0x108));
    }
}
