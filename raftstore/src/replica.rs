//! One running replica: the Raft node, its stores, and the operations clients call on it.
//!
//! Any replica accepts every operation. Writes go through Raft (a follower forwards them to the
//! leader); linearizable reads ask the leader for a read index, wait until this replica has
//! applied it, then read locally; serializable reads read locally at once. Lease expiry is
//! decided by the leader alone and replicated as a revoke, so every replica agrees on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::error::{StoreError, StoreResult};
use crate::log_store::LogStore;
use crate::metrics::Metrics;
use crate::mvcc::LeaseRecord;
use crate::network::{ForwardRequest, ForwardResponse, NetworkFactory, PeerClients};
use crate::state_machine::{SmShared, StateMachine};
use crate::types::*;
use crate::watch::{WatchOut, WatchStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// host:port other replicas reach this one at.
    pub advertise_peer: String,
    /// https://host:port clients reach the etcd API at.
    pub advertise_client: String,
    /// name -> peer host:port of the founding members.
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    pub cluster_token: String,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_count: u64,
    pub request_timeout: Duration,
    pub restore: Option<PathBuf>,
    pub peer_tls: Option<tonic::transport::ClientTlsConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MemberFile {
    id: NodeId,
    cluster_id: u64,
}

/// A stable 64-bit id (FNV-1a) for names and tokens, so every founding replica computes the
/// same member ids without talking.
pub fn stable_id(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    if h == 0 {
        1
    } else {
        h
    }
}

pub fn member_id(name: &str, peer_addr: &str, token: &str) -> NodeId {
    stable_id(&[name, peer_addr, token])
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberInfo {
    pub id: NodeId,
    pub name: String,
    pub peer_addr: String,
    pub client_url: String,
    pub is_learner: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub id: NodeId,
    pub name: String,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub is_learner: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub commit_index: u64,
    pub revision: Revision,
    pub compact_revision: Revision,
    pub db_size: u64,
    pub state: String,
}

/// Leader-side lease deadlines. Only the leader's clock matters; a new leader restarts every
/// lease's full TTL (as etcd does) so that a leader change never expires a lease early.
#[derive(Default)]
struct LeaseKeeper {
    deadlines: Mutex<HashMap<i64, Instant>>,
}

/// Coalesces concurrent linearizable reads: each round of read-index confirmation serves every
/// read that arrived before the round started.
#[derive(Default)]
struct ReadIndexQueue {
    state: Mutex<(bool, Vec<oneshot::Sender<StoreResult<u64>>>)>,
}

type WriteReq = (Command, oneshot::Sender<StoreResult<Response>>);

/// Most client commands proposed as one log entry.
const MAX_BATCH_COMMANDS: usize = 256;
/// Most bytes of values proposed as one log entry.
const MAX_BATCH_BYTES: usize = 2 << 20;
/// Batches in flight at once; while they are, new writes queue up into the next batch.
const MAX_BATCHES_IN_FLIGHT: usize = 1;

pub struct Replica {
    pub id: NodeId,
    me: std::sync::Weak<Replica>,
    writes: mpsc::Sender<WriteReq>,
    pub cfg: ReplicaConfig,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub log: LogStore,
    pub peers: PeerClients,
    pub metrics: Arc<Metrics>,
    pub cluster_id: u64,
    leases: LeaseKeeper,
    reads: ReadIndexQueue,
    membership_lock: tokio::sync::Mutex<()>,
    stopping: AtomicBool,
    /// Set once an applied membership no longer lists this replica (after it had been listed).
    removed: tokio::sync::watch::Sender<bool>,
}

/// Events removed per physical compaction step, and the pause between steps.
const COMPACTION_BATCH: usize = 1000;
const COMPACTION_PAUSE: Duration = Duration::from_millis(10);

/// etcd's MaxLeaseTTL (about 285 years).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

fn lease_deadline(now: Instant, ttl: i64) -> Instant {
    let ttl = Duration::from_secs(ttl.clamp(0, MAX_LEASE_TTL) as u64);
    now.checked_add(ttl).unwrap_or(now + Duration::from_secs(86400 * 365))
}

/// What a command adds to a batched log entry (its encoded size, values and compares included).
fn command_bytes(c: &Command) -> usize {
    bincode::serialized_size(c).map(|n| n as usize).unwrap_or(usize::MAX / 4)
}

fn fatal<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// Raft having stopped (this replica is shutting down) is "server stopped", which clients
/// retry elsewhere; any other fatal raft error is internal.
fn raft_fatal(e: openraft::error::Fatal<NodeId>) -> StoreError {
    match e {
        openraft::error::Fatal::Stopped => StoreError::Stopped,
        e => fatal(e),
    }
}

/// Whether a forward failed before the request could have reached the peer (connection never
/// established), so retrying cannot apply it twice. A reset or closed connection is ambiguous.
fn is_connect_error(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(m) => {
            let m = m.to_ascii_lowercase();
            m.contains("tcp connect error") || m.contains("connection refused")
        }
        _ => false,
    }
}

impl Replica {
    pub async fn start(cfg: ReplicaConfig) -> anyhow::Result<Arc<Replica>> {
        let metrics = Arc::new(Metrics::default());
        std::fs::create_dir_all(&cfg.data_dir)?;
        if let Some(file) = &cfg.restore {
            if cfg.data_dir.join("member.json").exists() || cfg.data_dir.join("log").exists() {
                anyhow::bail!("--restore needs an empty data dir, but {} is in use", cfg.data_dir.display());
            }
            StateMachine::restore_from_file(&cfg.data_dir, file)?;
            tracing::info!(file = %file.display(), "restored state machine from snapshot");
        }
        let log_dir = cfg.data_dir.join("log");
        let log = LogStore::open(&log_dir, metrics.clone())
            .map_err(|e| anyhow::anyhow!("raft log at {} cannot be opened ({e}); the replica refuses to start. Remove the data dir and re-add the member to resync from peers", log_dir.display()))?;
        let (n, last) = log.verify();
        tracing::info!(entries = n, last = ?last, "raft log verified");
        let sm = StateMachine::open(&cfg.data_dir, metrics.clone())?;
        let peers = PeerClients::new(cfg.peer_tls.clone());

        let member_path = cfg.data_dir.join("member.json");
        let cluster_id = stable_id(&["cluster", &cfg.cluster_token]);
        let (id, fresh) = match std::fs::read(&member_path) {
            Ok(b) => {
                let m: MemberFile = serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{} is corrupted: {e}", member_path.display()))?;
                (m.id, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = match cfg.initial_cluster_state {
                    ClusterState::New => {
                        if !cfg.initial_cluster.iter().any(|(n, _)| n == &cfg.name) {
                            anyhow::bail!("this replica's name {:?} is not in --initial-cluster", cfg.name);
                        }
                        member_id(&cfg.name, &cfg.advertise_peer, &cfg.cluster_token)
                    }
                    ClusterState::Existing => Self::lookup_own_id(&cfg, &peers).await?,
                };
                let bytes = serde_json::to_vec(&MemberFile { id, cluster_id })?;
                std::fs::write(&member_path, bytes)?;
                (id, true)
            }
            Err(e) => return Err(e.into()),
        };

        let snapshot_count = cfg.snapshot_count.max(1);
        let config = openraft::Config {
            cluster_name: cfg.cluster_token.clone(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_ms,
            election_timeout_max: cfg.election_timeout_ms * 3 / 2,
            install_snapshot_timeout: 30_000,
            snapshot_max_chunk_size: 4 << 20,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_count),
            max_in_snapshot_log_to_keep: (snapshot_count / 2).min(5000),
            max_payload_entries: 512,
            replication_lag_threshold: snapshot_count * 2,
            ..Default::default()
        }
        .validate()?;
        let sm_shared = sm.shared.clone();
        let net = NetworkFactory { clients: peers.clone(), metrics: metrics.clone() };
        let raft = openraft::Raft::new(id, Arc::new(config), net, log.clone(), sm).await?;

        if fresh && cfg.initial_cluster_state == ClusterState::New && !raft.is_initialized().await? {
            let mut members = BTreeMap::new();
            // Every founder must propose the identical membership (it becomes log entry 0 on each
            // of them), so client URLs are left out here and published by each replica later.
            for (name, addr) in &cfg.initial_cluster {
                members.insert(
                    member_id(name, addr, &cfg.cluster_token),
                    Member { name: name.clone(), peer_addr: addr.clone(), client_url: String::new() },
                );
            }
            match raft.initialize(members).await {
                Ok(()) => tracing::info!("initialized a new cluster"),
                // Another founding member got there first; its membership log reaches us.
                Err(e) => tracing::info!("cluster already initialized: {e}"),
            }
        }

        let (writes, write_rx) = mpsc::channel(16 * 1024);
        let r = Arc::new_cyclic(|me| Replica {
            id,
            me: me.clone(),
            writes,
            cfg,
            raft,
            sm: sm_shared,
            log,
            peers,
            metrics,
            cluster_id,
            leases: LeaseKeeper::default(),
            reads: ReadIndexQueue::default(),
            membership_lock: tokio::sync::Mutex::new(()),
            stopping: AtomicBool::new(false),
            removed: tokio::sync::watch::channel(false).0,
        });
        tokio::spawn(Self::batch_loop(Arc::downgrade(&r), write_rx));
        tokio::spawn(Self::metrics_loop(Arc::downgrade(&r)));
        tokio::spawn(Self::compaction_loop(Arc::downgrade(&r)));
        tokio::spawn(Self::lease_loop(Arc::downgrade(&r)));
        tokio::spawn(Self::removal_loop(Arc::downgrade(&r)));
        tokio::spawn(Self::publish_loop(Arc::downgrade(&r)));
        Ok(r)
    }

    /// A replica joining an existing cluster with an empty disk learns the id that `member add`
    /// gave its peer address from any founding peer.
    async fn lookup_own_id(cfg: &ReplicaConfig, peers: &PeerClients) -> anyhow::Result<NodeId> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for (name, addr) in &cfg.initial_cluster {
                if addr == &cfg.advertise_peer {
                    continue;
                }
                let req = ForwardRequest::LookupMember { peer_addr: cfg.advertise_peer.clone() };
                match peers.forward(addr, &req, Duration::from_secs(2)).await {
                    Ok(ForwardResponse::Member(Some(id))) => return Ok(id),
                    Ok(_) => tracing::warn!(peer = %name, "peer does not list {} as a member yet; run `etcdctl member add` first", cfg.advertise_peer),
                    Err(e) => tracing::warn!(peer = %name, "cannot ask peer for our member id: {e}"),
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("no peer in --initial-cluster lists {} as a member; add it with `etcdctl member add` first", cfg.advertise_peer);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub fn shutdown_started(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.raft.shutdown().await;
        if let Err(e) = self.log.flush() {
            tracing::warn!("flushing the raft log on shutdown: {e}");
        }
        if let Err(e) = self.sm.mvcc().mvcc.flush() {
            tracing::warn!("flushing the state machine on shutdown: {e}");
        }
    }

    // ------------------------------------------------------------------ background tasks

    /// Group commit of proposals: every write queued while earlier batches are in flight goes
    /// into one `Command::Batch` log entry (and one forwarded RPC on a follower). Each command
    /// still gets its own revision and result.
    async fn batch_loop(me: std::sync::Weak<Replica>, mut rx: mpsc::Receiver<WriteReq>) {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_BATCHES_IN_FLIGHT));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            let mut bytes = command_bytes(&batch[0].0);
            while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(w) => {
                        bytes += command_bytes(&w.0);
                        batch.push(w);
                    }
                    Err(_) => break,
                }
            }
            let Some(r) = me.upgrade() else { return };
            r.metrics.batch_commands.observe(batch.len() as f64);
            tokio::spawn(async move {
                let _permit = permit;
                if batch.len() == 1 {
                    let (cmd, tx) = batch.pop().expect("one");
                    let _ = tx.send(r.write_now(cmd).await);
                    return;
                }
                let (cmds, txs): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
                match r.write_now(Command::Batch(cmds)).await {
                    Ok(Response { result: Ok(CommandResult::Batch(rs)), .. }) if rs.len() == txs.len() => {
                        for (tx, resp) in txs.into_iter().zip(rs) {
                            let _ = tx.send(Ok(resp));
                        }
                    }
                    Ok(other) => {
                        let e = StoreError::Internal(format!("unexpected batch result {other:?}"));
                        for tx in txs {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                    Err(e) => {
                        for tx in txs {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
            });
        }
    }

    /// A replica that was a member and is no longer has been removed, and stops serving, as an
    /// etcd member does. The leader stops replicating to it as soon as the removal is proposed,
    /// so it usually never sees that membership itself: once it has had no leader for a few
    /// seconds it asks its peers whether their membership still lists it.
    async fn removal_loop(me: std::sync::Weak<Replica>) {
        let mut seen = false;
        let mut leaderless_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(r) = me.upgrade() else { return };
            if r.shutdown_started() {
                return;
            }
            let m = r.raft.metrics().borrow().clone();
            let mem = m.membership_config.membership();
            let listed = mem.get_node(&r.id).is_some();
            seen |= listed;
            // A leader removing itself sees the new membership as soon as it is in its log; it
            // waits until that entry is applied, so the change it was asked for is answered
            // (and committed) before it stops.
            let applied = m.last_applied >= *m.membership_config.log_id();
            let removed = if seen && !listed && mem.get_joint_config().len() == 1 && applied {
                true
            } else if seen && m.current_leader.is_none() {
                let since = *leaderless_since.get_or_insert_with(Instant::now);
                if since.elapsed() < Duration::from_secs(3) {
                    false
                } else {
                    let peers: Vec<String> = mem.nodes().filter(|(id, _)| **id != r.id).map(|(_, n)| n.peer_addr.clone()).collect();
                    let req = ForwardRequest::LookupMember { peer_addr: r.cfg.advertise_peer.clone() };
                    let mut dropped = false;
                    for p in peers {
                        if let Ok(ForwardResponse::Member(None)) = r.peers.forward(&p, &req, Duration::from_secs(1)).await {
                            dropped = true;
                            break;
                        }
                    }
                    dropped
                }
            } else {
                leaderless_since = None;
                false
            };
            if removed {
                tracing::error!("this replica was removed from the cluster");
                r.removed.send_replace(true);
                return;
            }
        }
    }

    /// Resolves once this replica has been removed from the cluster's membership.
    pub async fn wait_removed(&self) {
        let mut rx = self.removed.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Physical compaction in the background, a chunk at a time.
    async fn compaction_loop(me: std::sync::Weak<Replica>) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(r) = me.upgrade() else { return };
            if r.shutdown_started() {
                return;
            }
            let handle = r.sm.mvcc();
            drop(r);
            loop {
                let h = handle.clone();
                let m = handle.mvcc.physically_compacted().unwrap_or(0);
                if let Some(r) = me.upgrade() {
                    r.metrics.compact_physical_revision.set(m);
                }
                match tokio::task::spawn_blocking(move || h.mvcc.compact_step(COMPACTION_BATCH)).await {
                    Ok(Ok(true)) => break,
                    // Throttled like etcd's compaction (batches with pauses) so that removing a
                    // large history does not starve client requests.
                    Ok(Ok(false)) => tokio::time::sleep(COMPACTION_PAUSE).await,
                    Ok(Err(e)) => {
                        tracing::error!("background compaction: {e}");
                        break;
                    }
                    Err(_) => return,
                }
            }
        }
    }

    async fn metrics_loop(me: std::sync::Weak<Replica>) {
        let Some(r) = me.upgrade() else { return };
        let mut rx = r.raft.metrics();
        drop(r);
        let mut last_leader: Option<NodeId> = None;
        loop {
            let m = rx.borrow_and_update().clone();
            let Some(r) = me.upgrade() else { return };
            r.metrics.term.set(m.current_term as i64);
            r.metrics.last_log_index.set(m.last_log_index.unwrap_or(0) as i64);
            r.metrics.applied_index.set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
            r.metrics.commit_index.set(r.log.committed_index() as i64);
            r.metrics.is_leader.set((m.state == ServerState::Leader) as i64);
            if m.current_leader != last_leader {
                if m.current_leader.is_some() {
                    r.metrics.leader_changes.inc();
                }
                last_leader = m.current_leader;
            }
            drop(r);
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    async fn lease_loop(me: std::sync::Weak<Replica>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut led_term: Option<u64> = None;
        loop {
            tick.tick().await;
            let Some(r) = me.upgrade() else { return };
            if r.shutdown_started() {
                return;
            }
            let m = r.raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                led_term = None;
                r.leases.deadlines.lock().unwrap_or_else(|e| e.into_inner()).clear();
                continue;
            }
            let now = Instant::now();
            let handle = r.sm.mvcc();
            let leases = match handle.mvcc.leases() {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot list leases: {e}");
                    continue;
                }
            };
            drop(handle);
            let expired: Vec<i64> = {
                let mut d = r.leases.deadlines.lock().unwrap_or_else(|e| e.into_inner());
                if led_term != Some(m.current_term) {
                    // New leadership: every lease gets its full TTL again.
                    d.clear();
                    led_term = Some(m.current_term);
                }
                let live: BTreeSet<i64> = leases.iter().map(|l| l.id).collect();
                d.retain(|id, _| live.contains(id));
                for l in &leases {
                    d.entry(l.id).or_insert(lease_deadline(now, l.ttl));
                }
                d.iter().filter(|(_, t)| **t <= now).map(|(id, _)| *id).collect()
            };
            for id in expired {
                tracing::info!(lease = id, "lease expired; revoking");
                match tokio::time::timeout(r.cfg.request_timeout, r.raft.client_write(Command::LeaseRevoke { id })).await {
                    Ok(Ok(_)) => {
                        r.leases.deadlines.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    }
                    Ok(Err(e)) => tracing::warn!(lease = id, "cannot revoke expired lease: {e}"),
                    Err(_) => tracing::warn!(lease = id, "revoking expired lease timed out"),
                }
            }
        }
    }

    /// Makes sure the membership records this replica's client URL (members added with
    /// `member add` only know their peer URL until they start, as in etcd).
    async fn publish_loop(me: std::sync::Weak<Replica>) {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(r) = me.upgrade() else { return };
            if r.shutdown_started() {
                return;
            }
            let m = r.raft.metrics().borrow().clone();
            let Some(node) = m.membership_config.membership().get_node(&r.id).cloned() else { continue };
            if node.client_url == r.cfg.advertise_client && node.name == r.cfg.name {
                return;
            }
            if m.current_leader.is_none() {
                continue;
            }
            let member = Member { name: r.cfg.name.clone(), peer_addr: node.peer_addr.clone(), client_url: r.cfg.advertise_client.clone() };
            if let Err(e) = r.forward_or_local(ForwardRequest::UpdateMember { id: r.id, member }).await {
                tracing::debug!("publishing member attributes: {e}");
            }
        }
    }

    // ------------------------------------------------------------------ leader plumbing

    /// On every write and read index: reads the metrics in place instead of cloning them.
    fn leader_member(&self) -> Option<(NodeId, Member)> {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }

    /// The membership as this replica's log has it (possibly not yet committed).
    fn membership(&self) -> Arc<StoredMembership> {
        self.raft.metrics().borrow().membership_config.clone()
    }

    /// Starts a membership change: one at a time, on the leader; returns the membership it
    /// applies to.
    async fn begin_membership_change(&self) -> StoreResult<(tokio::sync::MutexGuard<'_, ()>, Arc<StoredMembership>)> {
        let guard = self.membership_lock.lock().await;
        self.ensure_leader()?;
        Ok((guard, self.membership()))
    }

    /// Runs `req` here if this replica leads, else on the leader; retries while there is no
    /// leader or the leader cannot be connected to (the request was not sent), up to the
    /// request timeout.
    pub async fn forward_or_local(&self, req: ForwardRequest) -> StoreResult<ForwardResponse> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        loop {
            if self.shutdown_started() {
                return Err(StoreError::Stopped);
            }
            let res = match self.leader_member() {
                Some((leader, _)) if leader == self.id => self.handle_forward(req.clone()).await,
                Some((_, node)) => {
                    self.metrics.proposals_forwarded.inc();
                    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
                    self.peers.forward(&node.peer_addr, &req, left).await
                }
                None => Err(StoreError::NoLeader),
            };
            match res {
                Err(StoreError::NoLeader) if Instant::now() < deadline => {}
                Err(e) if is_connect_error(&e) && Instant::now() < deadline => {}
                Err(StoreError::NoLeader) => return Err(StoreError::NoLeader),
                Err(e) if is_connect_error(&e) => return Err(StoreError::NoLeader),
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Serves a request as leader. Answers `NoLeader` (nothing done, safe to retry elsewhere)
    /// when this replica is not the leader.
    pub async fn handle_forward(&self, req: ForwardRequest) -> StoreResult<ForwardResponse> {
        match req {
            ForwardRequest::LookupMember { peer_addr } => {
                let id = self.membership().membership().nodes().find(|(_, n)| n.peer_addr == peer_addr).map(|(id, _)| *id);
                Ok(ForwardResponse::Member(id))
            }
            ForwardRequest::Write(cmd) => {
                let t = Instant::now();
                // A leader cut off from its quorum stays leader in openraft 0.9: bound the wait.
                let res = tokio::time::timeout(self.cfg.request_timeout, self.raft.client_write(cmd)).await.map_err(|_| StoreError::Timeout)?;
                self.metrics.proposal_seconds.observe(t.elapsed().as_secs_f64());
                match res {
                    Ok(resp) => Ok(ForwardResponse::Write(resp.data)),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(StoreError::NoLeader),
                    Err(RaftError::APIError(e)) => Err(StoreError::Internal(e.to_string())),
                    Err(RaftError::Fatal(e)) => Err(raft_fatal(e)),
                }
            }
            ForwardRequest::ReadIndex => match self.raft.get_read_log_id().await {
                Ok((read, _)) => Ok(ForwardResponse::ReadIndex(read.map(|l| l.index).unwrap_or(0))),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => Err(StoreError::NoLeader),
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(StoreError::Unavailable(format!("quorum not reached: {e}"))),
                Err(RaftError::Fatal(e)) => Err(raft_fatal(e)),
            },
            ForwardRequest::LeaseKeepAlive { id } => {
                self.ensure_leader()?;
                let Some(l) = self.sm.mvcc().mvcc.lease(id).map_err(fatal)? else {
                    return Err(ApplyError::LeaseNotFound.into());
                };
                let mut d = self.leases.deadlines.lock().unwrap_or_else(|e| e.into_inner());
                d.insert(id, lease_deadline(Instant::now(), l.ttl));
                Ok(ForwardResponse::LeaseTtl { ttl: l.ttl, granted_ttl: l.ttl })
            }
            ForwardRequest::LeaseTimeToLive { id } => {
                self.ensure_leader()?;
                let Some(l) = self.sm.mvcc().mvcc.lease(id).map_err(fatal)? else {
                    return Err(ApplyError::LeaseNotFound.into());
                };
                let d = self.leases.deadlines.lock().unwrap_or_else(|e| e.into_inner());
                let ttl = match d.get(&id) {
                    Some(t) => t.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as i64,
                    None => l.ttl,
                };
                Ok(ForwardResponse::LeaseTtl { ttl, granted_ttl: l.ttl })
            }
            ForwardRequest::UpdateMember { id, member } => {
                let (_g, stored) = self.begin_membership_change().await?;
                let mem = stored.membership();
                // A removed member publishing late must not come back.
                let Some(existing) = mem.get_node(&id) else {
                    return Err(StoreError::MemberNotFound);
                };
                if existing != &member {
                    let mut nodes = BTreeMap::new();
                    nodes.insert(id, member);
                    self.change(ChangeMembers::SetNodes(nodes), true).await?;
                }
                Ok(ForwardResponse::Done)
            }
            ForwardRequest::AddMember { id, member, learner } => {
                let (_g, stored) = self.begin_membership_change().await?;
                let mem = stored.membership();
                if mem.get_node(&id).is_some() {
                    return Ok(ForwardResponse::Done);
                }
                if mem.nodes().any(|(_, n)| n.peer_addr == member.peer_addr) {
                    return Err(StoreError::PeerUrlExists);
                }
                match self.raft.add_learner(id, member, false).await {
                    Ok(_) => {}
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => return Err(StoreError::NoLeader),
                    Err(e) => return Err(StoreError::Internal(e.to_string())),
                }
                if !learner {
                    self.change(ChangeMembers::AddVoterIds([id].into()), true).await?;
                }
                Ok(ForwardResponse::Done)
            }
            ForwardRequest::PromoteMember { id } => {
                let (_g, stored) = self.begin_membership_change().await?;
                let mem = stored.membership();
                if mem.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                if mem.voter_ids().any(|v| v == id) {
                    return Err(StoreError::NotLearner);
                }
                self.change(ChangeMembers::AddVoterIds([id].into()), true).await?;
                Ok(ForwardResponse::Done)
            }
            ForwardRequest::RemoveMember { id } => {
                let (_g, stored) = self.begin_membership_change().await?;
                let mem = stored.membership();
                if mem.get_node(&id).is_none() {
                    return Err(StoreError::MemberNotFound);
                }
                if mem.voter_ids().any(|v| v == id) {
                    if mem.voter_ids().count() == 1 {
                        return Err(StoreError::InvalidArgument("cannot remove the last voting member".into()));
                    }
                    self.change(ChangeMembers::RemoveVoters([id].into()), false).await?;
                } else {
                    self.change(ChangeMembers::RemoveNodes([id].into()), false).await?;
                }
                Ok(ForwardResponse::Done)
            }
        }
    }

    fn ensure_leader(&self) -> StoreResult<()> {
        if self.raft.metrics().borrow().state == ServerState::Leader {
            Ok(())
        } else {
            Err(StoreError::NoLeader)
        }
    }

    async fn change(&self, c: ChangeMembers<NodeId, Member>, retain: bool) -> StoreResult<()> {
        match self.raft.change_membership(c, retain).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(StoreError::NoLeader),
            Err(RaftError::APIError(e)) => Err(StoreError::InvalidArgument(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(raft_fatal(e)),
        }
    }

    // ------------------------------------------------------------------ client operations

    /// Proposes a command through Raft and returns its applied result. Transactions are batched
    /// with concurrent ones (group commit).
    ///
    /// On a follower the result comes from the leader; it is returned only once this replica
    /// has applied that revision too, so that a read, watch or progress request the caller
    /// sends next to this replica (even a serializable one) sees its own write.
    pub async fn write(&self, cmd: Command) -> StoreResult<Response> {
        let r = if !matches!(cmd, Command::Txn(_)) {
            self.write_now(cmd).await?
        } else {
            let (tx, rx) = oneshot::channel();
            self.writes.send((cmd, tx)).await.map_err(|_| StoreError::Stopped)?;
            rx.await.map_err(|_| StoreError::Stopped)??
        };
        // The published applied revision, not the store's: the store advances entry by entry
        // inside an apply batch, while watchers (and the API server's RBAC cache) hear of the
        // batch only when it is published.
        if !self.sm.wait_revision(r.revision, self.cfg.request_timeout).await {
            // Committed, but not visible here yet: acknowledging it would let the caller's next
            // watch or serializable read on this replica miss its own write. Like an etcd member
            // whose apply lags, answer "timed out" (the outcome the caller must then check).
            tracing::warn!(revision = r.revision, applied = self.current_revision(), "write committed but not applied here within the request timeout; answering timed out");
            return Err(StoreError::Timeout);
        }
        Ok(r)
    }

    async fn write_now(&self, cmd: Command) -> StoreResult<Response> {
        match self.forward_or_local(ForwardRequest::Write(cmd)).await? {
            ForwardResponse::Write(r) => Ok(r),
            other => Err(StoreError::Internal(format!("unexpected answer to a write: {other:?}"))),
        }
    }

    /// Writes a command and turns a deterministic refusal into an error.
    pub async fn write_ok(&self, cmd: Command) -> StoreResult<(Revision, CommandResult)> {
        let r = self.write(cmd).await?;
        let rev = r.revision;
        Ok((rev, r.result?))
    }

    /// Returns once this replica has applied everything committed before the call: reads after
    /// it are linearizable.
    pub async fn read_barrier(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        let start_round = {
            let mut st = self.reads.state.lock().unwrap_or_else(|e| e.into_inner());
            st.1.push(tx);
            if st.0 {
                false
            } else {
                st.0 = true;
                true
            }
        };
        if start_round {
            // The rounds run on their own task: a reader that gives up must not strand the
            // readers queued behind it.
            if let Some(me) = self.me.upgrade() {
                tokio::spawn(async move { me.run_read_rounds().await });
            }
        }
        let index = rx.await.map_err(|_| StoreError::Stopped)??;
        let timeout = self.cfg.request_timeout;
        match self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "linearizable read").await {
            Ok(_) => Ok(()),
            Err(openraft::metrics::WaitError::Timeout(..)) => Err(StoreError::Timeout),
            Err(openraft::metrics::WaitError::ShuttingDown) => Err(StoreError::Stopped),
        }
    }

    async fn run_read_rounds(&self) {
        loop {
            let waiters = {
                let mut st = self.reads.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.1.is_empty() {
                    st.0 = false;
                    return;
                }
                std::mem::take(&mut st.1)
            };
            let res = self.read_index().await;
            for w in waiters {
                let _ = w.send(res.clone());
            }
        }
    }

    async fn read_index(&self) -> StoreResult<u64> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        loop {
            match self.forward_or_local(ForwardRequest::ReadIndex).await {
                Ok(ForwardResponse::ReadIndex(i)) => return Ok(i),
                Ok(other) => return Err(StoreError::Internal(format!("unexpected answer to read index: {other:?}"))),
                // A heartbeat round that missed a quorum (a blip): try again until the deadline.
                Err(StoreError::Unavailable(_)) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn range(&self, req: &RangeRequest, serializable: bool) -> StoreResult<(RangeResponse, Revision)> {
        if !serializable {
            self.read_barrier().await?;
        }
        let handle = self.sm.mvcc();
        let res = tokio::task::block_in_place(|| handle.mvcc.range_at_view(req));
        Ok(res.map_err(fatal)??)
    }

    /// One page of a range (see `Mvcc::range_page_at_view`: `count` is only a lower bound).
    pub async fn range_page(&self, req: &RangeRequest, serializable: bool) -> StoreResult<(RangeResponse, Revision)> {
        if !serializable {
            self.read_barrier().await?;
        }
        let handle = self.sm.mvcc();
        let res = tokio::task::block_in_place(|| handle.mvcc.range_page_at_view(req));
        Ok(res.map_err(fatal)??)
    }

    pub fn current_revision(&self) -> Revision {
        self.sm.mvcc().mvcc.current_revision()
    }

    pub fn watch_stream(&self, out: mpsc::Sender<WatchOut>) -> WatchStream {
        WatchStream::new(self.sm.clone(), out)
    }

    pub async fn lease_grant(&self, id: i64, ttl: i64) -> StoreResult<(Revision, i64, i64)> {
        if id < 0 {
            return Err(StoreError::InvalidArgument("lease ID must be positive".into()));
        }
        if ttl > MAX_LEASE_TTL {
            return Err(StoreError::InvalidArgument("too large lease TTL".into()));
        }
        let id = if id == 0 { (rand::random::<u64>() >> 1).max(1) as i64 } else { id };
        match self.write_ok(Command::LeaseGrant { id, ttl }).await? {
            (rev, CommandResult::LeaseGranted { id, ttl }) => {
                // The leader starts the clock now (not at apply), so a lease is never shorter.
                Ok((rev, id, ttl))
            }
            (_, other) => Err(StoreError::Internal(format!("unexpected lease grant result {other:?}"))),
        }
    }

    pub async fn lease_revoke(&self, id: i64) -> StoreResult<Revision> {
        Ok(self.write_ok(Command::LeaseRevoke { id }).await?.0)
    }

    pub async fn lease_keepalive(&self, id: i64) -> StoreResult<i64> {
        match self.forward_or_local(ForwardRequest::LeaseKeepAlive { id }).await? {
            ForwardResponse::LeaseTtl { ttl, .. } => Ok(ttl),
            other => Err(StoreError::Internal(format!("unexpected keepalive answer {other:?}"))),
        }
    }

    /// (remaining ttl, granted ttl, attached keys)
    pub async fn lease_time_to_live(&self, id: i64) -> StoreResult<(i64, i64, Vec<Vec<u8>>)> {
        match self.forward_or_local(ForwardRequest::LeaseTimeToLive { id }).await {
            Ok(ForwardResponse::LeaseTtl { ttl, granted_ttl }) => {
                self.read_barrier().await?;
                let keys = self.sm.mvcc().mvcc.lease_keys(id).map_err(fatal)?;
                Ok((ttl, granted_ttl, keys))
            }
            Ok(other) => Err(StoreError::Internal(format!("unexpected time-to-live answer {other:?}"))),
            Err(e) => Err(e),
        }
    }

    pub async fn leases(&self) -> StoreResult<Vec<LeaseRecord>> {
        self.read_barrier().await?;
        self.sm.mvcc().mvcc.leases().map_err(fatal)
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        let stored = self.membership();
        let mem = stored.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        mem.nodes()
            .map(|(id, n)| MemberInfo {
                id: *id,
                name: n.name.clone(),
                peer_addr: n.peer_addr.clone(),
                client_url: n.client_url.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    pub async fn member_add(&self, name: &str, peer_addr: &str, learner: bool) -> StoreResult<NodeId> {
        if self.members().iter().any(|m| m.peer_addr == peer_addr) {
            return Err(StoreError::PeerUrlExists);
        }
        let id = rand::random::<u64>().max(1);
        let member = Member { name: name.to_string(), peer_addr: peer_addr.to_string(), client_url: String::new() };
        self.forward_or_local(ForwardRequest::AddMember { id, member, learner }).await?;
        Ok(id)
    }

    pub async fn member_remove(&self, id: NodeId) -> StoreResult<()> {
        self.forward_or_local(ForwardRequest::RemoveMember { id }).await.map(|_| ())
    }

    pub async fn member_promote(&self, id: NodeId) -> StoreResult<()> {
        self.forward_or_local(ForwardRequest::PromoteMember { id }).await.map(|_| ())
    }

    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let handle = self.sm.mvcc();
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        Status {
            id: self.id,
            name: self.cfg.name.clone(),
            leader: m.current_leader,
            is_leader: m.state == ServerState::Leader,
            is_learner: !voters.contains(&self.id),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            commit_index: self.log.committed_index(),
            revision: handle.mvcc.current_revision(),
            compact_revision: handle.mvcc.compact_revision(),
            db_size: handle.mvcc.size_bytes(),
            state: format!("{:?}", m.state),
        }
    }

    /// Writes a consistent backup of the state machine (the format `--restore` reads).
    pub async fn backup_to(&self, path: &std::path::Path) -> StoreResult<u64> {
        let handle = self.sm.mvcc();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || -> StoreResult<u64> {
            let f = std::fs::File::create(&path).map_err(fatal)?;
            let mut w = std::io::BufWriter::new(f);
            crate::state_machine::write_snapshot(&handle.mvcc, &mut w).map_err(fatal)?;
            let f = w.into_inner().map_err(fatal)?;
            f.sync_all().map_err(fatal)?;
            Ok(f.metadata().map_err(fatal)?.len())
        })
        .await
        .map_err(fatal)?
    }
}
