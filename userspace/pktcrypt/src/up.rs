//! `pktcrypt up`: the gateway daemon on real interfaces.
//!
//! Threads: one control thread (this module: the key server or client state machine, timers,
//! control messages to and from the workers, key and path publication, status), one worker per
//! queue (`pktcrypt_io::gateway`), and a status thread serving `pktcrypt status`,
//! `pktcrypt export-keys` (Unix socket) and Prometheus (`metrics`, HTTP). Control messages
//! leave through a kernel UDP socket bound to the ESP port (XDP steers everything arriving on
//! that port to the workers, so that socket never receives).
//!
//! Next hops (the inner interface's neighbours, each peer's next-hop MAC) come from rtnetlink
//! ([`net::NextHops`]): read in full at start and every [`NEXT_HOP_RESYNC`], and in between
//! updated from the kernel's neighbour and route notifications, which the control loop reads
//! without blocking on every iteration (it wakes at least every 200 ms). Paths are published to
//! the workers only when something in them changed.

use crate::config::{self, ClientFile, GroupKeyTable, KeySource, PeerEntry, ServerFile};
use crate::driver::{OsRandom, ServerRandom, now};
use crate::endpoints::{self, Published};
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use pktcrypt_core::aead::Backend;
use pktcrypt_core::control::{
    GroupController, GroupEvent, GroupMember, Incoming, KeyClient, KeyServer, ServerEvent,
    Transmit, TwinDetector,
};
use pktcrypt_core::wire::OuterHeader;
use pktcrypt_core::wire::esp::NextHeader;
use pktcrypt_core::{DropReason, Engine, Opened, PeerId, Slot, Time};
use pktcrypt_io::gateway::{
    Paths, PeerPath, Prefix, Route, Shared, ToControl, Worker, WorkerStats,
};
use pktcrypt_io::{AttachMode, SteeringConfig, XdpSteering, net};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A peer of a gateway: where it is and what lies behind it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayPeer {
    /// A name for logs and status.
    pub(crate) name: String,
    /// Its outer address.
    pub(crate) address: IpAddr,
    /// Networks behind it (`ADDR/LEN`; a group controller ignores them).
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
    /// Its init key.
    #[serde(flatten)]
    pub(crate) key: KeySource,
    /// Group controller's `[[members]]` only: the member is removed (it keeps its index): it
    /// gets no generation and its joins are refused.
    #[serde(default)]
    pub(crate) removed: bool,
}

/// `pktcrypt up` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayFile {
    /// `server`, `client`, `group-member` or `group-controller`.
    pub(crate) role: String,
    /// Name in status output.
    pub(crate) name: Option<String>,
    /// Plaintext side (every role but `group-controller`).
    pub(crate) inner: Option<String>,
    /// ESP side (every role but `group-controller`).
    pub(crate) outer: Option<String>,
    /// Our outer address (default: the outer interface's first address of the peers' family).
    pub(crate) local: Option<IpAddr>,
    /// The networks behind this gateway (`ADDR/LEN`; server and client): decrypted packets
    /// must be addressed to them (a group member's are its `[[members]]` entry's).
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
    /// Start even though the kernel forwards IP in this network namespace (it would forward
    /// protected traffic in the clear whenever no pktcrypt program is attached: before the
    /// first `up`, after `down`). Default: refuse.
    pub(crate) allow_forwarding: Option<bool>,
    /// Key server: forward decrypted packets from one client to another client's prefixes
    /// (a hub). Default off: a decrypted packet may only go to `prefixes`.
    pub(crate) hub: Option<bool>,
    /// ESP-in-UDP port (default 4500).
    pub(crate) port: Option<u16>,
    /// Worker threads, one per RX queue of each interface (default: the number of queues).
    pub(crate) workers: Option<u32>,
    /// Compiled XDP program (default: `$PKTCRYPT_XDP_OBJECT`).
    pub(crate) xdp_object: Option<PathBuf>,
    /// Unix socket for `pktcrypt status` (mode 0660; default `/run/pktcrypt/NAME.sock`).
    pub(crate) status_socket: Option<PathBuf>,
    /// Unix socket for `pktcrypt export-keys` (mode 0600; default: the status socket's name
    /// with `.keys.sock`).
    pub(crate) keys_socket: Option<PathBuf>,
    /// Prometheus text endpoint, e.g. `127.0.0.1:9477`.
    pub(crate) metrics: Option<SocketAddr>,
    /// UMEM frames per worker (default 8192).
    pub(crate) frames: Option<u32>,
    /// AEAD implementation: `default`, `ring`, `rustcrypto` (and `null-insecure` in builds with
    /// the benchmark-only feature `insecure-null-backend`).
    pub(crate) backend: Option<String>,
    // Key server settings (see `pktcrypt server`).
    /// Suite of new generations.
    pub(crate) suite: Option<String>,
    /// Derived-key mode.
    pub(crate) derived: Option<bool>,
    /// Forward secrecy policy (see `pktcrypt server`).
    pub(crate) pfs: Option<config::PfsSetting>,
    /// Init handshakes per second at most (see `pktcrypt server`).
    pub(crate) max_handshakes_per_second: Option<u32>,
    /// Rotation interval.
    pub(crate) rekey_interval_ms: Option<u64>,
    /// Rotation jitter.
    pub(crate) rekey_jitter_permille: Option<u32>,
    /// Rekey rate limit.
    pub(crate) max_rekeys_per_second: Option<u32>,
    /// Distribution retransmission.
    pub(crate) distribution_retry_ms: Option<u64>,
    /// Implicit resend spacing.
    pub(crate) implicit_resend_ms: Option<u64>,
    /// Reorder grace.
    pub(crate) reorder_grace_ms: Option<u64>,
    /// Anti-replay window.
    pub(crate) replay_window: Option<u32>,
    // Client settings (see `pktcrypt client`).
    /// Client-timed updates.
    pub(crate) update_interval_ms: Option<u64>,
    /// Hello interval.
    pub(crate) hello_interval_ms: Option<u64>,
    /// First request retransmission.
    pub(crate) request_timeout_ms: Option<u64>,
    /// Largest retransmission interval.
    pub(crate) max_backoff_ms: Option<u64>,
    /// Unanswered requests before falling back to the init key.
    pub(crate) max_retries: Option<u32>,
    /// Status line interval on stdout (0: none; default 1000).
    pub(crate) status_interval_ms: Option<u64>,
    /// A client's key server.
    pub(crate) server: Option<GatewayPeer>,
    /// A server's clients.
    #[serde(default)]
    pub(crate) clients: Vec<GatewayPeer>,
    // Group mode (see `pktcrypt group-controller` / `group-member`).
    /// A member's index in `members`.
    pub(crate) index: Option<u16>,
    /// A member's controller (outer address; the port is `control_port`).
    pub(crate) controller: Option<IpAddr>,
    /// UDP port of the controller ↔ member channel (default: the ESP port + 1).
    pub(crate) control_port: Option<u16>,
    /// The group init key.
    pub(crate) group: Option<GroupKeyTable>,
    /// First retransmission of an unanswered group control message.
    pub(crate) retry_ms: Option<u64>,
    /// Controller: evict members that never answer (and rekey without them).
    pub(crate) evict_unresponsive: Option<bool>,
    /// Member: retire another member's previous group generation once it has been heard under
    /// the new one and nothing arrived under the old for this long (XDP's per-SPI counters),
    /// even if the controller's UPDATE_COMPLETED never comes (default 5000; 0: only on
    /// UPDATE_COMPLETED).
    pub(crate) retire_grace_ms: Option<u64>,
    /// Every member, in index order: name, outer address, prefixes, and the pairwise control
    /// init key (the controller needs every member's; a member only its own).
    #[serde(default)]
    pub(crate) members: Vec<GatewayPeer>,
}

/// Refuses to run a gateway in a network namespace whose kernel forwards IP (unless allowed:
/// then warns): whenever no pktcrypt program is attached, the kernel would forward protected
/// traffic in the clear.
fn check_forwarding(allow: bool) -> Result<(), String> {
    let on = |path: &str| {
        std::fs::read_to_string(path)
            .map(|v| v.trim() != "0")
            .unwrap_or(false)
    };
    let mut set = Vec::new();
    if on("/proc/sys/net/ipv4/ip_forward") {
        set.push("net.ipv4.ip_forward");
    }
    if on("/proc/sys/net/ipv6/conf/all/forwarding") {
        set.push("net.ipv6.conf.all.forwarding");
    }
    if set.is_empty() {
        return Ok(());
    }
    if allow {
        tracing::warn!(
            sysctls = ?set,
            "IP forwarding is on in this network namespace (allow_forwarding = true): the \
             kernel forwards protected traffic in the clear whenever no pktcrypt program is \
             attached (before the first `pktcrypt up`, after `pktcrypt down`)"
        );
        return Ok(());
    }
    Err(format!(
        "allow_forwarding: IP forwarding is on in this network namespace ({} = 1): the kernel \
         would forward protected traffic in the clear whenever no pktcrypt program is attached. \
         Set it to 0 (pktcrypt does the forwarding), or allow_forwarding = true",
        set.join(", ")
    ))
}

/// `pktcrypt down --config FILE`: removes the XDP programs a gateway left on its interfaces
/// (they stay after the daemon stops, fail closed). The interfaces pass traffic to the kernel
/// again.
pub(crate) fn down(path: &Path) -> Result<(), String> {
    let file: GatewayFile = config::load(path)?;
    for (field, iface) in [("inner", &file.inner), ("outer", &file.outer)] {
        let Some(iface) = iface else { continue };
        pktcrypt_io::xdp_attach::detach_all(iface).map_err(|e| format!("{field}: {iface}: {e}"))?;
        tracing::info!(iface, "XDP program removed");
    }
    Ok(())
}

/// How often the status document is rebuilt: every `status_interval_ms` (default 1 s), or every
/// second when it is 0 ("no status lines"; the status socket and metrics still refresh). Never
/// 0: a zero interval would make the control loop spin.
pub(crate) fn status_refresh(ms: Option<u64>) -> Duration {
    match ms {
        None | Some(0) => Duration::from_secs(1),
        Some(v) => Duration::from_millis(v),
    }
}

fn parse_prefix(field: &str, s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{field}: {s:?} is not ADDR/LEN"))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{field}: bad address in {s:?}"))?;
    let len: u8 = l
        .parse()
        .map_err(|_| format!("{field}: bad length in {s:?}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("{field}: length {len} above {max} in {s:?}"));
    }
    Ok((addr, len))
}

/// A client whose init key two gateways seem to use, with their addresses.
type Twins = (PeerId, (SocketAddr, SocketAddr));

/// The state machine of a data-path role.
enum Machine {
    Server(Box<KeyServer>),
    Client(Box<KeyClient>),
    /// A group member: data under the group keys, control with the controller over the
    /// daemon's own UDP socket (`controller` is the controller's control address).
    Member(Box<GroupMember>, SocketAddr),
}

impl Machine {
    fn engine(&self) -> &Engine {
        match self {
            Machine::Server(s) => s.engine(),
            Machine::Client(c) => c.engine(),
            Machine::Member(m, _) => m.engine(),
        }
    }
    fn poll_timeout(&self) -> Option<Time> {
        match self {
            Machine::Server(s) => s.poll_timeout(),
            Machine::Client(c) => c.poll_timeout(),
            Machine::Member(m, _) => m.poll_timeout(),
        }
    }
    fn handle_timeout(&mut self, t: Time) {
        match self {
            Machine::Server(s) => s.handle_timeout(t),
            Machine::Client(c) => c.handle_timeout(t),
            Machine::Member(m, _) => m.handle_timeout(t),
        }
    }
    /// The next control message and where it goes (`peers`: addresses of pairwise peers).
    fn poll_transmit(
        &mut self,
        peers: &HashMap<PeerId, PeerInfo>,
        port: u16,
    ) -> Option<(Transmit, Option<SocketAddr>)> {
        let pairwise = |tr: Transmit| {
            let to = tr.destination.or_else(|| {
                peers
                    .get(&tr.peer)
                    .map(|p| SocketAddr::new(p.address, port))
            });
            (tr, to)
        };
        match self {
            Machine::Server(s) => s.poll_transmit().map(pairwise),
            Machine::Client(c) => c.poll_transmit().map(pairwise),
            // The member's control peer is the controller, whatever its id.
            Machine::Member(m, controller) => m.poll_transmit().map(|tr| (tr, Some(*controller))),
        }
    }
    /// A datagram from the daemon's own control socket (group mode).
    fn handle_datagram(&mut self, t: Time, bytes: &mut [u8]) -> Option<DropReason> {
        match self {
            Machine::Member(m, _) => match m.handle_datagram(t, bytes) {
                Incoming::Dropped(r) => Some(r),
                _ => None,
            },
            _ => Some(DropReason::ControlUnexpected),
        }
    }
    /// The events, as text; a key server's handshakes go through `twins`, and what looks like
    /// two gateways using one client's init key is returned too.
    fn drain_events(
        &mut self,
        t: Time,
        twins: &mut HashMap<PeerId, TwinDetector>,
    ) -> (Vec<String>, Vec<Twins>) {
        let mut out = Vec::new();
        let mut duplicates = Vec::new();
        match self {
            Machine::Server(s) => {
                while let Some(e) = s.poll_event() {
                    if let ServerEvent::ClientInit { peer } = e
                        && let Some(addr) = s.address(peer)
                        && let Some(addrs) = twins.entry(peer).or_default().handshake_from(t, addr)
                    {
                        duplicates.push((peer, addrs));
                    }
                    out.push(format!("{e:?}"));
                }
            }
            Machine::Client(c) => {
                while let Some(e) = c.poll_event() {
                    out.push(format!("{e:?}"));
                }
            }
            Machine::Member(m, _) => {
                while let Some(e) = m.poll_event() {
                    out.push(format!("{e:?}"));
                }
            }
        }
        (out, duplicates)
    }
    fn handle_opened(
        &mut self,
        t: Time,
        from: SocketAddr,
        opened: Opened<'_>,
    ) -> Option<DropReason> {
        let incoming = match self {
            Machine::Server(s) => s.handle_opened(t, Some(from), opened),
            Machine::Client(c) => c.handle_opened(t, opened),
            // Group data needs no control reaction; group control never travels in group SAs.
            Machine::Member(..) => match opened {
                Opened::Control { .. } => Incoming::Dropped(DropReason::ControlUnexpected),
                _ => return None,
            },
        };
        match incoming {
            Incoming::Dropped(r) => Some(r),
            _ => None,
        }
    }
    fn check_triggers(&mut self, t: Time) {
        match self {
            Machine::Server(s) => {
                let peers: Vec<PeerId> = s.engine().peers().collect();
                for p in peers {
                    s.check_triggers(t, p);
                }
            }
            Machine::Client(c) => c.check_triggers(t),
            // The controller rekeys the group.
            Machine::Member(..) => {}
        }
    }
    fn data_plane(&mut self) -> Result<pktcrypt_core::DataPlane, String> {
        match self {
            Machine::Server(s) => s.data_plane(),
            Machine::Client(c) => c.data_plane(),
            Machine::Member(m, _) => m.data_plane(),
        }
        .map_err(|e| e.to_string())
    }
}

/// Which generation (number and SPI) sits in which slot for every peer: when it changes, keys
/// are republished to the workers and the SPIs to the XDP program.
type Fingerprint = Vec<(u32, [(u64, u32); 3], u64)>;

fn key_fingerprint(engine: &Engine) -> Fingerprint {
    engine
        .peers()
        .map(|p| {
            let g = |s| {
                engine
                    .generation(p, s)
                    .map_or((u64::MAX, 0), |g| (g.number, g.spi.get()))
            };
            (
                p.0,
                [g(Slot::Init), g(Slot::Newest), g(Slot::Previous)],
                engine.tx_generation(p).map_or(u64::MAX, |g| g.number),
            )
        })
        .collect()
}

/// When a packet last arrived under each SPI, from the outer XDP program's per-SPI counters
/// (read on the paths tick): the evidence for retiring generations nobody sends under.
#[derive(Default)]
struct SpiActivity {
    /// SPI → (packets counted, when that count was first read).
    seen: HashMap<u32, (u64, Time)>,
}

impl SpiActivity {
    fn update(&mut self, counts: &HashMap<u32, u64>, t: Time) {
        self.seen.retain(|spi, _| counts.contains_key(spi));
        for (spi, n) in counts {
            let e = self.seen.entry(*spi).or_insert((0, t));
            if *n != e.0 {
                *e = (*n, t);
            }
        }
    }

    /// When a packet was last seen under `spi` (to the tick), if ever.
    fn last_seen(&self, spi: u32) -> Option<Time> {
        self.seen
            .get(&spi)
            .and_then(|(n, t)| (*n > 0).then_some(*t))
    }
}

struct PeerInfo {
    name: String,
    address: IpAddr,
    prefixes: Vec<(IpAddr, u8)>,
}

/// `pktcrypt up --config FILE`.
pub(crate) fn run(path: &Path, term: &AtomicBool) -> Result<(), String> {
    let file: GatewayFile = config::load(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let name = file.name.clone().unwrap_or_else(|| "pktcrypt".into());
    let port = file.port.unwrap_or(pktcrypt_common::DEFAULT_ESP_UDP_PORT);
    if file.role == "group-controller" {
        return run_controller(&file, base, &name, port, term);
    }
    let inner = file
        .inner
        .clone()
        .ok_or_else(|| format!("inner: role {:?} needs the inner interface", file.role))?;
    let outer = file
        .outer
        .clone()
        .ok_or_else(|| format!("outer: role {:?} needs the outer interface", file.role))?;
    // One worker per RX queue: a queue without an AF_XDP socket would pass its packets to the
    // kernel instead of the tunnel.
    let inner_queues = net::rx_queues(&inner).map_err(|e| format!("inner: {e}"))?;
    let outer_queues = net::rx_queues(&outer).map_err(|e| format!("outer: {e}"))?;
    let workers = file.workers.unwrap_or(inner_queues.max(outer_queues));
    if workers == 0 {
        return Err("workers: must be at least 1".into());
    }
    for (field, iface, queues) in [
        ("inner", &inner, inner_queues),
        ("outer", &outer, outer_queues),
    ] {
        if queues != workers {
            return Err(format!(
                "workers: {workers} workers, but the {field} interface {iface} has {queues} RX queues; \
                 every queue needs a worker (set workers = {queues}, or `ethtool -L {iface} combined {workers}`)"
            ));
        }
    }
    let frames = file.frames.unwrap_or(8192);
    if !(256..=262_144).contains(&frames) {
        return Err("frames: must be in 256..=262144".into());
    }
    let object_path = file
        .xdp_object
        .clone()
        .map(|p| if p.is_relative() { base.join(p) } else { p })
        .or_else(|| std::env::var_os("PKTCRYPT_XDP_OBJECT").map(PathBuf::from))
        .ok_or(
            "xdp_object: not set (nor PKTCRYPT_XDP_OBJECT); build it with scripts/build-ebpf.sh",
        )?;
    let object = std::fs::read(&object_path)
        .map_err(|e| format!("xdp_object: {}: {e}", object_path.display()))?;

    let backend = backend(file.backend.as_deref())?;
    check_forwarding(file.allow_forwarding.unwrap_or(false))?;

    // The state machine and its peers.
    let t0 = now();
    let mut peers: HashMap<PeerId, PeerInfo> = HashMap::new();
    let role = file.role.as_str();
    if role != "client" && file.server.is_some() {
        return Err("server: only a client has a [server] table".into());
    }
    if role != "server" && role != "group-controller" && file.pfs.is_some() {
        return Err(
            "pfs: only a key server or a group controller has a forward-secrecy policy".into(),
        );
    }
    if role != "server" && file.max_handshakes_per_second.is_some() {
        return Err("max_handshakes_per_second: only a key server answers handshakes".into());
    }
    if role != "server" && !file.clients.is_empty() {
        return Err("clients: only a server has [[clients]]".into());
    }
    if file.clients.iter().any(|c| c.removed) || file.server.as_ref().is_some_and(|s| s.removed) {
        return Err("removed: only a group controller's [[members]] can be marked removed".into());
    }
    if role != "group-member" && file.retire_grace_ms.is_some() {
        return Err(
            "retire_grace_ms: only a group member retires generations on evidence (a key \
             server transmits under N-1 by design, so pairwise N-1 stays until the next rotation)"
                .into(),
        );
    }
    if !role.starts_with("group") && (!file.members.is_empty() || file.group.is_some()) {
        return Err("members: [[members]] and [group] belong to the group roles".into());
    }
    let mut machine = match role {
        "server" => {
            if file.clients.is_empty() {
                return Err("clients: a server needs at least one [[clients]] entry".into());
            }
            let sf = ServerFile {
                listen: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port),
                suite: file.suite.clone(),
                derived: file.derived,
                pfs: file.pfs.clone(),
                max_handshakes_per_second: file.max_handshakes_per_second,
                rekey_interval_ms: file.rekey_interval_ms,
                rekey_jitter_permille: file.rekey_jitter_permille,
                max_rekeys_per_second: file.max_rekeys_per_second,
                distribution_retry_ms: file.distribution_retry_ms,
                implicit_resend_ms: file.implicit_resend_ms,
                reorder_grace_ms: file.reorder_grace_ms,
                replay_window: file.replay_window,
                traffic_pps: None,
                status_interval_ms: None,
                clients: file
                    .clients
                    .iter()
                    .map(|c| PeerEntry {
                        name: c.name.clone(),
                        address: Some(SocketAddr::new(c.address, port)),
                        key: c.key.clone(),
                        removed: false,
                    })
                    .collect(),
            };
            let mut sc = sf.server_config()?;
            sc.engine.backend = backend;
            let mut server =
                KeyServer::new(sc, Box::new(ServerRandom::new())).map_err(|e| e.to_string())?;
            let mut distinct = config::DistinctKeys::default();
            for (i, c) in file.clients.iter().enumerate() {
                let field = format!("clients[{i}] ({})", c.name);
                let key = c.key.load(&field, 0, base)?;
                distinct.check(&field, &key)?;
                let id = server
                    .add_client(&key, Some(SocketAddr::new(c.address, port)), t0)
                    .map_err(|e| format!("{field}: {e}"))?;
                peers.insert(id, peer_info(&field, c)?);
            }
            Machine::Server(Box::new(server))
        }
        "client" => {
            let s = file
                .server
                .clone()
                .ok_or("server: a client needs a [server] table")?;
            let cf = ClientFile {
                server: SocketAddr::new(s.address, port),
                bind: None,
                count: None,
                name: None,
                key: s.key.clone(),
                update_interval_ms: file.update_interval_ms,
                hello_interval_ms: file.hello_interval_ms,
                request_timeout_ms: file.request_timeout_ms,
                max_backoff_ms: file.max_backoff_ms,
                max_retries: file.max_retries,
                replay_window: file.replay_window,
                traffic_pps: None,
                status_interval_ms: None,
            };
            let key = s.key.load("server", 0, base)?;
            let mut cc = cf.client_config()?;
            cc.engine.backend = backend;
            let client = KeyClient::new(cc, &key, Box::new(OsRandom), t0)
                .map_err(|e| format!("server: {e}"))?;
            peers.insert(client.server(), peer_info("server", &s)?);
            Machine::Client(Box::new(client))
        }
        "group-member" => {
            let (member, controller, member_peers) = group_member(&file, base, port, backend, t0)?;
            peers = member_peers;
            Machine::Member(Box::new(member), controller)
        }
        other => {
            return Err(format!(
                "role: {other:?} is none of \"server\", \"client\", \"group-controller\", \"group-member\""
            ));
        }
    };

    // Inner policy: what may come out of the tunnel here.
    let local_field = if role == "group-member" {
        if !file.prefixes.is_empty() {
            return Err(
                "prefixes: a group member's networks are the prefixes of its own [[members]] entry"
                    .into(),
            );
        }
        let index = usize::from(file.index.unwrap_or(0));
        (
            format!("members[{index}].prefixes"),
            file.members
                .get(index)
                .map(|m| m.prefixes.clone())
                .unwrap_or_default(),
        )
    } else {
        ("prefixes".to_string(), file.prefixes.clone())
    };
    if local_field.1.is_empty() {
        return Err(format!(
            "{}: the networks behind this gateway are required (decrypted packets must be \
             addressed to them)",
            local_field.0
        ));
    }
    if role != "server" && file.hub.is_some() {
        return Err("hub: only a key server forwards between its clients".into());
    }
    let local_prefixes: Vec<Prefix> = local_field
        .1
        .iter()
        .map(|p| parse_prefix(&local_field.0, p).map(|(net, len)| Prefix { net, len }))
        .collect::<Result<_, _>>()?;

    // Paths.
    let family_v4 = peers.values().all(|p| p.address.is_ipv4());
    let local = match file.local {
        Some(a) => a,
        None => {
            let (v4, v6) = net::addresses(&outer).map_err(|e| format!("outer: {e}"))?;
            if family_v4 { v4 } else { v6 }.ok_or_else(|| {
                format!(
                    "local: interface {} has no address of the peers' family",
                    outer
                )
            })?
        }
    };
    let mut paths = Paths {
        inner_mac: net::mac(&inner).map_err(|e| format!("inner: {e}"))?,
        outer_mac: net::mac(&outer).map_err(|e| format!("outer: {e}"))?,
        outer_mtu: net::mtu(&outer).map_err(|e| format!("outer: {e}"))?,
        esp_port: port,
        ..Paths::default()
    };
    let (in4, in6) = net::addresses(&inner).map_err(|e| format!("inner: {e}"))?;
    paths.inner_v4 = in4.and_then(|a| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    paths.inner_v6 = in6.and_then(|a| match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    });
    let mut prefixes = Vec::new();
    // Pairwise: seal for the peer behind the prefix. Group: always under our own sender keys.
    let seal_as = match &machine {
        Machine::Member(m, _) => m.sender(m.index()),
        _ => None,
    };
    paths.local = local_prefixes;
    paths.hub = file.hub.unwrap_or(false);
    for (id, p) in &peers {
        for &(net, len) in &p.prefixes {
            paths.routes.push(Route {
                net,
                len,
                peer: seal_as.unwrap_or(*id),
                path: id.0,
            });
            prefixes.push((net, len));
        }
        paths.sources.insert(
            id.0,
            p.prefixes
                .iter()
                .map(|&(net, len)| Prefix { net, len })
                .collect(),
        );
        let header = OuterHeader::new(
            SocketAddr::new(local, port),
            SocketAddr::new(p.address, port),
            64,
        )
        .ok_or_else(|| {
            format!(
                "local: {local} and peer {} ({}) differ in family",
                p.name, p.address
            )
        })?;
        paths.peers.insert(id.0, PeerPath { header, mac: None });
    }
    paths.sort_routes();
    let mut hops = net::NextHops::new(&inner, peers.values().map(|p| p.address))
        .map_err(|e| format!("inner: reading neighbours and routes: {e}"))?;
    apply_next_hops(&mut paths, &peers, &hops);

    // Control socket (sending only; see the module docs).
    let socket = UdpSocket::bind(SocketAddr::new(local, port))
        .map_err(|e| format!("local: binding UDP {local}:{port}: {e}"))?;

    // Workers and XDP.
    let (to_control, from_workers): (Sender<ToControl>, Receiver<ToControl>) =
        crossbeam_channel::bounded(4096);
    // Group mode: the controller channel is a kernel UDP socket on the control port (XDP does
    // not steer it); a reader thread feeds its datagrams into the control loop.
    let reader_stop = Arc::new(AtomicBool::new(false));
    let control_socket = match &machine {
        Machine::Member(..) => {
            let cport = control_port(&file, port)?;
            let s = UdpSocket::bind(SocketAddr::new(local, cport))
                .map_err(|e| format!("control_port: binding UDP {local}:{cport}: {e}"))?;
            spawn_reader(&s, to_control.clone(), Arc::clone(&reader_stop))?;
            Some(s)
        }
        _ => None,
    };
    let keys = machine.data_plane()?;
    let shared = Arc::new(Shared {
        keys: ArcSwap::from_pointee(keys),
        paths: ArcSwap::from_pointee(paths.clone()),
        stop: AtomicBool::new(false),
        stats: (0..workers).map(|_| WorkerStats::new()).collect(),
    });
    let mut inner_xdp = XdpSteering::attach(
        &object,
        &inner,
        &SteeringConfig {
            esp_port: None,
            prefixes,
            spis: None,
            spi_capacity: 1,
        },
    )
    .map_err(|e| format!("inner: {e}"))?;
    // Only ESP under an SPI held is steered; the rest is dropped in XDP. At most three
    // generations per peer (init, N, N-1).
    let held: Vec<u32> = machine.engine().held_spis().collect();
    let spi_capacity = (machine.engine().peers().count() as u32)
        .saturating_mul(3)
        .saturating_add(64)
        .max(pktcrypt_common::DEFAULT_SPI_CAPACITY);
    let mut outer_xdp = XdpSteering::attach(
        &object,
        &outer,
        &SteeringConfig {
            esp_port: Some(port),
            prefixes: Vec::new(),
            spis: Some(held),
            spi_capacity,
        },
    )
    .map_err(|e| format!("outer: {e}"))?;
    for s in [&inner_xdp, &outer_xdp] {
        if s.mode() == AttachMode::Generic {
            tracing::warn!(
                iface = s.iface(),
                "no native XDP on this interface; attached in generic (SKB) mode"
            );
        }
    }
    let mut handles = Vec::new();
    for q in 0..workers {
        // The UMEM is not Send: each worker creates its queue pair on its own thread and
        // reports the socket descriptors back for the XSKMAPs.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (inner_if, outer_if) = (inner.clone(), outer.clone());
        let (sh, tc) = (Arc::clone(&shared), to_control.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("pktcrypt-worker-{q}"))
                .spawn(move || {
                    match pktcrypt_io::xsk::QueuePair::new(&inner_if, &outer_if, q, frames) {
                        Ok(qp) => {
                            let _ = ready_tx.send(Ok((qp.inner.fd(), qp.outer.fd())));
                            Worker::new(qp, sh, q as usize, tc).run();
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|e| format!("starting worker {q}: {e}"))?,
        );
        let (inner_fd, outer_fd) = ready_rx
            .recv()
            .map_err(|_| format!("worker {q} exited during setup"))??;
        inner_xdp.register_socket(q, inner_fd)?;
        outer_xdp.register_socket(q, outer_fd)?;
    }
    tracing::info!(
        gateway = name,
        role = file.role,
        inner,
        outer,
        local = %local,
        port,
        workers,
        xdp_inner = ?inner_xdp.mode(),
        xdp_outer = ?outer_xdp.mode(),
        "up"
    );

    // Status thread.
    let published = Arc::new(Mutex::new(Published::default()));
    let socket_path = file
        .status_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/pktcrypt/{name}.sock")));
    let keys_path = file
        .keys_socket
        .clone()
        .unwrap_or_else(|| endpoints::default_keys_socket(&socket_path));
    let (requests, request_rx) = crossbeam_channel::bounded::<endpoints::Request>(16);
    endpoints::serve(
        &socket_path,
        Some(&keys_path),
        requests,
        file.metrics,
        Arc::clone(&published),
    )?;

    // The control loop.
    let status_every = status_refresh(file.status_interval_ms);
    let mut next_status = now() + status_every;
    let mut next_tick = now();
    let mut next_resync = now() + NEXT_HOP_RESYNC;
    let mut hops_failing = false;
    let mut fingerprint = key_fingerprint(machine.engine());
    let mut control_drops = pktcrypt_core::DropCounters::default();
    let mut events_total = 0u64;
    let mut rekeys = 0u64;
    let mut unresolved = HashMap::new();
    let mut activity = SpiActivity::default();
    let mut twins: HashMap<PeerId, TwinDetector> = HashMap::new();
    let mut duplicate_clients = 0u64;
    let mut spi_map_errors = 0u64;
    let mut retired_on_evidence = 0u64;
    let retire_grace = match file.retire_grace_ms.unwrap_or(5000) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    while !term.load(Ordering::Relaxed) {
        let t = now();
        let mut wake = next_tick.min(next_status).min(next_resync);
        if let Some(p) = machine.poll_timeout() {
            wake = wake.min(p);
        }
        let wait = wake.saturating_sub(t).min(Duration::from_millis(200));
        let first = match from_workers.recv_timeout(wait) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        for msg in first.into_iter().chain(from_workers.try_iter()) {
            let t = now();
            let dropped = match msg {
                ToControl::Control {
                    info,
                    from,
                    message,
                } => machine.handle_opened(
                    t,
                    from,
                    Opened::Control {
                        message: &message,
                        info,
                    },
                ),
                ToControl::Observed { info, from } => machine.handle_opened(
                    t,
                    from,
                    Opened::Data {
                        packet: &mut [],
                        next_header: NextHeader::Ipv4,
                        info,
                    },
                ),
                ToControl::Datagram { mut bytes, .. } => machine.handle_datagram(t, &mut bytes),
            };
            if let Some(r) = dropped {
                control_drops.add(r);
            }
        }
        let t = now();
        if machine.poll_timeout().is_some_and(|p| p <= t) {
            machine.handle_timeout(t);
        }
        // Keys first (a distribution's keys must be in the workers, and their SPIs in the XDP
        // program, before the proof or the announcement goes out).
        let fp = key_fingerprint(machine.engine());
        if fp != fingerprint {
            fingerprint = fp;
            rekeys += 1;
            shared.keys.store(Arc::new(machine.data_plane()?));
            if let Err(e) = outer_xdp.set_spis(machine.engine().held_spis()) {
                spi_map_errors += 1;
                tracing::error!(
                    gateway = name,
                    error = e.to_string(),
                    "the XDP SPI map is out of step: packets under the SPIs missing are \
                     dropped in XDP"
                );
            }
        }
        while let Some((tr, dest)) = machine.poll_transmit(&peers, port) {
            if let Some(d) = dest {
                let _ = control_socket
                    .as_ref()
                    .unwrap_or(&socket)
                    .send_to(&tr.contents, d);
            }
        }
        let (events, duplicates) = machine.drain_events(t, &mut twins);
        for e in events {
            events_total += 1;
            tracing::info!(gateway = name, event = e);
        }
        for (peer, (a, b)) in duplicates {
            duplicate_clients += 1;
            tracing::error!(
                gateway = name,
                peer = peers.get(&peer).map(|p| p.name.as_str()),
                first = %a,
                second = %b,
                "two gateways use this client's init key (a copied configuration?): their \
                 handshakes keep resetting each other's keys"
            );
        }
        // Next hops: the kernel's notifications as they came (never blocks), everything read
        // again every NEXT_HOP_RESYNC; the workers get new paths only when they changed.
        let updated = hops.update();
        let resynced = (next_resync <= t).then(|| {
            next_resync = t + NEXT_HOP_RESYNC;
            hops.resync()
        });
        let results = [Some(updated), resynced];
        // A failed reading may still have applied part of what it read: publish then too.
        if results.iter().flatten().any(|r| !matches!(r, Ok(false))) {
            apply_next_hops(&mut paths, &peers, &hops);
            shared.paths.store(Arc::new(paths.clone()));
        }
        match results.into_iter().flatten().find_map(Result::err) {
            Some(e) if !hops_failing => {
                hops_failing = true;
                tracing::warn!(
                    gateway = name,
                    error = e.to_string(),
                    "next hops may be out of date"
                );
            }
            Some(_) => {}
            None if hops_failing => {
                hops_failing = false;
                tracing::info!(gateway = name, "reading neighbours and routes again");
            }
            None => {}
        }
        if next_tick <= t {
            next_tick = t + TICK;
            machine.check_triggers(t);
            keepalive_unresolved(&paths, &peers, &socket, port, &mut unresolved);
            if let (Machine::Member(m, _), Some(grace)) = (&mut machine, retire_grace) {
                if let Ok(counts) = outer_xdp.spi_packets() {
                    activity.update(&counts, t);
                }
                let retired = m.retire_unused(t, grace, |spi| activity.last_seen(spi));
                if retired > 0 {
                    retired_on_evidence += retired as u64;
                    tracing::info!(
                        gateway = name,
                        retired,
                        "previous group generation retired on evidence (no packets under it)"
                    );
                }
            }
        }
        // The status document: on the tick (printed, metrics published) and for every status
        // request (as of now); key text only on request, never kept (wiped when the endpoint
        // has written it). One rendering serves both.
        let asks: Vec<endpoints::Request> = request_rx.try_iter().collect();
        let tick = next_status <= t;
        let doc = (tick || asks.iter().any(|(a, _)| *a == endpoints::Ask::Status)).then(|| {
            render(
                &name,
                &machine,
                &peers,
                &shared,
                &control_drops,
                rekeys,
                events_total,
                &inner_xdp,
                &outer_xdp,
                [
                    ("spi_map_errors", spi_map_errors),
                    ("retired_on_evidence", retired_on_evidence),
                    ("duplicate_clients", duplicate_clients),
                ],
            )
        });
        if let Some((status, metrics)) = &doc {
            if tick {
                next_status = t + status_every;
                if file.status_interval_ms != Some(0) {
                    println!("{status}");
                }
            }
            let mut p = published.lock().map_err(|_| "status lock poisoned")?;
            p.metrics.clone_from(metrics);
        }
        for (ask, reply) in asks {
            let text = match (ask, &doc) {
                (endpoints::Ask::Status, Some((status, _))) => {
                    zeroize::Zeroizing::new(status.clone())
                }
                (endpoints::Ask::Status, None) => continue,
                (endpoints::Ask::Keys, _) => export(&machine, &peers, local),
            };
            let _ = reply.send(text);
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    reader_stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    // The programs stay attached (fail closed: no socket, protected traffic dropped) until the
    // next `pktcrypt up` replaces them or `pktcrypt down` removes them.
    drop((inner_xdp, outer_xdp));
    let _ = std::fs::remove_file(&socket_path);
    let _ = std::fs::remove_file(&keys_path);
    tracing::info!(
        gateway = name,
        "stopped; XDP stays attached and drops protected traffic (fail closed) until the next \
         `pktcrypt up`, or `pktcrypt down`"
    );
    Ok(())
}

/// `role = "group-controller"`: the group's key controller. It has no data path (no
/// interfaces, no XDP): it talks to the members over a kernel UDP socket on the control port,
/// and serves `pktcrypt status` and Prometheus like the gateways.
fn run_controller(
    file: &GatewayFile,
    base: &Path,
    name: &str,
    port: u16,
    term: &AtomicBool,
) -> Result<(), String> {
    for (field, set) in [
        ("inner", file.inner.is_some()),
        ("outer", file.outer.is_some()),
        ("index", file.index.is_some()),
        ("controller", file.controller.is_some()),
        ("server", file.server.is_some()),
        ("clients", !file.clients.is_empty()),
        ("retire_grace_ms", file.retire_grace_ms.is_some()),
    ] {
        if set {
            return Err(format!("{field}: not used by a group controller"));
        }
    }
    if file.members.is_empty() {
        return Err("members: a group controller needs at least one [[members]] entry".into());
    }
    let mut config = config::group_config(
        &file.suite,
        file.rekey_interval_ms,
        file.retry_ms,
        file.max_retries,
        file.evict_unresponsive,
        pktcrypt_core::Role::KeyServer,
    )?;
    config.engine.backend = backend(file.backend.as_deref())?;
    if let Some(p) = &file.pfs {
        config.pfs = p.parse().map_err(|e| format!("pfs: {e}"))?;
    }
    let group = file
        .group
        .as_ref()
        .ok_or("group: a group controller needs a [group] table with the group init key")?;
    let group_init = group.key.load("group", 0, base)?;
    let cport = control_port(file, port)?;
    let mut controller =
        GroupController::new(config, group_init.info.spi.get(), Box::new(OsRandom))
            .map_err(|e| e.to_string())?;
    let t0 = now();
    let mut distinct = config::DistinctKeys::default();
    distinct.check("group", &group_init)?;
    for (i, m) in file.members.iter().enumerate() {
        let field = format!("members[{i}] ({})", m.name);
        let key = m.key.load(&field, 0, base)?;
        distinct.check(&field, &key)?;
        let index = controller
            .add_member(&key, Some(SocketAddr::new(m.address, cport)), false, t0)
            .map_err(|e| format!("{field}: {e}"))?;
        if m.removed {
            controller.remove_member(t0, index);
        }
    }
    let local = file.local.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let socket = UdpSocket::bind(SocketAddr::new(local, cport))
        .map_err(|e| format!("control_port: binding UDP {local}:{cport}: {e}"))?;
    let published = Arc::new(Mutex::new(Published::default()));
    let socket_path = file
        .status_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/pktcrypt/{name}.sock")));
    if file.keys_socket.is_some() {
        return Err("keys_socket: a group controller holds no data keys to export".into());
    }
    let (requests, request_rx) = crossbeam_channel::bounded::<endpoints::Request>(16);
    endpoints::serve(
        &socket_path,
        None,
        requests,
        file.metrics,
        Arc::clone(&published),
    )?;
    tracing::info!(
        controller = name,
        local = %local,
        control_port = cport,
        members = file.members.len(),
        "group controller up"
    );
    let status_every = status_refresh(file.status_interval_ms);
    let mut next_status = now();
    let mut drops = pktcrypt_core::DropCounters::default();
    let (mut rollouts, mut events) = (0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    while !term.load(Ordering::Relaxed) {
        let t = now();
        let mut wake = next_status;
        if let Some(p) = controller.poll_timeout() {
            wake = wake.min(p);
        }
        let wait = wake
            .saturating_sub(t)
            .clamp(Duration::from_millis(1), Duration::from_millis(200));
        let _ = socket.set_read_timeout(Some(wait));
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && let Incoming::Dropped(r) =
                controller.handle_datagram(now(), Some(from), &mut buf[..n])
        {
            drops.add(r);
        }
        let t = now();
        if controller.poll_timeout().is_some_and(|p| p <= t) {
            controller.handle_timeout(t);
        }
        while let Some(tr) = controller.poll_transmit() {
            if let Some(d) = tr.destination {
                let _ = socket.send_to(&tr.contents, d);
            }
        }
        while let Some(e) = controller.poll_event() {
            events += 1;
            if matches!(e, GroupEvent::RolloutStarted { .. }) {
                rollouts += 1;
            }
            if let GroupEvent::Duplicate { member, addrs } = e {
                tracing::error!(
                    controller = name,
                    member = file.members.get(usize::from(member)).map(|m| m.name.as_str()),
                    index = member,
                    first = %addrs.0,
                    second = %addrs.1,
                    "two gateways run as this member (its index and control key in two \
                     configurations): taken out of the group until re-admitted"
                );
            }
            tracing::info!(controller = name, event = ?e);
        }
        let asks: Vec<endpoints::Request> = request_rx.try_iter().collect();
        let tick = next_status <= t;
        if tick || !asks.is_empty() {
            let (status, metrics) =
                render_controller(name, file, &controller, &drops, rollouts, events);
            if tick {
                next_status = t + status_every;
                if file.status_interval_ms != Some(0) {
                    println!("{status}");
                }
            }
            published
                .lock()
                .map_err(|_| "status lock poisoned")?
                .metrics = metrics;
            // A controller has no keys to export: only status requests reach it.
            for (_, reply) in asks {
                let _ = reply.send(zeroize::Zeroizing::new(status.clone()));
            }
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!(controller = name, "stopped");
    Ok(())
}

/// (JSON status, Prometheus text) of a group controller: per member, whether it is active and
/// the newest generation sent to it with the highest phase it acknowledged.
fn render_controller(
    name: &str,
    file: &GatewayFile,
    controller: &GroupController,
    drops: &pktcrypt_core::DropCounters,
    rollouts: u64,
    events: u64,
) -> (String, String) {
    let generation = controller.generation();
    let active = controller.active_members();
    let mut json = format!(
        "{{\"name\":\"{name}\",\"role\":\"group-controller\",\"generation\":{generation},\"idle\":{},\"rollouts\":{rollouts},\"events\":{events},\"members\":[",
        controller.idle()
    );
    let mut prom = format!(
        "pktcrypt_group_generation {generation}\npktcrypt_group_rollouts_total {rollouts}\npktcrypt_group_active_members {}\n",
        active.len()
    );
    for (i, m) in file.members.iter().enumerate() {
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        let newest = controller.table().iter().rev().find(|e| e.member == index);
        if i > 0 {
            json.push(',');
        }
        let _ = write!(
            json,
            "{{\"index\":{i},\"name\":\"{}\",\"address\":\"{}\",\"active\":{},\"generation\":{},\"acked\":\"{}\"}}",
            m.name,
            m.address,
            active.contains(&index),
            newest.map_or(0, |e| e.generation),
            newest
                .and_then(|e| e.acked)
                .map_or("none".to_string(), |p| format!("{p:?}")),
        );
    }
    json.push_str("],\"drops\":");
    write_drops(&mut json, &mut prom, drops.iter());
    json.push('}');
    (json, prom)
}

/// The non-zero drop counts as a JSON object and as Prometheus lines.
fn write_drops(
    json: &mut String,
    prom: &mut String,
    counts: impl Iterator<Item = (DropReason, u64)>,
) {
    json.push('{');
    let mut first = true;
    for (reason, n) in counts.filter(|(_, n)| *n != 0) {
        if !first {
            json.push(',');
        }
        first = false;
        let _ = write!(json, "\"{}\":{n}", reason.label());
        let _ = writeln!(
            prom,
            "pktcrypt_drops_total{{reason=\"{}\"}} {n}",
            reason.label()
        );
    }
    json.push('}');
}

/// How long a peer's next hop may stay unresolved before it is logged.
const UNRESOLVED_WARNING: Duration = Duration::from_secs(2);

/// The control loop's tick: rekey triggers checked, keepalives sent to unresolved next hops.
const TICK: Duration = Duration::from_millis(250);

/// How often the neighbour tables and the peers' routes are read in full, the backstop behind
/// the kernel's notifications (which keep them current in between; a notification lost to a
/// full socket buffer is noticed and answered with a full reading at once).
const NEXT_HOP_RESYNC: Duration = Duration::from_secs(5);

/// The UDP port of the group controller ↔ member channel.
fn control_port(file: &GatewayFile, port: u16) -> Result<u16, String> {
    let cport = file.control_port.unwrap_or(port.wrapping_add(1));
    if cport == port || cport == 0 {
        return Err(format!(
            "control_port: {cport} must be non-zero and differ from the ESP port {port}"
        ));
    }
    Ok(cport)
}

/// Reads `socket` until `stop`, passing each datagram to the control loop.
fn spawn_reader(
    socket: &UdpSocket,
    to_control: Sender<ToControl>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let socket = socket
        .try_clone()
        .map_err(|e| format!("control socket: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| format!("control socket: {e}"))?;
    std::thread::Builder::new()
        .name("pktcrypt-control-rx".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let bytes = buf[..n].to_vec();
                    if to_control
                        .send(ToControl::Datagram {
                            from,
                            bytes: zeroize::Zeroizing::new(bytes),
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            }
        })
        .map_err(|e| format!("starting the control reader: {e}"))?;
    Ok(())
}

/// A group member from the configuration: the member, the controller's control address and
/// the other members (keyed by their sender peers in the group engine).
fn group_member(
    file: &GatewayFile,
    base: &Path,
    port: u16,
    backend: Backend,
    t0: Time,
) -> Result<(GroupMember, SocketAddr, HashMap<PeerId, PeerInfo>), String> {
    let index = file
        .index
        .ok_or("index: a group member needs its index in [[members]]")?;
    let count = u16::try_from(file.members.len()).map_err(|_| "members: too many".to_string())?;
    if index >= count {
        return Err(format!(
            "index: {index} is not below the number of [[members]] ({count})"
        ));
    }
    let controller = file
        .controller
        .ok_or("controller: a group member needs the controller's address")?;
    let group = file
        .group
        .as_ref()
        .ok_or("group: a group member needs a [group] table with the group init key")?;
    let group_init = group.key.load("group", 0, base)?;
    let me = &file.members[usize::from(index)];
    let field = format!("members[{index}] ({})", me.name);
    let control = me.key.load(&field, 0, base)?;
    let mut config = config::group_config(
        &file.suite,
        None,
        file.retry_ms,
        file.max_retries,
        None,
        pktcrypt_core::Role::Client,
    )?;
    config.engine = config::engine(pktcrypt_core::Role::Client, file.replay_window)?;
    config.engine.backend = backend;
    let member = GroupMember::new(
        config,
        index,
        &control,
        &group_init,
        count,
        Box::new(OsRandom),
        t0,
    )
    .map_err(|e| format!("{field}: {e}"))?;
    let mut peers = HashMap::new();
    for (j, m) in file.members.iter().enumerate() {
        if j == usize::from(index) {
            continue;
        }
        let sender = u16::try_from(j)
            .ok()
            .and_then(|j| member.sender(j))
            .ok_or_else(|| format!("members[{j}]: no sender slot"))?;
        peers.insert(sender, peer_info(&format!("members[{j}] ({})", m.name), m)?);
    }
    let controller = SocketAddr::new(controller, control_port(file, port)?);
    Ok((member, controller, peers))
}

/// The AEAD backend named in the configuration.
fn backend(name: Option<&str>) -> Result<Backend, String> {
    let Some(name) = name else {
        return Ok(Backend::default());
    };
    let backend = Backend::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = Backend::all().iter().map(|b| b.name()).collect();
        format!(
            "backend: {name:?} is not a backend of this build (default, {})",
            known.join(", ")
        )
    })?;
    if backend.name().starts_with("null") {
        tracing::warn!(
            backend = name,
            "THIS BACKEND DOES NOT ENCRYPT; it exists for benchmarks only"
        );
    }
    Ok(backend)
}

fn peer_info(field: &str, p: &GatewayPeer) -> Result<PeerInfo, String> {
    if p.prefixes.is_empty() {
        return Err(format!("{field}.prefixes: at least one prefix"));
    }
    Ok(PeerInfo {
        name: p.name.clone(),
        address: p.address,
        prefixes: p
            .prefixes
            .iter()
            .map(|s| parse_prefix(&format!("{field}.prefixes"), s))
            .collect::<Result<_, _>>()?,
    })
}

/// The inner interface's neighbours and each peer's next-hop MAC, from `hops`.
fn apply_next_hops(paths: &mut Paths, peers: &HashMap<PeerId, PeerInfo>, hops: &net::NextHops) {
    paths.inner_neighbours = hops.inner_neighbours();
    for (id, p) in peers {
        if let Some(path) = paths.peers.get_mut(&id.0) {
            path.mac = hops.peer_mac(p.address);
        }
    }
}

/// Sends a NAT-keepalive (RFC 3948: one byte 0xFF to its ESP port, which receivers discard)
/// through the kernel to each peer whose next hop is not resolved, so the kernel resolves it
/// (ARP / ND) for the workers; called every [`TICK`]. A next hop still unresolved after
/// [`UNRESOLVED_WARNING`] is logged (and its resolution later).
fn keepalive_unresolved(
    paths: &Paths,
    peers: &HashMap<PeerId, PeerInfo>,
    socket: &UdpSocket,
    port: u16,
    unresolved: &mut HashMap<u32, (Time, bool)>,
) {
    let t = now();
    for (id, p) in peers {
        if paths.peers.get(&id.0).and_then(|path| path.mac).is_none() {
            let _ = socket.send_to(&[0xff], SocketAddr::new(p.address, port));
            let (since, warned) = unresolved.entry(id.0).or_insert((t, false));
            if !*warned && t.saturating_sub(*since) >= UNRESOLVED_WARNING {
                *warned = true;
                tracing::warn!(
                    peer = p.name,
                    address = %p.address,
                    "next hop not in the neighbour table: packets to this peer are dropped \
                     (no_neighbour) until ARP/ND resolves it"
                );
            }
        } else if let Some((_, warned)) = unresolved.remove(&id.0)
            && warned
        {
            tracing::info!(peer = p.name, address = %p.address, "next hop resolved");
        }
    }
}

fn sum(stats: &[WorkerStats], f: impl Fn(&WorkerStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
}

/// (JSON status, Prometheus text).
#[allow(clippy::too_many_arguments)]
fn render(
    name: &str,
    machine: &Machine,
    peers: &HashMap<PeerId, PeerInfo>,
    shared: &Shared,
    control_drops: &pktcrypt_core::DropCounters,
    rekeys: u64,
    events: u64,
    inner: &XdpSteering,
    outer: &XdpSteering,
    keys: [(&str, u64); 3],
) -> (String, String) {
    let engine = machine.engine();
    let t = now();
    let spi_packets = outer.spi_packets().unwrap_or_default();
    let mut json = format!(
        "{{\"name\":\"{name}\",\"backend\":\"{}\",\"key_changes\":{rekeys},\"events\":{events},\"peers\":[",
        engine.config().backend.name()
    );
    let mut prom = String::new();
    let mut ids: Vec<&PeerId> = peers.keys().collect();
    ids.sort_by_key(|p| p.0);
    for (i, id) in ids.iter().enumerate() {
        let info = &peers[id];
        if i > 0 {
            json.push(',');
        }
        let _ = write!(
            json,
            "{{\"peer\":\"{}\",\"address\":\"{}\",\"sas\":[",
            info.name, info.address
        );
        if let Some(st) = engine.peer_status(**id) {
            for (k, sa) in st.sas.iter().enumerate() {
                if k > 0 {
                    json.push(',');
                }
                let c = sa.counters;
                let _ = write!(
                    json,
                    "{{\"slot\":\"{:?}\",\"generation\":{},\"spi\":\"{}\",\"suite\":\"{}\",\"transmitting\":{},\"exchanged\":{},\"age_s\":{:.1},\"sealed\":{},\"opened\":{},\"bytes_sealed\":{},\"bytes_opened\":{},\"auth_failures\":{},\"replays\":{},\"xdp_packets\":{}}}",
                    sa.slot,
                    sa.info.number,
                    sa.info.spi,
                    sa.info.suite,
                    sa.transmitting,
                    sa.exchanged,
                    t.saturating_sub(sa.installed_at).as_secs_f64(),
                    c.packets_sealed,
                    c.packets_opened,
                    c.bytes_sealed,
                    c.bytes_opened,
                    c.auth_failures,
                    c.replays,
                    spi_packets.get(&sa.info.spi.get()).copied().unwrap_or(0)
                );
                let labels = format!("peer=\"{}\",slot=\"{:?}\"", info.name, sa.slot);
                let _ = writeln!(
                    prom,
                    "pktcrypt_sa_generation{{{labels}}} {}",
                    sa.info.number
                );
                let _ = writeln!(
                    prom,
                    "pktcrypt_sa_exchanged{{{labels}}} {}",
                    u8::from(sa.exchanged)
                );
                let _ = writeln!(
                    prom,
                    "pktcrypt_sa_packets_sealed_total{{{labels}}} {}",
                    c.packets_sealed
                );
                let _ = writeln!(
                    prom,
                    "pktcrypt_sa_packets_opened_total{{{labels}}} {}",
                    c.packets_opened
                );
            }
        }
        json.push_str("]}");
    }
    json.push(']');
    if let Machine::Member(m, controller) = machine {
        let _ = write!(
            json,
            ",\"group\":{{\"index\":{},\"controller\":\"{controller}\",\"state\":\"{:?}\",\"generation\":{},\"tx_generation\":{},\"held\":{:?}}}",
            m.index(),
            m.state(),
            m.generation(),
            m.tx_generation(),
            m.held()
        );
        let _ = writeln!(
            prom,
            "pktcrypt_group_generation {}\npktcrypt_group_tx_generation {}",
            m.generation(),
            m.tx_generation()
        );
    }
    json.push_str(",\"workers\":{");
    let s = &shared.stats;
    let fields: [(&str, u64); 20] = [
        ("rx_inner", sum(s, |w| &w.rx_inner)),
        ("rx_outer", sum(s, |w| &w.rx_outer)),
        ("tx_outer", sum(s, |w| &w.tx_outer)),
        ("tx_inner", sum(s, |w| &w.tx_inner)),
        ("bytes_sealed", sum(s, |w| &w.bytes_sealed)),
        ("bytes_opened", sum(s, |w| &w.bytes_opened)),
        ("to_kernel", sum(s, |w| &w.to_kernel)),
        ("hairpinned", sum(s, |w| &w.hairpinned)),
        ("control", sum(s, |w| &w.control)),
        ("icmp_too_big", sum(s, |w| &w.icmp_too_big)),
        ("icmp_rate_limited", sum(s, |w| &w.icmp_rate_limited)),
        ("fragmented", sum(s, |w| &w.fragmented)),
        ("too_big", sum(s, |w| &w.too_big)),
        ("no_route", sum(s, |w| &w.no_route)),
        ("no_neighbour", sum(s, |w| &w.no_neighbour)),
        ("policy", sum(s, |w| &w.policy)),
        ("malformed", sum(s, |w| &w.malformed)),
        ("tx_full", sum(s, |w| &w.tx_full)),
        ("seal_failed", sum(s, |w| &w.seal_failed)),
        ("busy_ns", sum(s, |w| &w.busy_ns)),
    ];
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, "\"{k}\":{v}");
        let _ = writeln!(prom, "pktcrypt_worker_{k}_total {v}");
    }
    json.push_str("},\"drops\":");
    let counts = DropReason::ALL.iter().enumerate().map(|(i, reason)| {
        let workers: u64 = s.iter().map(|w| w.drops[i].load(Ordering::Relaxed)).sum();
        (*reason, workers + control_drops.get(*reason))
    });
    write_drops(&mut json, &mut prom, counts);
    json.push_str(",\"xdp\":{");
    for (i, (side, x)) in [("inner", inner), ("outer", outer)].iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let c = x.counters().unwrap_or_default();
        let _ = write!(
            json,
            "\"{side}\":{{\"mode\":\"{:?}\",\"steered\":{},\"passed\":{},\"malformed\":{},\"no_socket\":{},\"unknown_spi\":{},\"keepalive\":{},\"not_esp\":{},\"truncated\":{},\"spis\":{}}}",
            x.mode(),
            c.steered,
            c.passed,
            c.malformed,
            c.no_socket,
            c.unknown_spi,
            c.keepalive,
            c.not_esp,
            c.truncated,
            x.spis().len()
        );
        for (reason, n) in [
            ("unknown_spi", c.unknown_spi),
            ("keepalive", c.keepalive),
            ("not_esp", c.not_esp),
            ("truncated", c.truncated),
            ("no_socket", c.no_socket),
        ] {
            let _ = writeln!(
                prom,
                "pktcrypt_xdp_dropped_total{{side=\"{side}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            prom,
            "pktcrypt_xdp_steered_total{{side=\"{side}\"}} {}",
            c.steered
        );
        let _ = writeln!(
            prom,
            "pktcrypt_xdp_passed_total{{side=\"{side}\"}} {}",
            c.passed
        );
    }
    json.push('}');
    for (k, v) in keys {
        let _ = write!(json, ",\"{k}\":{v}");
        let _ = writeln!(prom, "pktcrypt_{k}_total {v}");
    }
    json.push('}');
    (json, prom)
}

/// Current SAs in Wireshark's `esp_sa` UAT format (one line per SA and direction).
fn export(
    machine: &Machine,
    peers: &HashMap<PeerId, PeerInfo>,
    local: IpAddr,
) -> zeroize::Zeroizing<String> {
    let engine = machine.engine();
    // Large enough for every line, so the key text is never reallocated (a reallocation
    // would leave an unwiped copy behind).
    let mut out = zeroize::Zeroizing::new(String::with_capacity(256 * (peers.len() + 1) * 6));
    let mut line = |sa: &pktcrypt_core::SaExport, src: IpAddr, dst: IpAddr| {
        let proto = if local.is_ipv4() { "IPv4" } else { "IPv6" };
        let _ = write!(
            out,
            "\"{proto}\",\"{src}\",\"{dst}\",\"{:#010x}\",\"{}\",\"0x",
            sa.spi.get(),
            sa.suite.wireshark_name()
        );
        for b in sa.keymat.iter() {
            let _ = write!(out, "{b:02x}");
        }
        out.push_str("\",\"NULL\",\"\"\n");
    };
    // Group mode: our own sender SAs (one key for every destination member).
    let me = match machine {
        Machine::Member(m, _) => m.sender(m.index()),
        _ => None,
    };
    for (id, info) in peers {
        if let Some(me) = me {
            // A group sender's key serves both directions in the engine: another member's
            // SAs are only ever inbound, ours only outbound (to every member).
            let mut seen = Vec::new();
            for sa in engine.export_sas(*id) {
                if !seen.contains(&sa.spi) {
                    seen.push(sa.spi);
                    line(&sa, info.address, local);
                }
            }
            seen.clear();
            for sa in engine.export_sas(me) {
                if !seen.contains(&sa.spi) {
                    seen.push(sa.spi);
                    line(&sa, local, info.address);
                }
            }
            continue;
        }
        for sa in engine.export_sas(*id) {
            if sa.outbound {
                line(&sa, local, info.address);
            } else {
                line(&sa, info.address, local);
            }
        }
    }
    out
}

/// `pktcrypt status|export-keys --config FILE` (or `--socket PATH`): asks a running daemon.
pub(crate) fn query(command: &str, args: &[String]) -> Result<String, String> {
    let mut socket = None;
    // export-keys: `--socket` names the keys socket itself; `--config` finds it.
    let mut keys: Option<PathBuf> = None;
    let mut keys_given = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--socket" => {
                socket = Some(PathBuf::from(value));
                keys_given = true;
            }
            "--config" => {
                let file: GatewayFile = config::load(Path::new(value))?;
                let name = file.name.unwrap_or_else(|| "pktcrypt".into());
                socket = Some(
                    file.status_socket
                        .unwrap_or_else(|| PathBuf::from(format!("/run/pktcrypt/{name}.sock"))),
                );
                keys = file.keys_socket;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    let path = socket.ok_or("--config FILE or --socket PATH is required")?;
    let path = if command == "export-keys" && !keys_given {
        keys.unwrap_or_else(|| endpoints::default_keys_socket(&path))
    } else {
        path
    };
    let mut stream = UnixStream::connect(&path)
        .map_err(|e| format!("{}: {e} (is `pktcrypt up` running?)", path.display()))?;
    writeln!(stream, "{command}").map_err(|e| e.to_string())?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stream, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
