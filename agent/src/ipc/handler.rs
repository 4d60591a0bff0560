//! Answers requests: reads at once, writes through the store's writer.

use std::sync::Arc;

use blazedb_proto::api::{
    BatchResult, CreatedResult, DbCreateParams, DbListResult, DroppedResult, EncodedRecord,
    GetManyParams, GetManyResult, GetResult, IndexParams, MAX_GET_MANY, Request, Write,
    WriteResult,
};
use blazedb_proto::message::{self, EncodeError};
use blazedb_proto::{ErrorCode, ErrorInfo, RawPuts, RawRecordRef, codec};
use serde::Serialize;

use super::Ctx;
use super::conn::ReplySender;
use super::read_helpers;
use crate::apps::{Access, FieldLimit};
use crate::store::{Command, PreparedWrite, Reply, StoreError, prepare, prepare_puts};

/// Whether a request was answered or will be answered through the reply
/// channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handled {
    /// The response is in the output buffer.
    Done,
    /// The response will arrive on the reply channel.
    Pending,
}

/// Appends the response frame for `result` to `out`. A result too large for
/// a frame becomes an error saying so.
pub(crate) fn encode_result<R: Serialize>(
    out: &mut Vec<u8>,
    id: u64,
    result: Result<&R, StoreError>,
    max_frame: u32,
) {
    let sent = result.map(|r| message::encode_response(out, id, r, max_frame));
    error_unless_sent(out, id, sent);
}

/// Appends an error frame unless the response was encoded: the store
/// failed, or the response could not be encoded or was over the limit.
fn error_unless_sent(
    out: &mut Vec<u8>,
    id: u64,
    sent: Result<Result<(), EncodeError>, StoreError>,
) {
    let err = match sent {
        Ok(Ok(())) => return,
        Ok(Err(EncodeError::TooLarge(e))) => ErrorInfo::new(
            ErrorCode::InvalidArgument,
            format!(
                "the response would be {} bytes, over the frame limit of {}; \
                 ask for less (a smaller query limit, fewer ids)",
                e.len, e.max
            ),
        ),
        Ok(Err(EncodeError::Codec(e))) => ErrorInfo::new(ErrorCode::Internal, e.to_string()),
        Err(e) => e.into(),
    };
    message::encode_error(out, id, &err);
}

/// A reply for the writer thread that encodes the outcome (mapped through
/// `map`) and sends the frame to the connection.
pub(super) fn reply_to<T, R>(
    tx: &ReplySender,
    id: u64,
    max_frame: u32,
    map: impl FnOnce(T) -> R + Send + 'static,
) -> Reply<T>
where
    R: Serialize,
{
    reply_with(tx, id, max_frame, move |res: T, out: &mut Vec<u8>| {
        codec::encode_into(out, &map(res))
    })
}

/// [`reply_to`] with the result written by `write`: a hand encoder, for
/// answers the writer thread makes often.
pub(super) fn reply_with<T>(
    tx: &ReplySender,
    id: u64,
    max_frame: u32,
    write: impl FnOnce(T, &mut Vec<u8>) -> Result<(), codec::CodecError> + Send + 'static,
) -> Reply<T> {
    let tx = tx.clone();
    Box::new(move |res: Result<T, StoreError>| {
        let mut out = Vec::new();
        let sent =
            res.map(|r| message::encode_response_with(&mut out, id, max_frame, |o| write(r, o)));
        error_unless_sent(&mut out, id, sent);
        // The connection may be gone; then nobody wants the answer.
        let _ = tx.send(out);
    })
}

fn done<R: Serialize>(ctx: &Ctx, out: &mut Vec<u8>, id: u64, r: Result<R, StoreError>) -> Handled {
    match r {
        Ok(v) => encode_result(out, id, Ok(&v), ctx.max_frame),
        Err(e) => encode_result::<R>(out, id, Err(e), ctx.max_frame),
    }
    Handled::Done
}

/// Calls `f` with `record` cut to the fields in `fields`.
fn limited<R>(
    record: Option<&EncodedRecord<'_>>,
    fields: &FieldLimit,
    f: impl FnOnce(Option<&EncodedRecord<'_>>) -> R,
) -> R {
    match (record, fields) {
        (Some(r), Some(only)) => {
            let cut = EncodedRecord::fields_only(r.fields, |name| only.contains(name));
            f(Some(&EncodedRecord {
                id: r.id,
                fields: &cut,
                version: r.version,
            }))
        }
        (record, _) => f(record),
    }
}

/// The fields of `db`/`collection` a connection with `access` sees
/// (`None`: all of them).
fn granted(access: &Access, db: &str, collection: &str) -> FieldLimit {
    access.rights(db, collection).ok().and_then(|r| r.fields)
}

/// A get waiting to be answered: its request id, the names it reads, and
/// the fields the connection may see of the record.
#[derive(Debug)]
pub(crate) struct PendingGet {
    /// The request's id.
    pub(crate) request: u64,
    /// The database, collection and record id back to back: one
    /// allocation a get instead of three.
    names: String,
    db_end: usize,
    collection_end: usize,
    /// The fields the connection may see.
    pub(crate) fields: FieldLimit,
}

impl PendingGet {
    /// A get of the record `record` names, answered to request `request`.
    pub(crate) fn new(request: u64, record: RawRecordRef<'_>, fields: FieldLimit) -> PendingGet {
        let RawRecordRef { db, collection, id } = record;
        let mut names = String::with_capacity(db.len() + collection.len() + id.len());
        names.push_str(db);
        names.push_str(collection);
        names.push_str(id);
        PendingGet {
            request,
            names,
            db_end: db.len(),
            collection_end: db.len() + collection.len(),
            fields,
        }
    }

    fn db(&self) -> &str {
        &self.names[..self.db_end]
    }

    fn collection(&self) -> &str {
        &self.names[self.db_end..self.collection_end]
    }

    fn id(&self) -> &str {
        &self.names[self.collection_end..]
    }
}

/// Answers a run of gets, each with only the fields it may see: gets in a
/// row that name the same database and collection look them up once.
pub(crate) fn get_run(ctx: &Ctx, gets: &[PendingGet], out: &mut Vec<u8>) {
    let mut rest = gets;
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|p| p.db() == first.db() && p.collection() == first.collection())
            .count();
        let (mut run, after) = rest.split_at(same);
        rest = after;
        while !run.is_empty() {
            let mut answered = 0;
            let read = ctx.store.get_many_encoded(
                first.db(),
                first.collection(),
                run.iter().map(PendingGet::id),
                |record| {
                    let get = &run[answered];
                    answered += 1;
                    let sent = limited(record, &get.fields, |record| {
                        message::encode_response_with(out, get.request, ctx.max_frame, |out| {
                            GetResult::encode_from(out, record);
                            Ok(())
                        })
                    });
                    error_unless_sent(out, get.request, Ok(sent));
                },
            );
            run = &run[answered..];
            // The database or collection is unknown, or reading the next
            // record failed: that get is answered with why, and the rest
            // are read on.
            if let (Err(e), Some(get)) = (read, run.first()) {
                message::encode_error(out, get.request, &ErrorInfo::from(e));
                run = &run[1..];
            }
        }
    }
}

/// Answers a get_many, each record with only the fields in `fields`. Many
/// ids are shared with the read helpers, each reading a contiguous part.
pub(crate) fn get_many(
    ctx: &Arc<Ctx>,
    id: u64,
    p: GetManyParams,
    fields: FieldLimit,
    out: &mut Vec<u8>,
) {
    if p.ids.len() > MAX_GET_MANY {
        let e = StoreError::InvalidArgument(format!(
            "get_many names {} ids, more than the {MAX_GET_MANY} one request may: \
             split them over several requests",
            p.ids.len()
        ));
        return error_unless_sent(out, id, Err(e));
    }
    let (start, mut read) = (out.len(), Ok(()));
    let sent = message::encode_response_with(out, id, ctx.max_frame, |out| {
        GetManyResult::encode_head(out, p.ids.len());
        if !read_helpers::worth_sharing(p.ids.len()) {
            read = get_many_part(ctx, &p, &fields, 0..p.ids.len(), out);
            return Ok(());
        }
        let (ctx, len, p) = (ctx.clone(), p.ids.len(), Arc::new(p));
        let parts = read_helpers::in_parts(
            len,
            Arc::new(move |range| {
                let mut part: Vec<u8> = Vec::new();
                get_many_part(&ctx, &p, &fields, range, &mut part).map(|()| part)
            }),
        );
        for part in parts {
            match part {
                Ok(part) => out.extend_from_slice(&part),
                Err(e) => {
                    read = Err(e);
                    break;
                }
            }
        }
        Ok(())
    });
    match read {
        Ok(()) => error_unless_sent(out, id, Ok(sent)),
        Err(e) => {
            // Whatever was encoded of the response goes.
            out.truncate(start);
            error_unless_sent(out, id, Err(e));
        }
    }
}

/// Encodes the records of a get_many's ids in `range`, one after another.
fn get_many_part(
    ctx: &Ctx,
    p: &GetManyParams,
    fields: &FieldLimit,
    range: std::ops::Range<usize>,
    out: &mut Vec<u8>,
) -> Result<(), StoreError> {
    ctx.store.get_many_encoded(
        &p.db,
        &p.collection,
        p.ids[range].iter().map(String::as_str),
        |record| limited(record, fields, |r| GetResult::encode_record(out, r)),
    )
}

/// Handles every request but hello, subscribe and unsubscribe (which need
/// the connection's state), for a connection with `access`, which
/// [`super::authorize`] has let make it.
pub(crate) fn handle(
    ctx: &Arc<Ctx>,
    id: u64,
    req: Request,
    access: &Access,
    tx: &ReplySender,
    out: &mut Vec<u8>,
) -> Handled {
    let store = &ctx.store;
    let max = ctx.max_frame;
    match req {
        Request::Status(_) => done(ctx, out, id, Ok(ctx.status(access))),
        Request::DbOpen(p) => done(ctx, out, id, store.db_info(&p.name)),
        Request::DbList(_) => {
            let mut databases = store.list();
            databases.retain(|d| access.sees_db(&d.name));
            done(ctx, out, id, Ok(DbListResult { databases }))
        }
        Request::Get(p) => {
            let fields = granted(access, &p.db, &p.collection);
            get_run(ctx, &[PendingGet::new(id, p.borrowed(), fields)], out);
            Handled::Done
        }
        Request::GetMany(p) => {
            let fields = granted(access, &p.db, &p.collection);
            get_many(ctx, id, p, fields, out);
            Handled::Done
        }
        Request::Query(p) => {
            let result = store.query(&p).map(|mut r| {
                if let Ok(rights) = access.rights(&p.db, &p.collection)
                    && rights.fields.is_some()
                {
                    for record in &mut r.records {
                        record.fields.retain(|name, _| rights.sees(name));
                    }
                }
                r
            });
            done(ctx, out, id, result)
        }
        Request::DbCreate(p) => create_db(ctx, id, p, access, tx, out),
        Request::DbDrop(p) => {
            let apps = ctx.apps.clone();
            let name = p.name.clone();
            store.submit(Command::DropDb {
                name: p.name,
                if_exists: p.if_exists,
                reply: reply_to(tx, id, max, move |dropped| {
                    if dropped {
                        apps.disown(&name);
                    }
                    DroppedResult { dropped }
                }),
            });
            Handled::Pending
        }
        r @ (Request::AppAdd(_)
        | Request::AppList(_)
        | Request::AppShow(_)
        | Request::AppRemove(_)
        | Request::AppGrantAdd(_)
        | Request::AppRevoke(_)) => {
            super::app_methods::handle(ctx, id, r, out);
            Handled::Done
        }
        r @ (Request::MeshStatus(_)
        | Request::MeshCreate(_)
        | Request::MeshInvite(_)
        | Request::MeshJoin(_)
        | Request::MeshRemove(_)
        | Request::Peers(_)
        | Request::PeerAdd(_)
        | Request::MeshAdmin(_)
        | Request::MeshDeviceSet(_)
        | Request::DbRulesSet(_)
        | Request::DbRulesGet(_)
        | Request::DbKeyGrant(_)
        | Request::DbKeyRotate(_)
        | Request::MeshLeave(_)
        | Request::PeerList(_)
        | Request::PeerRemove(_)
        | Request::Topology(_)
        | Request::Dashboard(_)
        | Request::DbPeers(_)) => super::mesh_methods::handle(ctx, id, r, tx, out),
        Request::DbSync(p) => {
            store.submit(Command::SetSyncMode {
                db: p.name,
                mode: p.sync_mode,
                wish: p.wish,
                reply: reply_to(tx, id, max, |info| info),
            });
            Handled::Pending
        }
        Request::DbSet(p) => {
            store.submit(Command::SetSettings {
                db: p.name,
                priority: p.priority,
                durability: p.durability,
                reply: reply_to(tx, id, max, |info| info),
            });
            Handled::Pending
        }
        Request::IndexCreate(p) => index(ctx, id, p, true, tx),
        Request::IndexDrop(p) => index(ctx, id, p, false, tx),
        Request::Put(p) => write(ctx, out, id, &p.db.clone(), vec![p.into()], tx, true),
        Request::Patch(p) => write(ctx, out, id, &p.db.clone(), vec![p.into()], tx, true),
        Request::Delete(p) => write(ctx, out, id, &p.db.clone(), vec![p.into()], tx, true),
        Request::Batch(p) => write(ctx, out, id, &p.db, p.writes, tx, false),
        Request::Hello(_) | Request::Subscribe(_) | Request::Unsubscribe(_) => done::<()>(
            ctx,
            out,
            id,
            Err(StoreError::InvalidArgument(
                "hello may only be the first request on a connection".into(),
            )),
        ),
    }
}

/// Creates a database. One an app makes is its own: the claim is saved
/// before the database is made, and dropped again if it is not.
fn create_db(
    ctx: &Ctx,
    id: u64,
    p: DbCreateParams,
    access: &Access,
    tx: &ReplySender,
    out: &mut Vec<u8>,
) -> Handled {
    let mut disown_on_failure = None;
    if let Access::App(app) = access {
        if ctx.store.db(&p.name).is_ok() {
            if let Err(e) = access.check_db(&p.name) {
                message::encode_error(out, id, &e);
                return Handled::Done;
            }
        } else {
            match ctx.apps.claim(&app.name, &p.name) {
                Ok(true) => disown_on_failure = Some((ctx.apps.clone(), p.name.clone())),
                Ok(false) => {}
                Err(e) => {
                    message::encode_error(out, id, &e);
                    return Handled::Done;
                }
            }
        }
    }
    ctx.store.submit(Command::CreateDb {
        name: p.name,
        settings: p.settings,
        if_not_exists: p.if_not_exists,
        make_key: true,
        reply: Box::new({
            let reply = reply_to(tx, id, ctx.max_frame, |info| info);
            move |result| {
                if result.is_err()
                    && let Some((apps, name)) = disown_on_failure
                {
                    apps.disown(&name);
                }
                reply(result)
            }
        }),
    });
    Handled::Pending
}

fn index(ctx: &Ctx, id: u64, p: IndexParams, create: bool, tx: &ReplySender) -> Handled {
    let reply: Reply<bool> = if create {
        reply_to(tx, id, ctx.max_frame, |created| CreatedResult { created })
    } else {
        reply_to(tx, id, ctx.max_frame, |dropped| DroppedResult { dropped })
    };
    ctx.store.submit(Command::Index {
        db: p.db,
        collection: p.collection,
        field: p.field,
        create,
        reply,
    });
    Handled::Pending
}

fn write(
    ctx: &Ctx,
    out: &mut Vec<u8>,
    id: u64,
    db: &str,
    writes: Vec<Write>,
    tx: &ReplySender,
    single: bool,
) -> Handled {
    // Validation and encoding happen here, on the connection's task, in
    // parallel with the writer thread.
    let store = &ctx.store;
    let prepared = prepare(
        &store.device(),
        store.incarnation(),
        store.priority_of(db),
        writes,
    );
    submit(ctx, out, id, db, prepared, tx, single)
}

/// Handles a `put` or `batch` of puts read in place: their values go into
/// the op and the record as they came.
pub(crate) fn write_puts(
    ctx: &Ctx,
    out: &mut Vec<u8>,
    id: u64,
    puts: &RawPuts<'_>,
    tx: &ReplySender,
    single: bool,
) -> Handled {
    let store = &ctx.store;
    let prepared = prepare_puts(
        &store.device(),
        store.incarnation(),
        store.priority_of(puts.db),
        &puts.puts,
    );
    submit(ctx, out, id, puts.db, prepared, tx, single)
}

/// Hands prepared writes to the writer thread; the reply is sent when
/// they are committed.
fn submit(
    ctx: &Ctx,
    out: &mut Vec<u8>,
    id: u64,
    db: &str,
    prepared: Result<Vec<PreparedWrite>, StoreError>,
    tx: &ReplySender,
    single: bool,
) -> Handled {
    let writes = match prepared {
        Ok(w) => w,
        Err(e) => return done::<()>(ctx, out, id, Err(e)),
    };
    let db = db.to_owned();
    // Every change must reach subscribers in one event: a write whose
    // event would be over the frame limit is refused here, not found
    // unsendable later.
    let most = (ctx.max_frame as usize).saturating_sub(message::change_event_overhead());
    if let Some(w) = writes.iter().find(|w| w.body_len() > most) {
        let e = StoreError::InvalidArgument(format!(
            "the write of {}/{} is {} bytes encoded; a write may take at most {most} \
             (the frame limit, {}, less what its change event adds)",
            w.collection(),
            w.id(),
            w.body_len(),
            ctx.max_frame
        ));
        return done::<()>(ctx, out, id, Err(e));
    }
    let reply: Reply<Vec<_>> = if single {
        reply_with(tx, id, ctx.max_frame, |results: Vec<WriteResult>, out| {
            // The writer answers a write command with one result a write.
            match results.first() {
                Some(r) => {
                    r.encode_into(out);
                    Ok(())
                }
                None => Err(codec::CodecError("no result for the put".into())),
            }
        })
    } else {
        reply_with(tx, id, ctx.max_frame, |results, out| {
            BatchResult { results }.encode_into(out)
        })
    };
    ctx.store.submit(Command::Write { db, writes, reply });
    Handled::Pending
}
