//! TTL-after-finished controller: deletes a finished Job (Complete or Failed)
//! `ttlSecondsAfterFinished` seconds after it finished, cascading to its pods.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::job::condition;

struct Ctx {
    client: Client,
}

pub async fn run(client: Client) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default());
    crate::util::drain("ttl-after-finished", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client }))).await;
    Ok(())
}

/// When the Job finished (its Complete or Failed condition's transition) plus its TTL, in
/// seconds since the epoch; None when it has no TTL or has not finished.
pub fn expiry(job: &Job) -> Option<i64> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let status = job.status.as_ref()?;
    let done = condition(status, "Complete").or_else(|| condition(status, "Failed"))?;
    let at = done.last_transition_time.as_ref().map(|t| t.0).or(status.completion_time.as_ref().map(|t| t.0))?;
    Some(at.as_second().saturating_add(i64::from(ttl)))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&job, &ctx.client).await?)
}

async fn sync(job: &Job, client: &Client) -> anyhow::Result<Action> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(expire) = expiry(job) else { return Ok(Action::await_change()) };
    let left = expire - jiff::Timestamp::now().as_second();
    if left > 0 {
        return Ok(Action::requeue(Duration::from_secs(left.min(86_400) as u64)));
    }
    // The cached copy may be stale (TTL changed, Job re-created): decide on a fresh read, and
    // delete only that very object (uid precondition).
    let ns = job.namespace().context("Job without namespace")?;
    let api = Api::<Job>::namespaced(client.clone(), &ns);
    let Some(fresh) = api.get_opt(&job.name_any()).await? else { return Ok(Action::await_change()) };
    match expiry(&fresh) {
        Some(e) if e <= jiff::Timestamp::now().as_second() => {}
        _ => return Ok(Action::requeue(Duration::from_secs(1))),
    }
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), preconditions: Some(Preconditions { uid: fresh.metadata.uid.clone(), resource_version: None }), ..Default::default() };
    match api.delete(&fresh.name_any(), &dp).await {
        Ok(_) => tracing::info!(job = %fresh.name_any(), namespace = %ns, "deleted finished job after its TTL"),
        Err(e) if crate::util::is_not_found(&e) || (crate::util::is_status(&e, 409) && !e.to_string().contains("fenced")) => {}
        Err(e) => return Err(e).context("delete expired job"),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_job_expires_ttl_seconds_after_its_terminal_condition() {
        let mut job = Job { spec: Some(JobSpec { ttl_seconds_after_finished: Some(30), ..Default::default() }), ..Default::default() };
        assert_eq!(expiry(&job), None);
        let cond = |t: &str, s: &str| JobCondition { type_: t.into(), status: s.into(), last_transition_time: Some(Time(jiff::Timestamp::from_second(1000).unwrap())), ..Default::default() };
        job.status = Some(JobStatus { conditions: Some(vec![cond("SuccessCriteriaMet", "True")]), ..Default::default() });
        assert_eq!(expiry(&job), None);
        job.status = Some(JobStatus { conditions: Some(vec![cond("Failed", "True")]), ..Default::default() });
        assert_eq!(expiry(&job), Some(1030));
        job.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
        assert_eq!(expiry(&job), None);
    }
}
