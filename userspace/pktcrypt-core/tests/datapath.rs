//! The data plane shared between threads: workers and the engine draw distinct sequence numbers,
//! the lock-free replay window accepts each authenticated sequence number exactly once, and the
//! counters workers add reach the engine's (rekey triggers).

use pktcrypt_core::replay::{ReplayError, ReplayWindow};
use pktcrypt_core::wire::esp::{self, ESP_HEADER_LEN, NextHeader};
use pktcrypt_core::{
    DropCounters, DropReason, Engine, EngineConfig, Generation, GenerationInfo, OpenOutcome,
    Packet, PeerId, Role, Secret, Slot, Spi, Suite, Time,
};
use std::collections::HashSet;
use std::sync::Barrier;

fn generation(number: u64, spi: u32) -> Generation {
    let mut bytes = [7u8; 32];
    bytes[..8].copy_from_slice(&number.to_be_bytes());
    Generation {
        info: GenerationInfo {
            number,
            spi: Spi::new(spi).expect("test SPI"),
            suite: Suite::Aes256Gcm,
        },
        secret: Secret::from_bytes(bytes),
    }
}

fn engines() -> (Engine, PeerId, Engine, PeerId) {
    let mut server = Engine::new(EngineConfig::new(Role::KeyServer)).expect("config");
    let mut client = Engine::new(EngineConfig::new(Role::Client)).expect("config");
    let init = generation(0, 0x1000);
    let s = server.add_peer(&init, Time::ZERO).expect("peer");
    let c = client.add_peer(&init, Time::ZERO).expect("peer");
    for (n, spi) in [(1, 0x2001), (2, 0x2002)] {
        server
            .install(s, &generation(n, spi), Time::ZERO)
            .expect("install");
        client
            .install(c, &generation(n, spi), Time::ZERO)
            .expect("install");
    }
    (server, s, client, c)
}

/// A batch of whole ESP packets to open.
fn esp_batch(bufs: &mut [Vec<u8>]) -> Vec<Packet<'_>> {
    bufs.iter_mut()
        .map(|b| {
            let n = b.len();
            Packet::new(b, n)
        })
        .collect()
}

fn ipv4(len: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// Seals `count` packets on each of two threads through one DataPlane while the engine seals
/// control messages in between; returns every ESP packet.
fn seal_concurrently(client: &mut Engine, c: PeerId, count: usize) -> Vec<Vec<u8>> {
    let plane = client.data_plane().expect("data plane");
    let barrier = Barrier::new(2);
    let mut all: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u8)
            .map(|w| {
                let plane = &plane;
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let mut out = Vec::new();
                    for chunk in 0..count / 8 {
                        let mut bufs: Vec<Vec<u8>> = (0..8)
                            .map(|i| {
                                let inner = ipv4(64 + i, w ^ chunk as u8);
                                let mut b = vec![0u8; ESP_HEADER_LEN + 64 + i + 64];
                                b[ESP_HEADER_LEN..ESP_HEADER_LEN + inner.len()]
                                    .copy_from_slice(&inner);
                                b
                            })
                            .collect();
                        let mut packets: Vec<Packet<'_>> = bufs
                            .iter_mut()
                            .enumerate()
                            .map(|(i, b)| Packet::new(b, 64 + i))
                            .collect();
                        plane.seal_batch(c, &mut packets);
                        for p in &packets {
                            let n = p.sealed().expect("sealed");
                            out.push(p.buf()[..n].to_vec());
                        }
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    for _ in 0..10 {
        let mut buf = vec![0u8; 128];
        let n = client
            .seal_control(c, b"control", &mut buf)
            .expect("control");
        all.push(buf[..n].to_vec());
    }
    all
}

#[test]
fn workers_and_engine_never_share_a_sequence_number() {
    let (mut server, _s, mut client, c) = engines();
    let mut packets = seal_concurrently(&mut client, c, 2000);
    // Workers run unevenly; deliver in sequence order so the window does not age any out.
    packets.sort_by_key(|p| esp::EspHeader::parse(p).expect("header").iv);
    let mut seqs = HashSet::new();
    for p in &packets {
        let header = esp::EspHeader::parse(p).expect("header");
        assert!(seqs.insert(header.iv), "sequence number reused");
    }
    // The server's engine opens them all (order across workers is within the window).
    let mut opened = 0;
    for p in &packets {
        let mut b = p.clone();
        if !matches!(server.open(&mut b), pktcrypt_core::Opened::Drop(_)) {
            opened += 1;
        }
    }
    assert_eq!(opened, packets.len());
    // Worker counts reach the engine's counters.
    let sealed = client
        .sa_counters(c, Slot::Newest)
        .expect("counters")
        .0
        .packets_sealed;
    assert_eq!(sealed, 2000 * 2 / 8 * 8 + 10);
}

#[test]
fn duplicates_across_workers_open_exactly_once() {
    let (mut server, s, mut client, c) = engines();
    let mut packets = seal_concurrently(&mut client, c, 800);
    packets.sort_by_key(|p| esp::EspHeader::parse(p).expect("header").iv);
    let plane = server.data_plane().expect("data plane");
    let barrier = Barrier::new(2);
    // Both workers get every packet: each must be opened by exactly one of them.
    let results: Vec<(usize, DropCounters)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let plane = &plane;
                let packets = &packets;
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let mut drops = DropCounters::default();
                    let mut ok = 0;
                    for chunk in packets.chunks(16) {
                        let mut bufs: Vec<Vec<u8>> = chunk.to_vec();
                        let mut batch = esp_batch(&mut bufs);
                        plane.open_batch(&mut batch, &mut drops);
                        ok += batch
                            .iter()
                            .filter(|p| !matches!(p.opened(), OpenOutcome::Drop(_)))
                            .count();
                    }
                    (ok, drops)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let opened: usize = results.iter().map(|r| r.0).sum();
    assert_eq!(opened, packets.len(), "each packet opened exactly once");
    // The other copy is refused as a replay (or as too old if one worker ran far ahead).
    let refused: u64 = results
        .iter()
        .map(|r| r.1.get(DropReason::Replay) + r.1.get(DropReason::TooOld))
        .sum();
    assert_eq!(refused as usize, packets.len());
    // And the engine (sharing the window) refuses them all now.
    let mut again = packets[packets.len() - 1].clone();
    assert!(matches!(
        server.open(&mut again),
        pktcrypt_core::Opened::Drop(pktcrypt_core::DropReason::Replay)
    ));
    let _ = s;
}

#[test]
fn replay_window_is_exactly_once_under_contention() {
    for round in 0..20u64 {
        let w = ReplayWindow::new(1024).expect("window");
        let base = 1 + round * 100_000;
        let accepted: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|t| {
                    let w = &w;
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..4000u64 {
                            // Both threads walk the same numbers, slightly out of order.
                            let seq = base + (i ^ (t * 3));
                            if w.update(seq).is_ok() {
                                mine.push(seq);
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("t")).collect()
        });
        let mut all: Vec<u64> = accepted.concat();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a sequence number was accepted twice");
        assert_eq!(w.update(base + 3999), Err(ReplayError::Replayed));
        assert_eq!(w.update(base), Err(ReplayError::TooOld));
    }
}

#[test]
fn replay_window_reclaims_words_of_old_blocks() {
    let w = ReplayWindow::new(64).expect("window");
    for s in 1..=1000u64 {
        assert_eq!(w.update(s), Ok(()));
    }
    assert_eq!(w.update(1000), Err(ReplayError::Replayed));
    assert_eq!(w.update(937), Err(ReplayError::Replayed));
    assert_eq!(w.update(936), Err(ReplayError::TooOld));
    // Large jumps (init keys start at a boot-derived base near 2^50).
    let big = 1u64 << 50;
    assert_eq!(w.update(big), Ok(()));
    assert_eq!(w.update(big - 10), Ok(()));
    assert_eq!(w.update(big - 10), Err(ReplayError::Replayed));
    assert_eq!(w.update(big - 64), Err(ReplayError::TooOld));
    let _ = NextHeader::Control;
}

/// A packet that passed the window check before decryption but fell out of the window while
/// its batch was decrypted (a later packet of the batch moved it) is dropped as too old, not as
/// a replay — in the engine and in the data plane alike.
#[test]
fn window_moving_during_a_batch_means_too_old_not_replay() {
    let (mut server, s, mut client, c) = engines();
    let mut sealed = Vec::new();
    for i in 0..1500usize {
        let inner = ipv4(64, i as u8);
        let mut b = vec![0u8; ESP_HEADER_LEN + 64 + 64];
        b[ESP_HEADER_LEN..ESP_HEADER_LEN + 64].copy_from_slice(&inner);
        let n = client.seal(c, &mut b, 64, NextHeader::Ipv4).expect("seal");
        b.truncate(n);
        sealed.push(b);
    }
    let (first, last) = (sealed[0].clone(), sealed[1499].clone());
    // Engine: newest first, then the oldest (1,499 behind with a 1,024-packet window).
    let mut bufs = [last.clone(), first.clone()];
    let mut batch = esp_batch(&mut bufs);
    server.open_batch(&mut batch);
    assert!(matches!(batch[0].opened(), OpenOutcome::Data { .. }));
    assert_eq!(batch[1].opened(), OpenOutcome::Drop(DropReason::TooOld));
    // Data plane, on a fresh pair: the same.
    let (mut server, _, _, _) = engines();
    let plane = server.data_plane().expect("data plane");
    let mut bufs = [last, first];
    let mut batch = esp_batch(&mut bufs);
    let mut drops = DropCounters::default();
    plane.open_batch(&mut batch, &mut drops);
    assert!(matches!(batch[0].opened(), OpenOutcome::Data { .. }));
    assert_eq!(batch[1].opened(), OpenOutcome::Drop(DropReason::TooOld));
    assert_eq!(drops.get(DropReason::TooOld), 1);
    let _ = s;
}

proptest::proptest! {
    /// Recording a run at once gives exactly what recording its numbers one by one gives
    /// (duplicates, numbers left of the window, runs that cross blocks, jumps ahead).
    #[test]
    fn recording_a_run_equals_recording_one_by_one(
        start in 1u64..5_000,
        steps in proptest::collection::vec(-40i64..80, 1..64),
        window in proptest::sample::select(vec![64u32, 128, 1024]),
    ) {
        let mut seqs = Vec::new();
        let mut s = start as i64;
        for d in steps {
            s = (s + d).max(0);
            seqs.push(s as u64);
        }
        let one = ReplayWindow::new(window).expect("window");
        let many = ReplayWindow::new(window).expect("window");
        // Some history first, identical in both.
        for w in [&one, &many] {
            for h in [start / 2, start.saturating_sub(3), start] {
                let _ = w.update(h);
            }
        }
        let expected: Vec<_> = seqs.iter().map(|&s| one.update(s)).collect();
        let mut got = vec![Ok(()); seqs.len()];
        many.update_run(&seqs, &mut got);
        proptest::prop_assert_eq!(got, expected);
        proptest::prop_assert_eq!(one.top(), many.top());
    }
}

/// A small deterministic generator (splitmix64) for arrival orders.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `workers` threads seal `batches` batches of 64 each on one SA through one DataPlane (as the
/// gateway's workers do, one peer's traffic over every core); each thread's packets in its own
/// order, with their sequence numbers.
fn seal_by_workers(
    client: &mut Engine,
    c: PeerId,
    workers: usize,
    batches: usize,
) -> Vec<Vec<(u64, Vec<u8>)>> {
    let plane = client.data_plane().expect("data plane");
    let barrier = Barrier::new(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (plane, barrier) = (&plane, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let mut out = Vec::new();
                    for b in 0..batches {
                        let mut bufs: Vec<Vec<u8>> = (0..64)
                            .map(|i| {
                                let mut buf = vec![0u8; ESP_HEADER_LEN + 60 + 64];
                                let inner = ipv4(60, (w * 31 + b + i) as u8);
                                buf[ESP_HEADER_LEN..ESP_HEADER_LEN + 60].copy_from_slice(&inner);
                                buf
                            })
                            .collect();
                        let mut packets: Vec<Packet<'_>> =
                            bufs.iter_mut().map(|b| Packet::new(b, 60)).collect();
                        plane.seal_batch(c, &mut packets);
                        for p in &packets {
                            let n = p.sealed().expect("sealed");
                            let seq = u64::from_be_bytes(
                                esp::EspHeader::parse(p.buf()).expect("header").iv,
                            );
                            out.push((seq, p.buf()[..n].to_vec()));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    })
}

/// One packet as it arrives: its sender worker, sequence number, bytes, and whether it is a
/// copy of one delivered before.
#[derive(Clone)]
struct Arrival {
    worker: usize,
    seq: u64,
    bytes: Vec<u8>,
    duplicate: bool,
}

/// The packets of every worker in the order a receiver sees them when each worker's packets
/// travel as a flow of their own (its own UDP source port, its own RX queue): each flow keeps
/// its order, the flows interleave at random, and each flow lags behind the sequence order by
/// up to `max_lag` packets (its queue's delay). Every packet is also delivered a second time,
/// 1 to 3,000 packets later.
fn arrivals(streams: &[Vec<(u64, Vec<u8>)>], max_lag: u64, seed: u64) -> Vec<Arrival> {
    let mut rng = Mix(seed);
    // Arrival time: sequence number plus the flow's lag (which drifts) plus jitter; within a
    // flow, order is kept (times are made non-decreasing).
    let mut timed: Vec<(u64, usize, Arrival)> = Vec::new();
    for (w, stream) in streams.iter().enumerate() {
        let mut last = 0;
        let mut lag = rng.below(max_lag + 1);
        for (seq, bytes) in stream {
            if rng.below(64) == 0 {
                lag = rng.below(max_lag + 1);
            }
            let t = (seq + lag + rng.below(8)).max(last);
            last = t;
            timed.push((
                t,
                w,
                Arrival {
                    worker: w,
                    seq: *seq,
                    bytes: bytes.clone(),
                    duplicate: false,
                },
            ));
        }
    }
    let copies: Vec<(u64, usize, Arrival)> = timed
        .iter()
        .map(|(t, w, a)| {
            let mut copy = a.clone();
            copy.duplicate = true;
            (t + 1 + rng.below(3000), *w, copy)
        })
        .collect();
    timed.extend(copies);
    // Ties broken at random (stable sort after a shuffle by key).
    let mut keyed: Vec<(u64, u64, Arrival)> = timed
        .into_iter()
        .map(|(t, _, a)| (t, rng.next(), a))
        .collect();
    keyed.sort_by_key(|(t, r, _)| (*t, *r));
    keyed.into_iter().map(|(_, _, a)| a).collect()
}

/// What an RFC 4303 receiver with a window of `window` packets must decide for each arrival,
/// in order: accept a number not seen before and not `window` or more behind the highest
/// accepted.
fn model(arrivals: &[Arrival], window: u64) -> Vec<bool> {
    let mut seen = HashSet::new();
    let mut top = 0u64;
    arrivals
        .iter()
        .map(|a| {
            let inside = a.seq + window > top;
            let ok = inside && !seen.contains(&a.seq);
            if ok {
                seen.insert(a.seq);
                top = top.max(a.seq);
            }
            ok
        })
        .collect()
}

fn opened(
    plane: &pktcrypt_core::DataPlane,
    batch: &[Arrival],
    drops: &mut DropCounters,
) -> Vec<bool> {
    let mut bufs: Vec<Vec<u8>> = batch.iter().map(|a| a.bytes.clone()).collect();
    let mut packets = esp_batch(&mut bufs);
    plane.open_batch(&mut packets, drops);
    packets
        .iter()
        .map(|p| !matches!(p.opened(), OpenOutcome::Drop(_)))
        .collect()
}

/// Four workers seal one peer's traffic on one SA; its receiver takes their four flows
/// interleaved (each lagging by up to 900 packets, within the 1,024-packet window) with a copy
/// of every packet delivered again later. One opener in arrival order, in batches: exactly
/// what the window model says, which here is every original (none is outside the window)
/// and no copy. Then with lags beyond the window: the late ones dropped as too old, exactly as
/// the model says, never a copy accepted.
#[test]
fn a_window_of_1024_takes_four_workers_interleaved() {
    for (max_lag, seed, all_inside) in [(900, 1, true), (900, 2, true), (3000, 3, false)] {
        let mut config = EngineConfig::new(Role::KeyServer);
        config.replay_window = 1024;
        let mut server = Engine::new(config).expect("config");
        let mut client_config = EngineConfig::new(Role::Client);
        client_config.replay_window = 1024;
        let mut client = Engine::new(client_config).expect("config");
        let init = generation(0, 0x1000);
        let s = server.add_peer(&init, Time::ZERO).expect("peer");
        let c = client.add_peer(&init, Time::ZERO).expect("peer");
        server
            .install(s, &generation(1, 0x2001), Time::ZERO)
            .expect("install");
        client
            .install(c, &generation(1, 0x2001), Time::ZERO)
            .expect("install");
        let streams = seal_by_workers(&mut client, c, 4, 40);
        let mut seqs: Vec<u64> = streams.iter().flatten().map(|(s, _)| *s).collect();
        let total = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), total, "a sequence number sealed twice");

        let order = arrivals(&streams, max_lag, seed);
        let expected = model(&order, 1024);
        let plane = server.data_plane().expect("data plane");
        let mut drops = DropCounters::default();
        let mut got = Vec::new();
        for batch in order.chunks(64) {
            got.extend(opened(&plane, batch, &mut drops));
        }
        for (i, (a, (g, e))) in order.iter().zip(got.iter().zip(&expected)).enumerate() {
            assert_eq!(
                g, e,
                "arrival {i}: worker {} seq {} duplicate {} (lag {max_lag})",
                a.worker, a.seq, a.duplicate
            );
            assert!(!(a.duplicate && *g), "a copy accepted: seq {}", a.seq);
        }
        let originals_dropped = order
            .iter()
            .zip(&got)
            .filter(|(a, g)| !a.duplicate && !**g)
            .count();
        if all_inside {
            assert_eq!(
                originals_dropped, 0,
                "an authentic packet inside the window dropped"
            );
        } else {
            assert!(
                originals_dropped > 0,
                "lags beyond the window must age some out"
            );
        }
        assert_eq!(drops.get(DropReason::AuthFailed), 0);
        let refused = drops.get(DropReason::Replay) + drops.get(DropReason::TooOld);
        assert_eq!(
            refused as usize,
            order.len() - got.iter().filter(|g| **g).count()
        );
    }
}

/// The same four flows on two receiving workers at once (flows 0 and 2 on one, 1 and 3 on the
/// other, as RSS might put them; every copy on the other worker than its original), through
/// one shared window: every sequence number accepted exactly once, every other copy refused. The openers
/// advance round by round (128 arrivals), as two workers draining their queues at one pace.
#[test]
fn two_openers_share_the_window_of_four_workers_flows() {
    let mut config = EngineConfig::new(Role::KeyServer);
    config.replay_window = 1024;
    let mut server = Engine::new(config).expect("config");
    let mut client_config = EngineConfig::new(Role::Client);
    client_config.replay_window = 1024;
    let mut client = Engine::new(client_config).expect("config");
    let init = generation(0, 0x1000);
    let s = server.add_peer(&init, Time::ZERO).expect("peer");
    let c = client.add_peer(&init, Time::ZERO).expect("peer");
    server
        .install(s, &generation(1, 0x2001), Time::ZERO)
        .expect("install");
    client
        .install(c, &generation(1, 0x2001), Time::ZERO)
        .expect("install");
    let streams = seal_by_workers(&mut client, c, 4, 40);
    let order = arrivals(&streams, 700, 9);
    let plane = server.data_plane().expect("data plane");
    let barrier = Barrier::new(2);
    let rounds: Vec<&[Arrival]> = order.chunks(128).collect();
    // Per opener: (sequence number, a copy?, accepted?) of each arrival, and its drops.
    type Seen = Vec<(u64, bool, bool)>;
    let results: Vec<(Seen, DropCounters)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2usize)
            .map(|q| {
                let (plane, barrier, rounds) = (&plane, &barrier, &rounds);
                scope.spawn(move || {
                    let mut drops = DropCounters::default();
                    let mut seen = Vec::new();
                    for round in rounds {
                        let mine: Vec<Arrival> = round
                            .iter()
                            .filter(|a| (a.worker % 2 == q) != a.duplicate)
                            .cloned()
                            .collect();
                        for batch in mine.chunks(64) {
                            let ok = opened(plane, batch, &mut drops);
                            seen.extend(batch.iter().zip(ok).map(|(a, o)| (a.seq, a.duplicate, o)));
                        }
                        barrier.wait();
                    }
                    (seen, drops)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("opener"))
            .collect()
    });
    let mut accepted = HashSet::new();
    for (q, (seen, _)) in results.iter().enumerate() {
        assert!(
            seen.iter().any(|(_, d, o)| !d && *o),
            "opener {q} opened nothing"
        );
        // A copy may overtake its original on the other worker within a round: then the copy
        // is the one accepted. Either way a number is accepted once.
        for (seq, _, ok) in seen {
            if *ok {
                assert!(accepted.insert(*seq), "seq {seq} accepted twice");
            }
        }
    }
    let originals = order.iter().filter(|a| !a.duplicate).count();
    assert_eq!(
        accepted.len(),
        originals,
        "an authentic packet inside the window dropped"
    );
    let refused: u64 = results
        .iter()
        .map(|(_, d)| d.get(DropReason::Replay) + d.get(DropReason::TooOld))
        .sum();
    assert_eq!(refused as usize, order.len() - originals);
}
