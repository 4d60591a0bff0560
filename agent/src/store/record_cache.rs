//! Records read by key, kept in memory so that reading them again skips
//! the tree.
//!
//! A get that finds its record in fjall's block cache still costs a bloom
//! filter, an index block search and a data block search; in an agent busy
//! with other work that is most of a get's time. Records read once are kept
//! here, by database and key, up to a budget in bytes (quick_cache's
//! S3-FIFO keeps the ones read again), and the next get is a hash lookup.
//!
//! The writer keeps the cache true, and readers never see a record older
//! than one whose write was acknowledged:
//!
//! - Every record the writer commits or deletes is forgotten here after
//!   its commit and before the write is answered ([`RecordCache::forget`]).
//! - A reader that misses takes a placeholder for the key *before* it reads
//!   fjall, and fills it afterwards. Forgetting the key in between removes
//!   the placeholder, and filling it then fails: a value read before a
//!   commit is never kept after it.
//! - So that a store nobody reads pays nothing, the writer forgets keys
//!   only for databases whose records a reader may have kept. A reader
//!   marks its database, then a `SeqCst` fence, then reads; the writer
//!   commits, then a fence, then reads the marks. Either the writer sees
//!   the mark, or the reader's read comes after the commit.
//! - Anything that changes records outside a commit's effects clears the
//!   whole cache (a repair, a dropped database), or forgets what it
//!   removed (compaction, of the tombstones it drops).

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::Duration;

use fjall::Slice;
use quick_cache::sync::{Cache, DefaultLifecycle, GuardResult, PlaceholderGuard};

/// What an entry costs beside its key and value: the entry, its place in
/// the hash table, the two allocations' headers and rounding, and the
/// ghosts S3-FIFO keeps of evicted keys. Measured: 200,000 records of the
/// bench's size added 62 MiB of resident memory when weighed at 96 bytes
/// over their size (53 MiB by weight), and past the budget the cache held
/// 64–82 MiB with a 64 MiB budget at this figure.
const ENTRY_OVERHEAD: u64 = 144;
/// The bytes of an average entry, to size the hash table up front.
const TYPICAL_ENTRY: u64 = 320;

/// Weighs an entry by the bytes it holds.
#[derive(Clone, Copy)]
struct Weight;

impl quick_cache::Weighter<Vec<u8>, Slice> for Weight {
    fn weight(&self, key: &Vec<u8>, value: &Slice) -> u64 {
        key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
    }
}

type Inner = Cache<Vec<u8>, Slice, Weight, rustc_hash::FxBuildHasher>;

/// A reader's claim on a key it missed: fill it with what it read.
pub(crate) struct Claim<'c>(
    PlaceholderGuard<
        'c,
        Vec<u8>,
        Slice,
        Weight,
        rustc_hash::FxBuildHasher,
        DefaultLifecycle<Vec<u8>, Slice>,
    >,
);

impl Claim<'_> {
    /// Keeps `record`, read from fjall after the claim was taken, unless
    /// the key was written (or the cache cleared) since.
    pub(crate) fn fill(self, record: &[u8]) {
        // A copy: the slice fjall hands out may share a whole block.
        let _ = self.0.insert(Slice::from(record));
    }
}

/// What a lookup found.
pub(crate) enum Lookup<'c> {
    /// The record as stored.
    Hit(Slice),
    /// Not kept: read fjall, then fill the claim if there is one (another
    /// reader may be filling the same key).
    Miss(Option<Claim<'c>>),
}

/// The record cache of a store (see the module docs).
pub(crate) struct RecordCache {
    /// `None` when the budget is zero.
    cache: Option<Inner>,
    /// Databases whose records a reader may have kept, one bit per
    /// database id modulo 64. Bits are never cleared: a shared bit costs
    /// only needless forgetting.
    marked: AtomicU64,
    /// Gets answered from the cache, and gets that read fjall, since the
    /// start; added once per read of many records.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the record cache holds and how often it answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCacheStats {
    /// Bytes held, by the cache's weight (keys, values and a share of its
    /// own structures).
    pub bytes: u64,
    /// Gets answered from the cache since the start.
    pub hits: u64,
    /// Gets that read the store's tables since the start.
    pub misses: u64,
}

impl std::fmt::Debug for RecordCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordCache")
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

fn bit(db: u32) -> u64 {
    1 << (db % 64)
}

/// The bytes before the record's key in a cache key: the database id.
pub(crate) const DB_PREFIX: usize = 4;

/// The cache's key of record `key` in database `db`.
pub(crate) fn cache_key(out: &mut Vec<u8>, db: u32, key: &[u8]) {
    out.clear();
    out.extend_from_slice(&db.to_be_bytes());
    out.extend_from_slice(key);
}

impl RecordCache {
    /// A cache holding up to `budget` bytes; none at all when it is zero.
    pub(crate) fn new(budget: u64) -> Self {
        let cache = (budget > 0).then(|| {
            Inner::with(
                (budget / TYPICAL_ENTRY).max(16) as usize,
                budget,
                Weight,
                rustc_hash::FxBuildHasher,
                DefaultLifecycle::default(),
            )
        });
        RecordCache {
            cache,
            marked: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Counts a read's `hits` and `misses`.
    pub(crate) fn count(&self, hits: u64, misses: u64) {
        if hits > 0 {
            self.hits.fetch_add(hits, Ordering::Relaxed);
        }
        if misses > 0 {
            self.misses.fetch_add(misses, Ordering::Relaxed);
        }
    }

    /// What the cache holds and how often it answered.
    pub(crate) fn stats(&self) -> RecordCacheStats {
        RecordCacheStats {
            bytes: self.bytes(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Bytes held, by the weighter's count.
    pub(crate) fn bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, Inner::weight)
    }

    /// Readers call this once before reading database `db`'s records
    /// through the cache: see the module docs for why the fence.
    pub(crate) fn mark(&self, db: u32) {
        if self.cache.is_none() {
            return;
        }
        if self.marked.load(Ordering::Relaxed) & bit(db) == 0 {
            self.marked.fetch_or(bit(db), Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
    }

    /// Looks up `key` (made by [`cache_key`]).
    pub(crate) fn lookup(&self, key: &[u8]) -> Lookup<'_> {
        let Some(cache) = &self.cache else {
            return Lookup::Miss(None);
        };
        // A zero timeout: a key another reader is filling is read from
        // fjall rather than waited for.
        match cache.get_value_or_guard(key, Some(Duration::ZERO)) {
            GuardResult::Value(v) => Lookup::Hit(v),
            GuardResult::Guard(g) => Lookup::Miss(Some(Claim(g))),
            GuardResult::Timeout => Lookup::Miss(None),
        }
    }

    /// Called by the writer after a commit, with the records it wrote:
    /// forgets those of marked databases.
    pub(crate) fn forget<'k>(&self, written: impl IntoIterator<Item = (u32, &'k [u8])>) {
        let Some(cache) = &self.cache else { return };
        fence(Ordering::SeqCst);
        let marked = self.marked.load(Ordering::SeqCst);
        if marked == 0 {
            return;
        }
        let mut key = Vec::new();
        for (db, k) in written {
            if marked & bit(db) != 0 {
                cache_key(&mut key, db, k);
                cache.remove(key.as_slice());
            }
        }
    }

    /// Forgets everything (and every claim being filled).
    pub(crate) fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(db: u32, k: &str) -> Vec<u8> {
        let mut out = Vec::new();
        cache_key(&mut out, db, k.as_bytes());
        out
    }

    fn fill(cache: &RecordCache, k: &[u8], v: &str) {
        match cache.lookup(k) {
            Lookup::Miss(Some(claim)) => claim.fill(v.as_bytes()),
            _ => panic!("expected a claim"),
        }
    }

    fn hit(cache: &RecordCache, k: &[u8]) -> Option<Vec<u8>> {
        match cache.lookup(k) {
            Lookup::Hit(v) => Some(v.to_vec()),
            Lookup::Miss(_) => None,
        }
    }

    #[test]
    fn a_filled_claim_is_found_again() {
        let cache = RecordCache::new(1 << 20);
        cache.mark(1);
        let k = key(1, "a");
        fill(&cache, &k, "one");
        assert_eq!(hit(&cache, &k), Some(b"one".to_vec()));
        assert_eq!(hit(&cache, &key(2, "a")), None, "databases are apart");
    }

    #[test]
    fn a_write_between_the_claim_and_the_fill_keeps_nothing() {
        let cache = RecordCache::new(1 << 20);
        cache.mark(3);
        let k = key(3, "a");
        let Lookup::Miss(Some(claim)) = cache.lookup(&k) else {
            panic!("expected a claim");
        };
        // The writer commits a new value of the key while the reader holds
        // what it read before.
        cache.forget([(3, b"a".as_slice())]);
        claim.fill(b"old");
        assert_eq!(hit(&cache, &k), None);
    }

    #[test]
    fn a_write_forgets_a_kept_record_of_a_marked_database() {
        let cache = RecordCache::new(1 << 20);
        cache.mark(5);
        fill(&cache, &key(5, "a"), "one");
        fill(&cache, &key(5, "b"), "two");
        cache.forget([(5, b"a".as_slice())]);
        assert_eq!(hit(&cache, &key(5, "a")), None);
        assert_eq!(hit(&cache, &key(5, "b")), Some(b"two".to_vec()));
    }

    #[test]
    fn clearing_forgets_records_and_claims() {
        let cache = RecordCache::new(1 << 20);
        cache.mark(1);
        fill(&cache, &key(1, "a"), "one");
        let Lookup::Miss(Some(claim)) = cache.lookup(&key(1, "b")) else {
            panic!("expected a claim");
        };
        cache.clear();
        claim.fill(b"old");
        assert_eq!(hit(&cache, &key(1, "a")), None);
        assert_eq!(hit(&cache, &key(1, "b")), None);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_budget_holds() {
        let cache = RecordCache::new(64 << 10);
        cache.mark(1);
        let value = "v".repeat(200);
        for i in 0..10_000 {
            fill(&cache, &key(1, &format!("k{i}")), &value);
        }
        assert!(cache.bytes() <= 64 << 10, "{} bytes held", cache.bytes());
        assert!(cache.bytes() > 32 << 10, "{} bytes held", cache.bytes());
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = RecordCache::new(0);
        cache.mark(1);
        assert!(matches!(cache.lookup(&key(1, "a")), Lookup::Miss(None)));
    }
}
