//! AF_XDP sockets on a shared UMEM (through `xdpilone`, EUPL-1.2).
//!
//! A [`QueuePair`] owns one UMEM (an anonymous mapping cut into 4 KiB frames) and two AF_XDP
//! sockets bound to the same queue index of two interfaces (the inner and the outer one) sharing
//! that UMEM: a frame received on one interface is transmitted on the other without a copy in
//! userspace. Every frame is in exactly one place at a time: the free list, a fill ring, the
//! kernel, an RX descriptor being processed, a TX ring, or a completion ring; the worker that owns
//! the pair moves frames between them and is the only thread that touches the pair.

use crate::error::{Error, Result};
use crate::sys::Mapping;
use core::num::NonZeroU32;
use core::ptr::NonNull;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

/// Size of a UMEM frame.
pub const FRAME_SIZE: u32 = 4096;
/// Headroom the kernel leaves in front of received data (room for the outer headers).
pub const HEADROOM: u32 = 256;
/// Entries of every ring.
pub const RING_SIZE: u32 = 2048;

/// One interface's side of a [`QueuePair`].
pub struct Port {
    device: DeviceQueue,
    user: User,
    rx: RingRx,
    tx: RingTx,
    ifindex: u32,
}

impl Port {
    fn new(umem: &Umem, iface: &str, queue: u32, first: bool) -> Result<Self> {
        let name =
            CString::new(iface).map_err(|_| Error::msg(format!("interface name {iface:?}")))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name)
            .map_err(|e| Error::errno(format!("interface {iface}"), e.get_raw()))?;
        info.set_queue(queue);
        let ctx = |what: &str, e: xdpilone::Errno| {
            Error::errno(
                format!("AF_XDP on {iface} queue {queue}: {what}"),
                e.get_raw(),
            )
        };
        let sock = if first {
            Socket::with_shared(&info, umem).map_err(|e| ctx("socket", e))?
        } else {
            Socket::new(&info).map_err(|e| ctx("socket", e))?
        };
        let device = umem
            .fq_cq(&sock)
            .map_err(|e| ctx("fill/completion rings", e))?;
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(RING_SIZE),
                    tx_size: NonZeroU32::new(RING_SIZE),
                    // A socket sharing another's UMEM may not pass flags: it inherits the
                    // first socket's (need-wakeup, copy or zero-copy).
                    bind_flags: if first {
                        SocketConfig::XDP_BIND_NEED_WAKEUP
                    } else {
                        0
                    },
                },
            )
            .map_err(|e| ctx("rx/tx rings", e))?;
        let rx = user.map_rx().map_err(|e| ctx("mapping the rx ring", e))?;
        let tx = user.map_tx().map_err(|e| ctx("mapping the tx ring", e))?;
        umem.bind(&user).map_err(|e| ctx("bind", e))?;
        Ok(Self {
            device,
            user,
            rx,
            tx,
            ifindex: info.ifindex(),
        })
    }

    /// The socket's file descriptor (for the XSKMAP).
    pub fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Moves frames from `free` into the fill ring.
    pub fn fill(&mut self, free: &mut Vec<u64>) {
        let want = (free.len() as u32).min(RING_SIZE);
        if want == 0 {
            return;
        }
        {
            let mut writer = self.device.fill(want);
            let n = writer.capacity() as usize;
            let start = free.len() - n.min(free.len());
            let inserted = writer.insert(free[start..].iter().copied());
            writer.commit();
            free.truncate(free.len() - inserted as usize);
        }
        if self.device.needs_wakeup() {
            self.device.wake();
        }
    }

    /// Moves completed transmissions back to `free` (as frame base addresses).
    pub fn reap(&mut self, free: &mut Vec<u64>) {
        let mut reader = self.device.complete(RING_SIZE);
        while let Some(addr) = reader.read() {
            free.push(addr - addr % u64::from(FRAME_SIZE));
        }
        reader.release();
    }

    /// Takes up to `out.len()` received descriptors; returns how many.
    pub fn receive(&mut self, out: &mut [XdpDesc]) -> usize {
        let mut reader = self.rx.receive(out.len() as u32);
        let mut n = 0;
        while n < out.len() {
            let Some(desc) = reader.read() else { break };
            out[n] = desc;
            n += 1;
        }
        reader.release();
        n
    }

    /// Queues descriptors for transmission; returns how many fit (the rest stay the caller's).
    pub fn transmit(&mut self, descs: &[XdpDesc]) -> usize {
        if descs.is_empty() {
            return 0;
        }
        let mut writer = self.tx.transmit(descs.len() as u32);
        let n = writer.insert(descs.iter().copied());
        writer.commit();
        n as usize
    }

    /// Kicks the kernel to send what is queued, if it asked for that. In copy mode one kick
    /// sends at most 32 frames (the kernel's TX batch), so this kicks again while each kick
    /// makes progress: otherwise a worker that queues a batch of 64 per loop would fill the TX
    /// ring and drop. In zero-copy mode the driver sends asynchronously: one kick.
    pub fn flush(&mut self) {
        let mut pending = self.tx.pending();
        while pending > 0 && self.tx.needs_wakeup() {
            self.tx.wake();
            let now = self.tx.pending();
            if now >= pending {
                break;
            }
            pending = now;
        }
    }
}

impl AsFd for Port {
    /// The socket (for `poll`).
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor of the socket `self.user` owns (xdpilone closes it when its
        // last handle drops, after `self`), so it stays open while `self` is borrowed.
        unsafe { BorrowedFd::borrow_raw(self.user.as_raw_fd()) }
    }
}

/// Two AF_XDP sockets (inner and outer interface, same queue index) on one UMEM.
pub struct QueuePair {
    // Field order: the sockets go before the UMEM, the UMEM before its memory.
    /// The inner (plaintext) side.
    pub inner: Port,
    /// The outer (ESP) side.
    pub outer: Port,
    umem: Umem,
    area: Mapping,
    frames: u32,
}

impl QueuePair {
    /// Creates the UMEM with `frames` frames and binds both sockets to `queue`.
    ///
    /// # Errors
    /// The interface and the step that failed (interface unknown, queue missing, AF_XDP
    /// unsupported, memory), with the errno.
    pub fn new(inner: &str, outer: &str, queue: u32, frames: u32) -> Result<Self> {
        let len = frames as usize * FRAME_SIZE as usize;
        let area = Mapping::anonymous(len)
            .map_err(|e| Error::new(format!("mapping {len} bytes of UMEM"), e))?;
        let config = UmemConfig {
            fill_size: RING_SIZE,
            complete_size: RING_SIZE,
            frame_size: FRAME_SIZE,
            headroom: HEADROOM,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr(), area.len());
        // SAFETY: `area` is a page-aligned mapping of `area.len()` bytes that outlives the UMEM
        // (it is dropped after it, field order above).
        let umem = unsafe { Umem::new(config, slice) }
            .map_err(|e| Error::errno("registering the UMEM", e.get_raw()))?;
        let inner = Port::new(&umem, inner, queue, true)?;
        let outer = Port::new(&umem, outer, queue, false)?;
        Ok(Self {
            inner,
            outer,
            umem,
            area,
            frames,
        })
    }

    /// Every frame's base address, for the initial free list.
    pub fn all_frames(&self) -> Vec<u64> {
        let _ = &self.umem;
        (0..u64::from(self.frames))
            .map(|i| i * u64::from(FRAME_SIZE))
            .collect()
    }

    /// The whole frame holding UMEM address `addr`.
    ///
    /// # Panics
    /// If `addr` lies outside the UMEM (the kernel only hands out addresses inside it).
    pub fn frame(&mut self, addr: u64) -> (u64, &mut [u8]) {
        // SAFETY: `&mut self` makes this the only live reference into the UMEM from this pair.
        unsafe { self.frame_unchecked(addr) }
    }

    /// The whole frame holding UMEM address `addr`, without borrowing the pair mutably, so a
    /// batch can hold several distinct frames at once.
    ///
    /// # Safety
    /// The frame must be one the caller owns (received from an RX or completion ring and not
    /// yet handed back to a fill or TX ring), and no other reference to it may exist while the
    /// returned one lives.
    ///
    /// # Panics
    /// If `addr` lies outside the UMEM.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn frame_unchecked(&self, addr: u64) -> (u64, &mut [u8]) {
        let base = addr - addr % u64::from(FRAME_SIZE);
        assert!(
            base + u64::from(FRAME_SIZE) <= self.area.len() as u64,
            "UMEM address {addr:#x} out of bounds"
        );
        // SAFETY: base + FRAME_SIZE is within the mapping (checked above), which lives as long
        // as `self`; the caller guarantees that no other reference to this frame exists.
        let frame = unsafe {
            core::slice::from_raw_parts_mut(
                self.area.ptr().as_ptr().add(base as usize),
                FRAME_SIZE as usize,
            )
        };
        (base, frame)
    }
}
