//! The kuberaft scheduler: an API client that binds pending pods to nodes, as the holder of a
//! Lease (see `election`, which the controllers use too).

mod cache;
pub mod client;
pub mod election;
pub mod filter;
mod interpod;
mod preempt;
mod volume;
pub mod quantity;
mod scheduler;

pub use election::{fenced_client, run_elected, ElectionConfig};
pub use scheduler::SCHEDULER_NAME;

/// Options of `run_scheduler`.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// This replica's name: the Lease holder identity and the events' reportingInstance.
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    /// Overrides the election timings (namespace, name and identity come from the fields above).
    pub election: Option<ElectionConfig>,
}

impl SchedulerOptions {
    /// Lease kube-system/kuberaft-scheduler with client-go's default timings.
    pub fn new(identity: &str) -> Self {
        SchedulerOptions { identity: identity.to_string(), lease_namespace: "kube-system".into(), lease_name: "kuberaft-scheduler".into(), election: None }
    }
}

/// Runs forever: campaigns for the scheduler Lease and schedules pods while it holds it.
pub async fn run_scheduler(access: impl Into<client::Access>, opts: SchedulerOptions) -> anyhow::Result<()> {
    let mut election = opts.election.clone().unwrap_or_else(|| ElectionConfig::new(&opts.lease_namespace, &opts.lease_name, &opts.identity));
    election.namespace = opts.lease_namespace.clone();
    election.name = opts.lease_name.clone();
    election.identity = opts.identity.clone();
    let identity = opts.identity.clone();
    run_elected(access, election, move |client, lost| {
        let identity = identity.clone();
        async move { scheduler::Scheduler::new(client, identity).run(lost).await }
    })
    .await
}
