//! The sans-IO core of pktcrypt.
//!
//! Everything here is pure computation over caller-provided buffers: no sockets, no threads, no
//! clock reads (time is a parameter), no `unsafe`. The XDP daemon, the UDP driver, the C ABI
//! and the Python module all drive this crate.
//!
//! - [`wire`]: ESP-in-UDP framing over IPv4 and IPv6.
//! - [`aead`]: the AEAD suites behind a backend switch (RustCrypto-built GCM, `ring`).
//! - [`keys`]: generation secrets and HKDF-derived per-direction keys.
//! - [`kex`]: the hybrid X25519 + ML-KEM-768 key exchange and the version-3 key schedule.
//! - [`replay`]: the 64-bit ESN anti-replay window.
//! - [`Engine`]: peers, two key generations each, SPI lookup, seal/open (single and batched)
//!   with a per-packet [`Opened`] result and counted [`DropReason`]s.
//! - [`DataPlane`]: a `Sync` view of the engine's keys with which worker threads seal and open
//!   concurrently (shared sequence counters, lock-free replay windows).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aead;
pub mod control;
mod datapath;
mod engine;
mod error;
mod ids;
pub mod kex;
pub mod keycode;
pub mod keys;
mod pipeline;
mod random;
pub mod replay;
mod sa;
mod spi_table;
mod suite;
pub mod wire;

pub use datapath::DataPlane;
pub use engine::{
    Engine, EngineConfig, Installed, PeerStatus, RetiredCounters, Role, SaExport, SaStatus,
    boot_seq_base,
};
pub use error::{DropCounters, DropReason, Error, SealError};
pub use ids::{PeerId, Slot, Spi, TxRule};
pub use keys::{Direction, Generation, GenerationInfo, Secret};
pub use pipeline::{OpenInfo, OpenOutcome, Opened, Packet};
pub use sa::SaCounters;
pub use suite::Suite;

/// Time since an arbitrary monotonic epoch. Drivers pass a clock that keeps counting across
/// suspend (`CLOCK_BOOTTIME`); tests pass simulated time.
pub type Time = core::time::Duration;
