//! Adversarial review of the group control channel on protocol version 3 (commit a0c383f).
//!
//! Each test states a property the design claims (docs/protocol.md, "Group messages") and
//! tries to break it on the group simulator with what an on-path attacker or an unlucky
//! network has: loss, delay, and withheld-then-released datagrams (never replays: the channel's
//! replay windows stop those). Failing at a0c383f:
//!
//! - F1 (nonce reuse): a late GROUP_KEY N-1 after the member completed rollout N re-creates N-1
//!   as a fresh SA (sequence numbers from 1) that it transmits under again
//!   (`withheld_group_key_released_two_rollouts_later_reuses_nonces`,
//!   `late_previous_key_after_reconnect_reuses_nonces`).
//! - F2: a restarted member stays receive-only when its one UPDATE_COMPLETED ack is lost
//!   (`restarted_member_whose_ack_is_lost_stays_mute`).
//! - F3/F4: a member cut off for ~20 s during a rollout is evicted for good, or, without
//!   eviction, the rollout and every later rekey stall for good
//!   (`member_evicted_during_an_outage_never_comes_back`,
//!   `rollout_without_eviction_stalls_for_good_after_an_outage`).
//! - F5: after a controller restart the first rollout can stall in Transit for good
//!   (`controller_restart_first_rollout_can_stall_in_transit_for_good`).
//! - F6: a group data SPI equal to a member's control SPI black-holes a sender
//!   (`group_data_spi_equal_to_a_control_spi_blackholes_a_sender`).

use pktcrypt_core::control::{GroupConfig, GroupEvent, MemberState};
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_core::{SealError, Time};
use pktcrypt_tests::group_sim::GroupSim;
use pktcrypt_tests::sim::Link;
use std::time::Duration;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

fn config() -> GroupConfig {
    let mut c = GroupConfig::new();
    c.rekey_interval = None;
    c
}

/// Whether member `i` can seal a data packet now (it does seal one; the packet is dropped).
fn seal_result(sim: &mut GroupSim, i: usize) -> Result<usize, SealError> {
    let mut buf = vec![0u8; ESP_HEADER_LEN + 40 + MAX_OVERHEAD];
    buf[ESP_HEADER_LEN] = 0x45;
    sim.members[i].seal(&mut buf, 40, NextHeader::Ipv4)
}

/// Controller datagrams to member `i` captured at or after `since`.
fn captured_to(sim: &GroupSim, i: usize, since: Time) -> Vec<Vec<u8>> {
    sim.capture
        .iter()
        .filter(|(t, to, _)| *to == i && *t >= since)
        .map(|(_, _, b)| b.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// F1. A late "previous" group key re-creates a generation the member already used.
// ---------------------------------------------------------------------------------------------

/// The plainest form: no restart, no reconnect, no application call. During an ordinary
/// rollout of N+1 an on-path attacker drops (and keeps) the first GROUP_KEY N+1 to member 2;
/// the controller's retry gets the key through and the rollout completes. The attacker then
/// makes the controller roll out N+2 (one spoofed datagram from an unknown address: "unknown
/// sender"), waits until it completes (member 2 holds only N+2), and releases the kept
/// datagram. Member 2 takes N+1 as "the previous generation after a fresh start"
/// (`install_previous`: a new SA, sequence numbers from 1), transmits under it again and
/// reuses every (sender key, nonce) it used under N+1; the rest of the group no longer holds
/// N+1, so everything it sends is lost too, until some later rollout.
#[test]
fn withheld_group_key_released_two_rollouts_later_reuses_nonces() {
    use std::net::{Ipv4Addr, SocketAddr};
    let mut sim = GroupSim::new(3, config(), 21);
    sim.run_for(secs(3));
    let n = sim.controller.generation();
    assert!(sim.controller.idle());
    // Rollout N+1: the first GROUP_KEY to member 2 is dropped (and recorded) by the attacker.
    sim.online[2] = false;
    let start = sim.now;
    sim.controller.rekey(sim.now, "interval");
    sim.run_for(ms(1));
    sim.online[2] = true;
    let withheld = captured_to(&sim, 2, start);
    assert_eq!(withheld.len(), 1, "GROUP_KEY N+1 to member 2");
    sim.run_for(secs(5));
    assert!(sim.controller.idle());
    assert_eq!(sim.members[2].held(), vec![n + 1]);
    // Member 2 transmits under N+1 for a while.
    sim.run_for(secs(3));
    // Rollout N+2 (the next interval rekey; a spoofed datagram from an unknown address used
    // to force one, and no longer does).
    let stranger = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 66), 4500));
    let mut junk = vec![0u8; 64];
    let now = sim.now;
    let _ = sim
        .controller
        .handle_datagram(now, Some(stranger), &mut junk);
    sim.run_for(secs(1));
    assert_eq!(
        sim.controller.generation(),
        n + 1,
        "no rekey on unauthenticated input"
    );
    sim.controller.rekey(sim.now, "interval");
    sim.run_for(secs(5));
    assert!(sim.controller.idle());
    assert_eq!(sim.rollouts().last(), Some(&(n + 2, "interval")));
    assert_eq!(sim.members[2].held(), vec![n + 2]);
    assert!(sim.nonce_reuse.is_empty());
    let mismatch_before = sim.stats.key_mismatch;
    for bytes in &withheld {
        let _ = sim.inject_to_member(2, bytes);
    }
    sim.run_for(secs(2));
    let held = sim.members[2].held();
    let state = sim.members[2].state();
    let tx = sim.members[2].tx_generation();
    assert!(
        sim.nonce_reuse.is_empty(),
        "member 2 re-installed generation {} (held {held:?}, state {state:?}, tx {tx}) and \
         reused {} (key, nonce) pairs, e.g. {:x?}; key mismatches {} -> {}",
        n + 1,
        sim.nonce_reuse.len(),
        sim.nonce_reuse.first(),
        mismatch_before,
        sim.stats.key_mismatch
    );
    assert_eq!(sim.stats.key_mismatch, mismatch_before, "hitless");
}

/// A member that was not restarted (its channel never fell back: floor untouched, so every key
/// carries *transmit*) misses a rollout and calls `reconnect()` (the documented way to catch
/// up). Mid-rollout the controller's catch-up sends it the previous generation N first. An
/// on-path attacker withholds that one datagram (the member's request timer gets a second copy
/// through, and the rollout completes) and releases it once the member holds only N+1.
///
/// The member must not install N again: it transmitted under N for seconds, and a fresh SA for
/// N starts its sequence numbers at 1 under the same sender key. It does
/// (`GroupMember::on_control`, the `k.generation + 1 == self.current && only_newest` branch
/// calls `Engine::install_previous`, which creates a new SA), switches to TxRule::Previous and
/// seals under (N, seq 1, 2, ...) again. Every other member dropped N, so everything it sends
/// is also lost (key mismatch) until some later rollout.
#[test]
fn late_previous_key_after_reconnect_reuses_nonces() {
    let mut sim = GroupSim::new(3, config(), 11);
    sim.run_for(secs(3));
    let n = sim.controller.generation();
    assert!(n >= 1 && sim.controller.idle());
    // Member 2 transmits under N for a while.
    sim.run_for(secs(2));
    // It loses connectivity; the group starts rolling out N+1 without it.
    sim.online[2] = false;
    sim.controller.rekey(sim.now, "test");
    sim.run_for(secs(2));
    assert_eq!(sim.members[2].generation(), n);
    // It comes back and asks for the current key. Its request reaches the controller; the
    // answer (GROUP_KEY N, the previous generation, first) is withheld by the attacker.
    sim.online[2] = true;
    let asked = sim.now;
    sim.members[2].reconnect(sim.now);
    sim.run_for(ms(1));
    sim.online[2] = false;
    sim.run_for(ms(40));
    let withheld = captured_to(&sim, 2, asked);
    assert!(
        !withheld.is_empty(),
        "the controller answered the key request"
    );
    // The member's request timer asks again; this time everything flows and the rollout ends.
    sim.online[2] = true;
    sim.run_for(secs(5));
    assert!(sim.controller.idle());
    assert_eq!(sim.controller.generation(), n + 1);
    assert_eq!(sim.members[2].held(), vec![n + 1]);
    assert_eq!(sim.members[2].state(), MemberState::UpdateCompleted);
    assert!(sim.nonce_reuse.is_empty());
    let mismatch_before = sim.stats.key_mismatch;
    // The attacker releases the withheld datagram(s): never delivered before, inside the
    // channel's replay window, under a channel generation the member still holds.
    for bytes in &withheld {
        let _ = sim.inject_to_member(2, bytes);
    }
    sim.run_for(secs(2));
    let held = sim.members[2].held();
    let state = sim.members[2].state();
    let tx = sim.members[2].tx_generation();
    assert!(
        sim.nonce_reuse.is_empty(),
        "member 2 re-installed generation {n} (held {held:?}, state {state:?}, tx {tx}) and \
         reused {} (key, nonce) pairs, e.g. {:x?}; key mismatches {} -> {}",
        sim.nonce_reuse.len(),
        sim.nonce_reuse.first(),
        mismatch_before,
        sim.stats.key_mismatch
    );
    assert_eq!(sim.stats.key_mismatch, mismatch_before, "hitless");
}

// ---------------------------------------------------------------------------------------------
// F2. A restarted member can stay receive-only indefinitely ("rejoin" hangs on one message).
// ---------------------------------------------------------------------------------------------

/// Restarts member 0 while the group is idle and, if `lose_acks`, loses everything the member
/// sends while the controller's catch-up arrives (its acks). Returns whether member 0 can seal
/// 30 s later, and the rollouts.
fn restart_in_idle(lose_acks: bool) -> (Result<usize, SealError>, Vec<(u64, &'static str)>) {
    let mut sim = GroupSim::new(3, config(), 12);
    sim.link = Link {
        delay: ms(5),
        jitter: Duration::ZERO,
        ..Link::default()
    };
    sim.run_for(secs(3));
    let n = sim.controller.generation();
    assert!(sim.controller.idle());
    sim.restart_member(0);
    let restarted = sim.now;
    // Wait for the controller's catch-up (GROUP_KEY + GROUP_TRANSITION) after the new channel.
    let mut channel_up = None;
    for _ in 0..2000 {
        sim.run_for(ms(1));
        if channel_up.is_none() {
            channel_up = sim
                .events
                .iter()
                .find(|(t, e)| *t >= restarted && *e == GroupEvent::ChannelUp { member: 0 })
                .map(|(t, _)| *t);
        }
        if let Some(up) = channel_up
            && captured_to(&sim, 0, up + ms(1)).len() >= 2
        {
            break;
        }
    }
    let up = channel_up.expect("channel up");
    assert!(
        captured_to(&sim, 0, up + ms(1)).len() >= 2,
        "the catch-up is in flight"
    );
    if lose_acks {
        sim.link.control_loss = 1.0;
    }
    sim.run_for(ms(8));
    sim.link.control_loss = 0.0;
    assert!(sim.members[0].generation() >= n, "the member holds the key");
    // Half a minute later, on a perfect network.
    sim.run_for(secs(30));
    assert!(sim.nonce_reuse.is_empty());
    (seal_result(&mut sim, 0), sim.rollouts())
}

/// A member restarts while the group is idle. The controller records its floor (the current
/// generation: receive-only for it), catches it up and marks it `rejoin`; the "rejoin" rollout
/// starts only when the member's UPDATE_COMPLETED ack arrives. That ack is sent once: in Idle
/// the controller has no retry timer for the member, and the member has no request
/// outstanding (the GROUP_KEY cleared it). Losing that one ack (loss, or an on-path attacker
/// dropping one or two datagrams) leaves the member receive-only until some unrelated rekey
/// (with the default `rekey_interval`, up to an hour), against "for a second or so after a
/// restart it only receives".
#[test]
fn restarted_member_whose_ack_is_lost_stays_mute() {
    // Control: without the loss the member transmits again (after the "rejoin" rollout).
    let (r, rollouts) = restart_in_idle(false);
    assert!(r.is_ok(), "{r:?} {rollouts:?}");
    assert_eq!(rollouts.last().map(|r| r.1), Some("rejoin"));
    let (r, rollouts) = restart_in_idle(true);
    assert!(
        r.is_ok(),
        "member 0 still cannot transmit 30 s after its restart: {r:?} (rollouts {rollouts:?})"
    );
}

/// The same without an attacker: members restart (as in `group_scenarios.rs`) at 30 % control
/// loss, then the network runs for a minute without loss. Every member must be able to
/// transmit again. The existing test checks `tx_generation()` only, which names the slot's
/// generation even when it is receive-only.
#[test]
fn restarted_members_transmit_again_after_loss() {
    let mut c = config();
    c.max_retries = 12;
    c.max_backoff = secs(1);
    let mut failures = Vec::new();
    for seed in 0..8u64 {
        let mut sim = GroupSim::new(5, c.clone(), 40 + seed);
        sim.link = Link {
            delay: ms(5),
            jitter: ms(20),
            control_loss: 0.30,
            data_loss: 0.0,
            duplicate: 0.05,
        };
        for round in 0..12u64 {
            sim.run_for(ms(1700 + 137 * round));
            if round % 3 == 1 {
                sim.controller.rekey(sim.now, "test");
                sim.run_for(ms(60 * round));
            }
            sim.restart_member(((seed + round * 7) % 5) as usize);
        }
        sim.link.control_loss = 0.0;
        sim.link.duplicate = 0.0;
        sim.run_for(secs(60));
        let mute: Vec<(usize, Result<usize, SealError>)> = (0..5)
            .map(|i| (i, seal_result(&mut sim, i)))
            .filter(|(_, r)| r.is_err())
            .collect();
        if !mute.is_empty() {
            failures.push((seed, sim.controller.generation(), mute));
        }
    }
    assert!(
        failures.is_empty(),
        "(seed, generation, members that cannot transmit a minute later): {failures:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// F3. A member cut off for ~20 s during a rollout is out of the group for good.
// ---------------------------------------------------------------------------------------------

/// Default configuration (eviction on). Member 2's link is down for 30 s while a rollout runs:
/// the controller evicts it and rekeys without it. Its link comes back; its control channel
/// works (hellos are answered, so it never falls back and never sends GROUP_JOIN again), but
/// nothing tells it that it was evicted, and the daemon (`driver.rs`, `run_group_member`) never
/// calls `join()` or `reconnect()`. A minute later it is still out: it transmits under a
/// generation nobody holds and reads nothing.
///
/// Decided with issue 12 (group revocation): an evicted member stays out until the operator
/// re-admits it (`GroupController::readmit`); its joins are refused and reported
/// (`JoinRefused`). The test checks that: out after the outage, back once re-admitted.
#[test]
fn member_evicted_during_an_outage_never_comes_back() {
    let mut sim = GroupSim::new(3, config(), 31);
    sim.run_for(secs(3));
    sim.online[2] = false;
    sim.controller.rekey(sim.now, "interval");
    sim.run_for(secs(30));
    assert!(
        sim.events
            .iter()
            .any(|(_, e)| *e == GroupEvent::Evicted { member: 2 })
    );
    sim.online[2] = true;
    sim.run_for(secs(30));
    assert!(
        !sim.controller.active_members().contains(&2),
        "evicted stays out"
    );
    let now = sim.now;
    sim.controller.readmit(now, 2);
    sim.run_for(secs(30));
    let g = sim.controller.generation();
    assert!(
        sim.controller.active_members().contains(&2) && sim.members[2].generation() == g,
        "a minute after its link came back member 2 is still out of the group: active {:?}, \
         member 2 at generation {} (group {g})",
        sim.controller.active_members(),
        sim.members[2].generation()
    );
}

/// The same outage with `evict_unresponsive = false` (a documented setting): after
/// `max_retries` the controller stops retrying the member (`next_retry = None`) and waits for
/// it; the member, back online, has nothing to send. The rollout never completes, and every
/// later rekey (interval, join, leave, eviction) only sets `rekey_pending`: the group never
/// rekeys again.
#[test]
fn rollout_without_eviction_stalls_for_good_after_an_outage() {
    let mut c = config();
    c.evict_unresponsive = false;
    let mut sim = GroupSim::new(3, c, 32);
    sim.run_for(secs(3));
    let n = sim.controller.generation();
    sim.online[2] = false;
    sim.controller.rekey(sim.now, "interval");
    sim.run_for(secs(30));
    sim.online[2] = true;
    sim.run_for(secs(60));
    sim.controller.rekey(sim.now, "interval");
    sim.run_for(secs(60));
    assert!(
        sim.controller.idle() && sim.controller.generation() > n + 1,
        "two minutes after member 2's link came back the rollout of {} has not completed \
         (idle {}, generation {}, member 2 at {}); the next rekey never started",
        n + 1,
        sim.controller.idle(),
        sim.controller.generation(),
        sim.members[2].generation()
    );
}

// ---------------------------------------------------------------------------------------------
// F5. After a controller restart the first rollout can stall in Transit for good.
// ---------------------------------------------------------------------------------------------

/// The controller restarts (a new boot: new channel server, generations from 1 again, fresh
/// secrets), idle or mid-rollout, at 20 % control loss. Members' channels fall back, they
/// resync and join the new boot. Nonce reuse: none (fresh secrets). But every resynced member
/// takes its first key as a fresh start and acks UPDATE_COMPLETED, and in generation 1 there
/// is no previous key to send it back to DISTRIBUTION_COMPLETED. When every active member has
/// acked UPDATE_COMPLETED by the time Distributing ends, `next_stage` enters Transit, sends
/// nothing (everyone already "reached" InTransit) and never calls `advance`; no ack will ever
/// come, so the rollout never ends, the pending "join" rekeys never start, and every member
/// whose channel came up after generation 1 was minted holds it receive-only: mute for good.
#[test]
fn controller_restart_first_rollout_can_stall_in_transit_for_good() {
    use pktcrypt_core::control::{GroupController, SeededRandom};
    use pktcrypt_tests::group_sim::{group_init_key, member_addr, member_control_key};
    let mut failures = Vec::new();
    for seed in 0..6u64 {
        let mut sim = GroupSim::new(4, config(), 60 + seed);
        sim.link = Link {
            delay: ms(5),
            jitter: ms(20),
            control_loss: 0.2,
            data_loss: 0.0,
            duplicate: 0.05,
        };
        sim.run_for(secs(5));
        if seed % 2 == 1 {
            sim.controller.rekey(sim.now, "test");
            sim.run_for(ms(40 * seed));
        }
        let mut controller = GroupController::new(
            config(),
            &group_init_key(),
            Box::new(SeededRandom::new(1000 + seed)),
        )
        .expect("controller");
        for i in 0..4 {
            controller
                .add_member(&member_control_key(i), Some(member_addr(i)), false, sim.now)
                .expect("member");
        }
        sim.controller = controller;
        sim.run_for(secs(90));
        sim.link.control_loss = 0.0;
        sim.run_for(secs(30));
        assert!(sim.nonce_reuse.is_empty(), "seed {seed}");
        let mute: Vec<usize> = (0..4)
            .filter(|i| seal_result(&mut sim, *i).is_err())
            .collect();
        if !mute.is_empty() || !sim.controller.idle() {
            let states: Vec<_> = sim.members.iter().map(|m| (m.state(), m.held())).collect();
            failures.push(format!(
                "seed {seed}: {:?} (idle {}), members (state, held) {states:?}, mute {mute:?}, \
                 last events {:?}",
                sim.controller,
                sim.controller.idle(),
                &sim.events[sim.events.len().saturating_sub(3)..]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "two minutes after a controller restart:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// F6. Group data SPIs are not kept apart from the members' control-channel SPIs.
// ---------------------------------------------------------------------------------------------

/// Builds the group of `GroupSim::new(3, config(), seed)` again, with member 0's control init
/// key under `control_spi` instead of 0x200 (nothing else changes: the same seeds, so the same
/// group SPIs).
fn group_with_control_spi(seed: u64, control_spi: u32) -> GroupSim {
    use pktcrypt_core::control::{GroupController, GroupMember, SeededRandom};
    use pktcrypt_core::{Generation, GenerationInfo, Secret, Spi, Suite};
    use pktcrypt_tests::group_sim::{group_init_key, member_addr, member_control_key};
    let mut sim = GroupSim::new(3, config(), seed);
    let key = |spi: u32, fill: u8| Generation {
        info: GenerationInfo {
            number: 0,
            spi: Spi::new(spi).expect("spi"),
            suite: Suite::Aes128Gcm,
        },
        secret: Secret::from_bytes([fill; 32]),
    };
    let controls = [
        key(control_spi, 1),
        member_control_key(1),
        member_control_key(2),
    ];
    let mut controller = GroupController::new(
        config(),
        &group_init_key(),
        Box::new(SeededRandom::new(seed)),
    )
    .expect("controller");
    for (i, c) in controls.iter().enumerate() {
        controller
            .add_member(c, Some(member_addr(i)), false, sim.now)
            .expect("member");
    }
    sim.controller = controller;
    for (i, c) in controls.iter().enumerate() {
        sim.members[i] = GroupMember::new(
            config(),
            i as u16,
            c,
            &group_init_key(),
            3,
            Box::new(SeededRandom::new(seed ^ ((i as u64 + 1) << 24))),
            sim.now,
        )
        .expect("member");
    }
    sim
}

/// A member routes a datagram to its control channel if the channel engine knows the SPI,
/// else to the group engine (`GroupMember::handle_datagram`). The controller draws each
/// generation's `spi_base` avoiding only the group's own ranges (`GroupController::rekey`), and
/// the channel's key server draws channel SPIs avoiding only its own (`KeyServer::unused_spi`).
/// When a sender's data SPI equals a member's control SPI (its init key's, provisioned, or any
/// channel generation's), that member drops all of that sender's traffic for the generation's
/// lifetime: no attacker needed, probability about 3·m²/2^32 per rollout for m members (and an
/// off-path attacker can force a rollout every `unknown_sender_holdoff`).
///
/// Run 1 learns the settled generation's `spi_base`; run 2 is the same group (same seeds) with
/// member 0's control init SPI equal to member 1's data SPI of that generation.
#[test]
fn group_data_spi_equal_to_a_control_spi_blackholes_a_sender() {
    let seed = 13;
    let mut sim = group_with_control_spi(seed, 0x200);
    sim.run_for(secs(3));
    let g = sim.controller.generation();
    let sender1 = sim.members[0].sender(1).expect("sender 1");
    let data_spi = sim.members[0]
        .engine()
        .generation(sender1, pktcrypt_core::Slot::Newest)
        .expect("generation")
        .spi
        .get();
    sim.run_for(secs(5));
    assert_eq!(sim.stats.key_mismatch, 0);
    let clean = sim.stats.data_dropped.clone();

    let mut sim = group_with_control_spi(seed, data_spi);
    sim.run_for(secs(3));
    assert_eq!(sim.controller.generation(), g, "the same run");
    let again = sim.members[0]
        .engine()
        .generation(sender1, pktcrypt_core::Slot::Newest)
        .expect("generation")
        .spi
        .get();
    // Before the fix the same seeds drew the same SPIs (and member 0 lost 50 of member 1's
    // packets); now the controller draws around every channel SPI it knows.
    assert_ne!(again, data_spi, "a group data SPI equal to a control SPI");
    let before = sim.stats.data_deliveries - sim.stats.data_opened;
    sim.run_for(secs(5));
    let lost = sim.stats.data_deliveries - sim.stats.data_opened - before;
    assert_eq!(
        lost, 0,
        "member 0 (control init SPI {data_spi:#x}) lost {lost} of member 1's packets under \
         generation {g} (data SPI {data_spi:#x}); drops {:?} (same group with another control \
         SPI: {clean:?})",
        sim.stats.data_dropped
    );
}

// ---------------------------------------------------------------------------------------------
// Checks that held.
// ---------------------------------------------------------------------------------------------

/// Data-plane workers of a restarted member: the view taken while it holds the group's
/// generations receive-only has no transmit key for its own sender (`no_key`, as the engine);
/// after the "rejoin" rollout it has one, under a generation minted after the restart.
#[test]
fn restarted_members_data_plane_has_no_transmit_key_until_rejoin() {
    let mut sim = GroupSim::new(3, config(), 14);
    sim.run_for(secs(3));
    let n = sim.controller.generation();
    sim.restart_member(1);
    for _ in 0..2000 {
        sim.run_for(ms(1));
        if sim.members[1].generation() == n {
            break;
        }
    }
    assert_eq!(sim.members[1].generation(), n);
    let me = sim.members[1].sender(1).expect("own sender");
    let plane = sim.members[1].data_plane().expect("plane");
    assert_eq!(
        plane.tx_generation(me),
        None,
        "receive-only: no transmit key"
    );
    assert_eq!(seal_result(&mut sim, 1), Err(SealError::NoKey));
    sim.run_for(secs(3));
    let plane = sim.members[1].data_plane().expect("plane");
    let tx = plane.tx_generation(me).map(|g| g.number);
    assert!(tx.is_some_and(|g| g > n), "{tx:?} after rejoin (floor {n})");
    assert!(sim.nonce_reuse.is_empty());
}
