//! The `vits` target: a VM's virtual GICv3 ITS (`hyp::vits::VIts`, IHI
//! 0069) and the LPIs it maps in the VM's vGIC, driven by the guest and by
//! the devices the hypervisor gave the VM, over a recording physical side
//! (`hyp::vits::fake::RecordingPhysicalIts`) and fake guest RAM.
//!
//! An input is a [`Setup`] (1 to 4 vCPUs, how far the guest's Linux-like
//! initialisation of its vGIC and ITS goes and with which values, the
//! devices granted to the VM) followed by up to [`MAX_OPS`] [`Op`]s: ITS
//! register reads and writes at any offset and size (mostly GITS_CTLR,
//! GITS_CBASER, GITS_CWRITER, GITS_CREADR and GITS_BASER0), commands
//! written into the queue with GITS_CWRITER moved past them (well-formed
//! ones about the VM's devices, or any 32 bytes), the LPI configuration
//! table and any guest memory, redistributor writes, MSIs of granted and
//! other physical devices, the physical side refusing new routes, and
//! resets. As in [`ops`](crate::ops), a selector byte usually picks a
//! meaningful value and otherwise reads a raw one; [`Op::encode`] writes
//! the raw form, which decodes back to the same operation.
//!
//! After every operation: the rules of `hyp::vits::fake::check_in_step`
//! (the physical side routes exactly the VM's held translations, only its
//! granted devices and events, the vGIC holds exactly the mapped LPIs) and,
//! per access, of `check_access` (bounded commands, errors and physical
//! work). This target adds, from the specification: the commands and
//! errors an access reports are the ones it counts; kicks name only the
//! VM's vCPUs; registers read within their architected bits (GITS_CTLR,
//! GITS_TYPER, GITS_CBASER, GITS_CREADR and GITS_CWRITER within the queue,
//! GITS_BASER0 a flat device table, GITS_BASER1-7 zero); an MSI changes at
//! most its own event's LPI, only if the physical side routes the event,
//! and that LPI is then pending; a reset forgets every translation.

use std::fmt;
use std::format;
use std::string::String;
use std::vec::Vec;

use hyp::vgic::VGic;
use hyp::vits::cmd::{Command, CMD_SIZE};
use hyp::vits::fake::{check_access, check_in_step, RecordingPhysicalIts};
use hyp::vits::{
    CommandError, DeviceGrant, ItsConfig, ItsEnv, ItsOutcome, PhysicalIts, VIts, FRAME_SIZE,
    TRANSLATER,
};
use smmu::addr::Ipa;
use smmu::fake::FakeGuestMemory;
use smmu::vsmmu::GuestMemory;

use crate::bytes::{decode_input, describe_input, encode_input, Reader, Writer};
use crate::ops::{encode_poke, encode_size, poke, size};

/// Operations run from one input at most.
pub const MAX_OPS: usize = 256;

/// The VM's RAM.
pub const RAM: u64 = 0x4000_0000;
/// Its size.
pub const RAM_SIZE: u64 = 512 << 10;
/// The LPI configuration table the guest points GICR_PROPBASER at.
pub const PROP: u64 = RAM + 0x1_0000;
/// The ITS command queue.
pub const QUEUE: u64 = RAM + 0x2_0000;
/// The ITS device table.
pub const DEVICE_TABLE: u64 = RAM + 0x3_0000;
/// The ITTs (16 of 4 KiB).
pub const ITT: u64 = RAM + 0x4_0000;

/// ITS register offsets (IHI 0069 §8.19).
pub mod reg {
    /// GITS_CTLR (and GITS_IIDR above it).
    pub const CTLR: u64 = 0x0000;
    /// GITS_TYPER.
    pub const TYPER: u64 = 0x0008;
    /// GITS_CBASER.
    pub const CBASER: u64 = 0x0080;
    /// GITS_CWRITER.
    pub const CWRITER: u64 = 0x0088;
    /// GITS_CREADR.
    pub const CREADR: u64 = 0x0090;
    /// GITS_BASER0 (GITS_BASER<n> at + 8n).
    pub const BASER: u64 = 0x0100;
    /// GITS_PIDR2.
    pub const PIDR2: u64 = 0xffe8;
}

/// Redistributor offsets (§8.11): GICR_CTLR, GICR_WAKER, GICR_PROPBASER,
/// GICR_PENDBASER.
const GICR_CTLR: u64 = 0x0000;
const GICR_WAKER: u64 = 0x0014;
const GICR_PROPBASER: u64 = 0x0070;
const GICR_PENDBASER: u64 = 0x0078;

/// GITS_CBASER/GITS_BASER<n>.Valid.
const VALID: u64 = 1 << 63;

/// Linux's initialisation steps a [`Setup`] skips.
pub mod skip {
    /// GICD_CTLR.EnableGrp1 stays 0.
    pub const GROUP1: u8 = 1 << 0;
    /// The redistributors stay asleep.
    pub const WAKE: u8 = 1 << 1;
    /// GICR_CTLR.EnableLPIs stays 0.
    pub const ENABLE_LPIS: u8 = 1 << 2;
    /// GITS_CBASER stays 0.
    pub const CBASER: u8 = 1 << 3;
    /// GITS_BASER0 stays invalid.
    pub const BASER: u8 = 1 << 4;
    /// GITS_CTLR.Enabled stays 0.
    pub const ENABLE: u8 = 1 << 5;
    /// GICR_PROPBASER is written after EnableLPIs (so it is ignored).
    pub const PROPBASER_FIRST: u8 = 1 << 6;
    /// The vGIC has no LPIs at all (GICD_TYPER.LPIS = 0).
    pub const LPIS: u8 = 1 << 7;
}

/// The VM and how far its guest set up the vGIC and ITS before the
/// operations start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// vCPUs, 1 to 4.
    pub vcpus: usize,
    /// The physical side delivers the MSIs directly (GICv4): it hears the
    /// LPIs' configuration, INT and CLEAR, and the vGIC never holds their
    /// pending state (bit 7 of the vCPUs byte).
    pub direct: bool,
    /// The steps of Linux's initialisation the guest skips ([`skip`]).
    pub skip: u8,
    /// What the guest writes to each GICR_PROPBASER.
    pub propbaser: u64,
    /// GITS_CBASER.Size: pages of the command queue at [`QUEUE`], minus
    /// one.
    pub queue_pages: u8,
    /// GITS_BASER0 Page_Size \[9:8\] and Size \[7:0\] of the device table
    /// at [`DEVICE_TABLE`].
    pub baser: u16,
    /// The grants by virtual DeviceID (a repeated virtual or physical
    /// DeviceID is dropped: the hypervisor gives one function one ID).
    pub devices: Vec<(u32, DeviceGrant)>,
}

impl Setup {
    /// Reads the header.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        let first = r.u8();
        let (vcpus, direct) = (1 + usize::from(first % 4), first & 0x80 != 0);
        let skip = r.u8();
        let propbaser = match r.u8() {
            0xff => r.u64(),
            0 => PROP | 15,
            n => PROP | u64::from(n % 32),
        };
        let queue_pages = r.u8();
        let baser = r.u16() & 0x3ff;
        let devices = (0..r.u8() % 5)
            .map(|_| {
                let virt = small_or_u32(r);
                let grant = DeviceGrant {
                    physical: r.u32(),
                    events: u32::from(r.u16()),
                };
                (virt, grant)
            })
            .collect();
        Self {
            vcpus,
            direct,
            skip,
            propbaser,
            queue_pages,
            baser,
            devices,
        }
    }

    /// Writes the header [`Setup::decode`] reads back (1 to 4 vCPUs, at
    /// most 4 devices, events below 2^16, `baser` within 10 bits).
    pub fn encode(&self, w: &mut Writer) {
        assert!((1..=4).contains(&self.vcpus) && self.devices.len() <= 4);
        assert!(self.baser <= 0x3ff);
        w.u8((self.vcpus as u8 - 1) | if self.direct { 0x80 } else { 0 });
        w.u8(self.skip);
        w.u8(0xff);
        w.u64(self.propbaser);
        w.u8(self.queue_pages);
        w.u16(self.baser);
        w.u8(self.devices.len() as u8);
        for (virt, grant) in &self.devices {
            encode_small_or_u32(w, *virt);
            w.u32(grant.physical);
            w.u16(u16::try_from(grant.events).expect("events below 2^16"));
        }
    }

    /// The grants, without repeated virtual or physical DeviceIDs.
    pub fn config(&self) -> ItsConfig {
        let mut config = ItsConfig::default();
        for &(virt, grant) in &self.devices {
            let taken = config.devices.contains_key(&virt)
                || config
                    .devices
                    .values()
                    .any(|g| g.physical == grant.physical);
            if !taken {
                config.devices.insert(virt, grant);
            }
        }
        config
    }
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The guest writes the low `size` bytes of `value` at `offset` of the
    /// ITS frames.
    Write {
        /// Byte offset (anywhere).
        offset: u64,
        /// Access size (any).
        size: u8,
        /// The value.
        value: u64,
    },
    /// The guest reads `size` bytes at `offset`.
    Read {
        /// Byte offset (anywhere).
        offset: u64,
        /// Access size (any).
        size: u8,
    },
    /// The guest writes these commands at GITS_CWRITER in its queue and
    /// moves GITS_CWRITER past them (an 8-byte write), as Linux does.
    Submit(Vec<[u64; 4]>),
    /// The guest polls GITS_CREADR (8 bytes), as Linux waits for its
    /// commands.
    Poll,
    /// The guest writes the configuration byte of LPI `intid` in the table
    /// its [`Setup::propbaser`] names (nothing below INTID 8192).
    LpiConfig {
        /// The LPI.
        intid: u32,
        /// Priority \[7:2\], Enable \[0\].
        config: u8,
    },
    /// The guest CPU writes `bytes` at `ipa` (queue, tables, anywhere).
    Poke {
        /// Where.
        ipa: u64,
        /// What.
        bytes: Vec<u8>,
    },
    /// A write to vCPU `vcpu`'s redistributor (modulo the vCPUs).
    Redist {
        /// The vCPU.
        vcpu: u8,
        /// GICR_CTLR, GICR_WAKER, GICR_PROPBASER or GICR_PENDBASER, or a
        /// half of the last two.
        offset: u64,
        /// 4 or 8.
        size: u8,
        /// The value.
        value: u64,
    },
    /// An MSI of physical device `physical` with EventID `event` reaches
    /// the hypervisor, which delivers it to the vITS.
    Deliver {
        /// Physical DeviceID (granted to the VM or not).
        physical: u32,
        /// EventID.
        event: u32,
    },
    /// The physical side refuses new routes from now on, or accepts them
    /// again.
    RefuseMaps(bool),
    /// The VM stops: the vITS forgets everything.
    Reset,
    /// The guest initialises its ITS again, as Linux does: disabled, then
    /// GITS_CBASER and GITS_BASER0 as in the [`Setup`], then enabled.
    InitIts,
}

/// The registers [`Op::Write`] and [`Op::Read`] are steered at; the first
/// five most often.
const REGISTERS: [u64; 16] = [
    reg::CTLR,
    reg::CBASER,
    reg::CWRITER,
    reg::CREADR,
    reg::BASER,
    reg::CTLR + 4,
    reg::TYPER,
    reg::TYPER + 4,
    reg::CBASER + 4,
    reg::CWRITER + 4,
    reg::CREADR + 4,
    reg::BASER + 4,
    reg::BASER + 8,
    reg::BASER + 0x38,
    TRANSLATER,
    reg::PIDR2,
];

/// Redistributor registers of [`Op::Redist`], with their access size.
const REDIST: [(u64, u8); 6] = [
    (GICR_CTLR, 4),
    (GICR_PROPBASER, 8),
    (GICR_WAKER, 4),
    (GICR_PENDBASER, 8),
    (GICR_PROPBASER, 4),
    (GICR_PROPBASER + 4, 4),
];

/// Guest memory regions of [`Op::Poke`]; the other selectors are absolute.
const REGIONS: [u64; 4] = [PROP, QUEUE, DEVICE_TABLE, ITT];

/// INTIDs beyond the usual LPIs: below, at and above the LPI range, at
/// the edges of the configuration tables' IDbits.
const ODD_INTIDS: [u32; 10] = [
    0,
    1023,
    8191,
    16383,
    16384,
    32767,
    32768,
    65535,
    65536,
    u32::MAX,
];

impl Op {
    /// Reads the next operation; `devices` are the VM's grants (the
    /// structured forms name them most often).
    pub fn decode(r: &mut Reader<'_>, devices: &[(u32, DeviceGrant)]) -> Self {
        match r.u8() % 16 {
            0..=2 => {
                let n = 1 + usize::from(r.u8() % 16);
                Op::Submit((0..n).map(|_| command(r, devices)).collect())
            }
            3 | 4 => {
                let offset = offset(r);
                let size = size(r) as u8;
                let value = match r.u8() % 6 {
                    0 => r.u64(),
                    1 => VALID | QUEUE | u64::from(r.u8()),
                    2 => VALID | DEVICE_TABLE | u64::from(r.u16() & 0x3ff),
                    3 => (u64::from(r.u8()) * CMD_SIZE) | u64::from(r.u8() & 1),
                    4 => u64::from(r.u8()),
                    _ => 1,
                };
                Op::Write {
                    offset,
                    size,
                    value,
                }
            }
            5 | 15 => Op::Read {
                offset: offset(r),
                size: size(r) as u8,
            },
            6 => Op::Poll,
            7 => Op::LpiConfig {
                intid: intid(r),
                config: r.u8(),
            },
            8 => {
                let (ipa, bytes) = poke(r, &REGIONS);
                Op::Poke { ipa, bytes }
            }
            9 | 10 => {
                let physical = match r.u8() {
                    n if n >= 0xf0 => r.u32(),
                    n if n % 4 == 3 || devices.is_empty() => 0x100 + u32::from(n),
                    n => devices[usize::from(n / 4) % devices.len()].1.physical,
                };
                Op::Deliver {
                    physical,
                    event: event(r),
                }
            }
            11 => Op::RefuseMaps(r.u8() & 1 != 0),
            12 => Op::Reset,
            13 => Op::InitIts,
            _ => {
                let vcpu = r.u8() % 4;
                let (offset, size) = REDIST[usize::from(r.u8()) % REDIST.len()];
                let value = match r.u8() % 4 {
                    0 => r.u64(),
                    1 => 0,
                    2 => 1,
                    _ => PROP | 15,
                };
                Op::Redist {
                    vcpu,
                    offset,
                    size,
                    value,
                }
            }
        }
    }

    /// Writes the raw form of this operation.
    pub fn encode(&self, w: &mut Writer) {
        match self {
            Op::Submit(cmds) => {
                w.u8(0);
                assert!((1..=16).contains(&cmds.len()), "1 to 16 commands");
                w.u8(cmds.len() as u8 - 1);
                for c in cmds {
                    w.u8(0);
                    for dw in c {
                        w.u64(*dw);
                    }
                }
            }
            Op::Write {
                offset,
                size,
                value,
            } => {
                w.u8(3);
                encode_offset(w, *offset);
                encode_size(w, usize::from(*size));
                w.u8(0);
                w.u64(*value);
            }
            Op::Read { offset, size } => {
                w.u8(5);
                encode_offset(w, *offset);
                encode_size(w, usize::from(*size));
            }
            Op::Poll => w.u8(6),
            Op::LpiConfig { intid, config } => {
                w.u8(7);
                encode_intid(w, *intid);
                w.u8(*config);
            }
            Op::Poke { ipa, bytes } => {
                w.u8(8);
                encode_poke(w, *ipa, bytes);
            }
            Op::Deliver { physical, event } => {
                w.u8(9);
                w.u8(0xff);
                w.u32(*physical);
                encode_event(w, *event);
            }
            Op::RefuseMaps(on) => {
                w.u8(11);
                w.u8(u8::from(*on));
            }
            Op::Reset => w.u8(12),
            Op::InitIts => w.u8(13),
            Op::Redist {
                vcpu,
                offset,
                size,
                value,
            } => {
                w.u8(14);
                assert!(*vcpu < 4, "vCPU {vcpu}");
                w.u8(*vcpu);
                let i = REDIST.iter().position(|r| *r == (*offset, *size));
                w.u8(i.expect("a redistributor register") as u8);
                w.u8(0);
                w.u64(*value);
            }
        }
    }
}

/// A small number from the selector byte, or any u32.
fn small_or_u32(r: &mut Reader<'_>) -> u32 {
    match r.u8() {
        n if n < 0xf0 => u32::from(n),
        _ => r.u32(),
    }
}

fn encode_small_or_u32(w: &mut Writer, v: u32) {
    match u8::try_from(v) {
        Ok(n) if n < 0xf0 => w.u8(n),
        _ => {
            w.u8(0xff);
            w.u32(v);
        }
    }
}

/// A register offset: mostly one of [`REGISTERS`], sometimes any word in
/// the frames, sometimes anything.
fn offset(r: &mut Reader<'_>) -> u64 {
    match r.u8() {
        n if n < 0x80 => REGISTERS[usize::from(n) % 5],
        n if n < 0xc0 => REGISTERS[usize::from(n) % REGISTERS.len()],
        0xfe => u64::from(r.u32()) % FRAME_SIZE,
        0xff => r.u64(),
        n => u64::from(n & 0x3f) * 4,
    }
}

fn encode_offset(w: &mut Writer, offset: u64) {
    w.u8(0xff);
    w.u64(offset);
}

/// An EventID: mostly below 40, sometimes around 2048 (the most EventID
/// bits allow), sometimes anything.
fn event(r: &mut Reader<'_>) -> u32 {
    match r.u8() {
        n if n < 0xe0 => u32::from(n) % 40,
        0xff => r.u32(),
        n => 2048 - 16 + u32::from(n - 0xe0),
    }
}

fn encode_event(w: &mut Writer, event: u32) {
    w.u8(0xff);
    w.u32(event);
}

/// An INTID: mostly one of the first 64 LPIs, sometimes one of
/// [`ODD_INTIDS`], sometimes anything.
fn intid(r: &mut Reader<'_>) -> u32 {
    match r.u8() {
        n if n < 0xf0 => 8192 + u32::from(n) % 64,
        0xff => r.u32(),
        n => ODD_INTIDS[usize::from(n - 0xf0) % ODD_INTIDS.len()],
    }
}

fn encode_intid(w: &mut Writer, intid: u32) {
    w.u8(0xff);
    w.u32(intid);
}

/// A command: any 32 bytes, or a well-formed one (or MAPI) about the VM's
/// devices mostly, with small EventIDs, LPIs, ICIDs and targets.
fn command(r: &mut Reader<'_>, devices: &[(u32, DeviceGrant)]) -> [u64; 4] {
    let form = r.u8();
    if form.is_multiple_of(4) {
        return [r.u64(), r.u64(), r.u64(), r.u64()];
    }
    let device = match r.u8() {
        n if n >= 0xf0 => r.u32(),
        n if n % 4 == 3 || devices.is_empty() => u32::from(n),
        n => devices[usize::from(n / 4) % devices.len()].0,
    };
    let event = event(r);
    let icid = match r.u8() {
        n if n < 0xf0 => u16::from(n % 6),
        _ => r.u16(),
    };
    let target = match r.u8() {
        n if n < 0xf0 => u64::from(n % 6),
        _ => r.u64(),
    };
    let command = match r.u8() % 13 {
        0 => Command::Mapd {
            device,
            valid: form & 0x10 == 0,
            event_bits: 1 + r.u8() % 14,
            itt: Ipa(match r.u8() {
                n if n < 0xf0 => ITT + u64::from(n % 16) * 0x1000,
                _ => r.u64(),
            }),
        },
        1 => Command::Mapc {
            icid,
            target,
            valid: form & 0x10 == 0,
        },
        2 | 3 => Command::Mapti {
            device,
            event,
            intid: intid(r),
            icid,
        },
        // MAPI: the INTID is the EventID.
        4 => {
            return [
                0x0b | (u64::from(device) << 32),
                u64::from(event),
                u64::from(icid),
                0,
            ]
        }
        5 => Command::Int { device, event },
        6 => Command::Clear { device, event },
        7 => Command::Discard { device, event },
        8 => Command::Movi {
            device,
            event,
            icid,
        },
        9 => Command::Inv { device, event },
        10 => Command::Invall { icid },
        11 => Command::Movall {
            from: target,
            to: u64::from(r.u8() % 6),
        },
        _ => match r.u8() {
            n if n < 0x80 => Command::Sync { target },
            n => Command::Unsupported(n),
        },
    };
    command.encode()
}

/// The setup and operations of an input, at most `max` of them.
pub fn decode_all(data: &[u8], max: usize) -> (Setup, Vec<Op>) {
    decode_input(data, max, Setup::decode, |r, setup| {
        Op::decode(r, &setup.devices)
    })
}

/// The input that decodes to `setup` and `ops`.
pub fn encode_all(setup: &Setup, ops: &[Op]) -> Vec<u8> {
    encode_input(setup, ops, Setup::encode, Op::encode)
}

/// What one input exercised (for the seeds' tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commands run.
    pub commands: usize,
    /// Of those, ignored as erroneous.
    pub errors: usize,
    /// Of those, refused by the physical side.
    pub physical_refusals: usize,
    /// Accesses that stalled the queue.
    pub stalls: usize,
    /// Most translations held at once.
    pub most_translations: usize,
    /// MSIs delivered.
    pub delivered: usize,
    /// MSIs dropped.
    pub dropped: usize,
}

/// Runs one input: the `vits` fuzz target.
pub fn run(data: &[u8]) -> Stats {
    let (setup, ops) = decode_all(data, MAX_OPS);
    let mut world = World::new(setup);
    world.check();
    for (step, op) in ops.iter().enumerate() {
        world.step = Some((step, op.clone()));
        world.apply(op);
        world.check();
    }
    world.stats
}

/// An input decoded, one operation per line: what a crashing input did.
pub fn describe(data: &[u8]) -> String {
    let (setup, ops) = decode_all(data, MAX_OPS);
    describe_input(&setup, &ops)
}

/// One VM with a vITS.
struct World {
    setup: Setup,
    mem: FakeGuestMemory,
    vgic: VGic,
    phys: RecordingPhysicalIts,
    its: VIts,
    stats: Stats,
    /// The operation running, for the panic message.
    step: Option<(usize, Op)>,
}

impl World {
    fn new(setup: Setup) -> Self {
        let config = setup.config();
        let mpidrs: Vec<u64> = (0..setup.vcpus as u64).map(|i| 0x8000_0000 | i).collect();
        let mut vgic = VGic::new(&mpidrs, 64).expect("a vGIC of 1 to 4 vCPUs");
        if setup.direct {
            vgic.set_direct_lpis();
        }
        let skipped = setup.skip;
        let s = move |bit: u8| skipped & bit == 0;
        if s(skip::LPIS) {
            vgic.enable_lpis(hyp::vgic::lpi::LPI_ID_BITS);
        }
        if s(skip::GROUP1) {
            let _ = vgic.dist_write(0, 4, 0x12); // ARE | EnableGrp1
        }
        for vcpu in 0..setup.vcpus {
            if s(skip::WAKE) {
                let _ = vgic.redist_write(vcpu, GICR_WAKER, 4, 0);
            }
            if s(skip::PROPBASER_FIRST) {
                let _ = vgic.redist_write(vcpu, GICR_PROPBASER, 8, setup.propbaser);
            }
            if s(skip::ENABLE_LPIS) {
                let _ = vgic.redist_write(vcpu, GICR_CTLR, 4, 1);
            }
            if !s(skip::PROPBASER_FIRST) {
                let _ = vgic.redist_write(vcpu, GICR_PROPBASER, 8, setup.propbaser);
            }
        }
        let mut w = Self {
            mem: FakeGuestMemory::new(Ipa(RAM), RAM_SIZE as usize),
            vgic,
            phys: if setup.direct {
                RecordingPhysicalIts::direct(config.clone())
            } else {
                RecordingPhysicalIts::new(config.clone())
            },
            its: VIts::new(config, setup.vcpus),
            stats: Stats::default(),
            step: None,
            setup,
        };
        if s(skip::CBASER) {
            w.write(reg::CBASER, 8, w.cbaser());
        }
        if s(skip::BASER) {
            w.write(reg::BASER, 8, w.baser0());
        }
        if s(skip::ENABLE) {
            w.write(reg::CTLR, 4, 1);
        }
        w
    }

    fn cbaser(&self) -> u64 {
        VALID | QUEUE | u64::from(self.setup.queue_pages)
    }

    fn baser0(&self) -> u64 {
        VALID | DEVICE_TABLE | u64::from(self.setup.baser)
    }

    fn fail(&self, what: impl fmt::Display) -> ! {
        match &self.step {
            Some((step, op)) => panic!("vits: step {step} ({op:?}): {what}"),
            None => panic!("vits: setup {:?}: {what}", self.setup),
        }
    }

    fn ensure(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    /// The vITS and what it needs for an access.
    fn its(&mut self) -> (&mut VIts, ItsEnv<'_, RecordingPhysicalIts>) {
        let env = ItsEnv {
            mem: &self.mem,
            vgic: &mut self.vgic,
            phys: &mut self.phys,
        };
        (&mut self.its, env)
    }

    /// A register access through `f`, checked.
    fn access<R>(
        &mut self,
        f: impl FnOnce(&mut VIts, &mut ItsEnv<'_, RecordingPhysicalIts>) -> (R, ItsOutcome),
    ) -> (R, ItsOutcome) {
        let calls = self.phys.calls;
        let before = self.its.stats();
        let (its, mut env) = self.its();
        let (r, out) = f(its, &mut env);
        if let Err(e) = check_access(&out, &self.phys, calls) {
            self.fail(e);
        }
        let after = self.its.stats();
        let errors = out.errors.len() + out.more_errors;
        self.ensure(
            after.commands - before.commands == out.commands as u64
                && after.errors - before.errors == errors as u64,
            || format!("the access reports {out:?}, counts {before:?} -> {after:?}"),
        );
        self.kicks_vcpus(out.effects.kick_bits());
        self.stats.commands += out.commands;
        self.stats.errors += errors;
        self.stats.stalls += usize::from(out.stalled_at.is_some());
        self.stats.physical_refusals += out
            .errors
            .iter()
            .filter(|(_, e)| matches!(e, CommandError::Physical { .. }))
            .count();
        (r, out)
    }

    fn kicks_vcpus(&self, kicks: u64) {
        self.ensure(kicks >> self.setup.vcpus == 0, || {
            format!("kicks {kicks:#b} with {} vCPUs", self.setup.vcpus)
        });
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) -> ItsOutcome {
        self.access(|its, env| ((), its.write(env, offset, size, value)))
            .1
    }

    fn read(&mut self, offset: u64, size: u8) -> u64 {
        let value = self.access(|its, env| its.read(env, offset, size)).0;
        self.check_read(offset, size, value);
        value
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write {
                offset,
                size,
                value,
            } => {
                self.write(offset, size, value);
            }
            Op::Read { offset, size } => {
                self.read(offset, size);
            }
            Op::Submit(ref cmds) => self.submit(cmds),
            Op::Poll => {
                self.read(reg::CREADR, 8);
            }
            Op::LpiConfig { intid, config } => {
                let table = self.setup.propbaser & (((1 << 40) - 1) << 12);
                if let Some(n) = intid.checked_sub(8192) {
                    let _ = self.mem.write(Ipa(table + u64::from(n)), &[config]);
                }
            }
            Op::Poke { ipa, ref bytes } => {
                let _ = self.mem.write(Ipa(ipa), bytes);
            }
            Op::Redist {
                vcpu,
                offset,
                size,
                value,
            } => {
                let vcpu = usize::from(vcpu) % self.setup.vcpus;
                let fx = self.vgic.redist_write(vcpu, offset, size, value);
                self.kicks_vcpus(fx.kick_bits());
                // As the VM does: the vCPUs whose redistributor turned its
                // LPIs on or off give the physical side their LPIs'
                // configuration (direct delivery only).
                for v in fx.lpi_configs_changed() {
                    self.ensure(self.setup.direct && v < self.setup.vcpus, || {
                        format!("LPI configuration of vCPU {v} changed")
                    });
                    let lpis = self.vgic.lpi_hw_configs(v);
                    let _ = self.phys.configure(&lpis);
                }
            }
            Op::Deliver { physical, event } => self.deliver(physical, event),
            Op::RefuseMaps(on) => self.phys.refuse_maps = on,
            Op::Reset => {
                let calls = self.phys.calls;
                let (its, mut env) = self.its();
                let fx = its.reset(&mut env);
                self.kicks_vcpus(fx.kick_bits());
                if let Err(e) = check_access(&ItsOutcome::default(), &self.phys, calls) {
                    self.fail(e);
                }
                self.ensure(self.its.translations().next().is_none(), || {
                    "a reset kept translations".into()
                });
            }
            Op::InitIts => {
                self.write(reg::CTLR, 4, 0);
                self.write(reg::CBASER, 8, self.cbaser());
                self.write(reg::BASER, 8, self.baser0());
                self.write(reg::CTLR, 4, 1);
            }
        }
    }

    /// Reads a register that runs no command (GITS_CBASER, GITS_CWRITER).
    fn peek(&mut self, offset: u64) -> u64 {
        let (its, mut env) = self.its();
        let (value, out) = its.read(&mut env, offset, 8);
        self.ensure(out.commands == 0 && out.effects.is_empty(), || {
            format!("reading {offset:#x} did {out:?}")
        });
        value
    }

    fn queue(&mut self) -> (u64, u64) {
        let cbaser = self.peek(reg::CBASER);
        let base = cbaser & (((1 << 40) - 1) << 12);
        (base, ((cbaser & 0xff) + 1) * 4096)
    }

    fn submit(&mut self, cmds: &[[u64; 4]]) {
        let (base, bytes) = self.queue();
        let mut at = self.peek(reg::CWRITER) & 0xf_ffe0;
        for c in cmds {
            let raw: Vec<u8> = c.iter().flat_map(|dw| dw.to_le_bytes()).collect();
            // A queue outside RAM takes no write: the ITS will stall.
            let _ = self.mem.write(Ipa(base + at), &raw);
            at = (at + CMD_SIZE) % bytes;
        }
        self.write(reg::CWRITER, 8, at);
    }

    /// An MSI: delivered only if the physical side routes its event, then
    /// its LPI (and no other) is pending; otherwise no LPI changes. With
    /// direct delivery the GIC delivers it: the hypervisor never sees one.
    fn deliver(&mut self, physical: u32, event: u32) {
        if self.setup.direct {
            return;
        }
        let granted = self
            .phys
            .grants()
            .devices
            .iter()
            .find(|(_, g)| g.physical == physical)
            .map(|(&virt, _)| virt);
        let routed = self.phys.routed.contains_key(&(physical, event));
        let lpis: Vec<(u32, bool)> = self
            .its
            .translations()
            .map(|t| (t.intid, self.vgic.lpi_pending(t.intid)))
            .collect();
        let mine = self
            .its
            .translations()
            .find(|t| Some(t.device) == granted && t.event == event)
            .map(|t| t.intid);
        let fx = self.its.deliver(&mut self.vgic, physical, event);
        let delivered = fx.as_ref().map(|fx| fx.kick_bits());
        if let Some(kicks) = delivered {
            self.stats.delivered += 1;
            self.kicks_vcpus(kicks);
            self.ensure(routed && mine.is_some(), || {
                format!("delivered, routed {routed}, translation {mine:?}")
            });
        } else {
            self.stats.dropped += 1;
        }
        let target = mine.filter(|_| delivered.is_some());
        for (intid, was) in lpis {
            let now = self.vgic.lpi_pending(intid);
            let want = if Some(intid) == target { true } else { was };
            self.ensure(now == want, || {
                format!(
                    "LPI {intid} pending {was} -> {now} (delivered {:?})",
                    target
                )
            });
        }
    }

    /// A register's value as read: within its architected bits.
    fn check_read(&mut self, offset: u64, size: u8, value: u64) {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            return;
        }
        // The whole 64-bit register as far as this access saw it.
        let (reg, seen, known) = match (size, offset % 8) {
            (8, _) => (offset, value, u64::MAX),
            (_, 0) => (offset, value, 0xffff_ffff),
            _ => (offset - 4, value << 32, 0xffff_ffff << 32),
        };
        let bytes = self.queue().1;
        let bad = |allowed: u64| seen & known & !allowed;
        let (allowed, what) = match reg {
            // Enabled [0], Quiescent [31]; GITS_IIDR above is 0.
            reg::CTLR => (1 | 1 << 31, "GITS_CTLR"),
            // Physical [0], ITT_entry_size [7:4], ID_bits [12:8], Devbits
            // [17:13], HCC [31:24]: no Virtual, SEIS, PTA, CIL.
            reg::TYPER => (0xff03_fff1, "GITS_TYPER"),
            reg::CBASER => (
                VALID | (0x7 << 59) | (0x7 << 53) | (((1 << 40) - 1) << 12) | (0x3 << 10) | 0xff,
                "GITS_CBASER",
            ),
            // Offset [19:5], Stalled [0].
            reg::CREADR => (0xf_ffe0 | 1, "GITS_CREADR"),
            reg::CWRITER => (0xf_ffe0, "GITS_CWRITER"),
            // Valid, the attributes, Type, Entry_Size, the address, Page_Size,
            // Size: never Indirect [62].
            reg::BASER => (!(1 << 62), "GITS_BASER0"),
            r if (reg::BASER + 8..reg::BASER + 0x40).contains(&r) => (0, "GITS_BASER1-7"),
            _ => return,
        };
        self.ensure(bad(allowed) == 0, || {
            format!("{what} read {seen:#x} (known bits {known:#x})")
        });
        let fields = |shift: u32, mask: u64| (seen & known) >> shift & mask;
        match reg {
            reg::TYPER if known & 0xffff_ffff != 0 => {
                self.ensure(
                    fields(0, 1) == 1
                        && fields(4, 0xf) == 7
                        && fields(24, 0xff) == self.setup.vcpus as u64,
                    || {
                        format!(
                            "GITS_TYPER {seen:#x}: Physical, 8-byte ITEs, a collection per vCPU"
                        )
                    },
                );
            }
            reg::BASER if known >> 32 != 0 => {
                self.ensure(fields(56, 7) == 1 && fields(48, 0x1f) == 7, || {
                    format!("GITS_BASER0 {seen:#x}: a device table of 8-byte entries")
                });
            }
            reg::CREADR | reg::CWRITER if known & 0xffff_ffff != 0 => {
                self.ensure(fields(0, 0xf_ffe0) < bytes, || {
                    format!("{what} {seen:#x} beyond the {bytes}-byte queue")
                });
            }
            reg::CTLR if known & 0xffff_ffff != 0 => {
                self.ensure(seen & 0x8000_0001 != 0x8000_0001, || {
                    format!("GITS_CTLR {seen:#x}: quiescent while enabled")
                });
            }
            _ => {}
        }
    }

    /// The rules between the vITS, the vGIC and the physical side.
    fn check(&mut self) {
        if let Err(e) = check_in_step(&self.its, &self.vgic, &self.phys) {
            self.fail(e);
        }
        self.stats.most_translations = self.stats.most_translations.max(self.its.mapped_events());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_short_and_uniform_inputs_run() {
        for data in [&[][..], &[0; 100], &[1; 300], &[0xff; 300], &[0x0e; 500]] {
            run(data);
        }
    }

    #[test]
    fn operations_round_trip() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let data: Vec<u8> = (0..600)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let (setup, ops) = decode_all(&data, MAX_OPS);
            let again = encode_all(&setup, &ops);
            assert_eq!(decode_all(&again, usize::MAX), (setup, ops));
        }
    }
}
