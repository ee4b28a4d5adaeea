//! Where aws-lc-rs overtakes ring: the `ring+aws-lc` backend's threshold.
//!
//! For each suite, size and operation, ring's and aws-lc-rs's backends (through pktcrypt's AEAD
//! layer) run in alternating rounds of a few thousand calls each, so both see the same load on a
//! shared machine; the ratio of each pair of rounds is kept and the median (and quartiles) of
//! those ratios is printed.
//!
//! `cargo bench -p pktcrypt-benches --bench aead_crossover` (`PKTCRYPT_ROUNDS`, default 41).
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use pktcrypt_core::Suite;
use pktcrypt_core::aead::{AeadKey, Backend};
use std::hint::black_box;
use std::time::Instant;

const SIZES: [usize; 14] = [
    64, 128, 256, 384, 512, 768, 1024, 1420, 2048, 4096, 6144, 9000, 12288, 16384,
];

fn nonce(i: u64) -> [u8; 12] {
    let mut n = [7u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

/// Nanoseconds per call over `calls` calls.
fn time(key: &AeadKey, open: bool, buf: &mut [u8], calls: u32) -> f64 {
    let aad = [0u8; 12];
    let n = nonce(1);
    let mut sealed = buf.to_vec();
    let tag = key.seal(&n, &aad, &mut sealed);
    let t0 = Instant::now();
    for i in 0..calls {
        if open {
            buf.copy_from_slice(&sealed);
            key.open(&n, &aad, black_box(&mut *buf), &tag).unwrap();
        } else {
            black_box(key.seal(&nonce(u64::from(i)), &aad, black_box(&mut *buf)));
        }
    }
    t0.elapsed().as_nanos() as f64 / f64::from(calls)
}

fn main() {
    let (Some(ring), Some(awslc)) = (Backend::from_name("ring"), Backend::from_name("aws-lc"))
    else {
        println!("needs the features ring and aws-lc");
        return;
    };
    let rounds: usize = std::env::var("PKTCRYPT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(41);
    println!("speed of aws-lc-rs vs ring (ring's time / aws-lc-rs's), {rounds} alternating rounds");
    println!("| suite | op | bytes | ring ns | aws-lc ns | ratio: median (quartiles) |");
    println!("|---|---|---:|---:|---:|---:|");
    for suite in [Suite::Aes256Gcm, Suite::Aes128Gcm, Suite::ChaCha20Poly1305] {
        let k = [0x42u8; 32];
        let r = ring.key(suite, &k[..suite.key_len()]).unwrap();
        let a = awslc.key(suite, &k[..suite.key_len()]).unwrap();
        for open in [false, true] {
            for size in SIZES {
                let mut buf = vec![0u8; size];
                let calls = (4_000_000 / (size as u32 + 200)).max(200);
                // Warm both up.
                time(&r, open, &mut buf, calls);
                time(&a, open, &mut buf, calls);
                let mut ratios = Vec::with_capacity(rounds);
                let (mut rs, mut as_) = (Vec::new(), Vec::new());
                for i in 0..rounds {
                    // Alternate which goes first.
                    let (tr, ta) = if i % 2 == 0 {
                        let tr = time(&r, open, &mut buf, calls);
                        (tr, time(&a, open, &mut buf, calls))
                    } else {
                        let ta = time(&a, open, &mut buf, calls);
                        (time(&r, open, &mut buf, calls), ta)
                    };
                    ratios.push(tr / ta);
                    rs.push(tr);
                    as_.push(ta);
                }
                for v in [&mut ratios, &mut rs, &mut as_] {
                    v.sort_by(f64::total_cmp);
                }
                let q = |v: &[f64], p: usize| v[(v.len() - 1) * p / 4];
                println!(
                    "| {} | {} | {size} | {:.1} | {:.1} | {:.3} ({:.3}-{:.3}) |",
                    suite.name(),
                    if open { "open" } else { "seal" },
                    q(&rs, 2),
                    q(&as_, 2),
                    q(&ratios, 2),
                    q(&ratios, 1),
                    q(&ratios, 3)
                );
            }
        }
    }
}
