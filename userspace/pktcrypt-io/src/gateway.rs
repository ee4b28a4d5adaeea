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
//! What happens to a frame is decided in [`decide`], without system calls: the worker lends it
//! each received batch ([`decide::FrameBuf`]s over the UMEM frames) and acts on the
//! [`decide::Decision`]s (queue on a ring, hand to the kernel, free), counts what the rings
//! decide (`tx_*`, `tx_full`, `icmp_too_big`, `to_kernel`) and passes the decider's messages to
//! the control thread.
//!
//! Decisions:
//! - An inner packet whose ESP-in-UDP form exceeds the outer MTU is answered with ICMP
//!   "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big" carrying the largest inner
//!   size that fits, sent back out of the inner interface to the sender's MAC under the
//!   original's VLAN tags; IPv4 without DF is dropped and counted as `too_big` (pktcrypt does
//!   not fragment).
//! - A decrypted packet whose destination has no neighbour entry yet is handed to the kernel
//!   through a raw socket, which resolves the neighbour and delivers it; later packets go
//!   through AF_XDP once the control thread has seen the entry.
//! - A decrypted packet whose destination lies behind another peer (a hub site forwarding between
//!   two client sites) is sealed again for that peer and sent back out.
//! - Without a resolved MAC for a peer's next hop, packets to it are dropped and counted
//!   (`no_neighbour`); the control thread's traffic to the peer through the kernel resolves it.
//!
//! While a capture runs ([`tap`], `pktcrypt capture`), the outer frames received and sent are
//! copied to it; otherwise the tap costs one relaxed load per batch.

pub mod decide;
pub mod tap;

use crate::sys;
use crate::xsk::{Desc, Frame, Port, QueuePair, SocketStats};
use arc_swap::ArcSwap;
use arc_swap::cache::Cache;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crossbeam_channel::Sender;
use decide::{Context, Decider, Decision, FrameBuf};
use pktcrypt_core::wire::OuterHeader;
use pktcrypt_core::{DataPlane, DropReason, OpenInfo, PeerId};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tap::{Captured, Tap, Way};

/// Frames per batch.
pub const BATCH: usize = 64;

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
const IDLE_MAX_WAIT_MS: u32 = 50;

/// The most passes without packets a worker makes before it sleeps in `poll`: a pass that
/// finds nothing reads only its rings (no system call), so a short spin catches the next
/// packets of a burst without a sleep and a wake-up, and an idle worker still gives the CPU back
/// within microseconds. The spin adapts (`Spin`): at most this many passes, at least one.
pub const SPIN_PASSES: u32 = 64;

/// How long a worker spins before it sleeps, learnt from what spinning found: a spin that ended
/// in packets doubles the next one (up to [`SPIN_PASSES`]), a spin that ended in a sleep halves it
/// (down to one pass). Packets that come in bursts keep the spin long; packets that come one by
/// one, further apart than a spin lasts, make it short, so the worker does not burn passes that
/// never find anything before each sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Spin {
    passes: u32,
}

impl Default for Spin {
    fn default() -> Self {
        Self {
            passes: SPIN_PASSES,
        }
    }
}

impl Spin {
    /// Passes without packets to make before sleeping.
    fn passes(self) -> u32 {
        self.passes
    }

    /// Packets came after `empty` passes without any: learn from it. `empty` 0 (packets on
    /// consecutive passes) teaches nothing; up to [`Self::passes`] the spin caught them; beyond,
    /// the worker had slept.
    fn packets_after(&mut self, empty: u32) {
        if empty == 0 {
            return;
        }
        self.passes = if empty <= self.passes {
            self.passes.saturating_mul(2).min(SPIN_PASSES)
        } else {
            (self.passes / 2).max(1)
        };
    }
}

/// The workers' keys, for an [`arc_swap::Cache`].
struct KeysOf(Arc<Shared>);

impl core::ops::Deref for KeysOf {
    type Target = ArcSwap<DataPlane>;
    fn deref(&self) -> &Self::Target {
        &self.0.keys
    }
}

/// The workers' paths, for an [`arc_swap::Cache`].
struct PathsOf(Arc<Shared>);

impl core::ops::Deref for PathsOf {
    type Target = ArcSwap<Paths>;
    fn deref(&self) -> &Self::Target {
        &self.0.paths
    }
}

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
    /// The kernel's counters of the worker's two AF_XDP sockets, summed
    /// ([`crate::xsk::Port::statistics`]; refreshed with the drop counters): frames steered to
    /// the worker that the kernel dropped for want of a buffer before the worker saw them.
    pub socket_rx_dropped: AtomicU64,
    /// Frames dropped because an RX ring was full.
    pub socket_rx_ring_full: AtomicU64,
    /// Times a fill ring had no frame for a packet.
    pub socket_fill_ring_empty: AtomicU64,
    /// Descriptors the kernel refused.
    pub socket_invalid_descs: AtomicU64,
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
    /// The capture tap (`pktcrypt capture`).
    pub tap: Arc<Tap>,
    /// The outer UDP source port of each worker's packets (index: the worker; see
    /// [`decide::Context::source_port`]). A worker without an entry sends from the port in its
    /// paths' headers (the ESP port).
    pub source_ports: Vec<u16>,
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
        Self {
            v4: sys::raw_ip_socket(false).ok(),
            v6: sys::raw_ip_socket(true).ok(),
        }
    }

    /// Sends a complete IP packet; the kernel routes it and resolves the neighbour.
    fn send(&self, packet: &[u8], dst: IpAddr) -> bool {
        let fd = match dst {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        };
        let Some(fd) = fd else { return false };
        sys::send_ip(fd.as_fd(), packet, dst).is_ok_and(|n| n == packet.len())
    }
}

/// One worker: its queue pair and per-worker state.
pub struct Worker {
    qp: QueuePair,
    shared: Arc<Shared>,
    index: usize,
    to_control: Sender<ToControl>,
    kernel: KernelPath,
    /// The frames this worker holds that are in no ring and no batch.
    free: Vec<Frame>,
    decider: Decider,
    /// The batch received (allocation reused across batches).
    rx: Vec<Desc>,
    /// The batch's frames lent to the decider (allocation reused across batches).
    frames: Vec<FrameBuf<'static>>,
    decisions: Vec<Decision>,
    tx_outer: Vec<Desc>,
    tx_inner: Vec<Desc>,
    answers: Vec<Desc>,
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
        mut qp: QueuePair,
        shared: Arc<Shared>,
        index: usize,
        to_control: Sender<ToControl>,
    ) -> Self {
        let free = qp.take_frames();
        Self {
            qp,
            shared,
            index,
            to_control,
            kernel: KernelPath::new(),
            free,
            decider: Decider::new(),
            rx: Vec::with_capacity(BATCH),
            frames: Vec::with_capacity(BATCH),
            decisions: Vec::with_capacity(BATCH),
            tx_outer: Vec::with_capacity(BATCH),
            tx_inner: Vec::with_capacity(BATCH),
            answers: Vec::with_capacity(BATCH),
        }
    }

    fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.index]
    }

    /// Runs until `shared.stop` is set.
    ///
    /// One pass: take back completed frames, refill the fill rings, receive from each side and
    /// handle what came, kick the TX rings. A pass that received nothing reads no clock and no
    /// keys; after some such passes in a row (`Spin`: 1 to [`SPIN_PASSES`], learnt) the worker
    /// sleeps in `poll` (`idle`). Keys and paths are read through caches (one atomic load each per
    /// pass with packets while they are unchanged: no reference count shared with the other
    /// workers is touched). The busy time costs one thread-clock read per pass with packets
    /// while passes with packets follow each other (the end of one is the start of the next).
    pub fn run(mut self) {
        // Half the frames wait in each fill ring; the rest are for TX and in flight.
        let half = self.free.len() / 4;
        self.qp.inner.fill(&mut self.free, half);
        self.qp.outer.fill(&mut self.free, half);
        let mut keys = Cache::new(KeysOf(Arc::clone(&self.shared)));
        let mut paths = Cache::new(PathsOf(Arc::clone(&self.shared)));
        let mut last_publish = Instant::now();
        let mut idle_rounds = 0u32;
        let mut spin = Spin::default();
        // The thread clock at the end of the last pass, if that pass had packets.
        let mut busy_since: Option<u64> = None;
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.qp.inner.reap(&mut self.free);
            self.qp.outer.reap(&mut self.free);
            self.refill();
            // When this pass's work began (the clock is read once there is work).
            let mut started: Option<u64> = None;
            let n_in = self.qp.inner.receive(&mut self.rx, BATCH);
            if n_in > 0 {
                started.get_or_insert_with(|| busy_since.unwrap_or_else(sys::thread_cpu_ns));
                bump(&self.stats().rx_inner, n_in as u64);
                self.handle(Side::Inner, keys.load(), paths.load());
            }
            let n_out = self.qp.outer.receive(&mut self.rx, BATCH);
            if n_out > 0 {
                started.get_or_insert_with(|| busy_since.unwrap_or_else(sys::thread_cpu_ns));
                bump(&self.stats().rx_outer, n_out as u64);
                self.handle(Side::Outer, keys.load(), paths.load());
            }
            self.qp.inner.flush();
            self.qp.outer.flush();
            match started {
                Some(started) => {
                    spin.packets_after(idle_rounds);
                    idle_rounds = 0;
                    let now = sys::thread_cpu_ns();
                    bump(&self.stats().busy_ns, now.saturating_sub(started));
                    busy_since = Some(now);
                }
                None => {
                    busy_since = None;
                    if idle_rounds >= spin.passes() {
                        self.idle(idle_rounds - spin.passes());
                    }
                    idle_rounds = idle_rounds.saturating_add(1);
                }
            }
            // The clock only on passes with packets and before sleeping (not while spinning).
            if (started.is_some() || idle_rounds > spin.passes())
                && last_publish.elapsed() >= Duration::from_millis(100)
            {
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
            self.qp.inner.fill(&mut self.free, give);
            self.qp.outer.fill(&mut self.free, give);
        }
    }

    /// Sleeps until a frame arrives on either socket, at most 1 ms after activity, backing off
    /// to [`IDLE_MAX_WAIT_MS`] on an idle worker (so it neither spins nor wakes a thousand
    /// times a second; new keys and paths are picked up with the next packet, `stop` within
    /// the longest wait).
    fn idle(&mut self, rounds: u32) {
        let wait = 1u32
            .checked_shl(rounds.min(6))
            .unwrap_or(IDLE_MAX_WAIT_MS)
            .min(IDLE_MAX_WAIT_MS);
        // An error (EINTR) is a shorter wait.
        let _ = sys::poll_readable(&[self.qp.inner.as_fd(), self.qp.outer.as_fd()], wait);
    }

    fn publish_drops(&self) {
        for (i, (_, n)) in self.decider.drops().iter().enumerate() {
            self.stats().drops[i].store(n, Ordering::Relaxed);
        }
        // Two getsockopt calls every 100 ms at most.
        let sides = [self.qp.inner.statistics(), self.qp.outer.statistics()];
        let k = sides
            .into_iter()
            .flatten()
            .fold(SocketStats::default(), |a, b| a + b);
        let st = self.stats();
        st.socket_rx_dropped.store(k.rx_dropped, Ordering::Relaxed);
        st.socket_rx_ring_full
            .store(k.rx_ring_full, Ordering::Relaxed);
        st.socket_fill_ring_empty
            .store(k.fill_ring_empty, Ordering::Relaxed);
        st.socket_invalid_descs
            .store(k.invalid_descs, Ordering::Relaxed);
    }

    /// Lends the received batch (`self.rx`) to the decider, then acts on its decisions.
    fn handle(&mut self, side: Side, keys: &DataPlane, paths: &Paths) {
        // The tap: one relaxed load per batch while no capture runs.
        let capture = self.shared.tap.sink().map(|sink| (sink, SystemTime::now()));
        if let (Some((sink, time)), Side::Outer) = (&capture, side) {
            // Before the decider opens them in place.
            for d in &mut self.rx {
                let (off, len) = (d.off(), d.len());
                let frame = &self.qp.bytes(d.frame_mut())[off..off + len];
                self.shared
                    .tap
                    .offer(sink, Way::Received, self.index as u16, *time, frame);
            }
        }
        let cx = Context {
            keys,
            paths,
            stats: &self.shared.stats[self.index],
            now: Instant::now(),
            source_port: self.shared.source_ports.get(self.index).copied(),
        };
        let mut frames = recycle_frames(core::mem::take(&mut self.frames));
        for d in &mut self.rx {
            let (off, len) = (d.off(), d.len());
            frames.push(FrameBuf {
                buf: self.qp.bytes(d.frame_mut()),
                off,
                len,
            });
        }
        match side {
            Side::Inner => self.decider.inner(&cx, &mut frames, &mut self.decisions),
            Side::Outer => self.decider.outer(&cx, &mut frames, &mut self.decisions),
        }
        self.frames = recycle_frames(frames);
        self.act(capture.as_ref().map(|(sink, time)| (&**sink, *time)));
    }

    /// Queues, hands to the kernel or frees each frame of the batch as decided, and passes the
    /// decider's messages to the control thread. `capture`: the tap's sink while a capture runs
    /// (the outer frames sent are copied to it) and the batch's time.
    fn act(&mut self, capture: Option<(&Sender<Captured>, SystemTime)>) {
        let stats = &self.shared.stats[self.index];
        self.tx_outer.clear();
        self.tx_inner.clear();
        self.answers.clear();
        for (mut d, decision) in self.rx.drain(..).zip(&self.decisions) {
            match *decision {
                Decision::Outer { at, len } => self.tx_outer.push(d.into_frame().span(at, len)),
                Decision::Inner { at, len } => self.tx_inner.push(d.into_frame().span(at, len)),
                Decision::Icmp { at, len } => self.answers.push(d.into_frame().span(at, len)),
                Decision::Kernel { at, len, dst } => {
                    let frame = self.qp.bytes(d.frame_mut());
                    if self.kernel.send(&frame[at..at + len], dst) {
                        bump(&stats.to_kernel, 1);
                    } else {
                        bump(&stats.no_neighbour, 1);
                    }
                    self.free.push(d.into_frame());
                }
                Decision::Control | Decision::Drop(_) => self.free.push(d.into_frame()),
            }
        }
        let free = &mut self.free;
        transmit(
            &mut self.qp.inner,
            &mut self.answers,
            &stats.icmp_too_big,
            stats,
            free,
        );
        transmit(
            &mut self.qp.inner,
            &mut self.tx_inner,
            &stats.tx_inner,
            stats,
            free,
        );
        // Captured before they are queued (then the kernel owns them), offered once the ring
        // has taken them: those it refused (`tx_full`) were not sent.
        let copies: Vec<Vec<u8>> = match capture {
            Some(_) => self
                .tx_outer
                .iter_mut()
                .map(|d| {
                    let (off, len) = (d.off(), d.len());
                    self.qp.bytes(d.frame_mut())[off..off + len].to_vec()
                })
                .collect(),
            None => Vec::new(),
        };
        let sent = transmit(
            &mut self.qp.outer,
            &mut self.tx_outer,
            &stats.tx_outer,
            stats,
            free,
        );
        if let Some((sink, time)) = capture {
            for frame in copies.into_iter().take(sent) {
                let worker = self.index as u16;
                self.shared
                    .tap
                    .offer_owned(sink, Way::Sent, worker, time, frame);
            }
        }
        for message in self.decider.messages() {
            let _ = self.to_control.try_send(message);
        }
    }
}

/// Which interface a batch came from.
#[derive(Clone, Copy, Debug)]
enum Side {
    Inner,
    Outer,
}

/// Queues `queue` on `port`, counting those queued in `sent` and the rest as `tx_full` (their
/// frames go back to `free`). Returns how many were queued (the first ones of `queue`).
fn transmit(
    port: &mut Port,
    queue: &mut Vec<Desc>,
    sent: &AtomicU64,
    stats: &WorkerStats,
    free: &mut Vec<Frame>,
) -> usize {
    let n = port.transmit(queue);
    bump(sent, n as u64);
    for d in queue.drain(..) {
        bump(&stats.tx_full, 1);
        free.push(d.into_frame());
    }
    n
}

/// Reuses a vector's allocation for frames of another lifetime (it is emptied).
fn recycle_frames<'b>(mut v: Vec<FrameBuf<'_>>) -> Vec<FrameBuf<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

#[cfg(test)]
mod policy_tests {
    use super::decide::{ETH_P_IP, ETH_P_IPV6, is_fragment};
    use super::*;

    #[test]
    fn the_spin_grows_when_it_catches_packets_and_shrinks_when_the_worker_slept() {
        let mut spin = Spin::default();
        assert_eq!(spin.passes(), SPIN_PASSES);
        // Packets one by one, each after a sleep: down to one pass, never zero.
        for want in [32, 16, 8, 4, 2, 1, 1] {
            spin.packets_after(spin.passes() + 1);
            assert_eq!(spin.passes(), want);
        }
        // Back-to-back passes with packets teach nothing.
        spin.packets_after(0);
        assert_eq!(spin.passes(), 1);
        // A burst caught by the spin: doubling back to the cap.
        for want in [2, 4, 8, 16, 32, 64, 64] {
            spin.packets_after(spin.passes());
            assert_eq!(spin.passes(), want);
        }
    }

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
