//! Passwords never leave chronolog: the real binary runs with a
//! password-protected database URL, a SASL password and a secret
//! `KAFKA_OPTION_*` value and an `ADMIN_TOKEN`, in working and failing
//! configurations, and none of them may appear on stdout, stderr, `/ready` or an error body.

use crate::helpers::{brokers, eventually, unique};
use crate::secure_rig::{Chronolog, TlsBroker, TlsPostgres};

/// Environment variables of one chronolog process.
type Env = Vec<(&'static str, String)>;

/// The secrets of one test; none may appear in what chronolog shows.
struct Secrets(Vec<String>);

impl Secrets {
    fn assert_absent(&self, what: &str, text: &str) {
        for secret in &self.0 {
            assert!(
                !text.contains(secret.as_str()),
                "{what}: the secret {secret:?} appears in:\n{text}"
            );
        }
    }
}

/// A database that wants a password, a broker that wants SASL over TLS.
struct Rig {
    pg: TlsPostgres,
    broker: TlsBroker,
    sasl_password: String,
    option_secret: String,
    admin_token: String,
}

impl Rig {
    fn start() -> Self {
        let sasl_password = unique("sasl-secret");
        Self {
            pg: TlsPostgres::start(),
            broker: TlsBroker::start(Some(("chronolog", &sasl_password))),
            sasl_password,
            option_secret: unique("option-secret"),
            admin_token: unique("admin-secret"),
        }
    }

    fn secrets(&self) -> Secrets {
        Secrets(vec![
            self.pg.password.clone(),
            self.sasl_password.clone(),
            self.option_secret.clone(),
            self.admin_token.clone(),
        ])
    }

    fn database_url(&self) -> String {
        self.pg.url(
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                self.pg.ca.cert().display()
            ),
        )
    }

    /// A working configuration, with librdkafka's own configuration dump
    /// and chronolog's debug logs on.
    fn env(&self) -> Env {
        let topic = unique("chronolog-secrets");
        vec![
            ("DATABASE_URL", self.database_url()),
            ("KAFKA_BROKERS", self.broker.brokers.clone()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", format!("{topic}-projector")),
            ("KAFKA_TOPIC_RETENTION_MS", i64::MAX.to_string()),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".into()),
            (
                "KAFKA_SSL_CA_LOCATION",
                self.broker.ca.cert().display().to_string(),
            ),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
            ("KAFKA_SASL_USERNAME", "chronolog".into()),
            ("KAFKA_SASL_PASSWORD", self.sasl_password.clone()),
            // Unused without a client key, but a secret all the same.
            ("KAFKA_OPTION_SSL_KEY_PASSWORD", self.option_secret.clone()),
            ("KAFKA_OPTION_DEBUG", "security,conf".into()),
            ("LOG_LEVEL", "debug".into()),
            ("DRAIN_TIMEOUT", "2s".into()),
            ("ADMIN_TOKEN", self.admin_token.clone()),
        ]
    }
}

fn with(env: &Env, changes: &[(&'static str, &str)]) -> Env {
    let mut env: Vec<_> = env
        .iter()
        .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
        .cloned()
        .collect();
    env.extend(changes.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

fn without(env: &Env, name: &str) -> Env {
    env.iter().filter(|(k, _)| *k != name).cloned().collect()
}

/// GET or POST `url`: "STATUS BODY".
async fn fetch(http: &reqwest::Client, post: bool, url: String) -> String {
    let request = if post { http.post(url) } else { http.get(url) };
    let response = request.send().await.expect("chronolog answers");
    format!(
        "{} {}",
        response.status().as_u16(),
        response.text().await.expect("body")
    )
}

#[actix_rt::test]
async fn a_working_configuration_never_shows_a_password() {
    let rig = Rig::start();
    let secrets = rig.secrets();
    let mut chronolog = Chronolog::serve(&rig.env());
    let command = chronolog.url("command").await;
    let query = chronolog.url("query").await;
    let http = reqwest::Client::new();

    let accepted = fetch(
        &http,
        true,
        format!("{command}/api/v1/timestamp/2009-09-28T19:03:12Z"),
    )
    .await;
    assert!(accepted.starts_with("202 "), "{accepted}");
    let body: serde_json::Value = serde_json::from_str(&accepted[4..]).expect("JSON");
    let id = body["id"].as_str().expect("an id").to_owned();
    eventually("the record in the view", || {
        let (http, url) = (http.clone(), format!("{query}/api/v1/timestamp/{id}"));
        async move {
            fetch(&http, false, url)
                .await
                .starts_with("200 ")
                .then_some(())
        }
    })
    .await;

    let mut shown = Vec::new();
    for url in [format!("{command}/ready"), format!("{query}/ready")] {
        let ready = fetch(&http, false, url).await;
        assert!(ready.starts_with("200 "), "{ready}");
        shown.push(ready);
    }
    let bad_id = fetch(&http, false, format!("{query}/api/v1/timestamp/not-an-id")).await;
    assert!(bad_id.starts_with("400 "), "{bad_id}");
    let bad_time = fetch(&http, true, format!("{command}/api/v1/timestamp/yesterday")).await;
    assert!(bad_time.starts_with("400 "), "{bad_time}");
    shown.extend([bad_id, bad_time]);
    // The admin API, with the token and with a wrong one.
    for (token, status) in [
        (rig.admin_token.as_str(), "200 "),
        ("wrong-admin-token", "401 "),
    ] {
        let response = http
            .get(format!("{query}/admin/pipelines"))
            .bearer_auth(token)
            .send()
            .await
            .expect("chronolog answers");
        let answer = format!(
            "{} {}",
            response.status().as_u16(),
            response.text().await.expect("body")
        );
        assert!(answer.starts_with(status), "{answer}");
        shown.push(answer);
    }

    // The database goes away: /ready reports it, the writer logs it.
    rig.pg.stop();
    let down = eventually("/ready to report the database down", || {
        let (http, url) = (http.clone(), format!("{query}/ready"));
        async move {
            let ready = fetch(&http, false, url).await;
            ready.starts_with("503 ").then_some(ready)
        }
    })
    .await;
    let body: serde_json::Value = serde_json::from_str(&down[4..]).expect("JSON");
    assert_eq!(body["components"]["database"]["status"], "DOWN", "{down}");
    shown.push(down);

    chronolog.terminate().await;
    let output = chronolog.output();
    // librdkafka dumped its configuration, with the secrets masked.
    for masked in [
        "sasl.password = [redacted]",
        "ssl.key.password = [redacted]",
    ] {
        assert!(output.contains(masked), "{masked}:\n{output}");
    }
    for (what, text) in shown.iter().map(|s| ("an HTTP answer", s.as_str())) {
        secrets.assert_absent(what, text);
    }
    secrets.assert_absent("stdout or stderr", &output);
}

#[actix_rt::test]
async fn failing_configurations_never_show_a_password() {
    let rig = Rig::start();
    let env = rig.env();
    let url = rig.database_url();
    let wrong_password = url.replace(&rig.pg.password, "wrong-pg-secret");
    let unreachable = rig
        .pg
        .url("127.0.0.1", "sslmode=require")
        .replace(&format!(":{}/", url_port(&url)), ":1/");
    let bad_scheme = url.replace("postgres://", "mysql://");
    let unencoded_at = url.replace(&rig.pg.password, "pa@ss-pg-secret");
    let redacted = url.replace(&rig.pg.password, "***");
    let secrets = Secrets(
        rig.secrets()
            .0
            .into_iter()
            .chain([
                "wrong-pg-secret".into(),
                "ss-pg-secret".into(),
                "short-admin-sec".into(),
            ])
            .collect(),
    );

    let cases: Vec<(&str, Env, i32, String)> = vec![
        (
            "a wrong database password",
            with(&env, &[("DATABASE_URL", &wrong_password)]),
            1,
            format!(
                "Caused by:\n    database migration failed: cannot connect to {} (sslmode=verify-full): db error: FATAL: password authentication failed for user \"postgres\"",
                wrong_password.replace("wrong-pg-secret", "***")
            ),
        ),
        (
            "an unreachable database",
            with(&env, &[("DATABASE_URL", &unreachable)]),
            1,
            "error connecting to server: Connection refused".into(),
        ),
        (
            "a database URL with a bad scheme",
            with(&env, &[("DATABASE_URL", &bad_scheme)]),
            2,
            "error: invalid value for '--database-url <DATABASE_URL>' (not shown: it may hold a password): expected a URL starting with postgres:// or postgresql://".into(),
        ),
        (
            "an '@' in the password",
            with(&env, &[("DATABASE_URL", &unencoded_at)]),
            2,
            "more than one '@': write an '@' inside the user name or password as %40".into(),
        ),
        (
            "an option librdkafka refuses",
            with(&env, &[("KAFKA_OPTION_ACKS", &rig.option_secret)]),
            1,
            "Error: KAFKA_OPTION_ACKS: librdkafka refuses `acks` (value not shown): Invalid value for configuration property \"request.required.acks\"".into(),
        ),
        (
            "an admin token too short",
            with(&env, &[("ADMIN_TOKEN", "short-admin-sec")]),
            2,
            "error: invalid value for '--admin-token <ADMIN_TOKEN>' (not shown: it is a secret): use at least 16 characters".into(),
        ),
        (
            "a wrong SASL password",
            with(&env, &[("KAFKA_SASL_PASSWORD", "wrong-sasl-secret")]),
            1,
            "Error: KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD: the brokers refused to authenticate chronolog (KAFKA_SASL_MECHANISM=SCRAM-SHA-512): ".into(),
        ),
        (
            "SASL against a plaintext broker",
            without(
                &with(
                    &env,
                    &[
                        ("KAFKA_BROKERS", &brokers()),
                        ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                    ],
                ),
                "KAFKA_SSL_CA_LOCATION",
            ),
            1,
            "SASL SCRAM-SHA-512 mechanism handshake failed: Broker: Unsupported SASL mechanism".into(),
        ),
        (
            "a SASL password without SASL",
            without(
                &with(&env, &[("KAFKA_SECURITY_PROTOCOL", "ssl")]),
                "KAFKA_SASL_USERNAME",
            ),
            1,
            "Error: KAFKA_SASL_PASSWORD: set, but KAFKA_SECURITY_PROTOCOL=ssl does not use SASL (sasl_plaintext or sasl_ssl do)".into(),
        ),
    ];
    for (case, env, code, message) in cases {
        let mut chronolog = Chronolog::serve(&env);
        let exit = chronolog.exit().await;
        let output = chronolog.output();
        assert_eq!(exit.code(), Some(code), "{case}:\n{output}");
        assert!(
            chronolog.stderr().contains(&message),
            "{case}: expected {message:?} in:\n{output}"
        );
        secrets.assert_absent(case, &output);
    }
    // The redacted form is what the messages show.
    let mut chronolog = Chronolog::start(
        &["migrate"],
        &[("DATABASE_URL", &url.replace("localhost", "127.0.0.1"))],
    );
    chronolog.exit().await;
    let stderr = chronolog.stderr();
    assert!(
        stderr.contains(&redacted.replace("localhost", "127.0.0.1")),
        "{stderr}"
    );
    secrets.assert_absent("migrate", &stderr);
}

/// The port in a `postgres://user:pw@host:port/db` URL.
fn url_port(url: &str) -> &str {
    let after_host = url.rsplit_once('@').expect("user info").1;
    let (_, rest) = after_host.split_once(':').expect("a port");
    rest.split_once('/').expect("a database").0
}
