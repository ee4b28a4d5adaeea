//! ESP transport mode in UDP (RFC 4303 §3.1.1, RFC 3948 §2 and §3.1.1), host to host.
//!
//! ```text
//!  before:  IP header (+ options, + IPv6 hop-by-hop / destination options) | transport payload
//!  after:   IP header (protocol 17, lengths and checksum fixed) | UDP (8) | SPI | Seq | IV (8)
//!           | AEAD(transport payload | padding | pad length | next header = protocol) | ICV (16)
//! ```
//!
//! The IP header stays in the clear and is not authenticated (ESP protects the payload only);
//! the ESP trailer's next header is the original protocol (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6,
//! ...). The UDP ports are the caller's ([`UdpPorts`], 4500 to 4500 by default as RFC 3948 §2.1
//! says: the ports IKE uses). The UDP checksum is zero over IPv4 (RFC 3948 §2.1) and computed
//! over IPv6.
//!
//! The transport checksum (TCP, UDP, ICMPv6) is sent as the application computed it, over the
//! original addresses. A receiver restores the IP header it received, whose addresses a NAT may
//! have changed, and then recomputes that checksum over them (RFC 3948 §3.1.2 allows it: the ICV
//! has authenticated the payload, and no NAT-OA is exchanged here); a UDP checksum of zero over
//! IPv4 (none) stays zero. ICMP over IPv4 has no pseudo-header and is left alone. The IP header
//! is not authenticated (a NAT must be able to rewrite it): what an opened packet's SA vouches for
//! is its payload and its peer, not its addresses; a receiver that cares checks them against the
//! peer.
//!
//! What is refused: IP fragments (transport mode applies to whole datagrams), IPv6 extension
//! headers other than hop-by-hop and destination options (ESP goes after those; a routing
//! header would change the UDP checksum's destination), more than four of them, and payloads
//! whose protocol means something else in an ESP trailer (4, 41: tunnel mode; 253: control
//! messages; 59: dummy packets) or is ESP or AH.
//!
//! On the wire a trailer's next header says which mode a packet is in: 4 and 41 are tunnel
//! mode, anything else transport mode. A transport-mode receiver
//! ([`crate::Engine::open_transport`], [`crate::control::Endpoint::handle_transport`]) returns
//! either, and says which ([`NextHeader::Transport`] or not).

use super::esp::{self, ESP_HEADER_LEN, NextHeader};
use super::ip::{
    IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_UDP, UDP_HEADER_LEN, checksum, classify_udp_payload,
    fold, sum,
};
use crate::{DropReason, SealError};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ops::Range;

/// Where a transport-mode packet's input starts in the caller's buffer: the plaintext IP
/// packet to seal sits at `buf[TRANSPORT_HEADROOM..]`, and an opened one is restored there
/// (the UDP and ESP headers: 8 + 16 bytes).
pub const TRANSPORT_HEADROOM: usize = UDP_HEADER_LEN + ESP_HEADER_LEN;

/// The most a transport-mode packet is longer than the IP packet it protects: UDP header, ESP
/// header, up to 3 padding bytes, pad length, next header and ICV (8 + 37 bytes). A buffer of
/// `len + TRANSPORT_OVERHEAD` bytes holding an IP packet of `len` bytes at
/// `buf[TRANSPORT_HEADROOM..]` always has room to seal it.
pub const TRANSPORT_OVERHEAD: usize = UDP_HEADER_LEN + esp::MAX_OVERHEAD;

/// The ESP-in-UDP port of RFC 3948.
const ESP_PORT: u16 = pktcrypt_common::DEFAULT_ESP_UDP_PORT;

/// IPv6 extension headers ESP is placed after: hop-by-hop (0) and destination options (60).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_DEST_OPTIONS: u8 = 60;
const IPV6_FRAGMENT: u8 = 44;
/// At most this many extension headers are walked (as in [`super::ip::parse_udp`]).
const MAX_IPV6_EXTENSIONS: usize = 4;

/// The UDP ports of the encapsulation header a transport-mode packet is sent with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpPorts {
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

impl UdpPorts {
    /// 4500 to 4500, as RFC 3948 §2.1 says (the ports of IKE's NAT traversal).
    pub const ESP_IN_UDP: UdpPorts = UdpPorts {
        src: ESP_PORT,
        dst: ESP_PORT,
    };
}

impl Default for UdpPorts {
    /// [`UdpPorts::ESP_IN_UDP`].
    fn default() -> Self {
        UdpPorts::ESP_IN_UDP
    }
}

/// Why an IP header does not parse for transport mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    Truncated,
    Malformed,
    Fragment,
    Unsupported,
}

impl From<Bad> for SealError {
    fn from(b: Bad) -> SealError {
        match b {
            Bad::Truncated | Bad::Malformed => SealError::BadInnerPacket,
            Bad::Fragment => SealError::Fragment,
            Bad::Unsupported => SealError::UnsupportedExtension,
        }
    }
}

impl From<Bad> for DropReason {
    fn from(b: Bad) -> DropReason {
        match b {
            Bad::Truncated => DropReason::Truncated,
            Bad::Malformed => DropReason::Malformed,
            Bad::Fragment => DropReason::Fragment,
            // Not UDP as far as this receiver walks the header chain.
            Bad::Unsupported => DropReason::NotEsp,
        }
    }
}

fn be16(b: &[u8], at: usize) -> Result<u16, Bad> {
    match (b.get(at), b.get(at + 1)) {
        (Some(h), Some(l)) => Ok(u16::from_be_bytes([*h, *l])),
        _ => Err(Bad::Truncated),
    }
}

/// An IP packet's header as transport mode sees it: what ESP goes after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IpLayout {
    v6: bool,
    /// The IP header with its options, or the IPv6 header and the extension headers ESP goes
    /// after.
    header_len: usize,
    /// The byte naming what follows the header (IPv4 protocol, or the last next-header field).
    proto_at: usize,
    /// What follows the header.
    protocol: u8,
    /// The packet's length by its header (bytes after it are the link's padding).
    end: usize,
}

impl IpLayout {
    /// Parses an IPv4 or IPv6 header; `verify` checks an IPv4 header checksum.
    fn parse(packet: &[u8], verify: bool) -> Result<IpLayout, Bad> {
        let first = *packet.first().ok_or(Bad::Truncated)?;
        match first >> 4 {
            4 => {
                let ihl = usize::from(first & 0x0f) * 4;
                if ihl < IPV4_HEADER_LEN {
                    return Err(Bad::Malformed);
                }
                if packet.len() < ihl {
                    return Err(Bad::Truncated);
                }
                if verify && checksum(&packet[..ihl], 0) != 0 {
                    return Err(Bad::Malformed);
                }
                let total = usize::from(be16(packet, 2)?);
                if total < ihl {
                    return Err(Bad::Malformed);
                }
                if total > packet.len() {
                    return Err(Bad::Truncated);
                }
                if be16(packet, 6)? & 0x3fff != 0 {
                    return Err(Bad::Fragment);
                }
                Ok(IpLayout {
                    v6: false,
                    header_len: ihl,
                    proto_at: 9,
                    protocol: packet[9],
                    end: total,
                })
            }
            6 => {
                if packet.len() < IPV6_HEADER_LEN {
                    return Err(Bad::Truncated);
                }
                let end = IPV6_HEADER_LEN + usize::from(be16(packet, 4)?);
                if end > packet.len() {
                    return Err(Bad::Truncated);
                }
                let mut proto_at = 6;
                let mut next = packet[proto_at];
                let mut at = IPV6_HEADER_LEN;
                let mut walked = 0;
                while matches!(next, IPV6_HOP_BY_HOP | IPV6_DEST_OPTIONS) {
                    // Hop-by-hop comes first or not at all (RFC 8200 §4.3).
                    if next == IPV6_HOP_BY_HOP && walked > 0 {
                        return Err(Bad::Malformed);
                    }
                    walked += 1;
                    if walked > MAX_IPV6_EXTENSIONS {
                        return Err(Bad::Unsupported);
                    }
                    if at + 2 > end {
                        return Err(Bad::Truncated);
                    }
                    proto_at = at;
                    next = packet[at];
                    at += (usize::from(packet[at + 1]) + 1) * 8;
                    if at > end {
                        return Err(Bad::Truncated);
                    }
                }
                match next {
                    IPV6_FRAGMENT => Err(Bad::Fragment),
                    // Routing, AH, ESP, mobility, HIP, shim6, the experimental ones.
                    43 | 50 | 51 | 135 | 139 | 140 | 253 | 254 => Err(Bad::Unsupported),
                    protocol => Ok(IpLayout {
                        v6: true,
                        header_len: at,
                        proto_at,
                        protocol,
                        end,
                    }),
                }
            }
            _ => Err(Bad::Malformed),
        }
    }

    /// Parses the header of a plaintext IP packet of exactly `packet.len()` bytes to seal.
    fn parse_plain(packet: &[u8]) -> Result<IpLayout, SealError> {
        let layout = IpLayout::parse(packet, false)?;
        if layout.end != packet.len() {
            return Err(SealError::BadInnerPacket);
        }
        match layout.protocol {
            50 | 51 => Err(SealError::UnsupportedProtocol),
            p if NextHeader::transport(p).is_none() => Err(SealError::UnsupportedProtocol),
            _ => Ok(layout),
        }
    }

    /// Parses a received transport-mode packet (IP | UDP | ESP): its layout, where the ESP
    /// packet lies in it, and the UDP source.
    pub(crate) fn parse_received(
        packet: &[u8],
    ) -> Result<(IpLayout, Range<usize>, SocketAddr), DropReason> {
        let layout = IpLayout::parse(packet, true)?;
        if layout.protocol != PROTO_UDP {
            return Err(DropReason::NotEsp);
        }
        let udp = &packet[layout.header_len..layout.end];
        if udp.len() < UDP_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let udp_len = usize::from(be16(udp, 4).map_err(DropReason::from)?);
        if udp_len != udp.len() {
            return Err(DropReason::Malformed);
        }
        let esp = layout.header_len + UDP_HEADER_LEN..layout.end;
        classify_udp_payload(&packet[esp.clone()])?;
        let port = be16(udp, 0).map_err(DropReason::from)?;
        let src = if layout.v6 {
            let mut a = [0; 16];
            a.copy_from_slice(&packet[8..24]);
            IpAddr::from(Ipv6Addr::from(a))
        } else {
            let mut a = [0; 4];
            a.copy_from_slice(&packet[12..16]);
            IpAddr::from(Ipv4Addr::from(a))
        };
        Ok((layout, esp, SocketAddr::new(src, port)))
    }

    /// Rewrites the header at `packet[..header_len]` for a packet of `packet.len()` bytes whose
    /// header's protocol is now `protocol`: the protocol byte, the length, the IPv4 checksum.
    fn rewrite(&self, packet: &mut [u8], protocol: u8) {
        packet[self.proto_at] = protocol;
        // Lengths fit: checked before sealing, and smaller than the received packet's on opening.
        if self.v6 {
            let payload = (packet.len() - IPV6_HEADER_LEN) as u16;
            packet[4..6].copy_from_slice(&payload.to_be_bytes());
        } else {
            let total = packet.len() as u16;
            packet[2..4].copy_from_slice(&total.to_be_bytes());
            packet[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&packet[..self.header_len], 0);
            packet[10..12].copy_from_slice(&c.to_be_bytes());
        }
    }

    /// The one's-complement sum of the pseudo-header of an upper-layer packet of `len` bytes
    /// and protocol `protocol` under the header at `packet[..header_len]`.
    fn pseudo_header(&self, packet: &[u8], protocol: u8, len: usize) -> u64 {
        let addrs = if self.v6 {
            &packet[8..40]
        } else {
            &packet[12..20]
        };
        sum(addrs, 0) + u64::from(protocol) + len as u64
    }

    /// Writes the UDP header at `packet[header_len..][..8]` (before an ESP packet that fills
    /// the rest) and rewrites the IP header for it.
    fn encapsulate(&self, packet: &mut [u8], ports: UdpPorts) {
        let h = self.header_len;
        let udp_len = packet.len() - h;
        self.rewrite(packet, PROTO_UDP);
        let udp = &mut packet[h..h + UDP_HEADER_LEN];
        udp[0..2].copy_from_slice(&ports.src.to_be_bytes());
        udp[2..4].copy_from_slice(&ports.dst.to_be_bytes());
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
        if self.v6 {
            // IPv6 has no zero UDP checksum (RFC 8200 §8.1).
            let acc = sum(&packet[h..], self.pseudo_header(packet, PROTO_UDP, udp_len));
            let c = match !fold(acc) {
                0 => 0xffff,
                c => c,
            };
            packet[h + 6..h + 8].copy_from_slice(&c.to_be_bytes());
        }
    }

    /// Recomputes the TCP, UDP or ICMPv6 checksum of the transport payload after the header
    /// at `packet[..header_len]` over that header's addresses (RFC 3948 §3.1.2). A payload too
    /// short to hold the checksum, a UDP checksum of zero over IPv4 and other protocols are
    /// left alone.
    fn fix_transport_checksum(&self, packet: &mut [u8], protocol: u8) {
        let at = match (protocol, self.v6) {
            (6, _) => 16,
            (17, _) => 6,
            (58, true) => 2,
            _ => return,
        };
        let h = self.header_len;
        let len = packet.len() - h;
        if len < at + 2 {
            return;
        }
        let field = h + at..h + at + 2;
        if protocol == 17 && !self.v6 && packet[field.clone()] == [0, 0] {
            return;
        }
        packet[field.clone()].copy_from_slice(&[0, 0]);
        let acc = sum(&packet[h..], self.pseudo_header(packet, protocol, len));
        let c = match !fold(acc) {
            0 if protocol == 17 => 0xffff,
            c => c,
        };
        packet[field].copy_from_slice(&c.to_be_bytes());
    }

    /// After a transport-mode packet was opened in place (`buf` as received, the ESP packet at
    /// `buf[esp_start..]`, its payload of `len` bytes under `next`): restores the IP packet and
    /// returns where it lies. A tunnel-mode payload (next header 4 or 41) is the inner packet
    /// itself and stays where it is.
    pub(crate) fn restore(
        &self,
        buf: &mut [u8],
        esp_start: usize,
        len: usize,
        next: NextHeader,
    ) -> Range<usize> {
        let payload = esp_start + ESP_HEADER_LEN;
        let NextHeader::Transport(protocol) = next else {
            return payload..payload + len;
        };
        let h = self.header_len;
        debug_assert_eq!(payload, TRANSPORT_HEADROOM + h);
        // The header moves up to the payload, which stays where it was decrypted.
        buf.copy_within(..h, TRANSPORT_HEADROOM);
        let packet = &mut buf[TRANSPORT_HEADROOM..payload + len];
        self.rewrite(packet, protocol);
        self.fix_transport_checksum(packet, protocol);
        TRANSPORT_HEADROOM..payload + len
    }

    /// Seals the plaintext IP packet at `buf[TRANSPORT_HEADROOM..][..len]` in transport mode:
    /// `seal_esp` seals the transport payload in place (its buffer starts at the ESP header)
    /// under the given next header and returns the ESP packet's length. Returns the length of
    /// the transport-mode packet at `buf[..n]`. On error the plaintext packet is still at
    /// `buf[TRANSPORT_HEADROOM..]` (no sequence number is spent on a packet refused here).
    pub(crate) fn seal(
        buf: &mut [u8],
        len: usize,
        ports: UdpPorts,
        seal_esp: impl FnOnce(&mut [u8], usize, NextHeader) -> Result<usize, SealError>,
    ) -> Result<usize, SealError> {
        let plain = buf
            .get(TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + len)
            .ok_or(SealError::BufferTooSmall)?;
        let layout = IpLayout::parse_plain(plain)?;
        let h = layout.header_len;
        let payload_len = len - h;
        let total = h + UDP_HEADER_LEN + esp::esp_len(payload_len);
        let ip_limit = if layout.v6 {
            IPV6_HEADER_LEN + usize::from(u16::MAX)
        } else {
            usize::from(u16::MAX)
        };
        if total > ip_limit {
            return Err(SealError::PacketTooLarge);
        }
        if total > buf.len() {
            return Err(SealError::BufferTooSmall);
        }
        // The header moves down; the payload is already where ESP wants it.
        buf.copy_within(TRANSPORT_HEADROOM..TRANSPORT_HEADROOM + h, 0);
        let next = NextHeader::Transport(layout.protocol);
        let n = match seal_esp(&mut buf[h + UDP_HEADER_LEN..], payload_len, next) {
            Ok(n) => n,
            Err(e) => {
                buf.copy_within(..h, TRANSPORT_HEADROOM);
                return Err(e);
            }
        };
        let packet = &mut buf[..h + UDP_HEADER_LEN + n];
        layout.encapsulate(packet, ports);
        Ok(packet.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(protocol: u8, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend([192, 0, 2, 1, 198, 51, 100, 7]);
        let c = checksum(&p, 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend(payload);
        p
    }

    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend((rest.len() as u16).to_be_bytes());
        p.extend([next, 64]);
        p.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0; 11]).chain(&[1]));
        p.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0; 11]).chain(&[2]));
        p.extend(rest);
        p
    }

    #[test]
    fn layouts() {
        let l = IpLayout::parse_plain(&ipv4(6, &[0; 20])).expect("ipv4");
        assert_eq!((l.header_len, l.proto_at, l.protocol), (20, 9, 6));
        let l = IpLayout::parse_plain(&ipv6(17, &[0; 8])).expect("ipv6");
        assert_eq!((l.header_len, l.proto_at, l.protocol), (40, 6, 17));
        // Hop-by-hop then destination options: ESP after both.
        let mut rest = vec![60, 0, 1, 4, 0, 0, 0, 0, 58, 0, 1, 4, 0, 0, 0, 0];
        rest.extend([128, 0, 0, 0]);
        let l = IpLayout::parse_plain(&ipv6(0, &rest)).expect("extensions");
        assert_eq!((l.header_len, l.proto_at, l.protocol), (56, 48, 58));
    }

    #[test]
    fn refusals() {
        let mut frag = ipv4(6, &[0; 20]);
        frag[6] = 0x20; // MF
        assert_eq!(IpLayout::parse_plain(&frag), Err(SealError::Fragment));
        assert_eq!(
            IpLayout::parse_plain(&ipv4(4, &ipv4(6, &[]))),
            Err(SealError::UnsupportedProtocol)
        );
        for p in [41, 50, 51, 59, 253] {
            assert_eq!(
                IpLayout::parse_plain(&ipv4(p, &[0; 8])),
                Err(SealError::UnsupportedProtocol)
            );
        }
        let routing = ipv6(43, &[6, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            IpLayout::parse_plain(&routing),
            Err(SealError::UnsupportedExtension)
        );
        let fragment = ipv6(44, &[6, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(IpLayout::parse_plain(&fragment), Err(SealError::Fragment));
        let many = ipv6(60, &[60, 0, 0, 0, 0, 0, 0, 0].repeat(5));
        assert_eq!(
            IpLayout::parse_plain(&many),
            Err(SealError::UnsupportedExtension)
        );
        let late_hbh = ipv6(60, &[0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            IpLayout::parse_plain(&late_hbh),
            Err(SealError::BadInnerPacket)
        );
        let mut short = ipv4(6, &[0; 20]);
        short.pop();
        assert_eq!(
            IpLayout::parse_plain(&short),
            Err(SealError::BadInnerPacket)
        );
        assert_eq!(IpLayout::parse_plain(&[]), Err(SealError::BadInnerPacket));
        assert_eq!(
            IpLayout::parse_plain(&[0x50; 40]),
            Err(SealError::BadInnerPacket)
        );
    }

    #[test]
    fn never_panics_on_prefixes() {
        let mut rest = vec![60, 0, 1, 4, 0, 0, 0, 0];
        rest.extend([17, 0, 0, 0, 0, 0, 0, 0]);
        for p in [ipv4(17, &[0; 30]), ipv6(0, &rest)] {
            for n in 0..p.len() {
                let _ = IpLayout::parse(&p[..n], true);
                let _ = IpLayout::parse_received(&p[..n]);
                let _ = IpLayout::parse_plain(&p[..n]);
            }
        }
    }
}
