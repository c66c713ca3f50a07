//! Boot randomness for guests: the `/chosen/rng-seed` and
//! `/chosen/kaslr-seed` a VM's device tree carries, as QEMU's `virt`
//! machine gives them to a kernel booted on it.
//!
//! Without them a Linux guest starts with its random number generator
//! uninitialised and gathers entropy from its interrupts (under TCG that
//! took 18 s of a boot, and `getrandom()` blocks until then), and it runs
//! without KASLR. The machine gives the hypervisor 32 bytes of `rng-seed`
//! and 8 of `kaslr-seed`; [`SeedSource`] keys ChaCha20 with them and hands
//! each guest start the next bytes of its keystream, so no two starts (two
//! VMs, or one VM's restarts) get the same seed, and one VM's seed says
//! nothing about another's (ChaCha20's blocks are independent for whoever
//! lacks the key, which no guest sees).

use chacha20::rand_core::{Rng, SeedableRng};
use chacha20::ChaCha20Rng;

/// Bytes of `/chosen/rng-seed` a guest gets (as QEMU's `virt` gives).
pub const RNG_SEED_LEN: usize = 32;
/// Bytes of `/chosen/kaslr-seed` a guest gets (one 64-bit cell pair).
pub const KASLR_SEED_LEN: usize = 8;
/// Both, in that order: what one guest start takes.
pub const GUEST_SEED_LEN: usize = RNG_SEED_LEN + KASLR_SEED_LEN;

/// One guest start's seeds.
pub type GuestSeed = [u8; GUEST_SEED_LEN];

/// Where guests' seeds come from.
pub struct SeedSource {
    rng: ChaCha20Rng,
}

impl core::fmt::Debug for SeedSource {
    // Never prints the key or the keystream's state.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SeedSource")
    }
}

impl SeedSource {
    /// Keyed with the machine's randomness `host` (its `rng-seed` and
    /// `kaslr-seed` bytes, in any number): XOR-folded into the 32-byte key,
    /// so every byte counts and none is dropped. `None` for no bytes at
    /// all: there is nothing to seed guests with.
    pub fn new(host: &[u8]) -> Option<Self> {
        if host.is_empty() {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, b) in host.iter().enumerate() {
            key[i % key.len()] ^= b;
        }
        Some(Self {
            rng: ChaCha20Rng::from_seed(key),
        })
    }

    /// The next guest start's seeds.
    pub fn next(&mut self) -> GuestSeed {
        let mut s = [0u8; GUEST_SEED_LEN];
        self.rng.fill_bytes(&mut s);
        s
    }
}

/// The hypervisor's source, once the machine's device tree was read.
static SOURCE: spin::Mutex<Option<SeedSource>> = spin::Mutex::new(None);

/// Keys the hypervisor's source with the machine's randomness (see
/// [`SeedSource::new`]). Returns whether guests will get seeds.
pub fn init(host: &[u8]) -> bool {
    let s = SeedSource::new(host);
    let ok = s.is_some();
    *SOURCE.lock() = s;
    ok
}

/// Whether guests get seeds: [`init`] was given randomness.
pub fn available() -> bool {
    SOURCE.lock().is_some()
}

/// The next guest start's seeds, or `None` if the machine gave no
/// randomness.
pub fn next() -> Option<GuestSeed> {
    SOURCE.lock().as_mut().map(SeedSource::next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_gets_its_own_seed() {
        let mut s = SeedSource::new(&[7u8; 40]).unwrap();
        let seeds: alloc::vec::Vec<GuestSeed> = (0..64).map(|_| s.next()).collect();
        for (i, a) in seeds.iter().enumerate() {
            assert_ne!(a, &[0u8; GUEST_SEED_LEN]);
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn the_seeds_follow_from_every_byte_of_the_machines_randomness() {
        let host: alloc::vec::Vec<u8> = (0..40u8).collect();
        let first = SeedSource::new(&host).unwrap().next();
        // The same randomness gives the same seeds (a boot is reproducible
        // from its inputs); any byte changed, even past the first 32,
        // gives others.
        assert_eq!(SeedSource::new(&host).unwrap().next(), first);
        for i in 0..host.len() {
            let mut h = host.clone();
            h[i] ^= 0x80;
            assert_ne!(SeedSource::new(&h).unwrap().next(), first, "byte {i}");
        }
        // The guest does not see the machine's bytes themselves.
        assert_ne!(&first[..32], &host[..32]);
    }

    #[test]
    fn no_randomness_no_seeds() {
        assert!(SeedSource::new(&[]).is_none());
    }
}
