//! The C ABI of pktcrypt (`libpktcrypt`), a thin layer over `pktcrypt-core`.
//!
//! Conventions (after rustls-ffi):
//! - Opaque handles: `pktcrypt_endpoint_new` / `pktcrypt_endpoint_free` (free accepts NULL).
//! - Every function returns a `pktcrypt_result` (or a plain value that cannot fail);
//!   `pktcrypt_result_message` names a result, `pktcrypt_endpoint_last_error` gives the detail of
//!   the last failure on a handle. There is no global state.
//! - Panics never cross the boundary: each entry point runs inside `catch_unwind` and reports
//!   `PKTCRYPT_ERR_PANIC`.
//! - Thread safety: a handle may move between threads but must not be used by two threads at
//!   once (it is `Send`, not `Sync`). Different handles are independent.
//! - Time is a `uint64_t` of nanoseconds on a monotonic clock; `pktcrypt_now_ns()` reads
//!   `CLOCK_BOOTTIME`, which keeps counting across suspend.
//! - ABI: the shared library's SONAME is `libpktcrypt.so.0` ([`PKTCRYPT_ABI_VERSION`]); it
//!   changes only when a function or struct changes incompatibly. `pktcrypt_config` can grow
//!   without that: its first field, `struct_size`, is the size of the struct the caller was
//!   compiled with (`pktcrypt_config_init` sets it), new fields are only ever appended, and the
//!   library accepts the sizes it knows (the first version, up to `pfs`, and the current one
//!   with `trigger_packets_total`) and refuses any other with
//!   `PKTCRYPT_RESULT_ERR_CONFIG_SIZE` rather than read or write past the caller's struct.
//!   `pktcrypt_group_config` follows the same convention.
//! - Group mode (spec §6): `pktcrypt_group_controller_new` and `pktcrypt_group_member_new`
//!   make the two group roles (`PKTCRYPT_ROLE_GROUP_CONTROLLER`, `PKTCRYPT_ROLE_GROUP_MEMBER`);
//!   then the calls of the pairwise roles work for them, with member indices for peers (see
//!   `src/group.rs`).
#![allow(non_camel_case_types)]

mod group;
pub use group::*;

use pktcrypt_core::control::{
    ClientConfig, Endpoint, Incoming, KeyClient, KeyServer, Machine, Pfs, Random, ServerConfig,
    Transmit,
};
use pktcrypt_core::wire::esp::{ESP_HEADER_LEN, MAX_OVERHEAD, NextHeader};
use pktcrypt_core::wire::{TRANSPORT_HEADROOM, UdpPorts};
use pktcrypt_core::{DropReason, Generation, PeerId, Role, SealError, Slot, Suite, Time, keycode};
use pktcrypt_os::OsRandom;
use std::collections::VecDeque;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// Result of a call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pktcrypt_result {
    /// Success.
    Ok = 0,
    /// Nothing to return (e.g. no datagram waiting).
    Empty = 1,
    /// A required pointer was NULL.
    ErrNull = 2,
    /// An argument is out of range or malformed (e.g. not UTF-8).
    ErrInvalidArgument = 3,
    /// The output buffer is too small; nothing was consumed.
    ErrBufferTooSmall = 4,
    /// An init key code is invalid (bad format, checksum, reserved SPI).
    ErrKey = 5,
    /// Invalid configuration.
    ErrConfig = 6,
    /// The call does not fit this handle's role (e.g. adding a peer to a client).
    ErrWrongRole = 7,
    /// No such peer.
    ErrUnknownPeer = 8,
    /// Sealing failed (e.g. sequence numbers exhausted: rekey first).
    ErrSeal = 9,
    /// A panic was caught inside the library; the handle should be freed.
    ErrPanic = 10,
    /// No key is established with the peer yet (protocol version 3 sends nothing but
    /// handshake messages under the init key): wait for the handshake, then seal.
    ErrNoKey = 11,
    /// `pktcrypt_config.struct_size` is not the size of a `pktcrypt_config` this library knows:
    /// the header the caller was compiled with does not match the library (or the config was
    /// not filled by `pktcrypt_config_init`).
    ErrConfigSize = 12,
}

/// The ABI version: the number in the shared library's SONAME (`libpktcrypt.so.0`). A new
/// function or a field appended to `pktcrypt_config` keeps it; an incompatible change bumps it.
pub const PKTCRYPT_ABI_VERSION: u32 = 0;

/// Role of an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pktcrypt_role {
    /// Key server (key transmitting device).
    Server = 0,
    /// Client (key receiving device).
    Client = 1,
    /// Group controller: distributes the group keys to its members, seals and opens no data
    /// (`pktcrypt_group_controller_new`).
    GroupController = 2,
    /// Group member: seals under its own sender key of the group key, opens every member's
    /// packets (`pktcrypt_group_member_new`).
    GroupMember = 3,
}

/// AEAD suite.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pktcrypt_suite {
    /// AES-128-GCM.
    Aes128Gcm = 1,
    /// AES-256-GCM.
    Aes256Gcm = 2,
    /// ChaCha20-Poly1305.
    Chacha20Poly1305 = 3,
}

impl From<pktcrypt_suite> for Suite {
    fn from(s: pktcrypt_suite) -> Suite {
        match s {
            pktcrypt_suite::Aes128Gcm => Suite::Aes128Gcm,
            pktcrypt_suite::Aes256Gcm => Suite::Aes256Gcm,
            pktcrypt_suite::Chacha20Poly1305 => Suite::ChaCha20Poly1305,
        }
    }
}

fn suite_out(s: Suite) -> pktcrypt_suite {
    match s {
        Suite::Aes128Gcm => pktcrypt_suite::Aes128Gcm,
        Suite::Aes256Gcm => pktcrypt_suite::Aes256Gcm,
        Suite::ChaCha20Poly1305 => pktcrypt_suite::Chacha20Poly1305,
    }
}

/// AEAD implementation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pktcrypt_backend {
    /// The measured default: `PKTCRYPT_BACKEND_RING_AWS_LC`.
    Default = 0,
    /// ring's assembly.
    Ring = 1,
    /// RustCrypto (AES-GCM built on `aes`, `ctr`, `ghash`; `chacha20poly1305`). Memory checkers
    /// such as valgrind follow it fully, unlike hand-written assembly.
    Rustcrypto = 2,
    /// aws-lc-rs (AWS-LC's assembly: AVX-512 VAES + VPCLMULQDQ AES-GCM).
    AwsLc = 3,
    /// ring, and aws-lc-rs for AES-GCM packets of 4 KiB (seal) or 6 KiB (open) and more: the
    /// faster of the two at each size, measured (ChaCha20-Poly1305 on ring alone).
    RingAwsLc = 4,
}

/// What a received datagram was.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pktcrypt_packet_kind {
    /// Decrypted data: the inner packet is in the caller's buffer.
    Data = 0,
    /// A control message, consumed by the endpoint.
    Control = 1,
    /// Dropped and counted; see `reason`.
    Dropped = 2,
}

/// Why a datagram was dropped (mirrors the engine's drop reasons).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pktcrypt_drop_reason {
    /// Not dropped.
    None = 0,
    /// Shorter than a valid packet.
    Truncated,
    /// Inconsistent outer headers.
    Malformed,
    /// An IP fragment.
    Fragment,
    /// Not ESP.
    NotEsp,
    /// A NAT keepalive.
    Keepalive,
    /// Over the configured maximum.
    Oversized,
    /// SPI 0..255.
    ReservedSpi,
    /// No key with this SPI.
    UnknownSpi,
    /// Sequence number seen before.
    Replay,
    /// Left of the replay window.
    TooOld,
    /// Forged or corrupted.
    AuthFailed,
    /// Bad ESP padding.
    BadPadding,
    /// Unsupported next header.
    BadNextHeader,
    /// A dummy packet.
    Dummy,
    /// The inner packet does not match its next header.
    BadInnerPacket,
    /// A control message that does not decode.
    ControlMalformed,
    /// A control message this role does not accept.
    ControlUnexpected,
    /// Data under an init key (protocol version 3 carries only handshakes under it).
    InitData,
    /// A handshake message answering no request in flight (a replay, or late).
    StaleHandshake,
    /// An init request beyond the key server's handshake rate limit.
    HandshakeRateLimited,
}

impl From<DropReason> for pktcrypt_drop_reason {
    fn from(r: DropReason) -> Self {
        use pktcrypt_drop_reason as P;
        match r {
            DropReason::Truncated => P::Truncated,
            DropReason::Malformed => P::Malformed,
            DropReason::Fragment => P::Fragment,
            DropReason::NotEsp => P::NotEsp,
            DropReason::Keepalive => P::Keepalive,
            DropReason::Oversized => P::Oversized,
            DropReason::ReservedSpi => P::ReservedSpi,
            DropReason::UnknownSpi => P::UnknownSpi,
            DropReason::Replay => P::Replay,
            DropReason::TooOld => P::TooOld,
            DropReason::AuthFailed => P::AuthFailed,
            DropReason::BadPadding => P::BadPadding,
            DropReason::BadNextHeader => P::BadNextHeader,
            DropReason::Dummy => P::Dummy,
            DropReason::BadInnerPacket => P::BadInnerPacket,
            DropReason::ControlMalformed => P::ControlMalformed,
            DropReason::ControlUnexpected => P::ControlUnexpected,
            DropReason::InitData => P::InitData,
            DropReason::StaleHandshake => P::StaleHandshake,
            DropReason::HandshakeRateLimited => P::HandshakeRateLimited,
        }
    }
}

/// Endpoint configuration. Fill it with `pktcrypt_config_init`, then change fields.
/// Durations are in milliseconds; 0 means the default unless stated.
///
/// It may grow in later versions (fields are only appended): `struct_size` tells the library
/// which version the caller has, so never set it by hand.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pktcrypt_config {
    /// `sizeof(pktcrypt_config)` as the caller was compiled with it; set by
    /// `pktcrypt_config_init`. Calls refuse a size they do not know
    /// (`PKTCRYPT_RESULT_ERR_CONFIG_SIZE`).
    pub struct_size: u32,
    /// Server or client.
    pub role: pktcrypt_role,
    /// Suite of new generations (server).
    pub suite: pktcrypt_suite,
    /// Derived-key mode (server; group controller: rollouts carry nonces, members compute the
    /// group key, no group key material on the wire).
    pub derived: bool,
    /// 64-bit extended sequence numbers.
    pub esn: bool,
    /// Anti-replay window, packets (multiple of 64 in 64..8192).
    pub replay_window: u32,
    /// Server-timed rekey per client; 0: none.
    pub rekey_interval_ms: u64,
    /// Client-timed update; 0: none.
    pub update_interval_ms: u64,
    /// Client hello interval.
    pub hello_interval_ms: u64,
    /// Client: first retransmission of a request.
    pub request_timeout_ms: u64,
    /// Client: largest retransmission interval.
    pub max_backoff_ms: u64,
    /// Client: unanswered requests before falling back to the init key.
    pub max_retries: u32,
    /// Server: reorder grace between data and control.
    pub reorder_grace_ms: u64,
    /// Rekey after this many packets sealed under one generation; 0: the AEAD-limit default.
    pub trigger_packets_sealed: u64,
    /// Rekey after this many packets opened under one generation; 0: the default.
    pub trigger_packets_opened: u64,
    /// Rekey after this many payload bytes (sealed + opened); 0: the default.
    pub trigger_bytes: u64,
    /// Rekey after this many failed authentications; 0: the default.
    pub trigger_auth_failures: u64,
    /// Rekey a generation this old (ms); 0: the default (one hour).
    pub trigger_age_ms: u64,
    /// Ignored since protocol version 3 (init-key messages no longer count from a boot-time
    /// base: each has a key of its own); kept so that existing callers still compile.
    pub init_seq_base: u64,
    /// AEAD implementation.
    pub backend: pktcrypt_backend,
    /// Server: forward secrecy, which rotations exchange fresh ephemeral keys (X25519 +
    /// ML-KEM-768): `PKTCRYPT_PFS_EVERY_REKEY` (0, the default), `PKTCRYPT_PFS_INIT_ONLY`,
    /// `PKTCRYPT_PFS_OFF`, or N > 1 for every Nth rotation.
    pub pfs: i32,
    /// Rekey after this many packets sealed and opened together under one generation; 0: the
    /// default. (Appended in version 0.2 of the struct: a caller compiled with the first
    /// version leaves it at the default.)
    pub trigger_packets_total: u64,
}

/// `pktcrypt_config.pfs`: every rotation exchanges ephemeral keys (the default).
pub const PKTCRYPT_PFS_EVERY_REKEY: i32 = 0;
/// `pktcrypt_config.pfs`: only the init handshake exchanges keys; rotations ratchet from it.
pub const PKTCRYPT_PFS_INIT_ONLY: i32 = -1;
/// `pktcrypt_config.pfs`: no key exchange at all (no forward secrecy; for comparison only).
pub const PKTCRYPT_PFS_OFF: i32 = -2;

fn pfs_of(v: i32) -> Result<Pfs, String> {
    match v {
        PKTCRYPT_PFS_EVERY_REKEY | 1 => Ok(Pfs::EveryRekey),
        PKTCRYPT_PFS_INIT_ONLY => Ok(Pfs::InitOnly),
        PKTCRYPT_PFS_OFF => Ok(Pfs::Off),
        n if n > 1 => Ok(Pfs::Every(n as u32)),
        n => Err(format!("pfs: {n} is not a policy")),
    }
}

/// Status of one peer of an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct pktcrypt_peer_status {
    /// Generation this side transmits with.
    pub tx_generation: u64,
    /// Newest generation held (0: init key only).
    pub newest_generation: u64,
    /// Its SPI (0 if none).
    pub newest_spi: u32,
    /// Previous generation held (0 if none).
    pub previous_generation: u64,
    /// Packets sealed under the transmit generation.
    pub packets_sealed: u64,
    /// Packets opened under all held generations.
    pub packets_opened: u64,
    /// Failed authentications under all held generations.
    pub auth_failures: u64,
    /// Replays refused under all held generations.
    pub replays: u64,
    /// Whether the newest generation came from a key exchange (forward secret).
    pub newest_exchanged: bool,
    /// When the newest generation was installed, on the caller's clock (the `now_ns` of that
    /// call).
    pub newest_installed_ns: u64,
}

/// Metadata of a received datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pktcrypt_packet_info {
    /// Data, control or dropped.
    pub kind: pktcrypt_packet_kind,
    /// Why it was dropped (`PKTCRYPT_DROP_REASON_NONE` otherwise).
    pub reason: pktcrypt_drop_reason,
    /// Sender (data and control). In group mode the member index (data at a member: the member
    /// that sealed it; control at a controller: the member); control at a member:
    /// `PKTCRYPT_PEER_CONTROLLER`.
    pub peer: u32,
    /// Generation it came under (data).
    pub generation: u64,
    /// Offset of the inner packet in the caller's buffer (data; from `pktcrypt_open_transport`
    /// in transport mode, of the restored IP packet).
    pub offset: size_t,
    /// Length of the inner packet (data; or of the restored IP packet).
    pub len: size_t,
}

type size_t = usize;

/// One direction of one generation, for an independent decryptor (Wireshark, xfrm, OpenSSL).
/// Holds key material: wipe it after use.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct pktcrypt_sa {
    /// SPI.
    pub spi: u32,
    /// Suite.
    pub suite: pktcrypt_suite,
    /// Generation number.
    pub generation: u64,
    /// True if this endpoint sends under it.
    pub outbound: bool,
    /// True if 64-bit ESNs enter the AAD.
    pub esn: bool,
    /// AEAD key followed by the 4-byte salt.
    pub keymat: [u8; 36],
    /// Bytes of `keymat` used (20 or 36).
    pub keymat_len: size_t,
}

/// An endpoint: a key server (many peers) or a client (one server). Opaque.
pub struct pktcrypt_endpoint {
    /// The one control-plane API of the core (the daemon drives the same type).
    machine: Endpoint,
    config: pktcrypt_config,
    last_error: CString,
    pending: VecDeque<Transmit>,
}

fn time(ns: u64) -> Time {
    Duration::from_nanos(ns)
}

fn guard(f: impl FnOnce() -> pktcrypt_result) -> pktcrypt_result {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(pktcrypt_result::ErrPanic)
}

impl pktcrypt_endpoint {
    fn fail(&mut self, r: pktcrypt_result, msg: impl Into<String>) -> pktcrypt_result {
        self.last_error = CString::new(msg.into().replace('\0', " ")).unwrap_or_default();
        r
    }
}

/// Reads a C string argument as a key code.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
unsafe fn key_arg(p: *const c_char) -> Result<Generation, (pktcrypt_result, String)> {
    if p.is_null() {
        return Err((pktcrypt_result::ErrNull, "init_key is NULL".into()));
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    let s = unsafe { CStr::from_ptr(p) };
    let s = s.to_str().map_err(|_| {
        (
            pktcrypt_result::ErrInvalidArgument,
            "init_key is not UTF-8".into(),
        )
    })?;
    keycode::decode(s).map_err(|e| (pktcrypt_result::ErrKey, e))
}

/// The size of `pktcrypt_config` as this header has it (its newest version).
fn config_size() -> u32 {
    size_of::<pktcrypt_config>() as u32
}

/// The sizes of `pktcrypt_config` this library knows: its first version (up to `pfs`) and
/// the current one. Each version only appends fields, so a caller's struct of a known size is
/// this struct's first `size` bytes.
fn known_config_size(size: usize) -> bool {
    const FIRST: usize = std::mem::offset_of!(pktcrypt_config, trigger_packets_total);
    size == FIRST || size == config_size() as usize
}

/// Whether the enum and bool fields of a caller's struct hold values their Rust types have, read
/// as the raw integers C may have put there (any `int` fits a C enum, any byte a `bool`; a Rust
/// enum or `bool` holding another value is undefined behaviour, so nothing may read the struct
/// as Rust values before this). `enums`: (offset, the valid values) of each 4-byte enum field;
/// `bools`: the offsets of the one-byte bools. Fields beyond `size` (of a later version) are not
/// the caller's and are skipped.
///
/// # Safety
/// `p` points to `size` readable bytes.
pub(crate) unsafe fn fields_valid(
    p: *const u8,
    size: usize,
    enums: &[(usize, &[u32])],
    bools: &[usize],
) -> bool {
    let enums_ok = enums.iter().all(|&(off, valid)| {
        off + 4 > size || {
            // SAFETY: `off + 4 <= size`: within the caller's readable bytes.
            let v = unsafe { p.add(off).cast::<u32>().read_unaligned() };
            valid.contains(&v)
        }
    });
    let bools_ok = bools.iter().all(|&off| {
        // SAFETY: `off < size`: within the caller's readable bytes.
        off >= size || unsafe { p.add(off).read() } <= 1
    });
    enums_ok && bools_ok
}

/// The valid values of `pktcrypt_suite`.
pub(crate) const SUITES: &[u32] = &[1, 2, 3];

/// Whether a caller's `pktcrypt_config` of `size` bytes holds only valid enum and bool values.
///
/// # Safety
/// `cfg` points to `size` readable bytes.
pub(crate) unsafe fn config_fields_valid(cfg: *const pktcrypt_config, size: usize) -> bool {
    use std::mem::offset_of;
    // SAFETY: `size` readable bytes at `cfg` (caller contract).
    unsafe {
        fields_valid(
            cfg.cast::<u8>(),
            size,
            &[
                (offset_of!(pktcrypt_config, role), &[0, 1, 2, 3]),
                (offset_of!(pktcrypt_config, suite), SUITES),
                (offset_of!(pktcrypt_config, backend), &[0, 1, 2, 3, 4]),
            ],
            &[
                offset_of!(pktcrypt_config, derived),
                offset_of!(pktcrypt_config, esn),
            ],
        )
    }
}

/// The defaults of `role` (every field, of the newest version).
fn default_config(role: pktcrypt_role) -> pktcrypt_config {
    let c = ClientConfig::new();
    let s = ServerConfig::new();
    pktcrypt_config {
        struct_size: config_size(),
        role,
        suite: suite_out(s.suite),
        derived: false,
        esn: true,
        replay_window: 1024,
        rekey_interval_ms: s.rekey_interval.map_or(0, |d| d.as_millis() as u64),
        update_interval_ms: 0,
        hello_interval_ms: c.hello_interval.as_millis() as u64,
        request_timeout_ms: c.request_timeout.as_millis() as u64,
        max_backoff_ms: c.max_backoff.as_millis() as u64,
        max_retries: c.max_retries,
        reorder_grace_ms: s.reorder_grace.as_millis() as u64,
        trigger_packets_sealed: 0,
        trigger_packets_opened: 0,
        trigger_bytes: 0,
        trigger_auth_failures: 0,
        trigger_age_ms: 0,
        init_seq_base: 0,
        backend: pktcrypt_backend::Default,
        pfs: PKTCRYPT_PFS_EVERY_REKEY,
        trigger_packets_total: 0,
    }
}

/// Fills `cfg`, a `pktcrypt_config` of `struct_size` bytes, with the defaults of `role`, and
/// sets its `struct_size`. Call it through the header's `pktcrypt_config_init(cfg, role)`,
/// which passes `sizeof(pktcrypt_config)` as the caller's header has it. A size this library
/// does not know is refused (`PKTCRYPT_RESULT_ERR_CONFIG_SIZE`) and nothing is written.
///
/// # Safety
/// `cfg` is NULL or points to `struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_config_init_sized(
    cfg: *mut pktcrypt_config,
    struct_size: size_t,
    role: pktcrypt_role,
) -> pktcrypt_result {
    guard(|| {
        if cfg.is_null() {
            return pktcrypt_result::ErrNull;
        }
        if !known_config_size(struct_size) {
            return pktcrypt_result::ErrConfigSize;
        }
        let mut value = default_config(role);
        value.struct_size = struct_size as u32;
        // SAFETY: checked non-null; the caller provides `struct_size` writable bytes, a known
        // size, so at most `size_of::<pktcrypt_config>()`: the first `struct_size` bytes of
        // `value` are the fields of the caller's version.
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

fn engine_config(cfg: &pktcrypt_config, role: Role) -> Result<pktcrypt_core::EngineConfig, String> {
    let mut e = pktcrypt_core::EngineConfig::new(role);
    e.esn = cfg.esn;
    e.backend = match cfg.backend {
        pktcrypt_backend::Default => pktcrypt_core::aead::Backend::default(),
        pktcrypt_backend::Ring => pktcrypt_core::aead::Backend::Ring,
        pktcrypt_backend::Rustcrypto => pktcrypt_core::aead::Backend::RustCrypto,
        pktcrypt_backend::AwsLc => pktcrypt_core::aead::Backend::AwsLc,
        pktcrypt_backend::RingAwsLc => pktcrypt_core::aead::Backend::RingAwsLc,
    };
    if !(64..=8192).contains(&cfg.replay_window) || !cfg.replay_window.is_multiple_of(64) {
        return Err("replay_window: must be a multiple of 64 in 64..8192".into());
    }
    e.replay_window = cfg.replay_window;
    // `cfg.init_seq_base` is ignored: the key server and the client run protocol version 3,
    // which seals nothing under the init key with a counter.
    Ok(e)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Applies the non-zero trigger fields over the defaults.
fn triggers(cfg: &pktcrypt_config, t: &mut pktcrypt_core::control::RekeyTriggers) {
    let set = |v: u64, field: &mut u64| {
        if v > 0 {
            *field = v;
        }
    };
    set(cfg.trigger_packets_sealed, &mut t.packets_sealed);
    set(cfg.trigger_packets_opened, &mut t.packets_opened);
    set(cfg.trigger_packets_total, &mut t.packets_total);
    set(cfg.trigger_bytes, &mut t.bytes);
    set(cfg.trigger_auth_failures, &mut t.auth_failures);
    if cfg.trigger_age_ms > 0 {
        t.max_age = Some(ms(cfg.trigger_age_ms));
    }
}

/// Creates an endpoint. A client needs its init key code (`pkc1-...`); a server takes NULL and
/// gets its clients with `pktcrypt_endpoint_add_peer`. A client starts asking for its first key
/// at once (`pktcrypt_poll_transmit`). The group roles are refused
/// (`PKTCRYPT_RESULT_ERR_WRONG_ROLE`): make them with `pktcrypt_group_controller_new` and
/// `pktcrypt_group_member_new`.
///
/// # Safety
/// `cfg` points to a valid config; `init_key` is NULL or a NUL-terminated string; `out` points to
/// writable memory for a pointer. On success `*out` must later be passed to
/// `pktcrypt_endpoint_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_endpoint_new(
    cfg: *const pktcrypt_config,
    init_key: *const c_char,
    now_ns: u64,
    out: *mut *mut pktcrypt_endpoint,
) -> pktcrypt_result {
    guard(|| {
        if cfg.is_null() || out.is_null() {
            return pktcrypt_result::ErrNull;
        }
        // SAFETY: non-null; the caller passes a config filled by `pktcrypt_config_init`, of any
        // version: every version starts with `struct_size`, so this field is there to read.
        let size = unsafe { (&raw const (*cfg).struct_size).read() } as usize;
        if !known_config_size(size) {
            return pktcrypt_result::ErrConfigSize;
        }
        // SAFETY: non-null and `size` readable bytes (a size this library knows).
        if !unsafe { config_fields_valid(cfg, size) } {
            return pktcrypt_result::ErrConfig;
        }
        // The defaults, with the caller's version of the struct over them: fields appended
        // after the caller's version keep their defaults.
        let mut full = default_config(pktcrypt_role::Server);
        // SAFETY: non-null, and of a size this library knows (checked above), at most the
        // size of `full`: the caller's `size` bytes are an initialised config of that version.
        unsafe {
            std::ptr::copy_nonoverlapping(cfg.cast::<u8>(), (&raw mut full).cast::<u8>(), size);
        }
        let cfg = full;
        let machine = match cfg.role {
            pktcrypt_role::Server => {
                if !init_key.is_null() {
                    return pktcrypt_result::ErrWrongRole;
                }
                let mut c = ServerConfig::new();
                c.engine = match engine_config(&cfg, Role::KeyServer) {
                    Ok(e) => e,
                    Err(_) => return pktcrypt_result::ErrConfig,
                };
                c.suite = cfg.suite.into();
                c.derived = cfg.derived;
                c.pfs = match pfs_of(cfg.pfs) {
                    Ok(p) => p,
                    Err(_) => return pktcrypt_result::ErrConfig,
                };
                c.rekey_interval = (cfg.rekey_interval_ms > 0).then(|| ms(cfg.rekey_interval_ms));
                c.reorder_grace = ms(cfg.reorder_grace_ms);
                c.triggers =
                    pktcrypt_core::control::RekeyTriggers::for_suite(c.suite, c.engine.max_esp_len);
                triggers(&cfg, &mut c.triggers);
                match KeyServer::new(c, Box::new(OsRandom)) {
                    Ok(s) => Endpoint::from(s),
                    Err(_) => return pktcrypt_result::ErrConfig,
                }
            }
            pktcrypt_role::Client => {
                // SAFETY: init_key is NULL or NUL-terminated per this function's contract.
                let key = match unsafe { key_arg(init_key) } {
                    Ok(k) => k,
                    Err((r, _)) => return r,
                };
                let mut c = ClientConfig::new();
                c.engine = match engine_config(&cfg, Role::Client) {
                    Ok(e) => e,
                    Err(_) => return pktcrypt_result::ErrConfig,
                };
                c.update_interval =
                    (cfg.update_interval_ms > 0).then(|| ms(cfg.update_interval_ms));
                if cfg.hello_interval_ms == 0 || cfg.request_timeout_ms == 0 {
                    return pktcrypt_result::ErrConfig;
                }
                c.hello_interval = ms(cfg.hello_interval_ms);
                c.request_timeout = ms(cfg.request_timeout_ms);
                c.max_backoff = ms(cfg.max_backoff_ms.max(cfg.request_timeout_ms));
                c.max_retries = cfg.max_retries;
                triggers(&cfg, &mut c.triggers);
                match KeyClient::new(c, &key, Box::new(OsRandom), time(now_ns)) {
                    Ok(c) => Endpoint::from(c),
                    Err(_) => return pktcrypt_result::ErrConfig,
                }
            }
            // They need the group's settings and keys: pktcrypt_group_controller_new and
            // pktcrypt_group_member_new.
            pktcrypt_role::GroupController | pktcrypt_role::GroupMember => {
                return pktcrypt_result::ErrWrongRole;
            }
        };
        let ep = Box::new(pktcrypt_endpoint {
            machine,
            config: cfg,
            last_error: CString::default(),
            pending: VecDeque::new(),
        });
        // SAFETY: checked non-null; the caller provides writable memory for one pointer.
        unsafe { out.write(Box::into_raw(ep)) };
        pktcrypt_result::Ok
    })
}

/// Frees an endpoint and wipes its keys. NULL is accepted and ignored.
///
/// # Safety
/// `ep` is NULL or a handle from `pktcrypt_endpoint_new` not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_endpoint_free(ep: *mut pktcrypt_endpoint) {
    if ep.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a live handle from pktcrypt_endpoint_new, freed exactly once (caller contract).
        drop(unsafe { Box::from_raw(ep) });
    }));
}

/// Borrows a handle.
///
/// # Safety
/// `ep` is NULL or a live handle not used concurrently.
unsafe fn endpoint<'a>(ep: *mut pktcrypt_endpoint) -> Option<&'a mut pktcrypt_endpoint> {
    // SAFETY: per this function's contract the pointer is NULL or a live, exclusively used handle.
    unsafe { ep.as_mut() }
}

/// Adds a client (server endpoints only); `*peer_out` receives its id.
///
/// # Safety
/// `ep` is a live handle; `init_key` a NUL-terminated string; `peer_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_endpoint_add_peer(
    ep: *mut pktcrypt_endpoint,
    init_key: *const c_char,
    now_ns: u64,
    peer_out: *mut u32,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if peer_out.is_null() {
            return ep.fail(pktcrypt_result::ErrNull, "peer_out is NULL");
        }
        // SAFETY: init_key is NULL or NUL-terminated (caller contract).
        let key = match unsafe { key_arg(init_key) } {
            Ok(k) => k,
            Err((r, m)) => return ep.fail(r, m),
        };
        let Machine::Server(server) = ep.machine.machine_mut() else {
            return ep.fail(
                pktcrypt_result::ErrWrongRole,
                "only a server has several peers",
            );
        };
        match server.add_client(&key, None, time(now_ns)) {
            Ok(peer) => {
                // SAFETY: checked non-null and writable (caller contract).
                unsafe { peer_out.write(peer.0) };
                pktcrypt_result::Ok
            }
            Err(e) => ep.fail(pktcrypt_result::ErrKey, e.to_string()),
        }
    })
}

/// Builds a slice from a pointer and length (empty for length 0 even if NULL).
///
/// # Safety
/// If `len > 0`, `p` points to `len` readable bytes.
unsafe fn slice<'a>(p: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and `len` readable bytes per this function's contract.
    Some(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Seals an inner IP packet (IPv4 or IPv6) for `peer` (ignored by a client: its server; and by
/// a group member: it seals for the whole group under its own sender key) into `out`, which
/// needs `inner_len + 37` bytes. `*out_len` receives the ESP packet length. A group controller
/// seals no data (`PKTCRYPT_RESULT_ERR_WRONG_ROLE`).
///
/// # Safety
/// `ep` live; `inner` has `inner_len` readable bytes; `out` has `out_cap` writable bytes;
/// `out_len` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_seal(
    ep: *mut pktcrypt_endpoint,
    peer: u32,
    inner: *const u8,
    inner_len: size_t,
    out: *mut u8,
    out_cap: size_t,
    out_len: *mut size_t,
    now_ns: u64,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if out.is_null() || out_len.is_null() {
            return ep.fail(pktcrypt_result::ErrNull, "out or out_len is NULL");
        }
        if let Some(r) = group::refuse_data(ep) {
            return r;
        }
        // SAFETY: inner has inner_len readable bytes (caller contract).
        let Some(inner) = (unsafe { slice(inner, inner_len) }) else {
            return ep.fail(pktcrypt_result::ErrNull, "inner is NULL");
        };
        let Some(next) = NextHeader::for_ip_packet(inner) else {
            return ep.fail(
                pktcrypt_result::ErrInvalidArgument,
                "inner packet is not IPv4 or IPv6",
            );
        };
        let need = ESP_HEADER_LEN + inner_len + MAX_OVERHEAD;
        if out_cap < pktcrypt_core::wire::esp::esp_len(inner_len) {
            return ep.fail(
                pktcrypt_result::ErrBufferTooSmall,
                format!(
                    "out needs {} bytes",
                    pktcrypt_core::wire::esp::esp_len(inner_len)
                ),
            );
        }
        // SAFETY: out has out_cap writable bytes (caller contract), checked non-null.
        let out = unsafe { std::slice::from_raw_parts_mut(out, out_cap) };
        let seal = |machine: &mut Endpoint, buf: &mut [u8]| {
            buf[ESP_HEADER_LEN..ESP_HEADER_LEN + inner_len].copy_from_slice(inner);
            machine.seal(time(now_ns), PeerId(peer), buf, inner_len, next)
        };
        // Seal in place when `out` has room for the largest padding; otherwise via a scratch
        // buffer (the result still fits: checked above).
        let r = if out_cap >= need {
            seal(&mut ep.machine, &mut out[..need])
        } else {
            let mut scratch = vec![0u8; need];
            seal(&mut ep.machine, &mut scratch).inspect(|&n| {
                out[..n].copy_from_slice(&scratch[..n]);
            })
        };
        match r {
            Ok(n) => {
                // SAFETY: checked non-null and writable (caller contract).
                unsafe { out_len.write(n) };
                pktcrypt_result::Ok
            }
            Err(SealError::UnknownPeer) => ep.fail(pktcrypt_result::ErrUnknownPeer, "no such peer"),
            Err(SealError::NoKey) => {
                ep.fail(pktcrypt_result::ErrNoKey, SealError::NoKey.to_string())
            }
            Err(e) => ep.fail(pktcrypt_result::ErrSeal, e.to_string()),
        }
    })
}

/// Handles a received datagram (the UDP payload), decrypting it in place. Control messages are
/// consumed (answers appear in `pktcrypt_poll_transmit`). `*info` says what it was; for data the
/// inner packet is at `buf + info->offset`, `info->len` bytes.
///
/// # Safety
/// `ep` live; `buf` has `len` writable bytes; `info` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_open(
    ep: *mut pktcrypt_endpoint,
    now_ns: u64,
    buf: *mut u8,
    len: size_t,
    info: *mut pktcrypt_packet_info,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if info.is_null() || (buf.is_null() && len > 0) {
            return ep.fail(pktcrypt_result::ErrNull, "buf or info is NULL");
        }
        let mut empty = [0u8; 0];
        let data: &mut [u8] = if len == 0 {
            &mut empty
        } else {
            // SAFETY: buf has len writable bytes (caller contract), checked non-null.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        let now = time(now_ns);
        let base = data.as_ptr() as usize;
        let r = ep.machine.handle_datagram(now, None, data);
        let (mut value, _) = packet_info(base, r);
        group::map_packet_peer(&ep.machine, &mut value);
        // SAFETY: checked non-null and writable (caller contract).
        unsafe { info.write(value) };
        pktcrypt_result::Ok
    })
}

/// What `pktcrypt_open` and `pktcrypt_open_transport` report of an [`Incoming`] opened in the
/// buffer starting at address `base`, and the data's next header (0 for anything else).
fn packet_info(base: usize, r: Incoming<'_>) -> (pktcrypt_packet_info, u8) {
    match r {
        Incoming::Data {
            peer,
            packet,
            generation,
            next_header,
        } => (
            pktcrypt_packet_info {
                kind: pktcrypt_packet_kind::Data,
                reason: pktcrypt_drop_reason::None,
                peer: peer.0,
                generation,
                // The packet lies inside the buffer: its distance from the start.
                offset: packet.as_ptr() as usize - base,
                len: packet.len(),
            },
            next_header.value(),
        ),
        Incoming::Control { peer } => (
            pktcrypt_packet_info {
                kind: pktcrypt_packet_kind::Control,
                reason: pktcrypt_drop_reason::None,
                peer: peer.0,
                generation: 0,
                offset: 0,
                len: 0,
            },
            0,
        ),
        Incoming::Dropped(reason) => (
            pktcrypt_packet_info {
                kind: pktcrypt_packet_kind::Dropped,
                reason: reason.into(),
                peer: 0,
                generation: 0,
                offset: 0,
                len: 0,
            },
            0,
        ),
    }
}

/// The most a transport-mode packet is longer than the IP packet it protects (UDP header, ESP
/// header, padding, trailer, ICV): `pktcrypt_seal_transport`'s `out` needs `packet_len` plus
/// this many bytes.
pub const PKTCRYPT_TRANSPORT_OVERHEAD: usize = 45;
const _: () = assert!(PKTCRYPT_TRANSPORT_OVERHEAD == pktcrypt_core::wire::TRANSPORT_OVERHEAD);

/// The ESP-in-UDP port of RFC 3948 (4500): the UDP ports `pktcrypt_seal_transport` uses when
/// given 0.
pub const PKTCRYPT_ESP_UDP_PORT: u16 = 4500;
const _: () = assert!(PKTCRYPT_ESP_UDP_PORT == UdpPorts::ESP_IN_UDP.dst);

/// Seals an IP packet (IPv4, or IPv6 with at most hop-by-hop and destination options
/// extension headers) for `peer` (ignored by a client: its server) in ESP transport mode inside
/// UDP (RFC 4303 §3.1.1, RFC 3948), host to host: into `out` goes the packet's own IP header
/// (protocol 17, lengths and IPv4 checksum fixed), a UDP header from `src_port` to `dst_port`
/// (0: 4500), and ESP over the transport payload with next header = its protocol (6 TCP, 17
/// UDP, ...). `out` needs `packet_len + PKTCRYPT_TRANSPORT_OVERHEAD` bytes; `*out_len` receives
/// the packet's length, ready for a raw IP socket or a TUN device. The transport checksum is
/// left as it is (the receiver recomputes it).
///
/// `PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT` (the detail in `pktcrypt_endpoint_last_error`) for a
/// packet transport mode does not take: not IPv4/IPv6 or lengths that disagree, a fragment, an
/// IPv6 routing, fragment, AH or ESP header, an IP-in-IP, ESP or AH payload (seal IP-in-IP with
/// `pktcrypt_seal`, in tunnel mode). Nothing is sealed then, and no sequence number spent.
///
/// # Safety
/// `ep` live; `packet` has `packet_len` readable bytes; `out` has `out_cap` writable bytes;
/// `out_len` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_seal_transport(
    ep: *mut pktcrypt_endpoint,
    peer: u32,
    packet: *const u8,
    packet_len: size_t,
    src_port: u16,
    dst_port: u16,
    out: *mut u8,
    out_cap: size_t,
    out_len: *mut size_t,
    now_ns: u64,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if out.is_null() || out_len.is_null() {
            return ep.fail(pktcrypt_result::ErrNull, "out or out_len is NULL");
        }
        if let Some(r) = group::refuse_data(ep) {
            return r;
        }
        // SAFETY: packet has packet_len readable bytes (caller contract).
        let Some(packet) = (unsafe { slice(packet, packet_len) }) else {
            return ep.fail(pktcrypt_result::ErrNull, "packet is NULL");
        };
        let port = |p: u16| if p == 0 { PKTCRYPT_ESP_UDP_PORT } else { p };
        let ports = UdpPorts {
            src: port(src_port),
            dst: port(dst_port),
        };
        // The packet goes after the headroom of a scratch buffer (sealing moves its IP header
        // down into it) no larger than `out`: a packet that does not fit is refused before it
        // spends a sequence number.
        let need = packet_len + PKTCRYPT_TRANSPORT_OVERHEAD;
        let mut scratch = vec![0u8; out_cap.max(TRANSPORT_HEADROOM + packet_len).min(need)];
        scratch[TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + packet_len].copy_from_slice(packet);
        let r =
            ep.machine
                .seal_transport(time(now_ns), PeerId(peer), &mut scratch, packet_len, ports);
        match r {
            // A scratch buffer larger than `out` is too small for any sealed packet: n fits.
            Ok(n) if n <= out_cap => {
                // SAFETY: out has out_cap writable bytes (caller contract), checked non-null;
                // n <= out_cap.
                let out = unsafe { std::slice::from_raw_parts_mut(out, n) };
                out.copy_from_slice(&scratch[..n]);
                // SAFETY: checked non-null and writable (caller contract).
                unsafe { out_len.write(n) };
                pktcrypt_result::Ok
            }
            Err(SealError::UnknownPeer) => ep.fail(pktcrypt_result::ErrUnknownPeer, "no such peer"),
            Err(SealError::NoKey) => {
                ep.fail(pktcrypt_result::ErrNoKey, SealError::NoKey.to_string())
            }
            Err(
                e @ (SealError::BadInnerPacket
                | SealError::Fragment
                | SealError::UnsupportedExtension
                | SealError::UnsupportedProtocol),
            ) => ep.fail(pktcrypt_result::ErrInvalidArgument, e.to_string()),
            Ok(_) | Err(SealError::BufferTooSmall) => ep.fail(
                pktcrypt_result::ErrBufferTooSmall,
                format!("out needs up to {need} bytes"),
            ),
            Err(e) => ep.fail(pktcrypt_result::ErrSeal, e.to_string()),
        }
    })
}

/// Handles a received IP packet carrying ESP in UDP (`buf` starts at the IPv4 or IPv6 header;
/// what a raw socket or a TUN device gives), decrypting it in place in either mode, as the
/// ESP trailer's next header says. Control messages are consumed as by `pktcrypt_open`.
/// `*info` says what it was; for data the packet is at `buf + info->offset`, `info->len` bytes,
/// and `*next_header` (unless NULL; 0 for anything but data) says which mode: 4 or 41, tunnel
/// mode, the inner packet; anything else, transport mode, the IP packet restored (its protocol
/// = `*next_header`, lengths and IPv4 checksum fixed, the TCP/UDP/ICMPv6 checksum recomputed
/// over the addresses received: a NAT may have changed them, RFC 3948 §3.1.2). Malformed IP or
/// UDP headers, fragments, keepalives and anything not UDP are dropped and counted too.
///
/// **The IP header of a transport-mode packet is not authenticated** (RFC 4303): an on-path
/// attacker can deliver an authentic payload under other addresses (even another IP
/// version), and the restored packet carries them with valid checksums. Check the restored
/// addresses against what `info->peer` may use (as IPsec checks an SA's selectors) before
/// handing the packet to a TUN device or a raw socket.
///
/// # Safety
/// `ep` live; `buf` has `len` writable bytes; `info` writable; `next_header` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_open_transport(
    ep: *mut pktcrypt_endpoint,
    now_ns: u64,
    buf: *mut u8,
    len: size_t,
    info: *mut pktcrypt_packet_info,
    next_header: *mut u8,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if info.is_null() || (buf.is_null() && len > 0) {
            return ep.fail(pktcrypt_result::ErrNull, "buf or info is NULL");
        }
        let mut empty = [0u8; 0];
        let data: &mut [u8] = if len == 0 {
            &mut empty
        } else {
            // SAFETY: buf has len writable bytes (caller contract), checked non-null.
            unsafe { std::slice::from_raw_parts_mut(buf, len) }
        };
        let base = data.as_ptr() as usize;
        let r = ep.machine.handle_transport(time(now_ns), data);
        let (mut value, next) = packet_info(base, r);
        group::map_packet_peer(&ep.machine, &mut value);
        // SAFETY: checked non-null and writable (caller contract).
        unsafe { info.write(value) };
        if !next_header.is_null() {
            // SAFETY: non-null, so writable (caller contract).
            unsafe { next_header.write(next) };
        }
        pktcrypt_result::Ok
    })
}

/// Takes the next datagram to send. `PKTCRYPT_RESULT_EMPTY` when there is none;
/// `PKTCRYPT_RESULT_ERR_BUFFER_TOO_SMALL` leaves it queued. `*peer` receives its peer id (a
/// group controller's: the member index; a group member's: `PKTCRYPT_PEER_CONTROLLER`).
///
/// # Safety
/// `ep` live; `out` has `cap` writable bytes; `len` and `peer` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_poll_transmit(
    ep: *mut pktcrypt_endpoint,
    out: *mut u8,
    cap: size_t,
    len: *mut size_t,
    peer: *mut u32,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if out.is_null() || len.is_null() || peer.is_null() {
            return ep.fail(pktcrypt_result::ErrNull, "out, len or peer is NULL");
        }
        let next = ep
            .pending
            .pop_front()
            .or_else(|| ep.machine.poll_transmit());
        let Some(t) = next else {
            return pktcrypt_result::Empty;
        };
        if t.contents.len() > cap {
            let n = t.contents.len();
            ep.pending.push_front(t);
            return ep.fail(
                pktcrypt_result::ErrBufferTooSmall,
                format!("datagram needs {n} bytes"),
            );
        }
        let to = group::transmit_peer(&ep.machine, t.peer);
        // SAFETY: out has cap >= contents.len() writable bytes (caller contract, checked above);
        // len and peer are non-null and writable.
        unsafe {
            std::ptr::copy_nonoverlapping(t.contents.as_ptr(), out, t.contents.len());
            len.write(t.contents.len());
            peer.write(to);
        }
        pktcrypt_result::Ok
    })
}

/// The next deadline (ns) at which `pktcrypt_handle_timeout` must run. Returns false if none.
///
/// # Safety
/// `ep` live; `deadline_ns` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_poll_timeout(
    ep: *mut pktcrypt_endpoint,
    deadline_ns: *mut u64,
) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return false;
        };
        if deadline_ns.is_null() {
            return false;
        }
        let t = ep.machine.poll_timeout();
        match t {
            Some(t) => {
                // SAFETY: checked non-null and writable (caller contract).
                unsafe { deadline_ns.write(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)) };
                true
            }
            None => false,
        }
    }))
    .unwrap_or(false)
}

/// Runs the timers due at `now_ns` (retransmissions, rekeys, hellos).
///
/// # Safety
/// `ep` live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_handle_timeout(
    ep: *mut pktcrypt_endpoint,
    now_ns: u64,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        ep.machine.handle_timeout(time(now_ns));
        // The C API has no events (yet): drop them rather than let them pile up.
        while ep.machine.poll_event().is_some() {}
        pktcrypt_result::Ok
    })
}

/// Every client of a key server: `pktcrypt_rekey`'s `peer` for all of them, and
/// `pktcrypt_set_suite`'s for the server-wide suite of future generations (every client
/// without a suite of its own).
pub const PKTCRYPT_ALL_PEERS: u32 = u32::MAX;

/// Rekey on demand: a key server rotates `peer` (every client with `PKTCRYPT_ALL_PEERS`) at
/// its next packet under its newest key (as when a rekey trigger fires); a client asks its
/// server for a new generation now (`peer` ignored; the request appears in
/// `pktcrypt_poll_transmit`). `*asked` (may be NULL) receives how many rotations were asked
/// for. `PKTCRYPT_RESULT_ERR_UNKNOWN_PEER` for a peer the server does not have,
/// `PKTCRYPT_RESULT_ERR_NO_KEY` for one (or a client) without a generation yet: its init
/// handshake gives it a fresh one. A group controller starts a rollout (`*asked` 1), or asks
/// nothing while no member has joined (`*asked` 0, not an error); a member refuses
/// (`PKTCRYPT_RESULT_ERR_WRONG_ROLE`). A group controller starts a rollout of a new group key
/// (after the one in progress; `peer` ignored, `*asked` 1); a group member cannot
/// (`PKTCRYPT_RESULT_ERR_WRONG_ROLE`: its controller rekeys the group).
///
/// # Safety
/// `ep` live; `asked` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_rekey(
    ep: *mut pktcrypt_endpoint,
    peer: u32,
    now_ns: u64,
    asked: *mut size_t,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if let Machine::Member(_) = ep.machine.machine() {
            return ep.fail(
                pktcrypt_result::ErrWrongRole,
                "a group member does not rekey: its controller rekeys the group",
            );
        }
        let is_server = matches!(ep.machine.machine(), Machine::Server(_));
        if is_server
            && peer != PKTCRYPT_ALL_PEERS
            && !ep.machine.engine().peers().any(|p| p == PeerId(peer))
        {
            return ep.fail(pktcrypt_result::ErrUnknownPeer, "no such peer");
        }
        let target = (is_server && peer != PKTCRYPT_ALL_PEERS).then_some(PeerId(peer));
        let n = ep.machine.rekey(time(now_ns), target);
        // The C API has no events (yet): drop them rather than let them pile up.
        while ep.machine.poll_event().is_some() {}
        if !asked.is_null() {
            // SAFETY: checked non-null; writable per this function's contract.
            unsafe { asked.write(n) };
        }
        // A controller without an active member asks nothing (`*asked` 0), which is no error.
        let is_client = matches!(ep.machine.machine(), Machine::Client(_));
        if n == 0 && (target.is_some() || is_client) {
            return ep.fail(
                pktcrypt_result::ErrNoKey,
                "no generation yet: the init handshake has not completed",
            );
        }
        pktcrypt_result::Ok
    })
}

/// Fills `*status` for `peer` (a client's only peer is 0). A group member's peers are the
/// members by index (its own: what it transmits with; another's: the keys its packets open
/// under); a group controller's are the members' control channels by index.
/// `pktcrypt_group_status` tells the group's generation and phase.
///
/// # Safety
/// `ep` live; `status` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_status(
    ep: *mut pktcrypt_endpoint,
    peer: u32,
    status: *mut pktcrypt_peer_status,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if status.is_null() {
            return ep.fail(pktcrypt_result::ErrNull, "status is NULL");
        }
        let (engine, id) = match ep.machine.machine() {
            Machine::Client(c) => (c.engine(), c.server()),
            Machine::Controller(_) | Machine::Member(_) => {
                match group::peer_target(&ep.machine, peer) {
                    Some(target) => target,
                    None => return ep.fail(pktcrypt_result::ErrUnknownPeer, "no such member"),
                }
            }
            _ => (ep.machine.engine(), PeerId(peer)),
        };
        let Some(st) = engine.peer_status(id) else {
            return ep.fail(pktcrypt_result::ErrUnknownPeer, "no such peer");
        };
        let mut out = pktcrypt_peer_status::default();
        for sa in &st.sas {
            if sa.transmitting {
                out.tx_generation = sa.info.number;
                out.packets_sealed = sa.counters.packets_sealed;
            }
            match sa.slot {
                Slot::Newest => {
                    out.newest_generation = sa.info.number;
                    out.newest_spi = sa.info.spi.get();
                    out.newest_exchanged = sa.exchanged;
                    out.newest_installed_ns =
                        u64::try_from(sa.installed_at.as_nanos()).unwrap_or(u64::MAX);
                }
                Slot::Previous => out.previous_generation = sa.info.number,
                Slot::Init => {}
            }
            out.packets_opened += sa.counters.packets_opened;
            out.auth_failures += sa.counters.auth_failures;
            out.replays += sa.counters.replays;
        }
        // SAFETY: checked non-null and writable (caller contract).
        unsafe { status.write(out) };
        pktcrypt_result::Ok
    })
}

/// Packets dropped for `reason` since the endpoint was created (0 for an invalid handle).
///
/// # Safety
/// `ep` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_drop_count(
    ep: *mut pktcrypt_endpoint,
    reason: pktcrypt_drop_reason,
) -> u64 {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return 0;
        };
        let engine = ep.machine.engine();
        engine
            .drops()
            .iter()
            .filter(|(r, _)| pktcrypt_drop_reason::from(*r) == reason)
            .map(|(_, n)| n)
            .sum()
    }))
    .unwrap_or(0)
}

/// Writes up to `cap` SAs of `peer` into `sas` and their number into `*n` (group roles: `peer`
/// is a member index, as for `pktcrypt_status`).
///
/// # Safety
/// `ep` live; `sas` has room for `cap` entries; `n` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_export_sas(
    ep: *mut pktcrypt_endpoint,
    peer: u32,
    sas: *mut pktcrypt_sa,
    cap: size_t,
    n: *mut size_t,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if n.is_null() || (sas.is_null() && cap > 0) {
            return ep.fail(pktcrypt_result::ErrNull, "sas or n is NULL");
        }
        let (engine, id) = match ep.machine.machine() {
            Machine::Client(c) => (c.engine(), c.server()),
            Machine::Controller(_) | Machine::Member(_) => {
                match group::peer_target(&ep.machine, peer) {
                    Some(target) => target,
                    None => return ep.fail(pktcrypt_result::ErrUnknownPeer, "no such member"),
                }
            }
            _ => (ep.machine.engine(), PeerId(peer)),
        };
        let exports = engine.export_sas(id);
        if exports.len() > cap {
            let need = exports.len();
            return ep.fail(pktcrypt_result::ErrBufferTooSmall, format!("{need} SAs"));
        }
        for (i, e) in exports.iter().enumerate() {
            let mut keymat = [0u8; 36];
            keymat[..e.keymat.len()].copy_from_slice(&e.keymat);
            let value = pktcrypt_sa {
                spi: e.spi.get(),
                suite: suite_out(e.suite),
                generation: e.generation,
                outbound: e.outbound,
                esn: e.esn,
                keymat,
                keymat_len: e.keymat.len(),
            };
            // SAFETY: i < exports.len() <= cap entries of writable memory (caller contract).
            unsafe { sas.add(i).write(value) };
        }
        // SAFETY: checked non-null and writable (caller contract).
        unsafe { n.write(exports.len()) };
        pktcrypt_result::Ok
    })
}

/// Makes a new init key as a text code (`pkc1-...`, NUL-terminated) in `out` (128 bytes suffice).
/// `spi` 0 picks a random SPI above 255.
///
/// # Safety
/// `out` has `cap` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_keygen(
    suite: pktcrypt_suite,
    spi: u32,
    out: *mut c_char,
    cap: size_t,
) -> pktcrypt_result {
    guard(|| {
        if out.is_null() {
            return pktcrypt_result::ErrNull;
        }
        let mut rng = OsRandom;
        let spi = if spi == 0 {
            loop {
                let v = u32::try_from(rng.next_u64() >> 32).unwrap_or(0);
                if let Ok(s) = pktcrypt_core::Spi::new(v) {
                    break s;
                }
            }
        } else {
            match pktcrypt_core::Spi::new(spi) {
                Ok(s) => s,
                Err(_) => return pktcrypt_result::ErrInvalidArgument,
            }
        };
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes);
        let key = Generation {
            info: pktcrypt_core::GenerationInfo {
                number: 0,
                spi,
                suite: suite.into(),
            },
            secret: pktcrypt_core::Secret::from_bytes(bytes),
        };
        let code = keycode::encode(&key);
        if code.len() + 1 > cap {
            return pktcrypt_result::ErrBufferTooSmall;
        }
        // SAFETY: out has cap > code.len() writable bytes (caller contract, checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), out.cast::<u8>(), code.len());
            out.add(code.len()).write(0);
        }
        pktcrypt_result::Ok
    })
}

/// `CLOCK_BOOTTIME` in nanoseconds: a monotonic clock that counts across suspend.
#[unsafe(no_mangle)]
pub extern "C" fn pktcrypt_now_ns() -> u64 {
    pktcrypt_os::now_ns()
}

/// A static description of a result (never NULL, never freed).
#[unsafe(no_mangle)]
pub extern "C" fn pktcrypt_result_message(r: pktcrypt_result) -> *const c_char {
    let s: &'static CStr = match r {
        pktcrypt_result::Ok => c"ok",
        pktcrypt_result::Empty => c"nothing to return",
        pktcrypt_result::ErrNull => c"a required pointer was NULL",
        pktcrypt_result::ErrInvalidArgument => c"invalid argument",
        pktcrypt_result::ErrBufferTooSmall => c"output buffer too small",
        pktcrypt_result::ErrKey => c"invalid init key",
        pktcrypt_result::ErrConfig => c"invalid configuration",
        pktcrypt_result::ErrWrongRole => c"not possible for this endpoint's role",
        pktcrypt_result::ErrUnknownPeer => c"no such peer",
        pktcrypt_result::ErrSeal => c"sealing failed",
        pktcrypt_result::ErrPanic => c"internal error (panic caught)",
        pktcrypt_result::ErrNoKey => c"no key established with the peer yet",
        pktcrypt_result::ErrConfigSize => {
            c"pktcrypt_config of a size this library does not know: fill it with pktcrypt_config_init from a header that matches the library"
        }
    };
    s.as_ptr()
}

/// The library's version, e.g. `"0.1.0"` (static, never NULL, never freed). Compare with the
/// header you compiled with if it matters; the ABI is `PKTCRYPT_ABI_VERSION`.
#[unsafe(no_mangle)]
pub extern "C" fn pktcrypt_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("the crate version has a NUL byte"),
        };
    VERSION.as_ptr()
}

/// The detail of the last failure on `ep` ("" if none). Valid until the next call on `ep`.
///
/// # Safety
/// `ep` NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_endpoint_last_error(
    ep: *const pktcrypt_endpoint,
) -> *const c_char {
    // SAFETY: ep is NULL or a live handle (caller contract).
    match unsafe { ep.as_ref() } {
        Some(ep) => ep.last_error.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// The role an endpoint was created with.
///
/// # Safety
/// `ep` live (not NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_endpoint_role(ep: *const pktcrypt_endpoint) -> pktcrypt_role {
    // SAFETY: ep is a live handle (caller contract).
    match unsafe { ep.as_ref() } {
        Some(ep) => ep.config.role,
        None => pktcrypt_role::Client,
    }
}

// `pktcrypt_set_suite_rotation` reads the caller's `pktcrypt_suite`s as `uint32_t`s.
const _: () = assert!(
    size_of::<pktcrypt_suite>() == size_of::<u32>()
        && align_of::<pktcrypt_suite>() == align_of::<u32>()
);

/// The key server of `ep`, or the failure to return.
fn server_of(ep: &mut pktcrypt_endpoint) -> Result<&mut KeyServer, pktcrypt_result> {
    if !matches!(ep.machine.machine(), Machine::Server(_)) {
        return Err(ep.fail(
            pktcrypt_result::ErrWrongRole,
            "only a key server chooses suites (a client takes each generation's from it)",
        ));
    }
    match ep.machine.machine_mut() {
        Machine::Server(server) => Ok(server),
        _ => Err(pktcrypt_result::ErrWrongRole),
    }
}

/// Cipher agility on a live key server: the suite of future generations. With `peer` =
/// `PKTCRYPT_ALL_PEERS`, the server-wide suite (it also ends a rotation set with
/// `pktcrypt_set_suite_rotation`); otherwise that client's own suite, over the server-wide
/// suite or rotation, until `pktcrypt_clear_peer_suite`. Nothing is rekeyed now: each client
/// switches at its next rekey, and since every generation carries its suite (the receiver
/// picks key and suite by SPI) packets under the old and the new generation both open across
/// the switch. A client endpoint refuses (`PKTCRYPT_RESULT_ERR_WRONG_ROLE`).
///
/// `suite` is a `pktcrypt_suite` value passed as an integer (C lets any `int` into an enum: a
/// value that is not a suite is refused with `PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT`).
///
/// # Safety
/// `ep` live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_set_suite(
    ep: *mut pktcrypt_endpoint,
    peer: u32,
    suite: u32,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        let suite = match suite {
            1 => Suite::Aes128Gcm,
            2 => Suite::Aes256Gcm,
            3 => Suite::ChaCha20Poly1305,
            other => {
                return ep.fail(
                    pktcrypt_result::ErrInvalidArgument,
                    format!("suite: {other} is not a pktcrypt_suite"),
                );
            }
        };
        let server = match server_of(ep) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if peer == PKTCRYPT_ALL_PEERS {
            server.set_suite(suite);
            return pktcrypt_result::Ok;
        }
        match server.set_client_suite(PeerId(peer), Some(suite)) {
            Ok(()) => pktcrypt_result::Ok,
            Err(_) => ep.fail(pktcrypt_result::ErrUnknownPeer, "no such peer"),
        }
    })
}

/// Takes away the suite of `peer`'s own set by `pktcrypt_set_suite`: its future generations
/// follow the server-wide suite or rotation again.
///
/// # Safety
/// `ep` live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_clear_peer_suite(
    ep: *mut pktcrypt_endpoint,
    peer: u32,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        let server = match server_of(ep) {
            Ok(s) => s,
            Err(r) => return r,
        };
        match server.set_client_suite(PeerId(peer), None) {
            Ok(()) => pktcrypt_result::Ok,
            Err(_) => ep.fail(pktcrypt_result::ErrUnknownPeer, "no such peer"),
        }
    })
}

/// Makes future generations of a live key server rotate through `suites[0..n]`: a client's
/// generation `g` (an init handshake starts again at 1) gets `suites[(g - 1) % n]`, so each
/// rekey takes the next suite of the list, per client, from the generation number alone.
/// Clients with a suite of their own (`pktcrypt_set_suite` with a peer) keep it. `n` = 0
/// ends the rotation (every generation then gets the server-wide suite, which a rotation
/// sets to its first). A value that is not a `pktcrypt_suite` is refused
/// (`PKTCRYPT_RESULT_ERR_INVALID_ARGUMENT`) and nothing changes.
///
/// # Safety
/// `ep` live; `suites` has `n` readable entries (may be NULL when `n` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pktcrypt_set_suite_rotation(
    ep: *mut pktcrypt_endpoint,
    suites: *const pktcrypt_suite,
    n: size_t,
) -> pktcrypt_result {
    guard(|| {
        // SAFETY: ep is NULL or a live handle (caller contract).
        let Some(ep) = (unsafe { endpoint(ep) }) else {
            return pktcrypt_result::ErrNull;
        };
        if n > 0 && suites.is_null() {
            return ep.fail(pktcrypt_result::ErrNull, "suites is NULL");
        }
        let mut list = Vec::with_capacity(n.min(1024));
        for i in 0..n {
            // SAFETY: `suites` has `n` readable entries (caller contract); each is read as
            // its integer representation (a C enum is an `int`), so that a value outside the
            // enumeration is refused rather than read as a `pktcrypt_suite`.
            let raw = unsafe { suites.cast::<u32>().add(i).read() };
            match u8::try_from(raw).ok().and_then(Suite::from_id) {
                Some(s) => list.push(s),
                None => {
                    return ep.fail(
                        pktcrypt_result::ErrInvalidArgument,
                        format!("suites[{i}]: {raw} is not a pktcrypt_suite"),
                    );
                }
            }
        }
        let server = match server_of(ep) {
            Ok(s) => s,
            Err(r) => return r,
        };
        server.set_suite_rotation(list);
        pktcrypt_result::Ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soname_is_the_abi_version_and_the_version_the_crate_version() {
        assert_eq!(
            env!("PKTCRYPT_SONAME_ABI"),
            PKTCRYPT_ABI_VERSION.to_string()
        );
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(pktcrypt_version()) };
        assert_eq!(v.to_str(), Ok(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn a_config_of_another_size_is_refused_and_left_alone() {
        let mut cfg = std::mem::MaybeUninit::<pktcrypt_config>::zeroed();
        let size = size_of::<pktcrypt_config>();
        let first = std::mem::offset_of!(pktcrypt_config, trigger_packets_total);
        for other in [0, 4, first - 8, first + 4, size + 8] {
            // SAFETY: `cfg` has room for a whole config (and nothing is written on refusal).
            let r = unsafe {
                pktcrypt_config_init_sized(cfg.as_mut_ptr(), other, pktcrypt_role::Client)
            };
            assert_eq!(r, pktcrypt_result::ErrConfigSize, "{other}");
        }
        // SAFETY: zeroed is a valid config bit pattern for this check (struct_size 0, role 0).
        assert_eq!(unsafe { cfg.assume_init_ref() }.struct_size, 0);
        // SAFETY: as above, with the right size.
        let r =
            unsafe { pktcrypt_config_init_sized(cfg.as_mut_ptr(), size, pktcrypt_role::Server) };
        assert_eq!(r, pktcrypt_result::Ok);
        // SAFETY: initialised by the call above.
        let mut cfg = unsafe { cfg.assume_init() };
        assert_eq!(cfg.struct_size as usize, size);
        let mut ep = std::ptr::null_mut();
        cfg.struct_size += 8;
        // SAFETY: a config and an out pointer.
        let r = unsafe { pktcrypt_endpoint_new(&cfg, std::ptr::null(), 0, &mut ep) };
        assert_eq!((r, ep.is_null()), (pktcrypt_result::ErrConfigSize, true));
        cfg.struct_size -= 8;
        // SAFETY: as above.
        let r = unsafe { pktcrypt_endpoint_new(&cfg, std::ptr::null(), 0, &mut ep) };
        assert_eq!(r, pktcrypt_result::Ok);
        // SAFETY: a live handle, freed once.
        unsafe { pktcrypt_endpoint_free(ep) };
    }

    /// A caller compiled with the first version of `pktcrypt_config` (up to `pfs`) still
    /// works: its struct is filled without a byte past its end, and an endpoint made from it
    /// keeps the later fields' defaults.
    #[test]
    fn a_config_of_the_first_version_is_still_accepted() {
        let first = std::mem::offset_of!(pktcrypt_config, trigger_packets_total);
        // Exactly the first version's bytes, 8-aligned, then a guard word.
        let mut mem = vec![0u64; first / 8 + 1];
        mem[first / 8] = 0x5a5a_5a5a_5a5a_5a5a;
        let cfg = mem.as_mut_ptr().cast::<pktcrypt_config>();
        // SAFETY: `first` writable bytes at `cfg`, aligned for the struct.
        let r = unsafe { pktcrypt_config_init_sized(cfg, first, pktcrypt_role::Server) };
        assert_eq!(r, pktcrypt_result::Ok);
        assert_eq!(
            mem[first / 8],
            0x5a5a_5a5a_5a5a_5a5a,
            "wrote past the caller's struct"
        );
        // SAFETY: the first version's fields were written above.
        assert_eq!(unsafe { (*cfg).struct_size } as usize, first);
        let mut ep = std::ptr::null_mut();
        // SAFETY: a config of the first version and an out pointer.
        let r = unsafe { pktcrypt_endpoint_new(cfg, std::ptr::null(), 0, &mut ep) };
        assert_eq!(r, pktcrypt_result::Ok);
        // SAFETY: a live handle.
        let e = unsafe { &*ep };
        assert_eq!(e.config.trigger_packets_total, 0);
        assert_eq!(e.config.pfs, PKTCRYPT_PFS_EVERY_REKEY);
        // SAFETY: a live handle, freed once.
        unsafe { pktcrypt_endpoint_free(ep) };
    }
}
