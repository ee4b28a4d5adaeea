//! Malformed, replayed and forged control messages are dropped and counted; the state machines
//! carry on.

use pktcrypt_core::control::message::{Message, VERSION};
use pktcrypt_core::control::{
    ClientConfig, Incoming, KeyClient, KeyServer, SeededRandom, ServerConfig,
};
use pktcrypt_core::wire::esp::ESP_HEADER_LEN;
use pktcrypt_core::{
    DropReason, Engine, EngineConfig, Generation, GenerationInfo, Role, Secret, Spi, Suite, Time,
};

fn init() -> Generation {
    Generation {
        info: GenerationInfo {
            number: 0,
            spi: Spi::new(0x4242).expect("spi"),
            suite: Suite::ChaCha20Poly1305,
        },
        secret: Secret::from_bytes([9; 32]),
    }
}

/// An engine holding the client's init key: it seals arbitrary control payloads the way a
/// (buggy or hostile but keyed) client would.
fn keyed_sender() -> (Engine, pktcrypt_core::PeerId) {
    let mut cfg = EngineConfig::new(Role::Client);
    cfg.init_seq_base = 1 << 40;
    let mut e = Engine::new(cfg).expect("config");
    let p = e.add_peer(&init(), Time::ZERO).expect("peer");
    (e, p)
}

fn dropped(r: Incoming<'_>) -> Option<DropReason> {
    match r {
        Incoming::Dropped(d) => Some(d),
        _ => None,
    }
}

#[test]
fn server_drops_bad_control_messages_and_keeps_working() {
    let mut server =
        KeyServer::new(ServerConfig::new(), Box::new(SeededRandom::new(1))).expect("server");
    server
        .add_client(&init(), None, Time::ZERO)
        .expect("client");
    let (mut sender, peer) = keyed_sender();
    let mut out = vec![0u8; 512];
    let t = Time::from_secs(1);

    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::ControlMalformed),
        (vec![VERSION], DropReason::ControlMalformed),
        (vec![9, 1, 0, 0, 0, 0, 0, 0], DropReason::ControlMalformed),
        (
            vec![VERSION, 99, 0, 0, 0, 0, 0, 0],
            DropReason::ControlMalformed,
        ),
        (
            vec![VERSION, 2, 0, 8, 0, 0, 0, 0, 1, 2],
            DropReason::ControlMalformed,
        ),
        // A well-formed message a server never accepts.
        (
            Message::HelloReply { newest: 3 }
                .encode(7)
                .as_bytes()
                .to_vec(),
            DropReason::ControlUnexpected,
        ),
    ];
    for (payload, reason) in cases {
        let n = sender.seal_control(peer, &payload, &mut out).expect("seal");
        let mut pkt = out[..n].to_vec();
        assert_eq!(
            dropped(server.handle_datagram(t, None, &mut pkt)),
            Some(reason),
            "{payload:?}"
        );
    }
    // A genuine init request works, once; its replay is refused by the window.
    let n = sender
        .seal_control(peer, Message::KeyInitRequest.encode(1).as_bytes(), &mut out)
        .expect("seal");
    let genuine = out[..n].to_vec();
    assert!(matches!(
        server.handle_datagram(t, None, &mut genuine.clone()),
        Incoming::Control { .. }
    ));
    assert_eq!(
        dropped(server.handle_datagram(t, None, &mut genuine.clone())),
        Some(DropReason::Replay)
    );
    // Forged: one bit flipped in the ciphertext.
    let n = sender
        .seal_control(peer, Message::KeyInitRequest.encode(2).as_bytes(), &mut out)
        .expect("seal");
    let mut forged = out[..n].to_vec();
    forged[ESP_HEADER_LEN + 3] ^= 1;
    assert_eq!(
        dropped(server.handle_datagram(t, None, &mut forged)),
        Some(DropReason::AuthFailed)
    );
    // The server answered the genuine request with generation 1 and nothing else changed.
    let minted = std::iter::from_fn(|| server.poll_event())
        .filter(|e| matches!(e, pktcrypt_core::control::ServerEvent::KeyMinted { .. }))
        .count();
    assert_eq!(minted, 1);
    assert!(server.poll_transmit().is_some());
    assert!(server.engine().drops().get(DropReason::Replay) == 1);
    assert!(server.engine().drops().get(DropReason::AuthFailed) == 1);
}

#[test]
fn client_drops_bad_control_messages() {
    let mut client = KeyClient::new(
        ClientConfig::new(),
        &init(),
        Box::new(SeededRandom::new(2)),
        Time::ZERO,
    )
    .expect("client");
    let mut cfg = EngineConfig::new(Role::KeyServer);
    cfg.init_seq_base = 1 << 40;
    let mut fake_server = Engine::new(cfg).expect("config");
    let p = fake_server.add_peer(&init(), Time::ZERO).expect("peer");
    let mut out = vec![0u8; 512];
    for (payload, reason) in [
        (
            vec![1u8, 4, 0, 3, 0, 0, 0, 0, 1, 2, 3],
            DropReason::ControlMalformed,
        ),
        (
            Message::KeyInitRequest.encode(5).as_bytes().to_vec(),
            DropReason::ControlUnexpected,
        ),
    ] {
        let n = fake_server
            .seal_control(p, &payload, &mut out)
            .expect("seal");
        let mut pkt = out[..n].to_vec();
        assert_eq!(
            dropped(client.handle_datagram(Time::from_secs(1), &mut pkt)),
            Some(reason)
        );
    }
    assert_eq!(client.newest(), 0);
    // Random bytes of every length: dropped, never a panic.
    for len in 0..300usize {
        let mut junk: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        assert!(dropped(client.handle_datagram(Time::from_secs(1), &mut junk)).is_some());
    }
}

#[test]
fn message_codec_round_trips_and_rejects_trailing_bytes() {
    use pktcrypt_core::control::message::{Distribution, GroupKey, GroupPhase, KeyMaterial};
    let msgs = [
        Message::KeyInitRequest,
        Message::KeyUpdateRequest { have: 7 },
        Message::KeyResendRequest { have: u64::MAX },
        Message::KeyDistribution(Distribution {
            generation: 9,
            spi: 0x1234,
            suite: Suite::Aes128Gcm,
            material: KeyMaterial::Nonce([3; 32]),
        }),
        Message::KeyAck { generation: 2 },
        Message::Hello { have: 1 },
        Message::HelloReply { newest: 4 },
        Message::GroupKey(GroupKey {
            generation: 3,
            spi_base: 0x9000,
            suite: Suite::ChaCha20Poly1305,
            member_index: 2,
            members: 5,
            secret: [1; 32],
        }),
        Message::GroupAck {
            generation: 3,
            phase: GroupPhase::InTransit,
        },
        Message::GroupTransition {
            generation: 3,
            phase: GroupPhase::UpdateCompleted,
        },
        Message::GroupKeyRequest { have: 2 },
        Message::GroupJoin,
        Message::GroupLeave,
    ];
    for (i, m) in msgs.iter().enumerate() {
        let e = m.encode(i as u32);
        assert_eq!(Message::decode(e.as_bytes()), Ok((*m, i as u32)));
        let mut longer = e.as_bytes().to_vec();
        longer.push(0);
        assert!(Message::decode(&longer).is_err());
        for cut in 0..e.as_bytes().len() {
            assert!(Message::decode(&e.as_bytes()[..cut]).is_err());
        }
    }
    // Debug output never shows secrets.
    let dbg = format!("{:?}", msgs[7]);
    assert!(dbg.contains("redacted") && !dbg.contains("[1, 1"));
}
