//! Init keys as text codes (for files, the environment, a prompt, or a scanned QR code).
//!
//! `pkc1-` followed by base32 (RFC 4648 alphabet, no padding) of
//! `version(1) = 1 | spi(4) | suite(1) | secret(32) | checksum(4)`, grouped in fours. The checksum
//! is the first four bytes of SHA-256 over the rest, so a mistyped code is refused rather than
//! accepted as another key. Decoding ignores case, dashes and spaces.

use crate::{Generation, GenerationInfo, Secret, Spi, Suite};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const PREFIX: &str = "pkc1-";
const LEN: usize = 1 + 4 + 1 + 32 + 4;

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn unbase32(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(Vec::with_capacity(LEN));
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\n' | '\t'))
    {
        let c = c.to_ascii_uppercase() as u8;
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Encodes an init key as a text code.
pub fn encode(key: &Generation) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(Vec::with_capacity(LEN));
    raw.push(1);
    raw.extend_from_slice(&key.info.spi.get().to_be_bytes());
    raw.push(key.info.suite.id());
    raw.extend_from_slice(key.secret.expose());
    let sum = Sha256::digest(&raw[..]);
    raw.extend_from_slice(&sum[..4]);
    let text = Zeroizing::new(base32(&raw));
    let grouped: Vec<&str> = text
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    Zeroizing::new(format!("{PREFIX}{}", grouped.join("-")))
}

/// Decodes a text code into an init key (generation 0).
///
/// # Errors
/// A message saying what is wrong (never the key itself).
pub fn decode(code: &str) -> Result<Generation, String> {
    let code = code.trim();
    let body = code
        .strip_prefix(PREFIX)
        .or_else(|| code.strip_prefix("PKC1-"))
        .ok_or("a key code starts with \"pkc1-\"")?;
    let raw = unbase32(body).ok_or("the key code has characters outside A-Z and 2-7")?;
    if raw.len() != LEN || raw[0] != 1 {
        return Err("the key code has the wrong length or version".into());
    }
    let sum = Sha256::digest(&raw[..LEN - 4]);
    if sum[..4] != raw[LEN - 4..] {
        return Err("the key code's checksum does not match (mistyped?)".into());
    }
    let spi = Spi::new(u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]))
        .map_err(|_| "the key code names a reserved SPI (0-255)".to_string())?;
    let suite = Suite::from_id(raw[5]).ok_or("the key code names an unknown suite")?;
    let secret = Secret::from_slice(&raw[6..38]).map_err(|e| e.to_string())?;
    Ok(Generation {
        info: GenerationInfo {
            number: 0,
            spi,
            suite,
        },
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Generation {
        Generation {
            info: GenerationInfo {
                number: 0,
                spi: Spi::new(0x1234_5678).expect("spi"),
                suite: Suite::ChaCha20Poly1305,
            },
            secret: Secret::from_bytes([7; 32]),
        }
    }

    #[test]
    fn round_trip_and_tolerant_input() {
        let code = encode(&key());
        assert!(code.starts_with("pkc1-"));
        assert_eq!(decode(&code).expect("decodes"), key());
        let sloppy = code.to_lowercase().replace('-', " ");
        assert_eq!(
            decode(&format!("pkc1-{}", &sloppy[5..])).expect("decodes"),
            key()
        );
    }

    #[test]
    fn typos_are_refused() {
        let code = encode(&key());
        let mut chars: Vec<char> = code.chars().collect();
        let i = chars.len() - 3;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert!(
            decode(&typo)
                .expect_err("typo refused")
                .contains("checksum")
        );
        assert!(decode("hello").is_err());
        assert!(decode("pkc1-0000").is_err());
    }
}
