//! The system calls the I/O layer makes itself, in one place, through rustix: the UMEM's
//! anonymous mapping, the thread's CPU clock, the raw IP sockets that hand opened packets to
//! the kernel, `poll` on the AF_XDP sockets, and interface indices. What goes through a crate
//! of its own (bpf and maps through aya, AF_XDP rings through xdpilone, rtnetlink through
//! `netlink-sys`) is not here.
//!
//! Everything returns [`std::io::Error`] (the errno kept); callers add what they were doing
//! ([`crate::Error`]).

use core::net::{IpAddr, SocketAddr};
use core::ptr::NonNull;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType, ipproto, sendto};
use rustix::time::{ClockId, Timespec, clock_gettime};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// An anonymous, private, populated, read-write mapping; unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes (page-aligned, zeroed, populated up front: the data path takes no
    /// page faults).
    pub(crate) fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping with no address hint replaces nothing; no
        // reference into it exists before this function returns it.
        let ptr = unsafe {
            mmap_anonymous(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::POPULATE,
            )
        }?;
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { ptr, len })
    }

    /// The first byte.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `anonymous`, unmapped once, here; whoever lends out
        // references into it holds them no longer than the mapping (the UMEM in `xsk`: its
        // sockets and frame borrows end before it is dropped).
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// CPU time of the calling thread, in nanoseconds.
pub(crate) fn thread_cpu_ns() -> u64 {
    let ts = clock_gettime(ClockId::ThreadCPUTime);
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// `SOL_XDP` / `XDP_MAX_TX_SKB_BUDGET` (include/uapi/linux/if_xdp.h, Linux 6.17): frames one
/// TX kick of a copy-mode AF_XDP socket may send. Not in the libc crate yet.
const SOL_XDP: i32 = 283;
const XDP_MAX_TX_SKB_BUDGET: i32 = 9;

/// Sets how many frames one TX kick of the AF_XDP socket `fd` (with its TX ring) may send in
/// copy mode; the kernel takes 32 up to half the TX ring.
pub(crate) fn set_xdp_tx_budget(fd: BorrowedFd<'_>, frames: u32) -> io::Result<()> {
    // SAFETY: `fd` is an open socket for the call's duration; the option value is a `u32` we
    // own, passed with its size, which the kernel only reads.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&raw const frames).cast(),
            core::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A raw IPv4 (`v6` false) or IPv6 socket sending complete IP packets (`IPPROTO_RAW`): the
/// kernel routes them and resolves the neighbour.
pub(crate) fn raw_ip_socket(v6: bool) -> io::Result<OwnedFd> {
    let family = if v6 {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    Ok(rustix::net::socket_with(
        family,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(ipproto::RAW),
    )?)
}

/// Sends `packet` (a complete IP packet) to `dst` on a raw socket without blocking; the
/// number of bytes sent.
pub(crate) fn send_ip(fd: BorrowedFd<'_>, packet: &[u8], dst: IpAddr) -> io::Result<usize> {
    Ok(sendto(
        fd,
        packet,
        SendFlags::DONTWAIT,
        &SocketAddr::new(dst, 0),
    )?)
}

/// Waits until one of `fds` is readable, at most `timeout_ms` milliseconds; how many are.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>; 2], timeout_ms: u32) -> io::Result<usize> {
    let mut polled = fds.map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN));
    let timeout = Timespec {
        tv_sec: i64::from(timeout_ms / 1000),
        tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
    };
    Ok(poll(&mut polled, Some(&timeout))?)
}

/// The index of interface `name` (`SIOCGIFINDEX`, what `if_nametoindex(3)` asks); `ENODEV`
/// for none.
pub(crate) fn interface_index(name: &str) -> io::Result<u32> {
    // Any socket answers the ioctl for its network namespace; a Unix one needs no protocol.
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok(rustix::net::netdevice::name_to_index(&socket, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_is_zeroed_and_writable() {
        let m = Mapping::anonymous(2 * 4096).expect("mapping");
        assert_eq!(m.len(), 8192);
        // SAFETY: the mapping is 8192 bytes long and nothing else refers to it.
        let bytes = unsafe { core::slice::from_raw_parts_mut(m.ptr().as_ptr(), m.len()) };
        assert!(bytes.iter().all(|b| *b == 0));
        bytes[8191] = 1;
        assert_eq!(bytes[8191], 1);
    }

    #[test]
    fn interface_indices_keep_the_errno() {
        assert!(interface_index("lo").expect("lo") > 0);
        let e = interface_index("no-such-if0").expect_err("no such interface");
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NODEV.raw_os_error())
        );
        assert!(interface_index("a-name-longer-than-ifnamsiz").is_err());
    }

    #[test]
    fn the_thread_clock_moves() {
        let a = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(core::hint::black_box(x) > 0);
        assert!(thread_cpu_ns() >= a);
    }
}
