//! ICMP "fragmentation needed" (RFC 792, RFC 1191) and ICMPv6 "packet too big" (RFC 4443 §3.2)
//! answers for inner packets that do not fit the tunnel.
//!
//! A gateway that cannot forward a packet because the encapsulated result would exceed the outer
//! MTU answers the sender with the largest inner packet size that fits (path MTU discovery), as
//! a router would. IPv4 packets without DF are not answered (pktcrypt does not fragment): the
//! caller drops and counts them.

use super::ip::checksum;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv6's minimum link MTU: a "packet too big" answer never exceeds it (RFC 4443 §2.4 (c)).
pub const IPV6_MIN_MTU: usize = 1280;

/// Whether an IPv4 packet carries "don't fragment". `false` for anything else.
pub fn ipv4_dont_fragment(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| b >> 4 == 4) && packet.get(6).is_some_and(|b| b & 0x40 != 0)
}

/// Writes the answer to `original` (an inner IPv4 or IPv6 packet, starting at its IP header)
/// into `out`: an IP packet from `from` to the original's source saying that at most `mtu`
/// bytes fit. Returns its length, or `None` if `original` is not a packet that gets an answer
/// (malformed, ICMP error itself, from an unspecified source), `from` is of the other family,
/// or `out` is too small.
pub fn too_big(original: &[u8], from: IpAddr, mtu: u16, out: &mut [u8]) -> Option<usize> {
    match (original.first()? >> 4, from) {
        (4, IpAddr::V4(from)) => too_big_v4(original, from, mtu, out),
        (6, IpAddr::V6(from)) => too_big_v6(original, from, mtu, out),
        _ => None,
    }
}

fn too_big_v4(original: &[u8], from: Ipv4Addr, mtu: u16, out: &mut [u8]) -> Option<usize> {
    let ihl = usize::from(original.first()? & 0x0f) * 4;
    if ihl < 20 || original.len() < ihl {
        return None;
    }
    // Never answer an ICMP error with an ICMP error (RFC 1812 §4.3.2.7).
    if original[9] == 1
        && original
            .get(ihl)
            .is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12))
    {
        return None;
    }
    let src: [u8; 4] = original[12..16].try_into().ok()?;
    if src == [0; 4] {
        return None;
    }
    let quoted = original.len().min(ihl + 8);
    let total = 20 + 8 + quoted;
    let out = out.get_mut(..total)?;
    out[0] = 0x45;
    out[1] = 0xc0;
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    out[8] = 64;
    out[9] = 1;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&src);
    let c = checksum(&out[..20], 0);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut out[20..];
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..6].copy_from_slice(&[0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..8 + quoted].copy_from_slice(&original[..quoted]);
    let c = checksum(icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

fn too_big_v6(original: &[u8], from: Ipv6Addr, mtu: u16, out: &mut [u8]) -> Option<usize> {
    if original.len() < 40 {
        return None;
    }
    // Never answer an ICMPv6 error (types below 128) with one (RFC 4443 §2.4 (e)).
    if original[6] == 58 && original.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let src: [u8; 16] = original[8..24].try_into().ok()?;
    if src == [0; 16] || src[0] == 0xff {
        return None;
    }
    let quoted = original.len().min(IPV6_MIN_MTU - 48);
    let payload = 8 + quoted;
    let total = 40 + payload;
    let out = out.get_mut(..total)?;
    out[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
    out[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&from.octets());
    out[24..40].copy_from_slice(&src);
    let (head, icmp) = out.split_at_mut(40);
    icmp[0] = 2;
    icmp[1] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    icmp[8..8 + quoted].copy_from_slice(&original[..quoted]);
    // Pseudo-header: addresses, upper-layer length, next header.
    let mut pseudo = [0u8; 40];
    pseudo[..32].copy_from_slice(&head[8..40]);
    pseudo[32..36].copy_from_slice(&(payload as u32).to_be_bytes());
    pseudo[39] = 58;
    let c = fold_pair(&pseudo, icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

/// The ICMPv6 checksum over the pseudo-header and the message.
fn fold_pair(pseudo: &[u8; 40], message: &[u8]) -> u16 {
    let first = !checksum(pseudo, 0);
    checksum(message, u32::from(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_packet(len: usize, df: bool) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 1, 0, 2]);
        p[16..20].copy_from_slice(&[10, 2, 0, 2]);
        p
    }

    #[test]
    fn v4_answer_is_well_formed() {
        let original = ipv4_packet(1500, true);
        assert!(ipv4_dont_fragment(&original));
        let mut out = [0u8; 128];
        let n = too_big(
            &original,
            IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            1400,
            &mut out,
        )
        .expect("answer");
        assert_eq!(n, 20 + 8 + 28);
        assert_eq!(checksum(&out[..20], 0), 0, "IP header checksum");
        assert_eq!(checksum(&out[20..n], 0), 0, "ICMP checksum");
        assert_eq!(&out[16..20], &[10, 1, 0, 2], "back to the sender");
        assert_eq!((out[20], out[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1400);
        assert_eq!(&out[28..48], &original[..20]);
    }

    #[test]
    fn v6_answer_is_well_formed() {
        let mut original = vec![0u8; 1500];
        original[0] = 0x60;
        original[6] = 17;
        original[8] = 0xfd;
        original[23] = 2;
        original[24] = 0xfd;
        original[39] = 3;
        let mut out = [0u8; 1400];
        let from: Ipv6Addr = "fd00::1".parse().expect("addr");
        let n = too_big(&original, IpAddr::V6(from), 1400, &mut out).expect("answer");
        assert_eq!(n, IPV6_MIN_MTU);
        assert_eq!(out[40], 2);
        assert_eq!(&out[24..40], &original[8..24]);
        let mut pseudo = [0u8; 40];
        pseudo[..32].copy_from_slice(&out[8..40]);
        pseudo[32..36].copy_from_slice(&((n - 40) as u32).to_be_bytes());
        pseudo[39] = 58;
        assert_eq!(fold_pair(&pseudo, &out[40..n]), 0, "ICMPv6 checksum");
    }

    #[test]
    fn errors_are_not_answered() {
        let mut original = ipv4_packet(1500, true);
        original[9] = 1;
        original[20] = 3;
        let mut out = [0u8; 128];
        assert!(too_big(&original, IpAddr::V4(Ipv4Addr::LOCALHOST), 1400, &mut out).is_none());
        assert!(too_big(&[0x45], IpAddr::V4(Ipv4Addr::LOCALHOST), 1400, &mut out).is_none());
        assert!(!ipv4_dont_fragment(&ipv4_packet(100, false)));
    }
}
