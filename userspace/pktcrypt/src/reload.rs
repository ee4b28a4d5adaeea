//! Live reload of a running gateway (`pktcrypt reload`, SIGHUP): what may change without a
//! restart, and the plan that applies it.
//!
//! What a file may change while the daemon runs: the networks behind this gateway
//! (`prefixes`; a group member's own `members[i].prefixes`) and its peers: a key server's
//! `[[clients]]` (added, removed, their name, address or prefixes changed), a client's
//! `[server]` name, address and prefixes, the other group members' addresses and prefixes.
//! Everything else (interfaces, port, sockets, settings, keys of a running peer of a client or
//! a group member) needs a restart: [`check_restart`] refuses the file naming the first such
//! key, and nothing is applied. A key server's client whose init key changed is removed and
//! added again (it starts over from its new key); no other peer is touched, so traffic to
//! unchanged peers goes on as before. A key server's `suite` / `suites` and a client's
//! `[[clients]]` `suite`, and a group controller's `suite`, change the suite of future
//! generations: each peer switches at its next rekey, without interruption (each generation
//! carries its suite).

use std::collections::BTreeSet;

/// Keys of a role's file that a reload may change.
fn reloadable(role: &str, key: &str) -> bool {
    matches!(
        (role, key),
        (_, "prefixes")
            | ("server", "clients" | "suite" | "suites")
            | ("group-controller", "suite")
            | ("client", "server")
            | ("group-member" | "group-controller", "members")
    )
}

/// The key-source keys of a peer table.
const KEY_FIELDS: [&str; 3] = ["init_key", "init_key_file", "init_key_env"];

/// Checks that `new` differs from `old` (both the file's TOML tables) only where a reload can
/// apply it. The error names the first key that needs a restart.
///
/// # Errors
/// That key, as a message for the operator.
pub(crate) fn check_restart(old: &toml::Table, new: &toml::Table) -> Result<(), String> {
    let restart = |key: &str| {
        format!("{key}: changed, and that needs a restart of the daemon; nothing was reloaded")
    };
    let role = old.get("role").and_then(toml::Value::as_str).unwrap_or("");
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        if !reloadable(role, key) && old.get(key) != new.get(key) {
            return Err(restart(key));
        }
    }
    let table = |t: &toml::Table, k: &str| t.get(k).and_then(toml::Value::as_table).cloned();
    let array = |t: &toml::Table, k: &str| {
        t.get(k)
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match role {
        "client" => {
            let (o, n) = (table(old, "server"), table(new, "server"));
            for f in KEY_FIELDS {
                if o.as_ref().and_then(|t| t.get(f)) != n.as_ref().and_then(|t| t.get(f)) {
                    return Err(restart(&format!("server.{f}")));
                }
            }
        }
        "group-member" => {
            let (o, n) = (array(old, "members"), array(new, "members"));
            if o.len() != n.len() {
                return Err(format!(
                    "members: {} members, were {}: adding or removing a member needs a restart \
                     (and the controller's file too); nothing was reloaded",
                    n.len(),
                    o.len()
                ));
            }
            for (i, (a, b)) in o.iter().zip(&n).enumerate() {
                for f in KEY_FIELDS.iter().chain(&["name"]) {
                    let get = |v: &toml::Value| v.as_table().and_then(|t| t.get(*f)).cloned();
                    if get(a) != get(b) {
                        return Err(restart(&format!("members[{i}].{f}")));
                    }
                }
            }
        }
        "group-controller" => {
            let (o, n) = (array(old, "members"), array(new, "members"));
            if o.len() != n.len() {
                return Err(format!(
                    "members: {} members, were {}: adding or removing a member shifts the \
                     indices every member's file holds, and needs a restart of every gateway \
                     of the group (mark a member `removed = true` to take it out); nothing was \
                     reloaded",
                    n.len(),
                    o.len()
                ));
            }
            for (i, (a, b)) in o.iter().zip(&n).enumerate() {
                let (Some(a), Some(b)) = (a.as_table(), b.as_table()) else {
                    continue;
                };
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    if k != "removed" && a.get(k) != b.get(k) {
                        return Err(restart(&format!("members[{i}].{k}")));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_restart;

    fn t(s: &str) -> toml::Table {
        s.parse().expect("toml")
    }

    #[test]
    fn peers_and_prefixes_reload_the_rest_needs_a_restart() {
        let server = "role = \"server\"\ninner = \"in\"\nprefixes = [\"10.2.0.0/24\"]\n\
                      [[clients]]\nname = \"a\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"k1\"\n";
        let more = format!(
            "{server}[[clients]]\nname = \"c\"\naddress = \"192.0.2.3\"\nprefixes = [\"10.3.0.0/24\"]\ninit_key = \"k2\"\n"
        );
        assert_eq!(check_restart(&t(server), &t(&more)), Ok(()));
        assert_eq!(
            check_restart(&t(server), &t(&server.replace("10.2.0.0", "10.4.0.0"))),
            Ok(())
        );
        let e = check_restart(&t(server), &t(&server.replace("\"in\"", "\"eth9\"")))
            .expect_err("inner");
        assert!(e.starts_with("inner: "), "{e}");
        let e = check_restart(&t(server), &t(&format!("port = 4501\n{server}"))).expect_err("port");
        assert!(e.starts_with("port: "), "{e}");
        let client = "role = \"client\"\nprefixes = [\"10.1.0.0/24\"]\n[server]\nname = \"b\"\n\
                      address = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"k1\"\n";
        assert_eq!(
            check_restart(&t(client), &t(&client.replace("192.0.2.2", "192.0.2.7"))),
            Ok(())
        );
        let e = check_restart(&t(client), &t(&client.replace("k1", "k3"))).expect_err("key");
        assert!(e.starts_with("server.init_key: "), "{e}");
        let e = check_restart(
            &t(client),
            &t(&client.replace("role = \"client\"\n", "role = \"client\"\nport = 9\n")),
        )
        .expect_err("port");
        assert!(e.starts_with("port: "), "{e}");
    }

    #[test]
    fn a_servers_suites_and_a_controllers_suite_reload() {
        let server = "role = \"server\"\ninner = \"in\"\nprefixes = [\"10.2.0.0/24\"]\n\
                      [[clients]]\nname = \"a\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"k1\"\n";
        let chacha = format!("suite = \"chacha20-poly1305\"\n{server}");
        let rotation = format!("suites = [\"aes-128-gcm\", \"chacha20-poly1305\"]\n{server}");
        let own = format!("{server}suite = \"aes-128-gcm\"\n");
        for new in [&chacha, &rotation, &own] {
            assert_eq!(check_restart(&t(server), &t(new)), Ok(()), "{new}");
            assert_eq!(check_restart(&t(new), &t(server)), Ok(()), "{new}");
        }
        let c = "role = \"group-controller\"\n[group]\ninit_key = \"g\"\n\
                 [[members]]\nname = \"a\"\naddress = \"fd00::1\"\ninit_key = \"k1\"\n";
        let suite = format!("suite = \"aes-128-gcm\"\n{c}");
        assert_eq!(check_restart(&t(c), &t(&suite)), Ok(()));
        // Still not a member's (its `suite` is its channel's triggers', read at start).
        let m = "role = \"group-member\"\nindex = 0\n";
        let e =
            check_restart(&t(m), &t(&format!("suite = \"aes-128-gcm\"\n{m}"))).expect_err("member");
        assert!(e.starts_with("suite: "), "{e}");
    }

    #[test]
    fn a_group_controller_reloads_removed_marks_only() {
        let c = "role = \"group-controller\"\n[group]\ninit_key = \"g\"\n\
                 [[members]]\nname = \"a\"\naddress = \"fd00::1\"\ninit_key = \"k1\"\n\
                 [[members]]\nname = \"b\"\naddress = \"fd00::2\"\ninit_key = \"k2\"\n";
        let removed = c.replace("\"k2\"\n", "\"k2\"\nremoved = true\n");
        assert_eq!(check_restart(&t(c), &t(&removed)), Ok(()));
        assert_eq!(check_restart(&t(&removed), &t(c)), Ok(()));
        let e = check_restart(&t(c), &t(&c.replace("fd00::2", "fd00::9"))).expect_err("address");
        assert!(e.starts_with("members[1].address: "), "{e}");
        let one = &c[..c.rfind("[[members]]").unwrap_or(c.len())];
        let e = check_restart(&t(c), &t(one)).expect_err("count");
        assert!(e.starts_with("members: "), "{e}");
        let e = check_restart(&t(c), &t(&c.replace("\"g\"", "\"h\""))).expect_err("group");
        assert!(e.starts_with("group: "), "{e}");
    }

    #[test]
    fn a_group_member_keeps_its_members() {
        let m = "role = \"group-member\"\nindex = 0\n\
                 [[members]]\nname = \"a\"\naddress = \"fd00::1\"\nprefixes = [\"10.1.0.0/24\"]\ninit_key = \"k1\"\n\
                 [[members]]\nname = \"b\"\naddress = \"fd00::2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"k2\"\n";
        assert_eq!(
            check_restart(&t(m), &t(&m.replace("10.2.0.0", "10.5.0.0"))),
            Ok(())
        );
        let e = check_restart(&t(m), &t(&m.replace("\"b\"", "\"bb\""))).expect_err("name");
        assert!(e.starts_with("members[1].name: "), "{e}");
        let one = &m[..m.rfind("[[members]]").unwrap_or(m.len())];
        let e = check_restart(&t(m), &t(one)).expect_err("count");
        assert!(e.starts_with("members: "), "{e}");
    }
}
