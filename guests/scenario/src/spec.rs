//! From the parsed TOML document to [`Scenario`]: which sections and keys
//! there are, their types, defaults and limits, and sizes like `"512M"`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use toml::de::{DeInteger, DeTable, DeValue};
use toml::Spanned;

use crate::error::{ErrorKind, ScenarioError, Section};
use crate::syntax::{line_of, vm_name};
use crate::{guest_layout, Choice, Lifecycle, Machine, Scenario, VmSpec, GIC_VERSIONS};

/// Longest string value.
pub const MAX_STRING: usize = 4096;
/// Most elements in one array.
pub const MAX_ARRAY: usize = 256;
/// Most `[[vm]]` tables.
pub const MAX_VMS: usize = 64;

const MACHINE_KEYS: &[&str] = &[
    "cpus",
    "memory",
    "cpu",
    "smmu",
    "machine",
    "devices",
    "qemu_args",
    "bootargs",
    "gic_version",
    "msi_delivery",
    "cpu_stage2",
];

const VM_KEYS: &[&str] = &[
    "name",
    "cpus",
    "memory",
    "ram_base",
    "kernel",
    "initrd",
    "cmdline",
    "devices",
    "vsmmu",
    "on_reset",
    "on_poweroff",
];

/// At most 40 characters of what the file writes, for a message.
fn shown(s: &str) -> String {
    s.chars().take(40).collect()
}

/// How error messages name a value's type.
fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A TOML integer as a `u64`: scenario numbers are sizes, counts and
/// addresses, never negative, and may use all 64 bits (`0xffff_ffff_ffff_ffff`).
/// `raw` is the integer as the file writes it, for messages.
fn to_u64(i: &DeInteger<'_>, raw: &str) -> Result<u64, ErrorKind> {
    let digits = i.as_str();
    if digits.starts_with('-') {
        return Err(ErrorKind::Negative(raw.into()));
    }
    u64::from_str_radix(digits, i.radix()).map_err(|e| match e.kind() {
        core::num::IntErrorKind::PosOverflow => ErrorKind::IntegerTooLarge(raw.into()),
        _ => ErrorKind::BadInteger(raw.into()),
    })
}

/// One key of a table, where the file writes it.
struct Entry<'t, 'i> {
    key: &'t str,
    line: usize,
    value: &'t Spanned<DeValue<'i>>,
}

/// One table's entries, checked for unknown keys. (`toml` has already
/// refused a key given twice.)
struct Fields<'t, 'i> {
    text: &'t str,
    entries: Vec<Entry<'t, 'i>>,
    /// Line of the table's header.
    line: usize,
    section: Section,
}

impl<'t, 'i> Fields<'t, 'i> {
    fn new(
        text: &'t str,
        table: &'t DeTable<'i>,
        line: usize,
        section: Section,
        known: &[&str],
    ) -> Result<Self, ScenarioError> {
        // The first unknown key in file order (`toml` keeps keys sorted).
        let unknown = table
            .iter()
            .filter(|(k, _)| !known.contains(&k.get_ref().as_ref()))
            .min_by_key(|(k, _)| k.span().start);
        if let Some((k, _)) = unknown {
            let kind = ErrorKind::UnknownKey(shown(k.get_ref()));
            return Err(ScenarioError::new(
                line_of(text, k.span().start),
                Some(section),
                kind,
            ));
        }
        let entries = table
            .iter()
            .map(|(k, v)| Entry {
                key: k.get_ref().as_ref(),
                line: line_of(text, k.span().start),
                value: v,
            })
            .collect();
        Ok(Self {
            text,
            entries,
            line,
            section,
        })
    }

    fn err(&self, line: usize, kind: ErrorKind) -> ScenarioError {
        ScenarioError::new(line, Some(self.section.clone()), kind)
    }

    fn get(&self, key: &str) -> Option<&Entry<'t, 'i>> {
        self.entries.iter().find(|e| e.key == key)
    }

    fn required<T>(&self, key: &'static str, v: Option<T>) -> Result<T, ScenarioError> {
        v.ok_or_else(|| self.err(self.line, ErrorKind::MissingKey(key)))
    }

    fn wrong(&self, key: &'static str, expected: &'static str, e: &Entry<'_, '_>) -> ScenarioError {
        let kind = ErrorKind::WrongType {
            key,
            expected,
            found: type_name(e.value.get_ref()),
        };
        self.err(e.line, kind)
    }

    /// A string of at most [`MAX_STRING`] bytes.
    fn checked(&self, s: &str, line: usize) -> Result<String, ScenarioError> {
        if s.len() > MAX_STRING {
            return Err(self.err(line, ErrorKind::StringTooLong { max: MAX_STRING }));
        }
        Ok(s.into())
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ScenarioError> {
        match self.get(key) {
            None => Ok(None),
            Some(e) => match e.value.get_ref() {
                DeValue::String(s) => self.checked(s, e.line).map(Some),
                _ => Err(self.wrong(key, "a string", e)),
            },
        }
    }

    fn integer(&self, e: &Entry<'_, '_>, i: &DeInteger<'_>) -> Result<u64, ScenarioError> {
        let raw = self.text.get(e.value.span()).unwrap_or(i.as_str()).trim();
        to_u64(i, &shown(raw)).map_err(|kind| self.err(e.line, kind))
    }

    fn int(&self, key: &'static str) -> Result<Option<u64>, ScenarioError> {
        match self.get(key) {
            None => Ok(None),
            Some(e) => match e.value.get_ref() {
                DeValue::Integer(i) => self.integer(e, i).map(Some),
                _ => Err(self.wrong(key, "an integer", e)),
            },
        }
    }

    fn count(&self, key: &'static str) -> Result<Option<u32>, ScenarioError> {
        let Some(n) = self.int(key)? else {
            return Ok(None);
        };
        match u32::try_from(n) {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                let line = self.get(key).map_or(self.line, |e| e.line);
                Err(self.err(line, ErrorKind::IntegerTooLarge(n.to_string())))
            }
        }
    }

    fn boolean(&self, key: &'static str) -> Result<Option<bool>, ScenarioError> {
        match self.get(key) {
            None => Ok(None),
            Some(e) => match e.value.get_ref() {
                DeValue::Boolean(b) => Ok(Some(*b)),
                _ => Err(self.wrong(key, "true or false", e)),
            },
        }
    }

    /// An array of at most [`MAX_ARRAY`] strings.
    fn strings(&self, key: &'static str) -> Result<Vec<String>, ScenarioError> {
        let Some(e) = self.get(key) else {
            return Ok(Vec::new());
        };
        let DeValue::Array(a) = e.value.get_ref() else {
            return Err(self.wrong(key, "an array of strings", e));
        };
        if a.len() > MAX_ARRAY {
            return Err(self.err(e.line, ErrorKind::ArrayTooLong { max: MAX_ARRAY }));
        }
        a.iter()
            .map(|v| match v.get_ref() {
                DeValue::String(s) => self.checked(s, line_of(self.text, v.span().start)),
                _ => Err(self.err(
                    line_of(self.text, v.span().start),
                    ErrorKind::NonStringInArray,
                )),
            })
            .collect()
    }

    fn size(&self, key: &'static str) -> Result<Option<u64>, ScenarioError> {
        let Some(e) = self.get(key) else {
            return Ok(None);
        };
        match e.value.get_ref() {
            DeValue::Integer(i) => self.integer(e, i).map(Some),
            DeValue::String(s) => parse_size(s).map(Some).ok_or_else(|| {
                let kind = ErrorKind::BadSize {
                    key,
                    value: shown(s),
                };
                self.err(e.line, kind)
            }),
            _ => Err(self.wrong(key, "a size like \"512M\"", e)),
        }
    }
}

/// `123`, `1_000`, `0x4000_0000`, `0o17`, `0b101`: an integer the way TOML
/// writes one, without sign.
fn parse_int(s: &str) -> Option<u64> {
    let (radix, digits) = if let Some(d) = s.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = s.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = s.strip_prefix("0b") {
        (2, d)
    } else {
        (10, s)
    };
    // Underscores only between digits.
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let mut v: u64 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix)?;
        v = v.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// `"512M"`, `"2G"`, `"64K"`, `"1T"` (optionally `MB`/`MiB`, any case, a
/// space before the unit), or a plain number of bytes.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.starts_with("0x") {
        return parse_int(s);
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
    let n = parse_int(num)?;
    n.checked_mul(1u64 << shift)
}

fn machine(text: &str, t: &DeTable<'_>, line: usize) -> Result<Machine, ScenarioError> {
    let f = Fields::new(text, t, line, Section::Machine, MACHINE_KEYS)?;
    Ok(Machine {
        cpus: f.required("cpus", f.count("cpus")?)?,
        memory: f.required("memory", f.size("memory")?)?,
        cpu: f.string("cpu")?.unwrap_or_else(|| "max".into()),
        smmu: f.boolean("smmu")?.unwrap_or(true),
        machine: f.string("machine")?.unwrap_or_else(|| "virt".into()),
        devices: f.strings("devices")?,
        qemu_args: f.strings("qemu_args")?,
        bootargs: f.string("bootargs")?.unwrap_or_default(),
        gic_version: gic_version(&f)?,
        msi_delivery: choice(&f, "msi_delivery", "\"direct\" or \"list-registers\"")?,
        cpu_stage2: choice(&f, "cpu_stage2", "\"pages\" or \"blocks\"")?.unwrap_or_default(),
    })
}

fn gic_version(f: &Fields<'_, '_>) -> Result<u8, ScenarioError> {
    let Some(v) = f.int("gic_version")? else {
        return Ok(3);
    };
    GIC_VERSIONS
        .into_iter()
        .find(|&g| u64::from(g) == v)
        .ok_or_else(|| {
            let line = f.get("gic_version").map_or(f.line, |e| e.line);
            let kind = ErrorKind::BadChoice {
                key: "gic_version",
                value: v.to_string(),
                allowed: "3 or 4",
            };
            f.err(line, kind)
        })
}

/// The value of the string key `key`, one of `T`'s names (`allowed` says
/// them in an error); `None` without the key.
fn choice<T: Choice>(
    f: &Fields<'_, '_>,
    key: &'static str,
    allowed: &'static str,
) -> Result<Option<T>, ScenarioError> {
    let Some(v) = f.string(key)? else {
        return Ok(None);
    };
    match T::ALL.iter().find(|c| c.name() == v) {
        Some(&c) => Ok(Some(c)),
        None => {
            let line = f.get(key).map_or(f.line, |e| e.line);
            let kind = ErrorKind::BadChoice {
                key,
                value: alloc::format!("{:?}", shown(&v)),
                allowed,
            };
            Err(f.err(line, kind))
        }
    }
}

fn lifecycle(f: &Fields<'_, '_>, key: &'static str) -> Result<Option<Lifecycle>, ScenarioError> {
    choice(f, key, "\"restart\" or \"stop\"")
}

fn vm(text: &str, t: &DeTable<'_>, line: usize, index: usize) -> Result<VmSpec, ScenarioError> {
    let name = vm_name(t);
    let f = Fields::new(text, t, line, Section::Vm { name, index }, VM_KEYS)?;
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
        on_reset: lifecycle(&f, "on_reset")?.unwrap_or(Lifecycle::Restart),
        on_poweroff: lifecycle(&f, "on_poweroff")?.unwrap_or(Lifecycle::Stop),
        line,
    })
}

/// What the top level of a scenario holds, in file order.
enum Part<'t, 'i> {
    Machine(&'t DeTable<'i>, usize),
    Vms(&'t [Spanned<DeValue<'i>>]),
}

impl Part<'_, '_> {
    fn line(&self, text: &str) -> usize {
        match self {
            Part::Machine(_, line) => *line,
            Part::Vms(v) => v.first().map_or(0, |v| line_of(text, v.span().start)),
        }
    }
}

/// The scenario in the parsed document `doc` of `text`.
pub(crate) fn from_document(text: &str, doc: &DeTable<'_>) -> Result<Scenario, ScenarioError> {
    let mut top: Vec<_> = doc.iter().collect();
    top.sort_by_key(|(k, _)| k.span().start);
    let mut parts = Vec::new();
    for (k, v) in top {
        let err = |kind| {
            Err(ScenarioError::new(
                line_of(text, k.span().start),
                None,
                kind,
            ))
        };
        let key = shown(k.get_ref());
        match (k.get_ref().as_ref(), v.get_ref()) {
            ("machine", DeValue::Table(t)) => {
                parts.push(Part::Machine(t, line_of(text, v.span().start)))
            }
            ("machine", DeValue::Array(_)) => return err(ErrorKind::MachineIsArray),
            ("vm", DeValue::Array(a)) => parts.push(Part::Vms(a)),
            ("vm", DeValue::Table(_)) => return err(ErrorKind::VmNotArray),
            ("machine", other) => {
                return err(ErrorKind::WrongType {
                    key: "machine",
                    expected: "a table ([machine])",
                    found: type_name(other),
                })
            }
            ("vm", other) => {
                return err(ErrorKind::WrongType {
                    key: "vm",
                    expected: "an array of tables ([[vm]])",
                    found: type_name(other),
                })
            }
            (_, DeValue::Table(_)) => return err(ErrorKind::UnknownSection(key)),
            (_, DeValue::Array(a))
                if !a.is_empty() && a.iter().all(|v| matches!(v.get_ref(), DeValue::Table(_))) =>
            {
                return err(ErrorKind::UnknownSection(key))
            }
            _ => return err(ErrorKind::KeyOutsideSection(key)),
        }
    }
    parts.sort_by_key(|p| p.line(text));

    let mut m = None;
    let mut vms = Vec::new();
    for p in parts {
        match p {
            Part::Machine(t, line) => m = Some(machine(text, t, line)?),
            Part::Vms(list) => {
                if let Some(extra) = list.get(MAX_VMS) {
                    return Err(ScenarioError::new(
                        line_of(text, extra.span().start),
                        None,
                        ErrorKind::TooManyVms { max: MAX_VMS },
                    ));
                }
                for (i, v) in list.iter().enumerate() {
                    let line = line_of(text, v.span().start);
                    let DeValue::Table(t) = v.get_ref() else {
                        let kind = ErrorKind::WrongType {
                            key: "vm",
                            expected: "a table ([[vm]])",
                            found: type_name(v.get_ref()),
                        };
                        return Err(ScenarioError::new(line, None, kind));
                    };
                    vms.push(vm(text, t, line, i + 1)?);
                }
            }
        }
    }
    let machine = m.ok_or_else(|| ScenarioError::new(0, None, ErrorKind::MissingMachine))?;
    Ok(Scenario { machine, vms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuStage2, MsiDelivery};
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
    fn gic_version_and_msi_delivery() {
        let m = |extra: &str| {
            Scenario::parse(&alloc::format!(
                "[machine]\ncpus = 1\nmemory = \"1G\"\n{extra}"
            ))
            .map(|s| (s.machine.gic_version, s.machine.msi_delivery))
        };
        assert_eq!(m(""), Ok((3, None)), "GICv3, the fastest delivery");
        assert_eq!(
            m("gic_version = 4\nmsi_delivery = \"direct\"\n"),
            Ok((4, Some(MsiDelivery::Direct)))
        );
        assert_eq!(
            m("msi_delivery = \"list-registers\"\n"),
            Ok((3, Some(MsiDelivery::ListRegisters)))
        );
        assert_eq!(
            m("gic_version = 2\n").unwrap_err().to_string(),
            "line 4: machine: gic_version: 2 is not one of 3 or 4"
        );
        assert_eq!(
            m("msi_delivery = \"lr\"\n").unwrap_err().to_string(),
            "line 4: machine: msi_delivery: \"lr\" is not one of \"direct\" or \"list-registers\""
        );
        assert!(m("gic_version = \"4\"\n").is_err(), "an integer");
    }

    #[test]
    fn cpu_stage2() {
        let m = |extra: &str| {
            Scenario::parse(&alloc::format!(
                "[machine]\ncpus = 1\nmemory = \"1G\"\n{extra}"
            ))
            .map(|s| s.machine.cpu_stage2)
        };
        assert_eq!(m(""), Ok(CpuStage2::Pages));
        assert_eq!(m("cpu_stage2 = \"pages\"\n"), Ok(CpuStage2::Pages));
        assert_eq!(m("cpu_stage2 = \"blocks\"\n"), Ok(CpuStage2::Blocks));
        assert_eq!(
            m("cpu_stage2 = \"2M\"\n").unwrap_err().to_string(),
            "line 4: machine: cpu_stage2: \"2M\" is not one of \"pages\" or \"blocks\""
        );
        assert!(m("cpu_stage2 = true\n").is_err(), "a string");
    }

    #[test]
    fn on_reset_and_on_poweroff() {
        let vm = |keys: &str| {
            let text = alloc::format!(
                "[machine]\ncpus = 1\nmemory = \"1G\"\n[[vm]]\nname = \"a\"\ncpus = 1\n\
                 memory = \"64M\"\nkernel = \"k\"\n{keys}"
            );
            Scenario::parse(&text).map(|s| (s.vms[0].on_reset, s.vms[0].on_poweroff))
        };
        assert_eq!(vm(""), Ok((Lifecycle::Restart, Lifecycle::Stop)));
        assert_eq!(
            vm("on_reset = \"stop\"\non_poweroff = \"restart\"\n"),
            Ok((Lifecycle::Stop, Lifecycle::Restart))
        );
        assert_eq!(
            vm("on_reset = \"reboot\"\n").unwrap_err().to_string(),
            "line 9: vm \"a\": on_reset: \"reboot\" is not one of \"restart\" or \"stop\""
        );
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
                gic_version: 3,
                msi_delivery: None,
                cpu_stage2: CpuStage2::Pages,
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
                on_reset: Lifecycle::Restart,
                on_poweroff: Lifecycle::Stop,
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
