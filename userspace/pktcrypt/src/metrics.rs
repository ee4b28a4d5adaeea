//! Prometheus metrics of a status document ([`crate::status`]), through `prometheus-client`
//! in the Prometheus text format (version 0.0.4): every family with `# HELP` and `# TYPE`,
//! counters ending in `_total`, base units in the names (`_seconds`, `_bytes`).
//!
//! Per-peer counters (`pktcrypt_peer_*_total{peer}`) are the status document's
//! [`crate::status::Transfer`]: summed over every generation, so they never go back at a rekey;
//! the generations are gauges (`pktcrypt_peer_generation{peer}`, `pktcrypt_sa_generation{peer,
//! slot}`), never labels of a counter.

use crate::status::{Controller, Gateway, Transfer, VERSION, XdpSide};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;

/// The `Content-Type` of the metrics endpoint.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The metrics of a gateway.
pub(crate) fn gateway(doc: &Gateway) -> String {
    encode(Metrics::Gateway(Box::new(doc.clone())))
}

/// The metrics of a group controller.
pub(crate) fn controller(doc: &Controller) -> String {
    encode(Metrics::Controller(Box::new(doc.clone())))
}

fn encode(metrics: Metrics) -> String {
    let mut registry = Registry::with_prefix("pktcrypt");
    registry.register_collector(Box::new(metrics));
    let mut out = String::new();
    // Writing to a String cannot fail; a collector error would leave a partial text.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// A document as a `prometheus-client` collector (a snapshot per scrape).
#[derive(Debug)]
enum Metrics {
    Gateway(Box<Gateway>),
    Controller(Box<Controller>),
}

/// Writes families: one descriptor, then its samples.
struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Families<'_> {
    /// A counter family: `name` (without `_total`), in `unit` if any.
    fn counter<'l, V>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels<'l>, V)>,
    ) -> fmt::Result
    where
        ConstCounter<V>: EncodeMetric,
    {
        self.family(
            name,
            help,
            unit,
            MetricType::Counter,
            samples,
            ConstCounter::new,
        )
    }

    /// A gauge family.
    fn gauge<'l, V>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels<'l>, V)>,
    ) -> fmt::Result
    where
        ConstGauge<V>: EncodeMetric,
    {
        self.family(
            name,
            help,
            unit,
            MetricType::Gauge,
            samples,
            ConstGauge::new,
        )
    }

    fn family<'l, V, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        metric_type: MetricType,
        samples: impl IntoIterator<Item = (Labels<'l>, V)>,
        make: impl Fn(V) -> M,
    ) -> fmt::Result {
        let samples: Vec<(Labels<'l>, V)> = samples.into_iter().collect();
        if samples.is_empty() {
            return Ok(());
        }
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, unit.as_ref(), metric_type)?;
        for (labels, value) in samples {
            // No labels: no braces (the label list writes nothing).
            make(value).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// `pktcrypt_build_info{version, role, backend} 1`.
    fn build_info(&mut self, role: &str, backend: &str) -> fmt::Result {
        let mut metric = self.encoder.encode_descriptor(
            "build",
            "The pktcrypt build and configuration (value 1).",
            None,
            MetricType::Info,
        )?;
        let labels: Labels<'_> = vec![("version", VERSION), ("role", role), ("backend", backend)];
        metric.encode_info(&labels)
    }
}

/// `peer="NAME"`.
fn peer(p: &crate::status::Peer) -> Labels<'_> {
    vec![("peer", p.peer.as_str())]
}

/// `member="NAME"`.
fn member(m: &crate::status::Member) -> Labels<'_> {
    vec![("member", m.name.as_str())]
}

/// A per-peer counter of [`Transfer`]: name, help, unit, the value.
type TransferFamily = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&Transfer) -> u64,
);

/// One sample without labels.
fn one<V>(v: V) -> [(Labels<'static>, V); 1] {
    [(Vec::new(), v)]
}

impl Collector for Metrics {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut f = Families { encoder };
        match self {
            Metrics::Gateway(g) => encode_gateway(&mut f, g),
            Metrics::Controller(c) => encode_controller(&mut f, c),
        }
    }
}

fn encode_gateway(f: &mut Families<'_>, g: &Gateway) -> fmt::Result {
    f.build_info(&g.role, &g.backend)?;
    f.gauge(
        "uptime",
        "Time since the daemon started.",
        Some(Unit::Seconds),
        one(g.uptime_s),
    )?;
    f.counter(
        "key_changes",
        "Times the workers' keys were republished.",
        None,
        one(g.key_changes),
    )?;
    f.counter(
        "events",
        "Control-plane events (key installs, retirements, rollouts, ...).",
        None,
        one(g.events),
    )?;

    // Per peer: monotonic counters over every generation, generations as gauges.
    let transfer: [TransferFamily; 6] = [
        (
            "peer_sent_packets",
            "Packets sealed for the peer (sequence numbers used), over every generation.",
            None,
            |t| t.sent_packets,
        ),
        (
            "peer_sent",
            "Bytes sealed for the peer, over every generation.",
            Some(Unit::Bytes),
            |t| t.sent_bytes,
        ),
        (
            "peer_received_packets",
            "Packets from the peer opened, over every generation.",
            None,
            |t| t.received_packets,
        ),
        (
            "peer_received",
            "Bytes from the peer opened, over every generation.",
            Some(Unit::Bytes),
            |t| t.received_bytes,
        ),
        (
            "peer_auth_failures",
            "Packets under the peer's SPIs that failed authentication.",
            None,
            |t| t.auth_failures,
        ),
        (
            "peer_replays",
            "Packets under the peer's SPIs refused by the anti-replay window.",
            None,
            |t| t.replays,
        ),
    ];
    for (name, help, unit, get) in transfer {
        f.counter(
            name,
            help,
            unit,
            g.peers.iter().map(|p| (peer(p), get(&p.transfer))),
        )?;
    }
    f.gauge(
        "peer_generation",
        "The newest key generation held for the peer (0: the init key only).",
        None,
        g.peers.iter().map(|p| (peer(p), p.generation)),
    )?;
    f.gauge(
        "peer_tx_generation",
        "The key generation this gateway transmits to the peer under.",
        None,
        g.peers.iter().map(|p| (peer(p), p.tx_generation)),
    )?;
    f.gauge(
        "peer_exchanged",
        "1 if the peer's newest generation came from a key exchange (forward secret).",
        None,
        g.peers.iter().map(|p| (peer(p), i64::from(p.exchanged))),
    )?;
    f.gauge(
        "peer_key_age",
        "Time since the peer's newest generation was installed.",
        Some(Unit::Seconds),
        g.peers.iter().map(|p| (peer(p), p.installed_s_ago)),
    )?;
    f.gauge(
        "peer_next_rekey",
        "Time until the peer's next timed rekey (only when this gateway times it).",
        Some(Unit::Seconds),
        g.peers
            .iter()
            .filter_map(|p| p.next_rekey_s.map(|s| (peer(p), s))),
    )?;
    f.gauge(
        "peer_last_received",
        "Time since a packet from the peer was last opened (sampled every 100 ms).",
        Some(Unit::Seconds),
        g.peers
            .iter()
            .filter_map(|p| p.last_received_s_ago.map(|s| (peer(p), s))),
    )?;
    let sas = || {
        g.peers.iter().flat_map(|p| {
            p.sas.iter().map(move |s| {
                (
                    vec![("peer", p.peer.as_str()), ("slot", s.slot.as_str())],
                    s,
                )
            })
        })
    };
    f.gauge(
        "sa_generation",
        "The generation in each slot held for a peer (Init, Newest, Previous).",
        None,
        sas().map(|(l, s)| (l, s.generation)),
    )?;
    f.gauge(
        "sa_exchanged",
        "1 if the generation in the slot came from a key exchange.",
        None,
        sas().map(|(l, s)| (l, i64::from(s.exchanged))),
    )?;

    if let Some(group) = &g.group {
        f.gauge(
            "group_generation",
            "The newest group generation held.",
            None,
            one(group.generation),
        )?;
        f.gauge(
            "group_tx_generation",
            "The group generation this member transmits under.",
            None,
            one(group.tx_generation),
        )?;
        f.counter(
            "group_sent_packets",
            "Packets sealed under this member's own sender keys, over every generation.",
            None,
            one(group.sent.sent_packets),
        )?;
        f.counter(
            "group_sent",
            "Bytes sealed under this member's own sender keys, over every generation.",
            Some(Unit::Bytes),
            one(group.sent.sent_bytes),
        )?;
    }

    // The workers.
    for (name, help, value) in g.workers.fields() {
        match name {
            "busy_ns" => f.counter(
                "worker_busy",
                "Thread CPU time of the workers' loop iterations that had packets.",
                Some(Unit::Seconds),
                one(value as f64 / 1e9),
            )?,
            "bytes_sealed" => f.counter(
                "worker_sealed",
                "Bytes of inner packets sealed.",
                Some(Unit::Bytes),
                one(value),
            )?,
            "bytes_opened" => f.counter(
                "worker_opened",
                "Bytes of inner packets opened.",
                Some(Unit::Bytes),
                one(value),
            )?,
            _ => f.counter(&format!("worker_{name}"), help, None, one(value))?,
        }
    }
    drops(f, &g.drops)?;

    // The XDP programs, fail-closed drops (no_socket) included.
    let sides: [(&str, &XdpSide); 2] = [("inner", &g.xdp.inner), ("outer", &g.xdp.outer)];
    f.counter(
        "xdp_steered",
        "Packets the XDP program redirected to an AF_XDP socket.",
        None,
        sides.iter().map(|(s, x)| (vec![("side", *s)], x.steered)),
    )?;
    f.counter(
        "xdp_passed",
        "Packets the XDP program passed to the kernel.",
        None,
        sides.iter().map(|(s, x)| (vec![("side", *s)], x.passed)),
    )?;
    f.counter(
        "xdp_malformed",
        "Packets whose headers the XDP program could not parse (passed).",
        None,
        sides.iter().map(|(s, x)| (vec![("side", *s)], x.malformed)),
    )?;
    f.counter(
        "xdp_dropped",
        "Packets the XDP program dropped, by reason (no_socket, inner side: protected traffic \
         without a worker socket, fail closed; unknown_spi, keepalive, not_esp, truncated: the \
         SPI check).",
        None,
        sides.iter().flat_map(|(s, x)| {
            x.dropped(s)
                .into_iter()
                .map(move |(reason, n)| (vec![("side", *s), ("reason", reason)], n))
        }),
    )?;
    f.counter(
        "xdp_no_socket",
        "Packets the XDP program matched but found no AF_XDP socket for on their queue \
         (inner: dropped, fail closed; outer: passed to the kernel).",
        None,
        sides.iter().map(|(s, x)| (vec![("side", *s)], x.no_socket)),
    )?;
    f.gauge(
        "xdp_spis",
        "SPIs in the XDP program's SPI map.",
        None,
        sides.iter().map(|(s, x)| (vec![("side", *s)], x.spis)),
    )?;
    f.gauge(
        "xdp_native",
        "1 if the XDP program runs in native (driver) mode, 0 in generic mode.",
        None,
        sides
            .iter()
            .map(|(s, x)| (vec![("side", *s)], i64::from(x.mode == "Native"))),
    )?;
    f.counter(
        "spi_map_errors",
        "Failed updates of the outer XDP program's SPI map.",
        None,
        one(g.spi_map_errors),
    )?;
    f.counter(
        "retired_on_evidence",
        "Other members' previous generations retired on traffic evidence (group members).",
        None,
        one(g.retired_on_evidence),
    )?;
    f.counter(
        "duplicate_clients",
        "Reports of two parties using one client's init key (key servers).",
        None,
        one(g.duplicate_clients),
    )
}

fn encode_controller(f: &mut Families<'_>, c: &Controller) -> fmt::Result {
    f.build_info(&c.role, &c.backend)?;
    f.gauge(
        "uptime",
        "Time since the daemon started.",
        Some(Unit::Seconds),
        one(c.uptime_s),
    )?;
    f.gauge(
        "group_generation",
        "The newest group generation.",
        None,
        one(c.generation),
    )?;
    f.counter(
        "group_rollouts",
        "Group rollouts started.",
        None,
        one(c.rollouts),
    )?;
    f.gauge(
        "group_active_members",
        "Members taking part in rollouts.",
        None,
        one(c.members.iter().filter(|m| m.active).count() as u64),
    )?;
    f.gauge(
        "group_next_rekey",
        "Time until the next timed rollout.",
        Some(Unit::Seconds),
        c.next_rekey_s.map(|s| (Vec::new(), s)),
    )?;
    f.counter("events", "Control-plane events.", None, one(c.events))?;
    f.gauge(
        "group_member_active",
        "1 if the member takes part in rollouts.",
        None,
        c.members.iter().map(|m| (member(m), i64::from(m.active))),
    )?;
    f.gauge(
        "group_member_generation",
        "The newest group generation sent to the member.",
        None,
        c.members.iter().map(|m| (member(m), m.generation)),
    )?;
    drops(f, &c.drops)
}

/// `pktcrypt_drops_total{reason}` for every reason, zeros included.
fn drops(f: &mut Families<'_>, drops: &std::collections::BTreeMap<String, u64>) -> fmt::Result {
    f.counter(
        "drops",
        "Packets dropped after the XDP program, by reason.",
        None,
        pktcrypt_core::DropReason::ALL.iter().map(|r| {
            (
                vec![("reason", r.label())],
                drops.get(r.label()).copied().unwrap_or(0),
            )
        }),
    )
}

#[cfg(test)]
#[path = "../tests/common/prometheus.rs"]
mod prometheus;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Member, MemberGroup, Peer, Sa, Workers, Xdp};
    use std::collections::BTreeMap;

    fn sample_gateway(sent: u64, generation: u64) -> Gateway {
        let sa = |slot: &str, generation: u64| Sa {
            slot: slot.into(),
            generation,
            spi: "0x00001000".into(),
            suite: "aes-256-gcm".into(),
            transmitting: slot == "Newest",
            exchanged: slot != "Init",
            age_s: 1.5,
            sealed: 3,
            opened: 4,
            bytes_sealed: 300,
            bytes_opened: 400,
            auth_failures: 0,
            replays: 0,
            xdp_packets: 4,
        };
        let peer = |name: &str| Peer {
            peer: name.into(),
            address: "192.0.2.1".parse().expect("address"),
            prefixes: vec!["10.1.0.0/24".into()],
            generation,
            tx_generation: generation,
            spi: "0x00001000".into(),
            suite: "aes-256-gcm".into(),
            exchanged: true,
            installed_s_ago: 1.5,
            next_rekey_s: Some(58.5),
            rekey_timing: "every 1m ± 10 %".into(),
            last_received_s_ago: Some(0.2),
            transfer: Transfer {
                sent_packets: sent,
                sent_bytes: sent * 100,
                received_packets: 7,
                received_bytes: 700,
                auth_failures: 1,
                replays: 2,
            },
            sas: vec![
                sa("Init", 0),
                sa("Newest", generation),
                sa("Previous", generation - 1),
            ],
        };
        let mut drops = BTreeMap::new();
        drops.insert("auth_failed".to_string(), 1);
        Gateway {
            schema_version: crate::status::SCHEMA_VERSION,
            name: "gw\"B\\".into(),
            role: "group-member".into(),
            version: VERSION.into(),
            uptime_s: 12.5,
            inner: "in".into(),
            outer: "out".into(),
            local: "192.0.2.2".parse().expect("address"),
            port: 4500,
            hub: false,
            backend: "ring".into(),
            key_changes: 3,
            events: 4,
            peers: vec![peer("gwA"), peer("gw \"C\"\n")],
            group: Some(MemberGroup {
                index: 0,
                controller: "192.0.2.100:4501".into(),
                state: "UpdateCompleted".into(),
                generation,
                tx_generation: generation,
                held: vec![generation],
                sent: Transfer::default(),
            }),
            workers: Workers {
                busy_ns: 1_500_000_000,
                ..Workers::default()
            },
            per_worker: Vec::new(),
            drops,
            xdp: Xdp::default(),
            spi_map_errors: 0,
            retired_on_evidence: 0,
            duplicate_clients: 0,
        }
    }

    #[test]
    fn gateway_metrics_are_valid_prometheus_text() {
        let text = gateway(&sample_gateway(10, 5));
        let scrape = prometheus::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            scrape.value("pktcrypt_peer_sent_packets_total", &[("peer", "gwA")]),
            Some(10.0)
        );
        assert_eq!(
            scrape.value("pktcrypt_peer_generation", &[("peer", "gwA")]),
            Some(5.0)
        );
        assert_eq!(
            scrape.value("pktcrypt_worker_busy_seconds_total", &[]),
            Some(1.5)
        );
        assert_eq!(
            scrape.value("pktcrypt_build_info", &[("version", VERSION)]),
            Some(1.0)
        );
        assert_eq!(
            scrape.value(
                "pktcrypt_xdp_dropped_total",
                &[("side", "inner"), ("reason", "no_socket")]
            ),
            Some(0.0)
        );
        assert_eq!(
            scrape.value("pktcrypt_drops_total", &[("reason", "auth_failed")]),
            Some(1.0)
        );
        // A label value with quotes, a backslash and a newline is escaped, not broken.
        assert_eq!(
            scrape.value("pktcrypt_peer_generation", &[("peer", "gw \"C\"\n")]),
            Some(5.0)
        );
        assert!(text.contains("# TYPE pktcrypt_peer_sent_bytes_total counter"));
        assert!(text.contains("# TYPE pktcrypt_uptime_seconds gauge"));
    }

    #[test]
    fn controller_metrics_are_valid_prometheus_text() {
        let doc = Controller {
            schema_version: crate::status::SCHEMA_VERSION,
            name: "ctl".into(),
            role: "group-controller".into(),
            version: VERSION.into(),
            uptime_s: 3.0,
            local: "192.0.2.100".parse().expect("address"),
            control_port: 4501,
            backend: "default".into(),
            generation: 9,
            idle: true,
            rollouts: 9,
            events: 30,
            next_rekey_s: None,
            rekey_timing: "on membership changes only".into(),
            members: vec![Member {
                index: 0,
                name: "gwA".into(),
                address: "192.0.2.1".parse().expect("address"),
                active: true,
                removed: false,
                generation: 9,
                acked: "UpdateCompleted".into(),
            }],
            drops: BTreeMap::new(),
        };
        let text = controller(&doc);
        let scrape = prometheus::check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            scrape.value("pktcrypt_group_member_generation", &[("member", "gwA")]),
            Some(9.0)
        );
        assert_eq!(
            scrape.value("pktcrypt_group_rollouts_total", &[]),
            Some(9.0)
        );
    }

    #[test]
    fn the_checker_refuses_what_prometheus_would() {
        for bad in [
            "pktcrypt_x_total 1\n",
            "# HELP pktcrypt_x_total x\n# TYPE pktcrypt_x_total counter\npktcrypt_x_total one\n",
            "# HELP pktcrypt_x x\n# TYPE pktcrypt_x counter\npktcrypt_x 1\n",
            "# HELP pktcrypt_x_total x\n# TYPE pktcrypt_x_total counter\npktcrypt_x_total{a=\"1} 1\n",
            "# HELP pktcrypt_x_total x\n# TYPE pktcrypt_x_total counter\npktcrypt_x_total -1\n",
            "# HELP pktcrypt_x x\n# TYPE pktcrypt_x gauge\npktcrypt_x{a=\"1\"} 1\npktcrypt_x{a=\"1\"} 2\n",
        ] {
            assert!(prometheus::check(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn per_peer_counters_do_not_depend_on_the_generation() {
        // The generation is a gauge: a rekey changes no counter's labels.
        let before = prometheus::check(&gateway(&sample_gateway(10, 5))).expect("valid");
        let after = prometheus::check(&gateway(&sample_gateway(12, 6))).expect("valid");
        for (name, labels) in before.counters() {
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let (b, a) = (before.value(&name, &labels), after.value(&name, &labels));
            assert!(a.is_some(), "{name}{labels:?} vanished after a rekey");
            assert!(a >= b, "{name}{labels:?} went back: {b:?} -> {a:?}");
        }
    }
}
