//! One peer over every core: the client gateway's two workers seal its traffic from a UDP source
//! port each (4500 and 4501), the key server's two workers both open it (2-queue veths,
//! `scripts/topology.sh`), rekeys go on every second under that traffic (the server's control
//! messages reach the client at its ESP port, never at a worker's port), and with
//! `source_ports = "single"` every packet leaves from the ESP port. Needs root.
//!
//! Which RX queue a frame reaches on a veth is the queue it was sent on at the other end
//! (`veth_xmit` takes the skb's queue mapping as the peer's RX queue; an AF_XDP socket sends on
//! its own queue). Through the topology's bridge the kernel picks the egress queue with
//! `netdev_pick_tx`: a frame whose queue mapping looks like a recorded RX queue (every frame an
//! AF_XDP socket on queue 1 sent) keeps that queue, so the UDP ports do not decide there and on
//! this kernel one peer's packets all reached gwB's queue 0 (measured; a NIC's RSS hashes the
//! ports instead). So the test of the receiving side connects the two gateways' outer veths
//! directly (2 queues): gwA's worker *q* reaches gwB's queue *q*, and both of gwB's workers open
//! the one peer's packets through one SA and one replay window.

mod common;

use common::{BIN, Gateway, Topology, ns, sh, wait_ping};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const P: &str = "ps-";

/// Sends UDP from hostA to hostB from 64 source ports (64 inner flows, which hostA's veth
/// spreads over gwA's two inner queues and so over both workers), `count` datagrams each.
fn flows(count: u32) {
    let script = format!(
        "import socket\n\
         socks = []\n\
         for port in range(40000, 40064):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.bind(('10.1.0.2', port))\n\
         \x20   socks.append(s)\n\
         for i in range({count}):\n\
         \x20   for s in socks:\n\
         \x20       s.sendto(bytes(200), ('10.2.0.2', 9))\n"
    );
    let (ok, out) = ns(P, "hostA", &format!("python3 -c \"{script}\""));
    assert!(ok, "traffic: {out}");
}

/// `extra`: lines for both files (`source_ports = ...`, `replay_window = ...`).
fn config(dir: &Path, keys: &[String], extra: &str) -> (PathBuf, PathBuf) {
    let object = common::xdp_object_line();
    let d = dir.display();
    let server = format!(
        "role = \"server\"\nname = \"gwB\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         status_socket = \"{d}/gwB.sock\"\nrekey_interval_ms = 1000\nstatus_interval_ms = 0\n\
         prefixes = [\"10.2.0.0/24\"]\n{extra}\n\
         [[clients]]\nname = \"gwA\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0]
    );
    let client = format!(
        "role = \"client\"\nname = \"gwA\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         prefixes = [\"10.1.0.0/24\"]\nstatus_socket = \"{d}/gwA.sock\"\nstatus_interval_ms = 0\n\
         hello_interval_ms = 1000\nrequest_timeout_ms = 200\nmax_backoff_ms = 1000\n{extra}\n\
         [server]\nname = \"gwB\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0]
    );
    let (b, a) = (dir.join("gwB.toml"), dir.join("gwA.toml"));
    std::fs::write(&b, server).expect("write");
    std::fs::write(&a, client).expect("write");
    (b, a)
}

/// `per_worker[q][field]` of a status document.
fn per_worker(status: &Value, field: &str) -> Vec<u64> {
    status["per_worker"]
        .as_array()
        .expect("per_worker")
        .iter()
        .map(|w| w[field].as_u64().expect(field))
        .collect()
}

fn generation(status: &Value) -> u64 {
    status["peers"][0]["generation"].as_u64().unwrap_or(0)
}

/// The outer UDP source ports of gwA's ESP packets to gwB seen on the wire bridge while
/// `traffic` runs.
fn wire_source_ports(dir: &Path, traffic: impl FnOnce()) -> Vec<u16> {
    let pcap = dir.join("wire.pcap");
    let mut dump = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{P}wire"),
            "tcpdump",
            "-i",
            "br0",
            "-n",
            "-w",
        ])
        .arg(&pcap)
        .args(["udp and src host 192.0.2.1 and dst port 4500"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_secs(1));
    traffic();
    std::thread::sleep(Duration::from_millis(500));
    let _ = sh(&format!("kill -INT {}", dump.id()));
    let _ = dump.wait();
    let (_, out) = sh(&format!(
        "tcpdump -n -r {} 2>/dev/null | sed -n 's/.*192\\.0\\.2\\.1\\.\\([0-9]*\\) > .*/\\1/p' | sort -un",
        pcap.display()
    ));
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn one_peer_is_opened_by_every_worker() {
    if !common::root_or_skip() {
        return;
    }
    let (dir, keys) = common::dir_with_keys("spread", 1);
    let _topology = Topology::up(P, 2);
    // gwA's two workers take sequence numbers of one SA for their batches: one preempted
    // between taking them and sending falls behind the other (CI saw 490 `too_old` at the
    // default 1024 on this 2-core machine), so the largest window, as the operator guide
    // advises for one busy peer over several workers.
    let (b_cfg, a_cfg) = config(&dir, &keys, "replay_window = 8192\n");
    let mut gw_b = Gateway::start(P, "gwB", b_cfg, &dir);
    let mut gw_a = Gateway::start(P, "gwA", a_cfg, &dir);
    assert!(
        wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(15)).is_some(),
        "no tunnel; logs in {}",
        dir.display()
    );

    // Every worker has its port: 4500 + q.
    let a = gw_a.status(&dir);
    assert_eq!(per_worker(&a, "source_port"), [4500, 4501], "{a}");

    let before_a = gw_a.status(&dir);
    let before_b = gw_b.status(&dir);
    let ports = wire_source_ports(&dir, || flows(100));
    let after_a = gw_a.status(&dir);
    let after_b = gw_b.status(&dir);
    let delta = |after: &Value, before: &Value, field: &str| -> Vec<u64> {
        per_worker(after, field)
            .into_iter()
            .zip(per_worker(before, field))
            .map(|(a, b)| a - b)
            .collect()
    };
    let sealed = delta(&after_a, &before_a, "tx_outer");
    let received = delta(&after_b, &before_b, "rx_outer");
    let opened = delta(&after_b, &before_b, "bytes_opened");
    eprintln!(
        "6400 datagrams: gwA workers sealed {sealed:?}, wire source ports {ports:?}; \
         gwB workers received {received:?}, opened bytes {opened:?}"
    );
    assert!(
        sealed.iter().all(|&n| n > 0),
        "both of gwA's workers seal: {sealed:?}"
    );
    assert_eq!(
        ports,
        [4500, 4501],
        "one source port per sending worker on the wire"
    );
    // Through the bridge gwB's queue is not chosen by the ports (see the module docs): what
    // arrived is opened, by one worker or two.
    assert!(received.iter().sum::<u64>() > 0 && opened.iter().sum::<u64>() > 0);
    // Nothing lost to the replay window: two flows of one SA interleave within it (8192).
    let drops = &after_b["drops"];
    assert!(
        drops.get("replay").is_none() && drops.get("too_old").is_none(),
        "drops: {drops}"
    );

    // The key server's control messages keep reaching the client while its data comes from
    // two ports (rekey every second): generations advance and the tunnel stays up.
    let g0 = generation(&gw_b.status(&dir));
    let seconds = std::env::var("PKTCRYPT_E2E_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5u64);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        flows(10);
    }
    let g1 = generation(&gw_b.status(&dir));
    let ga = generation(&gw_a.status(&dir));
    eprintln!("generations: gwB {g0} -> {g1}, gwA {ga}, over {seconds} s of two-port traffic");
    assert!(g1 >= g0 + seconds / 2, "rekeys stalled: {g0} -> {g1}");
    assert!(ga + 1 >= g1, "the client fell behind: gwA {ga}, gwB {g1}");
    assert!(
        wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(5)).is_some(),
        "tunnel down after the rekeys"
    );

    // `source_ports = "single"`: every worker from the ESP port, as before.
    assert!(gw_a.stop() && gw_b.stop(), "clean stop");
    let (b_cfg, a_cfg) = config(&dir, &keys, "source_ports = \"single\"\n");
    gw_b.config = b_cfg;
    gw_a.config = a_cfg;
    gw_b.spawn(&dir);
    gw_a.spawn(&dir);
    assert!(
        wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(15)).is_some(),
        "no tunnel with single source ports"
    );
    assert_eq!(per_worker(&gw_a.status(&dir), "source_port"), [4500, 4500]);
    let ports = wire_source_ports(&dir, || flows(20));
    assert_eq!(
        ports,
        [4500],
        "one source port with source_ports = \"single\""
    );
    let _ = BIN;
}

/// Namespaces `sd-hostA ─ sd-gwA ═ sd-gwB ─ sd-hostB`, every veth with 2 queues, the outer
/// veth direct between the gateways (192.0.2.1 / .2); removed on drop.
struct Direct;

const D: &str = "sd-";

impl Direct {
    fn up() -> Self {
        let d = Direct;
        let script = format!(
            "set -e\n\
             for n in hostA gwA gwB hostB; do ip netns del {D}$n 2>/dev/null || true; ip netns add {D}$n; ip -n {D}$n link set lo up; done\n\
             q='numtxqueues 2 numrxqueues 2'\n\
             ip link add in netns {D}gwA $q type veth peer eth0 netns {D}hostA $q\n\
             ip link add in netns {D}gwB $q type veth peer eth0 netns {D}hostB $q\n\
             ip link add out netns {D}gwA $q type veth peer out netns {D}gwB $q\n\
             for s in A:1 B:2; do g=${{s%:*}}; n=${{s#*:}}\n\
               ip -n {D}host$g addr add 10.$n.0.2/24 dev eth0; ip -n {D}host$g link set eth0 up\n\
               ip -n {D}host$g route add default via 10.$n.0.1\n\
               ip -n {D}gw$g addr add 10.$n.0.1/24 dev in; ip -n {D}gw$g link set in up\n\
               ip -n {D}gw$g addr add 192.0.2.$n/24 dev out; ip -n {D}gw$g link set out up\n\
               ip netns exec {D}gw$g sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0\n\
               for i in in out; do ip netns exec {D}gw$g ethtool -K $i tx off >/dev/null; done\n\
               ip netns exec {D}host$g ethtool -K eth0 tx off >/dev/null\n\
             done\n"
        );
        let (ok, out) = sh(&script);
        assert!(ok, "direct topology: {out}");
        d
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        for n in ["hostA", "gwA", "gwB", "hostB"] {
            let _ = sh(&format!("ip netns del {D}{n}"));
        }
    }
}

#[test]
fn both_receiving_workers_open_one_peer() {
    if !common::root_or_skip() {
        return;
    }
    let (dir, keys) = common::dir_with_keys("spread-direct", 1);
    let _topology = Direct::up();
    // Two workers open one peer's burst of 6400 packets from one shared window: one may fall
    // far behind the other on a loaded machine (CI saw 302 `too_old` at the default 1024), so
    // the largest window, as the operator guide advises for one busy peer over several workers.
    let (b_cfg, a_cfg) = config(&dir, &keys, "replay_window = 8192\n");
    let gw_b = Gateway::start(D, "gwB", b_cfg, &dir);
    let gw_a = Gateway::start(D, "gwA", a_cfg, &dir);
    assert!(
        wait_ping(D, "hostA", "10.2.0.2", Duration::from_secs(15)).is_some(),
        "no tunnel; logs in {}",
        dir.display()
    );
    let (before_a, before_b) = (gw_a.status(&dir), gw_b.status(&dir));
    let script = "import socket\n\
                  socks = []\n\
                  for port in range(40000, 40064):\n\
                  \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  \x20   s.bind(('10.1.0.2', port))\n\
                  \x20   socks.append(s)\n\
                  for i in range(100):\n\
                  \x20   for s in socks:\n\
                  \x20       s.sendto(bytes(200), ('10.2.0.2', 9))\n";
    let (ok, out) = ns(D, "hostA", &format!("python3 -c \"{script}\""));
    assert!(ok, "traffic: {out}");
    std::thread::sleep(Duration::from_millis(500));
    let (after_a, after_b) = (gw_a.status(&dir), gw_b.status(&dir));
    let delta = |after: &Value, before: &Value, field: &str| -> Vec<u64> {
        per_worker(after, field)
            .into_iter()
            .zip(per_worker(before, field))
            .map(|(a, b)| a - b)
            .collect()
    };
    let sealed = delta(&after_a, &before_a, "tx_outer");
    let received = delta(&after_b, &before_b, "rx_outer");
    let opened = delta(&after_b, &before_b, "bytes_opened");
    eprintln!(
        "direct veth, 6400 datagrams of one peer: gwA workers sealed {sealed:?}; gwB workers \
         received {received:?}, opened bytes {opened:?}"
    );
    assert!(
        sealed.iter().all(|&n| n > 0),
        "both of gwA's workers seal: {sealed:?}"
    );
    assert!(
        received.iter().all(|&n| n > 0),
        "both of gwB's workers receive: {received:?}"
    );
    assert!(
        opened.iter().all(|&n| n > 0),
        "both of gwB's workers open: {opened:?}"
    );
    assert_eq!(
        after_b["peers"].as_array().map(Vec::len),
        Some(1),
        "one peer"
    );
    let drops = &after_b["drops"];
    assert!(
        drops.get("replay").is_none() && drops.get("too_old").is_none(),
        "drops: {drops}"
    );
}
