//! Bad configuration fails fast, before touching any interface or socket, with a message that
//! names the offending field. Runs the real binary on small TOML files.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pktcrypt");

/// Runs `pktcrypt <command> --config FILE` on `toml`; returns (success, stderr).
fn run(command: &str, toml: &str) -> (bool, String) {
    run_with(&[command], toml)
}

/// `pktcrypt check --config FILE` as the daemon `command` would read it (`--role` for the UDP
/// roles); returns (success, stderr).
fn check(command: &str, toml: &str) -> (bool, String) {
    if command == "up" {
        run_with(&["check"], toml)
    } else {
        run_with(&["check", "--role", command], toml)
    }
}

/// Runs `pktcrypt <args> --config FILE` on `toml`; returns (success, stderr).
fn run_with(args: &[&str], toml: &str) -> (bool, String) {
    // One directory per call: the tests run in parallel threads of one process, and a name
    // shared by two calls let one remove the other's file.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pktcrypt-config-{}-{call}", std::process::id(),));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("config.toml");
    std::fs::write(&path, toml).expect("write");
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("PKTCRYPT_XDP_OBJECT")
        .output()
        .expect("run pktcrypt");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn key() -> String {
    let out = Command::new(BIN)
        .args(["keygen", "--count", "1"])
        .output()
        .expect("keygen");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("pkc1-"))
        .expect("a key code")
        .to_string()
}

/// `pktcrypt <command>` refuses `toml` naming `field`, and so does `pktcrypt check` (without
/// touching an interface or a socket: these files would fail there, later).
fn fails_naming(command: &str, toml: &str, field: &str) {
    let (ok, err) = run(command, toml);
    assert!(!ok, "{command} accepted a bad configuration:\n{toml}");
    assert!(
        err.contains(field),
        "{command}: the error does not name {field:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{command} panicked: {err}");
    let (ok, err) = check(command, toml);
    assert!(!ok, "check accepted a bad {command} configuration:\n{toml}");
    assert!(
        err.contains(field) && err.starts_with("pktcrypt check: "),
        "check ({command}): the error does not name {field:?}: {err}"
    );
}

#[test]
fn control_roles_name_the_bad_field() {
    let k = key();
    fails_naming("server", "listen = \"nonsense\"\n", "listen");
    fails_naming(
        "server",
        &format!(
            "listen = \"127.0.0.1:0\"\nrekey_intervl_ms = 5\n[[clients]]\nname = \"a\"\ninit_key = \"{k}\"\n"
        ),
        "rekey_intervl_ms",
    );
    for bad in ["\"always\"", "0", "-3", "\"0\""] {
        fails_naming(
            "server",
            &format!(
                "listen = \"127.0.0.1:0\"\npfs = {bad}\n[[clients]]\nname = \"a\"\ninit_key = \"{k}\"\n"
            ),
            "pfs",
        );
    }
    fails_naming(
        "group-controller",
        &format!(
            "listen = \"127.0.0.1:0\"\npfs = \"sometimes\"\n[group]\ninit_key = \"{k}\"\n[[members]]\nname = \"a\"\ninit_key = \"{k}\"\n"
        ),
        "pfs",
    );
    fails_naming(
        "client",
        &format!("server = \"127.0.0.1:4500\"\nreplay_window = 100\ninit_key = \"{k}\"\n"),
        "replay_window",
    );
    fails_naming(
        "client",
        "server = \"127.0.0.1:4500\"\ninit_key = \"pkc1-not-a-key\"\n",
        "init_key",
    );
    fails_naming(
        "client",
        "server = \"127.0.0.1:4500\"\ninit_key_env = \"PKTCRYPT_TEST_NO_SUCH_VARIABLE\"\n",
        "init_key_env",
    );
}

#[test]
fn gateway_roles_name_the_bad_field() {
    let k = key();
    // Interfaces that exist everywhere, and an "object" that is never loaded: every error
    // below is found before anything is attached.
    let base = "inner = \"lo\"\nouter = \"lo\"\nxdp_object = \"/dev/null\"\n";
    fails_naming("up", &format!("role = \"gateway\"\n{base}"), "role");
    fails_naming(
        "up",
        "role = \"client\"\nouter = \"lo\"\nxdp_object = \"/dev/null\"\n",
        "inner",
    );
    fails_naming(
        "up",
        &format!("role = \"client\"\n{base}workers = 0\n"),
        "workers",
    );
    fails_naming("up", &format!("role = \"client\"\n{base}"), "server");
    fails_naming(
        "up",
        &format!("role = \"client\"\n{base}pfs = \"off\"\n"),
        "pfs",
    );
    fails_naming(
        "up",
        &format!("role = \"server\"\n{base}backend = \"null-insecure\"\n"),
        "backend",
    );
    fails_naming(
        "up",
        &format!(
            "role = \"client\"\n{base}[server]\nname = \"s\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/33\"]\ninit_key = \"{k}\"\n"
        ),
        "server.prefixes",
    );
    let member = format!(
        "name = \"m\"\naddress = \"2001:db8::1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"{k}\"\n"
    );
    fails_naming(
        "up",
        &format!(
            "role = \"group-member\"\n{base}controller = \"2001:db8::100\"\n[group]\ninit_key = \"{k}\"\n[[members]]\n{member}"
        ),
        "index",
    );
    fails_naming(
        "up",
        &format!(
            "role = \"group-member\"\n{base}index = 0\nreplay_window = 100\ncontroller = \"2001:db8::100\"\n[group]\ninit_key = \"{k}\"\n[[members]]\n{member}"
        ),
        "replay_window",
    );
    fails_naming(
        "up",
        &format!(
            "role = \"group-member\"\n{base}index = 1\ncontroller = \"2001:db8::100\"\n[group]\ninit_key = \"{k}\"\n[[members]]\n{member}"
        ),
        "index",
    );
    fails_naming(
        "up",
        &format!(
            "role = \"group-controller\"\n{base}[group]\ninit_key = \"{k}\"\n[[members]]\n{member}"
        ),
        "inner",
    );
    fails_naming(
        "up",
        &format!("role = \"group-controller\"\n[[members]]\n{member}"),
        "group",
    );
    fails_naming(
        "up",
        &format!(
            "role = \"group-controller\"\ncontrol_port = 4500\n[group]\ninit_key = \"{k}\"\n[[members]]\n{member}"
        ),
        "control_port",
    );
    // Retiring on evidence is a member's: a key server transmits under N-1 by design.
    for role in ["server", "client"] {
        fails_naming(
            "up",
            &format!("role = \"{role}\"\n{base}retire_grace_ms = 1000\n"),
            "retire_grace_ms",
        );
    }
    fails_naming(
        "up",
        &format!(
            "role = \"group-controller\"\nretire_grace_ms = 1000\n[group]\ninit_key = \"{k}\"\n[[members]]\n{member}"
        ),
        "retire_grace_ms",
    );
}

/// Cipher agility's keys: a bad suite name, an empty rotation, `suite` with `suites`, and a
/// suite where the key server is not the one choosing.
#[test]
fn suites_name_the_bad_field() {
    let k = key();
    let base = "inner = \"lo\"\nouter = \"lo\"\nxdp_object = \"/dev/null\"\nprefixes = [\"10.2.0.0/24\"]\n";
    let client = format!(
        "[[clients]]\nname = \"a\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"{k}\"\n"
    );
    for (settings, field) in [
        ("suites = []\n", "suites"),
        ("suites = [\"aes-256-gcm\", \"aes\"]\n", "suites[1]"),
        (
            "suite = \"aes-256-gcm\"\nsuites = [\"aes-128-gcm\"]\n",
            "suites: set either",
        ),
    ] {
        fails_naming(
            "up",
            &format!("role = \"server\"\n{base}{settings}{client}"),
            field,
        );
    }
    fails_naming(
        "up",
        &format!("role = \"server\"\n{base}{client}suite = \"des\"\n"),
        "suite: \"des\"",
    );
    fails_naming(
        "up",
        &format!(
            "role = \"client\"\n{base}[server]\nname = \"s\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"{k}\"\nsuite = \"aes-128-gcm\"\n"
        ),
        "server.suite",
    );
    fails_naming(
        "server",
        &format!(
            "listen = \"127.0.0.1:0\"\nsuites = [\"chacha\"]\n[[clients]]\nname = \"a\"\ninit_key = \"{k}\"\n"
        ),
        "suites[0]",
    );
}

#[test]
fn gateway_inner_policy_fields_are_required_and_checked() {
    let k = key();
    let base = "inner = \"lo\"\nouter = \"lo\"\nxdp_object = \"/dev/null\"\n";
    let server = format!(
        "[server]\nname = \"s\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"{k}\"\n"
    );
    // A client without the networks behind it.
    fails_naming(
        "up",
        &format!("role = \"client\"\n{base}{server}"),
        "prefixes",
    );
    fails_naming(
        "up",
        &format!("role = \"client\"\n{base}prefixes = [\"10.1.0.0/40\"]\n{server}"),
        "prefixes",
    );
    fails_naming(
        "up",
        &format!("role = \"client\"\n{base}prefixes = [\"10.1.0.0/24\"]\nhub = true\n{server}"),
        "hub",
    );
}

#[test]
fn keygen_out_never_overwrites_and_always_ends_at_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("pktcrypt-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("keys.txt");
    // An existing, world-readable file with keys in it.
    std::fs::write(&path, "pkc1-old-keys\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["keygen", "--count", "2", "--out"])
            .arg(&path)
            .args(extra)
            .output()
            .expect("keygen")
    };
    let out = run(&[]);
    assert!(!out.status.success(), "keygen overwrote an existing file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "pkc1-old-keys\n"
    );
    let out = run(&["--force"]);
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "--force kept the old mode {mode:o}");
    assert_eq!(
        std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .filter(|l| l.starts_with("pkc1-"))
            .count(),
        2
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn daemons_are_not_dumpable_and_write_no_core() {
    // A key-holding role sets RLIMIT_CORE 0 and PR_SET_DUMPABLE 0 before anything else.
    let k = key();
    let dir = std::env::temp_dir().join(format!("pktcrypt-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nstatus_interval_ms = 60000\n[[clients]]\nname = \"a\"\ninit_key = \"{k}\"\n"
        ),
    )
    .expect("config");
    // Started with core dumps allowed (so that the test can fail).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -c unlimited && exec {BIN} server --config {}",
            cfg.display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("server");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let core = status
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit")
        .to_string();
    // No anonymous memory (heap, stacks) in any image still taken (gcore as root).
    let filter = std::fs::read_to_string(format!("/proc/{}/coredump_filter", child.id()))
        .expect("coredump_filter");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");
    assert_eq!(filter.trim(), "00000010", "coredump_filter");
}

#[test]
fn one_init_key_for_two_peers_is_refused() {
    let k = key();
    fails_naming(
        "server",
        &format!(
            "listen = \"127.0.0.1:0\"\n[[clients]]\nname = \"a\"\ninit_key = \"{k}\"\n[[clients]]\nname = \"b\"\ninit_key = \"{k}\"\n"
        ),
        "clients[1] (b): the same init key as clients[0] (a)",
    );
    let g = key();
    fails_naming(
        "group-controller",
        &format!(
            "listen = \"127.0.0.1:0\"\n[group]\ninit_key = \"{g}\"\n[[members]]\nname = \"a\"\ninit_key = \"{k}\"\n[[members]]\nname = \"b\"\ninit_key = \"{g}\"\n"
        ),
        "members[1] (b): the same init key as group",
    );
}

#[test]
fn removed_is_for_group_members_only() {
    let k = key();
    fails_naming(
        "server",
        &format!(
            "listen = \"127.0.0.1:0\"\n[[clients]]\nname = \"a\"\ninit_key = \"{k}\"\nremoved = true\n"
        ),
        "removed",
    );
}

/// `pktcrypt check` accepts good files of every form without touching what the daemon would:
/// interfaces that do not exist here, an address already bound, a status socket (not
/// created), a prompt for a key (not asked: standard input is closed).
#[test]
fn check_accepts_good_files_and_touches_nothing() {
    let k = key();
    let k2 = key();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = std::env::temp_dir().join(format!("pktcrypt-check-{}", std::process::id()));
    let sock = dir.join("never.sock");
    let files = [
        format!(
            "listen = \"{addr}\"\n[[clients]]\nname = \"a\"\ninit_key = \"{k}\"\n\
             [[clients]]\nname = \"b\"\ninit_key = \"prompt\"\n"
        ),
        format!("server = \"{addr}\"\nbind = \"{addr}\"\ninit_key = \"{k}\"\n"),
        format!(
            "role = \"server\"\nname = \"gwB\"\ninner = \"nonexistent0\"\nouter = \"nonexistent1\"\n\
             status_socket = \"{}\"\nmetrics = \"{addr}\"\nprefixes = [\"10.2.0.0/24\"]\n\
             [[clients]]\nname = \"gwA\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\n\
             init_key = \"{k}\"\n",
            sock.display()
        ),
        format!(
            "role = \"group-controller\"\nlocal = \"192.0.2.100\"\n[group]\ninit_key = \"{k2}\"\n\
             [[members]]\nname = \"gwA\"\naddress = \"2001:db8::1\"\ninit_key = \"{k}\"\n"
        ),
    ];
    for toml in files {
        let (ok, err) = run_with(&["check"], &toml);
        assert!(ok, "check refused a good file: {err}\n{toml}");
    }
    assert!(!sock.exists(), "check created the status socket");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_tells_the_form_or_asks_for_it() {
    let (ok, err) = run_with(&["check"], "listen = \"127.0.0.1:0\"\n");
    assert!(!ok && err.contains("--role"), "{err}");
    let (ok, err) = run_with(&["check", "--role", "server"], "role = \"server\"\n");
    assert!(!ok && err.contains("role"), "{err}");
}
