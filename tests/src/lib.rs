//! Helpers for tests and benchmarks that run real agents: each agent gets
//! its own data directory and socket in a temporary directory, and is
//! killed when the handle is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod bench;
pub mod browser;
pub mod http;
pub mod netns;

/// A small deterministic generator (xorshift), so a failing run replays
/// from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (0 is replaced, as xorshift would
    /// stay at 0 for ever).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> i64 {
        (self.next_u64() % n) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// How long a test waits for something that should happen at once.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it returns `Some`, or fails after `DEADLINE`.
pub async fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if start.elapsed() > DEADLINE {
            bail!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls the async `cond` until it holds, or fails after `DEADLINE`.
pub async fn wait_until<F, Fut>(what: &str, cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_within(what, DEADLINE, cond).await
}

/// Polls the async `cond` every 2 ms until it holds, or fails after
/// `limit`.
pub async fn wait_within<F, Fut>(what: &str, limit: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Makes a mesh on `first` (unless it has one), joins `others` to it with
/// one invite, and waits until every one of them is linked with all the
/// rest.
pub async fn join_mesh(first: &blazedb::Client, others: &[&blazedb::Client]) -> anyhow::Result<()> {
    if first.mesh_status().await?.mesh.is_none() {
        first.create_mesh().await?;
    }
    let code = first.invite(Some(600), Some(0)).await?.code;
    for c in others {
        let s = c.join(&code).await?;
        anyhow::ensure!(s.mesh.is_some(), "joined, yet in no mesh");
    }
    let n = others.len();
    for (i, c) in [first]
        .into_iter()
        .chain(others.iter().copied())
        .enumerate()
    {
        wait_until(&format!("agent {i} to link with all {n} others"), || {
            connected(c, n)
        })
        .await?;
    }
    Ok(())
}

/// Starts `n` agents from the binary `bin`, each on a loopback port of its
/// own; the first creates a mesh and the others join it by invite. Returns
/// the agents and a client of each, once every one is linked with all.
pub async fn start_mesh(
    bin: &str,
    n: usize,
) -> anyhow::Result<(Vec<TestAgent>, Vec<blazedb::Client>)> {
    let mut agents = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..n {
        let a = TestAgent::start(bin).await?;
        clients.push(a.client().await?);
        agents.push(a);
    }
    let others: Vec<&blazedb::Client> = clients[1..].iter().collect();
    join_mesh(&clients[0], &others).await?;
    Ok((agents, clients))
}

/// Every record of `db`/`coll` on the agent behind `client`, id -> fields;
/// empty if the database does not exist yet.
pub async fn records(
    client: &blazedb::Client,
    db: &str,
    coll: &str,
) -> BTreeMap<String, BTreeMap<String, blazedb::Value>> {
    match client.db(db).collection(coll).query().fetch_all().await {
        Ok(rs) => rs
            .into_iter()
            .map(|r| (r.id, r.fields.into_iter().collect()))
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Puts `n` records `{prefix}-{i}` (fields `i` and `by`: the prefix) into
/// `db`/`coll` on the agent behind `client`, one at a time.
pub async fn put_numbered(
    client: &blazedb::Client,
    db: &str,
    coll: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<()> {
    let coll = client.db(db).collection(coll);
    for i in 0..n {
        coll.put(
            &format!("{prefix}-{i}"),
            &serde_json::json!({ "i": i, "by": prefix }),
        )
        .await?;
    }
    Ok(())
}

/// Fails the test unless the agent behind `client` says, in `status`,
/// that this start took a new write incarnation for a reason containing
/// `why`; returns the status.
pub async fn assert_new_incarnation(
    client: &blazedb::Client,
    why: &str,
    context: &str,
) -> blazedb_proto::api::StatusResult {
    let status = client.status().await.expect("status");
    assert!(
        status
            .new_incarnation
            .as_deref()
            .is_some_and(|w| w.contains(why)),
        "{context}: the status names the new write incarnation ({why}): {status:?}"
    );
    status
}

/// Fails the test unless the agent behind `client` says, in `status`,
/// that its last run did not stop cleanly, so its writes now count under
/// a new write incarnation.
pub async fn assert_unclean_start(client: &blazedb::Client, context: &str) {
    assert_new_incarnation(client, "did not stop cleanly", context).await;
}

/// Copies everything in the directory `from` into the directory `to`
/// with `cp -a` (keeping modes and times, making new inodes), as a user
/// backing up or cloning a data directory would.
pub fn copy_dir(from: &Path, to: &Path) {
    let done = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("run cp");
    assert!(done.success(), "cp -a {} {}", from.display(), to.display());
}

/// Every file at or under `path` (a file, or a directory searched
/// recursively) whose bytes hold `needle`.
pub fn files_holding(path: &Path, needle: &[u8]) -> Vec<PathBuf> {
    if path.is_file() {
        let holds = std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle));
        return if holds {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| files_holding(&e.path(), needle))
        .collect()
}

/// Runs the blazectl binary `bin` against the agent at `socket` and
/// returns what it printed; fails the test, with its error output, if it
/// fails.
pub fn blazectl_ok(bin: &str, socket: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run blazectl");
    assert!(
        out.status.success(),
        "blazectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("blazectl prints UTF-8")
}

/// Whether the agent behind `client` has exactly `n` peers connected.
pub async fn connected(client: &blazedb::Client, n: usize) -> bool {
    client
        .peers()
        .await
        .map(|ps| ps.iter().filter(|p| p.state == "connected").count() == n)
        .unwrap_or(false)
}

/// A `blazed` process on its own data directory and socket.
#[derive(Debug)]
pub struct TestAgent {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    netns: Option<String>,
    log: Option<PathBuf>,
}

/// Finds a binary built beside the running test or benchmark.
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

impl TestAgent {
    /// Starts an agent from the binary `bin` and waits until its socket
    /// accepts connections.
    pub async fn start(bin: impl Into<PathBuf>) -> anyhow::Result<TestAgent> {
        Self::start_with(bin, &[]).await
    }

    /// Starts an agent with extra command-line arguments.
    pub async fn start_with(bin: impl Into<PathBuf>, args: &[&str]) -> anyhow::Result<TestAgent> {
        let mut agent = Self::stopped(bin, args)?;
        agent.restart().await?;
        Ok(agent)
    }

    /// Sets up an agent's directories without starting it (start it with
    /// [`TestAgent::restart`]).
    pub fn stopped(bin: impl Into<PathBuf>, args: &[&str]) -> anyhow::Result<TestAgent> {
        let dir = tempfile::Builder::new().prefix("blz").tempdir()?;
        std::fs::create_dir(dir.path().join("data"))?;
        Ok(TestAgent {
            bin: bin.into(),
            dir,
            child: None,
            extra_args: args.iter().map(|s| (*s).to_owned()).collect(),
            netns: None,
            log: None,
        })
    }

    /// Sets up an agent that will run inside the network namespace `ns`,
    /// without starting it. It gets no mesh arguments but `args`: the
    /// namespace is its own network.
    pub fn stopped_in(
        bin: impl Into<PathBuf>,
        ns: &str,
        args: &[&str],
    ) -> anyhow::Result<TestAgent> {
        let mut agent = Self::stopped(bin, args)?;
        agent.netns = Some(ns.to_owned());
        Ok(agent)
    }

    /// Appends the agent's log (its standard error, at level `info`) to
    /// `path` from the next start on, so a test can read what it said.
    pub fn log_to(&mut self, path: impl Into<PathBuf>) {
        self.log = Some(path.into());
    }

    /// Replaces the extra command-line arguments for the next start.
    pub fn set_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|s| (*s).to_owned()).collect();
    }

    /// The agent's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Replaces the (stopped) agent's data directory with a copy of
    /// `backup`, as a user restoring a backup would.
    pub fn restore_data_dir(&self, backup: &Path) {
        std::fs::remove_dir_all(self.data_dir()).expect("remove the data directory");
        std::fs::create_dir(self.data_dir()).expect("make the data directory");
        copy_dir(backup, &self.data_dir());
    }

    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run").join("blazed.sock")
    }

    /// Unless the test says otherwise, agents listen on a loopback port of
    /// their own and keep off mDNS, so parallel tests do not meet.
    /// Each serves its dashboard on a loopback port of its own.
    fn default_mesh_args(&self) -> Vec<&'static str> {
        let has = |flag: &str| self.extra_args.iter().any(|a| a.starts_with(flag));
        let mut args = Vec::new();
        if !has("--http") && !has("--no-http") {
            args.extend(["--http", "127.0.0.1:0"]);
        }
        if self.netns.is_some() {
            return args;
        }
        if !has("--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        if !has("--mdns-loopback") && !has("--no-mdns") {
            args.push("--no-mdns");
        }
        args
    }

    /// A command for this agent's binary with its data dir and socket set.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(&self.extra_args)
            .args(self.default_mesh_args())
            .env_remove("BLAZED_CONFIG")
            .env_remove("BLAZED_HTTP")
            // A test run under systemd must not hand its manager's sockets on.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        let append = |path: &Path| {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
        };
        if let Some(path) = &self.log
            && let Ok(f) = append(path)
        {
            cmd.stderr(f).env("RUST_LOG", "info");
        } else if let Ok(f) = append(&self.quiet_log()) {
            // Kept aside, and shown only if the test fails: tests that
            // provoke errors on purpose must not fill a passing run with
            // alarming lines.
            cmd.stderr(f);
        }
        cmd
    }

    /// Where the agent's standard error goes unless `log_to` said.
    fn quiet_log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Starts the agent from `cmd`, usually [`TestAgent::command`] with
    /// something added, without waiting for it to serve.
    pub fn spawn(&mut self, mut cmd: Command) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the agent is already running");
        self.child = Some(cmd.spawn().context("cannot start the agent")?);
        Ok(())
    }

    /// Starts the agent again (after [`TestAgent::kill`] or
    /// [`TestAgent::stop`]) and waits until it serves.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let child = self.command().spawn().context("cannot start the agent")?;
        self.child = Some(child);
        let socket = self.socket();
        let start = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let said = std::fs::read_to_string(self.quiet_log()).unwrap_or_default();
                bail!("the agent exited at start: {status}\n{said}");
            }
            if start.elapsed() > DEADLINE {
                bail!("the agent did not listen on {} in time", socket.display());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A client connected to this agent.
    pub async fn client(&self) -> anyhow::Result<blazedb::Client> {
        Ok(blazedb::Client::connect_to(self.socket()).await?)
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the agent to exit.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("the agent is not running")?;
        signal(child.id(), "TERM")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                bail!("the agent did not exit within {DEADLINE:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Sends a signal (by name, e.g. `TERM`) to a process.
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.quiet_log())
            && !log.is_empty()
        {
            eprintln!(
                "--- what agent {} said ---\n{log}",
                self.dir.path().display()
            );
        }
    }
}
