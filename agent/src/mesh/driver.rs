//! Runs the sync engine over the real store, on a thread of its own: the
//! store's calls block on the writer thread, and the engine wants one
//! caller at a time anyway.
//!
//! Sessions hand it messages from peers; the store tells it of commits;
//! it hands each peer's session the messages the engine wants sent. The
//! only clock read in sync is here: wall-clock milliseconds, which the
//! engine compares with operations' clock readings.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use blazedb_proto::api::{DbSettings, Encryption, SyncMode};
use blazedb_proto::{DeviceId, SyncMessage};
use tokio::sync::mpsc::UnboundedSender;

use crate::access::view::DeviceAttrs;
use crate::store::{Command, Store, StoreError, StoreNotice, wall_ms};
use crate::sync::{Cutoff, Engine, EngineConfig, Event, LinkReport, SyncStore as _};
use blazedb_proto::rules::AccessRules;

/// What the driver is told.
#[derive(Debug)]
pub enum Input {
    /// A session with `peer` is up; send its messages to `tx`.
    Connected {
        /// The peer.
        peer: DeviceId,
        /// Which session, so a late `Disconnected` of an older one is
        /// ignored.
        link: u64,
        /// Where the session takes messages to send.
        tx: UnboundedSender<SyncMessage>,
    },
    /// The session `link` with `peer` ended.
    Disconnected {
        /// The peer.
        peer: DeviceId,
        /// Which session.
        link: u64,
    },
    /// A message arrived on session `link`.
    Message {
        /// The peer.
        peer: DeviceId,
        /// Which session.
        link: u64,
        /// The message (boxed: some are large).
        msg: Box<SyncMessage>,
    },
    /// The store committed something or a database changed.
    Notice(StoreNotice),
    /// The mesh's active members, this device excluded.
    Members(Vec<DeviceId>),
    /// The mesh's hubs.
    Hubs(BTreeSet<DeviceId>),
    /// Devices removed from the mesh, with where their operations stop
    /// being accepted.
    Cutoffs(BTreeMap<DeviceId, Cutoff>),
    /// Every database's access rules, and what they select members by.
    Access {
        /// The rules, per database.
        rules: Vec<AccessRules>,
        /// Members' names, teams and roles.
        devices: BTreeMap<DeviceId, DeviceAttrs>,
    },
    /// Report where every database stands with every connected peer.
    Links(tokio::sync::oneshot::Sender<Vec<LinkReport>>),
    /// Stop the driver.
    Stop,
}

/// When sync of each database with each peer last made progress:
/// operations or a snapshot from the peer were applied, or the peer sent
/// its vector; in ms since the Unix epoch.
pub type Stats = Arc<Mutex<BTreeMap<(DeviceId, String), u64>>>;

/// The handle to the driver thread.
#[derive(Debug)]
pub struct Driver {
    tx: mpsc::Sender<Input>,
    thread: Option<JoinHandle<()>>,
    stats: Stats,
}

struct Route {
    link: u64,
    tx: UnboundedSender<SyncMessage>,
}

impl Driver {
    /// Starts the driver for `store`. A hub (`summarize`) tells devices
    /// what every replica holds instead of passing on every report.
    pub fn start(
        store: Store,
        members: Vec<DeviceId>,
        summarize: bool,
        checkpoint_ops: u64,
    ) -> std::io::Result<Driver> {
        let (tx, rx) = mpsc::channel();
        let notices = tx.clone();
        store.on_notice(move |n| {
            let _ = notices.send(Input::Notice(n));
        });
        let stats = Stats::default();
        let shared = stats.clone();
        let thread = std::thread::Builder::new()
            .name("blazed-sync".into())
            .spawn(move || run(store, members, summarize, checkpoint_ops, rx, shared))?;
        Ok(Driver {
            tx,
            thread: Some(thread),
            stats,
        })
    }

    /// A sender for sessions.
    pub fn sender(&self) -> mpsc::Sender<Input> {
        self.tx.clone()
    }

    /// When sync of each database with each peer last made progress.
    pub fn last_sync(&self) -> BTreeMap<(DeviceId, String), u64> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Where every database stands with every connected peer; empty if the
    /// engine does not answer within `wait` (it is busy applying a large
    /// snapshot, say).
    pub async fn link_reports(&self, wait: Duration) -> Vec<LinkReport> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Input::Links(tx)).is_err() {
            return Vec::new();
        }
        tokio::time::timeout(wait, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// Stops the thread and waits for it: after this the engine makes no
    /// more calls into the store.
    pub fn stop(mut self) {
        let _ = self.tx.send(Input::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    store: Store,
    members: Vec<DeviceId>,
    summarize: bool,
    checkpoint_ops: u64,
    rx: mpsc::Receiver<Input>,
    stats: Stats,
) {
    let me = store.device();
    let config = EngineConfig {
        members,
        summarize,
        checkpoint_ops,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(me, store.clone(), config, wall_ms());
    let mut routes: BTreeMap<DeviceId, Route> = BTreeMap::new();
    let mut held = Held::default();
    let mut said_failed = false;
    loop {
        let wait = engine.poll_timeout().saturating_sub(wall_ms());
        let first = match rx.recv_timeout(Duration::from_millis(wait.min(60_000))) {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Take everything queued, so a burst of commits pumps once.
        let mut committed = BTreeSet::new();
        let mut inputs: Vec<Input> = first.into_iter().collect();
        while inputs.len() < 1024 {
            match rx.try_recv() {
                Ok(i) => inputs.push(i),
                Err(_) => break,
            }
        }
        for input in super::inbox::join_ops(inputs) {
            let now = wall_ms();
            match input {
                Input::Connected { peer, link, tx } => {
                    if routes.contains_key(&peer) {
                        engine.disconnected(&peer);
                    }
                    routes.insert(peer, Route { link, tx });
                    engine.connected(peer, now);
                }
                Input::Disconnected { peer, link } => {
                    if routes.get(&peer).is_some_and(|r| r.link == link) {
                        routes.remove(&peer);
                        engine.disconnected(&peer);
                    }
                }
                Input::Message { peer, link, msg } => {
                    if routes.get(&peer).is_some_and(|r| r.link == link) {
                        if let SyncMessage::Vector { db, .. } = &*msg {
                            note(&stats, peer, db, now);
                        }
                        engine.handle(peer, *msg, now);
                    }
                }
                Input::Notice(StoreNotice::Committed(db)) => {
                    committed.insert(db);
                }
                Input::Notice(StoreNotice::Changed(db)) => {
                    let synced = engine
                        .store()
                        .sync_state(&db)
                        .is_some_and(|s| s.mode != SyncMode::Local);
                    if synced {
                        engine.database_added(&db, now);
                        // Its wish may have changed too: peers are told.
                        engine.wish_changed(&db, now);
                    } else {
                        engine.database_removed(&db);
                    }
                }
                // What waits for its commits is dropped below.
                Input::Notice(StoreNotice::Failed) => {}
                Input::Members(m) => engine.set_members(m),
                Input::Hubs(h) => engine.set_hubs(h),
                Input::Cutoffs(c) => engine.set_cutoffs(c),
                Input::Access { rules, devices } => {
                    for r in rules {
                        engine.set_rules(r, now);
                    }
                    engine.set_devices(devices, now);
                }
                Input::Links(reply) => {
                    let _ = reply.send(engine.link_reports(now));
                }
                Input::Stop => return,
            }
        }
        for db in committed {
            engine.local_commit(&db, wall_ms());
        }
        let now = wall_ms();
        if engine.poll_timeout() <= now {
            engine.handle_timeout(now);
        }
        while let Some(event) = engine.poll_event() {
            on_event(&mut engine, &store, &stats, event);
        }
        // What the engine sends may count ops the writer applied and has
        // not yet synced (an ack, say): every message waits until the
        // commits before it are durable, and none overtakes another.
        let generation = store.commit_generation();
        while let Some((peer, msg)) = engine.poll_transmit() {
            held.push(generation, peer, msg);
        }
        let failed = store.failed().is_some();
        let dropped = held.release(store.durable_generation(), failed, |peer, msg| {
            if let Some(r) = routes.get(&peer) {
                let _ = r.tx.send(msg);
            }
        });
        if dropped > 0 && !said_failed {
            tracing::error!(
                "the store failed to make applied ops durable: sync sends nothing that \
                 counts them, and stalls until the agent restarts ({dropped} messages dropped)"
            );
            said_failed = true;
        }
    }
}

/// Messages the engine sent, each held until the store's commits before
/// it are durable (see `Store::commit_generation`), and let go in the
/// order the engine sent them.
#[derive(Debug, Default)]
struct Held(VecDeque<(u64, DeviceId, SyncMessage)>);

impl Held {
    /// Holds `msg` to `peer` until commit `generation` is durable.
    fn push(&mut self, generation: u64, peer: DeviceId, msg: SyncMessage) {
        self.0.push_back((generation, peer, msg));
    }

    /// The next message to send now that commit `durable` is durable,
    /// unless the first one held still waits.
    fn pop(&mut self, durable: u64) -> Option<(DeviceId, SyncMessage)> {
        if self.0.front()?.0 > durable {
            return None;
        }
        self.0.pop_front().map(|(_, peer, msg)| (peer, msg))
    }

    /// Sends (by `send`) every message whose commits are durable, up to
    /// commit `durable`, in order. When the store `failed`, the commits
    /// after `durable` never will be, and the messages waiting for them
    /// may count ops that are not on disk: they are dropped, and how many
    /// is returned.
    fn release(
        &mut self,
        durable: u64,
        failed: bool,
        mut send: impl FnMut(DeviceId, SyncMessage),
    ) -> usize {
        while let Some((peer, msg)) = self.pop(durable) {
            send(peer, msg);
        }
        if !failed {
            return 0;
        }
        let dropped = self.0.len();
        self.0.clear();
        dropped
    }
}

fn note(stats: &Stats, peer: DeviceId, db: &str, now: u64) {
    if let Ok(mut s) = stats.lock() {
        match s.get_mut(&(peer, db.to_owned())) {
            Some(at) => *at = now,
            None => {
                s.insert((peer, db.to_owned()), now);
            }
        }
    }
}

fn on_event(engine: &mut Engine<Store>, store: &Store, stats: &Stats, event: Event) {
    match event {
        Event::Applied { db, from, ops } => {
            tracing::debug!(db, peer = %from.short(), ops, "applied operations");
            note(stats, from, &db, wall_ms());
        }
        Event::SnapshotMerged { db, from } => {
            tracing::info!(db, peer = %from.short(), "merged a snapshot");
            note(stats, from, &db, wall_ms());
        }
        Event::UnknownDatabase {
            db,
            peer,
            sealed,
            settings: theirs,
        } => {
            tracing::info!(db, peer = %peer.short(), sealed, "a peer syncs a new database: creating it");
            // Its durability and priority as its creator gave them; it
            // syncs both ways here, whatever the peer's direction, so that
            // a push-only database reaches a collector.
            let theirs = theirs.unwrap_or_default();
            let settings = DbSettings {
                encryption: if sealed {
                    Encryption::E2e
                } else {
                    Encryption::None
                },
                sync_mode: SyncMode::Sync,
                durability: theirs.durability,
                priority: theirs.priority,
            };
            let created = store.call_blocking(|reply| Command::CreateDb {
                name: db.clone(),
                settings,
                if_not_exists: true,
                make_key: false,
                reply,
            });
            match created {
                Ok(_) => engine.database_added(&db, wall_ms()),
                Err(StoreError::DroppedHere(_)) => {
                    tracing::debug!(db, "a peer syncs a database dropped here: not taken");
                }
                Err(e) => tracing::warn!(db, "cannot create a database a peer syncs: {e}"),
            }
        }
        Event::Rejected {
            db,
            origin,
            seq,
            reason,
            ..
        } => tracing::warn!(
            db,
            device = %origin.short(),
            seq,
            "refused a write under the database's access rules: {reason}"
        ),
        Event::ClockAhead {
            db,
            origin,
            ahead_ms,
        } => tracing::warn!(
            db,
            origin = %origin.short(),
            "holding operations stamped {ahead_ms} ms ahead of this device's clock"
        ),
        Event::EpochChanged { db, peer } => {
            tracing::info!(db, peer = %peer.short(), "the peer's database was reset; resyncing")
        }
        Event::Compacted {
            db,
            ops,
            tombstones,
        } => tracing::debug!(db, ops, tombstones, "compacted"),
        Event::Refused {
            db,
            origin,
            peer,
            ops,
        } => tracing::warn!(
            db,
            origin = %origin,
            peer = %peer.short(),
            "refused {ops} operations of a removed device made after its removal"
        ),
        Event::Corrected { db, ops } => tracing::info!(
            db,
            records = ops.len(),
            "wrote back records a removed device changed after its removal"
        ),
        Event::Unopened { db, peer, unopened } => {
            tracing::warn!(
                db,
                origin = %unopened.origin.short(),
                seq = unopened.seq,
                peer = %peer.short(),
                "an op did not open, so it was not applied: {}",
                unopened.reason
            );
            store.note_unopened(&db, &unopened);
        }
        Event::CheckpointTaken { db, from, parts } => {
            tracing::info!(db, peer = %from.short(), parts, "took a sealed checkpoint");
            note(stats, from, &db, wall_ms());
        }
        Event::CheckpointSent { db, to, parts } => {
            tracing::info!(db, peer = %to.short(), parts, "sent a sealed checkpoint")
        }
        Event::EncryptionDiffers { db, peer, sealed } => tracing::warn!(
            db,
            peer = %peer.short(),
            "not syncing this database with the peer: it is end-to-end encrypted on {} only",
            if sealed { "the peer" } else { "this device" }
        ),
        Event::StoreFailed { db, error } => {
            tracing::warn!(db, "sync could not use the store: {error}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(n: u64) -> SyncMessage {
        SyncMessage::Ops {
            db: "d".into(),
            epoch: n,
            ops: Vec::new(),
        }
    }

    fn epoch(m: &SyncMessage) -> u64 {
        match m {
            SyncMessage::Ops { epoch, .. } => *epoch,
            _ => u64::MAX,
        }
    }

    #[test]
    fn messages_wait_for_the_commits_before_them_and_keep_their_order() {
        let (a, b) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let mut held = Held::default();
        // Nothing pending: sent at once.
        held.push(0, a, ping(1));
        assert_eq!(held.pop(0).map(|(p, m)| (p, epoch(&m))), Some((a, 1)));
        assert!(held.pop(0).is_none());
        // Commit 1 is not durable yet: this waits, and so does what the
        // engine sent after it, to whichever peer.
        held.push(1, a, ping(2));
        held.push(1, b, ping(3));
        assert!(held.pop(0).is_none());
        held.push(2, a, ping(4));
        let sent: Vec<_> = std::iter::from_fn(|| held.pop(1))
            .map(|(p, m)| (p, epoch(&m)))
            .collect();
        assert_eq!(sent, [(a, 2), (b, 3)]);
        assert!(held.pop(1).is_none(), "commit 2 is not durable yet");
        assert_eq!(held.pop(2).map(|(_, m)| epoch(&m)), Some(4));
    }

    #[test]
    fn after_a_failed_sync_what_waits_for_it_is_dropped_and_the_rest_goes() {
        let a = DeviceId([1; 32]);
        let mut held = Held::default();
        held.push(1, a, ping(1));
        held.push(2, a, ping(2));
        held.push(3, a, ping(3));
        let mut sent = Vec::new();
        assert_eq!(held.release(1, false, |_, m| sent.push(epoch(&m))), 0);
        assert_eq!(sent, [1]);
        // Commit 2 was synced before the sync of commit 3 failed.
        let dropped = held.release(2, true, |_, m| sent.push(epoch(&m)));
        assert_eq!(sent, [1, 2]);
        assert_eq!(dropped, 1, "the message after commit 3 never goes");
        held.push(4, a, ping(4));
        assert_eq!(held.release(2, true, |_, m| sent.push(epoch(&m))), 1);
        assert_eq!(sent, [1, 2], "nor does anything the engine sends later");
    }
}
