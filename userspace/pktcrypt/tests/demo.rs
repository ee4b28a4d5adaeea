//! The demonstration runs for real (UDP on loopback) and reports a hitless rekey.

use std::process::Command;

#[test]
fn demo_runs_hitless_over_loopback() {
    let out = Command::new(env!("CARGO_BIN_EXE_pktcrypt"))
        .args(["demo", "--rounds", "5", "--packets", "64"])
        .output()
        .expect("run pktcrypt demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("640 data packets sent, 640 opened; 0 lost"),
        "{stdout}"
    );
    assert!(stdout.contains("replay=1"), "{stdout}");
    assert!(stdout.contains("auth_failed=1"), "{stdout}");
    assert!(stdout.contains("unknown_spi=1"), "{stdout}");
    assert!(stdout.contains("truncated=1"), "{stdout}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_pktcrypt"))
        .args(["demo", "--rounds", "many"])
        .output()
        .expect("run pktcrypt");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds: expected a whole number"));
}
