//! The decisions of three gateways, without rings or privileges: site A (10.1.0.0/24,
//! fd01::/64) and site C (10.3.0.0/24) are clients of hub B (10.2.0.0/24, fd02::/64), each
//! pair with its own SA (the fixture: [`crate::testing`]). Frames go through `Decider::inner`
//! at one gateway and the sealed result through `Decider::outer` at the next, as the workers
//! would move them.

use super::*;
use crate::gateway::{ICMP_PER_SECOND, Route};
use crate::net::Mac;
use crate::testing::{HEADROOM, HOST_A, HOST_B, INNER_MAC, OUTER_MAC, TestFrame, sites};
use pktcrypt_core::wire::OuterHeader;
use pktcrypt_core::wire::ip::checksum;

fn a(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// A site's outer address (IPv4).
fn outer_addr(site: usize) -> SocketAddr {
    crate::testing::outer_addr(site, false)
}

/// An IPv4 packet of `len` bytes (UDP, payload a counter), with or without DF.
fn ipv4(src: &str, dst: &str, len: usize, df: bool) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (a(src), a(dst)) else {
        panic!("IPv4 addresses")
    };
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&[0x12, 0x34]);
    p[6..8].copy_from_slice(&[if df { 0x40 } else { 0 }, 0]);
    p[8] = 64;
    p[9] = 17;
    p[10..12].copy_from_slice(&[0, 0]);
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    let c = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

/// An IPv6 packet of `len` bytes (UDP).
fn ipv6(src: &str, dst: &str, len: usize) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (a(src), a(dst)) else {
        panic!("IPv6 addresses")
    };
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&s.octets());
    p[24..40].copy_from_slice(&d.octets());
    p
}

/// An Ethernet frame with VLAN `tags` (TPID, TCI) around an IP packet.
fn eth(dst: Mac, src: Mac, tags: &[(u16, u16)], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    let ethertype: u16 = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

#[test]
fn a_packet_to_a_protected_prefix_is_sealed_and_delivered_at_the_far_side() {
    let (mut ga, mut gb, _) = sites();
    gb.paths.inner_neighbours.insert(a("10.2.0.9"), HOST_B);
    let ip = ipv4("10.1.0.5", "10.2.0.9", 300, true);
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &ip));
    let Decision::Outer { .. } = d else {
        panic!("sealed and sent outside: {d:?}")
    };
    let wire = f.out(d).to_vec();
    // Ethernet to the hub's outer MAC, IPv4 to its address, UDP to 4500, ESP.
    assert_eq!(&wire[0..6], &OUTER_MAC[1]);
    assert_eq!(&wire[6..12], &OUTER_MAC[0]);
    assert_eq!(&wire[12..14], &[0x08, 0x00]);
    assert_eq!(&wire[14 + 16..14 + 20], &[192, 0, 2, 2]);
    assert_eq!(&wire[14 + 22..14 + 24], &4500u16.to_be_bytes());
    assert_eq!(wire.len(), 14 + 28 + esp::esp_len(ip.len()));
    assert_eq!(ga.count(|s| &s.bytes_sealed), ip.len() as u64);

    let (d, f) = gb.outer(&wire);
    let Decision::Inner { .. } = d else {
        panic!("opened and delivered inside: {d:?}")
    };
    let delivered = f.out(d);
    assert_eq!(&delivered[0..6], &HOST_B);
    assert_eq!(&delivered[6..12], &INNER_MAC[1]);
    assert_eq!(&delivered[12..14], &[0x08, 0x00]);
    assert_eq!(&delivered[14..], &ip[..]);
    assert_eq!(gb.count(|s| &s.bytes_opened), ip.len() as u64);
    // The first packet under a generation is reported to the control thread.
    let messages: Vec<ToControl> = gb.decider.messages().collect();
    assert!(
        matches!(messages[..], [ToControl::Observed { info, from }]
            if info.peer == gb.peer(0) && from == outer_addr(0)),
        "{messages:?}"
    );
    // The next one within the interval is not.
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &ip));
    assert!(matches!(gb.outer(f.out(d)).0, Decision::Inner { .. }));
    assert_eq!(gb.decider.messages().count(), 0);
}

/// Workers with source ports of their own: one peer's packets leave as several UDP flows (to
/// the one ESP port), and the receiver opens every one of them under the same peer, reporting
/// where each came from; over IPv6 the UDP checksum covers the port.
#[test]
fn each_worker_sends_from_its_own_source_port_and_the_receiver_takes_every_one() {
    for v6 in [false, true] {
        use crate::testing::{Gateway, Keys};
        let mut ga = Gateway::new(0, Keys::new(0), v6);
        let mut gb = Gateway::new(1, Keys::new(1), v6);
        let (src, dst) = if v6 {
            ("fd01::5", "fd02::9")
        } else {
            ("10.1.0.5", "10.2.0.9")
        };
        gb.paths.inner_neighbours.insert(a(dst), HOST_B);
        let ip = if v6 {
            ipv6(src, dst, 200)
        } else {
            ipv4(src, dst, 200, true)
        };
        let frame = eth(INNER_MAC[0], HOST_A, &[], &ip);
        let udp_at = 14 + if v6 { 40 } else { 20 };
        let mut seen = Vec::new();
        for (worker, port) in [(0, None), (1, Some(4501)), (2, Some(40_000))] {
            ga.source_port = port;
            let (d, f) = ga.inner(&frame);
            let wire = f.out(d).to_vec();
            let sport = u16::from_be_bytes([wire[udp_at], wire[udp_at + 1]]);
            assert_eq!(sport, port.unwrap_or(4500), "worker {worker}");
            assert_eq!(&wire[udp_at + 2..udp_at + 4], &4500u16.to_be_bytes());
            if v6 {
                // The checksum over the pseudo-header and the whole datagram folds to zero.
                let udp = &wire[udp_at..];
                let mut pseudo = wire[14 + 8..14 + 40].to_vec();
                pseudo.extend_from_slice(&[0, 0]);
                pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 17]);
                pseudo.extend_from_slice(udp);
                assert_eq!(checksum(&pseudo, 0), 0, "worker {worker}");
            }
            let (d, _) = gb.outer(&wire);
            assert!(
                matches!(d, Decision::Inner { .. }),
                "worker {worker}: {d:?}"
            );
            // Sampled: the first packet, then one per interval.
            seen.extend(gb.decider.messages());
            gb.now += OBSERVE_INTERVAL;
        }
        let froms: Vec<u16> = seen
            .iter()
            .map(|m| match m {
                ToControl::Observed { info, from } => {
                    assert_eq!(info.peer, gb.peer(0));
                    assert_eq!(from.ip(), crate::testing::outer_addr(0, v6).ip());
                    from.port()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(froms, [4500, 4501, 40_000], "v6 {v6}");
        assert_eq!(gb.count(|s| &s.bytes_opened), 3 * ip.len() as u64);
    }
}

#[test]
fn ipv6_without_a_neighbour_goes_to_the_kernel() {
    let (mut ga, mut gb, _) = sites();
    let ip = ipv6("fd01::5", "fd02::9", 200);
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &ip));
    assert!(matches!(d, Decision::Outer { .. }), "{d:?}");
    let (d, f) = gb.outer(f.out(d));
    assert_eq!(
        d,
        Decision::Kernel {
            at: HEADROOM + 14 + 28 + ESP_HEADER_LEN,
            len: ip.len(),
            dst: a("fd02::9"),
        }
    );
    assert_eq!(f.out(d), &ip[..]);
}

#[test]
fn only_protected_prefixes_with_a_path_and_a_next_hop_are_sealed() {
    let (mut ga, _, _) = sites();
    // Not a protected prefix.
    let (d, _) = ga.inner(&eth(
        INNER_MAC[0],
        HOST_A,
        &[],
        &ipv4("10.1.0.5", "8.8.8.8", 100, true),
    ));
    assert_eq!(d, Decision::Drop(Dropped::NoRoute));
    assert_eq!(ga.count(|s| &s.no_route), 1);
    // Not IP, truncated, a length beyond the frame.
    let good = eth(
        INNER_MAC[0],
        HOST_A,
        &[],
        &ipv4("10.1.0.5", "10.2.0.9", 100, true),
    );
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut long = good.clone();
    long[14 + 2..14 + 4].copy_from_slice(&200u16.to_be_bytes());
    for frame in [&arp[..], &good[..30], &long[..]] {
        assert_eq!(ga.inner(frame).0, Decision::Drop(Dropped::Malformed));
    }
    assert_eq!(ga.count(|s| &s.malformed), 3);
    // The peer's next hop unresolved.
    let b = ga.peer(1);
    ga.paths.peers.get_mut(&b.0).expect("path").mac = None;
    assert_eq!(ga.inner(&good).0, Decision::Drop(Dropped::NoNeighbour));
    assert_eq!(ga.count(|s| &s.no_neighbour), 1);
    // No path to the peer at all.
    ga.paths.peers.clear();
    assert_eq!(ga.inner(&good).0, Decision::Drop(Dropped::NoRoute));
    assert_eq!(ga.count(|s| &s.no_route), 2);
    assert_eq!(ga.count(|s| &s.bytes_sealed), 0);
}

/// The next-hop MTU an answer carries for an outer MTU of 1400 over IPv4: 1400 minus outer
/// IPv4/UDP (28), ESP header (16), ICV (16) and trailer (2), rounded down to 4.
const FITS_1400: u16 = 1336;

#[test]
fn too_big_packets_are_answered_with_icmp_back_to_the_sender() {
    let (mut ga, _, _) = sites();
    ga.paths.outer_mtu = 1400;
    // The largest size the answer names fits.
    let fits = ipv4("10.1.0.5", "10.2.0.9", usize::from(FITS_1400), true);
    let (d, _) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &fits));
    assert!(matches!(d, Decision::Outer { .. }), "{d:?}");
    // IPv4 with DF: "fragmentation needed" from our inner address to the sender.
    let big = ipv4("10.1.0.5", "10.2.0.9", 1400, true);
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &big));
    let Decision::Icmp { .. } = d else {
        panic!("answered: {d:?}")
    };
    let answer = f.out(d);
    assert_eq!(&answer[0..6], &HOST_A, "to the sender's MAC");
    assert_eq!(&answer[6..12], &INNER_MAC[0]);
    assert_eq!(&answer[12..14], &[0x08, 0x00]);
    let ip = &answer[14..];
    assert_eq!(&ip[12..16], &[10, 1, 0, 1]);
    assert_eq!(&ip[16..20], &[10, 1, 0, 5]);
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(&ip[20..22], &[3, 4], "fragmentation needed");
    assert_eq!(&ip[26..28], &FITS_1400.to_be_bytes());
    assert_eq!(&ip[28..48], &big[..20], "quotes the original");
    assert_eq!(ga.count(|s| &s.too_big), 0);
    // IPv4 without DF: dropped (pktcrypt does not fragment).
    let no_df = ipv4("10.1.0.5", "10.2.0.9", 1400, false);
    let (d, _) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &no_df));
    assert_eq!(d, Decision::Drop(Dropped::TooBig));
    assert_eq!(ga.count(|s| &s.too_big), 1);
    // IPv6: "packet too big".
    let big6 = ipv6("fd01::5", "fd02::9", 1400);
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &big6));
    let answer = f.out(d);
    assert!(matches!(d, Decision::Icmp { .. }), "{d:?}");
    assert_eq!(&answer[0..6], &HOST_A);
    assert_eq!(&answer[12..14], &[0x86, 0xdd]);
    let ip = &answer[14..];
    assert_eq!(ip[6], 58, "ICMPv6");
    assert_eq!(&ip[24..40], &big6[8..24], "to the sender");
    assert_eq!(&ip[40..42], &[2, 0], "packet too big");
    assert_eq!(&ip[44..48], &u32::from(FITS_1400).to_be_bytes());
}

#[test]
fn too_big_answers_are_rate_limited() {
    let (mut ga, _, _) = sites();
    ga.paths.outer_mtu = 1400;
    let big = eth(
        INNER_MAC[0],
        HOST_A,
        &[],
        &ipv4("10.1.0.5", "10.2.0.9", 1400, true),
    );
    let answered = (0..ICMP_PER_SECOND + 10)
        .filter(|_| matches!(ga.inner(&big).0, Decision::Icmp { .. }))
        .count();
    assert_eq!(answered, ICMP_PER_SECOND as usize);
    assert_eq!(ga.count(|s| &s.icmp_rate_limited), 10);
    assert_eq!(ga.count(|s| &s.too_big), 10);
    // A second later the bucket is full again.
    ga.now += std::time::Duration::from_secs(1);
    assert!(matches!(ga.inner(&big).0, Decision::Icmp { .. }));
}

#[test]
fn the_inner_policy_drops_spoofed_sources_and_foreign_destinations() {
    let (_, mut gb, mut gc) = sites();
    gb.paths.inner_neighbours.insert(a("10.2.0.9"), HOST_B);
    // C claims a source of A's site: the hub drops it.
    let spoofed = ipv4("10.1.0.5", "10.2.0.9", 100, true);
    let (d, f) = gc.inner(&eth(INNER_MAC[2], HOST_A, &[], &spoofed));
    let (d, _) = gb.outer(f.out(d));
    assert_eq!(d, Decision::Drop(Dropped::Policy));
    assert_eq!(gb.count(|s| &s.policy), 1);
    // C sends to an address behind no one (C routes it, the hub refuses it).
    gc.paths.routes.push(Route {
        net: a("192.168.0.0"),
        len: 16,
        peer: gc.peer(1),
        path: gc.peer(1).0,
    });
    let foreign = ipv4("10.3.0.5", "192.168.1.1", 100, true);
    let (d, f) = gc.inner(&eth(INNER_MAC[2], HOST_A, &[], &foreign));
    let (d, _) = gb.outer(f.out(d));
    assert_eq!(d, Decision::Drop(Dropped::Policy));
    // The control: C's own source to the hub's site.
    let fine = ipv4("10.3.0.5", "10.2.0.9", 100, true);
    let (d, f) = gc.inner(&eth(INNER_MAC[2], HOST_A, &[], &fine));
    let (d, _) = gb.outer(f.out(d));
    assert!(matches!(d, Decision::Inner { .. }), "{d:?}");
    assert_eq!(gb.count(|s| &s.policy), 2);
}

#[test]
fn a_hub_reseals_for_the_other_site_and_never_back_to_the_sender() {
    let (mut ga, mut gb, mut gc) = sites();
    gc.paths.inner_neighbours.insert(a("10.3.0.7"), HOST_B);
    let ip = ipv4("10.1.0.5", "10.3.0.7", 500, true);
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &ip));
    let wire = f.out(d).to_vec();
    // Not a hub: refused.
    let (d, _) = gb.outer(&wire);
    assert_eq!(d, Decision::Drop(Dropped::Policy));
    assert_eq!(gb.count(|s| &s.hairpinned), 0);
    // A hub: sealed again for C (a fresh packet: the refused one was authenticated, its
    // sequence number is spent).
    gb.paths.hub = true;
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &ip));
    let (d, f) = gb.outer(f.out(d));
    let Decision::Outer { .. } = d else {
        panic!("re-sealed: {d:?}")
    };
    assert_eq!(gb.count(|s| &s.hairpinned), 1);
    let resealed = f.out(d).to_vec();
    assert_eq!(&resealed[0..6], &OUTER_MAC[2], "to C's outer MAC");
    assert_eq!(&resealed[14 + 16..14 + 20], &[192, 0, 2, 3]);
    let (d, f) = gc.outer(&resealed);
    assert!(matches!(d, Decision::Inner { .. }), "{d:?}");
    assert_eq!(&f.out(d)[14..], &ip[..]);
    // A packet from A to A's own site is not sent back to A.
    let back = ipv4("10.1.0.5", "10.1.0.6", 100, true);
    ga.paths.routes.insert(
        0,
        Route {
            net: a("10.1.0.6"),
            len: 32,
            peer: ga.peer(1),
            path: ga.peer(1).0,
        },
    );
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &back));
    let (d, _) = gb.outer(f.out(d));
    assert_eq!(d, Decision::Drop(Dropped::Policy));
    assert_eq!(gb.count(|s| &s.hairpinned), 1);
}

#[test]
fn control_messages_go_to_the_control_thread_and_leave_no_plaintext() {
    let (mut ga, mut gb, _) = sites();
    let b = ga.peer(1);
    let message = b"a control message".to_vec();
    let mut esp_packet = vec![0u8; 200];
    let n = ga
        .keys
        .engine
        .seal_control(b, &message, &mut esp_packet)
        .expect("sealed");
    let header = ga.paths.peers[&b.0].header;
    let mut wire = vec![0u8; 14 + header.len() + n];
    wire[14 + header.len()..].copy_from_slice(&esp_packet[..n]);
    header.write(&mut wire[14..]).expect("header");
    wire[12..14].copy_from_slice(&[0x08, 0x00]);
    let (d, f) = gb.outer(&wire);
    assert_eq!(d, Decision::Control);
    assert_eq!(gb.count(|s| &s.control), 1);
    let messages: Vec<ToControl> = gb.decider.messages().collect();
    let [
        ToControl::Control {
            message: got, from, ..
        },
    ] = &messages[..]
    else {
        panic!("{messages:?}")
    };
    assert_eq!(&got[..], &message[..]);
    assert_eq!(*from, outer_addr(0));
    let at = HEADROOM + 14 + 28 + ESP_HEADER_LEN;
    assert!(f.buf[at..at + message.len()].iter().all(|b| *b == 0));
}

#[test]
fn outer_frames_that_are_not_esp_in_udp_are_dropped_and_counted() {
    let (mut ga, mut gb, _) = sites();
    let (d, f) = ga.inner(&eth(
        INNER_MAC[0],
        HOST_A,
        &[],
        &ipv4("10.1.0.5", "10.2.0.9", 100, true),
    ));
    let wire = f.out(d).to_vec();
    // Fragmented.
    let mut frag = wire.clone();
    frag[14 + 6] |= 0x20;
    assert_eq!(gb.outer(&frag).0, Decision::Drop(Dropped::Fragmented));
    assert_eq!(gb.count(|s| &s.fragmented), 1);
    // Another UDP port (the IPv4 header checksum does not cover it), a truncated IP header.
    let mut port = wire.clone();
    port[14 + 22..14 + 24].copy_from_slice(&53u16.to_be_bytes());
    assert_eq!(gb.outer(&port).0, Decision::Drop(Dropped::Malformed));
    assert_eq!(
        gb.outer(&wire[..14 + 19]).0,
        Decision::Drop(Dropped::Malformed)
    );
    assert_eq!(gb.count(|s| &s.malformed), 2);
    // A NAT keepalive, an unknown SPI, a forged tag: ESP drops.
    let header = OuterHeader::new(outer_addr(0), outer_addr(1), 64).expect("header");
    let mut keepalive = vec![0u8; 14 + 28 + 1];
    keepalive[14 + 28] = 0xff;
    header.write(&mut keepalive[14..]).expect("header");
    keepalive[12..14].copy_from_slice(&[0x08, 0x00]);
    assert_eq!(
        gb.outer(&keepalive).0,
        Decision::Drop(Dropped::Esp(DropReason::Keepalive))
    );
    let mut unknown = wire.clone();
    unknown[14 + 28..14 + 32].copy_from_slice(&0x7777_7777u32.to_be_bytes());
    let mut forged = wire.clone();
    *forged.last_mut().expect("tag") ^= 1;
    let (d1, _) = gb.outer(&unknown);
    let (d2, _) = gb.outer(&forged);
    assert!(matches!(d1, Decision::Drop(Dropped::Esp(_))), "{d1:?}");
    assert!(matches!(d2, Decision::Drop(Dropped::Esp(_))), "{d2:?}");
    assert_eq!(gb.decider.drops().total(), 3);
    // The genuine packet still opens (nothing above moved the window).
    assert!(matches!(gb.outer(&wire).0, Decision::Kernel { .. }));
}

#[test]
fn a_batch_gets_one_decision_per_frame_in_order() {
    let (mut ga, mut gb, _) = sites();
    ga.paths.outer_mtu = 1400;
    let frames = [
        ipv4("10.1.0.5", "10.2.0.9", 100, true),
        ipv4("10.1.0.5", "8.8.8.8", 100, true),
        ipv4("10.1.0.5", "10.2.0.9", 1400, true),
        ipv6("fd01::5", "fd03::7", 100),
        ipv4("10.1.0.5", "10.3.0.9", 100, true),
    ];
    let mut batch: Vec<TestFrame> = frames
        .iter()
        .map(|ip| TestFrame::new(&eth(INNER_MAC[0], HOST_A, &[], ip)))
        .collect();
    let ds = ga.decide(false, &mut batch);
    assert!(matches!(ds[0], Decision::Outer { .. }));
    assert_eq!(ds[1], Decision::Drop(Dropped::NoRoute));
    assert!(matches!(ds[2], Decision::Icmp { .. }));
    assert!(matches!(ds[3], Decision::Outer { .. }));
    assert!(matches!(ds[4], Decision::Outer { .. }));
    // The hub opens them as one batch, in order.
    gb.paths.hub = true;
    let mut wire: Vec<TestFrame> = [0, 3, 4]
        .iter()
        .map(|&k| TestFrame::new(batch[k].out(ds[k])))
        .collect();
    let ds = gb.decide(true, &mut wire);
    assert!(matches!(ds[0], Decision::Kernel { dst, .. } if dst == a("10.2.0.9")));
    assert!(matches!(ds[1], Decision::Outer { .. }));
    assert!(matches!(ds[2], Decision::Outer { .. }));
    assert_eq!(gb.count(|s| &s.hairpinned), 2);
}

/// Finding 9: a too-big answer to a VLAN-tagged frame took its destination MAC from the bytes
/// 14 before the IP header (inside the tags) and went out untagged.
#[test]
fn too_big_answers_to_tagged_frames_go_back_to_the_sender_under_the_same_tags() {
    let (mut ga, mut gb, _) = sites();
    ga.paths.outer_mtu = 1400;
    let big4 = ipv4("10.1.0.5", "10.2.0.9", 1400, true);
    let big6 = ipv6("fd01::5", "fd02::9", 1400);
    let dot1q: &[(u16, u16)] = &[(0x8100, 42)];
    let qinq: &[(u16, u16)] = &[(0x88a8, 7), (0x8100, 0x2000 | 42)];
    for (tags, big) in [(dot1q, &big4), (qinq, &big4), (dot1q, &big6), (qinq, &big6)] {
        let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, tags, big));
        let Decision::Icmp { .. } = d else {
            panic!("answered: {d:?}")
        };
        let answer = f.out(d);
        let l3 = 14 + 4 * tags.len();
        assert_eq!(&answer[0..6], &HOST_A, "to the sender's MAC");
        assert_eq!(&answer[6..12], &INNER_MAC[0], "from ours");
        for (k, (tpid, tci)) in tags.iter().enumerate() {
            assert_eq!(&answer[12 + 4 * k..14 + 4 * k], &tpid.to_be_bytes());
            assert_eq!(&answer[14 + 4 * k..16 + 4 * k], &tci.to_be_bytes());
        }
        let ip = &answer[l3..];
        if big[0] >> 4 == 4 {
            assert_eq!(&answer[l3 - 2..l3], &[0x08, 0x00]);
            assert_eq!(&ip[16..20], &[10, 1, 0, 5]);
            assert_eq!(&ip[20..22], &[3, 4]);
            assert_eq!(&ip[26..28], &FITS_1400.to_be_bytes());
        } else {
            assert_eq!(&answer[l3 - 2..l3], &[0x86, 0xdd]);
            assert_eq!(&ip[24..40], &big[8..24]);
            assert_eq!(&ip[40..42], &[2, 0]);
            assert_eq!(&ip[44..48], &u32::from(FITS_1400).to_be_bytes());
        }
    }
    // A tagged frame that fits is sealed as an untagged one would be.
    let ip = ipv4("10.1.0.5", "10.2.0.9", 300, true);
    let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, qinq, &ip));
    let wire = f.out(d).to_vec();
    assert_eq!(&wire[12..14], &[0x08, 0x00]);
    let (d, f) = gb.outer(&wire);
    assert!(matches!(d, Decision::Kernel { .. }), "{d:?}");
    assert_eq!(f.out(d), &ip[..]);
}

/// A packet whose next hop is not resolved is dropped before it is sealed: it uses no
/// sequence number (issue 13: the MAC was checked only after sealing).
#[test]
fn an_unresolved_next_hop_costs_no_sequence_number() {
    let (mut ga, _, _) = sites();
    let good = eth(
        INNER_MAC[0],
        HOST_A,
        &[],
        &ipv4("10.1.0.5", "10.2.0.9", 100, true),
    );
    let seq = |d: Decision, f: &TestFrame| match d {
        Decision::Outer { at, .. } => {
            // Outer Ethernet (14), IPv4 (20), UDP (8), then SPI (4) and sequence number (4).
            let s = at + 14 + 20 + 8 + 4;
            u32::from_be_bytes(f.buf[s..s + 4].try_into().expect("4 bytes"))
        }
        other => panic!("not sealed: {other:?}"),
    };
    let (d, f) = ga.inner(&good);
    let first = seq(d, &f);
    let b = ga.peer(1);
    let mac = ga.paths.peers[&b.0].mac;
    ga.paths.peers.get_mut(&b.0).expect("path").mac = None;
    for _ in 0..3 {
        assert_eq!(ga.inner(&good).0, Decision::Drop(Dropped::NoNeighbour));
    }
    ga.paths.peers.get_mut(&b.0).expect("path").mac = mac;
    let (d, f) = ga.inner(&good);
    assert_eq!(
        seq(d, &f),
        first + 1,
        "sequence numbers burned by unsent packets"
    );
    assert_eq!(ga.count(|s| &s.no_neighbour), 3);
}

/// The same at a hub: a packet to re-seal for a site whose next hop is not resolved is dropped
/// before it is sealed, and one for a site with no path at all too (it used to be sealed, and
/// its sequence number spent, before either was looked at).
#[test]
fn a_hub_spends_no_sequence_number_on_a_packet_it_cannot_forward() {
    let (mut ga, mut gb, mut gc) = sites();
    gb.paths.hub = true;
    gc.paths.inner_neighbours.insert(a("10.3.0.7"), HOST_B);
    let ip = ipv4("10.1.0.5", "10.3.0.7", 200, true);
    let mut from_a = || {
        let (d, f) = ga.inner(&eth(INNER_MAC[0], HOST_A, &[], &ip));
        f.out(d).to_vec()
    };
    let c = gb.peer(2);
    let path = gb.paths.peers[&c.0];
    gb.paths.peers.get_mut(&c.0).expect("path").mac = None;
    for _ in 0..3 {
        assert_eq!(gb.outer(&from_a()).0, Decision::Drop(Dropped::NoNeighbour));
    }
    gb.paths.peers.remove(&c.0);
    assert_eq!(gb.outer(&from_a()).0, Decision::Drop(Dropped::SealFailed));
    assert_eq!(gb.count(|s| &s.no_neighbour), 3);
    assert_eq!(gb.count(|s| &s.seal_failed), 1);
    assert_eq!(gb.count(|s| &s.hairpinned), 4);
    gb.paths.peers.insert(c.0, path);
    let (d, f) = gb.outer(&from_a());
    let Decision::Outer { at, .. } = d else {
        panic!("re-sealed: {d:?}")
    };
    // Outer Ethernet (14), IPv4 (20), UDP (8), then SPI (4) and sequence number (4).
    let s = at + 14 + 20 + 8 + 4;
    let seq = u32::from_be_bytes(f.buf[s..s + 4].try_into().expect("4 bytes"));
    assert_eq!(seq, 1, "the first packet B sealed for C");
    let (d, f) = gc.outer(f.out(d));
    assert!(matches!(d, Decision::Inner { .. }), "{d:?}");
    assert_eq!(&f.out(d)[14..], &ip[..]);
}

/// A frame with no room in front of its IP header for the ESP header (never a UMEM frame:
/// the kernel leaves headroom) is not sealed.
#[test]
fn a_frame_without_headroom_is_not_sealed() {
    let (mut ga, _, _) = sites();
    let frame = eth(
        INNER_MAC[0],
        HOST_A,
        &[],
        &ipv4("10.1.0.5", "10.2.0.9", 100, true),
    );
    let mut buf = frame.clone();
    buf.resize(crate::testing::FRAME, 0);
    let cx = Context {
        keys: &ga.keys.plane,
        paths: &ga.paths,
        stats: &ga.stats,
        now: ga.now,
        source_port: None,
    };
    let mut frames = [FrameBuf {
        buf: &mut buf,
        off: 0,
        len: frame.len(),
    }];
    let mut out = Vec::new();
    ga.decider.inner(&cx, &mut frames, &mut out);
    assert_eq!(out, [Decision::Drop(Dropped::SealFailed)]);
    assert_eq!(ga.count(|s| &s.seal_failed), 1);
    assert_eq!(ga.count(|s| &s.bytes_sealed), 0);
}

/// A route to a peer without a transmit key is no route: nothing to seal under.
#[test]
fn a_route_to_a_peer_without_keys_is_no_route() {
    let (mut ga, _, _) = sites();
    let nobody = PeerId(ga.peer(1).0 + 100);
    ga.paths.routes.insert(
        0,
        Route {
            net: a("10.9.0.0"),
            len: 24,
            peer: nobody,
            path: ga.peer(1).0,
        },
    );
    let frame = eth(
        INNER_MAC[0],
        HOST_A,
        &[],
        &ipv4("10.1.0.5", "10.9.0.1", 100, true),
    );
    assert_eq!(ga.inner(&frame).0, Decision::Drop(Dropped::NoRoute));
    assert_eq!(ga.count(|s| &s.no_route), 1);
}
