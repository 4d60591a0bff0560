//! End-to-end encrypted databases between a replica that holds the key
//! and one that does not (a blind hub).
//!
//! Operations flow both ways as usual, their bodies sealed. Records never
//! do: a blind replica has none to send, and must not be sent any. In
//! place of snapshots, a replica with the key hands each blind peer a
//! sealed checkpoint (`SyncStore::make_checkpoint`) once it holds
//! [`EngineConfig::checkpoint_ops`](super::EngineConfig) operations more
//! than the last one it sent that peer, and whenever the peer is below
//! what this replica's log still holds. A blind replica keeps the newest
//! checkpoint, drops the operations it covers, and hands it on to any peer
//! below its own log's floor, before the operations after it.

use blazedb_proto::{DeviceId, Epoch, SyncMessage, VersionVector};

use super::{Engine, Event, below_floor};
use crate::sync::store::{Checkpoint, SyncState, SyncStore};

/// The last checkpoint sent to a peer.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    vector: VersionVector,
    at: u64,
    /// Sent because the peer was below what the log holds: operations
    /// wait until it is taken (or the wait runs out).
    instead_of_snapshot: bool,
}

/// A checkpoint arriving part by part.
#[derive(Debug, Clone)]
pub(super) struct Incoming {
    id: u64,
    vector: VersionVector,
    parts: u32,
    got: Vec<Vec<u8>>,
}

impl<S: SyncStore> Engine<S> {
    /// [`Engine::pump_with`] for a sealed database when this replica or
    /// the peer holds no key.
    pub(super) fn pump_sealed(&mut self, peer: DeviceId, db: &str, state: &SyncState, now: u64) {
        let wait = self.config.checkpoint_wait_ms;
        let every = self.config.checkpoint_ops;
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) else {
            return;
        };
        let Some(acked) = s.acked.clone() else {
            return;
        };
        if !s.peer_wants {
            return;
        }
        let below = below_floor(state, &acked);
        if let Some(sent) = &mut s.checkpoint_sent
            && sent.instead_of_snapshot
        {
            if acked.dominates(&sent.vector) {
                // Taken: what the log holds after it goes out, read from
                // the start of the log.
                sent.instead_of_snapshot = false;
                s.cursor = 0;
            } else if now < sent.at + wait {
                return;
            }
        }
        let last = s.checkpoint_sent.as_ref();
        let due = if state.blind {
            below && last.is_none_or(|c| !c.instead_of_snapshot || now >= c.at + wait)
        } else {
            s.peer_blind
                && (below || state.vector.total() >= last.map_or(0, |c| c.vector.total()) + every)
        };
        if due {
            let made = if state.blind {
                self.store.checkpoint(db)
            } else {
                self.store.make_checkpoint(db)
            };
            match made {
                Ok(Some(c)) => {
                    self.send_checkpoint(peer, db, state.epoch, c, below, now);
                    if below {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.store_failed(db, &e);
                    return;
                }
            }
        }
        self.send_window(peer, db, state.epoch, now);
    }

    fn send_checkpoint(
        &mut self,
        peer: DeviceId,
        db: &str,
        epoch: Epoch,
        c: Checkpoint,
        instead_of_snapshot: bool,
        now: u64,
    ) {
        let parts = c.parts.len();
        if let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(db)) {
            s.checkpoint_sent = Some(Sent {
                vector: c.vector.clone(),
                at: now,
                instead_of_snapshot,
            });
        }
        for (i, sealed) in c.parts.into_iter().enumerate() {
            self.outbox.push_back((
                peer,
                SyncMessage::Checkpoint {
                    db: db.to_owned(),
                    epoch,
                    id: c.id,
                    vector: c.vector.clone(),
                    part: i as u32,
                    parts: parts as u32,
                    sealed,
                },
            ));
        }
        self.events.push_back(Event::CheckpointSent {
            db: db.to_owned(),
            to: peer,
            parts,
        });
    }

    /// A part of a sealed checkpoint (`SyncMessage::Checkpoint`) arrived.
    pub(super) fn on_checkpoint(&mut self, peer: DeviceId, part: SyncMessage, now: u64) {
        let SyncMessage::Checkpoint {
            db,
            epoch,
            id,
            vector,
            part,
            parts,
            sealed,
        } = part
        else {
            return;
        };
        let Some(state) = self.store.sync_state(&db) else {
            return;
        };
        if !state.sealed || !self.epoch_matches(peer, &db, epoch) || parts == 0 {
            return;
        }
        let Some(s) = self.links.get_mut(&peer).and_then(|l| l.get_mut(&db)) else {
            return;
        };
        if part == 0 {
            s.in_checkpoint = Some(Incoming {
                id,
                vector,
                parts,
                got: Vec::new(),
            });
        }
        let Some(inc) = s.in_checkpoint.as_mut() else {
            return;
        };
        if inc.id != id || inc.parts != parts || inc.got.len() != part as usize {
            // A part went missing: the sender sends the whole again.
            s.in_checkpoint = None;
            return;
        }
        inc.got.push(sealed);
        if inc.got.len() < parts as usize {
            return;
        }
        let Some(inc) = s.in_checkpoint.take() else {
            return;
        };
        let c = Checkpoint {
            id: inc.id,
            vector: inc.vector,
            parts: inc.got,
        };
        match self.store.take_checkpoint(&db, c) {
            Ok(true) => self.events.push_back(Event::CheckpointTaken {
                db: db.clone(),
                from: peer,
                parts: parts as usize,
            }),
            Ok(false) => {}
            Err(e) => {
                self.store_failed(db, &e);
                return;
            }
        }
        self.send_ack(peer, &db);
        self.pump_all(&db, Some(peer), now);
    }
}
