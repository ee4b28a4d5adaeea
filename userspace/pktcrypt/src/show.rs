//! `pktcrypt show [--json]`: the operator's view of running gateways, like `wg show`. It asks
//! each daemon's status socket for its status document ([`crate::status`], the same as
//! `pktcrypt status`) and prints it as aligned text, or as pretty JSON.

use crate::cli::ShowArgs;
use crate::status::{Controller, Document, Gateway, Peer, Transfer, human_duration};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where gateways put their status sockets by default.
const RUN_DIR: &str = "/run/pktcrypt";

/// `pktcrypt show`.
pub(crate) fn run(args: &ShowArgs) -> Result<(), String> {
    if args.config.is_some() || args.socket.is_some() {
        let text = crate::up::query("status", args.config.as_deref(), args.socket.as_deref())?;
        let doc = Document::parse(&text).map_err(|e| unavailable(&text, e))?;
        print(&if args.json {
            doc.to_json(true)
        } else {
            text_of(&doc)
        });
        return Ok(());
    }
    // Every gateway with a status socket in the default place: JSON as an array.
    let sockets = status_sockets(Path::new(RUN_DIR));
    if sockets.is_empty() {
        return Err(format!(
            "no status socket in {RUN_DIR} (is `pktcrypt up` running? --config FILE or \
             --socket PATH names one elsewhere)"
        ));
    }
    let mut docs = Vec::new();
    let mut failed = Vec::new();
    for socket in &sockets {
        match crate::up::query("status", None, Some(socket))
            .and_then(|t| Document::parse(&t).map_err(|e| unavailable(&t, e)))
        {
            Ok(doc) => docs.push(doc),
            Err(e) => failed.push(format!("{}: {e}", socket.display())),
        }
    }
    if args.json {
        // An array of the documents, each in the order of its fields.
        let items: Vec<String> = docs.iter().map(|d| indent(&d.to_json(true))).collect();
        print(&format!("[\n{}\n]", items.join(",\n")));
    } else {
        let texts: Vec<String> = docs.iter().map(text_of).collect();
        print(&texts.join("\n"));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// `text` indented by two spaces (an array's items).
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The daemon answered something that is not a status document.
fn unavailable(text: &str, e: String) -> String {
    match text.trim() {
        "" => "no answer".to_string(),
        t if !t.starts_with('{') => t.to_string(),
        _ => e,
    }
}

#[allow(clippy::print_stdout)]
fn print(text: &str) {
    println!("{}", text.trim_end());
}

/// The status sockets in `dir` (not the keys sockets), sorted.
fn status_sockets(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "sock")
                && !p.to_string_lossy().ends_with(".keys.sock")
        })
        .collect();
    out.sort();
    out
}

/// A document as text.
pub(crate) fn text_of(doc: &Document) -> String {
    match doc {
        Document::Gateway(g) => gateway(g),
        Document::Controller(c) => controller(c),
    }
}

/// A block: a heading line, then `key: value` lines with the values aligned.
struct Block {
    heading: String,
    rows: Vec<(String, String)>,
}

impl Block {
    fn new(kind: &str, name: &str) -> Self {
        Self {
            heading: format!("{kind}: {name}"),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, key: &str, value: impl Into<String>) {
        self.rows.push((key.to_string(), value.into()));
    }

    fn render(&self, out: &mut String) {
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
        let _ = writeln!(out, "{}", self.heading);
        for (k, v) in &self.rows {
            let _ = writeln!(out, "  {:<width$} {v}", format!("{k}:"));
        }
    }
}

fn ago(s: f64) -> String {
    if s < 0.05 {
        return "just now".into();
    }
    format!("{} ago", human_duration(Duration::from_secs_f64(s)))
}

fn uptime(s: f64) -> String {
    human_duration(Duration::from_secs_f64(s.max(0.0)))
}

/// `1.21 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `a 1, b 2` of the non-zero counts, or `none`.
fn counts<'a>(items: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let parts: Vec<String> = items
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn transfer(t: &Transfer) -> String {
    format!(
        "{} received ({}), {} sent ({})",
        bytes(t.received_bytes),
        plural(t.received_packets, "packet", "packets"),
        bytes(t.sent_bytes),
        plural(t.sent_packets, "packet", "packets"),
    )
}

fn next_rekey(in_s: Option<f64>, timing: &str) -> String {
    match in_s {
        Some(s) if s > 0.0 => format!(
            "in {} ({timing})",
            human_duration(Duration::from_secs_f64(s))
        ),
        Some(_) => format!("due now ({timing})"),
        None if timing.is_empty() => "unknown".into(),
        None => format!("unknown here: {timing}"),
    }
}

fn gateway(g: &Gateway) -> String {
    let mut out = String::new();
    let mut b = Block::new("gateway", &g.name);
    b.row(
        "role",
        if g.hub {
            format!("{} (hub)", g.role)
        } else {
            g.role.clone()
        },
    );
    b.row(
        "interfaces",
        format!(
            "inner {} (XDP {}), outer {} (XDP {})",
            g.inner,
            g.xdp.inner.mode.to_lowercase(),
            g.outer,
            g.xdp.outer.mode.to_lowercase()
        ),
    );
    b.row("local address", g.local.to_string());
    b.row("port", g.port.to_string());
    b.row("uptime", uptime(g.uptime_s));
    b.row("version", format!("{} (backend {})", g.version, g.backend));
    b.row("key changes", g.key_changes.to_string());
    if let Some(group) = &g.group {
        b.row(
            "group",
            format!(
                "member {}, {}, generation {} (transmitting under {}), held {:?}",
                group.index, group.state, group.generation, group.tx_generation, group.held
            ),
        );
        b.row("controller", group.controller.clone());
        b.row(
            "group sent",
            format!(
                "{} ({})",
                bytes(group.sent.sent_bytes),
                plural(group.sent.sent_packets, "packet", "packets")
            ),
        );
    }
    b.row(
        "drops",
        counts(g.drops.iter().map(|(k, v)| (k.as_str(), *v))),
    );
    let w = &g.workers;
    b.row(
        "worker drops",
        counts([
            ("policy", w.policy),
            ("no_route", w.no_route),
            ("no_neighbour", w.no_neighbour),
            ("too_big", w.too_big),
            ("fragmented", w.fragmented),
            ("malformed", w.malformed),
            ("tx_full", w.tx_full),
            ("seal_failed", w.seal_failed),
            ("icmp_rate_limited", w.icmp_rate_limited),
        ]),
    );
    b.row(
        "socket drops",
        counts([
            ("rx_dropped", w.socket_rx_dropped),
            ("rx_ring_full", w.socket_rx_ring_full),
            ("fill_ring_empty", w.socket_fill_ring_empty),
            ("invalid_descs", w.socket_invalid_descs),
        ]),
    );
    let xdp: Vec<String> = [("inner", &g.xdp.inner), ("outer", &g.xdp.outer)]
        .iter()
        .filter_map(|(side, x)| {
            let c = counts(x.dropped(side));
            (c != "none").then(|| format!("{side} {c}"))
        })
        .collect();
    b.row(
        "xdp drops",
        if xdp.is_empty() {
            "none".into()
        } else {
            xdp.join("; ")
        },
    );
    if g.spi_map_errors > 0 {
        b.row("spi map errors", g.spi_map_errors.to_string());
    }
    if g.duplicate_clients > 0 {
        b.row("duplicate clients", g.duplicate_clients.to_string());
    }
    b.render(&mut out);
    for p in &g.peers {
        out.push('\n');
        peer(p, g.group.is_some()).render(&mut out);
    }
    out
}

fn peer(p: &Peer, group: bool) -> Block {
    let mut b = Block::new("peer", &p.peer);
    b.row("address", p.address.to_string());
    b.row(
        "prefixes",
        if p.prefixes.is_empty() {
            "none".into()
        } else {
            p.prefixes.join(", ")
        },
    );
    let origin = if p.generation == 0 {
        "the init key"
    } else if p.exchanged {
        "from a key exchange"
    } else if group {
        "a group key from the controller"
    } else {
        "without a key exchange"
    };
    b.row(
        "generation",
        format!("{} (SPI {}, {}, {origin})", p.generation, p.spi, p.suite),
    );
    if !group && p.tx_generation != p.generation {
        b.row("transmitting", format!("generation {}", p.tx_generation));
    }
    b.row("installed", ago(p.installed_s_ago));
    b.row("next rekey", next_rekey(p.next_rekey_s, &p.rekey_timing));
    b.row(
        "last received",
        p.last_received_s_ago
            .map_or_else(|| "never (since start)".into(), ago),
    );
    b.row(
        "transfer",
        if group {
            // A member seals under its own sender keys for every member: see `group sent`.
            format!(
                "{} received ({})",
                bytes(p.transfer.received_bytes),
                plural(p.transfer.received_packets, "packet", "packets")
            )
        } else {
            transfer(&p.transfer)
        },
    );
    let drops: Vec<String> = [
        (
            p.transfer.auth_failures,
            "authentication failure",
            "authentication failures",
        ),
        (p.transfer.replays, "replay", "replays"),
    ]
    .iter()
    .filter(|(n, _, _)| *n > 0)
    .map(|(n, one, many)| plural(*n, one, many))
    .collect();
    b.row(
        "drops",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(", ")
        },
    );
    b
}

fn controller(c: &Controller) -> String {
    let mut out = String::new();
    let mut b = Block::new("controller", &c.name);
    b.row("role", c.role.clone());
    b.row("local address", c.local.to_string());
    b.row("control port", c.control_port.to_string());
    b.row("uptime", uptime(c.uptime_s));
    b.row("version", format!("{} (backend {})", c.version, c.backend));
    b.row(
        "generation",
        format!(
            "{} ({})",
            c.generation,
            if c.idle {
                "idle"
            } else {
                "rollout in progress"
            }
        ),
    );
    b.row("rollouts", c.rollouts.to_string());
    b.row("next rollout", next_rekey(c.next_rekey_s, &c.rekey_timing));
    b.row(
        "drops",
        counts(c.drops.iter().map(|(k, v)| (k.as_str(), *v))),
    );
    b.render(&mut out);
    for m in &c.members {
        out.push('\n');
        let mut b = Block::new("member", &m.name);
        b.row("index", m.index.to_string());
        b.row("address", m.address.to_string());
        b.row(
            "active",
            match (m.active, m.removed) {
                (true, _) => "yes",
                (false, true) => "no (removed in the file)",
                (false, false) => "no (evicted, left or not joined yet)",
            },
        );
        b.row(
            "generation",
            if m.acked == "none" {
                format!("{} sent, not acknowledged yet", m.generation)
            } else {
                format!("{} sent, acknowledged {}", m.generation, m.acked)
            },
        );
        b.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.00 MiB");
        assert_eq!(ago(0.25), "250ms ago");
        assert_eq!(ago(0.01), "just now");
        assert_eq!(next_rekey(Some(12.0), "every 1m"), "in 12s (every 1m)");
        assert_eq!(
            next_rekey(None, "timed by the key server"),
            "unknown here: timed by the key server"
        );
    }

    #[test]
    fn blocks_align_their_values() {
        let mut b = Block::new("peer", "gwA");
        b.row("address", "192.0.2.1");
        b.row("last received", "1s ago");
        let mut out = String::new();
        b.render(&mut out);
        assert_eq!(
            out,
            "peer: gwA\n  address:       192.0.2.1\n  last received: 1s ago\n"
        );
    }
}
