//! Errors as they cross the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What went wrong, in a form programs can match on.
///
/// On the wire each code is its snake_case name, e.g. `"unknown_database"`.
/// Codes added by newer agents decode as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded; the agent closes the connection.
    BadFrame,
    /// The frame is over the size limit; the agent closes the connection.
    FrameTooLarge,
    /// The first request on a connection was not `hello`.
    HandshakeRequired,
    /// The client speaks a protocol version the agent does not.
    UnsupportedProtocol,
    /// The method name is not one the agent knows.
    UnknownMethod,
    /// The params do not match the method: a missing field or a wrong type.
    InvalidParams,
    /// A value is well-formed but not allowed (an empty name, a bad cursor, ...).
    InvalidArgument,
    /// No database has that name.
    UnknownDatabase,
    /// The database has no collection of that name.
    UnknownCollection,
    /// A database of that name exists already.
    DatabaseExists,
    /// No record has that id.
    NotFound,
    /// A value has the wrong type for what was asked of it.
    TypeMismatch,
    /// The subscription cursor is older than the history the agent keeps.
    CursorExpired,
    /// The disk is full; nothing of the request was written.
    StorageFull,
    /// The store failed; nothing of the request was written.
    Storage,
    /// The peer is not allowed to use this agent.
    PermissionDenied,
    /// The database is end-to-end encrypted and this device holds no key
    /// to read it.
    Sealed,
    /// The agent is shutting down.
    ShuttingDown,
    /// A bug in the agent.
    Internal,
    /// A code this version does not know.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::HandshakeRequired => "handshake_required",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::UnknownDatabase => "unknown_database",
            ErrorCode::UnknownCollection => "unknown_collection",
            ErrorCode::DatabaseExists => "database_exists",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TypeMismatch => "type_mismatch",
            ErrorCode::CursorExpired => "cursor_expired",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Storage => "storage",
            ErrorCode::Sealed => "sealed",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::Other => "other",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error response: a code to match on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ErrorInfo {
    /// What kind of error.
    pub code: ErrorCode,
    /// What happened and, where possible, what to do about it.
    pub message: String,
}

impl ErrorInfo {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorInfo {
            code,
            message: message.into(),
        }
    }
}

/// An error and its causes on one line, `: `-separated, leaving out a
/// cause whose words the line already holds (many messages quote their
/// cause), so nothing is said twice.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod one_line_tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open {path} ({source})")]
    struct Quoting {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting the store")]
    struct Outer(#[source] Quoting);

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Outer(Quoting {
            path: "/x",
            source: io,
        });
        assert_eq!(
            one_line(&e),
            "starting the store: cannot open /x (no such file)"
        );
    }
}
