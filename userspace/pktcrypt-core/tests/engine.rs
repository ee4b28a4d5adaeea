//! Engine behaviour: role rules across generations, round trips, anti-replay, malformed input.

use pktcrypt_core::aead::Backend;
use pktcrypt_core::wire::esp::{self, ESP_HEADER_LEN, NextHeader};
use pktcrypt_core::{
    DropReason, Engine, EngineConfig, Generation, GenerationInfo, Installed, OpenOutcome, Opened,
    Packet, PeerId, Role, SealError, Secret, Slot, Spi, Suite, Time,
};
use proptest::prelude::*;

fn generation(number: u64, spi: u32, suite: Suite) -> Generation {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&number.to_be_bytes());
    bytes[8..12].copy_from_slice(&spi.to_be_bytes());
    bytes[31] = 0xa5;
    Generation {
        info: GenerationInfo {
            number,
            spi: Spi::new(spi).expect("test SPI"),
            suite,
        },
        secret: Secret::from_bytes(bytes),
    }
}

struct Pair {
    server: Engine,
    client: Engine,
    s_peer: PeerId,
    c_peer: PeerId,
}

fn pair_with(backend: Backend, suite: Suite, window: u32) -> Pair {
    let mut sc = EngineConfig::new(Role::KeyServer);
    sc.backend = backend;
    sc.replay_window = window;
    let mut cc = EngineConfig::new(Role::Client);
    cc.backend = backend;
    cc.replay_window = window;
    let mut server = Engine::new(sc).expect("server config");
    let mut client = Engine::new(cc).expect("client config");
    let init = generation(0, 0x1000, suite);
    let s_peer = server.add_peer(&init, Time::ZERO).expect("server peer");
    let c_peer = client.add_peer(&init, Time::ZERO).expect("client peer");
    Pair {
        server,
        client,
        s_peer,
        c_peer,
    }
}

fn pair(suite: Suite) -> Pair {
    pair_with(Backend::default(), suite, 1024)
}

/// A minimal IPv4 packet of `len` bytes (len ≥ 20), payload filled with `fill`.
fn ipv4(len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; len.max(20)];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

fn seal(engine: &mut Engine, peer: PeerId, inner: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut buf = vec![0u8; ESP_HEADER_LEN + inner.len() + esp::MAX_OVERHEAD];
    buf[ESP_HEADER_LEN..ESP_HEADER_LEN + inner.len()].copy_from_slice(inner);
    let next = NextHeader::for_ip_packet(inner).unwrap_or(NextHeader::Control);
    let n = engine.seal(peer, &mut buf, inner.len(), next)?;
    buf.truncate(n);
    Ok(buf)
}

/// Opens and returns (generation, inner) or the drop reason.
fn open(engine: &mut Engine, packet: &[u8]) -> Result<(u64, Vec<u8>), DropReason> {
    let mut buf = packet.to_vec();
    match engine.open(&mut buf) {
        Opened::Data { packet, info, .. } => Ok((info.generation, packet.to_vec())),
        Opened::Control { message, info } => Ok((info.generation, message.to_vec())),
        Opened::Drop(r) => Err(r),
    }
}

fn tx_gen(engine: &Engine, peer: PeerId) -> u64 {
    engine.tx_generation(peer).expect("peer").number
}

#[test]
fn role_rules_through_many_generations() {
    for suite in Suite::ALL {
        let mut p = pair(suite);
        let pkt = ipv4(100, 7);
        // Only the init key: both transmit with it.
        assert_eq!(tx_gen(&p.server, p.s_peer), 0);
        assert_eq!(tx_gen(&p.client, p.c_peer), 0);
        for n in 1..=6u64 {
            let g = generation(n, 0x2000 + n as u32, suite);
            // The server creates N first: it keeps transmitting one generation behind.
            p.server
                .install(p.s_peer, &g, Time::from_secs(n))
                .expect("server install");
            let behind = if n == 1 { 0 } else { n - 1 };
            assert_eq!(
                tx_gen(&p.server, p.s_peer),
                behind,
                "server transmits with N-1"
            );
            // The client has not got N yet: traffic both ways still opens (hitless).
            let s2c = seal(&mut p.server, p.s_peer, &pkt).expect("seal");
            assert_eq!(open(&mut p.client, &s2c), Ok((behind, pkt.clone())));
            let c2s = seal(&mut p.client, p.c_peer, &pkt).expect("seal");
            assert_eq!(open(&mut p.server, &c2s).map(|(g, _)| g), Ok(behind));
            // The client receives N: it transmits with N at once; the server opens it.
            assert!(matches!(
                p.client.install(p.c_peer, &g, Time::from_secs(n)),
                Ok(Installed::Rotated { .. })
            ));
            assert_eq!(tx_gen(&p.client, p.c_peer), n, "client transmits with N");
            let c2s = seal(&mut p.client, p.c_peer, &pkt).expect("seal");
            let (g_used, inner) = open(&mut p.server, &c2s).expect("server opens N");
            assert_eq!((g_used, inner), (n, pkt.clone()));
            // The server's traffic (N-1) still opens at the client, which kept N-1.
            let s2c = seal(&mut p.server, p.s_peer, &pkt).expect("seal");
            assert_eq!(open(&mut p.client, &s2c).map(|(g, _)| g), Ok(behind));
            // Never more than two dynamic generations, plus the init key.
            for e in [(&p.server, p.s_peer), (&p.client, p.c_peer)] {
                let st = e.0.peer_status(e.1).expect("status");
                assert!(st.sas.len() <= 3);
                assert_eq!(st.slot(Slot::Init).map(|s| s.info.number), Some(0));
                assert_eq!(st.slot(Slot::Newest).map(|s| s.info.number), Some(n));
                if n > 1 {
                    assert_eq!(st.slot(Slot::Previous).map(|s| s.info.number), Some(n - 1));
                }
            }
        }
        // After generation 6: N-2 (=4) is gone at both sides.
        let old = generation(4, 0x2004, suite);
        assert_eq!(p.server.lookup_spi(old.info.spi.get()), None);
    }
}

#[test]
fn install_rules() {
    let mut p = pair(Suite::Aes256Gcm);
    let g1 = generation(1, 0x3001, Suite::Aes256Gcm);
    let g2 = generation(2, 0x3002, Suite::Aes256Gcm);
    let g3 = generation(3, 0x3003, Suite::Aes256Gcm);
    let t = Time::ZERO;
    assert!(p.client.install(p.c_peer, &g1, t).is_ok());
    // Idempotent resend.
    assert_eq!(
        p.client.install(p.c_peer, &g1, t),
        Ok(Installed::AlreadyHeld)
    );
    // Two ahead is refused: the sides never drift two generations apart.
    assert_eq!(
        p.client.install(p.c_peer, &g3, t),
        Err(pktcrypt_core::Error::GenerationGap)
    );
    assert!(p.client.install(p.c_peer, &g2, t).is_ok());
    assert_eq!(
        p.client.install(p.c_peer, &g1, t),
        Ok(Installed::AlreadyHeld)
    );
    assert!(p.client.install(p.c_peer, &g3, t).is_ok());
    // g1 is now forgotten: installing it again is stale.
    assert_eq!(
        p.client.install(p.c_peer, &g1, t),
        Err(pktcrypt_core::Error::StaleGeneration)
    );
    // Same number, other secret: conflict.
    let mut evil = g3.clone();
    evil.secret = Secret::from_bytes([9; 32]);
    assert_eq!(
        p.client.install(p.c_peer, &evil, t),
        Err(pktcrypt_core::Error::ConflictingGeneration)
    );
    // Generation 0 only as init key; SPI collisions refused.
    assert_eq!(
        p.client
            .install(p.c_peer, &generation(0, 0x3100, Suite::Aes256Gcm), t),
        Err(pktcrypt_core::Error::GenerationNumber)
    );
    assert_eq!(
        p.client
            .install(p.c_peer, &generation(4, 0x1000, Suite::Aes256Gcm), t),
        Err(pktcrypt_core::Error::DuplicateSpi)
    );
    // Reset to init keeps the init key only; then any generation may start again.
    let dropped = p.client.reset_to_init(p.c_peer).expect("reset");
    assert_eq!(dropped.len(), 2);
    assert_eq!(tx_gen(&p.client, p.c_peer), 0);
    assert!(
        p.client
            .install(p.c_peer, &generation(1, 0x4001, Suite::Aes256Gcm), t)
            .is_ok()
    );
    assert_eq!(Spi::new(255), Err(pktcrypt_core::Error::ReservedSpi));
}

/// Cipher agility (spec §7): a rekey switches suite without interrupting traffic.
/// Status bookkeeping: a dropped generation's final counters are kept (when asked) so that a
/// driver's per-peer counters lose nothing at a rekey; nothing is kept otherwise.
#[test]
fn retired_generations_leave_their_counters() {
    let mut p = pair(Suite::Aes256Gcm);
    p.server.keep_retired_counters();
    for n in 1..=2 {
        let g = generation(n, 0x2000 + n as u32, Suite::Aes256Gcm);
        p.server.install(p.s_peer, &g, Time::ZERO).expect("server");
        p.client.install(p.c_peer, &g, Time::ZERO).expect("client");
    }
    // The server transmits under generation 1 (N-1): three packets, the client opens them.
    for i in 0..3 {
        let packet = seal(&mut p.server, p.s_peer, &ipv4(60, i)).expect("seal");
        assert_eq!(open(&mut p.client, &packet).map(|(g, _)| g), Ok(1));
    }
    assert!(p.server.take_retired_counters().is_empty());
    let g3 = generation(3, 0x2003, Suite::Aes256Gcm);
    p.server
        .install(p.s_peer, &g3, Time::ZERO)
        .expect("install 3");
    let retired = p.server.take_retired_counters();
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert_eq!((retired[0].peer, retired[0].info.number), (p.s_peer, 1));
    assert_eq!(retired[0].counters.packets_sealed, 3);
    assert!(p.server.take_retired_counters().is_empty(), "taken once");
    p.server.reset_to_init(p.s_peer).expect("reset");
    let numbers: Vec<u64> = p
        .server
        .take_retired_counters()
        .iter()
        .map(|r| r.info.number)
        .collect();
    assert_eq!(numbers.len(), 2);
    assert!(numbers.contains(&2) && numbers.contains(&3));
    p.server.remove_peer(p.s_peer).expect("remove");
    assert_eq!(p.server.take_retired_counters().len(), 1, "the init key");
    // Not asked: nothing kept.
    p.client
        .install(p.c_peer, &g3, Time::ZERO)
        .expect("install 3");
    assert!(p.client.take_retired_counters().is_empty());
}

#[test]
fn suite_switch_at_rekey() {
    let mut p = pair(Suite::Aes128Gcm);
    let pkt = ipv4(300, 1);
    let g1 = generation(1, 0x5001, Suite::ChaCha20Poly1305);
    let g2 = generation(2, 0x5002, Suite::Aes256Gcm);
    for g in [&g1, &g2] {
        p.server.install(p.s_peer, g, Time::ZERO).expect("install");
        let s2c = seal(&mut p.server, p.s_peer, &pkt).expect("seal");
        assert!(open(&mut p.client, &s2c).is_ok());
        p.client.install(p.c_peer, g, Time::ZERO).expect("install");
        let c2s = seal(&mut p.client, p.c_peer, &pkt).expect("seal");
        assert_eq!(open(&mut p.server, &c2s).map(|(n, _)| n), Ok(g.info.number));
    }
}

#[test]
fn control_messages_are_told_apart() {
    let mut p = pair(Suite::ChaCha20Poly1305);
    let mut out = vec![0u8; 128];
    let n = p
        .client
        .seal_control(p.c_peer, b"hello control plane", &mut out)
        .expect("seal control");
    let mut buf = out[..n].to_vec();
    match p.server.open(&mut buf) {
        Opened::Control { message, info } => {
            assert_eq!(message, b"hello control plane");
            assert_eq!(info.peer, p.s_peer);
            assert_eq!(info.slot, Slot::Init);
        }
        other => panic!("expected a control message, got {other:?}"),
    }
}

#[test]
fn sequence_exhaustion_forces_rekey() {
    let mut cc = EngineConfig::new(Role::Client);
    cc.seq_limit = Some(3);
    let mut client = Engine::new(cc).expect("config");
    let peer = client
        .add_peer(&generation(0, 0x1000, Suite::Aes128Gcm), Time::ZERO)
        .expect("peer");
    let pkt = ipv4(40, 0);
    for _ in 0..3 {
        seal(&mut client, peer, &pkt).expect("within limit");
    }
    assert_eq!(
        seal(&mut client, peer, &pkt),
        Err(SealError::SequenceExhausted)
    );
    assert_eq!(
        seal(&mut client, peer, &pkt),
        Err(SealError::SequenceExhausted)
    );
    // A new generation brings a fresh sequence space.
    client
        .install(peer, &generation(1, 0x1001, Suite::Aes128Gcm), Time::ZERO)
        .expect("install");
    assert!(seal(&mut client, peer, &pkt).is_ok());
}

#[test]
fn seal_errors() {
    let mut p = pair(Suite::Aes128Gcm);
    let mut small = vec![0u8; 40];
    small[ESP_HEADER_LEN] = 0x45;
    assert_eq!(
        p.client.seal(p.c_peer, &mut small, 20, NextHeader::Ipv4),
        Err(SealError::BufferTooSmall)
    );
    assert_eq!(
        p.client.seal(PeerId(99), &mut small, 4, NextHeader::Ipv4),
        Err(SealError::UnknownPeer)
    );
    let mut not_ip = vec![0u8; 100];
    let mut batch = [Packet::new(&mut not_ip, 20)];
    p.client.seal_batch(p.c_peer, &mut batch);
    assert_eq!(batch[0].sealed(), Err(SealError::BadInnerPacket));
}

#[test]
fn malformed_packets_are_dropped_with_reasons() {
    let mut p = pair(Suite::Aes256Gcm);
    let good = seal(&mut p.client, p.c_peer, &ipv4(64, 3)).expect("seal");
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Truncated),
        (good[..10].to_vec(), DropReason::Truncated),
        (good[..esp::MIN_ESP_LEN - 1].to_vec(), DropReason::Truncated),
        (
            {
                let mut g = good.clone();
                g[0..4].copy_from_slice(&200u32.to_be_bytes());
                g
            },
            DropReason::ReservedSpi,
        ),
        (
            {
                let mut g = good.clone();
                g[0..4].copy_from_slice(&0xdead_beefu32.to_be_bytes());
                g
            },
            DropReason::UnknownSpi,
        ),
        (
            {
                let mut g = good.clone();
                let n = g.len();
                g[n - 1] ^= 1;
                g
            },
            DropReason::AuthFailed,
        ),
        (good[..good.len() - 1].to_vec(), DropReason::AuthFailed),
        (vec![0xffu8; 70_000], DropReason::Oversized),
    ];
    for (packet, reason) in cases {
        assert_eq!(
            open(&mut p.server, &packet).map(|_| ()),
            Err(reason),
            "{reason}"
        );
    }
    // Garbage of every length up to 200 never panics and is always dropped.
    for len in 0..200usize {
        let junk: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        assert!(open(&mut p.server, &junk).is_err());
    }
    // The good packet still opens afterwards: nothing else was affected.
    assert!(open(&mut p.server, &good).is_ok());
    assert!(p.server.drops().get(DropReason::AuthFailed) >= 2);
    assert!(p.server.drops().get(DropReason::UnknownSpi) >= 1);
    assert!(p.server.drops().get(DropReason::Truncated) >= 3);
}

/// A packet whose trailer names an unsupported next header, or whose inner packet does not
/// match its next header, authenticates but is dropped by name.
#[test]
fn wrong_next_header_and_inner_mismatch() {
    let mut p = pair(Suite::Aes128Gcm);
    // Next header says IPv4, content is IPv6.
    let mut v6 = vec![0u8; 60];
    v6[0] = 0x60;
    let mut buf = vec![0u8; 200];
    buf[ESP_HEADER_LEN..ESP_HEADER_LEN + 60].copy_from_slice(&v6);
    let n = p
        .client
        .seal(p.c_peer, &mut buf, 60, NextHeader::Ipv4)
        .expect("seal");
    assert_eq!(
        open(&mut p.server, &buf[..n]).map(|_| ()),
        Err(DropReason::BadInnerPacket)
    );
}

#[test]
fn replay_and_window_edges() {
    let mut p = pair_with(Backend::RustCrypto, Suite::Aes128Gcm, 64);
    let pkt = ipv4(50, 9);
    let sealed: Vec<Vec<u8>> = (0..200)
        .map(|_| seal(&mut p.client, p.c_peer, &pkt).expect("seal"))
        .collect();
    // Out of order within the window is fine; duplicates are not.
    assert!(open(&mut p.server, &sealed[10]).is_ok());
    assert!(open(&mut p.server, &sealed[5]).is_ok());
    assert_eq!(
        open(&mut p.server, &sealed[5]).map(|_| ()),
        Err(DropReason::Replay)
    );
    assert_eq!(
        open(&mut p.server, &sealed[10]).map(|_| ()),
        Err(DropReason::Replay)
    );
    // Jump ahead: top = seq 100 (index 99). Window 64 covers seqs 37..=100.
    assert!(open(&mut p.server, &sealed[99]).is_ok());
    assert!(
        open(&mut p.server, &sealed[36]).is_ok(),
        "seq 37: the oldest in the window"
    );
    assert_eq!(
        open(&mut p.server, &sealed[35]).map(|_| ()),
        Err(DropReason::TooOld),
        "seq 36"
    );
    assert_eq!(
        open(&mut p.server, &sealed[36]).map(|_| ()),
        Err(DropReason::Replay)
    );
    // A forged packet with a far-future sequence number does not move the window.
    let mut forged = sealed[199].clone();
    let n = forged.len();
    forged[n - 3] ^= 0x10;
    assert_eq!(
        open(&mut p.server, &forged).map(|_| ()),
        Err(DropReason::AuthFailed)
    );
    assert!(
        open(&mut p.server, &sealed[60]).is_ok(),
        "window unchanged by the forgery"
    );
    let st = p.server.peer_status(p.s_peer).expect("status");
    let init = st.slot(Slot::Init).expect("init");
    assert_eq!(init.counters.auth_failures, 1);
    assert_eq!(init.counters.replays, 4, "3 duplicates and 1 too old");
}

#[test]
fn batches_match_single_packets() {
    for backend in Backend::all() {
        for suite in Suite::ALL {
            let mut p = pair_with(*backend, suite, 1024);
            let sizes = [20usize, 64, 100, 256, 1000, 1420, 20, 64, 9000, 33];
            let mut bufs: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| {
                    let mut b = vec![0u8; ESP_HEADER_LEN + s + esp::MAX_OVERHEAD];
                    b[ESP_HEADER_LEN..ESP_HEADER_LEN + s].copy_from_slice(&ipv4(s, i as u8));
                    b
                })
                .collect();
            let mut packets: Vec<Packet<'_>> = bufs
                .iter_mut()
                .zip(sizes)
                .map(|(b, s)| Packet::new(b, s))
                .collect();
            p.client.seal_batch(p.c_peer, &mut packets);
            let lens: Vec<usize> = packets
                .iter()
                .map(|p| p.sealed().expect("sealed"))
                .collect();
            drop(packets);
            // Single-packet open of batch-sealed packets.
            for ((b, len), (i, s)) in bufs.iter().zip(&lens).zip(sizes.iter().enumerate()) {
                let (_, inner) = open(&mut p.server, &b[..*len]).expect("opens");
                assert_eq!(inner, ipv4(*s, i as u8));
            }
            // Batch open of single-sealed packets, with a forgery and a replay mixed in.
            let mut singles: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| seal(&mut p.client, p.c_peer, &ipv4(s, i as u8)).expect("seal"))
                .collect();
            singles[3][20] ^= 4;
            singles.push(singles[0].clone());
            let lens: Vec<usize> = singles.iter().map(Vec::len).collect();
            let mut packets: Vec<Packet<'_>> = singles
                .iter_mut()
                .zip(&lens)
                .map(|(b, l)| Packet::new(b, *l))
                .collect();
            p.server.open_batch(&mut packets);
            for (i, pk) in packets.iter().enumerate() {
                match (i, pk.opened()) {
                    (3, o) => assert_eq!(o, OpenOutcome::Drop(DropReason::AuthFailed)),
                    (10, o) => assert_eq!(o, OpenOutcome::Drop(DropReason::Replay)),
                    (i, OpenOutcome::Data { len, .. }) => {
                        assert_eq!(
                            &pk.buf()[ESP_HEADER_LEN..ESP_HEADER_LEN + len],
                            &ipv4(sizes[i], i as u8)[..]
                        );
                    }
                    (i, o) => panic!("packet {i}: {o:?}"),
                }
            }
        }
    }
}

#[test]
fn debug_output_never_shows_keys() {
    let g = generation(1, 0x7001, Suite::Aes256Gcm);
    let dbg = format!("{g:?}");
    assert!(dbg.contains("redacted"));
    assert!(!dbg.contains("a5"), "{dbg}");
    let p = pair(Suite::Aes256Gcm);
    for sa in p.server.export_sas(p.s_peer) {
        let dbg = format!("{sa:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains(&hex::encode(&sa.keymat[..4])));
    }
    assert!(!format!("{:?}", p.server).contains("keymat"));
}

fn suite_strategy() -> impl Strategy<Value = Suite> {
    prop_oneof![
        Just(Suite::Aes128Gcm),
        Just(Suite::Aes256Gcm),
        Just(Suite::ChaCha20Poly1305)
    ]
}

fn backend_strategy() -> impl Strategy<Value = Backend> {
    proptest::sample::select(Backend::all().to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// seal → open returns the same inner packet, for every suite, backend and size 0..9000.
    #[test]
    fn round_trip(suite in suite_strategy(), backend in backend_strategy(),
                  len in 0usize..9000, fill in any::<u8>(), control in any::<bool>()) {
        let mut p = pair_with(backend, suite, 1024);
        let inner = if control || len < 20 { vec![fill; len] } else { ipv4(len, fill) };
        let mut buf = vec![0u8; ESP_HEADER_LEN + len + esp::MAX_OVERHEAD];
        buf[ESP_HEADER_LEN..ESP_HEADER_LEN + len].copy_from_slice(&inner);
        let next = if control || len < 20 { NextHeader::Control } else { NextHeader::Ipv4 };
        let n = p.client.seal(p.c_peer, &mut buf, len, next).expect("seal");
        prop_assert_eq!(n, esp::esp_len(len));
        prop_assert_eq!(n % 4, 0, "ESP packets end on a 4-byte boundary");
        let (_, out) = open(&mut p.server, &buf[..n]).expect("opens");
        prop_assert_eq!(out, inner);
    }

    /// Any single bit flip anywhere in the ESP packet makes it drop; it never opens.
    #[test]
    fn any_bit_flip_is_rejected(suite in suite_strategy(), len in 20usize..600,
                                bit in any::<proptest::sample::Index>()) {
        let mut p = pair(suite);
        let sealed = seal(&mut p.client, p.c_peer, &ipv4(len, 0x33)).expect("seal");
        let mut forged = sealed.clone();
        let i = bit.index(forged.len() * 8);
        forged[i / 8] ^= 1 << (i % 8);
        let r = open(&mut p.server, &forged);
        prop_assert!(r.is_err(), "flipped bit {} opened", i);
        // The genuine packet is unaffected.
        prop_assert!(open(&mut p.server, &sealed).is_ok());
    }

    /// Opening a random permutation with duplicates: each sequence number opens at most once,
    /// and everything within the window opens exactly once.
    #[test]
    fn replays_never_open(order in proptest::collection::vec(0usize..300, 1..600)) {
        let mut p = pair_with(Backend::RustCrypto, Suite::Aes128Gcm, 1024);
        let sealed: Vec<Vec<u8>> = (0..300)
            .map(|i| seal(&mut p.client, p.c_peer, &ipv4(40, i as u8)).expect("seal"))
            .collect();
        let mut opened = vec![false; 300];
        for i in order {
            match open(&mut p.server, &sealed[i]) {
                Ok(_) => {
                    prop_assert!(!opened[i], "packet {} opened twice", i);
                    opened[i] = true;
                }
                Err(r) => prop_assert!(opened[i] && r == DropReason::Replay, "{} dropped: {:?}", i, r),
            }
        }
    }

    /// ESN inference across the 2^32 boundary: a window straddling it accepts both sides.
    #[test]
    fn esn_window_straddles_wrap(back in 1u64..1000, fwd in 1u64..1000) {
        let w = pktcrypt_core::replay::ReplayWindow::new(1024).expect("window");
        let top = (1u64 << 32) + 500;
        w.update(top).expect("update");
        let low = top - back.min(1023);
        prop_assert_eq!(w.infer_esn(low as u32), Some(low));
        let high = top + fwd;
        prop_assert_eq!(w.infer_esn(high as u32), Some(high));
    }
}

/// Evicting an idle peer's keys keeps sequence numbers (no nonce reuse) and replay protection.
#[test]
fn eviction_keeps_sequence_and_replay_state() {
    let mut p = pair(Suite::Aes256Gcm);
    let pkt = ipv4(80, 5);
    let first: Vec<Vec<u8>> = (0..5)
        .map(|_| seal(&mut p.client, p.c_peer, &pkt).expect("seal"))
        .collect();
    for f in &first[..4] {
        assert!(open(&mut p.server, f).is_ok());
    }
    p.server.evict_keys(p.s_peer);
    p.client.evict_keys(p.c_peer);
    // Old packets are refused after eviction, including one never seen (it is below the top).
    assert_eq!(
        open(&mut p.server, &first[1]).map(|_| ()),
        Err(DropReason::Replay)
    );
    assert_eq!(
        open(&mut p.server, &first[2]).map(|_| ()),
        Err(DropReason::Replay)
    );
    // New packets continue the sequence and open (keys re-derived).
    let next = seal(&mut p.client, p.c_peer, &pkt).expect("seal");
    assert_eq!(
        &next[8..16],
        &6u64.to_be_bytes(),
        "sequence continues after eviction"
    );
    assert!(open(&mut p.server, &next).is_ok());
    let st = p.server.peer_status(p.s_peer).expect("status");
    assert_eq!(st.slot(Slot::Init).map(|s| s.highest_received), Some(6));
}

#[test]
fn counters_survive_eviction_and_count_sequence_numbers_used() {
    let mut p = pair(Suite::Aes128Gcm);
    // A client whose init key starts at a boot-derived base: sealed counts from there.
    let mut cc = EngineConfig::new(Role::Client);
    cc.init_seq_base = 1 << 40;
    p.client = Engine::new(cc).expect("client config");
    p.c_peer = p
        .client
        .add_peer(&generation(0, 0x1000, Suite::Aes128Gcm), Time::ZERO)
        .expect("peer");
    let pkt = ipv4(100, 1);
    let sealed: Vec<Vec<u8>> = (0..7)
        .map(|_| seal(&mut p.client, p.c_peer, &pkt).expect("seal"))
        .collect();
    for s in &sealed[..5] {
        assert!(open(&mut p.server, s).is_ok());
    }
    let _ = open(&mut p.server, &sealed[0]); // a replay
    let mut forged = sealed[5].clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let _ = open(&mut p.server, &forged);
    let counters = |e: &Engine, peer| {
        let st = e.peer_status(peer).expect("status");
        st.slot(Slot::Init).expect("init").counters
    };
    for evict in [false, true] {
        if evict {
            p.server.evict_keys(p.s_peer);
            p.client.evict_keys(p.c_peer);
        }
        let c = counters(&p.client, p.c_peer);
        assert_eq!(
            (c.packets_sealed, c.bytes_sealed),
            (7, 700),
            "evicted: {evict}"
        );
        let s = counters(&p.server, p.s_peer);
        assert_eq!(
            (s.packets_opened, s.bytes_opened, s.replays, s.auth_failures),
            (5, 500, 1, 1),
            "evicted: {evict}"
        );
    }
}

#[test]
fn control_only_sas_use_a_64_packet_window_until_data_flows() {
    let mut p = pair(Suite::Aes256Gcm);
    let mut out = vec![0u8; 128];
    let control: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            let n = p
                .client
                .seal_control(p.c_peer, &[i as u8; 16], &mut out)
                .expect("seal control");
            out[..n].to_vec()
        })
        .collect();
    assert!(open(&mut p.server, &control[99]).is_ok());
    // Control messages only: 64 packets of history.
    assert_eq!(
        open(&mut p.server, &control[0]).map(|_| ()),
        Err(DropReason::TooOld)
    );
    assert!(open(&mut p.server, &control[50]).is_ok());
    assert_eq!(
        open(&mut p.server, &control[50]).map(|_| ()),
        Err(DropReason::Replay)
    );
    // Data moves the SA to the configured window (1024), keeping what was recorded.
    let data: Vec<Vec<u8>> = (0..300)
        .map(|_| seal(&mut p.client, p.c_peer, &ipv4(60, 9)).expect("seal"))
        .collect();
    assert!(open(&mut p.server, &data[299]).is_ok());
    assert!(
        open(&mut p.server, &data[10]).is_ok(),
        "289 behind, in the window"
    );
    assert_eq!(
        open(&mut p.server, &data[10]).map(|_| ()),
        Err(DropReason::Replay)
    );
    assert_eq!(
        open(&mut p.server, &control[50]).map(|_| ()),
        Err(DropReason::Replay)
    );
    assert_eq!(
        open(&mut p.server, &control[99]).map(|_| ()),
        Err(DropReason::Replay)
    );
    assert!(
        open(&mut p.server, &control[98]).is_ok(),
        "never seen, in the window"
    );
}

#[test]
fn receive_only_generation_seals_nothing_but_opens() {
    let mut p = pair(Suite::Aes256Gcm);
    let g1 = generation(1, 0x2000, Suite::Aes256Gcm);
    p.server.install(p.s_peer, &g1, Time::ZERO).expect("server");
    p.client.install(p.c_peer, &g1, Time::ZERO).expect("client");
    p.client.set_receive_only(p.c_peer, Slot::Newest, true);
    assert!(p.client.receive_only(p.c_peer, Slot::Newest));
    assert_eq!(
        seal(&mut p.client, p.c_peer, &ipv4(60, 1)),
        Err(SealError::NoKey)
    );
    // Data-plane workers get no transmit key for it either.
    let plane = p.client.data_plane().expect("plane");
    let mut buf = vec![0u8; ESP_HEADER_LEN + 60 + esp::MAX_OVERHEAD];
    buf[ESP_HEADER_LEN..ESP_HEADER_LEN + 60].copy_from_slice(&ipv4(60, 1));
    let mut packets = [Packet::new(&mut buf, 60)];
    plane.seal_batch(p.c_peer, &mut packets);
    assert_eq!(packets[0].sealed(), Err(SealError::NoKey));
    // The other side's packets under it still open.
    p.server
        .set_tx_rule(p.s_peer, pktcrypt_core::TxRule::Newest)
        .expect("rule");
    let sealed = seal(&mut p.server, p.s_peer, &ipv4(60, 2)).expect("server seals");
    assert_eq!(open(&mut p.client, &sealed).map(|(g, _)| g), Ok(1));
}

#[test]
fn install_previous_keeps_the_newest_sequence_numbers() {
    let mut p = pair(Suite::Aes256Gcm);
    let g1 = generation(1, 0x2000, Suite::Aes256Gcm);
    let g2 = generation(2, 0x2001, Suite::Aes256Gcm);
    p.client
        .install(p.c_peer, &g2, Time::ZERO)
        .expect("fresh start with 2");
    let first = seal(&mut p.client, p.c_peer, &ipv4(60, 1)).expect("seal under 2");
    // 3 is not 2's predecessor; 1 is; it goes into the previous slot.
    assert!(
        p.client
            .install_previous(
                p.c_peer,
                &generation(3, 0x2002, Suite::Aes256Gcm),
                Time::ZERO
            )
            .is_err()
    );
    p.client
        .install_previous(p.c_peer, &g1, Time::ZERO)
        .expect("previous");
    p.client
        .install_previous(p.c_peer, &g1, Time::ZERO)
        .expect("idempotent");
    assert_eq!(
        p.client
            .generation(p.c_peer, Slot::Previous)
            .map(|g| g.number),
        Some(1)
    );
    let second = seal(&mut p.client, p.c_peer, &ipv4(60, 1)).expect("still under 2");
    assert_eq!(&first[..4], &second[..4], "same SPI");
    assert_ne!(&first[4..16], &second[4..16], "sequence and IV moved on");
    // With a previous generation held, nothing more goes in.
    assert!(
        p.client
            .install_previous(
                p.c_peer,
                &generation(1, 0x2003, Suite::Aes256Gcm),
                Time::ZERO
            )
            .is_err()
    );
}

#[test]
fn previous_generation_retired_on_evidence_only() {
    use core::time::Duration;
    let grace = Duration::from_secs(2);
    let s = Time::from_secs;
    let mut p = pair(Suite::Aes256Gcm);
    let g1 = generation(1, 0x2000, Suite::Aes256Gcm);
    let g2 = generation(2, 0x2001, Suite::Aes256Gcm);
    for (g, at) in [(&g1, s(0)), (&g2, s(10))] {
        p.server.install(p.s_peer, g, at).expect("server");
        p.client.install(p.c_peer, g, at).expect("client");
    }
    // The key server transmits under N-1: never retired there, whatever the evidence.
    let from_client = seal(&mut p.client, p.c_peer, &ipv4(60, 1)).expect("client seals 2");
    assert_eq!(open(&mut p.server, &from_client).map(|(g, _)| g), Ok(2));
    assert_eq!(
        p.server
            .retire_previous_if_unused(p.s_peer, s(100), grace, None)
            .expect("peer"),
        None
    );
    // The client: the server has not been heard under 2 (it sends under 1): kept.
    let from_server = seal(&mut p.server, p.s_peer, &ipv4(60, 2)).expect("server seals 1");
    assert_eq!(open(&mut p.client, &from_server).map(|(g, _)| g), Ok(1));
    assert_eq!(
        p.client
            .retire_previous_if_unused(p.c_peer, s(100), grace, Some(s(11)))
            .expect("peer"),
        None
    );
    // A forged packet under 2 (fails authentication) is no evidence.
    let mut forged = from_server.clone();
    forged[..4].copy_from_slice(&0x2001u32.to_be_bytes());
    assert_eq!(
        open(&mut p.client, &forged).map(|(g, _)| g),
        Err(DropReason::AuthFailed)
    );
    assert_eq!(
        p.client
            .retire_previous_if_unused(p.c_peer, s(100), grace, Some(s(11)))
            .expect("peer"),
        None
    );
    // The server moves to 2 (as a group sender in transit does): heard under 2.
    p.server
        .set_tx_rule(p.s_peer, pktcrypt_core::TxRule::Newest)
        .expect("rule");
    let under2 = seal(&mut p.server, p.s_peer, &ipv4(60, 3)).expect("server seals 2");
    assert_eq!(open(&mut p.client, &under2).map(|(g, _)| g), Ok(2));
    // Something arrived under 1 less than the grace ago, or 2 is younger than the grace: kept.
    for (now, seen) in [
        (s(11), None),
        (s(50), Some(s(49))),
        (s(50), Some(s(48) + Duration::from_millis(1))),
    ] {
        assert_eq!(
            p.client
                .retire_previous_if_unused(p.c_peer, now, grace, seen)
                .expect("peer"),
            None,
            "at {now:?}, last seen {seen:?}"
        );
        assert!(p.client.generation(p.c_peer, Slot::Previous).is_some());
    }
    // Quiet for the grace: 1 goes, with its SPI; a late packet under it is now unknown.
    let retired = p
        .client
        .retire_previous_if_unused(p.c_peer, s(50), grace, Some(s(48)))
        .expect("peer");
    assert_eq!(retired.map(|g| g.number), Some(1));
    assert!(p.client.generation(p.c_peer, Slot::Previous).is_none());
    assert!(!p.client.held_spis().any(|spi| spi == 0x2000));
    assert_eq!(
        open(&mut p.client, &from_server).map(|(g, _)| g),
        Err(DropReason::UnknownSpi)
    );
    // N and the init key stay; the next generation installs as usual.
    assert_eq!(
        open(
            &mut p.client,
            &seal(&mut p.server, p.s_peer, &ipv4(60, 4)).expect("seal")
        )
        .map(|(g, _)| g),
        Ok(2)
    );
    let mut held: Vec<u32> = p.client.held_spis().collect();
    held.sort_unstable();
    assert_eq!(held, [0x1000, 0x2001]);
    p.client
        .install(p.c_peer, &generation(3, 0x2002, Suite::Aes256Gcm), s(60))
        .expect("next");
}

/// Every mutation a data plane shows is tracked, each peer once, and nothing else is; an
/// updated data plane equals a fresh one.
#[test]
fn changes_are_tracked_per_peer() {
    let mut e = Engine::new(EngineConfig::new(Role::Client)).expect("engine");
    let suite = Suite::Aes128Gcm;
    let a = e
        .add_peer(&generation(0, 0x100, suite), Time::ZERO)
        .expect("a");
    // Off by default.
    assert!(e.take_changed().is_empty());
    e.track_changes();
    let plane = e.data_plane().expect("plane");
    let b = e
        .add_peer(&generation(0, 0x200, suite), Time::ZERO)
        .expect("b");
    let check = |e: &mut Engine, plane: &pktcrypt_core::DataPlane, want: Vec<PeerId>| {
        let got = e.take_changed();
        assert_eq!(got, want);
        let updated = e.update_data_plane(plane, &got).expect("update");
        let fresh = e.data_plane().expect("fresh");
        for p in [a, b] {
            assert_eq!(updated.tx_generation(p), fresh.tx_generation(p));
            assert_eq!(updated.rx_generations(p), fresh.rx_generations(p));
        }
        updated
    };
    let plane = check(&mut e, &plane, vec![b]);
    e.install(a, &generation(1, 0x101, suite), Time::ZERO)
        .expect("1");
    e.install(b, &generation(1, 0x201, suite), Time::ZERO)
        .expect("1");
    e.install(a, &generation(2, 0x102, suite), Time::ZERO)
        .expect("2");
    let plane = check(&mut e, &plane, vec![a, b]);
    // Resends change nothing; status marks are not keys.
    e.install(a, &generation(2, 0x102, suite), Time::ZERO)
        .expect("again");
    e.set_exchanged(a, Slot::Newest, true);
    e.evict_keys(a);
    e.set_tx_rule(a, pktcrypt_core::TxRule::Role)
        .expect("same rule");
    assert!(e.take_changed().is_empty());
    e.retire_previous(a).expect("retire");
    let plane = check(&mut e, &plane, vec![a]);
    assert_eq!(e.retire_previous(a).expect("nothing to retire"), None);
    e.set_tx_rule(b, pktcrypt_core::TxRule::Newest)
        .expect("rule");
    let plane = check(&mut e, &plane, vec![b]);
    e.set_receive_only(b, Slot::Newest, true);
    let plane = check(&mut e, &plane, vec![b]);
    e.install(a, &generation(3, 0x103, suite), Time::ZERO)
        .expect("3");
    e.install_previous(b, &generation(0, 0x2ff, suite), Time::ZERO)
        .ok();
    e.reset_to_init(b).expect("reset");
    let plane = check(&mut e, &plane, vec![a, b]);
    e.remove_peer(a).expect("remove");
    let plane = check(&mut e, &plane, vec![a]);
    assert_eq!(plane.tx_generation(a), None);
    assert!(plane.rx_generations(a).is_empty());
}

/// The largest window (8192 packets) through sealed packets: with sequence number 8300 opened,
/// 109 is the oldest that opens and 108 is too old; every number between opens once, in any
/// order, and a forged packet far ahead moves nothing.
#[test]
fn the_8192_packet_window_through_sealed_packets() {
    let mut p = pair_with(Backend::default(), Suite::Aes256Gcm, 8192);
    let sealed: Vec<Vec<u8>> = (0..8300)
        .map(|i| seal(&mut p.client, p.c_peer, &ipv4(40, i as u8)).expect("seal"))
        .collect();
    assert!(open(&mut p.server, &sealed[8299]).is_ok(), "seq 8300");
    assert_eq!(
        open(&mut p.server, &sealed[107]).map(|_| ()),
        Err(DropReason::TooOld),
        "seq 108: one left of the window"
    );
    // Seqs 109..=8299, from the oldest up in steps of 7 (every residue mod 7 in turn): each
    // opens once, then is a replay.
    for start in 0..7 {
        for i in (108 + start..8299).step_by(7) {
            assert!(open(&mut p.server, &sealed[i]).is_ok(), "seq {}", i + 1);
        }
    }
    for i in [108, 109, 4000, 8298, 8299] {
        assert_eq!(
            open(&mut p.server, &sealed[i]).map(|_| ()),
            Err(DropReason::Replay),
            "seq {}",
            i + 1
        );
    }
    let st = p.server.peer_status(p.s_peer).expect("status");
    let init = st.slot(Slot::Init).expect("init");
    assert_eq!(init.counters.packets_opened, 8300 - 108);
    assert_eq!(init.counters.replays, 1 + 5, "one too old, five replays");
}

/// Review finding (stop 21): `NextHeader::Transport` can be built with any number; sealing one
/// that means something else in an ESP trailer (4 and 41: tunnel mode; 253: a control
/// message; 59: a dummy packet; 50 and 51: ESP and AH) is refused, so a caller cannot make a
/// data packet its receiver takes for another kind.
#[test]
fn transport_next_headers_that_mean_something_else_are_refused() {
    let mut p = pair(Suite::Aes128Gcm);
    let inner = ipv4(60, 1);
    for v in [4u8, 41, 253, 59, 50, 51] {
        let mut buf = vec![0u8; ESP_HEADER_LEN + inner.len() + esp::MAX_OVERHEAD];
        buf[ESP_HEADER_LEN..ESP_HEADER_LEN + inner.len()].copy_from_slice(&inner);
        assert_eq!(
            p.client
                .seal(p.c_peer, &mut buf, inner.len(), NextHeader::Transport(v)),
            Err(SealError::UnsupportedProtocol),
            "next header {v}"
        );
    }
    let mut buf = vec![0u8; ESP_HEADER_LEN + inner.len() + esp::MAX_OVERHEAD];
    assert!(
        p.client
            .seal(p.c_peer, &mut buf, inner.len(), NextHeader::Transport(6))
            .is_ok()
    );
}
