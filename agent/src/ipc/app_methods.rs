//! Answers the `app.*` methods: adding apps, granting and revoking. Only
//! the owner gets here (see [`super::authorize`]).

use blazedb_proto::api::{DroppedResult, Request};
use blazedb_proto::apps::{AppAddResult, AppListResult};

use super::Ctx;
use super::mesh_methods::encode;

/// Answers an `app.*` request into `out`.
pub(crate) fn handle(ctx: &Ctx, id: u64, req: Request, out: &mut Vec<u8>) {
    let apps = &ctx.apps;
    match req {
        Request::AppAdd(p) => {
            let r = apps.add(&p.name, p.grants, p.uid);
            if r.is_ok() {
                tracing::info!(app = %p.name, "app added");
            }
            encode(
                ctx,
                out,
                id,
                r.map(|(app, token)| AppAddResult { app, token }),
            );
        }
        Request::AppList(_) => encode(ctx, out, id, Ok(AppListResult { apps: apps.list() })),
        Request::AppShow(p) => encode(ctx, out, id, apps.show(&p.name)),
        Request::AppRemove(p) => {
            let r = apps
                .remove(&p.name)
                .map(|dropped| DroppedResult { dropped });
            encode(ctx, out, id, r);
        }
        Request::AppGrantAdd(p) => encode(ctx, out, id, apps.grant(&p.name, p.grant)),
        Request::AppRevoke(p) => {
            let r = apps.revoke(&p.name, &p.db, p.collection.as_deref());
            encode(ctx, out, id, r);
        }
        other => unreachable!("{} is not an app method", other.method()),
    }
}
