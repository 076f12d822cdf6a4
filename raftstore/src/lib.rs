//! raftstore: a Raft-replicated MVCC key-value store with etcd's v3 semantics and API.
//!
//! Layers, bottom up: [`mvcc`] (MVCC over RocksDB, no Raft), [`log_store`] and
//! [`state_machine`] (openraft storage), [`network`] and [`peer_service`] (replica RPC),
//! [`replica`] (a running replica: writes, linearizable reads, leases, membership), [`watch`]
//! (watch streams), [`etcd_api`] (etcd's v3 gRPC API over a replica), [`server`] (process
//! wiring: listeners, TLS, metrics).

pub mod bench;
pub mod certs;
pub mod error;
pub mod etcd_api;
pub mod log_store;
pub mod metrics;
pub mod mvcc;
pub mod network;
pub mod peer_service;
pub mod replica;
pub mod server;
pub mod state_machine;
pub mod types;
pub mod watch;
