//! Arbitrary bytes, and genuine packets with arbitrary edits, through `Engine::open` and
//! `Engine::open_batch`; arbitrary bytes through the transport mode's `Engine::open_transport`
//! and, as a plaintext IP packet, `Engine::seal_transport`. Nothing may panic, and an edited
//! packet must never open as data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_core::wire::{TRANSPORT_HEADROOM, TRANSPORT_OVERHEAD, UdpPorts};
use pktcrypt_core::{
    Engine, EngineConfig, Generation, GenerationInfo, OpenOutcome, Opened, Packet, Role, Secret,
    Spi, Suite, Time,
};

fn engine(role: Role, suite: Suite) -> (Engine, pktcrypt_core::PeerId) {
    let mut e = Engine::new(EngineConfig::new(role)).expect("config");
    let g = Generation {
        info: GenerationInfo { number: 0, spi: Spi::new(0x1234_5678).expect("spi"), suite },
        secret: Secret::from_bytes([0x5a; 32]),
    };
    let p = e.add_peer(&g, Time::ZERO).expect("peer");
    (e, p)
}

fuzz_target!(|data: &[u8]| {
    let suite = Suite::ALL[data.first().map_or(0, |b| usize::from(*b) % 3)];
    let (mut server, _) = engine(Role::KeyServer, suite);
    // 1. Raw bytes.
    let mut raw = data.to_vec();
    let _ = server.open(&mut raw);
    let mut raw = data.to_vec();
    let _ = server.open_transport(&mut raw);
    // 2. A genuine packet with the input XORed over it: opens only if the edit is empty.
    let (mut client, peer) = engine(Role::Client, suite);
    let inner_len = 40;
    let mut buf = vec![0u8; ESP_HEADER_LEN + inner_len + MAX_OVERHEAD];
    buf[ESP_HEADER_LEN] = 0x45;
    let n = client.seal(peer, &mut buf, inner_len, NextHeader::Ipv4).expect("seal");
    buf.truncate(n);
    // Transport mode: the input as an IP packet to seal (refused or sealed, never a panic).
    let mut plain = vec![0u8; data.len() + TRANSPORT_OVERHEAD];
    plain[TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + data.len()].copy_from_slice(data);
    if let Ok(n) = client.seal_transport(peer, &mut plain, data.len(), UdpPorts::ESP_IN_UDP) {
        plain.truncate(n);
        let _ = server.open_transport(&mut plain);
    }
    let mut edited = buf.clone();
    let mut changed = false;
    for (b, d) in edited.iter_mut().zip(data.iter().skip(1)) {
        *b ^= d;
        changed |= *d != 0;
    }
    match server.open(&mut edited) {
        Opened::Data { .. } | Opened::Control { .. } => assert!(!changed, "an edited packet opened"),
        Opened::Drop(_) => {}
    }
    // 3. The same bytes cut into a batch of packets.
    let mut chunks: Vec<Vec<u8>> = data.chunks(61).map(<[u8]>::to_vec).collect();
    let mut batch: Vec<Packet<'_>> = chunks.iter_mut().map(|c| { let l = c.len(); Packet::new(c, l) }).collect();
    server.open_batch(&mut batch);
    for p in &batch {
        assert!(matches!(p.opened(), OpenOutcome::Drop(_)));
    }
});
