//! The systemd unit (`packaging/systemd/pktcrypt@.service`) runs `pktcrypt up` as an
//! unprivileged user with a short list of capabilities. This test reads that list from the
//! unit and starts a key server and a client gateway (scripts/topology.sh, prefix `pk-`) as
//! `nobody` with exactly those capabilities (setpriv: inheritable, ambient and bounding sets):
//! traffic passes, and each reports READY to a `NOTIFY_SOCKET`.
//! Then, for every capability in the list, a gateway started without it fails (so the list has
//! nothing it does not need). Needs root (the XDP object embedded in the binary, or `PKTCRYPT_XDP_OBJECT`'s).

mod common;

use common::{BIN, Topology, sh};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const P: &str = "pk-";
const UNIT: &str = include_str!("../../../packaging/systemd/pktcrypt@.service");

/// The unit's `AmbientCapabilities`, as setpriv names them (`net_admin`, ...).
fn unit_caps() -> Vec<String> {
    let line = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities in the unit");
    let bounding = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    assert_eq!(
        line, bounding,
        "ambient and bounding sets differ in the unit"
    );
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

/// `pktcrypt up` in namespace `{P}{name}` as nobody with `caps` only (under this machine's
/// memlock limit, 8 MiB like systemd's default), readiness to `notify`.
fn start(name: &str, config: &Path, caps: &[String], notify: &Path, log: &Path) -> Child {
    let list = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let set = if list.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{list}")
    };
    let out = std::fs::File::create(log).expect("log");
    let err = out.try_clone().expect("log");
    Command::new("ip")
        .args(["netns", "exec", &format!("{P}{name}")])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps={set}"),
            &format!("--ambient-caps={set}"),
            &format!("--bounding-set={set}"),
        ])
        .args([BIN, "up", "--config"])
        .arg(config)
        .env("NOTIFY_SOCKET", notify)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("pktcrypt up")
}

fn configs(dir: &Path, object: &str, keys: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = dir.display();
    let server = format!(
        "role = \"server\"\nname = \"gwB\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         status_socket = \"{d}/gwB.sock\"\nstatus_interval_ms = 0\nprefixes = [\"10.2.0.0/24\"]\n\n\
         [[clients]]\nname = \"gwA\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0]
    );
    let client = format!(
        "role = \"client\"\nname = \"gwA\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         prefixes = [\"10.1.0.0/24\"]\nstatus_socket = \"{d}/gwA.sock\"\nstatus_interval_ms = 0\n\
         hello_interval_ms = 1000\nrequest_timeout_ms = 200\nmax_backoff_ms = 1000\n\n\
         [server]\nname = \"gwB\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0]
    );
    let (b, a) = (dir.join("gwB.toml"), dir.join("gwA.toml"));
    std::fs::write(&b, server).expect("write");
    std::fs::write(&a, client).expect("write");
    (b, a)
}

/// Waits for `READY=1` on `socket`.
fn ready(socket: &UnixDatagram, limit: Duration) -> Option<String> {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.lines().any(|l| l == "READY=1") {
                return Some(text);
            }
        }
    }
    None
}

fn kill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    if !common::root_or_skip() {
        return;
    }
    let object = common::xdp_object_line();
    let caps = unit_caps();
    eprintln!("the unit's capabilities: {caps:?}");
    let dir = std::env::temp_dir().join(format!("pktcrypt-caps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (ok, out) = sh(&format!("{BIN} keygen --count 1"));
    assert!(ok, "keygen: {out}");
    let keys: Vec<&str> = out.lines().filter(|l| l.starts_with("pkc1-")).collect();
    let (b_cfg, a_cfg) = configs(&dir, &object, &keys);
    // nobody writes its status socket there and reads the configuration.
    assert!(sh(&format!("chown -R 65534:65534 {}", dir.display())).0);
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    assert!(sh(&format!("chmod 0666 {}", notify_path.display())).0);
    let _topology = Topology::up(P, 1);

    let mut b = start("gwB", &b_cfg, &caps, &notify_path, &dir.join("gwB.log"));
    let first = ready(&notify, Duration::from_secs(15));
    let mut a = start("gwA", &a_cfg, &caps, &notify_path, &dir.join("gwA.log"));
    let second = ready(&notify, Duration::from_secs(15));
    let logs = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(dir.join("gwB.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("gwA.log")).unwrap_or_default()
        )
    };
    assert!(
        first.is_some() && second.is_some(),
        "READY not sent: {first:?} {second:?}; logs:\n{}",
        logs()
    );
    eprintln!("ready: {first:?}, {second:?}");
    let up = common::wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(15));
    assert!(
        up.is_some(),
        "no traffic as nobody with {caps:?}; logs:\n{}",
        logs()
    );
    assert_eq!(
        common::ping_run(P, "hostA", "10.2.0.2", 20, "0.05"),
        (20, 20)
    );
    let uid = sh(&format!("ps -o uid= -p {}", a.id())).1;
    assert_eq!(uid.trim(), "65534", "the gateway runs as nobody");
    kill(&mut a);
    kill(&mut b);

    // Each capability is needed: without it, `pktcrypt up` fails.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let log = dir.join(format!("without-{missing}.log"));
        let mut c = start("gwB", &b_cfg, &fewer, &notify_path, &log);
        let end = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = c.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > end {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        kill(&mut c);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!(
            "without {missing}: {}",
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
        );
        assert!(
            status.is_some_and(|s| !s.success()),
            "pktcrypt up ran without {missing}: it is not needed ({text})"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// systemd reads the unit without a complaint (unknown keys, bad values): `systemd-analyze
/// verify` on a copy whose `ExecStart` is the binary under test.
#[test]
fn systemd_accepts_the_unit() {
    if !sh("command -v systemd-analyze").0 {
        eprintln!("SKIPPED: no systemd-analyze");
        return;
    }
    let dir = std::env::temp_dir().join(format!("pktcrypt-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let unit = dir.join("pktcrypt@site.service");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/pktcrypt", BIN)).expect("unit");
    let (ok, out) = sh(&format!("systemd-analyze verify {}", unit.display()));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
}
