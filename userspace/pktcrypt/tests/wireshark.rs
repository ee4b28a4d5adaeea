//! Wireshark reads what pktcrypt exports: captures of two gateways in network namespaces
//! (`scripts/topology.sh`: gwB the key server, gwA its client, `pktcrypt up` with XDP and AF_XDP
//! workers) decrypted by the machine's tshark with the keys of `pktcrypt export-keys`, and the
//! inner packets (ICMP echo both ways, UDP) checked in its dissection.
//!
//! Two captures of the same traffic: `tcpdump` on the wire (the bridge between the gateways)
//! and `pktcrypt capture` on gwB (the workers' tap: the outer frames gwB receives and sends,
//! which `tcpdump` on gwB's own outer interface does not see: that is checked too).
//!
//! Debian 12's tshark is 4.0, whose ESP SA table has no ESN columns: phase 1 runs the gateways
//! with `esn = false` and `export-keys --format wireshark-4.0`, and every ESP packet of theirs
//! decrypts and authenticates (`esp.icv_good`). Phase 2 runs them with ESN (the default): 4.0
//! still decrypts, but reports every ICV bad (its AAD lacks the ESN's high half), which is why
//! the setting exists. A tshark newer than 4.0 also gets the default format (ten columns, 64-bit
//! SN) in phase 2 and must authenticate every packet.
//!
//! Needs root, tshark (`scripts/setup.sh` installs it; without it the test skips, except in CI)
//! and `PKTCRYPT_XDP_OBJECT` (as `tests/gateway.rs`).

mod common;

use common::{BIN, Gateway, Topology, sh};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const P: &str = "pw-";

fn ns(name: &str, cmd: &str) -> (bool, String) {
    common::ns(P, name, cmd)
}

/// Run on hostA: 20 UDP datagrams to hostB:5555.
const UDP_SENDER: &str = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(20):
    s.sendto(b"wireshark-%02d" % i, ("10.2.0.2", 5555))
    time.sleep(0.01)
"#;

fn write_configs(dir: &Path, object: &str, esn: bool) -> [PathBuf; 2] {
    let keys = std::fs::read_to_string(dir.join("keys.txt")).expect("keys");
    let keys: Vec<&str> = keys.lines().filter(|l| l.starts_with("pkc1-")).collect();
    let d = dir.display();
    let server = format!(
        "role = \"server\"\nname = \"gwB\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         status_socket = \"{d}/gwB.sock\"\nstatus_interval_ms = 0\nrekey_interval_ms = 0\nesn = {esn}\n\
         prefixes = [\"10.2.0.0/24\"]\n\n\
         [[clients]]\nname = \"gwA\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0]
    );
    let client = format!(
        "role = \"client\"\nname = \"gwA\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         status_socket = \"{d}/gwA.sock\"\nstatus_interval_ms = 0\nesn = {esn}\nprefixes = [\"10.1.0.0/24\"]\n\n\
         [server]\nname = \"gwB\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0]
    );
    let paths = [dir.join("gwB.toml"), dir.join("gwA.toml")];
    std::fs::write(&paths[0], server).expect("write");
    std::fs::write(&paths[1], client).expect("write");
    paths
}

/// `tcpdump -s 0` (whole frames) in namespace `{P}{name}` on `iface`, writing `path`.
fn tcpdump(name: &str, iface: &str, path: &Path) -> Child {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{P}{name}"),
            "tcpdump",
            "-ni",
            iface,
        ])
        .args(["-s", "0", "-U", "-w"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(500));
    child
}

/// Waits until none of `files` has grown for 500 ms (at most 10 s): tcpdump (`-U`) and
/// `pktcrypt capture` write each packet as they read it, and on a loaded machine they read
/// behind the traffic; an interrupt before they caught up would drop what they had not read.
fn settle(files: &[PathBuf]) {
    let size = || -> Vec<u64> {
        files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = size();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

/// SIGINT and wait (tcpdump and `pktcrypt capture` finish their files).
fn interrupt(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// What tshark made of a capture with an ESP SA table.
#[derive(Debug, Default)]
struct Dissection {
    /// ESP packets of an SA in the table (a dissected sequence number and a decrypted payload).
    esp: u64,
    /// Of which authenticated.
    icv_good: u64,
    /// Of which the ICV did not match.
    icv_bad: u64,
    /// ICMP echo requests and replies inside ESP.
    echo_requests: u64,
    echo_replies: u64,
    /// UDP datagrams to port 5555 inside ESP.
    udp: u64,
}

/// tshark's major and minor version.
fn tshark_version() -> Option<(u32, u32)> {
    let out = Command::new("tshark").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Dissects `pcap` with the ESP SA table `table` (the output of export-keys): one frame per
/// line, its ESP fields and inner protocols.
fn dissect(pcap: &Path, table: &str) -> Dissection {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n")
        .arg("-r")
        .arg(pcap)
        .args(["-o", "esp.enable_encryption_decode:TRUE"])
        .args(["-o", "esp.enable_authentication_check:TRUE"]);
    for record in table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        cmd.args(["-o", &format!("uat:esp_sa:{record}")]);
    }
    cmd.args([
        "-Y",
        "esp.decrypted_data",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]);
    for field in ["esp.icv_good", "esp.icv_bad", "icmp.type", "udp.dstport"] {
        cmd.args(["-e", field]);
    }
    let out = cmd.output().expect("tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut d = Dissection::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        d.esp += 1;
        let yes = |s: &str| s == "1" || s == "True";
        d.icv_good += u64::from(yes(f[0]));
        d.icv_bad += u64::from(yes(f[1]));
        d.echo_requests += u64::from(f[2].split(',').any(|t| t == "8"));
        d.echo_replies += u64::from(f[2].split(',').any(|t| t == "0"));
        d.udp += u64::from(f[3].split(',').any(|p| p == "5555"));
    }
    d
}

/// Traffic through the tunnel: 20 pings of 1100 bytes hostA → hostB (and their replies) and 20
/// UDP datagrams.
fn traffic() {
    let (ok, out) = ns("hostA", "ping -q -c 20 -i 0.05 -s 1100 -W 1 10.2.0.2");
    assert!(ok, "ping: {out}");
    let (ok, out) = ns("hostA", &format!("python3 -c '{UDP_SENDER}'"));
    assert!(ok, "UDP: {out}");
    std::thread::sleep(Duration::from_millis(300));
}

/// Starts `pktcrypt capture` on gwB (keys socket), writing `name.pcap` and `name.esp_sa`.
fn pktcrypt_capture(dir: &Path, name: &str, format: &str) -> Child {
    let d = dir.display();
    let child = Command::new(BIN)
        .args(["capture", "--socket", &format!("{d}/gwB.keys.sock")])
        .args(["--write", &format!("{d}/{name}.pcap")])
        .args(["--keys", &format!("{d}/{name}.esp_sa"), "--format", format])
        .args(["--seconds", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{name}.log"))).expect("log"),
        ))
        .spawn()
        .expect("pktcrypt capture");
    std::thread::sleep(Duration::from_millis(500));
    child
}

#[test]
fn wireshark_decrypts_and_authenticates_captures_of_the_gateways() {
    if !common::root_or_skip() {
        return;
    }
    let object = common::xdp_object_line();
    let Some(version) = tshark_version() else {
        // CI runs scripts/setup.sh, which installs it: there the test must not skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "no tshark in CI (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: no tshark (scripts/setup.sh installs it)");
        return;
    };
    eprintln!("tshark {}.{}", version.0, version.1);
    let (dir, _) = common::dir_with_keys("wireshark", 1);
    let _topology = Topology::up(P, 2);

    // Phase 1: without ESN, for Wireshark 4.0.
    let [b_cfg, a_cfg] = write_configs(&dir, &object, false);
    let mut gw_b = Gateway::start(P, "gwB", b_cfg, &dir);
    let mut gw_a = Gateway::start(P, "gwA", a_cfg, &dir);
    assert!(
        common::wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(15)).is_some(),
        "no ping through the tunnel; logs in {}",
        dir.display()
    );
    let wire = tcpdump("wire", "br0", &dir.join("wire.pcap"));
    let own = tcpdump("gwB", "out", &dir.join("gwB-out.pcap"));
    let tap = pktcrypt_capture(&dir, "tap", "wireshark-4.0");
    traffic();
    settle(&[
        dir.join("wire.pcap"),
        dir.join("gwB-out.pcap"),
        dir.join("tap.pcap"),
    ]);
    interrupt(tap);
    interrupt(own);
    interrupt(wire);
    let log = std::fs::read_to_string(dir.join("tap.log")).unwrap_or_default();
    eprintln!("{}", log.trim());
    assert!(
        log.contains("outer frames written"),
        "pktcrypt capture: {log}"
    );

    // tcpdump on gwB's own outer interface sees none of the tunnel's data packets (AF_XDP
    // bypasses the kernel's taps both ways); the wire sees them all.
    let large = |pcap: &str| -> u64 {
        let (_, out) = sh(&format!(
            "tcpdump -nr {}/{pcap} 'udp port 4500 and greater 1100' 2>/dev/null | wc -l",
            dir.display()
        ));
        out.trim().parse().unwrap_or(0)
    };
    let (on_wire, on_own) = (large("wire.pcap"), large("gwB-out.pcap"));
    eprintln!("large ESP packets: {on_wire} on the wire, {on_own} in tcpdump on gwB's `out`");
    assert!(on_wire >= 40, "ESP on the wire: {on_wire}");
    assert_eq!(
        on_own, 0,
        "tcpdump on gwB's own interface saw tunnel traffic"
    );

    let table = std::fs::read_to_string(dir.join("tap.esp_sa")).expect("capture --keys");
    let records = table.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!("ESP SA table (wireshark-4.0, ESN off): {records} records");
    assert!(records >= 2, "{table}");
    // The tcpdump capture with gwA's keys (the same SAs, seen from the other side).
    let (ok, gw_a_table) = sh(&format!(
        "{BIN} export-keys --socket {}/gwA.keys.sock --format wireshark-4.0",
        dir.display()
    ));
    assert!(ok, "export-keys: {gw_a_table}");
    for (what, pcap, table) in [
        ("pktcrypt capture on gwB", "tap.pcap", table.as_str()),
        ("tcpdump on the wire", "wire.pcap", gw_a_table.as_str()),
    ] {
        let d = dissect(&dir.join(pcap), table);
        eprintln!("ESN off, {what}, tshark {version:?}, wireshark-4.0 table: {d:?}");
        assert!(
            d.echo_requests >= 20 && d.echo_replies >= 20,
            "{what}: {d:?}"
        );
        assert!(d.udp >= 20, "{what}: {d:?}");
        assert_eq!(
            d.icv_good, d.esp,
            "{what}: every packet authenticates: {d:?}"
        );
        assert_eq!(d.icv_bad, 0, "{what}: {d:?}");
    }

    // Phase 2: with ESN (the default). Wireshark 4.0 decrypts but cannot authenticate; a newer
    // one, with the default format, does both.
    assert!(gw_a.stop() && gw_b.stop(), "stopping the gateways");
    let [b_cfg, a_cfg] = write_configs(&dir, &object, true);
    gw_b.config = b_cfg;
    gw_a.config = a_cfg;
    gw_b.spawn(&dir);
    gw_a.spawn(&dir);
    assert!(
        common::wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(15)).is_some(),
        "no ping through the tunnel with ESN"
    );
    let tap = pktcrypt_capture(&dir, "esn", "wireshark-4.0");
    traffic();
    settle(&[dir.join("esn.pcap")]);
    interrupt(tap);
    let table = std::fs::read_to_string(dir.join("esn.esp_sa")).expect("capture --keys");
    assert!(
        table.contains("64-bit ESN"),
        "the 4.0 table notes ESN: {table}"
    );
    let d = dissect(&dir.join("esn.pcap"), &table);
    eprintln!("ESN on, pktcrypt capture on gwB, tshark {version:?}, wireshark-4.0 table: {d:?}");
    assert!(
        d.echo_requests >= 20 && d.echo_replies >= 20 && d.udp >= 20,
        "{d:?}"
    );
    if version <= (4, 0) {
        assert_eq!(d.icv_good, 0, "4.0 cannot authenticate ESN: {d:?}");
        assert_eq!(d.icv_bad, d.esp, "{d:?}");
    } else {
        let (ok, table) = sh(&format!(
            "{BIN} export-keys --socket {}/gwB.keys.sock",
            dir.display()
        ));
        assert!(ok && table.contains("\"64-bit\""), "{table}");
        let d = dissect(&dir.join("esn.pcap"), &table);
        eprintln!("ESN on, tshark {version:?}, default table: {d:?}");
        assert_eq!(d.icv_good, d.esp, "{d:?}");
        assert_eq!(d.icv_bad, 0, "{d:?}");
    }
    assert!(gw_a.stop() && gw_b.stop(), "stopping the gateways");
    let _ = std::fs::remove_dir_all(&dir);
}
