//! Attacks on the key-establishment protocol, on the deterministic simulator.
//!
//! Each test states a security property and tries to break it with what an attacker has:
//! replays of captured datagrams (tests 1 and 2), the init key plus a capture of every datagram
//! both ways (forward secrecy, test 3), or a peer whose wall clock went backwards between boots
//! (init-key nonces, test 4). The tests deal only in datagram bytes and public APIs, so they
//! keep working when the protocol's messages change.
//!
//! On the protocol of version 1 (no replay protection across restarts, no forward secrecy,
//! init-key nonces from the wall clock) tests 1-4 fail; `attacker_succeeds_without_pfs` passes
//! and keeps passing with forward secrecy turned off (`pfs = "off"`). On version 3 tests 1-4
//! pass.

use pktcrypt_core::control::message::KeyMaterial;
use pktcrypt_core::control::{
    ClientConfig, ClientEvent, GroupEvent, Message, Pfs, ServerConfig, ServerEvent,
};
use pktcrypt_core::{
    DropReason, Engine, EngineConfig, Generation, GenerationInfo, Opened, PeerId, Role, Secret,
    Slot, Spi, Time, boot_seq_base,
};
use pktcrypt_tests::sim::{Captured, Sim, Way};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

/// SPI of an ESP packet.
fn spi_of(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// IV of an ESP packet (the 8 bytes after SPI and sequence number).
fn iv_of(bytes: &[u8]) -> [u8; 8] {
    let mut iv = [0u8; 8];
    iv.copy_from_slice(&bytes[8..16]);
    iv
}

/// SPIs of every generation client `i` installed and the server minted so far.
fn spis_so_far(sim: &Sim, i: usize) -> HashSet<u32> {
    let mut spis: HashSet<u32> = sim.clients[i]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::KeyInstalled { generation } => Some(generation.spi.get()),
            _ => None,
        })
        .collect();
    spis.extend(sim.server_events.iter().filter_map(|(_, e)| match e {
        ServerEvent::KeyMinted { generation, .. } => Some(generation.spi.get()),
        _ => None,
    }));
    spis
}

fn minted(sim: &Sim) -> usize {
    sim.server_events
        .iter()
        .filter(|(_, e)| matches!(e, ServerEvent::KeyMinted { .. }))
        .count()
}

// ---------------------------------------------------------------------------------------------
// 1. A replayed distribution after a client restart.
// ---------------------------------------------------------------------------------------------

/// A restarted client holds only its init key, and so does everything the server ever sent it
/// under that key: an attacker replaying the first distribution of the previous boot must not
/// make it install that old generation (whose SPI, secret and sequence numbers it used before:
/// it would seal under the same (key, nonce) again), and it must still reach the server's fresh
/// generation within 5 s.
#[test]
fn replayed_distribution_after_client_restart_installs_nothing_old() {
    let mut sim = Sim::new(1, ServerConfig::new(), ClientConfig::new(), 7);
    sim.capturing = true;
    assert!(
        sim.run_until_converged(ms(10), secs(5)).is_some(),
        "did not converge at first: {:?}",
        sim.generations(0)
    );
    // Data flows under generation 1 for a while.
    sim.run_for(secs(3));
    assert!(sim.generations(0).0 >= 1);
    let old_spis = spis_so_far(&sim, 0);
    // The very first server → client control datagram: generation 1's distribution, sealed
    // under the init key.
    let first = sim
        .capture
        .iter()
        .find(|c| c.way == Way::ToClient && c.control && !c.injected)
        .map(|c| c.bytes.clone())
        .expect("the server sent a control message");
    let events_before = sim.clients[0].events.len();

    sim.restart_client(0);
    // The restarted client's request is on the link; the server's answer is at least one
    // round trip away. The attacker is faster.
    let outcome = sim.inject_to_client(0, &first);
    let converged = sim.run_until_converged(ms(10), secs(5));

    let reinstalled: Vec<String> = sim.clients[0].events[events_before..]
        .iter()
        .filter_map(|(t, e)| match e {
            ClientEvent::KeyInstalled { generation }
                if old_spis.contains(&generation.spi.get()) =>
            {
                Some(format!("{generation:?} at {t:?}"))
            }
            _ => None,
        })
        .collect();
    let held_old: Vec<u32> = sim.clients[0]
        .machine
        .engine()
        .peer_status(sim.clients[0].machine.server())
        .map(|st| {
            st.sas
                .iter()
                .filter(|sa| sa.slot != Slot::Init && old_spis.contains(&sa.info.spi.get()))
                .map(|sa| sa.info.spi.get())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        reinstalled.is_empty() && held_old.is_empty(),
        "the restarted client installed a generation of its previous boot from a replay \
         (replay outcome {outcome:?}): installed {reinstalled:?}, still holds SPIs {held_old:x?}"
    );
    assert!(
        converged.is_some(),
        "the restarted client did not converge within 5 s: {:?}",
        sim.generations(0)
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Replays at a restarted server.
// ---------------------------------------------------------------------------------------------

/// What the server relies on for one client: proven generation and the generations it holds.
fn server_view(sim: &Sim, peer: PeerId) -> (Option<u64>, Vec<(Slot, u64, u32)>) {
    let mut sas: Vec<(Slot, u64, u32)> = sim
        .server
        .engine()
        .peer_status(peer)
        .map(|st| {
            st.sas
                .iter()
                .map(|sa| (sa.slot, sa.info.number, sa.info.spi.get()))
                .collect()
        })
        .unwrap_or_default();
    sas.sort_by_key(|&(_, n, spi)| (n, spi));
    (sim.server.proven(peer), sas)
}

/// A server that lost its state (restart) has no memory of what it accepted before; replaying
/// every control datagram the client ever sent, from a spoofed address, must still change
/// nothing it relies on, and must not make it send more than one reply per replayed request
/// (one message, in at most two datagrams), no larger than that request, nor anything later to
/// the spoofed address.
#[test]
fn replays_at_a_restarted_server_change_nothing() {
    let spoofed: SocketAddr = "203.0.113.9:4500".parse().expect("address");
    let mut sc = ServerConfig::new();
    sc.rekey_interval = Some(secs(2));
    let mut cc = ClientConfig::new();
    cc.update_interval = Some(secs(3));
    cc.hello_interval = secs(1);
    let mut sim = Sim::new(1, sc, cc, 11);
    sim.capturing = true;
    sim.run_for(secs(10));
    assert!(
        minted(&sim) >= 3,
        "a few rekeys first: {:?}",
        sim.generations(0)
    );

    sim.restart_server();
    let took = sim.run_until_converged(ms(10), secs(40));
    assert!(
        took.is_some(),
        "no re-convergence after the server restart: {:?}",
        sim.generations(0)
    );
    let peer = sim.clients[0].peer;
    let before = server_view(&sim, peer);
    let recorded: Vec<Vec<u8>> = sim
        .capture
        .iter()
        .filter(|c| c.way == Way::ToServer && c.control && !c.injected)
        .map(|c| c.bytes.clone())
        .collect();
    let replay_at = sim.now;

    let mut violations = Vec::new();
    let mut accepted = 0;
    let mut direct = 0;
    // A request may span several datagrams (fragments): a reply is measured against every
    // datagram replayed since the previous reply.
    let mut request_bytes = 0;
    for (k, bytes) in recorded.iter().enumerate() {
        let r = sim.inject_to_server(0, Some(spoofed), bytes);
        if r.outcome.is_ok() {
            accepted += 1;
        }
        request_bytes += bytes.len();
        direct += r.responses.len();
        let sizes: Vec<usize> = r.responses.iter().map(|t| t.contents.len()).collect();
        let reply_bytes: usize = sizes.iter().sum();
        let budget = request_bytes;
        if !r.responses.is_empty() {
            request_bytes = 0;
        }
        // One reply: one message, which over IPv6's minimum MTU takes two datagrams (an init
        // answer with its key share and biscuit; the request takes two as well).
        if r.responses.len() > 2 || reply_bytes > budget {
            violations.push(format!(
                "replay #{k} ({} bytes, SPI {:#x}, {:?}) drew {} responses of {sizes:?} bytes to {:?}",
                bytes.len(),
                spi_of(bytes),
                r.outcome,
                r.responses.len(),
                r.responses.iter().map(|t| t.destination).collect::<Vec<_>>()
            ));
        }
    }
    let after = server_view(&sim, peer);
    if before != after {
        violations.push(format!(
            "the server's state for the client changed: before {before:x?}, after {after:x?}"
        ));
    }
    // Whatever the server does later (retransmissions) must not go to the spoofed address.
    sim.run_for(secs(3));
    let to_spoofed = sim
        .capture
        .iter()
        .filter(|c| c.at >= replay_at && c.destination == Some(spoofed))
        .count();
    if to_spoofed > direct {
        violations.push(format!(
            "{} later datagrams went to the spoofed address",
            to_spoofed - direct
        ));
    }
    assert!(
        violations.is_empty(),
        "{} recorded client → server control datagrams replayed from {spoofed}, {accepted} \
         accepted:\n{}",
        recorded.len(),
        violations.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Forward secrecy: the init key plus a capture.
// ---------------------------------------------------------------------------------------------

/// What a passive attacker holding the init key got out of a capture.
#[derive(Debug, Default)]
struct AttackReport {
    /// Data packets sent at or after the cutoff.
    data_after: usize,
    /// Of those, opened.
    opened_after: usize,
    /// Opened under the init key.
    opened_after_init: usize,
    /// Opened under a learned generation.
    opened_after_learned: usize,
    /// Control messages opened.
    control_opened: usize,
    /// Generations learned from distributions.
    learned: usize,
}

/// A passive attacker: the init key, and an engine per direction (role client opens
/// server → client, role key server opens client → server). It opens every datagram of the
/// capture in order; from every key distribution it can open it learns the generation (the
/// secret, or in derived mode the secret derived from the parent it knows) and installs it in
/// both engines. Generations its engines already forgot are kept aside and tried on packets
/// under their SPIs.
struct Attacker {
    init: Generation,
    down: (Engine, PeerId),
    up: (Engine, PeerId),
    /// Secret of each generation number in the newest lineage learned (derived-mode parents).
    secrets: HashMap<u64, Secret>,
    /// Every generation learned, by SPI.
    learned: HashMap<u32, Generation>,
    /// Group keys read (group channel captures).
    group_keys: usize,
}

enum Got {
    Data { init: bool },
    Control,
    Nothing,
}

impl Attacker {
    fn new(init: &Generation) -> Self {
        let engine = |role| {
            // Version 3 seals handshake messages under the init key with per-message keys.
            let mut config = EngineConfig::new(role);
            config.handshake_init = true;
            let mut e = Engine::new(config).expect("engine");
            let p = e.add_peer(init, Time::ZERO).expect("init key");
            (e, p)
        };
        Self {
            init: init.clone(),
            down: engine(Role::Client),
            up: engine(Role::KeyServer),
            secrets: HashMap::new(),
            learned: HashMap::new(),
            group_keys: 0,
        }
    }

    fn open(&mut self, c: &Captured) -> Got {
        let role = match c.way {
            Way::ToClient => Role::Client,
            Way::ToServer => Role::KeyServer,
        };
        let mut buf = c.bytes.clone();
        let (engine, _) = match c.way {
            Way::ToClient => &mut self.down,
            Way::ToServer => &mut self.up,
        };
        let got = match engine.open(&mut buf) {
            Opened::Data { info, .. } => Got::Data {
                init: info.slot == Slot::Init,
            },
            Opened::Control { message, .. } => {
                let m = Message::decode(message).ok();
                self.learn(m, c.at);
                Got::Control
            }
            Opened::Drop(DropReason::UnknownSpi) => Got::Nothing,
            Opened::Drop(_) => return Got::Nothing,
        };
        if !matches!(got, Got::Nothing) {
            return got;
        }
        // A generation the engines forgot: a one-off engine holding it.
        let Some(g) = self.learned.get(&spi_of(&c.bytes)).cloned() else {
            return Got::Nothing;
        };
        let mut config = EngineConfig::new(role);
        config.handshake_init = true;
        let mut e = Engine::new(config).expect("engine");
        let Ok(p) = e.add_peer(&self.init, Time::ZERO) else {
            return Got::Nothing;
        };
        if e.install(p, &g, Time::ZERO).is_err() {
            return Got::Nothing;
        }
        let mut buf = c.bytes.clone();
        match e.open(&mut buf) {
            Opened::Data { .. } => Got::Data { init: false },
            Opened::Control { message, .. } => {
                let m = Message::decode(message).ok();
                self.learn(m, c.at);
                Got::Control
            }
            Opened::Drop(_) => Got::Nothing,
        }
    }

    fn learn(&mut self, msg: Option<(Message, u32)>, now: Time) {
        let d = match msg {
            Some((Message::KeyDistribution(d) | Message::KeyInitReply { dist: d, .. }, _)) => d,
            Some((Message::GroupKey(_), _)) => {
                self.group_keys += 1;
                return;
            }
            _ => return,
        };
        let Ok(spi) = Spi::new(d.spi) else { return };
        let info = GenerationInfo {
            number: d.generation,
            spi,
            suite: d.suite,
        };
        let secret = match d.material {
            // The server's half of a hybrid exchange: useless without the client's ephemeral
            // secrets, which never left it.
            KeyMaterial::Exchange(_) => return,
            KeyMaterial::Secret(bytes) => Secret::from_bytes(bytes),
            KeyMaterial::Nonce(nonce) => {
                let parent = if d.generation == 1 {
                    Some(&self.init.secret)
                } else {
                    self.secrets.get(&(d.generation - 1))
                };
                match parent {
                    Some(p) => p.derive_next(&nonce, info),
                    None => return,
                }
            }
        };
        if d.generation == 1 {
            // A new lineage (restart): forget the old one's parents.
            self.secrets.clear();
        }
        self.secrets.insert(d.generation, secret.clone());
        let g = Generation { info, secret };
        self.learned.insert(d.spi, g.clone());
        for (e, p) in [&mut self.down, &mut self.up] {
            if e.install(*p, &g, now).is_err() {
                let _ = e.reset_to_init(*p);
                let _ = e.install(*p, &g, now);
            }
        }
    }
}

/// Runs the attacker over `capture` and counts the data packets sent at or after `cutoff`
/// that it opens.
fn attack(init: &Generation, capture: &[Captured], cutoff: Time) -> AttackReport {
    let mut a = Attacker::new(init);
    let mut r = AttackReport::default();
    for c in capture {
        let after = c.at >= cutoff && !c.control && !c.injected;
        if after {
            r.data_after += 1;
        }
        match a.open(c) {
            Got::Data { init } if after => {
                r.opened_after += 1;
                if init {
                    r.opened_after_init += 1;
                } else {
                    r.opened_after_learned += 1;
                }
            }
            Got::Data { .. } | Got::Nothing => {}
            Got::Control => r.control_opened += 1,
        }
    }
    r.learned = a.learned.len();
    r
}

/// The scenario of the forward-secrecy tests: one client, data both ways every 100 ms, a
/// server-timed rekey every 2 s, 8 s in all, every datagram captured. Returns the simulation
/// and when the client installed generation 1 (the end of the first key exchange).
///
/// `pfs` is the server's forward-secrecy policy (`Pfs::Off` for
/// `attacker_succeeds_without_pfs`).
fn fs_scenario(derived: bool, pfs: Pfs, seed: u64) -> (Sim, Time) {
    let mut sc = ServerConfig::new();
    sc.rekey_interval = Some(secs(2));
    sc.derived = derived;
    sc.pfs = pfs;
    let mut cc = ClientConfig::new();
    cc.hello_interval = secs(2);
    let mut sim = Sim::new(1, sc, cc, seed);
    sim.capturing = true;
    sim.run_for(secs(8));
    assert!(minted(&sim) >= 3, "a few rekeys: {:?}", sim.generations(0));
    let first_exchange = sim.clients[0]
        .events
        .iter()
        .find(|(_, e)| matches!(e, ClientEvent::KeyInstalled { .. }))
        .map(|(t, _)| *t)
        .expect("generation 1 installed");
    (sim, first_exchange)
}

/// Forward secrecy against the init key: whoever later obtains a client's init key (stolen
/// device, leaked provisioning file) and holds a capture of all traffic must not read any data
/// sent after the first key exchange.
#[test]
fn forward_secrecy_attacker_with_init_key_and_capture() {
    // Every policy with an exchange at init: rotations in between ratchet from an exchanged
    // secret the attacker never learns, in secret and derived mode alike.
    for (derived, pfs) in [
        (false, Pfs::EveryRekey),
        (true, Pfs::EveryRekey),
        (false, Pfs::InitOnly),
        (true, Pfs::Every(2)),
    ] {
        let (sim, cutoff) = fs_scenario(derived, pfs, 21);
        let r = attack(&sim.clients[0].init, &sim.capture, cutoff);
        assert!(r.data_after > 0);
        assert!(
            r.control_opened > 0,
            "the attacker opens the handshake itself: {r:?}"
        );
        assert_eq!(
            r.opened_after, 0,
            "pfs {pfs}, derived {derived}: with the init key and a capture the attacker read \
             {} of {} data packets sent after generation 1 was installed at {cutoff:?} ({} \
             under the init key itself, {} under {} generations learned from distributions): \
             {r:?}",
            r.opened_after, r.data_after, r.opened_after_init, r.opened_after_learned, r.learned
        );
    }
}

/// The attacker is sound: without forward secrecy (secret and derived mode alike) it reads
/// every data packet. Keeps the forward-secrecy test honest (0 opened must mean "cannot", not
/// "the attacker is broken").
#[test]
fn attacker_succeeds_without_pfs() {
    for derived in [false, true] {
        let (sim, cutoff) = fs_scenario(derived, Pfs::Off, 22);
        let r = attack(&sim.clients[0].init, &sim.capture, cutoff);
        assert!(r.data_after > 0);
        assert!(r.learned >= 3, "derived={derived}: {r:?}");
        assert_eq!(r.opened_after, r.data_after, "derived={derived}: {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Init-key nonces across boots.
// ---------------------------------------------------------------------------------------------

/// One boot of a client and its server, both starting init-key traffic at `base` (the
/// engine's `init_seq_base`), with `esn`. For the first 0.5 s the client's control messages are
/// lost (the server is unreachable), so both sides keep sending data under the init key (every
/// 100 µs); then the link heals and they converge. Returns (direction, SPI, IV) of every
/// datagram sealed under the init key's SPI: under one init key and direction, an equal
/// (SPI, IV) is an equal (key, nonce).
fn init_key_nonces(esn: bool, base: u64, seed: u64) -> HashSet<(Way, u32, [u8; 12])> {
    let mut sc = ServerConfig::new();
    sc.engine.esn = esn;
    sc.engine.init_seq_base = base;
    let mut cc = ClientConfig::new();
    cc.engine.esn = esn;
    cc.engine.init_seq_base = base;
    cc.max_backoff = secs(1);
    let mut sim = Sim::new(1, sc, cc, seed);
    sim.capturing = true;
    sim.data_interval = Some(Duration::from_micros(100));
    sim.up.control_loss = 1.0;
    sim.run_for(ms(500));
    sim.up.control_loss = 0.0;
    assert!(
        sim.run_until_converged(ms(10), secs(10)).is_some(),
        "boot did not converge: {:?}",
        sim.generations(0)
    );
    let init_spi = sim.clients[0].init.info.spi.get();
    // Version 3: nothing but handshake messages under the init key.
    let data_under_init = sim
        .capture
        .iter()
        .filter(|c| !c.control && spi_of(&c.bytes) == init_spi)
        .count();
    assert_eq!(data_under_init, 0, "data sealed under the init key");
    // The sequence-number and IV fields (12 bytes): under version 3 each handshake message's key
    // derives from them, so equal fields are the only way to equal (key, nonce) pairs; under
    // version 1 the nonce was the IV under one key, and the sequence number its low half.
    sim.capture
        .iter()
        .filter(|c| !c.injected && spi_of(&c.bytes) == init_spi)
        .map(|c| {
            let mut fresh = [0u8; 12];
            fresh[..4].copy_from_slice(&c.bytes[4..8]);
            fresh[4..].copy_from_slice(&iv_of(&c.bytes));
            (c.way, init_spi, fresh)
        })
        .collect()
}

/// The init key outlives every restart; its nonces must never repeat across boots, whatever
/// the wall clock did in between: here it stepped back 1 µs between two boots (the second boot
/// starts 4096 sequence numbers below the first), and with ESN off (the C ABI then forces the
/// base to 1 in every boot).
#[test]
fn init_nonces_never_repeat_across_boots_clock_back_and_esn_off() {
    // 2023-11-14T22:13:20Z in microseconds since the UNIX epoch.
    let t1: u64 = 1_700_000_000_000_000;
    let t0 = t1 - 1;
    let variants = [
        (
            "esn on, clock stepped back 1 µs",
            true,
            boot_seq_base(t1),
            boot_seq_base(t0),
        ),
        ("esn off (base forced to 1)", false, 1, 1),
    ];
    let mut failures = Vec::new();
    for (name, esn, first, second) in variants {
        let a = init_key_nonces(esn, first, 41);
        let b = init_key_nonces(esn, second, 42);
        for (way, label) in [
            (Way::ToServer, "client → server"),
            (Way::ToClient, "server → client"),
        ] {
            let repeated = b.iter().filter(|n| n.0 == way && a.contains(n)).count();
            let total = b.iter().filter(|n| n.0 == way).count();
            if repeated > 0 {
                failures.push(format!(
                    "{name}: {repeated} of {total} init-key (key, nonce) pairs of boot 2 ({label}) \
                     were already used in boot 1"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 1b. The same for a group member.
// ---------------------------------------------------------------------------------------------

/// A restarted group member holds only its keys; an attacker replays the first group key the
/// controller ever sent it (from its previous boot). The member must not install that old
/// generation (its sender key and sequence numbers were used before: it would seal under the
/// same (key, nonce) again), and it must be back to transmitting within the stated bound.
///
/// **Failed before the group channel moved to version 3** (commit b1952d0, run with
/// `--ignored`: 3 reused (key, nonce) pairs): the channel sealed under the member's init key
/// with a counter, and a restarted member's window accepted the replay.
#[test]
fn replayed_group_key_after_member_restart_installs_nothing_old() {
    use pktcrypt_core::control::GroupConfig;
    use pktcrypt_tests::group_sim::GroupSim;
    let mut sim = GroupSim::new(3, GroupConfig::new(), 5);
    sim.run_for(secs(3));
    assert!(sim.controller.generation() >= 1, "the group keyed first");
    // Every datagram the controller sent member 0 so far (handshake, every group key and
    // transition), replayed in order right after the restart.
    let recorded: Vec<Vec<u8>> = sim
        .capture
        .iter()
        .filter(|(_, to, _)| *to == 0)
        .map(|(_, _, b)| b.clone())
        .collect();
    assert!(recorded.len() >= 4);
    sim.run_for(secs(2));
    let before = sim.controller.generation();
    sim.restart_member(0);
    let restarted_at = sim.now;
    let mut outcomes = Vec::new();
    for bytes in &recorded {
        outcomes.push(sim.inject_to_member(0, bytes));
        assert_eq!(
            sim.members[0].generation(),
            0,
            "a replay installed a group generation: {outcomes:?}"
        );
        assert!(sim.members[0].held().is_empty());
    }
    // The replayed handshake answer (two fragments: the first is only buffered) does not match
    // the new init request; the rest is under channel keys the restarted member never had.
    use pktcrypt_core::control::Incoming;
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Incoming::Dropped(DropReason::StaleHandshake))),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            Incoming::Dropped(DropReason::StaleHandshake | DropReason::UnknownSpi)
                | Incoming::Control { .. }
        )),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Incoming::Dropped(DropReason::UnknownSpi)))
            .count()
            >= recorded.len() - 2,
        "{outcomes:?}"
    );
    sim.run_for(secs(5));
    assert!(
        sim.nonce_reuse.is_empty(),
        "after replayed group keys the restarted member reused {} (key, nonce) pairs, e.g. \
         {:x?}",
        sim.nonce_reuse.len(),
        sim.nonce_reuse.first()
    );
    assert_eq!(
        sim.members[0].generation(),
        sim.controller.generation(),
        "the member is back on the group's generation"
    );
    // It transmits again, under a generation minted after its restart (the "rejoin" rekey).
    assert!(sim.controller.generation() > before);
    assert!(
        sim.members[0].tx_generation() > before,
        "tx {} before {before} now {} rollouts {:?} state {:?} events {:?}",
        sim.members[0].tx_generation(),
        sim.controller.generation(),
        sim.rollouts(),
        sim.members[0].state(),
        sim.events
            .iter()
            .filter(|(t, _)| *t >= restarted_at)
            .collect::<Vec<_>>()
    );
    let rejoin = sim
        .events
        .iter()
        .find(|(t, e)| {
            *t >= restarted_at
                && matches!(
                    e,
                    GroupEvent::RolloutStarted {
                        reason: "rejoin",
                        ..
                    }
                )
        })
        .map(|(t, _)| *t)
        .expect("a rejoin rollout");
    assert!(
        rejoin.saturating_sub(restarted_at) < secs(2),
        "rejoin rollout {:?} after the restart",
        rejoin.saturating_sub(restarted_at)
    );
}

/// Even without an attacker, a restarted group member must not reuse a (key, nonce) pair: it
/// gets the group's current key back (catch-up), but receive-only; it transmits only under a
/// generation minted after its restart.
///
/// **Failed before** (commit b1952d0, `--ignored`: 45 reused pairs in this scenario): a
/// member's sender key of a generation does not change across its restarts, and it sealed from
/// sequence number 1 again under the current generation.
#[test]
fn restarted_group_member_reuses_no_nonce() {
    use pktcrypt_core::control::GroupConfig;
    use pktcrypt_tests::group_sim::GroupSim;
    for seed in [5, 6, 7] {
        let mut sim = GroupSim::new(3, GroupConfig::new(), seed);
        sim.run_for(secs(5));
        assert!(sim.controller.generation() >= 1, "the group keyed first");
        // Restart in every phase of a rollout too.
        sim.restart_member(0);
        sim.run_for(secs(5));
        sim.controller.rekey(sim.now, "test");
        sim.run_for(ms(30));
        sim.restart_member(1);
        sim.run_for(ms(150));
        sim.restart_member(2);
        sim.run_for(secs(5));
        assert!(
            sim.nonce_reuse.is_empty(),
            "seed {seed}: the restarted members reused {} (key, nonce) pairs, e.g. {:x?}",
            sim.nonce_reuse.len(),
            sim.nonce_reuse.first()
        );
        let g = sim.controller.generation();
        for m in &sim.members {
            assert_eq!((m.generation(), m.tx_generation()), (g, g), "seed {seed}");
        }
        assert_eq!(sim.stats.key_mismatch, 0, "seed {seed}");
    }
}

/// A group key only ever travels over a forward-secret channel: an attacker holding a member's
/// control init key, the group init key and a capture of everything the controller sent that
/// member learns no group key with `pfs` on, and every one with `pfs = "off"` (so the test can
/// fail).
#[test]
fn group_keys_travel_only_over_forward_secret_channels() {
    use pktcrypt_core::control::GroupConfig;
    use pktcrypt_tests::group_sim::{GroupSim, member_control_key};
    for pfs in [Pfs::EveryRekey, Pfs::InitOnly, Pfs::Off] {
        let mut config = GroupConfig::new();
        config.pfs = pfs;
        config.rekey_interval = Some(secs(2));
        config.channel_rekey_interval = Some(secs(3));
        let mut sim = GroupSim::new(3, config, 9);
        sim.run_for(secs(10));
        assert!(sim.controller.generation() >= 3);
        let init = member_control_key(0);
        let mut attacker = Attacker::new(&init);
        let mut group_keys = 0;
        let mut opened = 0;
        for (at, to, bytes) in &sim.capture {
            if *to != 0 {
                continue;
            }
            let c = Captured {
                at: *at,
                way: Way::ToClient,
                client: 0,
                control: true,
                injected: false,
                destination: None,
                bytes: bytes.clone(),
            };
            if matches!(attacker.open(&c), Got::Control) {
                opened += 1;
            }
            group_keys = attacker.group_keys;
        }
        eprintln!(
            "pfs {pfs}: attacker opened {opened} controller messages, {group_keys} group keys"
        );
        if pfs == Pfs::Off {
            assert!(group_keys >= 3, "the attacker works: {group_keys}");
        } else {
            assert!(opened > 0, "it opens the handshake itself");
            assert_eq!(group_keys, 0, "pfs {pfs}: group keys read by the attacker");
        }
    }
}
