//! ITS commands as the guest writes them to its command queue: 32 bytes,
//! four little-endian doublewords, command number in DW0\[7:0\]
//! (IHI 0069 §6.3 "ITS commands").

use smmu::addr::Ipa;

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

const fn bits(dw: u64, hi: u32, lo: u32) -> u64 {
    (dw >> lo) & ((1 << (hi - lo + 1)) - 1)
}

impl Command {
    /// Decodes one command. Every bit pattern decodes (RES0 fields are
    /// ignored): what a command then refers to is checked when it runs.
    pub fn decode(dw: [u64; 4]) -> Self {
        let device = (dw[0] >> 32) as u32;
        let event = dw[1] as u32;
        let icid = dw[2] as u16;
        let target = bits(dw[2], 51, 16);
        match dw[0] as u8 {
            0x01 => Self::Movi {
                device,
                event,
                icid,
            },
            0x03 => Self::Int { device, event },
            0x04 => Self::Clear { device, event },
            0x05 => Self::Sync { target },
            0x08 => Self::Mapd {
                device,
                valid: dw[2] >> 63 != 0,
                event_bits: bits(dw[1], 4, 0) as u8 + 1,
                itt: Ipa(bits(dw[2], 51, 8) << 8),
            },
            0x09 => Self::Mapc {
                icid,
                target,
                valid: dw[2] >> 63 != 0,
            },
            0x0a => Self::Mapti {
                device,
                event,
                intid: (dw[1] >> 32) as u32,
                icid,
            },
            0x0b => Self::Mapti {
                device,
                event,
                intid: event,
                icid,
            },
            0x0c => Self::Inv { device, event },
            0x0d => Self::Invall { icid },
            0x0e => Self::Movall {
                from: target,
                to: bits(dw[3], 51, 16),
            },
            0x0f => Self::Discard { device, event },
            n => Self::Unsupported(n),
        }
    }

    /// The command as the guest writes it (the inverse of
    /// [`Command::decode`], for tests and fuzzing). MAPTI with an INTID
    /// equal to the EventID is encoded as MAPTI, not MAPI.
    pub fn encode(&self) -> [u64; 4] {
        let dev = |n: u64, device: u32| n | (u64::from(device) << 32);
        let target = |t: u64| (t & ((1 << 36) - 1)) << 16;
        match *self {
            Self::Movi {
                device,
                event,
                icid,
            } => [dev(0x01, device), u64::from(event), u64::from(icid), 0],
            Self::Int { device, event } => [dev(0x03, device), u64::from(event), 0, 0],
            Self::Clear { device, event } => [dev(0x04, device), u64::from(event), 0, 0],
            Self::Sync { target: t } => [0x05, 0, target(t), 0],
            Self::Mapd {
                device,
                valid,
                event_bits,
                itt,
            } => [
                dev(0x08, device),
                u64::from(event_bits.saturating_sub(1) & 0x1f),
                (u64::from(valid) << 63) | (itt.raw() & (((1 << 44) - 1) << 8)),
                0,
            ],
            Self::Mapc {
                icid,
                target: t,
                valid,
            } => [
                0x09,
                0,
                (u64::from(valid) << 63) | target(t) | u64::from(icid),
                0,
            ],
            Self::Mapti {
                device,
                event,
                intid,
                icid,
            } => [
                dev(0x0a, device),
                u64::from(event) | (u64::from(intid) << 32),
                u64::from(icid),
                0,
            ],
            Self::Inv { device, event } => [dev(0x0c, device), u64::from(event), 0, 0],
            Self::Invall { icid } => [0x0d, 0, u64::from(icid), 0],
            Self::Movall { from, to } => [0x0e, 0, target(from), target(to)],
            Self::Discard { device, event } => [dev(0x0f, device), u64::from(event), 0, 0],
            Self::Unsupported(n) => [u64::from(n), 0, 0, 0],
        }
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
