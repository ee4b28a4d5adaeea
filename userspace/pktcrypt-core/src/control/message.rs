//! Control messages: a versioned binary format carried in ESP with next header 253.
//!
//! Every message starts with an 8-byte header (see `docs/protocol.md`):
//!
//! ```text
//! version(1) = 1 | type(1) | body length(2, big-endian) | message id(4, big-endian) | body
//! ```
//!
//! The message id matches replies to requests (a reply echoes the id of what it answers) and lets
//! a receiver recognise a retransmission. Decoding never panics: a wrong version, an unknown type
//! or a body of the wrong length is a [`DecodeError`].

use crate::Suite;
use core::fmt;

/// Protocol version of this format.
pub const VERSION: u8 = 1;
/// Length of the message header.
pub const HEADER_LEN: usize = 8;
/// Largest encoded message.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 64;

/// How a distributed generation's secret is conveyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    /// The 256-bit secret itself (inside the sealed message).
    Secret([u8; 32]),
    /// Derived mode (spec §5): a fresh public nonce; both sides compute
    /// `secret(N+1) = HKDF(secret(N), nonce, labels)`.
    Nonce([u8; 32]),
}

/// A distributed generation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Distribution {
    /// Generation number.
    pub generation: u64,
    /// Its SPI.
    pub spi: u32,
    /// Its suite.
    pub suite: Suite,
    /// Secret or nonce.
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

/// A group key as the controller distributes it to one member.
#[derive(Clone, Copy, PartialEq, Eq)]
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
    /// The group secret.
    pub secret: [u8; 32],
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupKey")
            .field("generation", &self.generation)
            .field("spi_base", &format_args!("{:#010x}", self.spi_base))
            .field("suite", &self.suite)
            .field("member_index", &self.member_index)
            .field("members", &self.members)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → server: start over from the init key.
    KeyInitRequest,
    /// Client → server: please rotate; `have` is the client's newest generation.
    KeyUpdateRequest {
        /// Newest generation the client holds.
        have: u64,
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
    /// Controller → member: the group key.
    GroupKey(GroupKey),
    /// Member → controller: reached `phase` for `generation`.
    GroupAck {
        /// Group generation.
        generation: u64,
        /// Phase reached.
        phase: GroupPhase,
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
    pub(super) const GROUP_KEY: u8 = 16;
    pub(super) const GROUP_ACK: u8 = 17;
    pub(super) const GROUP_TRANSITION: u8 = 18;
    pub(super) const GROUP_KEY_REQUEST: u8 = 19;
    pub(super) const GROUP_JOIN: u8 = 20;
    pub(super) const GROUP_LEAVE: u8 = 21;
}

/// A little writer over a fixed buffer.
struct Writer {
    buf: [u8; MAX_MESSAGE_LEN],
    len: usize,
}

impl Writer {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
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

/// An encoded message: the bytes to seal.
#[derive(Clone)]
pub struct Encoded {
    buf: [u8; MAX_MESSAGE_LEN],
    len: usize,
}

impl Encoded {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Encoded {
    fn drop(&mut self) {
        // Distributions carry secrets.
        zeroize::Zeroize::zeroize(&mut self.buf[..]);
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encoded({} bytes)", self.len)
    }
}

impl Message {
    /// Encodes the message with message id `id`.
    pub fn encode(&self, id: u32) -> Encoded {
        let mut w = Writer {
            buf: [0; MAX_MESSAGE_LEN],
            len: HEADER_LEN,
        };
        let ty = match *self {
            Message::KeyInitRequest => ty::KEY_INIT_REQUEST,
            Message::KeyUpdateRequest { have } => {
                w.put(&have.to_be_bytes());
                ty::KEY_UPDATE_REQUEST
            }
            Message::KeyResendRequest { have } => {
                w.put(&have.to_be_bytes());
                ty::KEY_RESEND_REQUEST
            }
            Message::KeyDistribution(d) => {
                w.put(&d.generation.to_be_bytes());
                w.put(&d.spi.to_be_bytes());
                w.put(&[d.suite.id()]);
                match d.material {
                    KeyMaterial::Secret(s) => {
                        w.put(&[0]);
                        w.put(&s);
                    }
                    KeyMaterial::Nonce(n) => {
                        w.put(&[1]);
                        w.put(&n);
                    }
                }
                ty::KEY_DISTRIBUTION
            }
            Message::KeyAck { generation } => {
                w.put(&generation.to_be_bytes());
                ty::KEY_ACK
            }
            Message::Hello { have } => {
                w.put(&have.to_be_bytes());
                ty::HELLO
            }
            Message::HelloReply { newest } => {
                w.put(&newest.to_be_bytes());
                ty::HELLO_REPLY
            }
            Message::GroupKey(k) => {
                w.put(&k.generation.to_be_bytes());
                w.put(&k.spi_base.to_be_bytes());
                w.put(&[k.suite.id()]);
                w.put(&k.member_index.to_be_bytes());
                w.put(&k.members.to_be_bytes());
                w.put(&k.secret);
                ty::GROUP_KEY
            }
            Message::GroupAck { generation, phase } => {
                w.put(&generation.to_be_bytes());
                w.put(&[phase as u8]);
                ty::GROUP_ACK
            }
            Message::GroupTransition { generation, phase } => {
                w.put(&generation.to_be_bytes());
                w.put(&[phase as u8]);
                ty::GROUP_TRANSITION
            }
            Message::GroupKeyRequest { have } => {
                w.put(&have.to_be_bytes());
                ty::GROUP_KEY_REQUEST
            }
            Message::GroupJoin => ty::GROUP_JOIN,
            Message::GroupLeave => ty::GROUP_LEAVE,
        };
        let body = (w.len - HEADER_LEN) as u16;
        w.buf[0] = VERSION;
        w.buf[1] = ty;
        w.buf[2..4].copy_from_slice(&body.to_be_bytes());
        w.buf[4..8].copy_from_slice(&id.to_be_bytes());
        Encoded {
            buf: w.buf,
            len: w.len,
        }
    }

    /// Decodes a message, returning it with its message id.
    ///
    /// # Errors
    /// [`DecodeError`] for anything but a well-formed message of this version.
    pub fn decode(bytes: &[u8]) -> Result<(Message, u32), DecodeError> {
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
        let mut r = Reader(body);
        let suite = |id: u8| Suite::from_id(id).ok_or(DecodeError::Malformed);
        let phase = |v: u8| GroupPhase::from_u8(v).ok_or(DecodeError::Malformed);
        let msg = match header[1] {
            ty::KEY_INIT_REQUEST => Message::KeyInitRequest,
            ty::KEY_UPDATE_REQUEST => Message::KeyUpdateRequest { have: r.u64()? },
            ty::KEY_RESEND_REQUEST => Message::KeyResendRequest { have: r.u64()? },
            ty::KEY_DISTRIBUTION => {
                let generation = r.u64()?;
                let spi = r.u32()?;
                let suite = suite(r.u8()?)?;
                let mode = r.u8()?;
                let bytes: [u8; 32] = r.take()?;
                let material = match mode {
                    0 => KeyMaterial::Secret(bytes),
                    1 => KeyMaterial::Nonce(bytes),
                    _ => return Err(DecodeError::Malformed),
                };
                Message::KeyDistribution(Distribution {
                    generation,
                    spi,
                    suite,
                    material,
                })
            }
            ty::KEY_ACK => Message::KeyAck {
                generation: r.u64()?,
            },
            ty::HELLO => Message::Hello { have: r.u64()? },
            ty::HELLO_REPLY => Message::HelloReply { newest: r.u64()? },
            ty::GROUP_KEY => Message::GroupKey(GroupKey {
                generation: r.u64()?,
                spi_base: r.u32()?,
                suite: suite(r.u8()?)?,
                member_index: r.u16()?,
                members: r.u16()?,
                secret: r.take()?,
            }),
            ty::GROUP_ACK => Message::GroupAck {
                generation: r.u64()?,
                phase: phase(r.u8()?)?,
            },
            ty::GROUP_TRANSITION => Message::GroupTransition {
                generation: r.u64()?,
                phase: phase(r.u8()?)?,
            },
            ty::GROUP_KEY_REQUEST => Message::GroupKeyRequest { have: r.u64()? },
            ty::GROUP_JOIN => Message::GroupJoin,
            ty::GROUP_LEAVE => Message::GroupLeave,
            _ => return Err(DecodeError::UnknownType),
        };
        r.end()?;
        Ok((msg, id))
    }
}
