//! The agent as a service: what it tells systemd while it runs, the files
//! `install-service` writes, and whether systemd and launchd accept them.
//!
//! `systemd-analyze` and `python3` judge the units and the plist. CI must
//! have them (`.ci/run` installs them); elsewhere those tests are skipped
//! with a message.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use blazedb_tests::{DEADLINE, TestAgent};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

/// The home directory the installer is told about; nothing is written there.
const HOME: &str = "/home/tester";

/// The next notice the agent sent to its "service manager".
fn next_notice(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notice within {DEADLINE:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn ready_is_sent_once_the_socket_serves_and_stopping_on_sigterm() {
    let mut agent = TestAgent::stopped(AGENT, &[]).expect("agent dirs");
    let notify_path = agent.data_dir().with_file_name("notify.sock");
    let notices = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notices.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let log = agent.data_dir().with_file_name("stderr.log");

    let mut cmd = agent.command();
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "blazed::agent=info")
        .stderr(File::create(&log).expect("log file"));
    agent.spawn(cmd).expect("spawn");

    let first = next_notice(&notices);
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    // The moment READY=1 is out, apps must be able to connect.
    UnixStream::connect(agent.socket()).expect("the socket accepts once READY=1 is sent");
    let client = agent.client().await.expect("client");
    client.db("d").create().await.expect("a request is served");
    drop(client);

    let status = agent.stop().await.expect("stop");
    assert_eq!(status.code(), Some(0), "{status}");
    let last = next_notice(&notices);
    assert!(last.lines().any(|l| l == "STOPPING=1"), "{last:?}");

    // Under systemd the journal stamps lines, so the agent does not; and
    // RUST_LOG still chooses what is logged.
    let logged = std::fs::read_to_string(&log).expect("read the log");
    assert!(logged.contains("is ready"), "{logged}");
    for line in logged.lines().filter(|l| !l.is_empty()) {
        assert!(
            !line.starts_with(|c: char| c.is_ascii_digit()),
            "a timestamp under systemd: {line}"
        );
        assert!(!line.contains('\u{1b}'), "colours in the journal: {line:?}");
        assert!(
            line.contains("blazed::agent"),
            "RUST_LOG not applied: {line}"
        );
    }
}

/// Runs the agent binary's command line with a fixed home and socket.
fn blazed(args: &[&str]) -> Output {
    let out = Command::new(AGENT)
        .args(args)
        .env("HOME", HOME)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SUDO_USER")
        .env("BLAZED_SOCKET", "/tmp/blazedb-501/blazed.sock")
        .output()
        .expect("run blazed");
    assert!(
        out.status.success(),
        "blazed {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The three services, each as (install arguments, the file written).
fn services(root: &Path) -> Vec<(Vec<String>, PathBuf)> {
    let r = root.display().to_string();
    let base = |more: &[&str]| {
        let mut args: Vec<String> = vec!["--root".into(), r.clone()];
        args.extend(more.iter().map(|s| (*s).to_owned()));
        args
    };
    let home = root.join(HOME.trim_start_matches('/'));
    vec![
        (
            base(&["--user"]),
            home.join(".config/systemd/user/blazed.service"),
        ),
        (
            base(&["--system", "--for", "tester"]),
            root.join("etc/systemd/system/blazed@.service"),
        ),
        (
            base(&["--manager", "launchd"]),
            home.join("Library/LaunchAgents/dev.blazedb.blazed.plist"),
        ),
    ]
}

/// The agent binary under a path outside any home directory, as the
/// system unit needs; the checkout may well be in one.
fn installed_bin(dir: &Path) -> PathBuf {
    let bin = dir.join("blazed");
    std::os::unix::fs::symlink(AGENT, &bin).expect("symlink the agent");
    bin
}

fn install(args: &[String], bin: &Path) -> Output {
    let bin = bin.to_str().expect("UTF-8 path");
    let mut all = vec!["install-service", "--bin", bin];
    all.extend(args.iter().map(String::as_str));
    blazed(&all)
}

/// Every file under `dir` with its contents, mode and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, i64, i64)> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if meta.is_dir() {
                todo.push(path);
            } else {
                let contents = std::fs::read(&path).expect("read");
                let mode = meta.permissions().mode() & 0o7777;
                files.insert(path, (contents, mode, meta.mtime(), meta.mtime_nsec()));
            }
        }
    }
    files
}

#[test]
fn install_service_writes_its_files_once_and_uninstall_removes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = installed_bin(dir.path());
    let root = &dir.path().join("root");
    let services = services(root);

    for (args, file) in &services {
        let out = install(args, &bin);
        assert_eq!(stdout(&out).trim(), format!("wrote {}", file.display()));
        let mode = std::fs::metadata(file)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o644, "{}", file.display());
    }
    let unit = std::fs::read_to_string(&services[0].1).expect("user unit");
    let exec = format!(
        "\nExecStart={} --socket %t/blazedb/blazed.sock\n",
        bin.display()
    );
    assert!(unit.contains(&exec), "{unit}");
    assert!(unit.contains("\nType=notify\n") && unit.contains("\nRuntimeDirectoryMode=0700\n"));
    let system = std::fs::read_to_string(&services[1].1).expect("system unit");
    assert!(system.contains("\nUser=%i\n") && system.contains("\nStateDirectoryMode=0700\n"));
    let plist = std::fs::read_to_string(&services[2].1).expect("plist");
    assert!(plist.contains(&format!("<string>{}</string>", bin.display())));
    assert!(plist.contains("<string>/home/tester/Library/Logs/blazed.log</string>"));

    let before = snapshot(root);
    assert_eq!(before.len(), 3, "{before:?}");
    for (args, file) in &services {
        let out = install(args, &bin);
        assert_eq!(
            stdout(&out).trim(),
            format!("unchanged: {}", file.display())
        );
    }
    assert_eq!(snapshot(root), before, "a second install changed something");

    for (args, file) in &services {
        let mut all = vec!["uninstall-service"];
        all.extend(args.iter().map(String::as_str));
        let out = blazed(&all);
        assert_eq!(stdout(&out).trim(), format!("removed {}", file.display()));
        assert!(!file.exists());
        let out = blazed(&all);
        assert!(
            stdout(&out).starts_with("not installed"),
            "{}",
            stdout(&out)
        );
    }
    assert!(snapshot(root).is_empty());
}

/// Whether `tool` runs. CI must have it; elsewhere the test is skipped.
fn have(tool: &str, probe: &str) -> bool {
    let found = Command::new(tool)
        .arg(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must check the service files, but {tool} is missing"
        );
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

#[test]
fn systemd_analyze_verify_accepts_every_unit() {
    if !have("systemd-analyze", "--version") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = installed_bin(dir.path());
    let root = dir.path().join("root");
    let services = services(&root);
    install(&services[0].0, &bin);
    install(&services[1].0, &bin);
    // The template as an instance too, the way it is started.
    let instance = dir.path().join("blazed@tester.service");
    std::fs::copy(&services[1].1, &instance).expect("copy");
    // A user manager needs a runtime directory to resolve %t.
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).expect("runtime dir");
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");

    let checks: [(&[&str], &Path); 3] = [
        (&["--user"], &services[0].1),
        (&[], &services[1].1),
        (&[], &instance),
    ];
    for (mode, unit) in checks {
        let out = Command::new("systemd-analyze")
            .args(mode)
            .arg("verify")
            .arg(unit)
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .expect("systemd-analyze");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {err}", unit.display());
        // Warnings do not change the exit code; any about our unit count.
        let ours: Vec<&str> = err.lines().filter(|l| l.contains("blazed")).collect();
        assert!(ours.is_empty(), "{}: {ours:#?}", unit.display());
    }
}

#[test]
fn the_plist_parses_and_has_the_launchd_keys() {
    if !have("python3", "--version") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = installed_bin(dir.path());
    let services = services(&dir.path().join("root"));
    let (args, plist) = &services[2];
    install(args, &bin);
    let script = r#"
import plistlib, sys
with open(sys.argv[1], "rb") as f:
    p = plistlib.load(f)
assert p["Label"] == "dev.blazedb.blazed", p["Label"]
args = p["ProgramArguments"]
assert args[0] == sys.argv[2], args
socket = args[args.index("--socket") + 1]
assert len(socket.encode()) < 104, socket
assert p["RunAtLoad"] is True
assert p["KeepAlive"] == {"SuccessfulExit": False}, p["KeepAlive"]
assert p["ProcessType"] in ("Standard", "Adaptive", "Interactive"), p["ProcessType"]
for key in ("StandardOutPath", "StandardErrorPath"):
    assert p[key].startswith("/home/tester/Library/Logs/"), p[key]
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(plist)
        .arg(&bin)
        .output()
        .expect("python3");
    assert!(
        out.status.success() && stdout(&out).trim() == "ok",
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}
