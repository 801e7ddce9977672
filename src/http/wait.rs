//! Read-your-writes: `GET /api/v1/timestamp/{id}` with `Prefer: wait=N`
//! waits until the view holds the record.
//!
//! One [`ViewWatcher`] per process keeps the ids that requests wait for.
//! Whenever the view may have changed it looks all of them up in one query
//! and hands each record found to its waiters. The view may change
//!
//! * at each batch commit of this process's consumer group, when the
//!   process runs the consumer role (the group's commit signal), and
//! * at any time when another process projects the partition: the watcher
//!   also looks every [`TICK`], but only while some request waits.
//!
//! A waiting request costs a map entry and a oneshot channel: no thread, no
//! task and no query of its own. Requests that wait for a record already in
//! the view never reach the watcher's query: the handler reads the record
//! first, as any `GET` does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use prometheus::IntGauge;
use tokio::sync::{Notify, oneshot, watch};
use uuid::Uuid;

use crate::db::models::TimestampRecord;
use crate::db::schema::timestamp_records;
use crate::db::{DbError, Pool};

/// Longest wait a request may ask for, in seconds; longer ones are cut to it.
pub const MAX_WAIT_SECONDS: u64 = 30;

/// How often the watcher looks while requests wait, besides the commit signal.
pub const TICK: Duration = Duration::from_millis(200);

/// Most requests that wait at once; a request beyond it is answered at once,
/// as without `Prefer: wait`.
pub const MAX_WAITERS: usize = 10_000;

/// Longest one look at the view may take before the watcher tries again.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the ids that requests wait for and wakes them when the view holds
/// their record.
pub struct ViewWatcher {
    waiting: Mutex<Waiting>,
    /// A first waiter arrived: the loop leaves its idle state.
    arrived: Notify,
    pool: Pool,
    looks: AtomicU64,
}

#[derive(Default)]
struct Waiting {
    by_id: HashMap<Uuid, Vec<oneshot::Sender<TimestampRecord>>>,
    count: usize,
    /// Released for good: the server is stopping.
    released: bool,
    /// Shows `count` (`chronolog_query_waiting_requests`), when given.
    gauge: Option<IntGauge>,
}

impl Waiting {
    fn add(&mut self, n: usize) {
        self.count += n;
        self.show();
    }

    fn sub(&mut self, n: usize) {
        self.count -= n;
        self.show();
    }

    fn show(&self) {
        if let Some(gauge) = &self.gauge {
            gauge.set(i64::try_from(self.count).unwrap_or(i64::MAX));
        }
    }

    /// Drops the waiters of `id` that gave up.
    fn prune(&mut self, id: &Uuid) {
        if let Some(senders) = self.by_id.get_mut(id) {
            let before = senders.len();
            senders.retain(|s| !s.is_closed());
            let (gone, empty) = (before - senders.len(), senders.is_empty());
            if empty {
                self.by_id.remove(id);
            }
            self.sub(gone);
        }
    }
}

impl ViewWatcher {
    /// Starts the watcher's loop on the current actix system. `commits`
    /// changes at each batch commit of this process's consumer group (none
    /// in a process without the consumer role); `tick` is how often it looks
    /// besides; `gauge`, when given, shows how many requests wait. Abort
    /// the returned task to stop it.
    pub fn start(
        pool: Pool,
        commits: Option<watch::Receiver<u64>>,
        tick: Duration,
        gauge: Option<IntGauge>,
    ) -> (Arc<Self>, tokio::task::AbortHandle) {
        let watcher = Arc::new(Self {
            waiting: Mutex::new(Waiting {
                gauge,
                ..Waiting::default()
            }),
            arrived: Notify::new(),
            pool,
            looks: AtomicU64::new(0),
        });
        let task = actix_rt::spawn(watcher.clone().run(commits, tick));
        (watcher, task.abort_handle())
    }

    /// Registers a wait for `id`; `None` when [`MAX_WAITERS`] requests
    /// already wait or the watcher was released. The wait ends when the
    /// [`Waiter`] is dropped.
    pub fn wait_for(&self, id: Uuid) -> Option<Waiter<'_>> {
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiting = self.lock();
            if waiting.released || waiting.count >= MAX_WAITERS {
                return None;
            }
            waiting.by_id.entry(id).or_default().push(sender);
            waiting.add(1);
        }
        self.arrived.notify_one();
        Some(Waiter {
            id,
            receiver,
            watcher: self,
        })
    }

    /// Ends every wait now (the waiters find nothing) and refuses new ones:
    /// a stopping server answers its waiting requests instead of holding
    /// its shutdown for as long as they asked to wait.
    pub fn release(&self) {
        let mut waiting = self.lock();
        waiting.released = true;
        waiting.by_id.clear();
        let all = waiting.count;
        waiting.sub(all);
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().count
    }

    /// Looks at the view taken so far (each one query, for every waiting id).
    pub fn looks(&self) -> u64 {
        AtomicU64::load(&self.looks, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding the lock; a poisoned map is still whole.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn run(self: Arc<Self>, mut commits: Option<watch::Receiver<u64>>, tick: Duration) {
        let mut failing = false;
        loop {
            if self.waiting() == 0 {
                self.arrived.notified().await;
                // Commits while nobody waited concern nobody.
                if let Some(commits) = commits.as_mut() {
                    commits.borrow_and_update();
                }
                continue;
            }
            match commits.as_mut() {
                Some(signal) => {
                    tokio::select! {
                        changed = signal.changed() => if changed.is_err() {
                            // The group has stopped: only the tick is left.
                            commits = None;
                        },
                        () = tokio::time::sleep(tick) => {}
                    }
                }
                None => tokio::time::sleep(tick).await,
            }
            self.look(&mut failing).await;
        }
    }

    /// Looks up every waiting id in one query and wakes the waiters of those
    /// found.
    async fn look(&self, failing: &mut bool) {
        let ids: Vec<Uuid> = {
            let mut waiting = self.lock();
            let mut gone = 0;
            waiting.by_id.retain(|_, senders| {
                let before = senders.len();
                senders.retain(|s| !s.is_closed());
                gone += before - senders.len();
                !senders.is_empty()
            });
            waiting.sub(gone);
            waiting.by_id.keys().copied().collect()
        };
        if ids.is_empty() {
            return;
        }
        self.looks.fetch_add(1, Ordering::Relaxed);
        let found = match tokio::time::timeout(LOOK_TIMEOUT, self.find(&ids)).await {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                if !*failing {
                    tracing::warn!(%error, "cannot read the view for waiting requests; retrying");
                }
                *failing = true;
                return;
            }
            Err(_) => {
                if !*failing {
                    tracing::warn!("reading the view for waiting requests timed out; retrying");
                }
                *failing = true;
                return;
            }
        };
        if *failing {
            tracing::info!("reading the view for waiting requests again");
            *failing = false;
        }
        let mut waiting = self.lock();
        for record in found {
            if let Some(senders) = waiting.by_id.remove(&record.id) {
                waiting.sub(senders.len());
                for sender in senders {
                    // A waiter that gave up meanwhile has dropped its receiver.
                    let _ = sender.send(record.clone());
                }
            }
        }
    }

    async fn find(&self, ids: &[Uuid]) -> Result<Vec<TimestampRecord>, DbError> {
        let mut conn = self.pool.get().await?;
        Ok(timestamp_records::table
            .filter(timestamp_records::id.eq_any(ids))
            .select(TimestampRecord::as_select())
            .load(&mut conn)
            .await?)
    }
}

/// One request's wait for a record; dropping it ends the wait.
pub struct Waiter<'a> {
    id: Uuid,
    receiver: oneshot::Receiver<TimestampRecord>,
    watcher: &'a ViewWatcher,
}

impl Waiter<'_> {
    /// Resolves with the record once the watcher has found it in the view;
    /// with `None` when the watcher was released first.
    pub async fn found(&mut self) -> Option<TimestampRecord> {
        (&mut self.receiver).await.ok()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.receiver.close();
        self.watcher.lock().prune(&self.id);
    }
}
