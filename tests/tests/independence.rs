//! A second, independent ESP implementation (Python `cryptography`, i.e. OpenSSL, with its own
//! framing code in `tests/python/esp_independent.py`) decrypts what pktcrypt seals, given only the
//! exported SA, and pktcrypt opens what it seals. Every suite, with and without ESN.

use pktcrypt_core::wire::esp::{self, ESP_HEADER_LEN, NextHeader};
use pktcrypt_core::wire::ip::checksum;
use pktcrypt_core::wire::{TRANSPORT_HEADROOM, TRANSPORT_OVERHEAD, UdpPorts};
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

/// Fills in the transport checksum of `packet` (IPv4 or extension-free IPv6) at `at` in its
/// payload, over the pseudo-header, and the IPv4 header checksum.
fn finish_packet(mut packet: Vec<u8>, at: Option<usize>) -> Vec<u8> {
    let v6 = packet[0] >> 4 == 6;
    let (h, protocol, addrs) = if v6 {
        (40, packet[6], 8..40)
    } else {
        (usize::from(packet[0] & 0x0f) * 4, packet[9], 12..20)
    };
    if let Some(at) = at {
        let len = packet.len() - h;
        let mut pseudo = packet[addrs].to_vec();
        pseudo.extend([0, protocol]);
        pseudo.extend((len as u16).to_be_bytes());
        pseudo.extend(&packet[h..]);
        let c = checksum(&pseudo, 0);
        packet[h + at..h + at + 2].copy_from_slice(&c.to_be_bytes());
    }
    if !v6 {
        let c = checksum(&packet[..h], 0);
        packet[10..12].copy_from_slice(&c.to_be_bytes());
    }
    packet
}

/// Transport-mode test packets: TCP over IPv4 with options, UDP without a checksum over IPv4,
/// ICMP over IPv4, UDP and ICMPv6 over IPv6; payloads of several lengths.
fn transport_packets() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, n) in [0usize, 1, 2, 3, 100, 1300].into_iter().enumerate() {
        let payload: Vec<u8> = (0..n).map(|j| (j * 7 + i) as u8).collect();
        // IPv4 + a 4-byte option (IHL 6) + TCP.
        let total = 24 + 20 + n;
        let mut p = vec![
            0x46,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            i as u8,
            0x40,
            0,
            64,
            6,
        ];
        p.extend([0, 0, 192, 0, 2, 1, 198, 51, 100, 7, 1, 1, 1, 0]);
        p.extend([
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0x20, 0, 0, 0, 0, 0,
        ]);
        p.extend(&payload);
        out.push(finish_packet(p, Some(16)));
        // IPv4 + UDP without a checksum.
        let total = 20 + 8 + n;
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        p.extend([10, 0, 0, 1, 10, 0, 0, 2, 0x13, 0x88, 0x13, 0x89]);
        p.extend([((8 + n) >> 8) as u8, (8 + n) as u8, 0, 0]);
        p.extend(&payload);
        out.push(finish_packet(p, None));
        // IPv6 + UDP, IPv6 + ICMPv6 echo.
        for (next, head, at) in [
            (
                17u8,
                vec![0x14, 0xe9, 0, 53, ((8 + n) >> 8) as u8, (8 + n) as u8, 0, 0],
                6,
            ),
            (58, vec![128, 0, 0, 0, 0, 1, 0, 2], 2),
        ] {
            let len = head.len() + n;
            let mut p = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, next, 64];
            p.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0; 11]).chain(&[1]));
            p.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0; 11]).chain(&[2]));
            p.extend(head);
            p.extend(&payload);
            out.push(finish_packet(p, Some(at)));
        }
    }
    // ICMP echo over IPv4 (its checksum has no pseudo-header).
    let mut icmp = vec![8, 0, 0, 0, 0, 1, 0, 1, b'p', b'i', b'n', b'g'];
    let c = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![
        0x45, 0, 0, 32, 0, 2, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    p.extend(icmp);
    out.push(finish_packet(p, None));
    out
}

/// Transport mode (RFC 4303 §3.1.1 in UDP, RFC 3948): the independent implementation turns what
/// pktcrypt seals back into the original IP packets (checking the IP and UDP headers pktcrypt
/// wrote), and pktcrypt opens what it builds, restoring the same packets.
#[test]
fn python_cryptography_interoperates_in_transport_mode() {
    let packets = transport_packets();
    let mut checked = 0;
    for suite in Suite::ALL {
        for esn in [true, false] {
            let g = Generation {
                info: GenerationInfo {
                    number: 1,
                    spi: Spi::new(0xc0de_0001).expect("spi"),
                    suite,
                },
                secret: Secret::from_bytes([0x27; 32]),
            };
            let init = Generation {
                info: GenerationInfo {
                    number: 0,
                    spi: Spi::new(0xc0de_0000).expect("spi"),
                    suite,
                },
                secret: Secret::from_bytes([0x72; 32]),
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
            let exports = client.export_sas(c_peer);
            let sa = exports
                .iter()
                .find(|s| s.outbound && s.generation == 1)
                .expect("outbound SA of generation 1");
            let keymat = hex::encode(&sa.keymat[..]);
            let mut input = String::new();
            let mut expected = Vec::new();
            // 1. pktcrypt seals, Python opens.
            for packet in &packets {
                let mut buf = vec![0u8; packet.len() + TRANSPORT_OVERHEAD];
                buf[TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + packet.len()].copy_from_slice(packet);
                let n = client
                    .seal_transport(c_peer, &mut buf, packet.len(), UdpPorts::ESP_IN_UDP)
                    .expect("seal");
                input += &format!(
                    "topen {} {keymat} {} 0 {}\n",
                    suite.name(),
                    u8::from(esn),
                    hex::encode(&buf[..n])
                );
                let protocol = if packet[0] >> 4 == 4 {
                    packet[9]
                } else {
                    packet[6]
                };
                expected.push(format!("ip {protocol} {}", hex::encode(packet)));
            }
            // 2. Python seals (sequence numbers beyond ours, its own IVs), pktcrypt opens.
            for (i, packet) in packets.iter().enumerate() {
                input += &format!(
                    "tseal {} {keymat} {} {} {} 4500 4500 {}\n",
                    suite.name(),
                    u8::from(esn),
                    sa.spi.get(),
                    1000 + i,
                    hex::encode(packet)
                );
            }
            let out = run_python(&input);
            assert_eq!(out.len(), 2 * packets.len());
            assert_eq!(&out[..packets.len()], &expected[..], "{suite} esn={esn}");
            for (i, line) in out[packets.len()..].iter().enumerate() {
                let hexpkt = line.strip_prefix("ip ").expect("ip line");
                let mut pkt = hex::decode(hexpkt).expect("hex");
                match server.open_transport(&mut pkt) {
                    Opened::Data {
                        packet,
                        next_header,
                        info,
                    } => {
                        assert_eq!(packet, &packets[i][..], "{suite} esn={esn} packet {i}");
                        assert!(next_header.is_transport());
                        assert_eq!(info.seq, 1000 + i as u64);
                        assert_eq!(info.peer, s_peer);
                    }
                    other => panic!("{suite} esn={esn}: packet {i} did not open: {other:?}"),
                }
            }
            checked += out.len();
        }
    }
    assert_eq!(checked, 3 * 2 * 2 * packets.len());
}
