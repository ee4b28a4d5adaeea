//! UDP drivers: run a control-plane state machine over a real socket.
//!
//! Time comes from `CLOCK_BOOTTIME` (keeps counting across suspend), randomness from the OS.
//! Optional synthetic traffic lets a deployment (and the integration tests) see data flow through
//! key rotations: every packet carries (boot id, sequence number, send time), and receivers report
//! each gap with the time window it fell in, so a loss can be explained.

use crate::config::{self, ClientFile, GroupControllerFile, GroupMemberFile, ServerFile};
use crate::drive::{Io, drive};
use pktcrypt_core::Time;
use pktcrypt_core::control::{
    ClientEvent, Endpoint, Event, GroupController, GroupEvent, GroupMember, Incoming, KeyClient,
    KeyErasureRandom, KeyServer, Machine, Random, Transmit,
};
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_core::{DropReason, PeerId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use pktcrypt_os::{OsRandom, now};

/// For the key server, which mints many secrets per second: a fast-key-erasure generator
/// ([`KeyErasureRandom`]) seeded from the operating system and reseeded from it after every
/// mebibyte of output, instead of a system call per secret.
pub(crate) struct ServerRandom {
    rng: KeyErasureRandom,
    given: usize,
}

impl ServerRandom {
    const RESEED_AFTER: usize = 1 << 20;

    pub(crate) fn new() -> Self {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        OsRandom.fill(&mut *seed);
        Self {
            rng: KeyErasureRandom::from_seed(*seed),
            given: 0,
        }
    }
}

impl Random for ServerRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        if self.given >= Self::RESEED_AFTER {
            let mut fresh = zeroize::Zeroizing::new([0u8; 32]);
            OsRandom.fill(&mut *fresh);
            self.rng.reseed(&fresh);
            self.given = 0;
        }
        self.rng.fill(dest);
        self.given += dest.len();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Installs SIGINT/SIGTERM handlers that set a flag.
pub(crate) fn termination_flag() -> Result<Arc<AtomicBool>, String> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .map_err(|e| format!("installing a signal handler: {e}"))?;
    }
    Ok(flag)
}

/// A synthetic inner IPv4 packet: header, then boot id, sequence number, send time.
const TRAFFIC_LEN: usize = 64;

fn traffic_packet(buf: &mut [u8], boot: u32, seq: u64) {
    let p = &mut buf[ESP_HEADER_LEN..ESP_HEADER_LEN + TRAFFIC_LEN];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(TRAFFIC_LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[20..24].copy_from_slice(&boot.to_be_bytes());
    p[24..32].copy_from_slice(&seq.to_be_bytes());
    p[32..40].copy_from_slice(&unix_ms().to_be_bytes());
}

/// Per-sender receive accounting with gap windows.
#[derive(Default)]
struct Flow {
    boot: u32,
    next: u64,
    last_ms: u64,
    received: u64,
    lost: u64,
    gaps: Vec<(u64, u64, u64)>,
    restarts: u64,
}

impl Flow {
    fn on_packet(&mut self, inner: &[u8]) {
        if inner.len() < 40 {
            return;
        }
        let boot = u32::from_be_bytes([inner[20], inner[21], inner[22], inner[23]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&inner[24..32]);
        let seq = u64::from_be_bytes(s);
        s.copy_from_slice(&inner[32..40]);
        let sent_ms = u64::from_be_bytes(s);
        if self.received == 0 || boot != self.boot {
            if self.received > 0 {
                self.restarts += 1;
            }
            self.boot = boot;
            self.next = seq;
        }
        if seq > self.next {
            let lost = seq - self.next;
            self.lost += lost;
            self.gaps.push((self.last_ms, sent_ms, lost));
        }
        if seq >= self.next {
            self.next = seq + 1;
            self.last_ms = sent_ms;
        }
        self.received += 1;
    }

    fn json(&self) -> String {
        let mut gaps = String::new();
        for (i, (from, to, lost)) in self.gaps.iter().enumerate() {
            if i > 0 {
                gaps.push(',');
            }
            let _ = write!(
                gaps,
                "{{\"after_ms\":{from},\"before_ms\":{to},\"lost\":{lost}}}"
            );
        }
        format!(
            "{{\"received\":{},\"lost\":{},\"sender_restarts\":{},\"gaps\":[{gaps}]}}",
            self.received, self.lost, self.restarts
        )
    }
}

/// Counters of one role instance, printed as JSON lines.
#[derive(Default)]
struct Stats {
    sent: u64,
    send_errors: u64,
    drops: BTreeMap<&'static str, u64>,
    flows: HashMap<String, Flow>,
}

impl Stats {
    fn drop(&mut self, r: DropReason) {
        *self.drops.entry(r.label()).or_default() += 1;
    }

    fn line(&self, role: &str, name: &str, generation: u64, extra: &str, last: bool) -> String {
        let drops: Vec<String> = self
            .drops
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        let mut flows: Vec<(&String, &Flow)> = self.flows.iter().collect();
        flows.sort_by_key(|(k, _)| *k);
        let flows: Vec<String> = flows
            .into_iter()
            .map(|(k, f)| format!("\"{k}\":{}", f.json()))
            .collect();
        format!(
            "{{\"role\":\"{role}\",\"name\":\"{name}\",\"unix_ms\":{},\"final\":{last},\"generation\":{generation},\"sent\":{},\"send_errors\":{},\"drops\":{{{}}},\"flows\":{{{}}}{extra}}}",
            unix_ms(),
            self.sent,
            self.send_errors,
            drops.join(","),
            flows.join(",")
        )
    }
}

fn print(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn bind(addr: SocketAddr) -> Result<UdpSocket, String> {
    UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))
}

/// Receives one datagram with a deadline. `None` on timeout.
fn recv(socket: &UdpSocket, buf: &mut [u8], wait: Duration) -> Option<(usize, SocketAddr)> {
    let wait = wait.clamp(Duration::from_micros(200), Duration::from_millis(200));
    let _ = socket.set_read_timeout(Some(wait));
    match socket.recv_from(buf) {
        Ok(r) => Some(r),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        // ICMP port unreachable from an earlier send: the peer is down; keep going.
        Err(_) => None,
    }
}

fn boot_id() -> u32 {
    let mut b = [0u8; 4];
    OsRandom.fill(&mut b);
    u32::from_be_bytes(b)
}

fn interval(pps: Option<u32>) -> Option<Duration> {
    pps.filter(|p| *p > 0)
        .map(|p| Duration::from_secs_f64(1.0 / f64::from(p)))
}

/// Where synthetic traffic goes.
enum Targets {
    /// A key server: to every client it has heard from, each under its own keys.
    Heard,
    /// A client or a group member: one packet, to each of these addresses.
    Fixed(Vec<SocketAddr>),
}

/// The [`Io`] of the UDP roles: one socket, optional synthetic traffic, JSON status lines.
struct UdpIo {
    socket: UdpSocket,
    /// The role and instance names of the status lines.
    name: String,
    /// Clients by peer, for a key server's flows and logs.
    names: HashMap<PeerId, String>,
    /// Members by index, for a group controller's logs.
    members: Vec<String>,
    /// Where each peer last sent from (a key server's clients).
    addrs: HashMap<PeerId, SocketAddr>,
    /// Where transmits without a known address go (a client's server, a member's controller).
    default_to: Option<SocketAddr>,
    traffic: Option<Duration>,
    targets: Targets,
    next_traffic: Time,
    boot: u32,
    seq: HashMap<PeerId, u64>,
    status: Duration,
    next_status: Time,
    stats: Stats,
    buf: Vec<u8>,
    out: Vec<u8>,
    installs: u64,
    fallbacks: u64,
    rollouts: u64,
}

impl UdpIo {
    fn new(
        socket: UdpSocket,
        name: String,
        traffic_pps: Option<u32>,
        status_interval_ms: Option<u64>,
        targets: Targets,
    ) -> Self {
        let status = crate::up::status_refresh(status_interval_ms);
        Self {
            socket,
            name,
            names: HashMap::new(),
            members: Vec::new(),
            addrs: HashMap::new(),
            default_to: None,
            traffic: interval(traffic_pps),
            targets,
            next_traffic: now(),
            boot: boot_id(),
            seq: HashMap::new(),
            status,
            next_status: now() + status,
            stats: Stats::default(),
            buf: vec![0u8; 65536],
            out: vec![0u8; ESP_HEADER_LEN + TRAFFIC_LEN + MAX_OVERHEAD],
            installs: 0,
            fallbacks: 0,
            rollouts: 0,
        }
    }

    fn send_to(&mut self, bytes: &[u8], to: Option<SocketAddr>) {
        if let Some(to) = to
            && self.socket.send_to(bytes, to).is_err()
        {
            self.stats.send_errors += 1;
        }
    }

    fn line(&self, endpoint: &Endpoint, last: bool) -> String {
        let extra = match endpoint.machine() {
            Machine::Server(_) => String::new(),
            Machine::Client(_) => format!(
                ",\"installs\":{},\"fallbacks\":{}",
                self.installs, self.fallbacks
            ),
            Machine::Controller(c) => format!(
                ",\"rollouts\":{},\"members\":{:?}",
                self.rollouts,
                c.active_members()
            ),
            Machine::Member(m) => format!(",\"state\":\"{:?}\"", m.state()),
        };
        self.stats.line(
            endpoint.machine().name(),
            &self.name,
            endpoint.generation(),
            &extra,
            last,
        )
    }
}

impl Io for UdpIo {
    fn receive(&mut self, endpoint: &mut Endpoint, wait: Duration) -> Result<bool, String> {
        let Some((n, from)) = recv(&self.socket, &mut self.buf, wait) else {
            return Ok(true);
        };
        let server = matches!(endpoint.machine(), Machine::Server(_));
        match endpoint.handle_datagram(now(), Some(from), &mut self.buf[..n]) {
            Incoming::Data { peer, packet, .. } => {
                let flow = match endpoint.machine() {
                    Machine::Server(_) => self.names.get(&peer).cloned().unwrap_or_default(),
                    Machine::Client(_) => "server".into(),
                    _ => from.to_string(),
                };
                self.stats.flows.entry(flow).or_default().on_packet(packet);
                if server {
                    self.addrs.insert(peer, from);
                }
            }
            Incoming::Control { peer } => {
                if server {
                    self.addrs.insert(peer, from);
                }
            }
            Incoming::Dropped(r) => self.stats.drop(r),
        }
        Ok(true)
    }

    fn next_wake(&self) -> Time {
        match self.traffic {
            Some(_) => self.next_status.min(self.next_traffic),
            None => self.next_status,
        }
    }

    fn tick(&mut self, endpoint: &mut Endpoint, t: Time) -> Result<(), String> {
        let Some(every) = self.traffic else {
            return Ok(());
        };
        if self.next_traffic > t {
            return Ok(());
        }
        self.next_traffic = t + every;
        let peers: Vec<(PeerId, Vec<SocketAddr>)> = match &self.targets {
            Targets::Heard => self.addrs.iter().map(|(p, a)| (*p, vec![*a])).collect(),
            Targets::Fixed(to) => vec![(PeerId(0), to.clone())],
        };
        for (peer, to) in peers {
            let s = self.seq.entry(peer).or_default();
            let seq = *s;
            traffic_packet(&mut self.out, self.boot, seq);
            let mut out = std::mem::take(&mut self.out);
            if let Ok(n) = endpoint.seal(t, peer, &mut out, TRAFFIC_LEN, NextHeader::Ipv4) {
                *self.seq.entry(peer).or_default() += 1;
                self.stats.sent += 1;
                for a in to {
                    self.send_to(&out[..n], Some(a));
                }
            }
            self.out = out;
        }
        Ok(())
    }

    fn keys_changed(&mut self, _: &mut Endpoint, _: &[PeerId]) -> Result<(), String> {
        // The endpoint seals and opens itself: nothing to publish.
        Ok(())
    }

    fn event(&mut self, endpoint: &Endpoint, event: &Event) {
        match event {
            Event::Client(ClientEvent::FellBackToInit) => self.fallbacks += 1,
            Event::Client(ClientEvent::KeyInstalled { .. }) => self.installs += 1,
            Event::Group(GroupEvent::RolloutStarted { .. }) => self.rollouts += 1,
            _ => {}
        }
        let peer = |id: PeerId| self.names.get(&id).cloned();
        let member = |index: u16| self.member_name(endpoint, index);
        crate::events::log(
            &crate::events::Names {
                daemon: &self.name,
                peer: &peer,
                member: &member,
                server: None,
            },
            event,
        );
    }

    fn send(&mut self, _: &Endpoint, tr: Transmit) {
        let to = tr
            .destination
            .or_else(|| self.addrs.get(&tr.peer).copied())
            .or(self.default_to);
        self.send_to(&tr.contents, to);
    }

    fn report(&mut self, endpoint: &mut Endpoint, t: Time) -> Result<(), String> {
        if self.next_status <= t {
            self.next_status = t + self.status;
            print(&self.line(endpoint, false));
        }
        Ok(())
    }

    fn peer_name(&self, _: &Endpoint, peer: PeerId) -> Option<String> {
        self.names.get(&peer).cloned()
    }

    fn member_name(&self, _: &Endpoint, index: u16) -> Option<String> {
        self.members.get(usize::from(index)).cloned()
    }

    fn finish(&mut self, endpoint: &mut Endpoint) {
        print(&self.line(endpoint, true));
    }
}

/// A key server from its file, with its clients' names by peer (no socket).
pub(crate) fn server(
    file: &ServerFile,
    base: &Path,
) -> Result<(KeyServer, HashMap<PeerId, String>), String> {
    let config = file.server_config()?;
    let mut server =
        KeyServer::new(config, Box::new(ServerRandom::new())).map_err(|e| e.to_string())?;
    let mut names = HashMap::new();
    let mut distinct = config::DistinctKeys::default();
    for (i, c) in file.clients.iter().enumerate() {
        let field = format!("clients[{i}] ({})", c.name);
        let key = c.key.load(&field, 0, base)?;
        distinct.check(&field, &key)?;
        let peer = server
            .add_client(&key, c.address, now())
            .map_err(|e| format!("clients[{i}] ({}): {e}", c.name))?;
        server
            .set_client_suite(peer, c.suite)
            .map_err(|e| format!("clients[{i}] ({}): {e}", c.name))?;
        names.insert(peer, c.name.clone());
    }
    Ok((server, names))
}

/// `pktcrypt server`.
pub(crate) fn run_server(file: &ServerFile, base: &Path, term: &AtomicBool) -> Result<(), String> {
    let (server, names) = server(file, base)?;
    let socket = bind(file.listen)?;
    tracing::info!(
        listen = %file.listen,
        clients = names.len(),
        "key server listening"
    );
    let mut io = UdpIo::new(
        socket,
        "server".into(),
        file.traffic_pps,
        file.status_interval_ms,
        Targets::Heard,
    );
    io.names = names;
    drive(&mut Endpoint::from(server), &mut io, "server", term)
}

/// A client's init keys, one per instance.
pub(crate) fn client_keys(
    file: &ClientFile,
    base: &Path,
) -> Result<Vec<pktcrypt_core::Generation>, String> {
    let count = file.count.map_or(1, std::num::NonZeroUsize::get);
    let mut keys = Vec::new();
    for i in 0..count {
        keys.push(file.key.load("client", i, base)?);
    }
    Ok(keys)
}

/// `pktcrypt client` (one or `count` instances, one thread each).
pub(crate) fn run_client(
    file: &ClientFile,
    base: &Path,
    term: &Arc<AtomicBool>,
) -> Result<(), String> {
    let config = file.client_config()?;
    let count = file.count.map_or(1, std::num::NonZeroUsize::get);
    let prefix = file.name.clone().unwrap_or_else(|| "client".into());
    let keys = client_keys(file, base)?;
    let bind_addr = file
        .bind
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut threads = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let mut addr = bind_addr;
        if count > 1 {
            addr.set_port(0);
        }
        let socket = bind(addr)?;
        let name = if count > 1 {
            format!("{prefix}{i}")
        } else {
            prefix.clone()
        };
        let config = config.clone();
        let server_addr = file.server;
        let (pps, status) = (file.traffic_pps, file.status_interval_ms);
        let term = Arc::clone(term);
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let client = KeyClient::new(config, &key, Box::new(OsRandom), now())
                .map_err(|e| format!("{name}: {e}"))?;
            drop(key);
            let mut io = UdpIo::new(
                socket,
                name.clone(),
                pps,
                status,
                Targets::Fixed(vec![server_addr]),
            );
            io.default_to = Some(server_addr);
            drive(&mut Endpoint::from(client), &mut io, &name, &term)
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    Ok(())
}

/// A group controller from its file (no socket).
pub(crate) fn group_controller(
    file: &GroupControllerFile,
    base: &Path,
) -> Result<GroupController, String> {
    let config = file.settings.config()?;
    let group_init = file.group.key.load("group", 0, base)?;
    let mut controller =
        GroupController::new(config, &group_init, Box::new(OsRandom)).map_err(|e| e.to_string())?;
    let mut distinct = config::DistinctKeys::default();
    distinct.check("group", &group_init)?;
    for (i, m) in file.members.iter().enumerate() {
        let field = format!("members[{i}] ({})", m.name);
        let key = m.key.load(&field, 0, base)?;
        distinct.check(&field, &key)?;
        let index = controller
            .add_member(&key, m.address, false, now())
            .map_err(|e| format!("members[{i}] ({}): {e}", m.name))?;
        if m.removed {
            controller.remove_member(now(), index);
        }
    }
    Ok(controller)
}

/// `pktcrypt group-controller`.
pub(crate) fn run_group_controller(
    file: &GroupControllerFile,
    base: &Path,
    term: &AtomicBool,
) -> Result<(), String> {
    let controller = group_controller(file, base)?;
    let socket = bind(file.listen)?;
    tracing::info!(
        listen = %file.listen,
        members = file.members.len(),
        "group controller listening"
    );
    let mut io = UdpIo::new(
        socket,
        "controller".into(),
        None,
        file.status_interval_ms,
        Targets::Fixed(Vec::new()),
    );
    io.members = file.members.iter().map(|m| m.name.clone()).collect();
    drive(&mut Endpoint::from(controller), &mut io, "controller", term)
}

/// A group member from its file (no socket).
pub(crate) fn group_member(file: &GroupMemberFile, base: &Path) -> Result<GroupMember, String> {
    let config = file.settings.config()?;
    let control = file.key.load("member", 0, base)?;
    let group_init = file.group.key.load("group", 0, base)?;
    let members = u16::try_from(file.peers.len()).map_err(|_| "peers: too many".to_string())?;
    if file.index >= members {
        return Err(format!(
            "index: {} is not below the number of peers ({members})",
            file.index
        ));
    }
    GroupMember::new(
        config,
        file.index,
        &control,
        &group_init,
        members,
        Box::new(OsRandom),
        now(),
    )
    .map_err(|e| e.to_string())
}

/// `pktcrypt group-member`.
pub(crate) fn run_group_member(
    file: &GroupMemberFile,
    base: &Path,
    term: &AtomicBool,
) -> Result<(), String> {
    let member = group_member(file, base)?;
    let socket = bind(file.bind)?;
    let name = format!("member{}", file.index);
    let others = file
        .peers
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != usize::from(file.index))
        .map(|(_, a)| *a)
        .collect();
    let mut io = UdpIo::new(
        socket,
        name.clone(),
        file.traffic_pps,
        file.status_interval_ms,
        Targets::Fixed(others),
    );
    io.default_to = Some(file.controller);
    drive(&mut Endpoint::from(member), &mut io, &name, term)
}

/// What a core image of a key-holding process may contain (`/proc/self/coredump_filter`, see
/// core(5)): ELF headers only (bit 4: enough to identify the build). No anonymous memory
/// (bits 0 and 1: heap, thread stacks, the AF_XDP UMEM with its plaintext frames), no
/// file-backed private mappings (bit 2: the binary's and libraries' written data, and, as gdb
/// counts them, `[heap]` and `[stack]`), no shared or huge pages. Expanded AEAD keys live in
/// memory (an AES key schedule starts with the key itself) and copies pass through stacks, so
/// only this keeps them out of an image taken by `gcore` or a core-dump helper.
const COREDUMP_FILTER: &str = "0x10";

/// Keeps key material out of core files: no core dumps (`RLIMIT_CORE` 0), not dumpable
/// (`PR_SET_DUMPABLE` 0: no core on a crash, and `/proc/PID/mem` and ptrace only for
/// privileged users), and no anonymous memory in any core image that is still taken (by a
/// privileged user's `gcore`: [`COREDUMP_FILTER`]). Called first by every command that holds
/// keys. A privileged user who attaches a debugger still reads everything: this keeps keys out
/// of files, not out of reach of root.
///
/// # Errors
/// The kernel refused any setting.
pub(crate) fn harden_process() -> Result<(), String> {
    std::fs::write("/proc/self/coredump_filter", COREDUMP_FILTER)
        .map_err(|e| format!("/proc/self/coredump_filter: {e}"))?;
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| format!("disabling core dumps: {e}"))?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)
        .map_err(|e| format!("PR_SET_DUMPABLE: {e}"))
}
