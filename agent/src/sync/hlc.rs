//! The hybrid logical clock that stamps every local write.
//!
//! A reading is wall-clock milliseconds plus a counter (see
//! [`blazedb_proto::Hlc`]). The clock never goes backwards: if the wall
//! clock does, or several writes land in one millisecond, the counter moves
//! instead. The caller passes the wall time in, so the clock is
//! deterministic under test.

use blazedb_proto::Hlc;

/// How far ahead of this device's wall clock a clock reading from another
/// device may be before it is held back: ten minutes.
///
/// A device whose clock runs far ahead would otherwise stamp writes that
/// win every conflict until the rest of the world catches up, and drag
/// every clock that sees them forward. Its operations are instead held
/// (not applied, not acknowledged) until this device's wall clock is
/// within the bound; the sender keeps them and sends them again, so they
/// are delayed, never lost, and every replica still ends up with the same
/// state.
pub const MAX_AHEAD_MS: u64 = 10 * 60 * 1000;

/// Whether `hlc` is further ahead of the wall time `now_ms` than
/// [`MAX_AHEAD_MS`] allows.
pub fn too_far_ahead(hlc: Hlc, now_ms: u64) -> bool {
    hlc.millis() > now_ms.saturating_add(MAX_AHEAD_MS)
}

/// A hybrid logical clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that will only ever read later than `last` (the latest
    /// reading already used, e.g. recovered from the op log).
    pub fn new(last: Hlc) -> Self {
        HlcClock { last }
    }

    /// The latest reading handed out.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Takes in a reading from another device, so that every later local
    /// reading is after it (and after the events it orders).
    pub fn observe(&mut self, remote: Hlc) {
        self.last = self.last.max(remote);
    }

    /// A fresh reading for a local event at wall time `now_ms`, later than
    /// every earlier one.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let next = if now_ms > self.last.millis() {
            Hlc::new(now_ms, 0)
        } else if self.last.counter() < u16::MAX {
            Hlc(self.last.0 + 1)
        } else {
            // The counter is spent: borrow the next millisecond.
            Hlc::new(self.last.millis() + 1, 0)
        };
        self.last = next;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_wall_clock_when_it_moves_forward() {
        let mut c = HlcClock::new(Hlc::default());
        assert_eq!(c.tick(100), Hlc::new(100, 0));
        assert_eq!(c.tick(105), Hlc::new(105, 0));
    }

    #[test]
    fn counts_within_a_millisecond_and_when_the_wall_clock_goes_back() {
        let mut c = HlcClock::new(Hlc::new(100, 0));
        assert_eq!(c.tick(100), Hlc::new(100, 1));
        assert_eq!(c.tick(50), Hlc::new(100, 2));
    }

    #[test]
    fn a_spent_counter_moves_to_the_next_millisecond() {
        let mut c = HlcClock::new(Hlc::new(100, u16::MAX));
        assert_eq!(c.tick(100), Hlc::new(101, 0));
    }

    #[test]
    fn readings_after_observing_a_remote_one_are_later() {
        let mut c = HlcClock::new(Hlc::new(100, 0));
        c.observe(Hlc::new(500, 3));
        assert_eq!(c.tick(200), Hlc::new(500, 4));
        c.observe(Hlc::new(10, 0));
        assert_eq!(c.tick(200), Hlc::new(500, 5));
    }

    #[test]
    fn readings_too_far_ahead_are_recognised() {
        let now = 1_000_000_000;
        assert!(!too_far_ahead(Hlc::new(now + MAX_AHEAD_MS, 9), now));
        assert!(too_far_ahead(Hlc::new(now + MAX_AHEAD_MS + 1, 0), now));
        assert!(!too_far_ahead(Hlc::new(0, 0), now));
    }

    #[test]
    fn never_repeats_a_reading() {
        let mut c = HlcClock::new(Hlc::default());
        let mut prev = Hlc::default();
        for now in [5, 5, 4, 3, 9, 9, 1, 10] {
            let t = c.tick(now);
            assert!(t > prev);
            prev = t;
        }
    }
}
