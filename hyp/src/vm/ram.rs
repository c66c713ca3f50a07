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

    /// The host range of part `i` of `parts` of the VM's RAM (0 <
    /// `parts`; the parts are 4 KiB aligned, the last takes the rest,
    /// together they cover the RAM exactly once).
    fn part(&self, i: usize, parts: usize) -> (usize, usize) {
        let total = (self.ipa.end.raw() - self.ipa.start.raw()) as usize;
        let parts = parts.max(1);
        let step = (total / parts) & !0xfff;
        let start = self.host + step * i.min(parts - 1);
        let end = if i + 1 >= parts {
            self.host + total
        } else {
            start + step
        };
        (start, end)
    }

    /// Zeroes the host range `[start, end)` of the VM's RAM to the point of
    /// coherency: the 64-byte aligned body 64 bytes at a time
    /// (`arch::zero_to_poc`), the edges (none in RAM the hypervisor
    /// allocates, page aligned) a byte at a time.
    fn zero_host(&self, start: usize, end: usize) {
        debug_assert!(self.host <= start && start <= end);
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
            // The VM's vCPUs are not running (the contract of a scrub and
            // a fill), and the body's ends are multiples of 64.
            // SAFETY: the body is VM RAM, writable and holding no hypervisor
            // object (`new`'s contract), unused meanwhile, 64-byte aligned.
            unsafe { crate::arch::zero_to_poc(body.start, body.end - body.start) };
        }
    }

    /// Copies `data` to the host address `dst` of the VM's RAM (the whole
    /// of it inside) to the point of coherency: most of it 64 bytes at a
    /// time (`arch::copy_to_poc`), the edges through [`Self::write`].
    fn copy_host(&self, dst: usize, data: &[u8]) {
        let ipa = |host: usize| Ipa(self.ipa.start.raw() + (host - self.host) as u64);
        let head = (dst.next_multiple_of(64) - dst).min(data.len());
        let body = (data.len() - head) & !63;
        let src = data.as_ptr() as usize + head;
        let (head, body) = if body == 0 || !src.is_multiple_of(8) {
            (data.len(), 0)
        } else {
            (head, body)
        };
        let tail = head + body;
        for (at, bytes) in [(dst, &data[..head]), (dst + tail, &data[tail..])] {
            if !bytes.is_empty() {
                // Inside the RAM: the caller's precondition.
                let _ = self.write(ipa(at), bytes);
                crate::arch::clean_inval_dcache(at as u64, bytes.len());
            }
        }
        if body > 0 {
            // `dst + head .. + body` lies in the VM's RAM (the caller's
            // precondition), unused while the VM is stopped (the contract
            // of a fill); the source is part of a shared slice, which
            // nothing writes and which is not the VM's RAM.
            // SAFETY: so both ranges are valid and disjoint, the destination
            // writable VM RAM (`new`'s contract); alignment checked above.
            unsafe { crate::arch::copy_to_poc(dst + head, src, body) };
        }
    }

    /// Zeroes part `i` of `parts` of the VM's RAM (see [`Self::fill_part`],
    /// with no images). Returns the host range written.
    pub fn scrub_part(&self, i: usize, parts: usize) -> (usize, usize) {
        let (start, end) = self.part(i, parts);
        self.zero_host(start, end);
        (start, end - start)
    }

    /// Writes part `i` of `parts` of the VM's RAM as the VM starts with it,
    /// before it first starts and at each restart (its vCPUs not running,
    /// its devices' bus mastering off), so that several CPUs can share the
    /// work (0 < `parts`; the parts are 4 KiB aligned, the last takes the
    /// rest, together they cover the RAM exactly once): `images` (IPA and
    /// bytes, each entirely inside the RAM; where two overlap, the lower
    /// one's bytes) where they lie, zeroes everywhere else, so that
    /// nothing of what the memory held before reaches the guest. All of it
    /// reaches the point of coherency: a guest starts with its MMU and
    /// caches off and reads memory, not the caches. Returns the host range
    /// written, or the first image outside the RAM (then nothing is
    /// written).
    pub fn fill_part(
        &self,
        i: usize,
        parts: usize,
        images: &[(Ipa, &[u8])],
    ) -> Result<(usize, usize), GuestMemError> {
        let (start, end) = self.part(i, parts);
        let mut spans = images
            .iter()
            .map(|&(ipa, data)| {
                let at = self
                    .host_addr(ipa, data.len())
                    .ok_or(GuestMemError::OutOfRange(ipa))?;
                Ok((at, data))
            })
            .collect::<Result<alloc::vec::Vec<_>, _>>()?;
        spans.sort_by_key(|&(at, _)| at);
        let mut at = start;
        for (host, data) in spans {
            let (from, to) = (host.max(at), (host + data.len()).min(end));
            if from >= to {
                continue;
            }
            self.zero_host(at, from);
            self.copy_host(from, &data[from - host..to - host]);
            at = to;
        }
        self.zero_host(at, end);
        Ok((start, end - start))
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
    fn a_fill_writes_the_images_and_zeroes_the_rest_in_any_parts() {
        let len = 3 * 4096 + 200;
        let mut backing = vec![u64::MAX; len / 8];
        let r = ram(&mut backing);
        let a: alloc::vec::Vec<u8> = (0..5000u32).map(|i| (i * 7 + 1) as u8).collect();
        let b: alloc::vec::Vec<u8> = (0..300u32).map(|i| (i * 3 + 2) as u8).collect();
        let mut want = vec![0u8; len];
        for (offset, len, data) in [(61usize, 5000usize, &a), (9000, 300, &b), (12_000, 3, &b)] {
            want[offset..offset + len].copy_from_slice(&data[..len]);
        }
        let images = [
            (Ipa(0x4000_0000 + 9000), &b[..]),
            (Ipa(0x4000_0000 + 61), &a[..]),
            (Ipa(0x4000_0000 + 12_000), &b[..3]),
        ];
        for parts in [1, 2, 3, 5] {
            r.scrub_part(0, 1);
            let mut covered = 0;
            for i in 0..parts {
                covered += r.fill_part(i, parts, &images).unwrap().1;
            }
            assert_eq!(covered, len);
            let mut back = vec![0xaau8; len];
            r.read(Ipa(0x4000_0000), &mut back).unwrap();
            assert!(back == want, "{parts} parts");
        }
        // An image reaching past the RAM: nothing is written.
        r.scrub_part(0, 1);
        assert!(r
            .fill_part(0, 1, &[(Ipa(0x4000_0000 + len as u64 - 2), &b[..3])])
            .is_err());
        let mut back = vec![0xaau8; len];
        r.read(Ipa(0x4000_0000), &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0));
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
