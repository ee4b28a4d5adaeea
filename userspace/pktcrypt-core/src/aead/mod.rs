//! AEAD primitives behind a small backend trait.
//!
//! Two backends implement every [`Suite`]:
//! - [`Backend::RustCrypto`]: AES-GCM assembled here from the `aes` (AES-NI/VAES), `ctr` and `ghash`
//!   crates, and ChaCha20-Poly1305 from the `chacha20poly1305` crate. Its GCM has a batch path that
//!   generates the CTR keystream of many small packets in one `aes` call, so the VAES pipeline is
//!   full even for 64-byte packets.
//! - [`Backend::Ring`] (feature `ring`): `ring`'s assembly implementations.
//!
//! Feature `insecure-null-backend` adds `Backend::NullInsecure`, which does not encrypt: it exists
//! only so the data-path benchmark can measure pktcrypt's forwarding cost without the cipher.
//! It is never the default, never in [`Backend::all`], and not compiled into normal builds.
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
    /// **Insecure, benchmarks only** (feature `insecure-null-backend`): leaves the data as it is
    /// and writes an all-zero tag; open accepts exactly that tag. Every other step of sealing
    /// and opening (headers, padding, sequence numbers, replay window) is unchanged.
    #[cfg(feature = "insecure-null-backend")]
    NullInsecure,
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
            #[cfg(feature = "insecure-null-backend")]
            Backend::NullInsecure => "null-insecure",
        }
    }

    /// The backend called `name` ([`Backend::name`]) in this build, `"default"` for
    /// [`Backend::default`].
    pub fn from_name(name: &str) -> Option<Backend> {
        if name == "default" {
            return Some(Backend::default());
        }
        #[cfg(feature = "insecure-null-backend")]
        if name == Backend::NullInsecure.name() {
            return Some(Backend::NullInsecure);
        }
        Backend::all().iter().copied().find(|b| b.name() == name)
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
            #[cfg(feature = "insecure-null-backend")]
            (Backend::NullInsecure, _) => Inner::Null,
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
    #[cfg(feature = "insecure-null-backend")]
    Null,
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
            #[cfg(feature = "insecure-null-backend")]
            Inner::Null => {
                let _ = (nonce, aad, data);
                [0; TAG_LEN]
            }
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
            #[cfg(feature = "insecure-null-backend")]
            Inner::Null => {
                let _ = (nonce, aad, data);
                if *tag == [0; TAG_LEN] {
                    Ok(())
                } else {
                    Err(AuthError)
                }
            }
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

#[cfg(all(test, feature = "insecure-null-backend"))]
mod null_tests {
    use super::*;

    #[test]
    fn null_backend_only_by_name_and_never_default() {
        assert_eq!(
            Backend::from_name("null-insecure"),
            Some(Backend::NullInsecure)
        );
        assert_ne!(Backend::default(), Backend::NullInsecure);
        assert!(!Backend::all().contains(&Backend::NullInsecure));
    }

    #[test]
    fn null_backend_passes_data_and_checks_the_zero_tag() {
        let key = Backend::NullInsecure
            .key(Suite::Aes256Gcm, &[7; 32])
            .expect("key");
        let mut data = *b"plain";
        let tag = key.seal(&[0; NONCE_LEN], b"aad", &mut data);
        assert_eq!((&data, tag), (b"plain", [0; TAG_LEN]));
        assert!(key.open(&[0; NONCE_LEN], b"aad", &mut data, &tag).is_ok());
        assert!(
            key.open(&[0; NONCE_LEN], b"aad", &mut data, &[1; TAG_LEN])
                .is_err()
        );
    }
}
