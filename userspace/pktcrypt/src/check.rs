//! `pktcrypt check --config FILE`: validates a configuration file without touching interfaces,
//! binding sockets or loading an XDP program. A file with `role = ...` is read as `pktcrypt up`
//! reads it; any other as the UDP role it is written for (`--role`, or guessed from its keys).
//! Beyond reading the file (unknown keys, bad values, with their lines), it loads the init keys
//! and builds the role's state machine as the daemon does at start, so what the daemon would
//! refuse before touching the system (two peers with one key, a bad prefix, an index beyond
//! the members, no clients, ...) is refused here with the same message naming the field.

use crate::cli::CheckArgs;
use crate::config::{self, Form, GatewayFile, GatewayRole, RoleName};
use crate::driver;
use crate::up;
use std::path::Path;

/// Checks the file; a one-line summary of what it configures.
pub(crate) fn run(args: &CheckArgs) -> Result<String, String> {
    // An `init_key = "prompt"` would wait for a terminal: a random key stands in for it.
    config::skip_prompts();
    let path = args.config.as_path();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    // The top-level keys, to tell the form (a syntax error is reported by the reading below).
    let keys: Vec<String> = toml::from_str::<toml::Table>(&text)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let base = path.parent().unwrap_or(Path::new("."));
    if keys.iter().any(|k| k == "role") {
        if let Some(role) = &args.role {
            return Err(format!(
                "--role {role}: the file names its role (`role = ...`): it is a gateway's \
                 (`pktcrypt up`)"
            ));
        }
        return gateway(path, base);
    }
    let role = match &args.role {
        Some(r) => RoleName::ALL
            .into_iter()
            .find(|n| n.as_str() == r)
            .ok_or_else(|| format!("--role: {r:?} is not a role"))?,
        None => guess(&keys).ok_or_else(|| {
            format!(
                "{}: cannot tell which role this file is for (no `role = ...` for `pktcrypt \
                 up`, and its keys fit no UDP role better than another): pass --role",
                path.display()
            )
        })?,
    };
    udp(role, path, base)
}

/// The UDP role whose keys cover most of `keys` (`None` on a tie or when none has any).
fn guess(keys: &[String]) -> Option<RoleName> {
    let mut scores: Vec<(usize, RoleName)> = RoleName::ALL
        .into_iter()
        .map(|r| {
            let known = Form::Udp(r).keys();
            (
                keys.iter().filter(|k| known.contains(&k.as_str())).count(),
                r,
            )
        })
        .collect();
    scores.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    match scores.as_slice() {
        [(best, role), (second, _), ..] if *best > 0 && best > second => Some(*role),
        _ => None,
    }
}

fn udp(role: RoleName, path: &Path, base: &Path) -> Result<String, String> {
    let what = match role {
        RoleName::Server => {
            let file: config::ServerFile = config::load(path)?;
            let (_, names) = driver::server(&file, base)?;
            let mut names: Vec<String> = names.into_values().collect();
            names.sort();
            format!(
                "listens on {}, {} client(s): {}",
                file.listen,
                names.len(),
                names.join(", ")
            )
        }
        RoleName::Client => {
            let file: config::ClientFile = config::load(path)?;
            file.client_config()?;
            let keys = driver::client_keys(&file, base)?;
            format!("server {}, {} instance(s)", file.server, keys.len())
        }
        RoleName::GroupController => {
            let file: config::GroupControllerFile = config::load(path)?;
            driver::group_controller(&file, base)?;
            format!(
                "listens on {}, {} member(s)",
                file.listen,
                file.members.len()
            )
        }
        RoleName::GroupMember => {
            let file: config::GroupMemberFile = config::load(path)?;
            driver::group_member(&file, base)?;
            format!(
                "member {} of {}, controller {}",
                file.index,
                file.peers.len(),
                file.controller
            )
        }
    };
    Ok(format!(
        "{}: ok: `pktcrypt {}` ({what})",
        path.display(),
        role.as_str()
    ))
}

fn gateway(path: &Path, base: &Path) -> Result<String, String> {
    let GatewayFile { daemon, role } = config::load(path)?;
    let port = daemon.port.unwrap_or(pktcrypt_common::DEFAULT_ESP_UDP_PORT);
    let name = daemon.name.clone().unwrap_or_else(|| "pktcrypt".into());
    let (role_name, what) = match &role {
        GatewayRole::GroupController(file) => {
            // As `pktcrypt up` checks a controller before binding its socket.
            if file.members.is_empty() {
                return Err(
                    "members: a group controller needs at least one [[members]] entry".into(),
                );
            }
            let settings = file.settings.config()?;
            let group_init = file.group.key.load("group", 0, base)?;
            let cport = up::control_port(file.control_port, port)?;
            let mut controller = pktcrypt_core::control::GroupController::new(
                settings,
                &group_init,
                Box::new(pktcrypt_os::OsRandom),
            )
            .map_err(|e| e.to_string())?;
            let mut distinct = config::DistinctKeys::default();
            distinct.check("group", &group_init)?;
            for (i, m) in file.members.iter().enumerate() {
                let field = format!("members[{i}] ({})", m.name);
                let key = m.key.load(&field, 0, base)?;
                distinct.check(&field, &key)?;
                controller
                    .add_member(
                        &key,
                        Some(std::net::SocketAddr::new(m.address, cport)),
                        false,
                        pktcrypt_os::now(),
                    )
                    .map_err(|e| format!("{field}: {e}"))?;
            }
            (
                RoleName::GroupController.as_str(),
                format!("control port {cport}, {} member(s)", file.members.len()),
            )
        }
        GatewayRole::DataPath(data_path, role) => {
            // As `pktcrypt up` checks a data path before it reads the interfaces.
            let frames = data_path.frames.unwrap_or(8192);
            if !(256..=262_144).contains(&frames) {
                return Err("frames: must be in 256..=262144".into());
            }
            if let Some(object) = &data_path.xdp_object {
                let object = if object.is_relative() {
                    base.join(object)
                } else {
                    object.clone()
                };
                std::fs::metadata(&object)
                    .map_err(|e| format!("xdp_object: {}: {e}", object.display()))?;
            }
            let (_, _, peers) = up::state_machine(role, base, port, daemon.backend)?;
            let (field, prefixes) = match role {
                config::DataPathRole::Server(c) => ("prefixes".to_string(), c.prefixes.clone()),
                config::DataPathRole::Client(c) => ("prefixes".to_string(), c.prefixes.clone()),
                config::DataPathRole::GroupMember(c) => {
                    let i = usize::from(c.index);
                    (
                        format!("members[{i}].prefixes"),
                        c.members
                            .get(i)
                            .map(|m| m.prefixes.clone())
                            .unwrap_or_default(),
                    )
                }
            };
            if prefixes.is_empty() {
                return Err(format!(
                    "{field}: the networks behind this gateway are required (decrypted packets \
                     must be addressed to them)"
                ));
            }
            for p in &prefixes {
                up::parse_prefix(&field, p)?;
            }
            (
                role.name(),
                format!(
                    "inner {}, outer {}, port {port}, {} peer(s), prefixes {}",
                    data_path.inner,
                    data_path.outer,
                    peers.len(),
                    prefixes.join(", ")
                ),
            )
        }
    };
    Ok(format!(
        "{}: ok: `pktcrypt up`, role {role_name}, name {name} ({what})",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_roles_are_told_apart_by_their_keys() {
        let keys = |k: &[&str]| k.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        assert_eq!(
            guess(&keys(&["listen", "clients", "rekey_interval_ms"])),
            Some(RoleName::Server)
        );
        assert_eq!(
            guess(&keys(&["server", "init_key", "bind"])),
            Some(RoleName::Client)
        );
        assert_eq!(
            guess(&keys(&["listen", "group", "members"])),
            Some(RoleName::GroupController)
        );
        assert_eq!(
            guess(&keys(&["controller", "bind", "index", "peers", "group"])),
            Some(RoleName::GroupMember)
        );
        assert_eq!(guess(&keys(&["nothing"])), None);
    }
}
