//! The HTTP edge under hostile and careless clients: methods, framing,
//! bodies, slow readers, `/ready` bursts, and what reaches the logs.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::helpers::{
    BIN, ChildProcess, DEADLINE, PrivatePostgres, TestApp, brokers, eventually, read_topic, unique,
};

/// The methods the `method` label may take.
const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

fn host(base_url: &str) -> String {
    base_url.trim_start_matches("http://").to_owned()
}

/// One HTTP/1.1 answer read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A client speaking raw bytes, to send what HTTP libraries refuse to.
struct Raw {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Raw {
    async fn connect(host: &str) -> Self {
        Self {
            stream: TcpStream::connect(host).await.unwrap(),
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no byte and no close within {DEADLINE:?}"),
        }
    }

    /// The next answer, or `None` when the server closed the connection first.
    async fn response(&mut self) -> Option<RawResponse> {
        self.read_response(true).await
    }

    /// The answer to a `HEAD`: its `Content-Length` is that of a body not sent.
    async fn head_response(&mut self) -> Option<RawResponse> {
        self.read_response(false).await
    }

    async fn read_response(&mut self, with_body: bool) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await {
                assert!(
                    self.buffer.is_empty(),
                    "connection closed mid-answer: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                );
                return None;
            }
        };
        let head = String::from_utf8(self.buffer[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .filter(|_| with_body)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        self.buffer.drain(..head_end + 4);
        while self.buffer.len() < length {
            assert!(self.fill().await, "connection closed mid-body");
        }
        let body = self.buffer.drain(..length).collect();
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// Whether the server closes the connection with nothing more to say.
    async fn closes(&mut self) -> bool {
        while self.fill().await {}
        self.buffer.is_empty()
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: chronolog\r\n\r\n").into_bytes()
}

#[actix_rt::test]
async fn operations_endpoints_refuse_other_methods_with_405_and_answer_head() {
    let app = TestApp::spawn().await;
    let id = app.accept(Some("2009-09-28T19:03:12Z")).await;
    app.wait_visible(id).await;
    for base in [app.command_url(), app.query_url()] {
        for path in ["/health", "/ready", "/metrics"] {
            for method in ["POST", "PUT", "DELETE", "PATCH"] {
                let response = app
                    .http
                    .request(method.parse().unwrap(), format!("{base}{path}"))
                    .send()
                    .await
                    .unwrap();
                let what = format!("{method} {base}{path}");
                assert_eq!(response.status().as_u16(), 405, "{what}");
                assert_eq!(response.headers()["allow"], "GET, HEAD", "{what}");
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["error"], json!("method_not_allowed"), "{what}");
                assert_eq!(
                    body["message"],
                    json!(format!("method {method} is not allowed here")),
                    "{what}"
                );
            }
            let get = app.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(get.status().as_u16(), 200, "GET {path}");
            let get_type = get.headers()["content-type"].clone();
            let head = app.http.head(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(head.status().as_u16(), 200, "HEAD {base}{path}");
            assert_eq!(head.headers()["content-type"], get_type, "HEAD {path}");
            assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path}");
        }
    }
    let query = host(&app.query_url());
    for (path, status) in [
        (format!("/api/v1/timestamp/{id}"), 200),
        (format!("/api/v1/timestamp/{}", Uuid::new_v4()), 404),
        ("/api/v1/timestamp/not-a-uuid".to_owned(), 400),
    ] {
        let mut raw = Raw::connect(&query).await;
        raw.send(format!("HEAD {path} HTTP/1.1\r\nHost: chronolog\r\n\r\n").as_bytes())
            .await;
        let head = raw.head_response().await.unwrap();
        assert_eq!(head.status, status, "HEAD {path}");
        // The length of the body a GET would get, and no body.
        raw.send(&get(&path)).await;
        let get = raw.response().await.unwrap();
        assert_eq!(get.status, status, "GET {path}");
        assert_eq!(
            head.header("content-length"),
            Some(get.body.len().to_string().as_str()),
            "HEAD {path}"
        );
        assert!(head.body.is_empty());
    }
    app.stop().await;
}

#[actix_rt::test]
async fn every_middleware_refusal_echoes_the_correlation_id() {
    let app = TestApp::spawn().await;
    let url = format!(
        "{}/api/v1/timestamp/2009-09-28T19:03:12Z",
        app.command_url()
    );
    let given = "it-refusal-52f2665d";
    let response = app
        .http
        .post(&url)
        .header("correlationId", given)
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(response.headers()["correlationId"], given);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], json!("payload_too_large"));

    let response = app
        .http
        .post(&url)
        .header("correlationId", "not valid")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let generated = response.headers()["correlationId"].to_str().unwrap();
    assert!(Uuid::parse_str(generated).is_ok(), "{generated}");

    // Both a refused id and an oversized body: the id is still generated.
    let response = app
        .http
        .post(&url)
        .header("correlationId", "not valid")
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let generated = response.headers()["correlationId"].to_str().unwrap();
    assert!(Uuid::parse_str(generated).is_ok(), "{generated}");

    let mut raw = Raw::connect(&host(&app.command_url())).await;
    raw.send(
        format!(
            "POST /api/v1/timestamp HTTP/1.1\r\nHost: chronolog\r\ncorrelationId: {given}\r\n\
             Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let refused = raw.response().await.unwrap();
    assert_eq!(refused.status, 400);
    assert_eq!(refused.header("correlationId"), Some(given));
    app.stop().await;
}

#[actix_rt::test]
async fn a_client_that_sends_its_whole_body_before_reading_gets_the_413() {
    let app = TestApp::spawn().await;
    let command = host(&app.command_url());
    let body = vec![b'x'; 5 * 1024 * 1024];
    let mut raw = Raw::connect(&command).await;
    // As Python's urllib does: the head and the whole body, then read.
    raw.send(
        format!(
            "POST /api/v1/timestamp/2009-09-28T19:03:12Z HTTP/1.1\r\nHost: chronolog\r\n\
             correlationId: it-5mib\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    raw.send(&body).await;
    let response = raw.response().await.expect("the 413, not a reset");
    assert_eq!(response.status, 413);
    assert_eq!(response.header("correlationId"), Some("it-5mib"));
    assert_eq!(
        response.json(),
        json!({"error": "payload_too_large",
               "message": "request bodies are limited to 4096 bytes; this one declares 5242880"})
    );
    // The body was read to its end: the connection carries the next request.
    raw.send(&get("/health")).await;
    assert_eq!(raw.response().await.unwrap().status, 200);

    // A chunked body has no declared size: it is counted as it comes.
    let mut raw = Raw::connect(&command).await;
    raw.send(
        b"POST /api/v1/timestamp HTTP/1.1\r\nHost: chronolog\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    for _ in 0..64 {
        raw.send(format!("400\r\n{}\r\n", "y".repeat(1024)).as_bytes())
            .await;
    }
    raw.send(b"0\r\n\r\n").await;
    let response = raw.response().await.unwrap();
    assert_eq!(response.status, 413);
    assert_eq!(response.json()["error"], json!("payload_too_large"));
    raw.send(&get("/health")).await;
    assert_eq!(raw.response().await.unwrap().status, 200);

    // A small chunked body is accepted as any small body is.
    let mut raw = Raw::connect(&command).await;
    raw.send(b"POST /api/v1/timestamp HTTP/1.1\r\nHost: chronolog\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(raw.response().await.unwrap().status, 202);

    // Beyond the drain bound the answer comes at once and closes.
    let mut raw = Raw::connect(&command).await;
    raw.send(
        b"POST /api/v1/timestamp HTTP/1.1\r\nHost: chronolog\r\nContent-Length: 20971520\r\n\r\n",
    )
    .await;
    let response = raw.response().await.unwrap();
    assert_eq!(response.status, 413);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(raw.closes().await);

    // One command in the log: the small chunked POST.
    assert_eq!(read_topic(&app.settings.kafka_topic).await.len(), 1);
    app.stop().await;
}

#[actix_rt::test]
async fn content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    let app = TestApp::spawn().await;
    let mut raw = Raw::connect(&host(&app.command_url())).await;
    // A proxy that frames by Content-Length would see one POST carrying a
    // body; chunked framing sees two POSTs. Neither may be served.
    raw.send(
        b"POST /api/v1/timestamp HTTP/1.1\r\nHost: chronolog\r\nContent-Length: 60\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          POST /api/v1/timestamp HTTP/1.1\r\nHost: chronolog\r\n\r\n",
    )
    .await;
    let response = raw.response().await.unwrap();
    assert_eq!(response.status, 400);
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(
        response.json(),
        json!({"error": "bad_request",
               "message": "a request may not carry both Content-Length and Transfer-Encoding"})
    );
    assert!(raw.closes().await, "the pipelined request was answered");
    assert!(read_topic(&app.settings.kafka_topic).await.is_empty());
    app.stop().await;
}

#[actix_rt::test]
async fn bad_chunked_encoding_gets_one_json_400_and_the_connection_closed() {
    let app = TestApp::spawn().await;
    let mut raw = Raw::connect(&host(&app.command_url())).await;
    raw.send(b"POST /api/v1/timestamp HTTP/1.1\r\nHost: chronolog\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        .await;
    let response = raw.response().await.unwrap();
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["error"], json!("bad_request"));
    assert!(raw.closes().await, "a second answer followed");
    assert!(read_topic(&app.settings.kafka_topic).await.is_empty());
    app.stop().await;
}

/// Values of the `method` label in a metrics text.
fn method_labels(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("chronolog_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[actix_rt::test]
async fn client_chosen_methods_make_no_new_series_and_are_echoed_shortened() {
    let app = TestApp::spawn().await;
    let base = app.command_url();
    let statuses: Vec<u16> = futures::stream::iter(0..1000)
        .map(|i| {
            let method = reqwest::Method::from_bytes(format!("BOGUS{i}").as_bytes()).unwrap();
            let path = if i % 2 == 0 {
                "/api/v1/timestamp"
            } else {
                "/nowhere"
            };
            let request = app.http.request(method, format!("{base}{path}"));
            async move { request.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(statuses.iter().filter(|s| **s == 405).count(), 500);
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 500);

    // A 120 KB method, three hundred times.
    let command = host(&base);
    let method = "M".repeat(120 * 1024);
    let mut sizes = HashSet::new();
    for i in 0..300 {
        let path = if i % 2 == 0 {
            "/api/v1/timestamp"
        } else {
            "/nowhere"
        };
        let mut raw = Raw::connect(&command).await;
        raw.send(format!("{method} {path} HTTP/1.1\r\nHost: chronolog\r\n\r\n").as_bytes())
            .await;
        let response = raw.response().await.unwrap();
        let message = response.json()["message"].as_str().unwrap().to_owned();
        let echoed = format!("{}…", "M".repeat(64));
        assert!(
            message.contains(&echoed) && !message.contains(&"M".repeat(65)),
            "{message}"
        );
        sizes.insert(response.body.len());
    }
    assert!(sizes.iter().all(|&s| s < 200), "{sizes:?}");

    let metrics = app.metrics().render();
    let labels = method_labels(&metrics);
    assert!(
        labels.iter().all(|l| METHOD_LABELS.contains(&l.as_str())),
        "{labels:?}"
    );
    let m = app.metrics();
    let count = |route: &str, status: &str| {
        m.http_requests
            .with_label_values(&[route, "other", status])
            .get()
    };
    assert_eq!(count("/api/v1/timestamp", "405"), 500 + 150);
    assert_eq!(count("unmatched", "404"), 500 + 150);
    assert!(metrics.len() < 256 * 1024, "{} bytes", metrics.len());
    assert!(!metrics.contains("MMMM") && !metrics.contains("BOGUS"));
    app.stop().await;
}

/// Connections the server holds on `port` (its side of them), from the kernel's table.
fn server_connections(port: u16) -> usize {
    let port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    // local address, and a state other than LISTEN (0A)
                    fields.len() > 3 && fields[1].ends_with(&port) && fields[3] != "0A"
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .count()
}

#[actix_rt::test]
async fn clients_that_never_read_their_answers_are_disconnected() {
    let app = TestApp::spawn().await;
    let command = host(&app.command_url());
    let port: u16 = command.rsplit(':').next().unwrap().parse().unwrap();
    let requests = get("/metrics").repeat(1000);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small window fills at once; the answers then wait in the server.
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(command.parse().unwrap()).await.unwrap();
        stream.write_all(&requests).await.unwrap();
        clients.push(stream);
    }
    let started = Instant::now();
    assert!(server_connections(port) >= 20);
    eventually(
        "the server to drop the connections that do not read",
        || async { (server_connections(port) == 0).then_some(()) },
    )
    .await;
    // Dropped by the write timeout, not by anything sooner.
    let waited = started.elapsed();
    assert!(
        waited >= chronolog::http::WRITE_TIMEOUT - Duration::from_secs(1),
        "dropped after {waited:?}"
    );
    // Still serving, on a fresh connection.
    let health = app
        .http
        .get(format!("{}/health", app.command_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    drop(clients);
    app.stop().await;
}

#[actix_rt::test]
async fn a_burst_of_ready_calls_costs_one_dependency_check_per_second() {
    let app = TestApp::spawn().await;
    let url = format!("{}/ready", app.query_url());
    let http = reqwest::Client::new();
    let started = Instant::now();
    let answers: Vec<(u16, String)> = futures::future::join_all((0..500).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body["checked_at"].as_str().unwrap().to_owned())
        }
    }))
    .await;
    let elapsed = started.elapsed();
    assert!(answers.iter().all(|(status, _)| *status == 200));
    // Each distinct check time is one database ping and one broker request.
    let checks: HashSet<&str> = answers.iter().map(|(_, at)| at.as_str()).collect();
    let bound = elapsed.as_secs() as usize + 1;
    assert!(
        checks.len() <= bound,
        "{} checks in {elapsed:?}",
        checks.len()
    );
    app.stop().await;
}

/// A `chronolog serve` process whose stdout is kept whole, as bytes.
struct Binary {
    _process: ChildProcess,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Binary {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Self {
            _process: ChildProcess::new(child),
            output,
        }
    }

    /// A command-role process with text logs on a fresh topic.
    fn command_role() -> Self {
        let topic = unique("chronolog-text");
        Self::start(
            &["--role", "command", "--command-addr", "127.0.0.1:0"],
            &[
                ("KAFKA_BROKERS", brokers().as_str()),
                ("KAFKA_TOPIC", topic.as_str()),
                ("KAFKA_TOPIC_RETENTION_MS", &i64::MAX.to_string()),
                ("LOG_FORMAT", "text"),
                ("LOG_LEVEL", "info"),
            ],
        )
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn lines(&self) -> Vec<String> {
        BufReader::new(self.output.lock().unwrap().as_slice())
            .lines()
            .map_while(Result::ok)
            .collect()
    }

    /// The address a text log line says `server` listens on.
    async fn addr(&self, server: &str) -> String {
        let wanted = format!("server=\"{server}\"");
        eventually("the binary listens", || async {
            self.lines()
                .iter()
                .map(|l| plain(l))
                .find(|l| l.contains(" listening ") && l.contains(&wanted))
                .and_then(|l| {
                    let rest = l.split("addr=").nth(1)?;
                    rest.split(' ').next().map(str::to_owned)
                })
        })
        .await
    }

    async fn wait_for(&self, text: &str) {
        eventually(text, || async { self.text().contains(text).then_some(()) }).await;
    }
}

/// A text log line without colour codes.
fn plain(line: &str) -> String {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().take_while(|c| *c != 'm').for_each(drop);
        } else {
            plain.push(c);
        }
    }
    plain
}

/// A text log line's level.
fn level(line: &str) -> Option<String> {
    plain(line).split_whitespace().nth(1).map(str::to_owned)
}

#[actix_rt::test]
async fn text_logs_escape_what_clients_send_and_have_no_colours_when_piped() {
    let binary = Binary::command_role();
    let command = binary.addr("command").await;
    let forged = "%0A%1B%5B31mERROR%1B%5B0m%20chronolog::db:%20FORGED%07";
    let response = reqwest::Client::new()
        .post(format!("http://{command}/api/v1/timestamp/{forged}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    binary.wait_for("FORGED").await;
    binary.wait_for("command refused").await;

    let output = binary.output.lock().unwrap().clone();
    assert!(!output.contains(&0x1b), "an ESC byte in the log");
    assert!(!output.contains(&0x07), "a BEL byte in the log");
    let text = String::from_utf8(output).unwrap();
    for line in text.lines() {
        assert!(
            line.starts_with(|c: char| c.is_ascii_digit()),
            "a line that does not start with its timestamp: {line:?}"
        );
    }
    let forged_line = text.lines().find(|l| l.contains("FORGED")).unwrap();
    assert!(forged_line.contains("command refused"), "{forged_line}");
    assert!(
        forged_line.contains("\\n\\u{1b}[31mERROR\\u{1b}[0m chronolog::db: FORGED\\u{7}"),
        "{forged_line}"
    );
}

#[actix_rt::test]
async fn malformed_requests_log_no_error() {
    let binary = Binary::command_role();
    let command = binary.addr("command").await;
    let garbage: [&[u8]; 7] = [
        b"\x00\x01\x02\x03 garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\n\r\n",
        b"POST /api/v1/timestamp HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST /api/v1/timestamp HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /api/v1/timestamp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    ];
    let huge_header = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let mut answers = Vec::new();
    for request in garbage.iter().copied().chain([huge_header.as_bytes()]) {
        let mut raw = Raw::connect(&command).await;
        // The server may answer and close before a large request is sent whole.
        let _ = raw.stream.write_all(request).await;
        answers.push(raw.response().await.map(|r| r.status));
    }
    // A request that logs, after the garbage: the log has caught up with it.
    let marker = reqwest::Client::new()
        .post(format!("http://{command}/api/v1/timestamp/marker"))
        .send()
        .await
        .unwrap();
    assert_eq!(marker.status().as_u16(), 400);
    binary
        .wait_for("'marker' is not an RFC 3339 timestamp")
        .await;
    let errors: Vec<String> = binary
        .lines()
        .into_iter()
        .filter(|l| level(l).as_deref() == Some("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // Each got its 400 (431 for the huge head), none a silent close.
    assert!(
        answers.iter().all(|s| matches!(s, Some(400 | 431))),
        "{answers:?}"
    );
}

#[actix_rt::test]
async fn ready_state_changes_are_logged_once_not_per_request() {
    let pg = PrivatePostgres::start();
    let binary = Binary::start(
        &["--role", "query", "--query-addr", "127.0.0.1:0"],
        &[
            ("DATABASE_URL", pg.url().as_str()),
            ("LOG_FORMAT", "text"),
            ("LOG_LEVEL", "info"),
        ],
    );
    let query = binary.addr("query").await;
    let http = reqwest::Client::new();
    let url = format!("http://{query}/ready");
    assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 200);

    pg.stop();
    // The cached UP answer expires within a second.
    eventually("/ready to go DOWN", || async {
        (http.get(&url).send().await.ok()?.status() == 503).then_some(())
    })
    .await;
    let started = Instant::now();
    let statuses = futures::future::join_all((0..500).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    }))
    .await;
    let burst = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");

    pg.start_again();
    eventually("/ready to come back", || async {
        (http.get(&url).send().await.ok()?.status() == 200).then_some(())
    })
    .await;
    // A handler logs before it answers: a line per 503 would be there.
    let warnings: Vec<String> = binary
        .lines()
        .into_iter()
        .filter(|l| level(l).as_deref() == Some("WARN"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "warnings from a {burst:?} burst of 503s: {warnings:#?}"
    );
    assert!(
        warnings[0].contains(": not ready components="),
        "{warnings:?}"
    );
    binary.wait_for(": ready again components=").await;
    let lines = binary.lines();
    let count = |text: &str| lines.iter().filter(|l| l.contains(text)).count();
    assert_eq!(count(": ready components="), 1, "{lines:#?}");
    assert_eq!(count(": not ready components="), 1, "{lines:#?}");
    assert_eq!(count(": ready again components="), 1, "{lines:#?}");
    assert_eq!(count("request failed"), 0, "{lines:#?}");
}
