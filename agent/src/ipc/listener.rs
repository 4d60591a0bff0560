//! Binding the local socket safely.
//!
//! The socket's directory is made 0700 when the agent creates it, and the
//! socket itself is created 0600 before `listen`, so no other user can
//! connect in the window between bind and chmod. A socket file left by a
//! crashed agent is replaced; one that still answers belongs to a running
//! agent and is left alone.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;

/// The socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another agent answers on the socket.
    #[error("another blazed is already listening on {0}; stop it or use another --socket")]
    InUse(String),
    /// The socket's directory is not private to this user.
    #[error(
        "socket directory {dir} is writable by other users (mode {mode:o}); \
         use a private directory (chmod 700) or another --socket"
    )]
    UnsafeDir {
        /// The directory.
        dir: String,
        /// Its mode.
        mode: u32,
    },
    /// Something else failed.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// What failed.
        source: io::Error,
    },
}

fn current_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Binds the listening socket at `path`.
pub fn bind(path: &Path) -> Result<Listener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err)?;
        }
        let meta = fs::metadata(dir).map_err(io_err)?;
        let mode = meta.permissions().mode();
        let sticky = mode & 0o1000 != 0;
        if meta.uid() == current_euid() {
            // Our own directory: make sure it is private.
            if mode & 0o077 != 0 && !sticky {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
            }
        } else if mode & 0o022 != 0 && !sticky {
            return Err(BindError::UnsafeDir {
                dir: dir.display().to_string(),
                mode: mode & 0o7777,
            });
        }
    }

    if path.exists() {
        // Anyone answering means a live agent; a refused connection means a
        // stale file from a crash.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.display().to_string()));
        }
        fs::remove_file(path).map_err(io_err)?;
    }

    let name = path.to_fs_name::<GenericFilePath>().map_err(io_err)?;
    ListenerOptions::new()
        .name(name)
        .mode(0o600)
        .create_tokio()
        .map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse(path.display().to_string()),
            _ => io_err(e),
        })
}

/// Accepts the next connection.
pub async fn accept(listener: &Listener) -> io::Result<interprocess::local_socket::tokio::Stream> {
    listener.accept().await
}

/// The uid of the agent, which every client must share.
pub fn agent_uid() -> u32 {
    current_euid()
}
