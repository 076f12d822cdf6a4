//! etcd's v3 gRPC API (KV, Watch, Lease, Cluster, Maintenance) over a [`Replica`], with the
//! server traits generated from etcd's own protos by the `etcd-client` crate. This is the only
//! place that knows etcd's wire types and error strings.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::*;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::error::StoreError;
use crate::mvcc::in_range;
use crate::replica::Replica;
use crate::types::{self as t, ApplyError, CommandResult};
use crate::watch::{WatchOut, WatchSpec};

/// etcd's default --max-request-bytes.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// gRPC may carry this much more than a request's payload (etcd's grpcOverheadBytes).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// etcd's default --max-txn-ops.
pub const MAX_TXN_OPS: usize = 128;
/// The etcd version we answer to Status (the API level we implement).
pub const ETCD_VERSION: &str = "3.5.0";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// One struct serves every etcd service.
#[derive(Clone)]
pub struct EtcdApi {
    pub replica: Arc<Replica>,
}

/// etcd's error for each store error, with its gRPC code and exact message.
pub fn to_status(e: StoreError) -> Status {
    match e {
        StoreError::Apply(a) => match a {
            ApplyError::Compacted { .. } => Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
            ApplyError::FutureRevision => Status::out_of_range("etcdserver: mvcc: required revision is a future revision"),
            ApplyError::LeaseNotFound => Status::not_found("etcdserver: requested lease not found"),
            ApplyError::LeaseExists => Status::failed_precondition("etcdserver: lease already exists"),
            ApplyError::DuplicateKey => Status::invalid_argument("etcdserver: duplicate key given in txn request"),
            ApplyError::EmptyKey => Status::invalid_argument("etcdserver: key is not provided"),
            ApplyError::KeyNotFound => Status::invalid_argument("etcdserver: key not found"),
        },
        StoreError::NoLeader => Status::unavailable("etcdserver: no leader"),
        StoreError::Timeout => Status::unavailable("etcdserver: request timed out"),
        StoreError::TooLarge => Status::invalid_argument("etcdserver: request is too large"),
        StoreError::InvalidArgument(m) => Status::invalid_argument(format!("etcdserver: {m}")),
        StoreError::MemberNotFound => Status::not_found("etcdserver: member not found"),
        StoreError::PeerUrlExists => Status::failed_precondition("etcdserver: Peer URLs already exists"),
        StoreError::NotLearner => Status::failed_precondition("etcdserver: can only promote a learner member"),
        StoreError::Unavailable(m) => Status::unavailable(format!("etcdserver: {m}")),
        StoreError::Internal(m) => Status::internal(format!("etcdserver: {m}")),
        StoreError::Stopped => Status::unavailable("etcdserver: server stopped"),
    }
}

impl EtcdApi {
    fn header(&self, revision: i64) -> Option<PbResponseHeader> {
        let m = self.replica.raft.metrics().borrow().current_term;
        Some(PbResponseHeader { cluster_id: self.replica.cluster_id, member_id: self.replica.id, revision, raft_term: m })
    }
}

fn kv_to_pb(kv: t::KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

fn range_from_pb(r: PbRangeRequest) -> Result<t::RangeRequest, Status> {
    if r.key.is_empty() {
        return Err(to_status(ApplyError::EmptyKey.into()));
    }
    if r.limit < 0 {
        return Err(Status::invalid_argument("etcdserver: limit must not be negative"));
    }
    let sort_order = match r.sort_order {
        0 => t::SortOrder::None,
        1 => t::SortOrder::Ascend,
        2 => t::SortOrder::Descend,
        _ => return Err(Status::invalid_argument("etcdserver: invalid sort option")),
    };
    let sort_target = match r.sort_target {
        0 => t::SortTarget::Key,
        1 => t::SortTarget::Version,
        2 => t::SortTarget::Create,
        3 => t::SortTarget::Mod,
        4 => t::SortTarget::Value,
        _ => return Err(Status::invalid_argument("etcdserver: invalid sort option")),
    };
    // Ascending by key is the natural order.
    let sort_order = if sort_order == t::SortOrder::Ascend && sort_target == t::SortTarget::Key { t::SortOrder::None } else { sort_order };
    Ok(t::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        keys_only: r.keys_only,
        count_only: r.count_only,
        sort_order,
        sort_target,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

fn range_to_pb(r: t::RangeResponse, header: Option<PbResponseHeader>) -> PbRangeResponse {
    PbRangeResponse { header, kvs: r.kvs.into_iter().map(kv_to_pb).collect(), more: r.more, count: r.count }
}

fn put_from_pb(p: PbPutRequest) -> Result<t::PutRequest, Status> {
    if p.key.is_empty() {
        return Err(to_status(ApplyError::EmptyKey.into()));
    }
    if p.key.len() + p.value.len() > MAX_REQUEST_BYTES {
        return Err(to_status(StoreError::TooLarge));
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(t::PutRequest { key: p.key, value: p.value, lease: p.lease, prev_kv: p.prev_kv, ignore_value: p.ignore_value, ignore_lease: p.ignore_lease })
}

fn delete_from_pb(d: PbDeleteRequest) -> Result<t::DeleteRequest, Status> {
    if d.key.is_empty() {
        return Err(to_status(ApplyError::EmptyKey.into()));
    }
    Ok(t::DeleteRequest { key: d.key, range_end: d.range_end, prev_kv: d.prev_kv })
}

fn compare_from_pb(c: PbCompare) -> Result<t::Compare, Status> {
    let result = match c.result {
        0 => t::CompareResult::Equal,
        1 => t::CompareResult::Greater,
        2 => t::CompareResult::Less,
        3 => t::CompareResult::NotEqual,
        _ => return Err(Status::invalid_argument("etcdserver: invalid compare result")),
    };
    let u = c.target_union;
    let target = match c.target {
        0 => t::CompareTarget::Version(match u { Some(PbTargetUnion::Version(v)) => v, _ => 0 }),
        1 => t::CompareTarget::Create(match u { Some(PbTargetUnion::CreateRevision(v)) => v, _ => 0 }),
        2 => t::CompareTarget::Mod(match u { Some(PbTargetUnion::ModRevision(v)) => v, _ => 0 }),
        3 => t::CompareTarget::Value(match u { Some(PbTargetUnion::Value(v)) => v, _ => Vec::new() }),
        4 => t::CompareTarget::Lease(match u { Some(PbTargetUnion::Lease(v)) => v, _ => 0 }),
        _ => return Err(Status::invalid_argument("etcdserver: invalid compare target")),
    };
    if c.key.is_empty() {
        return Err(to_status(ApplyError::EmptyKey.into()));
    }
    Ok(t::Compare { key: c.key, range_end: c.range_end, result, target })
}

/// etcd's checkTxnRequest and checkIntervals: limits, and no key written twice in one branch.
fn txn_from_pb(r: PbTxnRequest, depth: usize) -> Result<t::TxnRequest, Status> {
    if depth > 16 {
        return Err(Status::invalid_argument("etcdserver: txn nested too deeply"));
    }
    if depth == 0 && count_ops(&r) > MAX_TXN_OPS * 8 {
        return Err(Status::invalid_argument("etcdserver: too many operations in txn request"));
    }
    if r.compare.len() > MAX_TXN_OPS || r.success.len() > MAX_TXN_OPS || r.failure.len() > MAX_TXN_OPS {
        return Err(Status::invalid_argument("etcdserver: too many operations in txn request"));
    }
    let compare = r.compare.into_iter().map(compare_from_pb).collect::<Result<Vec<_>, _>>()?;
    let conv = |ops: Vec<PbTxnRequestOp>| -> Result<Vec<t::Op>, Status> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => t::Op::Range(range_from_pb(r)?),
                Some(PbTxnOpRequest::RequestPut(p)) => t::Op::Put(put_from_pb(p)?),
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => t::Op::Delete(delete_from_pb(d)?),
                Some(PbTxnOpRequest::RequestTxn(t2)) => t::Op::Txn(txn_from_pb(t2, depth + 1)?),
                None => return Err(Status::invalid_argument("etcdserver: empty request in txn")),
            });
        }
        Ok(out)
    };
    let txn = t::TxnRequest { compare, success: conv(r.success)?, failure: conv(r.failure)? };
    if depth == 0 {
        check_no_duplicates(&txn.success)?;
        check_no_duplicates(&txn.failure)?;
    }
    Ok(txn)
}

/// etcd's checkIntervals: within one level no key is put twice or put inside a deleted range;
/// a nested txn's then and else branches may put the same key (only one runs).
/// Returns the keys put and the ranges deleted at or below this level.
fn check_intervals(ops: &[t::Op]) -> Result<(BTreeSet<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>), Status> {
    let dup = || to_status(ApplyError::DuplicateKey.into());
    let mut dels: Vec<(Vec<u8>, Vec<u8>)> = ops
        .iter()
        .filter_map(|op| match op {
            t::Op::Delete(d) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[(Vec<u8>, Vec<u8>)], k: &[u8]| dels.iter().any(|(s, e)| in_range(k, s, e));
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let t::Op::Txn(inner) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&inner.success)?;
        let (puts_else, dels_else) = check_intervals(&inner.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(dup());
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(dup());
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        if let t::Op::Put(p) = op {
            if puts.contains(&p.key) || deleted(&dels, &p.key) {
                return Err(dup());
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

fn check_no_duplicates(ops: &[t::Op]) -> Result<(), Status> {
    check_intervals(ops).map(|_| ())
}

/// Every operation at every nesting level (bounded so the duplicate check stays cheap).
fn count_ops(r: &PbTxnRequest) -> usize {
    let mut n = r.compare.len();
    for op in r.success.iter().chain(r.failure.iter()) {
        n += 1;
        if let Some(PbTxnOpRequest::RequestTxn(inner)) = &op.request {
            n += count_ops(inner);
        }
    }
    n
}

fn txn_resp_to_pb(r: t::TxnResponse, header: &Option<PbResponseHeader>) -> PbTxnResponse {
    let responses = r
        .responses
        .into_iter()
        .map(|op| PbResponseOp {
            response: Some(match op {
                t::OpResponse::Range(rr) => PbTxnOpResponse::ResponseRange(range_to_pb(rr, header.clone())),
                t::OpResponse::Put { prev_kv } => PbTxnOpResponse::ResponsePut(PbPutResponse { header: header.clone(), prev_kv: prev_kv.map(kv_to_pb) }),
                t::OpResponse::Delete { deleted, prev_kvs } => PbTxnOpResponse::ResponseDeleteRange(PbDeleteResponse {
                    header: header.clone(),
                    deleted,
                    prev_kvs: prev_kvs.into_iter().map(kv_to_pb).collect(),
                }),
                t::OpResponse::Txn(inner) => PbTxnOpResponse::ResponseTxn(txn_resp_to_pb(inner, header)),
            }),
        })
        .collect();
    PbTxnResponse { header: header.clone(), succeeded: r.succeeded, responses }
}

fn is_read_only(ops: &[t::Op]) -> bool {
    ops.iter().all(|op| match op {
        t::Op::Range(_) => true,
        t::Op::Txn(inner) => is_read_only(&inner.success) && is_read_only(&inner.failure),
        _ => false,
    })
}

impl EtcdApi {
    async fn run_txn(&self, txn: t::TxnRequest) -> Result<(i64, t::TxnResponse), Status> {
        match self.replica.write_ok(t::Command::Txn(txn)).await.map_err(to_status)? {
            (rev, CommandResult::Txn(r)) => Ok((rev, r)),
            (_, other) => Err(Status::internal(format!("etcdserver: unexpected result {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl PbKvService for EtcdApi {
    async fn range(&self, req: Request<PbRangeRequest>) -> Result<Response<PbRangeResponse>, Status> {
        let r = req.into_inner();
        let serializable = r.serializable;
        let rr = range_from_pb(r)?;
        let (resp, rev) = self.replica.range(&rr, serializable).await.map_err(to_status)?;
        Ok(Response::new(range_to_pb(resp, self.header(rev))))
    }

    type RangeStreamStream = BoxStream<PbRangeStreamResponse>;

    async fn range_stream(&self, _req: Request<PbRangeRequest>) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented("etcdserver: RangeStream is not supported; use Range with limit"))
    }

    async fn put(&self, req: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let p = put_from_pb(req.into_inner())?;
        let (rev, r) = self.run_txn(t::TxnRequest { success: vec![t::Op::Put(p)], ..Default::default() }).await?;
        let prev_kv = match r.responses.into_iter().next() {
            Some(t::OpResponse::Put { prev_kv }) => prev_kv.map(kv_to_pb),
            _ => None,
        };
        Ok(Response::new(PbPutResponse { header: self.header(rev), prev_kv }))
    }

    async fn delete_range(&self, req: Request<PbDeleteRequest>) -> Result<Response<PbDeleteResponse>, Status> {
        let d = delete_from_pb(req.into_inner())?;
        let (rev, r) = self.run_txn(t::TxnRequest { success: vec![t::Op::Delete(d)], ..Default::default() }).await?;
        let (deleted, prev_kvs) = match r.responses.into_iter().next() {
            Some(t::OpResponse::Delete { deleted, prev_kvs }) => (deleted, prev_kvs.into_iter().map(kv_to_pb).collect()),
            _ => (0, Vec::new()),
        };
        Ok(Response::new(PbDeleteResponse { header: self.header(rev), deleted, prev_kvs }))
    }

    async fn txn(&self, req: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let txn = txn_from_pb(req.into_inner(), 0)?;
        if txn.compare.is_empty() && is_read_only(&txn.success) {
            // A read-only txn needs no proposal: after one read barrier, every range reads at the
            // same revision.
            self.replica.read_barrier().await.map_err(to_status)?;
            let rev = self.replica.current_revision();
            let mut responses = Vec::new();
            for op in &txn.success {
                if let t::Op::Range(rr) = op {
                    let mut rr = rr.clone();
                    if rr.revision <= 0 {
                        rr.revision = rev;
                    }
                    let (resp, _) = self.replica.range(&rr, true).await.map_err(to_status)?;
                    responses.push(t::OpResponse::Range(resp));
                }
            }
            if responses.len() == txn.success.len() {
                let h = self.header(rev);
                return Ok(Response::new(txn_resp_to_pb(t::TxnResponse { succeeded: true, responses }, &h)));
            }
        }
        let (rev, r) = self.run_txn(txn).await?;
        let h = self.header(rev);
        Ok(Response::new(txn_resp_to_pb(r, &h)))
    }

    async fn compact(&self, req: Request<PbCompactionRequest>) -> Result<Response<PbCompactionResponse>, Status> {
        let r = req.into_inner();
        let (rev, _) = self.replica.write_ok(t::Command::Compact { revision: r.revision }).await.map_err(to_status)?;
        Ok(Response::new(PbCompactionResponse { header: self.header(rev) }))
    }
}

fn watch_out_to_pb(api: &EtcdApi, o: WatchOut) -> PbWatchResponse {
    let mut r = PbWatchResponse::default();
    match o {
        WatchOut::Created { watch_id, revision } => {
            r.header = api.header(revision);
            r.watch_id = watch_id;
            r.created = true;
        }
        WatchOut::CreateFailed { watch_id, reason, revision } => {
            r.header = api.header(revision);
            r.watch_id = watch_id;
            r.created = true;
            r.canceled = true;
            r.cancel_reason = reason;
        }
        WatchOut::Events { watch_id, revision, events } => {
            r.header = api.header(revision);
            r.watch_id = watch_id;
            r.events = events
                .into_iter()
                .map(|e| PbEvent {
                    r#type: match e.kind {
                        t::EventKind::Put => 0,
                        t::EventKind::Delete => 1,
                    },
                    kv: Some(kv_to_pb(e.kv)),
                    prev_kv: e.prev_kv.map(kv_to_pb),
                })
                .collect();
        }
        WatchOut::Canceled { watch_id, revision, compact_revision, reason } => {
            r.header = api.header(revision);
            r.watch_id = watch_id;
            r.canceled = true;
            r.compact_revision = compact_revision;
            r.cancel_reason = reason;
        }
        WatchOut::Progress { watch_id, revision } => {
            r.header = api.header(revision);
            r.watch_id = watch_id;
        }
    }
    r
}

/// How often watchers that asked for progress notifications get one (etcd defaults to 10 min).
const PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl PbWatchService for EtcdApi {
    type WatchStream = BoxStream<PbWatchResponse>;

    async fn watch(&self, req: Request<Streaming<PbWatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (out_tx, mut out_rx) = mpsc::channel::<WatchOut>(128);
        let (resp_tx, resp_rx) = mpsc::channel::<Result<PbWatchResponse, Status>>(128);
        let mut ws = self.replica.watch_stream(out_tx);
        let api = self.clone();
        let conv_tx = resp_tx.clone();
        tokio::spawn(async move {
            while let Some(o) = out_rx.recv().await {
                if conv_tx.send(Ok(watch_out_to_pb(&api, o))).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_NOTIFY_INTERVAL);
            tick.tick().await;
            loop {
                enum Next {
                    Req(Result<Option<PbWatchRequest>, Status>),
                    Hub(Result<crate::state_machine::HubMsg, tokio::sync::broadcast::error::RecvError>),
                    Tick,
                }
                let next = tokio::select! {
                    m = inbound.message() => Next::Req(m),
                    h = ws.recv_hub() => Next::Hub(h),
                    _ = tick.tick() => Next::Tick,
                };
                let res = match next {
                    Next::Req(Ok(Some(r))) => match r.request_union {
                        Some(PbWatchRequestUnion::CreateRequest(c)) => {
                            if c.key.is_empty() {
                                let _ = resp_tx.send(Err(to_status(ApplyError::EmptyKey.into()))).await;
                                return;
                            }
                            ws.create(WatchSpec {
                                key: c.key,
                                range_end: c.range_end,
                                start_revision: c.start_revision,
                                prev_kv: c.prev_kv,
                                filter_put: c.filters.contains(&0),
                                filter_delete: c.filters.contains(&1),
                                progress_notify: c.progress_notify,
                                watch_id: c.watch_id,
                            })
                            .await
                        }
                        Some(PbWatchRequestUnion::CancelRequest(c)) => ws.cancel(c.watch_id).await,
                        Some(PbWatchRequestUnion::ProgressRequest(_)) => ws.progress().await,
                        None => Ok(()),
                    },
                    Next::Req(_) => return,
                    Next::Hub(h) => ws.on_hub(h).await,
                    Next::Tick => ws.notify_progress().await,
                };
                if let Err(e) = res {
                    tracing::debug!("watch stream ends: {e}");
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(resp_rx))))
    }
}

#[tonic::async_trait]
impl PbLeaseService for EtcdApi {
    async fn lease_grant(&self, req: Request<PbLeaseGrantRequest>) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let r = req.into_inner();
        let (rev, id, ttl) = self.replica.lease_grant(r.id, r.ttl).await.map_err(to_status)?;
        Ok(Response::new(PbLeaseGrantResponse { header: self.header(rev), id, ttl, error: String::new() }))
    }

    async fn lease_revoke(&self, req: Request<PbLeaseRevokeRequest>) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let rev = self.replica.lease_revoke(req.into_inner().id).await.map_err(to_status)?;
        Ok(Response::new(PbLeaseRevokeResponse { header: self.header(rev) }))
    }

    type LeaseKeepAliveStream = BoxStream<PbLeaseKeepAliveResponse>;

    async fn lease_keep_alive(&self, req: Request<Streaming<PbLeaseKeepAliveRequest>>) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                let resp = match api.replica.lease_keepalive(r.id).await {
                    Ok(ttl) => Ok(PbLeaseKeepAliveResponse { header: api.header(api.replica.current_revision()), id: r.id, ttl }),
                    // etcd answers TTL 0 for a lease that does not exist.
                    Err(StoreError::Apply(ApplyError::LeaseNotFound)) => {
                        Ok(PbLeaseKeepAliveResponse { header: api.header(api.replica.current_revision()), id: r.id, ttl: 0 })
                    }
                    Err(e) => Err(to_status(e)),
                };
                let stop = resp.is_err();
                if tx.send(resp).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(&self, req: Request<PbLeaseTimeToLiveRequest>) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        match self.replica.lease_time_to_live(r.id).await {
            Ok((ttl, granted, keys)) => Ok(Response::new(PbLeaseTimeToLiveResponse {
                header: self.header(self.replica.current_revision()),
                id: r.id,
                ttl,
                granted_ttl: granted,
                keys: if r.keys { keys } else { Vec::new() },
            })),
            // etcdctl prints "lease X already expired" for TTL -1.
            Err(StoreError::Apply(ApplyError::LeaseNotFound)) => Ok(Response::new(PbLeaseTimeToLiveResponse {
                header: self.header(self.replica.current_revision()),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
            Err(e) => Err(to_status(e)),
        }
    }

    async fn lease_leases(&self, _req: Request<PbLeaseLeasesRequest>) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let leases = self.replica.leases().await.map_err(to_status)?;
        Ok(Response::new(PbLeaseLeasesResponse {
            header: self.header(self.replica.current_revision()),
            leases: leases.into_iter().map(|l| PbLeaseStatus { id: l.id }).collect(),
        }))
    }
}

fn peer_url_to_addr(u: &str) -> Result<String, Status> {
    let rest = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://")).unwrap_or(u);
    let addr = rest.trim_end_matches('/');
    if addr.is_empty() || !addr.contains(':') || addr.contains('/') {
        return Err(Status::invalid_argument(format!("etcdserver: invalid peer URL {u:?}: want scheme://host:port")));
    }
    Ok(addr.to_string())
}

impl EtcdApi {
    fn pb_members(&self) -> Vec<PbMember> {
        let mut ms: Vec<PbMember> = self
            .replica
            .members()
            .into_iter()
            .map(|m| PbMember {
                id: m.id,
                name: m.name,
                peer_ur_ls: vec![format!("https://{}", m.peer_addr)],
                client_ur_ls: if m.client_url.is_empty() { vec![] } else { vec![m.client_url] },
                is_learner: m.is_learner,
            })
            .collect();
        ms.sort_by_key(|m| m.id);
        ms
    }
}

#[tonic::async_trait]
impl PbClusterService for EtcdApi {
    async fn member_add(&self, req: Request<PbMemberAddRequest>) -> Result<Response<PbMemberAddResponse>, Status> {
        let r = req.into_inner();
        let [url] = r.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument("etcdserver: give exactly one peer URL"));
        };
        let addr = peer_url_to_addr(url)?;
        let id = self.replica.member_add("", &addr, r.is_learner).await.map_err(to_status)?;
        let member = PbMember { id, name: String::new(), peer_ur_ls: vec![url.clone()], client_ur_ls: vec![], is_learner: r.is_learner };
        Ok(Response::new(PbMemberAddResponse { header: self.header(self.replica.current_revision()), member: Some(member), members: self.pb_members() }))
    }

    async fn member_remove(&self, req: Request<PbMemberRemoveRequest>) -> Result<Response<PbMemberRemoveResponse>, Status> {
        self.replica.member_remove(req.into_inner().id).await.map_err(to_status)?;
        Ok(Response::new(PbMemberRemoveResponse { header: self.header(self.replica.current_revision()), members: self.pb_members() }))
    }

    async fn member_update(&self, _req: Request<PbMemberUpdateRequest>) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(Status::unimplemented("etcdserver: member update is not supported; remove and re-add the member"))
    }

    async fn member_list(&self, req: Request<PbMemberListRequest>) -> Result<Response<PbMemberListResponse>, Status> {
        if req.get_ref().linearizable {
            self.replica.read_barrier().await.map_err(to_status)?;
        }
        Ok(Response::new(PbMemberListResponse { header: self.header(self.replica.current_revision()), members: self.pb_members() }))
    }

    async fn member_promote(&self, req: Request<PbMemberPromoteRequest>) -> Result<Response<PbMemberPromoteResponse>, Status> {
        self.replica.member_promote(req.into_inner().id).await.map_err(to_status)?;
        Ok(Response::new(PbMemberPromoteResponse { header: self.header(self.replica.current_revision()), members: self.pb_members() }))
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for EtcdApi {
    async fn alarm(&self, _req: Request<PbAlarmRequest>) -> Result<Response<PbAlarmResponse>, Status> {
        // No space quota alarms exist here: report none.
        Ok(Response::new(PbAlarmResponse { header: self.header(self.replica.current_revision()), alarms: vec![] }))
    }

    async fn status(&self, _req: Request<PbStatusRequest>) -> Result<Response<PbStatusResponse>, Status> {
        let s = self.replica.status();
        Ok(Response::new(PbStatusResponse {
            header: self.header(s.revision),
            version: ETCD_VERSION.into(),
            db_size: s.db_size as i64,
            leader: s.leader.unwrap_or(0),
            raft_index: s.last_log_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors: if s.leader.is_none() { vec!["etcdserver: no leader".into()] } else { vec![] },
            db_size_in_use: s.db_size as i64,
            is_learner: s.is_learner,
            storage_version: String::new(),
            db_size_quota: 0,
            downgrade_info: None,
        }))
    }

    async fn defragment(&self, _req: Request<PbDefragmentRequest>) -> Result<Response<PbDefragmentResponse>, Status> {
        let handle = self.replica.sm.mvcc();
        tokio::task::spawn_blocking(move || {
            let db = handle.mvcc.db();
            for cf in crate::mvcc::ALL_CFS {
                if let Some(h) = db.cf_handle(cf) {
                    db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
                }
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(PbDefragmentResponse { header: self.header(self.replica.current_revision()) }))
    }

    async fn hash(&self, _req: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        Err(Status::unimplemented("etcdserver: Hash is not supported"))
    }

    async fn hash_kv(&self, _req: Request<PbHashKvRequest>) -> Result<Response<PbHashKvResponse>, Status> {
        Err(Status::unimplemented("etcdserver: HashKV is not supported"))
    }

    type SnapshotStream = BoxStream<PbSnapshotResponse>;

    async fn snapshot(&self, _req: Request<PbSnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let dir = self.replica.cfg.data_dir.join("snapshots");
        let path = dir.join(format!("backup-{}.tmp", rand::random::<u64>()));
        let size = self.replica.backup_to(&path).await.map_err(to_status)?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| Status::internal(e.to_string()))?;
        // The file stays readable through the open handle; its name goes now.
        let _ = std::fs::remove_file(&path);
        let header = self.header(self.replica.current_revision());
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut file = file;
            let mut sent = 0u64;
            loop {
                let mut buf = vec![0u8; 32 * 1024];
                match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        sent += n as u64;
                        let msg = PbSnapshotResponse { header: header.clone(), remaining_bytes: size - sent, blob: buf, version: ETCD_VERSION.into() };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(&self, _req: Request<PbMoveLeaderRequest>) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(Status::unimplemented("etcdserver: move-leader is not supported"))
    }

    async fn downgrade(&self, _req: Request<PbDowngradeRequest>) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(Status::unimplemented("etcdserver: downgrade is not supported"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> t::Op {
        t::Op::Put(t::PutRequest { key: k.into(), ..Default::default() })
    }
    fn del(k: &str, e: &str) -> t::Op {
        t::Op::Delete(t::DeleteRequest { key: k.into(), range_end: e.into(), prev_kv: false })
    }
    fn txn(then: Vec<t::Op>, els: Vec<t::Op>) -> t::Op {
        t::Op::Txn(t::TxnRequest { compare: vec![], success: then, failure: els })
    }

    #[test]
    fn duplicate_writes_in_a_txn_are_refused_as_etcd_does() {
        assert!(check_no_duplicates(&[put("a"), put("b"), del("c", "")]).is_ok());
        assert!(check_no_duplicates(&[put("a"), put("a")]).is_err());
        assert!(check_no_duplicates(&[put("b"), del("a", "c")]).is_err(), "put inside a deleted range");
        // Then and else never both run: the same key in each is fine...
        assert!(check_no_duplicates(&[txn(vec![put("k")], vec![put("k")])]).is_ok());
        // ...but not against the outer level, in either branch.
        assert!(check_no_duplicates(&[put("k"), txn(vec![], vec![put("k")])]).is_err());
        assert!(check_no_duplicates(&[del("k", ""), txn(vec![put("k")], vec![])]).is_err());
        assert!(check_no_duplicates(&[txn(vec![del("a", "z")], vec![]), put("m")]).is_err());
    }

    #[test]
    fn txn_size_limits_are_enforced() {
        let op = || PbTxnRequestOp { request: Some(PbTxnOpRequest::RequestRange(PbRangeRequest { key: b"k".to_vec(), ..Default::default() })) };
        let wide = PbTxnRequest { success: (0..MAX_TXN_OPS + 1).map(|_| op()).collect(), ..Default::default() };
        assert_eq!(txn_from_pb(wide, 0).unwrap_err().code(), tonic::Code::InvalidArgument);
        let mut deep = PbTxnRequest::default();
        for _ in 0..40 {
            deep = PbTxnRequest { success: vec![PbTxnRequestOp { request: Some(PbTxnOpRequest::RequestTxn(deep)) }], ..Default::default() };
        }
        assert!(txn_from_pb(deep, 0).is_err());
    }
}
