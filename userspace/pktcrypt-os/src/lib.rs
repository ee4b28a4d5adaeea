//! What pktcrypt's drivers take from the operating system, in one place: the daemon
//! (`pktcrypt`), the C library and the Python module all use these, so the sans-IO core
//! (`pktcrypt-core`) gets its randomness and its time the same way from each.
//!
//! - [`OsRandom`]: the kernel's CSPRNG (`getrandom`) as a [`Random`].
//! - [`now`] / [`now_ns`]: `CLOCK_BOOTTIME`, monotonic and counting across suspend (key
//!   lifetimes and retransmission timers must not stop while a machine sleeps).
//!
//! May touch: `getrandom(2)` and `clock_gettime(2)`. No `unsafe`.
#![forbid(unsafe_code)]

use core::time::Duration;
use pktcrypt_core::Time;
use pktcrypt_core::control::Random;

/// The operating system's random generator. A failure aborts the process: no key may be made
/// without randomness, and there is nothing to fall back to.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        if let Err(e) = getrandom::fill(dest) {
            eprintln!("pktcrypt: the operating system's random generator failed: {e}");
            std::process::abort();
        }
    }
}

/// `CLOCK_BOOTTIME` as a [`Time`].
pub fn now() -> Time {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// `CLOCK_BOOTTIME` in nanoseconds.
pub fn now_ns() -> u64 {
    u64::try_from(now().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_forward_and_the_generator_fills() {
        let a = now_ns();
        let mut b = [0u8; 64];
        OsRandom.fill(&mut b);
        assert!(now_ns() >= a);
        assert_ne!(b, [0u8; 64]);
    }
}
