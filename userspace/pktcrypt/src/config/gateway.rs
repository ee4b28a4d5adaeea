//! The gateway forms: `pktcrypt up --config FILE`, the role named by `role = "..."`. Every file
//! has the keys of the process ([`Daemon`]); a server, client or group member also those of its
//! data path ([`DataPath`]); then the role's own keys (its peers and networks) with the role's
//! settings ([`super::roles`]) beside them.

use super::document::{Document, Parts};
use super::roles::{
    ClientSettings, ControllerSettings, MemberSettings, ServerSettings, TriggerSettings,
};
use super::{ConfigFile, Form, GroupKeyTable, KeySource, RoleName};
use pktcrypt_core::aead::Backend;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;

/// `pktcrypt up` configuration.
#[derive(Clone, Debug)]
pub(crate) struct GatewayFile {
    /// The keys of every `pktcrypt up` process.
    pub(crate) daemon: Daemon,
    /// The role, with what belongs to it.
    pub(crate) role: GatewayRole,
}

/// A gateway's role (`role = "..."`) and the keys that belong to it.
// One per process, read at start and on reload: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum GatewayRole {
    /// A gateway with a data path: a server, a client or a group member.
    DataPath(DataPath, DataPathRole),
    /// `role = "group-controller"`: the group's key controller, no data path.
    GroupController(ControllerGateway),
}

/// The role of a gateway with a data path.
#[derive(Clone, Debug)]
pub(crate) enum DataPathRole {
    /// `role = "server"`: a key server.
    Server(ServerGateway),
    /// `role = "client"`: a key server's client.
    Client(ClientGateway),
    /// `role = "group-member"`: a group member.
    GroupMember(MemberGateway),
}

impl GatewayRole {
    /// The data path (none for a group controller).
    pub(crate) fn data_path(&self) -> Option<&DataPath> {
        match self {
            GatewayRole::DataPath(d, _) => Some(d),
            GatewayRole::GroupController(_) => None,
        }
    }
}

impl DataPathRole {
    /// The name of the role.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            DataPathRole::Server(_) => RoleName::Server,
            DataPathRole::Client(_) => RoleName::Client,
            DataPathRole::GroupMember(_) => RoleName::GroupMember,
        }
        .as_str()
    }
}

/// The role tag.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleTag {
    /// `server`, `client`, `group-member` or `group-controller`.
    role: RoleName,
}

/// The keys of every `pktcrypt up` process.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Daemon {
    /// Name in status output.
    pub(crate) name: Option<String>,
    /// Our outer address (default: the outer interface's first address of the peers' family; a
    /// group controller's: any).
    pub(crate) local: Option<IpAddr>,
    /// ESP-in-UDP port (default 4500).
    pub(crate) port: Option<u16>,
    /// Unix socket for `pktcrypt status` (mode 0660; default `/run/pktcrypt/NAME.sock`).
    pub(crate) status_socket: Option<PathBuf>,
    /// Prometheus text endpoint, e.g. `127.0.0.1:9477`.
    pub(crate) metrics: Option<SocketAddr>,
    /// AEAD implementation: `default`, `ring+aws-lc`, `ring`, `aws-lc`, `rustcrypto` (and
    /// `null-insecure` in builds with the benchmark-only feature `insecure-null-backend`).
    #[serde(default, deserialize_with = "super::backend")]
    pub(crate) backend: Backend,
    /// Status line interval on stdout (0: none; default 1000).
    pub(crate) status_interval_ms: Option<u64>,
}

/// The keys of a gateway's data path (server, client, group member).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataPath {
    /// Plaintext side.
    pub(crate) inner: String,
    /// ESP side.
    pub(crate) outer: String,
    /// Start even though the kernel forwards IP in this network namespace (it would forward
    /// protected traffic in the clear whenever no pktcrypt program is attached: before the
    /// first `up`, after `down`). Default: refuse.
    #[serde(default)]
    pub(crate) allow_forwarding: bool,
    /// Worker threads, one per RX queue of each interface (default: the number of queues).
    pub(crate) workers: Option<NonZeroU32>,
    /// Compiled XDP program to load instead of the one embedded in the binary (default:
    /// `$PKTCRYPT_XDP_OBJECT` if set, else the embedded one).
    pub(crate) xdp_object: Option<PathBuf>,
    /// Unix socket for `pktcrypt export-keys` (mode 0600; default: the status socket's name
    /// with `.keys.sock`).
    pub(crate) keys_socket: Option<PathBuf>,
    /// UMEM frames per worker (default 8192).
    pub(crate) frames: Option<u32>,
    /// How the XDP programs attach: `auto` (native if the driver has it, else generic; the
    /// default), `native` (fail without it) or `generic` (SKB mode).
    #[serde(default, deserialize_with = "super::xdp_mode")]
    pub(crate) xdp_mode: pktcrypt_io::XdpMode,
    /// Which outer UDP source ports the workers send from (default: one per worker).
    pub(crate) source_ports: Option<SourcePorts>,
    /// The first worker's outer UDP source port (default: `port`, the ESP port).
    pub(crate) source_port_base: Option<u16>,
}

/// `source_ports`: the outer UDP source ports of the packets the workers seal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SourcePorts {
    /// Worker *q* sends from `source_port_base + q`: one peer's traffic is one UDP flow per
    /// worker, which the receiver's RSS spreads over its queues.
    #[default]
    PerWorker,
    /// Every worker sends from `source_port_base`: one UDP flow per peer (for a key server of
    /// a version that follows a client's source port).
    Single,
}

impl SourcePorts {
    /// The source port of each of `workers` workers, from `base`.
    ///
    /// # Errors
    /// A port above 65535, or a base of 0.
    pub(crate) fn ports(self, base: u16, workers: u32) -> Result<Vec<u16>, String> {
        if base == 0 {
            return Err("source_port_base: must be non-zero".into());
        }
        (0..workers)
            .map(|q| match self {
                SourcePorts::Single => Ok(base),
                SourcePorts::PerWorker => u16::try_from(u32::from(base) + q).map_err(|_| {
                    format!(
                        "source_port_base: {base} + {workers} workers passes port 65535 \
                         (source_ports = \"per-worker\" takes one port per worker)"
                    )
                }),
            })
            .collect()
    }
}

/// A peer of a gateway: where it is and what lies behind it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayPeer {
    /// A name for logs and status.
    pub(crate) name: String,
    /// Its outer address.
    pub(crate) address: IpAddr,
    /// Networks behind it (`ADDR/LEN`).
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
    /// Its init key (a group member's `[[members]]`: only its own entry's).
    #[serde(flatten)]
    pub(crate) key: KeySource,
    /// A key server's `[[clients]]` only: the suite of this client's future generations, over
    /// the server-wide `suite` or `suites` (reloadable). Refused elsewhere: the key server
    /// chooses every generation's suite.
    #[serde(default, deserialize_with = "super::suite")]
    pub(crate) suite: Option<pktcrypt_core::Suite>,
}

impl GatewayPeer {
    /// Refuses `suite` in a peer that is not a key server's client (`field` names the entry).
    pub(crate) fn refuse_suite(&self, field: &str) -> Result<(), String> {
        match self.suite {
            Some(s) => Err(format!(
                "{field}.suite: {s:?} only a key server's [[clients]] entries take a suite \
                 (the key server chooses every generation's suite)",
                s = s.name()
            )),
            None => Ok(()),
        }
    }
}

/// `role = "server"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerGateway {
    /// The networks behind this gateway (`ADDR/LEN`): decrypted packets must be addressed to
    /// them.
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
    /// Forward decrypted packets from one client to another client's prefixes (a hub).
    /// Default off: a decrypted packet may only go to `prefixes`.
    #[serde(default)]
    pub(crate) hub: bool,
    /// The clients.
    #[serde(default)]
    pub(crate) clients: Vec<GatewayPeer>,
    /// The key server's settings (keys of the same table).
    #[serde(skip)]
    pub(crate) settings: ServerSettings,
}

/// `role = "client"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientGateway {
    /// The networks behind this gateway (`ADDR/LEN`): decrypted packets must be addressed to
    /// them.
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
    /// The key server.
    pub(crate) server: GatewayPeer,
    /// The client's settings (keys of the same table).
    #[serde(skip)]
    pub(crate) settings: ClientSettings,
}

/// `role = "group-member"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemberGateway {
    /// This member's index in `members`.
    pub(crate) index: u16,
    /// The controller's outer address (the port is `control_port`).
    pub(crate) controller: IpAddr,
    /// UDP port of the controller ↔ member channel (default: the ESP port + 1).
    pub(crate) control_port: Option<u16>,
    /// Retire another member's previous group generation once it has been heard under the new
    /// one and nothing arrived under the old for this long (XDP's per-SPI counters), even if
    /// the controller's UPDATE_COMPLETED never comes (default 5000; 0: only on
    /// UPDATE_COMPLETED).
    pub(crate) retire_grace_ms: Option<u64>,
    /// The group init key.
    pub(crate) group: GroupKeyTable,
    /// Every member, in index order: name, outer address, prefixes (this member's are the
    /// networks behind it), and this member's pairwise control init key.
    #[serde(default)]
    pub(crate) members: Vec<GatewayPeer>,
    /// The member's settings (keys of the same table).
    #[serde(skip)]
    pub(crate) settings: MemberSettings,
}

/// `role = "group-controller"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControllerGateway {
    /// UDP port of the controller ↔ member channel (default: the ESP port + 1).
    pub(crate) control_port: Option<u16>,
    /// The group init key.
    pub(crate) group: GroupKeyTable,
    /// Every member, in index order, with its pairwise control init key.
    #[serde(default)]
    pub(crate) members: Vec<ControllerMember>,
    /// The controller's settings (keys of the same table).
    #[serde(skip)]
    pub(crate) settings: ControllerSettings,
}

/// `[[members]]` of a group controller.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControllerMember {
    /// A name for logs and status.
    pub(crate) name: String,
    /// Its outer address.
    pub(crate) address: IpAddr,
    /// Networks behind it: ignored (the members' files list them; the list can be shared).
    #[serde(default, rename = "prefixes")]
    pub(crate) _prefixes: Vec<String>,
    /// Its pairwise control init key.
    #[serde(flatten)]
    pub(crate) key: KeySource,
    /// The member is removed (it keeps its index): it gets no generation and its joins are
    /// refused.
    #[serde(default)]
    pub(crate) removed: bool,
}

type ServerParts = (
    RoleTag,
    Daemon,
    DataPath,
    ServerGateway,
    ServerSettings,
    TriggerSettings,
);
type ClientParts = (
    RoleTag,
    Daemon,
    DataPath,
    ClientGateway,
    ClientSettings,
    TriggerSettings,
);
type MemberParts = (RoleTag, Daemon, DataPath, MemberGateway, MemberSettings);
type ControllerParts = (
    RoleTag,
    Daemon,
    ControllerGateway,
    ControllerSettings,
    TriggerSettings,
);

impl ConfigFile for GatewayFile {
    fn read(doc: &Document<'_>) -> Result<Self, toml::de::Error> {
        let RoleTag { role } = doc.part()?;
        let form = Form::Gateway(role);
        let (daemon, role) = match role {
            RoleName::Server => {
                let (_, daemon, data_path, mut server, settings, triggers): ServerParts =
                    doc.parts(form)?;
                server.settings = settings;
                server.settings.triggers = triggers;
                (
                    daemon,
                    GatewayRole::DataPath(data_path, DataPathRole::Server(server)),
                )
            }
            RoleName::Client => {
                let (_, daemon, data_path, mut client, settings, triggers): ClientParts =
                    doc.parts(form)?;
                client.settings = settings;
                client.settings.triggers = triggers;
                (
                    daemon,
                    GatewayRole::DataPath(data_path, DataPathRole::Client(client)),
                )
            }
            RoleName::GroupMember => {
                let (_, daemon, data_path, mut member, settings): MemberParts = doc.parts(form)?;
                member.settings = settings;
                (
                    daemon,
                    GatewayRole::DataPath(data_path, DataPathRole::GroupMember(member)),
                )
            }
            RoleName::GroupController => {
                let (_, daemon, mut controller, settings, triggers): ControllerParts =
                    doc.parts(form)?;
                controller.settings = settings;
                controller.settings.triggers = triggers;
                (daemon, GatewayRole::GroupController(controller))
            }
        };
        Ok(Self { daemon, role })
    }
}

/// The keys of role `role`'s file.
pub(super) fn keys(role: RoleName) -> Vec<&'static str> {
    match role {
        RoleName::Server => ServerParts::keys(),
        RoleName::Client => ClientParts::keys(),
        RoleName::GroupMember => MemberParts::keys(),
        RoleName::GroupController => ControllerParts::keys(),
    }
}
