//! A throwaway lab of network namespaces on one bridge (made by
//! `tests/netns-lab.sh`), so agents can meet over a real LAN: mDNS,
//! unplugged links, hosts that cannot reach each other.
//!
//! Making namespaces needs root. Where that fails the lab is skipped with
//! a loud message, unless `BLAZEDB_NETNS=require` (set by CI), where it is
//! an error.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context as _, bail};

/// The environment variable that turns a lab that cannot be made into a
/// failure.
pub const REQUIRE_ENV: &str = "BLAZEDB_NETNS";

/// A lab of nodes `a`, `b`, ... in namespaces `{prefix}_a`, ...; removed
/// when dropped.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    net: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("netns-lab.sh")
}

impl Lab {
    /// Makes a lab of `n` nodes with addresses `{net}.11`, `{net}.12`, ...
    /// and no IPv6. Returns `None` after saying why where namespaces cannot
    /// be made and the lab is not required.
    pub fn up(prefix: &str, net: &str, n: usize) -> anyhow::Result<Option<Lab>> {
        let lab = Lab {
            prefix: prefix.to_owned(),
            net: net.to_owned(),
        };
        let out = lab
            .script_command()
            .args(["up", &n.to_string()])
            .output()
            .context("cannot run netns-lab.sh")?;
        if out.status.success() {
            return Ok(Some(lab));
        }
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("require") {
            bail!("cannot make the network namespace lab ({REQUIRE_ENV}=require): {why}");
        }
        eprintln!(
            "\n*** SKIPPED: network namespace tests need root and iproute2 \
             (netns-lab.sh up failed: {why}) ***\n"
        );
        Ok(None)
    }

    fn script_command(&self) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .env("BLZ_PREFIX", &self.prefix)
            .env("BLZ_NET", &self.net)
            .env("BLZ_NO_V6", "1");
        cmd
    }

    /// The namespace of node `node` (`'a'`, `'b'`, ...).
    pub fn namespace(&self, node: char) -> String {
        format!("{}_{node}", self.prefix)
    }

    /// Node `node`'s address on the lab's LAN.
    pub fn ip(&self, node: char) -> String {
        let i = u32::from(node) - u32::from('a') + 11;
        format!("{}.{i}", self.net)
    }

    /// Runs `ip -n {namespace} args...` and fails if it does.
    pub fn ip_cmd(&self, node: char, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(self.namespace(node))
            .args(args)
            .output()
            .context("cannot run ip")?;
        anyhow::ensure!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.namespace(node),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Unplugs (`false`) or plugs back (`true`) node `node`'s LAN link.
    pub fn set_link(&self, node: char, up: bool) -> anyhow::Result<()> {
        self.ip_cmd(
            node,
            &["link", "set", "eth0", if up { "up" } else { "down" }],
        )
    }

    /// Makes `from` drop everything it sends to `to`.
    pub fn cut(&self, from: char, to: char) -> anyhow::Result<()> {
        let target = format!("{}/32", self.ip(to));
        self.ip_cmd(from, &["route", "add", "blackhole", &target])
    }

    /// Lets `from` reach `to` again after [`Lab::cut`].
    pub fn uncut(&self, from: char, to: char) -> anyhow::Result<()> {
        let target = format!("{}/32", self.ip(to));
        self.ip_cmd(from, &["route", "del", "blackhole", &target])
    }

    /// Delays every packet node `node` sends on the LAN by `delay_ms` and
    /// drops a `loss` share of them, with the delayer `bin`
    /// (`blazedb-netem`) on an NFQUEUE in the node's namespace. The
    /// impairment lasts until the returned handle is stopped or dropped.
    pub fn impair(
        &self,
        node: char,
        bin: &Path,
        delay_ms: u64,
        loss: f64,
        seed: u64,
    ) -> anyhow::Result<Impairment> {
        let ns = self.namespace(node);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(bin)
            .args(["--delay-ms", &delay_ms.to_string()])
            .args(["--loss", &loss.to_string()])
            .args(["--seed", &seed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut out = BufReader::new(child.stdout.take().context("delayer stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("the delayer in {ns} did not start: {line:?}");
        }
        let imp = Impairment {
            ns,
            child: Some(child),
            out,
        };
        imp.iptables("-A")?;
        Ok(imp)
    }
}

/// A node's outgoing traffic delayed and thinned by a `blazedb-netem`
/// process (see [`Lab::impair`]).
#[derive(Debug)]
pub struct Impairment {
    ns: String,
    child: Option<Child>,
    out: BufReader<ChildStdout>,
}

/// What a delayer did to the packets it saw.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct ImpairmentCounts {
    /// Packets let through after the delay.
    pub passed: u64,
    /// Packets dropped.
    pub dropped: u64,
    /// Packets the kernel dropped while they were held (their device went
    /// down).
    pub vanished: u64,
}

impl Impairment {
    /// Adds (`-A`) or deletes (`-D`) the rule that queues the node's LAN
    /// traffic for the delayer.
    fn iptables(&self, op: &str) -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "iptables-legacy", op])
            .args(["OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", "0"])
            .output()
            .context("cannot run iptables-legacy")?;
        anyhow::ensure!(
            out.status.success(),
            "iptables-legacy {op} in {}: {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Whether the delayer still runs (while it does not, the node's LAN
    /// traffic goes nowhere).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Ends the impairment and returns what the delayer did.
    pub fn stop(mut self) -> anyhow::Result<ImpairmentCounts> {
        self.iptables("-D")?;
        let mut child = self.child.take().context("stopped twice")?;
        // Closing its standard input tells the delayer to report and exit.
        drop(child.stdin.take());
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        child.wait()?;
        serde_json::from_str(&line)
            .with_context(|| format!("the delayer in {} reported {line:?}", self.ns))
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.iptables("-D");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.script_command().arg("down").output();
    }
}
