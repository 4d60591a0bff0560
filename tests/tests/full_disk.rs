//! A full disk: writes fail with `storage_full`, reads go on, `status`
//! and the dashboard say why the store takes no more writes, and after
//! space is freed and the agent restarts, every acknowledged write is
//! there.
//!
//! The test mounts a small tmpfs, which needs root. CI runs as root and
//! must run it; elsewhere it is skipped with a message.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blazedb::{ErrorCode, Value};
use blazedb_tests::TestAgent;
use blazedb_tests::browser::{self, Browser};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");

/// A tmpfs mount that is unmounted when dropped, even if the test fails.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Mount(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(status.success(), "remount failed");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Random text that does not compress, so it really fills the disk.
fn noise(seed: &mut u64, len: usize) -> String {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            char::from(b'a' + (*seed % 26) as u8)
        })
        .collect()
}

#[tokio::test]
async fn a_full_disk_fails_writes_clearly_and_loses_nothing_acknowledged() {
    let mut agent = TestAgent::stopped(AGENT, &[]).expect("agent dirs");
    let mount = match Mount::tmpfs(&agent.data_dir(), "6m") {
        Ok(m) => m,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI must run the full-disk test, but mounting a tmpfs failed: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: the full-disk test needs root to mount a tmpfs ({e})");
            return;
        }
    };
    agent.restart().await.expect("start");
    let client = agent.client().await.expect("client");
    client.db("big").create().await.expect("create");
    let coll = client.db("big").collection("c");

    let mut seed = 0x1234_5678_9abc_def1;
    let mut acked = Vec::new();
    let full = loop {
        let id = format!("r{}", acked.len());
        let body = noise(&mut seed, 40_000);
        match coll
            .put_fields(
                &id,
                [("body".to_owned(), Value::String(body.clone()))].into(),
            )
            .await
        {
            Ok(_) => acked.push((id, body)),
            Err(e) => break e,
        }
        assert!(acked.len() < 1000, "a 6 MiB disk never filled up");
    };
    assert_eq!(full.code(), Some(ErrorCode::StorageFull), "{full}");
    assert!(full.to_string().contains("disk is full"), "{full}");
    assert!(!acked.is_empty());

    // Reads still work while the disk is full.
    let first = coll.get_record(&acked[0].0).await.expect("read while full");
    assert!(first.is_some());
    let status = client.status().await.expect("status while full");
    let why = status
        .store_failed
        .expect("status says the store takes no more writes");
    assert!(
        why.contains("No space left") || why.contains("full"),
        "{why}"
    );
    // The dashboard says so too.
    if browser::available() {
        let url = client.dashboard().await.expect("dashboard").url;
        let b = Browser::start().await.expect("browser");
        b.goto(&url).await.expect("open the dashboard");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut shown = serde_json::Value::Null;
        while Instant::now() < deadline {
            if let Ok(text) = b
                .eval("return document.getElementById('banner').textContent;")
                .await
            {
                shown = text;
                if shown
                    .as_str()
                    .is_some_and(|t| t.contains("takes no writes"))
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        b.close().await;
        assert!(
            shown.as_str().is_some_and(|t| t.contains("disk is full")),
            "the dashboard's banner: {shown}"
        );
    }

    // Free space and restart: everything acknowledged is there, and writes
    // work again.
    agent.kill();
    mount.resize("64m");
    agent.restart().await.expect("restart");
    let client = agent.client().await.expect("client");
    let coll = client.db("big").collection("c");
    for (id, body) in &acked {
        let rec = coll.get_record(id).await.expect("get");
        let rec = rec.unwrap_or_else(|| panic!("acknowledged {id} was lost"));
        assert_eq!(rec.fields["body"], Value::String(body.clone()), "{id}");
    }
    coll.put_fields("after", Default::default())
        .await
        .expect("writes work again");
    let status = client.status().await.expect("status");
    assert_eq!(status.store_failed, None, "a restart clears the failure");
    // Unmount before the agent's temporary directory is removed.
    agent.kill();
    drop(mount);
    drop(agent);
}
