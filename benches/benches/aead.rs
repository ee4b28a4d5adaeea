//! Seal and open per suite and size: every pktcrypt backend (RustCrypto, ring, aws-lc-rs and the
//! default) through its own AEAD layer and through the full ESP engine, against ring and OpenSSL
//! (reused `EVP_CIPHER_CTX`) called directly. Batched 64 B / 256 B packets compare one engine
//! batch with one ring call per packet. `scripts/bench_ratios.py` turns a run into ratios.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use pktcrypt_benches::{BATCH, SIZES};
use pktcrypt_core::aead::Backend;
use pktcrypt_core::wire::esp::{self, ESP_HEADER_LEN, NextHeader};
use pktcrypt_core::{
    Engine, EngineConfig, Generation, GenerationInfo, Packet, PeerId, Role, Secret, Spi, Suite,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use std::hint::black_box;
use std::time::Duration;

const AAD: [u8; 12] = [0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn ring_key(suite: Suite, key: &[u8]) -> LessSafeKey {
    let alg = match suite {
        Suite::Aes128Gcm => &ring::aead::AES_128_GCM,
        Suite::Aes256Gcm => &ring::aead::AES_256_GCM,
        Suite::ChaCha20Poly1305 => &ring::aead::CHACHA20_POLY1305,
    };
    LessSafeKey::new(UnboundKey::new(alg, key).unwrap())
}

/// OpenSSL with one reused context: only the IV changes per packet.
struct OpensslSeal {
    ctx: CipherCtx,
}

impl OpensslSeal {
    fn new(suite: Suite, key: &[u8]) -> Self {
        let cipher = match suite {
            Suite::Aes128Gcm => Cipher::aes_128_gcm(),
            Suite::Aes256Gcm => Cipher::aes_256_gcm(),
            Suite::ChaCha20Poly1305 => Cipher::chacha20_poly1305(),
        };
        let mut ctx = CipherCtx::new().unwrap();
        ctx.encrypt_init(Some(cipher), Some(key), None).unwrap();
        Self { ctx }
    }

    fn seal(&mut self, nonce: &[u8; 12], data: &mut [u8]) -> [u8; 16] {
        self.ctx.encrypt_init(None, None, Some(nonce)).unwrap();
        self.ctx.cipher_update(&AAD, None).unwrap();
        let n = data.len();
        self.ctx.cipher_update_inplace(data, n).unwrap();
        self.ctx.cipher_final(&mut []).unwrap();
        let mut tag = [0u8; 16];
        self.ctx.tag(&mut tag).unwrap();
        tag
    }
}

fn nonce(i: u64) -> [u8; 12] {
    let mut n = [7u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

/// One group per suite and size, every candidate in it: criterion runs a group's candidates back
/// to back, so their ratios come from the same minute of a shared machine.
fn seal(c: &mut Criterion) {
    let key = [0x42u8; 32];
    for suite in Suite::ALL {
        let k = &key[..suite.key_len()];
        for size in SIZES {
            let mut group = c.benchmark_group(format!("seal/{}/{size}", suite.name()));
            group.throughput(Throughput::Bytes(size as u64));
            let mut buf = vec![0u8; size];
            let rk = ring_key(suite, k);
            let mut i = 0u64;
            group.bench_function("ring", |b| {
                b.iter(|| {
                    i += 1;
                    black_box(
                        rk.seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce(i)),
                            Aad::from(&AAD),
                            black_box(&mut buf),
                        )
                        .unwrap(),
                    )
                })
            });
            for backend in Backend::all() {
                let aead = backend.key(suite, k).unwrap();
                let mut i = 0u64;
                group.bench_function(format!("pktcrypt-{}", backend.name()), |b| {
                    b.iter(|| {
                        i += 1;
                        black_box(aead.seal(&nonce(i), &AAD, black_box(&mut buf)))
                    })
                });
            }
            let mut ossl = OpensslSeal::new(suite, k);
            let mut i = 0u64;
            group.bench_function("openssl", |b| {
                b.iter(|| {
                    i += 1;
                    black_box(ossl.seal(&nonce(i), black_box(&mut buf)))
                })
            });
            group.finish();
        }
    }
}

/// Open in place needs the ciphertext back each round: every candidate copies it first
/// (`copy-only` is that copy alone, to read the candidates' times net of it).
fn open(c: &mut Criterion) {
    let key = [0x42u8; 32];
    for suite in Suite::ALL {
        let k = &key[..suite.key_len()];
        for size in SIZES {
            let mut group = c.benchmark_group(format!("open/{}/{size}", suite.name()));
            group.throughput(Throughput::Bytes(size as u64));
            let rk = ring_key(suite, k);
            let mut sealed = vec![0u8; size];
            let tag = rk
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce(1)),
                    Aad::from(&AAD),
                    &mut sealed,
                )
                .unwrap();
            let mut buf = sealed.clone();
            group.bench_function("ring", |b| {
                b.iter(|| {
                    buf.copy_from_slice(&sealed);
                    rk.open_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce(1)),
                        Aad::from(&AAD),
                        tag,
                        black_box(&mut buf),
                        0..,
                    )
                    .unwrap();
                })
            });
            let tag: [u8; 16] = tag.as_ref().try_into().unwrap();
            for backend in Backend::all() {
                let aead = backend.key(suite, k).unwrap();
                group.bench_function(format!("pktcrypt-{}", backend.name()), |b| {
                    b.iter(|| {
                        buf.copy_from_slice(&sealed);
                        aead.open(&nonce(1), &AAD, black_box(&mut buf), &tag)
                            .unwrap();
                    })
                });
            }
            group.bench_function("copy-only", |b| {
                b.iter(|| {
                    buf.copy_from_slice(&sealed);
                    black_box(&mut buf);
                })
            });
            group.finish();
        }
    }
}

fn engine_pair(suite: Suite, backend: Backend) -> (Engine, PeerId) {
    let mut cfg = EngineConfig::new(Role::Client);
    cfg.backend = backend;
    let mut engine = Engine::new(cfg).unwrap();
    let g = Generation {
        info: GenerationInfo {
            number: 0,
            spi: Spi::new(0x1000).unwrap(),
            suite,
        },
        secret: Secret::from_bytes([3; 32]),
    };
    let peer = engine.add_peer(&g, std::time::Duration::ZERO).unwrap();
    (engine, peer)
}

fn ipv4(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; ESP_HEADER_LEN + len + esp::MAX_OVERHEAD];
    p[ESP_HEADER_LEN] = 0x45;
    p
}

/// The full ESP path (header, trailer, sequence numbers, AEAD) per packet and per batch,
/// against one ring AEAD call per packet (AEAD only: a lower bound for any ESP built on ring).
fn batched(c: &mut Criterion) {
    let key = [0x42u8; 32];
    for suite in Suite::ALL {
        for size in [64usize, 256, 1420] {
            let mut group = c.benchmark_group(format!("batch{BATCH}/{}/{size}", suite.name()));
            group.throughput(Throughput::Bytes((size * BATCH) as u64));
            for backend in Backend::all() {
                let (mut engine, peer) = engine_pair(suite, *backend);
                let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| ipv4(size)).collect();
                group.bench_function(format!("esp-batch-{}", backend.name()), |b| {
                    b.iter(|| {
                        // Sealing encrypts in place: restore the IP version nibble each round.
                        let mut packets: Vec<Packet<'_>> = bufs
                            .iter_mut()
                            .map(|b| {
                                b[ESP_HEADER_LEN] = 0x45;
                                Packet::new(b, size)
                            })
                            .collect();
                        engine.seal_batch(peer, black_box(&mut packets));
                        black_box(packets[BATCH - 1].sealed().unwrap());
                    })
                });
                let (mut engine, peer) = engine_pair(suite, *backend);
                let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| ipv4(size)).collect();
                group.bench_function(format!("esp-single-{}", backend.name()), |b| {
                    b.iter(|| {
                        for buf in bufs.iter_mut() {
                            black_box(engine.seal(peer, buf, size, NextHeader::Ipv4).unwrap());
                        }
                    })
                });
            }
            let rk = ring_key(suite, &key[..suite.key_len()]);
            let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; size]).collect();
            let mut i = 0u64;
            group.bench_function("ring-per-packet", |b| {
                b.iter(|| {
                    for buf in bufs.iter_mut() {
                        i += 1;
                        let tag = rk
                            .seal_in_place_separate_tag(
                                Nonce::assume_unique_for_key(nonce(i)),
                                Aad::from(&AAD),
                                buf,
                            )
                            .unwrap();
                        black_box(&tag);
                    }
                })
            });
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = seal, open, batched
}
criterion_main!(benches);
