//! What happens to one vSMMU, decoded from the fuzzer's bytes: the guest's
//! register accesses and memory writes, its devices' transactions and
//! other physical events, and failures of the physical SMMU.
//!
//! An input is a [`Setup`] (what the vSMMU advertises, the physical stall
//! model) followed by [`Op`]s until the bytes run out. Each field has a biased encoding: a
//! selector byte usually picks a meaningful value (a real register, a
//! StreamID of the VM, a well-formed command or STE) and otherwise reads a
//! raw value, so the fuzzer reaches deep states quickly and still tries
//! everything. [`Op::encode`] writes the raw form, which decodes back to
//! the same operation; the committed seeds are built with it.

use std::vec::Vec;

use smmu::addr::Ipa;
use smmu::ste::{Config, S1Dss, S1Fmt, StallModel, Ste, STE_WORDS};
use smmu::vsmmu::VsmmuPolicy;

use crate::bytes::{decode_input, encode_input, Reader, Writer};
use crate::oracle::REGISTERS;
use crate::vm::{CDS, CMDQ, DEVICES, EVTQ, L2, STRTAB};

/// What the vSMMU advertises, and the physical SMMU under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// The vSMMU's ID registers.
    pub policy: VsmmuPolicy,
    /// The physical SMMU's stall model (decides S1STALLD of nested STEs).
    pub phys_stall: StallModel,
}

const OAS: [u8; 7] = [40, 32, 36, 42, 44, 48, 52];

impl Setup {
    /// Reads the 6-byte header.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        let f = r.u8();
        let g = r.u8();
        let bit = |b: u8, n: u8| b & (1 << n) != 0;
        let policy = VsmmuPolicy {
            ril: bit(f, 0),
            asid16: !bit(f, 1),
            cd2l: !bit(f, 2),
            gran16k: bit(f, 3),
            gran64k: !bit(f, 4),
            gran4k: !bit(g, 0),
            cohacc: !bit(g, 1),
            httu: 0,
            // The oracle models wired interrupts and a CMD_SYNC completed
            // through CMDQ_CONS; the vSMMU's MSIs (writes to guest memory)
            // are checked by the smmu crate's tests.
            msi: false,
            ssid_bits: r.u8() % 21,
            oas_bits: OAS[usize::from(g >> 2) % OAS.len()],
            cmdqs: match r.u8() {
                0 => VsmmuPolicy::DEFAULT_QS,
                n => n % 32,
            },
            evtqs: match r.u8() {
                0 => VsmmuPolicy::DEFAULT_QS,
                n => n % 32,
            },
            sid_bits: match r.u8() {
                0 => 16,
                n => n % 40,
            },
        };
        Self {
            policy,
            phys_stall: match (f >> 6) & 3 {
                1 => StallModel::StallAndTerminate,
                2 => StallModel::StallForced,
                _ => StallModel::TerminateOnly,
            },
        }
    }

    /// Writes the header [`Setup::decode`] reads back. The policy must be
    /// one the header can express (HTTU 0, OAS architected, sizes < 32).
    pub fn encode(&self, w: &mut Writer) {
        let p = &self.policy;
        let stall = match self.phys_stall {
            StallModel::TerminateOnly => 0,
            StallModel::StallAndTerminate => 1,
            StallModel::StallForced => 2,
        };
        w.u8(u8::from(p.ril)
            | u8::from(!p.asid16) << 1
            | u8::from(!p.cd2l) << 2
            | u8::from(p.gran16k) << 3
            | u8::from(!p.gran64k) << 4
            | stall << 6);
        let oas = OAS.iter().position(|&b| b == p.oas_bits).expect("OAS") as u8;
        w.u8(u8::from(!p.gran4k) | u8::from(!p.cohacc) << 1 | oas << 2);
        w.u8(p.ssid_bits);
        w.u8(p.cmdqs);
        w.u8(p.evtqs);
        w.u8(p.sid_bits);
    }
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The guest reads `size` bytes at `offset` of the register frame.
    Read {
        /// Byte offset in the 128 KiB frame (or anywhere).
        offset: usize,
        /// Access size in bytes (any).
        size: usize,
    },
    /// The guest writes `value` (`size` bytes) at `offset`.
    Write {
        /// Byte offset.
        offset: usize,
        /// Access size in bytes (any).
        size: usize,
        /// The value.
        value: u64,
    },
    /// The guest writes a 16-byte entry at CMDQ_PROD of its queue and
    /// moves CMDQ_PROD on by one (as its driver does).
    PushCommand([u64; 2]),
    /// The guest polls CMDQ_CONS (a 4-byte read), as its driver does while
    /// it waits for a CMD_SYNC.
    Poll,
    /// The physical SMMU fails the next `n` operations it is asked for
    /// (a timeout, a rejected command).
    PhysicalFailures(u8),
    /// The guest CPU writes `bytes` at `ipa` (queues, tables, STEs, CDs).
    Poke {
        /// Where.
        ipa: u64,
        /// What.
        bytes: Vec<u8>,
    },
    /// The guest writes the STE of `vsid` where its stream table says (a
    /// level 1 descriptor to a level 2 array first, if there is none).
    WriteSte {
        /// The virtual StreamID.
        vsid: u32,
        /// The 64 bytes.
        ste: Ste,
    },
    /// The physical SMMU records event `words` with StreamID `sid` (bits
    /// [63:32] of `words` are replaced): offered to the vSMMU as the
    /// hypervisor offers every event.
    Event {
        /// Any StreamID: mostly one of the VM's physical ones.
        sid: u32,
        /// The record.
        words: [u64; 4],
    },
    /// Device `vsid` of the VM reads `addr` with SubstreamID `ssid`; the
    /// physical SMMU records what its STE makes of it (C_BAD_STE when
    /// refused, a stage 1 fault when nested, ...), which is offered to the
    /// vSMMU.
    Transaction {
        /// A virtual StreamID of one of the VM's devices.
        vsid: u32,
        /// The SubstreamID, if any.
        ssid: Option<u32>,
        /// The address.
        addr: u64,
    },
}

/// Opcodes the structured command form draws from: every architected one,
/// plus two reserved ones.
const OPCODES: [u8; 24] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x23, 0x28, 0x2A,
    0x30, 0x40, 0x41, 0x44, 0x45, 0x46, 0x07, 0xFF,
];

/// StreamIDs the selector picks from: the VM's virtual ones, their
/// physical ones, StreamIDs with no device, table and range edges.
const SIDS: [u32; 12] = [
    0x0,
    0x8,
    0x310,
    0x9,
    0x10,
    0x108,
    0x2010,
    0x300,
    0xFF,
    0xFFFF,
    0x1_0000,
    u32::MAX,
];

/// Guest memory regions for [`Op::Poke`]; the last selector is absolute.
const REGIONS: [u64; 5] = [CMDQ, EVTQ, STRTAB, L2, CDS];

impl Op {
    /// Reads the next operation.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        match r.u8() % 9 {
            0 => Op::Read {
                offset: offset(r),
                size: size(r),
            },
            1 => Op::Write {
                offset: offset(r),
                size: size(r),
                value: r.u64(),
            },
            2 => Op::PushCommand(command(r)),
            3 => Op::Poll,
            4 => Op::PhysicalFailures(r.u8() % 4),
            5 => {
                let (ipa, bytes) = poke(r, &REGIONS);
                Op::Poke { ipa, bytes }
            }
            6 => Op::WriteSte {
                vsid: sid(r),
                ste: ste(r),
            },
            7 => Op::Event {
                sid: sid(r),
                words: [r.u64(), r.u64(), r.u64(), r.u64()],
            },
            _ => Op::Transaction {
                vsid: DEVICES[usize::from(r.u8()) % DEVICES.len()].0,
                ssid: match r.u8() {
                    n if n < 0x80 => None,
                    n => Some(u32::from(n & 0x7F)),
                },
                addr: u64::from(r.u16()) << 12,
            },
        }
    }

    /// Writes the raw form of this operation.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Op::Read { offset, size } => {
                w.u8(0);
                encode_offset(w, *offset);
                encode_size(w, *size);
            }
            Op::Write {
                offset,
                size,
                value,
            } => {
                w.u8(1);
                encode_offset(w, *offset);
                encode_size(w, *size);
                w.u64(*value);
            }
            Op::PushCommand(words) => {
                w.u8(2);
                w.u8(0);
                w.u64(words[0]);
                w.u64(words[1]);
            }
            Op::Poll => w.u8(3),
            Op::PhysicalFailures(n) => {
                w.u8(4);
                assert!(*n < 4, "at most 3 failures in a row");
                w.u8(*n);
            }
            Op::Poke { ipa, bytes } => {
                w.u8(5);
                encode_poke(w, *ipa, bytes);
            }
            Op::WriteSte { vsid, ste } => {
                w.u8(6);
                encode_sid(w, *vsid);
                w.u8(0);
                for word in ste.0 {
                    w.u64(word);
                }
            }
            Op::Event { sid, words } => {
                w.u8(7);
                encode_sid(w, *sid);
                for word in words {
                    w.u64(*word);
                }
            }
            Op::Transaction { vsid, ssid, addr } => {
                w.u8(8);
                let dev = DEVICES.iter().position(|&(v, _)| v == *vsid);
                w.u8(dev.expect("a transaction is by one of the VM's devices") as u8);
                w.u8(match ssid {
                    None => 0,
                    Some(s) => {
                        0x80 | u8::try_from(*s)
                            .ok()
                            .filter(|s| *s < 0x80)
                            .expect("SSID < 128")
                    }
                });
                assert!(addr & 0xFFF == 0 && addr >> 28 == 0, "address {addr:#x}");
                w.u16((addr >> 12) as u16);
            }
        }
    }
}

/// Where and what a guest CPU writes in its memory: mostly at an offset
/// into one of `regions` (at most 7), otherwise anywhere; up to 64 bytes.
pub(crate) fn poke(r: &mut Reader<'_>, regions: &[u64]) -> (u64, Vec<u8>) {
    let ipa = match regions.get(usize::from(r.u8()) % 8) {
        Some(&base) => base + u64::from(r.u16()),
        None => r.u64(),
    };
    (ipa, r.bytes(64))
}

/// The raw form [`poke`] reads back.
pub(crate) fn encode_poke(w: &mut Writer, ipa: u64, bytes: &[u8]) {
    w.u8(7);
    w.u64(ipa);
    w.bytes(bytes);
}

/// A register offset: mostly a real register, sometimes any word offset of
/// either page, sometimes anything at all.
fn offset(r: &mut Reader<'_>) -> usize {
    match r.u8() {
        n if usize::from(n) < REGISTERS.len() => REGISTERS[usize::from(n)].0,
        0xFF => r.u64() as usize,
        0xFE => r.u32() as usize,
        n => usize::from(n & 0x7F) * 4 + usize::from(n >> 7) * smmu::regs::offset::PAGE1,
    }
}

fn encode_offset(w: &mut Writer, offset: usize) {
    match REGISTERS.iter().position(|&(o, _, _)| o == offset) {
        Some(i) => w.u8(i as u8),
        None => {
            w.u8(0xFF);
            w.u64(offset as u64);
        }
    }
}

/// An access size: mostly 4 or 8, sometimes 0..=15.
pub(crate) fn size(r: &mut Reader<'_>) -> usize {
    match r.u8() {
        0..=119 => 4,
        120..=239 => 8,
        n => usize::from(n - 240),
    }
}

pub(crate) fn encode_size(w: &mut Writer, size: usize) {
    w.u8(match size {
        4 => 0,
        8 => 120,
        0..=15 => 240 + size as u8,
        _ => panic!("access size {size} cannot be encoded"),
    });
}

/// A StreamID: mostly from [`SIDS`], sometimes any.
fn sid(r: &mut Reader<'_>) -> u32 {
    match r.u8() {
        n if n < 0xF0 => SIDS[usize::from(n) % SIDS.len()],
        _ => r.u32(),
    }
}

fn encode_sid(w: &mut Writer, sid: u32) {
    match SIDS.iter().position(|&s| s == sid) {
        Some(i) => w.u8(i as u8),
        None => {
            w.u8(0xFF);
            w.u32(sid);
        }
    }
}

/// A command-queue entry: raw 128 bits, or an architected opcode with a
/// StreamID (or VMID/ASID) from the selector and the other bits thinned
/// out, so that reserved-bit checks pass often enough.
pub(crate) fn command(r: &mut Reader<'_>) -> [u64; 2] {
    let form = r.u8();
    if form.is_multiple_of(4) {
        return [r.u64(), r.u64()];
    }
    let op = OPCODES[usize::from(r.u8()) % OPCODES.len()];
    let high = match op {
        // TLBI: VMID [47:32], ASID [63:48].
        0x10..=0x2A | 0x30 => u64::from(r.u32()),
        _ => u64::from(sid(r)),
    };
    let low = u64::from(r.u32() & r.u32()) & !0xFF;
    let mut w1 = r.u64() & r.u64();
    if form % 4 == 2 {
        w1 &= r.u64();
    }
    [(high << 32) | low | u64::from(op), w1]
}

/// An STE: raw 512 bits, or one built field by field (mostly a valid
/// stage 1 STE pointing into the CD region) with hostile bits XORed into
/// the words that are the hypervisor's.
pub(crate) fn ste(r: &mut Reader<'_>) -> Ste {
    let form = r.u8();
    if form.is_multiple_of(4) {
        let mut ste = Ste::invalid();
        for w in ste.0.iter_mut() {
            *w = r.u64();
        }
        return ste;
    }
    let mut ste = Ste::invalid();
    ste.set_v(form & 0x10 == 0);
    let config = r.u8();
    ste.set_config(if config & 0x8 == 0 {
        Config::S1Translate
    } else {
        Config::from_bits(config)
    });
    ste.set_s1_context_ptr(Ipa(if form & 0x20 == 0 {
        CDS + u64::from(r.u16() & !63)
    } else {
        r.u64()
    }));
    let fields = r.u32();
    ste.set_s1fmt(S1Fmt::from_bits(fields as u8 & 3));
    ste.set_s1cdmax((fields >> 2) as u8 % 32);
    ste.set_s1dss(S1Dss::from_bits((fields >> 8) as u8 & 3));
    ste.set_s1cir((fields >> 10) as u8 & 3);
    ste.set_s1cor((fields >> 12) as u8 & 3);
    ste.set_s1csh((fields >> 14) as u8 & 3);
    ste.set_s1stalld(form & 0x40 != 0);
    // Word 1 holds the guest's stage 1 attributes next to the overrides
    // that are the hypervisor's; words 2.. are all the hypervisor's.
    ste.0[1] ^= r.u64() & r.u64();
    let word = 2 + usize::from(r.u8()) % (STE_WORDS - 2);
    ste.0[word] ^= r.u64();
    ste
}

/// The ops of an input, at most `max` of them.
pub fn decode_all(data: &[u8], max: usize) -> (Setup, Vec<Op>) {
    decode_input(data, max, Setup::decode, |r, _| Op::decode(r))
}

/// The input that decodes to `setup` and `ops`.
pub fn encode_all(setup: &Setup, ops: &[Op]) -> Vec<u8> {
    encode_input(setup, ops, Setup::encode, Op::encode)
}
