//! ESP transport mode through `control::Endpoint` for group members (the key server and client
//! roles are exercised by the C and Python tests): a member seals a whole IP packet, every
//! other member opens it back, and a control message from the controller, wrapped as an IP packet,
//! still reaches the member's control channel.

use pktcrypt_core::control::{Endpoint, GroupConfig, Incoming};
use pktcrypt_core::wire::ip::checksum;
use pktcrypt_core::wire::{
    NextHeader, OuterHeader, TRANSPORT_HEADROOM, TRANSPORT_OVERHEAD, UdpPorts,
};
use pktcrypt_tests::group_sim::GroupSim;
use std::time::Duration;

fn ipv4_udp(payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        9,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend([10, 1, 0, 1, 10, 2, 0, 1, 0x30, 0x39, 0x30, 0x3a]);
    p.extend([
        ((8 + payload.len()) >> 8) as u8,
        (8 + payload.len()) as u8,
        0,
        0,
    ]);
    p.extend(payload);
    let c = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn group_members_seal_and_open_in_transport_mode() {
    let mut config = GroupConfig::new();
    config.rekey_interval = None;
    let mut sim = GroupSim::new(3, config, 7);
    sim.run_for(Duration::from_secs(3));
    let now = sim.now;
    let mut members: Vec<Endpoint> = sim.members.drain(..).map(Endpoint::from).collect();
    let packet = ipv4_udp(b"to the group, host to host");
    let mut buf = vec![0u8; packet.len() + TRANSPORT_OVERHEAD];
    buf[TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + packet.len()].copy_from_slice(&packet);
    let peer = pktcrypt_core::PeerId(0); // a member seals for the group whatever the peer
    let n = members[0]
        .seal_transport(now, peer, &mut buf, packet.len(), UdpPorts::ESP_IN_UDP)
        .expect("seal");
    buf.truncate(n);
    for m in &mut members[1..] {
        let mut copy = buf.clone();
        match m.handle_transport(now, &mut copy) {
            Incoming::Data {
                packet: opened,
                next_header,
                ..
            } => {
                assert_eq!(opened, &packet[..]);
                assert_eq!(next_header, NextHeader::Transport(17));
            }
            other => panic!("not opened: {other:?}"),
        }
        // A replay is dropped.
        let mut copy = buf.clone();
        assert!(matches!(
            m.handle_transport(now, &mut copy),
            Incoming::Dropped(pktcrypt_core::DropReason::Replay)
        ));
    }
    // A controller's control message, as an IP packet to the member, reaches its channel.
    let mut controller = Endpoint::from(sim.controller);
    if let pktcrypt_core::control::Machine::Controller(c) = controller.machine_mut() {
        c.rekey(now, "test");
    }
    let mut delivered = 0;
    let outer = OuterHeader::new(
        "192.0.2.1:4500".parse().expect("addr"),
        "192.0.2.2:4500".parse().expect("addr"),
        64,
    )
    .expect("outer");
    while let Some(t) = controller.poll_transmit() {
        let mut ip = vec![0u8; outer.len() + t.contents.len()];
        ip[outer.len()..].copy_from_slice(&t.contents);
        outer.write(&mut ip).expect("write");
        // The member whose channel SPI it is takes it; the others do not know the SPI.
        for m in &mut members {
            let mut copy = ip.clone();
            if let Incoming::Control { .. } = m.handle_transport(now, &mut copy) {
                delivered += 1;
                break;
            }
        }
    }
    assert!(
        delivered > 0,
        "no control message reached a member through handle_transport"
    );
}
