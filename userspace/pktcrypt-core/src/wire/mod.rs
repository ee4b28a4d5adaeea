//! Wire formats: ESP (RFC 4303) inside UDP (RFC 3948) inside IPv4 or IPv6, in tunnel mode
//! (the whole inner packet in ESP) or transport mode ([`transport`]).
//!
//! Parsers take `&[u8]` and return ranges or a [`crate::DropReason`]; they never panic and never
//! index out of bounds. Builders write into caller buffers.

pub mod esp;
pub mod icmp;
pub mod ip;
pub mod transport;

pub use esp::{EspHeader, NextHeader};
pub use ip::{OuterHeader, UdpPacket};
pub use transport::{TRANSPORT_HEADROOM, TRANSPORT_OVERHEAD, UdpPorts};
