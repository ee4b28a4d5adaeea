//! The XDP steering program on a real veth interface in network namespaces (needs root): the
//! object embedded in the binary, or the one in `PKTCRYPT_XDP_OBJECT` if set. `PKTCRYPT_BIN`
//! runs another `pktcrypt` binary than the one built with the test (an installed one: the CI
//! runs it on the binary of `cargo install`).
//!
//! Host A sends to host B, whose interface runs the program: ARP and ping keep working,
//! ESP-in-UDP to the configured port and packets to a protected prefix are matched (counted as
//! "no socket" and passed, as no AF_XDP socket is bound yet), other UDP passes untouched, and after
//! detach nothing is left on the interface.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The binary under test: `PKTCRYPT_BIN`, else the one built with this test.
fn bin() -> String {
    std::env::var("PKTCRYPT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_pktcrypt").to_owned())
}

/// Whether the test runs as root (`/proc/self/status`: the effective user id).
fn root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns(ns: &str, cmd: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

/// Deletes the namespaces (and with them the veth pair) even if the test fails.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Counts UDP datagrams to 10.201.0.2:4500 (esp), 10.201.0.2:5000 (other) and 10.201.7.5:5000
/// (inner) for three seconds.
const LISTENER: &str = r#"
import json, select, socket, time
socks = {}
for name, addr in (("esp", ("10.201.0.2", 4500)), ("other", ("10.201.0.2", 5000)), ("inner", ("10.201.7.5", 5000))):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(addr)
    socks[s] = name
counts = {n: 0 for n in socks.values()}
print("ready", flush=True)
end = time.monotonic() + 3
while (left := end - time.monotonic()) > 0:
    for s in select.select(list(socks), [], [], left)[0]:
        s.recv(2048)
        counts[socks[s]] += 1
print(json.dumps(counts), flush=True)
"#;

#[test]
fn xdp_program_steers_on_a_real_veth_and_detaches_cleanly() {
    if !root() {
        eprintln!("SKIPPED: needs root (network namespaces, XDP)");
        return;
    }
    // Without it, xdp-attach loads the object embedded in the binary.
    let object = std::env::var_os("PKTCRYPT_XDP_OBJECT");
    eprintln!(
        "binary {}, XDP object {}",
        bin(),
        object
            .as_ref()
            .map_or("embedded".into(), |o| o.to_string_lossy())
    );
    let id = std::process::id() % 100_000;
    let (a, b) = (format!("pkxa{id}"), format!("pkxb{id}"));
    let _guard = Netns(vec![a.clone(), b.clone()]);
    ip(&["netns", "add", &a]);
    ip(&["netns", "add", &b]);
    ip(&[
        "link", "add", "vpka", "netns", &a, "type", "veth", "peer", "name", "vpkb", "netns", &b,
    ]);
    ip(&["-n", &a, "addr", "add", "10.201.0.1/24", "dev", "vpka"]);
    ip(&["-n", &b, "addr", "add", "10.201.0.2/24", "dev", "vpkb"]);
    ip(&["-n", &a, "link", "set", "vpka", "up"]);
    ip(&["-n", &b, "link", "set", "vpkb", "up"]);
    ip(&[
        "-n",
        &a,
        "route",
        "add",
        "10.201.7.0/24",
        "via",
        "10.201.0.2",
    ]);

    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &b,
            &bin(),
            "xdp-attach",
            "--iface",
            "vpkb",
            "--esp-port",
            "4500",
        ])
        .args(["--prefix", "10.201.7.0/24", "--seconds", "30"])
        .args(
            object
                .iter()
                .flat_map(|o| [std::ffi::OsStr::new("--object"), o]),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("pktcrypt xdp-attach");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first: Value =
        serde_json::from_str(&lines.next().expect("a status line").expect("read")).expect("json");
    eprintln!("attached: {first}");
    assert!(
        ip(&["-n", &b, "link", "show", "vpkb"]).contains("xdp"),
        "program attached"
    );

    // Listeners behind the program: ESP-in-UDP without a socket is passed to the kernel, a
    // protected-prefix packet without a socket is dropped (fail closed), other UDP is passed.
    ip(&["-n", &b, "addr", "add", "10.201.7.5/32", "dev", "lo"]);
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &b, "python3", "-c", LISTENER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("listener");
    let mut heard = BufReader::new(listener.stdout.take().expect("stdout")).lines();
    assert_eq!(
        heard.next().expect("ready").expect("read"),
        "ready",
        "listener bound"
    );

    // Unrelated traffic is untouched: ARP and ICMP work through the program.
    assert!(
        in_ns(&a, "ping -c 3 -i 0.2 -W 1 10.201.0.2 >/dev/null"),
        "ping through XDP"
    );
    // ESP-in-UDP to port 4500, UDP to another port, UDP to the protected prefix.
    for _ in 0..5 {
        assert!(in_ns(&a, "printf esp > /dev/udp/10.201.0.2/4500"));
        assert!(in_ns(&a, "printf other > /dev/udp/10.201.0.2/5000"));
        assert!(in_ns(&a, "printf inner > /dev/udp/10.201.7.5/5000"));
    }
    std::thread::sleep(Duration::from_millis(1200));
    let received: Value =
        serde_json::from_str(&heard.next().expect("counts").expect("read")).expect("json");
    let _ = listener.wait();
    eprintln!("received behind the program: {received}");
    assert_eq!(received["esp"], 5, "ESP-in-UDP without a socket passed");
    assert_eq!(received["other"], 5, "unrelated UDP passed");
    assert_eq!(
        received["inner"], 0,
        "protected-prefix packets without a socket must be dropped, not passed"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let last = lines
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|v| v["final"] == true)
        .expect("final counters");
    assert!(child.wait().expect("wait").success());
    eprintln!("final: {last}");
    let n = |k: &str| last[k].as_u64().unwrap_or(0);
    assert_eq!(n("steered"), 0, "no AF_XDP socket is bound yet");
    assert!(
        n("no_socket") >= 10,
        "5 ESP-in-UDP + 5 protected-prefix packets matched: {last}"
    );
    assert!(n("passed") >= 3 + 5, "ping and other UDP passed: {last}");
    assert_eq!(n("malformed"), 0);
    assert!(
        !ip(&["-n", &b, "link", "show", "vpkb"]).contains("xdp"),
        "detached cleanly"
    );
}
