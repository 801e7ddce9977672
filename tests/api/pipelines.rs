//! Pipeline definitions as an operator manages them: `chronolog pipelines
//! apply|list|history|delete` on a real PostgreSQL, and the store the
//! consumers poll.

use std::process::Command;

use chronolog::pipelines::store::{self, Action, Applied};
use chronolog::pipelines::{Definition, definition};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;

use crate::helpers::create_database;

const BIN: &str = env!("CARGO_BIN_EXE_chronolog");

/// Exit status, stdout and stderr of `chronolog ARGS` against `database_url`.
fn chronolog(database_url: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("LOG_LEVEL", "error")
        .output()
        .expect("the binary runs");
    (
        output.status.code().expect("exited, not killed"),
        String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    )
}

/// A file holding `text`, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "chronolog-pipelines-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `chronolog pipelines apply` on a file holding `text`.
fn apply(database_url: &str, text: &str) -> (i32, String, String) {
    let file = TempFile::new(text);
    chronolog(database_url, &["pipelines", "apply", file.path()])
}

const RECENT_V1: &str = r#"
[[pipeline]]
name = "recent"
topics = ["timestamp.command.v1"]
start = "earliest"
filters = [
  'if starts_with(string!(.event_timestamp), "19") { abort }',
  '.year = slice!(string!(.event_timestamp), 0, 4)',
]
[pipeline.sink]
type = "postgres"
table = "recent_timestamps"
key = ".command_id"

[[pipeline]]
name = "copy"
topics = ["timestamp.command.v1", "accounts.customer.change"]
[pipeline.sink]
type = "file"
path = "/var/lib/chronolog/copy.jsonl"
"#;

/// `RECENT_V1` with a third filter in `recent`.
fn recent_v2() -> String {
    RECENT_V1.replace(
        r#"'.year = slice!(string!(.event_timestamp), 0, 4)',"#,
        r#"'.year = slice!(string!(.event_timestamp), 0, 4)', '.century = slice!(.year, 0, 2)',"#,
    )
}

const LIST_V2: &str = "copy v1 topics=accounts.customer.change,timestamp.command.v1 sink=file:/var/lib/chronolog/copy.jsonl filters=0 start=earliest\n\
     recent v2 topics=timestamp.command.v1 sink=postgres:recent_timestamps filters=3 start=earliest\n";

const DROP_1900S: &str = r#"if starts_with(string!(.event_timestamp), "19") { abort }"#;
const ADD_YEAR: &str = ".year = slice!(string!(.event_timestamp), 0, 4)";
const ADD_CENTURY: &str = ".century = slice!(.year, 0, 2)";

/// `history NAME`'s lines as (version, action, definition).
fn history(database_url: &str, name: &str) -> Vec<(String, String, serde_json::Value)> {
    let (code, stdout, stderr) = chronolog(database_url, &["pipelines", "history", name]);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let version = parts.next().unwrap().to_owned();
            let applied_at = parts.next().unwrap();
            chrono::DateTime::parse_from_rfc3339(applied_at).expect("an RFC 3339 time");
            let action = parts.next().unwrap().to_owned();
            let definition = serde_json::from_str(parts.next().unwrap()).unwrap();
            (version, action, definition)
        })
        .collect()
}

/// `recent`'s JSON form with `filters`.
fn recent_json(filters: &[&str]) -> serde_json::Value {
    json!({
        "name": "recent",
        "topics": ["timestamp.command.v1"],
        "start": "earliest",
        "filters": filters,
        "sink": {"type": "postgres", "table": "recent_timestamps", "key": ".command_id"},
    })
}

fn ok(stdout: &str) -> (i32, String, String) {
    (0, stdout.to_owned(), String::new())
}

#[tokio::test]
async fn apply_stores_versions_and_reports_created_unchanged_updated() {
    let db = create_database().await;

    assert_eq!(
        apply(&db, RECENT_V1),
        ok("recent: created v1\ncopy: created v1\n")
    );
    assert_eq!(
        apply(&db, RECENT_V1),
        ok("recent: unchanged v1\ncopy: unchanged v1\n")
    );
    assert_eq!(
        apply(&db, &recent_v2()),
        ok("recent: updated v2\ncopy: unchanged v1\n")
    );
    // Topics in another order: the same definition.
    let reordered = recent_v2().replace(
        r#"["timestamp.command.v1", "accounts.customer.change"]"#,
        r#"["accounts.customer.change", "timestamp.command.v1"]"#,
    );
    assert_eq!(
        apply(&db, &reordered),
        ok("recent: unchanged v2\ncopy: unchanged v1\n")
    );

    assert_eq!(chronolog(&db, &["pipelines", "list"]), ok(LIST_V2));
    assert_eq!(
        history(&db, "recent"),
        vec![
            (
                "v1".to_owned(),
                "created".to_owned(),
                recent_json(&[DROP_1900S, ADD_YEAR])
            ),
            (
                "v2".to_owned(),
                "updated".to_owned(),
                recent_json(&[DROP_1900S, ADD_YEAR, ADD_CENTURY])
            ),
        ]
    );
    assert_eq!(history(&db, "copy").len(), 1);
}

#[tokio::test]
async fn an_invalid_file_exits_2_with_the_error_located_and_stores_nothing() {
    let db = create_database().await;
    assert_eq!(apply(&db, RECENT_V1).0, 0);
    let list_before = chronolog(&db, &["pipelines", "list"]);
    assert_eq!(list_before.0, 0);

    // A VRL compile error in the second filter, on its second line: the new
    // pipeline is not created, nor are the others in the file changed.
    let bad_vrl = format!(
        "{}\n[[pipeline]]\nname = \"fresh\"\ntopics = [\"t\"]\nfilters = ['.a = 1', \"\"\"\n.b = 2\n.c = upcase(.d)\"\"\"]\n[pipeline.sink]\ntype = \"file\"\npath = \"/tmp/fresh.jsonl\"\n",
        recent_v2()
    );
    let (code, stdout, stderr) = apply(&db, &bad_vrl);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert_eq!(
        stderr.lines().next().unwrap(),
        "Error: pipeline fresh: filters[1]:2:6: unhandled fallible assignment"
    );
    // VRL's report follows, pointing at the same place.
    assert_eq!(
        stderr.lines().nth(2).map(str::trim),
        Some("┌─ :2:6"),
        "{stderr}"
    );

    let forbidden = RECENT_V1.replace(
        r#"'.year = slice!(string!(.event_timestamp), 0, 4)',"#,
        r#"'.year = slice!(string!(.event_timestamp), 0, 4)', '.seen = now()',"#,
    );
    let (code, stdout, stderr) = apply(&db, &forbidden);
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert_eq!(
        stderr.lines().next().unwrap(),
        "Error: pipeline recent: filters[2]:1:9: function now is not allowed in filters: it reads the clock, randomness, the environment or the network, or writes logs, so a replay would differ"
    );

    let cases = [
        (
            "[[pipeline]\n".to_owned(),
            "Error: invalid pipeline file: line 1, column 12: unclosed array table, expected `]`",
        ),
        (
            RECENT_V1.replace("name = \"copy\"", "name = \"Copy\""),
            "Error: pipeline name \"Copy\": use 1 to 63 characters of a-z, 0-9 and -",
        ),
        (
            RECENT_V1.replace("type = \"file\"", "type = \"s3\""),
            "Error: invalid pipeline file: line 19, column 8: unknown variant `s3`, expected one of `postgres`, `kafka`, `file`",
        ),
        (
            recent_v2().replace(
                r#"["timestamp.command.v1", "accounts.customer.change"]"#,
                r#"["timestamp.command.v1"]"#,
            ),
            "Error: pipeline copy: its topics cannot change (accounts.customer.change,timestamp.command.v1 to timestamp.command.v1): apply it under a new name, or replay it into a new sink",
        ),
        (
            RECENT_V1.replace("recent_timestamps", "recent_rows"),
            "Error: pipeline recent: its sink cannot change (postgres table recent_timestamps key .command_id to postgres table recent_rows key .command_id): apply it under a new name, or replay it into a new sink",
        ),
    ];
    for (text, expected) in cases {
        let (code, stdout, stderr) = apply(&db, &text);
        assert_eq!((code, stdout.as_str()), (2, ""), "{expected}");
        assert_eq!(stderr.lines().next().unwrap(), expected);
    }

    assert_eq!(chronolog(&db, &["pipelines", "list"]), list_before);
    assert_eq!(history(&db, "recent").len(), 1);
    assert_eq!(history(&db, "copy").len(), 1);
    assert_eq!(
        chronolog(&db, &["pipelines", "history", "fresh"]),
        (
            1,
            String::new(),
            "Error: no pipeline named fresh\n".to_owned()
        )
    );
}

#[tokio::test]
async fn delete_removes_from_the_list_and_keeps_the_history() {
    let db = create_database().await;
    assert_eq!(apply(&db, RECENT_V1).0, 0);
    assert_eq!(apply(&db, &recent_v2()).0, 0);

    assert_eq!(
        chronolog(&db, &["pipelines", "delete", "recent"]),
        ok("recent: deleted v3\n")
    );
    let copy_only = format!("{}\n", LIST_V2.lines().next().unwrap());
    assert_eq!(chronolog(&db, &["pipelines", "list"]), ok(&copy_only));
    let history_after = history(&db, "recent");
    let versions: Vec<(&str, &str)> = history_after
        .iter()
        .map(|(version, action, _)| (version.as_str(), action.as_str()))
        .collect();
    assert_eq!(
        versions,
        [("v1", "created"), ("v2", "updated"), ("v3", "deleted")]
    );
    assert_eq!(
        history_after[2].2,
        recent_json(&[DROP_1900S, ADD_YEAR, ADD_CENTURY])
    );

    for name in ["recent", "nope"] {
        assert_eq!(
            chronolog(&db, &["pipelines", "delete", name]),
            (
                1,
                String::new(),
                format!("Error: no pipeline named {name}\n")
            )
        );
    }

    // The name can be used again; its versions count on.
    assert_eq!(
        apply(&db, RECENT_V1),
        ok("recent: created v4\ncopy: unchanged v1\n")
    );
    assert_eq!(history(&db, "recent")[3].1, "created");
    // Created again at v4, it is a new pipeline with a consumer group of its
    // own; one never deleted keeps the version it was created at through
    // its updates.
    let mut conn = connect(&db).await;
    for (name, version, created_version) in [("recent", 4, 4), ("copy", 1, 1)] {
        let stored = store::get(&mut conn, name).await.unwrap().unwrap();
        assert_eq!(
            (stored.version, stored.created_version),
            (version, created_version),
            "{name}"
        );
    }
    assert_eq!(
        chronolog::engine::pipeline_manager::group_id("recent", 4),
        "chronolog-pipeline-recent.4"
    );
    apply(&db, &recent_v2());
    let stored = store::get(&mut conn, "recent").await.unwrap().unwrap();
    assert_eq!((stored.version, stored.created_version), (5, 4));
}

async fn connect(db: &str) -> AsyncPgConnection {
    chronolog::db::run_migrations(&db.parse().unwrap())
        .await
        .unwrap();
    AsyncPgConnection::establish(db).await.unwrap()
}

#[tokio::test]
async fn the_change_counter_moves_with_every_stored_change_only() {
    let db = create_database().await;
    let mut conn = connect(&db).await;
    assert_eq!(store::last_change(&mut conn).await.unwrap(), 0);
    assert_eq!(
        store::snapshot(&mut conn).await.unwrap(),
        store::Snapshot {
            change: 0,
            pipelines: vec![]
        }
    );

    let v1 = definition::parse_file(RECENT_V1).unwrap();
    store::apply(&mut conn, &v1).await.unwrap();
    assert_eq!(store::last_change(&mut conn).await.unwrap(), 2);
    store::apply(&mut conn, &v1).await.unwrap();
    assert_eq!(store::last_change(&mut conn).await.unwrap(), 2);

    let v2 = definition::parse_file(&recent_v2()).unwrap();
    store::apply(&mut conn, &v2).await.unwrap();
    let snapshot = store::snapshot(&mut conn).await.unwrap();
    assert_eq!(snapshot.change, 3);
    let current: Vec<(i32, &Definition)> = snapshot
        .pipelines
        .iter()
        .map(|s| (s.version, &s.definition))
        .collect();
    assert_eq!(current, vec![(1, &v2[1]), (2, &v2[0])]);
    assert_eq!(
        store::get(&mut conn, "recent")
            .await
            .unwrap()
            .unwrap()
            .definition,
        v2[0]
    );

    store::delete(&mut conn, "copy").await.unwrap();
    let snapshot = store::snapshot(&mut conn).await.unwrap();
    assert_eq!(snapshot.change, 4);
    assert_eq!(
        snapshot
            .pipelines
            .iter()
            .map(|s| s.definition.name.as_str())
            .collect::<Vec<_>>(),
        ["recent"]
    );
    assert_eq!(store::get(&mut conn, "copy").await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_applies_are_serialised_into_gapless_versions() {
    let db = create_database().await;
    let mut conn = connect(&db).await;
    let base = definition::parse_file(RECENT_V1).unwrap();
    store::apply(&mut conn, &base[..1]).await.unwrap();

    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            let mut definition = base[0].clone();
            definition.filters.push(format!(".n = {i}"));
            tokio::spawn(async move {
                let mut conn = AsyncPgConnection::establish(&db).await.unwrap();
                store::apply(&mut conn, &[definition]).await.unwrap()
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        let applied: Vec<Applied> = task.await.unwrap();
        assert_eq!(applied[0].action, Action::Updated);
        versions.push(applied[0].version);
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=9).collect::<Vec<i32>>());
    assert_eq!(store::last_change(&mut conn).await.unwrap(), 9);
    let history = store::history(&mut conn, "recent").await.unwrap();
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<i32>>()
    );
}
