//! systemd units: a user unit (`blazed.service`, started at login) and a
//! system template (`blazed@USER.service`, started at boot as USER).
//!
//! The templates in `packaging/systemd/` run `/usr/bin/blazed`, as the
//! Debian package installs it; installing from elsewhere puts the running
//! binary's path in their place.

use std::path::{Path, PathBuf};

use super::install::{Plan, Step};
use super::{Scope, ServiceError, Target};

/// The user unit as shipped.
pub const USER_UNIT: &str = include_str!("../../../packaging/systemd/blazed.service");
/// The system template unit as shipped.
pub const SYSTEM_UNIT: &str = include_str!("../../../packaging/systemd/blazed@.service");

/// The user unit's name.
pub const USER_UNIT_NAME: &str = "blazed.service";
/// The system template's file name.
pub const SYSTEM_UNIT_NAME: &str = "blazed@.service";

/// Where an administrator's system units go.
const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// The binary path in the shipped units.
const SHIPPED_EXEC: &str = "ExecStart=/usr/bin/blazed ";

/// The unit for `target`, running `bin`.
pub fn render(target: &Target, bin: &Path) -> Result<String, ServiceError> {
    let template = match target.scope {
        Scope::User => USER_UNIT,
        Scope::System { .. } => {
            check_outside_homes(bin)?;
            SYSTEM_UNIT
        }
    };
    let exec = format!("ExecStart={} ", exec_path(bin)?);
    Ok(template.replacen(SHIPPED_EXEC, &exec, 1))
}

/// The system unit hides these (`ProtectHome=yes`), so it cannot run a
/// binary inside them, such as one from `cargo install`.
const HIDDEN_DIRS: [&str; 3] = ["/home", "/root", "/run/user"];

fn check_outside_homes(bin: &Path) -> Result<(), ServiceError> {
    if HIDDEN_DIRS.iter().any(|d| bin.starts_with(d)) {
        return Err(ServiceError::Invalid(format!(
            "the system service cannot see home directories, so it cannot run {}: \
             copy it out first (sudo install -m 755 {} /usr/local/bin/) and pass \
             --bin /usr/local/bin/blazed",
            bin.display(),
            bin.display()
        )));
    }
    Ok(())
}

/// Writes `bin` as the first word of an `ExecStart=` line: specifiers and
/// variables escaped, quoted if it has spaces.
fn exec_path(bin: &Path) -> Result<String, ServiceError> {
    let invalid = |why: &str| ServiceError::Invalid(format!("{}: {why}", bin.display()));
    let text = bin.to_str().ok_or_else(|| invalid("not UTF-8"))?;
    if !bin.is_absolute() {
        return Err(invalid("the binary's path must be absolute"));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid("control characters cannot go into a unit file"));
    }
    let escaped = text.replace('%', "%%").replace('$', "$$");
    let needs_quotes = escaped
        .chars()
        .any(|c| c.is_whitespace() || "\"'\\;".contains(c));
    Ok(if needs_quotes {
        format!("\"{}\"", escaped.replace('\\', r"\\").replace('"', "\\\""))
    } else {
        escaped
    })
}

/// The user's unit directory: `$XDG_CONFIG_HOME/systemd/user`, else
/// `~/.config/systemd/user`.
fn user_unit_dir(home: &Path) -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home.join(".config"));
    config.join("systemd").join("user")
}

/// Checks that `user` can name a template instance without escaping.
pub fn check_instance(user: &str) -> Result<(), ServiceError> {
    let ok = !user.is_empty()
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "{user:?} is not a user name a service can be named after"
        )))
    }
}

pub(crate) fn plan(target: &Target) -> Result<Plan, ServiceError> {
    // Without systemd as init there is nothing to ask (a container, WSL
    // without systemd, a chroot).
    let unavailable = (!sd_notify::booted().unwrap_or(false))
        .then(|| "systemd is not running on this machine".to_owned());
    let plan = match &target.scope {
        Scope::User => {
            let ctl = |args: &[&str]| Step::new(&[&["systemctl", "--user"], args].concat());
            Plan {
                path: user_unit_dir(&target.home).join(USER_UNIT_NAME),
                start: vec![
                    ctl(&["daemon-reload"]),
                    ctl(&["enable", USER_UNIT_NAME]),
                    ctl(&["restart", USER_UNIT_NAME]),
                ],
                refresh: vec![ctl(&["enable", "--now", USER_UNIT_NAME])],
                stop: vec![ctl(&["disable", "--now", USER_UNIT_NAME]).may_fail()],
                after_remove: vec![ctl(&["daemon-reload"])],
                keep_file: false,
                unavailable,
            }
        }
        Scope::System { user } => {
            check_instance(user)?;
            let instance = format!("blazed@{user}.service");
            let ctl = |args: &[&str]| Step::new(&[&["systemctl"], args].concat());
            let dir = Path::new(SYSTEM_UNIT_DIR);
            Plan {
                path: dir.join(SYSTEM_UNIT_NAME),
                start: vec![
                    ctl(&["daemon-reload"]),
                    ctl(&["enable", &instance]),
                    ctl(&["restart", &instance]),
                ],
                refresh: vec![ctl(&["enable", "--now", &instance])],
                stop: vec![ctl(&["disable", "--now", &instance]).may_fail()],
                after_remove: vec![ctl(&["daemon-reload"])],
                keep_file: other_instances_enabled(&target.rooted(dir), user),
                unavailable,
            }
        }
    };
    Ok(plan)
}

/// Whether another user's instance of the template is still enabled, so
/// the template must stay.
fn other_instances_enabled(unit_dir: &Path, user: &str) -> bool {
    let mine = format!("blazed@{user}.service");
    let Ok(wants) = std::fs::read_dir(unit_dir.join("multi-user.target.wants")) else {
        return false;
    };
    wants.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("blazed@") && name.ends_with(".service") && name != mine
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Manager;

    fn target(scope: Scope) -> Target {
        Target {
            manager: Manager::Systemd,
            scope,
            home: "/home/ann".into(),
            root: None,
        }
    }

    #[test]
    fn the_binary_path_replaces_the_shipped_one() {
        for template in [USER_UNIT, SYSTEM_UNIT] {
            assert_eq!(template.matches(SHIPPED_EXEC).count(), 1);
        }
        let unit = render(&target(Scope::User), Path::new("/opt/b 1/blazed%x")).expect("render");
        assert!(
            unit.contains("\nExecStart=\"/opt/b 1/blazed%%x\" --socket %t/blazedb/blazed.sock\n"),
            "{unit}"
        );
        let system = target(Scope::System { user: "ann".into() });
        let unit = render(&system, Path::new("/usr/local/bin/blazed")).expect("render");
        assert!(unit.contains("\nExecStart=/usr/local/bin/blazed --data-dir %S/blazed/%i "));
        assert!(render(&system, Path::new("blazed")).is_err());
        let err = render(&system, Path::new("/home/ann/.cargo/bin/blazed"));
        assert!(matches!(err, Err(ServiceError::Invalid(_))));
    }

    #[test]
    fn only_plain_user_names_become_instances() {
        check_instance("ann_b-1.x").expect("plain");
        for bad in ["", "-x", "a b", "a/b", "é"] {
            assert!(check_instance(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod package_tests {
    /// The Debian package's assets outside the target directory exist, and
    /// the units it ships are the ones `install-service` writes from.
    #[test]
    fn the_debian_package_ships_files_that_exist() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
        let manifest: toml::Table = toml::from_str(&manifest).expect("parse");
        let assets = manifest["package"]["metadata"]["deb"]["assets"]
            .as_array()
            .expect("assets");
        let mut shipped = Vec::new();
        for asset in assets {
            let source = asset[0].as_str().expect("source");
            let dest = asset[1].as_str().expect("dest");
            if !source.starts_with("target/release/") {
                assert!(dir.join(source).is_file(), "{source} is missing");
            }
            shipped.push(format!("{dest}{}", source.rsplit('/').next().unwrap_or("")));
        }
        for unit in [
            "usr/lib/systemd/user/blazed.service",
            "usr/lib/systemd/system/blazed@.service",
            "usr/bin/blazed",
            "usr/bin/blazectl",
        ] {
            assert!(shipped.iter().any(|s| s == unit), "{unit} is not shipped");
        }
    }
}
