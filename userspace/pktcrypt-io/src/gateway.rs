//! The gateway workers: inner (plaintext) ⇄ outer (ESP-in-UDP) forwarding through AF_XDP.
//!
//! Each worker owns one [`QueuePair`] (queue *q* of the inner and of the outer interface on one
//! UMEM) and runs to completion in batches of [`BATCH`]: received inner frames are routed by
//! destination prefix to a peer, sealed in place under the peer's transmit key, given Ethernet,
//! IP and UDP headers in the frame's headroom and queued on the outer interface; received ESP
//! frames are opened in place, given an Ethernet header in front of the inner packet and queued
//! on the inner interface. No frame is copied and nothing is allocated per packet (control
//! messages, a few per minute, are copied to the control thread).
//!
//! Keys ([`DataPlane`]) and paths ([`Paths`]) come from the control thread through
//! [`ArcSwap`]s: a worker loads both once per batch, so a rekey never blocks it.
//!
//! Decisions:
//! - An inner packet whose ESP-in-UDP form exceeds the outer MTU is answered with ICMP
//!   "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big" carrying the largest inner
//!   size that fits, sent back out of the inner interface; IPv4 without DF is dropped and
//!   counted as `too_big` (pktcrypt does not fragment).
//! - A decrypted packet whose destination has no neighbour entry yet is handed to the kernel
//!   through a raw socket, which resolves the neighbour and delivers it; later packets go
//!   through AF_XDP once the control thread has seen the entry.
//! - A decrypted packet whose destination lies behind another peer (a hub site forwarding between
//!   two client sites) is sealed again for that peer and sent back out.
//! - Without a resolved MAC for a peer's next hop, packets to it are dropped and counted
//!   (`no_neighbour`); the control thread's traffic to the peer through the kernel resolves it.

use crate::xsk::{FRAME_SIZE, QueuePair};
use arc_swap::ArcSwap;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crossbeam_channel::Sender;
use pktcrypt_core::wire::esp::{self, ESP_HEADER_LEN};
use pktcrypt_core::wire::{OuterHeader, icmp, ip};
use pktcrypt_core::{DataPlane, DropCounters, DropReason, OpenInfo, OpenOutcome, Packet, PeerId};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xdpilone::xdp::XdpDesc;

/// Frames per batch.
pub const BATCH: usize = 64;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// A protected prefix and the peer behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Network address.
    pub net: IpAddr,
    /// Prefix length.
    pub len: u8,
    /// The SA peer packets to this prefix are sealed for: the peer behind it (pairwise), or
    /// this member's own sender (group mode: one key for every destination).
    pub peer: PeerId,
    /// Key into [`Paths::peers`]: where the sealed packet goes (the `PeerId.0` of the peer
    /// behind the prefix; packets that arrived from it are never sent back to it).
    pub path: u32,
}

impl Route {
    fn contains(&self, addr: IpAddr) -> bool {
        Prefix {
            net: self.net,
            len: self.len,
        }
        .contains(addr)
    }
}

/// An IP prefix (`net/len`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Network address.
    pub net: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Prefix {
    /// Whether `addr` lies in the prefix (never across address families).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.net, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// How to reach a peer on the outer interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPath {
    /// Outer IP and UDP headers (our address and port to the peer's).
    pub header: OuterHeader,
    /// MAC of the next hop towards the peer, once resolved.
    pub mac: Option<crate::net::Mac>,
}

/// Everything but keys a worker needs to forward: published by the control thread.
#[derive(Clone, Debug, Default)]
pub struct Paths {
    /// Protected prefixes, longest first.
    pub routes: Vec<Route>,
    /// Per peer (index: `PeerId.0`).
    pub peers: HashMap<u32, PeerPath>,
    /// Neighbours on the inner interface.
    pub inner_neighbours: HashMap<IpAddr, crate::net::Mac>,
    /// MAC of the inner interface.
    pub inner_mac: crate::net::Mac,
    /// MAC of the outer interface.
    pub outer_mac: crate::net::Mac,
    /// MTU of the outer interface.
    pub outer_mtu: usize,
    /// Our addresses on the inner interface (sources of ICMP answers).
    pub inner_v4: Option<Ipv4Addr>,
    /// See `inner_v4`.
    pub inner_v6: Option<Ipv6Addr>,
    /// The UDP port ESP-in-UDP arrives on.
    pub esp_port: u16,
    /// Inner policy (RFC 4301 §5.2), per peer (key: `OpenInfo::peer.0`): the sources a
    /// decrypted packet from that peer may have (the prefixes behind it). A peer without an
    /// entry may send nothing.
    pub sources: HashMap<u32, Vec<Prefix>>,
    /// Inner policy: the networks behind this gateway, where a decrypted packet may go.
    pub local: Vec<Prefix>,
    /// Inner policy: whether a decrypted packet may go on to another peer's prefixes (a hub).
    pub hub: bool,
}

impl Paths {
    /// The route to `dst`, longest prefix first.
    pub fn lookup(&self, dst: IpAddr) -> Option<&Route> {
        self.routes.iter().find(|r| r.contains(dst))
    }

    /// The inner policy for a packet decrypted from `peer` (`OpenInfo::peer.0`): its source
    /// must lie behind that peer, its destination behind this gateway or, at a hub
    /// (`forwarded`: it is bound for another peer's prefix), behind that other peer.
    pub fn allows(&self, peer: u32, src: IpAddr, dst: IpAddr, forwarded: bool) -> bool {
        let from_peer = self
            .sources
            .get(&peer)
            .is_some_and(|ps| ps.iter().any(|p| p.contains(src)));
        let to_us = if forwarded {
            self.hub
        } else {
            self.local.iter().any(|p| p.contains(dst))
        };
        from_peer && to_us
    }

    /// Sorts the routes longest prefix first.
    pub fn sort_routes(&mut self) {
        self.routes.sort_by_key(|r| core::cmp::Reverse(r.len));
    }
}

/// A message from a worker to the control thread.
#[derive(Debug)]
pub enum ToControl {
    /// A control message (next header 253), decrypted.
    Control {
        /// What it came under.
        info: OpenInfo,
        /// Outer source address.
        from: SocketAddr,
        /// The message (decrypted: wiped when dropped).
        message: zeroize::Zeroizing<Vec<u8>>,
    },
    /// Data arrived under this generation (sampled: the first of each generation, then every
    /// [`OBSERVE_INTERVAL`]).
    Observed {
        /// What it came under.
        info: OpenInfo,
        /// Outer source address.
        from: SocketAddr,
    },
    /// A datagram received by the daemon's own kernel UDP socket (group mode: the
    /// controller ↔ member channel, which XDP does not steer). Workers never send this.
    Datagram {
        /// Source address.
        from: SocketAddr,
        /// The datagram (decrypted in place by its handler: wiped when dropped).
        bytes: zeroize::Zeroizing<Vec<u8>>,
    },
}

/// The longest an idle worker sleeps in `poll` before looking at its rings again (ms).
const IDLE_MAX_WAIT_MS: i32 = 50;

/// How often a worker reports ongoing data per peer.
pub const OBSERVE_INTERVAL: Duration = Duration::from_millis(100);

/// Counters of one worker (relaxed atomics; read by the status endpoint).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Frames received on the inner interface.
    pub rx_inner: AtomicU64,
    /// Frames received on the outer interface.
    pub rx_outer: AtomicU64,
    /// Packets sealed and queued on the outer interface.
    pub tx_outer: AtomicU64,
    /// Packets opened and queued on the inner interface.
    pub tx_inner: AtomicU64,
    /// Bytes of inner packets sealed.
    pub bytes_sealed: AtomicU64,
    /// Bytes of inner packets opened.
    pub bytes_opened: AtomicU64,
    /// Opened packets handed to the kernel (no neighbour entry yet).
    pub to_kernel: AtomicU64,
    /// Opened packets sealed again for another peer.
    pub hairpinned: AtomicU64,
    /// Control messages passed to the control thread.
    pub control: AtomicU64,
    /// ICMP / ICMPv6 too-big answers sent.
    pub icmp_too_big: AtomicU64,
    /// Too-big answers not sent: beyond [`ICMP_PER_SECOND`].
    pub icmp_rate_limited: AtomicU64,
    /// ESP-in-UDP that arrived fragmented (pktcrypt does not reassemble: dropped).
    pub fragmented: AtomicU64,
    /// Inner packets too big for the tunnel and not answered (IPv4 without DF).
    pub too_big: AtomicU64,
    /// Inner packets to no protected prefix or to a peer without keys.
    pub no_route: AtomicU64,
    /// Packets to a peer whose next hop's MAC is unknown.
    pub no_neighbour: AtomicU64,
    /// Decrypted packets the inner policy refused: a source outside the sending peer's
    /// prefixes, or a destination neither behind this gateway nor (at a hub) behind another
    /// peer.
    pub policy: AtomicU64,
    /// Frames that were not parseable Ethernet/IP.
    pub malformed: AtomicU64,
    /// Packets that did not fit the TX ring.
    pub tx_full: AtomicU64,
    /// Inner packets the engine refused to seal (e.g. sequence numbers exhausted).
    pub seal_failed: AtomicU64,
    /// Thread CPU time (ns) spent in loop iterations that had packets to handle (receive,
    /// seal/open, transmit, ring kicks — in AF_XDP copy mode the kick is the kernel's copy and
    /// transmit): the worker's cost of the packets, without idle polling and without time the
    /// thread was not running.
    pub busy_ns: AtomicU64,
    /// Per [`DropReason`] (index in [`DropReason::ALL`]): ESP packets dropped while opening.
    pub drops: Vec<AtomicU64>,
}

impl WorkerStats {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self {
            drops: DropReason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }
}

/// State shared between the control thread and the workers.
#[derive(Debug)]
pub struct Shared {
    /// Current keys.
    pub keys: ArcSwap<DataPlane>,
    /// Current paths.
    pub paths: ArcSwap<Paths>,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// One per worker.
    pub stats: Vec<WorkerStats>,
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

fn bump(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Raw sockets through which opened packets reach the kernel (see the module docs).
struct KernelPath {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
}

impl KernelPath {
    fn new() -> Self {
        let open = |family| {
            // SAFETY: plain socket(2); the result is checked and owned below.
            let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            // SAFETY: a fresh descriptor this function exclusively owns.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        };
        Self {
            v4: open(libc::AF_INET),
            v6: open(libc::AF_INET6),
        }
    }

    /// Sends a complete IP packet; the kernel routes it and resolves the neighbour.
    fn send(&self, packet: &[u8], dst: IpAddr) -> bool {
        let (fd, addr, len) = match dst {
            IpAddr::V4(a) => {
                // SAFETY: all-zero is a valid sockaddr_in.
                let mut sa: libc::sockaddr_in = unsafe { core::mem::zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                // SAFETY: sockaddr_in fits in sockaddr_storage.
                let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
                // SAFETY: copying a sockaddr_in into the larger, suitably aligned storage.
                unsafe { core::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sa) };
                (&self.v4, ss, core::mem::size_of::<libc::sockaddr_in>())
            }
            IpAddr::V6(a) => {
                // SAFETY: all-zero is a valid sockaddr_in6.
                let mut sa: libc::sockaddr_in6 = unsafe { core::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = a.octets();
                // SAFETY: as above.
                let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
                // SAFETY: copying a sockaddr_in6 into the larger, suitably aligned storage.
                unsafe { core::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sa) };
                (&self.v6, ss, core::mem::size_of::<libc::sockaddr_in6>())
            }
        };
        let Some(fd) = fd else { return false };
        // SAFETY: the buffer and address are valid for the given lengths during the call.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT,
                (&raw const addr).cast(),
                len as libc::socklen_t,
            )
        };
        n == packet.len() as isize
    }
}

/// Offset of the IP header and the ethertype, skipping up to two VLAN tags.
fn l3_offset(frame: &[u8]) -> Option<(usize, u16)> {
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
fn is_fragment(p: &[u8], ethertype: u16) -> bool {
    match ethertype {
        ETH_P_IP => p.len() >= 20 && u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0,
        ETH_P_IPV6 => p.len() >= 40 && p[6] == 44,
        _ => false,
    }
}

/// Length and destination of the IP packet at the start of `p` (bounded by `p.len()`).
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

/// A packet to seal: frame, where its ESP packet starts, inner length, peer.
#[derive(Clone, Copy)]
struct SealJob {
    addr: u64,
    esp_at: usize,
    len: usize,
    peer: PeerId,
    path: u32,
}

/// Reuses a vector's allocation for packets of another lifetime (it is empty).
fn recycle<'b>(mut v: Vec<Packet<'_>>) -> Vec<Packet<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

/// One worker: its queue pair and per-worker state.
pub struct Worker {
    qp: QueuePair,
    shared: Arc<Shared>,
    index: usize,
    to_control: Sender<ToControl>,
    kernel: KernelPath,
    free: Vec<u64>,
    drops: DropCounters,
    observed: HashMap<u32, (u64, Instant)>,
    tx: Vec<XdpDesc>,
    jobs: Vec<SealJob>,
    scratch: Vec<u8>,
    icmp: IcmpLimiter,
}

/// ICMP "too big" answers a worker sends per second at most (token bucket, burst the same);
/// beyond it the packets are dropped and counted as `too_big` and `icmp_rate_limited` (a
/// flood of large packets must not turn the gateway into an ICMP generator).
pub const ICMP_PER_SECOND: u32 = 200;

/// A token bucket for ICMP answers.
#[derive(Clone, Copy, Debug)]
pub struct IcmpLimiter {
    tokens: u32,
    last: Option<Instant>,
}

impl IcmpLimiter {
    /// A full bucket.
    pub fn new() -> Self {
        Self {
            tokens: ICMP_PER_SECOND,
            last: None,
        }
    }

    /// Whether one answer may go out at `now` (takes a token).
    pub fn allow(&mut self, now: Instant) -> bool {
        let last = *self.last.get_or_insert(now);
        let refill = now.saturating_duration_since(last).as_millis() as u64
            * u64::from(ICMP_PER_SECOND)
            / 1000;
        if refill > 0 {
            self.tokens = (u64::from(self.tokens) + refill).min(u64::from(ICMP_PER_SECOND)) as u32;
            self.last = Some(now);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Default for IcmpLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Worker {
    /// A worker for `qp`, reporting into `shared.stats[index]`.
    pub fn new(
        qp: QueuePair,
        shared: Arc<Shared>,
        index: usize,
        to_control: Sender<ToControl>,
    ) -> Self {
        let free = qp.all_frames();
        Self {
            qp,
            shared,
            index,
            to_control,
            kernel: KernelPath::new(),
            free,
            drops: DropCounters::default(),
            observed: HashMap::new(),
            tx: Vec::with_capacity(BATCH),
            jobs: Vec::with_capacity(BATCH),
            scratch: vec![0u8; icmp::IPV6_MIN_MTU + 64],
            icmp: IcmpLimiter::new(),
        }
    }

    fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.index]
    }

    /// Runs until `shared.stop` is set.
    pub fn run(mut self) {
        // Half the frames wait in each fill ring; the rest are for TX and in flight.
        let half = self.free.len() / 4;
        let mut inner_share: Vec<u64> = self.free.split_off(self.free.len() - half);
        self.qp.inner.fill(&mut inner_share);
        self.free.extend(inner_share);
        let mut outer_share: Vec<u64> = self.free.split_off(self.free.len() - half);
        self.qp.outer.fill(&mut outer_share);
        self.free.extend(outer_share);
        let mut descs = [XdpDesc {
            addr: 0,
            len: 0,
            options: 0,
        }; BATCH];
        let mut packets: Vec<Packet<'static>> = Vec::with_capacity(BATCH);
        let mut last_publish = Instant::now();
        let mut idle_rounds = 0u32;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let started = thread_cpu_ns();
            self.qp.inner.reap(&mut self.free);
            self.qp.outer.reap(&mut self.free);
            self.refill();
            let keys = self.shared.keys.load_full();
            let paths = self.shared.paths.load_full();
            let n_in = self.qp.inner.receive(&mut descs);
            if n_in > 0 {
                bump(&self.stats().rx_inner, n_in as u64);
                packets = self.handle_inner(&descs[..n_in], &keys, &paths, packets);
            }
            let n_out = self.qp.outer.receive(&mut descs);
            if n_out > 0 {
                bump(&self.stats().rx_outer, n_out as u64);
                packets = self.handle_outer(&descs[..n_out], &keys, &paths, packets);
            }
            self.qp.inner.flush();
            self.qp.outer.flush();
            if n_in == 0 && n_out == 0 {
                self.idle(idle_rounds);
                idle_rounds = idle_rounds.saturating_add(1);
            } else {
                idle_rounds = 0;
                bump(
                    &self.stats().busy_ns,
                    thread_cpu_ns().saturating_sub(started),
                );
            }
            if last_publish.elapsed() >= Duration::from_millis(100) {
                last_publish = Instant::now();
                self.publish_drops();
            }
        }
        self.publish_drops();
    }

    fn refill(&mut self) {
        // Keep a reserve for answers; split the rest between the two fill rings.
        if self.free.len() > BATCH {
            let give = (self.free.len() - BATCH) / 2;
            let mut part: Vec<u64> = self.free.split_off(self.free.len() - give);
            self.qp.inner.fill(&mut part);
            self.qp.outer.fill(&mut part);
            self.free.extend(part);
        }
    }

    /// Sleeps until a frame arrives on either socket, at most 1 ms after activity, backing off
    /// to [`IDLE_MAX_WAIT_MS`] on an idle worker (so it neither spins nor wakes a thousand
    /// times a second; new keys and paths are picked up with the next packet, `stop` within
    /// the longest wait).
    fn idle(&mut self, rounds: u32) {
        let wait = 1i32
            .checked_shl(rounds.min(6))
            .unwrap_or(IDLE_MAX_WAIT_MS)
            .min(IDLE_MAX_WAIT_MS);
        let mut fds = [
            libc::pollfd {
                fd: self.qp.inner.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.qp.outer.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, wait) };
    }

    fn publish_drops(&self) {
        for (i, (_, n)) in self.drops.iter().enumerate() {
            self.stats().drops[i].store(n, Ordering::Relaxed);
        }
    }

    /// Inner → outer: route, check the MTU, then seal and send.
    fn handle_inner<'p>(
        &mut self,
        descs: &[XdpDesc],
        keys: &DataPlane,
        paths: &Paths,
        packets: Vec<Packet<'p>>,
    ) -> Vec<Packet<'p>> {
        self.jobs.clear();
        for d in descs {
            let (base, frame) = self.qp.frame(d.addr);
            let off = (d.addr - base) as usize;
            let data = &frame[off..off + d.len as usize];
            let Some((l3, ethertype)) = l3_offset(data) else {
                bump(&self.stats().malformed, 1);
                self.free.push(base);
                continue;
            };
            let Some((len, _src, dst)) = ip_info(&data[l3..], ethertype) else {
                bump(&self.stats().malformed, 1);
                self.free.push(base);
                continue;
            };
            let Some(route) = paths
                .lookup(dst)
                .filter(|r| keys.tx_generation(r.peer).is_some())
            else {
                bump(&self.stats().no_route, 1);
                self.free.push(base);
                continue;
            };
            let ip_at = off + l3;
            let Some(path) = paths.peers.get(&route.path) else {
                bump(&self.stats().no_route, 1);
                self.free.push(base);
                continue;
            };
            let outer_len = path.header.len() + esp::esp_len(len);
            if outer_len > paths.outer_mtu {
                self.too_big(d.addr, ip_at, len, path.header.len(), paths);
                continue;
            }
            self.jobs.push(SealJob {
                addr: d.addr,
                esp_at: ip_at - ESP_HEADER_LEN,
                len,
                peer: route.peer,
                path: route.path,
            });
        }
        self.seal_and_send(keys, paths, packets)
    }

    /// Answers an inner packet that does not fit the tunnel (see the module docs).
    fn too_big(&mut self, addr: u64, ip_at: usize, len: usize, outer_hdr: usize, paths: &Paths) {
        let (base, frame) = self.qp.frame(addr);
        let original = &frame[ip_at..ip_at + len];
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
        let limited = from.is_some() && !self.icmp.allow(Instant::now());
        let from = from.filter(|_| !limited);
        if limited {
            bump(&self.shared.stats[self.index].icmp_rate_limited, 1);
        }
        let answer = from.and_then(|from| icmp::too_big(original, from, fits, &mut self.scratch));
        let src_mac: [u8; 6] = frame[ip_at - ETH_HLEN + 6..ip_at - ETH_HLEN + 12]
            .try_into()
            .unwrap_or([0; 6]);
        let Some(n) = answer else {
            bump(&self.stats().too_big, 1);
            self.free.push(base);
            return;
        };
        // Reuse the frame: Ethernet back to the sender, then the answer.
        let at = crate::xsk::HEADROOM as usize;
        write_eth(
            &mut frame[at..],
            src_mac,
            paths.inner_mac,
            ethertype_of(&self.scratch),
        );
        frame[at + ETH_HLEN..at + ETH_HLEN + n].copy_from_slice(&self.scratch[..n]);
        let desc = XdpDesc {
            addr: base + at as u64,
            len: (ETH_HLEN + n) as u32,
            options: 0,
        };
        if self.qp.inner.transmit(&[desc]) == 1 {
            bump(&self.stats().icmp_too_big, 1);
        } else {
            bump(&self.stats().tx_full, 1);
            self.free.push(base);
        }
    }

    /// Seals `self.jobs` (grouped per peer), writes the outer headers and queues them outside.
    fn seal_and_send<'p>(
        &mut self,
        keys: &DataPlane,
        paths: &Paths,
        packets: Vec<Packet<'p>>,
    ) -> Vec<Packet<'p>> {
        let mut packets = recycle(packets);
        self.jobs.sort_by_key(|j| j.peer.0);
        self.tx.clear();
        let mut results = [0usize; BATCH];
        let mut start = 0;
        while start < self.jobs.len() {
            let peer = self.jobs[start].peer;
            let end = start
                + self.jobs[start..]
                    .iter()
                    .take_while(|j| j.peer == peer)
                    .count();
            for job in &self.jobs[start..end] {
                let (_, frame) = self.qp.frame_raw(job.addr);
                // SAFETY: every job is a distinct frame this worker received and has not handed
                // back to a ring; the slices live until `packets` is cleared below.
                let frame = unsafe { &mut *frame };
                packets.push(Packet::new(&mut frame[job.esp_at..], job.len));
            }
            keys.seal_batch(peer, &mut packets);
            for (k, p) in packets.iter().enumerate() {
                results[start + k] = p.sealed().unwrap_or(0);
            }
            packets = recycle(packets);
            start = end;
        }
        let stats = &self.shared.stats[self.index];
        for (k, job) in self.jobs.iter().enumerate() {
            let (base, frame) = self.qp.frame_raw(job.addr);
            let n = results[k];
            let path = paths.peers.get(&job.path);
            let (Some(path), true) = (path, n > 0) else {
                bump(&stats.seal_failed, 1);
                self.free.push(base);
                continue;
            };
            let Some(mac) = path.mac else {
                bump(&stats.no_neighbour, 1);
                self.free.push(base);
                continue;
            };
            // SAFETY: as above; `packets` no longer borrows any frame.
            let frame = unsafe { &mut *frame };
            let ip_at = job.esp_at - path.header.len();
            let eth_at = ip_at - ETH_HLEN;
            if path
                .header
                .write(&mut frame[ip_at..job.esp_at + n])
                .is_none()
            {
                bump(&stats.seal_failed, 1);
                self.free.push(base);
                continue;
            }
            let ethertype = ethertype_of(&frame[ip_at..]);
            write_eth(&mut frame[eth_at..], mac, paths.outer_mac, ethertype);
            bump(&stats.bytes_sealed, job.len as u64);
            self.tx.push(XdpDesc {
                addr: base + eth_at as u64,
                len: (job.esp_at + n - eth_at) as u32,
                options: 0,
            });
        }
        let sent = self.qp.outer.transmit(&self.tx);
        bump(&stats.tx_outer, sent as u64);
        for d in &self.tx[sent..] {
            bump(&stats.tx_full, 1);
            self.free.push(d.addr - d.addr % u64::from(FRAME_SIZE));
        }
        packets
    }

    /// Outer → inner: open, then deliver, hand to the kernel, re-seal, or pass to control.
    fn handle_outer<'p>(
        &mut self,
        descs: &[XdpDesc],
        keys: &DataPlane,
        paths: &Paths,
        packets: Vec<Packet<'p>>,
    ) -> Vec<Packet<'p>> {
        let mut packets = recycle(packets);
        // (frame address, ESP offset, outer source) of each packet in `packets`.
        let mut meta = [(0u64, 0usize, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
        let mut count = 0;
        for d in descs {
            let (base, frame) = self.qp.frame_raw(d.addr);
            // SAFETY: each descriptor is a distinct frame just received by this worker.
            let frame = unsafe { &mut *frame };
            let off = (d.addr - base) as usize;
            let data = &frame[off..off + d.len as usize];
            let l3 = l3_offset(data);
            if l3.is_some_and(|(l3, t)| is_fragment(&data[l3..], t)) {
                bump(&self.stats().fragmented, 1);
                self.free.push(base);
                continue;
            }
            let parsed = l3.and_then(|(l3, _)| {
                let udp = ip::parse_udp(&data[l3..]).ok()?;
                (udp.dst.port() == paths.esp_port).then_some((l3, udp))
            });
            let Some((l3, udp)) = parsed else {
                bump(&self.stats().malformed, 1);
                self.free.push(base);
                continue;
            };
            let payload = &data[l3 + udp.payload.start..l3 + udp.payload.end];
            if let Err(reason) = ip::classify_udp_payload(payload) {
                self.drops.add(reason);
                self.free.push(base);
                continue;
            }
            let esp_at = off + l3 + udp.payload.start;
            let len = udp.payload.len();
            meta[count] = (d.addr, esp_at, udp.src);
            count += 1;
            packets.push(Packet::new(&mut frame[esp_at..esp_at + len], len));
        }
        keys.open_batch(&mut packets, &mut self.drops);
        let mut outcomes = [OpenOutcome::Drop(DropReason::Truncated); BATCH];
        for (k, p) in packets.iter().enumerate() {
            outcomes[k] = p.opened();
        }
        let packets = recycle(packets);
        self.tx.clear();
        self.jobs.clear();
        let now = Instant::now();
        for k in 0..count {
            let (addr, esp_at, from) = meta[k];
            let (base, frame) = self.qp.frame_raw(addr);
            // SAFETY: as above; `packets` no longer borrows any frame.
            let frame = unsafe { &mut *frame };
            match outcomes[k] {
                OpenOutcome::Data { len, info, .. } => {
                    self.observe(info, from, now);
                    let inner_at = esp_at + ESP_HEADER_LEN;
                    bump(&self.stats().bytes_opened, len as u64);
                    let inner = &frame[inner_at..inner_at + len];
                    let ethertype = ethertype_of(inner);
                    let Some((_, src, dst)) = ip_info(inner, ethertype) else {
                        bump(&self.stats().malformed, 1);
                        self.free.push(base);
                        continue;
                    };
                    let hairpin = paths.lookup(dst).filter(|r| r.path != info.peer.0);
                    if !paths.allows(info.peer.0, src, dst, hairpin.is_some()) {
                        bump(&self.stats().policy, 1);
                        self.free.push(base);
                        continue;
                    }
                    if let Some(route) = hairpin {
                        bump(&self.stats().hairpinned, 1);
                        self.jobs.push(SealJob {
                            addr,
                            esp_at,
                            len,
                            peer: route.peer,
                            path: route.path,
                        });
                        continue;
                    }
                    match paths.inner_neighbours.get(&dst) {
                        Some(mac) => {
                            let eth_at = inner_at - ETH_HLEN;
                            write_eth(&mut frame[eth_at..], *mac, paths.inner_mac, ethertype);
                            self.tx.push(XdpDesc {
                                addr: base + eth_at as u64,
                                len: (ETH_HLEN + len) as u32,
                                options: 0,
                            });
                        }
                        None => {
                            if self.kernel.send(inner, dst) {
                                bump(&self.stats().to_kernel, 1);
                            } else {
                                bump(&self.stats().no_neighbour, 1);
                            }
                            self.free.push(base);
                        }
                    }
                }
                OpenOutcome::Control { len, info } => {
                    let at = esp_at + ESP_HEADER_LEN;
                    let message = zeroize::Zeroizing::new(frame[at..at + len].to_vec());
                    // The decrypted message leaves the UMEM frame (it goes back to the kernel).
                    zeroize::Zeroize::zeroize(&mut frame[at..at + len]);
                    bump(&self.stats().control, 1);
                    let _ = self.to_control.try_send(ToControl::Control {
                        info,
                        from,
                        message,
                    });
                    self.free.push(base);
                }
                OpenOutcome::Drop(_) => self.free.push(base),
            }
        }
        let sent = self.qp.inner.transmit(&self.tx);
        bump(&self.stats().tx_inner, sent as u64);
        for i in sent..self.tx.len() {
            let d = self.tx[i];
            bump(&self.stats().tx_full, 1);
            self.free.push(d.addr - d.addr % u64::from(FRAME_SIZE));
        }
        if self.jobs.is_empty() {
            packets
        } else {
            self.seal_and_send(keys, paths, packets)
        }
    }

    /// Tells the control thread which generation a peer transmits with (sampled).
    fn observe(&mut self, info: OpenInfo, from: SocketAddr, now: Instant) {
        let report = match self.observed.get(&info.peer.0) {
            Some((generation, at)) => {
                *generation != info.generation || now.duration_since(*at) >= OBSERVE_INTERVAL
            }
            None => true,
        };
        if report {
            self.observed.insert(info.peer.0, (info.generation, now));
            let _ = self.to_control.try_send(ToControl::Observed { info, from });
        }
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn icmp_answers_are_rate_limited() {
        let mut l = IcmpLimiter::new();
        let t0 = Instant::now();
        let sent = (0..1000).filter(|_| l.allow(t0)).count();
        assert_eq!(
            sent, ICMP_PER_SECOND as usize,
            "a burst of the bucket's size"
        );
        assert!(!l.allow(t0 + Duration::from_millis(1)));
        // Half a second later: half the rate again.
        let later = t0 + Duration::from_millis(500);
        let sent = (0..1000).filter(|_| l.allow(later)).count();
        assert_eq!(sent, ICMP_PER_SECOND as usize / 2);
    }

    #[test]
    fn fragments_are_recognised() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        assert!(!is_fragment(&v4, ETH_P_IP));
        v4[6] = 0x40; // don't fragment
        assert!(!is_fragment(&v4, ETH_P_IP));
        v4[6] = 0x20; // more fragments
        assert!(is_fragment(&v4, ETH_P_IP));
        v4[6] = 0x00;
        v4[7] = 0x10; // offset
        assert!(is_fragment(&v4, ETH_P_IP));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[6] = 17;
        assert!(!is_fragment(&v6, ETH_P_IPV6));
        v6[6] = 44;
        assert!(is_fragment(&v6, ETH_P_IPV6));
    }

    fn p(s: &str, len: u8) -> Prefix {
        Prefix {
            net: s.parse().expect("address"),
            len,
        }
    }

    #[test]
    fn inner_policy_checks_source_and_destination() {
        let mut paths = Paths {
            local: vec![p("10.2.0.0", 24), p("fd02::", 64)],
            ..Paths::default()
        };
        paths.sources.insert(1, vec![p("10.1.0.0", 24)]);
        paths.sources.insert(3, vec![p("10.3.0.0", 24)]);
        let a = |s: &str| -> IpAddr { s.parse().expect("address") };
        // From peer 1's prefix to ours: yes. A source of another site, or of none: no.
        assert!(paths.allows(1, a("10.1.0.5"), a("10.2.0.2"), false));
        assert!(!paths.allows(1, a("10.3.0.2"), a("10.2.0.2"), false));
        assert!(!paths.allows(1, a("192.168.0.1"), a("10.2.0.2"), false));
        // A peer without prefixes may send nothing; one with IPv4 prefixes no IPv6.
        assert!(!paths.allows(7, a("10.1.0.5"), a("10.2.0.2"), false));
        assert!(!paths.allows(1, a("fd01::5"), a("fd02::1"), false));
        // To somewhere that is not behind us (the gateway's own Internet, say): no.
        assert!(!paths.allows(1, a("10.1.0.5"), a("8.8.8.8"), false));
        // On to another peer's prefix only at a hub.
        assert!(!paths.allows(1, a("10.1.0.5"), a("10.3.0.2"), true));
        paths.hub = true;
        assert!(paths.allows(1, a("10.1.0.5"), a("10.3.0.2"), true));
        assert!(!paths.allows(1, a("10.9.0.5"), a("10.3.0.2"), true));
    }
}
