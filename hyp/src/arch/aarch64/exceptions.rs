//! Rust side of the EL2 exception vectors.
//!
//! Traps from a guest (lower EL, AArch64) go to the handler the VM runtime
//! registered with [`set_guest_trap_handler`]; anything else that reaches
//! EL2 is a hypervisor bug: it is reported with a decoded syndrome and the
//! machine stops.

use super::super::TrapFrame;
use crate::esr::Syndrome;
use aarch64_cpu::registers::{Readable, ESR_EL2, FAR_EL2};
use spin::Once;

const VECTOR_NAMES: [&str; 16] = [
    "synchronous, current EL with SP_EL0",
    "IRQ, current EL with SP_EL0",
    "FIQ, current EL with SP_EL0",
    "SError, current EL with SP_EL0",
    "synchronous, current EL",
    "IRQ, current EL",
    "FIQ, current EL",
    "SError, current EL",
    "synchronous, lower EL (AArch64)",
    "IRQ, lower EL (AArch64)",
    "FIQ, lower EL (AArch64)",
    "SError, lower EL (AArch64)",
    "synchronous, lower EL (AArch32)",
    "IRQ, lower EL (AArch32)",
    "FIQ, lower EL (AArch32)",
    "SError, lower EL (AArch32)",
];

/// Handles a trap from a guest: the frame and the vector index (8
/// synchronous, 9 IRQ, 10 FIQ, 11 SError).
pub type GuestTrapHandler = fn(&mut TrapFrame, u64);

static GUEST_TRAP: Once<GuestTrapHandler> = Once::new();
static STOP: Once<fn(bool) -> !> = Once::new();

/// Sets the handler of traps from guests (once, before any guest runs).
pub fn set_guest_trap_handler(handler: GuestTrapHandler) {
    GUEST_TRAP.call_once(|| handler);
}

/// Sets how the machine stops after an unexpected exception (the boot
/// code's power-off with a failure status); until then the CPU halts.
pub fn set_fatal_stop(stop: fn(bool) -> !) {
    STOP.call_once(|| stop);
}

#[unsafe(no_mangle)]
extern "C" fn exception_entry(frame: &mut TrapFrame, vector: u64) {
    if (8..12).contains(&vector) {
        if let Some(handler) = GUEST_TRAP.get() {
            handler(frame, vector);
            return;
        }
    }
    let esr = Syndrome(ESR_EL2.get());
    let far = FAR_EL2.get();
    let name = VECTOR_NAMES.get(vector as usize).copied().unwrap_or("?");
    crate::console::emergency_write_fmt(format_args!(
        "\nFATAL: unexpected exception on CPU {:#x} ({name})\n  {esr}\n  FAR_EL2={far:#018x} ELR_EL2={:#018x} SPSR_EL2={:#x}\n  x0={:#x} x1={:#x} x2={:#x} x30={:#x}\n",
        super::mpidr(),
        frame.elr,
        frame.spsr,
        frame.x[0],
        frame.x[1],
        frame.x[2],
        frame.x[30],
    ));
    match STOP.get() {
        Some(stop) => stop(false),
        None => super::halt(),
    }
}
