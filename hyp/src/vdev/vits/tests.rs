//! Host tests of the vITS against the specification's rules, with a fake
//! guest RAM, a vGIC and a recording physical side.

use super::fake::{check_access, check_in_step, RecordingPhysicalIts};
use super::*;
use smmu::fake::FakeGuestMemory;

const RAM: u64 = 0x4000_0000;
const PROP: u64 = RAM + 0x10_0000;
const QUEUE: u64 = RAM + 0x20_0000;
const DEVICE_TABLE: u64 = RAM + 0x30_0000;
const ITT: u64 = RAM + 0x31_0000;

/// DeviceID 8 is physical 0x108 with 32 events; DeviceID 0x10 is physical
/// 0x110 with 4 events.
fn config() -> ItsConfig {
    let mut devices = BTreeMap::new();
    devices.insert(
        8,
        DeviceGrant {
            physical: 0x108,
            events: 32,
        },
    );
    devices.insert(
        0x10,
        DeviceGrant {
            physical: 0x110,
            events: 4,
        },
    );
    ItsConfig { devices }
}

struct World {
    mem: FakeGuestMemory,
    vgic: VGic,
    phys: RecordingPhysicalIts,
    its: VIts,
}

impl World {
    /// A 2-vCPU VM as Linux leaves it before using the ITS: vGIC Group 1
    /// on, redistributors awake with PROPBASER set and LPIs enabled, the
    /// ITS's queue and device table allocated and the ITS enabled.
    fn new() -> Self {
        Self::with(RecordingPhysicalIts::new(config()))
    }

    /// As [`World::new`], with MSIs delivered directly (GICv4).
    fn direct() -> Self {
        let mut w = Self::with(RecordingPhysicalIts::direct(config()));
        w.vgic.set_direct_lpis();
        w
    }

    fn with(phys: RecordingPhysicalIts) -> Self {
        let mem = FakeGuestMemory::new(Ipa(RAM), 4 << 20);
        let mut vgic = VGic::new(&[0x8000_0000, 0x8000_0001], 64).unwrap();
        vgic.enable_lpis(crate::vdev::vgic::lpi::LPI_ID_BITS);
        let _ = vgic.dist_write(0, 4, 0x12); // ARE | EnableGrp1
        for vcpu in 0..2 {
            let _ = vgic.redist_write(vcpu, 0x14, 4, 0); // wake
            let _ = vgic.redist_write(vcpu, 0x70, 8, PROP | 15);
            let _ = vgic.redist_write(vcpu, 0, 4, 1); // EnableLPIs
        }
        let mut w = Self {
            mem,
            vgic,
            phys,
            its: VIts::new(config(), 2),
        };
        w.write(reg::CBASER, (1 << 63) | QUEUE);
        w.write(reg::BASER, (1 << 63) | DEVICE_TABLE);
        w.write(reg::CTLR, 1);
        w
    }

    fn write(&mut self, offset: u64, value: u64) -> ItsOutcome {
        let mut env = ItsEnv {
            mem: &self.mem,
            vgic: &mut self.vgic,
            phys: &mut self.phys,
        };
        self.its.write(&mut env, offset, 8, value)
    }

    fn read(&mut self, offset: u64) -> u64 {
        let mut env = ItsEnv {
            mem: &self.mem,
            vgic: &mut self.vgic,
            phys: &mut self.phys,
        };
        self.its.read(&mut env, offset, 8).0
    }

    /// Writes `cmds` at GITS_CWRITER and advances it, as Linux does.
    fn submit(&mut self, cmds: &[Command]) -> ItsOutcome {
        let size = self.its.queue_bytes();
        let mut at = self.its.cwriter;
        for c in cmds {
            for (i, dw) in c.encode().iter().enumerate() {
                self.mem.write_u64(Ipa(QUEUE + at + 8 * i as u64), *dw);
            }
            at = (at + CMD_SIZE) % size;
        }
        self.write(reg::CWRITER, at)
    }

    /// Turns `vcpu`'s redistributor's LPIs on or off and, as the VM does
    /// with the vGIC's effects, hands the physical side the new
    /// configuration of the vCPU's LPIs.
    fn enable_lpis(&mut self, vcpu: usize, on: bool) {
        let fx = self.vgic.redist_write(vcpu, 0, 4, u64::from(on));
        for v in fx.lpi_configs_changed() {
            let lpis = self.vgic.lpi_hw_configs(v);
            self.phys.configure(&lpis).unwrap();
        }
    }

    /// Sets LPI `intid`'s configuration byte in the guest's table.
    fn config(&self, intid: u32, byte: u8) {
        GuestMemory::write(&self.mem, Ipa(PROP + u64::from(intid - FIRST_LPI)), &[byte]).unwrap();
    }

    /// Linux's start: a collection per vCPU, DeviceID 8 mapped with 5
    /// EventID bits, events 0 and 1 to LPIs 8192 and 8193 on vCPU 1.
    fn linux_setup(&mut self) {
        self.config(8192, 0xa1);
        self.config(8193, 0xa1);
        let out = self.submit(&[
            Command::Mapc {
                icid: 0,
                target: 0,
                valid: true,
            },
            Command::Mapc {
                icid: 1,
                target: 1,
                valid: true,
            },
            Command::Mapd {
                device: 8,
                valid: true,
                event_bits: 5,
                itt: Ipa(ITT),
            },
            Command::Mapti {
                device: 8,
                event: 0,
                intid: 8192,
                icid: 1,
            },
            Command::Mapti {
                device: 8,
                event: 1,
                intid: 8193,
                icid: 1,
            },
            Command::Sync { target: 1 },
        ]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.commands, 6);
    }

    fn errors(out: &ItsOutcome) -> Vec<CommandError> {
        out.errors.iter().map(|(_, e)| *e).collect()
    }
}

#[test]
fn registers_describe_the_its() {
    let mut w = World::new();
    let typer = w.read(reg::TYPER);
    assert_eq!(typer & 1, 1, "Physical");
    assert_eq!((typer >> 1) & 1, 0, "no Virtual");
    assert_eq!((typer >> 4) & 0xf, ITT_ENTRY_SIZE - 1);
    assert_eq!((typer >> 8) & 0x1f, u64::from(EVENT_ID_BITS) - 1);
    assert_eq!(
        (typer >> 13) & 0x1f,
        7,
        "8 DeviceID bits cover DeviceID 0x10"
    );
    assert_eq!(
        (typer >> 19) & 1,
        0,
        "PTA = 0: targets are processor numbers"
    );
    assert_eq!((typer >> 24) & 0xff, 2, "HCC: a collection per vCPU");
    let baser = w.read(reg::BASER);
    assert_eq!((baser >> 56) & 7, 1, "Type = Devices");
    assert_eq!((baser >> 48) & 0x1f, DEVICE_ENTRY_SIZE - 1);
    assert_eq!(w.read(reg::BASER + 8), 0, "GITS_BASER1 unimplemented");
    assert_eq!(w.read(0xffe8) & 0xf0, 0x30, "PIDR2.ArchRev = GICv3");
    assert_eq!(w.read(reg::CTLR) & 0xffff_ffff, 1, "Enabled");
    // Table and queue bases are frozen while the ITS is enabled.
    w.write(reg::BASER, (1 << 62) | (1 << 63) | 0x5000_0000);
    w.write(reg::CBASER, (1 << 63) | 0x5000_0000);
    assert_eq!(w.read(reg::BASER) & 0xf_ffff_f000, DEVICE_TABLE);
    assert_eq!(w.read(reg::CBASER) & 0xf_ffff_f000, QUEUE);
    w.write(reg::CTLR, 0);
    assert_eq!(w.read(reg::CTLR) as u32, 1 << 31, "disabled and quiescent");
    w.write(
        reg::BASER,
        (1 << 62) | (1 << 63) | 0x5000_0000 | (2 << 8) | 3,
    );
    let baser = w.read(reg::BASER);
    assert_eq!(baser >> 62, 0b10, "Indirect is RAZ/WI: flat tables only");
    assert_eq!((baser >> 8) & 3, 2, "64 KiB pages");
    assert_eq!(baser & 0xff, 3);
}

#[test]
fn cbaser_write_resets_the_read_pointer() {
    let mut w = World::new();
    w.submit(&[Command::Sync { target: 0 }; 3]);
    assert_eq!(w.read(reg::CREADR), 3 * CMD_SIZE);
    w.write(reg::CTLR, 0);
    w.write(reg::CBASER, (1 << 63) | QUEUE);
    assert_eq!(w.read(reg::CREADR), 0);
    assert_eq!(w.read(reg::CWRITER), 0);
}

#[test]
fn a_device_msi_reaches_the_vcpu_of_its_collection() {
    let mut w = World::new();
    w.linux_setup();
    assert_eq!(w.phys.routed.get(&(0x108, 0)), Some(&1));
    assert_eq!(w.phys.routed.get(&(0x108, 1)), Some(&1));
    assert_eq!(w.vgic.lpi_target(8193), Some(1));
    let fx = w.its.deliver(&mut w.vgic, 0x108, 1).expect("translated");
    assert!(fx.kicks(1));
    assert!(w.vgic.lpi_pending(8193));
    assert!(w.vgic.has_pending(1));
    assert!(!w.vgic.lpi_pending(8192));
    assert_eq!(w.its.stats().delivered, 1);
}

#[test]
fn int_clear_inv_and_invall() {
    let mut w = World::new();
    w.linux_setup();
    w.submit(&[Command::Int {
        device: 8,
        event: 0,
    }]);
    assert!(w.vgic.lpi_pending(8192));
    w.submit(&[Command::Clear {
        device: 8,
        event: 0,
    }]);
    assert!(!w.vgic.lpi_pending(8192));
    // The guest masks LPI 8192 in its table: nothing changes until INV.
    w.config(8192, 0xa0);
    w.submit(&[Command::Int {
        device: 8,
        event: 0,
    }]);
    assert!(w.vgic.has_pending(1));
    w.submit(&[Command::Inv {
        device: 8,
        event: 0,
    }]);
    assert!(!w.vgic.has_pending(1), "masked by its configuration");
    w.config(8192, 0xa1);
    w.submit(&[Command::Invall { icid: 1 }]);
    assert!(w.vgic.has_pending(1));
}

#[test]
fn discard_unroutes_the_event_and_drops_its_lpi() {
    let mut w = World::new();
    w.linux_setup();
    w.submit(&[Command::Int {
        device: 8,
        event: 1,
    }]);
    w.submit(&[Command::Discard {
        device: 8,
        event: 1,
    }]);
    assert!(!w.phys.routed.contains_key(&(0x108, 1)));
    assert_eq!(w.vgic.lpi_target(8193), None);
    assert!(w.its.deliver(&mut w.vgic, 0x108, 1).is_none());
    assert_eq!(w.its.stats().dropped, 1);
    let out = w.submit(&[Command::Int {
        device: 8,
        event: 1,
    }]);
    assert_eq!(
        World::errors(&out),
        [CommandError::EventNotMapped {
            device: 8,
            event: 1
        }]
    );
}

#[test]
fn movi_movall_and_mapc_move_the_interrupt_and_its_route() {
    let mut w = World::new();
    w.linux_setup();
    w.submit(&[Command::Int {
        device: 8,
        event: 0,
    }]);
    w.submit(&[Command::Movi {
        device: 8,
        event: 0,
        icid: 0,
    }]);
    assert_eq!(w.vgic.lpi_target(8192), Some(0));
    assert_eq!(w.phys.routed[&(0x108, 0)], 0);
    assert!(w.vgic.has_pending(0), "the pending state moves along");
    assert!(!w.vgic.has_pending(1));
    w.submit(&[Command::Movall { from: 0, to: 1 }]);
    assert_eq!(w.vgic.lpi_target(8192), Some(1));
    assert_eq!(w.phys.routed[&(0x108, 0)], 1);
    // Remapping collection 1 to vCPU 0 takes its events along.
    w.submit(&[Command::Mapc {
        icid: 1,
        target: 0,
        valid: true,
    }]);
    assert_eq!(w.vgic.lpi_target(8193), Some(0));
    assert_eq!(w.phys.routed[&(0x108, 1)], 0);
}

#[test]
fn a_refused_move_leaves_the_interrupt_where_the_hardware_delivers_it() {
    let mut w = World::direct();
    w.enable_lpis(0, false);
    w.enable_lpis(1, true);
    w.linux_setup();
    w.submit(&[Command::Movi {
        device: 8,
        event: 0,
        icid: 0,
    }]);
    assert_eq!(
        w.phys.configured[&8192],
        LpiConfig(0xa0),
        "vCPU 0 has LPIs off"
    );
    // The physical side refuses to move the event back to vCPU 1: the
    // translation, the vGIC's LPI and the hardware's byte all stay.
    w.phys.refuse_maps = true;
    let movi = Command::Movi {
        device: 8,
        event: 0,
        icid: 1,
    };
    let out = w.submit(&[
        movi,
        Command::Inv {
            device: 8,
            event: 0,
        },
    ]);
    let refused = CommandError::Physical {
        device: 8,
        event: 0,
    };
    assert_eq!(World::errors(&out), [refused]);
    assert_eq!(w.vgic.lpi_target(8192), Some(0));
    assert_eq!(w.phys.routed[&(0x108, 0)], 0);
    assert!(w.its.translations().any(|t| t
        == Translation {
            device: 8,
            event: 0,
            intid: 8192,
            icid: 0
        }));
    assert_eq!(w.phys.configured[&8192], LpiConfig(0xa0), "still on vCPU 0");
    // MOVALL moves what the physical side lets it and reports the rest.
    let out = w.submit(&[Command::Movall { from: 0, to: 1 }]);
    assert_eq!(World::errors(&out), [refused]);
    assert_eq!(w.vgic.lpi_target(8192), Some(0));
    w.phys.refuse_maps = false;
    let out = w.submit(&[
        movi,
        Command::Inv {
            device: 8,
            event: 0,
        },
    ]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(w.vgic.lpi_target(8192), Some(1));
    assert_eq!(w.phys.routed[&(0x108, 0)], 1);
    assert_eq!(w.phys.configured[&8192], LpiConfig(0xa1));
}

#[test]
fn movall_moves_every_event_of_a_shared_lpi() {
    let mut w = World::new();
    w.linux_setup();
    // Event 2 raises event 0's LPI too, in the same collection.
    w.submit(&[Command::Mapti {
        device: 8,
        event: 2,
        intid: 8192,
        icid: 1,
    }]);
    w.submit(&[Command::Movall { from: 1, to: 0 }]);
    assert_eq!(w.vgic.lpi_target(8192), Some(0));
    assert_eq!(w.phys.routed[&(0x108, 0)], 0);
    assert_eq!(w.phys.routed[&(0x108, 2)], 0, "the second event followed");
    assert_eq!(w.phys.routed[&(0x108, 1)], 0);
}

#[test]
fn mapd_invalid_unmaps_every_event() {
    let mut w = World::new();
    w.linux_setup();
    w.submit(&[Command::Mapd {
        device: 8,
        valid: false,
        event_bits: 1,
        itt: Ipa(0),
    }]);
    assert!(w.phys.routed.is_empty());
    assert_eq!(w.vgic.nr_lpis(), 0);
    assert_eq!(w.its.mapped_events(), 0);
    let out = w.submit(&[Command::Mapti {
        device: 8,
        event: 0,
        intid: 8192,
        icid: 0,
    }]);
    assert_eq!(World::errors(&out), [CommandError::DeviceNotMapped(8)]);
}

#[test]
fn a_guest_reaches_only_its_own_devices_events_and_lpis() {
    let mut w = World::new();
    w.linux_setup();
    let cases = [
        (
            Command::Mapd {
                device: 9,
                valid: true,
                event_bits: 1,
                itt: Ipa(ITT),
            },
            CommandError::DeviceNotOwned(9),
        ),
        (
            Command::Mapd {
                device: 0x10,
                valid: true,
                event_bits: 12,
                itt: Ipa(ITT),
            },
            CommandError::EventBits(12),
        ),
        (
            Command::Mapd {
                device: 0x10,
                valid: true,
                event_bits: 2,
                itt: Ipa(0x1000),
            },
            CommandError::IttOutsideRam(Ipa(0x1000)),
        ),
        (
            // The ITT would end past the last byte of RAM.
            Command::Mapd {
                device: 0x10,
                valid: true,
                event_bits: 11,
                itt: Ipa(RAM + (4 << 20) - 0x100),
            },
            CommandError::IttOutsideRam(Ipa(RAM + (4 << 20) - 0x100)),
        ),
        (
            // 5 EventID bits give 32 events: 32 is beyond.
            Command::Mapti {
                device: 8,
                event: 32,
                intid: 8200,
                icid: 0,
            },
            CommandError::EventOutOfRange {
                device: 8,
                event: 32,
            },
        ),
        (
            Command::Mapti {
                device: 8,
                event: 2,
                intid: 1023,
                icid: 0,
            },
            CommandError::IntidOutOfRange(1023),
        ),
        (
            Command::Mapti {
                device: 8,
                event: 2,
                intid: 1 << 16,
                icid: 0,
            },
            CommandError::IntidOutOfRange(1 << 16),
        ),
        (
            Command::Mapti {
                device: 8,
                event: 2,
                intid: 8200,
                icid: 2,
            },
            CommandError::CollectionOutOfRange(2),
        ),
        (
            Command::Mapc {
                icid: 0,
                target: 2,
                valid: true,
            },
            CommandError::TargetOutOfRange(2),
        ),
        (
            Command::Sync { target: 7 },
            CommandError::TargetOutOfRange(7),
        ),
        (Command::Unsupported(0x2a), CommandError::Unsupported(0x2a)),
    ];
    for (cmd, want) in cases {
        let before = (w.phys.routed.clone(), w.vgic.nr_lpis());
        let out = w.submit(&[cmd]);
        assert_eq!(World::errors(&out), [want], "{cmd:?}");
        assert_eq!(
            (w.phys.routed.clone(), w.vgic.nr_lpis()),
            before,
            "{cmd:?} changed state"
        );
    }
    assert_eq!(w.its.stats().errors, cases.len() as u64);
    // The grant bounds the ITT: DeviceID 0x10 has 4 events whatever the
    // guest's MAPD says.
    w.submit(&[Command::Mapd {
        device: 0x10,
        valid: true,
        event_bits: 5,
        itt: Ipa(ITT),
    }]);
    let out = w.submit(&[Command::Mapti {
        device: 0x10,
        event: 4,
        intid: 8300,
        icid: 0,
    }]);
    assert_eq!(
        World::errors(&out),
        [CommandError::EventOutOfRange {
            device: 0x10,
            event: 4
        }]
    );
    // An MSI from a device that is not the VM's is dropped.
    assert!(w.its.deliver(&mut w.vgic, 0x999, 0).is_none());
}

#[test]
fn a_device_table_outside_ram_or_too_small_refuses_mapd() {
    let mut w = World::new();
    w.write(reg::CTLR, 0);
    // One 4 KiB page of 8-byte entries: DeviceIDs 0-511. Outside RAM.
    w.write(reg::BASER, (1 << 63) | 0x1000_0000);
    w.write(reg::CTLR, 1);
    let out = w.submit(&[Command::Mapd {
        device: 8,
        valid: true,
        event_bits: 1,
        itt: Ipa(ITT),
    }]);
    assert_eq!(World::errors(&out), [CommandError::DeviceTable(8)]);
    w.write(reg::CTLR, 0);
    w.write(reg::BASER, DEVICE_TABLE);
    w.write(reg::CTLR, 1);
    let out = w.submit(&[Command::Mapd {
        device: 8,
        valid: true,
        event_bits: 1,
        itt: Ipa(ITT),
    }]);
    assert_eq!(
        World::errors(&out),
        [CommandError::DeviceTable(8)],
        "not Valid"
    );
}

#[test]
fn a_refused_physical_route_maps_nothing() {
    let mut w = World::new();
    w.linux_setup();
    w.phys.refuse_maps = true;
    let out = w.submit(&[Command::Mapti {
        device: 8,
        event: 5,
        intid: 8300,
        icid: 0,
    }]);
    assert_eq!(
        World::errors(&out),
        [CommandError::Physical {
            device: 8,
            event: 5
        }]
    );
    assert_eq!(w.vgic.lpi_target(8300), None);
    assert_eq!(w.its.mapped_events(), 2);
}

#[test]
fn mapti_of_a_mapped_event_moves_its_route_and_swaps_its_lpi() {
    let mut w = World::new();
    w.linux_setup();
    w.submit(&[Command::Int {
        device: 8,
        event: 0,
    }]);
    let out = w.submit(&[Command::Mapti {
        device: 8,
        event: 0,
        intid: 8200,
        icid: 0,
    }]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(w.phys.routed[&(0x108, 0)], 0, "the route moved, not remade");
    assert_eq!(w.vgic.lpi_target(8192), None, "the old LPI is gone");
    assert_eq!(w.vgic.lpi_target(8200), Some(0));
    assert_eq!(w.its.mapped_events(), 2);
    // A route the physical side refuses to move leaves the translation.
    w.phys.refuse_maps = true;
    let out = w.submit(&[Command::Mapti {
        device: 8,
        event: 0,
        intid: 8210,
        icid: 1,
    }]);
    assert_eq!(
        World::errors(&out),
        [CommandError::Physical {
            device: 8,
            event: 0
        }]
    );
    assert_eq!(w.vgic.lpi_target(8200), Some(0));
    assert_eq!(w.vgic.lpi_target(8210), None);
    w.phys.refuse_maps = false;
    // Two events on one LPI: it stays while either maps it.
    w.submit(&[Command::Mapti {
        device: 8,
        event: 1,
        intid: 8200,
        icid: 0,
    }]);
    assert_eq!(w.vgic.lpi_target(8193), None);
    w.submit(&[Command::Discard {
        device: 8,
        event: 0,
    }]);
    assert_eq!(w.vgic.lpi_target(8200), Some(0));
    w.submit(&[Command::Discard {
        device: 8,
        event: 1,
    }]);
    assert_eq!(w.vgic.lpi_target(8200), None);
}

#[test]
fn a_queue_outside_ram_stalls_until_retried() {
    let mut w = World::new();
    w.write(reg::CTLR, 0);
    w.write(reg::CBASER, (1 << 63) | 0x1000_0000);
    w.write(reg::CTLR, 1);
    let out = w.write(reg::CWRITER, CMD_SIZE);
    assert_eq!(out.stalled_at, Some(Ipa(0x1000_0000)));
    assert_eq!(w.read(reg::CREADR), 1, "Stalled, offset 0");
    // A retry with the queue still unreadable stalls again.
    let out = w.write(reg::CWRITER, CMD_SIZE | 1);
    assert!(out.stalled_at.is_some());
    assert_eq!(w.read(reg::CREADR), 1);
    // Moved into RAM: runs.
    w.write(reg::CTLR, 0);
    w.write(reg::CBASER, (1 << 63) | QUEUE);
    w.write(reg::CTLR, 1);
    let out = w.submit(&[Command::Sync { target: 0 }]);
    assert_eq!((out.commands, out.stalled_at), (1, None));
    assert_eq!(w.read(reg::CREADR), CMD_SIZE);
}

#[test]
fn work_per_access_is_bounded_and_the_rest_runs_when_polled() {
    let mut w = World::new();
    let n = 127; // a 4 KiB queue holds 128 commands, one slot stays free
    let out = w.submit(&[Command::Sync { target: 0 }; 127]);
    assert_eq!(out.commands, COMMANDS_PER_ACCESS);
    assert_eq!(w.its.creadr, COMMANDS_PER_ACCESS as u64 * CMD_SIZE);
    assert_eq!(
        w.read(reg::CREADR),
        n * CMD_SIZE,
        "the first poll runs the rest"
    );
    assert_eq!(w.its.stats().commands, n);
    // Errors are reported up to a bound and counted beyond it.
    let out = w.submit(&[Command::Unsupported(0x30); 10]);
    assert_eq!(out.errors.len(), ERRORS_PER_ACCESS);
    assert_eq!(out.more_errors, 10 - ERRORS_PER_ACCESS);
}

#[test]
fn a_disabled_its_runs_nothing_and_translates_nothing() {
    let mut w = World::new();
    w.linux_setup();
    w.write(reg::CTLR, 0);
    let out = w.submit(&[Command::Int {
        device: 8,
        event: 0,
    }]);
    assert_eq!(out.commands, 0);
    assert!(w.its.deliver(&mut w.vgic, 0x108, 0).is_none());
    let out = w.write(reg::CTLR, 1);
    assert_eq!(out.commands, 1, "enabling runs what was queued");
    assert!(w.vgic.lpi_pending(8192));
}

#[test]
fn reset_forgets_every_translation() {
    let mut w = World::new();
    w.linux_setup();
    let mut env = ItsEnv {
        mem: &w.mem,
        vgic: &mut w.vgic,
        phys: &mut w.phys,
    };
    let _ = w.its.reset(&mut env);
    assert!(w.phys.routed.is_empty());
    assert_eq!(w.vgic.nr_lpis(), 0);
    assert_eq!(w.read(reg::CTLR) as u32, 1 << 31);
    assert_eq!(w.read(reg::CBASER), 0);
}

/// Random command streams: whatever the guest writes, the physical side
/// routes exactly the events the vITS holds, only for the VM's devices,
/// each within its grant; every LPI in the vGIC is one an event maps; work
/// per access stays bounded.
#[test]
fn random_commands_keep_the_physical_side_exactly_in_step() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..80 {
        let direct = round % 2 == 1;
        let mut w = if direct {
            World::direct()
        } else {
            World::new()
        };
        for lpi in 8192..8192 + 64 {
            w.config(lpi, 0xa1);
        }
        for _ in 0..30 {
            // The guest rewrites its table, and turns a vCPU's LPIs off or
            // on, now and then.
            let r = next();
            if r % 5 == 0 {
                w.config(
                    8192 + (r >> 8) as u32 % 64,
                    [0xa1, 0xa0, 0x61][(r >> 16) as usize % 3],
                );
            }
            if direct && r % 7 == 0 {
                w.enable_lpis((r >> 24) as usize % 2, (r >> 32) % 3 != 0);
            }
            // And disables its ITS for a while, now and then.
            if r % 13 == 0 {
                let enabled = w.its.enabled();
                w.write(reg::CTLR, u64::from(!enabled));
                check_in_step(&w.its, &w.vgic, &w.phys)
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
            let cmds: Vec<Command> = (0..(next() % 8 + 1))
                .map(|_| {
                    let r = next();
                    let device = [8, 0x10, 9, 0][(r % 4) as usize];
                    let event = ((r >> 8) % 40) as u32;
                    let intid = 8192 + ((r >> 16) % 64) as u32;
                    let icid = ((r >> 24) % 3) as u16;
                    let target = (r >> 32) % 3;
                    match (r >> 40) % 11 {
                        0 => Command::Mapd {
                            device,
                            valid: (r >> 48) % 4 != 0,
                            event_bits: ((r >> 50) % 13) as u8,
                            itt: Ipa(ITT),
                        },
                        1 => Command::Mapc {
                            icid,
                            target,
                            valid: (r >> 48) % 4 != 0,
                        },
                        2 | 3 => Command::Mapti {
                            device,
                            event,
                            intid,
                            icid,
                        },
                        4 => Command::Int { device, event },
                        5 => Command::Clear { device, event },
                        6 => Command::Discard { device, event },
                        7 => Command::Movi {
                            device,
                            event,
                            icid,
                        },
                        8 => Command::Movall {
                            from: target,
                            to: (r >> 48) % 3,
                        },
                        9 => Command::Invall { icid },
                        10 if (r >> 48) % 2 == 0 => Command::Inv { device, event },
                        _ => Command::decode([next(), next(), next(), next()]),
                    }
                })
                .collect();
            let calls = w.phys.calls;
            let out = w.submit(&cmds);
            check_access(&out, &w.phys, calls).unwrap_or_else(|e| panic!("round {round}: {e}"));
            check_in_step(&w.its, &w.vgic, &w.phys)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}

#[test]
fn delivered_directly_the_physical_side_hears_lpis_configurations_and_ints() {
    let mut w = World::direct();
    w.linux_setup();
    // Each event's LPI and its configuration reach the physical side.
    assert_eq!(w.phys.lpis[&(0x108, 0)], 8192);
    assert_eq!(w.phys.lpis[&(0x108, 1)], 8193);
    assert_eq!(w.phys.configured[&8192], LpiConfig(0xa1));
    check_in_step(&w.its, &w.vgic, &w.phys).unwrap();
    // INT and CLEAR go to the physical GIC, which holds the pending
    // state: the vGIC has nothing to list.
    let out = w.submit(&[
        Command::Int {
            device: 8,
            event: 1,
        },
        Command::Clear {
            device: 8,
            event: 1,
        },
    ]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(w.phys.pending, [((0x108, 1), true), ((0x108, 1), false)]);
    assert!(!w.vgic.lpi_pending(8193));
    assert!(!w.vgic.has_pending(1));
    // INV after the guest disabled LPI 8192 in its table; INVALL after it
    // lowered 8193's priority: one configuration each.
    w.config(8192, 0xa0);
    w.config(8193, 0x41);
    let calls = w.phys.calls;
    w.submit(&[
        Command::Inv {
            device: 8,
            event: 0,
        },
        Command::Invall { icid: 1 },
    ]);
    assert_eq!(w.phys.calls - calls, 2, "one call per command");
    assert_eq!(w.phys.configured[&8192], LpiConfig(0xa0));
    assert_eq!(w.phys.configured[&8193], LpiConfig(0x41));
    check_in_step(&w.its, &w.vgic, &w.phys).unwrap();
    // MOVI: the physical side hears the LPI with its new vCPU.
    w.submit(&[Command::Movi {
        device: 8,
        event: 1,
        icid: 0,
    }]);
    assert_eq!(w.phys.routed[&(0x108, 1)], 0);
    check_in_step(&w.its, &w.vgic, &w.phys).unwrap();
    // vCPU 0 turns its LPIs off: the hardware sees 8193 disabled; on
    // again, enabled.
    w.enable_lpis(0, false);
    assert_eq!(w.phys.configured[&8193], LpiConfig(0x40));
    check_in_step(&w.its, &w.vgic, &w.phys).unwrap();
    w.enable_lpis(0, true);
    assert_eq!(w.phys.configured[&8193], LpiConfig(0x41));
    // An INT of an event that is not mapped is still the guest's error.
    let out = w.submit(&[Command::Int {
        device: 8,
        event: 7,
    }]);
    assert_eq!(
        World::errors(&out),
        [CommandError::EventNotMapped {
            device: 8,
            event: 7
        }]
    );
    assert_eq!(w.phys.pending.len(), 2);
}

/// Delivered directly, MSIs never pass through the vITS, so disabling it
/// must stop them where they are translated: the physical side drops
/// them while the guest's ITS is disabled (the events stay mapped, their
/// LPIs' pending state with them) and translates them again once it is
/// enabled; through the list registers the vITS drops them itself.
#[test]
fn delivered_directly_a_disabled_its_has_the_physical_side_drop_msis() {
    let mut w = World::direct();
    w.linux_setup();
    assert!(w.phys.translating);
    let calls = w.phys.calls;
    w.write(reg::CTLR, 0);
    assert!(!w.phys.translating, "MSIs dropped while disabled");
    assert_eq!(w.phys.calls - calls, 1);
    assert_eq!(w.phys.routed.len(), 2, "the events stay mapped");
    check_in_step(&w.its, &w.vgic, &w.phys).unwrap();
    // Writing the same value again changes nothing.
    w.write(reg::CTLR, 0);
    assert_eq!(w.phys.calls - calls, 1);
    w.write(reg::CTLR, 1);
    assert!(w.phys.translating);
    assert_eq!(w.phys.calls - calls, 2);
    check_in_step(&w.its, &w.vgic, &w.phys).unwrap();
    // Through the list registers nothing is asked of the physical side.
    let mut w = World::new();
    w.linux_setup();
    let calls = w.phys.calls;
    w.write(reg::CTLR, 0);
    w.write(reg::CTLR, 1);
    assert_eq!(w.phys.calls, calls);
    check_in_step(&w.its, &w.vgic, &w.phys).unwrap();
}

#[test]
fn an_lpi_mapped_while_its_vcpus_lpis_are_off_is_disabled_in_hardware() {
    let mut w = World::direct();
    w.enable_lpis(1, false);
    w.linux_setup();
    assert_eq!(
        w.phys.configured[&8192],
        LpiConfig(0xa0),
        "the guest enabled it, its redistributor did not"
    );
    w.enable_lpis(1, true);
    assert_eq!(w.phys.configured[&8192], LpiConfig(0xa1));
    check_in_step(&w.its, &w.vgic, &w.phys).unwrap();
}
