//! The TOML subset scenario files are written in: comments, `[machine]`,
//! `[[vm]]`, bare keys, strings (basic and literal), integers (decimal, hex,
//! octal, binary, with underscores), booleans and arrays of strings (which
//! may span lines). A hand-written, single-pass parser over the bytes: no
//! recursion, every loop advances, and what it stores is capped, so any input
//! costs at most linear time and never panics.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{ErrorKind, ScenarioError};

/// Largest scenario text accepted.
pub const MAX_INPUT: usize = 1 << 20;
/// Longest string value.
pub const MAX_STRING: usize = 4096;
/// Most elements in one array.
pub const MAX_ARRAY: usize = 256;
/// Most `[[vm]]` tables.
pub const MAX_VMS: usize = 64;
/// Entries stored per table. Every table has fewer known keys than this, so
/// a table that reaches it has an unknown or duplicate key among the first
/// entries, which is the error reported.
pub(crate) const MAX_ENTRIES: usize = 32;

/// A parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
    Array(Vec<String>),
}

impl Value {
    /// How error messages name the value's type.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub value: Value,
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Machine,
    Vm,
}

#[derive(Debug)]
pub(crate) struct Table {
    pub kind: Kind,
    /// Line of the header.
    pub line: usize,
    pub entries: Vec<Entry>,
    /// Entries beyond `MAX_ENTRIES` were dropped.
    pub overflow: bool,
}

/// The whole file: tables in file order.
#[derive(Debug)]
pub(crate) struct Document {
    pub tables: Vec<Table>,
    /// Line of the first `[[vm]]` beyond `MAX_VMS`, which was dropped.
    pub too_many_vms: Option<usize>,
}

struct Cursor<'a> {
    src: &'a str,
    b: &'a [u8],
    pos: usize,
    line: usize,
}

fn err(line: usize, kind: ErrorKind) -> ScenarioError {
    ScenarioError::new(line, None, kind)
}

fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Characters that may make up a bare (unquoted) value token.
fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.' | b':')
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, off: usize) -> Option<u8> {
        self.b.get(self.pos.saturating_add(off)).copied()
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn skip_comment(&mut self) {
        if self.peek() == Some(b'#') {
            while !matches!(self.peek(), None | Some(b'\n')) {
                self.pos += 1;
            }
        }
    }

    /// At a newline (consumed, line counted) or at the end.
    fn end_of_line(&mut self) -> Result<(), ScenarioError> {
        self.skip_spaces();
        self.skip_comment();
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.pos += 1;
                self.line += 1;
                Ok(())
            }
            Some(b'\r') if self.peek_at(1) == Some(b'\n') => {
                self.pos += 2;
                self.line += 1;
                Ok(())
            }
            Some(_) => Err(err(self.line, ErrorKind::TrailingText(self.rest_of_line()))),
        }
    }

    /// The rest of the line (for messages), shortened.
    fn rest_of_line(&self) -> String {
        let rest = self.src.get(self.pos..).unwrap_or("");
        let line = rest.split(['\n', '\r']).next().unwrap_or("");
        line.chars().take(40).collect()
    }

    /// Spaces, newlines and comments (inside arrays).
    fn skip_blank(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r') => self.pos += 1,
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(b'#') => self.skip_comment(),
                _ => return,
            }
        }
    }

    fn key(&mut self) -> Result<String, ScenarioError> {
        let start = self.pos;
        while self.peek().is_some_and(is_key_byte) {
            self.pos += 1;
        }
        let key = self.src.get(start..self.pos).unwrap_or("").to_string();
        if key.is_empty() || matches!(self.peek(), Some(b'.' | b'"' | b'\'')) {
            let mut shown = key;
            shown.push_str(&self.rest_of_line());
            let shown = shown.split('=').next().unwrap_or("").trim().to_string();
            return Err(err(self.line, ErrorKind::BadKey(shown)));
        }
        Ok(key)
    }

    /// A basic `"..."` or literal `'...'` string; the cursor is at the quote.
    fn string(&mut self) -> Result<String, ScenarioError> {
        let quote = self.peek().unwrap_or(b'"');
        if self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote) {
            return Err(err(self.line, ErrorKind::Unsupported("multi-line strings")));
        }
        self.pos += 1;
        let mut out = String::new();
        loop {
            // A run of plain characters; it ends at an ASCII byte, so on a
            // char boundary.
            let start = self.pos;
            while let Some(c) = self.peek() {
                if c == quote || c == b'\n' || (c < 0x20 && c != b'\t') || c == 0x7f {
                    break;
                }
                if c == b'\\' && quote == b'"' {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(self.src.get(start..self.pos).unwrap_or(""));
            if out.len() > MAX_STRING {
                return Err(err(self.line, ErrorKind::StringTooLong { max: MAX_STRING }));
            }
            match self.peek() {
                None | Some(b'\n') => return Err(err(self.line, ErrorKind::UnterminatedString)),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.escape()?;
                    out.push(c);
                }
                Some(b'\r') if self.peek_at(1) == Some(b'\n') => {
                    return Err(err(self.line, ErrorKind::UnterminatedString))
                }
                Some(_) => return Err(err(self.line, ErrorKind::ControlCharacter)),
            }
        }
    }

    /// After a backslash in a basic string.
    fn escape(&mut self) -> Result<char, ScenarioError> {
        let Some(c) = self.src.get(self.pos..).and_then(|s| s.chars().next()) else {
            return Err(err(self.line, ErrorKind::UnterminatedString));
        };
        self.pos += c.len_utf8();
        Ok(match c {
            '"' => '"',
            '\\' => '\\',
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'u' | 'U' => {
                let n = if c == 'u' { 4 } else { 8 };
                let hex = self
                    .src
                    .get(self.pos..self.pos.saturating_add(n))
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                let Some(ch) = hex
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                else {
                    return Err(err(self.line, ErrorKind::BadEscape(c)));
                };
                self.pos += n;
                ch
            }
            '\n' => return Err(err(self.line, ErrorKind::Unsupported("line continuations"))),
            other => return Err(err(self.line, ErrorKind::BadEscape(other))),
        })
    }

    fn value(&mut self, key: &str) -> Result<Value, ScenarioError> {
        match self.peek() {
            Some(b'"' | b'\'') => Ok(Value::Str(self.string()?)),
            Some(b'[') => self.array(),
            Some(b'{') => Err(err(self.line, ErrorKind::Unsupported("inline tables"))),
            None | Some(b'\n' | b'\r' | b'#') => {
                Err(err(self.line, ErrorKind::MissingValue(key.to_string())))
            }
            Some(_) => {
                let start = self.pos;
                while self.peek().is_some_and(is_token_byte) {
                    self.pos += 1;
                }
                let tok = self.src.get(start..self.pos).unwrap_or("");
                if tok.is_empty() {
                    return Err(err(self.line, ErrorKind::BadValue(self.rest_of_line())));
                }
                scalar(tok).map_err(|k| err(self.line, k))
            }
        }
    }

    /// `[ "a", "b", ]`, possibly over several lines with comments.
    fn array(&mut self) -> Result<Value, ScenarioError> {
        let open_line = self.line;
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            self.skip_blank();
            match self.peek() {
                None => return Err(err(open_line, ErrorKind::UnterminatedArray)),
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(b'"' | b'\'') => {
                    if items.len() >= MAX_ARRAY {
                        return Err(err(self.line, ErrorKind::ArrayTooLong { max: MAX_ARRAY }));
                    }
                    items.push(self.string()?);
                    self.skip_blank();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {}
                        None => return Err(err(open_line, ErrorKind::UnterminatedArray)),
                        Some(_) => {
                            return Err(err(
                                self.line,
                                ErrorKind::TrailingText(self.rest_of_line()),
                            ))
                        }
                    }
                }
                Some(b'[' | b'{') => return Err(err(self.line, ErrorKind::NonStringInArray)),
                Some(c) if is_token_byte(c) => {
                    return Err(err(self.line, ErrorKind::NonStringInArray))
                }
                Some(_) => {
                    return Err(err(self.line, ErrorKind::TrailingText(self.rest_of_line())))
                }
            }
        }
    }

    /// `[name]` or `[[name]]`; the cursor is at the first `[`.
    fn header(&mut self) -> Result<Kind, ScenarioError> {
        self.pos += 1;
        let array = self.peek() == Some(b'[');
        if array {
            self.pos += 1;
        }
        self.skip_spaces();
        let start = self.pos;
        while !matches!(self.peek(), None | Some(b']' | b'\n' | b' ' | b'\t')) {
            self.pos += 1;
        }
        let name = self.src.get(start..self.pos).unwrap_or("").to_string();
        self.skip_spaces();
        let closes = if array { 2 } else { 1 };
        for _ in 0..closes {
            if self.peek() != Some(b']') {
                return Err(err(self.line, ErrorKind::UnclosedHeader));
            }
            self.pos += 1;
        }
        let kind = match (name.as_str(), array) {
            ("machine", false) => Kind::Machine,
            ("vm", true) => Kind::Vm,
            ("vm", false) => return Err(err(self.line, ErrorKind::VmNotArray)),
            ("machine", true) => return Err(err(self.line, ErrorKind::MachineIsArray)),
            _ => return Err(err(self.line, ErrorKind::UnknownSection(name))),
        };
        Ok(kind)
    }
}

/// A bare value: boolean or non-negative integer.
fn scalar(tok: &str) -> Result<Value, ErrorKind> {
    match tok {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        "inf" | "nan" | "+inf" | "-inf" | "+nan" | "-nan" => {
            return Err(ErrorKind::Unsupported("floating-point numbers"))
        }
        _ => {}
    }
    let first = tok.as_bytes().first().copied().unwrap_or(b' ');
    if first == b'-' {
        return Err(ErrorKind::Negative(tok.to_string()));
    }
    if !first.is_ascii_digit() && first != b'+' {
        return Err(ErrorKind::BadValue(tok.to_string()));
    }
    parse_int(tok).map(Value::Int).map_err(|e| {
        // `memory = 2G`: a size written without quotes.
        let digits = tok.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = tok.get(digits.len()..).unwrap_or("");
        let is_unit = [
            "K", "M", "G", "T", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB",
        ]
        .iter()
        .any(|u| u.eq_ignore_ascii_case(unit));
        if is_unit && parse_int(digits).is_ok() {
            ErrorKind::BadValue(tok.to_string())
        } else {
            e
        }
    })
}

/// `123`, `1_000`, `0x4000_0000`, `0o17`, `0b101`, optional leading `+`.
pub(crate) fn parse_int(tok: &str) -> Result<u64, ErrorKind> {
    let bad = || ErrorKind::BadInteger(tok.to_string());
    let body = tok.strip_prefix('+').unwrap_or(tok);
    if body.contains(['.', 'e', 'E']) && !body.starts_with("0x") {
        return Err(ErrorKind::Unsupported("floating-point numbers"));
    }
    if body.contains([':']) || (body.len() > 4 && body.as_bytes().get(4) == Some(&b'-')) {
        return Err(ErrorKind::Unsupported("dates and times"));
    }
    let (radix, digits) = if let Some(d) = body.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = body.strip_prefix("0b") {
        (2, d)
    } else {
        (10, body)
    };
    // Underscores only between digits.
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return Err(bad());
    }
    let mut v: u64 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let d = c.to_digit(radix).ok_or_else(bad)?;
        v = v
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
            .ok_or_else(|| ErrorKind::IntegerTooLarge(tok.to_string()))?;
    }
    Ok(v)
}

/// Parses the text into tables. Checks syntax and section structure only;
/// keys and types are checked by the caller.
pub(crate) fn parse(src: &str) -> Result<Document, ScenarioError> {
    if src.len() > MAX_INPUT {
        return Err(err(0, ErrorKind::InputTooLarge { max: MAX_INPUT }));
    }
    let mut c = Cursor {
        src,
        b: src.as_bytes(),
        pos: 0,
        line: 1,
    };
    // A byte-order mark some editors write.
    if src.starts_with('\u{feff}') {
        c.pos = 3;
    }
    let mut doc = Document {
        tables: Vec::new(),
        too_many_vms: None,
    };
    let mut vms = 0usize;
    let mut machine_line = None;
    // Whether entries go to the last table in `doc.tables` (false after a
    // dropped `[[vm]]`).
    let mut storing = false;
    while c.pos < c.b.len() {
        c.skip_spaces();
        match c.peek() {
            None => break,
            Some(b'#' | b'\n' | b'\r') => {}
            Some(b'[') => {
                let line = c.line;
                let kind = c.header()?;
                match kind {
                    Kind::Machine => {
                        if let Some(first_line) = machine_line {
                            return Err(err(line, ErrorKind::DuplicateMachine { first_line }));
                        }
                        machine_line = Some(line);
                    }
                    Kind::Vm => vms += 1,
                }
                storing = !(kind == Kind::Vm && vms > MAX_VMS);
                if storing {
                    doc.tables.push(Table {
                        kind,
                        line,
                        entries: Vec::new(),
                        overflow: false,
                    });
                } else if doc.too_many_vms.is_none() {
                    doc.too_many_vms = Some(line);
                }
            }
            Some(_) => {
                let line = c.line;
                let key = c.key()?;
                c.skip_spaces();
                if c.peek() != Some(b'=') {
                    return Err(err(line, ErrorKind::ExpectedEquals(key)));
                }
                c.pos += 1;
                c.skip_spaces();
                let value = c.value(&key)?;
                if doc.tables.is_empty() {
                    return Err(err(line, ErrorKind::KeyOutsideSection(key)));
                }
                if storing {
                    if let Some(t) = doc.tables.last_mut() {
                        if t.entries.len() < MAX_ENTRIES {
                            t.entries.push(Entry { key, value, line });
                        } else {
                            t.overflow = true;
                        }
                    }
                }
            }
        }
        c.end_of_line()?;
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Value {
        let doc = parse(&alloc::format!("[machine]\nk = {src}\n")).unwrap();
        doc.tables[0].entries[0].value.clone()
    }

    fn fails(src: &str) -> ScenarioError {
        parse(src).unwrap_err()
    }

    #[test]
    fn values() {
        assert_eq!(one("\"a b\""), Value::Str("a b".into()));
        assert_eq!(one("'C:\\x'"), Value::Str("C:\\x".into()));
        assert_eq!(one(r#""q\"\\\n\t\u00e9""#), Value::Str("q\"\\\n\té".into()));
        assert_eq!(one("42"), Value::Int(42));
        assert_eq!(one("+7"), Value::Int(7));
        assert_eq!(one("1_000_000"), Value::Int(1_000_000));
        assert_eq!(one("0x4000_0000"), Value::Int(0x4000_0000));
        assert_eq!(one("0o17"), Value::Int(0o17));
        assert_eq!(one("0b101"), Value::Int(5));
        assert_eq!(one("0xffffffffffffffff"), Value::Int(u64::MAX));
        assert_eq!(one("true"), Value::Bool(true));
        assert_eq!(one("false"), Value::Bool(false));
        assert_eq!(one("[]"), Value::Array(Vec::new()));
        assert_eq!(
            one("[\"a\", 'b',]"),
            Value::Array(alloc::vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn multi_line_array_with_comments() {
        let doc =
            parse("[machine]\nd = [ # devices\n  \"a\", # one\n\n  \"b\"\n]\nx = 1\n").unwrap();
        let t = &doc.tables[0];
        assert_eq!(
            t.entries[0].value,
            Value::Array(alloc::vec!["a".into(), "b".into()])
        );
        assert_eq!(t.entries[1].line, 7);
    }

    #[test]
    fn comments_blank_lines_crlf_and_lines() {
        let doc =
            parse("# top\r\n\r\n[machine] # m\r\ncpus = 4 # c\r\n\r\n[[vm]]\r\nname = \"a\"\r\n")
                .unwrap();
        assert_eq!(doc.tables.len(), 2);
        assert_eq!(doc.tables[0].line, 3);
        assert_eq!(doc.tables[0].entries[0].line, 4);
        assert_eq!(doc.tables[1].kind, Kind::Vm);
        assert_eq!(doc.tables[1].line, 6);
        // `#` inside a string is not a comment.
        assert_eq!(one("\"a # b\" # c"), Value::Str("a # b".into()));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = fails("[machine]\n\ncpus = \"4\n");
        assert_eq!((e.line, &e.kind), (3, &ErrorKind::UnterminatedString));
        assert_eq!(
            e.to_string(),
            "line 3: string has no closing quote on this line"
        );
        assert_eq!(
            fails("[machine]\nd = [\"a\"\n").kind,
            ErrorKind::UnterminatedArray
        );
        assert_eq!(
            fails("[machine]\nd = [1]\n").kind,
            ErrorKind::NonStringInArray
        );
        assert_eq!(
            fails("[machine]\nd = [[\"a\"]]\n").kind,
            ErrorKind::NonStringInArray
        );
        assert_eq!(
            fails("[machine]\nd = [\"a\" \"b\"]\n").kind,
            ErrorKind::TrailingText("\"b\"]".into())
        );
        assert_eq!(
            fails("[machine]\nx = \"\\q\"\n").kind,
            ErrorKind::BadEscape('q')
        );
        assert_eq!(
            fails("[machine]\nx = \"a\u{1}\"\n").kind,
            ErrorKind::ControlCharacter
        );
        assert_eq!(
            fails("[machine]\nx = 4 5\n").kind,
            ErrorKind::TrailingText("5".into())
        );
        assert_eq!(
            fails("[machine]\nx =\n").kind,
            ErrorKind::MissingValue("x".into())
        );
        assert_eq!(
            fails("[machine]\nx 4\n").kind,
            ErrorKind::ExpectedEquals("x".into())
        );
        assert_eq!(
            fails("[machine]\na.b = 4\n").kind,
            ErrorKind::BadKey("a.b".into())
        );
        assert_eq!(
            fails("[machine]\n\"a\" = 4\n").kind,
            ErrorKind::BadKey("\"a\"".into())
        );
        let e = fails("[machine]\nx = 2G\n");
        assert_eq!(e.kind, ErrorKind::BadValue("2G".into()));
        assert_eq!(
            e.to_string(),
            "line 2: bad value 2G: strings need double quotes, e.g. \"2G\""
        );
        assert_eq!(
            fails("[machine]\nx = 2Q\n").kind,
            ErrorKind::BadInteger("2Q".into())
        );
        assert_eq!(
            fails("[machine]\nx = max\n").kind,
            ErrorKind::BadValue("max".into())
        );
        assert_eq!(
            fails("[machine]\nx = -1\n").kind,
            ErrorKind::Negative("-1".into())
        );
        assert_eq!(
            fails("[machine]\nx = 1__0\n").kind,
            ErrorKind::BadInteger("1__0".into())
        );
        assert_eq!(
            fails("[machine]\nx = 0x\n").kind,
            ErrorKind::BadInteger("0x".into())
        );
        assert_eq!(
            fails("[machine]\nx = 18446744073709551616\n").kind,
            ErrorKind::IntegerTooLarge("18446744073709551616".into())
        );
        assert_eq!(
            fails("[machine]\nx = 1.5\n").kind,
            ErrorKind::Unsupported("floating-point numbers")
        );
        assert_eq!(
            fails("[machine]\nx = 2024-01-01\n").kind,
            ErrorKind::Unsupported("dates and times")
        );
        assert_eq!(
            fails("[machine]\nx = {a = 1}\n").kind,
            ErrorKind::Unsupported("inline tables")
        );
        assert_eq!(
            fails("[machine]\nx = \"\"\"a\"\"\"\n").kind,
            ErrorKind::Unsupported("multi-line strings")
        );
    }

    #[test]
    fn section_errors() {
        assert_eq!(
            fails("[machin]\n").kind,
            ErrorKind::UnknownSection("machin".into())
        );
        assert_eq!(fails("[vm]\n").kind, ErrorKind::VmNotArray);
        assert_eq!(fails("[[machine]]\n").kind, ErrorKind::MachineIsArray);
        assert_eq!(fails("[[vm]\n").kind, ErrorKind::UnclosedHeader);
        assert_eq!(fails("[machine\n").kind, ErrorKind::UnclosedHeader);
        let e = fails("[machine]\n[machine]\n");
        assert_eq!(
            (e.line, e.kind),
            (2, ErrorKind::DuplicateMachine { first_line: 1 })
        );
        assert_eq!(
            fails("cpus = 1\n").kind,
            ErrorKind::KeyOutsideSection("cpus".into())
        );
    }

    #[test]
    fn limits() {
        let big = "#".repeat(MAX_INPUT + 1);
        assert_eq!(
            fails(&big).kind,
            ErrorKind::InputTooLarge { max: MAX_INPUT }
        );
        let long = alloc::format!("[machine]\nx = \"{}\"\n", "a".repeat(MAX_STRING + 1));
        assert_eq!(
            fails(&long).kind,
            ErrorKind::StringTooLong { max: MAX_STRING }
        );
        let many = alloc::format!("[machine]\nx = [{}]\n", "\"a\",".repeat(MAX_ARRAY + 1));
        assert_eq!(
            fails(&many).kind,
            ErrorKind::ArrayTooLong { max: MAX_ARRAY }
        );
        let vms = "[[vm]]\n".repeat(MAX_VMS + 2);
        let doc = parse(&vms).unwrap();
        assert_eq!(doc.tables.len(), MAX_VMS);
        assert_eq!(doc.too_many_vms, Some(MAX_VMS + 1));
        let keys: String = (0..MAX_ENTRIES + 5)
            .map(|i| alloc::format!("k{i} = 1\n"))
            .collect();
        let doc = parse(&alloc::format!("[machine]\n{keys}")).unwrap();
        assert_eq!(doc.tables[0].entries.len(), MAX_ENTRIES);
        assert!(doc.tables[0].overflow);
    }
}
