//! The identifiers every layer of the core shares: SPIs, peers, slots, which slot a side
//! transmits under, and the packed SPI-table reference. A leaf: it depends on nothing in the
//! crate but the error type.

use crate::Error;
use core::fmt;

/// A Security Parameters Index outside the reserved range 0..=255.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spi(u32);

impl Spi {
    /// Validates an SPI.
    ///
    /// # Errors
    /// [`Error::ReservedSpi`] for 0..=255.
    pub const fn new(value: u32) -> Result<Spi, Error> {
        if value <= pktcrypt_common::MAX_RESERVED_SPI {
            Err(Error::ReservedSpi)
        } else {
            Ok(Spi(value))
        }
    }

    /// The numeric SPI.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Spi({:#010x})", self.0)
    }
}

impl fmt::Display for Spi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// Identifies a peer inside one [`crate::Engine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// The slot a generation occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// The initialization key (generation 0).
    Init,
    /// The newest dynamic generation N.
    Newest,
    /// The previous dynamic generation N-1.
    Previous,
}

/// Where an SPI points: a peer and one of its three physical slots, packed into one `u32`
/// (peer index in the high 30 bits, slot in the low 2) so an SPI-table entry is 8 bytes: a key
/// server with a million clients holds three million of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SaRef(u32);

/// Peers an engine can hold (the peer index must fit [`SaRef`]).
pub(crate) const MAX_PEERS: usize = 1 << 30;

impl SaRef {
    pub(crate) fn new(peer: u32, slot: u8) -> Self {
        debug_assert!((peer as usize) < MAX_PEERS && slot < 4);
        SaRef(peer << 2 | u32::from(slot & 3))
    }

    pub(crate) fn peer(self) -> u32 {
        self.0 >> 2
    }

    pub(crate) fn slot(self) -> u8 {
        (self.0 & 3) as u8
    }

    pub(crate) fn raw(self) -> u32 {
        self.0
    }

    pub(crate) fn from_raw(raw: u32) -> Self {
        SaRef(raw)
    }
}

pub(crate) const INIT_SLOT: u8 = 0;

/// Which generation a side transmits with to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxRule {
    /// By the engine's role: a key server N-1, a client N (the init key if none).
    Role,
    /// The newest generation (the init key if none): a group member in transit.
    Newest,
    /// The previous generation (the init key if none): a group member that has the new key
    /// but was not told to switch yet.
    Previous,
}

#[cfg(test)]
mod sa_ref_tests {
    use super::*;

    #[test]
    fn sa_ref_packs_peer_and_slot_into_one_word() {
        for (peer, slot) in [(0, 0), (1, 2), (12_345, 1), (MAX_PEERS as u32 - 1, 2)] {
            let r = SaRef::new(peer, slot);
            assert_eq!((r.peer(), r.slot()), (peer, slot));
        }
        assert_eq!(core::mem::size_of::<(u32, SaRef)>(), 8);
    }
}
