//! A security association: one generation of keys with one peer, both directions.

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

pub(crate) struct Sa {
    pub(crate) info: GenerationInfo,
    pub(crate) secret: Secret,
    pub(crate) tx: AeadKey,
    pub(crate) tx_salt: [u8; 4],
    /// Next sequence number to send; starts at 1 (RFC 4303 §3.3.3).
    pub(crate) next_seq: u64,
    pub(crate) rx: AeadKey,
    pub(crate) rx_salt: [u8; 4],
    pub(crate) replay: ReplayWindow,
    pub(crate) counters: SaCounters,
    pub(crate) installed_at: Time,
}

impl Sa {
    pub(crate) fn new(
        generation: &Generation,
        tx_direction: Direction,
        backend: Backend,
        window: u32,
        now: Time,
    ) -> Result<Sa, Error> {
        let info = generation.info;
        let tx_key = generation.secret.derive_direction(info, tx_direction);
        let rx_key = generation
            .secret
            .derive_direction(info, tx_direction.reverse());
        Ok(Sa {
            info,
            secret: generation.secret.clone(),
            tx: backend.key(info.suite, tx_key.key())?,
            tx_salt: tx_key.salt(),
            next_seq: 1,
            rx: backend.key(info.suite, rx_key.key())?,
            rx_salt: rx_key.salt(),
            replay: ReplayWindow::new(window)?,
            counters: SaCounters::default(),
            installed_at: now,
        })
    }

    pub(crate) fn same_generation(&self, generation: &Generation) -> bool {
        self.info == generation.info && self.secret == generation.secret
    }
}
