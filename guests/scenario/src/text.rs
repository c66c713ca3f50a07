//! A [`Scenario`] written back as scenario text: what the runner bundles
//! when one run changes a scenario (a test adds words to a VM's command
//! line), so the hypervisor reads the changed scenario with the same parser
//! as every other.
//!
//! Every setting is written, defaults included; sizes and addresses as hex
//! integers (TOML's decimal integers stop at `i64::MAX`), strings as basic
//! strings with every control character escaped. Comments and the layout of
//! the file it came from are not kept.

use alloc::string::String;
use core::fmt::Write;

use crate::{Choice, Machine, Scenario, VmSpec};

impl Scenario {
    /// The scenario as text that [`Scenario::parse`] reads back as this
    /// scenario (but for [`VmSpec::line`], which says where each VM is in
    /// the new text).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        machine(&mut out, &self.machine);
        for vm in &self.vms {
            vm_table(&mut out, vm);
        }
        out
    }
}

fn machine(out: &mut String, m: &Machine) {
    out.push_str("[machine]\n");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "cpus = {}", m.cpus);
    let _ = writeln!(out, "memory = {:#x}", m.memory);
    key_string(out, "cpu", &m.cpu);
    let _ = writeln!(out, "smmu = {}", m.smmu);
    key_string(out, "machine", &m.machine);
    key_strings(out, "devices", &m.devices);
    key_strings(out, "qemu_args", &m.qemu_args);
    key_string(out, "bootargs", &m.bootargs);
    let _ = writeln!(out, "gic_version = {}", m.gic_version);
    if let Some(d) = m.msi_delivery {
        key_string(out, "msi_delivery", d.name());
    }
    key_string(out, "cpu_stage2", m.cpu_stage2.name());
}

fn vm_table(out: &mut String, vm: &VmSpec) {
    out.push_str("\n[[vm]]\n");
    key_string(out, "name", &vm.name);
    let _ = writeln!(out, "cpus = {}", vm.cpus);
    let _ = writeln!(out, "memory = {:#x}", vm.memory);
    let _ = writeln!(out, "ram_base = {:#x}", vm.ram_base);
    key_string(out, "kernel", &vm.kernel);
    if let Some(initrd) = &vm.initrd {
        key_string(out, "initrd", initrd);
    }
    key_string(out, "cmdline", &vm.cmdline);
    key_strings(out, "devices", &vm.devices);
    let _ = writeln!(out, "vsmmu = {}", vm.vsmmu);
    key_string(out, "on_reset", vm.on_reset.name());
    key_string(out, "on_poweroff", vm.on_poweroff.name());
}

/// `key = "value"`.
fn key_string(out: &mut String, key: &str, value: &str) {
    let _ = write!(out, "{key} = ");
    string(out, value);
    out.push('\n');
}

/// `key = ["a", "b"]`.
fn key_strings(out: &mut String, key: &str, values: &[String]) {
    let _ = write!(out, "{key} = [");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        string(out, v);
    }
    out.push_str("]\n");
}

/// `s` as a TOML basic string: `"` and `\` escaped, control characters
/// (which TOML does not allow raw, but for tab) as `\uXXXX`.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Escapes, all 64 bits of a number, and where the VM now is.
    /// (`tests/properties.rs` reads back scenarios with any strings.)
    #[test]
    fn a_scenario_reads_back_the_same() {
        let s = Scenario::parse(concat!(
            "# a comment the text does not keep\n",
            "vm = [{ name = \"a\", cpus = 1, memory = 0x20_0000, kernel = \"k\", ",
            "ram_base = 0xffff_ffff_ffe0_0000, cmdline = \"init.run=\\\"dd\\\"\\ttab\\u0001\" }]\n",
            "[machine]\ncpus = 1\nmemory = 0xffff_ffff_ffff_ffff\nqemu_args = ['C:\\d.img']\n",
            "gic_version = 4\nmsi_delivery = \"list-registers\"\ncpu_stage2 = \"blocks\"\n",
        ))
        .unwrap();
        assert_eq!(s.vms[0].cmdline, "init.run=\"dd\"\ttab\u{1}");
        let text = s.to_text();
        assert!(
            text.contains("\ncmdline = \"init.run=\\\"dd\\\"\\u0009tab\\u0001\"\n"),
            "{text}"
        );
        assert!(text.contains("\nqemu_args = [\"C:\\\\d.img\"]\n"), "{text}");
        let mut back = Scenario::parse(&text).unwrap();
        assert_eq!(back.vms[0].line, 14, "{text}");
        back.vms[0].line = s.vms[0].line;
        assert_eq!(back, s, "{text}");
    }
}
