//! Scenario text to a TOML document, with the `toml` crate's parser, and
//! its errors said the way every scenario error is: line, section, problem.
//!
//! `toml` reports a byte span; this module turns it into a line, gives a
//! hint for the common mistakes (a size without quotes, a key without a
//! value), and for a key or table given twice finds where it was first.

use alloc::string::{String, ToString};
use core::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::error::{ErrorKind, ScenarioError, Section};
use crate::MAX_STRING;

/// Largest scenario text accepted. The parser holds a token and an event
/// for every few bytes of text, up to about 120 bytes of heap per byte of
/// the worst text; 16 KiB keeps that under 2 MiB of the hypervisor's 8 MiB
/// heap, and is ten times the largest scenario in `guests/scenarios/`.
pub const MAX_INPUT: usize = 16 << 10;

/// Longest shown excerpt of the file in a message.
const EXCERPT: usize = 40;

/// The 1-based line of byte `offset`. An offset at the very end of text
/// that ends in a newline (where `toml` reports an unclosed construct) is on
/// the last line, not the empty one after it.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let b = text.as_bytes();
    let end = offset.min(b.len());
    let mut line = 1 + b[..end].iter().filter(|&&c| c == b'\n').count();
    if end == b.len() && end > 0 && b[end - 1] == b'\n' {
        line -= 1;
    }
    line
}

/// The text of `span`, if it is one.
fn slice(text: &str, span: Range<usize>) -> &str {
    text.get(span).unwrap_or("")
}

/// At most [`EXCERPT`] characters of `s`, for a message.
fn excerpt(s: &str) -> String {
    s.chars().take(EXCERPT).collect()
}

/// Parses `text` into its top-level table. Checks TOML syntax, and that no
/// key or table is defined twice; what the keys mean is the caller's.
pub(crate) fn parse(text: &str) -> Result<DeTable<'_>, ScenarioError> {
    if text.len() > MAX_INPUT {
        return Err(ScenarioError::new(
            0,
            None,
            ErrorKind::InputTooLarge { max: MAX_INPUT },
        ));
    }
    DeTable::parse(text)
        .map(toml::Spanned::into_inner)
        .map_err(|e| syntax_error(text, &e))
}

/// A `toml` error as a scenario error.
fn syntax_error(text: &str, e: &toml::de::Error) -> ScenarioError {
    let span = e.span().unwrap_or(0..0);
    let span = span.start.min(text.len())..span.end.min(text.len());
    let line = line_of(text, span.start);
    let msg = e.message();
    if msg == "duplicate key" {
        return duplicate(text, span);
    }
    let kind = if msg.starts_with("string values must be quoted") {
        // A bare word where a value goes: `memory = 2G`, `cpu = max`, or
        // nothing at all: `memory =`.
        let bare = slice(text, span.clone()).trim();
        if bare.is_empty() {
            match missing_value_key(text, span.start) {
                Some(key) => ErrorKind::MissingValue(key),
                None => ErrorKind::Syntax(msg.into()),
            }
        } else {
            ErrorKind::BadValue(excerpt(bare))
        }
    } else {
        ErrorKind::Syntax(msg.into())
    };
    ScenarioError::new(line, None, kind)
}

/// `key` when the line holding `offset` is `key =` with no value.
fn missing_value_key(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.split('\n').next()?;
    let (key, value) = line.split_once('=')?;
    let value = value.trim();
    (value.is_empty() || value.starts_with('#')).then(|| excerpt(key.trim()))
}

/// A key name as the file spells it, without the quotes of a quoted key.
fn unquote(raw: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = raw.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    raw
}

/// The error for a key or table that `toml` found defined twice, at
/// `span` (the second key). `toml` does not say where the first one is, so
/// the text before the second one's line is parsed again: it holds the
/// first definition and the section the second is in. That text can end
/// inside a construct `toml` refuses, so it is parsed with recovery; what
/// is not found there falls back to naming the key and the line.
fn duplicate(text: &str, span: Range<usize>) -> ScenarioError {
    let line = line_of(text, span.start);
    let line_start = slice(text, 0..span.start).rfind('\n').map_or(0, |i| i + 1);
    let key = unquote(slice(text, span.clone()));
    let before = slice(text, line_start..span.start).trim_start();
    let (prefix, _) = DeTable::parse_recoverable(slice(text, 0..line_start));
    let prefix = prefix.get_ref();
    let first = prefix
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v);

    if before.starts_with('[') {
        // A table header: `[machine]` or `[[vm]]` again, or written the
        // other way round.
        let array = before.starts_with("[[");
        let kind = match key {
            "machine" => match first {
                _ if array => ErrorKind::MachineIsArray,
                Some(v) if matches!(v.get_ref(), DeValue::Array(_)) => ErrorKind::MachineIsArray,
                Some(v) if matches!(v.get_ref(), DeValue::Table(_)) => {
                    ErrorKind::DuplicateMachine {
                        first_line: line_of(text, v.span().start),
                    }
                }
                _ => ErrorKind::Syntax("[machine] is defined twice".into()),
            },
            "vm" => ErrorKind::VmNotArray,
            other => ErrorKind::UnknownSection(excerpt(other)),
        };
        return ScenarioError::new(line, None, kind);
    }

    let section = last_section(prefix);
    let found = section.as_ref().and_then(|(_, table)| {
        // Only a key that starts its line is an entry of the section; one
        // after a dot or inside an inline table belongs to a table within.
        if !before.is_empty() {
            return None;
        }
        table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, _)| line_of(text, k.span().start))
    });
    let kind = match found {
        Some(first_line) => ErrorKind::DuplicateKey {
            key: excerpt(key),
            first_line,
        },
        None => ErrorKind::Syntax(alloc::format!("key {:?} given twice", excerpt(key))),
    };
    ScenarioError::new(line, section.map(|(s, _)| s), kind)
}

/// The section that the end of `doc` (a prefix of the text) is in: the
/// `[machine]` or `[[vm]]` whose header comes last, with its table.
fn last_section<'d, 'i>(doc: &'d DeTable<'i>) -> Option<(Section, &'d DeTable<'i>)> {
    let mut best: Option<(usize, Section, &DeTable<'i>)> = None;
    let mut consider = |start: usize, section: Section, table: &'d DeTable<'i>| {
        if best.as_ref().is_none_or(|(s, _, _)| start >= *s) {
            best = Some((start, section, table));
        }
    };
    for (k, v) in doc.iter() {
        match (k.get_ref().as_ref(), v.get_ref()) {
            ("machine", DeValue::Table(t)) => consider(v.span().start, Section::Machine, t),
            ("vm", DeValue::Array(a)) => {
                for (i, el) in a.iter().enumerate() {
                    if let DeValue::Table(t) = el.get_ref() {
                        let section = Section::Vm {
                            name: vm_name(t),
                            index: i + 1,
                        };
                        consider(el.span().start, section, t);
                    }
                }
            }
            _ => {}
        }
    }
    best.map(|(_, s, t)| (s, t))
}

/// A VM table's `name`, if it is a string short enough to show
/// ([`MAX_STRING`]), for the section errors name the VM by.
pub(crate) fn vm_name(t: &DeTable<'_>) -> Option<String> {
    t.iter()
        .find_map(|(k, v)| match (k.get_ref().as_ref(), v.get_ref()) {
            ("name", DeValue::String(s)) if s.len() <= MAX_STRING => Some(s.to_string()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scenario;
    use alloc::format;
    use alloc::vec;

    /// A machine that parses, for tests that add to it.
    const M: &str = "[machine]\ncpus = 2\nmemory = \"1G\"\n";

    fn fails(text: &str) -> ScenarioError {
        Scenario::parse(text).unwrap_err()
    }

    fn error(text: &str) -> String {
        fails(text).to_string()
    }

    #[test]
    fn lines_of_offsets() {
        let t = "a\nbc\n";
        assert_eq!(
            [0, 1, 2, 4, 5, 99].map(|o| line_of(t, o)),
            [1, 1, 2, 2, 2, 2]
        );
        assert_eq!(line_of("a\nb", 3), 2);
        assert_eq!(line_of("", 0), 1);
        assert_eq!(line_of("\n", 1), 1);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        assert_eq!(
            error("[machine]\n\ncpus = \"4\n"),
            "line 3: invalid basic string, expected `\"`"
        );
        // An unclosed construct at the end of the file is on its last line.
        assert_eq!(
            error("[machine]\ndevices = [\"a\"\n"),
            "line 2: unclosed array, expected `]`"
        );
        assert_eq!(
            error("[machine]\ndevices = [\"a\" \"b\"]\n"),
            "line 2: missing comma between array elements, expected `,`"
        );
        assert_eq!(fails("[machine]\ncpu = \"\\q\"\n").line, 2);
        assert_eq!(fails("[machine]\ncpu = \"a\u{1}\"\n").line, 2);
        assert_eq!(fails("[machine]\ncpus 4\n").line, 2);
        assert_eq!(fails("[machine]\ncpus = 1__0\n").line, 2);
        assert_eq!(error("[machine\n"), "line 1: unclosed table, expected `]`");
        assert_eq!(fails("[[vm]\n").line, 1);
        // Syntax errors name no section.
        assert!(fails(&format!("{M}\n[[vm]]\nname = 'a\n"))
            .section
            .is_none());
    }

    #[test]
    fn hints_for_common_mistakes() {
        assert_eq!(
            error("[machine]\nmemory = 2G\n"),
            "line 2: bad value 2G: strings need double quotes, e.g. \"2G\""
        );
        assert_eq!(
            fails("[machine]\ncpu = max\n").kind,
            ErrorKind::BadValue("max".into())
        );
        assert_eq!(
            error("[machine]\nmemory =\n"),
            "line 2: key \"memory\" has no value"
        );
        assert_eq!(
            fails("[machine]\nmemory =   # later\n").kind,
            ErrorKind::MissingValue("memory".into())
        );
    }

    #[test]
    fn integers() {
        let memory = |v: &str| Scenario::parse(&format!("[machine]\ncpus = 1\nmemory = {v}\n"));
        for (v, n) in [
            ("42", 42),
            ("+7", 7),
            ("1_000_000", 1_000_000),
            ("0x4000_0000", 0x4000_0000),
            ("0o17", 0o17),
            ("0b101", 5),
            ("0xffffffffffffffff", u64::MAX),
        ] {
            assert_eq!(memory(v).unwrap().machine.memory, n, "{v}");
        }
        let kind = |v: &str| memory(v).unwrap_err().kind;
        assert_eq!(kind("-1"), ErrorKind::Negative("-1".into()));
        assert_eq!(kind("0x"), ErrorKind::BadInteger("0x".into()));
        assert_eq!(
            kind("18446744073709551616"),
            ErrorKind::IntegerTooLarge("18446744073709551616".into())
        );
        assert_eq!(
            memory("-1").unwrap_err().to_string(),
            "line 3: machine: negative number -1: no setting takes one"
        );
    }

    #[test]
    fn other_toml_types_are_wrong_types() {
        for (v, found) in [
            ("1.5", "a float"),
            ("inf", "a float"),
            ("2024-01-01", "a date-time"),
            ("{ a = 1 }", "a table"),
        ] {
            assert_eq!(
                error(&format!("[machine]\ncpus = {v}\n")),
                format!("line 2: machine: cpus must be an integer, not {found}")
            );
        }
        assert_eq!(
            error(&format!("{M}devices = [\"a\", 1]\n")),
            "line 4: machine: arrays hold only strings, e.g. [\"00:02.0\"]"
        );
        assert_eq!(
            fails(&format!("{M}devices = [[\"a\"]]\n")).kind,
            ErrorKind::NonStringInArray
        );
    }

    #[test]
    fn section_errors() {
        assert_eq!(
            error("[machin]\n"),
            "line 1: unknown section [machin] (sections are [machine] and [[vm]])"
        );
        assert_eq!(
            fails("[[foo]]\n").kind,
            ErrorKind::UnknownSection("foo".into())
        );
        assert_eq!(fails("[vm]\n").kind, ErrorKind::VmNotArray);
        assert_eq!(fails("[vm]\n[[vm]]\n").kind, ErrorKind::VmNotArray);
        assert_eq!(fails("[[vm]]\n[vm]\n").kind, ErrorKind::VmNotArray);
        assert_eq!(fails("[[machine]]\n").kind, ErrorKind::MachineIsArray);
        let e = fails("[machine]\ncpus = 1\n[[machine]]\n");
        assert_eq!((e.line, e.kind), (3, ErrorKind::MachineIsArray));
        assert_eq!(
            error("[machine]\n\n[machine]\n"),
            "line 3: second [machine] section (the first is on line 1)"
        );
        assert_eq!(
            error("cpus = 1\n"),
            "line 1: key \"cpus\" is outside any section: put it under [machine] or [[vm]]"
        );
        assert_eq!(
            error("machine = 1\n"),
            "line 1: machine must be a table ([machine]), not an integer"
        );
        assert_eq!(
            error("vm = \"a\"\n"),
            "line 1: vm must be an array of tables ([[vm]]), not a string"
        );
        // A table under a section is a key of it.
        assert_eq!(
            error("[machine.extra]\n"),
            "line 1: machine: unknown key \"extra\""
        );
    }

    #[test]
    fn keys_given_twice() {
        let vm = "[[vm]]\nname = \"b\"\ncpus = 1\n";
        assert_eq!(
            error(&format!("{M}{vm}\n{vm}cpus = 2\n")),
            "line 11: vm \"b\": key \"cpus\" given twice (first on line 10)"
        );
        // Spelt differently, one key all the same.
        assert_eq!(
            error("[machine]\n\"cpus\" = 1\ncpus = 2\n"),
            "line 3: machine: key \"cpus\" given twice (first on line 2)"
        );
        // Where the first one is not found, the key and line still are.
        assert_eq!(
            error("[machine]\nx = { a = 1, a = 2 }\n"),
            "line 2: machine: key \"a\" given twice"
        );
        assert_eq!(error("x = 1\nx = 2\n"), "line 2: key \"x\" given twice");
    }

    #[test]
    fn comments_blank_lines_crlf_and_bom() {
        let text = "\u{feff}# top\r\n\r\n[machine] # m\r\ncpus = 4 # c\r\nmemory = \"1G\"\r\n\r\n[[vm]]\r\nname = \"a # b\"\r\n";
        let e = fails(text);
        assert_eq!(e.to_string(), "line 7: vm \"a # b\": missing key \"cpus\"");
    }

    #[test]
    fn full_toml_is_accepted() {
        // Literal, multi-line and escaped strings, arrays over several
        // lines with comments, quoted and dotted keys, inline tables.
        let text = r#"
machine.cpus = 2
machine.memory = '1G'
machine."bootargs" = """
selftest=dma"""
machine.devices = [ # the devices
    "a\tb",   # one
    'c\d',
]
vm = [
    { name = "a", cpus = 1, memory = "2M", kernel = "k" },
]
"#;
        let s = Scenario::parse(text).unwrap();
        assert_eq!(s.machine.memory, 1 << 30);
        assert_eq!(s.machine.bootargs, "selftest=dma");
        assert_eq!(s.machine.devices, vec!["a\tb", "c\\d"]);
        assert_eq!(s.vms.len(), 1);
        assert_eq!(s.vms[0].line, 11);
    }

    #[test]
    fn limits() {
        let big = "#".repeat(MAX_INPUT + 1);
        assert_eq!(
            fails(&big).kind,
            ErrorKind::InputTooLarge { max: MAX_INPUT }
        );
        let long = format!("{M}cpu = \"{}\"\n", "a".repeat(crate::MAX_STRING + 1));
        assert_eq!(
            error(&long),
            "line 4: machine: string longer than 4096 bytes"
        );
        let long = format!(
            "{M}devices = [\"a\",\n\"{}\"]\n",
            "a".repeat(crate::MAX_STRING + 1)
        );
        assert_eq!(
            error(&long),
            "line 5: machine: string longer than 4096 bytes"
        );
        let many = format!("{M}devices = [{}]\n", "\"a\",".repeat(crate::MAX_ARRAY + 1));
        assert_eq!(
            error(&many),
            "line 4: machine: array with more than 256 elements"
        );
        let most = format!("{M}devices = [{}]\n", "\"a\",".repeat(crate::MAX_ARRAY));
        assert_eq!(Scenario::parse(&most).unwrap().machine.devices.len(), 256);
    }
}
