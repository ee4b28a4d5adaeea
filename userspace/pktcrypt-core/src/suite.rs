//! AEAD cipher suites that a generation may use.

use core::fmt;

/// An AEAD suite. The suite is a property of each key generation; the SPI selects it.
///
/// Every suite authenticates: pktcrypt never offers encryption without integrity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Suite {
    /// AES-128-GCM with a 16-byte ICV (RFC 4106).
    Aes128Gcm = 1,
    /// AES-256-GCM with a 16-byte ICV (RFC 4106).
    Aes256Gcm = 2,
    /// ChaCha20-Poly1305 (RFC 7634).
    ChaCha20Poly1305 = 3,
}

impl Suite {
    /// All suites, in wire-id order.
    pub const ALL: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::ChaCha20Poly1305];

    /// Length in bytes of the AEAD key.
    pub const fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm | Suite::ChaCha20Poly1305 => 32,
        }
    }

    /// Length of the implicit salt that prefixes the 8-byte explicit IV to form the nonce.
    pub const fn salt_len(self) -> usize {
        4
    }

    /// The one-byte identifier used in control messages and configuration.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// Parses a one-byte suite identifier.
    pub const fn from_id(id: u8) -> Option<Suite> {
        match id {
            1 => Some(Suite::Aes128Gcm),
            2 => Some(Suite::Aes256Gcm),
            3 => Some(Suite::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// The stable name used in configuration files and status output.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "aes-128-gcm",
            Suite::Aes256Gcm => "aes-256-gcm",
            Suite::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The encryption algorithm name Wireshark's ESP preferences use for this suite.
    pub const fn wireshark_name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "AES-GCM with 16 octet ICV [RFC4106]",
            Suite::Aes256Gcm => "AES-GCM with 16 octet ICV [RFC4106]",
            Suite::ChaCha20Poly1305 => "ChaCha20 with Poly1305 [RFC7634]",
        }
    }

    /// Largest number of packets one key may seal before confidentiality bounds are at risk
    /// (RFC 9001 §6.6: 2^23 for AES-GCM; for ChaCha20-Poly1305 the limit exceeds any reachable
    /// packet count).
    pub const fn confidentiality_limit(self) -> u64 {
        match self {
            Suite::Aes128Gcm | Suite::Aes256Gcm => 1 << 23,
            Suite::ChaCha20Poly1305 => u64::MAX,
        }
    }

    /// Largest number of failed decryptions tolerated under one key (RFC 9001 §6.6).
    pub const fn integrity_limit(self) -> u64 {
        match self {
            Suite::Aes128Gcm | Suite::Aes256Gcm => 1 << 52,
            Suite::ChaCha20Poly1305 => 1 << 36,
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl core::str::FromStr for Suite {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Suite::ALL
            .into_iter()
            .find(|suite| suite.name() == s)
            .ok_or(crate::Error::UnknownSuite)
    }
}
