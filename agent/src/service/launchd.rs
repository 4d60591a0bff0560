//! The launchd LaunchAgent: the agent starts at login as the user and
//! serves that user's apps.
//!
//! The plist in `packaging/launchd/` has `@...@` holes for the paths, which
//! are known only on the user's machine: the binary, the socket (where the
//! clients look by default, `$TMPDIR/blazedb/blazed.sock`) and the log file
//! under `~/Library/Logs`.

use std::path::{Path, PathBuf};

use super::install::{Plan, Step};
use super::{Scope, ServiceError, Target};

/// The plist as shipped, with holes.
pub const PLIST: &str = include_str!("../../../packaging/launchd/dev.blazedb.blazed.plist");

/// The job's label, which is also the plist's file name.
pub const LABEL: &str = "dev.blazedb.blazed";

/// The size of `sun_path` on macOS, counting the terminating NUL.
const SUN_PATH_LEN: usize = 104;

/// The plist for `target`, running `bin` on the default socket path.
pub fn render(target: &Target, bin: &Path) -> Result<String, ServiceError> {
    check_scope(target)?;
    let socket = blazedb_proto::paths::default_socket_path();
    render_with(target, bin, &socket)
}

fn render_with(target: &Target, bin: &Path, socket: &Path) -> Result<String, ServiceError> {
    if !bin.is_absolute() {
        return Err(ServiceError::Invalid(format!(
            "{}: the binary's path must be absolute",
            bin.display()
        )));
    }
    if socket.as_os_str().len() >= SUN_PATH_LEN {
        return Err(ServiceError::Invalid(format!(
            "the socket path {} is too long for a Unix socket on macOS \
             (at most {} bytes): set BLAZED_SOCKET to a shorter one",
            socket.display(),
            SUN_PATH_LEN - 1
        )));
    }
    let log = target.home.join("Library/Logs/blazed.log");
    Ok(PLIST
        .replace("@BLAZED@", &xml_text(bin)?)
        .replace("@SOCKET@", &xml_text(socket)?)
        .replace("@LOG@", &xml_text(&log)?))
}

fn check_scope(target: &Target) -> Result<(), ServiceError> {
    match target.scope {
        Scope::User => Ok(()),
        Scope::System { .. } => Err(ServiceError::Unsupported(
            "on macOS blazed runs as a LaunchAgent of the user whose apps it serves: \
             use --user"
                .to_owned(),
        )),
    }
}

fn xml_text(path: &Path) -> Result<String, ServiceError> {
    let text = path
        .to_str()
        .ok_or_else(|| ServiceError::Invalid(format!("{}: not UTF-8", path.display())))?;
    Ok(text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;"))
}

fn plist_path(home: &Path) -> PathBuf {
    home.join("Library/LaunchAgents")
        .join(format!("{LABEL}.plist"))
}

pub(crate) fn plan(target: &Target) -> Result<Plan, ServiceError> {
    check_scope(target)?;
    let path = plist_path(&target.home);
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let domain = format!("gui/{uid}");
    let job = format!("{domain}/{LABEL}");
    let plist = path.to_string_lossy().into_owned();
    let ctl = |args: &[&str]| Step::new(&[&["launchctl"], args].concat());
    Ok(Plan {
        start: vec![
            ctl(&["bootout", &job]).may_fail(),
            ctl(&["enable", &job]),
            ctl(&["bootstrap", &domain, &plist]),
        ],
        // Loaded already (bootstrap then fails) or not: either way kickstart
        // starts it if it is not running, and leaves it alone if it is.
        refresh: vec![
            ctl(&["enable", &job]),
            ctl(&["bootstrap", &domain, &plist]).may_fail(),
            ctl(&["kickstart", &job]),
        ],
        stop: vec![ctl(&["bootout", &job]).may_fail()],
        after_remove: Vec::new(),
        keep_file: false,
        unavailable: (!cfg!(target_os = "macos")).then(|| "launchd runs only on macOS".to_owned()),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Manager;

    fn target() -> Target {
        Target {
            manager: Manager::Launchd,
            scope: Scope::User,
            home: "/Users/ann".into(),
            root: None,
        }
    }

    #[test]
    fn the_holes_are_filled_and_escaped() {
        let plist = render_with(
            &target(),
            Path::new("/Applications/A&B/blazed"),
            Path::new("/var/folders/x/T/blazedb/blazed.sock"),
        )
        .expect("render");
        assert!(!plist.contains("@BLAZED@") && !plist.contains("@SOCKET@"));
        assert!(plist.contains("<string>/Applications/A&amp;B/blazed</string>"));
        assert!(plist.contains("<string>/var/folders/x/T/blazedb/blazed.sock</string>"));
        assert!(plist.contains("<string>/Users/ann/Library/Logs/blazed.log</string>"));
    }

    #[test]
    fn too_long_a_socket_path_is_refused() {
        let long = format!("/tmp/{}/blazed.sock", "x".repeat(100));
        let err = render_with(&target(), Path::new("/b/blazed"), Path::new(&long));
        assert!(err.is_err());
    }

    #[test]
    fn system_services_are_not_offered() {
        let t = Target {
            scope: Scope::System { user: "ann".into() },
            ..target()
        };
        assert!(matches!(plan(&t), Err(ServiceError::Unsupported(_))));
    }
}
