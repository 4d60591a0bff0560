//! `install-service` and `uninstall-service`: write or remove the file the
//! service manager reads, then ask the manager to act on it.
//!
//! Both are idempotent: a file that already holds what would be written is
//! left alone, and removing what is not there succeeds. When the manager
//! cannot be asked (it is not running, or a command fails), the error says
//! exactly which commands are left to run.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Manager, ServiceError, Target, launchd, systemd};

/// Unit files and plists are world-readable, like every other one.
const FILE_MODE: u32 = 0o644;

/// What uninstalling did to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// It was removed.
    Removed,
    /// The service was stopped, but the file stays for other services
    /// that still use it (other users' instances of the template).
    KeptForOthers,
    /// It was not there.
    Absent,
}

/// What installing did to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It was not there.
    Created,
    /// It held something else (an older unit, another binary path).
    Updated,
    /// It already held exactly this.
    Unchanged,
}

/// One command for the service manager.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    argv: Vec<String>,
    /// Failure is expected in some states (stopping what is not loaded) and
    /// does not stop the steps after it.
    may_fail: bool,
}

impl Step {
    /// A step whose failure stops the ones after it.
    pub(crate) fn new(argv: &[&str]) -> Step {
        Step {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            may_fail: false,
        }
    }

    /// A step whose failure is not an error.
    pub(crate) fn may_fail(mut self) -> Step {
        self.may_fail = true;
        self
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self.argv.iter().map(|a| shell_quote(a)).collect();
        f.write_str(&words.join(" "))
    }
}

/// What a manager needs done for one service.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Where the unit or plist goes on the real system.
    pub(crate) path: PathBuf,
    /// Run after the file was created or changed.
    pub(crate) start: Vec<Step>,
    /// Run when the file was already right: make sure it is enabled and
    /// running without restarting it.
    pub(crate) refresh: Vec<Step>,
    /// Run before the file is removed.
    pub(crate) stop: Vec<Step>,
    /// Run after the file is removed.
    pub(crate) after_remove: Vec<Step>,
    /// The file is still needed by another service (a template's other
    /// instances), so uninstalling leaves it.
    pub(crate) keep_file: bool,
    /// Why the manager cannot be asked here, if it cannot.
    pub(crate) unavailable: Option<String>,
}

fn plan(target: &Target) -> Result<Plan, ServiceError> {
    match target.manager {
        Manager::Systemd => systemd::plan(target),
        Manager::Launchd => launchd::plan(target),
    }
}

/// Writes the service file for `bin` (into the root directory, if the
/// target has one). Returns where it went and what changed; [`start`] then
/// asks the manager to run it.
pub fn install(target: &Target, bin: &Path) -> Result<(PathBuf, Change), ServiceError> {
    let contents = match target.manager {
        Manager::Systemd => systemd::render(target, bin)?,
        Manager::Launchd => launchd::render(target, bin)?,
    };
    let dest = target.rooted(&plan(target)?.path);
    let change = write_if_changed(&dest, &contents)?;
    Ok((dest, change))
}

/// Enables and starts the service [`install`] wrote: restarts it if the
/// file changed, else only makes sure it runs. Does nothing for a target
/// with a root directory.
pub fn start(target: &Target, change: Change) -> Result<(), ServiceError> {
    if target.root.is_some() {
        return Ok(());
    }
    let plan = plan(target)?;
    let steps = match change {
        Change::Unchanged => &plan.refresh,
        Change::Created | Change::Updated => &plan.start,
    };
    run(steps, plan.unavailable.as_deref())
}

/// Stops and disables the service and removes its file, unless another
/// service still uses it. Returns the file and what became of it.
pub fn uninstall(target: &Target) -> Result<(PathBuf, Removal), ServiceError> {
    let plan = plan(target)?;
    let dest = target.rooted(&plan.path);
    if !dest.exists() {
        return Ok((dest, Removal::Absent));
    }
    // A manager that is not running runs no service either: removing the
    // file is all there is to do.
    let ask_manager = target.root.is_none() && plan.unavailable.is_none();
    if ask_manager {
        run(&plan.stop, None)?;
    }
    if plan.keep_file {
        return Ok((dest, Removal::KeptForOthers));
    }
    fs::remove_file(&dest).map_err(|e| io_error("remove", &dest, e))?;
    if ask_manager {
        run(&plan.after_remove, None)?;
    }
    Ok((dest, Removal::Removed))
}

fn write_if_changed(dest: &Path, contents: &str) -> Result<Change, ServiceError> {
    let change = match fs::read(dest) {
        Ok(old) if old == contents.as_bytes() => {
            let mode = fs::metadata(dest)
                .map_err(|e| io_error("read", dest, e))?
                .permissions()
                .mode();
            if mode & 0o7777 == FILE_MODE {
                return Ok(Change::Unchanged);
            }
            Change::Updated
        }
        Ok(_) => Change::Updated,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Change::Created,
        Err(e) => return Err(io_error("read", dest, e)),
    };
    if let Some(dir) = dest.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| io_error("create the directory", dir, e))?;
    }
    // Written aside and renamed, so the manager never reads half a file.
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, contents).map_err(|e| io_error("write", &tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(FILE_MODE))
        .and_then(|()| fs::rename(&tmp, dest))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_error("write", dest, e)
        })?;
    Ok(change)
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> ServiceError {
    let hint = if source.kind() == io::ErrorKind::PermissionDenied {
        " (system services need root: run it with sudo, or install with --user)".to_owned()
    } else {
        String::new()
    };
    ServiceError::Io {
        action,
        path: path.display().to_string(),
        source,
        hint,
    }
}

/// Runs the steps in order. If one fails, the error lists it and every
/// step after it, so the user can finish by hand.
fn run(steps: &[Step], unavailable: Option<&str>) -> Result<(), ServiceError> {
    let todo = |from: usize| {
        steps[from..]
            .iter()
            .map(|s| format!("    {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(reason) = unavailable {
        return Err(ServiceError::Manager {
            reason: reason.to_owned(),
            todo: todo(0),
        });
    }
    for (i, step) in steps.iter().enumerate() {
        let Some((program, args)) = step.argv.split_first() else {
            continue;
        };
        let outcome = Command::new(program).args(args).status();
        let failure = match outcome {
            Ok(status) if status.success() => continue,
            Ok(status) => format!("`{step}` failed ({status})"),
            Err(e) => format!("cannot run `{step}`: {e}"),
        };
        if !step.may_fail {
            return Err(ServiceError::Manager {
                reason: failure,
                todo: todo(i),
            });
        }
    }
    Ok(())
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@:=%+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_print_as_shell_commands() {
        let step = Step::new(&["launchctl", "bootstrap", "gui/501", "/Users/a b/x.plist"]);
        assert_eq!(
            step.to_string(),
            "launchctl bootstrap gui/501 '/Users/a b/x.plist'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn a_failed_step_lists_what_is_left() {
        let steps = [
            Step::new(&["/nonexistent/blazed-test-tool", "x"]),
            Step::new(&["true"]),
        ];
        let err = run(&steps, None).expect_err("fails").to_string();
        assert!(
            err.contains("cannot run `/nonexistent/blazed-test-tool x`"),
            "{err}"
        );
        assert!(
            err.ends_with("    /nonexistent/blazed-test-tool x\n    true"),
            "{err}"
        );
        let err = run(&steps[1..], Some("systemd is not running")).expect_err("unavailable");
        assert_eq!(
            err.to_string(),
            "systemd is not running; to finish, run:\n    true"
        );
    }

    #[test]
    fn the_template_stays_while_another_user_has_an_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = |user: &str| Target {
            manager: Manager::Systemd,
            scope: crate::service::Scope::System { user: user.into() },
            home: "/home/ann".into(),
            root: Some(dir.path().to_path_buf()),
        };
        let (unit, _) = install(&target("ann"), Path::new("/usr/bin/blazed")).expect("install");
        let wants = dir
            .path()
            .join("etc/systemd/system/multi-user.target.wants");
        fs::create_dir_all(&wants).expect("wants dir");
        fs::write(wants.join("blazed@bob.service"), "").expect("bob's instance");
        let (_, removal) = uninstall(&target("ann")).expect("uninstall");
        assert_eq!(removal, Removal::KeptForOthers);
        assert!(unit.exists());
        let (_, removal) = uninstall(&target("bob")).expect("uninstall");
        assert_eq!(removal, Removal::Removed);
        assert!(!unit.exists());
    }

    #[test]
    fn writing_twice_changes_nothing_the_second_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a/b/unit.service");
        assert_eq!(
            write_if_changed(&file, "one").expect("write"),
            Change::Created
        );
        assert_eq!(
            write_if_changed(&file, "one").expect("write"),
            Change::Unchanged
        );
        assert_eq!(
            write_if_changed(&file, "two").expect("write"),
            Change::Updated
        );
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            write_if_changed(&file, "two").expect("write"),
            Change::Updated
        );
        let mode = fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o7777, FILE_MODE);
    }
}
