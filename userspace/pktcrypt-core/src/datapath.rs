//! A read-only view of an [`crate::Engine`]'s keys for data-plane workers on other threads.
//!
//! [`crate::Engine::data_plane`] builds a [`DataPlane`]: for every peer the generation it transmits
//! with and every generation it receives with, each with its expanded key and the SA's shared
//! per-packet state (sequence counter, lock-free replay window, counters). All methods take
//! `&self`, so any number of workers seal and open with one `DataPlane` at once, and the engine
//! (owned by the control plane) keeps sealing its control messages under the same counters: a
//! sequence number is never handed out twice.
//!
//! The control plane publishes a new `DataPlane` whenever keys change (an atomic pointer swap
//! in the daemon); workers finish their batch with the old one. Nothing here allocates per
//! packet.

use crate::aead::AeadItem;
use crate::ids::{INIT_SLOT, PeerId, SaRef, Slot};
use crate::keys::GenerationInfo;
use crate::pipeline::{
    Batch, OpenInfo, OpenOutcome, Packet, SealParams, State, keyed_handshake, open_sequence,
};
use crate::replay::ReplayError;
use crate::sa::{Keyed, SaShared};
use crate::spi_table::SpiTable as SpiMap;
use crate::{DropCounters, DropReason, SaCounters, SealError};
use std::sync::Arc;

/// Packets whose window updates are gathered at a time (a worker's batch).
const RUN: usize = 64;

/// The transmit side of one peer.
#[derive(Clone)]
struct TxSa {
    r: SaRef,
    info: GenerationInfo,
    key: Arc<Keyed>,
    shared: Arc<SaShared>,
}

/// One generation a peer receives with.
#[derive(Clone)]
struct RxSa {
    slot: Slot,
    info: GenerationInfo,
    key: RxKey,
    shared: Arc<SaShared>,
}

/// How packets under a receive SA are opened.
#[derive(Clone)]
pub(crate) enum RxKey {
    /// Under the SA's expanded key, in batches.
    Keyed(Arc<Keyed>),
    /// An init key that carries only handshake messages (protocol version 3): each under a key
    /// of its own, derived from this secret when it arrives.
    Handshake(Arc<Handshake>),
}

/// What opening a handshake message under an init key needs.
pub(crate) struct Handshake {
    pub(crate) secret: crate::Secret,
    pub(crate) direction: crate::keys::Direction,
    pub(crate) backend: crate::aead::Backend,
}

#[derive(Clone, Default)]
struct DataPeer {
    tx: Option<TxSa>,
    /// No transmit key yet: only handshakes (on the control plane) reach the peer.
    tx_handshake_only: bool,
    /// By physical slot index.
    rx: [Option<RxSa>; 3],
}

/// Keys and per-SA state for data-plane workers. See the module documentation. Cloning it is
/// cheap (keys and SA state are shared, never copied).
#[derive(Clone)]
pub struct DataPlane {
    esn: bool,
    max_esp: usize,
    seq_limit: u64,
    peers: Vec<DataPeer>,
    spis: SpiMap,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("peers", &self.peers.len())
            .field("spis", &self.spis.len())
            .finish_non_exhaustive()
    }
}

/// What one peer holds, for [`Engine::data_plane`] to fill in.
pub(crate) struct PeerKeys {
    pub(crate) tx: Option<(u8, GenerationInfo, Arc<Keyed>, Arc<SaShared>)>,
    pub(crate) tx_handshake_only: bool,
    pub(crate) rx: Vec<RxKeys>,
}

/// One receive generation: physical slot, logical slot, description, key, shared state.
pub(crate) type RxKeys = (u8, Slot, GenerationInfo, RxKey, Arc<SaShared>);

impl DataPlane {
    pub(crate) fn new(esn: bool, max_esp: usize, seq_limit: u64) -> Self {
        Self {
            esn,
            max_esp,
            seq_limit,
            peers: Vec::new(),
            spis: SpiMap::default(),
        }
    }

    /// Forgets what is held for `id` (its SPIs included).
    pub(crate) fn remove_peer(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(id.0 as usize) else {
            return;
        };
        for rx in peer.rx.iter().flatten() {
            self.spis.remove(rx.info.spi.get());
        }
        *peer = DataPeer::default();
    }

    /// Sets what is held for `id` (after [`Self::remove_peer`], or for a peer not held yet).
    pub(crate) fn set_peer(&mut self, id: PeerId, keys: PeerKeys) {
        let index = id.0 as usize;
        if self.peers.len() <= index {
            self.peers.resize_with(index + 1, DataPeer::default);
        }
        let peer = &mut self.peers[index];
        peer.tx = keys.tx.map(|(slot, info, key, shared)| TxSa {
            r: SaRef::new(id.0, slot),
            info,
            key,
            shared,
        });
        peer.tx_handshake_only = keys.tx_handshake_only;
        for (index, slot, info, key, shared) in keys.rx {
            self.spis.insert(info.spi.get(), SaRef::new(id.0, index));
            peer.rx[usize::from(index)] = Some(RxSa {
                slot,
                info,
                key,
                shared,
            });
        }
    }

    /// The generations `peer` is opened under, by logical slot (init, newest, previous; each
    /// when held).
    pub fn rx_generations(&self, peer: PeerId) -> Vec<(Slot, GenerationInfo)> {
        let Some(p) = self.peers.get(peer.0 as usize) else {
            return Vec::new();
        };
        let mut out: Vec<(Slot, GenerationInfo)> =
            p.rx.iter().flatten().map(|rx| (rx.slot, rx.info)).collect();
        out.sort_by_key(|(slot, _)| *slot as u8);
        out
    }

    /// The generation `peer` is sealed under, if the peer is known.
    pub fn tx_generation(&self, peer: PeerId) -> Option<GenerationInfo> {
        Some(self.peers.get(peer.0 as usize)?.tx.as_ref()?.info)
    }

    /// Number of peers with keys.
    pub fn peer_count(&self) -> usize {
        self.peers.iter().filter(|p| p.tx.is_some()).count()
    }

    /// Seals a batch of inner IP packets for `peer`, exactly like [`crate::Engine::seal_batch`].
    pub fn seal_batch(&self, peer: PeerId, packets: &mut [Packet<'_>]) {
        let data_peer = self.peers.get(peer.0 as usize);
        let Some(tx) = data_peer.and_then(|p| p.tx.as_ref()) else {
            let e = if data_peer.is_some_and(|p| p.tx_handshake_only) {
                SealError::NoKey
            } else {
                SealError::UnknownPeer
            };
            for p in packets.iter_mut() {
                p.state = State::SealFailed(e);
            }
            return;
        };
        let params = SealParams {
            spi: tx.info.spi.get(),
            salt: tx.key.salt,
            esn: self.esn,
            seq_limit: self.seq_limit,
        };
        let valid = Batch(packets).seal_validate(None, self.max_esp, tx.r);
        let first = tx
            .shared
            .next_seq
            .fetch_add(valid, core::sync::atomic::Ordering::Relaxed);
        Batch(packets).seal_prepare(&params, first);
        tx.key.key.seal_batch(packets);
        tx.shared.counters.add(&Batch(packets).seal_finish());
    }

    fn rx(&self, r: SaRef) -> Option<&RxSa> {
        self.peers.get(r.peer() as usize)?.rx[usize::from(r.slot())].as_ref()
    }

    /// Opens a batch of ESP packets in place, exactly like [`crate::Engine::open_batch`]; drops are
    /// added to `drops` (each worker keeps its own).
    pub fn open_batch(&self, packets: &mut [Packet<'_>], drops: &mut DropCounters) {
        for p in packets.iter_mut() {
            p.state = State::Pending;
            p.sa = None;
            if let Err(reason) = self.prepare_open(p) {
                p.state = State::Opened(OpenOutcome::Drop(reason));
            }
        }
        Batch(packets).runs(|r, run| {
            if let Some(RxKey::Keyed(key)) = self.rx(r).map(|rx| &rx.key) {
                key.key.open_batch(run);
            }
        });
        // The window and the counters are shared with every other worker: the window records
        // each run of authenticated packets under one SA with one compare-and-swap per block,
        // and counters are added once per run, not per packet.
        let mut pending: Option<(SaRef, SaCounters)> = None;
        for chunk in packets.chunks_mut(RUN) {
            let recorded = self.record(chunk);
            for (p, recorded) in chunk.iter_mut().zip(recorded) {
                let (outcome, counted) = self.finish_open(p, recorded);
                if let OpenOutcome::Drop(reason) = outcome {
                    drops.add(reason);
                }
                p.state = State::Opened(outcome);
                if let Some((r, counts)) = counted {
                    match &mut pending {
                        Some((current, sum)) if *current == r => sum.add(&counts),
                        _ => {
                            if let Some((previous, sum)) = pending.replace((r, counts)) {
                                self.add_counters(previous, &sum);
                            }
                        }
                    }
                }
            }
        }
        if let Some((r, sum)) = pending {
            self.add_counters(r, &sum);
        }
    }

    /// Records the authenticated packets of `chunk` (at most [`RUN`]) in their SAs' windows,
    /// one call per run of consecutive packets under one SA; returns each packet's result (`Ok`
    /// for packets that are not to be recorded).
    fn record(&self, chunk: &[Packet<'_>]) -> [Result<(), ReplayError>; RUN] {
        let mut recorded = [Ok(()); RUN];
        let mut k = 0;
        while k < chunk.len() {
            let Some(r) = chunk[k].sa else {
                k += 1;
                continue;
            };
            let (mut seqs, mut index, mut n) = ([0u64; RUN], [0usize; RUN], 0);
            let mut end = k;
            while end < chunk.len() && chunk[end].sa == Some(r) {
                if chunk[end].active() {
                    (seqs[n], index[n]) = (chunk[end].seq, end);
                    n += 1;
                }
                end += 1;
            }
            if let Some(rx) = self.rx(r).filter(|_| n > 0) {
                let mut results = [Ok(()); RUN];
                rx.shared.replay.update_run(&seqs[..n], &mut results[..n]);
                for m in 0..n {
                    recorded[index[m]] = results[m];
                }
            }
            k = end;
        }
        recorded
    }

    fn add_counters(&self, r: SaRef, counts: &SaCounters) {
        if let Some(rx) = self.rx(r) {
            rx.shared.counters.add(counts);
        }
    }

    fn prepare_open(&self, p: &mut Packet<'_>) -> Result<(), DropReason> {
        let (header, ct_len) = p.parse_esp(self.max_esp)?;
        let r = self.spis.get(header.spi).ok_or(DropReason::UnknownSpi)?;
        let rx = self.rx(r).ok_or(DropReason::UnknownSpi)?;
        p.sa = Some(r);
        let key = match &rx.key {
            RxKey::Keyed(key) => key,
            RxKey::Handshake(h) => {
                let keyed =
                    keyed_handshake(&h.secret, rx.info, h.backend, h.direction, &header.fresh())
                        .map_err(|_| DropReason::Malformed)?;
                p.open_inline(&header, ct_len, &keyed);
                return Ok(());
            }
        };
        let seq = open_sequence(&header, r.slot() == INIT_SLOT, self.esn, &rx.shared.replay)?;
        p.set_open_parameters(&header, seq, key.salt, self.esn, ct_len);
        Ok(())
    }

    /// The packet's outcome (`recorded`: what its SA's window said) and what it adds to its
    /// SA's counters.
    fn finish_open(
        &self,
        p: &mut Packet<'_>,
        recorded: Result<(), ReplayError>,
    ) -> (OpenOutcome, Option<(SaRef, SaCounters)>) {
        let (r, drop) = match (p.state, p.sa) {
            (State::Pending, Some(r)) => (r, None),
            (State::Opened(OpenOutcome::Drop(reason)), Some(r)) => (r, Some(reason)),
            (State::Opened(o), None) => return (o, None),
            _ => return (OpenOutcome::Drop(DropReason::Truncated), None),
        };
        let Some(rx) = self.rx(r) else {
            return (OpenOutcome::Drop(DropReason::UnknownSpi), None);
        };
        let mut counts = SaCounters::default();
        let outcome = match drop {
            Some(reason) => {
                counts.count_drop(reason);
                OpenOutcome::Drop(reason)
            }
            None => match recorded {
                Err(e) => {
                    counts.replays = 1;
                    OpenOutcome::Drop(DropReason::from(e))
                }
                Ok(()) => {
                    let info = OpenInfo {
                        peer: PeerId(r.peer()),
                        spi: rx.info.spi,
                        generation: rx.info.number,
                        slot: rx.slot,
                        seq: p.seq,
                    };
                    let mut outcome = p.outcome(info);
                    if p.inline {
                        outcome = outcome.as_handshake();
                    }
                    if let OpenOutcome::Data { len, .. } | OpenOutcome::Control { len, .. } =
                        outcome
                    {
                        counts.packets_opened = 1;
                        counts.bytes_opened = len as u64;
                    }
                    outcome
                }
            },
        };
        (outcome, Some((r, counts)))
    }
}
