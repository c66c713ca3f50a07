//! What the hypervisor sets up once it has memory, a console and the GIC:
//! the SMMU (before any device can DMA), PCI, the ITS, and the boot
//! self-tests.

use crate::drivers::pci::{self, ConfigAccess, Function};
use crate::drivers::{iommu, its};
use crate::platform::Platform;
use crate::selftest;
use alloc::vec::Vec;
use log::{error, info, warn};
use spin::Mutex;

/// How the boot self-tests went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfTests {
    /// All passed, or none was asked for.
    Passed,
    /// At least one failed: the run ends with a failure status.
    Failed,
}

/// What the init steps leave for the VMs.
#[derive(Debug)]
pub struct Initialised {
    /// How the self-tests went.
    pub self_tests: SelfTests,
    /// The PCI functions found (for device assignment).
    pub functions: Vec<Function>,
}

/// Runs the init steps.
pub fn run(p: &Platform) -> Initialised {
    if p.has_bootarg("selftest=fault") {
        deliberate_fault();
    }
    // The SMMU comes first: from here on every stream aborts until assigned.
    if iommu::init(p) == iommu::Confinement::Refused {
        warn!("PCI: bus mastering stays off on every function: nothing can DMA");
    }

    let fns = match enumerate_pci(p) {
        None => {
            warn!("PCI: no host bridge");
            alloc::vec::Vec::new()
        }
        Some(fns) => fns,
    };
    for f in &fns {
        report_function(f);
    }
    if let Some(host) = iommu::get() {
        host.lock().register_pci(p, &fns);
    }
    let cpus = &p.cpus[..p.cpus.len().min(crate::vm::run::MAX_CPUS)];
    if let Err(e) = its::init(p, cpus, msi_events(p, &fns), lpi_id_bits(p)) {
        match e {
            its::ItsError::Absent => warn!("ITS: {e}: no MSIs"),
            _ => error!("ITS: {e}: no MSIs"),
        }
    }

    let mut ok = true;
    if p.has_bootarg("selftest=dma") {
        let edu = fns.iter().find(|f| f.is_edu());
        match (edu, iommu::get(), host_ecam(p)) {
            (None, _, _) => {
                warn!("self-test: no edu device (add -device edu,dma_mask=0xffffffffff)")
            }
            (Some(f), None, _) => {
                warn!("self-test: device assignment refused: edu {} stays unassigned, bus mastering off", f.bdf)
            }
            (Some(f), Some(host), Some(ecam)) => {
                ok = selftest::dma::run(&mut host.lock(), &ecam, f);
                for other in fns.iter().filter(|o| o.is_edu() && o.bdf != f.bdf) {
                    ok &= selftest::dma::probe_unowned(&mut host.lock(), &ecam, other);
                }
                if ok {
                    info!("self-test: DMA isolation through the SMMU: all checks passed");
                } else {
                    error!("self-test: DMA isolation through the SMMU: FAILED");
                }
            }
            (Some(_), Some(_), None) => unreachable!("a PCI function without a host bridge"),
        }
    }
    if p.has_bootarg("selftest=its") {
        ok &= selftest::its::run(p, &fns);
    }
    // The MSI self-tests drive an edu through the SMMU.
    type EduTest = fn(&Platform, &Mutex<iommu::HostIommu>, &dyn ConfigAccess, &Function) -> bool;
    let edu_tests: [(&str, &str, EduTest); 2] = [
        ("selftest=msi", "MSI", selftest::msi::run),
        ("selftest=vlpi", "direct-injection", selftest::vlpi::run),
    ];
    for (arg, what, test) in edu_tests {
        if !p.has_bootarg(arg) {
            continue;
        }
        let ecam = crate::vm::assign::host_config(p);
        match (fns.iter().find(|f| f.is_edu()), iommu::get(), ecam) {
            (Some(f), Some(host), Some(ecam)) => ok &= test(p, host, ecam, f),
            _ => {
                error!("self-test: the {what} self-test needs an edu device and an SMMU");
                ok = false;
            }
        }
    }
    Initialised {
        self_tests: if ok {
            SelfTests::Passed
        } else {
            SelfTests::Failed
        },
        functions: fns,
    }
}

fn report_function(f: &Function) {
    info!(
        "PCI {} [{:04x}:{:04x}] class {:06x}{}",
        f.bdf,
        f.vendor,
        f.device,
        f.class,
        if f.is_edu() { " (edu)" } else { "" }
    );
    if let Some(e) = &f.refused {
        warn!("PCI {e}; function refused: memory decode stays off, it cannot be assigned");
    }
    for b in &f.bars {
        match b.cpu_addr {
            Some(a) => {
                info!(
                    "  BAR{} {:?} {:#x} bytes at {a:#x}",
                    b.index, b.kind, b.size
                );
                if let Err(e) =
                    crate::arch::mmu::map(a, a + b.size, crate::arch::mmu::Mapping::Device)
                {
                    warn!("  BAR{} cannot be mapped: {e}", b.index);
                }
            }
            None => info!(
                "  BAR{} {:?} {:#x} bytes not assigned",
                b.index, b.kind, b.size
            ),
        }
    }
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

/// The INTID bits of the LPI tables: `lpi_id_bits=N` on the command line
/// (14 to 16: at least N for the physical LPIs, exactly N for the VMs'),
/// else the fewest, 14. Bare Linux on QEMU sizes its tables for 16, and
/// QEMU's redistributor walks the whole pending table on every LPI
/// acknowledge: `lpi_id_bits=16` makes the hypervisor pay the same, for
/// benchmarks that compare the two like for like.
fn lpi_id_bits(p: &Platform) -> u32 {
    let range = crate::gicv3::lpi::MIN_ID_BITS..=crate::gicv3::lpi::MAX_ID_BITS;
    match p.bootarg("lpi_id_bits") {
        None => *range.start(),
        Some(v) => match v.parse::<u32>() {
            Ok(bits) if range.contains(&bits) => {
                info!("LPIs: INTIDs of {bits} bits (lpi_id_bits={v})");
                bits
            }
            _ => {
                warn!(
                    "lpi_id_bits={v} ignored: {} to {} INTID bits",
                    range.start(),
                    range.end()
                );
                *range.start()
            }
        },
    }
}

/// The configuration space (ECAM) of `p`'s PCI host bridge, if it has one.
fn host_ecam(p: &Platform) -> Option<pci::Ecam> {
    let host = p.pci.as_ref()?;
    // SAFETY: the ECAM region from the DTB was mapped as a device by
    // boot::map_everything; the hypervisor alone accesses it.
    Some(unsafe { pci::Ecam::new(host.ecam.base, host.ecam.size, host.bus_range.0) })
}

/// The MSI and MSI-X events the functions `fns` can signal (each as many
/// as a grant can give it): what the physical ITS needs LPIs for.
fn msi_events(p: &Platform, fns: &[pci::Function]) -> u32 {
    let Some(ecam) = host_ecam(p) else {
        return 0;
    };
    fns.iter()
        .filter(|f| f.refused.is_none())
        .filter_map(|f| pci::message_signalled(&ecam, f.bdf))
        .map(|m| m.events().min(1 << crate::vdev::vits::EVENT_ID_BITS))
        .fold(0u32, u32::saturating_add)
}

/// Enumerates PCI on `p`.
fn enumerate_pci(p: &Platform) -> Option<Vec<pci::Function>> {
    let host = p.pci.as_ref()?;
    let ecam = host_ecam(p)?;
    Some(pci::enumerate(&ecam, host))
}
