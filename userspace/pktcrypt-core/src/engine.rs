//! The packet engine: peers, their key generations, and seal/open.
//!
//! Each peer holds at most three security associations in fixed slots: the initialization key
//! (generation 0, never deleted by updates) and two dynamic slots that alternate between
//! "newest" (N) and "previous" (N-1). Installing N+1 overwrites the previous slot and flips which
//! one is newest, so existing SPI table entries never move.
//!
//! Which generation a peer transmits with follows its role (spec §3):
//!
//! | role       | transmits with                  | receives with        |
//! |------------|---------------------------------|----------------------|
//! | key server | N-1 (the init key if none)      | N, N-1 and init      |
//! | client     | N (the init key if none)        | N, N-1 and init      |
//!
//! so a key server never sends under a key its client may not have yet.

use crate::ids::{PeerId, Slot, Spi, TxRule};
use crate::pipeline::{OpenInfo, OpenOutcome, Opened, Packet};

use crate::aead::Backend;
use crate::ids::{INIT_SLOT, MAX_PEERS, SaRef};
use crate::keys::{Direction, Generation, GenerationInfo};
use crate::pipeline::{Batch, SealParams, State, handshake_key, open_sequence};
use crate::replay::DEFAULT_WINDOW;
use crate::sa::{Keyed, Sa, SaCounters};
use crate::wire::UdpPorts;
use crate::wire::esp::{ESP_HEADER_LEN, NextHeader};
use crate::wire::transport::IpLayout;
use crate::{DropCounters, DropReason, Error, SealError, Suite, Time};
use std::fmt;
use std::sync::Arc;

/// Which side of the key distribution this engine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Key transmitting device: transmits with N-1, receives with N and N-1.
    KeyServer,
    /// Key receiving device: transmits with N, receives with N and N-1.
    Client,
}

impl Role {
    /// The direction this role transmits in.
    pub const fn tx_direction(self) -> Direction {
        match self {
            Role::KeyServer => Direction::ServerToClient,
            Role::Client => Direction::ClientToServer,
        }
    }
}

/// Engine configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Role of this side.
    pub role: Role,
    /// AEAD implementation.
    pub backend: Backend,
    /// Anti-replay window in packets (multiple of 64, 64..=8192).
    pub replay_window: u32,
    /// 64-bit extended sequence numbers (RFC 4303 §2.2.1); the high half enters the AAD.
    pub esn: bool,
    /// Largest ESP packet accepted or produced (bytes from SPI to ICV).
    pub max_esp_len: usize,
    /// Highest sequence number a transmit SA may use before sealing refuses and a rekey is
    /// required. `None`: the full space (2^64-1 with ESN, 2^32-1 without).
    pub seq_limit: Option<u64>,
    /// First transmit sequence number under generation 0, for a raw engine whose application
    /// seals data under a generation-0 key of its own (default 1). Unused with
    /// [`Self::handshake_init`], which every protocol role (key server, client, group
    /// controller and member) forces on: they never count under an init key, so nothing in
    /// pktcrypt depends on the wall clock. An application that does seal under a long-lived
    /// generation-0 key must never start two boots at the same base; [`boot_seq_base`] of the
    /// wall clock is one way, with the caveat that a clock stepped back breaks it.
    pub init_seq_base: u64,
    /// Protocol version 3 (`docs/protocol.md`): the init key carries handshake messages only,
    /// each sealed under its own key derived from the init secret and 96 fresh random bits
    /// carried in the packet's sequence-number and IV fields ([`Engine::seal_handshake`]). No
    /// counter restarts at boot, so no (key, nonce) pair repeats across restarts whatever the
    /// clock does; data is never sealed or accepted under the init key (`init_data`).
    /// Replays of handshake messages are the protocol's concern: each is bound to fresh
    /// randomness. The key server, the client and the group roles force it on.
    pub handshake_init: bool,
}

/// The init-key sequence base for a boot at `unix_micros` microseconds since the UNIX epoch:
/// `unix_micros · 4096`. Two boots a microsecond apart cannot overlap unless the first sent more
/// than 4096 packets per microsecond of its life; the value fits 64 bits until the year 2112.
pub const fn boot_seq_base(unix_micros: u64) -> u64 {
    unix_micros.saturating_mul(4096)
}

impl EngineConfig {
    /// Defaults for `role`: default backend, 1024-packet window, ESN, 64 KiB packets.
    pub fn new(role: Role) -> Self {
        Self {
            role,
            backend: Backend::default(),
            replay_window: DEFAULT_WINDOW,
            esn: true,
            max_esp_len: 65535,
            seq_limit: None,
            init_seq_base: 1,
            handshake_init: false,
        }
    }

    fn effective_seq_limit(&self) -> u64 {
        let space = if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        self.seq_limit.map_or(space, |l| l.min(space))
    }
}

struct Peer {
    /// Physical slots: 0 = init, 1 and 2 alternate as newest/previous.
    slots: Box<[Option<Sa>; 3]>,
    /// Physical index (1 or 2) of the newest dynamic generation, if any.
    newest: Option<u8>,
    /// Key derivation directions: (transmit, receive).
    dirs: (Direction, Direction),
    /// Which generation this side transmits with.
    rule: TxRule,
}

impl Peer {
    /// Whether a generation with this number is held: `Ok` if it is this one (installing it
    /// again changes nothing), [`Error::ConflictingGeneration`] if its contents differ.
    fn holds(&self, generation: &Generation) -> Option<Result<(), Error>> {
        let held = self
            .slots
            .iter()
            .flatten()
            .find(|sa| sa.info.number == generation.info.number)?;
        Some(if held.same_generation(generation) {
            Ok(())
        } else {
            Err(Error::ConflictingGeneration)
        })
    }

    fn previous_index(&self) -> Option<u8> {
        let other = 3 - self.newest?;
        self.slots[usize::from(other)].as_ref().map(|_| other)
    }

    /// The physical index of the generation in `slot`, if held.
    fn index_of(&self, slot: Slot) -> Option<u8> {
        match slot {
            Slot::Init => Some(INIT_SLOT),
            Slot::Newest => self.newest,
            Slot::Previous => self.previous_index(),
        }
    }

    fn logical(&self, physical: u8) -> Slot {
        if physical == INIT_SLOT {
            Slot::Init
        } else if Some(physical) == self.newest {
            Slot::Newest
        } else {
            Slot::Previous
        }
    }

    fn tx_index(&self, role: Role) -> u8 {
        let dynamic = match (self.rule, role) {
            (TxRule::Previous, _) | (TxRule::Role, Role::KeyServer) => self.previous_index(),
            (TxRule::Newest, _) | (TxRule::Role, Role::Client) => self.newest,
        };
        dynamic.unwrap_or(INIT_SLOT)
    }
}

/// SPI → SA.
pub(crate) type SpiMap = crate::spi_table::SpiTable;

/// Status of one held generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaStatus {
    /// Number, SPI, suite.
    pub info: GenerationInfo,
    /// Slot it occupies.
    pub slot: Slot,
    /// Whether this side currently transmits with it.
    pub transmitting: bool,
    /// Traffic counters.
    pub counters: SaCounters,
    /// When it was installed.
    pub installed_at: Time,
    /// Whether it came from a key exchange (forward secret: not derivable from the init key
    /// and a capture).
    pub exchanged: bool,
    /// Next sequence number to send.
    pub next_seq: u64,
    /// Highest sequence number received and authenticated.
    pub highest_received: u64,
    /// Whether an expanded key of either direction is held (idle eviction drops them; they
    /// are derived again from the secret on the next packet).
    pub keys_expanded: bool,
}

/// Status of a peer: every generation held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub peer: PeerId,
    /// Held generations: init first, then newest, then previous.
    pub sas: Vec<SaStatus>,
}

impl PeerStatus {
    /// The generation in a slot, if held.
    pub fn slot(&self, slot: Slot) -> Option<&SaStatus> {
        self.sas.iter().find(|s| s.slot == slot)
    }

    /// The generation this side transmits with.
    pub fn transmitting(&self) -> Option<&SaStatus> {
        self.sas.iter().find(|s| s.transmitting)
    }
}

/// One direction of one generation, exported for an independent decryptor (Wireshark's ESP SA
/// table, Linux xfrm, the Python `cryptography` package). Holds key material: zeroized on drop,
/// redacted in `Debug`.
pub struct SaExport {
    /// SPI.
    pub spi: Spi,
    /// Suite.
    pub suite: Suite,
    /// Generation number.
    pub generation: u64,
    /// Direction of the traffic this key protects.
    pub direction: Direction,
    /// Whether this engine sends (true) or receives (false) under it.
    pub outbound: bool,
    /// Whether 64-bit ESNs are in the AAD.
    pub esn: bool,
    /// Where the SA's sequence numbers stood when it was exported: the next one to seal
    /// (`outbound`), else the highest received (a group sender's key, both ways: the larger). Its high 32 bits are the ESN's high half that
    /// a decryptor starting from a capture taken now must assume.
    pub seq: u64,
    /// AEAD key followed by the 4-byte salt (the RFC 4106 / RFC 7634 "keymat").
    pub keymat: zeroize::Zeroizing<Vec<u8>>,
}

impl fmt::Debug for SaExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaExport")
            .field("spi", &self.spi)
            .field("suite", &self.suite)
            .field("generation", &self.generation)
            .field("direction", &self.direction)
            .field("outbound", &self.outbound)
            .field("esn", &self.esn)
            .field("seq", &self.seq)
            .field("keymat", &"<redacted>")
            .finish()
    }
}

/// What an install changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The generation became newest; `retired` was forgotten to make room.
    Rotated {
        /// The generation dropped (the old N-1), if any.
        retired: Option<GenerationInfo>,
    },
    /// Already held: nothing changed (resends are idempotent).
    AlreadyHeld,
}

/// The packet engine of one endpoint: many peers, each with up to three generations.
pub struct Engine {
    config: EngineConfig,
    seq_limit: u64,
    peers: Vec<Option<Peer>>,
    free: Vec<u32>,
    spis: SpiMap,
    drops: DropCounters,
    /// Peers whose keys changed since [`Engine::take_changed`] last ran (each once), when
    /// tracking is on; `marked` flags them by index.
    changed: Vec<PeerId>,
    marked: Vec<bool>,
    track: bool,
    /// The final counters of the generations dropped since [`Engine::take_retired_counters`]
    /// last ran, when kept ([`Engine::keep_retired_counters`]).
    retired: Vec<RetiredCounters>,
    keep_retired: bool,
}

/// The counters of a generation as it was dropped (retired, reset or its peer removed): with
/// those of the generations still held, a peer's traffic over every generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetiredCounters {
    /// The peer.
    pub peer: PeerId,
    /// The generation.
    pub info: GenerationInfo,
    /// Its counters when it was dropped.
    pub counters: SaCounters,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("peers", &(self.peers.len() - self.free.len()))
            .field("drops", &self.drops)
            .finish()
    }
}

impl Engine {
    /// A new engine.
    ///
    /// # Errors
    /// [`Error::ReplayWindow`] for a bad window size.
    pub fn new(config: EngineConfig) -> Result<Engine, Error> {
        crate::replay::ReplayWindow::new(config.replay_window)?;
        Ok(Engine {
            seq_limit: config.effective_seq_limit(),
            config,
            peers: Vec::new(),
            free: Vec::new(),
            spis: SpiMap::default(),
            drops: DropCounters::default(),
            changed: Vec::new(),
            marked: Vec::new(),
            track: false,
            retired: Vec::new(),
            keep_retired: false,
        })
    }

    /// From now on, keeps the final counters of every generation dropped (retired by a
    /// rotation or on evidence, reset, its peer removed) for [`Self::take_retired_counters`],
    /// so that a driver can count a peer's traffic across rekeys exactly. Off by default:
    /// whoever turns it on must take them regularly (they accumulate until taken).
    pub fn keep_retired_counters(&mut self) {
        self.keep_retired = true;
    }

    /// The counters of the generations dropped since the last call (see
    /// [`Self::keep_retired_counters`]), in the order they were dropped. Status only.
    pub fn take_retired_counters(&mut self) -> Vec<RetiredCounters> {
        std::mem::take(&mut self.retired)
    }

    /// Records `sa`'s final counters (in physical slot `index` of `peer`), when kept.
    fn note_retired(&mut self, peer: PeerId, index: u8, sa: &Sa) {
        if self.keep_retired {
            let counters = sa.counters(self.seq_base(index));
            self.retired.push(RetiredCounters {
                peer,
                info: sa.info,
                counters,
            });
        }
    }

    /// From now on, remembers every peer whose keys change in a way a [`crate::DataPlane`]
    /// shows (a generation installed, retired or reset, the transmit rule or a receive-only
    /// mark changed, the peer added or removed), for [`Self::take_changed`]. Off by default
    /// (a key server with a million clients and no workers has no use for it).
    pub fn track_changes(&mut self) {
        self.track = true;
    }

    /// The peers whose keys changed since the last call (see [`Self::track_changes`]), each
    /// once, in the order they first changed; what [`Self::update_data_plane`] takes.
    pub fn take_changed(&mut self) -> Vec<PeerId> {
        for p in &self.changed {
            if let Some(m) = self.marked.get_mut(p.0 as usize) {
                *m = false;
            }
        }
        std::mem::take(&mut self.changed)
    }

    /// Records that `id`'s keys changed (when tracking).
    fn mark_changed(&mut self, id: PeerId) {
        if !self.track {
            return;
        }
        let i = id.0 as usize;
        if self.marked.len() <= i {
            self.marked.resize(i + 1, false);
        }
        if !self.marked[i] {
            self.marked[i] = true;
            self.changed.push(id);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Drop counters per reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Where the sequence numbers of the SA in physical slot `index` started.
    fn seq_base(&self, index: u8) -> u64 {
        if index == INIT_SLOT {
            self.config.init_seq_base.max(1)
        } else {
            1
        }
    }

    fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(id.0 as usize)?.as_ref()
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(id.0 as usize)?.as_mut()
    }

    fn sa(&self, r: SaRef) -> Option<&Sa> {
        self.peers.get(r.peer() as usize)?.as_ref()?.slots[usize::from(r.slot())].as_ref()
    }

    fn sa_mut(&mut self, r: SaRef) -> Option<&mut Sa> {
        self.peers.get_mut(r.peer() as usize)?.as_mut()?.slots[usize::from(r.slot())].as_mut()
    }

    /// Adds a peer holding only its initialization key (generation 0).
    ///
    /// # Errors
    /// [`Error::GenerationNumber`] unless `init` is generation 0; [`Error::DuplicateSpi`];
    /// [`Error::UnknownPeer`] when the engine already holds 2^30 peers.
    pub fn add_peer(&mut self, init: &Generation, now: Time) -> Result<PeerId, Error> {
        if init.info.number != 0 {
            return Err(Error::GenerationNumber);
        }
        Spi::new(init.info.spi.get())?;
        if self.spis.contains(init.info.spi.get()) {
            return Err(Error::DuplicateSpi);
        }
        let mut sa = Sa::new(init, now);
        sa.set_next_seq(self.config.init_seq_base.max(1));
        let tx = self.config.role.tx_direction();
        let peer = Peer {
            slots: Box::new([Some(sa), None, None]),
            newest: None,
            dirs: (tx, tx.reverse()),
            rule: TxRule::Role,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.peers[i as usize] = Some(peer);
                i
            }
            None => {
                // Peer indices must fit an SPI-table entry (`SaRef`).
                if self.peers.len() >= MAX_PEERS {
                    return Err(Error::UnknownPeer);
                }
                self.peers.push(Some(peer));
                u32::try_from(self.peers.len() - 1).map_err(|_| Error::UnknownPeer)?
            }
        };
        self.spis
            .insert(init.info.spi.get(), SaRef::new(index, INIT_SLOT));
        self.mark_changed(PeerId(index));
        Ok(PeerId(index))
    }

    /// Adds one sender of a group (spec §6): the SAs of this peer derive both their transmit and
    /// receive keys for [`Direction::GroupSender`] under the sender's own SPI, so every member
    /// decrypts every sender with the shared group secret while no two senders share a
    /// (key, nonce). `init` is the group init key under this sender's init SPI.
    ///
    /// # Errors
    /// As [`Self::add_peer`].
    pub fn add_group_sender(&mut self, init: &Generation, now: Time) -> Result<PeerId, Error> {
        let id = self.add_peer(init, now)?;
        if let Some(peer) = self.peer_mut(id) {
            peer.dirs = (Direction::GroupSender, Direction::GroupSender);
            peer.rule = TxRule::Newest;
        }
        Ok(id)
    }

    /// Sets which generation this side transmits with to a peer.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn set_tx_rule(&mut self, id: PeerId, rule: TxRule) -> Result<(), Error> {
        let peer = self.peer_mut(id).ok_or(Error::UnknownPeer)?;
        if peer.rule != rule {
            peer.rule = rule;
            self.mark_changed(id);
        }
        Ok(())
    }

    /// Removes a peer and all its keys.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn remove_peer(&mut self, id: PeerId) -> Result<(), Error> {
        let peer = self
            .peers
            .get_mut(id.0 as usize)
            .and_then(Option::take)
            .ok_or(Error::UnknownPeer)?;
        for (index, slot) in peer.slots.iter().enumerate() {
            if let Some(sa) = slot {
                self.spis.remove(sa.info.spi.get());
                self.note_retired(id, index as u8, sa);
            }
        }
        self.free.push(id.0);
        self.mark_changed(id);
        Ok(())
    }

    /// Installs a new newest generation N+1: keeps {N+1, N} and forgets N-1 (the init key
    /// stays). A generation already held is accepted again without change, so resends are
    /// idempotent.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`]; [`Error::GenerationNumber`] for generation 0;
    /// [`Error::StaleGeneration`] for one older than N; [`Error::GenerationGap`] for one beyond
    /// N+1; [`Error::ConflictingGeneration`] for a held number with other contents;
    /// [`Error::DuplicateSpi`] if the SPI is in use.
    pub fn install(
        &mut self,
        id: PeerId,
        generation: &Generation,
        now: Time,
    ) -> Result<Installed, Error> {
        let info = generation.info;
        if info.number == 0 {
            return Err(Error::GenerationNumber);
        }
        Spi::new(info.spi.get())?;
        let peer = self.peer(id).ok_or(Error::UnknownPeer)?;
        if let Some(held) = peer.holds(generation) {
            return held.map(|()| Installed::AlreadyHeld);
        }
        if let Some(newest) = peer.newest {
            let n = peer.slots[usize::from(newest)]
                .as_ref()
                .map_or(0, |sa| sa.info.number);
            if info.number < n {
                return Err(Error::StaleGeneration);
            }
            if info.number > n + 1 {
                return Err(Error::GenerationGap);
            }
        }
        if self.spis.contains(info.spi.get()) {
            return Err(Error::DuplicateSpi);
        }
        let sa = Sa::new(generation, now);
        let peer = self.peer_mut(id).ok_or(Error::UnknownPeer)?;
        let target = match peer.newest {
            Some(n) => 3 - n,
            None => 1,
        };
        let retired = peer.slots[usize::from(target)].replace(sa);
        peer.newest = Some(target);
        let retired = retired.map(|old| {
            self.spis.remove(old.info.spi.get());
            self.note_retired(id, target, &old);
            old.info
        });
        self.spis.insert(info.spi.get(), SaRef::new(id.0, target));
        self.mark_changed(id);
        Ok(Installed::Rotated { retired })
    }

    /// Installs generation N-1 under a newest N when no previous generation is held (a group
    /// member that got N first after a fresh start, and N-1 late): N keeps its keys, sequence
    /// numbers and replay window. A generation already held is accepted again.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`]; [`Error::GenerationNumber`] unless the newest is exactly one
    /// later and no previous is held; [`Error::DuplicateSpi`]; [`Error::ConflictingGeneration`].
    pub fn install_previous(
        &mut self,
        id: PeerId,
        generation: &Generation,
        now: Time,
    ) -> Result<(), Error> {
        let info = generation.info;
        if info.number == 0 {
            return Err(Error::GenerationNumber);
        }
        Spi::new(info.spi.get())?;
        let peer = self.peer(id).ok_or(Error::UnknownPeer)?;
        if let Some(held) = peer.holds(generation) {
            return held;
        }
        let newest = peer.newest.ok_or(Error::GenerationNumber)?;
        let n = peer.slots[usize::from(newest)]
            .as_ref()
            .map_or(0, |sa| sa.info.number);
        if info.number + 1 != n || peer.previous_index().is_some() {
            return Err(Error::GenerationNumber);
        }
        if self.spis.contains(info.spi.get()) {
            return Err(Error::DuplicateSpi);
        }
        let sa = Sa::new(generation, now);
        let target = 3 - newest;
        let peer = self.peer_mut(id).ok_or(Error::UnknownPeer)?;
        peer.slots[usize::from(target)] = Some(sa);
        self.spis.insert(info.spi.get(), SaRef::new(id.0, target));
        self.mark_changed(id);
        Ok(())
    }

    /// Forgets both dynamic generations, leaving only the init key (after a fault, or when the
    /// peer re-initialises). Returns what was dropped.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn reset_to_init(&mut self, id: PeerId) -> Result<Vec<GenerationInfo>, Error> {
        let peer = self.peer_mut(id).ok_or(Error::UnknownPeer)?;
        peer.newest = None;
        let dropped: Vec<(u8, Sa)> = peer.slots[1..]
            .iter_mut()
            .enumerate()
            .filter_map(|(i, slot)| slot.take().map(|sa| (i as u8 + 1, sa)))
            .collect();
        for (index, sa) in &dropped {
            self.spis.remove(sa.info.spi.get());
            self.note_retired(id, *index, sa);
        }
        let dropped: Vec<GenerationInfo> = dropped.iter().map(|(_, sa)| sa.info).collect();
        if !dropped.is_empty() {
            self.mark_changed(id);
        }
        Ok(dropped)
    }

    /// Forgets N-1, keeping only N (and the init key).
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn retire_previous(&mut self, id: PeerId) -> Result<Option<GenerationInfo>, Error> {
        let peer = self.peer_mut(id).ok_or(Error::UnknownPeer)?;
        let Some(prev) = peer.previous_index() else {
            return Ok(None);
        };
        let old = peer.slots[usize::from(prev)].take();
        if let Some(sa) = &old {
            self.spis.remove(sa.info.spi.get());
            self.note_retired(id, prev, sa);
            self.mark_changed(id);
        }
        Ok(old.map(|sa| sa.info))
    }

    /// Forgets N-1 on evidence from traffic, before the control protocol would: when this side
    /// does not transmit under it, the peer has been heard under N (a packet opened under N:
    /// authenticated, so a forged packet cannot fake it), and nothing has arrived under N-1
    /// for `grace`, counted from `previous_last_seen` (the last packet seen under N-1's SPI, by
    /// whatever saw it first: the gateway passes its XDP program's per-SPI counters, which
    /// count every packet, so forged ones can only postpone this) or N's install time, the
    /// later of the two. A peer never goes back to N-1 once it sends under N, so nothing it
    /// sends later is lost; the key of N-1 is gone sooner.
    ///
    /// Returns the generation retired, if any.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn retire_previous_if_unused(
        &mut self,
        id: PeerId,
        now: Time,
        grace: core::time::Duration,
        previous_last_seen: Option<Time>,
    ) -> Result<Option<GenerationInfo>, Error> {
        let role = self.config.role;
        let peer = self.peer(id).ok_or(Error::UnknownPeer)?;
        let (Some(prev), Some(newest)) = (peer.previous_index(), peer.newest) else {
            return Ok(None);
        };
        if peer.tx_index(role) == prev {
            return Ok(None);
        }
        let Some(n) = peer.slots[usize::from(newest)].as_ref() else {
            return Ok(None);
        };
        if n.counters(self.seq_base(newest)).packets_opened == 0 {
            return Ok(None);
        }
        let quiet_since = previous_last_seen.map_or(n.installed_at(), |t| t.max(n.installed_at()));
        if now.saturating_sub(quiet_since) < grace {
            return Ok(None);
        }
        self.retire_previous(id)
    }

    /// Every SPI a generation is held under, the init keys' included: what may arrive.
    pub fn held_spis(&self) -> impl Iterator<Item = u32> + '_ {
        self.peers
            .iter()
            .flatten()
            .flat_map(|p| p.slots.iter().flatten().map(|sa| sa.info.spi.get()))
    }

    /// The generation held in `slot` for a peer.
    pub fn generation(&self, id: PeerId, slot: Slot) -> Option<GenerationInfo> {
        self.sa_in(id, slot).map(|(_, sa)| sa.info)
    }

    /// The SA in a peer's logical `slot`, with its physical index.
    fn sa_in(&self, id: PeerId, slot: Slot) -> Option<(u8, &Sa)> {
        let peer = self.peer(id)?;
        let index = peer.index_of(slot)?;
        Some((index, peer.slots[usize::from(index)].as_ref()?))
    }

    /// The generation this side transmits with to a peer, by the role rule.
    pub fn tx_generation(&self, id: PeerId) -> Option<GenerationInfo> {
        let peer = self.peer(id)?;
        peer.slots[usize::from(peer.tx_index(self.config.role))]
            .as_ref()
            .map(|sa| sa.info)
    }

    /// Looks up which peer and generation an SPI belongs to (O(1)).
    pub fn lookup_spi(&self, spi: u32) -> Option<(PeerId, GenerationInfo, Slot)> {
        let r = self.spis.get(spi)?;
        let peer = self.peer(PeerId(r.peer()))?;
        let sa = peer.slots[usize::from(r.slot())].as_ref()?;
        Some((PeerId(r.peer()), sa.info, peer.logical(r.slot())))
    }

    /// Status and counters of every generation held for a peer.
    pub fn peer_status(&self, id: PeerId) -> Option<PeerStatus> {
        let peer = self.peer(id)?;
        let tx = peer.tx_index(self.config.role);
        let mut sas = Vec::with_capacity(3);
        let order = [Some(INIT_SLOT), peer.newest, peer.previous_index()];
        for index in order.into_iter().flatten() {
            if let Some(sa) = &peer.slots[usize::from(index)] {
                sas.push(SaStatus {
                    info: sa.info,
                    slot: peer.logical(index),
                    transmitting: index == tx,
                    counters: sa.counters(self.seq_base(index)),
                    installed_at: sa.installed_at(),
                    exchanged: sa.exchanged(),
                    next_seq: sa.next_seq(),
                    highest_received: sa.highest_received(),
                    keys_expanded: sa.keys_expanded(),
                });
            }
        }
        Some(PeerStatus { peer: id, sas })
    }

    /// All peers.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .map(|(i, _)| PeerId(i as u32))
    }

    /// Both directions of every generation held for a peer, for an independent decryptor.
    pub fn export_sas(&self, id: PeerId) -> Vec<SaExport> {
        let Some(peer) = self.peer(id) else {
            return Vec::new();
        };
        let (tx_dir, rx_dir) = peer.dirs;
        let mut out = Vec::new();
        // A handshake-only init key has no key of its own to export: every message has one.
        let skip = usize::from(self.config.handshake_init);
        for sa in peer.slots.iter().skip(skip).flatten() {
            let both = [(tx_dir, true), (rx_dir, false)];
            let dirs = if tx_dir == rx_dir {
                &both[..1]
            } else {
                &both[..]
            };
            for &(direction, outbound) in dirs {
                let key = sa.secret.derive_direction(sa.info, direction);
                let mut keymat = zeroize::Zeroizing::new(Vec::with_capacity(36));
                keymat.extend_from_slice(key.key());
                keymat.extend_from_slice(&key.salt());
                out.push(SaExport {
                    spi: sa.info.spi,
                    suite: sa.info.suite,
                    generation: sa.info.number,
                    direction,
                    outbound,
                    esn: self.config.esn,
                    // A group sender's one key serves both ways: ours is sealed under, the
                    // others' opened.
                    seq: if tx_dir == rx_dir {
                        sa.next_seq().max(sa.highest_received())
                    } else if outbound {
                        sa.next_seq()
                    } else {
                        sa.highest_received()
                    },
                    keymat,
                });
            }
        }
        out
    }

    /// A view of every peer's keys for data-plane workers on other threads (see
    /// [`crate::DataPlane`]). From now on the SAs involved keep their sequence counter, replay
    /// window and counters in state shared with the returned view, so the engine and the
    /// workers never hand out the same sequence number. Call it again after keys changed.
    ///
    /// # Errors
    /// A key that cannot be expanded (never for keys the engine accepted).
    pub fn data_plane(&mut self) -> Result<crate::DataPlane, Error> {
        let mut plane =
            crate::DataPlane::new(self.config.esn, self.config.max_esp_len, self.seq_limit);
        for index in 0..self.peers.len() {
            let id = PeerId(index as u32);
            if let Some(keys) = self.peer_keys(id)? {
                plane.set_peer(id, keys);
            }
        }
        Ok(plane)
    }

    /// `plane` (built by [`Self::data_plane`] of this engine) with the keys of `peers` as they
    /// are now, the rest shared with it: what a driver publishes after
    /// [`Self::take_changed`] named `peers`. Equal to a fresh [`Self::data_plane`] when
    /// `peers` holds every peer whose keys changed since `plane` was built.
    ///
    /// # Errors
    /// As [`Self::data_plane`].
    pub fn update_data_plane(
        &mut self,
        plane: &crate::DataPlane,
        peers: &[PeerId],
    ) -> Result<crate::DataPlane, Error> {
        let mut next = plane.clone();
        for &id in peers {
            next.remove_peer(id);
            if let Some(keys) = self.peer_keys(id)? {
                next.set_peer(id, keys);
            }
        }
        Ok(next)
    }

    /// What the data plane holds for peer `id` (`None`: no such peer). Shares its SAs' state
    /// with the data plane from now on (see [`Self::data_plane`]).
    fn peer_keys(&mut self, id: PeerId) -> Result<Option<crate::datapath::PeerKeys>, Error> {
        let role = self.config.role;
        let window = self.config.replay_window;
        let backend = self.config.backend;
        let handshake_init = self.config.handshake_init;
        let Some(peer) = self.peers.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return Ok(None);
        };
        let tx_index = peer.tx_index(role);
        let (tx_dir, rx_dir) = peer.dirs;
        let tx_receive_only = peer.slots[usize::from(tx_index)]
            .as_ref()
            .is_some_and(Sa::receive_only);
        let mut keys = crate::datapath::PeerKeys {
            tx: None,
            tx_handshake_only: (handshake_init && tx_index == INIT_SLOT) || tx_receive_only,
            rx: Vec::with_capacity(3),
        };
        let logical: Vec<Slot> = (0..3u8).map(|i| peer.logical(i)).collect();
        for (i, sa) in peer.slots.iter_mut().enumerate() {
            let Some(sa) = sa else { continue };
            let physical = i as u8;
            let shared = sa.share(window)?;
            let key = if handshake_init && physical == INIT_SLOT {
                // No key of its own to expand (and nothing to transmit under it).
                crate::datapath::RxKey::Handshake(std::sync::Arc::new(crate::datapath::Handshake {
                    secret: sa.secret.clone(),
                    direction: rx_dir,
                    backend,
                }))
            } else {
                if physical == tx_index && !tx_receive_only {
                    let key = std::sync::Arc::clone(sa.tx(backend, tx_dir)?);
                    keys.tx = Some((physical, sa.info, key, std::sync::Arc::clone(&shared)));
                }
                crate::datapath::RxKey::Keyed(std::sync::Arc::clone(sa.rx(backend, rx_dir)?))
            };
            keys.rx.push((physical, logical[i], sa.info, key, shared));
        }
        Ok(Some(keys))
    }

    /// Drops the expanded AEAD keys of every generation of a peer; they are derived again from
    /// the secrets on the next packet. Sequence numbers, replay windows and counters stay. A key
    /// server calls this for idle clients to keep its memory per client small.
    pub fn evict_keys(&mut self, id: PeerId) {
        if let Some(peer) = self.peer_mut(id) {
            for sa in peer.slots.iter_mut().flatten() {
                sa.evict_keys();
            }
        }
    }

    /// Counters and install time of the generation in `slot`, without allocating.
    pub fn sa_counters(&self, id: PeerId, slot: Slot) -> Option<(crate::SaCounters, Time)> {
        let (index, sa) = self.sa_in(id, slot)?;
        Some((sa.counters(self.seq_base(index)), sa.installed_at()))
    }

    /// Marks the generation in `slot` as coming from a key exchange (or not): status only.
    pub fn set_exchanged(&mut self, id: PeerId, slot: Slot, exchanged: bool) {
        if let Some(sa) = self.sa_in_mut(id, slot) {
            sa.set_exchanged(exchanged);
        }
    }

    fn sa_in_mut(&mut self, id: PeerId, slot: Slot) -> Option<&mut Sa> {
        let peer = self.peer_mut(id)?;
        let index = peer.index_of(slot)?;
        peer.slots[usize::from(index)].as_mut()
    }

    /// Marks the generation in `slot` receive-only (or not): nothing is sealed under it
    /// ([`SealError::NoKey`]). A group member marks a generation it may have transmitted under
    /// before a restart, whose sequence numbers it cannot know.
    pub fn set_receive_only(&mut self, id: PeerId, slot: Slot, on: bool) {
        if let Some(sa) = self.sa_in_mut(id, slot)
            && sa.receive_only() != on
        {
            sa.set_receive_only(on);
            self.mark_changed(id);
        }
    }

    /// Whether the generation in `slot` is receive-only (see [`Self::set_receive_only`]).
    pub fn receive_only(&self, id: PeerId, slot: Slot) -> bool {
        self.sa_in(id, slot)
            .is_some_and(|(_, sa)| sa.receive_only())
    }

    /// The generation in `slot` and when it was installed.
    pub fn installed(&self, id: PeerId, slot: Slot) -> Option<(GenerationInfo, Time)> {
        let (_, sa) = self.sa_in(id, slot)?;
        Some((sa.info, sa.installed_at()))
    }

    /// The secret of the generation in `slot` (for derived-key mode and distribution).
    pub(crate) fn secret(&self, id: PeerId, slot: Slot) -> Option<&crate::Secret> {
        self.sa_in(id, slot).map(|(_, sa)| &sa.secret)
    }

    /// Seals one packet for a peer under the generation the role rule picks.
    ///
    /// The payload (inner IP packet or control message) sits at
    /// `buf[ESP_HEADER_LEN..ESP_HEADER_LEN + payload_len]`; the buffer needs room for
    /// [`crate::wire::esp::esp_len`]`(payload_len)` bytes. Returns the ESP packet length at `buf[..n]`.
    ///
    /// # Errors
    /// See [`SealError`]; on error no sequence number is consumed.
    /// [`SealError::UnsupportedProtocol`] for a [`NextHeader::Transport`] whose number means
    /// something else in a trailer (4, 41, 253, 59) or is ESP or AH (50, 51).
    pub fn seal(
        &mut self,
        id: PeerId,
        buf: &mut [u8],
        payload_len: usize,
        next_header: NextHeader,
    ) -> Result<usize, SealError> {
        if let NextHeader::Transport(p) = next_header
            && (NextHeader::transport(p).is_none() || matches!(p, 50 | 51))
        {
            // A number that means something else in a trailer (tunnel mode, a control message,
            // a dummy packet) or ESP/AH itself: its receiver would take it for another kind.
            return Err(SealError::UnsupportedProtocol);
        }
        let mut packet = Packet::new(buf, payload_len);
        self.seal_packets(id, core::slice::from_mut(&mut packet), Some(next_header));
        packet.sealed()
    }

    /// Seals a control message for a peer: copies `message` after the ESP header and seals it
    /// with next header 253. Returns the ESP packet length.
    ///
    /// # Errors
    /// As [`Self::seal`].
    pub fn seal_control(
        &mut self,
        id: PeerId,
        message: &[u8],
        out: &mut [u8],
    ) -> Result<usize, SealError> {
        let area = out
            .get_mut(ESP_HEADER_LEN..ESP_HEADER_LEN + message.len())
            .ok_or(SealError::BufferTooSmall)?;
        area.copy_from_slice(message);
        self.seal(id, out, message.len(), NextHeader::Control)
    }

    /// Whether the SA `r` is an init key that carries handshake messages only (version 3).
    fn handshake_only(&self, r: SaRef) -> bool {
        self.config.handshake_init && r.slot() == INIT_SLOT
    }

    /// Whether this side would transmit to `id` under the init key: then only
    /// [`Self::seal_handshake`] can send to it.
    pub fn transmits_under_init(&self, id: PeerId) -> bool {
        self.peer(id)
            .is_some_and(|p| p.tx_index(self.config.role) == INIT_SLOT)
    }

    /// Seals a handshake message for a peer under its init key (protocol version 3): under a key
    /// of its own, `HKDF-Expand(init secret, label ‖ fresh ‖ spi ‖ suite)`, with the 12 `fresh`
    /// bytes (from a CSPRNG, new for every message) carried in the clear as the ESP sequence
    /// number (4) and IV (8). Returns the ESP packet length.
    ///
    /// # Errors
    /// [`SealError::UnknownPeer`]; [`SealError::NoKey`] unless the engine runs
    /// [`EngineConfig::handshake_init`]; size errors as [`Self::seal`].
    pub fn seal_handshake(
        &mut self,
        id: PeerId,
        message: &[u8],
        out: &mut [u8],
        fresh: [u8; 12],
    ) -> Result<usize, SealError> {
        if !self.config.handshake_init {
            return Err(SealError::NoKey);
        }
        let peer = self.peer(id).ok_or(SealError::UnknownPeer)?;
        let direction = peer.dirs.0;
        let r = SaRef::new(id.0, INIT_SLOT);
        let sa = self.sa(r).ok_or(SealError::UnknownPeer)?;
        let area = out
            .get_mut(ESP_HEADER_LEN..ESP_HEADER_LEN + message.len())
            .ok_or(SealError::BufferTooSmall)?;
        area.copy_from_slice(message);
        let keyed = handshake_key(sa, self.config.backend, direction, &fresh)
            .map_err(|_| SealError::UnknownPeer)?;
        let mut packet = Packet::new(out, message.len());
        Batch(core::slice::from_mut(&mut packet)).seal_validate(
            Some(NextHeader::Control),
            self.config.max_esp_len,
            r,
        );
        if packet.sa.is_none() {
            return packet.sealed();
        }
        packet.prepare_handshake_seal(sa.info.spi.get(), &fresh, keyed.salt);
        keyed.key.seal_batch(core::slice::from_mut(&mut packet));
        Batch(core::slice::from_mut(&mut packet)).seal_finish();
        packet.sealed()
    }

    /// Seals a batch of inner IP packets for one peer (next header from each packet's IP
    /// version). Each packet's result is in [`Packet::sealed`].
    pub fn seal_batch(&mut self, id: PeerId, packets: &mut [Packet<'_>]) {
        self.seal_packets(id, packets, None);
    }

    fn seal_packets(&mut self, id: PeerId, packets: &mut [Packet<'_>], next: Option<NextHeader>) {
        let Some(peer) = self.peer(id) else {
            for p in packets.iter_mut() {
                p.state = State::SealFailed(SealError::UnknownPeer);
            }
            return;
        };
        let r = SaRef::new(id.0, peer.tx_index(self.config.role));
        if self.handshake_only(r) || self.sa(r).is_some_and(Sa::receive_only) {
            // Version 3: nothing but handshake messages under the init key, and nothing under a
            // generation marked receive-only.
            for p in packets.iter_mut() {
                p.state = State::SealFailed(SealError::NoKey);
            }
            return;
        }
        let max_esp = self.config.max_esp_len;
        let seq_limit = self.seq_limit;
        let esn = self.config.esn;
        let backend = self.config.backend;
        let direction = peer.dirs.0;
        // Pass 1: validate, assign sequence numbers, write header and trailer.
        let Some(sa) = self.sa_mut(r) else { return };
        let spi = sa.info.spi.get();
        // A control message under a key not in use for data: derive it for this message only.
        let key = match (sa.tx_expanded(), next) {
            (Some(k), _) => Ok(TxKey::Cached(Arc::clone(k))),
            (None, Some(NextHeader::Control)) => sa.derive(backend, direction).map(TxKey::Once),
            (None, _) => sa
                .tx(backend, direction)
                .map(|k| TxKey::Cached(Arc::clone(k))),
        };
        let Ok(key) = key else {
            for p in packets.iter_mut() {
                p.state = State::SealFailed(SealError::UnknownPeer);
            }
            return;
        };
        let params = SealParams {
            spi,
            salt: key.salt,
            esn,
            seq_limit,
        };
        let valid = Batch(packets).seal_validate(next, max_esp, r);
        let first = sa.reserve_seq(valid);
        Batch(packets).seal_prepare(&params, first);
        // Pass 2: encrypt all of them under one key.
        key.key.seal_batch(packets);
        // Pass 3: results and counters.
        let counts = Batch(packets).seal_finish();
        let counters = sa.counters_mut();
        counters.bytes_sealed += counts.bytes_sealed;
    }

    /// Seals one IP packet for a peer in ESP transport mode inside UDP (RFC 4303 §3.1.1,
    /// RFC 3948; see [`crate::wire::transport`]): the IP header stays in front (protocol 17,
    /// lengths and IPv4 checksum fixed), then a UDP header with `ports`, then ESP over the
    /// transport payload with next header = its protocol.
    ///
    /// The IPv4 or IPv6 packet sits at `buf[TRANSPORT_HEADROOM..][..len]`; the buffer needs
    /// room for at most `len + TRANSPORT_OVERHEAD` bytes. Returns the length of the
    /// transport-mode packet at `buf[..n]`.
    ///
    /// # Errors
    /// As [`Self::seal`], and [`SealError::Fragment`], [`SealError::UnsupportedExtension`],
    /// [`SealError::UnsupportedProtocol`] or [`SealError::BadInnerPacket`] for a packet
    /// transport mode does not take; on error the packet is still at
    /// `buf[TRANSPORT_HEADROOM..]` and no sequence number is consumed.
    ///
    /// [`TRANSPORT_HEADROOM`]: crate::wire::TRANSPORT_HEADROOM
    /// [`TRANSPORT_OVERHEAD`]: crate::wire::TRANSPORT_OVERHEAD
    pub fn seal_transport(
        &mut self,
        id: PeerId,
        buf: &mut [u8],
        len: usize,
        ports: UdpPorts,
    ) -> Result<usize, SealError> {
        IpLayout::seal(buf, len, ports, |esp, n, next| self.seal(id, esp, n, next))
    }

    /// Opens one ESP packet (`buf` starts at the SPI) in place.
    pub fn open<'b>(&mut self, buf: &'b mut [u8]) -> Opened<'b> {
        self.open_one(buf, false)
    }

    /// Opens one received IP packet carrying ESP in UDP (`buf` starts at the IP header) in
    /// place, in either mode: what the trailer's next header says decides (see
    /// [`crate::wire::transport`]). Transport mode ([`NextHeader::Transport`]): the IP packet
    /// is restored (protocol, lengths and IPv4 checksum; the TCP, UDP or ICMPv6 checksum
    /// recomputed over the received addresses) at `buf[TRANSPORT_HEADROOM..]`. Tunnel mode
    /// (next header 4 or 41): the inner packet, as [`Self::open`] gives it. The UDP ports are
    /// not checked (the caller chose to hand this packet over as ESP in UDP).
    ///
    /// Drops are counted as [`Self::open`]'s, and so are those of the IP and UDP headers:
    /// [`DropReason::Truncated`], [`DropReason::Malformed`] (lengths, IPv4 header checksum),
    /// [`DropReason::Fragment`], [`DropReason::NotEsp`] (not UDP, or after an IPv6 extension
    /// header other than hop-by-hop and destination options; the non-ESP marker),
    /// [`DropReason::Keepalive`].
    ///
    /// [`TRANSPORT_HEADROOM`]: crate::wire::TRANSPORT_HEADROOM
    pub fn open_transport<'b>(&mut self, buf: &'b mut [u8]) -> Opened<'b> {
        let (layout, esp, _) = match IpLayout::parse_received(buf) {
            Ok(v) => v,
            Err(reason) => {
                self.drops.add(reason);
                return Opened::Drop(reason);
            }
        };
        let esp_start = esp.start;
        match self.open_one(&mut buf[esp], true) {
            Opened::Data {
                packet,
                next_header,
                info,
            } => {
                let len = packet.len();
                let at = layout.restore(buf, esp_start, len, next_header);
                Opened::Data {
                    packet: &mut buf[at],
                    next_header,
                    info,
                }
            }
            Opened::Control { message, info } => {
                let at = esp_start + ESP_HEADER_LEN..esp_start + ESP_HEADER_LEN + message.len();
                Opened::Control {
                    message: &buf[at],
                    info,
                }
            }
            Opened::Drop(reason) => Opened::Drop(reason),
        }
    }

    /// Counts a drop decided before the engine saw the ESP packet (its IP or UDP header).
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.drops.add(reason);
    }

    /// Opens one ESP packet in place, accepting transport-mode payloads or not.
    fn open_one<'b>(&mut self, buf: &'b mut [u8], transport: bool) -> Opened<'b> {
        let len = buf.len();
        let mut packet = Packet::new(buf, len);
        packet.transport = transport;
        self.open_packets(core::slice::from_mut(&mut packet));
        let outcome = packet.opened();
        let buf = packet.buf;
        match outcome {
            OpenOutcome::Data {
                len,
                next_header,
                info,
            } => Opened::Data {
                packet: &mut buf[ESP_HEADER_LEN..ESP_HEADER_LEN + len],
                next_header,
                info,
            },
            OpenOutcome::Control { len, info } => Opened::Control {
                message: &buf[ESP_HEADER_LEN..ESP_HEADER_LEN + len],
                info,
            },
            OpenOutcome::Drop(reason) => Opened::Drop(reason),
        }
    }

    /// Opens a batch of ESP packets in place; each result is in [`Packet::opened`]. Runs of
    /// packets under the same SPI are authenticated with one batched AEAD call.
    pub fn open_batch(&mut self, packets: &mut [Packet<'_>]) {
        self.open_packets(packets);
    }

    /// [`Self::open_batch`] in the mode each packet's `transport` says (tunnel mode unless
    /// [`Self::open_one`] set it).
    fn open_packets(&mut self, packets: &mut [Packet<'_>]) {
        // A key not yet expanded is derived for this batch only, and cached once a data packet
        // opens under it (control messages alone never cache one).
        let mut once: Option<(SaRef, Keyed)> = None;
        // Pass 1: parse, look up the SPI, infer the ESN, check the replay window.
        for p in packets.iter_mut() {
            p.state = State::Pending;
            p.sa = None;
            match self.prepare_open(p, &mut once) {
                Ok(()) => {}
                Err(reason) => p.state = State::Opened(OpenOutcome::Drop(reason)),
            }
        }
        // Pass 2: authenticate and decrypt, one AEAD call per run of the same SA.
        Batch(packets).runs(|r, run| {
            let key = match &once {
                Some((o, k)) if *o == r => Some(k),
                _ => self.sa(r).and_then(Sa::rx_expanded),
            };
            if let Some(keyed) = key {
                keyed.key.open_batch(run);
            }
        });
        // Pass 3: update the window (only now: after authentication), parse the trailer, count.
        let mut carried_data = false;
        for p in packets.iter_mut() {
            let outcome = self.finish_open(p);
            match outcome {
                OpenOutcome::Drop(reason) => self.drops.add(reason),
                OpenOutcome::Data { .. } => {
                    carried_data |= once.as_ref().is_some_and(|(o, _)| p.sa == Some(*o));
                }
                OpenOutcome::Control { .. } => {}
            }
            p.state = State::Opened(outcome);
        }
        if carried_data
            && let Some((r, key)) = once
            && let Some(sa) = self.sa_mut(r)
        {
            sa.cache_rx(key);
        }
    }

    fn prepare_open(
        &mut self,
        p: &mut Packet<'_>,
        once: &mut Option<(SaRef, Keyed)>,
    ) -> Result<(), DropReason> {
        let (header, ct_len) = p.parse_esp(self.config.max_esp_len)?;
        let r = self.spis.get(header.spi).ok_or(DropReason::UnknownSpi)?;
        let esn = self.config.esn;
        let backend = self.config.backend;
        let direction = self
            .peer(PeerId(r.peer()))
            .map_or(Direction::GroupSender, |p| p.dirs.1);
        let handshake = self.handshake_only(r);
        let sa = self.sa_mut(r).ok_or(DropReason::UnknownSpi)?;
        // From here on drops are also counted against this SA.
        p.sa = Some(r);
        if handshake {
            let keyed = handshake_key(sa, backend, direction, &header.fresh())
                .map_err(|_| DropReason::Malformed)?;
            p.open_inline(&header, ct_len, &keyed);
            return Ok(());
        }
        let init = r.slot() == INIT_SLOT;
        let seq = match sa.full_window() {
            Some(w) => open_sequence(&header, init, esn, w)?,
            None => open_sequence(&header, init, esn, &sa.compact_window())?,
        };
        let salt = match (sa.rx_expanded(), &*once) {
            (Some(k), _) => k.salt,
            (None, Some((o, k))) if *o == r => k.salt,
            (None, None) => {
                let k = sa
                    .derive(backend, direction)
                    .map_err(|_| DropReason::Malformed)?;
                let salt = k.salt;
                *once = Some((r, k));
                salt
            }
            // A second new SA in one batch: cache it at once.
            (None, Some(_)) => {
                sa.rx(backend, direction)
                    .map_err(|_| DropReason::Malformed)?
                    .salt
            }
        };
        p.set_open_parameters(&header, seq, salt, esn, ct_len);
        Ok(())
    }

    fn finish_open(&mut self, p: &mut Packet<'_>) -> OpenOutcome {
        let r = match (p.state, p.sa) {
            (State::Pending, Some(r)) => r,
            (State::Opened(OpenOutcome::Drop(reason)), Some(r)) => {
                if let Some(sa) = self.sa_mut(r) {
                    sa.counters_mut().count_drop(reason);
                }
                return OpenOutcome::Drop(reason);
            }
            (State::Opened(o), None) => return o,
            _ => return OpenOutcome::Drop(DropReason::Truncated),
        };
        let seq = p.seq;
        let slot = self
            .peer(PeerId(r.peer()))
            .map_or(Slot::Init, |peer| peer.logical(r.slot()));
        let window = self.config.replay_window;
        let Some(sa) = self.sa_mut(r) else {
            return OpenOutcome::Drop(DropReason::UnknownSpi);
        };
        let info = OpenInfo {
            peer: PeerId(r.peer()),
            spi: sa.info.spi,
            generation: sa.info.number,
            slot,
            seq,
        };
        let outcome = p.outcome(info);
        // The window may have moved since the check before decryption (a later packet of this
        // batch): then the packet is too old, not a replay.
        let data = matches!(outcome, OpenOutcome::Data { .. });
        if p.inline {
            // A handshake message: no window (its freshness is the protocol's), no data.
            let outcome = outcome.as_handshake();
            if let OpenOutcome::Control { len, .. } = outcome {
                let counters = sa.counters_mut();
                counters.packets_opened += 1;
                counters.bytes_opened += len as u64;
            }
            return outcome;
        }
        if let Err(e) = sa.record(seq, data, window) {
            sa.counters_mut().count_replay();
            return OpenOutcome::Drop(DropReason::from(e));
        }
        if let OpenOutcome::Data { len, .. } | OpenOutcome::Control { len, .. } = outcome {
            let counters = sa.counters_mut();
            counters.packets_opened += 1;
            counters.bytes_opened += len as u64;
        }
        outcome
    }
}

/// The transmit key of one seal call: the SA's cached one, or one derived for a control message.
// It lives on the stack for one call; boxing the large variant would bring back the allocation
// it exists to avoid.
#[allow(clippy::large_enum_variant)]
enum TxKey {
    Cached(Arc<Keyed>),
    Once(Keyed),
}

impl core::ops::Deref for TxKey {
    type Target = Keyed;
    fn deref(&self) -> &Keyed {
        match self {
            TxKey::Cached(k) => k,
            TxKey::Once(k) => k,
        }
    }
}
