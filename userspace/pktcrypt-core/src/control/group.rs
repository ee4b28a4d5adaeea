//! Group mode (spec §6): a key controller and many members sharing one group key.
//!
//! **Keys.** Every group generation is one secret; member `i` transmits under SPI
//! `spi_base + i` with a key derived for that SPI ([`crate::Direction::GroupSender`]), so members
//! share the secret but never a (key, nonce). Receivers pick the key by SPI: no trial
//! decryption. The group init key works the same way under `init_spi_base + i`.
//!
//! **Control channel (protocol version 3).** Controller and member talk pairwise over a channel
//! that is exactly the key server / client protocol: the controller embeds a [`KeyServer`], each
//! member a [`KeyClient`], keyed by the member's own init key (provisioned out of band). The
//! channel starts with the hybrid init handshake, is rekeyed by the server's policy (`pfs`) and
//! carries nothing under the init key but handshake messages, so `GROUP_KEY` only ever travels
//! under a channel generation that came from a key exchange (with `pfs` on): forward secret, and
//! a recording of it means nothing to a restarted member.
//!
//! **No nonce reuse across a member's restarts.** A member's sender key of a generation does
//! not change when the member restarts, and its sequence numbers start again at 1. So the
//! controller tells each member which generations it may transmit under: only those minted
//! after the member's current channel was established (`GroupKey::transmit`). A restarted
//! member gets the generations in use back receive-only, and the controller rekeys the group at
//! once ("rejoin"); the member transmits from that rollout's transition on. Nothing is ever
//! sealed under the group init key.
//!
//! **Rollout.** The controller distributes generation N+1 to every member; each installs it,
//! keeps transmitting with N and acks (DISTRIBUTION_COMPLETED). When all have acked, the first
//! transition request switches them to transmit with N+1 (IN_TRANSIT). When all are in transit,
//! the second transition request makes them drop N (UPDATE_COMPLETED). At every moment every
//! member holds every key anyone transmits with, so the rollout is hitless. Lost messages are
//! retried with back-off; a member that never answers is reported and, by policy, evicted (and
//! the group rekeyed without it; evicted and removed members are refused until re-admitted). A
//! join, a leave, a removal, or a member's authenticated messages from an address not in the
//! management table trigger a rekey (unauthenticated datagrams never do); a member that regains
//! connectivity asks for the current key.

use super::message::{GroupKey, GroupMaterial, GroupPhase, Message};
use super::{
    ClientConfig, ClientEvent, Incoming, KeyClient, KeyErasureRandom, KeyServer, Pfs, Random,
    RekeyTriggers, ServerConfig, ServerEvent, Transmit, backoff, jittered,
};
use crate::wire::NextHeader;
use crate::wire::esp::EspHeader;
use crate::wire::transport::IpLayout;
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
    /// Smallest interval between two rekeys triggered by a member's authenticated messages
    /// from a new address.
    pub unknown_sender_holdoff: Duration,
    /// When the pairwise control channels exchange fresh ephemeral keys (the controller's
    /// setting rules; a group key only travels under a channel generation).
    pub pfs: Pfs,
    /// Rekey each member's control channel this often (jittered). `None`: only on triggers.
    pub channel_rekey_interval: Option<Duration>,
    /// The controller's counter rekey triggers of the group key, over the members' usage
    /// reports: `packets_sealed` against the most any member sealed under its own sender key
    /// of the generation (each sender key's limit), the others against the sums over every
    /// member's report (packets opened, sealed + opened, bytes, failed authentications). Its
    /// `max_age` is not used: `rekey_interval` times the group. Default: half the suite's AEAD
    /// limits ([`RekeyTriggers::for_suite`]).
    pub triggers: RekeyTriggers,
    /// How often a member reports its use of the current generation to the controller (only
    /// when it changed since its last report). `None`: never (the controller's counter
    /// triggers then see nothing of it).
    pub usage_interval: Option<Duration>,
    /// Derived mode (seed 003 applied to groups, spec §5): a rollout carries a nonce, never a
    /// group secret; every member computes the new generation from the nonce and the group init
    /// key ([`GroupMaterial::Nonce`]). Only the controller's setting matters: members take
    /// either form (all of them must hold the same group init key).
    pub derived: bool,
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
            pfs: Pfs::EveryRekey,
            channel_rekey_interval: Some(Duration::from_secs(3600)),
            triggers: RekeyTriggers::for_suite(
                Suite::Aes256Gcm,
                EngineConfig::new(Role::Client).max_esp_len,
            ),
            usage_interval: Some(Duration::from_secs(10)),
            derived: false,
        }
    }

    /// The key server settings of the controller's side of the control channels.
    fn channel_server(&self) -> ServerConfig {
        let mut c = ServerConfig::new();
        c.engine = self.engine.clone();
        c.suite = self.suite;
        c.pfs = self.pfs;
        c.rekey_interval = self.channel_rekey_interval;
        c.distribution_retry = self.retry;
        c.distribution_max_backoff = self.max_backoff;
        c.distribution_retries = self.max_retries;
        c.triggers = RekeyTriggers::for_suite(self.suite, c.engine.max_esp_len);
        c
    }

    /// The client settings of a member's side of its control channel.
    fn channel_client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.engine = self.engine.clone();
        c.request_timeout = self.retry;
        c.max_backoff = self.max_backoff;
        c.triggers = RekeyTriggers::for_suite(self.suite, c.engine.max_esp_len);
        c
    }
}

/// Member `j`'s sender generation of a group key (SPI `spi_base + j`) with the generation's
/// `secret`, if the SPI is valid.
fn sender_generation(k: &GroupKey, secret: &Secret, j: usize) -> Option<Generation> {
    let spi = Spi::new(k.spi_base.checked_add(u32::try_from(j).ok()?)?).ok()?;
    Some(Generation {
        info: GenerationInfo {
            number: k.generation,
            spi,
            suite: k.suite,
        },
        secret: secret.clone(),
    })
}

/// A fast-key-erasure generator for an embedded channel, seeded from `rng`.
fn child_rng(rng: &mut dyn Random) -> Box<dyn Random> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rng.fill(&mut *seed);
    Box::new(KeyErasureRandom::from_seed(*seed))
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
    /// An evicted or removed member asked to join: refused until it is re-admitted.
    JoinRefused {
        /// Member index.
        member: u16,
    },
    /// A member was removed by the operator.
    Removed {
        /// Member index.
        member: u16,
    },
    /// Two gateways seem to run as one member (the same index and control key: a copied
    /// configuration): its authenticated messages alternate between two addresses. It is
    /// taken out of the group (as if evicted: its joins are refused until re-admitted) and the
    /// group rekeyed without it.
    Duplicate {
        /// Member index.
        member: u16,
        /// The two addresses.
        addrs: (SocketAddr, SocketAddr),
    },
    /// A member completed an init handshake of its control channel (it started or
    /// restarted): the generations in use are receive-only for it from now on.
    ChannelUp {
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
    /// The newest group generation when the member's current channel was established: it
    /// may transmit only under later ones.
    floor: u64,
    /// The newest ack counter seen on the current channel.
    ack_seq: Option<u32>,
    /// Rekey once the member has caught up: it restarted and holds nothing it may transmit
    /// under.
    rejoin: bool,
    /// Evicted (unresponsive) or removed: its joins are refused until [`GroupController::readmit`].
    evicted: bool,
    /// Where its control channels came up: two gateways running as this member show.
    twins: super::TwinDetector,
    /// Its newest usage report: (generation, counters).
    usage: Option<(u64, Usage)>,
}

/// A member's use of one group generation, as it reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    sealed: u64,
    opened: u64,
    bytes: u64,
    auth_failures: u64,
}

#[derive(Clone)]
struct GroupGen {
    number: u64,
    spi_base: u32,
    suite: Suite,
    secret: Secret,
    /// Derived mode: the nonce members compute `secret` from (none in distributed mode).
    nonce: Option<zeroize::Zeroizing<[u8; 32]>>,
}

/// The group key controller.
pub struct GroupController {
    config: GroupConfig,
    channel: KeyServer,
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
    events: VecDeque<GroupEvent>,
    init_spi_base: u32,
    /// The group init secret: derived mode's anchor.
    group_init: Secret,
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
    /// A controller for a group whose init key is `group_init` (its SPI is the group's init
    /// SPI base; its secret anchors derived mode's chains).
    ///
    /// # Errors
    /// Invalid configuration.
    pub fn new(
        mut config: GroupConfig,
        group_init: &Generation,
        mut rng: Box<dyn Random>,
    ) -> Result<Self, Error> {
        config.engine.role = Role::KeyServer;
        let mut channel = KeyServer::new(config.channel_server(), child_rng(rng.as_mut()))?;
        channel.carry_group_messages();
        Ok(Self {
            channel,
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
            events: VecDeque::new(),
            init_spi_base: group_init.info.spi.get(),
            group_init: group_init.secret.clone(),
        })
    }

    /// The secrets of the group generations in use (tests search the wire for them).
    #[cfg(test)]
    pub(crate) fn secrets_in_use(&self) -> Vec<Secret> {
        [self.current.as_ref(), self.old.as_ref()]
            .into_iter()
            .flatten()
            .map(|g| g.secret.clone())
            .collect()
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
        let peer = self.channel.add_client(control_init, addr, now)?;
        self.members.push(MemberRec {
            peer,
            active,
            addr,
            reached: None,
            retries: 0,
            next_retry: None,
            floor: 0,
            ack_seq: None,
            rejoin: false,
            evicted: false,
            twins: super::TwinDetector::default(),
            usage: None,
        });
        Ok(index)
    }

    /// Removes member `index` from the group: it gets no later generation (the group rekeys
    /// without it at once) and its joins are refused until [`Self::readmit`].
    pub fn remove_member(&mut self, now: Time, index: u16) {
        let Some(m) = self.members.get_mut(usize::from(index)) else {
            return;
        };
        m.evicted = true;
        m.next_retry = None;
        m.rejoin = false;
        if std::mem::take(&mut m.active) {
            self.events.push_back(GroupEvent::Removed { member: index });
            self.rekey(now, "removed");
        }
    }

    /// Re-admits an evicted or removed member: it joins at once (catch-up and a rekey) and
    /// later joins are accepted again.
    pub fn readmit(&mut self, now: Time, index: u16) {
        let Some(m) = self.members.get_mut(usize::from(index)) else {
            return;
        };
        if !std::mem::take(&mut m.evicted) {
            return;
        }
        if !m.active {
            m.active = true;
            self.events.push_back(GroupEvent::Joined { member: index });
            self.catch_up(now, index);
            self.rekey(now, "readmitted");
        }
    }

    /// Changes the suite of future group generations, and of the members' control channels'
    /// future generations (cipher agility, spec §7): the next rollout switches; each group
    /// generation carries its suite, so members open the old and the new one side by side.
    pub fn set_suite(&mut self, suite: Suite) {
        self.config.suite = suite;
        self.channel.set_suite(suite);
    }

    /// The suite of future group generations.
    pub fn suite(&self) -> Suite {
        self.config.suite
    }

    /// The counter triggers the members' usage reports are held against for the current
    /// generation: the configured ones, within the AEAD limits of that generation's suite
    /// (after a suite change, triggers made for ChaCha20-Poly1305 must not carry an AES-GCM
    /// generation past AES-GCM's limits).
    pub fn triggers(&self) -> RekeyTriggers {
        let suite = self.current.as_ref().map_or(self.config.suite, |g| g.suite);
        self.config
            .triggers
            .within_limits(suite, self.config.engine.max_esp_len)
    }

    /// The control channels' key server (its engine holds every member's channel keys).
    pub fn channel(&self) -> &KeyServer {
        &self.channel
    }

    /// The newest group generation (0: the init key only).
    pub fn generation(&self) -> u64 {
        self.current.as_ref().map_or(0, |g| g.number)
    }

    /// When the next timed rollout (`rekey_interval`) is due, if one is scheduled. Status
    /// only.
    pub fn next_rekey(&self) -> Option<Time> {
        self.rekey_at
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
        self.channel.poll_transmit()
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
            .chain(self.channel.poll_timeout())
            .min()
    }

    /// Which of the group's counter triggers the members' reports on the current generation
    /// reach, if any (see [`GroupConfig::triggers`]).
    fn usage_exceeded(&self) -> Option<&'static str> {
        let current = self.generation();
        let mut total = Usage::default();
        let mut most_sealed = 0u64;
        for (_, u) in self
            .members
            .iter()
            .filter(|m| m.active)
            .filter_map(|m| m.usage)
            .filter(|(g, _)| *g == current)
        {
            most_sealed = most_sealed.max(u.sealed);
            total.sealed = total.sealed.saturating_add(u.sealed);
            total.opened = total.opened.saturating_add(u.opened);
            total.bytes = total.bytes.saturating_add(u.bytes);
            total.auth_failures = total.auth_failures.saturating_add(u.auth_failures);
        }
        let t = &self.triggers();
        if most_sealed >= t.packets_sealed {
            Some("packets_sealed")
        } else if total.opened >= t.packets_opened {
            Some("packets_opened")
        } else if total.sealed.saturating_add(total.opened) >= t.packets_total {
            Some("packets_total")
        } else if total.bytes >= t.bytes {
            Some("bytes")
        } else if total.auth_failures >= t.auth_failures {
            Some("auth_failures")
        } else {
            None
        }
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
            // Members look an SPI up in their channel first: no data SPI may be a channel's.
            let engine = self.channel.engine();
            let channel_clash = (0..members).any(|j| {
                v.checked_add(j)
                    .is_none_or(|spi| engine.lookup_spi(spi).is_some())
            });
            if !old_clash && !clashes(self.init_spi_base) && !channel_clash {
                break v;
            }
        };
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes);
        let suite = self.config.suite;
        let (secret, nonce) = if self.config.derived {
            // The bytes are a nonce: the secret is computed on both sides, never sent.
            let Ok(spi) = Spi::new(spi_base) else {
                return; // unreachable: SPI bases start at 0x1000
            };
            let info = GenerationInfo { number, spi, suite };
            (
                self.group_init.derive_group_next(&bytes, info),
                Some(zeroize::Zeroizing::new(bytes)),
            )
        } else {
            (Secret::from_bytes(bytes), None)
        };
        let new = GroupGen {
            number,
            spi_base,
            suite,
            secret,
            nonce,
        };
        zeroize::Zeroize::zeroize(&mut bytes);
        // The management table keeps the generations in use (and the one before): bounded.
        self.table.retain(|e| e.generation + 2 > number);
        self.old = self.current.replace(new);
        // ... nor any channel SPI minted from now on a data SPI in use.
        let ranges = [self.current.as_ref(), self.old.as_ref()]
            .into_iter()
            .flatten()
            .map(|g| (g.spi_base, members))
            .chain([(self.init_spi_base, members)])
            .collect();
        self.channel.reserve_spis(ranges);
        // Every member may transmit under the new generation: nobody waits to rejoin.
        for m in &mut self.members {
            m.rejoin = false;
        }
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
            transmit: self
                .members
                .get(usize::from(member))
                .is_some_and(|m| g.number > m.floor),
            material: match &g.nonce {
                Some(nonce) => GroupMaterial::Nonce(**nonce),
                None => GroupMaterial::Secret(*g.secret.expose()),
            },
        })
    }

    fn send_stage_to(&mut self, now: Time, member: u16) {
        let Some(g) = self.current.clone() else {
            return;
        };
        let never_acked = self.members[usize::from(member)].reached.is_none();
        let msg = match self.stage {
            Stage::Idle => return,
            Stage::Distributing => self.group_key_for(&g, member),
            // A member that never acknowledged this rollout's key (it restarted or came back
            // mid-rollout) needs the keys, not a transition: the previous one first while the
            // group transmits with both.
            Stage::Transit if never_acked => match self.old.clone() {
                Some(old) => self.group_key_for(&old, member),
                None => self.group_key_for(&g, member),
            },
            Stage::Completing if never_acked => self.group_key_for(&g, member),
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

    /// Sends over the member's channel; nothing while the channel has no key yet (the retry
    /// timer tries again, and the member asks once its handshake is done).
    fn send(&mut self, member: u16, msg: &Message) {
        let Some(m) = self.members.get(usize::from(member)) else {
            return;
        };
        let peer = m.peer;
        self.channel.send_message(peer, msg);
    }

    /// Takes what the channel produced: handshakes completed, group messages received.
    fn pump(&mut self, now: Time) {
        while let Some(e) = self.channel.poll_event() {
            if let ServerEvent::ClientInit { peer } = e
                && let Some(member) = self.member_of(peer)
            {
                // A new channel: the member (re)started. Whatever generation exists now, it
                // may have used before; it acknowledges everything again.
                let floor = self.generation();
                let m = &mut self.members[usize::from(member)];
                m.floor = floor;
                m.reached = None;
                m.retries = 0;
                m.ack_seq = None;
                // It needs a generation it never used: once it holds the current one.
                m.rejoin = true;
                m.next_retry = Some(now);
                self.events.push_back(GroupEvent::ChannelUp { member });
                if let Some(addr) = self.channel.address(peer) {
                    self.channel_up_from(now, member, addr);
                }
            }
        }
        while let Some((peer, msg)) = self.channel.poll_message() {
            let Some(member) = self.member_of(peer) else {
                continue;
            };
            if let Some(addr) = self.channel.address(peer) {
                let m = &mut self.members[usize::from(member)];
                let moved = m.active && m.addr.is_some_and(|a| a != addr);
                m.addr = Some(addr);
                let holdoff = self.config.unknown_sender_holdoff;
                if moved
                    && self
                        .last_unknown
                        .is_none_or(|t| now.saturating_sub(t) >= holdoff)
                {
                    self.last_unknown = Some(now);
                    self.rekey(now, "new address");
                }
            }
            self.on_control(now, member, msg);
        }
    }

    /// Records where a member's channel came up; two gateways running as one member
    /// ([`super::TwinDetector`]) take it out of the group: `Duplicate`, joins refused until
    /// re-admitted, the group rekeyed without it.
    fn channel_up_from(&mut self, now: Time, member: u16, addr: SocketAddr) {
        let m = &mut self.members[usize::from(member)];
        let Some(addrs) = m.twins.handshake_from(now, addr) else {
            return;
        };
        if m.evicted {
            return;
        }
        m.evicted = true;
        m.next_retry = None;
        m.rejoin = false;
        self.events
            .push_back(GroupEvent::Duplicate { member, addrs });
        if std::mem::take(&mut m.active) {
            self.rekey(now, "duplicate");
        }
    }

    /// The member whose control channel is the channel's `peer` (what [`Self::poll_transmit`]
    /// and [`Self::handle_datagram`] name), if any.
    pub fn member_of(&self, peer: PeerId) -> Option<u16> {
        self.members
            .iter()
            .position(|m| m.peer == peer)
            .map(|i| i as u16)
    }

    /// The control channel's peer of member `index` (the inverse of [`Self::member_of`]).
    pub fn member_peer(&self, index: u16) -> Option<PeerId> {
        self.members.get(usize::from(index)).map(|m| m.peer)
    }

    /// How many members are provisioned (active or not): the next index
    /// [`Self::add_member`] gives.
    pub fn member_count(&self) -> u16 {
        u16::try_from(self.members.len()).unwrap_or(u16::MAX)
    }

    /// The phase the rollout in progress waits for every active member to reach (`None` when
    /// idle: the last rollout completed). Status only.
    pub fn rollout_phase(&self) -> Option<GroupPhase> {
        self.stage.wanted()
    }

    /// Handles a datagram received from `from`. Only authenticated messages change anything:
    /// a datagram from an unknown address under an unknown SPI is dropped and counted (it used
    /// to trigger a rekey: anyone could make the group rekey every `unknown_sender_holdoff`).
    /// A member whose authenticated messages come from a new address (one not in the
    /// management table) triggers a rekey, at most once per `unknown_sender_holdoff`.
    pub fn handle_datagram<'b>(
        &mut self,
        now: Time,
        from: Option<SocketAddr>,
        buf: &'b mut [u8],
    ) -> Incoming<'b> {
        let incoming = self.channel.handle_datagram(now, from, buf);
        self.pump(now);
        match incoming {
            // Nothing but control messages travels on a channel.
            Incoming::Data { .. } => Incoming::Dropped(DropReason::ControlUnexpected),
            other => other,
        }
    }

    fn on_control(&mut self, now: Time, member: u16, msg: Message) -> bool {
        let i = usize::from(member);
        match msg {
            Message::GroupJoin if self.members[i].evicted => {
                self.events.push_back(GroupEvent::JoinRefused { member });
            }
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
                    if self.members[i].rejoin && self.stage != Stage::Idle {
                        // A restarted member holds nothing it may transmit under: a
                        // generation it never used, after the rollout in progress (when idle:
                        // as soon as it acks the current one).
                        self.rekey_pending.get_or_insert("rejoin");
                    }
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
                    if self.members[i].evicted {
                        self.events.push_back(GroupEvent::JoinRefused { member });
                    }
                    return false;
                }
                if have == self.generation() && self.stage == Stage::Idle {
                    // The member's rekey trigger fired.
                    self.rekey(now, "member trigger");
                } else {
                    self.catch_up(now, member);
                }
            }
            Message::GroupUsage {
                generation,
                packets_sealed,
                packets_opened,
                bytes,
                auth_failures,
            } => {
                if !self.members[i].active || generation != self.generation() {
                    // A report on a generation the group no longer counts.
                    return true;
                }
                self.members[i].usage = Some((
                    generation,
                    Usage {
                        sealed: packets_sealed,
                        opened: packets_opened,
                        bytes,
                        auth_failures,
                    },
                ));
                if let Some(reason) = self.usage_exceeded() {
                    self.rekey(now, reason);
                }
            }
            Message::GroupAck {
                generation,
                phase,
                seq,
            } => {
                if !self.members[i].active {
                    return true;
                }
                let current_number = self.generation();
                let m = &mut self.members[i];
                if m.ack_seq.is_some_and(|s| seq <= s) {
                    // Older than an ack already taken (reordered) or a duplicate.
                    return true;
                }
                m.ack_seq = Some(seq);
                let mid_rollout = matches!(self.stage, Stage::Distributing | Stage::Transit);
                if generation != current_number {
                    if mid_rollout
                        && self.old.as_ref().is_some_and(|o| o.number == generation)
                        && let Some(current) = self.current.clone()
                    {
                        // Caught up on the previous generation: now the new one.
                        let msg = self.group_key_for(&current, member);
                        self.send(member, &msg);
                    }
                    return true;
                }
                // The newest ack is the member's state: it can go back a phase when a late
                // previous key made it install both again.
                m.reached = Some(phase);
                m.retries = 0;
                if self
                    .stage
                    .wanted()
                    .is_some_and(|w| (phase as u8) < (w as u8))
                {
                    m.next_retry = Some(now);
                }
                if m.rejoin && self.stage == Stage::Idle && phase == GroupPhase::UpdateCompleted {
                    self.rekey(now, "rejoin");
                    return true;
                }
                if phase == GroupPhase::UpdateCompleted
                    && matches!(self.stage, Stage::Distributing | Stage::Transit)
                    && let Some(old) = self.old.clone()
                {
                    // A fresh start (a late joiner, a lost key): the member holds only the new
                    // generation while others still transmit with the old one. Send it the old
                    // one; it installs both in order and acks again.
                    let msg = self.group_key_for(&old, member);
                    self.send(member, &msg);
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
        if matches!(self.stage, Stage::Distributing | Stage::Transit)
            && let Some(old) = self.old.clone()
        {
            // Mid-rollout the group transmits with both. While distributing, the member must
            // not transmit with the new one (others may lack it): the previous generation
            // first, the new one when the member acks it, in that order whatever the network
            // does. In transit every member holds both: both at once.
            let msg = self.group_key_for(&old, member);
            self.send(member, &msg);
            if self.stage == Stage::Transit {
                let msg = self.group_key_for(&current, member);
                self.send(member, &msg);
            }
            let m = &mut self.members[usize::from(member)];
            m.retries = 0;
            m.next_retry = Some(now + self.config.retry);
            return;
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
        if self.stage != Stage::Idle || m.rejoin {
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
            // A member that restarted during the rollout holds nothing it may transmit under.
            let rejoin = self.members.iter().any(|m| m.active && m.rejoin);
            if let Some(reason) = self.rekey_pending.take().or(rejoin.then_some("rejoin")) {
                self.rekey(now, reason);
            }
        } else {
            self.send_stage(now);
            // Every member may be there already (e.g. after fresh starts): nothing would come
            // back to move the rollout on.
            self.advance(now);
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.channel.poll_timeout().is_some_and(|t| t <= now) {
            self.channel.handle_timeout(now);
            self.pump(now);
        }
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
            let idle_rejoin = self.stage == Stage::Idle && m.rejoin;
            let reached = !idle_rejoin
                && self
                    .stage
                    .wanted()
                    .is_none_or(|w| m.reached.is_some_and(|r| r as u8 >= w as u8));
            if reached {
                self.members[i].next_retry = None;
                continue;
            }
            let retries = self.members[i].retries.saturating_add(1);
            self.members[i].retries = retries;
            if retries > self.config.max_retries {
                let member = i as u16;
                if retries == self.config.max_retries + 1 {
                    self.events.push_back(GroupEvent::Unresponsive { member });
                }
                if self.config.evict_unresponsive {
                    self.members[i].next_retry = None;
                    self.members[i].active = false;
                    self.members[i].evicted = true;
                    self.events.push_back(GroupEvent::Evicted { member });
                    // It may hold the new key: rekey without it once this rollout is over.
                    self.rekey_pending.get_or_insert("eviction");
                    self.advance(now);
                    continue;
                }
                // Not evicted: keep trying at the longest interval (the rollout waits for it).
            }
            if idle_rejoin {
                // A restarted member has not acked the current generation yet.
                self.catch_up(now, i as u16);
                let delay = backoff(
                    self.config.retry,
                    self.config.max_backoff,
                    retries,
                    self.rng.as_mut(),
                );
                let m = &mut self.members[i];
                m.retries = retries;
                m.next_retry = Some(now + delay);
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
    channel: KeyClient,
    group: Engine,
    senders: Vec<PeerId>,
    group_init: Generation,
    state: MemberState,
    current: u64,
    joined: bool,
    request: Option<(Time, u32)>,
    /// The join or key request the channel could not carry yet (no channel key): sent as soon
    /// as it can.
    unsent: Option<Message>,
    /// The channel started over (fallback to its init key): the controller may have restarted
    /// too, so the next group key is taken whatever its number.
    resync: bool,
    /// Acks sent on the current channel.
    ack_seq: u32,
    /// The generation installed by a fresh start (holding nothing else), until the next
    /// install or transition: only then may a late previous generation go in under it.
    fresh_from: Option<u64>,
    /// (generation, SPI base) of the generations installed in this process (the last 32): one
    /// installed again is receive-only, whatever the controller says (its sender key's sequence
    /// numbers would start again).
    installed: VecDeque<(u64, u32)>,
    /// When the next usage report is due, and the last one sent.
    usage_at: Option<Time>,
    last_usage: Option<(u64, Usage)>,
    rng: Box<dyn Random>,
    events: VecDeque<MemberEvent>,
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
        mut rng: Box<dyn Random>,
        now: Time,
    ) -> Result<Self, Error> {
        config.engine.role = Role::Client;
        let mut channel = KeyClient::new(
            config.channel_client(),
            control_init,
            child_rng(rng.as_mut()),
            now,
        )?;
        channel.carry_group_messages();
        // Nothing is sealed or accepted under the group init key (its sequence numbers would
        // start again at every restart); it anchors the senders' SPIs and, in derived mode,
        // every group generation's secret.
        let mut group_engine = config.engine.clone();
        group_engine.handshake_init = true;
        let group = Engine::new(group_engine)?;
        let mut member = Self {
            config,
            index,
            channel,
            group,
            senders: Vec::new(),
            group_init: group_init.clone(),
            state: MemberState::UpdateCompleted,
            current: 0,
            joined: false,
            request: None,
            unsent: None,
            resync: false,
            ack_seq: 0,
            fresh_from: None,
            installed: VecDeque::new(),
            usage_at: None,
            last_usage: None,
            rng,
            events: VecDeque::new(),
        };
        member.usage_at = member.config.usage_interval.map(|i| now + i);
        member.ensure_senders(members.max(index + 1), now)?;
        member.join(now);
        Ok(member)
    }

    fn ensure_senders(&mut self, members: u16, now: Time) -> Result<(), Error> {
        while self.senders.len() < usize::from(members) {
            let j = self.senders.len() as u32;
            let spi = Spi::new(
                self.group_init
                    .info
                    .spi
                    .get()
                    .checked_add(j)
                    .ok_or(Error::ReservedSpi)?,
            )?;
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

    /// Whether [`Self::seal`] has a key now: the generation this member transmits with may be
    /// one it was given receive-only (it joined or its control channel restarted since the
    /// generation was made: it transmits again from the next rollout's transition), or none.
    pub fn can_seal(&self) -> bool {
        let Some(me) = self.senders.get(usize::from(self.index)) else {
            return false;
        };
        let Some(tx) = self.group.tx_generation(*me) else {
            return false;
        };
        match self.group.lookup_spi(tx.spi.get()) {
            Some((_, _, Slot::Init)) | None => false,
            Some((_, _, slot)) => !self.group.receive_only(*me, slot),
        }
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

    /// Retires the previous generation of every other member's sender key that is no longer
    /// used, on evidence from traffic ([`Engine::retire_previous_if_unused`]): in transit or
    /// later (this member transmits under N), a packet from that member opened under N, and
    /// nothing under its N-1 for `grace`. `last_seen` gives, per SPI, when a packet last
    /// arrived under it (`None`: never). Without it N-1 goes only when the controller's
    /// UPDATE_COMPLETED arrives; a member that misses it (controller gone, message lost) would
    /// keep accepting under N-1's key until the next rollout. Returns how many were retired.
    pub fn retire_unused(
        &mut self,
        now: Time,
        grace: Duration,
        last_seen: impl Fn(u32) -> Option<Time>,
    ) -> usize {
        let mut retired = 0;
        for (j, p) in self.senders.iter().enumerate() {
            if j == usize::from(self.index) {
                continue;
            }
            let seen = self
                .group
                .generation(*p, Slot::Previous)
                .and_then(|g| last_seen(g.spi.get()));
            if let Ok(Some(_)) = self.group.retire_previous_if_unused(*p, now, grace, seen) {
                retired += 1;
            }
        }
        retired
    }

    /// The group data-plane engine.
    pub fn engine(&self) -> &Engine {
        &self.group
    }

    /// How many members the group has (the senders whose packets this member opens; its
    /// layout: member `j` transmits under SPI base + `j`).
    pub fn member_count(&self) -> u16 {
        u16::try_from(self.senders.len()).unwrap_or(u16::MAX)
    }

    /// The member whose sender keys the group engine's `peer` holds (what
    /// [`Self::handle_datagram`] names for data), if any: the inverse of [`Self::sender`].
    pub fn sender_index(&self, peer: PeerId) -> Option<u16> {
        self.senders
            .iter()
            .position(|p| *p == peer)
            .and_then(|j| u16::try_from(j).ok())
    }

    /// The group engine, for [`super::Endpoint`] (change tracking and data-plane updates).
    pub(crate) fn engine_mut(&mut self) -> &mut Engine {
        &mut self.group
    }

    /// The control channel to the controller.
    pub fn channel(&self) -> &KeyClient {
        &self.channel
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

    /// The next packet to send (to the controller).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.channel.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// The next timer deadline.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.request
            .map(|(t, _)| t)
            .into_iter()
            .chain(self.channel.poll_timeout())
            .chain(self.usage_at)
            .min()
    }

    /// Joins (or re-joins) the group.
    pub fn join(&mut self, now: Time) {
        self.joined = false;
        self.request_now(now, Message::GroupJoin);
    }

    /// This member's use of the current generation: packets sealed under its own sender
    /// key, opened under any member's, bytes, failed authentications.
    fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for (j, &peer) in self.senders.iter().enumerate() {
            for slot in [Slot::Newest, Slot::Previous] {
                let Some((info, _)) = self.group.installed(peer, slot) else {
                    continue;
                };
                if info.number != self.current {
                    continue;
                }
                let Some((c, _)) = self.group.sa_counters(peer, slot) else {
                    continue;
                };
                if j == usize::from(self.index) {
                    u.sealed = u.sealed.saturating_add(c.packets_sealed);
                }
                u.opened = u.opened.saturating_add(c.packets_opened);
                u.bytes = u
                    .bytes
                    .saturating_add(c.bytes_sealed)
                    .saturating_add(c.bytes_opened);
                u.auth_failures = u.auth_failures.saturating_add(c.auth_failures);
            }
        }
        u
    }

    /// Reports the use of the current generation to the controller if it changed since the
    /// last report (the controller's counter triggers; [`GroupConfig::usage_interval`]).
    fn report_usage(&mut self) {
        if !self.joined || self.current == 0 {
            return;
        }
        let usage = self.usage();
        let report = (self.current, usage);
        if self.last_usage == Some(report) || usage == Usage::default() {
            return;
        }
        let msg = Message::GroupUsage {
            generation: self.current,
            packets_sealed: usage.sealed,
            packets_opened: usage.opened,
            bytes: usage.bytes,
            auth_failures: usage.auth_failures,
        };
        if self.send_control(&msg) {
            self.last_usage = Some(report);
        }
    }

    /// Leaves the group.
    pub fn leave(&mut self) {
        self.joined = false;
        self.request = None;
        self.unsent = None;
        self.send_control(&Message::GroupLeave);
    }

    /// After a loss of connectivity: asks the controller for the current key.
    pub fn reconnect(&mut self, now: Time) {
        let have = self.current;
        self.request_now(now, Message::GroupKeyRequest { have });
    }

    fn request_now(&mut self, now: Time, msg: Message) {
        let delay = backoff(
            self.config.retry,
            self.config.max_backoff,
            0,
            self.rng.as_mut(),
        );
        self.request = Some((now + delay, 0));
        self.send_request(msg);
    }

    /// Sends a join or key request, or keeps it until the channel has a key.
    fn send_request(&mut self, msg: Message) {
        if self.send_control(&msg) {
            self.unsent = None;
        } else {
            self.unsent = Some(msg);
        }
    }

    fn send_control(&mut self, msg: &Message) -> bool {
        self.channel.send_message(msg)
    }

    /// Takes what the channel produced: a fallback, group messages; sends a request that was
    /// waiting for the channel.
    fn pump(&mut self, now: Time) {
        while let Some(e) = self.channel.poll_event() {
            if e == ClientEvent::FellBackToInit {
                // The controller stopped answering (it may have restarted): join again once
                // the channel is back, and take its next key whatever the number.
                self.resync = true;
                self.joined = false;
                self.ack_seq = 0;
                if self.request.is_none() {
                    self.request_now(now, Message::GroupJoin);
                }
            }
        }
        while let Some(msg) = self.channel.poll_message() {
            self.on_control(now, msg);
        }
        if let Some(msg) = self.unsent.take() {
            self.send_request(msg);
        }
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
            .and_then(|h| self.channel.engine().lookup_spi(h.spi))
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
        let incoming = self.channel.handle_datagram(now, buf);
        self.pump(now);
        match incoming {
            // Nothing but control messages travels on the channel.
            Incoming::Data { .. } => Incoming::Dropped(DropReason::ControlUnexpected),
            other => other,
        }
    }

    /// [`Self::handle_datagram`] for a received IP packet carrying ESP in UDP, in either mode
    /// (see [`super::Endpoint::handle_transport`]).
    pub(crate) fn handle_transport<'b>(&mut self, now: Time, buf: &'b mut [u8]) -> Incoming<'b> {
        let esp = match IpLayout::parse_received(buf) {
            Ok((_, esp, _)) => esp,
            Err(reason) => {
                self.group.count_drop(reason);
                return Incoming::Dropped(reason);
            }
        };
        let is_control = EspHeader::parse(&buf[esp.clone()])
            .ok()
            .and_then(|h| self.channel.engine().lookup_spi(h.spi))
            .is_some();
        if is_control {
            // The channel: control messages only, as from a datagram.
            return self.handle_datagram(now, &mut buf[esp]);
        }
        match self.group.open_transport(buf) {
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
        }
    }

    /// Installs a group generation for every sender.
    fn install_key(&mut self, now: Time, k: &GroupKey) -> bool {
        let Some(secret) = k.secret(&self.group_init.secret) else {
            return false;
        };
        for (j, p) in self.senders.clone().into_iter().enumerate() {
            let Some(generation) = sender_generation(k, &secret, j) else {
                return false;
            };
            if self.group.install(p, &generation, now).is_err() {
                return false;
            }
        }
        let again = self.remember(k);
        if (!k.transmit || again)
            && let Some(me) = self.senders.get(usize::from(self.index))
        {
            self.group.set_receive_only(*me, Slot::Newest, true);
        }
        true
    }

    /// Records an installed generation; whether it was installed before in this process.
    fn remember(&mut self, k: &GroupKey) -> bool {
        let id = (k.generation, k.spi_base);
        if self.installed.contains(&id) {
            return true;
        }
        if self.installed.len() == 32 {
            self.installed.pop_front();
        }
        self.installed.push_back(id);
        false
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
        self.ack_seq = self.ack_seq.wrapping_add(1);
        let seq = self.ack_seq;
        // Lost or not, the controller retries until it hears it.
        self.send_control(&Message::GroupAck {
            generation,
            phase,
            seq,
        });
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
                self.unsent = None;
                let resync = std::mem::take(&mut self.resync);
                let only_newest = self.held().len() == 1;
                if !resync
                    && k.generation + 1 == self.current
                    && only_newest
                    && self.fresh_from == Some(self.current)
                {
                    // After a fresh start we hold only N, but the group still transmits with
                    // N-1: take N-1 as the previous generation (N keeps its sequence numbers)
                    // and transmit with it until the transition.
                    let mut ok = true;
                    let Some(secret) = k.secret(&self.group_init.secret) else {
                        return false;
                    };
                    for (j, p) in self.senders.clone().into_iter().enumerate() {
                        let Some(generation) = sender_generation(&k, &secret, j) else {
                            return false;
                        };
                        ok &= self.group.install_previous(p, &generation, now).is_ok();
                    }
                    if !ok {
                        return false;
                    }
                    self.fresh_from = None;
                    let again = self.remember(&k);
                    if (!k.transmit || again)
                        && let Some(me) = self.senders.get(usize::from(self.index))
                    {
                        self.group.set_receive_only(*me, Slot::Previous, true);
                    }
                    self.set_state(MemberState::DistributionCompleted);
                    self.ack(GroupPhase::DistributionCompleted);
                    return true;
                }
                if !resync && k.generation <= self.current {
                    // A key we hold (a retransmission, or the previous one sent again because
                    // our ack was lost): tell the controller where we are.
                    let phase = match self.state {
                        MemberState::DistributionCompleted => GroupPhase::DistributionCompleted,
                        MemberState::InTransit => GroupPhase::InTransit,
                        MemberState::UpdateCompleted => GroupPhase::UpdateCompleted,
                    };
                    self.ack(phase);
                    return true;
                }
                let fresh_start = resync || k.generation != self.current + 1;
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
                self.fresh_from = fresh_start.then_some(k.generation);
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
                self.fresh_from = None;
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

    /// Runs every timer due at `now`: the channel's, and retransmits an unanswered join or key
    /// request.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.channel.poll_timeout().is_some_and(|t| t <= now) {
            self.channel.handle_timeout(now);
            self.pump(now);
        }
        if let Some(at) = self.usage_at
            && at <= now
        {
            self.usage_at = self.config.usage_interval.map(|i| now + i);
            self.report_usage();
        }
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
        self.send_request(msg);
    }
}
