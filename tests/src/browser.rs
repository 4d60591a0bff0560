//! A headless Chromium driven through chromedriver's WebDriver API, for
//! tests that look at the dashboard as a user would.
//!
//! Without Chromium and chromedriver (Debian: `chromium`,
//! `chromium-driver`) a test is skipped loudly, and fails instead under
//! `BLAZEDB_NETNS=require` (CI, where `.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::http;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session; the browser and driver stop when it is dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// Whether Chromium and chromedriver are installed. Without them a test
/// should return early, unless the environment demands that everything
/// run (then this panics).
pub fn available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        let why = format!(
            "skipping: this test needs {CHROMIUM} and {CHROMEDRIVER} \
             (apt-get install chromium chromium-driver)"
        );
        assert!(
            std::env::var("BLAZEDB_NETNS").as_deref() != Ok("require"),
            "{why}, and BLAZEDB_NETNS=require says every test must run"
        );
        eprintln!("{why}");
    }
    present
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Browser {
    /// Starts chromedriver on a loopback port and opens a headless
    /// Chromium session with a fresh profile.
    pub async fn start() -> anyhow::Result<Browser> {
        let port = free_port()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start chromedriver")?;
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir()?;
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        let status = format!("{}/status", browser.base);
        crate::wait_until("chromedriver to answer", || async {
            http::get(&status, None)
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await?;
        let profile = browser._profile.path().display().to_string();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={profile}"),
                ],
            },
        }}});
        let v = browser.call("POST", "/session", Some(caps)).await?;
        browser.session = v["sessionId"]
            .as_str()
            .context("chromedriver gave no session id")?
            .to_owned();
        Ok(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string());
        let r = http::request(method, &url, &[], body.as_deref().map(str::as_bytes)).await?;
        let v: Value = serde_json::from_slice(&r.body)
            .with_context(|| format!("chromedriver's answer is not JSON: {}", r.text()))?;
        anyhow::ensure!(r.status == 200, "{method} {path}: {} {}", r.status, v);
        Ok(v["value"].clone())
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        let path = format!("/session/{}/url", self.session);
        self.call("POST", &path, Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    /// Runs `script` (a function body; `return` gives the result) in the
    /// page.
    pub async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call("POST", &path, Some(json!({ "script": script, "args": [] })))
            .await
    }

    /// Saves a screenshot of the page as PNG at `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let shot = self
            .call(
                "GET",
                &format!("/session/{}/screenshot", self.session),
                None,
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot.as_str().context("no screenshot")?)
            .context("the screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(path.to_path_buf())
    }

    /// Ends the session, which closes the browser.
    pub async fn close(mut self) {
        let path = format!("/session/{}", self.session);
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.call("DELETE", &path, None)).await;
        self.session.clear();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
