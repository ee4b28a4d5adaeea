//! A security association: one generation of keys with one peer, both directions.
//!
//! Only the generation's description, its secret and the transmit sequence number are always
//! resident. The expanded AEAD keys of each direction are derived on first use (HKDF, then the
//! cipher's key schedule) and may be evicted again for idle peers; counters and the replay window
//! are allocated on first traffic. A key server holding a million mostly idle clients therefore
//! keeps about a hundred bytes per generation instead of the ~600 bytes an expanded AES-256-GCM
//! key takes.

use crate::aead::{AeadKey, Backend};
use crate::keys::{Direction, Generation, GenerationInfo, Secret};
use crate::replay::ReplayWindow;
use crate::{Error, Time};

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

/// An expanded AEAD key and its salt: derived on demand, evictable.
pub(crate) struct Keyed {
    pub(crate) key: AeadKey,
    pub(crate) salt: [u8; 4],
}

pub(crate) struct Sa {
    pub(crate) info: GenerationInfo,
    pub(crate) secret: Secret,
    /// Next sequence number to send; starts at 1 (RFC 4303 §3.3.3). Survives key eviction.
    pub(crate) next_seq: u64,
    /// When it was installed, in nanoseconds of [`Time`].
    installed_at: u64,
    tx: Option<Box<Keyed>>,
    rx: Option<Box<Keyed>>,
    /// Allocated at the first received packet. Eviction compacts it to `replay_floor`.
    replay: Option<Box<ReplayWindow>>,
    /// Every sequence number up to this counts as seen (the top of an evicted window).
    replay_floor: u64,
    counters: Option<Box<SaCounters>>,
}

impl Sa {
    pub(crate) fn new(generation: &Generation, now: Time) -> Sa {
        Sa {
            info: generation.info,
            secret: generation.secret.clone(),
            next_seq: 1,
            installed_at: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            tx: None,
            rx: None,
            replay: None,
            replay_floor: 0,
            counters: None,
        }
    }

    pub(crate) fn installed_at(&self) -> Time {
        Time::from_nanos(self.installed_at)
    }

    fn expand(&self, backend: Backend, direction: Direction) -> Result<Box<Keyed>, Error> {
        let dk = self.secret.derive_direction(self.info, direction);
        Ok(Box::new(Keyed {
            key: backend.key(self.info.suite, dk.key())?,
            salt: dk.salt(),
        }))
    }

    /// The transmit key, expanded on first use.
    pub(crate) fn tx(&mut self, backend: Backend, direction: Direction) -> Result<&Keyed, Error> {
        if self.tx.is_none() {
            self.tx = Some(self.expand(backend, direction)?);
        }
        self.tx.as_deref().ok_or(Error::KeyLength)
    }

    /// The receive key, expanded on first use.
    pub(crate) fn rx(&mut self, backend: Backend, direction: Direction) -> Result<&Keyed, Error> {
        if self.rx.is_none() {
            self.rx = Some(self.expand(backend, direction)?);
        }
        self.rx.as_deref().ok_or(Error::KeyLength)
    }

    /// The receive key if already expanded.
    pub(crate) fn rx_expanded(&self) -> Option<&Keyed> {
        self.rx.as_deref()
    }

    /// The replay window, allocated on first use.
    pub(crate) fn replay_mut(&mut self, window: u32) -> Result<&mut ReplayWindow, Error> {
        if self.replay.is_none() {
            self.replay = Some(Box::new(ReplayWindow::with_floor(
                window,
                self.replay_floor,
            )?));
        }
        self.replay.as_deref_mut().ok_or(Error::ReplayWindow)
    }

    pub(crate) fn counters(&self) -> SaCounters {
        self.counters.as_deref().copied().unwrap_or_default()
    }

    pub(crate) fn counters_mut(&mut self) -> &mut SaCounters {
        self.counters.get_or_insert_with(Box::default)
    }

    /// Drops the expanded keys (they are re-derived from the secret when needed again) and
    /// compacts the replay window to its top: anything at or below it is refused afterwards.
    pub(crate) fn evict_keys(&mut self) {
        self.tx = None;
        self.rx = None;
        if let Some(w) = self.replay.take() {
            self.replay_floor = w.top();
        }
    }

    /// Highest sequence number received, also after eviction.
    pub(crate) fn highest_received(&self) -> u64 {
        self.replay
            .as_deref()
            .map_or(self.replay_floor, ReplayWindow::top)
    }

    pub(crate) fn same_generation(&self, generation: &Generation) -> bool {
        self.info == generation.info && self.secret == generation.secret
    }
}
