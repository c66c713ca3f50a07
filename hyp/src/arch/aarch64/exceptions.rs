//! Rust side of the EL2 exception vectors.
//!
//! The hypervisor runs no guests yet, so every exception that reaches EL2 is
//! unexpected: it is reported with a decoded syndrome and the machine stops.

use crate::esr::Syndrome;
use aarch64_cpu::registers::{Readable, ESR_EL2, FAR_EL2};

/// Registers saved by `vectors.S`; the layout is fixed by that file.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// x0 to x30.
    pub x: [u64; 31],
    /// ELR_EL2: the return address.
    pub elr: u64,
    /// SPSR_EL2: the saved state.
    pub spsr: u64,
    _pad: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 272);

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

impl TrapFrame {
    /// All registers zero.
    pub const fn zeroed() -> Self {
        Self {
            x: [0; 31],
            elr: 0,
            spsr: 0,
            _pad: 0,
        }
    }
}

#[unsafe(no_mangle)]
extern "C" fn exception_entry(frame: &mut TrapFrame, vector: u64) {
    if (8..12).contains(&vector) {
        crate::vm::run::handle_trap(frame, vector);
        return;
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
    crate::stop(false);
}
