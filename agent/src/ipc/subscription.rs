//! Subscriptions: a task per subscription that reads the op log after the
//! subscriber's cursor and sends the changes as `event` notifications.
//!
//! Events are read from the op log, never from an in-memory feed, so a
//! subscriber that falls behind, or resumes after a restart, gets exactly
//! the changes after its cursor: none missed, none twice. The database's
//! head only wakes the task.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use blazedb_proto::api::{EVENT_METHOD, EventParams, SubscribeParams};
use blazedb_proto::message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Ctx;
use crate::store::{DbState, StoreError};

/// Log entries read per event batch at most.
const SCAN_BATCH: usize = 512;

/// Starts a subscription; returns its id, the cursor it starts after, and
/// its task.
pub(crate) fn start(
    ctx: &Arc<Ctx>,
    p: SubscribeParams,
    events: mpsc::Sender<Vec<u8>>,
) -> Result<(u64, u64, JoinHandle<()>), StoreError> {
    let db = ctx.store.db(&p.db)?;
    let head = db.head();
    let cursor = match p.since {
        Some(since) if since > head => {
            return Err(StoreError::InvalidArgument(format!(
                "cursor {since} is ahead of database {}'s latest change {head}; \
                 was the database dropped and made again?",
                p.db
            )));
        }
        Some(since) => since,
        None => head,
    };
    let id = ctx.next_subscription.fetch_add(1, Ordering::Relaxed);
    ctx.subscriptions.fetch_add(1, Ordering::Relaxed);
    let task = tokio::spawn(run(ctx.clone(), db, id, p.collection, cursor, events));
    Ok((id, cursor, task))
}

async fn run(
    ctx: Arc<Ctx>,
    db: Arc<DbState>,
    id: u64,
    collection: Option<String>,
    mut cursor: u64,
    events: mpsc::Sender<Vec<u8>>,
) {
    let mut head_rx = db.watch_head();
    loop {
        if db.is_dropped() {
            return;
        }
        let head = *head_rx.borrow_and_update();
        while cursor < head {
            let (changes, last) =
                match ctx
                    .store
                    .read_changes(&db, cursor, collection.as_deref(), SCAN_BATCH)
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(subscription = id, "reading the op log failed: {e}");
                        return;
                    }
                };
            if last == cursor {
                break;
            }
            cursor = last;
            if changes.is_empty() {
                continue;
            }
            let mut frame = Vec::new();
            let params = EventParams {
                subscription: id,
                changes,
                cursor,
            };
            if let Err(e) =
                message::encode_notification(&mut frame, EVENT_METHOD, &params, ctx.max_frame)
            {
                tracing::error!(subscription = id, "cannot encode changes: {e}");
                return;
            }
            if events.send(frame).await.is_err() {
                return;
            }
        }
        if head_rx.changed().await.is_err() {
            return;
        }
    }
}
