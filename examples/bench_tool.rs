//! Helpers for `loadtest/bench.sh`, the broker-side parts a shell cannot do:
//!
//! - `mock-broker PARTITIONS TOPIC...`: hosts librdkafka's mock cluster (so that
//!   the broker is not the limit), creates the topics, prints the bootstrap
//!   address on stdout, and runs until stdin closes;
//! - `preload BROKERS TOPIC N [BYTES]`: produces N valid commands (or, with
//!   BYTES, values of that many bytes) as fast as the producer goes and
//!   prints `records/s`;
//! - `consume BROKERS TOPIC N`: reads N records from the beginning and prints
//!   `records/s` (the broker's raw consume rate, the sink's other baseline);
//! - `e2e COMMAND_URL QUERY_URL RATE SECONDS SAMPLE_EVERY`: an open-loop load
//!   of RATE commands/s for SECONDS (sent on schedule whether or not earlier
//!   ones were answered, up to 1024 awaiting an answer); every
//!   SAMPLE_EVERY-th command (none if 0) is a probe, whose query is polled from its 202
//!   until it is visible (every millisecond, or a twentieth of the time so
//!   far once that is longer). Prints one line of
//!   `key=value` figures; the probes' latency runs from sending the POST to
//!   the first GET that finds the record.
//! - `steady BROKERS TOPIC RATE SECONDS`: produces RATE valid commands a
//!   second for SECONDS, on schedule (each millisecond, what is due), and
//!   prints how many it produced;
//! - `orders COMMAND_URL CUSTOMER PRODUCTS CLIENTS SECONDS RATE`: orders of
//!   one item (quantity 1) by customer CUSTOMER for a product drawn among
//!   PRODUCTS, whose ids are `00000000-0000-0000-0000-<n, 12 digits>` for n
//!   in 1..=PRODUCTS. RATE 0: CLIENTS clients each placing orders one after
//!   the other (closed loop) for SECONDS; otherwise an open loop of RATE
//!   orders a second, at most CLIENTS awaiting an answer. Prints one line of
//!   `key=value` figures (latency from sending the POST to its answer);
//! - `watch BROKERS TOPIC`: reads TOPIC from its end (the high watermarks
//!   when it starts; prints `ready` on stderr once it holds them) until
//!   stdin closes and then two seconds pass without a record; prints
//!   `eventId aggregateId record_timestamp_ms received_us` per record (the
//!   value is an outbox event envelope; received in microseconds since the
//!   epoch).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronolog::domain::TimestampCommand;
use chronolog::kafka::record::encode_value;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["mock-broker", partitions, topics @ ..] => {
            mock_broker(topics, partitions.parse().expect("partitions"))
        }
        ["preload", brokers, topic, n] => preload(brokers, topic, n.parse().expect("count"), None),
        ["preload", brokers, topic, n, bytes] => preload(
            brokers,
            topic,
            n.parse().expect("count"),
            Some(bytes.parse().expect("bytes")),
        ),
        ["consume", brokers, topic, n] => consume(brokers, topic, n.parse().expect("count")),
        ["e2e", command, query, rate, seconds, sample_every] => e2e(
            command,
            query,
            rate.parse().expect("rate"),
            seconds.parse().expect("seconds"),
            sample_every.parse().expect("sample_every"),
        ),
        ["steady", brokers, topic, rate, seconds] => steady(
            brokers,
            topic,
            rate.parse().expect("rate"),
            seconds.parse().expect("seconds"),
        ),
        [
            "orders",
            command,
            customer,
            products,
            clients,
            seconds,
            rate,
        ] => orders(
            command,
            customer.parse().expect("customer"),
            products.parse().expect("products"),
            clients.parse().expect("clients"),
            seconds.parse().expect("seconds"),
            rate.parse().expect("rate"),
        ),
        ["watch", brokers, topic] => watch(brokers, topic),
        _ => {
            eprintln!(
                "usage: bench_tool mock-broker PARTITIONS TOPIC... | preload BROKERS TOPIC N [BYTES] | consume BROKERS TOPIC N | e2e COMMAND_URL QUERY_URL RATE SECONDS SAMPLE_EVERY | steady BROKERS TOPIC RATE SECONDS | orders COMMAND_URL CUSTOMER PRODUCTS CLIENTS SECONDS RATE | watch BROKERS TOPIC"
            );
            std::process::exit(2);
        }
    }
}

fn mock_broker(topics: &[&str], partitions: i32) {
    let mock = MockCluster::new(1).expect("mock cluster");
    for topic in topics {
        for t in [topic.to_string(), format!("{topic}.dlq")] {
            mock.create_topic(&t, partitions, 1).expect("topic");
        }
    }
    println!("{}", mock.bootstrap_servers());
    // Runs until the harness closes stdin.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

fn preload(brokers: &str, topic: &str, n: u64, bytes: Option<usize>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let started = Instant::now();
    let at = chrono::Utc::now();
    for _ in 0..n {
        let command = TimestampCommand::new(at);
        let key = command.command_id.to_string();
        let value = match bytes {
            None => encode_value(&command),
            Some(bytes) => vec![b'x'; bytes],
        };
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).expect("flushed");
    println!("{:.0}", n as f64 / started.elapsed().as_secs_f64());
}

fn consume(brokers: &str, topic: &str, n: u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-raw-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    let mut retained = 0;
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        retained += high - low;
        assignment
            .add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("partition");
    }
    // The mock cluster keeps 5 MiB per partition and drops older records.
    assert!(
        retained >= n as i64,
        "the broker retains only {retained} of {n} records: use more partitions"
    );
    consumer.assign(&assignment).expect("assign");
    let started = Instant::now();
    let mut seen = 0;
    while seen < n {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            seen += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "consumed only {seen} of {n}"
        );
    }
    println!("{:.0}", n as f64 / started.elapsed().as_secs_f64());
}

/// What the open-loop load saw.
#[derive(Default)]
struct LoadOutcome {
    accepted: AtomicU64,
    /// Answered with another status than 202.
    refused: AtomicU64,
    /// No answer at all (connection refused or reset).
    failed: AtomicU64,
    lost_probes: AtomicU64,
    /// Milliseconds from POST to visible, one per probe.
    visible: Mutex<Vec<f64>>,
}

/// How long a probe waits for its record before counting it as lost.
const PROBE_GIVE_UP: Duration = Duration::from_secs(30);
/// Commands awaiting their answer at most. An overloaded server slows the
/// load down (`achieved` drops below `offered`) instead of being buried under
/// ever more connections, which measured the load generator, not chronolog.
const MAX_IN_FLIGHT: usize = 1024;

fn e2e(command: &str, query: &str, rate: u64, seconds: u64, sample_every: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .build()
            .expect("http client");
        let post_url = Arc::new(format!("{command}/api/v1/timestamp/2009-09-28T19:03:12Z"));
        let query = Arc::new(query.to_owned());
        let outcome = Arc::new(LoadOutcome::default());
        let total = rate * seconds;
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = tokio::task::JoinSet::new();
        let mut sent = 0;
        let deadline = started + Duration::from_secs(seconds);
        while sent < total && Instant::now() < deadline {
            tick.tick().await;
            let due = (u128::from(rate) * started.elapsed().as_micros() / 1_000_000) as u64;
            while sent < due.min(total) && Instant::now() < deadline {
                if tasks.len() >= MAX_IN_FLIGHT {
                    tasks.join_next().await;
                    continue;
                }
                sent += 1;
                let probe = sample_every > 0 && sent % sample_every == 0;
                let (client, post_url, query, outcome) = (
                    client.clone(),
                    post_url.clone(),
                    query.clone(),
                    outcome.clone(),
                );
                tasks.spawn(async move {
                    let sent_at = Instant::now();
                    let id = match client.post(post_url.as_str()).send().await {
                        Ok(r) if r.status().as_u16() == 202 => {
                            outcome.accepted.fetch_add(1, Ordering::Relaxed);
                            if !probe {
                                return;
                            }
                            let body: serde_json::Value = r.json().await.expect("202 body");
                            body["id"].as_str().expect("id").to_owned()
                        }
                        Ok(_) => {
                            outcome.refused.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(_) => {
                            outcome.failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    let url = format!("{query}/api/v1/timestamp/{id}");
                    while sent_at.elapsed() < PROBE_GIVE_UP {
                        if let Ok(r) = client.get(&url).send().await
                            && r.status().as_u16() == 200
                        {
                            let ms = sent_at.elapsed().as_secs_f64() * 1000.0;
                            outcome.visible.lock().expect("lock").push(ms);
                            return;
                        }
                        // Resolution within 5 % of the latency so far, so that
                        // slow probes do not flood the query API.
                        let wait = (sent_at.elapsed() / 20).max(Duration::from_millis(1));
                        tokio::time::sleep(wait).await;
                    }
                    outcome.lost_probes.fetch_add(1, Ordering::Relaxed);
                });
            }
            while tasks.try_join_next().is_some() {}
        }
        let sending = started.elapsed().as_secs_f64();
        while tasks.join_next().await.is_some() {}
        let mut visible = outcome.visible.lock().expect("lock").clone();
        visible.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            visible
                .get(((visible.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "offered={rate} achieved={:.0} accepted={} refused={} failed={} probes={} lost={} p50={:.1} p99={:.1} max={:.1}",
            sent as f64 / sending,
            outcome.accepted.load(Ordering::Relaxed),
            outcome.refused.load(Ordering::Relaxed),
            outcome.failed.load(Ordering::Relaxed),
            visible.len(),
            outcome.lost_probes.load(Ordering::Relaxed),
            pct(0.50),
            pct(0.99),
            visible.last().copied().unwrap_or(f64::NAN),
        );
    });
}

fn steady(brokers: &str, topic: &str, rate: u64, seconds: u64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let started = Instant::now();
    let total = rate * seconds;
    let at = chrono::Utc::now();
    let mut sent = 0;
    while sent < total {
        let due =
            ((u128::from(rate) * started.elapsed().as_micros() / 1_000_000) as u64).min(total);
        while sent < due {
            let command = TimestampCommand::new(at);
            let key = command.command_id.to_string();
            let value = encode_value(&command);
            let mut record = BaseRecord::to(topic).key(&key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        producer.poll(Duration::from_millis(1));
                        record = back;
                    }
                }
            }
            sent += 1;
        }
        producer.poll(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(60)).expect("flushed");
    println!("{sent}");
}

/// The id of bench product `n` (1-based).
fn product_id(n: u64) -> String {
    format!("00000000-0000-0000-0000-{n:012}")
}

/// What the order load saw.
#[derive(Default)]
struct OrderOutcome {
    created: AtomicU64,
    /// Answered with another status than 201.
    refused: AtomicU64,
    /// No answer at all.
    failed: AtomicU64,
    /// Milliseconds from POST to its answer, one per 201.
    latency: Mutex<Vec<f64>>,
}

async fn place_one(
    client: &reqwest::Client,
    url: &str,
    customer: u64,
    products: u64,
    sequence: u64,
    outcome: &OrderOutcome,
) {
    // Spread over the products without a random generator: a multiplicative
    // hash of the order's sequence number.
    let n = sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) % products + 1;
    let body = format!(
        r#"{{"customerId":{customer},"items":[{{"productId":"{}","quantity":1}}]}}"#,
        product_id(n)
    );
    let sent_at = Instant::now();
    match client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) if r.status().as_u16() == 201 => {
            let _ = r.bytes().await;
            let ms = sent_at.elapsed().as_secs_f64() * 1000.0;
            outcome.created.fetch_add(1, Ordering::Relaxed);
            outcome.latency.lock().expect("lock").push(ms);
        }
        Ok(r) => {
            if outcome.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                let status = r.status();
                eprintln!("orders: {status} {}", r.text().await.unwrap_or_default());
            }
        }
        Err(_) => {
            outcome.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn orders(command: &str, customer: u64, products: u64, clients: u64, seconds: u64, rate: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(4096)
            .build()
            .expect("http client");
        let url = Arc::new(format!("{command}/api/v1/orders"));
        let outcome = Arc::new(OrderOutcome::default());
        let sequence = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        if rate == 0 {
            for _ in 0..clients {
                let (client, url, outcome, sequence) = (
                    client.clone(),
                    url.clone(),
                    outcome.clone(),
                    sequence.clone(),
                );
                tasks.spawn(async move {
                    while Instant::now() < deadline {
                        let n = sequence.fetch_add(1, Ordering::Relaxed);
                        place_one(&client, &url, customer, products, n, &outcome).await;
                    }
                });
            }
        } else {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let total = rate * seconds;
            let mut sent = 0;
            while sent < total && Instant::now() < deadline {
                tick.tick().await;
                let due = (u128::from(rate) * started.elapsed().as_micros() / 1_000_000) as u64;
                while sent < due.min(total) && Instant::now() < deadline {
                    if tasks.len() as u64 >= clients {
                        tasks.join_next().await;
                        continue;
                    }
                    sent += 1;
                    let (client, url, outcome) = (client.clone(), url.clone(), outcome.clone());
                    tasks.spawn(async move {
                        place_one(&client, &url, customer, products, sent, &outcome).await;
                    });
                }
                while tasks.try_join_next().is_some() {}
            }
        }
        while tasks.join_next().await.is_some() {}
        let elapsed = started.elapsed().as_secs_f64();
        let mut latency = outcome.latency.lock().expect("lock").clone();
        latency.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            latency
                .get(((latency.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let created = outcome.created.load(Ordering::Relaxed);
        println!(
            "rate={:.0} created={created} refused={} failed={} p50={:.2} p99={:.2} max={:.2}",
            created as f64 / elapsed,
            outcome.refused.load(Ordering::Relaxed),
            outcome.failed.load(Ordering::Relaxed),
            pct(0.50),
            pct(0.99),
            latency.last().copied().unwrap_or(f64::NAN),
        );
    });
}

fn watch(brokers: &str, topic: &str) {
    use rdkafka::Message as _;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-watch-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        assignment
            .add_partition_offset(topic, p.id(), Offset::Offset(high))
            .expect("partition");
    }
    assert!(assignment.count() > 0, "topic {topic} has no partitions");
    consumer.assign(&assignment).expect("assign");
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = closed.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        flag.store(true, Ordering::Relaxed);
    });
    eprintln!("ready");
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut last = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(message)) => {
                let received = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_micros();
                let value: serde_json::Value =
                    serde_json::from_slice(message.payload().unwrap_or_default())
                        .expect("an event envelope");
                let id = value["eventId"].as_str().expect("eventId");
                let aggregate = value["aggregateId"].as_str().expect("aggregateId");
                let ts = message.timestamp().to_millis().unwrap_or(-1);
                use std::io::Write as _;
                writeln!(out, "{id} {aggregate} {ts} {received}").expect("stdout");
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("watch: {e}"),
            None => {}
        }
        if closed.load(Ordering::Relaxed) && last.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
}
