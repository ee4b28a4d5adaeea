//! TOML configuration of the roles, in two forms each: over UDP (`pktcrypt server`, `client`,
//! `group-controller`, `group-member`: [`udp`]) and as a gateway (`pktcrypt up`, the role named by
//! `role = "..."`: [`gateway`]). A role's settings are one struct shared by both of its forms
//! ([`roles`]); each form adds its own keys around them, side by side in one table
//! ([`document`] reads the parts). Unknown keys, keys of another role and bad values fail at
//! load time with a message naming the key, and its line.
//!
//! Init keys come from exactly one of `init_key` (a `pkc1-` text code, or `"prompt"` to read one
//! from standard input, not echoed on a terminal), `init_key_file` (one text code per line; line *i* for instance *i*) or
//! `init_key_env` (the name of an environment variable holding a text code).

mod document;
pub(crate) mod gateway;
pub(crate) mod roles;
pub(crate) mod udp;

#[cfg(test)]
mod tests;

pub(crate) use document::Document;
pub(crate) use gateway::{
    ControllerGateway, Daemon, DataPathRole, GatewayFile, GatewayPeer, GatewayRole, MemberGateway,
};
pub(crate) use udp::{ClientFile, GroupControllerFile, GroupMemberFile, ServerFile};

use crate::keycode;
use pktcrypt_core::aead::Backend;
use pktcrypt_core::control::Pfs;
use pktcrypt_core::{EngineConfig, Generation, Role, Suite};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Where an init key comes from. `Debug` never shows a key given inline, and it is wiped
/// when dropped.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeySource {
    /// A text code, or "prompt".
    pub(crate) init_key: Option<String>,
    /// A file of text codes, one per line.
    pub(crate) init_key_file: Option<PathBuf>,
    /// An environment variable holding a text code.
    pub(crate) init_key_env: Option<String>,
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySource")
            .field(
                "init_key",
                &self.init_key.as_ref().map(|k| {
                    if k == "prompt" {
                        "prompt"
                    } else {
                        "(redacted)"
                    }
                }),
            )
            .field("init_key_file", &self.init_key_file)
            .field("init_key_env", &self.init_key_env)
            .finish()
    }
}

impl Drop for KeySource {
    fn drop(&mut self) {
        if let Some(k) = &mut self.init_key {
            zeroize::Zeroize::zeroize(k);
        }
    }
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
                if !PROMPT.load(Ordering::Relaxed) {
                    tracing::warn!(
                        field,
                        "init_key = \"prompt\": asked for at start, not checked here"
                    );
                    return Ok(stand_in_key());
                }
                prompt(&format!("{field}: enter the init key code: "))
                    .map_err(|e| format!("{field}.init_key: reading the prompt: {e}"))?
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

/// Whether `init_key = "prompt"` asks (else a stand-in key: `pktcrypt check`).
static PROMPT: AtomicBool = AtomicBool::new(true);

/// `pktcrypt check`: an `init_key = "prompt"` is not asked for; a random key stands in for it
/// (and a warning says so).
pub(crate) fn skip_prompts() {
    PROMPT.store(false, Ordering::Relaxed);
}

/// A random init key, for a prompt skipped.
fn stand_in_key() -> Generation {
    use pktcrypt_core::control::Random as _;
    let mut secret = [0u8; 32];
    pktcrypt_os::OsRandom.fill(&mut secret);
    let spi = loop {
        let mut b = [0u8; 4];
        pktcrypt_os::OsRandom.fill(&mut b);
        if let Ok(spi) = pktcrypt_core::Spi::new(u32::from_be_bytes(b)) {
            break spi;
        }
    };
    Generation {
        info: pktcrypt_core::GenerationInfo {
            number: 0,
            spi,
            suite: Suite::Aes256Gcm,
        },
        secret: pktcrypt_core::Secret::from_bytes(secret),
    }
}

/// Shows `text` on standard error and reads one line from standard input, without echo when
/// it is a terminal. Not a terminal: a line as it comes (a pipe, a file).
///
/// Echo goes off (discarding what was typed before) *before* the prompt is shown, as
/// getpass(3) does: whatever is typed once the prompt is visible is kept. (Discarding after
/// showing it lost a code pasted quickly, and left the daemon waiting.)
fn prompt(text: &str) -> std::io::Result<zeroize::Zeroizing<String>> {
    use rustix::termios::{LocalModes, OptionalActions, isatty, tcgetattr, tcsetattr};
    use std::io::Write as _;
    let stdin = std::io::stdin();
    let mut line = zeroize::Zeroizing::new(String::with_capacity(256));
    if !isatty(&stdin) {
        eprint!("{text}");
        stdin.lock().read_line(&mut line)?;
        return Ok(line);
    }
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    // The newline the operator types is still echoed.
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)?;
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    let read = stdin.lock().read_line(&mut line);
    let restored = tcsetattr(&stdin, OptionalActions::Now, &saved);
    read?;
    restored?;
    Ok(line)
}

/// A role, as `role = "..."` names it in a gateway's file and as its UDP subcommand is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RoleName {
    /// A key server.
    Server,
    /// A key server's client.
    Client,
    /// A group's key controller.
    GroupController,
    /// A group member.
    GroupMember,
}

impl RoleName {
    /// Every role.
    pub(crate) const ALL: [RoleName; 4] = [
        RoleName::Server,
        RoleName::Client,
        RoleName::GroupController,
        RoleName::GroupMember,
    ];

    /// The name in files and on the command line.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RoleName::Server => "server",
            RoleName::Client => "client",
            RoleName::GroupController => "group-controller",
            RoleName::GroupMember => "group-member",
        }
    }
}

/// Which keys a file may have: a role over UDP or as a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// `pktcrypt <role> --config FILE`.
    Udp(RoleName),
    /// `pktcrypt up --config FILE` with `role = "<role>"`.
    Gateway(RoleName),
}

impl Form {
    /// Every form.
    pub(crate) const ALL: [Form; 8] = {
        let r = RoleName::ALL;
        [
            Form::Udp(r[0]),
            Form::Udp(r[1]),
            Form::Udp(r[2]),
            Form::Udp(r[3]),
            Form::Gateway(r[0]),
            Form::Gateway(r[1]),
            Form::Gateway(r[2]),
            Form::Gateway(r[3]),
        ]
    };

    /// Its top-level keys.
    pub(crate) fn keys(self) -> Vec<&'static str> {
        match self {
            Form::Udp(role) => udp::keys(role),
            Form::Gateway(role) => gateway::keys(role),
        }
    }
}

/// A configuration file, read from a parsed document.
pub(crate) trait ConfigFile: Sized {
    /// Reads it (its keys checked, then its parts).
    fn read(doc: &Document<'_>) -> Result<Self, toml::de::Error>;
}

/// Reads and parses a configuration file.
pub(crate) fn load<T: ConfigFile>(path: &Path) -> Result<T, String> {
    load_with_table(path).map(|(t, _)| t)
}

/// [`load`], with the file's TOML table as read (what a reload compares against).
pub(crate) fn load_with_table<T: ConfigFile>(path: &Path) -> Result<(T, toml::Table), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let file = Document::parse(&text)
        .and_then(|doc| T::read(&doc))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let table = text
        .parse::<toml::Table>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((file, table))
}

/// The engine's configuration for `role`: the replay window and ESN (default on) of a role's
/// settings.
pub(crate) fn engine(
    role: Role,
    replay_window: Option<u32>,
    esn: Option<bool>,
) -> Result<EngineConfig, String> {
    let mut e = EngineConfig::new(role);
    e.esn = esn.unwrap_or(e.esn);
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

/// `suite = "aes-256-gcm"`: a suite by name (`deserialize_with` of an optional key).
pub(crate) fn suite<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Suite>, D::Error> {
    let Some(name) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    name.parse()
        .map(Some)
        .map_err(|e| de::Error::custom(format!("suite: {name:?}: {e}")))
}

/// `suites = ["aes-256-gcm", "chacha20-poly1305"]`: a rotation of suites by name
/// (`deserialize_with` of an optional key); an empty list is refused.
pub(crate) fn suites<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Suite>>, D::Error> {
    let Some(names) = Option::<Vec<String>>::deserialize(d)? else {
        return Ok(None);
    };
    if names.is_empty() {
        return Err(de::Error::custom(
            "suites: at least one suite (or leave the key out)",
        ));
    }
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            name.parse()
                .map_err(|e| de::Error::custom(format!("suites[{i}]: {name:?}: {e}")))
        })
        .collect::<Result<Vec<Suite>, D::Error>>()
        .map(Some)
}

/// `backend = "default" | "ring+aws-lc" | "ring" | "aws-lc" | "rustcrypto"` (and
/// `"null-insecure"` in builds with the benchmark-only feature `insecure-null-backend`): the AEAD
/// implementation.
pub(crate) fn backend<'de, D: Deserializer<'de>>(d: D) -> Result<Backend, D::Error> {
    let name = String::deserialize(d)?;
    Backend::from_name(&name).ok_or_else(|| {
        let known: Vec<&str> = Backend::all().iter().map(|b| b.name()).collect();
        de::Error::custom(format!(
            "backend: {name:?} is not a backend of this build (default, {})",
            known.join(", ")
        ))
    })
}

/// `xdp_mode = "auto" | "native" | "generic"`.
pub(crate) fn xdp_mode<'de, D: Deserializer<'de>>(d: D) -> Result<pktcrypt_io::XdpMode, D::Error> {
    let name = String::deserialize(d)?;
    pktcrypt_io::XdpMode::from_name(&name).ok_or_else(|| {
        de::Error::custom(format!(
            "xdp_mode: {name:?} is not \"auto\", \"native\" or \"generic\""
        ))
    })
}

/// `pfs = "every-rekey" | "init-only" | "off" | N` (N: every Nth rotation exchanges keys).
pub(crate) fn pfs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Pfs>, D::Error> {
    struct PfsVisitor;
    impl Visitor<'_> for PfsVisitor {
        type Value = Pfs;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("\"every-rekey\", \"init-only\", \"off\" or a positive number")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Pfs, E> {
            v.parse().map_err(|e| E::custom(format!("pfs: {e}")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Pfs, E> {
            u32::try_from(v)
                .map_err(|_| format!("{v} is not a positive number"))
                .and_then(|n| n.to_string().parse())
                .map_err(|e| E::custom(format!("pfs: {e}")))
        }
    }
    struct Optional;
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<Pfs>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            PfsVisitor.expecting(f)
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<Pfs>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<Pfs>, D::Error> {
            d.deserialize_any(PfsVisitor).map(Some)
        }
    }
    d.deserialize_option(Optional)
}

/// The group init key, in its own table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupKeyTable {
    /// The group init key (its SPI is the base of the members' init SPIs).
    #[serde(flatten)]
    pub(crate) key: KeySource,
}

/// Detects an init key configured twice (two clients or members sharing a key would share
/// every (key, nonce) of their handshakes' key derivation and could impersonate each other).
/// Keys are compared by their SHA-256, never byte by byte.
/// The SHA-256 of an init key's secret: how keys are told apart (never byte by byte).
pub(crate) fn key_digest(key: &pktcrypt_core::Generation) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.secret.expose()).into()
}

#[derive(Default)]
pub(crate) struct DistinctKeys(HashMap<[u8; 32], String>);

impl DistinctKeys {
    /// Records `key` for `field`; an error naming both fields if it was seen before.
    pub(crate) fn check(
        &mut self,
        field: &str,
        key: &pktcrypt_core::Generation,
    ) -> Result<(), String> {
        let digest = key_digest(key);
        if let Some(other) = self.0.get(&digest) {
            return Err(format!(
                "{field}: the same init key as {other} (every peer needs a key of its own)"
            ));
        }
        self.0.insert(digest, field.to_string());
        Ok(())
    }
}
