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

use crate::config::{
    self, ControllerGateway, Daemon, DataPathRole, GatewayFile, GatewayPeer, GatewayRole,
    MemberGateway,
};
use crate::drive::{Io, drive};
use crate::driver::{OsRandom, ServerRandom, now};
use crate::endpoints::{self, Published};
use crate::wireshark::Format;
use crate::{events, metrics, status};
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use pktcrypt_core::aead::Backend;
use pktcrypt_core::control::{
    Endpoint, Event, GroupController, GroupEvent, GroupMember, Incoming, KeyClient, KeyServer,
    Machine, ServerConfig, Transmit,
};
use pktcrypt_core::wire::OuterHeader;
use pktcrypt_core::{DropReason, PeerId, Suite, Time};
use pktcrypt_io::gateway::tap::Tap;
use pktcrypt_io::gateway::{
    Paths, PeerPath, Prefix, Route, Shared, ToControl, Worker, WorkerStats,
};
use pktcrypt_io::{AttachMode, SteeringConfig, XdpSteering, net};
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::num::NonZeroU32;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    // A group controller has no data path, so no program to remove.
    let Some(data_path) = file.role.data_path() else {
        return Ok(());
    };
    for (field, iface) in [("inner", &data_path.inner), ("outer", &data_path.outer)] {
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

pub(crate) fn parse_prefix(field: &str, s: &str) -> Result<(IpAddr, u8), String> {
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

/// The peers of a gateway by engine id.
pub(crate) type Peers = HashMap<PeerId, PeerInfo>;

/// The prefixes the inner XDP program steers into the tunnel.
type Protected = Vec<(IpAddr, u8)>;

/// A peer of a gateway: its name, outer address and prefixes.
pub(crate) struct PeerInfo {
    name: String,
    address: IpAddr,
    prefixes: Vec<(IpAddr, u8)>,
    /// A key server's client: the digest of its init key ([`config::key_digest`]), to tell a
    /// changed key on reload.
    key: Option<[u8; 32]>,
    /// A key server's client: its own suite of future generations (`[[clients]]` `suite`).
    suite: Option<Suite>,
}

/// The gateway's [`Io`]: control messages and samples from the workers (and, for a group
/// member, the controller channel's datagrams), keys published to the workers and SPIs to the
/// outer XDP program, next hops kept current, status and key export served.
/// What a group member's gateway watches to notice that it regained connectivity.
struct Connectivity {
    /// The outer interface.
    outer: String,
    /// Its link was up at the last tick.
    link: bool,
    /// The controller's control address.
    controller: SocketAddr,
    /// The kernel had a route to it at the last tick.
    route: bool,
}

struct GatewayIo {
    name: String,
    from_workers: Receiver<ToControl>,
    /// Control messages leave through this (bound to the ESP port) ...
    socket: UdpSocket,
    /// ... or, for a group member, through the controller channel's socket.
    control_socket: Option<UdpSocket>,
    /// A group member's controller (control address).
    member_controller: Option<SocketAddr>,
    /// Regaining connectivity (seed 001), a group member's: whether at the last tick its
    /// outer interface was up (`operstate`: not down, carrier present) and the kernel had a
    /// route to its controller. When either comes back, the member asks for the current group
    /// key at once instead of waiting for the controller's next retransmission.
    connectivity: Option<Connectivity>,
    peers: HashMap<PeerId, PeerInfo>,
    port: u16,
    local: IpAddr,
    shared: Arc<Shared>,
    inner_xdp: XdpSteering,
    outer_xdp: XdpSteering,
    hops: net::NextHops,
    paths: Paths,
    published: Arc<Mutex<Published>>,
    request_rx: Receiver<endpoints::Request>,
    status_every: Duration,
    print_status: bool,
    retire_grace: Option<Duration>,
    next_status: Time,
    next_tick: Time,
    next_resync: Time,
    hops_failing: bool,
    control_drops: pktcrypt_core::DropCounters,
    events_total: u64,
    rekeys: u64,
    unresolved: HashMap<u32, (Duration, bool)>,
    activity: SpiActivity,
    duplicate_clients: u64,
    spi_map_errors: u64,
    retired_on_evidence: u64,
    /// Where the configuration came from (read again on reload), its directory (relative key
    /// files), and the TOML it held when last applied.
    config_path: PathBuf,
    base: PathBuf,
    applied: toml::Table,
    /// The prefixes the inner XDP program steers now.
    protected: Protected,
    /// Set by SIGHUP: reload.
    hup: Arc<AtomicBool>,
    /// Uptime, per-peer counters over rekeys, last packets received (status).
    tracker: status::Tracker,
}

impl GatewayIo {
    /// Applies the configuration file as it is now (see [`crate::reload`]): peers and prefixes
    /// added, removed or changed; nothing else may differ. What changed.
    fn reload(&mut self, endpoint: &mut Endpoint) -> Result<Vec<String>, String> {
        let (file, table): (GatewayFile, _) = config::load_with_table(&self.config_path)?;
        crate::reload::check_restart(&self.applied, &table)?;
        let GatewayRole::DataPath(_, role) = &file.role else {
            return Err("role: changed, and that needs a restart of the daemon".into());
        };
        let local_prefixes = local_prefixes(role)?;
        let now = now();
        let mut changes: Vec<String> = Vec::new();
        let mut peers: Peers = HashMap::new();
        match (role, endpoint.machine_mut()) {
            (DataPathRole::Server(cfg), Machine::Server(server)) => {
                if cfg.clients.is_empty() {
                    return Err("clients: a server needs at least one [[clients]] entry".into());
                }
                // Everything is read and checked before anything changes.
                let settings = cfg.settings.config()?;
                let mut distinct = config::DistinctKeys::default();
                let mut wanted = Vec::new();
                for (i, c) in cfg.clients.iter().enumerate() {
                    let field = format!("clients[{i}] ({})", c.name);
                    let key = c.key.load(&field, 0, &self.base)?;
                    distinct.check(&field, &key)?;
                    let mut info = peer_info(&field, c)?;
                    if info.address.is_ipv4() != self.local.is_ipv4() {
                        return Err(format!(
                            "{field}.address: {} and local {} differ in family",
                            info.address, self.local
                        ));
                    }
                    info.key = Some(config::key_digest(&key));
                    wanted.push((field, key, info));
                }
                let mut keep: HashMap<PeerId, PeerInfo> = HashMap::new();
                let mut add = Vec::new();
                for (field, key, info) in wanted {
                    let same = self
                        .peers
                        .iter()
                        .find(|(id, p)| p.key == info.key && !keep.contains_key(id))
                        .map(|(id, _)| *id);
                    match same {
                        Some(id) => {
                            keep.insert(id, info);
                        }
                        None => add.push((field, key, info)),
                    }
                }
                let removed: Vec<PeerId> = self
                    .peers
                    .keys()
                    .filter(|id| !keep.contains_key(id))
                    .copied()
                    .collect();
                for id in removed {
                    let name = self.peers.get(&id).map_or("?", |p| p.name.as_str());
                    server
                        .remove_client(id)
                        .map_err(|e| format!("removing {name}: {e}"))?;
                    changes.push(format!("removed {name}"));
                }
                for (id, info) in keep {
                    let old = self.peers.get(&id);
                    if old.is_some_and(|o| o.address != info.address) {
                        server
                            .set_address(id, SocketAddr::new(info.address, self.port))
                            .map_err(|e| format!("{}: {e}", info.name))?;
                    }
                    if server.client_suite(id) != info.suite {
                        server
                            .set_client_suite(id, info.suite)
                            .map_err(|e| format!("{}: {e}", info.name))?;
                    }
                    if old.is_some_and(|o| {
                        o.address != info.address
                            || o.prefixes != info.prefixes
                            || o.name != info.name
                            || o.suite != info.suite
                    }) {
                        changes.push(format!("updated {}", info.name));
                    }
                    peers.insert(id, info);
                }
                for (field, key, info) in add {
                    let id = server
                        .add_client(&key, Some(SocketAddr::new(info.address, self.port)), now)
                        .map_err(|e| format!("{field}: {e}"))?;
                    server
                        .set_client_suite(id, info.suite)
                        .map_err(|e| format!("{field}: {e}"))?;
                    changes.push(format!("added {}", info.name));
                    peers.insert(id, info);
                }
                changes.extend(apply_suites(server, &settings));
            }
            (DataPathRole::Client(cfg), Machine::Client(client)) => {
                cfg.server.refuse_suite("server")?;
                let mut info = peer_info("server", &cfg.server)?;
                let id = client.server();
                info.key = self.peers.get(&id).and_then(|p| p.key);
                if self.peers.get(&id).is_some_and(|o| {
                    o.address != info.address || o.prefixes != info.prefixes || o.name != info.name
                }) {
                    changes.push(format!("updated {}", info.name));
                }
                peers.insert(id, info);
            }
            (DataPathRole::GroupMember(cfg), Machine::Member(member)) => {
                refuse_member_suites(cfg)?;
                peers = member_peers(cfg, member)?;
                for (id, info) in &peers {
                    if self
                        .peers
                        .get(id)
                        .is_some_and(|o| o.address != info.address || o.prefixes != info.prefixes)
                    {
                        changes.push(format!("updated {}", info.name));
                    }
                }
            }
            _ => return Err("role: changed, and that needs a restart of the daemon".into()),
        }
        if self.paths.local != local_prefixes {
            changes.push("updated prefixes".into());
        }
        // The workers' paths, the next hops followed, the prefixes steered into the tunnel.
        self.paths.local = local_prefixes;
        let protected = peer_paths(
            &mut self.paths,
            &peers,
            seal_as(endpoint),
            self.local,
            self.port,
        )?;
        self.peers = peers;
        self.hops.set_peers(
            self.peers
                .values()
                .map(|p| p.address)
                .chain(self.member_controller.map(|c| c.ip())),
        );
        apply_next_hops(&mut self.paths, &self.peers, &self.hops);
        self.shared.paths.store(Arc::new(self.paths.clone()));
        for &(net, len) in protected.iter().filter(|p| !self.protected.contains(p)) {
            self.inner_xdp
                .add_prefix(net, len)
                .map_err(|e| format!("inner: {e}"))?;
        }
        for &(net, len) in self.protected.iter().filter(|p| !protected.contains(p)) {
            self.inner_xdp
                .remove_prefix(net, len)
                .map_err(|e| format!("inner: {e}"))?;
        }
        self.protected = protected;
        self.applied = table;
        Ok(changes)
    }

    /// [`Self::reload`], logged, as the answer to `pktcrypt reload`.
    fn reload_logged(&mut self, endpoint: &mut Endpoint) -> String {
        crate::notify::notify("RELOADING=1");
        let result = self.reload(endpoint);
        logged_reload(&self.name, result)
    }

    /// `pktcrypt rekey [PEER]`: asks the endpoint for rotations and answers what it asked (or
    /// `error: ...`). The rotations themselves are logged as they are triggered.
    fn rekey(&mut self, endpoint: &mut Endpoint, peer: Option<&str>) -> String {
        let target = match peer {
            None => None,
            Some(name) => match self.peers.iter().find(|(_, p)| p.name == name) {
                Some((id, _)) => Some(*id),
                None => return format!("error: no peer named {name:?}"),
            },
        };
        let answer = match endpoint.machine() {
            Machine::Member(_) => {
                return "error: a group member does not rekey its group: ask its \
                        controller (`pktcrypt rekey` with the controller's --config)"
                    .to_owned();
            }
            Machine::Server(_) => match endpoint.rekey(now(), target) {
                0 if peer.is_some() => {
                    return format!(
                        "error: {} has no key yet (its init handshake has not completed)",
                        peer.unwrap_or_default()
                    );
                }
                n => format!("rekey: {n} client(s) rotate at their next packet"),
            },
            Machine::Client(_) | Machine::Controller(_) => match endpoint.rekey(now(), target) {
                0 => {
                    return "error: no key yet (the init handshake is still running)".to_owned();
                }
                _ => "rekey: asked the key server for a new generation".to_owned(),
            },
        };
        tracing::info!(daemon = %self.name, peer, "{answer}");
        answer
    }
}

impl Io for GatewayIo {
    fn receive(&mut self, endpoint: &mut Endpoint, wait: Duration) -> Result<bool, String> {
        let first = match self
            .from_workers
            .recv_timeout(wait.min(Duration::from_millis(200)))
        {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
        };
        let more: Vec<ToControl> = self.from_workers.try_iter().collect();
        for msg in first.into_iter().chain(more) {
            let t = now();
            let dropped = match msg {
                ToControl::Control {
                    info,
                    from,
                    message,
                } => match endpoint.handle_control(t, Some(from), info, &message) {
                    Incoming::Dropped(r) => Some(r),
                    _ => None,
                },
                ToControl::Observed { info, from } => {
                    let known = match endpoint.machine() {
                        Machine::Server(s) => s.address(info.peer),
                        _ => None,
                    };
                    endpoint.handle_sampled(t, sample_source(known, from, self.port), &info);
                    None
                }
                // The controller channel (group mode only).
                ToControl::Datagram { mut bytes, from } => match endpoint.machine() {
                    Machine::Member(_) => match endpoint.handle_datagram(t, Some(from), &mut bytes)
                    {
                        Incoming::Dropped(r) => Some(r),
                        _ => None,
                    },
                    _ => Some(DropReason::ControlUnexpected),
                },
            };
            if let Some(r) = dropped {
                self.control_drops.add(r);
            }
        }
        Ok(true)
    }

    fn next_wake(&self) -> Time {
        self.next_tick.min(self.next_status).min(self.next_resync)
    }

    fn tick(&mut self, endpoint: &mut Endpoint, t: Time) -> Result<(), String> {
        // Next hops: the kernel's notifications as they came (never blocks), everything read
        // again every NEXT_HOP_RESYNC; the workers get new paths only when they changed.
        let updated = self.hops.update();
        let resynced = (self.next_resync <= t).then(|| {
            self.next_resync = t + NEXT_HOP_RESYNC;
            self.hops.resync()
        });
        let results = [Some(updated), resynced];
        // A failed reading may still have applied part of what it read: publish then too.
        if results.iter().flatten().any(|r| !matches!(r, Ok(false))) {
            apply_next_hops(&mut self.paths, &self.peers, &self.hops);
            self.shared.paths.store(Arc::new(self.paths.clone()));
        }
        if let Some(c) = &mut self.connectivity {
            // A link whose state cannot be read counts as up (the route still tells).
            let link = net::link_up(&c.outer).unwrap_or(true);
            let route = self.hops.reachable(c.controller.ip());
            let controller = c.controller;
            if (link && !c.link) || (route && !c.route) {
                let why = if link && !c.link {
                    "the outer link is up again"
                } else {
                    "the route to the controller is back"
                };
                tracing::info!(
                    gateway = self.name,
                    %controller,
                    "{why}: asking the controller for the current group key"
                );
                if let Machine::Member(m) = endpoint.machine_mut() {
                    m.reconnect(t);
                }
            }
            if !link && c.link {
                tracing::warn!(
                    gateway = self.name,
                    outer = c.outer,
                    "the outer link is down"
                );
            }
            if !route && c.route {
                tracing::warn!(gateway = self.name, %controller, "no route to the controller");
            }
            (c.link, c.route) = (link, route);
        }
        match results.into_iter().flatten().find_map(Result::err) {
            Some(e) if !self.hops_failing => {
                self.hops_failing = true;
                tracing::warn!(
                    gateway = self.name,
                    error = %e,
                    "next hops may be out of date"
                );
            }
            Some(_) => {}
            None if self.hops_failing => {
                self.hops_failing = false;
                tracing::info!(gateway = self.name, "reading neighbours and routes again");
            }
            None => {}
        }
        if self.hup.swap(false, Ordering::Relaxed) {
            self.reload_logged(endpoint);
        }
        if self.next_tick <= t {
            self.next_tick = t + TICK;
            endpoint.check_triggers(t);
            keepalive_unresolved(
                &self.paths,
                &self.peers,
                &self.socket,
                self.port,
                &mut self.unresolved,
            );
            if let (Machine::Member(m), Some(grace)) = (endpoint.machine_mut(), self.retire_grace) {
                if let Ok(counts) = self.outer_xdp.spi_packets() {
                    self.activity.update(&counts, t);
                }
                let activity = &self.activity;
                let retired = m.retire_unused(t, grace, |spi| activity.last_seen(spi));
                if retired > 0 {
                    self.retired_on_evidence += retired as u64;
                    tracing::info!(
                        gateway = self.name,
                        retired,
                        "previous group generation retired on evidence (no packets under it)"
                    );
                }
            }
        }
        Ok(())
    }

    fn keys_changed(&mut self, endpoint: &mut Endpoint, peers: &[PeerId]) -> Result<(), String> {
        // Keys first (a distribution's keys must be in the workers, and their SPIs in the XDP
        // program, before the proof or the announcement goes out).
        self.rekeys += 1;
        let current = self.shared.keys.load_full();
        let next = endpoint
            .update_data_plane(&current, peers)
            .map_err(|e| e.to_string())?;
        self.shared.keys.store(Arc::new(next));
        if let Err(e) = self.outer_xdp.set_spis(endpoint.engine().held_spis()) {
            self.spi_map_errors += 1;
            tracing::error!(
                gateway = self.name,
                error = %e,
                "the XDP SPI map is out of step: packets under the SPIs missing are dropped in XDP"
            );
        }
        Ok(())
    }

    fn event(&mut self, endpoint: &Endpoint, event: &Event) {
        if let Event::DuplicateClient { .. } = event {
            self.duplicate_clients += 1;
            return;
        }
        self.events_total += 1;
        let server = match endpoint.machine() {
            Machine::Client(c) => self.peers.get(&c.server()).map(|p| p.name.as_str()),
            _ => None,
        };
        let peer = |id: PeerId| self.peers.get(&id).map(|p| p.name.clone());
        events::log(
            &events::Names {
                daemon: &self.name,
                peer: &peer,
                member: &|_| None,
                server,
            },
            event,
        );
    }

    fn send(&mut self, _: &Endpoint, tr: Transmit) {
        // A member's control peer is the controller, whatever its id.
        let to = self.member_controller.or_else(|| {
            tr.destination.or_else(|| {
                self.peers
                    .get(&tr.peer)
                    .map(|p| SocketAddr::new(p.address, self.port))
            })
        });
        if let Some(d) = to {
            let _ = self
                .control_socket
                .as_ref()
                .unwrap_or(&self.socket)
                .send_to(&tr.contents, d);
        }
    }

    fn report(&mut self, endpoint: &mut Endpoint, t: Time) -> Result<(), String> {
        // The status document: on the tick (printed, metrics published) and for every status
        // request (as of now); key text only on request, never kept (wiped when the endpoint
        // has written it). One rendering serves both.
        // Per-peer counters over rekeys: the final counters of the generations dropped, then
        // those held.
        self.tracker.take_retired(endpoint);
        let own = match endpoint.machine() {
            Machine::Member(m) => m.sender(m.index()),
            _ => None,
        };
        self.tracker
            .sample_due(endpoint.engine(), self.peers.keys().copied().chain(own), t);
        let asks: Vec<endpoints::Request> = self.request_rx.try_iter().collect();
        let tick = self.next_status <= t;
        let doc = (tick || asks.iter().any(|(a, _)| *a == endpoints::Ask::Status)).then(|| {
            let doc = render(self, endpoint);
            (
                serde_json::to_string(&doc).unwrap_or_default(),
                metrics::gateway(&doc),
            )
        });
        if let Some((status, metrics)) = &doc {
            if tick {
                self.next_status = t + self.status_every;
                if self.print_status {
                    println!("{status}");
                }
            }
            let mut p = self.published.lock().map_err(|_| "status lock poisoned")?;
            p.metrics.clone_from(metrics);
        }
        for (ask, reply) in asks {
            let text = match (ask, &doc) {
                (endpoints::Ask::Status, Some((status, _))) => {
                    zeroize::Zeroizing::new(status.clone())
                }
                (endpoints::Ask::Status, None) => continue,
                (endpoints::Ask::Keys(format), _) => {
                    export(endpoint, &self.peers, self.local, format)
                }
                (endpoints::Ask::Reload, _) => {
                    zeroize::Zeroizing::new(format!("{}\n", self.reload_logged(endpoint)))
                }
                (endpoints::Ask::Rekey(peer), _) => {
                    zeroize::Zeroizing::new(format!("{}\n", self.rekey(endpoint, peer.as_deref())))
                }
            };
            let _ = reply.send(text);
        }
        Ok(())
    }

    fn peer_name(&self, _: &Endpoint, peer: PeerId) -> Option<String> {
        self.peers.get(&peer).map(|p| p.name.clone())
    }

    fn finish(&mut self, _: &mut Endpoint) {}
}

/// Where a data packet a worker sampled says its peer is, for the control plane (a key
/// server sends its control messages to the address it learned last).
///
/// A peer's workers send its data from a UDP source port each (`source_ports`), and none of
/// those ports receives: its control messages, and everything sent to it, use its ESP port.
/// So a sample never moves the peer's control address within its IP address (`None`: the
/// address stays as its control messages, from its ESP port, last set it; behind a NAT, the
/// port the NAT gave that one); a sample from another IP address (the peer moved) moves it
/// there, to the ESP port, until the peer's next control message says which port a NAT
/// gave it. Samples are authenticated (a worker opened them), as are control messages.
fn sample_source(known: Option<SocketAddr>, from: SocketAddr, port: u16) -> Option<SocketAddr> {
    match known {
        Some(k) if k.ip() == from.ip() => None,
        _ => Some(SocketAddr::new(from.ip(), port)),
    }
}

/// The state machine of a data-path role, its peers, and (a group member) the controller's
/// control address.
pub(crate) fn state_machine(
    role: &DataPathRole,
    base: &Path,
    port: u16,
    backend: Backend,
) -> Result<(Endpoint, Option<SocketAddr>, Peers), String> {
    let t0 = now();
    let mut peers: HashMap<PeerId, PeerInfo> = HashMap::new();
    let (endpoint, member_controller) = match role {
        DataPathRole::Server(cfg) => {
            if cfg.clients.is_empty() {
                return Err("clients: a server needs at least one [[clients]] entry".into());
            }
            let mut sc = cfg.settings.config()?;
            sc.engine.backend = backend;
            let mut server =
                KeyServer::new(sc, Box::new(ServerRandom::new())).map_err(|e| e.to_string())?;
            let mut distinct = config::DistinctKeys::default();
            for (i, c) in cfg.clients.iter().enumerate() {
                let field = format!("clients[{i}] ({})", c.name);
                let key = c.key.load(&field, 0, base)?;
                distinct.check(&field, &key)?;
                let id = server
                    .add_client(&key, Some(SocketAddr::new(c.address, port)), t0)
                    .map_err(|e| format!("{field}: {e}"))?;
                server
                    .set_client_suite(id, c.suite)
                    .map_err(|e| format!("{field}: {e}"))?;
                let mut info = peer_info(&field, c)?;
                info.key = Some(config::key_digest(&key));
                peers.insert(id, info);
            }
            (Endpoint::from(server), None)
        }
        DataPathRole::Client(cfg) => {
            let s = &cfg.server;
            s.refuse_suite("server")?;
            let key = s.key.load("server", 0, base)?;
            let mut cc = cfg.settings.config()?;
            cc.engine.backend = backend;
            let client = KeyClient::new(cc, &key, Box::new(OsRandom), t0)
                .map_err(|e| format!("server: {e}"))?;
            peers.insert(client.server(), peer_info("server", s)?);
            (Endpoint::from(client), None)
        }
        DataPathRole::GroupMember(cfg) => {
            refuse_member_suites(cfg)?;
            let (member, controller, member_peers) = group_member(cfg, base, port, backend, t0)?;
            peers = member_peers;
            (Endpoint::from(member), Some(controller))
        }
    };

    Ok((endpoint, member_controller, peers))
}

/// Inner policy: what may come out of the tunnel here (a group member's networks are the
/// prefixes of its own `[[members]]` entry).
fn local_prefixes(role: &DataPathRole) -> Result<Vec<Prefix>, String> {
    let local_field = match role {
        DataPathRole::Server(cfg) => ("prefixes".to_string(), cfg.prefixes.clone()),
        DataPathRole::Client(cfg) => ("prefixes".to_string(), cfg.prefixes.clone()),
        DataPathRole::GroupMember(cfg) => {
            let index = usize::from(cfg.index);
            (
                format!("members[{index}].prefixes"),
                cfg.members
                    .get(index)
                    .map(|m| m.prefixes.clone())
                    .unwrap_or_default(),
            )
        }
    };
    if local_field.1.is_empty() {
        return Err(format!(
            "{}: the networks behind this gateway are required (decrypted packets must be \
             addressed to them)",
            local_field.0
        ));
    }
    local_field
        .1
        .iter()
        .map(|p| parse_prefix(&local_field.0, p).map(|(net, len)| Prefix { net, len }))
        .collect()
}

/// The workers' paths: the inner policy (what may come out of the tunnel here), routes into
/// the tunnel, each peer's outer header; with the XDP program's protected prefixes and the
/// local outer address.
fn paths(
    role: &DataPathRole,
    endpoint: &Endpoint,
    peers: &HashMap<PeerId, PeerInfo>,
    local: Option<IpAddr>,
    (inner, outer): (&str, &str),
    port: u16,
) -> Result<(Paths, Protected, IpAddr), String> {
    let local_prefixes = local_prefixes(role)?;

    // Paths.
    let family_v4 = peers.values().all(|p| p.address.is_ipv4());
    let local = match local {
        Some(a) => a,
        None => {
            let (v4, v6) = net::addresses(outer).map_err(|e| format!("outer: {e}"))?;
            if family_v4 { v4 } else { v6 }.ok_or_else(|| {
                format!(
                    "local: interface {} has no address of the peers' family",
                    outer
                )
            })?
        }
    };
    let mut paths = Paths {
        inner_mac: net::mac(inner).map_err(|e| format!("inner: {e}"))?,
        outer_mac: net::mac(outer).map_err(|e| format!("outer: {e}"))?,
        outer_mtu: net::mtu(outer).map_err(|e| format!("outer: {e}"))?,
        esp_port: port,
        ..Paths::default()
    };
    let (in4, in6) = net::addresses(inner).map_err(|e| format!("inner: {e}"))?;
    paths.inner_v4 = in4.and_then(|a| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    });
    paths.inner_v6 = in6.and_then(|a| match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    });
    paths.local = local_prefixes;
    paths.hub = matches!(role, DataPathRole::Server(cfg) if cfg.hub);
    let prefixes = peer_paths(&mut paths, peers, seal_as(endpoint), local, port)?;
    Ok((paths, prefixes, local))
}

/// Pairwise: packets are sealed for the peer behind the prefix (`None`). Group: always under
/// our own sender keys.
fn seal_as(endpoint: &Endpoint) -> Option<PeerId> {
    match endpoint.machine() {
        Machine::Member(m) => m.sender(m.index()),
        _ => None,
    }
}

/// The peers' part of `paths` (routes into the tunnel, the sources each peer may send, each
/// peer's outer header; next-hop MACs to be filled in), replacing what was there; the
/// prefixes the inner XDP program steers.
fn peer_paths(
    paths: &mut Paths,
    peers: &Peers,
    seal_as: Option<PeerId>,
    local: IpAddr,
    port: u16,
) -> Result<Protected, String> {
    paths.routes.clear();
    paths.sources.clear();
    paths.peers.clear();
    let mut prefixes = Vec::new();
    for (id, p) in peers {
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
    prefixes.sort_unstable();
    prefixes.dedup();
    Ok(prefixes)
}

/// One worker per queue, each with its queue pair registered in both XDP programs' XSKMAPs.
fn start_workers(
    workers: u32,
    frames: u32,
    (inner, outer): (&str, &str),
    shared: &Arc<Shared>,
    to_control: &Sender<ToControl>,
    (inner_xdp, outer_xdp): (&mut XdpSteering, &mut XdpSteering),
) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let mut handles = Vec::new();
    for q in 0..workers {
        // The UMEM is not Send: each worker creates its queue pair on its own thread and
        // reports the socket descriptors back for the XSKMAPs.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (inner_if, outer_if) = (inner.to_string(), outer.to_string());
        let (sh, tc) = (Arc::clone(shared), to_control.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("pktcrypt-worker-{q}"))
                .spawn(move || {
                    match pktcrypt_io::xsk::QueuePair::new(&inner_if, &outer_if, q, frames) {
                        Ok(qp) => {
                            if q == 0 {
                                match qp.outer.tx_budget() {
                                    Some(n) => tracing::debug!(frames = n, "TX budget per kick"),
                                    None => tracing::debug!(
                                        "no XDP_MAX_TX_SKB_BUDGET in this kernel: 32 frames per TX kick"
                                    ),
                                }
                            }
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
    Ok(handles)
}

/// `pktcrypt up --config FILE`.
pub(crate) fn run(path: &Path, term: &AtomicBool) -> Result<(), String> {
    // `file`: the keys of the process; the role with its peers and settings apart.
    let (GatewayFile { daemon: file, role }, applied) = config::load_with_table(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let name = file.name.clone().unwrap_or_else(|| "pktcrypt".into());
    let port = file.port.unwrap_or(pktcrypt_common::DEFAULT_ESP_UDP_PORT);
    let (data_path, role) = match role {
        GatewayRole::GroupController(controller) => {
            return run_controller(&file, &controller, (path, applied), base, &name, port, term);
        }
        GatewayRole::DataPath(data_path, role) => (data_path, role),
    };
    let inner = data_path.inner.clone();
    let outer = data_path.outer.clone();
    // One worker per RX queue: a queue without an AF_XDP socket would pass its packets to the
    // kernel instead of the tunnel.
    let inner_queues = net::rx_queues(&inner).map_err(|e| format!("inner: {e}"))?;
    let outer_queues = net::rx_queues(&outer).map_err(|e| format!("outer: {e}"))?;
    let workers = data_path
        .workers
        .map_or(inner_queues.max(outer_queues), NonZeroU32::get);
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
    // Worker q's outer UDP source port: one flow per worker, so that a peer's receiver spreads
    // our traffic over its queues.
    let source_ports = data_path
        .source_ports
        .unwrap_or_default()
        .ports(data_path.source_port_base.unwrap_or(port), workers)?;
    let frames = data_path.frames.unwrap_or(8192);
    if !(256..=262_144).contains(&frames) {
        return Err("frames: must be in 256..=262144".into());
    }
    // An override of the XDP object embedded in the binary, if one is given.
    let object_path = data_path
        .xdp_object
        .clone()
        .map(|p| if p.is_relative() { base.join(p) } else { p })
        .or_else(|| std::env::var_os("PKTCRYPT_XDP_OBJECT").map(PathBuf::from));
    let object =
        pktcrypt_io::xdp_object(object_path.as_deref()).map_err(|e| format!("xdp_object: {e}"))?;

    let backend = backend(file.backend);
    check_forwarding(data_path.allow_forwarding)?;

    // The state machine and its peers.
    let (mut endpoint, member_controller, peers) = state_machine(&role, base, port, backend)?;

    let (mut paths, prefixes, local) =
        paths(&role, &endpoint, &peers, file.local, (&inner, &outer), port)?;
    // A member follows the route to its controller too (regaining connectivity).
    let hops = net::NextHops::new(
        &inner,
        peers
            .values()
            .map(|p| p.address)
            .chain(member_controller.map(|c| c.ip())),
    )
    .map_err(|e| format!("inner: reading neighbours and routes: {e}"))?;
    let connectivity = member_controller.map(|controller| Connectivity {
        link: net::link_up(&outer).unwrap_or(true),
        route: hops.reachable(controller.ip()),
        outer: outer.clone(),
        controller,
    });
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
    let control_socket = match (endpoint.machine(), member_controller) {
        (Machine::Member(_), Some(controller)) => {
            let cport = controller.port();
            let s = UdpSocket::bind(SocketAddr::new(local, cport))
                .map_err(|e| format!("control_port: binding UDP {local}:{cport}: {e}"))?;
            spawn_reader(&s, to_control.clone(), Arc::clone(&reader_stop))?;
            Some(s)
        }
        _ => None,
    };
    let keys = endpoint.data_plane().map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        keys: ArcSwap::from_pointee(keys),
        paths: ArcSwap::from_pointee(paths.clone()),
        stop: AtomicBool::new(false),
        stats: (0..workers).map(|_| WorkerStats::new()).collect(),
        tap: Arc::new(Tap::new()),
        source_ports: source_ports.clone(),
    });
    let mut inner_xdp = XdpSteering::attach(
        &object,
        &inner,
        &SteeringConfig {
            esp_port: None,
            prefixes: prefixes.clone(),
            spis: None,
            spi_capacity: 1,
            mode: data_path.xdp_mode,
        },
    )
    .map_err(|e| format!("inner: {e}"))?;
    // Only ESP under an SPI held is steered; the rest is dropped in XDP. At most three
    // generations per peer (init, N, N-1).
    let held: Vec<u32> = endpoint.engine().held_spis().collect();
    let spi_capacity = (endpoint.engine().peers().count() as u32)
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
            mode: data_path.xdp_mode,
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
    let handles = start_workers(
        workers,
        frames,
        (&inner, &outer),
        &shared,
        &to_control,
        (&mut inner_xdp, &mut outer_xdp),
    )?;
    tracing::info!(
        gateway = name,
        role = role.name(),
        inner,
        outer,
        local = %local,
        port,
        workers,
        source_ports = ?source_ports,
        xdp_inner = ?inner_xdp.mode(),
        xdp_outer = ?outer_xdp.mode(),
        "up"
    );
    // Every queue has its worker and its sockets are in both XSKMAPs: ready.
    crate::notify::notify(&format!(
        "READY=1\nSTATUS={} gateway {name} on {inner}/{outer}, {workers} workers",
        role.name()
    ));

    // Status thread.
    let published = Arc::new(Mutex::new(Published::default()));
    let socket_path = file
        .status_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/pktcrypt/{name}.sock")));
    let keys_path = data_path
        .keys_socket
        .clone()
        .unwrap_or_else(|| endpoints::default_keys_socket(&socket_path));
    let (requests, request_rx) = crossbeam_channel::bounded::<endpoints::Request>(16);
    endpoints::serve(
        &socket_path,
        Some(&keys_path),
        Some(Arc::clone(&shared.tap)),
        requests,
        file.metrics,
        Arc::clone(&published),
    )?;

    // The control loop.
    let status_every = status_refresh(file.status_interval_ms);
    // SIGHUP: reload the configuration (`pktcrypt reload` asks through the keys socket).
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(|e| format!("installing the SIGHUP handler: {e}"))?;
    let retire_grace_ms = match &role {
        DataPathRole::GroupMember(cfg) => cfg.retire_grace_ms,
        _ => None,
    };
    let retire_grace = match retire_grace_ms.unwrap_or(5000) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let mut io = GatewayIo {
        name: name.clone(),
        from_workers,
        socket,
        control_socket,
        member_controller,
        connectivity,
        peers,
        port,
        local,
        shared: Arc::clone(&shared),
        inner_xdp,
        outer_xdp,
        hops,
        paths,
        published,
        request_rx,
        status_every,
        print_status: file.status_interval_ms != Some(0),
        retire_grace,
        next_status: now() + status_every,
        next_tick: now(),
        next_resync: now() + NEXT_HOP_RESYNC,
        hops_failing: false,
        control_drops: pktcrypt_core::DropCounters::default(),
        events_total: 0,
        rekeys: 0,
        unresolved: HashMap::new(),
        activity: SpiActivity::default(),
        duplicate_clients: 0,
        spi_map_errors: 0,
        retired_on_evidence: 0,
        config_path: path.to_path_buf(),
        base: base.to_path_buf(),
        applied,
        protected: prefixes,
        hup,
        tracker: status::Tracker::new(now()),
    };
    let result = drive(&mut endpoint, &mut io, &name, term);
    crate::notify::notify("STOPPING=1");
    let GatewayIo {
        inner_xdp,
        outer_xdp,
        ..
    } = io;
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
    result
}

/// `role = "group-controller"`: the group's key controller. It has no data path (no
/// interfaces, no XDP): it talks to the members over a kernel UDP socket on the control port,
/// and serves `pktcrypt status` and Prometheus like the gateways.
fn run_controller(
    daemon: &Daemon,
    file: &ControllerGateway,
    (path, applied): (&Path, toml::Table),
    base: &Path,
    name: &str,
    port: u16,
    term: &AtomicBool,
) -> Result<(), String> {
    if file.members.is_empty() {
        return Err("members: a group controller needs at least one [[members]] entry".into());
    }
    let mut config = file.settings.config()?;
    config.engine.backend = backend(daemon.backend);
    let group_init = file.group.key.load("group", 0, base)?;
    let cport = control_port(file.control_port, port)?;
    let mut controller =
        GroupController::new(config, &group_init, Box::new(OsRandom)).map_err(|e| e.to_string())?;
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
    let local = daemon.local.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let socket = UdpSocket::bind(SocketAddr::new(local, cport))
        .map_err(|e| format!("control_port: binding UDP {local}:{cport}: {e}"))?;
    let published = Arc::new(Mutex::new(Published::default()));
    let socket_path = daemon
        .status_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/pktcrypt/{name}.sock")));
    let (requests, request_rx) = crossbeam_channel::bounded::<endpoints::Request>(16);
    endpoints::serve(
        &socket_path,
        None,
        None,
        requests,
        daemon.metrics,
        Arc::clone(&published),
    )?;
    tracing::info!(
        controller = name,
        local = %local,
        control_port = cport,
        members = file.members.len(),
        "group controller up"
    );
    crate::notify::notify(&format!("READY=1\nSTATUS=group controller {name}"));
    let status_every = status_refresh(daemon.status_interval_ms);
    // SIGHUP: reload (members taken out of the group or re-admitted).
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(|e| format!("installing the SIGHUP handler: {e}"))?;
    let mut io = ControllerIo {
        hup,
        config_path: path.to_path_buf(),
        base: base.to_path_buf(),
        applied,
        name: name.to_string(),
        file,
        socket,
        buf: vec![0u8; 65536],
        published,
        request_rx,
        status_every,
        print_status: daemon.status_interval_ms != Some(0),
        next_status: now(),
        drops: pktcrypt_core::DropCounters::default(),
        rollouts: 0,
        events: 0,
        local,
        control_port: cport,
        tracker: status::Tracker::new(now()),
    };
    let result = drive(&mut Endpoint::from(controller), &mut io, name, term);
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!(controller = name, "stopped");
    result
}

/// The answer to a reload (`reloaded: ` and what changed, or `error: ...`), logged, with
/// READY for the service manager.
fn logged_reload(name: &str, result: Result<Vec<String>, String>) -> String {
    crate::notify::notify("READY=1");
    match result {
        Ok(changes) => {
            let done = if changes.is_empty() {
                "reloaded: nothing changed".to_string()
            } else {
                format!("reloaded: {}", changes.join(", "))
            };
            tracing::info!(daemon = name, "{done}");
            done
        }
        Err(e) => {
            tracing::error!(daemon = name, error = e, "reload refused");
            format!("error: {e}")
        }
    }
}

/// The [`Io`] of `role = "group-controller"`: one kernel UDP socket to the members, status and
/// Prometheus served like a gateway's.
struct ControllerIo<'a> {
    /// Set by SIGHUP.
    hup: Arc<AtomicBool>,
    /// Where the configuration came from, its directory, and its TOML as last applied.
    config_path: PathBuf,
    base: PathBuf,
    applied: toml::Table,
    name: String,
    file: &'a ControllerGateway,
    socket: UdpSocket,
    buf: Vec<u8>,
    published: Arc<Mutex<Published>>,
    request_rx: Receiver<endpoints::Request>,
    status_every: Duration,
    print_status: bool,
    next_status: Time,
    drops: pktcrypt_core::DropCounters,
    rollouts: u64,
    events: u64,
    /// The control socket's address and port (status).
    local: IpAddr,
    control_port: u16,
    /// Uptime (status).
    tracker: status::Tracker,
}

impl ControllerIo<'_> {
    /// Applies the configuration file as it is now: only members' `removed` marks may change
    /// (see [`crate::reload`]); a member marked is taken out of the group (the group rekeys
    /// without it), one unmarked is re-admitted. What changed.
    fn reload(&mut self, endpoint: &mut Endpoint) -> Result<Vec<String>, String> {
        let (file, table): (GatewayFile, _) = config::load_with_table(&self.config_path)?;
        crate::reload::check_restart(&self.applied, &table)?;
        let GatewayRole::GroupController(new) = &file.role else {
            return Err("role: changed, and that needs a restart of the daemon".into());
        };
        let Machine::Controller(controller) = endpoint.machine_mut() else {
            return Err("role: changed, and that needs a restart of the daemon".into());
        };
        // The keys are the same (checked above); loading them again checks the files still
        // read, as at start.
        for (i, m) in new.members.iter().enumerate() {
            m.key
                .load(&format!("members[{i}] ({})", m.name), 0, &self.base)?;
        }
        let now = now();
        let mut changes = Vec::new();
        let suite = new.settings.config()?.suite;
        if controller.suite() != suite {
            controller.set_suite(suite);
            changes.push(format!("suite {suite}"));
        }
        let active = controller.active_members();
        for (i, m) in new.members.iter().enumerate() {
            let Ok(index) = u16::try_from(i) else { break };
            let was_removed = self
                .applied
                .get("members")
                .and_then(toml::Value::as_array)
                .and_then(|a| a.get(i))
                .and_then(|v| v.get("removed"))
                .and_then(toml::Value::as_bool)
                .unwrap_or(false);
            if m.removed && !was_removed {
                controller.remove_member(now, index);
                changes.push(format!("removed {}", m.name));
            } else if !m.removed && was_removed {
                controller.readmit(now, index);
                changes.push(format!("re-admitted {}", m.name));
            } else if !m.removed && !active.contains(&index) {
                // Evicted (unresponsive, or a duplicate) and still in the file unmarked: the
                // operator's reload re-admits it, as a restart would.
                controller.readmit(now, index);
                changes.push(format!("re-admitted {}", m.name));
            }
        }
        self.applied = table;
        Ok(changes)
    }

    /// [`Self::reload`], logged, as the answer to `pktcrypt reload`.
    fn reload_logged(&mut self, endpoint: &mut Endpoint) -> String {
        crate::notify::notify("RELOADING=1");
        let result = self.reload(endpoint);
        logged_reload(&self.name, result)
    }
}

impl Io for ControllerIo<'_> {
    fn receive(&mut self, endpoint: &mut Endpoint, wait: Duration) -> Result<bool, String> {
        let wait = wait.clamp(Duration::from_millis(1), Duration::from_millis(200));
        let _ = self.socket.set_read_timeout(Some(wait));
        if let Ok((n, from)) = self.socket.recv_from(&mut self.buf)
            && let Incoming::Dropped(r) =
                endpoint.handle_datagram(now(), Some(from), &mut self.buf[..n])
        {
            self.drops.add(r);
        }
        Ok(true)
    }

    fn next_wake(&self) -> Time {
        self.next_status
    }

    fn tick(&mut self, endpoint: &mut Endpoint, _: Time) -> Result<(), String> {
        if self.hup.swap(false, Ordering::Relaxed) {
            self.reload_logged(endpoint);
        }
        Ok(())
    }

    fn keys_changed(&mut self, _: &mut Endpoint, _: &[PeerId]) -> Result<(), String> {
        // No data path.
        Ok(())
    }

    fn event(&mut self, endpoint: &Endpoint, event: &Event) {
        self.events += 1;
        if matches!(event, Event::Group(GroupEvent::RolloutStarted { .. })) {
            self.rollouts += 1;
        }
        let member = |index: u16| self.member_name(endpoint, index);
        events::log(
            &events::Names {
                daemon: &self.name,
                peer: &|_| None,
                member: &member,
                server: None,
            },
            event,
        );
    }

    fn send(&mut self, _: &Endpoint, tr: Transmit) {
        if let Some(d) = tr.destination {
            let _ = self.socket.send_to(&tr.contents, d);
        }
    }

    fn report(&mut self, endpoint: &mut Endpoint, t: Time) -> Result<(), String> {
        let asks: Vec<endpoints::Request> = self.request_rx.try_iter().collect();
        let tick = self.next_status <= t;
        if (tick || !asks.is_empty())
            && let Some(doc) = render_controller(self, endpoint)
        {
            let status = serde_json::to_string(&doc).unwrap_or_default();
            if tick {
                self.next_status = t + self.status_every;
                if self.print_status {
                    println!("{status}");
                }
            }
            self.published
                .lock()
                .map_err(|_| "status lock poisoned")?
                .metrics = metrics::controller(&doc);
            // A controller has no keys to export: status and reload requests reach it.
            for (ask, reply) in asks {
                let text = match ask {
                    endpoints::Ask::Reload => format!("{}\n", self.reload_logged(endpoint)),
                    endpoints::Ask::Rekey(None) => {
                        if endpoint.rekey(now(), None) == 0 {
                            "error: no member has joined the group yet\n".to_owned()
                        } else {
                            tracing::info!("group rekey asked for by the operator");
                            "rekey: a new group key is rolled out to every member\n".to_owned()
                        }
                    }
                    endpoints::Ask::Rekey(Some(_)) => {
                        "error: a group controller rekeys the whole group: no PEER\n".to_owned()
                    }
                    _ => status.clone(),
                };
                let _ = reply.send(zeroize::Zeroizing::new(text));
            }
        }
        Ok(())
    }

    fn peer_name(&self, _: &Endpoint, _: PeerId) -> Option<String> {
        None
    }

    fn member_name(&self, _: &Endpoint, index: u16) -> Option<String> {
        self.file
            .members
            .get(usize::from(index))
            .map(|m| m.name.clone())
    }

    fn finish(&mut self, _: &mut Endpoint) {}
}

/// The status document of a group controller ([`status::Controller`]): per member, whether
/// it is active and the newest generation sent to it with the highest phase it acknowledged.
fn render_controller(io: &ControllerIo<'_>, endpoint: &Endpoint) -> Option<status::Controller> {
    let Machine::Controller(controller) = endpoint.machine() else {
        return None;
    };
    let t = now();
    let active = controller.active_members();
    let members = io
        .file
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            let newest = controller.table().iter().rev().find(|e| e.member == index);
            status::Member {
                index,
                name: m.name.clone(),
                address: m.address,
                active: active.contains(&index),
                removed: m.removed,
                generation: newest.map_or(0, |e| e.generation),
                acked: newest
                    .and_then(|e| e.acked)
                    .map_or("none".to_string(), |p| format!("{p:?}")),
            }
        })
        .collect();
    let (next_rekey_s, rekey_timing) = status::next_rekey(endpoint, PeerId(0), t);
    Some(status::Controller {
        schema_version: status::SCHEMA_VERSION,
        name: io.name.clone(),
        role: endpoint.machine().name().to_string(),
        version: status::VERSION.to_string(),
        uptime_s: status::tenths(io.tracker.uptime(t)),
        local: io.local,
        control_port: io.control_port,
        backend: endpoint.engine().config().backend.name().to_string(),
        generation: controller.generation(),
        idle: controller.idle(),
        rollouts: io.rollouts,
        events: io.events,
        next_rekey_s,
        rekey_timing,
        members,
        drops: status::drops(io.drops.iter()),
    })
}

/// How long a peer's next hop may stay unresolved before it is logged.
const UNRESOLVED_WARNING: Duration = Duration::from_secs(2);

/// The control loop's tick: rekey triggers checked, keepalives sent to unresolved next hops.
const TICK: Duration = Duration::from_millis(250);

/// How often the neighbour tables and the peers' routes are read in full, the backstop behind
/// the kernel's notifications (which keep them current in between; a notification lost to a
/// full socket buffer is noticed and answered with a full reading at once).
const NEXT_HOP_RESYNC: Duration = Duration::from_secs(5);

/// The UDP port of the group controller ↔ member channel: `control_port`, by default the ESP
/// port + 1.
pub(crate) fn control_port(control_port: Option<u16>, port: u16) -> Result<u16, String> {
    let cport = control_port.unwrap_or(port.wrapping_add(1));
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
    file: &MemberGateway,
    base: &Path,
    port: u16,
    backend: Backend,
    t0: Time,
) -> Result<(GroupMember, SocketAddr, HashMap<PeerId, PeerInfo>), String> {
    let index = file.index;
    let count = u16::try_from(file.members.len()).map_err(|_| "members: too many".to_string())?;
    if index >= count {
        return Err(format!(
            "index: {index} is not below the number of [[members]] ({count})"
        ));
    }
    let group_init = file.group.key.load("group", 0, base)?;
    let me = &file.members[usize::from(index)];
    let field = format!("members[{index}] ({})", me.name);
    let control = me.key.load(&field, 0, base)?;
    let mut config = file.settings.config()?;
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
    let peers = member_peers(file, &member)?;
    let controller = SocketAddr::new(file.controller, control_port(file.control_port, port)?);
    Ok((member, controller, peers))
}

/// The other members of a group, by their sender peers in `member`'s group engine.
fn member_peers(file: &MemberGateway, member: &GroupMember) -> Result<Peers, String> {
    let mut peers = HashMap::new();
    for (j, m) in file.members.iter().enumerate() {
        if j == usize::from(file.index) {
            continue;
        }
        let sender = u16::try_from(j)
            .ok()
            .and_then(|j| member.sender(j))
            .ok_or_else(|| format!("members[{j}]: no sender slot"))?;
        peers.insert(sender, peer_info(&format!("members[{j}] ({})", m.name), m)?);
    }
    Ok(peers)
}

/// The AEAD backend of the configuration, with a loud warning if it does not encrypt.
fn backend(backend: Backend) -> Backend {
    if backend.name().starts_with("null") {
        tracing::warn!(
            backend = backend.name(),
            "THIS BACKEND DOES NOT ENCRYPT; it exists for benchmarks only"
        );
    }
    backend
}

/// Refuses `suite` in a group member's `[[members]]` (the controller chooses the suite).
fn refuse_member_suites(cfg: &MemberGateway) -> Result<(), String> {
    for (j, m) in cfg.members.iter().enumerate() {
        m.refuse_suite(&format!("members[{j}] ({})", m.name))?;
    }
    Ok(())
}

/// Applies the server-wide `suite` / `suites` of a (reloaded) configuration, with the rekey
/// triggers that follow from them; what changed, if anything.
fn apply_suites(server: &mut KeyServer, sc: &ServerConfig) -> Option<String> {
    let old = server.config();
    if old.suite == sc.suite && old.suite_rotation == sc.suite_rotation {
        return None;
    }
    server.set_triggers(sc.triggers);
    if sc.suite_rotation.is_empty() {
        server.set_suite(sc.suite);
        Some(format!("suite {}", sc.suite))
    } else {
        server.set_suite_rotation(sc.suite_rotation.clone());
        let names: Vec<&str> = sc.suite_rotation.iter().map(|s| s.name()).collect();
        Some(format!("suites {}", names.join(", ")))
    }
}

fn peer_info(field: &str, p: &GatewayPeer) -> Result<PeerInfo, String> {
    if p.prefixes.is_empty() {
        return Err(format!("{field}.prefixes: at least one prefix"));
    }
    Ok(PeerInfo {
        key: None,
        suite: p.suite,
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

/// The counters of `s`'s workers, summed.
fn worker_counters(s: &[WorkerStats]) -> status::Workers {
    let mut workers = status::Workers::default();
    let fields: [(&str, u64); 24] = [
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
        ("socket_rx_dropped", sum(s, |w| &w.socket_rx_dropped)),
        ("socket_rx_ring_full", sum(s, |w| &w.socket_rx_ring_full)),
        (
            "socket_fill_ring_empty",
            sum(s, |w| &w.socket_fill_ring_empty),
        ),
        ("socket_invalid_descs", sum(s, |w| &w.socket_invalid_descs)),
    ];
    for (k, v) in fields {
        workers.set(k, v);
    }
    workers
}

/// The status document of a gateway ([`status::Gateway`]: JSON for `pktcrypt status` and
/// `pktcrypt show`, the source of the Prometheus metrics).
fn render(io: &mut GatewayIo, endpoint: &Endpoint) -> status::Gateway {
    let engine = endpoint.engine();
    let t = now();
    let spi_packets = io.outer_xdp.spi_packets().unwrap_or_default();
    let mut ids: Vec<&PeerId> = io.peers.keys().collect();
    ids.sort_by_key(|p| p.0);
    let mut peers = Vec::with_capacity(ids.len());
    for id in ids {
        let info = &io.peers[id];
        let (transfer, last_received) = io.tracker.sample(engine, *id, t);
        let st = engine.peer_status(*id);
        let sas: Vec<status::Sa> = st
            .iter()
            .flat_map(|st| &st.sas)
            .map(|sa| {
                let c = sa.counters;
                status::Sa {
                    slot: format!("{:?}", sa.slot),
                    generation: sa.info.number,
                    spi: sa.info.spi.to_string(),
                    suite: sa.info.suite.to_string(),
                    transmitting: sa.transmitting,
                    exchanged: sa.exchanged,
                    age_s: status::tenths(t.saturating_sub(sa.installed_at)),
                    sealed: c.packets_sealed,
                    opened: c.packets_opened,
                    bytes_sealed: c.bytes_sealed,
                    bytes_opened: c.bytes_opened,
                    auth_failures: c.auth_failures,
                    replays: c.replays,
                    xdp_packets: spi_packets.get(&sa.info.spi.get()).copied().unwrap_or(0),
                }
            })
            .collect();
        // The current generation: the newest held (the init key before any).
        let newest = st.as_ref().and_then(|st| {
            st.slot(pktcrypt_core::Slot::Newest)
                .or_else(|| st.slot(pktcrypt_core::Slot::Init))
                .copied()
        });
        let tx = st.as_ref().and_then(|st| st.transmitting().copied());
        let (next_rekey_s, rekey_timing) = status::next_rekey(endpoint, *id, t);
        peers.push(status::Peer {
            peer: info.name.clone(),
            address: info.address,
            prefixes: info
                .prefixes
                .iter()
                .map(|(net, len)| format!("{net}/{len}"))
                .collect(),
            generation: newest.map_or(0, |s| s.info.number),
            tx_generation: tx.map_or(0, |s| s.info.number),
            spi: newest.map(|s| s.info.spi.to_string()).unwrap_or_default(),
            suite: newest.map(|s| s.info.suite.to_string()).unwrap_or_default(),
            exchanged: newest.is_some_and(|s| s.exchanged),
            installed_s_ago: newest
                .map_or(0.0, |s| status::tenths(t.saturating_sub(s.installed_at))),
            next_rekey_s,
            rekey_timing,
            last_received_s_ago: last_received.map(|at| status::tenths(t.saturating_sub(at))),
            transfer,
            sas,
        });
    }
    let group = match (endpoint.machine(), io.member_controller) {
        (Machine::Member(m), Some(controller)) => Some(status::MemberGroup {
            index: m.index(),
            controller: controller.to_string(),
            state: format!("{:?}", m.state()),
            generation: m.generation(),
            tx_generation: m.tx_generation(),
            held: m.held(),
            sent: m
                .sender(m.index())
                .map(|me| io.tracker.sample(engine, me, t).0)
                .unwrap_or_default(),
        }),
        _ => None,
    };
    let s = &io.shared.stats;
    let workers = worker_counters(s);
    let per_worker = s
        .iter()
        .enumerate()
        .map(|(q, w)| status::WorkerStatus {
            worker: q as u32,
            source_port: io.shared.source_ports.get(q).copied().unwrap_or(io.port),
            counters: worker_counters(core::slice::from_ref(w)),
        })
        .collect();
    let drops = status::drops(DropReason::ALL.iter().enumerate().map(|(i, reason)| {
        let workers: u64 = s.iter().map(|w| w.drops[i].load(Ordering::Relaxed)).sum();
        (*reason, workers + io.control_drops.get(*reason))
    }));
    let side = |x: &XdpSteering| {
        let c = x.counters().unwrap_or_default();
        status::XdpSide {
            mode: format!("{:?}", x.mode()),
            steered: c.steered,
            passed: c.passed,
            malformed: c.malformed,
            no_socket: c.no_socket,
            unknown_spi: c.unknown_spi,
            keepalive: c.keepalive,
            not_esp: c.not_esp,
            truncated: c.truncated,
            spis: x.spis().len() as u64,
        }
    };
    status::Gateway {
        schema_version: status::SCHEMA_VERSION,
        name: io.name.clone(),
        role: endpoint.machine().name().to_string(),
        version: status::VERSION.to_string(),
        uptime_s: status::tenths(io.tracker.uptime(t)),
        inner: io.inner_xdp.iface().to_string(),
        outer: io.outer_xdp.iface().to_string(),
        local: io.local,
        port: io.port,
        hub: io.paths.hub,
        backend: engine.config().backend.name().to_string(),
        key_changes: io.rekeys,
        events: io.events_total,
        peers,
        group,
        workers,
        per_worker,
        drops,
        xdp: status::Xdp {
            inner: side(&io.inner_xdp),
            outer: side(&io.outer_xdp),
        },
        spi_map_errors: io.spi_map_errors,
        retired_on_evidence: io.retired_on_evidence,
        duplicate_clients: io.duplicate_clients,
    }
}

/// Current SAs as Wireshark's ESP SA table in `format` (one record per SA and direction; see
/// [`crate::wireshark`]).
fn export(
    endpoint: &Endpoint,
    peers: &HashMap<PeerId, PeerInfo>,
    local: IpAddr,
    format: Format,
) -> zeroize::Zeroizing<String> {
    let engine = endpoint.engine();
    // Group mode: our own sender SAs (one key for every destination member).
    let me = match endpoint.machine() {
        Machine::Member(m) => m.sender(m.index()),
        _ => None,
    };
    // (SA, source, destination) of every record. A group sender's key serves both directions
    // in the engine: another member's SAs are only ever inbound, ours only outbound (to every
    // member).
    let mut records = Vec::new();
    for (id, info) in peers {
        if let Some(me) = me {
            let mut seen = Vec::new();
            for sa in engine.export_sas(*id) {
                if !seen.contains(&sa.spi) {
                    seen.push(sa.spi);
                    records.push((sa, info.address, local));
                }
            }
            seen.clear();
            for sa in engine.export_sas(me) {
                if !seen.contains(&sa.spi) {
                    seen.push(sa.spi);
                    records.push((sa, local, info.address));
                }
            }
            continue;
        }
        for sa in engine.export_sas(*id) {
            if sa.outbound {
                records.push((sa, local, info.address));
            } else {
                records.push((sa, info.address, local));
            }
        }
    }
    // Large enough for every line, so the key text is never reallocated (a reallocation
    // would leave an unwiped copy behind).
    let mut out = zeroize::Zeroizing::new(String::with_capacity(
        Format::record_capacity() * (records.len() + 2),
    ));
    crate::wireshark::write_header(&mut out, format, records.iter().any(|(sa, ..)| sa.esn));
    for (sa, src, dst) in &records {
        crate::wireshark::write_record(&mut out, format, sa, *src, *dst);
    }
    out
}

/// The status socket of the daemon configured in `path` (its `status_socket`, else
/// `/run/pktcrypt/NAME.sock`) and its keys socket, if it has one.
pub(crate) fn sockets(path: &Path) -> Result<(PathBuf, Option<PathBuf>), String> {
    let file: GatewayFile = config::load(path)?;
    let name = file.daemon.name.unwrap_or_else(|| "pktcrypt".into());
    let status = file
        .daemon
        .status_socket
        .unwrap_or_else(|| PathBuf::from(format!("/run/pktcrypt/{name}.sock")));
    let keys = file.role.data_path().map(|d| {
        d.keys_socket
            .clone()
            .unwrap_or_else(|| endpoints::default_keys_socket(&status))
    });
    Ok((status, keys))
}

/// `pktcrypt status|show|export-keys|reload`: asks a running daemon. `request` is the line
/// sent; its first word is the command (`export-keys`, `reload` and `capture` go to the keys
/// socket). `config` finds the sockets; `socket` names the one to ask instead.
pub(crate) fn query(
    request: &str,
    config: Option<&Path>,
    socket: Option<&Path>,
) -> Result<String, String> {
    let command = request.split(' ').next().unwrap_or(request);
    let path = match (socket, config) {
        (Some(socket), _) => socket.to_path_buf(),
        (None, Some(config)) => {
            let (status, keys) = sockets(config)?;
            if matches!(command, "reload" | "rekey") {
                // A group controller has no keys socket: it reloads through its status socket.
                keys.unwrap_or(status)
            } else if matches!(command, "export-keys" | "capture") {
                keys.unwrap_or_else(|| endpoints::default_keys_socket(&status))
            } else {
                status
            }
        }
        (None, None) => return Err("--config FILE or --socket PATH is required".into()),
    };
    let mut stream = UnixStream::connect(&path)
        .map_err(|e| format!("{}: {e} (is `pktcrypt up` running?)", path.display()))?;
    writeln!(stream, "{request}").map_err(|e| e.to_string())?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stream, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::sample_source;
    use pktcrypt_core::control::{Endpoint, KeyServer, Machine, ServerConfig};
    use pktcrypt_core::{Generation, GenerationInfo, OpenInfo, Secret, Slot, Spi, Suite, Time};
    use std::net::SocketAddr;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    /// A key server whose client sends data from one source port per worker (and control
    /// messages from its ESP port): the samples never move the client's control address within
    /// its IP address, so the server neither "roams" it from port to port nor sends control
    /// messages to a worker's port, where nothing receives; a sample from another IP address
    /// moves it there, at the ESP port. Passing the samples' sources on as they are (what the
    /// gateway did before workers had ports of their own) fails the first assertion.
    #[test]
    fn samples_from_many_source_ports_do_not_move_a_clients_control_address() {
        let server = KeyServer::new(
            ServerConfig::default(),
            Box::new(pktcrypt_core::control::SeededRandom::new(7)),
        )
        .expect("server");
        let mut endpoint = Endpoint::from(server);
        let spi = Spi::new(0x100).expect("spi");
        let init = Generation {
            info: GenerationInfo {
                number: 0,
                spi,
                suite: Suite::Aes256Gcm,
            },
            secret: Secret::from_bytes([3; 32]),
        };
        let configured = addr("192.0.2.1:4500");
        let Machine::Server(s) = endpoint.machine_mut() else {
            unreachable!()
        };
        let peer = s
            .add_client(&init, Some(configured), Time::ZERO)
            .expect("client");
        let info = OpenInfo {
            peer,
            spi,
            generation: 0,
            slot: Slot::Init,
            seq: 1,
        };
        let known = |e: &Endpoint| match e.machine() {
            Machine::Server(s) => s.address(peer),
            _ => None,
        };
        let mut t = Time::ZERO;
        let mut sample = |e: &mut Endpoint, from: &str| {
            t += std::time::Duration::from_millis(100);
            let from = sample_source(known(e), addr(from), 4500);
            e.handle_sampled(t, from, &info);
        };
        for from in ["192.0.2.1:4501", "192.0.2.1:4500", "192.0.2.1:4502"] {
            sample(&mut endpoint, from);
            assert_eq!(known(&endpoint), Some(configured), "after {from}");
        }
        // Moved: to its new address, at the ESP port; its other ports change nothing.
        for from in ["198.51.100.7:30001", "198.51.100.7:30002"] {
            sample(&mut endpoint, from);
            assert_eq!(known(&endpoint), Some(addr("198.51.100.7:4500")), "{from}");
        }
    }

    #[test]
    fn a_sample_moves_only_the_ip_address() {
        let k = Some(addr("203.0.113.9:61000"));
        // Same IP: the port a NAT gave the peer's ESP port (learned from control) stays.
        assert_eq!(sample_source(k, addr("203.0.113.9:61001"), 4500), None);
        assert_eq!(sample_source(k, addr("203.0.113.9:61000"), 4500), None);
        // Another IP, or none known: there, at the ESP port.
        assert_eq!(
            sample_source(k, addr("203.0.113.10:61001"), 4500),
            Some(addr("203.0.113.10:4500"))
        );
        assert_eq!(
            sample_source(None, addr("[2001:db8::2]:7"), 4500),
            Some(addr("[2001:db8::2]:4500"))
        );
    }
}
