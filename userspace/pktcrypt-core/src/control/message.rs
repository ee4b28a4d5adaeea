//! Control messages: a versioned binary format carried in ESP with next header 253.
//!
//! Every message starts with an 8-byte header (see `docs/protocol.md`):
//!
//! ```text
//! version(1) = 3 | type(1) | body length(2, big-endian) | message id(4, big-endian) | body
//! ```
//!
//! The message id matches replies to requests (a reply echoes the id of what it answers) and lets
//! a receiver recognise a retransmission. Decoding never panics: a wrong version, an unknown type
//! or a body of the wrong length is a [`DecodeError`].
//!
//! Messages longer than [`MAX_UNFRAGMENTED`] (those carrying a key share) travel as
//! [`fragments`], each a message of its own sealed in its own ESP packet, so that every
//! datagram fits IPv6's minimum MTU of 1280 bytes; a [`Reassembler`] puts them together.

use crate::kex::{KEY_SHARE_LEN, KeyShare, REPLY_SHARE_LEN, ReplyShare};
use crate::{GenerationInfo, Secret, Spi, Suite};
use core::fmt;
use zeroize::Zeroizing;

/// Protocol version of this format (version 3: the hybrid key exchange).
pub const VERSION: u8 = 3;
/// Length of the message header.
pub const HEADER_LEN: usize = 8;
/// Largest encoded message.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 32 + KEY_SHARE_LEN + INIT_PADDING;
/// Zero bytes at the end of a `KEY_INIT_REQUEST`, so that the answer (with its
/// [`Biscuit`]) is never larger than the request: the key server answers unauthenticated
/// (replayable) requests, and must not amplify.
pub const INIT_PADDING: usize = 32;
/// Length of a [`Biscuit`].
pub const BISCUIT_LEN: usize = 8 + 78 + 16;

/// The key server's state of an answered init handshake, sealed under a key only it holds
/// (new at every start) and carried by the client from the answer to its confirmation: the
/// server keeps nothing per handshake, so no flood of (replayed) requests can push a genuine
/// one out (`docs/protocol.md`). Opaque to the client.
#[derive(Clone, PartialEq, Eq)]
pub struct Biscuit(pub Box<[u8; BISCUIT_LEN]>);

impl fmt::Debug for Biscuit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Biscuit(<sealed>)")
    }
}
/// Largest message sent in one datagram. An ESP packet adds 16 bytes of header, at most 5 of
/// trailer and 16 of ICV, UDP 8 and IPv6 40: 1192 + 85 = 1277 ≤ 1280, the IPv6 minimum MTU.
pub const MAX_UNFRAGMENTED: usize = 1192;
/// Bytes of a message carried per fragment (a fragment adds a header and two bytes).
pub const FRAGMENT_CHUNK: usize = MAX_UNFRAGMENTED - HEADER_LEN - 2;
/// Most fragments of one message.
pub const MAX_FRAGMENTS: u8 = 4;

/// How a distributed generation's secret is conveyed.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// The 256-bit secret itself (inside the sealed message): `pfs = "off"` between exchanges.
    Secret([u8; 32]),
    /// Derived mode (spec §5): a fresh public nonce; both sides compute
    /// `secret(N+1) = HKDF(secret(N), nonce, labels)`.
    Nonce([u8; 32]),
    /// The server's half of a hybrid key exchange (protocol version 3): both sides compute
    /// `secret(N+1)` with the key schedule of [`crate::kex`]. No key material on the wire.
    Exchange(ReplyShare),
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        if let KeyMaterial::Secret(s) = self {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

impl KeyMaterial {
    fn mode(&self) -> u8 {
        match self {
            KeyMaterial::Secret(_) => 0,
            KeyMaterial::Nonce(_) => 1,
            KeyMaterial::Exchange(_) => 2,
        }
    }
}

/// A distributed generation.
#[derive(Clone, PartialEq, Eq)]
pub struct Distribution {
    /// Generation number.
    pub generation: u64,
    /// Its SPI.
    pub spi: u32,
    /// Its suite.
    pub suite: Suite,
    /// The transcript hash of the request this answers ([`crate::kex::transcript`] of the
    /// request's body); all zero for a rotation nobody asked a key share for.
    pub echo: [u8; 32],
    /// Secret, nonce or key-exchange share.
    pub material: KeyMaterial,
}

impl fmt::Debug for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Distribution")
            .field("generation", &self.generation)
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("suite", &self.suite)
            .field(
                "material",
                &match self.material {
                    KeyMaterial::Secret(_) => "secret <redacted>",
                    KeyMaterial::Nonce(_) => "derived (nonce)",
                    KeyMaterial::Exchange(_) => "key exchange",
                },
            )
            .finish()
    }
}

/// Phase a group member reports or is asked to enter (spec §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GroupPhase {
    /// Holds old and new, transmits with old.
    DistributionCompleted = 1,
    /// Holds old and new, transmits with new.
    InTransit = 2,
    /// Holds only the new key.
    UpdateCompleted = 3,
}

impl GroupPhase {
    fn from_u8(v: u8) -> Option<GroupPhase> {
        match v {
            1 => Some(GroupPhase::DistributionCompleted),
            2 => Some(GroupPhase::InTransit),
            3 => Some(GroupPhase::UpdateCompleted),
            _ => None,
        }
    }
}

/// How a group generation's secret reaches a member.
#[derive(Clone, PartialEq, Eq)]
pub enum GroupMaterial {
    /// The group secret itself, inside the sealed message.
    Secret([u8; 32]),
    /// Derived mode (seed 003 applied to a group, spec §5): a fresh nonce from which the member
    /// computes the secret with the group init key it was provisioned with,
    /// `HKDF(salt = nonce, ikm = group init secret, info = "group next" ‖ generation ‖ SPI base
    /// ‖ suite)`. No group key material crosses the network. Not a secret on its own, but
    /// whoever also holds the group init key (every member, and a former one) gets the key from
    /// it: it is wiped like one.
    Nonce([u8; 32]),
}

impl Drop for GroupMaterial {
    fn drop(&mut self) {
        match self {
            GroupMaterial::Secret(b) | GroupMaterial::Nonce(b) => zeroize::Zeroize::zeroize(b),
        }
    }
}

/// A group key as the controller distributes it to one member.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey {
    /// Group generation number.
    pub generation: u64,
    /// SPI of member index 0 under this generation; member `i` sends under `spi_base + i`.
    pub spi_base: u32,
    /// Suite.
    pub suite: Suite,
    /// The receiving member's index.
    pub member_index: u16,
    /// Number of member indices in use (members are `0..members`).
    pub members: u16,
    /// Whether the member may transmit under this generation. The controller clears it for
    /// every generation that existed before the member's current control channel was
    /// established: a restarted member may have used those keys' sequence numbers (flags
    /// byte, bit 0).
    pub transmit: bool,
    /// The group secret, or (derived mode, flags byte bit 1) the nonce to compute it from.
    pub material: GroupMaterial,
}

impl GroupKey {
    /// The generation's secret: the one carried, or the one derived from the nonce and the
    /// group init secret. `None` for a nonce with an invalid SPI base.
    pub fn secret(&self, group_init: &Secret) -> Option<Secret> {
        match &self.material {
            GroupMaterial::Secret(s) => Some(Secret::from_bytes(*s)),
            GroupMaterial::Nonce(n) => Some(group_init.derive_group_next(
                n,
                GenerationInfo {
                    number: self.generation,
                    spi: Spi::new(self.spi_base).ok()?,
                    suite: self.suite,
                },
            )),
        }
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupKey")
            .field("generation", &self.generation)
            .field("spi_base", &format_args!("{:#010x}", self.spi_base))
            .field("suite", &self.suite)
            .field("member_index", &self.member_index)
            .field("members", &self.members)
            .field("transmit", &self.transmit)
            .field(
                "material",
                &match &self.material {
                    GroupMaterial::Secret(_) => "secret <redacted>",
                    GroupMaterial::Nonce(_) => "derived (nonce <redacted>)",
                },
            )
            .finish()
    }
}

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → server, under the init key: start over. Carries fresh randomness and the
    /// client's key share; the answer is bound to it.
    KeyInitRequest {
        /// 32 fresh random bytes.
        nonce: [u8; 32],
        /// The client's ephemeral key share.
        share: KeyShare,
    },
    /// Client → server: please rotate; `have` is the client's newest generation. With a key
    /// share the server may answer with a key exchange.
    KeyUpdateRequest {
        /// Newest generation the client holds.
        have: u64,
        /// Fresh randomness and the client's ephemeral key share, if offered.
        share: Option<([u8; 32], KeyShare)>,
    },
    /// Client → server: a requested key never came; send the newest again.
    KeyResendRequest {
        /// Newest generation the client holds.
        have: u64,
    },
    /// Server → client: a new generation.
    KeyDistribution(Distribution),
    /// Client → server: installed `generation` (sealed under it: also proof of holding it).
    KeyAck {
        /// The generation installed.
        generation: u64,
    },
    /// Client → server: periodic liveness; the SPI tells the server the client's generation.
    Hello {
        /// Newest generation the client holds.
        have: u64,
    },
    /// Server → client: answer to a hello with the server's newest generation for this client.
    HelloReply {
        /// The server's newest generation for this client (0: init key only).
        newest: u64,
    },
    /// Server → client, under the init key: generation 1 for the init request whose transcript
    /// hash is `dist.echo`. Changes nothing at the server until confirmed.
    KeyInitReply {
        /// Generation 1.
        dist: Distribution,
        /// The server's sealed state of this handshake, to be sent back with the confirmation.
        biscuit: Biscuit,
    },
    /// Client → server, under the init key: the key confirmation of generation 1.
    KeyInitConfirm {
        /// Transcript hash of the init request.
        echo: [u8; 32],
        /// [`crate::kex::Schedule::confirm`] of generation 1's secret and the full transcript.
        tag: [u8; 32],
        /// The biscuit of the answer.
        biscuit: Biscuit,
    },
    /// Server → client: a rotation is due and wants a key exchange: send a
    /// `KEY_UPDATE_REQUEST` with a key share.
    KeyUpdateNeeded {
        /// The server's newest generation for this client.
        newest: u64,
    },
    /// Controller → member: the group key.
    GroupKey(GroupKey),
    /// Member → controller: reached `phase` for `generation`.
    GroupAck {
        /// Group generation.
        generation: u64,
        /// Phase reached.
        phase: GroupPhase,
        /// Counts this member's acks since its channel was established: the controller takes
        /// the newest, whatever order they arrive in (a member can go back a phase when a late
        /// key makes it install the previous generation again).
        seq: u32,
    },
    /// Controller → member: enter `phase` (InTransit: transmit with new; UpdateCompleted: drop old).
    GroupTransition {
        /// Group generation.
        generation: u64,
        /// Phase to enter.
        phase: GroupPhase,
    },
    /// Member → controller: regained connectivity, send the current key.
    GroupKeyRequest {
        /// Newest group generation the member holds.
        have: u64,
    },
    /// Member → controller: how much it used `generation` (the group's counter rekey
    /// triggers are evaluated over these reports).
    GroupUsage {
        /// Group generation.
        generation: u64,
        /// Packets the member sealed under its own sender key of the generation.
        packets_sealed: u64,
        /// Packets it opened under any member's sender key of the generation.
        packets_opened: u64,
        /// Payload bytes it sealed and opened.
        bytes: u64,
        /// Packets that failed authentication under the generation's SPIs.
        auth_failures: u64,
    },
    /// Member → controller: join the group.
    GroupJoin,
    /// Member → controller: leave the group.
    GroupLeave,
}

/// Why a control message did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header or its declared body.
    Truncated,
    /// A version other than [`VERSION`].
    Version,
    /// An unknown message type.
    UnknownType,
    /// The body has the wrong length or an invalid field.
    Malformed,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "control message truncated",
            DecodeError::Version => "unsupported control protocol version",
            DecodeError::UnknownType => "unknown control message type",
            DecodeError::Malformed => "malformed control message body",
        })
    }
}

impl std::error::Error for DecodeError {}

mod ty {
    pub(super) const KEY_INIT_REQUEST: u8 = 1;
    pub(super) const KEY_UPDATE_REQUEST: u8 = 2;
    pub(super) const KEY_RESEND_REQUEST: u8 = 3;
    pub(super) const KEY_DISTRIBUTION: u8 = 4;
    pub(super) const KEY_ACK: u8 = 5;
    pub(super) const HELLO: u8 = 6;
    pub(super) const HELLO_REPLY: u8 = 7;
    pub(super) const KEY_INIT_REPLY: u8 = 8;
    pub(super) const KEY_INIT_CONFIRM: u8 = 9;
    pub(super) const KEY_UPDATE_NEEDED: u8 = 10;
    pub(super) const GROUP_KEY: u8 = 16;
    pub(super) const GROUP_ACK: u8 = 17;
    pub(super) const GROUP_TRANSITION: u8 = 18;
    pub(super) const GROUP_KEY_REQUEST: u8 = 19;
    pub(super) const GROUP_JOIN: u8 = 20;
    pub(super) const GROUP_LEAVE: u8 = 21;
    pub(super) const GROUP_USAGE: u8 = 22;
    pub(super) const FRAGMENT: u8 = 127;
}

/// A bounds-checked reader.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Malformed)?;
        self.0 = rest;
        Ok(*head)
    }
    fn boxed<const N: usize>(&mut self) -> Result<Box<[u8; N]>, DecodeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Malformed)?;
        self.0 = rest;
        Ok(Box::new(*head))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed)
        }
    }
}

/// An encoded message: the bytes to seal. Wiped on drop (distributions carry secrets).
#[derive(Clone)]
pub struct Encoded(Zeroizing<Vec<u8>>);

impl Encoded {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The body (after the header): what a transcript hash covers.
    pub fn body(&self) -> &[u8] {
        &self.0[HEADER_LEN..]
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encoded({} bytes)", self.0.len())
    }
}

fn put_distribution(w: &mut Vec<u8>, d: &Distribution) {
    w.extend_from_slice(&d.generation.to_be_bytes());
    w.extend_from_slice(&d.spi.to_be_bytes());
    w.push(d.suite.id());
    w.push(d.material.mode());
    w.extend_from_slice(&d.echo);
    match &d.material {
        KeyMaterial::Secret(b) | KeyMaterial::Nonce(b) => w.extend_from_slice(b),
        KeyMaterial::Exchange(share) => w.extend_from_slice(&share.0[..]),
    }
}

fn get_distribution(r: &mut Reader<'_>) -> Result<Distribution, DecodeError> {
    let generation = r.u64()?;
    let spi = r.u32()?;
    let suite = Suite::from_id(r.u8()?).ok_or(DecodeError::Malformed)?;
    let mode = r.u8()?;
    let echo = r.take()?;
    let material = match mode {
        0 => KeyMaterial::Secret(r.take()?),
        1 => KeyMaterial::Nonce(r.take()?),
        2 => KeyMaterial::Exchange(ReplyShare(r.boxed::<REPLY_SHARE_LEN>()?)),
        _ => return Err(DecodeError::Malformed),
    };
    Ok(Distribution {
        generation,
        spi,
        suite,
        echo,
        material,
    })
}

fn header(w: &mut [u8], ty: u8, body: usize, id: u32) {
    w[0] = VERSION;
    w[1] = ty;
    w[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    w[4..8].copy_from_slice(&id.to_be_bytes());
}

impl Message {
    /// Encodes the message with message id `id`.
    pub fn encode(&self, id: u32) -> Encoded {
        let mut w = Zeroizing::new(Vec::with_capacity(self.encoded_len_hint()));
        w.extend_from_slice(&[0u8; HEADER_LEN]);
        let ty = match self {
            Message::KeyInitRequest { nonce, share } => {
                w.extend_from_slice(nonce);
                w.extend_from_slice(&share.0[..]);
                w.extend_from_slice(&[0; INIT_PADDING]);
                ty::KEY_INIT_REQUEST
            }
            Message::KeyUpdateRequest { have, share } => {
                w.extend_from_slice(&have.to_be_bytes());
                match share {
                    None => w.push(0),
                    Some((nonce, share)) => {
                        w.push(1);
                        w.extend_from_slice(nonce);
                        w.extend_from_slice(&share.0[..]);
                    }
                }
                ty::KEY_UPDATE_REQUEST
            }
            Message::KeyResendRequest { have } => {
                w.extend_from_slice(&have.to_be_bytes());
                ty::KEY_RESEND_REQUEST
            }
            Message::KeyDistribution(d) => {
                put_distribution(&mut w, d);
                ty::KEY_DISTRIBUTION
            }
            Message::KeyInitReply { dist, biscuit } => {
                put_distribution(&mut w, dist);
                w.extend_from_slice(&biscuit.0[..]);
                ty::KEY_INIT_REPLY
            }
            Message::KeyInitConfirm { echo, tag, biscuit } => {
                w.extend_from_slice(echo);
                w.extend_from_slice(tag);
                w.extend_from_slice(&biscuit.0[..]);
                ty::KEY_INIT_CONFIRM
            }
            Message::KeyUpdateNeeded { newest } => {
                w.extend_from_slice(&newest.to_be_bytes());
                ty::KEY_UPDATE_NEEDED
            }
            Message::KeyAck { generation } => {
                w.extend_from_slice(&generation.to_be_bytes());
                ty::KEY_ACK
            }
            Message::Hello { have } => {
                w.extend_from_slice(&have.to_be_bytes());
                ty::HELLO
            }
            Message::HelloReply { newest } => {
                w.extend_from_slice(&newest.to_be_bytes());
                ty::HELLO_REPLY
            }
            Message::GroupKey(k) => {
                w.extend_from_slice(&k.generation.to_be_bytes());
                w.extend_from_slice(&k.spi_base.to_be_bytes());
                w.push(k.suite.id());
                w.extend_from_slice(&k.member_index.to_be_bytes());
                w.extend_from_slice(&k.members.to_be_bytes());
                let (derived, bytes) = match &k.material {
                    GroupMaterial::Secret(b) => (0, b),
                    GroupMaterial::Nonce(b) => (2, b),
                };
                w.push(u8::from(k.transmit) | derived);
                w.extend_from_slice(bytes);
                ty::GROUP_KEY
            }
            Message::GroupAck {
                generation,
                phase,
                seq,
            } => {
                w.extend_from_slice(&generation.to_be_bytes());
                w.push(*phase as u8);
                w.extend_from_slice(&seq.to_be_bytes());
                ty::GROUP_ACK
            }
            Message::GroupTransition { generation, phase } => {
                w.extend_from_slice(&generation.to_be_bytes());
                w.push(*phase as u8);
                ty::GROUP_TRANSITION
            }
            Message::GroupKeyRequest { have } => {
                w.extend_from_slice(&have.to_be_bytes());
                ty::GROUP_KEY_REQUEST
            }
            Message::GroupUsage {
                generation,
                packets_sealed,
                packets_opened,
                bytes,
                auth_failures,
            } => {
                for v in [
                    generation,
                    packets_sealed,
                    packets_opened,
                    bytes,
                    auth_failures,
                ] {
                    w.extend_from_slice(&v.to_be_bytes());
                }
                ty::GROUP_USAGE
            }
            Message::GroupJoin => ty::GROUP_JOIN,
            Message::GroupLeave => ty::GROUP_LEAVE,
        };
        let body = w.len() - HEADER_LEN;
        header(&mut w, ty, body, id);
        #[cfg(test)]
        tap::record(&w);
        Encoded(w)
    }

    /// Whether this message belongs to the init handshake: sealed under the init key, each
    /// under a key of its own.
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            Message::KeyInitRequest { .. }
                | Message::KeyInitReply { .. }
                | Message::KeyInitConfirm { .. }
        )
    }

    /// Whether this is a group-mode message (carried over a member's control channel).
    pub fn is_group(&self) -> bool {
        matches!(
            self,
            Message::GroupKey(_)
                | Message::GroupAck { .. }
                | Message::GroupTransition { .. }
                | Message::GroupKeyRequest { .. }
                | Message::GroupUsage { .. }
                | Message::GroupJoin
                | Message::GroupLeave
        )
    }

    /// The encoded length (exact for the large messages: no reallocation, and a buffer that
    /// is wiped costs only what it holds).
    fn encoded_len_hint(&self) -> usize {
        let material = |d: &Distribution| match d.material {
            KeyMaterial::Exchange(_) => REPLY_SHARE_LEN,
            _ => 32,
        };
        match self {
            Message::KeyInitRequest { .. } => MAX_MESSAGE_LEN,
            Message::KeyUpdateRequest { share: Some(_), .. } => HEADER_LEN + 9 + 32 + KEY_SHARE_LEN,
            Message::KeyDistribution(d) => HEADER_LEN + 46 + material(d),
            Message::KeyInitReply { dist, .. } => HEADER_LEN + 46 + material(dist) + BISCUIT_LEN,
            _ => HEADER_LEN + 80,
        }
    }

    /// Decodes a message, returning it with its message id.
    ///
    /// # Errors
    /// [`DecodeError`] for anything but a well-formed message of this version (a fragment is
    /// [`DecodeError::UnknownType`] here: see [`Reassembler`]).
    pub fn decode(bytes: &[u8]) -> Result<(Message, u32), DecodeError> {
        let (ty, id, body) = split(bytes)?;
        let mut r = Reader(body);
        let phase = |v: u8| GroupPhase::from_u8(v).ok_or(DecodeError::Malformed);
        let msg = match ty {
            ty::KEY_INIT_REQUEST => {
                let msg = Message::KeyInitRequest {
                    nonce: r.take()?,
                    share: KeyShare(r.boxed::<KEY_SHARE_LEN>()?),
                };
                r.take::<INIT_PADDING>()?;
                msg
            }
            ty::KEY_UPDATE_REQUEST => {
                let have = r.u64()?;
                let share = match r.u8()? {
                    0 => None,
                    1 => Some((r.take()?, KeyShare(r.boxed::<KEY_SHARE_LEN>()?))),
                    _ => return Err(DecodeError::Malformed),
                };
                Message::KeyUpdateRequest { have, share }
            }
            ty::KEY_RESEND_REQUEST => Message::KeyResendRequest { have: r.u64()? },
            ty::KEY_DISTRIBUTION => Message::KeyDistribution(get_distribution(&mut r)?),
            ty::KEY_INIT_REPLY => Message::KeyInitReply {
                dist: get_distribution(&mut r)?,
                biscuit: Biscuit(r.boxed::<BISCUIT_LEN>()?),
            },
            ty::KEY_INIT_CONFIRM => Message::KeyInitConfirm {
                echo: r.take()?,
                tag: r.take()?,
                biscuit: Biscuit(r.boxed::<BISCUIT_LEN>()?),
            },
            ty::KEY_UPDATE_NEEDED => Message::KeyUpdateNeeded { newest: r.u64()? },
            ty::KEY_ACK => Message::KeyAck {
                generation: r.u64()?,
            },
            ty::HELLO => Message::Hello { have: r.u64()? },
            ty::HELLO_REPLY => Message::HelloReply { newest: r.u64()? },
            ty::GROUP_KEY => {
                let generation = r.u64()?;
                let spi_base = r.u32()?;
                let suite = Suite::from_id(r.u8()?).ok_or(DecodeError::Malformed)?;
                let member_index = r.u16()?;
                let members = r.u16()?;
                let flags = r.u8()?;
                if flags > 3 {
                    return Err(DecodeError::Malformed);
                }
                let bytes = Zeroizing::new(r.take::<32>()?);
                let material = if flags & 2 == 0 {
                    GroupMaterial::Secret(*bytes)
                } else {
                    GroupMaterial::Nonce(*bytes)
                };
                Message::GroupKey(GroupKey {
                    generation,
                    spi_base,
                    suite,
                    member_index,
                    members,
                    transmit: flags & 1 == 1,
                    material,
                })
            }
            ty::GROUP_ACK => Message::GroupAck {
                generation: r.u64()?,
                phase: phase(r.u8()?)?,
                seq: r.u32()?,
            },
            ty::GROUP_TRANSITION => Message::GroupTransition {
                generation: r.u64()?,
                phase: phase(r.u8()?)?,
            },
            ty::GROUP_KEY_REQUEST => Message::GroupKeyRequest { have: r.u64()? },
            ty::GROUP_USAGE => Message::GroupUsage {
                generation: r.u64()?,
                packets_sealed: r.u64()?,
                packets_opened: r.u64()?,
                bytes: r.u64()?,
                auth_failures: r.u64()?,
            },
            ty::GROUP_JOIN => Message::GroupJoin,
            ty::GROUP_LEAVE => Message::GroupLeave,
            _ => return Err(DecodeError::UnknownType),
        };
        r.end()?;
        Ok((msg, id))
    }
}

/// Header checks shared by messages and fragments: (type, id, body).
fn split(bytes: &[u8]) -> Result<(u8, u32, &[u8]), DecodeError> {
    let (header, body) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(DecodeError::Truncated)?;
    if header[0] != VERSION {
        return Err(DecodeError::Version);
    }
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if body.len() < len {
        return Err(DecodeError::Truncated);
    }
    if body.len() > len {
        return Err(DecodeError::Malformed);
    }
    Ok((header[1], id, body))
}

/// The datagrams of one message: the message itself if it fits [`MAX_UNFRAGMENTED`], else
/// fragments of [`FRAGMENT_CHUNK`] bytes, each `header(type 127, the message's id) ‖ index ‖
/// count ‖ chunk`.
pub fn fragments(encoded: &Encoded, id: u32) -> Vec<Zeroizing<Vec<u8>>> {
    let bytes = encoded.as_bytes();
    if bytes.len() <= MAX_UNFRAGMENTED {
        return vec![Zeroizing::new(bytes.to_vec())];
    }
    let count = bytes.len().div_ceil(FRAGMENT_CHUNK);
    bytes
        .chunks(FRAGMENT_CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            let mut w = Zeroizing::new(Vec::with_capacity(HEADER_LEN + 2 + chunk.len()));
            w.extend_from_slice(&[0u8; HEADER_LEN]);
            w.push(i as u8);
            w.push(count as u8);
            w.extend_from_slice(chunk);
            header(&mut w, ty::FRAGMENT, 2 + chunk.len(), id);
            w
        })
        .collect()
}

/// A fragment's message id, index, count and chunk.
type Fragment<'a> = (u32, u8, u8, &'a [u8]);

/// A fragment's fields, if `bytes` is one.
fn fragment(bytes: &[u8]) -> Option<Result<Fragment<'_>, DecodeError>> {
    if bytes.get(1) != Some(&ty::FRAGMENT) {
        return None;
    }
    Some(split(bytes).and_then(|(_, id, body)| {
        let [index, count, ref chunk @ ..] = *body else {
            return Err(DecodeError::Malformed);
        };
        if !(2..=MAX_FRAGMENTS).contains(&count)
            || index >= count
            || chunk.is_empty()
            || chunk.len() > FRAGMENT_CHUNK
            || (index + 1 < count && chunk.len() != FRAGMENT_CHUNK)
        {
            return Err(DecodeError::Malformed);
        }
        Ok((id, index, count, chunk))
    }))
}

/// One message being put together from its fragments.
struct Partial {
    key: u64,
    id: u32,
    /// The SPI every fragment must have come under (one partial per peer and SPI: a replayed
    /// handshake fragment under the init SPI never displaces a message under a generation).
    spi: u32,
    count: u8,
    have: u8,
    /// Length of the last fragment's chunk, once it arrived.
    last_len: Option<usize>,
    started: crate::Time,
    buf: Zeroizing<Vec<u8>>,
}

/// What [`Reassembler::push`] made of a datagram's message.
#[derive(Debug)]
pub enum Assembled<'a> {
    /// A whole message: the input itself.
    Whole(&'a [u8]),
    /// The last fragment completed this message.
    Complete(Zeroizing<Vec<u8>>),
    /// A fragment was stored; more are needed.
    Pending,
}

/// Puts fragmented messages together: at most `capacity` messages in progress (one per key:
/// a peer), each for at most [`Reassembler::TIMEOUT`]; when full, the oldest is dropped. Memory
/// is bounded by `capacity × 4 × 1.2 KB` whatever arrives.
pub struct Reassembler {
    capacity: usize,
    partials: Vec<Partial>,
}

impl fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reassembler({} in progress)", self.partials.len())
    }
}

impl Reassembler {
    /// How long a partial message waits for its other fragments.
    pub const TIMEOUT: core::time::Duration = core::time::Duration::from_secs(5);

    /// A reassembler holding at most `capacity` partial messages.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            partials: Vec::new(),
        }
    }

    /// Partial messages held.
    pub fn len(&self) -> usize {
        self.partials.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.partials.is_empty()
    }

    /// Takes one authenticated message from the peer `key` that arrived under `spi`.
    ///
    /// # Errors
    /// A malformed fragment.
    pub fn push<'a>(
        &mut self,
        now: crate::Time,
        key: u64,
        spi: u32,
        bytes: &'a [u8],
    ) -> Result<Assembled<'a>, DecodeError> {
        let Some(f) = fragment(bytes) else {
            return Ok(Assembled::Whole(bytes));
        };
        let (id, index, count, chunk) = f?;
        self.partials
            .retain(|p| now.saturating_sub(p.started) < Self::TIMEOUT);
        let pos = self
            .partials
            .iter()
            .position(|p| p.key == key && p.spi == spi && p.id == id && p.count == count);
        let pos = match pos {
            Some(i) => i,
            None => {
                // A new message replaces what this peer had in progress under this SPI.
                self.partials.retain(|p| p.key != key || p.spi != spi);
                if self.partials.len() >= self.capacity {
                    self.partials.remove(0);
                }
                self.partials.push(Partial {
                    key,
                    id,
                    spi,
                    count,
                    have: 0,
                    last_len: None,
                    started: now,
                    buf: Zeroizing::new(vec![0; usize::from(count) * FRAGMENT_CHUNK]),
                });
                self.partials.len() - 1
            }
        };
        let p = &mut self.partials[pos];
        let bit = 1u8 << index;
        if p.have & bit != 0 {
            // A duplicate (or a replay): the first copy stands.
            return Ok(Assembled::Pending);
        }
        let at = usize::from(index) * FRAGMENT_CHUNK;
        let Some(area) = p.buf.get_mut(at..at + chunk.len()) else {
            return Err(DecodeError::Malformed);
        };
        area.copy_from_slice(chunk);
        if index + 1 == count {
            p.last_len = Some(chunk.len());
        }
        p.have |= bit;
        if p.have.count_ones() < u32::from(count) {
            return Ok(Assembled::Pending);
        }
        let mut done = self.partials.swap_remove(pos);
        let len = (usize::from(count) - 1) * FRAGMENT_CHUNK + done.last_len.unwrap_or(0);
        done.buf.truncate(len);
        Ok(Assembled::Complete(done.buf))
    }
}

/// Tests only: the plaintext of every control message encoded on this thread, so a test can
/// search what would cross the network (inside the ESP seal) for secrets.
#[cfg(test)]
pub(crate) mod tap {
    use std::cell::RefCell;

    thread_local! {
        static CAPTURED: RefCell<Option<Vec<Vec<u8>>>> = const { RefCell::new(None) };
    }

    /// Starts recording (again, from nothing) on this thread.
    pub(crate) fn start() {
        CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
    }

    /// Stops recording and returns what was recorded.
    pub(crate) fn take() -> Vec<Vec<u8>> {
        CAPTURED.with(|c| c.borrow_mut().take().unwrap_or_default())
    }

    pub(super) fn record(message: &[u8]) {
        CAPTURED.with(|c| {
            if let Some(v) = c.borrow_mut().as_mut() {
                v.push(message.to_vec());
            }
        });
    }
}
