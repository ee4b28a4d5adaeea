//! Live reload through real interfaces (scripts/topology.sh, prefix `pr-`): a key server (gwB)
//! starts with one client site (gwA); a third site (gwC) is added to its file and applied with
//! `pktcrypt reload` while hostA pings hostB every 10 ms: not one of those pings is lost, gwA's
//! keys are the same before and after (not re-initialised), and gwC's traffic flows. A change
//! that needs a restart (the port) is refused naming the key, and changes nothing. Then gwC is
//! removed again with SIGHUP: its traffic stops, gwA's goes on. Then `pktcrypt rekey` rotates
//! gwA's keys on demand, from the key server and from gwA, without losing a ping. Needs root (the XDP object embedded in
//! the binary, or `PKTCRYPT_XDP_OBJECT`'s).

mod common;

use common::{BIN, Gateway, Topology, sh};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const P: &str = "pr-";

fn ns(name: &str, cmd: &str) -> (bool, String) {
    common::ns(P, name, cmd)
}

/// gwA's SAs at the key server: (slot, generation, SPI) of each.
fn sas_of(status: &Value, peer: &str) -> Vec<(String, u64, String)> {
    status["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["peer"] == peer)
        .and_then(|p| p["sas"].as_array())
        .map(|sas| {
            sas.iter()
                .map(|s| {
                    (
                        s["slot"].as_str().unwrap_or("").to_string(),
                        s["generation"].as_u64().unwrap_or(0),
                        s["spi"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn server_config(object: &str, d: &Path, keys: &[&str], with_c: bool, port: Option<u16>) -> String {
    let d = d.display();
    let mut s = format!(
        "role = \"server\"\nname = \"gwB\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         status_socket = \"{d}/gwB.sock\"\nstatus_interval_ms = 0\nrekey_interval_ms = 600000\n\
         prefixes = [\"10.2.0.0/24\"]\n"
    );
    if let Some(p) = port {
        s.push_str(&format!("port = {p}\n"));
    }
    s.push_str(&format!(
        "\n[[clients]]\nname = \"gwA\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0]
    ));
    if with_c {
        s.push_str(&format!(
            "\n[[clients]]\nname = \"gwC\"\naddress = \"192.0.2.3\"\nprefixes = [\"10.3.0.0/24\"]\ninit_key = \"{}\"\n",
            keys[1]
        ));
    }
    s
}

fn client_config(object: &str, d: &Path, name: &str, own: &str, key: &str) -> String {
    let d = d.display();
    format!(
        "role = \"client\"\nname = \"{name}\"\ninner = \"in\"\nouter = \"out\"\n{object}\
         prefixes = [\"{own}\"]\nstatus_socket = \"{d}/{name}.sock\"\nstatus_interval_ms = 0\n\
         hello_interval_ms = 1000\nrequest_timeout_ms = 200\nmax_backoff_ms = 1000\nmax_retries = 3\n\n\
         [server]\nname = \"gwB\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"{key}\"\n"
    )
}

/// Pings `to` from `from` `count` times every 10 ms in the background: (transmitted, received)
/// when it ends.
fn ping_in_background(from: &str, to: &str, count: u32) -> std::thread::JoinHandle<(u64, u64)> {
    let (from, to) = (from.to_string(), to.to_string());
    std::thread::spawn(move || common::ping_run(P, &from, &to, count, "0.01"))
}

#[test]
fn reload_adds_and_removes_a_site_under_traffic() {
    if !common::root_or_skip() {
        return;
    }
    let object = common::xdp_object_line();
    let (dir, keys) = common::dir_with_keys("reload", 2);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let _topology = Topology::up(P, 1);
    let b_cfg = dir.join("gwB.toml");
    std::fs::write(&b_cfg, server_config(&object, &dir, &keys, false, None)).expect("write");
    for (name, own, key) in [
        ("gwA", "10.1.0.0/24", keys[0]),
        ("gwC", "10.3.0.0/24", keys[1]),
    ] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            client_config(&object, &dir, name, own, key),
        )
        .expect("write");
    }
    let gw_b = Gateway::start(P, "gwB", b_cfg.clone(), &dir);
    let _gw_a = Gateway::start(P, "gwA", dir.join("gwA.toml"), &dir);
    let _gw_c = Gateway::start(P, "gwC", dir.join("gwC.toml"), &dir);
    let keys_socket = format!("{}/gwB.keys.sock", dir.display());
    let reload = || sh(&format!("{BIN} reload --socket {keys_socket}"));

    assert!(
        common::wait_ping(P, "hostA", "10.2.0.2", Duration::from_secs(15)).is_some(),
        "no ping A → B; logs in {}",
        dir.display()
    );
    // gwC is not a client yet: nothing of its gets through.
    assert_eq!(common::ping_run(P, "hostC", "10.2.0.2", 3, "0.2").1, 0);
    let before = sas_of(&gw_b.status(&dir), "gwA");
    assert!(!before.is_empty(), "gwA at the key server");

    // 1. Add gwC under traffic from A.
    let pinger = ping_in_background("hostA", "10.2.0.2", 400);
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(&b_cfg, server_config(&object, &dir, &keys, true, None)).expect("write");
    let (ok, out) = reload();
    eprintln!("reload: {out}");
    assert!(ok && out.contains("added gwC"), "reload: {out}");
    let (sent, received) = pinger.join().expect("pinger");
    eprintln!("A → B during the reload: {received} of {sent}");
    assert_eq!(
        (sent, received),
        (400, 400),
        "pings lost on the unchanged site"
    );
    assert!(
        common::wait_ping(P, "hostC", "10.2.0.2", Duration::from_secs(20)).is_some(),
        "gwC's traffic after the reload; logs in {}",
        dir.display()
    );
    assert_eq!(
        common::ping_run(P, "hostC", "10.2.0.2", 10, "0.05"),
        (10, 10)
    );
    let after = sas_of(&gw_b.status(&dir), "gwA");
    assert_eq!(before, after, "gwA's keys changed: it was re-initialised");

    // 2. A change that needs a restart: refused, naming the key; nothing changes.
    std::fs::write(
        &b_cfg,
        server_config(&object, &dir, &keys, true, Some(4501)),
    )
    .expect("write");
    let (ok, out) = reload();
    eprintln!("reload with a new port: {out}");
    assert!(!ok, "a port change was accepted: {out}");
    assert!(out.contains("port: "), "the refusal names the key: {out}");
    assert_eq!(common::ping_run(P, "hostC", "10.2.0.2", 5, "0.05"), (5, 5));

    // 3. Remove gwC with SIGHUP, under traffic from A.
    std::fs::write(&b_cfg, server_config(&object, &dir, &keys, false, None)).expect("write");
    let pinger = ping_in_background("hostA", "10.2.0.2", 200);
    std::thread::sleep(Duration::from_millis(500));
    let pid = gw_b.pid().expect("gwB pid");
    assert!(sh(&format!("kill -HUP {pid}")).0, "SIGHUP");
    let (sent, received) = pinger.join().expect("pinger");
    assert_eq!(
        (sent, received),
        (200, 200),
        "pings lost on the unchanged site"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        common::ping_run(P, "hostC", "10.2.0.2", 5, "0.1").1,
        0,
        "gwC still reaches B after its removal"
    );
    let status = gw_b.status(&dir);
    assert!(
        sas_of(&status, "gwC").is_empty(),
        "gwC still at the key server"
    );
    assert_eq!(
        sas_of(&status, "gwA"),
        before,
        "gwA re-initialised by the removal"
    );
    let log = std::fs::read_to_string(dir.join("gwB.log")).unwrap_or_default();
    assert!(log.contains("removed gwC"), "the reload is logged: {log}");
    let (ok, out) = ns("hostA", "ping -c 3 -i 0.1 -W 1 10.2.0.2");
    assert!(ok, "A → B at the end: {out}");

    // 4. Rekey on demand, under traffic from A (the server's timer is 10 minutes away): the
    //    key server rotates gwA at its next packet, then gwA asks for a new generation itself;
    //    no ping is lost. Unknown peers and the wrong role are refused by name.
    let newest = |status: &Value| {
        sas_of(status, "gwA")
            .iter()
            .map(|(_, g, _)| *g)
            .max()
            .unwrap_or(0)
    };
    let g0 = newest(&gw_b.status(&dir));
    let pinger = ping_in_background("hostA", "10.2.0.2", 300);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = sh(&format!("{BIN} rekey gwA --socket {keys_socket}"));
    eprintln!("pktcrypt rekey gwA (on gwB): {out}");
    assert!(ok && out.contains("1 client(s)"), "rekey: {out}");
    let wait_for = |want: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while newest(&gw_b.status(&dir)) < want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        newest(&gw_b.status(&dir))
    };
    assert_eq!(wait_for(g0 + 1), g0 + 1, "gwA rotated by the key server");
    let (ok, out) = sh(&format!(
        "{BIN} rekey --config {}",
        dir.join("gwA.toml").display()
    ));
    eprintln!("pktcrypt rekey (on gwA): {out}");
    assert!(ok && out.contains("asked the key server"), "rekey: {out}");
    assert_eq!(wait_for(g0 + 2), g0 + 2, "gwA rotated at its own request");
    let (sent, received) = pinger.join().expect("pinger");
    eprintln!("A → B during two rekeys on demand: {received} of {sent}");
    assert_eq!((sent, received), (300, 300), "pings lost across the rekeys");
    let (ok, out) = sh(&format!("{BIN} rekey nobody --socket {keys_socket}"));
    assert!(!ok && out.contains("no peer named \"nobody\""), "{out}");
    let log = std::fs::read_to_string(dir.join("gwB.log")).unwrap_or_default();
    assert!(
        log.contains("operator"),
        "the operator's rekey is logged: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
