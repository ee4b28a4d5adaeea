//! A deterministic simulation of one key server and many clients with virtual time.
//!
//! Links between the server and each client carry every packet through an event queue with a
//! configurable delay, jitter (which reorders), loss and duplication. Control messages and data
//! can be given different loss rates: the spec's invariants are stated for lost *control*
//! messages while data keeps flowing both ways all the time. Every sealed packet's
//! (sender, SPI, sequence number) is recorded to prove no nonce is ever used twice.

use pktcrypt_core::control::{
    ClientConfig, ClientEvent, Incoming, KeyClient, KeyServer, SeededRandom, ServerConfig,
    ServerEvent, Transmit,
};
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_core::{
    DropReason, Generation, GenerationInfo, PeerId, Secret, Slot, Spi, Suite, Time,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

/// Which way a captured datagram travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Way {
    /// Client → server.
    ToServer,
    /// Server → client.
    ToClient,
}

/// One datagram as an on-path observer sees it (recorded while [`Sim::capturing`]): every
/// datagram an endpoint put on a link (before loss and duplication), and every datagram a test
/// injected.
#[derive(Clone, Debug)]
pub struct Captured {
    /// When it was sent or injected.
    pub at: Time,
    /// Direction.
    pub way: Way,
    /// The client it was from or for.
    pub client: usize,
    /// A control message (as the sender's driver knows it), not data.
    pub control: bool,
    /// Injected by the test rather than sent by an endpoint.
    pub injected: bool,
    /// The destination the server's `Transmit` named (server control messages only).
    pub destination: Option<SocketAddr>,
    /// The ESP packet (UDP payload).
    pub bytes: Vec<u8>,
}

/// What the server did with a datagram injected by [`Sim::inject_to_server`].
#[derive(Clone, Debug)]
pub struct Injected {
    /// Opened (data or control) or dropped, and why.
    pub outcome: Result<(), DropReason>,
    /// What the server transmitted in direct response. Not put on any link: it went to the
    /// `destination` it names (which the simulation does not model).
    pub responses: Vec<Transmit>,
}

/// IPv6 (40) and UDP (8) headers around an ESP-in-UDP datagram.
const IPV6_UDP: usize = 48;

/// Link behaviour, per direction.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Base one-way delay.
    pub delay: Duration,
    /// Extra random delay in `0..jitter` (reorders packets).
    pub jitter: Duration,
    /// Probability a control message is lost.
    pub control_loss: f64,
    /// Probability a data packet is lost.
    pub data_loss: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(5),
            control_loss: 0.0,
            data_loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// Tiny deterministic generator for link decisions (xorshift64*).
#[derive(Clone, Debug)]
pub struct Dice(u64);

impl Dice {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    /// Uniform in `0..d`.
    pub fn duration(&mut self, d: Duration) -> Duration {
        let n = d.as_nanos() as u64;
        if n == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.next_u64() % n)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Server { client: usize },
    Client { client: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flight {
    dest: Dest,
    control: bool,
    bytes: Vec<u8>,
}

/// Per-run counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Data packets sealed (both directions).
    pub data_sent: u64,
    /// Data packets lost on the link on purpose.
    pub data_lost_on_link: u64,
    /// Extra copies of data packets the link delivered (each must be dropped as a replay).
    pub data_duplicated: u64,
    /// Data packets delivered and opened.
    pub data_opened: u64,
    /// Data packets dropped by a receiver, by reason.
    pub data_dropped: HashMap<DropReason, u64>,
    /// Data packets dropped for a key mismatch (unknown SPI or failed authentication).
    pub key_mismatch: u64,
    /// Control messages sent / lost on the link.
    pub control_sent: u64,
    /// Control messages lost on purpose.
    pub control_lost: u64,
    /// Generations minted by the server.
    pub minted: u64,
    /// Resends by the server (explicit, implicit).
    pub resent_explicit: u64,
    /// Implicit resends.
    pub resent_implicit: u64,
    /// Client fallbacks to the init key.
    pub fallbacks: u64,
}

/// A simulated client.
pub struct SimClient {
    /// The state machine.
    pub machine: KeyClient,
    /// Its id at the server.
    pub peer: PeerId,
    /// Its init key.
    pub init: Generation,
    /// Configuration (for restarts).
    pub config: ClientConfig,
    /// Events seen.
    pub events: Vec<(Time, ClientEvent)>,
}

/// The simulation.
pub struct Sim {
    /// Virtual time.
    pub now: Time,
    /// The key server.
    pub server: KeyServer,
    /// Server configuration (for restarts).
    pub server_config: ServerConfig,
    /// Clients.
    pub clients: Vec<SimClient>,
    /// Server events seen.
    pub server_events: Vec<(Time, ServerEvent)>,
    /// Link client → server.
    pub up: Link,
    /// Link server → client.
    pub down: Link,
    /// Data packet interval per client and direction (`None`: no data).
    pub data_interval: Option<Duration>,
    /// Counters.
    pub stats: Stats,
    /// Drop the next `n` server → client control messages (targeted loss for scenarios).
    pub drop_next_down_control: u32,
    /// Record every datagram into [`Self::capture`] (off by default: long runs would grow it).
    pub capturing: bool,
    /// The datagrams recorded while [`Self::capturing`].
    pub capture: Vec<Captured>,
    queue: BinaryHeap<Reverse<(Time, u64, Flight)>>,
    seq: u64,
    dice: Dice,
    next_data: Time,
    nonces: HashSet<(bool, u32, [u8; 8])>,
    seed: u64,
}

/// The init key of client `i`.
pub fn init_key(i: usize, suite: Suite) -> Generation {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&(i as u64).to_be_bytes());
    secret[31] = 0x11;
    Generation {
        info: GenerationInfo {
            number: 0,
            spi: Spi::new(0x100 + i as u32).expect("spi"),
            suite,
        },
        secret: Secret::from_bytes(secret),
    }
}

impl Sim {
    /// A simulation with `n` clients.
    pub fn new(
        n: usize,
        server_config: ServerConfig,
        client_config: ClientConfig,
        seed: u64,
    ) -> Self {
        let now = Time::ZERO;
        let mut server = KeyServer::new(server_config.clone(), Box::new(SeededRandom::new(seed)))
            .expect("server config");
        let mut clients = Vec::new();
        for i in 0..n {
            let init = init_key(i, Suite::Aes128Gcm);
            let peer = server.add_client(&init, None, now).expect("add client");
            let machine = KeyClient::new(
                client_config.clone(),
                &init,
                Box::new(SeededRandom::new(seed ^ (i as u64 + 1) << 20)),
                now,
            )
            .expect("client");
            clients.push(SimClient {
                machine,
                peer,
                init,
                config: client_config.clone(),
                events: Vec::new(),
            });
        }
        Self {
            now,
            server,
            server_config,
            clients,
            server_events: Vec::new(),
            up: Link::default(),
            down: Link::default(),
            data_interval: Some(Duration::from_millis(100)),
            stats: Stats::default(),
            drop_next_down_control: 0,
            capturing: false,
            capture: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            dice: Dice::new(seed),
            next_data: Time::ZERO,
            nonces: HashSet::new(),
            seed,
        }
    }

    fn record_nonce(&mut self, from_server: bool, packet: &[u8]) {
        let mut spi = [0u8; 4];
        spi.copy_from_slice(&packet[..4]);
        let mut iv = [0u8; 8];
        iv.copy_from_slice(&packet[8..16]);
        let fresh = self
            .nonces
            .insert((from_server, u32::from_be_bytes(spi), iv));
        assert!(
            fresh,
            "nonce reused: sender server={from_server} spi={spi:?} iv={iv:?}"
        );
    }

    fn record_capture(
        &mut self,
        dest: &Dest,
        control: bool,
        injected: bool,
        destination: Option<SocketAddr>,
        bytes: &[u8],
    ) {
        if !self.capturing {
            return;
        }
        let (way, client) = match *dest {
            Dest::Server { client } => (Way::ToServer, client),
            Dest::Client { client } => (Way::ToClient, client),
        };
        self.capture.push(Captured {
            at: self.now,
            way,
            client,
            control,
            injected,
            destination,
            bytes: bytes.to_vec(),
        });
    }

    fn send(&mut self, dest: Dest, control: bool, bytes: Vec<u8>) {
        self.send_to(dest, control, None, bytes);
    }

    fn send_to(
        &mut self,
        dest: Dest,
        control: bool,
        destination: Option<SocketAddr>,
        bytes: Vec<u8>,
    ) {
        let to_server = matches!(dest, Dest::Server { .. });
        self.record_nonce(!to_server, &bytes);
        // Every control datagram fits IPv6's minimum MTU (1280) with its IPv6 and UDP headers:
        // the smallest path pktcrypt supports (key shares travel in fragments).
        assert!(
            !control || bytes.len() + IPV6_UDP <= 1280,
            "a {}-byte control datagram does not fit a 1280-byte IPv6 path",
            bytes.len()
        );
        self.record_capture(&dest, control, false, destination, &bytes);
        let link = if to_server { self.up } else { self.down };
        if control {
            self.stats.control_sent += 1;
            if !to_server && self.drop_next_down_control > 0 {
                self.drop_next_down_control -= 1;
                self.stats.control_lost += 1;
                return;
            }
        }
        let loss = if control {
            link.control_loss
        } else {
            link.data_loss
        };
        if self.dice.chance(loss) {
            if control {
                self.stats.control_lost += 1;
            } else {
                self.stats.data_lost_on_link += 1;
            }
            return;
        }
        let copies = if self.dice.chance(link.duplicate) {
            2
        } else {
            1
        };
        if copies == 2 && !control {
            self.stats.data_duplicated += 1;
        }
        for _ in 0..copies {
            let at = self.now + link.delay + self.dice.duration(link.jitter);
            self.seq += 1;
            self.queue.push(Reverse((
                at,
                self.seq,
                Flight {
                    dest: dest.clone(),
                    control,
                    bytes: bytes.clone(),
                },
            )));
        }
    }

    fn drain(&mut self) {
        while let Some(Transmit {
            peer,
            destination,
            contents,
        }) = self.server.poll_transmit()
        {
            if let Some(i) = self.clients.iter().position(|c| c.peer == peer) {
                self.send_to(Dest::Client { client: i }, true, destination, contents);
            }
        }
        while let Some(e) = self.server.poll_event() {
            match e {
                ServerEvent::KeyMinted { .. } => self.stats.minted += 1,
                ServerEvent::Resent { implicit: true, .. } => self.stats.resent_implicit += 1,
                ServerEvent::Resent {
                    implicit: false, ..
                } => self.stats.resent_explicit += 1,
                _ => {}
            }
            self.server_events.push((self.now, e));
        }
        for i in 0..self.clients.len() {
            while let Some(t) = self.clients[i].machine.poll_transmit() {
                self.send(Dest::Server { client: i }, true, t.contents);
            }
            while let Some(e) = self.clients[i].machine.poll_event() {
                if e == ClientEvent::FellBackToInit {
                    self.stats.fallbacks += 1;
                }
                let now = self.now;
                self.clients[i].events.push((now, e));
            }
        }
    }

    fn send_data(&mut self) {
        let inner_len = 60;
        for i in 0..self.clients.len() {
            let mut buf = vec![0u8; ESP_HEADER_LEN + inner_len + MAX_OVERHEAD];
            buf[ESP_HEADER_LEN] = 0x45;
            let now = self.now;
            if let Ok(n) = self.clients[i]
                .machine
                .seal(now, &mut buf, inner_len, NextHeader::Ipv4)
            {
                self.stats.data_sent += 1;
                buf.truncate(n);
                self.send(Dest::Server { client: i }, false, buf);
            }
            let mut buf = vec![0u8; ESP_HEADER_LEN + inner_len + MAX_OVERHEAD];
            buf[ESP_HEADER_LEN] = 0x45;
            let peer = self.clients[i].peer;
            if let Ok(n) = self
                .server
                .seal(peer, &mut buf, inner_len, NextHeader::Ipv4)
            {
                self.stats.data_sent += 1;
                buf.truncate(n);
                self.send(Dest::Client { client: i }, false, buf);
            }
        }
        self.drain();
    }

    fn deliver(&mut self, f: Flight) {
        let now = self.now;
        let mut bytes = f.bytes;
        let result = match f.dest {
            Dest::Server { .. } => match self.server.handle_datagram(now, None, &mut bytes) {
                Incoming::Data { .. } => Ok(()),
                Incoming::Control { .. } => Ok(()),
                Incoming::Dropped(r) => Err(r),
            },
            Dest::Client { client } => match self.clients[client]
                .machine
                .handle_datagram(now, &mut bytes)
            {
                Incoming::Data { .. } => Ok(()),
                Incoming::Control { .. } => Ok(()),
                Incoming::Dropped(r) => Err(r),
            },
        };
        if !f.control {
            match result {
                Ok(()) => self.stats.data_opened += 1,
                Err(r) => {
                    *self.stats.data_dropped.entry(r).or_default() += 1;
                    if matches!(r, DropReason::UnknownSpi | DropReason::AuthFailed) {
                        self.stats.key_mismatch += 1;
                    }
                }
            }
        }
        self.drain();
    }

    /// Delivers `bytes` to client `i` now, as if they had just arrived from the link (a replay
    /// or forgery by an on-path attacker). Whatever the client sends in response goes on the
    /// link as usual.
    pub fn inject_to_client(&mut self, i: usize, bytes: &[u8]) -> Result<(), DropReason> {
        let dest = Dest::Client { client: i };
        self.record_capture(&dest, false, true, None, bytes);
        let now = self.now;
        let mut buf = bytes.to_vec();
        let r = match self.clients[i].machine.handle_datagram(now, &mut buf) {
            Incoming::Data { .. } | Incoming::Control { .. } => Ok(()),
            Incoming::Dropped(r) => Err(r),
        };
        self.drain();
        r
    }

    /// Delivers `bytes` to the server now, from `from` (`None`: as the simulation's own
    /// deliveries, which carry no address), labelled as client `i`'s in the capture. What the
    /// server transmits in direct response is returned, not put on a link (it goes to the
    /// destination it names; it is captured and its nonce checked); events and client traffic are
    /// handled as usual.
    pub fn inject_to_server(
        &mut self,
        i: usize,
        from: Option<SocketAddr>,
        bytes: &[u8],
    ) -> Injected {
        let dest = Dest::Server { client: i };
        self.record_capture(&dest, false, true, None, bytes);
        let now = self.now;
        let mut buf = bytes.to_vec();
        let outcome = match self.server.handle_datagram(now, from, &mut buf) {
            Incoming::Data { .. } | Incoming::Control { .. } => Ok(()),
            Incoming::Dropped(r) => Err(r),
        };
        let mut responses = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            // Sealed all the same: its nonce counts, and an observer sees it.
            self.record_nonce(true, &t.contents);
            if let Some(c) = self.clients.iter().position(|c| c.peer == t.peer) {
                let dest = Dest::Client { client: c };
                self.record_capture(&dest, true, false, t.destination, &t.contents);
            }
            responses.push(t);
        }
        self.drain();
        Injected { outcome, responses }
    }

    /// Runs until `end`.
    pub fn run_until(&mut self, end: Time) {
        self.drain();
        loop {
            let mut next = end;
            if let Some(Reverse((t, _, _))) = self.queue.peek() {
                next = next.min(*t);
            }
            if let Some(t) = self.server.poll_timeout() {
                next = next.min(t);
            }
            for c in &self.clients {
                if let Some(t) = c.machine.poll_timeout() {
                    next = next.min(t);
                }
            }
            if self.data_interval.is_some() {
                next = next.min(self.next_data);
            }
            if next >= end {
                self.now = end;
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            while self
                .queue
                .peek()
                .is_some_and(|Reverse((t, _, _))| *t <= now)
            {
                if let Some(Reverse((_, _, f))) = self.queue.pop() {
                    self.deliver(f);
                }
            }
            if self.server.poll_timeout().is_some_and(|t| t <= now) {
                self.server.handle_timeout(now);
                self.drain();
            }
            for i in 0..self.clients.len() {
                if self.clients[i]
                    .machine
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                {
                    self.clients[i].machine.handle_timeout(now);
                }
            }
            self.drain();
            if let Some(interval) = self.data_interval
                && self.next_data <= now
            {
                self.send_data();
                self.next_data = now + interval;
            }
        }
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Client `i`'s newest generation and the server's newest (and proven) for it.
    pub fn generations(&self, i: usize) -> (u64, u64, u64) {
        let c = &self.clients[i];
        let s_newest = self
            .server
            .engine()
            .generation(c.peer, Slot::Newest)
            .map_or(0, |g| g.number);
        (
            c.machine.newest(),
            s_newest,
            self.server.proven(c.peer).unwrap_or(0),
        )
    }

    /// Whether client `i` and the server agree on one newest generation (the same number and
    /// SPI: a restarted client's new generation 1 is not the server's old one), proven.
    pub fn converged(&self, i: usize) -> bool {
        let (c, s, p) = self.generations(i);
        let client = &self.clients[i];
        let same = client
            .machine
            .engine()
            .generation(client.machine.server(), Slot::Newest)
            == self.server.engine().generation(client.peer, Slot::Newest);
        c > 0 && c == s && s == p && same
    }

    /// Runs in steps of `step` until every client converged, up to `limit`. Returns the time it
    /// took, or `None`.
    pub fn run_until_converged(&mut self, step: Duration, limit: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now - start <= limit {
            if (0..self.clients.len()).all(|i| self.converged(i)) {
                return Some(self.now - start);
            }
            self.run_for(step);
        }
        None
    }

    /// Asserts that no peer holds more than two dynamic generations (plus the init key).
    pub fn assert_at_most_two_generations(&self) {
        for c in &self.clients {
            for (engine, peer) in [
                (c.machine.engine(), c.machine.server()),
                (self.server.engine(), c.peer),
            ] {
                let st = engine.peer_status(peer).expect("peer");
                assert!(st.sas.len() <= 3, "more than init + 2 generations: {st:?}");
            }
        }
    }

    /// Restarts client `i` with only its init key (S6).
    pub fn restart_client(&mut self, i: usize) {
        let c = &mut self.clients[i];
        // A new boot. Nothing depends on the clock: every boot uses the same (worst-case) init
        // sequence base, and version 3 never counts under the init key anyway.
        let mut config = c.config.clone();
        config.engine.init_seq_base = 1;
        c.machine = KeyClient::new(
            config,
            &c.init,
            Box::new(SeededRandom::new(
                self.seed ^ 0xdead ^ self.now.as_nanos() as u64 ^ i as u64,
            )),
            self.now,
        )
        .expect("client restart");
        self.drain();
    }

    /// Replaces the server with a fresh one that lost every dynamic key (S5).
    pub fn restart_server(&mut self) {
        let mut config = self.server_config.clone();
        config.engine.init_seq_base = 1;
        let mut server = KeyServer::new(
            config,
            Box::new(SeededRandom::new(
                self.seed ^ 0xbeef ^ self.now.as_nanos() as u64,
            )),
        )
        .expect("server");
        for c in &mut self.clients {
            c.peer = server.add_client(&c.init, None, self.now).expect("client");
        }
        self.server = server;
    }
}
