//! Arbitrary datagrams into a key server, a client, a group controller and a group member, both
//! as raw bytes and as control messages sealed under a valid key (so the decoder and the state
//! machines see arbitrary authenticated content). Nothing may panic; timers keep running.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pktcrypt_core::control::{
    ClientConfig, GroupConfig, GroupController, GroupMember, KeyClient, KeyServer, SeededRandom,
    ServerConfig,
};
use pktcrypt_core::{Engine, EngineConfig, Generation, GenerationInfo, Role, Secret, Spi, Suite, Time};

fn key(spi: u32) -> Generation {
    Generation {
        info: GenerationInfo { number: 0, spi: Spi::new(spi).expect("spi"), suite: Suite::Aes128Gcm },
        secret: Secret::from_bytes([spi as u8; 32]),
    }
}

fuzz_target!(|data: &[u8]| {
    let t = Time::from_secs(1);
    let mut server = KeyServer::new(ServerConfig::new(), Box::new(SeededRandom::new(1))).expect("server");
    server.add_client(&key(0x1000), None, Time::ZERO).expect("client");
    let mut client = KeyClient::new(ClientConfig::new(), &key(0x1000), Box::new(SeededRandom::new(2)), Time::ZERO).expect("client");
    let mut controller = GroupController::new(GroupConfig::new(), &key(0x9000), Box::new(SeededRandom::new(3))).expect("controller");
    controller.add_member(&key(0x2000), None, true, Time::ZERO).expect("member");
    let mut member = GroupMember::new(GroupConfig::new(), 0, &key(0x2000), &key(0x9000), 1, Box::new(SeededRandom::new(4)), Time::ZERO).expect("member");

    // Raw bytes.
    let _ = server.handle_datagram(t, None, &mut data.to_vec());
    let _ = client.handle_datagram(t, &mut data.to_vec());
    let _ = controller.handle_datagram(t, None, &mut data.to_vec());
    let _ = member.handle_datagram(t, &mut data.to_vec());

    // The same bytes as an authenticated control message to each role.
    let mut out = vec![0u8; data.len() + 64];
    for (role, spi) in [(Role::Client, 0x1000), (Role::KeyServer, 0x1000), (Role::Client, 0x2000), (Role::KeyServer, 0x2000)] {
        // Pairwise init keys carry handshake messages under per-message keys (protocol
        // version 3); the group channel still seals under the init key with a counter.
        let pairwise = spi == 0x1000;
        let mut cfg = EngineConfig::new(role);
        cfg.init_seq_base = 1 << 40;
        cfg.handshake_init = pairwise;
        let mut e = Engine::new(cfg).expect("config");
        let p = e.add_peer(&key(spi), Time::ZERO).expect("peer");
        let sealed = if pairwise {
            e.seal_handshake(p, data, &mut out, [data.len() as u8; 12])
        } else {
            e.seal_control(p, data, &mut out)
        };
        let Ok(n) = sealed else { continue };
        let mut pkt = out[..n].to_vec();
        match (role, spi) {
            (Role::Client, 0x1000) => { let _ = server.handle_datagram(t, None, &mut pkt); }
            (Role::KeyServer, 0x1000) => { let _ = client.handle_datagram(t, &mut pkt); }
            (Role::Client, _) => { let _ = controller.handle_datagram(t, None, &mut pkt); }
            _ => { let _ = member.handle_datagram(t, &mut pkt); }
        }
    }
    for s in 1..4 {
        let now = Time::from_secs(s);
        server.handle_timeout(now);
        client.handle_timeout(now);
        controller.handle_timeout(now);
        member.handle_timeout(now);
        while server.poll_transmit().is_some() {}
        while client.poll_transmit().is_some() {}
        while controller.poll_transmit().is_some() {}
        while member.poll_transmit().is_some() {}
    }
});
