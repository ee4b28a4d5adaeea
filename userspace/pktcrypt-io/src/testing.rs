//! The three-gateway fixture shared by the decision tests (`gateway/decide/tests.rs`) and the
//! `gateway` fuzz target (`fuzz/`, which turns on the feature `testing`): site A (10.1.0.0/24,
//! fd01::/64) and site C (10.3.0.0/24, fd03::/64) are clients of hub B (10.2.0.0/24,
//! fd02::/64), each pair of sites with its own SA. Frames go through [`Decider::inner`] at one
//! gateway and the sealed result through [`Decider::outer`] at the next, as the workers would
//! move them, over frames in plain memory ([`TestFrame`]): no rings, no privileges.
//!
//! Keys ([`Keys`]: the engine and the data plane made from it) are apart from the rest of a
//! gateway ([`Gateway`]: paths, counters, decider, time) so that the fuzz target can make them
//! once and a gateway afresh for every input.

use crate::gateway::decide::{Context, Decider, Decision, FrameBuf};
use crate::gateway::{Paths, PeerPath, Prefix, Route, WorkerStats};
use crate::net::Mac;
use core::borrow::Borrow;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::sync::atomic::{AtomicU64, Ordering};
use pktcrypt_core::wire::OuterHeader;
use pktcrypt_core::{
    DataPlane, Engine, EngineConfig, Generation, GenerationInfo, PeerId, Role, Secret, Spi, Suite,
    Time,
};
use std::time::Instant;

/// Where received bytes start in a frame (as in a UMEM frame: [`crate::xsk::HEADROOM`]).
pub const HEADROOM: usize = crate::xsk::HEADROOM as usize;
/// Size of a frame ([`crate::xsk::FRAME_SIZE`]).
pub const FRAME: usize = crate::xsk::FRAME_SIZE as usize;
/// A host behind A.
pub const HOST_A: Mac = [0x02, 0, 0, 0, 0x0a, 0x05];
/// A host behind B.
pub const HOST_B: Mac = [0x02, 0, 0, 0, 0x0b, 0x09];
/// The inner interfaces' MACs of A, B, C.
pub const INNER_MAC: [Mac; 3] = [
    [0x02, 1, 0, 0, 0, 0xa],
    [0x02, 1, 0, 0, 0, 0xb],
    [0x02, 1, 0, 0, 0, 0xc],
];
/// The outer interfaces' MACs of A, B, C.
pub const OUTER_MAC: [Mac; 3] = [
    [0x02, 2, 0, 0, 0, 0xa],
    [0x02, 2, 0, 0, 0, 0xb],
    [0x02, 2, 0, 0, 0, 0xc],
];

/// `net/len`.
pub fn prefix(net: &str, len: u8) -> Prefix {
    Prefix {
        net: net.parse().expect("address"),
        len,
    }
}

/// The networks behind site 0 (A), 1 (B), 2 (C).
pub fn local(site: usize) -> Vec<Prefix> {
    match site {
        0 => vec![prefix("10.1.0.0", 24), prefix("fd01::", 64)],
        1 => vec![prefix("10.2.0.0", 24), prefix("fd02::", 64)],
        _ => vec![prefix("10.3.0.0", 24), prefix("fd03::", 64)],
    }
}

/// The sites a site has SAs with: the hub with both others, a client with the hub.
pub fn neighbours(site: usize) -> Vec<usize> {
    if site == 1 { vec![0, 2] } else { vec![1] }
}

/// A site's outer address and port (192.0.2.x, or 2001:db8::x if `v6`).
pub fn outer_addr(site: usize, v6: bool) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 + site as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + site as u8))
    };
    SocketAddr::new(ip, 4500)
}

/// One site's keys: its engine (alive, for control messages), the data plane made from it,
/// and the peer id behind which each other site lies.
pub struct Keys {
    /// The engine: the hub a key server, the others clients.
    pub engine: Engine,
    /// Its data plane, as the workers get it.
    pub plane: DataPlane,
    /// Peer id → the site behind it.
    pub peers: Vec<(PeerId, usize)>,
}

impl Keys {
    /// The keys of site `site` (0: A, 1: B the hub, 2: C): one SA with each of its
    /// [`neighbours`], named by the pair (both ends derive the same).
    pub fn new(site: usize) -> Self {
        let role = if site == 1 {
            Role::KeyServer
        } else {
            Role::Client
        };
        let mut engine = Engine::new(EngineConfig::new(role)).expect("config");
        let mut peers = Vec::new();
        for other in neighbours(site) {
            let spi = 0x1000 + (1u32 << site) + (1u32 << other);
            let g = Generation {
                info: GenerationInfo {
                    number: 0,
                    spi: Spi::new(spi).expect("spi"),
                    suite: Suite::Aes256Gcm,
                },
                secret: Secret::from_bytes([spi as u8; 32]),
            };
            peers.push((engine.add_peer(&g, Time::ZERO).expect("peer"), other));
        }
        Self {
            plane: engine.data_plane().expect("plane"),
            engine,
            peers,
        }
    }

    /// The peer id of site `site`.
    ///
    /// # Panics
    /// If this site has no SA with it.
    pub fn peer(&self, site: usize) -> PeerId {
        self.peers
            .iter()
            .find(|(_, s)| *s == site)
            .map(|(id, _)| *id)
            .expect("peer")
    }
}

/// The paths of site `site` with `keys`: every peer's outer headers (over IPv6 if `v6`) and
/// next-hop MAC (resolved), routes (a client reaches every other site through the hub, the hub
/// each site directly), the inner policy's sources and local networks; not a hub, no inner
/// neighbours, outer MTU 1500.
pub fn paths(site: usize, keys: &Keys, v6: bool) -> Paths {
    let mut paths = Paths {
        inner_mac: INNER_MAC[site],
        outer_mac: OUTER_MAC[site],
        outer_mtu: 1500,
        inner_v4: Some(Ipv4Addr::new(10, 1 + site as u8, 0, 1)),
        inner_v6: Some(Ipv6Addr::new(0xfd01 + site as u16, 0, 0, 0, 0, 0, 0, 1)),
        esp_port: 4500,
        local: local(site),
        ..Paths::default()
    };
    for &(id, other) in &keys.peers {
        paths.peers.insert(
            id.0,
            PeerPath {
                header: OuterHeader::new(outer_addr(site, v6), outer_addr(other, v6), 64)
                    .expect("header"),
                mac: Some(OUTER_MAC[other]),
            },
        );
        let behind: Vec<usize> = if site == 1 {
            vec![other]
        } else {
            (0..3).filter(|s| *s != site).collect()
        };
        for s in behind {
            for p in local(s) {
                paths.routes.push(Route {
                    net: p.net,
                    len: p.len,
                    peer: id,
                    path: id.0,
                });
                paths.sources.entry(id.0).or_default().push(p);
            }
        }
    }
    paths.sort_routes();
    paths
}

/// A frame in plain memory, laid out like a UMEM frame: [`FRAME`] bytes, the received ones at
/// [`HEADROOM`].
#[derive(Clone, Debug)]
pub struct TestFrame {
    /// The whole frame.
    pub buf: Vec<u8>,
    /// How many bytes were received.
    pub len: usize,
}

impl TestFrame {
    /// A frame that received `data`.
    ///
    /// # Panics
    /// If `data` does not fit after the headroom.
    pub fn new(data: &[u8]) -> Self {
        let mut buf = vec![0u8; FRAME];
        buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        Self {
            buf,
            len: data.len(),
        }
    }

    /// The bytes a decision queues or hands on.
    ///
    /// # Panics
    /// If the decision sends nothing (control message, drop).
    pub fn out(&self, d: Decision) -> &[u8] {
        match span(d) {
            Some((at, len)) => &self.buf[at..at + len],
            None => panic!("no frame to send: {d:?}"),
        }
    }
}

/// Where a decision's bytes lie in its frame (`at`, `len`), if it sends any.
pub fn span(d: Decision) -> Option<(usize, usize)> {
    match d {
        Decision::Outer { at, len }
        | Decision::Inner { at, len }
        | Decision::Icmp { at, len }
        | Decision::Kernel { at, len, .. } => Some((at, len)),
        Decision::Control | Decision::Drop(_) => None,
    }
}

/// One gateway: its keys (owned, or borrowed from keys made once), paths, counters, decider
/// and the time it decides at. Everything is public: tests change paths, time and keys between
/// decisions.
pub struct Gateway<K: Borrow<Keys> = Keys> {
    /// The keys.
    pub keys: K,
    /// The paths (from [`paths`]).
    pub paths: Paths,
    /// The worker's counters.
    pub stats: WorkerStats,
    /// The decider.
    pub decider: Decider,
    /// The time of the next decisions.
    pub now: Instant,
    /// The worker's own UDP source port (`None`: the ESP port of the paths' headers).
    pub source_port: Option<u16>,
}

impl<K: Borrow<Keys>> Gateway<K> {
    /// Site `site` with `keys` (made by `Keys::new(site)`); outer headers over IPv6 if `v6`.
    pub fn new(site: usize, keys: K, v6: bool) -> Self {
        let paths = paths(site, keys.borrow(), v6);
        Self {
            keys,
            paths,
            stats: WorkerStats::new(),
            decider: Decider::new(),
            now: Instant::now(),
            source_port: None,
        }
    }

    /// The peer id of site `site`.
    pub fn peer(&self, site: usize) -> PeerId {
        self.keys.borrow().peer(site)
    }

    /// A batch of frames through one side (`outer`: [`Decider::outer`], else
    /// [`Decider::inner`]), lent as [`FrameBuf`]s the way a worker lends UMEM frames.
    ///
    /// # Panics
    /// Unless there is one decision per frame and each decision's bytes lie inside its frame.
    pub fn decide(&mut self, outer: bool, frames: &mut [TestFrame]) -> Vec<Decision> {
        let cx = Context {
            keys: &self.keys.borrow().plane,
            paths: &self.paths,
            stats: &self.stats,
            now: self.now,
            source_port: self.source_port,
        };
        let mut lent: Vec<FrameBuf<'_>> = frames
            .iter_mut()
            .map(|f| FrameBuf {
                buf: &mut f.buf,
                off: HEADROOM,
                len: f.len,
            })
            .collect();
        let mut out = Vec::new();
        if outer {
            self.decider.outer(&cx, &mut lent, &mut out);
        } else {
            self.decider.inner(&cx, &mut lent, &mut out);
        }
        assert_eq!(out.len(), frames.len(), "one decision per frame");
        for (d, f) in out.iter().zip(frames.iter()) {
            if let Some((at, len)) = span(*d) {
                assert!(
                    at.checked_add(len).is_some_and(|end| end <= f.buf.len()),
                    "{d:?}"
                );
            }
        }
        out
    }

    /// One inner frame through [`Decider::inner`].
    pub fn inner(&mut self, frame: &[u8]) -> (Decision, TestFrame) {
        self.one(false, frame)
    }

    /// One outer frame through [`Decider::outer`].
    pub fn outer(&mut self, frame: &[u8]) -> (Decision, TestFrame) {
        self.one(true, frame)
    }

    fn one(&mut self, outer: bool, frame: &[u8]) -> (Decision, TestFrame) {
        let mut f = [TestFrame::new(frame)];
        let d = self.decide(outer, &mut f)[0];
        let [f] = f;
        (d, f)
    }

    /// A counter's value.
    pub fn count(&self, c: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        c(&self.stats).load(Ordering::Relaxed)
    }
}

/// The triangle (A, B the hub, C), keys made afresh, outer headers over IPv4.
pub fn sites() -> (Gateway, Gateway, Gateway) {
    let site = |s| Gateway::new(s, Keys::new(s), false);
    (site(0), site(1), site(2))
}
