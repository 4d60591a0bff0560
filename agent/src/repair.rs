//! `blazed repair`: looks for damage in a stopped agent's store and, when
//! asked, rebuilds it or moves it aside (see [`crate::store::repair`]).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::identity::Identity;
use crate::lock::DataDirLock;
use crate::store::{Store, StoreOptions};

/// What `blazed repair` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only look, and say what was found.
    Check,
    /// Rebuild the damaged databases.
    Rebuild,
    /// Move the whole store aside, for a store that cannot be opened.
    SetAside,
}

/// How `repair` went, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing damaged, or everything damaged was rebuilt or set aside.
    Sound,
    /// Damage was found and left as it is.
    Damaged,
}

/// Runs `blazed repair` on the data directory `data_dir`, printing what it
/// finds and does.
pub async fn run(data_dir: &Path, mode: Mode) -> anyhow::Result<Outcome> {
    let _lock = DataDirLock::acquire(data_dir)?;
    let store_dir = data_dir.join("store");
    anyhow::ensure!(
        store_dir.is_dir(),
        "there is no store in {} (has blazed ever run with this data directory?)",
        data_dir.display()
    );
    if mode == Mode::SetAside {
        let aside = set_aside(&store_dir)?;
        println!(
            "moved the store to {}.\nThe next start begins with an empty store: it takes every \
             database this device syncs back from its peers, under a new write incarnation. \
             Databases that synced with nobody are only in the copy set aside.",
            aside.display()
        );
        return Ok(Outcome::Sound);
    }
    let identity = Identity::load_or_create(data_dir)?;
    let store = match Store::open(
        &store_dir,
        identity.device_id(),
        StoreOptions {
            new_device: false,
            ..StoreOptions::default()
        },
    ) {
        Ok(store) => store,
        // Not damage: a newer agent's store, which only it reads.
        Err(e @ crate::store::StoreError::TooNew { .. }) => return Err(e.into()),
        Err(e) => {
            println!(
                "the store in {} cannot be opened: {e}\n`blazed repair --set-aside` moves it \
                 aside, so the next start takes every synced database back from peers.",
                store_dir.display()
            );
            return Ok(Outcome::Damaged);
        }
    };
    for tail in store.dropped_tails() {
        println!("recovery: {tail}");
    }
    // Opening the store took the start's decision about the write
    // incarnation; the next start finds this run's clean stop, so this is
    // where the user hears of it.
    if let Some(why) = &store.incarnation_info().changed {
        println!(
            "new write incarnation {}: {why}",
            store.incarnation_info().number
        );
    }
    let found = store.repair(mode == Mode::Rebuild).await?;
    let mut outcome = Outcome::Sound;
    let mut rebuilt = false;
    for db in &found {
        if !db.damaged() {
            println!(
                "{}: sound (records {}, changes {}, index entries {})",
                db.db, db.records.entries, db.log.entries, db.index.entries
            );
            continue;
        }
        println!("{}: DAMAGED", db.db);
        for (what, c) in [
            ("records", &db.records),
            ("change log", &db.log),
            ("indexes", &db.index),
        ] {
            if let Some(damage) = &c.damage {
                println!(
                    "  {what}: unreadable after {} entries, in {}: {damage}",
                    c.entries,
                    c.path.display()
                );
            }
        }
        match &db.rebuilt {
            Some(how) => {
                println!("  rebuilt: {how}");
                rebuilt = true;
            }
            None => outcome = Outcome::Damaged,
        }
    }
    if found.is_empty() {
        println!("the store holds no databases");
    }
    store.shutdown().await?;
    if rebuilt {
        // The device's writes since its last sync may now be only at
        // peers: the next start must not trust the store to hand out the
        // next seqs, so the proof of a clean stop goes.
        crate::store::incarnation::forget_clean_stop(&store_dir)?;
    }
    if outcome == Outcome::Damaged {
        println!(
            "run `blazed repair --rebuild` to keep what can be read and take the rest back from peers"
        );
    }
    Ok(outcome)
}

/// Renames `store` to `store.damaged-SECONDS` beside it; returns the new
/// path.
fn set_aside(store: &Path) -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = store.with_file_name(format!("store.damaged-{secs}"));
    std::fs::rename(store, &aside)
        .with_context(|| format!("cannot move {} to {}", store.display(), aside.display()))?;
    // The content keys of end-to-end encrypted databases live beside the
    // tables; the new store keeps them, or it could not read what peers
    // send back.
    let keys = aside.join(crate::crypto::keyring::KEYS_FILE);
    if keys.exists() {
        std::fs::create_dir(store).with_context(|| format!("cannot create {}", store.display()))?;
        std::fs::copy(&keys, store.join(crate::crypto::keyring::KEYS_FILE))
            .with_context(|| format!("cannot keep the content keys in {}", keys.display()))?;
    }
    Ok(aside)
}
