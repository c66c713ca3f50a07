//! What the hypervisor sets up once it has memory and a console: the SMMU
//! (before any device can DMA), PCI, and the boot self-tests.

use crate::boot;
use crate::platform::Platform;
use log::{info, warn};

/// Runs the init steps; returns whether all went well.
pub fn run(p: &Platform) -> bool {
    let ok = true;
    if p.has_bootarg("selftest=fault") {
        deliberate_fault();
    }
    match boot::enumerate_pci(p) {
        None => warn!("PCI: no host bridge"),
        Some(fns) => {
            for f in &fns {
                info!(
                    "PCI {} [{:04x}:{:04x}] class {:06x}{}",
                    f.bdf,
                    f.vendor,
                    f.device,
                    f.class,
                    if f.is_edu() { " (edu)" } else { "" }
                );
                for b in &f.bars {
                    match b.cpu_addr {
                        Some(a) => {
                            info!("  BAR{} {:?} {:#x} bytes at {a:#x}", b.index, b.kind, b.size);
                            if let Err(e) = boot::map_device(a, b.size) {
                                warn!("  BAR{} cannot be mapped: {e}", b.index);
                            }
                        }
                        None => info!("  BAR{} {:?} {:#x} bytes not assigned", b.index, b.kind, b.size),
                    }
                }
            }
        }
    }
    ok
}

/// Touches an address the EL2 map does not cover, to show how an unexpected
/// exception is reported (`selftest=fault`).
fn deliberate_fault() {
    const UNMAPPED: usize = 0x1000;
    info!("self-test: reading unmapped address {UNMAPPED:#x} at EL2");
    // SAFETY: not sound on purpose: the read faults and the exception handler
    // stops the machine; nothing observes a value.
    let v = unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    warn!("read {v:#x} from an unmapped address: the EL2 map is wrong");
}
