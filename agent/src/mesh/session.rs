//! One connection with one peer: the membership handshake on the control
//! stream, then sync messages on one unidirectional stream per database
//! and direction, until the connection ends.
//!
//! Invariants:
//! - Nothing but the handshake is said before the peer has proved it
//!   belongs to the mesh (or used a valid invite) on this very connection.
//! - Holding the secret is not enough: a peer is let in only if an admin
//!   signed it a member record that is not removed.
//! - A removed device is told so on every connection it makes: its TLS key
//!   proves who it is, and it gets its own final record and nothing else.
//! - Two members whose secrets differ in epoch exchange the membership and
//!   the newer rotation (`Rekey`) and close; each side's copy of the
//!   secret is wrapped for it alone.
//! - A peer is told of sync only once the session is registered as the one
//!   connection with that peer; a duplicate is closed before that.
//! - Every frame's length is checked against [`MAX_PEER_FRAME`] before it
//!   is read.
//! - Each stream is read by one task that is never cancelled mid-frame
//!   (the control stream's reader feeds the session loop through a
//!   channel), and written by one task at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use blazedb_proto::frame::{LEN_PREFIX, payload_len};
use blazedb_proto::mesh::{
    Invite, MAX_PEER_FRAME, PEER_PROTOCOL_VERSION, PeerMessage, Roster, Signed, append_frame,
    append_sync_frame,
};
use blazedb_proto::message::EncodeError;
use blazedb_proto::{DeviceId, SyncMessage};
use tokio::sync::mpsc;

use super::driver::Input;
use super::frames::FrameBuffer;
use super::proof::{self, Binding};
use super::state::MeshKeys;
use super::traffic::{Traffic, Way};
use super::{Shared, close_code, tls};

/// How long the other side has to prove itself.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended before it began.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer was not let in, or did not let us in.
    #[error("refused: {0}")]
    Refused(String),
    /// The two sides held secrets of different epochs and exchanged the
    /// newer one: dial again.
    #[error("the mesh secret changed; the newer one was passed on")]
    Rekeyed,
    /// The peer broke the protocol or went away.
    #[error("{0}")]
    Protocol(String),
    /// A frame was over [`MAX_PEER_FRAME`].
    #[error("{0}")]
    TooLarge(String),
}

/// What the rest of the mesh asks of a session's control stream.
#[derive(Debug)]
pub(crate) enum Control {
    /// Send this message.
    Send(Box<PeerMessage>),
    /// Send this frame, encoded once for many sessions.
    Frame(Arc<Vec<u8>>),
}

fn protocol(e: impl std::fmt::Display) -> SessionError {
    SessionError::Protocol(e.to_string())
}

/// Reads one frame, refusing lengths over the limit before reading them.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, SessionError> {
    Ok(read_pooled_frame(recv)
        .await?
        .map(|mut frame| std::mem::take(&mut *frame)))
}

/// [`read_frame`] into a buffer from the pool ([`FrameBuffer`]), taken only
/// once the frame's length has come: a peer that sends nothing holds none.
pub(crate) async fn read_pooled_frame(
    recv: &mut quinn::RecvStream,
) -> Result<Option<FrameBuffer>, SessionError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(protocol(e)),
    }
    let len = payload_len(prefix, MAX_PEER_FRAME)
        .map_err(|e| SessionError::TooLarge(format!("the peer sent a {e}")))?;
    let mut buf = FrameBuffer::take();
    buf.reserve_exact(len);
    // Filled from quinn's chunks: reading into a slice would first zero it.
    while buf.len() < len {
        match recv.read_chunk(len - buf.len(), true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(SessionError::Protocol(format!(
                    "the stream ended {} bytes into a frame of {len}",
                    buf.len()
                )));
            }
            Err(e) => return Err(protocol(e)),
        }
    }
    Ok(Some(buf))
}

/// Writes one message as a frame; returns the frame's length.
async fn write_msg<T: serde::Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<usize, SessionError> {
    let mut frame = Vec::new();
    append_frame(&mut frame, msg).map_err(encode_error)?;
    send.write_all(&frame).await.map_err(protocol)?;
    Ok(frame.len())
}

/// Writes one sync message as a frame (`Ops` packed), encoding into
/// `frame`, which is cleared first; returns the frame's length.
async fn write_sync_msg(
    send: &mut quinn::SendStream,
    msg: &SyncMessage,
    frame: &mut Vec<u8>,
) -> Result<usize, SessionError> {
    frame.clear();
    append_sync_frame(frame, msg).map_err(encode_error)?;
    send.write_all(frame).await.map_err(protocol)?;
    Ok(frame.len())
}

fn encode_error(e: EncodeError) -> SessionError {
    match e {
        EncodeError::TooLarge(e) => SessionError::TooLarge(e.to_string()),
        EncodeError::Codec(e) => protocol(e),
    }
}

async fn send_msg(send: &mut quinn::SendStream, msg: &PeerMessage) -> Result<(), SessionError> {
    write_msg(send, msg).await.map(drop)
}

async fn recv_msg(recv: &mut quinn::RecvStream) -> Result<PeerMessage, SessionError> {
    let frame = read_frame(recv)
        .await?
        .ok_or_else(|| SessionError::Protocol("the peer closed the control stream".into()))?;
    let msg = PeerMessage::decode(&frame).map_err(protocol)?;
    if let PeerMessage::Refused { reason } = msg {
        return Err(SessionError::Refused(reason));
    }
    Ok(msg)
}

/// Sends `last` (if any), finishes the stream, gives it a moment to leave,
/// and closes the connection with `code`.
async fn say_last_and_close(
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
    last: Option<&PeerMessage>,
    code: quinn::VarInt,
    reason: &str,
) {
    if let Some(m) = last {
        let _ = send_msg(send, m).await;
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    conn.close(code, reason.as_bytes());
}

async fn refuse(
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
    reason: String,
) -> SessionError {
    let msg = PeerMessage::Refused {
        reason: reason.clone(),
    };
    say_last_and_close(send, conn, Some(&msg), close_code::REFUSED, &reason).await;
    SessionError::Refused(reason)
}

/// Tells a removed device so, and closes.
async fn tell_removed(
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
    chain: Vec<Signed>,
) -> SessionError {
    let msg = PeerMessage::Removed { chain };
    say_last_and_close(
        send,
        conn,
        Some(&msg),
        close_code::REMOVED,
        "removed from the mesh",
    )
    .await;
    SessionError::Refused("the device was removed from the mesh".into())
}

/// Takes in the sender's chain and addresses from its `Hello`, and checks
/// that an admin signed it a member record.
fn check_member(
    shared: &Shared,
    peer: &DeviceId,
    chain: Vec<Signed>,
    addrs: Signed,
) -> Result<(), String> {
    shared.merge_roster(
        peer,
        &Roster {
            records: chain,
            addrs: vec![addrs],
            ..Roster::default()
        },
    );
    if shared.is_active(peer) {
        return Ok(());
    }
    tracing::warn!(
        peer = %peer,
        "device {peer} proved it holds the mesh secret but no admin signed it a member record: \
         refused (was the secret copied to another device?)"
    );
    Err("no admin of the mesh signed this device a member record".into())
}

/// This device's `Hello` on the connection `binding`.
fn hello(shared: &Shared, binding: &Binding) -> Result<(MeshKeys, PeerMessage), SessionError> {
    let (keys, chain, addrs) = shared
        .hello_parts()
        .ok_or_else(|| SessionError::Refused("this device is in no mesh".into()))?;
    let msg = PeerMessage::Hello {
        version: PEER_PROTOCOL_VERSION,
        mesh: keys.id,
        epoch: keys.epoch,
        proof: proof::make(&keys.secret, proof::HELLO, binding, &shared.me),
        chain,
        addrs,
    };
    Ok((keys, msg))
}

/// The peer answered our `Hello` with `Rekey`: take its membership (and
/// rotation, if newer), and hand it ours if it is the one behind.
async fn on_rekey(
    shared: &Shared,
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
    peer: &DeviceId,
    their_epoch: u32,
    roster: &Roster,
) -> SessionError {
    shared.merge_roster(peer, roster);
    let mine = shared.keys().map_or(0, |k| k.epoch);
    let reply = (their_epoch < mine && shared.is_active(peer)).then(|| PeerMessage::Rekey {
        epoch: mine,
        roster: shared.roster_wire(),
    });
    say_last_and_close(send, conn, reply.as_ref(), close_code::REFUSED, "rekeyed").await;
    SessionError::Rekeyed
}

/// The dialler's half of the handshake. With `invite`, joins the mesh
/// through the peer instead of proving membership.
pub(crate) async fn dial_handshake(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    peer: DeviceId,
    invite: Option<&Invite>,
) -> Result<(quinn::SendStream, quinn::RecvStream), SessionError> {
    let binding = Binding::of(conn).map_err(protocol)?;
    let me = shared.me;
    let (mut send, mut recv) = conn.open_bi().await.map_err(protocol)?;
    let work = async {
        match invite {
            Some(inv) => {
                let proof = proof::make(&inv.secret, proof::JOIN, &binding, &me);
                send_msg(
                    &mut send,
                    &PeerMessage::Join {
                        version: PEER_PROTOCOL_VERSION,
                        invite: inv.id,
                        proof,
                        name: shared.name.clone(),
                        role: shared.role,
                    },
                )
                .await?;
                match recv_msg(&mut recv).await? {
                    PeerMessage::Welcome {
                        mesh,
                        genesis,
                        epoch,
                        secret,
                        proof: p,
                        roster,
                    } if mesh == inv.mesh
                        && proof::check(&inv.secret, proof::WELCOME, &binding, &peer, &p) =>
                    {
                        let keys = MeshKeys {
                            id: mesh,
                            secret,
                            epoch,
                        };
                        shared
                            .joined(keys, genesis, &roster)
                            .map_err(SessionError::Protocol)
                    }
                    PeerMessage::Removed { .. } => Err(SessionError::Refused(
                        "this device was removed from that mesh and cannot join it again \
                         with the same identity (move device.key away to join as a new device)"
                            .into(),
                    )),
                    other => Err(SessionError::Protocol(format!(
                        "the inviter answered with {other:?}"
                    ))),
                }
            }
            None => {
                let (keys, msg) = hello(shared, &binding)?;
                send_msg(&mut send, &msg).await?;
                match recv_msg(&mut recv).await? {
                    PeerMessage::Hello {
                        mesh,
                        epoch,
                        proof: p,
                        chain,
                        addrs,
                        ..
                    } if mesh == keys.id
                        && epoch == keys.epoch
                        && proof::check(&keys.secret, proof::HELLO, &binding, &peer, &p) =>
                    {
                        match check_member(shared, &peer, chain, addrs) {
                            Ok(()) => Ok(()),
                            Err(why) => Err(refuse(&mut send, conn, why).await),
                        }
                    }
                    PeerMessage::Hello { .. } => Err(refuse(
                        &mut send,
                        conn,
                        "the peer's membership proof is wrong".into(),
                    )
                    .await),
                    PeerMessage::Removed { chain } => {
                        shared.learned_removed(&peer, &chain);
                        Err(SessionError::Refused(
                            "this device was removed from the mesh".into(),
                        ))
                    }
                    PeerMessage::Rekey { epoch, roster } => {
                        Err(on_rekey(shared, &mut send, conn, &peer, epoch, &roster).await)
                    }
                    other => Err(SessionError::Protocol(format!(
                        "the peer answered with {other:?}"
                    ))),
                }
            }
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await {
        Ok(r) => r.map(|()| (send, recv)),
        Err(_) => Err(SessionError::Protocol("the handshake timed out".into())),
    }
}

/// The listener's half of the handshake.
pub(crate) async fn accept_handshake(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    peer: DeviceId,
) -> Result<(quinn::SendStream, quinn::RecvStream, bool), SessionError> {
    let binding = Binding::of(conn).map_err(protocol)?;
    let work = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(protocol)?;
        let first = recv_msg(&mut recv).await?;
        // A removed device learns it, whatever it says and whichever key
        // it holds: its TLS key proved who it is.
        if let Some(chain) = shared.removal_chain(&peer) {
            return Err(tell_removed(&mut send, conn, chain).await);
        }
        match first {
            PeerMessage::Hello {
                version,
                mesh,
                epoch,
                proof: p,
                chain,
                addrs,
            } => {
                if version != PEER_PROTOCOL_VERSION {
                    return Err(refuse(&mut send, conn, format!(
                        "peer protocol version {version} is not spoken here (this agent speaks {PEER_PROTOCOL_VERSION})"
                    ))
                    .await);
                }
                let Some(keys) = shared.keys().filter(|k| k.id == mesh) else {
                    return Err(refuse(&mut send, conn, "not a member of that mesh".into()).await);
                };
                if epoch != keys.epoch {
                    // Only a member gets the membership: its record, not
                    // the secret it cannot prove, says it is one.
                    if let Err(why) = check_member(shared, &peer, chain, addrs) {
                        return Err(refuse(&mut send, conn, why).await);
                    }
                    let reply = PeerMessage::Rekey {
                        epoch: keys.epoch,
                        roster: shared.roster_wire(),
                    };
                    if send_msg(&mut send, &reply).await.is_ok() && epoch > keys.epoch {
                        // The peer holds the newer secret: wait for it.
                        let answer =
                            tokio::time::timeout(Duration::from_secs(2), recv_msg(&mut recv));
                        if let Ok(Ok(PeerMessage::Rekey { roster, .. })) = answer.await {
                            shared.merge_roster(&peer, &roster);
                        }
                    }
                    say_last_and_close(&mut send, conn, None, close_code::REFUSED, "rekeyed").await;
                    return Err(SessionError::Rekeyed);
                }
                if !proof::check(&keys.secret, proof::HELLO, &binding, &peer, &p) {
                    return Err(
                        refuse(&mut send, conn, "the membership proof is wrong".into()).await,
                    );
                }
                if let Err(why) = check_member(shared, &peer, chain, addrs) {
                    return Err(refuse(&mut send, conn, why).await);
                }
                let (_, msg) = hello(shared, &binding)?;
                send_msg(&mut send, &msg).await?;
                Ok((send, recv, false))
            }
            PeerMessage::Join {
                version,
                invite,
                proof: p,
                name,
                role,
            } => {
                if version != PEER_PROTOCOL_VERSION {
                    return Err(refuse(&mut send, conn, "malformed join".into()).await);
                }
                let Some(key) = tls::peer_public_key(conn) else {
                    return Err(refuse(&mut send, conn, "no device key".into()).await);
                };
                let redeemed = match shared.redeem(&invite, |s| {
                    proof::check(s, proof::JOIN, &binding, &peer, &p)
                }) {
                    Ok(r) => r,
                    Err(why) => return Err(refuse(&mut send, conn, why).await),
                };
                let (keys, genesis, roster) = match shared.admit(&key, &name, role, redeemed.teams)
                {
                    Ok(x) => x,
                    Err(why) => return Err(refuse(&mut send, conn, why).await),
                };
                let proof = proof::make(&redeemed.secret, proof::WELCOME, &binding, &shared.me);
                send_msg(
                    &mut send,
                    &PeerMessage::Welcome {
                        mesh: keys.id,
                        genesis,
                        epoch: keys.epoch,
                        secret: keys.secret,
                        proof,
                        roster,
                    },
                )
                .await?;
                tracing::info!(peer = %peer, name, "a device joined the mesh with an invite");
                Ok((send, recv, true))
            }
            other => Err(SessionError::Protocol(format!(
                "the peer opened with {other:?}"
            ))),
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => {
            conn.close(close_code::REFUSED, b"handshake timed out");
            Err(SessionError::Protocol("the handshake timed out".into()))
        }
    }
}

/// Runs an established session until the connection ends. `joined`
/// says the session began with an invite redeemed, whose `Welcome`
/// carried the whole membership already.
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: DeviceId,
    dialled: bool,
    joined: bool,
    mut ctl_send: quinn::SendStream,
    mut ctl_recv: quinn::RecvStream,
) {
    let link = shared.next_link();
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Control>();
    let (sync_tx, sync_rx) = mpsc::unbounded_channel::<SyncMessage>();
    if !shared.register(peer, link, &conn, dialled, ctl_tx, sync_tx) {
        conn.close(close_code::DUPLICATE, b"already connected");
        return;
    }
    tracing::info!(peer = %peer, addr = %conn.remote_address(), dialled, "connected");
    let driver = shared.driver.clone();
    // A session begun with an invite needs no whole roster: the inviter's
    // `Welcome` carried it, and the inviter lacks only the joiner's own
    // signed addresses, which it needs to dial the joiner later.
    let first = match (joined, dialled) {
        (false, _) => Some(shared.roster_wire()),
        (true, true) => shared.hello_parts().map(|(_, _, addrs)| Roster {
            addrs: vec![addrs],
            ..Roster::default()
        }),
        (true, false) => None,
    };
    if let Some(roster) = first {
        let _ = send_msg(&mut ctl_send, &PeerMessage::Members { roster }).await;
    }

    let writer = tokio::spawn(write_sync(
        conn.clone(),
        sync_rx,
        peer,
        shared.traffic.clone(),
    ));
    // The control stream is read by a task of its own: a read dropped by
    // `select!` half-way through a frame would lose the stream's place.
    let (frames_tx, mut frames) = mpsc::channel(16);
    let control_reader = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut ctl_recv).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    let mut readers = tokio::task::JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    let why = loop {
        tokio::select! {
            Some(frame) = frames.recv() => match frame {
                Ok(Some(bytes)) => match PeerMessage::decode(&bytes) {
                    Ok(PeerMessage::Members { roster }) => shared.merge_roster(&peer, &roster),
                    Ok(PeerMessage::Links { connected }) => shared.note_links(peer, connected),
                    Ok(PeerMessage::LinksChanged { up, down }) => shared.note_links_changed(peer, up, down),
                    Ok(PeerMessage::Removed { chain }) => {
                        if shared.learned_removed(&peer, &chain) {
                            break "this device was removed from the mesh".into();
                        }
                    }
                    Ok(PeerMessage::Refused { reason }) => break format!("refused: {reason}"),
                    Ok(other) => tracing::debug!(peer = %peer, "ignoring {other:?} after the handshake"),
                    Err(e) => {
                        conn.close(close_code::PROTOCOL, b"undecodable control message");
                        break format!("undecodable control message: {e}");
                    }
                },
                Ok(None) => break "the peer closed the control stream".into(),
                Err(e) => {
                    conn.close(close_code::PROTOCOL, b"bad control frame");
                    break e.to_string();
                }
            },
            Some(ctl) = ctl_rx.recv() => match ctl {
                Control::Send(msg) if matches!(*msg, PeerMessage::Removed { .. }) => {
                    say_last_and_close(&mut ctl_send, &conn, Some(&msg), close_code::REMOVED, "removed from the mesh").await;
                    break "the peer was removed from the mesh".into();
                }
                Control::Send(msg) => {
                    if let Err(e) = send_msg(&mut ctl_send, &msg).await {
                        break e.to_string();
                    }
                }
                Control::Frame(bytes) => {
                    if let Err(e) = ctl_send.write_all(&bytes).await {
                        break e.to_string();
                    }
                }
            },
            stream = conn.accept_uni() => match stream {
                Ok(recv) => {
                    readers.spawn(read_sync(conn.clone(), recv, peer, link, driver.clone(), shared.traffic.clone()));
                }
                Err(e) => break e.to_string(),
            },
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            _ = shutdown.changed() => {
                conn.close(close_code::SHUTDOWN, b"agent stopping");
                break "this agent is stopping".into();
            }
        }
    };
    writer.abort();
    control_reader.abort();
    readers.abort_all();
    let _ = driver.send(Input::Disconnected { peer, link });
    shared.unregister(peer, link);
    tracing::info!(peer = %peer, "disconnected: {why}");
}

/// Sends the engine's messages, each database on a stream of its own so a
/// large snapshot of one does not hold up the others.
async fn write_sync(
    conn: quinn::Connection,
    mut rx: mpsc::UnboundedReceiver<SyncMessage>,
    peer: DeviceId,
    traffic: Arc<Traffic>,
) {
    let mut streams: HashMap<String, quinn::SendStream> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        let db = msg.db().to_owned();
        if !streams.contains_key(&db) {
            match conn.open_uni().await {
                Ok(s) => {
                    streams.insert(db.clone(), s);
                }
                Err(_) => return,
            }
        }
        let Some(stream) = streams.get_mut(&db) else {
            return;
        };
        match write_sync_msg(stream, &msg, &mut FrameBuffer::take()).await {
            Ok(bytes) => traffic.count(peer, Way::Out, &msg, bytes),
            // The engine's batches are far under the frame limit; one
            // that is not is dropped, and the engine resends its content.
            Err(SessionError::TooLarge(e)) => {
                tracing::error!("cannot send a sync message: {e}");
            }
            Err(_) => return,
        }
    }
}

/// Reads sync messages from one stream and hands them to the driver.
async fn read_sync(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    peer: DeviceId,
    link: u64,
    driver: std::sync::mpsc::Sender<Input>,
    traffic: Arc<Traffic>,
) {
    loop {
        match read_pooled_frame(&mut recv).await {
            Ok(Some(bytes)) => match SyncMessage::decode(&bytes) {
                Ok(msg) => {
                    traffic.count(peer, Way::In, &msg, bytes.len() + LEN_PREFIX);
                    let msg = Box::new(msg);
                    if driver.send(Input::Message { peer, link, msg }).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, "undecodable sync message: {e}");
                    conn.close(close_code::PROTOCOL, b"undecodable sync message");
                    return;
                }
            },
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(peer = %peer, "sync stream ended: {e}");
                if matches!(e, SessionError::TooLarge(_)) {
                    conn.close(close_code::PROTOCOL, b"frame over the limit");
                }
                return;
            }
        }
    }
}
