//! Who sees what, with real agents: team `ios` and team `web` devices and
//! a read-only `qa` device share one hub; an admin's rules give each team
//! only its own bugs, never `largeAttachment`, and `qa` nothing to write.

use std::time::Duration;

use blazedb::api::{ChangeKind, RuleSpec};
use blazedb::rules::{AccessLevel, DeviceAttr, RuleFilter};
use blazedb::{Client, Value};
use blazedb_proto::api::{FilterOp, MeshInviteParams};
use blazedb_tests::{TestAgent, files_holding, records, wait_within};

const AGENT: &str = env!("CARGO_BIN_EXE_blazed-test-agent");
const PATIENCE: Duration = Duration::from_secs(30);
const DB: &str = "bugs";

/// The team rule: team members see their team's bugs, without attachments.
fn team_rule() -> RuleSpec {
    RuleSpec {
        devices: vec!["team:ios".into(), "team:web".into()],
        collections: Some(vec!["bugs".into()]),
        filter: vec![RuleFilter {
            field: "team".into(),
            op: FilterOp::Eq,
            value: Value::Null,
            device: Some(DeviceAttr::Team),
        }],
        exclude: vec!["largeAttachment".into()],
        access: AccessLevel::ReadWrite,
    }
}

fn read_only(selector: &str) -> RuleSpec {
    RuleSpec {
        devices: vec![selector.into()],
        collections: None,
        filter: Vec::new(),
        exclude: Vec::new(),
        access: AccessLevel::Read,
    }
}

async fn ids(cl: &Client) -> Vec<String> {
    records(cl, DB, "bugs").await.into_keys().collect()
}

async fn device_with_team(hub: &Client, name: &str, team: &str) -> (TestAgent, Client) {
    let agent = TestAgent::start_with(AGENT, &["--name", name])
        .await
        .expect("agent starts");
    let cl = agent.client().await.expect("client");
    let code = hub
        .invite_with(MeshInviteParams {
            ttl_secs: Some(600),
            uses: Some(1),
            teams: vec![team.into()],
        })
        .await
        .expect("invite")
        .code;
    cl.join(&code).await.expect("join");
    (agent, cl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_team_sees_only_its_bugs_and_refused_writes_are_corrected() {
    let hub_agent = TestAgent::start_with(AGENT, &["--role", "hub", "--name", "hub"])
        .await
        .expect("hub");
    let hub = hub_agent.client().await.expect("hub client");
    hub.create_mesh().await.expect("mesh");
    hub.db(DB).create().await.expect("database");
    let rules = hub
        .db(DB)
        .set_rules(
            AccessLevel::ReadWrite,
            vec![team_rule(), read_only("team:qa")],
            Vec::new(),
        )
        .await
        .expect("an admin sets rules");
    assert_eq!(rules.this_device, "full", "the hub is no team member");
    let marker = format!("ATTACHMENT-{}", std::process::id());
    let bugs = hub.db(DB).collection("bugs");
    for (id, team) in [("b1", "ios"), ("b2", "web")] {
        bugs.put(
            id,
            &serde_json::json!({ "team": team, "title": id, "largeAttachment": marker }),
        )
        .await
        .expect("hub writes");
    }

    let (ios_agent, ios) = device_with_team(&hub, "phone", "ios").await;
    let (_web_agent, web) = device_with_team(&hub, "browser", "web").await;
    let (_qa_agent, qa) = device_with_team(&hub, "tester", "qa").await;

    // Each team sees its own bug, without the attachment; qa sees all.
    wait_within("ios to hold its team's bug", PATIENCE, || async {
        ids(&ios).await == ["b1"]
    })
    .await
    .expect("ios sees b1 only");
    wait_within("web to hold its team's bug", PATIENCE, || async {
        ids(&web).await == ["b2"]
    })
    .await
    .expect("web sees b2 only");
    wait_within("qa to hold every bug", PATIENCE, || async {
        ids(&qa).await == ["b1", "b2"]
    })
    .await
    .expect("qa sees all");
    let b1 = records(&ios, DB, "bugs").await.remove("b1").expect("b1");
    assert_eq!(b1.get("title"), Some(&Value::from("b1")));
    assert!(!b1.contains_key("largeAttachment"), "{b1:?}");
    let shown = ios.db(DB).rules().await.expect("rules on a device");
    assert!(
        shown
            .this_device
            .starts_with("partial: read-write; collections bugs; where team in"),
        "{}",
        shown.this_device
    );
    assert!(
        files_holding(&ios_agent.data_dir(), marker.as_bytes()).is_empty(),
        "the excluded field's value is in the ios device's files"
    );

    // A bug moved to team web leaves ios and reaches web.
    bugs.patch(
        "b1",
        [("team".to_owned(), Value::from("web"))]
            .into_iter()
            .collect(),
        &[],
    )
    .await
    .expect("hub moves b1");
    wait_within("b1 to leave ios and reach web", PATIENCE, || async {
        ids(&ios).await.is_empty() && ids(&web).await == ["b1", "b2"]
    })
    .await
    .expect("b1 moved");

    // ios writes into a web bug, and sets an attachment on a bug of its
    // own: both are refused at the hub and undone on ios, which is told.
    let mut changes = ios.db(DB).subscribe().await.expect("subscribe");
    let ios_bugs = ios.db(DB).collection("bugs");
    ios_bugs
        .put("b3", &serde_json::json!({ "team": "ios", "title": "mine" }))
        .await
        .expect("ios writes its own bug");
    ios_bugs
        .put(
            "b2",
            &serde_json::json!({ "team": "ios", "title": "taken" }),
        )
        .await
        .expect("written locally, judged by the hub");
    ios_bugs
        .patch(
            "b3",
            [("largeAttachment".to_owned(), Value::from("from-ios"))]
                .into_iter()
                .collect(),
            &[],
        )
        .await
        .expect("written locally");
    wait_within(
        "the hub to take b3 and refuse the rest",
        PATIENCE,
        || async {
            let on_hub = records(&hub, DB, "bugs").await;
            on_hub
                .get("b3")
                .is_some_and(|b| !b.contains_key("largeAttachment"))
                && on_hub.get("b2").and_then(|b| b.get("title")) == Some(&Value::from("b2"))
        },
    )
    .await
    .expect("hub state");
    wait_within("ios to be corrected", PATIENCE, || async {
        let mine = records(&ios, DB, "bugs").await;
        mine.keys().eq(["b3"]) && !mine["b3"].contains_key("largeAttachment")
    })
    .await
    .expect("ios corrected");
    let mut told = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while told.len() < 2 {
        let next = tokio::time::timeout_at(deadline, changes.next()).await;
        let Ok(Some(c)) = next else {
            panic!("ios was told of {told:?} only");
        };
        if c.kind == ChangeKind::Rejected {
            told.push((c.id, c.rejected.unwrap_or_default()));
        }
    }
    told.sort();
    assert_eq!(told[0].0, "b2");
    assert!(
        told[0].1.contains("outside what this device may see"),
        "{told:?}"
    );
    assert_eq!(told[1].0, "b3");
    assert!(told[1].1.contains("excluded"), "{told:?}");

    // A read-only device's writes are refused and undone.
    qa.db(DB)
        .collection("bugs")
        .put("q1", &serde_json::json!({ "team": "ios", "title": "qa" }))
        .await
        .expect("written locally");
    wait_within("qa's write to be undone", PATIENCE, || async {
        !ids(&qa).await.contains(&"q1".to_owned())
    })
    .await
    .expect("qa corrected");
    assert!(!ids(&hub).await.contains(&"q1".to_owned()));

    // A rule change applies live: ios now sees every team's bugs.
    let mut all_teams = team_rule();
    all_teams.devices = vec!["team:ios".into()];
    all_teams.filter.clear();
    hub.db(DB)
        .set_rules(
            AccessLevel::ReadWrite,
            vec![all_teams, team_rule(), read_only("team:qa")],
            Vec::new(),
        )
        .await
        .expect("new rules");
    wait_within("ios to see every bug", PATIENCE, || async {
        ids(&ios).await == ["b1", "b2", "b3"]
    })
    .await
    .expect("ios sees all");
    assert!(files_holding(&ios_agent.data_dir(), marker.as_bytes()).is_empty());

    // A device that is no admin cannot set rules.
    let refused = ios
        .db(DB)
        .set_rules(AccessLevel::ReadWrite, Vec::new(), Vec::new())
        .await
        .expect_err("not an admin");
    assert!(refused.to_string().contains("only an admin"), "{refused}");
}
