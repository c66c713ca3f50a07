//! The fuzzer's input as a stream of little-endian fields.
//!
//! [`Reader`] takes fields front to back; past the end every field reads as
//! zero, so any byte string (even an empty one) decodes to something and no
//! input is wasted on a parse error. [`Writer`] is its inverse, used to build
//! the committed seeds from readable sequences of operations.

use std::fmt::Debug;
use std::format;
use std::string::String;
use std::vec::Vec;

/// Reads fields from the fuzzer's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    /// A length byte (at most `max`) followed by that many bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = usize::from(self.u8()) % (max + 1);
        let n = len.min(self.data.len());
        let mut out = self.data[..n].to_vec();
        self.data = &self.data[n..];
        out.resize(len, 0);
        out
    }
}

/// Builds an input that a [`Reader`] reads back field by field.
#[derive(Debug, Default)]
pub struct Writer {
    data: Vec<u8>,
}

impl Writer {
    /// An empty input.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written so far.
    pub fn finish(self) -> Vec<u8> {
        self.data
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.data.push(v);
    }

    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.data.extend_from_slice(&v.to_le_bytes());
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.data.extend_from_slice(&v.to_le_bytes());
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.data.extend_from_slice(&v.to_le_bytes());
    }

    /// What [`Reader::bytes`] reads back (`v` must be at most 255 bytes).
    pub fn bytes(&mut self, v: &[u8]) {
        let len = u8::try_from(v.len()).expect("Writer::bytes: at most 255 bytes");
        self.u8(len);
        self.data.extend_from_slice(v);
    }
}

/// An input as the targets read it: a header, read by `header`, then
/// operations, each read by `op`, until the bytes run out (at most `max`).
pub fn decode_input<S, O>(
    data: &[u8],
    max: usize,
    header: impl FnOnce(&mut Reader<'_>) -> S,
    mut op: impl FnMut(&mut Reader<'_>, &S) -> O,
) -> (S, Vec<O>) {
    let mut r = Reader::new(data);
    let header = header(&mut r);
    let mut ops = Vec::new();
    while !r.is_empty() && ops.len() < max {
        ops.push(op(&mut r, &header));
    }
    (header, ops)
}

/// The input that [`decode_input`] reads back as `header` and `ops`.
pub fn encode_input<S, O>(
    header: &S,
    ops: &[O],
    encode_header: impl FnOnce(&S, &mut Writer),
    encode_op: impl Fn(&O, &mut Writer),
) -> Vec<u8> {
    let mut w = Writer::new();
    encode_header(header, &mut w);
    for op in ops {
        encode_op(op, &mut w);
    }
    w.finish()
}

/// A decoded input, one operation per line: what a crashing input did.
pub fn describe_input<S: Debug, O: Debug>(header: &S, ops: &[O]) -> String {
    let mut s = format!("{header:?}\n");
    for (i, op) in ops.iter().enumerate() {
        s.push_str(&format!("{i:4}: {op:?}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_and_zeros_after_the_end() {
        let mut w = Writer::new();
        w.u8(7);
        w.u16(0x1234);
        w.u32(0xdead_beef);
        w.u64(u64::MAX - 1);
        w.bytes(&[1, 2, 3]);
        let data = w.finish();
        let mut r = Reader::new(&data);
        assert_eq!(r.u8(), 7);
        assert_eq!(r.u16(), 0x1234);
        assert_eq!(r.u32(), 0xdead_beef);
        assert_eq!(r.u64(), u64::MAX - 1);
        assert_eq!(r.bytes(64), [1, 2, 3]);
        assert!(r.is_empty());
        assert_eq!((r.u8(), r.u64()), (0, 0));
        // A truncated field is zero-extended.
        let mut r = Reader::new(&[0xAB]);
        assert_eq!(r.u32(), 0xAB);
        let mut r = Reader::new(&[5, 9]);
        assert_eq!(r.bytes(64), [9, 0, 0, 0, 0]);
    }
}
