//! Helpers shared by the cross-implementation tests in `tests/tests/`.

use std::path::PathBuf;
use std::process::Command;

/// The Python interpreter with the `cryptography` package: `$PKTCRYPT_PYTHON`, else the
/// repository's `.venv` made by `scripts/setup.sh`, else `python3`.
pub fn python() -> Command {
    if let Some(p) = std::env::var_os("PKTCRYPT_PYTHON") {
        return Command::new(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        Command::new(venv)
    } else {
        Command::new("python3")
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

pub mod group_sim;
pub mod sim;
