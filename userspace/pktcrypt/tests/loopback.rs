//! One key server and 50 clients over real UDP sockets on loopback, exchanging data continuously
//! while keys rotate every second. The server is killed (SIGKILL: it loses every key) and
//! restarted, then a client is restarted. Everyone recovers, and the counts show that only packets
//! sent during the outage were lost, and why (sealed under keys the restarted server no longer has).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_pktcrypt");
const CLIENTS: usize = 50;
const PPS: u64 = 20;

type Lines = Arc<Mutex<Vec<Value>>>;

/// A child process and the thread that collects its JSON lines (joined at EOF).
struct Proc {
    child: Child,
    reader: std::thread::JoinHandle<()>,
}

fn spawn(args: &[&str], dir: &Path, lines: &Lines) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pktcrypt");
    let out = child.stdout.take().expect("stdout");
    let lines = Arc::clone(lines);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                lines.lock().expect("lock").push(v);
            }
        }
    });
    Proc { child, reader }
}

/// SIGTERM, wait for the exit, then for the reader to have every line (the final report).
fn terminate(mut p: Proc) {
    let _ = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if matches!(p.child.try_wait(), Ok(None)) {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    let _ = p.reader.join();
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn last_of<'a>(lines: &'a [Value], name: &str, finals: bool) -> Option<&'a Value> {
    lines
        .iter()
        .rev()
        .find(|v| v["name"] == name && (!finals || v["final"] == true))
}

#[test]
fn fifty_clients_survive_server_and_client_restarts() {
    let dir = std::env::temp_dir().join(format!("pktcrypt-loopback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let keys = dir.join("keys.txt");
    let ok = Command::new(BIN)
        .args([
            "keygen",
            "--count",
            &CLIENTS.to_string(),
            "--spi",
            "0x20000",
            "--out",
        ])
        .arg(&keys)
        .status()
        .expect("keygen");
    assert!(ok.success());
    let codes: Vec<String> = std::fs::read_to_string(&keys)
        .expect("keys")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(codes.len(), CLIENTS);
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut server = format!(
        "listen = \"127.0.0.1:{port}\"\nrekey_interval_ms = 1000\nrekey_jitter_permille = 100\n\
         traffic_pps = {PPS}\nstatus_interval_ms = 250\nreorder_grace_ms = 50\n"
    );
    for (i, c) in codes.iter().enumerate() {
        server += &format!("[[clients]]\nname = \"client{i}\"\ninit_key = \"{c}\"\n");
    }
    std::fs::write(dir.join("server.toml"), server).expect("server.toml");
    let common = format!(
        "server = \"127.0.0.1:{port}\"\nbind = \"127.0.0.1:0\"\ntraffic_pps = {PPS}\n\
         status_interval_ms = 250\nhello_interval_ms = 500\nrequest_timeout_ms = 300\n\
         max_backoff_ms = 1000\nmax_retries = 3\n"
    );
    std::fs::write(
        dir.join("many.toml"),
        format!(
            "{common}count = {}\ninit_key_file = \"keys.txt\"\n",
            CLIENTS - 1
        ),
    )
    .expect("many.toml");
    std::fs::write(
        dir.join("one.toml"),
        format!(
            "{common}name = \"client{}\"\ninit_key = \"{}\"\n",
            CLIENTS - 1,
            codes[CLIENTS - 1]
        ),
    )
    .expect("one.toml");

    let lines: Lines = Arc::new(Mutex::new(Vec::new()));
    let server1 = spawn(&["server", "--config", "server.toml"], &dir, &lines);
    std::thread::sleep(Duration::from_millis(300));
    let many = spawn(&["client", "--config", "many.toml"], &dir, &lines);
    let one = spawn(&["client", "--config", "one.toml"], &dir, &lines);

    // Steady state with rotations every second.
    std::thread::sleep(Duration::from_secs(8));
    let before_kill = lines.lock().expect("lock").clone();
    let mut server1 = server1;
    let kill_ms = unix_ms();
    server1.child.kill().expect("SIGKILL the server");
    let _ = server1.child.wait();
    let _ = server1.reader.join();
    std::thread::sleep(Duration::from_secs(2));
    let restart_ms = unix_ms();
    let server2 = spawn(&["server", "--config", "server.toml"], &dir, &lines);
    std::thread::sleep(Duration::from_secs(9));

    // A client restarts (its final report, then a fresh process with only its init key).
    terminate(one);
    let client_restart_ms = unix_ms();
    let one = spawn(&["client", "--config", "one.toml"], &dir, &lines);
    std::thread::sleep(Duration::from_secs(6));
    terminate(many);
    terminate(one);
    terminate(server2);
    let all = lines.lock().expect("lock").clone();

    // 1. Before the fault: every client rotated several times and lost nothing.
    let s1 = before_kill
        .iter()
        .rev()
        .find(|v| v["role"] == "server")
        .expect("server status before the kill");
    for i in 0..CLIENTS {
        let name = format!("client{i}");
        let flow = &s1["flows"][&name];
        assert!(u(flow, "received") > 0, "{name} reached the server: {s1}");
        assert_eq!(
            u(flow, "lost"),
            0,
            "{name} lost packets before the fault: {flow}"
        );
        let c = last_of(&before_kill, &name, false).expect("client status");
        assert!(u(c, "generation") >= 4, "{name} rotated: {c}");
        assert_eq!(u(&c["flows"]["server"], "lost"), 0, "{name}: {c}");
    }
    assert!(
        s1["drops"].as_object().is_none_or(|d| d.is_empty()),
        "no drops before the fault: {}",
        s1["drops"]
    );

    // 2. After the restart every client fell back to its init key and rotates again; nothing
    //    was lost within either server boot.
    let s2 = all
        .iter()
        .rev()
        .find(|v| v["role"] == "server" && v["final"] == true)
        .expect("final server report");
    let mut outage_losses = 0;
    for i in 0..CLIENTS - 1 {
        let name = format!("client{i}");
        let c = last_of(&all, &name, true).expect("final client report");
        assert!(
            u(c, "fallbacks") >= 1,
            "{name} noticed the server fault: {c}"
        );
        assert!(u(c, "generation") >= 3, "{name} rotates again: {c}");
        let from_server = &c["flows"]["server"];
        assert_eq!(u(from_server, "sender_restarts"), 1, "{name}: {c}");
        assert_eq!(
            u(from_server, "lost"),
            0,
            "{name} lost server packets within a boot: {c}"
        );
        // Client -> server: what the first server had at its last report plus what the second
        // received; the difference was sent during the outage (and the status interval before it).
        let received = u(&s1["flows"][&name], "received") + u(&s2["flows"][&name], "received");
        let lost = u(c, "sent").saturating_sub(received);
        let window_ms = restart_ms - kill_ms + 250 + 6000; // outage + status lag + recovery bound
        assert!(lost > 0, "{name}: the outage must cost something");
        assert!(
            lost <= PPS * window_ms / 1000 + 5,
            "{name}: {lost} lost beyond the outage window"
        );
        assert_eq!(
            u(&s2["flows"][&name], "lost"),
            0,
            "{name}: {}",
            s2["flows"][&name]
        );
        outage_losses += lost;
    }
    // Why: packets sealed under keys the restarted server never had.
    let drops = s2["drops"].as_object().expect("drops");
    assert!(
        drops.keys().all(|k| k == "unknown_spi"),
        "only unknown-SPI drops: {drops:?}"
    );
    eprintln!(
        "outage {} ms; client->server packets lost in it: {outage_losses} ({} per client); \
         unknown_spi drops at the restarted server: {}",
        restart_ms - kill_ms,
        outage_losses / (CLIENTS as u64 - 1),
        drops
            .get("unknown_spi")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    );

    // 3. The restarted client came back from its init key and recovered.
    let name = format!("client{}", CLIENTS - 1);
    let finals: Vec<&Value> = all
        .iter()
        .filter(|v| v["name"] == name.as_str() && v["final"] == true)
        .collect();
    assert_eq!(finals.len(), 2, "two lives of {name}");
    let second = finals[1];
    assert!(u(second, "generation") >= 2, "{second}");
    assert_eq!(u(&second["flows"]["server"], "lost"), 0, "{second}");
    let flow = &s2["flows"][&name];
    assert_eq!(
        u(flow, "sender_restarts"),
        1,
        "the server saw the client restart: {flow}"
    );
    assert!(u(second, "unix_ms") > client_restart_ms);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12, finding 9: two clients started with one client's init key (a copied
/// configuration) keep resetting each other's keys; the key server says so, naming the client
/// and both addresses, instead of going on silently.
#[test]
fn two_clients_with_one_init_key_are_reported() {
    let dir = std::env::temp_dir().join(format!("pktcrypt-twins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new(BIN)
        .args(["keygen", "--count", "1"])
        .output()
        .expect("keygen");
    let code = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("pkc1-"))
        .expect("a key")
        .to_owned();
    let port = 40000 + (std::process::id() % 20000) as u16;
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\nstatus_interval_ms = 60000\n\
             [[clients]]\nname = \"branch-7\"\ninit_key = \"{code}\"\n"
        ),
    )
    .expect("server.toml");
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "server = \"127.0.0.1:{port}\"\nbind = \"127.0.0.1:0\"\ntraffic_pps = 20\n\
             status_interval_ms = 60000\nhello_interval_ms = 200\nrequest_timeout_ms = 100\n\
             max_backoff_ms = 200\nmax_retries = 2\nname = \"branch-7\"\ninit_key = \"{code}\"\n"
        ),
    )
    .expect("client.toml");
    let log = std::fs::File::create(dir.join("server.log")).expect("log");
    let mut server = Command::new(BIN)
        .args(["server", "--config", "server.toml"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("server");
    std::thread::sleep(Duration::from_millis(300));
    let start = |_: usize| {
        Command::new(BIN)
            .args(["client", "--config", "client.toml"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("client")
    };
    let mut clients: Vec<Child> = (0..2).map(start).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        if text.contains("two clients use this client's init key") {
            break;
        }
    }
    for c in &mut clients {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = server.kill();
    let _ = server.wait();
    let line = text
        .lines()
        .find(|l| l.contains("two clients use this client's init key"))
        .unwrap_or_else(|| panic!("not reported in 30 s; server log:\n{text}"));
    eprintln!("{line}");
    assert!(line.contains("branch-7"), "{line}");
    assert_eq!(
        line.matches("127.0.0.1:").count(),
        2,
        "both addresses: {line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rekey trigger from a configuration file reaches the daemon: a client with
/// `rekey_after_packets_sealed = 40` sending 50 packets a second asks for a new generation
/// every 40 packets (the key server's timer is off), and its log names the trigger.
#[test]
fn a_trigger_from_the_file_rotates_the_daemons_keys() {
    let dir = std::env::temp_dir().join(format!("pktcrypt-trigger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new(BIN)
        .args(["keygen", "--count", "1"])
        .output()
        .expect("keygen");
    let code = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("pkc1-"))
        .expect("a key")
        .to_owned();
    let port = 40000 + ((std::process::id() + 7919) % 20000) as u16;
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\nrekey_interval_ms = 0\nstatus_interval_ms = 60000\n\
             [[clients]]\nname = \"branch-1\"\ninit_key = \"{code}\"\n"
        ),
    )
    .expect("server.toml");
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "server = \"127.0.0.1:{port}\"\nbind = \"127.0.0.1:0\"\ntraffic_pps = 50\n\
             status_interval_ms = 250\nrekey_after_packets_sealed = 40\n\
             init_key = \"{code}\"\n"
        ),
    )
    .expect("client.toml");
    let mut server = Command::new(BIN)
        .args(["server", "--config", "server.toml"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server");
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::File::create(dir.join("client.log")).expect("log");
    let lines: Lines = Arc::new(Mutex::new(Vec::new()));
    let mut client = Command::new(BIN)
        .args(["client", "--config", "client.toml"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("client");
    let stdout = client.stdout.take().expect("stdout");
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    lines.lock().expect("lock").push(v);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    let _ = client.kill();
    let _ = client.wait();
    let _ = reader.join();
    let _ = server.kill();
    let _ = server.wait();
    let text = std::fs::read_to_string(dir.join("client.log")).unwrap_or_default();
    let triggered = text
        .lines()
        .filter(|l| l.contains("rekey triggered") && l.contains("packets_sealed"))
        .count();
    let lines = lines.lock().expect("lock");
    let generation = lines.iter().map(|v| u(v, "generation")).max().unwrap_or(0);
    let sent = lines.iter().map(|v| u(v, "sent")).max().unwrap_or(0);
    // About 250 packets in 5 s: one rotation per 40 sealed (the handshake's and the
    // requests' own messages count too, so a little more often), at least 4.
    assert!(
        triggered >= 4 && generation >= 4,
        "{triggered} triggers, generation {generation}, {sent} sent; log:\n{text}\nstatus: {:?}",
        lines.last()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
