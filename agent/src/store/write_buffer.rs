//! One memory budget for the memtables of every database in the store.
//!
//! fjall flushes a keyspace's memtable when that one memtable outgrows
//! its own limit, so what a store holds in memory grew with the number of
//! databases (three keyspaces each), and a small limit per keyspace made
//! one busy database flush, and compact, four times as often as fjall's
//! default would: with 16 MiB a keyspace, 200,000 puts spent a fifth of
//! the agent's CPU in flushes. Here a keyspace may grow as large as the
//! whole budget, and whenever the memtables being written to hold more
//! than the budget together, the writer seals the largest for flushing,
//! as many as it takes to bring the others back within it.
//! Memtables already sealed are on their way to disk and do not count.
//!
//! Once the writer has been idle for a second, it seals every memtable
//! that holds at least a 64th of the budget, when together they hold more
//! than a quarter of it: as a database's background writer cleans its
//! buffers between bursts. The flushes run while nothing waits on them,
//! and the next burst finds the budget empty instead of flushing what
//! the last one left; memory goes back, and a start after a crash has
//! less journal to replay. Records then are read from disk tables
//! (through the block cache) until they are written again.

use std::time::Duration;

use fjall::AbstractTree;

use super::DbState;

/// The most the memtables being written to hold together, by fjall's
/// count (keys and values): fjall's default for a single keyspace.
pub(super) const WRITE_BUFFER_BYTES: u64 = 64 * 1024 * 1024;

/// While fjall's count of what the memtables hold stays over budget, it
/// grows by at least this much between two looks at every keyspace,
/// unless a flush lowered it. The count takes a memtable off only once it
/// is flushed, so it stays over budget for a whole flush, while a look
/// costs a lock per keyspace.
const LOOK_EVERY_BYTES: u64 = 1024 * 1024;

/// How long the writer is idle before it flushes the memtables: longer
/// than a pause inside a burst of writes, as sealing a memtable early
/// makes one more table for compaction to merge.
pub(super) const IDLE_FLUSH_AFTER: Duration = Duration::from_secs(1);

/// Keeps the store's memtables within their budget; owned by the writer.
#[derive(Debug)]
pub(super) struct WriteBuffer {
    budget: u64,
    /// fjall's count when every keyspace was last looked at.
    looked_at: Option<u64>,
}

impl WriteBuffer {
    /// A budget of `budget` bytes.
    pub(super) fn new(budget: u64) -> WriteBuffer {
        WriteBuffer {
            budget,
            looked_at: None,
        }
    }

    /// Whether the memtables may hold more than the budget, and are due
    /// to be looked at: `held` is fjall's count of what all memtables hold,
    /// flushing ones included, which is never less than what the active
    /// ones hold.
    pub(super) fn due(&mut self, held: u64) -> bool {
        if held <= self.budget {
            self.looked_at = None;
            return false;
        }
        // Looked at lately, and nothing flushed since (which would have
        // lowered the count and left room to fill before the next look).
        if self
            .looked_at
            .is_some_and(|at| (at..at.saturating_add(LOOK_EVERY_BYTES)).contains(&held))
        {
            return false;
        }
        self.looked_at = Some(held);
        true
    }

    /// Seals the largest memtables being written to for flushing, as
    /// many as it takes to bring those left within the budget.
    pub(super) fn seal_over_budget<'a>(
        &self,
        dbs: impl IntoIterator<Item = &'a DbState>,
    ) -> Result<(), fjall::Error> {
        let mut active: Vec<(u64, &fjall::Keyspace)> = dbs
            .into_iter()
            .flat_map(|db| db.keyspaces())
            .map(|ks| (active_bytes(ks), ks))
            .collect();
        let mut held: u64 = active.iter().map(|(size, _)| size).sum();
        active.sort_unstable_by_key(|(size, _)| std::cmp::Reverse(*size));
        for (size, ks) in active {
            if held <= self.budget {
                break;
            }
            ks.rotate_memtable()?;
            held -= size;
        }
        Ok(())
    }

    /// Whether the writer, idle for `idle`, should seal the memtables
    /// now, `held` being fjall's count of what they hold: once it has
    /// been idle for [`IDLE_FLUSH_AFTER`] and they hold more than a
    /// quarter of the budget.
    pub(super) fn idle_flush_due(&self, idle: Duration, held: u64) -> bool {
        idle >= IDLE_FLUSH_AFTER && held > self.budget / 4
    }

    /// Seals every memtable being written to that holds at least a 64th
    /// of the budget: sealing one that holds less would only make a table
    /// for compaction to merge again.
    pub(super) fn seal_all<'a>(
        &self,
        dbs: impl IntoIterator<Item = &'a DbState>,
    ) -> Result<(), fjall::Error> {
        for ks in dbs.into_iter().flat_map(|db| db.keyspaces()) {
            if active_bytes(ks) >= self.budget / 64 {
                ks.rotate_memtable()?;
            }
        }
        Ok(())
    }
}

/// What the memtable a keyspace writes to holds, by fjall's count.
pub(super) fn active_bytes(ks: &fjall::Keyspace) -> u64 {
    ks.tree.active_memtable().size()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn over_budget_it_looks_again_after_a_mib_or_a_flush() {
        let mut buffer = WriteBuffer::new(8 * MIB);
        assert!(!buffer.due(8 * MIB), "at the budget");
        assert!(buffer.due(9 * MIB), "over it");
        assert!(!buffer.due(9 * MIB + MIB / 2), "half a MiB later");
        assert!(buffer.due(10 * MIB), "a MiB later");
        assert!(buffer.due(9 * MIB), "a flush lowered the count");
        assert!(!buffer.due(9 * MIB + 1));
        assert!(!buffer.due(4 * MIB), "under the budget again");
        assert!(buffer.due(8 * MIB + 1), "over it again");
    }

    #[test]
    fn an_idle_writer_flushes_after_a_second_when_a_quarter_is_held() {
        let buffer = WriteBuffer::new(64 * MIB);
        let second = Duration::from_secs(1);
        assert!(buffer.idle_flush_due(second, 17 * MIB));
        assert!(!buffer.idle_flush_due(second, 16 * MIB), "a quarter");
        assert!(
            !buffer.idle_flush_due(second / 2, 60 * MIB),
            "not idle long"
        );
    }
}
