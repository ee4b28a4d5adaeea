//! The gateway's per-frame decisions, without I/O.
//!
//! A [`super::Worker`] takes a batch of frames from an AF_XDP ring, lends them to its [`Decider`]
//! as [`FrameBuf`]s (the whole UMEM frame, the received bytes at an offset: the headroom in
//! front is where outer headers go) and acts on the [`Decision`] each frame gets: queue it on the
//! outer or the inner interface, hand its IP packet to the kernel's raw socket, or give the
//! frame back. Everything else happens here: parsing, routing by destination prefix, the MTU
//! check and ICMP answers, the next hop's MAC (checked before sealing, inner packets and
//! re-sealed ones alike: a packet that cannot leave spends no sequence number), sealing and
//! opening through the [`DataPlane`], the inner policy ([`Paths::allows`]), re-sealing at a
//! hub, the Ethernet/IP/UDP headers, control messages and samples for the control thread
//! ([`Decider::messages`]), and the counters whose value follows from the decision. What
//! depends on the rings (`tx_*`, `tx_full`, `icmp_too_big` once queued, `to_kernel`) the
//! worker counts.
//!
//! No system call, no clock (the time is a parameter), no allocation per packet but a control
//! message's copy: so the decisions run in unit tests and fuzz targets without privileges
//! (`userspace/pktcrypt-io/fuzz`), on the same code the workers run.

use super::{IcmpLimiter, OBSERVE_INTERVAL, Paths, ToControl, WorkerStats, bump};
use core::net::{IpAddr, SocketAddr};
use pktcrypt_core::wire::esp::{self, ESP_HEADER_LEN};
use pktcrypt_core::wire::{icmp, ip};
use pktcrypt_core::{DataPlane, DropCounters, DropReason, OpenInfo, OpenOutcome, Packet, PeerId};
use std::collections::HashMap;
use std::time::Instant;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

/// One received frame lent to the [`Decider`]: the whole buffer, with the received bytes at
/// `buf[off..off + len]`. The decider writes headers into the headroom in front of them and
/// seals into the room behind them.
#[derive(Debug)]
pub struct FrameBuf<'a> {
    /// The whole frame (a UMEM frame in the worker).
    pub buf: &'a mut [u8],
    /// Where the received bytes start.
    pub off: usize,
    /// How many bytes were received.
    pub len: usize,
}

impl FrameBuf<'_> {
    /// The received bytes (`None` if `off + len` lies outside the buffer).
    fn data(&self) -> Option<&[u8]> {
        self.buf.get(self.off..self.off.checked_add(self.len)?)
    }
}

/// What to do with one frame. Offsets are into [`FrameBuf::buf`], and `at + len` never exceeds
/// its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Queue `buf[at..at + len]` on the outer interface: an ESP-in-UDP packet with its Ethernet
    /// header (sealed from the inner interface, or re-sealed for another peer at a hub).
    Outer {
        /// Where the Ethernet header starts.
        at: usize,
        /// Frame length.
        len: usize,
    },
    /// Queue `buf[at..at + len]` on the inner interface: an opened packet with its Ethernet
    /// header.
    Inner {
        /// Where the Ethernet header starts.
        at: usize,
        /// Frame length.
        len: usize,
    },
    /// Queue `buf[at..at + len]` on the inner interface: an ICMP / ICMPv6 "too big" answer to the
    /// sender of an inner packet that does not fit the tunnel, under the original's VLAN tags.
    Icmp {
        /// Where the Ethernet header starts.
        at: usize,
        /// Frame length.
        len: usize,
    },
    /// Hand the IP packet `buf[at..at + len]` to the kernel (raw socket, destination `dst`): an
    /// opened packet whose destination has no known neighbour yet.
    Kernel {
        /// Where the IP header starts.
        at: usize,
        /// Packet length.
        len: usize,
        /// Its destination.
        dst: IpAddr,
    },
    /// A control message, passed to the control thread (see [`Decider::messages`]); the frame
    /// goes back.
    Control,
    /// Dropped and counted; the frame goes back.
    Drop(Dropped),
}

/// Why a frame was dropped; each reason is the [`WorkerStats`] counter of the same name, ESP
/// drops the [`DropCounters`] of [`Decider::drops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Not parseable Ethernet/IP (or, on the outer side, not UDP to the ESP port).
    Malformed,
    /// ESP-in-UDP that arrived fragmented.
    Fragmented,
    /// An inner packet to no protected prefix, or to a peer without keys or path.
    NoRoute,
    /// An inner packet too big for the tunnel and not answered (IPv4 without DF, an ICMP
    /// error, rate-limited).
    TooBig,
    /// An opened packet the inner policy refused.
    Policy,
    /// A packet for a peer whose next hop's MAC is unknown.
    NoNeighbour,
    /// Sealing failed (sequence numbers exhausted, no key, no room in the frame).
    SealFailed,
    /// Dropped while opening (ESP parsing, keys, replay, authentication).
    Esp(DropReason),
}

/// A packet to seal: which frame of the batch, where its ESP packet starts, inner length, the
/// SA peer, the path, and (after sealing) the ESP length.
#[derive(Clone, Copy, Debug)]
struct SealJob {
    frame: usize,
    esp_at: usize,
    len: usize,
    peer: PeerId,
    path: u32,
    sealed: usize,
}

/// An ESP packet of the batch being opened.
#[derive(Clone, Copy, Debug)]
struct OpenJob {
    frame: usize,
    esp_at: usize,
    from: SocketAddr,
    outcome: OpenOutcome,
}

/// What a batch is decided with: keys, paths, the worker's counters and the time.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// Current keys.
    pub keys: &'a DataPlane,
    /// Current paths (routes, neighbours, MACs, MTU, policy).
    pub paths: &'a Paths,
    /// The worker's counters.
    pub stats: &'a WorkerStats,
    /// Now (ICMP rate limit, sampling of observed generations).
    pub now: Instant,
    /// The UDP source port of the packets this worker seals (`None`: the port of the path's
    /// header, the ESP port). Each worker sending from a port of its own makes one peer's
    /// traffic several UDP flows, which the receiver's RSS (or a veth's queue choice) spreads
    /// over its queues and so over its workers; a receiver knows a peer by its SPI, never by
    /// the source port.
    pub source_port: Option<u16>,
}

/// One worker's decision state: ESP drop counters, the ICMP limiter, sampled generations, and
/// reused buffers. See the module documentation.
#[derive(Debug)]
pub struct Decider {
    drops: DropCounters,
    observed: HashMap<u32, (u64, Instant)>,
    icmp: IcmpLimiter,
    scratch: Vec<u8>,
    seal_jobs: Vec<SealJob>,
    open_jobs: Vec<OpenJob>,
    packets: Vec<Packet<'static>>,
    outbox: Vec<ToControl>,
}

impl Default for Decider {
    fn default() -> Self {
        Self::new()
    }
}

impl Decider {
    /// A fresh decider (full ICMP bucket, nothing observed yet).
    pub fn new() -> Self {
        Self {
            drops: DropCounters::default(),
            observed: HashMap::new(),
            icmp: IcmpLimiter::new(),
            scratch: vec![0u8; icmp::IPV6_MIN_MTU + 64],
            seal_jobs: Vec::new(),
            open_jobs: Vec::new(),
            packets: Vec::new(),
            outbox: Vec::new(),
        }
    }

    /// ESP packets dropped while opening, per reason (since this decider was made).
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// The messages for the control thread gathered since the last call (control messages and
    /// sampled generations, in packet order).
    pub fn messages(&mut self) -> impl Iterator<Item = ToControl> + '_ {
        self.outbox.drain(..)
    }

    /// Frames from the inner interface (plaintext): route by destination prefix, check the
    /// MTU (answering with ICMP), seal per peer and write the outer headers. `out` gets one
    /// decision per frame, in order.
    pub fn inner(
        &mut self,
        cx: &Context<'_>,
        frames: &mut [FrameBuf<'_>],
        out: &mut Vec<Decision>,
    ) {
        out.clear();
        self.seal_jobs.clear();
        for (i, f) in frames.iter_mut().enumerate() {
            let d = self.route(cx, i, f);
            out.push(d);
        }
        self.seal(cx, frames, out);
    }

    /// One inner frame: a seal job (its decision is written by [`Self::seal`]), an ICMP answer,
    /// or a drop.
    fn route(&mut self, cx: &Context<'_>, i: usize, f: &mut FrameBuf<'_>) -> Decision {
        let (keys, paths, stats) = (cx.keys, cx.paths, cx.stats);
        let Some(data) = f.data() else {
            return malformed(stats);
        };
        let Some((l3, ethertype)) = l3_offset(data) else {
            return malformed(stats);
        };
        let Some((len, _src, dst)) = ip_info(&data[l3..], ethertype) else {
            return malformed(stats);
        };
        let Some(route) = paths
            .lookup(dst)
            .filter(|r| keys.tx_generation(r.peer).is_some())
        else {
            bump(&stats.no_route, 1);
            return Decision::Drop(Dropped::NoRoute);
        };
        let Some(path) = paths.peers.get(&route.path) else {
            bump(&stats.no_route, 1);
            return Decision::Drop(Dropped::NoRoute);
        };
        let outer_len = path.header.len() + esp::esp_len(len);
        if outer_len > paths.outer_mtu {
            return self.too_big(cx, f, l3, len, path.header.len());
        }
        // The next hop's MAC before sealing: a packet that cannot leave uses no sequence number.
        if path.mac.is_none() {
            bump(&stats.no_neighbour, 1);
            return Decision::Drop(Dropped::NoNeighbour);
        }
        let Some(esp_at) = (f.off + l3).checked_sub(ESP_HEADER_LEN) else {
            // No headroom (never with UMEM frames).
            bump(&stats.seal_failed, 1);
            return Decision::Drop(Dropped::SealFailed);
        };
        self.seal_jobs.push(SealJob {
            frame: i,
            esp_at,
            len,
            peer: route.peer,
            path: route.path,
            sealed: 0,
        });
        // Replaced by `seal`.
        Decision::Drop(Dropped::SealFailed)
    }

    /// Answers an inner packet (IP header at `f.off + l3`, `len` bytes) that does not fit the
    /// tunnel: ICMP "fragmentation needed" / ICMPv6 "packet too big" with the largest inner
    /// size that fits, written over the frame: back to the sender's MAC, from the inner
    /// interface's, under the original's VLAN tags.
    fn too_big(
        &mut self,
        cx: &Context<'_>,
        f: &mut FrameBuf<'_>,
        l3: usize,
        len: usize,
        outer_hdr: usize,
    ) -> Decision {
        let (paths, stats) = (cx.paths, cx.stats);
        let ip_at = f.off + l3;
        let original = &f.buf[ip_at..ip_at + len];
        // The largest inner packet that fits: outer MTU minus headers, ICV, trailer, padding.
        let room = paths
            .outer_mtu
            .saturating_sub(outer_hdr + ESP_HEADER_LEN + 16 + 2);
        let fits = (room - room % 4).min(usize::from(u16::MAX)) as u16;
        let from = match original.first().map(|b| b >> 4) {
            Some(4) if icmp::ipv4_dont_fragment(original) => paths.inner_v4.map(IpAddr::V4),
            Some(6) => paths.inner_v6.map(IpAddr::V6),
            _ => None,
        };
        let limited = from.is_some() && !self.icmp.allow(cx.now);
        let from = from.filter(|_| !limited);
        if limited {
            bump(&stats.icmp_rate_limited, 1);
        }
        let answer = from.and_then(|from| icmp::too_big(original, from, fits, &mut self.scratch));
        // The answer goes back the way the original came, from the frame's start: to its
        // source MAC, from ours, under its VLAN tags (which stay where they are, bytes
        // 12..l3-2), then the IP packet.
        let at = f.off;
        let Some(n) = answer.filter(|n| at + l3 + n <= f.buf.len()) else {
            bump(&stats.too_big, 1);
            return Decision::Drop(Dropped::TooBig);
        };
        let eth = &mut f.buf[at..at + l3];
        eth.copy_within(6..12, 0);
        eth[6..12].copy_from_slice(&paths.inner_mac);
        eth[l3 - 2..].copy_from_slice(&ethertype_of(&self.scratch).to_be_bytes());
        f.buf[at + l3..at + l3 + n].copy_from_slice(&self.scratch[..n]);
        Decision::Icmp { at, len: l3 + n }
    }

    /// Seals `self.seal_jobs` (grouped per peer, each group one batch), writes the outer
    /// headers and sets each job's decision.
    fn seal(&mut self, cx: &Context<'_>, frames: &mut [FrameBuf<'_>], out: &mut [Decision]) {
        if self.seal_jobs.is_empty() {
            return;
        }
        let (keys, paths, stats) = (cx.keys, cx.paths, cx.stats);
        // Within a peer the jobs stay in frame order (the key is unique: an in-place sort that
        // allocates nothing, and none at all in the usual batch of one peer).
        if !self.seal_jobs.is_sorted_by_key(|j| (j.peer.0, j.frame)) {
            self.seal_jobs.sort_unstable_by_key(|j| (j.peer.0, j.frame));
        }
        let mut start = 0;
        while start < self.seal_jobs.len() {
            let peer = self.seal_jobs[start].peer;
            let end = start
                + self.seal_jobs[start..]
                    .iter()
                    .take_while(|j| j.peer == peer)
                    .count();
            let group = &mut self.seal_jobs[start..end];
            let mut packets = recycle(core::mem::take(&mut self.packets));
            // The group's frames come in increasing order: one pass hands out each once.
            let mut rest = frames.iter_mut().enumerate();
            for job in group.iter() {
                if let Some((_, f)) = rest.find(|(i, _)| *i == job.frame) {
                    packets.push(Packet::new(&mut f.buf[job.esp_at..], job.len));
                }
            }
            keys.seal_batch(peer, &mut packets);
            for (job, p) in group.iter_mut().zip(&packets) {
                job.sealed = p.sealed().unwrap_or(0);
            }
            self.packets = recycle(packets);
            start = end;
        }
        // One atomic add per batch for the bytes.
        let mut sealed = 0u64;
        for job in &self.seal_jobs {
            let d = finish_seal(job, &mut frames[job.frame], paths, cx.source_port, stats);
            if matches!(d, Decision::Outer { .. }) {
                sealed += job.len as u64;
            }
            out[job.frame] = d;
        }
        bump(&stats.bytes_sealed, sealed);
    }

    /// Frames from the outer interface (ESP-in-UDP): parse, open, then deliver (inner
    /// interface or kernel), re-seal for another peer at a hub, or pass control messages on.
    /// `out` gets one decision per frame, in order.
    pub fn outer(
        &mut self,
        cx: &Context<'_>,
        frames: &mut [FrameBuf<'_>],
        out: &mut Vec<Decision>,
    ) {
        let (keys, paths, stats) = (cx.keys, cx.paths, cx.stats);
        out.clear();
        self.seal_jobs.clear();
        self.open_jobs.clear();
        let mut packets = recycle(core::mem::take(&mut self.packets));
        for (i, f) in frames.iter_mut().enumerate() {
            let Some(data) = f.data() else {
                out.push(malformed(stats));
                continue;
            };
            let l3 = l3_offset(data);
            if l3.is_some_and(|(l3, t)| is_fragment(&data[l3..], t)) {
                bump(&stats.fragmented, 1);
                out.push(Decision::Drop(Dropped::Fragmented));
                continue;
            }
            let parsed = l3.and_then(|(l3, _)| {
                let udp = ip::parse_udp(&data[l3..]).ok()?;
                (udp.dst.port() == paths.esp_port).then_some((l3, udp))
            });
            let Some((l3, udp)) = parsed else {
                out.push(malformed(stats));
                continue;
            };
            let payload = &data[l3 + udp.payload.start..l3 + udp.payload.end];
            if let Err(reason) = ip::classify_udp_payload(payload) {
                self.drops.add(reason);
                out.push(Decision::Drop(Dropped::Esp(reason)));
                continue;
            }
            let esp_at = f.off + l3 + udp.payload.start;
            let len = udp.payload.len();
            self.open_jobs.push(OpenJob {
                frame: i,
                esp_at,
                from: udp.src,
                outcome: OpenOutcome::Drop(DropReason::Truncated),
            });
            // Replaced below.
            out.push(Decision::Drop(Dropped::Esp(DropReason::Truncated)));
            packets.push(Packet::new(&mut f.buf[esp_at..esp_at + len], len));
        }
        keys.open_batch(&mut packets, &mut self.drops);
        // One atomic add per batch for the bytes.
        let mut opened = 0u64;
        for (job, p) in self.open_jobs.iter_mut().zip(&packets) {
            job.outcome = p.opened();
            if let OpenOutcome::Data { len, .. } = job.outcome {
                opened += len as u64;
            }
        }
        bump(&stats.bytes_opened, opened);
        self.packets = recycle(packets);
        for k in 0..self.open_jobs.len() {
            let job = self.open_jobs[k];
            out[job.frame] = self.opened(cx, &job, &mut frames[job.frame]);
        }
        self.seal(cx, frames, out);
    }

    /// One opened packet: its decision (a seal job for a hub: decided by [`Self::seal`]).
    fn opened(&mut self, cx: &Context<'_>, job: &OpenJob, f: &mut FrameBuf<'_>) -> Decision {
        let (paths, stats) = (cx.paths, cx.stats);
        match job.outcome {
            OpenOutcome::Data { len, info, .. } => {
                self.observe(info, job.from, cx.now);
                let inner_at = job.esp_at + ESP_HEADER_LEN;
                let inner = &f.buf[inner_at..inner_at + len];
                let ethertype = ethertype_of(inner);
                let Some((_, src, dst)) = ip_info(inner, ethertype) else {
                    return malformed(stats);
                };
                let hairpin = paths.lookup(dst).filter(|r| r.path != info.peer.0);
                if !paths.allows(info.peer.0, src, dst, hairpin.is_some()) {
                    bump(&stats.policy, 1);
                    return Decision::Drop(Dropped::Policy);
                }
                if let Some(route) = hairpin {
                    bump(&stats.hairpinned, 1);
                    // The next hop's MAC before sealing, as for inner packets: a packet that
                    // cannot leave uses no sequence number (decided and counted as
                    // `finish_seal` would after sealing).
                    match paths.peers.get(&route.path).map(|p| p.mac) {
                        None => {
                            bump(&stats.seal_failed, 1);
                            return Decision::Drop(Dropped::SealFailed);
                        }
                        Some(None) => {
                            bump(&stats.no_neighbour, 1);
                            return Decision::Drop(Dropped::NoNeighbour);
                        }
                        Some(Some(_)) => {}
                    }
                    self.seal_jobs.push(SealJob {
                        frame: job.frame,
                        esp_at: job.esp_at,
                        len,
                        peer: route.peer,
                        path: route.path,
                        sealed: 0,
                    });
                    // Replaced by `seal`.
                    return Decision::Drop(Dropped::SealFailed);
                }
                match paths.inner_neighbours.get(&dst) {
                    Some(mac) => {
                        let eth_at = inner_at - ETH_HLEN;
                        write_eth(&mut f.buf[eth_at..], *mac, paths.inner_mac, ethertype);
                        Decision::Inner {
                            at: eth_at,
                            len: ETH_HLEN + len,
                        }
                    }
                    None => Decision::Kernel {
                        at: inner_at,
                        len,
                        dst,
                    },
                }
            }
            OpenOutcome::Control { len, info } => {
                let at = job.esp_at + ESP_HEADER_LEN;
                let message = zeroize::Zeroizing::new(f.buf[at..at + len].to_vec());
                // The decrypted message leaves the frame (it goes back to the kernel).
                zeroize::Zeroize::zeroize(&mut f.buf[at..at + len]);
                bump(&stats.control, 1);
                self.outbox.push(ToControl::Control {
                    info,
                    from: job.from,
                    message,
                });
                Decision::Control
            }
            // Counted by `open_batch`.
            OpenOutcome::Drop(reason) => Decision::Drop(Dropped::Esp(reason)),
        }
    }

    /// Tells the control thread which generation a peer transmits with (sampled: the first of
    /// each generation, then every [`OBSERVE_INTERVAL`]).
    fn observe(&mut self, info: OpenInfo, from: SocketAddr, now: Instant) {
        let report = match self.observed.get(&info.peer.0) {
            Some((generation, at)) => {
                *generation != info.generation
                    || now.saturating_duration_since(*at) >= OBSERVE_INTERVAL
            }
            None => true,
        };
        if report {
            self.observed.insert(info.peer.0, (info.generation, now));
            self.outbox.push(ToControl::Observed { info, from });
        }
    }
}

fn malformed(stats: &WorkerStats) -> Decision {
    bump(&stats.malformed, 1);
    Decision::Drop(Dropped::Malformed)
}

/// A sealed job's outer IP/UDP and Ethernet headers, in front of its ESP packet (from
/// `source_port` when the worker has one of its own).
fn finish_seal(
    job: &SealJob,
    f: &mut FrameBuf<'_>,
    paths: &Paths,
    source_port: Option<u16>,
    stats: &WorkerStats,
) -> Decision {
    let path = paths.peers.get(&job.path);
    let (Some(path), true) = (path, job.sealed > 0) else {
        bump(&stats.seal_failed, 1);
        return Decision::Drop(Dropped::SealFailed);
    };
    let Some(mac) = path.mac else {
        bump(&stats.no_neighbour, 1);
        return Decision::Drop(Dropped::NoNeighbour);
    };
    let end = job.esp_at + job.sealed;
    let header = match source_port {
        Some(port) => path.header.with_src_port(port),
        None => path.header,
    };
    let headers = job
        .esp_at
        .checked_sub(header.len() + ETH_HLEN)
        .and_then(|eth_at| {
            let ip_at = eth_at + ETH_HLEN;
            header.write(&mut f.buf[ip_at..end])?;
            Some((eth_at, ip_at))
        });
    let Some((eth_at, ip_at)) = headers else {
        bump(&stats.seal_failed, 1);
        return Decision::Drop(Dropped::SealFailed);
    };
    let ethertype = ethertype_of(&f.buf[ip_at..]);
    write_eth(&mut f.buf[eth_at..], mac, paths.outer_mac, ethertype);
    Decision::Outer {
        at: eth_at,
        len: end - eth_at,
    }
}

/// Offset of the IP header and the ethertype, skipping up to two VLAN tags.
pub(crate) fn l3_offset(frame: &[u8]) -> Option<(usize, u16)> {
    let mut at = 12;
    for _ in 0..3 {
        let t = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        if t == 0x8100 || t == 0x88a8 {
            at += 4;
            continue;
        }
        return Some((at + 2, t));
    }
    None
}

/// Whether the IP packet at the start of `p` is a fragment: IPv4 with more-fragments or an
/// offset, IPv6 with a fragment header first.
pub(crate) fn is_fragment(p: &[u8], ethertype: u16) -> bool {
    match ethertype {
        ETH_P_IP => p.len() >= 20 && u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0,
        ETH_P_IPV6 => p.len() >= 40 && p[6] == 44,
        _ => false,
    }
}

/// Length, source and destination of the IP packet at the start of `p` (bounded by
/// `p.len()`).
fn ip_info(p: &[u8], ethertype: u16) -> Option<(usize, IpAddr, IpAddr)> {
    match (ethertype, p.first()? >> 4) {
        (ETH_P_IP, 4) if p.len() >= 20 => {
            let len = usize::from(u16::from_be_bytes([p[2], p[3]]));
            let src: [u8; 4] = p[12..16].try_into().ok()?;
            let dst: [u8; 4] = p[16..20].try_into().ok()?;
            (20..=p.len())
                .contains(&len)
                .then_some((len, IpAddr::from(src), IpAddr::from(dst)))
        }
        (ETH_P_IPV6, 6) if p.len() >= 40 => {
            let len = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
            let src: [u8; 16] = p[8..24].try_into().ok()?;
            let dst: [u8; 16] = p[24..40].try_into().ok()?;
            (len <= p.len()).then_some((len, IpAddr::from(src), IpAddr::from(dst)))
        }
        _ => None,
    }
}

fn ethertype_of(ip: &[u8]) -> u16 {
    if ip.first().is_some_and(|b| b >> 4 == 6) {
        ETH_P_IPV6
    } else {
        ETH_P_IP
    }
}

fn write_eth(at: &mut [u8], dst: crate::net::Mac, src: crate::net::Mac, ethertype: u16) {
    at[0..6].copy_from_slice(&dst);
    at[6..12].copy_from_slice(&src);
    at[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Reuses a vector's allocation for packets of another lifetime (it is emptied).
fn recycle<'b>(mut v: Vec<Packet<'_>>) -> Vec<Packet<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

#[cfg(test)]
mod tests;
