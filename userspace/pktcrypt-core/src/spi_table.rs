//! SPI → SA lookup table: open addressing with linear probing and backward-shift deletion.
//!
//! A key server holding a million clients keeps three million SPIs and replaces one with a new
//! one at every rekey. A general-purpose hash map (SwissTable) marks removed entries with
//! tombstones, and under that steady churn rehashes into a table twice the size; this one
//! deletes by shifting the following entries back, so it never holds tombstones and its size
//! depends only on how many SPIs are live. Each slot is 8 bytes (SPI and [`SaRef`]); the table
//! grows by half when the load would pass 4/5 (any size, not only powers of two), so a key
//! server spends 10–15 bytes per SPI at any client count. Lookups hash the SPI once (Fibonacci
//! hashing, the product's high bits mapped onto the table: provisioned SPIs are often
//! sequential) and compare whole slots of one or two cache lines.
//!
//! Only SPIs we hold are inserted (random or configured), so an attacker chooses lookups, never
//! the layout: a lookup of an unknown SPI stops at the first empty slot.

use crate::ids::SaRef;

/// SPI 0 is reserved (RFC 4303) and never valid: it marks an empty slot.
const EMPTY: u64 = 0;

/// Smallest table (slots).
const MIN_SLOTS: usize = 16;

#[derive(Clone)]
pub(crate) struct SpiTable {
    /// `spi << 32 | SaRef`, or [`EMPTY`].
    slots: Box<[u64]>,
    len: usize,
}

impl Default for SpiTable {
    fn default() -> Self {
        Self {
            slots: vec![EMPTY; MIN_SLOTS].into_boxed_slice(),
            len: 0,
        }
    }
}

impl core::fmt::Debug for SpiTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SpiTable")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .finish()
    }
}

fn pack(spi: u32, r: SaRef) -> u64 {
    u64::from(spi) << 32 | u64::from(r.raw())
}

fn spi_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

impl SpiTable {
    fn home(&self, spi: u32) -> usize {
        let h = u64::from(spi).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Lemire's range reduction: the high bits of h, scaled onto the table.
        ((u128::from(h) * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    /// The slot holding `spi`, if present.
    fn find(&self, spi: u32) -> Option<usize> {
        if spi == 0 {
            return None;
        }
        let mut i = self.home(spi);
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if spi_of(s) == spi {
                return Some(i);
            }
            i = self.next(i);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, spi: u32) -> Option<SaRef> {
        self.find(spi)
            .map(|i| SaRef::from_raw(self.slots[i] as u32))
    }

    pub(crate) fn contains(&self, spi: u32) -> bool {
        self.find(spi).is_some()
    }

    /// Inserts or replaces; returns the previous entry. SPI 0 is never stored.
    pub(crate) fn insert(&mut self, spi: u32, r: SaRef) -> Option<SaRef> {
        if spi == 0 {
            return None;
        }
        if let Some(i) = self.find(spi) {
            let old = SaRef::from_raw(self.slots[i] as u32);
            self.slots[i] = pack(spi, r);
            return Some(old);
        }
        // Keep the load at most 4/5.
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.resize(self.slots.len() + self.slots.len() / 2);
        }
        self.place(pack(spi, r));
        self.len += 1;
        None
    }

    fn place(&mut self, entry: u64) {
        let mut i = self.home(spi_of(entry));
        while self.slots[i] != EMPTY {
            i = self.next(i);
        }
        self.slots[i] = entry;
    }

    fn resize(&mut self, slots: usize) {
        let old = core::mem::replace(
            &mut self.slots,
            vec![EMPTY; slots.max(MIN_SLOTS)].into_boxed_slice(),
        );
        for e in old.iter().copied().filter(|&e| e != EMPTY) {
            self.place(e);
        }
    }

    /// Removes `spi`; the entries after it in its cluster shift back so no tombstone is left.
    pub(crate) fn remove(&mut self, spi: u32) -> Option<SaRef> {
        let mut hole = self.find(spi)?;
        let removed = SaRef::from_raw(self.slots[hole] as u32);
        let mut j = hole;
        loop {
            j = self.next(j);
            let s = self.slots[j];
            if s == EMPTY {
                break;
            }
            // The entry at j may move to the hole unless its home lies cyclically in (hole, j].
            let home = self.home(spi_of(s));
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        // Shrink when far below capacity (a key server that lost most of its clients).
        if self.slots.len() > MIN_SLOTS && self.len * 5 < self.slots.len() {
            self.resize(self.slots.len() / 2);
        }
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u32),
        Remove(u32),
        Get(u32),
    }

    fn op(spis: u32) -> impl Strategy<Value = Op> {
        // A small SPI space, so inserts collide with, replace and remove each other; SPI 0
        // included to check it is never stored.
        prop_oneof![
            (0..spis, 0..1000u32).prop_map(|(s, r)| Op::Insert(s, r)),
            (0..spis).prop_map(Op::Remove),
            (0..spis).prop_map(Op::Get),
        ]
    }

    proptest! {
        /// Same answers as a standard map through any mix of inserts, replacements, removals
        /// and lookups, across growth and shrinking; the size never depends on history.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec(op(300), 1..2000)) {
            let mut t = SpiTable::default();
            let mut m: HashMap<u32, u32> = HashMap::new();
            for o in ops {
                match o {
                    Op::Insert(s, r) => {
                        let got = t.insert(s, SaRef::new(r, 1)).map(SaRef::peer);
                        let want = if s == 0 { None } else { m.insert(s, r) };
                        prop_assert_eq!(got, want);
                    }
                    Op::Remove(s) => {
                        prop_assert_eq!(t.remove(s).map(SaRef::peer), m.remove(&s));
                    }
                    Op::Get(s) => {
                        prop_assert_eq!(t.get(s).map(SaRef::peer), m.get(&s).copied());
                    }
                }
                prop_assert_eq!(t.len(), m.len());
            }
            for (s, r) in &m {
                prop_assert_eq!(t.get(*s).map(SaRef::peer), Some(*r));
            }
            prop_assert!(t.len() * 5 <= t.slots.len() * 4);
        }
    }

    #[test]
    fn churn_does_not_grow_the_table() {
        // A key server's pattern: a fixed population, each rekey replaces one SPI.
        let mut t = SpiTable::default();
        let mut live: Vec<u32> = (0..30_000u32).map(|i| 0x1000_0000 + i).collect();
        for (i, s) in live.iter().enumerate() {
            t.insert(*s, SaRef::new(i as u32, 0));
        }
        let slots = t.slots.len();
        let mut x = 0x2545_f491_u32;
        for round in 0..300_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let k = (x as usize) % live.len();
            assert!(t.remove(live[k]).is_some());
            let fresh = x | 0x100;
            if t.contains(fresh) {
                live[k] = 0x1000_0000 + k as u32;
            } else {
                live[k] = fresh;
            }
            t.insert(live[k], SaRef::new(round, 1));
        }
        assert_eq!(t.len(), 30_000);
        assert_eq!(t.slots.len(), slots, "churn grew the table");
        assert!(live.iter().all(|s| t.contains(*s)));
    }

    #[test]
    fn spi_zero_and_unknown_spis_miss() {
        let mut t = SpiTable::default();
        assert_eq!(t.insert(0, SaRef::new(1, 0)), None);
        assert_eq!(t.len(), 0);
        t.insert(0x1234, SaRef::new(7, 2));
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(0x1235), None);
        assert_eq!(t.get(0x1234).map(|r| (r.peer(), r.slot())), Some((7, 2)));
    }
}
