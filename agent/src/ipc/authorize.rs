//! Which requests a connection may make, checked before any is served.
//! What a request may then see (fields, collections, databases) is cut
//! where its answer is made.

use blazedb_proto::api::Request;
use blazedb_proto::{ErrorInfo, RawPuts};

use crate::apps::{Access, Touch};

/// Refuses `req` unless `access` allows it. The owner may make any request;
/// an app reads and writes within its grants, administers only databases
/// it made, and may not touch the mesh, rules, keys or apps.
pub(crate) fn authorize(access: &Access, req: &Request) -> Result<(), ErrorInfo> {
    if access.is_owner() {
        return Ok(());
    }
    match req {
        // Answered with only what the app may see.
        Request::Hello(_) | Request::Status(_) | Request::DbList(_) | Request::Unsubscribe(_) => {
            Ok(())
        }
        // Whether the name is free is only told once the app may have it.
        Request::DbCreate(_) => Ok(()),
        Request::DbOpen(p) => access.check_db(&p.name),
        Request::DbDrop(p) => access.check_admin(&p.name, "drop"),
        Request::DbSync(p) => access.check_admin(&p.name, "change how it syncs"),
        Request::DbSet(p) => access.check_admin(&p.name, "change the settings of"),
        Request::DbPeers(p) => access.check_admin(&p.name, "change whom it syncs with"),
        Request::IndexCreate(p) | Request::IndexDrop(p) => {
            access.check_admin(&p.db, "change the indexes of")
        }
        Request::Get(p) => access.rights(&p.db, &p.collection).map(drop),
        Request::GetMany(p) => access.rights(&p.db, &p.collection).map(drop),
        Request::Query(p) => access
            .check_query(&p.db, &p.collection, &p.filters, p.order_by.as_deref())
            .map(drop),
        Request::Subscribe(p) => match &p.collection {
            Some(c) => access.rights(&p.db, c).map(drop),
            None => access.check_db(&p.db),
        },
        Request::Put(p) => access.check_touch(&p.db, &p.collection, Touch::Whole),
        Request::Delete(p) => access.check_touch(&p.db, &p.collection, Touch::Whole),
        Request::Patch(p) => {
            access.check_touch(&p.db, &p.collection, Touch::Fields(&p.set, &p.unset))
        }
        Request::Batch(p) => p
            .writes
            .iter()
            .try_for_each(|w| access.check_write(&p.db, w)),
        other => access.owner_only(&format!("call {}", other.method())),
    }
}

/// [`authorize`] for puts read in place ([`RawPuts`]): each one touches
/// its whole record, as a decoded put does.
pub(crate) fn authorize_puts(access: &Access, puts: &RawPuts<'_>) -> Result<(), ErrorInfo> {
    puts.puts
        .iter()
        .try_for_each(|p| access.check_touch(puts.db, p.collection, Touch::Whole))
}
