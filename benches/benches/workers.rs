//! Worker-pool scaling of the packet path, without the kernel: N threads (1, then 2) seal a batch
//! of 64 packets and open it again, in a loop, through one shared `DataPlane` per side and one
//! SA (the worst case: every worker draws sequence numbers from the same counter and records them
//! in the same replay window). Prints one JSON line per (size, threads) with packets per second
//! (each packet sealed and opened once) and the ratio to one thread.
//!
//! `cargo bench -p pktcrypt-benches --bench workers` (`PKTCRYPT_BENCH_SECS`, default 2).
#![allow(missing_docs, clippy::print_stdout)]

use pktcrypt_core::wire::esp::ESP_HEADER_LEN;
use pktcrypt_core::{
    DataPlane, DropCounters, Engine, EngineConfig, Generation, GenerationInfo, OpenOutcome, Packet,
    PeerId, Role, Secret, Spi, Suite, Time,
};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BATCH: usize = 64;

fn generation(number: u64, spi: u32) -> Generation {
    Generation {
        info: GenerationInfo {
            number,
            spi: Spi::new(spi).expect("SPI"),
            suite: Suite::Aes256Gcm,
        },
        secret: Secret::from_bytes([number as u8 ^ 0x5a; 32]),
    }
}

/// (client plane, its peer, server plane, its peer) sharing generation 1.
fn planes() -> (DataPlane, PeerId, DataPlane, PeerId) {
    let mut client = Engine::new(EngineConfig::new(Role::Client)).expect("config");
    let mut server = Engine::new(EngineConfig::new(Role::KeyServer)).expect("config");
    let init = generation(0, 0x1000);
    let c = client.add_peer(&init, Time::ZERO).expect("peer");
    let s = server.add_peer(&init, Time::ZERO).expect("peer");
    client
        .install(c, &generation(1, 0x2001), Time::ZERO)
        .expect("install");
    server
        .install(s, &generation(1, 0x2001), Time::ZERO)
        .expect("install");
    (
        client.data_plane().expect("plane"),
        c,
        server.data_plane().expect("plane"),
        s,
    )
}

/// Packets sealed and opened per second by `threads` threads for `secs`, all through one SA
/// (`shared`) or each through its own, and the packets the receiving window refused (a worker
/// that falls more than a window behind the other on one SA).
fn run(size: usize, threads: usize, shared: bool, secs: Duration) -> (f64, u64) {
    let common = planes();
    let own: Vec<_> = (0..threads).map(|_| planes()).collect();
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let dropped = AtomicU64::new(0);
    let barrier = Barrier::new(threads + 1);
    let start = std::thread::scope(|scope| {
        for mine in &own {
            let (tx, c, rx, _) = if shared { &common } else { mine };
            let (stop, done, dropped, barrier) = (&stop, &done, &dropped, &barrier);
            scope.spawn(move || {
                let mut bufs: Vec<Vec<u8>> = (0..BATCH)
                    .map(|_| {
                        let mut b = vec![0u8; ESP_HEADER_LEN + size + 64];
                        b[ESP_HEADER_LEN] = 0x45;
                        b[ESP_HEADER_LEN + 2..ESP_HEADER_LEN + 4]
                            .copy_from_slice(&(size as u16).to_be_bytes());
                        b
                    })
                    .collect();
                let mut drops = DropCounters::default();
                let mut n = 0u64;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    // An opened packet leaves its inner packet in place, a dropped one does
                    // not: rewrite the IPv4 header so every seal has a valid packet.
                    for b in &mut bufs {
                        b[ESP_HEADER_LEN] = 0x45;
                        b[ESP_HEADER_LEN + 2..ESP_HEADER_LEN + 4]
                            .copy_from_slice(&(size as u16).to_be_bytes());
                    }
                    let mut packets: Vec<Packet<'_>> = bufs
                        .iter_mut()
                        .map(|b| Packet::new(&mut b[..], size))
                        .collect();
                    tx.seal_batch(*c, &mut packets);
                    let sealed: Vec<usize> =
                        packets.iter().map(|p| p.sealed().unwrap_or(0)).collect();
                    drop(packets);
                    let mut packets: Vec<Packet<'_>> = bufs
                        .iter_mut()
                        .zip(&sealed)
                        .map(|(b, &len)| Packet::new(&mut b[..], len))
                        .collect();
                    rx.open_batch(&mut packets, &mut drops);
                    n += packets
                        .iter()
                        .filter(|p| matches!(p.opened(), OpenOutcome::Data { .. }))
                        .count() as u64;
                }
                done.fetch_add(n, Ordering::Relaxed);
                dropped.fetch_add(drops.iter().map(|(_, n)| n).sum(), Ordering::Relaxed);
            });
        }
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(secs);
        stop.store(true, Ordering::Relaxed);
        start
    });
    (
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        dropped.load(Ordering::Relaxed),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = Duration::from_secs_f64(
        std::env::var("PKTCRYPT_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for size in [64usize, 1420] {
        for shared in [true, false] {
            let (one, _) = run(size, 1, shared, secs);
            let (two, refused) = run(size, 2, shared, secs);
            println!(
                "{{\"size\": {size}, \"cores\": {cores}, \"one_sa\": {shared}, \"one_thread_pps\": {one:.0}, \"two_threads_pps\": {two:.0}, \"ratio\": {:.3}, \"two_threads_refused\": {refused}}}",
                two / one
            );
        }
    }
}
