//! Randomness as a parameter: the [`Random`] trait the sans-IO core draws secrets, SPIs, nonces
//! and jitter from, the fast-key-erasure generator drivers use, and a seeded one for tests.
//! Below everything that needs randomness (`kex`, `control`); re-exported from `control`.

use sha2::{Digest, Sha256};

/// Source of randomness for secrets, SPIs, nonces and jitter. Drivers pass the operating
/// system's CSPRNG; tests and simulations pass a seeded [`SeededRandom`].
pub trait Random: Send + Sync {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]);

    /// A random `u64`.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// A fast-key-erasure generator (D. J. Bernstein, 2017) over ChaCha20: each refill runs
/// ChaCha20 under the current key, keeps the first 32 bytes of keystream as the next key and
/// hands out the rest, wiping every byte as it is handed out. Whoever later reads the state
/// learns nothing about outputs already given (earlier secrets stay secret). One ChaCha20 block
/// per 64 output bytes instead of a system call per request: a key server minting a hundred
/// thousand generations per second needs that.
///
/// Sans-IO: the caller supplies the 32-byte seed (drivers take it from the operating system's
/// CSPRNG) and may mix in fresh entropy at any time with [`Self::reseed`].
pub struct KeyErasureRandom {
    key: zeroize::Zeroizing<[u8; 32]>,
    buf: zeroize::Zeroizing<[u8; Self::BUF]>,
    used: usize,
}

impl KeyErasureRandom {
    /// Keystream per refill: 12 ChaCha20 blocks, 32 bytes of which become the next key.
    const BUF: usize = 768;

    /// A generator from a secret, uniformly random seed (from the OS CSPRNG in production).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: zeroize::Zeroizing::new(seed),
            buf: zeroize::Zeroizing::new([0u8; Self::BUF]),
            used: Self::BUF,
        }
    }

    /// Mixes fresh entropy into the key (XOR) and drops buffered output.
    pub fn reseed(&mut self, entropy: &[u8; 32]) {
        for (k, e) in self.key.iter_mut().zip(entropy) {
            *k ^= e;
        }
        zeroize::Zeroize::zeroize(&mut *self.buf);
        self.used = Self::BUF;
    }

    fn refill(&mut self) {
        use chacha20::cipher::{KeyIvInit, StreamCipher};
        zeroize::Zeroize::zeroize(&mut *self.buf);
        let mut cipher = chacha20::ChaCha20::new(&(*self.key).into(), &[0u8; 12].into());
        cipher.apply_keystream(&mut *self.buf);
        self.key.copy_from_slice(&self.buf[..32]);
        self.buf[..32].fill(0);
        self.used = 32;
    }
}

impl core::fmt::Debug for KeyErasureRandom {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KeyErasureRandom(<redacted>)")
    }
}

impl Random for KeyErasureRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        let mut done = 0;
        while done < dest.len() {
            if self.used == Self::BUF {
                self.refill();
            }
            let n = (dest.len() - done).min(Self::BUF - self.used);
            let src = &mut self.buf[self.used..self.used + n];
            dest[done..done + n].copy_from_slice(src);
            src.fill(0);
            self.used += n;
            done += n;
        }
    }
}

/// A deterministic generator (SHA-256 in counter mode over a seed) for reproducible tests and
/// simulations. Not for production keys: use the OS generator there.
#[derive(Clone, Debug)]
pub struct SeededRandom {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl SeededRandom {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            seed: s,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }
}

impl Random for SeededRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            if self.used == 32 {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_le_bytes());
                self.block.copy_from_slice(&h.finalize());
                self.counter += 1;
                self.used = 0;
            }
            *b = self.block[self.used];
            self.used += 1;
        }
    }
}
