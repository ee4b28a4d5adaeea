//! The seal/open pipeline shared by [`crate::Engine`] and [`crate::DataPlane`]: a batch of
//! [`Packet`]s goes through the same passes in both, only where the SA comes from differs.
//!
//! Seal: [`Batch::seal_validate`] (next header, sizes; the valid ones marked with their SA and
//! counted, so the caller reserves that many sequence numbers), [`Batch::seal_prepare`] (header,
//! trailer, nonce, AAD from the first sequence number reserved), the batched AEAD pass over
//! [`Batch::runs`], [`Batch::seal_finish`] (results and counts).
//!
//! Open: [`Packet::parse_esp`] (header and ciphertext length, before the SA lookup),
//! [`open_sequence`] (full sequence number, checked against the window),
//! [`Packet::set_open_parameters`] (nonce, AAD), the batched AEAD pass, the window update by the caller
//! (only after authentication), [`Packet::outcome`] (trailer, next header). A handshake message
//! under the init key is opened inline ([`Packet::open_inline`]) under its own key
//! ([`keyed_handshake`]).
//!
//! Nothing here knows peers or engines: it sits below both, and both sit above it.

use crate::aead::{AeadItem, Backend, NONCE_LEN, TAG_LEN};
use crate::ids::{PeerId, SaRef, Slot, Spi};
use crate::keys::Direction;
use crate::replay::ReplayError;
use crate::sa::{Keyed, Sa};
use crate::wire::esp::{self, ESP_HEADER_LEN, ESP_ICV_LEN, EspHeader, MIN_ESP_LEN, NextHeader};
use crate::{DropReason, Error, SealError};
use core::fmt;

/// Metadata of an opened packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenInfo {
    /// The peer that sent it.
    pub peer: PeerId,
    /// SPI it arrived under.
    pub spi: Spi,
    /// Generation number of that SPI.
    pub generation: u64,
    /// Which slot that generation occupies at the receiver.
    pub slot: Slot,
    /// Full 64-bit sequence number.
    pub seq: u64,
}

/// Result of opening one packet, without borrowing it (for batches). The payload always
/// starts at [`ESP_HEADER_LEN`] in the packet buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenOutcome {
    /// An inner IP packet of `len` bytes (or, opened in transport mode, a transport payload).
    Data {
        /// Inner packet length.
        len: usize,
        /// IPv4 or IPv6; [`NextHeader::Transport`] only from a transport-mode open.
        next_header: NextHeader,
        /// Who sent it, under which generation.
        info: OpenInfo,
    },
    /// A control message of `len` bytes for the control plane.
    Control {
        /// Message length.
        len: usize,
        /// Who sent it, under which generation.
        info: OpenInfo,
    },
    /// Dropped (and counted).
    Drop(DropReason),
}

/// Result of opening one packet, in the style of boringtun's `TunnResult`.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// A decrypted inner IP packet, in place in the caller's buffer. From
    /// [`crate::Engine::open_transport`], a transport-mode packet is the IP packet restored.
    Data {
        /// The inner packet (or the restored IP packet).
        packet: &'a mut [u8],
        /// IPv4 or IPv6 (tunnel mode); [`NextHeader::Transport`] with the payload's protocol
        /// (transport mode, only from [`crate::Engine::open_transport`]).
        next_header: NextHeader,
        /// Who sent it, under which generation.
        info: OpenInfo,
    },
    /// A decrypted control message for the control plane.
    Control {
        /// The message.
        message: &'a [u8],
        /// Who sent it, under which generation.
        info: OpenInfo,
    },
    /// Dropped (and counted) for this reason.
    Drop(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Pending,
    Sealed(usize),
    SealFailed(SealError),
    Opened(OpenOutcome),
}

/// One packet of a batch: a caller buffer and the bytes used in it.
///
/// For [`crate::Engine::seal_batch`] the inner IP packet sits at `buf[ESP_HEADER_LEN..][..len]` and the
/// buffer has room for [`esp::MAX_OVERHEAD`] more bytes; for [`crate::Engine::open_batch`] the ESP
/// packet sits at `buf[..len]`. Both transform the buffer in place.
pub struct Packet<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) len: usize,
    pub(crate) state: State,
    // Per-packet crypto parameters, filled by the engine before the AEAD pass.
    pub(crate) sa: Option<SaRef>,
    pub(crate) seq: u64,
    nonce: [u8; NONCE_LEN],
    aad: [u8; 12],
    aad_len: usize,
    ct_len: usize,
    next: NextHeader,
    /// Authenticated already in the parse pass (a handshake message under a per-message key):
    /// the batched AEAD pass and the replay window leave it alone.
    pub(crate) inline: bool,
    /// Opened in transport mode: a trailer's next header may name any transport protocol
    /// ([`NextHeader::Transport`]); otherwise only 4, 41 and 253 are accepted.
    pub(crate) transport: bool,
}

impl fmt::Debug for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("len", &self.len)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<'a> Packet<'a> {
    /// Wraps a buffer holding `len` bytes of input.
    pub fn new(buf: &'a mut [u8], len: usize) -> Self {
        Self {
            buf,
            len,
            state: State::Pending,
            sa: None,
            seq: 0,
            nonce: [0; NONCE_LEN],
            aad: [0; 12],
            aad_len: 0,
            ct_len: 0,
            next: NextHeader::Control,
            inline: false,
            transport: false,
        }
    }

    /// Result of sealing: the ESP packet length at `buf[..n]`.
    ///
    /// # Errors
    /// Why this packet was not sealed.
    pub fn sealed(&self) -> Result<usize, SealError> {
        match self.state {
            State::Sealed(n) => Ok(n),
            State::SealFailed(e) => Err(e),
            _ => Err(SealError::BadInnerPacket),
        }
    }

    /// Result of opening.
    pub fn opened(&self) -> OpenOutcome {
        match self.state {
            State::Opened(o) => o,
            _ => OpenOutcome::Drop(DropReason::Truncated),
        }
    }

    /// The buffer.
    pub fn buf(&self) -> &[u8] {
        self.buf
    }

    /// The buffer, mutably.
    pub fn buf_mut(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Input length (before processing).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the input is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Resets the packet for reuse with new input of `len` bytes.
    pub fn reset(&mut self, len: usize) {
        self.len = len;
        self.state = State::Pending;
        self.sa = None;
        self.inline = false;
        self.transport = false;
    }
}

impl AeadItem for Packet<'_> {
    fn active(&self) -> bool {
        self.state == State::Pending && self.sa.is_some() && !self.inline
    }
    fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }
    fn data_len(&self) -> usize {
        self.ct_len
    }
    fn parts(&mut self) -> (&[u8], &mut [u8], &mut [u8; TAG_LEN]) {
        let (data, rest) = self.buf[ESP_HEADER_LEN..].split_at_mut(self.ct_len);
        let tag: &mut [u8; TAG_LEN] = (&mut rest[..TAG_LEN])
            .try_into()
            .expect("room for the ICV was checked before the AEAD pass");
        (&self.aad[..self.aad_len], data, tag)
    }
    fn set_authentic(&mut self, ok: bool) {
        if !ok {
            self.state = State::Opened(OpenOutcome::Drop(DropReason::AuthFailed));
        }
    }
}

/// What sealing needs of the transmit SA.
pub(crate) struct SealParams {
    pub(crate) spi: u32,
    pub(crate) salt: [u8; 4],
    pub(crate) esn: bool,
    pub(crate) seq_limit: u64,
}

/// A batch of packets going through the passes together.
pub(crate) struct Batch<'p, 'a>(pub(crate) &'p mut [Packet<'a>]);

impl Batch<'_, '_> {
    /// Calls `f` for each run of consecutive packets still pending under the same SA (packets
    /// already decided inside a run are skipped by the AEAD pass): one batched AEAD call each.
    pub(crate) fn runs(&mut self, mut f: impl FnMut(SaRef, &mut [Packet<'_>])) {
        let packets = &mut *self.0;
        let mut start = 0;
        while start < packets.len() {
            let Some(r) = packets[start].sa.filter(|_| packets[start].active()) else {
                start += 1;
                continue;
            };
            let mut end = start + 1;
            while end < packets.len() && (packets[end].sa == Some(r) || !packets[end].active()) {
                end += 1;
            }
            f(r, &mut packets[start..end]);
            start = end;
        }
    }

    /// Seal pass 1a: checks every packet (next header, sizes) and marks the valid ones with `r`.
    /// Returns how many are valid: the number of sequence numbers to reserve.
    pub(crate) fn seal_validate(
        &mut self,
        next: Option<NextHeader>,
        max_esp: usize,
        r: SaRef,
    ) -> u64 {
        let mut valid = 0;
        for p in self.0.iter_mut() {
            p.state = State::Pending;
            p.sa = None;
            let payload = p.len;
            let next = match next {
                Some(n) => n,
                None => match p
                    .buf
                    .get(ESP_HEADER_LEN..ESP_HEADER_LEN + payload)
                    .and_then(NextHeader::for_ip_packet)
                {
                    Some(n) => n,
                    None => {
                        p.state = State::SealFailed(SealError::BadInnerPacket);
                        continue;
                    }
                },
            };
            let total = esp::esp_len(payload);
            if total > max_esp {
                p.state = State::SealFailed(SealError::PacketTooLarge);
                continue;
            }
            if total > p.buf.len() {
                p.state = State::SealFailed(SealError::BufferTooSmall);
                continue;
            }
            p.next = next;
            p.sa = Some(r);
            valid += 1;
        }
        valid
    }

    /// Seal pass 1b: assigns sequence numbers from `first` on to the valid packets and writes
    /// header, trailer, nonce and AAD.
    pub(crate) fn seal_prepare(&mut self, params: &SealParams, first: u64) {
        let mut seq = first;
        for p in self.0.iter_mut().filter(|p| p.sa.is_some()) {
            if seq > params.seq_limit || seq == 0 {
                p.state = State::SealFailed(SealError::SequenceExhausted);
                p.sa = None;
                continue;
            }
            let iv = seq.to_be_bytes();
            let header = EspHeader {
                spi: params.spi,
                seq_low: seq as u32,
                iv,
            };
            let (head, rest) = p.buf.split_at_mut(ESP_HEADER_LEN);
            header.write(head.try_into().expect("split at ESP_HEADER_LEN"));
            p.ct_len = esp::write_trailer(rest, p.len, p.next);
            p.nonce = esp::nonce(params.salt, iv);
            let mut aad = [0u8; 12];
            p.aad_len = esp::aad(params.spi, seq, params.esn, &mut aad);
            p.aad = aad;
            p.seq = seq;
            seq += 1;
        }
    }

    /// Seal pass 3: results, and the counts to add to the SA (bytes: the packets sealed are the
    /// sequence numbers reserved).
    pub(crate) fn seal_finish(&mut self) -> crate::SaCounters {
        let mut counts = crate::SaCounters::default();
        for p in self.0.iter_mut().filter(|p| p.sa.is_some()) {
            p.state = State::Sealed(ESP_HEADER_LEN + p.ct_len + ESP_ICV_LEN);
            counts.bytes_sealed += p.len as u64;
        }
        counts
    }
}

impl Packet<'_> {
    /// Open pass 1, before the SA lookup: the ESP header and the ciphertext length of a packet that
    /// is within size limits and not under a reserved SPI.
    pub(crate) fn parse_esp(&self, max_esp: usize) -> Result<(EspHeader, usize), DropReason> {
        let packet = self.buf.get(..self.len).ok_or(DropReason::Truncated)?;
        if packet.len() > max_esp {
            return Err(DropReason::Oversized);
        }
        let header = EspHeader::parse(packet)?;
        if header.spi <= pktcrypt_common::MAX_RESERVED_SPI {
            return Err(DropReason::ReservedSpi);
        }
        Ok((header, packet.len() - MIN_ESP_LEN + 2))
    }

    /// Seal pass 1b for one handshake message: header, trailer, nonce and AAD from the 96 fresh
    /// bits that make its key and fill the sequence number and IV fields (protocol version 3).
    pub(crate) fn prepare_handshake_seal(&mut self, spi: u32, fresh: &[u8; 12], salt: [u8; 4]) {
        let seq_low = u32::from_be_bytes([fresh[0], fresh[1], fresh[2], fresh[3]]);
        let mut iv = [0u8; 8];
        iv.copy_from_slice(&fresh[4..]);
        let header = EspHeader { spi, seq_low, iv };
        let (head, rest) = self.buf.split_at_mut(ESP_HEADER_LEN);
        header.write(head.try_into().expect("split at ESP_HEADER_LEN"));
        self.ct_len = esp::write_trailer(rest, self.len, NextHeader::Control);
        self.nonce = esp::nonce(salt, iv);
        let mut aad = [0u8; 12];
        self.aad_len = esp::aad(spi, u64::from(seq_low), false, &mut aad);
        self.aad = aad;
        self.seq = u64::from(seq_low);
    }

    /// Open pass 1 (after the SA lookup): nonce, AAD and ciphertext length.
    pub(crate) fn set_open_parameters(
        &mut self,
        header: &EspHeader,
        seq: u64,
        salt: [u8; 4],
        esn: bool,
        ct_len: usize,
    ) {
        self.ct_len = ct_len;
        self.nonce = esp::nonce(salt, header.iv);
        let mut aad = [0u8; 12];
        self.aad_len = esp::aad(header.spi, seq, esn, &mut aad);
        self.aad = aad;
        self.seq = seq;
    }

    /// Open pass 3 (after authentication and the window update): parses the trailer.
    pub(crate) fn outcome(&self, info: OpenInfo) -> OpenOutcome {
        let plaintext = &self.buf[ESP_HEADER_LEN..ESP_HEADER_LEN + self.ct_len];
        let trailer = if self.transport {
            esp::parse_trailer_any(plaintext)
        } else {
            esp::parse_trailer(plaintext)
        };
        let (len, next_header) = match trailer {
            Ok(v) => v,
            Err(reason) => return OpenOutcome::Drop(reason),
        };
        match next_header {
            NextHeader::Control => OpenOutcome::Control { len, info },
            // Transport mode: the payload is whatever its protocol carries.
            NextHeader::Transport(_) => OpenOutcome::Data {
                len,
                next_header,
                info,
            },
            ip => {
                if NextHeader::for_ip_packet(&plaintext[..len]) != Some(ip) {
                    return OpenOutcome::Drop(DropReason::BadInnerPacket);
                }
                OpenOutcome::Data {
                    len,
                    next_header: ip,
                    info,
                }
            }
        }
    }

    /// Authenticates and decrypts one handshake message in the parse pass, under its own key.
    pub(crate) fn open_inline(&mut self, header: &EspHeader, ct_len: usize, keyed: &Keyed) {
        self.set_open_parameters(header, u64::from(header.seq_low), keyed.salt, false, ct_len);
        keyed.key.open_batch(core::slice::from_mut(self));
        self.inline = true;
    }
}

/// The full sequence number of a received packet: from the IV for init keys (which restart at a
/// boot-derived base), inferred from the window with ESN, else the 32 bits on the wire. Checked
/// against the window.
pub(crate) fn open_sequence(
    header: &EspHeader,
    init: bool,
    esn: bool,
    replay: &impl crate::replay::Window,
) -> Result<u64, DropReason> {
    let seq = if init {
        // The IV carries the full 64-bit sequence number (authenticated through the nonce) and
        // must agree with the header.
        let seq = u64::from_be_bytes(header.iv);
        if seq as u32 != header.seq_low || (!esn && seq > u64::from(u32::MAX)) {
            return Err(DropReason::Malformed);
        }
        seq
    } else if esn {
        replay.infer_esn(header.seq_low).ok_or(DropReason::TooOld)?
    } else {
        u64::from(header.seq_low)
    };
    replay.check(seq).map_err(DropReason::from)?;
    Ok(seq)
}

/// The key of one handshake message under the init SA `sa` (protocol version 3): HKDF-Expand
/// keyed with the init secret over `label ‖ fresh(12) ‖ spi(4) ‖ suite(1)`.
pub(crate) fn handshake_key(
    sa: &Sa,
    backend: Backend,
    direction: Direction,
    fresh: &[u8; 12],
) -> Result<Keyed, Error> {
    keyed_handshake(&sa.secret, sa.info, backend, direction, fresh)
}

/// [`handshake_key`] from the init secret itself.
pub(crate) fn keyed_handshake(
    secret: &crate::Secret,
    info: crate::GenerationInfo,
    backend: Backend,
    direction: Direction,
    fresh: &[u8; 12],
) -> Result<Keyed, Error> {
    let dk = secret.derive_handshake(info, direction, fresh);
    Ok(Keyed {
        key: backend.key(info.suite, dk.key())?,
        salt: dk.salt(),
    })
}

impl OpenOutcome {
    /// The outcome of an authentic handshake message: a control message, never data.
    pub(crate) fn as_handshake(self) -> OpenOutcome {
        match self {
            OpenOutcome::Data { .. } => OpenOutcome::Drop(DropReason::InitData),
            other => other,
        }
    }
}

impl From<ReplayError> for DropReason {
    fn from(e: ReplayError) -> DropReason {
        match e {
            ReplayError::Replayed => DropReason::Replay,
            ReplayError::TooOld => DropReason::TooOld,
        }
    }
}
