//! Attaching an XDP program so that it outlives the process (fail closed).
//!
//! aya attaches through a bpf_link, which the kernel removes when the last file descriptor to it
//! closes: a killed daemon's programs vanish and, with forwarding on, the kernel forwards the
//! protected traffic in the clear. Attached through rtnetlink instead (`RTM_SETLINK` with
//! `IFLA_XDP`), the program stays on the interface until it is replaced or removed. Its AF_XDP
//! sockets go with the process (the kernel drops them from the socket map), so the program
//! finds no socket and drops protected-prefix packets: the interface fails closed until the next
//! `pktcrypt up` replaces the program (atomically: no gap) or `pktcrypt down` removes it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `XDP_FLAGS_SKB_MODE`: generic XDP.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native (driver) XDP.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const NLA_F_NESTED: u16 = 1 << 15;
const NLMSG_HDR: usize = 16;
const IFINFO: usize = 16;

/// The interface index of `iface`.
///
/// # Errors
/// No such interface.
pub fn ifindex(iface: &str) -> io::Result<i32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(index).map_err(|_| io::Error::other("interface index out of range"))
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// The `RTM_SETLINK` request that sets (`fd` ≥ 0) or removes (`fd` = -1) the XDP program of
/// interface `index` in the mode `flags`.
fn request(index: i32, fd: RawFd, flags: u32, seq: u32) -> Vec<u8> {
    let mut nested = Vec::with_capacity(16);
    attr(&mut nested, IFLA_XDP_FD, &fd.to_ne_bytes());
    attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    let mut msg = vec![0u8; NLMSG_HDR + IFINFO];
    // ifinfomsg: family (AF_UNSPEC), pad, type, index, flags, change.
    msg[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&index.to_ne_bytes());
    attr(&mut msg, libc::IFLA_XDP | NLA_F_NESTED, &nested);
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&libc::RTM_SETLINK.to_ne_bytes());
    let nl_flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg[6..8].copy_from_slice(&nl_flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    msg
}

/// Sends one rtnetlink request and waits for its acknowledgement.
fn transact(msg: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `msg` is valid for `msg.len()` bytes; the kernel is the destination (port 0).
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = core::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const addr).cast(),
            core::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 4096];
    // SAFETY: `reply` is writable for its whole length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n < NLMSG_HDR + 4 {
        return Err(io::Error::other("short rtnetlink reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other(format!(
            "unexpected rtnetlink reply type {kind}"
        )));
    }
    let code = i32::from_ne_bytes([
        reply[NLMSG_HDR],
        reply[NLMSG_HDR + 1],
        reply[NLMSG_HDR + 2],
        reply[NLMSG_HDR + 3],
    ]);
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-code))
    }
}

/// Attaches program `fd` to `iface` in mode `flags` (replacing a program attached in the same
/// mode, atomically). It stays attached when this process exits.
///
/// # Errors
/// No such interface, or the kernel refused (e.g. no native XDP in the driver).
pub fn attach(iface: &str, fd: RawFd, flags: u32) -> io::Result<()> {
    transact(&request(ifindex(iface)?, fd, flags, 1))
}

/// Removes the XDP program of `iface` in mode `flags`.
///
/// # Errors
/// No such interface, or the kernel refused.
pub fn detach(iface: &str, flags: u32) -> io::Result<()> {
    transact(&request(ifindex(iface)?, -1, flags, 2))
}

/// Removes the XDP program of `iface` in both modes (`pktcrypt down`). Whether one was found
/// is not reported: removing nothing succeeds.
///
/// # Errors
/// No such interface.
pub fn detach_all(iface: &str) -> io::Result<()> {
    ifindex(iface)?;
    let _ = detach(iface, XDP_FLAGS_DRV_MODE);
    let _ = detach(iface, XDP_FLAGS_SKB_MODE);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(m: &[u8], at: usize) -> [u8; 4] {
        m[at..at + 4].try_into().expect("4 bytes")
    }

    #[test]
    fn request_layout() {
        let m = request(7, 9, XDP_FLAGS_DRV_MODE, 1);
        // nlmsghdr + ifinfomsg + IFLA_XDP { FD, FLAGS }.
        assert_eq!(m.len(), 16 + 16 + 4 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(word(&m, 0)) as usize, m.len());
        assert_eq!(i32::from_ne_bytes(word(&m, 20)), 7);
        assert_eq!(u16::from_ne_bytes([m[34], m[35]]), 43 | NLA_F_NESTED);
        assert_eq!(i32::from_ne_bytes(word(&m, 40)), 9);
        assert_eq!(u32::from_ne_bytes(word(&m, 48)), XDP_FLAGS_DRV_MODE);
    }
}
