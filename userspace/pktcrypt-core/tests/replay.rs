//! The compact 64-packet window against the full window, and the hand-overs between them.

use pktcrypt_core::replay::{CompactWindow, ReplayError, ReplayWindow};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A compact window answers every check, update and ESN inference exactly as a full window
    /// of 64 packets does, through any history (numbers clustered so that duplicates, reordering
    /// and jumps past the window all happen).
    #[test]
    fn compact_behaves_like_a_64_packet_window(
        ops in prop::collection::vec((0u64..4, 0u64..200, any::<u32>()), 1..400)
    ) {
        let full = ReplayWindow::new(64).expect("window");
        let mut compact = CompactWindow::default();
        let mut base = 0u64;
        for (kind, offset, low) in ops {
            let seq = base + offset;
            match kind {
                0 => prop_assert_eq!(compact.check(seq), full.check(seq)),
                1 => prop_assert_eq!(compact.infer_esn(low), full.infer_esn(low)),
                // Jumps: move the base far ahead, across the 2^32 boundary now and then.
                2 if offset < 5 => base += 1 << 31,
                _ => prop_assert_eq!(compact.update(seq), full.update(seq)),
            }
            prop_assert_eq!(compact.top(), full.top());
        }
    }

    /// Compacting a full window keeps its last 64 numbers exactly and refuses everything older;
    /// expanding gives back a full window with the same answers.
    #[test]
    fn compact_and_expand_keep_the_last_64(
        seqs in prop::collection::vec(1u64..3000, 1..300),
        probe in prop::collection::vec(0u64..3100, 50)
    ) {
        let full = ReplayWindow::new(1024).expect("window");
        for s in &seqs {
            let _ = full.update(*s);
        }
        let compact = full.compact();
        let again = compact.expand(1024).expect("window");
        let top = full.top();
        for p in probe {
            if p > top || top - p < 64 {
                prop_assert_eq!(compact.check(p), full.check(p), "seq {}", p);
                prop_assert_eq!(again.check(p), full.check(p), "seq {}", p);
            } else {
                // Older: never accepted again, whatever the full window knew.
                prop_assert!(compact.check(p).is_err());
                prop_assert!(again.check(p).is_err());
            }
        }
    }
}

#[test]
fn compact_window_edges() {
    let mut w = CompactWindow::default();
    assert_eq!(w.check(0), Err(ReplayError::TooOld));
    assert_eq!(w.update(5), Ok(()));
    assert_eq!(w.update(5), Err(ReplayError::Replayed));
    assert_eq!(w.update(3), Ok(()));
    assert_eq!(w.update(70), Ok(()));
    // 70 - 6 = 64 back: too old; 7 is the oldest still tracked.
    assert_eq!(w.check(6), Err(ReplayError::TooOld));
    assert_eq!(w.check(7), Ok(()));
    assert_eq!(w.update(7), Ok(()));
    assert_eq!(w.check(7), Err(ReplayError::Replayed));
    let floor = CompactWindow::with_floor(100);
    assert_eq!(floor.check(100), Err(ReplayError::Replayed));
    assert_eq!(floor.check(99), Err(ReplayError::Replayed));
    assert_eq!(floor.check(101), Ok(()));
}

/// What a window of `size` packets must answer, kept as plainly as possible: the highest number
/// recorded and every number recorded.
struct Model {
    size: u64,
    top: u64,
    seen: std::collections::BTreeSet<u64>,
}

impl Model {
    fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 || (seq <= self.top && self.top - seq >= self.size) {
            Err(ReplayError::TooOld)
        } else if self.seen.contains(&seq) {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    fn update(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        self.seen.insert(seq);
        self.top = self.top.max(seq);
        Ok(())
    }
}

/// Every window size the configuration accepts, the largest (8192) included.
const SIZES: [u32; 5] = [64, 128, 1024, 4096, 8192];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every size, 8192 included, answers each check and update (single or in runs) exactly as
    /// the plain model does, through histories that reorder, duplicate and jump past the window
    /// (numbers spread over three windows' width, plus jumps of one to two windows).
    #[test]
    fn every_window_size_behaves_like_the_model(
        size_index in 0usize..SIZES.len(),
        ops in prop::collection::vec((0u8..16, 0u64..3, 0u64..8192), 1..2000)
    ) {
        let size = SIZES[size_index];
        let w = ReplayWindow::new(size).expect("window");
        let mut model = Model { size: u64::from(size), top: 0, seen: Default::default() };
        let mut base = 1u64;
        for (kind, third, offset) in ops {
            // A number within three windows of the base, from the first three numbers of each
            // 32-number block: few enough numbers that large windows see duplicates and blocks
            // sharing a word of the ring, spread over the window's whole width.
            let blocks = u64::from(size) / 32;
            let seq = base + third * u64::from(size) + (offset % blocks) * 32 + offset % 3;
            match kind {
                0..=3 => prop_assert_eq!(w.check(seq), model.check(seq), "check {}", seq),
                // Rare jumps, so that histories fill the window between them.
                4 if offset % 16 == 0 => base += u64::from(size) * (1 + third),
                5 => {
                    // A run of consecutive numbers from `seq`, some repeated.
                    let seqs: Vec<u64> = (0..8).map(|i| seq + i / 2 * (i % 3)).collect();
                    let mut out = vec![Ok(()); seqs.len()];
                    w.update_run(&seqs, &mut out);
                    for (s, got) in seqs.iter().zip(out) {
                        prop_assert_eq!(got, model.update(*s), "run at {}", s);
                    }
                }
                _ => prop_assert_eq!(w.update(seq), model.update(seq), "update {}", seq),
            }
            prop_assert_eq!(w.top(), model.top);
        }
    }
}

/// The edges of each window size, 8192 included: with `top` recorded, `top - size + 1` is the
/// oldest number accepted and `top - size` is too old; each opens once.
#[test]
fn window_edges_at_every_size() {
    for size in SIZES {
        let w = ReplayWindow::new(size).expect("window");
        let top = 3 * u64::from(size) + 17;
        w.update(top).expect("top");
        let oldest = top - u64::from(size) + 1;
        assert_eq!(w.check(oldest - 1), Err(ReplayError::TooOld), "size {size}");
        assert_eq!(
            w.update(oldest),
            Ok(()),
            "size {size}: oldest in the window"
        );
        assert_eq!(w.update(oldest), Err(ReplayError::Replayed), "size {size}");
        // Every number between is accepted exactly once.
        for s in oldest + 1..top {
            assert_eq!(w.update(s), Ok(()), "size {size}: {s}");
        }
        for s in oldest..=top {
            assert_eq!(w.check(s), Err(ReplayError::Replayed), "size {size}: {s}");
        }
        // One more at the top slides the window by one: `oldest` falls out.
        w.update(top + 1).expect("slide");
        assert_eq!(w.check(oldest), Err(ReplayError::TooOld), "size {size}");
    }
    for bad in [0, 32, 65, 8193, 8256, 16384] {
        assert!(ReplayWindow::new(bad).is_err(), "size {bad} accepted");
    }
}

/// ESN inference with the largest window: a low half just left of an 8192-packet window across
/// the 2^32 boundary is placed before the wrap, one just right of the top after it.
#[test]
fn esn_inference_with_an_8192_packet_window() {
    let w = ReplayWindow::new(8192).expect("window");
    let top = (1u64 << 32) + 100;
    w.update(top).expect("top");
    // 8191 behind the top: before the wrap, at 2^32 - 8091.
    let behind = top - 8191;
    assert_eq!(w.infer_esn(behind as u32), Some(behind));
    assert_eq!(w.check(behind), Ok(()));
    assert_eq!(w.check(behind - 1), Err(ReplayError::TooOld));
    assert_eq!(w.infer_esn((top + 1) as u32), Some(top + 1));
}
