//! Apps on one device: what the owner grants a local app, as the `app.*`
//! methods carry it.
//!
//! A grant names a database, optionally one collection of it, read or
//! read-write access, and optionally the only fields the app may see and
//! change. Grants are local to the device that made them; they never
//! travel to peers.
//!
//! On the command line a grant is written `DB[/COLLECTION][:read|:read-write]`
//! (read when the access is left out), its fields given apart.

use serde::{Deserialize, Serialize};

/// What an app may do where a grant applies.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AppAccess {
    /// Get, query and subscribe.
    #[default]
    Read,
    /// Read, and write too.
    ReadWrite,
}

impl std::fmt::Display for AppAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppAccess::Read => "read",
            AppAccess::ReadWrite => "read-write",
        })
    }
}

/// One grant to an app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppGrant {
    /// The database.
    pub db: String,
    /// The one collection it covers; every collection when missing.
    #[serde(default)]
    pub collection: Option<String>,
    /// Read, or read-write.
    #[serde(default)]
    pub access: AppAccess,
    /// The only fields the app sees and may change (the record id is
    /// always seen); every field when missing.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

impl AppGrant {
    /// Reads a grant written `DB[/COLLECTION][:read|:read-write]`, with
    /// `fields` as its field list.
    pub fn parse(spec: &str, fields: Option<Vec<String>>) -> Result<AppGrant, String> {
        let (scope, access) = match spec.rsplit_once(':') {
            Some((scope, "read")) => (scope, AppAccess::Read),
            Some((scope, "read-write" | "rw")) => (scope, AppAccess::ReadWrite),
            Some((_, other)) => {
                return Err(format!(
                    "grant {spec:?}: access {other:?} is not `read` or `read-write`"
                ));
            }
            None => (spec, AppAccess::Read),
        };
        let (db, collection) = match scope.split_once('/') {
            Some((db, collection)) => (db, Some(collection)),
            None => (scope, None),
        };
        if db.is_empty() || collection.is_some_and(str::is_empty) {
            return Err(format!(
                "grant {spec:?} names no database or an empty collection: \
                 write DB, DB/COLLECTION, optionally with :read or :read-write"
            ));
        }
        if let Some(fields) = &fields
            && (fields.is_empty() || fields.iter().any(String::is_empty))
        {
            return Err(format!("grant {spec:?}: a field list needs field names"));
        }
        Ok(AppGrant {
            db: db.to_owned(),
            collection: collection.map(str::to_owned),
            access,
            fields,
        })
    }

    /// Whether this grant is about the same database and collection as
    /// `other`, so that one replaces the other.
    pub fn same_scope(&self, other: &AppGrant) -> bool {
        self.db == other.db && self.collection == other.collection
    }
}

impl std::fmt::Display for AppGrant {
    /// The grant as written on the command line, fields after a space.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.db)?;
        if let Some(c) = &self.collection {
            write!(f, "/{c}")?;
        }
        write!(f, ":{}", self.access)?;
        if let Some(fields) = &self.fields {
            write!(f, " fields {}", fields.join(","))?;
        }
        Ok(())
    }
}

/// An app as `app.list` and `app.show` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    /// The app's name.
    pub name: String,
    /// The only user id whose processes may connect as it; the agent's
    /// own user when missing.
    #[serde(default)]
    pub uid: Option<u32>,
    /// What it was granted.
    pub grants: Vec<AppGrant>,
    /// The databases it made, to which it has full access.
    pub databases: Vec<String>,
    /// Its connections open now.
    pub connections: u32,
}

/// Params of `app.add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppAddParams {
    /// The app's name: letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Its grants.
    #[serde(default)]
    pub grants: Vec<AppGrant>,
    /// The user id whose processes connect as it, when that is not the
    /// agent's own user.
    #[serde(default)]
    pub uid: Option<u32>,
}

/// Result of `app.add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppAddResult {
    /// The app.
    pub app: AppInfo,
    /// Its token, shown this once: the agent keeps only its hash.
    pub token: String,
}

/// Params of `app.show` and `app.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppName {
    /// The app's name.
    pub name: String,
}

/// Result of `app.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppListResult {
    /// Every app, by name.
    pub apps: Vec<AppInfo>,
}

/// Params of `app.grant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppGrantParams {
    /// The app's name.
    pub name: String,
    /// The grant; it replaces one of the same database and collection.
    pub grant: AppGrant,
}

/// Params of `app.revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRevokeParams {
    /// The app's name.
    pub name: String,
    /// The database.
    pub db: String,
    /// Only the grant on this collection; every grant on the database
    /// when missing.
    #[serde(default)]
    pub collection: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_read_as_written() {
        let g = AppGrant::parse("bugs/bugs:read", Some(vec!["id".into(), "title".into()]))
            .expect("grant");
        assert_eq!(g.db, "bugs");
        assert_eq!(g.collection.as_deref(), Some("bugs"));
        assert_eq!(g.access, AppAccess::Read);
        assert_eq!(g.to_string(), "bugs/bugs:read fields id,title");
        let g = AppGrant::parse("notes:read-write", None).expect("grant");
        assert_eq!((g.collection, g.access), (None, AppAccess::ReadWrite));
        assert_eq!(
            AppGrant::parse("notes", None).expect("grant").access,
            AppAccess::Read
        );
        for bad in ["", ":read", "notes/", "notes:write", "notes/x:admin"] {
            assert!(AppGrant::parse(bad, None).is_err(), "{bad:?} was taken");
        }
        assert!(AppGrant::parse("notes", Some(vec![])).is_err());
    }
}
