//! `nvme_fault_flood=SECONDS`: a continuous DMA faulter built on an NVMe
//! controller (QEMU's `nvme`, 1b36:0010, class 01:08:02).
//!
//! QEMU's `edu` moves one page per 100 ms of virtual time, far too slow to
//! flood anything. An NVMe controller runs admin commands as fast as they
//! are submitted, and every one with a data buffer is a DMA. The guest
//! brings the controller up with an admin queue pair in its own RAM, then
//! keeps the submission queue full of commands whose data pointer (PRP1)
//! lies 256 MiB past the end of its RAM: every command is a DMA write the
//! SMMU aborts. By default each is a Get Log Page (opcode 02h) of one
//! dword of the Error Information log: one 4-byte write, one faulting
//! access, so the faults come as fast as the controller runs commands.
//! With `nvme_flood_identify` each is an Identify (opcode 06h, CNS 01h:
//! the 4 KiB Identify Controller data structure) instead, a page-sized
//! write. With `nvme_flood_own` PRP1 is a page of its own RAM: the same
//! commands without a fault (the reference a measurement compares with).
//! It reaps the completions, counts their status codes, and stops after
//! SECONDS of its virtual counter or when a key arrives on its console,
//! whichever comes first.
//!
//! It never waits unboundedly: for the controller's ready state as long as
//! CAP.TO allows, for a completion at most
//! [`COMMAND_TIMEOUT_MS`](crate::nvme::COMMAND_TIMEOUT_MS). Its one
//! check line, `nvme-flood-ran`, says how many commands it submitted and
//! reaped and which status codes came back.
//!
//! The controller is driven by [`crate::nvme`]. The pure parts (the
//! commands, the status tally, the outcome line) are compiled on the host
//! too, for their unit tests.

use crate::nvme::{get_log_page, identify, Status, CNS_CONTROLLER, LID_ERROR_INFORMATION};
use core::fmt;

/// Distance past the end of RAM of the buffer the faulting commands name.
pub const OUTSIDE_GAP: u64 = 256 << 20;

/// The admin command the flood submits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodCommand {
    /// Get Log Page of one dword of the Error Information log: a 4-byte
    /// DMA write, one faulting access per command.
    LogDword,
    /// Identify Controller: a 4 KiB DMA write per command.
    Identify,
}

impl FloodCommand {
    /// The command as a submission queue entry.
    pub fn sqe(self, cid: u16, prp1: u64) -> [u32; 16] {
        match self {
            Self::LogDword => get_log_page(cid, prp1, LID_ERROR_INFORMATION, 1),
            Self::Identify => identify(cid, prp1, CNS_CONTROLLER),
        }
    }
}

impl fmt::Display for FloodCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LogDword => "Get Log Page commands (4 bytes each)",
            Self::Identify => "Identify commands (4 KiB each)",
        })
    }
}

/// How many completions came back with each status (the first
/// [`Tally::KINDS`] distinct ones; the rest counted together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    kinds: [(Status, u64); Tally::KINDS],
    used: usize,
    others: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            kinds: [(Status::SUCCESS, 0); Tally::KINDS],
            used: 0,
            others: 0,
        }
    }
}

impl Tally {
    /// Distinct statuses kept apart.
    pub const KINDS: usize = 6;

    /// Counts one completion with `status`.
    pub fn add(&mut self, status: Status) {
        if let Some(k) = self.kinds[..self.used].iter_mut().find(|k| k.0 == status) {
            k.1 += 1;
        } else if self.used < Self::KINDS {
            self.kinds[self.used] = (status, 1);
            self.used += 1;
        } else {
            self.others += 1;
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.used == 0 {
            return write!(f, "no status");
        }
        for (i, (status, n)) in self.kinds[..self.used].iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{status} x{n}")?;
        }
        if self.others > 0 {
            write!(f, ", other statuses x{}", self.others)?;
        }
        Ok(())
    }
}

/// What the flood did, for its check line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Commands submitted.
    pub submitted: u64,
    /// Completions reaped.
    pub reaped: u64,
    /// How long it flooded, in ms of the virtual counter.
    pub ms: u64,
    /// The data pointer every command named.
    pub prp1: u64,
    /// The completions' statuses.
    pub statuses: Tally,
}

impl Outcome {
    /// Whether every command came back.
    pub fn complete(&self) -> bool {
        self.submitted > 0 && self.reaped == self.submitted
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} commands submitted, {} completions reaped, {} ms, PRP1 {:#x}; status: {}",
            self.submitted, self.reaped, self.ms, self.prp1, self.statuses
        )
    }
}

#[cfg(target_os = "none")]
pub use hw::run;

#[cfg(target_os = "none")]
mod hw {
    //! The flood on the controller.

    use super::*;
    use crate::arena::Arena;
    use crate::checks::check;
    use crate::edu::{host_or_report, PciHost};
    use crate::nvme::{Controller, Interrupts, NvmeError, COMMAND_TIMEOUT_MS};
    use crate::time;
    use flat_device_tree::Fdt;

    /// How often the flood looks at its console for a key.
    const KEY_POLL_MS: u64 = 10;

    /// The buffer of `nvme_flood_own`.
    static OWN: Arena<1> = Arena::new();

    /// Runs the flood; its check line `nvme-flood-ran` says how it went.
    pub fn run(fdt: &Fdt<'_>, ram: (u64, u64), seconds: u64, own: bool, command: FloodCommand) {
        let Some(host) = host_or_report(fdt, "nvme-flood-ran") else {
            return;
        };
        match flood(&host, ram, seconds, own, command) {
            Ok(outcome) => check("nvme-flood-ran", outcome.complete(), outcome),
            Err(stop) => check("nvme-flood-ran", false, stop),
        };
    }

    fn flood(
        host: &PciHost,
        ram: (u64, u64),
        seconds: u64,
        own: bool,
        command: FloodCommand,
    ) -> Result<Outcome, NvmeError> {
        let mut nvme = Controller::open(host)?;
        nvme.start(Interrupts::Polled)?;
        let prp1 = if own {
            OWN.page(0)
        } else {
            ram.0 + ram.1 + OUTSIDE_GAP
        };
        say!(
            "guest: flooding for {} s: {} with PRP1 {:#x} ({})",
            seconds,
            command,
            prp1,
            if own { "own RAM" } else { "outside RAM" }
        );
        let mut outcome = Outcome {
            submitted: 0,
            reaped: 0,
            ms: 0,
            prp1,
            statuses: Tally::default(),
        };
        let (duration, timeout) = (
            time::ms_to_ticks(seconds.saturating_mul(1000)),
            time::ms_to_ticks(COMMAND_TIMEOUT_MS),
        );
        let key_poll = time::ms_to_ticks(KEY_POLL_MS);
        let start = time::now();
        let (mut last_progress, mut last_key_poll) = (start, start);
        let mut stopping = false;
        loop {
            // The time before looking at the queue: a completion that came
            // while this vCPU was not running (a loaded host) is seen
            // before the timeout is judged.
            let now = time::now();
            let mut reaped = 0;
            while let Some(c) = nvme.reap() {
                outcome.statuses.add(c.status);
                reaped += 1;
            }
            if reaped > 0 {
                outcome.reaped += reaped;
                last_progress = now;
                nvme.release();
            }
            if !stopping && now.wrapping_sub(last_key_poll) >= key_poll {
                last_key_poll = now;
                stopping = crate::console::try_read().is_some();
            }
            stopping = stopping || now.wrapping_sub(start) >= duration;
            if stopping && nvme.outstanding() == 0 {
                break;
            }
            if !stopping && nvme.can_submit() {
                if nvme.outstanding() == 0 {
                    last_progress = now;
                }
                while nvme.can_submit() {
                    // SAFETY: PRP1 is the arena page `OWN`, which no Rust
                    // object occupies, or lies outside our RAM.
                    unsafe { nvme.queue(|cid| command.sqe(cid, prp1)) };
                    outcome.submitted += 1;
                }
                nvme.ring();
            }
            if reaped == 0 && nvme.outstanding() > 0 && now.wrapping_sub(last_progress) > timeout {
                return Err(nvme.stalled());
            }
        }
        outcome.ms = time::ticks_to_ms(time::now().wrapping_sub(start));
        // A clean stop: the controller idle and disabled.
        nvme.stop()?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_commands() {
        assert_eq!(
            FloodCommand::Identify.sqe(0x1234, 0x9100_0000),
            identify(0x1234, 0x9100_0000, CNS_CONTROLLER)
        );
        assert_eq!(
            FloodCommand::LogDword.sqe(7, 0x9100_0000),
            get_log_page(7, 0x9100_0000, LID_ERROR_INFORMATION, 1)
        );
    }

    /// CAP of QEMU 10's `nvme`: MQES 0x7ff, CQR, TO 0xf, DSTRD 0, CSS NVM
    /// (and I/O command sets), MPSMIN 0, MPSMAX 4.
    const QEMU_CAP: u64 = 0x0040_0020_0f01_07ff;

    #[test]
    fn tally_counts_statuses() {
        let mut t = Tally::default();
        assert_eq!(t.to_string(), "no status");
        for _ in 0..3 {
            t.add(Status(0x4004));
        }
        t.add(Status::SUCCESS);
        assert_eq!(
            t.to_string(),
            "data transfer error (SCT 0 SC 0x04, DNR) x3, success (SCT 0 SC 0x00) x1"
        );
        for sc in 0..10 {
            t.add(Status(0x10 + sc));
        }
        // Four more kinds fit; the other six are counted together.
        assert!(t.to_string().ends_with(" x1, other statuses x6"), "{t}");
    }

    #[test]
    fn outcome_line() {
        let mut statuses = Tally::default();
        statuses.add(Status(0x4002));
        let o = Outcome {
            submitted: 1,
            reaped: 1,
            ms: 20,
            prp1: 0x9100_0000,
            statuses,
        };
        assert!(o.complete());
        assert_eq!(
            o.to_string(),
            "1 commands submitted, 1 completions reaped, 20 ms, PRP1 0x91000000; \
             status: invalid field (SCT 0 SC 0x02, DNR) x1"
        );
        assert!(!Outcome { reaped: 0, ..o }.complete());
        assert!(!Outcome {
            submitted: 0,
            reaped: 0,
            ..o
        }
        .complete());
    }
}
