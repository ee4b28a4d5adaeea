//! The `aws-lc-rs` backend (feature `aws-lc`): AWS-LC's AES-GCM (VAES + VPCLMULQDQ on AVX-512
//! machines, which ring 0.17 lacks) and ChaCha20-Poly1305, through aws-lc-rs's safe API.
//!
//! The expanded key is AWS-LC's `EVP_AEAD_CTX`, allocated by the C library (`OPENSSL_malloc`) and
//! wiped when freed (`OPENSSL_free` cleanses every allocation): it is not on the Rust heap, so a
//! counting global allocator does not see it (`benches/benches/aead_keys.rs` measures it).

use super::{AuthError, NONCE_LEN, TAG_LEN};
use crate::Suite;
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

pub(super) struct AwsLcAead(LessSafeKey);

impl AwsLcAead {
    pub(super) fn new(suite: Suite, key: &[u8]) -> Result<Self, crate::Error> {
        let alg = match suite {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        let key = UnboundKey::new(alg, key).map_err(|_| crate::Error::KeyLength)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    pub(super) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data)
            .expect("ESP packets are far below AWS-LC's length limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub(super) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                data,
            )
            .map(|_| ())
            .map_err(|_| AuthError)
    }
}
