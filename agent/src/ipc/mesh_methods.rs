//! Answers the mesh methods: identity, mesh membership, invites, peers.

use std::sync::Arc;
use std::time::Duration;

use blazedb_proto::api::{
    CreatedResult, MeshInviteParams, MeshInviteResult, MeshStatusResult, PeerInfo, PeersResult,
    Request,
};
use blazedb_proto::mesh::{Invite, Role};
use blazedb_proto::message;
use blazedb_proto::{DeviceId, ErrorCode, ErrorInfo};
use serde::Serialize;

use super::Ctx;
use super::conn::ReplySender;
use super::handler::Handled;
use crate::mesh::Mesh;

/// How long an invite works unless the caller says.
const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(3600);

fn encode<R: Serialize>(ctx: &Ctx, out: &mut Vec<u8>, id: u64, r: Result<R, ErrorInfo>) {
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

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Device => "device",
        Role::Hub => "hub",
    }
}

fn status(ctx: &Ctx, m: &Mesh) -> MeshStatusResult {
    MeshStatusResult {
        device_id: ctx.store.device().to_string(),
        name: m.name().to_owned(),
        role: role_name(m.role()).to_owned(),
        mesh: m.mesh_id().map(|id| id.to_hex()),
        listen: m.local_addr().to_string(),
        addrs: m.addrs().to_vec(),
        mdns: m.mdns(),
        members: m.member_count() as u32,
    }
}

fn parse_device(text: &str) -> Result<DeviceId, ErrorInfo> {
    text.parse().map_err(invalid)
}

fn peers(m: &Mesh) -> PeersResult {
    PeersResult {
        peers: m
            .peers()
            .into_iter()
            .map(|p| PeerInfo {
                device_id: p.member.device.to_string(),
                name: p.member.name.clone(),
                role: role_name(p.member.role).to_owned(),
                state: if p.member.removed {
                    "removed"
                } else if p.connected {
                    "connected"
                } else {
                    "offline"
                }
                .to_owned(),
                address: p
                    .address
                    .map(|a| a.to_string())
                    .or_else(|| p.member.addrs.first().cloned()),
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
            })
            .collect(),
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
    let invite = m.invite(ttl, uses).map_err(|e| invalid(format!("{e:#}")))?;
    Ok(MeshInviteResult {
        code: invite.to_code(),
        expires_ms: invite.expires_ms,
        uses,
    })
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
                let device = parse_device(&p.device)?;
                m.remove(&device).map_err(|e| invalid(format!("{e:#}")))?;
                Ok(status(ctx, m))
            });
            encode(ctx, out, id, r);
        }
        Request::Peers(_) => encode(ctx, out, id, mesh(ctx).map(peers)),
        Request::PeerAdd(p) => {
            let r = mesh(ctx).and_then(|m| {
                check_addr(&p.addr)?;
                m.add_peer(&p.addr).map_err(|e| invalid(format!("{e:#}")))?;
                Ok(CreatedResult { created: true })
            });
            encode(ctx, out, id, r);
        }
        Request::MeshJoin(p) => {
            let m = match mesh(ctx) {
                Ok(m) => m.clone(),
                Err(e) => {
                    encode::<()>(ctx, out, id, Err(e));
                    return Handled::Done;
                }
            };
            let invite = match Invite::from_code(&p.code) {
                Ok(i) => i,
                Err(e) => {
                    encode::<()>(ctx, out, id, Err(invalid(e)));
                    return Handled::Done;
                }
            };
            let (ctx, tx) = (ctx.clone(), tx.clone());
            tokio::spawn(async move {
                let r = m
                    .join(&invite)
                    .await
                    .map(|()| status(&ctx, &m))
                    .map_err(|e| ErrorInfo::new(ErrorCode::Other, format!("{e:#}")));
                let mut out = Vec::new();
                encode(&ctx, &mut out, id, r);
                let _ = tx.send(out);
            });
            return Handled::Pending;
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
