//! One client connection, served by one task.
//!
//! The task reads frames, answers reads at once and hands writes to the
//! store's writer thread, whose replies come back through a channel; it
//! writes every answer and change event out through one buffer, so pipelined
//! requests cost one syscall per burst rather than one per response.
//!
//! Invariants:
//! - A frame's length is checked against the limit before any buffer is
//!   sized for it.
//! - A frame that cannot be decoded, or a frame over the limit, gets an
//!   error response and the connection is closed once the responses already
//!   owed have been written. A request with bad params only fails itself.
//! - At most [`MAX_IN_FLIGHT`] writes wait on the store per connection; past
//!   that, and while the output buffer is full, the task stops reading, so
//!   a client that does not read its responses cannot grow the agent's
//!   memory.
//! - Reads are answered in the order they were sent, before any request
//!   sent after them is handled. A run of pipelined gets may be shared
//!   among helper threads, but the run is finished, and its answers written
//!   in order, before the next request is looked at. A pass over the
//!   frames read stops after [`GETS_PER_PASS`] gets, whose answers are
//!   written before the next pass; frames left over are handled before
//!   anything more is read, and before the connection closes.

use std::collections::HashMap;
use std::sync::Arc;

use blazedb_proto::api::{self, HelloResult, Request, SubscribeResult, UnsubscribeResult};
use blazedb_proto::frame::{self, LEN_PREFIX};
use blazedb_proto::message::{self, RawRequest};
use blazedb_proto::{ErrorCode, ErrorInfo, PROTOCOL_VERSION, RawPuts, RawRecordRef};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::StreamCommon as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::authorize::{authorize, authorize_puts};
use super::handler::{self, Handled, PendingGet};
use super::read_helpers;
use super::subscription;
use super::{Ctx, listener};
use crate::apps::{Access, Connected, Credentials, Ticket};

/// Writes a connection may have waiting on the store.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Output bytes past which the connection stops reading requests.
const OUT_HIGH_WATER: usize = 4 * 1024 * 1024;
/// How much to read at a time when no frame length is known yet.
const READ_CHUNK: usize = 64 * 1024;

/// Answers are written once this many bytes of them wait, or when no
/// request waits to be read.
const WRITE_BATCH: usize = 64 * 1024;
/// The most gets one pass over the frames read answers before their
/// answers are written. A client with many gets in flight then works on
/// the first answers while the agent reads the rest, rather than each
/// side waiting for the other's whole run: at 128 in flight that doubled
/// the rate, and the agent's thread stopped going to sleep between runs.
const GETS_PER_PASS: usize = 16;

/// Event frames a subscription may have queued for the connection.
const EVENT_QUEUE: usize = 16;

/// Where write replies are sent, as whole encoded frames.
pub(crate) type ReplySender = mpsc::UnboundedSender<Vec<u8>>;

struct Conn {
    ctx: Arc<Ctx>,
    peer_uid: Option<u32>,
    /// Who the client is: the owner until `hello` says otherwise.
    access: Access,
    /// For an app, what its rights are checked against when apps change.
    ticket: Option<Ticket>,
    _connected: Option<Connected>,
    handshaken: bool,
    closing: bool,
    in_flight: usize,
    out: Vec<u8>,
    reply_tx: ReplySender,
    event_tx: mpsc::Sender<Vec<u8>>,
    subscriptions: HashMap<u64, JoinHandle<()>>,
    /// The method of each request answered through the reply channel, by
    /// id, to count its outcome (only when metrics are on).
    pending_methods: HashMap<u64, &'static str>,
}

/// Serves one connection until the client leaves, the connection must be
/// closed, or the agent shuts down.
pub(crate) async fn serve(stream: Stream, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let peer_uid = stream.peer_creds().ok().and_then(|c| c.euid());
    // `&Stream` reads and writes, so both halves can borrow one stream.
    let (mut rd, mut wr, mut wr_now) = (&stream, &stream, &stream);

    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
    let (event_tx, mut event_rx) = mpsc::channel(EVENT_QUEUE);
    let mut app_changes = None;
    let mut conn = Conn {
        ctx,
        peer_uid,
        access: Access::Owner,
        ticket: None,
        _connected: None,
        handshaken: false,
        closing: false,
        in_flight: 0,
        out: Vec::new(),
        reply_tx,
        event_tx,
        subscriptions: HashMap::new(),
        pending_methods: HashMap::new(),
    };
    let mut inbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut written = 0usize;
    let mut eof = false;

    loop {
        if *shutdown.borrow() {
            conn.closing = true;
        }
        // Frames read but not handled yet (a pass stops after
        // [`GETS_PER_PASS`] gets), or the start of one over the limit.
        let unhandled =
            !conn.closing && !matches!(frame::frame_len(&inbuf, conn.ctx.max_frame), Ok(None));
        if (conn.closing || eof) && !unhandled && conn.in_flight == 0 && written == conn.out.len() {
            break;
        }
        let room = conn.in_flight < MAX_IN_FLIGHT && conn.out.len() < OUT_HIGH_WATER;
        let want_read = !conn.closing && !eof && room;
        let want_events = conn.out.len() < OUT_HIGH_WATER && !conn.closing;
        if conn.ticket.is_some() && app_changes.is_none() {
            app_changes = Some(conn.ctx.apps.changes());
            // A change between the login and now is not missed.
            conn.refresh_access();
        }
        let pending = &conn.out[written..];
        // Requests that have already arrived are read before answers are
        // written, up to [`WRITE_BATCH`] bytes of answers: a client with
        // many requests in flight then gets them answered in few writes.
        // Answers to a pass's gets go out before the next pass, so the
        // client works on them while the agent reads on.
        let write_now = pending.len() >= WRITE_BATCH || !want_read || unhandled;
        tokio::select! {
            biased;
            res = wr_now.write(pending), if write_now && !pending.is_empty() => {
                if !conn.wrote(res, &mut written) {
                    break;
                }
            }
            () = std::future::ready(()), if unhandled && room => conn.handle_read(&mut inbuf),
            res = rd.read_buf(&mut inbuf), if want_read && !unhandled => conn.read(res, &mut inbuf, &mut eof),
            res = wr.write(pending), if !pending.is_empty() => {
                if !conn.wrote(res, &mut written) {
                    break;
                }
            }
            Some(frame) = reply_rx.recv() => {
                conn.in_flight -= 1;
                conn.replied(&frame);
                while let Ok(frame) = reply_rx.try_recv() {
                    conn.in_flight -= 1;
                    conn.replied(&frame);
                }
            }
            Some(frame) = event_rx.recv(), if want_events => {
                conn.out.extend_from_slice(&frame);
            }
            _ = shutdown.changed() => conn.closing = true,
            () = apps_changed(&mut app_changes) => conn.refresh_access(),
        }
    }

    for (_, task) in conn.subscriptions.drain() {
        task.abort();
    }
    let _ = wr.flush().await;
}

/// Waits until the apps change; forever when the connection is not an
/// app's.
async fn apps_changed(changes: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = changes
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Answers `gets` into a buffer of their response frames.
fn answer_all(ctx: &Ctx, gets: &[PendingGet]) -> Vec<u8> {
    let mut out = Vec::new();
    handler::get_run(ctx, gets, &mut out);
    out
}

/// Makes room for the rest of a frame whose length is known, or for the
/// next read chunk. The length was checked against the limit already.
fn reserve_for_next_frame(inbuf: &mut Vec<u8>, max_frame: u32) {
    let need = match frame::frame_len(inbuf, max_frame) {
        Ok(None) if inbuf.len() >= LEN_PREFIX => {
            let len = u32::from_be_bytes([inbuf[0], inbuf[1], inbuf[2], inbuf[3]]) as usize;
            LEN_PREFIX + len - inbuf.len()
        }
        _ => READ_CHUNK,
    };
    let spare = inbuf.capacity() - inbuf.len();
    if spare < need.max(1024) {
        inbuf.reserve(need.max(READ_CHUNK));
    }
}

impl Conn {
    /// Handles what a read of the socket gave.
    fn read(&mut self, res: std::io::Result<usize>, inbuf: &mut Vec<u8>, eof: &mut bool) {
        match res {
            Ok(0) => {
                if !inbuf.is_empty() {
                    tracing::debug!("client left in the middle of a frame");
                }
                *eof = true;
            }
            Ok(_) => self.handle_read(inbuf),
            Err(e) => {
                tracing::debug!("reading from a client failed: {e}");
                *eof = true;
            }
        }
    }

    /// Handles the frames read, up to [`GETS_PER_PASS`] gets of them.
    fn handle_read(&mut self, inbuf: &mut Vec<u8>) {
        let used = self.handle_frames(inbuf);
        inbuf.drain(..used);
        reserve_for_next_frame(inbuf, self.ctx.max_frame);
    }

    /// Takes what a write to the socket gave, `written` being how much of
    /// the output was written before; returns false once the socket is
    /// gone.
    fn wrote(&mut self, res: std::io::Result<usize>, written: &mut usize) -> bool {
        match res {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                *written += n;
                if *written == self.out.len() {
                    self.out.clear();
                    *written = 0;
                }
                true
            }
        }
    }

    /// Takes the app's rights as they are now, or cuts the connection when
    /// it lost any since it connected.
    fn refresh_access(&mut self) {
        let Some(ticket) = &self.ticket else { return };
        match self.ctx.apps.view(ticket) {
            Some(view) => self.access = Access::App(view),
            None if !self.closing => {
                tracing::info!(app = %ticket.name, "cut a connection: the app lost a grant or was removed");
                let message = format!(
                    "app {:?} was removed or lost a grant: this connection and its \
                     subscriptions are closed; connect again to use what it may now",
                    ticket.name
                );
                for (_, task) in self.subscriptions.drain() {
                    task.abort();
                }
                self.fail_connection(0, ErrorCode::PermissionDenied, message);
            }
            None => {}
        }
    }

    /// Handles every complete frame at the start of `buf`; returns how many
    /// bytes they took.
    fn handle_frames(&mut self, buf: &[u8]) -> usize {
        let mut pos = 0;
        let mut gets = Vec::new();
        while !self.closing {
            match frame::frame_len(&buf[pos..], self.ctx.max_frame) {
                Ok(Some(n)) => {
                    self.handle_frame(&buf[pos + LEN_PREFIX..pos + n], &mut gets);
                    pos += n;
                    if gets.len() >= GETS_PER_PASS {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.answer_gets(&mut gets);
                    self.fail_connection(0, ErrorCode::FrameTooLarge, format!(
                        "{e}; split the request (e.g. smaller batches) or raise the agent's max_frame"
                    ));
                    // Everything buffered is discarded with the connection.
                    return buf.len();
                }
            }
        }
        self.answer_gets(&mut gets);
        if self.closing { buf.len() } else { pos }
    }

    /// Takes a response that came through the reply channel.
    fn replied(&mut self, frame: &[u8]) {
        if self.ctx.metrics.enabled() {
            for (id, code) in message::response_outcomes(frame) {
                if let Some(method) = self.pending_methods.remove(&id) {
                    self.ctx.metrics.request(method, code);
                }
            }
        }
        self.out.extend_from_slice(frame);
    }

    /// Counts the responses to `method` written to the output from
    /// `start` on.
    fn tally(&self, start: usize, method: &'static str) {
        if self.ctx.metrics.enabled() {
            for (_, code) in message::response_outcomes(&self.out[start..]) {
                self.ctx.metrics.request(method, code);
            }
        }
    }

    /// Answers a run of gets, in order, and counts them.
    fn answer_gets(&mut self, gets: &mut Vec<PendingGet>) {
        if gets.is_empty() {
            return;
        }
        let start = self.out.len();
        self.answer_gets_here_and_on_helpers(gets);
        self.tally(start, <api::Get as api::Method>::NAME);
    }

    /// A long run is shared with the read helpers
    /// ([`read_helpers::in_parts`]): this thread and they answer short
    /// parts of it into buffers of their own, joined in order.
    fn answer_gets_here_and_on_helpers(&mut self, gets: &mut Vec<PendingGet>) {
        if !read_helpers::worth_sharing(gets.len()) {
            handler::get_run(&self.ctx, gets, &mut self.out);
            gets.clear();
            return;
        }
        let run: Arc<[PendingGet]> = gets.drain(..).collect();
        let ctx = self.ctx.clone();
        let parts = read_helpers::in_parts(
            run.len(),
            Arc::new(move |range| answer_all(&ctx, &run[range])),
        );
        for part in parts {
            self.out.extend_from_slice(&part);
        }
    }

    /// Answers request `id` (0 when the frame had none) with an error and
    /// closes the connection once the output is written.
    fn fail_connection(&mut self, id: u64, code: ErrorCode, message: String) {
        tracing::debug!("closing a connection: {message}");
        message::encode_error(&mut self.out, id, &ErrorInfo::new(code, message));
        self.closing = true;
    }

    /// Handles one request, or adds it to `gets`, the run of gets waiting
    /// to be answered, which is answered first if this request is not one.
    fn handle_frame(&mut self, payload: &[u8], gets: &mut Vec<PendingGet>) {
        let raw = match message::decode_request_head(payload) {
            Ok(raw) => raw,
            Err(e) => return self.bad_frame(gets, &e),
        };
        if !self.handshaken {
            if let Err(e) = message::check_params(raw.params) {
                return self.bad_frame(gets, &e);
            }
            return self.hello(raw);
        }
        // Gets are read in place, and puts stored with their values as
        // they came, never decoded.
        let get = (raw.method == <api::Get as api::Method>::NAME)
            .then(|| RawRecordRef::parse(raw.params))
            .flatten();
        let refused = if let Some(p) = get {
            match self.access.rights(p.db, p.collection) {
                Ok(rights) => return gets.push(PendingGet::new(raw.id, p, rights.fields)),
                Err(e) => e,
            }
        } else if let Some(puts) = RawPuts::parse(raw.method, raw.params) {
            match authorize_puts(&self.access, &puts) {
                Ok(()) => {
                    self.answer_gets(gets);
                    return self.dispatch_puts(raw.id, raw.method, &puts);
                }
                Err(e) => e,
            }
        } else {
            match Request::decode(raw.method, raw.params) {
                Ok(Request::Get(p)) => match self.access.rights(&p.db, &p.collection) {
                    Ok(rights) => {
                        return gets.push(PendingGet::new(raw.id, p.borrowed(), rights.fields));
                    }
                    Err(e) => e,
                },
                Ok(req) => match authorize(&self.access, &req) {
                    Ok(()) => {
                        self.answer_gets(gets);
                        return self.dispatch(raw.id, req);
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            }
        };
        // Params that did not decode may not be a value at all.
        if let Err(e) = message::check_params(raw.params) {
            return self.bad_frame(gets, &e);
        }
        self.answer_gets(gets);
        let method = api::ALL_METHODS
            .iter()
            .find(|m| **m == raw.method)
            .copied()
            .unwrap_or("unknown");
        self.ctx.metrics.request(method, Some(refused.code));
        message::encode_error(&mut self.out, raw.id, &refused);
    }

    /// Answers the gets waiting, then refuses a frame that is not a
    /// request and closes the connection.
    fn bad_frame(&mut self, gets: &mut Vec<PendingGet>, e: &blazedb_proto::codec::CodecError) {
        self.answer_gets(gets);
        self.fail_connection(
            0,
            ErrorCode::BadFrame,
            format!("could not decode the frame as a request: {e}"),
        );
    }

    fn hello(&mut self, raw: RawRequest<'_>) {
        if raw.method != <api::Hello as api::Method>::NAME {
            return self.fail_connection(
                raw.id,
                ErrorCode::HandshakeRequired,
                format!("the first request must be hello, got {:?}", raw.method),
            );
        }
        let params = match Request::decode(raw.method, raw.params) {
            Ok(Request::Hello(p)) => p,
            Ok(_) => unreachable!("hello decodes as hello"),
            Err(e) => {
                message::encode_error(&mut self.out, raw.id, &e);
                self.closing = true;
                return;
            }
        };
        if params.protocol != PROTOCOL_VERSION {
            message::encode_error(
                &mut self.out,
                raw.id,
                &ErrorInfo::new(
                    ErrorCode::UnsupportedProtocol,
                    format!(
                        "this agent speaks protocol {PROTOCOL_VERSION}, the client {}",
                        params.protocol
                    ),
                ),
            );
            self.closing = true;
            return;
        }
        let credentials = Credentials {
            app: params.app.as_deref(),
            token: params.token.as_deref(),
            peer_uid: self.peer_uid,
        };
        let login = self.ctx.apps.login(
            credentials,
            listener::agent_uid(),
            self.ctx.require_app_tokens,
        );
        let (access, ticket) = match login {
            Ok(login) => login,
            Err(e) => {
                tracing::warn!(
                    client = %params.client,
                    app = ?params.app,
                    peer_uid = ?self.peer_uid,
                    "refused a client: {}",
                    e.message
                );
                return self.fail_connection(raw.id, e.code, e.message);
            }
        };
        tracing::debug!(client = %params.client, app = ?access.app(), "client connected");
        self._connected = ticket.as_ref().map(|t| self.ctx.apps.connected(t));
        self.ticket = ticket;
        self.access = access;
        self.handshaken = true;
        let result = HelloResult {
            protocol: PROTOCOL_VERSION,
            agent: format!("blazed {}", env!("CARGO_PKG_VERSION")),
            device_id: self.ctx.store.device().to_string(),
            max_frame: self.ctx.max_frame,
            app: self.access.app().map(str::to_owned),
        };
        self.respond(raw.id, &result);
    }

    /// Counts a request answered later, when its write commits.
    fn pending(&mut self, id: u64, method: &'static str) {
        self.in_flight += 1;
        if self.ctx.metrics.enabled() {
            self.pending_methods.insert(id, method);
        }
    }

    fn respond<R: serde::Serialize>(&mut self, id: u64, result: &R) {
        handler::encode_result(&mut self.out, id, Ok(result), self.ctx.max_frame);
    }

    /// [`Conn::dispatch`] of a `put` or `batch` read in place.
    fn dispatch_puts(&mut self, id: u64, method: &str, puts: &RawPuts<'_>) {
        let (method, single) = if method == "put" {
            ("put", true)
        } else {
            ("batch", false)
        };
        let start = self.out.len();
        match handler::write_puts(&self.ctx, &mut self.out, id, puts, &self.reply_tx, single) {
            Handled::Done => self.tally(start, method),
            Handled::Pending => self.pending(id, method),
        }
    }

    fn dispatch(&mut self, id: u64, req: Request) {
        let (method, start) = (req.method(), self.out.len());
        match req {
            Request::Subscribe(p) => {
                match subscription::start(&self.ctx, p, &self.access, self.event_tx.clone()) {
                    Ok((sub_id, cursor, log, task)) => {
                        self.subscriptions.insert(sub_id, task);
                        self.respond(
                            id,
                            &SubscribeResult {
                                subscription: sub_id,
                                cursor,
                                log,
                            },
                        );
                    }
                    Err(e) => message::encode_error(&mut self.out, id, &e.into()),
                }
            }
            Request::Unsubscribe(p) => {
                let removed = match self.subscriptions.remove(&p.subscription) {
                    Some(task) => {
                        task.abort();
                        true
                    }
                    None => false,
                };
                self.respond(id, &UnsubscribeResult { removed });
            }
            other => match handler::handle(
                &self.ctx,
                id,
                other,
                &self.access,
                &self.reply_tx,
                &mut self.out,
            ) {
                Handled::Done => {}
                Handled::Pending => return self.pending(id, method),
            },
        }
        self.tally(start, method);
    }
}
