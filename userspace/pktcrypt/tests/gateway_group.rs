//! Group mode end to end through real interfaces, over an IPv6 outer network: the three sites of
//! `scripts/topology.sh` are group members (`pktcrypt up`, role `group-member`: XDP, AF_XDP
//! workers, data sealed under each member's own group sender key), and a group controller without
//! a data path (role `group-controller`) runs in the wire namespace at 2001:db8::100. Every outer
//! packet is IPv6: ESP-in-UDP between members on port 4500, the controller channel on 4501.
//!
//! Phases: the group comes up and carries IPv4 and IPv6 between every pair of sites; the group is
//! rekeyed every second (three-phase rollouts) under continuous pings, which all arrive; a capture
//! on the wire holds only IPv6 and no inner address; ESP behind IPv6 extension headers reaches
//! the workers; status and export-keys show the group; the members detach cleanly. Needs root (as `tests/gateway.rs`).

mod common;

use common::{BIN, Capture, Gateway, Topology, sh};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const P: &str = "pg-";

/// Run in the wire namespace: sniffs one live ESP-in-UDP/IPv6 frame to gwA (2001:db8::1) on the
/// bridge and sends it again three times, each with IPv6 extension headers before the UDP
/// header: a destination options header; hop-by-hop and destination options; a routing header
/// (type 0, no segments left). Each copy is a replay: a worker that sees it counts it.
const EXT_HEADERS: &str = r#"
import socket, struct, subprocess
subprocess.run(["ip", "link", "set", "br0", "promisc", "on"], check=True)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("br0", 0))
s.settimeout(10)
while True:
    f = s.recv(4096)
    if f[12:14] != b"\x86\xdd" or f[20] != 17:
        continue
    if f[38:54] != socket.inet_pton(socket.AF_INET6, "2001:db8::1"):
        continue
    if struct.unpack("!H", f[56:58])[0] == 4500 and len(f) > 54 + 8 + 40:
        break
eth, ip6, rest = f[:14], f[14:54], f[54:]
pad = b"\x01\x04\x00\x00\x00\x00"
def frame(chain):
    # chain: extension header kinds in order; each 8 bytes, linked to the next, the last to UDP.
    kinds = chain + [17]
    ext = b""
    for kind, nxt in zip(chain, kinds[1:]):
        if kind == 43:
            ext += bytes([nxt, 0, 0, 0]) + bytes(4)
        else:
            ext += bytes([nxt, 0]) + pad
    plen = struct.unpack("!H", ip6[4:6])[0] + len(ext)
    hdr = ip6[:4] + struct.pack("!H", plen) + bytes([kinds[0]]) + ip6[7:]
    return eth + hdr + ext + rest
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
out.bind(("br0", 0))
for chain in ([60], [0, 60], [43]):
    out.send(frame(chain))
print("sent 3 replays behind IPv6 extension headers")
"#;

const SITES: [(&str, &str, &str); 3] = [
    ("gwA", "2001:db8::1", "\"10.1.0.0/24\", \"fd01::/64\""),
    ("gwB", "2001:db8::2", "\"10.2.0.0/24\", \"fd02::/64\""),
    ("gwC", "2001:db8::3", "\"10.3.0.0/24\", \"fd03::/64\""),
];

/// The `[[members]]` list; `keys` gives each member's control init key (or none).
fn members(keys: &[Option<&str>]) -> String {
    let mut out = String::new();
    for ((name, addr, prefixes), key) in SITES.iter().zip(keys) {
        out.push_str(&format!(
            "\n[[members]]\nname = \"{name}\"\naddress = \"{addr}\"\nprefixes = [{prefixes}]\n"
        ));
        if let Some(k) = key {
            out.push_str(&format!("init_key = \"{k}\"\n"));
        }
    }
    out
}

/// `object`: the `xdp_object` line, or "" (`common::xdp_object_line`).
fn write_configs(dir: &Path, object: &str) -> Vec<std::path::PathBuf> {
    let keys = std::fs::read_to_string(dir.join("keys.txt")).expect("keys");
    let keys: Vec<&str> = keys.lines().filter(|l| l.starts_with("pkc1-")).collect();
    let d = dir.display();
    let group_key = keys[3];
    let controller = format!(
        "role = \"group-controller\"\nname = \"ctl\"\nlocal = \"2001:db8::100\"\n\
         status_socket = \"{d}/wire.sock\"\nstatus_interval_ms = 0\nrekey_interval_ms = 1000\n\
         retry_ms = 200\n\n[group]\ninit_key = \"{group_key}\"\n{}",
        members(&[Some(keys[0]), Some(keys[1]), Some(keys[2])])
    );
    let mut paths = vec![dir.join("ctl.toml")];
    std::fs::write(&paths[0], controller).expect("write");
    for (i, (name, _, _)) in SITES.iter().enumerate() {
        let mut own = [None, None, None];
        own[i] = Some(keys[i]);
        let member = format!(
            "role = \"group-member\"\nname = \"{name}\"\ninner = \"in\"\nouter = \"out\"\n\
             {object}status_socket = \"{d}/{name}.sock\"\nstatus_interval_ms = 0\n\
             index = {i}\ncontroller = \"2001:db8::100\"\nretry_ms = 200\n\n\
             [group]\ninit_key = \"{group_key}\"\n{}",
            members(&own)
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, member).expect("write");
        paths.push(path);
    }
    paths
}

fn group_generation(status: &Value) -> u64 {
    status["group"]["generation"].as_u64().unwrap_or(0)
}

#[test]
fn group_members_carry_traffic_over_ipv6_through_group_rekeys() {
    if !common::root_or_skip() {
        return;
    }
    let object = common::xdp_object_line();
    let dir = std::env::temp_dir().join(format!("pktcrypt-gateway-group-{}", std::process::id()));
    // A directory left by an earlier run with the same process id would hold its keys.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (ok, out) = sh(&format!(
        "{BIN} keygen --count 4 --out {}/keys.txt",
        dir.display()
    ));
    assert!(ok, "keygen: {out}");
    let _topology = Topology::up(P, 1);
    let configs = write_configs(&dir, &object);
    let mut ctl = Gateway::start(P, "wire", configs[0].clone(), &dir);
    let mut gws: Vec<Gateway> = SITES
        .iter()
        .zip(&configs[1..])
        .map(|((name, _, _), cfg)| Gateway::start(P, name, cfg.clone(), &dir))
        .collect();
    let ping_run = |from: &str, to: &str, count: u32| common::ping_run(P, from, to, count, "0.05");

    // 1. Every pair of sites, IPv4 and IPv6 inside, IPv6 outside.
    let up = common::wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(20));
    assert!(
        up.is_some(),
        "no ping through the group; logs in {}",
        dir.display()
    );
    eprintln!("group up after {up:?}");
    for (from, to) in [
        ("hostA", "10.2.0.2"),
        ("hostA", "10.3.0.2"),
        ("hostC", "10.2.0.2"),
        ("hostB", "fd01::2"),
        ("hostC", "fd01::2"),
    ] {
        assert!(
            common::wait_ping(P, from, to, Duration::from_secs(5)).is_some(),
            "{from} → {to}"
        );
        assert_eq!(ping_run(from, to, 10), (10, 10), "{from} → {to}");
    }

    // 2. Group rekeys every second under continuous traffic, captured on the wire.
    let mut capture = Capture::start(P, dir.join("wire.pcap"));
    let before = gws[0].status(&dir);
    let other = std::thread::spawn(|| common::ping_run(P, "hostC", "fd02::2", 240, "0.05"));
    let (sent, received) = ping_run("hostA", "10.3.0.2", 240);
    let (sent6, received6) = other.join().expect("pinger");
    let after = gws[0].status(&dir);
    std::thread::sleep(Duration::from_millis(300));
    capture.stop();
    let generations = group_generation(&after) - group_generation(&before);
    eprintln!(
        "group rekeys: generation {} → {}; pings {received}/{sent} (IPv4), {received6}/{sent6} (IPv6)",
        group_generation(&before),
        group_generation(&after)
    );
    assert!(
        generations >= 5,
        "the group rekeyed {generations} times in 12 s"
    );
    assert_eq!((sent, received), (240, 240), "loss across group rekeys");
    assert_eq!((sent6, received6), (240, 240), "loss across group rekeys");
    let esp = capture.count("ip6 and udp port 4500");
    let control = capture.count("ip6 and udp port 4501");
    let ipv4 = capture.count("ip");
    let clear = capture.count("net 10.0.0.0/8 or net fd00::/8");
    eprintln!(
        "wire: {esp} ESP-in-UDP/IPv6, {control} controller messages, {ipv4} IPv4, {clear} clear"
    );
    // 480 echo requests and 480 replies cross the wire (a few may miss the capture's edges).
    assert!(esp >= 800, "ESP packets on the wire: {esp}");
    assert!(control > 10, "controller messages on the wire: {control}");
    assert_eq!(ipv4, 0, "the outer network is IPv6 only");
    assert_eq!(clear, 0, "plaintext inner traffic on the wire");

    // 2b. ESP-in-UDP behind IPv6 extension headers is steered like any other (here: three
    // replays of a live packet, each behind other headers): gwA's workers see and count them.
    let before = gws[0].status(&dir);
    let mut pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{P}hostB"),
            "ping",
            "-q",
            "-c",
            "40",
        ])
        .args(["-i", "0.05", "10.1.0.2"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ping");
    let (ok, out) = common::ns(P, "wire", &format!("timeout 20 python3 -c '{EXT_HEADERS}'"));
    let _ = pinger.wait();
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let after_ext = gws[0].status(&dir);
    let grew = |k: &str| {
        after_ext["drops"][k].as_u64().unwrap_or(0) - before["drops"][k].as_u64().unwrap_or(0)
    };
    eprintln!(
        "extension headers: {out}; gwA replay drops +{}, too_old +{}; outer XDP {}",
        grew("replay"),
        grew("too_old"),
        after_ext["xdp"]["outer"]
    );
    assert_eq!(
        grew("replay") + grew("too_old"),
        3,
        "replays behind IPv6 extension headers did not reach the workers"
    );

    // 3. Status and export-keys.
    let ctl_status = ctl.status(&dir);
    eprintln!("controller: {ctl_status}");
    assert_eq!(ctl_status["role"], "group-controller");
    assert!(ctl_status["generation"].as_u64().unwrap_or(0) >= group_generation(&after));
    let active: Vec<bool> = ctl_status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["active"] == true)
        .collect();
    assert_eq!(active, [true, true, true]);
    assert_eq!(after["group"]["index"], 0);
    assert!(
        after["workers"]["tx_outer"].as_u64().unwrap_or(0) >= 240,
        "{after}"
    );
    assert_eq!(after["xdp"]["inner"]["no_socket"], 0);
    // The operator's view of the controller and of a member, and their metrics (served on
    // the status socket too), checked by a strict reader and prometheus-parse.
    let ctl_text = ctl.show(&dir, false);
    eprintln!("pktcrypt show (controller):\n{ctl_text}");
    for expected in [
        "controller: ctl",
        "member: gwA",
        "member: gwC",
        "next rollout:",
    ] {
        assert!(
            ctl_text.contains(expected),
            "show lacks {expected:?}:\n{ctl_text}"
        );
    }
    let member_text = gws[0].show(&dir, false);
    eprintln!("pktcrypt show (gwA):\n{member_text}");
    for expected in [
        "gateway: gwA",
        "group-member",
        "peer: gwB",
        "timed by the group controller",
    ] {
        assert!(
            member_text.contains(expected),
            "show lacks {expected:?}:\n{member_text}"
        );
    }
    for (who, text) in [
        ("controller", ctl.metrics(&dir)),
        ("gwA", gws[0].metrics(&dir)),
    ] {
        let scrape = common::prometheus::check(&text)
            .unwrap_or_else(|e| panic!("metrics of {who}: {e}\n{text}"));
        assert!(
            scrape
                .value("pktcrypt_group_generation", &[])
                .unwrap_or(0.0)
                >= 1.0
        );
    }
    let (ok, keys) = sh(&format!(
        "{BIN} export-keys --socket {}/gwA.keys.sock",
        dir.display()
    ));
    assert!(ok, "export-keys: {keys}");
    assert!(
        keys.lines()
            .any(|l| l.starts_with("\"IPv6\",\"2001:db8::1\",\"2001:db8::3\"")),
        "our sender SA towards gwC: {keys}"
    );
    assert!(
        keys.lines()
            .any(|l| l.starts_with("\"IPv6\",\"2001:db8::3\",\"2001:db8::1\"")),
        "gwC's sender SA: {keys}"
    );

    // 3b. Reload at the controller: gwC marked `removed` is taken out of the group (the group
    // rekeys without it: A and C stop reaching each other, A and B go on), then unmarked and
    // re-admitted (A and C reach each other again). No restart.
    let ctl_text = std::fs::read_to_string(&configs[0]).expect("ctl.toml");
    let marked = ctl_text.replacen("name = \"gwC\"\n", "name = \"gwC\"\nremoved = true\n", 1);
    assert_ne!(marked, ctl_text);
    let reload = || sh(&format!("{BIN} reload --config {}", configs[0].display()));
    std::fs::write(&configs[0], &marked).expect("write");
    let (ok, out) = reload();
    eprintln!("controller reload: {out}");
    assert!(ok && out.contains("removed gwC"), "reload: {out}");
    let cut = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        common::ping_run(P, "hostA", "10.3.0.2", 2, "0.1").1 == 0
    });
    assert!(cut, "gwC still reaches the group after its removal");
    assert_eq!(
        ping_run("hostA", "10.2.0.2", 10),
        (10, 10),
        "A → B after C left"
    );
    std::fs::write(&configs[0], &ctl_text).expect("write");
    let (ok, out) = reload();
    eprintln!("controller reload: {out}");
    assert!(ok && out.contains("re-admitted gwC"), "reload: {out}");
    assert!(
        common::wait_ping(P, "hostA", "10.3.0.2", Duration::from_secs(20)).is_some(),
        "gwC re-admitted but not reached; logs in {}",
        dir.display()
    );
    assert_eq!(
        ping_run("hostC", "10.1.0.2", 10),
        (10, 10),
        "C → A after re-admission"
    );

    // 3c. Regaining connectivity (seed 001): gwC loses its outer link's carrier for 2 s (the
    // wire's end of its veth goes down) while the group rekeys every second (the rollouts
    // wait for it), then gets it back. gwC notices the link come up and asks the controller
    // for the current key at once: it logs so, holds the controller's generation and reaches
    // A within a few seconds, without waiting for the controller's retransmissions.
    let gen_before = group_generation(&gws[2].status(&dir));
    assert!(
        common::ns(P, "wire", "ip link set portC down").0,
        "carrier off"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        common::ns(P, "wire", "ip link set portC up").0,
        "carrier on"
    );
    let up_at = std::time::Instant::now();
    let back = (0..40).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let log = std::fs::read_to_string(dir.join("gwC.log")).unwrap_or_default();
        log.contains("the outer link is up again: asking the controller for the current group key")
            .then(|| up_at.elapsed())
    });
    let back = back.unwrap_or_else(|| {
        panic!(
            "gwC did not notice its link came back; log: {}",
            std::fs::read_to_string(dir.join("gwC.log")).unwrap_or_default()
        )
    });
    let log = std::fs::read_to_string(dir.join("gwC.log")).unwrap_or_default();
    assert!(log.contains("the outer link is down"), "{log}");
    let reached = common::wait_ping(P, "hostA", "10.3.0.2", Duration::from_secs(10));
    let ctl_gen = ctl.status(&dir)["generation"].as_u64().unwrap_or(0);
    let c_gen = group_generation(&gws[2].status(&dir));
    eprintln!(
        "carrier of gwC off 2 s: noticed it back after {back:?}, A reaches C after \
         {reached:?}; gwC at generation {gen_before} → {c_gen}, controller {ctl_gen}"
    );
    assert!(
        reached.is_some(),
        "A does not reach C after its link came back"
    );
    assert!(
        c_gen + 1 >= ctl_gen,
        "gwC at {c_gen}, the controller at {ctl_gen}: not caught up"
    );

    // 4. Clean stop (the programs stay, fail closed), then `pktcrypt down`: nothing attached.
    for g in gws.iter_mut() {
        assert!(g.stop(), "{} did not stop cleanly", g.name);
        let (ok, out) = common::ns(
            P,
            g.name,
            &format!("{BIN} down --config {}", g.config.display()),
        );
        assert!(ok, "pktcrypt down: {out}");
        let (_, links) = common::ns(P, g.name, "ip link show");
        assert!(
            !links.contains("xdp"),
            "{} left XDP attached: {links}",
            g.name
        );
    }
    assert!(ctl.stop(), "the controller did not stop cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}
