//! The admin API of pipelines (`/admin/pipelines`): absent without
//! `ADMIN_TOKEN`, 401 without the right bearer token on the query and the
//! consumer port, changes validated as `pipelines apply` does, the status of
//! a running pipeline, deletion and history.

use std::collections::BTreeMap;

use chronolog::config::{Role, Secret, Settings};
use chronolog::pipelines::Definition;
use chronolog::pipelines::store;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};

use crate::helpers::{TestApp, create_database, eventually, settings, unique};
use crate::openapi::{check, document, operations, validate_document};

const TOKEN: &str = "admin-token-for-the-tests-0123456789";

/// Settings of a fresh database and topic, with `ADMIN_TOKEN` set.
async fn admin_settings() -> Settings {
    let mut settings = settings(&create_database().await);
    settings.admin_token = Some(Secret::from(TOKEN.to_owned()));
    settings
}

/// The consumer port of a consumer-only app.
fn consumer_url(app: &TestApp) -> String {
    format!(
        "http://{}",
        app.app
            .as_ref()
            .and_then(|a| a.consumer_addr())
            .expect("a consumer port")
    )
}

/// `method base+path` with `token` as bearer (none when `None`) and a JSON
/// body; answers the status, the `WWW-Authenticate` header and the JSON body
/// (`null` when empty).
async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Option<String>, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("answers");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let text = response.text().await.expect("a body");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, challenge, json)
}

/// A pipeline on `topic` into a table, with `filters`.
fn definition(topic: &str, table: &str, filters: &[&str]) -> Value {
    json!({
        "topics": [topic],
        "filters": filters,
        "sink": {"type": "postgres", "table": table, "key": ".command_id"},
    })
}

/// `GET base/admin/pipelines` with the admin token.
async fn list(http: &reqwest::Client, base: &str) -> (u16, Option<String>, Value) {
    let url = format!("{base}/admin/pipelines");
    call(http, "GET", &url, Some(TOKEN), None).await
}

/// A table name no other test uses.
fn table() -> String {
    unique("admin").replace('-', "_")
}

async fn connect(settings: &Settings) -> AsyncPgConnection {
    AsyncPgConnection::establish(settings.database_url.expose())
        .await
        .expect("connects")
}

/// The keys of a pipeline's `table`, sorted; an error when it is not there
/// (yet).
async fn keys(settings: &Settings, table: &str) -> diesel::QueryResult<Vec<String>> {
    #[derive(diesel::QueryableByName)]
    struct Key {
        #[diesel(sql_type = diesel::sql_types::Text)]
        key: String,
    }
    let rows: Vec<Key> = diesel::sql_query(format!("SELECT key FROM {table}"))
        .load(&mut connect(settings).await)
        .await?;
    let mut keys: Vec<String> = rows.into_iter().map(|k| k.key).collect();
    keys.sort();
    Ok(keys)
}

/// Every admin route, with a concrete path, as `(method, path)`.
fn routes(name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("GET", "/admin/pipelines".to_owned()),
        ("GET", format!("/admin/pipelines/{name}")),
        ("PUT", format!("/admin/pipelines/{name}")),
        ("DELETE", format!("/admin/pipelines/{name}")),
        ("GET", format!("/admin/pipelines/{name}/history")),
    ]
}

const ADMIN_ROUTES: [&str; 5] = [
    "get /admin/pipelines",
    "get /admin/pipelines/{name}",
    "put /admin/pipelines/{name}",
    "delete /admin/pipelines/{name}",
    "get /admin/pipelines/{name}/history",
];

#[actix_rt::test]
async fn without_a_token_the_admin_routes_are_unknown_routes() {
    let app = TestApp::spawn().await;
    let consumer = TestApp::spawn_with(app.settings.clone(), &[Role::Consumer]).await;
    let body = definition(&app.settings.kafka_topic, &table(), &[]);
    for base in [app.query_url(), consumer_url(&consumer)] {
        for (method, path) in routes("recent") {
            let answer = call(
                &app.http,
                method,
                &format!("{base}{path}"),
                Some(TOKEN),
                Some(&body),
            )
            .await;
            assert_eq!(
                answer,
                (
                    404,
                    None,
                    json!({"error": "not_found", "message": format!("no route for {method} {path}")})
                ),
                "{method} {base}{path}"
            );
        }
        let doc = document(&app.http, &base).await;
        assert!(
            operations(&doc).iter().all(|o| !o.contains("/admin/")),
            "{base}"
        );
    }
    let mut conn = connect(&app.settings).await;
    assert_eq!(store::list(&mut conn).await.unwrap(), vec![]);
    consumer.stop().await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_missing_or_wrong_token_is_401_on_the_query_and_the_consumer_port() {
    let settings = admin_settings().await;
    let query = TestApp::spawn_with(settings.clone(), &[Role::Query]).await;
    let consumer = TestApp::spawn_with(settings.clone(), &[Role::Consumer]).await;
    let (query_url, consumer_url) = (query.query_url(), consumer_url(&consumer));
    let http = &query.http;
    let name = unique("admin");
    let table = table();
    let body = definition(&settings.kafka_topic, &table, &[".kept = true"]);
    let challenge = Some("Bearer realm=\"chronolog admin\"".to_owned());
    for base in [&query_url, &consumer_url] {
        for (method, path) in routes(&name) {
            let url = format!("{base}{path}");
            assert_eq!(
                call(http, method, &url, None, Some(&body)).await,
                (
                    401,
                    challenge.clone(),
                    json!({"error": "unauthorized", "message": "this route needs Authorization: Bearer <ADMIN_TOKEN>"})
                ),
                "{method} {url} without a token"
            );
            for wrong in [&TOKEN[1..], "admin-token-for-the-tests-0123456788", ""] {
                assert_eq!(
                    call(http, method, &url, Some(wrong), Some(&body)).await,
                    (
                        401,
                        challenge.clone(),
                        json!({"error": "unauthorized", "message": "the bearer token is not the admin token"})
                    ),
                    "{method} {url} with a wrong token"
                );
            }
        }
    }
    // Another scheme is no bearer token.
    let basic = http
        .get(format!("{query_url}/admin/pipelines"))
        .basic_auth("admin", Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);
    // Nothing was stored by the refused requests.
    let mut conn = connect(&settings).await;
    assert_eq!(store::history(&mut conn, &name).await.unwrap(), vec![]);

    // With the token both ports answer, and document the admin routes.
    for (base, served) in [
        (&query_url, &crate::openapi::QUERY[..]),
        (&consumer_url, &[][..]),
    ] {
        let doc = document(http, base).await;
        validate_document(&doc);
        let expected = [&crate::openapi::OPERATIONS[..], served, &ADMIN_ROUTES[..]]
            .concat()
            .iter()
            .map(|r| (*r).to_owned())
            .collect();
        assert_eq!(operations(&doc), expected, "{base}");
        assert_eq!(
            doc["components"]["securitySchemes"]["admin_token"],
            json!({"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"})
        );
        let listed = list(http, base).await;
        assert_eq!(listed, (200, None, json!({"pipelines": []})));
    }

    // Created through the query port (a process without the pipelines),
    // run by the consumer process.
    let url = |base: &str| format!("{base}/admin/pipelines/{name}");
    assert_eq!(
        call(http, "PUT", &url(&query_url), Some(TOKEN), Some(&body)).await,
        (
            201,
            None,
            json!({"name": name, "action": "created", "version": 1})
        )
    );
    let stored = store::get(&mut conn, &name).await.unwrap().expect("stored");
    let mut expected = json!({
        "name": name,
        "version": 1,
        "applied_at": stored.applied_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "definition": {
            "name": name,
            "topics": [settings.kafka_topic],
            "start": "earliest",
            "filters": [".kept = true"],
            "sink": {"type": "postgres", "table": table, "key": ".command_id"},
        },
        "status": null,
        "problem": null,
        "running_version": null,
        "records": null,
        "lag": null,
        "partitions": null,
    });
    let (status, _, shown) = call(http, "GET", &url(&query_url), Some(TOKEN), None).await;
    assert_eq!((status, &shown), (200, &expected));
    let doc = document(http, &query_url).await;
    let schema = &doc["paths"]["/admin/pipelines/{name}"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"];
    check(&doc, schema, &shown, "GET /admin/pipelines/{name}").unwrap();

    // The consumer process runs it: its three partitions, nothing read yet.
    let running = eventually("the consumer process runs the pipeline", || async {
        let (_, _, shown) = call(http, "GET", &url(&consumer_url), Some(TOKEN), None).await;
        let assigned = shown["partitions"].as_array().map_or(0, Vec::len);
        (shown["status"] == "running" && assigned == 3).then_some(shown)
    })
    .await;
    expected["status"] = json!("running");
    expected["running_version"] = json!(1);
    expected["records"] = json!({"in": 0, "out": 0, "dropped": 0, "failed": 0});
    expected["partitions"] = json!((0..3)
        .map(|p| json!({"topic": settings.kafka_topic, "partition": p, "committed": null, "lag": null, "problem": null}))
        .collect::<Vec<_>>());
    assert_eq!(running, expected);
    consumer.stop().await;
    query.stop().await;
}

#[actix_rt::test]
async fn put_creates_updates_refuses_and_delete_ends_with_an_exact_history() {
    let settings = admin_settings().await;
    let app = TestApp::spawn_with(settings.clone(), &[Role::Query]).await;
    let (http, base) = (&app.http, app.query_url());
    let name = unique("admin");
    let url = format!("{base}/admin/pipelines/{name}");
    let topic = settings.kafka_topic.clone();
    let table = table();
    let v1 = definition(&topic, &table, &[".v = 1"]);
    let put = |body: Value| {
        let url = url.clone();
        async move { call(http, "PUT", &url, Some(TOKEN), Some(&body)).await }
    };
    let applied = |status: u16, action: &str, version: i32| {
        (
            status,
            None,
            json!({"name": name, "action": action, "version": version}),
        )
    };

    assert_eq!(put(v1.clone()).await, applied(201, "created", 1));
    // The same again, with the name given: nothing stored.
    let mut named = v1.clone();
    named["name"] = json!(name);
    assert_eq!(put(named).await, applied(200, "unchanged", 1));
    let v2 = definition(&topic, &table, &[".v = 2"]);
    assert_eq!(put(v2.clone()).await, applied(200, "updated", 2));

    // Refusals store nothing; each says why, as `pipelines apply` would.
    let mut other = v2.clone();
    other["name"] = json!("another-name");
    assert_eq!(
        put(other).await,
        (
            422,
            None,
            json!({"error": "name_mismatch", "message": format!("the body names pipeline another-name, the path {name}: they must be the same")})
        )
    );
    let bad_filter = ".b = 2\n.c = upcase(.d)";
    let bad = definition(&topic, &table, &[".v = 3", bad_filter]);
    let mut named_bad = bad.clone();
    named_bad["name"] = json!(name);
    let refusal = Definition::from_json(named_bad).expect_err("refused by apply too");
    let chronolog::pipelines::DefinitionError::Filter { error: place, .. } = &refusal else {
        panic!("not a filter error: {refusal}");
    };
    let message = refusal.to_string();
    assert!(
        message.starts_with(&format!("pipeline {name}: filters[1]:2:6: ")),
        "{message}"
    );
    assert_eq!(
        put(bad).await,
        (
            422,
            None,
            json!({
                "error": "invalid_filter",
                "message": message,
                "filter": 1,
                "line": 2,
                "column": 6,
                "report": place.report,
            })
        )
    );
    let moved = definition(&topic, &format!("{table}_2"), &[".v = 2"]);
    assert_eq!(
        put(moved).await,
        (
            409,
            None,
            json!({
                "error": "immutable_change",
                "message": format!("pipeline {name}: its sink cannot change (postgres table {table} key .command_id to postgres table {table}_2 key .command_id): apply it under a new name, or replay it into a new sink"),
            })
        )
    );
    let mut no_sink = v2.clone();
    no_sink.as_object_mut().unwrap().remove("sink");
    assert_eq!(
        put(no_sink).await,
        (
            422,
            None,
            json!({"error": "invalid_definition", "message": "invalid pipeline definition: missing field `sink`"})
        )
    );
    // A message repeats at most 64 characters of what the client sent.
    let long_table = definition(&topic, &"t".repeat(3000), &[".v = 2"]);
    assert_eq!(
        put(long_table).await,
        (
            422,
            None,
            json!({"error": "invalid_definition", "message": format!(
                "pipeline {name}: sink table \"{}…\": use a lowercase SQL identifier \
                 (a-z or _, then a-z, 0-9 or _, at most 63)",
                "t".repeat(64)
            )})
        )
    );
    let not_json = http
        .put(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("[[pipeline]]")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status().as_u16(), 400);
    assert_eq!(
        call(http, "PUT", &url, Some(TOKEN), Some(&json!(["a"]))).await,
        (
            400,
            None,
            json!({"error": "bad_request", "message": "the body is not a JSON object: send one pipeline's definition"})
        )
    );

    let mut conn = connect(&settings).await;
    let stored = store::get(&mut conn, &name).await.unwrap().expect("stored");
    assert_eq!(stored.version, 2);
    assert_eq!(stored.definition.filters, vec![".v = 2".to_owned()]);

    // Deleted: gone from reads, its history kept.
    assert_eq!(
        call(http, "DELETE", &url, Some(TOKEN), None).await,
        (204, None, Value::Null)
    );
    let unknown = (
        404,
        None,
        json!({"error": "not_found", "message": format!("no pipeline named {name}")}),
    );
    assert_eq!(call(http, "DELETE", &url, Some(TOKEN), None).await, unknown);
    assert_eq!(call(http, "GET", &url, Some(TOKEN), None).await, unknown);
    assert_eq!(
        list(http, &base).await,
        (200, None, json!({"pipelines": []}))
    );

    let versions = store::history(&mut conn, &name).await.unwrap();
    let at = |i: usize| {
        versions[i]
            .applied_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let full = |filter: &str| {
        json!({
            "name": name,
            "topics": [topic],
            "start": "earliest",
            "filters": [filter],
            "sink": {"type": "postgres", "table": table, "key": ".command_id"},
        })
    };
    assert_eq!(
        call(http, "GET", &format!("{url}/history"), Some(TOKEN), None).await,
        (
            200,
            None,
            json!({
                "name": name,
                "versions": [
                    {"version": 1, "action": "created", "applied_at": at(0), "definition": full(".v = 1")},
                    {"version": 2, "action": "updated", "applied_at": at(1), "definition": full(".v = 2")},
                    {"version": 3, "action": "deleted", "applied_at": at(2), "definition": full(".v = 2")},
                ],
            })
        )
    );
    assert_eq!(
        call(
            http,
            "GET",
            &format!("{base}/admin/pipelines/never-used/history"),
            Some(TOKEN),
            None
        )
        .await,
        (
            404,
            None,
            json!({"error": "not_found", "message": "no pipeline named never-used"})
        )
    );
    // The name can be used again: created, its versions counting on.
    assert_eq!(put(v1).await, applied(201, "created", 4));
    app.stop().await;
}

#[actix_rt::test]
async fn get_shows_a_pipeline_running_failing_and_running_again_with_records_and_lag() {
    let app = TestApp::spawn_with(admin_settings().await, &[]).await;
    let (http, base) = (&app.http, app.query_url());
    let name = unique("admin");
    let url = format!("{base}/admin/pipelines/{name}");
    let topic = app.settings.kafka_topic.clone();
    let table = table();
    let body = definition(
        &topic,
        &table,
        &["if starts_with(string!(.event_timestamp), \"19\") { abort }"],
    );
    assert_eq!(
        call(http, "PUT", &url, Some(TOKEN), Some(&body)).await.0,
        201
    );

    // Four commands, one of which the filter drops; the next offset of
    // each partition they went to.
    let mut next: BTreeMap<i64, i64> = BTreeMap::new();
    for at in [
        "2009-09-28T19:03:12Z",
        "1999-12-31T23:59:59Z",
        "2024-02-29T00:00:00Z",
        "2030-01-01T00:00:00Z",
    ] {
        let response = app.post(Some(at), None).await;
        assert_eq!(response.status().as_u16(), 202);
        let accepted: Value = response.json().await.unwrap();
        let (partition, offset) = (
            accepted["partition"].as_i64().unwrap(),
            accepted["offset"].as_i64().unwrap(),
        );
        let entry = next.entry(partition).or_default();
        *entry = (*entry).max(offset + 1);
    }
    let partitions: Vec<Value> = (0..3)
        .map(|p| {
            let committed = next.get(&p).copied();
            json!({
                "topic": topic,
                "partition": p,
                "committed": committed,
                "lag": committed.map(|_| 0),
                "problem": null,
            })
        })
        .collect();

    let shown = eventually("every record through the pipeline", || async {
        let (status, _, shown) = call(http, "GET", &url, Some(TOKEN), None).await;
        assert_eq!(status, 200, "{shown}");
        (shown["partitions"] == json!(partitions) && shown["records"]["out"] == 3).then_some(shown)
    })
    .await;
    assert_eq!(shown["status"], "running");
    assert_eq!(shown["version"], 1);
    assert_eq!(shown["running_version"], 1);
    assert_eq!(
        shown["records"],
        json!({"in": 4, "out": 3, "dropped": 1, "failed": 0})
    );
    assert_eq!(shown["lag"], 0);
    assert_eq!(shown["partitions"], json!(partitions));

    // The list shows the same, without asking the broker for the lag.
    let (status, _, listing) = list(http, &base).await;
    assert_eq!(status, 200);
    let mut listed = shown.clone();
    listed["lag"] = Value::Null;
    for partition in listed["partitions"].as_array_mut().unwrap() {
        partition["lag"] = Value::Null;
    }
    assert_eq!(listing, json!({"pipelines": [listed]}));

    // A write that fails blocks its partition, retrying: the pipeline is
    // failing, and says where; once the write can succeed it runs again.
    let mut conn = connect(&app.settings).await;
    diesel::sql_query(format!(
        "ALTER TABLE {table} ADD CONSTRAINT refuse_all CHECK (false) NOT VALID"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let response = app.post(Some("2031-01-01T00:00:00Z"), None).await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let blocked = accepted["partition"].as_i64().unwrap();
    let failing = eventually("the pipeline failing", || async {
        let (_, _, shown) = call(http, "GET", &url, Some(TOKEN), None).await;
        (shown["status"] == "failing").then_some(shown)
    })
    .await;
    let problems: Vec<(i64, Value)> = failing["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partition"].as_i64().unwrap(), p["problem"].clone()))
        .collect();
    // The blocked partition's problem names the write's last error.
    let refused = format!(
        "retrying a failed write: database query failed: new row for relation \"{table}\" \
         violates check constraint \"refuse_all\""
    );
    assert_eq!(
        problems,
        (0..3)
            .map(|p| {
                let problem = (p == blocked).then_some(refused.as_str());
                (p, json!(problem))
            })
            .collect::<Vec<_>>()
    );
    // The partition's series are the pipeline group's own: the view reads
    // the same partition, commits the record the pipeline cannot write, and
    // is not shown as blocked.
    let metrics = app.metrics();
    let series = |group: &str| [group.to_owned(), topic.clone(), blocked.to_string()];
    let (pipeline_group, view_group) = (
        chronolog::engine::pipeline_manager::group_id(&name, 1),
        app.settings.kafka_group_id.clone(),
    );
    let after = accepted["offset"].as_i64().unwrap() + 1;
    eventually("the view commits the record", || async {
        let view = metrics
            .committed_offset
            .with_label_values(&series(&view_group));
        (view.get() == after).then_some(())
    })
    .await;
    let gauges = |group: &str| {
        (
            metrics
                .partition_blocked
                .with_label_values(&series(group))
                .get(),
            metrics
                .committed_offset
                .with_label_values(&series(group))
                .get(),
        )
    };
    assert_eq!(gauges(&view_group), (0, after));
    assert_eq!(
        gauges(&pipeline_group),
        (1, next.get(&blocked).copied().unwrap_or(0))
    );

    // The lag gauge, measured from outside the group, counts the blocked
    // record; it is back at 0 below.
    let gauge =
        |records: i64| format!("chronolog_pipeline_lag_records{{pipeline=\"{name}\"}} {records}\n");
    eventually("the pipeline's lag gauge at 1", || async {
        app.metrics().render().contains(&gauge(1)).then_some(())
    })
    .await;
    diesel::sql_query(format!("ALTER TABLE {table} DROP CONSTRAINT refuse_all"))
        .execute(&mut conn)
        .await
        .unwrap();
    let recovered = eventually("the pipeline running again", || async {
        let (_, _, shown) = call(http, "GET", &url, Some(TOKEN), None).await;
        (shown["status"] == "running" && shown["records"]["out"] == 4).then_some(shown)
    })
    .await;
    assert_eq!(
        recovered["records"],
        json!({"in": 5, "out": 4, "dropped": 1, "failed": 0})
    );
    assert_eq!(recovered["lag"], 0);
    eventually("the pipeline's lag gauge back at 0", || async {
        app.metrics().render().contains(&gauge(0)).then_some(())
    })
    .await;

    // Deleted, it stops in this process: gone from reads, and once its
    // consumers have stopped, its group's committed offsets are no series.
    let series = format!("chronolog_committed_offset{{group=\"{pipeline_group}\"");
    assert!(app.metrics().render().contains(&series));
    assert_eq!(call(http, "DELETE", &url, Some(TOKEN), None).await.0, 204);
    assert_eq!(call(http, "GET", &url, Some(TOKEN), None).await.0, 404);
    eventually("the deleted pipeline's committed offsets gone", || async {
        let shown = app.metrics().render();
        (!shown.contains(&series)
            && shown.contains(&format!(
                "chronolog_committed_offset{{group=\"{view_group}\""
            )))
        .then_some(())
    })
    .await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_pipeline_whose_table_cannot_take_its_rows_waits_failing_until_the_table_is_mended() {
    let app = TestApp::spawn_with(admin_settings().await, &[]).await;
    let (http, base) = (&app.http, app.query_url());
    let mut conn = connect(&app.settings).await;
    // Tables made by hand under the names of two pipelines' sinks: one
    // without a unique key (a batch, inserted first, would take a key
    // twice), one without two columns; a third pipeline's table is made by
    // chronolog.
    let (unkeyed, narrow, fresh) = (table(), table(), table());
    diesel::sql_query(format!(
        "CREATE TABLE {unkeyed} (key text, doc jsonb, source_topic text, \
         source_partition int, source_offset bigint, pipeline_version int, \
         written_at timestamptz DEFAULT now())"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(format!(
        "CREATE TABLE {narrow} (key text PRIMARY KEY, doc jsonb, source_topic text, \
         source_partition int, source_offset bigint)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let names = [unique("admin"), unique("admin"), unique("admin")];
    for (name, table) in names.iter().zip([&unkeyed, &narrow, &fresh]) {
        let body = definition(&app.settings.kafka_topic, table, &[]);
        let url = format!("{base}/admin/pipelines/{name}");
        assert_eq!(
            call(http, "PUT", &url, Some(TOKEN), Some(&body)).await.0,
            201
        );
    }
    let mut expected = Vec::new();
    for _ in 0..5 {
        expected.push(app.accept(Some("2009-09-28T19:03:12Z")).await.to_string());
    }
    expected.sort();

    // The pipeline with a good table runs and writes every record; the
    // other two say why they do not start, and have written nothing.
    eventually("the fresh table holds every record", || async {
        (keys(&app.settings, &fresh).await.ok()? == expected).then_some(())
    })
    .await;
    let shown = |name: &String| {
        let url = format!("{base}/admin/pipelines/{name}");
        async move { call(http, "GET", &url, Some(TOKEN), None).await.2 }
    };
    let problem = |table: &String, why: &str| {
        json!(format!(
            "table \"{table}\" cannot take the pipeline's rows: {why}"
        ))
    };
    for (name, table, why) in [
        (
            &names[0],
            &unkeyed,
            "it has no usable unique index on (key) alone, so a later record could not \
             replace its key's row",
        ),
        (
            &names[1],
            &narrow,
            "it has no column pipeline_version, written_at",
        ),
    ] {
        let view = shown(name).await;
        assert_eq!(
            (&view["status"], &view["problem"], &view["running_version"]),
            (&json!("failing"), &problem(table, why), &Value::Null),
            "{view}"
        );
        assert_eq!(view["partitions"], json!([]));
        assert_eq!(
            keys(&app.settings, table).await.unwrap(),
            Vec::<String>::new()
        );
    }
    assert_eq!(shown(&names[2]).await["problem"], Value::Null);

    // Mended, the first starts without a change to its definition and
    // writes every record once; the second still waits.
    diesel::sql_query(format!("ALTER TABLE {unkeyed} ADD PRIMARY KEY (key)"))
        .execute(&mut conn)
        .await
        .unwrap();
    eventually("the mended table holds every record", || async {
        (keys(&app.settings, &unkeyed).await.ok()? == expected).then_some(())
    })
    .await;
    let view = shown(&names[0]).await;
    assert_eq!(
        (&view["status"], &view["problem"], &view["version"]),
        (&json!("running"), &Value::Null, &json!(1)),
        "{view}"
    );
    assert_eq!(shown(&names[1]).await["status"], "failing");
    let version_gauge = |name: &str| format!("chronolog_pipeline_version{{pipeline=\"{name}\"}}");
    assert!(!app.metrics().render().contains(&version_gauge(&names[1])));

    // Deleted while it waits: gone from the list; the mended one runs on,
    // with its version gauge.
    let url = format!("{base}/admin/pipelines/{}", names[1]);
    assert_eq!(call(http, "DELETE", &url, Some(TOKEN), None).await.0, 204);
    let listed = eventually("the deleted pipeline gone from the list", || async {
        let (_, _, listing) = list(http, &base).await;
        let names: Vec<String> = listing["pipelines"]
            .as_array()?
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        (names.len() == 2).then_some(names)
    })
    .await;
    let mut expected = vec![names[0].clone(), names[2].clone()];
    expected.sort();
    let mut listed = listed;
    listed.sort();
    assert_eq!(listed, expected);
    assert!(app.metrics().render().contains(&version_gauge(&names[0])));
    app.stop().await;
}

#[actix_rt::test]
async fn a_change_of_start_alone_is_taken_in_place_without_restarting_the_consumers() {
    let app = TestApp::spawn_with(admin_settings().await, &[]).await;
    let (http, base) = (&app.http, app.query_url());
    let url = format!("{base}/admin/pipelines/{}", unique("admin"));
    let mut body = definition(&app.settings.kafka_topic, &table(), &[]);
    assert_eq!(
        call(http, "PUT", &url, Some(TOKEN), Some(&body)).await.0,
        201
    );
    for _ in 0..6 {
        app.accept(None).await;
    }
    let shown = || async { call(http, "GET", &url, Some(TOKEN), None).await.2 };
    let before = eventually("every record through the pipeline", || async {
        let view = shown().await;
        (view["records"]["out"] == 6).then_some(view)
    })
    .await;
    let committed = |view: &Value| {
        view["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["partition"].clone(), p["committed"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(committed(&before).len(), 3);

    // Where a new group starts means nothing to this one's: version 2 runs
    // on the same consumers, which keep their partitions and positions (a
    // restarted consumer shows none until its first batch).
    body["start"] = json!("latest");
    let (status, _, changed) = call(http, "PUT", &url, Some(TOKEN), Some(&body)).await;
    assert_eq!((status, &changed["version"]), (200, &json!(2)), "{changed}");
    let after = eventually("version 2 running", || async {
        let view = shown().await;
        (view["running_version"] == 2).then_some(view)
    })
    .await;
    assert_eq!(committed(&after), committed(&before));
    assert_eq!(after["records"], before["records"]);
    app.stop().await;
}
