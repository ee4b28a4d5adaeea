//! No key material in any control message (issue 16.4): the plaintext of every control message
//! encoded during a run (what crosses the network inside the ESP seal, recorded by
//! [`super::message::tap`]) is searched for the bytes of every secret either side held. In the
//! modes that send secrets the search finds them (so the search works); in derived mode and
//! with key exchanges it finds none.

use super::message::tap;
use super::{
    ClientConfig, GroupConfig, GroupController, GroupMember, Incoming, KeyClient, KeyServer,
    Message, Pfs, SeededRandom, ServerConfig,
};
use crate::wire::NextHeader;
use crate::wire::esp::ESP_HEADER_LEN;
use crate::{Generation, GenerationInfo, PeerId, Secret, Slot, Spi, Suite, Time};
use core::net::SocketAddr;
use core::time::Duration;
use std::collections::BTreeSet;

const STEP: Duration = Duration::from_millis(10);

fn key(spi: u32, fill: u8) -> Generation {
    Generation {
        info: GenerationInfo {
            number: 0,
            spi: Spi::new(spi).unwrap_or_else(|_| unreachable!()),
            suite: Suite::Aes256Gcm,
        },
        secret: Secret::from_bytes([fill; 32]),
    }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 10 + i as u8], 4500))
}

/// The secrets among `held` whose bytes appear in some captured message.
fn found(captured: &[Vec<u8>], held: &BTreeSet<[u8; 32]>) -> usize {
    held.iter()
        .filter(|s| captured.iter().any(|m| m.windows(32).any(|w| w == &s[..])))
        .count()
}

fn record(held: &mut BTreeSet<[u8; 32]>, secret: Option<&Secret>) {
    if let Some(s) = secret {
        held.insert(*s.expose());
    }
}

/// A key server and one client rotating `rotations` times: (secrets held, secrets found).
fn pairwise(pfs: Pfs, derived: bool, rotations: usize) -> (usize, usize) {
    let mut sc = ServerConfig::new();
    sc.pfs = pfs;
    sc.derived = derived;
    sc.rekey_interval = None;
    let mut server =
        KeyServer::new(sc, Box::new(SeededRandom::new(1))).unwrap_or_else(|_| unreachable!());
    let init = key(0x100, 0x11);
    let mut now = Time::ZERO;
    let peer = server
        .add_client(&init, None, now)
        .unwrap_or_else(|_| unreachable!());
    let mut client = KeyClient::new(
        ClientConfig::new(),
        &init,
        Box::new(SeededRandom::new(2)),
        now,
    )
    .unwrap_or_else(|_| unreachable!());
    let mut held = BTreeSet::new();
    held.insert(*init.secret.expose());
    tap::start();
    for round in 0..=rotations {
        if round > 0 {
            client.rekey(now);
        }
        for _ in 0..100 {
            now += STEP;
            if client.poll_timeout().is_some_and(|t| t <= now) {
                client.handle_timeout(now);
            }
            if server.poll_timeout().is_some_and(|t| t <= now) {
                server.handle_timeout(now);
            }
            while let Some(mut t) = client.poll_transmit() {
                let _ = server.handle_datagram(now, Some(addr(0)), &mut t.contents);
            }
            while let Some(mut t) = server.poll_transmit() {
                let _ = client.handle_datagram(now, &mut t.contents);
            }
            for slot in [Slot::Newest, Slot::Previous] {
                record(&mut held, server.engine().secret(peer, slot));
            }
        }
    }
    let captured = tap::take();
    assert!(
        held.len() > rotations,
        "{pfs:?} derived={derived}: it rotated"
    );
    assert!(!captured.is_empty());
    (held.len(), found(&captured, &held))
}

#[test]
fn pairwise_secrets_travel_only_when_distributed() {
    // Distribution without exchanges: the search finds every secret but the init key's.
    let (held, seen) = pairwise(Pfs::Off, false, 4);
    assert_eq!(seen, held - 1, "distributed secrets are found");
    // Derived mode, ratcheting from the exchanged first generation; exchanges at every rekey,
    // and every other.
    for (pfs, derived) in [
        (Pfs::InitOnly, true),
        (Pfs::Every(2), true),
        (Pfs::EveryRekey, false),
    ] {
        let (held, seen) = pairwise(pfs, derived, 4);
        assert_eq!(
            seen, 0,
            "{pfs:?} derived={derived}: none of {held} secrets on the wire"
        );
    }
}

/// A group controller and three members wired in memory.
struct Group {
    config: GroupConfig,
    group_init: Generation,
    controls: Vec<Generation>,
    controller: GroupController,
    members: Vec<GroupMember>,
    now: Time,
}

impl Group {
    fn new(derived: bool) -> Self {
        let mut config = GroupConfig::new();
        config.derived = derived;
        config.rekey_interval = None;
        config.retry = Duration::from_millis(100);
        config.phase_grace = Duration::from_millis(10);
        config.usage_interval = Some(Duration::from_millis(200));
        let group_init = key(0x0100_0000, 0x55);
        let controller =
            GroupController::new(config.clone(), &group_init, Box::new(SeededRandom::new(3)))
                .unwrap_or_else(|_| unreachable!());
        let controls = (0..3).map(|i| key(0x200 + i, i as u8 + 1)).collect();
        let mut g = Self {
            config,
            group_init,
            controls,
            controller,
            members: Vec::new(),
            now: Time::ZERO,
        };
        for i in 0..3 {
            let m = g.member(i, 10 + i as u64);
            g.members.push(m);
            let c = g.controls[i].clone();
            g.controller
                .add_member(&c, Some(addr(i)), false, g.now)
                .unwrap_or_else(|_| unreachable!());
        }
        g
    }

    /// Member `i` (started now).
    fn member(&self, i: usize, seed: u64) -> GroupMember {
        GroupMember::new(
            self.config.clone(),
            i as u16,
            &self.controls[i],
            &self.group_init,
            3,
            Box::new(SeededRandom::new(seed)),
            self.now,
        )
        .unwrap_or_else(|_| unreachable!())
    }

    /// 10 ms: timers, then every datagram delivered.
    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        if self.controller.poll_timeout().is_some_and(|t| t <= now) {
            self.controller.handle_timeout(now);
        }
        for (i, m) in self.members.iter_mut().enumerate() {
            if m.poll_timeout().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
            while let Some(mut t) = m.poll_transmit() {
                let _ = self
                    .controller
                    .handle_datagram(now, Some(addr(i)), &mut t.contents);
            }
        }
        self.deliver();
    }

    /// The controller's datagrams to the members.
    fn deliver(&mut self) {
        while let Some(mut t) = self.controller.poll_transmit() {
            if let Some(i) = self.controller.member_of(t.peer) {
                // (A restarted member drops what its old channel was sent.)
                let _ = self.members[usize::from(i)].handle_datagram(self.now, &mut t.contents);
            }
        }
    }

    /// Every secret held now: the controller's group generations, what the members computed
    /// (the same, or they could not open each other's data) and the channels'.
    fn record_held(&self, held: &mut BTreeSet<[u8; 32]>) {
        for s in self.controller.secrets_in_use() {
            held.insert(*s.expose());
        }
        for m in &self.members {
            for j in 0..3u16 {
                for slot in [Slot::Newest, Slot::Previous] {
                    record(held, m.sender(j).and_then(|p| m.engine().secret(p, slot)));
                }
            }
        }
        for i in 0..3u16 {
            let peer: Option<PeerId> = self.controller.member_peer(i);
            for slot in [Slot::Newest, Slot::Previous] {
                record(
                    held,
                    peer.and_then(|p| self.controller.channel().engine().secret(p, slot)),
                );
            }
        }
    }

    /// Every member opens every other member's data packet.
    fn check_data(&mut self, members: &[usize]) {
        for &from in members {
            let mut buf = vec![0u8; 256];
            buf[ESP_HEADER_LEN] = 0x45; // an IPv4 packet after the ESP header
            let len = self.members[from]
                .seal(&mut buf, 40, NextHeader::Ipv4)
                .unwrap_or_else(|e| panic!("member {from} seals: {e:?}"));
            for &to in members.iter().filter(|&&to| to != from) {
                let mut copy = buf[..len].to_vec();
                let incoming = self.members[to].handle_datagram(self.now, &mut copy);
                assert!(
                    matches!(incoming, Incoming::Data { .. }),
                    "member {to} opens member {from}'s packet: {incoming:?}"
                );
            }
        }
    }
}

/// A group through `rollouts` rollouts (a member restarts half way through, so catch-up
/// messages are sent too): (secrets held, secrets found).
fn group(derived: bool, rollouts: usize) -> (usize, usize) {
    let mut g = Group::new(derived);
    let mut held = BTreeSet::new();
    held.insert(*g.group_init.secret.expose());
    for c in &g.controls {
        held.insert(*c.secret.expose());
    }
    tap::start();
    for round in 0..=rollouts {
        if round > 0 {
            g.controller.rekey(g.now, "test");
        }
        if round == rollouts / 2 {
            g.members[1] = g.member(1, 99);
        }
        for _ in 0..200 {
            g.step();
            g.record_held(&mut held);
        }
        if round != rollouts / 2 {
            g.check_data(&[0, 1, 2]);
        }
    }
    let captured = tap::take();
    assert!(g.controller.generation() >= rollouts as u64);
    (held.len(), found(&captured, &held))
}

#[test]
fn group_secrets_travel_only_when_distributed() {
    // Distributed: every group generation's secret is in a GROUP_KEY (the channel's own
    // secrets, exchanged, are not).
    let rollouts = 9;
    let (_, seen) = group(false, rollouts);
    assert!(
        seen > rollouts,
        "distributed group secrets are found: {seen}"
    );
    // Derived: nothing, through a restart.
    let (held, seen) = group(true, rollouts);
    assert_eq!(seen, 0, "none of {held} secrets on the wire");
}

/// A removed member that is readmitted (or one that left and joins again) is handed what a
/// member needs to read the group now, and nothing it could compute the generations made while
/// it was out from, except the one in use (distributed mode hands it that one too). An early
/// design sent a chain of nonces from an anchor, which gave it up to three of them.
#[test]
fn a_readmitted_member_can_compute_no_generation_it_was_excluded_from_but_the_current() {
    for derived in [false, true] {
        let mut g = Group::new(derived);
        for _ in 0..100 {
            g.step();
        }
        g.controller.remove_member(g.now, 2);
        let mut excluded = Vec::new();
        for _ in 0..4 {
            for _ in 0..100 {
                g.step();
            }
            excluded.extend(g.controller.secrets_in_use().iter().map(|s| *s.expose()));
            g.controller.rekey(g.now, "test");
        }
        for _ in 0..100 {
            g.step();
        }
        let current: Vec<[u8; 32]> = g
            .controller
            .secrets_in_use()
            .iter()
            .map(|s| *s.expose())
            .collect();
        assert_eq!(current.len(), 1, "idle: one generation in use");
        g.check_data(&[0, 1]);
        // What the controller sends the readmitted member when it lets it back in (the rollout
        // that follows at once goes to everyone, member 2 included: a new generation).
        tap::start();
        g.controller.readmit(g.now, 2);
        let sent = tap::take();
        let mut computable = BTreeSet::new();
        for m in &sent {
            if let Ok((Message::GroupKey(k), _)) = Message::decode(m)
                && k.member_index == 2
                && let Some(s) = k.secret(&g.group_init.secret)
            {
                computable.insert(*s.expose());
            }
        }
        assert!(
            !computable.is_empty(),
            "derived={derived}: it was sent the current key"
        );
        for s in &computable {
            assert!(
                current.contains(s) || !excluded.contains(s),
                "derived={derived}: the readmitted member can compute a generation made while \
                 it was out"
            );
        }
        // It reads the group again.
        g.deliver();
        for _ in 0..200 {
            g.step();
        }
        g.check_data(&[0, 1, 2]);
    }
}
