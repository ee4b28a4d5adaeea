//! The command line as an operator meets it: `--help` for every command, `--version`, the
//! usage listing every command, completions and man pages from the same definitions, usage
//! errors, and an init key typed at a terminal that is not echoed.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_pktcrypt");

const COMMANDS: [&str; 15] = [
    "demo",
    "keygen",
    "server",
    "client",
    "group-controller",
    "group-member",
    "up",
    "down",
    "check",
    "show",
    "status",
    "export-keys",
    "xdp-attach",
    "completions",
    "man",
];

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run pktcrypt")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_command_has_help_and_the_usage_lists_them_all() {
    let top = run(&["--help"]);
    assert!(top.status.success());
    let usage = stdout(&top);
    for cmd in COMMANDS {
        assert!(
            usage.lines().any(|l| l.trim_start().starts_with(cmd)),
            "usage lacks {cmd}:\n{usage}"
        );
        for flag in ["--help", "-h"] {
            let out = run(&[cmd, flag]);
            assert!(
                out.status.success(),
                "pktcrypt {cmd} {flag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout(&out).contains("Usage: pktcrypt "), "{cmd} {flag}");
        }
    }
    // Without a command: the usage on standard error, exit 2.
    let none = run(&[]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("Usage: pktcrypt"));
}

#[test]
fn version() {
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert!(out.status.success());
        assert_eq!(
            stdout(&out).trim(),
            format!("pktcrypt {}", env!("CARGO_PKG_VERSION"))
        );
    }
    let out = run(&["show", "--version"]);
    assert!(out.status.success(), "subcommands take --version too");
}

#[test]
fn usage_errors_exit_2_naming_the_argument() {
    for (args, names) in [
        (&["up"][..], "--config"),
        (&["status"][..], "--config"),
        (
            &["status", "--config", "a", "--socket", "b"][..],
            "--socket",
        ),
        (&["keygen", "--count", "x"][..], "--count"),
        (&["keygen", "--force"][..], "--out"),
        (&["frobnicate"][..], "frobnicate"),
        (&["completions", "cmd.exe"][..], "cmd.exe"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
    }
    // Errors of the command itself: exit 1, prefixed with the command.
    let out = run(&["status", "--socket", "/nonexistent/pktcrypt.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("pktcrypt status: "));
}

#[test]
fn completions_and_man_pages_come_from_the_definitions() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = stdout(&out);
        for cmd in ["group-controller", "export-keys", "show"] {
            assert!(script.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
    let page = run(&["man"]);
    assert!(page.status.success());
    let page = stdout(&page);
    assert!(
        page.starts_with(".ie") || page.contains(".TH pktcrypt"),
        "{page}"
    );
    let dir = std::env::temp_dir().join(format!("pktcrypt-man-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = run(&["man", "--dir", dir.to_str().expect("utf-8")]);
    assert!(out.status.success());
    for cmd in COMMANDS {
        let path = dir.join(format!("pktcrypt-{cmd}.1"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert!(text.contains(".TH"), "{path:?}");
    }
    assert!(dir.join("pktcrypt.1").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn key() -> String {
    stdout(&run(&["keygen"])).trim().to_string()
}

/// Writes a client's file whose init key is `init_key = "prompt"`, for a server that is not
/// there (the client only needs to start).
fn prompt_client(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let path = dir.join("client.toml");
    std::fs::write(
        &path,
        "server = \"127.0.0.1:9\"\nbind = \"127.0.0.1:0\"\nstatus_interval_ms = 100\n\
         init_key = \"prompt\"\n",
    )
    .expect("write");
    path
}

/// On a terminal the key typed is not echoed; the terminal echoes again afterwards.
#[test]
fn a_key_typed_at_the_prompt_is_not_echoed() {
    let dir = std::env::temp_dir().join(format!("pktcrypt-prompt-{}", std::process::id()));
    let cfg = prompt_client(&dir);
    let code = key();
    // A pseudo-terminal through Python's pty module: the client's standard input, output and
    // error are the terminal, whose echo is on as for an operator.
    let script = r#"
import os, pty, sys, time, termios, signal
binary, cfg, code = sys.argv[1:4]
pid, fd = pty.fork()
if pid == 0:
    os.execv(binary, [binary, "client", "--config", cfg])
import select
def read_until(needle, limit):
    # Never blocks past the limit (a daemon that lost the line must fail the test, not hang it).
    buf = b""
    end = time.time() + limit
    while needle not in buf and time.time() < end:
        if not select.select([fd], [], [], max(0.0, end - time.time()))[0]:
            break
        try:
            buf += os.read(fd, 4096)
        except OSError:
            break
    return buf
before = read_until(b"enter the init key code: ", 10)
# At once, as a paste does: what is typed once the prompt shows must not be lost.
os.write(fd, code.encode() + b"\n")
after = read_until(b"\"role\":\"client\"", 10)
echo_after = bool(termios.tcgetattr(fd)[3] & termios.ECHO)
os.kill(pid, signal.SIGKILL if b"role" not in after else signal.SIGTERM)
os.waitpid(pid, 0)
print(repr(before))
print(repr(after))
print("echo restored" if echo_after else "echo off")
"#;
    // Typist and daemon on one CPU, several times: the script answers the moment the prompt
    // shows, so a daemon that turned echo off (discarding input) after showing the prompt
    // loses the line now and then (3 of 10 runs before the fix).
    for run in 0..5 {
        let out = Command::new("taskset")
            .args(["-c", "0", "python3", "-c", script, BIN])
            .args([cfg.to_str().expect("utf-8"), &code])
            .output()
            .expect("taskset python3");
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "run {run}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("enter the init key code"),
            "run {run}: {text}"
        );
        // The client ran with the key (its status line came) and the key never appeared.
        assert!(
            lines[1].contains("\"role\":\"client\""),
            "run {run}: {text}"
        );
        assert!(
            !text.contains(&code),
            "run {run}: the key was echoed: {text}"
        );
        assert_eq!(lines[2], "echo restored", "run {run}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Not a terminal: the key is read as a line from standard input, as before.
#[test]
fn a_key_piped_to_the_prompt_is_read() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("pktcrypt-prompt-pipe-{}", std::process::id()));
    let cfg = prompt_client(&dir);
    let mut child = Command::new(BIN)
        .args(["client", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("client");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{}", key()).expect("write");
    drop(stdin);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().expect("wait");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("\"role\":\"client\""));
}
