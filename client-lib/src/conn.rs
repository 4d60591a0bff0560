//! The connection to the agent: a writer shared by callers and a reader
//! task that routes responses to their callers and events to their
//! subscriptions.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blazedb_proto::api::{
    EVENT_METHOD, EventParams, SUBSCRIPTION_END_METHOD, SubscribeResult, SubscriptionEndParams,
};
use blazedb_proto::frame::{self, LEN_PREFIX};
use blazedb_proto::message::{self, EncodeError, RawIncoming};
use blazedb_proto::{ErrorInfo, Method, codec};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName};
use rustc_hash::FxHashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::Error;

type ResponseTx = oneshot::Sender<Result<Vec<u8>, Error>>;

/// What the reader hands a subscription.
#[derive(Debug)]
pub(crate) enum SubMsg {
    /// A batch of changes.
    Event(EventParams),
    /// The agent ended the subscription.
    End(ErrorInfo),
}

enum Pending {
    Call(ResponseTx),
    /// A subscribe call: once it succeeds, its events go to `events`. The
    /// reader registers the channel before it reads the next frame, so no
    /// event can arrive before there is somewhere to put it.
    Subscribe(ResponseTx, mpsc::UnboundedSender<SubMsg>),
}

#[derive(Default)]
struct Routes {
    /// Keyed by request id: ids are this process's own counter, so a
    /// cheap hash does (SipHash cost a pipelined get about 150
    /// instructions to insert and remove its entry).
    pending: FxHashMap<u64, Pending>,
    subscriptions: HashMap<u64, mpsc::UnboundedSender<SubMsg>>,
    /// Set once the connection is gone, with the reason.
    closed: Option<Error>,
}

pub(crate) struct Connection {
    outbox: mpsc::UnboundedSender<Vec<u8>>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU64,
    pub(crate) max_frame: std::sync::atomic::AtomicU32,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connection {
    pub(crate) async fn open(path: &Path) -> Result<Connection, Error> {
        let not_running = |source: std::io::Error| Error::AgentNotRunning {
            path: path.display().to_string(),
            // Connecting to a directory is "refused", which misleads.
            source: if path.is_dir() {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "it is a directory, not the agent's socket",
                )
            } else {
                source
            },
        };
        let name = path.to_fs_name::<GenericFilePath>().map_err(not_running)?;
        let stream = Stream::connect(name).await.map_err(not_running)?;
        let stream = Arc::new(stream);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let reader = tokio::spawn(read_loop(stream.clone(), routes.clone()));
        let (outbox, frames) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(stream, frames, routes.clone()));
        Ok(Connection {
            outbox,
            routes,
            next_id: AtomicU64::new(1),
            max_frame: frame::DEFAULT_MAX_FRAME.into(),
            reader,
            writer,
        })
    }

    /// Sends a request and waits for its response.
    pub(crate) async fn call<M: Method>(&self, params: &M::Params) -> Result<M::Result, Error> {
        self.call_with::<M>(|out| codec::encode_into(out, params), codec::from_slice)
            .await
    }

    /// [`Connection::call`] with the params written by `encode` and the
    /// result read by `decode`: hand coders, for requests on hot paths.
    pub(crate) async fn call_with<M: Method>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), codec::CodecError>,
        decode: fn(&[u8]) -> Result<M::Result, codec::CodecError>,
    ) -> Result<M::Result, Error> {
        let (tx, rx) = oneshot::channel();
        self.send::<M>(encode, |_| Pending::Call(tx)).await?;
        let bytes = rx.await.map_err(|_| Error::Disconnected)??;
        decode(&bytes).map_err(|e| Error::Codec(e.0))
    }

    /// Sends a subscribe request; events for it go to `events`.
    pub(crate) async fn subscribe(
        &self,
        params: &<blazedb_proto::api::Subscribe as Method>::Params,
        events: mpsc::UnboundedSender<SubMsg>,
    ) -> Result<SubscribeResult, Error> {
        let (tx, rx) = oneshot::channel();
        let encode = |out: &mut Vec<u8>| codec::encode_into(out, params);
        self.send::<blazedb_proto::api::Subscribe>(encode, |_| Pending::Subscribe(tx, events))
            .await?;
        let bytes = rx.await.map_err(|_| Error::Disconnected)??;
        codec::from_slice(&bytes).map_err(|e| Error::Codec(e.0))
    }

    async fn send<M: Method>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), codec::CodecError>,
        pending: impl FnOnce(u64) -> Pending,
    ) -> Result<(), Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Most requests are a few hundred bytes: start big enough that
        // encoding rarely grows the buffer.
        let mut buf = Vec::with_capacity(256);
        let max = self.max_frame.load(Ordering::Relaxed);
        message::encode_request_with(&mut buf, id, M::NAME, max, encode).map_err(|e| match e {
            EncodeError::TooLarge(t) => Error::TooLarge {
                len: t.len,
                max: t.max,
            },
            EncodeError::Codec(c) => Error::Codec(c.0),
        })?;
        {
            let mut routes = lock(&self.routes);
            if let Some(e) = &routes.closed {
                return Err(e.clone_lossy());
            }
            routes.pending.insert(id, pending(id));
        }
        if self.outbox.send(buf).is_err() {
            lock(&self.routes).pending.remove(&id);
            return Err(Error::Disconnected);
        }
        Ok(())
    }

    /// Stops routing events for a subscription.
    pub(crate) fn forget_subscription(&self, id: u64) {
        lock(&self.routes).subscriptions.remove(&id);
    }
}

/// Writes queued frames, as many as are waiting in one write, so that
/// pipelined calls cost one syscall per burst. Whole frames are handed over,
/// so a caller that gives up waiting cannot leave half a frame behind.
async fn write_loop(
    stream: Arc<Stream>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    routes: Arc<Mutex<Routes>>,
) {
    let mut buf = Vec::new();
    while let Some(first) = frames.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        // Callers woken by one burst of responses queue their next
        // requests one by one: yielding once lets them all queue before
        // the write, so a burst goes out in one write, not a dozen.
        tokio::task::yield_now().await;
        while buf.len() < 1 << 20
            && let Ok(more) = frames.try_recv()
        {
            buf.extend_from_slice(&more);
        }
        if let Err(e) = (&*stream).write_all(&buf).await {
            let mut r = lock(&routes);
            for (_, p) in r.pending.drain() {
                let tx = match p {
                    Pending::Call(tx) | Pending::Subscribe(tx, _) => tx,
                };
                let _ = tx.send(Err(Error::Io(std::io::Error::new(e.kind(), e.to_string()))));
            }
            r.closed = Some(Error::Io(e));
            return;
        }
    }
}

async fn read_loop(stream: Arc<Stream>, routes: Arc<Mutex<Routes>>) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let reason = loop {
        match (&*stream).read_buf(&mut buf).await {
            Ok(0) => break Error::Disconnected,
            Ok(_) => {}
            Err(e) => break Error::Io(e),
        }
        let mut pos = 0;
        let mut failed = None;
        // The agent's frames are trusted not to exceed 4 GiB; the limit here
        // only guards against a corrupt stream.
        while let Ok(Some(n)) = frame::frame_len(&buf[pos..], u32::MAX) {
            if let Err(e) = route(&buf[pos + LEN_PREFIX..pos + n], &routes) {
                failed = Some(e);
                break;
            }
            pos += n;
        }
        buf.drain(..pos);
        if buf.len() >= LEN_PREFIX {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            buf.reserve((LEN_PREFIX + len).saturating_sub(buf.len()));
        } else {
            buf.reserve(64 * 1024);
        }
        if let Some(e) = failed {
            break e;
        }
    };
    let mut r = lock(&routes);
    for (_, p) in r.pending.drain() {
        let tx = match p {
            Pending::Call(tx) | Pending::Subscribe(tx, _) => tx,
        };
        let _ = tx.send(Err(reason.clone_lossy()));
    }
    r.subscriptions.clear();
    r.closed = Some(reason);
}

/// Delivers one frame. An error means the connection is unusable.
fn route(payload: &[u8], routes: &Mutex<Routes>) -> Result<(), Error> {
    match message::decode_incoming(payload).map_err(|e| Error::Codec(e.0))? {
        RawIncoming::Response { id: 0, result } => {
            // A connection-level error: the agent closes after it.
            Err(match result {
                Err(info) => Error::Agent(info),
                Ok(_) => Error::Codec("a response to request 0".into()),
            })
        }
        RawIncoming::Response { id, result } => {
            let mut r = lock(routes);
            let Some(pending) = r.pending.remove(&id) else {
                return Ok(());
            };
            let result = result.map(<[u8]>::to_vec).map_err(Error::Agent);
            match pending {
                Pending::Call(tx) => {
                    let _ = tx.send(result);
                }
                Pending::Subscribe(tx, events) => {
                    if let Ok(bytes) = &result
                        && let Ok(sub) = codec::from_slice::<SubscribeResult>(bytes)
                    {
                        r.subscriptions.insert(sub.subscription, events);
                    }
                    let _ = tx.send(result);
                }
            }
            Ok(())
        }
        RawIncoming::Notification { method, params } if method == EVENT_METHOD => {
            let event: EventParams = codec::from_slice(params).map_err(|e| Error::Codec(e.0))?;
            let r = lock(routes);
            if let Some(tx) = r.subscriptions.get(&event.subscription) {
                let _ = tx.send(SubMsg::Event(event));
            }
            Ok(())
        }
        RawIncoming::Notification { method, params } if method == SUBSCRIPTION_END_METHOD => {
            let end: SubscriptionEndParams =
                codec::from_slice(params).map_err(|e| Error::Codec(e.0))?;
            if let Some(tx) = lock(routes).subscriptions.remove(&end.subscription) {
                let _ = tx.send(SubMsg::End(end.error));
            }
            Ok(())
        }
        // Notifications this version does not know are skipped.
        RawIncoming::Notification { .. } => Ok(()),
    }
}

impl Error {
    /// A copy for every waiter of a failed connection (io errors keep
    /// their kind and message).
    pub(crate) fn clone_lossy(&self) -> Error {
        match self {
            Error::AgentNotRunning { path, source } => Error::AgentNotRunning {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Disconnected => Error::Disconnected,
            Error::Agent(i) => Error::Agent(i.clone()),
            Error::TooLarge { len, max } => Error::TooLarge {
                len: *len,
                max: *max,
            },
            Error::Codec(s) => Error::Codec(s.clone()),
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// The error info of an agent error, if this is one.
pub(crate) fn agent_error(e: &Error) -> Option<&ErrorInfo> {
    match e {
        Error::Agent(i) => Some(i),
        _ => None,
    }
}
