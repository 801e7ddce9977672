//! The `chronolog` binary as an operator runs it: configuration errors,
//! JSON logs carrying the correlation id on both sides, graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use crate::helpers::{brokers, create_database, eventually, unique};

const BIN: &str = env!("CARGO_BIN_EXE_chronolog");

#[test]
fn a_bad_setting_stops_the_start_with_a_message_naming_the_variable() {
    let cases = [
        ("KAFKA_PARTITIONS", "abc"),
        ("KAFKA_PARTITIONS", "0"),
        ("KAFKA_TOPIC", "has space"),
        ("KAFKA_BROKERS", ""),
        ("COMMAND_ADDR", "nowhere"),
        ("QUERY_ADDR", "127.0.0.1:99999"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("DELIVERY_TIMEOUT", "soon"),
        ("DATABASE_POOL_SIZE", "0"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "chronolog=[bad"),
        ("CHRONOLOG_ROLES", "janitor"),
    ];
    for (variable, value) in cases {
        let output = Command::new(BIN)
            .arg("serve")
            .env(variable, value)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{variable}={value:?} must stop the start"
        );
        assert!(
            stderr.contains(variable),
            "{variable}={value:?}: message does not name it: {stderr}"
        );
    }
}

struct Running {
    child: std::process::Child,
    topic: String,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Running {
    fn addr_of(&self, server: &str) -> Option<String> {
        self.lines.lock().unwrap().iter().find_map(|l| {
            (l["message"] == "listening" && l["server"] == server)
                .then(|| l["addr"].as_str().unwrap_or_default().to_owned())
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn start(database_url: &str) -> Running {
    let topic = unique("chronolog-bin");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--command-addr",
            "127.0.0.1:0",
            "--query-addr",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", database_url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_GROUP_ID", format!("{topic}-projector"))
        .env("KAFKA_PARTITIONS", "2")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let parsed = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            sink.lock().unwrap().push(parsed);
        }
    });
    Running {
        child,
        topic,
        lines,
    }
}

#[actix_rt::test]
async fn json_logs_carry_the_correlation_id_on_both_sides_and_sigterm_exits_cleanly() {
    let database_url = create_database().await;
    let mut running = start(&database_url);
    let (command, query) = eventually("the binary listens", || async {
        Some((running.addr_of("command")?, running.addr_of("query")?))
    })
    .await;
    let http = reqwest::Client::new();
    let correlation_id = format!("it-{}", Uuid::new_v4());
    let response = http
        .post(format!(
            "http://{command}/api/v1/timestamp/2009-09-28T19:03:12Z"
        ))
        .header("correlationId", &correlation_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    eventually("the record is visible", || async {
        let status = http
            .get(format!("http://{query}/api/v1/timestamp/{id}"))
            .send()
            .await
            .ok()?
            .status();
        (status == 200).then_some(())
    })
    .await;
    let projected = eventually("the consumer logged the record", || async {
        running
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["message"] == "record projected" && l["command_id"] == id.as_str())
            .cloned()
    })
    .await;
    assert_eq!(
        projected["correlation_id"],
        correlation_id.as_str(),
        "{projected}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = crate::helpers::wait_for_exit(&mut running.child).await;
    assert!(exit.success(), "SIGTERM is a clean exit: {exit}");

    let lines = running.lines.lock().unwrap();
    let about_command: Vec<_> = lines
        .iter()
        .filter(|l| l.to_string().contains(&id))
        .collect();
    assert!(about_command.len() >= 2, "{about_command:?}");
    for line in &about_command {
        assert!(
            line.to_string().contains(&correlation_id),
            "a line about the command lacks its correlation id: {line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "command accepted" && l["command_id"] == id.as_str())
    );
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
}

#[actix_rt::test]
async fn sigterm_under_load_answers_what_is_in_flight_and_loses_no_acknowledged_command() {
    let database_url = create_database().await;
    let running = start(&database_url);
    let command = eventually("the binary listens", || async {
        running.addr_of("command")
    })
    .await;
    let topic = running.topic.clone();
    let http = reqwest::Client::new();
    let url = format!("http://{command}/api/v1/timestamp/2009-09-28T19:03:12Z");
    let first = http.post(&url).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 202);

    let requests = futures::future::join_all((0..200).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            match http.post(url).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Option<serde_json::Value> = response.json().await.ok();
                    Some((status, body))
                }
                // Refused or reset once the server stopped accepting.
                Err(_) => None,
            }
        }
    }));
    let pid = running.child.id().to_string();
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let (answers, ()) = futures::join!(requests, terminate);
    let mut running = running;
    let exit = crate::helpers::wait_for_exit(&mut running.child).await;
    assert!(exit.success(), "{exit}");

    let mut acknowledged = vec![first.json::<serde_json::Value>().await.ok()];
    for (status, body) in answers.into_iter().flatten() {
        assert!(
            status == 202,
            "a request in flight at SIGTERM is answered 202, got {status}"
        );
        acknowledged.push(body);
    }
    let acknowledged: std::collections::HashSet<String> = acknowledged
        .into_iter()
        .map(|b| {
            b.and_then(|b| b["id"].as_str().map(str::to_owned))
                .expect("a 202 has an id")
        })
        .collect();
    let in_log: std::collections::HashSet<String> = crate::helpers::read_topic(&topic)
        .await
        .iter()
        .map(|m| crate::helpers::describe(m).1)
        .collect();
    let lost: Vec<_> = acknowledged.difference(&in_log).collect();
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
}
