//! What the running agent tells the service manager that started it.
//!
//! Under systemd with `Type=notify`, the manager counts the agent as started
//! only when it sends `READY=1`, so units ordered after it (and `systemctl
//! start`) wait until apps can really connect. Without `NOTIFY_SOCKET` in
//! the environment every call here does nothing.

use sd_notify::NotifyState;

use crate::config::Config;

/// Tells the service manager the agent serves: the store is open and the
/// socket accepts connections.
pub fn ready(config: &Config) {
    let status = format!("serving on {}", config.socket.display());
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells the service manager the agent has begun to shut down, so it does
/// not count the time spent finishing requests as a hang.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        // The agent works without the notice; systemd will time it out.
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Whether systemd started this process, so its output goes to the journal,
/// which stamps each line itself.
pub fn under_systemd() -> bool {
    ["JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}
