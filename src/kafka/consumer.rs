//! The consumer group's client context: librdkafka's log forwarded to
//! `tracing`, and the rebalance callback forwarded to a [`RebalanceHandler`].
//! Plumbing only: what an assignment means (which queues to split, what to
//! start, what to drain) belongs to the handler.

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;

use crate::kafka::forward_log;

/// What a consumer group does when librdkafka assigns or revokes
/// partitions. Both run on the thread that polls the consumer and may block
/// it: the group waits for them.
pub trait RebalanceHandler: Send + Sync + 'static {
    /// Partitions were assigned: prepare them, then call `assign` (which
    /// starts fetching) with the list, offsets set as wanted.
    fn assigned(
        &self,
        tpl: &mut TopicPartitionList,
        assign: &mut dyn FnMut(&TopicPartitionList) -> KafkaResult<()>,
    );

    /// Every partition is being taken away (or the group failed): let them
    /// go, then call `unassign`.
    fn revoked(&self, unassign: &mut dyn FnMut() -> KafkaResult<()>);
}

/// A group consumer's context, holding its rebalance handler.
pub struct GroupContext<H> {
    handler: H,
}

impl<H: RebalanceHandler> GroupContext<H> {
    /// A context that forwards rebalances to `handler`.
    pub fn new(handler: H) -> Self {
        Self { handler }
    }

    /// The rebalance handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}

impl<H: RebalanceHandler> ClientContext for GroupContext<H> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }
}

impl<H: RebalanceHandler> ConsumerContext for GroupContext<H> {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::Consumer;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.handler.assigned(tpl, &mut |tpl| base.assign(tpl))
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.handler.revoked(&mut || base.unassign())
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; giving up every partition");
                self.handler.revoked(&mut || base.unassign());
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::debug!(%error, "offset commit to Kafka failed; the view keeps the offsets");
        }
    }
}
