//! The required control-plane scenarios S1-S7 of the spec, each in its own test, on the
//! deterministic simulator (virtual time, lossy links, data flowing both ways throughout).

use pktcrypt_core::control::{ClientConfig, ClientEvent, ServerConfig, ServerEvent};
use pktcrypt_core::{Suite, Time};
use pktcrypt_tests::sim::Sim;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn server_config() -> ServerConfig {
    let mut c = ServerConfig::new();
    c.rekey_interval = None;
    c
}

fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.hello_interval = secs(2);
    c
}

fn minted(sim: &Sim) -> Vec<u64> {
    sim.server_events
        .iter()
        .filter_map(|(_, e)| match e {
            ServerEvent::KeyMinted { generation, .. } => Some(generation.number),
            _ => None,
        })
        .collect()
}

#[test]
fn s1_startup_from_init_key() {
    let mut sim = Sim::new(1, server_config(), client_config(), 1);
    assert_eq!(
        sim.generations(0),
        (0, 0, 0),
        "both start with the init key only"
    );
    let took = sim.run_until_converged(Duration::from_millis(10), secs(2));
    assert!(
        took.is_some(),
        "S1 did not converge: {:?}",
        sim.generations(0)
    );
    assert_eq!(sim.generations(0), (1, 1, 1));
    assert_eq!(minted(&sim), vec![1]);
    assert!(matches!(
        sim.server_events[0].1,
        ServerEvent::ClientInit { .. }
    ));
    assert_eq!(sim.stats.key_mismatch, 0);
}

#[test]
fn s2_client_timed_update() {
    let mut cc = client_config();
    cc.update_interval = Some(secs(5));
    let mut sim = Sim::new(1, server_config(), cc, 2);
    sim.run_for(secs(1));
    assert_eq!(sim.generations(0), (1, 1, 1));
    // Each update timer expiry brings one new generation, requested by the client.
    sim.run_for(secs(12));
    let (c, s, p) = sim.generations(0);
    assert!(c >= 3, "two timed updates expected, at generation {c}");
    assert_eq!((c, s), (p, p));
    assert_eq!(minted(&sim), (1..=c).collect::<Vec<_>>());
    assert_eq!(sim.stats.key_mismatch, 0);
}

#[test]
fn s3_lost_distribution_explicit_resend() {
    let mut cc = client_config();
    cc.hello_interval = secs(60);
    // Only the client's explicit request may recover: no implicit resend, no server retransmit.
    let mut sc = server_config();
    sc.implicit_resend_interval = secs(3600);
    sc.distribution_retry = secs(3600);
    let mut sim = Sim::new(1, sc, cc, 3);
    sim.run_for(secs(1));
    assert_eq!(sim.generations(0), (1, 1, 1));
    let minted_before = sim.stats.minted;
    // The next distribution is lost; the server's own retransmissions too (it waits longer).
    sim.drop_next_down_control = 1;
    sim.clients[0].machine.request_update(sim.now);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.generations(0).0,
        1,
        "client did not get generation 2 yet"
    );
    assert_eq!(sim.generations(0).1, 2, "server minted generation 2");
    sim.run_for(secs(3));
    assert_eq!(sim.generations(0), (2, 2, 2));
    assert_eq!(
        sim.stats.minted,
        minted_before + 1,
        "a resend mints nothing new"
    );
    assert!(
        sim.stats.resent_explicit >= 1,
        "the lost key was re-sent on request"
    );
    assert_eq!(sim.stats.resent_implicit, 0);
    assert!(
        sim.clients[0]
            .events
            .iter()
            .all(|(_, e)| *e != ClientEvent::FellBackToInit),
        "no fallback needed"
    );
    assert_eq!(sim.stats.key_mismatch, 0);
}

#[test]
fn s4_lost_distribution_implicit_resend() {
    let mut cc = client_config();
    // The client waits long before asking: the server must notice by itself.
    cc.request_timeout = secs(30);
    cc.max_backoff = secs(30);
    cc.hello_interval = secs(60);
    let mut sc = server_config();
    sc.distribution_retry = secs(30);
    let mut sim = Sim::new(1, sc, cc, 4);
    sim.run_for(secs(1));
    assert_eq!(sim.generations(0), (1, 1, 1));
    sim.drop_next_down_control = 1;
    sim.clients[0].machine.request_update(sim.now);
    // Data keeps flowing under generation 1: the server sees it and re-sends 2 unasked.
    sim.run_for(secs(2));
    assert_eq!(sim.generations(0), (2, 2, 2));
    assert!(
        sim.stats.resent_implicit >= 1,
        "no implicit resend: {:?}",
        sim.stats
    );
    assert_eq!(sim.stats.resent_explicit, 0);
    assert_eq!(sim.stats.key_mismatch, 0);
}

#[test]
fn s5_server_loses_all_keys() {
    let cc = client_config();
    let bound = cc.fallback_bound() + cc.hello_interval.mul_f64(1.1) + secs(1);
    let mut sim = Sim::new(3, server_config(), cc, 5);
    sim.run_for(secs(1));
    for i in 0..3 {
        sim.clients[i].machine.request_update(sim.now);
    }
    sim.run_for(secs(1));
    assert!((0..3).all(|i| sim.generations(i) == (2, 2, 2)));
    let fault = sim.now;
    sim.restart_server();
    let took = sim.run_until_converged(Duration::from_millis(50), bound);
    assert!(
        took.is_some(),
        "no recovery within {bound:?}: {:?}",
        (0..3).map(|i| sim.generations(i)).collect::<Vec<_>>()
    );
    assert!(
        (0..3).all(|i| sim.generations(i) == (1, 1, 1)),
        "both sides restart at generation 1"
    );
    assert_eq!(
        sim.stats.fallbacks, 3,
        "each client fell back to the init key once"
    );
    for c in &sim.clients {
        assert!(
            c.events
                .iter()
                .any(|(t, e)| *t > fault && *e == ClientEvent::FellBackToInit)
        );
    }
}

#[test]
fn s6_client_restart() {
    let mut sim = Sim::new(2, server_config(), client_config(), 6);
    sim.run_for(secs(1));
    for _ in 0..3 {
        sim.clients[0].machine.request_update(sim.now);
        sim.run_for(secs(1));
    }
    assert_eq!(sim.generations(0), (4, 4, 4));
    sim.restart_client(0);
    assert_eq!(
        sim.clients[0].machine.newest(),
        0,
        "restarted with the init key only"
    );
    let took = sim.run_until_converged(Duration::from_millis(10), secs(2));
    assert!(took.is_some(), "{:?}", sim.generations(0));
    assert_eq!(
        sim.generations(0),
        (1, 1, 1),
        "re-initialised from the init key"
    );
    assert_eq!(
        sim.generations(1),
        (1, 1, 1),
        "the other client is untouched"
    );
    assert!(
        sim.server_events
            .iter()
            .filter(|(_, e)| matches!(e, ServerEvent::ClientInit { .. }))
            .count()
            == 3
    );
}

#[test]
fn s7_server_timed_update() {
    let mut sc = server_config();
    sc.rekey_interval = Some(secs(10));
    sc.rekey_jitter_permille = 0;
    let mut sim = Sim::new(1, sc, client_config(), 7);
    sim.run_for(secs(5));
    assert_eq!(sim.generations(0), (1, 1, 1));
    sim.run_for(secs(6));
    assert_eq!(
        sim.generations(0),
        (2, 2, 2),
        "the server rotated on its own timer"
    );
    sim.run_for(secs(10));
    assert_eq!(sim.generations(0), (3, 3, 3));
    // It rotated only after a proof of the newest generation: never two ahead.
    assert_eq!(minted(&sim), vec![1, 2, 3]);
    assert_eq!(sim.stats.key_mismatch, 0);
}

#[test]
fn derived_mode_rotates_without_sending_secrets() {
    let mut sc = server_config();
    sc.derived = true;
    sc.rekey_interval = Some(secs(3));
    let mut sim = Sim::new(2, sc, client_config(), 8);
    sim.run_for(secs(20));
    for i in 0..2 {
        let (c, s, p) = sim.generations(i);
        assert!(c >= 5, "client {i} at generation {c}");
        assert_eq!((c, s), (p, p));
    }
    assert_eq!(sim.stats.key_mismatch, 0);
}

#[test]
fn suite_switch_at_rekey() {
    let mut sc = server_config();
    sc.rekey_interval = Some(secs(3));
    let mut sim = Sim::new(1, sc, client_config(), 9);
    sim.run_for(secs(2));
    sim.server.set_suite(Suite::ChaCha20Poly1305);
    sim.run_for(secs(5));
    let peer = sim.clients[0].peer;
    let g = sim.server.engine().tx_generation(peer).expect("tx");
    let st = sim.server.engine().peer_status(peer).expect("status");
    assert!(
        st.sas
            .iter()
            .any(|s| s.info.suite == Suite::ChaCha20Poly1305),
        "{st:?}"
    );
    assert!(g.number >= 1);
    assert_eq!(sim.stats.key_mismatch, 0);
}

/// The suite of every generation minted for client `i`, by number.
fn minted_suites(sim: &Sim, i: usize) -> Vec<(u64, Suite)> {
    let peer = sim.clients[i].peer;
    sim.server_events
        .iter()
        .filter_map(|(_, e)| match e {
            ServerEvent::KeyMinted {
                peer: p,
                generation,
            } if *p == peer => Some((generation.number, generation.suite)),
            _ => None,
        })
        .collect()
}

/// The suites of the generations a status shows, by number (newest first, the init key left
/// out), with the packets opened under each.
fn held_suites(st: &pktcrypt_core::PeerStatus) -> Vec<(u64, Suite, u64)> {
    let mut v: Vec<_> = st
        .sas
        .iter()
        .filter(|s| s.info.number > 0)
        .map(|s| (s.info.number, s.info.suite, s.counters.packets_opened))
        .collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.0));
    v
}

#[test]
fn suites_rotate_through_the_list_by_generation_number() {
    let list = vec![Suite::Aes256Gcm, Suite::ChaCha20Poly1305, Suite::Aes128Gcm];
    let mut sc = server_config();
    sc.rekey_interval = Some(secs(2));
    sc.suite_rotation = list.clone();
    let mut sim = Sim::new(2, sc, client_config(), 21);
    sim.run_for(secs(21));
    for i in 0..2 {
        let minted = minted_suites(&sim, i);
        assert!(minted.len() >= 6, "client {i}: {minted:?}");
        for &(n, suite) in &minted {
            assert_eq!(
                suite,
                list[((n - 1) % 3) as usize],
                "client {i}: {minted:?}"
            );
        }
        let peer = sim.clients[i].peer;
        // Both sides show the suite of each generation they hold: N and N-1 differ, and both
        // open (the server receives under N from its client, the client under N-1).
        let server = held_suites(&sim.server.engine().peer_status(peer).expect("status"));
        let server_peer = sim.clients[i].machine.server();
        let client = held_suites(
            &sim.clients[i]
                .machine
                .engine()
                .peer_status(server_peer)
                .expect("status"),
        );
        assert_eq!(server.len(), 2, "{server:?}");
        let (n, n1) = (server[0], server[1]);
        assert_eq!(n.1, list[((n.0 - 1) % 3) as usize]);
        assert_eq!(n1.1, list[((n1.0 - 1) % 3) as usize]);
        assert_ne!(n.1, n1.1);
        assert!(n.2 > 0, "the server opens its client's N: {server:?}");
        assert_eq!(
            client.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(),
            server.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>()
        );
        assert!(
            client[1].2 > 0,
            "the client opens the server's N-1: {client:?}"
        );
    }
    assert!(sim.stats.data_opened > 300, "{:?}", sim.stats);
    assert_eq!(sim.stats.key_mismatch, 0, "{:?}", sim.stats);
    assert!(sim.stats.data_dropped.is_empty(), "{:?}", sim.stats);
}

#[test]
fn a_client_suite_overrides_the_server_wide_suite_and_rotation() {
    let mut sc = server_config();
    sc.rekey_interval = Some(secs(2));
    let mut sim = Sim::new(3, sc, client_config(), 22);
    let (a, b) = (sim.clients[0].peer, sim.clients[1].peer);
    sim.server
        .set_client_suite(a, Some(Suite::ChaCha20Poly1305))
        .expect("client");
    assert_eq!(sim.server.client_suite(a), Some(Suite::ChaCha20Poly1305));
    assert_eq!(sim.server.client_suite(b), None);
    sim.run_for(secs(7));
    assert!(
        minted_suites(&sim, 0)
            .iter()
            .all(|&(_, s)| s == Suite::ChaCha20Poly1305)
    );
    assert!(
        minted_suites(&sim, 1)
            .iter()
            .all(|&(_, s)| s == Suite::Aes256Gcm)
    );
    // A rotation for everyone else; client 0 keeps its own; client 1 gets one of its own.
    sim.server
        .set_suite_rotation(vec![Suite::Aes128Gcm, Suite::ChaCha20Poly1305]);
    sim.server
        .set_client_suite(b, Some(Suite::Aes256Gcm))
        .expect("client");
    let before = [0, 1, 2].map(|i| minted_suites(&sim, i).len());
    sim.run_for(secs(9));
    let after = [0, 1, 2].map(|i| minted_suites(&sim, i));
    assert!(
        after[0][before[0]..]
            .iter()
            .all(|&(_, s)| s == Suite::ChaCha20Poly1305)
    );
    assert!(
        after[1][before[1]..]
            .iter()
            .all(|&(_, s)| s == Suite::Aes256Gcm)
    );
    let rotated = &after[2][before[2]..];
    assert!(rotated.len() >= 3, "{rotated:?}");
    for &(n, s) in rotated {
        let want = [Suite::Aes128Gcm, Suite::ChaCha20Poly1305][((n - 1) % 2) as usize];
        assert_eq!(s, want, "{rotated:?}");
    }
    assert_eq!(
        sim.server.suite_for(sim.clients[2].peer, 7),
        Suite::Aes128Gcm
    );
    // Taken away: client 0 follows the rotation again; set_suite ends the rotation.
    sim.server.set_client_suite(a, None).expect("client");
    assert_eq!(sim.server.suite_for(a, 2), Suite::ChaCha20Poly1305);
    sim.server.set_suite(Suite::Aes128Gcm);
    assert!(sim.server.config().suite_rotation.is_empty());
    assert_eq!(sim.server.suite_for(a, 2), Suite::Aes128Gcm);
    assert_eq!(sim.server.suite_for(b, 2), Suite::Aes256Gcm);
    assert_eq!(
        sim.server.set_client_suite(pktcrypt_core::PeerId(99), None),
        Err(pktcrypt_core::Error::UnknownPeer)
    );
    assert_eq!(sim.stats.key_mismatch, 0, "{:?}", sim.stats);
    assert!(sim.stats.data_dropped.is_empty(), "{:?}", sim.stats);
}

#[test]
fn an_init_handshake_takes_the_clients_suite() {
    let mut sc = server_config();
    sc.suite_rotation = vec![Suite::ChaCha20Poly1305, Suite::Aes128Gcm];
    let mut sim = Sim::new(2, sc, client_config(), 23);
    sim.server
        .set_client_suite(sim.clients[1].peer, Some(Suite::Aes256Gcm))
        .expect("client");
    sim.run_for(secs(2));
    assert_eq!(minted_suites(&sim, 0), vec![(1, Suite::ChaCha20Poly1305)]);
    assert_eq!(minted_suites(&sim, 1), vec![(1, Suite::Aes256Gcm)]);
}

#[test]
fn rekey_trigger_on_packets_sealed() {
    let mut cc = client_config();
    cc.triggers.packets_sealed = 25;
    let mut sim = Sim::new(1, server_config(), cc, 10);
    sim.run_for(secs(10));
    let (c, _, _) = sim.generations(0);
    // 10 packets/s sealed: a rotation about every 2.5 s.
    assert!(c >= 3, "trigger did not rotate: generation {c}");
    assert!(sim.clients[0].events.iter().any(|(_, e)| matches!(
        e,
        ClientEvent::Triggered {
            reason: "packets_sealed"
        }
    )));
    assert_eq!(sim.stats.key_mismatch, 0);
}

#[test]
fn rekeys_are_rate_limited_and_spread() {
    let mut sc = server_config();
    sc.rekey_interval = Some(secs(5));
    sc.rekey_jitter_permille = 300;
    sc.max_rekeys_per_second = 20;
    let mut sim = Sim::new(100, sc, client_config(), 11);
    sim.data_interval = Some(Duration::from_millis(500));
    sim.run_for(secs(30));
    let mut per_second = std::collections::HashMap::<u64, u64>::new();
    for (t, e) in &sim.server_events {
        if let ServerEvent::KeyMinted { generation, .. } = e
            && generation.number > 1
        {
            *per_second.entry(t.as_secs()).or_default() += 1;
        }
    }
    let max = per_second.values().copied().max().unwrap_or(0);
    assert!(max <= 2 * 20, "{max} rekeys in one second");
    assert!(
        per_second.values().sum::<u64>() >= 300,
        "rekeys happened: {per_second:?}"
    );
    assert_eq!(sim.stats.key_mismatch, 0);
    let _ = Time::ZERO;
}

#[test]
fn control_messages_alone_cache_no_keys() {
    // The keys of a generation that carried only control messages are derived for each
    // message and dropped: a key server's idle clients cost no expanded keys.
    let mut cc = client_config();
    cc.hello_interval = secs(1);
    let mut sim = Sim::new(20, server_config(), cc, 23);
    sim.data_interval = None;
    sim.run_for(secs(5));
    for i in 0..20 {
        assert_eq!(sim.generations(i), (1, 1, 1));
        assert!(!keys_expanded(&sim, i), "client {i}");
    }
    sim.clients[3].machine.request_update(sim.now);
    sim.run_for(secs(2));
    assert_eq!(sim.generations(3), (2, 2, 2));
    assert!(!keys_expanded(&sim, 3));
    // Data: cached from the first data packet on.
    sim.data_interval = Some(Duration::from_millis(100));
    sim.run_for(secs(1));
    assert!((0..20).all(|i| keys_expanded(&sim, i)));
    assert_eq!(sim.stats.key_mismatch, 0);
}

fn keys_expanded(sim: &Sim, i: usize) -> bool {
    let peer = sim.clients[i].peer;
    let st = sim.server.engine().peer_status(peer).expect("status");
    st.sas.iter().any(|s| s.keys_expanded)
}

#[test]
fn idle_clients_lose_their_expanded_keys_and_come_back() {
    let mut sc = server_config();
    sc.idle_evict = Some(secs(8));
    let mut cc = client_config();
    cc.hello_interval = secs(3600);
    let mut sim = Sim::new(600, sc, cc, 21);
    sim.run_for(secs(2));
    // Every client initialised and sent data: the server keeps expanded keys for each of them.
    assert!((0..600).all(|i| sim.generations(i) == (1, 1, 1)));
    assert!((0..600).all(|i| keys_expanded(&sim, i)));
    // Then silence.
    sim.data_interval = None;
    sim.run_for(secs(5));
    assert!((0..600).all(|i| keys_expanded(&sim, i)), "evicted early");
    // Idle for the eviction time plus one sweep period (idle/4): all gone, in every chunk.
    sim.run_for(secs(6));
    assert!(
        (0..600).all(|i| !keys_expanded(&sim, i)),
        "keys of idle clients still expanded"
    );
    // Traffic resumes: keys are derived again and nothing is lost to a key mismatch.
    sim.data_interval = Some(Duration::from_millis(100));
    sim.run_for(secs(2));
    assert!((0..600).all(|i| keys_expanded(&sim, i)));
    assert!(sim.stats.data_opened > 0);
    assert_eq!(sim.stats.key_mismatch, 0);
}

#[test]
fn s7_timed_rekeys_reach_every_chunk_of_a_large_table() {
    // 1,000 clients span four sweep chunks: each one is rotated on time.
    let mut sc = server_config();
    sc.rekey_interval = Some(secs(10));
    sc.rekey_jitter_permille = 100;
    sc.max_rekeys_per_second = 100_000;
    let mut cc = client_config();
    cc.hello_interval = secs(3600);
    let mut sim = Sim::new(1000, sc, cc, 22);
    sim.data_interval = Some(secs(1));
    sim.run_for(secs(8));
    assert!(
        (0..1000).all(|i| sim.generations(i).0 == 1),
        "rotated early"
    );
    // Deadlines at 10 s ± 10 % ± 1/32: all rotated by 12 s, none twice.
    sim.run_for(secs(5));
    for i in 0..1000 {
        assert_eq!(sim.generations(i), (2, 2, 2), "client {i}");
    }
    assert_eq!(sim.stats.key_mismatch, 0);
}
