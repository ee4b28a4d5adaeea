//! Malformed, replayed and forged control messages are dropped and counted; the state machines
//! carry on.

use pktcrypt_core::control::message::{
    Assembled, BISCUIT_LEN, Biscuit, Distribution, KeyMaterial, MAX_UNFRAGMENTED, Message,
    Reassembler, VERSION, fragments,
};
use pktcrypt_core::control::{
    ClientConfig, Incoming, KeyClient, KeyServer, SeededRandom, ServerConfig,
};
use pktcrypt_core::kex::Ephemeral;
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
    cfg.handshake_init = true;
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
    let mut out = vec![0u8; 1536];
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
    let mut fresh = 0u128;
    let mut seal = |sender: &mut Engine, payload: &[u8], out: &mut Vec<u8>| {
        fresh += 1;
        let f: [u8; 12] = fresh.to_be_bytes()[4..].try_into().expect("12 bytes");
        sender
            .seal_handshake(peer, payload, out, f)
            .unwrap_or_else(|e| panic!("{e:?} {}", payload.len()))
    };
    for (payload, reason) in cases {
        let n = seal(&mut sender, &payload, &mut out);
        let mut pkt = out[..n].to_vec();
        assert_eq!(
            dropped(server.handle_datagram(t, None, &mut pkt)),
            Some(reason),
            "{payload:?}"
        );
    }
    // A genuine init request is answered; its replay gets the same answer again (bound to the
    // same request, useless without the client's ephemeral secrets) and changes nothing.
    let mut rng = SeededRandom::new(3);
    let request = Message::KeyInitRequest {
        nonce: [5; 32],
        share: Ephemeral::generate(&mut rng).share().clone(),
    }
    .encode(1);
    let mut genuine = Vec::new();
    for part in fragments(&request, 1) {
        let n = seal(&mut sender, &part, &mut out);
        genuine.push(out[..n].to_vec());
    }
    assert_eq!(genuine.len(), 2, "a key share is sent in two fragments");
    let request_bytes: usize = genuine.iter().map(Vec::len).sum();
    for _ in 0..2 {
        for part in &genuine {
            assert!(matches!(
                server.handle_datagram(t, None, &mut part.clone()),
                Incoming::Control { .. }
            ));
        }
        let replies: Vec<_> = std::iter::from_fn(|| server.poll_transmit()).collect();
        let reply_bytes: usize = replies.iter().map(|r| r.contents.len()).sum();
        // One answer, in two fragments over a 1280-byte path like the request.
        assert_eq!(replies.len(), 2);
        assert!(
            reply_bytes <= request_bytes,
            "{reply_bytes} > {request_bytes}"
        );
    }
    // Forged: one bit flipped in the ciphertext.
    let n = seal(
        &mut sender,
        Message::KeyAck { generation: 1 }.encode(2).as_bytes(),
        &mut out,
    );
    let mut forged = out[..n].to_vec();
    forged[ESP_HEADER_LEN + 3] ^= 1;
    assert_eq!(
        dropped(server.handle_datagram(t, None, &mut forged)),
        Some(DropReason::AuthFailed)
    );
    // Nothing was minted or installed: only a confirmation of generation 1 would do that.
    let minted = std::iter::from_fn(|| server.poll_event())
        .filter(|e| matches!(e, pktcrypt_core::control::ServerEvent::KeyMinted { .. }))
        .count();
    assert_eq!(minted, 0);
    assert!(server.poll_transmit().is_none());
    assert_eq!(server.proven(pktcrypt_core::PeerId(0)), Some(0));
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
    cfg.handshake_init = true;
    let mut fake_server = Engine::new(cfg).expect("config");
    let p = fake_server.add_peer(&init(), Time::ZERO).expect("peer");
    let mut out = vec![0u8; 1536];
    for (payload, reason) in [
        (
            vec![VERSION, 4, 0, 3, 0, 0, 0, 0, 1, 2, 3],
            DropReason::ControlMalformed,
        ),
        (
            Message::HelloReply { newest: 1 }
                .encode(5)
                .as_bytes()
                .to_vec(),
            DropReason::ControlUnexpected,
        ),
        // An answer to an init request the client never made (a recorded one).
        (
            Message::KeyInitReply {
                dist: Distribution {
                    generation: 1,
                    spi: 0x777,
                    suite: Suite::Aes256Gcm,
                    echo: [1; 32],
                    material: KeyMaterial::Secret([2; 32]),
                },
                biscuit: Biscuit(Box::new([3; BISCUIT_LEN])),
            }
            .encode(6)
            .as_bytes()
            .to_vec(),
            DropReason::StaleHandshake,
        ),
    ] {
        let n = fake_server
            .seal_handshake(p, &payload, &mut out, [payload.len() as u8; 12])
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
    use pktcrypt_core::control::message::{GroupKey, GroupMaterial, GroupPhase};
    let mut rng = SeededRandom::new(4);
    let share = Ephemeral::generate(&mut rng).share().clone();
    let (reply, _) = pktcrypt_core::kex::respond(&share, &mut rng).expect("exchange");
    let msgs = [
        Message::KeyInitRequest {
            nonce: [4; 32],
            share: share.clone(),
        },
        Message::KeyUpdateRequest {
            have: 7,
            share: None,
        },
        Message::KeyUpdateRequest {
            have: 7,
            share: Some(([6; 32], share)),
        },
        Message::KeyResendRequest { have: u64::MAX },
        Message::KeyDistribution(Distribution {
            generation: 9,
            spi: 0x1234,
            suite: Suite::Aes128Gcm,
            echo: [0; 32],
            material: KeyMaterial::Nonce([3; 32]),
        }),
        Message::KeyInitReply {
            dist: Distribution {
                generation: 1,
                spi: 0x1235,
                suite: Suite::Aes256Gcm,
                echo: [8; 32],
                material: KeyMaterial::Exchange(reply),
            },
            biscuit: Biscuit(Box::new([4; BISCUIT_LEN])),
        },
        Message::KeyInitConfirm {
            echo: [1; 32],
            tag: [2; 32],
            biscuit: Biscuit(Box::new([5; BISCUIT_LEN])),
        },
        Message::KeyUpdateNeeded { newest: 3 },
        Message::KeyAck { generation: 2 },
        Message::Hello { have: 1 },
        Message::HelloReply { newest: 4 },
        Message::GroupKey(GroupKey {
            generation: 3,
            spi_base: 0x9000,
            suite: Suite::ChaCha20Poly1305,
            member_index: 2,
            members: 5,
            transmit: true,
            material: GroupMaterial::Secret([1; 32]),
        }),
        Message::GroupKey(GroupKey {
            generation: 4,
            spi_base: 0x9010,
            suite: Suite::Aes256Gcm,
            member_index: 1,
            members: 3,
            transmit: false,
            material: GroupMaterial::Nonce([7; 32]),
        }),
        Message::GroupAck {
            generation: 3,
            phase: GroupPhase::InTransit,
            seq: 7,
        },
        Message::GroupTransition {
            generation: 3,
            phase: GroupPhase::UpdateCompleted,
        },
        Message::GroupKeyRequest { have: 2 },
        Message::GroupUsage {
            generation: 3,
            packets_sealed: 1 << 40,
            packets_opened: 2,
            bytes: u64::MAX,
            auth_failures: 0,
        },
        Message::GroupJoin,
        Message::GroupLeave,
    ];
    for (i, m) in msgs.iter().enumerate() {
        let e = m.encode(i as u32);
        assert_eq!(Message::decode(e.as_bytes()), Ok((m.clone(), i as u32)));
        let mut longer = e.as_bytes().to_vec();
        longer.push(0);
        assert!(Message::decode(&longer).is_err());
        for cut in 0..e.as_bytes().len() {
            assert!(Message::decode(&e.as_bytes()[..cut]).is_err());
        }
    }
    // Fragments put together give the message back, in any order, and every one fits a
    // 1280-byte IPv6 path once sealed.
    for (i, m) in msgs.iter().enumerate() {
        let e = m.encode(i as u32);
        let mut parts = fragments(&e, i as u32);
        parts.reverse();
        let mut r = Reassembler::new(4);
        let mut whole = None;
        for p in &parts {
            assert!(p.len() <= MAX_UNFRAGMENTED);
            match r.push(Time::ZERO, 1, 0x100, p).expect("fragment") {
                Assembled::Whole(b) => whole = Some(b.to_vec()),
                Assembled::Complete(b) => whole = Some(b.to_vec()),
                Assembled::Pending => {}
            }
        }
        assert_eq!(whole.as_deref(), Some(e.as_bytes()));
    }
    // Debug output never shows secrets, nor a derived key's nonce.
    let dbg = format!("{:?}", msgs[11]);
    assert!(dbg.contains("redacted") && !dbg.contains("[1, 1"));
    let dbg = format!("{:?}", msgs[12]);
    assert!(dbg.contains("derived") && !dbg.contains("[7, 7"), "{dbg}");
}

#[test]
fn group_key_flags_and_derived_secrets() {
    use pktcrypt_core::control::message::{GroupKey, GroupMaterial};
    let key = |material| GroupKey {
        generation: 5,
        spi_base: 0x9000,
        suite: Suite::Aes256Gcm,
        member_index: 0,
        members: 2,
        transmit: true,
        material,
    };
    let bytes = Message::GroupKey(key(GroupMaterial::Nonce([3; 32]))).encode(5);
    // Header 8, then generation 8, SPI base 4, suite 1, index 2, members 2, flags.
    let flags = 8 + 17;
    assert_eq!(bytes.as_bytes()[flags], 3, "transmit and derived");
    for bad in [4u8, 8, 0x80, 0xff] {
        let mut b = bytes.as_bytes().to_vec();
        b[flags] = bad;
        assert!(Message::decode(&b).is_err(), "flags {bad:#x}");
    }
    // Derived: the secret depends on the group init secret, the nonce, the generation, the SPI
    // base and the suite; it is never the nonce.
    let init = Secret::from_bytes([0x55; 32]);
    let derived = |k: GroupKey, init: &Secret| k.secret(init).map(|s| *s.expose());
    let base = derived(key(GroupMaterial::Nonce([3; 32])), &init).expect("valid SPI");
    assert_ne!(base, [3; 32]);
    assert_ne!(
        Some(base),
        derived(key(GroupMaterial::Nonce([4; 32])), &init)
    );
    assert_ne!(
        Some(base),
        derived(
            key(GroupMaterial::Nonce([3; 32])),
            &Secret::from_bytes([0x56; 32])
        )
    );
    for change in 0..3 {
        let mut k = key(GroupMaterial::Nonce([3; 32]));
        match change {
            0 => k.generation += 1,
            1 => k.spi_base += 1,
            _ => k.suite = Suite::ChaCha20Poly1305,
        }
        assert_ne!(Some(base), derived(k, &init), "change {change}");
    }
    let mut k = key(GroupMaterial::Nonce([3; 32]));
    k.spi_base = 0;
    assert!(
        derived(k, &init).is_none(),
        "a reserved SPI base derives nothing"
    );
    // Distributed: the secret carried.
    assert_eq!(
        derived(key(GroupMaterial::Secret([9; 32])), &init),
        Some([9; 32])
    );
}
