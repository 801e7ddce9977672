//! Builds and runs the roles of one process. `main` and the integration
//! tests use the same builder; tests bind every address to port 0.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Actor, Addr, Supervisor};
use anyhow::Context as _;

use crate::actors::db_writer::DbWriter;
use crate::actors::ingestion::Ingestion;
use crate::actors::outbox_relay::{OutboxRelay, RelayConfig, StopRelay};
use crate::actors::producer::{KafkaProducer, SharedProducer};
use crate::config::{Role, Settings};
use crate::db::DatabaseUrl;
use crate::db::idempotency::IdempotencyStore;
use crate::engine::customer_copy::CustomerCopy;
use crate::engine::group::{ConsumerGroup, Membership};
use crate::engine::pg_sink::PgSink;
use crate::engine::pipeline_manager::{PipelineManager, StopPipelines};
use crate::engine::shop_views::ShopViews;
use crate::engine::timestamp_view::TimestampView;
use crate::http::ops::{BrokerProbe, Readiness};
use crate::http::{self, RunningServer};
use crate::kafka::admin;
use crate::kafka::dead_letter::dead_letter_topic;
use crate::kafka::lag::LagMonitor;
use crate::metrics::Metrics;
use crate::outbox::Aggregate;

/// A running chronolog process: some or all of its roles.
pub struct Application {
    command: Option<RunningServer>,
    query: Option<RunningServer>,
    consumer_ops: Option<RunningServer>,
    group: Option<ConsumerGroup>,
    /// The shop's projections: its copy of the customers, its read views.
    projections: Vec<ConsumerGroup>,
    /// The pipelines stored in `DATABASE_URL`.
    pipelines: Option<Addr<PipelineManager>>,
    lag: Option<LagMonitor>,
    producer: Option<Addr<KafkaProducer>>,
    relays: Vec<Addr<OutboxRelay>>,
    metrics: Arc<Metrics>,
}

/// The databases of the accounts and shop contexts, each with the `relay`
/// label of its outbox relay: one when both contexts share a database.
fn context_databases(settings: &Settings) -> Vec<(DatabaseUrl, &'static str)> {
    let (accounts, shop) = (settings.accounts_database(), settings.shop_database());
    if accounts.expose() == shop.expose() {
        vec![(accounts.clone(), "accounts_shop")]
    } else {
        vec![(accounts.clone(), "accounts"), (shop.clone(), "shop")]
    }
}

/// Starts the shop's projections for the consumer role: shop's copy of the
/// customers (into the shop's database) and the shop's read views (into
/// `DATABASE_URL`, which the query role reads), one consumer group per
/// topic, named after `KAFKA_GROUP_ID`. Each is a `/ready` component.
async fn start_shop_projections(
    settings: &Settings,
    producer: &Addr<KafkaProducer>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Vec<(String, ConsumerGroup)>> {
    let size = settings.database_pool_size;
    let shop_db = settings.shop_database();
    if shop_db.expose() != settings.database_url.expose() {
        crate::db::prepare(shop_db, "shop").await;
    }
    let copy = Arc::new(PgSink::new(crate::db::pool(shop_db, size), CustomerCopy));
    let views = Arc::new(PgSink::new(
        crate::db::pool(&settings.database_url, size),
        ShopViews,
    ));
    let prefix = &settings.outbox_topic_prefix;
    let group = |name: &str| format!("{}-{name}", settings.kafka_group_id);
    let mut started = Vec::new();
    let customers = format!("{prefix}{}", Aggregate::Customer.topic());
    started.push((
        "shop_customer_copy".to_owned(),
        ConsumerGroup::start(
            settings,
            &group("shop-customer-copy"),
            &customers,
            Membership::Subscribe,
            copy,
            Some(producer.clone()),
            metrics.clone(),
        )
        .context("cannot join the shop's customer copy group")?,
    ));
    for aggregate in Aggregate::ALL {
        let name = format!("shop_view_{}", aggregate.as_str());
        let topic = format!("{prefix}{}", aggregate.topic());
        let group_id = group(&format!("shop-view-{}", aggregate.as_str()));
        let consumer = ConsumerGroup::start(
            settings,
            &group_id,
            &topic,
            Membership::Subscribe,
            views.clone(),
            Some(producer.clone()),
            metrics.clone(),
        )
        .with_context(|| format!("cannot join the {name} group"))?;
        started.push((name, consumer));
    }
    Ok(started)
}

/// The event topics of the outbox relays, with `OUTBOX_TOPIC_PREFIX`.
pub fn event_topics(settings: &Settings) -> Vec<String> {
    crate::outbox::Aggregate::ALL
        .iter()
        .map(|a| format!("{}{}", settings.outbox_topic_prefix, a.topic()))
        .collect()
}

impl Application {
    /// Starts `roles` (all when empty) with `settings`. Must run inside an
    /// actix system. Applies migrations for roles that use the database and
    /// creates the topics for roles that use the broker.
    pub async fn build(settings: &Settings, roles: &[Role]) -> anyhow::Result<Self> {
        let roles: HashSet<Role> = if roles.is_empty() {
            Role::ALL.into_iter().collect()
        } else {
            roles.iter().copied().collect()
        };
        let has = |role| roles.contains(&role);
        let metrics = Metrics::new();
        let uses_db = has(Role::Consumer) || has(Role::Query);
        let uses_broker = has(Role::Command) || has(Role::Consumer);

        if uses_db {
            crate::db::run_migrations(&settings.database_url)
                .await
                .context("DATABASE_URL: cannot prepare the database")?;
        }
        let mut topic_report = None;
        if uses_broker {
            // A refused option, a failed TLS handshake or SASL login stops
            // the start here, with librdkafka's reason and no secret in it.
            crate::kafka::preflight(settings).await?;
            let mut topics = admin::ensure_topics(settings)
                .await
                .context("KAFKA_BROKERS: cannot prepare the topics")?;
            let mut names = vec![settings.kafka_topic.clone(), settings.dead_letter_topic()];
            if has(Role::Command) || has(Role::Consumer) {
                let mut events = event_topics(settings);
                if has(Role::Consumer) {
                    // The shop's projections dead-letter into these.
                    let dead_letters: Vec<String> =
                        events.iter().map(|t| dead_letter_topic(t)).collect();
                    events.extend(dead_letters);
                }
                let report = admin::ensure_named_topics(settings, &events)
                    .await
                    .context("KAFKA_BROKERS: cannot prepare the event topics")?;
                topics.finite_retention.extend(report.finite_retention);
                names.extend(events);
            }
            for topic in names {
                let finite = topics.finite_retention.contains_key(&topic);
                metrics
                    .topic_retention_finite
                    .with_label_values(&[&topic])
                    .set(i64::from(finite));
            }
            topic_report = Some(Arc::new(topics));
        }
        let broker = if uses_broker {
            Some(Arc::new(
                BrokerProbe::new(settings).context("KAFKA_BROKERS")?,
            ))
        } else {
            None
        };
        let shared_producer = if uses_broker {
            Some(
                SharedProducer::new(settings.clone(), metrics.clone())
                    .context("KAFKA_BROKERS: cannot create the producer")?,
            )
        } else {
            None
        };
        // Dead letters go through a producer actor of the system arbiter.
        let producer = match (&shared_producer, has(Role::Consumer)) {
            (Some(shared), true) => {
                let shared = shared.clone();
                Some(Supervisor::start(move |_| KafkaProducer::new(shared)))
            }
            _ => None,
        };

        let mut app = Self {
            command: None,
            query: None,
            consumer_ops: None,
            group: None,
            projections: Vec::new(),
            pipelines: None,
            lag: None,
            producer: producer.clone(),
            relays: Vec::new(),
            metrics: metrics.clone(),
        };
        if uses_broker {
            app.lag = Some(
                LagMonitor::start(settings, metrics.clone())
                    .context("KAFKA_BROKERS: cannot start the lag monitor")?,
            );
        }

        let mut readiness = Readiness {
            broker: broker.clone(),
            topics: topic_report,
            ..Readiness::default()
        };
        if let Some(producer) = &producer {
            let (url, size) = (settings.database_url.clone(), settings.database_pool_size);
            let writer_metrics = metrics.clone();
            let writer = Supervisor::start(move |_| DbWriter::new(url, size, writer_metrics));
            let group = ConsumerGroup::start(
                settings,
                &settings.kafka_group_id,
                &settings.kafka_topic,
                Membership::Subscribe,
                Arc::new(TimestampView::new(writer)),
                Some(producer.clone()),
                metrics.clone(),
            )
            .context("cannot join the consumer group")?;
            readiness.partitions = Some(group.status());
            app.group = Some(group);
            for (name, group) in start_shop_projections(settings, producer, &metrics).await? {
                readiness.projections.push((name, group.status()));
                app.projections.push(group);
            }
            let manager = PipelineManager::new(
                settings.clone(),
                crate::db::pool(&settings.database_url, settings.database_pool_size),
                producer.clone(),
                metrics.clone(),
            );
            app.pipelines = Some(manager.start());
        }
        if uses_db {
            readiness.database = Some(crate::db::pool(
                &settings.database_url,
                settings.database_pool_size,
            ));
        }

        if let (true, Some(shared)) = (has(Role::Command), &shared_producer) {
            // Idempotency keys live in DATABASE_URL, which only keyed commands
            // need: a database that is down does not stop the command role.
            // (A process with a role that uses the view has migrated it above.)
            let idempotency = Arc::new(IdempotencyStore::new(
                &settings.database_url,
                settings.database_pool_size,
                settings.idempotency_key_ttl,
                settings.delivery_timeout,
            ));
            if !uses_db {
                idempotency.prepare().await;
            }
            // The accounts and shop contexts: their databases are migrated
            // (in the background while down), and each database's outbox
            // gets a relay, active in one command process at a time.
            for (url, relay) in context_databases(settings) {
                if !(uses_db && url.expose() == settings.database_url.expose()) {
                    crate::db::prepare(&url, relay).await;
                }
                let config = RelayConfig {
                    name: relay,
                    database_url: url,
                    settings: settings.clone(),
                };
                let relay_metrics = metrics.clone();
                app.relays
                    .push(OutboxRelay::new(config, relay_metrics).start());
            }
            let accounts_db = http::accounts::AccountsDb(crate::db::pool(
                settings.accounts_database(),
                settings.database_pool_size,
            ));
            let shop_db = http::shop::ShopDb(crate::db::pool(
                settings.shop_database(),
                settings.database_pool_size,
            ));
            let shared = shared.clone();
            let ready = readiness.clone();
            let worker_metrics = metrics.clone();
            let mut server = http::bind(
                settings.command_addr,
                "command",
                metrics.clone(),
                move |cfg| {
                    // Runs on each HTTP worker thread: its ingestion and producer
                    // actors live on that thread's arbiter, so that a command is
                    // handed from actor to actor without crossing threads.
                    let shared = shared.clone();
                    let producer = Supervisor::start(move |_| KafkaProducer::new(shared));
                    let ingestion =
                        Ingestion::new(producer, idempotency.clone(), worker_metrics.clone())
                            .start();
                    cfg.app_data(actix_web::web::Data::new(ingestion))
                        .app_data(actix_web::web::Data::new(ready.clone()))
                        .app_data(actix_web::web::Data::new(accounts_db.clone()))
                        .app_data(actix_web::web::Data::new(shop_db.clone()))
                        .configure(http::command::routes)
                        .configure(http::accounts::routes)
                        .configure(http::shop::routes);
                },
            )
            .with_context(|| format!("COMMAND_ADDR: cannot listen on {}", settings.command_addr))?;
            server.spawn();
            app.command = Some(server);
        }
        if has(Role::Query) {
            let pool = crate::db::pool(&settings.database_url, settings.database_pool_size);
            let commits = readiness.partitions.as_ref().map(|group| group.commits());
            let (watcher, watching) = http::wait::ViewWatcher::start(
                pool.clone(),
                commits,
                http::wait::TICK,
                Some(metrics.query_waiting_requests.clone()),
            );
            let waits = actix_web::web::Data::from(watcher.clone());
            let pool = actix_web::web::Data::new(pool);
            let ready = readiness.clone();
            let admin = http::admin::Admin::new(settings, app.pipelines.clone());
            let mut server = http::bind_with_admin(
                settings.query_addr,
                "query",
                metrics.clone(),
                admin,
                move |cfg| {
                    cfg.app_data(pool.clone())
                        .app_data(waits.clone())
                        .app_data(actix_web::web::Data::new(ready.clone()))
                        .configure(http::query::routes);
                },
            )
            .with_context(|| format!("QUERY_ADDR: cannot listen on {}", settings.query_addr))?;
            server.watch_view(watcher, watching);
            server.spawn();
            app.query = Some(server);
        }
        if roles.len() == 1 && has(Role::Consumer) {
            let ready = readiness.clone();
            let admin = http::admin::Admin::new(settings, app.pipelines.clone());
            let mut server = http::bind_with_admin(
                settings.consumer_addr,
                "consumer",
                metrics.clone(),
                admin,
                move |cfg| {
                    cfg.app_data(actix_web::web::Data::new(ready.clone()));
                },
            )
            .with_context(|| {
                format!("CONSUMER_ADDR: cannot listen on {}", settings.consumer_addr)
            })?;
            server.spawn();
            app.consumer_ops = Some(server);
        }
        Ok(app)
    }

    /// The metrics of this application (what its `/metrics` shows).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Address of the command API, when this process runs the command role.
    pub fn command_addr(&self) -> Option<SocketAddr> {
        self.command.as_ref().map(|s| s.addr)
    }

    /// Address of the query API, when this process runs the query role.
    pub fn query_addr(&self) -> Option<SocketAddr> {
        self.query.as_ref().map(|s| s.addr)
    }

    /// Address of the consumer's operations endpoints, in a consumer-only process.
    pub fn consumer_addr(&self) -> Option<SocketAddr> {
        self.consumer_ops.as_ref().map(|s| s.addr)
    }

    /// Stops gracefully: no new commands are taken, commands in flight get
    /// their answer, the consumer drains and commits, the producer flushes.
    pub async fn stop(mut self) {
        // The servers wait for their requests in flight (commands get their
        // delivery report) and their idle keep-alive connections; the group
        // drains meanwhile.
        let servers: Vec<_> = [
            self.command.take(),
            self.query.take(),
            self.consumer_ops.take(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let stop_servers = futures::future::join_all(servers.iter().map(RunningServer::stop));
        let groups: Vec<ConsumerGroup> = self
            .group
            .take()
            .into_iter()
            .chain(self.projections.drain(..))
            .collect();
        let pipelines = self.pipelines.take();
        let stop_group = async move {
            let stop_pipelines = async {
                if let Some(pipelines) = pipelines {
                    let _ = pipelines.send(StopPipelines).await;
                }
            };
            futures::join!(
                futures::future::join_all(groups.into_iter().map(ConsumerGroup::stop)),
                stop_pipelines
            );
        };
        futures::join!(stop_servers, stop_group);
        if let Some(lag) = self.lag.take() {
            // Joining the thread blocks for at most one measurement.
            let _ = tokio::task::spawn_blocking(move || lag.stop()).await;
        }
        for relay in self.relays.drain(..) {
            let _ = relay.send(StopRelay).await;
        }
        // Dropping the last address stops the producer actor, which flushes.
        self.producer.take();
        tracing::info!("stopped");
    }

    /// Runs until SIGINT or SIGTERM, then stops gracefully.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, stopping"),
            _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        }
        self.stop().await;
        Ok(())
    }
}
