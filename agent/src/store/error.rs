//! What can go wrong in the store.

use blazedb_proto::{ErrorCode, ErrorInfo};

/// An error from the store, with a message a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No database has that name.
    #[error("no database named {0:?}; create it with db.create (blazectl db create {0})")]
    UnknownDatabase(String),
    /// The database has no such collection.
    #[error("database {db:?} has no collection {collection:?}{}", known_list(.known))]
    UnknownCollection {
        /// The database.
        db: String,
        /// The collection asked for.
        collection: String,
        /// The collections that exist.
        known: Vec<String>,
    },
    /// A database of that name exists already.
    #[error("a database named {0:?} exists already")]
    DatabaseExists(String),
    /// No record has that id.
    #[error("no record {id:?} in {db}/{collection}")]
    NotFound {
        /// The database.
        db: String,
        /// The collection.
        collection: String,
        /// The id.
        id: String,
    },
    /// An argument is not allowed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A value has the wrong type for what was asked of it.
    #[error("{0}")]
    TypeMismatch(String),
    /// The disk is full.
    #[error("the disk is full, nothing was written: {0}")]
    Full(String),
    /// The storage engine failed.
    #[error("storage error, nothing was written: {0}")]
    Storage(String),
    /// The stored data is not what this version expects.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A store file failed its checksum or could not be decoded: the disk
    /// damaged it.
    #[error(
        "the store's files are damaged ({0}); stop blazed, copy its data directory somewhere \
         safe, and run `blazed repair` to find the damage and `blazed repair --rebuild` to \
         keep what can be read and take the rest back from peers"
    )]
    Damaged(String),
    /// The database is end-to-end encrypted and this device holds no key
    /// to read or write it.
    #[error(
        "database {0:?} is end-to-end encrypted and this device holds no key for it \
         (it relays the database without reading it); a device that holds the key \
         grants it to members with access (an admin grants a hub: blazectl db key grant {0} DEVICE)"
    )]
    Sealed(String),
    /// The store was written by a newer agent, in a form this one does
    /// not know: reading it could misread what it holds.
    #[error(
        "the store was written by a newer blazed (store format {found}; this one reads up to \
         {reads}): run that version of blazed or a later one on this data directory"
    )]
    TooNew {
        /// The format the store is in.
        found: u32,
        /// The newest format this agent reads.
        reads: u32,
    },
    /// The content keys could not be read or kept.
    #[error("{0}")]
    Keys(#[from] crate::crypto::keyring::KeyringError),
    /// The store is shutting down.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The database was dropped on this device: a peer's copy does not
    /// bring it back.
    #[error(
        "database {0:?} was dropped on this device, so peers' copies are not taken back; \
         `blazectl db create {0}` makes it here again and syncs it"
    )]
    DroppedHere(String),
    /// A subscription's cursor is older than the change log kept.
    #[error(
        "the changes of {db:?} up to cursor {trimmed} were compacted away, and cursor {since} \
         is older: read the records again (query) and subscribe from the head db.open gives"
    )]
    CursorExpired {
        /// The database.
        db: String,
        /// The cursor asked for.
        since: u64,
        /// The newest cursor compacted away.
        trimmed: u64,
    },
    /// A subscription's cursor belongs to a change log this replica no
    /// longer vouches for past an earlier point.
    #[error(
        "cursor {since} of {db:?} was handed out again: the agent started after a crash, a \
         restore or a damaged journal, and the change log it came from is kept only up to \
         cursor {kept}; read the records again (query) and subscribe from the head db.open gives"
    )]
    CursorVoid {
        /// The database.
        db: String,
        /// The cursor asked for.
        since: u64,
        /// The last cursor of that log still vouched for.
        kept: u64,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "; it has no collections yet (a put creates one)".into()
    } else {
        format!("; its collections are: {}", known.join(", "))
    }
}

impl StoreError {
    /// The same error for another waiter: storage errors keep their kind
    /// and message, others become storage errors with their message.
    pub fn for_another(&self) -> StoreError {
        match self {
            StoreError::Full(m) => StoreError::Full(m.clone()),
            StoreError::Storage(m) => StoreError::Storage(m.clone()),
            other => StoreError::Storage(other.to_string()),
        }
    }

    /// The wire error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::UnknownDatabase(_) => ErrorCode::UnknownDatabase,
            StoreError::UnknownCollection { .. } => ErrorCode::UnknownCollection,
            StoreError::DatabaseExists(_) => ErrorCode::DatabaseExists,
            StoreError::NotFound { .. } => ErrorCode::NotFound,
            StoreError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            StoreError::TypeMismatch(_) => ErrorCode::TypeMismatch,
            StoreError::Full(_) => ErrorCode::StorageFull,
            StoreError::Storage(_)
            | StoreError::Corrupt(_)
            | StoreError::Damaged(_)
            | StoreError::TooNew { .. }
            | StoreError::Keys(_) => ErrorCode::Storage,
            StoreError::Sealed(_) => ErrorCode::Sealed,
            StoreError::ShuttingDown => ErrorCode::ShuttingDown,
            StoreError::CursorExpired { .. } | StoreError::CursorVoid { .. } => {
                ErrorCode::CursorExpired
            }
            StoreError::DroppedHere(_) => ErrorCode::InvalidArgument,
        }
    }
}

impl From<StoreError> for ErrorInfo {
    fn from(e: StoreError) -> Self {
        ErrorInfo::new(e.code(), e.to_string())
    }
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        let io = match &e {
            fjall::Error::Io(io) => Some(io),
            fjall::Error::Storage(fjall::LsmError::Io(io)) => Some(io),
            _ => None,
        };
        match io {
            Some(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                StoreError::Full(io.to_string())
            }
            _ if is_damage(&e) => StoreError::Damaged(format!("{e:?}")),
            _ if matches!(e, fjall::Error::Poisoned) => StoreError::Storage(
                "the store stopped taking writes after an earlier write failed \
                 (a full disk or an I/O error); free space and restart blazed"
                    .into(),
            ),
            _ => StoreError::Storage(format!("{e:?}")),
        }
    }
}

/// Whether `e` says a file's bytes are not what was written: a checksum
/// that does not match, a block that does not decode, a file that cannot
/// be recovered. (An I/O error is the disk failing to answer, not this.)
fn is_damage(e: &fjall::Error) -> bool {
    use fjall::LsmError;
    match e {
        fjall::Error::Storage(inner) => matches!(
            inner,
            LsmError::ChecksumMismatch { .. }
                | LsmError::Decompress(_)
                | LsmError::InvalidVersion(_)
                | LsmError::Unrecoverable
                | LsmError::InvalidTag(_)
                | LsmError::InvalidTrailer
                | LsmError::InvalidHeader(_)
                | LsmError::Utf8(_)
        ),
        fjall::Error::JournalRecovery(_)
        | fjall::Error::InvalidVersion(_)
        | fjall::Error::Decompress(_)
        | fjall::Error::InvalidTrailer
        | fjall::Error::InvalidTag(_)
        | fjall::Error::Unrecoverable => true,
        _ => false,
    }
}

impl From<blazedb_proto::codec::CodecError> for StoreError {
    fn from(e: blazedb_proto::codec::CodecError) -> Self {
        StoreError::Corrupt(e.0)
    }
}
