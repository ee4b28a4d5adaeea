//! The status document of a running daemon: one data model, rendered as JSON for
//! `pktcrypt status` and `pktcrypt show --json` (serde), as text for `pktcrypt show`
//! ([`crate::show`]) and as Prometheus metrics ([`crate::metrics`]).
//!
//! A gateway (`pktcrypt up` with a data path) answers with a [`Gateway`], the gateway form of
//! the group controller with a [`Controller`]. Both carry [`SCHEMA_VERSION`]; version 1 keeps
//! every field of the hand-written JSON that came before it (version 0, without
//! `schema_version`), so readers of those fields go on working.
//!
//! Per-peer transfer counters ([`Transfer`]) stay monotonic across rekeys: the engine counts
//! per generation, and a [`Tracker`] adds the final counts of every generation dropped (which
//! the engine keeps for it: [`Tracker::take_retired`]) to those still held. Should a
//! generation vanish without them, its counts at the last sample (every [`SAMPLE_EVERY`], and
//! at every status document) stand in: never counted twice.

use pktcrypt_core::{Engine, PeerId, SaCounters, Slot, Time};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

/// The version of the documents' schema.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// The version of this build (`pktcrypt --version`, `pktcrypt_build_info`).
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often a [`Tracker`] samples the engine's per-generation counters between status
/// documents.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A status document, as read back by `pktcrypt show`.
#[derive(Clone, Debug)]
pub(crate) enum Document {
    /// A gateway with a data path (server, client, group member).
    Gateway(Box<Gateway>),
    /// The gateway form of a group controller.
    Controller(Box<Controller>),
}

impl Document {
    /// Parses a status document (JSON): a controller's by its `role`, else a gateway's.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("status is not JSON: {e}"))?;
        let controller = value.get("role").and_then(serde_json::Value::as_str)
            == Some(crate::config::RoleName::GroupController.as_str());
        let doc = if controller {
            serde_json::from_value(value).map(|c| Document::Controller(Box::new(c)))
        } else {
            serde_json::from_value(value).map(|g| Document::Gateway(Box::new(g)))
        };
        doc.map_err(|e| format!("status document: {e}"))
    }

    /// The document as JSON (one line, or pretty-printed), fields in the order of the model.
    pub(crate) fn to_json(&self, pretty: bool) -> String {
        let json = match (self, pretty) {
            (Document::Gateway(g), false) => serde_json::to_string(g),
            (Document::Gateway(g), true) => serde_json::to_string_pretty(g),
            (Document::Controller(c), false) => serde_json::to_string(c),
            (Document::Controller(c), true) => serde_json::to_string_pretty(c),
        };
        json.unwrap_or_default()
    }
}

/// The status of a gateway with a data path (`pktcrypt up`, role server, client or
/// group-member).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Gateway {
    /// [`SCHEMA_VERSION`].
    #[serde(default)]
    pub(crate) schema_version: u32,
    /// The gateway's name (`name` in its file).
    pub(crate) name: String,
    /// Its role: `server`, `client` or `group-member`.
    #[serde(default)]
    pub(crate) role: String,
    /// The daemon's version.
    #[serde(default)]
    pub(crate) version: String,
    /// Seconds since the daemon started.
    #[serde(default)]
    pub(crate) uptime_s: f64,
    /// The plaintext interface.
    #[serde(default)]
    pub(crate) inner: String,
    /// The ESP interface.
    #[serde(default)]
    pub(crate) outer: String,
    /// The outer address.
    #[serde(default = "unspecified")]
    pub(crate) local: IpAddr,
    /// The ESP-in-UDP port.
    #[serde(default)]
    pub(crate) port: u16,
    /// A key server forwarding between its clients' prefixes.
    #[serde(default)]
    pub(crate) hub: bool,
    /// The AEAD implementation.
    pub(crate) backend: String,
    /// Times the workers' keys were republished.
    pub(crate) key_changes: u64,
    /// Control-plane events (key installs, rollouts, ...).
    pub(crate) events: u64,
    /// The peers, in the order of the file.
    pub(crate) peers: Vec<Peer>,
    /// A group member's group state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<MemberGroup>,
    /// The workers' counters, summed.
    pub(crate) workers: Workers,
    /// Each worker's counters and the UDP source port it sends from, in worker order.
    #[serde(default)]
    pub(crate) per_worker: Vec<WorkerStatus>,
    /// Packets dropped, by reason (workers and control thread; non-zero reasons only).
    pub(crate) drops: BTreeMap<String, u64>,
    /// The XDP programs' counters.
    pub(crate) xdp: Xdp,
    /// Failed updates of the outer XDP program's SPI map.
    pub(crate) spi_map_errors: u64,
    /// A group member's retirements of another member's previous generation on evidence.
    pub(crate) retired_on_evidence: u64,
    /// A key server's reports of two parties using one client's init key.
    pub(crate) duplicate_clients: u64,
}

/// One worker of a gateway: its queue, the outer UDP source port of the packets it seals,
/// and its counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WorkerStatus {
    /// Its index, the RX queue it serves on both interfaces.
    pub(crate) worker: u32,
    /// The outer UDP source port of the packets it seals.
    pub(crate) source_port: u16,
    /// Its counters.
    #[serde(flatten)]
    pub(crate) counters: Workers,
}

fn unspecified() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

/// One peer of a gateway.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Peer {
    /// Its name (`name` of its entry in the file).
    pub(crate) peer: String,
    /// Its outer address.
    pub(crate) address: IpAddr,
    /// The networks behind it.
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
    /// The newest generation held (0: the init key only).
    #[serde(default)]
    pub(crate) generation: u64,
    /// The generation this gateway transmits under.
    #[serde(default)]
    pub(crate) tx_generation: u64,
    /// The newest generation's SPI.
    #[serde(default)]
    pub(crate) spi: String,
    /// The newest generation's suite.
    #[serde(default)]
    pub(crate) suite: String,
    /// Whether the newest generation came from a key exchange.
    #[serde(default)]
    pub(crate) exchanged: bool,
    /// Seconds since the newest generation was installed.
    #[serde(default)]
    pub(crate) installed_s_ago: f64,
    /// Seconds until the next rekey, when this gateway times it.
    #[serde(default)]
    pub(crate) next_rekey_s: Option<f64>,
    /// Who times rekeys, and how (for the text when `next_rekey_s` is unknown).
    #[serde(default)]
    pub(crate) rekey_timing: String,
    /// Seconds since a packet from this peer was last opened (to the sampling interval);
    /// `None`: none since the daemon started.
    #[serde(default)]
    pub(crate) last_received_s_ago: Option<f64>,
    /// Traffic with this peer since the daemon started, over every generation.
    #[serde(default)]
    pub(crate) transfer: Transfer,
    /// Every generation held.
    pub(crate) sas: Vec<Sa>,
}

/// Traffic counters over every generation, monotonic across rekeys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Transfer {
    /// Packets sealed (sequence numbers used, control messages included).
    pub(crate) sent_packets: u64,
    /// Bytes sealed.
    pub(crate) sent_bytes: u64,
    /// Packets opened.
    pub(crate) received_packets: u64,
    /// Bytes opened.
    pub(crate) received_bytes: u64,
    /// Packets under this peer's SPIs that failed authentication.
    pub(crate) auth_failures: u64,
    /// Packets under this peer's SPIs refused as replays (or too old).
    pub(crate) replays: u64,
}

impl Transfer {
    fn add(&mut self, c: &SaCounters) {
        self.sent_packets += c.packets_sealed;
        self.sent_bytes += c.bytes_sealed;
        self.received_packets += c.packets_opened;
        self.received_bytes += c.bytes_opened;
        self.auth_failures += c.auth_failures;
        self.replays += c.replays;
    }
}

/// One generation held for a peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Sa {
    /// `Init`, `Newest` or `Previous`.
    pub(crate) slot: String,
    /// Its number.
    pub(crate) generation: u64,
    /// Its SPI.
    pub(crate) spi: String,
    /// Its suite.
    pub(crate) suite: String,
    /// Whether this gateway transmits under it.
    pub(crate) transmitting: bool,
    /// Whether it came from a key exchange.
    pub(crate) exchanged: bool,
    /// Seconds since it was installed (to 0.1 s).
    pub(crate) age_s: f64,
    /// Packets sealed under it.
    pub(crate) sealed: u64,
    /// Packets opened under it.
    pub(crate) opened: u64,
    /// Bytes sealed under it.
    pub(crate) bytes_sealed: u64,
    /// Bytes opened under it.
    pub(crate) bytes_opened: u64,
    /// Authentication failures under its SPI.
    pub(crate) auth_failures: u64,
    /// Replays under its SPI.
    pub(crate) replays: u64,
    /// Packets the outer XDP program steered under its SPI.
    pub(crate) xdp_packets: u64,
}

/// A group member's group state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MemberGroup {
    /// Its index in `[[members]]`.
    pub(crate) index: u16,
    /// The controller's control address.
    pub(crate) controller: String,
    /// `UpdateCompleted`, `DistributionCompleted` or `InTransit`.
    pub(crate) state: String,
    /// The newest group generation held.
    pub(crate) generation: u64,
    /// The group generation it transmits under.
    pub(crate) tx_generation: u64,
    /// Every group generation held.
    pub(crate) held: Vec<u64>,
    /// What it sealed under its own sender keys (for every member), over every generation.
    #[serde(default)]
    pub(crate) sent: Transfer,
}

macro_rules! workers {
    ($($(#[doc = $doc:literal])+ $field:ident,)*) => {
        /// The workers' counters, summed over the workers.
        #[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
        pub(crate) struct Workers {
            $($(#[doc = $doc])+ #[serde(default)] pub(crate) $field: u64,)*
        }

        impl Workers {
            /// `(name, help, value)` of every counter, in order.
            pub(crate) fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($field), concat!($($doc),+).trim(), self.$field),)*]
            }

            /// Sets the counter called `name` (a name of [`Self::fields`]).
            pub(crate) fn set(&mut self, name: &str, value: u64) {
                match name {
                    $(stringify!($field) => self.$field = value,)*
                    _ => {}
                }
            }
        }
    };
}

workers! {
    /// Frames received on the inner interface.
    rx_inner,
    /// Frames received on the outer interface.
    rx_outer,
    /// Packets sealed and queued on the outer interface.
    tx_outer,
    /// Packets opened and queued on the inner interface.
    tx_inner,
    /// Bytes of inner packets sealed.
    bytes_sealed,
    /// Bytes of inner packets opened.
    bytes_opened,
    /// Opened packets handed to the kernel (no neighbour entry yet).
    to_kernel,
    /// Opened packets sealed again for another peer (a hub).
    hairpinned,
    /// Control messages passed to the control thread.
    control,
    /// ICMP / ICMPv6 too-big answers sent.
    icmp_too_big,
    /// Too-big answers not sent: beyond the rate limit.
    icmp_rate_limited,
    /// ESP-in-UDP that arrived fragmented (not reassembled: dropped).
    fragmented,
    /// Inner packets too big for the tunnel and not answered (IPv4 without DF).
    too_big,
    /// Inner packets to no protected prefix or to a peer without keys.
    no_route,
    /// Packets to a peer whose next hop's MAC is unknown.
    no_neighbour,
    /// Decrypted packets the inner policy refused.
    policy,
    /// Frames that were not parseable Ethernet/IP.
    malformed,
    /// Packets that did not fit the TX ring.
    tx_full,
    /// Inner packets the engine refused to seal.
    seal_failed,
    /// Thread CPU time (ns) of the workers' loop iterations that had packets.
    busy_ns,
    /// Frames steered to a worker's AF_XDP sockets that the kernel dropped for want of a
    /// buffer (no frame in a fill ring, or too big) before the worker saw them.
    socket_rx_dropped,
    /// Frames dropped because a worker's RX ring was full (the worker did not keep up).
    socket_rx_ring_full,
    /// Times a worker's fill ring had no frame for a packet (also in socket_rx_dropped).
    socket_fill_ring_empty,
    /// Descriptors the kernel refused (a bug if not zero).
    socket_invalid_descs,
}

/// The XDP programs' counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Xdp {
    /// The inner interface's program.
    pub(crate) inner: XdpSide,
    /// The outer interface's program.
    pub(crate) outer: XdpSide,
}

/// One XDP program's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct XdpSide {
    /// `Native` or `Generic`.
    pub(crate) mode: String,
    /// Redirected into an AF_XDP socket.
    pub(crate) steered: u64,
    /// Passed to the kernel untouched.
    pub(crate) passed: u64,
    /// Headers not parseable within bounds (passed).
    pub(crate) malformed: u64,
    /// No socket on the receiving queue: protected-prefix packets dropped (fail closed).
    pub(crate) no_socket: u64,
    /// ESP-in-UDP under an SPI not held: dropped.
    pub(crate) unknown_spi: u64,
    /// NAT-keepalives to the ESP port: dropped.
    pub(crate) keepalive: u64,
    /// The non-ESP marker to the ESP port: dropped.
    pub(crate) not_esp: u64,
    /// Payloads to the ESP port too short for ESP: dropped.
    pub(crate) truncated: u64,
    /// SPIs in the program's SPI map.
    pub(crate) spis: u64,
}

impl XdpSide {
    /// `(reason, count)` of the packets the program on `side` dropped: the SPI check's, and on
    /// the inner side `no_socket` (protected traffic without a worker socket: fail closed; on
    /// the outer side such ESP-in-UDP is passed to the kernel, not dropped).
    pub(crate) fn dropped(&self, side: &str) -> Vec<(&'static str, u64)> {
        let mut out = vec![
            ("unknown_spi", self.unknown_spi),
            ("keepalive", self.keepalive),
            ("not_esp", self.not_esp),
            ("truncated", self.truncated),
        ];
        if side == "inner" {
            out.push(("no_socket", self.no_socket));
        }
        out
    }
}

/// The status of the gateway form of a group controller (`role = "group-controller"`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Controller {
    /// [`SCHEMA_VERSION`].
    #[serde(default)]
    pub(crate) schema_version: u32,
    /// Its name.
    pub(crate) name: String,
    /// `group-controller`.
    pub(crate) role: String,
    /// The daemon's version.
    #[serde(default)]
    pub(crate) version: String,
    /// Seconds since the daemon started.
    #[serde(default)]
    pub(crate) uptime_s: f64,
    /// The address of its control socket.
    #[serde(default = "unspecified")]
    pub(crate) local: IpAddr,
    /// Its control port.
    #[serde(default)]
    pub(crate) control_port: u16,
    /// The AEAD implementation.
    #[serde(default)]
    pub(crate) backend: String,
    /// The newest group generation.
    pub(crate) generation: u64,
    /// No rollout in progress.
    pub(crate) idle: bool,
    /// Rollouts started.
    pub(crate) rollouts: u64,
    /// Control-plane events.
    pub(crate) events: u64,
    /// Seconds until the next timed rollout, if one is scheduled.
    #[serde(default)]
    pub(crate) next_rekey_s: Option<f64>,
    /// How rollouts are timed.
    #[serde(default)]
    pub(crate) rekey_timing: String,
    /// The members, in index order.
    pub(crate) members: Vec<Member>,
    /// Datagrams dropped, by reason (non-zero reasons only).
    pub(crate) drops: BTreeMap<String, u64>,
}

/// A member, as its controller sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Member {
    /// Its index.
    pub(crate) index: u16,
    /// Its name.
    pub(crate) name: String,
    /// Its outer address.
    pub(crate) address: IpAddr,
    /// It takes part in rollouts.
    pub(crate) active: bool,
    /// Taken out of the group in the file (`removed = true`).
    #[serde(default)]
    pub(crate) removed: bool,
    /// The newest group generation sent to it.
    pub(crate) generation: u64,
    /// The highest phase it acknowledged for that generation (`none`: none yet).
    pub(crate) acked: String,
}

/// What a [`Tracker`] keeps per peer.
#[derive(Debug, Default)]
struct PeerTotals {
    /// The counters of the generations seen retired.
    retired: Transfer,
    /// The generations held at the last sample: SPI and counters.
    live: Vec<(u32, SaCounters)>,
    /// Packets opened, at the last sample (over every generation).
    received: u64,
    /// When `received` last grew.
    last_received: Option<Time>,
}

/// Per-peer counters that stay monotonic across rekeys, when a peer last sent, and the
/// daemon's start: the state behind the status documents that the engine does not keep.
#[derive(Debug)]
pub(crate) struct Tracker {
    started: Time,
    next_sample: Time,
    peers: HashMap<PeerId, PeerTotals>,
    /// The endpoint keeps the counters of the generations it drops for us.
    keeping: bool,
}

impl Tracker {
    /// A tracker of a daemon started at `now`.
    pub(crate) fn new(now: Time) -> Self {
        Self {
            started: now,
            next_sample: now,
            peers: HashMap::new(),
            keeping: false,
        }
    }

    /// Adds the final counters of the generations `endpoint` dropped since the last call (the
    /// first call asks it to keep them from then on). Call it before sampling.
    pub(crate) fn take_retired(&mut self, endpoint: &mut pktcrypt_core::control::Endpoint) {
        if !self.keeping {
            endpoint.keep_retired_counters();
            self.keeping = true;
        }
        for r in endpoint.take_retired_counters() {
            let entry = self.peers.entry(r.peer).or_default();
            entry.retired.add(&r.counters);
            let spi = r.info.spi.get();
            entry.live.retain(|(s, _)| *s != spi);
        }
    }

    /// Time since the daemon started.
    pub(crate) fn uptime(&self, now: Time) -> Duration {
        now.saturating_sub(self.started)
    }

    /// Samples `peers` if [`SAMPLE_EVERY`] passed since the last sample.
    pub(crate) fn sample_due(
        &mut self,
        engine: &Engine,
        peers: impl Iterator<Item = PeerId>,
        now: Time,
    ) {
        if now < self.next_sample {
            return;
        }
        self.next_sample = now + SAMPLE_EVERY;
        for peer in peers {
            self.sample(engine, peer, now);
        }
    }

    /// Samples `peer` now: its transfer over every generation since the daemon started, and
    /// when a packet from it was last opened.
    pub(crate) fn sample(
        &mut self,
        engine: &Engine,
        peer: PeerId,
        now: Time,
    ) -> (Transfer, Option<Time>) {
        let entry = self.peers.entry(peer).or_default();
        let mut live = Vec::with_capacity(3);
        for slot in [Slot::Init, Slot::Newest, Slot::Previous] {
            if let (Some(info), Some((counters, _))) = (
                engine.generation(peer, slot),
                engine.sa_counters(peer, slot),
            ) {
                live.push((info.spi.get(), counters));
            }
        }
        for (spi, counters) in &entry.live {
            // Gone without its final counters (the last sample stands in), or held again under
            // the same SPI but counting from zero: another SA.
            let same = live
                .iter()
                .find(|(s, _)| s == spi)
                .is_some_and(|(_, now)| !went_back(counters, now));
            if !same {
                entry.retired.add(counters);
            }
        }
        entry.live = live;
        let mut total = entry.retired;
        for (_, counters) in &entry.live {
            total.add(counters);
        }
        if total.received_packets > entry.received {
            entry.received = total.received_packets;
            entry.last_received = Some(now);
        }
        (total, entry.last_received)
    }
}

/// Whether any counter of `now` is below `before`'s (a new SA, not the one sampled before).
fn went_back(before: &SaCounters, now: &SaCounters) -> bool {
    now.packets_sealed < before.packets_sealed
        || now.bytes_sealed < before.bytes_sealed
        || now.packets_opened < before.packets_opened
        || now.bytes_opened < before.bytes_opened
        || now.auth_failures < before.auth_failures
        || now.replays < before.replays
}

/// Seconds to 0.1 s, for the documents (their JSON stays short and stable).
pub(crate) fn tenths(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// The drop counts as the documents hold them: non-zero reasons by label.
pub(crate) fn drops(
    counts: impl Iterator<Item = (pktcrypt_core::DropReason, u64)>,
) -> BTreeMap<String, u64> {
    counts
        .filter(|(_, n)| *n != 0)
        .map(|(r, n)| (r.label().to_string(), n))
        .collect()
}

/// How a role times its rekeys, and when the next one of `peer` is due if this side knows.
pub(crate) fn next_rekey(
    endpoint: &pktcrypt_core::control::Endpoint,
    peer: PeerId,
    now: Time,
) -> (Option<f64>, String) {
    use pktcrypt_core::control::{Machine, jittered_by};
    let engine = endpoint.engine();
    match endpoint.machine() {
        Machine::Server(s) => {
            let c = s.config();
            let Some(interval) = c.rekey_interval else {
                return (None, "on request or rekey triggers only".into());
            };
            let timing = format!(
                "every {} ± {} %, at the client's next proof",
                human_duration(interval),
                f64::from(c.rekey_jitter_permille) / 10.0
            );
            match engine.installed(peer, Slot::Newest) {
                Some((info, at)) => {
                    let due = at
                        + jittered_by(interval, c.rekey_jitter_permille, u64::from(info.spi.get()));
                    (Some(tenths(due.saturating_sub(now))), timing)
                }
                None => (None, format!("{timing}; no generation yet")),
            }
        }
        Machine::Client(c) => match c.next_update() {
            Some(at) => (
                Some(tenths(at.saturating_sub(now))),
                "client-timed (update_interval_ms)".into(),
            ),
            None => (
                None,
                "timed by the key server (and rekey triggers)".to_string(),
            ),
        },
        Machine::Member(_) => (None, "timed by the group controller".into()),
        Machine::Controller(c) => match c.next_rekey() {
            Some(at) => (
                Some(tenths(at.saturating_sub(now))),
                "rekey_interval_ms, jittered".into(),
            ),
            None => (None, "on membership changes only".into()),
        },
    }
}

/// `1h 2m 3s`, `4.5s`, `250ms`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h {}m {}s", s / 3600, s % 3600 / 60, s % 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else if d >= Duration::from_secs(1) {
        let t = tenths(d);
        if t.fract() == 0.0 {
            format!("{t:.0}s")
        } else {
            format!("{t:.1}s")
        }
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_fields_round_trip_by_name() {
        let mut w = Workers::default();
        for (i, (name, help, _)) in Workers::default().fields().into_iter().enumerate() {
            assert!(!help.is_empty(), "{name}");
            w.set(name, i as u64 + 1);
        }
        let values: Vec<u64> = w.fields().iter().map(|(_, _, v)| *v).collect();
        assert_eq!(values, (1..=24).collect::<Vec<u64>>());
        assert_eq!((w.busy_ns, w.socket_invalid_descs), (20, 24));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_millis(4500)), "4.5s");
        assert_eq!(human_duration(Duration::from_secs(60)), "1m 0s");
        assert_eq!(human_duration(Duration::from_secs(3723)), "1h 2m 3s");
    }
}
