//! The control plane: key distribution between a key server and many clients, and group
//! rollout, as sans-IO state machines in the style of quinn-proto.
//!
//! Each machine is driven by four calls, with time always a parameter:
//! `handle_datagram(now, from, bytes)` for every received ESP packet (data is handed back,
//! control messages are consumed), `handle_timeout(now)` when `poll_timeout()` has passed,
//! `poll_transmit()` for packets to send, and `poll_event()` for what the application should
//! know (key installed, generation retired, peer lost, ...).
//!
//! Control messages ([`message`]) travel inside ESP with next header 253, sealed by the same
//! [`Engine`](crate::Engine) as data under the sender's transmit key, so their SPI tells the
//! receiver which generation the sender holds.

pub mod client;
pub mod endpoint;
pub mod group;
pub mod message;
pub mod server;

#[cfg(test)]
mod secrets_on_wire;

use crate::{SaCounters, Suite, Time};
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

pub use crate::random::{KeyErasureRandom, Random, SeededRandom};
pub use client::{ClientConfig, ClientEvent, KeyClient};
pub use endpoint::{Endpoint, Event, Machine};
pub use group::{
    GroupConfig, GroupController, GroupEvent, GroupMember, MemberEvent, MemberState, TableEntry,
};
pub use message::{DecodeError, Message, Reassembler};
pub use server::{KeyServer, Pfs, ServerConfig, ServerEvent};

/// `base` scaled by a random factor in `1 ± permille/1000`.
pub fn jittered(base: Duration, permille: u32, rng: &mut dyn Random) -> Duration {
    if permille == 0 || base.is_zero() {
        return base;
    }
    scaled(base, permille, rng.next_u64())
}

/// `base` scaled by `1 + (r mod (2p+1) - p)/1000`, with `p = min(permille, 1000)`.
fn scaled(base: Duration, permille: u32, r: u64) -> Duration {
    let p = u64::from(permille.min(1000));
    let factor = 1000 + r % (2 * p + 1) - p;
    base.mul_f64(factor as f64 / 1000.0)
}

/// `base` scaled by a factor in `1 ± permille/1000` drawn from `seed` (a stable jitter: the same
/// seed, e.g. an SPI, always gives the same deadline, so it need not be stored).
pub fn jittered_by(base: Duration, permille: u32, seed: u64) -> Duration {
    // splitmix64's finalizer: spreads sequential or random seeds alike.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    scaled(base, permille, z)
}

/// Exponential back-off: `initial · 2^attempt`, capped at `max`, with ±20 % jitter.
pub fn backoff(initial: Duration, max: Duration, attempt: u32, rng: &mut dyn Random) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(16));
    jittered(exp.min(max), 200, rng)
}

/// Thresholds at which a generation is rotated (spec §6 and §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RekeyTriggers {
    /// Packets sealed under one generation.
    pub packets_sealed: u64,
    /// Packets opened under one generation.
    pub packets_opened: u64,
    /// Packets sealed plus opened.
    pub packets_total: u64,
    /// Payload bytes sealed plus opened.
    pub bytes: u64,
    /// Failed authentications under one generation's SPI.
    pub auth_failures: u64,
    /// Age of the generation.
    pub max_age: Option<Duration>,
}

impl RekeyTriggers {
    /// Defaults derived from the AEAD limits of RFC 9001 §6.6 for packets of up to `max_frame`
    /// bytes, with a safety margin of one half.
    ///
    /// AES-GCM: the attacker's confidentiality advantage stays at 2^-57 while
    /// `q ≤ 2^35 / l`, q packets of l 16-byte blocks each (RFC 9001 App. B.1.1: 2^28 packets
    /// of up to 2^11 bytes, 2^23 of up to 2^16 bytes; here l counts one block more, GHASH's
    /// length block); integrity limit 2^52 forgery attempts. ChaCha20-Poly1305: no practical
    /// confidentiality limit (2^62 packets); integrity limit 2^36. Rotation is also due after
    /// one hour. `tests/tests/triggers.rs` holds these against the RFC's figures.
    pub fn for_suite(suite: Suite, max_frame: usize) -> Self {
        let blocks = (max_frame as u64).div_ceil(16) + 1;
        let (confidentiality, integrity) = match suite {
            Suite::Aes128Gcm | Suite::Aes256Gcm => ((1u64 << 35) / blocks, 1u64 << 52),
            Suite::ChaCha20Poly1305 => (1u64 << 62, 1u64 << 36),
        };
        let packets = confidentiality / 2;
        Self {
            packets_sealed: packets,
            packets_opened: packets,
            packets_total: packets.saturating_mul(2),
            bytes: packets.saturating_mul(blocks * 16),
            auth_failures: integrity / 2,
            max_age: Some(Duration::from_secs(3600)),
        }
    }

    /// These triggers, none above the defaults of `suite` ([`Self::for_suite`]): what a
    /// generation of `suite` is checked against, so that triggers set for a looser suite (a
    /// ChaCha20-Poly1305 server's packet counts) never let a generation of a stricter one
    /// (AES-GCM, after a suite change) exceed its AEAD limits. The age is kept as it is.
    pub fn within_limits(self, suite: Suite, max_frame: usize) -> Self {
        let l = Self::for_suite(suite, max_frame);
        Self {
            packets_sealed: self.packets_sealed.min(l.packets_sealed),
            packets_opened: self.packets_opened.min(l.packets_opened),
            packets_total: self.packets_total.min(l.packets_total),
            bytes: self.bytes.min(l.bytes),
            auth_failures: self.auth_failures.min(l.auth_failures),
            max_age: self.max_age,
        }
    }

    /// Whether a generation with these counters and age is due for rotation, and why.
    pub fn exceeded(&self, c: &SaCounters, age: Duration) -> Option<&'static str> {
        if c.packets_sealed >= self.packets_sealed {
            Some("packets_sealed")
        } else if c.packets_opened >= self.packets_opened {
            Some("packets_opened")
        } else if c.packets_sealed + c.packets_opened >= self.packets_total {
            Some("packets_total")
        } else if c.bytes_sealed + c.bytes_opened >= self.bytes {
            Some("bytes")
        } else if c.auth_failures >= self.auth_failures {
            Some("auth_failures")
        } else if self.max_age.is_some_and(|m| age >= m) {
            Some("age")
        } else {
            None
        }
    }
}

/// A packet to send: an ESP packet for the UDP payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The peer it is for.
    pub peer: crate::PeerId,
    /// Where to send it, if known (the address the peer last sent from, or configured).
    pub destination: Option<SocketAddr>,
    /// The ESP packet.
    pub contents: Vec<u8>,
}

/// What a received datagram was.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A data packet for the application: the inner IP packet, decrypted in place (or, from
    /// [`Endpoint::handle_transport`] in transport mode, the IP packet restored).
    Data {
        /// Sender.
        peer: crate::PeerId,
        /// The inner packet (tunnel mode) or the restored IP packet (transport mode).
        packet: &'a mut [u8],
        /// IPv4 or IPv6: tunnel mode; [`crate::wire::NextHeader::Transport`] with the
        /// payload's protocol: transport mode (only from [`Endpoint::handle_transport`]).
        next_header: crate::wire::NextHeader,
        /// Generation it came under.
        generation: u64,
    },
    /// A control message, consumed by the state machine.
    Control {
        /// Sender.
        peer: crate::PeerId,
    },
    /// Dropped and counted.
    Dropped(crate::DropReason),
}

/// Encodes `msg`, splits it into [`message::fragments`] if it does not fit one datagram, seals
/// each under the engine's transmit key for `peer` (or, when that is the init key, as a
/// handshake message under a key of its own with 96 fresh bits from `rng`), and queues them on
/// `out`. The scratch buffer is wiped afterwards (distributions carry secrets). Returns whether
/// everything was sealed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal_messages(
    engine: &mut crate::Engine,
    peer: crate::PeerId,
    destination: Option<SocketAddr>,
    msg: &message::Message,
    id: u32,
    scratch: &mut [u8],
    rng: &mut dyn Random,
    out: &mut VecDeque<Transmit>,
) -> bool {
    let encoded = msg.encode(id);
    // Handshake messages always travel under the init key (a restarted peer holds nothing
    // else); nothing else ever does.
    let handshake = msg.is_handshake();
    let mut seal_one = |part: &[u8]| {
        let sealed = if handshake {
            let mut fresh = [0u8; 12];
            rng.fill(&mut fresh);
            engine.seal_handshake(peer, part, scratch, fresh)
        } else {
            engine.seal_control(peer, part, scratch)
        };
        let ok = match sealed {
            Ok(n) => {
                out.push_back(Transmit {
                    peer,
                    destination,
                    contents: scratch[..n].to_vec(),
                });
                true
            }
            Err(_) => false,
        };
        // Wipe what sealing wrote (the plaintext passed through it).
        let used = (crate::wire::esp::ESP_HEADER_LEN + part.len() + crate::wire::esp::MAX_OVERHEAD)
            .min(scratch.len());
        zeroize::Zeroize::zeroize(&mut scratch[..used]);
        ok
    };
    if encoded.as_bytes().len() <= message::MAX_UNFRAGMENTED {
        return seal_one(encoded.as_bytes());
    }
    let mut ok = true;
    for part in message::fragments(&encoded, id) {
        ok &= seal_one(&part);
    }
    ok
}

/// Puts an authenticated control datagram from peer `key` under `spi` through `reassembly`
/// and, once a whole message is there, decodes it and hands it to `f` with its id and its body
/// (for transcript hashes). `Ok(None)`: a fragment was stored, more are needed.
pub(crate) fn with_message<R>(
    reassembly: &mut message::Reassembler,
    now: Time,
    key: u64,
    spi: u32,
    bytes: &[u8],
    f: impl FnOnce(message::Message, u32, &[u8]) -> R,
) -> Result<Option<R>, crate::DropReason> {
    let assembled = reassembly
        .push(now, key, spi, bytes)
        .map_err(|_| crate::DropReason::ControlMalformed)?;
    let whole: &[u8] = match &assembled {
        message::Assembled::Whole(b) => b,
        message::Assembled::Complete(b) => b,
        message::Assembled::Pending => return Ok(None),
    };
    let (msg, id) =
        message::Message::decode(whole).map_err(|_| crate::DropReason::ControlMalformed)?;
    Ok(Some(f(msg, id, &whole[message::HEADER_LEN..])))
}

/// A token bucket: at most `rate` events per second, bursts of up to `rate`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: u32,
    at: u64,
}

impl TokenBucket {
    /// A full bucket for `rate` per second.
    pub(crate) fn new(rate: u32) -> Self {
        Self {
            tokens: rate.max(1),
            at: 0,
        }
    }

    /// Takes a token at `now` if there is one.
    pub(crate) fn take(&mut self, now: Time, rate: u32) -> bool {
        let rate = u64::from(rate.max(1));
        let t = nanos(now);
        let refill = t.saturating_sub(self.at).saturating_mul(rate) / 1_000_000_000;
        if refill > 0 {
            self.tokens =
                u32::try_from((u64::from(self.tokens) + refill).min(rate)).unwrap_or(u32::MAX);
            self.at = t;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// Scratch space for sealing one control datagram.
pub(crate) const SCRATCH_LEN: usize = 1536;

/// Nanoseconds of a [`Time`], saturating.
pub(crate) fn nanos(t: Time) -> u64 {
    u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
}

/// Two gateways running with one identity (the same init key, a copied configuration) take
/// turns: each one's init handshake resets the other's channel, which falls back to a handshake
/// of its own. `TwinDetector` notices the signature, handshakes from address A, then B, then A
/// again within [`TwinDetector::WINDOW`]. A gateway that moves or fails over keeps its channel
/// (no handshake), and one that restarts does so from its own address: neither looks like this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwinDetector {
    /// The last two handshakes' sources and times, older first.
    handshakes: [Option<(SocketAddr, Time)>; 2],
}

impl TwinDetector {
    /// How far back the first of the three handshakes may lie.
    pub const WINDOW: Duration = Duration::from_secs(600);

    /// Records an init handshake from `addr`; the two addresses when this completes the
    /// signature (then it starts over).
    pub fn handshake_from(
        &mut self,
        now: Time,
        addr: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let [older, newer] = self.handshakes;
        self.handshakes = [newer, Some((addr, now))];
        let (Some((a, at)), Some((b, _))) = (older, newer) else {
            return None;
        };
        if a != addr || b == addr || now.saturating_sub(at) > Self::WINDOW {
            return None;
        }
        self.handshakes = [None, None];
        Some((a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::{KeyErasureRandom, Random, SocketAddr, Time, TwinDetector};

    #[test]
    fn twins_are_handshakes_alternating_between_two_addresses() {
        let a: SocketAddr = "192.0.2.1:4500".parse().expect("a");
        let b: SocketAddr = "192.0.2.9:4500".parse().expect("b");
        let c: SocketAddr = "192.0.2.7:4500".parse().expect("c");
        let s = Time::from_secs;
        // Restarts from one address, a move, a move back without a handshake: nothing.
        let mut d = TwinDetector::default();
        assert_eq!(d.handshake_from(s(0), a), None);
        assert_eq!(d.handshake_from(s(10), a), None);
        assert_eq!(d.handshake_from(s(20), b), None);
        assert_eq!(d.handshake_from(s(30), c), None);
        assert_eq!(d.handshake_from(s(40), c), None);
        // A, B, A.
        let mut d = TwinDetector::default();
        assert_eq!(d.handshake_from(s(0), a), None);
        assert_eq!(d.handshake_from(s(21), b), None);
        assert_eq!(d.handshake_from(s(42), a), Some((a, b)));
        // ... but not spread over more than the window.
        let mut d = TwinDetector::default();
        assert_eq!(d.handshake_from(s(0), a), None);
        assert_eq!(d.handshake_from(s(300), b), None);
        assert_eq!(d.handshake_from(s(601), a), None);
        assert_eq!(d.handshake_from(s(700), b), Some((b, a)));
    }

    /// RFC 8439 A.1, test vector 1: the ChaCha20 block of the all-zero key, nonce and counter.
    const ZERO_BLOCK: &str = "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7\
                              da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586";

    #[test]
    fn key_erasure_output_is_chacha20_keystream_past_the_next_key() {
        let block = hex::decode(ZERO_BLOCK).unwrap_or_default();
        let mut rng = KeyErasureRandom::from_seed([0; 32]);
        let mut out = [0u8; 32];
        rng.fill(&mut out);
        // The first 32 bytes became the next key; output starts after them.
        assert_eq!(out[..], block[32..64]);
    }

    #[test]
    fn key_erasure_rekeys_each_refill_and_reseed_changes_the_stream() {
        let mut a = KeyErasureRandom::from_seed([9; 32]);
        let mut b = KeyErasureRandom::from_seed([9; 32]);
        // Across several refills, in odd-sized pieces: the same stream either way.
        let mut whole = vec![0u8; 5000];
        a.fill(&mut whole);
        let mut pieces = vec![0u8; 5000];
        for chunk in pieces.chunks_mut(37) {
            b.fill(chunk);
        }
        assert_eq!(whole, pieces);
        // No 32-byte window of output repeats (a stuck key would repeat the stream).
        let first = &whole[..32];
        assert!(whole[32..].windows(32).all(|w| w != first));
        let mut c = KeyErasureRandom::from_seed([9; 32]);
        c.reseed(&[1; 32]);
        let mut other = vec![0u8; 64];
        c.fill(&mut other);
        assert_ne!(other[..], whole[..64]);
    }
}
