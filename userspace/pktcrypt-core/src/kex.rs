//! The hybrid key exchange of protocol version 3: X25519 (RFC 7748) and ML-KEM-768 (FIPS 203),
//! combined with the pre-shared chain (the init key, or the generation before) and the
//! transcript in a TLS 1.3-style HKDF schedule.
//!
//! The client (initiator) sends a [`KeyShare`]: an ML-KEM-768 encapsulation key and an X25519
//! public key, both ephemeral. The key server answers with a [`ReplyShare`]: an ML-KEM
//! ciphertext to that key and its own ephemeral X25519 public key. The server keeps no
//! ephemeral secret: it computes the new generation at once ([`respond`]) and erases its half.
//! The client keeps its [`Ephemeral`] only while the exchange is in flight; [`Ephemeral::finish`]
//! consumes it.
//!
//! Layouts follow the TLS `X25519MLKEM768` hybrid (draft-ietf-tls-ecdhe-mlkem): the ML-KEM part
//! first, then the X25519 part, in the shares and in the shared secret
//! (`ss = ss_mlkem ‖ ss_x25519`, 64 bytes). The schedule ([`Schedule`]) is TLS 1.3's
//! PSK-(EC)DHE shape (RFC 8446 §7.1):
//!
//! ```text
//! early   = HKDF-Extract(salt = 0^32,    IKM = chain)        chain: init key or secret(N)
//! derived = HKDF-Expand(early, "pktc3 derived", 32)
//! hs      = HKDF-Extract(salt = derived, IKM = ss_mlkem ‖ ss_x25519)
//! secret(N+1) = HKDF-Expand(hs, "pktc3 generation" ‖ th ‖ N+1 ‖ spi ‖ suite, 32)
//! ```
//!
//! with `th` the SHA-256 transcript hash of the request and the reply (`docs/protocol.md`). The
//! result is secret if the chain is secret (an attacker without the init key learns nothing,
//! as before) or if either component of the exchange holds (X25519 today, ML-KEM against a
//! quantum computer later): forward secrecy once both ephemerals are erased.

use crate::keys::{GenerationInfo, Secret};
use crate::random::Random;
use core::fmt;
use hkdf::Hkdf;
use ml_kem::{Decapsulate, KeyExport, MlKem768};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Length of an ML-KEM-768 encapsulation key.
pub const MLKEM_EK_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const MLKEM_CT_LEN: usize = 1088;
/// Length of an X25519 public key.
pub const X25519_LEN: usize = 32;
/// Length of the client's share: encapsulation key ‖ X25519 public key.
pub const KEY_SHARE_LEN: usize = MLKEM_EK_LEN + X25519_LEN;
/// Length of the server's share: ciphertext ‖ X25519 public key.
pub const REPLY_SHARE_LEN: usize = MLKEM_CT_LEN + X25519_LEN;

/// The client's public share. Public: no secret in it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyShare(pub Box<[u8; KEY_SHARE_LEN]>);

/// The server's public share. Public: no secret in it.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyShare(pub Box<[u8; REPLY_SHARE_LEN]>);

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyShare({} bytes)", KEY_SHARE_LEN)
    }
}

impl fmt::Debug for ReplyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyShare({} bytes)", REPLY_SHARE_LEN)
    }
}

/// Why an exchange failed. Every case drops the message that carried the share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KexError {
    /// The ML-KEM encapsulation key fails the FIPS 203 §7.2 modulus check.
    InvalidEncapsulationKey,
    /// The X25519 result is all zero (a low-order point: RFC 7748 §6.1).
    NonContributory,
}

impl fmt::Display for KexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KexError::InvalidEncapsulationKey => "invalid ML-KEM-768 encapsulation key",
            KexError::NonContributory => "X25519 shared secret is all zero",
        })
    }
}

impl std::error::Error for KexError {}

/// The 64-byte hybrid shared secret `ss_mlkem ‖ ss_x25519`. Zeroized on drop.
pub struct SharedSecret(Zeroizing<[u8; 64]>);

impl SharedSecret {
    /// The bytes (for known-answer tests).
    pub fn expose(&self) -> &[u8; 64] {
        &self.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// The client's ephemeral secrets while an exchange is in flight. Zeroized on drop; `Debug`
/// shows nothing secret.
pub struct Ephemeral {
    /// ML-KEM seed `d ‖ z` (FIPS 203 §7.1): the decapsulation key is re-derived from it.
    mlkem_seed: Zeroizing<[u8; 64]>,
    x25519: Zeroizing<[u8; 32]>,
    share: KeyShare,
}

impl fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ephemeral(<redacted>)")
    }
}

fn mlkem_dk(seed: &[u8; 64]) -> ml_kem::DecapsulationKey<MlKem768> {
    ml_kem::DecapsulationKey::<MlKem768>::from_seed((*seed).into())
}

impl Ephemeral {
    /// Fresh ephemeral keys from `rng` (96 bytes drawn).
    pub fn generate(rng: &mut dyn Random) -> Self {
        let mut mlkem_seed = Zeroizing::new([0u8; 64]);
        let mut x25519 = Zeroizing::new([0u8; 32]);
        rng.fill(&mut *mlkem_seed);
        rng.fill(&mut *x25519);
        Self::from_parts(mlkem_seed, x25519)
    }

    /// Ephemeral keys from given secrets (known-answer tests).
    pub fn from_parts(mlkem_seed: Zeroizing<[u8; 64]>, x25519: Zeroizing<[u8; 32]>) -> Self {
        let dk = mlkem_dk(&mlkem_seed);
        let mut share = Box::new([0u8; KEY_SHARE_LEN]);
        share[..MLKEM_EK_LEN].copy_from_slice(&dk.encapsulation_key().to_bytes());
        let sk = x25519_dalek::StaticSecret::from(*x25519);
        share[MLKEM_EK_LEN..].copy_from_slice(x25519_dalek::PublicKey::from(&sk).as_bytes());
        Self {
            mlkem_seed,
            x25519,
            share: KeyShare(share),
        }
    }

    /// The public share to send.
    pub fn share(&self) -> &KeyShare {
        &self.share
    }

    /// Completes the exchange with the server's share. The ephemeral secrets stay (a copy of
    /// the same answer may come again) until `self` is dropped, which erases them.
    ///
    /// # Errors
    /// [`KexError::NonContributory`] for a low-order X25519 point. (A wrong ML-KEM ciphertext
    /// yields an unrelated secret by implicit rejection, and the key confirmation or the first
    /// packet then fails.)
    pub fn finish(&self, reply: &ReplyShare) -> Result<SharedSecret, KexError> {
        let dk = mlkem_dk(&self.mlkem_seed);
        let ct: &[u8] = &reply.0[..MLKEM_CT_LEN];
        let mut ss_kem = dk
            .decapsulate_slice(ct)
            .map_err(|_| KexError::InvalidEncapsulationKey)?;
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(&ss_kem);
        ss_kem.as_mut_slice().zeroize();
        let sk = x25519_dalek::StaticSecret::from(*self.x25519);
        let mut peer = [0u8; 32];
        peer.copy_from_slice(&reply.0[MLKEM_CT_LEN..]);
        let dh = sk.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        if !dh.was_contributory() {
            return Err(KexError::NonContributory);
        }
        out[32..].copy_from_slice(dh.as_bytes());
        Ok(SharedSecret(out))
    }
}

/// The server's side: encapsulates to the client's key and runs X25519 with a fresh ephemeral,
/// which is erased before returning.
///
/// Without the `aws-lc` feature this is [`respond_with`] (RustCrypto) with 64 bytes drawn from
/// `rng`. With it, both primitives run on aws-lc-rs ([`SERVER_BACKEND`]), whose randomness is
/// AWS-LC's own generator (seeded by the operating system), so `rng` is not drawn from. Same
/// wire format, same results for the client, same errors.
///
/// # Errors
/// [`KexError::InvalidEncapsulationKey`], [`KexError::NonContributory`].
pub fn respond(
    share: &KeyShare,
    rng: &mut dyn Random,
) -> Result<(ReplyShare, SharedSecret), KexError> {
    #[cfg(feature = "aws-lc")]
    {
        let _ = rng;
        aws_lc::respond(&share.0[..MLKEM_EK_LEN], &share.0[MLKEM_EK_LEN..])
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        let mut m = Zeroizing::new([0u8; 32]);
        let mut x = Zeroizing::new([0u8; 32]);
        rng.fill(&mut *m);
        rng.fill(&mut *x);
        respond_with(share, &m, &x)
    }
}

/// Which implementation [`respond`] runs (for benchmarks and logs).
pub const SERVER_BACKEND: &str = if cfg!(feature = "aws-lc") {
    "aws-lc-rs (ML-KEM-768 and X25519)"
} else {
    "RustCrypto (ml-kem, x25519-dalek)"
};

/// [`respond`] on aws-lc-rs: ML-KEM-768 (`aws_lc_rs::kem`) and X25519 (`aws_lc_rs::agreement`).
///
/// Why aws-lc-rs for both halves. On the development machine (AMD EPYC, family 25, KVM, 2 cores,
/// shared), best figures of a scratch probe (7 x 2000) and of the key-server bench (5 x 500,
/// five runs; BENCHMARKS.md):
///
/// | (µs, one core)                                   | aws-lc-rs 1.19 | RustCrypto  | ring 0.17 |
/// |--------------------------------------------------|---------------:|------------:|----------:|
/// | ML-KEM-768: parse the key, encapsulate           | 14.3           | 108 (ml-kem)|  (none)   |
/// | X25519 ephemeral: generate, public key           | 9.3            | 20 (dalek)  | 28        |
/// | X25519 DH (with parsing the peer's key)          | 29.8           | 65 (dalek)  | 44        |
/// | whole `respond`                                  | 55.7           | 194         |           |
///
/// ring's X25519 (fiat-crypto C) is slower than AWS-LC's here (72 against 39 µs for
/// generate + public key + DH in the probe), so it brings nothing. AWS-LC's X25519 is
/// s2n-bignum's formally verified assembly and its ML-KEM mlkem-native's AVX2 (x86-64) or NEON
/// (AArch64) code, both maintained by AWS; one C library for both halves keeps the build cost to
/// one (aws-lc-sys: about 80 s of C compilation per profile on that machine).
///
/// Erasure of the ephemerals, with evidence:
/// - the X25519 private key lives in an `EVP_PKEY` owned by an `EphemeralPrivateKey`, which
///   `agree_ephemeral` takes by value ("Since it is moved, it will not be usable after calling
///   `agree_ephemeral`, thus guaranteeing that the key is used for only one key agreement",
///   aws-lc-rs docs) and drops; dropping frees it with `EVP_PKEY_free`, whose X25519 method
///   (`x25519_free`, crypto/evp_extra/p_x25519_asn1.c) calls `OPENSSL_free`, which "zeros out
///   the memory allocated at |ptr| and frees it" (AWS-LC include/openssl/mem.h);
/// - the DH output reaches `kdf` from a `Zeroizing<Vec<u8>>` (aws-lc-rs `EVP_PKEY::agree`), and
///   the ML-KEM shared secret is a `kem::SharedSecret`, whose `Drop` zeroizes it; both are
///   copied straight into the `Zeroizing` output here;
/// - the encapsulation's random message `m` never leaves AWS-LC (mlkem-native clears its stack
///   buffers).
#[cfg(feature = "aws-lc")]
mod aws_lc {
    use super::{KexError, MLKEM_CT_LEN, REPLY_SHARE_LEN, ReplyShare, SharedSecret, Zeroizing};
    use aws_lc_rs::{agreement, kem, rand::SystemRandom};

    /// `ek`: the client's ML-KEM-768 encapsulation key; `peer`: its X25519 public key. Any other
    /// length than the protocol's is refused like a bad key.
    pub(super) fn respond(ek: &[u8], peer: &[u8]) -> Result<(ReplyShare, SharedSecret), KexError> {
        // The FIPS 203 §7.2 modulus check runs in `encapsulate` (mlkem-native's `check_pk`):
        // a bad key fails there, as `ml_kem::EncapsulationKey::new` fails in `respond_with`.
        let ek = kem::EncapsulationKey::new(&kem::ML_KEM_768, ek)
            .map_err(|_| KexError::InvalidEncapsulationKey)?;
        let (ct, ss_kem) = ek
            .encapsulate()
            .map_err(|_| KexError::InvalidEncapsulationKey)?;
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(ss_kem.as_ref());
        drop(ss_kem);
        // `generate` ignores its random argument (AWS-LC draws from its own generator); it and
        // `compute_public_key` fail only if AWS-LC cannot allocate, and the request is dropped.
        let sk = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &SystemRandom::new())
            .map_err(|_| KexError::NonContributory)?;
        let public = sk
            .compute_public_key()
            .map_err(|_| KexError::NonContributory)?;
        // AWS-LC's `X25519` fails on an all-zero result (RFC 7748 §6.1), so a low-order point
        // is refused as `x25519_dalek`'s `was_contributory` refuses it; so is a wrong length.
        agreement::agree_ephemeral(
            sk,
            agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
            KexError::NonContributory,
            |dh| {
                out[32..].copy_from_slice(dh);
                Ok(())
            },
        )?;
        let mut reply = Box::new([0u8; REPLY_SHARE_LEN]);
        let (ct_part, x_part) = reply.split_at_mut(MLKEM_CT_LEN);
        // Lengths fixed by the algorithms: 1088, 32 and 32 bytes.
        ct_part.copy_from_slice(ct.as_ref());
        x_part.copy_from_slice(public.as_ref());
        Ok((ReplyShare(reply), SharedSecret(out)))
    }
}

/// [`respond`] with given randomness (known-answer tests): `m` for ML-KEM.Encaps, `x` the
/// X25519 secret.
///
/// # Errors
/// As [`respond`].
pub fn respond_with(
    share: &KeyShare,
    m: &[u8; 32],
    x: &[u8; 32],
) -> Result<(ReplyShare, SharedSecret), KexError> {
    let ek_bytes: &[u8; MLKEM_EK_LEN] = share.0[..MLKEM_EK_LEN]
        .try_into()
        .map_err(|_| KexError::InvalidEncapsulationKey)?;
    let ek = ml_kem::EncapsulationKey::<MlKem768>::new(&(*ek_bytes).into())
        .map_err(|_| KexError::InvalidEncapsulationKey)?;
    let (ct, mut ss_kem) = ek.encapsulate_deterministic(&(*m).into());
    let mut out = Zeroizing::new([0u8; 64]);
    out[..32].copy_from_slice(&ss_kem);
    ss_kem.as_mut_slice().zeroize();
    let sk = x25519_dalek::StaticSecret::from(*x);
    let mut peer = [0u8; 32];
    peer.copy_from_slice(&share.0[MLKEM_EK_LEN..]);
    let dh = sk.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
    if !dh.was_contributory() {
        return Err(KexError::NonContributory);
    }
    out[32..].copy_from_slice(dh.as_bytes());
    let mut reply = Box::new([0u8; REPLY_SHARE_LEN]);
    reply[..MLKEM_CT_LEN].copy_from_slice(ct.as_slice());
    reply[MLKEM_CT_LEN..].copy_from_slice(x25519_dalek::PublicKey::from(&sk).as_bytes());
    Ok((ReplyShare(reply), SharedSecret(out)))
}

/// The key schedule of version 3: from the chain (the init key or the previous generation's
/// secret), the optional hybrid shared secret and the transcript hash to the new generation's
/// secret, and the key that confirms it.
pub struct Schedule;

impl Schedule {
    /// `secret(N+1)`: with a key exchange, TLS 1.3's PSK-(EC)DHE extraction (see the module
    /// documentation); without one (protocol option `pfs = "off"`), the chain alone cannot
    /// give forward secrecy and this is not used (the secret is distributed or derived as in
    /// version 2, bound to the transcript by the echo).
    pub fn next_secret(
        chain: &Secret,
        shared: &SharedSecret,
        transcript: &[u8; 32],
        next: GenerationInfo,
    ) -> Secret {
        let (early, _) = Hkdf::<Sha256>::extract(Some(&[0u8; 32]), chain.expose());
        let mut derived = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::from_prk(&early)
            .expect("32-byte PRK")
            .expand(b"pktc3 derived", &mut *derived)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut early = early;
        early.zeroize();
        let (_, hs) = Hkdf::<Sha256>::extract(Some(&*derived), &*shared.0);
        let mut info = [0u8; 16 + 32 + 13];
        info[..16].copy_from_slice(b"pktc3 generation");
        info[16..48].copy_from_slice(transcript);
        info[48..56].copy_from_slice(&next.number.to_be_bytes());
        info[56..60].copy_from_slice(&next.spi.get().to_be_bytes());
        info[60] = next.suite.id();
        let mut out = [0u8; 32];
        hs.expand(&info, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let secret = Secret::from_bytes(out);
        out.zeroize();
        secret
    }

    /// The key confirmation of an init handshake: `HMAC-SHA256(K, "pktc3 confirm" ‖ th)` with
    /// `K = HKDF-Expand(secret(1), "pktc3 confirm key" ‖ th, 32)`. Only a holder of the new
    /// generation's secret computes it; it names the transcript, so it confirms nothing else.
    pub fn confirm(secret: &Secret, transcript: &[u8; 32]) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut info = [0u8; 17 + 32];
        info[..17].copy_from_slice(b"pktc3 confirm key");
        info[17..].copy_from_slice(transcript);
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::from_prk(secret.expose())
            .expect("32-byte PRK")
            .expand(&info, &mut *key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&*key).expect("HMAC takes keys of any length");
        mac.update(b"pktc3 confirm");
        mac.update(transcript);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is [`Self::confirm`] of `secret` and `transcript` (constant time).
    pub fn verify_confirm(secret: &Secret, transcript: &[u8; 32], tag: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq;
        Self::confirm(secret, transcript).ct_eq(tag).into()
    }
}

/// SHA-256 over `parts` in order, each preceded by its length (u32, big-endian), under the
/// domain label `label`: the transcript hashes of version 3.
pub fn transcript(label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update((label.len() as u32).to_be_bytes());
    h.update(label);
    for p in parts {
        h.update((p.len() as u32).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::SeededRandom;
    use crate::{Spi, Suite};

    fn h32(s: &str) -> [u8; 32] {
        let v = hex::decode(s).unwrap_or_default();
        v.try_into().unwrap_or([0; 32])
    }

    /// RFC 7748 §6.1: Alice is the client's X25519 half, Bob the server's.
    #[test]
    fn x25519_part_matches_rfc7748() {
        let alice = h32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let alice_pub = h32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let bob = h32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let bob_pub = h32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let shared = h32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        let eph = Ephemeral::from_parts(Zeroizing::new([7; 64]), Zeroizing::new(alice));
        assert_eq!(eph.share().0[MLKEM_EK_LEN..], alice_pub);
        let (reply, ss_server) =
            respond_with(eph.share(), &[9; 32], &bob).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.0[MLKEM_CT_LEN..], bob_pub);
        assert_eq!(ss_server.expose()[32..], shared);
        let ss_client = eph.finish(&reply).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ss_client.expose(), ss_server.expose());
    }

    /// The C2SP CCTV "accumulated" ML-KEM-768 vectors (final FIPS 203): inputs from one
    /// SHAKE-128 stream over the empty string, every output absorbed by another SHAKE-128.
    fn accumulated(count: usize) -> [u8; 32] {
        #![allow(deprecated)]
        use ml_kem::ExpandedKeyEncoding;
        use shake::{ExtendableOutput, Update, XofReader};
        let mut rng = shake::Shake128::default().finalize_xof();
        let mut acc = shake::Shake128::default();
        for _ in 0..count {
            let mut seed = [0u8; 64];
            let mut m = [0u8; 32];
            let mut bad_ct = [0u8; MLKEM_CT_LEN];
            rng.read(&mut seed);
            rng.read(&mut m);
            rng.read(&mut bad_ct);
            let dk = mlkem_dk(&seed);
            let ek = dk.encapsulation_key();
            let (ct, k) = ek.encapsulate_deterministic(&m.into());
            let k_dec = dk.decapsulate_slice(ct.as_slice()).unwrap_or_default();
            assert_eq!(k_dec, k, "decapsulation returns the encapsulated key");
            let k_bad = dk.decapsulate_slice(&bad_ct).unwrap_or_default();
            acc.update(&ek.to_bytes());
            acc.update(&dk.to_expanded_bytes());
            acc.update(ct.as_slice());
            acc.update(&k);
            acc.update(&k_bad);
        }
        let mut out = [0u8; 32];
        acc.finalize_xof().read(&mut out);
        out
    }

    #[test]
    fn mlkem768_matches_the_accumulated_fips203_vectors() {
        assert_eq!(
            hex::encode(accumulated(100)),
            "8d65b902f28edc683cebee2872962fd165a4d197c9e24ec74caa4470270df0b7"
        );
        assert_eq!(
            hex::encode(accumulated(10_000)),
            "f959d18d3d1180121433bf0e05f11e7908cf9d03edc150b2b07cb90bef5bc1c1"
        );
    }

    /// The ML-KEM part of our shares and shared secret is the FIPS 203 one.
    #[test]
    fn mlkem_part_of_the_combiner_is_fips203() {
        let seed = [3u8; 64];
        let eph = Ephemeral::from_parts(Zeroizing::new(seed), Zeroizing::new([5; 32]));
        let dk = mlkem_dk(&seed);
        assert_eq!(
            eph.share().0[..MLKEM_EK_LEN],
            dk.encapsulation_key().to_bytes()[..]
        );
        let (reply, ss) =
            respond_with(eph.share(), &[8; 32], &[6; 32]).unwrap_or_else(|e| panic!("{e}"));
        let (ct, k) = dk
            .encapsulation_key()
            .encapsulate_deterministic(&[8u8; 32].into());
        assert_eq!(reply.0[..MLKEM_CT_LEN], ct.as_slice()[..]);
        assert_eq!(ss.expose()[..32], k[..]);
    }

    fn info() -> GenerationInfo {
        GenerationInfo {
            number: 1,
            spi: Spi::new(0x1234).unwrap_or_else(|_| unreachable!()),
            suite: Suite::Aes256Gcm,
        }
    }

    #[test]
    fn the_combined_secret_depends_on_every_input() {
        let eph = Ephemeral::from_parts(Zeroizing::new([1; 64]), Zeroizing::new([2; 32]));
        let (reply, ss) =
            respond_with(eph.share(), &[3; 32], &[4; 32]).unwrap_or_else(|e| panic!("{e}"));
        let chain = Secret::from_bytes([9; 32]);
        let th = [7u8; 32];
        let base = Schedule::next_secret(&chain, &ss, &th, info());
        // Same inputs, same secret; the client agrees.
        let client = eph.finish(&reply).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Schedule::next_secret(&chain, &client, &th, info()), base);
        // Either component of the shared secret, the chain, the transcript, the generation.
        for i in [0, 31, 32, 63] {
            let mut other = *ss.expose();
            other[i] ^= 1;
            let other = SharedSecret(Zeroizing::new(other));
            assert_ne!(
                Schedule::next_secret(&chain, &other, &th, info()),
                base,
                "byte {i}"
            );
        }
        assert_ne!(
            Schedule::next_secret(&Secret::from_bytes([8; 32]), &ss, &th, info()),
            base
        );
        assert_ne!(Schedule::next_secret(&chain, &ss, &[6; 32], info()), base);
        let mut next = info();
        next.number = 2;
        assert_ne!(Schedule::next_secret(&chain, &ss, &th, next), base);
        // A different server ephemeral (X25519 or ML-KEM randomness) changes it too.
        let eph = Ephemeral::from_parts(Zeroizing::new([1; 64]), Zeroizing::new([2; 32]));
        for (m, x) in [([3u8; 32], [5u8; 32]), ([4u8; 32], [4u8; 32])] {
            let (_, ss2) = respond_with(eph.share(), &m, &x).unwrap_or_else(|e| panic!("{e}"));
            assert_ne!(Schedule::next_secret(&chain, &ss2, &th, info()), base);
        }
    }

    #[test]
    fn random_exchanges_agree_and_confirmations_verify() {
        let mut rng = SeededRandom::new(5);
        for _ in 0..8 {
            let eph = Ephemeral::generate(&mut rng);
            let (reply, ss) = respond(eph.share(), &mut rng).unwrap_or_else(|e| panic!("{e}"));
            let cs = eph.finish(&reply).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cs.expose(), ss.expose());
            let s = Schedule::next_secret(&Secret::from_bytes([1; 32]), &ss, &[2; 32], info());
            let tag = Schedule::confirm(&s, &[2; 32]);
            assert!(Schedule::verify_confirm(&s, &[2; 32], &tag));
            assert!(!Schedule::verify_confirm(&s, &[3; 32], &tag));
            let mut bad = tag;
            bad[0] ^= 1;
            assert!(!Schedule::verify_confirm(&s, &[2; 32], &bad));
        }
    }

    #[test]
    fn bad_shares_are_refused() {
        // A low-order X25519 point (zero) from the client.
        let mut share = Ephemeral::from_parts(Zeroizing::new([1; 64]), Zeroizing::new([2; 32]))
            .share()
            .clone();
        share.0[MLKEM_EK_LEN..].fill(0);
        assert_eq!(
            respond_with(&share, &[1; 32], &[1; 32]).err(),
            Some(KexError::NonContributory)
        );
        // An encapsulation key whose coefficients are not reduced (FIPS 203 §7.2).
        let mut share = Ephemeral::from_parts(Zeroizing::new([1; 64]), Zeroizing::new([2; 32]))
            .share()
            .clone();
        share.0[..3].fill(0xff);
        assert_eq!(
            respond_with(&share, &[1; 32], &[1; 32]).err(),
            Some(KexError::InvalidEncapsulationKey)
        );
        // A low-order point from the server.
        let eph = Ephemeral::from_parts(Zeroizing::new([1; 64]), Zeroizing::new([2; 32]));
        let (mut reply, _) =
            respond_with(eph.share(), &[1; 32], &[1; 32]).unwrap_or_else(|e| panic!("{e}"));
        reply.0[MLKEM_CT_LEN..].fill(0);
        assert_eq!(eph.finish(&reply).err(), Some(KexError::NonContributory));
    }
}

/// The aws-lc-rs server side against the RustCrypto client side and the RustCrypto server side.
#[cfg(all(test, feature = "aws-lc"))]
mod aws_lc_tests {
    use super::*;
    use crate::control::SeededRandom;
    use aws_lc_rs::agreement;

    fn h32(s: &str) -> [u8; 32] {
        let v = hex::decode(s).unwrap_or_default();
        v.try_into().unwrap_or([0; 32])
    }

    #[test]
    fn aws_lc_backend_is_the_one_respond_runs() {
        assert!(SERVER_BACKEND.starts_with("aws-lc-rs"));
    }

    /// Many exchanges: `Ephemeral::finish` (RustCrypto) derives the 64 bytes the aws-lc-rs
    /// `respond` derived, and every answer carries a fresh server ephemeral (nothing reused
    /// across clients or requests, even for the same client share).
    #[test]
    fn aws_lc_respond_agrees_with_the_rustcrypto_client() {
        let mut rng = SeededRandom::new(11);
        let mut x25519_publics = std::collections::HashSet::new();
        let mut ciphertexts = std::collections::HashSet::new();
        for i in 0..200 {
            let eph = Ephemeral::generate(&mut rng);
            for _ in 0..2 {
                let (reply, ss) = respond(eph.share(), &mut rng).unwrap_or_else(|e| panic!("{e}"));
                let cs = eph.finish(&reply).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(cs.expose(), ss.expose(), "exchange {i}");
                assert_ne!(ss.expose()[..32], [0; 32]);
                assert_ne!(ss.expose()[32..], [0; 32]);
                assert!(x25519_publics.insert(reply.0[MLKEM_CT_LEN..].to_vec()));
                assert!(ciphertexts.insert(reply.0[..MLKEM_CT_LEN].to_vec()));
            }
        }
        // The schedule on top agrees too.
        let eph = Ephemeral::generate(&mut rng);
        let (reply, ss) = respond(eph.share(), &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let cs = eph.finish(&reply).unwrap_or_else(|e| panic!("{e}"));
        let info = GenerationInfo {
            number: 7,
            spi: crate::Spi::new(0x5555).unwrap_or_else(|_| unreachable!()),
            suite: crate::Suite::ChaCha20Poly1305,
        };
        let chain = Secret::from_bytes([4; 32]);
        assert_eq!(
            Schedule::next_secret(&chain, &ss, &[1; 32], info),
            Schedule::next_secret(&chain, &cs, &[1; 32], info)
        );
    }

    /// RFC 7748 through AWS-LC's X25519 (the code `respond`'s ephemeral keys run): §6.1 both
    /// ways, and the §5.2 scalar multiplications.
    #[test]
    fn aws_lc_x25519_matches_rfc7748() {
        let dh = |k: &[u8; 32], u: &[u8; 32]| -> ([u8; 32], [u8; 32]) {
            let sk = agreement::PrivateKey::from_private_key(&agreement::X25519, k)
                .unwrap_or_else(|e| panic!("{e}"));
            let public: [u8; 32] = sk
                .compute_public_key()
                .map(|p| p.as_ref().try_into().unwrap_or([0; 32]))
                .unwrap_or_else(|e| panic!("{e}"));
            let shared = agreement::agree(
                &sk,
                agreement::UnparsedPublicKey::new(&agreement::X25519, u),
                (),
                |s| s.try_into().map_err(|_| ()),
            )
            .unwrap_or_else(|()| panic!("agreement"));
            (public, shared)
        };
        let alice = h32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let alice_pub = h32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let bob = h32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let bob_pub = h32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let shared = h32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(dh(&alice, &bob_pub), (alice_pub, shared));
        assert_eq!(dh(&bob, &alice_pub), (bob_pub, shared));
        // §5.2: scalar, u-coordinate, result.
        for (k, u, r) in [
            (
                "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
                "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
                "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
            ),
            (
                "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
                "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
                "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
            ),
        ] {
            assert_eq!(dh(&h32(k), &h32(u)).1, h32(r));
        }
    }

    /// Bad shares: the aws-lc-rs path refuses what the RustCrypto path refuses, with the same
    /// error, and wrong lengths as bad keys.
    #[test]
    fn aws_lc_refuses_bad_shares_as_rustcrypto_does() {
        let mut rng = SeededRandom::new(3);
        let good = Ephemeral::from_parts(Zeroizing::new([1; 64]), Zeroizing::new([2; 32]))
            .share()
            .clone();
        let both = |share: &KeyShare, rng: &mut SeededRandom| {
            let aws = respond(share, rng).err();
            let rustcrypto = respond_with(share, &[1; 32], &[1; 32]).err();
            assert_eq!(aws, rustcrypto);
            aws
        };
        assert_eq!(both(&good, &mut rng), None);
        // Unreduced coefficients (FIPS 203 §7.2) at the start, the middle and the end of `t`.
        for at in [0, 600, 1150] {
            let mut share = good.clone();
            share.0[at] = 0xff;
            share.0[at + 1] |= 0x0f;
            assert_eq!(
                both(&share, &mut rng),
                Some(KexError::InvalidEncapsulationKey),
                "byte {at}"
            );
        }
        // Low-order and non-canonical X25519 points whose product is zero: 0, 1, p, p + 1,
        // and the order-8 point.
        let order8 = h32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        let mut p = [0xff; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut p1 = p;
        p1[0] = 0xee;
        let mut one = [0; 32];
        one[0] = 1;
        for point in [[0; 32], one, p, p1, order8] {
            let mut share = good.clone();
            share.0[MLKEM_EK_LEN..].copy_from_slice(&point);
            assert_eq!(
                both(&share, &mut rng),
                Some(KexError::NonContributory),
                "{}",
                hex::encode(point)
            );
        }
        // A tampered but well-formed key: both answer, and the client does not agree.
        let eph = Ephemeral::from_parts(Zeroizing::new([1; 64]), Zeroizing::new([2; 32]));
        let mut share = eph.share().clone();
        share.0[5] ^= 1;
        let (reply, ss) = respond(&share, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let cs = eph.finish(&reply).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(cs.expose()[..32], ss.expose()[..32]);
        assert_eq!(cs.expose()[32..], ss.expose()[32..]);
        // Wrong lengths (the decoder lets none through; the backend refuses them anyway).
        let ek = &good.0[..MLKEM_EK_LEN];
        let x = &good.0[MLKEM_EK_LEN..];
        for len in [0, MLKEM_EK_LEN - 1] {
            assert_eq!(
                aws_lc::respond(&ek[..len], x).err(),
                Some(KexError::InvalidEncapsulationKey)
            );
        }
        let mut long = ek.to_vec();
        long.push(0);
        assert_eq!(
            aws_lc::respond(&long, x).err(),
            Some(KexError::InvalidEncapsulationKey)
        );
        assert_eq!(
            aws_lc::respond(ek, &x[..31]).err(),
            Some(KexError::NonContributory)
        );
        assert_eq!(
            aws_lc::respond(ek, &[x, &[0]].concat()).err(),
            Some(KexError::NonContributory)
        );
        // And a truncated share never decodes into a `KeyShare`.
        let msg = crate::control::message::Message::KeyUpdateRequest {
            have: 1,
            share: Some(([0; 32], good.clone())),
        };
        let encoded = msg.encode(1);
        let bytes = encoded.as_bytes();
        assert!(crate::control::message::Message::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
