//! What a consumer group's partitions are doing: assigned, blocked (and
//! why), committed, and a signal at each commit. Read by `/ready`, by
//! `Prefer: wait` readers and by the rebuild's finish line.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::db::queries::PartitionKey;
use crate::metrics::Metrics;

/// The labels of a partition's series: its group's, so that the view, the
/// shop's views and every pipeline reading one topic each keep their own.
pub(crate) fn labels(key: &PartitionKey) -> [String; 3] {
    [
        key.group_id.clone(),
        key.topic.clone(),
        key.partition.to_string(),
    ]
}

/// What the group's partitions are doing, for `/ready`.
pub struct GroupStatus {
    assigned: Mutex<BTreeSet<i32>>,
    /// Blocked partitions, with the last error of a failed write when a
    /// write is what blocks them.
    blocked: Mutex<BTreeMap<i32, Option<String>>>,
    /// Why a partition is stopped or failing, for `/ready` and the rebuild.
    problems: Mutex<BTreeMap<i32, String>>,
    /// The last panic caught in this group's workers: partition and message.
    last_panic: Mutex<Option<(i32, String)>>,
    committed: Mutex<BTreeMap<i32, i64>>,
    /// Signalled at each commit, for whoever waits for the view to catch up.
    commit_seen: tokio::sync::Notify,
    /// Counts commits; every subscriber sees each change (see [`Self::commits`]).
    commits: tokio::sync::watch::Sender<u64>,
    pub(crate) metrics: Arc<Metrics>,
}

impl GroupStatus {
    /// The status of a group that has no partition yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            assigned: Mutex::default(),
            blocked: Mutex::default(),
            problems: Mutex::default(),
            last_panic: Mutex::default(),
            committed: Mutex::default(),
            commit_seen: tokio::sync::Notify::new(),
            commits: tokio::sync::watch::Sender::new(0),
            metrics,
        }
    }

    /// A receiver that changes after every batch commit of this group: the
    /// signal that the view may hold records it did not hold before. Any
    /// number of receivers, none of which costs anything between commits.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Marks a partition as blocked (retrying a failed write) or not; a
    /// partition no longer blocked has no write error either.
    pub fn set_blocked(&self, key: &PartitionKey, blocked: bool) {
        self.mark(key, blocked, None);
    }

    /// Marks a partition as blocked by a write that failed with `error`.
    pub fn set_write_error(&self, key: &PartitionKey, error: &str) {
        self.mark(key, true, Some(error));
    }

    fn mark(&self, key: &PartitionKey, blocked: bool, error: Option<&str>) {
        if let Ok(mut map) = self.blocked.lock() {
            match (blocked, error) {
                (true, Some(error)) => {
                    map.insert(key.partition, Some(error.to_owned()));
                }
                // Blocked for another reason: a write error already seen stays.
                (true, None) => {
                    map.entry(key.partition).or_default();
                }
                (false, _) => {
                    map.remove(&key.partition);
                }
            }
        }
        self.metrics
            .partition_blocked
            .with_label_values(&labels(key))
            .set(i64::from(blocked));
    }

    /// Partitions currently retrying a failed write.
    pub fn blocked(&self) -> Vec<i32> {
        self.blocked
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The last error of each partition retrying a failed write.
    pub fn write_errors(&self) -> BTreeMap<i32, String> {
        self.blocked
            .lock()
            .map(|m| {
                m.iter()
                    .filter_map(|(p, e)| Some((*p, e.clone()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Says why `key`'s partition is stopped or failing (`Some`), or that it
    /// no longer is (`None`). A partition with a problem counts as blocked.
    pub fn set_problem(&self, key: &PartitionKey, problem: Option<String>) {
        if let Ok(mut map) = self.problems.lock() {
            match problem {
                Some(reason) => map.insert(key.partition, reason),
                None => map.remove(&key.partition),
            };
        }
    }

    /// Partitions stopped or failing, with the reason.
    pub fn problems(&self) -> BTreeMap<i32, String> {
        self.problems.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Counts a panic caught in `key`'s worker.
    pub fn panicked(&self, key: &PartitionKey, message: &str) {
        if let Ok(mut last) = self.last_panic.lock() {
            *last = Some((key.partition, message.to_owned()));
        }
    }

    /// The last panic caught: partition and message.
    pub fn last_panic(&self) -> Option<(i32, String)> {
        self.last_panic.lock().ok().and_then(|l| l.clone())
    }

    /// Records that `partition`'s next offset is durable in the view.
    pub fn set_committed(&self, key: &PartitionKey, next_offset: i64) {
        if let Ok(mut map) = self.committed.lock() {
            map.insert(key.partition, next_offset);
        }
        self.commit_seen.notify_one();
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        self.metrics
            .committed_offset
            .with_label_values(&labels(key))
            .set(next_offset);
    }

    /// The next offset durable in the view per partition this process has committed.
    pub fn committed(&self) -> BTreeMap<i32, i64> {
        self.committed.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Resolves at the next commit, or at once if one happened since the
    /// last call (one waiter: the rebuild's finish line).
    pub async fn next_commit(&self) {
        self.commit_seen.notified().await;
    }

    /// Partitions currently assigned to this process.
    pub fn assigned(&self) -> Vec<i32> {
        self.assigned
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn set_assigned(&self, partitions: impl IntoIterator<Item = i32>) {
        if let Ok(mut set) = self.assigned.lock() {
            *set = partitions.into_iter().collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_error_is_the_last_one_and_goes_when_the_partition_is_unblocked() {
        let status = GroupStatus::new(Metrics::new());
        let key = PartitionKey {
            group_id: "g".to_owned(),
            topic: "t".to_owned(),
            partition: 2,
        };
        status.set_write_error(&key, "connection refused");
        status.set_write_error(&key, "check constraint violated");
        assert_eq!(status.blocked(), vec![2]);
        assert_eq!(
            status.write_errors(),
            BTreeMap::from([(2, "check constraint violated".to_owned())])
        );
        status.set_blocked(&key, false);
        assert!(status.blocked().is_empty());
        assert!(status.write_errors().is_empty());
    }
}
