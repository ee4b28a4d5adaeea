//! Outer IPv4/IPv6 and UDP headers of ESP-in-UDP (RFC 3948).

use crate::DropReason;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ops::Range;

pub(crate) const PROTO_UDP: u8 = 17;
pub(crate) const IPV4_HEADER_LEN: usize = 20;
pub(crate) const IPV6_HEADER_LEN: usize = 40;
pub(crate) const UDP_HEADER_LEN: usize = 8;
/// IPv6 extension headers walked at most before giving up (bounds the work per packet).
const MAX_IPV6_EXTENSIONS: usize = 4;

/// A parsed UDP datagram inside an IPv4 or IPv6 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpPacket {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Where the UDP payload lies in the packet.
    pub payload: Range<usize>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses an IP packet (starting at the IP header) carrying UDP.
///
/// # Errors
/// [`DropReason::Truncated`], [`DropReason::Malformed`] (bad version, lengths or IPv4 header
/// checksum), [`DropReason::Fragment`], [`DropReason::NotEsp`] (not UDP).
pub fn parse_udp(packet: &[u8]) -> Result<UdpPacket, DropReason> {
    let first = *packet.first().ok_or(DropReason::Truncated)?;
    let (src, dst, udp_at, ip_end) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < IPV4_HEADER_LEN {
                return Err(DropReason::Malformed);
            }
            if packet.len() < ihl {
                return Err(DropReason::Truncated);
            }
            if checksum(&packet[..ihl], 0) != 0 {
                return Err(DropReason::Malformed);
            }
            let total = usize::from(be16(packet, 2).ok_or(DropReason::Truncated)?);
            if total < ihl {
                return Err(DropReason::Malformed);
            }
            if total > packet.len() {
                return Err(DropReason::Truncated);
            }
            let frag = be16(packet, 6).ok_or(DropReason::Truncated)?;
            if frag & 0x3fff != 0 {
                return Err(DropReason::Fragment);
            }
            if packet[9] != PROTO_UDP {
                return Err(DropReason::NotEsp);
            }
            let mut s = [0; 4];
            let mut d = [0; 4];
            s.copy_from_slice(&packet[12..16]);
            d.copy_from_slice(&packet[16..20]);
            (
                IpAddr::from(Ipv4Addr::from(s)),
                IpAddr::from(Ipv4Addr::from(d)),
                ihl,
                total,
            )
        }
        6 => {
            if packet.len() < IPV6_HEADER_LEN {
                return Err(DropReason::Truncated);
            }
            let payload_len = usize::from(be16(packet, 4).ok_or(DropReason::Truncated)?);
            let end = IPV6_HEADER_LEN + payload_len;
            if end > packet.len() {
                return Err(DropReason::Truncated);
            }
            let mut next = packet[6];
            let mut at = IPV6_HEADER_LEN;
            let mut walked = 0;
            // Hop-by-hop (0), routing (43) and destination options (60) are skipped.
            while matches!(next, 0 | 43 | 60) {
                walked += 1;
                if walked > MAX_IPV6_EXTENSIONS {
                    return Err(DropReason::Malformed);
                }
                let len = (usize::from(*packet.get(at + 1).ok_or(DropReason::Truncated)?) + 1) * 8;
                next = packet[at];
                at += len;
                if at > end {
                    return Err(DropReason::Truncated);
                }
            }
            if next == 44 {
                return Err(DropReason::Fragment);
            }
            if next != PROTO_UDP {
                return Err(DropReason::NotEsp);
            }
            let mut s = [0; 16];
            let mut d = [0; 16];
            s.copy_from_slice(&packet[8..24]);
            d.copy_from_slice(&packet[24..40]);
            (
                IpAddr::from(Ipv6Addr::from(s)),
                IpAddr::from(Ipv6Addr::from(d)),
                at,
                end,
            )
        }
        _ => return Err(DropReason::Malformed),
    };
    let udp = packet.get(udp_at..ip_end).ok_or(DropReason::Truncated)?;
    if udp.len() < UDP_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let udp_len = usize::from(be16(udp, 4).ok_or(DropReason::Truncated)?);
    if udp_len < UDP_HEADER_LEN || udp_len > udp.len() {
        return Err(DropReason::Malformed);
    }
    let sport = be16(udp, 0).ok_or(DropReason::Truncated)?;
    let dport = be16(udp, 2).ok_or(DropReason::Truncated)?;
    Ok(UdpPacket {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload: udp_at + UDP_HEADER_LEN..udp_at + udp_len,
    })
}

/// Classifies a UDP payload received on the ESP-in-UDP port (RFC 3948 §2.2, §2.3).
///
/// # Errors
/// [`DropReason::Keepalive`] for a NAT-keepalive (one byte 0xFF), [`DropReason::NotEsp`] for
/// the non-ESP marker (four zero bytes: IKE), [`DropReason::Truncated`] for anything shorter
/// than an SPI.
pub fn classify_udp_payload(payload: &[u8]) -> Result<(), DropReason> {
    match payload {
        [0xff] => Err(DropReason::Keepalive),
        [0, 0, 0, 0, ..] => Err(DropReason::NotEsp),
        p if p.len() < 4 => Err(DropReason::Truncated),
        _ => Ok(()),
    }
}

/// Adds `data` to a one's-complement sum and returns the folded, complemented checksum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    !fold(sum(data, u64::from(initial)))
}

pub(crate) fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The outer IP and UDP headers of an ESP-in-UDP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OuterHeader {
    src: SocketAddr,
    dst: SocketAddr,
    ttl: u8,
}

impl OuterHeader {
    /// Outer headers from `src` to `dst` with the given TTL / hop limit.
    ///
    /// Returns `None` if the two addresses are of different families.
    pub fn new(src: SocketAddr, dst: SocketAddr, ttl: u8) -> Option<Self> {
        (src.is_ipv4() == dst.is_ipv4()).then_some(Self { src, dst, ttl })
    }

    /// The same headers from another UDP source port (a gateway's worker sends one peer's
    /// packets from a port of its own, so that the receiver's RSS spreads them).
    #[must_use]
    pub const fn with_src_port(mut self, port: u16) -> Self {
        self.src.set_port(port);
        self
    }

    /// The UDP source port.
    pub const fn src_port(&self) -> u16 {
        self.src.port()
    }

    /// Length of the IP and UDP headers.
    pub const fn len(&self) -> usize {
        match self.src {
            SocketAddr::V4(_) => IPV4_HEADER_LEN + UDP_HEADER_LEN,
            SocketAddr::V6(_) => IPV6_HEADER_LEN + UDP_HEADER_LEN,
        }
    }

    /// Always false: there is always a header.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Writes the headers into the first [`Self::len`] bytes of `packet`, whose remainder is the
    /// UDP payload (the ESP packet). IPv4 gets DF and a header checksum and, as RFC 3948 §2.1
    /// recommends, a zero UDP checksum; IPv6 gets the mandatory UDP checksum.
    ///
    /// Returns `None` if the packet is shorter than the headers or too long for IP.
    pub fn write(&self, packet: &mut [u8]) -> Option<()> {
        let hlen = self.len();
        let udp_len = u16::try_from(packet.len().checked_sub(hlen)? + UDP_HEADER_LEN).ok()?;
        let ip_hlen = hlen - UDP_HEADER_LEN;
        let (ip, rest) = packet.split_at_mut(ip_hlen);
        let (udp, payload) = rest.split_at_mut(UDP_HEADER_LEN);
        udp[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = u16::try_from(usize::from(udp_len) + IPV4_HEADER_LEN).ok()?;
                ip[0] = 0x45;
                ip[1] = 0;
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[4..6].copy_from_slice(&[0, 0]);
                ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
                ip[8] = self.ttl;
                ip[9] = PROTO_UDP;
                ip[10..12].copy_from_slice(&[0, 0]);
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = checksum(ip, 0);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
                ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
                ip[6] = PROTO_UDP;
                ip[7] = self.ttl;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                let mut acc = sum(&ip[8..40], 0);
                acc += u64::from(udp_len) + u64::from(PROTO_UDP);
                acc = sum(udp, acc);
                acc = sum(payload, acc);
                let c = match !fold(acc) {
                    0 => 0xffff,
                    c => c,
                };
                udp[6..8].copy_from_slice(&c.to_be_bytes());
            }
            _ => return None,
        }
        Some(())
    }
}
