//! Which change log a cursor belongs to.
//!
//! Cursors number a database's change log on this replica. A start that
//! cannot vouch for the log's end (after a crash, a restore, a copy, a
//! damaged journal) may have lost changes that subscribers already saw,
//! and the cursors past its recovered head are then handed out again for
//! other changes. So such a start gives the log a new id and remembers,
//! for each earlier id, the last cursor that still names the same change.
//! A subscriber that resumes with its cursor and the log id it came from
//! is refused when the cursor is no longer vouched for, instead of being
//! fed changes under numbers it has seen before.

use serde::{Deserialize, Serialize};

/// How many earlier ids are kept: a subscriber older than that many
/// unclean starts reads the records again.
const KEPT: usize = 16;

/// A database's change-log id and its earlier ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogId {
    /// The id of the change log as it runs now (0 for a store made before
    /// ids were kept).
    pub(crate) id: u64,
    /// Earlier ids, oldest first, each with the recovered head of the start
    /// that replaced it: its cursors up to that head kept their meaning.
    pub(crate) earlier: Vec<(u64, u64)>,
}

impl LogId {
    /// The id of a new database's log.
    pub(crate) fn new() -> LogId {
        LogId {
            id: random_id(),
            earlier: Vec::new(),
        }
    }

    /// Moves to a new id at a start that vouches only for cursors up to
    /// `head`.
    pub(crate) fn restart(&mut self, head: u64) {
        self.earlier.push((self.id, head));
        if self.earlier.len() > KEPT {
            self.earlier.remove(0);
        }
        self.id = loop {
            let id = random_id();
            if id != self.id && self.earlier.iter().all(|(e, _)| *e != id) {
                break id;
            }
        };
    }

    /// The last cursor of log `id` that still names the same change now:
    /// `None` for the current id (every cursor up to the head does), the
    /// smallest of the recovered heads since `id` was replaced for an
    /// earlier one, and `Some(0)` for an id this log never had.
    pub(crate) fn vouched(&self, id: u64) -> Option<u64> {
        if id == self.id {
            return None;
        }
        let Some(at) = self.earlier.iter().rposition(|(e, _)| *e == id) else {
            return Some(0);
        };
        self.earlier[at..].iter().map(|(_, head)| *head).min()
    }
}

fn random_id() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    // Never 0, which stands for a log made before ids were kept.
    u64::from_be_bytes(b).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_keeps_its_meaning_only_up_to_every_later_recovered_head() {
        let mut log = LogId::new();
        let first = log.id;
        assert_eq!(log.vouched(first), None);
        log.restart(40);
        let second = log.id;
        assert_ne!(second, first);
        assert_eq!(log.vouched(first), Some(40));
        assert_eq!(log.vouched(second), None);
        // A later start recovered less than the first one had (a restore
        // of an older copy): the first id's cursors past 30 went too.
        log.restart(30);
        assert_eq!(log.vouched(first), Some(30));
        assert_eq!(log.vouched(second), Some(30));
        log.restart(90);
        assert_eq!(log.vouched(second), Some(30));
        assert_eq!(log.vouched(12345), Some(0), "an id this log never had");
        for head in 0..KEPT as u64 {
            log.restart(100 + head);
        }
        assert_eq!(log.earlier.len(), KEPT);
        assert_eq!(log.vouched(first), Some(0), "forgotten after {KEPT} starts");
    }
}
