//! [`FakeGuestMemory`]: a VM's RAM for host tests of the vSMMU.

use std::cell::RefCell;
use std::vec;
use std::vec::Vec;

use crate::addr::Ipa;
use crate::vsmmu::{GuestMemError, GuestMemory};

/// One contiguous range of guest RAM, `[base, base + size)`, backed by a
/// heap buffer. Accesses that are not entirely inside it fail, like an IPA
/// outside the VM. Counts accesses so tests can check bounded work.
#[derive(Debug)]
pub struct FakeGuestMemory {
    base: u64,
    bytes: RefCell<Vec<u8>>,
    reads: RefCell<usize>,
    fail_reads: RefCell<bool>,
}

impl FakeGuestMemory {
    /// `size` zeroed bytes of guest RAM at IPA `base`.
    pub fn new(base: Ipa, size: usize) -> Self {
        Self {
            base: base.0,
            bytes: RefCell::new(vec![0; size]),
            reads: RefCell::new(0),
            fail_reads: RefCell::new(false),
        }
    }

    fn range(&self, ipa: Ipa, len: usize) -> Result<core::ops::Range<usize>, GuestMemError> {
        let size = self.bytes.borrow().len() as u64;
        let off = ipa
            .0
            .checked_sub(self.base)
            .ok_or(GuestMemError::OutOfRange(ipa))?;
        let end = off
            .checked_add(len as u64)
            .ok_or(GuestMemError::OutOfRange(ipa))?;
        if end > size {
            return Err(GuestMemError::OutOfRange(ipa));
        }
        Ok(off as usize..end as usize)
    }

    /// Reads a little-endian u64 at `ipa` (panics outside RAM: test helper).
    pub fn read_u64(&self, ipa: Ipa) -> u64 {
        let mut b = [0u8; 8];
        GuestMemory::read(self, ipa, &mut b).expect("read_u64 outside guest RAM");
        u64::from_le_bytes(b)
    }

    /// Writes a little-endian u64 at `ipa` (panics outside RAM: test helper).
    pub fn write_u64(&self, ipa: Ipa, value: u64) {
        GuestMemory::write(self, ipa, &value.to_le_bytes()).expect("write_u64 outside guest RAM");
    }

    /// Number of successful or failed reads so far.
    pub fn reads(&self) -> usize {
        *self.reads.borrow()
    }

    /// Makes every read fail (to model a queue the SMMU cannot fetch).
    pub fn set_fail_reads(&self, fail: bool) {
        *self.fail_reads.borrow_mut() = fail;
    }
}

impl GuestMemory for FakeGuestMemory {
    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), GuestMemError> {
        *self.reads.borrow_mut() += 1;
        if *self.fail_reads.borrow() {
            return Err(GuestMemError::OutOfRange(ipa));
        }
        let r = self.range(ipa, buf.len())?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }

    fn write(&self, ipa: Ipa, buf: &[u8]) -> Result<(), GuestMemError> {
        let r = self.range(ipa, buf.len())?;
        self.bytes.borrow_mut()[r].copy_from_slice(buf);
        Ok(())
    }
}
