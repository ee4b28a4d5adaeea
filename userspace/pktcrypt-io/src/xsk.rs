//! AF_XDP sockets on a shared UMEM (through `xdpilone`, EUPL-1.2), and the frames they move.
//!
//! A [`QueuePair`] owns one UMEM (an anonymous mapping cut into 4 KiB frames) and two AF_XDP
//! sockets bound to the same queue index of two interfaces (the inner and the outer one) sharing
//! that UMEM: a frame received on one interface is transmitted on the other without a copy in
//! userspace.
//!
//! Every frame is in exactly one place at a time, and the types say where: a [`Frame`] is the
//! ownership of one whole frame (on the worker's free list, or on its way into a fill ring), a
//! [`Desc`] a frame with the bytes of it the kernel received or is to send (out of an RX ring,
//! into a TX ring). Neither is `Copy` or `Clone`. [`QueuePair::take_frames`] makes one `Frame`
//! per frame, once; after that the rings alone move them: [`Port::fill`] and
//! [`Port::transmit`] consume them (the frame is the kernel's), [`Port::receive`] and
//! [`Port::reap`] make them again from the addresses the kernel gives back, once per frame it
//! was given. So no frame is ever handed out twice, and [`QueuePair::bytes`] is safe: it lends
//! a frame's memory for as long as the caller lends it the frame's `&mut Frame`. Each `Frame`
//! names its UMEM: one of another queue pair's is refused (a panic) by `bytes` and by the rings
//! that take frames, which would otherwise give it back as one of theirs.
//!
//! This is the only module that touches the UMEM's memory (`unsafe`, each block with its
//! reason); the worker that owns the pair is the only thread that touches the pair.

use crate::error::{Error, Result};
use crate::sys::Mapping;
use core::num::NonZeroU32;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
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
/// Frames one TX kick may send in copy mode (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17 and later;
/// the kernel's own is 32): a worker queues at most a batch per side and pass, plus ICMP
/// answers, so one kick sends them all.
pub const TX_BUDGET: u32 = 128;

/// Identifies a UMEM for the lifetime of the process (never reused), so that a [`Frame`] is
/// only ever used with the UMEM it belongs to.
static NEXT_UMEM: AtomicU64 = AtomicU64::new(1);

/// The ownership of one UMEM frame: whoever holds it may use the frame's memory
/// ([`QueuePair::bytes`]) or give the frame to the kernel (a fill or TX ring). Not `Copy` or
/// `Clone`: at most one exists per frame (see the module documentation). Dropping it leaks the
/// frame (safe; the worker never does).
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    umem: u64,
    base: u64,
}

impl Frame {
    /// The UMEM address of the frame's first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The frame with the `len` bytes at offset `off` marked (for a TX ring). `off + len`
    /// must lie inside the frame (the kernel refuses a descriptor that does not).
    pub fn span(self, off: usize, len: usize) -> Desc {
        debug_assert!(
            off + len <= FRAME_SIZE as usize,
            "span {off}+{len} outside the frame"
        );
        Desc {
            frame: self,
            off: off as u32,
            len: len as u32,
        }
    }
}

/// A frame and the bytes of it received (from an RX ring) or to be sent (into a TX ring):
/// `off..off + len` of the frame. Owns the frame like [`Frame`].
#[derive(Debug, PartialEq, Eq)]
pub struct Desc {
    frame: Frame,
    off: u32,
    len: u32,
}

impl Desc {
    /// Where the bytes start in the frame.
    pub fn off(&self) -> usize {
        self.off as usize
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame, to lend its memory ([`QueuePair::bytes`]).
    pub fn frame_mut(&mut self) -> &mut Frame {
        &mut self.frame
    }

    /// The whole frame again (the span forgotten).
    pub fn into_frame(self) -> Frame {
        self.frame
    }

    fn xdp(&self) -> XdpDesc {
        XdpDesc {
            addr: self.frame.base + u64::from(self.off),
            len: self.len,
            options: 0,
        }
    }
}

/// What a [`Port`] needs to make [`Frame`]s from the addresses its rings give back.
#[derive(Clone, Copy, Debug)]
struct FrameSource {
    umem: u64,
    frames: u32,
}

impl FrameSource {
    /// The frame holding UMEM address `addr`.
    ///
    /// # Safety
    /// `addr` must have come from an RX or completion ring of a socket bound on this UMEM, read
    /// once: the kernel gives a frame back once for each time it was given one (fill or TX
    /// ring), and then no other [`Frame`] for it exists.
    ///
    /// # Panics
    /// If `addr` lies outside the UMEM (the kernel only gives back addresses inside it).
    unsafe fn frame(self, addr: u64) -> Frame {
        let base = addr - addr % u64::from(FRAME_SIZE);
        assert!(
            base < u64::from(self.frames) * u64::from(FRAME_SIZE),
            "UMEM address {addr:#x} out of bounds"
        );
        Frame {
            umem: self.umem,
            base,
        }
    }
}

/// The UMEM's memory: the frames, and who may touch which ([`Frame`]).
#[derive(Debug)]
struct Frames {
    map: Mapping,
    source: FrameSource,
    taken: bool,
}

impl Frames {
    fn new(frames: u32) -> Result<Self> {
        let len = frames as usize * FRAME_SIZE as usize;
        let map = Mapping::anonymous(len)
            .map_err(|e| Error::new(format!("mapping {len} bytes of UMEM"), e))?;
        Ok(Self {
            map,
            source: FrameSource {
                umem: NEXT_UMEM.fetch_add(1, Ordering::Relaxed),
                frames,
            },
            taken: false,
        })
    }

    /// Every frame, the first time; nothing after.
    fn take(&mut self) -> Vec<Frame> {
        if core::mem::replace(&mut self.taken, true) {
            return Vec::new();
        }
        let umem = self.source.umem;
        (0..u64::from(self.source.frames))
            .map(|i| Frame {
                umem,
                base: i * u64::from(FRAME_SIZE),
            })
            .collect()
    }

    /// The frame's memory, for as long as the frame is lent.
    ///
    /// # Panics
    /// If `frame` belongs to another UMEM.
    fn bytes<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        assert_eq!(frame.umem, self.source.umem, "a frame of another UMEM");
        debug_assert!(frame.base + u64::from(FRAME_SIZE) <= self.map.len() as u64);
        // SAFETY: the frame lies inside the mapping (a `Frame` of this UMEM is only made for a
        // frame inside it: `take`, `FrameSource::frame`), which lives as long as `self`. At
        // most one `Frame` exists per frame and the kernel writes no frame while a `Frame` for
        // it exists (it has not been given to a ring, or the ring gave it back), so the
        // exclusive borrow of the `Frame` for 'a is an exclusive borrow of this memory.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.map.ptr().as_ptr().add(frame.base as usize),
                FRAME_SIZE as usize,
            )
        }
    }
}

/// The kernel's counters of one AF_XDP socket ([`Port::statistics`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Frames the XDP program steered to the socket that the kernel dropped for want of a
    /// buffer (no frame in the fill ring, or too big for a frame). Not those of `rx_ring_full`.
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full (the worker did not keep up).
    pub rx_ring_full: u64,
    /// Times the fill ring had no frame for a packet (also in `rx_dropped`).
    pub fill_ring_empty: u64,
    /// Descriptors the kernel refused (RX and TX): a bug if not zero.
    pub invalid_descs: u64,
}

impl core::ops::Add for SocketStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            rx_dropped: self.rx_dropped + o.rx_dropped,
            rx_ring_full: self.rx_ring_full + o.rx_ring_full,
            fill_ring_empty: self.fill_ring_empty + o.fill_ring_empty,
            invalid_descs: self.invalid_descs + o.invalid_descs,
        }
    }
}

/// One interface's side of a [`QueuePair`].
pub struct Port {
    device: DeviceQueue,
    user: User,
    rx: RingRx,
    tx: RingTx,
    ifindex: u32,
    source: FrameSource,
    tx_budget: Option<u32>,
}

impl Port {
    fn new(umem: &Umem, frames: &Frames, iface: &str, queue: u32, first: bool) -> Result<Self> {
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
        let mut port = Self {
            device,
            user,
            rx,
            tx,
            ifindex: info.ifindex(),
            source: frames.source,
            tx_budget: None,
        };
        // Older kernels do not have it (ENOPROTOOPT): then each kick sends 32 and `flush`
        // kicks again.
        port.tx_budget = crate::sys::set_xdp_tx_budget(port.as_fd(), TX_BUDGET)
            .is_ok()
            .then_some(TX_BUDGET);
        Ok(port)
    }

    /// The socket's file descriptor (for the XSKMAP).
    pub fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Frames one TX kick sends in copy mode, if the kernel took [`TX_BUDGET`] (else its
    /// default, 32).
    pub fn tx_budget(&self) -> Option<u32> {
        self.tx_budget
    }

    /// Gives at most `max` frames from the end of `free` to the kernel's fill ring (as many as
    /// fit); allocates nothing.
    ///
    /// # Panics
    /// If a frame belongs to another UMEM (the ring would give it back as one of this one's).
    pub fn fill(&mut self, free: &mut Vec<Frame>, max: usize) {
        let want = (free.len().min(max) as u32).min(RING_SIZE);
        if want == 0 {
            return;
        }
        {
            let mut writer = self.device.fill(want);
            let n = (writer.capacity() as usize).min(want as usize);
            let start = free.len() - n.min(free.len());
            let umem = self.source.umem;
            let inserted = writer.insert(free[start..].iter().map(|f| {
                assert_eq!(f.umem, umem, "a frame of another UMEM");
                f.base
            })) as usize;
            writer.commit();
            // Those frames are the kernel's now.
            free.drain(start..start + inserted);
        }
        if self.device.needs_wakeup() {
            self.device.wake();
        }
    }

    /// The kernel's counters of this socket (`XDP_STATISTICS`), cumulative since it was bound:
    /// frames the kernel could not deliver to it, and why. `None` if the kernel refuses.
    pub fn statistics(&self) -> Option<SocketStats> {
        let s = self.device.statistics_v2().ok()?;
        Some(SocketStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            fill_ring_empty: s.rx_fill_ring_empty_descs,
            invalid_descs: s.rx_invalid_descs + s.tx_invalid_descs,
        })
    }

    /// Takes back the frames whose transmission completed, into `free`.
    pub fn reap(&mut self, free: &mut Vec<Frame>) {
        let mut reader = self.device.complete(RING_SIZE);
        while let Some(addr) = reader.read() {
            // SAFETY: an address read once from this socket's completion ring, on the UMEM
            // `self.source` names.
            free.push(unsafe { self.source.frame(addr) });
        }
        reader.release();
    }

    /// Takes up to `max` received frames into `out`; returns how many.
    pub fn receive(&mut self, out: &mut Vec<Desc>, max: usize) -> usize {
        let mut reader = self.rx.receive(max as u32);
        let mut n = 0;
        while n < max {
            let Some(desc) = reader.read() else { break };
            // SAFETY: a descriptor read once from this socket's RX ring, on the UMEM
            // `self.source` names.
            let frame = unsafe { self.source.frame(desc.addr) };
            let off = (desc.addr - frame.base) as u32;
            out.push(Desc {
                frame,
                off,
                len: desc.len,
            });
            n += 1;
        }
        reader.release();
        n
    }

    /// Queues frames from the start of `queue` for transmission and removes them from it (they
    /// are the kernel's); returns how many. What did not fit stays in `queue`.
    ///
    /// # Panics
    /// If a frame belongs to another UMEM (the ring would give it back as one of this one's).
    pub fn transmit(&mut self, queue: &mut Vec<Desc>) -> usize {
        if queue.is_empty() {
            return 0;
        }
        let umem = self.source.umem;
        let mut writer = self.tx.transmit(queue.len() as u32);
        let n = writer.insert(queue.iter().map(|d| {
            assert_eq!(d.frame.umem, umem, "a frame of another UMEM");
            d.xdp()
        })) as usize;
        writer.commit();
        queue.drain(..n);
        n
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
    frames: Frames,
}

impl QueuePair {
    /// Creates the UMEM with `frames` frames and binds both sockets to `queue`.
    ///
    /// # Errors
    /// The interface and the step that failed (interface unknown, queue missing, AF_XDP
    /// unsupported, memory), with the errno.
    pub fn new(inner: &str, outer: &str, queue: u32, frames: u32) -> Result<Self> {
        let memory = Frames::new(frames)?;
        let config = UmemConfig {
            fill_size: RING_SIZE,
            complete_size: RING_SIZE,
            frame_size: FRAME_SIZE,
            headroom: HEADROOM,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(memory.map.ptr(), memory.map.len());
        // SAFETY: `memory.map` is a page-aligned mapping of that many bytes that outlives the
        // UMEM (it is dropped after it, field order above).
        let umem = unsafe { Umem::new(config, slice) }
            .map_err(|e| Error::errno("registering the UMEM", e.get_raw()))?;
        let inner = Port::new(&umem, &memory, inner, queue, true)?;
        let outer = Port::new(&umem, &memory, outer, queue, false)?;
        Ok(Self {
            inner,
            outer,
            umem,
            frames: memory,
        })
    }

    /// Every frame of the UMEM, for the initial free list: the first call only (later ones
    /// get nothing).
    pub fn take_frames(&mut self) -> Vec<Frame> {
        let _ = &self.umem;
        self.frames.take()
    }

    /// The whole frame's memory, for as long as the frame is lent. Frames lent at once are
    /// distinct (each is its own `Frame`), so a batch can hold all of its frames' memory.
    ///
    /// # Panics
    /// If `frame` belongs to another queue pair's UMEM.
    pub fn bytes<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.frames.bytes(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_handed_out_once_and_lend_disjoint_memory() {
        let mut frames = Frames::new(4).expect("memory");
        let mut all = frames.take();
        assert_eq!(
            all.iter().map(Frame::base).collect::<Vec<_>>(),
            [0, 4096, 8192, 12288]
        );
        assert!(frames.take().is_empty(), "a second set of frames");
        let [a, b, ..] = &mut all[..] else {
            unreachable!()
        };
        let (x, y) = (frames.bytes(a), frames.bytes(b));
        assert_eq!((x.len(), y.len()), (4096, 4096));
        x.fill(1);
        y.fill(2);
        assert!(frames.bytes(&mut all[0]).iter().all(|v| *v == 1));
        assert!(frames.bytes(&mut all[1]).iter().all(|v| *v == 2));
        assert!(frames.bytes(&mut all[2]).iter().all(|v| *v == 0));
    }

    #[test]
    fn a_ring_address_names_its_frame_and_span() {
        let frames = Frames::new(2).expect("memory");
        // SAFETY: no frame of this UMEM is held (none was taken).
        let f = unsafe { frames.source.frame(4096 + 256) };
        assert_eq!(f.base(), 4096);
        let d = f.span(256 - 42, 100);
        assert_eq!((d.off(), d.len(), d.is_empty()), (214, 100, false));
        let x = d.xdp();
        assert_eq!((x.addr, x.len, x.options), (4096 + 214, 100, 0));
        assert_eq!(d.into_frame().base(), 4096);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn an_address_outside_the_umem_is_refused() {
        let frames = Frames::new(2).expect("memory");
        // SAFETY: the address is refused before any frame is made.
        let _ = unsafe { frames.source.frame(2 * 4096) };
    }

    #[test]
    #[should_panic(expected = "a frame of another UMEM")]
    fn a_frame_of_another_umem_is_refused() {
        let mut one = Frames::new(1).expect("memory");
        let other = Frames::new(1).expect("memory");
        let mut f = one.take().pop().expect("frame");
        let _ = other.bytes(&mut f);
    }
}
