use super::roles::{ClientSettings, ControllerSettings, MemberSettings, ServerSettings};
use super::*;

/// A minimal valid file of each form (init keys are decoded only when loaded, not when read).
fn minimal(form: Form) -> &'static str {
    match form {
        Form::Udp(RoleName::Server) => {
            "listen = \"127.0.0.1:0\"\n[[clients]]\nname = \"a\"\ninit_key = \"k\"\n"
        }
        Form::Udp(RoleName::Client) => "server = \"127.0.0.1:4500\"\ninit_key = \"k\"\n",
        Form::Udp(RoleName::GroupController) => {
            "listen = \"127.0.0.1:0\"\n[group]\ninit_key = \"g\"\n\
             [[members]]\nname = \"a\"\ninit_key = \"k\"\n"
        }
        Form::Udp(RoleName::GroupMember) => {
            "controller = \"127.0.0.1:4600\"\nbind = \"127.0.0.1:4700\"\nindex = 0\n\
             peers = [\"127.0.0.1:4700\"]\ninit_key = \"k\"\n[group]\ninit_key = \"g\"\n"
        }
        Form::Gateway(RoleName::Server) => {
            "role = \"server\"\ninner = \"in\"\nouter = \"out\"\nprefixes = [\"10.2.0.0/24\"]\n\
             [[clients]]\nname = \"a\"\naddress = \"192.0.2.1\"\nprefixes = [\"10.1.0.0/24\"]\n\
             init_key = \"k\"\n"
        }
        Form::Gateway(RoleName::Client) => {
            "role = \"client\"\ninner = \"in\"\nouter = \"out\"\nprefixes = [\"10.1.0.0/24\"]\n\
             [server]\nname = \"b\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\n\
             init_key = \"k\"\n"
        }
        Form::Gateway(RoleName::GroupController) => {
            "role = \"group-controller\"\n[group]\ninit_key = \"g\"\n\
             [[members]]\nname = \"a\"\naddress = \"2001:db8::1\"\ninit_key = \"k\"\n"
        }
        Form::Gateway(RoleName::GroupMember) => {
            "role = \"group-member\"\ninner = \"in\"\nouter = \"out\"\nindex = 0\n\
             controller = \"2001:db8::100\"\n[group]\ninit_key = \"g\"\n\
             [[members]]\nname = \"a\"\naddress = \"2001:db8::1\"\nprefixes = [\"10.1.0.0/24\"]\n\
             init_key = \"k\"\n"
        }
    }
}

/// Reads `text` as a file of form `form`; the error's text.
fn read(form: Form, text: &str) -> Result<(), String> {
    let doc = Document::parse(text).map_err(|e| e.to_string())?;
    let read = match form {
        Form::Udp(RoleName::Server) => ServerFile::read(&doc).map(drop),
        Form::Udp(RoleName::Client) => ClientFile::read(&doc).map(drop),
        Form::Udp(RoleName::GroupController) => GroupControllerFile::read(&doc).map(drop),
        Form::Udp(RoleName::GroupMember) => GroupMemberFile::read(&doc).map(drop),
        Form::Gateway(role) => {
            let file = GatewayFile::read(&doc).map_err(|e| e.to_string())?;
            let read = match file.role {
                GatewayRole::DataPath(_, r) => r.name(),
                GatewayRole::GroupController(_) => "group-controller",
            };
            return if read == role.as_str() {
                Ok(())
            } else {
                Err(format!("read as role {read:?}"))
            };
        }
    };
    read.map_err(|e| e.to_string())
}

#[test]
fn every_form_names_its_keys_once() {
    for form in Form::ALL {
        let keys = form.keys();
        assert!(!keys.is_empty(), "{form:?}");
        for (i, k) in keys.iter().enumerate() {
            // Two parts of one form reading one key would both take it.
            assert!(!keys[..i].contains(k), "{form:?}: `{k}` in two parts");
        }
    }
}

#[test]
fn a_role_has_the_same_settings_in_both_forms() {
    let settings = [
        (RoleName::Server, super::document::keys::<ServerSettings>()),
        (RoleName::Client, super::document::keys::<ClientSettings>()),
        (
            RoleName::GroupController,
            super::document::keys::<ControllerSettings>(),
        ),
        (
            RoleName::GroupMember,
            super::document::keys::<MemberSettings>(),
        ),
    ];
    for (role, keys) in settings {
        for form in [Form::Udp(role), Form::Gateway(role)] {
            let all = form.keys();
            for k in keys {
                assert!(all.contains(k), "{form:?} lacks setting `{k}`");
            }
        }
    }
}

#[test]
fn minimal_files_are_read() {
    for form in Form::ALL {
        read(form, minimal(form)).unwrap_or_else(|e| panic!("{form:?}: {e}"));
    }
}

/// Every key of another form, in a file of this form, is an error naming it (and the line it
/// is on); a key of the same family's other roles names them.
#[test]
fn a_key_of_another_role_is_an_error_naming_it() {
    for form in Form::ALL {
        let own = form.keys();
        for other in Form::ALL {
            for key in other.keys().into_iter().filter(|k| !own.contains(k)) {
                let text = format!("{key} = 1\n{}", minimal(form));
                let err = read(form, &text).expect_err(&format!("{form:?} took `{key}`"));
                assert!(
                    err.contains(&format!("unknown field `{key}`"))
                        && err.contains(&format!("1 | {key} = 1")),
                    "{form:?}, `{key}`: {err}"
                );
            }
        }
    }
    let err = read(
        Form::Gateway(RoleName::Client),
        &format!(
            "pfs = \"off\"\n{}",
            minimal(Form::Gateway(RoleName::Client))
        ),
    )
    .expect_err("pfs in a client");
    assert!(
        err.contains(
            "unknown field `pfs`: a key of roles \"server\" and \"group-controller\", not of role \
             \"client\""
        ),
        "{err}"
    );
    let err = read(
        Form::Udp(RoleName::Server),
        &format!(
            "hello_interval_ms = 5\n{}",
            minimal(Form::Udp(RoleName::Server))
        ),
    )
    .expect_err("a client's key in a server");
    assert!(
        err.contains(
            "unknown field `hello_interval_ms`: a key of `pktcrypt client`, not of `pktcrypt server`"
        ),
        "{err}"
    );
    let err = read(
        Form::Udp(RoleName::Client),
        &format!("inner = \"in\"\n{}", minimal(Form::Udp(RoleName::Client))),
    )
    .expect_err("a gateway's key over UDP");
    assert!(err.contains("a key of `pktcrypt up`"), "{err}");
}

#[test]
fn a_typo_is_an_error_naming_it() {
    for form in Form::ALL {
        for (key, hint) in [
            ("rekey_intervl_ms", "rekey_interval_ms"),
            ("status_interval", "status_interval_ms"),
            ("bogus", "expected one of"),
        ] {
            let text = format!("{key} = 1\n{}", minimal(form));
            let err = read(form, &text).expect_err(&format!("{form:?} took `{key}`"));
            assert!(
                err.contains(&format!("unknown field `{key}` in ")) && err.contains(hint),
                "{form:?}, `{key}`: {err}"
            );
        }
    }
    // Nested tables reject unknown keys too.
    let text = minimal(Form::Gateway(RoleName::Client)).replace("init_key", "init_kee");
    let err = read(Form::Gateway(RoleName::Client), &text).expect_err("init_kee");
    assert!(err.contains("unknown field `init_kee`"), "{err}");
}

#[test]
fn removed_belongs_to_a_controllers_members() {
    for form in [
        Form::Udp(RoleName::Server),
        Form::Gateway(RoleName::Server),
        Form::Gateway(RoleName::GroupMember),
    ] {
        let text = format!("{}removed = true\n", minimal(form));
        let err = read(form, &text).expect_err(&format!("{form:?} took `removed`"));
        assert!(err.contains("unknown field `removed`"), "{form:?}: {err}");
    }
    for form in [
        Form::Udp(RoleName::GroupController),
        Form::Gateway(RoleName::GroupController),
    ] {
        read(form, &format!("{}removed = true\n", minimal(form)))
            .unwrap_or_else(|e| panic!("{form:?}: {e}"));
    }
}

#[test]
fn bad_values_name_their_key() {
    let server = minimal(Form::Gateway(RoleName::Server));
    let client = minimal(Form::Gateway(RoleName::Client));
    for (form, base, line, message) in [
        (
            Form::Gateway(RoleName::Server),
            server,
            "hub = 3",
            "boolean",
        ),
        (
            Form::Gateway(RoleName::Server),
            server,
            "workers = 0",
            "nonzero",
        ),
        (
            Form::Gateway(RoleName::Server),
            server,
            "suite = \"aes\"",
            "suite:",
        ),
        (Form::Gateway(RoleName::Server), server, "pfs = 0", "pfs:"),
        (
            Form::Gateway(RoleName::Server),
            server,
            "pfs = true",
            "positive",
        ),
        (
            Form::Gateway(RoleName::Client),
            client,
            "backend = \"x\"",
            "backend:",
        ),
        (
            Form::Gateway(RoleName::Client),
            client,
            "local = \"x\"",
            "address",
        ),
        (
            Form::Udp(RoleName::Client),
            minimal(Form::Udp(RoleName::Client)),
            "count = 0",
            "nonzero",
        ),
        (
            Form::Udp(RoleName::Server),
            minimal(Form::Udp(RoleName::Server)),
            "max_handshakes_per_second = 0",
            "nonzero",
        ),
    ] {
        let err = read(form, &format!("{line}\n{base}")).expect_err(line);
        assert!(
            err.contains(&format!("1 | {line}")) && err.contains(message),
            "{line}: {err}"
        );
    }
    // A missing role, and one that does not exist.
    let err = read(Form::Gateway(RoleName::Client), "inner = \"in\"\n").expect_err("no role");
    assert!(err.contains("missing field `role`"), "{err}");
    let err = read(Form::Gateway(RoleName::Client), "role = \"gateway\"\n").expect_err("gateway");
    assert!(err.contains("unknown variant `gateway`"), "{err}");
}

#[test]
fn the_settings_of_both_forms_are_read() {
    let doc = "rekey_interval_ms = 7\npfs = \"off\"\nsuite = \"chacha20-poly1305\"\n";
    let udp = format!("{doc}{}", minimal(Form::Udp(RoleName::Server)));
    let udp: ServerFile = ServerFile::read(&Document::parse(&udp).expect("toml")).expect("udp");
    let gateway = format!(
        "{doc}{}",
        minimal(Form::Gateway(RoleName::Server)).replace("role = \"server\"\n", "")
    );
    let gateway = format!("role = \"server\"\n{gateway}");
    let gateway = GatewayFile::read(&Document::parse(&gateway).expect("toml")).expect("gateway");
    let GatewayRole::DataPath(_, DataPathRole::Server(gateway)) = gateway.role else {
        panic!("not a server");
    };
    for settings in [&udp.settings, &gateway.settings] {
        let c = settings.config().expect("config");
        assert_eq!(c.rekey_interval, Some(std::time::Duration::from_millis(7)));
        assert_eq!(c.pfs, pktcrypt_core::control::Pfs::Off);
        assert_eq!(c.suite, pktcrypt_core::Suite::ChaCha20Poly1305);
    }
}

/// The examples of docs/cli.md are files of some form (the gateway member's and controller's
/// share a block).
#[test]
fn the_documented_examples_are_read() {
    let doc = include_str!("../../../../docs/cli.md");
    let mut blocks = 0;
    for block in doc.split("```toml\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        for text in block.split("\n# controller\n") {
            blocks += 1;
            let errors: Vec<String> = Form::ALL
                .into_iter()
                .filter_map(|form| read(form, text).err().map(|e| format!("{form:?}: {e}")))
                .collect();
            assert!(
                errors.len() < Form::ALL.len(),
                "no form reads\n{text}\n{}",
                errors.join("\n")
            );
        }
    }
    assert!(blocks >= 6, "{blocks} examples");
}

/// A key written into the file never shows in `Debug` (of the key source, or of a whole file).
#[test]
fn debug_never_shows_an_inline_key() {
    let code = "pkc1-secretsecretsecret";
    let mut src = super::KeySource::default();
    src.init_key = Some(code.into());
    let text = format!("{src:?}");
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("(redacted)"), "{text}");
    let doc = format!(
        "role = \"client\"\ninner = \"in\"\nouter = \"out\"\nprefixes = [\"10.1.0.0/24\"]\n\
         [server]\nname = \"b\"\naddress = \"192.0.2.2\"\nprefixes = [\"10.2.0.0/24\"]\ninit_key = \"{code}\"\n"
    );
    let file: super::GatewayFile = super::Document::parse(&doc)
        .and_then(|d| <super::GatewayFile as super::ConfigFile>::read(&d))
        .expect("parses");
    let text = format!("{file:?}");
    assert!(!text.contains("secret"), "{text}");
}

/// `esn` is a setting of every role, in both forms: on by default, off on request (with the
/// rekey triggers brought under the 32-bit sequence space).
#[test]
fn esn_is_a_setting_of_every_role() {
    for form in Form::ALL {
        assert!(form.keys().contains(&"esn"), "{form:?}");
        read(form, &format!("esn = false\n{}", minimal(form)))
            .unwrap_or_else(|e| panic!("{form:?}: {e}"));
    }
    let off = |text: &str| -> ServerSettings {
        let doc = format!("{text}{}", minimal(Form::Udp(RoleName::Server)));
        ServerFile::read(&Document::parse(&doc).expect("toml"))
            .expect("server")
            .settings
    };
    let on = off("suite = \"chacha20-poly1305\"\n")
        .config()
        .expect("config");
    assert!(on.engine.esn, "ESN is on by default");
    assert!(on.triggers.packets_sealed > 1 << 32);
    let c = off("esn = false\nsuite = \"chacha20-poly1305\"\n")
        .config()
        .expect("config");
    assert!(!c.engine.esn);
    assert_eq!(c.triggers.packets_sealed, 1 << 31);
    assert_eq!(c.triggers.packets_opened, 1 << 31);
    let client = ClientSettings {
        esn: Some(false),
        ..ClientSettings::default()
    };
    assert!(!client.config().expect("client").engine.esn);
    let member = MemberSettings {
        esn: Some(false),
        ..MemberSettings::default()
    };
    assert!(!member.config().expect("member").engine.esn);
    let controller = ControllerSettings {
        esn: Some(false),
        ..ControllerSettings::default()
    };
    assert!(!controller.config().expect("controller").engine.esn);
}

/// The configuration reference's `backend` line names every backend of this build (and the
/// config accepts each name).
#[test]
fn the_reference_names_every_backend() {
    let guide = include_str!("../../../../docs/operator-guide.md");
    let line = guide
        .lines()
        .find(|l| l.starts_with("| `backend` |"))
        .expect("a `backend` line in the configuration reference");
    for backend in pktcrypt_core::aead::Backend::all() {
        assert!(
            line.contains(&format!("`{}`", backend.name())),
            "docs/operator-guide.md's backend line does not name {:?}",
            backend.name()
        );
        assert_eq!(
            pktcrypt_core::aead::Backend::from_name(backend.name()),
            Some(*backend)
        );
    }
}

/// The configuration reference of docs/operator-guide.md names every key of every form (top
/// level, read from the parts' structs), of the init-key tables and of the nested peer tables:
/// a key added to the code without its line there fails here.
#[test]
fn the_reference_names_every_key() {
    let guide = include_str!("../../../../docs/operator-guide.md");
    let reference = guide
        .split("\n## Configuration reference\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a `## Configuration reference` section");
    let mut keys: Vec<&str> = Form::ALL.into_iter().flat_map(Form::keys).collect();
    keys.extend(super::document::keys::<KeySource>());
    // The nested tables with an init key flattened in (their own fields; `keys` cannot probe
    // a struct with a flattened part): `[server]`, `[[clients]]`, `[[members]]`.
    keys.extend(["name", "address", "prefixes", "removed"]);
    keys.sort_unstable();
    keys.dedup();
    let missing: Vec<&str> = keys
        .into_iter()
        .filter(|k| !reference.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from the configuration reference of docs/operator-guide.md: {missing:?}"
    );
}

/// Every rekey trigger is a key of the key server's and the client's files, in both forms, and
/// reaches the state machine's configuration exactly; zero, or a value above the suite's
/// AEAD-limit default, is refused naming the key.
#[test]
fn rekey_triggers_are_read_from_both_forms() {
    let keys = "rekey_after_packets_sealed = 11\nrekey_after_packets_opened = 12\n\
                rekey_after_packets = 13\nrekey_after_bytes = 14000\n\
                rekey_after_auth_failures = 15\nrekey_after_age_ms = 16000\n";
    let want = pktcrypt_core::control::RekeyTriggers {
        packets_sealed: 11,
        packets_opened: 12,
        packets_total: 13,
        bytes: 14000,
        auth_failures: 15,
        max_age: Some(std::time::Duration::from_millis(16000)),
    };
    for role in [RoleName::Server, RoleName::Client] {
        for form in [Form::Udp(role), Form::Gateway(role)] {
            for key in keys.lines() {
                let name = key.split(' ').next().unwrap_or_default();
                assert!(form.keys().contains(&name), "{form:?}: {name}");
            }
            let text = match form {
                Form::Gateway(_) => {
                    let m = minimal(form);
                    let (role_line, rest) = m.split_once('\n').expect("role line");
                    format!("{role_line}\n{keys}{rest}")
                }
                Form::Udp(_) => format!("{keys}{}", minimal(form)),
            };
            let doc = Document::parse(&text).expect("toml");
            let triggers = match form {
                Form::Udp(RoleName::Server) => {
                    ServerFile::read(&doc)
                        .expect("read")
                        .settings
                        .config()
                        .expect("c")
                        .triggers
                }
                Form::Udp(_) => {
                    ClientFile::read(&doc)
                        .expect("read")
                        .settings
                        .config()
                        .expect("c")
                        .triggers
                }
                Form::Gateway(_) => match GatewayFile::read(&doc).expect("read").role {
                    GatewayRole::DataPath(_, DataPathRole::Server(s)) => {
                        s.settings.config().expect("c").triggers
                    }
                    GatewayRole::DataPath(_, DataPathRole::Client(c)) => {
                        c.settings.config().expect("c").triggers
                    }
                    _ => panic!("{form:?}"),
                },
            };
            assert_eq!(triggers, want, "{form:?}");
        }
    }
    // The group roles have none (their rekeys are the controller's interval and events).
    let err = read(
        Form::Udp(RoleName::GroupMember),
        &format!(
            "rekey_after_packets = 5\n{}",
            minimal(Form::Udp(RoleName::GroupMember))
        ),
    )
    .expect_err("member");
    assert!(err.contains("rekey_after_packets"), "{err}");
    // Zero and values above the limits.
    let server = |line: &str| {
        let text = format!("{line}\n{}", minimal(Form::Udp(RoleName::Server)));
        let doc = Document::parse(&text).expect("toml");
        ServerFile::read(&doc)
            .map_err(|e| e.to_string())
            .and_then(|f| f.settings.config())
            .map(|c| c.triggers)
    };
    let err = server("rekey_after_packets = 0").expect_err("zero");
    assert!(
        err.contains("rekey_after_packets") && err.contains("1 |"),
        "{err}"
    );
    let aes = pktcrypt_core::control::RekeyTriggers::for_suite(
        pktcrypt_core::Suite::Aes256Gcm,
        pktcrypt_core::EngineConfig::new(pktcrypt_core::Role::KeyServer).max_esp_len,
    );
    let limit = aes.packets_sealed;
    assert_eq!(
        server(&format!("rekey_after_packets_sealed = {limit}"))
            .expect("at the limit")
            .packets_sealed,
        limit
    );
    let err = server(&format!("rekey_after_packets_sealed = {}", limit + 1)).expect_err("above");
    assert!(
        err.contains("rekey_after_packets_sealed") && err.contains(&limit.to_string()),
        "{err}"
    );
    // ChaCha20-Poly1305's limits are higher.
    assert!(
        server(&format!(
            "suite = \"chacha20-poly1305\"\nrekey_after_packets_sealed = {}",
            limit + 1
        ))
        .is_ok()
    );
    let err = server("rekey_after_age_ms = 3600001").expect_err("age");
    assert!(err.contains("rekey_after_age_ms"), "{err}");
}

/// A group controller's file has the counter triggers of the group key (over the members'
/// usage reports; not the age: `rekey_interval_ms` times the group), a member's the interval
/// of its reports.
#[test]
fn group_triggers_and_usage_reports_are_read() {
    for form in [
        Form::Udp(RoleName::GroupController),
        Form::Gateway(RoleName::GroupController),
    ] {
        let m = minimal(form);
        let text = match form {
            Form::Gateway(_) => {
                let (role_line, rest) = m.split_once('\n').expect("role line");
                format!("{role_line}\nrekey_after_packets_sealed = 1000\n{rest}")
            }
            Form::Udp(_) => format!("rekey_after_packets_sealed = 1000\n{m}"),
        };
        let doc = Document::parse(&text).expect("toml");
        let settings = match form {
            Form::Udp(_) => GroupControllerFile::read(&doc).expect("read").settings,
            Form::Gateway(_) => match GatewayFile::read(&doc).expect("read").role {
                GatewayRole::GroupController(c) => c.settings,
                _ => panic!("{form:?}"),
            },
        };
        assert_eq!(
            settings.config().expect("config").triggers.packets_sealed,
            1000,
            "{form:?}"
        );
    }
    let settings = ControllerSettings {
        triggers: super::roles::TriggerSettings {
            rekey_after_age_ms: std::num::NonZeroU64::new(5),
            ..Default::default()
        },
        ..ControllerSettings::default()
    };
    let err = settings.config().expect_err("age");
    assert!(err.contains("rekey_after_age_ms"), "{err}");
    let member = MemberSettings {
        usage_interval_ms: Some(0),
        ..MemberSettings::default()
    };
    assert_eq!(member.config().expect("member").usage_interval, None);
    let member = MemberSettings {
        usage_interval_ms: Some(2500),
        ..MemberSettings::default()
    };
    assert_eq!(
        member.config().expect("member").usage_interval,
        Some(std::time::Duration::from_millis(2500))
    );
}

/// Cipher agility in the file: `suite`, a rotation `suites`, and a client's own `suite`, in
/// both forms of the key server's file, reach the state machine's configuration; bad names,
/// an empty list, both keys at once and a suite where only a key server's client takes one
/// are refused naming the key.
#[test]
fn suites_and_client_suites_are_read_from_both_forms() {
    use pktcrypt_core::Suite;
    let rotation = "suites = [\"aes-256-gcm\", \"chacha20-poly1305\", \"aes-128-gcm\"]\n";
    let udp = format!(
        "{rotation}{}suite = \"chacha20-poly1305\"\n",
        minimal(Form::Udp(RoleName::Server))
    );
    let udp: ServerFile = ServerFile::read(&Document::parse(&udp).expect("toml")).expect("udp");
    assert_eq!(udp.clients[0].suite, Some(Suite::ChaCha20Poly1305));
    let gateway = format!(
        "{rotation}{}suite = \"aes-128-gcm\"\n",
        minimal(Form::Gateway(RoleName::Server))
    );
    let gateway = GatewayFile::read(&Document::parse(&gateway).expect("toml")).expect("gateway");
    let GatewayRole::DataPath(_, DataPathRole::Server(gateway)) = gateway.role else {
        panic!("not a server");
    };
    assert_eq!(gateway.clients[0].suite, Some(Suite::Aes128Gcm));
    for settings in [&udp.settings, &gateway.settings] {
        let c = settings.config().expect("config");
        assert_eq!(
            c.suite_rotation,
            vec![Suite::Aes256Gcm, Suite::ChaCha20Poly1305, Suite::Aes128Gcm]
        );
        assert_eq!(
            c.suite,
            Suite::Aes256Gcm,
            "suite is the first of the rotation"
        );
        // The defaults are the strictest suite's: AES-GCM's packets, ChaCha20-Poly1305's
        // forgeries.
        let max = c.engine.max_esp_len;
        let aes = pktcrypt_core::control::RekeyTriggers::for_suite(Suite::Aes256Gcm, max);
        let chacha = pktcrypt_core::control::RekeyTriggers::for_suite(Suite::ChaCha20Poly1305, max);
        assert_eq!(c.triggers.packets_sealed, aes.packets_sealed);
        assert_eq!(c.triggers.auth_failures, chacha.auth_failures);
    }
    // A single suite: no rotation.
    let one = format!(
        "suite = \"aes-128-gcm\"\n{}",
        minimal(Form::Udp(RoleName::Server))
    );
    let one: ServerFile = ServerFile::read(&Document::parse(&one).expect("toml")).expect("one");
    let c = one.settings.config().expect("config");
    assert_eq!((c.suite, c.suite_rotation.len()), (Suite::Aes128Gcm, 0));
    assert_eq!(one.clients[0].suite, None);

    // Refusals, each naming its key (and its line).
    let server = minimal(Form::Gateway(RoleName::Server));
    let gw = Form::Gateway(RoleName::Server);
    let udp = Form::Udp(RoleName::Server);
    for (form, text, message) in [
        (
            gw,
            format!("suites = [\"aes\"]\n{server}"),
            "suites[0]: \"aes\"",
        ),
        (
            gw,
            format!("suites = [\"aes-256-gcm\", \"des\"]\n{server}"),
            "suites[1]: \"des\"",
        ),
        (gw, format!("suites = []\n{server}"), "suites: at least one"),
        (
            gw,
            format!("suites = \"aes-256-gcm\"\n{server}"),
            "sequence",
        ),
        (
            gw,
            format!("{server}suite = \"aes-512\"\n"),
            "suite: \"aes-512\"",
        ),
        (
            udp,
            format!("{}suite = \"aes\"\n", minimal(udp)),
            "suite: \"aes\"",
        ),
    ] {
        let err = read(form, &text).expect_err(&text);
        assert!(
            err.contains(message) && err.contains(" | "),
            "{text}: {err}"
        );
    }
    let both = format!(
        "suite = \"aes-256-gcm\"\nsuites = [\"chacha20-poly1305\"]\n{}",
        minimal(Form::Udp(RoleName::Server))
    );
    let both: ServerFile = ServerFile::read(&Document::parse(&both).expect("toml")).expect("both");
    let err = both.settings.config().expect_err("both");
    assert!(
        err.starts_with("suites: ") && err.contains("`suite`"),
        "{err}"
    );
    // A file's triggers are bounded by the strictest suite of the rotation.
    let limit = pktcrypt_core::control::RekeyTriggers::for_suite(
        Suite::Aes256Gcm,
        pktcrypt_core::EngineConfig::new(pktcrypt_core::Role::KeyServer).max_esp_len,
    )
    .packets_sealed;
    let high = format!(
        "suites = [\"chacha20-poly1305\", \"aes-256-gcm\"]\nrekey_after_packets_sealed = {}\n{}",
        limit + 1,
        minimal(Form::Udp(RoleName::Server))
    );
    let high: ServerFile = ServerFile::read(&Document::parse(&high).expect("toml")).expect("high");
    let err = high.settings.config().expect_err("above AES-GCM's limit");
    assert!(
        err.contains("rekey_after_packets_sealed") && err.contains("aes-256-gcm"),
        "{err}"
    );
}

/// Only a key server's `[[clients]]` take a `suite`: a client's `[server]` and a group
/// member's `[[members]]` refuse it naming the entry (the daemon and `check` alike build the
/// state machine through `up::state_machine`).
#[test]
fn a_suite_is_refused_where_the_key_server_chooses() {
    let client = format!(
        "{}suite = \"chacha20-poly1305\"\n",
        minimal(Form::Gateway(RoleName::Client))
    );
    let file = GatewayFile::read(&Document::parse(&client).expect("toml")).expect("client");
    let GatewayRole::DataPath(_, DataPathRole::Client(c)) = file.role else {
        panic!("not a client");
    };
    let err = c.server.refuse_suite("server").expect_err("client");
    assert!(
        err.starts_with("server.suite: \"chacha20-poly1305\" only"),
        "{err}"
    );
    let member = format!(
        "{}suite = \"aes-128-gcm\"\n",
        minimal(Form::Gateway(RoleName::GroupMember))
    );
    let file = GatewayFile::read(&Document::parse(&member).expect("toml")).expect("member");
    let GatewayRole::DataPath(_, DataPathRole::GroupMember(m)) = file.role else {
        panic!("not a member");
    };
    let err = m.members[0]
        .refuse_suite("members[0] (a)")
        .expect_err("member");
    assert!(err.starts_with("members[0] (a).suite: "), "{err}");
    // A group controller's `[[members]]` have no such key at all.
    let controller = format!(
        "{}suite = \"aes-128-gcm\"\n",
        minimal(Form::Gateway(RoleName::GroupController))
    );
    let err = read(Form::Gateway(RoleName::GroupController), &controller).expect_err("controller");
    assert!(err.contains("suite"), "{err}");
}
