//! From parsed tables to [`Scenario`]: which keys each section has, their
//! types and defaults, and sizes like `"512M"`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{ErrorKind, ScenarioError, Section};
use crate::toml::{parse_int, Document, Kind, Table, Value, MAX_VMS};
use crate::{guest_layout, Machine, Scenario, VmSpec};

const MACHINE_KEYS: &[&str] = &[
    "cpus",
    "memory",
    "cpu",
    "smmu",
    "machine",
    "devices",
    "qemu_args",
    "bootargs",
];

const VM_KEYS: &[&str] = &[
    "name", "cpus", "memory", "ram_base", "kernel", "initrd", "cmdline", "devices", "vsmmu",
];

/// One table's entries, checked for unknown and duplicate keys.
struct Fields<'a> {
    table: &'a Table,
    section: Section,
}

impl<'a> Fields<'a> {
    fn new(table: &'a Table, section: Section, known: &[&str]) -> Result<Self, ScenarioError> {
        let f = Self { table, section };
        for (i, e) in table.entries.iter().enumerate() {
            if !known.contains(&e.key.as_str()) {
                return Err(f.err(e.line, ErrorKind::UnknownKey(e.key.clone())));
            }
            if let Some(first) = table.entries[..i].iter().find(|p| p.key == e.key) {
                let kind = ErrorKind::DuplicateKey {
                    key: e.key.clone(),
                    first_line: first.line,
                };
                return Err(f.err(e.line, kind));
            }
        }
        // Only reachable with more entries than known keys, which the loop
        // above has already reported; kept so that dropping is never silent.
        if table.overflow {
            return Err(f.err(table.line, ErrorKind::UnknownKey("(too many keys)".into())));
        }
        Ok(f)
    }

    fn err(&self, line: usize, kind: ErrorKind) -> ScenarioError {
        ScenarioError::new(line, Some(self.section.clone()), kind)
    }

    fn get(&self, key: &str) -> Option<(&'a Value, usize)> {
        self.table
            .entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| (&e.value, e.line))
    }

    fn required<T>(&self, key: &'static str, v: Option<T>) -> Result<T, ScenarioError> {
        v.ok_or_else(|| self.err(self.table.line, ErrorKind::MissingKey(key)))
    }

    fn wrong(
        &self,
        key: &'static str,
        expected: &'static str,
        v: &Value,
        line: usize,
    ) -> ScenarioError {
        let kind = ErrorKind::WrongType {
            key,
            expected,
            found: v.type_name(),
        };
        self.err(line, kind)
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ScenarioError> {
        match self.get(key) {
            None => Ok(None),
            Some((Value::Str(s), _)) => Ok(Some(s.clone())),
            Some((v, line)) => Err(self.wrong(key, "a string", v, line)),
        }
    }

    fn int(&self, key: &'static str) -> Result<Option<u64>, ScenarioError> {
        match self.get(key) {
            None => Ok(None),
            Some((Value::Int(n), _)) => Ok(Some(*n)),
            Some((v, line)) => Err(self.wrong(key, "an integer", v, line)),
        }
    }

    fn count(&self, key: &'static str) -> Result<Option<u32>, ScenarioError> {
        let Some(n) = self.int(key)? else {
            return Ok(None);
        };
        match u32::try_from(n) {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                let line = self.get(key).map_or(self.table.line, |(_, l)| l);
                Err(self.err(line, ErrorKind::IntegerTooLarge(n.to_string())))
            }
        }
    }

    fn boolean(&self, key: &'static str) -> Result<Option<bool>, ScenarioError> {
        match self.get(key) {
            None => Ok(None),
            Some((Value::Bool(b), _)) => Ok(Some(*b)),
            Some((v, line)) => Err(self.wrong(key, "true or false", v, line)),
        }
    }

    fn strings(&self, key: &'static str) -> Result<Vec<String>, ScenarioError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some((Value::Array(a), _)) => Ok(a.clone()),
            Some((v, line)) => Err(self.wrong(key, "an array of strings", v, line)),
        }
    }

    fn size(&self, key: &'static str) -> Result<Option<u64>, ScenarioError> {
        match self.get(key) {
            None => Ok(None),
            Some((Value::Int(n), _)) => Ok(Some(*n)),
            Some((Value::Str(s), line)) => parse_size(s).map(Some).ok_or_else(|| {
                let kind = ErrorKind::BadSize {
                    key,
                    value: s.clone(),
                };
                self.err(line, kind)
            }),
            Some((v, line)) => Err(self.wrong(key, "a size like \"512M\"", v, line)),
        }
    }
}

/// `"512M"`, `"2G"`, `"64K"`, `"1T"` (optionally `MB`/`MiB`, any case, a
/// space before the unit), or a plain number of bytes.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.starts_with("0x") {
        return parse_int(s).ok();
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = (s.get(..split)?, s.get(split..)?.trim_start());
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    let n = parse_int(num).ok()?;
    n.checked_mul(1u64 << shift)
}

fn machine(t: &Table) -> Result<Machine, ScenarioError> {
    let f = Fields::new(t, Section::Machine, MACHINE_KEYS)?;
    Ok(Machine {
        cpus: f.required("cpus", f.count("cpus")?)?,
        memory: f.required("memory", f.size("memory")?)?,
        cpu: f.string("cpu")?.unwrap_or_else(|| "max".into()),
        smmu: f.boolean("smmu")?.unwrap_or(true),
        machine: f.string("machine")?.unwrap_or_else(|| "virt".into()),
        devices: f.strings("devices")?,
        qemu_args: f.strings("qemu_args")?,
        bootargs: f.string("bootargs")?.unwrap_or_default(),
    })
}

fn vm(t: &Table, index: usize) -> Result<VmSpec, ScenarioError> {
    let name = t.entries.iter().find_map(|e| match (&*e.key, &e.value) {
        ("name", Value::Str(s)) => Some(s.clone()),
        _ => None,
    });
    let f = Fields::new(t, Section::Vm { name, index }, VM_KEYS)?;
    Ok(VmSpec {
        name: f.required("name", f.string("name")?)?,
        cpus: f.required("cpus", f.count("cpus")?)?,
        memory: f.required("memory", f.size("memory")?)?,
        ram_base: f.int("ram_base")?.unwrap_or(guest_layout::RAM_MIN),
        kernel: f.required("kernel", f.string("kernel")?)?,
        initrd: f.string("initrd")?,
        cmdline: f.string("cmdline")?.unwrap_or_default(),
        devices: f.strings("devices")?,
        vsmmu: f.boolean("vsmmu")?.unwrap_or(false),
        line: t.line,
    })
}

pub(crate) fn from_document(doc: Document) -> Result<Scenario, ScenarioError> {
    let mut m = None;
    let mut vms = Vec::new();
    for t in &doc.tables {
        match t.kind {
            Kind::Machine => m = Some(machine(t)?),
            Kind::Vm => vms.push(vm(t, vms.len() + 1)?),
        }
    }
    if let Some(line) = doc.too_many_vms {
        return Err(ScenarioError::new(
            line,
            None,
            ErrorKind::TooManyVms { max: MAX_VMS },
        ));
    }
    let machine = m.ok_or_else(|| ScenarioError::new(0, None, ErrorKind::MissingMachine))?;
    Ok(Scenario { machine, vms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const LINUX: &str = r#"# Linux with 2 vCPUs
[machine]
cpus = 4            # QEMU -smp
memory = "2G"       # QEMU -m
cpu = "max"         # QEMU -cpu
smmu = true         # iommu=smmuv3
devices = ["edu,dma_mask=0xffffffffff"]   # QEMU -device arguments
bootargs = ""       # hypervisor command line, e.g. "selftest=dma"

[[vm]]
name = "linux"
cpus = 2
memory = "512M"
kernel = "target/guests/linux/Image"          # paths relative to the repo root
initrd = "target/guests/linux/initramfs.cpio.gz"
cmdline = "console=ttyAMA0 nokaslr"
devices = []        # PCI functions assigned, e.g. ["00:02.0"]
vsmmu = false       # virtual SMMU
"#;

    fn error(text: &str) -> String {
        Scenario::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_documented_example_parses() {
        let s = Scenario::parse(LINUX).unwrap();
        assert_eq!(
            s.machine,
            Machine {
                cpus: 4,
                memory: 2 << 30,
                cpu: "max".into(),
                smmu: true,
                machine: "virt".into(),
                devices: vec!["edu,dma_mask=0xffffffffff".into()],
                qemu_args: vec![],
                bootargs: String::new(),
            }
        );
        assert_eq!(
            s.vms,
            vec![VmSpec {
                name: "linux".into(),
                cpus: 2,
                memory: 512 << 20,
                ram_base: 0x4000_0000,
                kernel: "target/guests/linux/Image".into(),
                initrd: Some("target/guests/linux/initramfs.cpio.gz".into()),
                cmdline: "console=ttyAMA0 nokaslr".into(),
                devices: vec![],
                vsmmu: false,
                line: 10,
            }]
        );
        s.validate().unwrap();
    }

    #[test]
    fn defaults() {
        let s = Scenario::parse(
            "[machine]\ncpus = 2\nmemory = 0x4000_0000\n[[vm]]\nname = \"a\"\ncpus = 1\nmemory = \"2M\"\nkernel = \"k\"\n",
        )
        .unwrap();
        let m = &s.machine;
        assert_eq!(
            (m.memory, m.cpu.as_str(), m.smmu, m.machine.as_str()),
            (1 << 30, "max", true, "virt")
        );
        assert!(m.devices.is_empty() && m.qemu_args.is_empty() && m.bootargs.is_empty());
        let v = &s.vms[0];
        assert_eq!(
            (v.ram_base, v.initrd.as_deref(), v.cmdline.as_str(), v.vsmmu),
            (0x4000_0000, None, "", false)
        );
        // No VMs at all is a scenario too (the hypervisor's own self-tests).
        assert!(Scenario::parse("[machine]\ncpus = 1\nmemory = \"1G\"\n")
            .unwrap()
            .vms
            .is_empty());
    }

    #[test]
    fn sizes() {
        for (s, v) in [
            ("512M", 512 << 20),
            ("512MiB", 512 << 20),
            ("512 mb", 512 << 20),
            ("2G", 2 << 30),
            ("64K", 64 << 10),
            ("1T", 1 << 40),
            ("4096", 4096),
            ("1_024M", 1024 << 20),
            ("0x20_0000", 0x20_0000),
        ] {
            assert_eq!(parse_size(s), Some(v), "{s}");
        }
        for s in ["", "M", "2X", "2GG", "-1M", "1.5G", "99999999999T", "0x2G"] {
            assert_eq!(parse_size(s), None, "{s}");
        }
    }

    #[test]
    fn unknown_key_names_line_vm_and_key() {
        let text = LINUX.replace("memory = \"512M\"", "memroy = \"512M\"");
        assert_eq!(
            error(&text),
            "line 13: vm \"linux\": unknown key \"memroy\""
        );
        let text = LINUX.replace("smmu = true", "smu = true");
        assert_eq!(error(&text), "line 6: machine: unknown key \"smu\"");
    }

    #[test]
    fn duplicate_key() {
        let text = LINUX.replace("cpus = 2\n", "cpus = 2\ncpus = 3\n");
        assert_eq!(
            error(&text),
            "line 13: vm \"linux\": key \"cpus\" given twice (first on line 12)"
        );
    }

    #[test]
    fn wrong_types() {
        let text = LINUX.replace("cpus = 2\n", "cpus = \"2\"\n");
        assert_eq!(
            error(&text),
            "line 12: vm \"linux\": cpus must be an integer, not a string"
        );
        let text = LINUX.replace("smmu = true", "smmu = \"yes\"");
        assert_eq!(
            error(&text),
            "line 6: machine: smmu must be true or false, not a string"
        );
        let text = LINUX.replace("devices = []", "devices = \"00:02.0\"");
        assert_eq!(
            error(&text),
            "line 17: vm \"linux\": devices must be an array of strings, not a string"
        );
        let text = LINUX.replace("memory = \"512M\"", "memory = true");
        assert_eq!(
            error(&text),
            "line 13: vm \"linux\": memory must be a size like \"512M\", not a boolean"
        );
        let text = LINUX.replace("memory = \"512M\"", "memory = \"512Q\"");
        assert_eq!(
            error(&text),
            "line 13: vm \"linux\": memory: \"512Q\" is not a size (write e.g. \"512M\", \"2G\", or a number of bytes)"
        );
        let text = LINUX.replace("cpus = 2\n", "cpus = 0x1_0000_0000\n");
        assert_eq!(
            error(&text),
            "line 12: vm \"linux\": integer 4294967296 is too large"
        );
        // A VM whose name is not a string is named by its position.
        let text = LINUX.replace("name = \"linux\"", "name = 1");
        assert_eq!(
            error(&text),
            "line 11: vm #1: name must be a string, not an integer"
        );
    }

    #[test]
    fn missing_keys() {
        let text = LINUX.replace("kernel = \"target/guests/linux/Image\"", "");
        assert_eq!(
            error(&text),
            "line 10: vm \"linux\": missing key \"kernel\""
        );
        let text = LINUX.replace("name = \"linux\"", "");
        assert_eq!(error(&text), "line 10: vm #1: missing key \"name\"");
        let text = LINUX.replace("cpus = 4 ", "");
        assert_eq!(error(&text), "line 2: machine: missing key \"cpus\"");
        assert_eq!(
            error("[[vm]]\nname = \"a\"\ncpus = 1\nmemory = \"2M\"\nkernel = \"k\"\n"),
            "no [machine] section"
        );
    }

    #[test]
    fn too_many_vms() {
        let vm = "[[vm]]\nname = \"a\"\ncpus = 1\nmemory = \"2M\"\nkernel = \"k\"\n";
        let text = alloc::format!(
            "[machine]\ncpus = 1\nmemory = \"1G\"\n{}",
            vm.repeat(MAX_VMS + 1)
        );
        assert_eq!(
            error(&text),
            alloc::format!("line {}: more than 64 VMs", 4 + 5 * MAX_VMS)
        );
    }
}
