//! The server side of replica-to-replica RPC: hands openraft messages to the local Raft node and
//! serves requests forwarded by followers.

use std::sync::Arc;

use tonic::{Request, Response as TResponse, Status};

use crate::network::pb::raft_peer_server::{RaftPeer, RaftPeerServer};
use crate::network::pb::Msg;
use crate::network::{decode, encode, ForwardRequest, MAX_PEER_MESSAGE};
use crate::replica::Replica;

pub struct PeerService {
    pub replica: Arc<Replica>,
}

impl PeerService {
    pub fn into_server(self) -> RaftPeerServer<PeerService> {
        RaftPeerServer::new(self).max_decoding_message_size(MAX_PEER_MESSAGE).max_encoding_message_size(MAX_PEER_MESSAGE)
    }
}

fn bad(e: String) -> Status {
    Status::invalid_argument(e)
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<Msg>) -> Result<TResponse<Msg>, Status> {
        let t = std::time::Instant::now();
        let rpc: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> = decode(req.get_ref()).map_err(bad)?;
        let with_entries = !rpc.entries.is_empty();
        let res = self.replica.raft.append_entries(rpc).await;
        if with_entries {
            self.replica.metrics.append_handle_seconds.observe(t.elapsed().as_secs_f64());
        }
        Ok(TResponse::new(encode(&res)))
    }

    async fn vote(&self, req: Request<Msg>) -> Result<TResponse<Msg>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad)?;
        let res = self.replica.raft.vote(rpc).await;
        Ok(TResponse::new(encode(&res)))
    }

    async fn install_snapshot(&self, req: Request<Msg>) -> Result<TResponse<Msg>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad)?;
        let res = self.replica.raft.install_snapshot(rpc).await;
        Ok(TResponse::new(encode(&res)))
    }

    async fn forward(&self, req: Request<Msg>) -> Result<TResponse<Msg>, Status> {
        let fr: ForwardRequest = decode(req.get_ref()).map_err(bad)?;
        let res = self.replica.handle_forward(fr).await;
        Ok(TResponse::new(encode(&res)))
    }
}
