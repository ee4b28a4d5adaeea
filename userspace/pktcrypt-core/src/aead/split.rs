//! [`super::Backend::RingAwsLc`]: ring for most packets, aws-lc-rs for long AES-GCM ones.
//!
//! Why two libraries: AWS-LC's AES-GCM uses AVX-512 (VAES + VPCLMULQDQ on 512-bit registers)
//! where the CPU has it; ring 0.17 stops at 256-bit VAES. On the development machine (AMD EPYC,
//! Zen 4, whose 512-bit operations are two 256-bit halves) AWS-LC streams about 15 % faster but
//! costs more per call (its GHASH of the AAD and of the lengths, the IV set-up and the dispatch are
//! separate calls): it is slower than ring below about 4 KiB for seal and 6 KiB for open, faster
//! above (`benches/benches/aead_crossover.rs`, `BENCHMARKS.md` "AEAD backends"). ChaCha20-Poly1305
//! runs the same in both, so it stays on ring alone.
//!
//! Memory: ring's key is expanded when the key is built. AWS-LC's (an `EVP_AEAD_CTX` on the C
//! heap) is expanded only at the **second** long packet: a key that seals or opens one control
//! message (the engine derives those per message) or carries only packets below the thresholds
//! (every packet of a 1500-byte MTU) never pays for it. Until then the raw key waits here, wiped
//! on drop (the SA keeps the secret it was derived from anyway).

use super::aws_lc_backend::AwsLcAead;
use super::ring_backend::RingAead;
use super::{AuthError, NONCE_LEN, TAG_LEN};
use crate::Suite;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use zeroize::Zeroizing;

/// Packets of this many bytes (the data transformed: ESP payload and trailer) and more are sealed
/// by AWS-LC once its key is expanded: the measured crossover (AES-256-GCM seal: 0.97x ring at
/// 2048 B, 1.05x at 4096 B, 1.11x at 6144 B, 1.16x at 9000 B).
pub(super) const SEAL_LARGE: usize = 4096;
/// The same for open, whose crossover lies higher (AES-256-GCM open: 0.96x ring at 4096 B, 1.01x
/// at 6144 B, 1.05x at 9000 B).
pub(super) const OPEN_LARGE: usize = 6144;

pub(super) struct Split {
    small: RingAead,
    /// The AES-GCM key of AWS-LC, once expanded. Never for ChaCha20-Poly1305.
    large: OnceLock<AwsLcAead>,
    /// A packet at or above its threshold went through ring: the next one expands `large`.
    seen_large: AtomicBool,
    suite: Suite,
    /// The raw key while `large` may still be needed (AES-GCM), to expand it from.
    key: Option<Zeroizing<[u8; 32]>>,
}

impl Split {
    pub(super) fn new(suite: Suite, key: &[u8]) -> Result<Self, crate::Error> {
        let small = RingAead::new(suite, key)?;
        let raw = match suite {
            Suite::Aes128Gcm | Suite::Aes256Gcm => {
                let mut raw = Zeroizing::new([0u8; 32]);
                raw.get_mut(..key.len())
                    .ok_or(crate::Error::KeyLength)?
                    .copy_from_slice(key);
                Some(raw)
            }
            Suite::ChaCha20Poly1305 => None,
        };
        Ok(Self {
            small,
            large: OnceLock::new(),
            seen_large: AtomicBool::new(false),
            suite,
            key: raw,
        })
    }

    /// The AWS-LC key for a packet of `len` bytes, if that packet should use it (`threshold`:
    /// [`SEAL_LARGE`] or [`OPEN_LARGE`]).
    fn large(&self, len: usize, threshold: usize) -> Option<&AwsLcAead> {
        if len < threshold {
            return None;
        }
        if let Some(k) = self.large.get() {
            return Some(k);
        }
        let raw = self.key.as_ref()?;
        // The first long packet under this key goes through ring: a key used once (a control
        // message) never expands the second one.
        if !self.seen_large.swap(true, Ordering::Relaxed) {
            return None;
        }
        let k = AwsLcAead::new(self.suite, &raw[..self.suite.key_len()]).ok()?;
        // Two threads may race here: one key wins, the other is freed (and wiped by AWS-LC).
        let _ = self.large.set(k);
        self.large.get()
    }

    /// Whether the AWS-LC key is expanded.
    #[cfg(test)]
    pub(super) fn large_expanded(&self) -> bool {
        self.large.get().is_some()
    }

    pub(super) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_LEN] {
        match self.large(data.len(), SEAL_LARGE) {
            Some(k) => k.seal(nonce, aad, data),
            None => self.small.seal(nonce, aad, data),
        }
    }

    pub(super) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        match self.large(data.len(), OPEN_LARGE) {
            Some(k) => k.open(nonce, aad, data, tag),
            None => self.small.open(nonce, aad, data, tag),
        }
    }
}
