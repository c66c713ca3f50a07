//! A VM's RAM as the hypervisor reaches it: one block of host memory
//! identity-mapped at EL2, seen by the guest at an IPA range.
//!
//! The guest's vCPUs and its devices write that memory while the hypervisor
//! reads it (the vSMMU's queues and tables, images at load), so it is never
//! handed out as a Rust slice, which would promise that nobody else writes
//! it: every access is a volatile copy through [`GuestRam::read`] and
//! [`GuestRam::write`] (the model is rust-vmm's `VolatileSlice`), bounds
//! checked against the VM's RAM. What a guest wrote meanwhile is only ever
//! seen as bytes, never as a broken Rust invariant.

use core::ops::Range;
use smmu::addr::Ipa;
use smmu::vsmmu::{GuestMemError, GuestMemory};

/// A VM's RAM: `[ipa.start, ipa.end)` backed by host memory at `host`.
#[derive(Clone, Debug)]
pub struct GuestRam {
    ipa: Range<Ipa>,
    host: usize,
}

impl GuestRam {
    /// The RAM of a VM that sees `ipa`, backed by host memory at `host`.
    ///
    /// # Safety
    ///
    /// `host .. host + (ipa.end - ipa.start)` is memory mapped read-write at
    /// EL2 that the VM owns (no hypervisor object lives in it) and that stays
    /// mapped for as long as this value or a clone of it exists.
    pub unsafe fn new(ipa: Range<Ipa>, host: usize) -> Self {
        assert!(ipa.start <= ipa.end, "guest RAM range {ipa:?} is reversed");
        Self { ipa, host }
    }

    /// The IPA range of the VM's RAM.
    pub fn ipa_range(&self) -> Range<Ipa> {
        self.ipa.clone()
    }

    /// The host address of `[ipa, ipa + len)`, if it lies in the VM's RAM.
    fn host_addr(&self, ipa: Ipa, len: usize) -> Option<usize> {
        let end = ipa.checked_add(len as u64)?;
        (ipa >= self.ipa.start && end <= self.ipa.end)
            .then(|| self.host + (ipa.raw() - self.ipa.start.raw()) as usize)
    }

    /// Whether `[ipa, ipa + len)` lies in the VM's RAM.
    pub fn check(&self, ipa: Ipa, len: usize) -> Result<(), GuestMemError> {
        self.host_addr(ipa, len)
            .map(|_| ())
            .ok_or(GuestMemError::OutOfRange(ipa))
    }

    /// Cleans and invalidates `[ipa, ipa + len)` to the point of coherency
    /// (what the hypervisor wrote there reaches memory, which a guest with
    /// its MMU and caches off reads).
    pub fn clean_to_poc(&self, ipa: Ipa, len: usize) -> Result<(), GuestMemError> {
        let at = self
            .host_addr(ipa, len)
            .ok_or(GuestMemError::OutOfRange(ipa))?;
        crate::arch::clean_inval_dcache(at as u64, len);
        Ok(())
    }

    /// Writes an image at `ipa`, before the VM starts or restarts (its
    /// vCPUs not running, its devices' bus mastering off), and cleans it to
    /// the point of coherency as it goes: the guest starts with its MMU and
    /// caches off. Most of it is copied 64 bytes at a time
    /// (`arch::copy_to_poc`).
    pub fn load(&self, ipa: Ipa, data: &[u8]) -> Result<(), GuestMemError> {
        let dst = self
            .host_addr(ipa, data.len())
            .ok_or(GuestMemError::OutOfRange(ipa))?;
        let head = (dst.next_multiple_of(64) - dst).min(data.len());
        let body = (data.len() - head) & !63;
        let src = data.as_ptr() as usize + head;
        if body == 0 || !src.is_multiple_of(8) {
            self.write(ipa, data)?;
            return self.clean_to_poc(ipa, data.len());
        }
        let tail = Ipa(ipa.raw() + (head + body) as u64);
        self.write(ipa, &data[..head])?;
        self.clean_to_poc(ipa, head)?;
        // SAFETY: `dst + head .. + body` lies in the VM's RAM (host_addr
        // checked the whole image), mapped read-write as `new`'s caller
        // vouched, holding no hypervisor object, unused while the VM is
        // stopped (this function's contract); the source is the rest of a
        // shared slice, which nothing writes; they cannot overlap (a VM's
        // RAM is its own); `dst + head` and `body` are multiples of 64,
        // `src` of 8 (checked above).
        unsafe { crate::arch::copy_to_poc(dst + head, src, body) };
        self.write(tail, &data[head + body..])?;
        self.clean_to_poc(tail, data.len() - head - body)
    }

    /// Copies `buf.len()` bytes of the guest's memory at `ipa` into `buf`.
    pub fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), GuestMemError> {
        let src = self
            .host_addr(ipa, buf.len())
            .ok_or(GuestMemError::OutOfRange(ipa))?;
        let mut chunks = buf.chunks_exact_mut(8);
        let mut at = src;
        if src.is_multiple_of(8) {
            for chunk in &mut chunks {
                // SAFETY: `at..at + 8` lies in the VM's RAM (host_addr checked
                // the whole range), which `new`'s caller vouched is mapped for
                // as long as `self` lives; aligned to 8 (checked above).
                let word = unsafe { core::ptr::read_volatile(at as *const u64) };
                chunk.copy_from_slice(&word.to_ne_bytes());
                at += 8;
            }
        }
        let done = at - src;
        for byte in &mut buf[done..] {
            // SAFETY: as above, one byte inside the checked range.
            *byte = unsafe { core::ptr::read_volatile(at as *const u8) };
            at += 1;
        }
        Ok(())
    }

    /// Copies `data` into the guest's memory at `ipa`.
    pub fn write(&self, ipa: Ipa, data: &[u8]) -> Result<(), GuestMemError> {
        let dst = self
            .host_addr(ipa, data.len())
            .ok_or(GuestMemError::OutOfRange(ipa))?;
        let mut at = dst;
        let mut chunks = data.chunks_exact(8);
        if dst.is_multiple_of(8) {
            for chunk in &mut chunks {
                let word = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk"));
                // SAFETY: `at..at + 8` lies in the VM's RAM (host_addr checked
                // the whole range), mapped read-write as `new`'s caller
                // vouched, and holds no hypervisor object; aligned to 8.
                unsafe { core::ptr::write_volatile(at as *mut u64, word) };
                at += 8;
            }
        }
        let done = at - dst;
        for &byte in &data[done..] {
            // SAFETY: as above, one byte inside the checked range.
            unsafe { core::ptr::write_volatile(at as *mut u8, byte) };
            at += 1;
        }
        Ok(())
    }
}

impl GuestRam {
    /// Where the VM's RAM is in host memory: (address, length).
    pub fn host_range(&self) -> (usize, usize) {
        let len = (self.ipa.end.raw() - self.ipa.start.raw()) as usize;
        (self.host, len)
    }

    /// Zeroes part `i` of `parts` of the VM's RAM (0 < `parts`; the parts
    /// are 4 KiB aligned, the last takes the rest, together they cover the
    /// RAM exactly once), so that several CPUs can scrub one VM's RAM at
    /// once, before it first starts and at each restart: nothing of what
    /// the memory held before reaches the guest. The zeroes reach the
    /// point of coherency (`arch::zero_to_poc`): a guest starts with its
    /// MMU and caches off and reads memory, not the caches. Returns the
    /// host range written.
    pub fn scrub_part(&self, i: usize, parts: usize) -> (usize, usize) {
        let total = (self.ipa.end.raw() - self.ipa.start.raw()) as usize;
        let parts = parts.max(1);
        let step = (total / parts) & !0xfff;
        let start = self.host + step * i.min(parts - 1);
        let end = if i + 1 >= parts {
            self.host + total
        } else {
            start + step
        };
        // The 64-byte aligned body in runs of stores, the edges (none in
        // RAM the hypervisor allocates, page aligned) a byte at a time.
        let body_start = start.next_multiple_of(64).min(end);
        let body = body_start..(end & !63).max(body_start);
        for at in (start..body.start).chain(body.end..end) {
            // SAFETY: one byte of the VM's RAM, mapped read-write as
            // `new`'s caller vouched, holding no hypervisor object.
            unsafe { core::ptr::write_volatile(at as *mut u8, 0) };
        }
        for (at, len) in [(start, body.start - start), (body.end, end - body.end)] {
            if len > 0 {
                crate::arch::clean_inval_dcache(at as u64, len);
            }
        }
        if !body.is_empty() {
            // SAFETY: the body lies in the VM's RAM, mapped read-write as
            // `new`'s caller vouched, holds no hypervisor object, and its
            // ends are multiples of 64; the VM's vCPUs are not running
            // (the caller's part of the contract of a scrub).
            unsafe { crate::arch::zero_to_poc(body.start, body.end - body.start) };
        }
        (start, end - start)
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), GuestMemError> {
        GuestRam::read(self, ipa, buf)
    }

    fn write(&self, ipa: Ipa, buf: &[u8]) -> Result<(), GuestMemError> {
        GuestRam::write(self, ipa, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// Guest RAM over a host buffer, seen at IPA 0x4000_0000.
    fn ram(backing: &mut [u64]) -> GuestRam {
        let len = (backing.len() * 8) as u64;
        // SAFETY: the buffer outlives every use in the test that made it.
        unsafe {
            GuestRam::new(
                Ipa(0x4000_0000)..Ipa(0x4000_0000 + len),
                backing.as_mut_ptr() as usize,
            )
        }
    }

    #[test]
    fn reads_back_what_was_written_at_any_alignment() {
        let mut backing = vec![0u64; 8];
        let r = ram(&mut backing);
        let data: alloc::vec::Vec<u8> = (0..37u8).collect();
        for offset in 0..8 {
            r.write(Ipa(0x4000_0000 + offset), &data).unwrap();
            let mut back = vec![0u8; data.len()];
            r.read(Ipa(0x4000_0000 + offset), &mut back).unwrap();
            assert_eq!(back, data, "offset {offset}");
        }
    }

    #[test]
    fn scrub_zeroes_all_of_it_and_nothing_else() {
        let mut backing = vec![u64::MAX; 6];
        {
            // RAM over the middle four doublewords, seen from byte 3.
            let base = backing.as_mut_ptr() as usize + 8 + 3;
            // SAFETY: 29 bytes inside the buffer, which outlives `r`.
            let r = unsafe { GuestRam::new(Ipa(0x4000_0000)..Ipa(0x4000_0000 + 29), base) };
            assert_eq!(r.scrub_part(0, 1), (base, 29));
        }
        let bytes: alloc::vec::Vec<u8> = backing.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert!(bytes[..11].iter().all(|&b| b == 0xff));
        assert!(bytes[11..40].iter().all(|&b| b == 0));
        assert!(bytes[40..].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn scrub_parts_cover_the_ram_once() {
        let mut backing = vec![u64::MAX; 3 * 512 + 7];
        let base = backing.as_mut_ptr() as usize;
        let len = backing.len() * 8;
        // SAFETY: the buffer outlives `r`.
        let r = unsafe { GuestRam::new(Ipa(0x4000_0000)..Ipa(0x4000_0000 + len as u64), base) };
        let parts: alloc::vec::Vec<_> = (0..3).map(|i| r.scrub_part(i, 3)).collect();
        assert_eq!(
            parts,
            [(base, 4096), (base + 4096, 4096), (base + 8192, len - 8192)]
        );
        assert!(backing.iter().all(|&w| w == 0));
        // More parts than pages: the last part takes everything left.
        assert_eq!(r.scrub_part(0, 1 << 20), (base, 0));
        assert_eq!(r.scrub_part(1 << 20, 1 << 20), (base, len));
    }

    #[test]
    fn an_image_loads_at_any_offset_and_length() {
        let mut backing = vec![0u64; 64];
        let r = ram(&mut backing);
        let data: alloc::vec::Vec<u8> = (0..300u32).map(|i| (i * 7 + 1) as u8).collect();
        for (offset, len) in [(0, 300), (3, 300), (64, 128), (5, 40), (61, 200), (0, 0)] {
            r.scrub_part(0, 1);
            let at = Ipa(0x4000_0000 + offset);
            r.load(at, &data[..len]).unwrap();
            let mut back = vec![0u8; 512];
            r.read(Ipa(0x4000_0000), &mut back).unwrap();
            let o = offset as usize;
            assert!(back[..o].iter().all(|&b| b == 0), "{offset} {len}");
            assert_eq!(&back[o..o + len], &data[..len], "{offset} {len}");
            assert!(back[o + len..].iter().all(|&b| b == 0), "{offset} {len}");
        }
        assert!(r.load(Ipa(0x4000_0000 + 400), &data).is_err());
    }

    #[test]
    fn refuses_anything_not_entirely_inside() {
        let mut backing = vec![0u64; 4];
        let r = ram(&mut backing);
        let mut buf = [0u8; 8];
        assert!(r.read(Ipa(0x4000_0000 + 25), &mut buf).is_err());
        assert!(r.read(Ipa(0x3fff_fff8), &mut buf).is_err());
        assert!(r.write(Ipa(u64::MAX - 3), &buf).is_err());
        assert!(r.read(Ipa(0x4000_0000 + 24), &mut buf).is_ok());
        assert_eq!(r.host_addr(Ipa(0x4000_0020), 1), None);
    }
}
