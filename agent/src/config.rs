//! The agent's settings: command-line flags beat environment variables,
//! which beat the TOML config file, which beats the built-in defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use blazedb_proto::frame::DEFAULT_MAX_FRAME;
use blazedb_proto::mesh::Role;
use serde::Deserialize;

use crate::mesh::{DEFAULT_PORT, MeshConfig};

/// The environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "BLAZED_DATA_DIR";
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "BLAZED_CONFIG";
/// The config file's name in the config directory.
pub const CONFIG_FILE: &str = "blazed.toml";

/// What the config file may set. Every key is optional.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where databases and the device key live.
    pub data_dir: Option<PathBuf>,
    /// The Unix socket local apps connect to.
    pub socket: Option<PathBuf>,
    /// The largest IPC frame accepted, in bytes.
    pub max_frame: Option<u32>,
    /// How often `buffered` databases are synced to disk, in milliseconds.
    pub flush_interval_ms: Option<u64>,
    /// MiB of records kept in memory after gets, so that reading them
    /// again skips the tree (default 64; 0 keeps none).
    pub record_cache_mb: Option<u64>,
    /// A log filter in `RUST_LOG` syntax, used when `RUST_LOG` is unset.
    pub log: Option<String>,
    /// `device` (the default) or `hub`.
    pub role: Option<Role>,
    /// Where the mesh listens, `ip:port` (UDP).
    pub listen: Option<String>,
    /// Whether to find peers with mDNS (default: on for devices, off for
    /// hubs).
    pub mdns: Option<bool>,
    /// This device's name, shown to other members (default: the host name).
    pub name: Option<String>,
    /// Addresses to announce instead of the interfaces' own, `host:port`.
    pub announce: Option<Vec<String>>,
    /// Addresses always dialled, `host:port`: hubs, far peers.
    pub peers: Option<Vec<String>>,
    /// How many other devices (not hubs) to keep links with (default 8).
    pub member_links: Option<usize>,
    /// How many operations of an end-to-end encrypted database a key
    /// holder holds more than the last sealed checkpoint it gave a blind
    /// hub before it gives it a new one (default 10000).
    pub checkpoint_ops: Option<u64>,
    /// Whether processes of the agent's own user need a token too: the
    /// owner token (blazectl reads it from the data directory) or an
    /// app's (default false).
    pub require_app_tokens: Option<bool>,
    /// A group whose members may reach the socket (its directory becomes
    /// 0750 and the socket 0660, both of that group), for a system agent
    /// serving apps of several users. Private to the agent's user when
    /// missing.
    pub socket_group: Option<String>,
    /// Where the dashboard and metrics are served, `ip:port` on loopback
    /// (default 127.0.0.1:7341), or `off`.
    pub http: Option<String>,
    /// Whether to count what the metrics report (default true). Off, the
    /// dashboard shows no rates and `/metrics` no counts.
    pub metrics: Option<bool>,
}

/// Settings given on the command line or in the environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir` or `BLAZED_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--socket` or `BLAZED_SOCKET`.
    pub socket: Option<PathBuf>,
    /// `--config` or `BLAZED_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--max-frame`.
    pub max_frame: Option<u32>,
    /// `--role`.
    pub role: Option<Role>,
    /// `--listen` or `BLAZED_LISTEN`.
    pub listen: Option<String>,
    /// `--no-mdns`.
    pub no_mdns: bool,
    /// `--mdns-loopback`: mDNS on loopback only.
    pub mdns_loopback: bool,
    /// `--checkpoint-ops`.
    pub checkpoint_ops: Option<u64>,
    /// `--require-app-tokens`.
    pub require_app_tokens: bool,
    /// `--socket-group`.
    pub socket_group: Option<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `--peer`, repeatable.
    pub peers: Vec<String>,
    /// `--announce`, repeatable; replaces the file's list when given.
    pub announce: Vec<String>,
    /// `--http` or `BLAZED_HTTP`.
    pub http: Option<String>,
    /// `--no-http`.
    pub no_http: bool,
    /// `--no-metrics`.
    pub no_metrics: bool,
}

/// MiB of records kept after gets by default: as much as fjall's block
/// cache, which holds about as many records' worth of blocks.
pub const DEFAULT_RECORD_CACHE_MB: u64 = 64;

/// Where the dashboard is served by default.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7341";

/// Where the dashboard and metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// A loopback address.
    pub addr: std::net::SocketAddr,
    /// Named by the user, so failing to bind it stops the agent; the
    /// default only warns (a second agent on the machine finds it taken).
    pub explicit: bool,
}

/// The settings the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where databases and the device key live.
    pub data_dir: PathBuf,
    /// The Unix socket local apps connect to.
    pub socket: PathBuf,
    /// The largest IPC frame accepted, in bytes.
    pub max_frame: u32,
    /// How often `buffered` databases are synced to disk.
    pub flush_interval: Duration,
    /// Bytes of records kept in memory after gets.
    pub record_cache_bytes: u64,
    /// The log filter from the config file, if any.
    pub log: Option<String>,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// How the mesh runs.
    pub mesh: MeshConfig,
    /// Whether processes of the agent's own user need a token too.
    pub require_app_tokens: bool,
    /// The group that may reach the socket, if any.
    pub socket_group: Option<String>,
    /// Where the dashboard and metrics are served; `None` when off.
    pub http: Option<HttpConfig>,
    /// Whether metrics are counted.
    pub metrics: bool,
}

/// Parses where to serve HTTP: `off`, or an `ip:port` on loopback, since
/// the dashboard is for this machine's user only.
fn http_config(given: Option<String>, no_http: bool) -> anyhow::Result<Option<HttpConfig>> {
    if no_http {
        return Ok(None);
    }
    let explicit = given.is_some();
    let text = given.unwrap_or_else(|| DEFAULT_HTTP.to_owned());
    if text == "off" {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = text.parse().map_err(|_| {
        anyhow::anyhow!(
            "http address {text:?} is not valid: use ip:port, like {DEFAULT_HTTP}, or off"
        )
    })?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "http address {addr} is not on loopback: the dashboard and metrics are served to this          machine only (use 127.0.0.1:PORT or [::1]:PORT, and a reverse proxy or an SSH tunnel          to reach them from elsewhere)"
    );
    Ok(Some(HttpConfig { addr, explicit }))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "blazed".to_owned())
}

pub use blazedb_proto::paths::default_data_dir;

fn default_config_file() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "blazedb").map(|d| d.config_dir().join(CONFIG_FILE))
}

impl Config {
    /// Resolves the settings from the overrides, the config file and the
    /// defaults. A config file named explicitly must exist; the default one
    /// is read only if it does.
    pub fn resolve(o: Overrides) -> anyhow::Result<Config> {
        let (file, config_file) = match &o.config {
            Some(path) => (Some(read_file(path)?), Some(path.clone())),
            None => match default_config_file().filter(|p| p.exists()) {
                Some(path) => (Some(read_file(&path)?), Some(path)),
                None => (None, None),
            },
        };
        let file = file.unwrap_or_default();
        let max_frame = o.max_frame.or(file.max_frame).unwrap_or(DEFAULT_MAX_FRAME);
        anyhow::ensure!(
            (1024..=1 << 30).contains(&max_frame),
            "max_frame {max_frame} is out of range: use 1024 to 1073741824 bytes"
        );
        let role = o.role.or(file.role).unwrap_or_default();
        let listen = o
            .listen
            .or(file.listen)
            .unwrap_or_else(|| format!("0.0.0.0:{DEFAULT_PORT}"));
        let listen = listen.parse().with_context(|| {
            format!(
                "listen address {listen:?} is not valid: use ip:port, like 0.0.0.0:{DEFAULT_PORT}"
            )
        })?;
        let http = http_config(o.http.or(file.http), o.no_http)?;
        let metrics = !o.no_metrics && file.metrics.unwrap_or(true);
        let mut peers = file.peers.unwrap_or_default();
        peers.extend(o.peers);
        let mesh = MeshConfig {
            listen,
            role,
            name: o.name.or(file.name).unwrap_or_else(host_name),
            mdns: !o.no_mdns && file.mdns.unwrap_or(role == Role::Device),
            mdns_loopback_only: o.mdns_loopback,
            announce: if o.announce.is_empty() {
                file.announce.unwrap_or_default()
            } else {
                o.announce
            },
            peers,
            member_links: file
                .member_links
                .unwrap_or(crate::mesh::overlay::DEFAULT_MEMBER_LINKS),
            checkpoint_ops: o
                .checkpoint_ops
                .or(file.checkpoint_ops)
                .unwrap_or(crate::sync::EngineConfig::default().checkpoint_ops)
                .max(1),
            count_traffic: metrics,
        };
        Ok(Config {
            mesh,
            data_dir: o
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
            socket: o
                .socket
                .or(file.socket)
                .unwrap_or_else(blazedb_proto::paths::default_socket_path),
            max_frame,
            flush_interval: Duration::from_millis(file.flush_interval_ms.unwrap_or(200).max(1)),
            record_cache_bytes: file
                .record_cache_mb
                .unwrap_or(DEFAULT_RECORD_CACHE_MB)
                .saturating_mul(1 << 20),
            log: file.log,
            config_file,
            require_app_tokens: o.require_app_tokens || file.require_app_tokens.unwrap_or(false),
            socket_group: o.socket_group.or(file.socket_group),
            http,
            metrics,
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_cache_is_64_mib_unless_the_file_says_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolve = |text: &str| {
            let file = dir.path().join("c.toml");
            std::fs::write(&file, text).expect("write");
            Config::resolve(Overrides {
                config: Some(file),
                ..Default::default()
            })
            .expect("resolve")
            .record_cache_bytes
        };
        assert_eq!(resolve(""), 64 << 20);
        assert_eq!(resolve("record_cache_mb = 8\n"), 8 << 20);
        assert_eq!(resolve("record_cache_mb = 0\n"), 0);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\nsocket = \"/file.sock\"\nmax_frame = 4096\n",
        )
        .expect("write");
        let c = Config::resolve(Overrides {
            data_dir: Some("/from/flag".into()),
            config: Some(file),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.socket, PathBuf::from("/file.sock"));
        assert_eq!(c.max_frame, 4096);
    }

    #[test]
    fn http_is_served_on_loopback_only() {
        let c = Config::resolve(Overrides::default()).expect("defaults");
        assert_eq!(
            c.http,
            Some(HttpConfig {
                addr: DEFAULT_HTTP.parse().expect("addr"),
                explicit: false
            })
        );
        let off = Config::resolve(Overrides {
            no_http: true,
            ..Default::default()
        })
        .expect("off");
        assert_eq!(off.http, None);
        let err = Config::resolve(Overrides {
            http: Some("0.0.0.0:7341".into()),
            ..Default::default()
        })
        .expect_err("not loopback");
        assert!(format!("{err:#}").contains("not on loopback"), "{err:#}");
        let v6 = Config::resolve(Overrides {
            http: Some("[::1]:0".into()),
            ..Default::default()
        })
        .expect("v6 loopback");
        assert!(v6.http.is_some_and(|h| h.explicit));
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "datadir = \"x\"\n").expect("write");
        let err = Config::resolve(Overrides {
            config: Some(file),
            ..Default::default()
        })
        .expect_err("unknown key");
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        assert!(
            Config::resolve(Overrides {
                config: Some(dir.path().join("missing.toml")),
                ..Default::default()
            })
            .is_err()
        );
    }
}
