//! The client (key receiving device).
//!
//! It transmits with its newest generation and receives with both it holds. Behaviour (spec §4):
//!
//! - S1: starting from the init key, it sends `KEY_INIT_REQUEST` and retransmits with
//!   exponential back-off and jitter until a distribution arrives.
//! - S2: when its update timer (or a rekey trigger) fires it sends `KEY_UPDATE_REQUEST` under N.
//! - S3: if no distribution follows within the request timeout it sends `KEY_RESEND_REQUEST`,
//!   backing off.
//! - S5: after `max_retries` unanswered requests (or hellos) it concludes the server lost its
//!   keys, falls back to the init key and sends `KEY_INIT_REQUEST`.
//! - Each installed generation is acknowledged with `KEY_ACK` sealed under it: proof for the
//!   server that it may mint the next one. A periodic `HELLO` (whose SPI alone tells the server
//!   which generation the client uses) keeps the server informed and detects faults.

use super::message::{KeyMaterial, Message};
use super::{
    Incoming, Random, RekeyTriggers, Transmit, backoff, dispatch_control, jittered, seal_message,
};
use crate::engine::Installed;
use crate::{
    Engine, EngineConfig, Error, Generation, GenerationInfo, Opened, PeerId, Role, Secret, Slot,
    Spi, Suite, Time,
};
use core::time::Duration;
use std::collections::VecDeque;

/// Client configuration. Every timeout is configurable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Data-plane settings (the role is forced to [`Role::Client`]).
    pub engine: EngineConfig,
    /// Client-timed update (S2): ask for a new generation this often. `None`: never on a timer.
    pub update_interval: Option<Duration>,
    /// Interval between hellos.
    pub hello_interval: Duration,
    /// First retransmission of an unanswered request.
    pub request_timeout: Duration,
    /// Largest retransmission interval.
    pub max_backoff: Duration,
    /// Unanswered requests in a row before falling back to the init key (S5).
    pub max_retries: u32,
    /// Jitter of the timers, in permille (±).
    pub jitter_permille: u32,
    /// Rekey triggers on the generation the client transmits with.
    pub triggers: RekeyTriggers,
}

impl ClientConfig {
    /// Defaults: no timed update (the server rotates), hello every 10 s, requests retried from
    /// 500 ms up to 4 s, fallback after 5 unanswered.
    pub fn new() -> Self {
        let engine = EngineConfig::new(Role::Client);
        Self {
            update_interval: None,
            hello_interval: Duration::from_secs(10),
            request_timeout: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
            max_retries: 5,
            jitter_permille: 100,
            triggers: RekeyTriggers::for_suite(Suite::Aes256Gcm, engine.max_esp_len),
            engine,
        }
    }

    /// The longest time from a server fault to the fallback to the init key: the sum of the
    /// retransmission intervals (with +20 % jitter) over `max_retries`.
    pub fn fallback_bound(&self) -> Duration {
        (0..=self.max_retries)
            .map(|a| {
                let exp = self.request_timeout.saturating_mul(1u32 << a.min(16));
                exp.min(self.max_backoff).mul_f64(1.2)
            })
            .sum()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What the client tells the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A new generation was installed and is now used to transmit.
    KeyInstalled {
        /// The generation.
        generation: GenerationInfo,
    },
    /// A generation was forgotten.
    Retired {
        /// The generation.
        generation: GenerationInfo,
    },
    /// Requests went unanswered: back to the init key, asking for a fresh start (S5).
    FellBackToInit,
    /// A rekey trigger fired.
    Triggered {
        /// Which trigger.
        reason: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Init,
    Update,
    Resend,
    Hello,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    kind: Kind,
    id: u32,
    next_at: Time,
}

/// The client.
pub struct KeyClient {
    config: ClientConfig,
    engine: Engine,
    server: PeerId,
    rng: Box<dyn Random>,
    request: Option<Request>,
    /// Requests sent in a row without an answer.
    unanswered: u32,
    update_at: Option<Time>,
    hello_at: Time,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ClientEvent>,
    next_id: u32,
    out: Vec<u8>,
}

impl std::fmt::Debug for KeyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyClient")
            .field("engine", &self.engine)
            .field("request", &self.request)
            .field("unanswered", &self.unanswered)
            .finish_non_exhaustive()
    }
}

impl KeyClient {
    /// A client holding only its init key; it immediately asks for generation 1 (S1).
    ///
    /// # Errors
    /// Invalid configuration or init key.
    pub fn new(
        mut config: ClientConfig,
        init: &Generation,
        mut rng: Box<dyn Random>,
        now: Time,
    ) -> Result<Self, Error> {
        config.engine.role = Role::Client;
        let mut engine = Engine::new(config.engine.clone())?;
        let server = engine.add_peer(init, now)?;
        let next_id = u32::try_from(rng.next_u64() >> 33).unwrap_or(1);
        let hello_at = now + jittered(config.hello_interval, config.jitter_permille, rng.as_mut());
        let mut client = Self {
            config,
            engine,
            server,
            rng,
            request: None,
            unanswered: 0,
            update_at: None,
            hello_at,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id,
            out: vec![0u8; 256],
        };
        client.start_init(now);
        Ok(client)
    }

    /// The data-plane engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The peer id of the server inside the engine.
    pub fn server(&self) -> PeerId {
        self.server
    }

    /// The generation the client transmits with.
    pub fn newest(&self) -> u64 {
        self.engine
            .tx_generation(self.server)
            .map_or(0, |g| g.number)
    }

    /// Whether a request is waiting for an answer.
    pub fn awaiting_answer(&self) -> bool {
        self.request.is_some_and(|r| r.kind != Kind::Hello)
    }

    /// The next timer deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.hello_at;
        if let Some(r) = self.request {
            t = t.min(r.next_at);
        }
        if let Some(u) = self.update_at {
            t = t.min(u);
        }
        Some(t)
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Asks for a new generation now (as the update timer would).
    pub fn request_update(&mut self, now: Time) {
        if !self.awaiting_answer() {
            let have = self.newest();
            self.request(now, Kind::Update, Message::KeyUpdateRequest { have });
        }
    }

    /// Seals a data packet for the server (see [`Engine::seal`]) and checks the rekey triggers.
    ///
    /// # Errors
    /// As [`Engine::seal`].
    pub fn seal(
        &mut self,
        now: Time,
        buf: &mut [u8],
        len: usize,
        next: crate::wire::NextHeader,
    ) -> Result<usize, crate::SealError> {
        let r = self.engine.seal(self.server, buf, len, next);
        if matches!(r, Err(crate::SealError::SequenceExhausted)) {
            self.events.push_back(ClientEvent::Triggered {
                reason: "sequence_exhausted",
            });
            self.request_update(now);
        } else {
            self.check_triggers(now);
        }
        r
    }

    /// The keys for data-plane workers (see [`crate::DataPlane`]); ask again after
    /// [`ClientEvent`]s that change keys.
    ///
    /// # Errors
    /// As [`Engine::data_plane`].
    pub fn data_plane(&mut self) -> Result<crate::DataPlane, Error> {
        self.engine.data_plane()
    }

    /// Evaluates the rekey triggers against the counters (which data-plane workers add to); a
    /// driver whose workers seal calls this now and then.
    pub fn check_triggers(&mut self, now: Time) {
        if self.awaiting_answer() {
            return;
        }
        let Some((counters, installed)) = self.engine.sa_counters(self.server, Slot::Newest) else {
            return;
        };
        if let Some(reason) = self
            .config
            .triggers
            .exceeded(&counters, now.saturating_sub(installed))
        {
            self.events.push_back(ClientEvent::Triggered { reason });
            self.request_update(now);
        }
    }

    fn start_init(&mut self, now: Time) {
        for generation in self.engine.reset_to_init(self.server).unwrap_or_default() {
            self.events.push_back(ClientEvent::Retired { generation });
        }
        self.update_at = None;
        self.unanswered = 0;
        self.request(now, Kind::Init, Message::KeyInitRequest);
    }

    fn request(&mut self, now: Time, kind: Kind, msg: Message) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.send_request(now, kind, &msg, id, 0);
    }

    /// Sends (or re-sends, keeping `id`) a request and arms its retransmission timer.
    fn send_request(&mut self, now: Time, kind: Kind, msg: &Message, id: u32, attempt: u32) {
        let delay = backoff(
            self.config.request_timeout,
            self.config.max_backoff,
            attempt,
            self.rng.as_mut(),
        );
        self.request = Some(Request {
            kind,
            id,
            next_at: now + delay,
        });
        self.send(msg, id);
    }

    fn send(&mut self, msg: &Message, id: u32) {
        if let Some(t) = seal_message(&mut self.engine, self.server, None, msg, id, &mut self.out) {
            self.transmits.push_back(t);
        }
    }

    /// Handles one received ESP packet from the server.
    pub fn handle_datagram<'b>(&mut self, now: Time, buf: &'b mut [u8]) -> Incoming<'b> {
        let opened = self.engine.open(buf);
        self.handle_opened(now, opened)
    }

    /// Handles a packet already opened by a data-plane worker holding [`Self::data_plane`]:
    /// every control message, and for data a sample with an empty `packet` (see
    /// [`super::KeyServer::handle_opened`]).
    pub fn handle_opened<'b>(&mut self, now: Time, opened: Opened<'b>) -> Incoming<'b> {
        match opened {
            Opened::Data {
                packet,
                next_header,
                info,
            } => {
                if info.slot != Slot::Init && self.request.is_some_and(|r| r.kind != Kind::Init) {
                    // The server still seals under our dynamic keys: it has not lost them, so
                    // unanswered requests are loss, not a server fault (no fallback to init).
                    self.unanswered = 0;
                }
                self.check_triggers(now);
                Incoming::Data {
                    peer: info.peer,
                    packet,
                    next_header,
                    generation: info.generation,
                }
            }
            Opened::Control { message, info } => {
                dispatch_control(info.peer, Message::decode(message), |msg, _| {
                    self.on_control(now, info.slot, msg)
                })
            }
            Opened::Drop(reason) => Incoming::Dropped(reason),
        }
    }

    fn on_control(&mut self, now: Time, slot: Slot, msg: Message) -> bool {
        match msg {
            Message::KeyDistribution(d) => {
                self.on_distribution(now, slot, d);
                true
            }
            Message::HelloReply { newest } => {
                if self.request.is_some_and(|r| r.kind == Kind::Hello) {
                    self.request = None;
                }
                self.unanswered = 0;
                if newest > self.newest() && !self.awaiting_answer() {
                    // The server has a generation we never got: ask for it.
                    let have = self.newest();
                    self.request(now, Kind::Resend, Message::KeyResendRequest { have });
                }
                true
            }
            _ => false,
        }
    }

    fn on_distribution(&mut self, now: Time, slot: Slot, d: super::message::Distribution) {
        let have = self.newest();
        let waiting_init = self.request.is_some_and(|r| r.kind == Kind::Init);
        if waiting_init && slot != Slot::Init {
            // A late distribution from before our reset: stale.
            return;
        }
        let Ok(spi) = Spi::new(d.spi) else { return };
        let info = GenerationInfo {
            number: d.generation,
            spi,
            suite: d.suite,
        };
        let secret = match d.material {
            KeyMaterial::Secret(bytes) => Secret::from_bytes(bytes),
            KeyMaterial::Nonce(nonce) => {
                // Derived mode: the parent is the generation just before this one.
                let parent = if d.generation == 1 && (have == 0 || waiting_init) {
                    self.engine.secret(self.server, Slot::Init)
                } else if d.generation == have + 1 {
                    self.engine.secret(self.server, Slot::Newest)
                } else if d.generation == have {
                    self.engine
                        .secret(self.server, Slot::Previous)
                        .or_else(|| self.engine.secret(self.server, Slot::Init))
                } else {
                    None
                };
                match parent {
                    Some(p) => p.derive_next(&nonce, info),
                    None => return,
                }
            }
        };
        let generation = Generation { info, secret };
        match self.engine.install(self.server, &generation, now) {
            Ok(Installed::Rotated { retired }) => {
                if let Some(generation) = retired {
                    self.events.push_back(ClientEvent::Retired { generation });
                }
                self.events
                    .push_back(ClientEvent::KeyInstalled { generation: info });
                self.request = None;
                self.unanswered = 0;
                self.update_at = self
                    .config
                    .update_interval
                    .map(|i| now + jittered(i, self.config.jitter_permille, self.rng.as_mut()));
                self.ack(d.generation);
            }
            Ok(Installed::AlreadyHeld) => {
                if self.request.is_some_and(|r| r.kind != Kind::Hello) && d.generation == have {
                    self.request = None;
                    self.unanswered = 0;
                }
                self.ack(d.generation);
            }
            Err(_) => {}
        }
    }

    fn ack(&mut self, generation: u64) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.send(&Message::KeyAck { generation }, id);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        if let Some(r) = self.request
            && r.next_at <= now
        {
            self.unanswered += 1;
            let have = self.newest();
            if r.kind != Kind::Init && self.unanswered > self.config.max_retries {
                // S5: the server does not answer under our keys: start over from init.
                self.events.push_back(ClientEvent::FellBackToInit);
                self.start_init(now);
            } else {
                // Retransmit: an unanswered update becomes a resend request (S3); an init
                // request keeps its id so the server recognises the retransmission.
                let (kind, msg, id) = match r.kind {
                    Kind::Init => (Kind::Init, Message::KeyInitRequest, r.id),
                    Kind::Hello => (Kind::Hello, Message::Hello { have }, r.id),
                    Kind::Update | Kind::Resend => {
                        self.next_id = self.next_id.wrapping_add(1);
                        (
                            Kind::Resend,
                            Message::KeyResendRequest { have },
                            self.next_id,
                        )
                    }
                };
                self.send_request(now, kind, &msg, id, self.unanswered.min(16));
            }
        }
        if let Some(u) = self.update_at
            && u <= now
        {
            self.update_at = None;
            self.request_update(now);
            if self.update_at.is_none() && !self.awaiting_answer() {
                self.update_at = Some(now + self.config.request_timeout);
            }
        }
        if self.hello_at <= now {
            self.hello_at = now
                + jittered(
                    self.config.hello_interval,
                    self.config.jitter_permille,
                    self.rng.as_mut(),
                );
            if self.request.is_none() {
                let have = self.newest();
                self.request(now, Kind::Hello, Message::Hello { have });
            }
        }
    }
}
