//! The records of each database that may be tombstones, so that
//! compaction reads those instead of every record.
//!
//! Compaction drops the tombstones every replica has seen. Finding them
//! by a walk of every record cost each database's whole size on the writer
//! thread, every time compaction ran: a million records held every write
//! back for the order of half a second, once a minute. Deletes are few, so
//! the writer notes the keys it writes a possible tombstone to, and a
//! compaction reads just those.
//!
//! Invariant: for a database whose keys are known, every record that is a
//! tombstone has its key in the set (the set may hold more: keys revived,
//! or removed, since). The writer keeps it by noting every record it
//! writes ([`TombstoneKeys::wrote`], called for each `Effect::Record` of a
//! commit, the one way records change), and by forgetting a database
//! whose records change any other way (a repair, a drop). What is not
//! known (after a start, a repair or an overflow) is found by one walk.

use std::collections::{HashMap, HashSet};

use fjall::Slice;

use super::record::format;

/// The most keys kept for one database. Past it the database's set is
/// dropped and the next compaction walks every record again, as before:
/// a mass delete does not hold its keys in memory twice.
const MOST_KEYS: usize = 1 << 16;

/// Possible tombstones by database id, for the databases whose every
/// tombstone is known.
#[derive(Debug, Default)]
pub(super) struct TombstoneKeys {
    known: HashMap<u32, HashSet<Slice>>,
}

/// Where compaction finds the tombstones of one database.
#[derive(Debug)]
pub(super) enum Candidates {
    /// Not known: every record is read, and [`TombstoneKeys::found`]
    /// told what is left.
    Walk,
    /// Only these records may be tombstones.
    Keys(Vec<Slice>),
}

impl TombstoneKeys {
    /// Notes that record `key` of database `db` was written as `bytes`, or
    /// removed (`None`).
    pub(super) fn wrote(&mut self, db: u32, key: &Slice, bytes: Option<&Slice>) {
        let Some(keys) = self.known.get_mut(&db) else {
            return;
        };
        match bytes {
            Some(b) if format::may_be_tombstone(b) => {
                if keys.len() == MOST_KEYS {
                    self.known.remove(&db);
                } else {
                    keys.insert(key.clone());
                }
            }
            // Most writes are of live records to databases without a
            // tombstone: those cost no hash.
            _ if keys.is_empty() => {}
            _ => {
                keys.remove(key);
            }
        }
    }

    /// Where compaction of database `db` looks for tombstones.
    pub(super) fn candidates(&self, db: u32) -> Candidates {
        match self.known.get(&db) {
            Some(keys) => Candidates::Keys(keys.iter().cloned().collect()),
            None => Candidates::Walk,
        }
    }

    /// After a compaction of `db`: `left` are all the tombstones it holds
    /// now (those too young to drop).
    pub(super) fn found(&mut self, db: u32, left: HashSet<Slice>) {
        if left.len() <= MOST_KEYS {
            self.known.insert(db, left);
        } else {
            self.known.remove(&db);
        }
    }

    /// Forgets what is known of `db`, whose records changed other than
    /// by the writer's commits.
    pub(super) fn forget(&mut self, db: u32) {
        self.known.remove(&db);
    }

    /// Forgets every database's.
    pub(super) fn forget_all(&mut self) {
        self.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Slice {
        Slice::from(s.as_bytes())
    }

    #[test]
    fn an_unknown_database_is_walked_and_then_only_its_tombstones_are_read() {
        let mut t = TombstoneKeys::default();
        let live = Slice::from(crate::store::record::StoredRecord::default().encode());
        assert!(!format::may_be_tombstone(&live));
        t.wrote(1, &key("a"), Some(&live));
        assert!(matches!(t.candidates(1), Candidates::Walk));
        t.found(1, HashSet::from([key("old")]));
        assert!(matches!(t.candidates(1), Candidates::Keys(k) if k == [key("old")]));
        // A record of another form could be anything, so it is a candidate.
        t.wrote(1, &key("b"), Some(&key("legacy")));
        t.wrote(1, &key("old"), Some(&live));
        t.wrote(1, &key("c"), None);
        let Candidates::Keys(keys) = t.candidates(1) else {
            panic!("db 1 is known");
        };
        assert_eq!(keys, [key("b")]);
        t.forget(1);
        assert!(matches!(t.candidates(1), Candidates::Walk));
    }

    #[test]
    fn too_many_possible_tombstones_fall_back_to_a_walk() {
        let mut t = TombstoneKeys::default();
        t.found(7, HashSet::new());
        let legacy = key("legacy");
        for i in 0..=MOST_KEYS {
            t.wrote(7, &key(&format!("k{i}")), Some(&legacy));
        }
        assert!(matches!(t.candidates(7), Candidates::Walk));
        t.found(7, (0..=MOST_KEYS).map(|i| key(&format!("k{i}"))).collect());
        assert!(matches!(t.candidates(7), Candidates::Walk));
    }
}
