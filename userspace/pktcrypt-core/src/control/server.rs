//! The key server (key transmitting device): one instance serves many clients.
//!
//! Per client it keeps the engine's three slots (init, N, N-1) and a small record: where the
//! client was last seen, the newest generation it has *proven* it holds (by sending anything
//! under that generation's SPI), a pending distribution and a few deadlines. Rules (spec §3, §4):
//!
//! - A new generation N+1 is minted only when the client has proven N: the sides are never more
//!   than one generation apart. The server then holds {N+1, N} and transmits with N.
//! - `KEY_INIT_REQUEST` (protocol version 3) is answered with a candidate generation 1 bound to
//!   the request (its transcript hash, and with a key exchange the client's ephemeral share),
//!   sent back no larger than the request; nothing the server relies on changes until the client
//!   proves generation 1 with `KEY_INIT_CONFIRM`: only then are its old generations dropped
//!   (S6: a restarted client). A replayed request costs one exchange and a bounded entry; a
//!   replayed confirmation matches no candidate (each has fresh server randomness).
//! - Rotations exchange new ephemerals as the PFS policy ([`Pfs`]) says: from the key share of
//!   the client's `KEY_UPDATE_REQUEST`, or after asking for one with `KEY_UPDATE_NEEDED`.
//! - `KEY_UPDATE_REQUEST` under N rotates (S2); `KEY_RESEND_REQUEST` re-sends the same newest
//!   generation, minting nothing (S3); a client seen transmitting under N while the server holds
//!   an unproven N+1 gets N+1 re-sent without asking (S4).
//! - The server's own rekey timer (S7) and the rekey triggers mark a client as due; it rotates at
//!   the next proof that the client holds N. Rekeys are rate-limited by a token bucket and the
//!   timers are jittered, so thousands of clients do not rotate in the same second.
//!
//! Memory per client is the scaling limit (a key server may hold millions), so the per-client
//! record is one 64-byte cache line, and only clients with something in flight (a
//! distribution awaiting its proof, a deferred rotation) have entries in the timer heap. The
//! two timers every client has, the server-timed rekey and the idle key eviction, have no entry
//! and no deadline field: an incremental sweep visits a chunk of clients per tick and every
//! client within one sweep period, computing the rekey deadline from the newest generation's
//! install time and a jitter drawn from its SPI.

use super::client::{INIT_LABEL, UPDATE_LABEL, exchange_hash};
use super::message::{Biscuit, Distribution, KeyMaterial, Message, Reassembler};
use super::{
    Incoming, Random, RekeyTriggers, SCRATCH_LEN, TokenBucket, Transmit, backoff, jittered,
    jittered_by, nanos, seal_messages, with_message,
};
use crate::engine::Installed;
use crate::kex::{KeyShare, Schedule, respond, transcript};
use crate::{
    Engine, EngineConfig, Error, Generation, GenerationInfo, OpenInfo, Opened, PeerId, Role,
    Secret, Slot, Spi, Suite, Time, TxRule,
};
use core::net::SocketAddr;
use core::time::Duration;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// When rotations exchange fresh ephemeral keys (forward secrecy; `docs/protocol.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pfs {
    /// Never: the init handshake and every rotation distribute (or derive) the secret under the
    /// previous one. Whoever holds the init key and a capture reads everything. For comparison
    /// and benchmarks only.
    Off,
    /// The init handshake exchanges ephemerals; rotations ratchet from it (distribution or
    /// derived mode).
    InitOnly,
    /// Every rotation exchanges ephemerals (the default).
    EveryRekey,
    /// The init handshake and every Nth rotation exchange ephemerals; in between rotations
    /// ratchet from the last exchanged secret.
    Every(u32),
}

impl Pfs {
    /// Whether minting `generation` exchanges ephemerals.
    pub fn exchanges(self, generation: u64) -> bool {
        match self {
            Pfs::Off => false,
            Pfs::InitOnly => generation <= 1,
            Pfs::EveryRekey => true,
            Pfs::Every(n) => {
                generation <= 1 || (generation - 1).is_multiple_of(u64::from(n.max(1)))
            }
        }
    }
}

impl core::fmt::Display for Pfs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Pfs::Off => f.write_str("off"),
            Pfs::InitOnly => f.write_str("init-only"),
            Pfs::EveryRekey => f.write_str("every-rekey"),
            Pfs::Every(n) => write!(f, "{n}"),
        }
    }
}

impl core::str::FromStr for Pfs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Pfs::Off),
            "init-only" => Ok(Pfs::InitOnly),
            "every-rekey" => Ok(Pfs::EveryRekey),
            n => match n.parse::<u32>() {
                Ok(0) | Err(_) => Err(format!(
                    "pfs must be \"every-rekey\", \"init-only\", \"off\" or a positive number, not {n:?}"
                )),
                Ok(1) => Ok(Pfs::EveryRekey),
                Ok(n) => Ok(Pfs::Every(n)),
            },
        }
    }
}

/// Key server configuration. Every timeout is configurable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Data-plane settings (the role is forced to [`Role::KeyServer`]).
    pub engine: EngineConfig,
    /// Suite of newly minted generations (changing it switches suite at the next rekey),
    /// unless [`Self::suite_rotation`] lists suites or the client has a suite of its own
    /// ([`KeyServer::set_client_suite`]).
    pub suite: Suite,
    /// Suites that generations rotate through (cipher agility at every rekey, spec §7): a
    /// client's generation `n` (`n` ≥ 1; an init handshake starts again at 1) gets
    /// `suite_rotation[(n - 1) % len]`, unless the client has a suite of its own. Stateless:
    /// the suite follows from the generation number alone. Empty (the default): every
    /// generation gets [`Self::suite`]. See [`KeyServer::suite_for`].
    pub suite_rotation: Vec<Suite>,
    /// Derived-key mode (spec §5): distributions carry a nonce, not the secret.
    pub derived: bool,
    /// Server-timed update (S7): rotate each client this often (jittered). `None`: only on
    /// request or trigger.
    pub rekey_interval: Option<Duration>,
    /// Jitter applied to rekey timers, in permille (±).
    pub rekey_jitter_permille: u32,
    /// Rekeys minted per second at most, over all clients (token bucket; burst = the rate).
    pub max_rekeys_per_second: u32,
    /// First retransmission of an unproven distribution.
    pub distribution_retry: Duration,
    /// Largest retransmission interval.
    pub distribution_max_backoff: Duration,
    /// Retransmissions before the client is reported unresponsive (the server then waits for
    /// the client to ask).
    pub distribution_retries: u32,
    /// Smallest interval between two implicit resends to one client (S4).
    pub implicit_resend_interval: Duration,
    /// Rekey triggers on the generation the client transmits with.
    pub triggers: RekeyTriggers,
    /// Drop expanded keys of clients idle this long (they are re-derived on the next packet).
    pub idle_evict: Option<Duration>,
    /// Longest reordering expected between a data packet and a later control message. The
    /// server mints N+2 no sooner than this after the client proved N+1 (so the client's
    /// traffic under N has arrived before N is forgotten), and sends N+2 no sooner than this
    /// after minting it (so its own traffic under N arrives before the client forgets N).
    pub reorder_grace: Duration,
    /// When rotations exchange fresh ephemeral keys.
    pub pfs: Pfs,
    /// Init handshakes answered per second at most, over all clients (token bucket; each costs
    /// a key exchange, and requests under the init key may be replays). Requests beyond it are
    /// dropped (`handshake_rate_limited`); clients retry with back-off.
    pub max_handshakes_per_second: u32,
    /// How long an answered init handshake waits for its confirmation.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    /// Defaults: AES-256-GCM, secret mode, hourly jittered rekeys, 1000 rekeys/s.
    pub fn new() -> Self {
        let engine = EngineConfig::new(Role::KeyServer);
        Self {
            suite: Suite::Aes256Gcm,
            suite_rotation: Vec::new(),
            derived: false,
            rekey_interval: Some(Duration::from_secs(3600)),
            rekey_jitter_permille: 100,
            max_rekeys_per_second: 1000,
            distribution_retry: Duration::from_millis(500),
            distribution_max_backoff: Duration::from_secs(8),
            distribution_retries: 6,
            implicit_resend_interval: Duration::from_millis(500),
            triggers: RekeyTriggers::for_suite(Suite::Aes256Gcm, engine.max_esp_len),
            idle_evict: Some(Duration::from_secs(300)),
            reorder_grace: Duration::from_millis(250),
            pfs: Pfs::EveryRekey,
            max_handshakes_per_second: 5000,
            handshake_timeout: Duration::from_secs(60),
            engine,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What the key server tells the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A client (re)started from its init key.
    ClientInit {
        /// The client.
        peer: PeerId,
    },
    /// A generation was minted for a client and sent.
    KeyMinted {
        /// The client.
        peer: PeerId,
        /// The new generation.
        generation: GenerationInfo,
    },
    /// A generation was forgotten.
    Retired {
        /// The client.
        peer: PeerId,
        /// The forgotten generation.
        generation: GenerationInfo,
    },
    /// The client proved it holds `generation` (it sent under its SPI).
    Proven {
        /// The client.
        peer: PeerId,
        /// Generation number.
        generation: u64,
    },
    /// The newest generation was sent again.
    Resent {
        /// The client.
        peer: PeerId,
        /// Generation number.
        generation: u64,
        /// True when the server noticed by itself (S4), false when asked (S3).
        implicit: bool,
    },
    /// A distribution went unproven through all retransmissions.
    Unresponsive {
        /// The client.
        peer: PeerId,
        /// The unproven generation.
        generation: u64,
    },
    /// A rekey trigger fired for a client.
    Triggered {
        /// The client.
        peer: PeerId,
        /// Which trigger.
        reason: &'static str,
    },
}

/// An outstanding distribution, kept until the client proves it.
#[derive(Clone, Debug)]
struct Pending {
    dist: Distribution,
    msg_id: u32,
    retries: u32,
    next_at: u64,
    /// Not sent before this time (the reorder grace after a mint).
    not_before: u64,
    /// Last implicit resend (S4), to rate-limit them.
    last_resend: u64,
}

/// A client's address, compact (the standard `SocketAddr` is 32 bytes; IPv6 flow labels are
/// not kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerAddr {
    ip: [u8; 16],
    scope_id: u32,
    port: u16,
    v6: bool,
}

impl PeerAddr {
    fn new(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(a) => Self {
                ip: a.ip().to_ipv6_mapped().octets(),
                scope_id: 0,
                port: a.port(),
                v6: false,
            },
            SocketAddr::V6(a) => Self {
                ip: a.ip().octets(),
                scope_id: a.scope_id(),
                port: a.port(),
                v6: true,
            },
        }
    }

    fn get(self) -> SocketAddr {
        let ip = core::net::Ipv6Addr::from(self.ip);
        match (self.v6, ip.to_ipv4_mapped()) {
            (false, Some(v4)) => SocketAddr::new(v4.into(), self.port),
            _ => core::net::SocketAddrV6::new(ip, self.port, 0, self.scope_id).into(),
        }
    }
}

/// [`ClientState::flags`].
mod flag {
    /// The newest generation (`proven + 1`) is not proven yet; a distribution is pending.
    pub(super) const UNPROVEN: u8 = 1;
    /// Rotate at the next proof of the newest generation.
    pub(super) const REKEY_WANTED: u8 = 2;
    /// The newest generation came from a key exchange (the server cannot send it again).
    pub(super) const EXCHANGED: u8 = 4;
    /// A `Deferred` timer is in the heap.
    pub(super) const DEFERRED: u8 = 8;
    /// The engine transmits to this client under its newest generation (generation 1 right
    /// after an init handshake), not by the role rule.
    pub(super) const TX_NEWEST: u8 = 32;
    /// Keys may be expanded: data since the last idle eviction (a control message alone expands
    /// none, but it is not told apart here; evicting an SA with nothing to free is cheap).
    pub(super) const EXPANDED: u8 = 16;
    /// The two top bits: the client's own suite of future generations, as its wire id (1..=3;
    /// 0: none, the server-wide suite or rotation). Kept in the flags so that the record stays
    /// one cache line.
    pub(super) const SUITE_SHIFT: u32 = 6;
    /// The mask of [`SUITE_SHIFT`]'s bits.
    pub(super) const SUITE_MASK: u8 = 0b1100_0000;
}

/// Per-client control state: one cache line (a key server may hold millions; a test pins the
/// size).
#[derive(Debug)]
struct ClientState {
    addr: Option<PeerAddr>,
    /// Highest generation proven (0: none beyond the init key). The newest generation held is
    /// this, plus one while [`flag::UNPROVEN`].
    proven: u64,
    /// When it was first proven.
    proven_at: u64,
    /// Last authentic packet from the client.
    last_rx: u64,
    pending: Option<Box<Pending>>,
    /// When `KEY_UPDATE_NEEDED` was last sent (milliseconds, wrapping).
    needed_at: u32,
    flags: u8,
}

impl ClientState {
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    fn set(&mut self, f: u8, on: bool) {
        if on {
            self.flags |= f;
        } else {
            self.flags &= !f;
        }
    }

    /// Newest generation held (0: init key only).
    fn newest(&self) -> u64 {
        self.proven + u64::from(self.has(flag::UNPROVEN))
    }

    /// The client's own suite of future generations, if it has one.
    fn suite(&self) -> Option<Suite> {
        Suite::from_id((self.flags & flag::SUITE_MASK) >> flag::SUITE_SHIFT)
    }

    fn set_suite(&mut self, suite: Option<Suite>) {
        let id = suite.map_or(0, Suite::id);
        debug_assert!(
            id <= flag::SUITE_MASK >> flag::SUITE_SHIFT,
            "suite ids fit two bits"
        );
        self.flags = (self.flags & !flag::SUITE_MASK) | (id << flag::SUITE_SHIFT);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Retry,
    Deferred,
}

/// Clients the sweep visits per tick.
const SWEEP_CHUNK: usize = 256;

/// Group messages held for the controller at most (it takes them after every datagram).
const INBOX_MAX: usize = 64;

/// The key server.
pub struct KeyServer {
    config: ServerConfig,
    engine: Engine,
    clients: Vec<Option<ClientState>>,
    /// Deadlines of in-flight work only (lazily deleted: an entry is checked against the
    /// client's state when it fires).
    timers: BinaryHeap<Reverse<(u64, u32, TimerKind)>>,
    /// The idle-eviction and rekey sweep: next client index and next tick (0: not running).
    sweep_cursor: usize,
    sweep_at: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ServerEvent>,
    rng: Box<dyn Random>,
    next_id: u32,
    rekeys: TokenBucket,
    out: Vec<u8>,
    /// Seals the state of answered init handshakes into biscuits (a key new at every start).
    biscuits: Box<BiscuitKey>,
    handshakes: TokenBucket,
    reassembly: Reassembler,
    /// Group messages for the controller (see [`Self::carry_group_messages`]).
    carry_group: bool,
    inbox: VecDeque<(PeerId, Message)>,
    /// SPI ranges (base, count) new generations must avoid: a group controller's data SPIs.
    reserved: Vec<(u32, u32)>,
}

/// The key of this server's biscuits ([`super::message::Biscuit`]): ChaCha20-Poly1305 under a
/// random key drawn at start (so a biscuit never outlives the process that made it), with a
/// counter nonce.
struct BiscuitKey {
    key: crate::aead::AeadKey,
    counter: u64,
}

/// What a biscuit holds: the candidate generation 1 of one handshake.
struct Candidate {
    generation: Generation,
    transcript: [u8; 32],
    exchanged: bool,
    created: u64,
}

impl BiscuitKey {
    const PLAIN: usize = 4 + 1 + 1 + 8 + 32 + 32;

    fn new(rng: &mut dyn Random) -> Result<Self, Error> {
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill(&mut *k);
        Ok(Self {
            key: crate::aead::Backend::RustCrypto.key(Suite::ChaCha20Poly1305, &*k)?,
            counter: 0,
        })
    }

    fn aad(peer: PeerId, echo: &[u8; 32]) -> [u8; 13 + 4 + 32] {
        let mut aad = [0u8; 13 + 4 + 32];
        aad[..13].copy_from_slice(b"pktc3 biscuit");
        aad[13..17].copy_from_slice(&peer.0.to_be_bytes());
        aad[17..].copy_from_slice(echo);
        aad
    }

    fn seal(&mut self, peer: PeerId, echo: &[u8; 32], c: &Candidate) -> Biscuit {
        use super::message::BISCUIT_LEN;
        self.counter += 1;
        let mut nonce = [0u8; crate::aead::NONCE_LEN];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        let mut plain = zeroize::Zeroizing::new([0u8; Self::PLAIN]);
        plain[..4].copy_from_slice(&c.generation.info.spi.get().to_be_bytes());
        plain[4] = c.generation.info.suite.id();
        plain[5] = u8::from(c.exchanged);
        plain[6..14].copy_from_slice(&c.created.to_be_bytes());
        plain[14..46].copy_from_slice(c.generation.secret.expose());
        plain[46..].copy_from_slice(&c.transcript);
        let tag = self.key.seal(&nonce, &Self::aad(peer, echo), &mut *plain);
        let mut out = Box::new([0u8; BISCUIT_LEN]);
        out[..8].copy_from_slice(&self.counter.to_be_bytes());
        out[8..8 + Self::PLAIN].copy_from_slice(&*plain);
        out[8 + Self::PLAIN..].copy_from_slice(&tag);
        Biscuit(out)
    }

    fn open(&self, peer: PeerId, echo: &[u8; 32], b: &Biscuit) -> Option<Candidate> {
        let mut nonce = [0u8; crate::aead::NONCE_LEN];
        nonce[4..].copy_from_slice(&b.0[..8]);
        let mut plain = zeroize::Zeroizing::new([0u8; Self::PLAIN]);
        plain.copy_from_slice(&b.0[8..8 + Self::PLAIN]);
        let tag: [u8; crate::aead::TAG_LEN] = b.0[8 + Self::PLAIN..].try_into().ok()?;
        self.key
            .open(&nonce, &Self::aad(peer, echo), &mut *plain, &tag)
            .ok()?;
        let spi = Spi::new(u32::from_be_bytes(plain[..4].try_into().ok()?)).ok()?;
        let suite = Suite::from_id(plain[4])?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&plain[14..46]);
        let generation = Generation {
            info: GenerationInfo {
                number: 1,
                spi,
                suite,
            },
            secret: Secret::from_bytes(secret),
        };
        zeroize::Zeroize::zeroize(&mut secret);
        Some(Candidate {
            generation,
            transcript: plain[46..].try_into().ok()?,
            exchanged: plain[5] == 1,
            created: u64::from_be_bytes(plain[6..14].try_into().ok()?),
        })
    }
}

impl std::fmt::Debug for KeyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServer")
            .field("engine", &self.engine)
            .field("pending_timers", &self.timers.len())
            .finish_non_exhaustive()
    }
}

impl KeyServer {
    /// A key server with no clients yet.
    ///
    /// # Errors
    /// Invalid engine configuration.
    pub fn new(mut config: ServerConfig, mut rng: Box<dyn Random>) -> Result<Self, Error> {
        config.engine.role = Role::KeyServer;
        config.engine.handshake_init = true;
        let engine = Engine::new(config.engine.clone())?;
        let next_id = u32::try_from(rng.next_u64() >> 33).unwrap_or(1);
        let biscuits = Box::new(BiscuitKey::new(rng.as_mut())?);
        Ok(Self {
            rekeys: TokenBucket::new(config.max_rekeys_per_second),
            handshakes: TokenBucket::new(config.max_handshakes_per_second),
            config,
            engine,
            clients: Vec::new(),
            timers: BinaryHeap::new(),
            sweep_cursor: 0,
            sweep_at: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            next_id,
            out: vec![0u8; SCRATCH_LEN],
            biscuits,
            reassembly: Reassembler::new(1024),
            carry_group: false,
            inbox: VecDeque::new(),
            reserved: Vec::new(),
        })
    }

    /// The data-plane engine (status, counters, data sealing).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, for [`super::Endpoint`] (change tracking and data-plane updates).
    pub(crate) fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Drops a client's expanded AEAD keys now (the idle timer does this after `idle_evict`);
    /// they are derived again from the secrets on its next packet.
    pub fn evict_keys(&mut self, peer: PeerId) {
        self.engine.evict_keys(peer);
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Changes the forward-secrecy policy of future rotations.
    pub fn set_pfs(&mut self, pfs: Pfs) {
        self.config.pfs = pfs;
    }

    /// Changes the suite of future generations of every client without a suite of its own
    /// (cipher agility, spec §7), and ends a rotation ([`ServerConfig::suite_rotation`]). Each
    /// generation carries its suite and the receiver picks key and suite by SPI, so the switch
    /// happens at each client's next rekey without interrupting its traffic.
    pub fn set_suite(&mut self, suite: Suite) {
        self.config.suite = suite;
        self.config.suite_rotation.clear();
    }

    /// Makes future generations rotate through `suites` (see
    /// [`ServerConfig::suite_rotation`]); [`ServerConfig::suite`] becomes the first. Empty:
    /// no rotation, every generation gets [`ServerConfig::suite`]. Clients with a suite of
    /// their own keep it.
    pub fn set_suite_rotation(&mut self, suites: Vec<Suite>) {
        if let Some(&first) = suites.first() {
            self.config.suite = first;
        }
        self.config.suite_rotation = suites;
    }

    /// Gives `peer` a suite of its own for its future generations (over the server-wide suite
    /// or rotation), or takes it away (`None`). Kept in the client's record without growing
    /// it; it lasts until changed or the client is removed (an init handshake keeps it).
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn set_client_suite(&mut self, peer: PeerId, suite: Option<Suite>) -> Result<(), Error> {
        self.client(peer)
            .ok_or(Error::UnknownPeer)?
            .set_suite(suite);
        Ok(())
    }

    /// The suite of `peer`'s own (see [`Self::set_client_suite`]), if it has one.
    pub fn client_suite(&self, peer: PeerId) -> Option<Suite> {
        self.clients.get(peer.0 as usize)?.as_ref()?.suite()
    }

    /// The suite generation `generation` of `peer` gets when it is minted: the client's own
    /// suite, else the rotation's (`suite_rotation[(generation - 1) % len]`), else
    /// [`ServerConfig::suite`].
    pub fn suite_for(&self, peer: PeerId, generation: u64) -> Suite {
        if let Some(suite) = self.client_suite(peer) {
            return suite;
        }
        let r = &self.config.suite_rotation;
        if r.is_empty() {
            return self.config.suite;
        }
        let i = generation.saturating_sub(1) % r.len() as u64;
        r[usize::try_from(i).unwrap_or(0)]
    }

    /// Changes the rekey triggers (for example with the suites of a reloaded configuration).
    /// Whatever they say, a generation is rotated before its own suite's AEAD limits
    /// ([`RekeyTriggers::within_limits`]).
    pub fn set_triggers(&mut self, triggers: RekeyTriggers) {
        self.config.triggers = triggers;
    }

    /// Rekey on demand (an operator's `pktcrypt rekey`): `peer` is rotated at its next proof of
    /// its newest generation (any packet under it), as when a rekey trigger fires, within the
    /// rekey rate limit; reported as [`ServerEvent::Triggered`] with reason `"operator"`.
    /// `false` for an unknown client or one without a generation yet (its init handshake
    /// gives it a fresh one).
    pub fn rekey(&mut self, peer: PeerId) -> bool {
        let Some(c) = self.client(peer) else {
            return false;
        };
        if c.proven == 0 && !c.has(flag::UNPROVEN) {
            return false;
        }
        c.set(flag::REKEY_WANTED, true);
        self.events.push_back(ServerEvent::Triggered {
            peer,
            reason: "operator",
        });
        true
    }

    /// Adds a client provisioned with `init` (generation 0), optionally with a known address.
    ///
    /// # Errors
    /// As [`Engine::add_peer`].
    pub fn add_client(
        &mut self,
        init: &Generation,
        addr: Option<SocketAddr>,
        now: Time,
    ) -> Result<PeerId, Error> {
        let peer = self.engine.add_peer(init, now)?;
        let state = ClientState {
            addr: addr.map(PeerAddr::new),
            proven: 0,
            proven_at: 0,
            last_rx: nanos(now),
            pending: None,
            needed_at: 0,
            flags: 0,
        };
        if self.sweep_at == 0 {
            self.sweep_at = nanos(now).saturating_add(self.sweep_tick(1)).max(1);
        }
        let i = peer.0 as usize;
        if self.clients.len() <= i {
            self.clients.resize_with(i + 1, || None);
        }
        self.clients[i] = Some(state);
        Ok(peer)
    }

    /// Removes a client and its keys.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn remove_client(&mut self, peer: PeerId) -> Result<(), Error> {
        self.engine.remove_peer(peer)?;
        if let Some(c) = self.clients.get_mut(peer.0 as usize) {
            *c = None;
        }
        Ok(())
    }

    fn client(&mut self, peer: PeerId) -> Option<&mut ClientState> {
        self.clients.get_mut(peer.0 as usize)?.as_mut()
    }

    /// The newest generation a client has proven it holds.
    pub fn proven(&self, peer: PeerId) -> Option<u64> {
        Some(self.clients.get(peer.0 as usize)?.as_ref()?.proven)
    }

    /// The next timer deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        let heap = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let sweep = (self.sweep_at != 0 && self.sweep_period().is_some()).then_some(self.sweep_at);
        heap.into_iter().chain(sweep).min().map(Time::from_nanos)
    }

    /// How often the sweep visits every client: often enough that an idle client's keys go
    /// within 1.25 × `idle_evict` and a timed rekey is marked within 1/32 of its interval of
    /// the deadline (well inside the default ±10 % jitter). `None`: nothing to sweep for.
    fn sweep_period(&self) -> Option<u64> {
        let idle = self.config.idle_evict.map(|d| nanos(d) / 4);
        let rekey = self.config.rekey_interval.map(|d| nanos(d) / 16);
        let age = self.config.triggers.max_age.map(|d| nanos(d) / 16);
        let p = idle.into_iter().chain(rekey).chain(age).min()?;
        Some(p.max(1_000_000))
    }

    /// Time between two sweep ticks for `clients` clients (one chunk per tick).
    fn sweep_tick(&self, clients: usize) -> u64 {
        let period = self.sweep_period().unwrap_or(1_000_000_000);
        let chunks = clients.div_ceil(SWEEP_CHUNK).max(1) as u64;
        (period / chunks).max(100_000)
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Seals a data packet for a client (see [`Engine::seal`]).
    ///
    /// # Errors
    /// As [`Engine::seal`].
    pub fn seal(
        &mut self,
        peer: PeerId,
        buf: &mut [u8],
        len: usize,
        next: crate::wire::NextHeader,
    ) -> Result<usize, crate::SealError> {
        if let Some(c) = self.client(peer) {
            c.set(flag::EXPANDED, true);
        }
        self.engine.seal(peer, buf, len, next)
    }

    /// Handles one received ESP packet (the UDP payload) from `from`.
    pub fn handle_datagram<'b>(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        buf: &'b mut [u8],
    ) -> Incoming<'b> {
        let opened = self.engine.open(buf);
        self.handle_opened(now, from, opened)
    }

    /// Handles a packet already opened elsewhere, by a data-plane worker holding this server's
    /// [`Self::data_plane`] (workers pass every control message this way, and data samples
    /// through [`Self::handle_sampled`]).
    pub fn handle_opened<'b>(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        opened: Opened<'b>,
    ) -> Incoming<'b> {
        match opened {
            Opened::Data {
                packet,
                next_header,
                info,
            } => {
                self.handle_sampled(now, from, &info);
                Incoming::Data {
                    peer: info.peer,
                    packet,
                    next_header,
                    generation: info.generation,
                }
            }
            Opened::Control { message, info } => {
                let peer = info.peer;
                let key = u64::from(peer.0);
                // The reassembler is set aside while the message is handled (it needs `self`).
                let mut reassembly = std::mem::replace(&mut self.reassembly, Reassembler::new(1));
                let handled = with_message(
                    &mut reassembly,
                    now,
                    key,
                    info.spi.get(),
                    message,
                    |msg, id, body| {
                        if info.slot != Slot::Init {
                            self.on_authentic(now, from, peer, info.slot, info.generation);
                        }
                        self.on_control(now, from, peer, info.slot, msg, id, body)
                    },
                );
                self.reassembly = reassembly;
                match handled {
                    Ok(None | Some(Ok(()))) => Incoming::Control { peer },
                    Ok(Some(Err(r))) | Err(r) => Incoming::Dropped(r),
                }
            }
            Opened::Drop(reason) => Incoming::Dropped(reason),
        }
    }

    /// Handles what a data-plane worker saw of a data packet it opened from `from` (a sample:
    /// at least the first packet of each generation from each peer, and one now and then):
    /// it tells the server which generation the peer transmits with, and where it is.
    pub fn handle_sampled(&mut self, now: Time, from: Option<SocketAddr>, info: &OpenInfo) {
        self.on_authentic(now, from, info.peer, info.slot, info.generation);
        self.check_triggers(now, info.peer);
    }

    fn on_authentic(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        peer: PeerId,
        slot: Slot,
        generation: u64,
    ) {
        let interval = nanos(self.config.implicit_resend_interval);
        let t = nanos(now);
        let Some(c) = self.client(peer) else { return };
        if let Some(from) = from {
            c.addr = Some(PeerAddr::new(from));
        }
        c.last_rx = t;
        c.set(flag::EXPANDED, true);
        let mut resend = false;
        let mut proven = None;
        let mut rotate = false;
        match slot {
            Slot::Newest if generation > c.proven => {
                c.proven = generation;
                c.proven_at = t;
                c.pending = None;
                c.set(flag::UNPROVEN, false);
                proven = Some(generation);
                rotate = c.has(flag::REKEY_WANTED);
            }
            Slot::Newest => rotate = c.has(flag::REKEY_WANTED),
            Slot::Previous => {
                // S4: the client still transmits under N while N+1 exists: it lacks N+1.
                if let Some(p) = c.pending.as_deref_mut()
                    && t.saturating_sub(p.last_resend) >= interval
                {
                    p.last_resend = t;
                    resend = true;
                }
            }
            Slot::Init => {}
        }
        if let Some(generation) = proven {
            self.events
                .push_back(ServerEvent::Proven { peer, generation });
        }
        if resend {
            self.resend(now, peer, true);
        }
        if rotate {
            self.try_rotate(now, peer, None);
        }
    }

    /// Handles one authentic, decoded control message (`body`: its bytes after the header, for
    /// transcript hashes).
    #[allow(clippy::too_many_arguments)]
    fn on_control(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        peer: PeerId,
        slot: Slot,
        msg: Message,
        id: u32,
        body: &[u8],
    ) -> Result<(), crate::DropReason> {
        use crate::DropReason::ControlUnexpected;
        let Some(c) = self.client(peer) else {
            return Err(ControlUnexpected);
        };
        let has_dynamic = c.newest() > 0;
        match (slot, msg) {
            (Slot::Init, Message::KeyInitRequest { share, .. }) => {
                self.on_init_request(now, from, peer, &share, body)
            }
            (Slot::Init, Message::KeyInitConfirm { echo, tag, biscuit }) => {
                self.on_init_confirm(now, from, peer, &echo, &tag, &biscuit)
            }
            // Version 3: nothing else travels under the init key.
            (Slot::Init, _) => Err(ControlUnexpected),
            (_, Message::KeyUpdateRequest { share, .. }) => {
                let share = share.map(|(_, share)| (share, transcript(UPDATE_LABEL, &[body])));
                match slot {
                    // Under N: rotate (a request repeated while N+1 is pending arrives under
                    // N-1, the previous slot, and gets the pending N+1 again below).
                    Slot::Newest => {
                        self.try_rotate(now, peer, share.as_ref().map(|(s, h)| (s, *h)));
                    }
                    _ if has_dynamic => self.requested_resend(now, peer),
                    _ => return Err(ControlUnexpected),
                }
                Ok(())
            }
            (_, Message::KeyResendRequest { .. }) => {
                self.requested_resend(now, peer);
                Ok(())
            }
            (_, Message::Hello { .. }) => {
                let newest = self.client(peer).map_or(0, |c| c.newest());
                self.send(peer, &Message::HelloReply { newest }, id);
                Ok(())
            }
            (_, Message::KeyAck { .. }) => Ok(()),
            (_, msg) if self.carry_group && msg.is_group() && self.inbox.len() < INBOX_MAX => {
                // A group controller's channel: the controller takes it from here.
                self.inbox.push_back((peer, msg));
                Ok(())
            }
            _ => Err(ControlUnexpected),
        }
    }

    /// Makes this server a group controller's control channel: group messages from clients
    /// (under a generation of the channel, never under the init key) are kept for
    /// [`Self::poll_message`] instead of being refused.
    pub(crate) fn carry_group_messages(&mut self) {
        self.carry_group = true;
    }

    /// The next group message a client sent over its channel.
    pub(crate) fn poll_message(&mut self) -> Option<(PeerId, Message)> {
        self.inbox.pop_front()
    }

    /// Sends `msg` to `peer` under the channel's current generation. `false` if the channel
    /// has none yet (the client has not completed its handshake): nothing is sent.
    pub(crate) fn send_message(&mut self, peer: PeerId, msg: &Message) -> bool {
        if self.engine.generation(peer, Slot::Newest).is_none()
            || self.engine.transmits_under_init(peer)
        {
            return false;
        }
        let id = self.fresh_id();
        self.send(peer, msg, id);
        true
    }

    /// SPI ranges (base, count) that new generations must not use (a group's data SPIs, which
    /// members look up in another engine).
    pub(crate) fn reserve_spis(&mut self, ranges: Vec<(u32, u32)>) {
        self.reserved = ranges;
    }

    /// The address the authenticated state knows for `peer` (where its last confirmation or
    /// packet under a generation came from).
    pub fn address(&self, peer: PeerId) -> Option<SocketAddr> {
        self.addr_of(peer)
    }

    /// Sets the address of `peer` (its configuration changed): messages go there until an
    /// authenticated packet comes from elsewhere. Keys and generations stay.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn set_address(&mut self, peer: PeerId, addr: SocketAddr) -> Result<(), Error> {
        let c = self.client(peer).ok_or(Error::UnknownPeer)?;
        c.addr = Some(PeerAddr::new(addr));
        Ok(())
    }

    /// A resend the client asked for, at most once per `implicit_resend_interval` (a small
    /// request must not draw a large answer again and again).
    fn requested_resend(&mut self, now: Time, peer: PeerId) {
        let interval = nanos(self.config.implicit_resend_interval);
        let t = nanos(now);
        let Some(c) = self.client(peer) else { return };
        if let Some(p) = c.pending.as_deref_mut() {
            if p.last_resend != 0 && t.saturating_sub(p.last_resend) < interval {
                return;
            }
            p.last_resend = t.max(1);
        }
        self.resend(now, peer, false);
    }

    /// An init request: answer with a candidate generation 1 bound to it, changing nothing:
    /// the candidate travels sealed in the answer's biscuit. The answer goes to where the
    /// request came from and is never larger than it (the request's padding sees to that).
    fn on_init_request(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        peer: PeerId,
        share: &KeyShare,
        body: &[u8],
    ) -> Result<(), crate::DropReason> {
        if !self.take_handshake_token(now) {
            return Err(crate::DropReason::HandshakeRateLimited);
        }
        let request_hash = transcript(INIT_LABEL, &[body]);
        let init = self
            .engine
            .secret(peer, Slot::Init)
            .cloned()
            .ok_or(crate::DropReason::UnknownSpi)?;
        let info = GenerationInfo {
            number: 1,
            spi: self.unused_spi(),
            suite: self.suite_for(peer, 1),
        };
        let exchanged = self.config.pfs.exchanges(1);
        let (material, shared) = if exchanged {
            let (reply, shared) = respond(share, self.rng.as_mut())
                .map_err(|_| crate::DropReason::ControlMalformed)?;
            (KeyMaterial::Exchange(reply), Some(shared))
        } else {
            let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
            self.rng.fill(&mut *bytes);
            if self.config.derived {
                (KeyMaterial::Nonce(*bytes), None)
            } else {
                (KeyMaterial::Secret(*bytes), None)
            }
        };
        let dist = Distribution {
            generation: 1,
            spi: info.spi.get(),
            suite: info.suite,
            echo: request_hash,
            material,
        };
        let th = exchange_hash(&request_hash, &dist);
        let secret = match (&dist.material, shared) {
            (_, Some(shared)) => Schedule::next_secret(&init, &shared, &th, info),
            (KeyMaterial::Secret(b), None) => Secret::from_bytes(*b),
            (KeyMaterial::Nonce(n), None) => init.derive_next(n, info),
            (KeyMaterial::Exchange(_), None) => return Err(crate::DropReason::ControlMalformed),
        };
        let candidate = Candidate {
            generation: Generation { info, secret },
            transcript: th,
            exchanged,
            created: nanos(now),
        };
        let biscuit = self.biscuits.seal(peer, &request_hash, &candidate);
        self.send_to(peer, from, &Message::KeyInitReply { dist, biscuit });
        Ok(())
    }

    /// An init confirmation: if its biscuit is ours, fresh, newer than anything the client
    /// proved, and the tag proves generation 1, the client restarted (S6): its old generations
    /// go and the candidate becomes generation 1, proven.
    fn on_init_confirm(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        peer: PeerId,
        echo: &[u8; 32],
        tag: &[u8; 32],
        biscuit: &Biscuit,
    ) -> Result<(), crate::DropReason> {
        use crate::DropReason::StaleHandshake;
        let t = nanos(now);
        let c = self
            .biscuits
            .open(peer, echo, biscuit)
            .ok_or(StaleHandshake)?;
        if !Schedule::verify_confirm(&c.generation.secret, &c.transcript, tag) {
            return Err(StaleHandshake);
        }
        let info = c.generation.info;
        if self
            .engine
            .generation(peer, Slot::Newest)
            .is_some_and(|g| g == info)
        {
            // Confirmed already; our answer under generation 1 was lost: send one again.
            let id = self.fresh_id();
            self.send(peer, &Message::HelloReply { newest: 1 }, id);
            return Ok(());
        }
        let timeout = nanos(self.config.handshake_timeout);
        let state = self.client(peer).ok_or(StaleHandshake)?;
        if t.saturating_sub(c.created) > timeout
            || (state.proven > 0 && c.created <= state.proven_at)
        {
            // Too old, or older than what the client proved since: a replay.
            return Err(StaleHandshake);
        }
        if self.engine.lookup_spi(info.spi.get()).is_some() {
            // The SPI was taken since the answer (rare): the client falls back and starts over.
            return Err(StaleHandshake);
        }
        let retired = self.engine.reset_to_init(peer).unwrap_or_default();
        for generation in retired {
            self.events
                .push_back(ServerEvent::Retired { peer, generation });
        }
        if self.engine.install(peer, &c.generation, now).is_err() {
            return Err(StaleHandshake);
        }
        // The client proved generation 1: transmit under it at once.
        let _ = self.engine.set_tx_rule(peer, TxRule::Newest);
        self.engine.set_exchanged(peer, Slot::Newest, c.exchanged);
        if let Some(state) = self.client(peer) {
            state.proven = 1;
            state.proven_at = t;
            state.last_rx = t;
            state.pending = None;
            // Everything starts over but the client's own suite.
            state.flags = flag::TX_NEWEST | (state.flags & flag::SUITE_MASK);
            state.set(flag::EXCHANGED, c.exchanged);
            if let Some(from) = from {
                state.addr = Some(PeerAddr::new(from));
            }
        }
        self.events.push_back(ServerEvent::ClientInit { peer });
        self.events.push_back(ServerEvent::KeyMinted {
            peer,
            generation: info,
        });
        self.events.push_back(ServerEvent::Proven {
            peer,
            generation: 1,
        });
        let id = self.fresh_id();
        self.send(peer, &Message::HelloReply { newest: 1 }, id);
        Ok(())
    }

    fn take_token(&mut self, now: Time) -> bool {
        self.rekeys.take(now, self.config.max_rekeys_per_second)
    }

    fn take_handshake_token(&mut self, now: Time) -> bool {
        self.handshakes
            .take(now, self.config.max_handshakes_per_second)
    }

    /// Rotates the client now if the rules allow, else defers or asks: never two generations
    /// ahead, not within the reorder grace of the last proof, within the rate limit, and with
    /// a key share from the client when the PFS policy wants an exchange (`share`: the share of
    /// the request being answered and that request's transcript hash).
    fn try_rotate(&mut self, now: Time, peer: PeerId, share: Option<(&KeyShare, [u8; 32])>) {
        let grace = nanos(self.config.reorder_grace);
        let pfs = self.config.pfs;
        let t = nanos(now);
        let Some(c) = self.client(peer) else { return };
        c.set(flag::REKEY_WANTED, true);
        if c.has(flag::UNPROVEN) {
            // Never two ahead: wait for the proof of N first.
            return;
        }
        if c.proven > 0 && t < c.proven_at.saturating_add(grace) {
            // Minting forgets N-1: let the client's last packets under it arrive first.
            let at = c.proven_at.saturating_add(grace);
            self.defer(peer, at);
            return;
        }
        let exchange = pfs.exchanges(c.newest() + 1);
        if exchange && share.is_none() {
            self.ask_for_share(now, peer);
            return;
        }
        if self.take_token(now) {
            self.mint(now, peer, share.filter(|_| exchange));
        } else {
            let delay = jittered(Duration::from_millis(500), 900, self.rng.as_mut());
            self.defer(peer, nanos(now + delay));
        }
    }

    /// Asks the client for a key share (`KEY_UPDATE_NEEDED`), at most once per
    /// `implicit_resend_interval`.
    fn ask_for_share(&mut self, now: Time, peer: PeerId) {
        let now_ms = (nanos(now) / 1_000_000) as u32 | 1;
        let interval =
            u32::try_from(self.config.implicit_resend_interval.as_millis()).unwrap_or(u32::MAX);
        let Some(c) = self.client(peer) else { return };
        if c.needed_at != 0 && now_ms.wrapping_sub(c.needed_at) < interval {
            return;
        }
        c.needed_at = now_ms;
        let newest = c.newest();
        let id = self.fresh_id();
        self.send(peer, &Message::KeyUpdateNeeded { newest }, id);
    }

    /// Tries the rotation again at `at`, unless a retry is already armed (which then decides:
    /// it re-checks everything, so a later try is only ever later, never unsafe).
    fn defer(&mut self, peer: PeerId, at: u64) {
        let Some(c) = self.client(peer) else { return };
        if !c.has(flag::DEFERRED) {
            c.set(flag::DEFERRED, true);
            self.timers.push(Reverse((at, peer.0, TimerKind::Deferred)));
        }
    }

    /// A random valid SPI not in use.
    fn is_reserved(&self, v: u32) -> bool {
        self.reserved
            .iter()
            .any(|&(base, n)| v >= base && v - base < n)
    }

    fn unused_spi(&mut self) -> Spi {
        loop {
            let v = u32::try_from(self.rng.next_u64() >> 32).unwrap_or(0);
            if let Ok(spi) = Spi::new(v)
                && self.engine.lookup_spi(v).is_none()
                && !self.is_reserved(v)
            {
                return spi;
            }
        }
    }

    /// Mints N+1 for a client that proved N: from a key exchange with `exchange` (the client's
    /// share and its request's transcript hash), else distributed or derived from N.
    fn mint(&mut self, now: Time, peer: PeerId, exchange: Option<(&KeyShare, [u8; 32])>) {
        let Some(newest) = self.client(peer).map(|c| c.newest()) else {
            return;
        };
        let number = newest + 1;
        let suite = self.suite_for(peer, number);
        // The install checks the SPI with the table's one probe; a taken one (one in a few
        // thousand with a million clients) draws another.
        let mut attempts = 0;
        let (dist, info) = loop {
            attempts += 1;
            let spi = loop {
                let v = u32::try_from(self.rng.next_u64() >> 32).unwrap_or(0);
                if let Ok(spi) = Spi::new(v)
                    && !self.is_reserved(v)
                {
                    break spi;
                }
            };
            let info = GenerationInfo { number, spi, suite };
            let (dist, secret) = match exchange {
                Some((share, request_hash)) => {
                    let Some(parent) = self.engine.secret(peer, Slot::Newest).cloned() else {
                        return;
                    };
                    let Ok((reply, shared)) = respond(share, self.rng.as_mut()) else {
                        return;
                    };
                    let dist = Distribution {
                        generation: number,
                        spi: info.spi.get(),
                        suite: info.suite,
                        echo: request_hash,
                        material: KeyMaterial::Exchange(reply),
                    };
                    let th = exchange_hash(&request_hash, &dist);
                    let secret = Schedule::next_secret(&parent, &shared, &th, info);
                    (dist, secret)
                }
                None => {
                    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
                    self.rng.fill(&mut *bytes);
                    let (material, secret) = if self.config.derived {
                        let Some(parent) = self.engine.secret(peer, Slot::Newest) else {
                            return;
                        };
                        (
                            KeyMaterial::Nonce(*bytes),
                            parent.derive_next(&*bytes, info),
                        )
                    } else {
                        (KeyMaterial::Secret(*bytes), Secret::from_bytes(*bytes))
                    };
                    let dist = Distribution {
                        generation: number,
                        spi: info.spi.get(),
                        suite: info.suite,
                        echo: [0; 32],
                        material,
                    };
                    (dist, secret)
                }
            };
            let generation = Generation { info, secret };
            match self.engine.install(peer, &generation, now) {
                Ok(Installed::Rotated { retired }) => {
                    if let Some(generation) = retired {
                        self.events
                            .push_back(ServerEvent::Retired { peer, generation });
                    }
                }
                Ok(Installed::AlreadyHeld) => {}
                Err(crate::Error::DuplicateSpi) if attempts < 16 => continue,
                Err(_) => return,
            }
            break (dist, info);
        };
        if self.client(peer).is_some_and(|c| c.has(flag::TX_NEWEST)) {
            // After an init the server transmitted under generation 1 itself; from now on the
            // role rule (N-1) holds again.
            let _ = self.engine.set_tx_rule(peer, TxRule::Role);
        }
        if exchange.is_some() {
            self.engine.set_exchanged(peer, Slot::Newest, true);
        }
        let msg_id = self.fresh_id();
        // The client will forget N when it installs N+2: hold the distribution until our
        // traffic under N is in.
        let not_before = nanos(now + self.config.reorder_grace);
        if let Some(c) = self.client(peer) {
            debug_assert_eq!(number, c.proven + 1, "never two generations ahead");
            c.set(flag::UNPROVEN, true);
            c.set(flag::TX_NEWEST, false);
            c.set(flag::EXCHANGED, exchange.is_some());
            c.set(flag::REKEY_WANTED, false);
            c.pending = Some(Box::new(Pending {
                dist,
                msg_id,
                retries: 0,
                next_at: not_before,
                not_before,
                last_resend: 0,
            }));
        }
        self.timers
            .push(Reverse((not_before, peer.0, TimerKind::Retry)));
        self.events.push_back(ServerEvent::KeyMinted {
            peer,
            generation: info,
        });
    }

    /// Sends the newest generation again, identical (same secret, nonce or share), minting
    /// nothing.
    fn resend(&mut self, now: Time, peer: PeerId, implicit: bool) {
        let t = nanos(now);
        let derived = self.config.derived;
        let Some(c) = self.client(peer) else { return };
        let exchanged = c.has(flag::EXCHANGED);
        let (dist, id, generation) = match &c.pending {
            // Within the reorder grace the retry timer sends it; nothing earlier.
            Some(p) if t < p.not_before => return,
            Some(p) => (p.dist.clone(), p.msg_id, p.dist.generation),
            None => {
                // Proven already: the client has the key. A secret-mode generation can be sent
                // again from the engine; a derived or exchanged one cannot (nothing of it is
                // kept that could be sent).
                if derived || exchanged {
                    return;
                }
                let Some(info) = self.engine.generation(peer, Slot::Newest) else {
                    return;
                };
                let Some(secret) = self.engine.secret(peer, Slot::Newest) else {
                    return;
                };
                let dist = Distribution {
                    generation: info.number,
                    spi: info.spi.get(),
                    suite: info.suite,
                    echo: [0; 32],
                    material: KeyMaterial::Secret(*secret.expose()),
                };
                let id = self.fresh_id();
                (dist, id, info.number)
            }
        };
        self.events.push_back(ServerEvent::Resent {
            peer,
            generation,
            implicit,
        });
        self.send(peer, &Message::KeyDistribution(dist), id);
    }

    fn fresh_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn send(&mut self, peer: PeerId, msg: &Message, id: u32) {
        let destination = self.addr_of(peer);
        self.seal_to(peer, destination, msg, id);
    }

    /// Sends a handshake answer to where its request came from (or, without a source, where
    /// the client was last seen).
    fn send_to(&mut self, peer: PeerId, from: Option<SocketAddr>, msg: &Message) {
        let destination = from.or_else(|| self.addr_of(peer));
        let id = self.fresh_id();
        self.seal_to(peer, destination, msg, id);
    }

    fn addr_of(&self, peer: PeerId) -> Option<SocketAddr> {
        self.clients
            .get(peer.0 as usize)
            .and_then(|c| Some(c.as_ref()?.addr?.get()))
    }

    fn seal_to(&mut self, peer: PeerId, destination: Option<SocketAddr>, msg: &Message, id: u32) {
        seal_messages(
            &mut self.engine,
            peer,
            destination,
            msg,
            id,
            &mut self.out,
            self.rng.as_mut(),
            &mut self.transmits,
        );
    }

    /// The keys for data-plane workers (see [`crate::DataPlane`]); ask again after
    /// [`ServerEvent`]s that change keys.
    ///
    /// # Errors
    /// As [`Engine::data_plane`].
    pub fn data_plane(&mut self) -> Result<crate::DataPlane, Error> {
        self.engine.data_plane()
    }

    /// Evaluates the rekey triggers of `peer` against the counters (which data-plane workers
    /// add to); a driver whose workers seal and open calls this now and then.
    pub fn check_triggers(&mut self, now: Time, peer: PeerId) {
        let Some((counters, installed)) = self.engine.sa_counters(peer, Slot::Newest) else {
            return;
        };
        let Some(info) = self.engine.generation(peer, Slot::Newest) else {
            return;
        };
        let triggers = self
            .config
            .triggers
            .within_limits(info.suite, self.config.engine.max_esp_len);
        let Some(c) = self.client(peer) else { return };
        if c.has(flag::REKEY_WANTED | flag::UNPROVEN) {
            return;
        }
        if let Some(reason) = triggers.exceeded(&counters, now.saturating_sub(installed)) {
            c.set(flag::REKEY_WANTED, true);
            self.events
                .push_back(ServerEvent::Triggered { peer, reason });
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        let t = nanos(now);
        while let Some(Reverse((at, index, kind))) = self.timers.peek().copied() {
            if at > t {
                break;
            }
            self.timers.pop();
            let peer = PeerId(index);
            let first_retry = nanos(now + self.config.distribution_retry);
            let Some(c) = self.client(peer) else { continue };
            match kind {
                TimerKind::Retry => {
                    let Some(p) = c.pending.as_deref_mut() else {
                        continue;
                    };
                    if p.next_at != at {
                        continue;
                    }
                    if at == p.not_before && p.retries == 0 && at != 0 {
                        // First transmission after the reorder grace.
                        let (dist, id) = (p.dist.clone(), p.msg_id);
                        let next = first_retry;
                        p.next_at = next;
                        p.not_before = 0;
                        self.timers.push(Reverse((next, index, TimerKind::Retry)));
                        self.send(peer, &Message::KeyDistribution(dist), id);
                        continue;
                    }
                    p.retries += 1;
                    let (retries, generation) = (p.retries, p.dist.generation);
                    if retries > self.config.distribution_retries {
                        self.events
                            .push_back(ServerEvent::Unresponsive { peer, generation });
                        continue;
                    }
                    let delay = backoff(
                        self.config.distribution_retry,
                        self.config.distribution_max_backoff,
                        retries,
                        self.rng.as_mut(),
                    );
                    let next = nanos(now + delay);
                    if let Some(p) = self.client(peer).and_then(|c| c.pending.as_deref_mut()) {
                        p.next_at = next;
                    }
                    self.timers.push(Reverse((next, index, TimerKind::Retry)));
                    self.resend(now, peer, false);
                }
                TimerKind::Deferred => {
                    c.set(flag::DEFERRED, false);
                    if c.has(flag::REKEY_WANTED) {
                        self.try_rotate(now, peer, None);
                    }
                }
            }
        }
        // After a burst (a million clients rotating at once) give the memory back.
        if self.timers.capacity() > 4096 && self.timers.len() < self.timers.capacity() / 4 {
            self.timers.shrink_to(self.timers.len() * 2);
        }
        if self.sweep_at != 0 && self.sweep_at <= t {
            self.sweep(now);
        }
    }

    /// One sweep tick: visits the next chunk of clients, evicting the expanded keys of those
    /// idle for `idle_evict` and marking those whose newest generation is older than its
    /// jittered `rekey_interval` or the `max_age` trigger (S7: they rotate at their next proof
    /// of it).
    fn sweep(&mut self, now: Time) {
        let t = nanos(now);
        let n = self.clients.len();
        self.sweep_at = t.saturating_add(self.sweep_tick(n)).max(1);
        let Some(period) = self.sweep_period() else {
            return;
        };
        let idle = self.config.idle_evict.map(nanos);
        let half_period = period / 2;
        let interval = self.config.rekey_interval;
        let permille = self.config.rekey_jitter_permille;
        let max_age = self.config.triggers.max_age;
        let start = if self.sweep_cursor < n {
            self.sweep_cursor
        } else {
            0
        };
        let end = (start + SWEEP_CHUNK).min(n);
        self.sweep_cursor = end;
        for i in start..end {
            let peer = PeerId(u32::try_from(i).unwrap_or(u32::MAX));
            let Some(c) = self.clients[i].as_mut() else {
                continue;
            };
            if let Some(idle) = idle
                && c.has(flag::EXPANDED)
                && t >= c.last_rx.saturating_add(idle)
            {
                c.set(flag::EXPANDED, false);
                self.engine.evict_keys(peer);
            }
            let Some(c) = self.clients[i].as_mut() else {
                continue;
            };
            if let Some(interval) = interval
                && c.proven > 0
                && !c.has(flag::REKEY_WANTED | flag::UNPROVEN)
                && let Some((info, installed)) = self.engine.installed(peer, Slot::Newest)
            {
                // Marked within half a sweep period of the deadline, early or late: on
                // average the interval is exact.
                let due = installed + jittered_by(interval, permille, u64::from(info.spi.get()));
                if t.saturating_add(half_period) >= nanos(due) {
                    c.set(flag::REKEY_WANTED, true);
                }
            }
            // The `max_age` trigger: never early, late by at most one sweep period (1/16 of
            // the age, or less).
            let Some(c) = self.clients[i].as_mut() else {
                continue;
            };
            if let Some(max_age) = max_age
                && c.proven > 0
                && !c.has(flag::REKEY_WANTED | flag::UNPROVEN)
                && let Some((_, installed)) = self.engine.installed(peer, Slot::Newest)
                && t >= nanos(installed + max_age)
            {
                c.set(flag::REKEY_WANTED, true);
                self.events.push_back(ServerEvent::Triggered {
                    peer,
                    reason: "age",
                });
            }
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    #[test]
    fn a_client_record_is_one_cache_line() {
        // A key server keeps one per client: growth here multiplies by millions.
        assert_eq!(core::mem::size_of::<Option<ClientState>>(), 64);
    }

    #[test]
    fn a_client_suite_lives_in_the_flags_beside_the_others() {
        let mut c = ClientState {
            addr: None,
            proven: 0,
            proven_at: 0,
            last_rx: 0,
            pending: None,
            needed_at: 0,
            flags: 0,
        };
        let all = flag::UNPROVEN
            | flag::REKEY_WANTED
            | flag::EXCHANGED
            | flag::DEFERRED
            | flag::EXPANDED
            | flag::TX_NEWEST;
        assert_eq!(all & flag::SUITE_MASK, 0, "the suite bits are free");
        for others in [0, all] {
            c.flags = others;
            assert_eq!(c.suite(), None);
            for suite in Suite::ALL.map(Some).into_iter().chain([None]) {
                c.set_suite(suite);
                assert_eq!(c.suite(), suite);
                assert_eq!(c.flags & !flag::SUITE_MASK, others);
            }
        }
    }

    #[test]
    fn compact_addresses_round_trip() {
        for a in [
            "192.0.2.7:4500",
            "[2001:db8::1]:4500",
            "[fe80::1%3]:9",
            "[::ffff:192.0.2.7]:4500",
            "0.0.0.0:0",
        ] {
            let a: SocketAddr = a.parse().unwrap_or_else(|_| unreachable!());
            assert_eq!(PeerAddr::new(a).get(), a, "{a}");
        }
    }
}
