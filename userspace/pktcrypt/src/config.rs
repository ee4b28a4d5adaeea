//! TOML configuration of the control-plane roles. Unknown fields and bad values fail at load time
//! with a message naming the field.
//!
//! Init keys come from exactly one of `init_key` (a `pkc1-` text code, or `"prompt"` to read one
//! from standard input), `init_key_file` (one text code per line; line *i* for instance *i*) or
//! `init_key_env` (the name of an environment variable holding a text code).

use crate::keycode;
use pktcrypt_core::control::{ClientConfig, GroupConfig, ServerConfig};
use pktcrypt_core::{EngineConfig, Generation, Role, Suite};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where an init key comes from.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeySource {
    /// A text code, or "prompt".
    pub(crate) init_key: Option<String>,
    /// A file of text codes, one per line.
    pub(crate) init_key_file: Option<PathBuf>,
    /// An environment variable holding a text code.
    pub(crate) init_key_env: Option<String>,
}

impl KeySource {
    /// Loads key number `index` (for files with several lines; 0 otherwise). `field` names the
    /// table in error messages.
    pub(crate) fn load(
        &self,
        field: &str,
        index: usize,
        base: &Path,
    ) -> Result<Generation, String> {
        let set = [
            self.init_key.is_some(),
            self.init_key_file.is_some(),
            self.init_key_env.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(format!(
                "{field}: set exactly one of init_key, init_key_file, init_key_env"
            ));
        }
        let mut source = format!("{field}.init_key");
        let code = if let Some(k) = &self.init_key {
            if k == "prompt" {
                eprint!("{field}: enter the init key code: ");
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| format!("{field}.init_key: reading the prompt: {e}"))?;
                zeroize::Zeroizing::new(line)
            } else {
                zeroize::Zeroizing::new(k.clone())
            }
        } else if let Some(path) = &self.init_key_file {
            let path = if path.is_relative() {
                base.join(path)
            } else {
                path.clone()
            };
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                format!("{field}.init_key_file: cannot read {}: {e}", path.display())
            })?);
            let line = text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .nth(index)
                .ok_or_else(|| {
                    format!(
                        "{field}.init_key_file: {} has no key on line {}",
                        path.display(),
                        index + 1
                    )
                })?;
            source = format!(
                "{field}.init_key_file ({}, key {})",
                path.display(),
                index + 1
            );
            zeroize::Zeroizing::new(line.to_string())
        } else if let Some(var) = &self.init_key_env {
            source = format!("{field}.init_key_env ({var})");
            zeroize::Zeroizing::new(std::env::var(var).map_err(|_| {
                format!("{field}.init_key_env: environment variable {var} is not set")
            })?)
        } else {
            return Err(format!("{field}: no init key"));
        };
        keycode::decode(&code).map_err(|e| format!("{source}: {e}"))
    }
}

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_millis)
}

fn suite(field: &str, name: &Option<String>, default: Suite) -> Result<Suite, String> {
    match name {
        None => Ok(default),
        Some(n) => n.parse().map_err(|e| format!("{field}: {e}")),
    }
}

pub(crate) fn engine(role: Role, replay_window: Option<u32>) -> Result<EngineConfig, String> {
    let mut e = EngineConfig::new(role);
    if let Some(w) = replay_window {
        if !(64..=8192).contains(&w) || !w.is_multiple_of(64) {
            return Err(format!(
                "replay_window: {w} is not a multiple of 64 in 64..=8192"
            ));
        }
        e.replay_window = w;
    }
    // No wall-clock sequence base: every role runs protocol version 3, which seals nothing
    // under an init key with a counter (`EngineConfig::handshake_init`).
    Ok(e)
}

/// `pfs = "every-rekey" | "init-only" | "off" | N` (N: every Nth rotation exchanges keys).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PfsSetting {
    /// A policy by name.
    Name(String),
    /// Every Nth rotation.
    Every(i64),
}

impl PfsSetting {
    pub(crate) fn parse(&self) -> Result<pktcrypt_core::control::Pfs, String> {
        match self {
            PfsSetting::Name(n) => n.parse(),
            PfsSetting::Every(n) => u32::try_from(*n)
                .map_err(|_| format!("{n} is not a positive number"))?
                .to_string()
                .parse(),
        }
    }
}

/// `[[clients]]` of a server, `[[members]]` of a group controller.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerEntry {
    /// A name for logs and status.
    pub(crate) name: String,
    /// Known address (learned from its packets otherwise).
    pub(crate) address: Option<SocketAddr>,
    /// Its init key.
    #[serde(flatten)]
    pub(crate) key: KeySource,
    /// `pktcrypt group-controller`'s `[[members]]` only: the member is removed (it keeps its
    /// index): it gets no generation and its joins are refused.
    #[serde(default)]
    pub(crate) removed: bool,
}

/// `pktcrypt server` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    /// UDP address to listen on.
    pub(crate) listen: SocketAddr,
    /// Suite of new generations.
    pub(crate) suite: Option<String>,
    /// Derived-key mode.
    pub(crate) derived: Option<bool>,
    /// Forward secrecy: which rotations exchange fresh ephemeral keys.
    pub(crate) pfs: Option<PfsSetting>,
    /// Init handshakes answered per second at most.
    pub(crate) max_handshakes_per_second: Option<u32>,
    /// Rotate every client this often (0: never on a timer).
    pub(crate) rekey_interval_ms: Option<u64>,
    /// Rekey timer jitter, permille.
    pub(crate) rekey_jitter_permille: Option<u32>,
    /// Rate limit of rekeys per second.
    pub(crate) max_rekeys_per_second: Option<u32>,
    /// First retransmission of a distribution.
    pub(crate) distribution_retry_ms: Option<u64>,
    /// Implicit resend spacing.
    pub(crate) implicit_resend_ms: Option<u64>,
    /// Reorder grace.
    pub(crate) reorder_grace_ms: Option<u64>,
    /// Anti-replay window.
    pub(crate) replay_window: Option<u32>,
    /// Synthetic data packets per second to each client (0: none).
    pub(crate) traffic_pps: Option<u32>,
    /// Status line interval.
    pub(crate) status_interval_ms: Option<u64>,
    /// The clients.
    pub(crate) clients: Vec<PeerEntry>,
}

impl ServerFile {
    /// The state-machine configuration.
    pub(crate) fn server_config(&self) -> Result<ServerConfig, String> {
        let mut c = ServerConfig::new();
        c.engine = engine(Role::KeyServer, self.replay_window)?;
        c.suite = suite("suite", &self.suite, c.suite)?;
        c.triggers =
            pktcrypt_core::control::RekeyTriggers::for_suite(c.suite, c.engine.max_esp_len);
        c.derived = self.derived.unwrap_or(false);
        if let Some(p) = &self.pfs {
            c.pfs = p.parse().map_err(|e| format!("pfs: {e}"))?;
        }
        if let Some(h) = self.max_handshakes_per_second {
            if h == 0 {
                return Err("max_handshakes_per_second: must be at least 1".into());
            }
            c.max_handshakes_per_second = h;
        }
        c.rekey_interval = match self.rekey_interval_ms {
            Some(0) => None,
            Some(v) => Some(Duration::from_millis(v)),
            None => c.rekey_interval,
        };
        c.rekey_jitter_permille = self
            .rekey_jitter_permille
            .unwrap_or(c.rekey_jitter_permille);
        if c.rekey_jitter_permille > 1000 {
            return Err("rekey_jitter_permille: must be at most 1000".into());
        }
        c.max_rekeys_per_second = self
            .max_rekeys_per_second
            .unwrap_or(c.max_rekeys_per_second);
        if c.max_rekeys_per_second == 0 {
            return Err("max_rekeys_per_second: must be at least 1".into());
        }
        c.distribution_retry = ms(self.distribution_retry_ms, c.distribution_retry);
        c.implicit_resend_interval = ms(self.implicit_resend_ms, c.implicit_resend_interval);
        c.reorder_grace = ms(self.reorder_grace_ms, c.reorder_grace);
        if self.clients.is_empty() {
            return Err("clients: at least one [[clients]] entry is needed".into());
        }
        Ok(c)
    }
}

/// `pktcrypt client` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientFile {
    /// The key server's UDP address.
    pub(crate) server: SocketAddr,
    /// Local address to bind (port 0: any).
    pub(crate) bind: Option<SocketAddr>,
    /// Run this many client instances (line i of `init_key_file` for instance i).
    pub(crate) count: Option<usize>,
    /// Name prefix for status lines.
    pub(crate) name: Option<String>,
    /// The init key(s).
    #[serde(flatten)]
    pub(crate) key: KeySource,
    /// Client-timed update interval (0: none).
    pub(crate) update_interval_ms: Option<u64>,
    /// Hello interval.
    pub(crate) hello_interval_ms: Option<u64>,
    /// First request retransmission.
    pub(crate) request_timeout_ms: Option<u64>,
    /// Largest retransmission interval.
    pub(crate) max_backoff_ms: Option<u64>,
    /// Unanswered requests before falling back to the init key.
    pub(crate) max_retries: Option<u32>,
    /// Anti-replay window.
    pub(crate) replay_window: Option<u32>,
    /// Synthetic data packets per second to the server (0: none).
    pub(crate) traffic_pps: Option<u32>,
    /// Status line interval.
    pub(crate) status_interval_ms: Option<u64>,
}

impl ClientFile {
    /// The state-machine configuration.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, String> {
        let mut c = ClientConfig::new();
        c.engine = engine(Role::Client, self.replay_window)?;
        c.update_interval = match self.update_interval_ms {
            Some(0) | None => None,
            Some(v) => Some(Duration::from_millis(v)),
        };
        c.hello_interval = ms(self.hello_interval_ms, c.hello_interval);
        c.request_timeout = ms(self.request_timeout_ms, c.request_timeout);
        c.max_backoff = ms(self.max_backoff_ms, c.max_backoff);
        c.max_retries = self.max_retries.unwrap_or(c.max_retries);
        if c.request_timeout.is_zero() {
            return Err("request_timeout_ms: must be positive".into());
        }
        if c.hello_interval.is_zero() {
            return Err("hello_interval_ms: must be positive".into());
        }
        if self.count == Some(0) {
            return Err("count: must be at least 1".into());
        }
        Ok(c)
    }
}

/// The group init key, in its own table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupKeyTable {
    /// The group init key (its SPI is the base of the members' init SPIs).
    #[serde(flatten)]
    pub(crate) key: KeySource,
}

/// `pktcrypt group-controller` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupControllerFile {
    /// UDP address to listen on.
    pub(crate) listen: SocketAddr,
    /// Suite of new group generations.
    pub(crate) suite: Option<String>,
    /// Rekey interval (0: only on events).
    pub(crate) rekey_interval_ms: Option<u64>,
    /// First retransmission.
    pub(crate) retry_ms: Option<u64>,
    /// Retransmissions before a member is unresponsive.
    pub(crate) max_retries: Option<u32>,
    /// Evict unresponsive members.
    pub(crate) evict_unresponsive: Option<bool>,
    /// When the members' control channels exchange fresh ephemeral keys (as a key server's).
    pub(crate) pfs: Option<PfsSetting>,
    /// Status line interval.
    pub(crate) status_interval_ms: Option<u64>,
    /// The group init key.
    pub(crate) group: GroupKeyTable,
    /// Members, in index order.
    pub(crate) members: Vec<PeerEntry>,
}

/// `pktcrypt group-member` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupMemberFile {
    /// The controller's address.
    pub(crate) controller: SocketAddr,
    /// Local address (members send group data to each other's `bind`).
    pub(crate) bind: SocketAddr,
    /// This member's index.
    pub(crate) index: u16,
    /// Addresses of all members, in index order (data goes to every other one).
    pub(crate) peers: Vec<SocketAddr>,
    /// The pairwise control init key.
    #[serde(flatten)]
    pub(crate) key: KeySource,
    /// The group init key.
    pub(crate) group: GroupKeyTable,
    /// Synthetic data packets per second to the group.
    pub(crate) traffic_pps: Option<u32>,
    /// Status line interval.
    pub(crate) status_interval_ms: Option<u64>,
}

/// Group settings shared by controller and member files.
pub(crate) fn group_config(
    suite_name: &Option<String>,
    rekey_interval_ms: Option<u64>,
    retry_ms: Option<u64>,
    max_retries: Option<u32>,
    evict: Option<bool>,
    role: Role,
) -> Result<GroupConfig, String> {
    let mut c = GroupConfig::new();
    c.engine = engine(role, None)?;
    c.suite = suite("suite", suite_name, c.suite)?;
    c.rekey_interval = match rekey_interval_ms {
        Some(0) => None,
        Some(v) => Some(Duration::from_millis(v)),
        None => c.rekey_interval,
    };
    c.retry = ms(retry_ms, c.retry);
    c.max_retries = max_retries.unwrap_or(c.max_retries);
    c.evict_unresponsive = evict.unwrap_or(c.evict_unresponsive);
    Ok(c)
}

/// Reads and parses a TOML file.
pub(crate) fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Detects an init key configured twice (two clients or members sharing a key would share
/// every (key, nonce) of their handshakes' key derivation and could impersonate each other).
/// Keys are compared by their SHA-256, never byte by byte.
#[derive(Default)]
pub(crate) struct DistinctKeys(HashMap<[u8; 32], String>);

impl DistinctKeys {
    /// Records `key` for `field`; an error naming both fields if it was seen before.
    pub(crate) fn check(
        &mut self,
        field: &str,
        key: &pktcrypt_core::Generation,
    ) -> Result<(), String> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(key.secret.expose()).into();
        if let Some(other) = self.0.get(&digest) {
            return Err(format!(
                "{field}: the same init key as {other} (every peer needs a key of its own)"
            ));
        }
        self.0.insert(digest, field.to_string());
        Ok(())
    }
}
