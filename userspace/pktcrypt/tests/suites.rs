//! Cipher agility through real interfaces (scripts/topology.sh, prefix `su-`): a key server
//! (gwB) rotates its client (gwA) about every second through a list of suites (`suites`,
//! generation g gets `suites[(g - 1) % 3]`) while hostA pings hostB every 2 ms: not one ping
//! is lost to a key or suite mismatch, both gateways show every generation under the suite the
//! rule gives it, no worker drops a packet for an unknown SPI or a failed authentication.
//! Then, still under traffic, a reload changes the file's `suite` (the rotation ends: every
//! generation after the reload is ChaCha20-Poly1305), and another gives gwA a suite of its own
//! (`[[clients]]` `suite`). Needs root (the XDP object embedded in the binary, or
//! `PKTCRYPT_XDP_OBJECT`'s).

mod common;

use common::{BIN, Gateway, Topology, sh};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const P: &str = "su-";
const ROTATION: [&str; 3] = ["aes-256-gcm", "chacha20-poly1305", "aes-128-gcm"];

fn server_config(object: &str, d: &Path, key: &str, suites: &str, client_suite: &str) -> String {
    let d = d.display();
    format!(
        "role = \"server\"\nname = \"gwB\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         status_socket = \"{d}/gwB.sock\"\nstatus_interval_ms = 0\nrekey_interval_ms = 1000\n\
         prefixes = [\"10.2.0.0/24\"]\n{suites}\n\
         [[clients]]\nname = \"gwA\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\n\
         init_key = \"{key}\"\n{client_suite}"
    )
}

fn client_config(object: &str, d: &Path, key: &str) -> String {
    let d = d.display();
    format!(
        "role = \"client\"\nname = \"gwA\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         prefixes = [\"10.1.0.0/24\"]\nstatus_socket = \"{d}/gwA.sock\"\nstatus_interval_ms = 0\n\
         hello_interval_ms = 1000\nrequest_timeout_ms = 200\nmax_backoff_ms = 1000\n\n\
         [server]\nname = \"gwB\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\n\
         init_key = \"{key}\"\n"
    )
}

fn status(socket: &Path) -> Option<Value> {
    let (ok, out) = sh(&format!("{BIN} status --socket {}", socket.display()));
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

/// Every (generation, suite) of `peer`'s SAs in a status document.
fn suites_of(status: &Value, peer: &str) -> Vec<(u64, String)> {
    status["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["peer"] == peer)
        .filter_map(|p| p["sas"].as_array())
        .flatten()
        .map(|s| {
            (
                s["generation"].as_u64().unwrap_or(0),
                s["suite"].as_str().unwrap_or("").to_string(),
            )
        })
        .filter(|(g, _)| *g > 0)
        .collect()
}

/// The suite of every generation either gateway showed, by number, as sampled every 50 ms by
/// a thread: both must agree on each.
#[derive(Default)]
struct Seen(BTreeMap<u64, String>);

fn sampler(
    sockets: [PathBuf; 2],
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            for (socket, peer) in sockets.iter().zip(["gwA", "gwB"]) {
                let Some(st) = status(socket) else { continue };
                let mut seen = seen.lock().expect("seen");
                for (g, suite) in suites_of(&st, peer) {
                    let old = seen.0.entry(g).or_insert_with(|| suite.clone());
                    assert_eq!(*old, suite, "generation {g}: the gateways disagree");
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Drops of the workers for a key or suite mismatch, and the outer XDP's unknown SPIs.
fn mismatches(st: &Value) -> (u64, u64, u64) {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    (
        n(&st["drops"]["unknown_spi"]),
        n(&st["drops"]["auth_failed"]),
        n(&st["xdp"]["outer"]["unknown_spi"]),
    )
}

/// Pings `to` from `from` `count` times every 2 ms in the background: (transmitted, received).
fn ping_in_background(count: u32) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || common::ping_run(P, "hostA", "10.2.0.2", count, "0.002"))
}

/// The newest generation gwB holds for gwA.
fn newest(seen: &Mutex<Seen>) -> u64 {
    seen.lock()
        .expect("seen")
        .0
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0)
}

#[test]
fn suites_rotate_and_reload_hitlessly_under_traffic() {
    if !common::root_or_skip() {
        return;
    }
    let object = common::xdp_object_line();
    let (dir, keys) = common::dir_with_keys("suites", 1);
    let key = keys[0].as_str();
    let _topology = Topology::up(P, 1);
    let b_cfg = dir.join("gwB.toml");
    let rotation = format!("suites = {ROTATION:?}");
    std::fs::write(&b_cfg, server_config(&object, &dir, key, &rotation, "")).expect("write");
    std::fs::write(dir.join("gwA.toml"), client_config(&object, &dir, key)).expect("write");
    let _gw_b = Gateway::start(P, "gwB", b_cfg.clone(), &dir);
    let _gw_a = Gateway::start(P, "gwA", dir.join("gwA.toml"), &dir);
    assert!(
        common::wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(15)).is_some(),
        "no ping A → B; logs in {}",
        dir.display()
    );
    let sockets = [dir.join("gwB.sock"), dir.join("gwA.sock")];
    let before: Vec<_> = sockets
        .iter()
        .map(|s| mismatches(&status(s).expect("status")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sampling = sampler(sockets.clone(), Arc::clone(&stop), Arc::clone(&seen));

    // 1. The rotation, about one rekey a second, under 12 s of pings every 2 ms.
    std::thread::sleep(Duration::from_millis(300));
    let first = newest(&seen);
    assert!(first >= 1, "no generation sampled");
    let (sent, received) = ping_in_background(6000).join().expect("pinger");
    let rotated = newest(&seen);
    eprintln!(
        "rotation: {received} of {sent} pings, generations {first}..={rotated}: {:?}",
        seen.lock().expect("seen").0
    );
    assert_eq!(
        (sent, received),
        (6000, 6000),
        "pings lost across suite switches"
    );
    assert!(rotated >= first + 6, "too few rekeys: {first}..={rotated}");
    {
        let seen = seen.lock().expect("seen");
        for (&g, suite) in &seen.0 {
            assert_eq!(suite, ROTATION[((g - 1) % 3) as usize], "generation {g}");
        }
        for s in ROTATION {
            assert!(
                seen.0.values().any(|v| v == s),
                "{s} never used: {:?}",
                seen.0
            );
        }
    }

    // 2. A reload sets one suite: the rotation ends, every generation after it is ChaCha.
    let pinger = ping_in_background(3000);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(
        &b_cfg,
        server_config(&object, &dir, key, "suite = \"chacha20-poly1305\"", ""),
    )
    .expect("write");
    let at_reload = newest(&seen);
    let (ok, out) = sh(&format!("kill -HUP {}", _gw_b.pid().expect("pid")));
    assert!(ok, "SIGHUP: {out}");
    let (sent2, received2) = pinger.join().expect("pinger");
    let after_reload = newest(&seen);
    assert_eq!(
        (sent2, received2),
        (3000, 3000),
        "pings lost across the reload"
    );
    assert!(
        after_reload >= at_reload + 3,
        "{at_reload}..={after_reload}"
    );
    let log = std::fs::read_to_string(dir.join("gwB.log")).unwrap_or_default();
    assert!(
        log.contains("suite chacha20-poly1305"),
        "the reload is logged: {log}"
    );

    // 3. gwA gets a suite of its own (`pktcrypt reload` this time).
    let pinger = ping_in_background(3000);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(
        &b_cfg,
        server_config(
            &object,
            &dir,
            key,
            "suite = \"chacha20-poly1305\"",
            "suite = \"aes-128-gcm\"\n",
        ),
    )
    .expect("write");
    let at_own = newest(&seen);
    let (ok, out) = sh(&format!(
        "{BIN} reload --socket {}/gwB.keys.sock",
        dir.display()
    ));
    assert!(ok && out.contains("updated gwA"), "reload: {out}");
    let (sent3, received3) = pinger.join().expect("pinger");
    stop.store(true, Ordering::Relaxed);
    sampling.join().expect("sampler");
    let last = newest(&seen);
    assert_eq!(
        (sent3, received3),
        (3000, 3000),
        "pings lost across the reload"
    );
    assert!(last >= at_own + 3, "{at_own}..={last}");
    let seen = seen.lock().expect("seen");
    for (&g, suite) in seen.0.range(at_reload + 2..=at_own) {
        assert_eq!(
            suite, "chacha20-poly1305",
            "generation {g} after the reload"
        );
    }
    for (&g, suite) in seen.0.range(at_own + 2..) {
        assert_eq!(suite, "aes-128-gcm", "generation {g} after gwA's own suite");
    }

    let after: Vec<_> = sockets
        .iter()
        .map(|s| mismatches(&status(s).expect("status")))
        .collect();
    eprintln!(
        "hitless: {} of {} pings across generations {first}..={last}, suites {:?}; \
         mismatch drops (unknown SPI, auth failed, XDP unknown SPI) gwB {:?} → {:?}, gwA {:?} → {:?}",
        received + received2 + received3,
        sent + sent2 + sent3,
        seen.0,
        before[0],
        after[0],
        before[1],
        after[1]
    );
    assert_eq!(before, after, "packets dropped for a key or suite mismatch");
    let _ = std::fs::remove_dir_all(&dir);
}
