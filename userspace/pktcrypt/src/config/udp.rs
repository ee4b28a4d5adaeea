//! The UDP forms: `pktcrypt server|client|group-controller|group-member --config FILE`. Each
//! file is the form's own keys (where it listens, its peers, synthetic traffic) with the role's
//! settings ([`super::roles`]) and, for a client or a member, its init key beside them.

use super::document::{Document, Parts};
use super::roles::{
    ClientSettings, ControllerSettings, MemberSettings, ServerSettings, TriggerSettings,
};
use super::{ConfigFile, Form, GroupKeyTable, KeySource, RoleName};
use pktcrypt_core::control::{ClientConfig, ServerConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::num::NonZeroUsize;

/// `[[clients]]` of a server.
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
    /// The suite of this client's future generations, over the server-wide `suite` or
    /// `suites`.
    #[serde(default, deserialize_with = "super::suite")]
    pub(crate) suite: Option<pktcrypt_core::Suite>,
}

/// `[[members]]` of a group controller.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberEntry {
    /// A name for logs and status.
    pub(crate) name: String,
    /// Known address (learned from its packets otherwise).
    pub(crate) address: Option<SocketAddr>,
    /// Its init key.
    #[serde(flatten)]
    pub(crate) key: KeySource,
    /// The member is removed (it keeps its index): it gets no generation and its joins are
    /// refused.
    #[serde(default)]
    pub(crate) removed: bool,
}

/// `pktcrypt server` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    /// UDP address to listen on.
    pub(crate) listen: SocketAddr,
    /// Synthetic data packets per second to each client (0: none).
    pub(crate) traffic_pps: Option<u32>,
    /// Status line interval.
    pub(crate) status_interval_ms: Option<u64>,
    /// The clients.
    pub(crate) clients: Vec<PeerEntry>,
    /// The key server's settings (keys of the same table).
    #[serde(skip)]
    pub(crate) settings: ServerSettings,
}

type ServerParts = (ServerFile, ServerSettings, TriggerSettings);

impl ConfigFile for ServerFile {
    fn read(doc: &Document<'_>) -> Result<Self, toml::de::Error> {
        let (mut file, settings, triggers): ServerParts = doc.parts(Form::Udp(RoleName::Server))?;
        file.settings = settings;
        file.settings.triggers = triggers;
        Ok(file)
    }
}

impl ServerFile {
    /// The state-machine configuration.
    pub(crate) fn server_config(&self) -> Result<ServerConfig, String> {
        let c = self.settings.config()?;
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
    pub(crate) count: Option<NonZeroUsize>,
    /// Name prefix for status lines.
    pub(crate) name: Option<String>,
    /// Synthetic data packets per second to the server (0: none).
    pub(crate) traffic_pps: Option<u32>,
    /// Status line interval.
    pub(crate) status_interval_ms: Option<u64>,
    /// The init key(s) (keys of the same table).
    #[serde(skip)]
    pub(crate) key: KeySource,
    /// The client's settings (keys of the same table).
    #[serde(skip)]
    pub(crate) settings: ClientSettings,
}

type ClientParts = (ClientFile, KeySource, ClientSettings, TriggerSettings);

impl ConfigFile for ClientFile {
    fn read(doc: &Document<'_>) -> Result<Self, toml::de::Error> {
        let (mut file, key, settings, triggers): ClientParts =
            doc.parts(Form::Udp(RoleName::Client))?;
        file.key = key;
        file.settings = settings;
        file.settings.triggers = triggers;
        Ok(file)
    }
}

impl ClientFile {
    /// The state-machine configuration.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, String> {
        self.settings.config()
    }
}

/// `pktcrypt group-controller` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupControllerFile {
    /// UDP address to listen on.
    pub(crate) listen: SocketAddr,
    /// Status line interval.
    pub(crate) status_interval_ms: Option<u64>,
    /// The group init key.
    pub(crate) group: GroupKeyTable,
    /// Members, in index order.
    pub(crate) members: Vec<MemberEntry>,
    /// The controller's settings (keys of the same table).
    #[serde(skip)]
    pub(crate) settings: ControllerSettings,
}

type GroupControllerParts = (GroupControllerFile, ControllerSettings, TriggerSettings);

impl ConfigFile for GroupControllerFile {
    fn read(doc: &Document<'_>) -> Result<Self, toml::de::Error> {
        let (mut file, settings, triggers): GroupControllerParts =
            doc.parts(Form::Udp(RoleName::GroupController))?;
        file.settings = settings;
        file.settings.triggers = triggers;
        Ok(file)
    }
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
    /// The group init key.
    pub(crate) group: GroupKeyTable,
    /// Synthetic data packets per second to the group.
    pub(crate) traffic_pps: Option<u32>,
    /// Status line interval.
    pub(crate) status_interval_ms: Option<u64>,
    /// The pairwise control init key (keys of the same table).
    #[serde(skip)]
    pub(crate) key: KeySource,
    /// The member's settings (keys of the same table).
    #[serde(skip)]
    pub(crate) settings: MemberSettings,
}

type GroupMemberParts = (GroupMemberFile, KeySource, MemberSettings);

impl ConfigFile for GroupMemberFile {
    fn read(doc: &Document<'_>) -> Result<Self, toml::de::Error> {
        let (mut file, key, settings): GroupMemberParts =
            doc.parts(Form::Udp(RoleName::GroupMember))?;
        file.key = key;
        file.settings = settings;
        Ok(file)
    }
}

/// The keys of role `role`'s file.
pub(super) fn keys(role: RoleName) -> Vec<&'static str> {
    match role {
        RoleName::Server => ServerParts::keys(),
        RoleName::Client => ClientParts::keys(),
        RoleName::GroupController => GroupControllerParts::keys(),
        RoleName::GroupMember => GroupMemberParts::keys(),
    }
}
