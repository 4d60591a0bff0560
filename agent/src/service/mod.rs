//! Running the agent as a service: installing it into the platform's
//! service manager (systemd on Linux, launchd on macOS), and talking to the
//! manager while it runs.
//!
//! - [`install`](mod@install): `install-service` and `uninstall-service`, for any manager.
//! - [`systemd`]: the user unit and the system template unit.
//! - [`launchd`]: the LaunchAgent plist.
//! - [`notify`]: readiness and stopping notices (`Type=notify`).
//!
//! The unit files and the plist live in `packaging/` as real files, so the
//! Debian package ships the very units `install-service` writes.

pub mod install;
pub mod launchd;
pub mod notify;
pub mod systemd;

use std::path::{Path, PathBuf};

pub use install::{Change, Removal, install, start, uninstall};

/// The service managers a service can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// systemd, on Linux.
    Systemd,
    /// launchd, on macOS.
    Launchd,
}

impl Manager {
    /// The manager of the platform this binary was built for.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

/// Whose agent the service runs, and which manager starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The current user's agent, started at login by the user's own
    /// service manager.
    User,
    /// The agent of the named user, started at boot by the system's
    /// service manager. The agent serves only apps of its own uid, so a
    /// system service is still one user's agent.
    System {
        /// The user the agent runs as.
        user: String,
    },
}

/// What `install-service` and `uninstall-service` act on.
#[derive(Debug, Clone)]
pub struct Target {
    /// The manager to write for.
    pub manager: Manager,
    /// Whose agent, and which manager instance.
    pub scope: Scope,
    /// The home directory that user services are written under.
    pub home: PathBuf,
    /// A directory to write into instead of `/`; when set, no service
    /// manager is asked to do anything.
    pub root: Option<PathBuf>,
}

impl Target {
    /// Where a file meant for `path` on the real system is written: `path`
    /// itself, or `path` inside the root directory.
    pub fn rooted(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }
}

/// Installing or removing a service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The combination asked for does not exist on that platform.
    #[error("{0}")]
    Unsupported(String),
    /// A name or path cannot go into a unit file or plist.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be written or removed.
    #[error("cannot {action} {path}: {source}{hint}")]
    Io {
        /// What was being done: "write", "remove", ...
        action: &'static str,
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
        /// Advice for the user, or empty.
        hint: String,
    },
    /// The service manager could not be asked; the user can finish by hand.
    #[error("{reason}; to finish, run:\n{todo}")]
    Manager {
        /// Why it could not be done.
        reason: String,
        /// The commands still to run, one a line.
        todo: String,
    },
}
