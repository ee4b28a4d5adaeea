//! One `KeyServer` holding 1,000,000 clients (set `PKTCRYPT_CLIENTS` for another count): bytes of
//! state per client, measured with a counting allocator, and rekeys per second on one core, with
//! forward secrecy off and with a hybrid key exchange at every rekey, side by side in one run.
//!
//! A rekey here is the server's whole path for a `KEY_UPDATE_REQUEST` under generation N: open
//! and decode it, mint N+1 (with `pfs = "every-rekey"`: parse the client's ML-KEM-768
//! encapsulation key, encapsulate, X25519 with a fresh ephemeral, the key schedule), install,
//! encode and seal the distribution; then the proof (a `KEY_ACK` under N+1). The clients' side
//! runs between the timed parts, untimed (on a real deployment it runs on the clients).
//!
//! 1. Every client completes the init handshake (protocol version 3) with `pfs = "off"`, then
//!    rotates twice (`PKTCRYPT_STEADY_ROUNDS` more, after idle eviction): the non-PFS rate.
//! 2. `PKTCRYPT_PFS_CLIENTS` clients (default 20,000) rotate with `pfs = "every-rekey"`: the
//!    key-exchange rate.
//! 3. The cost of each primitive alone (X25519, ML-KEM-768 key generation, encapsulation,
//!    decapsulation) on this machine: RustCrypto's, and with the feature `aws-lc` (on by
//!    default, as in the daemon) aws-lc-rs's, which the server's side then runs
//!    (`--no-default-features` for the pure-Rust server side).
//! 4. Bytes per idle client after a hello from each.
//!
//! The heap is mimalloc, as in the `pktcrypt` daemon; `--features system-alloc` measures the
//! system allocator instead. The random generator is the daemon's key server's
//! ([`KeyErasureRandom`]), seeded here.
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use pktcrypt_core::control::client::{INIT_LABEL, exchange_hash};
use pktcrypt_core::control::message::{KeyMaterial, Message, fragments};
use pktcrypt_core::control::{Incoming, KeyErasureRandom, KeyServer, Pfs, Random, ServerConfig};
use pktcrypt_core::kex::{Ephemeral, SERVER_BACKEND, Schedule, respond, transcript};
use pktcrypt_core::{
    Engine, EngineConfig, Generation, GenerationInfo, Opened, PeerId, Role, Secret, Slot, Spi,
    Suite, Time, TxRule,
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

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The clients' side: one engine holding every client's keys (memory: a client engine per
/// client would not fit), one ephemeral key share reused by all (its cost is the clients', not
/// the server's; the server cannot tell), and a counter for the handshake messages' fresh bits.
struct Clients {
    engine: Engine,
    ephemeral: Ephemeral,
    rng: KeyErasureRandom,
    out: Vec<u8>,
    /// Each client's newest secret (the chain of the next exchange).
    newest: Vec<Option<Secret>>,
}

impl Clients {
    /// Seals `msg` from client `i` (fragments if needed) as the client would.
    fn seal(&mut self, i: u32, msg: &Message) -> Vec<Vec<u8>> {
        let encoded = msg.encode(i);
        let mut sealed = Vec::new();
        for part in fragments(&encoded, i) {
            let n = if msg.is_handshake() {
                let mut fresh = [0u8; 12];
                self.rng.fill(&mut fresh);
                self.engine
                    .seal_handshake(PeerId(i), &part, &mut self.out, fresh)
                    .unwrap()
            } else {
                self.engine
                    .seal_control(PeerId(i), &part, &mut self.out)
                    .unwrap()
            };
            sealed.push(self.out[..n].to_vec());
        }
        sealed
    }

    /// Opens one whole (unfragmented) message from the server.
    fn open(&mut self, d: &mut [u8]) -> (PeerId, Message) {
        let Opened::Control { message, info } = self.engine.open(d) else {
            panic!("a control message")
        };
        (info.peer, Message::decode(message).unwrap().0)
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes benches; nothing to list.
    }
    let n = env("PKTCRYPT_CLIENTS", 1_000_000) as u32;
    let pfs_clients = (env("PKTCRYPT_PFS_CLIENTS", 20_000) as u32).min(n);
    let steady = env("PKTCRYPT_STEADY_ROUNDS", 3);
    let mut config = ServerConfig::new();
    config.rekey_interval = None;
    config.reorder_grace = Duration::ZERO;
    config.max_rekeys_per_second = u32::MAX;
    config.idle_evict = None;
    config.pfs = Pfs::Off;
    config.max_handshakes_per_second = u32::MAX;
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

    let mut cc = EngineConfig::new(Role::Client);
    cc.handshake_init = true;
    let mut rng = KeyErasureRandom::from_seed([9; 32]);
    let mut clients = Clients {
        engine: Engine::new(cc).unwrap(),
        ephemeral: Ephemeral::generate(&mut rng),
        rng,
        out: vec![0u8; 1536],
        newest: vec![None; n as usize],
    };
    for i in 0..n {
        clients.engine.add_peer(&init(i), Time::ZERO).unwrap();
    }

    // Round 0: the init handshake of every client (pfs off: the server answers with a secret).
    let now = Time::from_secs(1);
    let (mut server_time, mut proof_time) = (Duration::ZERO, Duration::ZERO);
    let ids: Vec<u32> = (0..n).collect();
    for chunk in ids.chunks(CHUNK) {
        let mut requests = Vec::with_capacity(chunk.len() * 2);
        let mut hashes = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let msg = Message::KeyInitRequest {
                nonce: [i as u8; 32],
                share: clients.ephemeral.share().clone(),
            };
            hashes.push(transcript(INIT_LABEL, &[msg.encode(0).body()]));
            requests.extend(clients.seal(i, &msg));
        }
        let t = Instant::now();
        for pkt in &mut requests {
            let r = server.handle_datagram(now, None, pkt);
            assert!(matches!(r, Incoming::Control { .. }));
        }
        let replies: Vec<Vec<u8>> = std::iter::from_fn(|| server.poll_transmit())
            .map(|t| t.contents)
            .collect();
        server_time += t.elapsed();
        assert_eq!(replies.len(), chunk.len());
        let mut confirms = Vec::with_capacity(chunk.len());
        for (mut d, hash) in replies.into_iter().zip(&hashes) {
            let (peer, msg) = clients.open(&mut d);
            let Message::KeyInitReply { dist, biscuit } = msg else {
                panic!("init reply")
            };
            assert_eq!(dist.echo, *hash);
            let KeyMaterial::Secret(secret) = dist.material else {
                panic!("pfs off: a secret")
            };
            let info = GenerationInfo {
                number: 1,
                spi: Spi::new(dist.spi).unwrap(),
                suite: dist.suite,
            };
            let th = exchange_hash(hash, &dist);
            let secret = Secret::from_bytes(secret);
            let tag = Schedule::confirm(&secret, &th);
            clients.newest[peer.0 as usize] = Some(secret.clone());
            clients
                .engine
                .install(peer, &Generation { info, secret }, Time::ZERO)
                .unwrap();
            clients.engine.set_tx_rule(peer, TxRule::Role).unwrap();
            let confirm = Message::KeyInitConfirm {
                echo: *hash,
                tag,
                biscuit,
            };
            confirms.extend(clients.seal(peer.0, &confirm));
        }
        let t = Instant::now();
        for c in &mut confirms {
            let r = server.handle_datagram(now, None, c);
            assert!(matches!(r, Incoming::Control { .. }), "{r:?}");
        }
        while server.poll_transmit().is_some() {}
        while server.poll_event().is_some() {}
        proof_time += t.elapsed();
    }
    println!(
        "round 1: {n} init handshakes (pfs off): {:.0}/s counting the confirmation; request -> \
         answer alone {:.2} us each; confirmation {:.2} us each",
        n as f64 / (server_time + proof_time).as_secs_f64(),
        server_time.as_secs_f64() * 1e6 / n as f64,
        proof_time.as_secs_f64() * 1e6 / n as f64,
    );

    // Rotations without key exchange.
    let mut newest = 1u64;
    for round in 0..1 + steady {
        if round >= 1 {
            // What the idle timer does between rotations an hour apart.
            evict_all(&mut server, n);
        }
        let (rekey, proof) = rotate(
            &mut server,
            &mut clients,
            &ids,
            newest,
            false,
            Time::from_secs(2 + round),
        );
        newest += 1;
        println!(
            "round {}: {n} rotations (N -> N+1, pfs off{}): {:.0}/s counting the proof packet; \
             request -> distribution alone {:.0}/s ({:.2} us each); proof {:.2} us each",
            round + 2,
            if round >= 1 {
                ", after idle eviction"
            } else {
                ""
            },
            n as f64 / (rekey + proof).as_secs_f64(),
            n as f64 / rekey.as_secs_f64(),
            rekey.as_secs_f64() * 1e6 / n as f64,
            proof.as_secs_f64() * 1e6 / n as f64,
        );
    }

    // Rotations with a hybrid key exchange each, on a sample of the clients (all of them would
    // take minutes: the exchange is the cost being measured).
    server.set_pfs(Pfs::EveryRekey);
    let sample: Vec<u32> = ids[..pfs_clients as usize].to_vec();
    let (rekey, proof) = rotate(
        &mut server,
        &mut clients,
        &sample,
        newest,
        true,
        Time::from_secs(3 + steady),
    );
    println!(
        "round {}: {pfs_clients} of the {n} clients rotate with pfs every-rekey (X25519 + \
         ML-KEM-768 each): {:.0}/s counting the proof packet; request -> distribution alone \
         {:.0}/s ({:.2} us each); proof {:.2} us each",
        steady + 3,
        pfs_clients as f64 / (rekey + proof).as_secs_f64(),
        pfs_clients as f64 / rekey.as_secs_f64(),
        rekey.as_secs_f64() * 1e6 / pfs_clients as f64,
        proof.as_secs_f64() * 1e6 / pfs_clients as f64,
    );
    primitives();

    // An idle client still says hello now and then (every 10 s by default): one from each,
    // answered, before measuring.
    let hello_at = Time::from_secs(4 + steady);
    for i in 0..n {
        let have = clients
            .engine
            .generation(PeerId(i), Slot::Newest)
            .map_or(0, |g| g.number);
        for mut pkt in clients.seal(i, &Message::Hello { have }) {
            let r = server.handle_datagram(hello_at, None, &mut pkt);
            assert!(matches!(r, Incoming::Control { .. }));
        }
        while server.poll_transmit().is_some() {}
    }
    drop(clients);
    let server_bytes = LIVE.load(Ordering::Relaxed) - base;
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

/// One rotation of every client in `ids` from generation `have`, in chunks as a server drains
/// its socket: the requests of a chunk, then their proofs, each timed as a whole. Returns the
/// server's time for the requests and for the proofs.
fn rotate(
    server: &mut KeyServer,
    clients: &mut Clients,
    ids: &[u32],
    have: u64,
    exchange: bool,
    now: Time,
) -> (Duration, Duration) {
    let (mut server_time, mut proof_time) = (Duration::ZERO, Duration::ZERO);
    let share = clients.ephemeral.share().clone();
    for chunk in ids.chunks(CHUNK) {
        let mut requests = Vec::with_capacity(chunk.len() * 2);
        let mut hashes = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let msg = Message::KeyUpdateRequest {
                have,
                share: exchange.then(|| ([i as u8; 32], share.clone())),
            };
            hashes.push(transcript(
                pktcrypt_core::control::client::UPDATE_LABEL,
                &[msg.encode(0).body()],
            ));
            requests.extend(clients.seal(i, &msg));
        }
        let t = Instant::now();
        for pkt in &mut requests {
            let r = server.handle_datagram(now, None, pkt);
            assert!(matches!(r, Incoming::Control { .. }));
        }
        // A rotation's distribution leaves from the reorder-grace timer (zero here).
        server.handle_timeout(now);
        let dists: Vec<Vec<u8>> = std::iter::from_fn(|| server.poll_transmit())
            .map(|t| t.contents)
            .collect();
        server_time += t.elapsed();
        assert_eq!(dists.len(), chunk.len());
        // The clients install what they got and prove it (untimed).
        let mut acks = Vec::with_capacity(chunk.len());
        for (mut d, hash) in dists.into_iter().zip(&hashes) {
            let (peer, msg) = clients.open(&mut d);
            let Message::KeyDistribution(dist) = msg else {
                panic!("distribution")
            };
            let info = GenerationInfo {
                number: dist.generation,
                spi: Spi::new(dist.spi).unwrap(),
                suite: dist.suite,
            };
            let secret = match &dist.material {
                KeyMaterial::Secret(s) => Secret::from_bytes(*s),
                KeyMaterial::Exchange(reply) => {
                    let parent = clients.newest[peer.0 as usize].clone().unwrap();
                    let shared = clients.ephemeral.finish(reply).unwrap();
                    let th = exchange_hash(hash, &dist);
                    Schedule::next_secret(&parent, &shared, &th, info)
                }
                KeyMaterial::Nonce(_) => panic!("not derived mode"),
            };
            clients.newest[peer.0 as usize] = Some(secret.clone());
            clients
                .engine
                .install(peer, &Generation { info, secret }, Time::ZERO)
                .unwrap();
            let ack = Message::KeyAck {
                generation: dist.generation,
            };
            acks.extend(clients.seal(peer.0, &ack));
        }
        let t = Instant::now();
        for ack in &mut acks {
            let _ = server.handle_datagram(now, None, ack);
        }
        while server.poll_event().is_some() {}
        proof_time += t.elapsed();
    }
    (server_time, proof_time)
}

/// The cost of each primitive of the exchange alone, best of 5 runs of 500.
fn primitives() {
    let mut rng = KeyErasureRandom::from_seed([3; 32]);
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..500 {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e6 / 500.0
            })
            .fold(f64::MAX, f64::min)
    };
    let eph = Ephemeral::generate(&mut rng);
    let keygen = best(&mut || {
        std::hint::black_box(Ephemeral::generate(&mut rng));
    });
    let mut rng2 = KeyErasureRandom::from_seed([4; 32]);
    let respond_us = best(&mut || {
        std::hint::black_box(respond(eph.share(), &mut rng2).unwrap());
    });
    let (reply, _) = respond(eph.share(), &mut rng2).unwrap();
    let finish = best(&mut || {
        std::hint::black_box(eph.finish(&reply).unwrap());
    });
    let (dh, mlkem_keygen, encaps, decaps) = components();
    println!(
        "primitives (one core, best of 5 x 500): client key share (ML-KEM-768 keygen + X25519 \
         keygen) {keygen:.1} us; server side on {SERVER_BACKEND} (parse ek + encapsulate + \
         X25519 keygen and DH) {respond_us:.1} us; client side (decapsulate + X25519 DH) \
         {finish:.1} us; alone, RustCrypto: X25519 DH {dh:.1} us, ML-KEM-768 keygen \
         {mlkem_keygen:.1} us, encapsulate (with parsing the key) {encaps:.1} us, decapsulate \
         {decaps:.1} us"
    );
    #[cfg(feature = "aws-lc")]
    aws_lc_components();
}

/// aws-lc-rs's primitives of the server side alone, best of 5 x 500.
#[cfg(feature = "aws-lc")]
fn aws_lc_components() {
    use aws_lc_rs::{agreement, kem, rand::SystemRandom};
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..500 {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e6 / 500.0
            })
            .fold(f64::MAX, f64::min)
    };
    let share = Ephemeral::generate(&mut KeyErasureRandom::from_seed([5; 32]))
        .share()
        .clone();
    let (ek, peer) = share.0.split_at(pktcrypt_core::kex::MLKEM_EK_LEN);
    let encaps = best(&mut || {
        let ek = kem::EncapsulationKey::new(&kem::ML_KEM_768, ek).unwrap();
        std::hint::black_box(ek.encapsulate().unwrap());
    });
    let rng = SystemRandom::new();
    let keygen = best(&mut || {
        let sk = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
        std::hint::black_box(sk.compute_public_key().unwrap());
    });
    let sk = agreement::PrivateKey::generate(&agreement::X25519).unwrap();
    let dh = best(&mut || {
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, peer);
        agreement::agree(&sk, peer, (), |s| {
            std::hint::black_box(s);
            Ok(())
        })
        .unwrap();
    });
    println!(
        "alone, aws-lc-rs: encapsulate (with parsing the key) {encaps:.1} us, X25519 ephemeral \
         key (generate and public key) {keygen:.1} us, X25519 DH (with parsing the peer's key) \
         {dh:.1} us"
    );
}

/// One X25519 Diffie-Hellman (RFC 7748) and each ML-KEM-768 operation alone, best of 5 x 500.
fn components() -> (f64, f64, f64, f64) {
    use ml_kem::{Decapsulate, KeyExport};
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..500 {
                    f();
                }
                t.elapsed().as_secs_f64() * 1e6 / 500.0
            })
            .fold(f64::MAX, f64::min)
    };
    let a = x25519_dalek::StaticSecret::from([2u8; 32]);
    let b = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([3u8; 32]));
    let dh = best(&mut || {
        std::hint::black_box(a.diffie_hellman(&b));
    });
    let keygen = best(&mut || {
        std::hint::black_box(ml_kem::DecapsulationKey::<ml_kem::MlKem768>::from_seed(
            [5u8; 64].into(),
        ));
    });
    let dk = ml_kem::DecapsulationKey::<ml_kem::MlKem768>::from_seed([5u8; 64].into());
    let ek_bytes = dk.encapsulation_key().to_bytes();
    let encaps = best(&mut || {
        let ek = ml_kem::EncapsulationKey::<ml_kem::MlKem768>::new(&ek_bytes).unwrap();
        std::hint::black_box(ek.encapsulate_deterministic(&[6u8; 32].into()));
    });
    let (ct, _) = dk
        .encapsulation_key()
        .encapsulate_deterministic(&[6u8; 32].into());
    let decaps = best(&mut || {
        std::hint::black_box(dk.decapsulate(&ct));
    });
    (dh, keygen, encaps, decaps)
}

fn evict_all(server: &mut KeyServer, n: u32) {
    for i in 0..n {
        server.evict_keys(PeerId(i));
    }
}
