//! What one connection may do: the device's owner anything, an app what
//! its grants and its own databases allow. IO-free: the IPC layer asks
//! before it serves, and cuts results down to what is allowed.
//!
//! Invariants:
//! - An app reads only databases it made or was granted, and of those
//!   only the granted collections and fields; a filter or an order on a
//!   field it may not see is refused, so it cannot probe hidden values.
//! - A field-limited grant never lets a write touch a field outside it: a
//!   put or a delete (which replace or remove the whole record) is
//!   refused; a patch of granted fields only is allowed.
//! - The most specific grant wins: a grant on a collection over one on
//!   its whole database.

use std::collections::BTreeSet;
use std::sync::Arc;

use blazedb_proto::api::{Filter, Write};
use blazedb_proto::apps::{AppAccess, AppGrant};
use blazedb_proto::{ErrorCode, ErrorInfo, Fields};

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub enum Access {
    /// The device's owner: everything.
    Owner,
    /// A local app: its grants and its own databases.
    App(Arc<AppView>),
}

/// An app's rights as one connection sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppView {
    /// The app's name.
    pub name: String,
    /// The databases it made.
    pub owned: BTreeSet<String>,
    /// Its grants.
    pub grants: Vec<AppGrant>,
    /// Each grant's field list as a set, made once rather than per request.
    limits: Vec<FieldLimit>,
}

impl AppView {
    /// The view of the app `name`, which made `owned` and holds `grants`.
    pub fn new(name: String, owned: BTreeSet<String>, grants: Vec<AppGrant>) -> AppView {
        let limits = grants
            .iter()
            .map(|g| {
                g.fields
                    .as_ref()
                    .map(|f| Arc::new(f.iter().cloned().collect()))
            })
            .collect();
        AppView {
            name,
            owned,
            grants,
            limits,
        }
    }
}

/// The fields of a collection an app may see: `None` for all of them.
pub type FieldLimit = Option<Arc<BTreeSet<String>>>;

/// What an app may do in one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// Whether it may write.
    pub write: bool,
    /// The only fields it sees and changes.
    pub fields: FieldLimit,
}

impl Rights {
    fn full() -> Rights {
        Rights {
            write: true,
            fields: None,
        }
    }

    /// Whether the field `name` may be seen.
    pub fn sees(&self, name: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(name))
    }
}

fn denied(message: String) -> ErrorInfo {
    ErrorInfo::new(ErrorCode::PermissionDenied, message)
}

impl Access {
    /// The app's name, or `None` for the owner.
    pub fn app(&self) -> Option<&str> {
        match self {
            Access::Owner => None,
            Access::App(v) => Some(&v.name),
        }
    }

    /// Whether this is the device's owner.
    pub fn is_owner(&self) -> bool {
        matches!(self, Access::Owner)
    }

    /// Refuses anything but the owner, for `what`.
    pub fn owner_only(&self, what: &str) -> Result<(), ErrorInfo> {
        match self {
            Access::Owner => Ok(()),
            Access::App(v) => Err(denied(format!(
                "app {:?} may not {what}: that is for the device's owner (blazectl)",
                v.name
            ))),
        }
    }

    /// Whether the app may see that `db` exists: it made it, or holds a
    /// grant on it.
    pub fn sees_db(&self, db: &str) -> bool {
        match self {
            Access::Owner => true,
            Access::App(v) => v.owned.contains(db) || v.grants.iter().any(|g| g.db == db),
        }
    }

    /// Refuses a database the app may not see; the same answer whether it
    /// exists or not, so an app cannot learn other databases' names.
    pub fn check_db(&self, db: &str) -> Result<(), ErrorInfo> {
        match self {
            Access::App(v) if !self.sees_db(db) => Err(denied(format!(
                "app {:?} has no grant on database {db:?}; the owner can give one \
                 (blazectl app grant {} {db}:read)",
                v.name, v.name
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses administering `db` (dropping it, its indexes, its sync
    /// mode) to anyone but the owner and the app that made it.
    pub fn check_admin(&self, db: &str, what: &str) -> Result<(), ErrorInfo> {
        match self {
            Access::App(v) if !v.owned.contains(db) => Err(denied(format!(
                "app {:?} may not {what} database {db:?}: only the app that made it, \
                 or the device's owner, may",
                v.name
            ))),
            _ => Ok(()),
        }
    }

    /// What the connection may do in `collection` of `db`.
    pub fn rights(&self, db: &str, collection: &str) -> Result<Rights, ErrorInfo> {
        let v = match self {
            Access::Owner => return Ok(Rights::full()),
            Access::App(v) if v.owned.contains(db) => return Ok(Rights::full()),
            Access::App(v) => v,
        };
        let on_db = || {
            v.grants
                .iter()
                .position(|g| g.db == db && g.collection.is_none())
        };
        let at = v
            .grants
            .iter()
            .position(|g| g.db == db && g.collection.as_deref() == Some(collection))
            .or_else(on_db)
            .ok_or_else(|| {
                self.check_db(db).err().unwrap_or_else(|| {
                    denied(format!(
                        "app {:?} has no grant on collection {collection:?} of database {db:?}",
                        v.name
                    ))
                })
            })?;
        Ok(Rights {
            write: v.grants[at].access == AppAccess::ReadWrite,
            fields: v.limits[at].clone(),
        })
    }

    /// The rights to read `collection` of `db` with `filters`, ordered by
    /// `order_by`: refused when a filter or the order names a field the
    /// app may not see.
    pub fn check_query(
        &self,
        db: &str,
        collection: &str,
        filters: &[Filter],
        order_by: Option<&str>,
    ) -> Result<Rights, ErrorInfo> {
        let rights = self.rights(db, collection)?;
        let named = filters.iter().map(|f| f.field.as_str()).chain(order_by);
        for field in named {
            if field != "$id" && !rights.sees(field) {
                return Err(denied(format!(
                    "field {field:?} of {db}/{collection} is not granted to app {:?}, \
                     so it may not filter or order by it",
                    self.app().unwrap_or_default()
                )));
            }
        }
        Ok(rights)
    }

    /// Refuses `write` on `db` unless the grants allow it.
    pub fn check_write(&self, db: &str, write: &Write) -> Result<(), ErrorInfo> {
        match write {
            Write::Put { collection, .. } => self.check_touch(db, collection, Touch::Whole),
            Write::Delete { collection, .. } => self.check_touch(db, collection, Touch::Whole),
            Write::Patch {
                collection,
                set,
                unset,
                ..
            } => self.check_touch(db, collection, Touch::Fields(set, unset)),
        }
    }

    /// Refuses a write to `collection` of `db` that changes `touch`
    /// unless the grants allow it.
    pub fn check_touch(
        &self,
        db: &str,
        collection: &str,
        touch: Touch<'_>,
    ) -> Result<(), ErrorInfo> {
        if self.is_owner() {
            return Ok(());
        }
        let rights = self.rights(db, collection)?;
        let app = self.app().unwrap_or_default();
        if !rights.write {
            return Err(denied(format!(
                "app {app:?} may only read {db}/{collection}"
            )));
        }
        let Some(fields) = &rights.fields else {
            return Ok(());
        };
        match touch {
            Touch::Whole => Err(denied(format!(
                "app {app:?} may change only some fields of {db}/{collection}, and a put or a \
                 delete replaces the whole record: patch the granted fields instead"
            ))),
            Touch::Fields(set, unset) => {
                match set
                    .keys()
                    .chain(unset)
                    .find(|f| !fields.contains(f.as_str()))
                {
                    Some(f) => Err(denied(format!(
                        "field {f:?} of {db}/{collection} is not granted to app {app:?}"
                    ))),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What of a record a write changes.
#[derive(Debug, Clone, Copy)]
pub enum Touch<'a> {
    /// The whole record: a put or a delete.
    Whole,
    /// The fields a patch sets and the ones it removes.
    Fields(&'a Fields, &'a [String]),
}

#[cfg(test)]
mod tests {
    use super::*;
    use blazedb_proto::Value;
    use blazedb_proto::api::FilterOp;

    fn dashboard() -> Access {
        Access::App(Arc::new(AppView::new(
            "dashboard".into(),
            BTreeSet::from(["mine".to_owned()]),
            vec![
                AppGrant::parse(
                    "bugs/bugs:read",
                    Some(vec!["title".into(), "status".into()]),
                )
                .expect("grant"),
                AppGrant::parse("notes:read-write", None).expect("grant"),
            ],
        )))
    }

    fn patch(collection: &str, field: &str) -> Write {
        Write::Patch {
            collection: collection.into(),
            id: "1".into(),
            set: Fields::from([(field.to_owned(), Value::Int(1))]),
            unset: vec![],
        }
    }

    #[test]
    fn an_app_reads_only_what_it_was_granted() {
        let app = dashboard();
        let bugs = app.rights("bugs", "bugs").expect("granted");
        assert!(!bugs.write);
        assert!(bugs.sees("title") && !bugs.sees("secret"));
        assert!(app.rights("bugs", "other").is_err());
        assert!(app.rights("private", "x").is_err());
        assert_eq!(app.rights("notes", "any").map(|r| r.fields), Ok(None));
        assert!(app.rights("mine", "x").expect("own").write);
        assert!(Access::Owner.rights("private", "x").expect("owner").write);
        assert!(app.sees_db("bugs") && app.sees_db("mine") && !app.sees_db("private"));
    }

    #[test]
    fn a_filter_cannot_probe_a_hidden_field() {
        let app = dashboard();
        let on = |field: &str| Filter {
            field: field.into(),
            op: FilterOp::Eq,
            value: Value::Int(1),
        };
        assert!(
            app.check_query("bugs", "bugs", &[on("title")], None)
                .is_ok()
        );
        assert!(
            app.check_query("bugs", "bugs", &[on("$id")], Some("status"))
                .is_ok()
        );
        let refused = app.check_query("bugs", "bugs", &[on("secret")], None);
        assert_eq!(
            refused.map_err(|e| e.code),
            Err(ErrorCode::PermissionDenied)
        );
        assert!(
            app.check_query("bugs", "bugs", &[], Some("secret"))
                .is_err()
        );
    }

    #[test]
    fn writes_need_read_write_and_stay_inside_the_fields() {
        let app = dashboard();
        assert!(app.check_write("bugs", &patch("bugs", "title")).is_err());
        assert!(app.check_write("notes", &patch("n", "anything")).is_ok());
        assert!(app.check_write("mine", &patch("n", "anything")).is_ok());
        let limited = Access::App(Arc::new(AppView::new(
            "editor".into(),
            BTreeSet::new(),
            vec![
                AppGrant::parse("bugs/bugs:read-write", Some(vec!["status".into()]))
                    .expect("grant"),
            ],
        )));
        assert!(
            limited
                .check_write("bugs", &patch("bugs", "status"))
                .is_ok()
        );
        assert!(
            limited
                .check_write("bugs", &patch("bugs", "title"))
                .is_err()
        );
        let delete = Write::Delete {
            collection: "bugs".into(),
            id: "1".into(),
        };
        assert!(limited.check_write("bugs", &delete).is_err());
        assert!(Access::Owner.check_write("bugs", &delete).is_ok());
    }
}
