//! Answers the mesh methods: identity, mesh membership, invites, peers.

use std::sync::Arc;
use std::time::Duration;

use blazedb_proto::api::{
    CreatedResult, DbKeyGrantResult, DbPeer, Departed, DroppedResult, MemberSummary,
    MeshInviteParams, MeshInviteResult, MeshStatusResult, PeerInfo, PeerListResult, PeersResult,
    Request, StaticPeerInfo, SyncMode,
};
use blazedb_proto::mesh::Invite;
use blazedb_proto::message;
use blazedb_proto::{DeviceId, ErrorCode, ErrorInfo};
use serde::Serialize;

use super::Ctx;
use super::conn::ReplySender;
use super::handler::Handled;
use crate::mesh::{Mesh, PeerView, Reach, role_name};
use crate::store::Command;

/// How long an invite works unless the caller says.
const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(3600);

/// Appends the response to request `id`: its result, or why it failed.
pub(super) fn encode<R: Serialize>(ctx: &Ctx, out: &mut Vec<u8>, id: u64, r: Result<R, ErrorInfo>) {
    match r {
        Ok(v) => super::handler::encode_result(out, id, Ok(&v), ctx.max_frame),
        Err(e) => message::encode_error(out, id, &e),
    }
}

fn invalid(e: impl std::fmt::Display) -> ErrorInfo {
    ErrorInfo::new(ErrorCode::InvalidArgument, e.to_string())
}

fn mesh(ctx: &Ctx) -> Result<&Mesh, ErrorInfo> {
    ctx.mesh.as_ref().map_err(|why| {
        ErrorInfo::new(
            ErrorCode::Other,
            format!("the mesh is not running on this agent: {why}"),
        )
    })
}

fn summary(device: &DeviceId, name: &str) -> MemberSummary {
    MemberSummary {
        device_id: device.to_string(),
        name: name.to_owned(),
    }
}

fn static_peers(m: &Mesh) -> Vec<StaticPeerInfo> {
    m.static_peers()
        .into_iter()
        .map(|p| StaticPeerInfo {
            state: if p.device.is_some() {
                "connected"
            } else {
                "unreachable"
            }
            .to_owned(),
            device_id: p.device.map(|d| d.to_string()),
            last_error: p.last_error,
            addr: p.addr,
        })
        .collect()
}

fn status(ctx: &Ctx, m: &Mesh) -> MeshStatusResult {
    let view = m.membership();
    MeshStatusResult {
        device_id: ctx.store.device().to_string(),
        name: view
            .me
            .as_ref()
            .map_or_else(|| m.name().to_owned(), |r| r.name.clone()),
        role: role_name(m.role()).to_owned(),
        mesh: view.mesh.map(|(id, _)| id.to_hex()),
        listen: m.local_addr().to_string(),
        addrs: m.addrs(),
        mdns: m.mdns(),
        members: view.members as u32,
        admin: view.me.as_ref().is_some_and(|r| r.admin),
        teams: view
            .me
            .as_ref()
            .map(|r| r.teams.clone())
            .unwrap_or_default(),
        admins: view
            .admins
            .iter()
            .map(|r| summary(&r.device, &r.name))
            .collect(),
        key_epoch: view.mesh.map_or(0, |(_, e)| e),
        departed: view.departed.map(|d| Departed {
            mesh: d.mesh,
            by: MemberSummary {
                device_id: d.by,
                name: d.by_name,
            },
            at_ms: d.at_ms,
            left: d.left,
        }),
        static_peers: static_peers(m),
        already_member: false,
    }
}

fn peer_info(p: PeerView) -> PeerInfo {
    let (state, via) = match p.reach {
        Reach::Connected => ("connected", None),
        Reach::Relayed { via } => ("relayed", Some(via)),
        Reach::Offline => ("offline", None),
        Reach::Removed => ("removed", None),
    };
    PeerInfo {
        device_id: p.record.device.to_string(),
        name: p.record.name.clone(),
        role: role_name(p.record.role).to_owned(),
        teams: p.record.teams.clone(),
        admin: p.record.admin && p.record.removed.is_none(),
        state: state.to_owned(),
        via,
        address: p
            .address
            .map(|a| a.to_string())
            .or_else(|| p.addrs.first().cloned()),
        rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
        last_sync_ms: p.last_sync_ms,
        warning: p.clone_addrs.map(|addrs| {
            let at: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            format!(
                "live at {} at once: two machines run with this device's key \
                 (a cloned disk or a restored backup); move device.key away on one",
                at.join(" and ")
            )
        }),
    }
}

fn peers(m: &Mesh) -> PeersResult {
    PeersResult {
        peers: m.peers().into_iter().map(peer_info).collect(),
    }
}

fn invite(m: &Mesh, p: MeshInviteParams) -> Result<MeshInviteResult, ErrorInfo> {
    let ttl = p.ttl_secs.map_or(DEFAULT_INVITE_TTL, Duration::from_secs);
    if ttl.is_zero() {
        return Err(invalid("an invite must last at least a second"));
    }
    let uses = match p.uses {
        None => Some(1),
        Some(0) => None,
        Some(n) => Some(n),
    };
    let teams = clean_teams(p.teams)?;
    let invite = m
        .invite(ttl, uses, teams)
        .map_err(|e| refused(format!("{e:#}")))?;
    Ok(MeshInviteResult {
        code: invite.to_code(),
        expires_ms: invite.expires_ms,
        uses,
    })
}

/// Teams as given, trimmed, without empties or repeats.
fn clean_teams(teams: Vec<String>) -> Result<Vec<String>, ErrorInfo> {
    let mut out: Vec<String> = Vec::new();
    for t in teams {
        let t = t.trim().to_owned();
        if t.is_empty() {
            continue;
        }
        if t.contains(',') || t.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "{t:?} is not a team name: use letters, digits, - and _"
            )));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Refusals of authority (not an admin, the last admin) and other
/// requests the mesh cannot carry out.
fn refused(e: impl std::fmt::Display) -> ErrorInfo {
    ErrorInfo::new(ErrorCode::InvalidArgument, e.to_string())
}

fn resolve(m: &Mesh, spec: &str) -> Result<DeviceId, ErrorInfo> {
    m.resolve(spec).map_err(|e| invalid(format!("{e:#}")))
}

fn check_addr(addr: &str) -> Result<(), ErrorInfo> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(invalid(format!(
            "{addr:?} is not an address: use host:port, like hub.example.org:7340"
        ))),
    }
}

/// The devices a database is to sync with, named as the user named them,
/// as ids: each once, not this device, and with a direction (leaving a
/// device out is how it gets none).
fn db_peers(
    ctx: &Ctx,
    peers: Option<Vec<DbPeer>>,
) -> Result<Option<Vec<(DeviceId, SyncMode)>>, ErrorInfo> {
    let Some(peers) = peers else {
        return Ok(None);
    };
    let m = mesh(ctx)?;
    let mut out: Vec<(DeviceId, SyncMode)> = Vec::new();
    for p in peers {
        let device = resolve(m, &p.device)?;
        if device == ctx.store.device() {
            return Err(invalid(
                "a database syncs with other devices: leave this one out",
            ));
        }
        if p.sync_mode == SyncMode::Local {
            return Err(invalid(format!(
                "{}: a peer is synced with on, pull or push; leave it out to sync nothing with it",
                p.device
            )));
        }
        match out.iter_mut().find(|(d, _)| *d == device) {
            Some(had) => had.1 = p.sync_mode,
            None => out.push((device, p.sync_mode)),
        }
    }
    out.sort_by_key(|(d, _)| *d);
    Ok(Some(out))
}

/// Answers request `id` through the reply channel once `work`, given the
/// running mesh, is done; at once if the mesh is not running.
fn answer_later<R, Fut>(
    ctx: &Arc<Ctx>,
    id: u64,
    tx: &ReplySender,
    out: &mut Vec<u8>,
    work: impl FnOnce(Mesh, Arc<Ctx>) -> Fut,
) -> Handled
where
    R: Serialize + Send + 'static,
    Fut: std::future::Future<Output = Result<R, ErrorInfo>> + Send + 'static,
{
    let m = match mesh(ctx) {
        Ok(m) => m.clone(),
        Err(e) => {
            encode::<()>(ctx, out, id, Err(e));
            return Handled::Done;
        }
    };
    let work = work(m, ctx.clone());
    let (ctx, tx) = (ctx.clone(), tx.clone());
    tokio::spawn(async move {
        let r = work.await;
        let mut out = Vec::new();
        encode(&ctx, &mut out, id, r);
        let _ = tx.send(out);
    });
    Handled::Pending
}

/// Handles a mesh method.
pub(crate) fn handle(
    ctx: &Arc<Ctx>,
    id: u64,
    req: Request,
    tx: &ReplySender,
    out: &mut Vec<u8>,
) -> Handled {
    match req {
        Request::MeshStatus(_) => {
            encode(ctx, out, id, mesh(ctx).map(|m| status(ctx, m)));
        }
        Request::MeshCreate(_) => {
            let r = mesh(ctx).and_then(|m| {
                m.create().map_err(|e| invalid(format!("{e:#}")))?;
                Ok(status(ctx, m))
            });
            encode(ctx, out, id, r);
        }
        Request::MeshInvite(p) => encode(ctx, out, id, mesh(ctx).and_then(|m| invite(m, p))),
        Request::MeshRemove(p) => {
            let r = mesh(ctx).and_then(|m| {
                let device = resolve(m, &p.device)?;
                m.remove(&device).map_err(refused)?;
                Ok(status(ctx, m))
            });
            encode(ctx, out, id, r);
        }
        Request::MeshAdmin(p) => {
            let r = mesh(ctx).and_then(|m| {
                let device = resolve(m, &p.device)?;
                m.set_admin(&device, p.admin).map_err(refused)?;
                Ok(status(ctx, m))
            });
            encode(ctx, out, id, r);
        }
        Request::MeshDeviceSet(p) => {
            let r = mesh(ctx).and_then(|m| {
                let device = resolve(m, &p.device)?;
                let teams = p.teams.map(clean_teams).transpose()?;
                m.set_device(&device, p.name, teams).map_err(refused)?;
                if device == ctx.store.device() {
                    let me = m.membership().me.ok_or_else(|| refused("no record"))?;
                    return Ok(PeerInfo {
                        device_id: me.device.to_string(),
                        name: me.name.clone(),
                        role: role_name(me.role).to_owned(),
                        teams: me.teams.clone(),
                        admin: me.admin,
                        state: "this device".into(),
                        via: None,
                        address: None,
                        rtt_ms: None,
                        last_sync_ms: None,
                        warning: None,
                    });
                }
                m.peers()
                    .into_iter()
                    .find(|x| x.record.device == device)
                    .map(peer_info)
                    .ok_or_else(|| refused("the device is gone"))
            });
            encode(ctx, out, id, r);
        }
        Request::DbRulesSet(p) => {
            let db = p.db.clone();
            let r = mesh(ctx).and_then(|m| {
                ctx.store.db(&db).map_err(|e| invalid(format!("{e}")))?;
                m.set_rules(p).map_err(|e| refused(format!("{e:#}")))?;
                Ok(m.rules(&db, ctx.store.wish(&db).as_ref()))
            });
            encode(ctx, out, id, r);
        }
        Request::DbKeyGrant(p) => {
            let r = mesh(ctx).and_then(|m| {
                let db = ctx.store.db(&p.name).map_err(|e| invalid(format!("{e}")))?;
                if !db.is_e2e() {
                    return Err(invalid(format!(
                        "database {} is not end-to-end encrypted: every member with access \
                         reads it already",
                        p.name
                    )));
                }
                let device = resolve(m, &p.device)?;
                let granted = m
                    .grant_key(&p.name, &device)
                    .map_err(|e| refused(format!("{e:#}")))?;
                Ok(DbKeyGrantResult {
                    device_id: device.to_string(),
                    granted,
                })
            });
            encode(ctx, out, id, r);
        }
        Request::DbKeyRotate(p) => {
            let r = mesh(ctx).and_then(|m| {
                let db = ctx.store.db(&p.name).map_err(|e| invalid(format!("{e}")))?;
                if !db.is_e2e() {
                    return Err(invalid(format!(
                        "database {} is not end-to-end encrypted: it has no key",
                        p.name
                    )));
                }
                m.rotate_key(&p.name)
                    .map_err(|e| refused(format!("{e:#}")))?;
                ctx.store
                    .db_info(&p.name)
                    .map_err(|e| invalid(format!("{e}")))
            });
            encode(ctx, out, id, r);
        }
        Request::DbRulesGet(p) => {
            let r = mesh(ctx).and_then(|m| {
                ctx.store.db(&p.name).map_err(|e| invalid(format!("{e}")))?;
                Ok(m.rules(&p.name, ctx.store.wish(&p.name).as_ref()))
            });
            encode(ctx, out, id, r);
        }
        Request::Peers(_) => encode(ctx, out, id, mesh(ctx).map(peers)),
        Request::PeerAdd(p) => {
            let r = mesh(ctx).and_then(|m| {
                check_addr(&p.addr)?;
                let created = m.add_peer(&p.addr).map_err(|e| invalid(format!("{e:#}")))?;
                Ok(CreatedResult { created })
            });
            encode(ctx, out, id, r);
        }
        Request::PeerRemove(p) => {
            let r = mesh(ctx).and_then(|m| {
                let dropped = m
                    .remove_peer(&p.addr)
                    .map_err(|e| invalid(format!("{e:#}")))?;
                Ok(DroppedResult { dropped })
            });
            encode(ctx, out, id, r);
        }
        Request::PeerList(_) => encode(
            ctx,
            out,
            id,
            mesh(ctx).map(|m| PeerListResult {
                peers: static_peers(m),
            }),
        ),
        Request::DbPeers(p) => {
            let peers = match db_peers(ctx, p.peers) {
                Ok(peers) => peers,
                Err(e) => {
                    encode::<()>(ctx, out, id, Err(e));
                    return Handled::Done;
                }
            };
            ctx.store.submit(Command::SetPeers {
                db: p.name,
                peers,
                reply: super::handler::reply_to(tx, id, ctx.max_frame, |info| info),
            });
            return Handled::Pending;
        }
        Request::Dashboard(_) => {
            let r = ctx.dashboard.clone().map_err(|why| {
                ErrorInfo::new(
                    ErrorCode::Other,
                    format!("the dashboard is not served: {why}"),
                )
            });
            encode(ctx, out, id, r);
        }
        Request::Topology(_) => {
            return answer_later(ctx, id, tx, out, |m, _| async move {
                Ok::<_, ErrorInfo>(m.topology().await)
            });
        }
        Request::MeshLeave(_) => {
            return answer_later(ctx, id, tx, out, |m, ctx| async move {
                m.leave().await.map(|()| status(&ctx, &m)).map_err(refused)
            });
        }
        Request::MeshJoin(p) => {
            let invite = match Invite::from_code(&p.code) {
                Ok(i) => i,
                Err(e) => {
                    encode::<()>(ctx, out, id, Err(invalid(e)));
                    return Handled::Done;
                }
            };
            return answer_later(ctx, id, tx, out, |m, ctx| async move {
                m.join(&invite)
                    .await
                    .map(|joined| MeshStatusResult {
                        already_member: !joined,
                        ..status(&ctx, &m)
                    })
                    .map_err(|e| ErrorInfo::new(ErrorCode::Other, format!("{e:#}")))
            });
        }
        other => {
            let e = ErrorInfo::new(
                ErrorCode::Internal,
                format!("{} is not a mesh method", other.method()),
            );
            encode::<()>(ctx, out, id, Err(e));
        }
    }
    Handled::Done
}
