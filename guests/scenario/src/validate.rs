//! The rules a scenario follows before any guest runs. Each one reports the
//! VM and the line of its `[[vm]]` header.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::bundle;
use crate::error::{ErrorKind, ScenarioError, Section, Size};
use crate::guest_layout::{self, RAM_END, RAM_MIN};
use crate::{PciAddr, Scenario, VmSpec, HYP_RESERVE, MAX_NAME, VM_MEMORY_ALIGN};

fn machine_err(kind: ErrorKind) -> ScenarioError {
    ScenarioError::new(0, Some(Section::Machine), kind)
}

pub(crate) fn validate(s: &Scenario) -> Result<(), ScenarioError> {
    let m = &s.machine;
    if m.cpus == 0 {
        return Err(machine_err(ErrorKind::NoCpus));
    }
    if m.memory == 0 || !m.memory.is_multiple_of(1 << 20) {
        return Err(machine_err(ErrorKind::MachineMemory(Size(m.memory))));
    }
    if m.machine.is_empty() {
        return Err(machine_err(ErrorKind::Empty("machine")));
    }
    if m.cpu.is_empty() {
        return Err(machine_err(ErrorKind::Empty("cpu")));
    }

    // (function, VM that has it), over all VMs so far.
    let mut owners: Vec<(PciAddr, &str)> = Vec::new();
    for (i, vm) in s.vms.iter().enumerate() {
        let e = |kind| ScenarioError::new(vm.line, Some(vm.section(i + 1)), kind);
        check_name(vm).map_err(e)?;
        if let Some(first) = s.vms[..i].iter().find(|o| o.name == vm.name) {
            return Err(e(ErrorKind::DuplicateName {
                first_line: first.line,
            }));
        }
        check_vm(vm).map_err(e)?;
        for d in &vm.devices {
            let addr = PciAddr::parse(d).ok_or_else(|| e(ErrorKind::BadPciAddress(d.clone())))?;
            if let Some((_, owner)) = owners.iter().find(|(a, _)| *a == addr) {
                return Err(e(if *owner == vm.name {
                    ErrorKind::DeviceListedTwice(addr.to_string())
                } else {
                    ErrorKind::DeviceInTwoVms {
                        device: addr.to_string(),
                        first: String::from(*owner),
                        second: vm.name.clone(),
                    }
                }));
            }
            owners.push((addr, &vm.name));
        }
    }

    let vcpus: u64 = s.vms.iter().map(|v| u64::from(v.cpus)).sum();
    if vcpus > u64::from(m.cpus) {
        return Err(machine_err(ErrorKind::TooManyVcpus {
            needed: vcpus,
            have: m.cpus,
        }));
    }
    let memory = s
        .vms
        .iter()
        .fold(0u64, |acc, v| acc.saturating_add(v.memory));
    if memory.saturating_add(HYP_RESERVE) > m.memory {
        return Err(machine_err(ErrorKind::TooMuchMemory {
            needed: Size(memory),
            reserve: Size(HYP_RESERVE),
            have: Size(m.memory),
        }));
    }
    Ok(())
}

fn check_name(vm: &VmSpec) -> Result<(), ErrorKind> {
    let n = &vm.name;
    if n.is_empty() {
        return Err(ErrorKind::Empty("name"));
    }
    if !n
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ErrorKind::BadName(n.clone()));
    }
    if n.len() > MAX_NAME {
        return Err(ErrorKind::NameTooLong(n.clone()));
    }
    Ok(())
}

fn check_vm(vm: &VmSpec) -> Result<(), ErrorKind> {
    if vm.cpus == 0 {
        return Err(ErrorKind::NoCpus);
    }
    if vm.cpus > guest_layout::MAX_VCPUS {
        return Err(ErrorKind::TooManyVcpusForGic {
            cpus: vm.cpus,
            max: guest_layout::MAX_VCPUS,
        });
    }
    if vm.memory < VM_MEMORY_ALIGN {
        return Err(ErrorKind::MemoryTooSmall(Size(vm.memory)));
    }
    if !vm.memory.is_multiple_of(VM_MEMORY_ALIGN) {
        return Err(ErrorKind::MemoryUnaligned(Size(vm.memory)));
    }
    if !vm.ram_base.is_multiple_of(VM_MEMORY_ALIGN) {
        return Err(ErrorKind::RamBaseUnaligned(vm.ram_base));
    }
    let start = vm.ram_base;
    let end = vm.ram_base.saturating_add(vm.memory);
    for d in guest_layout::devices(vm.cpus) {
        if d.overlaps(start, end) {
            return Err(ErrorKind::RamOverlapsDevice {
                start,
                end,
                device: d.name,
                dev_start: d.base,
                dev_end: d.end(),
            });
        }
    }
    if start < RAM_MIN || end > RAM_END || vm.ram().is_none() {
        return Err(ErrorKind::RamOutOfRange {
            start,
            end,
            min: RAM_MIN,
            max: RAM_END,
        });
    }
    for (key, path) in [("kernel", Some(&vm.kernel)), ("initrd", vm.initrd.as_ref())] {
        let Some(path) = path else { continue };
        let why = if path.is_empty() {
            Some("is empty")
        } else if path.len() > bundle::NAME_MAX {
            Some("is longer than the 4095 bytes a boot bundle entry name holds")
        } else if path == bundle::SCENARIO || path.contains('\0') {
            Some("is not a usable file name")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ErrorKind::BadImagePath {
                key,
                path: path.clone(),
                why,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Machine;
    use alloc::format;
    use alloc::vec;

    fn vm(name: &str, cpus: u32, memory: u64) -> VmSpec {
        VmSpec {
            name: name.into(),
            cpus,
            memory,
            ram_base: RAM_MIN,
            kernel: "target/guests/linux/Image".into(),
            initrd: None,
            cmdline: String::new(),
            devices: vec![],
            vsmmu: false,
            on_reset: crate::Lifecycle::Restart,
            on_poweroff: crate::Lifecycle::Stop,
            line: 10,
        }
    }

    fn scenario(vms: Vec<VmSpec>) -> Scenario {
        Scenario {
            machine: Machine {
                cpus: 4,
                memory: 2 << 30,
                cpu: "max".into(),
                smmu: true,
                machine: "virt".into(),
                devices: vec![],
                qemu_args: vec![],
                bootargs: String::new(),
                gic_version: 3,
                msi_delivery: None,
                cpu_stage2: crate::CpuStage2::Pages,
            },
            vms,
        }
    }

    fn error(s: &Scenario) -> String {
        s.validate().unwrap_err().to_string()
    }

    const M: u64 = 1 << 20;

    #[test]
    fn a_good_scenario_passes() {
        let mut b = vm("bare-1", 2, 64 * M);
        b.ram_base = 0x8000_0000;
        let s = scenario(vec![vm("linux", 2, 512 * M), b]);
        s.validate().unwrap();
        scenario(vec![]).validate().unwrap();
    }

    #[test]
    fn names_are_unique_nonempty_short_and_plain() {
        assert_eq!(
            error(&scenario(vec![vm("", 1, 2 * M)])),
            "line 10: vm \"\": name must not be empty"
        );
        assert_eq!(
            error(&scenario(vec![vm("my vm", 1, 2 * M)])),
            "line 10: vm \"my vm\": name \"my vm\" may contain only letters, digits, '-' and '_'"
        );
        let long = "a".repeat(17);
        assert_eq!(
            error(&scenario(vec![vm(&long, 1, 2 * M)])),
            format!("line 10: vm \"{long}\": name \"{long}\" is longer than 16 characters")
        );
        scenario(vec![vm(&"a".repeat(16), 1, 2 * M)])
            .validate()
            .unwrap();
        let mut second = vm("linux", 1, 2 * M);
        second.line = 20;
        assert_eq!(
            error(&scenario(vec![vm("linux", 1, 2 * M), second])),
            "line 20: vm \"linux\": name already used by the VM on line 10"
        );
    }

    #[test]
    fn vm_needs_a_cpu() {
        assert_eq!(
            error(&scenario(vec![vm("a", 0, 2 * M)])),
            "line 10: vm \"a\": cpus must be at least 1"
        );
    }

    #[test]
    fn vm_memory_is_2mib_granular() {
        assert_eq!(
            error(&scenario(vec![vm("a", 1, M)])),
            "line 10: vm \"a\": memory 1 MiB is less than 2 MiB"
        );
        assert_eq!(
            error(&scenario(vec![vm("a", 1, 0)])),
            "line 10: vm \"a\": memory 0 bytes is less than 2 MiB"
        );
        assert_eq!(
            error(&scenario(vec![vm("a", 1, 3 * M)])),
            "line 10: vm \"a\": memory 3 MiB is not a multiple of 2 MiB"
        );
        let mut v = vm("a", 1, 2 * M);
        v.ram_base = RAM_MIN + 0x1000;
        assert_eq!(
            error(&scenario(vec![v])),
            "line 10: vm \"a\": ram_base 0x40001000 is not 2 MiB aligned"
        );
    }

    #[test]
    fn vcpus_fit_the_machine() {
        // Exactly the machine's CPUs is fine: CPU 0 hosts a vCPU and the console.
        scenario(vec![vm("a", 2, 2 * M), vm("b", 2, 2 * M)])
            .validate()
            .unwrap();
        assert_eq!(
            error(&scenario(vec![vm("a", 2, 2 * M), vm("b", 3, 2 * M)])),
            "machine: the VMs need 5 vCPUs in all, the machine has 4 CPUs (each vCPU is pinned to its own CPU)"
        );
        let mut s = scenario(vec![vm("a", guest_layout::MAX_VCPUS + 1, 2 * M)]);
        s.machine.cpus = 512;
        assert_eq!(
            error(&s),
            "line 10: vm \"a\": 124 vCPUs is more than the guest's GIC redistributor region holds (123)"
        );
    }

    #[test]
    fn memory_fits_the_machine_with_the_reserve() {
        // 2 GiB - 64 MiB exactly fits.
        scenario(vec![vm("a", 1, 1024 * M), vm("b", 1, 960 * M)])
            .validate()
            .unwrap();
        assert_eq!(
            error(&scenario(vec![vm("a", 1, 1024 * M), vm("b", 1, 962 * M)])),
            "machine: the VMs need 1986 MiB of memory in all, plus 64 MiB for the hypervisor; the machine has 2 GiB"
        );
        // Sums saturate instead of wrapping.
        let mut a = vm("a", 1, u64::MAX - (u64::MAX % (2 * M)));
        a.ram_base = RAM_MIN;
        assert!(error(&scenario(vec![a])).contains("outside the guest RAM range"));
    }

    #[test]
    fn ram_stays_clear_of_the_device_map() {
        let mut v = vm("a", 1, 512 * M);
        v.ram_base = 0x3000_0000;
        assert_eq!(
            error(&scenario(vec![v])),
            "line 10: vm \"a\": RAM 0x30000000..0x50000000 overlaps the guest's PCI ECAM at 0x30000000..0x40000000"
        );
        let mut v = vm("a", 1, 512 * M);
        v.ram_base = 0x0800_0000;
        assert!(error(&scenario(vec![v])).contains("overlaps the guest's GIC distributor"));
        // The redistributor region grows with the VM's vCPUs.
        let mut v = vm("a", 100, 2 * M);
        v.ram_base = 0x0860_0000;
        let mut s = scenario(vec![v]);
        s.machine.cpus = 128;
        assert_eq!(
            error(&s),
            "line 10: vm \"a\": RAM 0x8600000..0x8800000 overlaps the guest's GIC redistributors at 0x80a0000..0x8d20000"
        );
        let mut v = vm("a", 1, 2 * M);
        v.ram_base = 0x0860_0000;
        assert!(error(&scenario(vec![v])).contains("outside the guest RAM range"));
    }

    #[test]
    fn ram_stays_in_range() {
        let mut v = vm("a", 1, 2 * M);
        v.ram_base = 0;
        assert_eq!(
            error(&scenario(vec![v])),
            "line 10: vm \"a\": RAM 0x0..0x200000 is outside the guest RAM range 0x40000000..0x10000000000"
        );
        let mut v = vm("a", 1, 4 * M);
        v.ram_base = RAM_END - 2 * M;
        assert!(error(&scenario(vec![v])).contains("outside the guest RAM range"));
        let mut v = vm("a", 1, 2 * M);
        v.ram_base = RAM_END - 2 * M;
        scenario(vec![v]).validate().unwrap();
    }

    #[test]
    fn image_paths_fit_the_bundle() {
        let mut v = vm("a", 1, 2 * M);
        v.kernel = String::new();
        assert_eq!(
            error(&scenario(vec![v])),
            "line 10: vm \"a\": kernel path \"\" is empty"
        );
        // Long paths are fine (a deep checkout), up to what a path may be.
        let mut v = vm("a", 1, 2 * M);
        v.initrd = Some("d/".repeat(100) + "initrd");
        assert!(validate(&scenario(vec![v])).is_ok());
        let mut v = vm("a", 1, 2 * M);
        v.initrd = Some("x".repeat(4096));
        assert!(error(&scenario(vec![v])).contains("initrd path \"xxx"));
        let mut v = vm("a", 1, 2 * M);
        v.kernel = "scenario".into();
        assert!(error(&scenario(vec![v])).contains("not a usable file name"));
    }

    #[test]
    fn devices_are_pci_addresses_owned_once() {
        let mut a = vm("a", 1, 2 * M);
        a.devices = vec!["00:02.0".into()];
        let mut b = vm("b", 1, 2 * M);
        b.devices = vec!["0000:00:02.0".into()];
        b.line = 20;
        assert_eq!(
            error(&scenario(vec![a.clone(), b])),
            "line 20: vm \"b\": device 00:02.0 is given to both vm \"a\" and vm \"b\""
        );
        let mut c = a.clone();
        c.devices.push("00:02.0".into());
        assert_eq!(
            error(&scenario(vec![c])),
            "line 10: vm \"a\": device 00:02.0 is listed twice"
        );
        let mut d = a.clone();
        d.devices = vec!["nvme".into()];
        assert_eq!(
            error(&scenario(vec![d])),
            "line 10: vm \"a\": device \"nvme\" is not a PCI address like \"00:02.0\""
        );
        // Different functions, and vsmmu, are fine: later steps decide.
        let mut e = vm("e", 1, 2 * M);
        e.devices = vec!["00:02.1".into()];
        e.vsmmu = true;
        scenario(vec![a, e]).validate().unwrap();
    }

    #[test]
    fn machine_rules() {
        let mut s = scenario(vec![]);
        s.machine.cpus = 0;
        assert_eq!(error(&s), "machine: cpus must be at least 1");
        let mut s = scenario(vec![]);
        s.machine.memory = (1 << 30) + 1;
        assert_eq!(
            error(&s),
            "machine: memory 1073741825 bytes is not a positive multiple of 1 MiB"
        );
        let mut s = scenario(vec![]);
        s.machine.machine = String::new();
        assert_eq!(error(&s), "machine: machine must not be empty");
    }
}
