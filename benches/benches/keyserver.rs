//! One `KeyServer` holding 1,000,000 clients (set `PKTCRYPT_CLIENTS` for another count):
//! bytes of state per client, measured with a counting allocator, and rekeys per second on one
//! core. A rekey here is the server's whole path for a `KEY_UPDATE_REQUEST` under generation N:
//! open and decode it, mint N+1 (secret, SPI, install), encode and seal the distribution.
//!
//! The heap is mimalloc, as in the `pktcrypt` daemon; `--features system-alloc` measures the
//! system allocator instead. The random generator is the daemon's key server's
//! ([`KeyErasureRandom`]), seeded here.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use pktcrypt_core::control::message::{KeyMaterial, Message};
use pktcrypt_core::control::{Incoming, KeyErasureRandom, KeyServer, ServerConfig};
use pktcrypt_core::{
    Engine, EngineConfig, Generation, GenerationInfo, Opened, PeerId, Role, Secret, Spi, Suite,
    Time,
};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[cfg(not(feature = "system-alloc"))]
use mimalloc::MiMalloc as Inner;
#[cfg(feature = "system-alloc")]
use std::alloc::System as Inner;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the inner allocator (mimalloc or the system's) unchanged and
// only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { Inner.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { Inner.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn init(i: u32) -> Generation {
    let mut s = [0u8; 32];
    s[..4].copy_from_slice(&i.to_be_bytes());
    Generation {
        info: GenerationInfo {
            number: 0,
            spi: Spi::new(0x1000_0000 + i).unwrap(),
            suite: Suite::Aes256Gcm,
        },
        secret: Secret::from_bytes(s),
    }
}

/// Requests handled back to back (then their proofs).
const CHUNK: usize = 256;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes benches; nothing to list.
    }
    let n: u32 = std::env::var("PKTCRYPT_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut config = ServerConfig::new();
    config.rekey_interval = None;
    config.reorder_grace = Duration::ZERO;
    config.max_rekeys_per_second = u32::MAX;
    config.idle_evict = None;
    let base = LIVE.load(Ordering::Relaxed);
    let mut server =
        KeyServer::new(config, Box::new(KeyErasureRandom::from_seed([7; 32]))).unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        server.add_client(&init(i), None, Time::ZERO).unwrap();
    }
    let after_add = LIVE.load(Ordering::Relaxed) - base;
    println!(
        "{n} clients added in {:?}: {} bytes per client (init key only)",
        t0.elapsed(),
        after_add / n as usize
    );

    // The clients' side, to produce genuine requests (not timed, not counted per server client).
    let mut cc = EngineConfig::new(Role::Client);
    cc.init_seq_base = 1 << 40;
    let mut clients = Engine::new(cc).unwrap();
    for i in 0..n {
        clients.add_peer(&init(i), Time::ZERO).unwrap();
    }
    let mut out = vec![0u8; 256];
    let steady: u64 = std::env::var("PKTCRYPT_STEADY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut server_time = Duration::ZERO;
    let mut proof_time = Duration::ZERO;
    for round in 0..2 + steady {
        if round >= 2 {
            // What the idle timer does between rotations an hour apart (keys of generations
            // that carried only control messages were never cached, so little is left to do).
            evict_all(&mut server, n);
        }
        let round_start = server_time;
        let proof_start = proof_time;
        // Clients in chunks, as a server drains its socket: the requests of a chunk, then their
        // proofs, each timed as a whole; the clients' side runs between them, untimed (on a real
        // server it runs elsewhere and does not evict the server's state from the caches).
        let now = Time::from_secs(1 + round);
        for chunk in (0..n).collect::<Vec<u32>>().chunks(CHUNK) {
            let mut requests: Vec<Vec<u8>> = chunk
                .iter()
                .map(|&i| {
                    let msg = if round == 0 {
                        Message::KeyInitRequest
                    } else {
                        Message::KeyUpdateRequest { have: round }
                    };
                    let len = clients
                        .seal_control(PeerId(i), msg.encode(i).as_bytes(), &mut out)
                        .unwrap();
                    out[..len].to_vec()
                })
                .collect();
            let mut dists = Vec::with_capacity(chunk.len());
            let t = Instant::now();
            for pkt in &mut requests {
                let r = server.handle_datagram(now, None, pkt);
                assert!(matches!(r, Incoming::Control { .. }));
            }
            // A rotation's distribution leaves from the reorder-grace timer (zero here).
            server.handle_timeout(now);
            while let Some(tx) = server.poll_transmit() {
                dists.push(tx.contents);
            }
            server_time += t.elapsed();
            assert_eq!(dists.len(), chunk.len());
            // The clients install what they got and prove it (untimed).
            let mut acks: Vec<Vec<u8>> = dists
                .iter_mut()
                .map(|d| client_install(&mut clients, d, &mut out))
                .collect();
            let t = Instant::now();
            for ack in &mut acks {
                let _ = server.handle_datagram(now, None, ack);
            }
            while server.poll_event().is_some() {}
            proof_time += t.elapsed();
        }
        while server.poll_event().is_some() {}
        let rekey = server_time - round_start;
        let proof = proof_time - proof_start;
        let what = match round {
            0 => "inits (generation 1)",
            1 => "rotations (N -> N+1)",
            _ => "rotations (N -> N+1) after idle eviction",
        };
        println!(
            "round {}: {n} {what}: {:.0}/s counting the proof packet; request -> distribution \
             alone {:.0}/s ({:.2} us each); proof {:.2} us each",
            round + 1,
            n as f64 / (rekey + proof).as_secs_f64(),
            n as f64 / rekey.as_secs_f64(),
            rekey.as_secs_f64() * 1e6 / n as f64,
            proof.as_secs_f64() * 1e6 / n as f64,
        );
    }
    // An idle client still says hello now and then (every 10 s by default): one from each,
    // answered, before measuring.
    let hello_at = Time::from_secs(3 + steady);
    for i in 0..n {
        let hello = Message::Hello { have: steady + 1 };
        let len = clients
            .seal_control(PeerId(i), hello.encode(i).as_bytes(), &mut out)
            .unwrap();
        let mut pkt = out[..len].to_vec();
        let r = server.handle_datagram(hello_at, None, &mut pkt);
        assert!(matches!(r, Incoming::Control { .. }));
        while server.poll_transmit().is_some() {}
    }
    // The client-side engine is counted too: subtract it by measuring it alone.
    let client_side = {
        let before = LIVE.load(Ordering::Relaxed);
        drop(clients);
        before - LIVE.load(Ordering::Relaxed)
    };
    let server_bytes = LIVE.load(Ordering::Relaxed) - base;
    let _ = client_side;
    println!(
        "server state after the rounds and a hello from each client (init, N, N-1 held; \
         retransmission timers pending): {} bytes per client",
        server_bytes / n as usize
    );
    evict_all(&mut server, n);
    // Idle: time passes, the retransmission timers of the (proven) distributions expire.
    server.handle_timeout(Time::from_secs(3600));
    assert!(
        server.poll_timeout().is_none(),
        "an idle server has no timers"
    );
    println!(
        "server state, idle (timers expired; windows compacted, keys evicted: none here, \
         control messages leave neither): {} bytes per client",
        (LIVE.load(Ordering::Relaxed) - base) / n as usize
    );
}

/// The client's side of a distribution: open, install, seal the proof (a `KEY_ACK` under the
/// new generation).
fn client_install(clients: &mut Engine, d: &mut [u8], out: &mut [u8]) -> Vec<u8> {
    let Opened::Control { message, info } = clients.open(d) else {
        panic!("distribution")
    };
    let peer = info.peer;
    let Ok((Message::KeyDistribution(dist), _)) = Message::decode(message) else {
        panic!("decode")
    };
    let KeyMaterial::Secret(secret) = dist.material else {
        panic!("secret mode")
    };
    let g = Generation {
        info: GenerationInfo {
            number: dist.generation,
            spi: Spi::new(dist.spi).unwrap(),
            suite: dist.suite,
        },
        secret: Secret::from_bytes(secret),
    };
    clients.install(peer, &g, Time::ZERO).unwrap();
    let ack = Message::KeyAck {
        generation: dist.generation,
    };
    let len = clients
        .seal_control(peer, ack.encode(0).as_bytes(), out)
        .unwrap();
    out[..len].to_vec()
}

fn evict_all(server: &mut KeyServer, n: u32) {
    for i in 0..n {
        server.evict_keys(PeerId(i));
    }
}
