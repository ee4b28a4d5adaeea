//! The invariants of spec §8 on the simulator, under lossy, duplicating, reordering links.
//!
//! 1. Hitless rekey: without a fault, no data packet is dropped for a key mismatch, even with
//!    30 % of control messages lost (both directions), duplicates and reordering.
//! 2. Bounded recovery: after each kind of fault both sides reach a common newest generation
//!    within a stated bound.
//! 3. No (key, nonce) pair twice (checked on every sealed packet by the simulator) and never more
//!    than two dynamic generations.

use pktcrypt_core::control::{ClientConfig, ServerConfig};
use pktcrypt_tests::sim::{Link, Sim};
use proptest::prelude::*;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn lossy(loss: f64) -> Link {
    Link {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(40),
        control_loss: loss,
        data_loss: 0.0,
        duplicate: 0.05,
    }
}

fn rotating_server(interval: Duration) -> ServerConfig {
    let mut c = ServerConfig::new();
    c.rekey_interval = Some(interval);
    c.rekey_jitter_permille = 200;
    c.max_rekeys_per_second = 10_000;
    c
}

fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.hello_interval = secs(3);
    c
}

/// Runs `sim` with perfect links until every client converged; returns how long it took.
fn heal(sim: &mut Sim, bound: Duration) -> Duration {
    sim.up.control_loss = 0.0;
    sim.down.control_loss = 0.0;
    sim.run_until_converged(Duration::from_millis(50), bound)
        .unwrap_or_else(|| {
            panic!(
                "no convergence within {bound:?}: {:?}",
                (0..sim.clients.len())
                    .map(|i| sim.generations(i))
                    .collect::<Vec<_>>()
            )
        })
}

#[test]
fn ten_thousand_rekeys_with_30_percent_control_loss_are_hitless() {
    let mut sim = Sim::new(25, rotating_server(secs(2)), client(), 42);
    sim.up = lossy(0.30);
    sim.down = lossy(0.30);
    sim.data_interval = Some(Duration::from_millis(200));
    let mut rounds = 0;
    while sim.stats.minted < 10_000 + 25 {
        sim.run_for(secs(50));
        sim.assert_at_most_two_generations();
        assert_eq!(
            sim.stats.key_mismatch, 0,
            "data dropped for a key mismatch: {:?}",
            sim.stats
        );
        rounds += 1;
        assert!(rounds < 100, "too slow: {:?}", sim.stats);
    }
    heal(&mut sim, secs(10));
    let s = &sim.stats;
    eprintln!(
        "{} rekeys in {:?} of virtual time; control sent {} lost {}; data sent {} opened {} lost on link {}; fallbacks {}; implicit resends {}",
        s.minted,
        sim.now,
        s.control_sent,
        s.control_lost,
        s.data_sent,
        s.data_opened,
        s.data_lost_on_link,
        s.fallbacks,
        s.resent_implicit
    );
    assert!(s.control_lost as f64 >= 0.25 * s.control_sent as f64);
    assert_eq!(s.key_mismatch, 0);
    assert_eq!(
        s.fallbacks, 0,
        "loss alone must not look like a server fault"
    );
    // Every data packet sent was opened, except those still in flight at the end.
    assert!(
        s.data_sent - s.data_opened <= 2 * 25 + s.data_lost_on_link,
        "{s:?}"
    );
    // The only data drops are the link's duplicates, refused by the replay window.
    let replays = s
        .data_dropped
        .get(&pktcrypt_core::DropReason::Replay)
        .copied()
        .unwrap_or(0);
    let other_drops: u64 = s.data_dropped.values().sum::<u64>() - replays;
    assert_eq!(other_drops, 0, "{:?}", s.data_dropped);
    assert!(
        replays <= s.data_duplicated,
        "{replays} replays, {} duplicates",
        s.data_duplicated
    );
    assert!(
        replays + 50 >= s.data_duplicated,
        "{replays} replays, {} duplicates",
        s.data_duplicated
    );
}

#[test]
fn recovery_is_bounded_after_every_fault() {
    let cc = client();
    let fallback = cc.fallback_bound();
    let mut sim = Sim::new(6, rotating_server(secs(4)), cc.clone(), 7);
    sim.up = lossy(0.1);
    sim.down = lossy(0.1);
    sim.run_for(secs(20));

    // Lost distributions (heavy loss for a while): recovery once the link is back.
    sim.up.control_loss = 0.9;
    sim.down.control_loss = 0.9;
    sim.run_for(secs(15));
    let took = heal(&mut sim, secs(10));
    eprintln!("after heavy control loss: converged in {took:?}");

    // The server loses every dynamic key.
    sim.restart_server();
    let bound = fallback + cc.hello_interval + secs(2);
    let took = heal(&mut sim, bound);
    eprintln!("after server key loss: converged in {took:?} (bound {bound:?})");
    assert!((0..6).all(|i| sim.generations(i).0 >= 1));

    // A client restarts.
    sim.run_for(secs(10));
    sim.restart_client(3);
    let took = heal(&mut sim, secs(2));
    eprintln!("after client restart: converged in {took:?}");

    // A client that never answers: the others keep rotating; it recovers when back.
    sim.run_for(secs(10));
    let before = sim.generations(0).0;
    sim.up.control_loss = 0.0;
    sim.down.control_loss = 0.0;
    sim.run_for(secs(20));
    assert!(sim.generations(0).0 > before, "rotation continues");
    sim.assert_at_most_two_generations();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random links and schedules (seeded, reproducible): no key-mismatch drops, at most two
    /// generations, no nonce reuse, and convergence once the links heal.
    #[test]
    fn random_schedules_keep_the_invariants(
        seed in any::<u64>(),
        clients in 1usize..5,
        loss in 0.0f64..0.5,
        dup in 0.0f64..0.2,
        jitter_ms in 0u64..80,
        interval_s in 1u64..6,
        update_s in proptest::option::of(2u64..8),
    ) {
        let mut cc = client();
        cc.update_interval = update_s.map(secs);
        let mut sim = Sim::new(clients, rotating_server(secs(interval_s)), cc, seed);
        let link = Link {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(jitter_ms),
            control_loss: loss,
            data_loss: 0.0,
            duplicate: dup,
        };
        sim.up = link;
        sim.down = link;
        sim.run_for(secs(60));
        sim.assert_at_most_two_generations();
        prop_assert_eq!(sim.stats.key_mismatch, 0, "{:?}", sim.stats);
        heal(&mut sim, secs(15));
        prop_assert_eq!(sim.stats.key_mismatch, 0);
    }
}
