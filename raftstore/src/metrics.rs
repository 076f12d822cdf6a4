//! Prometheus metrics of one replica (served on the metrics port with /healthz).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub fsync_seconds: Histogram,
    pub proposal_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub batch_commands: Histogram,
    pub append_rpc_seconds: Histogram,
    pub append_rpc_entries: Histogram,
    pub append_handle_seconds: Histogram,
    pub leader_changes: Counter,
    pub term: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub last_log_index: Gauge,
    pub is_leader: Gauge,
    pub db_size_bytes: Gauge,
    pub log_db_size_bytes: Gauge,
    pub revision: Gauge,
    pub compact_revision: Gauge,
    pub compact_physical_revision: Gauge,
    pub watchers: Gauge,
    pub watch_lagged: Counter,
    pub watch_storage_reads: Counter,
    pub proposals_forwarded: Counter,
    pub snapshots_installed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kuberaft");
        let m = Metrics {
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            proposal_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            apply_seconds: Histogram::new(exponential_buckets(0.00001, 2.0, 18)),
            batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            append_rpc_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            append_rpc_entries: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            append_handle_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 18)),
            leader_changes: Counter::default(),
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            is_leader: Gauge::default(),
            db_size_bytes: Gauge::default(),
            log_db_size_bytes: Gauge::default(),
            revision: Gauge::default(),
            compact_revision: Gauge::default(),
            compact_physical_revision: Gauge::default(),
            watchers: Gauge::default(),
            watch_lagged: Counter::default(),
            watch_storage_reads: Counter::default(),
            proposals_forwarded: Counter::default(),
            snapshots_installed: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("raft_log_fsync_seconds", "Latency of fsyncing appended Raft log entries", m.fsync_seconds.clone());
        registry.register("proposal_seconds", "Latency from proposing a write to its result", m.proposal_seconds.clone());
        registry.register("apply_seconds", "Latency of applying one batch of committed entries", m.apply_seconds.clone());
        registry.register("proposal_batch_commands", "Client commands per proposed log entry (group commit)", m.batch_commands.clone());
        registry.register("append_rpc_seconds", "Leader: round trip of an AppendEntries carrying entries to one follower", m.append_rpc_seconds.clone());
        registry.register("append_rpc_entries", "Leader: entries per AppendEntries sent with entries", m.append_rpc_entries.clone());
        registry.register("append_handle_seconds", "Follower: time from receiving an AppendEntries to its answer (append and fsync included)", m.append_handle_seconds.clone());
        registry.register("raft_leader_changes", "Leader changes seen by this replica", m.leader_changes.clone());
        registry.register("raft_term", "Current Raft term", m.term.clone());
        registry.register("raft_commit_index", "Highest committed log index known", m.commit_index.clone());
        registry.register("raft_applied_index", "Highest log index applied to the state machine", m.applied_index.clone());
        registry.register("raft_last_log_index", "Highest log index in the local log", m.last_log_index.clone());
        registry.register("raft_is_leader", "1 if this replica is the Raft leader", m.is_leader.clone());
        registry.register("db_size_bytes", "State machine RocksDB size (SST files and memtables)", m.db_size_bytes.clone());
        registry.register("log_db_size_bytes", "Raft log size on disk (segment files)", m.log_db_size_bytes.clone());
        registry.register("mvcc_revision", "Current store revision", m.revision.clone());
        registry.register("mvcc_compact_revision", "Store compaction revision", m.compact_revision.clone());
        registry.register("mvcc_compact_physical_revision", "Revision below which compacted history has been removed", m.compact_physical_revision.clone());
        registry.register("watchers", "Open watchers on this replica", m.watchers.clone());
        registry.register("watch_streams_lagged", "Times a watch stream fell behind the applied-events broadcast and re-read from storage", m.watch_lagged.clone());
        registry.register("watch_storage_reads", "History reads from storage by watchers catching up", m.watch_storage_reads.clone());
        registry.register("proposals_forwarded", "Writes forwarded to the leader", m.proposals_forwarded.clone());
        registry.register("snapshots_installed", "Raft snapshots installed from the leader", m.snapshots_installed.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
