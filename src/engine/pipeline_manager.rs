//! The pipeline manager actor: runs, in this consumer process, every
//! pipeline stored in PostgreSQL, and follows their changes without a
//! restart.
//!
//! Every [`POLL`] it reads the number of the last change to any pipeline (one
//! cheap query); when that moved, it reads every current definition in one
//! snapshot and brings the running pipelines in line:
//!
//! * a new pipeline starts: its table is created when absent, and one
//!   consumer group member per topic (group [`group_id`]) joins, at the
//!   beginning of the log or, for `start = "latest"`, at its end;
//! * a new version of a running pipeline takes effect from the next record
//!   each partition reads ([`PipelineState::update`]): nothing stops, the
//!   group keeps its position, and each record is processed by exactly one
//!   version;
//! * a deleted pipeline stops: its partitions drain (the batches in flight
//!   are written and acknowledged), its sink is kept. A pipeline created
//!   again under its name is a new one, with a group of its own; it starts
//!   once the deleted one's consumers in this process have stopped, so
//!   that the two never write the same sink at once.
//!
//! A pipeline that cannot start (its table is there but cannot take its
//! rows, its file cannot be opened, ...) is reported by the admin API with
//! the reason and tried again every [`RETRY`], so that mending the cause is
//! enough, without a change to the definition. A table is checked when its
//! pipeline starts; one altered under a running pipeline shows in its
//! writes.
//!
//! Every process that runs the consumer role does the same, so a change
//! stored by any process reaches all of them within [`POLL`] and a batch.
//! Changing a pipeline's topics or sink is refused when it is applied; should
//! a definition change them all the same (the tables edited by hand), the
//! pipeline is restarted as if created again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::producer::KafkaProducer;
use crate::config::Settings;
use crate::db::{DbError, Pool};
use crate::engine::group::{ConsumerGroup, Membership};
use crate::engine::pg_sink::PgSink;
use crate::engine::pipeline::{
    Compiled, FileOutput, PipelineState, PipelineTable, TableError, TopicOutput,
};
use crate::engine::status::GroupStatus;
use crate::kafka::lag::GroupLag;
use crate::metrics::Metrics;
use crate::pipelines::store::{self, Stored};
use crate::pipelines::{Definition, Sink as SinkDefinition, Start};

/// How often the stored definitions are checked for a change.
pub const POLL: Duration = Duration::from_millis(500);
/// How long a pipeline that could not start waits before it is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// How often each pipeline's lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// The consumer group of pipeline `name` created (or created again after a
/// deletion) at version `created_version`: a pipeline applied again under a
/// deleted one's name is a new pipeline, which starts where its definition
/// says, not at the offsets the deleted one left in its group. A name holds
/// no `.`, so no two groups are one.
pub fn group_id(name: &str, created_version: i32) -> String {
    match created_version {
        1 => format!("chronolog-pipeline-{name}"),
        created => format!("chronolog-pipeline-{name}.{created}"),
    }
}

/// A consumer group of its own for a replay of pipeline `name`, told apart
/// from others by `suffix`.
pub fn replay_group_id(name: &str, suffix: &str) -> String {
    format!("chronolog-pipeline-{name}-replay-{suffix}")
}

/// A pipeline running in this process.
struct Running {
    definition: Definition,
    /// The version it was created at (see [`Stored::created_version`]),
    /// which with its name gives its group ([`group_id`]).
    created_version: i32,
    state: Arc<PipelineState>,
    groups: Vec<ConsumerGroup>,
    /// Measures the pipeline's lag; made at the first measurement.
    lag: Option<Arc<GroupLag>>,
}

/// What a pipeline looks like from outside: for `/ready` and the admin API.
#[derive(Clone)]
pub enum PipelineStatus {
    /// It runs.
    Running {
        /// The version it runs.
        version: i32,
        /// Its groups' partitions.
        groups: Vec<Arc<GroupStatus>>,
    },
    /// It could not start; it is tried again every [`RETRY`].
    NotStarted {
        /// Why.
        problem: String,
    },
}

/// Runs the stored pipelines.
pub struct PipelineManager {
    settings: Settings,
    /// The manager's own: it reads the definitions and prepares tables.
    pool: Pool,
    producer: Addr<KafkaProducer>,
    metrics: Arc<Metrics>,
    /// The last change applied.
    seen: i64,
    /// A check is in flight.
    checking: bool,
    /// A lag measurement is in flight.
    measuring: bool,
    /// Dead-letter topics created (or being created) for pipelines' topics.
    dead_letter_topics: std::collections::HashSet<String>,
    running: HashMap<String, Running>,
    /// The pipelines that could not start, and why.
    not_started: HashMap<String, String>,
    /// Pipelines whose consumers are stopping: one of the same name waits.
    stopping: std::collections::HashSet<String>,
    /// When to read the definitions again for them, changed or not.
    retry_at: Option<Instant>,
}

impl PipelineManager {
    /// A manager reading definitions from `pool` (`DATABASE_URL`). Each
    /// pipeline into PostgreSQL writes through a pool of its own (up to
    /// `DATABASE_POOL_SIZE` connections, one kept open): a table
    /// locked for a while holds up its own pipeline's writes, not the
    /// others' or the reading of a change.
    pub fn new(
        settings: Settings,
        pool: Pool,
        producer: Addr<KafkaProducer>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings,
            pool,
            producer,
            metrics,
            seen: -1,
            checking: false,
            measuring: false,
            dead_letter_topics: std::collections::HashSet::new(),
            running: HashMap::new(),
            not_started: HashMap::new(),
            stopping: std::collections::HashSet::new(),
            retry_at: None,
        }
    }

    /// Starts `stored`; else the reason it cannot start.
    fn start_pipeline(&self, stored: &Stored) -> Result<Running, String> {
        let definition = &stored.definition;
        let name = definition.name.as_str();
        let group = group_id(name, stored.created_version);
        let compiled = Compiled::new(stored.version, definition).map_err(|e| e.to_string())?;
        let state = PipelineState::new(name, compiled, self.metrics.clone());
        let membership = match definition.start {
            Start::Earliest => Membership::Subscribe,
            Start::Latest => Membership::SubscribeAtEnd,
        };
        // One file handle per pipeline, whatever its topics: batches of all
        // its partitions are appended through it, one at a time.
        let file = match &definition.sink {
            SinkDefinition::File { path } => match FileOutput::open(state.clone(), path) {
                Ok(output) => Some(Arc::new(output)),
                Err(error) => return Err(format!("cannot open {path}: {error}")),
            },
            _ => None,
        };
        // One pool per pipeline into PostgreSQL, whatever its topics.
        let mut pool = None;
        let mut groups = Vec::new();
        for topic in &definition.topics {
            let started = match &definition.sink {
                SinkDefinition::Postgres { table, .. } => {
                    let pool = pool.get_or_insert_with(|| {
                        crate::db::pool(
                            &self.settings.database_url,
                            self.settings.database_pool_size,
                        )
                    });
                    self.join(
                        &group,
                        topic,
                        &membership,
                        Arc::new(PgSink::new(
                            pool.clone(),
                            PipelineTable::new(state.clone(), table),
                        )),
                    )
                }
                SinkDefinition::Kafka { topic: out, .. } => {
                    match crate::kafka::producer_config(&self.settings).create() {
                        Ok(producer) => self.join(
                            &group,
                            topic,
                            &membership,
                            Arc::new(TopicOutput::new(
                                state.clone(),
                                out,
                                producer,
                                self.settings.delivery_timeout,
                            )),
                        ),
                        Err(error) => Err(format!("cannot create the producer for {out}: {error}")),
                    }
                }
                SinkDefinition::File { .. } => match &file {
                    Some(output) => self.join(&group, topic, &membership, output.clone()),
                    None => Err("the pipeline's file is not open".to_owned()),
                },
            };
            match started {
                Ok(group) => groups.push(group),
                Err(error) => {
                    let stopping = std::mem::take(&mut groups);
                    actix::spawn(async move {
                        futures::future::join_all(stopping.into_iter().map(ConsumerGroup::stop))
                            .await;
                    });
                    return Err(error);
                }
            }
        }
        self.metrics
            .pipeline_version
            .with_label_values(&[name])
            .set(i64::from(stored.version));
        tracing::info!(pipeline = name, version = stored.version, topics = ?definition.topics, sink = store::describe_sink(&definition.sink), "pipeline started");
        Ok(Running {
            definition: definition.clone(),
            created_version: stored.created_version,
            state,
            groups,
            lag: None,
        })
    }

    fn join<S: crate::engine::sink::Sink>(
        &self,
        group: &str,
        topic: &str,
        membership: &Membership,
        sink: Arc<S>,
    ) -> Result<ConsumerGroup, String> {
        ConsumerGroup::start(
            &self.settings,
            group,
            topic,
            membership.clone(),
            sink,
            Some(self.producer.clone()),
            self.metrics.clone(),
        )
        .map_err(|e| format!("cannot read {topic}: {e}"))
    }

    /// Brings the running pipelines in line with `current`; `tables` says
    /// why a pipeline's table cannot take its rows.
    fn reconcile(
        &mut self,
        current: Vec<Stored>,
        tables: &HashMap<String, String>,
        ctx: &mut Context<Self>,
    ) {
        let before = std::mem::take(&mut self.not_started);
        let wanted: HashMap<String, Stored> = current
            .into_iter()
            .map(|s| (s.definition.name.clone(), s))
            .collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(running) = self.running.remove(&name) {
                self.stop_pipeline(&name, running, "deleted", ctx);
            }
        }
        for (name, stored) in wanted {
            match self.running.get(&name) {
                Some(running) if running.state.version() == stored.version => {}
                // A new version of the same pipeline (its topics and sink
                // cannot change; its start only matters to a new group):
                // the filters are swapped in place.
                Some(running)
                    if running.created_version == stored.created_version
                        && running.definition.topics == stored.definition.topics
                        && running.definition.sink == stored.definition.sink =>
                {
                    match Compiled::new(stored.version, &stored.definition) {
                        Ok(compiled) => {
                            let from = running.state.version();
                            running.state.update(compiled);
                            self.metrics
                                .pipeline_version
                                .with_label_values(&[&name])
                                .set(i64::from(stored.version));
                            tracing::info!(
                                pipeline = name,
                                from,
                                to = stored.version,
                                "pipeline changed; the new version takes each partition's next record"
                            );
                        }
                        Err(error) => {
                            tracing::error!(pipeline = name, version = stored.version, %error, "cannot compile the new version; the running one goes on");
                        }
                    }
                    if let Some(running) = self.running.get_mut(&name) {
                        running.definition = stored.definition.clone();
                    }
                }
                // Created again under its name: started once the old one
                // has stopped (below, at the check that follows the stop).
                Some(_) => {
                    if let Some(running) = self.running.remove(&name) {
                        self.stop_pipeline(&name, running, "created again under its name", ctx);
                    }
                }
                None if self.stopping.contains(&name) => {}
                None => self.start(stored, tables, &before),
            }
        }
        self.retry_at = (!self.not_started.is_empty()).then(|| Instant::now() + RETRY);
    }

    /// Starts `stored`, unless `tables` says its table cannot take its rows;
    /// a problem is logged when it is not the one `before` had (a retry
    /// every [`RETRY`] does not repeat it).
    fn start(
        &mut self,
        stored: Stored,
        tables: &HashMap<String, String>,
        before: &HashMap<String, String>,
    ) {
        let name = stored.definition.name.clone();
        let started = match tables.get(&name) {
            Some(problem) => Err(problem.clone()),
            None => self.start_pipeline(&stored),
        };
        match started {
            Ok(running) => {
                self.running.insert(name, running);
            }
            Err(problem) => {
                // Not running here: no version or lag to show (a restarted
                // pipeline's are still there).
                let _ = self.metrics.pipeline_version.remove_label_values(&[&name]);
                let _ = self
                    .metrics
                    .pipeline_lag_records
                    .remove_label_values(&[&name]);
                if before.get(&name) != Some(&problem) {
                    tracing::error!(
                        pipeline = name,
                        version = stored.version,
                        problem,
                        "the pipeline cannot start; trying again every {RETRY:?}"
                    );
                }
                self.not_started.insert(name, problem);
            }
        }
    }

    /// Stops `running`. Until its consumers have stopped, no pipeline of
    /// the same name starts here; then the definitions are read again, and
    /// its gauges go unless one of that name runs by then.
    fn stop_pipeline(
        &mut self,
        name: &str,
        running: Running,
        why: &'static str,
        ctx: &mut Context<Self>,
    ) {
        let name = name.to_owned();
        let version = running.state.version();
        self.stopping.insert(name.clone());
        // Spawned on its own, so that it drains to the end even if the
        // manager stops first; the manager hears of its end.
        let stop = actix::spawn(async move {
            futures::future::join_all(running.groups.into_iter().map(ConsumerGroup::stop)).await;
        });
        ctx.spawn(stop.into_actor(self).map(move |_, act, _ctx| {
            act.stopping.remove(&name);
            if !act.running.contains_key(&name) {
                let _ = act.metrics.pipeline_version.remove_label_values(&[&name]);
                let _ = act
                    .metrics
                    .pipeline_lag_records
                    .remove_label_values(&[&name]);
            }
            tracing::info!(pipeline = name, version, why, "pipeline stopped");
            // One created again under its name waits for this.
            act.retry_at = Some(Instant::now());
        }));
    }

    /// Reads what changed (everything when `seen` is `None`); prepares the
    /// tables of postgres sinks first, so that a batch never meets a missing
    /// table, and answers why a pipeline's table cannot take its rows. A
    /// lost connection fails the whole check, to be tried again.
    async fn check(pool: Pool, seen: Option<i64>) -> Result<Option<Checked>, DbError> {
        let mut conn = crate::db::checkout(&pool).await?;
        if Some(store::last_change(&mut conn).await?) == seen {
            return Ok(None);
        }
        let snapshot = store::snapshot(&mut conn).await?;
        let mut tables = HashMap::new();
        for stored in &snapshot.pipelines {
            if let SinkDefinition::Postgres { table, .. } = &stored.definition.sink {
                match PipelineTable::prepare(&mut conn, table).await {
                    Ok(()) => {}
                    Err(TableError::Db { source, .. }) if source.is_connection_lost() => {
                        return Err(source);
                    }
                    Err(error) => {
                        tables.insert(stored.definition.name.clone(), error.to_string());
                    }
                }
            }
        }
        Ok(Some(Checked {
            change: snapshot.change,
            pipelines: snapshot.pipelines,
            tables,
        }))
    }
}

/// What a check of the definitions read.
struct Checked {
    /// The last change.
    change: i64,
    /// Every current definition.
    pipelines: Vec<Stored>,
    /// Why a pipeline's table cannot take its rows, by pipeline.
    tables: HashMap<String, String>,
}

impl PipelineManager {
    /// Creates, in the background, the dead-letter topics of the running
    /// pipelines' topics not created yet: a dead letter to a topic that does
    /// not exist would be retried for ever. (In the background: a broker
    /// that is slow to create topics must not delay a pipeline's change.)
    fn ensure_dead_letter_topics(&mut self) {
        let missing: Vec<String> = self
            .running
            .values()
            .flat_map(|r| r.definition.topics.iter())
            .map(|t| crate::kafka::dead_letter::dead_letter_topic(t))
            .filter(|t| !self.dead_letter_topics.contains(t))
            .collect();
        if missing.is_empty() {
            return;
        }
        self.dead_letter_topics.extend(missing.iter().cloned());
        let settings = self.settings.clone();
        actix::spawn(async move {
            if let Err(error) = crate::kafka::admin::ensure_named_topics(&settings, &missing).await
            {
                tracing::warn!(%error, topics = ?missing, "cannot create the pipelines' dead-letter topics");
            }
        });
    }
}

impl Actor for PipelineManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(POLL, |act, ctx| {
            if act.checking {
                return;
            }
            act.checking = true;
            // Pipelines that could not start are tried again, changed or not.
            let retry = act.retry_at.is_some_and(|at| at <= Instant::now());
            let check = Self::check(act.pool.clone(), (!retry).then_some(act.seen));
            ctx.spawn(check.into_actor(act).map(|result, act, ctx| {
                act.checking = false;
                match result {
                    Ok(Some(checked)) => {
                        act.seen = checked.change;
                        act.reconcile(checked.pipelines, &checked.tables, ctx);
                        act.ensure_dead_letter_topics();
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the pipelines' definitions; retrying")
                    }
                }
            }));
        });
        ctx.run_interval(LAG_EVERY, |act, ctx| {
            if act.measuring || act.running.is_empty() {
                return;
            }
            act.measuring = true;
            let settings = &act.settings;
            let pipelines: Vec<(String, Vec<String>, Arc<GroupLag>)> = act
                .running
                .iter_mut()
                .filter_map(|(name, r)| {
                    if r.lag.is_none() {
                        match GroupLag::new(settings, &group_id(name, r.created_version)) {
                            Ok(lag) => r.lag = Some(Arc::new(lag)),
                            Err(error) => tracing::debug!(pipeline = name, %error, "cannot measure the pipeline's lag"),
                        }
                    }
                    let lag = r.lag.clone()?;
                    Some((name.clone(), r.definition.topics.clone(), lag))
                })
                .collect();
            let measure = tokio::task::spawn_blocking(move || {
                pipelines
                    .into_iter()
                    .map(|(name, topics, lag)| (name, lag.measure(&topics)))
                    .collect::<Vec<_>>()
            });
            ctx.spawn(measure.into_actor(act).map(|measured, act, _ctx| {
                act.measuring = false;
                for (name, lag) in measured.unwrap_or_default() {
                    match lag {
                        // Only pipelines still running: a deleted one's
                        // gauge is gone with it.
                        Ok(records) if act.running.contains_key(&name) => act
                            .metrics
                            .pipeline_lag_records
                            .with_label_values(&[&name])
                            .set(records),
                        Ok(_) => {}
                        Err(error) => {
                            tracing::debug!(pipeline = name, %error, "cannot measure the pipeline's lag")
                        }
                    }
                }
            }));
        });
    }
}

/// Stops every pipeline: their partitions drain.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPipelines;

impl Handler<StopPipelines> for PipelineManager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: StopPipelines, ctx: &mut Self::Context) -> Self::Result {
        let running: Vec<Running> = self.running.drain().map(|(_, r)| r).collect();
        ctx.stop();
        Box::pin(async move {
            let groups = running.into_iter().flat_map(|r| r.groups);
            futures::future::join_all(groups.map(ConsumerGroup::stop)).await;
        })
    }
}

/// What each running pipeline is doing.
#[derive(Message)]
#[rtype(result = "HashMap<String, PipelineStatus>")]
pub struct PipelineStatuses;

impl Handler<PipelineStatuses> for PipelineManager {
    type Result = MessageResult<PipelineStatuses>;

    fn handle(&mut self, _msg: PipelineStatuses, _ctx: &mut Self::Context) -> Self::Result {
        let running = self.running.iter().map(|(name, running)| {
            let status = PipelineStatus::Running {
                version: running.state.version(),
                groups: running.groups.iter().map(ConsumerGroup::status).collect(),
            };
            (name.clone(), status)
        });
        let not_started = self.not_started.iter().map(|(name, problem)| {
            let status = PipelineStatus::NotStarted {
                problem: problem.clone(),
            };
            (name.clone(), status)
        });
        MessageResult(running.chain(not_started).collect())
    }
}
