//! Attaching an XDP program so that it outlives the process (fail closed).
//!
//! aya attaches through a bpf_link, which the kernel removes when the last file descriptor to it
//! closes: a killed daemon's programs vanish and, with forwarding on, the kernel forwards the
//! protected traffic in the clear. Attached through rtnetlink instead (`RTM_SETLINK` with
//! `IFLA_XDP`), the program stays on the interface until it is replaced or removed. Its AF_XDP
//! sockets go with the process (the kernel drops them from the socket map), so the program
//! finds no socket and drops protected-prefix packets: the interface fails closed until the next
//! `pktcrypt up` replaces the program (atomically: no gap) or `pktcrypt down` removes it.

use crate::error::Result;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use std::os::fd::RawFd;

/// `XDP_FLAGS_SKB_MODE`: generic XDP.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native (driver) XDP.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The interface index of `iface` (its error the system call's alone).
fn ifindex(iface: &str) -> Result<u32> {
    Ok(crate::sys::interface_index(iface)?)
}

/// The `RTM_SETLINK` message that sets (`fd` ≥ 0) or removes (`fd` = -1) the XDP program of
/// interface `index` in the mode `flags`.
fn request(index: u32, fd: RawFd, flags: u32) -> LinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(fd),
        LinkXdp::Flags(flags),
    ]));
    link
}

/// Sends one `RTM_SETLINK` request and waits for its acknowledgement.
fn transact(link: LinkMessage) -> Result<()> {
    crate::net::Rtnl::open()?.set_link(link)
}

/// Attaches program `fd` to `iface` in mode `flags` (replacing a program attached in the same
/// mode, atomically). It stays attached when this process exits.
///
/// # Errors
/// No such interface, or the kernel refused (e.g. no native XDP in the driver): the errno
/// kept.
pub fn attach(iface: &str, fd: RawFd, flags: u32) -> Result<()> {
    transact(request(ifindex(iface)?, fd, flags))
}

/// Removes the XDP program of `iface` in mode `flags`.
///
/// # Errors
/// No such interface, or the kernel refused.
pub fn detach(iface: &str, flags: u32) -> Result<()> {
    transact(request(ifindex(iface)?, -1, flags))
}

/// Removes the XDP program of `iface` in both modes (`pktcrypt down`). Whether one was found
/// is not reported: removing nothing succeeds.
///
/// # Errors
/// No such interface.
pub fn detach_all(iface: &str) -> Result<()> {
    ifindex(iface)?;
    let _ = detach(iface, XDP_FLAGS_DRV_MODE);
    let _ = detach(iface, XDP_FLAGS_SKB_MODE);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn request_layout() {
        let m = request(7, 9, XDP_FLAGS_DRV_MODE);
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        let word = |at: usize| -> [u8; 4] { b[at..at + 4].try_into().expect("4 bytes") };
        // ifinfomsg (family AF_UNSPEC, index 7, no flags or change mask) + IFLA_XDP
        // { IFLA_XDP_FD, IFLA_XDP_FLAGS }.
        assert_eq!(b.len(), 16 + 4 + 8 + 8);
        assert_eq!(b[0], 0);
        assert_eq!(i32::from_ne_bytes(word(4)), 7);
        assert_eq!(u32::from_ne_bytes(word(8)), 0);
        assert_eq!(u32::from_ne_bytes(word(12)), 0);
        assert_eq!(u16::from_ne_bytes([b[16], b[17]]), 20);
        assert_eq!(u16::from_ne_bytes([b[18], b[19]]) & 0x3fff, libc::IFLA_XDP);
        assert_eq!(u16::from_ne_bytes([b[22], b[23]]), 1); // IFLA_XDP_FD
        assert_eq!(i32::from_ne_bytes(word(24)), 9);
        assert_eq!(u16::from_ne_bytes([b[30], b[31]]), 3); // IFLA_XDP_FLAGS
        assert_eq!(u32::from_ne_bytes(word(32)), XDP_FLAGS_DRV_MODE);
    }
}
