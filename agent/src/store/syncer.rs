//! The journal syncer: makes committed write groups durable off the
//! writer thread, so that the writer plans and commits the next group
//! while the last one's fsync runs.
//!
//! A group of writes is committed to fjall with its journal written but
//! not synced. If another command is already waiting, or the group is
//! large (a client streaming batches, whose next will come during the
//! sync), or groups handed over earlier are not yet published, the writer
//! hands the group's [`Publication`] (its replies and the heads it moves)
//! to this thread and goes on; the syncer syncs the journal once for every
//! group handed over meanwhile, then publishes them in the order they were
//! committed. When nothing waits and the group is small, the writer syncs
//! and publishes it itself, so a lone write pays no thread hop. A peer's
//! ops applied by the sync engine are answered at once and always handed
//! over: the engine's next message is planned while they are synced.
//!
//! What this keeps:
//!
//! - A write is answered, and its cursor published (to subscribers, and
//!   to sync, which reads the log only up to the published head), only
//!   once the journal holding it is synced. An apply's cursor too; the
//!   engine's word of what it applied leaves only once it is durable
//!   ([`Store::commit_generation`]).
//! - Groups are published in commit order: the writer publishes one
//!   itself only when the syncer holds none, and waits for the syncer
//!   ([`Syncer::settle`]) before any command that is not a write or an
//!   apply.
//! - A get may read a record while the fsync of its write runs.
//! - A failed sync fails every group it covered. fjall then refuses every
//!   later commit (it poisons itself), so no later write is answered as
//!   if it were durable, and the store is marked failed
//!   ([`Store::failed`]): what waits for a later commit to be durable
//!   (the sync driver's messages) learns that it never will be.
//! - The agent's syncs of the journal run one at a time: the writer syncs
//!   itself only while the syncer holds nothing, and its timed sync of
//!   buffered writes waits for the syncer first. After a failed fsync,
//!   Linux may report the next one on the same file as done, its pages
//!   dropped; fjall marks itself failed only once the failing call has
//!   returned. (fjall's own workers sync too, which the agent cannot
//!   order.)
//! - A panic while one group is published leaves that group unanswered,
//!   not the syncer stuck.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use blazedb_proto::Hlc;
use blazedb_proto::api::WriteResult;
use prometheus_client::metrics::histogram::Histogram;

use super::journal_sync::JournalSync;
use super::writer::WriteOutcome;
use super::{DbState, Reply, Store, StoreError, StoreNotice, lock};

/// What a committed group makes visible once it is durable.
pub(super) struct Publication {
    /// Each database written, its new head, and this device's last
    /// sequence number in it.
    pub(super) heads: Vec<(Arc<DbState>, u64, Option<u64>)>,
    /// The writer's clock after the group.
    pub(super) clock: Hlc,
    /// The group's commands and what they get.
    pub(super) replies: Vec<(Reply<Vec<WriteResult>>, WriteOutcome)>,
    /// When its commit started, for the commit-time metric (which counts
    /// until the group is durable).
    pub(super) timer: Option<(Histogram, Instant)>,
    /// Its commit's generation ([`Store::commit_generation`]), or zero.
    pub(super) generation: u64,
}

impl Publication {
    /// Makes the group visible: this device's vector entry, the shared
    /// clock and the heads (which wake subscribers and sync); then answers
    /// its commands.
    pub(super) fn publish(self, store: &Store) {
        if let Some((histogram, started)) = &self.timer {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        // Before the heads move: whoever they wake finds it durable.
        store.note_durable(self.generation);
        let me = store.writer();
        for (db, head, local_seq) in &self.heads {
            if let Some(seq) = local_seq {
                db.note_local_seq(me, *seq);
            }
            db.head.send_replace(*head);
            store.notify(StoreNotice::Committed(db.name.clone()));
        }
        store.note_clock(self.clock);
        for (reply, outcome) in self.replies {
            reply(outcome);
        }
    }

    /// Answers every command of a group that could not be made durable,
    /// and marks the store failed ([`Store::failed`]), as no later commit
    /// will be durable either.
    pub(super) fn fail(self, store: &Store, e: &StoreError) {
        store.note_failed(e);
        for (reply, outcome) in self.replies {
            reply(outcome.and_then(|_| Err(e.for_another())));
        }
    }
}

#[derive(Default)]
struct State {
    /// Groups handed over and not yet synced, in commit order.
    queue: Vec<Publication>,
    /// A sync is running for groups taken from the queue.
    busy: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The syncer thread, owned by the writer.
pub(super) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Syncs the journal.
type Persist = Box<dyn FnMut() -> Result<(), StoreError> + Send>;
/// Publishes a group once it is synced, or fails it when the sync failed.
type Publish = Box<dyn FnMut(Publication, Result<(), &StoreError>) + Send>;

impl Syncer {
    /// Starts the thread that syncs `journal` for `store`.
    pub(super) fn start(journal: Arc<JournalSync>, store: Store) -> Result<Syncer, StoreError> {
        Syncer::with(
            Box::new(move || journal.sync()),
            Box::new(move |p, synced| match synced {
                Ok(()) => p.publish(&store),
                Err(e) => p.fail(&store, e),
            }),
        )
    }

    fn with(persist: Persist, publish: Publish) -> Result<Syncer, StoreError> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("blazed-syncer".into())
            .spawn(move || run(&theirs, persist, publish))
            .map_err(|e| StoreError::Storage(format!("cannot start the syncer thread: {e}")))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether every group handed over is published.
    pub(super) fn is_idle(&self) -> bool {
        let state = lock(&self.shared.state);
        state.queue.is_empty() && !state.busy
    }

    /// Hands over a committed group, to be published once it is durable.
    pub(super) fn hand_over(&self, publication: Publication) {
        lock(&self.shared.state).queue.push(publication);
        self.shared.changed.notify_all();
    }

    /// Waits until every group handed over is published (or failed).
    pub(super) fn settle(&self) {
        let mut state = lock(&self.shared.state);
        while !state.queue.is_empty() || state.busy {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Syncer {
    /// Publishes what was handed over, then stops the thread.
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, mut persist: Persist, mut publish: Publish) {
    loop {
        let groups = {
            let mut state = lock(&shared.state);
            while state.queue.is_empty() && !state.closed {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if state.queue.is_empty() {
                return;
            }
            state.busy = true;
            std::mem::take(&mut state.queue)
        };
        // One sync covers every group committed before it starts.
        let synced = persist();
        if let Err(e) = &synced {
            tracing::error!(
                "syncing the journal failed; the store takes no more writes until the agent \
                 restarts: {e}"
            );
        }
        for group in groups {
            // A panic while publishing one group must not leave the syncer
            // busy for ever: every later write would wait on it.
            let published = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                publish(group, synced.as_ref().map(|_| ()))
            }));
            if published.is_err() {
                tracing::error!(
                    "publishing a synced commit group panicked; its writes go unanswered"
                );
            }
        }
        lock(&shared.state).busy = false;
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// A group of one command whose outcome goes to `answers`, tagged.
    fn group(tag: u64, answers: &mpsc::Sender<(u64, WriteOutcome)>) -> Publication {
        let answers = answers.clone();
        Publication {
            heads: Vec::new(),
            clock: Hlc(0),
            timer: None,
            generation: 0,
            replies: vec![(
                Box::new(move |outcome| {
                    let _ = answers.send((tag, outcome));
                }),
                Ok(Vec::new()),
            )],
        }
    }

    /// A syncer whose syncs each wait for the test's word: `entered` hears
    /// of each sync as it starts, `outcomes` decides how it ends.
    fn gated() -> (
        Syncer,
        mpsc::Receiver<()>,
        mpsc::Sender<Result<(), StoreError>>,
    ) {
        let (entered_tx, entered) = mpsc::channel();
        let (outcome_tx, outcomes) = mpsc::channel::<Result<(), StoreError>>();
        let persist = Box::new(move || {
            let _ = entered_tx.send(());
            outcomes
                .recv()
                .unwrap_or_else(|_| Err(StoreError::Storage("test over".into())))
        });
        let publish = Box::new(|p: Publication, synced: Result<(), &StoreError>| {
            for (reply, outcome) in p.replies {
                reply(match synced {
                    Ok(()) => outcome,
                    Err(e) => outcome.and_then(|_| Err(e.for_another())),
                });
            }
        });
        let syncer = Syncer::with(persist, publish).expect("start");
        (syncer, entered, outcome_tx)
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn groups_are_answered_once_synced_and_in_commit_order() {
        let (syncer, entered, outcomes) = gated();
        let (answers_tx, answers) = mpsc::channel();
        syncer.hand_over(group(1, &answers_tx));
        entered.recv_timeout(WAIT).expect("a sync starts");
        // Handed over while the first sync runs: the next sync covers it.
        syncer.hand_over(group(2, &answers_tx));
        syncer.hand_over(group(3, &answers_tx));
        assert!(!syncer.is_idle());
        assert!(
            answers.try_recv().is_err(),
            "nothing is answered before its sync ends"
        );

        outcomes.send(Ok(())).expect("gate");
        assert_eq!(answers.recv_timeout(WAIT).expect("answer").0, 1);
        entered
            .recv_timeout(WAIT)
            .expect("one more sync, for the two behind");
        assert!(
            answers.try_recv().is_err(),
            "groups 2 and 3 wait for their own sync"
        );
        outcomes.send(Ok(())).expect("gate");
        let rest: Vec<u64> = (0..2)
            .map(|_| answers.recv_timeout(WAIT).expect("answer").0)
            .collect();
        assert_eq!(rest, [2, 3]);
        syncer.settle();
        assert!(syncer.is_idle());
    }

    #[test]
    fn a_failed_sync_fails_every_group_it_covered() {
        let (syncer, entered, outcomes) = gated();
        let (answers_tx, answers) = mpsc::channel();
        syncer.hand_over(group(1, &answers_tx));
        entered.recv_timeout(WAIT).expect("a sync starts");
        outcomes
            .send(Err(StoreError::Storage("the disk went away".into())))
            .expect("gate");
        let (tag, outcome) = answers.recv_timeout(WAIT).expect("answer");
        assert_eq!(tag, 1);
        let e = outcome.expect_err("a write that was not synced is not answered as done");
        assert!(e.to_string().contains("the disk went away"), "{e}");
    }

    #[test]
    fn a_failed_store_never_reaches_the_generation_tagged_after_it() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(
            dir.path(),
            blazedb_proto::DeviceId([3; 32]),
            Default::default(),
        )
        .expect("open the store");
        let (notices_tx, notices) = mpsc::channel();
        store.on_notice(move |n| {
            let _ = notices_tx.send(n);
        });
        assert_eq!(store.failed(), None);
        assert_eq!(store.commit_generation(), store.durable_generation());
        store.note_failed(&StoreError::Storage("the disk went away".into()));
        store.note_failed(&StoreError::Storage("and again".into()));
        // The sync driver hears of it at once, and once.
        let heard: Vec<_> = notices.try_iter().collect();
        assert_eq!(heard, [StoreNotice::Failed]);
        let why = store.failed().expect("failed");
        assert!(
            why.contains("the disk went away"),
            "the first failure is kept: {why}"
        );
        // What the sync driver tags now waits for a generation that never
        // becomes durable, even though no commit with one failed.
        assert!(store.commit_generation() > store.durable_generation());
    }

    #[test]
    fn a_panic_while_publishing_a_group_leaves_the_next_answered() {
        let publish = Box::new(|p: Publication, _: Result<(), &StoreError>| {
            for (reply, outcome) in p.replies {
                reply(outcome);
            }
            panic!("a publication that panics");
        });
        let syncer = Syncer::with(Box::new(|| Ok(())), publish).expect("start");
        let (answers_tx, answers) = mpsc::channel();
        syncer.hand_over(group(1, &answers_tx));
        assert_eq!(answers.recv_timeout(WAIT).expect("answer").0, 1);
        syncer.hand_over(group(2, &answers_tx));
        assert_eq!(
            answers.recv_timeout(WAIT).expect("the syncer lives on").0,
            2
        );
        syncer.settle();
        assert!(syncer.is_idle());
    }

    #[test]
    fn settle_and_drop_wait_for_the_groups_handed_over() {
        let (syncer, entered, outcomes) = gated();
        let (answers_tx, answers) = mpsc::channel();
        syncer.hand_over(group(1, &answers_tx));
        entered.recv_timeout(WAIT).expect("a sync starts");
        let settled = std::thread::spawn(move || {
            syncer.settle();
            let answered = answers.try_recv().map(|(tag, _)| tag);
            drop(syncer);
            answered
        });
        outcomes.send(Ok(())).expect("gate");
        assert_eq!(settled.join().expect("settle"), Ok(1));
    }
}
