//! `blazectl app add|list|show|remove|grant|revoke`: local apps and what
//! each may read and write.

use clap::Subcommand;

use super::Opts;
use super::output::{print_json, table};
use crate::{AppGrant, AppInfo, Client};

#[derive(Debug, Subcommand)]
pub(crate) enum AppCommand {
    /// Add an app; prints its token once (the agent keeps only a hash).
    Add {
        /// The app's name.
        name: String,
        /// What it may use: `DB`, `DB/COLLECTION`, then `:read` (the
        /// default) or `:read-write` (repeatable).
        #[arg(long = "grant", value_name = "SPEC")]
        grants: Vec<String>,
        /// The only fields it sees and changes in every grant given here
        /// (comma-separated; the record id is always seen).
        #[arg(long, value_delimiter = ',', value_name = "FIELDS")]
        fields: Option<Vec<String>>,
        /// Let processes of this user id (not the agent's) connect as it.
        #[arg(long)]
        uid: Option<u32>,
    },
    /// List the apps.
    List,
    /// Show one app: its grants, its databases, its connections.
    Show {
        /// The app's name.
        name: String,
    },
    /// Remove an app; its connections are cut, its databases stay.
    Remove {
        /// The app's name.
        name: String,
    },
    /// Give an app a grant, replacing its grant on the same database and
    /// collection.
    Grant {
        /// The app's name.
        name: String,
        /// `DB`, `DB/COLLECTION`, then `:read` (the default) or
        /// `:read-write`.
        spec: String,
        /// The only fields it sees and changes (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "FIELDS")]
        fields: Option<Vec<String>>,
    },
    /// Take back an app's grants on a database or one collection of it;
    /// its connections are cut.
    Revoke {
        /// The app's name.
        name: String,
        /// `DB` or `DB/COLLECTION`.
        scope: String,
    },
}

fn grant(spec: &str, fields: Option<Vec<String>>) -> anyhow::Result<AppGrant> {
    AppGrant::parse(spec, fields).map_err(anyhow::Error::msg)
}

fn grants_text(app: &AppInfo) -> String {
    if app.grants.is_empty() {
        return "-".into();
    }
    let grants: Vec<String> = app.grants.iter().map(ToString::to_string).collect();
    grants.join("; ")
}

/// One app as `app show` prints it.
fn app_text(app: &AppInfo) -> String {
    let user = app
        .uid
        .map_or_else(|| "the agent's own".into(), |u| format!("uid {u}"));
    let dbs = if app.databases.is_empty() {
        "-".into()
    } else {
        app.databases.join(", ")
    };
    format!(
        "app          {}\nuser         {user}\ngrants       {}\n\
         databases    {dbs} (made by the app: full access)\nconnections  {}\n",
        app.name,
        grants_text(app),
        app.connections
    )
}

fn print_app(app: &AppInfo) {
    print!("{}", app_text(app));
}

/// The apps as `app list` prints them.
fn apps_table(apps: &[AppInfo]) -> String {
    let rows = apps
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.uid.map_or_else(|| "-".into(), |u| u.to_string()),
                grants_text(a),
                a.databases.len().to_string(),
                a.connections.to_string(),
            ]
        })
        .collect();
    table(&["APP", "UID", "GRANTS", "OWN DBS", "CONNECTIONS"], rows)
}

pub(crate) async fn run(client: &Client, cmd: AppCommand, opts: Opts) -> anyhow::Result<()> {
    match cmd {
        AppCommand::Add {
            name,
            grants,
            fields,
            uid,
        } => {
            let grants = grants
                .iter()
                .map(|g| grant(g, fields.clone()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(
                fields.is_none() || !grants.is_empty(),
                "--fields limits the app's --grant; give one"
            );
            let added = client.add_app(&name, grants, uid).await?;
            if opts.json {
                return print_json(&serde_json::to_value(&added)?);
            }
            print_app(&added.app);
            println!();
            println!("token        {}", added.token);
            println!();
            println!("Keep the token: it is not shown again. The app connects with");
            println!("BLAZEDB_APP={name} BLAZEDB_APP_TOKEN=<token>, or Client::connect_as.");
        }
        AppCommand::List => {
            let apps = client.apps().await?;
            if opts.json {
                return print_json(&serde_json::to_value(&apps)?);
            }
            print!("{}", apps_table(&apps));
        }
        AppCommand::Show { name } => {
            let app = client.app_info(&name).await?;
            if opts.json {
                return print_json(&serde_json::to_value(&app)?);
            }
            print_app(&app);
        }
        AppCommand::Remove { name } => {
            let removed = client.remove_app(&name).await?;
            if opts.json {
                return print_json(&serde_json::json!({ "app": name, "removed": removed }));
            }
            anyhow::ensure!(
                removed,
                "there is no app {name:?} (see `blazectl app list`)"
            );
            println!("removed app {name}; its connections are closed");
        }
        AppCommand::Grant { name, spec, fields } => {
            let app = client.grant_app(&name, grant(&spec, fields)?).await?;
            if opts.json {
                return print_json(&serde_json::to_value(&app)?);
            }
            print_app(&app);
        }
        AppCommand::Revoke { name, scope } => {
            let (db, collection) = match scope.split_once('/') {
                Some((db, c)) => (db, Some(c)),
                None => (scope.as_str(), None),
            };
            let app = client.revoke_app(&name, db, collection).await?;
            if opts.json {
                return print_json(&serde_json::to_value(&app)?);
            }
            print_app(&app);
            println!("its connections are closed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<AppInfo> {
        vec![
            AppInfo {
                name: "dashboard".into(),
                uid: None,
                grants: vec![
                    AppGrant::parse(
                        "bugs/bugs:read",
                        Some(
                            ["id", "title", "status", "priority"]
                                .map(str::to_owned)
                                .to_vec(),
                        ),
                    )
                    .expect("grant"),
                ],
                databases: vec![],
                connections: 2,
            },
            AppInfo {
                name: "bugtracker".into(),
                uid: Some(1001),
                grants: vec![AppGrant::parse("notes:read-write", None).expect("grant")],
                databases: vec!["bugs".into()],
                connections: 0,
            },
        ]
    }

    #[test]
    fn app_list_json_snapshot() {
        insta::assert_json_snapshot!(serde_json::to_value(sample()).expect("json"));
    }

    #[test]
    fn app_list_table_snapshot() {
        insta::assert_snapshot!(apps_table(&sample()));
    }

    #[test]
    fn app_show_text_snapshot() {
        insta::assert_snapshot!(app_text(&sample()[1]));
    }

    #[test]
    fn a_grant_spec_that_is_wrong_says_how_to_write_it() {
        let e = grant("bugs:write", None).expect_err("refused");
        assert!(e.to_string().contains("read-write"), "{e}");
    }
}
