//! Pipelines running in the consumer role: filters that drop and add
//! fields, a PostgreSQL table, a topic and a file as sinks, a change of
//! filters under load, dead letters for failing filters, deletion.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chronolog::pipelines::Definition;
use chronolog::pipelines::store;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::accounts::header;
use crate::helpers::{TestApp, eventually, post_many, produce_raw, read_topic, unique};

/// Stores `definition` as the operator's `pipelines apply` does; answers
/// the version stored.
pub async fn apply(app: &TestApp, definition: Value) -> i32 {
    let definition = Definition::from_json(definition).expect("a valid definition");
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    let applied = store::apply(&mut conn, &[definition]).await.unwrap();
    applied[0].version
}

async fn delete(app: &TestApp, name: &str) {
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    store::delete(&mut conn, name).await.unwrap();
}

/// A row of a pipeline's table.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Text)]
    key: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    doc: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    source_topic: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    source_partition: i32,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    source_offset: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pipeline_version: i32,
}

async fn rows(app: &TestApp, table: &str) -> Vec<Row> {
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    diesel::sql_query(format!(
        "SELECT key, doc::text AS doc, source_topic, source_partition, source_offset, \
         pipeline_version FROM \"{table}\" ORDER BY key"
    ))
    .load(&mut conn)
    .await
    .unwrap_or_default()
}

/// A table name no other test uses.
fn table() -> String {
    unique("pipe").replace('-', "_")
}

/// A pipeline name no other test uses.
fn name() -> String {
    unique("pipe")
}

/// A pipeline `name` on `topic` into `table`, with `filters` and, when
/// given, the table's key path.
fn into_table(topic: &str, name: &str, table: &str, key: Option<&str>, filters: &[&str]) -> Value {
    let mut sink = json!({"type": "postgres", "table": table});
    if let Some(key) = key {
        sink["key"] = json!(key);
    }
    json!({"name": name, "topics": [topic], "filters": filters, "sink": sink})
}

/// Pipeline `name`'s records in `app`, by outcome: in, out, dropped, failed.
fn record_counts(app: &TestApp, name: &str) -> [u64; 4] {
    let metrics = app.metrics();
    ["in", "out", "dropped", "failed"].map(|outcome| {
        metrics
            .pipeline_records
            .with_label_values(&[name, outcome])
            .get()
    })
}

/// A topic beside the app's command topic, created: `<topic>.<suffix>`.
async fn second_topic(app: &TestApp, suffix: &str) -> String {
    let topic = format!("{}.{suffix}", app.settings.kafka_topic);
    chronolog::kafka::admin::ensure_named_topics(&app.settings, std::slice::from_ref(&topic))
        .await
        .unwrap();
    topic
}

#[actix_rt::test]
async fn a_filter_that_drops_and_one_that_adds_a_field_are_applied_row_by_row() {
    let app = TestApp::spawn().await;
    let (pipeline, table) = (name(), table());
    let version = apply(
        &app,
        json!({
            "name": pipeline,
            "topics": [app.settings.kafka_topic],
            "filters": [
                "if starts_with(string!(.event_timestamp), \"19\") { abort }",
                ".year = slice!(string!(.event_timestamp), 0, 4)",
            ],
            "sink": {"type": "postgres", "table": table, "key": ".command_id"},
        }),
    )
    .await;
    assert_eq!(version, 1);

    let kept_at = ["2009-09-28T19:03:12Z", "2024-02-29T00:00:00Z"];
    let dropped_at = ["1999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"];
    let mut kept = BTreeMap::new();
    for at in kept_at {
        kept.insert(app.accept(Some(at)).await.to_string(), at);
    }
    for at in dropped_at {
        app.accept(Some(at)).await;
    }
    // A record after the dropped ones, so that their absence is final.
    let last = app.accept(Some("2030-01-01T00:00:00Z")).await.to_string();
    kept.insert(last.clone(), "2030-01-01T00:00:00Z");

    let written = eventually("the kept records in the pipeline's table", || async {
        let written = rows(&app, &table).await;
        (written.len() >= kept.len()).then_some(written)
    })
    .await;
    assert_eq!(written.len(), kept.len(), "{written:?}");
    for row in &written {
        let at = kept[&row.key];
        let doc: Value = serde_json::from_str(&row.doc).unwrap();
        assert_eq!(
            doc,
            json!({"command_id": row.key, "event_timestamp": at, "year": &at[..4]})
        );
        assert_eq!(row.source_topic, app.settings.kafka_topic);
        assert_eq!(row.pipeline_version, 1);
    }
    // The key compares as bytes, whatever the database's collation.
    #[derive(QueryableByName)]
    struct Collation {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        collation_name: Option<String>,
    }
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    let collation: Collation = diesel::sql_query(
        "SELECT collation_name::text AS collation_name FROM information_schema.columns \
         WHERE table_name = $1 AND column_name = 'key'",
    )
    .bind::<diesel::sql_types::Text, _>(&table)
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(collation.collation_name.as_deref(), Some("C"));
    let metrics = app.metrics().render();
    for (outcome, count) in [("in", 5), ("out", 3), ("dropped", 2), ("failed", 0)] {
        let series = format!(
            "chronolog_pipeline_records_total{{outcome=\"{outcome}\",pipeline=\"{pipeline}\"}} {count}\n"
        );
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    // The group commits what the table holds: its lag comes down to 0.
    let caught_up = format!("chronolog_pipeline_lag_records{{pipeline=\"{pipeline}\"}} 0\n");
    eventually("the pipeline's lag is 0", || async {
        app.metrics().render().contains(&caught_up).then_some(())
    })
    .await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_filter_change_under_load_splits_each_partition_at_one_point_and_loses_nothing() {
    let app = TestApp::spawn().await;
    let (pipeline, table) = (name(), table());
    let definition = |filter: &str| {
        into_table(
            &app.settings.kafka_topic,
            &pipeline,
            &table,
            Some(".command_id"),
            &[filter],
        )
    };
    assert_eq!(apply(&app, definition(".v = 1")).await, 1);
    // Wait for the first version to run before the load starts.
    let first = app.accept(Some("2020-01-01T00:00:00Z")).await;
    eventually("the pipeline runs", || async {
        (rows(&app, &table).await.len() == 1).then_some(())
    })
    .await;

    let accepted = Arc::new(AtomicUsize::new(0));
    let load = {
        let accepted = accepted.clone();
        let app_ref = &app;
        async move { post_many(app_ref, 1200, accepted).await }
    };
    let change = async {
        eventually("some of the load accepted", || async {
            (AtomicUsize::load(&accepted, Ordering::Relaxed) >= 400).then_some(())
        })
        .await;
        apply(&app, definition(".v = 2")).await
    };
    let (ids, version) = futures::join!(load, change);
    assert_eq!(version, 2);
    assert_eq!(ids.len(), 1200, "every POST was accepted");
    let mut expected: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    expected.insert(first.to_string());

    let written = eventually("every record in the pipeline's table", || async {
        let written = rows(&app, &table).await;
        (written.len() >= expected.len()).then_some(written)
    })
    .await;
    let keys: HashSet<String> = written.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, expected, "every record exactly once");
    // Per partition, in log order: version 1, then version 2 only.
    let mut by_partition: BTreeMap<i32, Vec<&Row>> = BTreeMap::new();
    for row in &written {
        by_partition
            .entry(row.source_partition)
            .or_default()
            .push(row);
        let doc: Value = serde_json::from_str(&row.doc).unwrap();
        assert_eq!(doc["v"], json!(row.pipeline_version), "{row:?}");
    }
    let mut versions_seen = HashSet::new();
    for (partition, mut rows) in by_partition {
        rows.sort_by_key(|r| r.source_offset);
        let versions: Vec<i32> = rows.iter().map(|r| r.pipeline_version).collect();
        let switch = versions
            .iter()
            .position(|&v| v == 2)
            .unwrap_or(versions.len());
        assert!(
            versions[..switch].iter().all(|&v| v == 1)
                && versions[switch..].iter().all(|&v| v == 2),
            "partition {partition} switches versions more than once: {versions:?}"
        );
        versions_seen.extend(versions);
    }
    assert_eq!(versions_seen, HashSet::from([1, 2]));
    app.stop().await;
}

#[actix_rt::test]
async fn a_failing_filter_dead_letters_its_record_and_the_pipeline_goes_on() {
    let app = TestApp::spawn().await;
    let table = table();
    apply(
        &app,
        json!({
            "name": name(),
            "topics": [app.settings.kafka_topic],
            // Fails at run time for a timestamp shorter than 30 characters.
            "filters": [".tail = slice!(string!(.event_timestamp), 25, 30)"],
            "sink": {"type": "postgres", "table": table, "key": ".command_id"},
        }),
    )
    .await;
    let failing = app.accept(Some("2020-01-01T00:00:00Z")).await;
    let passing = app
        .accept(Some("2020-01-01T00:00:00.123456789+00:00"))
        .await;
    let written = eventually("the passing record in the table", || async {
        let written = rows(&app, &table).await;
        (!written.is_empty()).then_some(written)
    })
    .await;
    assert_eq!(
        written.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        [passing.to_string()]
    );
    let dlq = app.settings.dead_letter_topic();
    let letter = eventually("the failing record's dead letter", || async {
        read_topic(&dlq)
            .await
            .into_iter()
            .find(|m| header(m, "dlq.reason").as_deref() == Some("filter_error"))
    })
    .await;
    use rdkafka::Message as _;
    assert_eq!(letter.key(), Some(failing.to_string().as_bytes()));
    assert!(
        header(&letter, "dlq.error").is_some_and(|e| e.starts_with("filters[0]: ")),
        "{:?}",
        header(&letter, "dlq.error")
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_deleted_pipeline_stops_writing_keeps_its_table_and_its_name_starts_afresh() {
    let app = TestApp::spawn().await;
    let (pipeline, table) = (name(), table());
    apply(
        &app,
        into_table(&app.settings.kafka_topic, &pipeline, &table, None, &[]),
    )
    .await;
    let first = app.accept(None).await;
    eventually("the first record written", || async {
        (rows(&app, &table).await.len() == 1).then_some(())
    })
    .await;
    delete(&app, &pipeline).await;
    // The gauge goes once the pipeline's consumers have stopped: a record
    // accepted after that can no longer be written.
    eventually("the pipeline's version gauge is gone", || async {
        let metrics = app.metrics().render();
        (!metrics.contains(&format!("pipeline_version{{pipeline=\"{pipeline}\"}}"))).then_some(())
    })
    .await;
    let after = app.accept(None).await;
    app.wait_visible(after).await;
    let kept = rows(&app, &table).await;
    assert_eq!(kept.len(), 1, "nothing written after the delete: {kept:?}");

    // Applied again under its name, it is a new pipeline (version 3, after
    // the deletion's 2): it starts where it says, the earliest record, not
    // where the deleted one stopped.
    let again = self::table();
    let version = apply(
        &app,
        into_table(&app.settings.kafka_topic, &pipeline, &again, None, &[]),
    )
    .await;
    assert_eq!(version, 3);
    let written = eventually("both records in the new table", || async {
        let written = contents(&app, &again).await;
        (written.len() == 2).then_some(written)
    })
    .await;
    let ids: BTreeSet<String> = written
        .iter()
        .map(|(_, doc, ..)| doc["command_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, BTreeSet::from([first.to_string(), after.to_string()]));
    assert_eq!(
        rows(&app, &table).await.len(),
        1,
        "the old table is left alone"
    );

    // Deleted and applied again at once (one check may see both): the new
    // one, version 5, starts once the old one has stopped, from the start.
    delete(&app, &pipeline).await;
    let third = self::table();
    let version = apply(
        &app,
        into_table(&app.settings.kafka_topic, &pipeline, &third, None, &[]),
    )
    .await;
    assert_eq!(version, 5);
    eventually("both records in the third table", || async {
        let written = contents(&app, &third).await;
        let ids: BTreeSet<String> = written
            .iter()
            .map(|(_, doc, ..)| doc["command_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        (ids == BTreeSet::from([first.to_string(), after.to_string()])).then_some(())
    })
    .await;
    let gauge = app
        .metrics()
        .pipeline_version
        .with_label_values(&[&pipeline]);
    assert_eq!(gauge.get(), 5);
    app.stop().await;
}

/// `chronolog pipelines replay ARGS` against the app's database and broker.
async fn replay(app: &TestApp, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(crate::helpers::BIN);
    command
        .args(["pipelines", "replay"])
        .args(args)
        .env("DATABASE_URL", app.settings.database_url.expose())
        .env("KAFKA_BROKERS", &app.settings.kafka_brokers)
        .env("LOG_LEVEL", "warn");
    tokio::task::spawn_blocking(move || command.output().expect("replay runs"))
        .await
        .expect("replay thread")
}

/// The rows of `table` as (key, doc, source position, version).
async fn contents(app: &TestApp, table: &str) -> Vec<(String, Value, String, i32)> {
    rows(app, table)
        .await
        .into_iter()
        .map(|r| {
            (
                r.key,
                serde_json::from_str(&r.doc).unwrap(),
                format!(
                    "{}:{}:{}",
                    r.source_topic, r.source_partition, r.source_offset
                ),
                r.pipeline_version,
            )
        })
        .collect()
}

#[actix_rt::test]
async fn a_replay_into_a_new_table_equals_the_live_pipeline_and_a_new_definition_is_tried_on_the_side()
 {
    let app = TestApp::spawn().await;
    let (pipeline, live) = (name(), table());
    let filters = [
        "if starts_with(string!(.event_timestamp), \"19\") { abort }",
        ".year = slice!(string!(.event_timestamp), 0, 4)",
    ];
    apply(
        &app,
        into_table(
            &app.settings.kafka_topic,
            &pipeline,
            &live,
            Some(".command_id"),
            &filters,
        ),
    )
    .await;
    let stamps = [
        "2001-01-01T00:00:00Z",
        "1990-05-05T05:05:05Z",
        "2012-12-12T12:12:12Z",
        "1969-07-20T20:17:40Z",
        "2026-12-04T10:00:00Z",
    ];
    for at in stamps {
        app.accept(Some(at)).await;
    }
    eventually("the live table holds the kept records", || async {
        (rows(&app, &live).await.len() == 3).then_some(())
    })
    .await;

    // The stored definition, replayed from the start into another table.
    let copy = table();
    let output = replay(
        &app,
        &[&pipeline, "--from", "earliest", "--sink-table", &copy],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("replay: 5/5 records (100.0%)"), "{stderr}");
    assert_eq!(contents(&app, &copy).await, contents(&app, &live).await);

    // A new definition from a file, on the side: recomputed, version 0, the
    // live pipeline untouched.
    let file = std::env::temp_dir().join(format!("{pipeline}.toml"));
    std::fs::write(
        &file,
        format!(
            "[[pipeline]]\nname = \"{pipeline}\"\ntopics = [\"{}\"]\nfilters = ['.decade = slice!(string!(.event_timestamp), 0, 3) + \"0s\"']\n[pipeline.sink]\ntype = \"postgres\"\ntable = \"{live}\"\nkey = \".command_id\"\n",
            app.settings.kafka_topic
        ),
    )
    .unwrap();
    let tried = table();
    let output = replay(
        &app,
        &[
            &pipeline,
            "--definition",
            file.to_str().unwrap(),
            "--sink-table",
            &tried,
        ],
    )
    .await;
    std::fs::remove_file(&file).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let recomputed = contents(&app, &tried).await;
    assert_eq!(recomputed.len(), stamps.len());
    let mut decades: Vec<String> = recomputed
        .iter()
        .map(|(_, doc, _, version)| {
            assert_eq!(*version, 0);
            doc["decade"].as_str().unwrap().to_owned()
        })
        .collect();
    decades.sort();
    assert_eq!(decades, ["1960s", "1990s", "2000s", "2010s", "2020s"]);
    assert_eq!(
        rows(&app, &live).await.len(),
        3,
        "the live pipeline is untouched"
    );

    // A time range: one record per partition before an instant, one after;
    // --from takes the later ones only, --to the earlier ones only.
    let command = |at: &str| {
        let id = Uuid::new_v4().to_string();
        (
            id.clone(),
            json!({"command_id": id, "event_timestamp": at}).to_string(),
        )
    };
    let topic = app.settings.kafka_topic.clone();
    let mut before = Vec::new();
    for partition in 0..app.settings.kafka_partitions {
        let (id, value) = command("2003-03-03T03:03:03Z");
        produce_raw(&topic, Some(partition), Some(&id), value.as_bytes(), None).await;
        before.push(id);
    }
    let instant = chrono::Utc::now() + chrono::Duration::milliseconds(5);
    while chrono::Utc::now() <= instant {
        tokio::task::yield_now().await;
    }
    let mut after = Vec::new();
    for partition in 0..app.settings.kafka_partitions {
        let (id, value) = command("2004-04-04T04:04:04Z");
        produce_raw(&topic, Some(partition), Some(&id), value.as_bytes(), None).await;
        after.push(id);
    }
    let instant = instant.to_rfc3339();
    for (flag, expected) in [("--from", &after), ("--to", &before)] {
        let ranged = table();
        let mut args = vec![
            pipeline.as_str(),
            flag,
            instant.as_str(),
            "--sink-table",
            &ranged,
        ];
        if flag == "--to" {
            // Only the records of this part: those at or after the kept ones.
            args.extend(["--from", "2000-01-01T00:00:00Z"]);
        }
        let output = replay(&app, &args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let mut keys: Vec<String> = contents(&app, &ranged)
            .await
            .into_iter()
            .map(|(key, ..)| key)
            .filter(|key| before.contains(key) || after.contains(key))
            .collect();
        keys.sort();
        let mut expected = expected.clone();
        expected.sort();
        assert_eq!(keys, expected, "{flag} {instant}: {stderr}");
    }

    // A table of that name already there that cannot take the rows (no
    // unique key): refused before anything is written.
    let unkeyed = table();
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    diesel::sql_query(format!(
        "CREATE TABLE {unkeyed} (key text, doc jsonb, source_topic text, source_partition int, \
         source_offset bigint, pipeline_version int, written_at timestamptz)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let refused = replay(&app, &[&pipeline, "--sink-table", &unkeyed]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Error: table \"{unkeyed}\" cannot take the pipeline's rows: it has no usable unique \
             index on (key) alone"
        )),
        "{stderr}"
    );
    assert_eq!(rows(&app, &unkeyed).await, Vec::new());

    // No sink, or two: refused before anything runs.
    let refused = replay(&app, &[&pipeline]).await;
    assert_eq!(refused.status.code(), Some(2));
    app.stop().await;
}

/// The JSON lines of a file sink.
fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is whole JSON"))
        .collect()
}

#[actix_rt::test]
async fn file_and_kafka_sinks_hold_every_record_after_consumers_are_killed_mid_stream() {
    use chronolog::config::Role;
    use rdkafka::mocking::MockCluster;
    let mock = MockCluster::new(1).expect("mock cluster");
    let mut settings = crate::helpers::settings(&crate::helpers::create_database().await);
    settings.kafka_brokers = mock.bootstrap_servers();
    settings.kafka_session_timeout = std::time::Duration::from_secs(4);
    for topic in [settings.kafka_topic.clone(), settings.dead_letter_topic()] {
        mock.create_topic(&topic, 3, 1).expect("topic");
    }
    let out = format!("{}.out", settings.kafka_topic);
    mock.create_topic(&out, 3, 1).expect("topic");
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command]).await;
    apply(
        &front,
        json!({
            "name": name(),
            "topics": [settings.kafka_topic],
            "sink": {"type": "kafka", "topic": out},
        }),
    )
    .await;
    let path = std::env::temp_dir().join(format!("{}.jsonl", name()));
    apply(
        &front,
        json!({
            "name": name(),
            "topics": [settings.kafka_topic],
            "filters": [".seen = true"],
            "sink": {"type": "file", "path": path.to_str().unwrap()},
        }),
    )
    .await;
    let mut ids = HashSet::new();
    for round in 0..3 {
        let mut child = crate::helpers::spawn_consumer_process(&settings);
        let before = lines(&path).len();
        let kill = async {
            eventually(&format!("consumer {round} writes the file"), || async {
                (lines(&path).len() > before).then_some(())
            })
            .await;
            let pause = std::time::Duration::from_millis((Uuid::new_v4().as_u128() % 200) as u64);
            tokio::time::sleep(pause).await;
            child.kill();
        };
        let (chunk, ()) = futures::join!(post_many(&front, 500, Arc::default()), kill);
        ids.extend(chunk);
    }
    assert_eq!(ids.len(), 1500);
    let mut last = crate::helpers::spawn_consumer_process(&settings);
    let expected: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    let written = eventually("every record in the file", || async {
        let written = lines(&path);
        let seen: HashSet<String> = written
            .iter()
            .filter_map(|l| l["doc"]["command_id"].as_str().map(str::to_owned))
            .collect();
        expected.is_subset(&seen).then_some(written)
    })
    .await;
    // The topic: every record at least once, a duplicate is the same
    // output with the same source position.
    use rdkafka::Message as _;
    let copies = eventually("every record in the output topic", || async {
        let copies = crate::helpers::read_topic_at(&settings.kafka_brokers, &out).await;
        let seen: HashSet<String> = copies
            .iter()
            .filter_map(|m| serde_json::from_slice::<Value>(m.payload()?).ok())
            .filter_map(|v| v["command_id"].as_str().map(str::to_owned))
            .collect();
        expected.is_subset(&seen).then_some(copies)
    })
    .await;
    let mut by_position: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for copy in &copies {
        let position = header(copy, "chronolog-source").unwrap();
        let value = copy.payload().unwrap().to_vec();
        if let Some(earlier) = by_position.insert(position, value.clone()) {
            assert_eq!(earlier, value, "a duplicate is the same record");
        }
    }
    assert_eq!(by_position.len(), expected.len());
    last.kill();
    front.stop().await;
    // At least once: a record written twice is the same line twice, told
    // apart from others by its source position.
    let mut by_source: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    for line in &written {
        assert_eq!(line["doc"]["seen"], true);
        assert_eq!(line["pipeline_version"], 1);
        let source = line["source"].as_str().unwrap().to_owned();
        assert!(source.starts_with(&format!("{}:", settings.kafka_topic)));
        if let Some(earlier) = by_source.insert(source, line.clone()) {
            assert_eq!(&earlier, line, "a duplicate is the same record");
        }
    }
    assert_eq!(
        by_source.len(),
        expected.len(),
        "one source position per record"
    );
    std::fs::remove_file(&path).unwrap();
}

#[actix_rt::test]
async fn a_kafka_sink_keys_and_labels_every_output_record() {
    let app = TestApp::spawn().await;
    let (out, unkeyed) = (
        second_topic(&app, "out").await,
        second_topic(&app, "unkeyed").await,
    );
    let pipeline = name();
    apply(
        &app,
        json!({
            "name": pipeline,
            "topics": [app.settings.kafka_topic],
            "filters": [".kind = \"copy\""],
            "sink": {"type": "kafka", "topic": out, "key": ".command_id"},
        }),
    )
    .await;
    // Without a key path an output keeps its source record's key: the
    // command's id, which the ingestion keys every record by.
    apply(
        &app,
        json!({
            "name": name(),
            "topics": [app.settings.kafka_topic],
            "filters": ["del(.command_id)"],
            "sink": {"type": "kafka", "topic": unkeyed},
        }),
    )
    .await;
    let mut ids = HashSet::new();
    for _ in 0..5 {
        ids.insert(app.accept(None).await.to_string());
    }
    let records = eventually("every output record", || async {
        let records = read_topic(&out).await;
        (records.len() >= ids.len()).then_some(records)
    })
    .await;
    use rdkafka::Message as _;
    let mut seen = HashSet::new();
    for record in &records {
        let key = String::from_utf8(record.key().unwrap().to_vec()).unwrap();
        let value: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
        assert_eq!(value["command_id"], json!(key));
        assert_eq!(value["kind"], "copy");
        let source = header(record, "chronolog-source").unwrap();
        assert!(
            source.starts_with(&format!("{}:", app.settings.kafka_topic)),
            "{source}"
        );
        assert_eq!(
            header(record, "chronolog-pipeline"),
            Some(format!("{pipeline}:1"))
        );
        assert!(
            header(record, "correlationId").is_some(),
            "source headers are kept"
        );
        seen.insert(key);
    }
    assert_eq!(seen, ids);
    let records = eventually("every unkeyed output record", || async {
        let records = read_topic(&unkeyed).await;
        (records.len() >= ids.len()).then_some(records)
    })
    .await;
    let keys: HashSet<String> = records
        .iter()
        .map(|record| {
            let value: Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
            assert!(value.get("command_id").is_none(), "{value}");
            String::from_utf8(record.key().unwrap().to_vec()).unwrap()
        })
        .collect();
    assert_eq!(keys, ids, "each output keeps its source record's key");
    app.stop().await;
}

/// The value of the series `series` (name and labels as rendered) in the
/// metrics at `addr`; 0 when absent or unreachable.
async fn scrape(http: &reqwest::Client, addr: &str, series: &str) -> f64 {
    let Ok(response) = http.get(format!("http://{addr}/metrics")).send().await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A free port on the loopback interface.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Two consumer processes in the pipeline's group.
#[actix_rt::test]
async fn two_consumer_processes_split_a_pipeline_and_both_take_a_change_and_refuse_a_bad_one() {
    use chronolog::config::Role;
    let settings = crate::helpers::settings(&crate::helpers::create_database().await);
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    let addrs = [free_addr(), free_addr()];
    let mut processes: Vec<_> = addrs
        .iter()
        .map(|addr| crate::helpers::spawn_consumer_process_at(&settings, addr, &[]))
        .collect();
    let (pipeline, table) = (name(), table());
    let definition = |filter: &str| {
        into_table(
            &settings.kafka_topic,
            &pipeline,
            &table,
            Some(".command_id"),
            &[filter],
        )
    };
    let http = reqwest::Client::new();
    let version = format!("chronolog_pipeline_version{{pipeline=\"{pipeline}\"}}");
    let records_in =
        format!("chronolog_pipeline_records_total{{outcome=\"in\",pipeline=\"{pipeline}\"}}");
    let running = |v: f64| {
        let (http, version, addrs) = (http.clone(), version.clone(), addrs.clone());
        move || {
            let (http, version, addrs) = (http.clone(), version.clone(), addrs.clone());
            async move {
                for addr in &addrs {
                    if scrape(&http, addr, &version).await != v {
                        return None;
                    }
                }
                Some(())
            }
        }
    };
    assert_eq!(apply(&front, definition(".v = 1")).await, 1);
    eventually("both processes run v1", running(1.0)).await;

    // Records until both processes have read some: the group's partitions
    // are split between them.
    let early = std::sync::Mutex::new(HashSet::new());
    eventually("both processes process records", || async {
        let chunk = post_many(&front, 30, Arc::default()).await;
        early.lock().unwrap().extend(chunk);
        let first = scrape(&http, &addrs[0], &records_in).await;
        let second = scrape(&http, &addrs[1], &records_in).await;
        (first > 0.0 && second > 0.0).then_some(())
    })
    .await;
    let mut ids = early.into_inner().unwrap();
    assert_eq!(apply(&front, definition(".v = 2")).await, 2);
    eventually("both processes run v2", running(2.0)).await;
    ids.extend(post_many(&front, 300, Arc::default()).await);

    // A filter that does not compile is refused by the operator's command
    // (exit 2, located) and changes nothing: v2 goes on in both.
    let file = std::env::temp_dir().join(format!("{pipeline}.toml"));
    std::fs::write(
        &file,
        format!(
            "[[pipeline]]\nname = \"{pipeline}\"\ntopics = [\"{}\"]\nfilters = ['.v = 3', '.w = upcase(.missing)']\n[pipeline.sink]\ntype = \"postgres\"\ntable = \"{table}\"\nkey = \".command_id\"\n",
            settings.kafka_topic
        ),
    )
    .unwrap();
    let refused = std::process::Command::new(crate::helpers::BIN)
        .args(["pipelines", "apply", file.to_str().unwrap()])
        .env("DATABASE_URL", settings.database_url.expose())
        .env("LOG_LEVEL", "error")
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("filters[1]:1:"), "{stderr}");
    ids.extend(post_many(&front, 30, Arc::default()).await);

    let expected: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    let written = eventually("every record in the table", || async {
        let written = rows(&front, &table).await;
        (written.len() >= expected.len()).then_some(written)
    })
    .await;
    let keys: HashSet<String> = written.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, expected, "every record exactly once");
    let versions: HashSet<i32> = written.iter().map(|r| r.pipeline_version).collect();
    assert_eq!(versions, HashSet::from([1, 2]), "v3 never ran");
    eventually("both still run v2", running(2.0)).await;
    // Stopped as an operator does (tansu does not survive a killed client).
    for process in &mut processes {
        let pid = process.child().id().to_string();
        let term = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(term.unwrap().success());
        let exit = crate::helpers::wait_for_exit(process.child()).await;
        assert!(exit.success(), "{exit}");
    }
    front.stop().await;
}

#[actix_rt::test]
async fn a_pipeline_reads_several_topics_into_one_sink() {
    reads_two_topics_into_one_sink(TestApp::spawn().await).await;
}

#[actix_rt::test]
async fn a_pipeline_reads_several_topics_into_one_sink_as_a_static_member() {
    // One static member id per process: each topic's consumer in the
    // pipeline's group needs one of its own, or the broker fences one.
    let mut settings = crate::helpers::settings(&crate::helpers::create_database().await);
    settings.kafka_group_instance_id = unique("instance");
    reads_two_topics_into_one_sink(TestApp::spawn_with(settings, &[]).await).await;
}

/// A pipeline on `app`'s command topic and another topic writes a row of
/// each into one table.
async fn reads_two_topics_into_one_sink(app: TestApp) {
    let other = second_topic(&app, "other").await;
    let table = table();
    apply(
        &app,
        json!({
            "name": name(),
            "topics": [app.settings.kafka_topic, other],
            "filters": [".from = %topic"],
            "sink": {"type": "postgres", "table": table},
        }),
    )
    .await;
    let command = app.accept(None).await.to_string();
    let (partition, offset) = produce_raw(&other, Some(1), None, br#"{"reading": 42}"#, None).await;
    let written = eventually("a row from each topic", || async {
        let written = contents(&app, &table).await;
        (written.len() == 2).then_some(written)
    })
    .await;
    let from_other = written
        .iter()
        .find(|(_, doc, ..)| doc["reading"] == 42)
        .expect("the other topic's record");
    assert_eq!(from_other.0, format!("{other}:{partition}:{offset}"));
    assert_eq!(from_other.1, json!({"reading": 42, "from": other}));
    let from_commands = written
        .iter()
        .find(|(_, doc, ..)| doc["command_id"] == json!(command))
        .expect("the command topic's record");
    assert_eq!(from_commands.1["from"], json!(app.settings.kafka_topic));
    app.stop().await;
}

#[actix_rt::test]
async fn a_later_record_with_a_key_already_in_the_table_replaces_its_row() {
    let app = TestApp::spawn().await;
    let topic = second_topic(&app, "keyed").await;
    let table = table();
    apply(&app, into_table(&topic, &name(), &table, Some(".k"), &[])).await;
    let mut written: BTreeMap<&str, (i64, i32, i64)> = BTreeMap::new();
    let produce = async |partition: i32, k: &'static str, n: i64| {
        let value = json!({"k": k, "n": n}).to_string();
        let (partition, offset) =
            produce_raw(&topic, Some(partition), None, value.as_bytes(), None).await;
        (k, (n, partition, offset))
    };
    let caught_up = async |expected: &BTreeMap<&str, (i64, i32, i64)>| {
        let expected: Vec<(String, String, i32, i64)> = expected
            .iter()
            .map(|(k, (n, partition, offset))| {
                let doc = json!({"k": k, "n": n}).to_string();
                (k.to_string(), doc, *partition, *offset)
            })
            .collect();
        eventually("the table holds the latest record of every key", || async {
            let rows: Vec<(String, String, i32, i64)> = rows(&app, &table)
                .await
                .into_iter()
                .map(|r| {
                    let doc: Value = serde_json::from_str(&r.doc).unwrap();
                    (r.key, doc.to_string(), r.source_partition, r.source_offset)
                })
                .collect();
            (rows == expected).then_some(())
        })
        .await;
    };
    // A new key (a plain insert), then (likely in one batch) a new key, an
    // existing one and a new one (the insert fails, the batch is upserted),
    // then an existing key from another partition (upserted at once: the
    // sink is within its upserts after a conflict).
    written.extend([produce(0, "a", 1).await]);
    caught_up(&written).await;
    written.extend([
        produce(0, "b", 2).await,
        produce(0, "a", 3).await,
        produce(0, "c", 4).await,
    ]);
    caught_up(&written).await;
    written.extend([produce(1, "d", 5).await, produce(1, "a", 6).await]);
    caught_up(&written).await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_pipeline_starting_at_the_end_keeps_that_start_across_a_restart() {
    use chronolog::config::Role;
    let settings = crate::helpers::settings(&crate::helpers::create_database().await);
    let front = TestApp::spawn_with(settings.clone(), &[Role::Command, Role::Query]).await;
    let before: Vec<String> = [front.accept(None).await, front.accept(None).await]
        .iter()
        .map(Uuid::to_string)
        .collect();
    let consumer = crate::helpers::start_consumer(&settings).await;
    let (pipeline, table) = (name(), table());
    apply(
        &front,
        json!({
            "name": pipeline,
            "topics": [settings.kafka_topic],
            "start": "latest",
            "sink": {"type": "postgres", "table": table, "key": ".command_id"},
        }),
    )
    .await;
    // The group's start is committed at the log's end: nothing behind it.
    // (Lag is measured from Kafka's committed offsets: 0 only once the
    // start is committed; without a commit it counts from the log's start.)
    let metrics = consumer.metrics();
    let committed = format!("chronolog_pipeline_lag_records{{pipeline=\"{pipeline}\"}} 0\n");
    eventually("the pipeline's start is committed", || async {
        metrics.render().contains(&committed).then_some(())
    })
    .await;
    consumer.stop().await;
    // Records while no consumer runs: a restart must not skip them by
    // starting at a later end.
    let mut during = Vec::new();
    for _ in 0..3 {
        during.push(front.accept(None).await.to_string());
    }
    let consumer = crate::helpers::start_consumer(&settings).await;
    let written = eventually("the records written while stopped", || async {
        let written = rows(&front, &table).await;
        (written.len() >= during.len()).then_some(written)
    })
    .await;
    let mut keys: Vec<String> = written.into_iter().map(|r| r.key).collect();
    keys.sort();
    during.sort();
    assert_eq!(
        keys, during,
        "none from before the pipeline started: {before:?}"
    );
    consumer.stop().await;
    front.stop().await;
}

#[actix_rt::test]
async fn a_table_already_there_is_taken_only_with_every_column_and_a_usable_unique_key() {
    use chronolog::engine::pipeline::PipelineTable;
    let url = crate::helpers::create_database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    let columns = "doc jsonb, source_topic text, source_partition int, source_offset bigint, \
                   pipeline_version int, written_at timestamptz";
    diesel::sql_query(
        "CREATE COLLATION case_blind (provider = icu, locale = 'und-u-ks-level2', \
         deterministic = false)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let unusable = "it has no usable unique index on (key) alone, so a later record could not \
                    replace its key's row";
    // (what is made by hand, what prepare answers: None when it takes it)
    let cases: Vec<(String, Option<&str>)> = vec![
        (String::new(), None),
        (
            format!("CREATE TABLE {{t}} (key text PRIMARY KEY, {columns})"),
            None,
        ),
        (
            format!(
                "CREATE TABLE {{t}} (key text, {columns}); CREATE UNIQUE INDEX ON {{t}} (key) INCLUDE (doc)"
            ),
            None,
        ),
        (
            format!("CREATE TABLE {{t}} (key text, {columns})"),
            Some(unusable),
        ),
        (
            format!(
                "CREATE TABLE {{t}} (key text, {columns}); CREATE UNIQUE INDEX ON {{t}} (key) WHERE key <> ''"
            ),
            Some(unusable),
        ),
        (
            format!("CREATE TABLE {{t}} (key text UNIQUE DEFERRABLE, {columns})"),
            Some(unusable),
        ),
        (
            format!(
                "CREATE TABLE {{t}} (key text, {columns}); CREATE UNIQUE INDEX ON {{t}} (lower(key))"
            ),
            Some(unusable),
        ),
        (
            format!("CREATE TABLE {{t}} (key text, {columns}, UNIQUE (key, source_topic))"),
            Some(unusable),
        ),
        (
            format!(
                "CREATE TABLE {{t}} (key text, {columns}); CREATE UNIQUE INDEX ON {{t}} (key COLLATE case_blind)"
            ),
            Some(unusable),
        ),
        (
            "CREATE TABLE {t} (key text PRIMARY KEY, doc jsonb, source_topic text, \
             source_partition int, source_offset bigint)"
                .to_owned(),
            Some("it has no column pipeline_version, written_at"),
        ),
    ];
    for (made, expected) in cases {
        let table = table();
        for statement in made.split("; ").filter(|s| !s.is_empty()) {
            diesel::sql_query(statement.replace("{t}", &table))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let answer = PipelineTable::prepare(&mut conn, &table)
            .await
            .err()
            .map(|e| e.to_string());
        let expected =
            expected.map(|why| format!("table \"{table}\" cannot take the pipeline's rows: {why}"));
        assert_eq!(answer, expected, "{made}");
    }

    // A unique index that failed to build (duplicate keys) is there but
    // invalid: ON CONFLICT cannot use it, and duplicates would go in.
    let table = table();
    diesel::sql_query(format!("CREATE TABLE {table} (key text, {columns})"))
        .execute(&mut conn)
        .await
        .unwrap();
    diesel::sql_query(format!(
        "INSERT INTO {table} (key, doc) VALUES ('a', '{{}}'), ('a', '{{}}')"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let failed = diesel::sql_query(format!("CREATE UNIQUE INDEX CONCURRENTLY ON {table} (key)"))
        .execute(&mut conn)
        .await;
    assert!(failed.is_err(), "the index is built on duplicates");
    let answer = PipelineTable::prepare(&mut conn, &table)
        .await
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        answer,
        Some(format!(
            "table \"{table}\" cannot take the pipeline's rows: {unusable}"
        ))
    );
}

#[actix_rt::test]
async fn a_key_twice_in_one_batch_is_written_once_with_its_last_record() {
    use chronolog::db::queries::PartitionKey;
    use chronolog::engine::pg_sink::Projection;
    use chronolog::engine::pipeline::{
        Compiled, Output, PipelineState, PipelineTable, Processed, Source,
    };
    use chronolog::engine::sink::Decoded;
    let url = crate::helpers::create_database().await;
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    let table = table();
    PipelineTable::prepare(&mut conn, &table).await.unwrap();
    let compiled = Compiled {
        version: 1,
        filters: chronolog::pipelines::Filters::compile::<&str>(&[]).unwrap(),
        key: None,
        to_postgres: true,
        to_kafka: false,
    };
    let state = PipelineState::new(&name(), compiled, chronolog::metrics::Metrics::new());
    let sink = PipelineTable::new(state, &table);
    let partition = PartitionKey {
        group_id: "g".to_owned(),
        topic: "t".to_owned(),
        partition: 0,
    };
    let record = |offset: i64, key: Option<&str>, n: i64| Decoded {
        offset,
        correlation_id: None,
        item: Processed {
            version: 1,
            source: Source {
                topic: "t".to_owned(),
                partition: 0,
                offset,
            },
            output: Some(Output {
                doc: json!({"n": n}).to_string(),
                key: key.map(str::to_owned),
                record_key: None,
                headers: Vec::new(),
            }),
        },
    };
    // New keys only, but "a" twice: the plain insert fails on the batch
    // itself, and the upsert writes each key once, its last record's.
    let first = [
        record(0, Some("a"), 1),
        record(1, Some("b"), 2),
        record(2, Some("a"), 3),
        record(3, None, 4),
    ];
    let written = conn
        .transaction::<_, chronolog::db::DbError, _>(async |conn| {
            sink.apply(conn, &partition, &first).await
        })
        .await
        .unwrap();
    assert!(written.is_empty(), "nothing is refused");
    // The next batch goes straight to the upsert; "b" twice again.
    let second = [record(4, Some("b"), 5), record(5, Some("b"), 6)];
    conn.transaction::<_, chronolog::db::DbError, _>(async |conn| {
        sink.apply(conn, &partition, &second).await
    })
    .await
    .unwrap();
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Written {
        #[diesel(sql_type = diesel::sql_types::Text)]
        key: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        doc: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        source_offset: i64,
    }
    let rows: Vec<Written> = diesel::sql_query(format!(
        "SELECT key, doc::text AS doc, source_offset FROM \"{table}\" ORDER BY key"
    ))
    .load(&mut conn)
    .await
    .unwrap();
    let row = |key: &str, n: i64, source_offset: i64| Written {
        key: key.to_owned(),
        doc: format!("{{\"n\": {n}}}"),
        source_offset,
    };
    assert_eq!(
        rows,
        vec![row("a", 3, 2), row("b", 6, 5), row("t:0:3", 4, 3)]
    );
}

#[actix_rt::test]
async fn a_number_postgresql_cannot_hold_is_dead_lettered_from_a_table_and_kept_in_a_file() {
    let app = TestApp::spawn().await;
    let topic = second_topic(&app, "numbers").await;
    let (table, named) = (table(), name());
    let path = std::env::temp_dir().join(format!("{}.jsonl", unique("numbers")));
    apply(
        &app,
        json!({"name": named, "topics": [topic], "sink": {"type": "postgres", "table": table}}),
    )
    .await;
    apply(
        &app,
        json!({
            "name": name(),
            "topics": [topic],
            "sink": {"type": "file", "path": path.to_str().unwrap()},
        }),
    )
    .await;
    // In one partition, in order: the largest power of ten PostgreSQL
    // holds, a number it cannot hold, a record after it.
    let values: [&[u8]; 3] = [
        br#"{"n": 1e131071}"#,
        br#"{"n": [1, 1e200000]}"#,
        br#"{"n": 0.5}"#,
    ];
    let mut positions = Vec::new();
    for value in values {
        let (partition, offset) = produce_raw(&topic, Some(0), Some("k"), value, None).await;
        positions.push(format!("{topic}:{partition}:{offset}"));
    }

    // The table takes the records around it, keyed by source position.
    let written = eventually("the records around it in the table", || async {
        let written = contents(&app, &table).await;
        (written.len() == 2).then_some(written)
    })
    .await;
    let keys: Vec<&str> = written.iter().map(|(key, ..)| key.as_str()).collect();
    assert_eq!(keys, [positions[0].as_str(), positions[2].as_str()]);
    assert_eq!(written[1].1, json!({"n": 0.5}));

    // The refused one is in the dead-letter topic as it was, with why.
    let dlq = chronolog::kafka::dead_letter::dead_letter_topic(&topic);
    let letters = eventually("its dead letter", || async {
        let letters = read_topic(&dlq).await;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    use rdkafka::Message as _;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload(), Some(values[1]));
    assert_eq!(
        header(&letters[0], "dlq.reason").as_deref(),
        Some("sink_refused")
    );
    assert_eq!(
        header(&letters[0], "dlq.error").as_deref(),
        Some(
            "the value holds a number PostgreSQL's jsonb cannot hold \
             (below 10^131072, at most 16383 decimals): 1e+200000"
        )
    );
    let [.., failed] = record_counts(&app, &named);
    assert_eq!(failed, 1);

    // A file holds any JSON number: every record is there, as written.
    let lines = eventually("every record in the file", || async {
        let lines = lines(&path);
        (lines.len() == 3).then_some(lines)
    })
    .await;
    let sources: Vec<&str> = lines
        .iter()
        .map(|l| l["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, positions);
    assert_eq!(lines[1]["doc"].to_string(), r#"{"n":[1,1e+200000]}"#);
    app.stop().await;
    std::fs::remove_file(&path).unwrap();
}

#[actix_rt::test]
async fn a_number_is_refused_exactly_where_postgresql_refuses_it() {
    use chronolog::pipelines::Document;
    let app = TestApp::spawn().await;
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    let (ones, zeros) = (|n: usize| "1".repeat(n), |n: usize| "0".repeat(n));
    let numbers = [
        "0".to_owned(),
        "-12.5e-3".to_owned(),
        "1e131071".to_owned(),
        "9.99e131071".to_owned(),
        "1e131072".to_owned(),
        "0.1e131072".to_owned(),
        ones(131_072),
        ones(131_073),
        format!("-{}.5", ones(131_072)),
        "1e-16383".to_owned(),
        "1e-16384".to_owned(),
        "0e-16384".to_owned(),
        format!("0.{}", zeros(16_383)),
        format!("0.{}", zeros(16_384)),
        format!("0.{}e1", zeros(16_384)),
        format!("1.{}e-1", ones(16_382)),
        format!("1.{}e-1", ones(16_383)),
        "1e1073741822".to_owned(),
        "0e1073741822".to_owned(),
        "0e1073741823".to_owned(),
        "0E+99999999999999999999".to_owned(),
        "1e-9223372036854775808".to_owned(),
        "0e-9223372036854775807".to_owned(),
        "1e9223372036854775807".to_owned(),
    ];
    for number in numbers {
        let text = format!(r#"{{"n": {number}}}"#);
        let ours = Document::read_json(text.as_bytes())
            .unwrap()
            .number_past_numeric()
            .is_none();
        let theirs = diesel::sql_query("SELECT $1::jsonb::text AS doc")
            .bind::<diesel::sql_types::Text, _>(&text)
            .execute(&mut conn)
            .await;
        let shown = &number[..number.len().min(40)];
        match theirs {
            Ok(_) => assert!(ours, "PostgreSQL takes {shown}, we refuse it"),
            Err(error) => {
                assert!(!ours, "PostgreSQL refuses {shown} ({error}), we take it");
                assert_eq!(error.to_string(), "value overflows numeric format");
            }
        }
    }
    app.stop().await;
}

#[actix_rt::test]
async fn a_batch_whose_commit_fails_is_counted_out_once_when_it_is_written() {
    let app = TestApp::spawn().await;
    let (table, named) = (table(), name());
    apply(
        &app,
        into_table(
            &app.settings.kafka_topic,
            &named,
            &table,
            Some(".command_id"),
            &[],
        ),
    )
    .await;
    app.accept(None).await;
    eventually("the first row", || async {
        (rows(&app, &table).await.len() == 1).then_some(())
    })
    .await;

    // A constraint checked at commit: the batch's rows go in, then its
    // commit fails, and it is retried until the constraint goes.
    let mut conn = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    for sql in [
        format!(
            "CREATE FUNCTION \"refuse_{table}\"() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
        ),
        format!(
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT OR UPDATE ON \"{table}\" \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION \"refuse_{table}\"()"
        ),
    ] {
        diesel::sql_query(sql).execute(&mut conn).await.unwrap();
    }
    let response = app.post(None, None).await;
    assert_eq!(response.status().as_u16(), 202);
    let partition = response.json::<Value>().await.unwrap()["partition"].to_string();
    let metrics = app.metrics();
    let group = chronolog::engine::pipeline_manager::group_id(&named, 1);
    let blocked = || {
        metrics
            .partition_blocked
            .with_label_values(&[group.as_str(), &app.settings.kafka_topic, &partition])
            .get()
    };
    eventually("the commit failed", || async {
        (blocked() == 1).then_some(())
    })
    .await;
    diesel::sql_query(format!("DROP TRIGGER refuse_at_commit ON \"{table}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    eventually("the second row", || async {
        (rows(&app, &table).await.len() == 2 && blocked() == 0).then_some(())
    })
    .await;
    assert_eq!(record_counts(&app, &named), [2, 2, 0, 0]);
    app.stop().await;
}

#[actix_rt::test]
async fn an_output_the_topic_refuses_is_dead_lettered_and_counted_failed_not_out() {
    use rdkafka::Message as _;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    // The mock cluster, to make the broker refuse one produce request.
    let mock = MockCluster::new(1).expect("mock cluster");
    let mut settings = crate::helpers::settings(&crate::helpers::create_database().await);
    settings.kafka_brokers = mock.bootstrap_servers();
    let out = format!("{}.out", settings.kafka_topic);
    for topic in [&settings.kafka_topic, &settings.dead_letter_topic(), &out] {
        mock.create_topic(topic, 3, 1).expect("topic");
    }
    let app = TestApp::spawn_with(settings.clone(), &[]).await;
    let refused = app.accept(None).await.to_string();
    // The next produce request is the pipeline's output of that record.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let named = name();
    apply(
        &app,
        json!({"name": named, "topics": [settings.kafka_topic], "sink": {"type": "kafka", "topic": out}}),
    )
    .await;
    let letter = eventually("the refused output's dead letter", || async {
        let letters =
            crate::helpers::read_topic_at(&settings.kafka_brokers, &settings.dead_letter_topic())
                .await;
        letters.into_iter().next()
    })
    .await;
    assert_eq!(
        header(&letter, "dlq.reason").as_deref(),
        Some("sink_refused")
    );
    let error = header(&letter, "dlq.error").unwrap_or_default();
    assert!(
        error.starts_with("the output topic refused the record: "),
        "{error}"
    );
    let doc: Value = serde_json::from_slice(letter.payload().unwrap()).unwrap();
    assert_eq!(doc["command_id"], json!(refused));

    // The next record goes out; the refused one stays failed.
    let passed = app.accept(None).await.to_string();
    let copies = eventually("the next record in the output topic", || async {
        let copies = crate::helpers::read_topic_at(&settings.kafka_brokers, &out).await;
        (!copies.is_empty()).then_some(copies)
    })
    .await;
    let ids: Vec<Value> = copies
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(m.payload().unwrap()).unwrap()["command_id"].clone()
        })
        .collect();
    assert_eq!(ids, [json!(passed)]);
    eventually("the counts", || async {
        (record_counts(&app, &named) == [2, 1, 0, 1]).then_some(())
    })
    .await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_locked_table_holds_up_only_its_own_pipeline() {
    // Two connections per pool: the locked pipeline's partitions would hold
    // every connection of a pool it shared with the other pipeline.
    let mut settings = crate::helpers::settings(&crate::helpers::create_database().await);
    settings.database_pool_size = 2;
    let app = TestApp::spawn_with(settings, &[]).await;
    let (locked, free, free_name) = (table(), table(), name());
    let definition = |name: &str, table: &str, filters: &[&str]| {
        into_table(
            &app.settings.kafka_topic,
            name,
            table,
            Some(".command_id"),
            filters,
        )
    };
    apply(&app, definition(&name(), &locked, &[])).await;
    apply(&app, definition(&free_name, &free, &[])).await;
    let mut expected = BTreeSet::from([app.accept(None).await.to_string()]);
    eventually("the first record in both tables", || async {
        (rows(&app, &locked).await.len() == 1 && rows(&app, &free).await.len() == 1).then_some(())
    })
    .await;

    let mut locker = AsyncPgConnection::establish(app.settings.database_url.expose())
        .await
        .unwrap();
    for sql in [
        "BEGIN",
        &format!("LOCK TABLE \"{locked}\" IN ACCESS EXCLUSIVE MODE"),
    ] {
        diesel::sql_query(sql).execute(&mut locker).await.unwrap();
    }
    for _ in 0..30 {
        expected.insert(app.accept(None).await.to_string());
    }
    let keys = |written: Vec<Row>| written.into_iter().map(|r| r.key).collect::<BTreeSet<_>>();
    eventually(
        "every record in the free table, the other locked",
        || async { (keys(rows(&app, &free).await) == expected).then_some(()) },
    )
    .await;
    // A change is read and taken meanwhile.
    apply(&app, definition(&free_name, &free, &[".v = 2"])).await;
    let version = app
        .metrics()
        .pipeline_version
        .with_label_values(&[&free_name]);
    eventually("version 2 running", || async {
        (version.get() == 2).then_some(())
    })
    .await;
    let changed = app.accept(None).await.to_string();
    eventually("a record through the new version", || async {
        let written = contents(&app, &free).await;
        let row = written.iter().find(|(key, ..)| *key == changed)?;
        (row.1["v"] == 2 && row.3 == 2).then_some(())
    })
    .await;
    expected.insert(changed);

    // Unlocked, the held-up pipeline writes every record.
    diesel::sql_query("COMMIT")
        .execute(&mut locker)
        .await
        .unwrap();
    eventually("every record in the unlocked table", || async {
        (keys(rows(&app, &locked).await) == expected).then_some(())
    })
    .await;
    app.stop().await;
}
