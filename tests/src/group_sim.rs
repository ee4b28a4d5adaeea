//! A deterministic simulation of a group: one controller, many members, lossy control links,
//! and data multicast by every member to every other member throughout.

use crate::sim::{Dice, Link};
use pktcrypt_core::control::{
    GroupConfig, GroupController, GroupEvent, GroupMember, Incoming, SeededRandom,
};
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_core::{DropReason, Generation, GenerationInfo, Secret, Spi, Suite, Time};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Base of the group init key's SPIs.
pub const GROUP_INIT_SPI: u32 = 0x0100_0000;

fn key(spi: u32, fill: u8) -> Generation {
    Generation {
        info: GenerationInfo {
            number: 0,
            spi: Spi::new(spi).expect("spi"),
            suite: Suite::Aes128Gcm,
        },
        secret: Secret::from_bytes([fill; 32]),
    }
}

/// The group init key every member and the controller hold.
pub fn group_init_key() -> Generation {
    key(GROUP_INIT_SPI, 0x55)
}

/// Member `i`'s control init key (its channel to the controller).
pub fn member_control_key(i: usize) -> Generation {
    key(0x200 + i as u32, i as u8 + 1)
}

/// The address member `i` sends from.
pub fn member_addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 1, i as u8 + 1), 4500))
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Controller {
        from: usize,
    },
    Member {
        to: usize,
        from_member: Option<usize>,
    },
}

/// A packet in flight: arrival time, tie-breaker, destination, bytes.
type InFlight = (Time, u64, Dest, Vec<u8>);

/// Counters.
#[derive(Clone, Debug, Default)]
pub struct GroupStats {
    /// Data packets sealed by members.
    pub data_sealed: u64,
    /// Data deliveries attempted (one per receiving member).
    pub data_deliveries: u64,
    /// Data deliveries opened.
    pub data_opened: u64,
    /// Data dropped for a key mismatch.
    pub key_mismatch: u64,
    /// Data drops by reason.
    pub data_dropped: HashMap<DropReason, u64>,
    /// Control messages sent and lost.
    pub control_sent: u64,
    /// Control messages lost.
    pub control_lost: u64,
}

/// The group simulation.
pub struct GroupSim {
    /// Virtual time.
    pub now: Time,
    /// The controller.
    pub controller: GroupController,
    /// Members.
    pub members: Vec<GroupMember>,
    /// Whether member `i` is connected (offline members neither send nor receive).
    pub online: Vec<bool>,
    /// Controller events.
    pub events: Vec<(Time, GroupEvent)>,
    /// Control link.
    pub link: Link,
    /// Data interval per member.
    pub data_interval: Duration,
    /// Counters.
    pub stats: GroupStats,
    /// Every controller → member control datagram: (time, member, bytes).
    pub capture: Vec<(Time, usize, Vec<u8>)>,
    /// (Key, nonce) pairs used twice: (sender, SPI, IV) of every sealed datagram is recorded
    /// (sender `usize::MAX` is the controller), and a repeat counted here.
    pub nonce_reuse: Vec<(usize, u32, [u8; 8])>,
    /// When a data packet last arrived at a member under an SPI (member, SPI): what a
    /// gateway's XDP per-SPI counters tell it.
    pub last_data: HashMap<(usize, u32), Time>,
    nonces: HashSet<(usize, u32, [u8; 8])>,
    /// Members created with the group (later positions are duplicates).
    original: usize,
    config: GroupConfig,
    seed: u64,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    dice: Dice,
    next_data: Time,
}

impl GroupSim {
    /// A group of `n` members, all active from the start.
    pub fn new(n: usize, config: GroupConfig, seed: u64) -> Self {
        let now = Time::ZERO;
        let group_init = group_init_key();
        let mut controller = GroupController::new(
            config.clone(),
            &group_init,
            Box::new(SeededRandom::new(seed)),
        )
        .expect("controller");
        let mut members = Vec::new();
        for i in 0..n {
            let control = key(0x200 + i as u32, i as u8 + 1);
            controller
                .add_member(&control, Some(member_addr(i)), false, now)
                .expect("member");
            members.push(
                GroupMember::new(
                    config.clone(),
                    i as u16,
                    &control,
                    &group_init,
                    n as u16,
                    Box::new(SeededRandom::new(seed ^ ((i as u64 + 1) << 24))),
                    now,
                )
                .expect("member"),
            );
        }
        Self {
            now,
            controller,
            members,
            online: vec![true; n],
            events: Vec::new(),
            link: Link::default(),
            data_interval: Duration::from_millis(100),
            stats: GroupStats::default(),
            capture: Vec::new(),
            nonce_reuse: Vec::new(),
            last_data: HashMap::new(),
            nonces: HashSet::new(),
            original: n,
            config,
            seed,
            queue: BinaryHeap::new(),
            seq: 0,
            dice: Dice::new(seed),
            next_data: Time::ZERO,
        }
    }

    /// Records the (key, nonce) of a datagram `sender` sealed.
    fn record_nonce(&mut self, sender: usize, bytes: &[u8]) {
        if bytes.len() < 16 {
            return;
        }
        let spi = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let mut iv = [0u8; 8];
        iv.copy_from_slice(&bytes[8..16]);
        if !self.nonces.insert((sender, spi, iv)) {
            self.nonce_reuse.push((sender, spi, iv));
        }
    }

    /// Restarts member `i`: a new boot holding only its keys (every boot with the same init
    /// sequence base: nothing depends on the clock).
    pub fn restart_member(&mut self, i: usize) {
        let mut config = self.config.clone();
        config.engine.init_seq_base = 1;
        self.members[i] = GroupMember::new(
            config,
            i as u16,
            &key(0x200 + i as u32, i as u8 + 1),
            &group_init_key(),
            self.original as u16,
            Box::new(SeededRandom::new(
                self.seed ^ 0xfeed ^ self.now.as_nanos() as u64,
            )),
            self.now,
        )
        .expect("member restart");
        self.drain();
    }

    /// Starts a second gateway configured as member `of` (same index, same control init key,
    /// as an operator who copied a configuration would) at an address of its own
    /// (`member_addr(position)`); returns its position in `members`.
    pub fn add_duplicate(&mut self, of: usize) -> usize {
        let position = self.members.len();
        let member = GroupMember::new(
            self.config.clone(),
            of as u16,
            &member_control_key(of),
            &group_init_key(),
            self.original as u16,
            Box::new(SeededRandom::new(self.seed ^ 0xd0d0 ^ position as u64)),
            self.now,
        )
        .expect("duplicate");
        self.members.push(member);
        self.online.push(true);
        self.drain();
        position
    }

    /// Delivers `bytes` to member `i` now, as if from the controller.
    pub fn inject_to_member(&mut self, i: usize, bytes: &[u8]) -> Incoming<'static> {
        let mut buf = bytes.to_vec();
        let r = match self.members[i].handle_datagram(self.now, &mut buf) {
            Incoming::Dropped(d) => Incoming::Dropped(d),
            _ => Incoming::Control {
                peer: pktcrypt_core::PeerId(0),
            },
        };
        self.drain();
        r
    }

    fn push(&mut self, dest: Dest, bytes: Vec<u8>, control: bool) {
        if control {
            self.stats.control_sent += 1;
            if self.dice.chance(self.link.control_loss) {
                self.stats.control_lost += 1;
                return;
            }
        }
        let copies = if self.dice.chance(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.link.delay + self.dice.duration(self.link.jitter);
            self.seq += 1;
            self.queue
                .push(Reverse((at, self.seq, dest.clone(), bytes.clone())));
        }
    }

    fn drain(&mut self) {
        while let Some(t) = self.controller.poll_transmit() {
            let original = self.original;
            let Some(to) = (0..self.members.len()).find(|i| {
                (self.members[*i].index() as usize == *i || *i >= original)
                    && t.destination == Some(member_addr(*i))
            }) else {
                continue;
            };
            self.record_nonce(usize::MAX, &t.contents);
            self.capture.push((self.now, to, t.contents.clone()));
            if self.online[to] {
                self.push(
                    Dest::Member {
                        to,
                        from_member: None,
                    },
                    t.contents,
                    true,
                );
            }
        }
        while let Some(e) = self.controller.poll_event() {
            self.events.push((self.now, e));
        }
        for i in 0..self.members.len() {
            while let Some(t) = self.members[i].poll_transmit() {
                self.record_nonce(self.members[i].index().into(), &t.contents);
                if self.online[i] {
                    self.push(Dest::Controller { from: i }, t.contents, true);
                }
            }
            while self.members[i].poll_event().is_some() {}
        }
    }

    fn send_data(&mut self) {
        let active = self.controller.active_members();
        for i in 0..self.members.len() {
            let index = self.members[i].index();
            if !self.online[i] || !active.contains(&index) {
                continue;
            }
            let mut buf = vec![0u8; ESP_HEADER_LEN + 40 + MAX_OVERHEAD];
            buf[ESP_HEADER_LEN] = 0x45;
            let Ok(n) = self.members[i].seal(&mut buf, 40, NextHeader::Ipv4) else {
                continue;
            };
            buf.truncate(n);
            // By member index: two gateways configured as one member share its sender keys.
            self.record_nonce(index.into(), &buf);
            self.stats.data_sealed += 1;
            for to in 0..self.members.len() {
                // To members in the group that hold a group key (one that joined a moment
                // ago and has none yet cannot read anything).
                if self.members[to].index() != index
                    && self.online[to]
                    && active.contains(&self.members[to].index())
                    && self.members[to].generation() > 0
                {
                    self.push(
                        Dest::Member {
                            to,
                            from_member: Some(i),
                        },
                        buf.clone(),
                        false,
                    );
                }
            }
        }
    }

    fn deliver(&mut self, dest: Dest, mut bytes: Vec<u8>) {
        let now = self.now;
        match dest {
            Dest::Controller { from } => {
                let _ = self
                    .controller
                    .handle_datagram(now, Some(member_addr(from)), &mut bytes);
            }
            Dest::Member { to, from_member } => {
                if !self.online[to] {
                    return;
                }
                if from_member.is_some() && bytes.len() >= 4 {
                    let spi = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    self.last_data.insert((to, spi), now);
                }
                let r = self.members[to].handle_datagram(now, &mut bytes);
                if from_member.is_some() {
                    self.stats.data_deliveries += 1;
                    match r {
                        Incoming::Data { .. } => self.stats.data_opened += 1,
                        Incoming::Dropped(reason) => {
                            *self.stats.data_dropped.entry(reason).or_default() += 1;
                            if matches!(reason, DropReason::UnknownSpi | DropReason::AuthFailed) {
                                self.stats.key_mismatch += 1;
                            }
                        }
                        Incoming::Control { .. } => {}
                    }
                }
            }
        }
        self.drain();
    }

    /// Runs for `d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.drain();
        loop {
            let mut next = end.min(self.next_data);
            if let Some(Reverse((t, ..))) = self.queue.peek() {
                next = next.min(*t);
            }
            if let Some(t) = self.controller.poll_timeout() {
                next = next.min(t);
            }
            // An offline member's timers wait until it is back (its channel always has one).
            for (m, _) in self.members.iter().zip(&self.online).filter(|(_, on)| **on) {
                if let Some(t) = m.poll_timeout() {
                    next = next.min(t);
                }
            }
            if next >= end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            while self.queue.peek().is_some_and(|Reverse((t, ..))| *t <= now) {
                if let Some(Reverse((_, _, dest, bytes))) = self.queue.pop() {
                    self.deliver(dest, bytes);
                }
            }
            if self.controller.poll_timeout().is_some_and(|t| t <= now) {
                self.controller.handle_timeout(now);
            }
            for i in 0..self.members.len() {
                if self.online[i] && self.members[i].poll_timeout().is_some_and(|t| t <= now) {
                    self.members[i].handle_timeout(now);
                }
            }
            self.drain();
            if self.next_data <= now {
                self.send_data();
                self.next_data = now + self.data_interval;
            }
        }
    }

    /// Rollouts started, in order, with their reasons.
    pub fn rollouts(&self) -> Vec<(u64, &'static str)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                GroupEvent::RolloutStarted { generation, reason } => Some((*generation, *reason)),
                _ => None,
            })
            .collect()
    }

    /// Asserts every member holds at most two group generations.
    pub fn assert_at_most_two(&self) {
        for m in &self.members {
            assert!(
                m.held().len() <= 2,
                "member {} holds {:?}",
                m.index(),
                m.held()
            );
        }
    }
}
