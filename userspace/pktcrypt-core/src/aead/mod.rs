//! AEAD primitives behind a small backend trait.
//!
//! Every backend implements every [`Suite`]:
//! - [`Backend::RustCrypto`]: AES-GCM assembled here from the `aes` (AES-NI/VAES), `ctr` and `ghash`
//!   crates, and ChaCha20-Poly1305 from the `chacha20poly1305` crate. Its GCM has a batch path that
//!   generates the CTR keystream of many small packets in one `aes` call, so the VAES pipeline is
//!   full even for 64-byte packets.
//! - [`Backend::Ring`] (feature `ring`): `ring`'s assembly implementations.
//! - [`Backend::AwsLc`] (feature `aws-lc-aead`): AWS-LC's, through aws-lc-rs's safe API; its
//!   AES-GCM uses AVX-512 VAES + VPCLMULQDQ where the CPU has them (ring 0.17 stops at 256-bit
//!   VAES).
//! - [`Backend::RingAwsLc`] (both features, the default then): per packet the faster of the two
//!   by size, measured: AWS-LC for AES-GCM packets of 4 KiB (seal) or 6 KiB (open) and more, ring
//!   for the rest (ChaCha20-Poly1305 runs on ring, which is as fast).
//!
//! Feature `insecure-null-backend` adds `Backend::NullInsecure`, which does not encrypt: it exists
//! only so the data-path benchmark can measure pktcrypt's forwarding cost without the cipher.
//! It is never the default, never in [`Backend::all`], and not compiled into normal builds.
//!
//! The engine picks [`Backend::default()`]; `benches/` measures them all side by side.

#[cfg(feature = "aws-lc-aead")]
mod aws_lc_backend;
mod chacha;
mod gcm;
#[cfg(feature = "ring")]
mod ring_backend;
#[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
mod split;

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
    /// `aws-lc-rs` (AWS-LC: AVX-512 VAES + VPCLMULQDQ AES-GCM), feature `aws-lc`.
    #[cfg(feature = "aws-lc-aead")]
    AwsLc,
    /// ring, and aws-lc-rs for long AES-GCM packets (sealing 4096 bytes or more, opening 6144 or
    /// more; ChaCha20-Poly1305 on ring alone): the faster of the two at each size, measured. The
    /// aws-lc-rs key is expanded at a key's second long packet, so keys that only carry shorter
    /// packets or one control message cost no more than ring's (features `ring` and
    /// `aws-lc-aead`).
    #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
    RingAwsLc,
    /// **Insecure, benchmarks only** (feature `insecure-null-backend`): leaves the data as it is
    /// and writes an all-zero tag; open accepts exactly that tag. Every other step of sealing
    /// and opening (headers, padding, sequence numbers, replay window) is unchanged.
    #[cfg(feature = "insecure-null-backend")]
    NullInsecure,
}

impl Default for Backend {
    /// The backend the engine uses unless told otherwise.
    ///
    /// Chosen by measurement (`BENCHMARKS.md`, "AEAD backends"): [`Backend::RingAwsLc`] where
    /// both `ring` and `aws-lc-aead` are built (ring, and AWS-LC's AVX-512 AES-GCM for packets of
    /// 4-6 KiB and more, where it is faster), else [`Backend::Ring`] (its fused assembly is
    /// faster per packet than the separate CTR and GHASH passes the RustCrypto crates allow),
    /// else RustCrypto.
    fn default() -> Self {
        #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
        {
            Backend::RingAwsLc
        }
        #[cfg(all(feature = "ring", not(feature = "aws-lc-aead")))]
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
        &[
            Backend::RustCrypto,
            #[cfg(feature = "ring")]
            Backend::Ring,
            #[cfg(feature = "aws-lc-aead")]
            Backend::AwsLc,
            #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
            Backend::RingAwsLc,
        ]
    }

    /// Stable name of the backend.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::RustCrypto => "rustcrypto",
            #[cfg(feature = "ring")]
            Backend::Ring => "ring",
            #[cfg(feature = "aws-lc-aead")]
            Backend::AwsLc => "aws-lc",
            #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
            Backend::RingAwsLc => "ring+aws-lc",
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
            #[cfg(feature = "aws-lc-aead")]
            (Backend::AwsLc, _) => Inner::AwsLc(aws_lc_backend::AwsLcAead::new(suite, key)?),
            #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
            (Backend::RingAwsLc, _) => Inner::Split(split::Split::new(suite, key)?),
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
    #[cfg(feature = "aws-lc-aead")]
    AwsLc(aws_lc_backend::AwsLcAead),
    #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
    Split(split::Split),
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
            #[cfg(feature = "aws-lc-aead")]
            Inner::AwsLc(k) => k.seal(nonce, aad, data),
            #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
            Inner::Split(k) => k.seal(nonce, aad, data),
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
            #[cfg(feature = "aws-lc-aead")]
            Inner::AwsLc(k) => k.open(nonce, aad, data, tag),
            #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
            Inner::Split(k) => k.open(nonce, aad, data, tag),
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

#[cfg(test)]
mod tests {
    use super::*;

    const LENS: [usize; 16] = [
        0, 1, 15, 16, 17, 63, 64, 255, 256, 511, 512, 513, 1420, 4096, 9000, 16384,
    ];

    fn nonce(i: u8) -> [u8; NONCE_LEN] {
        let mut n = [0xa5; NONCE_LEN];
        n[NONCE_LEN - 1] = i;
        n
    }

    /// AEAD is deterministic: every backend seals to the same bytes and tag, and opens every
    /// other backend's output; for every suite and sizes around `ring+aws-lc`'s crossover. Each
    /// key seals three packets, so `ring+aws-lc` runs both of its libraries on long ones.
    #[test]
    fn every_backend_seals_the_same_bytes_and_opens_every_other() {
        let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7) ^ 0x3c).collect();
        let aad = *b"spi+seq-aad!";
        for suite in Suite::ALL {
            let k = &key[..suite.key_len()];
            let keys: Vec<(Backend, AeadKey)> = Backend::all()
                .iter()
                .map(|b| (*b, b.key(suite, k).expect("key")))
                .collect();
            for len in LENS {
                let plain: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
                for round in 0..3u8 {
                    let n = nonce(round);
                    let sealed: Vec<(Backend, Vec<u8>, [u8; TAG_LEN])> = keys
                        .iter()
                        .map(|(b, key)| {
                            let mut data = plain.clone();
                            let tag = key.seal(&n, &aad, &mut data);
                            (*b, data, tag)
                        })
                        .collect();
                    let (first, ct, tag) = &sealed[0];
                    for (b, other_ct, other_tag) in &sealed[1..] {
                        assert!(
                            other_ct == ct && other_tag == tag,
                            "{suite:?} {len} B round {round}: {} and {} differ",
                            first.name(),
                            b.name()
                        );
                    }
                    for (b, key) in &keys {
                        let mut data = ct.clone();
                        key.open(&n, &aad, &mut data, tag).unwrap_or_else(|_| {
                            panic!("{suite:?} {len} B: {} does not open", b.name())
                        });
                        assert_eq!(data, plain, "{suite:?} {len} B: {}", b.name());
                    }
                }
            }
        }
    }

    /// A forged tag fails in every backend at every size, and no plaintext is left behind.
    #[test]
    fn a_forged_tag_fails_and_releases_no_plaintext() {
        for backend in Backend::all() {
            for suite in Suite::ALL {
                let key = backend
                    .key(suite, &[9; 32][..suite.key_len()])
                    .expect("key");
                for len in [16usize, 600, 1420, 1420, 16384] {
                    let plain = vec![0x77u8; len];
                    let mut data = plain.clone();
                    let mut tag = key.seal(&nonce(1), b"", &mut data);
                    tag[15] ^= 0x80;
                    assert_eq!(key.open(&nonce(1), b"", &mut data, &tag), Err(AuthError));
                    assert_ne!(data, plain, "{} {suite:?} {len} B", backend.name());
                }
            }
        }
    }

    #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
    fn split(key: &AeadKey) -> &split::Split {
        match &key.inner {
            Inner::Split(s) => s,
            _ => panic!("not ring+aws-lc"),
        }
    }

    /// `ring+aws-lc` expands its AWS-LC key at the second long packet (sealed or opened), never
    /// for short packets, a single long one (a control message's key) or ChaCha20-Poly1305.
    #[cfg(all(feature = "ring", feature = "aws-lc-aead"))]
    #[test]
    fn ring_aws_lc_expands_its_second_key_at_the_second_long_packet() {
        assert_eq!(Backend::default(), Backend::RingAwsLc);
        assert_eq!(Backend::from_name("ring+aws-lc"), Some(Backend::RingAwsLc));
        for suite in Suite::ALL {
            let key = Backend::RingAwsLc
                .key(suite, &[3; 32][..suite.key_len()])
                .expect("key");
            let mut short = [0u8; split::SEAL_LARGE - 1];
            for i in 0..10 {
                key.seal(&nonce(i), b"", &mut short);
            }
            assert!(!split(&key).large_expanded(), "short packets only");
            let mut long = [0u8; split::OPEN_LARGE];
            let tag = key.seal(&nonce(20), b"", &mut long);
            assert!(!split(&key).large_expanded(), "one long packet");
            let expect = suite != Suite::ChaCha20Poly1305;
            assert!(key.open(&nonce(20), b"", &mut long, &tag).is_ok());
            assert_eq!(split(&key).large_expanded(), expect, "{suite:?}");
        }
    }
}
