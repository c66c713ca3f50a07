//! ITS commands (IHI 0069 §6.3): the 32-byte entries of the command queue,
//! four little-endian doublewords DW0..DW3, the command number in DW0
//! \[7:0\]; and the GICv4.0 virtual commands (§6.3, the V* commands, which
//! map events to virtual LPIs of vPEs), whose numbers are the physical
//! ones' with bit 5 set.
//!
//! Only the hypervisor writes this queue, so [`Command`] is only encoded,
//! never decoded. Identifiers are taken as they are; the driver checks them
//! against GITS_TYPER before it builds a command. The layout (the command
//! numbers in [`opcode`], the fields in `DW0` to `DW3`) is also how the
//! virtual ITS reads what a guest writes to its own queue.

// Every command the hypervisor may need is encoded and tested here; the
// EL2 build does not send them all (MAPI and VMAPI not).
#![cfg_attr(target_os = "none", allow(dead_code))]

use super::super::lpi::Lpi;
use core::fmt;
use smmu::addr::PhysAddr;
use tock_registers::{register_bitfields, LocalRegisterCopy};

/// Bytes per command.
pub const COMMAND_BYTES: usize = 32;

/// A DeviceID: which device's MSI (the PCI requester ID through the host
/// bridge's `msi-map` on a PCI system).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

/// An EventID: which of a device's MSIs (the data the device writes to
/// GITS_TRANSLATER).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u32);

/// An interrupt collection ID (ICID): the hypervisor has one collection per
/// physical CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Icid(pub u16);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceID {:#x}", self.0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventID {}", self.0)
    }
}

/// A vPE ID (GICv4): which virtual PE a virtual LPI goes to; the hypervisor
/// has one vPE per vCPU of a VM whose MSIs it injects directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VpeId(pub u16);

impl fmt::Display for VpeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vPE {}", self.0)
    }
}

/// The doorbell of a virtual LPI (VMAPTI, VMAPI, VMOVI Dbell_pINTID): the
/// physical LPI the redistributor raises when the vLPI becomes pending
/// while its vPE is not resident, or none (INTID 1023).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// No doorbell: the pending bit is only recorded in the vPE's virtual
    /// pending table.
    None,
    /// This physical LPI.
    Lpi(Lpi),
}

impl Doorbell {
    /// The 32-bit Dbell_pINTID field.
    fn intid(self) -> u64 {
        match self {
            Self::None => 1023,
            Self::Lpi(lpi) => u64::from(lpi.intid()),
        }
    }
}

/// A vPE's virtual pending table as VMAPP names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VptRef {
    /// Its physical address, 64 KiB aligned (VPT_addr keeps bits \[51:16\]).
    pub pa: PhysAddr,
    /// vINTID bits it covers minus one (VPT_size).
    pub size: u8,
}

/// A redistributor as MAPC and SYNC name it (RDbase, DW2 \[51:16\]): by
/// physical address when GITS_TYPER.PTA = 1, else by
/// GICR_TYPER.Processor_Number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdBase {
    /// The physical address of its RD_base frame (64 KiB aligned).
    Address(PhysAddr),
    /// Its processor number.
    Processor(u16),
}

impl RdBase {
    /// The 36-bit RDbase field.
    fn field(self) -> u64 {
        match self {
            Self::Address(pa) => (pa.raw() >> 16) & 0xf_ffff_ffff,
            Self::Processor(n) => u64::from(n),
        }
    }
}

/// Command numbers (§6.3).
pub mod opcode {
    /// MOVI.
    pub const MOVI: u8 = 0x01;
    /// INT.
    pub const INT: u8 = 0x03;
    /// CLEAR.
    pub const CLEAR: u8 = 0x04;
    /// SYNC.
    pub const SYNC: u8 = 0x05;
    /// MAPD.
    pub const MAPD: u8 = 0x08;
    /// MAPC.
    pub const MAPC: u8 = 0x09;
    /// MAPTI.
    pub const MAPTI: u8 = 0x0a;
    /// MAPI.
    pub const MAPI: u8 = 0x0b;
    /// INV.
    pub const INV: u8 = 0x0c;
    /// INVALL.
    pub const INVALL: u8 = 0x0d;
    /// MOVALL.
    pub const MOVALL: u8 = 0x0e;
    /// DISCARD.
    pub const DISCARD: u8 = 0x0f;
    /// VMOVI.
    pub const VMOVI: u8 = 0x21;
    /// VSYNC.
    pub const VSYNC: u8 = 0x25;
    /// VMAPP.
    pub const VMAPP: u8 = 0x29;
    /// VMAPTI.
    pub const VMAPTI: u8 = 0x2a;
    /// VMAPI.
    pub const VMAPI: u8 = 0x2b;
    /// VINVALL.
    pub const VINVALL: u8 = 0x2d;
}

register_bitfields![u64,
    /// DW0 (bits \[63:0\]).
    pub DW0 [
        /// Command number, bits \[7:0\].
        OPCODE OFFSET(0) NUMBITS(8) [],
        /// DeviceID, bits \[63:32\].
        DEVICE_ID OFFSET(32) NUMBITS(32) []
    ],
    /// DW1 (bits \[127:64\]); offsets relative to bit 64.
    pub DW1 [
        /// EventID, bits \[31:0\].
        EVENT_ID OFFSET(0) NUMBITS(32) [],
        /// MAPD Size, bits \[4:0\]: EventID bits of the ITT minus one.
        SIZE OFFSET(0) NUMBITS(5) [],
        /// MAPTI pINTID, bits \[63:32\].
        PINTID OFFSET(32) NUMBITS(32) [],
        /// The V* commands' vPEID, bits \[47:32\].
        VPEID OFFSET(32) NUMBITS(16) []
    ],
    /// DW2 (bits \[191:128\]); offsets relative to bit 128.
    pub DW2 [
        /// ICID, bits \[15:0\].
        ICID OFFSET(0) NUMBITS(16) [],
        /// MAPD ITT_addr, bits \[51:8\]: ITT address bits \[51:8\].
        ITT_ADDR OFFSET(8) NUMBITS(44) [],
        /// MAPC and SYNC RDbase, bits \[51:16\].
        RDBASE OFFSET(16) NUMBITS(36) [],
        /// MAPC, MAPD and VMAPP V, bit \[63\].
        VALID OFFSET(63) NUMBITS(1) [],
        /// VMAPTI vINTID, bits \[31:0\].
        VINTID OFFSET(0) NUMBITS(32) [],
        /// VMOVI D, bit \[0\]: Dbell_pINTID is valid.
        DOORBELL_VALID OFFSET(0) NUMBITS(1) [],
        /// VMAPTI, VMAPI and VMOVI Dbell_pINTID, bits \[63:32\].
        DOORBELL OFFSET(32) NUMBITS(32) []
    ],
    /// DW3 (bits \[255:192\]); offsets relative to bit 192.
    pub DW3 [
        /// VMAPP VPT_size, bits \[4:0\]: vINTID bits minus one.
        VPT_SIZE OFFSET(0) NUMBITS(5) [],
        /// VMAPP VPT_addr, bits \[51:16\]: the table's address bits
        /// \[51:16\].
        VPT_ADDR OFFSET(16) NUMBITS(36) [],
        /// MOVALL RDbase2, bits \[51:16\].
        RDBASE2 OFFSET(16) NUMBITS(36) []
    ]
];

/// The ITT a MAPD gives a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IttRef {
    /// Its physical address, 256-byte aligned (§6.3, MAPD).
    pub pa: PhysAddr,
    /// EventID bits it covers minus one (MAPD Size): 2^(size+1) entries.
    pub size: u8,
}

/// One ITS command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// MAPD: maps `device` to an ITT (`Some`, V = 1) or unmaps it (V = 0).
    Mapd {
        /// The device.
        device: DeviceId,
        /// Its ITT, None to unmap.
        itt: Option<IttRef>,
    },
    /// MAPC: maps collection `icid` to a redistributor (`Some`, V = 1) or
    /// unmaps it.
    Mapc {
        /// The collection.
        icid: Icid,
        /// Its redistributor, None to unmap.
        target: Option<RdBase>,
    },
    /// MAPTI: the event becomes `lpi`, delivered to collection `icid`.
    Mapti {
        /// The device.
        device: DeviceId,
        /// Its event.
        event: EventId,
        /// The physical LPI.
        lpi: Lpi,
        /// The collection.
        icid: Icid,
    },
    /// MAPI: MAPTI with pINTID = EventID.
    Mapi {
        /// The device.
        device: DeviceId,
        /// Its event, also the LPI's INTID.
        event: EventId,
        /// The collection.
        icid: Icid,
    },
    /// MOVI: the event's LPI goes to collection `icid` from now on.
    Movi {
        /// The device.
        device: DeviceId,
        /// Its event.
        event: EventId,
        /// The new collection.
        icid: Icid,
    },
    /// DISCARD: removes the event's mapping and its pending state.
    Discard {
        /// The device.
        device: DeviceId,
        /// Its event.
        event: EventId,
    },
    /// INV: the redistributor re-reads the event's LPI configuration.
    Inv {
        /// The device.
        device: DeviceId,
        /// Its event.
        event: EventId,
    },
    /// INVALL: the redistributor of `icid` re-reads every LPI's
    /// configuration.
    Invall {
        /// The collection.
        icid: Icid,
    },
    /// INT: makes the event's LPI pending, as if the device had written
    /// the EventID to GITS_TRANSLATER.
    Int {
        /// The device.
        device: DeviceId,
        /// Its event.
        event: EventId,
    },
    /// CLEAR: clears the event's LPI's pending state.
    Clear {
        /// The device.
        device: DeviceId,
        /// Its event.
        event: EventId,
    },
    /// SYNC: completes once every earlier command's effects on `target`
    /// are visible.
    Sync {
        /// The redistributor.
        target: RdBase,
    },
    /// VMAPP: maps `vpe` to a redistributor with its virtual pending table
    /// (`Some`, V = 1), or unmaps it.
    Vmapp {
        /// The vPE.
        vpe: VpeId,
        /// Its redistributor and virtual pending table, None to unmap.
        target: Option<(RdBase, VptRef)>,
    },
    /// VMAPTI: the event becomes virtual LPI `vintid` of `vpe`.
    Vmapti {
        /// The device.
        device: DeviceId,
        /// Its event.
        event: EventId,
        /// The vPE.
        vpe: VpeId,
        /// The virtual LPI's INTID.
        vintid: u32,
        /// What the redistributor raises while `vpe` is not resident.
        doorbell: Doorbell,
    },
    /// VMAPI: VMAPTI with vINTID = EventID.
    Vmapi {
        /// The device.
        device: DeviceId,
        /// Its event, also the virtual LPI's INTID.
        event: EventId,
        /// The vPE.
        vpe: VpeId,
        /// What the redistributor raises while `vpe` is not resident.
        doorbell: Doorbell,
    },
    /// VMOVI: the event's virtual LPI goes to `vpe` from now on, with its
    /// pending state.
    Vmovi {
        /// The device.
        device: DeviceId,
        /// Its event.
        event: EventId,
        /// The new vPE.
        vpe: VpeId,
        /// A new doorbell (D = 1), or the event's stays (None, D = 0).
        doorbell: Option<Doorbell>,
    },
    /// VINVALL: the redistributor of `vpe` re-reads the configuration of
    /// every virtual LPI.
    Vinvall {
        /// The vPE.
        vpe: VpeId,
    },
    /// VSYNC: completes once every earlier command's effects on `vpe` are
    /// visible.
    Vsync {
        /// The vPE.
        vpe: VpeId,
    },
}

impl Command {
    /// The command number.
    pub fn opcode(&self) -> u8 {
        match self {
            Self::Mapd { .. } => opcode::MAPD,
            Self::Mapc { .. } => opcode::MAPC,
            Self::Mapti { .. } => opcode::MAPTI,
            Self::Mapi { .. } => opcode::MAPI,
            Self::Movi { .. } => opcode::MOVI,
            Self::Discard { .. } => opcode::DISCARD,
            Self::Inv { .. } => opcode::INV,
            Self::Invall { .. } => opcode::INVALL,
            Self::Int { .. } => opcode::INT,
            Self::Clear { .. } => opcode::CLEAR,
            Self::Sync { .. } => opcode::SYNC,
            Self::Vmapp { .. } => opcode::VMAPP,
            Self::Vmapti { .. } => opcode::VMAPTI,
            Self::Vmapi { .. } => opcode::VMAPI,
            Self::Vmovi { .. } => opcode::VMOVI,
            Self::Vinvall { .. } => opcode::VINVALL,
            Self::Vsync { .. } => opcode::VSYNC,
        }
    }

    /// The four doublewords, DW0 first.
    pub fn encode(&self) -> [u64; 4] {
        let mut dw0 = LocalRegisterCopy::<u64, DW0::Register>::new(0);
        let mut dw1 = LocalRegisterCopy::<u64, DW1::Register>::new(0);
        let mut dw2 = LocalRegisterCopy::<u64, DW2::Register>::new(0);
        let mut dw3 = LocalRegisterCopy::<u64, DW3::Register>::new(0);
        dw0.modify(DW0::OPCODE.val(u64::from(self.opcode())));
        let mut device_event = |d: DeviceId, e: EventId| {
            dw0.modify(DW0::DEVICE_ID.val(u64::from(d.0)));
            dw1.modify(DW1::EVENT_ID.val(u64::from(e.0)));
        };
        match *self {
            Self::Mapd { device, itt } => {
                dw0.modify(DW0::DEVICE_ID.val(u64::from(device.0)));
                if let Some(itt) = itt {
                    dw1.modify(DW1::SIZE.val(u64::from(itt.size)));
                    dw2.modify(DW2::ITT_ADDR.val(itt.pa.raw() >> 8) + DW2::VALID::SET);
                }
            }
            Self::Mapc { icid, target } => {
                dw2.modify(DW2::ICID.val(u64::from(icid.0)));
                if let Some(t) = target {
                    dw2.modify(DW2::RDBASE.val(t.field()) + DW2::VALID::SET);
                }
            }
            Self::Mapti {
                device,
                event,
                lpi,
                icid,
            } => {
                device_event(device, event);
                dw1.modify(DW1::PINTID.val(u64::from(lpi.intid())));
                dw2.modify(DW2::ICID.val(u64::from(icid.0)));
            }
            Self::Mapi {
                device,
                event,
                icid,
            }
            | Self::Movi {
                device,
                event,
                icid,
            } => {
                device_event(device, event);
                dw2.modify(DW2::ICID.val(u64::from(icid.0)));
            }
            Self::Discard { device, event }
            | Self::Inv { device, event }
            | Self::Int { device, event }
            | Self::Clear { device, event } => device_event(device, event),
            Self::Invall { icid } => dw2.modify(DW2::ICID.val(u64::from(icid.0))),
            Self::Sync { target } => dw2.modify(DW2::RDBASE.val(target.field())),
            Self::Vmapp { vpe, target } => {
                dw1.modify(DW1::VPEID.val(u64::from(vpe.0)));
                if let Some((rd, vpt)) = target {
                    dw2.modify(DW2::RDBASE.val(rd.field()) + DW2::VALID::SET);
                    dw3.modify(
                        DW3::VPT_ADDR.val(vpt.pa.raw() >> 16)
                            + DW3::VPT_SIZE.val(u64::from(vpt.size)),
                    );
                }
            }
            Self::Vmapti {
                device,
                event,
                vpe,
                vintid,
                doorbell,
            } => {
                device_event(device, event);
                dw1.modify(DW1::VPEID.val(u64::from(vpe.0)));
                dw2.modify(
                    DW2::VINTID.val(u64::from(vintid)) + DW2::DOORBELL.val(doorbell.intid()),
                );
            }
            Self::Vmapi {
                device,
                event,
                vpe,
                doorbell,
            } => {
                device_event(device, event);
                dw1.modify(DW1::VPEID.val(u64::from(vpe.0)));
                dw2.modify(DW2::DOORBELL.val(doorbell.intid()));
            }
            Self::Vmovi {
                device,
                event,
                vpe,
                doorbell,
            } => {
                device_event(device, event);
                dw1.modify(DW1::VPEID.val(u64::from(vpe.0)));
                if let Some(d) = doorbell {
                    dw2.modify(DW2::DOORBELL_VALID::SET + DW2::DOORBELL.val(d.intid()));
                }
            }
            Self::Vinvall { vpe } | Self::Vsync { vpe } => {
                dw1.modify(DW1::VPEID.val(u64::from(vpe.0)))
            }
        }
        [dw0.get(), dw1.get(), dw2.get(), dw3.get()]
    }

    /// The command's name in §6.3, for reports.
    pub fn name(opcode: u8) -> &'static str {
        match opcode {
            opcode::MOVI => "MOVI",
            opcode::INT => "INT",
            opcode::CLEAR => "CLEAR",
            opcode::SYNC => "SYNC",
            opcode::MAPD => "MAPD",
            opcode::MAPC => "MAPC",
            opcode::MAPTI => "MAPTI",
            opcode::MAPI => "MAPI",
            opcode::INV => "INV",
            opcode::INVALL => "INVALL",
            opcode::MOVALL => "MOVALL",
            opcode::DISCARD => "DISCARD",
            opcode::VMOVI => "VMOVI",
            opcode::VSYNC => "VSYNC",
            opcode::VMAPP => "VMAPP",
            opcode::VMAPTI => "VMAPTI",
            opcode::VMAPI => "VMAPI",
            opcode::VINVALL => "VINVALL",
            _ => "unknown command",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: DeviceId = DeviceId(0x1234_5678);
    const EV: EventId = EventId(0x9abc_def0);

    fn lpi(intid: u32) -> Lpi {
        Lpi::new(intid).unwrap()
    }

    #[test]
    fn mapti_fields() {
        let c = Command::Mapti {
            device: DEV,
            event: EV,
            lpi: lpi(0x2345),
            icid: Icid(0xbeef),
        };
        let [dw0, dw1, dw2, dw3] = c.encode();
        assert_eq!(dw0 & 0xff, 0x0a, "MAPTI is 0x0a in DW0[7:0]");
        assert_eq!(dw0 >> 32, 0x1234_5678, "DeviceID in DW0[63:32]");
        assert_eq!(dw0 & 0xffff_ff00, 0, "DW0[31:8] RES0");
        assert_eq!(dw1 & 0xffff_ffff, 0x9abc_def0, "EventID in DW1[31:0]");
        assert_eq!(dw1 >> 32, 0x2345, "pINTID in DW1[63:32]");
        assert_eq!(dw2, 0xbeef, "ICID in DW2[15:0], nothing else");
        assert_eq!(dw3, 0);
    }

    #[test]
    fn mapi_movi_fields() {
        for (c, op) in [
            (
                Command::Mapi {
                    device: DEV,
                    event: EV,
                    icid: Icid(7),
                },
                0x0b,
            ),
            (
                Command::Movi {
                    device: DEV,
                    event: EV,
                    icid: Icid(7),
                },
                0x01,
            ),
        ] {
            assert_eq!(c.encode(), [(0x1234_5678 << 32) | op, 0x9abc_def0, 7, 0]);
        }
    }

    #[test]
    fn mapd_fields() {
        let c = Command::Mapd {
            device: DeviceId(0xff),
            itt: Some(IttRef {
                pa: PhysAddr(0x000f_4567_89ab_cd00),
                size: 4,
            }),
        };
        let [dw0, dw1, dw2, dw3] = c.encode();
        assert_eq!(
            dw0,
            (0xff << 32) | 0x08,
            "MAPD 0x08, DeviceID in DW0[63:32]"
        );
        assert_eq!(dw1, 4, "Size in DW1[4:0]");
        assert_eq!(
            dw2 & 0x000f_ffff_ffff_ff00,
            0x000f_4567_89ab_cd00,
            "ITT_addr in DW2[51:8]"
        );
        assert_eq!(dw2 >> 63, 1, "V in DW2[63]");
        assert_eq!(dw2 & 0x7ff0_0000_0000_00ff, 0, "DW2[62:52] and [7:0] RES0");
        assert_eq!(dw3, 0);
        let unmap = Command::Mapd {
            device: DeviceId(0xff),
            itt: None,
        };
        assert_eq!(unmap.encode(), [(0xff << 32) | 0x08, 0, 0, 0], "V = 0");
    }

    #[test]
    fn mapc_fields() {
        let by_number = Command::Mapc {
            icid: Icid(3),
            target: Some(RdBase::Processor(3)),
        };
        let [dw0, dw1, dw2, _] = by_number.encode();
        assert_eq!((dw0, dw1), (0x09, 0), "MAPC 0x09, DW0/DW1 otherwise RES0");
        assert_eq!(dw2 & 0xffff, 3, "ICID in DW2[15:0]");
        assert_eq!(dw2 >> 16 & 0xf_ffff_ffff, 3, "RDbase in DW2[51:16]");
        assert_eq!(dw2 >> 63, 1, "V in DW2[63]");
        let by_address = Command::Mapc {
            icid: Icid(1),
            target: Some(RdBase::Address(PhysAddr(0x000f_0000_080c_0000))),
        };
        let dw2 = by_address.encode()[2];
        assert_eq!(
            dw2 & 0x000f_ffff_ffff_0000,
            0x000f_0000_080c_0000,
            "a 64 KiB-aligned RD_base address sits in place in DW2[51:16]"
        );
        let unmap = Command::Mapc {
            icid: Icid(2),
            target: None,
        };
        assert_eq!(unmap.encode()[2], 2, "V = 0, no RDbase");
    }

    #[test]
    fn event_commands() {
        for (c, op) in [
            (
                Command::Discard {
                    device: DEV,
                    event: EV,
                },
                0x0f,
            ),
            (
                Command::Inv {
                    device: DEV,
                    event: EV,
                },
                0x0c,
            ),
            (
                Command::Int {
                    device: DEV,
                    event: EV,
                },
                0x03,
            ),
            (
                Command::Clear {
                    device: DEV,
                    event: EV,
                },
                0x04,
            ),
        ] {
            assert_eq!(
                c.encode(),
                [(0x1234_5678 << 32) | op, 0x9abc_def0, 0, 0],
                "{c:?}"
            );
            assert_eq!(u64::from(c.opcode()), op);
        }
    }

    #[test]
    fn invall_and_sync() {
        assert_eq!(
            Command::Invall { icid: Icid(0xabcd) }.encode(),
            [0x0d, 0, 0xabcd, 0]
        );
        let sync = Command::Sync {
            target: RdBase::Processor(5),
        };
        assert_eq!(sync.encode(), [0x05, 0, 5 << 16, 0], "RDbase in DW2[51:16]");
        let sync = Command::Sync {
            target: RdBase::Address(PhysAddr(0x080a_0000)),
        };
        assert_eq!(sync.encode(), [0x05, 0, 0x080a_0000, 0]);
    }

    #[test]
    fn vmapp_fields() {
        let c = Command::Vmapp {
            vpe: VpeId(0xbeef),
            target: Some((
                RdBase::Processor(3),
                VptRef {
                    pa: PhysAddr(0x000f_1234_5678_0000),
                    size: 15,
                },
            )),
        };
        let [dw0, dw1, dw2, dw3] = c.encode();
        assert_eq!(dw0, 0x29, "VMAPP is 0x29, DW0 otherwise RES0");
        assert_eq!(dw1, 0xbeef << 32, "vPEID in DW1[47:32]");
        assert_eq!(dw2 >> 63, 1, "V in DW2[63]");
        assert_eq!(dw2 & !(1 << 63), 3 << 16, "RDbase in DW2[51:16]");
        assert_eq!(dw3 & 0x1f, 15, "VPT_size in DW3[4:0]");
        assert_eq!(
            dw3 & !0x1f,
            0x000f_1234_5678_0000,
            "VPT_addr in DW3[51:16], nothing else"
        );
        let unmap = Command::Vmapp {
            vpe: VpeId(7),
            target: None,
        };
        assert_eq!(unmap.encode(), [0x29, 7 << 32, 0, 0], "V = 0");
        let by_address = Command::Vmapp {
            vpe: VpeId(1),
            target: Some((
                RdBase::Address(PhysAddr(0x080e_0000)),
                VptRef {
                    pa: PhysAddr(0x4001_0000),
                    size: 13,
                },
            )),
        };
        assert_eq!(by_address.encode()[2], (1 << 63) | 0x080e_0000);
    }

    #[test]
    fn vmapti_vmapi_fields() {
        let c = Command::Vmapti {
            device: DEV,
            event: EV,
            vpe: VpeId(0x1234),
            vintid: 0x2345,
            doorbell: Doorbell::None,
        };
        let [dw0, dw1, dw2, dw3] = c.encode();
        assert_eq!(dw0, (0x1234_5678 << 32) | 0x2a, "VMAPTI 0x2a, DeviceID");
        assert_eq!(
            dw1,
            (0x1234 << 32) | 0x9abc_def0,
            "EventID [31:0], vPEID [47:32]"
        );
        assert_eq!(dw2 & 0xffff_ffff, 0x2345, "vINTID in DW2[31:0]");
        assert_eq!(dw2 >> 32, 1023, "no doorbell: Dbell_pINTID 1023");
        assert_eq!(dw3, 0);
        let with_doorbell = Command::Vmapti {
            device: DEV,
            event: EV,
            vpe: VpeId(1),
            vintid: 8192,
            doorbell: Doorbell::Lpi(lpi(9000)),
        };
        assert_eq!(with_doorbell.encode()[2], (9000 << 32) | 8192);
        let mapi = Command::Vmapi {
            device: DEV,
            event: EV,
            vpe: VpeId(2),
            doorbell: Doorbell::None,
        };
        assert_eq!(
            mapi.encode(),
            [
                (0x1234_5678 << 32) | 0x2b,
                (2 << 32) | 0x9abc_def0,
                1023 << 32,
                0
            ]
        );
    }

    #[test]
    fn vmovi_fields() {
        let keep = Command::Vmovi {
            device: DEV,
            event: EV,
            vpe: VpeId(5),
            doorbell: None,
        };
        assert_eq!(
            keep.encode(),
            [(0x1234_5678 << 32) | 0x21, (5 << 32) | 0x9abc_def0, 0, 0],
            "D = 0: the doorbell stays"
        );
        let change = Command::Vmovi {
            device: DEV,
            event: EV,
            vpe: VpeId(5),
            doorbell: Some(Doorbell::None),
        };
        assert_eq!(change.encode()[2], (1023 << 32) | 1, "D in DW2[0]");
    }

    #[test]
    fn vinvall_and_vsync() {
        assert_eq!(
            Command::Vinvall { vpe: VpeId(0xffff) }.encode(),
            [0x2d, 0xffff << 32, 0, 0]
        );
        assert_eq!(
            Command::Vsync { vpe: VpeId(3) }.encode(),
            [0x25, 3 << 32, 0, 0]
        );
    }

    #[test]
    fn virtual_opcodes_are_the_physical_ones_with_bit_5() {
        for (v, p) in [
            (opcode::VMOVI, opcode::MOVI),
            (opcode::VSYNC, opcode::SYNC),
            (opcode::VMAPP, opcode::MAPC),
            (opcode::VMAPTI, opcode::MAPTI),
            (opcode::VMAPI, opcode::MAPI),
            (opcode::VINVALL, opcode::INVALL),
        ] {
            assert_eq!(v, p | 0x20, "{}", Command::name(v));
        }
    }

    #[test]
    fn names() {
        assert_eq!(Command::name(opcode::VMAPTI), "VMAPTI");
        assert_eq!(Command::name(opcode::MAPTI), "MAPTI");
        assert_eq!(Command::name(opcode::SYNC), "SYNC");
        assert_eq!(Command::name(0xff), "unknown command");
    }
}
