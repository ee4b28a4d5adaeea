//! Review finding (stop 21): a group controller has no 0600 keys socket, so `reload` and
//! `rekey` reach it through its status socket, which is group-accessible (0660). A user of
//! that group who is neither root nor the daemon's user must not be able to keep the group
//! rolling out keys: the socket checks the caller (SO_PEERCRED) and refuses, while `status`
//! still answers it. Needs root (to connect as another user with setpriv).

mod common;

use common::{BIN, sh};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_controllers_status_socket_refuses_an_unprivileged_rekey() {
    if !common::root_or_skip() {
        return;
    }
    let (dir, keys) = common::dir_with_keys("privilege", 2);
    let d = dir.display();
    let port = 30000 + (std::process::id() % 20000) as u16;
    let config = format!(
        "role = \"group-controller\"\nname = \"ctl\"\nlocal = \"127.0.0.1\"\nport = {port}\n\
         status_socket = \"{d}/ctl.sock\"\nstatus_interval_ms = 0\n\n\
         [group]\ninit_key = \"{}\"\n\n\
         [[members]]\nname = \"m0\"\naddress = \"127.0.0.1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"{}\"\n",
        keys[0], keys[1]
    );
    let cfg = dir.join("ctl.toml");
    std::fs::write(&cfg, config).expect("write");
    let log = std::fs::File::create(dir.join("ctl.log")).expect("log");
    let mut ctl = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("controller");
    let sock = dir.join("ctl.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The socket's group, which "nobody" joins for the connection; the directory must let it
    // reach the socket.
    let _ = sh(&format!("chmod 755 {d}"));
    let (ok, gid) = sh(&format!("stat -c %g {}", sock.display()));
    assert!(ok, "stat: {gid}");
    let as_nobody = |request: &str| {
        sh(&format!(
            "setpriv --reuid=65534 --regid={} --clear-groups {BIN} {request} --socket {}",
            gid.trim(),
            sock.display()
        ))
    };
    let (ok, status) = as_nobody("status");
    let (rekey_ok, rekey) = as_nobody("rekey");
    let (reload_ok, reload) = as_nobody("reload");
    let (root_ok, root) = sh(&format!("{BIN} rekey --socket {}", sock.display()));
    let _ = ctl.kill();
    let _ = ctl.wait();
    eprintln!("as nobody: status {ok}; rekey {rekey:?}; reload {reload:?}; as root: {root:?}");
    assert!(
        ok && status.contains("group-controller"),
        "status: {status}"
    );
    assert!(
        !rekey_ok && rekey.contains("only root or the daemon's user"),
        "an unprivileged rekey was taken: {rekey}"
    );
    assert!(
        !reload_ok && reload.contains("only root or the daemon's user"),
        "an unprivileged reload was taken: {reload}"
    );
    // Root is served: no member has joined this group, which is the answer it gets.
    assert!(
        !root_ok && root.contains("no member has joined"),
        "root's rekey: {root}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
