//! ESP transport mode in UDP (RFC 4303 §3.1.1, RFC 3948): known answers, round trips over
//! IPv4 and IPv6 (with extension headers), the checksum fix-up after NAT, refusals, and bad
//! input dropped and counted.

use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD};
use pktcrypt_core::wire::ip::checksum;
use pktcrypt_core::wire::{NextHeader, TRANSPORT_HEADROOM, TRANSPORT_OVERHEAD, UdpPorts};
use pktcrypt_core::{
    DropReason, Engine, EngineConfig, Generation, GenerationInfo, Opened, PeerId, Role, SealError,
    Secret, Spi, Suite, Time,
};

struct Pair {
    server: Engine,
    client: Engine,
    s_peer: PeerId,
    c_peer: PeerId,
}

/// A client and a server sharing generation 1 (SPI 0xc0de0001, secret 0x17…) over an init key:
/// the client transmits under generation 1.
fn pair(suite: Suite) -> Pair {
    let gen1 = Generation {
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
        let mut e = Engine::new(EngineConfig::new(role)).expect("config");
        let peer = e.add_peer(&init, Time::ZERO).expect("peer");
        e.install(peer, &gen1, Time::ZERO).expect("install");
        engines.push((e, peer));
    }
    let (server, s_peer) = engines.pop().expect("server");
    let (client, c_peer) = engines.pop().expect("client");
    Pair {
        server,
        client,
        s_peer,
        c_peer,
    }
}

fn fix_ipv4_checksum(p: &mut [u8]) {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&p[..ihl], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The TCP/UDP/ICMPv6 checksum of `segment` (its checksum field included) under the given
/// pseudo-header: 0 when the segment's checksum is right.
fn verify_l4(src: &[u8], dst: &[u8], protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend(src);
    pseudo.extend(dst);
    pseudo.extend([0, protocol]);
    pseudo.extend((segment.len() as u16).to_be_bytes());
    let mut all = pseudo;
    all.extend(segment);
    checksum(&all, 0)
}

/// An IPv4 TCP segment 192.0.2.1:40000 → 198.51.100.7:80, header and TCP checksums right.
fn ipv4_tcp(payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0x20, 0x00, 0, 0, 0, 0,
    ];
    tcp.extend(payload);
    let (src, dst) = ([192, 0, 2, 1], [198, 51, 100, 7]);
    let c = verify_l4(&src, &dst, 6, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    p.extend(src);
    p.extend(dst);
    p.extend(tcp);
    fix_ipv4_checksum(&mut p);
    p
}

/// An IPv6 UDP datagram 2001:db8::1:5353 → 2001:db8::2:53 after the extension headers `ext`
/// (whose first byte's chain must end in 17), checksums right.
fn ipv6_udp(first: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let src: Vec<u8> = [0x20, 0x01, 0x0d, 0xb8]
        .into_iter()
        .chain([0; 11])
        .chain([1])
        .collect();
    let dst: Vec<u8> = [0x20, 0x01, 0x0d, 0xb8]
        .into_iter()
        .chain([0; 11])
        .chain([2])
        .collect();
    let mut udp = vec![0x14, 0xe9, 0x00, 0x35, 0, 0, 0, 0];
    let udp_len = (8 + payload.len()) as u16;
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp.extend(payload);
    let c = verify_l4(&src, &dst, 17, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend(((ext.len() + udp.len()) as u16).to_be_bytes());
    p.extend([first, 64]);
    p.extend(&src);
    p.extend(&dst);
    p.extend(ext);
    p.extend(udp);
    p
}

fn seal_transport(
    e: &mut Engine,
    peer: PeerId,
    packet: &[u8],
    ports: UdpPorts,
) -> Result<Vec<u8>, SealError> {
    let mut buf = vec![0u8; packet.len() + TRANSPORT_OVERHEAD];
    buf[TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + packet.len()].copy_from_slice(packet);
    let before = buf.clone();
    match e.seal_transport(peer, &mut buf, packet.len(), ports) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(err) => {
            assert_eq!(
                buf[TRANSPORT_HEADROOM..],
                before[TRANSPORT_HEADROOM..],
                "a refused packet is left as it was"
            );
            Err(err)
        }
    }
}

fn open_transport(e: &mut Engine, packet: &[u8]) -> Result<(NextHeader, Vec<u8>), DropReason> {
    let mut buf = packet.to_vec();
    match e.open_transport(&mut buf) {
        Opened::Data {
            packet,
            next_header,
            ..
        } => Ok((next_header, packet.to_vec())),
        Opened::Control { .. } => panic!("no control messages here"),
        Opened::Drop(r) => Err(r),
    }
}

/// Known answers: fixed SA (the client's outbound generation 1 under the keymat below), fixed
/// packet, first sequence number 1 (IV = the 64-bit sequence number, ESN in the AAD); the
/// expected bytes were computed independently by `tests/python/transport_kat.py` (Python's
/// `cryptography`, hand-written IP/UDP/ESP framing), not with this crate.
#[test]
fn known_answers() {
    struct Case {
        suite: Suite,
        keymat: &'static str,
        packet: Vec<u8>,
        ports: UdpPorts,
        expected: &'static str,
    }
    let cases = [
        Case {
            suite: Suite::Aes128Gcm,
            keymat: KEYMAT_AES128,
            packet: ipv4_tcp(b"hello"),
            ports: UdpPorts::ESP_IN_UDP,
            expected: KAT_IPV4_TCP_AES128,
        },
        Case {
            suite: Suite::ChaCha20Poly1305,
            keymat: KEYMAT_CHACHA,
            packet: ipv6_udp(17, &[], b"example"),
            ports: UdpPorts {
                src: 40001,
                dst: 4500,
            },
            expected: KAT_IPV6_UDP_CHACHA,
        },
    ];
    for c in cases {
        let mut p = pair(c.suite);
        let sa = p
            .client
            .export_sas(p.c_peer)
            .into_iter()
            .find(|s| s.outbound && s.generation == 1)
            .expect("outbound SA");
        assert_eq!(hex::encode(&sa.keymat[..]), c.keymat, "{}", c.suite);
        let sealed = seal_transport(&mut p.client, p.c_peer, &c.packet, c.ports).expect("seal");
        assert_eq!(hex::encode(&sealed), c.expected, "{}", c.suite);
        let (next, opened) = open_transport(&mut p.server, &sealed).expect("open");
        assert_eq!(opened, c.packet);
        assert_eq!(
            next,
            NextHeader::Transport(c.packet[if c.packet[0] >> 4 == 4 { 9 } else { 6 }])
        );
    }
}

const KEYMAT_AES128: &str = "b19f3c0464c8c35818e35ca3c35062265f1f383c";
const KEYMAT_CHACHA: &str =
    "83e790fa58b8b2b78be21c47206bef70f3951f132cdd17c09c9094c6dc8927277351f88c";
const KAT_IPV4_TCP_AES128: &str = "450000581234400040113c25c0000201c63364071194119400440000c0de00010000000100000000000000016570b0bca26bb67e9bbb02a66fdbf2b8a88a908abe6c79269c9ef08508afa0df7e6fde1596a5d29143716887";
const KAT_IPV6_UDP_CHACHA: &str = "60000000003c114020010db800000000000000000000000120010db80000000000000000000000029c411194003c53d5c0de00010000000100000000000000018cc7830db51c79fe03ee946ac1c539fc2736b37e1918d02cbd9c335a4a8b4bd9b5230df1";

/// An IPv4 ICMP echo request (no pseudo-header), with IPv4 options (IHL 6).
fn ipv4_icmp_with_options() -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend(b"ping");
    let c = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0x46, 0, 0, 0, 0, 1, 0, 0, 64, 1, 0, 0];
    p[2..4].copy_from_slice(&((24 + icmp.len()) as u16).to_be_bytes());
    p.extend([10, 0, 0, 1, 10, 0, 0, 2]);
    p.extend([1, 1, 1, 0]); // NOP NOP NOP EOL
    p.extend(icmp);
    fix_ipv4_checksum(&mut p);
    p
}

#[test]
fn round_trips_in_every_suite_both_ways() {
    // Hop-by-hop (Pad1s) then destination options, then UDP: ESP goes after both.
    let ext = [60, 0, 0, 0, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0];
    let mut big = ipv4_tcp(&[0xab; 1400]);
    big[8] = 3;
    fix_ipv4_checksum(&mut big);
    let packets = [
        ipv4_tcp(b""),
        ipv4_tcp(b"x"),
        ipv4_tcp(b"xy"),
        ipv4_tcp(b"xyz"),
        big,
        ipv4_icmp_with_options(),
        ipv6_udp(17, &[], b""),
        ipv6_udp(17, &[], &[7; 999]),
        ipv6_udp(0, &ext, b"with extension headers"),
    ];
    for suite in Suite::ALL {
        let mut p = pair(suite);
        // The server transmits under generation 1 once generation 2 exists.
        let gen2 = Generation {
            info: GenerationInfo {
                number: 2,
                spi: Spi::new(0xc0de_0002).expect("spi"),
                suite,
            },
            secret: Secret::from_bytes([0x27; 32]),
        };
        p.server
            .install(p.s_peer, &gen2, Time::ZERO)
            .expect("gen 2");
        p.client
            .install(p.c_peer, &gen2, Time::ZERO)
            .expect("gen 2");
        for packet in &packets {
            for server_sends in [false, true] {
                let (tx, tx_peer, rx) = if server_sends {
                    (&mut p.server, p.s_peer, &mut p.client)
                } else {
                    (&mut p.client, p.c_peer, &mut p.server)
                };
                let sealed = seal_transport(tx, tx_peer, packet, UdpPorts::ESP_IN_UDP)
                    .unwrap_or_else(|e| panic!("{suite}: seal: {e}"));
                // The IP header in front (protocol 17), then UDP 4500 → 4500, then ESP.
                let v6 = packet[0] >> 4 == 6;
                let h = if v6 {
                    packet.len() - usize::from(u16::from_be_bytes([packet[4], packet[5]]))
                        + if packet[6] == 0 { ext.len() } else { 0 }
                } else {
                    usize::from(packet[0] & 0x0f) * 4
                };
                assert!(sealed.len() <= packet.len() + TRANSPORT_OVERHEAD);
                if v6 {
                    assert_eq!(
                        usize::from(u16::from_be_bytes([sealed[4], sealed[5]])),
                        sealed.len() - 40
                    );
                    let src = &sealed[8..24];
                    let dst = &sealed[24..40];
                    assert_eq!(verify_l4(src, dst, 17, &sealed[h..]), 0, "UDP checksum");
                } else {
                    assert_eq!(sealed[9], 17);
                    assert_eq!(
                        usize::from(u16::from_be_bytes([sealed[2], sealed[3]])),
                        sealed.len()
                    );
                    assert_eq!(checksum(&sealed[..h], 0), 0, "IPv4 header checksum");
                    assert_eq!(
                        &sealed[h + 6..h + 8],
                        &[0, 0],
                        "UDP checksum zero over IPv4"
                    );
                }
                assert_eq!(&sealed[h..h + 4], &[0x11, 0x94, 0x11, 0x94]);
                assert_eq!(
                    usize::from(u16::from_be_bytes([sealed[h + 4], sealed[h + 5]])),
                    sealed.len() - h
                );
                // Only the payload is encrypted: no plaintext of it in the packet.
                let (next, opened) =
                    open_transport(rx, &sealed).unwrap_or_else(|e| panic!("{suite}: open: {e}"));
                assert_eq!(&opened, packet, "{suite}");
                let proto = if v6 {
                    if packet[6] == 0 { 17 } else { packet[6] }
                } else {
                    packet[9]
                };
                assert_eq!(next, NextHeader::Transport(proto));
            }
        }
    }
}

#[test]
fn a_nat_between_the_hosts_changes_addresses_and_checksums_are_fixed() {
    let mut p = pair(Suite::Aes256Gcm);
    let tcp = ipv4_tcp(b"through a NAT");
    let mut sealed =
        seal_transport(&mut p.client, p.c_peer, &tcp, UdpPorts::ESP_IN_UDP).expect("seal");
    // A NAT rewrites the source address and UDP port (and the IPv4 header checksum; the UDP
    // checksum is zero).
    sealed[12..16].copy_from_slice(&[203, 0, 113, 9]);
    sealed[20..22].copy_from_slice(&61000u16.to_be_bytes());
    fix_ipv4_checksum(&mut sealed);
    let (next, opened) = open_transport(&mut p.server, &sealed).expect("open");
    assert_eq!(next, NextHeader::Transport(6));
    assert_eq!(
        &opened[12..16],
        &[203, 0, 113, 9],
        "the received address is kept"
    );
    assert_eq!(checksum(&opened[..20], 0), 0);
    assert_eq!(
        verify_l4(&opened[12..16], &opened[16..20], 6, &opened[20..]),
        0,
        "TCP checksum recomputed over the addresses received"
    );
    assert_eq!(&opened[40..], b"through a NAT");
    // Everything else as sent.
    assert_eq!(&opened[..10], &tcp[..10]);
    assert_eq!(&opened[16..20], &tcp[16..20]);
    assert_eq!(&opened[20..36], &tcp[20..36]);

    // A UDP datagram over IPv4 without a checksum keeps none.
    let mut udp = ipv4_tcp(b"12345678");
    udp[9] = 17;
    udp[20..28].copy_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 28, 0, 0]);
    udp.truncate(20 + 28);
    udp[2..4].copy_from_slice(&48u16.to_be_bytes());
    fix_ipv4_checksum(&mut udp);
    let mut sealed =
        seal_transport(&mut p.client, p.c_peer, &udp, UdpPorts::ESP_IN_UDP).expect("seal");
    sealed[12] = 100;
    fix_ipv4_checksum(&mut sealed);
    let (_, opened) = open_transport(&mut p.server, &sealed).expect("open");
    assert_eq!(&opened[26..28], &[0, 0]);
}

#[test]
fn the_receiver_says_which_mode_a_packet_is_in() {
    let mut p = pair(Suite::Aes128Gcm);
    // A tunnel-mode packet (next header 4) in an IP/UDP packet: the transport-mode receiver
    // gives the inner packet, named IPv4.
    let inner = ipv4_tcp(b"tunnelled");
    let mut esp = vec![0u8; ESP_HEADER_LEN + inner.len() + MAX_OVERHEAD];
    esp[ESP_HEADER_LEN..ESP_HEADER_LEN + inner.len()].copy_from_slice(&inner);
    let n = p
        .client
        .seal(p.c_peer, &mut esp, inner.len(), NextHeader::Ipv4)
        .expect("tunnel seal");
    esp.truncate(n);
    let mut outer = ipv4_tcp(b"");
    outer.truncate(20);
    outer[9] = 17;
    outer[2..4].copy_from_slice(&((28 + n) as u16).to_be_bytes());
    fix_ipv4_checksum(&mut outer);
    outer.extend([0x11, 0x94, 0x11, 0x94]);
    outer.extend(((8 + n) as u16).to_be_bytes());
    outer.extend([0, 0]);
    outer.extend(&esp);
    assert_eq!(
        open_transport(&mut p.server, &outer),
        Ok((NextHeader::Ipv4, inner.clone()))
    );
    // A transport-mode packet handed to the tunnel-mode receiver (the UDP payload alone) is
    // refused by its next header, and counted.
    let sealed =
        seal_transport(&mut p.client, p.c_peer, &inner, UdpPorts::ESP_IN_UDP).expect("seal");
    let mut udp_payload = sealed[28..].to_vec();
    let before = p.server.drops().get(DropReason::BadNextHeader);
    assert_eq!(
        p.server.open(&mut udp_payload),
        Opened::Drop(DropReason::BadNextHeader)
    );
    assert_eq!(p.server.drops().get(DropReason::BadNextHeader), before + 1);
}

#[test]
fn what_transport_mode_does_not_take_is_refused_by_name() {
    let mut p = pair(Suite::Aes128Gcm);
    let mut frag = ipv4_tcp(b"frag");
    frag[6] = 0x20;
    fix_ipv4_checksum(&mut frag);
    let mut ipip = ipv4_tcp(b"");
    ipip.truncate(20);
    ipip[9] = 4;
    let inner = ipv4_tcp(b"x");
    ipip.extend(&inner);
    ipip[2..4].copy_from_slice(&((20 + inner.len()) as u16).to_be_bytes());
    fix_ipv4_checksum(&mut ipip);
    let routing = ipv6_udp(43, &[17, 0, 0, 0, 0, 0, 0, 0], b"r");
    let frag6 = ipv6_udp(44, &[17, 0, 0, 1, 0, 0, 0, 0], b"f");
    let mut bad_len = ipv4_tcp(b"abc");
    bad_len.push(0);
    let cases: [(&[u8], SealError); 6] = [
        (&frag, SealError::Fragment),
        (&ipip, SealError::UnsupportedProtocol),
        (&routing, SealError::UnsupportedExtension),
        (&frag6, SealError::Fragment),
        (&bad_len, SealError::BadInnerPacket),
        (&[0x45, 0, 0], SealError::BadInnerPacket),
    ];
    for (packet, err) in cases {
        assert_eq!(
            seal_transport(&mut p.client, p.c_peer, packet, UdpPorts::ESP_IN_UDP),
            Err(err)
        );
        assert!(!err.to_string().is_empty());
    }
    // Too small a buffer, unknown peer: refused, packet untouched, no sequence number spent.
    let tcp = ipv4_tcp(b"hello");
    let mut buf = vec![0u8; TRANSPORT_HEADROOM + tcp.len() + 10];
    buf[TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + tcp.len()].copy_from_slice(&tcp);
    assert_eq!(
        p.client
            .seal_transport(p.c_peer, &mut buf, tcp.len(), UdpPorts::ESP_IN_UDP),
        Err(SealError::BufferTooSmall)
    );
    assert_eq!(
        seal_transport(&mut p.client, PeerId(77), &tcp, UdpPorts::ESP_IN_UDP),
        Err(SealError::UnknownPeer)
    );
    let sealed = seal_transport(&mut p.client, p.c_peer, &tcp, UdpPorts::ESP_IN_UDP).expect("seal");
    assert_eq!(
        &sealed[32..36],
        &[0, 0, 0, 1],
        "the first sequence number is still 1"
    );
}

#[test]
fn bad_input_is_dropped_and_counted() {
    let mut p = pair(Suite::ChaCha20Poly1305);
    let sealed4 = seal_transport(
        &mut p.client,
        p.c_peer,
        &ipv4_tcp(b"data"),
        UdpPorts::ESP_IN_UDP,
    )
    .expect("seal");
    let sealed6 = seal_transport(
        &mut p.client,
        p.c_peer,
        &ipv6_udp(17, &[], b"data"),
        UdpPorts::ESP_IN_UDP,
    )
    .expect("seal");
    for sealed in [&sealed4, &sealed6] {
        // Every truncation is dropped, never opened, never a panic.
        for n in 0..sealed.len() {
            assert!(
                open_transport(&mut p.server, &sealed[..n]).is_err(),
                "prefix {n}"
            );
        }
        // Every single-byte edit of the UDP payload (the ESP packet) fails; edits of the
        // IP and UDP headers are refused by them or by the ICV, or (TTL, flow label, hop
        // limit, UDP ports and checksum: not authenticated, as in RFC 4303 transport mode)
        // change nothing protected.
        let h = if sealed[0] >> 4 == 4 { 20 } else { 40 };
        for i in 0..sealed.len() {
            let mut edited = sealed.to_vec();
            edited[i] ^= 0x01;
            if let Ok((_, opened)) = open_transport(&mut p.server, &edited) {
                assert!(i < h + 8, "an edit of ESP byte {i} opened");
                assert!(opened.len() > h);
            }
        }
    }
    // A replay, after the first opening.
    let mut q = pair(Suite::Aes128Gcm);
    let sealed = seal_transport(
        &mut q.client,
        q.c_peer,
        &ipv4_tcp(b"once"),
        UdpPorts::ESP_IN_UDP,
    )
    .expect("seal");
    assert!(open_transport(&mut q.server, &sealed).is_ok());
    assert_eq!(
        open_transport(&mut q.server, &sealed),
        Err(DropReason::Replay)
    );
    // Unknown SPI, not UDP, a keepalive, the non-ESP marker, a fragment.
    let mut unknown = sealed.clone();
    unknown[28..32].copy_from_slice(&0x0bad_0badu32.to_be_bytes());
    let mut not_udp = sealed.clone();
    not_udp[9] = 6;
    fix_ipv4_checksum(&mut not_udp);
    let mut keepalive = sealed[..29].to_vec();
    keepalive[28] = 0xff;
    keepalive[2..4].copy_from_slice(&29u16.to_be_bytes());
    keepalive[24..26].copy_from_slice(&9u16.to_be_bytes());
    fix_ipv4_checksum(&mut keepalive);
    let mut marker = sealed.clone();
    marker[28..32].copy_from_slice(&[0, 0, 0, 0]);
    let mut fragment = sealed.clone();
    fragment[6] |= 0x20;
    fix_ipv4_checksum(&mut fragment);
    let mut bad_checksum = sealed.clone();
    bad_checksum[10] ^= 1;
    let cases = [
        (unknown, DropReason::UnknownSpi),
        (not_udp, DropReason::NotEsp),
        (keepalive, DropReason::Keepalive),
        (marker, DropReason::NotEsp),
        (fragment, DropReason::Fragment),
        (bad_checksum, DropReason::Malformed),
    ];
    for (packet, reason) in cases {
        let before = q.server.drops().get(reason);
        assert_eq!(open_transport(&mut q.server, &packet), Err(reason));
        assert_eq!(q.server.drops().get(reason), before + 1, "{reason} counted");
    }
}
