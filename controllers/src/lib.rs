//! Kubernetes controllers (ReplicaSet, Deployment, Namespace, ServiceAccount, Endpoints and
//! EndpointSlice, Job, CronJob, TTL-after-finished, garbage collector) as API clients built on kube-runtime. They run only while
//! this process holds the controller-manager Lease, through the fenced client that leader
//! election hands out, so a deposed leader's late writes are refused by the API server.

pub mod cronjob;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod replicaset;
pub mod serviceaccount;
pub mod ttl;
pub mod util;

use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;
use tokio::sync::watch;

pub use sched::election::ElectionConfig;

/// What `run_controller_manager` needs beyond the API server's address and credentials.
#[derive(Clone, Debug)]
pub struct ControllerManagerOptions {
    /// This process's identity in the Lease (holderIdentity).
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    /// Full election settings; when None, defaults from the three fields above.
    pub election: Option<ElectionConfig>,
    /// The cluster CA (PEM) published as ConfigMap `kube-root-ca.crt` in every namespace.
    pub root_ca_pem: Option<String>,
}

impl ControllerManagerOptions {
    pub fn new(identity: &str) -> Self {
        ControllerManagerOptions {
            identity: identity.to_string(),
            lease_namespace: "kube-system".into(),
            lease_name: "kuberaft-controller-manager".into(),
            election: None,
            root_ca_pem: None,
        }
    }
}

/// Runs forever: campaigns for the Lease and, while leader, runs every controller.
pub async fn run_controller_manager(config: kube::Config, opts: ControllerManagerOptions) -> anyhow::Result<()> {
    let election = opts.election.clone().unwrap_or_else(|| ElectionConfig::new(&opts.lease_namespace, &opts.lease_name, &opts.identity));
    let root_ca = Arc::new(opts.root_ca_pem.clone());
    tracing::info!(identity = %opts.identity, lease = %format!("{}/{}", election.namespace, election.name), "controller manager campaigning");
    sched::election::run_elected(config, election, move |client, lost| {
        let root_ca = root_ca.clone();
        async move { run_controllers(client, root_ca, lost).await }
    })
    .await
}

/// Runs all controllers with `client` until `stop` turns true (leadership lost) or one fails.
pub async fn run_controllers(client: Client, root_ca: Arc<Option<String>>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    tracing::info!("controllers starting");
    let mut set = tokio::task::JoinSet::new();
    set.spawn(named("replicaset", replicaset::run(client.clone())));
    set.spawn(named("deployment", deployment::run(client.clone())));
    set.spawn(named("namespace", namespace::run(client.clone())));
    set.spawn(named("serviceaccount", serviceaccount::run(client.clone(), root_ca)));
    set.spawn(named("garbagecollector", gc::run(client.clone())));
    set.spawn(named("endpoints", endpoints::run(client.clone())));
    set.spawn(named("job", job::run(client.clone())));
    set.spawn(named("ttl-after-finished", ttl::run(client.clone())));
    set.spawn(named("cronjob", cronjob::run(client.clone())));
    let result = tokio::select! {
        r = stop.wait_for(|lost| *lost) => {
            // An Err means the sender is gone, which also ends our term.
            let _ = r;
            tracing::warn!("leadership lost: stopping controllers");
            Ok(())
        }
        Some(r) = set.join_next() => match r {
            Ok(Ok(())) => Err(anyhow::anyhow!("a controller stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::Error::new(e).context("controller task panicked")),
        },
    };
    // Dropping the JoinSet would abort too; be explicit that nothing outlives the term.
    set.abort_all();
    result
}

async fn named(name: &'static str, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    fut.await.with_context(|| format!("{name} controller"))
}

/// kube-runtime wants a std::error::Error from reconcilers; anyhow's does not implement it.
#[derive(Debug)]
pub struct Error(pub anyhow::Error);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Error {}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error(e)
    }
}
