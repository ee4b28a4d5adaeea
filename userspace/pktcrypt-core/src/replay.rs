//! Anti-replay window with 64-bit extended sequence numbers (RFC 4303 §3.4.3 and Appendix A).
//!
//! The window is a ring bitmap of `size` bits. [`ReplayWindow::check`] is cheap and runs before
//! decryption; [`ReplayWindow::update`] runs only after the packet authenticated, so forged
//! packets can never move the window.

use crate::Error;

/// Smallest configurable window, in packets.
pub const MIN_WINDOW: u32 = 64;
/// Default window, in packets.
pub const DEFAULT_WINDOW: u32 = 1024;
/// Largest configurable window, in packets.
pub const MAX_WINDOW: u32 = 8192;

/// Why the window rejects a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Seen before.
    Replayed,
    /// Left of the window: too old to tell.
    TooOld,
}

/// A sliding anti-replay window over 64-bit sequence numbers.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    size: u32,
    /// Highest authenticated sequence number (0 = none yet; valid numbers start at 1).
    top: u64,
    bits: Box<[u64]>,
}

impl ReplayWindow {
    /// A window of `size` packets.
    ///
    /// # Errors
    /// [`Error::ReplayWindow`] unless `size` is a multiple of 64 in `64..=8192`.
    pub fn new(size: u32) -> Result<Self, Error> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&size) || !size.is_multiple_of(64) {
            return Err(Error::ReplayWindow);
        }
        Ok(Self {
            size,
            top: 0,
            bits: vec![0u64; (size / 64) as usize].into_boxed_slice(),
        })
    }

    /// A window in which every sequence number up to `floor` counts as already seen: what an
    /// evicted window is restored to. It can only refuse more than the original did.
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_floor(size: u32, floor: u64) -> Result<Self, Error> {
        let mut w = Self::new(size)?;
        w.top = floor;
        if floor > 0 {
            w.bits.fill(u64::MAX);
        }
        Ok(w)
    }

    /// Window size in packets.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Highest authenticated sequence number, 0 if none.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Reconstructs the 64-bit sequence number from the 32 low bits carried on the wire
    /// (RFC 4303 Appendix A.2.2). `None` if it would lie before sequence number 0, or if the
    /// algorithm would place it more than 2^31 packets ahead of the window: that is a packet
    /// left of the window, not one from four billion packets in the future, and counting it as
    /// too old (instead of failing authentication under the wrong ESN) keeps forgeries and
    /// stale packets apart.
    pub fn infer_esn(&self, seq_low: u32) -> Option<u64> {
        let w = self.size;
        let tl = self.top as u32;
        let th = (self.top >> 32) as u32;
        let bottom = tl.wrapping_sub(w - 1);
        let high = if tl >= w - 1 {
            // The window lies within one 2^32 subspace.
            if seq_low >= bottom {
                th
            } else {
                let next = (u64::from(th.checked_add(1)?) << 32) | u64::from(seq_low);
                if next - self.top > 1 << 31 {
                    return None;
                }
                th + 1
            }
        } else if seq_low >= bottom {
            // The window spans two subspaces; the packet falls in the lower one.
            th.checked_sub(1)?
        } else {
            th
        };
        Some((u64::from(high) << 32) | u64::from(seq_low))
    }

    /// Checks `seq` against the window without changing it.
    ///
    /// # Errors
    /// [`ReplayError::TooOld`] left of the window (or 0), [`ReplayError::Replayed`] if seen.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= u64::from(self.size) {
            return Err(ReplayError::TooOld);
        }
        let (word, bit) = self.position(seq);
        if self.bits[word] & bit != 0 {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records an authenticated `seq`, sliding the window forward if needed.
    ///
    /// # Errors
    /// As [`Self::check`]: a concurrent duplicate that authenticated too is still refused once.
    pub fn update(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if seq > self.top {
            let advance = seq - self.top;
            if advance >= u64::from(self.size) {
                self.bits.fill(0);
            } else {
                for s in self.top + 1..seq {
                    let (word, bit) = self.position(s);
                    self.bits[word] &= !bit;
                }
            }
            self.top = seq;
        }
        let (word, bit) = self.position(seq);
        self.bits[word] |= bit;
        Ok(())
    }

    fn position(&self, seq: u64) -> (usize, u64) {
        let index = seq % u64::from(self.size);
        ((index / 64) as usize, 1u64 << (index % 64))
    }
}
