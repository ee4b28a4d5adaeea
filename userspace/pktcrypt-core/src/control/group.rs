//! Group mode (spec §6): a key controller and many members sharing one group key.
//!
//! **Keys.** Every group generation is one secret; member `i` transmits under SPI
//! `spi_base + i` with a key derived for that SPI ([`crate::Direction::GroupSender`]), so members
//! share the secret but never a (key, nonce). Receivers pick the key by SPI: no trial
//! decryption. The group init key works the same way under `init_spi_base + i`.
//!
//! **Control channel.** Controller and member talk pairwise, sealed under the member's own
//! init key (provisioned out of band, like the group init key): `GROUP_KEY` carries the secret
//! to one member only.
//!
//! **Rollout.** The controller distributes generation N+1 to every member; each installs it,
//! keeps transmitting with N and acks (DISTRIBUTION_COMPLETED). When all have acked, the first
//! transition request switches them to transmit with N+1 (IN_TRANSIT). When all are in transit,
//! the second transition request makes them drop N (UPDATE_COMPLETED). At every moment every
//! member holds every key anyone transmits with, so the rollout is hitless. Lost messages are
//! retried with back-off; a member that never answers is reported and, by policy, evicted (and
//! the group rekeyed without it). A join, a leave, or a packet from an address not in the
//! management table triggers a rekey; a member that regains connectivity asks for the current key.

use super::message::{GroupKey, GroupPhase, Message};
use super::{
    Incoming, Random, SCRATCH_LEN, Transmit, backoff, dispatch_control, jittered, seal_messages,
};
use crate::wire::NextHeader;
use crate::wire::esp::EspHeader;
use crate::{
    DropReason, Engine, EngineConfig, Error, Generation, GenerationInfo, Opened, PeerId, Role,
    SealError, Secret, Slot, Spi, Suite, Time, TxRule,
};
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

/// Group configuration (controller and members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Data-plane settings.
    pub engine: EngineConfig,
    /// Suite of new group generations.
    pub suite: Suite,
    /// Rekey the group this often (jittered ±10 %). `None`: only on events.
    pub rekey_interval: Option<Duration>,
    /// First retransmission of an unanswered control message.
    pub retry: Duration,
    /// Largest retransmission interval.
    pub max_backoff: Duration,
    /// Retransmissions before a member is reported unresponsive.
    pub max_retries: u32,
    /// Evict unresponsive members (and rekey without them).
    pub evict_unresponsive: bool,
    /// Pause between rollout phases so packets under the previous rule arrive first.
    pub phase_grace: Duration,
    /// Smallest interval between two rekeys triggered by unknown senders.
    pub unknown_sender_holdoff: Duration,
}

impl GroupConfig {
    /// Defaults: AES-256-GCM, hourly rekeys, retries from 500 ms, eviction on.
    pub fn new() -> Self {
        Self {
            engine: EngineConfig::new(Role::Client),
            suite: Suite::Aes256Gcm,
            rekey_interval: Some(Duration::from_secs(3600)),
            retry: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
            max_retries: 6,
            evict_unresponsive: true,
            phase_grace: Duration::from_millis(100),
            unknown_sender_holdoff: Duration::from_secs(10),
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The state of a member (spec §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Holds only the newest key and transmits with it.
    UpdateCompleted,
    /// Holds old and new, transmits with old.
    DistributionCompleted,
    /// Holds old and new, transmits with new.
    InTransit,
}

/// One row of the controller's management table: which generation was sent to which member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// Member index.
    pub member: u16,
    /// The member's address when it was sent, if known.
    pub addr: Option<SocketAddr>,
    /// Group generation.
    pub generation: u64,
    /// When the key was first sent.
    pub sent_at: Time,
    /// Highest phase the member acknowledged for it.
    pub acked: Option<GroupPhase>,
}

/// What the controller tells the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// A rollout of `generation` started.
    RolloutStarted {
        /// The new generation.
        generation: u64,
        /// Why.
        reason: &'static str,
    },
    /// Every member reached `phase` for `generation`.
    PhaseCompleted {
        /// Generation.
        generation: u64,
        /// Phase.
        phase: GroupPhase,
    },
    /// A member did not answer through all retries.
    Unresponsive {
        /// Member index.
        member: u16,
    },
    /// A member was evicted.
    Evicted {
        /// Member index.
        member: u16,
    },
    /// A member joined.
    Joined {
        /// Member index.
        member: u16,
    },
    /// A member left.
    Left {
        /// Member index.
        member: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Idle,
    Distributing,
    Transit,
    Completing,
}

impl Stage {
    fn wanted(self) -> Option<GroupPhase> {
        match self {
            Stage::Idle => None,
            Stage::Distributing => Some(GroupPhase::DistributionCompleted),
            Stage::Transit => Some(GroupPhase::InTransit),
            Stage::Completing => Some(GroupPhase::UpdateCompleted),
        }
    }
}

#[derive(Clone, Debug)]
struct MemberRec {
    peer: PeerId,
    active: bool,
    addr: Option<SocketAddr>,
    reached: Option<GroupPhase>,
    retries: u32,
    next_retry: Option<Time>,
}

#[derive(Clone)]
struct GroupGen {
    number: u64,
    spi_base: u32,
    suite: Suite,
    secret: Secret,
}

/// The group key controller.
pub struct GroupController {
    config: GroupConfig,
    control: Engine,
    rng: Box<dyn Random>,
    members: Vec<MemberRec>,
    current: Option<GroupGen>,
    old: Option<GroupGen>,
    stage: Stage,
    stage_ready_at: Option<Time>,
    rekey_pending: Option<&'static str>,
    rekey_at: Option<Time>,
    last_unknown: Option<Time>,
    table: Vec<TableEntry>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<GroupEvent>,
    next_id: u32,
    out: Vec<u8>,
    init_spi_base: u32,
}

impl std::fmt::Debug for GroupController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupController")
            .field("members", &self.members.len())
            .field("generation", &self.generation())
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl GroupController {
    /// A controller for a group whose init key has SPIs from `group_init_spi_base`.
    ///
    /// # Errors
    /// Invalid configuration.
    pub fn new(
        mut config: GroupConfig,
        group_init_spi_base: u32,
        rng: Box<dyn Random>,
    ) -> Result<Self, Error> {
        config.engine.role = Role::KeyServer;
        Ok(Self {
            control: Engine::new(config.engine.clone())?,
            config,
            rng,
            members: Vec::new(),
            current: None,
            old: None,
            stage: Stage::Idle,
            stage_ready_at: None,
            rekey_pending: None,
            rekey_at: None,
            last_unknown: None,
            table: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            out: vec![0u8; SCRATCH_LEN],
            init_spi_base: group_init_spi_base,
        })
    }

    /// Provisions member `index` (0, 1, 2, ... in order) with its pairwise control init key.
    /// It becomes active when it joins (or at once if `active`).
    ///
    /// # Errors
    /// As [`Engine::add_peer`]; [`Error::UnknownPeer`] if `index` is not the next index.
    pub fn add_member(
        &mut self,
        control_init: &Generation,
        addr: Option<SocketAddr>,
        active: bool,
        now: Time,
    ) -> Result<u16, Error> {
        let index = u16::try_from(self.members.len()).map_err(|_| Error::UnknownPeer)?;
        let peer = self.control.add_peer(control_init, now)?;
        self.members.push(MemberRec {
            peer,
            active,
            addr,
            reached: None,
            retries: 0,
            next_retry: None,
        });
        Ok(index)
    }

    /// The newest group generation (0: the init key only).
    pub fn generation(&self) -> u64 {
        self.current.as_ref().map_or(0, |g| g.number)
    }

    /// Whether no rollout is in progress.
    pub fn idle(&self) -> bool {
        self.stage == Stage::Idle
    }

    /// Active member indices.
    pub fn active_members(&self) -> Vec<u16> {
        (0..self.members.len())
            .filter(|i| self.members[*i].active)
            .map(|i| i as u16)
            .collect()
    }

    /// The management table: every key sent to every member, oldest first.
    pub fn table(&self) -> &[TableEntry] {
        &self.table
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    /// The next timer deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        let retries = self
            .members
            .iter()
            .filter(|m| m.active)
            .filter_map(|m| m.next_retry);
        retries
            .chain(self.stage_ready_at)
            .chain(self.rekey_at)
            .min()
    }

    /// Starts a rekey of the group now (or after the rollout in progress).
    pub fn rekey(&mut self, now: Time, reason: &'static str) {
        if self.stage != Stage::Idle {
            self.rekey_pending.get_or_insert(reason);
            return;
        }
        if self.members.iter().all(|m| !m.active) {
            return;
        }
        let number = self.generation() + 1;
        let members = self.members.len() as u32;
        let spi_base = loop {
            let v = u32::try_from(self.rng.next_u64() >> 33).unwrap_or(0) + 0x1000;
            let clashes = |b: u32| v < b.saturating_add(members) && b < v.saturating_add(members);
            let old_clash = [self.current.as_ref(), self.old.as_ref()]
                .into_iter()
                .flatten()
                .any(|g| clashes(g.spi_base));
            if !old_clash && !clashes(self.init_spi_base) {
                break v;
            }
        };
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes);
        let new = GroupGen {
            number,
            spi_base,
            suite: self.config.suite,
            secret: Secret::from_bytes(bytes),
        };
        zeroize::Zeroize::zeroize(&mut bytes);
        self.old = self.current.replace(new);
        self.rekey_at = self
            .config
            .rekey_interval
            .map(|i| now + jittered(i, 100, self.rng.as_mut()));
        self.events.push_back(GroupEvent::RolloutStarted {
            generation: number,
            reason,
        });
        self.stage = Stage::Distributing;
        self.stage_ready_at = None;
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            m.reached = None;
            m.retries = 0;
            if m.active {
                m.next_retry = Some(now);
            }
        }
        self.send_stage(now);
    }

    fn send_stage(&mut self, now: Time) {
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if !m.active || m.next_retry.is_none_or(|t| t > now) {
                continue;
            }
            if self
                .stage
                .wanted()
                .is_some_and(|w| m.reached.is_some_and(|r| r as u8 >= w as u8))
            {
                continue;
            }
            self.send_stage_to(now, i as u16);
        }
    }

    fn group_key_for(&self, g: &GroupGen, member: u16) -> Message {
        Message::GroupKey(GroupKey {
            generation: g.number,
            spi_base: g.spi_base,
            suite: g.suite,
            member_index: member,
            members: self.members.len() as u16,
            secret: *g.secret.expose(),
        })
    }

    fn send_stage_to(&mut self, now: Time, member: u16) {
        let Some(g) = self.current.clone() else {
            return;
        };
        let msg = match self.stage {
            Stage::Idle => return,
            Stage::Distributing => self.group_key_for(&g, member),
            Stage::Transit => Message::GroupTransition {
                generation: g.number,
                phase: GroupPhase::InTransit,
            },
            Stage::Completing => Message::GroupTransition {
                generation: g.number,
                phase: GroupPhase::UpdateCompleted,
            },
        };
        if self.stage == Stage::Distributing {
            let addr = self.members[usize::from(member)].addr;
            if !self
                .table
                .iter()
                .any(|e| e.member == member && e.generation == g.number)
            {
                self.table.push(TableEntry {
                    member,
                    addr,
                    generation: g.number,
                    sent_at: now,
                    acked: None,
                });
            }
        }
        let retries = self.members[usize::from(member)].retries;
        let delay = backoff(
            self.config.retry,
            self.config.max_backoff,
            retries,
            self.rng.as_mut(),
        );
        self.members[usize::from(member)].next_retry = Some(now + delay);
        self.send(member, &msg);
    }

    fn send(&mut self, member: u16, msg: &Message) {
        let Some(m) = self.members.get(usize::from(member)) else {
            return;
        };
        let (peer, destination) = (m.peer, m.addr);
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        seal_messages(
            &mut self.control,
            peer,
            destination,
            msg,
            id,
            &mut self.out,
            self.rng.as_mut(),
            &mut self.transmits,
        );
    }

    fn member_of(&self, peer: PeerId) -> Option<u16> {
        self.members
            .iter()
            .position(|m| m.peer == peer)
            .map(|i| i as u16)
    }

    /// Handles a datagram received from `from`. A datagram from an address not in the
    /// management table triggers a rekey (at most once per `unknown_sender_holdoff`).
    pub fn handle_datagram<'b>(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        buf: &'b mut [u8],
    ) -> Incoming<'b> {
        if let Some(addr) = from {
            let known = self.members.iter().any(|m| m.addr == Some(addr));
            let spi_known = EspHeader::parse(buf)
                .ok()
                .and_then(|h| self.control.lookup_spi(h.spi))
                .is_some();
            if !known && !spi_known {
                let holdoff = self.config.unknown_sender_holdoff;
                if self
                    .last_unknown
                    .is_none_or(|t| now.saturating_sub(t) >= holdoff)
                {
                    self.last_unknown = Some(now);
                    self.rekey(now, "unknown sender");
                }
            }
        }
        match self.control.open(buf) {
            Opened::Control { message, info } => {
                let Some(member) = self.member_of(info.peer) else {
                    return Incoming::Dropped(DropReason::ControlUnexpected);
                };
                if let Some(addr) = from {
                    self.members[usize::from(member)].addr = Some(addr);
                }
                dispatch_control(info.peer, Message::decode(message), |msg, _| {
                    self.on_control(now, member, msg)
                })
            }
            Opened::Data { .. } => Incoming::Dropped(DropReason::ControlUnexpected),
            Opened::Drop(r) => Incoming::Dropped(r),
        }
    }

    fn on_control(&mut self, now: Time, member: u16, msg: Message) -> bool {
        let i = usize::from(member);
        match msg {
            Message::GroupJoin => {
                if !self.members[i].active {
                    self.members[i].active = true;
                    self.events.push_back(GroupEvent::Joined { member });
                    // First the key the group uses now, so the member can read it during the
                    // rollout that follows.
                    self.catch_up(now, member);
                    self.rekey(now, "join");
                } else {
                    self.catch_up(now, member);
                }
            }
            Message::GroupLeave => {
                if self.members[i].active {
                    self.members[i].active = false;
                    self.members[i].next_retry = None;
                    self.events.push_back(GroupEvent::Left { member });
                    self.rekey(now, "leave");
                }
            }
            Message::GroupKeyRequest { have } => {
                if !self.members[i].active {
                    return false;
                }
                if have == self.generation() && self.stage == Stage::Idle {
                    // The member's rekey trigger fired.
                    self.rekey(now, "member trigger");
                } else {
                    self.catch_up(now, member);
                }
            }
            Message::GroupAck { generation, phase } => {
                if generation != self.generation() || !self.members[i].active {
                    return true;
                }
                let m = &mut self.members[i];
                if m.reached.is_none_or(|r| (r as u8) < (phase as u8)) {
                    m.reached = Some(phase);
                    m.retries = 0;
                }
                if let Some(e) = self
                    .table
                    .iter_mut()
                    .rev()
                    .find(|e| e.member == member && e.generation == generation)
                    && e.acked.is_none_or(|a| (a as u8) < (phase as u8))
                {
                    e.acked = Some(phase);
                }
                self.advance(now);
            }
            _ => return false,
        }
        true
    }

    /// A member that regained connectivity: send what it needs to hold every key in use.
    fn catch_up(&mut self, now: Time, member: u16) {
        let Some(current) = self.current.clone() else {
            return;
        };
        if self.stage == Stage::Distributing
            && let Some(old) = self.old.clone()
        {
            let msg = self.group_key_for(&old, member);
            self.send(member, &msg);
        }
        let msg = self.group_key_for(&current, member);
        self.send(member, &msg);
        if matches!(self.stage, Stage::Idle | Stage::Completing) {
            let msg = Message::GroupTransition {
                generation: current.number,
                phase: GroupPhase::UpdateCompleted,
            };
            self.send(member, &msg);
        } else if self.stage == Stage::Transit {
            let msg = Message::GroupTransition {
                generation: current.number,
                phase: GroupPhase::InTransit,
            };
            self.send(member, &msg);
        }
        let m = &mut self.members[usize::from(member)];
        m.retries = 0;
        if self.stage != Stage::Idle {
            m.next_retry = Some(now + self.config.retry);
        }
    }

    fn advance(&mut self, now: Time) {
        let Some(wanted) = self.stage.wanted() else {
            return;
        };
        let done = self
            .members
            .iter()
            .filter(|m| m.active)
            .all(|m| m.reached.is_some_and(|r| r as u8 >= wanted as u8));
        if done && self.stage_ready_at.is_none() {
            self.events.push_back(GroupEvent::PhaseCompleted {
                generation: self.generation(),
                phase: wanted,
            });
            self.stage_ready_at = Some(now + self.config.phase_grace);
        }
    }

    fn next_stage(&mut self, now: Time) {
        self.stage_ready_at = None;
        self.stage = match self.stage {
            Stage::Distributing => Stage::Transit,
            Stage::Transit => Stage::Completing,
            Stage::Completing | Stage::Idle => Stage::Idle,
        };
        for m in self.members.iter_mut().filter(|m| m.active) {
            m.retries = 0;
            m.next_retry = if self.stage == Stage::Idle {
                None
            } else {
                Some(now)
            };
        }
        if self.stage == Stage::Idle {
            self.old = None;
            if let Some(reason) = self.rekey_pending.take() {
                self.rekey(now, reason);
            }
        } else {
            self.send_stage(now);
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.stage_ready_at.is_some_and(|t| t <= now) {
            self.next_stage(now);
        }
        if self.rekey_at.is_some_and(|t| t <= now) {
            self.rekey_at = None;
            self.rekey(now, "interval");
        }
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if !m.active || m.next_retry.is_none_or(|t| t > now) {
                continue;
            }
            let reached = self
                .stage
                .wanted()
                .is_none_or(|w| self.members[i].reached.is_some_and(|r| r as u8 >= w as u8));
            if reached {
                self.members[i].next_retry = None;
                continue;
            }
            let retries = self.members[i].retries + 1;
            self.members[i].retries = retries;
            if retries > self.config.max_retries {
                let member = i as u16;
                self.events.push_back(GroupEvent::Unresponsive { member });
                self.members[i].next_retry = None;
                if self.config.evict_unresponsive {
                    self.members[i].active = false;
                    self.events.push_back(GroupEvent::Evicted { member });
                    // It may hold the new key: rekey without it once this rollout is over.
                    self.rekey_pending.get_or_insert("eviction");
                    self.advance(now);
                }
                continue;
            }
            self.send_stage_to(now, i as u16);
        }
    }
}

/// A group member.
pub struct GroupMember {
    config: GroupConfig,
    index: u16,
    control: Engine,
    controller: PeerId,
    group: Engine,
    senders: Vec<PeerId>,
    group_init: Generation,
    state: MemberState,
    current: u64,
    /// The newest key message, to re-install in order when an older one arrives late.
    last_key: Option<GroupKey>,
    joined: bool,
    request: Option<(Time, u32)>,
    rng: Box<dyn Random>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MemberEvent>,
    next_id: u32,
    out: Vec<u8>,
}

/// What a member tells the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// The member entered a state for a generation.
    State {
        /// Generation.
        generation: u64,
        /// New state.
        state: MemberState,
    },
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("index", &self.index)
            .field("state", &self.state)
            .field("generation", &self.current)
            .finish_non_exhaustive()
    }
}

impl GroupMember {
    /// Member `index` with its pairwise control init key and the group init key (generation 0,
    /// whose SPI is the group's init SPI base). It joins at once.
    ///
    /// # Errors
    /// Invalid configuration or keys.
    pub fn new(
        mut config: GroupConfig,
        index: u16,
        control_init: &Generation,
        group_init: &Generation,
        members: u16,
        rng: Box<dyn Random>,
        now: Time,
    ) -> Result<Self, Error> {
        config.engine.role = Role::Client;
        let mut control = Engine::new(config.engine.clone())?;
        let controller = control.add_peer(control_init, now)?;
        let group = Engine::new(config.engine.clone())?;
        let mut member = Self {
            config,
            index,
            control,
            controller,
            group,
            senders: Vec::new(),
            group_init: group_init.clone(),
            state: MemberState::UpdateCompleted,
            current: 0,
            last_key: None,
            joined: false,
            request: None,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            out: vec![0u8; SCRATCH_LEN],
        };
        member.ensure_senders(members.max(index + 1), now)?;
        member.join(now);
        Ok(member)
    }

    fn ensure_senders(&mut self, members: u16, now: Time) -> Result<(), Error> {
        while self.senders.len() < usize::from(members) {
            let j = self.senders.len() as u32;
            let spi = Spi::new(self.group_init.info.spi.get() + j)?;
            let init = Generation {
                info: GenerationInfo {
                    spi,
                    ..self.group_init.info
                },
                secret: self.group_init.secret.clone(),
            };
            let peer = self.group.add_group_sender(&init, now)?;
            self.senders.push(peer);
        }
        Ok(())
    }

    /// This member's index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Current state.
    pub fn state(&self) -> MemberState {
        self.state
    }

    /// Newest group generation held.
    pub fn generation(&self) -> u64 {
        self.current
    }

    /// The generation this member transmits with.
    pub fn tx_generation(&self) -> u64 {
        self.senders
            .get(usize::from(self.index))
            .and_then(|p| self.group.tx_generation(*p))
            .map_or(0, |g| g.number)
    }

    /// Generations held (newest first), for invariant checks.
    pub fn held(&self) -> Vec<u64> {
        let Some(me) = self.senders.get(usize::from(self.index)) else {
            return Vec::new();
        };
        [Slot::Newest, Slot::Previous]
            .into_iter()
            .filter_map(|s| self.group.generation(*me, s).map(|g| g.number))
            .collect()
    }

    /// The group data-plane engine.
    pub fn engine(&self) -> &Engine {
        &self.group
    }

    /// The group engine's peer for member `index`'s sender keys (its packets are opened
    /// under it; this member's own packets are sealed under `sender(self.index())`).
    pub fn sender(&self, index: u16) -> Option<PeerId> {
        self.senders.get(usize::from(index)).copied()
    }

    /// A [`crate::DataPlane`] over the group engine's current SAs, for data-plane workers:
    /// they seal under [`Self::sender`]`(self.index())` and open any member's packets. Take a
    /// new one whenever the generations change (after a key or transition message).
    ///
    /// # Errors
    /// As [`Engine::data_plane`].
    pub fn data_plane(&mut self) -> Result<crate::DataPlane, Error> {
        self.group.data_plane()
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// The next timer deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.request.map(|(t, _)| t)
    }

    /// Joins (or re-joins) the group.
    pub fn join(&mut self, now: Time) {
        self.joined = false;
        self.request_now(now, Message::GroupJoin);
    }

    /// Leaves the group.
    pub fn leave(&mut self) {
        self.joined = false;
        self.request = None;
        self.send_control(&Message::GroupLeave);
    }

    /// After a loss of connectivity: asks the controller for the current key.
    pub fn reconnect(&mut self, now: Time) {
        let have = self.current;
        self.request_now(now, Message::GroupKeyRequest { have });
    }

    fn request_now(&mut self, now: Time, msg: Message) {
        self.next_id = self.next_id.wrapping_add(1);
        let delay = backoff(
            self.config.retry,
            self.config.max_backoff,
            0,
            self.rng.as_mut(),
        );
        self.request = Some((now + delay, 0));
        self.send_control(&msg);
    }

    fn send_control(&mut self, msg: &Message) {
        self.next_id = self.next_id.wrapping_add(1);
        let id = self.next_id;
        seal_messages(
            &mut self.control,
            self.controller,
            None,
            msg,
            id,
            &mut self.out,
            self.rng.as_mut(),
            &mut self.transmits,
        );
    }

    /// Seals a data packet for the group (one packet for every member) with this member's
    /// sender key of the generation its state transmits with.
    ///
    /// # Errors
    /// As [`Engine::seal`].
    pub fn seal(
        &mut self,
        buf: &mut [u8],
        len: usize,
        next: NextHeader,
    ) -> Result<usize, SealError> {
        let me = *self
            .senders
            .get(usize::from(self.index))
            .ok_or(SealError::UnknownPeer)?;
        self.group.seal(me, buf, len, next)
    }

    /// Handles a datagram: group data (from any sender) or a control message from the
    /// controller.
    pub fn handle_datagram<'b>(&mut self, now: Time, buf: &'b mut [u8]) -> Incoming<'b> {
        let is_control = EspHeader::parse(buf)
            .ok()
            .and_then(|h| self.control.lookup_spi(h.spi))
            .is_some();
        if !is_control {
            return match self.group.open(buf) {
                Opened::Data {
                    packet,
                    next_header,
                    info,
                } => Incoming::Data {
                    peer: info.peer,
                    packet,
                    next_header,
                    generation: info.generation,
                },
                Opened::Control { .. } => Incoming::Dropped(DropReason::ControlUnexpected),
                Opened::Drop(r) => Incoming::Dropped(r),
            };
        }
        match self.control.open(buf) {
            Opened::Control { message, info } => {
                dispatch_control(info.peer, Message::decode(message), |msg, _| {
                    self.on_control(now, msg)
                })
            }
            Opened::Data { .. } => Incoming::Dropped(DropReason::ControlUnexpected),
            Opened::Drop(r) => Incoming::Dropped(r),
        }
    }

    /// Installs a group generation for every sender.
    fn install_key(&mut self, now: Time, k: &GroupKey) -> bool {
        for (j, p) in self.senders.clone().into_iter().enumerate() {
            let Ok(spi) = Spi::new(k.spi_base.wrapping_add(j as u32)) else {
                return false;
            };
            let generation = Generation {
                info: GenerationInfo {
                    number: k.generation,
                    spi,
                    suite: k.suite,
                },
                secret: Secret::from_bytes(k.secret),
            };
            if self.group.install(p, &generation, now).is_err() {
                return false;
            }
        }
        true
    }

    fn set_state(&mut self, state: MemberState) {
        self.state = state;
        let rule = match state {
            MemberState::DistributionCompleted => TxRule::Previous,
            MemberState::InTransit | MemberState::UpdateCompleted => TxRule::Newest,
        };
        for p in &self.senders {
            let _ = self.group.set_tx_rule(*p, rule);
        }
        self.events.push_back(MemberEvent::State {
            generation: self.current,
            state,
        });
    }

    fn ack(&mut self, phase: GroupPhase) {
        let generation = self.current;
        self.send_control(&Message::GroupAck { generation, phase });
    }

    fn on_control(&mut self, now: Time, msg: Message) -> bool {
        match msg {
            Message::GroupKey(k) => {
                if k.member_index != self.index {
                    return false;
                }
                if self.ensure_senders(k.members, now).is_err() {
                    return false;
                }
                self.joined = true;
                self.request = None;
                let only_newest = self.held().len() == 1;
                if k.generation + 1 == self.current && only_newest {
                    // After a fresh start we hold only N, but the group still transmits with
                    // N-1: take N-1, then N again, in order.
                    if let Some(newest) = self.last_key {
                        for p in self.senders.clone() {
                            let _ = self.group.reset_to_init(p);
                        }
                        self.current = 0;
                        if !self.install_key(now, &k) || !self.install_key(now, &newest) {
                            return false;
                        }
                        self.current = newest.generation;
                        self.set_state(MemberState::DistributionCompleted);
                        self.ack(GroupPhase::DistributionCompleted);
                    }
                    return true;
                }
                if k.generation < self.current {
                    return true;
                }
                if k.generation == self.current {
                    let phase = match self.state {
                        MemberState::DistributionCompleted => GroupPhase::DistributionCompleted,
                        MemberState::InTransit => GroupPhase::InTransit,
                        MemberState::UpdateCompleted => GroupPhase::UpdateCompleted,
                    };
                    self.ack(phase);
                    return true;
                }
                let fresh_start = k.generation != self.current + 1;
                if fresh_start {
                    // Reconnect after missing generations: start from the init key again.
                    for p in self.senders.clone() {
                        let _ = self.group.reset_to_init(p);
                    }
                }
                if !self.install_key(now, &k) {
                    return false;
                }
                self.current = k.generation;
                self.last_key = Some(k);
                if fresh_start {
                    self.set_state(MemberState::UpdateCompleted);
                    self.ack(GroupPhase::UpdateCompleted);
                } else {
                    self.set_state(MemberState::DistributionCompleted);
                    self.ack(GroupPhase::DistributionCompleted);
                }
                true
            }
            Message::GroupTransition { generation, phase } => {
                if generation != self.current {
                    return true;
                }
                match phase {
                    GroupPhase::InTransit => {
                        if self.state == MemberState::DistributionCompleted {
                            self.set_state(MemberState::InTransit);
                        }
                        self.ack(GroupPhase::InTransit);
                    }
                    GroupPhase::UpdateCompleted => {
                        if self.state != MemberState::UpdateCompleted {
                            for p in self.senders.clone() {
                                let _ = self.group.retire_previous(p);
                            }
                            self.set_state(MemberState::UpdateCompleted);
                        }
                        self.ack(GroupPhase::UpdateCompleted);
                    }
                    GroupPhase::DistributionCompleted => {}
                }
                true
            }
            _ => false,
        }
    }

    /// Runs every timer due at `now` (retransmits an unanswered join or key request).
    pub fn handle_timeout(&mut self, now: Time) {
        let Some((at, attempts)) = self.request else {
            return;
        };
        if at > now {
            return;
        }
        let attempts = attempts + 1;
        let delay = backoff(
            self.config.retry,
            self.config.max_backoff,
            attempts,
            self.rng.as_mut(),
        );
        self.request = Some((now + delay, attempts));
        let msg = if self.joined {
            Message::GroupKeyRequest { have: self.current }
        } else {
            Message::GroupJoin
        };
        self.send_control(&msg);
    }
}
