//! What one expanded AEAD key costs per backend: memory (the Rust heap, counted by this
//! program's allocator, and the whole process's resident memory, which also sees AWS-LC's
//! `EVP_AEAD_CTX` on the C heap) and the time to build it.
//!
//! Each key is built as the engine caches it, inside an `Arc` with its salt (`sa::Keyed`: one per
//! direction of an SA that carries data). `ring+aws-lc` is measured twice: as built (ring's key
//! alone) and after two 9000-byte packets, when its aws-lc-rs key is expanded too (AES-GCM).
//!
//! `cargo bench -p pktcrypt-benches --bench aead_keys` (`PKTCRYPT_KEYS` keys per line, default
//! 20,000).
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use pktcrypt_core::Suite;
use pktcrypt_core::aead::{AeadKey, Backend};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The system allocator, counting the bytes requested and live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System.dealloc`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Resident memory of this process, bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// What the SA caches per direction: the key and its salt in an `Arc`.
struct Keyed {
    _key: AeadKey,
    _salt: [u8; 4],
}

fn main() {
    let n: usize = std::env::var("PKTCRYPT_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!("{n} keys per line; bytes per key; build time per key (mean of the {n})");
    println!(
        "size_of::<AeadKey>() = {} B (inline, the largest backend's)",
        size_of::<AeadKey>()
    );
    println!();
    println!("| backend | suite | Rust heap B/key | resident B/key | build ns/key |");
    println!("|---|---|---:|---:|---:|");
    let mut cases: Vec<(String, Backend, bool)> = Backend::all()
        .iter()
        .map(|b| (b.name().to_string(), *b, false))
        .collect();
    if let Some(split) = Backend::from_name("ring+aws-lc") {
        cases.push(("ring+aws-lc, long packets seen".into(), split, true));
    }
    for suite in [Suite::Aes256Gcm, Suite::ChaCha20Poly1305] {
        for (label, backend, expand) in &cases {
            let key = [0x5au8; 32];
            let mut keys: Vec<Arc<Keyed>> = Vec::with_capacity(n);
            let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss());
            let t0 = Instant::now();
            for i in 0..n {
                let mut k = key;
                k[..8].copy_from_slice(&(i as u64).to_le_bytes());
                keys.push(Arc::new(Keyed {
                    _key: backend.key(suite, &k[..suite.key_len()]).unwrap(),
                    _salt: [0; 4],
                }));
            }
            let build = t0.elapsed();
            if *expand {
                let mut buf = vec![0u8; 9000];
                for k in &keys {
                    for seq in 0..2u8 {
                        let _ = k._key.seal(&[seq; 12], &[], &mut buf);
                    }
                }
            }
            let heap = LIVE.load(Ordering::Relaxed) - heap0 - n * size_of::<usize>();
            let resident = rss().saturating_sub(rss0) - n * size_of::<usize>();
            println!(
                "| {label} | {} | {} | {} | {:.0} |",
                suite.name(),
                heap / n,
                resident / n,
                build.as_nanos() as f64 / n as f64
            );
            // Kept (leaked) so that the next line's memory is new memory, not this one's reused.
            std::mem::forget(keys);
        }
    }
}
