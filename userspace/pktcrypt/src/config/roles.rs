//! Each role's settings: one struct per role, shared by its UDP form (`pktcrypt server`, ...)
//! and its gateway form (`pktcrypt up` with `role = "server"`, ...), whose files hold these keys
//! beside their own. Every key is optional: an empty table means the defaults of the state
//! machine's configuration.

use super::engine;
use pktcrypt_core::control::{ClientConfig, GroupConfig, Pfs, RekeyTriggers, ServerConfig};
use pktcrypt_core::{Role, Suite};
use serde::Deserialize;
use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

fn ms(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_millis)
}

/// An interval where 0 means never: `None` if 0, the default if not set.
fn ms_or_never(v: Option<u64>, default: Option<Duration>) -> Option<Duration> {
    match v {
        Some(0) => None,
        Some(v) => Some(Duration::from_millis(v)),
        None => default,
    }
}

/// Rekey triggers that come before the sequence space runs out: without ESN an SA has 2^32 - 1
/// sequence numbers, so packet triggers are at most half of that (a suite's own limits are
/// higher for ChaCha20-Poly1305).
fn triggers(mut t: RekeyTriggers, esn: bool) -> RekeyTriggers {
    if !esn {
        const HALF_SPACE: u64 = 1 << 31;
        t.packets_sealed = t.packets_sealed.min(HALF_SPACE);
        t.packets_opened = t.packets_opened.min(HALF_SPACE);
        t.packets_total = t.packets_total.min(2 * HALF_SPACE);
    }
    t
}

/// The rekey triggers of a file (`rekey_after_*`), each optional: unset keeps the default of
/// the suite's AEAD limits (RFC 9001 §6.6, halved), which no setting may exceed.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TriggerSettings {
    /// Rekey after this many packets sealed under one generation.
    pub(crate) rekey_after_packets_sealed: Option<NonZeroU64>,
    /// Rekey after this many packets opened under one generation.
    pub(crate) rekey_after_packets_opened: Option<NonZeroU64>,
    /// Rekey after this many packets sealed and opened together.
    pub(crate) rekey_after_packets: Option<NonZeroU64>,
    /// Rekey after this many payload bytes sealed and opened.
    pub(crate) rekey_after_bytes: Option<NonZeroU64>,
    /// Rekey after this many packets failed authentication under the generation's SPI.
    pub(crate) rekey_after_auth_failures: Option<NonZeroU64>,
    /// Rekey a generation this old, in milliseconds.
    pub(crate) rekey_after_age_ms: Option<NonZeroU64>,
}

impl TriggerSettings {
    /// The defaults `limits` with the file's triggers over them; a trigger above its limit is
    /// refused, naming the key and the limit (`suite` names where the limit comes from).
    fn apply(&self, mut t: RekeyTriggers, suite: &str) -> Result<RekeyTriggers, String> {
        let set = |key: &str, v: Option<NonZeroU64>, field: &mut u64| {
            let Some(v) = v.map(NonZeroU64::get) else {
                return Ok(());
            };
            if v > *field {
                return Err(format!(
                    "{key}: {v} is above the limit of {field} (half the AEAD limit of {suite}, \
                     RFC 9001 §6.6, or half the 32-bit sequence space without ESN)"
                ));
            }
            *field = v;
            Ok(())
        };
        set(
            "rekey_after_packets_sealed",
            self.rekey_after_packets_sealed,
            &mut t.packets_sealed,
        )?;
        set(
            "rekey_after_packets_opened",
            self.rekey_after_packets_opened,
            &mut t.packets_opened,
        )?;
        set(
            "rekey_after_packets",
            self.rekey_after_packets,
            &mut t.packets_total,
        )?;
        set("rekey_after_bytes", self.rekey_after_bytes, &mut t.bytes)?;
        set(
            "rekey_after_auth_failures",
            self.rekey_after_auth_failures,
            &mut t.auth_failures,
        )?;
        if let Some(age) = self.rekey_after_age_ms {
            let age = Duration::from_millis(age.get());
            if t.max_age.is_some_and(|m| age > m) {
                return Err(format!(
                    "rekey_after_age_ms: {} is above the limit of {} (one hour)",
                    age.as_millis(),
                    t.max_age.map_or(0, |m| m.as_millis())
                ));
            }
            t.max_age = Some(age);
        }
        Ok(t)
    }
}

/// A key server's settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSettings {
    /// Suite of new generations (reloadable; not with `suites`).
    #[serde(default, deserialize_with = "super::suite")]
    pub(crate) suite: Option<Suite>,
    /// Suites new generations rotate through, by generation number: a client's generation
    /// `n` gets `suites[(n - 1) % len]` (reloadable; not with `suite`).
    #[serde(default, deserialize_with = "super::suites")]
    pub(crate) suites: Option<Vec<Suite>>,
    /// Derived-key mode.
    #[serde(default)]
    pub(crate) derived: bool,
    /// Forward secrecy: which rotations exchange fresh ephemeral keys.
    #[serde(default, deserialize_with = "super::pfs")]
    pub(crate) pfs: Option<Pfs>,
    /// Init handshakes answered per second at most.
    pub(crate) max_handshakes_per_second: Option<NonZeroU32>,
    /// Rotate every client this often (0: never on a timer).
    pub(crate) rekey_interval_ms: Option<u64>,
    /// Rekey timer jitter, permille.
    pub(crate) rekey_jitter_permille: Option<u32>,
    /// Rate limit of rekeys per second.
    pub(crate) max_rekeys_per_second: Option<NonZeroU32>,
    /// First retransmission of a distribution.
    pub(crate) distribution_retry_ms: Option<u64>,
    /// Implicit resend spacing.
    pub(crate) implicit_resend_ms: Option<u64>,
    /// Reorder grace.
    pub(crate) reorder_grace_ms: Option<u64>,
    /// Anti-replay window.
    pub(crate) replay_window: Option<u32>,
    /// 64-bit extended sequence numbers (RFC 4303 §2.2.1; default on). Off: 32-bit sequence
    /// numbers (an SA carries at most 2^32 - 1 packets; rekeys come at 2^31), which Wireshark
    /// 4.0 can authenticate. Every gateway of a deployment must agree.
    pub(crate) esn: Option<bool>,
    /// Rekey triggers per client, on the generation it transmits with (keys of the same
    /// table, read as a part of their own).
    #[serde(skip)]
    pub(crate) triggers: TriggerSettings,
}

impl ServerSettings {
    /// The state-machine configuration.
    pub(crate) fn config(&self) -> Result<ServerConfig, String> {
        let mut c = ServerConfig::new();
        c.engine = engine(Role::KeyServer, self.replay_window, self.esn)?;
        c.suite = self.suite.unwrap_or(c.suite);
        if let Some(suites) = &self.suites {
            if self.suite.is_some() {
                return Err(
                    "suites: set either `suite` (one suite) or `suites` (a rotation), \
                            not both"
                        .into(),
                );
            }
            c.suite = suites.first().copied().unwrap_or(c.suite);
            c.suite_rotation = suites.clone();
        }
        // The limits of the strictest suite in use bound the file (each generation is also
        // held within its own suite's limits by the state machine).
        let used = self.suites.clone().unwrap_or_else(|| vec![c.suite]);
        let limits = used.iter().fold(
            RekeyTriggers::for_suite(c.suite, c.engine.max_esp_len),
            |t, &s| t.within_limits(s, c.engine.max_esp_len),
        );
        let mut names: Vec<&str> = used.iter().map(|s| s.name()).collect();
        names.dedup();
        c.triggers = self
            .triggers
            .apply(triggers(limits, c.engine.esn), &names.join(", "))?;
        c.derived = self.derived;
        c.pfs = self.pfs.unwrap_or(c.pfs);
        c.max_handshakes_per_second = self
            .max_handshakes_per_second
            .map_or(c.max_handshakes_per_second, NonZeroU32::get);
        c.rekey_interval = ms_or_never(self.rekey_interval_ms, c.rekey_interval);
        c.rekey_jitter_permille = self
            .rekey_jitter_permille
            .unwrap_or(c.rekey_jitter_permille);
        if c.rekey_jitter_permille > 1000 {
            return Err("rekey_jitter_permille: must be at most 1000".into());
        }
        c.max_rekeys_per_second = self
            .max_rekeys_per_second
            .map_or(c.max_rekeys_per_second, NonZeroU32::get);
        c.distribution_retry = ms(self.distribution_retry_ms, c.distribution_retry);
        c.implicit_resend_interval = ms(self.implicit_resend_ms, c.implicit_resend_interval);
        c.reorder_grace = ms(self.reorder_grace_ms, c.reorder_grace);
        Ok(c)
    }
}

/// A key server's client's settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientSettings {
    /// Client-timed update interval (0: none).
    pub(crate) update_interval_ms: Option<u64>,
    /// Hello interval.
    pub(crate) hello_interval_ms: Option<NonZeroU64>,
    /// First request retransmission.
    pub(crate) request_timeout_ms: Option<NonZeroU64>,
    /// Largest retransmission interval.
    pub(crate) max_backoff_ms: Option<u64>,
    /// Unanswered requests before falling back to the init key.
    pub(crate) max_retries: Option<u32>,
    /// Anti-replay window.
    pub(crate) replay_window: Option<u32>,
    /// 64-bit extended sequence numbers (RFC 4303 §2.2.1; default on). Off: 32-bit sequence
    /// numbers (an SA carries at most 2^32 - 1 packets; rekeys come at 2^31), which Wireshark
    /// 4.0 can authenticate. Every gateway of a deployment must agree.
    pub(crate) esn: Option<bool>,
    /// Rekey triggers on the generation the client transmits with (it asks for an update;
    /// keys of the same table, read as a part of their own).
    #[serde(skip)]
    pub(crate) triggers: TriggerSettings,
}

impl ClientSettings {
    /// The state-machine configuration.
    pub(crate) fn config(&self) -> Result<ClientConfig, String> {
        let mut c = ClientConfig::new();
        c.engine = engine(Role::Client, self.replay_window, self.esn)?;
        // The server picks the suite: the limits of the strictest (AES-GCM) bound the file.
        c.triggers = self
            .triggers
            .apply(triggers(c.triggers, c.engine.esn), "AES-GCM")?;
        c.update_interval = ms_or_never(self.update_interval_ms, None);
        c.hello_interval = ms(
            self.hello_interval_ms.map(NonZeroU64::get),
            c.hello_interval,
        );
        c.request_timeout = ms(
            self.request_timeout_ms.map(NonZeroU64::get),
            c.request_timeout,
        );
        c.max_backoff = ms(self.max_backoff_ms, c.max_backoff);
        c.max_retries = self.max_retries.unwrap_or(c.max_retries);
        Ok(c)
    }
}

/// A group controller's settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControllerSettings {
    /// Suite of new group generations (reloadable).
    #[serde(default, deserialize_with = "super::suite")]
    pub(crate) suite: Option<Suite>,
    /// Rekey interval (0: only on events).
    pub(crate) rekey_interval_ms: Option<u64>,
    /// First retransmission.
    pub(crate) retry_ms: Option<u64>,
    /// Retransmissions before a member is unresponsive.
    pub(crate) max_retries: Option<u32>,
    /// Evict unresponsive members.
    pub(crate) evict_unresponsive: Option<bool>,
    /// When the members' control channels exchange fresh ephemeral keys (as a key server's).
    #[serde(default, deserialize_with = "super::pfs")]
    pub(crate) pfs: Option<Pfs>,
    /// Derived mode for the group key: a rollout carries a nonce, members compute each
    /// generation from it and the group init key (no group key material on the wire).
    #[serde(default)]
    pub(crate) derived: bool,
    /// 64-bit extended sequence numbers (RFC 4303 §2.2.1; default on). Off: 32-bit sequence
    /// numbers (an SA carries at most 2^32 - 1 packets; rekeys come at 2^31), which Wireshark
    /// 4.0 can authenticate. Every gateway of a deployment must agree.
    pub(crate) esn: Option<bool>,
    /// The group key's counter triggers, over the members' usage reports (keys of the same
    /// table, read as a part of their own; `rekey_interval_ms` times the group).
    #[serde(skip)]
    pub(crate) triggers: TriggerSettings,
}

impl ControllerSettings {
    /// The state-machine configuration.
    pub(crate) fn config(&self) -> Result<GroupConfig, String> {
        let mut c = GroupConfig::new();
        c.engine = engine(Role::KeyServer, None, self.esn)?;
        c.suite = self.suite.unwrap_or(c.suite);
        if self.triggers.rekey_after_age_ms.is_some() {
            return Err(
                "rekey_after_age_ms: a group's key is timed by rekey_interval_ms".to_owned(),
            );
        }
        c.triggers = self.triggers.apply(
            triggers(
                RekeyTriggers::for_suite(c.suite, c.engine.max_esp_len),
                c.engine.esn,
            ),
            c.suite.name(),
        )?;
        c.rekey_interval = ms_or_never(self.rekey_interval_ms, c.rekey_interval);
        c.retry = ms(self.retry_ms, c.retry);
        c.max_retries = self.max_retries.unwrap_or(c.max_retries);
        c.evict_unresponsive = self.evict_unresponsive.unwrap_or(c.evict_unresponsive);
        c.pfs = self.pfs.unwrap_or(c.pfs);
        c.derived = self.derived;
        Ok(c)
    }
}

/// A group member's settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberSettings {
    /// Suite of the control channel's rekey triggers.
    #[serde(default, deserialize_with = "super::suite")]
    pub(crate) suite: Option<Suite>,
    /// First retransmission of a join or key request.
    pub(crate) retry_ms: Option<u64>,
    /// How often the member reports its use of the group key to the controller (0: never).
    pub(crate) usage_interval_ms: Option<u64>,
    /// Anti-replay window.
    pub(crate) replay_window: Option<u32>,
    /// 64-bit extended sequence numbers (RFC 4303 §2.2.1; default on). Off: 32-bit sequence
    /// numbers (an SA carries at most 2^32 - 1 packets; rekeys come at 2^31), which Wireshark
    /// 4.0 can authenticate. Every gateway of a deployment must agree.
    pub(crate) esn: Option<bool>,
}

impl MemberSettings {
    /// The state-machine configuration.
    pub(crate) fn config(&self) -> Result<GroupConfig, String> {
        let mut c = GroupConfig::new();
        c.engine = engine(Role::Client, self.replay_window, self.esn)?;
        c.suite = self.suite.unwrap_or(c.suite);
        c.retry = ms(self.retry_ms, c.retry);
        c.usage_interval = ms_or_never(self.usage_interval_ms, c.usage_interval);
        Ok(c)
    }
}
