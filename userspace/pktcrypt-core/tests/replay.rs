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
