//! Anti-replay window with 64-bit extended sequence numbers (RFC 4303 §3.4.3 and Appendix A).
//!
//! The window is a ring bitmap of `size` bits. [`ReplayWindow::check`] is cheap and runs before
//! decryption; [`ReplayWindow::update`] runs only after the packet authenticated, so forged
//! packets can never move the window.

use crate::Error;
use core::sync::atomic::{AtomicU64, Ordering};

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

/// Sequence numbers per window word: the low half of each word is a bitmap of one block of
/// 32 sequence numbers, the high half the low 32 bits of that block's number (its tag).
const BLOCK: u64 = 32;

/// A sliding anti-replay window over 64-bit sequence numbers, safe to share between threads.
///
/// Every operation takes `&self` and is lock-free: the window is a ring of atomic words, each
/// holding the bitmap of one block of 32 sequence numbers tagged with the block's number, so a
/// compare-and-swap both checks that the block is the one expected and sets the bit. A word whose
/// tag belongs to an older block is reclaimed by the first packet of the newer block; sliding
/// the window therefore never clears memory. Two workers presenting the same authenticated
/// sequence number concurrently: exactly one wins.
#[derive(Debug)]
pub struct ReplayWindow {
    size: u32,
    /// Highest authenticated sequence number (0 = none yet; valid numbers start at 1).
    top: AtomicU64,
    /// Every sequence number up to this counts as seen (the top of an evicted window).
    floor: u64,
    words: Box<[AtomicU64]>,
}

impl ReplayWindow {
    /// A window of `size` packets.
    ///
    /// # Errors
    /// [`Error::ReplayWindow`] unless `size` is a multiple of 64 in `64..=8192`.
    pub fn new(size: u32) -> Result<Self, Error> {
        Self::with_floor(size, 0)
    }

    /// A window in which every sequence number up to `floor` counts as already seen: what an
    /// evicted window is restored to. It can only refuse more than the original did.
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_floor(size: u32, floor: u64) -> Result<Self, Error> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&size) || !size.is_multiple_of(64) {
            return Err(Error::ReplayWindow);
        }
        // One word more than the window spans, so the blocks of every sequence number inside
        // the window map to distinct words.
        let words = (u64::from(size) / BLOCK + 1) as usize;
        Ok(Self {
            size,
            top: AtomicU64::new(floor),
            floor,
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Window size in packets.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Highest authenticated sequence number, 0 if none.
    pub fn top(&self) -> u64 {
        self.top.load(Ordering::Acquire)
    }

    /// Reconstructs the 64-bit sequence number from the 32 low bits carried on the wire
    /// (RFC 4303 Appendix A.2.2). `None` if it would lie before sequence number 0, or if the
    /// algorithm would place it more than 2^31 packets ahead of the window: that is a packet
    /// left of the window, not one from four billion packets in the future, and counting it as
    /// too old (instead of failing authentication under the wrong ESN) keeps forgeries and
    /// stale packets apart.
    pub fn infer_esn(&self, seq_low: u32) -> Option<u64> {
        infer_esn(self.top(), self.size, seq_low)
    }

    /// Checks `seq` against the window without changing it.
    ///
    /// # Errors
    /// [`ReplayError::TooOld`] left of the window (or 0), [`ReplayError::Replayed`] if seen.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        let top = self.top();
        if seq > top {
            return Ok(());
        }
        if top - seq >= u64::from(self.size) {
            return Err(ReplayError::TooOld);
        }
        if seq <= self.floor {
            return Err(ReplayError::Replayed);
        }
        let (word, tag, bit) = self.position(seq);
        let w = self.words[word].load(Ordering::Acquire);
        if (w >> 32) as u32 == tag && w & bit != 0 {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records an authenticated `seq`, sliding the window forward if needed.
    ///
    /// The top moves first, then the block's word is claimed, so every word being written holds
    /// a block inside the window as it stands; two blocks inside one window never share a word,
    /// so a word whose tag differs from ours holds a block that has left the window and is
    /// reclaimed. Every retry re-checks that `seq` is still inside the window.
    ///
    /// # Errors
    /// As [`Self::check`]: of concurrent duplicates that all authenticated, exactly one is
    /// recorded and the others are refused.
    pub fn update(&self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        // Only a packet beyond the top writes it (a read-modify-write on a line that other
        // workers read for every packet costs a cache-line transfer each time).
        if seq > self.top() {
            self.top.fetch_max(seq, Ordering::AcqRel);
        }
        let (word, tag, bit) = self.position(seq);
        let slot = &self.words[word];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let top = self.top();
            if top - seq >= u64::from(self.size) {
                return Err(ReplayError::TooOld);
            }
            let next = if (current >> 32) as u32 == tag && current as u32 != 0 {
                if current & bit != 0 {
                    return Err(ReplayError::Replayed);
                }
                current | bit
            } else {
                // Empty, or a block that has left the window.
                (u64::from(tag) << 32) | bit
            };
            match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Records a run of authenticated sequence numbers, in packet order, with the same results
    /// as calling [`Self::update`] for each in turn, but with one compare-and-swap per window
    /// word for consecutive numbers of the same 32-number block (the usual case: a batch from
    /// one sender), so workers sharing one SA exchange the word's cache line once per batch
    /// rather than once per packet.
    ///
    /// # Panics
    /// If `out` is shorter than `seqs`.
    pub fn update_run(&self, seqs: &[u64], out: &mut [Result<(), ReplayError>]) {
        let mut i = 0;
        while i < seqs.len() {
            let (word, tag, _) = self.position(seqs[i]);
            let mut j = i;
            let mut mask = 0u64;
            let mut max = 0u64;
            while j < seqs.len() {
                let (w, t, bit) = self.position(seqs[j]);
                if (w, t) != (word, tag) {
                    break;
                }
                out[j] = match self.check(seqs[j]) {
                    Err(e) => Err(e),
                    // The same number twice in one run: the second is a replay.
                    Ok(()) if mask & bit != 0 => Err(ReplayError::Replayed),
                    Ok(()) => {
                        mask |= bit;
                        max = max.max(seqs[j]);
                        Ok(())
                    }
                };
                j += 1;
            }
            if mask != 0 {
                self.record_block(word, tag, mask, max, &seqs[i..j], &mut out[i..j]);
            }
            i = j;
        }
    }

    /// Records the numbers of one block (`mask`, whose entries in `out` are `Ok`) as
    /// [`Self::update`] records one: the top first, then one compare-and-swap on the word; every
    /// retry re-checks that each number is still inside the window.
    fn record_block(
        &self,
        word: usize,
        tag: u32,
        mut mask: u64,
        max: u64,
        seqs: &[u64],
        out: &mut [Result<(), ReplayError>],
    ) {
        if max > self.top() {
            self.top.fetch_max(max, Ordering::AcqRel);
        }
        let slot = &self.words[word];
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let top = self.top();
            for (seq, result) in seqs.iter().zip(out.iter_mut()) {
                let bit = 1u64 << (seq % BLOCK);
                if result.is_ok() && mask & bit != 0 && top - seq >= u64::from(self.size) {
                    *result = Err(ReplayError::TooOld);
                    mask &= !bit;
                }
            }
            if mask == 0 {
                return;
            }
            let ours = (current >> 32) as u32 == tag && current as u32 != 0;
            let seen = if ours { current & mask } else { 0 };
            let claim = mask & !seen;
            let next = if ours {
                current | claim
            } else {
                // Empty, or a block that has left the window.
                (u64::from(tag) << 32) | claim
            };
            let won = claim == 0
                || slot
                    .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
                    .map_err(|actual| current = actual)
                    .is_ok();
            if won {
                for (seq, result) in seqs.iter().zip(out.iter_mut()) {
                    if result.is_ok() && seen & (1u64 << (seq % BLOCK)) != 0 {
                        *result = Err(ReplayError::Replayed);
                    }
                }
                return;
            }
        }
    }

    /// A copy of this window (resized to `size`), for handing a window over to shared use.
    /// A different size keeps only the top: everything at or below it counts as seen.
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn snapshot(&self, size: u32) -> Result<Self, Error> {
        if size != self.size {
            return Self::with_floor(size, self.top().max(self.floor));
        }
        Ok(Self {
            size,
            top: AtomicU64::new(self.top()),
            floor: self.floor,
            words: self
                .words
                .iter()
                .map(|w| AtomicU64::new(w.load(Ordering::Acquire)))
                .collect(),
        })
    }

    /// Word index, block tag and bit of `seq`.
    fn position(&self, seq: u64) -> (usize, u32, u64) {
        let block = seq / BLOCK;
        let word = (block % self.words.len() as u64) as usize;
        (word, block as u32, 1u64 << (seq % BLOCK))
    }
}

/// RFC 4303 Appendix A.2.2 for a window of `w` packets whose highest number is `top` (see
/// [`ReplayWindow::infer_esn`]).
fn infer_esn(top: u64, w: u32, seq_low: u32) -> Option<u64> {
    let tl = top as u32;
    let th = (top >> 32) as u32;
    let bottom = tl.wrapping_sub(w - 1);
    let high = if tl >= w - 1 {
        // The window lies within one 2^32 subspace.
        if seq_low >= bottom {
            th
        } else {
            let next = (u64::from(th.checked_add(1)?) << 32) | u64::from(seq_low);
            if next - top > 1 << 31 {
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

/// What opening needs of a window before decryption.
pub(crate) trait Window {
    fn infer_esn(&self, seq_low: u32) -> Option<u64>;
    fn check(&self, seq: u64) -> Result<(), ReplayError>;
}

impl Window for ReplayWindow {
    fn infer_esn(&self, seq_low: u32) -> Option<u64> {
        ReplayWindow::infer_esn(self, seq_low)
    }
    fn check(&self, seq: u64) -> Result<(), ReplayError> {
        ReplayWindow::check(self, seq)
    }
}

/// A 64-packet anti-replay window in 16 bytes, for an SA that has carried only control
/// messages: a key server's idle clients send one now and then (a hello, a rekey request, a
/// proof), and a [`ReplayWindow`] of the configured size for each of them would cost a few
/// hundred bytes per client. Not shared between threads (`&mut self` to record). The first data
/// packet moves the SA to a full window ([`Self::expand`]); before that, a packet more than 64
/// behind the highest one is too old.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactWindow {
    /// Highest authenticated sequence number (0 = none yet).
    top: u64,
    /// Bit `i`: `top - i` was seen.
    seen: u64,
}

impl CompactWindow {
    /// Packets it covers.
    pub const SIZE: u32 = 64;

    /// Everything at or below `floor` counts as seen.
    pub fn with_floor(floor: u64) -> Self {
        Self {
            top: floor,
            seen: if floor == 0 { 0 } else { u64::MAX },
        }
    }

    /// Highest authenticated sequence number, 0 if none.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// As [`ReplayWindow::infer_esn`].
    pub fn infer_esn(&self, seq_low: u32) -> Option<u64> {
        infer_esn(self.top, Self::SIZE, seq_low)
    }

    /// As [`ReplayWindow::check`].
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
        let back = self.top - seq;
        if back >= u64::from(Self::SIZE) {
            Err(ReplayError::TooOld)
        } else if self.seen >> back & 1 == 1 {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records an authenticated `seq`.
    ///
    /// # Errors
    /// As [`Self::check`].
    pub fn update(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.top = seq;
            self.seen |= 1;
        } else {
            self.seen |= 1 << (self.top - seq);
        }
        Ok(())
    }

    /// A full window of `size` packets holding the same state: the 64 numbers below the top as
    /// recorded, everything older as seen.
    ///
    /// # Errors
    /// As [`ReplayWindow::new`].
    pub fn expand(&self, size: u32) -> Result<ReplayWindow, Error> {
        let floor = self.top.saturating_sub(u64::from(Self::SIZE));
        let w = ReplayWindow::with_floor(size, floor)?;
        for back in (0..u64::from(Self::SIZE)).rev() {
            if self.seen >> back & 1 == 1 && self.top - back > floor {
                let _ = w.update(self.top - back);
            }
        }
        Ok(w)
    }
}

impl Window for CompactWindow {
    fn infer_esn(&self, seq_low: u32) -> Option<u64> {
        CompactWindow::infer_esn(self, seq_low)
    }
    fn check(&self, seq: u64) -> Result<(), ReplayError> {
        CompactWindow::check(self, seq)
    }
}

impl ReplayWindow {
    /// The last 64 numbers of this window as a [`CompactWindow`] (older ones count as seen).
    pub fn compact(&self) -> CompactWindow {
        let top = self.top().max(self.floor);
        let mut seen = 0u64;
        for back in 0..u64::from(CompactWindow::SIZE).min(top) {
            let seq = top - back;
            if seq <= self.floor || self.check(seq) == Err(ReplayError::Replayed) {
                seen |= 1 << back;
            }
        }
        CompactWindow { top, seen }
    }
}
