//! Replica-to-replica transport: tonic gRPC over mutual TLS. openraft's messages and our
//! forwarded client requests travel bincode-encoded inside one `Msg` frame type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::StoreError;
use crate::metrics::Metrics;
use crate::types::*;

pub mod pb {
    tonic::include_proto!("raftpb");
}
use pb::raft_peer_client::RaftPeerClient;
use pb::Msg;

/// Largest gRPC message between replicas (snapshot chunks are smaller; entries are capped by
/// the client request limit).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// Largest AppendEntries we send with more than one entry.
pub const MAX_APPEND_BYTES: u64 = 4 << 20;

pub fn encode<T: Serialize>(v: &T) -> Msg {
    Msg { data: bincode::serialize(v).expect("in-memory serialization cannot fail") }
}

pub fn decode<T: DeserializeOwned>(m: &Msg) -> Result<T, String> {
    bincode::deserialize(&m.data).map_err(|e| format!("undecodable peer message: {e}"))
}

/// Client requests a follower hands to the leader (or, for `LookupMember`, to any peer).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Command),
    ReadIndex,
    LeaseKeepAlive { id: i64 },
    LeaseTimeToLive { id: i64 },
    AddMember { id: NodeId, member: Member, learner: bool },
    /// A member publishing its name and client URL; never adds one that is absent.
    UpdateMember { id: NodeId, member: Member },
    PromoteMember { id: NodeId },
    RemoveMember { id: NodeId },
    /// Which id does the membership give the replica with this peer address? Answered locally.
    LookupMember { peer_addr: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ForwardResponse {
    Write(Response),
    ReadIndex(u64),
    LeaseTtl { ttl: i64, granted_ttl: i64 },
    Done,
    Member(Option<NodeId>),
}

/// Shared, lazily connected channels to peers.
#[derive(Clone)]
pub struct PeerClients {
    tls: Option<ClientTlsConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerClients {
    pub fn new(tls: Option<ClientTlsConfig>) -> PeerClients {
        PeerClients { tls, channels: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub fn client(&self, peer_addr: &str) -> Result<RaftPeerClient<Channel>, String> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let ch = match map.get(peer_addr) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut ep = Endpoint::from_shared(format!("{scheme}://{peer_addr}"))
                    .map_err(|e| format!("bad peer address {peer_addr}: {e}"))?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                if let Some(tls) = &self.tls {
                    ep = ep.tls_config(tls.clone()).map_err(|e| format!("peer TLS: {e}"))?;
                }
                let ch = ep.connect_lazy();
                map.insert(peer_addr.to_string(), ch.clone());
                ch
            }
        };
        Ok(RaftPeerClient::new(ch).max_decoding_message_size(MAX_PEER_MESSAGE).max_encoding_message_size(MAX_PEER_MESSAGE))
    }

    /// Sends a forwarded request to `peer_addr` and waits up to `timeout`.
    pub async fn forward(&self, peer_addr: &str, req: &ForwardRequest, timeout: Duration) -> Result<ForwardResponse, StoreError> {
        let mut c = self.client(peer_addr).map_err(StoreError::Unavailable)?;
        let mut r = tonic::Request::new(encode(req));
        r.set_timeout(timeout);
        let resp = tokio::time::timeout(timeout, c.forward(r))
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(|s| match s.code() {
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => StoreError::Timeout,
                _ => StoreError::Unavailable(format!("peer {peer_addr}: {}", s.message())),
            })?;
        let r: Result<ForwardResponse, StoreError> = decode(resp.get_ref()).map_err(StoreError::Internal)?;
        r
    }
}

pub struct NetworkFactory {
    pub clients: PeerClients,
    pub metrics: Arc<Metrics>,
}

pub struct PeerNetwork {
    target: NodeId,
    addr: String,
    clients: PeerClients,
    metrics: Arc<Metrics>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerNetwork {
        PeerNetwork { target, addr: node.peer_addr.clone(), clients: self.clients.clone(), metrics: self.metrics.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg2Err(String);

impl PeerNetwork {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        which: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>> {
        let mut c = self.clients.client(&self.addr).map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg2Err(e))))?;
        let mut r = tonic::Request::new(encode(req));
        let timeout = option.hard_ttl();
        r.set_timeout(timeout);
        let fut = async {
            match which {
                0 => c.append_entries(r).await,
                1 => c.vote(r).await,
                _ => c.install_snapshot(r).await,
            }
        };
        let resp = match tokio::time::timeout(timeout, fut).await {
            Err(_) => return Err(RPCError::Network(NetworkError::new(&Msg2Err(format!("rpc to {} timed out", self.addr))))),
            Ok(Err(s)) => {
                let e = Msg2Err(format!("rpc to {}: {}", self.addr, s.message()));
                return Err(match s.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
            Ok(Ok(r)) => r,
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            decode(resp.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&Msg2Err(e))))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        // openraft gives each AppendEntries one heartbeat interval; keep a message small enough
        // to cross in that time by asking it to send fewer entries.
        let n = rpc.entries.len() as u64;
        if n > 1 {
            let bytes = bincode::serialized_size(&rpc).unwrap_or(0);
            if bytes > MAX_APPEND_BYTES {
                let fit = (n * MAX_APPEND_BYTES / bytes).clamp(1, n - 1);
                return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
            }
        }
        if n == 0 {
            return self.call(0, &rpc, &option).await;
        }
        let t = std::time::Instant::now();
        let res = self.call(0, &rpc, &option).await;
        self.metrics.append_rpc_seconds.observe(t.elapsed().as_secs_f64());
        self.metrics.append_rpc_entries.observe(n as f64);
        res
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>> {
        self.call(2, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(1, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
