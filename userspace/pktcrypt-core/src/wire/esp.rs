//! ESP header and trailer.
//!
//! ```text
//!  0                   1                   2                   3
//! +---------------------------------------------------------------+
//! |                 Security Parameters Index (SPI)               |
//! +---------------------------------------------------------------+
//! |              Sequence Number (low 32 bits of the ESN)         |
//! +---------------------------------------------------------------+
//! |                  IV (8 bytes: the 64-bit ESN)                 |
//! +---------------------------------------------------------------+ ---
//! | Payload (inner IP packet, transport payload or control message)|  ^ encrypted
//! |                  Padding (0..3 bytes: 1, 2, 3)                 |  |
//! |                 | Pad Length    | Next Header   |             |  v
//! +---------------------------------------------------------------+ ---
//! |                  ICV (16 bytes: the AEAD tag)                 |
//! +---------------------------------------------------------------+
//! ```

use crate::DropReason;
pub use pktcrypt_common::{ESP_HEADER_LEN, ESP_ICV_LEN};
use pktcrypt_common::{NEXT_HEADER_CONTROL, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};

/// Smallest ESP packet: header, pad length and next header, ICV.
pub const MIN_ESP_LEN: usize = ESP_HEADER_LEN + 2 + ESP_ICV_LEN;

/// ESP "no next header": a dummy packet (RFC 4303 §2.6).
const NEXT_HEADER_NONE: u8 = 59;

/// What an ESP payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NextHeader {
    /// An inner IPv4 packet (tunnel mode).
    Ipv4,
    /// An inner IPv6 packet (tunnel mode).
    Ipv6,
    /// A pktcrypt control message.
    Control,
    /// The payload of an IP packet of this protocol (transport mode, RFC 4303 §3.1.1: 6 TCP,
    /// 17 UDP, 1 ICMP, 58 ICMPv6, ...); see [`super::transport`]. Never 4, 41 or 253 (the
    /// variants above) and never 59 (a dummy packet) when it comes from a parser:
    /// [`NextHeader::transport`] makes one that obeys this.
    Transport(u8),
}

impl NextHeader {
    /// The IANA protocol number carried in the trailer.
    pub const fn value(self) -> u8 {
        match self {
            NextHeader::Ipv4 => NEXT_HEADER_IPV4,
            NextHeader::Ipv6 => NEXT_HEADER_IPV6,
            NextHeader::Control => NEXT_HEADER_CONTROL,
            NextHeader::Transport(protocol) => protocol,
        }
    }

    /// The next header of a transport-mode payload of IP protocol `protocol`, or `None` for a
    /// value that means something else in an ESP trailer (4 and 41: tunnel mode; 253: a
    /// control message; 59: a dummy packet).
    pub const fn transport(protocol: u8) -> Option<NextHeader> {
        match protocol {
            NEXT_HEADER_IPV4 | NEXT_HEADER_IPV6 | NEXT_HEADER_CONTROL | NEXT_HEADER_NONE => None,
            p => Some(NextHeader::Transport(p)),
        }
    }

    /// Whether this is a transport-mode payload ([`NextHeader::Transport`]).
    pub const fn is_transport(self) -> bool {
        matches!(self, NextHeader::Transport(_))
    }

    /// Classifies a trailer's next header value in tunnel mode (what a tunnel endpoint
    /// accepts; [`Self::from_value_any`] also takes transport-mode payloads).
    ///
    /// # Errors
    /// [`DropReason::Dummy`] for 59, [`DropReason::BadNextHeader`] for anything unsupported.
    pub const fn from_value(value: u8) -> Result<NextHeader, DropReason> {
        match value {
            NEXT_HEADER_IPV4 => Ok(NextHeader::Ipv4),
            NEXT_HEADER_IPV6 => Ok(NextHeader::Ipv6),
            NEXT_HEADER_CONTROL => Ok(NextHeader::Control),
            NEXT_HEADER_NONE => Err(DropReason::Dummy),
            _ => Err(DropReason::BadNextHeader),
        }
    }

    /// Classifies a trailer's next header value in either mode: 4, 41 and 253 as
    /// [`Self::from_value`], any other protocol but 59 as [`NextHeader::Transport`].
    ///
    /// # Errors
    /// [`DropReason::Dummy`] for 59.
    pub const fn from_value_any(value: u8) -> Result<NextHeader, DropReason> {
        match NextHeader::transport(value) {
            Some(t) => Ok(t),
            None => NextHeader::from_value(value),
        }
    }

    /// The next header for an inner IP packet, from its version nibble.
    pub fn for_ip_packet(packet: &[u8]) -> Option<NextHeader> {
        match packet.first()? >> 4 {
            4 => Some(NextHeader::Ipv4),
            6 => Some(NextHeader::Ipv6),
            _ => None,
        }
    }
}

/// The cleartext part of an ESP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspHeader {
    /// Security Parameters Index.
    pub spi: u32,
    /// Low 32 bits of the sequence number.
    pub seq_low: u32,
    /// Explicit IV.
    pub iv: [u8; 8],
}

impl EspHeader {
    /// Parses the header of an ESP packet and checks its minimum length.
    ///
    /// # Errors
    /// [`DropReason::Truncated`] if shorter than [`MIN_ESP_LEN`].
    pub fn parse(packet: &[u8]) -> Result<EspHeader, DropReason> {
        if packet.len() < MIN_ESP_LEN {
            return Err(DropReason::Truncated);
        }
        let mut spi = [0; 4];
        let mut seq = [0; 4];
        let mut iv = [0; 8];
        spi.copy_from_slice(&packet[0..4]);
        seq.copy_from_slice(&packet[4..8]);
        iv.copy_from_slice(&packet[8..16]);
        Ok(EspHeader {
            spi: u32::from_be_bytes(spi),
            seq_low: u32::from_be_bytes(seq),
            iv,
        })
    }

    /// The sequence-number and IV fields together: the 96 fresh bits of a version-3 handshake
    /// message under an init key.
    pub fn fresh(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.seq_low.to_be_bytes());
        out[4..].copy_from_slice(&self.iv);
        out
    }

    /// Writes the header into the first 16 bytes of `out`.
    pub fn write(&self, out: &mut [u8; ESP_HEADER_LEN]) {
        out[0..4].copy_from_slice(&self.spi.to_be_bytes());
        out[4..8].copy_from_slice(&self.seq_low.to_be_bytes());
        out[8..16].copy_from_slice(&self.iv);
    }
}

/// Number of padding bytes so that payload, padding, pad length and next header end on a
/// 4-byte boundary (RFC 4303 §2.4).
pub const fn pad_len(payload_len: usize) -> usize {
    (4 - (payload_len + 2) % 4) % 4
}

/// Total ESP length for a payload of `payload_len` bytes.
pub const fn esp_len(payload_len: usize) -> usize {
    ESP_HEADER_LEN + payload_len + pad_len(payload_len) + 2 + ESP_ICV_LEN
}

/// Largest ESP overhead: header, up to 3 padding bytes, pad length, next header, ICV.
pub const MAX_OVERHEAD: usize = ESP_HEADER_LEN + 3 + 2 + ESP_ICV_LEN;

/// Writes padding, pad length and next header after a payload of `payload_len` bytes at the
/// start of `ciphertext_area`, returning the plaintext length to encrypt.
pub fn write_trailer(ciphertext_area: &mut [u8], payload_len: usize, next: NextHeader) -> usize {
    let pad = pad_len(payload_len);
    for (i, b) in ciphertext_area[payload_len..payload_len + pad]
        .iter_mut()
        .enumerate()
    {
        *b = (i + 1) as u8;
    }
    ciphertext_area[payload_len + pad] = pad as u8;
    ciphertext_area[payload_len + pad + 1] = next.value();
    payload_len + pad + 2
}

/// Parses a decrypted trailer, returning the payload length and its next header.
///
/// # Errors
/// [`DropReason::BadPadding`] for a pad length that overruns or padding bytes other than
/// 1, 2, 3, ...; the next-header errors of [`NextHeader::from_value`].
pub fn parse_trailer(plaintext: &[u8]) -> Result<(usize, NextHeader), DropReason> {
    let (len, next) = parse_trailer_raw(plaintext)?;
    Ok((len, NextHeader::from_value(next)?))
}

/// [`parse_trailer`] in either mode: a transport-mode payload's next header is
/// [`NextHeader::Transport`] ([`NextHeader::from_value_any`]).
///
/// # Errors
/// As [`parse_trailer`], but no [`DropReason::BadNextHeader`].
pub fn parse_trailer_any(plaintext: &[u8]) -> Result<(usize, NextHeader), DropReason> {
    let (len, next) = parse_trailer_raw(plaintext)?;
    Ok((len, NextHeader::from_value_any(next)?))
}

/// The payload length and the next header's value of a decrypted trailer, padding checked.
fn parse_trailer_raw(plaintext: &[u8]) -> Result<(usize, u8), DropReason> {
    let [.., pad_len, next] = *plaintext else {
        return Err(DropReason::Truncated);
    };
    let pad = usize::from(pad_len);
    let payload_len = plaintext
        .len()
        .checked_sub(2 + pad)
        .ok_or(DropReason::BadPadding)?;
    let padding = &plaintext[payload_len..payload_len + pad];
    if padding
        .iter()
        .enumerate()
        .any(|(i, b)| usize::from(*b) != i + 1)
    {
        return Err(DropReason::BadPadding);
    }
    Ok((payload_len, next))
}

/// Builds the AAD of RFC 4106 §5 (and RFC 7634 §3): SPI ‖ Seq (8 bytes), or with 64-bit
/// extended sequence numbers SPI ‖ Seq-high ‖ Seq-low (12 bytes). Returns its length in `out`.
pub fn aad(spi: u32, seq: u64, esn: bool, out: &mut [u8; 12]) -> usize {
    out[0..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        out[4..12].copy_from_slice(&seq.to_be_bytes());
        12
    } else {
        out[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        8
    }
}

/// The AEAD nonce: salt(4) ‖ explicit IV(8) (RFC 4106 §4, RFC 7634 §2).
pub fn nonce(salt: [u8; 4], iv: [u8; 8]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&salt);
    nonce[4..].copy_from_slice(&iv);
    nonce
}
