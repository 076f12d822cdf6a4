//! Kubernetes controllers (ReplicaSet, Deployment, DaemonSet, StatefulSet, Job, CronJob,
//! TTL-after-finished, Endpoints and EndpointSlice, Namespace, ServiceAccount, garbage
//! collector, node lifecycle, taint eviction, node IPAM, pod GC, PersistentVolume binder and
//! provisioner, disruption budgets, ResourceQuota status) as API clients built on kube-runtime.
//! They run only while this process holds the controller-manager Lease, through the fenced
//! client that leader election hands out, so a deposed leader's late writes are refused by the
//! API server.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod history;
pub mod informer;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod replicaset;
pub mod resourcequota;
pub mod serviceaccount;
pub mod statefulset;
pub mod taint;
pub mod ttl;
pub mod util;
pub mod volume;

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
    /// Node lifecycle, taint eviction, node IPAM and pod GC settings.
    pub nodes: NodeSettings,
}

/// Settings of the node controllers, named after kube-controller-manager's flags.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// --node-monitor-period: how often node health is checked.
    pub monitor_period: std::time::Duration,
    /// --node-monitor-grace-period: how long a node may go without renewing its Lease or
    /// status before it is marked Unknown.
    pub grace_period: std::time::Duration,
    /// --node-startup-grace-period: the same for a node that never posted its status.
    pub startup_grace_period: std::time::Duration,
    /// --node-eviction-rate: nodes per second tainted NoExecute in a healthy zone.
    pub eviction_rate: f64,
    /// --secondary-node-eviction-rate: the same in an unhealthy zone of a large cluster.
    pub secondary_eviction_rate: f64,
    /// --large-cluster-size-threshold: zones with more nodes than this count as large.
    pub large_cluster_size_threshold: usize,
    /// --unhealthy-zone-threshold: the share of not-ready nodes (at least 3) that makes a zone unhealthy.
    pub unhealthy_zone_threshold: f64,
    /// --allocate-node-cidrs
    pub allocate_node_cidrs: bool,
    /// --cluster-cidr
    pub cluster_cidr: String,
    /// --node-cidr-mask-size
    pub node_cidr_mask_size: u8,
    /// --terminated-pod-gc-threshold (0 or less: never collect terminated pods by count).
    pub terminated_pod_gc_threshold: i64,
    /// How long a pod's node must stay missing before the pod counts as orphaned (upstream: 40 s).
    pub pod_gc_orphan_quarantine: std::time::Duration,
    /// How often pod GC runs (upstream: 20 s).
    pub pod_gc_period: std::time::Duration,
}

impl Default for NodeSettings {
    fn default() -> Self {
        use std::time::Duration;
        NodeSettings {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            startup_grace_period: Duration::from_secs(60),
            eviction_rate: 0.1,
            secondary_eviction_rate: 0.01,
            large_cluster_size_threshold: 50,
            unhealthy_zone_threshold: 0.55,
            allocate_node_cidrs: false,
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask_size: 24,
            terminated_pod_gc_threshold: 12500,
            pod_gc_orphan_quarantine: Duration::from_secs(40),
            pod_gc_period: Duration::from_secs(20),
        }
    }
}

impl ControllerManagerOptions {
    pub fn new(identity: &str) -> Self {
        ControllerManagerOptions {
            identity: identity.to_string(),
            lease_namespace: "kube-system".into(),
            lease_name: "kuberaft-controller-manager".into(),
            election: None,
            root_ca_pem: None,
            nodes: NodeSettings::default(),
        }
    }
}

/// Runs forever: campaigns for the Lease and, while leader, runs every controller.
pub async fn run_controller_manager(access: impl Into<sched::client::Access>, opts: ControllerManagerOptions) -> anyhow::Result<()> {
    let election = opts.election.clone().unwrap_or_else(|| ElectionConfig::new(&opts.lease_namespace, &opts.lease_name, &opts.identity));
    let root_ca = Arc::new(opts.root_ca_pem.clone());
    let nodes = Arc::new(opts.nodes.clone());
    tracing::info!(identity = %opts.identity, lease = %format!("{}/{}", election.namespace, election.name), "controller manager campaigning");
    sched::election::run_elected(access, election, move |client, lost| {
        let (root_ca, nodes) = (root_ca.clone(), nodes.clone());
        async move { run_controllers(client, root_ca, nodes, lost).await }
    })
    .await
}

/// Runs all controllers with `client` until `stop` turns true (leadership lost) or one fails.
pub async fn run_controllers(client: Client, root_ca: Arc<Option<String>>, nodes: Arc<NodeSettings>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    tracing::info!("controllers starting");
    let mut set = tokio::task::JoinSet::new();
    // One watch and cache of pods and of nodes for every controller (see informer.rs).
    let (inf, watches) = informer::Informers::new(&client);
    let inf = Arc::new(inf);
    for w in watches {
        set.spawn(async move {
            w.await;
            anyhow::bail!("a shared informer's watch ended")
        });
    }
    set.spawn(named("replicaset", replicaset::run(client.clone(), inf.clone())));
    set.spawn(named("deployment", deployment::run(client.clone())));
    set.spawn(named("namespace", namespace::run(client.clone())));
    set.spawn(named("serviceaccount", serviceaccount::run(client.clone(), root_ca)));
    set.spawn(named("garbagecollector", gc::run(client.clone())));
    set.spawn(named("endpoints", endpoints::run(client.clone(), inf.clone())));
    set.spawn(named("persistentvolume", volume::run(client.clone(), inf.clone())));
    set.spawn(named("disruption", disruption::run(client.clone(), inf.clone())));
    set.spawn(named("resourcequota", resourcequota::run(client.clone(), inf.clone())));
    set.spawn(named("nodelifecycle", nodelifecycle::run(client.clone(), nodes.clone(), inf.clone())));
    set.spawn(named("taint-eviction", taint::run(client.clone(), inf.clone())));
    if nodes.allocate_node_cidrs {
        set.spawn(named("nodeipam", nodeipam::run(client.clone(), nodes.clone(), inf.clone())));
    }
    set.spawn(named("podgc", podgc::run(client.clone(), nodes.clone(), inf.clone())));
    set.spawn(named("daemonset", daemonset::run(client.clone(), inf.clone())));
    set.spawn(named("statefulset", statefulset::run(client.clone(), inf.clone())));
    set.spawn(named("job", job::run(client.clone(), inf.clone())));
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
