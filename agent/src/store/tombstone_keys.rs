//! The records of each database that may be tombstones, so that
//! compaction reads those instead of every record.
//!
//! Compaction drops the tombstones every replica has seen. Finding them
//! by a walk of every record cost each database's whole size on the writer
//! thread, every time compaction ran: a million records held every write
//! back for about half a second, once a minute. Deletes are few, so the
//! writer notes the keys it writes a possible tombstone to, and compaction
//! reads just those. What a start does not know, a walk finds, a slice of
//! at most `StoreOptions::compaction_walk_step` records ([`WALK_STEP`]
//! unless set) at each compaction, so that no pass holds the writer for
//! long whatever the database's size.
//!
//! Invariant: every tombstone of a database with a [`Watch`] that is not
//! going round (more than [`MOST_KEYS`] of them) whose key is at or before
//! the walk's place (every one, once walked) has its key in the watch's
//! set. The set may hold more: keys revived, or removed, since.
//! The writer keeps it by noting every record it writes
//! ([`TombstoneKeys::wrote`], called for each `Effect::Record` of a
//! commit, the one way records change), and by forgetting a database whose
//! records change any other way (a repair, a drop), whose walk then starts
//! over.

use std::collections::HashSet;

use fjall::Slice;
use rustc_hash::FxHashMap;

use super::record::format;

/// The most keys kept for one database. Past it the database's keys are
/// dropped and the walk goes round and round instead, a slice at each
/// compaction, until a round finds no more young tombstones than this: a
/// mass delete does not hold its keys in memory twice.
const MOST_KEYS: usize = 1 << 16;

/// The most records one compaction walks, unless set: 60–80 ms of the
/// writer's time on a two-core machine, its records not yet cached
/// (`blazedb-sync-bench --only compaction`), where a whole walk of a
/// million records took about 450 ms.
pub(super) const WALK_STEP: usize = 100_000;

/// Possible tombstones by database id.
#[derive(Debug, Default)]
pub(super) struct TombstoneKeys {
    /// Looked up for every record written: a hash of one multiply.
    watches: FxHashMap<u32, Watch>,
}

/// What is known of one database's tombstones.
#[derive(Debug, Default)]
struct Watch {
    /// Keys that may hold a tombstone.
    keys: HashSet<Slice>,
    walk: Walk,
    /// With more than [`MOST_KEYS`] possible tombstones, none are noted:
    /// the walk goes round, at compaction's pace, and this counts the
    /// tombstones kept in the round so far.
    rounds: Option<usize>,
}

/// How far the walk for tombstones a start did not know of has come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Walk {
    /// Not begun.
    #[default]
    Start,
    /// Every record up to and including this key has been read.
    After(Slice),
    /// Every record has been read: `keys` is all there is.
    Done,
}

/// What one compaction of a database reads for tombstones.
#[derive(Debug)]
pub(super) struct Candidates {
    /// The records noted as possible tombstones.
    pub(super) keys: HashSet<Slice>,
    /// Where a walk goes on from, unless it is done.
    pub(super) walk: Walk,
    /// The walk goes round for good, too many tombstones to note: it is
    /// never done, and need not hurry.
    pub(super) rounds: bool,
}

impl TombstoneKeys {
    /// Notes that record `key` of database `db` was written as `bytes`, or
    /// removed (`None`).
    pub(super) fn wrote(&mut self, db: u32, key: &Slice, bytes: Option<&Slice>) {
        let Some(watch) = self.watches.get_mut(&db) else {
            // No compaction has begun a walk: it will read this record.
            return;
        };
        if watch.rounds.is_some() {
            // The walk's next round reads it.
            return;
        }
        match bytes {
            Some(b) if format::may_be_tombstone(b) => {
                if watch.keys.len() == MOST_KEYS {
                    watch.keys = HashSet::new();
                    watch.rounds = Some(0);
                    if watch.walk == Walk::Done {
                        watch.walk = Walk::Start;
                    }
                } else {
                    watch.keys.insert(key.clone());
                }
            }
            // Most writes are of live records to databases without a
            // tombstone: those cost no hash.
            _ if watch.keys.is_empty() => {}
            _ => {
                watch.keys.remove(key);
            }
        }
    }

    /// What compaction of database `db` reads; from here on, the writes
    /// to `db` are noted.
    pub(super) fn candidates(&mut self, db: u32) -> Candidates {
        let watch = self.watches.entry(db).or_default();
        Candidates {
            keys: watch.keys.clone(),
            walk: watch.walk.clone(),
            rounds: watch.rounds.is_some(),
        }
    }

    /// After a compaction of `db`, once its removals are committed: `left`
    /// are the tombstones it read and kept (too young to drop), and `walk`
    /// how far the walk has come.
    pub(super) fn found(&mut self, db: u32, left: HashSet<Slice>, walk: Walk) {
        let watch = self.watches.entry(db).or_default();
        // Noted since `candidates`: none, as compaction runs on the writer.
        match watch.rounds {
            None if left.len() <= MOST_KEYS => {
                watch.keys = left;
                watch.walk = walk;
            }
            None => {
                watch.keys = HashSet::new();
                watch.walk = walk;
                watch.rounds = Some(left.len());
            }
            Some(kept) => {
                let kept = kept + left.len();
                match walk {
                    // A round with few enough: noting starts again, and so
                    // does a walk, which notes as it goes.
                    Walk::Done if kept <= MOST_KEYS => *watch = Watch::default(),
                    Walk::Done => {
                        watch.walk = Walk::Start;
                        watch.rounds = Some(0);
                    }
                    walk => {
                        watch.walk = walk;
                        watch.rounds = Some(kept);
                    }
                }
            }
        }
    }

    /// Forgets what is known of `db`, whose records changed other than
    /// by the writer's commits.
    pub(super) fn forget(&mut self, db: u32) {
        self.watches.remove(&db);
    }

    /// Forgets every database's.
    pub(super) fn forget_all(&mut self) {
        self.watches.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Slice {
        Slice::from(s.as_bytes())
    }

    #[test]
    fn writes_are_noted_once_a_walk_begins_and_live_ones_unnote_their_key() {
        let mut t = TombstoneKeys::default();
        let live = Slice::from(crate::store::record::StoredRecord::default().encode());
        assert!(!format::may_be_tombstone(&live));
        // A record of another form could be anything: a candidate.
        let legacy = key("legacy");
        t.wrote(1, &key("before"), Some(&legacy));
        let first = t.candidates(1);
        assert!(first.keys.is_empty(), "the walk reads what came before");
        assert_eq!(first.walk, Walk::Start);
        t.found(1, HashSet::from([key("old")]), Walk::After(key("m")));
        t.wrote(1, &key("b"), Some(&legacy));
        t.wrote(1, &key("old"), Some(&live));
        t.wrote(1, &key("c"), None);
        let next = t.candidates(1);
        assert_eq!(next.keys, HashSet::from([key("b")]));
        assert_eq!(next.walk, Walk::After(key("m")));
        t.forget(1);
        assert_eq!(t.candidates(1).walk, Walk::Start);
    }

    #[test]
    fn too_many_possible_tombstones_send_the_walk_round_until_a_round_finds_few() {
        let mut t = TombstoneKeys::default();
        t.found(7, HashSet::new(), Walk::Done);
        let legacy = key("legacy");
        for i in 0..=MOST_KEYS {
            t.wrote(7, &key(&format!("k{i}")), Some(&legacy));
        }
        let over = t.candidates(7);
        assert_eq!((over.keys.len(), over.rounds), (0, true));
        // The walk was done: it goes round again from the start.
        assert_eq!(over.walk, Walk::Start);
        let many: HashSet<Slice> = (0..=MOST_KEYS).map(|i| key(&format!("k{i}"))).collect();
        t.found(7, many.clone(), Walk::Done);
        assert_eq!(t.candidates(7).walk, Walk::Start);
        // A round in two slices that keeps too many goes round again...
        t.found(7, many, Walk::After(key("m")));
        t.found(7, HashSet::new(), Walk::Done);
        let again = t.candidates(7);
        assert_eq!((again.walk, again.rounds), (Walk::Start, true));
        // ...and one that keeps few ends the rounds: a walk that notes.
        t.found(7, HashSet::from([key("k1")]), Walk::Done);
        let calm = t.candidates(7);
        assert_eq!((calm.walk, calm.rounds), (Walk::Start, false));
        t.wrote(7, &key("k2"), Some(&legacy));
        assert_eq!(t.candidates(7).keys, HashSet::from([key("k2")]));
    }
}
