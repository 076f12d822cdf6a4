//! The Kubernetes API over HTTPS on raftstore.
//!
//! Every replica serves the API from its own in-process store: reads are linearizable (read
//! index through the Raft leader), writes go through Raft as compare-and-swap transactions on
//! the object's revision, and watches stream from the replica's applied state. One generic
//! registry (rest.rs) serves every resource; strategy.rs holds what differs per kind.

pub mod admission;
pub mod alloc;
pub mod bench;
pub mod bootstrap;
pub mod catalog;
pub mod crd;
pub mod crd_schema;
pub mod decoded;
pub mod discovery;
pub mod error;
pub mod kubeconfig;
pub mod managed;
pub mod metrics;
pub mod node_authz;
pub mod openapi;
pub mod patch;
pub mod pods;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod request;
pub mod reviews;
pub mod rest;
pub mod selectors;
pub mod server;
pub mod store;
pub mod strategy;
pub mod table;
pub mod tokens;
pub mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use raftstore::replica::Replica;
use serde_json::Value;

pub use server::serve;

/// API server settings (flags of `kuberaft server`).
#[derive(Clone, Debug, Default, serde::Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiOptions {
    /// Run the store only: no Kubernetes API, no bootstrap objects.
    #[arg(long)]
    #[serde(default)]
    pub no_kubernetes_api: bool,
    /// host:port for the Kubernetes API (HTTPS) [default: 127.0.0.1:6443].
    #[arg(long)]
    pub listen_api: Option<SocketAddr>,
    /// Service ClusterIP range [default: 10.96.0.0/16].
    #[arg(long)]
    pub service_cluster_ip_range: Option<String>,
    /// NodePort range as LOW-HIGH [default: 30000-32767].
    #[arg(long)]
    pub service_node_port_range: Option<String>,
    /// CSV file of bearer tokens: token,user,uid,"group1,group2".
    #[arg(long)]
    pub token_auth_file: Option<PathBuf>,
    /// ECDSA P-256 key (PKCS#8 PEM) that signs ServiceAccount tokens; every replica needs the
    /// same one [default: sa.key beside the CA, created if missing].
    #[arg(long)]
    pub service_account_key_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ranges: alloc::Ranges,
    pub tokens: HashMap<String, request::User>,
    pub sa_key: PathBuf,
}

impl ApiOptions {
    pub fn resolve(&self, cacert: PathBuf, cert: PathBuf, key: PathBuf) -> anyhow::Result<ApiConfig> {
        let listen = self.listen_api.unwrap_or_else(|| "127.0.0.1:6443".parse().expect("literal"));
        let mut ranges = alloc::Ranges::default();
        if let Some(c) = &self.service_cluster_ip_range {
            let (net, len) = alloc::Ranges::parse_cidr(c)?;
            ranges.net = net;
            ranges.prefix_len = len;
        }
        if let Some(r) = &self.service_node_port_range {
            let (lo, hi) = r.split_once('-').ok_or_else(|| anyhow::anyhow!("--service-node-port-range {r:?} is not LOW-HIGH"))?;
            let lo: u16 = lo.trim().parse().map_err(|_| anyhow::anyhow!("--service-node-port-range {r:?} is not LOW-HIGH"))?;
            let hi: u16 = hi.trim().parse().map_err(|_| anyhow::anyhow!("--service-node-port-range {r:?} is not LOW-HIGH"))?;
            if lo == 0 || hi < lo {
                anyhow::bail!("--service-node-port-range {r:?} is empty");
            }
            ranges.node_ports = (lo, hi);
        }
        let tokens = match &self.token_auth_file {
            Some(p) => server::parse_token_file(&std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?)?,
            None => HashMap::new(),
        };
        let sa_key = self.service_account_key_file.clone().unwrap_or_else(|| cacert.parent().map(|d| d.join("sa.key")).unwrap_or_else(|| "sa.key".into()));
        Ok(ApiConfig { enabled: !self.no_kubernetes_api, listen, cacert, cert, key, ranges, tokens, sa_key })
    }
}

/// Everything a request handler needs.
pub struct Api {
    pub store: store::Store,
    pub catalog: catalog::Catalog,
    pub cfg: Arc<ApiConfig>,
    pub metrics: Arc<metrics::ApiMetrics>,
    /// Signs and checks ServiceAccount tokens (None if the key could not be loaded).
    pub signer: Option<tokens::Signer>,
    /// TLS to node daemons: the cluster CA and this replica's certificate as client identity.
    pub node_tls: Option<Arc<rustls::ClientConfig>>,
    /// OpenAPI documents by "api/v1"-style path, with their hashes; built on first use.
    openapi: Mutex<Option<Arc<OpenApiDocs>>>,
    /// The RBAC objects authorization decides by, reloaded only after one of them changed.
    pub(crate) policy: server::PolicyCache,
}

pub struct OpenApiDocs {
    pub root: Value,
    pub docs: HashMap<String, (bytes::Bytes, String)>,
}

impl Api {
    pub fn new(replica: Arc<Replica>, cfg: ApiConfig) -> Arc<Api> {
        let signer = match tokens::Signer::load_or_create(&cfg.sa_key) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("ServiceAccount tokens disabled: {e}");
                None
            }
        };
        let node_tls = match proxy::node_tls(&cfg.cacert, &cfg.cert, &cfg.key) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::warn!("cannot reach node daemons (logs, exec): {e}");
                None
            }
        };
        Arc::new(Api {
            signer,
            node_tls,
            policy: server::PolicyCache::new(&replica),
            store: store::Store { replica },
            catalog: catalog::Catalog::new(),
            cfg: Arc::new(cfg),
            metrics: Arc::new(metrics::ApiMetrics::default()),
            openapi: Mutex::new(None),
        })
    }

    /// Drops the cached OpenAPI documents (the catalog changed).
    pub fn invalidate_openapi(&self) {
        *self.openapi.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn openapi_docs(&self) -> Arc<OpenApiDocs> {
        let mut g = self.openapi.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = g.as_ref() {
            return d.clone();
        }
        let cat = self.catalog.get();
        let mut docs = HashMap::new();
        let mut index = Vec::new();
        for (group, versions) in cat.groups() {
            for v in versions {
                if let Some(doc) = openapi::document(&cat, &group, &v) {
                    let body = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
                    let h = openapi::hash(&body);
                    let path = openapi::gv_path(&group, &v);
                    index.push((path.clone(), h.clone()));
                    docs.insert(path, (body, h));
                }
            }
        }
        let d = Arc::new(OpenApiDocs { root: openapi::root(&index), docs });
        *g = Some(d.clone());
        d
    }
}

/// Runs a replica with the Kubernetes API beside it until SIGINT/SIGTERM.
pub async fn run(cfg: raftstore::server::ServerConfig, api: ApiConfig) -> anyhow::Result<()> {
    run_with(cfg, api, |_| {}).await
}

/// run(), calling `started` with the API once it exists (before it listens): components of the
/// replica use it to serve their requests in process (see `server::LocalService`).
pub async fn run_with(cfg: raftstore::server::ServerConfig, api: ApiConfig, started: impl FnOnce(Arc<Api>) + Send + 'static) -> anyhow::Result<()> {
    if !api.enabled {
        return raftstore::server::run(cfg).await;
    }
    // Bind before starting Raft so that a busy port fails fast with a clear error.
    let listener = tokio::net::TcpListener::bind(api.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {} (Kubernetes API): {e}", api.listen))?;
    tracing::info!(listen = %api.listen, "serving the Kubernetes API");
    let extra: raftstore::server::Extra = Box::new(move |replica| {
        Box::pin(async move {
            let api = Api::new(replica, api);
            started(api.clone());
            serve(api, listener).await
        })
    });
    raftstore::server::run_with(cfg, Some(extra)).await
}

/// `kuberaft up`: one replica with everything under `dir` (data, certificates, kubeconfig,
/// etcd.env), defaults for the rest. Writes the files, prints where things are, and returns the
/// configuration to run.
pub fn prepare_up(dir: PathBuf) -> anyhow::Result<(raftstore::server::ServerConfig, ApiConfig)> {
    let opts = raftstore::server::ServerOptions { name: Some("default".into()), data_dir: Some(dir.clone()), ..Default::default() };
    let cfg = opts.resolve()?;
    let api = ApiOptions::default().resolve(cfg.cacert.clone(), cfg.cert.clone(), cfg.key.clone())?;
    raftstore::server::write_etcd_env(&cfg, &dir)?;
    let abs = std::fs::canonicalize(&dir)?;
    let kubeconfig = abs.join("kubeconfig");
    kubeconfig::write(&abs.join("pki"), &format!("https://{}", api.listen), "admin", &["system:masters"], &kubeconfig)?;
    println!("kuberaft is up: one replica, data and certificates in {}", abs.display());
    println!("  Kubernetes API  https://{}", api.listen);
    println!("  etcd v3 API     {}", cfg.replica.advertise_client);
    if let Some(m) = cfg.listen_metrics {
        println!("  metrics         http://{m}/metrics   health http://{m}/healthz");
    }
    println!("  try:            export KUBECONFIG={}; kubectl get namespaces", kubeconfig.display());
    println!("                  . {}/etcd.env && etcdctl get --prefix /registry/namespaces --keys-only", abs.display());
    println!("Press Ctrl-C to stop.");
    Ok((cfg, api))
}
