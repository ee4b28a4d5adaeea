//! The capture tap: copies of the outer frames the workers receive and send, for
//! `pktcrypt capture`.
//!
//! A gateway's traffic never passes the kernel's packet taps: XDP redirects what arrives into
//! the AF_XDP sockets before any tap, and AF_XDP transmits from the UMEM straight to the
//! driver. So `tcpdump` on a gateway's own interfaces shows none of it (only what the kernel
//! itself sends and receives: ARP, control messages, keepalives). The tap is the way to see the
//! wire from the gateway: while a capture runs, each worker copies the outer frames of its
//! batches (received ones before they are opened in place, sent ones before they are queued)
//! into a bounded channel; the capture's reader turns them into a pcap file.
//!
//! When no capture runs the cost is one relaxed atomic load per batch ([`Tap::sink`]): no
//! copy, no clock, no channel. While one runs a worker never blocks on it: a frame that finds
//! the channel full is not captured and is counted ([`Session::dropped`]).

use arc_swap::ArcSwapOption;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

/// Which way a captured frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Received on the outer interface (as it arrived: ESP-in-UDP, still sealed).
    Received,
    /// Sent on the outer interface (sealed, with its outer Ethernet, IP and UDP headers).
    Sent,
}

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Captured {
    /// Wall-clock time of the worker's batch.
    pub time: SystemTime,
    /// Which way it went.
    pub way: Way,
    /// The worker (queue) that handled it.
    pub worker: u16,
    /// The frame, from its Ethernet header (whole: the reader truncates to its snap length).
    pub frame: Vec<u8>,
}

/// The tap of a gateway's workers (one, shared by all of them).
#[derive(Debug, Default)]
pub struct Tap {
    /// Whether a capture runs: the one thing a worker reads per batch when none does.
    on: AtomicBool,
    /// Where the frames go while a capture runs.
    sink: ArcSwapOption<Sender<Captured>>,
    /// Frames not captured because the channel was full (this capture).
    dropped: AtomicU64,
}

/// A running capture: frames arrive on [`Session::frames`]; dropping it stops the capture.
#[derive(Debug)]
pub struct Session {
    tap: Arc<Tap>,
    /// The captured frames, in the order the workers offered them (per worker in order).
    pub frames: Receiver<Captured>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.tap.sink.store(None);
        self.tap.on.store(false, Ordering::Release);
    }
}

impl Session {
    /// Frames not captured so far because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.tap.dropped.load(Ordering::Relaxed)
    }
}

impl Tap {
    /// A tap with no capture running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a capture with room for `capacity` frames waiting; `None` if one runs already
    /// (one at a time).
    pub fn start(self: &Arc<Self>, capacity: usize) -> Option<Session> {
        if self
            .on
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        self.dropped.store(0, Ordering::Relaxed);
        self.sink.store(Some(Arc::new(tx)));
        Some(Session {
            tap: Arc::clone(self),
            frames: rx,
        })
    }

    /// The sink while a capture runs, else `None` after one relaxed load (a worker's only cost
    /// of the tap per batch).
    #[inline]
    pub fn sink(&self) -> Option<Arc<Sender<Captured>>> {
        if !self.on.load(Ordering::Relaxed) {
            return None;
        }
        self.sink.load_full()
    }

    /// Offers a copy of `frame` to `sink`; counted as dropped if the channel is full.
    pub fn offer(
        &self,
        sink: &Sender<Captured>,
        way: Way,
        worker: u16,
        time: SystemTime,
        frame: &[u8],
    ) {
        self.offer_owned(sink, way, worker, time, frame.to_vec());
    }

    /// Offers `frame` (a copy already made) to `sink`; counted as dropped if the channel is
    /// full.
    pub fn offer_owned(
        &self,
        sink: &Sender<Captured>,
        way: Way,
        worker: u16,
        time: SystemTime,
        frame: Vec<u8>,
    ) {
        let captured = Captured {
            time,
            way,
            worker,
            frame,
        };
        if let Err(TrySendError::Full(_)) = sink.try_send(captured) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_capture_at_a_time_and_nothing_without_one() {
        let tap = Arc::new(Tap::new());
        assert!(tap.sink().is_none(), "no capture: no sink");
        let session = tap.start(2).expect("first capture");
        assert!(tap.start(2).is_none(), "a second capture is refused");
        let sink = tap.sink().expect("sink while capturing");
        let t = SystemTime::now();
        for i in 0..3u8 {
            tap.offer(&sink, Way::Sent, 1, t, &[i; 60]);
        }
        assert_eq!(session.dropped(), 1, "the third finds the channel full");
        let got: Vec<Captured> = session.frames.try_iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[1].frame[0], got[1].way, got[1].worker),
            (1, Way::Sent, 1)
        );
        drop(session);
        assert!(tap.sink().is_none(), "stopped when the session is dropped");
        // Offered after the stop (a worker that loaded the sink before): goes nowhere.
        tap.offer(&sink, Way::Received, 0, t, &[9; 60]);
        let again = tap.start(4).expect("a new capture after the first");
        assert_eq!(again.dropped(), 0);
        assert!(
            again.frames.try_recv().is_err(),
            "nothing from the old capture"
        );
    }
}
