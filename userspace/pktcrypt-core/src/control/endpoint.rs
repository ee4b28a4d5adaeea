//! [`Endpoint`]: the four roles behind one control-plane API, the only one a driver uses.
//!
//! # Call order
//!
//! Like quinn-proto's `Connection`, an endpoint never does I/O and never reads a clock; a
//! driver feeds it and drains it, in this order, every time it wakes:
//!
//! 1. **Input.** Every received datagram through [`Endpoint::handle_datagram`]. A driver whose
//!    data-plane workers open packets (the gateway) passes what they forward instead: control
//!    messages through [`Endpoint::handle_control`], and the data packets they sampled (at
//!    least the first of each generation from each peer, and one now and then) through
//!    [`Endpoint::handle_sampled`]. A host that receives whole IP packets (ESP in UDP, either
//!    mode) passes them through [`Endpoint::handle_transport`] instead.
//! 2. **Time.** [`Endpoint::handle_timeout`] once [`Endpoint::poll_timeout`] has passed; and,
//!    when workers seal and open outside the endpoint, [`Endpoint::check_triggers`] now and
//!    then (the rekey triggers count their packets, which no timer can predict).
//! 3. **Events**, [`Endpoint::poll_event`] until `None`. [`Event::KeysChanged`] always comes
//!    first and names exactly the peers whose keys changed: the driver republishes those
//!    ([`Endpoint::update_data_plane`]) and their SPIs before step 4, because what it sends
//!    next may announce the new keys (a distribution, a proof) and the answer must find them.
//! 4. **Output**, [`Endpoint::poll_transmit`] until `None`; each [`Transmit`] goes to its
//!    `destination`, or, when that is `None`, to the address the driver knows for its peer.
//! 5. **Sleep** until [`Endpoint::poll_timeout`] or the next datagram, whichever is first.
//!
//! Role-specific calls (adding a client, removing a group member, a status read-out) go
//! through [`Endpoint::machine`] and [`Endpoint::machine_mut`]; they may queue events and transmits
//! too, so a driver runs steps 3 and 4 after them.

use super::{
    ClientEvent, GroupController, GroupEvent, GroupMember, Incoming, KeyClient, KeyServer,
    MemberEvent, ServerEvent, Transmit, TwinDetector,
};
use crate::wire::transport::IpLayout;
use crate::wire::{NextHeader, UdpPorts};
use crate::{DataPlane, DropReason, Engine, Error, OpenInfo, Opened, PeerId, SealError, Time};
use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};

/// The state machine of one role.
#[derive(Debug)]
pub enum Machine {
    /// A key server: many clients, pairwise keys.
    Server(Box<KeyServer>),
    /// A client of one key server.
    Client(Box<KeyClient>),
    /// A group controller: distributes group keys to members, no data path.
    Controller(Box<GroupController>),
    /// A group member: data under the group keys, control with the controller.
    Member(Box<GroupMember>),
}

impl Machine {
    /// The role's name as configuration files spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Machine::Server(_) => "server",
            Machine::Client(_) => "client",
            Machine::Controller(_) => "group-controller",
            Machine::Member(_) => "group-member",
        }
    }
}

/// What an endpoint tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The keys of these peers changed (a generation installed, retired or reset, the transmit
    /// rule changed, the peer added or removed): republish exactly these to the data plane,
    /// and their SPIs to whatever filters by SPI, before sending anything.
    KeysChanged {
        /// The peers, each once.
        peers: Vec<PeerId>,
    },
    /// Two parties seem to use one client's init key (a copied configuration): their
    /// handshakes keep resetting each other's keys. See [`TwinDetector`].
    DuplicateClient {
        /// The client.
        peer: PeerId,
        /// The addresses the handshakes alternate between.
        addrs: (SocketAddr, SocketAddr),
    },
    /// A key server's event.
    Server(ServerEvent),
    /// A client's event.
    Client(ClientEvent),
    /// A group controller's event.
    Group(GroupEvent),
    /// A group member's event.
    Member(MemberEvent),
}

/// One role behind the control-plane API of the module documentation.
#[derive(Debug)]
pub struct Endpoint {
    machine: Machine,
    /// A key server's clients' recent init handshakes.
    twins: HashMap<PeerId, TwinDetector>,
    /// Events noticed here (duplicates), after the role's.
    events: VecDeque<Event>,
    /// The latest time the driver passed (events carry none; the twin detector's window is
    /// minutes).
    now: Time,
}

impl From<KeyServer> for Endpoint {
    fn from(s: KeyServer) -> Self {
        Self::new(Machine::Server(Box::new(s)))
    }
}

impl From<KeyClient> for Endpoint {
    fn from(c: KeyClient) -> Self {
        Self::new(Machine::Client(Box::new(c)))
    }
}

impl From<GroupController> for Endpoint {
    fn from(c: GroupController) -> Self {
        Self::new(Machine::Controller(Box::new(c)))
    }
}

impl From<GroupMember> for Endpoint {
    fn from(m: GroupMember) -> Self {
        Self::new(Machine::Member(Box::new(m)))
    }
}

impl Endpoint {
    /// An endpoint over `machine`. Key changes are reported from now on: a driver publishes a
    /// whole [`Self::data_plane`] first, then updates it on [`Event::KeysChanged`].
    pub fn new(mut machine: Machine) -> Self {
        if let Some(engine) = Self::data_engine(&mut machine) {
            engine.track_changes();
            // What exists now is in the first data_plane().
            engine.take_changed();
        }
        Self {
            machine,
            twins: HashMap::new(),
            events: VecDeque::new(),
            now: Time::ZERO,
        }
    }

    /// The engine whose keys the data plane holds (a controller has none).
    fn data_engine(machine: &mut Machine) -> Option<&mut Engine> {
        match machine {
            Machine::Server(s) => Some(s.engine_mut()),
            Machine::Client(c) => Some(c.engine_mut()),
            Machine::Member(m) => Some(m.engine_mut()),
            Machine::Controller(_) => None,
        }
    }

    /// From now on, keeps the final counters of every generation the data path's engine drops
    /// ([`Engine::keep_retired_counters`]): take them with [`Self::take_retired_counters`]
    /// regularly. Status only (a gateway's per-peer counters across rekeys).
    pub fn keep_retired_counters(&mut self) {
        if let Some(engine) = Self::data_engine(&mut self.machine) {
            engine.keep_retired_counters();
        }
    }

    /// The counters of the generations the data path's engine dropped since the last call
    /// ([`Engine::take_retired_counters`]).
    pub fn take_retired_counters(&mut self) -> Vec<crate::RetiredCounters> {
        Self::data_engine(&mut self.machine)
            .map(Engine::take_retired_counters)
            .unwrap_or_default()
    }

    /// The role's state machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The role's state machine, for role-specific calls (run steps 3 and 4 afterwards).
    pub fn machine_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// The engine holding the keys of the data path (a group controller's: its channels').
    pub fn engine(&self) -> &Engine {
        match &self.machine {
            Machine::Server(s) => s.engine(),
            Machine::Client(c) => c.engine(),
            Machine::Controller(c) => c.channel().engine(),
            Machine::Member(m) => m.engine(),
        }
    }

    /// The newest generation this side holds (a server: 0, generations are per client).
    pub fn generation(&self) -> u64 {
        match &self.machine {
            Machine::Server(_) => 0,
            Machine::Client(c) => c.newest(),
            Machine::Controller(c) => c.generation(),
            Machine::Member(m) => m.generation(),
        }
    }

    /// Step 1: one received ESP packet (the UDP payload) from `from`. Data comes back
    /// decrypted in place; control messages are consumed.
    pub fn handle_datagram<'b>(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        buf: &'b mut [u8],
    ) -> Incoming<'b> {
        self.now = self.now.max(now);
        // The SPI, for a failed authentication's trigger (the packet is opened in place).
        let spi = buf
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let incoming = match &mut self.machine {
            Machine::Server(s) => s.handle_datagram(now, from, buf),
            Machine::Client(c) => c.handle_datagram(now, buf),
            Machine::Controller(c) => c.handle_datagram(now, from, buf),
            Machine::Member(m) => m.handle_datagram(now, buf),
        };
        if let Incoming::Dropped(DropReason::AuthFailed) = incoming {
            self.after_forgery(now, spi);
        }
        incoming
    }

    /// Opened data already ran its peer's triggers; a forgery counts towards the
    /// `auth_failures` trigger of the peer its SPI names.
    fn after_forgery(&mut self, now: Time, spi: Option<u32>) {
        match &mut self.machine {
            Machine::Server(s) => {
                if let Some((peer, _, _)) = spi.and_then(|spi| s.engine().lookup_spi(spi)) {
                    s.check_triggers(now, peer);
                }
            }
            Machine::Client(c) => c.check_triggers(now),
            Machine::Controller(_) | Machine::Member(_) => {}
        }
    }

    /// Step 1, from workers: a control message a data-plane worker opened (under `info`) from
    /// `from`. A group's control messages never travel in group SAs: from a member's workers
    /// they are dropped.
    pub fn handle_control(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        info: OpenInfo,
        message: &[u8],
    ) -> Incoming<'static> {
        self.now = self.now.max(now);
        let opened = Opened::Control { message, info };
        let incoming = match &mut self.machine {
            Machine::Server(s) => s.handle_opened(now, from, opened),
            Machine::Client(c) => c.handle_opened(now, opened),
            Machine::Controller(_) | Machine::Member(_) => {
                Incoming::Dropped(DropReason::ControlUnexpected)
            }
        };
        match incoming {
            Incoming::Control { peer } => Incoming::Control { peer },
            Incoming::Dropped(r) => Incoming::Dropped(r),
            // Control in, control out.
            Incoming::Data { .. } => Incoming::Dropped(DropReason::ControlUnexpected),
        }
    }

    /// Step 1, from workers: a data packet a worker opened (under `info`) from `from`, sampled
    /// (see the module documentation). Group data needs no control reaction.
    pub fn handle_sampled(&mut self, now: Time, from: Option<SocketAddr>, info: &OpenInfo) {
        self.now = self.now.max(now);
        match &mut self.machine {
            Machine::Server(s) => s.handle_sampled(now, from, info),
            Machine::Client(c) => c.handle_sampled(now, info),
            Machine::Controller(_) | Machine::Member(_) => {}
        }
    }

    /// Step 2: runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        match &mut self.machine {
            Machine::Server(s) => s.handle_timeout(now),
            Machine::Client(c) => c.handle_timeout(now),
            Machine::Controller(c) => c.handle_timeout(now),
            Machine::Member(m) => m.handle_timeout(now),
        }
    }

    /// Step 2, for drivers whose workers seal and open: evaluates the rekey triggers against
    /// the counters the workers add to (a group's controller rekeys the group on its timer).
    pub fn check_triggers(&mut self, now: Time) {
        match &mut self.machine {
            Machine::Server(s) => {
                let peers: Vec<PeerId> = s.engine().peers().collect();
                for p in peers {
                    s.check_triggers(now, p);
                }
            }
            Machine::Client(c) => c.check_triggers(now),
            Machine::Controller(_) | Machine::Member(_) => {}
        }
    }

    /// Rekey on demand, a role-specific call (run steps 3 and 4 after it): a key server rotates
    /// `peer` (every client with `None`) at its next proof of its key; a client asks its server
    /// for a new generation now; a group controller starts a rollout (after the one in
    /// progress). Returns how many rotations were asked for: 0 for an unknown peer, a peer
    /// without a generation yet, a controller without an active member, or a group member (its
    /// controller rekeys the group).
    pub fn rekey(&mut self, now: Time, peer: Option<PeerId>) -> usize {
        self.now = self.now.max(now);
        match &mut self.machine {
            Machine::Server(s) => match peer {
                Some(p) => usize::from(s.rekey(p)),
                None => {
                    let peers: Vec<PeerId> = s.engine().peers().collect();
                    peers.into_iter().filter(|p| s.rekey(*p)).count()
                }
            },
            Machine::Client(c) => usize::from(c.rekey(now)),
            // No member in the group: nothing to roll out.
            Machine::Controller(c) if c.active_members().is_empty() => 0,
            Machine::Controller(c) => {
                c.rekey(now, "operator");
                1
            }
            Machine::Member(_) => 0,
        }
    }

    /// Step 3: the next event; [`Event::KeysChanged`] first.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(engine) = Self::data_engine(&mut self.machine) {
            let peers = engine.take_changed();
            if !peers.is_empty() {
                return Some(Event::KeysChanged { peers });
            }
        }
        let now = self.now;
        let role_event = match &mut self.machine {
            Machine::Server(s) => s.poll_event().map(|e| {
                if let ServerEvent::ClientInit { peer } = e
                    && let Some(addr) = s.address(peer)
                    // Only a handshake can start a twin's signature; a restart from one
                    // address never completes it.
                    && let Some(addrs) =
                        self.twins.entry(peer).or_default().handshake_from(now, addr)
                {
                    self.events
                        .push_back(Event::DuplicateClient { peer, addrs });
                }
                Event::Server(e)
            }),
            Machine::Client(c) => c.poll_event().map(Event::Client),
            Machine::Controller(c) => c.poll_event().map(Event::Group),
            Machine::Member(m) => m.poll_event().map(Event::Member),
        };
        role_event.or_else(|| self.events.pop_front())
    }

    /// Step 4: the next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        match &mut self.machine {
            Machine::Server(s) => s.poll_transmit(),
            Machine::Client(c) => c.poll_transmit(),
            Machine::Controller(c) => c.poll_transmit(),
            Machine::Member(m) => m.poll_transmit(),
        }
    }

    /// Step 5: the next timer deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        match &self.machine {
            Machine::Server(s) => s.poll_timeout(),
            Machine::Client(c) => c.poll_timeout(),
            Machine::Controller(c) => c.poll_timeout(),
            Machine::Member(m) => m.poll_timeout(),
        }
    }

    /// Seals a data packet for `peer` (a client's server and a member's group whatever
    /// `peer` says; a controller has no data keys: [`SealError::NoKey`]). See
    /// [`Engine::seal`]; a server and a client check the peer's rekey triggers too (as
    /// [`Self::handle_datagram`] does for what it opens and for failed authentications).
    ///
    /// # Errors
    /// As [`Engine::seal`].
    pub fn seal(
        &mut self,
        now: Time,
        peer: PeerId,
        buf: &mut [u8],
        len: usize,
        next: NextHeader,
    ) -> Result<usize, SealError> {
        match &mut self.machine {
            Machine::Server(s) => {
                let r = s.seal(peer, buf, len, next);
                s.check_triggers(now, peer);
                r
            }
            Machine::Client(c) => c.seal(now, buf, len, next),
            Machine::Member(m) => m.seal(buf, len, next),
            Machine::Controller(_) => Err(SealError::NoKey),
        }
    }

    /// Seals one IP packet for `peer` in ESP transport mode inside UDP (host to host: RFC 4303
    /// §3.1.1, RFC 3948; see [`crate::wire::transport`]), with the keys and rules of
    /// [`Self::seal`]. The IPv4 or IPv6 packet sits at `buf[TRANSPORT_HEADROOM..][..len]`, the
    /// buffer has room for `len + TRANSPORT_OVERHEAD` bytes; returns the length of the packet
    /// to send at `buf[..n]` (the original IP header with protocol 17, UDP from `ports.src`
    /// to `ports.dst`, ESP). Send it as it is (a raw IP socket, a TUN device).
    ///
    /// # Errors
    /// As [`Engine::seal_transport`].
    ///
    /// [`TRANSPORT_HEADROOM`]: crate::wire::TRANSPORT_HEADROOM
    /// [`TRANSPORT_OVERHEAD`]: crate::wire::TRANSPORT_OVERHEAD
    pub fn seal_transport(
        &mut self,
        now: Time,
        peer: PeerId,
        buf: &mut [u8],
        len: usize,
        ports: UdpPorts,
    ) -> Result<usize, SealError> {
        IpLayout::seal(buf, len, ports, |esp, n, next| {
            self.seal(now, peer, esp, n, next)
        })
    }

    /// Step 1 for a host that receives whole IP packets: one received IP packet carrying ESP in
    /// UDP (`buf` starts at the IP header), in either mode, opened in place as
    /// [`Engine::open_transport`] says. [`Incoming::Data`] names the mode by its
    /// `next_header`: [`NextHeader::Transport`] with the restored IP packet (at
    /// `buf[TRANSPORT_HEADROOM..]`), or IPv4 / IPv6 with a tunnel-mode inner packet. Control
    /// messages are consumed as [`Self::handle_datagram`] consumes them, from the packet's
    /// UDP source. Drops are counted with the engine's, the IP and UDP headers' included; the
    /// rekey triggers run as in [`Self::handle_datagram`] (a forgery counts towards its peer's
    /// `auth_failures`).
    ///
    /// [`TRANSPORT_HEADROOM`]: crate::wire::TRANSPORT_HEADROOM
    pub fn handle_transport<'b>(&mut self, now: Time, buf: &'b mut [u8]) -> Incoming<'b> {
        self.now = self.now.max(now);
        let parsed = IpLayout::parse_received(buf).ok();
        // The SPI, for a failed authentication's trigger (the packet is opened in place).
        let spi = parsed.as_ref().and_then(|(_, esp, _)| {
            let b = buf.get(esp.start..esp.start + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        });
        let from = parsed.map(|(_, _, from)| from);
        let incoming = match &mut self.machine {
            Machine::Server(s) => {
                let opened = s.engine_mut().open_transport(buf);
                s.handle_opened(now, from, opened)
            }
            Machine::Client(c) => {
                let opened = c.engine_mut().open_transport(buf);
                c.handle_opened(now, opened)
            }
            Machine::Member(m) => m.handle_transport(now, buf),
            // Control messages only.
            Machine::Controller(c) => match IpLayout::parse_received(buf) {
                Ok((_, esp, from)) => c.handle_datagram(now, Some(from), &mut buf[esp]),
                Err(reason) => Incoming::Dropped(reason),
            },
        };
        if let Incoming::Dropped(DropReason::AuthFailed) = incoming {
            self.after_forgery(now, spi);
        }
        incoming
    }

    /// Every key of the data path, for data-plane workers (see [`DataPlane`]); a controller
    /// has none (an empty one).
    ///
    /// # Errors
    /// As [`Engine::data_plane`].
    pub fn data_plane(&mut self) -> Result<DataPlane, Error> {
        match &mut self.machine {
            Machine::Server(s) => s.data_plane(),
            Machine::Client(c) => c.data_plane(),
            Machine::Member(m) => m.data_plane(),
            Machine::Controller(_) => Engine::new(crate::EngineConfig::new(crate::Role::KeyServer))
                .and_then(|mut e| e.data_plane()),
        }
    }

    /// `plane` with the keys of `peers` (from [`Event::KeysChanged`]) as they are now.
    ///
    /// # Errors
    /// As [`Engine::data_plane`].
    pub fn update_data_plane(
        &mut self,
        plane: &DataPlane,
        peers: &[PeerId],
    ) -> Result<DataPlane, Error> {
        match Self::data_engine(&mut self.machine) {
            Some(engine) => engine.update_data_plane(plane, peers),
            None => Ok(plane.clone()),
        }
    }
}
