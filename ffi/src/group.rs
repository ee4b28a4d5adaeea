//! Group mode (spec §6) in the C ABI: a group controller and group members.
//!
//! A controller (`pktcrypt_group_controller_new`) gets its members with
//! `pktcrypt_group_add_member`: each with its index (0, 1, 2, ... in order) and its own init
//! key, the key of its control channel with the controller (as the daemon's `[[members]]`). A
//! member (`pktcrypt_group_member_new`) is made with its index, the number of members (member
//! `j` transmits under the group key's SPI base + `j`), its own init key and the group init
//! key (`pkc1-...`, the same for every member and the controller: it anchors the senders'
//! SPIs; nothing is sealed under it). The member joins at once (`pktcrypt_poll_transmit`).
//!
//! Then the calls of the pairwise roles work for both, with member indices for peers:
//! `pktcrypt_seal` (a member, under its own sender key for the whole group: `peer` ignored; a
//! controller seals nothing), `pktcrypt_open` (a member opens every member's data and its
//! controller's control messages; a controller, control messages only),
//! `pktcrypt_poll_transmit` (a controller's datagrams name the member; a member's go to its
//! controller: `PKTCRYPT_PEER_CONTROLLER`), `pktcrypt_poll_timeout` /
//! `pktcrypt_handle_timeout`, `pktcrypt_status` and `pktcrypt_export_sas` (per member index),
//! `pktcrypt_rekey` (a controller starts a rollout), `pktcrypt_drop_count`.
//! `pktcrypt_group_status` reads the group's generation and phase.
//!
//! `pktcrypt_config` gives a group role its data-plane settings only (`esn`, `replay_window`,
//! `backend`); the group's own are in `pktcrypt_group_config`, which is versioned by its
//! `struct_size` as `pktcrypt_config` is.

use super::{
    default_config, endpoint, engine_config, guard, key_arg, known_config_size, ms, pfs_of,
    pktcrypt_config, pktcrypt_endpoint, pktcrypt_packet_info, pktcrypt_packet_kind,
    pktcrypt_result, pktcrypt_role, pktcrypt_suite, size_t, suite_out, time,
};
use pktcrypt_core::control::message::GroupPhase;
use pktcrypt_core::control::{
    Endpoint, GroupConfig, GroupController, GroupMember, Machine, MemberState,
};
use pktcrypt_core::{Engine, PeerId, Role};
use pktcrypt_os::OsRandom;
use std::collections::VecDeque;
use std::ffi::{CString, c_char};

/// The peer a group member's datagrams go to and its control messages come from: its
/// controller (`pktcrypt_poll_transmit`, `pktcrypt_packet_info.peer`).
pub const PKTCRYPT_PEER_CONTROLLER: u32 = u32::MAX - 1;

/// The settings of a group (controller and members). Fill it with `pktcrypt_group_config_init`,
/// then change fields. Durations are in milliseconds.
///
/// It may grow in later versions (fields are only appended): `struct_size` tells the library
/// which version the caller has, so never set it by hand.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pktcrypt_group_config {
    /// `sizeof(pktcrypt_group_config)` as the caller was compiled with it; set by
    /// `pktcrypt_group_config_init`. Calls refuse a size they do not know
    /// (`PKTCRYPT_RESULT_ERR_CONFIG_SIZE`).
    pub struct_size: u32,
    /// Suite of new group generations (controller).
    pub suite: pktcrypt_suite,
    /// Controller: roll out a new group key this often (jittered ±10 %); 0: only on events
    /// (a join, a leave, an eviction, `pktcrypt_rekey`). Default one hour.
    pub rekey_interval_ms: u64,
    /// First retransmission of an unanswered control message (both roles; must not be 0).
    pub retry_ms: u64,
    /// Largest retransmission interval (at least `retry_ms`).
    pub max_backoff_ms: u64,
    /// Controller: retransmissions before a member is reported unresponsive.
    pub max_retries: u32,
    /// Controller: evict unresponsive members (and roll out a key without them).
    pub evict_unresponsive: bool,
    /// Controller: pause between rollout phases, so that packets under the previous rule
    /// arrive first (0 allowed).
    pub phase_grace_ms: u64,
    /// Controller: the smallest interval between two rollouts triggered by a member's
    /// authenticated messages from a new address.
    pub unknown_sender_holdoff_ms: u64,
    /// Controller: forward secrecy of the control channels, as `pktcrypt_config.pfs`
    /// (`PKTCRYPT_PFS_EVERY_REKEY`, the default: a group key only travels under a channel
    /// generation from a fresh key exchange).
    pub pfs: i32,
    /// Controller: rekey each member's control channel this often; 0: only on its triggers.
    /// Default one hour.
    pub channel_rekey_interval_ms: u64,
}

/// A state of a group member, and the phases of a rollout (spec §6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pktcrypt_group_phase {
    /// Holds only the newest key and transmits with it (a rollout completed).
    UpdateCompleted = 0,
    /// Holds old and new, transmits with old (the new key was distributed).
    DistributionCompleted = 1,
    /// Holds old and new, transmits with new.
    InTransit = 2,
}

impl From<GroupPhase> for pktcrypt_group_phase {
    fn from(p: GroupPhase) -> Self {
        match p {
            GroupPhase::UpdateCompleted => Self::UpdateCompleted,
            GroupPhase::DistributionCompleted => Self::DistributionCompleted,
            GroupPhase::InTransit => Self::InTransit,
        }
    }
}

impl From<MemberState> for pktcrypt_group_phase {
    fn from(s: MemberState) -> Self {
        match s {
            MemberState::UpdateCompleted => Self::UpdateCompleted,
            MemberState::DistributionCompleted => Self::DistributionCompleted,
            MemberState::InTransit => Self::InTransit,
        }
    }
}

/// The state of a group endpoint (`pktcrypt_group_status`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pktcrypt_group_info {
    /// The newest group generation (a controller: the newest it made; a member: the newest it
    /// holds; 0: none yet).
    pub generation: u64,
    /// A member: the generation it transmits with (0: none yet, it cannot seal). A controller:
    /// 0.
    pub tx_generation: u64,
    /// A member: the previous generation it still holds (0: none).
    pub previous_generation: u64,
    /// A member: its state. A controller: the phase its rollout in progress waits for every
    /// member to reach, `PKTCRYPT_GROUP_PHASE_UPDATE_COMPLETED` when idle.
    pub phase: pktcrypt_group_phase,
    /// A controller: a rollout is in progress. A member: it holds two generations (its phase
    /// is not `UPDATE_COMPLETED`).
    pub rollout_in_progress: bool,
    /// The number of members (a controller: provisioned with `pktcrypt_group_add_member`; a
    /// member: as it was made with).
    pub member_count: u16,
    /// A controller: how many members are active (joined, not left, evicted or removed). A
    /// member: 0.
    pub active_members: u16,
    /// A member: its index. A controller: `UINT16_MAX`.
    pub index: u16,
    /// A member: `pktcrypt_seal` has a key now. A generation it was given receive-only (it
    /// joined, or its control channel restarted, after the generation was made) is
    /// `tx_generation` but not for sealing: it seals again from the next rollout's transition.
    /// A controller: false.
    pub can_seal: bool,
}

/// The size of `pktcrypt_group_config` as this header has it (its newest version).
fn group_config_size() -> u32 {
    size_of::<pktcrypt_group_config>() as u32
}

/// The sizes of `pktcrypt_group_config` this library knows: only its first version so far.
/// Each later version only appends fields, so a caller's struct of a known size is this
/// struct's first `size` bytes.
fn known_group_config_size(size: usize) -> bool {
    size == group_config_size() as usize
}

/// The defaults of a group (every field, of the newest version).
fn default_group_config() -> pktcrypt_group_config {
    let g = GroupConfig::new();
    let millis = |d: core::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    pktcrypt_group_config {
        struct_size: group_config_size(),
        suite: suite_out(g.suite),
        rekey_interval_ms: g.rekey_interval.map_or(0, millis),
        retry_ms: millis(g.retry),
        max_backoff_ms: millis(g.max_backoff),
        max_retries: g.max_retries,
        evict_unresponsive: g.evict_unresponsive,
        phase_grace_ms: millis(g.phase_grace),
        unknown_sender_holdoff_ms: millis(g.unknown_sender_holdoff),
        pfs: super::PKTCRYPT_PFS_EVERY_REKEY,
        channel_rekey_interval_ms: g.channel_rekey_interval.map_or(0, millis),
    }
}

/// Fills `cfg`, a `pktcrypt_group_config` of `struct_size` bytes, with the defaults, and sets
/// its `struct_size`. Call it through the header's `pktcrypt_group_config_init(cfg)`, which
/// passes `sizeof(pktcrypt_group_config)` as the caller's header has it. A size this library
/// does not know is refused (`PKTCRYPT_RESULT_ERR_CONFIG_SIZE`) and nothing is written.
///
/// # Safety
/// `cfg` is NULL or points to `struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_group_config_init_sized(
    cfg: *mut pktcrypt_group_config,
    struct_size: size_t,
) -> pktcrypt_result {
    guard(|| {
        if cfg.is_null() {
            return pktcrypt_result::ErrNull;
        }
        if !known_group_config_size(struct_size) {
            return pktcrypt_result::ErrConfigSize;
        }
        let mut value = default_group_config();
        value.struct_size = struct_size as u32;
        // SAFETY: checked non-null; the caller provides `struct_size` writable bytes, a known
        // size, so at most `size_of::<pktcrypt_group_config>()`: the first `struct_size` bytes
        // of `value` are the fields of the caller's version.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&raw const value).cast::<u8>(),
                cfg.cast::<u8>(),
                struct_size,
            );
        }
        pktcrypt_result::Ok
    })
}

/// The caller's endpoint config (NULL: the defaults of `role`) with the fields of later versions
/// at their defaults; its role must be `role`.
///
/// # Safety
/// `cfg` is NULL or points to a config filled by `pktcrypt_config_init` (of any version).
unsafe fn read_config(
    cfg: *const pktcrypt_config,
    role: pktcrypt_role,
) -> Result<pktcrypt_config, pktcrypt_result> {
    let mut full = default_config(role);
    if cfg.is_null() {
        return Ok(full);
    }
    // SAFETY: non-null; every version starts with `struct_size` (caller contract).
    let size = unsafe { (&raw const (*cfg).struct_size).read() } as usize;
    if !known_config_size(size) {
        return Err(pktcrypt_result::ErrConfigSize);
    }
    // SAFETY: non-null and `size` readable bytes (a size this library knows).
    if !unsafe { crate::config_fields_valid(cfg, size) } {
        return Err(pktcrypt_result::ErrConfig);
    }
    // SAFETY: non-null and of a size this library knows, at most the size of `full`: the
    // caller's `size` bytes are an initialised config of that version.
    unsafe {
        std::ptr::copy_nonoverlapping(cfg.cast::<u8>(), (&raw mut full).cast::<u8>(), size);
    }
    if full.role != role {
        return Err(pktcrypt_result::ErrWrongRole);
    }
    Ok(full)
}

/// The caller's group config (NULL: the defaults), fields of later versions at their defaults.
///
/// # Safety
/// `group` is NULL or points to a config filled by `pktcrypt_group_config_init`.
unsafe fn read_group_config(
    group: *const pktcrypt_group_config,
) -> Result<pktcrypt_group_config, pktcrypt_result> {
    let mut full = default_group_config();
    if group.is_null() {
        return Ok(full);
    }
    // SAFETY: non-null; every version starts with `struct_size` (caller contract).
    let size = unsafe { (&raw const (*group).struct_size).read() } as usize;
    if !known_group_config_size(size) {
        return Err(pktcrypt_result::ErrConfigSize);
    }
    // SAFETY: non-null and `size` readable bytes: its enum and bool fields hold valid values
    // before the struct is read as Rust values.
    if !unsafe {
        crate::fields_valid(
            group.cast::<u8>(),
            size,
            &[(
                std::mem::offset_of!(pktcrypt_group_config, suite),
                crate::SUITES,
            )],
            &[std::mem::offset_of!(
                pktcrypt_group_config,
                evict_unresponsive
            )],
        )
    } {
        return Err(pktcrypt_result::ErrConfig);
    }
    // SAFETY: non-null and of a size this library knows, at most the size of `full`.
    unsafe {
        std::ptr::copy_nonoverlapping(group.cast::<u8>(), (&raw mut full).cast::<u8>(), size);
    }
    Ok(full)
}

/// The core's group configuration from both structs.
fn group_config(
    cfg: &pktcrypt_config,
    g: &pktcrypt_group_config,
    role: Role,
) -> Result<GroupConfig, String> {
    let mut c = GroupConfig::new();
    c.engine = engine_config(cfg, role)?;
    c.suite = g.suite.into();
    c.rekey_interval = (g.rekey_interval_ms > 0).then(|| ms(g.rekey_interval_ms));
    if g.retry_ms == 0 {
        return Err("retry_ms: must be positive".into());
    }
    c.retry = ms(g.retry_ms);
    c.max_backoff = ms(g.max_backoff_ms.max(g.retry_ms));
    c.max_retries = g.max_retries;
    c.evict_unresponsive = g.evict_unresponsive;
    c.phase_grace = ms(g.phase_grace_ms);
    c.unknown_sender_holdoff = ms(g.unknown_sender_holdoff_ms);
    c.pfs = pfs_of(g.pfs)?;
    c.channel_rekey_interval =
        (g.channel_rekey_interval_ms > 0).then(|| ms(g.channel_rekey_interval_ms));
    // The controller's `derived` rules (members take either form).
    c.derived = cfg.derived && role == Role::KeyServer;
    Ok(c)
}

/// Hands a new endpoint to the caller.
///
/// # Safety
/// `out` points to writable memory for a pointer.
unsafe fn hand_out(
    machine: Endpoint,
    config: pktcrypt_config,
    out: *mut *mut pktcrypt_endpoint,
) -> pktcrypt_result {
    let ep = Box::new(pktcrypt_endpoint {
        machine,
        config,
        last_error: CString::default(),
        pending: VecDeque::new(),
    });
    // SAFETY: the caller provides writable memory for one pointer.
    unsafe { out.write(Box::into_raw(ep)) };
    pktcrypt_result::Ok
}

/// Creates a group controller. `cfg` (NULL: the defaults) must have the role
/// `PKTCRYPT_ROLE_GROUP_CONTROLLER` and gives the data-plane settings (`esn`, `replay_window`,
/// `backend`; its other fields are not used); `group` (NULL: the defaults) the group's.
/// `group_key` is the group init key (`pkc1-...`), the one every member is given: the
/// controller takes the base of the members' SPIs from it. Add the members with
/// `pktcrypt_group_add_member`; the first rollout starts when the first member joins.
///
/// `PKTCRYPT_RESULT_ERR_WRONG_ROLE` for another role in `cfg`, `..._ERR_CONFIG_SIZE` for a
/// struct of a size this library does not know, `..._ERR_CONFIG` for invalid settings,
/// `..._ERR_KEY` for an invalid key code.
///
/// # Safety
/// `cfg` and `group` are NULL or point to configs filled by their `_init`; `group_key` is NULL
/// or a NUL-terminated string; `out` points to writable memory for a pointer. On success `*out`
/// must later be passed to `pktcrypt_endpoint_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_group_controller_new(
    cfg: *const pktcrypt_config,
    group: *const pktcrypt_group_config,
    group_key: *const c_char,
    out: *mut *mut pktcrypt_endpoint,
) -> pktcrypt_result {
    guard(|| {
        if out.is_null() {
            return pktcrypt_result::ErrNull;
        }
        // SAFETY: NULL or a config (caller contract).
        let cfg = match unsafe { read_config(cfg, pktcrypt_role::GroupController) } {
            Ok(c) => c,
            Err(r) => return r,
        };
        // SAFETY: NULL or a group config (caller contract).
        let g = match unsafe { read_group_config(group) } {
            Ok(g) => g,
            Err(r) => return r,
        };
        // SAFETY: NULL or NUL-terminated (caller contract).
        let group_init = match unsafe { key_arg(group_key) } {
            Ok(k) => k,
            Err((r, _)) => return r,
        };
        let Ok(config) = group_config(&cfg, &g, Role::KeyServer) else {
            return pktcrypt_result::ErrConfig;
        };
        let Ok(controller) = GroupController::new(config, &group_init, Box::new(OsRandom)) else {
            return pktcrypt_result::ErrConfig;
        };
        // SAFETY: checked non-null; writable per this function's contract.
        unsafe { hand_out(Endpoint::from(controller), cfg, out) }
    })
}

/// Creates group member `index` of `member_count` (member `j` transmits under the group key's
/// SPI base + `j`, so every member and the controller agree on the layout) with its own init key
/// `member_key` (its control channel with the controller, which has it from
/// `pktcrypt_group_add_member`) and the group init key `group_key`. `cfg` (NULL: the defaults)
/// must have the role `PKTCRYPT_ROLE_GROUP_MEMBER` and gives the data-plane settings (`esn`,
/// `replay_window`, `backend`); `group` (NULL: the defaults) the group's (a member uses
/// `retry_ms` and `max_backoff_ms`). It joins at once (`pktcrypt_poll_transmit`); it can seal
/// once a rollout made after its join has reached its transition (`pktcrypt_group_status`:
/// `can_seal`; before, and for a while after its control channel restarts, `pktcrypt_seal`
/// returns `PKTCRYPT_RESULT_ERR_NO_KEY`: skip the packet or queue it).
///
/// `PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT` when `index` is not below `member_count`;
/// `..._ERR_KEY` for an invalid key code, or the same key as member key and group key; the
/// others as `pktcrypt_group_controller_new`.
///
/// # Safety
/// As `pktcrypt_group_controller_new`; `member_key` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_group_member_new(
    cfg: *const pktcrypt_config,
    group: *const pktcrypt_group_config,
    group_key: *const c_char,
    index: u16,
    member_count: u16,
    member_key: *const c_char,
    now_ns: u64,
    out: *mut *mut pktcrypt_endpoint,
) -> pktcrypt_result {
    guard(|| {
        if out.is_null() {
            return pktcrypt_result::ErrNull;
        }
        // SAFETY: NULL or a config (caller contract).
        let cfg = match unsafe { read_config(cfg, pktcrypt_role::GroupMember) } {
            Ok(c) => c,
            Err(r) => return r,
        };
        // SAFETY: NULL or a group config (caller contract).
        let g = match unsafe { read_group_config(group) } {
            Ok(g) => g,
            Err(r) => return r,
        };
        if index >= member_count {
            return pktcrypt_result::ErrInvalidArgument;
        }
        // SAFETY: NULL or NUL-terminated (caller contract).
        let group_init = match unsafe { key_arg(group_key) } {
            Ok(k) => k,
            Err((r, _)) => return r,
        };
        // SAFETY: NULL or NUL-terminated (caller contract).
        let control = match unsafe { key_arg(member_key) } {
            Ok(k) => k,
            Err((r, _)) => return r,
        };
        if control.secret.expose() == group_init.secret.expose() {
            return pktcrypt_result::ErrKey;
        }
        let Ok(config) = group_config(&cfg, &g, Role::Client) else {
            return pktcrypt_result::ErrConfig;
        };
        let Ok(member) = GroupMember::new(
            config,
            index,
            &control,
            &group_init,
            member_count,
            Box::new(OsRandom),
            time(now_ns),
        ) else {
            // Valid codes and settings: what is left is the key layout (an SPI range past
            // the largest SPI, or keys whose SPIs collide).
            return pktcrypt_result::ErrKey;
        };
        // SAFETY: checked non-null; writable per this function's contract.
        unsafe { hand_out(Endpoint::from(member), cfg, out) }
    })
}

/// Provisions member `index` of a group controller with its own init key `member_key` (the one
/// that member is made with). Members are added in order, 0, 1, 2, ...: `index` must be the
/// number added so far (`PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT` otherwise). The member becomes
/// active when it joins (its first messages arrive through `pktcrypt_open`).
///
/// `PKTCRYPT_RESULT_ERR_WRONG_ROLE` for anything but a controller; `..._ERR_KEY` for an invalid
/// key code or one the controller holds already (every member needs a key of its own).
///
/// # Safety
/// `ep` live; `member_key` NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_group_add_member(
    ep: *mut pktcrypt_endpoint,
    index: u16,
    member_key: *const c_char,
    now_ns: u64,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        // SAFETY: NULL or NUL-terminated (caller contract).
        let key = match unsafe { key_arg(member_key) } {
            Ok(k) => k,
            Err((r, m)) => return ep.fail(r, m.replace("init_key", "member_key")),
        };
        let Machine::Controller(c) = ep.machine.machine_mut() else {
            return ep.fail(
                pktcrypt_result::ErrWrongRole,
                "only a group controller has members",
            );
        };
        let next = c.member_count();
        if index != next {
            return ep.fail(
                pktcrypt_result::ErrInvalidArgument,
                format!("index {index}: members are added in order, the next is {next}"),
            );
        }
        match c.add_member(&key, None, false, time(now_ns)) {
            Ok(_) => pktcrypt_result::Ok,
            Err(e) => ep.fail(pktcrypt_result::ErrKey, format!("member {index}: {e}")),
        }
    })
}

/// Fills `*status` with the state of a group controller or member.
/// `PKTCRYPT_RESULT_ERR_WRONG_ROLE` for a key server or a client.
///
/// # Safety
/// `ep` live; `status` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_group_status(
    ep: *mut pktcrypt_endpoint,
    status: *mut pktcrypt_group_info,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if status.is_null() {
            return ep.fail(pktcrypt_result::ErrNull, "status is NULL");
        }
        let value = match ep.machine.machine() {
            Machine::Controller(c) => pktcrypt_group_info {
                generation: c.generation(),
                tx_generation: 0,
                previous_generation: 0,
                phase: c
                    .rollout_phase()
                    .map_or(pktcrypt_group_phase::UpdateCompleted, Into::into),
                rollout_in_progress: !c.idle(),
                member_count: c.member_count(),
                active_members: u16::try_from(c.active_members().len()).unwrap_or(u16::MAX),
                index: u16::MAX,
                can_seal: false,
            },
            Machine::Member(m) => {
                let held = m.held();
                pktcrypt_group_info {
                    generation: m.generation(),
                    tx_generation: m.tx_generation(),
                    previous_generation: held.get(1).copied().unwrap_or(0),
                    phase: m.state().into(),
                    rollout_in_progress: m.state() != MemberState::UpdateCompleted,
                    member_count: m.member_count(),
                    active_members: 0,
                    index: m.index(),
                    can_seal: m.can_seal(),
                }
            }
            Machine::Server(_) | Machine::Client(_) => {
                return ep.fail(
                    pktcrypt_result::ErrWrongRole,
                    "only a group controller or member has a group status",
                );
            }
        };
        // SAFETY: checked non-null and writable (caller contract).
        unsafe { status.write(value) };
        pktcrypt_result::Ok
    })
}

/// A group controller seals nothing: the failure `pktcrypt_seal` returns for it.
pub(crate) fn refuse_data(ep: &mut pktcrypt_endpoint) -> Option<pktcrypt_result> {
    matches!(ep.machine.machine(), Machine::Controller(_)).then(|| {
        ep.fail(
            pktcrypt_result::ErrWrongRole,
            "a group controller has no data keys: only members seal",
        )
    })
}

/// The peer the caller sees for a datagram `pktcrypt_poll_transmit` gives (see
/// [`PKTCRYPT_PEER_CONTROLLER`]).
pub(crate) fn transmit_peer(machine: &Endpoint, peer: PeerId) -> u32 {
    match machine.machine() {
        Machine::Controller(c) => c.member_of(peer).map_or(peer.0, u32::from),
        Machine::Member(_) => PKTCRYPT_PEER_CONTROLLER,
        Machine::Server(_) | Machine::Client(_) => peer.0,
    }
}

/// Names the sender of a received datagram by member index in group mode.
pub(crate) fn map_packet_peer(machine: &Endpoint, info: &mut pktcrypt_packet_info) {
    let peer = PeerId(info.peer);
    info.peer = match (machine.machine(), info.kind) {
        (Machine::Controller(c), pktcrypt_packet_kind::Control) => {
            c.member_of(peer).map_or(info.peer, u32::from)
        }
        (Machine::Member(m), pktcrypt_packet_kind::Data) => {
            m.sender_index(peer).map_or(info.peer, u32::from)
        }
        (Machine::Member(_), pktcrypt_packet_kind::Control) => PKTCRYPT_PEER_CONTROLLER,
        _ => info.peer,
    };
}

/// The engine and its peer holding member `index`'s keys: a member's sender keys at a member,
/// its control channel at a controller.
pub(crate) fn peer_target(machine: &Endpoint, index: u32) -> Option<(&Engine, PeerId)> {
    let index = u16::try_from(index).ok()?;
    match machine.machine() {
        Machine::Controller(c) => Some((c.channel().engine(), c.member_peer(index)?)),
        Machine::Member(m) => Some((m.engine(), m.sender(index)?)),
        Machine::Server(_) | Machine::Client(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_config_of_another_size_is_refused_and_left_alone() {
        let mut cfg = std::mem::MaybeUninit::<pktcrypt_group_config>::zeroed();
        let size = size_of::<pktcrypt_group_config>();
        for other in [0, 4, size - 8, size + 8] {
            // SAFETY: `cfg` has room for a whole config (nothing is written on refusal).
            let r = unsafe { pktcrypt_group_config_init_sized(cfg.as_mut_ptr(), other) };
            assert_eq!(r, pktcrypt_result::ErrConfigSize, "{other}");
        }
        // SAFETY: zeroed is a valid bit pattern for this check.
        assert_eq!(unsafe { cfg.assume_init_ref() }.struct_size, 0);
        // SAFETY: as above, with the right size.
        let r = unsafe { pktcrypt_group_config_init_sized(cfg.as_mut_ptr(), size) };
        assert_eq!(r, pktcrypt_result::Ok);
        // SAFETY: initialised by the call above.
        let mut g = unsafe { cfg.assume_init() };
        assert_eq!(g.struct_size as usize, size);
        assert_eq!(g.retry_ms, 500);
        assert_eq!(g.rekey_interval_ms, 3_600_000);
        let key = c"pkc1-invalid";
        let mut ep = std::ptr::null_mut();
        g.struct_size += 8;
        // SAFETY: configs, a string and an out pointer.
        let r =
            unsafe { pktcrypt_group_controller_new(std::ptr::null(), &g, key.as_ptr(), &mut ep) };
        assert_eq!((r, ep.is_null()), (pktcrypt_result::ErrConfigSize, true));
    }

    #[test]
    fn the_defaults_are_the_cores() {
        let g = default_group_config();
        let mut cfg = default_config(pktcrypt_role::GroupMember);
        let core = group_config(&cfg, &g, Role::Client).expect("defaults");
        let mut expected = GroupConfig::new();
        expected.engine = core.engine.clone();
        assert_eq!(core, expected);
        cfg.replay_window = 100;
        assert!(group_config(&cfg, &g, Role::Client).is_err());
    }

    #[test]
    fn derived_reaches_the_controller() {
        let g = default_group_config();
        let mut cfg = default_config(pktcrypt_role::GroupController);
        assert!(
            !group_config(&cfg, &g, Role::KeyServer)
                .expect("config")
                .derived
        );
        cfg.derived = true;
        assert!(
            group_config(&cfg, &g, Role::KeyServer)
                .expect("config")
                .derived
        );
    }
}
