//! No key material in any control message (issue 16.4): the plaintext of every control message
//! encoded during a run (what crosses the network inside the ESP seal, recorded by
//! [`super::message::tap`]) is searched for the bytes of every secret either side held. In the
//! modes that send secrets the search finds them (so the search works); in derived mode and
//! with key exchanges it finds none.

use super::message::tap;
use super::{
    ClientConfig, GroupConfig, GroupController, GroupMember, Incoming, KeyClient, KeyServer, Pfs,
    SeededRandom, ServerConfig,
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

/// A group controller and three members through `rollouts` rollouts (a member restarts half way
/// through, so catch-up messages are sent too): (secrets held, secrets found).
fn group(derived: bool, rollouts: usize) -> (usize, usize) {
    let mut config = GroupConfig::new();
    config.derived = derived;
    config.rekey_interval = None;
    config.retry = Duration::from_millis(100);
    config.phase_grace = Duration::from_millis(10);
    config.usage_interval = Some(Duration::from_millis(200));
    let group_init = key(0x0100_0000, 0x55);
    let mut now = Time::ZERO;
    let mut controller =
        GroupController::new(config.clone(), &group_init, Box::new(SeededRandom::new(3)))
            .unwrap_or_else(|_| unreachable!());
    let controls: Vec<Generation> = (0..3).map(|i| key(0x200 + i, i as u8 + 1)).collect();
    let member = |i: usize, seed: u64, now: Time| {
        GroupMember::new(
            config.clone(),
            i as u16,
            &controls[i],
            &group_init,
            3,
            Box::new(SeededRandom::new(seed)),
            now,
        )
        .unwrap_or_else(|_| unreachable!())
    };
    let mut members: Vec<GroupMember> = (0..3).map(|i| member(i, 10 + i as u64, now)).collect();
    for (i, c) in controls.iter().enumerate() {
        controller
            .add_member(c, Some(addr(i)), false, now)
            .unwrap_or_else(|_| unreachable!());
    }
    let mut held = BTreeSet::new();
    held.insert(*group_init.secret.expose());
    tap::start();
    for round in 0..=rollouts {
        if round > 0 {
            controller.rekey(now, "test");
        }
        if round == rollouts / 2 {
            members[1] = member(1, 99, now);
        }
        for _ in 0..200 {
            now += STEP;
            if controller.poll_timeout().is_some_and(|t| t <= now) {
                controller.handle_timeout(now);
            }
            for m in &mut members {
                if m.poll_timeout().is_some_and(|t| t <= now) {
                    m.handle_timeout(now);
                }
            }
            for (i, m) in members.iter_mut().enumerate() {
                while let Some(mut t) = m.poll_transmit() {
                    let _ = controller.handle_datagram(now, Some(addr(i)), &mut t.contents);
                }
            }
            while let Some(mut t) = controller.poll_transmit() {
                if let Some(i) = controller.member_of(t.peer) {
                    // (A restarted member drops what its old channel was sent.)
                    let _ = members[usize::from(i)].handle_datagram(now, &mut t.contents);
                }
            }
            for s in controller.secrets_in_use() {
                held.insert(*s.expose());
            }
            for i in 0..3u16 {
                let peer: Option<PeerId> = controller.member_peer(i);
                for slot in [Slot::Newest, Slot::Previous] {
                    record(
                        &mut held,
                        peer.and_then(|p| controller.channel().engine().secret(p, slot)),
                    );
                }
            }
        }
        // Every member computed what the controller holds: each opens the others' data.
        if round != rollouts / 2 {
            for from in 0..3 {
                let mut buf = vec![0u8; 256];
                buf[ESP_HEADER_LEN] = 0x45; // an IPv4 packet after the ESP header
                let len = members[from]
                    .seal(&mut buf, 40, NextHeader::Ipv4)
                    .unwrap_or_else(|e| panic!("member {from} seals: {e:?}"));
                for to in (0..3).filter(|&to| to != from) {
                    let mut copy = buf[..len].to_vec();
                    let incoming = members[to].handle_datagram(now, &mut copy);
                    assert!(
                        matches!(incoming, Incoming::Data { .. }),
                        "round {round}: member {to} opens member {from}'s packet: {incoming:?}"
                    );
                }
            }
        }
    }
    let captured = tap::take();
    assert!(controller.generation() >= rollouts as u64);
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
    // Derived: nothing, across anchors (a chain is at most four links) and a restart.
    let (held, seen) = group(true, rollouts);
    assert_eq!(seen, 0, "none of {held} secrets on the wire");
}
