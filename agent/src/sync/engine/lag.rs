//! How far each peer is behind this replica: the operations it has not
//! acknowledged, and how long the oldest of them has been here. Reading
//! the log for the oldest one's clock would cost a scan, so the engine
//! remembers instead when its vector grew: per database and origin, the
//! seq reached at each moment, at most one mark per [`GRAIN_MS`].

use std::collections::{BTreeMap, VecDeque};

use blazedb_proto::{DeviceId, VersionVector};

use super::{Engine, sends, takes};
use crate::sync::SyncStore;

/// Marks closer together than this are merged into one.
const GRAIN_MS: u64 = 100;

/// The most marks kept per database and origin: under constant writes
/// about 100 s. An older lag is reported as the oldest mark's age.
const MAX_MARKS: usize = 1024;

/// When this replica's vector grew, per database and origin.
#[derive(Debug, Default)]
pub(super) struct Arrivals {
    dbs: BTreeMap<String, DbArrivals>,
}

#[derive(Debug, Default)]
struct DbArrivals {
    seen: VersionVector,
    /// `(seq reached, when the grain began)`, oldest first.
    marks: BTreeMap<DeviceId, VecDeque<(u64, u64)>>,
}

impl Arrivals {
    /// Notes that `db` holds `vector` at `now`.
    pub(super) fn note(&mut self, db: &str, vector: &VersionVector, now: u64) {
        let a = match self.dbs.get_mut(db) {
            Some(a) => a,
            None => self.dbs.entry(db.to_owned()).or_default(),
        };
        for (origin, &seq) in vector.iter() {
            if seq <= a.seen.get(origin) {
                continue;
            }
            a.seen.set(*origin, seq);
            let q = a.marks.entry(*origin).or_default();
            match q.back_mut() {
                Some(last) if last.1 + GRAIN_MS > now => last.0 = seq,
                _ => {
                    q.push_back((seq, now));
                    if q.len() > MAX_MARKS {
                        q.pop_front();
                    }
                }
            }
        }
    }

    /// When the oldest operation of `mine` beyond `acked` arrived.
    fn oldest_beyond(&self, db: &str, mine: &VersionVector, acked: &VersionVector) -> Option<u64> {
        let a = self.dbs.get(db)?;
        mine.iter()
            .filter(|(origin, seq)| **seq > acked.get(origin))
            .filter_map(|(origin, _)| {
                let have = acked.get(origin);
                let q = a.marks.get(origin)?;
                q.iter()
                    .find(|(seq, _)| *seq > have)
                    .or(q.front())
                    .map(|m| m.1)
            })
            .min()
    }

    /// Forgets a database.
    pub(super) fn forget(&mut self, db: &str) {
        self.dbs.remove(db);
    }
}

/// Where sync of one database with one connected peer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReport {
    /// The peer.
    pub peer: DeviceId,
    /// The database.
    pub db: String,
    /// This replica sends the database's operations to the peer.
    pub sending: bool,
    /// This replica takes the database's operations from the peer.
    pub taking: bool,
    /// The database is end-to-end encrypted.
    pub sealed: bool,
    /// Operations this replica holds that the peer has not acknowledged,
    /// when it sends to the peer and the peer has said what it holds.
    pub lag_ops: Option<u64>,
    /// When the oldest of those arrived here, in ms.
    pub lag_since: Option<u64>,
}

impl<S: SyncStore> Engine<S> {
    /// Where every database stands with every connected peer.
    pub fn link_reports(&mut self, now: u64) -> Vec<LinkReport> {
        let mut out = Vec::new();
        let dbs: Vec<String> = self
            .links
            .values()
            .flat_map(|l| l.keys().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for db in dbs {
            let Some(state) = self.store.sync_state(&db) else {
                continue;
            };
            self.arrivals.note(&db, &state.vector, now);
            for (peer, streams) in &self.links {
                let Some(s) = streams.get(&db) else {
                    continue;
                };
                let mode = self.mode_with(&db, &state, peer);
                let sending = sends(mode) && s.peer_wants;
                let lag_ops = s
                    .acked
                    .as_ref()
                    .filter(|_| sending)
                    .map(|acked| state.vector.ahead_of(acked));
                let lag_since = s
                    .acked
                    .as_ref()
                    .filter(|_| lag_ops.is_some_and(|n| n > 0))
                    .and_then(|acked| self.arrivals.oldest_beyond(&db, &state.vector, acked));
                out.push(LinkReport {
                    peer: *peer,
                    db: db.clone(),
                    sending,
                    taking: takes(mode),
                    sealed: state.sealed,
                    lag_ops,
                    lag_since,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn vv(entries: &[(u8, u64)]) -> VersionVector {
        entries.iter().map(|(d, s)| (dev(*d), *s)).collect()
    }

    #[test]
    fn the_oldest_missing_operation_is_dated_by_when_the_vector_grew() {
        let mut a = Arrivals::default();
        a.note("db", &vv(&[(1, 10)]), 1_000);
        a.note("db", &vv(&[(1, 20), (2, 5)]), 2_000);
        a.note("db", &vv(&[(1, 30), (2, 5)]), 3_000);
        let mine = vv(&[(1, 30), (2, 5)]);
        assert_eq!(
            a.oldest_beyond("db", &mine, &vv(&[(1, 25), (2, 5)])),
            Some(3_000)
        );
        assert_eq!(
            a.oldest_beyond("db", &mine, &vv(&[(1, 15), (2, 5)])),
            Some(2_000)
        );
        assert_eq!(a.oldest_beyond("db", &mine, &vv(&[(1, 30)])), Some(2_000));
        assert_eq!(a.oldest_beyond("db", &mine, &mine), None);
    }

    #[test]
    fn marks_within_a_grain_merge_and_old_ones_are_dropped() {
        let mut a = Arrivals::default();
        a.note("db", &vv(&[(1, 1)]), 1_000);
        a.note("db", &vv(&[(1, 2)]), 1_050);
        let mine = vv(&[(1, 2)]);
        assert_eq!(a.oldest_beyond("db", &mine, &vv(&[(1, 1)])), Some(1_000));
        for i in 0..(MAX_MARKS as u64 + 10) {
            a.note("db", &vv(&[(1, 3 + i)]), 2_000 + i * GRAIN_MS);
        }
        let mine = vv(&[(1, 3 + MAX_MARKS as u64 + 9)]);
        // Older than any mark kept: dated by the oldest one.
        assert_eq!(
            a.oldest_beyond("db", &mine, &vv(&[(1, 0)])),
            Some(2_000 + 10 * GRAIN_MS)
        );
    }
}
