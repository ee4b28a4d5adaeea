//! The `ring` backend.

use super::{AuthError, NONCE_LEN, TAG_LEN};
use crate::Suite;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

pub(super) struct RingAead(LessSafeKey);

impl RingAead {
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
            .expect("ESP packets are far below ring's length limit");
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
        let tag = aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                data,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AuthError)
    }
}
