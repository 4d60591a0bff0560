//! `blazectl db list|create|sync|rules|key|drop`.

use clap::{Subcommand, ValueEnum};

use super::Opts;
use super::output::{mode_word, print_json, print_table};
use crate::api::DbSettings;
use crate::{Client, Durability, SyncMode};

#[derive(Debug, Subcommand)]
pub(crate) enum DbCommand {
    /// List the databases.
    List,
    /// Create a database.
    Create {
        /// The database name.
        name: String,
        /// When writes are acknowledged.
        #[arg(long, value_enum, default_value = "fsync")]
        durability: DurabilityArg,
        /// How the database takes part in sync: `on` (both ways), `pull`,
        /// `push` or `off` (it never leaves this device).
        #[arg(long, value_enum, default_value = "on")]
        mode: ModeArg,
        /// The conflict priority of this device's writes (0-127): higher
        /// wins over any clock. Give a hub a higher one than its devices.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=127))]
        priority: u8,
        /// Seal its operations end to end: only devices holding its key
        /// read them; hubs relay them blind unless an admin grants them
        /// the key (`db key grant`). Fixed once made.
        #[arg(long)]
        e2e: bool,
        /// Succeed if it exists already.
        #[arg(long)]
        if_not_exists: bool,
    },
    /// Manage an end-to-end encrypted database's keys.
    Key {
        /// The database name.
        name: String,
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Turn sync of a database on or off (`off`: it never leaves this
    /// device), or make it pull-only or push-only; and, optionally, ask to
    /// receive less than the access rules allow.
    Sync {
        /// The database name.
        name: String,
        /// `on`, `off`, `pull` or `push`.
        #[arg(value_enum)]
        mode: ModeArg,
        /// Receive only these collections (comma-separated).
        #[arg(long, value_delimiter = ',')]
        collections: Option<Vec<String>>,
        /// Receive only records meeting this condition (repeatable), e.g.
        /// 'status != archived'.
        #[arg(long = "where")]
        filter: Vec<String>,
        /// Never receive these fields (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// Ask for everything the access rules allow again.
        #[arg(long, conflicts_with_all = ["collections", "filter", "exclude"])]
        everything: bool,
    },
    /// Change a database's conflict priority or durability, at once.
    Set {
        /// The database name.
        name: String,
        /// The conflict priority of this device's writes from now on
        /// (0-127): higher wins over any clock.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=127))]
        priority: Option<u8>,
        /// When writes are acknowledged from now on.
        #[arg(long, value_enum)]
        durability: Option<DurabilityArg>,
    },
    /// Show or choose the devices this device syncs a database with, and
    /// which way (every member, both ways, unless chosen).
    Peers {
        /// The database name.
        name: String,
        #[command(subcommand)]
        action: Option<PeersAction>,
    },
    /// Show or set a database's access rules: who may see and write what.
    Rules {
        /// The database name.
        name: String,
        #[command(subcommand)]
        action: super::rules::RulesAction,
    },
    /// Delete a database and everything in it, on this device only: the
    /// other members keep theirs, and theirs no longer come back here
    /// until `db create` makes it here again.
    Drop {
        /// The database name.
        name: String,
        /// Succeed if there is no such database.
        #[arg(long)]
        if_exists: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PeersAction {
    /// Show the chosen devices (the same as no subcommand).
    Show,
    /// Sync only with these devices: `NAME` (both ways), `NAME=pull`
    /// (only take from it) or `NAME=push` (only give to it).
    Set {
        /// Devices by name, id or id prefix, each with an optional
        /// `=on|pull|push`.
        #[arg(required = true)]
        devices: Vec<String>,
    },
    /// Add a device to the chosen ones, or change its direction.
    Add {
        /// The device, by name, id or id prefix.
        device: String,
        /// `on`, `pull` or `push`.
        #[arg(long, value_enum, default_value = "on")]
        mode: LinkArg,
    },
    /// Stop syncing the database with a device.
    Remove {
        /// The device, by name, id or id prefix.
        device: String,
    },
    /// Sync with every member, both ways, again.
    All,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LinkArg {
    On,
    Pull,
    Push,
}

impl LinkArg {
    fn mode(self) -> SyncMode {
        match self {
            LinkArg::On => SyncMode::Sync,
            LinkArg::Pull => SyncMode::Pull,
            LinkArg::Push => SyncMode::Push,
        }
    }
}

/// Parses `NAME`, `NAME=on`, `NAME=pull` or `NAME=push`.
fn db_peer(spec: &str) -> anyhow::Result<crate::api::DbPeer> {
    let (device, mode) = match spec.split_once('=') {
        None => (spec, LinkArg::On),
        Some((d, m)) => (
            d,
            <LinkArg as ValueEnum>::from_str(m, true).map_err(|_| {
                anyhow::anyhow!("{spec:?}: the direction is on, pull or push, like {d}=pull")
            })?,
        ),
    };
    Ok(crate::api::DbPeer {
        device: device.to_owned(),
        sync_mode: mode.mode(),
    })
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyAction {
    /// Give a member every key of the database this device holds: for a
    /// hub, which then reads, filters and compacts the database (admins
    /// only; devices with access get keys on their own).
    Grant {
        /// The member, by name, id or id prefix.
        device: String,
    },
    /// Make the next key epoch and grant it to every member that may hold
    /// it; new writes are sealed under it. Done on its own when a device
    /// that held the key is removed or loses access.
    Rotate,
}

/// How `db list` shows a database's encryption.
fn encryption(d: &crate::api::DbInfo) -> String {
    match (d.settings.encryption, d.key_epoch) {
        (crate::api::Encryption::None, _) => "none".into(),
        (crate::api::Encryption::E2e, Some(epoch)) => format!("e2e (key {epoch})"),
        (crate::api::Encryption::E2e, None) => "e2e (no key: relayed blind)".into(),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DurabilityArg {
    Fsync,
    Buffered,
}

impl DurabilityArg {
    fn into_durability(self) -> Durability {
        match self {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Buffered => Durability::Buffered,
        }
    }
}

/// A database's sync mode as `blazectl` takes it; the protocol's names
/// (`sync`, `local`) are accepted too.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
    #[value(alias = "sync")]
    On,
    #[value(alias = "local")]
    Off,
    Pull,
    Push,
}

impl ModeArg {
    fn mode(self) -> SyncMode {
        match self {
            ModeArg::On => SyncMode::Sync,
            ModeArg::Off => SyncMode::Local,
            ModeArg::Pull => SyncMode::Pull,
            ModeArg::Push => SyncMode::Push,
        }
    }
}

pub(crate) async fn run(client: &Client, cmd: DbCommand, opts: Opts) -> anyhow::Result<()> {
    match cmd {
        DbCommand::List => {
            let dbs = client.databases().await?;
            if opts.json {
                return print_json(&serde_json::to_value(&dbs)?);
            }
            let rows = dbs
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        format!("{:?}", d.settings.durability).to_lowercase(),
                        mode_word(d.settings.sync_mode).to_owned(),
                        encryption(d),
                        d.collections
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        d.head.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NAME",
                    "DURABILITY",
                    "MODE",
                    "ENCRYPTION",
                    "COLLECTIONS",
                    "HEAD",
                ],
                rows,
            );
        }
        DbCommand::Create {
            name,
            durability,
            mode,
            priority,
            e2e,
            if_not_exists,
        } => {
            let settings = DbSettings {
                durability: durability.into_durability(),
                sync_mode: mode.mode(),
                priority,
                encryption: if e2e {
                    crate::api::Encryption::E2e
                } else {
                    crate::api::Encryption::None
                },
            };
            let info = client
                .db(&name)
                .create_with(settings, if_not_exists)
                .await?;
            if opts.json {
                return print_json(&serde_json::to_value(&info)?);
            }
            println!("created database {}", info.name);
        }
        DbCommand::Sync {
            name,
            mode,
            collections,
            filter,
            exclude,
            everything,
        } => {
            let mode = mode.mode();
            let asks = collections.is_some() || !filter.is_empty() || !exclude.is_empty();
            let db = client.db(&name);
            let info = if asks || everything {
                let wish = blazedb_proto::rules::SyncWish {
                    collections,
                    filter: filter
                        .iter()
                        .map(|f| super::fields::parse_filter(f))
                        .collect::<anyhow::Result<_>>()?,
                    exclude,
                };
                db.set_sync(mode, wish).await?
            } else {
                db.set_sync_mode(mode).await?
            };
            if opts.json {
                return print_json(&serde_json::to_value(&info)?);
            }
            println!(
                "database {} now syncs in mode {}",
                info.name,
                mode_word(info.settings.sync_mode)
            );
        }
        DbCommand::Set {
            name,
            priority,
            durability,
        } => {
            anyhow::ensure!(
                priority.is_some() || durability.is_some(),
                "nothing to change: give --priority N or --durability fsync|buffered"
            );
            let info = client
                .db(&name)
                .set_settings(priority, durability.map(DurabilityArg::into_durability))
                .await?;
            if opts.json {
                return print_json(&serde_json::to_value(&info)?);
            }
            println!(
                "database {} now has priority {} and durability {}",
                info.name,
                info.settings.priority,
                format!("{:?}", info.settings.durability).to_lowercase()
            );
        }
        DbCommand::Peers { name, action } => peers(client, &name, action, opts).await?,
        DbCommand::Rules { name, action } => super::rules::run(client, &name, action, opts).await?,
        DbCommand::Key {
            name,
            action: KeyAction::Rotate,
        } => {
            let info = client.db(&name).rotate_key().await?;
            if opts.json {
                return print_json(&serde_json::to_value(&info)?);
            }
            println!(
                "{name} now seals new writes under key epoch {}",
                info.key_epoch.unwrap_or_default()
            );
        }
        DbCommand::Key {
            name,
            action: KeyAction::Grant { device },
        } => {
            let r = client.db(&name).grant_key(&device).await?;
            if opts.json {
                return print_json(&serde_json::to_value(&r)?);
            }
            match r.granted {
                0 => println!(
                    "{} holds every key of {name} this device holds",
                    r.device_id
                ),
                n => println!("granted {n} key epoch(s) of {name} to {}", r.device_id),
            }
        }
        DbCommand::Drop { name, if_exists } => {
            let dropped = client
                .call::<crate::api::DbDrop>(&crate::api::DbDropParams {
                    name: name.clone(),
                    if_exists,
                })
                .await?
                .dropped;
            if opts.json {
                return print_json(&serde_json::json!({ "dropped": dropped }));
            }
            if dropped {
                println!("dropped database {name}");
            } else {
                println!("no database {name}");
            }
        }
    }
    Ok(())
}

/// `db peers`: shows the chosen devices, or changes them.
async fn peers(
    client: &Client,
    name: &str,
    action: Option<PeersAction>,
    opts: Opts,
) -> anyhow::Result<()> {
    let db = client.db(name);
    let before = db.info().await?;
    let current = before.peers.clone();
    let same = |a: &str, b: &str| a == b || a.starts_with(b);
    let info = match action {
        None | Some(PeersAction::Show) => before,
        Some(PeersAction::All) => db.set_peers(None).await?,
        Some(PeersAction::Set { devices }) => {
            let peers = devices
                .iter()
                .map(|d| db_peer(d))
                .collect::<anyhow::Result<_>>()?;
            db.set_peers(Some(peers)).await?
        }
        Some(PeersAction::Add { device, mode }) => {
            let mut peers = match current {
                Some(peers) => peers,
                None => mesh_links(client, name).await?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{name} syncs with every member already; `db peers {name} set DEVICE...` \
                         names the only ones"
                    )
                })?,
            };
            peers.push(crate::api::DbPeer {
                device,
                sync_mode: mode.mode(),
            });
            db.set_peers(Some(peers)).await?
        }
        Some(PeersAction::Remove { device }) => {
            let members = client.peers().await?;
            let gone = members
                .iter()
                .find(|p| p.name == device || same(&p.device_id, &device))
                .map(|p| p.device_id.clone())
                .ok_or_else(|| {
                    anyhow::anyhow!("no member {device:?}: blazectl peers lists them")
                })?;
            let from = match current {
                Some(peers) => peers,
                None => match mesh_links(client, name).await? {
                    Some(peers) => peers,
                    None => members
                        .iter()
                        .filter(|p| p.state != "removed")
                        .map(|p| crate::api::DbPeer {
                            device: p.device_id.clone(),
                            sync_mode: SyncMode::Sync,
                        })
                        .collect(),
                },
            };
            let peers = from.into_iter().filter(|p| p.device != gone).collect();
            db.set_peers(Some(peers)).await?
        }
    };
    if opts.json {
        return print_json(&serde_json::to_value(&info)?);
    }
    let (peers, whose) = match info.peers {
        Some(peers) => (peers, "as this device chose"),
        None => match mesh_links(client, name).await? {
            Some(peers) => (peers, "as the mesh's links say"),
            None => {
                println!(
                    "{name} syncs with every member, both ways (mode {})",
                    mode_word(info.settings.sync_mode)
                );
                return Ok(());
            }
        },
    };
    let names: std::collections::BTreeMap<String, String> = client
        .peers()
        .await
        .map(|ps| ps.into_iter().map(|p| (p.device_id, p.name)).collect())
        .unwrap_or_default();
    let rows = peers
        .iter()
        .map(|p| {
            vec![
                names.get(&p.device).cloned().unwrap_or_else(|| "-".into()),
                p.device.clone(),
                mode_word(p.sync_mode).to_owned(),
            ]
        })
        .collect();
    println!(
        "{name} syncs only with these, {whose} (its mode: {}):",
        mode_word(info.settings.sync_mode)
    );
    print_table(&["NAME", "DEVICE", "DIRECTION"], rows);
    Ok(())
}

/// The members the database's signed links give this device, if its
/// rules have links. An agent whose mesh is not running has none.
async fn mesh_links(
    client: &Client,
    name: &str,
) -> anyhow::Result<Option<Vec<crate::api::DbPeer>>> {
    match client.db(name).rules().await {
        Ok(r) => Ok(r.links_here),
        Err(crate::Error::Agent(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
