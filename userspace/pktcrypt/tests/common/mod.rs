//! Helpers shared by the end-to-end tests in network namespaces (`scripts/topology.sh`).
#![allow(dead_code)]

pub(crate) mod prometheus;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `pktcrypt` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_pktcrypt");

/// Whether the tests run as root (network namespaces, XDP); if not, says that the test skips.
pub(crate) fn root_or_skip() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\t...": the effective one decides.
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    if !root {
        eprintln!("SKIPPED: needs root (network namespaces, XDP)");
    }
    root
}

/// The `xdp_object` line of a gateway's configuration: the object in `PKTCRYPT_XDP_OBJECT` if
/// set (an override), else no line: the gateway loads the object embedded in the binary.
pub(crate) fn xdp_object_line() -> String {
    std::env::var("PKTCRYPT_XDP_OBJECT")
        .map(|o| format!("xdp_object = \"{o}\"\n"))
        .unwrap_or_default()
}

/// A fresh temporary directory for test `name` (one left by an earlier run with the same
/// process id is removed: it would hold that run's keys), with `count` init keys written to
/// `keys.txt` in it by `pktcrypt keygen`; the keys too.
pub(crate) fn dir_with_keys(name: &str, count: u32) -> (PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("pktcrypt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (ok, out) = sh(&format!(
        "{BIN} keygen --count {count} --out {}/keys.txt",
        dir.display()
    ));
    assert!(ok, "keygen: {out}");
    let keys = std::fs::read_to_string(dir.join("keys.txt")).expect("keys");
    let keys = keys
        .lines()
        .filter(|l| l.starts_with("pkc1-"))
        .map(str::to_string)
        .collect();
    (dir, keys)
}

/// Runs a shell command: (success, stdout + stderr).
pub(crate) fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("bash")
        .args(["-c", cmd])
        .output()
        .expect("bash");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `cmd` in namespace `{prefix}{name}`.
pub(crate) fn ns(prefix: &str, name: &str, cmd: &str) -> (bool, String) {
    sh(&format!("ip netns exec {prefix}{name} {cmd}"))
}

/// `scripts/topology.sh`.
pub(crate) fn topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/topology.sh")
}

/// The namespaces of `scripts/topology.sh` under a prefix; removed on drop.
pub(crate) struct Topology(pub(crate) &'static str);

impl Topology {
    /// Creates them, with `queues` queues per veth.
    pub(crate) fn up(prefix: &'static str, queues: u32) -> Self {
        let t = Topology(prefix);
        let (ok, out) = sh(&format!(
            "QUEUES={queues} bash {} up {prefix}",
            topology().display()
        ));
        assert!(ok, "topology: {out}");
        t
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(topology())
            .args(["down", self.0])
            .status();
    }
}

/// A `pktcrypt up` process in namespace `{prefix}{name}`; killed on drop.
pub(crate) struct Gateway {
    prefix: &'static str,
    /// Namespace suffix, also the log and socket name.
    pub(crate) name: &'static str,
    /// Its configuration file (change it before [`Gateway::spawn`] to restart differently).
    pub(crate) config: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    /// Starts it; stdout and stderr go to `log/{name}.log`.
    pub(crate) fn start(
        prefix: &'static str,
        name: &'static str,
        config: PathBuf,
        log: &Path,
    ) -> Self {
        let mut g = Self {
            prefix,
            name,
            config,
            child: None,
        };
        g.spawn(log);
        g
    }

    /// Starts it again.
    pub(crate) fn spawn(&mut self, log: &Path) {
        let out = std::fs::File::create(log.join(format!("{}.log", self.name))).expect("log");
        let err = out.try_clone().expect("log");
        self.child = Some(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &format!("{}{}", self.prefix, self.name),
                    BIN,
                    "up",
                    "--config",
                ])
                .arg(&self.config)
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .expect("pktcrypt up"),
        );
    }

    /// CPU time (user + system, all threads) the running daemon used so far. (`ip netns exec`
    /// execs the daemon: the child's pid is the daemon's.)
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let hz: u64 = sh("getconf CLK_TCK").1.trim().parse().unwrap_or(100).max(1);
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    /// The daemon's pid while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the daemon stops (its XDP programs stay attached, fail closed).
    pub(crate) fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        false
    }

    /// `pktcrypt status` through its socket `dir/{name}.sock`.
    pub(crate) fn status(&self, dir: &Path) -> Value {
        let (ok, out) = sh(&format!(
            "{BIN} status --socket {}/{}.sock",
            dir.display(),
            self.name
        ));
        assert!(ok, "status of {}: {out}", self.name);
        serde_json::from_str(&out).expect("status JSON")
    }
}

impl Gateway {
    /// `pktcrypt show` (`--json` if `json`) through its socket `dir/{name}.sock`.
    pub(crate) fn show(&self, dir: &Path, json: bool) -> String {
        let (ok, out) = sh(&format!(
            "{BIN} show {}--socket {}/{}.sock",
            if json { "--json " } else { "" },
            dir.display(),
            self.name
        ));
        assert!(ok, "show of {}: {out}", self.name);
        out
    }

    /// The Prometheus text its status socket `dir/{name}.sock` serves (`metrics`).
    pub(crate) fn metrics(&self, dir: &Path) -> String {
        use std::io::{Read, Write};
        let path = dir.join(format!("{}.sock", self.name));
        let mut s = std::os::unix::net::UnixStream::connect(&path).expect("status socket");
        s.write_all(b"metrics\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }
}

/// Scrapes `http://{addr}/metrics` from namespace `{prefix}{name}`: (Content-Type, body).
pub(crate) fn scrape(prefix: &str, name: &str, addr: &str) -> (String, String) {
    let (ok, out) = ns(
        prefix,
        name,
        &format!(
            "python3 -c 'import sys, urllib.request; r = urllib.request.urlopen(\"http://{addr}/metrics\", timeout=5); \
             sys.stdout.write(r.headers[\"Content-Type\"] + \"\\n\" + r.read().decode())'"
        ),
    );
    assert!(ok, "scrape of {addr}: {out}");
    let (content_type, body) = out.split_once('\n').expect("content type line");
    (content_type.to_string(), body.to_string())
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pings until one answer arrives or `limit` passes; returns the time it took.
pub(crate) fn wait_ping(prefix: &str, from: &str, to: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ns(prefix, from, &format!("ping -c1 -W1 {to}")).0 {
            return Some(start.elapsed());
        }
    }
    None
}

/// Sends `count` pings at `interval`; returns (sent, received).
pub(crate) fn ping_run(
    prefix: &str,
    from: &str,
    to: &str,
    count: u32,
    interval: &str,
) -> (u64, u64) {
    let (_, out) = ns(
        prefix,
        from,
        &format!("ping -q -c {count} -i {interval} -W 1 {to}"),
    );
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("ping output: {out}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect();
    (nums[0], nums[1])
}

/// tcpdump on the wire bridge (`{prefix}wire`, br0), writing `path`.
pub(crate) struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    /// Starts the capture and gives tcpdump time to open the interface.
    pub(crate) fn start(prefix: &str, path: PathBuf) -> Self {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{prefix}wire"),
                "tcpdump",
                "-ni",
                "br0",
            ])
            .args(["-s", "128", "-w"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump");
        std::thread::sleep(Duration::from_millis(500));
        Self { child, path }
    }

    /// Stops the capture (SIGINT: tcpdump writes out what it holds).
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Packets in the capture that match a tcpdump filter.
    pub(crate) fn count(&self, filter: &str) -> u64 {
        let (_, out) = sh(&format!(
            "tcpdump -nr {} '{filter}' 2>/dev/null | wc -l",
            self.path.display()
        ));
        out.trim().parse().unwrap_or(0)
    }
}

/// The keys in `pktcrypt export-keys` output (Wireshark `esp_sa` lines): each key+salt field
/// (`"0x..."`, hex) as bytes.
pub(crate) fn exported_keys(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .flat_map(|l| l.split(','))
        .filter_map(|f| f.trim_matches('"').strip_prefix("0x").map(str::to_owned))
        // The SPI field is 8 hex digits; keys with their salt are 40 or more.
        .filter(|h| h.len() >= 40 && h.len() % 2 == 0)
        .filter_map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
                .collect()
        })
        .collect()
}

/// Which forms of `keys` occur in `image`: for each key+salt, the key alone and with its salt
/// (the last 4 bytes), raw and as lower- and upper-case hex.
pub(crate) fn find_keys(image: &[u8], keys: &[Vec<u8>]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, keymat) in keys.iter().enumerate() {
        let key = &keymat[..keymat.len() - 4];
        for (what, needle) in [("key", key), ("key+salt", &keymat[..])] {
            let lower: String = needle.iter().map(|b| format!("{b:02x}")).collect();
            let upper = lower.to_uppercase();
            for (form, bytes) in [
                ("raw", needle.to_vec()),
                ("hex", lower.into_bytes()),
                ("HEX", upper.into_bytes()),
            ] {
                if let Some(at) = memchr::memmem::find(image, &bytes) {
                    found.push(format!("key {i}: {what} {form} at offset {at:#x}"));
                }
            }
        }
    }
    found
}
