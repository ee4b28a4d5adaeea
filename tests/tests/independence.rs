//! A second, independent ESP implementation (Python `cryptography`, i.e. OpenSSL, with its own
//! framing code in `tests/python/esp_independent.py`) decrypts what pktcrypt seals, given only the
//! exported SA, and pktcrypt opens what it seals. Every suite, with and without ESN.

use pktcrypt_core::wire::esp::{self, ESP_HEADER_LEN, NextHeader};
use pktcrypt_core::{
    Engine, EngineConfig, Generation, GenerationInfo, Opened, Role, Secret, Spi, Suite, Time,
};
use pktcrypt_tests::{python, repo_root};
use std::io::Write;
use std::process::Stdio;

fn inner_packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
    p[0] = 0x45;
    p
}

fn run_python(input: &str) -> Vec<String> {
    let script = repo_root().join("tests/python/esp_independent.py");
    let mut child = python()
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (scripts/setup.sh)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python runs");
    assert!(
        out.status.success(),
        "independent implementation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn python_cryptography_interoperates_both_ways() {
    let sizes = [20usize, 21, 22, 23, 64, 255, 1420, 8000];
    let mut checked = 0;
    for suite in Suite::ALL {
        for esn in [true, false] {
            let g = Generation {
                info: GenerationInfo {
                    number: 1,
                    spi: Spi::new(0xc0de_0001).expect("spi"),
                    suite,
                },
                secret: Secret::from_bytes([0x17; 32]),
            };
            let init = Generation {
                info: GenerationInfo {
                    number: 0,
                    spi: Spi::new(0xc0de_0000).expect("spi"),
                    suite,
                },
                secret: Secret::from_bytes([0x71; 32]),
            };
            let mut engines = Vec::new();
            for role in [Role::Client, Role::KeyServer] {
                let mut cfg = EngineConfig::new(role);
                cfg.esn = esn;
                let mut e = Engine::new(cfg).expect("config");
                let peer = e.add_peer(&init, Time::ZERO).expect("peer");
                e.install(peer, &g, Time::ZERO).expect("install");
                engines.push((e, peer));
            }
            let (mut server, s_peer) = engines.pop().expect("server");
            let (mut client, c_peer) = engines.pop().expect("client");
            // The client transmits with generation 1; export its outbound SA.
            let exports = client.export_sas(c_peer);
            let sa = exports
                .iter()
                .find(|s| s.outbound && s.generation == 1)
                .expect("outbound SA of generation 1");
            let keymat = hex::encode(&sa.keymat[..]);
            // 1. pktcrypt seals, Python opens.
            let mut input = String::new();
            let mut expected = Vec::new();
            for (i, &len) in sizes.iter().enumerate() {
                let inner = inner_packet(len, i as u8 + 3);
                let mut buf = vec![0u8; ESP_HEADER_LEN + len + esp::MAX_OVERHEAD];
                buf[ESP_HEADER_LEN..ESP_HEADER_LEN + len].copy_from_slice(&inner);
                let n = client
                    .seal(c_peer, &mut buf, len, NextHeader::Ipv4)
                    .expect("seal");
                input += &format!(
                    "open {} {keymat} {} 0 {}\n",
                    suite.name(),
                    u8::from(esn),
                    hex::encode(&buf[..n])
                );
                expected.push(format!("inner 4 {}", hex::encode(&inner)));
            }
            // 2. Python seals under the same SA with sequence numbers beyond ours and, with ESN,
            //    across the 2^32 boundary in steps a receiver can follow (RFC 4303 App. A infers
            //    the high half from the window, so no single jump may exceed 2^31).
            let seqs: Vec<u64> = if esn {
                vec![100, 101, 1 << 31, (1 << 32) - 5, (1 << 32) + 7]
            } else {
                vec![100, 101, 102, 4000, 1 << 31]
            };
            for (i, seq) in seqs.iter().enumerate() {
                let inner = inner_packet(60 + i, 9);
                input += &format!(
                    "seal {} {keymat} {} {} {seq} 4 {}\n",
                    suite.name(),
                    u8::from(esn),
                    sa.spi.get(),
                    hex::encode(&inner)
                );
            }
            let out = run_python(&input);
            assert_eq!(out.len(), sizes.len() + seqs.len());
            assert_eq!(&out[..sizes.len()], &expected[..], "{suite} esn={esn}");
            for (i, line) in out[sizes.len()..].iter().enumerate() {
                let hexpkt = line.strip_prefix("packet ").expect("packet line");
                let mut pkt = hex::decode(hexpkt).expect("hex");
                match server.open(&mut pkt) {
                    Opened::Data { packet, info, .. } => {
                        assert_eq!(packet, &inner_packet(60 + i, 9)[..]);
                        assert_eq!(info.seq, seqs[i]);
                        assert_eq!(info.peer, s_peer);
                    }
                    other => panic!("{suite} esn={esn}: packet {i} did not open: {other:?}"),
                }
            }
            checked += out.len();
        }
    }
    assert_eq!(checked, 3 * 2 * (8 + 5));
}
