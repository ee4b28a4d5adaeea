//! Regression tests for the findings of an adversarial review of protocol version 3 (first
//! draft): each failed on that draft (a panic, a livelock, a client locked out) and passes now.
//!
//! - F1: two "last" fragments of one message with different lengths panicked the reassembler:
//!   any client could crash the key server that serves every client.
//! - F2: one recorded init request, replayed every 5 ms, replaced the server's only stored
//!   candidate for that client, so a restarted client never completed its handshake. Answers now
//!   carry their own sealed state (a biscuit): nothing stored can be pushed out.
//! - F3: a delayed copy of distribution N made the client drop its update request and offer a
//!   new key share, which the server's pending N+1 (from the first share) never answered:
//!   rotation stopped for good.
//! - F5: a replayed handshake fragment under the init SPI discarded a message in progress under
//!   a generation's SPI.

use pktcrypt_core::control::message::{Reassembler, VERSION};
use pktcrypt_core::control::{
    ClientConfig, ClientEvent, Incoming, KeyServer, SeededRandom, ServerConfig, ServerEvent,
};
use pktcrypt_core::{
    Engine, EngineConfig, Generation, GenerationInfo, Role, Secret, Spi, Suite, Time,
};
use pktcrypt_tests::sim::{Sim, Way};
use std::time::Duration;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

fn spi_of(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Client 0 and the server hold the same newest generation (number and SPI), proven.
fn really_converged(sim: &Sim) -> bool {
    sim.converged(0)
}

/// A fragment, encoded by hand (`header(type 127) ‖ index ‖ count ‖ chunk`).
fn frag(id: u32, index: u8, count: u8, chunk: &[u8]) -> Vec<u8> {
    let mut w = vec![VERSION, 127];
    w.extend_from_slice(&((2 + chunk.len()) as u16).to_be_bytes());
    w.extend_from_slice(&id.to_be_bytes());
    w.push(index);
    w.push(count);
    w.extend_from_slice(chunk);
    w
}

/// F1 (unit): two last fragments of one message id with different lengths panic the reassembler
/// (`buf` was truncated by the first; the second indexes past it).
#[test]
fn f1_reassembler_last_fragment_twice_longer_panics() {
    let mut r = Reassembler::new(4);
    let t = Time::from_secs(1);
    let short = frag(7, 1, 2, &[1u8; 10]);
    let long = frag(7, 1, 2, &[2u8; 1000]);
    let _ = r.push(t, 0, 0x100, &short);
    // On the draft: "range end index 2182 out of range". Now: the first copy stands.
    assert!(matches!(
        r.push(t, 0, 0x100, &long),
        Ok(pktcrypt_core::control::message::Assembled::Pending) | Err(_)
    ));
}

/// F1 (end to end): any keyed client (it holds only its own init key) crashes the key server
/// that serves every client, with two handshake datagrams.
#[test]
fn f1_one_client_crashes_the_key_server() {
    let init = Generation {
        info: GenerationInfo {
            number: 0,
            spi: Spi::new(0x4242).expect("spi"),
            suite: Suite::ChaCha20Poly1305,
        },
        secret: Secret::from_bytes([9; 32]),
    };
    let mut server =
        KeyServer::new(ServerConfig::new(), Box::new(SeededRandom::new(1))).expect("server");
    server.add_client(&init, None, Time::ZERO).expect("client");
    let mut cfg = EngineConfig::new(Role::Client);
    cfg.handshake_init = true;
    let mut me = Engine::new(cfg).expect("engine");
    let peer = me.add_peer(&init, Time::ZERO).expect("peer");
    let mut out = vec![0u8; 1536];
    for (i, chunk_len) in [(1u8, 10usize), (2, 1000)] {
        let m = frag(0x55, 1, 2, &vec![i; chunk_len]);
        let n = me
            .seal_handshake(peer, &m, &mut out, [i; 12])
            .expect("seal");
        let mut pkt = out[..n].to_vec();
        let r = server.handle_datagram(Time::from_secs(1), None, &mut pkt);
        assert!(matches!(r, Incoming::Control { .. }), "{r:?}");
    }
}

/// F2: an off-path attacker holding ONE recorded KEY_INIT_REQUEST of a client (from any earlier
/// boot) replays it every 5 ms. Each replay that follows the client's own request replaces the
/// server's single candidate for that peer, so the client's KEY_INIT_CONFIRM never matches:
/// the restarted client never gets a key (and every replaced candidate costs the server a fresh
/// ML-KEM + X25519 exchange).
#[test]
fn f2_replayed_old_init_request_blocks_every_restart() {
    let mut sim = Sim::new(1, ServerConfig::new(), ClientConfig::new(), 11);
    sim.capturing = true;
    assert!(sim.run_until_converged(ms(10), secs(5)).is_some());
    let init_spi = 0x100;
    let old_request: Vec<Vec<u8>> = sim
        .capture
        .iter()
        .filter(|c| c.way == Way::ToServer && c.control && spi_of(&c.bytes) == init_spi)
        .take(2)
        .map(|c| c.bytes.clone())
        .collect();
    assert_eq!(old_request.len(), 2, "a fragmented init request");
    sim.run_for(secs(2));
    sim.restart_client(0);
    let start = sim.now;
    let mut replays = 0;
    while sim.now - start < secs(60) {
        for f in &old_request {
            let inj = sim.inject_to_server(0, None, f);
            let _ = inj;
        }
        replays += 1;
        sim.run_for(ms(5));
        if really_converged(&sim) {
            break;
        }
    }
    let minted_candidates = sim.server_events.len();
    assert!(
        really_converged(&sim),
        "restarted client still has no key after 60 s of {replays} replays of one old request \
         (generations {:?}, fallbacks {}, server events {minted_candidates})",
        sim.generations(0),
        sim.stats.fallbacks
    );
}

/// F3: a stale copy of distribution N (delayed by an on-path attacker) arrives while the client
/// waits for N+1: the client drops its update request but keeps the exchange; its still-firing
/// rekey trigger then starts a NEW exchange. The server's pending N+1 answers the old share, so
/// the client discards every resend; each resend under N also resets the client's fallback
/// counter. Rotation stops for good (no fallback, N used forever).
#[test]
fn f3_stale_distribution_copy_livelocks_rotation() {
    let mut server = ServerConfig::new();
    server.rekey_interval = None;
    let mut client = ClientConfig::new();
    client.triggers.max_age = Some(secs(4));
    let mut sim = Sim::new(1, server, client, 5);
    sim.capturing = true;
    assert!(sim.run_until_converged(ms(10), secs(5)).is_some());
    assert_eq!(sim.generations(0).0, 1);
    // Withhold the first copy of distribution 2 (the attacker records it; the server retries).
    sim.drop_next_down_control = 1;
    let mark = sim.capture.len();
    let t0 = sim.now;
    while sim.generations(0) != (2, 2, 2) && sim.now - t0 < secs(20) {
        sim.run_for(ms(10));
    }
    assert_eq!(sim.generations(0), (2, 2, 2));
    let withheld = sim.capture[mark..]
        .iter()
        .find(|c| c.way == Way::ToClient && c.control && c.bytes.len() > 1000)
        .map(|c| c.bytes.clone())
        .expect("withheld distribution 2");
    // Wait until the server minted 3 from the client's trigger-driven request.
    let t1 = sim.now;
    while sim.generations(0).1 != 3 && sim.now - t1 < secs(20) {
        sim.run_for(ms(1));
    }
    assert_eq!(sim.generations(0).1, 3, "server minted 3");
    let r = sim.inject_to_client(0, &withheld);
    let _ = r;
    sim.run_for(secs(120));
    let resent = sim
        .server_events
        .iter()
        .filter(|(_, e)| matches!(e, ServerEvent::Resent { generation: 3, .. }))
        .count();
    let installed3 = sim.clients[0].events.iter().any(
        |(_, e)| matches!(e, ClientEvent::KeyInstalled { generation } if generation.number >= 3),
    );
    assert!(
        installed3,
        "client stuck at {:?} for 120 s: server resent 3 {resent} times, fallbacks {}",
        sim.generations(0),
        sim.stats.fallbacks
    );
}

/// F5: one replayed handshake fragment (no replay window under the init key) discards the
/// peer's in-progress message under another SPI (e.g. an update request with a share).
#[test]
fn f5_replayed_fragment_evicts_in_progress_message() {
    use pktcrypt_core::control::message::Assembled;
    let mut r = Reassembler::new(1024);
    let t = Time::from_secs(1);
    let a0 = frag(1, 0, 2, &[1u8; 1182]);
    let a1 = frag(1, 1, 2, &[1u8; 83]);
    let replay = frag(99, 0, 2, &[7u8; 1182]);
    let _ = r.push(t, 5, 0x5555, &a0);
    let _ = r.push(t, 5, 0x100, &replay);
    let _ = r.push(t, 5, 0x100, &replay);
    let done = matches!(r.push(t, 5, 0x5555, &a1), Ok(Assembled::Complete(_)));
    assert!(
        done,
        "the update request under 0x5555 was lost to a replayed init-SPI fragment"
    );
}
