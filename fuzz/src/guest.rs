//! The `guest` target: everything a guest's vCPU can make the hypervisor
//! decode, through the hypervisor's own trap dispatcher
//! (`hyp::harness::GuestHarness`): any syndrome (ESR_EL2, HPFAR_EL2,
//! FAR_EL2) and register state, with data aborts steered at the emulated
//! devices (vUART, vGIC distributor and redistributors, counters page, the
//! PCI host bridge's configuration space over a function whose own
//! configuration space is also the fuzzer's), hypercalls steered at PSCI
//! and SMCCC, and system register traps. The harness checks the
//! architecture's rules after every trap (where the vCPU resumes, what an
//! injected exception looks like, which vCPUs may start, that a stopped VM
//! stays stopped); this target adds that the hypervisor's log stays bounded
//! whatever the guest does.

use hyp::harness::{capture_log, log_lines, GuestHarness, Trap, MAX_LOG_LINES, RAM_BASE};
use scenario::guest_layout as layout;

use crate::bytes::Reader;

/// Most traps taken from one input.
const MAX_TRAPS: usize = 256;

/// Where a steered data abort goes: every device, its neighbourhood, and
/// addresses nothing claims.
const TARGETS: [u64; 10] = [
    layout::UART_BASE,
    layout::RTC_BASE,
    layout::GICD_BASE,
    layout::GICR_BASE,
    layout::GICR_BASE + 0x1_0000,
    layout::COUNTERS_BASE,
    layout::PCI_ECAM_BASE,
    layout::PCI_ECAM_BASE + (1 << 15),
    layout::VSMMU_BASE,
    RAM_BASE,
];

/// PSCI and SMCCC function IDs to steer hypercalls at (and one unknown).
const FUNCTIONS: [u32; 12] = [
    0x8000_0000,
    0x8000_0001,
    0x8400_0000,
    0xc400_0001,
    0x8400_0002,
    0xc400_0003,
    0x8400_0003,
    0xc400_0004,
    0x8400_0006,
    0x8400_0008,
    0x8400_0009,
    0x8400_000a,
];

/// SPSR_EL2.M values: EL1h, EL1t, EL0.
const MODES: [u64; 3] = [0x3c5, 0x3c4, 0x0];

/// Runs one input: the `guest` fuzz target.
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let config = r.bytes(64);
    let mut h = GuestHarness::new(&config);
    capture_log();
    for _ in 0..MAX_TRAPS {
        if r.is_empty() {
            break;
        }
        let t = trap(&mut r);
        h.trap(&t);
    }
    let lines = log_lines();
    assert!(
        lines.len() <= MAX_LOG_LINES,
        "a guest made the hypervisor log {} lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

fn trap(r: &mut Reader<'_>) -> Trap {
    let kind = r.u8();
    let mut t = Trap {
        vcpu: usize::from(r.u8()),
        elr: RAM_BASE + u64::from(r.u16()) * 4,
        spsr: match r.u8() % 4 {
            3 => r.u64(),
            m => MODES[usize::from(m)],
        },
        vbar: RAM_BASE + u64::from(r.u8()) * 0x800,
        ..Trap::default()
    };
    for x in t.x.iter_mut().take(4) {
        *x = r.u64();
    }
    match kind % 6 {
        // A data abort at a device (valid syndrome).
        0 | 1 => {
            let base = TARGETS[usize::from(r.u8()) % TARGETS.len()];
            let ipa = base.wrapping_add(u64::from(r.u16()));
            let sas = u64::from(r.u8() % 4);
            let reg = u64::from(r.u8() % 32);
            let flags = u64::from(r.u8());
            t.esr = (0x24 << 26)
                | (1 << 25)
                | (1 << 24)
                | (sas << 22)
                | ((flags & 1) << 21)
                | (reg << 16)
                | (((flags >> 1) & 1) << 15)
                | (((flags >> 2) & 1) << 6)
                | 0x07;
            t.hpfar = (ipa >> 12) << 4;
            t.far = ipa & 0xfff;
            if reg < 31 {
                t.x[reg as usize] = r.u64();
            }
        }
        // A hypercall, steered at PSCI/SMCCC.
        2 => {
            t.esr = (0x16 << 26) | (1 << 25);
            let f = r.u8();
            t.x[0] = match FUNCTIONS.get(usize::from(f) % 13) {
                Some(&id) => u64::from(id),
                None => t.x[0],
            };
            if f & 0x80 != 0 {
                // CPU_ON into RAM, sometimes.
                t.x[2] = RAM_BASE + u64::from(r.u16()) * 4;
            }
        }
        // A trapped system register access.
        3 => t.esr = (0x18 << 26) | (1 << 25) | u64::from(r.u32() & 0x1ff_ffff),
        // WFI.
        4 => t.esr = (0x01 << 26) | (1 << 25),
        // Anything at all.
        _ => {
            t.esr = r.u64() & 0xffff_ffff;
            t.hpfar = r.u64();
            t.far = r.u64();
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_short_inputs_run() {
        run(&[]);
        run(&[0; 100]);
        run(&[1; 300]);
    }

    #[test]
    fn a_flood_of_bad_accesses_keeps_the_log_bounded() {
        // Every trap a data abort at RAM_BASE + 0x10000.. (nothing there).
        let mut data = std::vec![0u8; 64];
        for _ in 0..200 {
            data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
            data.extend_from_slice(&[0u8; 32]);
            data.extend_from_slice(&[8, 0xff, 0xff, 2, 1, 0]);
            data.extend_from_slice(&[0u8; 8]);
        }
        run(&data);
    }
}
