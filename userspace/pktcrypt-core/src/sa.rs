//! A security association: one generation of keys with one peer, both directions.
//!
//! Only the generation's description, its secret, the transmit sequence number and the install
//! time are always resident (72 bytes). The first packet adds an `Ext` block (56 bytes): the
//! counters, a compact 64-packet replay window, and a pointer to the `Hot` state, which exists
//! only while the SA carries data: the expanded AEAD keys of each direction (derived on first
//! use: HKDF, then the cipher's key schedule), the full replay window and the state shared with
//! data-plane workers. Idle eviction frees it. A key server holding a million mostly idle
//! clients therefore keeps 128 bytes per generation instead of the ~1,700 bytes of expanded keys
//! and a full window.

use crate::aead::{AeadKey, Backend};
use crate::keys::{Direction, Generation, GenerationInfo, Secret};
use crate::replay::{CompactWindow, ReplayError, ReplayWindow};
use crate::{Error, Time};
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Traffic counters of one generation; they drive the control plane's rekey triggers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaCounters {
    /// Packets sealed under this generation.
    pub packets_sealed: u64,
    /// Payload bytes sealed.
    pub bytes_sealed: u64,
    /// Packets opened (authenticated and within the window).
    pub packets_opened: u64,
    /// Payload bytes opened.
    pub bytes_opened: u64,
    /// Packets that failed authentication under this generation's SPI.
    pub auth_failures: u64,
    /// Packets refused by the anti-replay window.
    pub replays: u64,
}

impl SaCounters {
    /// Counts a packet dropped under this SA where a counter exists for its reason.
    pub(crate) fn count_drop(&mut self, reason: crate::DropReason) {
        match reason {
            crate::DropReason::AuthFailed => self.auth_failures += 1,
            crate::DropReason::Replay | crate::DropReason::TooOld => self.replays += 1,
            _ => {}
        }
    }

    pub(crate) fn add(&mut self, o: &SaCounters) {
        self.packets_sealed += o.packets_sealed;
        self.bytes_sealed += o.bytes_sealed;
        self.packets_opened += o.packets_opened;
        self.bytes_opened += o.bytes_opened;
        self.auth_failures += o.auth_failures;
        self.replays += o.replays;
    }
}

/// The counters an SA stores (in its `Ext` block). The packets sealed are not among them: they
/// are the sequence numbers used, `next_seq` minus where it started, which also counts what
/// data-plane workers sealed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StoredCounters {
    pub(crate) bytes_sealed: u64,
    pub(crate) packets_opened: u64,
    pub(crate) bytes_opened: u64,
    /// Saturating (statistics; the failed-authentication trigger fires long before 2^32).
    auth_failures: u32,
    replays: u32,
}

impl StoredCounters {
    /// Counts a packet dropped under this SA where a counter exists for its reason.
    pub(crate) fn count_drop(&mut self, reason: crate::DropReason) {
        match reason {
            crate::DropReason::AuthFailed => {
                self.auth_failures = self.auth_failures.saturating_add(1);
            }
            crate::DropReason::Replay | crate::DropReason::TooOld => self.count_replay(),
            _ => {}
        }
    }

    pub(crate) fn count_replay(&mut self) {
        self.replays = self.replays.saturating_add(1);
    }
}

/// [`SaCounters`] that several threads add to (relaxed: they are statistics and trigger input).
#[derive(Debug, Default)]
///
/// Packets sealed are not among them: [`Sa::counters`] derives them from the sequence counter.
pub(crate) struct AtomicCounters {
    pub(crate) bytes_sealed: AtomicU64,
    pub(crate) packets_opened: AtomicU64,
    pub(crate) bytes_opened: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) replays: AtomicU64,
}

impl AtomicCounters {
    /// Adds a batch's local counts.
    pub(crate) fn add(&self, c: &SaCounters) {
        let pairs = [
            (&self.bytes_sealed, c.bytes_sealed),
            (&self.packets_opened, c.packets_opened),
            (&self.bytes_opened, c.bytes_opened),
            (&self.auth_failures, c.auth_failures),
            (&self.replays, c.replays),
        ];
        for (a, v) in pairs {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    fn load(&self) -> SaCounters {
        SaCounters {
            packets_sealed: 0,
            bytes_sealed: self.bytes_sealed.load(Ordering::Relaxed),
            packets_opened: self.packets_opened.load(Ordering::Relaxed),
            bytes_opened: self.bytes_opened.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            replays: self.replays.load(Ordering::Relaxed),
        }
    }
}

/// The per-packet state of an SA that the engine shares with data-plane workers once
/// [`crate::Engine::data_plane`] was asked for it: the transmit sequence counter (reserved
/// with `fetch_add`, so the engine's control messages and every worker draw distinct numbers),
/// the replay window (lock-free) and the traffic counters.
#[derive(Debug)]
pub(crate) struct SaShared {
    pub(crate) next_seq: AtomicU64,
    pub(crate) replay: ReplayWindow,
    pub(crate) counters: AtomicCounters,
}

/// An expanded AEAD key and its salt: derived on demand, evictable.
pub(crate) struct Keyed {
    pub(crate) key: AeadKey,
    pub(crate) salt: [u8; 4],
}

/// What an SA gains at its first packet and keeps: counters, a compact replay window, and the
/// hot state while there is one.
#[derive(Default)]
struct Ext {
    counters: StoredCounters,
    /// The replay state while there is no full window: before the first data packet (an SA
    /// that only carried control messages needs no more), and after idle eviction compacted the
    /// full one.
    cold: CompactWindow,
    hot: Option<Box<Hot>>,
}

/// The part of an SA that exists only while it carries traffic, in one allocation that idle
/// eviction frees: a key server with a million idle clients keeps one pointer per SA for it.
#[derive(Default)]
struct Hot {
    tx: Option<Arc<Keyed>>,
    rx: Option<Arc<Keyed>>,
    /// Allocated at the first received data packet. Eviction compacts it to `Ext::cold`.
    replay: Option<ReplayWindow>,
    /// Set once the SA is shared with data-plane workers; then it holds the sequence counter and
    /// the replay window instead of `Sa::next_seq` and `replay` (and eviction keeps it).
    shared: Option<Arc<SaShared>>,
}

/// [`Sa::installed_at`]'s flag bits.
const EXCHANGED: u64 = 1 << 63;
const RECEIVE_ONLY: u64 = 1 << 62;
const FLAGS: u64 = EXCHANGED | RECEIVE_ONLY;

pub(crate) struct Sa {
    pub(crate) info: GenerationInfo,
    pub(crate) secret: Secret,
    /// Next sequence number to send; starts at 1 (RFC 4303 §3.3.3). Survives key eviction.
    pub(crate) next_seq: u64,
    /// When it was installed, in nanoseconds of [`Time`] (bit 63: the generation came from a
    /// key exchange; bit 62: nothing may be sealed under it; 2^62 ns is 146 years of uptime).
    installed_at: u64,
    ext: Option<Box<Ext>>,
}

impl Sa {
    pub(crate) fn new(generation: &Generation, now: Time) -> Sa {
        Sa {
            info: generation.info,
            secret: generation.secret.clone(),
            next_seq: 1,
            installed_at: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX) & !FLAGS,
            ext: None,
        }
    }

    fn ext(&mut self) -> &mut Ext {
        self.ext.get_or_insert_with(Box::default)
    }

    fn hot(&mut self) -> &mut Hot {
        self.ext().hot.get_or_insert_with(Box::default)
    }

    fn hot_ref(&self) -> Option<&Hot> {
        self.ext.as_ref()?.hot.as_deref()
    }

    /// The compact window (the replay state while there is no full one).
    pub(crate) fn compact_window(&self) -> CompactWindow {
        self.ext.as_ref().map(|e| e.cold).unwrap_or_default()
    }

    fn shared(&self) -> Option<&Arc<SaShared>> {
        self.hot_ref()?.shared.as_ref()
    }

    /// Shares the per-packet state (see [`SaShared`]); idempotent.
    pub(crate) fn share(&mut self, window: u32) -> Result<Arc<SaShared>, Error> {
        if let Some(s) = self.shared() {
            return Ok(Arc::clone(s));
        }
        let (cold, next_seq) = (self.compact_window(), self.next_seq);
        let hot = self.hot();
        let replay = match hot.replay.take() {
            Some(w) => w.snapshot(window)?,
            None => cold.expand(window)?,
        };
        let shared = Arc::new(SaShared {
            next_seq: AtomicU64::new(next_seq),
            replay,
            counters: AtomicCounters::default(),
        });
        hot.shared = Some(Arc::clone(&shared));
        Ok(shared)
    }

    /// Reserves `n` consecutive sequence numbers and returns the first.
    pub(crate) fn reserve_seq(&mut self, n: u64) -> u64 {
        match self.shared() {
            Some(s) => s.next_seq.fetch_add(n, Ordering::Relaxed),
            None => {
                let first = self.next_seq;
                self.next_seq += n;
                first
            }
        }
    }

    /// The next sequence number to send.
    pub(crate) fn next_seq(&self) -> u64 {
        self.shared()
            .map_or(self.next_seq, |s| s.next_seq.load(Ordering::Relaxed))
    }

    /// Sets the next sequence number (init keys start at a boot-derived base).
    pub(crate) fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
        if let Some(s) = self.shared() {
            s.next_seq.store(seq, Ordering::Relaxed);
        }
    }

    pub(crate) fn installed_at(&self) -> Time {
        Time::from_nanos(self.installed_at & !FLAGS)
    }

    /// Whether the generation came from a key exchange (forward secret).
    pub(crate) fn exchanged(&self) -> bool {
        self.installed_at & EXCHANGED != 0
    }

    /// Marks the generation as coming from a key exchange.
    pub(crate) fn set_exchanged(&mut self, on: bool) {
        if on {
            self.installed_at |= EXCHANGED;
        } else {
            self.installed_at &= !EXCHANGED;
        }
    }

    /// Whether nothing may be sealed under this generation (this side may have used its
    /// sequence numbers before a restart: a group member that got the key back).
    pub(crate) fn receive_only(&self) -> bool {
        self.installed_at & RECEIVE_ONLY != 0
    }

    /// Marks the generation receive-only (or not).
    pub(crate) fn set_receive_only(&mut self, on: bool) {
        if on {
            self.installed_at |= RECEIVE_ONLY;
        } else {
            self.installed_at &= !RECEIVE_ONLY;
        }
    }

    /// Derives and expands one direction's key without caching it: for a control message,
    /// which a key server's mostly idle clients send a few of per generation. Caching those
    /// would allocate and fill ~700 bytes per key to be evicted unused.
    pub(crate) fn derive(&self, backend: Backend, direction: Direction) -> Result<Keyed, Error> {
        let dk = self.secret.derive_direction(self.info, direction);
        Ok(Keyed {
            key: backend.key(self.info.suite, dk.key())?,
            salt: dk.salt(),
        })
    }

    fn expand(&self, backend: Backend, direction: Direction) -> Result<Arc<Keyed>, Error> {
        Ok(Arc::new(self.derive(backend, direction)?))
    }

    /// Caches a receive key from [`Self::derive`] (the SA turned out to carry data).
    pub(crate) fn cache_rx(&mut self, key: Keyed) {
        let hot = self.hot();
        if hot.rx.is_none() {
            hot.rx = Some(Arc::new(key));
        }
    }

    /// The transmit key if already expanded.
    pub(crate) fn tx_expanded(&self) -> Option<&Arc<Keyed>> {
        self.hot_ref()?.tx.as_ref()
    }

    /// The transmit key, expanded on first use.
    pub(crate) fn tx(
        &mut self,
        backend: Backend,
        direction: Direction,
    ) -> Result<&Arc<Keyed>, Error> {
        if self.hot_ref().is_none_or(|h| h.tx.is_none()) {
            let key = self.expand(backend, direction)?;
            self.hot().tx = Some(key);
        }
        self.hot().tx.as_ref().ok_or(Error::KeyLength)
    }

    /// The receive key, expanded on first use.
    pub(crate) fn rx(
        &mut self,
        backend: Backend,
        direction: Direction,
    ) -> Result<&Arc<Keyed>, Error> {
        if self.hot_ref().is_none_or(|h| h.rx.is_none()) {
            let key = self.expand(backend, direction)?;
            self.hot().rx = Some(key);
        }
        self.hot().rx.as_ref().ok_or(Error::KeyLength)
    }

    /// Whether either direction's key is expanded.
    pub(crate) fn keys_expanded(&self) -> bool {
        self.hot_ref()
            .is_some_and(|h| h.tx.is_some() || h.rx.is_some())
    }

    /// The receive key if already expanded.
    pub(crate) fn rx_expanded(&self) -> Option<&Keyed> {
        self.hot_ref()?.rx.as_deref()
    }

    /// The full replay window, if the SA has one (it carried data, or is shared).
    pub(crate) fn full_window(&self) -> Option<&ReplayWindow> {
        let hot = self.hot_ref()?;
        match &hot.shared {
            Some(s) => Some(&s.replay),
            None => hot.replay.as_ref(),
        }
    }

    /// Records an authenticated sequence number. A data packet moves an SA from the compact
    /// window to a full one of `window` packets; control messages stay in the compact one.
    pub(crate) fn record(&mut self, seq: u64, data: bool, window: u32) -> Result<(), ReplayError> {
        if let Some(w) = self.full_window() {
            return w.update(seq);
        }
        let ext = self.ext();
        if !data {
            return ext.cold.update(seq);
        }
        // The size was validated when the engine was made.
        let full = ext.cold.expand(window).map_err(|_| ReplayError::TooOld)?;
        let recorded = full.update(seq);
        self.hot().replay = Some(full);
        recorded
    }

    /// Counters of the engine plus those of the data-plane workers. `seq_base` is where this
    /// SA's sequence numbers started (1, or the engine's boot base for an init key).
    pub(crate) fn counters(&self, seq_base: u64) -> SaCounters {
        let stored = self.ext.as_ref().map(|e| e.counters).unwrap_or_default();
        let mut c = SaCounters {
            packets_sealed: 0,
            bytes_sealed: stored.bytes_sealed,
            packets_opened: stored.packets_opened,
            bytes_opened: stored.bytes_opened,
            auth_failures: u64::from(stored.auth_failures),
            replays: u64::from(stored.replays),
        };
        if let Some(s) = self.shared() {
            c.add(&s.counters.load());
        }
        c.packets_sealed = self.next_seq().saturating_sub(seq_base);
        c
    }

    pub(crate) fn counters_mut(&mut self) -> &mut StoredCounters {
        &mut self.ext().counters
    }

    /// Drops the expanded keys (they are re-derived from the secret when needed again) and
    /// compacts the replay window to its last 64 numbers: anything older is refused afterwards.
    pub(crate) fn evict_keys(&mut self) {
        let Some(ext) = self.ext.as_mut() else {
            return;
        };
        let Some(hot) = ext.hot.as_mut() else {
            return;
        };
        hot.tx = None;
        hot.rx = None;
        if hot.shared.is_some() {
            // Workers hold the window and the sequence counter; keep them.
            return;
        }
        if let Some(w) = hot.replay.take() {
            ext.cold = w.compact();
        }
        ext.hot = None;
    }

    /// Highest sequence number received, also after eviction.
    pub(crate) fn highest_received(&self) -> u64 {
        self.full_window()
            .map_or_else(|| self.compact_window().top(), ReplayWindow::top)
    }

    pub(crate) fn same_generation(&self, generation: &Generation) -> bool {
        self.info == generation.info && self.secret == generation.secret
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    #[test]
    fn an_idle_sa_stays_small() {
        // A key server keeps three per client: growth here multiplies by millions.
        assert_eq!(core::mem::size_of::<Option<super::Sa>>(), 72);
        // And one block per SA that carried traffic.
        assert_eq!(core::mem::size_of::<super::Ext>(), 56);
    }
}
