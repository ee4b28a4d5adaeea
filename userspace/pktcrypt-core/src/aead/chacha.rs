//! ChaCha20-Poly1305 (RFC 8439, used in ESP per RFC 7634) from the `chacha20poly1305` crate.

use super::{AuthError, NONCE_LEN, TAG_LEN};
use chacha20poly1305::aead::{AeadInOut, KeyInit};

pub(super) struct ChaChaPoly(chacha20poly1305::ChaCha20Poly1305);

impl ChaChaPoly {
    pub(super) fn new(key: &[u8]) -> Self {
        let key = chacha20poly1305::Key::try_from(key).expect("key length checked by caller");
        Self(chacha20poly1305::ChaCha20Poly1305::new(&key))
    }

    pub(super) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .encrypt_inout_detached(nonce.into(), aad, data.into())
            .expect("ESP packets are far below the ChaCha20-Poly1305 length limit");
        tag.into()
    }

    pub(super) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        self.0
            .decrypt_inout_detached(nonce.into(), aad, data.into(), tag.into())
            .map_err(|_| AuthError)
    }
}
