//! The client (key receiving device).
//!
//! It transmits with its newest generation and receives with both it holds. Behaviour (spec §4,
//! protocol version 3 in `docs/protocol.md`):
//!
//! - S1: starting from the init key, it sends `KEY_INIT_REQUEST` with fresh randomness and an
//!   ephemeral hybrid key share, and retransmits the same request with exponential back-off and
//!   jitter until an answer *bound to that request* arrives (`KEY_INIT_REPLY` whose echo is the
//!   request's transcript hash: a recorded old answer yields nothing). It installs generation 1,
//!   confirms it with `KEY_INIT_CONFIRM` under the init key, and repeats the confirmation until
//!   the server sends anything under generation 1.
//! - S2: when its update timer (or a rekey trigger) fires it sends `KEY_UPDATE_REQUEST` under N,
//!   with a fresh key share (unless configured not to); `KEY_UPDATE_NEEDED` from the server asks
//!   for one.
//! - S3: if no distribution follows within the request timeout it repeats the request (with a key
//!   share: the same one, so whatever the server minted from it still completes) or sends
//!   `KEY_RESEND_REQUEST`, backing off.
//! - S5: after `max_retries` unanswered requests (or hellos) it concludes the server lost its
//!   keys, falls back to the init key and starts a new init handshake.
//! - Each generation installed from a distribution is acknowledged with `KEY_ACK` sealed under
//!   it: proof for the server that it may mint the next one. A periodic `HELLO` (whose SPI alone
//!   tells the server which generation the client uses) keeps the server informed and detects
//!   faults. Nothing but handshake messages is ever sent under the init key.

use super::message::{Distribution, KeyMaterial, Message, Reassembler};
use super::with_message;
use super::{
    Incoming, Random, RekeyTriggers, SCRATCH_LEN, Transmit, backoff, jittered, seal_messages,
};
use crate::engine::Installed;
use crate::kex::{Ephemeral, Schedule, transcript};
use crate::{
    Engine, EngineConfig, Error, Generation, GenerationInfo, OpenInfo, Opened, PeerId, Role,
    Secret, Slot, Spi, Suite, Time, TxRule,
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
    /// Offer a fresh key share with every update request, so the server can answer with a key
    /// exchange at once (it asks with `KEY_UPDATE_NEEDED` otherwise). Costs one ML-KEM and one
    /// X25519 key generation per request.
    pub offer_key_share: bool,
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
            offer_key_share: true,
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
    Confirm,
    Update,
    Resend,
    Hello,
}

#[derive(Clone, Debug)]
struct Request {
    kind: Kind,
    id: u32,
    next_at: Time,
    /// The message, for retransmissions that repeat it (init, confirm, update with a share).
    msg: Option<Box<Message>>,
}

/// A key exchange the client started and has not completed: its ephemeral secrets (erased
/// when it completes or is abandoned) and the transcript hash of the request that carried the
/// share.
struct Exchange {
    ephemeral: Ephemeral,
    request_hash: [u8; 32],
    /// For a rotation: the request (and its id) that carries the share. Until a generation is
    /// installed from it (or the client falls back), every update request repeats it, so that
    /// whatever the server minted from the share still completes.
    update: Option<(u32, Message)>,
}

/// Generation 1 installed from an init reply, confirmed to the server, not yet answered.
struct Confirming {
    request_hash: [u8; 32],
    tag: [u8; 32],
    generation: u64,
    spi: u32,
    biscuit: super::message::Biscuit,
}

/// Transcript label of an init request's hash ([`crate::kex::transcript`] of its body).
pub const INIT_LABEL: &[u8] = b"pktcrypt v3 init request";
/// Transcript label of an update request's hash.
pub const UPDATE_LABEL: &[u8] = b"pktcrypt v3 update request";
/// Transcript label of an exchange: the request's hash and the answer's body.
pub const EXCHANGE_LABEL: &[u8] = b"pktcrypt v3 exchange";

/// The transcript hash over a request's hash and the body of the distribution answering it
/// (encoded as a `KEY_DISTRIBUTION`, also for an init answer, without its biscuit): what the
/// new generation's secret and the init confirmation are bound to.
pub fn exchange_hash(request_hash: &[u8; 32], answer: &Distribution) -> [u8; 32] {
    let encoded = Message::KeyDistribution(answer.clone()).encode(0);
    transcript(EXCHANGE_LABEL, &[request_hash, encoded.body()])
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
    /// An operator's rekey asked for while a request was in flight: asked for once it is
    /// answered (a rotation already under way began before the operator's call).
    rekey_pending: bool,
    hello_at: Time,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ClientEvent>,
    next_id: u32,
    out: Vec<u8>,
    exchange: Option<Box<Exchange>>,
    confirming: Option<Box<Confirming>>,
    /// Whether the newest generation came from a key exchange, and when it was installed.
    newest_exchanged: Option<(bool, Time)>,
    reassembly: Reassembler,
    /// Group messages for the member (see [`Self::carry_group_messages`]).
    carry_group: bool,
    inbox: VecDeque<Message>,
}

/// Group messages held for the member at most (it takes them after every datagram).
const INBOX_MAX: usize = 64;

impl std::fmt::Debug for KeyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyClient")
            .field("engine", &self.engine)
            .field("request", &self.request.as_ref().map(|r| r.kind))
            .field("unanswered", &self.unanswered)
            .finish_non_exhaustive()
    }
}

impl KeyClient {
    /// A client holding only its init key; it immediately starts an init handshake (S1).
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
        config.engine.handshake_init = true;
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
            rekey_pending: false,
            hello_at,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id,
            out: vec![0u8; SCRATCH_LEN],
            exchange: None,
            confirming: None,
            newest_exchanged: None,
            reassembly: Reassembler::new(1),
            carry_group: false,
            inbox: VecDeque::new(),
        };
        client.start_init(now);
        Ok(client)
    }

    /// The data-plane engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, for [`super::Endpoint`] (change tracking and data-plane updates).
    pub(crate) fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The peer id of the server inside the engine.
    pub fn server(&self) -> PeerId {
        self.server
    }

    /// The newest generation the client holds (0: none yet; the init key carries nothing but
    /// handshakes). It transmits with it, except while generation 1 awaits the server's
    /// answer to its confirmation.
    pub fn newest(&self) -> u64 {
        self.engine
            .generation(self.server, Slot::Newest)
            .map_or(0, |g| g.number)
    }

    /// Whether the newest generation came from a key exchange (forward secret), and when it
    /// was installed. `None` before the first generation.
    pub fn newest_exchanged(&self) -> Option<(bool, Time)> {
        self.newest_exchanged
    }

    /// When the next client-timed update (`update_interval`) is due; `None` when the client
    /// leaves rotation to the server (or no update is scheduled). Status only.
    pub fn next_update(&self) -> Option<Time> {
        self.update_at
    }

    /// Whether a request is waiting for an answer.
    pub fn awaiting_answer(&self) -> bool {
        self.request.as_ref().is_some_and(|r| r.kind != Kind::Hello)
    }

    /// The next timer deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.hello_at;
        if let Some(r) = &self.request {
            t = t.min(r.next_at);
        }
        if let Some(u) = self.update_at {
            t = t.min(u);
        }
        if let Some(age) = self.age_deadline() {
            t = t.min(age);
        }
        Some(t)
    }

    /// When the newest generation reaches the `max_age` trigger, while that would start a
    /// request (none is waiting for an answer).
    fn age_deadline(&self) -> Option<Time> {
        let max_age = self.config.triggers.max_age?;
        if self.awaiting_answer() || self.newest() == 0 {
            return None;
        }
        let (_, installed) = self.engine.installed(self.server, Slot::Newest)?;
        Some(installed + max_age)
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Rekey on demand (an operator's `pktcrypt rekey`): asks the server for a new generation
    /// now, reported as [`ClientEvent::Triggered`] with reason `"operator"`. `false` before the
    /// first generation (the init handshake is still running).
    pub fn rekey(&mut self, now: Time) -> bool {
        if self.newest() == 0 {
            return false;
        }
        self.events
            .push_back(ClientEvent::Triggered { reason: "operator" });
        if self.awaiting_answer() {
            self.rekey_pending = true;
        } else {
            self.request_update(now);
        }
        true
    }

    /// Asks for the operator's pending rekey once nothing is in flight.
    fn flush_rekey(&mut self, now: Time) {
        if self.rekey_pending && !self.awaiting_answer() && self.newest() > 0 {
            self.rekey_pending = false;
            self.request_update(now);
        }
    }

    /// Asks for a new generation now (as the update timer would).
    pub fn request_update(&mut self, now: Time) {
        if !self.awaiting_answer() {
            let offer = self.config.offer_key_share;
            self.send_update(now, offer);
        }
    }

    /// Sends a `KEY_UPDATE_REQUEST`, with a key share if `share`: the one already offered if a
    /// rotation with it is outstanding, else a fresh one.
    fn send_update(&mut self, now: Time, share: bool) {
        if self.newest() == 0 || self.confirming.is_some() {
            return;
        }
        let have = self.newest();
        if share
            && let Some((id, msg)) = self.exchange.as_ref().and_then(|x| x.update.clone())
            && matches!(msg, Message::KeyUpdateRequest { have: h, .. } if h == have)
        {
            self.send_request(now, Kind::Update, msg, id, self.unanswered.min(16));
            return;
        }
        if share {
            let ephemeral = Ephemeral::generate(self.rng.as_mut());
            let mut nonce = [0u8; 32];
            self.rng.fill(&mut nonce);
            let msg = Message::KeyUpdateRequest {
                have,
                share: Some((nonce, ephemeral.share().clone())),
            };
            let request_hash = transcript(UPDATE_LABEL, &[msg.encode(0).body()]);
            self.next_id = self.next_id.wrapping_add(1);
            let id = self.next_id;
            self.exchange = Some(Box::new(Exchange {
                ephemeral,
                request_hash,
                update: Some((id, msg.clone())),
            }));
            self.send_request(now, Kind::Update, msg, id, 0);
        } else {
            self.request(
                now,
                Kind::Update,
                Message::KeyUpdateRequest { have, share: None },
            );
        }
    }

    /// Seals a data packet for the server (see [`Engine::seal`]) and checks the rekey triggers.
    ///
    /// # Errors
    /// As [`Engine::seal`]; [`crate::SealError::NoKey`] before the first generation.
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
        if self.awaiting_answer() || self.newest() == 0 {
            return;
        }
        let Some((counters, installed)) = self.engine.sa_counters(self.server, Slot::Newest) else {
            return;
        };
        let Some(info) = self.engine.generation(self.server, Slot::Newest) else {
            return;
        };
        if let Some(reason) = self
            .config
            .triggers
            .within_limits(info.suite, self.config.engine.max_esp_len)
            .exceeded(&counters, now.saturating_sub(installed))
        {
            self.events.push_back(ClientEvent::Triggered { reason });
            self.request_update(now);
        }
    }

    fn start_init(&mut self, now: Time) {
        let _ = self.engine.set_tx_rule(self.server, TxRule::Role);
        for generation in self.engine.reset_to_init(self.server).unwrap_or_default() {
            self.events.push_back(ClientEvent::Retired { generation });
        }
        self.update_at = None;
        self.unanswered = 0;
        self.confirming = None;
        self.newest_exchanged = None;
        let ephemeral = Ephemeral::generate(self.rng.as_mut());
        let mut nonce = [0u8; 32];
        self.rng.fill(&mut nonce);
        let msg = Message::KeyInitRequest {
            nonce,
            share: ephemeral.share().clone(),
        };
        let request_hash = transcript(INIT_LABEL, &[msg.encode(0).body()]);
        self.exchange = Some(Box::new(Exchange {
            ephemeral,
            request_hash,
            update: None,
        }));
        self.request(now, Kind::Init, msg);
    }

    fn request(&mut self, now: Time, kind: Kind, msg: Message) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.send_request(now, kind, msg, id, 0);
    }

    /// Sends (or re-sends, keeping `id`) a request and arms its retransmission timer.
    fn send_request(&mut self, now: Time, kind: Kind, msg: Message, id: u32, attempt: u32) {
        let delay = backoff(
            self.config.request_timeout,
            self.config.max_backoff,
            attempt,
            self.rng.as_mut(),
        );
        self.send(&msg, id);
        let keep = matches!(kind, Kind::Init | Kind::Confirm)
            || matches!(msg, Message::KeyUpdateRequest { share: Some(_), .. });
        self.request = Some(Request {
            kind,
            id,
            next_at: now + delay,
            msg: keep.then(|| Box::new(msg)),
        });
    }

    fn send(&mut self, msg: &Message, id: u32) {
        seal_messages(
            &mut self.engine,
            self.server,
            None,
            msg,
            id,
            &mut self.out,
            self.rng.as_mut(),
            &mut self.transmits,
        );
    }

    /// Handles one received ESP packet from the server.
    pub fn handle_datagram<'b>(&mut self, now: Time, buf: &'b mut [u8]) -> Incoming<'b> {
        let opened = self.engine.open(buf);
        self.handle_opened(now, opened)
    }

    /// Handles a packet already opened by a data-plane worker holding [`Self::data_plane`]
    /// (workers pass every control message this way, and data samples through
    /// [`Self::handle_sampled`]).
    pub fn handle_opened<'b>(&mut self, now: Time, opened: Opened<'b>) -> Incoming<'b> {
        match opened {
            Opened::Data {
                packet,
                next_header,
                info,
            } => {
                self.handle_sampled(now, &info);
                Incoming::Data {
                    peer: info.peer,
                    packet,
                    next_header,
                    generation: info.generation,
                }
            }
            Opened::Control { message, info } => {
                let peer = info.peer;
                // The reassembler is set aside while the message is handled (it needs `self`).
                let mut reassembly = std::mem::replace(&mut self.reassembly, Reassembler::new(1));
                let handled = with_message(
                    &mut reassembly,
                    now,
                    0,
                    info.spi.get(),
                    message,
                    |msg, _, _| {
                        self.on_authentic(info.slot);
                        self.on_control(now, info.slot, msg)
                    },
                );
                self.reassembly = reassembly;
                self.flush_rekey(now);
                match handled {
                    Ok(None | Some(Ok(()))) => Incoming::Control { peer },
                    Ok(Some(Err(r))) | Err(r) => Incoming::Dropped(r),
                }
            }
            Opened::Drop(reason) => Incoming::Dropped(reason),
        }
    }

    /// Handles what a data-plane worker saw of a data packet it opened (a sample, see
    /// [`super::KeyServer::handle_sampled`]): the server transmits under that generation.
    pub fn handle_sampled(&mut self, now: Time, info: &OpenInfo) {
        self.on_authentic(info.slot);
        self.check_triggers(now);
    }

    /// Anything authentic under a dynamic generation from the server.
    fn on_authentic(&mut self, slot: Slot) {
        if slot == Slot::Init {
            return;
        }
        if self
            .request
            .as_ref()
            .is_some_and(|r| r.kind == Kind::Confirm)
        {
            // The server sends under generation 1: it has our confirmation, and transmitting
            // under generation 1 is safe now.
            let _ = self.engine.set_tx_rule(self.server, TxRule::Role);
            self.confirming = None;
            self.request = None;
            self.unanswered = 0;
        } else if self.request.as_ref().is_some_and(|r| r.kind != Kind::Init) {
            // The server still seals under our dynamic keys: it has not lost them, so
            // unanswered requests are loss, not a server fault (no fallback to init).
            self.unanswered = 0;
        }
    }

    fn on_control(&mut self, now: Time, slot: Slot, msg: Message) -> Result<(), crate::DropReason> {
        use crate::DropReason::{ControlUnexpected, StaleHandshake};
        match (slot, msg) {
            (Slot::Init, Message::KeyInitReply { dist, biscuit }) => {
                self.on_init_reply(now, dist, biscuit)
            }
            (Slot::Init, _) => Err(ControlUnexpected),
            (_, Message::KeyDistribution(d)) => {
                self.on_distribution(now, d);
                Ok(())
            }
            (_, Message::HelloReply { newest }) => {
                if self.request.as_ref().is_some_and(|r| r.kind == Kind::Hello) {
                    self.request = None;
                }
                self.unanswered = 0;
                if newest > self.newest() && !self.awaiting_answer() {
                    // The server has a generation we never got: ask for it.
                    let have = self.newest();
                    self.request(now, Kind::Resend, Message::KeyResendRequest { have });
                }
                Ok(())
            }
            (_, Message::KeyUpdateNeeded { .. }) => {
                match self.request.as_ref().map(|r| (r.kind, r.msg.is_some())) {
                    // Already asking with a share: repeat it now.
                    Some((Kind::Update, true)) => {
                        if let Some(r) = self.request.take() {
                            let msg = r.msg.map(|m| *m).unwrap_or(Message::Hello { have: 0 });
                            self.send_request(now, Kind::Update, msg, r.id, self.unanswered);
                        }
                    }
                    Some((Kind::Init | Kind::Confirm, _)) => return Err(StaleHandshake),
                    _ => self.send_update(now, true),
                }
                Ok(())
            }
            (_, msg) if self.carry_group && msg.is_group() && self.inbox.len() < INBOX_MAX => {
                // A group member's channel: the member takes it from here.
                self.inbox.push_back(msg);
                Ok(())
            }
            _ => Err(ControlUnexpected),
        }
    }

    /// Makes this client a group member's control channel: group messages from the
    /// controller (under a generation of the channel, never under the init key) are kept for
    /// [`Self::poll_message`] instead of being refused.
    pub(crate) fn carry_group_messages(&mut self) {
        self.carry_group = true;
    }

    /// The next group message the controller sent over the channel.
    pub(crate) fn poll_message(&mut self) -> Option<Message> {
        self.inbox.pop_front()
    }

    /// Sends `msg` to the server under the channel's current generation. `false` while the
    /// channel has none (the handshake is not complete): nothing is sent.
    pub(crate) fn send_message(&mut self, msg: &Message) -> bool {
        if self.newest() == 0 || self.engine.transmits_under_init(self.server) {
            return false;
        }
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        self.send(msg, id);
        true
    }

    /// An answer to our init request: bound to it by the echo of its transcript hash, so a
    /// recorded answer to an earlier request (from before a restart) is refused.
    fn on_init_reply(
        &mut self,
        now: Time,
        d: Distribution,
        biscuit: super::message::Biscuit,
    ) -> Result<(), crate::DropReason> {
        use crate::DropReason::StaleHandshake;
        if let Some(c) = &self.confirming {
            // A second copy of the answer we installed: confirm again. (Another answer to the
            // same request, from a retransmission, is ignored: we confirm the first.)
            if c.request_hash == d.echo && c.generation == d.generation && c.spi == d.spi {
                let msg = Message::KeyInitConfirm {
                    echo: c.request_hash,
                    tag: c.tag,
                    biscuit: c.biscuit.clone(),
                };
                self.next_id = self.next_id.wrapping_add(1);
                let id = self.next_id;
                self.send(&msg, id);
                return Ok(());
            }
            return Err(StaleHandshake);
        }
        let waiting = self.request.as_ref().is_some_and(|r| r.kind == Kind::Init);
        let Some(x) = self
            .exchange
            .as_ref()
            .filter(|x| waiting && x.request_hash == d.echo)
        else {
            return Err(StaleHandshake);
        };
        if d.generation != 1 {
            return Err(crate::DropReason::ControlMalformed);
        }
        let request_hash = x.request_hash;
        let th = exchange_hash(&request_hash, &d);
        let info = GenerationInfo {
            number: 1,
            spi: Spi::new(d.spi).map_err(|_| crate::DropReason::ControlMalformed)?,
            suite: d.suite,
        };
        let init = self
            .engine
            .secret(self.server, Slot::Init)
            .ok_or(crate::DropReason::UnknownSpi)?
            .clone();
        let (secret, exchanged) = match &d.material {
            KeyMaterial::Exchange(share) => {
                let shared = x
                    .ephemeral
                    .finish(share)
                    .map_err(|_| crate::DropReason::ControlMalformed)?;
                (Schedule::next_secret(&init, &shared, &th, info), true)
            }
            KeyMaterial::Secret(bytes) => (Secret::from_bytes(*bytes), false),
            KeyMaterial::Nonce(nonce) => (init.derive_next(nonce, info), false),
        };
        let tag = Schedule::confirm(&secret, &th);
        let generation = Generation { info, secret };
        match self.engine.install(self.server, &generation, now) {
            Ok(Installed::Rotated { retired }) => {
                if let Some(generation) = retired {
                    self.events.push_back(ClientEvent::Retired { generation });
                }
            }
            Ok(Installed::AlreadyHeld) => {}
            Err(_) => return Err(StaleHandshake),
        }
        // Receive under generation 1 at once, transmit under it only once the server has it
        // (until then nothing is sent: the init key carries no data).
        let _ = self.engine.set_tx_rule(self.server, TxRule::Previous);
        self.engine
            .set_exchanged(self.server, Slot::Newest, exchanged);
        self.exchange = None;
        self.newest_exchanged = Some((exchanged, now));
        self.events
            .push_back(ClientEvent::KeyInstalled { generation: info });
        self.confirming = Some(Box::new(Confirming {
            request_hash,
            tag,
            generation: 1,
            spi: d.spi,
            biscuit: biscuit.clone(),
        }));
        self.unanswered = 0;
        self.request(
            now,
            Kind::Confirm,
            Message::KeyInitConfirm {
                echo: request_hash,
                tag,
                biscuit,
            },
        );
        self.update_at = self
            .config
            .update_interval
            .map(|i| now + jittered(i, self.config.jitter_permille, self.rng.as_mut()));
        Ok(())
    }

    fn on_distribution(&mut self, now: Time, d: Distribution) {
        let have = self.newest();
        if have == 0 {
            return;
        }
        let Ok(spi) = Spi::new(d.spi) else { return };
        let info = GenerationInfo {
            number: d.generation,
            spi,
            suite: d.suite,
        };
        if d.generation == have {
            // A copy of what we hold (a retransmission): acknowledge it again.
            if self
                .engine
                .generation(self.server, Slot::Newest)
                .is_some_and(|g| g == info)
            {
                // It answers a resend request; an update request (for N+1) stays outstanding.
                if self
                    .request
                    .as_ref()
                    .is_some_and(|r| r.kind == Kind::Resend)
                {
                    self.request = None;
                    self.unanswered = 0;
                }
                self.ack(d.generation);
            }
            return;
        }
        if d.generation != have + 1 {
            return;
        }
        let Some(parent) = self.engine.secret(self.server, Slot::Newest).cloned() else {
            return;
        };
        let (secret, exchanged) = match &d.material {
            KeyMaterial::Secret(bytes) => (Secret::from_bytes(*bytes), false),
            KeyMaterial::Nonce(nonce) => (parent.derive_next(nonce, info), false),
            KeyMaterial::Exchange(share) => {
                let Some(x) = self.exchange.as_ref().filter(|x| x.request_hash == d.echo) else {
                    // Not an answer to the share we hold.
                    return;
                };
                let th = exchange_hash(&x.request_hash, &d);
                let Ok(shared) = x.ephemeral.finish(share) else {
                    return;
                };
                (Schedule::next_secret(&parent, &shared, &th, info), true)
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
                self.engine
                    .set_exchanged(self.server, Slot::Newest, exchanged);
                self.newest_exchanged = Some((exchanged, now));
                self.exchange = None;
                self.request = None;
                self.unanswered = 0;
                self.update_at = self
                    .config
                    .update_interval
                    .map(|i| now + jittered(i, self.config.jitter_permille, self.rng.as_mut()));
                self.ack(d.generation);
            }
            Ok(Installed::AlreadyHeld) => self.ack(d.generation),
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
        self.flush_rekey(now);
        if self.age_deadline().is_some_and(|t| t <= now) {
            self.check_triggers(now);
        }
        if let Some(r) = self.request.take_if(|r| r.next_at <= now) {
            self.unanswered += 1;
            let have = self.newest();
            if !matches!(r.kind, Kind::Init) && self.unanswered > self.config.max_retries {
                // S5: the server does not answer under our keys (or never confirmed
                // generation 1): start over with a new init handshake.
                self.events.push_back(ClientEvent::FellBackToInit);
                self.start_init(now);
            } else {
                // Retransmit: init, confirmation and requests with a share repeat themselves
                // (same id: the server recognises them); an unanswered plain update becomes a
                // resend request (S3).
                let attempt = self.unanswered.min(16);
                match (r.kind, r.msg) {
                    (kind, Some(msg)) => self.send_request(now, kind, *msg, r.id, attempt),
                    (Kind::Hello, None) => {
                        self.send_request(now, Kind::Hello, Message::Hello { have }, r.id, attempt)
                    }
                    (_, None) => {
                        self.next_id = self.next_id.wrapping_add(1);
                        let id = self.next_id;
                        let msg = Message::KeyResendRequest { have };
                        self.send_request(now, Kind::Resend, msg, id, attempt);
                    }
                }
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
        if self.update_at.is_none()
            && let Some(interval) = self.config.update_interval
            && self.newest() > 0
            && !self.awaiting_answer()
        {
            // A request cleared without an install (answered otherwise, or given up) must not
            // stop the client-timed updates.
            self.update_at =
                Some(now + jittered(interval, self.config.jitter_permille, self.rng.as_mut()));
        }
        if self.hello_at <= now {
            self.hello_at = now
                + jittered(
                    self.config.hello_interval,
                    self.config.jitter_permille,
                    self.rng.as_mut(),
                );
            if self.request.is_none() && self.newest() > 0 {
                let have = self.newest();
                self.request(now, Kind::Hello, Message::Hello { have });
            }
        }
    }
}
