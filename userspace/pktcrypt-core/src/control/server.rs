//! The key server (key transmitting device): one instance serves many clients.
//!
//! Per client it keeps the engine's three slots (init, N, N-1) and a small record: where the
//! client was last seen, the newest generation it has *proven* it holds (by sending anything
//! under that generation's SPI), a pending distribution and a few deadlines. Rules (spec §3, §4):
//!
//! - A new generation N+1 is minted only when the client has proven N: the sides are never more
//!   than one generation apart. The server then holds {N+1, N} and transmits with N.
//! - `KEY_INIT_REQUEST` (or any request or `HELLO` under the init key while dynamic keys exist:
//!   a restarted client, S6) resets the client to its init key and mints generation 1. A
//!   retransmitted init request (same message id) gets the same distribution again.
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

use super::message::{Distribution, KeyMaterial, Message};
use super::{
    Incoming, Random, RekeyTriggers, Transmit, backoff, dispatch_control, jittered, jittered_by,
    nanos, seal_message,
};
use crate::engine::Installed;
use crate::{
    Engine, EngineConfig, Error, Generation, GenerationInfo, Opened, PeerId, Role, Secret, Slot,
    Spi, Suite, Time,
};
use core::net::SocketAddr;
use core::time::Duration;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Key server configuration. Every timeout is configurable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Data-plane settings (the role is forced to [`Role::KeyServer`]).
    pub engine: EngineConfig,
    /// Suite of newly minted generations (changing it switches suite at the next rekey).
    pub suite: Suite,
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
}

impl ServerConfig {
    /// Defaults: AES-256-GCM, secret mode, hourly jittered rekeys, 1000 rekeys/s.
    pub fn new() -> Self {
        let engine = EngineConfig::new(Role::KeyServer);
        Self {
            suite: Suite::Aes256Gcm,
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
    /// The newest generation answers an init request whose id is `init_id`.
    pub(super) const FROM_INIT: u8 = 4;
    /// A `Deferred` timer is in the heap.
    pub(super) const DEFERRED: u8 = 8;
    /// Keys may be expanded: data since the last idle eviction (a control message alone expands
    /// none, but it is not told apart here; evicting an SA with nothing to free is cheap).
    pub(super) const EXPANDED: u8 = 16;
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
    init_id: u32,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Retry,
    Deferred,
}

/// Clients the sweep visits per tick.
const SWEEP_CHUNK: usize = 256;

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
    tokens: u32,
    tokens_at: u64,
    out: Vec<u8>,
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
        let engine = Engine::new(config.engine.clone())?;
        let next_id = u32::try_from(rng.next_u64() >> 33).unwrap_or(1);
        Ok(Self {
            tokens: config.max_rekeys_per_second.max(1),
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
            tokens_at: 0,
            out: vec![0u8; 256],
        })
    }

    /// The data-plane engine (status, counters, data sealing).
    pub fn engine(&self) -> &Engine {
        &self.engine
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

    /// Changes the suite of future generations (cipher agility, spec §7).
    pub fn set_suite(&mut self, suite: Suite) {
        self.config.suite = suite;
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
            init_id: 0,
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
        let p = idle.into_iter().chain(rekey).min()?;
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

    /// Handles a packet already opened elsewhere: by a data-plane worker holding this server's
    /// [`Self::data_plane`]. Workers pass every control message, and for data a sample (at
    /// least the first packet of each generation from each peer, and one now and then) with an
    /// empty `packet`: that tells the server which generation the peer transmits with.
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
                self.on_authentic(now, from, info.peer, info.slot, info.generation);
                self.check_triggers(now, info.peer);
                Incoming::Data {
                    peer: info.peer,
                    packet,
                    next_header,
                    generation: info.generation,
                }
            }
            Opened::Control { message, info } => {
                let decoded = Message::decode(message);
                self.on_authentic(now, from, info.peer, info.slot, info.generation);
                dispatch_control(info.peer, decoded, |msg, id| {
                    self.on_control(now, info.peer, info.slot, msg, id)
                })
            }
            Opened::Drop(reason) => Incoming::Dropped(reason),
        }
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
            self.try_rotate(now, peer);
        }
    }

    /// Returns false for messages a server does not accept.
    fn on_control(&mut self, now: Time, peer: PeerId, slot: Slot, msg: Message, id: u32) -> bool {
        let Some(c) = self.client(peer) else {
            return false;
        };
        let has_dynamic = c.newest() > 0;
        let pending_init = c.has(flag::FROM_INIT) && c.pending.is_some();
        match msg {
            Message::KeyInitRequest => self.handle_init(now, peer, id),
            Message::KeyUpdateRequest { .. }
            | Message::KeyResendRequest { .. }
            | Message::Hello { .. }
                if slot == Slot::Init && has_dynamic && !pending_init =>
            {
                // S6: a request or hello under the init key while dynamic keys exist is an init.
                self.handle_init(now, peer, id);
            }
            Message::KeyUpdateRequest { .. } => match slot {
                Slot::Newest => {
                    if let Some(c) = self.client(peer) {
                        c.set(flag::REKEY_WANTED, true);
                    }
                    self.try_rotate(now, peer);
                }
                _ if has_dynamic => self.resend(now, peer, false),
                _ => self.handle_init(now, peer, id),
            },
            Message::KeyResendRequest { .. } => {
                if has_dynamic {
                    self.resend(now, peer, false);
                } else {
                    self.handle_init(now, peer, id);
                }
            }
            Message::Hello { .. } => {
                if slot == Slot::Init && !has_dynamic {
                    self.handle_init(now, peer, id);
                } else if slot == Slot::Init && pending_init {
                    self.resend(now, peer, false);
                } else {
                    let newest = self.client(peer).map_or(0, |c| c.newest());
                    self.send(peer, &Message::HelloReply { newest }, id);
                }
            }
            Message::KeyAck { .. } => {}
            _ => return false,
        }
        true
    }

    fn handle_init(&mut self, now: Time, peer: PeerId, id: u32) {
        let Some(c) = self.client(peer) else { return };
        if c.has(flag::FROM_INIT) && c.init_id == id && c.newest() > 0 {
            // A retransmission of the request we already answered: same answer again.
            if c.pending.is_some() {
                self.resend(now, peer, false);
            }
            return;
        }
        c.init_id = id;
        let retired = self.engine.reset_to_init(peer).unwrap_or_default();
        if let Some(c) = self.client(peer) {
            c.proven = 0;
            c.pending = None;
            c.set(flag::UNPROVEN | flag::REKEY_WANTED, false);
        }
        for generation in retired {
            self.events
                .push_back(ServerEvent::Retired { peer, generation });
        }
        self.events.push_back(ServerEvent::ClientInit { peer });
        // Answering an init is not rate-limited: clients back off on their own.
        self.mint(now, peer, true);
    }

    fn take_token(&mut self, now: Time) -> bool {
        let rate = u64::from(self.config.max_rekeys_per_second.max(1));
        let t = nanos(now);
        let elapsed = t.saturating_sub(self.tokens_at);
        let refill = elapsed.saturating_mul(rate) / 1_000_000_000;
        if refill > 0 {
            self.tokens =
                u32::try_from((u64::from(self.tokens) + refill).min(rate)).unwrap_or(u32::MAX);
            self.tokens_at = t;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }

    fn try_rotate(&mut self, now: Time, peer: PeerId) {
        let grace = nanos(self.config.reorder_grace);
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
        if self.take_token(now) {
            self.mint(now, peer, false);
        } else {
            let delay = jittered(Duration::from_millis(500), 900, self.rng.as_mut());
            self.defer(peer, nanos(now + delay));
        }
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

    /// A random valid SPI; whether it is free is checked by the install (one table probe).
    fn random_spi(&mut self) -> Spi {
        loop {
            let v = u32::try_from(self.rng.next_u64() >> 32).unwrap_or(0);
            if let Ok(spi) = Spi::new(v) {
                return spi;
            }
        }
    }

    fn mint(&mut self, now: Time, peer: PeerId, from_init: bool) {
        let Some(newest) = self.client(peer).map(|c| c.newest()) else {
            return;
        };
        let number = newest + 1;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        self.rng.fill(&mut *bytes);
        // An SPI already in use (one in a few thousand with a million clients) draws another.
        let mut installed = None;
        for _ in 0..64 {
            let info = GenerationInfo {
                number,
                spi: self.random_spi(),
                suite: self.config.suite,
            };
            let (secret, material) = if self.config.derived {
                let parent_slot = if newest == 0 {
                    Slot::Init
                } else {
                    Slot::Newest
                };
                let Some(parent) = self.engine.secret(peer, parent_slot) else {
                    return;
                };
                (
                    parent.derive_next(&*bytes, info),
                    KeyMaterial::Nonce(*bytes),
                )
            } else {
                (Secret::from_bytes(*bytes), KeyMaterial::Secret(*bytes))
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
                Err(crate::Error::DuplicateSpi) => continue,
                Err(_) => return,
            }
            installed = Some((info, material));
            break;
        }
        let Some((info, material)) = installed else {
            return;
        };
        let dist = Distribution {
            generation: number,
            spi: info.spi.get(),
            suite: info.suite,
            material,
        };
        let msg_id = self.fresh_id();
        // After an init nothing was forgotten: send at once. After a rotation the client will
        // forget N when it installs N+2: hold the distribution until our traffic under N is in.
        let not_before = if from_init {
            nanos(now)
        } else {
            nanos(now + self.config.reorder_grace)
        };
        let retry = if from_init {
            nanos(now + self.config.distribution_retry)
        } else {
            not_before
        };
        if let Some(c) = self.client(peer) {
            debug_assert_eq!(number, c.proven + 1, "never two generations ahead");
            c.set(flag::UNPROVEN, true);
            c.set(flag::FROM_INIT, from_init);
            c.set(flag::REKEY_WANTED, false);
            c.pending = Some(Box::new(Pending {
                dist,
                msg_id,
                retries: 0,
                next_at: retry,
                not_before,
                last_resend: 0,
            }));
        }
        self.timers.push(Reverse((retry, peer.0, TimerKind::Retry)));
        self.events.push_back(ServerEvent::KeyMinted {
            peer,
            generation: info,
        });
        if from_init {
            self.send(peer, &Message::KeyDistribution(dist), msg_id);
        }
    }

    /// Sends the newest generation again, identical (same secret or nonce), minting nothing.
    fn resend(&mut self, now: Time, peer: PeerId, implicit: bool) {
        let t = nanos(now);
        let Some(c) = self.client(peer) else { return };
        let (dist, id, generation) = match &c.pending {
            // Within the reorder grace the retry timer sends it; nothing earlier.
            Some(p) if t < p.not_before => return,
            Some(p) => (p.dist, p.msg_id, p.dist.generation),
            None => {
                // Proven already: rebuild the distribution from the engine's newest generation.
                let Some(info) = self.engine.generation(peer, Slot::Newest) else {
                    return;
                };
                if self.config.derived {
                    // The nonce is gone once proven; the client has the key.
                    return;
                }
                let Some(secret) = self.engine.secret(peer, Slot::Newest) else {
                    return;
                };
                let dist = Distribution {
                    generation: info.number,
                    spi: info.spi.get(),
                    suite: info.suite,
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
        let destination = self
            .clients
            .get(peer.0 as usize)
            .and_then(|c| Some(c.as_ref()?.addr?.get()));
        if let Some(t) = seal_message(&mut self.engine, peer, destination, msg, id, &mut self.out) {
            self.transmits.push_back(t);
        }
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
        let triggers = self.config.triggers;
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
                        let (dist, id) = (p.dist, p.msg_id);
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
                        self.try_rotate(now, peer);
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
    /// jittered `rekey_interval` (S7: they rotate at their next proof of it).
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
