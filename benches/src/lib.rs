//! Benchmarks live in `benches/`; this library only holds what they share.
//!
//! Run them with `cargo bench -p pktcrypt-benches` (or `./scripts/bench.sh`, which also prints
//! the ratios against the ring and OpenSSL baselines measured in the same run).

/// Packet sizes measured: minimum Ethernet frame, small datagrams, an MTU-sized tunnel payload,
/// a page, and a 16 KiB buffer.
pub const SIZES: [usize; 6] = [64, 256, 512, 1420, 4096, 16384];

/// Packets per batch in the batched benchmarks (a typical AF_XDP RX burst).
pub const BATCH: usize = 32;
