//! Where the agent's socket lives by default, so that the agent and every
//! client agree without configuration.

use std::path::PathBuf;

/// The environment variable that overrides the socket path for the agent
/// and every client.
pub const SOCKET_ENV: &str = "BLAZED_SOCKET";

/// The socket's file name inside the runtime directory.
pub const SOCKET_FILE: &str = "blazed.sock";

/// The directory the socket lives in by default: `$XDG_RUNTIME_DIR/blazedb`
/// on Linux, `$TMPDIR/blazedb` elsewhere (short enough for `sun_path` on
/// macOS), `/tmp/blazedb-$UID` when neither is set.
pub fn default_runtime_dir() -> PathBuf {
    if let Some(dirs) = directories::ProjectDirs::from("", "", "blazedb")
        && let Some(dir) = dirs.runtime_dir()
    {
        return dir.to_path_buf();
    }
    if let Some(tmp) = std::env::var_os("TMPDIR").filter(|t| !t.is_empty()) {
        return PathBuf::from(tmp).join("blazedb");
    }
    PathBuf::from(format!("/tmp/blazedb-{}", current_uid()))
}

/// The socket path a client uses when it is given none: `$BLAZED_SOCKET`,
/// else `blazed.sock` in [`default_runtime_dir`].
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => default_runtime_dir().join(SOCKET_FILE),
    }
}

/// The data directory the agent uses when nothing names one.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "blazedb")
        .map(|d| d.data_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from(".blazedb"))
}

/// The owner token's file in a data directory (mode 0600): it lets
/// blazectl act as the device's owner where the agent asks for tokens.
pub const OWNER_TOKEN_FILE: &str = "owner.token";

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
