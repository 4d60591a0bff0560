//! Subscriptions: a task per subscription that reads the op log after the
//! subscriber's cursor and sends the changes as `event` notifications.
//!
//! Events are read from the op log, never from an in-memory feed, so a
//! subscriber that falls behind, or resumes after a restart, gets exactly
//! the changes after its cursor: none missed, none twice. The database's
//! head only wakes the task.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use blazedb_proto::api::{
    Change, ChangeKind, EVENT_METHOD, EventParams, SUBSCRIPTION_END_METHOD, SubscribeParams,
    SubscriptionEndParams,
};
use blazedb_proto::message::{self, EncodeError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Ctx;
use crate::apps::Access;
use crate::store::{DbState, StoreError};

/// Log entries read per event batch at most.
const SCAN_BATCH: usize = 512;

/// Starts a subscription; returns its id, the cursor it starts after, the
/// change log's id, and its task.
pub(crate) fn start(
    ctx: &Arc<Ctx>,
    p: SubscribeParams,
    access: &Access,
    events: mpsc::Sender<Vec<u8>>,
) -> Result<(u64, u64, u64, JoinHandle<()>), StoreError> {
    let db = ctx.store.db(&p.db)?;
    ctx.store.readable(&db)?;
    let head = db.head();
    if let (Some(since), Some(log)) = (p.since, p.log)
        && let Some(kept) = db.log_vouched(log)
        && since > kept
    {
        return Err(StoreError::CursorVoid {
            db: p.db,
            since,
            kept,
        });
    }
    let log = db.log_id();
    let cursor = match p.since {
        Some(since) if since > head => {
            return Err(StoreError::InvalidArgument(format!(
                "cursor {since} is ahead of database {}'s latest change {head}; \
                 was the database dropped and made again?",
                p.db
            )));
        }
        Some(since) => {
            let trimmed = db.trimmed();
            if since < trimmed {
                return Err(StoreError::CursorExpired {
                    db: p.db,
                    since,
                    trimmed,
                });
            }
            since
        }
        None => head,
    };
    let id = ctx.next_subscription.fetch_add(1, Ordering::Relaxed);
    let counted = Counted::new(ctx.clone());
    let access = access.clone();
    let task = tokio::spawn(async move {
        let _counted = counted;
        let scope = Scope {
            collection: p.collection,
            access,
        };
        if let Err(e) = run(&_counted.0, &db, id, &scope, cursor, &events).await {
            end(&_counted.0, id, e, &events).await;
        }
    });
    Ok((id, cursor, log, task))
}

/// Counts an open subscription for `status` while it lives, however its
/// task ends (including being aborted).
struct Counted(Arc<Ctx>);

impl Counted {
    fn new(ctx: Arc<Ctx>) -> Self {
        ctx.subscriptions.fetch_add(1, Ordering::Relaxed);
        Counted(ctx)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells the client the subscription ended and why.
async fn end(ctx: &Ctx, id: u64, e: StoreError, events: &mpsc::Sender<Vec<u8>>) {
    tracing::debug!(subscription = id, "subscription ended: {e}");
    let params = SubscriptionEndParams {
        subscription: id,
        error: e.into(),
    };
    let mut frame = Vec::new();
    if message::encode_notification(&mut frame, SUBSCRIPTION_END_METHOD, &params, ctx.max_frame)
        .is_ok()
    {
        let _ = events.send(frame).await;
    }
}

/// Sends changes as one event, or as several if one would be over the
/// frame limit. Returns false when the connection is gone.
async fn send_changes(
    ctx: &Ctx,
    id: u64,
    changes: Vec<Change>,
    events: &mpsc::Sender<Vec<u8>>,
) -> Result<bool, StoreError> {
    let mut pending = vec![changes];
    while let Some(changes) = pending.pop() {
        let Some(last) = changes.last() else { continue };
        let params = EventParams {
            subscription: id,
            cursor: last.cursor,
            changes,
        };
        let mut frame = Vec::new();
        match message::encode_notification(&mut frame, EVENT_METHOD, &params, ctx.max_frame) {
            Ok(()) => {
                if events.send(frame).await.is_err() {
                    return Ok(false);
                }
            }
            Err(EncodeError::TooLarge(_)) if params.changes.len() > 1 => {
                let mut first = params.changes;
                let second = first.split_off(first.len() / 2);
                // Popped last-in first-out: the first half goes out first.
                pending.push(second);
                pending.push(first);
            }
            Err(e) => {
                return Err(StoreError::InvalidArgument(format!(
                    "change {} cannot be sent: {e}",
                    params.cursor
                )));
            }
        }
    }
    Ok(true)
}

/// What a subscription delivers.
struct Scope {
    /// Only this collection, if given.
    collection: Option<String>,
    /// Who subscribed: an app gets only the collections and fields it may
    /// read.
    access: Access,
}

impl Scope {
    /// Cuts `changes` down to what the subscriber may see: changes to
    /// collections it may not read go, and so do fields it may not see; a
    /// patch of hidden fields only goes whole, so nothing tells that they
    /// changed.
    fn cut(&self, db: &str, changes: &mut Vec<Change>) {
        if self.access.is_owner() {
            return;
        }
        changes.retain_mut(|c| {
            let Ok(rights) = self.access.rights(db, &c.collection) else {
                return false;
            };
            if rights.fields.is_none() {
                return true;
            }
            let had_fields = !c.fields.is_empty() || !c.unset.is_empty();
            c.fields.retain(|name, _| rights.sees(name));
            c.unset.retain(|name| rights.sees(name));
            !(c.kind == ChangeKind::Patch
                && had_fields
                && c.fields.is_empty()
                && c.unset.is_empty())
        });
    }
}

async fn run(
    ctx: &Ctx,
    db: &DbState,
    id: u64,
    scope: &Scope,
    mut cursor: u64,
    events: &mpsc::Sender<Vec<u8>>,
) -> Result<(), StoreError> {
    let mut head_rx = db.watch_head();
    loop {
        if db.is_dropped() {
            return Err(StoreError::UnknownDatabase(db.name().to_owned()));
        }
        let head = *head_rx.borrow_and_update();
        while cursor < head {
            let (mut changes, last) =
                ctx.store
                    .read_changes(db, cursor, scope.collection.as_deref(), SCAN_BATCH)?;
            if last == cursor {
                break;
            }
            cursor = last;
            scope.cut(db.name(), &mut changes);
            if !changes.is_empty() && !send_changes(ctx, id, changes, events).await? {
                return Ok(());
            }
        }
        if head_rx.changed().await.is_err() {
            return Ok(());
        }
    }
}
