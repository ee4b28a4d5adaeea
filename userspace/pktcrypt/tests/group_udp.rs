//! A group controller and three members as separate processes over real UDP on loopback: the
//! group rekeys every second while the members multicast data to each other; nothing is lost.
//! Once with the group key distributed, once in derived mode (rollouts carry nonces).

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_pktcrypt");

fn keygen(n: usize, spi: &str) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["keygen", "--count", &n.to_string(), "--spi", spi])
        .output()
        .expect("keygen");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn group_rekeys_over_udp_without_loss() {
    group_over_udp(false);
}

#[test]
fn derived_group_rekeys_over_udp_without_loss() {
    group_over_udp(true);
}

fn group_over_udp(derived: bool) {
    let dir = std::env::temp_dir().join(format!("pktcrypt-group-{}-{derived}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let control = keygen(3, "0x3000");
    let group = keygen(1, "0x40000")[0].clone();
    let base = 30000 + (std::process::id() % 5000) as u16 * 2 + if derived { 10000 } else { 0 };
    let ctl = format!("127.0.0.1:{base}");
    let peers: Vec<String> = (1..=3)
        .map(|i| format!("\"127.0.0.1:{}\"", base + i))
        .collect();
    let mut c = format!(
        "listen = \"{ctl}\"\nrekey_interval_ms = 1000\nstatus_interval_ms = 250\nderived = {derived}\n\
         [group]\ninit_key = \"{group}\"\n"
    );
    for (i, k) in control.iter().enumerate() {
        c += &format!(
            "[[members]]\nname = \"m{i}\"\naddress = \"127.0.0.1:{}\"\ninit_key = \"{k}\"\n",
            base + 1 + i as u16
        );
    }
    std::fs::write(dir.join("controller.toml"), c).expect("write");
    let mut children = vec![
        Command::new(BIN)
            .args(["group-controller", "--config", "controller.toml"])
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("controller"),
    ];
    for (i, k) in control.iter().enumerate() {
        let m = format!(
            "controller = \"{ctl}\"\nbind = \"127.0.0.1:{}\"\nindex = {i}\npeers = [{}]\ninit_key = \"{k}\"\n\
             traffic_pps = 25\nstatus_interval_ms = 250\n[group]\ninit_key = \"{group}\"\n",
            base + 1 + i as u16,
            peers.join(", ")
        );
        let f = format!("member{i}.toml");
        std::fs::write(dir.join(&f), m).expect("write");
        children.push(
            Command::new(BIN)
                .args(["group-member", "--config", &f])
                .current_dir(&dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("member"),
        );
    }
    std::thread::sleep(Duration::from_secs(8));
    let mut finals = Vec::new();
    for child in children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let last = text
            .lines()
            .rev()
            .find_map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .filter(|v| v["final"] == true)
            })
            .unwrap_or_else(|| panic!("no final report in {text}"));
        finals.push(last);
    }
    let controller = &finals[0];
    let generation = controller["generation"].as_u64().unwrap_or(0);
    assert!(
        generation >= 5,
        "the group rekeyed every second: {controller}"
    );
    for m in &finals[1..] {
        let g = m["generation"].as_u64().unwrap_or(0);
        assert!(g + 1 >= generation, "member keeps up: {m}");
        let flows = m["flows"].as_object().expect("flows");
        assert_eq!(flows.len(), 2, "data from both other members: {m}");
        for (from, f) in flows {
            assert!(f["received"].as_u64().unwrap_or(0) > 100, "{from}: {f}");
            assert_eq!(f["lost"].as_u64(), Some(0), "no loss from {from}: {f}");
        }
        let drops = m["drops"].as_object().expect("drops");
        assert!(
            !drops.contains_key("unknown_spi") && !drops.contains_key("auth_failed"),
            "{m}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
