//! Types and constants shared by pktcrypt's eBPF/XDP program and its userspace.
//!
//! This crate is `no_std` and has no dependencies so that the eBPF program (built for
//! `bpfel-unknown-none`) and the userspace engine agree on one definition of every value that
//! crosses the kernel/userspace boundary or the wire.
#![no_std]

/// Default UDP port of ESP-in-UDP encapsulation (RFC 3948).
pub const DEFAULT_ESP_UDP_PORT: u16 = 4500;

/// ESP "next header" value for an encapsulated IPv4 packet (IANA protocol number).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// ESP "next header" value for an encapsulated IPv6 packet (IANA protocol number).
pub const NEXT_HEADER_IPV6: u8 = 41;
/// ESP "next header" value marking a pktcrypt control message (253 is reserved for
/// experimentation and testing by RFC 3692).
pub const NEXT_HEADER_CONTROL: u8 = 253;

/// SPIs `0..=255` are reserved by IANA (RFC 4303 §2.1) and never assigned.
pub const MAX_RESERVED_SPI: u32 = 255;

/// Length of the ESP header as pktcrypt sends it: SPI (4), sequence number (4), explicit IV (8).
pub const ESP_HEADER_LEN: usize = 16;
/// Length of the integrity check value (AEAD tag) of every pktcrypt suite.
pub const ESP_ICV_LEN: usize = 16;

/// Per-CPU counter slots kept by the XDP program (index into its counter array map).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpCounter {
    /// Packets redirected into an AF_XDP socket.
    Steered = 0,
    /// Packets passed to the kernel stack untouched.
    Passed = 1,
    /// Packets whose headers could not be parsed within bounds (passed; on the plaintext side
    /// a frame with more than two VLAN tags is dropped: fail closed).
    Malformed = 2,
    /// Packets that matched but found no AF_XDP socket on their queue (ESP-in-UDP ones are
    /// passed, protected-prefix ones dropped).
    NoSocket = 3,
    /// ESP-in-UDP under an SPI the gateway does not hold (not in [`maps::SPIS`]): dropped.
    UnknownSpi = 4,
    /// NAT-keepalives (RFC 3948 §2.3: one byte 0xFF) to the ESP port: dropped.
    Keepalive = 5,
    /// The non-ESP marker (SPI 0, RFC 3948 §2.2: IKE, which pktcrypt does not speak): dropped.
    NotEsp = 6,
    /// UDP payloads to the ESP port too short for an SPI and a sequence number: dropped.
    Truncated = 7,
}

/// Number of [`XdpCounter`] slots.
pub const XDP_COUNTER_SLOTS: u32 = 8;

/// Default capacity of the [`maps::SPIS`] map (the loader sets it from the configuration).
pub const DEFAULT_SPI_CAPACITY: u32 = 1024;

/// Names of the maps of the XDP program (the loader looks them up by name).
pub mod maps {
    /// `XSKMAP`: RX queue index → AF_XDP socket.
    pub const XSKS: &str = "XSKS";
    /// `ARRAY<u32>` of [`super::config`] values.
    pub const CONFIG: &str = "CONFIG";
    /// `LPM_TRIE` of protected IPv4 prefixes (key: prefix length, 4 address bytes).
    pub const PREFIXES_V4: &str = "PREFIXES_V4";
    /// `LPM_TRIE` of protected IPv6 prefixes (key: prefix length, 16 address bytes).
    pub const PREFIXES_V6: &str = "PREFIXES_V6";
    /// `PERCPU_ARRAY<u64>` indexed by [`super::XdpCounter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `PERCPU_HASH<u32, u64>`: the SPIs the gateway holds (key: the SPI as a number, decoded
    /// from network order) → packets received under each. Checked only in mode
    /// [`super::config::MODE_CHECK_SPI`].
    pub const SPIS: &str = "SPIS";
}

/// Indices into the `CONFIG` array map.
pub mod config {
    /// UDP destination port of ESP-in-UDP to steer (0: none).
    pub const ESP_PORT: u32 = 0;
    /// Bit set of [`MODE_STEER_ESP`] and [`MODE_STEER_PREFIXES`].
    pub const MODE: u32 = 1;
    /// Number of entries.
    pub const LEN: u32 = 2;
    /// Steer UDP packets to the ESP port (the outer, encrypted side).
    pub const MODE_STEER_ESP: u32 = 1;
    /// Steer packets whose destination is in a protected prefix (the inner, plaintext side).
    pub const MODE_STEER_PREFIXES: u32 = 2;
    /// With [`MODE_STEER_ESP`]: steer only ESP under an SPI in the `SPIS` map (counted there);
    /// drop unknown SPIs, keepalives, the non-ESP marker and truncated payloads (counted).
    pub const MODE_CHECK_SPI: u32 = 4;
}

/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "pktcrypt_xdp";
