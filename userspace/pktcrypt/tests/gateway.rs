//! End to end through real interfaces: three sites in network namespaces (scripts/topology.sh),
//! gateways running `pktcrypt up` with the XDP program and AF_XDP workers, gwB the key server and
//! gwA, gwC its clients. Needs root; the gateways load the XDP object embedded in the binary, or
//! the one in `PKTCRYPT_XDP_OBJECT` if set.
//!
//! One test, in phases (they share the topology): ping and IPv6 ping through the tunnel, a site
//! to site path through the hub (A → B → C), a TCP bulk transfer, a capture on the wire showing
//! only ESP-in-UDP, bad input sent to the key server's outer interface (replayed, forged,
//! unknown-SPI, truncated, non-ESP, keepalive: each dropped and counted under its reason while
//! traffic goes on; the last four by the XDP program), an unknown-SPI flood dropped in XDP before
//! any worker sees it, a core image without keys, unrelated traffic untouched, a changed
//! neighbour entry followed at once (rtnetlink notifications), the ICMP "fragmentation needed"
//! answer, key
//! rotation every second under continuous traffic with no loss beyond a no-rekey run, recovery
//! after the key server and a client gateway are killed and restarted, and a clean detach.
//! `PKTCRYPT_E2E_SECONDS` sets the length of the rekey run (default 60).

mod common;

use common::{BIN, Capture, Gateway, Topology, sh};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const P: &str = "pt-";

/// Run in the wire namespace: sniffs one live ESP-in-UDP packet from gwA to gwB on the bridge,
/// then sends gwB two exact copies (replays), a copy with a fresh sequence number (fails
/// authentication), an unknown SPI, a truncated packet, a non-ESP marker and a NAT-keepalive.
const ATTACKER: &str = r#"
import socket, struct, subprocess
subprocess.run(["ip", "link", "set", "br0", "promisc", "on"], check=True)
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sniff.bind(("br0", 0))
sniff.settimeout(10)
while True:
    f = sniff.recv(2048)
    if f[12:14] != b"\x08\x00" or f[23] != 17:
        continue
    ihl = (f[14] & 15) * 4
    udp = 14 + ihl
    src, dst = socket.inet_ntoa(f[26:30]), socket.inet_ntoa(f[30:34])
    dport = struct.unpack("!H", f[udp + 2:udp + 4])[0]
    payload = f[udp + 8:udp + struct.unpack("!H", f[udp + 4:udp + 6])[0]]
    if (src, dst, dport) == ("192.0.2.1", "192.0.2.2", 4500) and len(payload) > 40:
        break
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.100", 0))
to = ("192.0.2.2", 4500)
s.sendto(payload, to)
s.sendto(payload, to)
spi, seq = struct.unpack("!II", payload[:8])
s.sendto(struct.pack("!II", spi, seq + 1000) + payload[8:], to)
s.sendto(struct.pack("!II", 0x7777_7777, 1) + bytes(40), to)
s.sendto(b"\x01\x02\x03", to)
s.sendto(b"\x00\x00\x00\x00ike", to)
s.sendto(b"\xff", to)
print("sent 7 bad packets built from spi %#x seq %d" % (spi, seq))
"#;

/// Run in the wire namespace: ESP-in-UDP under SPIs gwB never assigned, to gwB, as fast as one
/// socket sends them for 2 s (each SPI different); prints the number sent and the rate.
const SPI_FLOOD: &str = r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.100", 0))
to = ("192.0.2.2", 4500)
body = bytes(56)
n = 0
t0 = time.time()
end = t0 + 2
while time.time() < end:
    for _ in range(256):
        s.sendto(struct.pack("!II", 0x5000_0000 + n, 1) + body, to)
        n += 1
d = time.time() - t0
print("%d packets in %.1f s (%.0f/s)" % (n, d, n / d))
"#;

/// Run on hostA: 20 UDP datagrams to hostB as 10.3.0.2 (site C's prefix: spoofed), then 20 as
/// 10.1.0.77 (site A's own prefix), through a raw socket.
const SPOOF_SENDER: &str = r#"
import socket, struct, time
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for src in ["10.3.0.2", "10.1.0.77"]:
    for i in range(20):
        payload = b"spoof-test"
        udp = struct.pack("!HHHH", 40000, 5555, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton("10.2.0.2"))
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        r.sendto(ip + udp, ("10.2.0.2", 0))
        time.sleep(0.01)
print("sent")
"#;

/// Run on hostB: counts datagrams to UDP port 5555 per source for 3 s.
const SPOOF_LISTENER: &str = r#"
import socket, collections
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5555))
s.settimeout(3)
seen = collections.Counter()
try:
    while True:
        _, (src, _) = s.recvfrom(100)
        seen[src] += 1
except socket.timeout:
    pass
print(" ".join("%s %d" % kv for kv in sorted(seen.items())))
"#;

/// Run in gwB's namespace with `METRICS_ADDR SOCKET BIN`: opens an idle connection and starts
/// an endless request line (1 GiB, no newline) on the metrics port and on the status socket,
/// then scrapes the metrics and asks `BIN status` ten times; each must answer within a second.
const ENDPOINT_ATTACKER: &str = r#"
import socket, subprocess, sys, threading, time
host, port = sys.argv[1].split(":")
port = int(port)
sock, binary = sys.argv[2], sys.argv[3]
def tcp():
    return socket.create_connection((host, port), timeout=5)
def unix():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sock)
    return s
idle = [tcp(), unix()]
def flood(connect):
    try:
        s = connect()
        chunk = b"A" * (1 << 20)
        for _ in range(1024):
            s.sendall(chunk)
    except OSError:
        pass
for c in (tcp, unix):
    threading.Thread(target=flood, args=(c,), daemon=True).start()
time.sleep(1)
slow = []
for i in range(10):
    t = time.time()
    try:
        s = tcp()
        s.settimeout(1)
        s.sendall(b"GET /metrics HTTP/1.0" + bytes([13, 10, 13, 10]))
        body = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            body += b
        assert b"pktcrypt_worker_rx_outer_total" in body, body[:200]
    except Exception as e:
        slow.append("metrics %d: %r" % (i, e))
    d = time.time() - t
    if d > 1:
        slow.append("metrics %d took %.1f s" % (i, d))
    t = time.time()
    try:
        r = subprocess.run([binary, "status", "--socket", sock], capture_output=True, timeout=3)
        rc = r.returncode
    except subprocess.TimeoutExpired:
        rc = -1
    d = time.time() - t
    if rc != 0 or d > 1:
        slow.append("status %d: rc %d in %.1f s" % (i, rc, d))
    time.sleep(0.2)
print("all answered" if not slow else "; ".join(slow))
"#;

fn ns(name: &str, cmd: &str) -> (bool, String) {
    common::ns(P, name, cmd)
}

fn wait_ping(from: &str, to: &str, limit: Duration) -> Option<Duration> {
    common::wait_ping(P, from, to, limit)
}

fn ping_run(from: &str, to: &str, count: u32, interval: &str) -> (u64, u64) {
    common::ping_run(P, from, to, count, interval)
}

fn tx_generation(status: &Value, peer: &str) -> u64 {
    status["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["peer"] == peer)
        .and_then(|p| {
            p["sas"]
                .as_array()?
                .iter()
                .map(|s| s["generation"].as_u64().unwrap_or(0))
                .max()
        })
        .unwrap_or(0)
}

/// `object`: the `xdp_object` line, or "" (`common::xdp_object_line`).
fn write_configs(dir: &Path, object: &str, rekey_ms: u64) -> [PathBuf; 3] {
    let keys = std::fs::read_to_string(dir.join("keys.txt")).expect("keys");
    let keys: Vec<&str> = keys.lines().filter(|l| l.starts_with("pkc1-")).collect();
    let d = dir.display();
    let server = format!(
        "role = \"server\"\nname = \"gwB\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         status_socket = \"{d}/gwB.sock\"\nrekey_interval_ms = {rekey_ms}\nstatus_interval_ms = 0\n\
         prefixes = [\"10.2.0.0/24\", \"fd02::/64\"]\nhub = true\nmetrics = \"127.0.0.1:9477\"\n\n\
         [[clients]]\nname = \"gwA\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\", \"fd01::/64\"]\ninit_key = \"{}\"\n\n\
         [[clients]]\nname = \"gwC\"\naddress = \"192.0.2.3\"\nprefixes = [\"10.3.0.0/24\", \"fd03::/64\"]\ninit_key = \"{}\"\n\n\
         [[clients]]\nname = \"ghost\"\naddress = \"192.0.2.9\"\nprefixes = [\"10.9.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0], keys[1], keys[2]
    );
    let client = |name: &str, key: &str, other: &str, own: &str| {
        format!(
            "role = \"client\"\nname = \"{name}\"\ninner = \"in\"\nouter = \"out\"\n{object}\
             prefixes = [{own}]\n\
             status_socket = \"{d}/{name}.sock\"\nstatus_interval_ms = 0\nhello_interval_ms = 1000\n\
             request_timeout_ms = 200\nmax_backoff_ms = 1000\nmax_retries = 3\n\n\
             [server]\nname = \"gwB\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\", \"fd02::/64\", \"{other}\"]\ninit_key = \"{key}\"\n"
        )
    };
    let paths = [
        dir.join("gwB.toml"),
        dir.join("gwA.toml"),
        dir.join("gwC.toml"),
    ];
    std::fs::write(&paths[0], server).expect("write");
    std::fs::write(
        &paths[1],
        client(
            "gwA",
            keys[0],
            "10.3.0.0/24",
            "\"10.1.0.0/24\", \"fd01::/64\"",
        ),
    )
    .expect("write");
    std::fs::write(
        &paths[2],
        client(
            "gwC",
            keys[1],
            "10.1.0.0/24",
            "\"10.3.0.0/24\", \"fd03::/64\"",
        ),
    )
    .expect("write");
    paths
}

#[test]
fn gateways_carry_traffic_through_rekeys_and_restarts() {
    if !common::root_or_skip() {
        return;
    }
    let object = common::xdp_object_line();
    let seconds: u32 = std::env::var("PKTCRYPT_E2E_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = std::env::temp_dir().join(format!("pktcrypt-e2e-{}", std::process::id()));
    // A directory left by an earlier run with the same process id would hold its keys.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (ok, out) = sh(&format!(
        "{BIN} keygen --count 3 --out {}/keys.txt",
        dir.display()
    ));
    assert!(ok, "keygen: {out}");
    let _topology = Topology::up(P, 2);
    let [b_cfg, a_cfg, c_cfg] = write_configs(&dir, &object, 1000);
    let mut gw_b = Gateway::start(P, "gwB", b_cfg.clone(), &dir);
    let mut gw_a = Gateway::start(P, "gwA", a_cfg, &dir);
    let mut gw_c = Gateway::start(P, "gwC", c_cfg, &dir);

    // 1. The tunnel comes up; IPv4, IPv6, and site to site through the hub.
    let up = wait_ping("hostA", "10.2.0.2", Duration::from_secs(15));
    assert!(
        up.is_some(),
        "no ping through the tunnel; logs in {}",
        dir.display()
    );
    eprintln!("tunnel up after {up:?}");
    assert_eq!(ping_run("hostA", "10.2.0.2", 20, "0.05"), (20, 20));
    assert!(
        wait_ping("hostA", "fd02::2", Duration::from_secs(5)).is_some(),
        "IPv6"
    );
    assert_eq!(ping_run("hostA", "fd02::2", 10, "0.05"), (10, 10));
    assert!(wait_ping("hostC", "10.1.0.2", Duration::from_secs(10)).is_some());
    assert_eq!(
        ping_run("hostC", "10.1.0.2", 10, "0.05"),
        (10, 10),
        "C → B → A"
    );

    // A configured client that does not exist (192.0.2.9): its next hop never resolves, and
    // the key server says so in its log.
    std::thread::sleep(Duration::from_secs(2));
    let log = std::fs::read_to_string(dir.join("gwB.log")).expect("gwB log");
    assert!(
        log.lines()
            .any(|l| l.contains("next hop not in the neighbour table") && l.contains("ghost")),
        "no warning about the unresolvable client: {log}"
    );

    // 1b. The operator's view: `pktcrypt show` (text and JSON, the same document as
    // `pktcrypt status`), the Prometheus endpoint (checked by a strict reader and
    // prometheus-parse), and logs that name peers.
    let text = gw_b.show(&dir, false);
    eprintln!("pktcrypt show (gwB):\n{text}");
    for expected in [
        "gateway: gwB",
        "server (hub)",
        "inner in (XDP",
        "local address:",
        "peer: gwA",
        "peer: gwC",
        "peer: ghost",
        "prefixes:",
        "10.1.0.0/24, fd01::/64",
        "from a key exchange",
        "next rekey:",
        "last received:",
        "transfer:",
    ] {
        assert!(text.contains(expected), "show lacks {expected:?}:\n{text}");
    }
    let json_text = gw_b.show(&dir, true);
    eprintln!(
        "pktcrypt show --json (gwB), its first lines:\n{}",
        json_text.lines().take(70).collect::<Vec<_>>().join("\n")
    );
    let json: Value = serde_json::from_str(&json_text).expect("show --json");
    let status = gw_b.status(&dir);
    assert_eq!(json["schema_version"], 1);
    assert_eq!(status["schema_version"], 1);
    assert_eq!(json["role"], "server");
    let names = |v: &Value| -> Vec<String> {
        v["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["peer"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(names(&json), ["gwA", "gwC", "ghost"]);
    assert_eq!(names(&status), names(&json));
    let peer_a = &json["peers"][0];
    assert!(peer_a["generation"].as_u64().unwrap_or(0) >= 1, "{peer_a}");
    assert!(peer_a["next_rekey_s"].as_f64().is_some(), "{peer_a}");
    assert!(peer_a["last_received_s_ago"].as_f64().is_some(), "{peer_a}");
    assert!(peer_a["transfer"]["received_packets"].as_u64().unwrap_or(0) >= 40);
    assert!(
        json["peers"][2]["last_received_s_ago"].is_null(),
        "ghost sent nothing"
    );
    let client_view = gw_a.show(&dir, false);
    eprintln!("pktcrypt show (gwA):\n{client_view}");
    assert!(
        client_view.contains("peer: gwB") && client_view.contains("timed by the key server"),
        "{client_view}"
    );
    let (content_type, body) = common::scrape(P, "gwB", "127.0.0.1:9477");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let scrape =
        common::prometheus::check(&body).unwrap_or_else(|e| panic!("metrics of gwB: {e}\n{body}"));
    eprintln!(
        "metrics of gwB: {} families, {} samples, valid",
        scrape.types.len(),
        scrape.samples.len()
    );
    for (name, labels) in [
        ("pktcrypt_build_info", vec![("role", "server")]),
        ("pktcrypt_uptime_seconds", vec![]),
        (
            "pktcrypt_peer_received_packets_total",
            vec![("peer", "gwA")],
        ),
        ("pktcrypt_peer_sent_bytes_total", vec![("peer", "gwC")]),
        ("pktcrypt_peer_generation", vec![("peer", "ghost")]),
        ("pktcrypt_worker_busy_seconds_total", vec![]),
        ("pktcrypt_worker_rx_outer_total", vec![]),
        (
            "pktcrypt_xdp_dropped_total",
            vec![("side", "inner"), ("reason", "no_socket")],
        ),
        (
            "pktcrypt_xdp_dropped_total",
            vec![("side", "outer"), ("reason", "unknown_spi")],
        ),
        ("pktcrypt_drops_total", vec![("reason", "auth_failed")]),
    ] {
        assert!(
            scrape.value(name, &labels).is_some(),
            "no {name}{labels:?} in the metrics"
        );
    }
    assert!(
        scrape
            .value("pktcrypt_peer_received_packets_total", &[("peer", "gwA")])
            .unwrap_or(0.0)
            >= 40.0
    );
    let log = std::fs::read_to_string(dir.join("gwB.log")).expect("gwB log");
    assert!(
        !log.contains("PeerId("),
        "a log names a peer by its id: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("key minted") && l.contains("gwA")),
        "no key event naming gwA: {log}"
    );

    // 2. TCP bulk transfer, with a capture on the wire.
    let mut capture = Capture::start(P, dir.join("wire.pcap"));
    assert!(ns("hostB", "iperf3 -s -D -1").0, "iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out) = ns("hostA", "timeout 30 iperf3 -c 10.2.0.2 -t 3 -J");
    assert!(ok, "iperf3: {out}");
    let report: Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!(
        "TCP through the tunnel: {received} bytes, {:.0} Mbit/s",
        bps / 1e6
    );
    assert!(
        received > 1_000_000,
        "TCP transfer carried {received} bytes"
    );
    let _ = ping_run("hostA", "fd02::2", 3, "0.05");
    capture.stop();
    let esp = capture.count("udp port 4500");
    let clear = capture.count("net 10.0.0.0/8 or net fd00::/8");
    eprintln!("wire capture: {esp} ESP-in-UDP packets, {clear} with inner addresses in the clear");
    assert!(esp > 1000, "ESP packets on the wire: {esp}");
    assert_eq!(clear, 0, "plaintext inner traffic on the wire");

    // 2b. Bad input on the real outer interface: dropped, counted by reason, traffic goes on.
    let before_status = gw_b.status(&dir);
    let before = before_status["drops"].clone();
    let xdp_before = before_status["xdp"]["outer"].clone();
    let mut pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{P}hostA"),
            "ping",
            "-q",
            "-c",
            "60",
            "-i",
            "0.05",
        ])
        .arg("10.2.0.2")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ping");
    let (ok, out) = ns("wire", &format!("python3 -c '{ATTACKER}'"));
    let _ = pinger.wait();
    assert!(ok, "attacker: {out}");
    let after_status = gw_b.status(&dir);
    let after = after_status["drops"].clone();
    let xdp_after = after_status["xdp"]["outer"].clone();
    let grew = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    let xdp_grew =
        |k: &str| xdp_after[k].as_u64().unwrap_or(0) - xdp_before[k].as_u64().unwrap_or(0);
    eprintln!(
        "bad input: {out}; gwB drops before {before}, after {after}; outer XDP before \
         {xdp_before}, after {xdp_after}"
    );
    assert!(grew("replay") + grew("too_old") >= 2, "replayed copies");
    assert!(grew("auth_failed") >= 1, "auth_failed not counted: {after}");
    // What needs no key is dropped by the XDP program, before any worker sees it.
    assert!(xdp_grew("unknown_spi") >= 1, "unknown SPI: {xdp_after}");
    for reason in ["truncated", "not_esp", "keepalive"] {
        assert!(xdp_grew(reason) >= 1, "{reason} not counted: {xdp_after}");
    }
    assert_eq!(ping_run("hostA", "10.2.0.2", 10, "0.05"), (10, 10));

    // 2b'. An unknown-SPI flood, as fast as the attacker can send: dropped and counted by the
    // XDP program; the workers never see it (their receive counters stay where legitimate
    // traffic puts them).
    let before = gw_b.status(&dir);
    let (ok, out) = ns("wire", &format!("python3 -c '{SPI_FLOOD}'"));
    assert!(ok, "flood: {out}");
    let sent: u64 = out
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(300));
    let after = gw_b.status(&dir);
    let delta = |path: &[&str]| {
        let get = |v: &Value| {
            path.iter()
                .fold(v.clone(), |v, k| v[*k].clone())
                .as_u64()
                .unwrap_or(0)
        };
        get(&after) - get(&before)
    };
    let xdp_unknown = delta(&["xdp", "outer", "unknown_spi"]);
    let rx_outer = delta(&["workers", "rx_outer"]);
    let worker_unknown = delta(&["drops", "unknown_spi"]);
    eprintln!(
        "unknown-SPI flood: {out}; outer XDP dropped {xdp_unknown} as unknown_spi; workers \
         received {rx_outer} packets meanwhile, counted {worker_unknown} unknown SPIs"
    );
    assert!(sent > 10_000, "the flood sent {sent} packets");
    assert!(
        xdp_unknown * 10 >= sent * 9,
        "XDP counted {xdp_unknown} of {sent} unknown-SPI packets"
    );
    assert_eq!(worker_unknown, 0, "unknown-SPI packets reached the workers");
    assert!(
        rx_outer < 500,
        "the workers received {rx_outer} packets during the flood"
    );
    assert_eq!(ping_run("hostA", "10.2.0.2", 10, "0.05"), (10, 10));

    // 2c. Spoofed inner sources (RFC 4301 §5.2): hostA sends to hostB as 10.3.0.2 (site C):
    // gwB drops it as `policy`. The control: hostA as 10.1.0.77, an address of its own site
    // (which gwB accepts, so hostB's kernel takes foreign sources and the listener works).
    let before = gw_b.status(&dir)["workers"].clone();
    let listener = std::thread::spawn(|| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{P}hostB"),
                "python3",
                "-c",
                SPOOF_LISTENER,
            ])
            .output()
    });
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = ns("hostA", &format!("python3 -c '{SPOOF_SENDER}'"));
    assert!(ok, "spoofing sender: {out}");
    let heard = listener.join().expect("listener thread").expect("listener");
    let heard = String::from_utf8_lossy(&heard.stdout).to_string();
    let after = gw_b.status(&dir)["workers"].clone();
    let policy = after["policy"].as_u64().unwrap_or(0) - before["policy"].as_u64().unwrap_or(0);
    eprintln!("spoofed inner sources: hostB heard {heard:?}; gwB policy drops +{policy}");
    assert!(
        heard.contains("10.1.0.77 20"),
        "the control packets from hostA's own prefix did not arrive: {heard:?}"
    );
    assert!(
        !heard.contains("10.3.0.2"),
        "hostB received packets with a spoofed source of site C: {heard:?}"
    );
    assert!(policy >= 20, "gwB counted {policy} policy drops");
    // The kernel's counters of the workers' AF_XDP sockets are read (XDP_STATISTICS) and
    // reported; it never refused a descriptor of ours.
    for key in [
        "socket_rx_dropped",
        "socket_rx_ring_full",
        "socket_fill_ring_empty",
        "socket_invalid_descs",
    ] {
        assert!(after[key].is_u64(), "{key} missing from {after}");
    }
    assert_eq!(after["socket_invalid_descs"].as_u64(), Some(0), "{after}");

    // 2d. An idle gateway sleeps: with `status_interval_ms = 0` (no status lines) gwB's
    // control thread and workers together use under 5 % of a core over 5 s.
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = gw_b.cpu_time().expect("gwB cpu");
    std::thread::sleep(Duration::from_secs(5));
    let cpu1 = gw_b.cpu_time().expect("gwB cpu");
    let share = (cpu1 - cpu0).as_secs_f64() / 5.0;
    eprintln!("idle gwB: {:.1} % of a core", share * 100.0);
    assert!(
        share < 0.05,
        "idle gwB used {:.1} % of a core",
        share * 100.0
    );

    // 2e. The status and metrics endpoints cannot be hung or made to grow: a connection that
    // never sends and one sending a 1 GiB request line, on both; meanwhile every scrape and
    // `pktcrypt status` answers within a second, and gwB's memory stays bounded.
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let pid = gw_b.pid().expect("gwB pid");
    let rss0 = rss(pid);
    let sock = format!("{}/gwB.sock", dir.display());
    let (ok, out) = ns(
        "gwB",
        &format!("timeout 120 python3 -c '{ENDPOINT_ATTACKER}' 127.0.0.1:9477 {sock} {BIN}"),
    );
    let rss1 = rss(pid);
    eprintln!("endpoint attack: {out}; gwB RSS {rss0} kB -> {rss1} kB");
    assert!(ok, "endpoint attack: {out}");
    assert!(out.contains("all answered"), "{out}");
    assert!(
        rss1 < rss0 + 64 * 1024,
        "gwB grew from {rss0} kB to {rss1} kB"
    );
    // Status and keys on separate sockets, created with their final modes.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(dir.join(p))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!((mode("gwB.sock"), mode("gwB.keys.sock")), (0o660, 0o600));
    let (ok, out) = sh(&format!(
        "{BIN} export-keys --socket {}/gwB.sock",
        dir.display()
    ));
    assert!(
        ok && !out.contains("0x") && out.contains("keys socket"),
        "the status socket gave out keys: {out}"
    );
    let (ok, out) = sh(&format!(
        "{BIN} export-keys --socket {}/gwB.keys.sock",
        dir.display()
    ));
    assert!(ok && out.lines().count() >= 2, "export-keys: {out}");

    // 2f. A core image of the running key server (gcore, as root) holds none of the keys it
    // uses: neither the raw bytes nor the hex text of any exported key (AEAD key, and key with
    // salt), although export-keys just rendered them.
    let keys = common::exported_keys(&out);
    assert!(keys.len() >= 4, "keys exported: {out}");
    let (ok, gcore) = sh(&format!("gcore -o {}/core {pid}", dir.display()));
    let core = std::fs::read(dir.join(format!("core.{pid}")))
        .unwrap_or_else(|e| panic!("gcore wrote no core ({e}): {gcore}"));
    assert!(ok, "gcore: {gcore}");
    let found = common::find_keys(&core, &keys);
    eprintln!(
        "core image of gwB: {} bytes, {} keys searched in raw and hex forms, {} found",
        core.len(),
        keys.len(),
        found.len()
    );
    assert!(
        found.is_empty(),
        "key material in the core image {}/core.{pid}: {found:?}",
        dir.display()
    );
    let _ = std::fs::remove_file(dir.join(format!("core.{pid}")));

    // 3. Unrelated traffic on the same interfaces is untouched (ARP, the gateways' own IP).
    assert!(
        ns("gwA", "ping -c2 -i 0.2 -W1 192.0.2.2").0,
        "outer kernel traffic"
    );
    assert!(
        ns("hostA", "ping -c2 -i 0.2 -W1 10.1.0.1").0,
        "inner kernel traffic"
    );

    // 3b. Next hops follow the kernel's neighbour notifications, well within the 5 s full read:
    // a wrong permanent entry for gwB on gwA stops the tunnel (the bridge floods no unknown
    // unicast to the other gateways here), the right one brings it back.
    let (_, mac_b) = ns("gwB", "cat /sys/class/net/out/address");
    for cmd in [
        "bridge link set dev portB flood off",
        "bridge link set dev portC flood off",
    ] {
        assert!(ns("wire", cmd).0, "{cmd}");
    }
    assert!(
        ns(
            "gwA",
            "ip neigh replace 192.0.2.2 lladdr 02:00:00:00:00:99 dev out nud permanent"
        )
        .0
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        ping_run("hostA", "10.2.0.2", 3, "0.2").1,
        0,
        "traffic still sent to the MAC the neighbour table no longer has"
    );
    assert!(
        ns(
            "gwA",
            &format!(
                "ip neigh replace 192.0.2.2 lladdr {} dev out nud reachable",
                mac_b.trim()
            )
        )
        .0
    );
    let back = wait_ping("hostA", "10.2.0.2", Duration::from_secs(10));
    eprintln!("next hop corrected: traffic back after {back:?}");
    assert!(
        back.is_some_and(|d| d < Duration::from_secs(3)),
        "the corrected neighbour entry took {back:?}"
    );
    for cmd in [
        "bridge link set dev portB flood on",
        "bridge link set dev portC flood on",
    ] {
        assert!(ns("wire", cmd).0, "{cmd}");
    }

    // 4. Too big for the tunnel: ICMP "fragmentation needed" with the MTU that fits.
    let (_, out) = ns("hostA", "ping -c2 -i 0.3 -W1 -M do -s 1472 10.2.0.2");
    // Either ping prints the answer ("Frag needed ... mtu = N") or, once the kernel has taken
    // the MTU from it, refuses locally ("message too long, mtu=N"): both only come from our
    // ICMP answer (the veths' own MTU is 1500).
    let mtu_line = out.lines().find(|l| l.contains("mtu"));
    assert!(
        mtu_line.is_some_and(|l| l.contains("1436")),
        "no fragmentation-needed answer: {out}"
    );
    eprintln!("too big: {}", mtu_line.unwrap_or(""));
    assert_eq!(ping_run("hostA", "10.2.0.2", 5, "0.05"), (5, 5));

    // 5. Rekey every second under continuous traffic. The per-peer counters of the metrics
    // never go back across the rekeys (the generation is a gauge, not a label).
    let before = tx_generation(&gw_b.status(&dir), "gwA");
    let metrics_before = common::prometheus::check(&common::scrape(P, "gwB", "127.0.0.1:9477").1)
        .expect("metrics before the rekeys");
    let count = seconds * 100;
    let (sent, got) = ping_run("hostA", "10.2.0.2", count, "0.01");
    let after = tx_generation(&gw_b.status(&dir), "gwA");
    let metrics_after = common::prometheus::check(&common::scrape(P, "gwB", "127.0.0.1:9477").1)
        .expect("metrics after the rekeys");
    for (name, labels) in metrics_before.counters() {
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (b, a) = (
            metrics_before.value(&name, &labels),
            metrics_after.value(&name, &labels),
        );
        assert!(
            a.is_some() && a >= b,
            "{name}{labels:?} went back across rekeys: {b:?} -> {a:?}"
        );
    }
    let grew = |name: &str| {
        metrics_after.value(name, &[("peer", "gwA")]).unwrap_or(0.0)
            - metrics_before
                .value(name, &[("peer", "gwA")])
                .unwrap_or(0.0)
    };
    eprintln!(
        "metrics across the rekeys: pktcrypt_peer_generation{{peer=\"gwA\"}} +{}, \
         pktcrypt_peer_received_packets_total{{peer=\"gwA\"}} +{}, \
         pktcrypt_peer_sent_packets_total{{peer=\"gwA\"}} +{}",
        grew("pktcrypt_peer_generation"),
        grew("pktcrypt_peer_received_packets_total"),
        grew("pktcrypt_peer_sent_packets_total")
    );
    assert!(grew("pktcrypt_peer_generation") >= f64::from(seconds) / 2.0);
    // Every echo request gwB opened and every reply it sealed for gwA is counted, under
    // whichever generation (the engine keeps the final counters of those it drops: a key
    // server transmits under N-1 until the moment it mints N+1).
    for name in [
        "pktcrypt_peer_received_packets_total",
        "pktcrypt_peer_sent_packets_total",
    ] {
        assert!(
            grew(name) >= got as f64,
            "{name} grew {} for {got} pings answered",
            grew(name)
        );
    }
    assert!(
        after >= before + u64::from(seconds) / 2,
        "keys did not rotate: {before} → {after}"
    );
    if got < sent {
        // Compare with a run of the same length without rekeys: only loss both runs share is allowed.
        gw_b.kill();
        let b_norekey = dir.join("gwB-norekey.toml");
        let text = std::fs::read_to_string(&b_cfg)
            .expect("config")
            .replace("rekey_interval_ms = 1000", "rekey_interval_ms = 0");
        std::fs::write(&b_norekey, text).expect("write");
        gw_b.config = b_norekey;
        gw_b.spawn(&dir);
        assert!(wait_ping("hostA", "10.2.0.2", Duration::from_secs(30)).is_some());
        let (bs, bg) = ping_run("hostA", "10.2.0.2", count, "0.01");
        eprintln!("no-rekey run: {bs} sent, {bg} received");
        assert!(
            sent - got <= bs - bg,
            "rekeys lost {} packets, the no-rekey run {}",
            sent - got,
            bs - bg
        );
        gw_b.kill();
        gw_b.config = b_cfg.clone();
        gw_b.spawn(&dir);
        assert!(wait_ping("hostA", "10.2.0.2", Duration::from_secs(30)).is_some());
    }

    // 6. The key server restarts (losing every key), then a client gateway does.
    gw_b.kill();
    std::thread::sleep(Duration::from_secs(1));
    gw_b.spawn(&dir);
    let t = wait_ping("hostA", "10.2.0.2", Duration::from_secs(30));
    eprintln!("after the key server's restart, traffic back in {t:?}");
    assert!(t.is_some(), "no recovery after the key server restart");
    // The clients noticed the lost keys: a warning, naming their key server.
    let log = std::fs::read_to_string(dir.join("gwA.log")).expect("gwA log");
    let fallback = log
        .lines()
        .find(|l| l.contains("falling back to the init key"))
        .unwrap_or_else(|| panic!("no fallback logged by gwA: {log}"));
    eprintln!("gwA: {fallback}");
    assert!(
        fallback.contains("WARN") && fallback.contains("gwB"),
        "{fallback}"
    );
    assert!(wait_ping("hostC", "10.2.0.2", Duration::from_secs(30)).is_some());
    // Fail closed: gwA is killed (SIGKILL) while its kernel forwards and has a route to site B
    // (as a gateway with an upstream default route would): its XDP programs stay, find no
    // socket and drop the protected traffic. The wire shows no plaintext and hostB receives
    // nothing until the next `pktcrypt up`. (Before: the programs went with the process's bpf
    // links and the kernel forwarded hostA's packets to site B in the clear.)
    assert!(ns("gwA", "sysctl -qw net.ipv4.ip_forward=1").0);
    assert!(ns("gwA", "ip route add 10.2.0.0/24 via 192.0.2.2").0);
    gw_a.kill();
    let (_, links) = ns("gwA", "ip link show");
    let mut capture = Capture::start(P, dir.join("killed.pcap"));
    let (sent, received) = ping_run("hostA", "10.2.0.2", 20, "0.05");
    capture.stop();
    let clear = capture.count("net 10.0.0.0/8");
    eprintln!(
        "gwA killed with forwarding on: {received} of {sent} pings answered, {clear} packets with \
         inner addresses on the wire"
    );
    assert_eq!(clear, 0, "fail open after a kill: plaintext on the wire");
    assert_eq!(received, 0, "fail open after a kill: hostB answered");
    assert!(
        links.matches("xdp").count() >= 2,
        "a killed gateway must leave its XDP programs attached: {links}"
    );
    // With forwarding on, `pktcrypt up` refuses to start (naming the setting).
    let (ok, out) = ns(
        "gwA",
        &format!("timeout 10 {BIN} up --config {}", gw_a.config.display()),
    );
    assert!(!ok && out.contains("allow_forwarding"), "{out}");
    assert!(ns("gwA", "sysctl -qw net.ipv4.ip_forward=0").0);
    assert!(ns("gwA", "ip route del 10.2.0.0/24 via 192.0.2.2").0);
    gw_a.spawn(&dir);
    let t = wait_ping("hostA", "10.2.0.2", Duration::from_secs(30));
    eprintln!("after the client gateway's restart, traffic back in {t:?}");
    assert!(t.is_some(), "no recovery after the client restart");
    assert_eq!(ping_run("hostA", "10.2.0.2", 20, "0.05"), (20, 20));
    let st = gw_a.status(&dir);
    eprintln!("gwA status: {st}");
    // Protocol version 3, default pfs = "every-rekey": every generation held came from a hybrid
    // key exchange, and none is older than the restart.
    let dynamic: Vec<&Value> = st["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter_map(|p| p["sas"].as_array())
        .flatten()
        .filter(|s| s["slot"] != "Init")
        .collect();
    assert!(
        !dynamic.is_empty() && dynamic.iter().all(|s| s["exchanged"] == true),
        "generations not from a key exchange: {st}"
    );
    assert!(
        dynamic
            .iter()
            .all(|s| s["age_s"].as_f64().is_some_and(|a| a < 60.0))
    );

    // 7. A clean stop leaves the programs (fail closed); `pktcrypt down` removes them.
    for g in [&mut gw_a, &mut gw_b, &mut gw_c] {
        assert!(g.stop(), "{} did not stop cleanly", g.name);
        let (_, links) = ns(g.name, "ip link show");
        assert!(
            links.contains("xdp"),
            "{} detached on SIGTERM: {links}",
            g.name
        );
        let (ok, out) = ns(
            g.name,
            &format!("{BIN} down --config {}", g.config.display()),
        );
        assert!(ok, "pktcrypt down: {out}");
        let (_, links) = ns(g.name, "ip link show");
        assert!(
            !links.contains("xdp"),
            "{} left XDP attached: {links}",
            g.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
