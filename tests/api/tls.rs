//! Secure connections for real: Kafka over TLS (and SASL) through stunnel in
//! front of tansu, PostgreSQL requiring TLS with a certificate from a test
//! CA. The `chronolog` binary is run as an operator would, configured by
//! environment variables only.

use uuid::Uuid;

use crate::helpers::{brokers, create_database, eventually, unique};
use crate::secure_rig::{Chronolog, TestCa, TlsBroker, TlsPostgres};

/// The environment of a `chronolog serve` with a fresh topic.
fn serve_env(database_url: &str, brokers: &str, topic: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("KAFKA_TOPIC", topic.to_owned()),
        ("KAFKA_GROUP_ID", format!("{topic}-projector")),
        ("KAFKA_PARTITIONS", "2".to_owned()),
        // tansu 0.6.0 deletes every record of a topic whose retention.ms is -1.
        ("KAFKA_TOPIC_RETENTION_MS", i64::MAX.to_string()),
    ]
}

/// Posts one command, reads it back through the query API, and checks that
/// every dependency is ready and the lag probe measured both partitions;
/// then stops chronolog with SIGTERM, which must exit cleanly.
async fn a_command_reaches_the_view(mut chronolog: Chronolog, topic: &str) {
    let command = chronolog.url("command").await;
    let query = chronolog.url("query").await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{command}/api/v1/timestamp/2009-09-28T19:03:12Z"))
        .send()
        .await
        .expect("the command API answers");
    assert_eq!(response.status().as_u16(), 202, "{}", chronolog.output());
    let body: serde_json::Value = response.json().await.expect("JSON");
    let id = Uuid::parse_str(body["id"].as_str().expect("an id")).expect("a UUID");

    let record: serde_json::Value = eventually("the record in the view", || {
        let http = http.clone();
        let url = format!("{query}/api/v1/timestamp/{id}");
        async move {
            let response = http.get(url).send().await.expect("the query API answers");
            match response.status().as_u16() {
                200 => Some(response.json().await.expect("JSON")),
                404 => None,
                other => panic!("unexpected status {other}"),
            }
        }
    })
    .await;
    assert_eq!(record["id"], id.to_string());
    assert_eq!(record["event_timestamp"], "2009-09-28T19:03:12Z");

    for url in [&command, &query] {
        let response = http
            .get(format!("{url}/ready"))
            .send()
            .await
            .expect("ready");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "UP", "{body}");
    }
    // The lag monitor's clients reach the broker too.
    let expected = [0, 1].map(|p| {
        format!("chronolog_consumer_lag_records{{partition=\"{p}\",topic=\"{topic}\"}} 0")
    });
    eventually("lag measured on both partitions", || {
        let http = http.clone();
        let url = format!("{command}/metrics");
        let expected = expected.clone();
        async move {
            let text = http.get(url).send().await.ok()?.text().await.ok()?;
            expected
                .iter()
                .all(|line| text.contains(line))
                .then_some(())
        }
    })
    .await;

    let exit = chronolog.terminate().await;
    assert!(exit.success(), "exit {exit}:\n{}", chronolog.output());
}

#[actix_rt::test]
async fn kafka_over_tls_carries_a_command_into_the_view() {
    let broker = TlsBroker::start(None);
    let database_url = create_database().await;
    let topic = unique("chronolog-tls");
    let ca = broker.ca.cert();
    let mut env = serve_env(&database_url, &broker.brokers, &topic);
    env.push(("KAFKA_SECURITY_PROTOCOL", "ssl".into()));
    env.push(("KAFKA_SSL_CA_LOCATION", ca.display().to_string()));
    a_command_reaches_the_view(Chronolog::serve(&env), &topic).await;
}

#[actix_rt::test]
async fn kafka_with_the_wrong_ca_stops_the_start_naming_the_tls_failure() {
    let broker = TlsBroker::start(None);
    let wrong = TestCa::new(broker.dir(), "wrong");
    let database_url = create_database().await;
    let mut env = serve_env(&database_url, &broker.brokers, &unique("chronolog-tls"));
    env.push(("KAFKA_SECURITY_PROTOCOL", "ssl".into()));
    env.push(("KAFKA_SSL_CA_LOCATION", wrong.cert().display().to_string()));
    let mut chronolog = Chronolog::serve(&env);
    let exit = chronolog.exit().await;
    let stderr = chronolog.stderr();
    assert_eq!(exit.code(), Some(1), "{}", chronolog.output());
    assert!(
        stderr.starts_with(&format!(
            "Error: KAFKA_SSL_CA_LOCATION: the TLS handshake with the brokers failed (KAFKA_SECURITY_PROTOCOL=ssl): ssl://{}/bootstrap: SSL handshake failed: ",
            broker.brokers
        )),
        "{stderr}"
    );
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
}

#[actix_rt::test]
async fn kafka_over_sasl_ssl_with_scram_carries_a_command_into_the_view() {
    let password = unique("sasl-secret");
    let broker = TlsBroker::start(Some(("chronolog", &password)));
    let database_url = create_database().await;
    let topic = unique("chronolog-sasl");
    let ca = broker.ca.cert();
    let mut env = serve_env(&database_url, &broker.brokers, &topic);
    env.extend([
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
        ("KAFKA_SSL_CA_LOCATION", ca.display().to_string()),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".to_owned()),
        ("KAFKA_SASL_USERNAME", "chronolog".to_owned()),
        ("KAFKA_SASL_PASSWORD", password.clone()),
    ]);
    a_command_reaches_the_view(Chronolog::serve(&env), &topic).await;
}

#[actix_rt::test]
async fn postgres_with_verify_full_and_the_right_ca_works_end_to_end() {
    let pg = TlsPostgres::start();
    let ca = pg.ca.cert();
    // The certificate names `localhost`: verify-full checks it.
    let url = pg.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let topic = unique("chronolog-pg-tls");
    let env = serve_env(&url, &brokers(), &topic);
    a_command_reaches_the_view(Chronolog::serve(&env), &topic).await;
}

/// `chronolog migrate` against `url`: (exit code, stderr).
async fn migrate(url: &str) -> (Option<i32>, String) {
    let mut chronolog = Chronolog::start(&["migrate"], &[("DATABASE_URL", url)]);
    let exit = chronolog.exit().await;
    (exit.code(), chronolog.stderr())
}

#[actix_rt::test]
async fn postgres_sslmodes_follow_libpq() {
    let pg = TlsPostgres::start();
    let ca = pg.ca.cert();
    let ca = ca.display();
    let wrong = TestCa::new(pg.dir(), "wrong");
    let wrong = wrong.cert();
    let wrong = wrong.display();

    // The server requires TLS, so each success proves TLS was used.
    for params in [
        // Chain only: the certificate names localhost, not 127.0.0.1.
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        // Encrypted, nothing checked (libpq without a root certificate).
        "sslmode=require".to_owned(),
        // TLS because the server offers it.
        "sslmode=prefer".to_owned(),
        "".to_owned(),
    ] {
        let (code, stderr) = migrate(&pg.url("127.0.0.1", &params)).await;
        assert_eq!(code, Some(0), "{params}: {stderr}");
    }

    let failures = [
        (
            pg.url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={wrong}"),
            ),
            "certificate verify failed",
        ),
        // With a root certificate, libpq checks the chain even for require.
        (
            pg.url("127.0.0.1", &format!("sslmode=require&sslrootcert={wrong}")),
            "certificate verify failed",
        ),
        // The certificate does not name 127.0.0.1.
        (
            pg.url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "IP address mismatch",
        ),
        (
            pg.url("127.0.0.1", "sslmode=disable"),
            "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption",
        ),
    ];
    for (url, why) in failures {
        let (code, stderr) = migrate(&url).await;
        assert_eq!(code, Some(1), "{url}: {stderr}");
        let redacted = url.replace(&pg.password, "***");
        let (_, params) = redacted.split_once('?').unwrap();
        assert!(
            stderr.starts_with(&format!(
                "Error: database migration failed: cannot connect to {redacted} (sslmode={}): ",
                params
                    .split('&')
                    .find_map(|p| p.strip_prefix("sslmode="))
                    .unwrap()
            )),
            "{stderr}"
        );
        assert!(stderr.contains(why), "{url}: {stderr}");
    }

    // A wrong root certificate path stops the start before any connection.
    let (code, stderr) = migrate(&pg.url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: invalid value for '--database-url <DATABASE_URL>' (not shown: it may hold a password): sslrootcert /nonexistent/ca.pem: cannot read it: No such file or directory"
        ),
        "{stderr}"
    );
}
