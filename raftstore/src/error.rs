//! Errors a caller of the store can see. They say what happened; `etcd_api` maps each to the
//! gRPC status and message etcd uses, and the apiserver maps them to Kubernetes Status objects.

use serde::{Deserialize, Serialize};

use crate::types::ApplyError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    /// The command was applied and refused deterministically (compacted, lease not found...).
    #[error("{0}")]
    Apply(#[from] ApplyError),
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    #[error("request is too large")]
    TooLarge,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("member not found")]
    MemberNotFound,
    #[error("peerURL exists")]
    PeerUrlExists,
    #[error("can only promote a learner member")]
    NotLearner,
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("server is stopping")]
    Stopped,
}

pub type StoreResult<T> = Result<T, StoreError>;
