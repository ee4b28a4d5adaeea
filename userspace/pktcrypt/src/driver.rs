//! UDP drivers: run a control-plane state machine over a real socket.
//!
//! Time comes from `CLOCK_BOOTTIME` (keeps counting across suspend), randomness from the OS.
//! Optional synthetic traffic lets a deployment (and the integration tests) see data flow through
//! key rotations: every packet carries (boot id, sequence number, send time), and receivers report
//! each gap with the time window it fell in, so a loss can be explained.

use crate::config::{self, ClientFile, GroupControllerFile, GroupMemberFile, ServerFile};
use pktcrypt_core::control::{
    GroupController, GroupMember, Incoming, KeyClient, KeyErasureRandom, KeyServer, Random,
    ServerEvent, Transmit,
};
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_core::{DropReason, PeerId};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

fn send(socket: &UdpSocket, stats: &mut Stats, bytes: &[u8], to: Option<SocketAddr>) {
    if let Some(to) = to
        && socket.send_to(bytes, to).is_err()
    {
        stats.send_errors += 1;
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

/// `pktcrypt server`.
pub(crate) fn run_server(file: &ServerFile, base: &Path, term: &AtomicBool) -> Result<(), String> {
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
        names.insert(peer, c.name.clone());
    }
    let socket = bind(file.listen)?;
    tracing::info!(
        listen = %file.listen,
        clients = names.len(),
        "key server listening"
    );
    let traffic = interval(file.traffic_pps);
    let status = crate::up::status_refresh(file.status_interval_ms);
    let boot = boot_id();
    let mut seq: HashMap<PeerId, u64> = HashMap::new();
    let mut twins: HashMap<PeerId, pktcrypt_core::control::TwinDetector> = HashMap::new();
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; ESP_HEADER_LEN + TRAFFIC_LEN + MAX_OVERHEAD];
    let mut next_traffic = now();
    let mut next_status = now() + status;
    let mut addrs: HashMap<PeerId, SocketAddr> = HashMap::new();
    while !term.load(Ordering::Relaxed) {
        let t = now();
        let mut wake = next_status;
        if traffic.is_some() {
            wake = wake.min(next_traffic);
        }
        if let Some(p) = server.poll_timeout() {
            wake = wake.min(p);
        }
        if let Some((n, from)) = recv(&socket, &mut buf, wake.saturating_sub(t)) {
            match server.handle_datagram(now(), Some(from), &mut buf[..n]) {
                Incoming::Data { peer, packet, .. } => {
                    addrs.insert(peer, from);
                    let name = names.get(&peer).cloned().unwrap_or_default();
                    stats.flows.entry(name).or_default().on_packet(packet);
                }
                Incoming::Control { peer } => {
                    addrs.insert(peer, from);
                }
                Incoming::Dropped(r) => stats.drop(r),
            }
        }
        let t = now();
        if server.poll_timeout().is_some_and(|p| p <= t) {
            server.handle_timeout(t);
        }
        if let Some(every) = traffic
            && next_traffic <= t
        {
            next_traffic = t + every;
            for (peer, addr) in &addrs {
                let s = seq.entry(*peer).or_default();
                traffic_packet(&mut out, boot, *s);
                if let Ok(n) = server.seal(*peer, &mut out, TRAFFIC_LEN, NextHeader::Ipv4) {
                    *s += 1;
                    stats.sent += 1;
                    let bytes = out[..n].to_vec();
                    send(&socket, &mut stats, &bytes, Some(*addr));
                }
            }
        }
        while let Some(Transmit {
            peer,
            destination,
            contents,
        }) = server.poll_transmit()
        {
            send(
                &socket,
                &mut stats,
                &contents,
                destination.or(addrs.get(&peer).copied()),
            );
        }
        while let Some(e) = server.poll_event() {
            if let ServerEvent::ClientInit { peer } = e
                && let Some(addr) = server.address(peer)
                && let Some((a, b)) = twins.entry(peer).or_default().handshake_from(t, addr)
            {
                tracing::error!(
                    client = names.get(&peer).map(String::as_str),
                    first = %a,
                    second = %b,
                    "two clients use this client's init key (a copied configuration?): their \
                     handshakes keep resetting each other's keys"
                );
            }
        }
        if next_status <= t {
            next_status = t + status;
            print(&stats.line("server", "server", 0, "", false));
        }
    }
    print(&stats.line("server", "server", 0, "", true));
    Ok(())
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
    let mut keys = Vec::new();
    for i in 0..count {
        keys.push(file.key.load("client", i, base)?);
    }
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
        let traffic = interval(file.traffic_pps);
        let status = crate::up::status_refresh(file.status_interval_ms);
        let term = Arc::clone(term);
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut client = KeyClient::new(config, &key, Box::new(OsRandom), now())
                .map_err(|e| format!("{name}: {e}"))?;
            drop(key);
            client_loop(
                &mut client,
                &socket,
                server_addr,
                &name,
                traffic,
                status,
                &term,
            );
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    Ok(())
}

fn client_loop(
    client: &mut KeyClient,
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    traffic: Option<Duration>,
    status: Duration,
    term: &AtomicBool,
) {
    let boot = boot_id();
    let mut seq = 0u64;
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; ESP_HEADER_LEN + TRAFFIC_LEN + MAX_OVERHEAD];
    let mut next_traffic = now();
    let mut next_status = now() + status;
    let mut fallbacks = 0u64;
    let mut installs = 0u64;
    while !term.load(Ordering::Relaxed) {
        let t = now();
        let mut wake = next_status;
        if traffic.is_some() {
            wake = wake.min(next_traffic);
        }
        if let Some(p) = client.poll_timeout() {
            wake = wake.min(p);
        }
        if let Some((n, _from)) = recv(socket, &mut buf, wake.saturating_sub(t)) {
            match client.handle_datagram(now(), &mut buf[..n]) {
                Incoming::Data { packet, .. } => {
                    stats
                        .flows
                        .entry("server".into())
                        .or_default()
                        .on_packet(packet);
                }
                Incoming::Control { .. } => {}
                Incoming::Dropped(r) => stats.drop(r),
            }
        }
        let t = now();
        if client.poll_timeout().is_some_and(|p| p <= t) {
            client.handle_timeout(t);
        }
        if let Some(every) = traffic
            && next_traffic <= t
        {
            next_traffic = t + every;
            traffic_packet(&mut out, boot, seq);
            if let Ok(n) = client.seal(t, &mut out, TRAFFIC_LEN, NextHeader::Ipv4) {
                seq += 1;
                stats.sent += 1;
                let bytes = out[..n].to_vec();
                send(socket, &mut stats, &bytes, Some(server));
            }
        }
        while let Some(tx) = client.poll_transmit() {
            send(socket, &mut stats, &tx.contents, Some(server));
        }
        while let Some(e) = client.poll_event() {
            match e {
                pktcrypt_core::control::ClientEvent::FellBackToInit => fallbacks += 1,
                pktcrypt_core::control::ClientEvent::KeyInstalled { .. } => installs += 1,
                _ => {}
            }
        }
        if next_status <= t {
            next_status = t + status;
            let extra = format!(",\"installs\":{installs},\"fallbacks\":{fallbacks}");
            print(&stats.line("client", name, client.newest(), &extra, false));
        }
    }
    let extra = format!(",\"installs\":{installs},\"fallbacks\":{fallbacks}");
    print(&stats.line("client", name, client.newest(), &extra, true));
}

/// `pktcrypt group-controller`.
pub(crate) fn run_group_controller(
    file: &GroupControllerFile,
    base: &Path,
    term: &AtomicBool,
) -> Result<(), String> {
    let config = file.settings.config()?;
    let group_init = file.group.key.load("group", 0, base)?;
    let mut controller =
        GroupController::new(config, group_init.info.spi.get(), Box::new(OsRandom))
            .map_err(|e| e.to_string())?;
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
    let socket = bind(file.listen)?;
    tracing::info!(
        listen = %file.listen,
        members = file.members.len(),
        "group controller listening"
    );
    let status = crate::up::status_refresh(file.status_interval_ms);
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 65536];
    let mut next_status = now() + status;
    let mut rollouts = 0u64;
    while !term.load(Ordering::Relaxed) {
        let t = now();
        let mut wake = next_status;
        if let Some(p) = controller.poll_timeout() {
            wake = wake.min(p);
        }
        if let Some((n, from)) = recv(&socket, &mut buf, wake.saturating_sub(t))
            && let Incoming::Dropped(r) =
                controller.handle_datagram(now(), Some(from), &mut buf[..n])
        {
            stats.drop(r);
        }
        let t = now();
        if controller.poll_timeout().is_some_and(|p| p <= t) {
            controller.handle_timeout(t);
        }
        while let Some(tx) = controller.poll_transmit() {
            send(&socket, &mut stats, &tx.contents, tx.destination);
        }
        while let Some(e) = controller.poll_event() {
            if matches!(e, pktcrypt_core::control::GroupEvent::RolloutStarted { .. }) {
                rollouts += 1;
            }
            if let pktcrypt_core::control::GroupEvent::Duplicate { member, addrs } = e {
                tracing::error!(
                    member,
                    first = %addrs.0,
                    second = %addrs.1,
                    "two gateways run as this member (its index and control key in two \
                     configurations): taken out of the group until re-admitted"
                );
            }
            tracing::info!(event = ?e, "group controller");
        }
        if next_status <= t {
            next_status = t + status;
            let extra = format!(
                ",\"rollouts\":{rollouts},\"members\":{:?}",
                controller.active_members()
            );
            print(&stats.line(
                "group-controller",
                "controller",
                controller.generation(),
                &extra,
                false,
            ));
        }
    }
    let extra = format!(
        ",\"rollouts\":{rollouts},\"members\":{:?}",
        controller.active_members()
    );
    print(&stats.line(
        "group-controller",
        "controller",
        controller.generation(),
        &extra,
        true,
    ));
    Ok(())
}

/// `pktcrypt group-member`.
pub(crate) fn run_group_member(
    file: &GroupMemberFile,
    base: &Path,
    term: &AtomicBool,
) -> Result<(), String> {
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
    let mut member = GroupMember::new(
        config,
        file.index,
        &control,
        &group_init,
        members,
        Box::new(OsRandom),
        now(),
    )
    .map_err(|e| e.to_string())?;
    let socket = bind(file.bind)?;
    let traffic = interval(file.traffic_pps);
    let status = crate::up::status_refresh(file.status_interval_ms);
    let boot = boot_id();
    let mut seq = 0u64;
    let mut stats = Stats::default();
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; ESP_HEADER_LEN + TRAFFIC_LEN + MAX_OVERHEAD];
    let mut next_traffic = now();
    let mut next_status = now() + status;
    let name = format!("member{}", file.index);
    while !term.load(Ordering::Relaxed) {
        let t = now();
        let mut wake = next_status;
        if traffic.is_some() {
            wake = wake.min(next_traffic);
        }
        if let Some(p) = member.poll_timeout() {
            wake = wake.min(p);
        }
        if let Some((n, from)) = recv(&socket, &mut buf, wake.saturating_sub(t)) {
            match member.handle_datagram(now(), &mut buf[..n]) {
                Incoming::Data { packet, .. } => {
                    stats
                        .flows
                        .entry(from.to_string())
                        .or_default()
                        .on_packet(packet);
                }
                Incoming::Control { .. } => {}
                Incoming::Dropped(r) => stats.drop(r),
            }
        }
        let t = now();
        if member.poll_timeout().is_some_and(|p| p <= t) {
            member.handle_timeout(t);
        }
        if let Some(every) = traffic
            && next_traffic <= t
        {
            next_traffic = t + every;
            traffic_packet(&mut out, boot, seq);
            if let Ok(n) = member.seal(&mut out, TRAFFIC_LEN, NextHeader::Ipv4) {
                seq += 1;
                stats.sent += 1;
                let bytes = out[..n].to_vec();
                for (j, peer) in file.peers.iter().enumerate() {
                    if j != usize::from(file.index) {
                        send(&socket, &mut stats, &bytes, Some(*peer));
                    }
                }
            }
        }
        while let Some(tx) = member.poll_transmit() {
            send(&socket, &mut stats, &tx.contents, Some(file.controller));
        }
        while member.poll_event().is_some() {}
        if next_status <= t {
            next_status = t + status;
            let extra = format!(",\"state\":\"{:?}\"", member.state());
            print(&stats.line("group-member", &name, member.generation(), &extra, false));
        }
    }
    let extra = format!(",\"state\":\"{:?}\"", member.state());
    print(&stats.line("group-member", &name, member.generation(), &extra, true));
    Ok(())
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
