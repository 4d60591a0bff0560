//! Binding the local socket safely.
//!
//! The socket's directory is made 0700 when the agent creates it, and the
//! socket itself is created 0600 before `listen`, so no other user can
//! connect in the window between bind and chmod. A socket file left by a
//! crashed agent is replaced; one that still answers belongs to a running
//! agent and is left alone.
//!
//! A system agent serving several users' apps names a socket group: the
//! directory is then 0750 and the socket 0660, both of that group, and
//! every process of another user still needs an app token bound to its
//! uid (see [`crate::apps`]).

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
    /// The socket group does not exist.
    #[error("socket group {0:?} does not exist; create it (groupadd) or name another")]
    NoGroup(String),
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

/// The id of the group called `name`.
fn group_id(name: &str) -> Result<u32, BindError> {
    let missing = || BindError::NoGroup(name.to_owned());
    let c_name = std::ffi::CString::new(name).map_err(|_| missing())?;
    // SAFETY: `c_name` is a valid C string; getgrnam returns null or a
    // pointer to a static entry, read at once, before any other call.
    let entry = unsafe { libc::getgrnam(c_name.as_ptr()) };
    if entry.is_null() {
        return Err(missing());
    }
    // SAFETY: checked non-null above.
    Ok(unsafe { (*entry).gr_gid })
}

/// Gives `path` to the group `gid`, keeping its owner.
fn chgrp(path: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(gid))
}

/// Binds the listening socket at `path`: private to the agent's user, or
/// also reachable by the members of `group`.
pub fn bind(path: &Path, group: Option<&str>) -> Result<Listener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.display().to_string(),
        source,
    };
    let gid = group.map(group_id).transpose()?;
    let (dir_mode, socket_mode) = if gid.is_some() {
        (0o750, 0o660)
    } else {
        (0o700, 0o600)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(dir_mode)
                .create(dir)
                .map_err(io_err)?;
        }
        let meta = fs::metadata(dir).map_err(io_err)?;
        let mode = meta.permissions().mode();
        let sticky = mode & 0o1000 != 0;
        if meta.uid() == current_euid() {
            // Our own directory: make sure it is private (to the group,
            // when there is one).
            if (mode & 0o777 != dir_mode || gid.is_some_and(|g| g != meta.gid())) && !sticky {
                if let Some(gid) = gid {
                    chgrp(dir, gid).map_err(io_err)?;
                }
                fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode)).map_err(io_err)?;
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
    let listener = ListenerOptions::new()
        .name(name)
        .mode(socket_mode)
        .create_tokio()
        .map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => BindError::InUse(path.display().to_string()),
            _ => io_err(e),
        })?;
    if let Some(gid) = gid {
        // The mode given at bind passes through the umask, which usually
        // takes the group's write bit.
        chgrp(path, gid).map_err(io_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(socket_mode)).map_err(io_err)?;
    }
    Ok(listener)
}

/// Accepts the next connection.
pub async fn accept(listener: &Listener) -> io::Result<interprocess::local_socket::tokio::Stream> {
    listener.accept().await
}

/// The uid of the agent, which every client must share.
pub fn agent_uid() -> u32 {
    current_euid()
}
