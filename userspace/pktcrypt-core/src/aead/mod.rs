//! AEAD primitives behind a small backend trait.
//!
//! Two backends implement every [`Suite`]:
//! - [`Backend::RustCrypto`]: AES-GCM assembled here from the `aes` (AES-NI/VAES), `ctr` and `ghash`
//!   crates, and ChaCha20-Poly1305 from the `chacha20poly1305` crate. Its GCM has a batch path that
//!   generates the CTR keystream of many small packets in one `aes` call, so the VAES pipeline is
//!   full even for 64-byte packets.
//! - [`Backend::Ring`] (feature `ring`): `ring`'s assembly implementations.
//!
//! The engine picks [`Backend::default()`]; `benches/` measures both side by side.

mod chacha;
mod gcm;
#[cfg(feature = "ring")]
mod ring_backend;

use crate::Suite;

/// Length of an AEAD nonce: salt(4) ‖ IV(8).
pub const NONCE_LEN: usize = 12;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;

/// The AEAD implementation a key is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// RustCrypto: `aes` + `ctr` + `ghash` (GCM built here), `chacha20poly1305`.
    RustCrypto,
    /// `ring` (BoringSSL-derived assembly).
    #[cfg(feature = "ring")]
    Ring,
}

impl Default for Backend {
    /// The backend the engine uses unless told otherwise.
    ///
    /// Chosen by measurement (`BENCHMARKS.md`): `ring`'s fused AES-GCM and
    /// ChaCha20-Poly1305 assembly is faster per packet than the separate CTR and GHASH passes the
    /// RustCrypto crates allow, so it is the default where the `ring` feature is built.
    fn default() -> Self {
        #[cfg(feature = "ring")]
        {
            Backend::Ring
        }
        #[cfg(not(feature = "ring"))]
        {
            Backend::RustCrypto
        }
    }
}

impl Backend {
    /// All backends compiled into this build.
    pub fn all() -> &'static [Backend] {
        #[cfg(feature = "ring")]
        {
            &[Backend::RustCrypto, Backend::Ring]
        }
        #[cfg(not(feature = "ring"))]
        {
            &[Backend::RustCrypto]
        }
    }

    /// Stable name of the backend.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::RustCrypto => "rustcrypto",
            #[cfg(feature = "ring")]
            Backend::Ring => "ring",
        }
    }

    /// Builds a keyed AEAD for `suite` from raw key bytes.
    ///
    /// # Errors
    /// [`crate::Error::KeyLength`] if `key.len() != suite.key_len()`.
    pub fn key(self, suite: Suite, key: &[u8]) -> Result<AeadKey, crate::Error> {
        if key.len() != suite.key_len() {
            return Err(crate::Error::KeyLength);
        }
        let inner = match (self, suite) {
            (Backend::RustCrypto, Suite::Aes128Gcm) => Inner::Aes128(gcm::AesGcm::new_128(key)),
            (Backend::RustCrypto, Suite::Aes256Gcm) => Inner::Aes256(gcm::AesGcm::new_256(key)),
            (Backend::RustCrypto, Suite::ChaCha20Poly1305) => {
                Inner::ChaCha(chacha::ChaChaPoly::new(key))
            }
            #[cfg(feature = "ring")]
            (Backend::Ring, _) => Inner::Ring(ring_backend::RingAead::new(suite, key)?),
        };
        Ok(AeadKey { suite, inner })
    }
}

/// Authentication failed: the tag does not match. Carries no detail by design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthError;

/// One packet of a batch, as the AEAD sees it.
///
/// Implemented by the engine's packet slots so batches need no allocation: each item lends its
/// nonce, associated data, the bytes transformed in place and its tag.
pub trait AeadItem {
    /// Whether this item takes part (items that already failed are skipped).
    fn active(&self) -> bool;
    /// The 12-byte nonce.
    fn nonce(&self) -> &[u8; NONCE_LEN];
    /// Length of the data transformed in place.
    fn data_len(&self) -> usize;
    /// Associated data, the data (plaintext for seal, ciphertext for open) and the tag (written
    /// by seal, read by open).
    fn parts(&mut self) -> (&[u8], &mut [u8], &mut [u8; TAG_LEN]);
    /// Records the result of open (seal always succeeds).
    fn set_authentic(&mut self, ok: bool);
}

/// A keyed AEAD for one suite and one direction of one generation.
///
/// Key material is zeroized on drop (by the underlying cipher types) and never printed.
pub struct AeadKey {
    suite: Suite,
    inner: Inner,
}

enum Inner {
    Aes128(gcm::AesGcm<aes::Aes128>),
    Aes256(gcm::AesGcm<aes::Aes256>),
    ChaCha(chacha::ChaChaPoly),
    #[cfg(feature = "ring")]
    Ring(ring_backend::RingAead),
}

impl core::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AeadKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl AeadKey {
    /// The suite of this key.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Encrypts `data` in place and returns the tag.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        match &self.inner {
            Inner::Aes128(k) => k.seal(nonce, aad, data),
            Inner::Aes256(k) => k.seal(nonce, aad, data),
            Inner::ChaCha(k) => k.seal(nonce, aad, data),
            #[cfg(feature = "ring")]
            Inner::Ring(k) => k.seal(nonce, aad, data),
        }
    }

    /// Verifies `tag` and decrypts `data` in place. On failure `data` holds no plaintext (it is
    /// left as ciphertext or zeroed, depending on the backend); the caller drops it.
    ///
    /// # Errors
    /// [`AuthError`] if the tag does not authenticate `aad` and `data` under `nonce`.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        match &self.inner {
            Inner::Aes128(k) => k.open(nonce, aad, data, tag),
            Inner::Aes256(k) => k.open(nonce, aad, data, tag),
            Inner::ChaCha(k) => k.open(nonce, aad, data, tag),
            #[cfg(feature = "ring")]
            Inner::Ring(k) => k.open(nonce, aad, data, tag),
        }
    }

    /// Seals every active item in place, writing each tag.
    pub fn seal_batch<I: AeadItem>(&self, items: &mut [I]) {
        match &self.inner {
            Inner::Aes128(k) => k.seal_batch(items),
            Inner::Aes256(k) => k.seal_batch(items),
            _ => {
                for item in items.iter_mut().filter(|i| i.active()) {
                    let nonce = *item.nonce();
                    let (aad, data, tag) = item.parts();
                    *tag = self.seal(&nonce, aad, data);
                }
            }
        }
    }

    /// Opens every active item in place, recording which ones authenticate. Items that fail
    /// hold no plaintext.
    pub fn open_batch<I: AeadItem>(&self, items: &mut [I]) {
        match &self.inner {
            Inner::Aes128(k) => k.open_batch(items),
            Inner::Aes256(k) => k.open_batch(items),
            _ => {
                for item in items.iter_mut().filter(|i| i.active()) {
                    let nonce = *item.nonce();
                    let (aad, data, tag) = item.parts();
                    let ok = self.open(&nonce, aad, data, tag).is_ok();
                    item.set_authentic(ok);
                }
            }
        }
    }
}
