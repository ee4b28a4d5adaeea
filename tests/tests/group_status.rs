//! The group roles' status getters the C and Python bindings build on: member indices and
//! channel or sender peers map both ways, the rollout's phase, and `can_seal` says exactly when
//! a member's `seal` has a key (not while its transmit generation is receive-only after a join
//! or a restart).

use pktcrypt_core::control::GroupConfig;
use pktcrypt_core::control::message::GroupPhase;
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_tests::group_sim::GroupSim;
use std::time::Duration;

fn config() -> GroupConfig {
    let mut c = GroupConfig::new();
    c.rekey_interval = None;
    c
}

/// Whether member `i` seals now.
fn seals(sim: &mut GroupSim, i: usize) -> bool {
    let mut buf = vec![0u8; ESP_HEADER_LEN + 40 + MAX_OVERHEAD];
    buf[ESP_HEADER_LEN] = 0x45;
    sim.members[i].seal(&mut buf, 40, NextHeader::Ipv4).is_ok()
}

#[test]
fn indices_and_peers_map_both_ways() {
    let mut sim = GroupSim::new(3, config(), 11);
    sim.run_for(Duration::from_secs(3));
    let c = &sim.controller;
    assert_eq!(c.member_count(), 3);
    for i in 0..3u16 {
        let peer = c.member_peer(i).expect("member");
        assert_eq!(c.member_of(peer), Some(i));
        let m = &sim.members[usize::from(i)];
        assert_eq!(m.member_count(), 3);
        for j in 0..3u16 {
            assert_eq!(m.sender_index(m.sender(j).expect("sender")), Some(j));
        }
    }
    assert_eq!(c.member_peer(3), None);
    assert_eq!(sim.members[0].sender(3), None);
    assert!(c.idle());
    assert_eq!(c.rollout_phase(), None);
    let now = sim.now;
    sim.controller.rekey(now, "test");
    assert_eq!(
        sim.controller.rollout_phase(),
        Some(GroupPhase::DistributionCompleted)
    );
    sim.run_for(Duration::from_secs(3));
    assert_eq!(sim.controller.rollout_phase(), None);
}

#[test]
fn can_seal_says_when_seal_has_a_key() {
    let mut sim = GroupSim::new(3, config(), 12);
    for i in 0..3 {
        assert!(!sim.members[i].can_seal());
        assert!(!seals(&mut sim, i));
    }
    sim.run_for(Duration::from_secs(3));
    for i in 0..3 {
        assert!(sim.members[i].can_seal());
        assert!(seals(&mut sim, i));
    }
    // A restarted member gets the generations in use receive-only: it holds a transmit
    // generation but cannot seal until the rollout its rejoin triggers reaches its transition.
    sim.restart_member(1);
    let mut receive_only = false;
    for _ in 0..500 {
        sim.run_for(Duration::from_millis(10));
        let (can, tx) = (sim.members[1].can_seal(), sim.members[1].tx_generation());
        assert_eq!(can, seals(&mut sim, 1));
        receive_only |= tx > 0 && !can;
    }
    assert!(receive_only, "never saw a receive-only transmit generation");
    assert!(sim.members[1].can_seal());
    assert_eq!(sim.stats.key_mismatch, 0);
}
