//! What can be wrong with a scenario, said so that a user can fix the file
//! without reading code: every error names the line, the section (`machine`
//! or `vm "NAME"`) and the key or rule.

use alloc::string::String;
use core::fmt;

/// A scenario that cannot run, with where in the file the problem is.
///
/// `Display` gives e.g. `line 12: vm "linux": unknown key "memroy"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// 1-based line in the scenario text; 0 when no line applies.
    pub line: usize,
    /// The section the problem is in, if any.
    pub section: Option<Section>,
    /// The problem.
    pub kind: ErrorKind,
}

impl ScenarioError {
    pub(crate) fn new(line: usize, section: Option<Section>, kind: ErrorKind) -> Self {
        Self {
            line,
            section,
            kind,
        }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line != 0 {
            write!(f, "line {}: ", self.line)?;
        }
        if let Some(s) = &self.section {
            write!(f, "{s}: ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl core::error::Error for ScenarioError {}

/// A section of a scenario file, as error messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    /// `[machine]`.
    Machine,
    /// A `[[vm]]` table: its name, or its 1-based position when it has no
    /// usable name.
    Vm {
        /// The VM's `name`, if the table has a string one.
        name: Option<String>,
        /// 1-based position among the `[[vm]]` tables.
        index: usize,
    },
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Section::Machine => f.write_str("machine"),
            Section::Vm {
                name: Some(n),
                index: _,
            } => write!(f, "vm {n:?}"),
            Section::Vm { name: None, index } => write!(f, "vm #{index}"),
        }
    }
}

/// A byte count printed the way a user wrote it (`512 MiB`, `2 GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const K: u64 = 1 << 10;
        let b = self.0;
        for (unit, name) in [
            (K * K * K * K, "TiB"),
            (K * K * K, "GiB"),
            (K * K, "MiB"),
            (K, "KiB"),
        ] {
            if b != 0 && b.is_multiple_of(unit) {
                return write!(f, "{} {name}", b / unit);
            }
        }
        write!(f, "{b} bytes")
    }
}

/// The problem itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    // --- syntax ---
    /// The text is larger than any scenario needs.
    #[error("the scenario is larger than {max} bytes")]
    InputTooLarge {
        /// The limit.
        max: usize,
    },
    /// Text that is not TOML, as the TOML parser describes it.
    #[error("{0}")]
    Syntax(String),
    /// `key =` with nothing after it.
    #[error("key {0:?} has no value")]
    MissingValue(String),
    /// A bare word where a value goes (a value that is none of string,
    /// number, boolean, array or table).
    #[error("bad value {0}: strings need double quotes, e.g. \"2G\"")]
    BadValue(String),
    /// An integer with no digits.
    #[error("bad integer {0}")]
    BadInteger(String),
    /// An integer that does not fit the setting (64 bits; 32 for CPU
    /// counts).
    #[error("integer {0} is too large")]
    IntegerTooLarge(String),
    /// A negative integer: no setting takes one.
    #[error("negative number {0}: no setting takes one")]
    Negative(String),
    /// A string longer than any setting needs.
    #[error("string longer than {max} bytes")]
    StringTooLong {
        /// The limit.
        max: usize,
    },
    /// An array with more elements than any setting needs.
    #[error("array with more than {max} elements")]
    ArrayTooLong {
        /// The limit.
        max: usize,
    },
    /// An array element that is not a string.
    #[error("arrays hold only strings, e.g. [\"00:02.0\"]")]
    NonStringInArray,
    /// A `[section]` this format does not have.
    #[error("unknown section [{0}] (sections are [machine] and [[vm]])")]
    UnknownSection(String),
    /// `[vm]` written as a single table.
    #[error("write [[vm]] (one table per VM), not [vm]")]
    VmNotArray,
    /// `[[machine]]` written as an array of tables.
    #[error("write [machine], not [[machine]]: there is one machine")]
    MachineIsArray,
    /// A second `[machine]`.
    #[error("second [machine] section (the first is on line {first_line})")]
    DuplicateMachine {
        /// Line of the first `[machine]`.
        first_line: usize,
    },
    /// A key before any section header.
    #[error("key {0:?} is outside any section: put it under [machine] or [[vm]]")]
    KeyOutsideSection(String),
    /// More `[[vm]]` tables than the hypervisor supports.
    #[error("more than {max} VMs")]
    TooManyVms {
        /// The limit.
        max: usize,
    },

    // --- keys and types ---
    /// A key the section does not have (often a typo).
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    /// A key given twice in one section.
    #[error("key {key:?} given twice (first on line {first_line})")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Line of its first occurrence.
        first_line: usize,
    },
    /// A key whose value has the wrong type.
    #[error("{key} must be {expected}, not {found}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What the key takes.
        expected: &'static str,
        /// What the file has.
        found: &'static str,
    },
    /// A required key is absent.
    #[error("missing key {0:?}")]
    MissingKey(&'static str),
    /// A value the key does not take.
    #[error("{key}: {value} is not one of {allowed}")]
    BadChoice {
        /// The key.
        key: &'static str,
        /// What the file has.
        value: String,
        /// What the key takes.
        allowed: &'static str,
    },
    /// The file has no `[machine]` section.
    #[error("no [machine] section")]
    MissingMachine,
    /// A size that does not parse.
    #[error("{key}: {value:?} is not a size (write e.g. \"512M\", \"2G\", or a number of bytes)")]
    BadSize {
        /// The key.
        key: &'static str,
        /// What the file has.
        value: String,
    },

    // --- rules (validation) ---
    /// A CPU count of zero.
    #[error("cpus must be at least 1")]
    NoCpus,
    /// Machine memory QEMU cannot take.
    #[error("memory {0} is not a positive multiple of 1 MiB")]
    MachineMemory(Size),
    /// An empty string where a value is needed.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A VM name with characters other than letters, digits, `-`, `_`.
    #[error("name {0:?} may contain only letters, digits, '-' and '_'")]
    BadName(String),
    /// A VM name longer than 16 characters.
    #[error("name {0:?} is longer than 16 characters")]
    NameTooLong(String),
    /// Two VMs with one name.
    #[error("name already used by the VM on line {first_line}")]
    DuplicateName {
        /// Line of the first VM with that name.
        first_line: usize,
    },
    /// More vCPUs in one VM than its redistributor region holds.
    #[error("{cpus} vCPUs is more than the guest's GIC redistributor region holds ({max})")]
    TooManyVcpusForGic {
        /// The VM's vCPUs.
        cpus: u32,
        /// The limit.
        max: u32,
    },
    /// VM memory below 2 MiB.
    #[error("memory {0} is less than 2 MiB")]
    MemoryTooSmall(Size),
    /// VM memory not a multiple of 2 MiB.
    #[error("memory {0} is not a multiple of 2 MiB")]
    MemoryUnaligned(Size),
    /// Guest RAM base not 2 MiB aligned.
    #[error("ram_base {0:#x} is not 2 MiB aligned")]
    RamBaseUnaligned(u64),
    /// Guest RAM overlapping a device of the guest's fixed map.
    #[error(
        "RAM {start:#x}..{end:#x} overlaps the guest's {device} at {dev_start:#x}..{dev_end:#x}"
    )]
    RamOverlapsDevice {
        /// First RAM byte.
        start: u64,
        /// End of RAM (exclusive).
        end: u64,
        /// The device.
        device: &'static str,
        /// First device byte.
        dev_start: u64,
        /// End of the device (exclusive).
        dev_end: u64,
    },
    /// Guest RAM outside the allowed IPA range.
    #[error("RAM {start:#x}..{end:#x} is outside the guest RAM range {min:#x}..{max:#x}")]
    RamOutOfRange {
        /// First RAM byte.
        start: u64,
        /// End of RAM (exclusive), saturated.
        end: u64,
        /// Lowest allowed RAM address.
        min: u64,
        /// End of the allowed range.
        max: u64,
    },
    /// More vCPUs in all VMs than the machine has CPUs.
    #[error("the VMs need {needed} vCPUs in all, the machine has {have} CPUs (each vCPU is pinned to its own CPU)")]
    TooManyVcpus {
        /// Sum of all VMs' vCPUs.
        needed: u64,
        /// Machine CPUs.
        have: u32,
    },
    /// More memory in all VMs than the machine has.
    #[error("the VMs need {needed} of memory in all, plus {reserve} for the hypervisor; the machine has {have}")]
    TooMuchMemory {
        /// Sum of all VMs' memory.
        needed: Size,
        /// The hypervisor's reserve.
        reserve: Size,
        /// Machine memory.
        have: Size,
    },
    /// An image path that cannot go in the boot bundle.
    #[error("{key} path {path:?} {why}")]
    BadImagePath {
        /// `kernel` or `initrd`.
        key: &'static str,
        /// The path.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A device that is not a PCI address.
    #[error("device {0:?} is not a PCI address like \"00:02.0\"")]
    BadPciAddress(String),
    /// One PCI function listed twice in one VM.
    #[error("device {0} is listed twice")]
    DeviceListedTwice(String),
    /// One PCI function given to two VMs.
    #[error("device {device} is given to both vm {first:?} and vm {second:?}")]
    DeviceInTwoVms {
        /// The function.
        device: String,
        /// The VM that lists it first.
        first: String,
        /// The other VM.
        second: String,
    },
}
