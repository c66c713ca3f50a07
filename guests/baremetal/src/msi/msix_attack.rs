//! `nvme_msix_attack`: the guest programs MSI-X table entry 0 of its NVMe
//! controller (the table the hypervisor emulates, in the BAR page that
//! traps) with hostile messages and has the controller send each: the
//! admin completion queue interrupts through vector 0, so every admin
//! command it completes is one MSI-X message, a 32-bit DMA write of the
//! entry's data to the entry's address with the controller's requester
//! ID, through the SMMU. One check line each (`crate::checks`):
//!
//! 1. `msix-capability-shown`: the controller's MSI-X capability is in its
//!    list, with its table and PBA in a BAR.
//! 2. `msix-raises-lpi`: entry 0 aimed at the vITS doorbell with the mapped
//!    event raises the guest's LPI: the path works.
//! 3. `msix-masked-entry-pends`: with entry 0 masked, a completion raises
//!    nothing and sets the entry's pending bit in the PBA.
//! 4. `msix-unmask-delivers`: unmasking the entry sends the pending message
//!    (the LPI arrives) and clears the bit.
//! 5. `msix-into-own-ram`: aimed at a page of the guest's RAM, the data
//!    lands there and nothing is raised: a message is only a DMA write.
//! 6. `msix-outside-ram`, `msix-to-gicd-setspi`, `msix-to-its-control-frame`:
//!    aimed outside the guest's RAM, at GICD_SETSPI_NSR and at the ITS's
//!    GITS_CWRITER: nothing is raised; the SMMU aborts each write (the
//!    scenario test checks the hypervisor's reports).
//! 7. `msix-event-beyond-grant`: the guest maps the first event beyond the
//!    table's size in its own ITS (to LPI 8193) and aims the entry at the
//!    doorbell with it: the hypervisor granted the function only as many
//!    events as its table has entries, so neither LPI is raised.
//! 8. `msix-after-discard`: the doorbell with the event the guest
//!    discarded: nothing is raised.
//! 9. `msix-table-with-decode-off`: with Memory Space off in the
//!    function's command register, a table read answers all ones and a
//!    write is dropped, as a function that decodes nothing does; with
//!    decoding on again the entry holds what it held.
//! 10. `msix-remapped-raises-lpi`: mapped again, the event raises the LPI
//!     again: the controller and the path still work after the attacks.
//!
//! What stops the checks early is a failed check `nvme-msix-attack-ran`.

use super::attack::{aim_outside, quiet, raises, Capability};
use super::hw::{any_within, ipa, lpi_within, setup_its, Page, Stop, EVENT};
use super::{cmd, msi_cap, msix_cap, LPI, TRANSLATER};
use crate::checks::check;
use crate::edu::{config_read, config_write, PciHost, CFG_COMMAND, CMD_MEMORY};
use crate::nvme::{identify, Controller, Interrupts, CNS_CONTROLLER};
use crate::{mmio, time};
use aarch64_cpu::asm::barrier;
use flat_device_tree::Fdt;

/// The data aimed at our own RAM.
const RAM_DATA: u32 = 0x5a5a_a5a5;
/// The data the entry holds while memory decoding is off.
const DECODE_MARK: u32 = 0xdec0;
/// The LPI the event beyond the grant is mapped to in the guest's ITS.
const BEYOND_LPI: u32 = LPI + 1;
/// How long what must happen (an LPI, a pending bit, data landing) may
/// take after what causes it; only a failing check waits this long.
const MUST_MS: u64 = 5000;
/// How long the checks watch for what must not happen.
const MUST_NOT_MS: u64 = 250;

/// Whether `cond` holds within [`MUST_MS`].
fn eventually(cond: impl Fn() -> bool) -> bool {
    let start = time::now();
    loop {
        if cond() {
            return true;
        }
        if time::elapsed_ms(start) > MUST_MS {
            return false;
        }
        core::hint::spin_loop();
    }
}

/// Runs the checks; `ram` is the guest's RAM (base, size).
pub fn run(fdt: &Fdt<'_>, ram: (u64, u64)) {
    if let Err(why) = checks(fdt, ram) {
        check("nvme-msix-attack-ran", false, why);
    }
}

/// The controller's MSI-X table entry 0 and PBA, as the guest reaches them
/// in its BAR.
struct Vector<'a> {
    /// The MSI-X capability in configuration space.
    cap: Capability<'a>,
    layout: msix_cap::Layout,
    /// The BAR holding both the table and the PBA.
    bar: u64,
}

impl Vector<'_> {
    fn r32(&self, off: u64) -> u32 {
        // SAFETY: a dword of the function's BAR, inside its MSI-X table
        // (offsets from `Layout::field`); Device memory, MMU off.
        unsafe { mmio::read32(self.bar + off) }
    }

    fn w32(&self, off: u64, v: u32) {
        // SAFETY: as in `r32`. The table entry written sends its message
        // only where the checks aim it: the doorbell, the `Sink` arena
        // page, or addresses outside our RAM.
        unsafe { mmio::write32(self.bar + off, v) }
    }

    /// Entry 0's dword `field`.
    fn field(&self, field: u64) -> u32 {
        self.r32(self.layout.field(0, field))
    }

    fn set_field(&self, field: u64, v: u32) {
        self.w32(self.layout.field(0, field), v)
    }

    fn mask(&self, masked: bool) {
        self.set_field(3, u32::from(masked) * msix_cap::MASKED);
    }

    /// Masks entry 0, writes its message, unmasks it.
    fn aim(&self, address: u64, data: u32) {
        self.mask(true);
        self.set_field(0, address as u32);
        self.set_field(1, (address >> 32) as u32);
        self.set_field(2, data);
        self.mask(false);
    }

    /// Entry 0's pending bit in the PBA.
    fn pending(&self) -> bool {
        let (off, bit) = self.layout.pending(0);
        // SAFETY: the QWORD of the PBA holding entry 0's bit, in the same
        // BAR as the table (checked in `checks`); Device memory.
        unsafe { mmio::read64(self.bar + off) & bit != 0 }
    }

    fn set_decode(&self, on: bool) {
        // Status (the high half) is write-one-to-clear: write zeros there.
        let (host, device) = (self.cap.host, self.cap.device);
        let cmd = config_read(host, device, CFG_COMMAND) & 0xffff;
        let cmd = if on {
            cmd | CMD_MEMORY
        } else {
            cmd & !CMD_MEMORY
        };
        config_write(host, device, CFG_COMMAND, cmd);
    }
}

/// Runs one Identify on the controller (its completion sends vector 0's
/// message); whether any of `lpis` followed within `wait_ms`.
fn complete_one(nvme: &mut Controller, lpis: &[u32], wait_ms: u64) -> Result<bool, Stop> {
    // SAFETY: the Identify data goes to the `Data` arena page, which no
    // Rust object occupies.
    unsafe { nvme.run(|cid| identify(cid, ipa(Page::Data), CNS_CONTROLLER))? };
    Ok(any_within(wait_ms, lpis))
}

/// Aims entry 0 at `address` with `data` and completes one command;
/// whether any of `lpis` followed within `wait_ms`.
fn send(
    nvme: &mut Controller,
    v: &Vector<'_>,
    (address, data): (u64, u32),
    lpis: &[u32],
    wait_ms: u64,
) -> Result<bool, Stop> {
    v.aim(address, data);
    complete_one(nvme, lpis, wait_ms)
}

/// Both LPIs the guest maps: a hostile message must raise neither.
const ANY: &[u32] = &[LPI, BEYOND_LPI];

fn checks(fdt: &Fdt<'_>, ram: (u64, u64)) -> Result<(), Stop> {
    let host = PciHost::from_fdt(fdt).ok_or(Stop::Dt(
        "no PCI host bridge (pci-host-ecam-generic) in the device tree",
    ))?;
    let mut nvme = Controller::open(&host)?;
    let device = nvme.device;
    let at = msi_cap::find(|off| config_read(&host, device, off), msix_cap::ID)
        .ok_or(Stop::Msix("the controller shows no MSI-X capability"))?;
    let layout = msix_cap::Layout::decode(
        config_read(&host, device, at),
        config_read(&host, device, at + 4),
        config_read(&host, device, at + 8),
    );
    if layout.table.bar != 0 || layout.pba.bar != 0 {
        return Err(Stop::Msix("the MSI-X table or PBA is not in BAR0"));
    }
    check(
        "msix-capability-shown",
        true,
        format_args!(
            "at {at:#x}: {} entries, table at BAR0 + {:#x}, PBA at BAR0 + {:#x}",
            layout.entries, layout.table.offset, layout.pba.offset
        ),
    );
    // The first event past the table: the ITT covers it, the grant not.
    let beyond = u32::from(layout.entries);
    let event_bits = (u32::BITS - beyond.leading_zeros()) as u8;
    let (dt, its_device, mut its) = setup_its(fdt, device, event_bits)?;
    let target = its.target;
    say!(
        "guest: nvme at 00:{:02x}.0, DeviceID {:#x}: event {} -> LPI {}",
        device,
        its_device,
        EVENT,
        LPI
    );
    let v = Vector {
        cap: Capability {
            host: &host,
            device,
            at,
        },
        layout,
        bar: nvme.bar0,
    };

    // MSI-X on with entry 0 masked, then the controller: its admin
    // completion queue interrupts through vector 0.
    v.mask(true);
    let control = v.cap.control();
    v.cap
        .set_control((control | msix_cap::ENABLE) & !msix_cap::FUNCTION_MASK);
    nvme.start(Interrupts::MsiX)?;

    let doorbell = dt.its + TRANSLATER;
    raises(
        "msix-raises-lpi",
        send(&mut nvme, &v, (doorbell, EVENT), &[LPI], MUST_MS)?,
    );

    v.mask(true);
    // The controller posts the completion, then signals the vector: the
    // bit may show a moment after the completion does.
    let raised = complete_one(&mut nvme, &[LPI], MUST_NOT_MS)?;
    let pending = eventually(|| v.pending());
    check(
        "msix-masked-entry-pends",
        !raised && pending,
        format_args!(
            "completed; {}, pending bit {}",
            if raised {
                "an interrupt followed"
            } else {
                "no interrupt"
            },
            u8::from(pending)
        ),
    );
    v.mask(false);
    let raised = lpi_within(MUST_MS);
    let pending = v.pending();
    check(
        "msix-unmask-delivers",
        raised && !pending,
        format_args!(
            "unmasked; {}, pending bit {}",
            if raised {
                "LPI 8192 taken"
            } else {
                "no LPI 8192"
            },
            u8::from(pending)
        ),
    );

    // Our own RAM: the data lands, nothing is raised.
    let sink = ipa(Page::Sink);
    // SAFETY: the sink page is ours (the arena), and nothing else uses it.
    unsafe { (sink as *mut u32).write_volatile(0) };
    barrier::dsb(barrier::SY);
    let raised = send(&mut nvme, &v, (sink, RAM_DATA), ANY, MUST_NOT_MS)?;
    // SAFETY: as above; the controller writes it (or not) by DMA.
    let read = || unsafe { (sink as *const u32).read_volatile() };
    eventually(|| read() == RAM_DATA);
    let landed = read();
    check(
        "msix-into-own-ram",
        landed == RAM_DATA && !raised,
        format_args!(
            "{landed:#x} at {sink:#x}, {}",
            if raised {
                "an interrupt followed"
            } else {
                "no interrupt"
            }
        ),
    );

    aim_outside(&dt, ram, "msix", |address, data| {
        send(&mut nvme, &v, (address, u32::from(data)), ANY, MUST_NOT_MS)
    })?;

    its.submit(&[
        cmd::mapti(its_device, beyond, BEYOND_LPI, 0),
        cmd::sync(target),
    ])?;
    say!(
        "guest: event {} (beyond the table's {} entries) -> LPI {}",
        beyond,
        layout.entries,
        BEYOND_LPI
    );
    quiet(
        "msix-event-beyond-grant",
        send(&mut nvme, &v, (doorbell, beyond), ANY, MUST_NOT_MS)?,
    );

    its.submit(&[cmd::discard(its_device, EVENT), cmd::sync(target)])?;
    quiet(
        "msix-after-discard",
        send(&mut nvme, &v, (doorbell, EVENT), ANY, MUST_NOT_MS)?,
    );

    // A mark in the masked entry's data, then memory decoding off.
    v.mask(true);
    v.set_field(2, DECODE_MARK);
    v.set_decode(false);
    let read_off = v.field(2);
    v.set_field(2, RAM_DATA);
    v.set_decode(true);
    let held = v.field(2);
    check(
        "msix-table-with-decode-off",
        read_off == u32::MAX && held == DECODE_MARK,
        format_args!("decode off: data read {read_off:#x}, write of {RAM_DATA:#x}; decode on: data {held:#x}"),
    );

    its.submit(&[cmd::mapti(its_device, EVENT, LPI, 0), cmd::sync(target)])?;
    raises(
        "msix-remapped-raises-lpi",
        send(&mut nvme, &v, (doorbell, EVENT), &[LPI], MUST_MS)?,
    );
    v.mask(true);
    v.cap.set_control(control & !msix_cap::ENABLE);
    nvme.stop()?;
    Ok(())
}
