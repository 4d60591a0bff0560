//! The agent as a service: what it tells systemd while it runs.

use std::fs::File;
use std::os::unix::net::{UnixDatagram, UnixStream};

use blazedb_tests::{DEADLINE, TestAgent};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

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
