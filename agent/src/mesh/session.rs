//! One connection with one peer: the membership handshake on the control
//! stream, then sync messages on one unidirectional stream per database
//! and direction, until the connection ends.
//!
//! Invariants:
//! - Nothing but the handshake is said before the peer has proved it
//!   belongs to the mesh (or used a valid invite) on this very connection.
//! - A peer is told of sync only once the session is registered as the one
//!   connection with that peer; a duplicate is closed before that.
//! - Every frame's length is checked against [`MAX_PEER_FRAME`] before it
//!   is read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use blazedb_proto::frame::{LEN_PREFIX, payload_len};
use blazedb_proto::mesh::{
    Invite, MAX_PEER_FRAME, Member, PEER_PROTOCOL_VERSION, PeerMessage, to_frame,
};
use blazedb_proto::message::EncodeError;
use blazedb_proto::{DeviceId, SyncMessage};
use tokio::sync::mpsc;

use super::driver::Input;
use super::proof::{self, Binding};
use super::state::MeshKeys;
use super::{Shared, close_code};

/// How long the other side has to prove itself.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended before it began.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer was not let in, or did not let us in.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer broke the protocol or went away.
    #[error("{0}")]
    Protocol(String),
    /// A frame was over [`MAX_PEER_FRAME`].
    #[error("{0}")]
    TooLarge(String),
}

fn protocol(e: impl std::fmt::Display) -> SessionError {
    SessionError::Protocol(e.to_string())
}

/// Reads one frame, refusing lengths over the limit before reading them.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> Result<Option<Vec<u8>>, SessionError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(protocol(e)),
    }
    let len = payload_len(prefix, MAX_PEER_FRAME)
        .map_err(|e| SessionError::TooLarge(format!("the peer sent a {e}")))?;
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(protocol)?;
    Ok(Some(buf))
}

/// Writes one message as a frame.
async fn write_msg<T: serde::Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), SessionError> {
    let frame = to_frame(msg).map_err(|e| match e {
        EncodeError::TooLarge(e) => SessionError::TooLarge(e.to_string()),
        EncodeError::Codec(e) => protocol(e),
    })?;
    send.write_all(&frame).await.map_err(protocol)
}

async fn send_msg(send: &mut quinn::SendStream, msg: &PeerMessage) -> Result<(), SessionError> {
    write_msg(send, msg).await
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

async fn refuse(
    send: &mut quinn::SendStream,
    conn: &quinn::Connection,
    reason: String,
) -> SessionError {
    let _ = send_msg(
        send,
        &PeerMessage::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    let _ = send.finish();
    // Give the refusal a moment to leave before the connection closes.
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    conn.close(close_code::REFUSED, reason.as_bytes());
    SessionError::Refused(reason)
}

/// This device's `Hello` on the connection `binding`.
fn hello(shared: &Shared, keys: &MeshKeys, binding: &Binding) -> PeerMessage {
    PeerMessage::Hello {
        version: PEER_PROTOCOL_VERSION,
        mesh: keys.id,
        proof: proof::make(&keys.secret, proof::HELLO, binding, &shared.me),
        me: shared.me_as_member(),
    }
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
                        me: shared.me_as_member(),
                    },
                )
                .await?;
                match recv_msg(&mut recv).await? {
                    PeerMessage::Welcome {
                        mesh,
                        secret,
                        proof: p,
                        members,
                    } if mesh == inv.mesh
                        && proof::check(&inv.secret, proof::WELCOME, &binding, &peer, &p) =>
                    {
                        shared.joined(MeshKeys { id: mesh, secret }, &members);
                        Ok(())
                    }
                    other => Err(SessionError::Protocol(format!(
                        "the inviter answered with {other:?}"
                    ))),
                }
            }
            None => {
                let keys = shared
                    .keys()
                    .ok_or_else(|| SessionError::Refused("this device is in no mesh".into()))?;
                send_msg(&mut send, &hello(shared, &keys, &binding)).await?;
                match recv_msg(&mut recv).await? {
                    PeerMessage::Hello {
                        mesh,
                        proof: p,
                        me: member,
                        ..
                    } if mesh == keys.id
                        && member.device == peer
                        && proof::check(&keys.secret, proof::HELLO, &binding, &peer, &p) =>
                    {
                        shared.note_member(&member);
                        Ok(())
                    }
                    PeerMessage::Hello { .. } => Err(refuse(
                        &mut send,
                        conn,
                        "the peer's membership proof is wrong".into(),
                    )
                    .await),
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
) -> Result<(quinn::SendStream, quinn::RecvStream), SessionError> {
    let binding = Binding::of(conn).map_err(protocol)?;
    let work = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(protocol)?;
        let first = recv_msg(&mut recv).await?;
        match first {
            PeerMessage::Hello {
                version,
                mesh,
                proof: p,
                me: member,
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
                if shared.is_removed(&peer) {
                    return Err(refuse(
                        &mut send,
                        conn,
                        "this device was removed from the mesh".into(),
                    )
                    .await);
                }
                if member.device != peer
                    || !proof::check(&keys.secret, proof::HELLO, &binding, &peer, &p)
                {
                    return Err(
                        refuse(&mut send, conn, "the membership proof is wrong".into()).await,
                    );
                }
                send_msg(&mut send, &hello(shared, &keys, &binding)).await?;
                shared.note_member(&member);
                Ok((send, recv))
            }
            PeerMessage::Join {
                version,
                invite,
                proof: p,
                me: member,
            } => {
                if version != PEER_PROTOCOL_VERSION || member.device != peer {
                    return Err(refuse(&mut send, conn, "malformed join".into()).await);
                }
                let Some((keys, secret)) = shared.redeem(&invite, |s| {
                    proof::check(s, proof::JOIN, &binding, &peer, &p)
                }) else {
                    return Err(refuse(
                        &mut send,
                        conn,
                        "the invite is unknown, expired, used up or was not proved".into(),
                    )
                    .await);
                };
                shared.note_member(&member);
                let proof = proof::make(&secret, proof::WELCOME, &binding, &shared.me);
                send_msg(
                    &mut send,
                    &PeerMessage::Welcome {
                        mesh: keys.id,
                        secret: keys.secret,
                        proof,
                        members: shared.member_list(),
                    },
                )
                .await?;
                tracing::info!(peer = %peer, name = member.name, "a device joined the mesh with an invite");
                Ok((send, recv))
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

/// Runs an established session until the connection ends.
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: DeviceId,
    dialled: bool,
    mut ctl_send: quinn::SendStream,
    mut ctl_recv: quinn::RecvStream,
) {
    let link = shared.next_link();
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<PeerMessage>();
    if !shared.register(peer, link, &conn, dialled, ctl_tx) {
        conn.close(close_code::DUPLICATE, b"already connected");
        return;
    }
    tracing::info!(peer = %peer, addr = %conn.remote_address(), dialled, "connected");
    let (sync_tx, sync_rx) = mpsc::unbounded_channel::<SyncMessage>();
    let driver = shared.driver.clone();
    let _ = driver.send(Input::Connected {
        peer,
        link,
        tx: sync_tx,
    });
    let _ = send_msg(
        &mut ctl_send,
        &PeerMessage::Members {
            members: shared.member_list(),
        },
    )
    .await;

    let writer = tokio::spawn(write_sync(conn.clone(), sync_rx));
    let mut readers = tokio::task::JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    let why = loop {
        tokio::select! {
            frame = read_frame(&mut ctl_recv) => match frame {
                Ok(Some(bytes)) => match PeerMessage::decode(&bytes) {
                    Ok(PeerMessage::Members { members }) => shared.merge_members(&members),
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
            Some(msg) = ctl_rx.recv() => {
                if let Err(e) = send_msg(&mut ctl_send, &msg).await {
                    break e.to_string();
                }
            }
            stream = conn.accept_uni() => match stream {
                Ok(recv) => {
                    readers.spawn(read_sync(conn.clone(), recv, peer, link, driver.clone()));
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
    readers.abort_all();
    let _ = driver.send(Input::Disconnected { peer, link });
    shared.unregister(peer, link);
    tracing::info!(peer = %peer, "disconnected: {why}");
}

/// Sends the engine's messages, each database on a stream of its own so a
/// large snapshot of one does not hold up the others.
async fn write_sync(conn: quinn::Connection, mut rx: mpsc::UnboundedReceiver<SyncMessage>) {
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
        match write_msg(stream, &msg).await {
            Ok(()) => {}
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
) {
    loop {
        match read_frame(&mut recv).await {
            Ok(Some(bytes)) => match SyncMessage::decode(&bytes) {
                Ok(msg) => {
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

/// A member record for a device we know only by id.
pub(crate) fn bare_member(device: DeviceId) -> Member {
    Member {
        device,
        name: String::new(),
        role: Default::default(),
        removed: false,
        addrs: Vec::new(),
    }
}
