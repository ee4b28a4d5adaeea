//! Every rekey trigger of a key server and of a client, through the one control-plane API the
//! daemons, the C library and the Python module drive ([`Endpoint`]), fires exactly at its
//! threshold: one event short of it nothing happens, at it the trigger is reported (naming
//! itself) and the pair rotates to a new generation. Only the calls those drivers make are
//! used: `seal`, `handle_datagram`, `handle_timeout` (no `check_triggers`, which only the
//! gateway's control thread calls for its workers' packets); and, in transport mode,
//! `seal_transport` and `handle_transport`.
//!
//! Also the defaults (`RekeyTriggers::for_suite`) against the AEAD limits of RFC 9001 §6.6.

use pktcrypt_core::control::{
    ClientConfig, ClientEvent, Endpoint, Event, Incoming, KeyClient, KeyServer, RekeyTriggers,
    SeededRandom, ServerConfig, ServerEvent,
};
use pktcrypt_core::wire::esp::{self, ESP_HEADER_LEN, NextHeader};
use pktcrypt_core::wire::{TRANSPORT_HEADROOM, TRANSPORT_OVERHEAD, UdpPorts};
use pktcrypt_core::{PeerId, Slot, Suite, Time};
use pktcrypt_tests::sim::init_key;
use std::time::Duration;

/// A trigger none of these tests reaches.
const NEVER: u64 = u64::MAX / 4;

fn quiet() -> RekeyTriggers {
    RekeyTriggers {
        packets_sealed: NEVER,
        packets_opened: NEVER,
        packets_total: NEVER,
        bytes: NEVER,
        auth_failures: NEVER,
        max_age: None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

struct Pair {
    server: Endpoint,
    client: Endpoint,
    peer: PeerId,
    now: Time,
    /// Triggers reported, by side.
    fired: Vec<(Side, &'static str)>,
    /// Data in transport mode (`seal_transport`, `handle_transport`): `len` bytes of payload
    /// after a 20-byte IPv4 header.
    transport: bool,
}

impl Pair {
    /// A server and a client with `t` on `side` (the other side quiet), after the init
    /// handshake.
    fn new(side: Side, t: RekeyTriggers) -> Self {
        let mut sc = ServerConfig::new();
        sc.rekey_interval = None;
        sc.reorder_grace = Duration::ZERO;
        sc.triggers = if side == Side::Server { t } else { quiet() };
        let mut cc = ClientConfig::new();
        cc.hello_interval = Duration::from_secs(3600);
        cc.triggers = if side == Side::Client { t } else { quiet() };
        let init = init_key(0, Suite::Aes256Gcm);
        let now = Time::ZERO;
        let mut server = KeyServer::new(sc, Box::new(SeededRandom::new(1))).expect("server");
        let peer = server.add_client(&init, None, now).expect("add");
        let client =
            KeyClient::new(cc, &init, Box::new(SeededRandom::new(2)), now).expect("client");
        let mut p = Pair {
            server: Endpoint::from(server),
            client: Endpoint::from(client),
            peer,
            now,
            fired: Vec::new(),
            transport: false,
        };
        p.pump();
        assert_eq!(p.client.generation(), 1, "handshake done");
        p.fired.clear();
        p
    }

    fn endpoint(&mut self, side: Side) -> &mut Endpoint {
        match side {
            Side::Server => &mut self.server,
            Side::Client => &mut self.client,
        }
    }

    /// Events and control messages both ways until both are quiet; timers due run first.
    fn pump(&mut self) {
        for _ in 0..50 {
            let mut moved = false;
            for side in [Side::Server, Side::Client] {
                let now = self.now;
                let ep = self.endpoint(side);
                if ep.poll_timeout().is_some_and(|t| t <= now) {
                    ep.handle_timeout(now);
                }
                let mut out = Vec::new();
                let mut fired = Vec::new();
                while let Some(e) = ep.poll_event() {
                    match e {
                        Event::Server(ServerEvent::Triggered { reason, .. })
                        | Event::Client(ClientEvent::Triggered { reason }) => fired.push(reason),
                        _ => {}
                    }
                }
                while let Some(t) = ep.poll_transmit() {
                    out.push(t.contents);
                }
                self.fired.extend(fired.into_iter().map(|r| (side, r)));
                let other = match side {
                    Side::Server => Side::Client,
                    Side::Client => Side::Server,
                };
                for mut d in out {
                    moved = true;
                    let now = self.now;
                    let r = self.endpoint(other).handle_datagram(now, None, &mut d);
                    assert!(matches!(r, Incoming::Control { .. }), "{r:?}");
                }
            }
            if !moved {
                return;
            }
        }
        panic!("control messages never settle");
    }

    /// In transport mode: an IPv4 packet with `len` bytes of TCP payload sealed on `from`
    /// (returned), and the last byte flipped when `forge`.
    fn seal_transport(&mut self, from: Side, len: usize, forge: bool) -> Vec<u8> {
        let (peer, now) = (self.peer, self.now);
        let total = 20 + len;
        let mut buf = vec![0u8; total + TRANSPORT_OVERHEAD];
        let ip = &mut buf[TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + total];
        ip[..10].copy_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0, 0, 64, 6]);
        let n = self
            .endpoint(from)
            .seal_transport(now, peer, &mut buf, total, UdpPorts::ESP_IN_UDP)
            .expect("seal");
        buf.truncate(n);
        if forge {
            buf[n - 1] ^= 1;
        }
        buf
    }

    /// Seals one data packet of `len` bytes on `from` and opens it on the other side.
    fn send(&mut self, from: Side, len: usize) {
        let (peer, now) = (self.peer, self.now);
        let to = match from {
            Side::Server => Side::Client,
            Side::Client => Side::Server,
        };
        if self.transport {
            let mut pkt = self.seal_transport(from, len, false);
            let r = self.endpoint(to).handle_transport(now, &mut pkt);
            assert!(matches!(r, Incoming::Data { .. }), "{r:?}");
            return;
        }
        let mut buf = vec![0u8; ESP_HEADER_LEN + len + esp::MAX_OVERHEAD];
        let inner = &mut buf[ESP_HEADER_LEN..ESP_HEADER_LEN + len];
        inner[0] = 0x45;
        inner[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let n = self
            .endpoint(from)
            .seal(now, peer, &mut buf, len, NextHeader::Ipv4)
            .expect("seal");
        buf.truncate(n);
        let r = self.endpoint(to).handle_datagram(now, None, &mut buf);
        assert!(matches!(r, Incoming::Data { .. }), "{r:?}");
    }

    /// A forged packet to `to` under the SPI it receives the newest generation with.
    fn forge(&mut self, to: Side) {
        let (peer, now) = (self.peer, self.now);
        let from = match to {
            Side::Server => Side::Client,
            Side::Client => Side::Server,
        };
        if self.transport {
            let mut pkt = self.seal_transport(from, 40, true);
            let r = self.endpoint(to).handle_transport(now, &mut pkt);
            assert!(matches!(r, Incoming::Dropped(_)), "{r:?}");
            return;
        }
        let mut buf = vec![0u8; ESP_HEADER_LEN + 40 + esp::MAX_OVERHEAD];
        buf[ESP_HEADER_LEN] = 0x45;
        let n = self
            .endpoint(from)
            .seal(now, peer, &mut buf, 40, NextHeader::Ipv4)
            .expect("seal");
        buf.truncate(n);
        buf[n - 1] ^= 1;
        let r = self.endpoint(to).handle_datagram(now, None, &mut buf);
        assert!(matches!(r, Incoming::Dropped(_)), "{r:?}");
    }

    /// The counters of `side`'s newest generation.
    fn counters(&mut self, side: Side) -> pktcrypt_core::SaCounters {
        let peer = self.peer;
        let peer = if side == Side::Client {
            PeerId(0)
        } else {
            peer
        };
        self.endpoint(side)
            .engine()
            .sa_counters(peer, Slot::Newest)
            .expect("newest")
            .0
    }

    /// A key server rotates a client whose trigger fired at the client's next proof of its key
    /// (any packet under it): one data packet from the client, then the exchange.
    fn prove(&mut self) {
        self.send(Side::Client, 40);
        self.pump();
    }

    fn newest(&mut self) -> u64 {
        self.client.generation()
    }
}

/// What one step of a trigger's test does, and the trigger set to fire after `threshold` of
/// them given the counters the handshake left.
struct Case {
    name: &'static str,
    /// The triggers, from the counters after the handshake and the threshold in steps.
    set: fn(&pktcrypt_core::SaCounters, u64) -> RekeyTriggers,
    step: fn(&mut Pair, Side),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "packets_sealed",
            set: |c, k| RekeyTriggers {
                packets_sealed: c.packets_sealed + k,
                ..quiet()
            },
            step: |p, side| p.send(side, 100),
        },
        Case {
            name: "packets_opened",
            set: |c, k| RekeyTriggers {
                packets_opened: c.packets_opened + k,
                ..quiet()
            },
            step: |p, side| {
                p.send(
                    if side == Side::Server {
                        Side::Client
                    } else {
                        Side::Server
                    },
                    100,
                )
            },
        },
        Case {
            name: "packets_total",
            set: |c, k| RekeyTriggers {
                packets_total: c.packets_sealed + c.packets_opened + k,
                ..quiet()
            },
            // Alternately sealed and opened.
            step: |p, side| {
                let sealed = p.counters(side).packets_sealed;
                let other = if side == Side::Server {
                    Side::Client
                } else {
                    Side::Server
                };
                p.send(if sealed % 2 == 0 { side } else { other }, 60)
            },
        },
        Case {
            name: "bytes",
            // Steps of 100 bytes each way: 200 bytes a step.
            set: |c, k| RekeyTriggers {
                bytes: c.bytes_sealed + c.bytes_opened + 200 * k,
                ..quiet()
            },
            step: |p, side| {
                p.send(side, 100);
                let other = if side == Side::Server {
                    Side::Client
                } else {
                    Side::Server
                };
                p.send(other, 100);
            },
        },
        Case {
            name: "auth_failures",
            set: |c, k| RekeyTriggers {
                auth_failures: c.auth_failures + k,
                ..quiet()
            },
            step: |p, side| p.forge(side),
        },
    ]
}

#[test]
fn every_counter_trigger_fires_exactly_at_its_threshold_on_either_side() {
    counter_triggers(false);
}

/// The same with data in transport mode: `seal_transport` and `handle_transport` run the
/// triggers as `seal` and `handle_datagram` do (a forgery included).
#[test]
fn transport_mode_data_runs_the_same_triggers() {
    counter_triggers(true);
}

fn counter_triggers(transport: bool) {
    const STEPS: u64 = 7;
    for side in [Side::Server, Side::Client] {
        for case in cases() {
            // The handshake's own messages count too: measure them on a pair without the
            // trigger, then set it that far above.
            let mut probe = Pair::new(side, quiet());
            let base = probe.counters(side);
            let mut p = Pair::new(side, (case.set)(&base, STEPS));
            p.transport = transport;
            assert_eq!(
                p.counters(side),
                base,
                "{side:?} {}: same handshake",
                case.name
            );
            let g = p.newest();
            for i in 1..STEPS {
                (case.step)(&mut p, side);
                p.pump();
                assert!(
                    p.fired.is_empty() && p.newest() == g,
                    "{side:?} {}: fired after {i} of {STEPS}: {:?}",
                    case.name,
                    p.fired
                );
            }
            (case.step)(&mut p, side);
            p.pump();
            assert_eq!(
                p.fired,
                vec![(side, case.name)],
                "{side:?} {}: at the threshold",
                case.name
            );
            p.prove();
            assert_eq!(p.newest(), g + 1, "{side:?} {}: rotated", case.name);
        }
    }
}

/// The age trigger: a client's at the age exactly (its timer), a key server's in its sweep.
#[test]
fn the_age_trigger_fires_at_its_age_on_either_side() {
    let age = Duration::from_secs(90);
    for side in [Side::Server, Side::Client] {
        let mut p = Pair::new(
            side,
            RekeyTriggers {
                max_age: Some(age),
                ..quiet()
            },
        );
        let g = p.newest();
        let installed = p
            .endpoint(side)
            .engine()
            .installed(PeerId(0), Slot::Newest)
            .expect("newest")
            .1;
        // Every timer until just before the age: nothing.
        p.now = installed + age - Duration::from_millis(1);
        p.pump();
        assert!(
            p.fired.is_empty() && p.newest() == g,
            "{side:?}: {:?}",
            p.fired
        );
        match side {
            // A driver sleeps until poll_timeout: a client's must not sleep past the age.
            Side::Client => {
                let deadline = p.client.poll_timeout().expect("a timer");
                assert!(
                    deadline <= installed + age,
                    "next timer {deadline:?} is after the age {:?}",
                    installed + age
                );
                p.now = installed + age;
                p.pump();
            }
            // A key server holds no timer per client (a million of them): its sweep visits
            // every client once per period, here 1/16 of the age, so the trigger fires at the
            // age or at most that much later, never earlier.
            Side::Server => {
                while p.fired.is_empty() {
                    p.now = p.server.poll_timeout().expect("the sweep");
                    assert!(p.now <= installed + age + age / 16, "late: {:?}", p.now);
                    p.pump();
                }
                assert!(p.now >= installed + age, "early: {:?}", p.now);
            }
        }
        assert_eq!(p.fired, vec![(side, "age")], "{side:?}");
        p.prove();
        assert_eq!(p.newest(), g + 1, "{side:?}: rotated");
    }
}

/// The defaults per suite and largest packet against RFC 9001 §6.6 and Appendix B: AES-GCM
/// keeps the attacker's confidentiality advantage at 2^-57 while `q ≤ 2^35 / l` (l: blocks per
/// packet; the RFC's examples: 2^28 packets of up to 2^11 bytes, 2^23 of up to 2^16 bytes) and
/// its integrity limit is 2^52 forgeries; ChaCha20-Poly1305 has no practical confidentiality
/// limit (2^62) and an integrity limit of 2^36. The defaults are half of each, and rekey
/// hourly.
#[test]
fn defaults_are_half_the_rfc_9001_limits() {
    // (largest packet, the RFC's confidentiality limit for it).
    for (frame, rfc) in [
        (1 << 11, 1u64 << 28),
        (1 << 16, 1 << 23),
        (1500, 0),
        (9000, 0),
    ] {
        let l = (frame as u64).div_ceil(16);
        let limit = if rfc > 0 { rfc } else { (1u64 << 35) / l };
        assert_eq!(limit, (1u64 << 35) / l, "frame {frame}: the RFC's figure");
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm] {
            let t = RekeyTriggers::for_suite(suite, frame);
            // Half, less at most a block's worth of rounding (the length block is counted).
            assert!(t.packets_sealed <= limit / 2, "{suite:?} {frame}: {t:?}");
            assert!(
                t.packets_sealed * 100 >= limit / 2 * 98,
                "{suite:?} {frame}: {t:?}"
            );
            assert_eq!(t.packets_opened, t.packets_sealed);
            assert_eq!(t.packets_total, 2 * t.packets_sealed);
            assert!(
                t.bytes <= (1u64 << 35) * 16 / 2,
                "{suite:?}: bytes {}",
                t.bytes
            );
            assert_eq!(t.auth_failures, 1 << 51, "{suite:?}: half of 2^52");
            assert_eq!(t.max_age, Some(Duration::from_secs(3600)));
        }
        let t = RekeyTriggers::for_suite(Suite::ChaCha20Poly1305, frame);
        assert_eq!(t.packets_sealed, 1 << 61, "ChaCha20-Poly1305: half of 2^62");
        assert_eq!(t.auth_failures, 1 << 35, "ChaCha20-Poly1305: half of 2^36");
        assert_eq!(t.max_age, Some(Duration::from_secs(3600)));
    }
}

/// Rekey on demand (`pktcrypt rekey`, `pktcrypt_rekey`, `Endpoint.rekey`): a client asks at
/// once; a key server rotates the client at its next proof; both report reason "operator".
/// An unknown peer, or one still in its init handshake, asks nothing.
#[test]
fn rekey_on_demand_rotates_from_either_side() {
    for side in [Side::Server, Side::Client] {
        let mut p = Pair::new(side, quiet());
        let g = p.newest();
        let (now, peer) = (p.now, p.peer);
        let asked = match side {
            Side::Server => p.server.rekey(now, Some(peer)),
            Side::Client => p.client.rekey(now, None),
        };
        assert_eq!(asked, 1, "{side:?}");
        p.pump();
        assert_eq!(p.fired, vec![(side, "operator")], "{side:?}");
        p.prove();
        assert_eq!(p.newest(), g + 1, "{side:?}: rotated");
        // Every client of a server: the one it has (a moment later: rotations are
        // rate-limited).
        p.now += Duration::from_secs(1);
        let now = p.now;
        if side == Side::Client {
            // Asked again while the first request is in flight: a second rotation follows
            // the first (that one began before the call).
            assert_eq!(p.client.rekey(now, None), 1);
            assert_eq!(p.client.rekey(now, None), 1);
            p.pump();
            p.now += Duration::from_secs(1);
            p.pump();
            assert_eq!(p.newest(), g + 3, "both operator rekeys done");
        }
        if side == Side::Server {
            assert_eq!(p.server.rekey(now, None), 1);
            assert_eq!(p.server.rekey(now, Some(PeerId(99))), 0, "unknown peer");
            p.pump();
            p.prove();
            assert_eq!(p.newest(), g + 2, "rotated again");
        }
    }
    // A client still in its init handshake has nothing to rotate.
    let init = init_key(1, Suite::Aes256Gcm);
    let client = KeyClient::new(
        ClientConfig::new(),
        &init,
        Box::new(SeededRandom::new(3)),
        Time::ZERO,
    )
    .expect("client");
    assert_eq!(Endpoint::from(client).rekey(Time::ZERO, None), 0);
}

/// A generation is checked against its own suite's limits, whatever the triggers were made for:
/// a ChaCha20-Poly1305 server's packet counts never let an AES-GCM generation (after a suite
/// change) past AES-GCM's limits, and AES-GCM's forgery count never lets a ChaCha20-Poly1305
/// one past its integrity limit.
#[test]
fn triggers_are_held_within_each_generations_suite() {
    let frame = 1500;
    let aes = RekeyTriggers::for_suite(Suite::Aes256Gcm, frame);
    let chacha = RekeyTriggers::for_suite(Suite::ChaCha20Poly1305, frame);
    let t = chacha.within_limits(Suite::Aes256Gcm, frame);
    assert_eq!(t.packets_sealed, aes.packets_sealed);
    assert_eq!(t.bytes, aes.bytes);
    assert_eq!(t.auth_failures, chacha.auth_failures);
    let t = aes.within_limits(Suite::ChaCha20Poly1305, frame);
    assert_eq!(t.packets_sealed, aes.packets_sealed);
    assert_eq!(t.auth_failures, chacha.auth_failures);
    // Lower settings stay; the age is not a suite's.
    let mut low = aes;
    low.packets_sealed = 7;
    low.max_age = None;
    assert_eq!(low.within_limits(Suite::Aes128Gcm, frame), low);
}
