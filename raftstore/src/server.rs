//! A replica process: configuration (flags over an optional TOML file), TLS, and the three
//! listeners: the etcd API (client port, mutual TLS), replica RPC (peer port, mutual TLS) and
//! plain-HTTP /metrics, /healthz, /status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::etcd_api::{EtcdApi, GRPC_OVERHEAD_BYTES, MAX_REQUEST_BYTES};
use crate::peer_service::PeerService;
use crate::replica::{ClusterState, Replica, ReplicaConfig};

/// Settings of one replica. Every field is a flag (`--name`, `--data-dir`, ...) and a key of the
/// `--config` TOML file (same names with dashes); flags win over the file.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerOptions {
    /// TOML file with any of these settings.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Replica name, unique in the cluster [default: default].
    #[arg(long)]
    pub name: Option<String>,
    /// Where the Raft log, state machine and snapshots live [default: ./kuberaft-data/NAME].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// host:port for the etcd v3 API [default: 127.0.0.1:2379].
    #[arg(long)]
    pub listen_client: Option<SocketAddr>,
    /// URL clients use for this replica [default: https://LISTEN-CLIENT].
    #[arg(long)]
    pub advertise_client: Option<String>,
    /// host:port for replica-to-replica RPC [default: 127.0.0.1:2380].
    #[arg(long)]
    pub listen_peer: Option<SocketAddr>,
    /// host:port other replicas use for this one [default: LISTEN-PEER].
    #[arg(long)]
    pub advertise_peer: Option<String>,
    /// host:port for plain-HTTP /metrics, /healthz and /status [default: 127.0.0.1:2381].
    #[arg(long)]
    pub listen_metrics: Option<SocketAddr>,
    /// Founding members as name=host:port,... (https:// prefixes allowed) [default: this one].
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// "new" to found a cluster, "existing" to join one after `etcdctl member add` [default: new].
    #[arg(long, value_parser = parse_state)]
    pub initial_cluster_state: Option<ClusterState>,
    /// Cluster identity; replicas of one cluster must agree [default: kuberaft].
    #[arg(long)]
    pub cluster_token: Option<String>,
    /// CA that signs every certificate [default: generated under DATA-DIR/pki].
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// This replica's certificate (server and client usage) [default: DATA-DIR/pki/server.crt].
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Its private key [default: DATA-DIR/pki/server.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Raft heartbeat interval in ms [default: 100].
    #[arg(long)]
    pub heartbeat_interval: Option<u64>,
    /// Raft election timeout in ms [default: 1000].
    #[arg(long)]
    pub election_timeout: Option<u64>,
    /// Log entries between snapshots [default: 10000].
    #[arg(long)]
    pub snapshot_count: Option<u64>,
    /// How long a request may wait for a leader and its commit, in ms [default: 5000].
    #[arg(long)]
    pub request_timeout: Option<u64>,
    /// Start from this backup (`etcdctl snapshot save` output) instead of an empty store.
    /// The data dir must be empty; every founding replica restores the same file.
    #[arg(long)]
    #[serde(skip)]
    pub restore: Option<PathBuf>,
}

fn parse_state(s: &str) -> Result<ClusterState, String> {
    match s {
        "new" => Ok(ClusterState::New),
        "existing" => Ok(ClusterState::Existing),
        _ => Err(format!("{s:?} is not \"new\" or \"existing\"")),
    }
}

macro_rules! merge {
    ($dst:ident, $src:ident, $($f:ident),*) => { $( if $dst.$f.is_none() { $dst.$f = $src.$f.clone(); } )* };
}

/// Everything resolved, ready to run.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub replica: ReplicaConfig,
    pub listen_client: SocketAddr,
    pub listen_peer: SocketAddr,
    pub listen_metrics: Option<SocketAddr>,
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Parses "n1=127.0.0.11:2380,n2=https://127.0.0.12:2380".
pub fn parse_initial_cluster(s: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| anyhow::anyhow!("--initial-cluster entry {part:?} is not name=host:port"))?;
        let addr = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).unwrap_or(url).trim_end_matches('/');
        if name.is_empty() || addr.parse::<SocketAddr>().is_err() && !addr.contains(':') {
            anyhow::bail!("--initial-cluster entry {part:?} is not name=host:port");
        }
        if out.iter().any(|(n, _): &(String, String)| n == name) {
            anyhow::bail!("--initial-cluster names {name:?} twice");
        }
        out.push((name.to_string(), addr.to_string()));
    }
    if out.is_empty() {
        anyhow::bail!("--initial-cluster is empty");
    }
    Ok(out)
}

impl ServerOptions {
    pub fn resolve(mut self) -> anyhow::Result<ServerConfig> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
            let file: ServerOptions = toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
            merge!(self, file, name, data_dir, listen_client, advertise_client, listen_peer, advertise_peer, listen_metrics,
                initial_cluster, initial_cluster_state, cluster_token, cacert, cert, key, heartbeat_interval, election_timeout,
                snapshot_count, request_timeout);
        }
        let name = self.name.unwrap_or_else(|| "default".into());
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("kuberaft-data").join(&name));
        let listen_client = self.listen_client.unwrap_or_else(|| "127.0.0.1:2379".parse().expect("literal"));
        let listen_peer = self.listen_peer.unwrap_or_else(|| "127.0.0.1:2380".parse().expect("literal"));
        let listen_metrics = Some(self.listen_metrics.unwrap_or_else(|| "127.0.0.1:2381".parse().expect("literal")));
        let advertise_peer = self.advertise_peer.unwrap_or_else(|| listen_peer.to_string());
        let advertise_client = self.advertise_client.unwrap_or_else(|| format!("https://{listen_client}"));
        let initial_cluster = match &self.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => vec![(name.clone(), advertise_peer.clone())],
        };
        let heartbeat = self.heartbeat_interval.unwrap_or(100);
        let election = self.election_timeout.unwrap_or(1000);
        if heartbeat == 0 || election <= heartbeat * 2 {
            anyhow::bail!("--election-timeout ({election} ms) must be more than twice --heartbeat-interval ({heartbeat} ms)");
        }
        let (cacert, cert, key) = match (self.cacert, self.cert, self.key) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            (None, None, None) => {
                // One local replica with no flags: make its own certificates once.
                let pki = data_dir.join("pki");
                if !pki.join("server.crt").exists() {
                    let host = listen_client.ip().to_string();
                    let peer_host = listen_peer.ip().to_string();
                    crate::certs::generate(&pki, &[host, peer_host])?;
                }
                (pki.join("ca.crt"), pki.join("server.crt"), pki.join("server.key"))
            }
            _ => anyhow::bail!("give all of --cacert, --cert and --key, or none of them"),
        };
        Ok(ServerConfig {
            replica: ReplicaConfig {
                name,
                data_dir,
                advertise_peer,
                advertise_client,
                initial_cluster,
                initial_cluster_state: self.initial_cluster_state.unwrap_or_default(),
                cluster_token: self.cluster_token.unwrap_or_else(|| "kuberaft".into()),
                heartbeat_ms: heartbeat,
                election_timeout_ms: election,
                snapshot_count: self.snapshot_count.unwrap_or(10_000),
                request_timeout: Duration::from_millis(self.request_timeout.unwrap_or(5000)),
                restore: self.restore,
                peer_tls: None,
            },
            listen_client,
            listen_peer,
            listen_metrics,
            cacert,
            cert,
            key,
        })
    }
}

fn read_file(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
}

/// The etcd.env an operator sources to point etcdctl at this replica.
pub fn write_etcd_env(cfg: &ServerConfig, dir: &Path) -> anyhow::Result<()> {
    let abs = std::fs::canonicalize(dir)?;
    let pki = abs.join("pki");
    let env = format!(
        "export ETCDCTL_API=3\nexport ETCDCTL_ENDPOINTS={}\nexport ETCDCTL_CACERT={}\nexport ETCDCTL_CERT={}\nexport ETCDCTL_KEY={}\n",
        cfg.replica.advertise_client,
        pki.join("ca.crt").display(),
        pki.join("client.crt").display(),
        pki.join("client.key").display()
    );
    std::fs::write(abs.join("etcd.env"), env)?;
    Ok(())
}

/// Something else served from the replica's process (the Kubernetes API): started once the
/// replica is up; if it fails, the process stops.
pub type Extra = Box<dyn FnOnce(Arc<Replica>) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send>;

/// Runs a replica until SIGINT/SIGTERM.
pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    run_with(cfg, None).await
}

/// Runs a replica, and `extra` beside it, until SIGINT/SIGTERM.
pub async fn run_with(mut cfg: ServerConfig, extra: Option<Extra>) -> anyhow::Result<()> {
    let ca = Certificate::from_pem(read_file(&cfg.cacert)?);
    let identity = Identity::from_pem(read_file(&cfg.cert)?, read_file(&cfg.key)?);
    cfg.replica.peer_tls = Some(ClientTlsConfig::new().ca_certificate(ca.clone()).identity(identity.clone()));
    let server_tls = ServerTlsConfig::new().identity(identity).client_ca_root(ca);

    // Bind before starting Raft so that a busy port fails fast with a clear error.
    let client_listener = tokio::net::TcpListener::bind(cfg.listen_client).await.map_err(|e| anyhow::anyhow!("cannot listen on {} (client): {e}", cfg.listen_client))?;
    let peer_listener = tokio::net::TcpListener::bind(cfg.listen_peer).await.map_err(|e| anyhow::anyhow!("cannot listen on {} (peer): {e}", cfg.listen_peer))?;
    let metrics_listener = match cfg.listen_metrics {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| anyhow::anyhow!("cannot listen on {a} (metrics): {e}"))?),
        None => None,
    };

    let replica = Replica::start(cfg.replica.clone()).await?;
    tracing::info!(name = %cfg.replica.name, id = format!("{:x}", replica.id), client = %cfg.listen_client, peer = %cfg.listen_peer, "replica started");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let peer = tonic::transport::Server::builder()
        .tls_config(server_tls.clone())?
        .tcp_nodelay(true)
        .add_service(InterceptedService::new(PeerService { replica: replica.clone() }.into_server(), only_replicas))
        .serve_with_incoming_shutdown(nodelay(peer_listener), stopped(stop_rx.clone()));
    let peer_task = tokio::spawn(peer);

    let api = EtcdApi { replica: replica.clone() };
    let max = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
    use etcd_client::proto::{PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer};
    let client = tonic::transport::Server::builder()
        .tls_config(server_tls)?
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(InterceptedService::new(PbKvServer::new(api.clone()).max_decoding_message_size(max), replicas_and_admins))
        .add_service(InterceptedService::new(PbWatchServer::new(api.clone()).max_decoding_message_size(max), replicas_and_admins))
        .add_service(InterceptedService::new(PbLeaseServer::new(api.clone()).max_decoding_message_size(max), replicas_and_admins))
        .add_service(InterceptedService::new(PbClusterServer::new(api.clone()).max_decoding_message_size(max), replicas_and_admins))
        .add_service(InterceptedService::new(PbMaintenanceServer::new(api.clone()).max_decoding_message_size(max).max_encoding_message_size(8 << 20), replicas_and_admins))
        .serve_with_incoming_shutdown(nodelay(client_listener), stopped(stop_rx.clone()));
    let client_task = tokio::spawn(client);

    if let Some(l) = metrics_listener {
        tokio::spawn(serve_metrics(l, replica.clone()));
    }

    let extra_task = tokio::spawn(match extra {
        Some(f) => f(replica.clone()),
        None => Box::pin(futures::future::pending()),
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut removed = false;
    tokio::select! {
        r = extra_task => { r??; }
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = replica.wait_removed() => { removed = true; }
        r = client_task => { r??; }
        r = peer_task => { r??; }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    replica.shutdown().await;
    if removed {
        anyhow::bail!("this replica was removed from the cluster; to rejoin, wipe {} and add it again (etcdctl member add)", cfg.replica.data_dir.display());
    }
    Ok(())
}

/// The common name of the replicas' own certificate (`kuberaft certs`).
pub const REPLICA_CN: &str = "kuberaft";

/// CN and O values of the client certificate of a request.
fn client_identity(req: &tonic::Request<()>) -> Option<(String, Vec<String>)> {
    let certs = req.peer_certs()?;
    let der = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let orgs = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some((cn, orgs))
}

/// Replica RPC: only other replicas. The same CA signs users' and nodes' certificates for the
/// Kubernetes API, so a valid certificate alone must not be enough.
fn only_replicas(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match client_identity(&req) {
        Some((cn, _)) if cn == REPLICA_CN => Ok(req),
        _ => Err(tonic::Status::permission_denied("only replicas may use the peer port")),
    }
}

/// The etcd API: replicas and administrators (O=system:masters). Kubernetes users and nodes go
/// through the Kubernetes API and its authorization, never around it.
fn replicas_and_admins(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match client_identity(&req) {
        Some((cn, orgs)) if cn == REPLICA_CN || orgs.iter().any(|o| o == "system:masters") => Ok(req),
        _ => Err(tonic::Status::permission_denied("etcdserver: permission denied (the etcd API needs an administrator certificate, O=system:masters)")),
    }
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames (heartbeats, acks, read
/// index answers) must not wait for a delayed ACK. (tonic's own `tcp_nodelay` only applies to
/// listeners it binds itself.)
fn nodelay(listener: tokio::net::TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

async fn serve_metrics(listener: tokio::net::TcpListener, replica: Arc<Replica>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let replica = replica.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let replica = replica.clone();
                async move { Ok::<_, Infallible>(http_endpoint(&replica, req.uri().path())) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

fn http_endpoint(replica: &Replica, path: &str) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    match path {
        "/metrics" => {
            let s = replica.status();
            replica.metrics.db_size_bytes.set(s.db_size as i64);
            replica.metrics.log_db_size_bytes.set(replica.log.size_bytes() as i64);
            reply(StatusCode::OK, "text/plain; version=0.0.4", replica.metrics.render())
        }
        "/healthz" | "/health" => {
            let s = replica.status();
            if s.leader.is_some() {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no leader\n".into())
            }
        }
        "/status" => {
            #[derive(serde::Serialize)]
            struct Out {
                #[serde(flatten)]
                status: crate::replica::Status,
                members: Vec<crate::replica::MemberInfo>,
            }
            let out = Out { status: replica.status(), members: replica.members() };
            reply(StatusCode::OK, "application/json", serde_json::to_string(&out).unwrap_or_default() + "\n")
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_accepts_urls_and_rejects_malformed_entries() {
        let c = parse_initial_cluster("n1=127.0.0.11:2380, n2=https://127.0.0.12:2380/").unwrap();
        assert_eq!(c, vec![("n1".into(), "127.0.0.11:2380".into()), ("n2".into(), "127.0.0.12:2380".into())]);
        for bad in ["", "n1", "=127.0.0.1:1", "n1=host", "n1=a:1,n1=b:2"] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn flags_win_over_the_config_file_and_unknown_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("kr.toml");
        std::fs::write(
            &file,
            format!(
                "name = \"from-file\"\ndata-dir = \"{}\"\nlisten-client = \"127.0.0.1:12379\"\nsnapshot-count = 7\ncacert = \"a\"\ncert = \"b\"\nkey = \"c\"\n",
                d.path().join("data").display()
            ),
        )
        .unwrap();
        let opts = ServerOptions { config: Some(file.clone()), name: Some("from-flag".into()), ..Default::default() };
        let cfg = opts.resolve().unwrap();
        assert_eq!(cfg.replica.name, "from-flag");
        assert_eq!(cfg.replica.snapshot_count, 7);
        assert_eq!(cfg.listen_client, "127.0.0.1:12379".parse().unwrap());
        assert_eq!(cfg.replica.advertise_client, "https://127.0.0.1:12379");
        std::fs::write(&file, "nmae = \"typo\"\n").unwrap();
        let err = ServerOptions { config: Some(file), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn election_timeout_must_exceed_twice_the_heartbeat() {
        let opts = ServerOptions { heartbeat_interval: Some(100), election_timeout: Some(150), cacert: Some("a".into()), cert: Some("b".into()), key: Some("c".into()), ..Default::default() };
        assert!(opts.resolve().is_err());
    }
}
