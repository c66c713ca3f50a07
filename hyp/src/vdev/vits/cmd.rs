//! ITS commands as the guest writes them to its command queue: 32 bytes,
//! four little-endian doublewords, command number in DW0\[7:0\]
//! (IHI 0069 §6.3 "ITS commands").

use smmu::addr::Ipa;
use tock_registers::LocalRegisterCopy;

use crate::gicv3::its::cmd::{opcode, DW0, DW1, DW2, DW3};

/// Bytes per command.
pub const CMD_SIZE: u64 = 32;

/// A decoded command. Field names are the specification's; a target
/// ("RDbase") is a processor number because GITS_TYPER.PTA = 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// MOVI (0x01): moves an event to another collection.
    Movi {
        /// DeviceID, DW0\[63:32\].
        device: u32,
        /// EventID, DW1\[31:0\].
        event: u32,
        /// ICID, DW2\[15:0\].
        icid: u16,
    },
    /// INT (0x03): makes an event's LPI pending.
    Int {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// CLEAR (0x04): clears an event's LPI's pending state.
    Clear {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// SYNC (0x05): waits for the effects of earlier commands on a
    /// redistributor.
    Sync {
        /// RDbase, DW2\[51:16\].
        target: u64,
    },
    /// MAPD (0x08): maps a DeviceID to an ITT, or unmaps it.
    Mapd {
        /// DeviceID.
        device: u32,
        /// V, DW2\[63\].
        valid: bool,
        /// EventID bits of the ITT: Size DW1\[4:0\] plus one.
        event_bits: u8,
        /// ITT_addr, DW2\[51:8\] (256-byte aligned).
        itt: Ipa,
    },
    /// MAPC (0x09): maps a collection to a redistributor, or unmaps it.
    Mapc {
        /// ICID, DW2\[15:0\].
        icid: u16,
        /// RDbase, DW2\[51:16\].
        target: u64,
        /// V, DW2\[63\].
        valid: bool,
    },
    /// MAPTI (0x0A) and MAPI (0x0B, where the INTID is the EventID): maps
    /// an event to an LPI in a collection.
    Mapti {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
        /// pINTID, DW1\[63:32\] (MAPI: the EventID).
        intid: u32,
        /// ICID, DW2\[15:0\].
        icid: u16,
    },
    /// INV (0x0C): re-reads an event's LPI configuration.
    Inv {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// INVALL (0x0D): re-reads the configuration of every LPI of a
    /// collection.
    Invall {
        /// ICID, DW2\[15:0\].
        icid: u16,
    },
    /// MOVALL (0x0E): moves every pending LPI of one redistributor to
    /// another.
    Movall {
        /// RDbase1, DW2\[51:16\].
        from: u64,
        /// RDbase2, DW3\[51:16\].
        to: u64,
    },
    /// DISCARD (0x0F): unmaps an event and drops its pending state.
    Discard {
        /// DeviceID.
        device: u32,
        /// EventID.
        event: u32,
    },
    /// Any other number: the GICv4 virtual commands (GITS_TYPER.Virtual =
    /// 0 here) and reserved numbers.
    Unsupported(u8),
}

type Dw<R> = LocalRegisterCopy<u64, R>;

impl Command {
    /// Decodes one command, with the field layout of the physical ITS's
    /// commands ([`crate::gicv3::its::cmd`]). Every bit pattern decodes
    /// (RES0 fields are ignored): what a command then refers to is checked
    /// when it runs.
    pub fn decode(raw: [u64; 4]) -> Self {
        let dw0 = Dw::<DW0::Register>::new(raw[0]);
        let dw1 = Dw::<DW1::Register>::new(raw[1]);
        let dw2 = Dw::<DW2::Register>::new(raw[2]);
        let dw3 = Dw::<DW3::Register>::new(raw[3]);
        // The casts keep exactly the fields' widths.
        let device = dw0.read(DW0::DEVICE_ID) as u32;
        let event = dw1.read(DW1::EVENT_ID) as u32;
        let icid = dw2.read(DW2::ICID) as u16;
        let target = dw2.read(DW2::RDBASE);
        let valid = dw2.is_set(DW2::VALID);
        match dw0.read(DW0::OPCODE) as u8 {
            opcode::MOVI => Self::Movi {
                device,
                event,
                icid,
            },
            opcode::INT => Self::Int { device, event },
            opcode::CLEAR => Self::Clear { device, event },
            opcode::SYNC => Self::Sync { target },
            opcode::MAPD => Self::Mapd {
                device,
                valid,
                event_bits: dw1.read(DW1::SIZE) as u8 + 1,
                itt: Ipa(dw2.read(DW2::ITT_ADDR) << 8),
            },
            opcode::MAPC => Self::Mapc {
                icid,
                target,
                valid,
            },
            opcode::MAPTI => Self::Mapti {
                device,
                event,
                intid: dw1.read(DW1::PINTID) as u32,
                icid,
            },
            opcode::MAPI => Self::Mapti {
                device,
                event,
                intid: event,
                icid,
            },
            opcode::INV => Self::Inv { device, event },
            opcode::INVALL => Self::Invall { icid },
            opcode::MOVALL => Self::Movall {
                from: target,
                to: dw3.read(DW3::RDBASE2),
            },
            opcode::DISCARD => Self::Discard { device, event },
            n => Self::Unsupported(n),
        }
    }

    /// The command as the guest writes it (the inverse of
    /// [`Command::decode`], for tests and fuzzing). MAPTI with an INTID
    /// equal to the EventID is encoded as MAPTI, not MAPI. Values wider
    /// than their fields are cut to them (`Field::val` masks).
    pub fn encode(&self) -> [u64; 4] {
        let mut dw0 = Dw::<DW0::Register>::new(0);
        let mut dw1 = Dw::<DW1::Register>::new(0);
        let mut dw2 = Dw::<DW2::Register>::new(0);
        let mut dw3 = Dw::<DW3::Register>::new(0);
        let number = match *self {
            Self::Movi { .. } => opcode::MOVI,
            Self::Int { .. } => opcode::INT,
            Self::Clear { .. } => opcode::CLEAR,
            Self::Sync { .. } => opcode::SYNC,
            Self::Mapd { .. } => opcode::MAPD,
            Self::Mapc { .. } => opcode::MAPC,
            Self::Mapti { .. } => opcode::MAPTI,
            Self::Inv { .. } => opcode::INV,
            Self::Invall { .. } => opcode::INVALL,
            Self::Movall { .. } => opcode::MOVALL,
            Self::Discard { .. } => opcode::DISCARD,
            Self::Unsupported(n) => n,
        };
        dw0.modify(DW0::OPCODE.val(u64::from(number)));
        let mut device_event = |device: u32, event: u32| {
            dw0.modify(DW0::DEVICE_ID.val(u64::from(device)));
            dw1.modify(DW1::EVENT_ID.val(u64::from(event)));
        };
        match *self {
            Self::Movi {
                device,
                event,
                icid,
            } => {
                device_event(device, event);
                dw2.modify(DW2::ICID.val(u64::from(icid)));
            }
            Self::Int { device, event }
            | Self::Clear { device, event }
            | Self::Inv { device, event }
            | Self::Discard { device, event } => device_event(device, event),
            Self::Sync { target } => dw2.modify(DW2::RDBASE.val(target)),
            Self::Mapd {
                device,
                valid,
                event_bits,
                itt,
            } => {
                dw0.modify(DW0::DEVICE_ID.val(u64::from(device)));
                dw1.modify(DW1::SIZE.val(u64::from(event_bits.saturating_sub(1))));
                dw2.modify(DW2::ITT_ADDR.val(itt.raw() >> 8) + DW2::VALID.val(u64::from(valid)));
            }
            Self::Mapc {
                icid,
                target,
                valid,
            } => dw2.modify(
                DW2::ICID.val(u64::from(icid))
                    + DW2::RDBASE.val(target)
                    + DW2::VALID.val(u64::from(valid)),
            ),
            Self::Mapti {
                device,
                event,
                intid,
                icid,
            } => {
                device_event(device, event);
                dw1.modify(DW1::PINTID.val(u64::from(intid)));
                dw2.modify(DW2::ICID.val(u64::from(icid)));
            }
            Self::Invall { icid } => dw2.modify(DW2::ICID.val(u64::from(icid))),
            Self::Movall { from, to } => {
                dw2.modify(DW2::RDBASE.val(from));
                dw3.modify(DW3::RDBASE2.val(to));
            }
            Self::Unsupported(_) => {}
        }
        [dw0.get(), dw1.get(), dw2.get(), dw3.get()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_where_the_specification_puts_them() {
        // MAPTI DeviceID 0x10, EventID 3, pINTID 8195, ICID 1.
        let raw = [0x0000_0010_0000_000a, 0x0000_2003_0000_0003, 1, 0];
        assert_eq!(
            Command::decode(raw),
            Command::Mapti {
                device: 0x10,
                event: 3,
                intid: 8195,
                icid: 1
            }
        );
        // MAPD DeviceID 8, 5 EventID bits (Size 4), ITT 0x4123_4500, V = 1.
        let raw = [0x0000_0008_0000_0008, 4, (1 << 63) | 0x4123_4500, 0];
        assert_eq!(
            Command::decode(raw),
            Command::Mapd {
                device: 8,
                valid: true,
                event_bits: 5,
                itt: Ipa(0x4123_4500)
            }
        );
        // MAPC ICID 2 to processor 1 (RDbase 1 << 16 with PTA = 0).
        let raw = [0x09, 0, (1 << 63) | (1 << 16) | 2, 0];
        assert_eq!(
            Command::decode(raw),
            Command::Mapc {
                icid: 2,
                target: 1,
                valid: true
            }
        );
        // MAPI: the INTID is the EventID.
        let raw = [0x0000_0001_0000_000b, 9000, 0, 0];
        assert!(matches!(
            Command::decode(raw),
            Command::Mapti { intid: 9000, .. }
        ));
        assert_eq!(
            Command::decode([0x0e, 0, 2 << 16, 3 << 16]),
            Command::Movall { from: 2, to: 3 }
        );
        // VMAPTI (0x2a) is a virtual command: not supported.
        assert_eq!(Command::decode([0x2a, 0, 0, 0]), Command::Unsupported(0x2a));
    }

    #[test]
    fn encode_is_the_inverse_of_decode() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..20_000 {
            let mut dw = [0u64; 4];
            for d in &mut dw {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *d = x;
            }
            let c = Command::decode(dw);
            assert_eq!(Command::decode(c.encode()), c, "{dw:x?}");
        }
    }
}
