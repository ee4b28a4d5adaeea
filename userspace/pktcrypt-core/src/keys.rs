//! Generation secrets and the per-direction keys derived from them.
//!
//! A generation is a 256-bit secret with a number, an SPI and a suite. Each direction's AEAD key
//! and salt come from HKDF-SHA256 (RFC 5869) over the secret, with an info string naming the
//! direction, generation number, SPI and suite, so the two directions never share a
//! (key, nonce) pair and no two generations share a key even if a secret were reused.

use crate::ids::Spi;
use crate::{Error, Suite};
use core::fmt;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a generation secret.
pub const SECRET_LEN: usize = 32;

/// A 256-bit generation secret. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// Wraps 32 bytes of key material (from a CSPRNG or an out-of-band provisioned key).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// Copies a secret from a slice.
    ///
    /// # Errors
    /// [`Error::KeyLength`] unless `bytes` is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let bytes: [u8; SECRET_LEN] = bytes.try_into().map_err(|_| Error::KeyLength)?;
        Ok(Self(bytes))
    }

    /// The raw secret, for distribution inside a sealed control message or for export.
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Derived-key mode (spec §5): the secret of generation `next` computed from this secret and
    /// a fresh public nonce. Key material never crosses the network.
    pub fn derive_next(&self, nonce: &[u8], next: GenerationInfo) -> Secret {
        self.derive_labelled(b"next secret", nonce, next)
    }

    /// Derived mode for groups: the secret of group generation `next` computed from this
    /// secret (the group init secret) and the generation's fresh nonce
    /// ([`crate::control::message::GroupMaterial::Nonce`]). A label of its own keeps it apart
    /// from the pairwise ratchet.
    pub fn derive_group_next(&self, nonce: &[u8], next: GenerationInfo) -> Secret {
        self.derive_labelled(b"group next", nonce, next)
    }

    /// `HKDF-SHA256(salt = nonce, ikm = self, info = label ‖ 0 ‖ next)`.
    fn derive_labelled(&self, label: &[u8], nonce: &[u8], next: GenerationInfo) -> Secret {
        let hk = Hkdf::<Sha256>::new(Some(nonce), &self.0);
        let mut info = [0u8; INFO_MAX];
        let n = next.write_info(label, &mut info);
        let mut out = [0u8; SECRET_LEN];
        hk.expand(&info[..n], &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Secret(out)
    }

    /// The AEAD key and salt of one handshake message under this init secret (protocol
    /// version 3): `HKDF-Expand(secret, "pktc3hs" ‖ direction ‖ fresh(12) ‖ spi(4) ‖ suite(1))`,
    /// where `fresh` is the message's 96 random bits sent in the clear. Every message has a key
    /// of its own, so nothing depends on a counter that restarts at boot.
    pub fn derive_handshake(
        &self,
        info: GenerationInfo,
        direction: Direction,
        fresh: &[u8; 12],
    ) -> DirectionKey {
        let mut hinfo = [0u8; 25];
        hinfo[..7].copy_from_slice(b"pktc3hs");
        hinfo[7] = match direction {
            Direction::ServerToClient => b's',
            Direction::ClientToServer => b'c',
            Direction::GroupSender => b'g',
        };
        hinfo[8..20].copy_from_slice(fresh);
        hinfo[20..24].copy_from_slice(&info.spi.get().to_be_bytes());
        hinfo[24] = info.suite.id();
        let hk = Hkdf::<Sha256>::from_prk(&self.0).expect("a 32-byte PRK is long enough");
        DirectionKey::expand(info.suite, |okm| {
            hk.expand(&hinfo, okm)
                .expect("at most 36 bytes is a valid HKDF-SHA256 output length");
        })
    }

    /// Derives the AEAD key and salt of one direction of the generation described by `info`.
    pub fn derive_direction(&self, info: GenerationInfo, direction: Direction) -> DirectionKey {
        let hkdf_info = info.direction_info(direction);
        DirectionKey::expand(info.suite, |okm| expand_short(&self.0, &hkdf_info, okm))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The public description of a generation: number, SPI and suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GenerationInfo {
    /// Generation number; 0 is the initialization key.
    pub number: u64,
    /// SPI that selects this generation on the wire.
    pub spi: Spi,
    /// AEAD suite of this generation.
    pub suite: Suite,
}

/// Longest HKDF info string of [`GenerationInfo::write_info`].
const INFO_MAX: usize = 32;

/// Length of a direction key's HKDF info: an 8-byte label, number, SPI and suite. At most 22
/// bytes keeps every HMAC input of a 36-byte expansion (`T(1) ‖ info ‖ 0x02`) in one SHA-256
/// block.
const DIRECTION_INFO_LEN: usize = 21;

/// SHA-256 initial hash value (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// HMAC-SHA256 (RFC 2104) under a 32-byte key, for messages of at most 55 bytes: the keyed
/// inner and outer states are computed once, then each MAC is two SHA-256 compressions. Key
/// expansion is on a key server's per-rekey path, where the general-purpose HMAC's buffering
/// cost as much as the hashing.
struct ShortHmac {
    inner: Zeroizing<[u32; 8]>,
    outer: Zeroizing<[u32; 8]>,
}

impl ShortHmac {
    fn new(key: &[u8; SECRET_LEN]) -> Self {
        let keyed = |pad: u8| {
            let mut block = Zeroizing::new([pad; 64]);
            for (b, k) in block.iter_mut().zip(key) {
                *b ^= k;
            }
            let mut state = Zeroizing::new(SHA256_IV);
            sha2::block_api::compress256(&mut state, core::slice::from_ref(&*block));
            state
        };
        Self {
            inner: keyed(0x36),
            outer: keyed(0x5c),
        }
    }

    /// The MAC of the concatenation of `parts` (at most 55 bytes in all).
    fn mac(&self, parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        let mut block = Zeroizing::new([0u8; 64]);
        let mut n = 0;
        for p in parts {
            block[n..n + p.len()].copy_from_slice(p);
            n += p.len();
        }
        debug_assert!(n <= 55);
        // Padding (FIPS 180-4 §5.1.1); the key block came first, so 64 + n bytes in all.
        block[n] = 0x80;
        block[56..].copy_from_slice(&((64 + n as u64) * 8).to_be_bytes());
        let mut state = self.inner.clone();
        sha2::block_api::compress256(&mut state, core::slice::from_ref(&*block));
        block.fill(0);
        for (i, w) in state.iter().enumerate() {
            block[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        block[32] = 0x80;
        block[56..].copy_from_slice(&((64 + 32u64) * 8).to_be_bytes());
        let mut state = self.outer.clone();
        sha2::block_api::compress256(&mut state, core::slice::from_ref(&*block));
        let mut out = Zeroizing::new([0u8; 32]);
        for (i, w) in state.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// HKDF-SHA256-Expand (RFC 5869 §2.3) of at most 64 bytes with a short info.
fn expand_short(prk: &[u8; SECRET_LEN], info: &[u8; DIRECTION_INFO_LEN], okm: &mut [u8]) {
    debug_assert!(okm.len() <= 64);
    let hmac = ShortHmac::new(prk);
    let t1 = hmac.mac(&[info, &[1]]);
    let n = okm.len().min(32);
    okm[..n].copy_from_slice(&t1[..n]);
    let len = okm.len();
    if len > 32 {
        let t2 = hmac.mac(&[&t1[..], info, &[2]]);
        okm[32..].copy_from_slice(&t2[..len - 32]);
    }
}

impl GenerationInfo {
    /// A direction key's HKDF info: `label(8) ‖ number(8) ‖ spi(4) ‖ suite(1)`.
    fn direction_info(&self, direction: Direction) -> [u8; DIRECTION_INFO_LEN] {
        let mut out = [0u8; DIRECTION_INFO_LEN];
        out[..8].copy_from_slice(direction.label());
        out[8..16].copy_from_slice(&self.number.to_be_bytes());
        out[16..20].copy_from_slice(&self.spi.get().to_be_bytes());
        out[20] = self.suite.id();
        out
    }

    /// Writes `label ‖ 0x00 ‖ number(8) ‖ spi(4) ‖ suite(1)` and returns its length.
    fn write_info(&self, label: &[u8], out: &mut [u8; INFO_MAX]) -> usize {
        let n = label.len();
        out[..n].copy_from_slice(label);
        out[n] = 0;
        out[n + 1..n + 9].copy_from_slice(&self.number.to_be_bytes());
        out[n + 9..n + 13].copy_from_slice(&self.spi.get().to_be_bytes());
        out[n + 13] = self.suite.id();
        n + 14
    }
}

/// A generation: its public description and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Generation {
    /// Number, SPI and suite.
    pub info: GenerationInfo,
    /// The 256-bit secret.
    pub secret: Secret,
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("info", &self.info)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Direction of traffic between a key server and a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Key server (key transmitting device) to client.
    ServerToClient,
    /// Client (key receiving device) to key server.
    ClientToServer,
    /// Group traffic from one sender: each member sends under its own SPI (`spi_base + index`),
    /// which enters the derivation, so senders never share a (key, nonce).
    GroupSender,
}

impl Direction {
    /// The 8-byte HKDF label of this direction's keys (key schedule version 2).
    const fn label(self) -> &'static [u8; 8] {
        match self {
            Direction::ServerToClient => b"pktc2s2c",
            Direction::ClientToServer => b"pktc2c2s",
            Direction::GroupSender => b"pktc2grp",
        }
    }

    /// The opposite direction (a group sender's traffic has one direction only).
    pub const fn reverse(self) -> Direction {
        match self {
            Direction::ServerToClient => Direction::ClientToServer,
            Direction::ClientToServer => Direction::ServerToClient,
            Direction::GroupSender => Direction::GroupSender,
        }
    }
}

/// The AEAD key and salt of one direction of one generation. Zeroized on drop.
pub struct DirectionKey {
    suite: Suite,
    key: Zeroizing<[u8; SECRET_LEN + 4]>,
    salt: [u8; 4],
}

impl DirectionKey {
    /// A key and salt of `suite` from `fill`, which writes the `key_len + 4` bytes of output
    /// keying material it is given (key first, then the salt).
    fn expand(suite: Suite, fill: impl FnOnce(&mut [u8])) -> DirectionKey {
        let mut okm = Zeroizing::new([0u8; SECRET_LEN + 4]);
        let len = suite.key_len() + suite.salt_len();
        fill(&mut okm[..len]);
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&okm[suite.key_len()..len]);
        DirectionKey {
            suite,
            key: okm,
            salt,
        }
    }

    /// The AEAD key bytes.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.suite.key_len()]
    }

    /// The 4-byte salt that prefixes the IV in the nonce.
    pub fn salt(&self) -> [u8; 4] {
        self.salt
    }

    /// The suite this key is for.
    pub fn suite(&self) -> Suite {
        self.suite
    }
}

impl Drop for DirectionKey {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl fmt::Debug for DirectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectionKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, feature = "ring"))]
mod tests {
    use super::*;

    /// The key schedule checked against an independent HKDF (ring's): Expand only, keyed with
    /// the secret, info as documented in docs/protocol.md.
    #[test]
    fn direction_keys_match_an_independent_hkdf_expand() {
        struct Len(usize);
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let cases = [
            (Suite::Aes128Gcm, Direction::ServerToClient),
            (Suite::Aes256Gcm, Direction::ClientToServer),
            (Suite::ChaCha20Poly1305, Direction::GroupSender),
        ];
        for round in 0..300u64 {
            let (suite, direction) = cases[(round % 3) as usize];
            let direction = if round % 2 == 0 {
                direction
            } else {
                direction.reverse()
            };
            let secret = Secret::from_bytes(core::array::from_fn(|i| {
                (i as u64 * 7 + round * 131 + 1).wrapping_mul(0x9d) as u8
            }));
            let spi = 0x100 + (round.wrapping_mul(0x9e37_79b9) as u32 & 0x7fff_ffff);
            let info = GenerationInfo {
                number: round.wrapping_mul(0x0102_0304_0506_0708),
                spi: Spi::new(spi).unwrap_or_else(|_| unreachable!()),
                suite,
            };
            let mut label = direction.label().to_vec();
            label.extend_from_slice(&info.number.to_be_bytes());
            label.extend_from_slice(&spi.to_be_bytes());
            label.push(suite.id());
            let len = suite.key_len() + 4;
            let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, secret.expose());
            let mut want = vec![0u8; len];
            let infos = [label.as_slice()];
            prk.expand(&infos, Len(len))
                .and_then(|okm| okm.fill(&mut want))
                .unwrap_or_else(|_| unreachable!());
            let got = secret.derive_direction(info, direction);
            assert_eq!(
                got.key(),
                &want[..suite.key_len()],
                "{suite:?} {direction:?}"
            );
            assert_eq!(
                got.salt(),
                want[suite.key_len()..],
                "{suite:?} {direction:?}"
            );
        }
    }
}
