//! Wire formats: ESP (RFC 4303) inside UDP (RFC 3948) inside IPv4 or IPv6.
//!
//! Parsers take `&[u8]` and return ranges or a [`crate::DropReason`]; they never panic and never
//! index out of bounds. Builders write into caller buffers.

pub mod esp;
pub mod icmp;
pub mod ip;

pub use esp::{EspHeader, NextHeader};
pub use ip::{OuterHeader, UdpPacket};
