//! Apps on one device: what a granted app sees and may do, what it owns,
//! its tokens, revocation, and apps of another user.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use blazedb::{AppGrant, Client, ErrorCode, Fields, FilterOp, Login, Value};
use blazedb_tests::{TestAgent, sibling_bin};

fn agent_bin() -> std::path::PathBuf {
    sibling_bin("blazed-test-agent")
}

fn bug(title: &str, status: &str, priority: i64, secret: &str) -> Fields {
    Fields::from([
        ("title".to_owned(), Value::from(title)),
        ("status".to_owned(), Value::from(status)),
        ("priority".to_owned(), Value::Int(priority)),
        ("secret".to_owned(), Value::from(secret)),
    ])
}

fn names(fields: &Fields) -> BTreeSet<&str> {
    fields.keys().map(String::as_str).collect()
}

fn denied<T: std::fmt::Debug>(r: Result<T, blazedb::Error>) -> bool {
    match r {
        Err(e) => e.code() == Some(ErrorCode::PermissionDenied),
        Ok(v) => panic!("allowed: {v:?}"),
    }
}

/// The seeds' example: BugTracker's `bugs`, and a Dashboard that may read
/// four fields of the `bugs` collection and nothing else.
async fn bug_tracker(agent: &TestAgent) -> anyhow::Result<(Client, Client)> {
    let owner = agent.client().await?;
    let db = owner.db("bugs");
    db.create().await?;
    db.collection("bugs")
        .put_fields("b1", bug("Login fails", "open", 5, "customer-ssn-1"))
        .await?;
    db.collection("bugs")
        .put_fields("b2", bug("Slow search", "closed", 2, "customer-ssn-2"))
        .await?;
    db.collection("internal")
        .put_fields("i1", bug("Pay raise", "open", 1, "salary"))
        .await?;
    owner.db("private").create().await?;
    let fields = ["id", "title", "status", "priority"]
        .map(str::to_owned)
        .to_vec();
    let added = owner
        .add_app(
            "dashboard",
            vec![AppGrant::parse("bugs/bugs:read", Some(fields)).map_err(anyhow::Error::msg)?],
            None,
        )
        .await?;
    let dash = Client::connect_with(agent.socket(), Login::app("dashboard", &added.token)).await?;
    assert_eq!(dash.app(), Some("dashboard"));
    Ok((owner, dash))
}

#[tokio::test]
async fn a_dashboard_sees_exactly_its_grant_and_cannot_write() -> anyhow::Result<()> {
    let agent = TestAgent::start(agent_bin()).await?;
    let (owner, dash) = bug_tracker(&agent).await?;
    let granted = BTreeSet::from(["title", "status", "priority"]);
    let bugs = dash.db("bugs").collection("bugs");

    // get and query: the granted fields, no more.
    let b1 = bugs.get_record("b1").await?.expect("b1");
    assert_eq!(names(&b1.fields), granted);
    let many = bugs.get_many(&["b1", "b2"]).await?;
    for rec in many.iter().flatten() {
        assert_eq!(names(&rec.fields), granted, "get_many cuts as get does");
    }
    assert_eq!(many[0].as_ref(), Some(&b1));
    // As many ids as are shared among threads are cut the same.
    let ids: Vec<&str> = ["b1", "b2"].iter().copied().cycle().take(200).collect();
    let many = bugs.get_many(&ids).await?;
    assert_eq!(many.len(), 200);
    for rec in &many {
        let rec = rec.as_ref().expect("b1 and b2 are there");
        assert_eq!(
            names(&rec.fields),
            granted,
            "a long get_many cuts as get does"
        );
    }
    assert_eq!(many[198].as_ref(), Some(&b1));
    let open = bugs
        .query()
        .filter("status", FilterOp::Eq, "open")
        .fetch_all()
        .await?;
    assert_eq!(open.len(), 1);
    assert_eq!(names(&open[0].fields), granted);
    // A filter or an order on a hidden field would tell its values.
    assert!(denied(
        bugs.query()
            .filter("secret", FilterOp::Eq, "customer-ssn-1")
            .fetch()
            .await
    ));
    assert!(denied(bugs.query().order_by("secret").fetch().await));
    // Other collections and databases are not there for it.
    assert!(denied(
        dash.db("bugs")
            .collection("internal")
            .get_record("i1")
            .await
    ));
    assert!(denied(
        dash.db("bugs")
            .collection("internal")
            .get_many(&["i1"])
            .await
    ));
    assert!(denied(dash.db("private").info().await));
    assert!(denied(dash.db("nonexistent").info().await));
    let listed: Vec<String> = dash
        .databases()
        .await?
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(listed, ["bugs"]);

    // Read-only: no put, patch, delete or batch, and nothing changed.
    assert!(denied(
        bugs.put_fields("b3", bug("x", "open", 1, "y")).await
    ));
    let set = Fields::from([("status".to_owned(), Value::from("closed"))]);
    assert!(denied(bugs.patch("b1", set.clone(), &[]).await));
    assert!(denied(bugs.delete("b1").await));
    assert!(denied(
        dash.db("bugs")
            .batch()
            .patch("bugs", "b1", set, &[])
            .commit()
            .await
    ));
    // Nor any administration.
    assert!(denied(dash.apps().await));
    assert!(denied(dash.db("bugs").drop_db().await));
    assert!(denied(
        dash.db("bugs")
            .collection("bugs")
            .create_index("status")
            .await
    ));
    assert!(denied(dash.mesh_status().await));

    // The owner still sees everything, unchanged.
    let whole = owner
        .db("bugs")
        .collection("bugs")
        .get_record("b1")
        .await?
        .expect("b1");
    assert_eq!(
        whole.fields.get("secret"),
        Some(&Value::from("customer-ssn-1"))
    );
    assert_eq!(whole.fields.get("status"), Some(&Value::from("open")));
    assert_eq!(
        names(
            &owner
                .db("bugs")
                .collection("internal")
                .get_record("i1")
                .await?
                .expect("i1")
                .fields
        )
        .len(),
        4
    );

    // Subscriptions: granted fields of the granted collection only; a
    // patch of hidden fields only is not an event at all.
    let mut sub = dash.db("bugs").subscribe().await?;
    let obugs = owner.db("bugs").collection("bugs");
    owner
        .db("bugs")
        .collection("internal")
        .put_fields("i2", bug("Layoffs", "open", 9, "secret plan"))
        .await?;
    obugs
        .patch(
            "b1",
            Fields::from([("secret".to_owned(), Value::from("ssn-3"))]),
            &[],
        )
        .await?;
    obugs
        .put_fields("b3", bug("Crash on save", "open", 4, "customer-ssn-4"))
        .await?;
    obugs
        .patch(
            "b2",
            Fields::from([("status".to_owned(), Value::from("open"))]),
            &["secret"],
        )
        .await?;
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await?
        .expect("event");
    assert_eq!(
        (first.collection.as_str(), first.id.as_str()),
        ("bugs", "b3")
    );
    assert_eq!(names(&first.fields), granted);
    let second = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await?
        .expect("event");
    assert_eq!(second.id, "b2");
    assert_eq!(names(&second.fields), BTreeSet::from(["status"]));
    assert!(
        second.unset.is_empty(),
        "a hidden field's removal showed: {second:?}"
    );

    // Revoked: the live subscription and the connection end within a
    // second; the owner's go on.
    let mut owner_sub = owner.db("bugs").subscribe().await?;
    owner.revoke_app("dashboard", "bugs", None).await?;
    let ended = tokio::time::timeout(Duration::from_secs(1), sub.next()).await?;
    assert!(ended.is_none(), "the subscription went on: {ended:?}");
    assert!(bugs.get_record("b1").await.is_err());
    obugs.put_fields("b4", bug("After", "open", 1, "z")).await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), owner_sub.next()).await?;
    assert_eq!(seen.map(|c| c.id), Some("b4".to_owned()));
    let info = owner.app_info("dashboard").await?;
    assert!(info.grants.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_app_owns_the_databases_it_makes() -> anyhow::Result<()> {
    let agent = TestAgent::start(agent_bin()).await?;
    let owner = agent.client().await?;
    owner.db("bugs").create().await?;
    let notes_app = owner.add_app("notes-app", vec![], None).await?;
    let other_app = owner
        .add_app(
            "reader",
            vec![AppGrant::parse("notes", None).map_err(anyhow::Error::msg)?],
            None,
        )
        .await?;
    let app =
        Client::connect_with(agent.socket(), Login::app("notes-app", &notes_app.token)).await?;
    let reader =
        Client::connect_with(agent.socket(), Login::app("reader", &other_app.token)).await?;

    // Made by the app: full access, and its own to drop.
    app.db("notes").create().await?;
    let notes = app.db("notes").collection("n");
    notes
        .put_fields("1", bug("mine", "open", 1, "all mine"))
        .await?;
    assert_eq!(
        names(&notes.get_record("1").await?.expect("note").fields).len(),
        4
    );
    notes.create_index("priority").await?;
    assert_eq!(owner.app_info("notes-app").await?.databases, ["notes"]);
    // Another app reads it only as granted; the owner sees it all.
    assert!(
        reader
            .db("notes")
            .collection("n")
            .get_record("1")
            .await?
            .is_some()
    );
    assert!(denied(reader.db("notes").collection("n").delete("1").await));
    assert!(denied(reader.db("notes").drop_db().await));
    assert!(
        owner
            .db("notes")
            .collection("n")
            .get_record("1")
            .await?
            .is_some()
    );
    // It cannot take or drop what is not its own, even by creating it.
    assert!(denied(app.db("bugs").create_if_missing().await));
    assert!(denied(app.db("bugs").drop_db().await));
    // It keeps its database across a restart of the agent.
    let mut agent = agent;
    agent.stop().await?;
    agent.restart().await?;
    let app =
        Client::connect_with(agent.socket(), Login::app("notes-app", &notes_app.token)).await?;
    assert!(
        app.db("notes")
            .collection("n")
            .get_record("1")
            .await?
            .is_some()
    );
    assert!(app.db("notes").drop_db().await?);
    assert!(
        agent
            .client()
            .await?
            .app_info("notes-app")
            .await?
            .databases
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn wrong_and_old_tokens_are_refused() -> anyhow::Result<()> {
    let agent = TestAgent::start(agent_bin()).await?;
    let owner = agent.client().await?;
    let first = owner.add_app("dash", vec![], None).await?;
    let other = owner.add_app("other", vec![], None).await?;
    let login =
        |app: &str, token: &str| Client::connect_with(agent.socket(), Login::app(app, token));
    assert!(login("dash", &first.token).await.is_ok());
    for (app, token) in [
        ("dash", other.token.as_str()),
        ("nobody", first.token.as_str()),
        ("dash", "blz_guess"),
    ] {
        let e = login(app, token).await.expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::PermissionDenied), "{app}: {e}");
        assert!(e.to_string().contains("do not match"), "{e}");
    }
    // A token-less app name is refused too, saying what is missing.
    let e = Client::connect_with(
        agent.socket(),
        Login {
            client: "t".into(),
            app: Some("dash".into()),
            token: None,
        },
    )
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("BLAZEDB_APP_TOKEN"), "{e}");
    // A removed app's token stays dead when the name comes back.
    assert!(owner.remove_app("dash").await?);
    let again = owner.add_app("dash", vec![], None).await?;
    assert!(login("dash", &first.token).await.is_err());
    assert!(login("dash", &again.token).await.is_ok());
    // Only the hash is kept on disk.
    let file = std::fs::read_to_string(agent.data_dir().join("apps.json"))?;
    assert!(!file.contains(&again.token["blz_".len()..]));
    Ok(())
}

#[tokio::test]
async fn with_tokens_required_even_the_owner_shows_one() -> anyhow::Result<()> {
    let agent = TestAgent::start_with(agent_bin(), &["--require-app-tokens"]).await?;
    let e = agent.client().await.expect_err("token-less owner refused");
    assert!(e.to_string().contains("require_app_tokens"), "{e}");
    let token = std::fs::read_to_string(agent.data_dir().join("owner.token"))?;
    let mode = std::fs::metadata(agent.data_dir().join("owner.token"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the owner token is readable by others");
    let owner = Client::connect_with(
        agent.socket(),
        Login {
            client: "t".into(),
            app: None,
            token: Some(token.trim().to_owned()),
        },
    )
    .await?;
    assert!(owner.app().is_none());
    owner.db("x").create().await?;
    // blazectl finds the token when told where it is.
    let out = std::process::Command::new(sibling_bin("blazectl-test"))
        .args(["--socket"])
        .arg(agent.socket())
        .arg("--owner-token-file")
        .arg(agent.data_dir().join("owner.token"))
        .args(["db", "list"])
        .env_remove("BLAZEDB_APP")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains('x'));
    Ok(())
}

/// Runs blazectl as the user `nobody` against `agent`, as `app`.
fn blazectl_as_nobody(
    agent: &TestAgent,
    app: Option<(&str, &str)>,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut cmd = std::process::Command::new(sibling_bin("blazectl-test"));
    cmd.arg("--socket")
        .arg(agent.socket())
        .args(args)
        .uid(65534)
        .gid(65534)
        .env_remove("BLAZEDB_APP")
        .env_remove("BLAZEDB_APP_TOKEN")
        .env("HOME", "/nonexistent");
    if let Some((name, token)) = app {
        cmd.env("BLAZEDB_APP", name).env("BLAZEDB_APP_TOKEN", token);
    }
    Ok(cmd.output()?)
}

#[tokio::test]
async fn another_users_process_is_served_only_as_its_app() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::ensure!(
            std::env::var(blazedb_tests::netns::REQUIRE_ENV).as_deref() != Ok("require"),
            "running a client as another user needs root"
        );
        eprintln!("\n*** SKIPPED: running a client as another user needs root ***\n");
        return Ok(());
    }
    let agent = TestAgent::start_with(agent_bin(), &["--socket-group", "nogroup"]).await?;
    // The test's temporary directory is private; let `nobody` through it
    // to the socket's directory, which the agent gave to the group.
    let top = agent
        .socket()
        .parent()
        .and_then(|p| p.parent())
        .expect("dir")
        .to_path_buf();
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o711))?;
    let run_dir = std::fs::metadata(agent.socket().parent().expect("dir"))?;
    assert_eq!(run_dir.permissions().mode() & 0o777, 0o750);
    let owner = agent.client().await?;
    owner.db("bugs").create().await?;
    owner
        .db("bugs")
        .collection("bugs")
        .put_fields("b1", bug("Login fails", "open", 5, "customer-ssn-1"))
        .await?;
    let theirs = owner
        .add_app(
            "their-dash",
            vec![
                AppGrant::parse("bugs/bugs:read", Some(vec!["title".into()]))
                    .map_err(anyhow::Error::msg)?,
            ],
            Some(65534),
        )
        .await?;
    let mine = owner.add_app("my-dash", vec![], None).await?;

    let out = blazectl_as_nobody(&agent, None, &["db", "list"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("uid 65534"),
        "served without a token: {err}"
    );
    let out = blazectl_as_nobody(&agent, Some(("my-dash", &mine.token)), &["db", "list"])?;
    assert!(
        !out.status.success(),
        "an app of the agent's user served another user"
    );
    let out = blazectl_as_nobody(
        &agent,
        Some(("their-dash", &theirs.token)),
        &["--json", "get", "bugs", "bugs", "b1"],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Login fails") && !text.contains("customer-ssn"),
        "{text}"
    );
    let out = blazectl_as_nobody(
        &agent,
        Some(("their-dash", &theirs.token)),
        &["put", "bugs", "bugs", "b9", "title=x"],
    )?;
    assert!(!out.status.success(), "a read-only app wrote");
    Ok(())
}
