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
    /// Packets whose headers could not be parsed within bounds.
    Malformed = 2,
    /// Packets that matched but found no AF_XDP socket on their queue.
    NoSocket = 3,
}

/// Number of [`XdpCounter`] slots.
pub const XDP_COUNTER_SLOTS: u32 = 4;
