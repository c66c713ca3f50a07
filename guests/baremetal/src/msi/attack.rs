//! `edu_msi_attack`: the guest programs its `edu`'s MSI capability, which
//! the hypervisor shows it, with hostile messages and has the device send
//! each (one 32-bit write of the data to the address, carrying the edu's
//! requester ID, through the SMMU). One check line each
//! (`crate::checks`):
//!
//! 1. `msi-capability-shown`: the edu's MSI capability is in its list.
//! 2. `msi-mme-clamped`: Multiple Message Enable does not go above what the
//!    function is capable of (the edu: one vector).
//! 3. `msi-raises-lpi`: aimed at the vITS doorbell with the mapped event,
//!    the message raises the guest's LPI: the path works.
//! 4. `msi-into-own-ram`: aimed at a page of the guest's RAM, the data
//!    lands there and no interrupt follows: a message is only a DMA write.
//! 5. `msi-outside-ram`, `msi-to-gicd-setspi`, `msi-to-its-control-frame`:
//!    aimed outside the guest's RAM (where another VM's memory could be),
//!    at GICD_SETSPI_NSR (which would raise an SPI by message) and at the
//!    ITS's command registers: no interrupt; the SMMU aborts each write
//!    (the scenario test checks the hypervisor's reports).
//! 6. `msi-event-beyond-grant`: the doorbell with an EventID beyond the
//!    one event the hypervisor granted: no interrupt.
//! 7. `msi-after-discard`: the doorbell with the event the guest discarded
//!    in its ITS: no interrupt.
//! 8. `msi-remapped-raises-lpi`: mapped again, the event raises the LPI
//!    again: the device and the path still work after the attacks.
//!
//! Every VM's doorbell is the same IPA, which the devices' stage 2 of each
//! VM maps to the one physical GITS_TRANSLATER: the physical ITS tells the
//! VMs apart by the requester ID the write carries, so "another VM's
//! doorbell" is this doorbell with events this device was not granted
//! (checks 6 and 7).
//!
//! What stops the checks early is a failed check `edu-msi-attack-ran`.

use super::hw::{ipa, lpi_within, setup, Page, Ready, Stop, EVENT, LPI_WAIT_MS};
use super::{cmd, msi_cap, ItsDt, LPI, TRANSLATER};
use crate::checks::check;
use crate::edu::{config_read, config_write, Edu, PciHost};
use crate::mmio;
use aarch64_cpu::asm::barrier;
use flat_device_tree::Fdt;

/// The GICv3 distributor's GICD_SETSPI_NSR: a write of an SPI's INTID
/// there makes it pending (message-based SPIs, §8.9.21).
const GICD_SETSPI_NSR: u64 = 0x40;
/// GICD_ISPENDR0: the set-pending bits, one per INTID.
const GICD_ISPENDR: u64 = 0x200;
/// GITS_CWRITER, in the ITS's control frame.
const GITS_CWRITER: u64 = 0x88;
/// The SPI the GICD_SETSPI_NSR message names.
const SPI: u16 = 40;
/// The data aimed at our own RAM.
const RAM_DATA: u16 = 0x5a5a;
/// How far past the end of RAM the "outside" message aims.
const OUTSIDE_GAP: u64 = 16 << 20;

/// Aims a message (through `send`, which reports whether an interrupt
/// followed) at each place outside what the device's stage 2 maps: past
/// the end of the guest's RAM (`ram`), GICD_SETSPI_NSR naming SPI 40 and
/// the ITS's GITS_CWRITER. One check each, `{prefix}-outside-ram`,
/// `{prefix}-to-gicd-setspi` and `{prefix}-to-its-control-frame`, passing
/// when nothing was raised (for the SPI: nor left pending).
pub(super) fn aim_outside<E>(
    dt: &ItsDt,
    ram: (u64, u64),
    prefix: &str,
    mut send: impl FnMut(u64, u16) -> Result<bool, E>,
) -> Result<(), E> {
    let outside = ram.0 + ram.1 + OUTSIDE_GAP;
    say!("guest: {} aimed at {:#x}, outside RAM", prefix, outside);
    quiet(
        format_args!("{prefix}-outside-ram"),
        send(outside, EVENT as u16)?,
    );
    let setspi = dt.gicd + GICD_SETSPI_NSR;
    say!("guest: {} aimed at {:#x}, GICD_SETSPI_NSR", prefix, setspi);
    let lpi = send(setspi, SPI)?;
    // The SPI is not enabled, but a message that reached the distributor
    // would have left it pending (GICD_ISPENDR<n>).
    let ispendr = dt.gicd + GICD_ISPENDR + 4 * u64::from(SPI / 32);
    // SAFETY: a 32-bit distributor register our device tree names; Device
    // memory.
    let pending = unsafe { mmio::read32(ispendr) } & (1 << (SPI % 32)) != 0;
    quiet(format_args!("{prefix}-to-gicd-setspi"), lpi || pending);
    let cwriter = dt.its + GITS_CWRITER;
    say!("guest: {} aimed at {:#x}, GITS_CWRITER", prefix, cwriter);
    quiet(
        format_args!("{prefix}-to-its-control-frame"),
        send(cwriter, 0x20)?,
    );
    Ok(())
}

/// Runs the checks; `ram` is the guest's RAM (base, size).
pub fn run(fdt: &Fdt<'_>, ram: (u64, u64)) {
    if let Err(why) = checks(fdt, ram) {
        check("edu-msi-attack-ran", false, why);
    }
}

/// A capability of bus 0 `device`, at `at` in its configuration space.
pub(super) struct Capability<'a> {
    pub host: &'a PciHost,
    pub device: u8,
    pub at: u16,
}

impl Capability<'_> {
    /// Its first dword: ID, next pointer, Message Control.
    pub fn control(&self) -> u32 {
        config_read(self.host, self.device, self.at)
    }

    pub fn set_control(&self, v: u32) {
        config_write(self.host, self.device, self.at, v)
    }
}

/// The edu's MSI capability, as the guest programs it.
type Msi<'a> = Capability<'a>;

impl Msi<'_> {
    /// Disables MSI, writes the message, enables it (one vector).
    fn aim(&self, address: u64, data: u16) {
        let control = self.control();
        self.set_control(control & !(msi_cap::ENABLE | msi_cap::MME));
        if let Some(dwords) = msi_cap::message(control, address, data) {
            for (off, v) in dwords {
                config_write(self.host, self.device, self.at + off, v);
            }
        }
        self.set_control((control & !msi_cap::MME) | msi_cap::ENABLE);
    }
}

/// Sends one message aimed at `address` with `data`; whether LPI 8192
/// followed within `wait_ms`.
fn send(edu: &Edu, msi: &Msi<'_>, address: u64, data: u16, wait_ms: u64) -> bool {
    msi.aim(address, data);
    edu.signal();
    lpi_within(wait_ms)
}

/// A check that the message raised LPI 8192: `raised` passes.
pub(super) fn raises(name: &str, raised: bool) {
    check(
        name,
        raised,
        if raised {
            "LPI 8192 taken"
        } else {
            "no LPI 8192"
        },
    );
}

/// A check that nothing was raised: `raised` false passes.
pub(super) fn quiet(name: impl core::fmt::Display, raised: bool) {
    check(
        name,
        !raised,
        if raised {
            "issued; an interrupt followed"
        } else {
            "issued; no interrupt"
        },
    );
}

fn checks(fdt: &Fdt<'_>, ram: (u64, u64)) -> Result<(), Stop> {
    let Ready {
        dt,
        host,
        edu,
        device,
        mut its,
    } = setup(fdt)?;
    let target = its.target;
    let at =
        msi_cap::find(|off| config_read(&host, edu.device, off), msi_cap::ID).ok_or(Stop::NoMsi)?;
    let msi = Msi {
        host: &host,
        device: edu.device,
        at,
    };
    let control = msi.control();
    check(
        "msi-capability-shown",
        true,
        format_args!(
            "at {at:#x}, {}-bit address, {} vector(s) capable",
            if control & msi_cap::ADDR64 != 0 {
                64
            } else {
                32
            },
            1 << ((control >> 17) & 7)
        ),
    );

    msi.set_control(control | msi_cap::MME);
    let mme = (msi.control() & msi_cap::MME) >> 20;
    let mmc = (control >> 17) & 7;
    check(
        "msi-mme-clamped",
        mme <= mmc,
        format_args!("asked 32 vectors, enabled {}", 1 << mme),
    );
    msi.set_control(control);

    let doorbell = dt.its + TRANSLATER;
    raises(
        "msi-raises-lpi",
        send(&edu, &msi, doorbell, EVENT as u16, LPI_WAIT_MS),
    );

    // Our own RAM: the data lands, nothing is raised.
    let sink = ipa(Page::Sink);
    // SAFETY: the sink page is ours (the arena), and nothing else uses it.
    unsafe { (sink as *mut u32).write_volatile(0) };
    barrier::dsb(barrier::SY);
    let raised = send(&edu, &msi, sink, RAM_DATA, LPI_WAIT_MS / 4);
    barrier::dsb(barrier::SY);
    // SAFETY: as above; the device wrote it (or not) by DMA.
    let landed = unsafe { (sink as *const u32).read_volatile() };
    check(
        "msi-into-own-ram",
        landed == u32::from(RAM_DATA) && !raised,
        format_args!(
            "{landed:#x} at {sink:#x}, {}",
            if raised {
                "an interrupt followed"
            } else {
                "no interrupt"
            }
        ),
    );

    aim_outside(&dt, ram, "msi", |address, data| {
        Ok::<_, Stop>(send(&edu, &msi, address, data, LPI_WAIT_MS / 4))
    })?;

    quiet(
        "msi-event-beyond-grant",
        send(&edu, &msi, doorbell, EVENT as u16 + 1, LPI_WAIT_MS / 4),
    );

    its.submit(&[cmd::discard(device, EVENT), cmd::sync(target)])?;
    quiet(
        "msi-after-discard",
        send(&edu, &msi, doorbell, EVENT as u16, LPI_WAIT_MS / 4),
    );

    its.submit(&[cmd::mapti(device, EVENT, LPI, 0), cmd::sync(target)])?;
    raises(
        "msi-remapped-raises-lpi",
        send(&edu, &msi, doorbell, EVENT as u16, LPI_WAIT_MS),
    );
    msi.set_control(control & !msi_cap::ENABLE);
    Ok(())
}
