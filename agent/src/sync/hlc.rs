//! The hybrid logical clock that stamps every local write.
//!
//! A reading is wall-clock milliseconds plus a counter (see
//! [`blazedb_proto::Hlc`]). The clock never goes backwards: if the wall
//! clock does, or several writes land in one millisecond, the counter moves
//! instead. The caller passes the wall time in, so the clock is
//! deterministic under test.

use blazedb_proto::Hlc;

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
