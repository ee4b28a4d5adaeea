//! Control-plane events in the logs: each with a message, its level, and the peer or member by
//! its configured name (`peer = "gwA"`, not `PeerId(0)`), for every daemon's [`crate::drive::Io`].
//!
//! What needs the operator is a warning: a client falling back to its init key (its requests
//! went unanswered: the server lost its keys, or the path is down), a client or member that does
//! not answer, a member evicted or refused. Duplicate identities are logged as errors by
//! [`crate::drive`] itself.

use pktcrypt_core::PeerId;
use pktcrypt_core::control::{ClientEvent, Event, GroupEvent, MemberEvent, ServerEvent};

/// How a daemon names its peers and group members.
pub(crate) struct Names<'a> {
    /// The daemon's name.
    pub(crate) daemon: &'a str,
    /// A peer's name by engine id (a key server's clients, a member's senders).
    pub(crate) peer: &'a dyn Fn(PeerId) -> Option<String>,
    /// A group member's name by index (a controller's members).
    pub(crate) member: &'a dyn Fn(u16) -> Option<String>,
    /// A client's server (a client's events name no peer).
    pub(crate) server: Option<&'a str>,
}

impl Names<'_> {
    fn peer(&self, id: PeerId) -> String {
        (self.peer)(id).unwrap_or_else(|| format!("peer {}", id.0))
    }

    fn member(&self, index: u16) -> String {
        (self.member)(index).unwrap_or_else(|| format!("member {index}"))
    }
}

/// Logs `event` (not `KeysChanged`, which [`crate::drive`] handles).
pub(crate) fn log(names: &Names<'_>, event: &Event) {
    let daemon = names.daemon;
    match event {
        Event::KeysChanged { .. } | Event::DuplicateClient { .. } => {}
        Event::Server(e) => server(names, e),
        Event::Client(e) => {
            let server = names.server.unwrap_or("the key server");
            match e {
                ClientEvent::KeyInstalled { generation: g } => tracing::info!(
                    daemon,
                    peer = server,
                    generation = g.number,
                    spi = %g.spi,
                    suite = %g.suite,
                    "key installed; transmitting under it"
                ),
                ClientEvent::Retired { generation: g } => tracing::info!(
                    daemon,
                    peer = server,
                    generation = g.number,
                    spi = %g.spi,
                    "generation retired"
                ),
                ClientEvent::FellBackToInit => tracing::warn!(
                    daemon,
                    peer = server,
                    "requests to the key server went unanswered: falling back to the init key \
                     (a new handshake; did the server restart or the path go down?)"
                ),
                ClientEvent::Triggered { reason } => {
                    tracing::info!(daemon, peer = server, reason, "rekey triggered")
                }
            }
        }
        Event::Group(e) => group(names, e),
        Event::Member(MemberEvent::State { generation, state }) => tracing::info!(
            daemon,
            generation,
            state = ?state,
            "group state"
        ),
    }
}

fn server(names: &Names<'_>, e: &ServerEvent) {
    let daemon = names.daemon;
    match e {
        ServerEvent::ClientInit { peer } => tracing::info!(
            daemon,
            peer = names.peer(*peer),
            "client (re)started from its init key"
        ),
        ServerEvent::KeyMinted {
            peer,
            generation: g,
        } => tracing::info!(
            daemon,
            peer = names.peer(*peer),
            generation = g.number,
            spi = %g.spi,
            suite = %g.suite,
            "key minted and sent"
        ),
        ServerEvent::Retired {
            peer,
            generation: g,
        } => tracing::info!(
            daemon,
            peer = names.peer(*peer),
            generation = g.number,
            spi = %g.spi,
            "generation retired"
        ),
        ServerEvent::Proven { peer, generation } => tracing::info!(
            daemon,
            peer = names.peer(*peer),
            generation,
            "client proved it holds the generation"
        ),
        ServerEvent::Resent {
            peer,
            generation,
            implicit,
        } => tracing::info!(
            daemon,
            peer = names.peer(*peer),
            generation,
            implicit,
            "generation sent again"
        ),
        ServerEvent::Unresponsive { peer, generation } => tracing::warn!(
            daemon,
            peer = names.peer(*peer),
            generation,
            "client did not prove the generation through every retransmission"
        ),
        ServerEvent::Triggered { peer, reason } => {
            tracing::info!(daemon, peer = names.peer(*peer), reason, "rekey triggered")
        }
    }
}

fn group(names: &Names<'_>, e: &GroupEvent) {
    let daemon = names.daemon;
    match e {
        GroupEvent::RolloutStarted { generation, reason } => {
            tracing::info!(daemon, generation, reason, "group rollout started")
        }
        GroupEvent::PhaseCompleted { generation, phase } => tracing::info!(
            daemon,
            generation,
            phase = ?phase,
            "every member completed the phase"
        ),
        GroupEvent::Unresponsive { member } => tracing::warn!(
            daemon,
            member = names.member(*member),
            "member did not answer through every retry"
        ),
        GroupEvent::Evicted { member } => tracing::warn!(
            daemon,
            member = names.member(*member),
            "member evicted (unresponsive): refused until re-admitted"
        ),
        GroupEvent::Joined { member } => {
            tracing::info!(daemon, member = names.member(*member), "member joined")
        }
        GroupEvent::Left { member } => {
            tracing::info!(daemon, member = names.member(*member), "member left")
        }
        GroupEvent::JoinRefused { member } => tracing::warn!(
            daemon,
            member = names.member(*member),
            "join refused: the member is evicted or removed"
        ),
        GroupEvent::Removed { member } => {
            tracing::info!(daemon, member = names.member(*member), "member removed")
        }
        // Logged as an error where it is detected (`drive`).
        GroupEvent::Duplicate { member, .. } => tracing::debug!(
            daemon,
            member = names.member(*member),
            "member taken out of the group"
        ),
        GroupEvent::ChannelUp { member } => tracing::info!(
            daemon,
            member = names.member(*member),
            "member's control channel up (it started or restarted)"
        ),
    }
}
