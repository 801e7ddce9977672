//! Helpers for `loadtest/bench.sh`, the broker-side parts a shell cannot do:
//!
//! - `mock-broker PARTITIONS TOPIC...`: hosts librdkafka's mock cluster (so that
//!   the broker is not the limit), creates the topics, prints the bootstrap
//!   address on stdout, and runs until stdin closes;
//! - `preload BROKERS TOPIC N`: produces N valid commands as fast as the
//!   producer goes and prints `records/s`;
//! - `consume BROKERS TOPIC N`: reads N records from the beginning and prints
//!   `records/s` (the broker's raw consume rate, the sink's other baseline).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::io::Read;
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
        ["preload", brokers, topic, n] => preload(brokers, topic, n.parse().expect("count")),
        ["consume", brokers, topic, n] => consume(brokers, topic, n.parse().expect("count")),
        _ => {
            eprintln!(
                "usage: bench_tool mock-broker PARTITIONS TOPIC... | preload BROKERS TOPIC N | consume BROKERS TOPIC N"
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

fn preload(brokers: &str, topic: &str, n: u64) {
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
        let value = encode_value(&command);
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
