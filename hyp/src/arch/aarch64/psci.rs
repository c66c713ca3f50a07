//! PSCI calls to the firmware (QEMU's built-in PSCI on `virt`).

use crate::platform::PsciConduit;
use smccc::{psci, Hvc, Smc};

/// Starts the CPU with affinity `mpidr` at `entry` with x0 = `context`.
pub fn cpu_on(
    conduit: PsciConduit,
    mpidr: u64,
    entry: u64,
    context: u64,
) -> Result<(), psci::Error> {
    match conduit {
        PsciConduit::Smc => psci::cpu_on::<Smc>(mpidr, entry, context),
        PsciConduit::Hvc => psci::cpu_on::<Hvc>(mpidr, entry, context),
    }
}

/// Powers the machine off. Returns only if the firmware refused.
pub fn system_off(conduit: PsciConduit) -> Result<(), psci::Error> {
    match conduit {
        PsciConduit::Smc => psci::system_off::<Smc>(),
        PsciConduit::Hvc => psci::system_off::<Hvc>(),
    }
}
