//! raftstore: a Raft-replicated MVCC key-value store with etcd's v3 semantics and API.

pub mod mvcc;
pub mod types;
