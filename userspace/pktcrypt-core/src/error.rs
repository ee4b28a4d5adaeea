//! Error and drop-reason types.

use core::fmt;

/// Errors from configuration and key management. Never carries key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A key or secret has the wrong length for its suite.
    KeyLength,
    /// An SPI in the reserved range 0..=255 (RFC 4303 §2.1).
    ReservedSpi,
    /// The SPI is already used by another generation in this engine.
    DuplicateSpi,
    /// Unknown suite name or identifier.
    UnknownSuite,
    /// Replay window size must be a multiple of 64 in 64..=8192.
    ReplayWindow,
    /// No peer with this id.
    UnknownPeer,
    /// The generation is older than the newest one held.
    StaleGeneration,
    /// The generation skips one: the sides would be more than one generation apart.
    GenerationGap,
    /// The same generation number arrived with a different SPI, suite or secret.
    ConflictingGeneration,
    /// The initialization key must be generation 0, dynamic generations must be ≥ 1.
    GenerationNumber,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::KeyLength => "key has the wrong length for its suite",
            Error::ReservedSpi => "SPI is in the reserved range 0..=255",
            Error::DuplicateSpi => "SPI is already in use",
            Error::UnknownSuite => {
                "unknown suite (expected aes-128-gcm, aes-256-gcm or chacha20-poly1305)"
            }
            Error::ReplayWindow => "replay window must be a multiple of 64 in 64..=8192",
            Error::UnknownPeer => "no such peer",
            Error::StaleGeneration => "generation is older than the newest one held",
            Error::GenerationGap => "generation skips one; the sides would drift two apart",
            Error::ConflictingGeneration => {
                "generation number already held with a different SPI, suite or secret"
            }
            Error::GenerationNumber => {
                "the init key is generation 0 and dynamic generations start at 1"
            }
        })
    }
}

impl std::error::Error for Error {}

/// Why a packet could not be sealed. Nothing was sent and no sequence number was consumed
/// unless stated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// No peer with this id.
    UnknownPeer,
    /// The buffer cannot hold header, payload, trailer and ICV.
    BufferTooSmall,
    /// The inner packet is larger than the configured maximum.
    PacketTooLarge,
    /// The sequence space of the transmit SA is exhausted: rekey before sending more
    /// (numbers are never wrapped or reused).
    SequenceExhausted,
    /// The inner packet is not IPv4 or IPv6 (for data) or empty.
    BadInnerPacket,
    /// No key is established with the peer yet: protocol version 3 seals nothing but
    /// handshake messages under the init key.
    NoKey,
    /// Transport mode: the packet is an IP fragment (RFC 4303 §3.1.1 applies transport mode
    /// to whole datagrams only; reassemble first).
    Fragment,
    /// Transport mode: an IPv6 extension header ESP cannot be placed after here (routing,
    /// fragment, AH, ESP, mobility, or any other than hop-by-hop and destination options), or
    /// more than four of them.
    UnsupportedExtension,
    /// Transport mode: the payload's protocol is IP-in-IP (4, 41: seal the packet in tunnel
    /// mode instead), ESP or AH (50, 51), no next header (59), or 253 (pktcrypt's control
    /// messages).
    UnsupportedProtocol,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealError::UnknownPeer => "no such peer",
            SealError::BufferTooSmall => "buffer too small for ESP header, trailer and ICV",
            SealError::PacketTooLarge => "inner packet exceeds the configured maximum",
            SealError::SequenceExhausted => "sequence numbers exhausted; a rekey is required",
            SealError::BadInnerPacket => "inner packet is not an IPv4 or IPv6 packet",
            SealError::NoKey => "no key established with the peer yet (init key: handshakes only)",
            SealError::Fragment => {
                "transport mode: an IP fragment (transport mode seals whole datagrams)"
            }
            SealError::UnsupportedExtension => {
                "transport mode: unsupported IPv6 extension header (only hop-by-hop and \
                 destination options, at most four)"
            }
            SealError::UnsupportedProtocol => {
                "transport mode: payload protocol 4, 41, 50, 51, 59 or 253 (seal IP-in-IP in \
                 tunnel mode)"
            }
        })
    }
}

impl std::error::Error for SealError {}

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident = $label:literal,)*) => {
        /// Why an incoming packet was dropped. Every drop is counted per reason.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];

            /// Stable snake_case label for counters and metrics.
            pub const fn label(self) -> &'static str {
                match self {
                    $(DropReason::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than the smallest valid header or ESP packet.
    Truncated = "truncated",
    /// Outer IP/UDP headers are inconsistent (lengths, version, checksum).
    Malformed = "malformed",
    /// An IP fragment: ESP-in-UDP is not reassembled here.
    Fragment = "fragment",
    /// Not UDP to the ESP port, or a non-ESP marker (IKE).
    NotEsp = "not_esp",
    /// A NAT-keepalive (RFC 3948 §2.3); not an error, but not data either.
    Keepalive = "keepalive",
    /// Larger than the configured maximum packet size.
    Oversized = "oversized",
    /// SPI in the reserved range 0..=255.
    ReservedSpi = "reserved_spi",
    /// No generation with this SPI is held.
    UnknownSpi = "unknown_spi",
    /// Sequence number already seen.
    Replay = "replay",
    /// Sequence number left of the anti-replay window.
    TooOld = "too_old",
    /// The ICV did not verify: forged or corrupted.
    AuthFailed = "auth_failed",
    /// The decrypted trailer's padding is invalid.
    BadPadding = "bad_padding",
    /// Next header is neither IPv4, IPv6 nor a pktcrypt control message.
    BadNextHeader = "bad_next_header",
    /// A dummy packet (next header 59, RFC 4303 §2.6): traffic-flow confidentiality padding.
    Dummy = "dummy",
    /// The inner packet does not match its next header (e.g. not IPv4 under next header 4).
    BadInnerPacket = "bad_inner_packet",
    /// An authenticated control message that does not decode (version, type, length).
    ControlMalformed = "control_malformed",
    /// A control message this role does not accept (e.g. a distribution sent to a server).
    ControlUnexpected = "control_unexpected",
    /// Data under an init key: protocol version 3 carries only handshake messages under it.
    InitData = "init_data",
    /// An authentic handshake message that answers no request in flight (a replay, or late):
    /// it changes nothing.
    StaleHandshake = "stale_handshake",
    /// An init request beyond the key server's handshake rate limit (the client retries).
    HandshakeRateLimited = "handshake_rate_limited",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Per-reason drop counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    /// Counts one drop.
    pub fn add(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }

    /// Drops counted for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// Total drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, including zeros.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}
