//! The gateway's frame decisions (`pktcrypt_io::gateway::decide`, what every worker runs) on
//! arbitrary frames, with real keys: gateways A (10.1.0.0/24, fd01::/64) and C (10.3.0.0/24,
//! fd03::/64) are clients of hub B (10.2.0.0/24, fd02::/64), the fixture the unit tests use
//! (`pktcrypt_io::testing`, feature `testing`), here with outer headers over IPv4 or IPv6. The
//! keys are made once (key expansion would cost more than the rest of a run); paths, counters
//! and deciders afresh for every input. What carries over between inputs is only the SAs'
//! sequence numbers and replay windows, which move forward together (a genuine packet is
//! always fresh at the receiver; no input can forge one), so a decision depends on its input
//! alone.
//!
//! The first bytes choose a scenario and a configuration:
//! - raw frames (a batch of 1-4) into A's inner side, and what A sealed into B's outer side;
//! - raw frames into B's outer side;
//! - an inner packet (addresses and lengths optionally fixed up from a small table so that it
//!   routes) through A, the sealed frame through B and, if B re-seals it as a hub, through C;
//! - the same with the rest of the input XORed over the sealed frame from its first byte (a
//!   genuine packet with arbitrary edits: headers, ESP or both).
//!
//! Nothing may panic, and:
//! - every frame gets one decision, and every (at, len) lies inside the frame;
//! - what B (or C) delivers or re-seals is exactly the inner packet A sealed, from A's prefixes
//!   to B's (or, at a hub only, C's); nothing sealed from an inner frame opens as a control
//!   message;
//! - a sealed frame with any byte of its ESP part changed is never delivered, re-sealed or passed
//!   to the control thread.
#![no_main]

use core::net::{IpAddr, Ipv6Addr};
use libfuzzer_sys::fuzz_target;
use pktcrypt_io::gateway::Prefix;
use pktcrypt_io::gateway::decide::Decision;
use pktcrypt_io::testing::{
    self, FRAME, HEADROOM, HOST_A as HOST, INNER_MAC, Keys, TestFrame, local,
};
use std::sync::OnceLock;
use std::time::Instant;

/// Addresses the fix-up writes into inner packets (index: a nibble of the input, low 3 bits).
const V4: [[u8; 4]; 8] = [
    [10, 1, 0, 5],
    [10, 2, 0, 9],
    [10, 3, 0, 7],
    [10, 1, 0, 6],
    [8, 8, 8, 8],
    [10, 2, 0, 1],
    [0, 0, 0, 0],
    [224, 0, 0, 1],
];
const V6: [&str; 8] = [
    "fd01::5",
    "fd02::9",
    "fd03::7",
    "fd01::6",
    "2001:db8::1",
    "fd02::1",
    "::",
    "ff02::1",
];

fn now() -> Instant {
    static NOW: OnceLock<Instant> = OnceLock::new();
    *NOW.get_or_init(Instant::now)
}

/// The keys of A, B, C, made once.
fn keys() -> &'static [Keys; 3] {
    static KEYS: OnceLock<[Keys; 3]> = OnceLock::new();
    KEYS.get_or_init(|| [0, 1, 2].map(Keys::new))
}

/// A gateway of the fixture (`pktcrypt_io::testing`) on the keys made once.
type Gateway = testing::Gateway<&'static Keys>;

/// Site `site` afresh (paths, counters, decider) on its keys; outer headers over IPv6 if `v6`.
fn gateway(site: usize, v6: bool) -> Gateway {
    let mut g = Gateway::new(site, &keys()[site], v6);
    g.now = now();
    g
}

/// A batch of frames through one side (the fixture checks one decision per frame, each inside
/// its frame); the messages for the control thread are dropped.
fn decide(g: &mut Gateway, outer: bool, frames: &mut [TestFrame]) -> Vec<Decision> {
    let out = g.decide(outer, frames);
    let _ = g.decider.messages().count();
    out
}

/// One frame through one side.
fn one(g: &mut Gateway, outer: bool, data: &[u8]) -> (Decision, TestFrame) {
    let mut frames = [TestFrame::new(data)];
    let d = decide(g, outer, &mut frames)[0];
    let [f] = frames;
    (d, f)
}

/// The inner IP packet of an Ethernet frame, parsed independently of the gateway: up to two
/// VLAN tags, IPv4 or IPv6 by ethertype and version, its length from the header.
fn ip_packet(frame: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    let mut tags = 0;
    loop {
        let t = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        match t {
            0x8100 | 0x88a8 if tags < 2 => {
                at += 4;
                tags += 1;
            }
            0x0800 | 0x86dd => {
                let ip = frame.get(at + 2..)?;
                let len = match (t, ip.first()? >> 4) {
                    (0x0800, 4) if ip.len() >= 20 => {
                        usize::from(u16::from_be_bytes([ip[2], ip[3]]))
                    }
                    (0x86dd, 6) if ip.len() >= 40 => {
                        40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]))
                    }
                    _ => return None,
                };
                return ip.get(..len);
            }
            _ => return None,
        }
    }
}

fn src_dst(ip: &[u8]) -> (IpAddr, IpAddr) {
    if ip[0] >> 4 == 4 {
        let s: [u8; 4] = ip[12..16].try_into().expect("v4");
        let d: [u8; 4] = ip[16..20].try_into().expect("v4");
        (s.into(), d.into())
    } else {
        let s: [u8; 16] = ip[8..24].try_into().expect("v6");
        let d: [u8; 16] = ip[24..40].try_into().expect("v6");
        (s.into(), d.into())
    }
}

fn within(prefixes: &[Prefix], a: IpAddr) -> bool {
    prefixes.iter().any(|p| p.contains(a))
}

/// The IP packet a delivering decision hands on.
fn delivered(d: Decision, f: &[u8]) -> Option<&[u8]> {
    match d {
        Decision::Inner { at, len } => Some(&f[at + 14..at + len]),
        Decision::Kernel { at, len, .. } => Some(&f[at..at + len]),
        _ => None,
    }
}

/// The configuration byte.
struct Config {
    hub: bool,
    b_neighbours: bool,
    c_neighbours: bool,
    a_no_mac: bool,
    small_mtu: bool,
    fixup: bool,
    v6_outer: bool,
}

struct Sites {
    a: Gateway,
    b: Gateway,
    c: Gateway,
    cfg: Config,
}

impl Sites {
    fn new(flags: u8) -> Self {
        let cfg = Config {
            hub: flags & 1 != 0,
            b_neighbours: flags & 2 != 0,
            c_neighbours: flags & 4 != 0,
            a_no_mac: flags & 8 != 0,
            small_mtu: flags & 16 != 0,
            fixup: flags & 32 == 0,
            v6_outer: flags & 64 != 0,
        };
        let mut a = gateway(0, cfg.v6_outer);
        let mut b = gateway(1, cfg.v6_outer);
        let mut c = gateway(2, cfg.v6_outer);
        b.paths.hub = cfg.hub;
        if cfg.small_mtu {
            a.paths.outer_mtu = 1280;
        }
        if cfg.a_no_mac {
            for p in a.paths.peers.values_mut() {
                p.mac = None;
            }
        }
        for (g, yes) in [(&mut b, cfg.b_neighbours), (&mut c, cfg.c_neighbours)] {
            if yes {
                for v4 in V4 {
                    g.paths.inner_neighbours.insert(v4.into(), HOST);
                }
                for v6 in V6 {
                    g.paths
                        .inner_neighbours
                        .insert(v6.parse().expect("v6"), HOST);
                }
            }
        }
        Self { a, b, c, cfg }
    }

    /// What B (then C) does with a frame A sealed from an inner frame whose IP packet is
    /// `original`; `edited_esp`: whether any byte of its ESP part was changed.
    fn carry(&mut self, wire: &[u8], original: Option<&[u8]>, edited_esp: bool) {
        let (d, f) = one(&mut self.b, true, wire);
        assert_ne!(
            d,
            Decision::Control,
            "a sealed inner packet opened as a control message"
        );
        if edited_esp {
            assert!(
                matches!(d, Decision::Drop(_)),
                "an edited ESP packet was accepted: {d:?}"
            );
            return;
        }
        let original = original.expect("A sealed an IP packet");
        let (src, dst) = src_dst(original);
        if let Some(ip) = delivered(d, &f.buf) {
            assert_eq!(ip, original, "B delivered another packet");
            assert!(
                within(&local(0), src),
                "B delivered a source outside A: {src}"
            );
            assert!(within(&local(1), dst), "B delivered to {dst}, not behind B");
            if let Decision::Kernel { dst: to, .. } = d {
                assert_eq!(to, dst);
            }
        }
        if let Decision::Outer { at, len } = d {
            assert!(self.cfg.hub, "B re-sealed without being a hub");
            assert!(
                within(&local(0), src),
                "B forwarded a source outside A: {src}"
            );
            assert!(within(&local(2), dst), "B forwarded to {dst}, not behind C");
            let (d, f) = one(&mut self.c, true, &f.buf[at..at + len]);
            assert_ne!(d, Decision::Control);
            if let Some(ip) = delivered(d, &f.buf) {
                assert_eq!(ip, original, "C delivered another packet");
            }
        }
    }
}

/// Sets the version, addresses and lengths of an inner packet from the selector byte.
fn fix_up(ip: &mut Vec<u8>, sel: u8) {
    let v6 = sel & 8 != 0;
    let min = if v6 { 40 } else { 20 };
    if ip.len() < min {
        ip.resize(min, 0);
    }
    let (s, d) = (usize::from(sel & 7), usize::from((sel >> 4) & 7));
    let len = ip.len();
    if v6 {
        ip[0] = 0x60 | (ip[0] & 0x0f);
        ip[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        let s: Ipv6Addr = V6[s].parse().expect("v6");
        let d: Ipv6Addr = V6[d].parse().expect("v6");
        ip[8..24].copy_from_slice(&s.octets());
        ip[24..40].copy_from_slice(&d.octets());
    } else {
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        ip[12..16].copy_from_slice(&V4[s]);
        ip[16..20].copy_from_slice(&V4[d]);
    }
}

/// An Ethernet frame to A's inner MAC with `tags` VLAN tags around `ip`.
fn inner_frame(ip: &[u8], tags: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(22 + ip.len());
    f.extend_from_slice(&INNER_MAC[0]);
    f.extend_from_slice(&HOST);
    for k in 0..tags {
        f.extend_from_slice(if k == 0 && tags == 2 {
            &[0x88, 0xa8]
        } else {
            &[0x81, 0x00]
        });
        f.extend_from_slice(&[0, 42]);
    }
    let ethertype: [u8; 2] = if ip.first().is_some_and(|b| b >> 4 == 6) {
        [0x86, 0xdd]
    } else {
        [0x08, 0x00]
    };
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(ip);
    f
}

/// Largest frame: what fits after the headroom, with room to seal.
const MAX_FRAME: usize = FRAME - HEADROOM - 64;

fuzz_target!(|data: &[u8]| {
    let [mode, flags, sel, l0, l1, rest @ ..] = data else {
        return;
    };
    let mut sites = Sites::new(*flags);
    let scenario = mode & 3;
    let tags = usize::from((mode >> 2) & 3) % 3;
    let batch = 1 + usize::from((mode >> 4) & 3);
    match scenario {
        // Raw frames into A's inner side (and what A sealed on to B), or into B's outer side.
        0 | 1 => {
            let rest = &rest[..rest.len().min(MAX_FRAME * batch)];
            let size = rest.len().div_ceil(batch).max(1);
            let chunks: Vec<&[u8]> = rest.chunks(size).collect();
            let mut frames: Vec<TestFrame> = chunks.iter().map(|c| TestFrame::new(c)).collect();
            let outer = scenario == 1;
            let gw = if outer { &mut sites.b } else { &mut sites.a };
            let ds = decide(gw, outer, &mut frames);
            if !outer {
                for ((d, f), c) in ds.iter().zip(&frames).zip(&chunks) {
                    if let Decision::Outer { at, len } = *d {
                        let wire = f.buf[at..at + len].to_vec();
                        sites.carry(&wire, ip_packet(c), false);
                    }
                }
            }
        }
        // An inner packet through A, B and C, the sealed frame edited or not.
        _ => {
            let len = usize::from(u16::from_be_bytes([*l0, *l1]))
                .min(rest.len())
                .min(MAX_FRAME - 22);
            let (ip, mask) = rest.split_at(len);
            let mut ip = ip.to_vec();
            if sites.cfg.fixup {
                fix_up(&mut ip, *sel);
            }
            let inner = inner_frame(&ip, tags);
            let (d, f) = one(&mut sites.a, false, &inner);
            let Decision::Outer { at, len } = d else {
                return;
            };
            let mut wire = f.buf[at..at + len].to_vec();
            let mut edited_esp = false;
            if scenario == 3 {
                // The ESP part starts after Ethernet and the outer IP/UDP headers.
                let esp_at = 14 + if sites.cfg.v6_outer { 48 } else { 28 };
                for (k, (b, m)) in wire.iter_mut().zip(mask).enumerate() {
                    *b ^= m;
                    edited_esp |= *m != 0 && k >= esp_at;
                }
            }
            sites.carry(&wire, ip_packet(&inner), edited_esp);
        }
    }
});
